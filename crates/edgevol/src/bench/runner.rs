//! Running the matrix: image states, servers, fio, and the measurement
//! window around each fio run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use indicatif::ProgressBar;
use serde_json::{json, Value};

use super::daemon::Daemon;
use super::fio::{self, Data, FioResult, Io, Spec};
use super::jobs::{self, Job, Kind};
use super::procs::{self, Proc};
use super::report::{self, Document};
use super::scenarios::Scenario;
use super::stats::{self, Record};
use super::targets::{Format, Image, Server, Sizes, Target};

/// Settings of one benchmark run, after defaults and `--quick`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Measured seconds per job.
    pub runtime: u64,
    /// fio ramp seconds before the measured window.
    pub ramp: u64,
    /// Passes over the matrix.
    pub passes: u32,
    /// Virtual size of every image and volume.
    pub size: u64,
    /// Write buffer contents of the matrix.
    pub data: Data,
    /// Targets that run (installed and selected).
    pub targets: Vec<Target>,
    /// Jobs of the matrix.
    pub jobs: Vec<Job>,
    /// edgevol scenarios.
    pub scenarios: Vec<Scenario>,
    /// Results directory.
    pub out: PathBuf,
    /// Scratch directory of this run (images, sockets).
    pub run_dir: PathBuf,
    /// Keep the scratch directory.
    pub keep: bool,
    /// Keep a snapshot of edgevol's volume during the matrix (the targets
    /// are stated with one present).
    pub snapshot: bool,
    /// The image state write-only jobs run on.
    pub writes_on: WritesOn,
}

/// The image state of the write-only jobs (`--writes-on`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WritesOn {
    /// Every target's image written once first: writes overwrite data,
    /// on edgevol data the kept snapshot holds (taken after the fill).
    Filled,
    /// A new image for thin targets (allocating writes); raw targets use
    /// their filled file either way.
    Fresh,
}

impl Config {
    /// Sizes for servers: edgevol pools hold the volume three times plus
    /// 1 GiB — the filled data, a full rewrite of it under the kept
    /// snapshot, and room to spare — so the matrix never waits for the
    /// cleaner (the full pool is a scenario).
    pub fn sizes(&self) -> Sizes {
        Sizes {
            image: self.size,
            pool: self.size * 3 + (1 << 30),
        }
    }
}

/// One fio client of a measurement: where it sends I/O, and the path
/// prefix of its output (`.json`) and log (`.fio.log`).
pub struct Client {
    /// Target of the I/O.
    pub io: Io,
    /// Output path prefix.
    pub base: PathBuf,
}

/// Labels and settings of one run.
#[derive(Clone, Copy)]
pub struct Run<'a> {
    /// Server to start.
    pub target: Target,
    /// fio job.
    pub job: &'a Job,
    /// Pass number.
    pub pass: u32,
    /// Image state for the record.
    pub state: &'a str,
    /// Scenario, if any.
    pub scenario: Option<&'a str>,
    /// Record under this job name instead of the job's (scenario variants).
    pub label: Option<&'a str>,
    /// Record under this target name instead of the target's (raw fills).
    pub target_label: Option<&'a str>,
    /// Write buffer contents.
    pub data: Data,
}

impl<'a> Run<'a> {
    /// A matrix run.
    pub fn new(target: Target, job: &'a Job, pass: u32, state: &'a str, data: Data) -> Self {
        Run {
            target,
            job,
            pass,
            state,
            scenario: None,
            label: None,
            target_label: None,
            data,
        }
    }

    /// The record this run will fill.
    pub fn record(&self) -> Record {
        Record {
            pass: self.pass,
            scenario: self.scenario.map(str::to_string),
            job: self.label.unwrap_or(self.job.name).to_string(),
            target: self.target_label.unwrap_or(self.target.name()).to_string(),
            state: self.state.to_string(),
            ..Record::default()
        }
    }

    /// File name prefix of its outputs.
    pub fn file_stem(&self) -> String {
        let mut s = format!("p{}-", self.pass);
        if let Some(sc) = self.scenario {
            s.push_str(sc);
            s.push('-');
        }
        s.push_str(self.target_label.unwrap_or(self.target.name()));
        s.push('-');
        s.push_str(self.label.unwrap_or(self.job.name));
        s.replace('/', "-")
    }
}

/// Work done on a started edgevol server before fio runs (a snapshot).
pub type Hook<'a> = &'a dyn Fn(&Daemon, &mut Record) -> Result<()>;

/// The snapshot kept on edgevol's volume during the matrix.
pub const PRESENT_SNAPSHOT: &str = "bench-present";

/// Take [`PRESENT_SNAPSHOT`] of `vol0` unless it exists (the first job on
/// an image takes it: of the filled data, or of a fresh volume).
fn keep_snapshot(d: &Daemon, rec: &mut Record) -> Result<()> {
    if !d.has_snapshot("vol0", PRESENT_SNAPSHOT)? {
        d.snapshot("vol0", PRESENT_SNAPSHOT)?;
    }
    rec.facts
        .insert("snapshot_present".into(), json!(PRESENT_SNAPSHOT));
    Ok(())
}

/// `base` with a suffix appended to its file name.
pub fn suffixed(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The benchmark in progress: settings, results so far, progress bar.
pub struct Bench {
    /// Settings.
    pub cfg: Config,
    /// Every run so far.
    pub records: Vec<Record>,
    /// Skipped targets and scenarios.
    pub notes: Vec<String>,
    /// Settings, host and versions for the JSON file.
    pub meta: Value,
    /// Progress (hidden when stderr is not a terminal).
    pub pb: ProgressBar,
    /// Per-run fio JSON and logs.
    pub fio_dir: PathBuf,
    img_dir: PathBuf,
    seq: u32,
}

impl Bench {
    /// Prepare directories.
    pub fn new(cfg: Config, notes: Vec<String>, meta: Value, pb: ProgressBar) -> Result<Bench> {
        let fio_dir = cfg.out.join("fio");
        let img_dir = cfg.run_dir.join("i");
        std::fs::create_dir_all(&fio_dir)?;
        std::fs::create_dir_all(&img_dir)?;
        Ok(Bench {
            cfg,
            records: Vec::new(),
            notes,
            meta,
            pb,
            fio_dir,
            img_dir,
            seq: 0,
        })
    }

    /// A new, unused image path in the scratch directory (short: socket
    /// paths inside edgevol data directories must stay under 108 bytes).
    pub fn image_path(&mut self, format: Format) -> PathBuf {
        self.seq += 1;
        let name = match format {
            Format::Raw => format!("r{}.raw", self.seq),
            Format::Qcow2 => format!("q{}.qcow2", self.seq),
            Format::Edgevol => format!("e{}", self.seq),
        };
        self.img_dir.join(name)
    }

    /// Socket path for anchor servers.
    pub fn nbd_sock(&self) -> PathBuf {
        self.cfg.run_dir.join("nbd.sock")
    }

    /// Print a line above the progress bar (or to stderr without a terminal).
    pub fn say(&self, msg: &str) {
        if self.pb.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.pb.println(msg);
        }
    }

    /// Record a finished run: log it, advance the progress, save the JSON.
    pub fn push(&mut self, rec: Record) {
        let clock = crate::units::time(now_secs());
        let clock = clock.get(11..).unwrap_or(&clock);
        let what = match &rec.scenario {
            Some(s) => format!("{s}/{}", rec.job),
            None => format!("{} {}", rec.target, rec.job),
        };
        let msg = match (&rec.error, &rec.fio) {
            (Some(e), _) => format!(
                "ERROR {}",
                e.replace('\n', " ").chars().take(240).collect::<String>()
            ),
            (None, Some(f)) => format!(
                "{:>9} IOPS {:>8} MiB/s  p99.9 {:>7} us  max {:>8} us  srv {}",
                report::rate(f.iops),
                report::rate(f.mib_s),
                f.lat_p999_us.map(report::micros).unwrap_or_default(),
                f.lat_max_us.map(report::micros).unwrap_or_default(),
                rec.srv_cpu_pct
                    .map(|c| format!("{c:.0}% cpu"))
                    .unwrap_or_else(|| "-".into()),
            ),
            (None, None) => "no result".into(),
        };
        self.say(&format!("[{clock}] p{} {what:<44} {msg}", rec.pass));
        self.records.push(rec);
        self.pb.inc(1);
        if let Err(e) = self.save() {
            self.say(&format!("cannot save results: {e:#}"));
        }
    }

    /// The JSON document of everything so far.
    pub fn document(&self) -> Document {
        Document {
            schema: "edgevol-bench/1".into(),
            meta: self.meta.clone(),
            notes: self.notes.clone(),
            summary: sorted(stats::summarize(&self.records)),
            records: self.records.clone(),
        }
    }

    /// Write `results.json`.
    pub fn save(&self) -> Result<()> {
        self.document().save(&self.cfg.out.join("results.json"))
    }

    /// Run `clients` (fio processes, all the same job) against a running
    /// server and fill `rec`: fio's figures (combined over clients), and
    /// the server's CPU over the measured window (from the end of fio's
    /// ramp to fio's exit) and peak RSS.
    pub fn measure(
        &self,
        server: &mut Server,
        job: &Job,
        data: Data,
        shape: Option<(u32, u32)>,
        clients: &[Client],
        rec: &mut Record,
    ) {
        let cfg = &self.cfg;
        let t0 = Instant::now();
        let mut fios: Vec<Proc> = Vec::new();
        for c in clients {
            let out = suffixed(&c.base, ".json");
            let _ = std::fs::remove_file(&out);
            let spec = Spec {
                job,
                io: c.io.clone(),
                runtime: cfg.runtime,
                ramp: cfg.ramp,
                data,
                shape,
                out: &out,
            };
            match Proc::spawn(spec.command(&cfg.run_dir), &suffixed(&c.base, ".fio.log")) {
                Ok(p) => fios.push(p),
                Err(e) => {
                    rec.error = Some(format!("{e:#}"));
                    return; // started clients are stopped on drop
                }
            }
        }
        let pid = server.pid();
        let sample = || (Instant::now(), pid.and_then(procs::cpu_seconds));
        let (start, limit) = if job.timed {
            let ramp_end = t0 + Duration::from_millis(cfg.ramp * 1000 + 300);
            wait_all(&mut fios, ramp_end);
            (sample(), cfg.runtime + cfg.ramp + 120)
        } else {
            (sample(), 3 * 3600)
        };
        let finished = wait_all(&mut fios, t0 + Duration::from_secs(limit));
        let end = sample();
        if let Some(pid) = pid {
            if server.exited().is_none() {
                rec.srv_hwm_mib = procs::status_mib(pid, "VmHWM");
                rec.srv_rss_mib = procs::status_mib(pid, "VmRSS");
            }
        }
        let mut errors = Vec::new();
        if !finished {
            errors.push(format!("fio did not finish within {limit} s (stopped)"));
        }
        let mut parts = Vec::new();
        for (p, c) in fios.iter_mut().zip(clients) {
            let st = p.stop(Duration::from_secs(20));
            let log_tail = || super::daemon::tail(&suffixed(&c.base, ".fio.log"));
            match fio::parse_file(&suffixed(&c.base, ".json"), job.kind) {
                Ok(r) if st.success() => parts.push(r),
                Ok(_) => errors.push(format!("fio {st}: {}", log_tail())),
                Err(e) if st.success() => errors.push(format!("{e:#}")),
                Err(e) => errors.push(format!("{e:#}; fio {st}: {}", log_tail())),
            }
        }
        if let Some(st) = server.exited() {
            errors.push(format!("server died ({st})"));
        }
        if !errors.is_empty() {
            errors.dedup();
            rec.error = Some(errors.join("; "));
        }
        if parts.is_empty() {
            return;
        }
        let f: FioResult = if parts.len() == 1 {
            parts.remove(0)
        } else {
            fio::combine(&parts)
        };
        let dt = end.0.duration_since(start.0).as_secs_f64();
        rec.window_s = Some(round3(dt));
        if let (Some(a), Some(b)) = (start.1, end.1) {
            if dt > 0.0 {
                let rate = (b - a) / dt;
                rec.srv_cpu_s = Some(round3(b - a));
                rec.srv_cpu_pct = Some(round3(rate * 100.0));
                // CPU seconds of the window over the bytes fio moved after
                // its ramp: the window starts 0.3 s after the ramp ends and
                // ends with fio's exit (a short idle tail), which about cancel.
                let gib = fio::gib(f.io_bytes as f64);
                if gib > 0.0 {
                    rec.srv_cpu_s_per_gib = Some(round3((b - a) / gib));
                }
            }
        }
        rec.fio = Some(f);
    }

    /// Start `run.target`'s server on `img`, run one fio client, stop the
    /// server, and record the result. `pre` runs on the started server
    /// before fio (take a snapshot, ...).
    pub fn run_one(&mut self, run: Run, img: &mut Image, pre: Option<Hook>) -> Record {
        let mut rec = run.record();
        let base = self.fio_dir.join(run.file_stem());
        self.pb.set_message(format!(
            "p{} {} {}",
            run.pass,
            run.scenario.unwrap_or(run.target.name()),
            run.label.unwrap_or(run.job.name)
        ));
        let t = Instant::now();
        let log = suffixed(&base, ".server.log");
        match Server::start(run.target, img, &self.nbd_sock(), &log, self.cfg.sizes()) {
            Err(e) => rec.error = Some(format!("server: {e:#}")),
            Ok(mut srv) => {
                rec.start_s = Some(round3(t.elapsed().as_secs_f64()));
                let hook = match (pre, srv.daemon()) {
                    (Some(f), Some(d)) => f(d, &mut rec),
                    (Some(_), None) => Err(anyhow!("this step needs an edgevol server")),
                    (None, _) => Ok(()),
                };
                match hook {
                    Err(e) => rec.error = Some(format!("{e:#}")),
                    Ok(()) => {
                        let client = Client {
                            io: srv.io.clone(),
                            base,
                        };
                        self.measure(&mut srv, run.job, run.data, None, &[client], &mut rec);
                        if run.job.kind != Kind::Read {
                            pool_facts(&srv, &mut rec.facts);
                        }
                    }
                }
                self.stop(srv, &mut rec);
            }
        }
        img.settle();
        if run.job.kind != Kind::Read {
            rec.disk_bytes = img.disk_bytes();
        }
        self.push(rec.clone());
        rec
    }

    /// Stop a server and note how long it took and how it exited.
    pub fn stop(&self, srv: Server, rec: &mut Record) {
        let t = Instant::now();
        let st = srv.stop();
        if let Some(st) = st {
            rec.stop_s = Some(round3(t.elapsed().as_secs_f64()));
            rec.server_exit = Some(st.to_string());
        }
    }

    /// One pass over the matrix: job by job, every target in turn (the
    /// target order rotates from pass to pass), so each comparison is made
    /// between runs minutes apart, not a whole pass apart.
    pub fn run_pass(&mut self, pass: u32) {
        let mut order = self.cfg.targets.clone();
        if !order.is_empty() {
            let k = pass as usize % order.len();
            order.rotate_left(k);
        }
        let mut filled: BTreeMap<String, Image> = BTreeMap::new();
        let mut broken: BTreeMap<String, String> = BTreeMap::new();
        for job in jobs::execution_order(&self.cfg.jobs) {
            for &t in &order {
                let data = self.cfg.data;
                if job.kind == Kind::Write
                    && t.fresh_writes()
                    && self.cfg.writes_on == WritesOn::Fresh
                {
                    let path = self.image_path(t.format());
                    match Image::create(t.format(), &path, self.cfg.size) {
                        Ok(mut img) => {
                            let hook = self.hook(t);
                            self.run_one(Run::new(t, &job, pass, "fresh", data), &mut img, hook);
                            if !self.cfg.keep {
                                img.remove();
                            }
                        }
                        Err(e) => self.fail(Run::new(t, &job, pass, "fresh", data), e),
                    }
                    continue;
                }
                let key = filled_key(t);
                if let Some(why) = broken.get(&key) {
                    let e = anyhow!("no filled image: {why}");
                    self.fail(Run::new(t, &job, pass, "filled", data), e);
                    continue;
                }
                if !filled.contains_key(&key) {
                    match self.fill(t, pass) {
                        Ok(img) => {
                            filled.insert(key.clone(), img);
                        }
                        Err(e) => {
                            broken.insert(key.clone(), format!("{e:#}"));
                            self.fail(Run::new(t, &job, pass, "filled", data), e);
                            continue;
                        }
                    }
                }
                let hook = self.hook(t);
                if let Some(img) = filled.get_mut(&key) {
                    self.run_one(Run::new(t, &job, pass, "filled", data), img, hook);
                }
            }
        }
        if !self.cfg.keep {
            for img in filled.values() {
                img.remove();
            }
        }
    }

    /// What runs on `t`'s server before a matrix job: keeping the
    /// snapshot on edgevol's volume.
    fn hook(&self, t: Target) -> Option<Hook<'static>> {
        (t == Target::Edgevol && self.cfg.snapshot).then_some(&keep_snapshot as Hook<'static>)
    }

    /// A record of a run that could not start.
    pub fn fail(&mut self, run: Run, e: anyhow::Error) {
        let mut rec = run.record();
        rec.error = Some(format!("{e:#}"));
        self.push(rec);
    }

    /// A new image of `t` with every byte written once, sequentially
    /// (1 MiB, QD8), through the target's own server; the raw file of the
    /// raw targets is filled by fio directly (as `native`).
    pub fn fill(&mut self, t: Target, pass: u32) -> Result<Image> {
        let path = self.image_path(t.format());
        let mut img = Image::create(t.format(), &path, self.cfg.size)?;
        let filler = if t.format() == Format::Raw && self.cfg.targets.contains(&Target::Native) {
            Target::Native
        } else {
            t
        };
        let run = Run::new(filler, &jobs::FILL, pass, "fresh", self.cfg.data);
        let rec = self.run_one(run, &mut img, None);
        if let Some(e) = rec.error {
            if !self.cfg.keep {
                img.remove();
            }
            return Err(anyhow!("fill through {} failed: {e}", filler.name()));
        }
        Ok(img)
    }

    /// Number of runs a pass of the matrix makes (for the progress bar).
    pub fn runs_per_pass(&self) -> u64 {
        let mut n = 0;
        let mut fills: Vec<String> = Vec::new();
        for j in &self.cfg.jobs {
            for &t in &self.cfg.targets {
                n += 1;
                let fresh = j.kind == Kind::Write && t.fresh_writes();
                if !fresh && !fills.contains(&filled_key(t)) {
                    fills.push(filled_key(t));
                }
            }
        }
        n + fills.len() as u64
    }
}

/// Table order: the matrix by job (fills last) and target, then the
/// scenarios in run order with their variants in run order.
fn sorted(mut rows: Vec<stats::Row>) -> Vec<stats::Row> {
    let scen: Vec<Option<String>> = rows.iter().fold(Vec::new(), |mut v, r| {
        if !v.contains(&r.scenario) {
            v.push(r.scenario.clone());
        }
        v
    });
    let key = |r: &stats::Row| {
        let s = match &r.scenario {
            None => 0,
            Some(_) => 1 + scen.iter().position(|x| x == &r.scenario).unwrap_or(0),
        };
        let j = if r.scenario.is_some() {
            0
        } else {
            jobs::JOBS
                .iter()
                .position(|j| j.name == r.job)
                .unwrap_or(jobs::JOBS.len())
        };
        let t = Target::from_name(&r.target).map_or(usize::MAX, |t| t as usize);
        (s, j, t)
    };
    // Stable: scenario variants keep their run order.
    rows.sort_by_key(|r| key(r));
    rows
}

/// Filled images are shared by the raw targets, one per target otherwise.
fn filled_key(t: Target) -> String {
    match t.format() {
        Format::Raw => "raw".into(),
        _ => t.name().into(),
    }
}

/// Pool space facts of an edgevol server (after a write job).
pub fn pool_facts(srv: &Server, facts: &mut BTreeMap<String, Value>) {
    let Some(d) = srv.daemon() else { return };
    match d.pool_status() {
        Ok(st) => {
            facts.insert("pool_size".into(), json!(st.size));
            facts.insert("pool_usable".into(), json!(st.usable));
            facts.insert("pool_allocated".into(), json!(st.allocated));
            facts.insert("pool_data".into(), json!(st.data));
            facts.insert("pool_referenced".into(), json!(st.referenced));
            facts.insert("pool_free_segments".into(), json!(st.free_segments));
            facts.insert("pool_counters".into(), json!(st.counters));
        }
        Err(e) => {
            facts.insert("pool_status_error".into(), json!(format!("{e:#}")));
        }
    }
}

/// Wait until every process exited or `deadline`; true if all exited.
fn wait_all(ps: &mut [Proc], deadline: Instant) -> bool {
    loop {
        if ps.iter_mut().all(|p| p.try_wait().is_some()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::jobs::JOBS;

    #[test]
    fn labels_and_names() {
        let mut r = Run::new(Target::Edgevol, &JOBS[0], 2, "fresh", Data::Random);
        assert_eq!(r.file_stem(), "p2-edgevol-randwrite-4k-qd1");
        r.scenario = Some("snapshot");
        r.label = Some("after/x");
        let rec = r.record();
        assert_eq!(rec.job, "after/x");
        assert_eq!(rec.scenario.as_deref(), Some("snapshot"));
        assert_eq!(r.file_stem(), "p2-snapshot-edgevol-after-x");
        assert_eq!(
            suffixed(Path::new("/a/b"), ".json"),
            PathBuf::from("/a/b.json")
        );
        assert_eq!(filled_key(Target::Native), filled_key(Target::QsdRaw));
        assert_ne!(
            filled_key(Target::QsdQcow2),
            filled_key(Target::QemuNbdQcow2)
        );
    }

    #[test]
    fn row_order() {
        let row = |s: Option<&str>, j: &str, t: &str| stats::Row {
            scenario: s.map(str::to_string),
            job: j.into(),
            target: t.into(),
            ..stats::Row::default()
        };
        let rows = vec![
            row(Some("snapshot"), "fill-seq-1m-qd8", "edgevol"),
            row(Some("snapshot"), "before", "edgevol"),
            row(None, "fill-seq-1m-qd8", "native"),
            row(None, "randread-4k-4x16", "edgevol"),
            row(None, "randread-4k-4x16", "native"),
            row(None, "randwrite-4k-qd1", "edgevol"),
            row(Some("lz4"), "uncompressed", "edgevol"),
        ];
        let got: Vec<String> = sorted(rows)
            .iter()
            .map(|r| {
                format!(
                    "{}:{}:{}",
                    r.scenario.as_deref().unwrap_or(""),
                    r.job,
                    r.target
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ":randwrite-4k-qd1:edgevol",
                ":randread-4k-4x16:native",
                ":randread-4k-4x16:edgevol",
                ":fill-seq-1m-qd8:native",
                "snapshot:fill-seq-1m-qd8:edgevol",
                "snapshot:before:edgevol",
                "lz4:uncompressed:edgevol",
            ]
        );
    }
}
