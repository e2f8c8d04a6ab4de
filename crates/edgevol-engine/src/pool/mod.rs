//! Pools: devices, the writer, maintenance, and the management API.
//!
//! ```text
//!   Pool (handle) ──control ops──▶ writer thread ◀──relocations/flushes── maintenance thread
//!   Volume (handle) ──data ops──▶      │                                   (flush, compaction,
//!         │                            ▼                                    cleaner, GC)
//!         └──reads──▶ map + devices (io threads)
//! ```

mod capacity;
mod check;
pub(crate) mod ckpt;
mod gate;
mod grow;
mod health;
pub(crate) mod info;
pub use grow::Expanded;
mod maint;
mod open;
pub mod raid;
mod scrub;
pub mod space;
mod subblock;
pub mod vdev;
mod volume;
mod walk;
pub(crate) mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::catalog::Catalog;
use crate::device::{Device, FileDevice};
use crate::error::{Error, ErrorKind, Result};
use crate::format::label::GroupKind;
use crate::layout::MIN_SEGMENT_SIZE;
use crate::map::Map;

pub(crate) use capacity::{data_reserve, memtable_budget, meta_floor, usable_bytes};
pub use capacity::{Reserve, CLEANER_SEGMENTS, OVERPROVISION_PERCENT};
pub use check::CheckReport;
pub use info::{
    check_pool_property, DeviceStatus, GroupStatus, PoolStatus, ScanStatus, SnapshotInfo,
    SpaceReport, VolumeInfo,
};
pub use volume::{ReadSeg, Volume};

use gate::ReuseGate;
use space::SegmentTable;
use vdev::Vdevs;
use writer::{Control, DataOp, MaintOp};

/// Runtime settings of an open pool (not stored on disk).
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Memtable budget: the map flushes a run when the active memtable
    /// reaches this. Default 16 MiB.
    pub memtable_bytes: usize,
    /// Map block cache. Default 64 MiB.
    pub cache_bytes: u64,
    /// Largest batch written in one device write. Default 2 MiB.
    pub max_batch_bytes: usize,
    /// Where the pool's writer runs: None starts a thread of its own
    /// (blocking device I/O); a data-plane event loop passes a spawner so
    /// the writer runs as a task on its thread and does its device I/O
    /// through that thread's io_uring, next to the clients' requests.
    pub spawner: Option<Spawner>,
    /// Flush the memtable at least this often when it is not empty. Default 30 s.
    pub flush_interval: Duration,
    /// Flush the memtable when this much log was written since the last
    /// flush (bounds recovery time). Default 512 MiB.
    pub replay_budget: u64,
    /// Run the maintenance thread (flushes, compaction, cleaner, GC).
    /// Tests turn it off to drive maintenance by hand.
    pub background: bool,
    /// Bound on queued client ops (back-pressure). Default 1024.
    pub queue_depth: usize,
    /// Threads a scrub reads with. Default 4; 1 makes a scrub's device
    /// operations come in a fixed order (power-cut campaigns).
    pub scan_threads: usize,
    /// How often every member device is probed (see [`health`]): a
    /// device that vanished or fails is FAULTED within this time, without
    /// client I/O. Default 1 s; zero turns the probe off. Runs only with
    /// `background`.
    pub health_interval: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            memtable_bytes: 16 << 20,
            cache_bytes: 64 << 20,
            max_batch_bytes: 2 << 20,
            spawner: None,
            flush_interval: Duration::from_secs(30),
            replay_budget: 512 << 20,
            background: true,
            queue_depth: 1024,
            scan_threads: 4,
            health_interval: Duration::from_secs(1),
        }
    }
}

/// A task for a data-plane thread: built there (it need not be `Send`).
pub type LocalTaskFactory =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send>;

/// Runs a task on a data-plane thread (see [`PoolConfig::spawner`]).
#[derive(Clone)]
pub struct Spawner(pub Arc<dyn Fn(LocalTaskFactory) + Send + Sync>);

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spawner")
    }
}

/// Options fixed at pool creation.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Segment size in bytes (power of two, 1 MiB..1 GiB). Default: 8 MiB,
    /// larger for big pools so the segment table stays small.
    pub segment_size: Option<u64>,
}

/// Counters for status and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    /// Batches written.
    pub batches: AtomicU64,
    /// Bytes of batches written.
    pub bytes_written: AtomicU64,
    /// Device flushes.
    pub flushes: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Memtable flushes.
    pub map_flushes: AtomicU64,
    /// Compactions.
    pub compactions: AtomicU64,
    /// Fragments the cleaner moved.
    pub relocated: AtomicU64,
    /// Segments the cleaner processed.
    pub cleaned_segments: AtomicU64,
    /// Fragments of partly dead packed records the cleaner stored anew.
    pub restored: AtomicU64,
    /// Checksum failures seen by reads.
    pub checksum_errors: AtomicU64,
}

/// State shared by every thread of a pool.
pub(crate) struct Shared {
    pub guid: u128,
    pub name: String,
    pub created: u64,
    pub vdevs: Arc<Vdevs>,
    pub map: Map,
    pub catalog: RwLock<Arc<Catalog>>,
    pub segs: Mutex<SegmentTable>,
    pub gate: Arc<ReuseGate>,
    pub cfg: PoolConfig,
    pub data_tx: async_channel::Sender<DataOp>,
    pub maint_tx: async_channel::Sender<MaintOp>,
    pub poisoned: Mutex<Option<String>>,
    pub stats: Stats,
    pub lineage_delta: Mutex<BTreeMap<u32, i64>>,
    pub space_blocked: AtomicBool,
    pub maint_wake: (Mutex<bool>, Condvar),
    pub closing: AtomicBool,
    pub maint_status: Mutex<maint::MaintStatus>,
    /// Serialises maintenance work between the background thread and callers.
    pub maint_lock: Mutex<()>,
    /// Next map run id (persisted in every checkpoint).
    pub next_run_id: AtomicU64,
    /// The memtable budget in effect: the configured one, capped for small
    /// pools so that one flush never needs a large share of the pool.
    pub memtable_budget: usize,
    /// Metadata the last checkpoint owns besides map runs: the counters
    /// table's extents and the checkpoint-log segment (for `pool check`).
    pub meta_roots: Mutex<(Vec<crate::layout::MetaExtent>, Option<crate::layout::SegId>)>,
    /// (segment table generation, metadata segments, metadata bytes).
    pub usable_cache: Mutex<(u64, u64, u64)>,
    /// Loaded data keys, by id (never persisted).
    pub keys: RwLock<std::collections::HashMap<u64, Arc<crate::crypt::DataKey>>>,
    /// The last or running scrub and resilver.
    pub scans: Mutex<scrub::Scans>,
    /// Asks a running scrub to stop.
    pub scan_stop: AtomicBool,
    /// A scrub or resilver thread is running.
    pub scan_running: AtomicBool,
    /// Client operations so far (reads, writes, flushes, discards): a
    /// scrub slows down while this moves.
    pub client_ops: AtomicU64,
    /// Per-volume exclusion for sub-block writes (read-modify-write).
    pub subblock: subblock::LockTable,
}

impl Shared {
    /// A loaded data key.
    pub fn key(&self, id: u64) -> Option<Arc<crate::crypt::DataKey>> {
        self.keys.read().get(&id).cloned()
    }

    /// Ask the maintenance thread to look for work now.
    pub fn wake_maintenance(&self) {
        let (m, cv) = &self.maint_wake;
        *m.lock() = true;
        cv.notify_one();
    }

    /// Send a control op and wait.
    fn control(&self, c: Control) -> Result<u64> {
        let (tx, rx) = futures::channel::oneshot::channel();
        self.maint_tx
            .send_blocking(MaintOp::Control(c, tx))
            .map_err(|_| Error::new(ErrorKind::Shutdown, "pool is closing"))?;
        futures::executor::block_on(rx)
            .map_err(|_| Error::new(ErrorKind::Shutdown, "pool is closing"))?
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().clone()
    }
}

/// An open pool.
pub struct Pool {
    sh: Arc<Shared>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Serialises layout changes (replace, add, expand).
    admin: Mutex<()>,
    /// Disconnected when the writer (a thread or a data-plane task) ends.
    writer_done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

fn map_key(l: u32, lba: u64) -> crate::map::Key {
    crate::map::Key::lower(l, lba)
}

/// Parse a device list in `zpool create` form (see
/// [`Pool::create_on_paths`]) into groups.
pub fn parse_layout(spec: &[String]) -> Result<Vec<(GroupKind, Vec<String>)>> {
    let keyword = |t: &str| match t {
        "mirror" => Some(GroupKind::Mirror),
        "parity1" | "raidz1" | "raidz" => Some(GroupKind::Parity(1)),
        "parity2" | "raidz2" => Some(GroupKind::Parity(2)),
        _ => None,
    };
    let mut out: Vec<(GroupKind, Vec<String>)> = Vec::new();
    let mut open = false;
    for t in spec {
        if let Some(k) = keyword(t) {
            out.push((k, Vec::new()));
            open = true;
        } else if open {
            if let Some(g) = out.last_mut() {
                g.1.push(t.clone());
            }
        } else {
            out.push((GroupKind::Single, vec![t.clone()]));
        }
    }
    if out.is_empty() {
        return Err(Error::invalid("give at least one file or device"));
    }
    for (k, devs) in &out {
        raid::Geometry::new(*k, devs.len(), MIN_SEGMENT_SIZE).map_err(|_| {
            Error::invalid(match k {
                GroupKind::Mirror => "a mirror needs at least 2 devices".to_string(),
                GroupKind::Parity(p) => {
                    format!("a parity{p} group needs at least {} devices", p + 2)
                }
                GroupKind::Single => "a device is missing".to_string(),
            })
        })?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for d in out.iter().flat_map(|(_, d)| d) {
        if !seen.insert(d) {
            return Err(Error::invalid(format!("{d} is listed twice")));
        }
    }
    Ok(out)
}

/// Split `VOL@SNAP` into its parts.
pub fn split_snapshot(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('@') {
        Some((v, s)) => (v, Some(s)),
        None => (spec, None),
    }
}

impl Pool {
    /// Create a pool on devices (each device its own group: a stripe).
    pub fn create(
        name: &str,
        devices: Vec<Arc<dyn Device>>,
        opts: &CreateOptions,
        cfg: PoolConfig,
    ) -> Result<Pool> {
        let spec = devices
            .into_iter()
            .map(|d| (GroupKind::Single, vec![d]))
            .collect();
        open::create(name, spec, opts, cfg)
    }

    /// Create a pool of groups: `(kind, member devices)` each; segments
    /// are striped across the groups.
    pub fn create_groups(
        name: &str,
        groups: Vec<(GroupKind, Vec<Arc<dyn Device>>)>,
        opts: &CreateOptions,
        cfg: PoolConfig,
    ) -> Result<Pool> {
        open::create(name, groups, opts, cfg)
    }

    /// Create a pool on files or block devices; missing files are created
    /// sparse at `size` bytes. `spec` is a device list in `zpool create`
    /// form: plain paths (each its own group: a stripe), or groups opened
    /// by a keyword — `mirror A B`, `parity1 A B C`, `parity2 A B C D`.
    pub fn create_on_paths(
        name: &str,
        spec: &[String],
        size: Option<u64>,
        opts: &CreateOptions,
        cfg: PoolConfig,
    ) -> Result<Pool> {
        let layout = parse_layout(spec)?;
        let mut groups = Vec::new();
        let mut created = Vec::new();
        let undo = |created: &[PathBuf]| {
            for c in created {
                let _ = std::fs::remove_file(c);
            }
        };
        for (kind, paths) in layout {
            let mut devs: Vec<Arc<dyn Device>> = Vec::new();
            for p in paths {
                let p = PathBuf::from(p);
                let existed = p.exists();
                match FileDevice::create_sparse(&p, size.unwrap_or(0)) {
                    Ok(d) => devs.push(Arc::new(d)),
                    Err(e) => {
                        undo(&created);
                        return Err(e);
                    }
                }
                if !existed {
                    created.push(p);
                }
            }
            groups.push((kind, devs));
        }
        let r = Pool::create_groups(name, groups, opts, cfg);
        if r.is_err() {
            undo(&created);
        }
        r
    }

    /// Import a pool from its devices, recovering after a crash if needed.
    pub fn open(devices: Vec<Arc<dyn Device>>, cfg: PoolConfig) -> Result<Pool> {
        open::import(devices, cfg)
    }

    /// Import a pool from files or block devices. Devices that cannot be
    /// opened are left out: the pool comes up DEGRADED if its redundancy
    /// covers them.
    pub fn open_paths(paths: &[PathBuf], cfg: PoolConfig) -> Result<Pool> {
        let mut devs: Vec<Arc<dyn Device>> = Vec::new();
        let mut first_err = None;
        for p in paths {
            match FileDevice::open(p) {
                Ok(d) => devs.push(Arc::new(d)),
                Err(e) if e.kind() == ErrorKind::Busy => return Err(e),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot open pool device");
                    first_err.get_or_insert(e);
                }
            }
        }
        if devs.is_empty() {
            return Err(first_err.unwrap_or_else(|| Error::invalid("no devices given")));
        }
        Pool::open(devs, cfg)
    }

    /// Read the label of a device without importing: `(pool name, pool guid)`.
    pub fn probe(path: &Path) -> Result<(String, u128)> {
        open::probe(path)
    }

    fn from_shared(
        sh: Arc<Shared>,
        threads: Vec<std::thread::JoinHandle<()>>,
        writer_done: std::sync::mpsc::Receiver<()>,
    ) -> Pool {
        Pool {
            sh,
            threads: Mutex::new(threads),
            admin: Mutex::new(()),
            writer_done: Mutex::new(Some(writer_done)),
        }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.sh.name
    }

    /// The pool's guid.
    pub fn guid(&self) -> u128 {
        self.sh.guid
    }

    /// Device paths (as given at open).
    pub fn paths(&self) -> Vec<String> {
        self.sh
            .vdevs
            .devices()
            .map(|(_, m)| m.dev().describe())
            .collect()
    }

    fn vol_id(&self, name: &str) -> Result<u64> {
        Ok(self.sh.catalog().volume_by_name(name)?.id)
    }

    fn snap_id(&self, vol: &str, snap: &str) -> Result<(u64, u64)> {
        let cat = self.sh.catalog();
        let v = cat.volume_by_name(vol)?.id;
        let s = cat.snapshot_by_name(v, snap)?.id;
        Ok((v, s))
    }

    /// Create a volume. Properties: see [`info::check_property`]; an
    /// encrypted volume (`encryption=aes-256-gcm`) takes its secret from
    /// its `keylocation` (`file://`, `exec:`) — use
    /// [`Pool::create_volume_with_key`] to give it (`prompt`).
    pub fn create_volume(
        &self,
        name: &str,
        size: u64,
        props: BTreeMap<String, String>,
    ) -> Result<VolumeInfo> {
        self.create_volume_with_key(name, size, props, None)
    }

    /// Create a volume, with the secret wrapping an encrypted volume's key.
    pub fn create_volume_with_key(
        &self,
        name: &str,
        size: u64,
        mut props: BTreeMap<String, String>,
        secret: Option<crate::crypt::Secret>,
    ) -> Result<VolumeInfo> {
        let enc = props.remove("encryption");
        let format = props.remove("keyformat");
        let location = props.remove("keylocation");
        let kdf = crate::crypt::KdfParams::from_options(
            props.remove("argon2_memory").as_deref(),
            props.remove("argon2_passes").as_deref(),
        )?;
        for (k, v) in &props {
            info::check_property(k, v)?;
        }
        let key = match enc.as_deref() {
            None | Some("off") => {
                if format.is_some() || location.is_some() || secret.is_some() || kdf.is_some() {
                    return Err(Error::invalid(
                        "keyformat, keylocation, argon2_* and a key only apply to encryption=aes-256-gcm",
                    ));
                }
                None
            }
            Some("aes-256-gcm" | "on") => {
                let format =
                    crate::crypt::KeyFormat::parse(format.as_deref().unwrap_or("passphrase"))?;
                let location = location.unwrap_or_else(|| "prompt".into());
                crate::crypt::check_location(&location)?;
                let secret = match secret {
                    Some(s) => s,
                    None => crate::crypt::fetch_secret(&location)?,
                };
                Some(crate::crypt::KeyRec::create(
                    rand::random::<u64>() >> 1,
                    format,
                    &location,
                    &secret,
                    kdf,
                )?)
            }
            Some(other) => {
                return Err(Error::invalid(format!(
                    "encryption must be off or aes-256-gcm, not {other:?}"
                )))
            }
        };
        let rec = key.as_ref().map(|(r, _)| r.clone());
        if let Some((r, dk)) = key {
            self.set_key(r.id, Some(Arc::new(dk)))?;
        }
        self.sh.control(Control::CreateVolume {
            name: name.to_string(),
            size,
            props,
            key: rec,
        })?;
        self.volume_info(name)
    }

    fn set_key(&self, id: u64, key: Option<Arc<crate::crypt::DataKey>>) -> Result<()> {
        maint::send_op(&self.sh, |d| MaintOp::SetKey(id, key, d))
    }

    fn key_rec(&self, vol: &str) -> Result<crate::crypt::KeyRec> {
        self.sh
            .catalog()
            .volume_by_name(vol)?
            .key
            .clone()
            .ok_or_else(|| Error::invalid(format!("volume {vol:?} is not encrypted")))
    }

    /// Load an encrypted volume's key: unwrap its data key with `secret`, or
    /// with what its `keylocation` gives. A wrong secret is an error
    /// (PermissionDenied) and changes nothing.
    pub fn load_key(&self, vol: &str, secret: Option<crate::crypt::Secret>) -> Result<()> {
        let rec = self.key_rec(vol)?;
        let secret = match secret {
            Some(s) => s,
            None => crate::crypt::fetch_secret(&rec.location)?,
        };
        let key = rec.unlock(&secret)?;
        self.set_key(rec.id, Some(Arc::new(key)))
    }

    /// Forget an encrypted volume's key (and so its clones', which share
    /// it): its data can no longer be read or written until `load_key`.
    pub fn unload_key(&self, vol: &str) -> Result<()> {
        let rec = self.key_rec(vol)?;
        self.set_key(rec.id, None)
    }

    /// True if the volume is not encrypted or its key is loaded.
    pub fn key_available(&self, vol: &str) -> Result<bool> {
        let cat = self.sh.catalog();
        let v = cat.volume_by_name(vol)?;
        Ok(v.key.as_ref().is_none_or(|k| self.sh.key(k.id).is_some()))
    }

    /// Wrap an encrypted volume's data key with a new secret (and format and
    /// location). The key must be loaded; no data is rewritten; snapshots
    /// and clones stay readable. `kdf` tunes Argon2 (passphrases; default:
    /// fresh parameters at the defaults).
    pub fn change_key(
        &self,
        vol: &str,
        format: Option<&str>,
        location: Option<&str>,
        kdf: Option<crate::crypt::KdfParams>,
        secret: Option<crate::crypt::Secret>,
    ) -> Result<()> {
        let rec = self.key_rec(vol)?;
        let key = self.sh.key(rec.id).ok_or_else(|| {
            Error::new(
                ErrorKind::PermissionDenied,
                format!("load the key of {vol} before changing it"),
            )
        })?;
        let format = match format {
            Some(f) => crate::crypt::KeyFormat::parse(f)?,
            None => rec.format,
        };
        let location = location.unwrap_or(&rec.location).to_string();
        let secret = match secret {
            Some(s) => s,
            None => crate::crypt::fetch_secret(&location)?,
        };
        let new = rec.rewrap_loaded(&key, format, &location, &secret, kdf)?;
        let id = self.vol_id(vol)?;
        self.sh
            .control(Control::SetKeyRec { vol: id, key: new })
            .map(|_| ())
    }

    /// Load the keys of every encrypted volume whose key lives in a file or
    /// comes from a command (import does this); failures are logged.
    pub fn load_keys_from_locations(&self) {
        let cat = self.sh.catalog();
        for v in cat.volumes.values() {
            let Some(rec) = &v.key else { continue };
            if rec.location == "prompt" || self.sh.key(rec.id).is_some() {
                continue;
            }
            match self.load_key(&v.name, None) {
                Ok(()) => tracing::info!(pool = %self.sh.name, volume = %v.name, "loaded key"),
                Err(e) => {
                    tracing::warn!(pool = %self.sh.name, volume = %v.name, error = %e, "cannot load key")
                }
            }
        }
    }

    /// Every volume.
    pub fn volumes(&self) -> Vec<VolumeInfo> {
        let cat = self.sh.catalog();
        let mut v: Vec<VolumeInfo> = cat
            .volumes
            .values()
            .map(|v| info::volume_info(&self.sh, &cat, v))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// One volume.
    pub fn volume_info(&self, name: &str) -> Result<VolumeInfo> {
        let cat = self.sh.catalog();
        let v = cat.volume_by_name(name)?;
        Ok(info::volume_info(&self.sh, &cat, v))
    }

    /// Open a volume (`NAME`) or a snapshot (`NAME@SNAP`, read-only) for I/O.
    pub fn open_volume(&self, spec: &str) -> Result<Volume> {
        volume::open_volume(&self.sh, spec)
    }

    /// Resize a volume. Shrinking below the current size needs `force`.
    pub fn resize_volume(&self, name: &str, size: u64, force: bool) -> Result<()> {
        let cat = self.sh.catalog();
        let v = cat.volume_by_name(name)?;
        if size < v.size && !force {
            return Err(Error::invalid(format!(
                "shrinking {name} from {} to {size} bytes discards data beyond the new end; use --force",
                v.size
            )));
        }
        let id = v.id;
        drop(cat);
        self.sh
            .control(Control::Resize { vol: id, size })
            .map(|_| ())
    }

    /// Destroy a volume and its snapshots. Refused while clones depend on it
    /// unless `force`.
    pub fn destroy_volume(&self, name: &str, force: bool) -> Result<()> {
        let id = self.vol_id(name)?;
        self.sh
            .control(Control::DestroyVolume { vol: id, force })
            .map(|_| ())
    }

    /// Set (Some) or clear (None) a volume property.
    pub fn set_property(&self, name: &str, key: &str, value: Option<&str>) -> Result<()> {
        if let Some(v) = value {
            info::check_property(key, v)?;
        } else {
            info::check_property_key(key)?;
        }
        let id = self.vol_id(name)?;
        self.sh
            .control(Control::SetProp {
                vol: id,
                key: key.to_string(),
                value: value.map(str::to_string),
            })
            .map(|_| ())
    }

    /// Set (Some) or clear (None) a pool property.
    pub fn set_pool_property(&self, key: &str, value: Option<&str>) -> Result<()> {
        info::check_pool_property(key, value)?;
        self.sh
            .control(Control::SetPoolProp {
                key: key.to_string(),
                value: value.map(str::to_string),
            })
            .map(|_| ())
    }

    /// Rename a volume.
    pub fn rename_volume(&self, name: &str, new: &str) -> Result<()> {
        let id = self.vol_id(name)?;
        self.sh
            .control(Control::Rename {
                vol: id,
                name: new.to_string(),
            })
            .map(|_| ())
    }

    /// Take a snapshot (O(1); durable when this returns).
    pub fn snapshot(&self, vol: &str, snap: &str) -> Result<SnapshotInfo> {
        let id = self.vol_id(vol)?;
        self.sh.control(Control::Snapshot {
            vol: id,
            name: snap.to_string(),
        })?;
        self.snapshot_info(vol, snap)
    }

    fn snapshot_info(&self, vol: &str, snap: &str) -> Result<SnapshotInfo> {
        self.snapshots(vol)?
            .into_iter()
            .find(|s| s.name == snap)
            .ok_or_else(|| Error::not_found(format!("{vol}@{snap}")))
    }

    /// A volume's snapshots, oldest first, with their place in the history tree.
    pub fn snapshots(&self, vol: &str) -> Result<Vec<SnapshotInfo>> {
        let cat = self.sh.catalog();
        let v = cat.volume_by_name(vol)?;
        Ok(info::snapshot_infos(&cat, v))
    }

    /// Destroy a snapshot (its unique data is freed by the GC).
    pub fn destroy_snapshot(&self, vol: &str, snap: &str) -> Result<()> {
        let (_, s) = self.snap_id(vol, snap)?;
        self.sh
            .control(Control::DestroySnapshot { snap: s })
            .map(|_| ())
    }

    /// Make `vol` equal to `vol@snap`. The previous head is kept as an
    /// automatic snapshot (returned) unless it was unchanged.
    pub fn rollback(&self, vol: &str, snap: &str) -> Result<Option<String>> {
        let (v, s) = self.snap_id(vol, snap)?;
        let auto = self.sh.control(Control::Rollback { vol: v, snap: s })?;
        if auto == 0 {
            return Ok(None);
        }
        Ok(self
            .sh
            .catalog()
            .snapshots
            .get(&auto)
            .map(|s| s.name.clone()))
    }

    /// Create a writable clone `new` of `vol@snap`.
    pub fn clone_snapshot(&self, vol: &str, snap: &str, new: &str) -> Result<VolumeInfo> {
        let (_, s) = self.snap_id(vol, snap)?;
        self.sh.control(Control::Clone {
            snap: s,
            name: new.to_string(),
        })?;
        self.volume_info(new)
    }

    /// Make a clone independent of its origin by copying the data it still
    /// shares (a flatten), so the origin can be destroyed.
    pub fn promote(&self, vol: &str) -> Result<()> {
        maint::flatten(&self.sh, vol)
    }

    /// Space used by a volume and its snapshots (scans the volume's map).
    pub fn space(&self, vol: &str) -> Result<SpaceReport> {
        info::space_report(&self.sh, vol)
    }

    /// Pool status.
    pub fn status(&self) -> PoolStatus {
        info::pool_status(&self.sh)
    }

    /// Verify all metadata and data checksums.
    pub fn check(&self) -> Result<CheckReport> {
        check::check(&self.sh)
    }

    /// Start a scrub in the background (see `pool status` for progress).
    pub fn scrub_start(&self) -> Result<()> {
        let h = scrub::start_scrub(&self.sh)?;
        self.threads.lock().push(h);
        Ok(())
    }

    /// Stop a running scrub.
    pub fn scrub_stop(&self) -> Result<()> {
        scrub::stop_scrub(&self.sh)
    }

    /// Wait until no scrub or resilver runs (tests, tools; the CLI's
    /// `--wait` polls `pool status` instead).
    pub fn wait_scans(&self) {
        while self.sh.scan_running.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replace device `old` (its path, or its guid in hex) with `new`,
    /// created sparse at the old one's size if it is a missing file, and
    /// resilver it in the background. The pool keeps serving throughout.
    pub fn replace(&self, old: &str, new: &Path) -> Result<()> {
        let (g, m) = self.find_member(old)?;
        let group = &self.sh.vdevs.groups[g];
        let need = crate::layout::DATA_START + u64::from(group.segments()) * group.geo.slot_bytes();
        let size = group.members[m].dev().len().max(need);
        let dev: Arc<dyn Device> = Arc::new(FileDevice::create_sparse(new, size)?);
        self.replace_with(old, dev)
    }

    fn find_member(&self, old: &str) -> Result<(usize, usize)> {
        let sh = &self.sh;
        sh.vdevs
            .groups
            .iter()
            .enumerate()
            .find_map(|(gi, g)| {
                g.members
                    .iter()
                    .position(|x| x.dev().describe() == old || format!("{:032x}", x.guid()) == old)
                    .map(|mi| (gi, mi))
            })
            .ok_or_else(|| Error::not_found(format!("pool {} has no device {old}", sh.name)))
    }

    /// [`Pool::replace`] with an opened device.
    pub fn replace_with(&self, old: &str, dev: Arc<dyn Device>) -> Result<()> {
        let _admin = self.admin.lock();
        let sh = &self.sh;
        // Claimed before anything changes: a replace refused because a
        // scrub runs leaves the old device in place.
        let slot = scrub::Slot::claim(sh)?;
        let new = PathBuf::from(dev.describe());
        let (g, m) = self.find_member(old)?;
        let group = &sh.vdevs.groups[g];
        if group.geo.tolerance() == 0 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "only a device of a mirror or parity group can be replaced",
            ));
        }
        if sh.vdevs.has_device(&new.display().to_string()) {
            return Err(Error::invalid(format!(
                "{} is already in the pool",
                new.display()
            )));
        }
        let segments = crate::format::label::Label::segments_for(dev.len(), group.geo.slot_bytes());
        if segments < group.segments() {
            let need =
                crate::layout::DATA_START + u64::from(group.segments()) * group.geo.slot_bytes();
            return Err(Error::invalid(format!(
                "{} is too small: it needs at least {need} bytes",
                new.display()
            )));
        }
        // A device that held another pool must not look like one.
        open::erase_uberblocks(&*dev)?;
        let guid: u128 = rand::random();
        let entry = crate::format::label::DeviceLayout {
            guid,
            path: dev.describe(),
            segments,
        };
        let old_desc = group.members[m].dev().describe();
        group.members[m].swap(
            vdev::MemberDev { dev, guid },
            vdev::MemberState::Resilvering,
        );
        // The layout names the new device at once: it is RESILVERING, so
        // every checkpoint lists it among the members whose data may be
        // stale, and an import before the resilver completes resilvers it
        // again (from the start) instead of reading it.
        {
            let mut l = sh.vdevs.layout.lock();
            l.0.groups[g].devices[m] = entry.clone();
            l.1 += 1;
        }
        open::write_labels(&sh.vdevs, sh.guid, sh.created)?;
        // Every write issued before the swap is on the devices (and so in
        // what the resilver copies) once this returns.
        maint::flush_now(sh)?;
        tracing::info!(pool = %sh.name, old = %old_desc, new = %new.display(), "replacing device; resilvering");
        let h = scrub::start_resilver(sh, slot, g, m, entry)?;
        self.threads.lock().push(h);
        Ok(())
    }

    /// Add a group of devices while the pool serves (`zpool add`); its
    /// index. See [`grow`] for the order that keeps it crash-safe. A group
    /// with less redundancy than the pool's other groups needs `force`.
    pub fn add_group(
        &self,
        kind: GroupKind,
        devices: Vec<Arc<dyn Device>>,
        force: bool,
    ) -> Result<usize> {
        let _admin = self.admin.lock();
        grow::add_group(&self.sh, kind, devices, force)
    }

    /// [`Pool::add_group`] on files or block devices, in `zpool add` form
    /// (`mirror A B`, `parity1 A B C`, or one plain path); missing files
    /// are created sparse at `size` bytes (default: the size of the
    /// pool's first device).
    pub fn add_on_paths(&self, spec: &[String], size: Option<u64>, force: bool) -> Result<usize> {
        let mut layout = parse_layout(spec)?;
        if layout.len() != 1 {
            return Err(Error::invalid(
                "add one group at a time: one device, or a keyword (mirror, parity1, parity2) and its devices",
            ));
        }
        let (kind, paths) = layout.remove(0);
        let size = size.unwrap_or_else(|| {
            self.sh
                .vdevs
                .groups
                .get(0)
                .and_then(|g| g.members.first())
                .map_or(0, |m| m.dev().len())
        });
        let mut devs: Vec<Arc<dyn Device>> = Vec::new();
        let mut created = Vec::new();
        let mut opened = || -> Result<()> {
            for p in &paths {
                let p = PathBuf::from(p);
                let existed = p.exists();
                devs.push(Arc::new(FileDevice::create_sparse(&p, size)?));
                if !existed {
                    created.push(p);
                }
            }
            Ok(())
        };
        let r = opened().and_then(|()| self.add_group(kind, devs, force));
        if r.is_err() {
            for c in &created {
                let _ = std::fs::remove_file(c);
            }
        }
        r
    }

    /// Take in the space of devices that grew (a file made longer, a
    /// block device resized): every group whose members all grew, or
    /// only the group of device `only`. What grew (empty: nothing did).
    pub fn expand(&self, only: Option<&str>) -> Result<Vec<Expanded>> {
        let _admin = self.admin.lock();
        let group = only.map(|d| self.find_member(d)).transpose()?;
        grow::expand(&self.sh, group.map(|(g, _)| g))
    }

    /// Resilver members found stale at import, one after the other.
    pub(crate) fn resilver_stale(
        &self,
        members: Vec<(usize, usize)>,
        then_scrub: Option<crate::map::Key>,
    ) -> Result<()> {
        let jobs = members
            .into_iter()
            .map(|(g, m)| {
                let l = self.sh.vdevs.layout.lock();
                (g, m, l.0.groups[g].devices[m].clone())
            })
            .collect();
        let h = scrub::start_resilvers(&self.sh, jobs, then_scrub)?;
        self.threads.lock().push(h);
        Ok(())
    }

    /// Continue the scrub a restart interrupted.
    pub(crate) fn resume_scrub(&self, from: crate::map::Key) -> Result<()> {
        let h = scrub::resume_scrub(&self.sh, from)?;
        self.threads.lock().push(h);
        Ok(())
    }

    /// Flush the memtable and run pending GC and compaction now (for tests
    /// and `pool status` precision); waits until done.
    pub fn sync_maintenance(&self) -> Result<()> {
        maint::run_all(&self.sh, true)
    }

    /// Run the cleaner on up to `max` segments now (tests, benchmarks).
    pub fn clean_now(&self, max: usize) -> Result<u64> {
        maint::clean(&self.sh, max, 1.0)
    }

    /// Where the record holding block `lba` of volume `vol` is stored: the
    /// byte offset on its (first) device and the stored length. For tests
    /// and debugging tools.
    pub fn debug_record_location(&self, vol: &str, lba: u64) -> Result<(u64, u64)> {
        let cat = self.sh.catalog();
        let chain = cat.head_chain(cat.volume_by_name(vol)?.id)?;
        let sh = &self.sh;
        let pieces = crate::chunk::resolve(&chain, lba, 1, |l, f, t| {
            Ok(sh
                .map
                .scan(map_key(l, f), map_key(l, t), usize::MAX)?
                .entries)
        })?;
        match pieces.first().map(|p| &p.kind) {
            Some(crate::chunk::PieceKind::Data(d)) => Ok((
                self.sh
                    .vdevs
                    .device_offset(d.paddr.seg, u64::from(d.paddr.offset)),
                u64::from(d.stored_len),
            )),
            _ => Err(Error::not_found(format!(
                "block {lba} of {vol} holds no data"
            ))),
        }
    }

    /// One line per segment (state, live KiB, written KiB), for debugging.
    pub fn debug_segments(&self) -> String {
        let segs = self.sh.segs.lock();
        segs.iter()
            .map(|(id, s)| {
                format!(
                    "{id:?}:{:?}/{}/{}{}",
                    s.state,
                    s.live >> 10,
                    s.written >> 10,
                    if segs.is_open(id) { "*" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The engine counters.
    pub fn stats(&self) -> &Stats {
        &self.sh.stats
    }

    /// Close: flush everything so the next open needs no replay. Further
    /// calls on this pool fail with `Shutdown`.
    pub fn close(&self) -> Result<()> {
        self.shutdown(true)
    }

    /// Stop without the final flush (as close to a crash as a live process
    /// gets: unflushed writes stay wherever the devices have them).
    pub fn abandon(self) {
        let _ = self.shutdown(false);
    }

    fn shutdown(&self, clean: bool) -> Result<()> {
        if self.sh.closing.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let mut result = Ok(());
        if clean && self.sh.poisoned.lock().is_none() {
            result = maint::run_all(&self.sh, false);
            let (tx, rx) = futures::channel::oneshot::channel();
            if self
                .sh
                .maint_tx
                .send_blocking(MaintOp::Shutdown(tx))
                .is_ok()
            {
                if let Ok(r) = futures::executor::block_on(rx) {
                    result = result.and(r);
                }
            }
        }
        self.sh.data_tx.close();
        self.sh.maint_tx.close();
        self.sh.wake_maintenance();
        if let Some(done) = self.writer_done.lock().take() {
            // Returns once the writer dropped its end (it has finished).
            let _ = done.recv();
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        result
    }

    /// Destroy the pool: close it and erase its labels so it can no longer be imported.
    pub fn destroy(&self) -> Result<()> {
        let vdevs = self.sh.vdevs.clone();
        self.shutdown(false)?;
        open::wipe_labels(&vdevs)
    }

    /// True once the pool was closed or destroyed.
    pub fn is_closed(&self) -> bool {
        self.sh.closing.load(Ordering::SeqCst)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if edgevol_io::current().is_some() && self.sh.cfg.spawner.is_some() {
            // On a data-plane thread the writer may be a task of this very
            // thread: waiting for it here would wait forever. Close from a
            // helper thread instead.
            let sh = self.sh.clone();
            let threads = std::mem::take(&mut *self.threads.lock());
            let done = self.writer_done.lock().take();
            let _ = std::thread::Builder::new()
                .name("ev-close".into())
                .spawn(move || {
                    let p = Pool {
                        sh,
                        threads: Mutex::new(threads),
                        admin: Mutex::new(()),
                        writer_done: Mutex::new(done),
                    };
                    let _ = p.shutdown(true);
                });
            return;
        }
        let _ = self.shutdown(true);
    }
}
