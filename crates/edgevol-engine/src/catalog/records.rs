//! The persisted records of the catalog: volumes, lineages, snapshots,
//! and the barriers a shrink leaves in a lineage.
//!
//! They are written whole in every checkpoint: a serde-derived type's
//! fields, their order and attributes are the on-disk format (a fixture
//! test in the engine proves it unchanged). Keeps invariant 4 (a snapshot
//! record is a frozen `(lineage, epoch)` view) and invariant 3 (a lineage
//! owns its map keys; barriers hide what a shrink cut).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
