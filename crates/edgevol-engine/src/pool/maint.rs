//! Background maintenance: memtable flushes, compaction, garbage collection
//! of destroyed history, the cleaner, and flatten (promote).
//!
//! Everything here reads freely but changes state only by sending ops to
//! the writer, so it can never race with client writes. Long work is cut
//! into bounded ops so client latency stays flat.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::ckpt;
use super::space::SegState;
use super::writer::{Control, MaintOp, RelocItem};
use super::Shared;
use crate::buf::AlignedBuf;
use crate::chunk::{self, PieceKind};
use crate::error::{Error, ErrorKind, Result};
use crate::format::batch::{BatchHeader, EntryKind};
use crate::layout::{chunk_start, Paddr, SegId, BLOCK, BLOCK_U64, CHUNK_BLOCKS};
use crate::map::run::{Run, RunBuilder, RunMeta};
use crate::map::{Key, Levels, Value};

/// What maintenance has been doing (for status).
#[derive(Debug, Default, Clone)]
pub struct MaintStatus {
    /// The last error, if the last step failed.
    pub last_error: Option<String>,
    /// Lineages already collected, with the views they were collected for.
    gc_done: BTreeMap<u32, Vec<u64>>,
    /// Log bytes written at the last memtable flush.
    flushed_at_bytes: u64,
}

fn send<T>(sh: &Shared, make: impl FnOnce(super::writer::Done<T>) -> MaintOp) -> Result<T> {
    let (tx, rx) = futures::channel::oneshot::channel();
    sh.maint_tx
        .send_blocking(make(tx))
        .map_err(|_| Error::new(ErrorKind::Shutdown, "pool is closing"))?;
    futures::executor::block_on(rx)
        .map_err(|_| Error::new(ErrorKind::Shutdown, "pool is closing"))?
}

/// The maintenance thread.
pub(crate) fn run(sh: Arc<Shared>) {
    let mut last_flush = Instant::now();
    loop {
        {
            let (m, cv) = &sh.maint_wake;
            let mut woken = m.lock();
            if !*woken {
                cv.wait_for(&mut woken, Duration::from_millis(500));
            }
            *woken = false;
        }
        if sh.closing.load(Ordering::SeqCst) {
            return;
        }
        if sh.poisoned.lock().is_some() {
            continue;
        }
        let r = step(&sh, &mut last_flush);
        let mut st = sh.maint_status.lock();
        match r {
            Ok(()) => st.last_error = None,
            Err(e) if e.kind() == ErrorKind::Shutdown => return,
            Err(e) => {
                tracing::warn!(pool = %sh.name, error = %e, "maintenance step failed");
                st.last_error = Some(e.to_string());
            }
        }
    }
}

fn step(sh: &Arc<Shared>, last_flush: &mut Instant) -> Result<()> {
    let _g = sh.maint_lock.lock();
    let blocked = sh.space_blocked.load(Ordering::Relaxed);
    let (free, total) = {
        let s = sh.segs.lock();
        (s.free_count(), sh.vdevs.total_segments())
    };
    let low = (total / 10).max(sh.reserve_segments * 2);
    if blocked || free < low {
        let high = (total / 5).max(low + 2);
        let mut rounds = 0;
        while rounds < 8 {
            rounds += 1;
            let cleaned = clean_locked(sh, 4, 0.95)?;
            flush_memtable(sh)?;
            let free = sh.segs.lock().free_count();
            if cleaned == 0 || free >= high {
                break;
            }
        }
    }
    let written = sh.stats.bytes_written.load(Ordering::Relaxed);
    let since = written - sh.maint_status.lock().flushed_at_bytes;
    let mem = sh.map.active_bytes();
    let due = mem >= sh.cfg.memtable_bytes
        || since >= sh.cfg.replay_budget
        || (sh.map.active_len() > 0 && last_flush.elapsed() >= sh.cfg.flush_interval);
    if due && flush_memtable(sh)? {
        *last_flush = Instant::now();
    }
    compact(sh)?;
    gc_pending(sh)?;
    Ok(())
}

/// Flush the memtable, run pending GC; with `full`, until nothing is pending.
pub(crate) fn run_all(sh: &Arc<Shared>, full: bool) -> Result<()> {
    let _g = sh.maint_lock.lock();
    if full {
        for _ in 0..4 {
            gc_pending(sh)?;
            flush_memtable(sh)?;
            let cat = sh.catalog();
            if cat.gc_todo.is_empty() && cat.purge_todo.is_empty() {
                break;
            }
        }
        compact(sh)?;
    }
    flush_memtable(sh)?;
    Ok(())
}

// ----------------------------------------------------------------------
// Runs

/// Where a run's metadata segments come from.
pub(crate) trait MetaAlloc {
    /// One more free segment, now owned by the run being built.
    fn alloc(&mut self) -> Result<SegId>;
    /// Give back segments of a run that could not be built.
    fn release(&mut self, segs: Vec<SegId>);
}

/// Allocation through the writer (from maintenance).
struct ViaWriter<'a> {
    sh: &'a Shared,
    first: Option<SegId>,
}

impl MetaAlloc for ViaWriter<'_> {
    fn alloc(&mut self) -> Result<SegId> {
        if let Some(s) = self.first.take() {
            return Ok(s);
        }
        let (segs, _) = send(self.sh, |d| MaintOp::AllocMeta(1, d))?;
        segs.first()
            .copied()
            .ok_or_else(|| Error::new(ErrorKind::NoSpace, "no free segment for a map run"))
    }

    fn release(&mut self, segs: Vec<SegId>) {
        let _ = self.sh.maint_tx.send_blocking(MaintOp::ReleaseMeta(segs));
    }
}

/// Build run `id` from sorted entries into segments from `alloc`.
pub(crate) fn build_run_with(
    sh: &Shared,
    id: u64,
    alloc: &mut dyn MetaAlloc,
    entries: impl Iterator<Item = Result<(Key, Option<Value>)>>,
) -> Result<Arc<Run>> {
    let seg_size = sh.vdevs.segment_size;
    let mut segments: Vec<SegId> = Vec::new();
    let mut pos = seg_size;
    let r = (|| {
        let mut write = |mut bytes: &[u8], segments: &mut Vec<SegId>| -> Result<()> {
            while !bytes.is_empty() {
                if pos == seg_size {
                    segments.push(alloc.alloc()?);
                    pos = 0;
                }
                let seg = *segments
                    .last()
                    .ok_or_else(|| Error::corrupt("run without segments"))?;
                let n = ((seg_size - pos) as usize).min(bytes.len());
                ckpt::write_aligned(&sh.vdevs, seg, pos, &bytes[..n])?;
                pos += n as u64;
                bytes = &bytes[n..];
            }
            Ok(())
        };
        let mut b = RunBuilder::new(id);
        for e in entries {
            let (k, v) = e?;
            b.push(k, &v);
            if b.ready_len() >= 1 << 20 {
                let bytes = b.take_ready();
                write(&bytes, &mut segments)?;
            }
        }
        let n = b.entries();
        let ready = b.take_ready();
        write(&ready, &mut segments)?;
        let (rest, leaves, index) = b.finish();
        write(&rest, &mut segments)?;
        sh.vdevs.flush_all()?;
        let meta = RunMeta {
            id,
            segments: segments.clone(),
            leaf_blocks: leaves,
            index_blocks: index,
            entries: n,
        };
        Ok(Arc::new(Run::open(meta, seg_size, sh.map.reader())?))
    })();
    if r.is_err() {
        alloc.release(segments);
    }
    r
}

/// Build a run from sorted entries (maintenance side).
fn build_run(
    sh: &Shared,
    entries: impl Iterator<Item = Result<(Key, Option<Value>)>>,
) -> Result<Arc<Run>> {
    let (segs, id) = send(sh, |d| MaintOp::AllocMeta(1, d))?;
    let mut a = ViaWriter {
        sh,
        first: segs.first().copied(),
    };
    build_run_with(sh, id, &mut a, entries)
}

/// Freeze and flush the memtable. Returns true if a run was installed.
pub(crate) fn flush_memtable(sh: &Shared) -> Result<bool> {
    let Some(frozen) = send(sh, MaintOp::Rotate)? else {
        return Ok(false);
    };
    sh.maint_status.lock().flushed_at_bytes = sh.stats.bytes_written.load(Ordering::Relaxed);
    let run = build_run(sh, frozen.iter().map(|(k, v)| Ok((*k, v.clone()))))?;
    send(sh, |d| MaintOp::InstallFlush(run, d))?;
    Ok(true)
}

fn level_target(sh: &Shared, level: usize) -> u64 {
    (sh.cfg.memtable_bytes as u64 * 8).saturating_mul(10u64.saturating_pow(level as u32))
}

/// One compaction step if the tree needs it.
fn compact(sh: &Shared) -> Result<bool> {
    let levels = sh.map.levels();
    let (inputs, out_level): (Vec<Arc<Run>>, usize) = if levels.l0.len() >= 4 {
        let mut v = levels.l0.clone();
        if let Some(Some(l1)) = levels.deep.first() {
            v.push(l1.clone());
        }
        (v, 0)
    } else {
        let mut pick = None;
        for (i, r) in levels.deep.iter().enumerate() {
            if let Some(r) = r {
                if r.bytes() > level_target(sh, i) {
                    pick = Some(i);
                    break;
                }
            }
        }
        let Some(i) = pick else { return Ok(false) };
        let mut v: Vec<Arc<Run>> = levels.deep[i].iter().cloned().collect();
        if let Some(Some(next)) = levels.deep.get(i + 1) {
            v.push(next.clone());
        }
        (v, i + 1)
    };
    // Deletion markers can go when nothing older lies below the output.
    let keep_deletions = levels
        .deep
        .iter()
        .enumerate()
        .any(|(j, r)| j > out_level && r.is_some());
    let mut lo = Key::new(0, 0, 0);
    let hi = Key::new(u32::MAX, u64::MAX, u64::MAX);
    let mut pages: Vec<(Key, Option<Value>)> = Vec::new();
    let mut done = false;
    let iter = std::iter::from_fn(|| loop {
        if let Some(e) = pages.pop() {
            return Some(Ok(e));
        }
        if done {
            return None;
        }
        match sh.map.scan_runs(&inputs, lo, hi, 4096, keep_deletions) {
            Ok((mut v, resume)) => {
                v.reverse();
                pages = v;
                match resume {
                    Some(r) => lo = r,
                    None => done = true,
                }
            }
            Err(e) => {
                done = true;
                return Some(Err(e));
            }
        }
    });
    let run = build_run(sh, iter)?;
    let dropped: Vec<RunMeta> = inputs.iter().map(|r| r.meta().clone()).collect();
    let mut deep = levels.deep.clone();
    let l0 = if out_level == 0 {
        Vec::new()
    } else {
        levels.l0.clone()
    };
    let slot = if out_level == 0 { 0 } else { out_level };
    while deep.len() <= slot {
        deep.push(None);
    }
    if out_level > 0 {
        deep[out_level - 1] = None;
    }
    deep[slot] = if run.meta().entries == 0 {
        None
    } else {
        Some(run.clone())
    };
    if run.meta().entries == 0 {
        let _ = sh
            .maint_tx
            .send_blocking(MaintOp::ReleaseMeta(run.meta().segments.clone()));
    }
    while deep.last().is_some_and(Option::is_none) {
        deep.pop();
    }
    send(sh, |d| MaintOp::InstallCompaction {
        levels: Levels { l0, deep },
        dropped,
        done: d,
    })?;
    Ok(true)
}

// ----------------------------------------------------------------------
// Garbage collection

fn gc_pending(sh: &Shared) -> Result<()> {
    let cat = sh.catalog();
    let todo: Vec<u32> = cat
        .purge_todo
        .iter()
        .chain(cat.gc_todo.iter())
        .copied()
        .collect();
    {
        let mut st = sh.maint_status.lock();
        st.gc_done.retain(|l, _| todo.contains(l));
    }
    for l in todo {
        let views = if cat.lineages.contains_key(&l) {
            cat.views(l)
        } else {
            Vec::new()
        };
        if sh.maint_status.lock().gc_done.get(&l) == Some(&views) {
            continue;
        }
        gc_lineage(sh, l)?;
        let _ = sh.maint_tx.send_blocking(MaintOp::GcDone { lineage: l });
        sh.maint_status.lock().gc_done.insert(l, views);
    }
    Ok(())
}

/// Visit every chunk of lineage `l` and let the writer drop what no view sees.
fn gc_lineage(sh: &Shared, l: u32) -> Result<()> {
    let mut lo = Key::lower(l, 0);
    let hi = Key::lower(l.saturating_add(1), 0);
    let mut chunks: Vec<u64> = Vec::new();
    loop {
        let page = sh.map.scan(lo, hi, 4096)?;
        for (k, _) in &page.entries {
            let c = chunk_start(k.lba);
            if chunks.last() != Some(&c) {
                chunks.push(c);
            }
        }
        if chunks.len() >= 256 || page.resume.is_none() {
            let batch = std::mem::take(&mut chunks);
            if !batch.is_empty() {
                send(sh, |d| MaintOp::Gc {
                    lineage: l,
                    chunks: batch,
                    done: d,
                })?;
            }
        }
        match page.resume {
            Some(r) => lo = r,
            None => break,
        }
    }
    Ok(())
}

// ----------------------------------------------------------------------
// The cleaner

/// Clean up to `max` segments whose utilisation is below `max_util`.
pub(crate) fn clean(sh: &Shared, max: usize, max_util: f64) -> Result<u64> {
    let _g = sh.maint_lock.lock();
    let n = clean_locked(sh, max, max_util)?;
    flush_memtable(sh)?;
    Ok(n)
}

fn clean_locked(sh: &Shared, max: usize, max_util: f64) -> Result<u64> {
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

/// Move every live fragment out of `seg`.
fn clean_segment(sh: &Shared, seg: SegId) -> Result<()> {
    let written = match sh.segs.lock().get(seg) {
        Some(s) if s.state == SegState::Data => s.written as usize,
        _ => return Ok(()),
    };
    let mut buf = AlignedBuf::zeroed(written.div_ceil(BLOCK) * BLOCK);
    sh.vdevs.read(seg, 0, buf.as_mut_slice())?;
    let b = buf.as_slice();
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
                EntryKind::Write | EntryKind::Relocate | EntryKind::Copy
            ) {
                continue;
            }
            let rec = Paddr::new(seg, (off as u32) + e.payload_off);
            let c = chunk_start(e.lba);
            let entries = sh
                .map
                .scan(
                    Key::lower(e.lineage, c),
                    Key::lower(e.lineage, c + CHUNK_BLOCKS),
                    usize::MAX,
                )?
                .entries;
            for (k, v) in entries {
                let Some(d) = v.data() else { continue };
                if d.paddr != rec {
                    continue;
                }
                let s = off + e.payload_off as usize + usize::from(d.rec_off) * BLOCK;
                let len = usize::from(d.nblocks) * BLOCK;
                let Some(data) = b.get(s..s + len) else {
                    continue;
                };
                for (blk, want) in data.chunks(BLOCK).zip(d.csums.iter()) {
                    if crc32c::crc32c(blk) != *want {
                        sh.vdevs.note_checksum_error(seg);
                        sh.stats.checksum_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(pool = %sh.name, segment = ?seg, "cleaner found a checksum mismatch; moving the record as is");
                        break;
                    }
                }
                pending += len;
                items.push(RelocItem {
                    key: k,
                    old: rec,
                    old_rec_off: d.rec_off,
                    nblocks: d.nblocks,
                    comp: d.comp,
                    data: Bytes::copy_from_slice(data),
                    csums: d.csums.to_vec(),
                });
            }
            if pending >= 1 << 20 {
                let batch = std::mem::take(&mut items);
                pending = 0;
                send(sh, |d| MaintOp::Relocate(batch, d))?;
            }
        }
        off += h.total_len as usize;
    }
    if !items.is_empty() {
        send(sh, |d| MaintOp::Relocate(items, d))?;
    }
    Ok(())
}

// ----------------------------------------------------------------------
// Flatten

/// Copy everything a clone still reads from its origin into its own
/// lineage, then cut the link.
pub(crate) fn flatten(sh: &Arc<Shared>, name: &str) -> Result<()> {
    let cat = sh.catalog();
    let v = cat.volume_by_name(name)?.clone();
    let lin = cat
        .lineages
        .get(&v.head)
        .cloned()
        .ok_or_else(|| Error::corrupt("volume without a head lineage"))?;
    let Some((pl, pe)) = lin.parent else {
        // Already independent; still a durable management op like any other.
        let _g = sh.maint_lock.lock();
        sh.control(Control::Detach { vol: v.id })?;
        return Ok(());
    };
    if v.head_epoch == lin.base_epoch {
        sh.control(Control::BumpEpoch { vol: v.id })?;
    }
    let parent = cat.chain(pl, pe);
    // Every view of this lineage falls through to the parent, not only the
    // head: a snapshot taken before a shrink reads beyond the current size.
    // (Branch points of children are snapshots on the lineage too.)
    let blocks = cat
        .snapshots
        .values()
        .filter(|s| s.lineage == v.head)
        .map(|s| s.size)
        .chain(std::iter::once(v.size))
        .max()
        .unwrap_or(v.size)
        / BLOCK_U64;
    let mut lba = 0u64;
    while lba < blocks {
        let n = (blocks - lba).min(8192);
        let pieces = chunk::resolve(&parent, lba, n as u32, |l, f, t| {
            Ok(sh
                .map
                .scan(Key::lower(l, f), Key::lower(l, t), usize::MAX)?
                .entries)
        })?;
        for p in pieces {
            let PieceKind::Data(d) = &p.kind else {
                continue;
            };
            let at = u64::from(d.paddr.offset) + u64::from(d.rec_off) * BLOCK_U64;
            let len = u64::from(p.nblocks) * BLOCK_U64;
            let mut buf = AlignedBuf::zeroed(len as usize);
            {
                let _t = sh.gate.enter();
                sh.vdevs.read(d.paddr.seg, at, buf.as_mut_slice())?;
            }
            for (blk, want) in buf.as_slice().chunks(BLOCK).zip(d.csums.iter()) {
                if crc32c::crc32c(blk) != *want {
                    return Err(Error::corrupt(format!(
                        "cannot flatten {name}: origin data at block {} fails its checksum",
                        p.lba
                    )));
                }
            }
            let data = Bytes::copy_from_slice(buf.as_slice());
            let (vol, lineage, base, lba0) = (v.id, v.head, lin.base_epoch, p.lba);
            send(sh, move |done| MaintOp::Copy {
                vol,
                lineage,
                base,
                lba: lba0,
                data,
                done,
            })?;
        }
        lba += n;
    }
    // No background flush may be half-way while the detach flushes.
    let _g = sh.maint_lock.lock();
    sh.control(Control::Detach { vol: v.id })?;
    Ok(())
}
