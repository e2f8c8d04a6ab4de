//! In-process protocol tests with hand-made traffic: wire layouts, malformed
//! input, limits, concurrency and shutdown. No external tools needed.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{get, pattern, Chunk, MemProvider, MemStore, Raw, TestServer};
use edgevol_nbd::{Errno, OpenError, ServerConfig};

const READ: u16 = 0;
const WRITE: u16 = 1;
const DISC: u16 = 2;
const FLUSH: u16 = 3;
const TRIM: u16 = 4;
const BLOCK_STATUS: u16 = 7;
const FLAG_FUA: u16 = 1;
const FLAG_DF: u16 = 4;
const FLAG_REQ_ONE: u16 = 8;

const REP_ACK: u32 = 1;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_POLICY: u32 = 0x8000_0002;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
const REP_ERR_TOO_BIG: u32 = 0x8000_0009;

const TYPE_NONE: u16 = 0;
const TYPE_DATA: u16 = 1;
const TYPE_HOLE: u16 = 2;
const TYPE_BLOCK_STATUS: u16 = 5;
const TYPE_ERROR: u16 = 0x8001;
const DONE: u16 = 1;

fn server() -> (TestServer, Arc<MemStore>) {
    server_with(ServerConfig::default())
}

fn server_with(config: ServerConfig) -> (TestServer, Arc<MemStore>) {
    let p = MemProvider::new();
    let store = p.add("disk", MemStore::new(8 << 20).description("raw test disk"));
    (TestServer::with_config(p, config), store)
}

/// All chunks of one structured reply (until DONE).
fn structured_reply(r: &mut Raw) -> Vec<Chunk> {
    let mut v = Vec::new();
    loop {
        let c = r.chunk();
        let done = c.flags & DONE != 0;
        v.push(c);
        if done {
            return v;
        }
    }
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

/// Assert that a fresh client can still negotiate and read.
fn still_serving(t: &TestServer) {
    let (mut r, size, _) = Raw::handshake(&t.socket, "disk", false);
    assert_eq!(size, 8 << 20);
    r.request(READ, 0, 77, 0, 4096);
    assert_eq!(r.simple_reply(), (0, 77));
    let mut buf = vec![0u8; 4096];
    std::io::Read::read_exact(&mut r.s, &mut buf).unwrap();
    r.request(DISC, 0, 0, 0, 0);
    assert!(r.closed_by_server());
}

#[test]
fn simple_replies_write_read_roundtrip() {
    let (t, store) = server();
    let (mut r, size, flags) = Raw::handshake(&t.socket, "disk", false);
    assert_eq!(size, 8 << 20);
    // HAS_FLAGS, FLUSH, FUA, TRIM, WRITE_ZEROES, MULTI_CONN, CACHE, FAST_ZERO; no DF.
    assert_eq!(
        flags,
        0x0001 | 0x0004 | 0x0008 | 0x0020 | 0x0040 | 0x0100 | 0x0400 | 0x0800
    );

    let data = pattern(12288, 1);
    r.request(WRITE, FLAG_FUA, 1, 4096, data.len() as u32);
    r.send(&data);
    assert_eq!(r.simple_reply(), (0, 1));
    assert_eq!(get(&store.counters.fua_writes), 1);

    // Read across a hole, data and a hole: simple replies expand holes.
    r.request(READ, 0, 2, 0, 20480);
    assert_eq!(r.simple_reply(), (0, 2));
    let mut buf = vec![0u8; 20480];
    std::io::Read::read_exact(&mut r.s, &mut buf).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0));
    assert_eq!(&buf[4096..16384], &data[..]);
    assert!(buf[16384..].iter().all(|&b| b == 0));

    // Errors carry no payload in simple replies.
    r.request(READ, 0, 3, 8 << 20, 512);
    assert_eq!(r.simple_reply(), (22, 3));
    r.request(WRITE, 0, 4, 8 << 20, 512);
    r.send(&[0u8; 512]);
    assert_eq!(r.simple_reply(), (28, 4), "ENOSPC for writes past the end");
    // Block status without a negotiated context.
    r.request(BLOCK_STATUS, 0, 5, 0, 4096);
    assert_eq!(r.simple_reply(), (22, 5));
    // DF without structured replies.
    r.request(READ, FLAG_DF, 6, 0, 512);
    assert_eq!(r.simple_reply(), (22, 6));
    // Unknown command.
    r.request(42, 0, 7, 0, 0);
    assert_eq!(r.simple_reply(), (22, 7));
    r.request(FLUSH, 0, 8, 0, 0);
    assert_eq!(r.simple_reply(), (0, 8));
    assert_eq!(get(&store.counters.flushes), 1);

    r.request(DISC, 0, 9, 0, 0);
    assert!(r.closed_by_server());
}

#[test]
fn structured_reads_send_holes_data_and_df() {
    let (t, store) = server();
    store.fail_flush(None);
    let (mut r, _, flags) = Raw::handshake(&t.socket, "disk", true);
    assert_ne!(flags & 0x0080, 0, "SEND_DF with structured replies");
    let data = pattern(4096, 2);
    r.request(WRITE, 0, 1, 8192, 4096);
    r.send(&data);
    let c = structured_reply(&mut r);
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].kind, c[0].flags, c[0].cookie), (TYPE_NONE, DONE, 1));

    r.request(READ, 0, 2, 0, 16384);
    let c = structured_reply(&mut r);
    let kinds: Vec<_> = c.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, vec![TYPE_HOLE, TYPE_DATA, TYPE_HOLE]);
    assert!(c.iter().all(|c| c.cookie == 2));
    assert_eq!((be64(&c[0].payload), be32(&c[0].payload[8..])), (0, 8192));
    assert_eq!(be64(&c[1].payload), 8192);
    assert_eq!(&c[1].payload[8..], &data[..]);
    assert_eq!(
        (be64(&c[2].payload), be32(&c[2].payload[8..])),
        (12288, 4096)
    );
    assert_eq!(c[2].flags, DONE);

    // DF: exactly one content chunk with the zeroes materialised.
    r.request(READ, FLAG_DF, 3, 0, 16384);
    let c = structured_reply(&mut r);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].kind, TYPE_DATA);
    assert_eq!(c[0].payload.len(), 8 + 16384);
    assert_eq!(&c[0].payload[8 + 8192..8 + 12288], &data[..]);

    // An all-hole read is one hole chunk.
    r.request(READ, 0, 4, 1 << 20, 65536);
    let c = structured_reply(&mut r);
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].kind, be32(&c[0].payload[8..])), (TYPE_HOLE, 65536));

    // Errors are structured with a message.
    r.request(READ, 0, 5, 8 << 20, 512);
    let c = structured_reply(&mut r);
    assert_eq!(c[0].kind, TYPE_ERROR);
    assert_eq!(be32(&c[0].payload), 22);
    let msg_len = u16::from_be_bytes([c[0].payload[4], c[0].payload[5]]) as usize;
    assert!(msg_len > 0);
    assert_eq!(c[0].payload.len(), 6 + msg_len);

    // Zero-length read: just NONE.
    r.request(READ, 0, 6, 0, 0);
    let c = structured_reply(&mut r);
    assert_eq!((c.len(), c[0].kind), (1, TYPE_NONE));
}

#[test]
fn block_status_extents_and_req_one() {
    let (t, _store) = server();
    let (mut r, _, _) = Raw::handshake(&t.socket, "disk", true);
    r.request(WRITE, 0, 1, 8192, 8192);
    r.send(&pattern(8192, 3));
    structured_reply(&mut r);

    r.request(BLOCK_STATUS, 0, 2, 0, 32768);
    let c = structured_reply(&mut r);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].kind, TYPE_BLOCK_STATUS);
    let p = &c[0].payload;
    assert_eq!(be32(p), 1, "context id from SET_META_CONTEXT");
    let extents: Vec<(u32, u32)> = p[4..].chunks(8).map(|e| (be32(e), be32(&e[4..]))).collect();
    assert_eq!(extents, vec![(8192, 3), (8192, 0), (16384, 3)]);

    r.request(BLOCK_STATUS, FLAG_REQ_ONE, 3, 0, 4096);
    let c = structured_reply(&mut r);
    assert_eq!(c[0].payload.len(), 4 + 8);
    assert_eq!(
        (be32(&c[0].payload[4..]), be32(&c[0].payload[8..])),
        (4096, 3)
    );

    // Trim makes it a hole again.
    r.request(TRIM, 0, 4, 8192, 8192);
    structured_reply(&mut r);
    r.request(BLOCK_STATUS, 0, 5, 0, 32768);
    let c = structured_reply(&mut r);
    assert_eq!(&c[0].payload[4..], &[0, 0, 0x80, 0, 0, 0, 0, 3]);
}

#[test]
fn pipelined_requests_run_concurrently_with_a_bound() {
    let mut config = ServerConfig::default();
    config.max_inflight_requests = 4;
    let (t, store) = server_with(config);
    store.set_delay(Some(Duration::from_millis(20)));
    let (mut r, _, _) = Raw::handshake(&t.socket, "disk", true);
    // Pipeline 40 reads without waiting.
    let mut batch = Vec::new();
    for i in 0..40u64 {
        let mut m = common::REQUEST_MAGIC.to_be_bytes().to_vec();
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&READ.to_be_bytes());
        m.extend_from_slice(&(1000 + i).to_be_bytes());
        m.extend_from_slice(&(i * 4096).to_be_bytes());
        m.extend_from_slice(&4096u32.to_be_bytes());
        batch.extend_from_slice(&m);
    }
    r.send(&batch);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        for c in structured_reply(&mut r) {
            seen.insert(c.cookie);
        }
    }
    assert_eq!(seen.len(), 40);
    assert_eq!(*seen.iter().next().unwrap(), 1000);
    let max = store.max_inflight.load(Ordering::SeqCst);
    assert!(max <= 4, "at most 4 requests in flight, saw {max}");
    assert!(max >= 2, "requests must run concurrently, saw {max}");
}

#[test]
fn malformed_handshakes_close_only_that_connection() {
    let (t, _store) = server();
    // A long-lived client in transmission throughout.
    let (mut keeper, _, _) = Raw::handshake(&t.socket, "disk", false);
    let keeper_read = |k: &mut Raw, cookie| {
        k.request(READ, 0, cookie, 0, 512);
        assert_eq!(k.simple_reply(), (0, cookie));
        let mut b = [0u8; 512];
        std::io::Read::read_exact(&mut k.s, &mut b).unwrap();
    };

    // Unknown client flags.
    let mut r = Raw::connect(&t.socket);
    r.send_flags(0xffff_ffff);
    assert!(r.closed_by_server());
    keeper_read(&mut keeper, 1);

    // Garbage instead of IHAVEOPT.
    let mut r = Raw::connect(&t.socket);
    r.send_flags(3);
    r.send(b"GARBAGE!GARBAGE!");
    assert!(r.closed_by_server());
    keeper_read(&mut keeper, 2);

    // Truncated option data, then EOF.
    let mut r = Raw::connect(&t.socket);
    r.send_flags(3);
    let mut m = common::IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(&100u32.to_be_bytes());
    m.extend_from_slice(&[1, 2, 3]);
    r.send(&m);
    r.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(r.closed_by_server());
    keeper_read(&mut keeper, 3);

    // Huge option length: closed without reading 4 GiB.
    let mut r = Raw::connect(&t.socket);
    r.send_flags(3);
    let mut m = common::IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
    r.send(&m);
    assert!(r.closed_by_server());
    keeper_read(&mut keeper, 4);

    // Truncated header, then EOF.
    let mut r = Raw::connect(&t.socket);
    r.send(&[0, 0]);
    r.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(r.closed_by_server());

    // Export name that cannot be opened via the legacy path: closed.
    let mut r = Raw::connect(&t.socket);
    r.send_flags(3);
    r.send_option(1, b"no-such-export");
    assert!(r.closed_by_server());

    keeper_read(&mut keeper, 5);
    still_serving(&t);
}

#[test]
fn malformed_options_get_errors_and_negotiation_continues() {
    let (t, _store) = server();
    let mut r = Raw::connect(&t.socket);
    r.send_flags(1);
    // Zero-length GO: no room for the name length.
    r.send_option(7, &[]);
    assert_eq!(r.option_reply().1, REP_ERR_INVALID);
    // Name length pointing past the data.
    r.send_option(6, &[0, 0, 1, 0, b'a', 0, 0]);
    assert_eq!(r.option_reply().1, REP_ERR_INVALID);
    // A 5000-byte name (longer than the spec's 4096 limit).
    r.send_option(7, &Raw::info_data(&"x".repeat(5000), &[]));
    let (_, typ, msg) = r.option_reply();
    assert_eq!(typ, REP_ERR_INVALID);
    assert!(String::from_utf8_lossy(&msg).contains("4096"));
    // LIST with data.
    r.send_option(3, b"junk");
    assert_eq!(r.option_reply().1, REP_ERR_INVALID);
    // Unknown option, TLS, extended headers.
    for opt in [4, 99, 5, 11] {
        r.send_option(opt, &[]);
        let (o, typ, _) = r.option_reply();
        assert_eq!((o, typ), (opt, REP_ERR_UNSUP), "option {opt}");
    }
    // Oversized unknown option (skipped), oversized GO (skipped, TOO_BIG).
    r.send_option(99, &vec![0u8; 100 * 1024]);
    assert_eq!(r.option_reply().1, REP_ERR_UNSUP);
    r.send_option(7, &vec![0u8; 100 * 1024]);
    assert_eq!(r.option_reply().1, REP_ERR_TOO_BIG);
    // SET_META_CONTEXT before STRUCTURED_REPLY.
    let mut d = 4u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"disk");
    d.extend_from_slice(&0u32.to_be_bytes());
    r.send_option(10, &d);
    assert_eq!(r.option_reply().1, REP_ERR_INVALID);
    // The connection is still usable: LIST then ABORT.
    r.send_option(3, &[]);
    let (_, typ, d) = r.option_reply();
    assert_eq!(typ, 2);
    assert_eq!(&d[..8], b"\0\0\0\x04disk");
    assert_eq!(&d[8..], b"raw test disk");
    assert_eq!(r.option_reply().1, REP_ACK);
    r.send_option(2, &[]);
    assert_eq!(r.option_reply().1, REP_ACK);
    assert!(r.closed_by_server());
}

#[test]
fn open_errors_map_to_option_errors() {
    let p = MemProvider::new();
    p.add("disk", MemStore::new(1 << 20));
    p.fail("locked", OpenError::Refused("volume key not loaded".into()));
    p.fail(
        "busy",
        OpenError::Unavailable("volume is being restored".into()),
    );
    let t = TestServer::start(p);
    let mut r = Raw::connect(&t.socket);
    r.send_flags(3);
    for (name, rep, msg) in [
        ("nope", REP_ERR_UNKNOWN, "unknown export: nope"),
        ("locked", REP_ERR_POLICY, "volume key not loaded"),
        ("busy", REP_ERR_UNKNOWN, "volume is being restored"),
    ] {
        r.send_option(7, &Raw::info_data(name, &[]));
        let (_, typ, d) = r.option_reply();
        assert_eq!(typ, rep, "{name}");
        assert_eq!(String::from_utf8_lossy(&d), msg);
    }
    // INFO on a good export, then GO.
    r.send_option(6, &Raw::info_data("disk", &[1, 2, 3]));
    let mut types = Vec::new();
    loop {
        let (_, typ, d) = r.option_reply();
        if typ == REP_ACK {
            break;
        }
        types.push(u16::from_be_bytes([d[0], d[1]]));
    }
    // EXPORT, NAME and BLOCK_SIZE (no description: it is empty).
    assert_eq!(types, vec![0, 1, 3]);
}

#[test]
fn legacy_export_name_with_and_without_zeroes() {
    let (t, _store) = server();
    for (flags, reply_len) in [(1u32, 134usize), (3, 10)] {
        let mut r = Raw::connect(&t.socket);
        r.send_flags(flags);
        r.send_option(1, b"disk");
        let mut reply = vec![0u8; reply_len];
        std::io::Read::read_exact(&mut r.s, &mut reply).unwrap();
        assert_eq!(be64(&reply), 8 << 20);
        assert!(reply[10..].iter().all(|&b| b == 0));
        r.request(READ, 0, 5, 0, 512);
        assert_eq!(
            r.simple_reply(),
            (0, 5),
            "flags {flags}: first bytes after the reply"
        );
    }
    // The empty name reaches the provider as "" (unknown here → closed).
    let mut r = Raw::connect(&t.socket);
    r.send_flags(3);
    r.send_option(1, b"");
    assert!(r.closed_by_server());
    assert!(t.provider.opened_names().contains(&String::new()));
}

#[test]
fn bad_request_magic_closes_only_that_connection() {
    let (t, _store) = server();
    let (mut a, _, _) = Raw::handshake(&t.socket, "disk", true);
    let (mut b, _, _) = Raw::handshake(&t.socket, "disk", false);
    b.send(&[0xde; 28]);
    assert!(b.closed_by_server());
    // An extended-header request without negotiation is just as invalid.
    let (mut c, _, _) = Raw::handshake(&t.socket, "disk", false);
    let mut m = 0x21e4_1c71u32.to_be_bytes().to_vec();
    m.extend_from_slice(&[0u8; 28]);
    c.send(&m);
    assert!(c.closed_by_server());
    // A truncated request header, then EOF.
    let (mut d, _, _) = Raw::handshake(&t.socket, "disk", false);
    d.send(&common::REQUEST_MAGIC.to_be_bytes());
    d.s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(d.closed_by_server());

    a.request(READ, 0, 1, 0, 4096);
    let c = structured_reply(&mut a);
    assert_eq!(c[0].cookie, 1);
    still_serving(&t);
}

#[test]
fn oversized_writes_are_skipped_or_closed() {
    let p = MemProvider::new();
    let store = p.add(
        "small",
        MemStore::new(8 << 20).block_sizes(512, 4096, 1 << 20),
    );
    let t = TestServer::start(p);
    let (mut r, _, _) = Raw::handshake(&t.socket, "small", false);
    // 2 MiB > the export's 1 MiB maximum: payload skipped, EINVAL, still in sync.
    r.request(WRITE, 0, 1, 0, 2 << 20);
    r.send(&vec![0xab; 2 << 20]);
    assert_eq!(r.simple_reply(), (22, 1));
    assert_eq!(store.allocated_blocks(), 0, "nothing was written");
    r.request(READ, 0, 2, 0, 512);
    assert_eq!(r.simple_reply(), (0, 2));
    let mut b = [0u8; 512];
    std::io::Read::read_exact(&mut r.s, &mut b).unwrap();
    assert_eq!(b, [0u8; 512]);
    // A write on a range that is rejected also has its payload skipped.
    r.request(WRITE, 0, 3, 100, 512);
    r.send(&[1u8; 512]);
    assert_eq!(r.simple_reply(), (22, 3), "misaligned");

    // 64 MiB is beyond what the server will even skip: closed at once.
    r.request(WRITE, 0, 4, 0, 64 << 20);
    let _ = r.s.write_all(&[0u8; 4096]); // may already fail: the server hung up
    assert!(r.closed_by_server());
    let (mut r, _, _) = Raw::handshake(&t.socket, "small", false);
    r.request(FLUSH, 0, 5, 0, 0);
    assert_eq!(r.simple_reply(), (0, 5));
}

#[test]
fn read_only_export_refuses_writes_and_stays_in_sync() {
    let p = MemProvider::new();
    p.add("ro", MemStore::new(1 << 20).read_only().fill(0, b"hello"));
    let t = TestServer::start(p);
    let (mut r, _, flags) = Raw::handshake(&t.socket, "ro", false);
    assert_ne!(flags & 2, 0, "READ_ONLY");
    assert_eq!(
        flags & (0x20 | 0x40 | 0x800),
        0,
        "no TRIM/WRITE_ZEROES/FAST_ZERO"
    );
    r.request(WRITE, 0, 1, 0, 512);
    r.send(&[9u8; 512]);
    assert_eq!(r.simple_reply(), (1, 1));
    r.request(TRIM, 0, 2, 0, 512);
    assert_eq!(r.simple_reply(), (1, 2));
    r.request(READ, 0, 3, 0, 512);
    assert_eq!(r.simple_reply(), (0, 3));
    let mut b = [0u8; 512];
    std::io::Read::read_exact(&mut r.s, &mut b).unwrap();
    assert_eq!(&b[..5], b"hello");
}

#[test]
fn export_errors_and_panics_are_answered() {
    let (t, store) = server();
    store.poison(1 << 20, (1 << 20) + 4096, Errno::Io);
    store.fail_flush(Some(Errno::NoSpc));
    let (mut r, _, _) = Raw::handshake(&t.socket, "disk", true);
    r.request(READ, 0, 1, 1 << 20, 4096);
    let c = structured_reply(&mut r);
    assert_eq!((c[0].kind, be32(&c[0].payload)), (TYPE_ERROR, 5));
    let msg = String::from_utf8_lossy(&c[0].payload[6..]).into_owned();
    assert!(msg.contains("injected"), "{msg}");
    r.request(FLUSH, 0, 2, 0, 0);
    let c = structured_reply(&mut r);
    assert_eq!((c[0].kind, be32(&c[0].payload)), (TYPE_ERROR, 28));
    r.request(READ, 0, 3, 0, 4096);
    assert_eq!(structured_reply(&mut r)[0].kind, TYPE_HOLE);

    // A panicking export call is answered with EIO; the connection lives on.
    store.panic_on_read_at(Some(2 << 20));
    r.request(READ, 0, 4, 2 << 20, 4096);
    let c = structured_reply(&mut r);
    assert_eq!(
        (c[0].kind, c[0].cookie, be32(&c[0].payload)),
        (TYPE_ERROR, 4, 5)
    );
    r.request(READ, 0, 5, 0, 4096);
    assert_eq!(structured_reply(&mut r)[0].cookie, 5);
}

#[test]
fn shutdown_finishes_inflight_then_closes() {
    let (mut t, store) = server();
    store.set_delay(Some(Duration::from_millis(400)));
    let (mut busy, _, _) = Raw::handshake(&t.socket, "disk", true);
    let (mut idle, _, _) = Raw::handshake(&t.socket, "disk", true);
    let mut handshaking = Raw::connect(&t.socket);
    busy.request(WRITE, 0, 1, 0, 4096);
    busy.send(&pattern(4096, 9));
    std::thread::sleep(Duration::from_millis(100));
    t.trigger_shutdown();
    std::thread::sleep(Duration::from_millis(50));
    // A request arriving during shutdown gets ESHUTDOWN.
    busy.request(READ, 0, 2, 0, 4096);
    let mut replies = [structured_reply(&mut busy), structured_reply(&mut busy)];
    replies.sort_by_key(|c| c[0].cookie);
    assert_eq!(replies[0][0].kind, TYPE_NONE, "in-flight write completed");
    assert_eq!(
        (replies[1][0].kind, be32(&replies[1][0].payload)),
        (TYPE_ERROR, 108)
    );
    assert!(busy.closed_by_server());
    assert!(idle.closed_by_server());
    assert!(handshaking.closed_by_server());
    assert!(
        t.shutdown_and_wait(Duration::from_secs(5)),
        "server stopped"
    );
    assert!(
        store.is_allocated(0),
        "the in-flight write reached the export"
    );
    assert!(UnixStream::connect(&t.socket).is_err(), "listener closed");
}

#[test]
fn connection_limit_and_handshake_timeout() {
    let mut config = ServerConfig::default();
    config.max_connections = 2;
    config.handshake_timeout = Duration::from_millis(300);
    let (t, _store) = server_with(config);
    let (a, _, _) = Raw::handshake(&t.socket, "disk", false);
    let (_b, _, _) = Raw::handshake(&t.socket, "disk", false);
    // The third is accepted and closed without a greeting.
    let mut c = UnixStream::connect(&t.socket).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 18];
    let n = std::io::Read::read(&mut c, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "over the limit: closed without greeting");
    drop(a);
    // Once a slot frees up, connections are served again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = UnixStream::connect(&t.socket).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if std::io::Read::read(&mut c, &mut buf).unwrap_or(0) == 18 {
            // Idle in the handshake: closed after the handshake timeout.
            let started = Instant::now();
            let mut r = Raw { s: c };
            assert!(r.closed_by_server());
            let waited = started.elapsed();
            assert!(waited < Duration::from_secs(3), "{waited:?}");
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn disconnect_detaches_export() {
    let (t, store) = server();
    let (mut r, _, _) = Raw::handshake(&t.socket, "disk", false);
    assert_eq!(store.attached.load(Ordering::SeqCst), 1);
    r.request(WRITE, 0, 1, 0, 512);
    r.send(&[1u8; 512]);
    r.request(DISC, 0, 2, 0, 0);
    // The write is still answered after DISC was sent.
    assert_eq!(r.simple_reply(), (0, 1));
    assert!(r.closed_by_server());
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.attached.load(Ordering::SeqCst) != 0 {
        assert!(Instant::now() < deadline, "export never detached");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn client_vanishing_mid_request_is_harmless() {
    let (t, store) = server();
    store.set_delay(Some(Duration::from_millis(100)));
    for _ in 0..5 {
        let (mut r, _, _) = Raw::handshake(&t.socket, "disk", true);
        r.request(READ, 0, 1, 0, 65536);
        r.request(WRITE, 0, 2, 0, 65536);
        r.send(&[7u8; 1000]); // partial payload, then gone
        drop(r);
    }
    store.set_delay(None);
    still_serving(&t);
}

#[tokio::test]
async fn serve_stream_over_an_in_memory_pipe() {
    tokio::task::LocalSet::new()
        .run_until(serve_stream_over_an_in_memory_pipe_local())
        .await;
}

async fn serve_stream_over_an_in_memory_pipe_local() {
    use edgevol_nbd::{serve_stream, Shutdown};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let p = MemProvider::new();
    p.add("", MemStore::new(1 << 20).fill(0, b"default export"));
    let (client, server) = tokio::io::duplex(4096);
    let config = ServerConfig::default();
    let task = tokio::task::spawn_local(async move {
        serve_stream(server, p, &config, Shutdown::never()).await
    });
    let (mut rd, mut wr) = tokio::io::split(client);
    let mut greeting = [0u8; 18];
    rd.read_exact(&mut greeting).await.unwrap();
    let mut m = 3u32.to_be_bytes().to_vec();
    // NBD_OPT_EXPORT_NAME "" (default export), no zeroes.
    m.extend_from_slice(&common::IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&1u32.to_be_bytes());
    m.extend_from_slice(&0u32.to_be_bytes());
    // A read pipelined right behind the handshake.
    m.extend_from_slice(&common::REQUEST_MAGIC.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(&42u64.to_be_bytes());
    m.extend_from_slice(&0u64.to_be_bytes());
    m.extend_from_slice(&512u32.to_be_bytes());
    wr.write_all(&m).await.unwrap();
    let mut export = [0u8; 10];
    rd.read_exact(&mut export).await.unwrap();
    assert_eq!(u64::from_be_bytes(export[..8].try_into().unwrap()), 1 << 20);
    let mut reply = [0u8; 16 + 512];
    rd.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply[4..8], &[0, 0, 0, 0]);
    assert_eq!(&reply[8..16], &42u64.to_be_bytes());
    assert_eq!(&reply[16..30], b"default export");
    // Garbage → the server ends this connection with a protocol error.
    wr.write_all(&[0u8; 28]).await.unwrap();
    let result = task.await.unwrap();
    assert!(
        matches!(result, Err(edgevol_nbd::ConnectionError::Protocol(_))),
        "{result:?}"
    );
    let _ = std::io::stderr().flush();
}

#[test]
fn shutdown_is_bounded_by_the_grace_period() {
    let mut config = ServerConfig::default();
    config.shutdown_grace = Duration::from_millis(300);
    let (mut t, store) = server_with(config);
    // A client that pipelines reads but never reads the replies...
    let (mut greedy, _, _) = Raw::handshake(&t.socket, "disk", true);
    greedy.s.set_nonblocking(true).unwrap();
    let mut m = Vec::new();
    for i in 0..256u64 {
        m.extend_from_slice(&common::REQUEST_MAGIC.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(&i.to_be_bytes());
        m.extend_from_slice(&0u64.to_be_bytes());
        m.extend_from_slice(&(1u32 << 20).to_be_bytes());
    }
    let _ = greedy.s.write(&m);
    // ...and an export call that never finishes.
    let (mut stuck, _, _) = Raw::handshake(&t.socket, "disk", false);
    std::thread::sleep(Duration::from_millis(200));
    store.set_delay(Some(Duration::from_secs(3600)));
    stuck.request(READ, 0, 1, 0, 4096);
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    assert!(
        t.shutdown_and_wait(Duration::from_secs(10)),
        "server stopped"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    assert!(stuck.closed_by_server());
}

/// A cheap deterministic stand-in for the fuzzers: random bytes after
/// several valid prefixes must end the connection (error or not) without a
/// panic or a hang.
#[tokio::test]
async fn random_traffic_never_panics_or_hangs() {
    tokio::task::LocalSet::new()
        .run_until(random_traffic_never_panics_or_hangs_local())
        .await;
}

async fn random_traffic_never_panics_or_hangs_local() {
    use edgevol_nbd::{serve_stream, Shutdown};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let p = MemProvider::new();
    let disk = p.add("disk", MemStore::new(1 << 20));
    let default = p.add("", MemStore::new(1 << 20).read_only());
    let mut config = ServerConfig::default();
    config.handshake_timeout = Duration::from_secs(2);

    // Valid prefixes: nothing; client flags; flags + GO "disk" with
    // structured replies and base:allocation; flags + EXPORT_NAME "".
    let mut go = 3u32.to_be_bytes().to_vec();
    let opt = |code: u32, data: &[u8]| {
        let mut m = common::IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        m
    };
    go.extend(opt(8, &[]));
    let mut meta = 4u32.to_be_bytes().to_vec();
    meta.extend_from_slice(b"disk");
    meta.extend_from_slice(&1u32.to_be_bytes());
    meta.extend_from_slice(&15u32.to_be_bytes());
    meta.extend_from_slice(b"base:allocation");
    go.extend(opt(10, &meta));
    go.extend(opt(7, &Raw::info_data("disk", &[3])));
    let mut legacy = 1u32.to_be_bytes().to_vec();
    legacy.extend(opt(1, b""));
    let prefixes: [Vec<u8>; 4] = [Vec::new(), 3u32.to_be_bytes().to_vec(), go, legacy];

    let mut outcomes = [0u32; 2];
    for round in 0..400u64 {
        let prefix = &prefixes[(round % 4) as usize];
        let mut input = prefix.clone();
        let noise = pattern(((round * 37) % 700) as usize, round);
        if round % 3 == 0 {
            // Plausible requests: small command numbers, flags, aligned
            // in-range offsets (mostly), write payloads (sometimes cut short).
            for (i, c) in noise.chunks_exact(6).enumerate() {
                let kind = u16::from(c[0] % 9);
                let len = u32::from(c[1] % 17) * 512;
                input.extend_from_slice(&common::REQUEST_MAGIC.to_be_bytes());
                input.extend_from_slice(&u16::from(c[2] % 32).to_be_bytes());
                input.extend_from_slice(&kind.to_be_bytes());
                input.extend_from_slice(&(i as u64).to_be_bytes());
                let offset = u64::from(u16::from_be_bytes([c[3], c[4]]) % 2100) * 512;
                input.extend_from_slice(&offset.to_be_bytes());
                input.extend_from_slice(&len.to_be_bytes());
                if kind == 1 && c[5] % 8 != 0 {
                    input.extend(pattern(len as usize, i as u64));
                }
            }
        } else {
            input.extend_from_slice(&noise);
        }
        let (client, server) = tokio::io::duplex(64 * 1024);
        let p = Arc::clone(&p);
        let cfg = config.clone();
        let task = tokio::task::spawn_local(async move {
            serve_stream(server, p, &cfg, Shutdown::never()).await
        });
        let (mut rd, mut wr) = tokio::io::split(client);
        let drain = tokio::spawn(async move {
            let mut sink = vec![0u8; 64 * 1024];
            while rd.read(&mut sink).await.unwrap_or(0) > 0 {}
        });
        let _ = wr.write_all(&input).await;
        let _ = wr.shutdown().await;
        let ended = tokio::time::timeout(Duration::from_secs(10), task).await;
        let joined = ended.unwrap_or_else(|_| panic!("round {round}: server hung"));
        let result = joined.unwrap_or_else(|_| panic!("round {round}: server panicked"));
        outcomes[usize::from(result.is_ok())] += 1;
        drop(wr);
        let _ = drain.await;
    }
    // Both clean ends (EOF between messages) and protocol errors occur.
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
    // Random requests reached the export through both handshakes.
    for store in [&disk, &default] {
        let c = &store.counters;
        let calls =
            get(&c.reads) + get(&c.writes) + get(&c.trims) + get(&c.zeroes) + get(&c.caches);
        assert!(calls > 0);
    }
}
