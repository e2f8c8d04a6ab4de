//! `edgevol bench`: edgevol against today's block servers, on this machine.
//!
//! A fio matrix (fio's `nbd` engine; `io_uring` `direct=1` on a raw file for
//! the physical limit) against an edgevol volume and the installed anchors
//! (qemu-storage-daemon raw/qcow2, qemu-nbd qcow2), in interleaved passes,
//! plus scenarios only edgevol has. Results: a table on the terminal,
//! `results.json`, `chart.svg`, and per-run fio JSON and server logs.
//! See `docs/benchmark.md`.
//!
//! Modules: [`jobs`] (the matrix), [`fio`] (command lines, JSON),
//! [`procs`] (child processes, signals, /proc sampling), [`targets`]
//! (images and servers), [`daemon`] (an edgevol daemon via its API),
//! [`runner`] (passes and measurement windows), [`scenarios`], [`stats`]
//! (medians, per-pass ratios), [`report`] (tables, JSON), [`chart`] (SVG).

pub mod chart;
pub mod daemon;
pub mod fio;
pub mod jobs;
pub mod procs;
pub mod report;
pub mod runner;
pub mod scenarios;
pub mod stats;
pub mod targets;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::units::{human, parse_size};
use fio::Data;
use runner::{Bench, Config};
use scenarios::Scenario;
use targets::Target;

/// `edgevol bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A smoke run of about a minute: 3 s per job, 256M images, targets
    /// native,qsd-raw,edgevol, three jobs, one pass, no scenarios.
    #[arg(long)]
    quick: bool,
    /// Measured seconds per job [default: 20; --quick: 3].
    #[arg(long, value_name = "SECS")]
    runtime: Option<u64>,
    /// fio ramp seconds before each measured window [default: 3; --quick: 1].
    #[arg(long, value_name = "SECS")]
    ramp: Option<u64>,
    /// Passes over the matrix; medians and per-pass ratios over them
    /// [default: 3; --quick: 1].
    #[arg(long, value_name = "N")]
    passes: Option<u32>,
    /// Virtual size of every image and volume [default: 4G; --quick: 256M].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    size: Option<u64>,
    /// Targets, comma-separated [default: all installed]:
    /// native, qsd-raw, qsd-qcow2, qemu-nbd-qcow2, edgevol.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    targets: Vec<String>,
    /// Jobs, comma-separated [default: all] (`--list` shows them).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    jobs: Vec<String>,
    /// Run the edgevol scenarios (all, or a comma list: snapshot,
    /// pool-90-full, lz4, 16-volumes) [default: all; --quick: none].
    #[arg(long, value_name = "LIST", value_delimiter = ',', num_args = 0..=1, default_missing_value = "all")]
    scenarios: Option<Vec<String>>,
    /// Skip the scenarios.
    #[arg(long, conflicts_with = "scenarios")]
    no_scenarios: bool,
    /// Write buffers of the matrix (the lz4 scenario always uses compress50).
    #[arg(long, value_enum, default_value = "random")]
    data: Data,
    /// Results directory [default: bench-results/<time>].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Scratch directory for images and sockets (a run directory is made
    /// and removed inside).
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/edgevol-bench")]
    scratch: PathBuf,
    /// Keep the scratch run directory (images, pools) for inspection.
    #[arg(long)]
    keep: bool,
    /// What the write-only jobs write into: `filled` (default) — every
    /// target's image written once first, so writes overwrite data (and,
    /// on edgevol, data a snapshot holds: the common case on a VM host); or
    /// `fresh` — new images for thin targets (allocating writes).
    #[arg(long, value_enum, default_value = "filled")]
    writes_on: runner::WritesOn,
    /// Run the matrix on edgevol without a snapshot of its volume (by
    /// default one is taken before the first job on each image and kept:
    /// the performance targets hold with a snapshot present).
    #[arg(long)]
    no_snapshot: bool,
    /// List targets, jobs and scenarios, and exit.
    #[arg(long)]
    list: bool,
    /// Print the tables of an existing results.json and redraw its chart
    /// (chart.svg beside it), e.g. after an interrupted run; runs nothing.
    #[arg(long, value_name = "FILE", conflicts_with = "quick")]
    report: Option<PathBuf>,
}

/// Run the benchmark. With `json`, print the results document instead of
/// tables.
pub fn run(a: BenchArgs, json_out: bool) -> Result<()> {
    if a.list {
        print_list();
        return Ok(());
    }
    if let Some(file) = &a.report {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let doc: report::Document = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an edgevol bench results file", file.display()))?;
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        return output(&doc, &dir, json_out);
    }
    preflight()?;
    let stamp = stamp();
    let (cfg, notes) = resolve(&a, &stamp)?;
    procs::install_signal_handler()?;
    std::fs::create_dir_all(&cfg.run_dir)
        .with_context(|| format!("cannot create {}", cfg.run_dir.display()))?;
    let _scratch = ScratchGuard {
        dir: cfg.run_dir.clone(),
        keep: cfg.keep,
    };
    procs::set_scratch_for_cleanup((!cfg.keep).then(|| cfg.run_dir.clone()));
    std::fs::create_dir_all(&cfg.out)
        .with_context(|| format!("cannot create {}", cfg.out.display()))?;

    let meta = meta(&cfg, &stamp);
    let pb = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} runs, eta {eta}  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut b = Bench::new(cfg, notes, meta, pb)?;
    let per_pass = b.runs_per_pass() + b.cfg.scenarios.iter().map(|s| s.steps()).sum::<u64>();
    b.pb.set_length(per_pass * b.cfg.passes as u64);
    let est = per_pass * b.cfg.passes as u64 * (b.cfg.runtime + b.cfg.ramp + 3);
    for n in b.notes.clone() {
        b.say(&format!("note: {n}"));
    }
    b.say(&format!(
        "edgevol bench: targets {}; {} jobs; {} scenarios; {} pass(es) of {} s + {} s ramp; {} images: about {} min plus fills. Results in {}",
        b.cfg.targets.iter().map(|t| t.name()).collect::<Vec<_>>().join(","),
        b.cfg.jobs.len(),
        b.cfg.scenarios.len(),
        b.cfg.passes,
        b.cfg.runtime,
        b.cfg.ramp,
        human(b.cfg.size),
        est.div_ceil(60),
        b.cfg.out.display()
    ));
    b.pb.enable_steady_tick(Duration::from_millis(500));
    for pass in 0..b.cfg.passes {
        b.run_pass(pass);
        for s in b.cfg.scenarios.clone() {
            scenarios::run(&mut b, s, pass);
        }
    }
    b.pb.finish_and_clear();
    b.meta["finished"] = json!(crate::units::time(runner::now_secs()));
    finish(&b, json_out)
}

/// Removes the scratch run directory when the run ends (also on errors).
struct ScratchGuard {
    dir: PathBuf,
    keep: bool,
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// fio with the nbd engine is required; say so clearly.
fn preflight() -> Result<()> {
    if targets::find_in_path("fio").is_none() {
        bail!(
            "fio is not installed: edgevol bench drives every target with fio \
             (Debian/Ubuntu: apt-get install fio libnbd-bin)"
        );
    }
    if !targets::fio_has_engine("nbd") {
        bail!(
            "this fio has no nbd ioengine (need fio >= 3.21 built with libnbd, \
             e.g. Debian's fio package)"
        );
    }
    Ok(())
}

/// Settings after defaults, `--quick` and tool availability; notes say
/// what was skipped and why.
fn resolve(a: &BenchArgs, stamp: &str) -> Result<(Config, Vec<String>)> {
    let mut notes = Vec::new();
    let q = a.quick;
    let wanted: Vec<Target> = if a.targets.is_empty() {
        if q {
            vec![Target::Native, Target::QsdRaw, Target::Edgevol]
        } else {
            Target::ALL.to_vec()
        }
    } else {
        let mut v = Vec::new();
        for n in &a.targets {
            let t = Target::from_name(n).with_context(|| {
                let known: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
                format!("unknown target {n:?}; known: {}", known.join(", "))
            })?;
            if !v.contains(&t) {
                v.push(t);
            }
        }
        v.sort();
        v
    };
    let mut targets = Vec::new();
    for t in wanted {
        match t.unavailable() {
            Some(why) => notes.push(format!("target {} skipped: {why}", t.name())),
            None => targets.push(t),
        }
    }
    let job_names: Vec<String> = if a.jobs.is_empty() && q {
        jobs::QUICK.iter().map(|s| s.to_string()).collect()
    } else {
        a.jobs.clone()
    };
    let jobs = jobs::select(&job_names).map_err(anyhow::Error::msg)?;
    let scenarios: Vec<Scenario> = match (&a.scenarios, a.no_scenarios, q) {
        (_, true, _) => Vec::new(),
        (Some(list), _, _) => scenarios::select(list).map_err(anyhow::Error::msg)?,
        (None, _, true) => Vec::new(),
        (None, _, false) => Scenario::ALL.to_vec(),
    };
    if targets.is_empty() && scenarios.is_empty() {
        bail!(
            "nothing to run: no selected target is available ({})",
            notes.join("; ")
        );
    }
    let size = a.size.unwrap_or(if q { 256 << 20 } else { 4 << 30 });
    if size < (64 << 20) || !size.is_multiple_of(1 << 20) {
        bail!("--size must be a multiple of 1M and at least 64M");
    }
    let passes = a.passes.unwrap_or(if q { 1 } else { 3 });
    if passes == 0 {
        bail!("--passes must be at least 1");
    }
    let runtime = a.runtime.unwrap_or(if q { 3 } else { 20 });
    if runtime == 0 {
        bail!("--runtime must be at least 1 second");
    }
    let scratch = absolute(&a.scratch)?;
    let run_dir = scratch.join(format!("run-{stamp}-{}", std::process::id()));
    // Sockets live in the run directory; Unix socket paths are limited to
    // 107 bytes (edgevol's: run/i/eNNNN/api.sock).
    let longest = run_dir.join("i").join("e99999").join("api.sock");
    if longest.as_os_str().len() > 100 {
        bail!(
            "--scratch {} is too long for Unix socket paths inside it; use a shorter directory",
            scratch.display()
        );
    }
    let out = match &a.out {
        Some(o) => absolute(o)?,
        None => absolute(&Path::new("bench-results").join(stamp))?,
    };
    Ok((
        Config {
            runtime,
            ramp: a.ramp.unwrap_or(if q { 1 } else { 3 }),
            passes,
            size,
            data: a.data,
            targets,
            jobs,
            scenarios,
            out,
            run_dir,
            keep: a.keep,
            snapshot: !a.no_snapshot,
            writes_on: a.writes_on,
        },
        notes,
    ))
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// `20261130T154100Z`.
fn stamp() -> String {
    let t = crate::units::time(runner::now_secs());
    t.replace('-', "").replace(' ', "T").replace(':', "") + "Z"
}

/// The first line a tool prints for `--version`.
fn version(tool: &str) -> Option<String> {
    let o = Command::new(tool).arg("--version").output().ok()?;
    let s = if o.stdout.is_empty() {
        o.stderr
    } else {
        o.stdout
    };
    String::from_utf8_lossy(&s)
        .lines()
        .next()
        .map(str::to_string)
}

fn meta(cfg: &Config, stamp: &str) -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let mem_kib: Option<u64> = read("/proc/meminfo")
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok());
    json!({
        "stamp": stamp,
        "started": crate::units::time(runner::now_secs()),
        "edgevol_version": env!("CARGO_PKG_VERSION"),
        "edgevol_exe": std::env::current_exe().ok(),
        "runtime_s": cfg.runtime,
        "ramp_s": cfg.ramp,
        "passes": cfg.passes,
        "image_size": cfg.size,
        "edgevol_pool_size": cfg.sizes().pool,
        "data": cfg.data,
        "targets": cfg.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "target_desc": cfg.targets.iter().map(|t| (t.name(), t.desc())).collect::<std::collections::BTreeMap<_, _>>(),
        "jobs": cfg.jobs.iter().map(|j| j.name).collect::<Vec<_>>(),
        "scenarios": cfg.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "edgevol_snapshot_present": cfg.snapshot.then_some(runner::PRESENT_SNAPSHOT),
        "writes_on": cfg.writes_on,
        "scratch": cfg.run_dir,
        "host": {
            "kernel": read("/proc/sys/kernel/osrelease").trim(),
            "cpu": cpu,
            "nproc": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "mem_bytes": mem_kib.map(|k| k * 1024),
        },
        "versions": {
            "fio": version("fio"),
            "qemu-storage-daemon": version("qemu-storage-daemon"),
            "qemu-nbd": version("qemu-nbd"),
            "qemu-img": version("qemu-img"),
        },
        "method": "medians over passes; x-ratios are medians of per-pass IOPS ratios; \
                   latency = fio lat (submission to completion), us; server CPU = utime+stime \
                   from /proc/PID/stat between the end of fio's ramp and fio's exit; RSS = VmHWM",
    })
}

/// Save the JSON, draw the chart, print the tables.
fn finish(b: &Bench, json_out: bool) -> Result<()> {
    let doc = b.document();
    doc.save(&b.cfg.out.join("results.json"))?;
    output(&doc, &b.cfg.out, json_out)
}

/// Draw `dir/chart.svg` and print the tables (or the JSON document).
fn output(doc: &report::Document, dir: &Path, json_out: bool) -> Result<()> {
    let jpath = dir.join("results.json");
    let svg = dir.join("chart.svg");
    let m = &doc.meta;
    let title = format!(
        "edgevol bench {}: {} s x {} pass(es), {} images",
        m["stamp"].as_str().unwrap_or(""),
        m["runtime_s"].as_u64().unwrap_or(0),
        m["passes"].as_u64().unwrap_or(0),
        human(m["image_size"].as_u64().unwrap_or(0))
    );
    let chart_err = chart::write_svg(&svg, &title, &chart::groups(&doc.summary)).err();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("Latency in µs (fio lat); CPU = server CPU-seconds per GiB moved; RSS = server peak (VmHWM);");
        println!(
            "x = median of per-pass IOPS ratios against the baseline measured in the same pass.\n"
        );
        print!("{}", report::matrix_table(&doc.summary));
        if doc.summary.iter().any(|r| r.scenario.is_some()) {
            println!();
            let recs = &doc.records;
            let notes = |r: &stats::Row| {
                scenarios::row_note(recs, r.scenario.as_deref().unwrap_or(""), &r.job)
            };
            print!("{}", report::scenario_table(&doc.summary, &notes));
        }
        let f = report::failures(&doc.summary);
        if !f.is_empty() {
            println!();
            print!("{f}");
        }
        for n in &doc.notes {
            println!("note: {n}");
        }
        println!("\nresults: {}", jpath.display());
        if chart_err.is_none() {
            println!("chart:   {}", svg.display());
        }
        println!("fio JSON and server logs: {}", dir.join("fio").display());
    }
    if let Some(e) = chart_err {
        eprintln!("edgevol bench: cannot draw the chart: {e:#}");
    }
    Ok(())
}

fn print_list() {
    println!("targets:");
    for t in Target::ALL {
        let avail = t
            .unavailable()
            .map(|w| format!("  [not available: {w}]"))
            .unwrap_or_default();
        println!("  {:<16} {}{avail}", t.name(), t.desc());
    }
    println!("jobs:");
    for j in jobs::JOBS {
        println!(
            "  {:<24} rw={} bs={} iodepth={} numjobs={} {}",
            j.name,
            j.rw,
            j.bs,
            j.iodepth,
            j.numjobs,
            j.extra.join(" ")
        );
    }
    println!("scenarios (edgevol only; each against its first variant):");
    println!("  snapshot         4k randwrite 4x16 on a filled volume, before and right after a snapshot");
    println!("  pool-90-full     4k randwrite 4x16 with live data at 90% of usable (cleaner busy) vs. an empty pool");
    println!("  lz4              4k randwrite 4x16, 50%-compressible data, compression=lz4 vs. uncompressed");
    println!(
        "  16-volumes       16 volumes x 16 fio clients (QD4 each) vs. one volume 4 jobs x QD16"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: BenchArgs,
    }

    fn parse(args: &[&str]) -> BenchArgs {
        T::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .expect("parses")
            .a
    }

    #[test]
    fn quick_defaults() {
        let a = parse(&["--quick", "--targets", "native,edgevol", "--out", "/tmp/x"]);
        let (c, _) = resolve(&a, "S").expect("resolves");
        assert_eq!((c.runtime, c.ramp, c.passes, c.size), (3, 1, 1, 256 << 20));
        assert_eq!(c.jobs.len(), 3);
        assert!(c.scenarios.is_empty());
        assert!(c.targets.contains(&Target::Edgevol));
        assert_eq!(c.out, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn full_defaults_and_flags() {
        let a = parse(&[
            "--runtime",
            "10",
            "--passes",
            "2",
            "--size",
            "2G",
            "--scenarios",
        ]);
        let (c, _) = resolve(&a, "S").expect("resolves");
        assert_eq!((c.runtime, c.ramp, c.passes, c.size), (10, 3, 2, 2 << 30));
        assert_eq!(c.jobs.len(), jobs::JOBS.len());
        assert_eq!(c.scenarios.len(), 4);
        let a = parse(&["--scenarios", "lz4,snapshot", "--jobs", "randwrite-4k-qd1"]);
        let (c, _) = resolve(&a, "S").expect("resolves");
        assert_eq!(c.scenarios, vec![Scenario::Lz4, Scenario::Snapshot]);
        assert_eq!(c.jobs.len(), 1);
        let a = parse(&["--no-scenarios"]);
        assert!(resolve(&a, "S").expect("resolves").0.scenarios.is_empty());
        assert!(resolve(&parse(&["--targets", "nbdkit"]), "S").is_err());
        assert!(resolve(&parse(&["--size", "1000"]), "S").is_err());
        let long = format!("/tmp/{}", "x".repeat(80));
        assert!(resolve(&parse(&["--scratch", &long]), "S").is_err());
    }

    #[test]
    fn stamp_format() {
        let s = stamp();
        assert_eq!(s.len(), 16, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[8] == b'T');
    }
}
