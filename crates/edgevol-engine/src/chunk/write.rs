//! A head write, trim or zero of part of one chunk: [`plan_write`] punches
//! the blocks it covers out of the head-visible entries no frozen view
//! needs (the free rule) and inserts the new value; [`plan_tombstones`]
//! then hides what a trim would otherwise let show through.
//!
//! Keeps invariant 3 (trimmed blocks read as zeroes: tombstones stop
//! fall-through to older data and to the origin of a clone), invariant 4
//! (snapshots are immutable: a block some frozen view of the lineage sees
//! is never punched out) and invariant 5 (full is not fatal: the space of
//! overwritten blocks no view needs is freed by the write itself).

use crate::catalog::ViewStep;
use crate::layout::{chunk_start, CHUNK_BLOCKS};
use crate::map::{DataRef, Key, Value};

use super::edit::{punch, whole_mask};
use super::view::{visibility, Vis};
use super::{share_freed, Change, ChunkChanges, Entries, Freed, Piece, PieceKind};

/// True if some frozen view lies in `[b, c)`.
fn needed_by_frozen(frozen_views: &[u64], b: u64, c: u64) -> bool {
    let i = frozen_views.partition_point(|&e| e < b);
    frozen_views.get(i).is_some_and(|&e| e < c)
}

/// What a head write puts at its blocks.
#[derive(Debug, Clone)]
pub enum NewValue {
    /// New data (the whole record, `rec_off == 0`, covering the range).
    Data(DataRef),
    /// Zeroes that stay allocated.
    ZeroAlloc,
    /// Deallocate: nothing is inserted here; the caller adds tombstones
    /// where older data would otherwise show through (see [`plan_tombstones`]).
    Trim,
}

/// Plan a head write of `[lba, lba + n)` (inside one chunk) born at `birth`
/// (the head epoch) in lineage `head.lineage`. `entries` are all entries of
/// that lineage in the chunk; `frozen_views` the lineage's frozen views.
pub fn plan_write(
    entries: &Entries,
    head: &ViewStep,
    lba: u64,
    n: u8,
    frozen_views: &[u64],
    new: &NewValue,
) -> ChunkChanges {
    debug_assert!(
        u64::from(n) <= CHUNK_BLOCKS && lba % CHUNK_BLOCKS + u64::from(n) <= CHUNK_BLOCKS
    );
    let birth = head.epoch;
    let vis = visibility(entries, lba, n as usize, birth, &head.barriers);
    // Blocks to remove, per entry index.
    let mut remove: Vec<u64> = vec![0; entries.len()];
    for (j, v) in vis.iter().enumerate() {
        if let Vis::Entry(i) = *v {
            let (k, _) = &entries[i];
            if k.birth == birth || !needed_by_frozen(frozen_views, k.birth, birth) {
                remove[i] |= 1 << (lba + j as u64 - k.lba);
            }
        }
    }
    // An entry born in this epoch is always head-visible where it lies
    // (nothing is newer), so it is punched above: the new key never collides
    // with an overlapping entry of the same birth.
    let mut changes = Vec::new();
    for (i, (k, v)) in entries.iter().enumerate() {
        if remove[i] != 0 {
            punch(*k, v, remove[i], &mut changes);
        }
    }
    let new_value = match new {
        NewValue::Data(d) => Some(Value::Data(d.clone())),
        NewValue::ZeroAlloc => Some(Value::Zero {
            nblocks: n,
            alloc: true,
        }),
        NewValue::Trim => None,
    };
    if let Some(v) = new_value {
        changes.push((Key::new(head.lineage, lba, birth), Some(v)));
    }
    let freed = freed_by_removal(entries, &remove);
    ChunkChanges { changes, freed }
}

/// Space freed once the blocks in `remove` (per entry, bit i = block
/// `key.lba + i`) are punched out. Same result as comparing before and
/// after with [`super::edit::freed_records`], without rebuilding the chunk (this runs on
/// every write).
fn freed_by_removal(entries: &Entries, remove: &[u64]) -> Vec<Freed> {
    let mut freed: Vec<Freed> = Vec::new();
    for (i, (_, v)) in entries.iter().enumerate() {
        let Some(d) = v.data() else { continue };
        if remove[i] == 0 || freed.iter().any(|f| f.rec == d.paddr) {
            continue;
        }
        // Every entry of this record: blocks referenced, and removed.
        let (mut had, mut lost) = (0u64, 0u64);
        for (j, (_, w)) in entries.iter().enumerate() {
            if w.data().is_some_and(|e| e.paddr == d.paddr) {
                had += u64::from(w.nblocks());
                lost += u64::from((remove[j] & whole_mask(w)).count_ones());
            }
        }
        freed.extend(share_freed(d, had, had - lost));
    }
    freed
}

/// After a trim's punches are applied, add tombstones (zero, unallocated)
/// at the blocks of `pieces` (the head's resolution of the trimmed range)
/// that still show data or allocated zeroes.
pub fn plan_tombstones(lineage: u32, birth: u64, pieces: &[Piece]) -> Vec<Change> {
    let mut out = Vec::new();
    for p in pieces {
        let shows = matches!(p.kind, PieceKind::Data(_) | PieceKind::Zero { alloc: true });
        if !shows {
            continue;
        }
        // Split at chunk boundaries: entries never cross them.
        let mut x = p.lba;
        let end = p.lba + u64::from(p.nblocks);
        while x < end {
            let stop = (chunk_start(x) + CHUNK_BLOCKS).min(end);
            out.push((
                Key::new(lineage, x, birth),
                Some(Value::Zero {
                    nblocks: (stop - x) as u8,
                    alloc: false,
                }),
            ));
            x = stop;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Chain;
    use crate::chunk::data_blocks;
    use crate::chunk::testkit::{head, rec, M};
    use crate::layout::{Paddr, SegId};

    #[test]
    fn overwrite_in_same_epoch_frees_and_splits() {
        let mut m = M::default();
        let h = head(1, 5);
        let c = plan_write(&m.chunk(1, 0), &h, 0, 8, &[], &NewValue::Data(rec(0, 8)));
        m.apply(&c);
        let c = plan_write(
            &m.chunk(1, 2),
            &h,
            2,
            2,
            &[],
            &NewValue::Data(rec(100_000, 2)),
        );
        assert_eq!(
            c.freed,
            vec![Freed {
                rec: Paddr::new(SegId::new(0, 0), 0),
                stored: 2 * 4096,
                logical: 2 * 4096,
                gone: false,
                plain: true,
            }],
            "the overwritten blocks' space comes back at once; the rest stays"
        );
        m.apply(&c);
        let ks: Vec<u64> = m.0.keys().map(|k| k.lba).collect();
        assert_eq!(ks, vec![0, 2, 4]);
        let pieces = m.read(&vec![h.clone()], 0, 8);
        assert_eq!(pieces.len(), 3);
        match &pieces[2].kind {
            PieceKind::Data(d) => assert_eq!((d.rec_off, &*d.csums), (4, &[4, 5, 6, 7][..])),
            k => panic!("{k:?}"),
        }
        // Overwrite everything: both records are freed.
        let c = plan_write(
            &m.chunk(1, 0),
            &h,
            0,
            8,
            &[],
            &NewValue::Data(rec(200_000, 8)),
        );
        let mut freed: Vec<(u32, u64, bool)> = c
            .freed
            .iter()
            .map(|f| (f.rec.offset, f.stored, f.gone))
            .collect();
        freed.sort();
        assert_eq!(freed, vec![(0, 6 * 4096, true), (100_000, 2 * 4096, true)]);
        m.apply(&c);
        assert_eq!(m.0.len(), 1);
    }

    #[test]
    fn clone_falls_through_and_trim_needs_a_tombstone() {
        let mut m = M::one_record();
        let clone: Chain = vec![head(2, 3), head(1, 1)];
        let p = m.read(&clone, 0, 4);
        assert_eq!(data_blocks(&p), 4);
        // Trim block 1 in the clone: nothing to punch in lineage 2, but the
        // origin's data would show through, so a tombstone is needed.
        let c = plan_write(&m.chunk(2, 1), &clone[0], 1, 1, &[], &NewValue::Trim);
        assert!(c.changes.is_empty());
        let after = m.read(&clone, 1, 1);
        let t = plan_tombstones(2, 3, &after);
        assert_eq!(t.len(), 1);
        m.apply(&ChunkChanges {
            changes: t,
            freed: vec![],
        });
        let p = m.read(&clone, 0, 4);
        assert_eq!(data_blocks(&p), 3);
        assert_eq!(p[1].kind, PieceKind::Zero { alloc: false });
        // The origin is untouched.
        assert_eq!(data_blocks(&m.read(&vec![head(1, 1)], 0, 4)), 4);
    }
}
