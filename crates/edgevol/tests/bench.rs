//! `edgevol bench --quick`: the smoke run CI executes. It must produce
//! numbers for every job and target, a chart, and leave no scratch behind.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

#[test]
fn quick_bench_reports_every_job() {
    fio();
    let out = tempfile::tempdir().expect("tempdir");
    let scratch = tempfile::tempdir().expect("tempdir");
    let res = out.path().join("res");
    let mut c = Command::new(bin());
    c.args(["bench", "--quick", "--targets", "native,edgevol", "--out"])
        .arg(&res)
        .arg("--scratch")
        .arg(scratch.path());
    let o = output_timeout(&mut c, Duration::from_secs(150))
        .expect("edgevol bench --quick did not finish within 150 s");
    assert!(o.status.success(), "bench failed:\n{}", show(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("JOB") && stdout.contains("x qsd-raw"),
        "{stdout}"
    );

    let text = std::fs::read_to_string(res.join("results.json")).expect("results.json");
    let doc: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(doc["schema"], "edgevol-bench/1");
    let jobs: Vec<&str> = doc["meta"]["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        jobs,
        ["randwrite-4k-4x16", "randread-4k-4x16", "seqwrite-128k-qd8"]
    );
    let summary = doc["summary"].as_array().expect("summary");
    for target in ["native", "edgevol"] {
        for job in jobs.iter().chain(["fill-seq-1m-qd8"].iter()) {
            let row = summary
                .iter()
                .find(|r| r["job"] == *job && r["target"] == target && r.get("scenario").is_none())
                .unwrap_or_else(|| panic!("no summary row for {job} on {target}:\n{text}"));
            for key in [
                "iops",
                "mib_s",
                "lat_p50_us",
                "lat_p99_us",
                "lat_p999_us",
                "lat_max_us",
            ] {
                let v = row[key].as_f64();
                assert!(
                    v.is_some_and(|v| v > 0.0),
                    "{job} on {target}: {key} is {:?}:\n{row}",
                    row[key]
                );
            }
            assert_eq!(row["passes"], 1, "{row}");
            if target == "edgevol" {
                for key in ["srv_cpu_s_per_gib", "srv_hwm_mib"] {
                    assert!(row[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {row}");
                }
                if *job != "fill-seq-1m-qd8" {
                    let r = row["ratios"]["native"].as_f64();
                    assert!(r.is_some_and(|r| r > 0.0), "ratio vs native: {row}");
                }
            }
        }
    }
    // edgevol's matrix jobs ran with a snapshot of the volume present.
    assert_eq!(doc["meta"]["edgevol_snapshot_present"], "bench-present");
    let records = doc["records"].as_array().expect("records");
    for job in &jobs {
        let rec = records
            .iter()
            .find(|r| r["job"] == *job && r["target"] == "edgevol" && r.get("scenario").is_none())
            .unwrap_or_else(|| panic!("no record of {job} on edgevol"));
        assert_eq!(rec["facts"]["snapshot_present"], "bench-present", "{rec}");
        // Write jobs too run on the filled volume (`--writes-on filled`),
        // so the snapshot holds data they overwrite: afterwards the pool
        // stores more than the volume references.
        assert_eq!(rec["state"], "filled", "{rec}");
        if job.starts_with("randwrite") {
            let f = &rec["facts"];
            let (data, referenced) = (f["pool_data"].as_u64(), f["pool_referenced"].as_u64());
            assert!(
                data.zip(referenced).is_some_and(|(d, r)| d > r),
                "the kept snapshot holds overwritten data: {f}"
            );
        }
    }
    assert_eq!(doc["meta"]["writes_on"], "filled");
    // Every run left its fio JSON, and the edgevol runs their server log.
    let fio_dir = res.join("fio");
    assert!(fio_dir.join("p0-edgevol-randwrite-4k-4x16.json").is_file());
    assert!(fio_dir
        .join("p0-edgevol-randwrite-4k-4x16.server.log")
        .is_file());
    let svg = std::fs::read_to_string(res.join("chart.svg")).expect("chart.svg");
    assert!(svg.starts_with("<svg") && svg.contains("edgevol"));
    // The run directory in the scratch directory is gone.
    let left: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("scratch")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "scratch not cleaned up: {left:?}");
}

#[test]
fn bench_without_fio_fails_clearly() {
    let out = tempfile::tempdir().expect("tempdir");
    let mut c = Command::new(bin());
    c.args(["bench", "--quick", "--out"])
        .arg(out.path())
        .env("PATH", out.path());
    let o = output(&mut c);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("fio is not installed"), "{err}");
}
