//! Reports: pool status, volume and snapshot information, space accounting,
//! and property validation.
//!
//! The reports are plain structs: the JSON the management API sends is
//! `edgevol-api`'s business (its wire types convert from these).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::space::SegState;
use super::Shared;
use crate::catalog::{Catalog, SnapshotRec, VolumeRec};
use crate::chunk;
use crate::error::Result;
use crate::layout::{chunk_start, BLOCK_U64};
use crate::map::{Key, Value};

pub use super::props::check_pool_property;
pub(crate) use super::props::{check_property, check_property_key};

/// What a volume is: size, data, origin, properties, key state (the API
/// sends it as `edgevol_api::VolumeInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub compression: String,
    /// Where `compression` comes from: `local`, `pool` (the pool property) or `default`.
    pub compression_source: String,
    /// `off` or `aes-256-gcm`.
    pub encryption: String,
    /// Encrypted volumes: `passphrase`, `raw` or `hex`.
    pub keyformat: Option<String>,
    /// Encrypted volumes: `prompt`, `file:///...` or `exec:/...`.
    pub keylocation: Option<String>,
    /// Encrypted volumes: `available` (key loaded) or `unavailable`.
    pub keystatus: Option<String>,
    /// Passphrase keys: the key derivation, e.g. `argon2id m=65536KiB,t=3,p=1`.
    pub keykdf: Option<String>,
}

/// What a snapshot is: its data, size, place in the history and clones (the
/// API sends it as `edgevol_api::SnapshotInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, Default, PartialEq)]
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
    pub stored: u64,
    /// `used / stored`, as ZFS's `compressratio` (1.0 for no data).
    pub compressratio: f64,
}

/// One device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    /// Path.
    pub path: String,
    /// Group index.
    pub group: usize,
    /// ONLINE, FAULTED or RESILVERING.
    pub state: String,
    /// Why it is FAULTED.
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
    pub repaired_bytes: u64,
    /// A real block device (not a file).
    pub block_device: bool,
}

/// One top-level group.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, Default, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
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
    pub logical: u64,
    /// `logical / data`: the pool's compression ratio.
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
    pub reserve: super::Reserve,
    /// Bytes of the devices, before redundancy and labels.
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
    pub groups: Vec<GroupStatus>,
    /// The last or running scrub.
    pub scrub: Option<ScanStatus>,
    /// The last or running resilver.
    pub resilver: Option<ScanStatus>,
    /// Engine counters.
    pub counters: BTreeMap<String, u64>,
    /// The last maintenance error, if any.
    pub maintenance_error: Option<String>,
    /// Lineages waiting for garbage collection.
    pub gc_pending: usize,
    /// Pool properties (defaults for its volumes, e.g. `compression`).
    pub properties: BTreeMap<String, String>,
}

fn referenced_blocks(sh: &Shared, cat: &Catalog, v: &VolumeRec) -> u64 {
    let base = cat.lineages.get(&v.head).map_or(0, |l| l.base_referenced);
    let d = sh.lineage_delta.lock().get(&v.head).copied().unwrap_or(0);
    (base + d).max(0) as u64
}

pub(crate) fn volume_info(sh: &Shared, cat: &Catalog, v: &VolumeRec) -> VolumeInfo {
    let origin = v.origin.and_then(|s| cat.snapshots.get(&s)).map(|s| {
        let vn = s
            .volume
            .and_then(|x| cat.volumes.get(&x))
            .map_or("(destroyed)".to_string(), |x| x.name.clone());
        format!("{vn}@{}", s.name)
    });
    VolumeInfo {
        name: v.name.clone(),
        pool: sh.name.clone(),
        guid: format!("{:032x}", v.guid),
        size: v.size,
        referenced: referenced_blocks(sh, cat, v) * BLOCK_U64,
        created: v.created,
        origin,
        snapshots: cat.snapshots_of(v.id).len(),
        based_on: nearest_snapshot(cat, v.id, v.head, v.head_epoch, true).map(|s| s.name.clone()),
        readonly: v.props.get("readonly").is_some_and(|x| x == "on"),
        properties: v.props.clone(),
        compression: v
            .props
            .get("compression")
            .or_else(|| cat.pool_props.get("compression"))
            .cloned()
            .unwrap_or_else(|| "lz4".into()),
        compression_source: if v.props.contains_key("compression") {
            "local"
        } else if cat.pool_props.contains_key("compression") {
            "pool"
        } else {
            "default"
        }
        .into(),
        encryption: if v.key.is_some() {
            "aes-256-gcm"
        } else {
            "off"
        }
        .into(),
        keyformat: v.key.as_ref().map(|k| k.format.name().to_string()),
        keylocation: v.key.as_ref().map(|k| k.location.clone()),
        keykdf: v
            .key
            .as_ref()
            .and_then(|k| k.kdf.as_ref())
            .map(|k| k.describe()),
        keystatus: v.key.as_ref().map(|k| {
            if sh.key(k.id).is_some() {
                "available"
            } else {
                "unavailable"
            }
            .to_string()
        }),
    }
}

/// The visible snapshot of `vol` closest below view `(l, e)` in its history
/// (`inclusive`: a snapshot exactly at `e` counts).
fn nearest_snapshot(
    cat: &Catalog,
    vol: u64,
    l: u32,
    e: u64,
    inclusive: bool,
) -> Option<&SnapshotRec> {
    let mut first = true;
    for step in cat.chain(l, e) {
        let best = cat
            .snapshots
            .values()
            .filter(|s| s.volume == Some(vol) && !s.hidden && s.lineage == step.lineage)
            .filter(|s| {
                if first && !inclusive {
                    s.epoch < step.epoch
                } else {
                    s.epoch <= step.epoch
                }
            })
            .max_by_key(|s| s.epoch);
        if best.is_some() {
            return best;
        }
        first = false;
    }
    None
}

pub(crate) fn snapshot_infos(cat: &Catalog, v: &VolumeRec) -> Vec<SnapshotInfo> {
    cat.snapshots_of(v.id)
        .into_iter()
        .map(|s| SnapshotInfo {
            name: s.name.clone(),
            volume: v.name.clone(),
            created: s.created,
            referenced: s.referenced * BLOCK_U64,
            size: s.size,
            auto: s.auto,
            parent: nearest_snapshot(cat, v.id, s.lineage, s.epoch, false).map(|p| p.name.clone()),
            clones: cat
                .volumes
                .values()
                .filter(|c| c.origin == Some(s.id))
                .map(|c| c.name.clone())
                .collect(),
        })
        .collect()
}

pub(crate) fn pool_status(sh: &Shared) -> PoolStatus {
    let cat = sh.catalog();
    let (data, meta_segs, free_segs, logical) = {
        let s = sh.segs.lock();
        (
            s.live_total(),
            s.count(SegState::Meta),
            s.free_count(),
            s.logical_total(),
        )
    };
    let seg = sh.vdevs.segment_size;
    let size = sh.vdevs.total_segments() * seg;
    let metadata = meta_segs * seg;
    let allocated = data + metadata;
    let reserve = super::capacity::reserve(sh);
    let usable = size.saturating_sub(reserve.total());
    let free = usable.saturating_sub(data);
    let raw_size = sh.vdevs.devices().map(|(_, m)| m.dev().len()).sum();
    let poisoned = sh.vdevs.poisoned();
    let devices = sh
        .vdevs
        .devices()
        .map(|(g, m)| DeviceStatus {
            path: m.dev().describe(),
            group: g,
            state: m.state().name().into(),
            reason: m.reason(),
            size: m.dev().len(),
            read_errors: m.stats.read_errors.load(Ordering::Relaxed),
            write_errors: m.stats.write_errors.load(Ordering::Relaxed),
            checksum_errors: m.stats.checksum_errors.load(Ordering::Relaxed),
            repaired_bytes: m.stats.repaired_bytes.load(Ordering::Relaxed),
            block_device: m.dev().is_block_device(),
        })
        .collect();
    let groups = sh
        .vdevs
        .groups
        .iter()
        .map(|g| GroupStatus {
            kind: match g.geo.kind {
                crate::format::label::GroupKind::Single => "single".into(),
                crate::format::label::GroupKind::Mirror => "mirror".into(),
                crate::format::label::GroupKind::Parity(p) => format!("parity{p}"),
            },
            state: g.state_name().into(),
            tolerance: g.geo.tolerance().saturating_sub(g.unavailable()),
        })
        .collect();
    let scans = sh.scans.lock().clone();
    let st = &sh.stats;
    let counters: BTreeMap<String, u64> = [
        ("batches", &st.batches),
        ("bytes_written", &st.bytes_written),
        ("device_flushes", &st.flushes),
        ("checkpoints", &st.checkpoints),
        ("map_flushes", &st.map_flushes),
        ("compactions", &st.compactions),
        ("relocated_fragments", &st.relocated),
        ("restored_fragments", &st.restored),
        ("cleaned_segments", &st.cleaned_segments),
        ("cleaner_skipped_dead", &st.cleaner_skipped_dead),
        ("rounds_in_flight_max", &st.rounds_in_flight_max),
        ("checksum_errors", &st.checksum_errors),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed)))
    .chain([
        (
            "map_memtable_bytes".to_string(),
            sh.map.active_bytes() as u64,
        ),
        ("map_cache_bytes".to_string(), sh.map.cache().weight()),
        (
            "admission_delayed_writes".to_string(),
            sh.admission.delayed.load(Ordering::Relaxed),
        ),
        (
            "admission_wait_us".to_string(),
            sh.admission.delayed_ns.load(Ordering::Relaxed) / 1000,
        ),
        (
            "map_runs".to_string(),
            sh.map.levels().runs().count() as u64,
        ),
    ])
    .collect();
    PoolStatus {
        name: sh.name.clone(),
        guid: format!("{:032x}", sh.guid),
        created: sh.created,
        state: if poisoned.is_some() {
            "SUSPENDED"
        } else {
            sh.vdevs.state_name()
        }
        .into(),
        error: poisoned,
        segment_size: seg,
        size,
        allocated,
        data,
        logical,
        compressratio: ratio(logical, data),
        metadata,
        free,
        usable,
        reserve,
        raw_size,
        free_segments: free_segs,
        reserved_segments: super::data_reserve(sh),
        referenced: cat
            .volumes
            .values()
            .map(|v| referenced_blocks(sh, &cat, v))
            .sum::<u64>()
            * BLOCK_U64,
        volumes: cat.volumes.len(),
        snapshots: cat.snapshots.values().filter(|s| !s.hidden).count(),
        devices,
        groups,
        scrub: scans.scrub,
        resilver: scans.resilver,
        counters,
        maintenance_error: sh.maint_status.lock().last_error.clone(),
        properties: cat.pool_props.clone(),
        gc_pending: cat.gc_todo.len() + cat.purge_todo.len(),
    }
}

/// Who looks at a lineage at some epoch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Viewer {
    Head,
    Snap(u64),
    Pinned,
}

pub(crate) fn space_report(sh: &Shared, name: &str) -> Result<SpaceReport> {
    let cat = sh.catalog();
    let v = cat.volume_by_name(name)?;
    let mut rep = SpaceReport {
        volume: v.name.clone(),
        size: v.size,
        referenced: referenced_blocks(sh, &cat, v) * BLOCK_U64,
        ..SpaceReport::default()
    };
    let mut unique: BTreeMap<u64, u64> = BTreeMap::new();
    let own: Vec<u32> = cat
        .lineages
        .values()
        .filter(|l| l.volume == Some(v.id))
        .map(|l| l.id)
        .collect();
    for l in own {
        let Some(rec) = cat.lineages.get(&l) else {
            continue;
        };
        let mut viewers: Vec<(u64, Viewer)> = Vec::new();
        if v.head == l {
            viewers.push((v.head_epoch, Viewer::Head));
        }
        for s in cat.snapshots.values().filter(|s| s.lineage == l) {
            let pinned = cat
                .lineages
                .values()
                .any(|c| c.parent == Some((l, s.epoch)));
            viewers.push((
                s.epoch,
                if pinned || s.hidden {
                    Viewer::Pinned
                } else {
                    Viewer::Snap(s.id)
                },
            ));
        }
        for c in cat.lineages.values() {
            if let Some((p, e)) = c.parent {
                if p == l && !viewers.iter().any(|(x, _)| *x == e) {
                    viewers.push((e, Viewer::Pinned));
                }
            }
        }
        let epochs: Vec<u64> = viewers.iter().map(|(e, _)| *e).collect();
        let mut lo = Key::lower(l, 0);
        let hi = Key::lower(l.saturating_add(1), 0);
        let mut chunk_entries: Vec<(Key, Value)> = Vec::new();
        let mut flush_chunk = |entries: &mut Vec<(Key, Value)>| {
            if entries.is_empty() {
                return;
            }
            let c = chunk_start(entries[0].0.lba);
            let per_view = chunk::views_per_block(entries, c, &epochs, &rec.barriers);
            for x in 0..crate::layout::CHUNK_BLOCKS as usize {
                // Which viewers see which entry at this block.
                let mut seen: BTreeMap<usize, Vec<Viewer>> = BTreeMap::new();
                for (vi, pv) in per_view.iter().enumerate() {
                    if let Some(i) = pv[x] {
                        seen.entry(i).or_default().push(viewers[vi].1);
                    }
                }
                for (i, who) in seen {
                    let Some(d) = entries[i].1.data() else {
                        continue;
                    };
                    // This block's share of its record's stored bytes.
                    rep.stored += d.footprint() / u64::from(d.rec_blocks.max(1));
                    if who.contains(&Viewer::Head) {
                        rep.used_by_dataset += BLOCK_U64;
                    } else {
                        rep.used_by_snapshots += BLOCK_U64;
                        if let [Viewer::Snap(s)] = who.as_slice() {
                            *unique.entry(*s).or_insert(0) += BLOCK_U64;
                        }
                    }
                }
            }
            entries.clear();
        };
        loop {
            let page = sh.scan(lo, hi, 4096)?;
            for (k, val) in page.entries {
                if chunk_entries
                    .first()
                    .is_some_and(|(f, _)| chunk_start(f.lba) != chunk_start(k.lba))
                {
                    flush_chunk(&mut chunk_entries);
                }
                chunk_entries.push((k, val));
            }
            match page.resume {
                Some(r) => lo = r,
                None => break,
            }
        }
        flush_chunk(&mut chunk_entries);
    }
    rep.used = rep.used_by_dataset + rep.used_by_snapshots;
    rep.compressratio = ratio(rep.used, rep.stored);
    for s in cat.snapshots_of(v.id) {
        rep.snapshots
            .insert(s.name.clone(), unique.get(&s.id).copied().unwrap_or(0));
    }
    Ok(rep)
}

/// `logical / stored`, rounded to 2 decimals; 1.0 with no data.
fn ratio(logical: u64, stored: u64) -> f64 {
    if stored == 0 {
        return 1.0;
    }
    (logical as f64 / stored as f64 * 100.0).round() / 100.0
}
