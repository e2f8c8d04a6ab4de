//! Background maintenance: memtable flushes, compaction, garbage collection
//! of destroyed history, the cleaner, and flatten (promote).
//!
//! Everything here reads freely but changes state only by sending ops to
//! the writer, so it can never race with client writes. Long work is cut
//! into bounded ops so client latency stays flat.
//!
//! This module holds the thread loop and what triggers each job; the
//! jobs live beside it: `runs` (building map runs, memtable flushes),
//! `compact` (the level policy and merges), `gc` (destroyed history),
//! `cleaner` (victim choice, relocation) and `flatten` (promote). Keeps
//! invariant 5 (a full pool fails waiting writes with ENOSPC instead of
//! hanging, and cleaning never eats the data reserve) and invariant 6
//! (memtable flushes and compaction keep memory within its budget).

mod cleaner;
mod compact;
mod flatten;
mod gc;
mod runs;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::writer::MaintOp;
use super::Shared;
use crate::error::{Error, ErrorKind, Result};

pub(crate) use cleaner::clean;
use cleaner::{clean_locked, reclaimable_bytes, MAX_VICTIM_UTIL};
use compact::{compact, Scope};
pub(crate) use flatten::flatten;
use gc::gc_pending;
pub(crate) use runs::{build_run_with, flush_memtable, TableAlloc};

/// Free segments beyond the metadata floor that the L0-only merges inside
/// the cleaner's loop leave (besides room for their output): two of the
/// cleaner's [`super::capacity::CLEANER_SEGMENTS`]. A merge's output
/// replaces short-lived runs whose segments come free at the next
/// checkpoint, so it borrows those segments for one round; held to all
/// four, the merges did not run at the free counts a 90% full pool sits at
/// and L0 stopped writers for 0.1–0.3 s.
const L0_MERGE_KEEP_FREE: u64 = 2;

/// What maintenance has been doing (for status).
#[derive(Debug, Default, Clone)]
pub struct MaintStatus {
    /// The last error, if the last step failed.
    pub last_error: Option<String>,
    /// Lineages already collected, with the views they were collected for.
    gc_done: BTreeMap<u32, Vec<u64>>,
    /// Log bytes written at the last memtable flush.
    flushed_at_bytes: u64,
}

/// Send an op to the writer and wait for its answer.
pub(crate) fn send_op<T>(
    sh: &Shared,
    make: impl FnOnce(super::writer::Done<T>) -> MaintOp,
) -> Result<T> {
    send(sh, make)
}

fn send<T>(sh: &Shared, make: impl FnOnce(super::writer::Done<T>) -> MaintOp) -> Result<T> {
    let (tx, rx) = futures::channel::oneshot::channel();
    sh.maint_tx
        .send_blocking(make(tx))
        .map_err(|_| Error::new(ErrorKind::Shutdown, "pool is closing"))?;
    futures::executor::block_on(rx)
        .map_err(|_| Error::new(ErrorKind::Shutdown, "pool is closing"))?
}

/// The maintenance thread.
pub(crate) fn run(sh: Arc<Shared>) {
    let mut last_flush = Instant::now();
    let mut more = false;
    loop {
        if !more {
            let (m, cv) = &sh.maint_wake;
            let mut woken = m.lock();
            if !*woken {
                cv.wait_for(&mut woken, Duration::from_millis(500));
            }
            *woken = false;
        }
        more = false;
        if sh.closing.load(Ordering::SeqCst) {
            return;
        }
        if sh.vdevs.poisoned().is_some() {
            continue;
        }
        let r = step(&sh, &mut last_flush);
        let mut st = sh.maint_status.lock();
        match r {
            Ok(m) => {
                st.last_error = None;
                more = m;
            }
            Err(e) if e.kind() == ErrorKind::Shutdown => return,
            Err(e) => {
                tracing::warn!(pool = %sh.name, error = %e, "maintenance step failed");
                st.last_error = Some(e.to_string());
            }
        }
    }
}

/// One round of maintenance. Ok(true): more is due right away (the map's
/// levels are not in shape yet), so do not sleep.
fn step(sh: &Arc<Shared>, last_flush: &mut Instant) -> Result<bool> {
    let _g = sh.maint_lock.lock();
    let blocked = sh.space_blocked.load(Ordering::Relaxed);
    let (free, total) = {
        let s = sh.segs.lock();
        (s.free_count(), sh.vdevs.total_segments())
    };
    let reserve = super::data_reserve(sh);
    let low = super::capacity::clean_below(sh);
    // Only clean when there is dead space worth reclaiming: at least two
    // segments' worth in sealed segments.
    let reclaimable = reclaimable_bytes(sh);
    // Still short of free segments after cleaning what a step may: go on
    // without sleeping (client writes are paced meanwhile, `admission`).
    let mut pressing = false;
    if (blocked || free < low) && reclaimable >= 2 * sh.vdevs.segment_size {
        let high = (total / 5).max(low + 2);
        let mut reclaimed = false;
        let mut rounds = 0;
        while rounds < 16 {
            rounds += 1;
            let t = Instant::now();
            // Under pressure, any segment with dead space is worth cleaning;
            // flushing after each small step turns the victims into free
            // segments before the cleaner's own output needs more.
            let urgent = sh.segs.lock().free_count() <= reserve + 1;
            let (n, util) = if urgent {
                (1, MAX_VICTIM_UTIL)
            } else {
                (4, 0.90)
            };
            let mut r = clean_locked(sh, n, util);
            if matches!(r, Ok(0)) && util < MAX_VICTIM_UTIL {
                r = clean_locked(sh, n, MAX_VICTIM_UTIL);
            }
            let cleaned = match r {
                Ok(c) => c,
                // No room left even for the cleaner's output: stop here;
                // waiting writes are failed below rather than left hanging.
                Err(e) if e.kind() == ErrorKind::NoSpace => 0,
                Err(e) => return Err(e),
            };
            reclaimed |= cleaned > 0;
            let t_clean = t.elapsed();
            flush_memtable(sh)?;
            let t_flush = t.elapsed();
            // Each round flushes a small run: keep L0 short while cleaning
            // (writers stall at `L0_STOP` runs, and every write's lookup
            // reads each of them), down to the cleaner's own segments. Held
            // above the data reserve (`reserve + 2`) the merges never ran
            // at a 90% full pool, L0 filled and writers stopped for up to
            // 0.9 s; that hold was there because usable capacity followed
            // the metadata segments of the last checkpoint, which frequent
            // merges raise. The fixed metadata allowance (capacity.rs) and
            // the lifetime classes of metadata segments (space.rs) took that
            // away.
            compact(
                sh,
                Scope::L0Only {
                    keep_free: L0_MERGE_KEEP_FREE,
                },
            )?;
            let t_compact = t.elapsed();
            force_install(sh)?;
            let free = sh.segs.lock().free_count();
            tracing::debug!(
                pool = %sh.name, cleaned, free, urgent,
                clean_ms = t_clean.as_millis() as u64,
                flush_ms = (t_flush - t_clean).as_millis() as u64,
                compact_ms = (t_compact - t_flush).as_millis() as u64,
                install_ms = (t.elapsed() - t_compact).as_millis() as u64,
                "cleaner round"
            );
            if cleaned == 0 || free >= high {
                break;
            }
        }
        let after = sh.segs.lock().free_count();
        pressing = reclaimed && after < low;
        // Only when no victim could be cleaned at all: writers take what the
        // cleaner frees as soon as it is free, so a free count that did not
        // grow says nothing (failing them then was a false ENOSPC at 89%
        // of usable space, seen in the pool-90-full benchmark).
        if sh.space_blocked.load(Ordering::Relaxed) && !reclaimed && after <= reserve {
            // Nothing can be reclaimed: waiting writes get ENOSPC, not a hang.
            tracing::warn!(pool = %sh.name, "no space can be reclaimed; failing waiting writes with ENOSPC");
            let _ = sh.maint_tx.send_blocking(MaintOp::FailStalled);
        }
    }
    let written = sh.stats.bytes_written.load(Ordering::Relaxed);
    let since = written - sh.maint_status.lock().flushed_at_bytes;
    let mem = sh.map.active_bytes();
    let due = mem >= sh.memtable_budget
        || since >= sh.cfg.replay_budget
        || (sh.map.active_len() > 0 && last_flush.elapsed() >= sh.cfg.flush_interval);
    if due && flush_memtable(sh)? {
        *last_flush = Instant::now();
    }
    let t = Instant::now();
    let compacted = compact(sh, Scope::Full)?;
    if compacted && t.elapsed() >= Duration::from_millis(10) {
        tracing::debug!(pool = %sh.name, ms = t.elapsed().as_millis() as u64, "compaction");
    }
    gc_pending(sh)?;
    Ok(compacted || pressing || sh.map.active_bytes() >= sh.memtable_budget)
}

/// Move the persisted replay point to now even when the memtable is empty,
/// so segments whose records all died can be freed.
fn force_install(sh: &Shared) -> Result<()> {
    send(sh, MaintOp::FlushNow)
}

/// A barrier through the writer: every batch written before returns is on
/// the devices (and the replay point moved to now).
pub(crate) fn flush_now(sh: &Shared) -> Result<()> {
    force_install(sh)
}

/// Settle every pending blind write, so the map and the counters agree.
pub(crate) fn settle(sh: &Shared) -> Result<()> {
    send(sh, MaintOp::Settle)
}

/// Flush the memtable, run pending GC; with `full`, until nothing is pending.
pub(crate) fn run_all(sh: &Arc<Shared>, full: bool) -> Result<()> {
    let _g = sh.maint_lock.lock();
    // A poisoned pool writes nothing more (vdev/write.rs).
    if let Some(why) = sh.vdevs.poisoned() {
        return Err(crate::error::Error::new(
            crate::error::ErrorKind::Poisoned,
            why,
        ));
    }
    if full {
        for _ in 0..4 {
            gc_pending(sh)?;
            flush_memtable(sh)?;
            let cat = sh.catalog();
            if cat.gc_todo.is_empty() && cat.purge_todo.is_empty() {
                break;
            }
        }
        compact(sh, Scope::Full)?;
    }
    flush_memtable(sh)?;
    Ok(())
}
