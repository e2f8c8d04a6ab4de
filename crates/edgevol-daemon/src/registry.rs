//! The pools a daemon serves, and which exports have clients attached.
//!
//! The list of pools (name and device paths) is kept in `DIR/pools.json`,
//! written atomically; on start every pool in it is imported (recovering
//! after a crash by itself).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgevol_engine::{CreateOptions, Error, ErrorKind, Pool, PoolConfig, Result};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::foreign;

#[derive(Debug, Default, Serialize, Deserialize)]
struct PoolsFile {
    pools: Vec<PoolEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PoolEntry {
    name: String,
    devices: Vec<String>,
}

/// A device list in `zpool create` form (plain paths and group keywords,
/// `mirror a b parity1 c d e`) with every path made absolute, in the
/// engine's canonical keywords; and the paths alone.
fn absolute_spec(devices: &[String]) -> Result<(Vec<String>, Vec<PathBuf>)> {
    use edgevol_engine::format::label::GroupKind;
    let mut spec = Vec::new();
    let mut paths = Vec::new();
    for (kind, devs) in edgevol_engine::parse_layout(devices)? {
        match kind {
            GroupKind::Single => {}
            GroupKind::Mirror => spec.push("mirror".into()),
            GroupKind::Parity(p) => spec.push(format!("parity{p}")),
        }
        for d in devs {
            let p = absolute(Path::new(&d));
            spec.push(p.display().to_string());
            paths.push(p);
        }
    }
    Ok((spec, paths))
}

/// Pools and attachments.
pub struct Registry {
    dir: PathBuf,
    cfg: PoolConfig,
    pools: RwLock<BTreeMap<String, Arc<Pool>>>,
    /// Pools listed in pools.json that failed to import, with the reason.
    failed: RwLock<BTreeMap<String, (Vec<String>, String)>>,
    /// Clients attached: (export, transport) -> connections.
    attached: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Serialises pool creation/destruction and pools.json updates.
    admin: Mutex<()>,
    /// SMART reports of the pools' block devices.
    smart: crate::smart::SmartCache,
}

impl Registry {
    /// Open the registry in `dir`, importing every recorded pool.
    pub fn open(dir: &Path, cfg: PoolConfig) -> Result<Registry> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
        let reg = Registry {
            dir: dir.to_path_buf(),
            cfg,
            pools: RwLock::new(BTreeMap::new()),
            failed: RwLock::new(BTreeMap::new()),
            attached: Mutex::new(BTreeMap::new()),
            admin: Mutex::new(()),
            smart: crate::smart::SmartCache::default(),
        };
        let file = reg.load()?;
        for e in file.pools {
            let paths: Vec<PathBuf> = e.devices.iter().map(PathBuf::from).collect();
            match Pool::open_paths(&paths, reg.cfg.clone()) {
                Ok(p) if p.name() == e.name => {
                    tracing::info!(pool = %e.name, "imported pool");
                    // Keys kept in files or given by a command come back by
                    // themselves; prompted ones wait for `volume load-key`.
                    p.load_keys_from_locations();
                    reg.pools.write().insert(e.name.clone(), Arc::new(p));
                }
                Ok(p) => {
                    let msg = format!("devices hold pool {:?}, expected {:?}", p.name(), e.name);
                    tracing::error!(pool = %e.name, "{msg}");
                    reg.failed
                        .write()
                        .insert(e.name.clone(), (e.devices.clone(), msg));
                }
                Err(err) => {
                    tracing::error!(pool = %e.name, error = %err, "cannot import pool");
                    reg.failed
                        .write()
                        .insert(e.name.clone(), (e.devices.clone(), err.to_string()));
                }
            }
        }
        Ok(reg)
    }

    fn pools_file(&self) -> PathBuf {
        self.dir.join("pools.json")
    }

    fn load(&self) -> Result<PoolsFile> {
        let p = self.pools_file();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("{} is not valid: {e}", p.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PoolsFile::default()),
            Err(e) => Err(Error::new(
                ErrorKind::Io,
                format!("cannot read {}: {e}", p.display()),
            )),
        }
    }

    fn save(&self) -> Result<()> {
        self.save_with(None)
    }

    /// Save pools.json; `with`: (pool, devices) to record for that pool
    /// instead of the devices it has now.
    fn save_with(&self, with: Option<(&str, &[String])>) -> Result<()> {
        let mut file = PoolsFile::default();
        for (n, p) in self.pools.read().iter() {
            file.pools.push(PoolEntry {
                name: n.clone(),
                devices: match with {
                    Some((name, devices)) if name == n => devices.to_vec(),
                    _ => p.paths(),
                },
            });
        }
        for (name, (devices, _)) in self.failed.read().iter() {
            file.pools.push(PoolEntry {
                name: name.clone(),
                devices: devices.clone(),
            });
        }
        let io =
            |e: std::io::Error| Error::new(ErrorKind::Io, format!("cannot write pools.json: {e}"));
        let tmp = self.dir.join("pools.json.tmp");
        let body = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&body).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, self.pools_file()).map_err(io)?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// A pool's status with the SMART health of its block devices.
    pub fn pool_status(&self, pool: &str) -> Result<edgevol_api::PoolStatus> {
        let mut st = self.pool(pool)?.status().into();
        self.smart.annotate(&mut st);
        Ok(st)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replace a device of a pool and record the new device list. The new
    /// device is checked first ([`foreign::check_claim`]): one in use is
    /// refused, one holding foreign data unless `force`; a device of this
    /// pool left over from an interrupted replace may be used again.
    pub fn replace_device(&self, pool: &str, old: &str, new: &str, force: bool) -> Result<()> {
        let _g = self.admin.lock();
        let p = self.pool(pool)?;
        let new = absolute(Path::new(new));
        foreign::check_claim(&new, force, Some(p.guid()))?;
        p.replace(old, &new)?;
        self.save()
    }

    /// Add a group of devices to a pool and record the new device list.
    /// `force` allows both a group with less redundancy than the pool's
    /// and devices holding foreign data ([`foreign::check_claim`]; a device
    /// in use is refused regardless, one of this pool left over from an
    /// add a crash undid may be used again).
    /// pools.json names the new devices before their labels are written:
    /// a crash in between leaves devices without a label, which import
    /// leaves out; the opposite order could leave labels naming devices
    /// the restarted daemon would not open.
    pub fn add_devices(
        &self,
        pool: &str,
        devices: &[String],
        size: Option<u64>,
        force: bool,
    ) -> Result<usize> {
        let _g = self.admin.lock();
        let p = self.pool(pool)?;
        let (spec, paths) = absolute_spec(devices)?;
        let before = p.paths();
        for path in &paths {
            let name = path.display().to_string();
            if before.contains(&name) {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("{name} is already in pool {pool}"),
                ));
            }
        }
        for path in &paths {
            foreign::check_claim(path, force, Some(p.guid()))?;
        }
        let mut with_new = before;
        with_new.extend(paths.iter().map(|p| p.display().to_string()));
        self.save_with(Some((pool, &with_new)))?;
        match p.add_on_paths(&spec, size, force) {
            Ok(g) => {
                self.save()?;
                Ok(g)
            }
            Err(e) => {
                let _ = self.save();
                Err(e)
            }
        }
    }

    /// Create a pool and record it. Every device is checked before any is
    /// written ([`foreign::check_claim`]): one in use is refused, one
    /// holding foreign data (another pool's label included) unless `force`.
    pub fn create_pool(
        &self,
        name: &str,
        devices: &[String],
        size: Option<u64>,
        segment_size: Option<u64>,
        force: bool,
    ) -> Result<Arc<Pool>> {
        let _g = self.admin.lock();
        if self.pools.read().contains_key(name) || self.failed.read().contains_key(name) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("pool {name:?} already exists"),
            ));
        }
        if devices.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "give at least one file or device",
            ));
        }
        let (spec, paths) = absolute_spec(devices)?;
        for p in &paths {
            if let Some(parent) = p.parent() {
                if !parent.as_os_str().is_empty() && !parent.exists() {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        format!("directory {} does not exist", parent.display()),
                    ));
                }
            }
        }
        for p in &paths {
            foreign::check_claim(p, force, None)?;
        }
        let pool = Pool::create_on_paths(
            name,
            &spec,
            size,
            &CreateOptions { segment_size },
            self.cfg.clone(),
        )?;
        let pool = Arc::new(pool);
        self.pools.write().insert(name.to_string(), pool.clone());
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "pool created but pools.json not updated");
            return Err(e);
        }
        Ok(pool)
    }

    /// Destroy a pool: refused while clients are attached unless `force`.
    pub fn destroy_pool(&self, name: &str, force: bool) -> Result<()> {
        let _g = self.admin.lock();
        if self.failed.write().remove(name).is_some() {
            return self.save();
        }
        let pool = self.pool(name)?;
        let users = self.attached_under(&format!("{name}/"));
        if users > 0 && !force {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("pool {name:?} has {users} attached clients; use --force"),
            ));
        }
        self.pools.write().remove(name);
        pool.destroy()?;
        self.save()
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Result<Arc<Pool>> {
        if let Some(p) = self.pools.read().get(name) {
            return Ok(p.clone());
        }
        if let Some((_, why)) = self.failed.read().get(name) {
            return Err(Error::new(
                ErrorKind::Io,
                format!("pool {name:?} could not be imported: {why}"),
            ));
        }
        Err(Error::new(
            ErrorKind::NotFound,
            format!("no pool named {name:?}"),
        ))
    }

    /// All imported pools.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools.read().values().cloned().collect()
    }

    /// Pools that failed to import: (name, reason).
    pub fn failed(&self) -> Vec<(String, String)> {
        self.failed
            .read()
            .iter()
            .map(|(k, (_, why))| (k.clone(), why.clone()))
            .collect()
    }

    /// Count an NBD client attaching to `export`.
    pub fn attach(&self, export: &str) {
        self.attach_via(export, "nbd");
    }

    /// Count an NBD client detaching.
    pub fn detach(&self, export: &str) {
        self.detach_via(export, "nbd");
    }

    /// Count a client of `transport` (`nbd`, `vhost-user`) attaching.
    pub fn attach_via(&self, export: &str, transport: &'static str) {
        *self
            .attached
            .lock()
            .entry((export.to_string(), transport))
            .or_insert(0) += 1;
    }

    /// Count a client of `transport` detaching.
    pub fn detach_via(&self, export: &str, transport: &'static str) {
        let mut g = self.attached.lock();
        let key = (export.to_string(), transport);
        if let Some(n) = g.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                g.remove(&key);
            }
        }
    }

    /// Clients attached to `pool/vol` and its snapshots.
    pub fn attached_to_volume(&self, pool: &str, vol: &str) -> u64 {
        let exact = format!("{pool}/{vol}");
        let snaps = format!("{pool}/{vol}@");
        self.attached
            .lock()
            .iter()
            .filter(|((k, _), _)| *k == exact || k.starts_with(&snaps))
            .map(|(_, n)| *n)
            .sum()
    }

    fn attached_under(&self, prefix: &str) -> u64 {
        self.attached
            .lock()
            .iter()
            .filter(|((k, _), _)| k.starts_with(prefix))
            .map(|(_, n)| *n)
            .sum()
    }

    /// Every attachment: (export, transport, connections).
    pub fn attachments(&self) -> Vec<(String, &'static str, u64)> {
        self.attached
            .lock()
            .iter()
            .map(|((k, t), v)| (k.clone(), *t, *v))
            .collect()
    }

    /// Close every pool cleanly.
    pub fn shutdown(&self) {
        for (name, p) in std::mem::take(&mut *self.pools.write()) {
            if let Err(e) = p.close() {
                tracing::error!(pool = %name, error = %e, "closing pool failed");
            } else {
                tracing::info!(pool = %name, "closed pool");
            }
        }
    }
}

/// `p` made absolute against the current directory (without resolving links).
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}
