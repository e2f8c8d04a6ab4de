//! Bad input gets clear errors (exit status 1, one line naming the object),
//! and the daemon keeps serving: unknown names, invalid sizes and names,
//! devices already in a pool, raw garbage on the NBD and API sockets, a
//! second daemon on the same data directory, destroying what clients use;
//! and `--json` output of every command parses.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// The daemon still answers on the API and NBD, with `p/v` readable.
fn still_serving(d: &mut Daemon) {
    assert!(d.is_running(), "the daemon died; log:\n{}", d.log());
    d.ok(&["pool", "list"]);
    let out = run_ok(Command::new(nbdinfo()).args(["--size", &d.uri("p/v")]));
    assert!(!out.trim().is_empty());
}

fn base() -> Daemon {
    let d = Daemon::start();
    d.create_pool("p", "1G", None);
    d.create_volume("p/v", 16 * MIB);
    d.ok(&["snapshot", "create", "p/v@s"]);
    d
}

#[test]
fn unknown_names_fail_naming_the_object() {
    let mut d = base();
    let cases: &[(&[&str], &str)] = &[
        (&["pool", "status", "nopool"], "nopool"),
        (&["pool", "check", "nopool"], "nopool"),
        (&["pool", "destroy", "nopool"], "nopool"),
        (&["volume", "list", "nopool"], "nopool"),
        (&["volume", "create", "nopool/v", "--size", "1M"], "nopool"),
        (&["volume", "get", "p/nosuch"], "nosuch"),
        (&["volume", "get", "nopool/v"], "nopool"),
        (&["volume", "destroy", "p/nosuch"], "nosuch"),
        (&["volume", "resize", "p/nosuch", "1M"], "nosuch"),
        (&["volume", "set", "p/nosuch", "comment=x"], "nosuch"),
        (&["volume", "promote", "p/nosuch"], "nosuch"),
        (&["volume", "get", "p/v", "nosuchprop"], "nosuchprop"),
        (&["snapshot", "create", "p/nosuch@s"], "nosuch"),
        (&["snapshot", "list", "p/nosuch"], "nosuch"),
        (&["snapshot", "destroy", "p/v@nosnap"], "nosnap"),
        (&["snapshot", "rollback", "p/v@nosnap"], "nosnap"),
        (&["clone", "p/v@nosnap", "p/c"], "nosnap"),
        (&["clone", "p/nosuch@s", "p/c"], "nosuch"),
        (&["clone", "nopool/v@s", "nopool/c"], "nopool"),
    ];
    for (args, word) in cases {
        let e = d.fail(args);
        assert!(
            e.contains(word),
            "`edgevol {}` should name {word:?}: {e}",
            args.join(" ")
        );
    }
    // Already existing names.
    let e = d.fail(&["volume", "create", "p/v", "--size", "1M"]);
    assert!(e.contains("already exists") && e.contains('v'), "{e}");
    let e = d.fail(&["snapshot", "create", "p/v@s"]);
    assert!(e.contains("already exists") && e.contains('s'), "{e}");
    let e = d.fail(&["clone", "p/v@s", "p/v"]);
    assert!(e.contains("already exists"), "{e}");
    let f = d.path("other.img");
    let e = d.fail(&[
        "pool",
        "create",
        "p",
        f.to_str().expect("path"),
        "--size",
        "1G",
    ]);
    assert!(e.contains("already exists") && e.contains("\"p\""), "{e}");
    assert!(
        !f.exists(),
        "a refused pool create left {} behind",
        f.display()
    );
    // A clone in another pool.
    let e = d.fail(&["clone", "p/v@s", "q/c"]);
    assert!(e.contains("pool"), "{e}");
    still_serving(&mut d);
    d.finish(1);
}

#[test]
fn invalid_sizes_names_and_options() {
    let mut d = base();
    let img = d.path("x.img");
    let img = img.to_str().expect("path");
    let cases: &[(&[&str], &[&str])] = &[
        (&["volume", "create", "p/w", "--size", "1000"], &["4096"]),
        (&["volume", "create", "p/w", "--size", "0"], &["4096"]),
        (&["volume", "create", "p/w", "--size", "1.5K"], &["4096"]),
        (
            &["volume", "create", "p/w", "--size", "16383P"],
            &["too large"],
        ),
        (&["volume", "resize", "p/v", "1000"], &["1000"]),
        (&["volume", "resize", "p/v", "1000", "--force"], &["4096"]),
        (&["volume", "resize", "p/v", "16777217"], &["4096"]),
        (&["volume", "set", "p/v", "volsize=abc"], &["abc"]),
        (&["volume", "set", "p/v", "readonly=maybe"], &["maybe"]),
        (&["volume", "set", "p/v", "novalue"], &["novalue"]),
        (&["volume", "create", "p/a/b", "--size", "1M"], &["p/a/b"]),
        (&["volume", "create", "p/", "--size", "1M"], &["p/"]),
        (
            &["volume", "create", "p/bad name", "--size", "1M"],
            &["bad name"],
        ),
        (&["volume", "create", "p/..", "--size", "1M"], &[".."]),
        (&["volume", "create", "p/x@y", "--size", "1M"], &["x@y"]),
        (
            &["volume", "create", "justaname", "--size", "1M"],
            &["justaname"],
        ),
        (&["snapshot", "create", "p/v"], &["p/v"]),
        (&["snapshot", "create", "p/v@"], &["p/v@"]),
        (&["snapshot", "create", "p/v@bad/name"], &["bad/name"]),
        (&["pool", "create", "a/b", img, "--size", "1G"], &["a/b"]),
        (&["pool", "create", "x", img, "--size", "1K"], &["small"]),
        (
            &[
                "pool",
                "create",
                "x",
                img,
                "--size",
                "1G",
                "-o",
                "segment_size=3M",
            ],
            &["segment"],
        ),
        (
            &["pool", "create", "x", img, "--size", "1G", "-o", "bogus=1"],
            &["bogus"],
        ),
        (&["pool", "create", "x", img], &["--size"]),
        (
            &[
                "pool",
                "create",
                "x",
                "/nonexistent-dir/x.img",
                "--size",
                "1G",
            ],
            &["/nonexistent-dir"],
        ),
    ];
    for (args, words) in cases {
        let e = d.fail(args);
        for w in *words {
            assert!(
                e.contains(w),
                "`edgevol {}` should mention {w:?}: {e}",
                args.join(" ")
            );
        }
    }
    assert!(
        !std::path::Path::new(img).exists(),
        "refused pool creates left {img} behind"
    );
    // Sizes clap rejects: non-zero exit and the bad value named.
    for bad in ["10X", "-5", "abc", "1.5.5M", "99999999999P"] {
        let o = d.cli(&["volume", "create", "p/w", &format!("--size={bad}")]);
        assert!(!o.status.success(), "--size={bad} accepted:\n{}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(bad),
            "--size={bad}: the error should name the value:\n{err}"
        );
    }
    // Nothing was created, nothing changed.
    let vols = d.json(&["volume", "list"]);
    assert_eq!(vols.as_array().map(Vec::len), Some(1), "{vols}");
    assert_eq!(vols[0]["size"], 16 * MIB);
    assert_eq!(d.json(&["pool", "list"]).as_array().map(Vec::len), Some(1));
    still_serving(&mut d);
    d.finish(1);
}

#[test]
fn devices_already_in_a_pool_are_refused() {
    let mut d = base();
    let p_img = d.path("p.img");
    let p_img = p_img.to_str().expect("path");
    // The file of a pool this daemon serves.
    let e = d.fail(&["pool", "create", "q", p_img]);
    assert!(e.contains(p_img), "should name the file: {e}");
    let e = d.fail(&["pool", "create", "q", p_img, "--size", "1G"]);
    assert!(e.contains(p_img), "should name the file: {e}");
    // The same new file twice in one pool.
    let y = d.path("y.img");
    let y = y.to_str().expect("path");
    let e = d.fail(&["pool", "create", "q", y, y, "--size", "1G"]);
    assert!(e.contains(y), "should name the file: {e}");

    // The file of a pool of another (stopped) daemon: not imported here,
    // but labelled; refused, naming the pool it belongs to.
    let mut other = Daemon::start();
    let o_img = other.path("mine.img");
    let o_img_s = o_img.to_str().expect("path");
    other.ok(&["pool", "create", "mine", o_img_s, "--size", "1G"]);
    other.create_volume("mine/data", 4 * MIB);
    qemu_io_ok(&other.uri("mine/data"), &["write -P 0x3c 0 4M"]);
    other.check_pools(1);
    other.stop_clean();
    let e = d.fail(&["pool", "create", "stolen", o_img_s]);
    assert!(
        e.contains(o_img_s) && e.contains("mine"),
        "should name the file and its pool: {e}"
    );
    // That pool is untouched.
    other.restart();
    qemu_io_ok(&other.uri("mine/data"), &["read -P 0x3c 0 4M"]);
    other.finish(1);

    assert_eq!(d.json(&["pool", "list"]).as_array().map(Vec::len), Some(1));
    still_serving(&mut d);
    d.finish(1);
}

// ----------------------------------------------------------------------
// Raw NBD traffic

const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

fn connect(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(&d.nbd_sock).expect("connect to the NBD socket");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s
}

/// Read until EOF or error: true if the server closed the connection.
fn closed_by_server(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
    false
}

/// Fixed-newstyle handshake with NBD_OPT_EXPORT_NAME: returns the export size.
fn handshake(s: &mut UnixStream, export: &str) -> u64 {
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).expect("server greeting");
    assert_eq!(&hello[..8], b"NBDMAGIC");
    assert_eq!(&hello[8..16], b"IHAVEOPT");
    // Client flags: fixed newstyle | no zeroes.
    s.write_all(&3u32.to_be_bytes()).expect("client flags");
    let mut opt = Vec::new();
    opt.extend_from_slice(b"IHAVEOPT");
    opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
    opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
    opt.extend_from_slice(export.as_bytes());
    s.write_all(&opt).expect("option");
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).expect("export size and flags");
    u64::from_be_bytes(reply[..8].try_into().expect("8 bytes"))
}

fn request(s: &mut UnixStream, kind: u16, cookie: u64, offset: u64, len: u32, magic: u32) {
    let mut r = Vec::with_capacity(28);
    r.extend_from_slice(&magic.to_be_bytes());
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    s.write_all(&r).expect("request");
}

/// A simple reply: (error, cookie).
fn simple_reply(s: &mut UnixStream) -> (u32, u64) {
    let mut r = [0u8; 16];
    s.read_exact(&mut r).expect("simple reply");
    assert_eq!(
        u32::from_be_bytes(r[..4].try_into().expect("4")),
        NBD_SIMPLE_REPLY_MAGIC
    );
    (
        u32::from_be_bytes(r[4..8].try_into().expect("4")),
        u64::from_be_bytes(r[8..].try_into().expect("8")),
    )
}

#[test]
fn garbage_on_the_sockets_does_not_hurt_the_daemon() {
    let mut d = Daemon::start_tcp();
    // The management socket (which carries key secrets) is owner-only.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&d.api)
            .expect("api socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "api socket mode {mode:o}");
    }
    d.create_pool("p", "1G", None);
    d.create_volume("p/v", 16 * MIB);
    qemu_io_ok(&d.uri("p/v"), &["write -P 0x6b 0 1M"]);

    // An idle client that never finishes the handshake does not block others.
    let idle = connect(&d);

    // Random bytes before the handshake, on the Unix socket and on TCP.
    let mut junk = vec![0u8; 65536];
    Rng::new(5).fill(&mut junk);
    for _ in 0..3 {
        let mut s = connect(&d);
        let _ = s.write_all(&junk);
        assert!(
            closed_by_server(&mut s),
            "the server kept a connection that sent garbage"
        );
        let mut t =
            std::net::TcpStream::connect(("127.0.0.1", d.port.expect("port"))).expect("tcp");
        t.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let _ = t.write_all(&junk);
        let mut buf = [0u8; 4096];
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            match t.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // Connect and leave at once.
        drop(connect(&d));
    }
    still_serving(&mut d);

    // A huge option length: refused without the daemon reserving it.
    let mut s = connect(&d);
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).expect("greeting");
    s.write_all(&1u32.to_be_bytes()).expect("flags");
    let mut opt = Vec::new();
    opt.extend_from_slice(b"IHAVEOPT");
    opt.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
    opt.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
    s.write_all(&opt).expect("option");
    assert!(
        closed_by_server(&mut s),
        "a 4 GiB option should make the server close"
    );
    still_serving(&mut d);

    // Transmission phase: unknown command → EINVAL, connection usable;
    // bad request magic → connection closed.
    let mut s = connect(&d);
    assert_eq!(handshake(&mut s, "p/v"), 16 * MIB);
    request(&mut s, 99, 1, 0, 4096, NBD_REQUEST_MAGIC);
    let (err, cookie) = simple_reply(&mut s);
    assert_eq!(cookie, 1);
    assert_eq!(err, 22, "unknown command should fail with EINVAL");
    request(&mut s, 0, 2, 0, 4096, NBD_REQUEST_MAGIC); // READ
    let (err, cookie) = simple_reply(&mut s);
    assert_eq!((err, cookie), (0, 2), "read after an unknown command");
    let mut data = vec![0u8; 4096];
    s.read_exact(&mut data).expect("read data");
    assert!(data.iter().all(|&b| b == 0x6b), "read returned wrong data");
    request(&mut s, 0, 3, 0, 4096, 0xdead_beef);
    assert!(
        closed_by_server(&mut s),
        "bad request magic should close the connection"
    );
    still_serving(&mut d);

    // A write whose payload never fully arrives is not applied.
    let mut s = connect(&d);
    handshake(&mut s, "p/v");
    request(&mut s, 1, 4, 0, 1 << 20, NBD_REQUEST_MAGIC); // WRITE 1 MiB
    s.write_all(&vec![0xeeu8; 300_000])
        .expect("partial payload");
    drop(s);
    // An oversized write request (beyond the advertised maximum).
    let mut s = connect(&d);
    handshake(&mut s, "p/v");
    request(&mut s, 1, 5, 0, 0xffff_f000, NBD_REQUEST_MAGIC);
    let _ = s.write_all(&vec![0xeeu8; 65536]);
    let mut buf = [0u8; 64];
    let _ = s.read(&mut buf);
    drop(s);
    std::thread::sleep(Duration::from_millis(200));
    still_serving(&mut d);
    qemu_io_ok(&d.uri("p/v"), &["read -P 0x6b 0 1M", "read -P 0 1M 15M"]);

    // Garbage on the API socket: binary junk, a malformed header, a
    // truncated JSON body, a body that never arrives.
    let api_junk: [&[u8]; 4] = [
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET /v1/pools HTTP/1.1\r\nHost x\r\n\r\n",
        b"POST /v1/pools HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"name\":1",
        b"POST /v1/pools HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    ];
    for junk in api_junk {
        let mut a = UnixStream::connect(&d.api).expect("api socket");
        a.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let _ = a.write_all(junk);
        let _ = a.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = a.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(
            !text.starts_with("HTTP/1.1 2"),
            "API accepted garbage {junk:?}: {text}"
        );
    }
    still_serving(&mut d);
    drop(idle);
    d.finish(1);
}

#[test]
fn second_daemon_on_the_same_data_dir_is_refused() {
    let mut d = base();
    qemu_io_ok(&d.uri("p/v"), &["write -P 0x21 0 1M"]);
    // Same data dir, other sockets: refused by the lock.
    let mut c = Command::new(bin());
    c.arg("serve")
        .arg("--data-dir")
        .arg(&d.data_dir)
        .arg("--api-socket")
        .arg(d.path("api2.sock"))
        .arg("--nbd-socket")
        .arg(d.path("nbd2.sock"))
        .args(["--nbd-listen", "none"]);
    let o = run_with_timeout(&mut c, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(1), "second daemon:\n{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&d.data_dir.display().to_string()) && err.contains("in use"),
        "the second daemon should say the data dir is in use:\n{err}"
    );
    // Same everything (the command line the test daemon uses).
    let o = run_with_timeout(&mut d.serve_command(), Duration::from_secs(30));
    assert!(
        !o.status.success(),
        "a second identical daemon started:\n{}",
        show(&o)
    );
    // The first one is unharmed: its sockets still work.
    still_serving(&mut d);
    qemu_io_ok(&d.uri("p/v"), &["read -P 0x21 0 1M"]);
    d.finish(1);
}

fn run_with_timeout(c: &mut Command, limit: Duration) -> std::process::Output {
    output_timeout(c, limit).unwrap_or_else(|| {
        panic!("still running after {limit:?} (it should have refused to start)")
    })
}

#[test]
fn destroy_with_attached_clients() {
    let mut d = base();
    qemu_io_ok(&d.uri("p/v"), &["write -P 0x55 0 1M"]);
    let mut vc = NbdClient::connect(&d.uri("p/v"));
    assert_eq!(vc.hello, (16 * MIB).to_string());
    let mut sc = NbdClient::connect(&d.uri("p/v@s"));
    assert_eq!(sc.hello, (16 * MIB).to_string());

    let ex = d.json(&["exports"]);
    let find = |name: &str| -> Value {
        ex.as_array()
            .expect("exports")
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no export {name} in {ex}"))
    };
    assert_eq!(find("p/v")["connections"], 1);
    assert_eq!(find("p/v")["read_only"], false);
    assert_eq!(find("p/v@s")["connections"], 1);
    assert_eq!(find("p/v@s")["read_only"], true);

    // Refused while attached: volume, snapshot, pool.
    let e = d.fail(&["volume", "destroy", "p/v"]);
    assert!(e.contains("attached") && e.contains("p/v"), "{e}");
    let e = d.fail(&["snapshot", "destroy", "p/v@s"]);
    assert!(e.contains("attached"), "{e}");
    let e = d.fail(&["pool", "destroy", "p"]);
    assert!(e.contains("attached"), "{e}");
    // The clients are unaffected.
    assert_eq!(vc.cmd("read 0 4096"), "ok 4096 85");
    assert_eq!(
        sc.cmd("read 0 4096"),
        "ok 0 0",
        "the snapshot predates the write"
    );

    // The snapshot client leaves: the snapshot can go (only its own
    // clients count, not the volume's).
    sc.close();
    wait_exports(&d, "p/v@s", 0);
    d.ok(&["snapshot", "destroy", "p/v@s"]);

    // --force destroys the volume under its client: the client's requests
    // fail with EIO from then on (docs/nbd.md: volume gone), even once a
    // new volume takes the same name; a flush has nothing left to lose.
    d.ok(&["volume", "destroy", "p/v", "--force"]);
    const EIO: &str = "error EIO";
    assert_eq!(vc.cmd("read 0 4096"), EIO, "read from a destroyed volume");
    assert_eq!(
        vc.cmd("read 8388608 1048576"),
        EIO,
        "read from a destroyed volume"
    );
    assert_eq!(
        vc.cmd("write 0 4096 0x99"),
        EIO,
        "write to a destroyed volume"
    );
    assert_eq!(vc.cmd("flush"), "ok");
    d.create_volume("p/v", 16 * MIB);
    assert_eq!(
        vc.cmd("write 0 4096 0x99"),
        EIO,
        "write through a stale connection"
    );
    assert_eq!(
        vc.cmd("read 0 4096"),
        EIO,
        "read through a stale connection"
    );
    vc.close();
    qemu_io_ok(&d.uri("p/v"), &["read -P 0 0 16M"]);
    wait_exports(&d, "p/v", 0);
    assert_eq!(d.json(&["exports"]), serde_json::json!([]));
    still_serving(&mut d);
    d.ok(&["volume", "destroy", "p/v"]);
    d.finish(1);
}

/// Wait until `exports` shows `n` connections to `name` (0 = absent).
fn wait_exports(d: &Daemon, name: &str, n: u64) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let ex = d.json(&["exports"]);
        let got = ex
            .as_array()
            .expect("exports")
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["connections"].as_u64().unwrap_or(0))
            .unwrap_or(0);
        if got == n {
            return;
        }
        assert!(
            Instant::now() < end,
            "{name} still has {got} connections, want {n}: {ex}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Properties whose values are numbers (sizes, counts, bytes, ratios,
/// times): `--json` must give them as JSON numbers (docs/openapi.yaml).
const NUMERIC: &[&str] = &[
    "size",
    "allocated",
    "free",
    "logical",
    "data",
    "metadata",
    "usable",
    "referenced",
    "compressratio",
    "segment_size",
    "free_segments",
    "reserved_segments",
    "volumes",
    "snapshots",
    "gc_pending",
    "created",
    "creation",
    "volsize",
    "used",
    "usedbydataset",
    "usedbysnapshots",
    "logicalsize",
    "stored",
    "connections",
    "queues",
    "read_errors",
    "write_errors",
    "checksum_errors",
    "repaired_bytes",
    "done_bytes",
    "total_bytes",
    "rate",
    "started",
    "ended",
    "runs",
    "entries",
    "records",
    "data_bytes",
    "percent",
];

/// Where `v` gives a number as a string: a known numeric property with a
/// string value, or any string that is a plain number (or a ratio like
/// `1.00x`) outside the properties that are text by nature.
fn numbers_as_strings(v: &Value, at: &str, out: &mut Vec<String>) {
    const TEXT: &[&str] = &[
        "guid", "name", "comment", "serial", "message", "error", "path",
    ];
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let here = format!("{at}.{k}");
                if let Value::String(s) = x {
                    let plain = s.trim_end_matches('x').parse::<f64>().is_ok();
                    if NUMERIC.contains(&k.as_str()) || (plain && !TEXT.contains(&k.as_str())) {
                        out.push(format!("{here} = {s:?}"));
                    }
                }
                numbers_as_strings(x, &here, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                numbers_as_strings(x, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn json_output_of_every_command_parses_with_numbers_as_numbers() {
    let d = Daemon::start();
    let img = d.path("j.img");
    let img = img.to_str().expect("path");
    let sock = d.path("vhost.sock");
    let sock = sock.to_str().expect("path");
    // Each command in order, with --json; every one must print JSON: one
    // document, or (`--wait`) one object per line.
    let cmds: Vec<Vec<&str>> = vec![
        vec![
            "pool",
            "create",
            "j",
            img,
            "--size",
            "1G",
            "-o",
            "segment_size=2M",
        ],
        vec!["pool", "list"],
        vec!["pool", "status", "j"],
        vec!["pool", "get", "j"],
        vec!["pool", "get", "j", "size"],
        vec!["pool", "set", "j", "comment=hello"],
        vec!["pool", "inherit", "j", "comment"],
        vec!["pool", "check", "j"],
        vec![
            "volume",
            "create",
            "j/v",
            "--size",
            "16M",
            "-o",
            "comment=hello",
        ],
        vec!["volume", "list"],
        vec!["volume", "list", "j"],
        vec!["volume", "get", "j/v"],
        vec!["volume", "get", "j/v", "volsize"],
        vec!["volume", "get", "j/v", "comment"],
        vec!["volume", "set", "j/v", "org:owner=test"],
        vec!["volume", "inherit", "j/v", "org:owner"],
        vec!["volume", "resize", "j/v", "32M"],
        vec!["snapshot", "create", "j/v@a"],
        vec!["snapshot", "list", "j/v"],
        vec!["clone", "j/v@a", "j/c"],
        vec!["volume", "promote", "j/c"],
        vec!["snapshot", "create", "j/v@b"],
        vec!["snapshot", "rollback", "j/v@a"],
        vec!["snapshot", "destroy", "j/v@b"],
        vec!["export", "add", "j/v", "--vhost-user", sock, "--temporary"],
        vec!["export", "list"],
        vec!["exports"],
        vec!["pool", "scrub", "j", "--wait"],
        vec!["pool", "status", "j"],
        vec!["export", "remove", sock],
        vec!["volume", "destroy", "j/c"],
        vec!["volume", "destroy", "j/v"],
        vec!["pool", "destroy", "j"],
    ];
    let (mut bad, mut strings) = (Vec::new(), Vec::new());
    for c in &cmds {
        let mut args = vec!["--json"];
        args.extend_from_slice(c);
        let o = d.cli(&args);
        assert!(
            o.status.success(),
            "`edgevol {}` failed:\n{}",
            args.join(" "),
            show(&o)
        );
        let out = String::from_utf8_lossy(&o.stdout);
        let docs: Vec<Result<Value, _>> = if c.contains(&"--wait") {
            out.lines().map(serde_json::from_str::<Value>).collect()
        } else {
            vec![serde_json::from_str::<Value>(&out)]
        };
        for doc in docs {
            match doc {
                Ok(v) => numbers_as_strings(&v, &args.join(" "), &mut strings),
                Err(e) => bad.push(format!("`edgevol {}` printed {out:?}: {e}", args.join(" "))),
            }
        }
    }
    assert!(
        bad.is_empty(),
        "--json output that does not parse:\n{}",
        bad.join("\n")
    );
    assert!(
        strings.is_empty(),
        "--json output with numbers as strings:\n{}",
        strings.join("\n")
    );
    assert_eq!(d.json(&["pool", "list"]), serde_json::json!([]));
    d.finish(0);
}

#[test]
fn destroyed_pools_free_their_files() {
    let mut d = Daemon::start();
    let img = d.path("p.img");
    let img_s = img.to_str().expect("path");
    d.ok(&["pool", "create", "p", img_s, "--size", "1G"]);
    d.create_volume("p/v", 16 * MIB);
    qemu_io_ok(&d.uri("p/v"), &["write -P 0x7a 0 4M"]);
    d.ok(&["pool", "destroy", "p"]);
    assert!(img.exists(), "pool destroy should keep the file");
    let e = d.fail(&["pool", "status", "p"]);
    assert!(e.contains("\"p\""), "{e}");
    let o = output(Command::new(nbdinfo()).arg(d.uri("p/v")));
    assert!(
        !o.status.success(),
        "a destroyed pool's volume is still served"
    );
    // The file makes a new, empty pool.
    d.ok(&["pool", "create", "q", img_s]);
    d.create_volume("q/v", 16 * MIB);
    qemu_io_ok(&d.uri("q/v"), &["read -P 0 0 16M"]);
    // After a restart only the new pool comes back.
    d.stop_clean();
    d.restart();
    let names: Vec<String> = d
        .json(&["pool", "list"])
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(names, ["q"]);
    d.finish(1);
}

#[test]
fn missing_or_truncated_pool_files_make_pools_unavailable_not_the_daemon() {
    let mut d = Daemon::start();
    d.create_pool("p", "256M", None);
    d.create_pool("q", "256M", None);
    d.create_pool("t", "256M", None);
    d.create_volume("p/v", 16 * MIB);
    d.create_volume("q/v", 16 * MIB);
    qemu_io_ok(&d.uri("p/v"), &["write -P 0x4e 0 1M"]);
    qemu_io_ok(&d.uri("q/v"), &["write -P 0x4f 0 1M"]);
    d.stop_clean();
    let p_img = d.path("p.img");
    let moved = d.path("p.img.moved");
    std::fs::rename(&p_img, &moved).expect("move p.img away");
    let t = std::fs::OpenOptions::new()
        .write(true)
        .open(d.path("t.img"))
        .expect("open t.img");
    t.set_len(100 * MIB).expect("truncate t.img");
    drop(t);
    d.restart();

    let list = d.json(&["pool", "list"]);
    let entry = |name: &str| -> Value {
        list.as_array()
            .expect("list")
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("pool {name} missing from {list}"))
    };
    assert_eq!(entry("p")["state"], "UNAVAIL", "{list}");
    let why = entry("p")["error"].as_str().unwrap_or("").to_string();
    assert!(
        why.contains("p.img"),
        "the reason should name the file: {why}"
    );
    assert_eq!(entry("t")["state"], "UNAVAIL", "{list}");
    assert_eq!(entry("q")["state"], "ONLINE", "{list}");
    // The healthy pool serves; the others fail clearly.
    qemu_io_ok(&d.uri("q/v"), &["read -P 0x4f 0 1M"]);
    let e = d.fail(&["pool", "status", "p"]);
    assert!(e.contains("\"p\"") && e.contains("p.img"), "{e}");
    let e = d.fail(&["volume", "create", "p/w", "--size", "1M"]);
    assert!(e.contains("\"p\""), "{e}");
    let o = output(Command::new(nbdinfo()).arg(d.uri("p/v")));
    assert!(
        !o.status.success(),
        "a volume of an unavailable pool is served"
    );
    // `volume list` lists what it can.
    let vols = d.json(&["volume", "list"]);
    assert_eq!(vols.as_array().map(Vec::len), Some(1), "{vols}");
    // The truncated pool can be forgotten.
    d.ok(&["pool", "destroy", "t"]);

    // With its file back, p is imported again, data intact.
    d.stop_clean();
    std::fs::rename(&moved, &p_img).expect("move p.img back");
    d.restart();
    assert_eq!(d.pool_status("p")["state"], "ONLINE");
    qemu_io_ok(&d.uri("p/v"), &["read -P 0x4e 0 1M"]);
    d.finish(2);
}

#[test]
fn corrupted_data_is_detected_not_returned() {
    // Flip bytes of a data block in the pool file behind the daemon's back:
    // reading it is an I/O error (never the wrong bytes), the error is
    // counted, and `pool check` fails.
    let mut d = Daemon::start();
    d.create_pool("p", "256M", None);
    // Uncompressed, so the pattern can be found in the pool file and each
    // 4 KiB block carries its own checksum.
    d.create_uncompressed_volume("p/v", "16M");
    let uri = d.uri("p/v");
    // A recognisable 64 KiB at 1 MiB; zeros elsewhere.
    qemu_io_ok(
        &uri,
        &["write -P 0xa7 1M 64k", "write -P 0xa8 4M 64k", "flush"],
    );
    d.stop_clean();
    let img = d.path("p.img");
    let mut data = std::fs::read(&img).expect("read pool file");
    let pat = vec![0xa7u8; 65536];
    let at = data
        .windows(pat.len())
        .position(|w| w == &pat[..])
        .expect("the data is stored as written (no compression or encryption)");
    // Damage the third 4 KiB block of the 64 KiB.
    data[at + 8192 + 100] ^= 0xff;
    std::fs::write(&img, &data).expect("write pool file");
    drop(data);
    d.restart();

    let out = qemu_io_fail(&uri, &["read -P 0xa7 1M 64k"]);
    assert!(
        out.contains("Input/output error"),
        "reading a damaged block: {out}"
    );
    // The damaged 4 KiB block fails alone; its neighbours read fine.
    qemu_io_ok(
        &uri,
        &[
            "read -P 0xa7 1M 8k",
            "read -P 0xa7 1036k 52k",
            "read -P 0xa8 4M 64k",
        ],
    );
    let st = d.pool_status("p");
    let errors: u64 = st["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|x| x["checksum_errors"].as_u64().unwrap_or(0))
        .sum();
    assert!(errors >= 1, "checksum errors not counted: {st}");
    let o = d.cli(&["pool", "check", "p"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "pool check should fail:\n{}",
        show(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("checksum"),
        "{}",
        show(&o)
    );
    // Rewriting the block heals the volume.
    qemu_io_ok(&uri, &["write -P 0xa9 1M 64k", "read -P 0xa9 1M 64k"]);
    // The old copy is garbage now: the pool checks clean again.
    d.finish(1);
}
