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
use super::writer::{Control, MaintOp, RelocItem, RelocKind};
use super::Shared;
use crate::buf::AlignedBuf;
use crate::chunk::PieceKind;
use crate::error::{Error, ErrorKind, Result};
use crate::format::batch::{BatchHeader, EntryKind, LogEntry};
use crate::layout::{chunk_start, MetaExtent, Paddr, SegId, BLOCK, BLOCK_U64, CHUNK_BLOCKS};
use crate::map::run::{Run, RunBuilder, RunMeta};
use crate::map::{DataRef, Key, Levels, Value};

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

/// Send an op to the writer and wait for its answer.
pub(crate) fn send_op<T>(
    sh: &Shared,
    make: impl FnOnce(super::writer::Done<T>) -> MaintOp,
) -> Result<T> {
    send(sh, make)
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
    let mut more = false;
    loop {
        if !more {
            let (m, cv) = &sh.maint_wake;
            let mut woken = m.lock();
            if !*woken {
                cv.wait_for(&mut woken, Duration::from_millis(500));
            }
            *woken = false;
        }
        more = false;
        if sh.closing.load(Ordering::SeqCst) {
            return;
        }
        if sh.poisoned.lock().is_some() {
            continue;
        }
        let r = step(&sh, &mut last_flush);
        let mut st = sh.maint_status.lock();
        match r {
            Ok(m) => {
                st.last_error = None;
                more = m;
            }
            Err(e) if e.kind() == ErrorKind::Shutdown => return,
            Err(e) => {
                tracing::warn!(pool = %sh.name, error = %e, "maintenance step failed");
                st.last_error = Some(e.to_string());
            }
        }
    }
}

/// One round of maintenance. Ok(true): more is due right away (the map's
/// levels are not in shape yet), so do not sleep.
fn step(sh: &Arc<Shared>, last_flush: &mut Instant) -> Result<bool> {
    let _g = sh.maint_lock.lock();
    let blocked = sh.space_blocked.load(Ordering::Relaxed);
    let (free, total) = {
        let s = sh.segs.lock();
        (s.free_count(), sh.vdevs.total_segments())
    };
    let reserve = super::data_reserve(sh);
    let low = (total / 10).max(reserve + 2);
    // Only clean when there is dead space worth reclaiming: at least two
    // segments' worth in sealed segments.
    let reclaimable = reclaimable_bytes(sh);
    if (blocked || free < low) && reclaimable >= 2 * sh.vdevs.segment_size {
        let high = (total / 5).max(low + 2);
        let mut reclaimed = false;
        let mut rounds = 0;
        while rounds < 16 {
            rounds += 1;
            // Under pressure, any segment with dead space is worth cleaning;
            // flushing after each small step turns the victims into free
            // segments before the cleaner's own output needs more.
            let urgent = sh.segs.lock().free_count() <= reserve + 1;
            let (n, util) = if urgent {
                (1, MAX_VICTIM_UTIL)
            } else {
                (4, 0.90)
            };
            let mut r = clean_locked(sh, n, util);
            if matches!(r, Ok(0)) && util < MAX_VICTIM_UTIL {
                r = clean_locked(sh, n, MAX_VICTIM_UTIL);
            }
            let cleaned = match r {
                Ok(c) => c,
                // No room left even for the cleaner's output: stop here;
                // waiting writes are failed below rather than left hanging.
                Err(e) if e.kind() == ErrorKind::NoSpace => 0,
                Err(e) => return Err(e),
            };
            reclaimed |= cleaned > 0;
            flush_memtable(sh)?;
            // Each round flushes a small run: keep L0 short while cleaning
            // (writers stall at `L0_STOP` runs, and every write's lookup
            // reads each of them), but never below the data reserve: at a
            // nearly full pool every metadata segment a merge holds shrinks
            // the usable space (tests/cleaner.rs got ENOSPC with less).
            compact(
                sh,
                Scope::L0Only {
                    keep_free: reserve + 2,
                },
            )?;
            force_install(sh)?;
            let free = sh.segs.lock().free_count();
            if cleaned == 0 || free >= high {
                break;
            }
        }
        let after = sh.segs.lock().free_count();
        // Only when no victim could be cleaned at all: writers take what the
        // cleaner frees as soon as it is free, so a free count that did not
        // grow says nothing (failing them then was a false ENOSPC at 89%
        // of usable space, seen in the pool-90-full benchmark).
        if sh.space_blocked.load(Ordering::Relaxed) && !reclaimed && after <= reserve {
            // Nothing can be reclaimed: waiting writes get ENOSPC, not a hang.
            tracing::warn!(pool = %sh.name, "no space can be reclaimed; failing waiting writes with ENOSPC");
            let _ = sh.maint_tx.send_blocking(MaintOp::FailStalled);
        }
    }
    let written = sh.stats.bytes_written.load(Ordering::Relaxed);
    let since = written - sh.maint_status.lock().flushed_at_bytes;
    let mem = sh.map.active_bytes();
    let due = mem >= sh.memtable_budget
        || since >= sh.cfg.replay_budget
        || (sh.map.active_len() > 0 && last_flush.elapsed() >= sh.cfg.flush_interval);
    if due && flush_memtable(sh)? {
        *last_flush = Instant::now();
    }
    let compacted = compact(sh, Scope::Full)?;
    gc_pending(sh)?;
    Ok(compacted || sh.map.active_bytes() >= sh.memtable_budget)
}

/// Move the persisted replay point to now even when the memtable is empty,
/// so segments whose records all died can be freed.
fn force_install(sh: &Shared) -> Result<()> {
    send(sh, MaintOp::FlushNow)
}

/// A barrier through the writer: every batch written before returns is on
/// the devices (and the replay point moved to now).
pub(crate) fn flush_now(sh: &Shared) -> Result<()> {
    force_install(sh)
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
        compact(sh, Scope::Full)?;
    }
    flush_memtable(sh)?;
    Ok(())
}

// ----------------------------------------------------------------------
// Runs

/// Where a run's metadata blocks come from.
pub(crate) trait MetaAlloc {
    /// `blocks` more metadata blocks, now owned by the run being built.
    fn alloc(&mut self, blocks: u32) -> Result<Vec<MetaExtent>>;
    /// Give back the extents of a run that could not be built.
    fn release(&mut self, extents: Vec<MetaExtent>);
}

/// Allocation straight from the segment table (metadata may take any free
/// segment: the floors in `mod.rs` keep enough for it).
pub(crate) struct TableAlloc<'a>(pub &'a Shared);

impl MetaAlloc for TableAlloc<'_> {
    fn alloc(&mut self, blocks: u32) -> Result<Vec<MetaExtent>> {
        self.0
            .segs
            .lock()
            .alloc_meta_blocks(blocks)
            .ok_or_else(|| Error::new(ErrorKind::NoSpace, "no free segment for a map run"))
    }

    fn release(&mut self, extents: Vec<MetaExtent>) {
        // Never referenced by an installed run: no reader can be using them.
        self.0.segs.lock().release_meta_blocks(&extents);
    }
}

/// Build run `id` from sorted entries into blocks from `alloc`.
pub(crate) fn build_run_with(
    sh: &Shared,
    id: u64,
    alloc: &mut dyn MetaAlloc,
    entries: impl Iterator<Item = Result<(Key, Option<Value>)>>,
) -> Result<Arc<Run>> {
    let mut extents: Vec<MetaExtent> = Vec::new();
    let mut written = 0u32;
    let r = (|| {
        let mut write = |bytes: &[u8], extents: &mut Vec<MetaExtent>| -> Result<()> {
            if bytes.is_empty() {
                return Ok(());
            }
            let blocks = (bytes.len() / BLOCK) as u32;
            sh.map.cache().fill(id, written, bytes);
            written += blocks;
            let got = alloc.alloc(blocks)?;
            extents.extend_from_slice(&got);
            let mut rest = bytes;
            for e in &got {
                let n = e.len() as usize;
                ckpt::write_aligned(&sh.vdevs, e.seg, e.offset(), &rest[..n])?;
                rest = &rest[n..];
            }
            Ok(())
        };
        let mut b = RunBuilder::new(id);
        for e in entries {
            let (k, v) = e?;
            b.push(k, &v);
            if b.ready_len() >= 1 << 20 {
                let bytes = b.take_ready();
                write(&bytes, &mut extents)?;
            }
        }
        let n = b.entries();
        let ready = b.take_ready();
        write(&ready, &mut extents)?;
        let (rest, leaves, index) = b.finish();
        write(&rest, &mut extents)?;
        sh.vdevs.flush_all()?;
        let meta = RunMeta {
            id,
            extents: merge_extents(&extents),
            leaf_blocks: leaves,
            index_blocks: index,
            entries: n,
        };
        Ok(Arc::new(Run::open(meta, sh.map.reader())?))
    })();
    if r.is_err() {
        alloc.release(extents);
    }
    r
}

/// Join extents that continue each other in the same segment.
fn merge_extents(v: &[MetaExtent]) -> Vec<MetaExtent> {
    let mut out: Vec<MetaExtent> = Vec::with_capacity(v.len());
    for e in v {
        match out.last_mut() {
            Some(l) if l.seg == e.seg && l.block + l.blocks == e.block => l.blocks += e.blocks,
            _ => out.push(*e),
        }
    }
    out
}

/// Build a run from sorted entries (maintenance side).
fn build_run(
    sh: &Shared,
    entries: impl Iterator<Item = Result<(Key, Option<Value>)>>,
) -> Result<Arc<Run>> {
    let id = sh.next_run_id.fetch_add(1, Ordering::SeqCst);
    build_run_with(sh, id, &mut TableAlloc(sh), entries)
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
    (sh.memtable_budget as u64 * 8).saturating_mul(10u64.saturating_pow(level as u32))
}

/// L0 runs that trigger a compaction (every lookup reads each of them).
const L0_COMPACT: usize = 4;

/// L0 runs are merged among themselves (not into L1) while together they
/// are smaller than L1 / `L0_TIER_RATIO`: merging a few small runs is cheap,
/// rewriting all of L1 for them is not. The cleaner flushes the memtable
/// after every round, so under space pressure L0 fills with small runs.
const L0_TIER_RATIO: u64 = 4;

/// Where a compaction's output goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    /// One L0 run replacing every L0 run (L1 stays).
    L0,
    /// Level `deep[i]` (0 = L1), replacing its inputs.
    Deep(usize),
}

/// What a compaction step may do.
#[derive(Clone, Copy)]
enum Scope {
    /// Whatever the tree needs (the maintenance step).
    Full,
    /// Only merge L0 runs among themselves (into L1 only while there is
    /// none), and only while `keep_free` segments stay free besides the
    /// metadata floor: inside the cleaner's loop, where writers may be
    /// waiting for it (a merge into L1 rewrites the whole of L1).
    L0Only { keep_free: u64 },
}

/// One compaction step if the tree needs it (and `scope` allows it).
fn compact(sh: &Shared, scope: Scope) -> Result<bool> {
    let levels = sh.map.levels();
    let (l0_only, keep_free) = match scope {
        Scope::Full => (false, 0),
        Scope::L0Only { keep_free } => (true, keep_free),
    };
    if l0_only && levels.l0.len() < L0_COMPACT {
        return Ok(false);
    }
    let (inputs, out): (Vec<Arc<Run>>, Output) = if levels.l0.len() >= L0_COMPACT {
        let l0_bytes: u64 = levels.l0.iter().map(|r| r.bytes()).sum();
        match levels.deep.first() {
            Some(Some(l1)) if l0_only || l0_bytes.saturating_mul(L0_TIER_RATIO) < l1.bytes() => {
                (levels.l0.clone(), Output::L0)
            }
            Some(Some(l1)) => {
                let mut v = levels.l0.clone();
                v.push(l1.clone());
                (v, Output::Deep(0))
            }
            // No L1 yet: the L0 runs become L1 (as cheap as merging them).
            _ => (levels.l0.clone(), Output::Deep(0)),
        }
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
        (v, Output::Deep(i + 1))
    };
    // The output may be as large as the inputs; it must fit without eating
    // the segments reserved for flushes.
    let bytes: u64 = inputs.iter().map(|r| r.bytes()).sum();
    let need = bytes.div_ceil(sh.vdevs.segment_size) + 1;
    if sh.segs.lock().free_count() < need + super::meta_floor(sh) + keep_free {
        return Ok(false);
    }
    // Deletion markers can go when nothing older lies below the output.
    let keep_deletions = match out {
        Output::L0 => true, // L1 lies below (an L0-only merge needs one)
        Output::Deep(level) => levels
            .deep
            .iter()
            .enumerate()
            .any(|(j, r)| j > level && r.is_some()),
    };
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
    let kept = (run.meta().entries > 0).then(|| run.clone());
    let l0 = match out {
        // The merged run takes the place of every L0 input (runs flushed
        // meanwhile are kept in front of it when the writer installs it).
        Output::L0 => kept.into_iter().collect(),
        Output::Deep(level) => {
            while deep.len() <= level {
                deep.push(None);
            }
            if level > 0 {
                deep[level - 1] = None;
            }
            deep[level] = kept;
            if level == 0 {
                Vec::new()
            } else {
                levels.l0.clone()
            }
        }
    };
    if run.meta().entries == 0 {
        sh.segs.lock().release_meta_blocks(&run.meta().extents);
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
        if cat.flattening.contains(&l) {
            // Its copies are invisible until the detach: not garbage yet.
            continue;
        }
        let views = if cat.lineages.contains_key(&l) {
            cat.views(l)
        } else {
            Vec::new()
        };
        if sh.maint_status.lock().gc_done.get(&l) == Some(&views) {
            continue;
        }
        gc_lineage(sh, l)?;
        let _ = sh.maint_tx.send_blocking(MaintOp::GcDone {
            lineage: l,
            views: views.clone(),
        });
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

/// The most-live segment worth cleaning: relocating it must gain clearly
/// more than its batch headers cost.
const MAX_VICTIM_UTIL: f64 = 0.97;

/// Bytes the cleaner could reclaim: dead space in sealed data segments.
fn reclaimable_bytes(sh: &Shared) -> u64 {
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
    let n = clean_locked(sh, max, max_util.min(MAX_VICTIM_UTIL))?;
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
                EntryKind::Write | EntryKind::Relocate | EntryKind::Copy | EntryKind::Move
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
                let good = |x: &[u8]| super::read::blocks_match(x, &d.csums);
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
        _ => Some(super::read::lineage_key(sh, e.lineage).ok()?),
    };
    let mut buf = stored.to_vec();
    let plain = match super::read::open_record(
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

// ----------------------------------------------------------------------
// Flatten

/// Copy everything a clone still reads from its origin into its own
/// history, then cut the link.
///
/// All lineages of a volume (its head, and the branches rollbacks left
/// behind) descend from one root lineage, the only one whose parent lies
/// outside the volume. Flattening the root makes every view of the volume
/// (head and snapshots) independent: copies are born at the root's base
/// epoch, so every entry the root already has, at any birth, still wins in
/// the views that see it.
pub(crate) fn flatten(sh: &Arc<Shared>, name: &str) -> Result<()> {
    let cat = sh.catalog();
    let v = cat.volume_by_name(name)?.clone();
    let root_id = cat.root_lineage(v.id)?;
    let root = cat
        .lineages
        .get(&root_id)
        .cloned()
        .ok_or_else(|| Error::corrupt("volume without a root lineage"))?;
    let Some((pl, pe)) = root.parent else {
        // Already independent; still a durable management op like any other.
        let _g = sh.maint_lock.lock();
        sh.control(Control::Detach { vol: v.id })?;
        return Ok(());
    };
    sh.control(Control::Flattening {
        vol: v.id,
        active: true,
    })?;
    let r = copy_origin(sh, name, &v, root_id, &root, (pl, pe));
    if r.is_err() {
        // The copies are garbage now; the volume stays a clone.
        let _ = sh.control(Control::Flattening {
            vol: v.id,
            active: false,
        });
    }
    r
}

/// The body of [`flatten`]: copy every block the clone reads from its
/// origin into its root lineage, then detach.
fn copy_origin(
    sh: &Arc<Shared>,
    name: &str,
    v: &crate::catalog::VolumeRec,
    root_id: u32,
    root: &crate::catalog::LineageRec,
    (pl, pe): (u32, u64),
) -> Result<()> {
    let cat = sh.catalog();
    if v.head == root_id && v.head_epoch == root.base_epoch {
        // New writes must be born strictly after the copies.
        sh.control(Control::BumpEpoch { vol: v.id })?;
    }
    let parent = cat.chain(pl, pe);
    // Every view of the root falls through to the parent, not only the
    // head: a snapshot taken before a shrink reads beyond the current size.
    // (Branch points of children are snapshots on the lineage too.)
    let blocks = cat
        .snapshots
        .values()
        .filter(|s| s.lineage == root_id)
        .map(|s| s.size)
        .chain((v.head == root_id).then_some(v.size))
        .max()
        .unwrap_or(v.size)
        / BLOCK_U64;
    // The reuse gate is held from the lookup to the last read of each
    // window, so the cleaner cannot move data out from under us.
    let mut copies: Vec<(u64, Bytes)> = Vec::new();
    let mut ticket = Some(sh.gate.enter());
    super::walk::for_each_populated(sh, &parent, 0, blocks, |pieces| {
        for p in pieces {
            if !matches!(p.kind, PieceKind::Data(_)) {
                continue;
            }
            // Plain data (decrypted and decompressed): the copy is stored
            // the way the clone stores new writes.
            let segs =
                futures::executor::block_on(super::read::read_pieces(sh, std::slice::from_ref(p)))
                    .map_err(|e| {
                        Error::new(
                            e.kind(),
                            format!("cannot flatten {name}: origin data at block {}: {e}", p.lba),
                        )
                    })?;
            for seg in segs {
                if let super::read::ReadSeg::Data(b) = seg {
                    copies.push((p.lba, b));
                }
            }
        }
        // Hand the copies to the writer outside the gate (the writer may
        // have to wait for a grace period).
        ticket = None;
        for (lba, data) in copies.drain(..) {
            let (vol, lineage, parent, base) = (v.id, root_id, (pl, pe), root.base_epoch);
            send(sh, move |done| MaintOp::Copy {
                vol,
                lineage,
                parent,
                base,
                lba,
                data,
                done,
            })?;
        }
        ticket = Some(sh.gate.enter());
        Ok(())
    })?;
    drop(ticket);
    // No background flush may be half-way while the detach flushes.
    let _g = sh.maint_lock.lock();
    sh.control(Control::Detach { vol: v.id })?;
    Ok(())
}
