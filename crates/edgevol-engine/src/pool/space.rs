//! The segment table: state and live bytes of every segment, and the free
//! lists.
//!
//! Data segments: live bytes count whole records that are still referenced
//! by at least one map entry. Freeing is two-phase: a data segment whose
//! live bytes reach zero is only returned to the free list when the
//! *persisted* state no longer needs it (see `writer/flush.rs`: the counters
//! captured at memtable rotation, and the replay point), and after
//! in-flight readers drained.
//!
//! Metadata segments hold map runs and counter tables as block extents,
//! appended to the current metadata segment of their lifetime class
//! ([`MetaClass`]), so many small runs share a segment. A metadata
//! segment's live bytes are the blocks of extents still owned (by an
//! installed run, the current counters table, or a run being built); it is
//! freed when that reaches zero and it is no longer a segment being
//! appended to. The checkpoint log has a segment of its own, pinned whole.
//!
//! Why two classes: a segment is freed only when its last extent dies, so
//! one long-lived L1 run among the counters tables of every checkpoint and
//! the L0 runs of every flush would pin the whole segment for as long as
//! the L1 run lives. Kept apart, short-lived extents free their segments
//! within a few checkpoints and the segments metadata holds stay close to
//! its live bytes (the fixed metadata allowance in capacity.rs relies on
//! it).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::gone::{Dead, GoneHints, BUDGET_BYTES};
use crate::layout::{MetaExtent, Paddr, SegId, BLOCK_U64};

/// What a segment is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SegState {
    /// Unused.
    Free,
    /// Log batches (client data, relocations).
    Data,
    /// Map runs, counter tables, checkpoints.
    Meta,
}

/// How long a metadata extent is expected to live; each class appends to
/// a segment of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaClass {
    /// Replaced within a few checkpoints: counters tables, L0 runs.
    Short = 0,
    /// Lives until the next merge into its level: L1 and deeper runs.
    Long = 1,
}

/// One segment's accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegInfo {
    /// Use.
    pub state: SegState,
    /// Bytes of live records (data segments).
    pub live: u64,
    /// Bytes appended so far (data segments).
    pub written: u32,
    /// Highest batch lsn written here (data segments).
    pub max_lsn: u64,
    /// Logical bytes of the live records (data segments): with `live`,
    /// the compression ratio.
    pub logical: u64,
}

impl SegInfo {
    const FREE: SegInfo = SegInfo {
        state: SegState::Free,
        live: 0,
        written: 0,
        max_lsn: 0,
        logical: 0,
    };
}

/// Derived counters persisted with a checkpoint, as of its replay point.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Per group, per segment.
    pub segs: Vec<Vec<SegInfo>>,
    /// Per lineage: change of head-visible data blocks since the lineage began.
    pub lineage_delta: BTreeMap<u32, i64>,
}

/// The in-memory segment table.
pub struct SegmentTable {
    segs: Vec<Vec<SegInfo>>,
    /// Segments open for writing or reserved by a stream (never cleaned).
    open: Vec<SegId>,
    free: Vec<BTreeSet<u32>>,
    next_group: usize,
    live_total: u64,
    logical_total: u64,
    /// Per [`MetaClass`]: the metadata segment extents are appended to,
    /// and its next free block.
    meta_cur: [Option<(SegId, u32)>; 2],
    /// Blocks per row of each group (parity groups: metadata extents start
    /// on row boundaries so that no row is written twice).
    row_blocks: Vec<u32>,
    /// Blocks per segment.
    seg_blocks: u32,
    /// Records known dead, for the cleaner (`gone.rs`).
    gone: GoneHints,
}

impl SegmentTable {
    /// All segments free; `sizes[g]` segments of `segment_size` bytes in group g.
    pub fn new(sizes: &[u32], segment_size: u64) -> SegmentTable {
        let segs: Vec<Vec<SegInfo>> = sizes
            .iter()
            .map(|&n| vec![SegInfo::FREE; n as usize])
            .collect();
        let mut t = SegmentTable {
            segs,
            open: Vec::new(),
            free: Vec::new(),
            next_group: 0,
            live_total: 0,
            logical_total: 0,
            meta_cur: [None; 2],
            row_blocks: Vec::new(),
            seg_blocks: (segment_size / BLOCK_U64) as u32,
            gone: GoneHints::new((segment_size / BLOCK_U64) as u32, BUDGET_BYTES),
        };
        t.rebuild_free();
        t
    }

    /// From persisted counters (extra segments beyond them are free; missing
    /// ones are dropped).
    pub fn from_counters(sizes: &[u32], segment_size: u64, c: &Counters) -> SegmentTable {
        let mut t = SegmentTable::new(sizes, segment_size);
        for (g, segs) in c.segs.iter().enumerate() {
            for (i, info) in segs.iter().enumerate() {
                if let Some(slot) = t.segs.get_mut(g).and_then(|v| v.get_mut(i)) {
                    *slot = *info;
                }
            }
        }
        t.rebuild_free();
        t
    }

    /// Recompute the free lists and totals from states.
    pub fn rebuild_free(&mut self) {
        self.gone.clear();
        self.free = self
            .segs
            .iter()
            .map(|v| {
                v.iter()
                    .enumerate()
                    .filter(|(_, s)| s.state == SegState::Free)
                    .map(|(i, _)| i as u32)
                    .collect()
            })
            .collect();
        self.live_total = self
            .segs
            .iter()
            .flatten()
            .filter(|s| s.state == SegState::Data)
            .map(|s| s.live)
            .sum();
        self.logical_total = self
            .segs
            .iter()
            .flatten()
            .filter(|s| s.state == SegState::Data)
            .map(|s| s.logical)
            .sum();
    }

    /// A copy of every segment's info.
    pub fn snapshot(&self) -> Vec<Vec<SegInfo>> {
        self.segs.clone()
    }

    /// Record which segments the streams are using.
    pub fn set_open(&mut self, open: Vec<SegId>) {
        self.open = open;
    }

    /// True if a stream is writing to or has reserved `seg`.
    pub fn is_open(&self, seg: SegId) -> bool {
        self.open.contains(&seg)
    }

    /// Info of one segment.
    pub fn get(&self, seg: SegId) -> Option<&SegInfo> {
        self.segs.get(seg.group as usize)?.get(seg.index as usize)
    }

    fn get_mut(&mut self, seg: SegId) -> Option<&mut SegInfo> {
        self.segs
            .get_mut(seg.group as usize)?
            .get_mut(seg.index as usize)
    }

    /// Set the blocks per row of each group (see `Vdevs::row_blocks`).
    pub fn set_row_blocks(&mut self, rows: Vec<u32>) {
        self.row_blocks = rows;
    }

    /// Grow group `g` to `n` segments (its devices grew): the new ones
    /// are free. Never shrinks. A group not known yet is added (`rows`
    /// blocks per row).
    pub fn grow(&mut self, g: usize, n: u32, rows: u32) {
        while self.segs.len() <= g {
            self.segs.push(Vec::new());
            self.free.push(BTreeSet::new());
        }
        if self.row_blocks.len() <= g {
            self.row_blocks.resize(g, 1);
            self.row_blocks.push(rows);
        }
        let have = self.segs[g].len() as u32;
        if n > have {
            self.segs[g].resize(n as usize, SegInfo::FREE);
            self.free[g].extend(have..n);
        }
    }

    /// Take a free segment for `state`, rotating across groups (striping).
    pub fn alloc(&mut self, state: SegState) -> Option<SegId> {
        let n = self.free.len();
        for k in 0..n {
            let g = (self.next_group + k) % n;
            if let Some(&i) = self.free[g].iter().next() {
                self.free[g].remove(&i);
                self.next_group = (g + 1) % n;
                let seg = SegId::new(g as u8, i);
                self.gone.forget(seg);
                if let Some(s) = self.get_mut(seg) {
                    *s = SegInfo {
                        state,
                        ..SegInfo::FREE
                    };
                }
                return Some(seg);
            }
        }
        None
    }

    /// Mark a segment as used for `state` (replay, load).
    pub fn claim(&mut self, seg: SegId, state: SegState) {
        self.gone.forget(seg);
        if let Some(set) = self.free.get_mut(seg.group as usize) {
            set.remove(&seg.index);
        }
        if let Some(s) = self.get_mut(seg) {
            if s.state == SegState::Free {
                *s = SegInfo {
                    state,
                    ..SegInfo::FREE
                };
            } else {
                s.state = state;
            }
        }
    }

    /// Take `blocks` metadata blocks, appended to the current metadata
    /// segment of `class` and then to fresh ones. None (and nothing taken) if the free
    /// segments do not suffice.
    pub fn alloc_meta_blocks(&mut self, blocks: u32, class: MetaClass) -> Option<Vec<MetaExtent>> {
        let c = class as usize;
        let room = self.meta_cur[c].map_or(0, |(_, next)| self.seg_blocks - next);
        let fresh = blocks.saturating_sub(room).div_ceil(self.seg_blocks.max(1));
        if u64::from(fresh) > self.free_count() {
            return None;
        }
        let mut out = Vec::new();
        let mut left = blocks;
        while left > 0 {
            let (seg, next) = match self.meta_cur[c] {
                Some((seg, next)) if next < self.seg_blocks => (seg, next),
                _ => {
                    let prev = self.meta_cur[c].take();
                    let seg = self.alloc(SegState::Meta)?;
                    self.meta_cur[c] = Some((seg, 0));
                    // The previous append segment may already be empty.
                    if let Some((p, _)) = prev {
                        self.free_meta_if_empty(p);
                    }
                    (seg, 0)
                }
            };
            let n = left.min(self.seg_blocks - next);
            out.push(MetaExtent {
                seg,
                block: next,
                blocks: n,
            });
            // The next extent starts a new row (parity groups).
            let row = self
                .row_blocks
                .get(seg.group as usize)
                .copied()
                .unwrap_or(1)
                .max(1);
            let end = (next + n).next_multiple_of(row).min(self.seg_blocks);
            self.meta_cur[c] = Some((seg, end));
            if let Some(s) = self.get_mut(seg) {
                s.live += u64::from(n) * BLOCK_U64;
                s.written = s.written.max(end * BLOCK_U64 as u32);
            }
            left -= n;
        }
        Some(out)
    }

    /// Give back metadata extents; segments left without live blocks (and
    /// not being appended to) become free.
    pub fn release_meta_blocks(&mut self, extents: &[MetaExtent]) {
        for e in extents {
            if let Some(s) = self.get_mut(e.seg) {
                if s.state == SegState::Meta {
                    s.live = s.live.saturating_sub(e.len());
                }
            }
            self.free_meta_if_empty(e.seg);
        }
    }

    /// Mark extents as owned (import: extents the checkpoint references).
    pub fn claim_meta_blocks(&mut self, extents: &[MetaExtent]) {
        for e in extents {
            self.claim(e.seg, SegState::Meta);
            if let Some(s) = self.get_mut(e.seg) {
                s.live += e.len();
                s.written = s.written.max((e.block + e.blocks) * BLOCK_U64 as u32);
            }
        }
    }

    /// Take a whole segment for metadata that is not packed (the checkpoint log).
    pub fn alloc_pinned_meta(&mut self) -> Option<SegId> {
        let seg = self.alloc(SegState::Meta)?;
        self.pin_meta(seg);
        Some(seg)
    }

    /// Mark a whole segment as used metadata (import: the checkpoint log).
    pub fn pin_meta(&mut self, seg: SegId) {
        self.claim(seg, SegState::Meta);
        let full = u64::from(self.seg_blocks) * BLOCK_U64;
        if let Some(s) = self.get_mut(seg) {
            s.live = full;
            s.written = full as u32;
        }
    }

    fn free_meta_if_empty(&mut self, seg: SegId) {
        if self.meta_cur.iter().flatten().any(|&(c, _)| c == seg) {
            return;
        }
        let empty = self
            .get(seg)
            .is_some_and(|s| s.state == SegState::Meta && s.live == 0);
        if empty {
            self.release(seg);
        }
    }

    /// Bytes of metadata blocks in use.
    pub fn meta_live(&self) -> u64 {
        self.segs
            .iter()
            .flatten()
            .filter(|s| s.state == SegState::Meta)
            .map(|s| s.live)
            .sum()
    }

    /// Return a segment to the free list.
    pub fn release(&mut self, seg: SegId) {
        self.gone.forget(seg);
        let (live, logical) = match self.get_mut(seg) {
            Some(s) => {
                let x = if s.state == SegState::Data {
                    (s.live, s.logical)
                } else {
                    (0, 0)
                };
                *s = SegInfo::FREE;
                x
            }
            None => return,
        };
        self.live_total -= live;
        self.logical_total -= logical;
        if let Some(set) = self.free.get_mut(seg.group as usize) {
            set.insert(seg.index);
        }
    }

    /// Record that a batch ending at `end` with `lsn` was written to `seg`.
    pub fn note_write(&mut self, seg: SegId, end: u32, lsn: u64) {
        if let Some(s) = self.get_mut(seg) {
            s.state = SegState::Data;
            s.written = s.written.max(end);
            s.max_lsn = s.max_lsn.max(lsn);
        }
    }

    /// Add a live record: stored and logical bytes.
    pub fn add_live(&mut self, seg: SegId, bytes: u64, logical: u64) {
        if let Some(s) = self.get_mut(seg) {
            s.live += bytes;
            s.logical += logical;
            self.live_total += bytes;
            self.logical_total += logical;
        }
    }

    /// Remove a live record (saturating: accounting errors are reported by check).
    pub fn sub_live(&mut self, seg: SegId, bytes: u64, logical: u64) {
        if let Some(s) = self.get_mut(seg) {
            let b = bytes.min(s.live);
            let l = logical.min(s.logical);
            s.live -= b;
            s.logical -= l;
            self.live_total -= b;
            self.logical_total -= l;
        }
    }

    /// The plain record at `rec` lost its last reference (a hint for the
    /// cleaner, `gone.rs`).
    pub(crate) fn mark_gone(&mut self, rec: Paddr) {
        if self.get(rec.seg).is_some_and(|s| s.state == SegState::Data) {
            self.gone.mark(rec);
        }
    }

    /// The records of `seg` known dead, if any.
    pub(crate) fn gone(&self, seg: SegId) -> Option<Dead> {
        self.gone.of(seg)
    }

    /// Logical bytes of live data records.
    pub fn logical_total(&self) -> u64 {
        self.logical_total
    }

    /// Free segments.
    pub fn free_count(&self) -> u64 {
        self.free.iter().map(|s| s.len() as u64).sum()
    }

    /// Bytes of live data records.
    pub fn live_total(&self) -> u64 {
        self.live_total
    }

    /// Segments in a state.
    pub fn count(&self, state: SegState) -> u64 {
        self.segs
            .iter()
            .flatten()
            .filter(|s| s.state == state)
            .count() as u64
    }

    /// Every segment with its id.
    pub fn iter(&self) -> impl Iterator<Item = (SegId, &SegInfo)> {
        self.segs.iter().enumerate().flat_map(|(g, v)| {
            v.iter()
                .enumerate()
                .map(move |(i, s)| (SegId::new(g as u8, i as u32), s))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_stripes_and_release_returns() {
        let mut t = SegmentTable::new(&[2, 2], 1 << 20);
        let a = t.alloc(SegState::Data).unwrap();
        let b = t.alloc(SegState::Data).unwrap();
        assert_ne!(a.group, b.group, "allocation rotates across groups");
        t.add_live(a, 100, 100);
        assert_eq!(t.live_total(), 100);
        assert_eq!(t.free_count(), 2);
        t.release(a);
        assert_eq!(t.live_total(), 0);
        assert_eq!(t.free_count(), 3);
        t.claim(b, SegState::Meta);
        assert_eq!(t.count(SegState::Meta), 1);
    }

    #[test]
    fn metadata_extents_pack_and_free_whole_segments() {
        let mut t = SegmentTable::new(&[6], 64 * 4096);
        let a = t.alloc_meta_blocks(10, MetaClass::Short).unwrap();
        let b = t.alloc_meta_blocks(60, MetaClass::Short).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].seg, b[0].seg, "small extents share a segment");
        assert_eq!(b.iter().map(|e| e.blocks).sum::<u32>(), 60);
        assert_eq!(b.len(), 2, "the rest spills into a fresh segment");
        assert_eq!(t.count(SegState::Meta), 2);
        assert_eq!(t.meta_live(), 70 * 4096);
        // The first segment is full and no longer appended to: freeing all
        // of its extents frees it.
        t.release_meta_blocks(&a);
        assert_eq!(t.count(SegState::Meta), 2);
        t.release_meta_blocks(&b[..1]);
        assert_eq!(t.count(SegState::Meta), 1);
        // The current segment stays while appended to, even when empty.
        t.release_meta_blocks(&b[1..]);
        assert_eq!(t.count(SegState::Meta), 1);
        assert_eq!(t.meta_live(), 0);
        assert!(
            t.alloc_meta_blocks(64 * 10, MetaClass::Short).is_none(),
            "not enough free segments"
        );
        assert_eq!(t.meta_live(), 0, "a failed allocation takes nothing");
    }

    #[test]
    fn long_lived_extents_do_not_pin_short_lived_segments() {
        let mut t = SegmentTable::new(&[6], 64 * 4096);
        let long = t.alloc_meta_blocks(8, MetaClass::Long).unwrap();
        let short: Vec<_> = (0..8)
            .map(|_| t.alloc_meta_blocks(16, MetaClass::Short).unwrap())
            .collect();
        assert!(
            short.iter().flatten().all(|e| e.seg != long[0].seg),
            "the classes append to segments of their own"
        );
        assert_eq!(t.count(SegState::Meta), 3, "one long, two short");
        // Every short-lived extent dies (a checkpoint later): all of their
        // segments but the one still appended to are free again, while the
        // long-lived run keeps only its own.
        for e in &short {
            t.release_meta_blocks(e);
        }
        assert_eq!(t.count(SegState::Meta), 2);
        assert_eq!(t.meta_live(), 8 * 4096);
    }
}
