//! Views and lineages: the read chain from a view through its ancestors,
//! the epochs each lineage is viewed at (all of them, and the frozen ones
//! the free rule honours), the volumes depending on a lineage, a volume's
//! root lineage, and the catalog's structural checks.
//!
//! Keeps invariant 3 (a chain follows only the view's own ancestry, with
//! the barriers that apply at each step's epoch) and invariant 4 (every
//! snapshot and branch point is a frozen view, so its blocks are kept).

use std::collections::BTreeSet;

use crate::error::Result;
use crate::layout::BLOCK_U64;

use super::{Barrier, Catalog, VolumeRec};

/// One step of a view chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewStep {
    /// Lineage.
    pub lineage: u32,
    /// Epoch: entries born after it are invisible.
    pub epoch: u64,
    /// Barriers of the lineage that apply at this epoch.
    pub barriers: Vec<Barrier>,
}

impl ViewStep {
    /// The barrier floor for block `lba`: entries born before it are hidden
    /// and the read does not fall through.
    pub fn floor(&self, lba: u64) -> Option<u64> {
        self.barriers
            .iter()
            .filter(|b| lba >= b.lba && lba < b.end)
            .map(|b| b.epoch)
            .max()
    }
}

/// A read view: the head (or snapshot) step first, then ancestors.
pub type Chain = Vec<ViewStep>;

impl Catalog {
    /// The read chain starting at `(lineage, epoch)`.
    pub fn chain(&self, lineage: u32, epoch: u64) -> Chain {
        let mut out = Vec::new();
        let mut cur = Some((lineage, epoch));
        while let Some((l, e)) = cur {
            let Some(rec) = self.lineages.get(&l) else {
                break;
            };
            out.push(ViewStep {
                lineage: l,
                epoch: e,
                barriers: rec
                    .barriers
                    .iter()
                    .filter(|b| b.epoch <= e)
                    .copied()
                    .collect(),
            });
            cur = rec.parent;
            if out.len() > self.lineages.len() {
                break; // defensive: a cycle would be corruption; check reports it
            }
        }
        out
    }

    /// The head chain of a volume.
    pub fn head_chain(&self, volume: u64) -> Result<Chain> {
        let v = self.volume(volume)?;
        Ok(self.chain(v.head, v.head_epoch))
    }

    /// Every epoch at which lineage `l` is viewed, ascending: snapshots
    /// (hidden ones too), branch points of child lineages, and the head epoch
    /// if it is a live head.
    pub fn views(&self, l: u32) -> Vec<u64> {
        let mut v = self.frozen_views(l);
        v.extend(
            self.volumes
                .values()
                .filter(|v| v.head == l)
                .map(|v| v.head_epoch),
        );
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Snapshot-like views of `l` (everything but a live head), ascending.
    /// An overwrite of data born at `b` in epoch `c` may free it at once iff
    /// none of these lies in `[b, c)`.
    pub fn frozen_views(&self, l: u32) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .snapshots
            .values()
            .filter(|s| s.lineage == l)
            .map(|s| s.epoch)
            .chain(
                self.lineages
                    .values()
                    .filter_map(|c| c.parent.filter(|p| p.0 == l).map(|p| p.1)),
            )
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Volumes whose history depends on any lineage of `volume` (clones).
    pub fn dependents(&self, volume: u64) -> Vec<&VolumeRec> {
        let own: BTreeSet<u32> = self
            .lineages
            .values()
            .filter(|l| l.volume == Some(volume))
            .map(|l| l.id)
            .collect();
        self.volumes
            .values()
            .filter(|v| v.id != volume)
            .filter(|v| {
                self.chain(v.head, v.head_epoch)
                    .iter()
                    .any(|s| own.contains(&s.lineage))
            })
            .collect()
    }

    /// The volume's root lineage: the oldest lineage of its head chain that
    /// belongs to it. Every lineage of the volume descends from it; only its
    /// parent (if any) lies outside the volume.
    pub fn root_lineage(&self, volume: u64) -> Result<u32> {
        let v = self.volume(volume)?;
        let mut root = v.head;
        for step in self.chain(v.head, v.head_epoch) {
            match self.lineages.get(&step.lineage) {
                Some(l) if l.volume == Some(volume) => root = step.lineage,
                _ => break,
            }
        }
        Ok(root)
    }

    /// Structural checks (for `pool check`).
    pub fn verify(&self) -> Vec<String> {
        let mut errs = Vec::new();
        for v in self.volumes.values() {
            match self.lineages.get(&v.head) {
                None => errs.push(format!("volume {} head lineage {} missing", v.name, v.head)),
                Some(l) if l.base_epoch > v.head_epoch => errs.push(format!(
                    "volume {} head epoch below its lineage base",
                    v.name
                )),
                _ => {}
            }
            if v.head_epoch >= self.next_epoch {
                errs.push(format!(
                    "volume {} head epoch {} from the future",
                    v.name, v.head_epoch
                ));
            }
            if v.size % BLOCK_U64 != 0 {
                errs.push(format!("volume {} size not block aligned", v.name));
            }
        }
        for l in self.lineages.values() {
            if let Some((p, e)) = l.parent {
                if !self.lineages.contains_key(&p) {
                    errs.push(format!("lineage {} parent {p} missing", l.id));
                }
                if e >= l.base_epoch {
                    errs.push(format!(
                        "lineage {} branches at {e} not before its base {}",
                        l.id, l.base_epoch
                    ));
                }
            }
            if self.views(l.id).is_empty() {
                errs.push(format!(
                    "lineage {} has no views (should have been collected)",
                    l.id
                ));
            }
            if self.chain(l.id, u64::MAX).len() > self.lineages.len() {
                errs.push(format!("lineage {} ancestry has a cycle", l.id));
            }
        }
        for s in self.snapshots.values() {
            if !self.lineages.contains_key(&s.lineage) {
                errs.push(format!("snapshot {} lineage {} missing", s.name, s.lineage));
            }
        }
        errs
    }
}
