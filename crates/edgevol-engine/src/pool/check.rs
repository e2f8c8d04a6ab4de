//! `pool check`: verify every metadata structure and every stored block.
//!
//! * the catalog's structure (lineages, views, snapshots);
//! * every map run block (checksums, key order, counts);
//! * every map entry: inside its chunk, no overlap within a birth, pointing
//!   into a data segment within what was written, fragments of one record
//!   consistent, and the data itself matching its checksums;
//! * accounting: live bytes per segment recomputed from the map equal the
//!   segment table, and each volume's referenced blocks equal its counter
//!   (compared only if the pool was idle during the check);
//! * no garbage: every entry is visible to some view, unless its lineage is
//!   still waiting for garbage collection.

mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use super::space::SegState;
use super::Shared;
use crate::chunk;
use crate::error::Result;
use crate::layout::{chunk_start, Paddr, SegId, BLOCK_U64, CHUNK_BLOCKS};
use crate::map::{DataRef, Key, Value};

/// What `pool check` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Inconsistencies (the check fails if any).
    pub errors: Vec<String>,
    /// Things worth knowing that are not inconsistencies.
    pub notes: Vec<String>,
    /// Map runs verified.
    pub runs: u64,
    /// Map entries verified.
    pub entries: u64,
    /// Distinct stored records.
    pub records: u64,
    /// Bytes of data read and verified.
    pub data_bytes: u64,
    /// Encrypted records whose key is not loaded: checksummed, but not
    /// authenticated.
    pub encrypted_unverified: u64,
}

impl CheckReport {
    /// True if nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

const MAX_ERRORS: usize = 100;

/// A stored record to verify: the map entries (fragments) that point into
/// it, all with the same record fields.
struct Record {
    frags: Vec<(Key, DataRef)>,
}

fn err(r: &mut CheckReport, msg: String) {
    if r.errors.len() < MAX_ERRORS {
        r.errors.push(msg);
    } else if r.errors.len() == MAX_ERRORS {
        r.errors.push("... more errors omitted".into());
    }
}

pub(crate) fn check(sh: &Shared) -> Result<CheckReport> {
    // Segments are only ever released by maintenance (memtable flushes,
    // compaction, flatten), all under this lock: holding it, every segment
    // an entry points into stays what it is while we look at it. Client
    // writes go on; they only make the accounting comparison inexact,
    // which `idle` below detects.
    let _maint = sh.maint_lock.lock();
    // Counters and map agree only where no blind write is pending.
    super::maint::settle(sh)?;
    let mut r = CheckReport::default();
    let batches_before =
        sh.stats.batches.load(Ordering::SeqCst) + sh.stats.checkpoints.load(Ordering::SeqCst);
    let cat = sh.catalog();
    for e in cat.verify() {
        err(&mut r, format!("catalog: {e}"));
    }
    let levels = sh.map.levels();
    let (counter_extents, log_seg) = sh.meta_roots.lock().clone();
    let mut meta_owned: BTreeMap<SegId, u64> = BTreeMap::new();
    for e in &counter_extents {
        *meta_owned.entry(e.seg).or_insert(0) += e.len();
    }
    if let Some(l) = log_seg {
        *meta_owned.entry(l).or_insert(0) += sh.vdevs.segment_size;
    }
    for run in levels.runs() {
        r.runs += 1;
        for e in &run.meta().extents {
            *meta_owned.entry(e.seg).or_insert(0) += e.len();
            let s = e.seg;
            if sh.segs.lock().get(s).map(|x| x.state) != Some(SegState::Meta) {
                err(
                    &mut r,
                    format!(
                        "map run {} uses segment {s:?} not marked as metadata",
                        run.meta().id
                    ),
                );
            }
        }
        if let Err(e) = run.verify(sh.map.reader()) {
            err(&mut r, format!("map run {}: {e}", run.meta().id));
        }
    }
    // Walk the whole map, one chunk at a time.
    let mut live: BTreeMap<SegId, u64> = BTreeMap::new();
    let mut records: BTreeMap<Paddr, (u32, u64, u32, u8)> = BTreeMap::new();
    let mut referenced: BTreeMap<u32, u64> = BTreeMap::new();
    let mut lo = Key::new(0, 0, 0);
    let hi = Key::new(u32::MAX, u64::MAX, u64::MAX);
    let mut chunk_entries: Vec<(Key, Value)> = Vec::new();
    // Records whose data is still to be read and verified, in batches.
    let mut data: Vec<Record> = Vec::new();
    let mut end_chunk = |entries: &mut Vec<(Key, Value)>, r: &mut CheckReport, last: bool| {
        check_chunk(sh, &cat, entries, r, &mut records, &mut live, &mut data);
        entries.clear();
        if last || data.len() >= verify::BATCH {
            verify::records(sh, &cat, &mut data, r);
        }
    };
    loop {
        let page = sh.scan(lo, hi, 4096)?;
        for (k, v) in page.entries {
            if chunk_entries.first().is_some_and(|(f, _)| {
                f.lineage != k.lineage || chunk_start(f.lba) != chunk_start(k.lba)
            }) {
                end_chunk(&mut chunk_entries, &mut r, false);
            }
            chunk_entries.push((k, v));
        }
        match page.resume {
            Some(x) => lo = x,
            None => break,
        }
    }
    end_chunk(&mut chunk_entries, &mut r, true);
    r.records = records.len() as u64;
    // Referenced blocks per volume head, resolved through the whole chain.
    for v in cat.volumes.values() {
        let chain = cat.chain(v.head, v.head_epoch);
        let n_data = super::walk::data_blocks(sh, &chain, 0, v.size / BLOCK_U64)?;
        referenced.insert(v.head, n_data);
    }
    let idle = batches_before
        == sh.stats.batches.load(Ordering::SeqCst) + sh.stats.checkpoints.load(Ordering::SeqCst);
    if idle {
        let segs = sh.segs.lock();
        for (id, info) in segs.iter() {
            let want = live.get(&id).copied().unwrap_or(0);
            match info.state {
                SegState::Data if info.live != want => err(
                    &mut r,
                    format!(
                        "segment {id:?}: table says {} live bytes, the map references {want}",
                        info.live
                    ),
                ),
                SegState::Meta if info.live != meta_owned.get(&id).copied().unwrap_or(0) => {
                    err(
                        &mut r,
                        format!(
                            "metadata segment {id:?}: table says {} bytes in use, runs, counters and the checkpoint log own {}",
                            info.live,
                            meta_owned.get(&id).copied().unwrap_or(0)
                        ),
                    )
                }
                SegState::Free if meta_owned.contains_key(&id) => err(
                    &mut r,
                    format!("segment {id:?} is free but metadata lives in it"),
                ),
                SegState::Free | SegState::Meta if want > 0 => err(
                    &mut r,
                    format!(
                        "segment {id:?} is {:?} but the map references {want} bytes in it",
                        info.state
                    ),
                ),
                _ => {}
            }
        }
        let delta = sh.lineage_delta.lock().clone();
        for v in cat.volumes.values() {
            let base = cat.lineages.get(&v.head).map_or(0, |l| l.base_referenced);
            let counted = base + delta.get(&v.head).copied().unwrap_or(0);
            let actual = referenced.get(&v.head).copied().unwrap_or(0) as i64;
            if counted != actual {
                err(
                    &mut r,
                    format!(
                        "volume {}: referenced counter {counted} blocks, map has {actual}",
                        v.name
                    ),
                );
            }
        }
    } else {
        r.notes.push(
            "the pool was written to during the check: space accounting was not compared".into(),
        );
    }
    if !cat.gc_todo.is_empty() || !cat.purge_todo.is_empty() {
        r.notes.push(format!(
            "{} lineages are waiting for garbage collection",
            cat.gc_todo.len() + cat.purge_todo.len()
        ));
    }
    Ok(r)
}

/// Check the structure of one chunk's entries; queue its records' data on
/// `data` for [`verify::records`].
fn check_chunk(
    sh: &Shared,
    cat: &crate::catalog::Catalog,
    entries: &[(Key, Value)],
    r: &mut CheckReport,
    records: &mut BTreeMap<Paddr, (u32, u64, u32, u8)>,
    live: &mut BTreeMap<SegId, u64>,
    data: &mut Vec<Record>,
) {
    let Some((first, _)) = entries.first() else {
        return;
    };
    let l = first.lineage;
    let c = chunk_start(first.lba);
    let lin = cat.lineages.get(&l);
    // Entries waiting for collection, or a flatten's copies before the
    // detach, are not leaks.
    let pending =
        cat.gc_todo.contains(&l) || cat.purge_todo.contains(&l) || cat.flattening.contains(&l);
    if lin.is_none() && !pending {
        err(
            r,
            format!("entries of lineage {l} which does not exist (chunk {c})"),
        );
    }
    // Structure: inside the chunk, no overlap within a birth.
    let mut by_birth: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for (k, v) in entries {
        r.entries += 1;
        let end = k.lba + u64::from(v.nblocks());
        if end > c + CHUNK_BLOCKS {
            err(r, format!("entry {k:?} crosses its chunk boundary"));
        }
        by_birth.entry(k.birth).or_default().push((k.lba, end));
    }
    for (b, mut spans) in by_birth {
        spans.sort_unstable();
        for w in spans.windows(2) {
            if w[0].1 > w[1].0 {
                err(
                    r,
                    format!("lineage {l} chunk {c}: overlapping entries born at {b}"),
                );
            }
        }
    }
    // Garbage: every entry must be visible to some view.
    if let Some(lin) = lin {
        let views = cat.views(l);
        let per_view = chunk::views_per_block(entries, c, &views, &lin.barriers);
        let mut seen: BTreeSet<usize> = BTreeSet::new();
        for pv in &per_view {
            seen.extend(pv.iter().flatten());
        }
        if !pending {
            for (i, (k, _)) in entries.iter().enumerate() {
                if !seen.contains(&i) {
                    err(r, format!("entry {k:?} is visible to no view (leaked)"));
                }
            }
        }
    }
    // Records: consistent fragments, valid location, intact data.
    let mut per_record: BTreeMap<Paddr, Vec<(&Key, &DataRef)>> = BTreeMap::new();
    for (k, v) in entries {
        if let Some(d) = v.data() {
            per_record.entry(d.paddr).or_default().push((k, d));
        }
    }
    for (p, frags) in per_record {
        let (k0, d0) = frags[0];
        if let Some((ol, ob, sl, rb)) = records.get(&p) {
            if *ol != k0.lineage || *ob != k0.birth || *sl != d0.stored_len || *rb != d0.rec_blocks
            {
                err(r, format!("record at {p:?} is referenced from two places"));
            }
            continue;
        }
        records.insert(p, (k0.lineage, k0.birth, d0.stored_len, d0.rec_blocks));
        for (k, d) in &frags {
            if k.birth != k0.birth || d.stored_len != d0.stored_len || d.rec_blocks != d0.rec_blocks
            {
                err(r, format!("fragments of record {p:?} disagree"));
            }
            if k.lba < u64::from(d.rec_off)
                || k.lba - u64::from(d.rec_off) != k0.lba - u64::from(d0.rec_off)
            {
                err(r, format!("fragment {k:?} is misplaced in its record"));
            }
        }
        let seg_info = sh.segs.lock().get(p.seg).copied();
        match seg_info {
            Some(s) if s.state == SegState::Data => {
                if u64::from(p.offset) + d0.footprint() > u64::from(s.written) {
                    err(
                        r,
                        format!("record {p:?} lies beyond what was written to its segment"),
                    );
                }
            }
            other => {
                err(
                    r,
                    format!(
                        "record {p:?} is in a segment that is {:?}",
                        other.map(|s| s.state)
                    ),
                );
                continue;
            }
        }
        let blocks: u64 = frags.iter().map(|(_, d)| u64::from(d.nblocks)).sum();
        *live.entry(p.seg).or_insert(0) += crate::chunk::live_share(d0, blocks).0;
        data.push(Record {
            frags: frags.iter().map(|(k, d)| (**k, (*d).clone())).collect(),
        });
    }
}
