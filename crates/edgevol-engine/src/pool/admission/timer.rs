//! [`Sleep`]: a future that completes at a deadline, on any executor.
//!
//! The engine runs on the daemon's reactors (tokio), on plain threads
//! (`block_on`) and in tests, so it cannot borrow a runtime's timer. One
//! process-wide thread keeps the pending deadlines and wakes each waker
//! when its time comes; it exists only once something slept.
//!
//! Precision is the thread's wake-up latency (tens of microseconds), which
//! is what admission needs: it sleeps only for delays of 100 µs or more
//! and carries shorter ones as debt (see `admission/mod.rs`).

use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// A deadline and who waits for it (ordered by deadline, earliest first
/// out of the max-heap).
struct Entry(Instant, Waker);

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.0 == o.0
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.0.cmp(&self.0)
    }
}

struct Timer {
    heap: Mutex<BinaryHeap<Entry>>,
    cv: Condvar,
}

fn timer() -> &'static Timer {
    static T: OnceLock<&'static Timer> = OnceLock::new();
    T.get_or_init(|| {
        let t: &'static Timer = Box::leak(Box::new(Timer {
            heap: Mutex::new(BinaryHeap::new()),
            cv: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("ev-timer".into())
            .spawn(move || t.run())
            .expect("start the timer thread");
        t
    })
}

impl Timer {
    fn run(&self) {
        let mut heap = self.heap.lock();
        loop {
            let now = Instant::now();
            while heap.peek().is_some_and(|e| e.0 <= now) {
                if let Some(Entry(_, w)) = heap.pop() {
                    w.wake();
                }
            }
            match heap.peek().map(|e| e.0) {
                Some(at) => {
                    self.cv.wait_until(&mut heap, at);
                }
                None => self.cv.wait(&mut heap),
            }
        }
    }

    fn add(&self, at: Instant, w: Waker) {
        let mut heap = self.heap.lock();
        let earliest = heap.peek().is_none_or(|e| at < e.0);
        heap.push(Entry(at, w));
        if earliest {
            self.cv.notify_one();
        }
    }
}

/// Completes at `at`.
pub(crate) struct Sleep {
    at: Instant,
    registered: bool,
}

impl Sleep {
    /// A future that completes at `at` (at once if `at` has passed).
    pub(crate) fn until(at: Instant) -> Sleep {
        Sleep {
            at,
            registered: false,
        }
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        // A spurious poll before the deadline needs no second entry: the
        // first one wakes the task (executors keep one waker per task).
        if !self.registered {
            self.registered = true;
            timer().add(self.at, cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn sleeps_until_the_deadline_and_not_much_longer() {
        let t0 = Instant::now();
        futures::executor::block_on(Sleep::until(t0 + Duration::from_millis(30)));
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(30), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
    }

    #[test]
    fn earlier_deadlines_wake_first_whatever_the_order_they_came_in() {
        let t0 = Instant::now();
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = [60u64, 20, 40]
            .into_iter()
            .map(|ms| {
                let order = order.clone();
                std::thread::spawn(move || {
                    futures::executor::block_on(Sleep::until(t0 + Duration::from_millis(ms)));
                    order.lock().push(ms);
                })
            })
            .collect();
        for t in threads {
            t.join().expect("sleeper");
        }
        assert_eq!(*order.lock(), vec![20, 40, 60]);
    }

    #[test]
    fn a_past_deadline_is_ready_at_once() {
        let past = Instant::now() - Duration::from_millis(5);
        let mut s = Sleep::until(past);
        let w = futures::task::noop_waker();
        let mut cx = Context::from_waker(&w);
        assert_eq!(Pin::new(&mut s).poll(&mut cx), Poll::Ready(()));
    }
}
