//! Settling blind head writes (see `overlay.rs`), on the writer's thread
//! and on a thread of its own.
//!
//! Settling a chunk is one map scan, the chunk's fragments planned in lsn
//! order against its entries as they evolve (`chunk::plan_write`, the
//! planner writes used before they were blind), then the entries, the
//! frees and the head's referenced delta installed together, and the
//! settled fragments dropped from the overlay.
//!
//! Who settles:
//! * the **settler thread** ([`run`]), continuously in key order from a
//!   cursor while the overlay holds more than `PoolConfig::settle_low`
//!   fragments (1024) —
//!   the work the writer's thread did after its rounds, moved to another
//!   core (on a 2-core host the writer's thread is saturated by the
//!   write path and the second core is partly idle);
//! * the **writer**, for what needs the settled map at once: the chunks a
//!   trim, relocation, copy, move or collection touches, everything
//!   before a memtable rotation, a catalog change or an ENOSPC decision.
//!
//! Both take the pool's settle lock for each chunk, so a chunk is settled
//! by one of them at a time, in lsn order; the writer may append
//! fragments to a chunk meanwhile, and only the fragments that were
//! settled are dropped. Readers are unaffected (the overlay's argument:
//! entries are installed before their fragments are dropped, and applying
//! a fragment twice changes nothing).
//!
//! Keeps invariant 1 (the settled map is what applying the writes one by
//! one gives: the same planner, in the same order, on the same entries)
//! and invariant 4 (the planner keeps every block a frozen view sees).

use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Chain;
use crate::chunk::{self, ChunkChanges, Piece};
use crate::error::Result;
use crate::layout::CHUNK_BLOCKS;
use crate::map::{DataRef, Key, SortedScan, Value};
use crate::pool::overlay::apply_changes_to;

use super::Shared;

/// Chunks the settler thread settles between looks at whether to stop.
const THREAD_STEP: usize = 64;

/// A settler's position: where its next step starts, and its runs'
/// positions for ascending scans.
#[derive(Default)]
pub(crate) struct Settler {
    cursor: (u32, u64),
    scan: SortedScan,
}

impl Settler {
    /// Settle the pending writes of chunk `key`.
    pub(crate) fn settle_chunk(&mut self, sh: &Shared, key: (u32, u64)) -> Result<()> {
        let _one_at_a_time = sh.settle_lock.lock();
        let Some(frags) = sh.overlay.read().chunk(key) else {
            return Ok(());
        };
        let (l, c) = key;
        let mut entries = sh.map.scan_sorted(
            &mut self.scan,
            Key::lower(l, c),
            Key::lower(l, c + CHUNK_BLOCKS),
        )?;
        // The continued scan must read what a fresh one does (every test
        // build checks it on every settlement).
        debug_assert!(
            entries
                == sh
                    .map
                    .scan(
                        Key::lower(l, c),
                        Key::lower(l, c + CHUNK_BLOCKS),
                        usize::MAX
                    )?
                    .entries,
            "sorted scan of chunk {c} of lineage {l} differs from a fresh one"
        );
        let mut all = ChunkChanges::default();
        let mut delta: i64 = 0;
        for p in &frags {
            self.settle_chain(sh, &p.chain, p.lba, p.lba + u64::from(p.n))?;
            let before = resolve_with(sh, &p.chain, &entries, p.lba, u64::from(p.n))?;
            delta += i64::from(p.n) - chunk::data_blocks(&before) as i64;
            let plan = p.plan(&entries);
            apply_changes_to(&mut entries, &plan.changes);
            all.extend(plan);
        }
        // Entries before the fragments go: a reader never misses a write.
        install(sh, all, None);
        sh.overlay.write().remove_settled(key, frags.len());
        add_referenced(sh, l, delta);
        Ok(())
    }

    /// Settle every pending write of lineage `l` in chunks meeting `[from, to)`.
    pub(crate) fn settle_range(&mut self, sh: &Shared, l: u32, from: u64, to: u64) -> Result<()> {
        let chunks = {
            let o = sh.overlay.read();
            if o.is_empty() {
                return Ok(());
            }
            o.chunks_in(l, from, to)
        };
        for k in chunks {
            self.settle_chunk(sh, k)?;
        }
        Ok(())
    }

    /// Settle the ancestors of `chain` (every step but the head) over
    /// `[from, to)`. Outside recovery no ancestor has a pending write its
    /// descendants see (a catalog change settles everything); replay
    /// applies a whole log with the final catalog, so there it can.
    pub(crate) fn settle_chain(
        &mut self,
        sh: &Shared,
        chain: &Chain,
        from: u64,
        to: u64,
    ) -> Result<()> {
        for step in chain.iter().skip(1) {
            self.settle_range(sh, step.lineage, from, to)?;
        }
        Ok(())
    }

    /// Settle up to `max` chunks from the cursor on, in key order.
    pub(crate) fn settle_some(&mut self, sh: &Shared, max: usize) -> Result<()> {
        for _ in 0..max {
            let next = {
                let o = sh.overlay.read();
                o.next_chunk(self.cursor).or_else(|| o.next_chunk((0, 0)))
            };
            let Some(k) = next else { break };
            self.settle_chunk(sh, k)?;
            self.cursor = (k.0, k.1 + CHUNK_BLOCKS);
        }
        Ok(())
    }

    /// Settle everything pending (before what `why` says, for the log).
    pub(crate) fn settle_all(&mut self, sh: &Shared, why: &'static str) -> Result<()> {
        let t = std::time::Instant::now();
        let frags = sh.overlay.read().frags();
        while !sh.overlay.read().is_empty() {
            self.settle_some(sh, usize::MAX)?;
        }
        if frags > 0 {
            tracing::debug!(pool = %sh.name, frags, micros = t.elapsed().as_micros() as u64, why, "settled every pending write");
        }
        Ok(())
    }
}

/// What `chain` sees at `[lba, lba + n)`, with `head_entries` standing for
/// the head lineage's entries of the chunk.
pub(crate) fn resolve_with(
    sh: &Shared,
    chain: &Chain,
    head_entries: &[(Key, Value)],
    lba: u64,
    n: u64,
) -> Result<Vec<Piece>> {
    let head = chain.first().map(|s| s.lineage);
    chunk::resolve(chain, lba, n as u32, |l, f, t| {
        if Some(l) == head {
            return Ok(head_entries
                .iter()
                .filter(|(k, _)| k.lba >= f && k.lba < t)
                .cloned()
                .collect());
        }
        Ok(sh
            .map
            .scan(Key::lower(l, f), Key::lower(l, t), usize::MAX)?
            .entries)
    })
}

/// Install a chunk's map changes: the new record's live share (`new`),
/// the frees, then the entries.
pub(crate) fn install(sh: &Shared, c: ChunkChanges, new: Option<&DataRef>) {
    if let Some(d) = new {
        // The new record's share for the blocks actually referenced (a
        // flatten copy may insert only some of them).
        let blocks: u64 = c
            .changes
            .iter()
            .filter_map(|(_, v)| v.as_ref().and_then(Value::data))
            .filter(|x| x.paddr == d.paddr)
            .map(|x| u64::from(x.nblocks))
            .sum();
        if blocks > 0 {
            let (stored, logical) = chunk::live_share(d, blocks);
            sh.segs.lock().add_live(d.paddr.seg, stored, logical);
        }
    }
    if !c.freed.is_empty() {
        let mut segs = sh.segs.lock();
        for f in &c.freed {
            segs.sub_live(f.rec.seg, f.stored, f.logical);
            if f.gone && f.plain {
                segs.mark_gone(f.rec);
            }
        }
    }
    sh.map.insert_all(c.changes);
}

/// Add `delta` blocks to lineage `l`'s referenced count.
pub(crate) fn add_referenced(sh: &Shared, l: u32, delta: i64) {
    if delta != 0 {
        *sh.lineage_delta.lock().entry(l).or_insert(0) += delta;
    }
}

/// Wake the settler thread if the overlay is above its low mark.
pub(crate) fn nudge(sh: &Shared, frags: usize) {
    if frags > sh.cfg.settle_low {
        wake(sh);
    }
}

/// Wake the settler thread (to settle, or to notice the pool closing).
pub(crate) fn wake(sh: &Shared) {
    let (m, cv) = &sh.settle_wake;
    *m.lock() = true;
    cv.notify_one();
}

/// The settler thread: keeps the overlay near `PoolConfig::settle_low`
/// until the pool closes or is poisoned.
pub(crate) fn run(sh: Arc<Shared>) {
    let mut s = Settler::default();
    loop {
        {
            let (m, cv) = &sh.settle_wake;
            let mut woken = m.lock();
            if !*woken {
                cv.wait_for(&mut woken, Duration::from_millis(100));
            }
            *woken = false;
        }
        if sh.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        while sh.vdevs.poisoned().is_none() && sh.overlay.read().frags() > sh.cfg.settle_low {
            if let Err(e) = s.settle_some(&sh, THREAD_STEP) {
                // The writer settles the same chunk again before it is
                // needed; a map that cannot be read is the pool's end.
                sh.vdevs.poison(&e);
                break;
            }
            if sh.closing.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
        }
    }
}
