//! Moves of stored data: the cleaner relocating a fragment
//! ([`plan_relocate`]) or a whole packed record ([`plan_move`]) out of a
//! segment it empties, and flatten copying an origin's data into a clone
//! ([`plan_copy`]).
//!
//! Keeps invariant 1 (acknowledged writes survive: a relocation applies
//! only if the fragment is still the one copied, so it never undoes a
//! newer write; a flatten copy fills only blocks the clone has not written)
//! and invariant 4 (a moved fragment keeps its key, so every view sees the
//! same bytes).

use crate::layout::Paddr;
use crate::map::{DataRef, Key, Value};

use super::edit::{apply_local, freed_records};
use super::{share_freed, ChunkChanges, Entries};

/// Move a fragment: if the entry at `key` still refers to `old` at
/// `old_rec_off` and covers `nblocks`, point it at `new` instead. Returns
/// None if the fragment changed meanwhile (the copy is then garbage).
pub fn plan_relocate(
    entries: &Entries,
    key: Key,
    old: Paddr,
    old_rec_off: u8,
    nblocks: u8,
    new: DataRef,
) -> Option<ChunkChanges> {
    let (_, v) = entries.iter().find(|(k, _)| *k == key)?;
    let d = v.data()?;
    if d.paddr != old || d.rec_off != old_rec_off || d.nblocks != nblocks {
        return None;
    }
    let changes = vec![(key, Some(Value::Data(new)))];
    let after = apply_local(entries, &changes);
    let freed = freed_records(entries, &after);
    Some(ChunkChanges { changes, freed })
}

/// The cleaner moved a whole stored record (compressed or encrypted) from
/// `old` to `new`: point every fragment of it (entries born at `birth`
/// referring to `old`) at the new place. Nothing changes if none is left
/// (the moved copy is then garbage).
pub fn plan_move(entries: &Entries, birth: u64, old: Paddr, new: Paddr) -> ChunkChanges {
    let mut changes = Vec::new();
    let mut blocks = 0;
    let mut any: Option<&DataRef> = None;
    for (k, v) in entries {
        if k.birth != birth {
            continue;
        }
        if let Some(d) = v.data().filter(|d| d.paddr == old) {
            blocks += u64::from(d.nblocks);
            any = Some(d);
            let mut moved = d.clone();
            moved.paddr = new;
            changes.push((*k, Some(Value::Data(moved))));
        }
    }
    let freed = any
        .and_then(|d| share_freed(d, blocks, 0))
        .into_iter()
        .collect();
    ChunkChanges { changes, freed }
}

/// A flatten copy: insert `value` (born at `base`, the lineage's oldest
/// epoch) at the blocks of `[lba, lba + n)` not already covered by an entry
/// born at `base`.
pub fn plan_copy(
    entries: &Entries,
    lineage: u32,
    lba: u64,
    base: u64,
    value: &DataRef,
) -> ChunkChanges {
    let n = value.nblocks;
    let mut covered = 0u64;
    for (k, v) in entries.iter().filter(|(k, _)| k.birth == base) {
        let s = k.lba.max(lba);
        let e = (k.lba + u64::from(v.nblocks())).min(lba + u64::from(n));
        for x in s..e {
            covered |= 1 << (x - lba);
        }
    }
    let mut changes = Vec::new();
    let mut i = 0u8;
    while i < n {
        if covered & (1 << i) != 0 {
            i += 1;
            continue;
        }
        let s = i;
        while i < n && covered & (1 << i) == 0 {
            i += 1;
        }
        changes.push((
            Key::new(lineage, lba + u64::from(s), base),
            Some(Value::Data(value.slice(s, i))),
        ));
    }
    ChunkChanges {
        changes,
        freed: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::testkit::{head, rec, M};
    use crate::chunk::{data_blocks, plan_write, Freed, NewValue, PieceKind};
    use crate::layout::SegId;

    #[test]
    fn relocation_is_conditional() {
        let mut m = M::one_record();
        let key = Key::new(1, 0, 1);
        let old = Paddr::new(SegId::new(0, 0), 0);
        let c = plan_relocate(&m.chunk(1, 0), key, old, 0, 4, rec(4096 * 50, 4)).unwrap();
        assert_eq!(
            c.freed,
            vec![Freed {
                rec: old,
                stored: 4 * 4096,
                logical: 4 * 4096,
                gone: true,
                plain: true,
            }]
        );
        m.apply(&c);
        assert!(plan_relocate(&m.chunk(1, 0), key, old, 0, 4, rec(4096 * 60, 4)).is_none());
    }
    #[test]
    fn copy_fills_only_uncovered_blocks() {
        let mut m = M::default();
        m.apply(&plan_write(
            &[],
            &head(2, 3),
            1,
            1,
            &[],
            &NewValue::Data(rec(0, 1)),
        ));
        let c = plan_copy(&m.chunk(2, 0), 2, 0, 3, &rec(4096 * 10, 4));
        m.apply(&c);
        let p = m.read(&vec![head(2, 3)], 0, 4);
        assert_eq!(data_blocks(&p), 4);
        match &p[1].kind {
            PieceKind::Data(d) => assert_eq!(d.paddr.offset, 0, "the clone's own write wins"),
            k => panic!("{k:?}"),
        }
    }
}
