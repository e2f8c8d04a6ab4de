//! Pool reports as the API sends them: status (devices, groups, scans,
//! the reserve), check results, and what an expand did.
//!
//! These are the wire shapes `docs/api.md` and `docs/openapi.yaml`
//! describe; the engine's own report structs carry no serde and convert
//! into these (`convert.rs`). Fields added after the first release have
//! `#[serde(default)]`, so replies of older daemons still parse.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Path.
    pub path: String,
    /// Group index.
    pub group: usize,
    /// ONLINE, FAULTED or RESILVERING.
    pub state: String,
    /// Why it is FAULTED.
    #[serde(default)]
    pub reason: Option<String>,
    /// Usable bytes.
    pub size: u64,
    /// Failed reads.
    pub read_errors: u64,
    /// Failed writes.
    pub write_errors: u64,
    /// Checksum failures (bad copies found on this device).
    pub checksum_errors: u64,
    /// Bytes rewritten with good data on this device (self-healing, scrub).
    #[serde(default)]
    pub repaired_bytes: u64,
    /// A real block device (not a file).
    #[serde(default)]
    pub block_device: bool,
    /// The drive's own health report (SMART), for block devices when the
    /// daemon can read it (`smartctl` installed); filled in by the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart: Option<SmartHealth>,
}

/// A drive's SMART health, as `smartctl` reports it: the verdict and the
/// attributes that predict failure. Fields the drive does not report are
/// absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmartHealth {
    /// The drive's overall self-assessment (false: failing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// Model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// `ATA`, `NVMe`, `SCSI`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Current temperature, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<i64>,
    /// Power-on hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_on_hours: Option<u64>,
    /// ATA 5: sectors remapped to spares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reallocated_sectors: Option<u64>,
    /// ATA 197: sectors waiting to be remapped (unreadable now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_sectors: Option<u64>,
    /// ATA 198: sectors found unreadable offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_uncorrectable: Option<u64>,
    /// ATA 187: errors the drive could not correct.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_uncorrectable: Option<u64>,
    /// NVMe: critical warning bits (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_warning: Option<u64>,
    /// NVMe: share of the rated endurance used, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage_used: Option<u64>,
    /// NVMe: spare capacity left, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_spare: Option<u64>,
    /// NVMe: unrecovered data integrity errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_errors: Option<u64>,
    /// Why no (or only part of a) report could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was read (seconds since the epoch).
    #[serde(default)]
    pub checked_at: u64,
}

/// One top-level group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// `single`, `mirror`, `parity1` or `parity2`.
    pub kind: String,
    /// ONLINE, DEGRADED (serving with less redundancy) or FAULTED.
    pub state: String,
    /// Member devices that may fail without data loss (now: minus those
    /// already unavailable).
    pub tolerance: usize,
}

/// Progress and result of the last scrub or resilver.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScanStatus {
    /// `scrub` or `resilver`.
    pub kind: String,
    /// `running`, `finished`, `stopped` or `failed`.
    pub state: String,
    /// Start (seconds since the epoch).
    pub started: u64,
    /// End, when not running.
    pub ended: Option<u64>,
    /// Bytes to examine.
    pub total_bytes: u64,
    /// Bytes examined so far.
    pub done_bytes: u64,
    /// Bytes per second, over the scan so far.
    pub rate: u64,
    /// Bytes of bad copies rewritten.
    pub repaired_bytes: u64,
    /// Records that no copy could restore: `POOL/VOLUME` (or lineage) and
    /// the block range.
    pub unrecoverable: Vec<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Pool status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Name.
    pub name: String,
    /// Guid, hex.
    pub guid: String,
    /// Creation time (seconds since the epoch).
    pub created: u64,
    /// ONLINE, or SUSPENDED after an I/O failure.
    pub state: String,
    /// Why the pool is suspended.
    pub error: Option<String>,
    /// Segment size.
    pub segment_size: u64,
    /// Capacity for data and metadata.
    pub size: u64,
    /// Bytes in use: live data records plus metadata segments.
    pub allocated: u64,
    /// Bytes of live data records (as stored, after compression).
    pub data: u64,
    /// Logical bytes of the live data records.
    #[serde(default)]
    pub logical: u64,
    /// `logical / data`: the pool's compression ratio.
    #[serde(default)]
    pub compressratio: f64,
    /// Bytes of metadata (map runs, checkpoints).
    pub metadata: u64,
    /// Bytes of new data the pool still accepts (usable capacity minus live
    /// data; usable capacity keeps a reserve for the cleaner and metadata and
    /// 8% over-provisioning).
    pub free: u64,
    /// Bytes of live data the pool can hold in all (`size - reserve`).
    pub usable: u64,
    /// What is held back from `size` and why (`size - usable`).
    #[serde(default)]
    pub reserve: Reserve,
    /// Bytes of the devices, before redundancy and labels.
    #[serde(default)]
    pub raw_size: u64,
    /// Segments free right now (without cleaning).
    pub free_segments: u64,
    /// Segments kept for the cleaner and metadata.
    pub reserved_segments: u64,
    /// Logical bytes written by clients that are still referenced (sum over volumes).
    pub referenced: u64,
    /// Volumes.
    pub volumes: usize,
    /// Snapshots.
    pub snapshots: usize,
    /// Devices.
    pub devices: Vec<DeviceStatus>,
    /// Top-level groups (stripes across them).
    #[serde(default)]
    pub groups: Vec<GroupStatus>,
    /// The last or running scrub.
    #[serde(default)]
    pub scrub: Option<ScanStatus>,
    /// The last or running resilver.
    #[serde(default)]
    pub resilver: Option<ScanStatus>,
    /// Engine counters.
    pub counters: BTreeMap<String, u64>,
    /// The last maintenance error, if any.
    pub maintenance_error: Option<String>,
    /// Lineages waiting for garbage collection.
    pub gc_pending: usize,
    /// Pool properties (defaults for its volumes, e.g. `compression`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// The part of a pool's size that client data cannot fill, by purpose
/// (bytes). `size - total()` is the usable capacity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserve {
    /// Metadata in use now: map runs, counters, the checkpoint log, and
    /// room for a compaction that rewrites the whole map.
    pub metadata: u64,
    /// Free segments only metadata may take: one memtable flush, a counters
    /// table and a checkpoint-log rollover, so a full pool can always
    /// commit (and so delete things).
    pub metadata_floor: u64,
    /// Free segments kept for the cleaner to move live data into.
    pub cleaner: u64,
    /// Segments open for writing, and their reserved successors.
    pub streams: u64,
    /// The over-provisioning share of what remains, kept dead or free so
    /// the cleaner always finds space to reclaim.
    pub overprovision: u64,
}

impl Reserve {
    /// All of it.
    pub fn total(&self) -> u64 {
        self.metadata + self.metadata_floor + self.cleaner + self.streams + self.overprovision
    }
}

/// What `pool check` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Inconsistencies (the check fails if any).
    pub errors: Vec<String>,
    /// Things worth knowing that are not inconsistencies.
    pub notes: Vec<String>,
    /// Map runs verified.
    pub runs: u64,
    /// Map entries verified.
    pub entries: u64,
    /// Distinct stored records.
    pub records: u64,
    /// Bytes of data read and verified.
    pub data_bytes: u64,
    /// Encrypted records whose key is not loaded: checksummed, but not
    /// authenticated.
    #[serde(default)]
    pub encrypted_unverified: u64,
}

/// What `pool online --expand` did to one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expanded {
    /// The group's index.
    pub group: usize,
    /// Segments before.
    pub from: u32,
    /// Segments now.
    pub to: u32,
    /// Bytes of segment space added.
    pub bytes: u64,
}
