//! The real-guest harness (tests/vm, `support::vm`) end to end against
//! qemu-storage-daemon's vhost-user-blk export of a raw file: a Linux guest
//! kernel's virtio-blk driver writes and verifies data with fio, discards
//! and zeroes ranges, re-verifies after the backend restarts, and the
//! harness reports corruption and an ignored discard as failures. The same
//! tests will run against edgevol's own vhost-user-blk export.
//!
//! Each boot takes 30-60 s under TCG, so these are ignored unless built
//! with `EDGEVOL_VM_TESTS=1`:
//!
//!     EDGEVOL_VM_TESTS=1 cargo test -p edgevol --test vm_qsd -- --nocapture

mod support;

use std::path::Path;

use support::vm::*;
use support::MIB;

const DISK: u64 = 256 * MIB;

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("evvm-")
        .tempdir_in(std::env::temp_dir())
        .expect("create a temporary directory")
}

/// fio's verify header at the start of every block it wrote: magic 0xacca,
/// then (at byte 16) the block's own offset.
fn assert_fio_block(image: &Path, offset: u64) {
    let h = read_at(image, offset, 24);
    assert_eq!(
        u16::from_le_bytes([h[0], h[1]]),
        0xacca,
        "no fio verify header in the image at {offset}: the guest's write did not land there"
    );
    let mut o = [0u8; 8];
    o.copy_from_slice(&h[16..24]);
    assert_eq!(
        u64::from_le_bytes(o),
        offset,
        "the block at {offset} in the image says it was written for another offset"
    );
}

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
        if j.fio.is_none() {
            eprintln!("  {}: rc {:?} in {:?}s", j.name, j.rc, j.secs);
            continue;
        }
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

/// One boot, all the standard jobs, two queues: the data the guest wrote
/// verifies and is in the image where it belongs, a discarded range reads
/// back as zeroes and is a hole in the image afterwards, write-zeroes
/// works, the rate job runs, and the guest sees the export's size, queues
/// and serial.
#[test]
#[cfg_attr(
    not(edgevol_vm_tests),
    ignore = "boots a TCG guest: build with EDGEVOL_VM_TESTS=1"
)]
fn guest_fio_verify_discard_and_rates_through_qsd() {
    let _one_guest = exclusive();
    let dir = scratch();
    let image = dir.path().join("disk.raw");
    sparse_image(&image, DISK);
    let _qsd = QsdExport::start(&image, &dir.path().join("qsd.sock"), 2);

    let o = boot(
        &BootOptions::vhost_user(&dir.path().join("qsd.sock"), &dir.path().join("boot"))
            .jobs(&["verify", "discard", "randrw4k"])
            .queues(2),
    );
    report("verify+discard+randrw4k, 2 queues", &o);
    assert!(o.ok, "guest run failed:\n{}", o.describe());
    assert_eq!(o.exit_code, 0);

    let disk = o.disk();
    assert_eq!(disk.size_bytes, DISK, "{disk:?}");
    assert_eq!(disk.queues, 2, "the guest should use both queues: {disk:?}");
    assert_eq!(disk.logical_block_size, 512, "{disk:?}");
    assert!(disk.discard_max_bytes > 0, "no discard offered: {disk:?}");
    assert!(disk.write_zeroes_max_bytes > 0, "no write zeroes: {disk:?}");
    // qemu-storage-daemon's GET_ID answer
    assert_eq!(o.serial.as_deref(), Some("vhost_user_blk"));

    let verify = o.job("verify");
    assert_eq!(verify.rc, Some(0), "{}", o.describe());
    let fio_jobs = verify.fio_jobs();
    assert_eq!(fio_jobs.len(), 2, "rand4k and seq64k: {:?}", verify.fio);
    for j in &fio_jobs {
        assert_eq!(j["error"], 0, "fio job reported an error: {j}");
        // every byte written was read back and checked
        assert_eq!(j["write"]["io_bytes"].as_u64(), Some(16 * MIB), "{j}");
        assert_eq!(j["read"]["io_bytes"].as_u64(), Some(16 * MIB), "{j}");
    }
    for off in [0, 4096, 8 * MIB, 16 * MIB, 31 * MIB] {
        assert_fio_block(&image, off);
    }

    let discard = o.check("discard");
    assert!(discard.passed(), "discard: {discard:?}\n{}", o.describe());
    assert!(o.check("write-zeroes").passed(), "{}", o.describe());
    // discard=unmap punched the discarded range out of the file
    let (d0, d1) = DISCARD_REGION;
    let next = next_data(&image, d0);
    assert!(
        next.is_none_or(|n| n >= d1),
        "the discarded range {d0}..{d1} is still allocated in the image (next data at {next:?})"
    );
    assert!(read_at(&image, d0, (d1 - d0) as usize)
        .iter()
        .all(|&b| b == 0));

    let rate = o.job("randrw4k");
    assert_eq!(rate.rc, Some(0), "{}", o.describe());
    assert_eq!(rate.fio_errors(), 0);
    assert!(rate.total("read", "iops") > 0.0 && rate.total("write", "iops") > 0.0);
}

/// Data written with flushes survives a backend restart between boots
/// (verify_only re-reads what the first boot wrote), and the same re-verification fails when a
/// byte of that data is changed behind the guest's back: the harness
/// reports corruption instead of passing it.
#[test]
#[cfg_attr(
    not(edgevol_vm_tests),
    ignore = "boots a TCG guest: build with EDGEVOL_VM_TESTS=1"
)]
fn guest_reverifies_after_qsd_restart_and_catches_corruption() {
    let _one_guest = exclusive();
    let dir = scratch();
    let image = dir.path().join("disk.raw");
    let sock = dir.path().join("qsd.sock");
    sparse_image(&image, DISK);
    let mut qsd = QsdExport::start(&image, &sock, 1);

    // Write-back, so that the verify job's fsyncs reach the backend as
    // flushes (qemu-storage-daemon starts write-through).
    let write = boot(
        &BootOptions::vhost_user(&sock, &dir.path().join("write"))
            .jobs(&["verify"])
            .queues(1)
            .write_cache("write_back"),
    );
    report("write + verify, 1 queue, write-back", &write);
    assert!(write.ok, "first boot failed:\n{}", write.describe());
    assert_eq!(write.disk().queues, 1);
    assert_eq!(write.disk().write_cache, "write_back");
    // fio's fsync=64 / end_fsync over 4096 blocks, fsync=16 over 256
    let v = write.job("verify");
    let syncs: Vec<u64> = v
        .fio_jobs()
        .iter()
        .map(|j| j["sync"]["total_ios"].as_u64().unwrap_or(0))
        .collect();
    assert!(syncs.iter().all(|&n| n > 0), "no fsyncs issued: {syncs:?}");

    qsd.restart();
    let reverify = boot(
        &BootOptions::vhost_user(&sock, &dir.path().join("reverify"))
            .jobs(&["verify"])
            .queues(1)
            .verify_only(),
    );
    report("verify-only after restart", &reverify);
    assert!(
        reverify.ok,
        "re-verify after restart failed:\n{}",
        reverify.describe()
    );
    let v = reverify.job("verify");
    assert!(v.verify_only);
    assert_eq!(v.fio_errors(), 0);
    // verify_only reads everything back (fio still counts the skipped writes)
    assert_eq!(v.total("read", "io_bytes") as u64, 32 * MIB, "{:?}", v.fio);

    // Change 10 bytes inside a 4 KiB block the first boot wrote.
    write_at(&image, 5 * MIB + 1000, b"CORRUPTED!");
    let corrupt = boot(
        &BootOptions::vhost_user(&sock, &dir.path().join("corrupt"))
            .jobs(&["verify"])
            .queues(1)
            .verify_only(),
    );
    report("verify-only after corrupting the image", &corrupt);
    assert!(
        !corrupt.ok,
        "corruption went unnoticed:\n{}",
        corrupt.describe()
    );
    assert_eq!(corrupt.exit_code, 1, "{}", corrupt.describe());
    let v = corrupt.job("verify");
    assert_ne!(v.rc, Some(0));
    assert!(v.fio_errors() > 0, "{:?}", v.fio);
    assert!(
        v.log
            .iter()
            .any(|l| l.contains("verify failed") && l.contains(&format!("offset {}", 5 * MIB))),
        "fio should name the corrupted block:\n{}",
        corrupt.describe()
    );
}

/// The discard check is not vacuous: with qemu-storage-daemon's default
/// `discard=ignore` the export still offers discard but drops it, the
/// pattern stays, and the check (and the boot) fail. Write-zeroes still
/// works there.
#[test]
#[cfg_attr(
    not(edgevol_vm_tests),
    ignore = "boots a TCG guest: build with EDGEVOL_VM_TESTS=1"
)]
fn guest_discard_check_fails_when_qsd_ignores_discard() {
    let _one_guest = exclusive();
    let dir = scratch();
    let image = dir.path().join("disk.raw");
    let sock = dir.path().join("qsd.sock");
    sparse_image(&image, DISK);
    let _qsd = QsdExport::start_with(&image, &sock, 1, false);

    let o = boot(
        &BootOptions::vhost_user(&sock, &dir.path().join("boot"))
            .jobs(&["discard"])
            .queues(1),
    );
    report("discard against discard=ignore", &o);
    assert!(
        !o.ok,
        "the discard check passed on a backend that ignores discard:\n{}",
        o.describe()
    );
    assert_eq!(o.exit_code, 1, "{}", o.describe());
    let d = o.check("discard");
    assert_eq!(d.result, "fail");
    assert_eq!(d.reason(), Some("pattern-still-there"), "{d:?}");
    assert!(o.check("write-zeroes").passed(), "{}", o.describe());
    let (d0, _) = DISCARD_REGION;
    assert!(
        read_at(&image, d0, 64).starts_with(b"edgevol guest discard check"),
        "the guest's pattern should still be in the image"
    );
}
