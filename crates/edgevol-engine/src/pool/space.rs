//! The segment table: state and live bytes of every segment, and the free
//! lists.
//!
//! Live bytes count whole records that are still referenced by at least one
//! map entry. Freeing is two-phase: a data segment whose live bytes reach
//! zero is only returned to the free list when the *persisted* state no
//! longer needs it (see `writer.rs`: the counters captured at memtable
//! rotation, and the replay point), and after in-flight readers drained.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::layout::SegId;

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
}

impl SegInfo {
    const FREE: SegInfo = SegInfo {
        state: SegState::Free,
        live: 0,
        written: 0,
        max_lsn: 0,
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
}

impl SegmentTable {
    /// All segments free; `sizes[g]` segments in group g.
    pub fn new(sizes: &[u32]) -> SegmentTable {
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
        };
        t.rebuild_free();
        t
    }

    /// From persisted counters (extra segments beyond them are free; missing
    /// ones are dropped).
    pub fn from_counters(sizes: &[u32], c: &Counters) -> SegmentTable {
        let mut t = SegmentTable::new(sizes);
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

    /// Take a free segment for `state`, rotating across groups (striping).
    pub fn alloc(&mut self, state: SegState) -> Option<SegId> {
        let n = self.free.len();
        for k in 0..n {
            let g = (self.next_group + k) % n;
            if let Some(&i) = self.free[g].iter().next() {
                self.free[g].remove(&i);
                self.next_group = (g + 1) % n;
                let seg = SegId::new(g as u8, i);
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

    /// Return a segment to the free list.
    pub fn release(&mut self, seg: SegId) {
        let live = match self.get_mut(seg) {
            Some(s) => {
                let live = if s.state == SegState::Data { s.live } else { 0 };
                *s = SegInfo::FREE;
                live
            }
            None => return,
        };
        self.live_total -= live;
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

    /// Add live bytes.
    pub fn add_live(&mut self, seg: SegId, bytes: u64) {
        if let Some(s) = self.get_mut(seg) {
            s.live += bytes;
            self.live_total += bytes;
        }
    }

    /// Remove live bytes (saturating: accounting errors are reported by check).
    pub fn sub_live(&mut self, seg: SegId, bytes: u64) {
        if let Some(s) = self.get_mut(seg) {
            let b = bytes.min(s.live);
            s.live -= b;
            self.live_total -= b;
        }
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
        let mut t = SegmentTable::new(&[2, 2]);
        let a = t.alloc(SegState::Data).unwrap();
        let b = t.alloc(SegState::Data).unwrap();
        assert_ne!(a.group, b.group, "allocation rotates across groups");
        t.add_live(a, 100);
        assert_eq!(t.live_total(), 100);
        assert_eq!(t.free_count(), 2);
        t.release(a);
        assert_eq!(t.live_total(), 0);
        assert_eq!(t.free_count(), 3);
        t.claim(b, SegState::Meta);
        assert_eq!(t.count(SegState::Meta), 1);
    }
}
