//! Garbage collection of one chunk of a lineage: [`plan_gc`] drops every
//! block of every entry that no view of the lineage (snapshot, branch
//! point, live head) can see any more, after a snapshot or clone is gone.
//!
//! Keeps invariant 4 (a block some remaining view sees is never dropped)
//! and invariant 5 (deleting snapshots frees their space, also on a full
//! pool: collecting needs no new space).

use crate::catalog::Barrier;
use crate::layout::{chunk_start, CHUNK_BLOCKS};

use super::edit::{apply_local, freed_records, punch, whole_mask};
use super::view::{visibility, Vis};
use super::{ChunkChanges, Entries};

/// Garbage-collect one chunk of lineage L: drop every block of every entry
/// that no view of L can see. `views` are all epochs L is viewed at
/// (ascending, including a live head); `barriers` all of L's barriers.
pub fn plan_gc(entries: &Entries, lo: u64, views: &[u64], barriers: &[Barrier]) -> ChunkChanges {
    let lo = chunk_start(lo);
    let mut needed: Vec<u64> = vec![0; entries.len()];
    for &e in views {
        let vis = visibility(entries, lo, CHUNK_BLOCKS as usize, e, barriers);
        for (j, v) in vis.iter().enumerate() {
            if let Vis::Entry(i) = *v {
                needed[i] |= 1 << (lo + j as u64 - entries[i].0.lba);
            }
        }
    }
    let mut changes = Vec::new();
    for (i, (k, v)) in entries.iter().enumerate() {
        if chunk_start(k.lba) != lo {
            continue;
        }
        let remove = whole_mask(v) & !needed[i];
        if remove != 0 {
            punch(*k, v, remove, &mut changes);
        }
    }
    let after = apply_local(entries, &changes);
    let freed = freed_records(entries, &after);
    ChunkChanges { changes, freed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::testkit::{head, rec, M};
    use crate::chunk::{plan_write, NewValue};
    use crate::layout::{Paddr, SegId};

    #[test]
    fn snapshot_keeps_old_data_and_gc_frees_it_after_destroy() {
        let mut m = M::default();
        let c = plan_write(
            &m.chunk(1, 0),
            &head(1, 1),
            0,
            4,
            &[],
            &NewValue::Data(rec(0, 4)),
        );
        m.apply(&c);
        // Snapshot at epoch 1; head moves to 2.
        let c = plan_write(
            &m.chunk(1, 0),
            &head(1, 2),
            1,
            1,
            &[1],
            &NewValue::Data(rec(8192 * 10, 1)),
        );
        assert!(c.freed.is_empty());
        m.apply(&c);
        let snap = m.read(&vec![head(1, 1)], 0, 4);
        assert_eq!(
            snap.len(),
            1,
            "the snapshot still sees the whole old record"
        );
        let now = m.read(&vec![head(1, 2)], 0, 4);
        assert_eq!(now.len(), 3);
        // Destroy the snapshot: only the head view remains.
        let g = plan_gc(&m.chunk(1, 0), 0, &[2], &[]);
        assert_eq!(
            g.freed,
            vec![crate::chunk::Freed {
                rec: Paddr::new(SegId::new(0, 0), 0),
                stored: 4096,
                logical: 4096,
                gone: false,
                plain: true,
            }],
            "block 1 of the old record is dead; blocks 0,2,3 are still live"
        );
        m.apply(&g);
        assert_eq!(m.read(&vec![head(1, 2)], 0, 4), now);
        // Overwrite the rest in the head: now the old record dies.
        let c = plan_write(
            &m.chunk(1, 0),
            &head(1, 2),
            0,
            4,
            &[],
            &NewValue::Data(rec(1 << 20, 4)),
        );
        assert_eq!(c.freed.len(), 2);
        assert!(
            c.freed.iter().all(|f| f.gone),
            "no entry refers to either record: {:?}",
            c.freed
        );
    }
}
