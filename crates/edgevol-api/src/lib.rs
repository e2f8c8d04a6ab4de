//! The edgevol management API: HTTP/JSON over the daemon's Unix socket.
//!
//! Resources (all under `/v1`, JSON bodies, errors as
//! `{"error": {"kind": "...", "message": "..."}}` with a matching status):
//!
//! | method | path | body | returns |
//! |---|---|---|---|
//! | GET | /pools | | `[PoolStatus]` |
//! | POST | /pools | [`CreatePool`] | `PoolStatus` |
//! | GET | /pools/{pool} | | `PoolStatus` |
//! | DELETE | /pools/{pool} | | |
//! | POST | /pools/{pool}/check | | `CheckReport` |
//! | GET | /pools/{pool}/volumes | | `[VolumeInfo]` |
//! | POST | /pools/{pool}/volumes | [`CreateVolume`] | `VolumeInfo` |
//! | GET | /pools/{pool}/volumes/{vol} | | `VolumeInfo` |
//! | PATCH | /pools/{pool}/volumes/{vol} | [`SetProperties`] | `VolumeInfo` |
//! | DELETE | /pools/{pool}/volumes/{vol}?force=BOOL | | |
//! | POST | /pools/{pool}/volumes/{vol}/resize | [`Resize`] | `VolumeInfo` |
//! | POST | /pools/{pool}/volumes/{vol}/promote | | `VolumeInfo` |
//! | GET | /pools/{pool}/volumes/{vol}/space | | `SpaceReport` |
//! | GET | /pools/{pool}/volumes/{vol}/snapshots | | `[SnapshotInfo]` |
//! | POST | /pools/{pool}/volumes/{vol}/snapshots | [`CreateSnapshot`] | `SnapshotInfo` |
//! | DELETE | /pools/{pool}/volumes/{vol}/snapshots/{snap} | | |
//! | POST | /pools/{pool}/volumes/{vol}/snapshots/{snap}/rollback | | [`RollbackResult`] |
//! | POST | /pools/{pool}/volumes/{vol}/snapshots/{snap}/clone | [`CloneVolume`] | `VolumeInfo` |
//! | GET | /exports | | `[ExportInfo]` |
//!
//! `docs/api.md` describes the same in prose; `docs/openapi.yaml` is the
//! machine-readable form.
#![deny(missing_docs)]

mod client;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use client::{Client, ClientError};
pub use edgevol_engine::{CheckReport, PoolStatus, SnapshotInfo, SpaceReport, VolumeInfo};

/// Create a pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePool {
    /// Pool name.
    pub name: String,
    /// Files or block devices; files are created sparse at `size` if missing.
    pub devices: Vec<String>,
    /// Size for files that do not exist yet, bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// Segment size in bytes (power of two, 1 MiB..1 GiB).
    #[serde(default)]
    pub segment_size: Option<u64>,
}

/// Create a volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    /// Volume name (without the pool).
    pub name: String,
    /// Size in bytes (multiple of 4096).
    pub size: u64,
    /// Properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Set (string) or clear (null) properties.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetProperties {
    /// Property changes.
    pub properties: BTreeMap<String, Option<String>>,
}

/// Resize a volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    /// New size in bytes.
    pub size: u64,
    /// Allow shrinking (discards data past the new end).
    #[serde(default)]
    pub force: bool,
}

/// Take a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Snapshot name.
    pub name: String,
}

/// Clone a snapshot into a new volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneVolume {
    /// New volume name (same pool).
    pub name: String,
}

/// What a rollback did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackResult {
    /// The snapshot the previous head was kept as (None if it was unchanged).
    pub previous_head: Option<String>,
    /// The volume now.
    pub volume: VolumeInfo,
}

/// An attached client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportInfo {
    /// `POOL/VOL` or `POOL/VOL@SNAP`.
    pub name: String,
    /// Transport (`nbd`).
    pub transport: String,
    /// Connections attached now.
    pub connections: u64,
    /// Read-only.
    pub read_only: bool,
}

/// An error reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// An error's kind and message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable kind (`not-found`, `no-space`, ...).
    pub kind: String,
    /// One-line reason.
    pub message: String,
}
