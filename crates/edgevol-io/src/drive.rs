//! Completing a ring's ops from a tokio event loop.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

use tokio::io::unix::AsyncFd;

use crate::ring::Ring;

/// The ring's eventfd, borrowed: the `Rc<Ring>` held next to it keeps the
/// descriptor open for as long as this exists.
struct EventFd {
    fd: RawFd,
    _ring: Rc<Ring>,
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

/// Wake every op of `ring` as its completion arrives, and submit queued
/// entries in batches (see [`Ring::flush_task`]), forever: run it as a task
/// on the ring's thread (inside a `LocalSet`); abort it to stop. Fails if
/// the eventfd cannot be watched.
pub async fn drive(ring: Rc<Ring>) -> io::Result<()> {
    let flusher = tokio::task::spawn_local(ring.clone().flush_task());
    let r = reap_loop(ring).await;
    flusher.abort();
    r
}

async fn reap_loop(ring: Rc<Ring>) -> io::Result<()> {
    let fd = EventFd {
        fd: ring.event_fd(),
        _ring: ring.clone(),
    };
    // SAFETY: the descriptor stays open while `fd` lives (it holds the ring
    // that owns it), and nothing else closes or replaces it meanwhile.
    let events = unsafe { AsyncFd::register(fd)? };
    loop {
        let mut guard = events.readable().await?;
        ring.clear_event();
        ring.reap();
        guard.clear_ready();
    }
}
