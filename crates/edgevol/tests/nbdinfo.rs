//! nbdinfo: export properties (volumes read-write, snapshots read-only),
//! export listing, exact allocation maps after writes, trims and
//! write-zeroes, and a clear error for unknown export names.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

fn info(uri: &str) -> Value {
    let out = run_ok(Command::new(nbdinfo()).args(["--json", uri]));
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("nbdinfo --json: {e}:\n{out}"));
    let exports = v["exports"].as_array().expect("exports");
    assert_eq!(exports.len(), 1, "{out}");
    exports[0].clone()
}

#[test]
fn export_properties_and_listing() {
    let d = Daemon::start_tcp();
    d.create_pool("p", "1G", None);
    d.create_pool("q", "1G", Some("1M"));
    d.create_volume("p/a", 64 * MIB);
    d.create_volume("p/b", 128 * MIB);
    d.create_volume("q/c", 4096 * 3);
    qemu_io_ok(&d.uri("p/a"), &["write -P 1 0 1M"]);
    d.ok(&["snapshot", "create", "p/a@s1"]);

    for uri in [d.uri("p/a"), d.tcp_uri("p/a")] {
        let e = info(&uri);
        assert_eq!(e["export-name"], "p/a");
        assert_eq!(e["export-size"], 64 * MIB, "{e}");
        assert_eq!(e["is_read_only"], false, "{e}");
        assert_eq!(e["can_multi_conn"], true, "{e}");
        assert_eq!(e["can_trim"], true, "{e}");
        assert_eq!(e["can_zero"], true, "{e}");
        assert_eq!(e["can_fua"], true, "{e}");
        assert_eq!(e["can_flush"], true, "{e}");
        assert_eq!(e["block_size_minimum"], 4096, "{e}");
        let pref = e["block_size_preferred"].as_u64().expect("preferred");
        let max = e["block_size_maximum"].as_u64().expect("maximum");
        assert!(pref >= 4096 && pref.is_power_of_two() && max >= pref, "{e}");
        let contexts = e["contexts"].as_array().expect("contexts");
        assert!(contexts.iter().any(|c| c == "base:allocation"), "{e}");
    }
    let e = info(&d.uri("p/b"));
    assert_eq!(e["export-size"], 128 * MIB);
    let e = info(&d.uri("q/c"));
    assert_eq!(e["export-size"], 3 * 4096);

    let e = info(&d.uri("p/a@s1"));
    assert_eq!(e["export-name"], "p/a@s1");
    assert_eq!(
        e["is_read_only"], true,
        "snapshot export must be read-only: {e}"
    );
    assert_eq!(e["export-size"], 64 * MIB);
    assert_ne!(
        e["can_trim"], true,
        "snapshot export must not offer trim: {e}"
    );
    assert_ne!(
        e["can_zero"], true,
        "snapshot export must not offer write-zeroes: {e}"
    );

    // --list shows every volume of every pool.
    let list_uri = format!("nbd+unix://?socket={}", d.nbd_sock.display());
    let out = run_ok(Command::new(nbdinfo()).args(["--list", "--json", &list_uri]));
    let v: Value = serde_json::from_str(&out).expect("nbdinfo --list --json");
    let mut names: Vec<String> = v["exports"]
        .as_array()
        .expect("exports")
        .iter()
        .map(|e| e["export-name"].as_str().expect("name").to_string())
        .collect();
    names.sort();
    for want in ["p/a", "p/b", "q/c"] {
        assert!(
            names.iter().any(|n| n == want),
            "nbdinfo --list lacks {want}: {names:?}"
        );
    }
    for e in v["exports"].as_array().expect("exports") {
        if e["export-name"] == "p/b" {
            assert_eq!(e["export-size"], 128 * MIB, "{e}");
        }
    }
    // The text form too, and over TCP.
    let out = run_ok(Command::new(nbdinfo()).args([
        "--list",
        &format!("nbd://127.0.0.1:{}", d.port.expect("port")),
    ]));
    for want in ["p/a", "p/b", "q/c"] {
        assert!(
            out.contains(&format!("export=\"{want}\"")),
            "nbdinfo --list over TCP lacks {want}:\n{out}"
        );
    }
    d.finish(2);
}

/// What a 4 KiB block is, for the expected map.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum B {
    Hole,
    Data,
    Zero,
}

struct Model(Vec<B>);

impl Model {
    fn set(&mut self, off: u64, len: u64, b: B) {
        assert!(off.is_multiple_of(4096) && len.is_multiple_of(4096));
        for i in off / 4096..(off + len) / 4096 {
            self.0[i as usize] = b;
        }
    }

    fn map(&self) -> Vec<MapExtent> {
        let v: Vec<(u64, u64, u64)> = self
            .0
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let kind = match b {
                    B::Hole => HOLE_ZERO,
                    B::Data => DATA,
                    B::Zero => ZERO,
                };
                (i as u64 * 4096, 4096, kind)
            })
            .collect();
        map_of(&v)
    }
}

/// Apply NBD commands with libnbd: `w OFF LEN` (write 0x5a), `t OFF LEN`
/// (trim), `z OFF LEN` (write-zeroes, may punch holes), `zn OFF LEN`
/// (write-zeroes with NO_HOLE), `zf OFF LEN` (FAST_ZERO).
const APPLY: &str = r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
args = sys.argv[2:]
for i in range(0, len(args), 3):
    op, off, n = args[i], int(args[i + 1]), int(args[i + 2])
    if op == "w":
        h.pwrite(b"\x5a" * n, off)
    elif op == "t":
        h.trim(n, off)
    elif op == "z":
        h.zero(n, off)
    elif op == "zn":
        h.zero(n, off, nbd.CMD_FLAG_NO_HOLE)
    elif op == "zf":
        h.zero(n, off, nbd.CMD_FLAG_FAST_ZERO)
    else:
        raise SystemExit("bad op " + op)
h.flush()
h.shutdown()
"#;

fn apply(uri: &str, ops: &[(&str, u64, u64)]) {
    let strs: Vec<String> = ops
        .iter()
        .flat_map(|(o, a, b)| [o.to_string(), a.to_string(), b.to_string()])
        .collect();
    let mut args: Vec<&str> = vec![uri];
    args.extend(strs.iter().map(String::as_str));
    python_ok(APPLY, &args);
}

#[test]
fn allocation_map_is_exact() {
    let d = Daemon::start();
    d.create_pool("p", "1G", Some("1M"));
    let size = 32 * MIB;
    d.create_volume("p/v", size);
    let uri = d.uri("p/v");
    let mut m = Model(vec![B::Hole; (size / 4096) as usize]);
    assert_eq!(nbd_map(&uri), m.map(), "a new volume is one hole");

    let k = 4096;
    let steps: Vec<Vec<(&str, u64, u64)>> = vec![
        vec![
            ("w", 0, MIB),
            ("w", 3 * MIB, 2 * MIB),
            ("w", 10 * MIB + 3 * k, k),
            ("w", size - k, k),
        ],
        vec![
            ("t", 512 * KIB, 256 * KIB),
            ("t", 3 * MIB + 5 * k, k),
            ("t", 20 * MIB, MIB),
        ],
        vec![
            ("zn", 4 * MIB, 64 * KIB),
            ("zn", 8 * MIB, 8 * k),
            ("z", 4 * MIB + 128 * KIB, 128 * KIB),
        ],
        vec![
            ("zf", 0, 16 * k),
            ("z", 10 * MIB, 4 * k),
            ("zn", size - 2 * k, 2 * k),
        ],
        // Overwrite allocated zeroes and holes with data again.
        vec![("w", 8 * MIB + 2 * k, k), ("w", 512 * KIB + k, 2 * k)],
    ];
    for (i, ops) in steps.iter().enumerate() {
        apply(&uri, ops);
        for &(op, off, len) in ops {
            let b = match op {
                "w" => B::Data,
                "zn" => B::Zero,
                _ => B::Hole,
            };
            m.set(off, len, b);
        }
        assert_eq!(nbd_map(&uri), m.map(), "map after step {i}: {ops:?}");
    }

    // A snapshot keeps its map while the volume changes.
    d.ok(&["snapshot", "create", "p/v@s"]);
    let before = m.map();
    apply(&uri, &[("t", 0, size)]);
    assert_eq!(
        nbd_map(&uri),
        map_of(&[(0, size, HOLE_ZERO)]),
        "volume after trimming everything"
    );
    assert_eq!(
        nbd_map(&d.uri("p/v@s")),
        before,
        "the snapshot's map must not change"
    );
    d.finish(1);
}

#[test]
fn unknown_export_names_fail_clearly() {
    let d = Daemon::start();
    d.create_pool("p", "1G", None);
    d.create_volume("p/v", 16 * MIB);
    for (name, word) in [
        ("p/nope", "nope"),
        ("nopool/v", "nopool"),
        ("p/v@nosnap", "nosnap"),
        ("justaname", "justaname"),
    ] {
        let uri = d.uri(name);
        let o = output(Command::new(nbdinfo()).arg(&uri).env("LIBNBD_DEBUG", "1"));
        assert!(
            !o.status.success(),
            "nbdinfo {uri} should fail:\n{}",
            show(&o)
        );
        let err = String::from_utf8_lossy(&o.stderr);
        // nbdinfo names the export; the server's reason (seen in libnbd's
        // debug output) names what is missing.
        assert!(
            err.contains(&format!("for export: {name}")),
            "nbdinfo should name export {name}:\n{err}"
        );
        let server_msg: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("server error message"))
            .collect();
        assert!(
            server_msg.iter().any(|l| l.contains(word)),
            "the server's error for {name} should mention {word:?}: {server_msg:?}"
        );
    }
    // Still serving.
    let e = info(&d.uri("p/v"));
    assert_eq!(e["export-size"], 16 * MIB);
    d.finish(1);
}

#[test]
fn default_export_serves_the_empty_name() {
    let d = Daemon::start_with(DaemonOptions {
        default_export: Some("p/v".into()),
        ..DaemonOptions::default()
    });
    d.create_pool("p", "1G", None);
    d.create_volume("p/v", 24 * MIB);
    qemu_io_ok(&d.uri("p/v"), &["write -P 0x3d 0 1M"]);
    let empty = format!("nbd+unix:///?socket={}", d.nbd_sock.display());
    assert_eq!(nbd_size(&empty), 24 * MIB);
    qemu_io_ok(&empty, &["read -P 0x3d 0 1M", "write -P 0x3e 1M 1M"]);
    qemu_io_ok(&d.uri("p/v"), &["read -P 0x3e 1M 1M"]);
    d.finish(1);

    // Without --default-export the empty name is refused, clearly.
    let d = Daemon::start();
    d.create_pool("p", "1G", None);
    d.create_volume("p/v", 24 * MIB);
    let empty = format!("nbd+unix:///?socket={}", d.nbd_sock.display());
    let o = output(Command::new(nbdinfo()).arg(&empty).env("LIBNBD_DEBUG", "1"));
    assert!(
        !o.status.success(),
        "the empty export name was served:\n{}",
        show(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines()
            .any(|l| l.contains("server error message") && l.contains("POOL/VOLUME")),
        "the server should explain how to name an export:\n{err}"
    );
    d.finish(1);
}
