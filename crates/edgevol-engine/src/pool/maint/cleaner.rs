//! The cleaner: choose victim segments (cost-benefit over their live
//! bytes and age) and relocate every live fragment out of them through
//! the writer, re-storing partly dead packed records and healing bad
//! copies on the way. Keeps invariant 2 (a bad copy is re-read from
//! redundancy; a mismatch is counted and logged, never hidden) and
//! invariant 5 (dead space comes back so a full pool can go on).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::runs::flush_memtable;
use super::send;
use crate::buf::AlignedBuf;
use crate::error::Result;
use crate::format::batch::{BatchHeader, EntryKind, LogEntry};
use crate::layout::{chunk_start, Paddr, SegId, BLOCK, CHUNK_BLOCKS};
use crate::map::{DataRef, Key};
use crate::pool::space::SegState;
use crate::pool::writer::{MaintOp, RelocItem, RelocKind};
use crate::pool::Shared;

/// The most-live segment worth cleaning: relocating it must gain clearly
/// more than its batch headers cost.
pub(super) const MAX_VICTIM_UTIL: f64 = 0.97;

/// Bytes the cleaner could reclaim: dead space in sealed data segments.
pub(super) fn reclaimable_bytes(sh: &Shared) -> u64 {
    let seg = sh.vdevs.segment_size;
    let segs = sh.segs.lock();
    segs.iter()
        .filter(|(id, s)| s.state == SegState::Data && s.written > 0 && !segs.is_open(*id))
        .map(|(_, s)| seg.saturating_sub(s.live))
        .sum()
}

/// Clean up to `max` segments whose utilisation is below `max_util`.
pub(crate) fn clean(sh: &Shared, max: usize, max_util: f64) -> Result<u64> {
    let _g = sh.maint_lock.lock();
    // Victims are chosen by live counts, which pending overwrites inflate:
    // settle first, so the choice does not depend on how far the settler
    // thread got (power-cut campaigns replay the same device operations).
    super::settle(sh)?;
    let n = clean_locked(sh, max, max_util.min(MAX_VICTIM_UTIL))?;
    flush_memtable(sh)?;
    Ok(n)
}

pub(super) fn clean_locked(sh: &Shared, max: usize, max_util: f64) -> Result<u64> {
    let seg_size = sh.vdevs.segment_size as f64;
    let victims: Vec<SegId> = {
        let segs = sh.segs.lock();
        let newest = segs.iter().map(|(_, s)| s.max_lsn).max().unwrap_or(0);
        let mut c: Vec<(f64, SegId)> = segs
            .iter()
            .filter(|(id, s)| s.state == SegState::Data && s.written > 0 && !segs.is_open(*id))
            .filter_map(|(id, s)| {
                let u = s.live as f64 / seg_size;
                if u >= max_util {
                    return None;
                }
                let age = (newest - s.max_lsn + 1) as f64;
                Some(((1.0 - u) * age / (1.0 + u), id))
            })
            .collect();
        c.sort_by(|a, b| b.0.total_cmp(&a.0));
        c.into_iter().take(max).map(|(_, id)| id).collect()
    };
    let mut cleaned = 0;
    for v in victims {
        clean_segment(sh, v)?;
        cleaned += 1;
        sh.stats.cleaned_segments.fetch_add(1, Ordering::Relaxed);
    }
    Ok(cleaned)
}

/// Bytes `[at, at + len)` of `seg` failed their check in the cleaner's
/// segment read: read them again from a copy or parity rebuild that passes
/// `ok` (the bad copy is healed on the way). None without such a copy.
fn reread(
    sh: &Shared,
    seg: SegId,
    at: usize,
    len: usize,
    ok: &(dyn Fn(&[u8]) -> bool + Sync),
) -> Option<Vec<u8>> {
    let start = at & !(BLOCK - 1);
    let end = (at + len).next_multiple_of(BLOCK);
    let lo = at - start;
    let mut b = AlignedBuf::zeroed(end - start);
    let check = |x: &[u8]| x.get(lo..lo + len).is_some_and(ok);
    sh.vdevs
        .read_checked(seg, start as u64, b.as_mut_slice(), &check)
        .ok()?;
    Some(b.as_slice()[lo..lo + len].to_vec())
}

/// Move every live fragment out of `seg`.
fn clean_segment(sh: &Shared, seg: SegId) -> Result<()> {
    let written = match sh.segs.lock().get(seg) {
        Some(s) if s.state == SegState::Data => s.written as usize,
        _ => return Ok(()),
    };
    let t0 = Instant::now();
    let (mut t_scan, mut t_send) = (Duration::ZERO, Duration::ZERO);
    let buf = sh.vdevs.read_buf(seg, 0, written.div_ceil(BLOCK) * BLOCK)?;
    let t_read = t0.elapsed();
    let b = buf.as_slice();
    // Records the settler or the collector saw lose their last entry
    // (`gone.rs`): no lookup needed to know they are dead.
    let dead = sh.segs.lock().gone(seg);
    let mut skipped = 0u32;
    let mut off = 0usize;
    let mut items: Vec<RelocItem> = Vec::new();
    let mut pending = 0usize;
    while off + BLOCK <= written {
        let Ok(h) = BatchHeader::decode(&b[off..]) else {
            break;
        };
        if h.segment != seg || h.pool_guid != sh.guid {
            break;
        }
        for e in &h.entries {
            if !matches!(
                e.kind,
                EntryKind::Write | EntryKind::Relocate | EntryKind::Copy | EntryKind::Move
            ) {
                continue;
            }
            let rec = Paddr::new(seg, (off as u32) + e.payload_off);
            if e.is_plain() && dead.as_ref().is_some_and(|d| d.is_dead(rec.offset)) {
                skipped += 1;
                continue;
            }
            let c = chunk_start(e.lba);
            let ts = Instant::now();
            let entries = sh
                .scan(
                    Key::lower(e.lineage, c),
                    Key::lower(e.lineage, c + CHUNK_BLOCKS),
                    usize::MAX,
                )?
                .entries;
            t_scan += ts.elapsed();
            if !e.is_plain() {
                let s = off + e.payload_off as usize;
                let Some(data) = b.get(s..s + e.stored_len as usize) else {
                    continue;
                };
                let frags: Vec<(Key, DataRef)> = entries
                    .iter()
                    .filter_map(|(k, v)| {
                        v.data().filter(|d| d.paddr == rec).map(|d| (*k, d.clone()))
                    })
                    .collect();
                let live: u64 = frags.iter().map(|(_, d)| u64::from(d.nblocks)).sum();
                if live == 0 {
                    continue;
                }
                // A bad copy is replaced by a good one (healed) if there is one.
                let want = e.csums.first().copied();
                let good = |x: &[u8]| Some(crc32c::crc32c(x)) == want;
                let healed;
                let data = if good(data) {
                    data
                } else if let Some(h) = reread(sh, seg, s, data.len(), &good) {
                    healed = h;
                    &healed[..]
                } else {
                    data
                };
                // Partly dead: re-store only the live blocks (decompressed,
                // then compressed and encrypted anew), so the dead part
                // comes back. That needs the key of an encrypted record,
                // and intact bytes.
                if live < u64::from(e.nblocks) && good(data) {
                    if let Some(mut restored) = restore_fragments(sh, e, rec, data, &frags) {
                        pending += restored.iter().map(|it| it.data.len()).sum::<usize>();
                        items.append(&mut restored);
                        continue;
                    }
                }
                // Whole (or locked): the record moves as stored, no key needed.
                if e.csums.first() != Some(&crc32c::crc32c(data)) {
                    sh.vdevs.note_checksum_error(seg);
                    sh.stats.checksum_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(pool = %sh.name, segment = ?seg, "cleaner found a checksum mismatch; moving the record as is");
                }
                pending += data.len();
                items.push(RelocItem {
                    key: Key::new(e.lineage, e.lba, e.birth),
                    old: rec,
                    old_rec_off: 0,
                    nblocks: e.nblocks as u8,
                    comp: e.comp,
                    enc: e.enc,
                    seal: e.seal,
                    kind: RelocKind::Whole,
                    data: Bytes::copy_from_slice(data),
                    csums: e.csums.clone(),
                });
            }
            for (k, v) in entries.into_iter().filter(|_| e.is_plain()) {
                let Some(d) = v.data() else { continue };
                if d.paddr != rec {
                    continue;
                }
                let s = off + e.payload_off as usize + usize::from(d.rec_off) * BLOCK;
                let len = usize::from(d.nblocks) * BLOCK;
                let Some(data) = b.get(s..s + len) else {
                    continue;
                };
                let good = |x: &[u8]| crate::pool::volume::blocks_match(x, &d.csums);
                let healed;
                let data = if good(data) {
                    data
                } else if let Some(h) = reread(sh, seg, s, len, &good) {
                    healed = h;
                    &healed[..]
                } else {
                    sh.vdevs.note_checksum_error(seg);
                    sh.stats.checksum_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(pool = %sh.name, segment = ?seg, "cleaner found a checksum mismatch; moving the record as is");
                    data
                };
                pending += len;
                items.push(RelocItem {
                    key: k,
                    old: rec,
                    old_rec_off: d.rec_off,
                    nblocks: d.nblocks,
                    comp: d.comp,
                    enc: d.enc,
                    seal: None,
                    kind: RelocKind::Fragment,
                    data: Bytes::copy_from_slice(data),
                    csums: d.csums.to_vec(),
                });
            }
            if pending >= 1 << 20 {
                let batch = std::mem::take(&mut items);
                pending = 0;
                let ts = Instant::now();
                send(sh, |d| MaintOp::Relocate(batch, d))?;
                t_send += ts.elapsed();
            }
        }
        off += h.total_len as usize;
    }
    if !items.is_empty() {
        let ts = Instant::now();
        send(sh, |d| MaintOp::Relocate(items, d))?;
        t_send += ts.elapsed();
    }
    sh.stats
        .cleaner_skipped_dead
        .fetch_add(u64::from(skipped), Ordering::Relaxed);
    // Where a victim's time goes: at a 90% full pool (8 MiB segments,
    // ~1/3 live) ~20 ms, half the read, half the writer's relocation;
    // the map scans ~0.5 ms.
    tracing::debug!(
        pool = %sh.name, segment = ?seg,
        total_us = t0.elapsed().as_micros() as u64,
        read_us = t_read.as_micros() as u64,
        scan_us = t_scan.as_micros() as u64,
        relocate_us = t_send.as_micros() as u64,
        skipped,
        "cleaned a segment"
    );
    Ok(())
}

/// The live fragments of a partly dead packed record, opened (checked,
/// decrypted, decompressed) for the writer to store anew. None if the
/// record cannot be opened here (its key is not loaded, or it is damaged):
/// it then moves whole.
fn restore_fragments(
    sh: &Shared,
    e: &LogEntry,
    rec: Paddr,
    stored: &[u8],
    frags: &[(Key, DataRef)],
) -> Option<Vec<RelocItem>> {
    let (_, d0) = frags.first()?;
    let key = match d0.enc {
        crate::crypt::ENC_NONE => None,
        _ => Some(crate::pool::volume::lineage_key(sh, e.lineage).ok()?),
    };
    let mut buf = stored.to_vec();
    let plain = match crate::pool::volume::open_record(
        sh,
        e.lineage,
        e.lba,
        e.birth,
        d0,
        key.as_deref(),
        &mut buf,
    ) {
        Ok(Some(p)) => p,
        Ok(None) => buf,
        Err(err) => {
            tracing::warn!(pool = %sh.name, record = ?rec, error = %err, "cleaner cannot open a record; moving it as stored");
            return None;
        }
    };
    frags
        .iter()
        .map(|(k, d)| {
            let from = usize::from(d.rec_off) * BLOCK;
            let data = plain.get(from..from + usize::from(d.nblocks) * BLOCK)?;
            Some(RelocItem {
                key: *k,
                old: rec,
                old_rec_off: d.rec_off,
                nblocks: d.nblocks,
                comp: d.comp,
                enc: d.enc,
                seal: None,
                kind: RelocKind::Restore,
                data: Bytes::copy_from_slice(data),
                csums: Vec::new(),
            })
        })
        .collect()
}
