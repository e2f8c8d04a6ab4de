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
    d.create_uncompressed_volume("p/v", "64M");
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
    d.create_uncompressed_volume("p/v", "64M");
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
    d.create_uncompressed_volume("p/v", "1G");
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
    d.create_uncompressed_volume("p/v", "512M");
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
    // The health probe has read the healthy device's label area (every
    // second) without finding fault with it.
    std::thread::sleep(Duration::from_millis(1500));
    let st = d.pool_status("p");
    assert_eq!(dev(&st, &lo.dev)["state"], "ONLINE", "{st}");
    assert!(dev(&st, &lo.dev)["reason"].is_null(), "{st}");
    d.stop();
    d.restart();
    fio_region(&d, "before", "0", "96m", true);
    fio_region(&d, "after", "96m", "256m", true);
    d.ok(&["pool", "check", "p"]);
    d.finish(1);
}

/// The JSON progress lines of a `--wait` command (stdout is no terminal):
/// every line an object with numbers, the percentage never going back;
/// the last line.
fn progress_lines(out: &str, phase: &str) -> serde_json::Value {
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in\n{out}")))
        .collect();
    let mut last_pct = 0.0;
    let mut last_phase = String::new();
    for l in &lines {
        let (done, total) = (l["done_bytes"].as_u64(), l["total_bytes"].as_u64());
        assert!(done.is_some() && total.is_some(), "{l}");
        let pct = l["percent"].as_f64().expect("percent");
        if l["phase"] != last_phase.as_str() {
            last_phase = l["phase"].as_str().expect("phase").to_string();
            last_pct = 0.0;
        }
        assert!((last_pct..=100.0).contains(&pct), "{l} after {last_pct}%");
        last_pct = pct;
    }
    let last = lines.last().cloned().expect("at least one progress line");
    assert_eq!(last["phase"], phase, "{out}");
    last
}

fn device<'a>(st: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    st["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|x| x["path"] == path)
        .unwrap_or_else(|| panic!("no device {path} in {st}"))
}

/// Wait (5 s at most, no client I/O) until `path` is no longer ONLINE and
/// pool `pool` is DEGRADED; the device's status.
fn wait_faulted(d: &Daemon, pool: &str, path: &str) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let st = d.pool_status(pool);
        let dev = device(&st, path).clone();
        if st["groups"][0]["state"] == "DEGRADED" && dev["state"] != "ONLINE" {
            return dev;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{path} is still ONLINE (pool not DEGRADED) {:?} after it went: {st}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The README's tour: a mirror drive file removed is FAULTED without
/// client I/O (the health probe); `pool replace --wait` returns when the
/// resilver has finished, so `pool scrub --wait && pool status` right
/// after it works and shows the final state.
#[test]
fn removed_drive_then_replace_wait_and_scrub_wait() {
    let d = Daemon::start();
    let path = |n: &str| d.path(n).display().to_string();
    let (a, b, c) = (path("a.img"), path("b.img"), path("c.img"));
    d.ok(&["pool", "create", "p", "mirror", &a, &b, "--size", "256M"]);
    d.create_uncompressed_volume("p/v", "64M");
    fio_write_verify(&d, "fill");
    std::fs::remove_file(&b).expect("remove drive");
    let dev = wait_faulted(&d, "p", &b);
    assert_eq!(dev["state"], "FAULTED", "{dev}");
    assert!(
        dev["reason"]
            .as_str()
            .is_some_and(|r| r.contains("removed")),
        "{dev}"
    );
    assert!(d.ok(&["pool", "status", "p"]).contains("DEGRADED"));
    fio_verify_only(&d, "verify-degraded");

    let out = d.ok(&["pool", "replace", "p", &b, &c, "--wait"]);
    let last = progress_lines(&out, "resilver");
    assert_eq!(last["state"], "finished", "{out}");
    assert_eq!(last["percent"], 100.0, "{out}");
    let out = d.ok(&["pool", "scrub", "p", "--wait"]);
    let last = progress_lines(&out, "scrub");
    assert_eq!(last["state"], "finished", "{out}");
    assert_eq!(last["unrecoverable"], 0, "{out}");
    let st = d.pool_status("p");
    assert_eq!(st["scrub"]["state"], "finished", "{st}");
    assert_eq!(st["resilver"]["state"], "finished", "{st}");
    assert_eq!(st["groups"][0]["state"], "ONLINE", "{st}");
    assert_eq!(device(&st, &c)["state"], "ONLINE", "{st}");
    let text = d.ok(&["pool", "status", "p"]);
    assert!(text.contains("scrub: finished"), "{text}");

    // A scrub asked for while a resilver runs: with --wait it waits for
    // the resilver, then scrubs; without, it says what runs.
    let e = path("e.img");
    d.ok(&["pool", "replace", "p", &c, &e]);
    let o = d.cli(&["pool", "scrub", "p"]);
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("a resilver of pool p is running") && err.contains("--wait"),
            "{err}"
        );
    }
    let out = d.ok(&["pool", "scrub", "p", "--wait"]);
    let last = progress_lines(&out, "scrub");
    assert_eq!(last["state"], "finished", "{out}");
    let st = d.pool_status("p");
    assert_eq!(st["resilver"]["state"], "finished", "{st}");
    assert_eq!(device(&st, &e)["state"], "ONLINE", "{st}");
    fio_verify_only(&d, "verify-replaced");
    d.ok(&["pool", "check", "p"]);
    d.finish(1);
}

/// A mirror drive file moved away (its path names nothing) or replaced by
/// another file at the same path is FAULTED within seconds, without any
/// client I/O: the probe compares what the path names with the open file.
#[test]
fn moved_or_swapped_drive_file_is_faulted_without_io() {
    let d = Daemon::start();
    let path = |n: &str| d.path(n).display().to_string();
    for (pool, x, y) in [("p", "a.img", "b.img"), ("q", "c.img", "d.img")] {
        d.ok(&[
            "pool",
            "create",
            pool,
            "mirror",
            &path(x),
            &path(y),
            "--size",
            "256M",
        ]);
    }
    d.create_volume("p/v", 16 * MIB);
    qemu_io_ok(&d.uri("p/v"), &["write -P 0x3c 0 4M"]);
    // Moved away: the path names nothing.
    std::fs::rename(path("b.img"), path("b.moved")).expect("move");
    let dev = wait_faulted(&d, "p", &path("b.img"));
    assert_eq!(dev["state"], "FAULTED", "{dev}");
    assert!(
        dev["reason"].as_str().is_some_and(|r| r.contains("gone")),
        "{dev}"
    );
    // Swapped: another file now has the path (the pool's file is kept
    // under another name, so only the path tells).
    std::fs::hard_link(path("d.img"), path("d.old")).expect("link");
    std::fs::copy(path("d.img"), path("d.new")).expect("copy");
    std::fs::rename(path("d.new"), path("d.img")).expect("swap");
    let dev = wait_faulted(&d, "q", &path("d.img"));
    assert!(
        dev["reason"]
            .as_str()
            .is_some_and(|r| r.contains("another device")),
        "{dev}"
    );
    // The other sides serve every byte.
    qemu_io_ok(&d.uri("p/v"), &["read -P 0x3c 0 4M"]);
    let mut d = d;
    d.stop_clean();
}

/// Bytes rotten on both sides of a mirror: `pool scrub --wait` reports
/// them and exits non-zero.
#[test]
fn scrub_wait_fails_when_records_cannot_be_restored() {
    let d = Daemon::start();
    let (a, b) = (d.path("a.img"), d.path("b.img"));
    let (sa, sb) = (a.display().to_string(), b.display().to_string());
    d.ok(&["pool", "create", "p", "mirror", &sa, &sb, "--size", "256M"]);
    d.create_uncompressed_volume("p/v", "16M");
    qemu_io_ok(&d.uri("p/v"), &["write -P 0x5c 0 64k"]);
    // Rot the block on both sides (it is stored as written: no
    // compression, no encryption).
    let mut rotten = 0;
    for f in [&a, &b] {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(f)
            .expect("open");
        let len = file.metadata().expect("stat").len();
        let mut block = vec![0u8; 4096];
        let mut off = 0;
        while off < len {
            file.read_exact_at(&mut block, off).expect("read");
            if block.iter().all(|&x| x == 0x5c) {
                file.write_all_at(&[0xA5; 8], off + 100).expect("rot");
                rotten += 1;
            }
            off += 4096;
        }
        file.sync_all().expect("sync");
    }
    assert!(
        rotten >= 2,
        "the written blocks were not found in the files"
    );
    let o = d.cli(&["pool", "scrub", "p", "--wait"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no copy could restore"), "{err}");
    assert!(err.contains("unrecoverable: p/v"), "{err}");
    let last = progress_lines(&String::from_utf8_lossy(&o.stdout), "scrub");
    assert!(last["unrecoverable"].as_u64() > Some(0), "{last}");
}
