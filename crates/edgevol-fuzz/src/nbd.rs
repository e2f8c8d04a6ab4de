//! NBD: the option parser, the request header decoder and validator, and
//! the whole server (handshake + transmission) over an in-memory stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgevol_nbd::option::{parse_option, ClientOption, OptionError};
use edgevol_nbd::request::{validate, BadMagic, Command, RequestContext, RequestHeader};
use edgevol_nbd::{
    serve_stream, BlockSizes, Errno, Export, ExportError, ExportProvider, Extent, OpenError,
    ReadChunk, ServerConfig, Shutdown, ZeroFlags,
};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::input::Input;

// Option codes and magics from the NBD specification (doc/proto.md).
const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_STARTTLS: u32 = 5;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_LIST_META_CONTEXT: u32 = 9;
const OPT_SET_META_CONTEXT: u32 = 10;
const OPT_EXTENDED_HEADERS: u32 = 11;
/// `NBD_REQUEST_MAGIC`.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const CMD_WRITE: u16 = 1;

fn check_string(s: &str) {
    assert!(s.len() <= 4096, "string of {} bytes accepted", s.len());
    assert!(!s.contains('\0'), "string with a NUL accepted");
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// `parse_option(code, data)`; the code is the first byte. Checks: every
/// accepted string is valid (≤ 4096 bytes, no NUL, UTF-8 by type), every
/// accepted INFO/GO/META body re-encodes to exactly the input (nothing
/// skipped or invented), each meta query has a `namespace:` prefix, options
/// without data reject data, and unknown codes come back as `Unknown`.
pub fn nbd_option(data: &[u8]) {
    let mut inp = Input::new(data);
    let code = u32::from(inp.u8());
    let body = inp.rest();
    let parsed = parse_option(code, body);
    let no_data = [OPT_LIST, OPT_STARTTLS, OPT_STRUCTURED_REPLY];
    if no_data.contains(&code) {
        assert_eq!(parsed.is_ok(), body.is_empty(), "{code}: {parsed:?}");
        if let Err(e) = parsed {
            assert_eq!(e, OptionError::UnexpectedData);
        }
    }
    let Ok(opt) = parsed else { return };
    match opt {
        ClientOption::ExportName(name) => {
            assert_eq!(code, OPT_EXPORT_NAME);
            check_string(name);
            assert_eq!(name.as_bytes(), body);
        }
        ClientOption::Abort => assert_eq!(code, OPT_ABORT),
        ClientOption::List => assert_eq!(code, OPT_LIST),
        ClientOption::StartTls => assert_eq!(code, OPT_STARTTLS),
        ClientOption::StructuredReply => assert_eq!(code, OPT_STRUCTURED_REPLY),
        ClientOption::ExtendedHeaders => assert_eq!(code, OPT_EXTENDED_HEADERS),
        ClientOption::Info(req) | ClientOption::Go(req) => {
            assert!(code == OPT_INFO || code == OPT_GO);
            check_string(req.name);
            let types: Vec<u16> = req.info_types().collect();
            let mut again = Vec::new();
            put_string(&mut again, req.name);
            again.extend_from_slice(&(types.len() as u16).to_be_bytes());
            for t in &types {
                again.extend_from_slice(&t.to_be_bytes());
                assert!(req.wants(*t));
            }
            assert_eq!(again, body, "INFO/GO body does not re-encode to its input");
        }
        ClientOption::ListMetaContext(req) | ClientOption::SetMetaContext(req) => {
            assert!(code == OPT_LIST_META_CONTEXT || code == OPT_SET_META_CONTEXT);
            check_string(req.name);
            let queries: Vec<&str> = req.queries().collect();
            assert_eq!(queries.len() as u64, u64::from(req.query_count()));
            let mut again = Vec::new();
            put_string(&mut again, req.name);
            again.extend_from_slice(&req.query_count().to_be_bytes());
            for q in &queries {
                check_string(q);
                assert!(q.find(':').is_some_and(|i| i > 0), "query {q:?}");
                put_string(&mut again, q);
            }
            assert_eq!(again, body, "META body does not re-encode to its input");
        }
        ClientOption::Unknown(c) => {
            assert_eq!(c, code);
            assert!(
                !(1..=11).contains(&c) || c == 4,
                "known option {c} parsed as unknown"
            );
        }
    }
}

/// `RequestHeader::decode` and `validate` against a session drawn from the
/// input. Checks: decode fails exactly on a bad magic (and reports it),
/// `encode(decode(b)) == b`, the payload length is the length for WRITE
/// only, and every accepted command is in range (no overflow), aligned,
/// within the payload limit, allowed on the session (read-only, block
/// status), carries the header's fields and only allowed flags; rejections
/// use the errnos the spec allows.
pub fn nbd_request(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let ctx = RequestContext {
        size: match inp.u8() % 4 {
            0 => u64::from(inp.u32()),
            1 => inp.u64(),
            2 => 1 << 20,
            _ => (1 << 20) + 100,
        },
        read_only: inp.bool(),
        min_block: 1 << (inp.u8() % 13),
        max_payload: match inp.u8() % 3 {
            0 => 1 << 16,
            1 => 1 << 25,
            _ => inp.u32(),
        },
        structured: inp.bool(),
        block_status: inp.bool(),
    };
    let mut buf = [0u8; 28];
    let b = inp.bytes(28);
    buf[..b.len()].copy_from_slice(b);
    if mode & 1 == 1 {
        // Most inputs reach validation; odd ones test the magic check.
        buf[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    }
    let magic = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let h = match RequestHeader::decode(&buf) {
        Ok(h) => h,
        Err(BadMagic(m)) => {
            assert_eq!(m, magic);
            assert_ne!(m, REQUEST_MAGIC);
            return;
        }
    };
    assert_eq!(magic, REQUEST_MAGIC);
    assert_eq!(h.encode(), buf, "request header does not round-trip");
    let expect_payload = if h.kind == CMD_WRITE { h.length } else { 0 };
    assert_eq!(h.payload_len(), expect_payload);

    let cmd = match validate(&h, &ctx) {
        Ok(c) => c,
        Err(r) => {
            assert!(
                matches!(r.errno, Errno::Inval | Errno::Perm | Errno::NoSpc)
                    || (r.errno == Errno::Overflow && ctx.structured),
                "{r:?}"
            );
            return;
        }
    };
    // Flags: FUA=1, NO_HOLE=2, DF=4, REQ_ONE=8, FAST_ZERO=16.
    let allowed: u16 = match cmd {
        Command::Read { .. } => 1 | if ctx.structured { 4 } else { 0 },
        Command::WriteZeroes { .. } => 1 | 2 | 16,
        Command::BlockStatus { .. } => 1 | 8,
        _ => 1,
    };
    assert_eq!(
        h.flags & !allowed,
        0,
        "{cmd:?} accepted flags {:#x}",
        h.flags
    );
    let ranged = |offset: u64, len: u32| {
        assert_eq!((offset, len), (h.offset, h.length));
        let end = offset.checked_add(u64::from(len)).expect("range overflows");
        assert!(end <= ctx.size, "{cmd:?} past the end of {}", ctx.size);
        let min = u64::from(ctx.min_block);
        assert_eq!(offset % min, 0, "{cmd:?} misaligned");
        assert!(
            u64::from(len).is_multiple_of(min) || end == ctx.size,
            "{cmd:?}"
        );
    };
    match cmd {
        Command::Read { offset, len, df } => {
            ranged(offset, len);
            assert!(len <= ctx.max_payload);
            assert_eq!(df, h.flags & 4 != 0);
        }
        Command::Write { offset, len, fua } => {
            ranged(offset, len);
            assert!(len <= ctx.max_payload && !ctx.read_only);
            assert_eq!(fua, h.flags & 1 != 0);
        }
        Command::Trim { offset, len, .. } => {
            ranged(offset, len);
            assert!(!ctx.read_only);
        }
        Command::WriteZeroes { offset, len, flags } => {
            ranged(offset, len);
            assert!(!ctx.read_only);
            assert_eq!(
                (flags.fua, flags.no_hole, flags.fast),
                (h.flags & 1 != 0, h.flags & 2 != 0, h.flags & 16 != 0)
            );
        }
        Command::Cache { offset, len } => ranged(offset, len),
        Command::BlockStatus { offset, len, .. } => {
            ranged(offset, len);
            assert!(ctx.block_status && len > 0);
        }
        Command::Flush => assert_eq!((h.offset, h.length), (0, 0)),
        Command::Disconnect => {}
    }
}

/// An in-memory export that checks the server's promise: every call it
/// gets is inside the export, aligned to the advertised minimum block, and
/// within the advertised maximum payload.
struct MemExport {
    data: Arc<Mutex<Vec<u8>>>,
    read_only: bool,
    block: BlockSizes,
}

impl MemExport {
    fn check(&self, offset: u64, len: u64, payload: bool) -> std::ops::Range<usize> {
        let size = self.size();
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= size)
            .unwrap_or_else(|| panic!("server passed {offset}+{len} past the end ({size})"));
        let min = u64::from(self.block.minimum);
        assert_eq!(
            offset % min,
            0,
            "server passed a misaligned offset {offset}"
        );
        assert!(
            len.is_multiple_of(min) || end == size,
            "misaligned length {len}"
        );
        if payload {
            assert!(
                len <= u64::from(self.block.maximum),
                "payload {len} too big"
            );
        }
        offset as usize..end as usize
    }
}

impl Export for MemExport {
    fn size(&self) -> u64 {
        self.data.lock().len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn block_sizes(&self) -> BlockSizes {
        self.block
    }
    fn can_multi_conn(&self) -> bool {
        true
    }
    fn description(&self) -> String {
        "fuzz".into()
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<ReadChunk>, ExportError> {
        let r = self.check(offset, len.into(), true);
        let d = self.data.lock();
        // Data then a hole: exercises both reply chunk kinds.
        let half = len / 2;
        let mut out = vec![ReadChunk::Data(Bytes::copy_from_slice(
            &d[r.start..r.start + half as usize],
        ))];
        if len > half {
            out.push(ReadChunk::Zero(len - half));
        }
        Ok(out)
    }
    async fn write(&self, offset: u64, data: Bytes, _fua: bool) -> Result<(), ExportError> {
        assert!(!self.read_only, "server wrote to a read-only export");
        let r = self.check(offset, data.len() as u64, true);
        if offset == 4096 {
            return Err(ExportError::new(Errno::Io, "injected write error"));
        }
        self.data.lock()[r].copy_from_slice(&data);
        Ok(())
    }
    async fn flush(&self) -> Result<(), ExportError> {
        Ok(())
    }
    async fn trim(&self, offset: u64, len: u32, _fua: bool) -> Result<(), ExportError> {
        assert!(!self.read_only, "server trimmed a read-only export");
        let r = self.check(offset, len.into(), false);
        self.data.lock()[r].fill(0);
        Ok(())
    }
    async fn write_zeroes(&self, offset: u64, len: u32, f: ZeroFlags) -> Result<(), ExportError> {
        assert!(!self.read_only, "server zeroed a read-only export");
        let r = self.check(offset, len.into(), false);
        if f.fast {
            return Err(ExportError::new(Errno::NotSup, "no fast zero"));
        }
        self.data.lock()[r].fill(0);
        Ok(())
    }
    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, ExportError> {
        let r = self.check(offset, len.into(), false);
        let n = r.len() as u32;
        let first = n.min(self.block.minimum.max(4096));
        let mut out = vec![Extent {
            length: first,
            hole: false,
            zero: false,
        }];
        if n > first {
            out.push(Extent {
                length: n - first,
                hole: true,
                zero: true,
            });
        }
        Ok(out)
    }
    async fn cache(&self, offset: u64, len: u32) -> Result<(), ExportError> {
        self.check(offset, len.into(), false);
        Ok(())
    }
}

/// Two exports: "disk" (256 KiB, 512-byte blocks) and the default export ""
/// (read-only, an unaligned 64 KiB + 100 bytes, 1-byte blocks).
struct Provider;

impl ExportProvider for Provider {
    type Export = MemExport;
    fn list(&self) -> Vec<(String, String)> {
        vec![("disk".into(), "fuzz".into()), (String::new(), "ro".into())]
    }
    fn open(&self, name: &str) -> Result<MemExport, OpenError> {
        let (size, read_only, minimum) = match name {
            "disk" => (256 << 10, false, 512),
            "" => ((64 << 10) + 100, true, 1),
            "busy" => return Err(OpenError::Refused("busy".into())),
            other => return Err(OpenError::Unknown(other.into())),
        };
        Ok(MemExport {
            data: Arc::new(Mutex::new(vec![0xa5; size])),
            read_only,
            block: BlockSizes {
                minimum,
                preferred: 4096,
                maximum: 64 << 10,
            },
        })
    }
}

fn option(code: u32, data: &[u8]) -> Vec<u8> {
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&code.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    m
}

/// Client bytes that complete a handshake: `kind` 1 = client flags only,
/// 2 = flags + structured replies + base:allocation + GO "disk",
/// 3 = flags + EXPORT_NAME "" (old style), anything else = nothing.
pub fn handshake_prefix(kind: u8) -> Vec<u8> {
    let flags = 3u32.to_be_bytes().to_vec();
    match kind {
        1 => flags,
        2 => {
            let mut m = flags;
            m.extend(option(OPT_STRUCTURED_REPLY, &[]));
            let mut meta = Vec::new();
            put_string(&mut meta, "disk");
            meta.extend_from_slice(&1u32.to_be_bytes());
            put_string(&mut meta, "base:allocation");
            m.extend(option(OPT_SET_META_CONTEXT, &meta));
            let mut go = Vec::new();
            put_string(&mut go, "disk");
            go.extend_from_slice(&2u16.to_be_bytes());
            go.extend_from_slice(&3u16.to_be_bytes()); // NBD_INFO_BLOCK_SIZE
            go.extend_from_slice(&0u16.to_be_bytes()); // NBD_INFO_EXPORT
            m.extend(option(OPT_GO, &go));
            m
        }
        3 => {
            let mut m = 1u32.to_be_bytes().to_vec(); // FIXED_NEWSTYLE, zeroes sent
            m.extend(option(OPT_EXPORT_NAME, b""));
            m
        }
        _ => Vec::new(),
    }
}

/// One encoded request header.
pub fn request(kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    RequestHeader {
        flags,
        kind,
        cookie,
        offset,
        length: len,
    }
    .encode()
    .to_vec()
}

thread_local! {
    // One runtime per thread, with paused time: timers fire as soon as the
    // server is idle, so a stalled connection costs nothing, and a real
    // hang (no timer, no progress) trips the deadline below.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
}

/// The whole server, `serve_stream` over an in-memory pipe: the first byte
/// picks a valid handshake prefix (none, flags, GO with structured replies
/// and base:allocation, or EXPORT_NAME), the rest is sent as is and the
/// client then closes its side. Checks: no panic, the connection ends
/// (paused-time deadline of 10 virtual minutes), the server always starts
/// with the greeting, and the export only ever sees in-range, aligned,
/// bounded calls (asserted by the in-memory export).
pub fn nbd_server(data: &[u8]) {
    let mut inp = Input::new(data);
    let mut bytes = handshake_prefix(inp.u8() % 4);
    bytes.extend_from_slice(inp.rest());
    let mut config = ServerConfig::default();
    config.max_payload = 64 << 10;
    config.max_inflight_requests = 16;
    config.max_inflight_bytes = 256 << 10;
    config.handshake_timeout = Duration::from_secs(5);
    config.shutdown_grace = Duration::from_secs(5);

    let output = RUNTIME.with(|rt| {
        tokio::task::LocalSet::new().block_on(rt, async move {
            let (client, server) = tokio::io::duplex(64 << 10);
            let serve = tokio::task::spawn_local(async move {
                serve_stream(server, Arc::new(Provider), &config, Shutdown::never()).await
            });
            let (mut rd, mut wr) = tokio::io::split(client);
            let drain = tokio::task::spawn_local(async move {
                let mut out = Vec::new();
                let mut buf = vec![0u8; 16 << 10];
                while let Ok(n) = rd.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    // Keep the start (the greeting), count the rest.
                    if out.len() < 4096 {
                        out.extend_from_slice(&buf[..n.min(4096)]);
                    }
                }
                out
            });
            let send = async move {
                let _ = wr.write_all(&bytes).await;
                let _ = wr.shutdown().await;
                wr
            };
            let deadline = Duration::from_secs(600);
            let (joined, wr) = tokio::time::timeout(deadline, async { tokio::join!(serve, send) })
                .await
                .expect("the NBD server hung");
            // An error (protocol violation) or a clean end are both fine;
            // a panic in the server is not.
            let _result = joined.expect("the NBD server panicked");
            drop(wr);
            tokio::time::timeout(deadline, drain)
                .await
                .expect("the server did not close its side")
                .expect("drain task")
        })
    });
    assert!(output.len() >= 18, "no greeting: {output:?}");
    assert_eq!(output[..8], NBDMAGIC.to_be_bytes());
    assert_eq!(output[8..16], IHAVEOPT.to_be_bytes());
}
