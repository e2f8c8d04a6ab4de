//! The catalog: volumes, their history, and the views the map serves.
//!
//! A volume's history is a tree, like git:
//!
//! ```text
//!   lineage 1:  e1 ── e3(@s1) ── e5(@s2) ── e7(@auto-1)      (abandoned head kept as a snapshot)
//!                         \
//!   lineage 4:             └── e8 ── e9(@s3) ── e10 (head)    (after `rollback @s1`)
//! ```
//!
//! * An **epoch** is a pool-wide counter. Data written to a volume is born
//!   in its head epoch; a snapshot records `(lineage, head epoch)` and moves
//!   the head to a fresh epoch. So a snapshot is O(1).
//! * A **lineage** is one linear branch. Reading view `(L, E)` takes, per
//!   block, the entry of L with the newest birth `<= E`; if there is none, it
//!   falls through to L's parent view `(P, Ep)`.
//! * **Rollback** to `S = (L, E)` starts a new lineage with parent `(L, E)`;
//!   the old head becomes a snapshot (unless nothing changed since the last
//!   one), and every later snapshot survives: rolling forward is another
//!   rollback. A **clone** is the same thing with a new volume.
//! * A **barrier** (from a shrink) hides, in `[lba, end)` and for views at
//!   or after its epoch, entries born before it and everything below.
//!
//! The catalog is small (no per-block state) and is written whole in every
//! checkpoint.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::layout::BLOCK_U64;

/// Longest name of a volume or snapshot.
pub const MAX_NAME: usize = 128;

/// Check a volume, snapshot or pool name.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid {what} name {name:?}: use 1-{MAX_NAME} characters from [A-Za-z0-9_.:-], starting with a letter or digit"
        )))
    }
}

/// A hidden range in a lineage (from a shrink).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Barrier {
    /// First hidden block.
    pub lba: u64,
    /// End of the hidden range (exclusive).
    pub end: u64,
    /// Views at or after this epoch see only entries born at or after it.
    pub epoch: u64,
}

/// A volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRec {
    /// Stable id.
    pub id: u64,
    /// Random identity (serial number for exports).
    pub guid: u128,
    /// Name within the pool.
    pub name: String,
    /// Size in bytes (multiple of 4 KiB).
    pub size: u64,
    /// Lineage of the head.
    pub head: u32,
    /// Epoch new writes are born in.
    pub head_epoch: u64,
    /// The head may differ from every snapshot: something was written (or
    /// cut by a shrink) since it last matched one, or the snapshot it
    /// matched was destroyed. A rollback keeps a dirty head as `auto-N`.
    pub dirty: bool,
    /// The snapshot the head equals while not dirty.
    pub clean_as: Option<u64>,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// Properties set locally.
    pub props: BTreeMap<String, String>,
    /// The snapshot this volume was cloned from.
    pub origin: Option<u64>,
    /// Encrypted volumes: this volume's wrapping of its data key.
    pub key: Option<crate::crypt::KeyRec>,
}

/// A lineage (linear branch of history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageRec {
    /// Id, used in map keys.
    pub id: u32,
    /// Where reads fall through to.
    pub parent: Option<(u32, u64)>,
    /// Owning volume (None once the volume is destroyed but clones still
    /// depend on this lineage).
    pub volume: Option<u64>,
    /// The lowest birth of any entry in this lineage.
    pub base_epoch: u64,
    /// Hidden ranges.
    pub barriers: Vec<Barrier>,
    /// Data blocks the head saw when this lineage began (its origin's),
    /// minus blocks cut by shrinks; the head sees this plus the lineage's
    /// counted delta.
    pub base_referenced: i64,
    /// The data key its records are encrypted with (None: not encrypted).
    /// Every lineage of a volume's history, and of its clones, has the same.
    pub key_id: Option<u64>,
}

/// A snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRec {
    /// Stable id.
    pub id: u64,
    /// Name (unique within the volume).
    pub name: String,
    /// Owning volume (None if the volume was destroyed while clones remained).
    pub volume: Option<u64>,
    /// The view.
    pub lineage: u32,
    /// The view's epoch.
    pub epoch: u64,
    /// Creation time.
    pub created: u64,
    /// Made automatically by a rollback (the head that was left).
    pub auto: bool,
    /// Destroyed by the user but kept because a clone or branch depends on it.
    pub hidden: bool,
    /// Data blocks visible in this snapshot.
    pub referenced: u64,
    /// The volume's size when the snapshot was taken.
    pub size: u64,
}

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

/// The catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Next epoch to hand out.
    pub next_epoch: u64,
    /// Next lineage id.
    pub next_lineage: u32,
    /// Next volume/snapshot id.
    pub next_id: u64,
    /// Counter for automatic snapshot names.
    pub auto_counter: u64,
    /// Pool properties set locally.
    pub pool_props: BTreeMap<String, String>,
    /// Volumes by id.
    pub volumes: BTreeMap<u64, VolumeRec>,
    /// Lineages by id.
    pub lineages: BTreeMap<u32, LineageRec>,
    /// Snapshots by id.
    pub snapshots: BTreeMap<u64, SnapshotRec>,
    /// Lineages whose entries may include garbage (after a destroy).
    pub gc_todo: BTreeSet<u32>,
    /// Removed lineages whose entries must all be deleted.
    pub purge_todo: BTreeSet<u32>,
    /// Root lineages of volumes being flattened (`promote`): their copies
    /// of the origin's data are invisible until the detach, and garbage
    /// collection leaves them alone meanwhile. A flatten a crash or an
    /// error interrupted is abandoned: its lineage goes to `gc_todo`.
    pub flattening: BTreeSet<u32>,
    /// A scrub in progress: the map key (lineage, lba, birth) it continues
    /// from when the pool is imported again.
    pub scrub_at: Option<(u32, u64, u64)>,
}

/// What a catalog change requires of the map.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    /// Lineages whose entries may have become invisible (garbage-collect them).
    pub reap: BTreeSet<u32>,
    /// Lineages with no views left: delete all their entries, then the record.
    pub dead: BTreeSet<u32>,
}

impl Catalog {
    /// A fresh catalog.
    pub fn new() -> Catalog {
        Catalog {
            next_epoch: 1,
            next_lineage: 1,
            next_id: 1,
            ..Catalog::default()
        }
    }

    fn epoch(&mut self) -> u64 {
        let e = self.next_epoch;
        self.next_epoch += 1;
        e
    }

    fn id(&mut self) -> u64 {
        let i = self.next_id;
        self.next_id += 1;
        i
    }

    fn lineage(
        &mut self,
        parent: Option<(u32, u64)>,
        volume: u64,
        base_epoch: u64,
        base_referenced: i64,
        key_id: Option<u64>,
    ) -> u32 {
        let id = self.next_lineage;
        self.next_lineage += 1;
        self.lineages.insert(
            id,
            LineageRec {
                id,
                parent,
                volume: Some(volume),
                base_epoch,
                barriers: Vec::new(),
                base_referenced,
                key_id,
            },
        );
        id
    }

    /// The data key id of the records written in lineage `l`.
    pub fn key_of(&self, l: u32) -> Option<u64> {
        self.lineages.get(&l).and_then(|r| r.key_id)
    }

    /// A fresh id for a data key.
    pub fn new_key_id(&mut self) -> u64 {
        self.id()
    }

    /// Find a volume by name.
    pub fn volume_by_name(&self, name: &str) -> Result<&VolumeRec> {
        self.volumes
            .values()
            .find(|v| v.name == name)
            .ok_or_else(|| Error::not_found(format!("no volume named {name:?}")))
    }

    /// Find a volume by id.
    pub fn volume(&self, id: u64) -> Result<&VolumeRec> {
        self.volumes
            .get(&id)
            .ok_or_else(|| Error::not_found(format!("volume {id} no longer exists")))
    }

    fn volume_mut(&mut self, id: u64) -> Result<&mut VolumeRec> {
        self.volumes
            .get_mut(&id)
            .ok_or_else(|| Error::not_found(format!("volume {id} no longer exists")))
    }

    /// Find a visible snapshot of a volume by name.
    pub fn snapshot_by_name(&self, volume: u64, name: &str) -> Result<&SnapshotRec> {
        self.snapshots
            .values()
            .find(|s| s.volume == Some(volume) && s.name == name && !s.hidden)
            .ok_or_else(|| {
                let vname = self.volumes.get(&volume).map_or("?", |v| v.name.as_str());
                Error::not_found(format!("volume {vname:?} has no snapshot named {name:?}"))
            })
    }

    /// Visible snapshots of a volume, oldest first.
    pub fn snapshots_of(&self, volume: u64) -> Vec<&SnapshotRec> {
        let mut v: Vec<_> = self
            .snapshots
            .values()
            .filter(|s| s.volume == Some(volume) && !s.hidden)
            .collect();
        v.sort_by_key(|s| (s.created, s.id));
        v
    }

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
            .chain(
                self.volumes
                    .values()
                    .filter(|v| v.head == l)
                    .map(|v| v.head_epoch),
            )
            .collect();
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

    /// Which volume owns lineage `l` as its head.
    pub fn volume_of_head(&self, l: u32) -> Option<&VolumeRec> {
        self.volumes.values().find(|v| v.head == l)
    }

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

    /// Remove lineage `l` (and ancestors that become unreferenced) if nothing
    /// views it any more.
    fn collect_dead(&mut self, l: u32, fx: &mut Effects) {
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
                let still_pinned = self.lineages.values().any(|c| c.parent == Some((p, e)));
                if !still_pinned {
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
                fx.reap.insert(p);
                self.gc_todo.insert(p);
                cur = Some(p);
            }
        }
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
            let still_pinned = self.lineages.values().any(|c| c.parent == Some((p, e)));
            if !still_pinned {
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
            fx.reap.insert(p);
            self.collect_dead(p, &mut fx);
        }
        Ok(fx)
    }

    /// Queue the garbage collection an operation's effects require.
    pub fn schedule(&mut self, fx: &Effects) {
        for l in &fx.reap {
            if self.lineages.contains_key(l) {
                self.gc_todo.insert(*l);
            }
        }
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

fn check_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(BLOCK_U64) {
        return Err(Error::invalid(format!(
            "volume size {size} must be a positive multiple of 4096 bytes"
        )));
    }
    if size > (1u64 << 60) {
        return Err(Error::invalid(format!("volume size {size} is too large")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn names_and_sizes_are_validated() {
        let mut c = Catalog::new();
        assert!(c
            .create_volume("bad/name", 4096, BTreeMap::new(), 0, None)
            .is_err());
        assert!(c.create_volume("", 4096, BTreeMap::new(), 0, None).is_err());
        assert!(c
            .create_volume("ok", 4095, BTreeMap::new(), 0, None)
            .is_err());
        let v = c
            .create_volume("ok", 8192, BTreeMap::new(), 0, None)
            .unwrap();
        assert_eq!(
            c.create_volume("ok", 8192, BTreeMap::new(), 0, None)
                .unwrap_err()
                .kind(),
            ErrorKind::AlreadyExists
        );
        let b = c.resize(v, 4096).unwrap().unwrap();
        assert_eq!(b.lba, 1);
        assert_eq!(c.head_chain(v).unwrap()[0].floor(5), Some(b.epoch));
    }
}
