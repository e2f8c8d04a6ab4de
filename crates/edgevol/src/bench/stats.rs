//! Records of single runs, and their aggregation over passes: medians, and
//! ratios taken per pass (target and baseline measured in the same pass)
//! before the median, so a slow pass does not skew a comparison.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::fio::FioResult;

/// One fio run (or several concurrent clients) against one target.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    /// Pass number, from 0.
    pub pass: u32,
    /// Scenario name (None for the matrix and fills).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scenario: Option<String>,
    /// Job name (for scenarios: the variant).
    pub job: String,
    /// Target name.
    pub target: String,
    /// Image state: fresh, filled, ...
    pub state: String,
    /// fio's figures.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fio: Option<FioResult>,
    /// Server CPU seconds (user+system, all threads) in the measured window.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub srv_cpu_s: Option<f64>,
    /// Server CPU, % of one core, in the window.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub srv_cpu_pct: Option<f64>,
    /// Server CPU seconds per GiB moved.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub srv_cpu_s_per_gib: Option<f64>,
    /// Server peak RSS (VmHWM) just before it was stopped, MiB.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub srv_hwm_mib: Option<f64>,
    /// Server RSS at the same moment, MiB.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub srv_rss_mib: Option<f64>,
    /// Length of the CPU sampling window, s.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub window_s: Option<f64>,
    /// Seconds from spawning the server to its export answering.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub start_s: Option<f64>,
    /// Seconds the server took to stop.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stop_s: Option<f64>,
    /// The server's exit status.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub server_exit: Option<String>,
    /// Bytes the image occupies on the file system after the job.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub disk_bytes: Option<u64>,
    /// Scenario facts (pool space, snapshot time, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub facts: BTreeMap<String, Value>,
    /// Why the run failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl Record {
    /// IOPS if the run succeeded.
    pub fn iops(&self) -> Option<f64> {
        if self.error.is_some() {
            return None;
        }
        self.fio.as_ref().map(|f| f.iops)
    }
}

/// Median (the mean of the two middle values for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Median over passes of `iops(a) / iops(b)` where both ran in that pass.
pub fn ratio_median<'a>(
    a: impl Iterator<Item = &'a Record>,
    b: &[&'a Record],
) -> (Option<f64>, Vec<f64>) {
    let mut per_pass = Vec::new();
    for ra in a {
        let Some(x) = ra.iops() else { continue };
        let base = b
            .iter()
            .find(|rb| rb.pass == ra.pass)
            .and_then(|rb| rb.iops());
        if let Some(y) = base.filter(|y| *y > 0.0) {
            per_pass.push(x / y);
        }
    }
    (median(&per_pass), per_pass)
}

/// One line of the summary: a (scenario, job, target) over all passes.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Row {
    /// Scenario, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scenario: Option<String>,
    /// Job (or scenario variant).
    pub job: String,
    /// Target.
    pub target: String,
    /// Passes that succeeded.
    pub passes: usize,
    /// Passes that failed.
    pub failed: usize,
    /// Median IOPS.
    pub iops: Option<f64>,
    /// Median MiB/s.
    pub mib_s: Option<f64>,
    /// Median latency percentiles, µs.
    pub lat_p50_us: Option<f64>,
    /// p99.
    pub lat_p99_us: Option<f64>,
    /// p99.9.
    pub lat_p999_us: Option<f64>,
    /// Worst latency over all passes, µs (stalls).
    pub lat_max_us: Option<f64>,
    /// Median flush latency p99 (flushing jobs), µs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sync_lat_p99_us: Option<f64>,
    /// Median server CPU seconds per GiB moved.
    pub srv_cpu_s_per_gib: Option<f64>,
    /// Median server CPU % of one core.
    pub srv_cpu_pct: Option<f64>,
    /// Highest server peak RSS over passes, MiB.
    pub srv_hwm_mib: Option<f64>,
    /// (max-min)/median of IOPS over passes.
    pub spread: Option<f64>,
    /// Median per-pass IOPS ratio against each baseline (`qsd-raw`,
    /// `native`; `baseline` for a scenario's first variant).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub ratios: BTreeMap<String, f64>,
    /// The per-pass ratios behind `ratios`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub ratios_per_pass: BTreeMap<String, Vec<f64>>,
    /// The first error, when no pass succeeded.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// Fills are reported but are never a scenario's baseline.
const FILL_JOB: &str = super::jobs::FILL.name;

/// Baselines every matrix row is compared with.
pub const BASELINES: [&str; 2] = ["qsd-raw", "native"];

fn med_of(rs: &[&Record], f: impl Fn(&Record) -> Option<f64>) -> Option<f64> {
    median(&rs.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
}

/// Aggregate records into rows, in first-seen order of (scenario, job, target).
pub fn summarize(records: &[Record]) -> Vec<Row> {
    let mut keys: Vec<(Option<String>, String, String)> = Vec::new();
    for r in records {
        let k = (r.scenario.clone(), r.job.clone(), r.target.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let group = |s: &Option<String>, j: &str, t: &str| -> Vec<&Record> {
        records
            .iter()
            .filter(|r| &r.scenario == s && r.job == j && r.target == t)
            .collect()
    };
    let mut rows = Vec::new();
    for (scenario, job, target) in &keys {
        let rs = group(scenario, job, target);
        let ok: Vec<&Record> = rs.iter().copied().filter(|r| r.iops().is_some()).collect();
        let fio = |f: fn(&FioResult) -> Option<f64>| {
            med_of(&ok, move |r: &Record| r.fio.as_ref().and_then(f))
        };
        let iops_v: Vec<f64> = ok.iter().filter_map(|r| r.iops()).collect();
        let iops = median(&iops_v);
        let spread = match (iops, iops_v.len()) {
            (Some(m), n) if n > 1 && m > 0.0 => {
                let max = iops_v.iter().copied().fold(f64::MIN, f64::max);
                let min = iops_v.iter().copied().fold(f64::MAX, f64::min);
                Some((max - min) / m)
            }
            _ => None,
        };
        let mut row = Row {
            scenario: scenario.clone(),
            job: job.clone(),
            target: target.clone(),
            passes: ok.len(),
            failed: rs.len() - ok.len(),
            iops,
            mib_s: fio(|f| Some(f.mib_s)),
            lat_p50_us: fio(|f| f.lat_p50_us),
            lat_p99_us: fio(|f| f.lat_p99_us),
            lat_p999_us: fio(|f| f.lat_p999_us),
            lat_max_us: ok
                .iter()
                .filter_map(|r| r.fio.as_ref().and_then(|f| f.lat_max_us))
                .reduce(f64::max),
            sync_lat_p99_us: fio(|f| f.sync_lat_p99_us),
            srv_cpu_s_per_gib: med_of(&ok, |r| r.srv_cpu_s_per_gib),
            srv_cpu_pct: med_of(&ok, |r| r.srv_cpu_pct),
            srv_hwm_mib: ok.iter().filter_map(|r| r.srv_hwm_mib).reduce(f64::max),
            spread,
            error: if ok.is_empty() {
                rs.iter().find_map(|r| r.error.clone())
            } else {
                None
            },
            ..Row::default()
        };
        let bases: Vec<(String, Vec<&Record>)> = match scenario {
            None => BASELINES
                .iter()
                .filter(|b| *b != target)
                .map(|b| (b.to_string(), group(&None, job, b)))
                .collect(),
            Some(_) if job == FILL_JOB => Vec::new(),
            Some(s) => {
                let first = keys
                    .iter()
                    .find(|k| k.0.as_deref() == Some(s) && k.1 != FILL_JOB);
                match first {
                    Some((_, j0, t0)) if (j0, t0) != (job, target) => {
                        vec![("baseline".to_string(), group(scenario, j0, t0))]
                    }
                    _ => Vec::new(),
                }
            }
        };
        for (name, base) in bases {
            if base.is_empty() {
                continue;
            }
            let (m, per_pass) = ratio_median(rs.iter().copied(), &base);
            if let Some(m) = m {
                row.ratios.insert(name.clone(), m);
                row.ratios_per_pass.insert(name, per_pass);
            }
        }
        rows.push(row);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pass: u32, job: &str, target: &str, iops: f64) -> Record {
        Record {
            pass,
            job: job.into(),
            target: target.into(),
            fio: Some(FioResult {
                iops,
                mib_s: iops / 256.0,
                lat_max_us: Some(iops / 10.0),
                ..FioResult::default()
            }),
            srv_hwm_mib: Some(10.0 + pass as f64),
            ..Record::default()
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }

    #[test]
    fn per_pass_ratios() {
        // A noisy machine: pass 1 is twice as slow for everybody.
        let recs = vec![
            rec(0, "j", "qsd-raw", 100.0),
            rec(0, "j", "edgevol", 150.0),
            rec(1, "j", "qsd-raw", 50.0),
            rec(1, "j", "edgevol", 75.0),
            rec(2, "j", "qsd-raw", 100.0),
            rec(2, "j", "edgevol", 120.0),
        ];
        let rows = summarize(&recs);
        assert_eq!(rows.len(), 2);
        let ev = &rows[1];
        assert_eq!(ev.target, "edgevol");
        assert_eq!(ev.passes, 3);
        assert_eq!(ev.iops, Some(120.0));
        // Ratios 1.5, 1.5, 1.2: the median of ratios, not the ratio of medians (1.2).
        assert_eq!(ev.ratios.get("qsd-raw"), Some(&1.5));
        assert_eq!(ev.ratios_per_pass["qsd-raw"], vec![1.5, 1.5, 1.2]);
        assert!(!ev.ratios.contains_key("native"));
        assert!(rows[0].ratios.is_empty());
        assert_eq!(ev.lat_max_us, Some(15.0));
        assert_eq!(ev.srv_hwm_mib, Some(12.0));
        let spread = ev.spread.expect("spread");
        assert!((spread - 75.0 / 120.0).abs() < 1e-9);
    }

    #[test]
    fn failures_and_missing_baselines() {
        let mut bad = rec(1, "j", "qsd-raw", 0.0);
        bad.error = Some("boom".into());
        let recs = vec![
            rec(0, "j", "qsd-raw", 100.0),
            rec(0, "j", "edgevol", 50.0),
            bad,
            rec(1, "j", "edgevol", 80.0),
        ];
        let rows = summarize(&recs);
        assert_eq!(rows[0].passes, 1);
        assert_eq!(rows[0].failed, 1);
        assert_eq!(rows[0].error, None);
        // Only pass 0 has both.
        assert_eq!(rows[1].ratios_per_pass["qsd-raw"], vec![0.5]);
        let mut only_bad = rec(0, "k", "native", 0.0);
        only_bad.error = Some("fio missing".into());
        let rows = summarize(&[only_bad]);
        assert_eq!(rows[0].iops, None);
        assert_eq!(rows[0].error.as_deref(), Some("fio missing"));
    }

    #[test]
    fn scenario_baseline() {
        let mut recs = vec![
            rec(0, "fill-seq-1m-qd8", "edgevol", 10.0),
            rec(0, "before", "edgevol", 100.0),
            rec(0, "after", "edgevol", 40.0),
        ];
        for r in &mut recs {
            r.scenario = Some("snapshot".into());
        }
        let rows = summarize(&recs);
        assert!(rows[0].ratios.is_empty());
        assert!(rows[1].ratios.is_empty());
        assert_eq!(rows[2].ratios.get("baseline"), Some(&0.4));
    }
}
