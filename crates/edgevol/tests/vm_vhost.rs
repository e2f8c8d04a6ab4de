//! edgevol's vhost-user-blk export with a real guest: Debian's kernel and
//! its virtio_blk driver under QEMU (TCG), booted by the harness in
//! tests/vm (`support::vm`), against `edgevol serve`.
//!
//! * fio writes with crc32c verification and flushes, reads everything
//!   back; discard and write-zeroes read back as zeroes; from the host,
//!   through NBD, the data is where the guest put it and the discarded
//!   range is a hole again; a snapshot exported read-only re-verifies in a
//!   second guest.
//! * The daemon is SIGKILLed and restarted while the guest writes (QEMU
//!   reconnects): fio sees a pause, no error, and every block verifies.
//!
//! Each boot takes 15-40 s under TCG, so these are ignored unless built
//! with `EDGEVOL_VM_TESTS=1` (scripts/test.sh, i.e. CI, sets it):
//!
//!     EDGEVOL_VM_TESTS=1 cargo test -p edgevol --test vm_vhost -- --nocapture

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::vm::*;
use support::*;

const DISK: u64 = 256 * MIB;

fn report(what: &str, o: &VmOutcome) {
    eprintln!(
        "{what}: exit {} ({}) wall {:.1}s; host seconds to /init {:?}, to disk {:?}, to all-done {:?}",
        o.exit_code,
        o.reason,
        o.wall_s,
        o.host_times_s.init,
        o.host_times_s.device,
        o.host_times_s.all_done
    );
    for j in &o.jobs {
        eprintln!(
            "  {}: rc {:?} in {:?}s; read {:.0} IOPS {:.1} MiB, write {:.0} IOPS {:.1} MiB",
            j.name,
            j.rc,
            j.secs,
            j.total("read", "iops"),
            j.total("read", "io_bytes") / MIB as f64,
            j.total("write", "iops"),
            j.total("write", "io_bytes") / MIB as f64
        );
    }
}

/// fio's verify header at the start of every block it wrote (magic 0xacca,
/// the block's own offset at byte 16), read through NBD.
fn assert_fio_block(d: &Daemon, export: &str, offset: u64) {
    let h = nbd_read(&d.uri(export), offset, 4096);
    assert_eq!(
        u16::from_le_bytes([h[0], h[1]]),
        0xacca,
        "no fio verify header at {offset} of {export}: the guest's write is not there"
    );
    let mut o = [0u8; 8];
    o.copy_from_slice(&h[16..24]);
    assert_eq!(
        u64::from_le_bytes(o),
        offset,
        "the block at {offset} was written for another offset"
    );
}

/// The allocation of `range` in the NBD map: the kinds of the extents
/// overlapping it.
fn kinds_in(map: &[MapExtent], (from, to): (u64, u64)) -> Vec<u64> {
    map.iter()
        .filter(|e| e.offset < to && e.offset + e.length > from)
        .map(|e| e.kind)
        .collect()
}

fn export_add(d: &Daemon, vol: &str, sock: &Path, queues: u32) -> serde_json::Value {
    d.json(&[
        "export",
        "add",
        vol,
        "--vhost-user",
        sock.to_str().expect("utf-8 path"),
        "--queues",
        &queues.to_string(),
    ])
}

/// verify + discard on two queues; host-side checks through NBD and the
/// pool's accounting; then a snapshot, exported read-only, re-verified by a
/// second guest.
#[test]
#[cfg_attr(
    not(edgevol_vm_tests),
    ignore = "boots a TCG guest: build with EDGEVOL_VM_TESTS=1"
)]
fn guest_fio_verify_discard_and_snapshot_through_edgevol() {
    let _one_guest = exclusive();
    let d = Daemon::start();
    d.create_pool("p", "1G", None);
    d.create_volume("p/vm", DISK);
    let sock = d.path("vm.sock");
    let info = export_add(&d, "p/vm", &sock, 2);
    let serial = info["serial"].as_str().expect("serial").to_string();

    let o = boot(
        &BootOptions::vhost_user(&sock, &d.path("boot"))
            .jobs(&["verify", "discard"])
            .queues(2),
    );
    report("edgevol: verify+discard, 2 queues", &o);
    assert!(
        o.ok,
        "guest run failed:\n{}\ndaemon log:\n{}",
        o.describe(),
        d.log()
    );

    let disk = o.disk();
    assert_eq!(disk.size_bytes, DISK, "{disk:?}");
    assert_eq!(disk.queues, 2, "the guest should use both queues: {disk:?}");
    assert_eq!(disk.logical_block_size, 4096, "blk_size: {disk:?}");
    assert_eq!(disk.physical_block_size, 4096, "{disk:?}");
    assert_eq!(disk.discard_max_bytes, 64 * MIB, "{disk:?}");
    assert_eq!(disk.discard_granularity, 4096, "{disk:?}");
    assert_eq!(disk.write_zeroes_max_bytes, 64 * MIB, "{disk:?}");
    assert_eq!(
        disk.write_cache, "write_back",
        "fsync must send flushes: {disk:?}"
    );
    assert_eq!(disk.ro, 0);
    assert_eq!(
        o.serial.as_deref(),
        Some(serial.as_str()),
        "GET_ID answers the volume's serial"
    );

    let verify = o.job("verify");
    let fio_jobs = verify.fio_jobs();
    assert_eq!(fio_jobs.len(), 2, "rand4k and seq64k: {:?}", verify.fio);
    for j in &fio_jobs {
        assert_eq!(j["error"], 0, "fio job reported an error: {j}");
        assert_eq!(j["write"]["io_bytes"].as_u64(), Some(16 * MIB), "{j}");
        assert_eq!(j["read"]["io_bytes"].as_u64(), Some(16 * MIB), "{j}");
        assert!(
            j["sync"]["total_ios"].as_u64().unwrap_or(0) > 0,
            "fsyncs reached the disk: {j}"
        );
    }
    assert!(o.check("discard").passed(), "{}", o.describe());
    assert!(o.check("write-zeroes").passed(), "{}", o.describe());

    // From the host, through NBD: the guest's blocks are where it wrote them.
    for off in [0, 4096, 8 * MIB, 16 * MIB, 31 * MIB] {
        assert_fio_block(&d, "p/vm", off);
    }
    // The discarded range is unallocated again, write-zeroes reads zero.
    let map = nbd_map(&d.uri("p/vm"));
    assert_eq!(kinds_in(&map, DISCARD_REGION), vec![HOLE_ZERO], "{map:?}");
    let wz = kinds_in(&map, WRITE_ZEROES_REGION);
    assert!(
        wz.iter().all(|&k| k & 2 != 0),
        "write-zeroes range must read as zero: {map:?}"
    );
    assert!(nbd_read(&d.uri("p/vm"), DISCARD_REGION.0, 1 << 20)
        .iter()
        .all(|&b| b == 0));
    assert_eq!(kinds_in(&map, VERIFY_REGION), vec![DATA], "{map:?}");
    // Accounting: the 32 MiB fio wrote; the 8 MiB pattern under the discard
    // and the 8 MiB under write-zeroes were freed.
    let referenced = d.vol_num("p/vm", "referenced");
    assert_eq!(referenced, 32 * MIB, "referenced bytes after discard");
    d.check_pool("p");

    // A snapshot, exported read-only, as a second guest sees it.
    d.ok(&["snapshot", "create", "p/vm@s1"]);
    let ssock = d.path("snap.sock");
    let sinfo = export_add(&d, "p/vm@s1", &ssock, 1);
    assert_eq!(sinfo["read_only"], true);
    let o = boot(
        &BootOptions::vhost_user(&ssock, &d.path("boot-snap"))
            .jobs(&["reverify"])
            .queues(1),
    );
    report("edgevol: snapshot read-only, reverify", &o);
    assert!(
        o.ok,
        "snapshot re-verify failed:\n{}\ndaemon log:\n{}",
        o.describe(),
        d.log()
    );
    assert_eq!(
        o.disk().ro,
        1,
        "a snapshot is a read-only disk: {:?}",
        o.disk()
    );
    assert_eq!(o.serial.as_deref(), sinfo["serial"].as_str());
    assert_eq!(o.job("reverify").total("read", "io_bytes") as u64, 32 * MIB);
    d.finish(1);
}

/// The daemon is killed (SIGKILL) and started again while the guest writes
/// with verification; QEMU waits and reconnects (`reconnect=1`). The guest
/// must see a pause only: fio finishes without an error and reads every
/// block back as written, and what it wrote before the kill re-verifies.
#[test]
#[cfg_attr(
    not(edgevol_vm_tests),
    ignore = "boots a TCG guest: build with EDGEVOL_VM_TESTS=1"
)]
fn guest_survives_daemon_kill_and_restart() {
    let _one_guest = exclusive();
    let mut d = Daemon::start();
    d.create_pool("p", "1G", None);
    d.create_volume("p/vm", DISK);
    let sock = d.path("vm.sock");
    export_add(&d, "p/vm", &sock, 2);
    let out = d.path("boot");
    let serial_log = out.join("serial.log");

    let (o, paused) = std::thread::scope(|s| {
        let opts = BootOptions::vhost_user(&sock, &out)
            .jobs(&["verify", "restart", "reverify"])
            .queues(2)
            .reconnect()
            .timeout(Duration::from_secs(300));
        let guest = s.spawn(move || boot(&opts));
        // Wait until the guest is in the restart job's write phase.
        let t0 = Instant::now();
        let mut started = false;
        while t0.elapsed() < Duration::from_secs(240) && !guest.is_finished() {
            let log = std::fs::read_to_string(&serial_log).unwrap_or_default();
            if log.contains("@@EV job-begin name=restart") {
                started = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            started || guest.is_finished(),
            "the restart job never began"
        );
        let mut paused = Duration::ZERO;
        if started {
            std::thread::sleep(Duration::from_millis(1500));
            let t = Instant::now();
            // On this thread: the daemon dies with the thread that spawned it.
            d.kill9();
            std::thread::sleep(Duration::from_millis(500));
            d.restart();
            paused = t.elapsed();
            eprintln!("daemon killed and restarted in {paused:?}");
        }
        (guest.join().expect("boot thread"), paused)
    });
    report(
        "edgevol: verify, restart (kill -9 + start under fio), reverify",
        &o,
    );
    assert!(
        paused > Duration::ZERO,
        "the daemon was not restarted during the job"
    );
    assert!(
        o.ok,
        "guest run failed:\n{}\nlog before the kill:\n{}\nlog after:\n{}",
        o.describe(),
        std::fs::read_to_string(d.path("daemon-1.log")).unwrap_or_default(),
        d.log()
    );
    let r = o.job("restart");
    assert_eq!(r.fio_errors(), 0, "{:?}", r.fio);
    assert_eq!(r.total("write", "io_bytes") as u64, 16 * MIB, "{:?}", r.fio);
    assert_eq!(
        r.total("read", "io_bytes") as u64,
        16 * MIB,
        "every block read back and verified"
    );
    assert_eq!(o.job("reverify").total("read", "io_bytes") as u64, 32 * MIB);
    assert!(
        d.log().contains("frontend attached"),
        "QEMU reconnected to the new daemon:\n{}",
        d.log()
    );
    // From the host: the blocks of both jobs are there.
    for off in [0, 16 * MIB, RESTART_REGION.0, RESTART_REGION.1 - 4096] {
        assert_fio_block(&d, "p/vm", off);
    }
    d.check_pool("p");
}

#[test]
#[cfg_attr(
    not(edgevol_vm_tests),
    ignore = "boots a TCG guest: build with EDGEVOL_VM_TESTS=1"
)]
fn guest_reboot_resets_the_queues_and_keeps_the_data() {
    let _one_guest = exclusive();
    let d = Daemon::start();
    d.create_pool("p", "1G", None);
    d.create_volume("p/vm", DISK);
    let sock = d.path("vm.sock");
    export_add(&d, "p/vm", &sock, 2);
    let out = d.path("boot");
    // First boot: write and verify, leave a marker, reboot (QEMU resets the
    // machine: the vhost-user-blk device stops its rings and the guest
    // driver sets them up again). Second boot: verify what the first wrote.
    let opts = BootOptions::vhost_user(&sock, &out)
        .jobs(&["verify"])
        .queues(2)
        .reboot()
        .timeout(Duration::from_secs(300));
    let o = boot(&opts);
    report("edgevol: verify, guest reboot, verify again", &o);
    assert!(o.ok, "guest run failed:\n{}\n{}", o.describe(), d.log());
    assert_eq!(o.boots, 2, "the guest rebooted once:\n{}", o.describe());
    let runs: Vec<_> = o.jobs.iter().filter(|j| j.name == "verify").collect();
    assert_eq!(runs.len(), 2, "verify ran in both boots: {:?}", o.jobs);
    assert!(runs[1].verify_only, "the second boot only verifies");
    assert_eq!(runs[1].fio_errors(), 0, "{:?}", runs[1].fio);
    assert_eq!(
        runs[1].total("read", "io_bytes") as u64,
        32 * MIB,
        "the second boot read back all the first wrote"
    );
    // The reset stopped both rings (drained) and the guest set them up
    // again on the same connection: no second attachment, none refused.
    let log = d.log();
    let stops = log.matches("ring stopped by the frontend").count();
    let attached = log.matches("frontend attached").count();
    eprintln!("rings stopped {stops} times, frontend attached {attached} times");
    // Two rings stopped at the reset, two more when QEMU exits.
    assert!(stops >= 4, "the reboot stopped the rings:\n{log}");
    assert_eq!(attached, 1, "one connection throughout:\n{log}");
    assert!(!log.contains("refused"), "{log}");
    assert_fio_block(&d, "p/vm", 0);
    d.check_pool("p");
}

/// Not a test of correctness: guest fio 4 KiB random read and write rates
/// through edgevol's vhost-user-blk export (per-queue and shared workers),
/// through edgevol's NBD export (QEMU's NBD client), and through
/// qemu-storage-daemon's vhost-user-blk export of a raw file, one after the
/// other in one run. TCG: the emulator dominates; compare only within a run.
///
///     EDGEVOL_VM_TESTS=1 cargo test --release -p edgevol --test vm_vhost -- --ignored rates --nocapture
#[test]
#[ignore = "rate comparison, ~3 minutes: run with --ignored"]
fn rates_vhost_vs_nbd_vs_qsd() {
    let _one_guest = exclusive();
    let runtime: u32 = std::env::var("EV_RATE_RUNTIME")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let queues: u32 = std::env::var("EV_RATE_QUEUES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let d = Daemon::start();
    d.create_pool("p", "1G", None);
    d.create_volume("p/vm", DISK);
    d.create_volume("p/vm2", DISK);
    let sock = d.path("vm.sock");
    let sock2 = d.path("vm2.sock");
    export_add(&d, "p/vm", &sock, queues);
    d.ok(&[
        "export",
        "add",
        "p/vm2",
        "--vhost-user",
        sock2.to_str().unwrap(),
        "--queues",
        &queues.to_string(),
        "--workers",
        "shared",
    ]);
    let image = d.path("qsd.raw");
    sparse_image(&image, DISK);
    let qsd = QsdExport::start(&image, &d.path("qsd.sock"), queues);
    // fill the read region first on every target (reads of holes are not reads)
    let jobs = ["randwrite4k", "randread4k"];
    let mut rows = Vec::new();
    for round in 0..2 {
        for (name, opts) in [
            (
                "edgevol vhost-user (per-queue workers)",
                BootOptions::vhost_user(&sock, &d.path(&format!("r{round}-vhost"))),
            ),
            (
                "edgevol vhost-user (shared worker)",
                BootOptions::vhost_user(&sock2, &d.path(&format!("r{round}-vhost2"))),
            ),
            (
                "edgevol NBD (QEMU NBD client)",
                BootOptions::nbd(&d.nbd_sock, "p/vm", &d.path(&format!("r{round}-nbd"))),
            ),
            (
                "qemu-storage-daemon vhost-user (raw file)",
                BootOptions::vhost_user(&qsd.socket, &d.path(&format!("r{round}-qsd"))),
            ),
        ] {
            let o = boot(&opts.jobs(&jobs).queues(queues).runtime(runtime));
            report(name, &o);
            assert!(o.ok, "{name}:\n{}", o.describe());
            rows.push((
                round,
                name,
                o.job("randread4k").total("read", "iops"),
                o.job("randwrite4k").total("write", "iops"),
            ));
        }
    }
    eprintln!("\nTCG guest, {queues} queues, fio 4k qd16 x2 jobs, {runtime}s each (round, target, randread IOPS, randwrite IOPS):");
    for (round, name, r, w) in rows {
        eprintln!("  {round}  {name:<45} {r:>8.0} {w:>8.0}");
    }
}
