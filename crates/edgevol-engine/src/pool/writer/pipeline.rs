//! Rounds in flight: the device writes some rounds' batches while the
//! writer gathers and seals the next.
//!
//! Why: with every round waiting for its own device writes the writer sat
//! idle ~80% of the time at 4 KiB random writes 4×16 deep (about 2,000
//! rounds a second, each waiting ~0.4 ms for its writes) while the next
//! round's requests queued behind it. Now a round's writes are started
//! and the writer goes back to its queue; rounds are *landed* — their
//! batches applied in lsn order, the devices flushed if one asked for
//! durability, their ops acknowledged — oldest first, as their writes
//! complete, and the writer waits for the oldest only when
//! [`MAX_INFLIGHT`] rounds are in flight.
//!
//! Keeps invariant 1 (acknowledged writes survive): a round is
//! acknowledged only once its batches are written and applied, and after
//! every round before it; a FLUSH or FUA only after the devices were
//! flushed behind its own round, which lands after every earlier one.
//! Batches of different rounds may reach the device in any order, as the
//! batches of one round always could: replay stops at the first batch
//! missing from a stream, and nothing after it was acknowledged. The
//! cleaner's relocations ride in rounds like client writes (applied when
//! their round lands, in lsn order, as replay applies them). Every
//! other writer job (maintenance, control ops, memtable rotations,
//! barriers, shutdown) lands every round in flight first
//! ([`Writer::drain_inflight`]), so it sees a state in which everything
//! sealed is applied — as rotations need: their replay point is the
//! streams' sealing position.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::task::Poll;

use futures::future::LocalBoxFuture;

use crate::buf::AlignedBuf;
use crate::error::{Error, ErrorKind, Result};

use super::batch::Sealed;
use super::{complete, DataOp, MaintOp, Round, Work, Writer, STREAMS, UNFLUSHED_BATCHES_MAX};

/// Device writes of sealed batches, started.
pub(super) type Writes = LocalBoxFuture<'static, Vec<Result<AlignedBuf>>>;

/// Rounds whose writes may be in flight at once. One was not enough: at
/// 4 KiB random writes 4×16 deep the next round was gathered and sealed
/// long before the round before it was written (~0.35 ms a round), and
/// the writer still waited ~75% of the time; the device takes many
/// writes at once.
pub(super) const MAX_INFLIGHT: usize = 8;

/// The writes of the rounds in flight, oldest first (`None` where a
/// round's writes completed when they were started). Device futures
/// belong to the thread whose ring runs them, so they live in the
/// writer's loop (`Writer::run`), not in the [`Writer`], which moves to
/// that thread.
#[derive(Default)]
pub(super) struct Pipe {
    writes: VecDeque<Option<Writes>>,
}

/// A round whose writes were started and which is not landed yet.
pub(super) struct InFlight {
    sealed: Vec<Sealed>,
    /// The writes' results, once they completed.
    ready: Option<Vec<Result<AlignedBuf>>>,
    round: Round,
    /// Live bytes its writes add (counted in `pending_bytes` until landed).
    bytes: u64,
}

impl Writer {
    /// Seal every open batch and start writing every sealed batch.
    pub(super) fn launch(&mut self) -> Result<Option<(Vec<Sealed>, Writes)>> {
        for s in 0..STREAMS {
            if !self.batches[s].is_empty() {
                self.seal_batch(s)?;
            }
        }
        if self.sealed.is_empty() {
            return Ok(None);
        }
        let mut sealed = std::mem::take(&mut self.sealed);
        let writes: Vec<_> = sealed
            .iter_mut()
            .map(|b| {
                let buf = std::mem::replace(&mut b.buf, AlignedBuf::zeroed(0));
                let vdevs = self.sh.vdevs.clone();
                let (seg, off) = (b.at.seg, u64::from(b.at.offset));
                async move { vdevs.write_owned(seg, off, buf).await }
            })
            .collect();
        Ok(Some((sealed, Box::pin(futures::future::join_all(writes)))))
    }

    /// Apply written batches in lsn order; the first failure poisons the
    /// pool and the batches after it are not applied. Nothing is applied
    /// once the pool is poisoned: a later round's writes may have reached
    /// the device after an earlier round's failed, but replay stops at the
    /// gap, so the running pool must not show them either.
    pub(super) fn land(
        &mut self,
        sealed: Vec<Sealed>,
        results: Vec<Result<AlignedBuf>>,
    ) -> Result<()> {
        let mut first_err = self
            .poisoned
            .as_ref()
            .map(|p| Error::new(ErrorKind::Poisoned, p.clone()));
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
        match first_err {
            Some(e) => {
                self.poison(&e);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// End a round: start its writes, then land the rounds before it
    /// whose writes are done (in order), and wait for the oldest if
    /// [`MAX_INFLIGHT`] are in flight. A round with nothing to write (a
    /// lone FLUSH) lands at once, after every round before it.
    pub(super) async fn finish_round(&mut self, round: Round, pipe: &mut Pipe) {
        let launched = match self.launch() {
            Ok(l) => l,
            Err(e) => {
                self.poison(&e);
                None
            }
        };
        let before: u64 = self.inflight.iter().map(|f| f.bytes).sum();
        let bytes = self.pending_bytes.saturating_sub(before);
        let (sealed, writes) = match launched {
            Some((s, w)) => (s, Some(w)),
            None => (Vec::new(), None),
        };
        let mut f = InFlight {
            sealed,
            ready: None,
            round,
            bytes,
        };
        let Some(mut w) = writes else {
            self.drain_inflight(pipe).await;
            f.ready = Some(Vec::new());
            return self.land_round(f).await;
        };
        // Hand the writes to the ring now (a blocking device completes
        // them here).
        let w = match futures::poll!(&mut w) {
            Poll::Ready(r) => {
                f.ready = Some(r);
                None
            }
            Poll::Pending => Some(w),
        };
        self.inflight.push_back(f);
        pipe.writes.push_back(w);
        self.sh
            .stats
            .rounds_in_flight_max
            .fetch_max(self.inflight.len() as u64, Ordering::Relaxed);
        self.land_done(pipe).await;
        while self.inflight.len() > MAX_INFLIGHT {
            self.land_oldest(pipe).await;
        }
    }

    /// Land every round in flight, waiting for their writes.
    pub(super) async fn drain_inflight(&mut self, pipe: &mut Pipe) {
        while !self.inflight.is_empty() {
            self.land_oldest(pipe).await;
        }
    }

    /// Land the oldest round in flight, waiting for its writes.
    async fn land_oldest(&mut self, pipe: &mut Pipe) {
        let Some(mut f) = self.inflight.pop_front() else {
            return;
        };
        if let Some(Some(w)) = pipe.writes.pop_front() {
            if f.ready.is_none() {
                f.ready = Some(w.await);
            }
        }
        self.land_round(f).await;
    }

    /// Land the oldest rounds in flight whose writes are done.
    async fn land_done(&mut self, pipe: &mut Pipe) {
        loop {
            let done = match (self.inflight.front_mut(), pipe.writes.front_mut()) {
                (Some(f), Some(slot)) => {
                    if f.ready.is_none() {
                        if let Some(w) = slot.as_mut() {
                            if let Poll::Ready(r) = futures::poll!(w) {
                                f.ready = Some(r);
                                *slot = None;
                            }
                        }
                    }
                    f.ready.is_some()
                }
                _ => false,
            };
            if !done {
                return;
            }
            self.land_oldest(pipe).await;
        }
    }

    /// Apply a round whose writes completed, flush the devices if it asked
    /// for durability, and acknowledge its ops.
    async fn land_round(&mut self, f: InFlight) {
        let results = f.ready.unwrap_or_default();
        if !f.sealed.is_empty() {
            // A failure poisons the pool; the waiters learn it below.
            let _ = self.land(f.sealed, results);
        }
        self.pending_bytes = self.pending_bytes.saturating_sub(f.bytes);
        let mut sync_err = None;
        let overdue =
            self.last_written_lsn.saturating_sub(self.flushed_lsn) >= UNFLUSHED_BATCHES_MAX;
        if (f.round.sync || overdue) && self.poisoned.is_none() {
            if let Err(e) = self.sync_devices().await {
                sync_err = Some(e);
            }
        }
        for (done, needs_sync) in f.round.waiters {
            let r = match (&self.poisoned, needs_sync, &sync_err) {
                (Some(p), _, _) => Err(Error::new(ErrorKind::Poisoned, p.clone())),
                (None, true, Some(e)) => Err(e.duplicate()),
                _ => Ok(()),
            };
            complete(done, r);
        }
        for (done, n) in f.round.relocs {
            let r = match &self.poisoned {
                Some(p) => Err(Error::new(ErrorKind::Poisoned, p.clone())),
                None => Ok(n),
            };
            complete(done, r);
        }
    }

    /// The next op, landing the rounds in flight whose writes complete
    /// first, oldest first. None once both channels are closed.
    pub(super) async fn next_op_or_land(
        &mut self,
        data: &async_channel::Receiver<DataOp>,
        maint: &async_channel::Receiver<MaintOp>,
        pipe: &mut Pipe,
    ) -> Option<Work> {
        use futures::future::{select, Either};
        loop {
            self.land_done(pipe).await;
            let Some(Some(w)) = pipe.writes.front_mut() else {
                // Nothing in flight (land_done leaves no ready round).
                return super::next_op(data, maint).await;
            };
            let op = std::pin::pin!(super::next_op(data, maint));
            match select(op, w).await {
                Either::Left((op, _)) => return op,
                Either::Right((r, _)) => {
                    if let Some(slot) = pipe.writes.front_mut() {
                        *slot = None;
                    }
                    if let Some(f) = self.inflight.front_mut() {
                        f.ready = Some(r);
                    }
                }
            }
        }
    }
}
