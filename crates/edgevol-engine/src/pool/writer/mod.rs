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
//!
//! This module holds the [`Writer`] itself and its round; the jobs live in
//! [`ops`] (what it is asked), [`client`] (admitting and batching client
//! ops), [`batch`] (a batch and its records), [`stream`] (filling, sealing
//! and writing the streams' batches), [`pipeline`] (a round's writes in
//! flight while the next gathers), [`apply`] (the state machine shared
//! with replay), [`settle`] (settling blind head writes from the overlay),
//! [`control`] (catalog changes and maintenance ops) and [`flush`] (map
//! flushes, compaction, checkpoints).
//!
//! Keeps invariant 1 (acknowledged writes survive) by acknowledging a
//! round's ops only after its batches are written and applied, and a flush
//! or FUA op only after the devices were flushed; invariant 6 (memory
//! budget) by making client ops wait while the map's maintenance is behind
//! (`map_backlogged`); invariant 7 (bad input and failures are contained)
//! by poisoning the pool on an I/O failure: every later mutation gets a
//! clear error instead of building on a state the devices may not hold.

mod apply;
mod batch;
mod client;
mod control;
mod flush;
mod ops;
mod pipeline;
mod settle;
mod stream;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::buf::AlignedBuf;
use crate::catalog::Catalog;
use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::layout::SegId;

use super::ckpt::{BlobRef, ReplayPoint, StreamPos};
use super::{now_secs, Shared};
use batch::{Batch, Sealed};
use flush::Rotation;

pub(crate) use ops::{Control, DataOp, DiscardMode, Done, MaintOp, RelocItem, RelocKind};

/// L0 runs at which client writes wait for compaction.
const L0_STOP: usize = 12;

/// The writer flushes the devices at least once per this many batches, even
/// if no client asks: a power cut can then lose at most this many batches
/// (plus one round's) past the last one recovery finds, fewer than the
/// 2^20 lsns recovery skips — so an lsn, and with it an encryption nonce,
/// is never used twice (see crypt.rs).
const UNFLUSHED_BATCHES_MAX: u64 = 1 << 16;

/// Lsns recovery skips past the last batch it found.
pub(crate) const RECOVERY_LSN_SKIP: u64 = 1 << 20;
const _: () = assert!(UNFLUSHED_BATCHES_MAX * 4 <= RECOVERY_LSN_SKIP);

/// Stream numbers.
pub(crate) const STREAM_DATA: usize = 0;
pub(crate) const STREAM_CLEANER: usize = 1;
pub(crate) const STREAMS: usize = 2;

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
    /// The cleaner's relocations batched in this round, and how many
    /// items each had.
    relocs: Vec<(Done<u64>, u64)>,
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
    /// The rounds whose writes are in flight, oldest first (`pipeline.rs`).
    inflight: VecDeque<pipeline::InFlight>,
    /// Batch buffers to reuse.
    spare: Vec<AlignedBuf>,
    /// The writer's own settlement position (`settler.rs`).
    settler: super::settler::Settler,
    /// A memtable rotation waiting for the overlay to be settled.
    rotate_waiter: Option<Done<Option<Arc<crate::map::Memtable>>>>,
    /// Barriers (`MaintOp::FlushNow`) waiting for the overlay to be settled.
    flush_waiters: Vec<Done<()>>,
    /// Since when, and why, client ops are not taken (logged at debug
    /// level when it lasted 10 ms or more).
    paused: Option<(std::time::Instant, &'static str)>,
}

fn complete<T>(done: Done<T>, r: Result<T>) {
    // The receiver may have gone away (client disconnected): nothing to do.
    let _ = done.send(r);
}

impl Writer {
    /// A writer over loaded state (see `pool/open/`: create and import).
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
    ) -> Writer {
        // The segment table is what the checkpoint references: settled.
        super::capacity::settle_metadata(&sh);
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
            inflight: VecDeque::new(),
            spare: Vec::new(),
            settler: Default::default(),
            rotate_waiter: None,
            flush_waiters: Vec::new(),
            paused: None,
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
        *self.sh.writer_thread.lock() = Some(std::thread::current().id());
        let mut pipe = pipeline::Pipe::default();
        loop {
            if self.rotate_waiter.is_some() || !self.flush_waiters.is_empty() {
                // A rotation's replay point is the streams' sealing
                // position: everything sealed must be applied first.
                self.drain_inflight(&mut pipe).await;
            }
            if self.rotate_waiter.is_some() && !self.can_take_data() {
                // Maintenance waits for this rotation: no round may wait
                // for maintenance before it is done.
                if let Some(done) = self.rotate_waiter.take() {
                    complete(done, Ok(self.rotate()));
                }
            }
            if !self.flush_waiters.is_empty() && !self.can_take_data() {
                self.flush_for_waiters().await;
            }
            self.advance_rotation();
            self.advance_flush().await;
            // Idle without a settler thread, or with a rotation or barrier
            // waiting: settle pending blind writes a step at a time, giving
            // the thread back between steps (a reactor's other tasks).
            // Otherwise the reactor's thread is left to the transports
            // (settler.rs).
            let waiting = self.rotate_waiter.is_some() || !self.flush_waiters.is_empty();
            if (!self.sh.cfg.settler_thread || waiting)
                && self.inflight.is_empty()
                && data_rx.is_empty()
                && maint_rx.is_empty()
                && self.stalled.is_empty()
                && self.poisoned.is_none()
                && !self.sh.overlay.read().is_empty()
            {
                if let Err(e) = self.settle_some(settle::IDLE_STEP) {
                    self.poison(&e);
                }
                YieldNow(false).await;
                continue;
            }
            let mut round = Round::default();
            // Wait for something to do.
            let first = if self.can_take_data() && !self.stalled.is_empty() {
                None
            } else if self.can_take_data() {
                match self.next_op_or_land(&data_rx, &maint_rx, &mut pipe).await {
                    Some(w) => Some(w),
                    None => {
                        // Both channels closed.
                        self.drain_inflight(&mut pipe).await;
                        return;
                    }
                }
            } else {
                self.drain_inflight(&mut pipe).await;
                match maint_rx.recv().await {
                    Ok(m) => Some(Work::Maint(m)),
                    Err(_) => return,
                }
            };
            let mut exit = false;
            if let Some(w) = first {
                exit |= self.handle(w, &mut round, &mut pipe).await;
            }
            // Take whatever else is ready, maintenance first.
            let mut budget = 4096usize;
            while budget > 0 && !exit {
                budget -= 1;
                if let Ok(m) = maint_rx.try_recv() {
                    exit |= self.handle(Work::Maint(m), &mut round, &mut pipe).await;
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
                    Ok(d) => exit |= self.handle(Work::Data(d), &mut round, &mut pipe).await,
                    Err(_) => break,
                }
            }
            self.finish_round(round, &mut pipe).await;
            if let Err(e) = self.settle_background() {
                self.poison(&e);
            }
            if self.rotate_waiter.is_some() || !self.flush_waiters.is_empty() {
                self.drain_inflight(&mut pipe).await;
            }
            self.advance_rotation();
            self.advance_flush().await;
            if self.sh.map.active_bytes() >= self.sh.memtable_budget {
                self.sh.wake_maintenance();
            }
            // Waiting for a free segment (not for map maintenance).
            let blocked = !self.stalled.is_empty() && {
                self.refill_next(STREAM_DATA);
                self.streams[STREAM_DATA].next.is_none()
            };
            if blocked && !self.sh.overlay.read().is_empty() {
                // Waiting for a free segment: the cleaner chooses victims
                // by live counts, which pending overwrites inflate.
                if let Err(e) = self.settle_all("waiting for a segment") {
                    self.poison(&e);
                }
                self.sh.wake_maintenance();
            }
            self.sh.space_blocked.store(blocked, Ordering::Relaxed);
            if exit {
                self.drain_inflight(&mut pipe).await;
                return;
            }
        }
    }

    fn can_take_data(&mut self) -> bool {
        let why = self.why_paused();
        match (why, self.paused) {
            (Some(w), None) => self.paused = Some((std::time::Instant::now(), w)),
            (None, Some((t, w))) => {
                self.paused = None;
                let micros = t.elapsed().as_micros() as u64;
                if micros >= 10_000 {
                    tracing::debug!(pool = %self.sh.name, micros, why = w, "client writes waited");
                }
            }
            _ => {}
        }
        why.is_none()
    }

    /// Why client ops cannot be taken now, if they cannot.
    fn why_paused(&mut self) -> Option<&'static str> {
        if let Some(why) = self.map_backlogged() {
            return Some(why);
        }
        if self.stalled.is_empty() {
            return None;
        }
        // A stalled job waits for a segment; retry when one may be free.
        self.refill_next(STREAM_DATA);
        self.streams[STREAM_DATA]
            .next
            .is_none()
            .then_some("no free segment")
    }

    /// The map's maintenance is behind: the active memtable passed twice
    /// its budget (its flush is late) or L0 holds too many runs (every
    /// lookup reads each of them). Client ops then wait for maintenance,
    /// which bounds both memory and lookup cost.
    fn map_backlogged(&self) -> Option<&'static str> {
        if !self.sh.cfg.background {
            return None; // maintenance is driven by hand (tests)
        }
        let why = if self.sh.map.active_bytes() > 2 * self.sh.memtable_budget {
            Some("memtable over twice its budget")
        } else if self.sh.map.levels().l0.len() >= L0_STOP {
            Some("too many L0 runs")
        } else {
            None
        };
        if why.is_some() {
            self.sh.wake_maintenance();
        }
        why
    }

    /// Handle one op. Returns true on shutdown.
    async fn handle(&mut self, w: Work, round: &mut Round, pipe: &mut pipeline::Pipe) -> bool {
        match w {
            Work::Data(op) => {
                self.run_job(Job { op, progress: 0 }, round);
                false
            }
            Work::Maint(MaintOp::Relocate(items, done)) => {
                // Relocations ride in the round like client writes: the
                // writer does not wait for their device writes (at a
                // nearly full pool it did, for up to 137 ms a batch).
                match self.push_relocations(items) {
                    Ok(n) => round.relocs.push((done, n)),
                    Err(e) => complete(done, Err(e)),
                }
                false
            }
            Work::Maint(m) => {
                // Everything batched so far is written and applied first, so
                // maintenance and control ops see all earlier writes.
                self.drain_inflight(pipe).await;
                self.write_all_batches().await;
                let (t, name) = (std::time::Instant::now(), m.name());
                let exit = self.maint(m, round).await;
                let micros = t.elapsed().as_micros() as u64;
                if micros >= 10_000 {
                    tracing::debug!(pool = %self.sh.name, micros, op = name, "a maintenance op held the writer");
                }
                // Maintenance may have freed space.
                for job in std::mem::take(&mut self.space_waiters) {
                    self.run_job(job, round);
                }
                exit
            }
        }
    }

    /// Stop taking writes (the whole pool: `Vdevs::poison`).
    fn poison(&mut self, e: &Error) {
        if self.poisoned.is_none() {
            self.poisoned = Some(self.sh.vdevs.poison(e));
        }
    }

    /// Make `self.cat` the catalog readers see (and drop cached views).
    fn publish(&mut self) {
        self.cat_gen += 1;
        *self.sh.catalog.write() = Arc::new(self.cat.clone());
    }
}

/// Gives the executor one turn (tokio's `yield_now` without tokio: the
/// engine runs on any executor).
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
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
