//! The writer's side of blind head writes (see `pool/overlay.rs`): the
//! blind apply, and when the writer's thread settles — everything before
//! a rotation, in steps while a rotation waits, after its rounds when the
//! overlay runs high (the settler thread, `pool/settler.rs`, normally
//! keeps it low), and in small steps while idle. Settling itself is in
//! `settler.rs`, shared with the settler thread.
//!
//! Keeps invariant 1 (the settled map is what applying the writes one by
//! one gives: every other change to a chunk settles it first) and
//! invariant 4 (the planner keeps every block a frozen view sees).

use crate::chunk;
use crate::error::Result;
use crate::map::DataRef;
use crate::pool::overlay::Pending;
use crate::pool::settler;

use super::Writer;

/// Fragments the overlay may hold before the writer settles in the
/// background of its rounds.
const SETTLE_LOW: usize = 16 << 10;

/// Fragments pending at which the writer's thread helps a settler thread
/// that falls behind.
const SETTLER_BEHIND: usize = 64 << 10;

/// The low mark once the memtable is three quarters full.
const SETTLE_BEFORE_ROTATION: usize = 1024;

/// Fragments left when a waiting rotation settles the rest at once.
const ROTATE_AT: usize = 128;

/// Most chunks settled after one round (bounds the latency a round adds).
const SETTLE_STEP: usize = 512;

/// The same with a settler thread: the overlay it leaves is sparse (its
/// chunks far apart, each settlement a fresh lookup in every run, tens of
/// microseconds), so the writer's steps are smaller.
const SETTLE_STEP_SPARSE: usize = 32;

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

    /// Settle every pending write of lineage `l` in chunks meeting `[from, to)`.
    pub(super) fn settle_range(&mut self, l: u32, from: u64, to: u64) -> Result<()> {
        self.settler.settle_range(&self.sh, l, from, to)
    }

    /// Settle the ancestors of `chain` over `[from, to)`.
    pub(super) fn settle_chain(
        &mut self,
        chain: &crate::catalog::Chain,
        from: u64,
        to: u64,
    ) -> Result<()> {
        self.settler.settle_chain(&self.sh, chain, from, to)
    }

    /// Settle up to `max` chunks from the writer's cursor on, in key order.
    pub(super) fn settle_some(&mut self, max: usize) -> Result<()> {
        self.settler.settle_some(&self.sh, max)
    }

    /// Settle everything pending, before what `why` says.
    pub(super) fn settle_all(&mut self, why: &'static str) -> Result<()> {
        self.settler.settle_all(&self.sh, why)
    }

    /// Chunks the writer settles per step.
    fn settle_step(&self) -> usize {
        if self.sh.cfg.settler_thread {
            SETTLE_STEP_SPARSE
        } else {
            SETTLE_STEP
        }
    }

    /// After a round: keep the overlay near its low mark, a bounded step
    /// at a time.
    ///
    /// A memtable rotation settles everything at once (a checkpoint covers
    /// settled state only), so as a rotation nears the mark drops: the
    /// settlement a rotation waits for stays a few milliseconds.
    pub(super) fn settle_background(&mut self) -> Result<()> {
        let frags = self.sh.overlay.read().frags();
        if self.sh.cfg.settler_thread {
            // The settler thread keeps the overlay near its mark (1 Ki,
            // what a rotation wants too); the writer's thread, which the
            // transports share, steps in only when it falls far behind.
            settler::nudge(&self.sh, frags);
            if frags > SETTLER_BEHIND {
                self.settle_some(self.settle_step())?;
            }
            return Ok(());
        }
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
            self.settle_some(self.settle_step())?;
        }
        Ok(())
    }

    /// Barriers were asked for: settle a step, and flush once little is
    /// left (the flush settles the rest at once).
    pub(super) async fn advance_flush(&mut self) {
        if !self.flush_waiters.is_empty() && self.settle_toward_checkpoint() {
            self.flush_for_waiters().await;
        }
    }

    /// Flush now and answer every waiting barrier.
    pub(super) async fn flush_for_waiters(&mut self) {
        let r = match &self.poisoned {
            Some(p) => Err(crate::error::Error::new(
                crate::error::ErrorKind::Poisoned,
                p.clone(),
            )),
            None if self.rotation.is_some() => Ok(()),
            None => self.flush_now().await,
        };
        for done in self.flush_waiters.drain(..) {
            super::complete(done, r.as_ref().map(|_| ()).map_err(|e| e.duplicate()));
        }
    }

    /// A rotation was asked for: settle a step, and rotate once little
    /// is left (the rotation settles the rest at once).
    pub(super) fn advance_rotation(&mut self) {
        if self.rotate_waiter.is_some() && self.settle_toward_checkpoint() {
            if let Some(done) = self.rotate_waiter.take() {
                super::complete(done, Ok(self.rotate()));
            }
        }
    }

    /// One step toward a checkpoint (a rotation or a barrier waits):
    /// settle a step while much is pending. True once little is left (the
    /// checkpoint settles the rest at once) or the pool is poisoned.
    fn settle_toward_checkpoint(&mut self) -> bool {
        if self.sh.overlay.read().frags() > ROTATE_AT {
            if let Err(e) = self.settle_some(self.settle_step()) {
                self.poison(&e);
            }
        }
        self.poisoned.is_some() || self.sh.overlay.read().frags() <= ROTATE_AT
    }
}
