//! The garbage-collection todo lists: queuing the lineages an operation
//! left garbage in (`gc_todo`), and removing lineages nothing views any
//! more, with the ancestors that become unreferenced (`purge_todo`).
//!
//! Keeps invariant 5 (deleting snapshots and volumes frees their space:
//! what no view sees is collected) and invariant 4 (a lineage some view
//! still sees is never removed).

use super::{Catalog, Effects};

impl Catalog {
    /// Remove lineage `l` (and ancestors that become unreferenced) if nothing
    /// views it any more.
    pub(super) fn collect_dead(&mut self, l: u32, fx: &mut Effects) {
        let mut cur = Some(l);
        while let Some(l) = cur {
            if !self.views(l).is_empty() {
                return;
            }
            let Some(rec) = self.lineages.remove(&l) else {
                return;
            };
            fx.dead.insert(l);
            fx.reap.remove(&l);
            self.gc_todo.remove(&l);
            self.purge_todo.insert(l);
            // A hidden snapshot that pinned this lineage's branch point may now be free.
            cur = None;
            if let Some((p, e)) = rec.parent {
                self.release_branch_point(p, e);
                fx.reap.insert(p);
                self.gc_todo.insert(p);
                cur = Some(p);
            }
        }
    }

    /// A branch point `(p, e)` lost a child lineage: if no lineage branches
    /// there any more, the hidden snapshots that pinned it go.
    pub(super) fn release_branch_point(&mut self, p: u32, e: u64) {
        if self.lineages.values().any(|c| c.parent == Some((p, e))) {
            return;
        }
        let hidden: Vec<u64> = self
            .snapshots
            .values()
            .filter(|s| s.lineage == p && s.epoch == e && s.hidden)
            .map(|s| s.id)
            .collect();
        for h in hidden {
            self.snapshots.remove(&h);
        }
    }

    /// Queue the garbage collection an operation's effects require.
    pub fn schedule(&mut self, fx: &Effects) {
        for l in &fx.reap {
            if self.lineages.contains_key(l) {
                self.gc_todo.insert(*l);
            }
        }
    }
}
