//! The compaction thread: merges the map's levels beside the maintenance
//! thread, so the cleaner keeps freeing segments (and flushes keep
//! running) while a merge into L1 — hundreds of milliseconds on a large
//! map — is under way. The maintenance thread wakes it after every flush;
//! it also looks every half second. Merges are serialised by the map's
//! compaction lock (`compact`), so this thread and the cleaner's small L0
//! merges never take the same runs. Keeps invariant 6 (L0 stays short:
//! lookups and memory stay bounded) and, through `compact`'s room check,
//! invariant 5.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::compact::{compact, Scope};
use crate::error::ErrorKind;
use crate::pool::Shared;

/// The running compaction thread; stopped and joined when dropped.
pub(super) struct Compactor {
    wake: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Compactor {
    /// Start the thread for the pool `sh`.
    pub(super) fn start(sh: &Arc<Shared>) -> Compactor {
        let wake = Arc::new((Mutex::new(false), Condvar::new()));
        let (sh2, wake2) = (sh.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name(format!("ev-compact-{}", sh.name))
            .spawn(move || run(&sh2, &wake2))
            .map_err(|e| tracing::error!(pool = %sh.name, error = %e, "cannot start the compaction thread; maintenance compacts"))
            .ok();
        Compactor { wake, thread }
    }

    /// Whether the thread runs (if not, the maintenance thread compacts).
    pub(super) fn running(&self) -> bool {
        self.thread.is_some()
    }

    /// Look at the levels now (a flush added a run).
    pub(super) fn nudge(&self) {
        let (m, cv) = &*self.wake;
        *m.lock() = true;
        cv.notify_one();
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.nudge();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(sh: &Shared, wake: &(Mutex<bool>, Condvar)) {
    loop {
        {
            let (m, cv) = wake;
            let mut woken = m.lock();
            if !*woken {
                cv.wait_for(&mut woken, Duration::from_millis(500));
            }
            *woken = false;
        }
        if sh.closing.load(Ordering::SeqCst) {
            return;
        }
        if sh.poisoned.lock().is_some() {
            continue;
        }
        // Until the levels are in shape (each call does one merge).
        loop {
            match compact(sh, Scope::Full) {
                Ok(true) => {
                    if sh.closing.load(Ordering::SeqCst) {
                        return;
                    }
                }
                Ok(false) => break,
                Err(e) if e.kind() == ErrorKind::Shutdown => return,
                Err(e) => {
                    tracing::warn!(pool = %sh.name, error = %e, "compaction failed");
                    sh.maint_status.lock().last_error = Some(e.to_string());
                    break;
                }
            }
        }
    }
}
