//! The server driven by real NBD clients run as subprocesses: nbdinfo,
//! nbdsh (libnbd's Python shell), nbdcopy, qemu-img, qemu-io and fio.
//!
//! A test whose tool is missing fails (or, with
//! `EDGEVOL_SKIP_MISSING_CLIENTS=1`, is skipped with a loud message).
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{get, pattern, run, run_ok, MemProvider, MemStore, Raw, TestServer};
use edgevol_nbd::{Errno, OpenError};

const MIB: u64 = 1 << 20;

/// A provider with a writable "disk", a read-only "ro" and the default "".
fn provider() -> (Arc<MemProvider>, Arc<MemStore>, Arc<MemStore>) {
    let p = MemProvider::new();
    let disk = p.add("disk", MemStore::new(16 * MIB).description("Test disk"));
    let ro = p.add(
        "ro",
        MemStore::new(MIB)
            .read_only()
            .block_sizes(4096, 65536, MIB as u32)
            .multi_conn(false)
            .fill(0, b"read-only data"),
    );
    p.add(
        "",
        MemStore::new(MIB)
            .description("the default export")
            .fill(0, b"default export"),
    );
    p.fail("locked", OpenError::Refused("volume key not loaded".into()));
    p.fail(
        "busy",
        OpenError::Unavailable("volume is being restored".into()),
    );
    (p, disk, ro)
}

/// Write a sparse raw image with a few data runs; returns the runs.
fn sparse_image(path: &Path, size: u64) -> Vec<(u64, usize)> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let runs = vec![
        (0u64, 65536usize),
        (MIB, 4096),
        (3 * MIB + 8192, 300 * 1024),
        (size - MIB, MIB as usize),
    ];
    for (i, &(off, len)) in runs.iter().enumerate() {
        f.write_all_at(&pattern(len, i as u64 + 10), off).unwrap();
    }
    runs
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}):\n{s}"))
}

// ---------------------------------------------------------------------------
// nbdinfo
// ---------------------------------------------------------------------------

#[test]
fn nbdinfo_lists_and_describes_exports() {
    require_tools!("nbdinfo_lists_and_describes_exports", "nbdinfo");
    let (p, _, _) = provider();
    let t = TestServer::start(p);

    let out = run_ok(Command::new("nbdinfo").args(["--list", "--json", &t.unix_uri("")]));
    let v = json(&out);
    assert_eq!(v["protocol"], "newstyle-fixed");
    assert_eq!(v["structured"], true);
    let exports = v["exports"].as_array().unwrap();
    let names: Vec<&str> = exports
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["", "disk", "ro"]);
    let disk = &exports[1];
    assert_eq!(disk["description"], "Test disk");
    assert_eq!(disk["export-size"], 16 * MIB);
    assert_eq!(disk["block_size_minimum"], 512);
    assert_eq!(disk["block_size_preferred"], 4096);
    assert_eq!(disk["block_size_maximum"], 32 * MIB);
    assert_eq!(disk["can_multi_conn"], true);
    assert_eq!(disk["is_read_only"], false);
    for cap in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_fast_zero",
        "can_cache",
        "can_df",
    ] {
        assert_eq!(disk[cap], true, "{cap}");
    }
    assert_eq!(disk["contexts"][0], "base:allocation");
    let ro = &exports[2];
    assert_eq!(ro["is_read_only"], true);
    assert_eq!(ro["can_multi_conn"], false);
    assert_eq!(ro["can_trim"], false);
    assert_eq!(ro["can_zero"], false);
    assert_eq!(ro["block_size_minimum"], 4096);
    assert_eq!(ro["block_size_preferred"], 65536);
    assert_eq!(ro["block_size_maximum"], MIB);

    // One export over TCP, human-readable.
    let out = run_ok(Command::new("nbdinfo").args(["--no-content", &t.tcp_uri("disk")]));
    assert!(out.contains("description: Test disk"), "{out}");
    assert!(out.contains("export-size: 16777216"), "{out}");
    assert!(out.contains("can_multi_conn: true"), "{out}");
    assert!(out.contains("block_size_minimum: 512"), "{out}");
}

#[test]
fn nbdinfo_map_tracks_writes_and_trims() {
    require_tools!("nbdinfo_map_tracks_writes_and_trims", "nbdinfo");
    let (p, _, _) = provider();
    let t = TestServer::start(p);
    let map = |t: &TestServer| -> Vec<(u64, u64, u32)> {
        let out = run_ok(Command::new("nbdinfo").args(["--map", &t.unix_uri("disk")]));
        out.lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(map(&t), vec![(0, 16 * MIB, 3)]);

    // Write two runs and trim part of one over NBD.
    let (mut r, _, _) = Raw::handshake(&t.socket, "disk", false);
    r.request(1, 0, 1, MIB, 65536);
    r.send(&pattern(65536, 1));
    assert_eq!(r.simple_reply(), (0, 1));
    r.request(1, 0, 2, 4 * MIB, 8192);
    r.send(&pattern(8192, 2));
    assert_eq!(r.simple_reply(), (0, 2));
    assert_eq!(
        map(&t),
        vec![
            (0, MIB, 3),
            (MIB, 65536, 0),
            (MIB + 65536, 3 * MIB - 65536, 3),
            (4 * MIB, 8192, 0),
            (4 * MIB + 8192, 12 * MIB - 8192, 3),
        ]
    );
    r.request(4, 0, 3, MIB, 32768);
    assert_eq!(r.simple_reply(), (0, 3));
    r.request(4, 0, 4, 4 * MIB, 8192);
    assert_eq!(r.simple_reply(), (0, 4));
    assert_eq!(
        map(&t),
        vec![
            (0, MIB + 32768, 3),
            (MIB + 32768, 32768, 0),
            (MIB + 65536, 15 * MIB - 65536, 3),
        ]
    );
}

#[test]
fn nbdinfo_fails_clearly_on_unknown_and_refused_exports() {
    require_tools!(
        "nbdinfo_fails_clearly_on_unknown_and_refused_exports",
        "nbdinfo"
    );
    let (p, _, _) = provider();
    let t = TestServer::start(p);
    for (name, errno, message) in [
        ("nope", "No such file or directory", "unknown export: nope"),
        ("locked", "Operation not supported", "volume key not loaded"),
        (
            "busy",
            "No such file or directory",
            "volume is being restored",
        ),
    ] {
        // libnbd 1.14 prints the server's message only in its debug log.
        let out = run(
            Command::new("nbdinfo")
                .env("LIBNBD_DEBUG", "1")
                .arg(t.unix_uri(name)),
            Duration::from_secs(30),
        );
        assert!(!out.status.success(), "{name}: nbdinfo must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("opt_go request: {errno}")),
            "{name}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("export: {name}")),
            "{name}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("server error message: {message}")),
            "{name}: message not received:\n{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------
// qemu-img, qemu-io
// ---------------------------------------------------------------------------

#[test]
fn qemu_img_info_convert_compare_and_map() {
    require_tools!("qemu_img_info_convert_compare_and_map", "qemu-img");
    let (p, disk, _) = provider();
    let t = TestServer::start(p);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let runs = sparse_image(&src, 16 * MIB);
    let src = src.to_str().unwrap();

    let out = run_ok(Command::new("qemu-img").args(["info", "--output=json", &t.unix_uri("disk")]));
    assert_eq!(json(&out)["virtual-size"], 16 * MIB);

    // Into the export over TCP, compare over Unix, back out over Unix.
    run_ok(Command::new("qemu-img").args([
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "raw",
        src,
        &t.tcp_uri("disk"),
    ]));
    let out = run_ok(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        src,
        &t.unix_uri("disk"),
    ]));
    assert!(out.contains("identical"), "{out}");
    let dst = dir.path().join("out.img");
    let dst = dst.to_str().unwrap();
    run_ok(Command::new("qemu-img").args([
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &t.unix_uri("disk"),
        dst,
    ]));
    assert_eq!(std::fs::read(src).unwrap(), std::fs::read(dst).unwrap());
    // qemu-img skips zero blocks, so only the data runs were allocated.
    let allocated = (disk.allocated_blocks() as u64) * common::BLOCK;
    let data: u64 = runs.iter().map(|r| r.1 as u64).sum();
    assert!(
        allocated >= data && allocated < 3 * MIB,
        "{allocated} bytes allocated"
    );

    // The map sees holes where nothing was written.
    let out = run_ok(Command::new("qemu-img").args(["map", "--output=json", &t.tcp_uri("disk")]));
    let map = json(&out);
    let mut data_bytes = 0;
    for e in map.as_array().unwrap() {
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        if e["data"] == true {
            data_bytes += len;
            assert!(
                runs.iter()
                    .any(|&(o, l)| start < o + l as u64 + common::BLOCK && o < start + len),
                "unexpected data at {start}+{len}"
            );
        } else {
            assert_eq!(e["zero"], true);
        }
    }
    assert_eq!(data_bytes, allocated);
    assert!(map.as_array().unwrap().iter().any(|e| e["data"] == false));
}

#[test]
fn qemu_io_patterns_fua_discard_and_zeroes() {
    require_tools!("qemu_io_patterns_fua_discard_and_zeroes", "qemu-io");
    let (p, disk, _) = provider();
    let t = TestServer::start(p);
    let uri = t.unix_uri("disk");
    let qemu_io = |cmds: &[&str]| -> String {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        c.arg(&uri);
        let out = run_ok(&mut c);
        assert!(!out.contains("failed"), "{cmds:?}:\n{out}");
        out
    };
    qemu_io(&["write -P 0xab 0 64k", "read -P 0xab 0 64k"]);
    assert_eq!(disk.contents(0, 65536), vec![0xab; 65536]);

    qemu_io(&["write -f -P 0xcd 64k 64k", "read -P 0xcd 64k 64k", "flush"]);
    assert!(
        get(&disk.counters.fua_writes) >= 1,
        "FUA reached the export"
    );
    assert!(get(&disk.counters.flushes) >= 1);

    qemu_io(&["discard 0 64k", "read -P 0 0 64k"]);
    assert!(get(&disk.counters.trims) >= 1);
    assert!(!disk.is_allocated(0), "discard punched a hole");

    // write -z: zeroes, keeping allocation (NO_HOLE); -u: may unmap.
    qemu_io(&[
        "write -P 0x11 256k 128k",
        "write -z 256k 64k",
        "write -z -u 320k 64k",
    ]);
    qemu_io(&["read -P 0 256k 128k"]);
    assert!(get(&disk.counters.no_hole_zeroes) >= 1);
    assert!(disk.is_allocated(256 * 1024), "write -z keeps the blocks");
    assert!(!disk.is_allocated(320 * 1024), "write -z -u unmaps");
    // FUA on zeroes.
    qemu_io(&["write -z -f -u 512k 64k"]);
    assert!(get(&disk.counters.fua_zeroes) >= 1);

    // Over TCP, data written above is visible.
    let out = run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "read -P 0xcd 64k 64k",
        &t.tcp_uri("disk"),
    ]));
    assert!(out.contains("read 65536/65536"), "{out}");
}

#[test]
fn qemu_reports_server_error_messages() {
    require_tools!("qemu_reports_server_error_messages", "qemu-img");
    let (p, _, _) = provider();
    let t = TestServer::start(p);
    for (name, message) in [
        ("nope", "unknown export: nope"),
        ("locked", "volume key not loaded"),
        ("busy", "volume is being restored"),
    ] {
        let out = run(
            Command::new("qemu-img").args(["info", &t.unix_uri(name)]),
            Duration::from_secs(30),
        );
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("server reported: {message}")),
            "{name}: {stderr}"
        );
    }
}

// ---------------------------------------------------------------------------
// nbdsh (libnbd Python bindings)
// ---------------------------------------------------------------------------

fn nbdsh(test: &str, uri: &str, script: &str) {
    let Some(mut cmd) = common::nbdsh() else {
        common::skip(test, "nbdsh (python3-libnbd)");
        return;
    };
    cmd.env("URI", uri).args(["-c", script]);
    let out = run_ok(&mut cmd);
    assert!(out.contains("ALL OK"), "{out}");
}

/// Shared Python helpers.
const PY_PRELUDE: &str = r#"
import os
uri = os.environ["URI"]

def expect(errname, fn, *args):
    try:
        fn(*args)
    except nbd.Error as e:
        assert e.errno == errname, "%s%r: expected %s, got %s (%s)" % (fn.__name__, args[1:], errname, e.errno, e)
        return
    raise AssertionError("%s%r: expected %s, succeeded" % (fn.__name__, args[1:], errname))

def extents(off, count, flags=0):
    out = []
    def cb(meta, o, entries, err):
        assert meta == "base:allocation"
        out.extend(zip(entries[0::2], entries[1::2]))
        return 0
    h.block_status(count, off, cb, flags)
    return out

def chunks(count, off, flags=0):
    out = []
    def cb(buf, o, status, err):
        out.append((o, len(buf), status))
        return 0
    h.pread_structured(count, off, cb, flags)
    return sorted(out)
"#;

#[test]
fn nbdsh_commands_flags_and_errors() {
    let (p, disk, _) = provider();
    let size = disk.size();
    disk.poison(8 * MIB, 8 * MIB + 4096, Errno::Io);
    disk.poison(9 * MIB, 9 * MIB + 4096, Errno::NoSpc);
    disk.poison(10 * MIB, 10 * MIB + 4096, Errno::Perm);
    disk.poison(11 * MIB, 11 * MIB + 4096, Errno::NoMem);
    disk.poison(12 * MIB, 12 * MIB + 4096, Errno::Shutdown);
    let t = TestServer::start(p);
    let script = format!(
        r#"{PY_PRELUDE}
size = {size}
h.add_meta_context("base:allocation")
h.connect_uri(uri)
assert h.get_structured_replies_negotiated()
assert h.can_meta_context("base:allocation")
assert h.get_size() == size
assert h.get_block_size(nbd.SIZE_MINIMUM) == 512
assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20
for cap in ("can_fua", "can_flush", "can_trim", "can_zero", "can_cache", "can_df", "can_fast_zero", "can_multi_conn"):
    assert getattr(h, cap)(), cap
assert not h.is_read_only()

assert extents(0, 1 << 20) == [(1 << 20, 3)]
data = bytes(range(256)) * 256
h.pwrite(data, 0)
assert h.pread(65536, 0) == data
h.pwrite(b"\xcd" * 4096, 65536, nbd.CMD_FLAG_FUA)
h.flush()
h.cache(65536, 0)
assert extents(0, 1 << 20) == [(69632, 0), ((1 << 20) - 69632, 3)], extents(0, 1 << 20)
assert extents(0, 1 << 20, nbd.CMD_FLAG_REQ_ONE) == [(69632, 0)]
# holes and data arrive as separate chunks; DF gives exactly one
assert chunks(8192, 65536) == [(65536, 4096, nbd.READ_DATA), (69632, 4096, nbd.READ_HOLE)], chunks(8192, 65536)
assert chunks(8192, 65536, nbd.CMD_FLAG_DF) == [(65536, 8192, nbd.READ_DATA)]
assert h.pread(8192, 65536)[4096:] == bytes(4096)

h.trim(8192, 0, nbd.CMD_FLAG_FUA)
assert h.pread(8192, 0) == bytes(8192)
assert extents(0, 16384) == [(8192, 3), (8192, 0)]
h.zero(8192, 16384, nbd.CMD_FLAG_NO_HOLE)
assert extents(16384, 8192) == [(8192, 0)]
h.zero(8192, 32768, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_FUA)
assert extents(32768, 8192) == [(8192, 3)]
assert h.pread(65536, 0)[:8192] == bytes(8192)
expect("ENOTSUP", h.zero, 4096, 49152, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)

# Let bad requests reach the server.
h.set_strict_mode(0)
expect("EINVAL", h.pread, 4096, size)
expect("EINVAL", h.pread, 8192, size - 4096)
expect("ENOSPC", h.pwrite, b"x" * 512, size)
expect("EINVAL", h.trim, 4096, size)
expect("EINVAL", h.pread, 512, 1)
expect("EINVAL", h.pwrite, b"x" * 100, 0)
expect("EINVAL", h.pread, 512, 0, nbd.CMD_FLAG_REQ_ONE)

# Errors from the export keep their errno.
expect("EIO", h.pread, 4096, {eio})
expect("ENOSPC", h.pwrite, b"y" * 4096, {enospc})
expect("EPERM", h.trim, 4096, {eperm})
expect("ENOMEM", h.zero, 4096, {enomem})
assert h.pread(4096, {eio} + 4096) == bytes(4096)
expect("ESHUTDOWN", h.pread, 4096, {eshutdown})
print("ALL OK")
"#,
        eio = 8 * MIB,
        enospc = 9 * MIB,
        eperm = 10 * MIB,
        enomem = 11 * MIB,
        eshutdown = 12 * MIB,
    );
    nbdsh(
        "nbdsh_commands_flags_and_errors",
        &t.unix_uri("disk"),
        &script,
    );
    assert!(get(&disk.counters.fua_writes) >= 1);
    assert!(get(&disk.counters.fua_trims) >= 1);
    assert!(get(&disk.counters.fua_zeroes) >= 1);
    assert!(get(&disk.counters.fast_zeroes) >= 2);
    assert!(get(&disk.counters.caches) >= 1);
}

#[test]
fn nbdsh_simple_replies() {
    let (p, disk, _) = provider();
    let size = disk.size();
    let t = TestServer::start(p);
    let script = format!(
        r#"{PY_PRELUDE}
h.set_request_structured_replies(False)
h.add_meta_context("base:allocation")
h.connect_uri(uri)
assert not h.get_structured_replies_negotiated()
assert not h.can_meta_context("base:allocation")
assert not h.can_df()
h.pwrite(b"\x5a" * 4096, 8192)
got = h.pread(16384, 4096)
assert got == bytes(4096) + b"\x5a" * 4096 + bytes(8192), "holes read as zeroes"
h.flush()
h.trim(4096, 8192)
assert h.pread(4096, 8192) == bytes(4096)
h.set_strict_mode(0)
expect("EINVAL", h.pread, 4096, {size})
expect("ENOSPC", h.pwrite, b"x" * 512, {size})
expect("EINVAL", h.pread, 512, 0, nbd.CMD_FLAG_DF)
expect("EINVAL", h.block_status, 4096, 0, lambda *a: 0)
# The connection is still in sync after errors.
assert h.pread(512, 0) == bytes(512)
print("ALL OK")
"#
    );
    nbdsh("nbdsh_simple_replies", &t.tcp_uri("disk"), &script);
}

#[test]
fn nbdsh_read_only_and_default_exports() {
    let (p, _, ro) = provider();
    let t = TestServer::start(Arc::clone(&p));
    let script = format!(
        r#"{PY_PRELUDE}
h.connect_uri(uri)
assert h.is_read_only()
assert h.get_block_size(nbd.SIZE_MINIMUM) == 4096
assert h.pread(4096, 0)[:14] == b"read-only data"
h.set_strict_mode(0)
expect("EPERM", h.pwrite, b"x" * 4096, 0)
expect("EPERM", h.trim, 4096, 0)
expect("EPERM", h.zero, 4096, 0)
expect("EINVAL", h.pread, 512, 0)
h.flush()
assert h.pread(4096, 0)[:14] == b"read-only data"
print("ALL OK")
"#
    );
    nbdsh(
        "nbdsh_read_only_and_default_exports",
        &t.unix_uri("ro"),
        &script,
    );
    assert_eq!(&ro.contents(0, 14), b"read-only data");

    let script = format!(
        r#"{PY_PRELUDE}
h.set_opt_mode(True)
h.connect_uri(uri)
assert h.get_export_name() == ""
h.set_full_info(True)
h.opt_info()
assert h.get_export_description() == "the default export"
h.opt_go()
assert h.pread(512, 0)[:14] == b"default export"
print("ALL OK")
"#
    );
    nbdsh(
        "nbdsh_read_only_and_default_exports",
        &t.unix_uri(""),
        &script,
    );
    if common::nbdsh().is_some() {
        assert!(
            p.opened_names().iter().any(|n| n.is_empty()),
            "\"\" reached the provider"
        );
    }
}

// ---------------------------------------------------------------------------
// nbdcopy, fio, many clients
// ---------------------------------------------------------------------------

#[test]
fn nbdcopy_in_and_out() {
    require_tools!("nbdcopy_in_and_out", "nbdcopy");
    let (p, disk, _) = provider();
    let t = TestServer::start(p);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    sparse_image(&src, 16 * MIB);
    let src = src.to_str().unwrap();
    // Multi-conn export: nbdcopy uses several connections in parallel.
    run_ok(Command::new("nbdcopy").args([src, &t.unix_uri("disk")]));
    assert_eq!(
        disk.contents(0, 16 * MIB as usize),
        std::fs::read(src).unwrap()
    );
    let dst = dir.path().join("out.img");
    let dst = dst.to_str().unwrap();
    std::fs::File::create(dst).unwrap();
    run_ok(Command::new("nbdcopy").args([&t.tcp_uri("disk"), dst]));
    assert_eq!(std::fs::read(src).unwrap(), std::fs::read(dst).unwrap());
    // Copy export to export.
    let p2 = MemProvider::new();
    let copy = p2.add("copy", MemStore::new(16 * MIB));
    let t2 = TestServer::start(p2);
    run_ok(Command::new("nbdcopy").args([&t.unix_uri("disk"), &t2.unix_uri("copy")]));
    assert_eq!(
        copy.contents(0, 16 * MIB as usize),
        std::fs::read(src).unwrap()
    );
}

#[test]
fn fio_randrw_verify() {
    require_tools!("fio_randrw_verify", "fio");
    let (p, _, _) = provider();
    let t = TestServer::start(p);
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("fio.json");
    let out = run(
        Command::new("fio").args([
            "--name=nbd-randrw",
            "--ioengine=nbd",
            &format!("--uri={}", t.unix_uri("disk")),
            "--rw=randrw",
            "--bs=4k",
            "--numjobs=4",
            "--iodepth=16",
            "--size=4M",
            "--offset_increment=4M",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--output-format=json",
            &format!("--output={}", output.display()),
        ]),
        Duration::from_secs(90),
    );
    let report = std::fs::read_to_string(&output).unwrap_or_default();
    assert!(
        out.status.success(),
        "fio failed:\n{}\n{}\n{report}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&report);
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 4);
    for j in jobs {
        assert_eq!(j["error"], 0, "{j}");
        assert!(j["write"]["io_bytes"].as_u64().unwrap() > 0);
        assert!(j["read"]["io_bytes"].as_u64().unwrap() > 0);
    }
}

#[test]
fn many_clients_at_once() {
    require_tools!("many_clients_at_once", "qemu-io");
    let p = MemProvider::new();
    let a = p.add("a", MemStore::new(16 * MIB));
    let b = p.add("b", MemStore::new(16 * MIB));
    let t = TestServer::start(p);
    // 12 concurrent clients: 8 on export "a" (disjoint regions), 4 on "b".
    let children: Vec<_> = (0..12u64)
        .map(|i| {
            let (export, region) = if i < 8 { ("a", i) } else { ("b", i - 8) };
            let uri = if i % 2 == 0 {
                t.unix_uri(export)
            } else {
                t.tcp_uri(export)
            };
            let pat = format!("{:#04x}", 0x10 + i);
            let off = region * MIB;
            std::thread::spawn(move || {
                run_ok(Command::new("qemu-io").args([
                    "-f",
                    "raw",
                    "-c",
                    &format!("write -P {pat} {off} 1M"),
                    "-c",
                    &format!("read -P {pat} {off} 1M"),
                    &uri,
                ]))
            })
        })
        .collect();
    for c in children {
        let out = c.join().unwrap();
        assert!(!out.contains("failed"), "{out}");
    }
    for i in 0..12u64 {
        let (store, region) = if i < 8 { (&a, i) } else { (&b, i - 8) };
        let got = store.contents(region * MIB, MIB as usize);
        assert!(got.iter().all(|&x| x == 0x10 + i as u8), "client {i}");
    }
}

#[test]
fn nbdsh_legacy_handshakes() {
    let (p, _, _) = provider();
    let t = TestServer::start(p);
    // Non-fixed newstyle (NBD_OPT_EXPORT_NAME with and without the 124 zero
    // bytes) and fixed newstyle without NO_ZEROES.
    let script = r#"
import os
for flags, proto in ((0, "newstyle"), (nbd.HANDSHAKE_FLAG_NO_ZEROES, "newstyle"),
                     (nbd.HANDSHAKE_FLAG_FIXED_NEWSTYLE, "newstyle-fixed")):
    h = nbd.NBD()
    h.set_handshake_flags(flags)
    h.connect_uri(os.environ["URI"])
    assert h.get_protocol() == proto, (flags, h.get_protocol())
    assert h.get_handshake_flags() == flags
    assert h.get_size() == 1 << 20
    assert h.pread(512, 0)[:14] == b"default export", flags
    h.shutdown()
print("ALL OK")
"#;
    nbdsh("nbdsh_legacy_handshakes", &t.tcp_uri(""), script);
}
