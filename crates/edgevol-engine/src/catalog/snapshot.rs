//! Snapshot operations: take a snapshot (O(1): the head moves to a fresh
//! epoch), roll back to one (a new lineage; a changed head is kept as an
//! automatic snapshot, so rolling forward is another rollback), destroy
//! one (hidden instead while a clone or branch depends on it).
//!
//! Keeps invariant 4 (snapshots are immutable; each operation is one
//! catalog change, atomic across crashes) and invariant 5 (destroying a
//! snapshot only queues collection: it always works on a full pool).

use crate::error::{Error, ErrorKind, Result};

use super::names::check_name;
use super::{Catalog, Effects, SnapshotRec};

impl Catalog {
    /// Take a snapshot of a volume's head, which holds `referenced` data blocks.
    pub fn snapshot(&mut self, volume: u64, name: &str, now: u64, referenced: u64) -> Result<u64> {
        check_name("snapshot", name)?;
        if self
            .snapshots
            .values()
            .any(|s| s.volume == Some(volume) && s.name == name && !s.hidden)
        {
            let vname = &self.volume(volume)?.name;
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("snapshot {vname}@{name} already exists"),
            ));
        }
        let (lineage, epoch, size) = {
            let v = self.volume(volume)?;
            (v.head, v.head_epoch, v.size)
        };
        let id = self.id();
        self.snapshots.insert(
            id,
            SnapshotRec {
                id,
                name: name.to_string(),
                volume: Some(volume),
                lineage,
                epoch,
                created: now,
                auto: false,
                hidden: false,
                referenced,
                size,
            },
        );
        let next = self.epoch();
        let v = self.volume_mut(volume)?;
        v.head_epoch = next;
        v.dirty = false;
        v.clean_as = Some(id);
        Ok(id)
    }

    /// Make the volume's content equal to snapshot `snap`. The old head is
    /// kept as an automatic snapshot if it changed since it last matched one.
    /// Returns the automatic snapshot's id, if one was made.
    /// `head_referenced`: data blocks the head sees now (for the automatic snapshot).
    pub fn rollback(
        &mut self,
        volume: u64,
        snap: u64,
        now: u64,
        head_referenced: u64,
    ) -> Result<(Option<u64>, Effects)> {
        let s = self
            .snapshots
            .get(&snap)
            .filter(|s| s.volume == Some(volume) && !s.hidden)
            .cloned()
            .ok_or_else(|| Error::not_found("snapshot does not belong to this volume"))?;
        let (old_head, dirty) = {
            let v = self.volume(volume)?;
            (v.head, v.dirty)
        };
        let auto = if dirty {
            self.auto_counter += 1;
            let name = loop {
                let n = format!("auto-{}", self.auto_counter);
                if !self
                    .snapshots
                    .values()
                    .any(|x| x.volume == Some(volume) && x.name == n)
                {
                    break n;
                }
                self.auto_counter += 1;
            };
            let id = self.snapshot(volume, &name, now, head_referenced)?;
            if let Some(a) = self.snapshots.get_mut(&id) {
                a.auto = true;
            }
            Some(id)
        } else {
            None
        };
        let base = self.epoch();
        let key_id = self.key_of(s.lineage);
        let head = self.lineage(
            Some((s.lineage, s.epoch)),
            volume,
            base,
            s.referenced as i64,
            key_id,
        );
        let v = self.volume_mut(volume)?;
        v.head = head;
        v.head_epoch = base;
        v.dirty = false;
        v.clean_as = Some(snap);
        v.size = s.size;
        let mut fx = Effects::default();
        self.collect_dead(old_head, &mut fx);
        Ok((auto, fx))
    }

    /// Destroy a snapshot. If a clone or branch still depends on it, it is
    /// hidden (kept as a view) instead of removed.
    pub fn destroy_snapshot(&mut self, snap: u64) -> Result<Effects> {
        let s = self
            .snapshots
            .get(&snap)
            .cloned()
            .ok_or_else(|| Error::not_found("no such snapshot"))?;
        let pinned = self
            .lineages
            .values()
            .any(|c| c.parent == Some((s.lineage, s.epoch)));
        if pinned {
            if let Some(x) = self.snapshots.get_mut(&snap) {
                x.hidden = true;
            }
        } else {
            self.snapshots.remove(&snap);
        }
        for v in self.volumes.values_mut() {
            if v.origin == Some(snap) && !pinned {
                v.origin = None;
            }
            // The head's content is no longer kept anywhere else.
            if v.clean_as == Some(snap) {
                v.clean_as = None;
                v.dirty = true;
            }
        }
        let mut fx = Effects::default();
        fx.reap.insert(s.lineage);
        self.collect_dead(s.lineage, &mut fx);
        Ok(fx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn rollback_keeps_history_and_allows_roll_forward() {
        let mut c = Catalog::new();
        let v = c
            .create_volume("v", 1 << 20, BTreeMap::new(), 0, None)
            .unwrap();
        c.volume_mut(v).unwrap().dirty = true;
        let s1 = c.snapshot(v, "s1", 1, 0).unwrap();
        c.volume_mut(v).unwrap().dirty = true;
        let s2 = c.snapshot(v, "s2", 2, 0).unwrap();
        c.volume_mut(v).unwrap().dirty = true;
        let (auto, fx) = c.rollback(v, s1, 3, 0).unwrap();
        assert!(auto.is_some(), "the changed head is kept");
        assert!(fx.dead.is_empty());
        let head = c.volume(v).unwrap().head;
        let chain = c.head_chain(v).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(
            (chain[1].lineage, chain[1].epoch),
            (c.snapshots[&s1].lineage, c.snapshots[&s1].epoch)
        );
        // Roll forward to s2: the unchanged branch is dropped, s2 survives.
        let (auto2, fx2) = c.rollback(v, s2, 4, 0).unwrap();
        assert!(auto2.is_none(), "nothing changed since the rollback");
        assert!(fx2.dead.contains(&head));
        assert_eq!(c.snapshots_of(v).len(), 3);
        assert!(c.verify().is_empty(), "{:?}", c.verify());
    }
}
