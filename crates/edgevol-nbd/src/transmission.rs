//! The transmission phase of one connection.
//!
//! Structure (one connection):
//!
//! ```text
//!  socket ──► reader ──(validated command)──► spawned handler ──► export
//!                │                                   │
//!                └──(rejections, ESHUTDOWN)──┐       │ reply
//!                                            ▼       ▼
//!                                     bounded mpsc channel ──► writer ──► socket
//! ```
//!
//! * The reader decodes and validates requests, reads write payloads and
//!   spawns one task per request, so requests run concurrently and replies
//!   go out in completion order (the spec allows any order).
//! * Back-pressure: every request holds a *slot* permit (at most
//!   `max_inflight_requests`) and READ/WRITE also hold *byte* permits for
//!   their length (at most `max_inflight_bytes`) until its reply has been
//!   written. When either runs out the reader stops reading the socket.
//!   Because every queued reply holds a slot, the reply channel (capacity =
//!   slots) can never be full, so replies are queued with `try_send` and
//!   never block a handler.
//! * The writer owns the write half. It takes every reply that is ready,
//!   encodes headers into one scratch buffer and writes everything with
//!   vectored writes; payload bytes are never copied.
//! * A handler that panics still answers: its [`Responder`] sends `EIO`
//!   from `Drop`.
//! * Ending: on `NBD_CMD_DISC`, end of stream, a protocol error or (after
//!   in-flight requests drained) shutdown, the reader stops; the writer
//!   finishes once every handler has replied. From the moment the reader
//!   stops or shutdown is requested, the connection has `shutdown_grace` to
//!   get there before it is dropped.

use std::io::IoSlice;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, error, info, warn, Instrument};

use crate::error::{ConnectionError, ProtocolError};
use crate::export::{Errno, Export, ExportError, ZeroFlags};
use crate::handshake::{read_exact_or_eof, skip, Session, BASE_ALLOCATION_ID};
use crate::proto::{self, DOS_SAFE_PAYLOAD, REQUEST_HEADER_LEN};
use crate::reply::{self, Piece, ReplyBody};
use crate::request::{validate, Command, RequestContext, RequestHeader};
use crate::server::{ServerConfig, Shutdown};

/// Replies taken from the channel per write batch.
const MAX_BATCH: usize = 64;
/// `IOV_MAX` on Linux is 1024; stay at or below it per `writev`.
const MAX_IOV: usize = 1024;
/// A zero page for holes in simple replies.
static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];
/// Rejected requests logged at `warn` per connection; the rest at `debug`.
const LOGGED_REJECTIONS: u64 = 8;
/// Scratch buffers above this capacity are released after a batch.
const SCRATCH_KEEP: usize = 1 << 20;

/// One reply on its way to the writer. Dropping it (after it was written)
/// releases the request's permits.
struct Reply {
    cookie: u64,
    body: ReplyBody,
    _slot: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// Sends exactly one reply for a request, even if the handler panics or is
/// dropped (then the reply is `EIO`).
struct Responder {
    tx: mpsc::Sender<Reply>,
    cookie: u64,
    permits: Option<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>)>,
}

impl Responder {
    fn new(
        tx: mpsc::Sender<Reply>,
        cookie: u64,
        slot: OwnedSemaphorePermit,
        bytes: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Responder {
            tx,
            cookie,
            permits: Some((slot, bytes)),
        }
    }

    fn send(mut self, body: ReplyBody) {
        self.deliver(body);
    }

    fn deliver(&mut self, body: ReplyBody) {
        if let Some((slot, bytes)) = self.permits.take() {
            let reply = Reply {
                cookie: self.cookie,
                body,
                _slot: slot,
                _bytes: bytes,
            };
            // Cannot be full (see module docs); fails only if the writer is
            // gone, in which case the connection is closing anyway.
            if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(reply) {
                error!("nbd: reply channel full; this is a bug");
            }
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if self.permits.is_some() {
            if std::thread::panicking() {
                error!(
                    cookie = self.cookie,
                    "nbd: request handler panicked; answering EIO"
                );
            } else {
                // The task was cancelled, e.g. because the runtime is
                // shutting down; the connection is going away with it.
                debug!(cookie = self.cookie, "nbd: request handler cancelled");
            }
            self.deliver(ReplyBody::error(Errno::Io, "internal server error"));
        }
    }
}

/// Why the transmission phase ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// `NBD_CMD_DISC`.
    Disconnect,
    /// End of stream without `NBD_CMD_DISC`.
    EndOfStream,
    /// Server shutdown, after in-flight requests completed.
    Shutdown,
    /// The writer stopped (socket write failed).
    WriterGone,
}

impl Ended {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Ended::Disconnect => "client sent NBD_CMD_DISC",
            Ended::EndOfStream => "client closed the connection without NBD_CMD_DISC",
            Ended::Shutdown => "server shutdown",
            Ended::WriterGone => "reply write failed",
        }
    }
}

/// Counters for the close log line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stats {
    pub requests: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub rejected: u64,
}

/// Run transmission on `io` until the client disconnects, the server shuts
/// down or the connection fails.
pub(crate) async fn run<S, E>(
    io: S,
    session: Session<E>,
    config: &ServerConfig,
    shutdown: Shutdown,
    stats: &mut Stats,
) -> Result<Ended, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    E: Export,
{
    let structured = session.structured;
    let (rd, wr) = tokio::io::split(io);
    let slots = config.max_inflight_requests;
    let (tx, rx) = mpsc::channel::<Reply>(slots);
    let (reader_done_tx, reader_done_rx) = oneshot::channel::<()>();
    let grace = config.shutdown_grace;

    let reader = Reader {
        export: Arc::new(session.export),
        block: session.params.block,
        structured,
        base_allocation: session.base_allocation,
        tx,
        slots: Arc::new(Semaphore::new(slots)),
        slot_count: u32::try_from(slots).unwrap_or(u32::MAX),
        budget: Arc::new(Semaphore::new(
            config
                .max_inflight_bytes
                .max(session.params.block.maximum as usize),
        )),
        // Oversized writes up to this are skipped and answered; beyond it the
        // connection is dropped (the spec deems ≤ 2^25 never a DoS).
        discard_limit: config.max_payload.max(DOS_SAFE_PAYLOAD),
        shutdown,
    };
    let mut stop = reader.shutdown.clone();
    let read_side = async move {
        let r = reader.run(rd, stats).await;
        // Dropping the reader drops its sender; the writer ends once every
        // in-flight handler has replied.
        let _ = reader_done_tx.send(());
        r
    };
    let write_side = async move { write_loop(wr, rx, structured).await };
    // Bounds how long a connection may linger once it stops reading requests
    // or the server shuts down: a client that never reads its replies, or an
    // export that never completes, cannot hold up shutdown forever.
    let watchdog = async move {
        tokio::select! {
            _ = reader_done_rx => {}
            _ = stop.wait() => {}
        }
        tokio::time::sleep(grace).await;
    };
    let (read_result, write_result) = tokio::select! {
        results = async { tokio::join!(read_side, write_side) } => results,
        _ = watchdog => return Err(ConnectionError::DrainTimeout(grace)),
    };
    match (read_result, write_result) {
        (Err(e), _) => Err(e),
        (Ok(Ended::WriterGone), Err(e)) => Err(e.into()),
        // A write failure after a clean end (e.g. the client closed its
        // side right after NBD_CMD_DISC) is not worth reporting.
        (Ok(ended), _) => Ok(ended),
    }
}

struct Reader<E> {
    export: Arc<E>,
    block: crate::export::BlockSizes,
    structured: bool,
    base_allocation: bool,
    tx: mpsc::Sender<Reply>,
    slots: Arc<Semaphore>,
    slot_count: u32,
    budget: Arc<Semaphore>,
    discard_limit: u32,
    shutdown: Shutdown,
}

impl<E: Export> Reader<E> {
    async fn run<R: AsyncRead + Unpin>(
        mut self,
        mut rd: R,
        stats: &mut Stats,
    ) -> Result<Ended, ConnectionError> {
        let mut shutting_down = self.shutdown.is_triggered();
        let mut buf = [0u8; REQUEST_HEADER_LEN];
        loop {
            // Wait for the next request header. The read future is kept
            // across loop iterations so noticing the shutdown signal never
            // drops a partially read header.
            let got = {
                let read = read_exact_or_eof(&mut rd, &mut buf);
                tokio::pin!(read);
                loop {
                    tokio::select! {
                        biased;
                        r = &mut read => break r?,
                        _ = self.tx.closed() => return Ok(Ended::WriterGone),
                        _ = self.shutdown.wait(), if !shutting_down => {
                            shutting_down = true;
                            info!("nbd: shutdown requested; finishing in-flight requests");
                        }
                        // All slots free = nothing in flight: close now.
                        _ = self.slots.acquire_many(self.slot_count), if shutting_down => {
                            return Ok(Ended::Shutdown);
                        }
                    }
                }
            };
            if !got {
                return Ok(Ended::EndOfStream);
            }
            let header =
                RequestHeader::decode(&buf).map_err(|e| ProtocolError::BadRequestMagic(e.0))?;
            stats.requests += 1;
            if header.kind == proto::CMD_DISC {
                // No reply; outstanding requests are still answered because
                // the writer drains every handler's reply before closing.
                return Ok(Ended::Disconnect);
            }
            let payload = header.payload_len();
            if payload > self.discard_limit {
                return Err(ProtocolError::PayloadTooLarge(payload).into());
            }
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                return Ok(Ended::WriterGone); // never closed; defensive
            };
            if shutting_down {
                // "The error value issued in respect of ... any subsequently
                // received requests SHOULD be NBD_ESHUTDOWN."
                skip(&mut rd, payload).await?;
                Responder::new(self.tx.clone(), header.cookie, slot, None)
                    .send(ReplyBody::error(Errno::Shutdown, "server is shutting down"));
                continue;
            }
            let ctx = RequestContext {
                size: self.export.size(),
                read_only: self.export.read_only(),
                min_block: self.block.minimum,
                max_payload: self.block.maximum,
                structured: self.structured,
                block_status: self.base_allocation,
            };
            let cmd = match validate(&header, &ctx) {
                Ok(cmd) => cmd,
                Err(rej) => {
                    stats.rejected += 1;
                    // Well-behaved clients never send invalid requests, so
                    // these are worth a warning, but a broken client must
                    // not flood the log: the rest are counted in the close
                    // line and logged at debug level.
                    if stats.rejected <= LOGGED_REJECTIONS {
                        warn!(
                            cmd = command_name(header.kind),
                            flags = header.flags,
                            offset = header.offset,
                            len = header.length,
                            errno = ?rej.errno,
                            reason = rej.reason,
                            "nbd: invalid request rejected"
                        );
                    } else {
                        debug!(
                            cmd = command_name(header.kind),
                            errno = ?rej.errno,
                            reason = rej.reason,
                            "nbd: invalid request rejected"
                        );
                    }
                    skip(&mut rd, payload).await?;
                    Responder::new(self.tx.clone(), header.cookie, slot, None)
                        .send(ReplyBody::error(rej.errno, rej.reason));
                    continue;
                }
            };
            let buffered = match cmd {
                Command::Read { len, .. } => {
                    stats.read_bytes += u64::from(len);
                    len
                }
                Command::Write { len, .. } => {
                    stats.written_bytes += u64::from(len);
                    len
                }
                _ => 0,
            };
            let bytes = if buffered > 0 {
                // ≤ max payload ≤ budget capacity, so this always completes.
                match self.budget.clone().acquire_many_owned(buffered).await {
                    Ok(p) => Some(p),
                    Err(_) => return Ok(Ended::WriterGone), // never closed
                }
            } else {
                None
            };
            let data = match cmd {
                Command::Write { len, .. } => read_payload(&mut rd, len).await?,
                _ => Bytes::new(),
            };
            let responder = Responder::new(self.tx.clone(), header.cookie, slot, bytes);
            let export = Arc::clone(&self.export);
            tokio::task::spawn_local(
                async move {
                    let body = execute(&*export, cmd, data).await;
                    responder.send(body);
                }
                .in_current_span(),
            );
        }
    }
}

/// Read a write payload of `len` bytes (already bounded by the maximum
/// payload) into one buffer, without zero-filling it first.
async fn read_payload<R: AsyncRead + Unpin>(
    rd: &mut R,
    len: u32,
) -> Result<Bytes, ConnectionError> {
    let len = len as usize;
    let mut buf = BytesMut::with_capacity(len);
    let mut limited = rd.take(len as u64);
    while buf.len() < len {
        if limited.read_buf(&mut buf).await? == 0 {
            return Err(ProtocolError::Truncated.into());
        }
    }
    Ok(buf.freeze())
}

/// Execute one validated command on the export.
async fn execute<E: Export>(export: &E, cmd: Command, data: Bytes) -> ReplyBody {
    match cmd {
        Command::Read { offset, len, df } => {
            if len == 0 {
                return reply::finish_read(offset, 0, Vec::new(), df);
            }
            match export.read(offset, len).await {
                Ok(chunks) => {
                    let body = reply::finish_read(offset, len, chunks, df);
                    if let ReplyBody::Error { message, .. } = &body {
                        error!(offset, len, error = %message, "nbd: export broke the read contract");
                    }
                    body
                }
                Err(e) => failed("read", offset, len, e),
            }
        }
        Command::Write { offset, len, fua } => {
            if len == 0 {
                return ReplyBody::Ok;
            }
            done(export.write(offset, data, fua).await, "write", offset, len)
        }
        Command::Flush => done(export.flush().await, "flush", 0, 0),
        Command::Trim { offset, len, fua } => {
            if len == 0 {
                return ReplyBody::Ok;
            }
            done(export.trim(offset, len, fua).await, "trim", offset, len)
        }
        Command::Cache { offset, len } => {
            if len == 0 {
                return ReplyBody::Ok;
            }
            done(export.cache(offset, len).await, "cache", offset, len)
        }
        Command::WriteZeroes { offset, len, flags } => {
            if len == 0 {
                return ReplyBody::Ok;
            }
            zeroes(export, offset, len, flags).await
        }
        Command::BlockStatus {
            offset,
            len,
            req_one,
        } => match export.block_status(offset, len).await {
            Ok(extents) => {
                let (body, repaired) =
                    reply::finish_block_status(BASE_ALLOCATION_ID, len, extents, req_one);
                if repaired {
                    warn!(
                        offset,
                        len, "nbd: export returned no extents; reporting allocated"
                    );
                }
                body
            }
            Err(e) => failed("block_status", offset, len, e),
        },
        // Handled by the reader; never spawned.
        Command::Disconnect => ReplyBody::Ok,
    }
}

async fn zeroes<E: Export>(export: &E, offset: u64, len: u32, flags: ZeroFlags) -> ReplyBody {
    match export.write_zeroes(offset, len, flags).await {
        Ok(()) => ReplyBody::Ok,
        // A fast-zero refusal is the expected outcome of probing, not a failure.
        Err(e) if flags.fast && e.errno == Errno::NotSup => ReplyBody::error(e.errno, e.message),
        Err(e) => failed("write_zeroes", offset, len, e),
    }
}

fn done(r: Result<(), ExportError>, op: &'static str, offset: u64, len: u32) -> ReplyBody {
    match r {
        Ok(()) => ReplyBody::Ok,
        Err(e) => failed(op, offset, len, e),
    }
}

fn failed(op: &'static str, offset: u64, len: u32, e: ExportError) -> ReplyBody {
    warn!(op, offset, len, errno = ?e.errno, error = %e.message, "nbd: export operation failed");
    ReplyBody::error(e.errno, e.message)
}

/// Write every ready reply, batching them into vectored writes.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Reply>,
    structured: bool,
) -> std::io::Result<()> {
    let mut batch: Vec<Reply> = Vec::with_capacity(MAX_BATCH);
    let mut scratch: Vec<u8> = Vec::with_capacity(4096);
    let mut pieces: Vec<Piece> = Vec::with_capacity(MAX_BATCH * 2);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        for r in &batch {
            reply::encode(r.cookie, &r.body, structured, &mut scratch, &mut pieces);
        }
        write_pieces(&mut wr, &scratch, &pieces).await?;
        wr.flush().await?;
        // Releases the permits: these requests are now fully answered.
        batch.clear();
        pieces.clear();
        scratch.clear();
        if scratch.capacity() > SCRATCH_KEEP {
            scratch = Vec::with_capacity(4096);
        }
    }
    // Every sender is gone: no more replies can come. Close our side.
    let _ = wr.shutdown().await;
    Ok(())
}

async fn write_pieces<W: AsyncWrite + Unpin>(
    wr: &mut W,
    scratch: &[u8],
    pieces: &[Piece],
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(pieces.len());
    for p in pieces {
        match p {
            Piece::Scratch(a, b) => {
                if let Some(s) = scratch.get(*a..*b) {
                    slices.push(IoSlice::new(s));
                }
            }
            Piece::Data(d) => slices.push(IoSlice::new(d)),
            Piece::Zeroes(n) => {
                let mut left = *n;
                while left > 0 {
                    let take = left.min(ZEROES.len());
                    slices.push(IoSlice::new(&ZEROES[..take]));
                    left -= take;
                }
            }
        }
    }
    let mut view: &mut [IoSlice<'_>] = &mut slices;
    while !view.is_empty() {
        let window = view.len().min(MAX_IOV);
        let n = wr.write_vectored(&view[..window]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        // n ≤ total length of the window ≤ total length of `view`.
        IoSlice::advance_slices(&mut view, n);
    }
    Ok(())
}

/// A printable command name for logs.
pub(crate) fn command_name(kind: u16) -> &'static str {
    match kind {
        proto::CMD_READ => "READ",
        proto::CMD_WRITE => "WRITE",
        proto::CMD_DISC => "DISC",
        proto::CMD_FLUSH => "FLUSH",
        proto::CMD_TRIM => "TRIM",
        proto::CMD_CACHE => "CACHE",
        proto::CMD_WRITE_ZEROES => "WRITE_ZEROES",
        proto::CMD_BLOCK_STATUS => "BLOCK_STATUS",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A writer that takes at most `max` bytes per call, vectored or not,
    /// and records everything.
    struct Trickle {
        max: usize,
        out: Vec<u8>,
        calls: usize,
        max_slices: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.out.extend_from_slice(&buf[..n]);
            self.calls += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.calls += 1;
            self.max_slices = self.max_slices.max(bufs.len());
            let mut left = self.max;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn write_pieces_handles_partial_writes_and_many_slices() {
        let scratch = b"headerMIDDLEtrailer".to_vec();
        let zeroes = ZEROES.len() * (MAX_IOV + 10) + 3; // more slices than IOV_MAX
        let pieces = vec![
            Piece::Scratch(0, 6),
            Piece::Data(Bytes::from_static(b"payload")),
            Piece::Zeroes(zeroes),
            Piece::Scratch(6, 12),
            Piece::Zeroes(1),
            Piece::Scratch(12, 19),
        ];
        for max in [1usize, 7, 65_537, usize::MAX] {
            if max == 1 {
                // One byte per call over ~66 MB would be slow; use a small case.
                let mut w = Trickle {
                    max,
                    out: Vec::new(),
                    calls: 0,
                    max_slices: 0,
                };
                let small = vec![
                    Piece::Scratch(0, 6),
                    Piece::Zeroes(5),
                    Piece::Scratch(6, 12),
                ];
                write_pieces(&mut w, &scratch, &small).await.unwrap();
                assert_eq!(w.out, b"header\0\0\0\0\0MIDDLE");
                continue;
            }
            let mut w = Trickle {
                max,
                out: Vec::new(),
                calls: 0,
                max_slices: 0,
            };
            write_pieces(&mut w, &scratch, &pieces).await.unwrap();
            assert!(w.max_slices <= MAX_IOV);
            let mut expect = b"headerpayload".to_vec();
            expect.resize(expect.len() + zeroes, 0);
            expect.extend_from_slice(b"MIDDLE\0trailer");
            assert_eq!(w.out.len(), expect.len());
            assert!(w.out == expect, "output differs with max {max}");
        }
    }

    #[tokio::test]
    async fn responder_answers_eio_when_dropped() {
        let (tx, mut rx) = mpsc::channel(1);
        let slots = Arc::new(Semaphore::new(1));
        let slot = slots.clone().try_acquire_owned().unwrap();
        let r = Responder::new(tx, 9, slot, None);
        assert_eq!(slots.available_permits(), 0);
        drop(r);
        let reply = rx.recv().await.unwrap();
        assert_eq!(reply.cookie, 9);
        assert!(matches!(
            reply.body,
            ReplyBody::Error {
                errno: Errno::Io,
                ..
            }
        ));
        drop(reply);
        assert_eq!(
            slots.available_permits(),
            1,
            "permit released with the reply"
        );
    }

    #[tokio::test]
    async fn writer_batches_replies_into_few_writes() {
        let (tx, rx) = mpsc::channel(64);
        let slots = Arc::new(Semaphore::new(64));
        for cookie in 0..64 {
            let slot = slots.clone().try_acquire_owned().unwrap();
            Responder::new(tx.clone(), cookie, slot, None).send(ReplyBody::Ok);
        }
        drop(tx);
        let mut w = Trickle {
            max: usize::MAX,
            out: Vec::new(),
            calls: 0,
            max_slices: 0,
        };
        write_loop(&mut w, rx, false).await.unwrap();
        assert_eq!(w.out.len(), 64 * proto::SIMPLE_REPLY_LEN);
        assert_eq!(w.calls, 1, "64 ready replies, one writev");
        assert_eq!(w.max_slices, 1, "contiguous headers share one iovec");
        assert_eq!(slots.available_permits(), 64);
    }
}
