//! An `edgevol serve` started by the bench (this very executable), with its
//! own data directory, API socket and NBD Unix socket, driven through the
//! API client (`edgevol-api`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edgevol_api::{Client, CreatePool, CreateSnapshot, CreateVolume, PoolStatus, VolumeInfo};
use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::procs::Proc;

/// The pool every bench daemon uses.
pub const POOL: &str = "bench";

/// A running daemon.
pub struct Daemon {
    /// The server process (CPU and memory are sampled from it).
    pub proc: Proc,
    client: Client,
    rt: tokio::runtime::Runtime,
    nbd_sock: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Start `edgevol serve --data-dir DIR` and wait until its API answers.
    pub fn start(dir: &Path, log: &Path) -> Result<Daemon> {
        std::fs::create_dir_all(dir)?;
        let api = dir.join("api.sock");
        let nbd_sock = dir.join("nbd.sock");
        for s in [&api, &nbd_sock] {
            let _ = std::fs::remove_file(s);
        }
        let mut cmd = Command::new(server_exe()?);
        if let Ok(exe) = std::env::current_exe() {
            // Shown by ps instead of /proc/self/exe.
            std::os::unix::process::CommandExt::arg0(&mut cmd, exe);
        }
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .arg("--api-socket")
            .arg(&api)
            .args(["--nbd-listen", "none", "--nbd-socket"])
            .arg(&nbd_sock);
        let proc = Proc::spawn(cmd, log)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start an async runtime")?;
        let mut d = Daemon {
            proc,
            client: Client::new(&api),
            rt,
            nbd_sock,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(st) = d.proc.try_wait() {
                bail!("edgevol serve exited ({st}): {}", tail(&d.log));
            }
            if api.exists() && d.nbd_sock.exists() && d.pools().is_ok() {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!("edgevol serve not ready after 120 s: {}", tail(&d.log));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn call<T: DeserializeOwned>(
        &self,
        m: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        Ok(self.rt.block_on(self.client.call(m, path, body))?)
    }

    fn pools(&self) -> Result<serde_json::Value> {
        self.call(Method::GET, "/pools", None::<&()>)
    }

    /// Create pool [`POOL`] on a sparse file of `size` bytes.
    pub fn create_pool(&self, file: &Path, size: u64) -> Result<PoolStatus> {
        let body = CreatePool {
            name: POOL.into(),
            devices: vec![file.display().to_string()],
            size: Some(size),
            segment_size: None,
            properties: BTreeMap::new(),
            force: false,
        };
        self.call(Method::POST, "/pools", Some(&body))
            .with_context(|| format!("cannot create a pool of {size} bytes"))
    }

    /// [`Daemon::create_pool`] on a file written in full first (zeroes),
    /// as a block device is. A sparse file is not: the first `O_DIRECT`
    /// write to each of its holes allocates blocks, and io_uring hands such
    /// writes to a worker thread, one at a time per file (measured: up to
    /// 1.75x the IOPS of random 4 KiB writes on a written pool file). The
    /// anchors' raw images are written in full by the fill job before
    /// their measured jobs; the pool file, three times larger, was not.
    pub fn create_pool_written(&self, file: &Path, size: u64) -> Result<PoolStatus> {
        write_zeroes(file, size).with_context(|| format!("cannot write {}", file.display()))?;
        self.create_pool(file, size)
    }

    /// Destroy pool [`POOL`] (the file stays).
    pub fn destroy_pool(&self) -> Result<()> {
        let _: serde_json::Value = self.call(
            Method::DELETE,
            &format!("/pools/{POOL}?force=true"),
            None::<&()>,
        )?;
        Ok(())
    }

    /// `pool status` of [`POOL`].
    pub fn pool_status(&self) -> Result<PoolStatus> {
        self.call(Method::GET, &format!("/pools/{POOL}"), None::<&()>)
    }

    /// Create volume `POOL/name` with properties (`compression=lz4`, ...).
    pub fn create_volume(
        &self,
        name: &str,
        size: u64,
        props: &[(&str, &str)],
    ) -> Result<VolumeInfo> {
        let properties: BTreeMap<String, String> = props
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let body = CreateVolume {
            name: name.into(),
            size,
            properties,
            secret_hex: None,
        };
        self.call(Method::POST, &format!("/pools/{POOL}/volumes"), Some(&body))
    }

    /// `snapshot create POOL/vol@snap`.
    pub fn snapshot(&self, vol: &str, snap: &str) -> Result<()> {
        let body = CreateSnapshot { name: snap.into() };
        let _: serde_json::Value = self.call(
            Method::POST,
            &format!("/pools/{POOL}/volumes/{vol}/snapshots"),
            Some(&body),
        )?;
        Ok(())
    }

    /// Whether `POOL/vol@snap` exists.
    pub fn has_snapshot(&self, vol: &str, snap: &str) -> Result<bool> {
        let list: Vec<serde_json::Value> = self.call(
            Method::GET,
            &format!("/pools/{POOL}/volumes/{vol}/snapshots"),
            None::<&()>,
        )?;
        Ok(list.iter().any(|s| s["name"] == snap))
    }

    /// The NBD URI of `POOL/vol`.
    pub fn uri(&self, vol: &str) -> String {
        format!(
            "nbd+unix:///{POOL}/{vol}?socket={}",
            self.nbd_sock.display()
        )
    }

    /// Stop the daemon (SIGTERM; it flushes and exits).
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.proc.stop(Duration::from_secs(60))
    }
}

/// The executable to run as `edgevol serve`: this very program. Through
/// `/proc/self/exe` (which names the running image even after the file was
/// replaced, e.g. by a rebuild during a long benchmark), else `current_exe`.
pub fn server_exe() -> Result<PathBuf> {
    let proc_exe = PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe);
    }
    std::env::current_exe().context("cannot find the edgevol executable")
}

/// The last lines of a log, for error messages.
pub fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(6)..].join(" | ")
}

/// Create `file` and write `size` zero bytes into it, durably, with
/// direct I/O: through the page cache, the file's cached pages would make
/// every later `O_DIRECT` write of the daemon invalidate them first.
fn write_zeroes(file: &Path, size: u64) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const CHUNK: u64 = 8 << 20;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(file)?;
    let zeroes = edgevol_engine::buf::AlignedBuf::zeroed(CHUNK as usize);
    let whole = size / 4096 * 4096;
    let mut at = 0;
    while at < whole {
        let n = (whole - at).min(CHUNK) as usize;
        f.write_all_at(&zeroes.as_slice()[..n], at)?;
        at += n as u64;
    }
    f.set_len(size)?;
    f.sync_all()
}
