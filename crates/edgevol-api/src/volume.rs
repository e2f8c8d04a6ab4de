//! Volume reports as the API sends them: volume and snapshot information
//! and space accounting (wire shapes of `docs/api.md`; the engine's
//! reports convert into these in `convert.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A volume as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Name within the pool.
    pub name: String,
    /// The pool.
    pub pool: String,
    /// Identity (serial), hex.
    pub guid: String,
    /// Logical size in bytes.
    pub size: u64,
    /// Bytes of data the head can read (shared data included).
    pub referenced: u64,
    /// Creation time (seconds since the epoch).
    pub created: u64,
    /// `VOL@SNAP` this volume was cloned from.
    pub origin: Option<String>,
    /// Visible snapshots.
    pub snapshots: usize,
    /// The snapshot the head's content started from, if any.
    pub based_on: Option<String>,
    /// Writes refused.
    pub readonly: bool,
    /// Properties set on the volume.
    pub properties: BTreeMap<String, String>,
    /// Compression of new writes (`off`, `lz4`, `zstd-N`).
    #[serde(default)]
    pub compression: String,
    /// Where `compression` comes from: `local`, `pool` (the pool property) or `default`.
    #[serde(default)]
    pub compression_source: String,
    /// `off` or `aes-256-gcm`.
    #[serde(default)]
    pub encryption: String,
    /// Encrypted volumes: `passphrase`, `raw` or `hex`.
    #[serde(default)]
    pub keyformat: Option<String>,
    /// Encrypted volumes: `prompt`, `file:///...` or `exec:/...`.
    #[serde(default)]
    pub keylocation: Option<String>,
    /// Encrypted volumes: `available` (key loaded) or `unavailable`.
    #[serde(default)]
    pub keystatus: Option<String>,
    /// Passphrase keys: the key derivation, e.g. `argon2id m=65536KiB,t=3,p=1`.
    #[serde(default)]
    pub keykdf: Option<String>,
}

/// A snapshot as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Snapshot name (after the `@`).
    pub name: String,
    /// Volume name.
    pub volume: String,
    /// Creation time.
    pub created: u64,
    /// Bytes of data visible in the snapshot.
    pub referenced: u64,
    /// The volume's size when the snapshot was taken.
    pub size: u64,
    /// Made by a rollback (the head that was left).
    pub auto: bool,
    /// The previous snapshot in this one's history (its parent in the tree).
    pub parent: Option<String>,
    /// Volumes cloned from it.
    pub clones: Vec<String>,
}

/// `zfs list -o space`-like accounting for one volume (a map scan).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpaceReport {
    /// Volume name.
    pub volume: String,
    /// Logical size.
    pub size: u64,
    /// Data the head can read.
    pub referenced: u64,
    /// Everything destroying the volume and its snapshots would free.
    pub used: u64,
    /// Of `used`, what the head holds.
    pub used_by_dataset: u64,
    /// Of `used`, what only snapshots hold.
    pub used_by_snapshots: u64,
    /// Per snapshot: what destroying just it would free.
    pub snapshots: BTreeMap<String, u64>,
    /// Bytes `used` takes on the devices (after compression).
    #[serde(default)]
    pub stored: u64,
    /// `used / stored`, as ZFS's `compressratio` (1.0 for no data).
    #[serde(default)]
    pub compressratio: f64,
}
