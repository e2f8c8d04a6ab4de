//! The writer thread: the only mutator of a pool's state.
//!
//! ```text
//!  clients ──data ops (bounded)──┐
//!                                ├──▶ writer thread ──▶ batches ──▶ devices
//!  maintenance ──maint ops───────┘        │
//!                                         ├─▶ map (memtable)  ├─▶ segment table
//!                                         └─▶ catalog + checkpoints
//! ```
//!
//! One round: take every op that is ready, pack client writes into batches
//! (one device write each), write them, apply their map changes in lsn
//! order, flush the devices once if any op asked for durability (group
//! commit), then acknowledge. A write is acknowledged only after its batch
//! is on the device and the map points at it; it is durable after a flush.
//!
//! The same `apply_entry` code runs in replay, so a recovered pool reaches
//! exactly the state the running pool had for every batch that survived.
//!
//! When no segment is free for client data, the writer stops taking client
//! ops (they wait, back-pressure) but keeps serving maintenance ops: the
//! cleaner's relocations and the flushes that free segments. Client writes
//! fail with ENOSPC only when live data has reached the usable capacity.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::oneshot;

use crate::buf::AlignedBuf;
use crate::catalog::{Catalog, Effects, ViewStep};
use crate::chunk::{self, ChunkChanges, NewValue};
use crate::compress::{Compression, COMP_NONE};
use crate::crypt::{RecordPlace, ENC_NONE};
use crate::error::{Error, ErrorKind, Result};
use crate::format::batch::{BatchHeader, EntryKind, LogEntry, FLAG_ZERO_ALLOC};
use crate::format::uberblock::Uberblock;
use crate::layout::{chunk_start, MetaExtent, Paddr, SegId, BLOCK, BLOCK_U64, CHUNK_BLOCKS};
use crate::map::run::{Run, RunMeta};
use crate::map::{DataRef, Key, Levels, Memtable, Value};

use super::ckpt::{self, BlobRef, Checkpoint, ReplayPoint, StreamPos};
use super::space::{Counters, SegState};
use super::Shared;

/// Completion of an op.
pub(crate) type Done<T> = oneshot::Sender<Result<T>>;

/// L0 runs at which client writes wait for compaction.
const L0_STOP: usize = 12;

/// Most blocks of a discard resolved at once.
const DISCARD_WINDOW: u64 = 8192;

/// Stream numbers.
/// The writer flushes the devices at least once per this many batches, even
/// if no client asks: a power cut can then lose at most this many batches
/// (plus one round's) past the last one recovery finds, fewer than the
/// 2^20 lsns recovery skips — so an lsn, and with it an encryption nonce,
/// is never used twice (see crypt.rs).
const UNFLUSHED_BATCHES_MAX: u64 = 1 << 16;

/// Lsns recovery skips past the last batch it found.
pub(crate) const RECOVERY_LSN_SKIP: u64 = 1 << 20;
const _: () = assert!(UNFLUSHED_BATCHES_MAX * 4 <= RECOVERY_LSN_SKIP);

pub(crate) const STREAM_DATA: usize = 0;
pub(crate) const STREAM_CLEANER: usize = 1;
pub(crate) const STREAMS: usize = 2;

/// How a discard leaves the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiscardMode {
    /// Deallocate (TRIM, or WRITE_ZEROES without NO_HOLE).
    Trim,
    /// Zeroes that stay allocated (WRITE_ZEROES with NO_HOLE).
    ZeroAlloc,
}

/// Client data ops.
pub(crate) enum DataOp {
    Write {
        vol: u64,
        lba: u64,
        data: Bytes,
        fua: bool,
        done: Done<()>,
    },
    Discard {
        vol: u64,
        lba: u64,
        nblocks: u64,
        mode: DiscardMode,
        fua: bool,
        done: Done<()>,
    },
    Flush {
        done: Done<()>,
    },
}

/// Catalog changes.
#[derive(Debug, Clone)]
pub(crate) enum Control {
    CreateVolume {
        name: String,
        size: u64,
        props: BTreeMap<String, String>,
        key: Option<crate::crypt::KeyRec>,
    },
    /// A volume's key wrapped anew (change-key).
    SetKeyRec {
        vol: u64,
        key: crate::crypt::KeyRec,
    },
    Snapshot {
        vol: u64,
        name: String,
    },
    Rollback {
        vol: u64,
        snap: u64,
    },
    Clone {
        snap: u64,
        name: String,
    },
    DestroySnapshot {
        snap: u64,
    },
    DestroyVolume {
        vol: u64,
        force: bool,
    },
    Resize {
        vol: u64,
        size: u64,
    },
    SetProp {
        vol: u64,
        key: String,
        value: Option<String>,
    },
    SetPoolProp {
        key: String,
        value: Option<String>,
    },
    Rename {
        vol: u64,
        name: String,
    },
    BumpEpoch {
        vol: u64,
    },
    Detach {
        vol: u64,
    },
    /// A flatten starts (`active`) or stops without a detach.
    Flattening {
        vol: u64,
        active: bool,
    },
    /// Where a running scrub continues after a restart (None: it ended).
    ScrubAt {
        at: Option<(u32, u64, u64)>,
    },
}

/// What the cleaner moves.
pub(crate) struct RelocItem {
    /// The fragment's key; for `Whole`, (lineage, record lba, birth).
    pub key: Key,
    pub old: Paddr,
    pub old_rec_off: u8,
    /// Blocks of the fragment; for `Whole`, of the record.
    pub nblocks: u8,
    /// Compression (for `Restore`: the algorithm to compress with again).
    pub comp: u8,
    pub enc: u8,
    pub seal: Option<crate::crypt::Seal>,
    pub kind: RelocKind,
    /// Stored bytes (`Fragment`, `Whole`) or plaintext (`Restore`).
    pub data: Bytes,
    pub csums: Vec<u32>,
}

/// How the cleaner moves something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelocKind {
    /// Blocks of a plain record, as stored.
    Fragment,
    /// A whole packed record, as stored (no key needed).
    Whole,
    /// The live blocks of a partly dead packed record, stored anew
    /// (compressed and encrypted again, with a fresh nonce).
    Restore,
}

/// Maintenance ops.
pub(crate) enum MaintOp {
    Control(Control, Done<u64>),
    Relocate(Vec<RelocItem>, Done<u64>),
    Copy {
        vol: u64,
        lineage: u32,
        parent: (u32, u64),
        base: u64,
        lba: u64,
        data: Bytes,
        done: Done<()>,
    },
    Gc {
        lineage: u32,
        chunks: Vec<u64>,
        done: Done<()>,
    },
    GcDone {
        lineage: u32,
        /// The views the collection kept (`Catalog::views`); a lineage
        /// whose views changed since was scheduled again and is not done.
        views: Vec<u64>,
    },
    Rotate(Done<Option<Arc<Memtable>>>),
    InstallFlush(Arc<Run>, Done<()>),
    InstallCompaction {
        levels: Levels,
        dropped: Vec<RunMeta>,
        done: Done<()>,
    },
    /// The cleaner cannot free a segment: fail writes waiting for one.
    FailStalled,
    /// Flush the memtable from the writer and move the replay point to now.
    FlushNow(Done<()>),
    /// Load (Some) or unload (None) a data key, after every write batched
    /// so far is sealed (so no record waits for a key that is gone).
    SetKey(u64, Option<Arc<crate::crypt::DataKey>>, Done<()>),
    Shutdown(Done<()>),
}

/// A batch being built for one stream.
struct Batch {
    entries: Vec<LogEntry>,
    /// Header reserve (`hdr_blocks` blocks) followed by payload.
    buf: AlignedBuf,
    hdr_blocks: usize,
    payload: usize,
    header_len: usize,
}

impl Batch {
    fn new() -> Batch {
        Batch::with_buf(AlignedBuf::zeroed(64 * 1024))
    }

    /// A batch reusing `buf` (its old contents are overwritten).
    fn with_buf(mut buf: AlignedBuf) -> Batch {
        buf.resize(0);
        buf.resize(BLOCK);
        Batch {
            entries: Vec::new(),
            buf,
            hdr_blocks: 1,
            payload: 0,
            header_len: crate::format::batch::FIXED_LEN,
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Header bytes of an entry with `csums` checksums (plain writes).
    fn entry_len(csums: usize) -> usize {
        40 + 4 * csums
    }

    /// Where a payload must start: plain blocks on 4 KiB boundaries (they
    /// are read one block at a time), packed records on 16 bytes.
    fn align(plain: bool) -> usize {
        if plain {
            BLOCK
        } else {
            16
        }
    }

    /// Total bytes if an entry of `elen` with `plen` payload bytes (plain or
    /// packed) were added.
    fn total_with(&self, elen: usize, plen: usize, plain: bool) -> usize {
        let hb = (self.header_len + elen).div_ceil(BLOCK);
        let at = if plen > 0 {
            self.payload.next_multiple_of(Self::align(plain))
        } else {
            self.payload
        };
        (hb * BLOCK + at + plen).next_multiple_of(BLOCK)
    }

    fn push(&mut self, mut e: LogEntry, data: Option<&[u8]>) {
        let elen = e.encoded_len();
        let hb = (self.header_len + elen).div_ceil(BLOCK);
        if hb > self.hdr_blocks {
            // Make room for a bigger header: shift the payload right.
            let grow = (hb - self.hdr_blocks) * BLOCK;
            let old_total = self.hdr_blocks * BLOCK + self.payload;
            self.buf.resize(old_total + grow);
            let start = self.hdr_blocks * BLOCK;
            self.buf
                .as_mut_slice()
                .copy_within(start..old_total, start + grow);
            self.hdr_blocks = hb;
        }
        self.header_len += elen;
        if let Some(d) = data {
            let rel = self.payload.next_multiple_of(Self::align(e.is_plain()));
            let at = self.hdr_blocks * BLOCK + rel;
            self.buf.resize(at + d.len());
            self.buf.as_mut_slice()[at..at + d.len()].copy_from_slice(d);
            e.payload_off = rel as u32; // relative; fixed up when written
            self.payload = rel + d.len();
        }
        self.entries.push(e);
    }

    fn total(&self) -> usize {
        self.hdr_blocks * BLOCK + self.payload
    }
}

/// A batch whose header is final and whose place in its stream is taken,
/// waiting for (or in) its device write. Its entries are applied to the
/// map once the write completed.
struct Sealed {
    stream: usize,
    lsn: u64,
    at: Paddr,
    /// Bytes (whole blocks).
    total: u32,
    buf: AlignedBuf,
    entries: Vec<LogEntry>,
}

/// A client op in progress: how far it got into batches.
struct Job {
    op: DataOp,
    /// Blocks already batched.
    progress: u64,
}

/// Where a round's acknowledgements go.
#[derive(Default)]
struct Round {
    waiters: Vec<(Done<()>, bool)>,
    sync: bool,
}

/// State captured when the memtable is frozen: what the persisted state will
/// be once its run is installed.
struct Rotation {
    replay: ReplayPoint,
    counters: Counters,
    number: u64,
}

/// The writer.
pub(crate) struct Writer {
    pub(crate) sh: Arc<Shared>,
    pub(crate) cat: Catalog,
    pub(crate) streams: Vec<StreamPos>,
    batches: Vec<Batch>,
    pub(crate) next_lsn: u64,
    pub(crate) flushed_lsn: u64,
    last_written_lsn: u64,
    pub(crate) ckpt_seq: u64,
    pub(crate) ckpt_log: (SegId, u32),
    pub(crate) counters_ref: BlobRef,
    pub(crate) replay: ReplayPoint,
    pub(crate) lineage_delta: BTreeMap<u32, i64>,
    rotation: Option<Rotation>,
    rotations: u64,
    gc_done: Vec<(u32, u64)>,
    poisoned: Option<String>,
    /// Bytes of live data added by batched, not yet applied records.
    pending_bytes: u64,
    /// Bytes of log written since the persisted replay point.
    pub(crate) log_since_replay: u64,
    stalled: VecDeque<Job>,
    /// Writes over the usable capacity while garbage collection of
    /// destroyed history is still to free space: retried after every
    /// maintenance op, failed with ENOSPC once nothing is pending.
    space_waiters: VecDeque<Job>,
    /// Bumped whenever `cat` is replaced.
    cat_gen: u64,
    /// Storage settings per volume, valid for one catalog (`storage_of`).
    storage_cache: (u64, BTreeMap<u64, (Compression, u8)>),
    /// Compression attempts per volume (skipped on incompressible streams).
    backoff: std::collections::HashMap<u64, crate::compress::Backoff>,
    /// Views per (lineage, epoch), valid for one catalog (see `views_of`).
    #[allow(clippy::type_complexity)]
    view_cache: (
        u64,
        u64,
        u64,
        BTreeMap<(u32, u64), (Arc<[u64]>, Arc<crate::catalog::Chain>)>,
    ),
    /// Batches sealed and not yet written and applied, in lsn order.
    sealed: Vec<Sealed>,
    /// Batch buffers to reuse.
    spare: Vec<AlignedBuf>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn complete<T>(done: Done<T>, r: Result<T>) {
    // The receiver may have gone away (client disconnected): nothing to do.
    let _ = done.send(r);
}

impl Writer {
    /// A writer over loaded state (see `open.rs`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        sh: Arc<Shared>,
        cat: Catalog,
        streams: Vec<StreamPos>,
        next_lsn: u64,
        ckpt_seq: u64,
        ckpt_log: (SegId, u32),
        counters_ref: BlobRef,
        replay: ReplayPoint,
        lineage_delta: BTreeMap<u32, i64>,
    ) -> Writer {
        Writer {
            sh,
            cat,
            streams,
            batches: (0..STREAMS).map(|_| Batch::new()).collect(),
            next_lsn,
            flushed_lsn: next_lsn.saturating_sub(1),
            last_written_lsn: next_lsn.saturating_sub(1),
            ckpt_seq,
            ckpt_log,
            counters_ref,
            replay,
            lineage_delta,
            rotation: None,
            rotations: 0,
            gc_done: Vec::new(),
            poisoned: None,
            pending_bytes: 0,
            log_since_replay: 0,
            stalled: VecDeque::new(),
            space_waiters: VecDeque::new(),
            cat_gen: 0,
            storage_cache: (u64::MAX, BTreeMap::new()),
            backoff: std::collections::HashMap::new(),
            view_cache: (0, 0, 0, BTreeMap::new()),
            sealed: Vec::new(),
            spare: Vec::new(),
        }
    }

    // ------------------------------------------------------------------
    // The loop

    /// Run until shutdown.
    pub(crate) async fn run(
        mut self,
        data_rx: async_channel::Receiver<DataOp>,
        maint_rx: async_channel::Receiver<MaintOp>,
    ) {
        self.publish();
        loop {
            let mut round = Round::default();
            // Wait for something to do.
            let first = if self.can_take_data() && !self.stalled.is_empty() {
                None
            } else if self.can_take_data() {
                match next_op(&data_rx, &maint_rx).await {
                    Some(w) => Some(w),
                    None => return, // both channels closed
                }
            } else {
                match maint_rx.recv().await {
                    Ok(m) => Some(Work::Maint(m)),
                    Err(_) => return,
                }
            };
            let mut exit = false;
            if let Some(w) = first {
                exit |= self.handle(w, &mut round).await;
            }
            // Take whatever else is ready, maintenance first.
            let mut budget = 4096usize;
            while budget > 0 && !exit {
                budget -= 1;
                if let Ok(m) = maint_rx.try_recv() {
                    exit |= self.handle(Work::Maint(m), &mut round).await;
                    continue;
                }
                if !self.can_take_data() {
                    break;
                }
                if let Some(job) = self.stalled.pop_front() {
                    self.run_job(job, &mut round);
                    continue;
                }
                match data_rx.try_recv() {
                    Ok(d) => exit |= self.handle(Work::Data(d), &mut round).await,
                    Err(_) => break,
                }
            }
            self.finish_round(round).await;
            if self.sh.map.active_bytes() >= self.sh.memtable_budget {
                self.sh.wake_maintenance();
            }
            // Waiting for a free segment (not for map maintenance).
            let blocked = !self.stalled.is_empty() && {
                self.refill_next(STREAM_DATA);
                self.streams[STREAM_DATA].next.is_none()
            };
            self.sh.space_blocked.store(blocked, Ordering::Relaxed);
            if exit {
                return;
            }
        }
    }

    fn can_take_data(&mut self) -> bool {
        if self.map_backlogged() {
            return false;
        }
        if self.stalled.is_empty() {
            return true;
        }
        // A stalled job waits for a segment; retry when one may be free.
        self.refill_next(STREAM_DATA);
        self.streams[STREAM_DATA].next.is_some()
    }

    /// The map's maintenance is behind: the active memtable passed twice
    /// its budget (its flush is late) or L0 holds too many runs (every
    /// lookup reads each of them). Client ops then wait for maintenance,
    /// which bounds both memory and lookup cost.
    fn map_backlogged(&self) -> bool {
        if !self.sh.cfg.background {
            return false; // maintenance is driven by hand (tests)
        }
        let over = self.sh.map.active_bytes() > 2 * self.sh.memtable_budget
            || self.sh.map.levels().l0.len() >= L0_STOP;
        if over {
            self.sh.wake_maintenance();
        }
        over
    }

    /// Handle one op. Returns true on shutdown.
    async fn handle(&mut self, w: Work, round: &mut Round) -> bool {
        match w {
            Work::Data(op) => {
                self.run_job(Job { op, progress: 0 }, round);
                false
            }
            Work::Maint(m) => {
                // Everything batched so far is written and applied first, so
                // maintenance and control ops see all earlier writes.
                self.write_all_batches().await;
                let exit = self.maint(m, round).await;
                // Maintenance may have freed space.
                for job in std::mem::take(&mut self.space_waiters) {
                    self.run_job(job, round);
                }
                exit
            }
        }
    }

    async fn finish_round(&mut self, round: Round) {
        self.write_all_batches().await;
        let mut sync_err = None;
        let overdue =
            self.last_written_lsn.saturating_sub(self.flushed_lsn) >= UNFLUSHED_BATCHES_MAX;
        if (round.sync || overdue) && self.poisoned.is_none() {
            if let Err(e) = self.sync_devices().await {
                sync_err = Some(e);
            }
        }
        for (done, needs_sync) in round.waiters {
            let r = match (&self.poisoned, needs_sync, &sync_err) {
                (Some(p), _, _) => Err(Error::new(ErrorKind::Poisoned, p.clone())),
                (None, true, Some(e)) => Err(e.duplicate()),
                _ => Ok(()),
            };
            complete(done, r);
        }
    }

    /// Seal every open batch, write every sealed batch (all at once), and
    /// apply their entries in lsn order. On failure the pool is poisoned.
    async fn write_all_batches(&mut self) {
        if let Err(e) = self.flush_sealed().await {
            self.poison(&e);
        }
    }

    async fn flush_sealed(&mut self) -> Result<()> {
        for s in 0..STREAMS {
            if !self.batches[s].is_empty() {
                self.seal_batch(s)?;
            }
        }
        if self.sealed.is_empty() {
            return Ok(());
        }
        let mut sealed = std::mem::take(&mut self.sealed);
        let sh = self.sh.clone();
        let writes = sealed.iter_mut().map(|b| {
            let buf = std::mem::replace(&mut b.buf, AlignedBuf::zeroed(0));
            sh.vdevs.write_owned(b.at.seg, u64::from(b.at.offset), buf)
        });
        let results = futures::future::join_all(writes).await;
        let mut first_err = None;
        for (b, r) in sealed.into_iter().zip(results) {
            match r {
                Ok(buf) if first_err.is_none() => {
                    if self.spare.len() < 4 {
                        self.spare.push(buf);
                    }
                    if let Err(e) = self.apply_sealed(b) {
                        first_err = Some(e);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        self.pending_bytes = 0;
        match first_err {
            Some(e) => {
                self.poison(&e);
                Err(e)
            }
            None => Ok(()),
        }
    }

    async fn sync_devices(&mut self) -> Result<()> {
        let r = self.sh.vdevs.flush_all_async().await;
        match &r {
            Ok(()) => self.flushed_lsn = self.last_written_lsn,
            Err(e) => self.poison(e),
        }
        self.sh.stats.flushes.fetch_add(1, Ordering::Relaxed);
        r
    }

    fn poison(&mut self, e: &Error) {
        if self.poisoned.is_none() {
            tracing::error!(pool = %self.sh.name, error = %e, "pool stopped accepting writes after an I/O failure");
            let msg = format!(
                "pool {} stopped accepting writes after an earlier failure: {e}",
                self.sh.name
            );
            self.poisoned = Some(msg.clone());
            *self.sh.poisoned.lock() = Some(msg);
        }
    }

    // ------------------------------------------------------------------
    // Client ops

    fn run_job(&mut self, mut job: Job, round: &mut Round) {
        if let Some(p) = &self.poisoned {
            let err = Error::new(ErrorKind::Poisoned, p.clone());
            match job.op {
                DataOp::Write { done, .. }
                | DataOp::Discard { done, .. }
                | DataOp::Flush { done } => complete(done, Err(err)),
            }
            return;
        }
        match &job.op {
            DataOp::Flush { .. } => {
                round.sync = true;
                if let DataOp::Flush { done } = job.op {
                    round.waiters.push((done, true));
                }
            }
            DataOp::Write {
                vol,
                lba,
                data,
                fua,
                ..
            } => {
                let (vol, lba, fua) = (*vol, *lba, *fua);
                let data = data.clone();
                let nblocks = (data.len() / BLOCK) as u64;
                if job.progress == 0 {
                    if let Err(e) = self.admit(vol, lba, nblocks, true) {
                        if e.kind() == ErrorKind::NoSpace && self.gc_pending() {
                            // Space destroyed history holds is about to come back.
                            self.space_waiters.push_back(job);
                            self.sh.wake_maintenance();
                            return;
                        }
                        return fail(job.op, e);
                    }
                }
                match self.enqueue_write(vol, lba, &data, &mut job.progress) {
                    Ok(true) => {
                        round.sync |= fua;
                        if let DataOp::Write { done, .. } = job.op {
                            round.waiters.push((done, fua));
                        }
                    }
                    Ok(false) => self.stalled.push_back(job),
                    Err(e) => fail(job.op, e),
                }
            }
            DataOp::Discard {
                vol,
                lba,
                nblocks,
                mode,
                fua,
                ..
            } => {
                let (vol, lba, nblocks, mode, fua) = (*vol, *lba, *nblocks, *mode, *fua);
                if let Err(e) = self.admit(vol, lba, nblocks, false) {
                    return fail(job.op, e);
                }
                match self.enqueue_discard(vol, lba, nblocks, mode) {
                    Ok(true) => {
                        round.sync |= fua;
                        if let DataOp::Discard { done, .. } = job.op {
                            round.waiters.push((done, fua));
                        }
                    }
                    Ok(false) => self.stalled.push_back(job),
                    Err(e) => fail(job.op, e),
                }
            }
        }
    }

    fn usable_bytes(&self) -> u64 {
        super::usable_bytes(&self.sh)
    }

    /// True while some destroyed history still waits to be collected.
    fn gc_pending(&self) -> bool {
        self.cat
            .gc_todo
            .iter()
            .chain(self.cat.purge_todo.iter())
            // A lineage being flattened is not collected until the detach.
            .filter(|l| !self.cat.flattening.contains(l))
            .any(|l| !self.gc_done.iter().any(|(d, _)| d == l))
    }

    /// Check a client op against the catalog and, for writes, the space.
    fn admit(&self, vol: u64, lba: u64, nblocks: u64, is_write: bool) -> Result<()> {
        let v = self.cat.volume(vol)?;
        if v.props.get("readonly").is_some_and(|x| x == "on") {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                format!("volume {} is read-only", v.name),
            ));
        }
        if let Some(k) = &v.key {
            if self.sh.key(k.id).is_none() {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "volume {} is encrypted and its key is not loaded (edgevol volume load-key)",
                        v.name
                    ),
                ));
            }
        }
        let end = lba
            .checked_add(nblocks)
            .ok_or_else(|| Error::invalid("range overflows"))?;
        if end > v.size / BLOCK_U64 {
            return Err(Error::invalid(format!(
                "blocks {lba}..{end} are beyond the end of volume {} ({} bytes)",
                v.name, v.size
            )));
        }
        if is_write {
            let live = self.sh.segs.lock().live_total();
            let incoming = nblocks * BLOCK_U64;
            if live + self.pending_bytes + incoming > self.usable_bytes() {
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    format!("pool {} is full: free space by destroying snapshots or volumes, or by trimming", self.sh.name),
                ));
            }
        }
        Ok(())
    }

    /// Batch the records of a write from `progress` on. Ok(true): all
    /// batched; Ok(false): stalled for lack of a segment.
    fn enqueue_write(
        &mut self,
        vol: u64,
        lba: u64,
        data: &Bytes,
        progress: &mut u64,
    ) -> Result<bool> {
        let (lineage, birth) = {
            let v = self.cat.volume(vol)?;
            (v.head, v.head_epoch)
        };
        let (comp, enc) = self.storage_of(vol);
        let nblocks = (data.len() / BLOCK) as u64;
        while *progress < nblocks {
            let x = lba + *progress;
            let want = (chunk_start(x) + CHUNK_BLOCKS - x).min(nblocks - *progress);
            // A record may be shorter than its chunk: fill the segment's tail.
            let Some(n) = self.fit_blocks(STREAM_DATA, want)? else {
                return Ok(false);
            };
            let off = (*progress as usize) * BLOCK;
            let payload = &data[off..off + n as usize * BLOCK];
            let compressed = self.backoff.entry(vol).or_default().compress(comp, payload);
            let (e, stored) = record_entry(
                EntryKind::Write,
                lineage,
                x,
                birth,
                payload,
                compressed,
                enc,
            );
            if !self.push_entry(STREAM_DATA, e, Some(&stored))? {
                return Ok(false);
            }
            self.pending_bytes += n * BLOCK_U64;
            *progress += n;
        }
        Ok(true)
    }

    /// How a volume's new records are stored: its compression (property,
    /// else the pool's, else lz4) and encryption.
    fn storage_of(&mut self, vol: u64) -> (Compression, u8) {
        if self.storage_cache.0 != self.cat_gen {
            self.storage_cache = (self.cat_gen, BTreeMap::new());
            let cat = &self.cat;
            self.backoff.retain(|v, _| cat.volume(*v).is_ok());
        }
        if let Some(x) = self.storage_cache.1.get(&vol) {
            return *x;
        }
        let x = match self.cat.volume(vol) {
            Ok(v) => {
                let prop = v
                    .props
                    .get("compression")
                    .or_else(|| self.cat.pool_props.get("compression"))
                    .map_or("lz4", String::as_str);
                (
                    Compression::parse(prop).unwrap_or(Compression::Lz4),
                    v.key.as_ref().map_or(ENC_NONE, |k| k.enc),
                )
            }
            Err(_) => (Compression::Off, ENC_NONE),
        };
        self.storage_cache.1.insert(vol, x);
        x
    }

    fn enqueue_discard(
        &mut self,
        vol: u64,
        lba: u64,
        nblocks: u64,
        mode: DiscardMode,
    ) -> Result<bool> {
        let (lineage, birth) = {
            let v = self.cat.volume(vol)?;
            (v.head, v.head_epoch)
        };
        // One entry per up to 2^31 blocks: trims may span chunks.
        let mut x = lba;
        let end = lba + nblocks;
        while x < end {
            let n = (end - x).min(1 << 31);
            let e = LogEntry {
                kind: if mode == DiscardMode::Trim {
                    EntryKind::Trim
                } else {
                    EntryKind::Zero
                },
                comp: 0,
                flags: if mode == DiscardMode::ZeroAlloc {
                    FLAG_ZERO_ALLOC
                } else {
                    0
                },
                nblocks: n as u32,
                lineage,
                lba: x,
                birth,
                payload_off: 0,
                stored_len: 0,
                csums: Vec::new(),
                enc: ENC_NONE,
                seal: None,
                reloc_from: None,
            };
            if !self.push_entry(STREAM_DATA, e, None)? {
                // Nothing of this op was batched yet only if x == lba; a
                // partial discard is re-run whole, which is idempotent.
                return Ok(false);
            }
            x += n;
        }
        Ok(true)
    }

    // ------------------------------------------------------------------
    // Batches and streams

    /// Add an entry to a stream's batch, writing out and switching segments
    /// as needed. Ok(false) if the stream has no segment to continue in.
    fn batch_cap(&self, s: usize) -> usize {
        let room = (self.sh.vdevs.segment_size - u64::from(self.streams[s].off)) as usize;
        room.min(
            self.sh
                .cfg
                .max_batch_bytes
                .max(BLOCK * 2 + CHUNK_BLOCKS as usize * BLOCK),
        )
    }

    /// How many of `want` blocks (one raw record) fit in stream `s`'s batch,
    /// writing the batch out or moving to the next segment until at least
    /// one does. A record is shortened only to use the tail of a segment;
    /// a full batch is written out instead. None: no segment to go on in.
    fn fit_blocks(&mut self, s: usize, want: u64) -> Result<Option<u64>> {
        // As a plain record: the most a record of k blocks can need.
        let fits = |b: &Batch, k: u64, cap: usize| {
            b.total_with(Batch::entry_len(k as usize), k as usize * BLOCK, true) <= cap
        };
        loop {
            if !self.ensure_stream(s) {
                return Ok(None);
            }
            let cap = self.batch_cap(s);
            if fits(&self.batches[s], want, cap) {
                return Ok(Some(want));
            }
            if !self.batches[s].is_empty() {
                self.seal_batch(s)?;
                continue;
            }
            if let Some(k) = (1..want).rev().find(|&k| fits(&self.batches[s], k, cap)) {
                return Ok(Some(k));
            }
            self.advance_segment(s);
        }
    }

    fn push_entry(&mut self, s: usize, e: LogEntry, payload: Option<&[u8]>) -> Result<bool> {
        let elen = e.encoded_len();
        let plen = payload.map_or(0, <[u8]>::len);
        let plain = e.is_plain();
        loop {
            if !self.ensure_stream(s) {
                return Ok(false);
            }
            let room = (self.sh.vdevs.segment_size - u64::from(self.streams[s].off)) as usize;
            let cap = room.min(
                self.sh
                    .cfg
                    .max_batch_bytes
                    .max(BLOCK * 2 + CHUNK_BLOCKS as usize * BLOCK),
            );
            if self.batches[s].total_with(elen, plen, plain) <= cap {
                self.batches[s].push(e, payload);
                return Ok(true);
            }
            if !self.batches[s].is_empty() {
                self.seal_batch(s)?;
                continue;
            }
            // Even an empty batch does not fit in what is left of the segment.
            self.advance_segment(s);
        }
    }

    /// Make sure stream `s` has a current segment and a reserved successor.
    fn ensure_stream(&mut self, s: usize) -> bool {
        if self.streams[s].seg.is_none() {
            let Some(seg) = self.alloc_segment(s) else {
                return false;
            };
            self.streams[s].seg = Some(seg);
            self.streams[s].off = 0;
        }
        self.refill_next(s);
        self.streams[s].next.is_some()
    }

    fn refill_next(&mut self, s: usize) {
        if self.streams[s].next.is_none() {
            self.streams[s].next = self.alloc_segment(s);
        }
        self.publish_open();
    }

    fn publish_open(&self) {
        let open: Vec<SegId> = self
            .streams
            .iter()
            .flat_map(|s| [s.seg, s.next])
            .flatten()
            .collect();
        self.sh.segs.lock().set_open(open);
    }

    /// Client data may not eat into the reserve kept for the cleaner and
    /// metadata; the cleaner may not take the last segments, which only
    /// metadata (map flushes, checkpoints) may use.
    fn alloc_segment(&mut self, s: usize) -> Option<SegId> {
        let reserve = if s == STREAM_DATA {
            super::data_reserve(&self.sh)
        } else {
            super::meta_floor(&self.sh)
        };
        let mut segs = self.sh.segs.lock();
        if segs.free_count() <= reserve {
            return None;
        }
        segs.alloc(SegState::Data)
    }

    fn advance_segment(&mut self, s: usize) {
        let st = &mut self.streams[s];
        st.seg = st.next.take();
        st.off = 0;
        self.refill_next(s);
        self.publish_open();
    }

    /// Seal stream `s`'s batch: final header, its place in the stream
    /// taken. It is written and applied by [`Writer::flush_sealed`].
    fn seal_batch(&mut self, s: usize) -> Result<()> {
        let fresh = match self.spare.pop() {
            Some(b) => Batch::with_buf(b),
            None => Batch::new(),
        };
        let mut batch = std::mem::replace(&mut self.batches[s], fresh);
        let st = self.streams[s];
        let (Some(seg), Some(next)) = (st.seg, st.next) else {
            return Err(Error::corrupt("batch without a segment"));
        };
        let base = batch.hdr_blocks * BLOCK;
        for e in &mut batch.entries {
            if e.stored_len > 0 {
                e.payload_off += base as u32;
            }
        }
        // Whole blocks (direct I/O), and whole rows of a parity group:
        // no row holding live data is ever written twice.
        let end = self
            .sh
            .vdevs
            .row_end(seg, u64::from(st.off) + batch.total() as u64);
        let total = (end - u64::from(st.off)) as usize;
        batch.buf.resize(total);
        let lsn = self.next_lsn;
        // Encrypt new records in place: nonce = lsn ‖ entry index, unique
        // over the pool's life (see crypt.rs).
        for (i, e) in batch.entries.iter_mut().enumerate() {
            if e.enc == ENC_NONE || e.kind == EntryKind::Move {
                continue; // moved records travel as they are stored
            }
            let key = self.cat.key_of(e.lineage).and_then(|id| self.sh.key(id));
            let Some(key) = key else {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("the key of lineage {} is not loaded", e.lineage),
                ));
            };
            let place = RecordPlace {
                lineage: e.lineage,
                lba: e.lba,
                birth: e.birth,
                blocks: e.nblocks as u8,
                comp: e.comp,
            };
            let at = e.payload_off as usize;
            let region = &mut batch.buf.as_mut_slice()[at..at + e.stored_len as usize];
            e.seal = Some(key.seal(crate::crypt::nonce_for(lsn, i as u32), &place, region)?);
            e.csums = vec![crc32c::crc32c(region)];
        }
        let header = BatchHeader {
            pool_guid: self.sh.guid,
            lsn,
            prev_lsn: st.prev_lsn,
            flushed_lsn: self.flushed_lsn,
            segment: seg,
            next_segment: next,
            prev_crc: st.prev_crc,
            stream: s as u8,
            total_len: total as u32,
            entries: batch.entries,
        };
        let mut hbuf = Vec::with_capacity(base);
        header.encode_into(&mut hbuf);
        debug_assert_eq!(hbuf.len(), base);
        batch.buf.as_mut_slice()[..base].copy_from_slice(&hbuf);
        self.next_lsn += 1;
        self.log_since_replay += total as u64;
        let crc = BatchHeader::crc_of_encoded(&hbuf);
        let at = Paddr::new(seg, st.off);
        {
            let st = &mut self.streams[s];
            st.off += total as u32;
            st.prev_lsn = lsn;
            st.prev_crc = crc;
        }
        self.sealed.push(Sealed {
            stream: s,
            lsn,
            at,
            total: total as u32,
            buf: batch.buf,
            entries: header.entries,
        });
        // Leave a small tail unused rather than write tiny batches into it.
        if self.sh.vdevs.segment_size - u64::from(self.streams[s].off) < 2 * BLOCK_U64 {
            self.advance_segment(s);
        }
        Ok(())
    }

    /// A sealed batch is on the device: account for it and apply its entries.
    fn apply_sealed(&mut self, b: Sealed) -> Result<()> {
        let total = u64::from(b.total);
        debug_assert!(b.stream < STREAMS);
        self.sh.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.sh
            .stats
            .bytes_written
            .fetch_add(total, Ordering::Relaxed);
        self.last_written_lsn = self.last_written_lsn.max(b.lsn);
        self.sh
            .segs
            .lock()
            .note_write(b.at.seg, b.at.offset + total as u32, b.lsn);
        let mut reloc_done = 0u64;
        for e in &b.entries {
            reloc_done += self.apply_entry(e, b.at)?;
        }
        self.sh
            .stats
            .relocated
            .fetch_add(reloc_done, Ordering::Relaxed);
        Ok(())
    }

    // ------------------------------------------------------------------
    // The state machine (shared with replay)

    fn scan(&self, l: u32, from: u64, to: u64) -> Result<Vec<(Key, Value)>> {
        Ok(self
            .sh
            .map
            .scan(Key::lower(l, from), Key::lower(l, to), usize::MAX)?
            .entries)
    }

    fn chunk_entries(&self, l: u32, lba: u64) -> Result<Vec<(Key, Value)>> {
        let c = chunk_start(lba);
        self.scan(l, c, c + CHUNK_BLOCKS)
    }

    fn apply_changes(&mut self, c: ChunkChanges, new: Option<&DataRef>) {
        if let Some(d) = new {
            // The new record's share for the blocks actually referenced (a
            // flatten copy may insert only some of them).
            let blocks: u64 = c
                .changes
                .iter()
                .filter_map(|(_, v)| v.as_ref().and_then(Value::data))
                .filter(|x| x.paddr == d.paddr)
                .map(|x| u64::from(x.nblocks))
                .sum();
            if blocks > 0 {
                let (stored, logical) = chunk::live_share(d, blocks);
                self.sh.segs.lock().add_live(d.paddr.seg, stored, logical);
            }
        }
        if !c.freed.is_empty() {
            let mut segs = self.sh.segs.lock();
            for (p, fp, lg) in &c.freed {
                segs.sub_live(p.seg, *fp, *lg);
            }
        }
        self.sh.map.insert_all(c.changes);
    }

    /// Apply one log entry (running or replaying). Returns fragments relocated.
    pub(crate) fn apply_entry(&mut self, e: &LogEntry, batch_at: Paddr) -> Result<u64> {
        let Some(lin) = self.cat.lineages.get(&e.lineage) else {
            return Ok(0); // the lineage is gone: its data is garbage
        };
        let barriers: Vec<_> = lin
            .barriers
            .iter()
            .filter(|b| b.epoch <= e.birth)
            .copied()
            .collect();
        let data_ref = |nblocks: u32| DataRef {
            paddr: Paddr::new(batch_at.seg, batch_at.offset + e.payload_off),
            stored_len: e.stored_len,
            rec_blocks: nblocks as u8,
            rec_off: 0,
            nblocks: nblocks as u8,
            comp: e.comp,
            enc: e.enc,
            csums: e.csums.clone().into(),
            seal: e.seal.map(Arc::new),
        };
        match e.kind {
            EntryKind::Write => {
                let head = ViewStep {
                    lineage: e.lineage,
                    epoch: e.birth,
                    barriers,
                };
                let d = data_ref(e.nblocks);
                self.apply_head(&head, e.lba, u64::from(e.nblocks), NewValue::Data(d))?;
                Ok(0)
            }
            EntryKind::Trim | EntryKind::Zero => {
                let head = ViewStep {
                    lineage: e.lineage,
                    epoch: e.birth,
                    barriers,
                };
                let nv = if e.kind == EntryKind::Zero && e.flags & FLAG_ZERO_ALLOC != 0 {
                    NewValue::ZeroAlloc
                } else {
                    NewValue::Trim
                };
                self.apply_head(&head, e.lba, u64::from(e.nblocks), nv)?;
                Ok(0)
            }
            EntryKind::Relocate => {
                let Some((old, old_off)) = e.reloc_from else {
                    return Ok(0);
                };
                let key = Key::new(e.lineage, e.lba, e.birth);
                let new = data_ref(e.nblocks);
                let entries = self.chunk_entries(e.lineage, e.lba)?;
                match chunk::plan_relocate(
                    &entries,
                    key,
                    old,
                    old_off,
                    e.nblocks as u8,
                    new.clone(),
                ) {
                    Some(plan) => {
                        self.apply_changes(plan, Some(&new));
                        Ok(1)
                    }
                    None => Ok(0),
                }
            }
            EntryKind::Copy => {
                let new = data_ref(e.nblocks);
                let entries = self.chunk_entries(e.lineage, e.lba)?;
                let plan = chunk::plan_copy(&entries, e.lineage, e.lba, e.birth, &new);
                self.apply_changes(plan, Some(&new));
                Ok(0)
            }
            EntryKind::Move => {
                let Some((old, _)) = e.reloc_from else {
                    return Ok(0);
                };
                let new = Paddr::new(batch_at.seg, batch_at.offset + e.payload_off);
                let entries = self.chunk_entries(e.lineage, e.lba)?;
                let plan = chunk::plan_move(&entries, e.birth, old, new);
                let moved = plan.changes.len() as u64;
                if let Some((_, Some(Value::Data(d)))) = plan.changes.first() {
                    let d = d.clone();
                    self.apply_changes(plan, Some(&d));
                }
                Ok(moved)
            }
        }
    }

    /// A head write, trim or zero of `[lba, lba + n)` at `head.epoch`.
    fn apply_head(&mut self, head: &ViewStep, lba: u64, n: u64, new: NewValue) -> Result<()> {
        let l = head.lineage;
        let (frozen, chain) = self.views_of(l, head.epoch);
        let end = lba + n;
        // Change of data blocks the head sees (for `referenced`).
        let mut delta: i64 = 0;
        match &new {
            NewValue::Data(d) => {
                // One scan of the head's chunk serves both the resolution of
                // what the head saw and the plan.
                let entries = self.chunk_entries(l, lba)?;
                let before = self.resolve_with(&chain, &entries, lba, n)?;
                delta = n as i64 - chunk::data_blocks(&before) as i64;
                let plan = chunk::plan_write(&entries, head, lba, n as u8, &frozen, &new);
                self.apply_changes(plan, Some(d));
            }
            NewValue::ZeroAlloc | NewValue::Trim => {
                // Bounded windows: a discard may cover a whole volume.
                let mut w = lba;
                while w < end {
                    let wend = (chunk_start(w) + DISCARD_WINDOW).min(end);
                    // Whole chunks: deciding whether a record dies needs
                    // every fragment in its chunk, not only those in range.
                    let all = self.scan(l, chunk_start(w), chunk_start(wend - 1) + CHUNK_BLOCKS)?;
                    let before = self.resolve_with(&chain, &all, w, wend - w)?;
                    delta -= chunk::data_blocks(&before) as i64;
                    let mut x = w;
                    while x < wend {
                        let stop = (chunk_start(x) + CHUNK_BLOCKS).min(wend);
                        let c = chunk_start(x);
                        let entries: Vec<(Key, Value)> = all
                            .iter()
                            .filter(|(k, _)| chunk_start(k.lba) == c)
                            .cloned()
                            .collect();
                        // Only chunks where this lineage has entries need punching.
                        if !entries.is_empty() || matches!(new, NewValue::ZeroAlloc) {
                            let plan = chunk::plan_write(
                                &entries,
                                head,
                                x,
                                (stop - x) as u8,
                                &frozen,
                                &new,
                            );
                            self.apply_changes(plan, None);
                        }
                        x = stop;
                    }
                    let shows = before
                        .iter()
                        .any(|p| !matches!(p.kind, chunk::PieceKind::Hole));
                    if matches!(new, NewValue::Trim) && shows {
                        let sh = self.sh.clone();
                        let after = chunk::resolve(&chain, w, (wend - w) as u32, |l, f, t| {
                            Ok(sh
                                .map
                                .scan(Key::lower(l, f), Key::lower(l, t), usize::MAX)?
                                .entries)
                        })?;
                        let t = chunk::plan_tombstones(l, head.epoch, &after);
                        self.sh.map.insert_all(t);
                    }
                    w = wend;
                }
            }
        }

        if delta != 0 {
            *self.lineage_delta.entry(l).or_insert(0) += delta;
            *self.sh.lineage_delta.lock().entry(l).or_insert(0) += delta;
        }
        if let Some(v) = self
            .cat
            .volumes
            .values_mut()
            .find(|v| v.head == l && v.head_epoch == head.epoch)
        {
            v.dirty = true;
        }
        Ok(())
    }

    /// Resolve `[lba, lba + n)` through `chain`, taking the head lineage's
    /// entries from `head_entries` (a scan covering the range from its
    /// chunk's start) and scanning the map for the ancestors only.
    fn resolve_with(
        &self,
        chain: &crate::catalog::Chain,
        head_entries: &[(Key, Value)],
        lba: u64,
        n: u64,
    ) -> Result<Vec<chunk::Piece>> {
        let head = chain.first().map(|s| s.lineage);
        let sh = &self.sh;
        chunk::resolve(chain, lba, n as u32, |l, f, t| {
            if Some(l) == head {
                return Ok(head_entries
                    .iter()
                    .filter(|(k, _)| k.lba >= f && k.lba < t)
                    .cloned()
                    .collect());
            }
            Ok(sh
                .map
                .scan(Key::lower(l, f), Key::lower(l, t), usize::MAX)?
                .entries)
        })
    }

    /// The frozen views and the read chain of `(l, epoch)`, cached until
    /// the catalog changes.
    fn views_of(&mut self, l: u32, epoch: u64) -> (Arc<[u64]>, Arc<crate::catalog::Chain>) {
        if self.view_cache.0 != self.cat.next_id
            || self.view_cache.1 != self.cat.next_epoch
            || self.view_cache.2 != self.cat_gen
        {
            self.view_cache = (
                self.cat.next_id,
                self.cat.next_epoch,
                self.cat_gen,
                BTreeMap::new(),
            );
        }
        self.view_cache
            .3
            .entry((l, epoch))
            .or_insert_with(|| {
                (
                    Arc::from(self.cat.frozen_views(l)),
                    Arc::new(self.cat.chain(l, epoch)),
                )
            })
            .clone()
    }

    /// Data blocks visible through `chain` in `[from, to)`.
    fn data_blocks_in(&self, chain: &crate::catalog::Chain, from: u64, to: u64) -> Result<u64> {
        super::walk::data_blocks(&self.sh, chain, from, to)
    }

    /// Data blocks the head of `vol` sees now.
    fn referenced(&self, vol: u64) -> u64 {
        let Ok(v) = self.cat.volume(vol) else {
            return 0;
        };
        let base = self
            .cat
            .lineages
            .get(&v.head)
            .map_or(0, |l| l.base_referenced);
        let d = self.lineage_delta.get(&v.head).copied().unwrap_or(0);
        (base + d).max(0) as u64
    }

    // ------------------------------------------------------------------
    // Maintenance ops

    async fn maint(&mut self, m: MaintOp, _round: &mut Round) -> bool {
        match m {
            MaintOp::Control(c, done) => {
                let r = self.control(c).await;
                complete(done, r);
            }
            MaintOp::Relocate(items, done) => {
                let r = self.relocate(items).await;
                complete(done, r);
            }
            MaintOp::Copy {
                vol,
                lineage,
                parent,
                base,
                lba,
                data,
                done,
            } => {
                let r = self.copy(vol, lineage, parent, base, lba, &data).await;
                complete(done, r);
            }
            MaintOp::Gc {
                lineage,
                chunks,
                done,
            } => {
                let r = self.gc(lineage, &chunks);
                complete(done, r);
            }
            MaintOp::GcDone { lineage, views } => {
                // A collection planned against an older catalog (the
                // lineage was destroyed or lost a view meanwhile) does not
                // count: maintenance collects it again.
                let now = if self.cat.lineages.contains_key(&lineage) {
                    self.cat.views(lineage)
                } else {
                    Vec::new()
                };
                if now == views {
                    self.gc_done.push((lineage, self.rotations));
                }
            }
            MaintOp::Rotate(done) => {
                let r = Ok(self.rotate());
                complete(done, r);
            }
            MaintOp::InstallFlush(run, done) => {
                let r = self.install_flush(Some(run)).await;
                complete(done, r);
            }
            MaintOp::InstallCompaction {
                levels,
                dropped,
                done,
            } => {
                let r = self.install_compaction(levels, dropped).await;
                complete(done, r);
            }
            MaintOp::SetKey(id, key, done) => {
                match key {
                    Some(k) => {
                        self.sh.keys.write().insert(id, k);
                    }
                    None => {
                        self.sh.keys.write().remove(&id);
                    }
                }
                complete(done, Ok(()));
            }
            MaintOp::FlushNow(done) => {
                let r = if self.rotation.is_some() {
                    Ok(())
                } else {
                    self.flush_now().await
                };
                complete(done, r);
            }
            MaintOp::FailStalled => {
                let waiting = std::mem::take(&mut self.space_waiters);
                for job in std::mem::take(&mut self.stalled).into_iter().chain(waiting) {
                    fail(
                        job.op,
                        Error::new(
                            ErrorKind::NoSpace,
                            format!("pool {} is full: no space can be reclaimed", self.sh.name),
                        ),
                    );
                }
            }
            MaintOp::Shutdown(done) => {
                self.write_all_batches().await;
                let r = if self.poisoned.is_none() {
                    let cat = self.cat.clone();
                    self.write_checkpoint(&cat, None, Release::default()).await
                } else {
                    Ok(())
                };
                complete(done, r);
                return true;
            }
        }
        false
    }

    fn alloc_meta_blocks(&mut self, bytes: usize) -> Result<Vec<MetaExtent>> {
        self.sh
            .segs
            .lock()
            .alloc_meta_blocks(bytes.div_ceil(BLOCK) as u32)
            .ok_or_else(|| Error::new(ErrorKind::NoSpace, "no free segments for metadata"))
    }

    /// Make `self.cat` the catalog readers see (and drop cached views).
    fn publish(&mut self) {
        self.cat_gen += 1;
        *self.sh.catalog.write() = Arc::new(self.cat.clone());
    }

    async fn control(&mut self, c: Control) -> Result<u64> {
        if let Some(p) = &self.poisoned {
            return Err(Error::new(ErrorKind::Poisoned, p.clone()));
        }
        let now = now_secs();
        let mut cat = self.cat.clone();
        let mut fx = Effects::default();
        let out = match c {
            Control::CreateVolume {
                name,
                size,
                props,
                key,
            } => cat.create_volume(&name, size, props, now, key)?,
            Control::SetKeyRec { vol, key } => {
                cat.set_key(vol, key)?;
                0
            }
            Control::Snapshot { vol, name } => {
                let r = self.referenced(vol);
                cat.snapshot(vol, &name, now, r)?
            }
            Control::Rollback { vol, snap } => {
                let r = self.referenced(vol);
                let (auto, f) = cat.rollback(vol, snap, now, r)?;
                fx = f;
                auto.unwrap_or(0)
            }
            Control::Clone { snap, name } => cat.clone_volume(snap, &name, now)?,
            Control::DestroySnapshot { snap } => {
                fx = cat.destroy_snapshot(snap)?;
                0
            }
            Control::DestroyVolume { vol, force } => {
                fx = cat.destroy_volume(vol, force)?;
                0
            }
            Control::Resize { vol, size } => {
                let (head, head_epoch, old) = {
                    let v = cat.volume(vol)?;
                    (v.head, v.head_epoch, v.size)
                };
                // Data blocks cut off stop counting as referenced. The
                // adjustment lives in the catalog (base_referenced), so it
                // is persisted with the barrier whatever replay does.
                let cut = if size < old {
                    self.data_blocks_in(
                        &cat.chain(head, head_epoch),
                        size / BLOCK_U64,
                        old / BLOCK_U64,
                    )?
                } else {
                    0
                };
                if cat.resize(vol, size)?.is_some() {
                    if let Some(l) = cat.lineages.get_mut(&head) {
                        l.base_referenced -= cut as i64;
                    }
                    fx.reap.insert(head);
                }
                0
            }
            Control::SetProp { vol, key, value } => {
                cat.set_prop(vol, &key, value.as_deref())?;
                0
            }
            Control::SetPoolProp { key, value } => {
                match value {
                    Some(v) => cat.pool_props.insert(key, v),
                    None => cat.pool_props.remove(&key),
                };
                0
            }
            Control::Rename { vol, name } => {
                cat.rename_volume(vol, &name)?;
                0
            }
            Control::BumpEpoch { vol } => cat.bump_epoch(vol)?,
            Control::ScrubAt { at } => {
                cat.scrub_at = at;
                0
            }
            Control::Flattening { vol, active } => {
                if active {
                    cat.begin_flatten(vol)?;
                } else {
                    fx = cat.end_flatten(vol)?;
                }
                0
            }
            Control::Detach { vol } => {
                // Replaying writes made before the detach with the detached
                // catalog would account them differently, so the detach is
                // made durable together with a flush of the memtable: its
                // checkpoint's replay point lies past every earlier write.
                if self.rotation.is_some() {
                    return Err(Error::new(
                        ErrorKind::Busy,
                        "a map flush is in progress; retry",
                    ));
                }
                let mut fx = cat.detach(vol)?;
                cat.schedule(&fx);
                self.gc_done
                    .retain(|(l, _)| !fx.reap.contains(l) && !fx.dead.contains(l));
                fx.reap.clear();
                let prev = std::mem::replace(&mut self.cat, cat);
                self.cat_gen += 1;
                if let Err(e) = self.flush_now().await {
                    self.cat = prev;
                    self.cat_gen += 1;
                    return Err(e);
                }
                self.publish();
                self.sh.wake_maintenance();
                return Ok(0);
            }
        };
        cat.schedule(&fx);
        // A lineage scheduled again needs a new collection: an older "done"
        // must not clear it.
        self.gc_done
            .retain(|(l, _)| !fx.reap.contains(l) && !fx.dead.contains(l));
        for l in &fx.dead {
            self.sh.lineage_delta.lock().remove(l);
        }
        self.write_checkpoint(&cat, None, Release::default())
            .await?;
        self.cat = cat;
        self.publish();
        if !fx.reap.is_empty() || !fx.dead.is_empty() {
            self.sh.wake_maintenance();
        }
        Ok(out)
    }

    async fn relocate(&mut self, items: Vec<RelocItem>) -> Result<u64> {
        let before = self.sh.stats.relocated.load(Ordering::Relaxed);
        for it in items {
            if it.kind == RelocKind::Restore {
                let comp = match it.comp {
                    crate::compress::COMP_ZSTD => Compression::Zstd(3),
                    crate::compress::COMP_LZ4 => Compression::Lz4,
                    _ => Compression::Off,
                };
                let (mut e, stored) = record_entry(
                    EntryKind::Relocate,
                    it.key.lineage,
                    it.key.lba,
                    it.key.birth,
                    &it.data,
                    comp.compress(&it.data),
                    it.enc,
                );
                e.reloc_from = Some((it.old, it.old_rec_off));
                if !self.push_entry(STREAM_CLEANER, e, Some(&stored))? {
                    return Err(Error::new(
                        ErrorKind::NoSpace,
                        "no segment free for the cleaner",
                    ));
                }
                self.sh.stats.restored.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let e = LogEntry {
                kind: if it.kind == RelocKind::Whole {
                    EntryKind::Move
                } else {
                    EntryKind::Relocate
                },
                comp: it.comp,
                flags: 0,
                nblocks: u32::from(it.nblocks),
                lineage: it.key.lineage,
                lba: it.key.lba,
                birth: it.key.birth,
                payload_off: 0,
                stored_len: it.data.len() as u32,
                csums: it.csums,
                enc: it.enc,
                seal: it.seal,
                reloc_from: Some((it.old, it.old_rec_off)),
            };
            if !self.push_entry(STREAM_CLEANER, e, Some(&it.data))? {
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    "no segment free for the cleaner",
                ));
            }
        }
        self.flush_sealed().await?;
        Ok(self.sh.stats.relocated.load(Ordering::Relaxed) - before)
    }

    async fn copy(
        &mut self,
        vol: u64,
        lineage: u32,
        parent: (u32, u64),
        base: u64,
        lba: u64,
        data: &Bytes,
    ) -> Result<()> {
        let same = self
            .cat
            .lineages
            .get(&lineage)
            .is_some_and(|l| l.volume == Some(vol) && l.parent == Some(parent));
        if !same {
            return Err(Error::new(ErrorKind::Busy, "volume changed during flatten"));
        }
        let (comp, enc) = self.storage_of(vol);
        let nblocks = (data.len() / BLOCK) as u64;
        let mut done = 0u64;
        while done < nblocks {
            let x = lba + done;
            let want = (chunk_start(x) + CHUNK_BLOCKS - x).min(nblocks - done);
            let Some(n) = self.fit_blocks(STREAM_CLEANER, want)? else {
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    "no segment free for the flatten copy",
                ));
            };
            let off = done as usize * BLOCK;
            let payload = &data[off..off + n as usize * BLOCK];
            let (e, stored) = record_entry(
                EntryKind::Copy,
                lineage,
                x,
                base,
                payload,
                comp.compress(payload),
                enc,
            );
            if !self.push_entry(STREAM_CLEANER, e, Some(&stored))? {
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    "no segment free for the flatten copy",
                ));
            }
            done += n;
        }
        self.flush_sealed().await
    }

    fn gc(&mut self, lineage: u32, chunks: &[u64]) -> Result<()> {
        let (views, barriers) = match self.cat.lineages.get(&lineage) {
            Some(l) => (self.cat.views(lineage), l.barriers.clone()),
            None => (Vec::new(), Vec::new()), // purge
        };
        for &c in chunks {
            let entries = self.chunk_entries(lineage, c)?;
            if entries.is_empty() {
                continue;
            }
            let plan = chunk::plan_gc(&entries, c, &views, &barriers);
            if !plan.is_empty() {
                self.apply_changes(plan, None);
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // Flushes, compaction, checkpoints

    fn rotate(&mut self) -> Option<Arc<Memtable>> {
        if self.rotation.is_some() {
            return None;
        }
        let frozen = self.sh.map.rotate()?;
        self.capture_rotation();
        Some(frozen)
    }

    /// Record what the persisted state will be once the frozen memtable (if
    /// any) is installed: the replay point and counters as of now.
    fn capture_rotation(&mut self) {
        self.rotations += 1;
        self.rotation = Some(Rotation {
            replay: ReplayPoint {
                lsn: self.next_lsn,
                streams: self.streams.clone(),
            },
            counters: Counters {
                segs: self.sh.segs.lock().snapshot(),
                lineage_delta: self.lineage_delta.clone(),
            },
            number: self.rotations,
        });
    }

    fn stream_uses(&self, seg: SegId) -> bool {
        self.streams
            .iter()
            .any(|s| s.seg == Some(seg) || s.next == Some(seg))
    }

    /// Flush the memtable from the writer thread itself and move the
    /// persisted replay point to now, even if the memtable is empty. Used
    /// where nothing written so far may ever be replayed again: at the end
    /// of recovery (torn tails must not be re-read later as if flushed) and
    /// for catalog ops that change how earlier entries would replay.
    pub(crate) async fn flush_now(&mut self) -> Result<()> {
        if self.rotation.is_some() {
            return Err(Error::new(
                ErrorKind::Busy,
                "a map flush is in progress; retry",
            ));
        }
        let frozen = self.sh.map.rotate();
        self.capture_rotation();
        let run = match frozen {
            Some(frozen) => {
                let id = self.sh.next_run_id.fetch_add(1, Ordering::SeqCst);
                let sh = self.sh.clone();
                let mut alloc = super::maint::TableAlloc(&sh);
                let r = super::maint::build_run_with(
                    &sh,
                    id,
                    &mut alloc,
                    frozen.iter().map(|(k, v)| Ok((*k, v.clone()))),
                );
                match r {
                    Ok(run) => Some(run),
                    Err(e) => {
                        // Put the frozen entries back in front of newer ones.
                        self.rotation = None;
                        self.sh.map.unfreeze();
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        self.install_flush(run).await
    }

    async fn install_flush(&mut self, run: Option<Arc<Run>>) -> Result<()> {
        let rot = self
            .rotation
            .take()
            .ok_or_else(|| Error::corrupt("flush installed without a rotation"))?;
        if let Some(run) = run {
            self.sh.map.install_flush(run);
        }
        let mut counters = rot.counters;
        // Free data segments the persisted state no longer needs: no live
        // record in the runs, no batch to replay, not in use by a stream.
        let mut release = Vec::new();
        for (g, segs) in counters.segs.iter_mut().enumerate() {
            for (i, info) in segs.iter_mut().enumerate() {
                let seg = SegId::new(g as u8, i as u32);
                if info.state == SegState::Meta {
                    // Meta ownership is derived from the checkpoint, not counters.
                    continue;
                }
                if info.state == SegState::Data
                    && info.live == 0
                    && info.max_lsn < rot.replay.lsn
                    && !self.stream_uses(seg)
                    && !rot
                        .replay
                        .streams
                        .iter()
                        .any(|s| s.seg == Some(seg) || s.next == Some(seg))
                {
                    info.state = SegState::Free;
                    info.written = 0;
                    info.max_lsn = 0;
                    release.push(seg);
                }
            }
        }
        // GC work that is now in the runs is done for good.
        let number = rot.number;
        let mut cat = self.cat.clone();
        self.gc_done.retain(|(l, at)| {
            if *at < number {
                cat.gc_todo.remove(l);
                cat.purge_todo.remove(l);
                false
            } else {
                true
            }
        });
        self.replay = rot.replay;
        self.log_since_replay = 0;
        let blob = ckpt::encode_counters(&counters);
        let extents = self.alloc_meta_blocks(blob.len())?;
        if let Err(e) = ckpt::write_blob_async(&self.sh.vdevs, &extents, blob.clone()).await {
            self.sh.segs.lock().release_meta_blocks(&extents);
            self.poison(&e);
            return Err(e);
        }
        let r = BlobRef {
            extents,
            len: blob.len() as u64,
            crc: crc32c::crc32c(&blob),
        };
        let release = Release {
            segments: release,
            extents: Vec::new(),
        };
        self.write_checkpoint(&cat, Some(r), release).await?;
        self.cat = cat;
        self.publish();
        self.sh.stats.map_flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn install_compaction(&mut self, levels: Levels, dropped: Vec<RunMeta>) -> Result<()> {
        // Runs flushed while the compaction ran are newer than its inputs:
        // keep them in front of the new L0.
        let cur = self.sh.map.levels();
        let dropped_ids: Vec<u64> = dropped.iter().map(|m| m.id).collect();
        let mut l0: Vec<_> = cur
            .l0
            .iter()
            .filter(|r| {
                !dropped_ids.contains(&r.meta().id)
                    && !levels.l0.iter().any(|x| x.meta().id == r.meta().id)
            })
            .cloned()
            .collect();
        l0.extend(levels.l0);
        self.sh.map.install_levels(Levels {
            l0,
            deep: levels.deep,
        });
        let release = Release {
            segments: Vec::new(),
            extents: dropped
                .iter()
                .flat_map(|m| m.extents.iter().copied())
                .collect(),
        };
        let cat = self.cat.clone();
        self.write_checkpoint(&cat, None, release).await?;
        self.sh.stats.compactions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Write a checkpoint of `cat` with nothing else changing.
    pub(crate) async fn write_checkpoint_pub(&mut self, cat: &Catalog) -> Result<()> {
        self.write_checkpoint(cat, None, Release::default()).await
    }

    /// Write a checkpoint of `cat` and the current map; on success, release
    /// `release` (and segments the previous checkpoint alone used).
    async fn write_checkpoint(
        &mut self,
        cat: &Catalog,
        counters: Option<BlobRef>,
        mut release: Release,
    ) -> Result<()> {
        let seq = self.ckpt_seq + 1;
        let counters_ref = counters
            .clone()
            .unwrap_or_else(|| self.counters_ref.clone());
        let mut ck = Checkpoint {
            seq,
            catalog: cat.clone(),
            manifest: self.sh.map.levels().manifest(),
            counters: counters_ref,
            replay: self.replay.clone(),
            next_lsn: self.next_lsn,
            next_run_id: self.sh.next_run_id.load(Ordering::SeqCst),
            log_segment: self.ckpt_log.0,
            stale_members: self.sh.vdevs.stale_members(),
        };
        let mut bytes = ckpt::encode_checkpoint(&ck);
        let (mut seg, mut off) = self.ckpt_log;
        if u64::from(off) + bytes.len() as u64 > self.sh.vdevs.segment_size {
            let Some(s) = self.sh.segs.lock().alloc_pinned_meta() else {
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    "no free segment for the checkpoint log",
                ));
            };
            release.segments.push(seg);
            seg = s;
            off = 0;
            ck.log_segment = s;
            bytes = ckpt::encode_checkpoint(&ck);
        }
        if bytes.len() as u64 > self.sh.vdevs.segment_size {
            return Err(Error::new(
                ErrorKind::NoSpace,
                "checkpoint larger than a segment: recreate the pool with a larger segment size",
            ));
        }
        let ub = Uberblock {
            pool_guid: self.sh.guid,
            seq,
            ckpt: Paddr::new(seg, off),
            ckpt_len: bytes.len() as u32,
            ckpt_crc: crc32c::crc32c(&bytes),
            time: now_secs(),
        };
        let res = async {
            ckpt::write_aligned_async(&self.sh.vdevs, seg, u64::from(off), &bytes).await?;
            self.sh.vdevs.flush_all_async().await?;
            self.sh
                .vdevs
                .write_everywhere_async(Uberblock::slot_offset(seq), &ub.encode())
                .await?;
            self.sh.vdevs.flush_all_async().await
        }
        .await;
        if let Err(e) = res {
            self.poison(&e);
            return Err(e);
        }
        self.flushed_lsn = self.last_written_lsn;
        self.ckpt_seq = seq;
        // The next checkpoint starts a new row (parity groups).
        let next = self
            .sh
            .vdevs
            .row_end(seg, u64::from(off) + bytes.len() as u64);
        self.ckpt_log = (seg, next as u32);
        if let Some(c) = counters {
            release
                .extents
                .extend(self.counters_ref.extents.iter().copied());
            self.counters_ref = c;
        }
        *self.sh.meta_roots.lock() = (self.counters_ref.extents.clone(), Some(seg));
        if !release.segments.is_empty() || !release.extents.is_empty() {
            // Readers that looked up the old state may still be reading.
            self.sh.gate.drained().await;
            let mut segs = self.sh.segs.lock();
            for s in release.segments {
                segs.release(s);
            }
            segs.release_meta_blocks(&release.extents);
        }
        self.sh.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Replay one batch found during recovery.
    pub(crate) fn replay_batch(
        &mut self,
        h: &BatchHeader,
        at: Paddr,
        valid: &[bool],
        crc: u32,
    ) -> Result<()> {
        let s = h.stream as usize;
        if let Some(st) = self.streams.get_mut(s) {
            st.seg = Some(h.segment);
            st.off = at.offset + h.total_len;
            st.next = Some(h.next_segment);
            st.prev_lsn = h.lsn;
            st.prev_crc = crc;
        }
        {
            let mut segs = self.sh.segs.lock();
            segs.claim(h.segment, SegState::Data);
            segs.claim(h.next_segment, SegState::Data);
            segs.note_write(h.segment, at.offset + h.total_len, h.lsn);
        }
        self.next_lsn = self.next_lsn.max(h.lsn + 1);
        self.last_written_lsn = self.last_written_lsn.max(h.lsn);
        self.log_since_replay += u64::from(h.total_len);
        for (e, ok) in h.entries.iter().zip(valid) {
            if *ok {
                self.apply_entry(e, at)?;
            }
        }
        Ok(())
    }
}

/// What a checkpoint makes reusable once it is durable.
#[derive(Default)]
struct Release {
    /// Whole segments (data segments, an old checkpoint-log segment).
    segments: Vec<SegId>,
    /// Metadata blocks (dropped runs, an old counters table).
    extents: Vec<MetaExtent>,
}

/// The log entry and stored payload of one record: `compressed` if the
/// caller compressed it (see `Compression::compress`), else raw; marked for encryption (the payload is sealed in place when
/// its batch is sealed, see [`Writer::seal_batch`]). Plain records carry a
/// crc32c per block, the others one crc32c of what is stored.
fn record_entry<'a>(
    kind: EntryKind,
    lineage: u32,
    lba: u64,
    birth: u64,
    payload: &'a [u8],
    compressed: Option<(u8, Vec<u8>)>,
    enc: u8,
) -> (LogEntry, std::borrow::Cow<'a, [u8]>) {
    let (ckind, stored) = match compressed {
        Some((k, z)) => (k, std::borrow::Cow::Owned(z)),
        None => (COMP_NONE, std::borrow::Cow::Borrowed(payload)),
    };
    let csums: Vec<u32> = if ckind == COMP_NONE && enc == ENC_NONE {
        payload.chunks(BLOCK).map(crc32c::crc32c).collect()
    } else if enc == ENC_NONE {
        vec![crc32c::crc32c(&stored)]
    } else {
        vec![0] // the ciphertext's crc, set when sealed
    };
    let e = LogEntry {
        kind,
        comp: ckind,
        flags: 0,
        nblocks: (payload.len() / BLOCK) as u32,
        lineage,
        lba,
        birth,
        payload_off: 0,
        stored_len: stored.len() as u32,
        csums,
        enc,
        seal: (enc != ENC_NONE).then_some([0u8; crate::crypt::SEAL_LEN]),
        reloc_from: None,
    };
    (e, stored)
}

/// Work for the writer.
enum Work {
    Data(DataOp),
    Maint(MaintOp),
}

async fn next_op(
    data: &async_channel::Receiver<DataOp>,
    maint: &async_channel::Receiver<MaintOp>,
) -> Option<Work> {
    use futures::future::{select, Either};
    let a = std::pin::pin!(data.recv());
    let b = std::pin::pin!(maint.recv());
    match select(a, b).await {
        Either::Left((Ok(d), _)) => Some(Work::Data(d)),
        Either::Right((Ok(m), _)) => Some(Work::Maint(m)),
        Either::Left((Err(_), other)) => other.await.ok().map(Work::Maint),
        Either::Right((Err(_), other)) => other.await.ok().map(Work::Data),
    }
}

fn fail(op: DataOp, e: Error) {
    match op {
        DataOp::Write { done, .. } | DataOp::Discard { done, .. } | DataOp::Flush { done } => {
            complete(done, Err(e))
        }
    }
}
