//! What a view sees: per-block visibility within one lineage (newest
//! birth not after the view's epoch, not below a barrier), [`resolve`]
//! through a view chain into pieces, and the per-view tables the space
//! report and check count with.
//!
//! Keeps invariant 3 (unwritten and trimmed blocks read as zeroes, a view
//! never sees another lineage's data except through its own chain, and a
//! barrier stops data older than it from showing through) and invariant 4
//! (a frozen view's epoch fixes what it sees).

use crate::catalog::{Barrier, Chain};
use crate::error::Result;
use crate::layout::{chunk_start, CHUNK_BLOCKS};
use crate::map::{DataRef, Key, Value};

use super::Entries;

/// What a block reads as in some view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PieceKind {
    /// Never written (or trimmed with nothing to hide): zeroes, unallocated.
    Hole,
    /// Zeroes; `alloc` if written with NO_HOLE.
    Zero {
        /// Reported as allocated.
        alloc: bool,
    },
    /// Stored data (the fragment covering exactly this piece).
    Data(DataRef),
}

/// A run of blocks that read the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// First block.
    pub lba: u64,
    /// Number of blocks.
    pub nblocks: u32,
    /// What they hold.
    pub kind: PieceKind,
    /// Lineage and birth of the entry, for data and zero pieces.
    pub origin: Option<(u32, u64)>,
}

/// Per-block visibility within one lineage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Vis {
    /// Entry index.
    Entry(usize),
    /// A barrier hides older data and stops fall-through.
    Stop,
    /// Nothing here: look at the parent.
    Fall,
}

/// Visible entry per block of `[lo, lo + n)` at `epoch`, honouring barriers.
pub(super) fn visibility(
    entries: &Entries,
    lo: u64,
    n: usize,
    epoch: u64,
    barriers: &[Barrier],
) -> Vec<Vis> {
    let mut best: Vec<Option<(u64, usize)>> = vec![None; n];
    let hi = lo + n as u64;
    for (i, (k, v)) in entries.iter().enumerate() {
        if k.birth > epoch {
            continue;
        }
        let s = k.lba.max(lo);
        let e = (k.lba + u64::from(v.nblocks())).min(hi);
        for x in s..e {
            let slot = &mut best[(x - lo) as usize];
            if slot.is_none_or(|(b, _)| k.birth > b) {
                *slot = Some((k.birth, i));
            }
        }
    }
    (0..n)
        .map(|j| {
            let x = lo + j as u64;
            let floor = barriers
                .iter()
                .filter(|b| b.epoch <= epoch && x >= b.lba && x < b.end)
                .map(|b| b.epoch)
                .max();
            match (best[j], floor) {
                (Some((b, i)), f) if f.is_none_or(|f| b >= f) => Vis::Entry(i),
                (_, Some(_)) => Vis::Stop,
                (None, None) | (Some(_), None) => Vis::Fall,
            }
        })
        .collect()
}

/// Resolve what `[lo, lo + n)` reads as through a view chain. `scan` returns
/// the entries of a lineage that may cover `[from, to)` (those starting in
/// `[chunk_start(from), to)`).
pub fn resolve(
    chain: &Chain,
    lo: u64,
    n: u32,
    mut scan: impl FnMut(u32, u64, u64) -> Result<Vec<(Key, Value)>>,
) -> Result<Vec<Piece>> {
    let n = n as usize;
    // Per block: (step index, entry index) or hole.
    let mut got: Vec<Option<(usize, usize)>> = vec![None; n];
    let mut open: Vec<bool> = vec![true; n];
    let mut per_step: Vec<Vec<(Key, Value)>> = Vec::with_capacity(chain.len());
    for (si, step) in chain.iter().enumerate() {
        let Some(first) = open.iter().position(|&o| o) else {
            break;
        };
        let last = open.iter().rposition(|&o| o).unwrap_or(first);
        let from = lo + first as u64;
        let to = lo + last as u64 + 1;
        let entries = scan(step.lineage, chunk_start(from), to)?;
        let vis = visibility(
            &entries,
            from,
            (to - from) as usize,
            step.epoch,
            &step.barriers,
        );
        for (j, v) in vis.into_iter().enumerate() {
            let b = first + j;
            if !open[b] {
                continue;
            }
            match v {
                Vis::Entry(i) => {
                    got[b] = Some((si, i));
                    open[b] = false;
                }
                Vis::Stop => open[b] = false,
                Vis::Fall => {}
            }
        }
        per_step.push(entries);
    }
    // Coalesce blocks from the same entry into pieces.
    let mut out: Vec<Piece> = Vec::new();
    let mut j = 0usize;
    while j < n {
        let start = j;
        let cur = got[j];
        j += 1;
        while j < n && got[j] == cur && cur.is_some() {
            j += 1;
        }
        if cur.is_none() {
            while j < n && got[j].is_none() {
                j += 1;
            }
        }
        let lba = lo + start as u64;
        let nblocks = (j - start) as u32;
        let piece = match cur {
            None => Piece {
                lba,
                nblocks,
                kind: PieceKind::Hole,
                origin: None,
            },
            Some((si, ei)) => {
                let (k, v) = &per_step[si][ei];
                let from = (lba - k.lba) as u8;
                let to = from + nblocks as u8;
                let kind = match v.slice(from, to) {
                    Value::Data(d) => PieceKind::Data(d),
                    Value::Zero { alloc, .. } => PieceKind::Zero { alloc },
                };
                Piece {
                    lba,
                    nblocks,
                    kind,
                    origin: Some((k.lineage, k.birth)),
                }
            }
        };
        out.push(piece);
    }
    Ok(out)
}

/// For each view epoch, the entry index visible at each block of the chunk
/// starting at `lo` (None: nothing of this lineage is visible there).
pub fn views_per_block(
    entries: &Entries,
    lo: u64,
    epochs: &[u64],
    barriers: &[Barrier],
) -> Vec<Vec<Option<usize>>> {
    let lo = chunk_start(lo);
    epochs
        .iter()
        .map(|&e| {
            visibility(entries, lo, CHUNK_BLOCKS as usize, e, barriers)
                .into_iter()
                .map(|v| match v {
                    Vis::Entry(i) => Some(i),
                    Vis::Stop | Vis::Fall => None,
                })
                .collect()
        })
        .collect()
}

/// Count blocks of `pieces` that hold data.
pub fn data_blocks(pieces: &[Piece]) -> u64 {
    pieces
        .iter()
        .filter(|p| matches!(p.kind, PieceKind::Data(_)))
        .map(|p| u64::from(p.nblocks))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ViewStep;
    use crate::chunk::plan_gc;
    use crate::chunk::testkit::{head, M};

    #[test]
    fn barrier_hides_old_data_from_new_views_only() {
        let mut m = M::one_record();
        let b = Barrier {
            lba: 2,
            end: u64::MAX,
            epoch: 3,
        };
        let after = ViewStep {
            lineage: 1,
            epoch: 3,
            barriers: vec![b],
        };
        let p = m.read(&vec![after.clone()], 0, 4);
        assert_eq!(data_blocks(&p), 2);
        assert_eq!(p.last().unwrap().kind, PieceKind::Hole);
        assert_eq!(data_blocks(&m.read(&vec![head(1, 1)], 0, 4)), 4);
        // GC with only the post-barrier head: blocks 2,3 go.
        let g = plan_gc(&m.chunk(1, 0), 0, &[3], &[b]);
        m.apply(&g);
        assert_eq!(m.0.values().next().unwrap().nblocks(), 2);
    }
}
