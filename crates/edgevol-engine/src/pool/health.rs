//! The health probe: a thread per pool that probes every member device
//! each [`PoolConfig::health_interval`](super::PoolConfig)
//! ([`Device::probe`](crate::device::Device::probe): a file still linked
//! and still the one its path names, a block device still answering one
//! 4 KiB read of its label area). A device that vanished or failed is
//! FAULTED, and its group DEGRADED, within seconds even when no client I/O
//! touches it, so `pool status` says what is true (and the pool writes no
//! more to a device that is gone). One small read per block device per
//! interval does not contend with clients.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;

/// Longest the thread sleeps before it looks whether the pool closes.
const TICK: Duration = Duration::from_millis(100);

/// The probe thread's body: probes until the pool closes.
pub(crate) fn run(sh: Arc<Shared>) {
    let every = sh.cfg.health_interval;
    let mut last = Instant::now();
    while !sh.closing.load(Ordering::SeqCst) {
        std::thread::sleep(TICK.min(every));
        if last.elapsed() >= every {
            sh.vdevs.check_health();
            last = Instant::now();
        }
    }
}
