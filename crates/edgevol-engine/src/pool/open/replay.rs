//! Replay: walking each stream's chain of batches from the checkpoint's
//! replay point, applying them in lsn order through the writer's own state
//! machine, and making what was replayed durable.
//!
//! Keeps invariant 1 (acknowledged writes survive; after a crash a block
//! reads its last flushed value or a later one, never garbage) by
//! replaying every batch that continues a chain — trying every copy, so a
//! member that missed writes does not end it early — and skipping records
//! written after the last flush whose payloads fail their checksums (torn
//! writes, never acknowledged as durable); and invariant 2 (reads are
//! verified, redundancy heals) by rewriting every replayed batch on all
//! members of a redundant group.

use std::sync::Arc;

use crate::buf::AlignedBuf;
use crate::error::Result;
use crate::format::batch::BatchHeader;
use crate::layout::{Paddr, SegId, BLOCK, BLOCK_U64};
use crate::pool::ckpt::{Checkpoint, StreamPos};
use crate::pool::vdev::Vdevs;
use crate::pool::writer::{Writer, RECOVERY_LSN_SKIP};
use crate::pool::Shared;

/// A batch found while walking a stream.
struct Found {
    header: BatchHeader,
    at: Paddr,
    crc: u32,
}

/// Try to read a batch at `(seg, off)` that continues a chain.
fn read_batch(
    vdevs: &Vdevs,
    guid: u128,
    stream: u8,
    seg: SegId,
    off: u32,
    prev_lsn: u64,
    prev_crc: u32,
) -> Option<Found> {
    // The usual copy first; then each variant (one mirror side, or a
    // parity rebuild without one member): a member that missed writes
    // (stale, or torn before a flush) must not end the chain early.
    let variants = vdevs
        .groups
        .get(seg.group as usize)
        .map_or(0, |g| g.members.len());
    let redundant = vdevs
        .groups
        .get(seg.group as usize)
        .is_some_and(|g| g.geo.tolerance() > 0);
    let tries = std::iter::once(None).chain((0..if redundant { variants } else { 0 }).map(Some));
    for variant in tries {
        let read = |at: u64, buf: &mut [u8]| match variant {
            None => vdevs.read(seg, at, buf),
            Some(v) => vdevs.read_variant(seg, at, buf, v),
        };
        if let Some(f) = read_batch_with(vdevs, guid, stream, seg, off, prev_lsn, prev_crc, read) {
            return Some(f);
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn read_batch_with(
    vdevs: &Vdevs,
    guid: u128,
    stream: u8,
    seg: SegId,
    off: u32,
    prev_lsn: u64,
    prev_crc: u32,
    read: impl Fn(u64, &mut [u8]) -> Result<()>,
) -> Option<Found> {
    let seg_size = vdevs.segment_size;
    if u64::from(off) + BLOCK_U64 > seg_size {
        return None;
    }
    let mut first = AlignedBuf::zeroed(BLOCK);
    read(u64::from(off), first.as_mut_slice()).ok()?;
    let hlen = BatchHeader::peek_header_len(first.as_slice()).ok()?;
    let hbytes = hlen.div_ceil(BLOCK) * BLOCK;
    if u64::from(off) + hbytes as u64 > seg_size {
        return None;
    }
    let buf = if hbytes > BLOCK {
        let mut b = AlignedBuf::zeroed(hbytes);
        read(u64::from(off), b.as_mut_slice()).ok()?;
        b
    } else {
        first
    };
    let h = BatchHeader::decode(buf.as_slice()).ok()?;
    let chained = h.pool_guid == guid
        && h.stream == stream
        && h.segment == seg
        && h.prev_lsn == prev_lsn
        && h.prev_crc == prev_crc
        && h.lsn > prev_lsn
        && u64::from(off) + u64::from(h.total_len) <= seg_size;
    if !chained {
        return None;
    }
    let crc = BatchHeader::crc_of_encoded(buf.as_slice());
    Some(Found {
        header: h,
        at: Paddr::new(seg, off),
        crc,
    })
}

/// Walk one stream's chain from its replay position.
fn walk(vdevs: &Vdevs, guid: u128, stream: u8, pos: &StreamPos) -> Vec<Found> {
    let mut out = Vec::new();
    let Some(mut seg) = pos.seg else { return out };
    let mut off = pos.off;
    let mut next = pos.next;
    let (mut prev_lsn, mut prev_crc) = (pos.prev_lsn, pos.prev_crc);
    loop {
        let found = read_batch(vdevs, guid, stream, seg, off, prev_lsn, prev_crc).or_else(|| {
            let n = next?;
            read_batch(vdevs, guid, stream, n, 0, prev_lsn, prev_crc)
        });
        let Some(f) = found else { break };
        seg = f.header.segment;
        off = f.at.offset + f.header.total_len;
        next = Some(f.header.next_segment);
        prev_lsn = f.header.lsn;
        prev_crc = f.crc;
        out.push(f);
    }
    out
}

/// Which entries of a batch have intact payloads.
fn verify_payloads(vdevs: &Vdevs, f: &Found) -> Vec<bool> {
    let mut buf = AlignedBuf::zeroed(f.header.total_len as usize);
    if vdevs
        .read(f.at.seg, u64::from(f.at.offset), buf.as_mut_slice())
        .is_err()
    {
        return vec![false; f.header.entries.len()];
    }
    payloads_ok(&f.header, buf.as_slice())
}

/// Which entries of a batch in `b` (the whole batch) have intact payloads.
fn payloads_ok(h: &BatchHeader, b: &[u8]) -> Vec<bool> {
    h.entries
        .iter()
        .map(|e| {
            if e.stored_len == 0 {
                return true;
            }
            let s = e.payload_off as usize;
            let Some(p) = b.get(s..s + e.stored_len as usize) else {
                return false;
            };
            if e.is_plain() {
                p.chunks(BLOCK)
                    .zip(&e.csums)
                    .all(|(blk, c)| crc32c::crc32c(blk) == *c)
            } else {
                e.csums.first().is_some_and(|c| crc32c::crc32c(p) == *c)
            }
        })
        .collect()
}

/// Rewrite a replayed batch on every member of a redundant group: a crash
/// may have left it on some copies (or columns) only, and parity must
/// match what replay accepted before a device can fail.
fn resync(vdevs: &Vdevs, f: &Found, valid: &[bool]) -> Result<()> {
    let redundant = vdevs
        .groups
        .get(f.at.seg.group as usize)
        .is_some_and(|g| g.geo.tolerance() > 0);
    if !redundant {
        return Ok(());
    }
    let mut buf = AlignedBuf::zeroed(f.header.total_len as usize);
    let off = u64::from(f.at.offset);
    // A copy with this very header and every payload replay accepted.
    let ok = |b: &[u8]| {
        BatchHeader::decode(b).is_ok_and(|h| {
            BatchHeader::crc_of_encoded(b) == f.crc
                && payloads_ok(&h, b)
                    .iter()
                    .zip(valid)
                    .all(|(got, want)| *got || !*want)
        })
    };
    if let Err(e) = vdevs.read_checked(f.at.seg, off, buf.as_mut_slice(), &ok) {
        tracing::warn!(batch = f.header.lsn, error = %e, "cannot resync a replayed batch; scrub will");
        return Ok(());
    }
    vdevs.write(f.at.seg, off, buf.as_slice())
}

pub(super) fn replay(sh: &Arc<Shared>, w: &mut Writer, ck: &Checkpoint) -> Result<usize> {
    let mut all: Vec<Found> = Vec::new();
    for (i, pos) in ck.replay.streams.iter().enumerate() {
        all.extend(walk(&sh.vdevs, sh.guid, i as u8, pos));
    }
    all.retain(|f| f.header.lsn >= ck.replay.lsn);
    all.sort_by_key(|f| f.header.lsn);
    let flushed = all.iter().map(|f| f.header.flushed_lsn).max().unwrap_or(0);
    let n = all.len();
    for f in &all {
        let valid = if f.header.lsn <= flushed {
            vec![true; f.header.entries.len()]
        } else {
            verify_payloads(&sh.vdevs, f)
        };
        let skipped = valid.iter().filter(|v| !**v).count();
        if skipped > 0 {
            tracing::warn!(
                lsn = f.header.lsn,
                skipped,
                "skipping torn records written after the last flush"
            );
        }
        w.replay_batch(&f.header, f.at, &valid, f.crc)?;
        resync(&sh.vdevs, f, &valid)?;
    }
    Ok(n)
}

impl Writer {
    /// After replay: make what was replayed durable, then continue safely
    /// past any lsn a lost tail might have used.
    pub(crate) async fn finish_replay(&mut self, replayed: bool) -> Result<()> {
        self.sh.vdevs.flush_all()?;
        self.next_lsn += RECOVERY_LSN_SKIP;
        self.flushed_lsn = self.next_lsn - 1;
        *self.sh.catalog.write() = Arc::new(self.cat.clone());
        if replayed {
            // What was replayed is now in runs and the replay point moves past
            // it: a torn tail is never read again as if it had been flushed.
            self.flush_now().await?;
        }
        Ok(())
    }
}
