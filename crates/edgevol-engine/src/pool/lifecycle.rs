//! A pool's life: creating it on devices or paths, importing it, the
//! handle's identity, starting its threads (the writer, maintenance,
//! health probe), and closing, abandoning or destroying it.
//!
//! Keeps invariant 1 (acknowledged writes survive) by closing with a final
//! flush and waiting for the writer to end before the handle goes, so the
//! next import needs no replay; and invariant 7 (clear errors, keep
//! serving) by leaving out devices that cannot be opened (the pool comes
//! up DEGRADED if its redundancy covers them), undoing files a failed
//! create made, and failing calls on a closed pool with `Shutdown`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;

use super::writer::{DataOp, MaintOp, Writer};
use super::{maint, open, parse_layout, CreateOptions, Pool, PoolConfig, Shared};
use crate::device::{Device, FileDevice};
use crate::error::{Error, ErrorKind, Result};
use crate::format::label::GroupKind;

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

    /// Stop the pool once (later calls return at once): with `clean`, run
    /// maintenance and a final checkpoint first; then end the writer and
    /// join every thread.
    fn shutdown(&self, clean: bool) -> Result<()> {
        if self.sh.closing.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let mut result = Ok(());
        if clean && self.sh.vdevs.poisoned().is_none() {
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
        super::settler::wake(&self.sh);
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

pub(super) fn start(
    sh: Arc<Shared>,
    w: Writer,
    data_rx: async_channel::Receiver<DataOp>,
    maint_rx: async_channel::Receiver<MaintOp>,
) -> Pool {
    let mut threads = Vec::new();
    let name = sh.name.clone();
    // Dropped when the writer's loop ends: `shutdown` waits on it.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    match sh.cfg.spawner.clone() {
        Some(spawner) => (spawner.0)(Box::new(move || {
            Box::pin(async move {
                w.run(data_rx, maint_rx).await;
                drop(done_tx);
            })
        })),
        None => match std::thread::Builder::new()
            .name(format!("ev-writer-{name}"))
            .spawn(move || {
                futures::executor::block_on(w.run(data_rx, maint_rx));
                drop(done_tx);
            }) {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!(error = %e, "cannot start the writer thread"),
        },
    }
    // A pool thread running `body`, named `ev-{kind}-{pool}`.
    let mut spawn = |kind: &str, what: &str, body: fn(Arc<Shared>)| {
        let s2 = sh.clone();
        match std::thread::Builder::new()
            .name(format!("ev-{kind}-{name}"))
            .spawn(move || body(s2))
        {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!(error = %e, "cannot start the {what} thread"),
        }
    };
    if sh.cfg.settler_thread {
        spawn("settle", "settler", super::settler::run);
    }
    if sh.cfg.background {
        spawn("maint", "maintenance", maint::run);
        if !sh.cfg.health_interval.is_zero() {
            spawn("health", "health probe", super::health::run);
        }
    }
    Pool::from_shared(sh, threads, done_rx)
}
