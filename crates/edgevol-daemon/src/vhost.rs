//! vhost-user-blk exports over engine volumes: the thin adapter between
//! `edgevol-vhost`'s `BlockDevice` and the engine's `Volume`, and the set
//! of exports the daemon serves (added by the API or at start, recorded in
//! `DIR/exports.json` so a restarted daemon listens again on the same
//! sockets and a waiting QEMU reconnects).
//!
//! Requests run on the io_uring reactors: each queue's batches go to one
//! reactor (round robin over exports and queues), like NBD connections.
//! Engine errors map to virtio status as in `export.rs` for NBD, but
//! virtio-blk only has IOERR and UNSUPP:
//!
//! | engine | virtio-blk |
//! |---|---|
//! | Unsupported | VIRTIO_BLK_S_UNSUPP |
//! | everything else (InvalidArgument, NoSpace, ReadOnly, Io, Corrupt, ...) | VIRTIO_BLK_S_IOERR |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use edgevol_api::{AddVhostUserExport, VhostUserExportInfo};
use edgevol_engine::{Error, ErrorKind, ReadSeg, Result, Volume};
use edgevol_vhost::{
    BlockDevice, Chunk, DevError, DeviceFactory, ExportConfig, Opened, ServerHandle, Spawner, Task,
    VhostServer, WorkerMode,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::reactor::Reactors;
use crate::registry::{absolute, Registry};

/// The transport name in attachments.
pub const TRANSPORT: &str = "vhost-user";

fn dev_error(e: Error) -> DevError {
    match e.kind() {
        ErrorKind::Unsupported => DevError::unsupported(e.to_string()),
        _ => DevError::io(e.to_string()),
    }
}

/// One frontend's view of a volume or snapshot; dropping it ends the
/// attachment.
pub struct VolumeDevice {
    vol: Volume,
    name: String,
    registry: Arc<Registry>,
}

impl Drop for VolumeDevice {
    fn drop(&mut self) {
        self.registry.detach_via(&self.name, TRANSPORT);
    }
}

impl BlockDevice for VolumeDevice {
    fn size(&self) -> u64 {
        self.vol.size()
    }

    async fn read(&self, offset: u64, len: u64) -> std::result::Result<Vec<Chunk>, DevError> {
        let segs = self.vol.read(offset, len).await.map_err(dev_error)?;
        Ok(segs
            .into_iter()
            .map(|s| match s {
                ReadSeg::Data(b) => Chunk::Data(b),
                ReadSeg::Zero(n) => Chunk::Zero(n),
            })
            .collect())
    }

    async fn write(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> std::result::Result<(), DevError> {
        self.vol.write(offset, data, fua).await.map_err(dev_error)
    }

    async fn flush(&self) -> std::result::Result<(), DevError> {
        self.vol.flush().await.map_err(dev_error)
    }

    async fn discard(&self, offset: u64, len: u64, fua: bool) -> std::result::Result<(), DevError> {
        self.vol.trim(offset, len, fua).await.map_err(dev_error)
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
        fua: bool,
    ) -> std::result::Result<(), DevError> {
        self.vol
            .write_zeroes(offset, len, !unmap, fua)
            .await
            .map_err(dev_error)
    }
}

/// The guest-visible serial of `POOL/VOL[@SNAP]` (20 bytes at most, the
/// virtio-blk limit): the volume's guid in hex; for a snapshot 12 hex
/// digits of the guid, `@`, and a hash of the snapshot name.
pub fn serial(guid: u128, snapshot: Option<&str>) -> String {
    let hex = format!("{guid:032x}");
    match snapshot {
        None => hex.chars().take(20).collect(),
        Some(s) => {
            // FNV-1a: stable, no dependency
            let mut h: u32 = 0x811c_9dc5;
            for b in s.bytes() {
                h ^= u32::from(b);
                h = h.wrapping_mul(0x0100_0193);
            }
            let head: String = hex.chars().take(12).collect();
            format!("{head}@{:07x}", h >> 4)
        }
    }
}

/// Opens `POOL/VOL[@SNAP]` for each new frontend.
struct VolumeFactory {
    registry: Arc<Registry>,
    spec: String,
}

fn open_volume(registry: &Registry, spec: &str) -> Result<(Volume, String)> {
    let Some((pool, rest)) = spec.split_once('/') else {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("{spec:?}: name a volume as POOL/VOL or a snapshot as POOL/VOL@SNAP"),
        ));
    };
    let pool = registry.pool(pool)?;
    let vol = pool.open_volume(rest)?;
    let (base, snap) = edgevol_engine::pool::split_snapshot(rest);
    if !pool.key_available(base).unwrap_or(false) {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "volume {}/{base} is encrypted and its key is not loaded: run `edgevol volume load-key {}/{base}`",
                pool.name(),
                pool.name()
            ),
        ));
    }
    let serial = serial(vol.guid(), snap);
    Ok((vol, serial))
}

impl DeviceFactory for VolumeFactory {
    type Device = VolumeDevice;

    fn open(&self) -> std::result::Result<Opened<VolumeDevice>, String> {
        let (vol, serial) = open_volume(&self.registry, &self.spec).map_err(|e| e.to_string())?;
        self.registry.attach_via(&self.spec, TRANSPORT);
        let read_only = vol.read_only();
        Ok(Opened {
            device: Arc::new(VolumeDevice {
                vol,
                name: self.spec.clone(),
                registry: Arc::clone(&self.registry),
            }),
            read_only,
            serial,
        })
    }
}

/// Runs an export's batches on the reactors: queue `q` on reactor
/// `base + q`.
struct ReactorSpawner {
    reactors: Arc<Reactors>,
    base: usize,
}

impl Spawner for ReactorSpawner {
    fn spawn(&self, queue: usize, task: Task) {
        self.reactors.spawn_on(self.base.wrapping_add(queue), task);
    }
}

/// An export as recorded in `exports.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VhostSpec {
    /// `POOL/VOL` or `POOL/VOL@SNAP`.
    pub volume: String,
    /// Absolute socket path.
    pub socket: PathBuf,
    /// Virtqueues.
    pub queues: u16,
    /// Read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Several frontends at once.
    #[serde(default)]
    pub shared: bool,
    /// `per-queue` or `shared`.
    #[serde(default = "default_workers")]
    pub workers: String,
}

fn default_workers() -> String {
    "per-queue".into()
}

fn worker_mode(s: &str) -> Result<WorkerMode> {
    match s {
        "per-queue" => Ok(WorkerMode::PerQueue),
        "shared" => Ok(WorkerMode::Shared),
        other => Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("workers {other:?}: per-queue or shared"),
        )),
    }
}

impl VhostSpec {
    /// Check and normalise an API request.
    pub fn from_request(r: &AddVhostUserExport) -> Result<VhostSpec> {
        let queues = r.queues.unwrap_or(1);
        if !(1..=64).contains(&queues) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{queues} queues: 1 to 64 are possible"),
            ));
        }
        if r.socket.is_empty() {
            return Err(Error::new(ErrorKind::InvalidArgument, "give a socket path"));
        }
        let workers = r.workers.clone().unwrap_or_else(default_workers);
        worker_mode(&workers)?;
        Ok(VhostSpec {
            volume: r.volume.clone(),
            socket: absolute(Path::new(&r.socket)),
            queues,
            read_only: r.read_only,
            shared: r.shared,
            workers,
        })
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ExportsFile {
    vhost_user: Vec<VhostSpec>,
}

struct Entry {
    spec: VhostSpec,
    persistent: bool,
    serial: Option<String>,
    server: Option<ServerHandle>,
    error: Option<String>,
}

/// The daemon's vhost-user-blk exports.
pub struct VhostExports {
    registry: Arc<Registry>,
    reactors: Arc<Reactors>,
    file: PathBuf,
    /// By socket path.
    exports: Mutex<BTreeMap<PathBuf, Entry>>,
    /// Serialises add/remove and exports.json updates.
    admin: Mutex<()>,
    next_reactor: AtomicUsize,
}

impl VhostExports {
    /// No exports yet; `dir` holds `exports.json`.
    pub fn new(registry: Arc<Registry>, reactors: Arc<Reactors>, dir: &Path) -> VhostExports {
        VhostExports {
            registry,
            reactors,
            file: dir.join("exports.json"),
            exports: Mutex::new(BTreeMap::new()),
            admin: Mutex::new(()),
            next_reactor: AtomicUsize::new(0),
        }
    }

    /// Start the exports recorded in `exports.json`. One that cannot start
    /// (its volume is gone, its socket taken) stays listed in state
    /// `error`, and recorded, so that nothing is forgotten silently.
    pub fn load(&self) -> Result<()> {
        let _g = self.admin.lock();
        let file: ExportsFile = match std::fs::read(&self.file) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("{} is not valid: {e}", self.file.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ExportsFile::default(),
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("cannot read {}: {e}", self.file.display()),
                ))
            }
        };
        for spec in file.vhost_user {
            let socket = spec.socket.clone();
            let entry = match self.start(&spec) {
                Ok((server, serial)) => Entry {
                    spec,
                    persistent: true,
                    serial: Some(serial),
                    server: Some(server),
                    error: None,
                },
                Err(e) => {
                    tracing::error!(volume = %spec.volume, socket = %socket.display(), error = %e, "cannot start a recorded vhost-user export");
                    Entry {
                        spec,
                        persistent: true,
                        serial: None,
                        server: None,
                        error: Some(e.to_string()),
                    }
                }
            };
            self.exports.lock().insert(socket, entry);
        }
        Ok(())
    }

    fn save(&self) -> Result<()> {
        let file = ExportsFile {
            vhost_user: self
                .exports
                .lock()
                .values()
                .filter(|e| e.persistent)
                .map(|e| e.spec.clone())
                .collect(),
        };
        let io = |e: std::io::Error| {
            Error::new(ErrorKind::Io, format!("cannot write exports.json: {e}"))
        };
        let body = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))?;
        let tmp = self.file.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&body).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.file).map_err(io)?;
        if let Some(d) = self.file.parent().and_then(|d| std::fs::File::open(d).ok()) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn start(&self, spec: &VhostSpec) -> Result<(ServerHandle, String)> {
        // Fail now, not at the first connection, if the volume is missing.
        let (_, serial) = open_volume(&self.registry, &spec.volume)?;
        let mut cfg = ExportConfig::new(&spec.volume, &spec.socket);
        cfg.queues = spec.queues;
        cfg.read_only = spec.read_only;
        cfg.max_connections = if spec.shared { usize::MAX } else { 1 };
        cfg.worker_mode = worker_mode(&spec.workers)?;
        let base = self
            .next_reactor
            .fetch_add(usize::from(spec.queues), Ordering::Relaxed);
        let spawner = Arc::new(ReactorSpawner {
            reactors: Arc::clone(&self.reactors),
            base,
        });
        let factory = Arc::new(VolumeFactory {
            registry: Arc::clone(&self.registry),
            spec: spec.volume.clone(),
        });
        let server = VhostServer::start(cfg, factory, spawner).map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::AddrInUse {
                ErrorKind::Busy
            } else {
                ErrorKind::Io
            };
            Error::new(
                kind,
                format!("vhost-user socket {}: {e}", spec.socket.display()),
            )
        })?;
        Ok((server, serial))
    }

    /// Export a volume; recorded in `exports.json` if `persistent`.
    pub fn add(&self, spec: VhostSpec, persistent: bool) -> Result<VhostUserExportInfo> {
        let _g = self.admin.lock();
        {
            let ex = self.exports.lock();
            if let Some(e) = ex.get(&spec.socket) {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!(
                        "{} already exports {}",
                        spec.socket.display(),
                        e.spec.volume
                    ),
                ));
            }
            if let Some(e) = ex.values().find(|e| e.spec.volume == spec.volume) {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!(
                        "{} is already exported on {} (one socket per volume; use --shared to let several VMs attach)",
                        spec.volume,
                        e.spec.socket.display()
                    ),
                ));
            }
        }
        let (server, serial) = self.start(&spec)?;
        let socket = spec.socket.clone();
        self.exports.lock().insert(
            socket.clone(),
            Entry {
                spec,
                persistent,
                serial: Some(serial),
                server: Some(server),
                error: None,
            },
        );
        if persistent {
            if let Err(e) = self.save() {
                if let Some(e2) = self.exports.lock().remove(&socket) {
                    drop(e2); // stops it
                }
                return Err(e);
            }
        }
        self.info(&socket)
            .ok_or_else(|| Error::new(ErrorKind::Io, "export vanished"))
    }

    fn info_of(e: &Entry) -> VhostUserExportInfo {
        let connections = e.server.as_ref().map_or(0, |s| s.connections() as u64);
        let state = if e.server.is_none() {
            "error"
        } else if connections > 0 {
            "attached"
        } else {
            "listening"
        };
        let writeback = e.server.as_ref().is_none_or(|s| s.writeback());
        VhostUserExportInfo {
            volume: e.spec.volume.clone(),
            socket: e.spec.socket.display().to_string(),
            queues: e.spec.queues,
            read_only: e.spec.read_only || e.spec.volume.contains('@'),
            shared: e.spec.shared,
            workers: e.spec.workers.clone(),
            persistent: e.persistent,
            state: state.into(),
            connections,
            serial: e.serial.clone(),
            write_cache: if writeback {
                "write-back"
            } else {
                "write-through"
            }
            .into(),
            error: e.error.clone(),
        }
    }

    fn info(&self, socket: &Path) -> Option<VhostUserExportInfo> {
        self.exports.lock().get(socket).map(Self::info_of)
    }

    /// Every export.
    pub fn list(&self) -> Vec<VhostUserExportInfo> {
        self.exports.lock().values().map(Self::info_of).collect()
    }

    /// Stop and forget the export on `socket` and those of `volume`;
    /// refused while a frontend is attached unless `force`. Blocks while
    /// running requests finish.
    pub fn remove(
        &self,
        socket: Option<&str>,
        volume: Option<&str>,
        force: bool,
    ) -> Result<Vec<VhostUserExportInfo>> {
        let _g = self.admin.lock();
        let socket = socket.map(|s| absolute(Path::new(s)));
        let keys: Vec<PathBuf> = self
            .exports
            .lock()
            .iter()
            .filter(|(k, e)| socket.as_ref() == Some(*k) || volume == Some(e.spec.volume.as_str()))
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            let what = volume
                .map(str::to_string)
                .or(socket.map(|s| s.display().to_string()))
                .unwrap_or_default();
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no vhost-user export on socket or of volume {what:?}"),
            ));
        }
        let mut removed = Vec::new();
        for k in &keys {
            let info = match self.info(k) {
                Some(i) => i,
                None => continue,
            };
            if info.connections > 0 && !force {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "{} on {} has {} attached frontend(s); stop the VM or use --force",
                        info.volume, info.socket, info.connections
                    ),
                ));
            }
            removed.push(info);
        }
        let mut stopped = Vec::new();
        for k in &keys {
            if let Some(e) = self.exports.lock().remove(k) {
                stopped.push(e);
            }
        }
        // Stop outside the map lock: it waits for running requests.
        for e in stopped {
            if let Some(s) = e.server {
                s.stop();
            }
        }
        self.save()?;
        Ok(removed)
    }

    /// Stop every export (daemon shutdown); exports.json is kept.
    pub fn shutdown(&self) {
        let all: Vec<Entry> = std::mem::take(&mut *self.exports.lock())
            .into_values()
            .collect();
        for e in all {
            if let Some(s) = e.server {
                s.stop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_fit_virtio_and_differ_per_snapshot() {
        let g = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
        assert_eq!(serial(g, None), "0123456789abcdef0011");
        let a = serial(g, Some("a"));
        let b = serial(g, Some("b"));
        assert_eq!(a.len(), 20);
        assert!(a.starts_with("0123456789ab@"));
        assert_ne!(a, b);
        assert_eq!(a, serial(g, Some("a")));
    }
}
