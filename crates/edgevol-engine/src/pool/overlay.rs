//! Blind head writes (engine v2, step 1): the writer applies a client
//! write without reading the map. The write's fragment goes into the
//! **overlay**; the map entries it replaces, the space they free and the
//! head's referenced count are **settled** later by the writer, chunk by
//! chunk in key order ([`Writer::settle_some`], continuously in small
//! steps), or at once when something needs the settled map: before a
//! memtable rotation (a checkpoint covers only settled state), before
//! every catalog change, before an ENOSPC decision, and for the chunks a
//! trim, relocation, copy, move or collection touches (settle on touch).
//!
//! ```text
//!   write ──▶ overlay: (lineage, chunk) → [pending fragments, in lsn order]
//!                │ settle (one map scan per chunk, plan_write per fragment)
//!                ▼
//!             memtable entries + frees + referenced deltas
//! ```
//!
//! Readers see the settled view: [`Shared::scan`] copies the pending
//! fragments of the range first, then scans the map, then applies the
//! fragments with the same pure function settlement uses
//! ([`chunk::plan_write`]). The writer inserts a settled chunk's entries
//! before it removes the chunk's fragments, so a reader that raced a
//! settlement either sees the fragments on top of the map as it was, or
//! applies them a second time on top of their own result, which changes
//! nothing: every pending fragment of a lineage has the same birth and
//! frozen views (a catalog change settles everything first), and a head
//! write of one birth sets its blocks whatever they held.
//!
//! Keeps invariant 1 (acknowledged writes survive: the overlay is an
//! in-memory index of entries already in the log; recovery replays them
//! into it, and a checkpoint is only written over a settled map),
//! invariant 4 (snapshots are immutable: settlement plans with the frozen
//! views the write saw, and no view is added or removed while fragments
//! are pending) and invariant 5 (full is not fatal: an ENOSPC decision is
//! taken on settled numbers).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use crate::catalog::{Chain, ViewStep};
use crate::chunk::{self, NewValue};
use crate::error::Result;
use crate::layout::{chunk_start, CHUNK_BLOCKS};
use crate::map::{DataRef, Key, ScanPage, Value};

use super::Shared;

/// A head write applied to the log but not yet to the map.
pub(crate) struct Pending {
    /// The head view the write was made in (lineage, birth, barriers).
    pub head: ViewStep,
    /// The lineage's frozen views when the write was made.
    pub frozen: Arc<[u64]>,
    /// The head's read chain (for the referenced count).
    pub chain: Arc<Chain>,
    /// First block (the fragment lies inside one chunk).
    pub lba: u64,
    /// Blocks.
    pub n: u8,
    /// The record.
    pub data: DataRef,
}

impl Pending {
    /// The map changes of this write on `entries` (its lineage's entries
    /// of its chunk).
    pub(crate) fn plan(&self, entries: &[(Key, Value)]) -> chunk::ChunkChanges {
        chunk::plan_write(
            entries,
            &self.head,
            self.lba,
            self.n,
            &self.frozen,
            &NewValue::Data(self.data.clone()),
        )
    }
}

/// Fragments of one chunk, in lsn order.
pub(crate) type ChunkPending = Vec<Arc<Pending>>;

/// The pending fragments, by `(lineage, chunk start)`.
#[derive(Default)]
pub(crate) struct Overlay {
    chunks: BTreeMap<(u32, u64), ChunkPending>,
    frags: usize,
}

impl Overlay {
    /// Add a fragment.
    pub(crate) fn push(&mut self, p: Pending) {
        debug_assert!(chunk_start(p.lba) == chunk_start(p.lba + u64::from(p.n) - 1));
        self.chunks
            .entry((p.head.lineage, chunk_start(p.lba)))
            .or_default()
            .push(Arc::new(p));
        self.frags += 1;
    }

    /// Fragments pending.
    pub(crate) fn frags(&self) -> usize {
        self.frags
    }

    /// True if nothing is pending.
    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The fragments of chunk `key`.
    pub(crate) fn chunk(&self, key: (u32, u64)) -> Option<ChunkPending> {
        self.chunks.get(&key).cloned()
    }

    /// Forget the first `n` fragments of chunk `key` (they were settled;
    /// the writer may have appended more since).
    pub(crate) fn remove_settled(&mut self, key: (u32, u64), n: usize) {
        if let Some(v) = self.chunks.get_mut(&key) {
            let n = n.min(v.len());
            v.drain(..n);
            self.frags -= n;
            if v.is_empty() {
                self.chunks.remove(&key);
            }
        }
    }

    /// The first chunk with fragments at or after `from`.
    pub(crate) fn next_chunk(&self, from: (u32, u64)) -> Option<(u32, u64)> {
        self.chunks.range(from..).next().map(|(k, _)| *k)
    }

    /// Chunks of lineage `l` with fragments whose chunk meets `[from, to)`.
    pub(crate) fn chunks_in(&self, l: u32, from: u64, to: u64) -> Vec<(u32, u64)> {
        if from >= to {
            return Vec::new();
        }
        self.chunks
            .range((l, chunk_start(from))..(l, to))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Copies of the fragments whose chunk meets the key range `[lo, hi)`.
    fn range(&self, lo: &Key, hi: &Key) -> Vec<((u32, u64), ChunkPending)> {
        if self.chunks.is_empty() || lo >= hi {
            return Vec::new();
        }
        let start = (lo.lineage, chunk_start(lo.lba));
        // A chunk starting at `hi.lba` holds keys >= hi only if hi.birth == 0.
        let end = if hi.birth == 0 {
            Bound::Excluded((hi.lineage, hi.lba))
        } else {
            Bound::Included((hi.lineage, hi.lba))
        };
        self.chunks
            .range((Bound::Included(start), end))
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }
}

/// Apply map changes (in order) to sorted entries.
pub(crate) fn apply_changes_to(entries: &mut Vec<(Key, Value)>, changes: &[chunk::Change]) {
    for (k, v) in changes {
        match (entries.binary_search_by(|(x, _)| x.cmp(k)), v) {
            (Ok(i), Some(v)) => entries[i].1 = v.clone(),
            (Ok(i), None) => {
                entries.remove(i);
            }
            (Err(i), Some(v)) => entries.insert(i, (*k, v.clone())),
            (Err(_), None) => {}
        }
    }
}

/// A chunk's entries after its pending fragments.
pub(crate) fn settled(
    mut entries: Vec<(Key, Value)>,
    pending: &[Arc<Pending>],
) -> Vec<(Key, Value)> {
    for p in pending {
        let plan = p.plan(&entries);
        apply_changes_to(&mut entries, &plan.changes);
    }
    entries
}

fn chunk_key(k: &Key) -> (u32, u64) {
    (k.lineage, chunk_start(k.lba))
}

impl Shared {
    /// Live map entries with `lo <= key < hi` as if every pending write
    /// were settled: what every reader of the map outside the writer uses.
    /// Like [`crate::map::Map::scan`], at most about `limit` entries (a
    /// page ends at a chunk boundary when fragments are pending).
    pub(crate) fn scan(&self, lo: Key, hi: Key, limit: usize) -> Result<ScanPage> {
        // The overlay first, then the map: see the module comment.
        let pending = self.overlay.read().range(&lo, &hi);
        if pending.is_empty() {
            return self.map.scan(lo, hi, limit);
        }
        // Whole chunks: a fragment's plan needs every entry of its chunk.
        let (first, last) = (pending[0].0, pending[pending.len() - 1].0);
        let wlo = lo.min(Key::lower(first.0, first.1));
        let whi = hi.max(Key::lower(last.0, last.1 + CHUNK_BLOCKS));
        let mut page = self.map.scan(wlo, whi, limit)?;
        let mut stop = whi;
        if let Some(r) = page.resume {
            // Complete the chunk the limit cut, and resume after it.
            let next = Key::lower(r.lineage, chunk_start(r.lba) + CHUNK_BLOCKS);
            let rest = self.map.scan(r, next.min(whi), usize::MAX)?;
            page.entries.extend(rest.entries);
            stop = next.min(whi);
        }
        let mut out: Vec<(Key, Value)> = Vec::with_capacity(page.entries.len() + pending.len());
        let mut src = page.entries.into_iter().peekable();
        for (ck, frags) in pending
            .iter()
            .filter(|(ck, _)| Key::lower(ck.0, ck.1) < stop)
        {
            while let Some(e) = src.next_if(|(k, _)| chunk_key(k) < *ck) {
                out.push(e);
            }
            let mut mine = Vec::new();
            while let Some(e) = src.next_if(|(k, _)| chunk_key(k) == *ck) {
                mine.push(e);
            }
            out.extend(settled(mine, frags));
        }
        out.extend(src);
        out.retain(|(k, _)| *k >= lo && *k < hi && *k < stop);
        let resume = (stop < hi).then_some(stop);
        Ok(ScanPage {
            entries: out,
            resume,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::testkit::rec;

    fn pending(lineage: u32, lba: u64, n: u8, birth: u64, tag: u32) -> Pending {
        Pending {
            head: ViewStep {
                lineage,
                epoch: birth,
                barriers: Vec::new(),
            },
            frozen: Arc::from(Vec::new()),
            chain: Arc::new(Chain::new()),
            lba,
            n,
            data: rec(tag * 100_000, n),
        }
    }

    #[test]
    fn settling_twice_changes_nothing() {
        // The race the module comment describes: a reader may apply
        // fragments on top of their own settled result.
        let base = vec![(Key::new(1, 0, 1), Value::Data(rec(9 * 100_000, 16)))];
        let frags: Vec<Arc<Pending>> = vec![
            Arc::new(pending(1, 2, 4, 3, 1)),
            Arc::new(pending(1, 4, 8, 3, 2)),
            Arc::new(pending(1, 0, 1, 3, 3)),
        ];
        let once = settled(base.clone(), &frags);
        assert_eq!(settled(once.clone(), &frags), once);
        // And the result is what writing one by one gives.
        let mut seq = base;
        for f in &frags {
            let plan = f.plan(&seq);
            apply_changes_to(&mut seq, &plan.changes);
        }
        assert_eq!(seq, once);
        assert!(once.len() >= 4, "old record split around the new ones");
    }

    #[test]
    fn range_and_chunks() {
        let mut o = Overlay::default();
        o.push(pending(1, 3, 1, 1, 1));
        o.push(pending(1, 17, 2, 1, 2));
        o.push(pending(2, 0, 1, 1, 3));
        assert_eq!(o.frags(), 3);
        let r = o.range(&Key::lower(1, 5), &Key::lower(1, 16));
        assert_eq!(r.len(), 1, "chunk 0 meets [5,16), chunk 16 does not");
        assert_eq!(o.range(&Key::lower(1, 5), &Key::new(1, 16, 1)).len(), 2);
        assert_eq!(o.chunks_in(1, 0, 100), vec![(1, 0), (1, 16)]);
        assert_eq!(o.next_chunk((1, 1)), Some((1, 16)));
        o.remove_settled((1, 16), 1);
        assert_eq!(o.frags(), 2);
        assert_eq!(o.next_chunk((1, 1)), Some((2, 0)));
    }

    #[test]
    fn only_settled_fragments_are_dropped() {
        // A settler took two fragments of a chunk; the writer appended a
        // third meanwhile: it stays pending.
        let mut o = Overlay::default();
        o.push(pending(1, 0, 1, 1, 1));
        o.push(pending(1, 1, 1, 1, 2));
        let taken = o.chunk((1, 0)).unwrap().len();
        o.push(pending(1, 2, 1, 1, 3));
        o.remove_settled((1, 0), taken);
        let left = o.chunk((1, 0)).expect("the appended fragment");
        assert_eq!((left.len(), left[0].lba, o.frags()), (1, 2, 1));
        o.remove_settled((1, 0), 1);
        assert!(o.is_empty() && o.frags() == 0);
    }
}
