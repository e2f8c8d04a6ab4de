//! [`MemDevice`]: the fault-injecting simulator tests run pools on.
//!
//! Memory with a model of a volatile write cache: writes since the last
//! flush are pending, and [`MemDevice::power_cut`] with
//! [`MemDevice::restore_power`] keeps, drops or tears each of them by a
//! [`CutPolicy`], the way drives fail (CrashMonkey/ALICE). A [`PowerRail`]
//! shared by the devices of one simulated host cuts after a given number
//! of operations, anywhere inside an operation. Reads and writes can be
//! made to fail, bytes to read back corrupted, a device to look unplugged;
//! `O_DIRECT`'s alignment rules are enforced as a real device would.
//!
//! It is how the tests of invariant 1 (acknowledged writes survive a
//! crash), invariant 2 (every read is verified: corrupted bytes) and
//! invariant 7 (a corrupt or failing device) can fail.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use parking_lot::Mutex;
use rand::Rng;

use super::{check_direct, Device, IoFuture, IoMode};
use crate::buf::AlignedBuf;
use crate::layout::BLOCK_U64;

/// How a power cut treats each write that was not yet flushed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CutPolicy {
    /// Probability that an unflushed write reached the media whole.
    pub keep: f64,
    /// Probability that it reached the media torn: a random subset of its
    /// 512-byte sectors. The rest is dropped entirely.
    pub tear: f64,
}

impl CutPolicy {
    /// Every unflushed write is lost.
    pub const DROP_ALL: CutPolicy = CutPolicy {
        keep: 0.0,
        tear: 0.0,
    };
    /// Every unflushed write survives (an orderly process crash).
    pub const KEEP_ALL: CutPolicy = CutPolicy {
        keep: 1.0,
        tear: 0.0,
    };
    /// A mix of kept, dropped and torn writes.
    pub const CHAOS: CutPolicy = CutPolicy {
        keep: 0.4,
        tear: 0.3,
    };
}

/// A power supply shared by the [`MemDevice`]s of one simulated host: armed
/// with a number of device operations (writes and flushes, counted across
/// every attached device), it "cuts" after that many. From then on the
/// devices keep answering, so the code under test runs on undisturbed, but
/// nothing they are given reaches the media: later writes are lost and
/// later flushes make nothing durable. [`MemDevice::power_cut`] and
/// [`MemDevice::restore_power`] then resolve the writes that were still
/// unflushed at the cut. This places a cut at any point of an operation
/// (between a checkpoint and its uberblock, inside a batch) rather than
/// only between operations.
#[derive(Debug, Default)]
pub struct PowerRail {
    /// Operations left before the cut; negative once it happened.
    left: std::sync::atomic::AtomicI64,
    armed: std::sync::atomic::AtomicBool,
}

impl PowerRail {
    /// Cut the power after `ops` more device operations.
    pub fn arm(&self, ops: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        self.left
            .store(i64::try_from(ops).unwrap_or(i64::MAX), SeqCst);
        self.armed.store(true, SeqCst);
    }

    /// Stop counting: power stays on.
    pub fn disarm(&self) {
        self.armed.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a cut is armed (or has happened).
    pub fn is_armed(&self) -> bool {
        self.armed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the armed cut has happened.
    pub fn fired(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.armed.load(SeqCst) && self.left.load(SeqCst) < 0
    }

    /// Count one device operation; true if it happens after the cut.
    fn tick(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.armed.load(SeqCst) && self.left.fetch_sub(1, SeqCst) <= 0
    }
}

struct MemInner {
    /// What reads return now.
    current: Vec<u8>,
    /// What is on the media for sure.
    durable: Vec<u8>,
    /// Writes since the last flush, in order.
    pending: Vec<(u64, Vec<u8>)>,
    fail_reads: bool,
    fail_writes: bool,
    dead: bool,
    /// Unplugged: the health probe fails (I/O still works: a removed
    /// file's descriptor does).
    removed: bool,
    /// Byte ranges whose reads return flipped bits.
    corrupt: Vec<(u64, u64)>,
    writes: u64,
    flushes: u64,
    rail: Option<Arc<PowerRail>>,
    /// Late completion of asynchronous I/O: the draw, and the most polls.
    late: Option<(rand::rngs::StdRng, u32)>,
    /// Asynchronous ops that completed late.
    late_ops: u64,
}

/// An in-memory device with a volatile write cache (for tests).
pub struct MemDevice {
    name: String,
    len: std::sync::atomic::AtomicU64,
    inner: Mutex<MemInner>,
}

impl MemDevice {
    /// A zeroed device of `len` bytes (rounded down to whole blocks).
    pub fn new(name: impl Into<String>, len: u64) -> MemDevice {
        let len = len - len % BLOCK_U64;
        let size = usize::try_from(len).unwrap_or(usize::MAX);
        MemDevice {
            name: name.into(),
            len: len.into(),
            inner: Mutex::new(MemInner {
                current: vec![0; size],
                durable: vec![0; size],
                pending: Vec::new(),
                fail_reads: false,
                fail_writes: false,
                dead: false,
                removed: false,
                corrupt: Vec::new(),
                writes: 0,
                flushes: 0,
                rail: None,
                late: None,
                late_ops: 0,
            }),
        }
    }

    /// Grow the device to `len` bytes (zeroes, durable at once: a resized
    /// disk). Never shrinks.
    pub fn grow(&self, len: u64) {
        let len = len - len % BLOCK_U64;
        let mut g = self.inner.lock();
        let size = usize::try_from(len).unwrap_or(usize::MAX);
        if size > g.current.len() {
            g.current.resize(size, 0);
            g.durable.resize(size, 0);
            self.len.fetch_max(len, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Take power from `rail` (shared with the other devices of a
    /// simulated host).
    pub fn attach_rail(&self, rail: Arc<PowerRail>) {
        self.inner.lock().rail = Some(rail);
    }

    /// Whether this operation happens after the rail's cut.
    fn after_cut(g: &MemInner) -> bool {
        g.rail.as_ref().is_some_and(|r| r.tick())
    }

    /// Cut the power: every I/O fails until [`MemDevice::restore_power`].
    /// Unflushed writes are resolved by `policy` when power comes back.
    pub fn power_cut(&self) {
        self.inner.lock().dead = true;
    }

    /// Bring the device back after [`MemDevice::power_cut`]: unflushed writes
    /// are kept, dropped or torn according to `policy`, in write order.
    pub fn restore_power(&self, policy: CutPolicy, rng: &mut impl Rng) {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let mut image = inner.durable.clone();
        for (off, data) in inner.pending.drain(..) {
            let off = off as usize;
            let roll: f64 = rng.random();
            if roll < policy.keep {
                image[off..off + data.len()].copy_from_slice(&data);
            } else if roll < policy.keep + policy.tear {
                for (i, sector) in data.chunks(512).enumerate() {
                    if rng.random_bool(0.5) {
                        let s = off + i * 512;
                        image[s..s + sector.len()].copy_from_slice(sector);
                    }
                }
            }
        }
        inner.durable.clone_from(&image);
        inner.current = image;
        inner.dead = false;
    }

    /// Unplug the device as far as the health probe can tell (or plug it
    /// back), like a removed file whose descriptor still works.
    pub fn set_removed(&self, removed: bool) {
        self.inner.lock().removed = removed;
    }

    /// Make reads fail with EIO (or stop failing).
    pub fn set_fail_reads(&self, fail: bool) {
        self.inner.lock().fail_reads = fail;
    }

    /// Make writes and flushes fail with EIO (or stop failing).
    pub fn set_fail_writes(&self, fail: bool) {
        self.inner.lock().fail_writes = fail;
    }

    /// Flip bits in the stored bytes of `[offset, offset + len)` (both the
    /// current and the durable image): silent corruption on the media.
    pub fn corrupt(&self, offset: u64, len: u64) {
        let mut g = self.inner.lock();
        let (s, e) = (offset as usize, (offset + len) as usize);
        for b in &mut g.current[s..e] {
            *b ^= 0x5a;
        }
        for b in &mut g.durable[s..e] {
            *b ^= 0x5a;
        }
        g.corrupt.push((offset, len));
    }

    /// A copy of what reads return now.
    pub fn snapshot_image(&self) -> Vec<u8> {
        self.inner.lock().current.clone()
    }

    /// Number of writes and flushes so far.
    pub fn io_counts(&self) -> (u64, u64) {
        let g = self.inner.lock();
        (g.writes, g.flushes)
    }

    fn dead_error() -> io::Error {
        io::Error::other("device lost power")
    }
}

impl MemDevice {
    /// Make asynchronous I/O ([`IoMode::Async`]) complete late: each op
    /// waits 0 to `max_polls` polls of its future (drawn from `seed`)
    /// before it happens, so ops submitted together happen and complete
    /// in any order, as io_uring's do. Blocking I/O still happens at once.
    pub fn set_late_completions(&self, seed: u64, max_polls: u32) {
        use rand::SeedableRng;
        self.inner.lock().late = Some((rand::rngs::StdRng::seed_from_u64(seed), max_polls));
    }

    /// Polls an op made now waits before it happens.
    fn delay(&self, mode: IoMode) -> u32 {
        let mut g = self.inner.lock();
        let polls = match (mode, &mut g.late) {
            (IoMode::Async, Some((rng, max))) => rng.random_range(0..=*max),
            _ => 0,
        };
        g.late_ops += u64::from(polls > 0);
        polls
    }

    /// Asynchronous ops that completed late so far
    /// ([`MemDevice::set_late_completions`]).
    pub fn late_ops(&self) -> u64 {
        self.inner.lock().late_ops
    }

    fn read_now(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let g = self.inner.lock();
        if g.dead {
            return Err(Self::dead_error());
        }
        check_direct(buf, offset)?;
        if g.fail_reads {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        buf.copy_from_slice(&g.current[offset as usize..end as usize]);
        Ok(())
    }

    fn write_now(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut g = self.inner.lock();
        if g.dead {
            return Err(Self::dead_error());
        }
        check_direct(buf, offset)?;
        if g.fail_writes {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        g.current[offset as usize..end as usize].copy_from_slice(buf);
        if !Self::after_cut(&g) {
            g.pending.push((offset, buf.to_vec()));
        }
        g.writes += 1;
        Ok(())
    }

    fn sync_now(&self) -> io::Result<()> {
        let mut g = self.inner.lock();
        if g.dead {
            return Err(Self::dead_error());
        }
        if g.fail_writes {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let inner = &mut *g;
        inner.flushes += 1;
        if Self::after_cut(inner) {
            return Ok(());
        }
        for (off, data) in inner.pending.drain(..) {
            let off = off as usize;
            inner.durable[off..off + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }
}

/// An op that happens when its future has been polled `polls` more times.
struct Late<F> {
    polls: u32,
    op: Option<F>,
}

impl<T, F: FnOnce() -> io::Result<T> + Unpin> Future for Late<F> {
    type Output = io::Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls > 0 {
            self.polls -= 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let op = self.op.take().expect("a completed op is not polled again");
        Poll::Ready(op())
    }
}

impl Device for MemDevice {
    fn len(&self) -> u64 {
        self.len.load(std::sync::atomic::Ordering::Acquire)
    }

    fn read(&self, mut buf: AlignedBuf, offset: u64, mode: IoMode) -> IoFuture<'_, AlignedBuf> {
        let op = move || self.read_now(buf.as_mut_slice(), offset).map(|()| buf);
        Box::pin(Late {
            polls: self.delay(mode),
            op: Some(op),
        })
    }

    fn write(&self, buf: AlignedBuf, offset: u64, mode: IoMode) -> IoFuture<'_, AlignedBuf> {
        let op = move || self.write_now(buf.as_slice(), offset).map(|()| buf);
        Box::pin(Late {
            polls: self.delay(mode),
            op: Some(op),
        })
    }

    fn sync(&self, mode: IoMode) -> IoFuture<'_, ()> {
        Box::pin(Late {
            polls: self.delay(mode),
            op: Some(move || self.sync_now()),
        })
    }

    fn describe(&self) -> String {
        format!("mem:{}", self.name)
    }

    fn probe(&self) -> io::Result<()> {
        match self.inner.lock().removed {
            true => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("mem:{} was removed", self.name),
            )),
            false => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn block(fill: u8) -> crate::buf::AlignedBuf {
        let mut b = crate::buf::AlignedBuf::zeroed(4096);
        b.as_mut_slice().fill(fill);
        b
    }

    #[test]
    fn unflushed_writes_are_lost_on_power_cut() {
        let d = MemDevice::new("t", 64 * 1024);
        d.write_at(block(1).as_slice(), 0).unwrap();
        d.flush().unwrap();
        d.write_at(block(2).as_slice(), 0).unwrap();
        d.write_at(block(3).as_slice(), 4096).unwrap();
        d.power_cut();
        let mut buf = block(0);
        assert!(d.read_at(buf.as_mut_slice(), 0).is_err());
        d.restore_power(
            CutPolicy::DROP_ALL,
            &mut rand::rngs::StdRng::seed_from_u64(1),
        );
        d.read_at(buf.as_mut_slice(), 0).unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 1));
        d.read_at(buf.as_mut_slice(), 4096).unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 0));
    }

    #[test]
    fn a_rail_cut_loses_later_writes_and_flushes() {
        let rail = Arc::new(PowerRail::default());
        let (a, b) = (
            MemDevice::new("a", 64 * 1024),
            MemDevice::new("b", 64 * 1024),
        );
        a.attach_rail(rail.clone());
        b.attach_rail(rail.clone());
        a.write_at(block(1).as_slice(), 0).unwrap();
        rail.arm(2);
        b.write_at(block(2).as_slice(), 0).unwrap(); // op 1: before the cut
        a.flush().unwrap(); // op 2: before the cut, makes block 1 durable
        assert!(!rail.fired());
        a.write_at(block(3).as_slice(), 4096).unwrap(); // after the cut
        b.flush().unwrap(); // after the cut: b's write stays volatile
        assert!(rail.fired());
        let mut buf = block(0);
        a.read_at(buf.as_mut_slice(), 4096).unwrap();
        assert!(
            buf.as_slice().iter().all(|&x| x == 3),
            "reads see the lost write"
        );
        rail.disarm();
        let rng = &mut rand::rngs::StdRng::seed_from_u64(1);
        for d in [&a, &b] {
            d.power_cut();
            d.restore_power(CutPolicy::DROP_ALL, rng);
        }
        a.read_at(buf.as_mut_slice(), 0).unwrap();
        assert!(buf.as_slice().iter().all(|&x| x == 1));
        a.read_at(buf.as_mut_slice(), 4096).unwrap();
        assert!(buf.as_slice().iter().all(|&x| x == 0));
        b.read_at(buf.as_mut_slice(), 0).unwrap();
        assert!(buf.as_slice().iter().all(|&x| x == 0));
    }

    #[test]
    fn enforces_direct_io_alignment() {
        let d = MemDevice::new("t", 64 * 1024);
        let v = vec![0u8; 8192];
        let off = if (v.as_ptr() as usize).is_multiple_of(4096) {
            1
        } else {
            0
        };
        let e = d.write_at(&v[off..off + 4096], 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        assert!(d.write_at(block(1).as_slice(), 512).is_err());
    }

    #[test]
    fn torn_writes_mix_sectors() {
        let d = MemDevice::new("t", 64 * 1024);
        d.write_at(block(9).as_slice(), 0).unwrap();
        d.power_cut();
        d.restore_power(
            CutPolicy {
                keep: 0.0,
                tear: 1.0,
            },
            &mut rand::rngs::StdRng::seed_from_u64(7),
        );
        let mut buf = block(0);
        d.read_at(buf.as_mut_slice(), 0).unwrap();
        let nines = buf.as_slice().chunks(512).filter(|s| s[0] == 9).count();
        assert!(
            nines > 0 && nines < 8,
            "expected a torn write, got {nines}/8 sectors"
        );
    }

    #[test]
    fn late_completions_happen_in_any_order() {
        let mut last = std::collections::BTreeSet::new();
        for seed in 0..32 {
            let d = MemDevice::new("t", 64 * 1024);
            d.set_late_completions(seed, 3);
            // Two writes of one block in flight together: whichever
            // happens last is what the block holds.
            let (a, b) = futures::executor::block_on(futures::future::join(
                d.write(block(1), 0, IoMode::Async),
                d.write(block(2), 0, IoMode::Async),
            ));
            a.unwrap();
            b.unwrap();
            let mut buf = block(0);
            d.read_at(buf.as_mut_slice(), 0).unwrap();
            last.insert(buf.as_slice()[0]);
            // Blocking ops happen when made, late completions or not.
            let mut f = d.write(block(3), 4096, IoMode::Blocking);
            let cx = &mut Context::from_waker(std::task::Waker::noop());
            assert!(f.as_mut().poll(cx).is_ready());
        }
        assert_eq!(last, [1, 2].into(), "both orders happen");
    }

    #[test]
    fn a_late_write_happens_only_when_it_completes() {
        let d = MemDevice::new("t", 64 * 1024);
        d.set_late_completions(5, 1_000);
        let mut f = d.write(block(7), 0, IoMode::Async);
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        let mut buf = block(0);
        while f.as_mut().poll(cx).is_pending() {
            d.read_at(buf.as_mut_slice(), 0).unwrap();
            assert_eq!(buf.as_slice()[0], 0, "not yet written");
        }
        d.read_at(buf.as_mut_slice(), 0).unwrap();
        assert_eq!(buf.as_slice()[0], 7);
        assert_eq!(d.io_counts().0, 1);
    }
}
