//! Client data ops: admission (catalog, range, key and space checks) and
//! turning writes and discards into log entries of the data stream, with
//! the volume's compression and encryption.
//!
//! Keeps invariant 5 (full is not fatal) by admitting a write only while
//! live data, batched data and the write fit the usable capacity — failing
//! it with ENOSPC otherwise, after any pending collection of destroyed
//! history had its chance — and invariant 7 (bad input gets a clear error)
//! by refusing out-of-range, read-only and key-less requests before
//! anything is batched.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::compress::Compression;
use crate::crypt::ENC_NONE;
use crate::error::{Error, ErrorKind, Result};
use crate::format::batch::{EntryKind, LogEntry, FLAG_ZERO_ALLOC};
use crate::layout::{chunk_start, BLOCK, BLOCK_U64, CHUNK_BLOCKS};

use super::batch::record_entry;
use super::{complete, fail, DataOp, DiscardMode, Job, Round, Writer, STREAM_DATA};

impl Writer {
    pub(super) fn run_job(&mut self, mut job: Job, round: &mut Round) {
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
                    let mut admitted = self.admit(vol, lba, nblocks, true);
                    if admitted
                        .as_ref()
                        .is_err_and(|e| e.kind() == ErrorKind::NoSpace)
                        && !self.sh.overlay.read().is_empty()
                    {
                        // Decide on settled numbers: pending overwrites
                        // still count the space they will free.
                        if let Err(e) = self.settle_all("no space") {
                            self.poison(&e);
                            return fail(job.op, e);
                        }
                        admitted = self.admit(vol, lba, nblocks, true);
                    }
                    if let Err(e) = admitted {
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
        crate::pool::usable_bytes(&self.sh)
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
    pub(super) fn storage_of(&mut self, vol: u64) -> (Compression, u8) {
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
}
