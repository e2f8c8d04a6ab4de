//! Black-box test support for the `edgevol` binary: a daemon guard running
//! `edgevol serve` in its own temporary directory, CLI helpers, checks that
//! the external NBD clients are installed, and small utilities shared by the
//! integration tests (random data, NBD allocation maps, Python + libnbd).
//!
//! Every test gets its own temporary directory, data directory and sockets,
//! so the tests can run in parallel.
#![allow(dead_code)] // Each test binary uses a different subset.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod vm;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// The `edgevol` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edgevol"))
}

// ----------------------------------------------------------------------
// External tools

/// A tool in PATH, or in /usr/sbin or /sbin (mkfs.*, losetup, pvcreate:
/// not in an ordinary user's PATH on Debian).
fn in_path(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        let p = PathBuf::from(tool);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// The path of an external tool; panics (the test fails) naming the Debian
/// package to install when it is missing.
pub fn require(tool: &str, package: &str) -> PathBuf {
    match in_path(tool) {
        Some(p) => p,
        None => panic!(
            "required test tool `{tool}` is not installed: install the Debian package `{package}` \
             (apt-get install -y {package}; scripts/test.sh installs all of them)"
        ),
    }
}

pub fn qemu_img() -> PathBuf {
    require("qemu-img", "qemu-utils")
}

pub fn qemu_io() -> PathBuf {
    require("qemu-io", "qemu-utils")
}

pub fn nbdinfo() -> PathBuf {
    require("nbdinfo", "libnbd-bin")
}

pub fn nbdcopy() -> PathBuf {
    require("nbdcopy", "libnbd-bin")
}

pub fn fio() -> PathBuf {
    require("fio", "fio")
}

/// A Python interpreter that can `import nbd` (python3-libnbd). Debian's
/// module lives in /usr/bin/python3's path; a `python3` earlier in PATH
/// (pyenv, venv) may not see it, so /usr/bin/python3 is tried first.
pub fn python_nbd() -> PathBuf {
    let mut tried = Vec::new();
    for cand in ["/usr/bin/python3", "python3"] {
        let Some(p) = in_path(cand) else { continue };
        let ok = Command::new(&p)
            .args(["-c", "import nbd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return p;
        }
        tried.push(p.display().to_string());
    }
    panic!(
        "no python3 with the libnbd bindings (tried {tried:?}): install the Debian package \
         `python3-libnbd` (apt-get install -y python3-libnbd)"
    )
}

/// Run a Python script (with libnbd available) with arguments.
pub fn python(script: &str, args: &[&str]) -> Output {
    let py = python_nbd();
    output(Command::new(&py).arg("-c").arg(script).args(args))
}

/// Like [`python`], asserting success; returns stdout.
pub fn python_ok(script: &str, args: &[&str]) -> String {
    let out = python(script, args);
    assert!(
        out.status.success(),
        "python script failed:\n{}",
        show(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ----------------------------------------------------------------------
// Running commands

/// Exit status, stdout and stderr of a finished command, for messages.
pub fn show(o: &Output) -> String {
    format!(
        "status: {}\n--- stdout:\n{}\n--- stderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// No single command of a test may take longer than this: a hung client
/// (a daemon that stopped answering) fails the test instead of hanging it.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(300);

/// Run a command, capturing its output; panics if it runs longer than
/// [`COMMAND_LIMIT`].
pub fn output(cmd: &mut Command) -> Output {
    output_timeout(cmd, COMMAND_LIMIT).unwrap_or_else(|| {
        panic!(
            "`{}` did not finish within {COMMAND_LIMIT:?} (killed)",
            describe(cmd)
        )
    })
}

/// Run a command with a time limit: None (and the command killed) if it
/// did not finish in time.
pub fn output_timeout(cmd: &mut Command, limit: Duration) -> Option<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(cmd);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", describe(cmd)));
    // Drain the pipes in the background so a chatty child cannot block.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let status = match wait_timeout(&mut child, limit) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
    };
    Some(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Run a command and require exit status 0; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let o = output(cmd);
    assert!(
        o.status.success(),
        "`{}` failed:\n{}",
        describe(cmd),
        show(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Run a command that must fail (non-zero exit); returns stdout+stderr.
pub fn run_fail(cmd: &mut Command) -> String {
    let o = output(cmd);
    assert!(
        !o.status.success(),
        "`{}` unexpectedly succeeded:\n{}",
        describe(cmd),
        show(&o)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `qemu-io -f raw -c CMD... URI`, requiring success; returns stdout.
pub fn qemu_io_ok(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new(qemu_io());
    c.args(["-f", "raw"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(uri);
    let o = output(&mut c);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // qemu-io exits 1 when a command fails; also look for the messages, in
    // case a version reports a failed pattern check but exits 0.
    assert!(
        o.status.success() && !all.contains("failed") && !all.contains("Pattern verification"),
        "qemu-io {cmds:?} on {uri} failed:\n{}",
        show(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Like [`qemu_io_ok`] but read-only (`-r`), as needed for snapshot exports.
pub fn qemu_io_ro_ok(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new(qemu_io());
    c.args(["-r", "-f", "raw"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(uri);
    let o = output(&mut c);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && !all.contains("failed") && !all.contains("Pattern verification"),
        "qemu-io -r {cmds:?} on {uri} failed:\n{}",
        show(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `qemu-io -f raw -c CMD... URI`, which must fail; returns stdout+stderr.
pub fn qemu_io_fail(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new(qemu_io());
    c.args(["-f", "raw"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(uri);
    run_fail(&mut c)
}

// ----------------------------------------------------------------------
// The daemon

/// Options for [`Daemon::start_with`].
#[derive(Default, Clone)]
pub struct DaemonOptions {
    /// Also listen for NBD on a free TCP port on 127.0.0.1.
    pub tcp: bool,
    /// `--default-export`.
    pub default_export: Option<String>,
    /// Extra `serve` arguments.
    pub extra: Vec<String>,
    /// Environment of `serve` set after the defaults (None: removed).
    pub env: Vec<(String, Option<String>)>,
}

/// `edgevol serve` in a temporary directory: NBD on a Unix socket (and TCP
/// if asked), API on `DIR/data/api.sock`. Dropping it stops the daemon
/// (SIGTERM, then SIGKILL) and removes the directory.
pub struct Daemon {
    /// Scratch space for pool files, images, logs.
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub api: PathBuf,
    pub nbd_sock: PathBuf,
    pub port: Option<u16>,
    opts: DaemonOptions,
    child: Option<Child>,
    /// Number of the current run (1 = first start); its log is DIR/daemon-N.log.
    pub run: u32,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn send_signal(child: &Child, sig: libc::c_int) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) with the pid of a child we spawned and have not reaped
    // yet (so the pid cannot have been reused); no memory is involved.
    let _ = unsafe { libc::kill(pid, sig) };
}

/// Have the child get SIGKILL if the thread that spawned it dies, so that a
/// test killed by a timeout or a signal leaves no daemon behind (Drop runs
/// only on a normal exit or a panic).
fn die_with_parent(c: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl(2), which is async-signal-safe; it touches no memory of
    // the parent.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => return None,
            Err(e) => panic!("waiting for a child: {e}"),
        }
    }
}

impl Daemon {
    /// A daemon with NBD on a Unix socket only.
    pub fn start() -> Daemon {
        Daemon::start_with(DaemonOptions::default())
    }

    /// A daemon with NBD on a Unix socket and a free TCP port.
    pub fn start_tcp() -> Daemon {
        Daemon::start_with(DaemonOptions {
            tcp: true,
            ..DaemonOptions::default()
        })
    }

    pub fn start_with(opts: DaemonOptions) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("evt-")
            .tempdir_in(std::env::temp_dir())
            .expect("create a temporary directory");
        let data_dir = dir.path().join("data");
        let mut d = Daemon {
            api: data_dir.join("api.sock"),
            nbd_sock: data_dir.join("nbd.sock"),
            data_dir,
            dir,
            port: None,
            opts,
            child: None,
            run: 0,
        };
        d.spawn_and_wait();
        d
    }

    /// A path inside the test's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.dir.path().join(format!("daemon-{run}.log"))
    }

    /// The current run's daemon log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path(self.run)).unwrap_or_default()
    }

    /// The `serve` command line for this daemon (for tests that start a
    /// second one by hand).
    pub fn serve_command(&self) -> Command {
        let mut c = Command::new(bin());
        c.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--nbd-socket")
            .arg(&self.nbd_sock);
        match self.port {
            Some(p) => c.arg("--nbd-listen").arg(format!("127.0.0.1:{p}")),
            None => c.arg("--nbd-listen").arg("none"),
        };
        if let Some(e) = &self.opts.default_export {
            c.arg("--default-export").arg(e);
        }
        c.args(&self.opts.extra);
        c.env("RUST_LOG", "info").env("NO_COLOR", "1");
        for (k, v) in &self.opts.env {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        die_with_parent(&mut c);
        c
    }

    fn spawn_and_wait(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let mut attempts = 0;
        loop {
            attempts += 1;
            if self.opts.tcp && (self.port.is_none() || attempts > 1) {
                self.port = Some(free_port());
            }
            self.run += 1;
            let log = File::create(self.log_path(self.run)).expect("create daemon log");
            let mut cmd = self.serve_command();
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log);
            let child = cmd.spawn().expect("spawn edgevol serve");
            self.child = Some(child);
            match self.wait_ready() {
                Ok(()) => return,
                Err(status) => {
                    self.child = None;
                    let log = self.log();
                    // A TCP port taken between probing and binding: try another.
                    if self.opts.tcp && attempts < 4 && log.contains("cannot listen on 127.0.0.1") {
                        continue;
                    }
                    panic!("edgevol serve exited during start-up ({status}); its log:\n{log}");
                }
            }
        }
    }

    /// Poll `pool list` until the API answers; Err if the daemon exited.
    fn wait_ready(&mut self) -> Result<(), ExitStatus> {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(s)) = child.try_wait() {
                    return Err(s);
                }
            }
            if self.api.exists() {
                let o = self.cli(&["pool", "list"]);
                if o.status.success() && (self.port.is_none() || self.nbd_tcp_ready()) {
                    return Ok(());
                }
            }
            if Instant::now() > end {
                panic!(
                    "edgevol serve did not answer on {} within 60 s; log:\n{}",
                    self.api.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn nbd_tcp_ready(&self) -> bool {
        match self.port {
            Some(p) => std::net::TcpStream::connect(("127.0.0.1", p)).is_ok(),
            None => true,
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon not running").id()
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL the daemon and reap it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon not running");
        send_signal(&child, libc::SIGKILL);
        let _ = child.wait();
    }

    /// SIGTERM the daemon and wait for it to exit; returns its exit status.
    /// Panics if it does not stop within 60 s (it is then killed).
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// Like [`Daemon::stop`] with another signal (SIGINT).
    pub fn stop_with(&mut self, sig: libc::c_int) -> ExitStatus {
        let mut child = self.child.take().expect("daemon not running");
        send_signal(&child, sig);
        match wait_timeout(&mut child, Duration::from_secs(60)) {
            Some(s) => s,
            None => {
                send_signal(&child, libc::SIGKILL);
                let _ = child.wait();
                panic!(
                    "edgevol serve did not stop within 60 s of SIGTERM; log:\n{}",
                    self.log()
                );
            }
        }
    }

    /// Stop cleanly and require exit status 0.
    pub fn stop_clean(&mut self) {
        let s = self.stop();
        assert!(
            s.success(),
            "edgevol serve exited with {s} after SIGTERM; log:\n{}",
            self.log()
        );
    }

    /// Start again on the same data directory (after `kill9` or `stop`).
    pub fn restart(&mut self) {
        self.spawn_and_wait();
    }

    // ------------------------------------------------------------------
    // CLI

    /// `edgevol --api-socket API ARGS...`.
    pub fn cli(&self, args: &[&str]) -> Output {
        output(self.cli_command().args(args))
    }

    /// `edgevol --api-socket API` ready for arguments (to run elsewhere,
    /// e.g. in another thread while this one drives a client).
    pub fn cli_command(&self) -> Command {
        let mut c = Command::new(bin());
        c.arg("--api-socket").arg(&self.api);
        c.current_dir(self.dir.path());
        c.env_remove("RUST_LOG").env("NO_COLOR", "1");
        c
    }

    /// `edgevol --api-socket API ARGS...` with `input` on standard input.
    pub fn cli_input(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut c = Command::new(bin());
        c.arg("--api-socket").arg(&self.api).args(args);
        c.current_dir(self.dir.path());
        c.env_remove("RUST_LOG").env("NO_COLOR", "1");
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn edgevol");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        child.wait_with_output().expect("wait edgevol")
    }

    /// `edgevol --api-socket API ARGS...`, killed after `limit`: None then.
    pub fn cli_timeout(&self, args: &[&str], limit: Duration) -> Option<Output> {
        let mut c = Command::new(bin());
        c.arg("--api-socket").arg(&self.api).args(args);
        c.current_dir(self.dir.path());
        c.env_remove("RUST_LOG").env("NO_COLOR", "1");
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn edgevol");
        match wait_timeout(&mut child, limit) {
            Some(_) => Some(child.wait_with_output().expect("edgevol output")),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }

    /// `pool check POOL` must exit 0, report no errors, and finish within `limit`.
    pub fn check_pool_within(&self, pool: &str, limit: Duration) {
        let t = Instant::now();
        let o = self
            .cli_timeout(&["--json", "pool", "check", pool], limit)
            .unwrap_or_else(|| panic!("pool check {pool} did not finish within {limit:?}"));
        assert!(
            o.status.success(),
            "pool check {pool} failed after {:?}:\n{}",
            t.elapsed(),
            show(&o)
        );
        let r: Value = serde_json::from_slice(&o.stdout).expect("pool check --json output");
        assert_eq!(r["errors"], serde_json::json!([]), "pool check {pool}: {r}");
    }

    /// A CLI command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "`edgevol {}` failed:\n{}",
            args.join(" "),
            show(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A CLI command with `--json` that must succeed; its output parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!(
                "`edgevol {}` printed invalid JSON ({e}):\n{out}",
                a.join(" ")
            )
        })
    }

    /// A CLI command that must fail the documented way: exit status 1 and
    /// one line on stderr starting with `edgevol: `. Returns that line.
    pub fn fail(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert_eq!(
            o.status.code(),
            Some(1),
            "`edgevol {}` should fail with exit status 1:\n{}",
            args.join(" "),
            show(&o)
        );
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "`edgevol {}` should print one error line:\n{}",
            args.join(" "),
            show(&o)
        );
        assert!(
            lines[0].starts_with("edgevol: "),
            "error line should start with `edgevol: `: {err}"
        );
        lines[0].to_string()
    }

    /// `pool create NAME DIR/NAME.img --size SIZE [-o segment_size=SEG]`.
    pub fn create_pool(&self, name: &str, size: &str, segment_size: Option<&str>) -> Value {
        let file = self.path(&format!("{name}.img"));
        let file = file.to_str().expect("utf-8 path");
        let opt;
        let mut args = vec!["pool", "create", name, file, "--size", size];
        if let Some(s) = segment_size {
            opt = format!("segment_size={s}");
            args.extend_from_slice(&["-o", &opt]);
        }
        let st = self.json(&args);
        assert_eq!(st["name"], name, "pool create returned {st}");
        assert_eq!(st["state"], "ONLINE", "pool create returned {st}");
        st
    }

    /// `volume create POOL/VOL --size SIZE`.
    pub fn create_volume(&self, vol: &str, size: u64) -> Value {
        let info = self.json(&["volume", "create", vol, "--size", &size.to_string()]);
        assert_eq!(info["size"], size, "volume create returned {info}");
        info
    }

    /// `volume create VOL --size SIZE -o compression=off`: each block is
    /// stored as written, so tests can find (and damage) it in the pool file.
    pub fn create_uncompressed_volume(&self, vol: &str, size: &str) {
        self.ok(&[
            "volume",
            "create",
            vol,
            "--size",
            size,
            "-o",
            "compression=off",
        ]);
    }

    pub fn pool_status(&self, pool: &str) -> Value {
        self.json(&["pool", "status", pool])
    }

    /// `pool status --json` field as a number.
    pub fn pool_num(&self, pool: &str, field: &str) -> u64 {
        let st = self.pool_status(pool);
        st[field]
            .as_u64()
            .unwrap_or_else(|| panic!("pool status has no numeric {field:?}: {st}"))
    }

    /// `volume get --json` property as a number.
    pub fn vol_num(&self, vol: &str, prop: &str) -> u64 {
        let v = self.json(&["volume", "get", vol]);
        v[prop]
            .as_u64()
            .unwrap_or_else(|| panic!("volume get {vol} has no numeric {prop:?}: {v}"))
    }

    /// `pool check POOL` must exit 0 and report no errors.
    pub fn check_pool(&self, pool: &str) {
        let o = self.cli(&["--json", "pool", "check", pool]);
        assert!(
            o.status.success(),
            "pool check {pool} failed:\n{}",
            show(&o)
        );
        let r: Value = serde_json::from_slice(&o.stdout).expect("pool check --json output");
        assert_eq!(r["errors"], serde_json::json!([]), "pool check {pool}: {r}");
    }

    /// Check every pool the daemon lists (and that there is at least
    /// `expect_at_least` of them, so a vanished pool cannot pass).
    pub fn check_pools(&self, expect_at_least: usize) {
        let list = self.json(&["pool", "list"]);
        let pools = list.as_array().expect("pool list is an array");
        assert!(
            pools.len() >= expect_at_least,
            "expected at least {expect_at_least} pools, got {list}"
        );
        for p in pools {
            assert_eq!(p["state"], "ONLINE", "pool not online: {p}");
            self.check_pool(p["name"].as_str().expect("pool name"));
        }
    }

    /// End of a test: check every pool, then stop cleanly (exit 0).
    pub fn finish(mut self, expect_pools: usize) {
        self.check_pools(expect_pools);
        self.stop_clean();
    }

    // ------------------------------------------------------------------
    // NBD

    /// `nbd+unix:///EXPORT?socket=...`.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.nbd_sock.display())
    }

    /// `nbd://127.0.0.1:PORT/EXPORT` (needs [`Daemon::start_tcp`]).
    pub fn tcp_uri(&self, export: &str) -> String {
        let p = self.port.expect("daemon started without TCP");
        format!("nbd://127.0.0.1:{p}/{export}")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(&child, libc::SIGTERM);
            if wait_timeout(&mut child, Duration::from_secs(20)).is_none() {
                send_signal(&child, libc::SIGKILL);
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            // Show what the daemon said: the most useful clue of a failure.
            for run in 1..=self.run {
                let log = std::fs::read_to_string(self.log_path(run)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("--- daemon log, run {run} (last 40 lines):\n{tail}");
            }
        }
    }
}

// ----------------------------------------------------------------------
// Data

/// A deterministic pseudo-random generator (splitmix64): reproducible data
/// without depending on a particular `rand` version's algorithms.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(hi > lo);
        lo + self.next_u64() % (hi - lo)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A seed for tests that want variety between runs: `EDGEVOL_TEST_SEED`
/// if set, else derived from the time. Printed so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let s = std::env::var("EDGEVOL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {s} (set EDGEVOL_TEST_SEED={s} to replay)");
    s
}

/// Write a sparse raw image of `size` bytes: random data in 4 KiB-aligned
/// extents, explicitly written zero extents, and holes. Returns the
/// extents that hold non-zero data, as `(offset, len)`, sorted.
pub fn make_sparse_image(path: &Path, size: u64, seed: u64) -> Vec<(u64, u64)> {
    let f = File::create(path).expect("create image");
    f.set_len(size).expect("size image");
    let mut rng = Rng::new(seed);
    let mut data = Vec::new();
    let mut off = 0;
    while off < size {
        let len = (rng.range(1, 257) * 4 * KIB).min(size - off);
        match rng.range(0, 10) {
            // 40% random data, 10% explicit zeroes, 50% holes.
            0..=3 => {
                let mut buf = vec![0u8; len as usize];
                rng.fill(&mut buf);
                f.write_all_at(&buf, off).expect("write image");
                data.push((off, len));
            }
            4 => {
                f.write_all_at(&vec![0u8; len as usize], off)
                    .expect("write image");
            }
            _ => {}
        }
        off += len;
    }
    f.sync_all().expect("sync image");
    merge(data)
}

/// Merge adjacent `(offset, len)` ranges.
pub fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (o, l) in v {
        if let Some(last) = out.last_mut() {
            if last.0 + last.1 == o {
                last.1 += l;
                continue;
            }
        }
        out.push((o, l));
    }
    out
}

/// Compare two files byte for byte; on a mismatch, name the first differing offset.
pub fn assert_files_equal(a: &Path, b: &Path) {
    let x = std::fs::read(a).unwrap_or_else(|e| panic!("read {}: {e}", a.display()));
    let y = std::fs::read(b).unwrap_or_else(|e| panic!("read {}: {e}", b.display()));
    assert_eq!(
        x.len(),
        y.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!(
            "{} and {} differ first at byte {i} (block {}): {:#04x} vs {:#04x}",
            a.display(),
            b.display(),
            i / 4096,
            x[i],
            y[i]
        );
    }
}

pub fn write_file(path: &Path, bytes: &[u8]) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(bytes).expect("write file");
}

// ----------------------------------------------------------------------
// NBD allocation maps

/// One extent of `nbdinfo --map --json`: `type` bit 0 = hole, bit 1 = zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapExtent {
    pub offset: u64,
    pub length: u64,
    pub kind: u64,
}

pub const DATA: u64 = 0;
pub const HOLE_ZERO: u64 = 3;
pub const ZERO: u64 = 2;

/// `nbdinfo --map --json URI`, adjacent extents of the same type merged.
pub fn nbd_map(uri: &str) -> Vec<MapExtent> {
    let out = run_ok(Command::new(nbdinfo()).args(["--map", "--json", uri]));
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("nbdinfo --map --json: {e}:\n{out}"));
    let mut ext: Vec<MapExtent> = Vec::new();
    for e in v.as_array().expect("map is an array") {
        let x = MapExtent {
            offset: e["offset"].as_u64().expect("offset"),
            length: e["length"].as_u64().expect("length"),
            kind: e["type"].as_u64().expect("type"),
        };
        if let Some(last) = ext.last_mut() {
            assert_eq!(
                last.offset + last.length,
                x.offset,
                "map has a gap or overlap: {out}"
            );
            if last.kind == x.kind {
                last.length += x.length;
                continue;
            }
        }
        ext.push(x);
    }
    ext
}

/// Build an expected merged map from `(offset, length, type)`.
pub fn map_of(v: &[(u64, u64, u64)]) -> Vec<MapExtent> {
    let mut out: Vec<MapExtent> = Vec::new();
    for &(offset, length, kind) in v {
        if length == 0 {
            continue;
        }
        if let Some(last) = out.last_mut() {
            if last.kind == kind && last.offset + last.length == offset {
                last.length += length;
                continue;
            }
        }
        out.push(MapExtent {
            offset,
            length,
            kind,
        });
    }
    out
}

/// Read `len` bytes at `offset` of an export with libnbd (read-only open
/// is not needed: reads never change anything).
pub fn nbd_read(uri: &str, offset: u64, len: u64) -> Vec<u8> {
    let out = python(
        "import nbd, sys\n\
         h = nbd.NBD()\n\
         h.connect_uri(sys.argv[1])\n\
         off, n = int(sys.argv[2]), int(sys.argv[3])\n\
         out = sys.stdout.buffer\n\
         while n > 0:\n\
         \x20   k = min(n, 4 << 20)\n\
         \x20   out.write(h.pread(k, off))\n\
         \x20   off += k; n -= k\n\
         h.shutdown()\n",
        &[uri, &offset.to_string(), &len.to_string()],
    );
    assert!(
        out.status.success(),
        "reading {len} bytes at {offset} of {uri}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len() as u64, len);
    out.stdout
}

/// The size of an export as nbdinfo reports it.
pub fn nbd_size(uri: &str) -> u64 {
    let out = run_ok(Command::new(nbdinfo()).args(["--size", uri]));
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("nbdinfo --size printed {out:?}: {e}"))
}

// ----------------------------------------------------------------------
// A long-lived NBD client

const HOLDER: &str = r#"
import nbd, sys
h = nbd.NBD()
try:
    h.connect_uri(sys.argv[1])
except nbd.Error as e:
    print("error", e.errno, flush=True)
    sys.exit(0)
print(h.get_size(), flush=True)
for line in sys.stdin:
    w = line.split()
    if not w or w[0] == "quit":
        break
    try:
        if w[0] == "read":
            b = h.pread(int(w[2]), int(w[1]))
            print("ok", sum(1 for x in b if x), b[0], flush=True)
        elif w[0] == "write":
            h.pwrite(bytes([int(w[3], 0)]) * int(w[2]), int(w[1]))
            print("ok", flush=True)
        elif w[0] == "flush":
            h.flush()
            print("ok", flush=True)
        else:
            print("error bad-command", flush=True)
    except nbd.Error as e:
        print("error", e.errno, flush=True)
try:
    h.shutdown()
except nbd.Error:
    pass
"#;

/// A Python + libnbd client kept connected to an export in the background,
/// driven line by line: `read OFF LEN` → `ok NONZERO_BYTES FIRST_BYTE`,
/// `write OFF LEN BYTE` → `ok`, `flush` → `ok`; failures answer `error ERRNO`.
pub struct NbdClient {
    child: Child,
    to: std::process::ChildStdin,
    from: std::io::BufReader<std::process::ChildStdout>,
    /// The export size seen at connection time, or the connection error.
    pub hello: String,
}

impl NbdClient {
    pub fn connect(uri: &str) -> NbdClient {
        let mut c = Command::new(python_nbd());
        c.arg("-c")
            .arg(HOLDER)
            .arg(uri)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        die_with_parent(&mut c);
        let mut child = c.spawn().expect("spawn python client");
        let to = child.stdin.take().expect("stdin");
        let from = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut n = NbdClient {
            child,
            to,
            from,
            hello: String::new(),
        };
        n.hello = n.line();
        n
    }

    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut s = String::new();
        self.from
            .read_line(&mut s)
            .expect("read from python client");
        s.trim().to_string()
    }

    /// Send one command, return the answer line ("" if the client exited).
    pub fn cmd(&mut self, cmd: &str) -> String {
        if writeln!(self.to, "{cmd}").is_err() {
            return String::new();
        }
        self.line()
    }

    /// Disconnect cleanly and wait for the process.
    pub fn close(mut self) {
        let _ = writeln!(self.to, "quit");
        let _ = wait_timeout(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Poll `f` until it returns true (10 s); `f` also describes the state,
/// for the failure message.
pub fn eventually(what: &str, mut f: impl FnMut() -> (bool, String)) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, state) = f();
        if ok {
            return;
        }
        assert!(Instant::now() < end, "{what}: still {state} after 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ----------------------------------------------------------------------
// Block devices

/// A loop device over a file: a real block device, detached on drop. None
/// (the test says why and passes) where loop devices cannot be set up
/// (not root, no /dev/loop-control in the container).
pub struct Loop {
    pub dev: String,
}

impl Loop {
    pub fn new(file: &Path) -> Option<Loop> {
        let o = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(file)
            .output()
            .ok()?;
        if !o.status.success() {
            eprintln!(
                "SKIP: no loop device: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        Some(Loop {
            dev: String::from_utf8_lossy(&o.stdout).trim().to_string(),
        })
    }

    /// Tell the kernel the backing file grew (`losetup -c`).
    pub fn refresh(&self) {
        run_ok(Command::new("losetup").args(["-c", &self.dev]));
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}
