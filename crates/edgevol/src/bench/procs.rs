//! Child processes of the benchmark: servers and fio.
//!
//! Every child runs in its own process group (so a server's helper threads
//! and fio's forked jobs go with it), is told to die with us
//! (`PR_SET_PDEATHSIG`, so even `kill -9` of the bench stops its servers),
//! and is recorded in a process-wide registry. Stopping is by recorded
//! process group, never by name: `SIGTERM`, a grace period, then `SIGKILL`.
//! A [`Proc`] stops its child when dropped (errors, panics); the signal
//! thread installed by [`install_signal_handler`] stops everything still
//! registered on Ctrl-C, `SIGTERM` or `SIGHUP`.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Process groups we started and have not reaped yet, and whether the run
/// was interrupted (then nothing new is started).
struct Registry {
    groups: Vec<i32>,
    interrupted: bool,
    /// Removed on interruption unless `--keep`.
    scratch: Option<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    groups: Vec::new(),
    interrupted: false,
    scratch: None,
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Remove this directory when the run is interrupted by a signal.
pub fn set_scratch_for_cleanup(dir: Option<PathBuf>) {
    registry().scratch = dir;
}

/// Send `sig` to the process group `pgid`; false if it is gone.
fn kill_group(pgid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid
    // addresses the process group we created with process_group(0), whose
    // leader is our unreaped child, so the id cannot have been recycled.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(-pgid, sig) };
    rc == 0
}

/// A running child process in its own process group.
pub struct Proc {
    child: Child,
    /// Short name for messages (`qemu-storage-daemon`, `fio`, ...).
    pub name: String,
    stopped: Option<ExitStatus>,
}

impl Proc {
    /// Start `cmd` with stdin closed and stdout+stderr appended to `log`
    /// (the command line is written there first).
    pub fn spawn(mut cmd: Command, log: &Path) -> Result<Proc> {
        let name = Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open log {}", log.display()))?;
        let line = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        use std::io::Write;
        writeln!(f, "$ {line}")?;
        let err: File = f.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(err))
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe and touches no memory
        // of the parent.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        // Spawn under the registry lock: either the signal thread sees the
        // new group, or we see that the run was interrupted.
        let mut reg = registry();
        if reg.interrupted {
            bail!("interrupted");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} (is it installed?)"))?;
        reg.groups.push(child.id() as i32);
        drop(reg);
        Ok(Proc {
            child,
            name,
            stopped: None,
        })
    }

    /// Process id (= process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.stopped.is_some() {
            return self.stopped;
        }
        match self.child.try_wait() {
            Ok(Some(st)) => {
                self.reaped(st);
                Some(st)
            }
            _ => None,
        }
    }

    /// Wait up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn reaped(&mut self, st: ExitStatus) {
        self.stopped = Some(st);
        let pid = self.child.id() as i32;
        let mut reg = registry();
        reg.groups.retain(|&g| g != pid);
        drop(reg);
    }

    /// Stop the process group: SIGTERM, then SIGKILL after `grace`.
    /// Descendants that left the group (fio puts each job process in a
    /// group of its own) are recorded first and killed afterwards if they
    /// are still there.
    pub fn stop(&mut self, grace: Duration) -> ExitStatus {
        if let Some(st) = self.try_wait() {
            return st;
        }
        let pid = self.child.id() as i32;
        let family = descendants(pid);
        kill_group(pid, libc::SIGTERM);
        let st = match self.wait_timeout(grace) {
            Some(st) => st,
            None => {
                kill_group(pid, libc::SIGKILL);
                self.wait_killed()
            }
        };
        kill_stragglers(&family, grace.min(Duration::from_secs(5)));
        st
    }

    fn wait_killed(&mut self) -> ExitStatus {
        loop {
            match self.child.wait() {
                Ok(st) => {
                    self.reaped(st);
                    return st;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // Cannot happen for our own unreaped child; do not loop.
                    let st = ExitStatus::default();
                    self.reaped(st);
                    return st;
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.stopped.is_none() {
            self.stop(Duration::from_secs(10));
        }
    }
}

/// A process identity that survives pid reuse: pid and start time.
type Ident = (i32, u64);

/// Start time (clock ticks since boot) and parent of `pid`.
fn stat_of(pid: i32) -> Option<(u64, i32, bool)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = s.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let zombie = f.first() == Some(&"Z");
    let ppid = f.get(1)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((start, ppid, zombie))
}

/// All descendants of `pid` (children, their children, ...), identified
/// by pid and start time.
fn descendants(pid: i32) -> Vec<Ident> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let all: Vec<(i32, u64, i32)> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| stat_of(p).map(|(start, ppid, _)| (p, start, ppid)))
        .collect();
    let mut out: Vec<Ident> = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, start, ppid) in &all {
            if ppid == parent && !out.iter().any(|x| x.0 == p) {
                out.push((p, start));
                frontier.push(p);
            }
        }
    }
    out
}

/// SIGTERM, then after `grace` SIGKILL, each recorded process that still
/// runs with the same start time (never a recycled pid).
fn kill_stragglers(family: &[Ident], grace: Duration) {
    let running = |&(p, start): &Ident| matches!(stat_of(p), Some((s, _, false)) if s == start);
    let live: Vec<Ident> = family.iter().copied().filter(running).collect();
    if live.is_empty() {
        return;
    }
    for &(p, _) in &live {
        kill_pid(p, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && live.iter().any(running) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for id in live.iter().filter(|id| running(id)) {
        kill_pid(id.0, libc::SIGKILL);
    }
}

/// Send `sig` to process `pid`.
fn kill_pid(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; callers checked
    // that `pid` still names the process they recorded (same start time).
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Run a short command to completion (qemu-img, sync); error with its
/// stderr if it fails.
pub fn run(cmd: &mut Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// On SIGINT, SIGTERM or SIGHUP: stop every registered process group
/// (SIGTERM, up to 10 s, then SIGKILL), remove the scratch directory, and
/// exit with 128+signal. Returns once the handlers are in place.
pub fn install_signal_handler() -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            use tokio::signal::unix::{signal, SignalKind};
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let signo = rt.block_on(async move {
                let kinds = [
                    (SignalKind::interrupt(), libc::SIGINT),
                    (SignalKind::terminate(), libc::SIGTERM),
                    (SignalKind::hangup(), libc::SIGHUP),
                ];
                let mut streams = Vec::new();
                for (k, n) in kinds {
                    match signal(k) {
                        Ok(s) => streams.push((s, n)),
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return None;
                        }
                    }
                }
                let _ = tx.send(Ok(()));
                let mut s = streams.into_iter();
                let (mut a, na) = s.next()?;
                let (mut b, nb) = s.next()?;
                let (mut c, nc) = s.next()?;
                tokio::select! {
                    _ = a.recv() => Some(na),
                    _ = b.recv() => Some(nb),
                    _ = c.recv() => Some(nc),
                }
            });
            if let Some(signo) = signo {
                emergency_stop(signo);
            }
        })
        .context("cannot start the signal thread")?;
    rx.recv()
        .context("signal thread ended early")?
        .context("cannot install signal handlers")?;
    Ok(())
}

fn emergency_stop(signo: i32) -> ! {
    eprintln!("\nedgevol bench: interrupted, stopping servers and fio ...");
    let (groups, scratch) = {
        let mut reg = registry();
        reg.interrupted = true;
        (reg.groups.clone(), reg.scratch.clone())
    };
    let family: Vec<Ident> = groups.iter().flat_map(|&g| descendants(g)).collect();
    for &g in &groups {
        kill_group(g, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    // Our children become zombies when they exit (the main thread may be
    // blocked elsewhere and not reap them): check their state, not kill(0).
    while Instant::now() < deadline && groups.iter().any(|&g| alive(g)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &g in &groups {
        kill_group(g, libc::SIGKILL);
    }
    kill_stragglers(&family, Duration::from_secs(3));
    if let Some(dir) = scratch {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::process::exit(128 + signo);
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// CPU seconds (user + system, all threads) used so far by process `pid`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&s)
}

/// utime + stime from a `/proc/PID/stat` line, in seconds. The kernel
/// reports them in USER_HZ ticks, which is 100 on every Linux ABI.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    const USER_HZ: f64 = 100.0;
    // The command name (field 2) may contain spaces and ')': split after
    // the last ')'. The rest starts at field 3 (state); utime and stime
    // are fields 14 and 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// A `kB` field of `/proc/PID/status` (`VmHWM`, `VmRSS`), in MiB.
pub fn status_mib(pid: u32, key: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&s, key).map(|k| k as f64 / 1024.0)
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu() {
        let line =
            "1234 (qemu (x) y) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 150 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat_cpu(line), Some(4.0));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tx\nVmHWM:\t  20480 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kib(s, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(s, "VmRSS"), Some(1024));
        assert_eq!(parse_status_kib(s, "VmPeak"), None);
    }

    #[test]
    fn spawn_and_stop_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & sleep 30"]);
        let mut p = Proc::spawn(cmd, &log).expect("spawn");
        let pid = p.pid() as i32;
        assert!(p.try_wait().is_none());
        let st = p.stop(Duration::from_secs(5));
        assert!(!st.success());
        assert!(!registry().groups.contains(&pid));
        // The whole group is gone, the background sleep too (it may stay a
        // zombie until init reaps it, which is not a live member).
        let deadline = Instant::now() + Duration::from_secs(5);
        while live_members(pid) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(live_members(pid), 0);
    }

    #[test]
    fn stop_reaches_descendants_in_other_groups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        let pidfile = dir.path().join("pid");
        let script = format!("setsid sleep 30 & echo $! > {}; wait", pidfile.display());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script]);
        let mut p = Proc::spawn(cmd, &log).expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(5);
        let child: i32 = loop {
            if let Some(v) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break v;
            }
            assert!(Instant::now() < deadline, "no child pid");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(matches!(stat_of(child), Some((_, _, false))));
        p.stop(Duration::from_secs(5));
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(stat_of(child), Some((_, _, false))) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !matches!(stat_of(child), Some((_, _, false))),
            "the setsid'd child survived"
        );
    }

    /// Processes of group `pgid` that are not zombies.
    fn live_members(pgid: i32) -> usize {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return 0;
        };
        dir.flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|s| {
                let Some((_, rest)) = s.rsplit_once(')') else {
                    return false;
                };
                let f: Vec<&str> = rest.split_whitespace().collect();
                f.first() != Some(&"Z") && f.get(2) == Some(&pgid.to_string().as_str())
            })
            .count()
    }
}
