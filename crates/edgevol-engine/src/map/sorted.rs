//! Scans in ascending key order that remember where each run was left:
//! the writer settles pending writes chunk by chunk in key order
//! (`pool/writer/settle.rs`), so the next chunk's entries usually sit in
//! the leaf the previous scan read. A [`SortedScan`] keeps, per run, that
//! leaf and the position in it; a scan at or after the previous one
//! continues from there (no index search, no cache lookup, a leaf already
//! in the CPU's cache), any other scan falls back to the index.
//!
//! Keeps invariant 2 (every map block read is verified: leaves come from
//! the same verified cache as every other scan) and invariant 6 (memory
//! bounded: one leaf per run is held).

use std::sync::Arc;

use super::run::{Block, BlockCache, BlockKind, BlockReader, Run};
use super::{merge, Key, Levels, Map, Value};
use crate::error::{Error, Result};

/// Where the last scan of one run ended: its leaf, the position of the
/// scan's lower bound in it, and that bound.
#[derive(Default, Clone)]
struct RunCursor {
    at: Option<(u32, Arc<Block>, usize, Key)>,
}

/// A sequence of ascending scans over the map's runs (see the module).
#[derive(Default)]
pub struct SortedScan {
    levels: Option<Arc<Levels>>,
    cursors: Vec<RunCursor>,
}

fn leaf_kind(run: &Run, leaf: u32, b: &Block) -> Result<()> {
    if b.kind() != BlockKind::Leaf {
        return Err(Error::corrupt(format!(
            "run {}: leaf block expected at {leaf}",
            run.meta().id
        )));
    }
    Ok(())
}

impl Run {
    /// Like [`Run::scan`] without a limit, continuing from `cur` when
    /// `lo` is at or after the key it was left at and inside its leaf.
    fn scan_at(
        &self,
        cur: &mut RunCursor,
        lo: &Key,
        hi: &Key,
        out: &mut Vec<(Key, Option<Value>)>,
        cache: &BlockCache,
        reader: &dyn BlockReader,
    ) -> Result<()> {
        let mut resumed = None;
        if let Some((leaf, b, pos, last)) = &cur.at {
            if *lo >= *last && !b.is_empty() {
                let end = b
                    .leaf_key(b.len() - 1)
                    .map_err(|e| self.damaged(*leaf, e))?;
                if *lo <= end {
                    let mut i = *pos;
                    while i < b.len() && b.leaf_key(i).map_err(|e| self.damaged(*leaf, e))? < *lo {
                        i += 1;
                    }
                    resumed = Some((*leaf, b.clone(), i));
                }
            }
        }
        let (mut leaf, mut b, mut i) = match resumed {
            Some(r) => r,
            None => {
                let Some(leaf) = self.leaf_for(lo)? else {
                    cur.at = None;
                    return Ok(());
                };
                let b = self.cached(leaf, cache, reader)?;
                leaf_kind(self, leaf, &b)?;
                let i = b.leaf_lower_bound(lo).map_err(|e| self.damaged(leaf, e))?;
                (leaf, b, i)
            }
        };
        cur.at = Some((leaf, b.clone(), i, *lo));
        loop {
            while i < b.len() {
                let k = b.leaf_key(i).map_err(|e| self.damaged(leaf, e))?;
                if k >= *hi {
                    return Ok(());
                }
                out.push(b.leaf_entry(i).map_err(|e| self.damaged(leaf, e))?);
                i += 1;
            }
            leaf += 1;
            if leaf >= self.meta().leaf_blocks {
                return Ok(());
            }
            b = self.cached(leaf, cache, reader)?;
            leaf_kind(self, leaf, &b)?;
            i = 0;
            // A later scan may continue here only from this leaf's first
            // key on: a scan from below it starts in an earlier leaf.
            if !b.is_empty() {
                let first = b.leaf_key(0).map_err(|e| self.damaged(leaf, e))?;
                cur.at = Some((leaf, b.clone(), 0, first));
            } else {
                cur.at = None;
            }
        }
    }
}

impl Map {
    /// Live entries with `lo <= key < hi` (no limit), like [`Map::scan`],
    /// continuing the runs' positions in `s` (see the module).
    pub fn scan_sorted(&self, s: &mut SortedScan, lo: Key, hi: Key) -> Result<Vec<(Key, Value)>> {
        let mut sources = Vec::new();
        let (frozen, levels) = {
            let g = self.state.read();
            let mut v = Vec::new();
            g.active.scan(&lo, &hi, usize::MAX, &mut v);
            sources.push((v, false));
            (g.frozen.clone(), g.levels.clone())
        };
        if let Some(f) = &frozen {
            let mut v = Vec::new();
            f.scan(&lo, &hi, usize::MAX, &mut v);
            sources.push((v, false));
        }
        if !s.levels.as_ref().is_some_and(|l| Arc::ptr_eq(l, &levels)) {
            s.cursors = vec![RunCursor::default(); levels.runs().count()];
            s.levels = Some(levels.clone());
        }
        for (r, cur) in levels.runs().zip(s.cursors.iter_mut()) {
            let mut v = Vec::new();
            r.scan_at(cur, &lo, &hi, &mut v, &self.cache, &*self.reader)?;
            sources.push((v, false));
        }
        let (merged, _) = merge(sources);
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::run::tests::build;
    use super::*;

    #[test]
    fn continued_scans_return_what_fresh_scans_do() {
        let (run, mem) = build(20_000, 1 << 20);
        let cache = BlockCache::new(1 << 20);
        let mut cur = RunCursor::default();
        // Ascending ranges with gaps of every size (inside a leaf, across
        // leaves), then a step back (the cursor must not be trusted).
        let mut x = 0u64;
        let mut step = 1u64;
        let mut seen = 0usize;
        for round in 0..600u64 {
            // Mostly ascending; the same range again (as settlement
            // scans a chunk once more), sometimes a step back.
            let lo = match round % 97 {
                96 => x / 2,
                r if r % 5 == 0 => x.saturating_sub(step + 40),
                _ => x,
            };
            let n = 1 + (round * 13) % 200;
            let (a, b) = (Key::lower(1, lo), Key::lower(1, lo + n));
            let mut fresh = Vec::new();
            run.scan(&a, &b, usize::MAX, &mut fresh, &cache, &mem)
                .unwrap();
            let mut cont = Vec::new();
            run.scan_at(&mut cur, &a, &b, &mut cont, &cache, &mem)
                .unwrap();
            assert_eq!(fresh, cont, "range {lo}..{}", lo + n);
            seen += fresh.len();
            x = lo + n + step;
            step = (step * 7 + 3) % 300;
        }
        assert!(seen > 1000, "the ranges met entries: {seen}");
    }
}
