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
//! | POST | /pools/{pool}/volumes/{vol}/load-key | [`KeyRequest`] | `VolumeInfo` |
//! | POST | /pools/{pool}/volumes/{vol}/unload-key?force=BOOL | | `VolumeInfo` |
//! | POST | /pools/{pool}/volumes/{vol}/change-key | [`ChangeKey`] | `VolumeInfo` |
//! | GET | /pools/{pool}/volumes/{vol}/snapshots | | `[SnapshotInfo]` |
//! | POST | /pools/{pool}/volumes/{vol}/snapshots | [`CreateSnapshot`] | `SnapshotInfo` |
//! | DELETE | /pools/{pool}/volumes/{vol}/snapshots/{snap} | | |
//! | POST | /pools/{pool}/volumes/{vol}/snapshots/{snap}/rollback | | [`RollbackResult`] |
//! | POST | /pools/{pool}/volumes/{vol}/snapshots/{snap}/clone | [`CloneVolume`] | `VolumeInfo` |
//! | GET | /exports | | `[ExportInfo]` |
//! | GET | /exports/vhost-user | | `[VhostUserExportInfo]` |
//! | POST | /exports/vhost-user | [`AddVhostUserExport`] | `VhostUserExportInfo` |
//! | DELETE | /exports/vhost-user?socket=PATH\|volume=POOL/VOL&force=BOOL | | `[VhostUserExportInfo]` (removed) |
//!
//! `docs/api.md` describes the same in prose; `docs/openapi.yaml` is the
//! machine-readable form.
#![deny(missing_docs)]

mod client;
mod convert;
mod pool;
mod volume;
#[cfg(test)]
mod wire_shape;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use client::{Client, ClientError};
pub use pool::{
    CheckReport, DeviceStatus, Expanded, GroupStatus, PoolStatus, Reserve, ScanStatus, SmartHealth,
};
pub use volume::{SnapshotInfo, SpaceReport, VolumeInfo};

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
    /// Pool properties (e.g. `compression`, the default of its volumes).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Overwrite devices that hold foreign data (a file system, a
    /// partition table, another pool's label, non-zero bytes in a file);
    /// devices in use (mounted, held) are refused regardless.
    #[serde(default)]
    pub force: bool,
}

/// Create a volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    /// Volume name (without the pool).
    pub name: String,
    /// Size in bytes (multiple of 4096).
    pub size: u64,
    /// Properties (including `compression`, and at creation only
    /// `encryption`, `keyformat`, `keylocation`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// The secret wrapping an encrypted volume's key when `keylocation` is
    /// `prompt`: its bytes, hex-encoded (a passphrase's UTF-8 bytes, or a
    /// raw or hex key file's contents). Never logged.
    #[serde(default)]
    pub secret_hex: Option<String>,
}

/// Load an encrypted volume's key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// The secret, hex-encoded; absent: read it from the volume's
    /// `keylocation` (a file or a command).
    #[serde(default)]
    pub secret_hex: Option<String>,
}

/// Wrap an encrypted volume's key anew (its key must be loaded).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeKey {
    /// New `keyformat` (passphrase, raw, hex); absent: unchanged.
    #[serde(default)]
    pub keyformat: Option<String>,
    /// New `keylocation`; absent: unchanged.
    #[serde(default)]
    pub keylocation: Option<String>,
    /// Argon2id memory for a passphrase (e.g. `256M`); absent: default.
    #[serde(default)]
    pub argon2_memory: Option<String>,
    /// Argon2id passes for a passphrase; absent: default.
    #[serde(default)]
    pub argon2_passes: Option<String>,
    /// The new secret, hex-encoded; absent: read from the (new) keylocation.
    #[serde(default)]
    pub secret_hex: Option<String>,
}

/// Hex-encode secret bytes for the API.
pub fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Decode an API hex string (pairs of hex digits, either case, nothing
/// else: `u8::from_str_radix` would also take a sign, as in `+f`).
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| char::from(b).to_digit(16);
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some(((digit(p[0])? << 4) | digit(p[1])?) as u8))
        .collect()
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
    /// Transport (`nbd` or `vhost-user`).
    pub transport: String,
    /// Connections attached now.
    pub connections: u64,
    /// Read-only.
    pub read_only: bool,
}

/// Export a volume (or a snapshot, read-only) to VMs over vhost-user-blk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddVhostUserExport {
    /// `POOL/VOL` or `POOL/VOL@SNAP`.
    pub volume: String,
    /// The vhost-user socket the daemon listens on (QEMU's `-chardev
    /// socket,path=...`); made absolute against the daemon's directory.
    pub socket: String,
    /// Virtqueues (1..64) [default 1].
    #[serde(default)]
    pub queues: Option<u16>,
    /// Read-only even if the volume is writable.
    #[serde(default)]
    pub read_only: bool,
    /// Let several frontends attach at once (each sees the same volume; the
    /// guests must coordinate, as with a shared disk). Default: a second
    /// frontend is refused while one is attached.
    #[serde(default)]
    pub shared: bool,
    /// Queue worker threads: `per-queue` (default) or `shared`.
    #[serde(default)]
    pub workers: Option<String>,
    /// Recorded in the data directory and re-created when the daemon
    /// starts [default true].
    #[serde(default)]
    pub persistent: Option<bool>,
}

/// A vhost-user-blk export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VhostUserExportInfo {
    /// `POOL/VOL` or `POOL/VOL@SNAP`.
    pub volume: String,
    /// The socket.
    pub socket: String,
    /// Virtqueues offered.
    pub queues: u16,
    /// Exported read-only (asked for, or a snapshot).
    pub read_only: bool,
    /// Several frontends may attach at once.
    pub shared: bool,
    /// `per-queue` or `shared` queue worker threads.
    pub workers: String,
    /// Re-created when the daemon starts.
    pub persistent: bool,
    /// `listening` (no frontend), `attached`, or `error`.
    pub state: String,
    /// Frontends attached now.
    pub connections: u64,
    /// The guest-visible serial (virtio-blk GET_ID): the disk shows up as
    /// `/dev/disk/by-id/virtio-SERIAL`.
    pub serial: Option<String>,
    /// `write-back` (the guest flushes) or `write-through` (every write
    /// durable on completion), as the guest last set it.
    pub write_cache: String,
    /// Why the export is not serving (state `error`).
    pub error: Option<String>,
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

/// `POST /v1/pools/{pool}/scrub`: start (or, with `stop`, stop) a scrub.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrubRequest {
    /// Stop the running scrub instead of starting one.
    #[serde(default)]
    pub stop: bool,
}

/// `POST /v1/pools/{pool}/replace`: replace device `old` by `new` and
/// resilver.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceDevice {
    /// The device to replace: its path as `pool status` shows it, or its guid.
    pub old: String,
    /// The new file (created sparse at the old one's size if missing) or
    /// block device.
    pub new: String,
    /// Overwrite a new device that holds foreign data (devices in use are
    /// refused regardless).
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/pools/{pool}/add`: add a group of devices while the pool
/// serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDevices {
    /// One group: a device, or a keyword (`mirror`, `parity1`, `parity2`)
    /// and its devices.
    pub devices: Vec<String>,
    /// Size for files that do not exist yet, bytes (default: the size of
    /// the pool's first device).
    #[serde(default)]
    pub size: Option<u64>,
    /// Add a group with less redundancy than the pool's groups, and
    /// overwrite devices that hold foreign data (devices in use are
    /// refused regardless).
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/pools/{pool}/online`: bring devices' new space online.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineDevices {
    /// Only the group of this device (its path or guid); default: every
    /// group whose devices all grew.
    #[serde(default)]
    pub device: Option<String>,
    /// Take in the space the devices gained. (The only action so far.)
    #[serde(default)]
    pub expand: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_signs() {
        let b = hex_decode("00ffA5").unwrap();
        assert_eq!(b, [0, 0xff, 0xa5]);
        assert_eq!(hex_encode(&b), "00ffa5");
        // Found by the api_body fuzzer: a sign is not a hex digit.
        for bad in ["+f", "-0", "0x", " 1", "é1", "abc"] {
            assert_eq!(hex_decode(bad), None, "{bad:?}");
        }
    }
}
