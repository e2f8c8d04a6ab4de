//! Flattening a clone (`promote`): the root lineage is kept from garbage
//! collection while the origin's data is copied in, then detached from its
//! parent; an interrupted flatten is abandoned and its copies collected.
//!
//! Keeps invariant 4 (the copies are invisible until the detach, and new
//! writes are born after them) and invariant 3 (once detached, the clone
//! reads only its own lineages).

use crate::error::Result;

use super::{Catalog, Effects};

impl Catalog {
    /// A flatten of `volume` starts: its root lineage is off limits to
    /// garbage collection until [`Catalog::end_flatten`] or the detach.
    pub fn begin_flatten(&mut self, volume: u64) -> Result<()> {
        let root = self.root_lineage(volume)?;
        self.flattening.insert(root);
        Ok(())
    }

    /// A flatten of `volume` stopped without a detach: its copies are
    /// garbage.
    pub fn end_flatten(&mut self, volume: u64) -> Result<Effects> {
        let root = self.root_lineage(volume)?;
        let mut fx = Effects::default();
        if self.flattening.remove(&root) {
            fx.reap.insert(root);
        }
        Ok(fx)
    }

    /// At import: every flatten in progress was interrupted.
    pub fn abandon_flattens(&mut self) {
        for l in std::mem::take(&mut self.flattening) {
            if self.lineages.contains_key(&l) {
                self.gc_todo.insert(l);
            }
        }
    }

    /// Start a new head epoch without a snapshot (used before a flatten, so
    /// that the copy's birth is strictly older than any new write).
    pub fn bump_epoch(&mut self, volume: u64) -> Result<u64> {
        let e = self.epoch();
        // Content is unchanged: `dirty` stays as it was.
        self.volume_mut(volume)?.head_epoch = e;
        Ok(e)
    }

    /// Detach a flattened root lineage from its parent (see
    /// [`Catalog::root_lineage`]).
    pub fn detach(&mut self, volume: u64) -> Result<Effects> {
        let root = self.root_lineage(volume)?;
        self.flattening.remove(&root);
        let parent = self.lineages.get_mut(&root).and_then(|l| l.parent.take());
        self.volume_mut(volume)?.origin = None;
        let mut fx = Effects::default();
        // Flatten copies are born at the lineage's base epoch; where the
        // lineage overwrote a block since, the copy may be visible to no
        // view: collect it.
        fx.reap.insert(root);
        if let Some((p, e)) = parent {
            self.release_branch_point(p, e);
            fx.reap.insert(p);
            self.collect_dead(p, &mut fx);
        }
        Ok(fx)
    }
}
