//! The results: terminal tables and the JSON document.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::stats::{Record, Row};
use crate::table::Table;

/// The JSON file `edgevol bench` writes (rewritten after every run, so an
/// interrupted benchmark keeps what it measured).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Document {
    /// `edgevol-bench/1`.
    pub schema: String,
    /// Settings, host, tool versions, start and end time.
    pub meta: Value,
    /// Skipped targets and scenarios, with the reason.
    pub notes: Vec<String>,
    /// Medians and ratios per (scenario, job, target).
    pub summary: Vec<Row>,
    /// Every single run.
    pub records: Vec<Record>,
}

impl Document {
    /// Write atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

fn opt(v: Option<f64>, f: fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

/// IOPS and MiB/s: whole numbers above 100, one decimal below.
pub fn rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Latency in µs: whole numbers, one decimal below 10.
pub fn micros(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// CPU seconds per GiB, three significant-ish digits.
pub fn cpu(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A ratio: `0.87x`.
pub fn ratio(v: f64) -> String {
    format!("{v:.2}x")
}

fn mib(v: f64) -> String {
    format!("{v:.0}")
}

/// The matrix (and fill) table: one block of rows per job.
pub fn matrix_table(rows: &[Row]) -> String {
    let mut t = Table::new(&[
        "JOB",
        "TARGET",
        ">IOPS",
        ">MiB/s",
        ">p50",
        ">p99",
        ">p99.9",
        ">max",
        ">CPU s/GiB",
        ">RSS MiB",
        ">x qsd-raw",
        ">x native",
        ">n",
    ]);
    let mut last_job = "";
    for r in rows.iter().filter(|r| r.scenario.is_none()) {
        let job = if r.job == last_job { "" } else { &r.job };
        last_job = &r.job;
        t.row(line(job, &r.target, r, &["qsd-raw", "native"]));
    }
    t.render(true)
}

/// The scenario table: variants of each scenario against its first one.
pub fn scenario_table(rows: &[Row], notes: &dyn Fn(&Row) -> String) -> String {
    let mut t = Table::new(&[
        "SCENARIO",
        "VARIANT",
        ">IOPS",
        ">MiB/s",
        ">p50",
        ">p99",
        ">p99.9",
        ">max",
        ">CPU s/GiB",
        ">RSS MiB",
        ">x baseline",
        ">n",
        "NOTES",
    ]);
    let mut last = "";
    for r in rows.iter().filter(|r| r.scenario.is_some()) {
        let s = r.scenario.as_deref().unwrap_or("");
        let shown = if s == last { "" } else { s };
        last = s;
        let mut cells = line(shown, &r.job, r, &["baseline"]);
        cells.push(notes(r));
        t.row(cells);
    }
    t.render(true)
}

fn line(first: &str, second: &str, r: &Row, ratios: &[&str]) -> Vec<String> {
    let mut cells = vec![first.to_string(), second.to_string()];
    if r.iops.is_none() {
        cells.push("FAILED".into());
        cells.extend(std::iter::repeat_n(String::new(), 7 + ratios.len()));
    } else {
        cells.extend([
            opt(r.iops, rate),
            opt(r.mib_s, rate),
            opt(r.lat_p50_us, micros),
            opt(r.lat_p99_us, micros),
            opt(r.lat_p999_us, micros),
            opt(r.lat_max_us, micros),
            opt(r.srv_cpu_s_per_gib, cpu),
            opt(r.srv_hwm_mib, mib),
        ]);
        for k in ratios {
            cells.push(opt(r.ratios.get(*k).copied(), ratio));
        }
    }
    let n = if r.failed > 0 {
        format!("{}/{}", r.passes, r.passes + r.failed)
    } else {
        r.passes.to_string()
    };
    cells.push(n);
    cells
}

/// Errors of rows with no successful pass, one line each.
pub fn failures(rows: &[Row]) -> String {
    rows.iter()
        .filter(|r| r.iops.is_none())
        .map(|r| {
            let what = match &r.scenario {
                Some(s) => format!("{s}/{}", r.job),
                None => format!("{} {}", r.job, r.target),
            };
            let e = r.error.as_deref().unwrap_or("no result");
            let e: String = e.chars().take(300).collect();
            format!("FAILED {what}: {e}\n")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(job: &str, target: &str, iops: Option<f64>) -> Row {
        let mut r = Row {
            job: job.into(),
            target: target.into(),
            passes: 3,
            iops,
            mib_s: iops.map(|i| i / 256.0),
            lat_p50_us: Some(8.25),
            lat_p99_us: Some(120.4),
            lat_p999_us: Some(400.0),
            lat_max_us: Some(12000.0),
            srv_cpu_s_per_gib: Some(1.234),
            srv_hwm_mib: Some(42.4),
            ..Row::default()
        };
        r.ratios.insert("qsd-raw".into(), 0.8734);
        r
    }

    #[test]
    fn formats() {
        assert_eq!(rate(12345.6), "12346");
        assert_eq!(rate(42.25), "42.2");
        assert_eq!(micros(8.25), "8.2");
        assert_eq!(micros(120.4), "120");
        assert_eq!(cpu(1.234), "1.23");
        assert_eq!(ratio(0.8734), "0.87x");
    }

    #[test]
    fn table_alignment() {
        let mut t = Table::new(&["A", ">B"]);
        t.row(vec!["xx".into(), "1".into()]);
        t.row(vec!["y".into(), "100".into()]);
        assert_eq!(t.render(true), "A     B\n-------\nxx    1\ny   100\n");
    }

    #[test]
    fn matrix() {
        let mut failed = row("j1", "qsd-qcow2", None);
        failed.passes = 0;
        failed.failed = 2;
        failed.error = Some("server: qemu-img missing".into());
        let rows = vec![
            row("j1", "edgevol", Some(51200.0)),
            failed,
            row("j2", "edgevol", Some(10.0)),
        ];
        let s = matrix_table(&rows);
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines[0].starts_with("JOB") && lines[0].ends_with('n'));
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(cells[..3], ["j1", "edgevol", "51200"], "{s}");
        assert!(
            lines[2].contains("51200") && lines[2].contains("0.87x"),
            "{s}"
        );
        assert!(
            lines[2].contains("12000") && lines[2].contains("1.23"),
            "{s}"
        );
        assert!(
            lines[3].starts_with("     qsd-qcow2") && lines[3].contains("FAILED"),
            "{s}"
        );
        assert!(lines[3].trim_end().ends_with("0/2"), "{s}");
        assert!(lines[4].starts_with("j2"), "{s}");
        let f = failures(&rows);
        assert_eq!(f, "FAILED j1 qsd-qcow2: server: qemu-img missing\n");
    }

    #[test]
    fn scenarios() {
        let mut a = row("before", "edgevol", Some(100.0));
        a.scenario = Some("snapshot".into());
        a.ratios.clear();
        let mut b = row("after", "edgevol", Some(50.0));
        b.scenario = Some("snapshot".into());
        b.ratios.clear();
        b.ratios.insert("baseline".into(), 0.5);
        let s = scenario_table(&[a, b], &|r| format!("note-{}", r.job));
        assert!(s.contains("0.50x") && s.contains("note-after"), "{s}");
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines[2].starts_with("snapshot  before"));
        assert!(lines[3].starts_with("          after"));
    }
}
