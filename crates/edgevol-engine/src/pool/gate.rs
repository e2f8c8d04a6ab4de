//! The reuse gate: a freed segment may be written again only after every
//! read that might still be looking at it has finished.
//!
//! Readers `enter` before they look up the map and leave (drop the ticket)
//! after their device reads complete. To reuse segments freed so far, the
//! writer calls [`ReuseGate::drain`]: it switches readers to the other
//! generation and waits until the old one is empty (an RCU grace period).
//! Tickets are plain values, so they can be held across `.await`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Shared state.
#[derive(Default)]
pub struct ReuseGate {
    generation: AtomicU64,
    active: [AtomicUsize; 2],
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

    /// Wait until every reader that entered before this call has left.
    pub fn drain(&self) {
        let g = self.generation.fetch_add(1, Ordering::SeqCst);
        let p = (g & 1) as usize;
        let mut spins = 0u32;
        while self.active[p].load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.active[self.parity].fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_waits_for_old_readers_only() {
        let gate = Arc::new(ReuseGate::default());
        let t = gate.enter();
        let g2 = gate.clone();
        let h = std::thread::spawn(move || {
            g2.drain();
        });
        std::thread::sleep(Duration::from_millis(20));
        assert!(!h.is_finished(), "drain must wait for the reader");
        // A reader entering now belongs to the new generation and does not block.
        let t2 = gate.enter();
        drop(t);
        h.join().unwrap();
        drop(t2);
        gate.drain();
    }
}
