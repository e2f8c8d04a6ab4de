//! NBD clients that do not negotiate block sizes (`NBD_OPT_EXPORT_NAME`,
//! and `NBD_OPT_GO` without `NBD_INFO_BLOCK_SIZE`) are served at any byte
//! alignment, checked byte for byte against a model; clients that do
//! negotiate are still held to 4 KiB; oversized requests are answered
//! without a hang. See docs/nbd.md, "Alignment".

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

/// Python helpers shared by the scripts: connecting as each kind of
/// client, and a byte model of the volume.
const PRELUDE: &str = r#"
import nbd, random, sys
uri = sys.argv[1]

def connect(kind):
    h = nbd.NBD()
    if kind == "export_name":
        # Without FIXED_NEWSTYLE the client can only use NBD_OPT_EXPORT_NAME.
        h.set_handshake_flags(nbd.HANDSHAKE_FLAG_NO_ZEROES)
    elif kind == "go_no_block_size":
        h.set_request_block_size(False)
    h.connect_uri(uri)
    want = {"export_name": "newstyle"}.get(kind, "newstyle-fixed")
    assert h.get_protocol() == want, (kind, h.get_protocol())
    return h

def expect_errno(name, f):
    try:
        f()
    except nbd.Error as e:
        assert e.errno == name, (name, e.errno, e)
        return
    raise AssertionError("expected " + name)
"#;

/// Run a script with the export's URI and a time limit (a hang fails).
fn script(body: &str, uri: &str) -> String {
    let mut c = Command::new(python_nbd());
    c.arg("-c").arg(format!("{PRELUDE}\n{body}")).arg(uri);
    let out = output_timeout(&mut c, Duration::from_secs(120)).expect("the script hung");
    assert!(out.status.success(), "script failed:\n{}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn daemon_with_volume(size: u64) -> (Daemon, String) {
    let d = Daemon::start();
    d.create_pool("p", "512M", Some("1M"));
    d.create_volume("p/v", size);
    let uri = d.uri("p/v");
    (d, uri)
}

#[test]
fn clients_that_do_not_negotiate_get_any_alignment() {
    let (d, uri) = daemon_with_volume(16 << 20);
    let out = script(
        r#"
model = bytearray(1 << 20)
for kind in ["export_name", "go_no_block_size"]:
    h = connect(kind)
    # Advertised (unrequested) or not at all: never more than 1.
    assert h.get_block_size(nbd.SIZE_MINIMUM) in (0, 1), h.get_block_size(nbd.SIZE_MINIMUM)
    seed = 1 if kind == "export_name" else 2
    cases = [(0, 1), (4095, 1), (4096, 1), (512, 512), (3584, 1024), (8191, 2),
             (12345, 1024), (20000, 9000), (40960, 4097), (65535, 3), (99999, 1)]
    for i, (off, n) in enumerate(cases):
        data = bytes((seed * 31 + i * 7 + j) % 251 + 1 for j in range(n))
        h.pwrite(data, off)
        model[off:off + n] = data
    for off, n in cases:
        for o, l in [(off, n), (max(off - 3, 0), n + 6), (off | 1, 1)]:
            assert h.pread(l, o) == model[o:o + l], (kind, o, l)
    # Trim and zero of partial blocks write zeroes there.
    h.trim(5000, 100)
    model[100:5100] = bytes(5000)
    h.zero(1000, 40000, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
    model[40000:41000] = bytes(1000)
    h.flush()
    assert h.pread(1 << 20, 0) == model, kind
    h.shutdown()
print("ok")
"#,
        &uri,
    );
    assert!(out.contains("ok"));
    d.finish(1);
}

#[test]
fn random_trace_from_several_connections_matches_a_model() {
    let (d, uri) = daemon_with_volume(16 << 20);
    let out = script(
        r#"
SPAN = 256 * 1024
rng = random.Random(13)
hs = [connect("export_name"), connect("go_no_block_size"), connect("go_no_block_size")]
model = bytearray(SPAN)
for step in range(1500):
    h = rng.choice(hs)
    off = rng.randrange(SPAN - 1)
    n = min(rng.choice([rng.randint(1, 16), 512 * rng.randint(1, 4), rng.randint(1, 20000)]), SPAN - off)
    op = rng.randrange(10)
    if op <= 3:
        data = bytes(rng.randrange(1, 256) for _ in range(16)) * (n // 16 + 1)
        data = data[:n]
        h.pwrite(data, off, nbd.CMD_FLAG_FUA if rng.random() < 0.1 else 0)
        model[off:off + n] = data
    elif op == 4:
        h.trim(n, off)
        model[off:off + n] = bytes(n)
    elif op == 5:
        h.zero(n, off, rng.choice([0, nbd.CMD_FLAG_NO_HOLE]))
        model[off:off + n] = bytes(n)
    elif op == 6:
        h.flush()
    else:
        assert h.pread(n, off) == model[off:off + n], (step, off, n)

# Concurrent rounds: every connection writes its own sectors of the same
# blocks at once (one request in flight per sector); none may be lost.
for rnd in range(30):
    base = rng.randrange(SPAN // 4096 - 2) * 4096 + rng.choice([0, 512, 1000])
    cmds = []
    for s in range(8):
        h = hs[s % len(hs)]
        data = bytes([(rnd * 8 + s) % 255 + 1]) * 512
        off = base + s * 512 + 1
        cmds.append((h, h.aio_pwrite(data, off)))
        model[off:off + 512] = data
    for h, c in cmds:
        while not h.aio_command_completed(c):
            h.poll(-1)
for h in hs:
    assert h.pread(SPAN, 0) == model
    h.shutdown()
print("ok")
"#,
        &uri,
    );
    assert!(out.contains("ok"));
    d.finish(1);
}

#[test]
fn a_client_that_negotiates_is_held_to_4k() {
    let (d, uri) = daemon_with_volume(16 << 20);
    script(
        r#"
h = connect("default")
assert h.get_block_size(nbd.SIZE_MINIMUM) == 4096
assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20
h.set_strict_mode(0)
expect_errno("EINVAL", lambda: h.pread(512, 0))
expect_errno("EINVAL", lambda: h.pread(4096, 1))
expect_errno("EINVAL", lambda: h.pwrite(b"x" * 100, 0))
expect_errno("EINVAL", lambda: h.trim(4096, 512))
assert h.pread(4096, 0) == bytes(4096), "nothing was written"
h.shutdown()
"#,
        &uri,
    );
    d.finish(1);
}

/// Raw protocol (NBD_OPT_EXPORT_NAME, simple replies), as old clients and
/// the reference tester speak it: oversized requests.
const RAW: &str = r#"
import socket, struct
path = uri.split("socket=")[1]
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(path)
def recv(n):
    b = bytearray()
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return bytes(b)
assert recv(18)[:16] == b"NBDMAGICIHAVEOPT"
s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
name = b"p/v"
s.sendall(b"IHAVEOPT" + struct.pack(">II", 1, len(name)) + name)
size, _flags = struct.unpack(">QH", recv(10))
cookie = 0
def request(kind, off, n, payload=b""):
    global cookie
    cookie += 1
    s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, kind, cookie, off, n) + payload)
    return cookie
def reply(c):
    magic, err, got = struct.unpack(">IIQ", recv(16))
    assert magic == 0x67446698 and got == c, (hex(magic), got, c)
    return err
READ, WRITE, TRIM = 0, 1, 4
# The reference tester's sequence: 1 MiB, then larger and unaligned.
for off, n in [(0, 1 << 20), (1, (1 << 20) + 14), (2, (2 << 20) + 28)]:
    assert reply(request(READ, off, n)) == 0, (off, n)
    recv(n)
# The reference tester's integrityhuge trace reads 42 MB at once.
assert reply(request(READ, 3, 42 << 20)) == 0
recv(42 << 20)
# Beyond the 64 MiB maximum payload: EINVAL, no payload, still in sync.
assert reply(request(READ, 0, (64 << 20) + 1)) == 22
# A trim may exceed the maximum payload (no payload on the wire).
assert reply(request(TRIM, 1, (48 << 20) + 3)) == 0
request(WRITE, 7, 3, b"abc")
assert reply(cookie) == 0
assert reply(request(READ, 6, 5)) == 0
assert recv(5) == b"\0abc\0"
# A write payload beyond what the server will read: it hangs up at once
# rather than reading it.
c = request(WRITE, 0, (64 << 20) + 1)
try:
    s.sendall(bytes(1 << 16))
    closed = s.recv(1) == b""
except (ConnectionResetError, BrokenPipeError):
    closed = True
assert closed, "the server kept the connection"
print("ok")
"#;

#[test]
fn oversized_requests_are_answered_without_a_hang() {
    let (d, uri) = daemon_with_volume(128 << 20);
    let out = script(RAW, &uri);
    assert!(out.contains("ok"));
    // The daemon still serves.
    script(
        "h = connect(\"export_name\")\nassert h.pread(5, 6) == b\"\\0abc\\0\"\n",
        &uri,
    );
    d.finish(1);
}
