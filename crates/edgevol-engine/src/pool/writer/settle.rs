//! Settling blind head writes (see `pool/overlay.rs`): one map scan per
//! chunk, the fragments planned in lsn order against the chunk's entries
//! as they evolve, then the entries, the frees and the referenced delta
//! installed together. Chunks are settled in key order from a cursor, so
//! consecutive settlements read neighbouring map leaves.
//!
//! Keeps invariant 1 (the settled map is what applying the writes one by
//! one gives: the same planner, in the same order, on the same entries —
//! every other change to a chunk settles it first) and invariant 4 (the
//! planner keeps every block a frozen view sees).

use crate::chunk::{self, ChunkChanges};
use crate::error::Result;
use crate::layout::CHUNK_BLOCKS;
use crate::map::{DataRef, Key};
use crate::pool::overlay::{apply_changes_to, Pending};

use super::Writer;

/// Fragments the overlay may hold before the writer settles in the
/// background of its rounds.
const SETTLE_LOW: usize = 16 << 10;

/// The low mark once the memtable is three quarters full.
const SETTLE_BEFORE_ROTATION: usize = 1024;

/// Fragments left when a waiting rotation settles the rest at once.
const ROTATE_AT: usize = 128;

/// Most chunks settled after one round (bounds the latency a round adds).
const SETTLE_STEP: usize = 512;

/// Chunks settled per step while the writer is idle, between which it
/// looks for new work (a step costs tens of microseconds).
pub(super) const IDLE_STEP: usize = 16;

impl Writer {
    /// A head write of `data` at `[lba, lba + n)` (inside one chunk), in
    /// view `head`: applied blindly (no map read), settled later.
    pub(super) fn apply_blind(
        &mut self,
        head: crate::catalog::ViewStep,
        lba: u64,
        n: u8,
        data: DataRef,
    ) {
        let (frozen, chain) = self.views_of(head.lineage, head.epoch);
        // The new record is live at once; what it replaces is freed when
        // the write is settled.
        let (stored, logical) = chunk::live_share(&data, u64::from(n));
        self.sh
            .segs
            .lock()
            .add_live(data.paddr.seg, stored, logical);
        self.sh.overlay.write().push(Pending {
            head,
            frozen,
            chain,
            lba,
            n,
            data,
        });
    }

    /// Settle the pending writes of chunk `key`.
    pub(super) fn settle_chunk(&mut self, key: (u32, u64)) -> Result<()> {
        let Some(frags) = self.sh.overlay.read().chunk(key) else {
            return Ok(());
        };
        let (l, c) = key;
        let mut entries = self.sh.map.scan_sorted(
            &mut self.settle_scan,
            Key::lower(l, c),
            Key::lower(l, c + CHUNK_BLOCKS),
        )?;
        // The continued scan must read what a fresh one does (every test
        // build checks it on every settlement).
        debug_assert!(
            entries == self.raw_scan(l, c, c + CHUNK_BLOCKS)?,
            "sorted scan of chunk {c} of lineage {l} differs from a fresh one"
        );
        let mut all = ChunkChanges::default();
        let mut delta: i64 = 0;
        for p in &frags {
            self.settle_chain(&p.chain, p.lba, p.lba + u64::from(p.n))?;
            let before = self.resolve_with(&p.chain, &entries, p.lba, u64::from(p.n))?;
            delta += i64::from(p.n) - chunk::data_blocks(&before) as i64;
            let plan = p.plan(&entries);
            apply_changes_to(&mut entries, &plan.changes);
            all.extend(plan);
        }
        // Entries before removal: a reader never misses a write (overlay.rs).
        self.apply_changes(all, None);
        self.sh.overlay.write().remove(key);
        self.add_referenced(l, delta);
        Ok(())
    }

    /// Settle every pending write of lineage `l` in chunks meeting `[from, to)`.
    pub(super) fn settle_range(&mut self, l: u32, from: u64, to: u64) -> Result<()> {
        let chunks = {
            let o = self.sh.overlay.read();
            if o.is_empty() {
                return Ok(());
            }
            o.chunks_in(l, from, to)
        };
        for k in chunks {
            self.settle_chunk(k)?;
        }
        Ok(())
    }

    /// Settle the ancestors of `chain` (every step but the head) over
    /// `[from, to)`. Outside recovery no ancestor has a pending write its
    /// descendants see (a catalog change settles everything); replay
    /// applies a whole log with the final catalog, so there it can.
    pub(super) fn settle_chain(
        &mut self,
        chain: &crate::catalog::Chain,
        from: u64,
        to: u64,
    ) -> Result<()> {
        for step in chain.iter().skip(1) {
            self.settle_range(step.lineage, from, to)?;
        }
        Ok(())
    }

    /// Settle up to `max` chunks from the cursor on, in key order.
    pub(super) fn settle_some(&mut self, max: usize) -> Result<()> {
        for _ in 0..max {
            let next = {
                let o = self.sh.overlay.read();
                o.next_chunk(self.settle_cursor)
                    .or_else(|| o.next_chunk((0, 0)))
            };
            let Some(k) = next else { break };
            self.settle_chunk(k)?;
            self.settle_cursor = (k.0, k.1 + CHUNK_BLOCKS);
        }
        Ok(())
    }

    /// Settle everything pending.
    pub(super) fn settle_all(&mut self) -> Result<()> {
        let t = std::time::Instant::now();
        let frags = self.sh.overlay.read().frags();
        while !self.sh.overlay.read().is_empty() {
            self.settle_some(usize::MAX)?;
        }
        if frags > 0 {
            tracing::debug!(pool = %self.sh.name, frags, micros = t.elapsed().as_micros() as u64, "settled every pending write");
        }
        Ok(())
    }

    /// After a round: keep the overlay near its low mark, a bounded step
    /// at a time.
    ///
    /// A memtable rotation settles everything at once (a checkpoint covers
    /// settled state only), so as a rotation nears the mark drops: the
    /// settlement a rotation waits for stays a few milliseconds.
    pub(super) fn settle_background(&mut self) -> Result<()> {
        let frags = self.sh.overlay.read().frags();
        // Rotations come when the memtable reaches its budget or the log
        // its replay budget (maint/mod.rs).
        let nearly_full = self.sh.map.active_bytes() * 4 >= self.sh.memtable_budget * 3
            || self.log_since_replay * 4 >= self.sh.cfg.replay_budget * 3;
        let low = if nearly_full {
            SETTLE_BEFORE_ROTATION
        } else {
            SETTLE_LOW
        };
        if frags > low {
            self.settle_some(SETTLE_STEP)?;
        }
        Ok(())
    }

    /// A rotation was asked for: settle a step, and rotate once little
    /// is left (the rotation settles the rest at once).
    pub(super) fn advance_rotation(&mut self) {
        if self.rotate_waiter.is_none() {
            return;
        }
        if self.sh.overlay.read().frags() > ROTATE_AT {
            if let Err(e) = self.settle_some(SETTLE_STEP) {
                self.poison(&e);
            }
        }
        if self.poisoned.is_some() || self.sh.overlay.read().frags() <= ROTATE_AT {
            if let Some(done) = self.rotate_waiter.take() {
                super::complete(done, Ok(self.rotate()));
            }
        }
    }

    pub(super) fn add_referenced(&mut self, l: u32, delta: i64) {
        if delta != 0 {
            *self.lineage_delta.entry(l).or_insert(0) += delta;
            *self.sh.lineage_delta.lock().entry(l).or_insert(0) += delta;
        }
    }
}
