//! qemu-io patterns against a volume: writes with patterns (plain, FUA,
//! unaligned), reads verifying them, discard, write-zeroes with and without
//! unmap, flush; errors for writes to snapshots and requests past the end.

mod support;

use support::*;

/// A Python + libnbd probe, strict mode off so that requests the client
/// library would refuse reach the server: prints one line per request.
const PROBE: &str = r#"
import nbd, sys
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
size = h.get_size()
def attempt(name, f):
    try:
        f()
        print(name, "ok")
    except nbd.Error as e:
        print(name, "error", e.errno)
    sys.stdout.flush()
for a in sys.argv[2:]:
    if a == "write0":
        attempt(a, lambda: h.pwrite(b"\x99" * 4096, 0))
    elif a == "write_end":
        attempt(a, lambda: h.pwrite(b"\x99" * 4096, size))
    elif a == "write_across_end":
        attempt(a, lambda: h.pwrite(b"\x99" * 8192, size - 4096))
    elif a == "read_end":
        attempt(a, lambda: h.pread(4096, size))
    elif a == "trim_end":
        attempt(a, lambda: h.trim(4096, size))
    elif a == "zero_end":
        attempt(a, lambda: h.zero(4096, size))
    elif a == "trim0":
        attempt(a, lambda: h.trim(4096, 0))
    elif a == "zero0":
        attempt(a, lambda: h.zero(4096, 0))
    elif a == "read0":
        attempt(a, lambda: h.pread(4096, 0))
    elif a == "flush":
        attempt(a, lambda: h.flush())
h.shutdown()
"#;

fn probe(uri: &str, ops: &[&str]) -> Vec<(String, String)> {
    let mut args = vec![uri];
    args.extend_from_slice(ops);
    let out = python_ok(PROBE, &args);
    out.lines()
        .map(|l| {
            let mut it = l.splitn(2, ' ');
            (
                it.next().unwrap_or("").to_string(),
                it.next().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn patterns_discard_zero_fua_flush() {
    let d = Daemon::start();
    d.create_pool("p", "1G", Some("1M"));
    d.create_volume("p/v", 64 * MIB);
    let uri = d.uri("p/v");

    qemu_io_ok(
        &uri,
        &[
            "write -P 0xa1 0 4M",
            "write -P 0xb2 4M 4M",
            "write -f -P 0xc3 8M 1M", // FUA
            "write -P 0xd4 12M 64k",
            "flush",
        ],
    );
    // A new connection sees everything.
    qemu_io_ok(
        &uri,
        &[
            "read -P 0xa1 0 4M",
            "read -P 0xb2 4M 4M",
            "read -P 0xc3 8M 1M",
            "read -P 0 9M 3M",
            "read -P 0xd4 12M 64k",
            "read -P 0 12352k 4k",
        ],
    );

    // Discard, write-zeroes (allocated zeroes), write-zeroes with unmap.
    qemu_io_ok(
        &uri,
        &[
            "discard 0 1M",
            "write -z 1M 1M",
            "write -z -u 2M 1M",
            "write -z -f 4M 256k",
            "flush",
        ],
    );
    qemu_io_ok(
        &uri,
        &[
            "read -P 0 0 3M",
            "read -P 0xa1 3M 1M",
            "read -P 0 4M 256k",
            "read -P 0xb2 4352k 3840k",
        ],
    );

    // Sub-block writes: qemu reads-modifies-writes around them (the export
    // advertises a 4 KiB minimum block size). Neighbours are untouched.
    qemu_io_ok(
        &uri,
        &[
            "write -P 0xe5 20971620 1000",
            "write -P 0xe6 21000000 70000",
        ],
    );
    qemu_io_ok(
        &uri,
        &[
            "read -P 0 20M 100",
            "read -P 0xe5 20971620 1000",
            "read -P 0 20972620 27380",
            "read -P 0xe6 21000000 70000",
            "read -P 0 21070000 100",
        ],
    );

    // The map agrees with what happened.
    let map = nbd_map(&uri);
    let expect = map_of(&[
        (0, MIB, HOLE_ZERO),
        (MIB, MIB, ZERO),
        (2 * MIB, MIB, HOLE_ZERO),
        (3 * MIB, MIB, DATA),
        (4 * MIB, 256 * KIB, ZERO),
        (4 * MIB + 256 * KIB, 5 * MIB - 256 * KIB, DATA),
        (9 * MIB, 3 * MIB, HOLE_ZERO),
        (12 * MIB, 64 * KIB, DATA),
        (12 * MIB + 64 * KIB, 8 * MIB - 64 * KIB, HOLE_ZERO),
        // 20971620..+1000 touches block 5120; 21000000..21070000 blocks 5126..=5144.
        (20 * MIB, 4096, DATA),
        (20 * MIB + 4096, 5 * 4096, HOLE_ZERO),
        (5126 * 4096, 19 * 4096, DATA),
        (5145 * 4096, 64 * MIB - 5145 * 4096, HOLE_ZERO),
    ]);
    assert_eq!(
        map, expect,
        "allocation map after writes, discards and zeroes"
    );
    d.finish(1);
}

#[test]
fn snapshot_writes_and_out_of_range_requests_fail() {
    let d = Daemon::start();
    d.create_pool("p", "1G", None);
    d.create_volume("p/v", 16 * MIB);
    let uri = d.uri("p/v");
    qemu_io_ok(&uri, &["write -P 0x42 0 1M"]);
    d.ok(&["snapshot", "create", "p/v@s"]);
    let snap = d.uri("p/v@s");

    // qemu cannot open a snapshot read-write.
    let msg = qemu_io_fail(&snap, &["write -P 0x43 0 4k"]);
    assert!(
        msg.contains("ermission") || msg.contains("read-only"),
        "qemu-io on a snapshot: {msg}"
    );
    // Read-only, qemu reads it, and refuses writes itself.
    let mut c = std::process::Command::new(qemu_io());
    c.args([
        "-r",
        "-f",
        "raw",
        "-c",
        "read -P 0x42 0 1M",
        "-c",
        "read -P 0 1M 1M",
    ])
    .arg(&snap);
    run_ok(&mut c);
    // The server refuses writes, trims and zeroes on the snapshot (EPERM)
    // even when a client sends them.
    let r = probe(&snap, &["write0", "trim0", "zero0", "read0", "flush"]);
    for (op, res) in &r {
        match op.as_str() {
            "read0" | "flush" => assert_eq!(res, "ok", "{op} on a snapshot: {r:?}"),
            _ => assert!(
                res.starts_with("error EPERM"),
                "{op} on a snapshot should fail with EPERM: {r:?}"
            ),
        }
    }
    assert_eq!(r.len(), 5, "probe output: {r:?}");
    qemu_io_ok(&uri, &["read -P 0x42 0 1M"]);
    let mut c = std::process::Command::new(qemu_io());
    c.args(["-r", "-f", "raw", "-c", "read -P 0x42 0 1M"])
        .arg(&snap);
    run_ok(&mut c);

    // Past the end: qemu refuses; the server refuses too.
    qemu_io_fail(&uri, &["write -P 0x44 16M 4k"]);
    qemu_io_fail(&uri, &["read 16M 4k"]);
    let r = probe(
        &uri,
        &[
            "write_end",
            "write_across_end",
            "read_end",
            "trim_end",
            "zero_end",
            "read0",
        ],
    );
    assert_eq!(r.len(), 6, "probe output: {r:?}");
    for (op, res) in &r {
        if op == "read0" {
            assert_eq!(res, "ok", "the connection should survive the errors: {r:?}");
        } else {
            assert!(
                res.starts_with("error EINVAL") || res.starts_with("error ENOSPC"),
                "{op} past the end should fail with EINVAL or ENOSPC: {r:?}"
            );
        }
    }
    // Nothing was written past or across the end: the last block is intact.
    qemu_io_ok(&uri, &["read -P 0 15M 1M"]);

    // The daemon keeps serving.
    qemu_io_ok(
        &uri,
        &[
            "write -P 0x45 1M 1M",
            "read -P 0x42 0 1M",
            "read -P 0x45 1M 1M",
        ],
    );
    d.ok(&["pool", "list"]);
    d.finish(1);
}
