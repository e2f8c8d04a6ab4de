//! fio command lines and fio's JSON output.
//!
//! Quirks respected here: fio's nbd engine prints a line on stdout, so the
//! JSON always goes to a file (`--output`); `--verify_state_save=0` keeps
//! fio from leaving state files in the working directory; over NBD the size
//! comes from the export, so `size` is only given to the file engine.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::jobs::{Job, Kind};

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

/// What fio talks to.
#[derive(Clone, Debug)]
pub enum Io {
    /// fio's nbd engine (libnbd) on this URI.
    Nbd(String),
    /// fio's io_uring engine, `direct=1`, on a file of this size.
    File(PathBuf, u64),
}

/// Write buffer contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Data {
    /// fio's default: incompressible random buffers.
    Random,
    /// About 2:1 compressible (`buffer_compress_percentage=50`,
    /// `refill_buffers`).
    Compress50,
}

/// One fio invocation.
#[derive(Clone, Debug)]
pub struct Spec<'a> {
    /// The job.
    pub job: &'a Job,
    /// Where the I/O goes.
    pub io: Io,
    /// Measured seconds and ramp seconds (ignored for untimed jobs).
    pub runtime: u64,
    /// fio `ramp_time`.
    pub ramp: u64,
    /// Write buffer contents.
    pub data: Data,
    /// Override the job's `numjobs` and `iodepth` (multi-client scenario).
    pub shape: Option<(u32, u32)>,
    /// The JSON output file.
    pub out: &'a Path,
}

impl Spec<'_> {
    /// fio's arguments.
    pub fn args(&self) -> Vec<String> {
        let j = self.job;
        let (numjobs, iodepth) = self.shape.unwrap_or((j.numjobs, j.iodepth));
        let mut a = vec![
            format!("--name={}", j.name),
            format!("--rw={}", j.rw),
            format!("--bs={}", j.bs),
            format!("--iodepth={iodepth}"),
            format!("--numjobs={numjobs}"),
            "--group_reporting=1".into(),
            "--direct=1".into(),
            "--lat_percentiles=1".into(),
            "--percentile_list=50:90:99:99.9:99.99".into(),
            "--unified_rw_reporting=both".into(),
            "--verify_state_save=0".into(),
            "--eta=never".into(),
            "--output-format=json".into(),
            format!("--output={}", self.out.display()),
        ];
        // A server answers an NBD FLUSH with fdatasync (QEMU, edgevol's
        // device flush); on the raw file, fio's fsync=1 would be a full
        // fsync with a journal commit for the mtime each time. Compare like
        // with like: fdatasync on the file.
        let file = matches!(self.io, Io::File(..));
        a.extend(j.extra.iter().map(|s| match (*s, file) {
            ("--fsync=1", true) => "--fdatasync=1".to_string(),
            _ => s.to_string(),
        }));
        if j.timed {
            a.push("--time_based=1".into());
            a.push(format!("--runtime={}", self.runtime));
            a.push(format!("--ramp_time={}", self.ramp));
        }
        if self.data == Data::Compress50 {
            a.push("--buffer_compress_percentage=50".into());
            a.push("--refill_buffers=1".into());
        }
        match &self.io {
            Io::Nbd(uri) => {
                a.push("--ioengine=nbd".into());
                a.push(format!("--uri={uri}"));
            }
            Io::File(path, size) => {
                a.push("--ioengine=io_uring".into());
                a.push(format!("--filename={}", path.display()));
                a.push(format!("--size={size}"));
            }
        }
        a
    }

    /// The command (run it in the scratch directory).
    pub fn command(&self, cwd: &Path) -> Command {
        let mut c = Command::new("fio");
        c.args(self.args()).current_dir(cwd);
        c
    }
}

/// What one fio run measured. Latencies are fio's `lat` (submission to
/// completion) in µs; for mixed jobs, both directions together.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FioResult {
    /// Operations per second, reads plus writes.
    pub iops: f64,
    /// Reads per second.
    pub read_iops: f64,
    /// Writes per second.
    pub write_iops: f64,
    /// Bytes per second moved.
    pub bw_bytes: f64,
    /// MiB per second moved.
    pub mib_s: f64,
    /// Bytes moved in the measured window.
    pub io_bytes: u64,
    /// Measured seconds (after the ramp).
    pub runtime_s: f64,
    /// Latency percentiles and maximum, µs.
    pub lat_p50_us: Option<f64>,
    /// 99th percentile.
    pub lat_p99_us: Option<f64>,
    /// 99.9th percentile.
    pub lat_p999_us: Option<f64>,
    /// Worst.
    pub lat_max_us: Option<f64>,
    /// Mean.
    pub lat_mean_us: Option<f64>,
    /// Flush latency when the job flushes (`fsync=`), µs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sync_lat_p50_us: Option<f64>,
    /// 99th percentile of the flushes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sync_lat_p99_us: Option<f64>,
    /// 99.9th percentile of the flushes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sync_lat_p999_us: Option<f64>,
    /// fio's own CPU seconds (user + system) in the measured window.
    pub fio_cpu_s: f64,
}

fn percentile(lat: &Value, p: f64) -> Option<f64> {
    let table = lat.get("percentile")?.as_object()?;
    table.iter().find_map(|(k, v)| {
        let key: f64 = k.parse().ok()?;
        if (key - p).abs() < 1e-6 {
            v.as_f64().map(|ns| ns / 1000.0)
        } else {
            None
        }
    })
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

/// Parse fio's JSON (tolerating chatter before the opening brace).
pub fn parse(text: &str, kind: Kind) -> Result<FioResult> {
    let start = text
        .find('{')
        .ok_or_else(|| anyhow!("no JSON in fio output"))?;
    let v: Value = serde_json::from_str(&text[start..]).context("fio output is not JSON")?;
    let jj = v
        .get("jobs")
        .and_then(|j| j.get(0))
        .ok_or_else(|| anyhow!("fio JSON has no jobs"))?;
    let err = jj.get("error").and_then(Value::as_i64).unwrap_or(0);
    if err != 0 {
        let msg = std::io::Error::from_raw_os_error(err as i32);
        return Err(anyhow!("fio job error {err} ({msg})"));
    }
    let (r, w) = (&jj["read"], &jj["write"]);
    let dir = match kind {
        Kind::Write => w,
        Kind::Read => r,
        Kind::Mixed => jj.get("mixed").unwrap_or(r),
    };
    let lat = &dir["lat_ns"];
    let runtime_ms = num(r, "runtime").max(num(w, "runtime"));
    let bw = num(r, "bw_bytes") + num(w, "bw_bytes");
    let io_bytes = (num(r, "io_bytes") + num(w, "io_bytes")) as u64;
    let us = |key: &str| lat.get(key).and_then(Value::as_f64).map(|ns| ns / 1000.0);
    let sync = jj.get("sync").map(|s| &s["lat_ns"]);
    let synced = jj
        .get("sync")
        .and_then(|s| s.get("total_ios"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
        > 0;
    let sync_p = |p| {
        if synced {
            sync.and_then(|s| percentile(s, p))
        } else {
            None
        }
    };
    let job_runtime_s = num(jj, "job_runtime") / 1000.0;
    Ok(FioResult {
        iops: num(r, "iops") + num(w, "iops"),
        read_iops: num(r, "iops"),
        write_iops: num(w, "iops"),
        bw_bytes: bw,
        mib_s: bw / MIB,
        io_bytes,
        runtime_s: runtime_ms / 1000.0,
        lat_p50_us: percentile(lat, 50.0),
        lat_p99_us: percentile(lat, 99.0),
        lat_p999_us: percentile(lat, 99.9),
        lat_max_us: us("max"),
        lat_mean_us: us("mean"),
        sync_lat_p50_us: sync_p(50.0),
        sync_lat_p99_us: sync_p(99.0),
        sync_lat_p999_us: sync_p(99.9),
        fio_cpu_s: (num(jj, "usr_cpu") + num(jj, "sys_cpu")) / 100.0 * job_runtime_s,
    })
}

/// Read and parse fio's JSON output file.
pub fn parse_file(path: &Path, kind: Kind) -> Result<FioResult> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("no fio output {}", path.display()))?;
    parse(&text, kind)
}

/// Several concurrent clients as one: rates and bytes add up, latencies
/// are the worst client's (a conservative view of the aggregate).
pub fn combine(parts: &[FioResult]) -> FioResult {
    fn worst(it: impl Iterator<Item = Option<f64>>) -> Option<f64> {
        it.flatten().reduce(f64::max)
    }
    let n = parts.len().max(1) as f64;
    FioResult {
        iops: parts.iter().map(|p| p.iops).sum(),
        read_iops: parts.iter().map(|p| p.read_iops).sum(),
        write_iops: parts.iter().map(|p| p.write_iops).sum(),
        bw_bytes: parts.iter().map(|p| p.bw_bytes).sum(),
        mib_s: parts.iter().map(|p| p.mib_s).sum(),
        io_bytes: parts.iter().map(|p| p.io_bytes).sum(),
        runtime_s: parts.iter().map(|p| p.runtime_s).fold(0.0, f64::max),
        lat_p50_us: worst(parts.iter().map(|p| p.lat_p50_us)),
        lat_p99_us: worst(parts.iter().map(|p| p.lat_p99_us)),
        lat_p999_us: worst(parts.iter().map(|p| p.lat_p999_us)),
        lat_max_us: worst(parts.iter().map(|p| p.lat_max_us)),
        lat_mean_us: Some(parts.iter().filter_map(|p| p.lat_mean_us).sum::<f64>() / n),
        sync_lat_p50_us: worst(parts.iter().map(|p| p.sync_lat_p50_us)),
        sync_lat_p99_us: worst(parts.iter().map(|p| p.sync_lat_p99_us)),
        sync_lat_p999_us: worst(parts.iter().map(|p| p.sync_lat_p999_us)),
        fio_cpu_s: parts.iter().map(|p| p.fio_cpu_s).sum(),
    }
}

/// Bytes per GiB, for CPU-per-GiB figures.
pub fn gib(bytes: f64) -> f64 {
    bytes / GIB
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::jobs::{FILL, JOBS};

    const SAMPLE: &str = r#"fio: connected to NBD server
{
  "fio version" : "fio-3.33",
  "jobs" : [ {
    "jobname" : "randrw", "error" : 0, "job_runtime" : 2000,
    "usr_cpu" : 10.0, "sys_cpu" : 15.0,
    "read" : { "io_bytes" : 7340032, "bw_bytes" : 3670016, "iops" : 896.0, "runtime" : 2000,
               "lat_ns" : { "min" : 1000, "max" : 900000, "mean" : 50000.0,
                            "percentile" : { "50.000000" : 40000, "99.000000" : 200000, "99.900000" : 800000 } } },
    "write" : { "io_bytes" : 3145728, "bw_bytes" : 1572864, "iops" : 384.0, "runtime" : 2000,
                "lat_ns" : { "min" : 1000, "max" : 1200000, "mean" : 70000.0,
                             "percentile" : { "50.000000" : 60000, "99.000000" : 300000, "99.900000" : 1100000 } } },
    "sync" : { "total_ios" : 0, "lat_ns" : { "min" : 0, "max" : 0, "mean" : 0.0 } },
    "mixed" : { "io_bytes" : 10485760, "bw_bytes" : 5242880, "iops" : 1280.0, "runtime" : 2000,
                "lat_ns" : { "min" : 1000, "max" : 1200000, "mean" : 56000.0,
                             "percentile" : { "50.000000" : 45000, "99.000000" : 250000, "99.900000" : 1000000 } } }
  } ]
}"#;

    #[test]
    fn parse_mixed_with_chatter() {
        let r = parse(SAMPLE, Kind::Mixed).expect("parses");
        assert_eq!(r.iops, 1280.0);
        assert_eq!(r.read_iops, 896.0);
        assert_eq!(r.io_bytes, 10485760);
        assert_eq!(r.mib_s, 5.0);
        assert_eq!(r.runtime_s, 2.0);
        assert_eq!(r.lat_p50_us, Some(45.0));
        assert_eq!(r.lat_p999_us, Some(1000.0));
        assert_eq!(r.lat_max_us, Some(1200.0));
        assert_eq!(r.sync_lat_p99_us, None);
        assert!((r.fio_cpu_s - 0.5).abs() < 1e-9);
        let w = parse(SAMPLE, Kind::Write).expect("parses");
        assert_eq!(w.lat_p99_us, Some(300.0));
    }

    #[test]
    fn parse_errors() {
        assert!(parse("fio: connected\n", Kind::Read).is_err());
        assert!(parse("{\"jobs\": []}", Kind::Read).is_err());
        let failed = SAMPLE.replace("\"error\" : 0", "\"error\" : 5");
        let e = parse(&failed, Kind::Read).expect_err("job error");
        assert!(e.to_string().contains("error 5"), "{e}");
    }

    #[test]
    fn combine_clients() {
        let a = parse(SAMPLE, Kind::Mixed).expect("parses");
        let mut b = a.clone();
        b.lat_p999_us = Some(5000.0);
        let c = combine(&[a.clone(), b]);
        assert_eq!(c.iops, 2560.0);
        assert_eq!(c.io_bytes, 2 * a.io_bytes);
        assert_eq!(c.lat_p999_us, Some(5000.0));
        assert_eq!(c.lat_p50_us, Some(45.0));
    }

    #[test]
    fn command_line() {
        let out = Path::new("/tmp/x.json");
        let s = Spec {
            job: &JOBS[1],
            io: Io::Nbd("nbd+unix:///p/v?socket=/s".into()),
            runtime: 10,
            ramp: 2,
            data: Data::Compress50,
            shape: None,
            out,
        };
        let a = s.args();
        for want in [
            "--ioengine=nbd",
            "--uri=nbd+unix:///p/v?socket=/s",
            "--output-format=json",
            "--output=/tmp/x.json",
            "--verify_state_save=0",
            "--fsync=1",
            "--runtime=10",
            "--ramp_time=2",
            "--refill_buffers=1",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing in {a:?}");
        }
        assert!(!a.iter().any(|x| x.starts_with("--size")));
        let f = Spec {
            job: &FILL,
            io: Io::File("/img".into(), 1 << 30),
            shape: Some((1, 4)),
            data: Data::Random,
            ..s
        };
        let a = f.args();
        assert!(a.iter().any(|x| x == "--size=1073741824"));
        assert!(a.iter().any(|x| x == "--iodepth=4"));
        assert!(!a.iter().any(|x| x.starts_with("--runtime")));
        let sync_file = Spec {
            job: &JOBS[1],
            ..f.clone()
        };
        let a = sync_file.args();
        assert!(a.iter().any(|x| x == "--fdatasync=1"));
        assert!(!a.iter().any(|x| x == "--fsync=1"));
    }
}
