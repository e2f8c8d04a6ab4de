//! The block map: an LSM tree of `(lineage, lba, birth) -> value`.
//!
//! ```text
//!   writer thread ──insert──▶ active memtable (BTreeMap, bounded)
//!                                  │ rotate (at budget / checkpoint)
//!                                  ▼
//!                             frozen memtable ──flush──▶ L0 run (newest first)
//!                                                          │ compaction
//!                                                          ▼
//!                                                  L1 run ─▶ L2 run ─▶ ...
//! ```
//!
//! Lookups merge all sources, newest first; a `None` value is a deletion
//! marker that hides older entries with the same key. Runs live in metadata
//! segments and are read through the shared [`BlockCache`], so memory is
//! bounded by configuration (memtable budget + cache), not by map size.
//!
//! Only the writer thread mutates the active memtable and installs runs, so
//! the writer always sees a stable map; readers take a consistent snapshot
//! of the sources under a short read lock and never hold it across I/O.

pub mod entry;
pub mod run;
mod sorted;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

pub use entry::{Csums, DataRef, Key, Value};
use run::{BlockCache, BlockReader, Run, RunMeta};
pub use sorted::SortedScan;

use crate::error::Result;

/// An in-memory, sorted buffer of recent map changes.
///
/// Grouped by chunk (entries never cross a chunk boundary): the writer
/// looks up one chunk per write, which is one search among chunks and a
/// short sorted vector, instead of a search among every entry.
#[derive(Default)]
pub struct Memtable {
    chunks: BTreeMap<(u32, u64), Entries>,
    len: usize,
    bytes: usize,
}

fn chunk_of(k: &Key) -> (u32, u64) {
    (k.lineage, crate::layout::chunk_start(k.lba))
}

impl Memtable {
    /// Insert or replace (None = deletion marker).
    pub fn insert(&mut self, key: Key, value: Option<Value>) {
        let add = 48 + value.as_ref().map_or(0, Value::mem_size);
        let v = self.chunks.entry(chunk_of(&key)).or_default();
        match v.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => {
                let old = std::mem::replace(&mut v[i].1, value);
                self.bytes -= 48 + old.as_ref().map_or(0, Value::mem_size);
            }
            Err(i) => {
                v.insert(i, (key, value));
                self.len += 1;
            }
        }
        self.bytes += add;
    }

    /// Approximate memory used.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Option<Value>)> {
        self.chunks.values().flatten().map(|(k, v)| (k, v))
    }

    fn scan(&self, lo: &Key, hi: &Key, limit: usize, out: &mut Vec<(Key, Option<Value>)>) -> bool {
        if lo >= hi {
            return false;
        }
        let mut n = 0usize;
        let (first, last) = (chunk_of(lo), chunk_of(hi));
        // No key of `hi`'s chunk is below `hi` when `hi` is that chunk's
        // first key (the common case: the writer scans one whole chunk).
        let end = if hi.birth == 0 && hi.lba == last.1 {
            Bound::Excluded(last)
        } else {
            Bound::Included(last)
        };
        let one = match end {
            Bound::Excluded(l) => {
                first.1.checked_add(crate::layout::CHUNK_BLOCKS) == Some(l.1) && l.0 == first.0
            }
            _ => last == first,
        };
        let single = if one { self.chunks.get(&first) } else { None };
        let ranged = (!one).then(|| self.chunks.range((Bound::Included(first), end)));
        let chunks = single
            .into_iter()
            .chain(ranged.into_iter().flatten().map(|(_, v)| v));
        for v in chunks {
            let start = v.partition_point(|(k, _)| k < lo);
            for (k, val) in &v[start..] {
                if k >= hi {
                    return false;
                }
                if n == limit {
                    return true;
                }
                out.push((*k, val.clone()));
                n += 1;
            }
        }
        false
    }
}

/// Entries (a `None` value is a deletion marker), in key order.
type Entries = Vec<(Key, Option<Value>)>;

/// One source's part of a scan, and whether the limit cut it short.
type Source = (Entries, bool);

/// The runs of the tree, newest data first.
#[derive(Clone, Default)]
pub struct Levels {
    /// Flushed memtables, newest first.
    pub l0: Vec<Arc<Run>>,
    /// Deeper levels: `deep[0]` is L1. Each holds at most one run.
    pub deep: Vec<Option<Arc<Run>>>,
}

impl Levels {
    /// All runs, newest data first.
    pub fn runs(&self) -> impl Iterator<Item = &Arc<Run>> {
        self.l0.iter().chain(self.deep.iter().flatten())
    }

    /// The persistent description for the checkpoint.
    pub fn manifest(&self) -> Manifest {
        Manifest {
            l0: self.l0.iter().map(|r| r.meta().clone()).collect(),
            deep: self
                .deep
                .iter()
                .map(|r| r.as_ref().map(|r| r.meta().clone()))
                .collect(),
        }
    }
}

/// The runs as recorded in a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// L0 runs, newest first.
    pub l0: Vec<RunMeta>,
    /// L1.. runs.
    pub deep: Vec<Option<RunMeta>>,
}

impl Manifest {
    /// Every run.
    pub fn runs(&self) -> impl Iterator<Item = &RunMeta> {
        self.l0.iter().chain(self.deep.iter().flatten())
    }
}

struct MapState {
    active: Memtable,
    frozen: Option<Arc<Memtable>>,
    levels: Arc<Levels>,
}

/// The block map.
pub struct Map {
    state: RwLock<MapState>,
    cache: BlockCache,
    reader: Arc<dyn BlockReader>,
    segment_size: u64,
}

/// A consistent view of every source at one instant.
pub struct MapSnapshot {
    frozen: Option<Arc<Memtable>>,
    levels: Arc<Levels>,
}

/// A scan result: entries, and where to resume if the limit cut it short.
pub struct ScanPage {
    /// Live entries (deletion markers applied and removed), in key order.
    pub entries: Vec<(Key, Value)>,
    /// The first key not yet returned, if the scan stopped early.
    pub resume: Option<Key>,
}

impl Map {
    /// An empty map.
    pub fn new(reader: Arc<dyn BlockReader>, cache_bytes: u64, segment_size: u64) -> Map {
        Map {
            state: RwLock::new(MapState {
                active: Memtable::default(),
                frozen: None,
                levels: Arc::new(Levels::default()),
            }),
            cache: BlockCache::new(cache_bytes),
            reader,
            segment_size,
        }
    }

    /// Open the runs of a manifest (reads their index blocks).
    pub fn load(&self, manifest: &Manifest) -> Result<()> {
        let open = |m: &RunMeta| Run::open(m.clone(), &*self.reader).map(Arc::new);
        let l0 = manifest.l0.iter().map(open).collect::<Result<Vec<_>>>()?;
        let deep = manifest
            .deep
            .iter()
            .map(|m| m.as_ref().map(open).transpose())
            .collect::<Result<Vec<_>>>()?;
        self.state.write().levels = Arc::new(Levels { l0, deep });
        Ok(())
    }

    /// Insert into the active memtable (writer thread only).
    pub fn insert(&self, key: Key, value: Option<Value>) {
        self.state.write().active.insert(key, value);
    }

    /// Insert several changes at once (writer thread only).
    pub fn insert_all(&self, changes: impl IntoIterator<Item = (Key, Option<Value>)>) {
        let mut g = self.state.write();
        for (k, v) in changes {
            g.active.insert(k, v);
        }
    }

    /// Bytes in the active memtable.
    pub fn active_bytes(&self) -> usize {
        self.state.read().active.bytes()
    }

    /// Entries in the active memtable.
    pub fn active_len(&self) -> usize {
        self.state.read().active.len()
    }

    /// True if a frozen memtable is waiting to be flushed.
    pub fn has_frozen(&self) -> bool {
        self.state.read().frozen.is_some()
    }

    /// Freeze the active memtable for flushing. Returns it, or None if it is
    /// empty or a previous one is still being flushed.
    pub fn rotate(&self) -> Option<Arc<Memtable>> {
        let mut g = self.state.write();
        if g.frozen.is_some() || g.active.is_empty() {
            return None;
        }
        let frozen = Arc::new(std::mem::take(&mut g.active));
        g.frozen = Some(frozen.clone());
        Some(frozen)
    }

    /// Undo a rotation whose flush failed: merge the frozen memtable back
    /// under the active one (newer entries win).
    pub fn unfreeze(&self) {
        let mut g = self.state.write();
        if let Some(f) = g.frozen.take() {
            let mut merged = Memtable::default();
            for (k, v) in f.iter() {
                merged.insert(*k, v.clone());
            }
            for (k, v) in g.active.iter() {
                merged.insert(*k, v.clone());
            }
            g.active = merged;
        }
    }

    /// Replace the frozen memtable by its flushed run (writer thread only).
    pub fn install_flush(&self, run: Arc<Run>) {
        let mut g = self.state.write();
        let mut levels = (*g.levels).clone();
        levels.l0.insert(0, run);
        g.levels = Arc::new(levels);
        g.frozen = None;
    }

    /// Replace runs by the result of a compaction (writer thread only).
    pub fn install_levels(&self, levels: Levels) {
        self.state.write().levels = Arc::new(levels);
    }

    /// The current runs.
    pub fn levels(&self) -> Arc<Levels> {
        self.state.read().levels.clone()
    }

    /// The shared block cache.
    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    /// The block reader.
    pub fn reader(&self) -> &dyn BlockReader {
        &*self.reader
    }

    /// Segment size (for opening runs).
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// Live entries with `lo <= key < hi`, merged over all sources, at most
    /// `limit` of them (pass `usize::MAX` for small ranges).
    pub fn scan(&self, lo: Key, hi: Key, limit: usize) -> Result<ScanPage> {
        // One consistent instant: the active memtable is copied out under the
        // lock; frozen and runs are immutable and shared by Arc.
        let mut sources: Vec<Source> = Vec::new();
        let snap = {
            let g = self.state.read();
            let mut v = Vec::new();
            let cut = g.active.scan(&lo, &hi, limit, &mut v);
            sources.push((v, cut));
            MapSnapshot {
                frozen: g.frozen.clone(),
                levels: g.levels.clone(),
            }
        };
        self.scan_sources(&snap, lo, hi, limit, sources)
    }

    /// Like [`Map::scan`] but over runs only (no memtables): used by compaction.
    pub fn scan_runs(
        &self,
        runs: &[Arc<Run>],
        lo: Key,
        hi: Key,
        limit: usize,
        keep_deletions: bool,
    ) -> Result<(Entries, Option<Key>)> {
        let mut sources = Vec::with_capacity(runs.len());
        for r in runs {
            let mut v = Vec::new();
            let cut = r.scan(&lo, &hi, limit, &mut v, &self.cache, &*self.reader)?;
            sources.push((v, cut));
        }
        let (merged, resume) = merge(sources);
        let merged = if keep_deletions {
            merged
        } else {
            merged.into_iter().filter(|(_, v)| v.is_some()).collect()
        };
        Ok((merged, resume))
    }

    fn scan_sources(
        &self,
        snap: &MapSnapshot,
        lo: Key,
        hi: Key,
        limit: usize,
        mut sources: Vec<Source>,
    ) -> Result<ScanPage> {
        if let Some(f) = &snap.frozen {
            let mut v = Vec::new();
            let cut = f.scan(&lo, &hi, limit, &mut v);
            sources.push((v, cut));
        }
        for r in snap.levels.runs() {
            let mut v = Vec::new();
            let cut = r.scan(&lo, &hi, limit, &mut v, &self.cache, &*self.reader)?;
            sources.push((v, cut));
        }
        let (merged, resume) = merge(sources);
        Ok(ScanPage {
            entries: merged
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect(),
            resume,
        })
    }
}

/// Merge per-source sorted results (index 0 = newest). Equal keys take the
/// newest source's value. If any source was cut short at key K, everything
/// after the smallest such K is dropped and that K is the resume point.
fn merge(sources: Vec<Source>) -> (Entries, Option<Key>) {
    // Resume at the key just after the last one a truncated source returned:
    // every source is complete up to (and including) that key.
    let mut resume: Option<Key> = None;
    for (v, cut) in &sources {
        if *cut {
            let last = v.last().map(|(k, _)| *k);
            let next = match last {
                Some(k) => next_key(k),
                None => continue,
            };
            resume = Some(resume.map_or(next, |r: Key| r.min(next)));
        }
    }
    let cut = |k: &Key| resume.is_some_and(|r| *k >= r);
    let mut sources: Vec<Entries> = sources
        .into_iter()
        .map(|(v, _)| v)
        .filter(|v| !v.is_empty())
        .collect();
    // One source (the common case for small ranges): nothing to merge.
    if sources.len() <= 1 {
        let mut out = sources.pop().unwrap_or_default();
        if let Some(i) = out.iter().position(|(k, _)| cut(k)) {
            out.truncate(i);
        }
        return (out, resume);
    }
    // k-way merge of sorted sources; on equal keys the newest (lowest
    // index) source wins.
    let total: usize = sources.iter().map(Vec::len).sum();
    let mut out: Vec<(Key, Option<Value>)> = Vec::with_capacity(total);
    type Cursor = std::iter::Peekable<std::vec::IntoIter<(Key, Option<Value>)>>;
    let mut iters: Vec<Cursor> = sources
        .into_iter()
        .map(|v| v.into_iter().peekable())
        .collect();
    loop {
        let mut best: Option<(usize, Key)> = None;
        for (i, it) in iters.iter_mut().enumerate() {
            if let Some((k, _)) = it.peek() {
                if best.is_none_or(|(_, b)| *k < b) {
                    best = Some((i, *k));
                }
            }
        }
        let Some((i, k)) = best else { break };
        if cut(&k) {
            break;
        }
        for (j, it) in iters.iter_mut().enumerate() {
            if it.peek().is_some_and(|(x, _)| *x == k) {
                let e = it.next();
                if j == i {
                    if let Some(e) = e {
                        out.push(e);
                    }
                }
            }
        }
    }
    (out, resume)
}

/// The smallest key greater than `k`.
fn next_key(k: Key) -> Key {
    if k.birth < u64::MAX {
        Key::new(k.lineage, k.lba, k.birth + 1)
    } else if k.lba < u64::MAX {
        Key::new(k.lineage, k.lba + 1, 0)
    } else {
        Key::new(k.lineage.saturating_add(1), 0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::layout::SegId;

    struct NoBlocks;
    impl BlockReader for NoBlocks {
        fn read_meta_block(&self, _seg: SegId, _offset: u64) -> Result<Vec<u8>> {
            Err(Error::corrupt("no blocks"))
        }
    }

    fn zero(n: u8) -> Option<Value> {
        Some(Value::Zero {
            nblocks: n,
            alloc: true,
        })
    }

    #[test]
    fn newest_source_wins_and_deletions_hide() {
        let (a, b) = (
            vec![(Key::new(1, 1, 1), None), (Key::new(1, 3, 1), zero(1))],
            vec![
                (Key::new(1, 1, 1), zero(2)),
                (Key::new(1, 2, 1), zero(3)),
                (Key::new(1, 3, 1), zero(4)),
            ],
        );
        let (m, resume) = merge(vec![(a, false), (b, false)]);
        assert!(resume.is_none());
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].1, None);
        assert_eq!(m[1].1, zero(3));
        assert_eq!(m[2].1, zero(1));
    }

    #[test]
    fn truncated_source_bounds_the_page() {
        let a = vec![(Key::new(1, 1, 0), zero(1)), (Key::new(1, 5, 0), zero(1))];
        let b = vec![(Key::new(1, 2, 0), zero(1)), (Key::new(1, 9, 0), zero(1))];
        let (m, resume) = merge(vec![(a, true), (b, false)]);
        assert_eq!(resume, Some(Key::new(1, 5, 1)));
        let lbas: Vec<u64> = m.iter().map(|e| e.0.lba).collect();
        assert_eq!(lbas, vec![1, 2, 5]);
    }

    #[test]
    fn memtable_scan_and_rotation() {
        let map = Map::new(Arc::new(NoBlocks), 1 << 20, 1 << 20);
        for i in 0..10 {
            map.insert(Key::new(1, i, 0), zero(1));
        }
        map.insert(Key::new(1, 3, 0), None);
        let p = map.scan(Key::lower(1, 0), Key::lower(1, 10), 4).unwrap();
        assert_eq!(
            p.entries.len(),
            3,
            "deletion marker counts toward the page but is hidden"
        );
        assert_eq!(p.resume, Some(Key::new(1, 3, 1)));
        let f = map.rotate().unwrap();
        assert_eq!(f.len(), 10);
        assert!(map.rotate().is_none(), "one flush at a time");
        map.insert(Key::new(1, 20, 0), zero(1));
        let p = map
            .scan(Key::lower(1, 0), Key::lower(2, 0), usize::MAX)
            .unwrap();
        assert_eq!(p.entries.len(), 10);
    }
}
