//! fio with its NBD engine: concurrent random writes with verification over
//! distinct regions, and a mixed random read/write job with verification.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

/// Run fio with `args` (plus JSON output to a file) in the test's directory;
/// returns the parsed jobs after checking that none reported an error.
fn run_fio(d: &Daemon, name: &str, args: &[String]) -> Vec<Value> {
    let out = d.path(&format!("{name}.json"));
    let mut c = Command::new(fio());
    // fio's nbd engine prints to stdout; keep the JSON in a file.
    c.current_dir(d.dir.path())
        .arg(format!("--name={name}"))
        .args([
            "--ioengine=nbd",
            "--output-format=json",
            "--verify_state_save=0",
        ])
        .arg(format!("--output={}", out.display()))
        .args(args);
    let o = output(&mut c);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        o.status.success(),
        "fio {name} failed:\n{}\n--- json:\n{text}",
        show(&o)
    );
    // fio may print notes before the JSON document.
    let start = text
        .find('{')
        .unwrap_or_else(|| panic!("fio {name} wrote no JSON:\n{text}"));
    let v: Value = serde_json::from_str(&text[start..])
        .unwrap_or_else(|e| panic!("fio {name} JSON: {e}:\n{text}"));
    let jobs = v["jobs"].as_array().expect("jobs").clone();
    for j in &jobs {
        assert_eq!(j["error"], 0, "fio job reported an error: {j}");
    }
    jobs
}

#[test]
fn randwrite_verify_four_jobs_distinct_regions() {
    let d = Daemon::start();
    d.create_pool("p", "1G", Some("1M"));
    d.create_volume("p/v", 64 * MIB);
    let per_job = 8 * MIB;
    let jobs = run_fio(
        &d,
        "randwrite",
        &[
            format!("--uri={}", d.uri("p/v")),
            "--numjobs=4".into(),
            "--iodepth=16".into(),
            "--rw=randwrite".into(),
            "--bs=4k".into(),
            format!("--size={per_job}"),
            format!("--offset_increment={per_job}"),
            "--verify=crc32c".into(),
            "--do_verify=1".into(),
            "--verify_fatal=1".into(),
        ],
    );
    assert_eq!(jobs.len(), 4, "one result per job");
    for j in &jobs {
        assert_eq!(
            j["write"]["io_bytes"], per_job,
            "each job writes its region: {j}"
        );
        // The verification phase reads everything back.
        assert_eq!(
            j["read"]["io_bytes"], per_job,
            "each job verifies its region: {j}"
        );
    }
    // 32 MiB written in distinct regions: that much is allocated.
    let data = d.pool_num("p", "data");
    assert!(data >= 32 * MIB, "pool data {data} after writing 32 MiB");
    let referenced = d.vol_num("p/v", "referenced");
    assert_eq!(
        referenced,
        32 * MIB,
        "volume referenced after writing 32 MiB"
    );
    d.finish(1);
}

#[test]
fn randrw_mixed_verify_over_tcp_and_unix() {
    let d = Daemon::start_tcp();
    d.create_pool("p", "1G", Some("1M"));
    d.create_volume("p/v", 128 * MIB);
    let region = 16 * MIB;
    let common = |uri: String, offset: u64| -> Vec<String> {
        vec![
            format!("--uri={uri}"),
            "--numjobs=2".into(),
            "--iodepth=16".into(),
            "--rw=randrw".into(),
            "--rwmixread=50".into(),
            "--bsrange=4k-64k".into(),
            "--bs_unaligned=0".into(),
            format!("--offset={offset}"),
            format!("--size={region}"),
            format!("--offset_increment={region}"),
            "--verify=crc32c".into(),
            "--do_verify=1".into(),
            "--verify_fatal=1".into(),
        ]
    };
    let a = run_fio(&d, "mixed-unix", &common(d.uri("p/v"), 0));
    let b = run_fio(&d, "mixed-tcp", &common(d.tcp_uri("p/v"), 2 * region));
    for j in a.iter().chain(&b) {
        let w = j["write"]["io_bytes"].as_u64().expect("write bytes");
        let r = j["read"]["io_bytes"].as_u64().expect("read bytes");
        assert!(w > 0 && r > 0, "mixed job should read and write: {j}");
    }
    // Random 4k-64k writes: the pool holds some data, the map shows it.
    let map = nbd_map(&d.uri("p/v"));
    assert!(
        map.iter().any(|e| e.kind == DATA),
        "no data after fio: {map:?}"
    );
    // Nothing outside the four regions was written.
    for e in map.iter().filter(|e| e.kind == DATA) {
        assert!(
            e.offset + e.length <= 4 * region,
            "data outside fio's regions: {e:?}"
        );
    }
    d.finish(1);
}
