//! Redundant pools through the daemon, with real files and fio over NBD:
//! a corrupted mirror side while fio verifies (zero client errors, checksum
//! errors counted, scrub repairs, `pool check` clean); a parity1 drive file
//! removed during writes (FAULTED, DEGRADED, no client error), replaced and
//! resilvered back to ONLINE with the data verified.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn fio_ok(d: &Daemon, name: &str, args: &[&str]) {
    let mut c = Command::new(fio());
    c.current_dir(d.dir.path())
        .arg(format!("--name={name}"))
        .args(["--ioengine=nbd", "--verify_state_save=0", "--eta=never"])
        .arg(format!("--uri={}", d.uri("p/v")))
        .args(args);
    let o = output(&mut c);
    assert!(o.status.success(), "fio {name} failed:\n{}", show(&o));
}

/// The 32 MiB fio job: random 16 KiB writes with crc32c headers.
const JOB: [&str; 6] = [
    "--rw=randwrite",
    "--bs=16k",
    "--size=32m",
    "--iodepth=8",
    "--verify=crc32c",
    "--randrepeat=1",
];

/// Write the job's data, then read it back verified.
fn fio_write_verify(d: &Daemon, name: &str) {
    fio_ok(d, name, &[&JOB[..], &["--do_verify=1"]].concat());
}

/// Read the job's data back and verify it (fio's verify-only mode).
fn fio_verify_only(d: &Daemon, name: &str) {
    fio_ok(d, name, &[&JOB[..], &["--verify_only=1"]].concat());
}

fn wait_scan(d: &Daemon, kind: &str) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let st = d.pool_status("p");
        let s = &st[kind];
        if !s.is_null() && s["state"] != "running" {
            return s.clone();
        }
        assert!(Instant::now() < end, "{kind} did not finish: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Flip bytes in the data area of a pool file (every 5th 4 KiB block of
/// the first `len` bytes after the 1 MiB header).
fn corrupt_file(path: &std::path::Path, len: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open pool file");
    let mut off = 1 << 20;
    while off < (1 << 20) + len {
        f.write_all_at(&[0xA5; 16], off + 64).expect("corrupt");
        off += 5 * 4096;
    }
    f.sync_all().expect("sync");
}

#[test]
fn corrupted_mirror_side_heals_under_fio_verify() {
    let d = Daemon::start();
    let (a, b) = (d.path("a.img"), d.path("b.img"));
    d.ok(&[
        "pool",
        "create",
        "p",
        "mirror",
        a.to_str().expect("path"),
        b.to_str().expect("path"),
        "--size",
        "256M",
    ]);
    d.ok(&[
        "volume",
        "create",
        "p/v",
        "--size",
        "64M",
        "-o",
        "compression=off",
    ]);
    fio_write_verify(&d, "fill");
    d.ok(&["pool", "check", "p"]);
    // Rot one side everywhere; clients must not notice.
    corrupt_file(&b, 96 << 20);
    fio_verify_only(&d, "verify-after-rot");
    let st = d.pool_status("p");
    let cksum: u64 = st["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|x| x["checksum_errors"].as_u64().expect("n"))
        .sum();
    assert!(cksum > 0, "no checksum errors counted: {st}");
    d.ok(&["pool", "scrub", "p"]);
    let s = wait_scan(&d, "scrub");
    assert_eq!(s["state"], "finished", "{s}");
    assert_eq!(s["unrecoverable"].as_array().map(Vec::len), Some(0), "{s}");
    d.ok(&["pool", "check", "p"]);
    // The human status shows the mirror and the repair.
    let text = d.ok(&["pool", "status", "p"]);
    assert!(
        text.contains("mirror-0") && text.contains("scrub: finished"),
        "{text}"
    );
    // After the scrub, the rotten side alone holds good data: rot the other.
    corrupt_file(&a, 96 << 20);
    fio_verify_only(&d, "verify-other-side");
    d.finish(1);
}

#[test]
fn parity1_drive_removed_during_writes_then_replaced() {
    let d = Daemon::start();
    let files: Vec<String> = (0..3)
        .map(|i| d.path(&format!("d{i}.img")).display().to_string())
        .collect();
    let mut args = vec!["pool", "create", "p", "parity1"];
    args.extend(files.iter().map(String::as_str));
    args.extend(["--size", "192M"]);
    d.ok(&args);
    d.ok(&[
        "volume",
        "create",
        "p/v",
        "--size",
        "64M",
        "-o",
        "compression=off",
    ]);
    // Remove a drive while fio writes and verifies.
    let victim = files[1].clone();
    let remover = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::remove_file(&victim).expect("remove drive");
    });
    fio_write_verify(&d, "write-during-removal");
    remover.join().expect("remover");
    // The maintenance thread notices within a second or so.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let st = d.pool_status("p");
        if st["state"] == "DEGRADED" {
            assert_eq!(st["devices"][1]["state"], "FAULTED", "{st}");
            break;
        }
        assert!(Instant::now() < end, "pool not DEGRADED: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    fio_verify_only(&d, "verify-degraded");
    let new = d.path("new.img").display().to_string();
    d.ok(&["pool", "replace", "p", &files[1], &new]);
    let r = wait_scan(&d, "resilver");
    assert_eq!(r["state"], "finished", "{r}");
    assert_eq!(d.pool_status("p")["state"], "ONLINE");
    // Data is whole on the new set, across a restart too.
    let mut d = d;
    d.stop();
    d.restart();
    assert_eq!(d.pool_status("p")["state"], "ONLINE");
    fio_verify_only(&d, "verify-after-resilver");
    d.ok(&["pool", "check", "p"]);
    d.finish(1);
}
