//! A per-thread io_uring for the data path.
//!
//! ```text
//!   task ──read_at/write_at/fdatasync──▶ SQ ──io_uring_enter──▶ kernel
//!     ▲                                                          │
//!     └──── waker ◀── reap() ◀── CQ ◀────────────────────────────┘
//!                      ▲
//!          event loop: eventfd readable (registered with the ring)
//! ```
//!
//! A data-plane thread installs one [`Ring`]; futures created on that
//! thread submit their I/O to it and are woken when it completes, so a
//! request never hops to another thread for its device I/O. The thread's
//! event loop watches [`Ring::event_fd`] and calls [`Ring::reap`] when it
//! becomes readable (the daemon does this with tokio's `AsyncFd`); `reap`
//! is also tried whenever a pending op is polled.
//!
//! Ownership: an op owns its buffer from submission until the kernel has
//! completed it, even if its future is dropped first (the buffer is then
//! freed on completion), so the kernel never writes into freed memory.
//! Dropping a ring waits for every op still in flight.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, types, IoUring};

use crate::buf::AlignedBuf;

/// Submission queue entries of a ring.
pub const DEFAULT_ENTRIES: u32 = 256;

enum Slot {
    Free,
    Waiting {
        waker: Option<Waker>,
        buf: Option<AlignedBuf>,
    },
    Done {
        res: i32,
        buf: Option<AlignedBuf>,
    },
    /// The future was dropped; the buffer waits for the completion.
    Abandoned {
        _buf: Option<AlignedBuf>,
    },
}

struct Inner {
    uring: IoUring,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Entries pushed but not yet handed to the kernel.
    unsubmitted: u32,
    /// Ops the kernel has not completed.
    in_flight: usize,
}

/// A thread's io_uring.
pub struct Ring {
    inner: RefCell<Inner>,
    event: OwnedFd,
    /// Set when an event loop submits for us (see [`Ring::flush_task`]):
    /// new entries then wait for it, so one `io_uring_enter` carries every
    /// entry queued while the loop ran its ready tasks.
    deferred: std::cell::Cell<bool>,
    flusher: RefCell<Option<Waker>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Ring>>> = const { RefCell::new(None) };
}

/// Create a ring for the calling thread (replacing any previous one).
pub fn install(entries: u32) -> io::Result<Rc<Ring>> {
    let ring = Rc::new(Ring::new(entries)?);
    CURRENT.with(|c| *c.borrow_mut() = Some(ring.clone()));
    Ok(ring)
}

/// The calling thread's ring, if it installed one.
pub fn current() -> Option<Rc<Ring>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Remove the calling thread's ring (it is dropped once no op holds it).
pub fn uninstall() {
    CURRENT.with(|c| c.borrow_mut().take());
}

impl Ring {
    fn new(entries: u32) -> io::Result<Ring> {
        // COOP_TASKRUN: completion work runs when this thread next enters
        // the kernel anyway, instead of interrupting it (an IPI and an
        // EINTR'd epoll_wait per completion). Needs Linux 5.19; fall back
        // without it.
        let uring = IoUring::builder()
            .setup_cqsize(entries * 4)
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_cqsize(entries * 4).build(entries))?;
        // SAFETY: eventfd has no memory-safety preconditions; the result is
        // checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let event = unsafe { OwnedFd::from_raw_fd(fd) };
        uring.submitter().register_eventfd(event.as_raw_fd())?;
        Ok(Ring {
            inner: RefCell::new(Inner {
                uring,
                slots: Vec::new(),
                free: Vec::new(),
                unsubmitted: 0,
                in_flight: 0,
            }),
            event,
            deferred: std::cell::Cell::new(false),
            flusher: RefCell::new(None),
        })
    }

    /// Submit queued entries whenever woken, forever: run it as a task of
    /// the ring's event loop. Entries pushed while other tasks run are then
    /// submitted together once they have all run (the task is woken on the
    /// first new entry and runs after the tasks already queued).
    pub async fn flush_task(self: Rc<Self>) {
        self.deferred.set(true);
        std::future::poll_fn(|cx| {
            self.submit();
            *self.flusher.borrow_mut() = Some(cx.waker().clone());
            Poll::<()>::Pending
        })
        .await;
    }

    /// The eventfd that becomes readable when completions arrive. Whoever
    /// watches it must read it (8 bytes) and call [`Ring::reap`].
    pub fn event_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// Clear the eventfd's counter (non-blocking).
    pub fn clear_event(&self) {
        let mut v = 0u64;
        // SAFETY: reads at most 8 bytes into a local u64; the fd is ours and
        // non-blocking, so an empty counter returns EAGAIN, which is fine.
        let _ = unsafe {
            libc::read(
                self.event.as_raw_fd(),
                (&raw mut v).cast::<libc::c_void>(),
                8,
            )
        };
    }

    /// Ops submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.inner.borrow().in_flight
    }

    /// Read `buf.len()` bytes at `offset` of `fd` into `buf`.
    pub fn read_at(self: &Rc<Self>, fd: RawFd, mut buf: AlignedBuf, offset: u64) -> Op {
        let ptr = buf.as_mut_slice().as_mut_ptr();
        let len = buf.len() as u32;
        let entry = opcode::Read::new(types::Fd(fd), ptr, len)
            .offset(offset)
            .build();
        self.push(entry, Some(buf))
    }

    /// Write all of `buf` at `offset` of `fd`.
    pub fn write_at(self: &Rc<Self>, fd: RawFd, buf: AlignedBuf, offset: u64) -> Op {
        let ptr = buf.as_slice().as_ptr();
        let len = buf.len() as u32;
        let entry = opcode::Write::new(types::Fd(fd), ptr, len)
            .offset(offset)
            .build();
        self.push(entry, Some(buf))
    }

    /// fdatasync(2) of `fd`.
    pub fn fdatasync(self: &Rc<Self>, fd: RawFd) -> Op {
        let entry = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        self.push(entry, None)
    }

    fn push(self: &Rc<Self>, entry: io_uring::squeue::Entry, buf: Option<AlignedBuf>) -> Op {
        let mut g = self.inner.borrow_mut();
        let inner = &mut *g;
        let slot = match inner.free.pop() {
            Some(i) => i,
            None => {
                inner.slots.push(Slot::Free);
                (inner.slots.len() - 1) as u32
            }
        };
        // The buffer moves into the slot; its heap storage (what the entry
        // points at) does not move.
        inner.slots[slot as usize] = Slot::Waiting { waker: None, buf };
        let entry = entry.user_data(u64::from(slot));
        loop {
            // SAFETY: the entry's buffer (if any) is owned by `slots[slot]`
            // and stays there, alive and unmoved, until its completion is
            // reaped (`reap`), also when the `Op` is dropped first
            // (`Abandoned`) or the ring is dropped (`Drop` waits).
            let pushed = unsafe { inner.uring.submission().push(&entry) };
            if pushed.is_ok() {
                break;
            }
            // Queue full: hand what is queued to the kernel and retry.
            if let Err(e) = inner.uring.submit() {
                inner.slots[slot as usize] = Slot::Done {
                    res: -e.raw_os_error().unwrap_or(libc::EIO),
                    buf: take_buf(&mut inner.slots[slot as usize]),
                };
                return Op {
                    ring: self.clone(),
                    slot,
                    finished: false,
                };
            }
            inner.unsubmitted = 0;
        }
        inner.unsubmitted += 1;
        inner.in_flight += 1;
        drop(g);
        if self.deferred.get() {
            if let Some(w) = self.flusher.borrow_mut().take() {
                w.wake();
            }
        } else {
            self.submit();
        }
        Op {
            ring: self.clone(),
            slot,
            finished: false,
        }
    }

    /// Hand every queued entry to the kernel.
    pub fn submit(&self) {
        let mut g = self.inner.borrow_mut();
        if g.unsubmitted == 0 {
            return;
        }
        match g.uring.submit() {
            Ok(_) => g.unsubmitted = 0,
            // EBUSY/EAGAIN: the completion queue is backed up; entries stay
            // queued and go with the next submit (after a reap).
            Err(e) => {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                ) {
                    panic!("io_uring submit failed: {e}");
                }
            }
        }
    }

    /// Take every completion and wake its op. Returns how many completed.
    pub fn reap(&self) -> usize {
        let mut wake: Vec<Waker> = Vec::new();
        let n = {
            let mut g = self.inner.borrow_mut();
            let inner = &mut *g;
            let mut n = 0;
            for cqe in inner.uring.completion() {
                n += 1;
                let i = cqe.user_data() as usize;
                let Some(slot) = inner.slots.get_mut(i) else {
                    continue;
                };
                match std::mem::replace(slot, Slot::Free) {
                    Slot::Waiting { waker, buf } => {
                        *slot = Slot::Done {
                            res: cqe.result(),
                            buf,
                        };
                        if let Some(w) = waker {
                            wake.push(w);
                        }
                    }
                    Slot::Abandoned { .. } => inner.free.push(i as u32),
                    other => *slot = other, // cannot happen: one completion per op
                }
            }
            inner.in_flight -= n;
            n
        };
        if n > 0 && self.inner.borrow().unsubmitted > 0 {
            self.submit();
        }
        for w in wake {
            w.wake();
        }
        n
    }
}

fn take_buf(slot: &mut Slot) -> Option<AlignedBuf> {
    match slot {
        Slot::Waiting { buf, .. } | Slot::Done { buf, .. } => buf.take(),
        _ => None,
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The kernel may still write into buffers we own: wait for every
        // op before freeing them.
        let inner = self.inner.get_mut();
        while inner.in_flight > 0 {
            if inner.uring.submit_and_wait(1).is_err() {
                break;
            }
            let n = inner.uring.completion().count();
            inner.in_flight = inner.in_flight.saturating_sub(n);
        }
    }
}

/// A submitted op. Resolves to the kernel's result (bytes transferred) and
/// the op's buffer.
pub struct Op {
    ring: Rc<Ring>,
    slot: u32,
    finished: bool,
}

impl Future for Op {
    type Output = (io::Result<usize>, Option<AlignedBuf>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let i = self.slot as usize;
        for attempt in 0..2 {
            {
                let mut g = self.ring.inner.borrow_mut();
                let inner = &mut *g;
                match &mut inner.slots[i] {
                    Slot::Done { .. } => {
                        let Slot::Done { res, buf } =
                            std::mem::replace(&mut inner.slots[i], Slot::Free)
                        else {
                            unreachable!("matched above")
                        };
                        inner.free.push(self.slot);
                        drop(g);
                        self.finished = true;
                        let r = if res < 0 {
                            Err(io::Error::from_raw_os_error(-res))
                        } else {
                            Ok(res as usize)
                        };
                        return Poll::Ready((r, buf));
                    }
                    Slot::Waiting { waker, .. } if attempt == 1 => {
                        match waker {
                            Some(w) if w.will_wake(cx.waker()) => {}
                            _ => *waker = Some(cx.waker().clone()),
                        }
                        return Poll::Pending;
                    }
                    _ => {}
                }
            }
            // Completions may already be there: take them before sleeping.
            self.ring.reap();
        }
        Poll::Pending
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut g = self.ring.inner.borrow_mut();
        let inner = &mut *g;
        let i = self.slot as usize;
        match std::mem::replace(&mut inner.slots[i], Slot::Free) {
            Slot::Done { .. } => inner.free.push(self.slot),
            Slot::Waiting { buf, .. } => inner.slots[i] = Slot::Abandoned { _buf: buf },
            other => inner.slots[i] = other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    fn block_on<F: Future>(ring: &Rc<Ring>, f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            // No event loop here: wait for a completion the blunt way.
            let _ = ring.inner.borrow().uring.submit_and_wait(1);
        }
    }

    #[test]
    fn write_read_fsync_round_trip() {
        let ring = install(8).unwrap();
        let mut f = tempfile_in_target();
        f.write_all(&[0u8; 16384]).unwrap();
        let fd = f.as_raw_fd();
        let mut b = AlignedBuf::zeroed(8192);
        b.as_mut_slice().fill(0x5a);
        let (r, _) = block_on(&ring, ring.write_at(fd, b, 4096));
        assert_eq!(r.unwrap(), 8192);
        let (r, _) = block_on(&ring, ring.fdatasync(fd));
        r.unwrap();
        let (r, buf) = block_on(&ring, ring.read_at(fd, AlignedBuf::zeroed(4096), 8192));
        assert_eq!(r.unwrap(), 4096);
        assert!(buf.unwrap().as_slice().iter().all(|&x| x == 0x5a));
        let mut plain = [0u8; 4096];
        f.read_exact_at(&mut plain, 0).unwrap();
        assert!(
            plain.iter().all(|&x| x == 0),
            "bytes before the write untouched"
        );
        // An error comes back as the op's result.
        let (r, _) = block_on(&ring, ring.read_at(-1, AlignedBuf::zeroed(4096), 0));
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EBADF));
        assert_eq!(ring.in_flight(), 0);
        uninstall();
    }

    #[test]
    fn dropped_ops_keep_their_buffer_until_completion() {
        let ring = install(4).unwrap();
        let f = tempfile_in_target();
        let fd = f.as_raw_fd();
        // More ops than queue entries, all dropped before completion.
        for i in 0..16u64 {
            drop(ring.write_at(fd, AlignedBuf::zeroed(4096), i * 4096));
        }
        while ring.in_flight() > 0 {
            let _ = ring.inner.borrow().uring.submit_and_wait(1);
            ring.reap();
        }
        assert_eq!(f.metadata().unwrap().len(), 16 * 4096);
        uninstall();
    }

    fn tempfile_in_target() -> std::fs::File {
        let dir = std::env::temp_dir();
        let p = dir.join(format!(
            "edgevol-io-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        let _ = std::fs::remove_file(&p);
        f
    }
}
