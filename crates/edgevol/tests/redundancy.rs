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

/// fio over NBD on volume p/v: `size` bytes from `offset`, 1 MiB writes
/// with crc32c headers, written and verified (or only verified).
fn fio_region(d: &Daemon, name: &str, offset: &str, size: &str, verify_only: bool) {
    let mode = if verify_only {
        "--verify_only=1"
    } else {
        "--do_verify=1"
    };
    fio_ok(
        d,
        name,
        &[
            "--rw=write",
            "--bs=1m",
            "--iodepth=4",
            "--verify=crc32c",
            &format!("--offset={offset}"),
            &format!("--size={size}"),
            mode,
        ],
    );
}

#[test]
fn pool_grows_online_by_a_group_and_by_expanding_its_devices() {
    let mut d = Daemon::start();
    let f = |n: &str| d.path(n).display().to_string();
    let (a, b, c, e) = (f("a.img"), f("b.img"), f("c.img"), f("e.img"));
    d.ok(&["pool", "create", "p", "mirror", &a, &b, "--size", "256M"]);
    d.ok(&[
        "volume",
        "create",
        "p/v",
        "--size",
        "1G",
        "-o",
        "compression=off",
    ]);
    let usable = |st: &serde_json::Value| st["usable"].as_u64().expect("usable") >> 20;
    let st = d.pool_status("p");
    let (size0, usable0) = (st["size"].as_u64().expect("size"), usable(&st));
    // Add a mirror while fio writes and verifies: no client error.
    let adder = {
        let (c, e) = (c.clone(), e.clone());
        let cli = d.cli_command();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut cmd = cli;
            run_ok(cmd.args(["pool", "add", "p", "mirror", &c, &e]))
        })
    };
    fio_region(&d, "during-add", "0", "64m", false);
    let said = adder.join().expect("adder");
    assert!(said.contains("added"), "{said}");
    let st = d.pool_status("p");
    let size1 = st["size"].as_u64().expect("size");
    assert_eq!(st["state"], "ONLINE", "{st}");
    assert_eq!(st["groups"].as_array().map(Vec::len), Some(2), "{st}");
    assert!(size1 > size0 + (200 << 20), "{size0} -> {size1}");
    // More data than the first group could ever hold (MiB from here).
    let (usable1, region) = (usable(&st), usable0);
    assert!(64 + region > usable0 && 64 + region + 32 < usable1, "{st}");
    let past = format!("{region}m");
    fio_region(&d, "past-old-size", "64m", &past, false);
    // Wrong adds are refused with a reason.
    let x = f("x.img");
    let err = d.fail(&["pool", "add", "p", &x]);
    assert!(err.contains("--force"), "{err}");
    let err = d.fail(&["pool", "add", "p", "mirror", &a, &x]);
    assert!(err.contains("already"), "{err}");
    // Grow every file; the pool takes the space in online.
    let said = d.ok(&["pool", "online", "p", "--expand"]);
    assert!(said.contains("nothing to expand"), "{said}");
    for p in [&a, &b, &c, &e] {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .expect("open");
        file.set_len(512 << 20).expect("grow file");
    }
    // One group by one of its devices, then the rest.
    let said = d.ok(&["pool", "online", "p", &c, "--expand"]);
    assert!(said.contains("group 1 grew"), "{said}");
    let said = d.ok(&["pool", "online", "p", "-e"]);
    assert!(
        said.contains("group 0 grew") && !said.contains("group 1"),
        "{said}"
    );
    let st = d.pool_status("p");
    let size2 = st["size"].as_u64().expect("size");
    assert!(size2 > size1 + (400 << 20), "{size1} -> {size2}");
    // Again more than fitted before.
    let (at, third) = (format!("{}m", 64 + region), 256);
    assert!(64 + region + third > usable1 && 64 + region + third + 32 < usable(&st));
    fio_region(&d, "after-expand", &at, "256m", false);
    d.ok(&["pool", "check", "p"]);
    // Everything survives a restart (and a crash).
    d.kill9();
    d.restart();
    let st = d.pool_status("p");
    assert_eq!(st["state"], "ONLINE", "{st}");
    assert_eq!(st["size"].as_u64(), Some(size2), "{st}");
    fio_region(&d, "during-add", "0", "64m", true);
    fio_region(&d, "past-old-size", "64m", &past, true);
    fio_region(&d, "after-expand", &at, "256m", true);
    d.ok(&["pool", "check", "p"]);
    d.finish(1);
}

/// A pool on a real block device: `pool status --json` carries the
/// drive's SMART report (here: why there is none — loop devices have no
/// SMART — when smartctl is installed), and a device resized under the
/// pool is taken in by `pool online --expand`.
#[test]
fn block_device_health_and_online_expand() {
    let mut d = Daemon::start();
    let file = d.path("loop.img");
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(256 << 20))
        .expect("backing file");
    let Some(lo) = Loop::new(&file) else {
        return;
    };
    let plain = d.path("plain.img").display().to_string();
    d.ok(&["pool", "create", "p", &lo.dev, "--size", "256M"]);
    d.ok(&["pool", "add", "p", &plain]);
    let st = d.pool_status("p");
    let dev = |st: &serde_json::Value, path: &str| {
        st["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .find(|x| x["path"] == path)
            .cloned()
            .expect("device listed")
    };
    let (blk, file_dev) = (dev(&st, &lo.dev), dev(&st, &plain));
    assert_eq!(blk["block_device"], true, "{blk}");
    assert_eq!(file_dev["block_device"], false, "{file_dev}");
    assert!(file_dev.get("smart").is_none(), "{file_dev}");
    let smartctl = ["/usr/sbin/smartctl", "/sbin/smartctl"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    if smartctl {
        let smart = &blk["smart"];
        assert!(smart["checked_at"].as_u64().is_some_and(|t| t > 0), "{blk}");
        // A loop device has no SMART: the report says why.
        assert!(
            smart["passed"].is_boolean() || smart["error"].is_string(),
            "{blk}"
        );
        let text = d.ok(&["pool", "status", "p"]);
        assert!(text.contains("health (SMART)"), "{text}");
    } else {
        eprintln!("smartctl not installed: no SMART report expected");
        assert!(blk.get("smart").is_none(), "{blk}");
    }
    // Resize the block device under the pool, then expand.
    d.ok(&[
        "volume",
        "create",
        "p/v",
        "--size",
        "512M",
        "-o",
        "compression=off",
    ]);
    fio_region(&d, "before", "0", "96m", false);
    let size0 = st["size"].as_u64().expect("size");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(512 << 20))
        .expect("grow backing file");
    lo.refresh();
    let said = d.ok(&["pool", "online", "p", &lo.dev, "--expand"]);
    assert!(said.contains("group 0 grew"), "{said}");
    let st = d.pool_status("p");
    assert_eq!(dev(&st, &lo.dev)["size"].as_u64(), Some(512 << 20), "{st}");
    assert!(
        st["size"].as_u64().expect("size") >= size0 + (240 << 20),
        "{st}"
    );
    fio_region(&d, "after", "96m", "256m", false);
    d.stop();
    d.restart();
    fio_region(&d, "before", "0", "96m", true);
    fio_region(&d, "after", "96m", "256m", true);
    d.ok(&["pool", "check", "p"]);
    d.finish(1);
}
