//! The reuse gate: a freed segment may be written again only after every
//! read that might still be looking at it has finished.
//!
//! Readers `enter` before they look up the map and leave (drop the ticket)
//! after their device reads complete. To reuse segments freed so far, the
//! writer awaits [`ReuseGate::drained`]: it switches readers to the other
//! generation and waits until the old one is empty (an RCU grace period),
//! yielding meanwhile, since readers may run on the writer's own thread. Tickets are
//! plain values, so they can be held across `.await`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};

use parking_lot::Mutex;

/// Shared state.
#[derive(Default)]
pub struct ReuseGate {
    generation: AtomicU64,
    active: [AtomicUsize; 2],
    /// A task waiting in [`ReuseGate::drained`], woken by the last reader.
    waiter: Mutex<Option<Waker>>,
}

/// Held by a reader while it may touch segments.
pub struct Ticket {
    gate: Arc<ReuseGate>,
    parity: usize,
}

impl ReuseGate {
    /// Enter as a reader.
    pub fn enter(self: &Arc<Self>) -> Ticket {
        loop {
            let g = self.generation.load(Ordering::SeqCst);
            let p = (g & 1) as usize;
            self.active[p].fetch_add(1, Ordering::SeqCst);
            if self.generation.load(Ordering::SeqCst) == g {
                return Ticket {
                    gate: self.clone(),
                    parity: p,
                };
            }
            self.active[p].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Wait until every reader that entered before this call has left. The
    /// wait yields to the event loop (readers may run on the same thread);
    /// plain threads block on it with `block_on`.
    pub async fn drained(&self) {
        let g = self.generation.fetch_add(1, Ordering::SeqCst);
        let p = (g & 1) as usize;
        std::future::poll_fn(|cx| {
            if self.active[p].load(Ordering::SeqCst) == 0 {
                return Poll::Ready(());
            }
            *self.waiter.lock() = Some(cx.waker().clone());
            // Re-check: the last reader may have left before the waker was set.
            if self.active[p].load(Ordering::SeqCst) == 0 {
                self.waiter.lock().take();
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.gate.active[self.parity].fetch_sub(1, Ordering::SeqCst) == 1 {
            if let Some(w) = self.gate.waiter.lock().take() {
                w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    #[test]
    fn drain_waits_for_old_readers_only() {
        let gate = Arc::new(ReuseGate::default());
        let t = gate.enter();
        let g2 = gate.clone();
        let h = std::thread::spawn(move || {
            futures::executor::block_on(g2.drained());
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!h.is_finished(), "drain must wait for the reader");
        // A reader entering now belongs to the new generation and does not block.
        let t2 = gate.enter();
        drop(t);
        h.join().unwrap();
        drop(t2);
        futures::executor::block_on(gate.drained());
    }

    #[test]
    fn drained_yields_until_the_last_reader_leaves() {
        let gate = Arc::new(ReuseGate::default());
        let t = gate.enter();
        let mut f = Box::pin(gate.drained());
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(f.as_mut().poll(&mut cx).is_pending());
        let late = gate.enter(); // new generation: not waited for
        assert!(f.as_mut().poll(&mut cx).is_pending());
        drop(t);
        assert!(f.as_mut().poll(&mut cx).is_ready());
        drop(late);
    }
}
