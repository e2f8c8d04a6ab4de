//! Test support: a sparse in-memory export and provider, a server running in
//! a background runtime on a Unix socket and a TCP port, a raw NBD client
//! for hand-made traffic, and helpers to run real client tools.
#![allow(dead_code)] // Each test binary uses a different subset.
#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edgevol_nbd::{
    serve_tcp, serve_unix, BlockSizes, Errno, Export, ExportError, ExportProvider, Extent,
    OpenError, ReadChunk, ServerConfig, Shutdown, ZeroFlags,
};
use parking_lot::Mutex;
use tokio::sync::watch;

/// Allocation granularity of the in-memory export.
pub const BLOCK: u64 = 4096;

/// Operation counters, to check that flags reach the export.
#[derive(Default, Debug)]
pub struct Counters {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub fua_writes: AtomicU64,
    pub flushes: AtomicU64,
    pub trims: AtomicU64,
    pub fua_trims: AtomicU64,
    pub zeroes: AtomicU64,
    pub no_hole_zeroes: AtomicU64,
    pub fast_zeroes: AtomicU64,
    pub fua_zeroes: AtomicU64,
    pub caches: AtomicU64,
    pub block_status: AtomicU64,
}

pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::SeqCst)
}

/// A sparse in-memory volume: 4 KiB blocks, allocated on write, freed by
/// trim and (unless NO_HOLE) by write-zeroes.
pub struct MemStore {
    size: u64,
    read_only: bool,
    block_sizes: BlockSizes,
    multi_conn: bool,
    description: String,
    blocks: Mutex<BTreeMap<u64, Box<[u8]>>>,
    /// Ranges `[start, end)` whose operations fail with an errno.
    poison: Mutex<Vec<(u64, u64, Errno)>>,
    fail_flush: Mutex<Option<Errno>>,
    /// Reads starting at this offset panic (a buggy export).
    panic_at: Mutex<Option<u64>>,
    delay: Mutex<Option<Duration>>,
    pub counters: Counters,
    inflight: AtomicI64,
    pub max_inflight: AtomicI64,
    pub attached: AtomicI64,
}

impl MemStore {
    pub fn new(size: u64) -> MemStore {
        MemStore {
            size,
            read_only: false,
            block_sizes: BlockSizes {
                minimum: 512,
                preferred: 4096,
                maximum: 32 << 20,
            },
            multi_conn: true,
            description: String::new(),
            blocks: Mutex::new(BTreeMap::new()),
            poison: Mutex::new(Vec::new()),
            fail_flush: Mutex::new(None),
            panic_at: Mutex::new(None),
            delay: Mutex::new(None),
            counters: Counters::default(),
            inflight: AtomicI64::new(0),
            max_inflight: AtomicI64::new(0),
            attached: AtomicI64::new(0),
        }
    }
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }
    pub fn block_sizes(mut self, minimum: u32, preferred: u32, maximum: u32) -> Self {
        self.block_sizes = BlockSizes {
            minimum,
            preferred,
            maximum,
        };
        self
    }
    pub fn multi_conn(mut self, on: bool) -> Self {
        self.multi_conn = on;
        self
    }
    pub fn description(mut self, d: &str) -> Self {
        self.description = d.into();
        self
    }
    /// Fill `[offset, offset + data.len())` directly (test setup).
    pub fn fill(self, offset: u64, data: &[u8]) -> Self {
        self.put(offset, data);
        self
    }

    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn poison(&self, start: u64, end: u64, errno: Errno) {
        self.poison.lock().push((start, end, errno));
    }
    pub fn fail_flush(&self, errno: Option<Errno>) {
        *self.fail_flush.lock() = errno;
    }
    pub fn panic_on_read_at(&self, offset: Option<u64>) {
        *self.panic_at.lock() = offset;
    }
    pub fn set_delay(&self, d: Option<Duration>) {
        *self.delay.lock() = d;
    }
    pub fn allocated_blocks(&self) -> usize {
        self.blocks.lock().len()
    }
    pub fn is_allocated(&self, offset: u64) -> bool {
        self.blocks.lock().contains_key(&(offset / BLOCK))
    }
    /// Read back bytes directly (test verification).
    pub fn contents(&self, offset: u64, len: usize) -> Vec<u8> {
        let blocks = self.blocks.lock();
        let mut out = vec![0u8; len];
        for (i, b) in out.iter_mut().enumerate() {
            let pos = offset + i as u64;
            if let Some(block) = blocks.get(&(pos / BLOCK)) {
                *b = block[(pos % BLOCK) as usize];
            }
        }
        out
    }

    fn put(&self, offset: u64, data: &[u8]) {
        let mut blocks = self.blocks.lock();
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let idx = pos / BLOCK;
            let within = (pos % BLOCK) as usize;
            let n = rest.len().min(BLOCK as usize - within);
            let block = blocks
                .entry(idx)
                .or_insert_with(|| vec![0u8; BLOCK as usize].into_boxed_slice());
            block[within..within + n].copy_from_slice(&rest[..n]);
            pos += n as u64;
            rest = &rest[n..];
        }
    }

    /// Zero a range; whole blocks are deallocated unless `keep`.
    fn zero(&self, offset: u64, len: u64, keep: bool) {
        let mut blocks = self.blocks.lock();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let idx = pos / BLOCK;
            let within = (pos % BLOCK) as usize;
            let n = (end - pos).min(BLOCK - within as u64) as usize;
            if n == BLOCK as usize && !keep {
                blocks.remove(&idx);
            } else if let Some(block) = blocks.get_mut(&idx) {
                block[within..within + n].fill(0);
            } else if keep {
                blocks.insert(idx, vec![0u8; BLOCK as usize].into_boxed_slice());
            }
            pos += n as u64;
        }
    }

    fn check(&self, offset: u64, len: u64, write: bool) -> Result<(), ExportError> {
        if write && self.read_only {
            return Err(ExportError::new(Errno::Perm, "read-only"));
        }
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(ExportError::new(Errno::Inval, "out of range"));
        }
        for &(a, b, errno) in self.poison.lock().iter() {
            if offset < b && offset + len > a {
                return Err(ExportError::new(
                    errno,
                    format!("injected {errno:?} failure"),
                ));
            }
        }
        Ok(())
    }

    async fn enter(&self) -> InflightGuard<'_> {
        let now = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_inflight.fetch_max(now, Ordering::SeqCst);
        let delay = *self.delay.lock();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        InflightGuard(self)
    }
}

struct InflightGuard<'a>(&'a MemStore);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One client's handle on a [`MemStore`].
pub struct MemExport(Arc<MemStore>);

impl Drop for MemExport {
    fn drop(&mut self) {
        self.0.attached.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Export for MemExport {
    fn size(&self) -> u64 {
        self.0.size
    }
    fn read_only(&self) -> bool {
        self.0.read_only
    }
    fn block_sizes(&self) -> BlockSizes {
        self.0.block_sizes
    }
    fn can_multi_conn(&self) -> bool {
        self.0.multi_conn
    }
    fn description(&self) -> String {
        self.0.description.clone()
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Vec<ReadChunk>, ExportError> {
        let s = &*self.0;
        let _g = s.enter().await;
        s.counters.reads.fetch_add(1, Ordering::SeqCst);
        let panic_at = *s.panic_at.lock();
        if panic_at == Some(offset) {
            panic!("injected export panic (test)");
        }
        s.check(offset, len.into(), false)?;
        let blocks = s.blocks.lock();
        let mut chunks: Vec<ReadChunk> = Vec::new();
        let mut data = BytesMut::new();
        let mut zero_run: u32 = 0;
        let end = offset + u64::from(len);
        let mut pos = offset;
        while pos < end {
            let idx = pos / BLOCK;
            let within = (pos % BLOCK) as usize;
            let n = (end - pos).min(BLOCK - within as u64) as usize;
            match blocks.get(&idx) {
                Some(block) => {
                    if zero_run > 0 {
                        chunks.push(ReadChunk::Zero(zero_run));
                        zero_run = 0;
                    }
                    data.extend_from_slice(&block[within..within + n]);
                }
                None => {
                    if !data.is_empty() {
                        chunks.push(ReadChunk::Data(data.split().freeze()));
                    }
                    zero_run += n as u32;
                }
            }
            pos += n as u64;
        }
        if zero_run > 0 {
            chunks.push(ReadChunk::Zero(zero_run));
        }
        if !data.is_empty() {
            chunks.push(ReadChunk::Data(data.freeze()));
        }
        Ok(chunks)
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), ExportError> {
        let s = &*self.0;
        let _g = s.enter().await;
        s.counters.writes.fetch_add(1, Ordering::SeqCst);
        if fua {
            s.counters.fua_writes.fetch_add(1, Ordering::SeqCst);
        }
        s.check(offset, data.len() as u64, true)?;
        s.put(offset, &data);
        Ok(())
    }

    async fn flush(&self) -> Result<(), ExportError> {
        let s = &*self.0;
        s.counters.flushes.fetch_add(1, Ordering::SeqCst);
        match *s.fail_flush.lock() {
            Some(errno) => Err(ExportError::new(errno, "injected flush failure")),
            None => Ok(()),
        }
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), ExportError> {
        let s = &*self.0;
        let _g = s.enter().await;
        s.counters.trims.fetch_add(1, Ordering::SeqCst);
        if fua {
            s.counters.fua_trims.fetch_add(1, Ordering::SeqCst);
        }
        s.check(offset, len.into(), true)?;
        s.zero(offset, len.into(), false);
        Ok(())
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        flags: ZeroFlags,
    ) -> Result<(), ExportError> {
        let s = &*self.0;
        let _g = s.enter().await;
        s.counters.zeroes.fetch_add(1, Ordering::SeqCst);
        if flags.no_hole {
            s.counters.no_hole_zeroes.fetch_add(1, Ordering::SeqCst);
        }
        if flags.fast {
            s.counters.fast_zeroes.fetch_add(1, Ordering::SeqCst);
        }
        if flags.fua {
            s.counters.fua_zeroes.fetch_add(1, Ordering::SeqCst);
        }
        s.check(offset, len.into(), true)?;
        if flags.fast && flags.no_hole {
            // Allocating zeroes is as slow as writing them.
            return Err(ExportError::new(
                Errno::NotSup,
                "cannot zero fast without a hole",
            ));
        }
        s.zero(offset, len.into(), flags.no_hole);
        Ok(())
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, ExportError> {
        let s = &*self.0;
        s.counters.block_status.fetch_add(1, Ordering::SeqCst);
        s.check(offset, len.into(), false)?;
        let blocks = s.blocks.lock();
        let mut extents: Vec<Extent> = Vec::new();
        let end = offset + u64::from(len);
        let mut pos = offset;
        while pos < end {
            let idx = pos / BLOCK;
            let n = (end - pos).min(BLOCK - pos % BLOCK) as u32;
            let hole = !blocks.contains_key(&idx);
            match extents.last_mut() {
                Some(last) if last.hole == hole => last.length += n,
                _ => extents.push(Extent {
                    length: n,
                    hole,
                    zero: hole,
                }),
            }
            pos += u64::from(n);
        }
        Ok(extents)
    }

    async fn cache(&self, offset: u64, len: u32) -> Result<(), ExportError> {
        let s = &*self.0;
        s.counters.caches.fetch_add(1, Ordering::SeqCst);
        s.check(offset, len.into(), false)
    }
}

/// A provider over named [`MemStore`]s, with injectable open failures.
#[derive(Default)]
pub struct MemProvider {
    exports: Mutex<BTreeMap<String, Arc<MemStore>>>,
    failures: Mutex<BTreeMap<String, OpenError>>,
    /// Every name passed to `open`, in order.
    pub opened: Mutex<Vec<String>>,
}

impl MemProvider {
    pub fn new() -> Arc<MemProvider> {
        Arc::new(MemProvider::default())
    }
    pub fn add(&self, name: &str, store: MemStore) -> Arc<MemStore> {
        let store = Arc::new(store);
        self.exports.lock().insert(name.into(), Arc::clone(&store));
        store
    }
    pub fn fail(&self, name: &str, e: OpenError) {
        self.failures.lock().insert(name.into(), e);
    }
    pub fn opened_names(&self) -> Vec<String> {
        self.opened.lock().clone()
    }
}

impl ExportProvider for MemProvider {
    type Export = MemExport;
    fn list(&self) -> Vec<(String, String)> {
        self.exports
            .lock()
            .iter()
            .map(|(n, s)| (n.clone(), s.description.clone()))
            .collect()
    }
    fn open(&self, name: &str) -> Result<MemExport, OpenError> {
        self.opened.lock().push(name.to_owned());
        if let Some(e) = self.failures.lock().get(name) {
            return Err(e.clone());
        }
        match self.exports.lock().get(name) {
            Some(s) => {
                s.attached.fetch_add(1, Ordering::SeqCst);
                Ok(MemExport(Arc::clone(s)))
            }
            None => Err(OpenError::Unknown(name.to_owned())),
        }
    }
}

/// The server under test, on a Unix socket and a TCP port, in its own
/// runtime thread. Dropping it shuts it down and waits for it.
pub struct TestServer {
    pub provider: Arc<MemProvider>,
    pub socket: PathBuf,
    pub port: u16,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start(provider: Arc<MemProvider>) -> TestServer {
        TestServer::with_config(provider, ServerConfig::default())
    }

    pub fn with_config(provider: Arc<MemProvider>, config: ServerConfig) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("nbd.sock");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        tcp.set_nonblocking(true).expect("nonblocking");
        let unix = std::os::unix::net::UnixListener::bind(&socket).expect("bind unix");
        unix.set_nonblocking(true).expect("nonblocking");
        let (stop, stop_rx) = watch::channel(false);
        let p = Arc::clone(&provider);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            // Connections run on this thread's LocalSet.
            tokio::task::LocalSet::new().block_on(&rt, async move {
                let tcp = tokio::net::TcpListener::from_std(tcp).expect("tcp");
                let unix = tokio::net::UnixListener::from_std(unix).expect("unix");
                let (a, b) = tokio::join!(
                    serve_tcp(
                        tcp,
                        Arc::clone(&p),
                        config.clone(),
                        Shutdown::new(stop_rx.clone())
                    ),
                    serve_unix(unix, p, config, Shutdown::new(stop_rx)),
                );
                a.expect("serve_tcp");
                b.expect("serve_unix");
            });
        });
        TestServer {
            provider,
            socket,
            port,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    pub fn unix_uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    pub fn tcp_uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    /// Trigger shutdown without waiting.
    pub fn trigger_shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Trigger shutdown and wait (bounded) for the server to stop; true if
    /// it stopped in time.
    pub fn shutdown_and_wait(&mut self, limit: Duration) -> bool {
        self.trigger_shutdown();
        let Some(t) = self.thread.take() else {
            return true;
        };
        let deadline = std::time::Instant::now() + limit;
        while !t.is_finished() {
            if std::time::Instant::now() > deadline {
                self.thread = Some(t);
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        t.join().expect("server thread panicked");
        true
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            if !std::thread::panicking() {
                t.join().expect("server thread panicked");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Real client tools
// ---------------------------------------------------------------------------

const INSTALL_HINT: &str = "apt-get install -y libnbd-bin python3-libnbd nbdkit fio qemu-utils";

/// True if `tool --version` runs.
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Fail a test whose client tool is missing, or with
/// `EDGEVOL_SKIP_MISSING_CLIENTS` set, report the skip loudly (bypassing
/// the test harness's capture).
pub fn skip(test: &str, tool: &str) {
    // Real clients are the conformance suite: a missing one fails the test
    // unless skipping was asked for explicitly.
    if std::env::var_os("EDGEVOL_SKIP_MISSING_CLIENTS").is_none() {
        panic!("{test}: required client tool {tool} is not installed ({INSTALL_HINT}; or set EDGEVOL_SKIP_MISSING_CLIENTS=1 to skip)");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n\
         ************************************************************\n\
         SKIPPED {test}: client tool `{tool}` is not installed.\n\
         Install it with: {INSTALL_HINT}\n\
         ************************************************************"
    );
}

/// Skip the calling test (returning from it) unless every tool is present.
#[macro_export]
macro_rules! require_tools {
    ($test:expr, $($tool:expr),+) => {
        $(
            if !common::have($tool) {
                common::skip($test, $tool);
                return;
            }
        )+
    };
}

/// `nbdsh` runs `python3 -m nbd`; the `python3` first on `PATH` may lack the
/// libnbd bindings (e.g. a pyenv interpreter), so prefer the system one.
pub fn nbdsh() -> Option<Command> {
    let path = std::env::var("PATH").unwrap_or_default();
    for candidate in [format!("/usr/bin:{path}"), path.clone()] {
        let ok = Command::new("nbdsh")
            .arg("--version")
            .env("PATH", &candidate)
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            let mut c = Command::new("nbdsh");
            c.env("PATH", candidate);
            return Some(c);
        }
    }
    None
}

/// Run a command (with a timeout) and return its output.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    use std::process::Stdio;
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    // Drain pipes in threads so a chatty child cannot block.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: t_out.join().expect("stdout thread"),
        stderr: t_err.join().expect("stderr thread"),
    }
}

/// Run a command that must succeed; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let out = run(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{desc} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A deterministic pseudo-random pattern.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------
// A raw client for hand-made traffic
// ---------------------------------------------------------------------------

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_MAGIC: u32 = 0x668e_33ef;

/// A blocking client speaking raw NBD over a Unix socket.
pub struct Raw {
    pub s: UnixStream,
}

/// One structured reply chunk.
#[derive(Debug)]
pub struct Chunk {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub payload: Vec<u8>,
}

impl Raw {
    /// Connect and read the server greeting.
    pub fn connect(path: &Path) -> Raw {
        let s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut r = Raw { s };
        let mut g = [0u8; 18];
        r.s.read_exact(&mut g).expect("greeting");
        assert_eq!(&g[..8], &NBDMAGIC.to_be_bytes());
        assert_eq!(&g[8..16], &IHAVEOPT.to_be_bytes());
        assert_eq!(
            u16::from_be_bytes([g[16], g[17]]),
            3,
            "FIXED_NEWSTYLE | NO_ZEROES"
        );
        r
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send");
    }

    pub fn send_flags(&mut self, flags: u32) {
        self.send(&flags.to_be_bytes());
    }

    pub fn send_option(&mut self, opt: u32, data: &[u8]) {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.send(&m);
    }

    /// Read one option reply: (option, type, data).
    pub fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).expect("option reply");
        assert_eq!(&h[..8], &REPLY_MAGIC.to_be_bytes());
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let typ = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut d = vec![0u8; len];
        self.s.read_exact(&mut d).expect("option reply data");
        (opt, typ, d)
    }

    pub fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    /// Full handshake: flags, optional structured replies and
    /// base:allocation, then GO. Returns (size, transmission flags).
    pub fn handshake(path: &Path, export: &str, structured: bool) -> (Raw, u64, u16) {
        let mut r = Raw::connect(path);
        r.send_flags(3);
        if structured {
            r.send_option(8, &[]);
            assert_eq!(r.option_reply().1, 1, "structured reply ACK");
            let mut d = (export.len() as u32).to_be_bytes().to_vec();
            d.extend_from_slice(export.as_bytes());
            d.extend_from_slice(&1u32.to_be_bytes());
            d.extend_from_slice(&15u32.to_be_bytes());
            d.extend_from_slice(b"base:allocation");
            r.send_option(10, &d);
            assert_eq!(r.option_reply().1, 4, "META_CONTEXT");
            assert_eq!(r.option_reply().1, 1, "ACK");
        }
        r.send_option(7, &Raw::info_data(export, &[3]));
        let (mut size, mut flags) = (0, 0);
        loop {
            let (opt, typ, d) = r.option_reply();
            assert_eq!(opt, 7);
            match typ {
                1 => break,
                3 if d[..2] == [0, 0] => {
                    size = u64::from_be_bytes(d[2..10].try_into().unwrap());
                    flags = u16::from_be_bytes([d[10], d[11]]);
                }
                3 => {}
                other => panic!("GO failed: {other:#x} {}", String::from_utf8_lossy(&d)),
            }
        }
        (r, size, flags)
    }

    pub fn request(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) {
        let mut m = REQUEST_MAGIC.to_be_bytes().to_vec();
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        self.send(&m);
    }

    /// Read a simple reply header: (error, cookie).
    pub fn simple_reply(&mut self) -> (u32, u64) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).expect("simple reply");
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), SIMPLE_MAGIC);
        (
            u32::from_be_bytes(h[4..8].try_into().unwrap()),
            u64::from_be_bytes(h[8..16].try_into().unwrap()),
        )
    }

    pub fn chunk(&mut self) -> Chunk {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).expect("chunk header");
        assert_eq!(
            u32::from_be_bytes(h[..4].try_into().unwrap()),
            STRUCTURED_MAGIC
        );
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut payload = vec![0u8; len];
        self.s.read_exact(&mut payload).expect("chunk payload");
        Chunk {
            flags: u16::from_be_bytes([h[4], h[5]]),
            kind: u16::from_be_bytes([h[6], h[7]]),
            cookie: u64::from_be_bytes(h[8..16].try_into().unwrap()),
            payload,
        }
    }

    /// Read until end-of-stream; true if the server closed the connection
    /// (EOF or reset) within the read timeout.
    pub fn closed_by_server(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}
