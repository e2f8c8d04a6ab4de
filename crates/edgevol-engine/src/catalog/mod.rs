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
//!
//! Split by job: `records` (the persisted records of volumes, lineages,
//! snapshots and barriers), `names` (name and size validation), `views`
//! (view chains, the epochs a lineage is viewed at, dependents, structural
//! checks), `volume` (create, clone, destroy, resize, rename, properties,
//! keys), `snapshot` (snapshot, rollback, destroy a snapshot), `flatten`
//! (a clone's flatten and detach) and `gc` (the garbage-collection todo
//! lists and collecting dead lineages). This module holds the [`Catalog`]
//! itself, its counters and lookups, and the [`Effects`] a change has on
//! the map.
//!
//! Keeps invariant 4 (snapshots are immutable, and every history change is
//! one catalog change, written whole in a checkpoint, so atomic across
//! crashes), invariant 3 (each lineage has its own map keys and barriers;
//! a view sees another lineage only through its parent chain) and
//! invariant 7 (names, sizes and ids are checked, with clear errors).
//!
//! The serde-derived types are persisted in checkpoints: their fields,
//! order and attributes are the on-disk format.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod flatten;
mod gc;
mod names;
mod records;
mod snapshot;
mod views;
mod volume;

pub use names::{check_name, MAX_NAME};
pub use records::{Barrier, LineageRec, SnapshotRec, VolumeRec};
pub use views::{Chain, ViewStep};

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

    /// Which volume owns lineage `l` as its head.
    pub fn volume_of_head(&self, l: u32) -> Option<&VolumeRec> {
        self.volumes.values().find(|v| v.head == l)
    }
}
