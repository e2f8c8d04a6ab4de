//! Admission of client writes: as free segments run down toward the data
//! reserve, writes are paced so the pool slows down smoothly instead of
//! stopping at the reserve (issue 14 §3).
//!
//! ```text
//!  free data segments:  reserve ............ clean_below ............ total
//!  slot per 4 KiB:      AT_RESERVE  →  geometric  →  AT_TOP | none
//!                       above = free − reserve, band = clean_below − reserve
//!  slot(above) = AT_RESERVE · (AT_TOP / AT_RESERVE) ^ (above / band)
//! ```
//!
//! Below `clean_below` the cleaner is at work (`maint/mod.rs`); every
//! written block then costs a time slot that grows as the free segments
//! approach the reserve, so the write rate settles where it equals the
//! rate the cleaner frees space at. The curve is geometric: each free
//! segment more or less changes the rate by the same factor (about a
//! fifth in a band of 24), so the balance point lies inside the band and
//! the rate moves smoothly as whole segments come and go. (The first
//! curve, `BASE · (band − above) / above`, put the balance point one or
//! two segments above the reserve, where one segment halved or doubled
//! the rate: at 90% full it cost a third of the throughput for the
//! tail it bought; performance.md.) The slots are taken in turn from one
//! clock for the whole pool (a token bucket without burst, like ZFS's
//! write throttle, `dmu_tx_delay`), so the aggregate rate is bounded
//! whatever the number of clients and queue depth, and no single write
//! waits more than [`MAX_WAIT`]. Slots shorter than [`MIN_SLEEP`] are
//! not slept but carried: the next write's slot starts where this one's
//! ended.
//!
//! The throttle is a curve rather than a rate measured from the cleaner's
//! output: the cleaner frees segments in steps (a victim becomes free at
//! the checkpoint after its relocation), and a measured rate follows those
//! steps with a lag; the free count itself integrates them.
//!
//! Keeps invariant 5 (full is not fatal): the reserve stays the hard floor
//! (writes still wait there for a free segment, and fail with ENOSPC only
//! at the usable capacity); admission only spreads the waiting out. Off
//! when maintenance is driven by hand (`PoolConfig::background` false):
//! nothing would free the space a paced write waits for.

mod timer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(crate) use timer::Sleep;

use super::Shared;

/// The slot of one 4 KiB block at the reserve (1 Ki blocks/s).
const AT_RESERVE: Duration = Duration::from_millis(1);

/// The slot of one 4 KiB block at the top of the band (100 Ki blocks/s,
/// beyond what a small host's cleaner frees).
const AT_TOP: Duration = Duration::from_micros(10);

/// The most a write waits for its slot.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(20);

/// Shorter waits are carried to the next write instead of slept.
const MIN_SLEEP: Duration = Duration::from_micros(100);

/// How often the free segments are sampled.
const SAMPLE: Duration = Duration::from_millis(1);

/// The pace of client writes (one per pool, in `Shared`).
pub(crate) struct Admission {
    epoch: Instant,
    /// Nanoseconds since `epoch`: where the last write's slot ended.
    next: AtomicU64,
    /// Nanoseconds since `epoch` of the last sample.
    sampled: AtomicU64,
    /// The slot of one block as of the last sample, ns (0: no pacing).
    per_block: AtomicU64,
    /// Pacing as of the last sample (to wake the cleaner on entering it).
    pacing: AtomicBool,
    /// Writes that waited, and their total wait in nanoseconds.
    pub(crate) delayed: AtomicU64,
    pub(crate) delayed_ns: AtomicU64,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            epoch: Instant::now(),
            next: AtomicU64::new(0),
            sampled: AtomicU64::new(0),
            per_block: AtomicU64::new(0),
            pacing: AtomicBool::new(false),
            delayed: AtomicU64::new(0),
            delayed_ns: AtomicU64::new(0),
        }
    }
}

/// The slot of one block with `above` free segments over the reserve in a
/// band of `band` (0: none).
pub(crate) fn per_block(above: u64, band: u64) -> Duration {
    if band == 0 || above >= band {
        return Duration::ZERO;
    }
    let ratio = AT_TOP.as_secs_f64() / AT_RESERVE.as_secs_f64();
    let slot = AT_RESERVE.as_secs_f64() * ratio.powf(above as f64 / band as f64);
    Duration::from_secs_f64(slot).min(MAX_WAIT)
}

impl Admission {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Wait for the slot of a write of `blocks` blocks.
    pub(crate) async fn admit(&self, sh: &Shared, blocks: u64) {
        if !sh.cfg.background {
            return;
        }
        let now = self.now_ns();
        if now.saturating_sub(self.sampled.load(Ordering::Relaxed)) >= SAMPLE.as_nanos() as u64 {
            self.sample(sh, now);
        }
        let per = self.per_block.load(Ordering::Relaxed);
        if per == 0 {
            return;
        }
        let end = self.slot(now, per.saturating_mul(blocks.max(1)));
        let wait = end - now;
        if wait < MIN_SLEEP.as_nanos() as u64 {
            return;
        }
        self.delayed.fetch_add(1, Ordering::Relaxed);
        self.delayed_ns.fetch_add(wait, Ordering::Relaxed);
        Sleep::until(self.epoch + Duration::from_nanos(end)).await;
    }

    /// Take the next slot of `cost` ns for a write arriving at `now`: it
    /// starts where the last one ended (or now, if that has passed) and
    /// ends at most [`MAX_WAIT`] from now. Returns its end.
    fn slot(&self, now: u64, cost: u64) -> u64 {
        let cap = now + MAX_WAIT.as_nanos() as u64;
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let end = (cur.max(now) + cost).min(cap);
            match self
                .next
                .compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return end,
                Err(c) => cur = c,
            }
        }
    }

    /// Look at the free segments again (skipped if the segment table is
    /// busy: the last sample stands, and no reactor blocks on the lock).
    fn sample(&self, sh: &Shared, now: u64) {
        self.sampled.store(now, Ordering::Relaxed);
        let Some(free) = sh.segs.try_lock().map(|s| s.free_count()) else {
            return;
        };
        let reserve = super::data_reserve(sh);
        let band = super::capacity::clean_below(sh).saturating_sub(reserve);
        let above = free.saturating_sub(reserve);
        let per = per_block(above, band);
        self.per_block
            .store(per.as_nanos() as u64, Ordering::Relaxed);
        let pacing = !per.is_zero();
        if pacing && !self.pacing.swap(true, Ordering::Relaxed) {
            // Entering the band: the cleaner need not wait for its timer.
            sh.wake_maintenance();
        } else if !pacing {
            self.pacing.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_grows_geometrically_as_free_segments_run_down_to_the_reserve() {
        let band = 24;
        assert_eq!(per_block(24, band), Duration::ZERO, "at the band's top");
        assert_eq!(per_block(40, band), Duration::ZERO, "above it");
        assert_eq!(per_block(0, band), AT_RESERVE, "at the reserve");
        assert_eq!(per_block(0, 0), Duration::ZERO, "no band, no pacing");
        let mid = per_block(12, band).as_secs_f64();
        let want = (AT_RESERVE.as_secs_f64() * AT_TOP.as_secs_f64()).sqrt();
        assert!((mid / want - 1.0).abs() < 1e-3, "half way: {mid} vs {want}");
        // Each segment more divides the slot by the same factor.
        let step = per_block(1, band).as_secs_f64() / per_block(0, band).as_secs_f64();
        for above in 1..band - 1 {
            let r = per_block(above + 1, band).as_secs_f64() / per_block(above, band).as_secs_f64();
            assert!((r / step - 1.0).abs() < 1e-3, "{above}: {r} vs {step}");
        }
        assert!(step > 0.8 && step < 0.85, "{step}");
    }

    #[test]
    fn slots_follow_one_another_and_no_write_waits_past_the_cap() {
        let a = Admission::default();
        let us = 1_000;
        // Three writes at once: one after the other, whatever the caller.
        assert_eq!(a.slot(0, 50 * us), 50 * us);
        assert_eq!(a.slot(0, 50 * us), 100 * us);
        assert_eq!(a.slot(10 * us, 50 * us), 150 * us);
        // After a quiet spell the next slot starts now, not in the past.
        assert_eq!(a.slot(1_000 * us, 50 * us), 1_050 * us);
        // A queue of writes never pushes one past MAX_WAIT from its arrival.
        let cap = MAX_WAIT.as_nanos() as u64;
        for _ in 0..1_000 {
            let end = a.slot(2_000 * us, 500 * us);
            assert!(end <= 2_000 * us + cap, "{end}");
        }
        assert_eq!(a.slot(2_000 * us, 500 * us), 2_000 * us + cap);
    }
}
