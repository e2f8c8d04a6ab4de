//! Volume operations: create, clone a snapshot into a new volume, destroy
//! (refused while clones depend on it, unless forced), resize (a shrink
//! leaves a barrier), rename, properties and key wrappings.
//!
//! Keeps invariant 4 (a clone pins its origin snapshot; destroying a
//! volume keeps hidden what its clones still read), invariant 5 (destroying
//! a volume only queues collection: it always works, also on a full pool)
//! and invariant 7 (names, sizes and key wrappings are checked).

use std::collections::BTreeMap;

use crate::error::{Error, ErrorKind, Result};
use crate::layout::BLOCK_U64;

use super::names::{check_name, check_size};
use super::{Barrier, Catalog, Effects, VolumeRec};

impl Catalog {
    /// Create a volume.
    pub fn create_volume(
        &mut self,
        name: &str,
        size: u64,
        props: BTreeMap<String, String>,
        now: u64,
        key: Option<crate::crypt::KeyRec>,
    ) -> Result<u64> {
        check_name("volume", name)?;
        check_size(size)?;
        if self.volumes.values().any(|v| v.name == name) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("volume {name:?} already exists"),
            ));
        }
        let id = self.id();
        let epoch = self.epoch();
        let head = self.lineage(None, id, epoch, 0, key.as_ref().map(|k| k.id));
        self.volumes.insert(
            id,
            VolumeRec {
                id,
                guid: rand::random(),
                name: name.to_string(),
                size,
                head,
                head_epoch: epoch,
                dirty: false,
                clean_as: None,
                created: now,
                props,
                origin: None,
                key,
            },
        );
        Ok(id)
    }

    /// Create a writable clone of a snapshot.
    pub fn clone_volume(&mut self, snap: u64, name: &str, now: u64) -> Result<u64> {
        check_name("volume", name)?;
        if self.volumes.values().any(|v| v.name == name) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("volume {name:?} already exists"),
            ));
        }
        let s = self
            .snapshots
            .get(&snap)
            .filter(|s| !s.hidden)
            .cloned()
            .ok_or_else(|| Error::not_found("no such snapshot"))?;
        let origin_vol = s.volume.and_then(|v| self.volumes.get(&v)).cloned();
        let size = s.size;
        let key_id = self.key_of(s.lineage);
        // A clone shares its origin's data key, with a wrapping of its own
        // (a copy of the origin's: the same secret opens both until one of
        // them changes its key).
        let key = origin_vol.as_ref().and_then(|v| v.key.clone());
        if key_id.is_some() && key.as_ref().map(|k| k.id) != key_id {
            return Err(Error::new(
                ErrorKind::Busy,
                "the origin of this encrypted snapshot no longer holds its key",
            ));
        }
        let props = origin_vol.map(|v| v.props).unwrap_or_default();
        let id = self.id();
        let base = self.epoch();
        let head = self.lineage(
            Some((s.lineage, s.epoch)),
            id,
            base,
            s.referenced as i64,
            key_id,
        );
        self.volumes.insert(
            id,
            VolumeRec {
                id,
                guid: rand::random(),
                name: name.to_string(),
                size,
                head,
                head_epoch: base,
                dirty: false,
                clean_as: None,
                created: now,
                props,
                origin: Some(snap),
                key,
            },
        );
        Ok(id)
    }

    /// Destroy a volume. Refused while clones depend on it unless `force`,
    /// in which case what the clones need is kept hidden.
    pub fn destroy_volume(&mut self, volume: u64, force: bool) -> Result<Effects> {
        let deps: Vec<String> = self
            .dependents(volume)
            .iter()
            .map(|v| v.name.clone())
            .collect();
        let name = self.volume(volume)?.name.clone();
        if !deps.is_empty() && !force {
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "volume {name:?} has dependent clones ({}); promote them first or use --force",
                    deps.join(", ")
                ),
            ));
        }
        self.volumes.remove(&volume);
        let snaps: Vec<u64> = self
            .snapshots
            .values()
            .filter(|s| s.volume == Some(volume))
            .map(|s| s.id)
            .collect();
        let mut fx = Effects::default();
        for id in snaps {
            let Some(s) = self.snapshots.get(&id).cloned() else {
                continue;
            };
            let pinned = self
                .lineages
                .values()
                .any(|c| c.parent == Some((s.lineage, s.epoch)));
            if pinned {
                if let Some(x) = self.snapshots.get_mut(&id) {
                    x.hidden = true;
                    x.volume = None;
                }
            } else {
                self.snapshots.remove(&id);
            }
            fx.reap.insert(s.lineage);
        }
        let own: Vec<u32> = self
            .lineages
            .values()
            .filter(|l| l.volume == Some(volume))
            .map(|l| l.id)
            .collect();
        for l in own {
            if let Some(rec) = self.lineages.get_mut(&l) {
                rec.volume = None;
            }
            fx.reap.insert(l);
            self.collect_dead(l, &mut fx);
        }
        Ok(fx)
    }

    /// Change a volume's size. Shrinking adds a barrier that hides the cut
    /// range from the head (snapshots keep it). Returns the barrier, if any.
    pub fn resize(&mut self, volume: u64, size: u64) -> Result<Option<Barrier>> {
        check_size(size)?;
        let old = self.volume(volume)?.size;
        if size >= old {
            self.volume_mut(volume)?.size = size;
            return Ok(None);
        }
        let epoch = self.epoch();
        let v = self.volume_mut(volume)?;
        v.size = size;
        v.head_epoch = epoch;
        v.dirty = true;
        let head = v.head;
        let b = Barrier {
            lba: size / BLOCK_U64,
            end: u64::MAX,
            epoch,
        };
        if let Some(l) = self.lineages.get_mut(&head) {
            l.barriers.push(b);
        }
        Ok(Some(b))
    }

    /// Replace an encrypted volume's key wrapping (change-key).
    pub fn set_key(&mut self, volume: u64, key: crate::crypt::KeyRec) -> Result<()> {
        let v = self.volume_mut(volume)?;
        if v.key.as_ref().map(|k| k.id) != Some(key.id) {
            return Err(Error::invalid("the new wrapping is for another data key"));
        }
        v.key = Some(key);
        Ok(())
    }

    /// Rename a volume.
    pub fn rename_volume(&mut self, volume: u64, name: &str) -> Result<()> {
        check_name("volume", name)?;
        if self
            .volumes
            .values()
            .any(|v| v.name == name && v.id != volume)
        {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("volume {name:?} already exists"),
            ));
        }
        self.volume_mut(volume)?.name = name.to_string();
        Ok(())
    }

    /// Set or clear a local property.
    pub fn set_prop(&mut self, volume: u64, key: &str, value: Option<&str>) -> Result<()> {
        let v = self.volume_mut(volume)?;
        match value {
            Some(val) => {
                v.props.insert(key.to_string(), val.to_string());
            }
            None => {
                v.props.remove(key);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn clone_pins_origin_and_force_destroy_hides_it() {
        let mut c = Catalog::new();
        let v = c
            .create_volume("v", 1 << 20, BTreeMap::new(), 0, None)
            .unwrap();
        let s = c.snapshot(v, "s", 1, 0).unwrap();
        let k = c.clone_volume(s, "k", 2).unwrap();
        assert_eq!(c.dependents(v).len(), 1);
        assert_eq!(
            c.destroy_volume(v, false).unwrap_err().kind(),
            ErrorKind::Busy
        );
        let fx = c.destroy_snapshot(s).unwrap();
        assert!(fx.dead.is_empty());
        assert!(c.snapshots[&s].hidden, "the clone still needs it");
        c.destroy_volume(v, true).unwrap();
        let chain = c.head_chain(k).unwrap();
        assert_eq!(chain.len(), 2, "the clone still reads through its origin");
        let fx = c.detach(k).unwrap();
        assert!(
            !fx.dead.is_empty(),
            "after flattening, the origin's lineage can go"
        );
        assert!(c.snapshots.is_empty());
        assert!(c.verify().is_empty(), "{:?}", c.verify());
    }
}
