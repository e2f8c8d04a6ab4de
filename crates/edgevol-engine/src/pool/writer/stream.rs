//! The writer's log streams (client data, cleaner): filling a stream's
//! batch, sealing it at its place in the stream's segment (final header,
//! lsn, records encrypted in place), writing sealed batches to the devices
//! and flushing them, and the segments the streams write to.
//!
//! Keeps invariant 1 (acknowledged writes survive) by chaining every batch
//! header to its predecessor (lsn, crc, next segment) so recovery finds
//! every batch written, and by writing whole rows so no row holding live
//! data is written twice; invariant 2 (every read is verified) by storing
//! the crc32c of each sealed record's ciphertext; invariant 5 (full is not
//! fatal) by keeping client data out of the segments reserved for the
//! cleaner and metadata.

use std::sync::atomic::Ordering;

use crate::crypt::{RecordPlace, ENC_NONE};
use crate::error::{Error, ErrorKind, Result};
use crate::format::batch::{BatchHeader, EntryKind, LogEntry};
use crate::layout::{Paddr, SegId, BLOCK, BLOCK_U64, CHUNK_BLOCKS};
use crate::pool::space::SegState;

use super::batch::{Batch, Sealed};
use super::{Writer, STREAM_DATA};

impl Writer {
    /// The most bytes stream `s`'s batch may hold: what is left of its
    /// segment, and at most the configured batch size (but always room for
    /// a full-chunk record).
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
    pub(super) fn fit_blocks(&mut self, s: usize, want: u64) -> Result<Option<u64>> {
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

    /// Add an entry to a stream's batch, writing out and switching segments
    /// as needed. Ok(false) if the stream has no segment to continue in.
    pub(super) fn push_entry(
        &mut self,
        s: usize,
        e: LogEntry,
        payload: Option<&[u8]>,
    ) -> Result<bool> {
        let elen = e.encoded_len();
        let plen = payload.map_or(0, <[u8]>::len);
        let plain = e.is_plain();
        loop {
            if !self.ensure_stream(s) {
                return Ok(false);
            }
            let cap = self.batch_cap(s);
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

    pub(super) fn refill_next(&mut self, s: usize) {
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
            crate::pool::data_reserve(&self.sh)
        } else {
            crate::pool::meta_floor(&self.sh)
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
    pub(super) fn seal_batch(&mut self, s: usize) -> Result<()> {
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

    /// Seal every open batch, write every sealed batch (all at once), and
    /// apply their entries in lsn order. On failure the pool is poisoned.
    pub(super) async fn write_all_batches(&mut self) {
        if let Err(e) = self.flush_sealed().await {
            self.poison(&e);
        }
    }

    /// Seal, write and apply everything batched, waiting for it: what
    /// maintenance and control ops need before they look at the state.
    /// The writer's loop lands the round in flight before any of them
    /// runs (`pipeline.rs`).
    pub(super) async fn flush_sealed(&mut self) -> Result<()> {
        debug_assert!(self.inflight.is_empty(), "a round is still in flight");
        let Some((sealed, writes)) = self.launch()? else {
            return Ok(());
        };
        let results = writes.await;
        let r = self.land(sealed, results);
        self.pending_bytes = 0;
        r
    }

    pub(super) async fn sync_devices(&mut self) -> Result<()> {
        let r = self.sh.vdevs.flush_all_async().await;
        match &r {
            Ok(()) => self.flushed_lsn = self.last_written_lsn,
            Err(e) => self.poison(e),
        }
        self.sh.stats.flushes.fetch_add(1, Ordering::Relaxed);
        r
    }
}
