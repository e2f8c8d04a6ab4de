//! Real-guest tests: a Linux guest (Debian's kernel, its own virtio_pci and
//! virtio_blk drivers) boots under QEMU with TCG and runs fio and discard
//! checks on one virtio disk, served by a vhost-user-blk backend (edgevol's
//! export, or qemu-storage-daemon as the reference) or by QEMU's own block
//! layer.
//!
//! The work is done by the scripts in `tests/vm/` at the repository root
//! (see its README): [`ensure_initramfs`] runs `build-initramfs.sh` (cached),
//! [`boot`] runs `boot.py`, which writes a `summary.json` that is returned
//! here as a [`VmOutcome`]. [`QsdExport`] runs qemu-storage-daemon's
//! vhost-user-blk export over a raw file.
//!
//! Booting takes tens of seconds under TCG, so the tests that use this are
//! `#[ignore]`d unless `EDGEVOL_VM_TESTS=1` is set when they are built (see
//! `crates/edgevol/build.rs`), and they take [`exclusive`] so that only one
//! guest runs at a time.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::Value;

use super::{describe, die_with_parent, in_path, output_timeout, send_signal, wait_timeout};

/// The disk layout the harness's jobs use (tests/vm/jobs/verify.fio): the
/// disk must be at least [`MIN_DISK`] bytes.
pub const VERIFY_REGION: (u64, u64) = (0, 32 << 20);
pub const RANDRW_REGION: (u64, u64) = (64 << 20, 128 << 20);
pub const DISCARD_REGION: (u64, u64) = (160 << 20, 168 << 20);
pub const WRITE_ZEROES_REGION: (u64, u64) = (176 << 20, 184 << 20);
/// tests/vm/jobs/restart.fio (needs a disk of at least 208 MiB).
pub const RESTART_REGION: (u64, u64) = (192 << 20, 208 << 20);
pub const MIN_DISK: u64 = 192 << 20;

/// Whether the real-guest tests were asked for (`EDGEVOL_VM_TESTS=1`).
pub fn enabled() -> bool {
    std::env::var("EDGEVOL_VM_TESTS").as_deref() == Ok("1")
}

/// `tests/vm` at the repository root.
pub fn harness_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vm")
}

/// Held while a guest runs: see [`exclusive`].
pub struct OneGuest {
    _thread: MutexGuard<'static, ()>,
    _file: Option<File>,
}

/// Only one guest at a time: two TCG guests on a 2-core machine would
/// each take more than twice as long. Hold the guard for the whole test.
/// A mutex covers the tests of one binary; a lock on
/// `$EDGEVOL_VM_DIR/.guest.lock` covers test binaries run side by side
/// (cargo nextest runs each test in a process of its own).
pub fn exclusive() -> OneGuest {
    static LOCK: Mutex<()> = Mutex::new(());
    // A test that panicked while holding it leaves nothing to clean up.
    let thread = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = PathBuf::from(
        std::env::var_os("EDGEVOL_VM_DIR").unwrap_or_else(|| "/var/tmp/edgevol-vm".into()),
    );
    let file = std::fs::create_dir_all(&dir)
        .and_then(|_| File::create(dir.join(".guest.lock")))
        .and_then(|f| f.lock().map(|_| f))
        .map_err(|e| eprintln!("no cross-process guest lock in {}: {e}", dir.display()))
        .ok();
    OneGuest {
        _thread: thread,
        _file: file,
    }
}

// ----------------------------------------------------------------------
// The guest images

/// The guest kernel and initramfs that `build-initramfs.sh` made.
#[derive(Debug, Clone)]
pub struct VmImages {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub kernel_release: String,
}

/// Build (or find cached) the guest initramfs, installing missing Debian
/// packages (QEMU, kernel, busybox-static, ...) when running as root. Runs
/// the script once per test binary.
pub fn ensure_initramfs() -> anyhow::Result<VmImages> {
    static IMAGES: OnceLock<Result<VmImages, String>> = OnceLock::new();
    IMAGES
        .get_or_init(|| build_initramfs().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_initramfs() -> anyhow::Result<VmImages> {
    let script = harness_dir().join("build-initramfs.sh");
    let mut cmd = Command::new(&script);
    let out = output_timeout(&mut cmd, Duration::from_secs(900))
        .with_context(|| format!("{} did not finish within 15 minutes", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .with_context(|| format!("{} printed no {key}:\n{stdout}", script.display()))
    };
    let images = VmImages {
        kernel: value("EV_VM_KERNEL")?.into(),
        initramfs: value("EV_VM_INITRAMFS")?.into(),
        kernel_release: value("EV_VM_KVER")?,
    };
    for p in [&images.kernel, &images.initramfs] {
        if !p.is_file() {
            bail!("{} does not exist after the build", p.display());
        }
    }
    Ok(images)
}

// ----------------------------------------------------------------------
// Booting

/// Where the guest's disk comes from.
#[derive(Debug, Clone)]
pub enum Disk {
    /// A vhost-user-blk backend listening on this socket; with `reconnect`,
    /// QEMU reconnects when the backend goes away and comes back.
    VhostUser { socket: PathBuf, reconnect: bool },
    /// A raw image file served by QEMU's own block layer (the baseline).
    Image { path: PathBuf },
    /// An NBD export on a Unix socket through QEMU's NBD client and block
    /// layer (a virtio-blk-pci disk).
    Nbd { socket: PathBuf, export: String },
}

/// What to boot and run. Build with [`BootOptions::vhost_user`] or
/// [`BootOptions::image`] and the setters.
#[derive(Debug, Clone)]
pub struct BootOptions {
    pub disk: Disk,
    /// Results go here (serial.log, summary.json, fio JSON per job).
    pub out_dir: PathBuf,
    /// Job names: `verify`, `discard`, `randrw4k` (tests/vm/jobs), or the
    /// names of `job_files`.
    pub jobs: Vec<String>,
    /// Extra job files (NAME.fio or NAME.sh) shipped into the guest and run.
    pub job_files: Vec<PathBuf>,
    /// `verify` only re-reads and checks what an earlier boot wrote.
    pub verify_only: bool,
    /// Virtqueues of the disk; the guest gets this many vCPUs (virtio-blk
    /// uses at most one queue per vCPU).
    pub queues: u32,
    /// Limit for the whole boot (enforced by boot.py).
    pub timeout: Duration,
    /// Seconds of the time-based rate job.
    pub runtime_s: u32,
    /// Switch the disk's cache mode before the jobs ("write_back" or
    /// "write_through", through virtio_blk's `cache_type`, i.e. the
    /// device's `wce` config field); with write-back, fsync sends flushes.
    pub write_cache: Option<String>,
    /// Extra boot.py arguments.
    pub extra_args: Vec<String>,
}

impl BootOptions {
    pub fn vhost_user(socket: &Path, out_dir: &Path) -> BootOptions {
        BootOptions::new(
            Disk::VhostUser {
                socket: socket.to_owned(),
                reconnect: false,
            },
            out_dir,
        )
    }

    pub fn image(path: &Path, out_dir: &Path) -> BootOptions {
        BootOptions::new(
            Disk::Image {
                path: path.to_owned(),
            },
            out_dir,
        )
    }

    pub fn nbd(socket: &Path, export: &str, out_dir: &Path) -> BootOptions {
        BootOptions::new(
            Disk::Nbd {
                socket: socket.to_owned(),
                export: export.to_owned(),
            },
            out_dir,
        )
    }

    fn new(disk: Disk, out_dir: &Path) -> BootOptions {
        BootOptions {
            disk,
            out_dir: out_dir.to_owned(),
            jobs: vec!["verify".into(), "discard".into()],
            job_files: Vec::new(),
            verify_only: false,
            queues: 2,
            timeout: Duration::from_secs(240),
            runtime_s: 8,
            write_cache: None,
            extra_args: Vec::new(),
        }
    }

    pub fn jobs(mut self, jobs: &[&str]) -> Self {
        self.jobs = jobs.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn queues(mut self, n: u32) -> Self {
        self.queues = n;
        self
    }

    pub fn verify_only(mut self) -> Self {
        self.verify_only = true;
        self
    }

    pub fn reconnect(mut self) -> Self {
        if let Disk::VhostUser { reconnect, .. } = &mut self.disk {
            *reconnect = true;
        }
        self
    }

    pub fn write_cache(mut self, mode: &str) -> Self {
        self.write_cache = Some(mode.to_owned());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Seconds of the time-based rate jobs.
    /// Reboot the guest once between two runs of the jobs (the second
    /// verify-only): QEMU resets the virtio device under the backend.
    pub fn reboot(mut self) -> Self {
        self.extra_args.push("--reboot".into());
        self
    }

    pub fn runtime(mut self, s: u32) -> Self {
        self.runtime_s = s;
        self
    }

    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![harness_dir().join("boot.py").display().to_string()];
        match &self.disk {
            Disk::VhostUser { socket, reconnect } => {
                a.extend(["--vhost-user".into(), socket.display().to_string()]);
                if *reconnect {
                    a.push("--reconnect".into());
                }
            }
            Disk::Image { path } => a.extend(["--image".into(), path.display().to_string()]),
            Disk::Nbd { socket, export } => {
                a.extend(["--nbd".into(), format!("{}:{export}", socket.display())])
            }
        }
        let jobs = if self.jobs.is_empty() {
            "none".to_owned()
        } else {
            self.jobs.join(",")
        };
        a.extend([
            "--out".into(),
            self.out_dir.display().to_string(),
            "--jobs".into(),
            jobs,
            "--queues".into(),
            self.queues.to_string(),
            "--timeout".into(),
            self.timeout.as_secs().to_string(),
            "--runtime".into(),
            self.runtime_s.to_string(),
        ]);
        if self.verify_only {
            a.push("--verify-only".into());
        }
        for f in &self.job_files {
            a.extend(["--job-file".into(), f.display().to_string()]);
        }
        if let Some(wc) = &self.write_cache {
            a.extend(["--write-cache".into(), wc.clone()]);
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// The disk as the guest kernel saw it (`@@EV device`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct GuestDisk {
    pub name: String,
    pub size_bytes: u64,
    /// blk-mq hardware queues the guest driver set up.
    pub queues: u32,
    pub logical_block_size: u32,
    pub physical_block_size: u32,
    /// 0: the device did not offer VIRTIO_BLK_F_DISCARD.
    pub discard_max_bytes: u64,
    pub discard_granularity: u64,
    /// 0: no VIRTIO_BLK_F_WRITE_ZEROES (the kernel writes zero pages itself).
    pub write_zeroes_max_bytes: u64,
    /// "write_back" (flushes are sent) or "write_through".
    pub write_cache: String,
    pub ro: u8,
}

/// One job as it ran in the guest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobResult {
    pub name: String,
    /// "fio" or "sh".
    pub kind: Option<String>,
    /// Exit status in the guest (fio's, or the number of failed checks).
    pub rc: Option<i64>,
    /// Guest seconds from start to end.
    pub secs: Option<f64>,
    /// Host seconds from start to end (as the console showed the markers,
    /// 0.1 s resolution): far below `secs` means the guest clock jumped.
    pub host_secs: Option<f64>,
    pub verify_only: bool,
    /// fio's `--output-format=json` document.
    pub fio: Option<Value>,
    pub fio_error: Option<String>,
    /// The job's output when it failed (fio's verify messages, ...).
    pub log: Vec<String>,
}

impl JobResult {
    /// fio's per-job records.
    pub fn fio_jobs(&self) -> Vec<Value> {
        self.fio
            .as_ref()
            .and_then(|f| f["jobs"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Sum of a per-direction counter over fio's jobs, e.g.
    /// `total("read", "io_bytes")`.
    pub fn total(&self, dir: &str, field: &str) -> f64 {
        self.fio_jobs()
            .iter()
            .map(|j| j[dir][field].as_f64().unwrap_or(0.0))
            .sum()
    }

    /// How many of fio's jobs reported an error.
    pub fn fio_errors(&self) -> usize {
        self.fio_jobs()
            .iter()
            .filter(|j| j["error"].as_i64() != Some(0))
            .count()
    }
}

/// A guest-side check's verdict (`@@EV check`), e.g. "discard".
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CheckResult {
    /// "pass", "fail" or "skip".
    pub result: String,
    /// The other fields: reason, offsets, md5 sums.
    #[serde(flatten)]
    pub fields: BTreeMap<String, Value>,
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        self.result == "pass"
    }

    pub fn reason(&self) -> Option<&str> {
        self.fields.get("reason").and_then(Value::as_str)
    }
}

/// Host-side seconds from QEMU's start.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct HostTimes {
    /// The guest's /init ran.
    pub init: Option<f64>,
    /// The disk was ready.
    pub device: Option<f64>,
    /// All jobs were done.
    pub all_done: Option<f64>,
}

/// What one boot did: boot.py's summary.json.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VmOutcome {
    /// boot.py's exit status: 0 ok, 1 a job or check failed, 3 boot failure,
    /// 124 timeout (-1: boot.py itself did not finish).
    pub exit_code: i32,
    pub ok: bool,
    /// "ok", or what went wrong.
    pub reason: String,
    pub wall_s: f64,
    /// Times the guest's /init started (2 after a reboot).
    pub boots: u32,
    pub host_times_s: HostTimes,
    pub device: Option<GuestDisk>,
    /// The virtio-blk serial (VIRTIO_BLK_T_GET_ID) as the guest read it.
    pub serial: Option<String>,
    pub jobs: Vec<JobResult>,
    pub checks: BTreeMap<String, CheckResult>,
    /// `info` markers: the guest clock source (`what=clocksource`), kernel
    /// lines about it (`what=kmsg-clock`), ...
    pub infos: Vec<Value>,
    pub errors: Vec<Value>,
    pub out_dir: PathBuf,
    pub serial_log: PathBuf,
    /// boot.py's own messages (progress, failures).
    #[serde(skip)]
    pub boot_log: String,
}

impl VmOutcome {
    /// The job named `name`; panics (failing the test) if it did not run.
    pub fn job(&self, name: &str) -> &JobResult {
        self.jobs
            .iter()
            .rev()
            .find(|j| j.name == name)
            .unwrap_or_else(|| panic!("job {name} did not run:\n{}", self.describe()))
    }

    /// The check named `name` ("discard", "write-zeroes"); panics if it did
    /// not report.
    pub fn check(&self, name: &str) -> &CheckResult {
        self.checks
            .get(name)
            .unwrap_or_else(|| panic!("check {name} did not report:\n{}", self.describe()))
    }

    /// The disk as the guest saw it; panics if the guest never saw one.
    pub fn disk(&self) -> &GuestDisk {
        self.device
            .as_ref()
            .unwrap_or_else(|| panic!("the guest saw no disk:\n{}", self.describe()))
    }

    /// The guest's console output.
    pub fn serial_output(&self) -> String {
        std::fs::read_to_string(&self.serial_log).unwrap_or_default()
    }

    /// Everything useful for an assertion message: verdict, jobs, checks,
    /// the failed jobs' logs and the tail of the console.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "boot: exit {} ({}), {:.1}s, out {}\n",
            self.exit_code,
            self.reason,
            self.wall_s,
            self.out_dir.display()
        );
        for j in &self.jobs {
            s.push_str(&format!("  job {}: rc={:?} {:?}s\n", j.name, j.rc, j.secs));
            for l in &j.log {
                s.push_str(&format!("    | {l}\n"));
            }
        }
        for (name, c) in &self.checks {
            s.push_str(&format!("  check {name}: {} {:?}\n", c.result, c.fields));
        }
        for e in &self.errors {
            s.push_str(&format!("  guest error: {e}\n"));
        }
        if !self.ok {
            let console = self.serial_output();
            let lines: Vec<&str> = console.lines().collect();
            let from = lines.len().saturating_sub(25);
            s.push_str("--- console tail:\n");
            s.push_str(&lines[from..].join("\n"));
            s.push_str("\n--- boot.py:\n");
            s.push_str(&self.boot_log);
        }
        s
    }
}

/// Boot one guest and run its jobs. Returns whatever happened, a failed
/// job or a guest that never came up included; panics only when the
/// harness itself cannot run.
pub fn boot(opts: &BootOptions) -> VmOutcome {
    ensure_initramfs().unwrap_or_else(|e| panic!("guest images: {e:#}"));
    std::fs::create_dir_all(&opts.out_dir).expect("create the boot's output directory");
    let summary = opts.out_dir.join("summary.json");
    let _ = std::fs::remove_file(&summary);
    let python = in_path("python3").expect("python3 (Debian package python3)");
    let mut cmd = Command::new(python);
    cmd.args(opts.args());
    // boot.py enforces opts.timeout itself; this only catches a hung boot.py
    let limit = opts.timeout + Duration::from_secs(60);
    let out = output_timeout(&mut cmd, limit);
    let boot_log = out
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_else(|| format!("`{}` did not finish within {limit:?}", describe(&cmd)));
    let mut outcome: VmOutcome = match std::fs::read_to_string(&summary) {
        Ok(text) => serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", summary.display())),
        Err(e) => VmOutcome {
            exit_code: out.as_ref().and_then(|o| o.status.code()).unwrap_or(-1),
            reason: format!("boot.py wrote no summary ({e})"),
            out_dir: opts.out_dir.clone(),
            serial_log: opts.out_dir.join("serial.log"),
            ..VmOutcome::default()
        },
    };
    outcome.boot_log = boot_log;
    outcome
}

// ----------------------------------------------------------------------
// qemu-storage-daemon as the reference vhost-user-blk backend

/// `qemu-storage-daemon` exporting a raw file as vhost-user-blk on a Unix
/// socket (writable, `discard=unmap` unless asked otherwise). Dropping it
/// stops the daemon.
pub struct QsdExport {
    pub image: PathBuf,
    pub socket: PathBuf,
    pub queues: u32,
    pub discard: bool,
    log: PathBuf,
    child: Option<Child>,
}

impl QsdExport {
    pub fn start(image: &Path, socket: &Path, queues: u32) -> QsdExport {
        QsdExport::start_with(image, socket, queues, true)
    }

    /// With `discard == false` the file node keeps QEMU's default
    /// `discard=ignore`: the export still offers discard to the guest but
    /// does nothing with it.
    pub fn start_with(image: &Path, socket: &Path, queues: u32, discard: bool) -> QsdExport {
        let log = socket.with_extension("qsd.log");
        let mut q = QsdExport {
            image: image.to_owned(),
            socket: socket.to_owned(),
            queues,
            discard,
            log,
            child: None,
        };
        q.spawn();
        q
    }

    fn command(&self) -> Command {
        let qsd = in_path("qemu-storage-daemon").unwrap_or_else(|| {
            panic!(
                "qemu-storage-daemon is not installed: run tests/vm/install-deps.sh \
                 (Debian 12: qemu-system-common; QEMU >= 8: qemu-utils)"
            )
        });
        let mut blockdev = format!(
            "driver=file,node-name=disk0,filename={}",
            self.image.display()
        );
        if self.discard {
            blockdev.push_str(",discard=unmap");
        }
        let export = format!(
            "type=vhost-user-blk,id=export0,node-name=disk0,addr.type=unix,addr.path={},\
             writable=on,num-queues={}",
            self.socket.display(),
            self.queues
        );
        let mut c = Command::new(qsd);
        c.args(["--blockdev", &blockdev, "--export", &export]);
        c
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let log = File::create(&self.log).expect("create the qsd log");
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the qsd log"))
            .stderr(log);
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", describe(&cmd)));
        let t0 = Instant::now();
        while !self.socket.exists() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("qemu-storage-daemon exited ({st}):\n{}", self.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "qemu-storage-daemon made no socket at {} within 20s:\n{}",
                self.socket.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stop the daemon (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(&child, libc::SIGTERM);
            if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Stop it and start a new one on the same file and socket.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for QsdExport {
    fn drop(&mut self) {
        self.stop();
    }
}

// ----------------------------------------------------------------------
// Looking at the image from the host

/// A sparse file of `size` bytes.
pub fn sparse_image(path: &Path, size: u64) {
    File::create(path)
        .and_then(|f| f.set_len(size))
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
}

/// `len` bytes of a file at `offset`.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)
        .unwrap_or_else(|e| panic!("read {} at {offset}: {e}", path.display()));
    buf
}

/// Overwrite bytes of a file (to corrupt what a guest wrote).
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all_at(data, offset)
        .and_then(|_| f.sync_data())
        .unwrap_or_else(|e| panic!("write {} at {offset}: {e}", path.display()));
}

/// The first offset at or after `offset` that holds allocated data
/// (`SEEK_DATA`), or None when only a hole follows.
pub fn next_data(path: &Path, offset: u64) -> Option<u64> {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let off = libc::off_t::try_from(offset).expect("offset fits off_t");
    // SAFETY: lseek(2) on a descriptor that `f` owns and keeps open for the
    // duration of the call; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, libc::SEEK_DATA) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENXIO),
            "SEEK_DATA on {}: {e}",
            path.display()
        );
        return None;
    }
    Some(r as u64)
}
