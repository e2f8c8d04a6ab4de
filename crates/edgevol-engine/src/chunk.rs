//! Per-chunk map algorithms, as pure functions over a chunk's entries.
//!
//! Every decision about a block needs only the entries of its chunk (records
//! never cross chunk boundaries), for one lineage, all births. These
//! functions take those entries and return the changes to make, so they can
//! be tested without devices, and so the writer, replay and the garbage
//! collector share one implementation.
//!
//! Visibility: view `(L, E)` sees at block X the entry of L covering X with
//! the newest birth `<= E` and `>= floor(X)` (barrier); if none, it falls
//! through to L's parent, unless a barrier covers X (then X is a hole).
//!
//! The free rule (ZFS's birth-time rule, per block): when the head of L
//! (epoch `c`) overwrites X whose head-visible entry was born at `b`, that
//! block of the entry is still needed iff some frozen view (snapshot or
//! branch point) of L lies in `[b, c)`. Otherwise it is punched out of the
//! entry, and its space is freed at once (see [`live_share`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::{Barrier, Chain, ViewStep};
use crate::error::Result;
use crate::layout::{chunk_start, Paddr, CHUNK_BLOCKS};
use crate::map::{DataRef, Key, Value};

/// Entries of one lineage, sorted by key.
pub type Entries = [(Key, Value)];

/// A change to the map: a new value, or `None` to delete the key.
pub type Change = (Key, Option<Value>);

/// What a chunk operation changes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChunkChanges {
    /// Map changes, to apply in order.
    pub changes: Vec<Change>,
    /// Space given up by records that lost blocks: `(record address, stored
    /// bytes, logical bytes)`, per [`live_share`].
    pub freed: Vec<(Paddr, u64, u64)>,
}

/// The live space a record accounts for while `blocks` of its blocks are
/// referenced: `(stored bytes, logical bytes)`.
///
/// Invariant: a segment's `live` is the sum of this over its records, so
/// it drops as soon as a block is overwritten, trimmed or collected —
/// writes at a full pool are not refused for space that is already dead.
/// A plain record counts 4 KiB per referenced block (exact: the cleaner
/// moves only referenced blocks). A packed (compressed or encrypted)
/// record counts its footprint pro rata; the cleaner re-stores the live
/// blocks of a partly dead packed record, so the rest does come back.
pub fn live_share(d: &DataRef, blocks: u64) -> (u64, u64) {
    let rec = u64::from(d.rec_blocks.max(1));
    (
        d.footprint() * blocks.min(rec) / rec,
        blocks * crate::layout::BLOCK_U64,
    )
}

/// Space freed when a record goes from `before` to `after` referenced blocks.
fn share_freed(d: &DataRef, before: u64, after: u64) -> Option<(Paddr, u64, u64)> {
    let (sb, lb) = live_share(d, before);
    let (sa, la) = live_share(d, after);
    (before > after).then_some((d.paddr, sb - sa, lb - la))
}

impl ChunkChanges {
    /// True if nothing changes.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.freed.is_empty()
    }

    /// Append another set of changes.
    pub fn extend(&mut self, other: ChunkChanges) {
        self.changes.extend(other.changes);
        self.freed.extend(other.freed);
    }
}

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
enum Vis {
    /// Entry index.
    Entry(usize),
    /// A barrier hides older data and stops fall-through.
    Stop,
    /// Nothing here: look at the parent.
    Fall,
}

/// Visible entry per block of `[lo, lo + n)` at `epoch`, honouring barriers.
fn visibility(entries: &Entries, lo: u64, n: usize, epoch: u64, barriers: &[Barrier]) -> Vec<Vis> {
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

/// Remove the blocks set in `remove` (bit i = block `key.lba + i`) from an
/// entry; returns the changes (the surviving fragments, and a deletion of
/// the key if no fragment starts at it).
fn punch(key: Key, value: &Value, remove: u64, out: &mut Vec<Change>) {
    let n = value.nblocks();
    let mut kept_first = false;
    let mut i = 0u8;
    while i < n {
        if remove & (1 << i) != 0 {
            i += 1;
            continue;
        }
        let s = i;
        while i < n && remove & (1 << i) == 0 {
            i += 1;
        }
        if s == 0 {
            kept_first = true;
            if i == n {
                return; // nothing removed
            }
        }
        out.push((
            Key::new(key.lineage, key.lba + u64::from(s), key.birth),
            Some(value.slice(s, i)),
        ));
    }
    if !kept_first {
        out.push((key, None));
    }
}

/// Apply `changes` to a copy of `entries` (same lineage, one chunk).
fn apply_local(entries: &Entries, changes: &[Change]) -> Vec<(Key, Value)> {
    let mut m: std::collections::BTreeMap<Key, Value> = entries.iter().cloned().collect();
    for (k, v) in changes {
        match v {
            Some(v) => {
                m.insert(*k, v.clone());
            }
            None => {
                m.remove(k);
            }
        }
    }
    m.into_iter().collect()
}

/// Referenced blocks per record.
fn blocks_per_record<'a>(entries: impl Iterator<Item = &'a Value>) -> BTreeMap<Paddr, u64> {
    let mut m = BTreeMap::new();
    for d in entries.filter_map(Value::data) {
        *m.entry(d.paddr).or_insert(0) += u64::from(d.nblocks);
    }
    m
}

/// Space freed between `before` and `after` (records that lost blocks).
fn freed_records(before: &Entries, after: &[(Key, Value)]) -> Vec<(Paddr, u64, u64)> {
    let b = blocks_per_record(before.iter().map(|(_, v)| v));
    let a = blocks_per_record(after.iter().map(|(_, v)| v));
    let mut seen = BTreeSet::new();
    before
        .iter()
        .filter_map(|(_, v)| v.data())
        .filter(|d| seen.insert(d.paddr))
        .filter_map(|d| share_freed(d, b[&d.paddr], a.get(&d.paddr).copied().unwrap_or(0)))
        .collect()
}

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
/// after with [`freed_records`], without rebuilding the chunk (this runs on
/// every write).
fn freed_by_removal(entries: &Entries, remove: &[u64]) -> Vec<(Paddr, u64, u64)> {
    let mut freed: Vec<(Paddr, u64, u64)> = Vec::new();
    for (i, (_, v)) in entries.iter().enumerate() {
        let Some(d) = v.data() else { continue };
        if remove[i] == 0 || freed.iter().any(|(p, _, _)| *p == d.paddr) {
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

/// Bit mask of an entry's blocks.
fn whole_mask(v: &Value) -> u64 {
    if v.nblocks() >= 64 {
        u64::MAX
    } else {
        (1u64 << v.nblocks()) - 1
    }
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
    use crate::layout::SegId;
    use std::collections::BTreeMap;

    fn rec(addr: u32, n: u8) -> DataRef {
        DataRef {
            paddr: Paddr::new(SegId::new(0, 0), addr),
            stored_len: u32::from(n) * 4096,
            rec_blocks: n,
            rec_off: 0,
            nblocks: n,
            comp: 0,
            enc: 0,
            seal: None,
            csums: (0..u32::from(n))
                .map(|i| addr + i)
                .collect::<Vec<_>>()
                .into(),
        }
    }

    fn head(l: u32, e: u64) -> ViewStep {
        ViewStep {
            lineage: l,
            epoch: e,
            barriers: vec![],
        }
    }

    /// A tiny in-memory map to drive the planners like the writer does.
    #[derive(Default)]
    struct M(BTreeMap<Key, Value>);
    impl M {
        fn chunk(&self, l: u32, lo: u64) -> Vec<(Key, Value)> {
            let lo = chunk_start(lo);
            self.0
                .range(Key::lower(l, lo)..Key::lower(l, lo + CHUNK_BLOCKS))
                .map(|(k, v)| (*k, v.clone()))
                .collect()
        }
        fn apply(&mut self, c: &ChunkChanges) {
            for (k, v) in &c.changes {
                match v {
                    Some(v) => {
                        self.0.insert(*k, v.clone());
                    }
                    None => {
                        self.0.remove(k);
                    }
                }
            }
        }
        fn read(&self, chain: &Chain, lo: u64, n: u32) -> Vec<Piece> {
            resolve(chain, lo, n, |l, f, t| {
                Ok(self
                    .0
                    .range(Key::lower(l, f)..Key::lower(l, t))
                    .map(|(k, v)| (*k, v.clone()))
                    .collect())
            })
            .unwrap()
        }
    }

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
            vec![(Paddr::new(SegId::new(0, 0), 0), 2 * 4096, 2 * 4096)],
            "the overwritten blocks' space comes back at once"
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
        let mut freed: Vec<(u32, u64)> = c.freed.iter().map(|f| (f.0.offset, f.1)).collect();
        freed.sort();
        assert_eq!(freed, vec![(0, 6 * 4096), (100_000, 2 * 4096)]);
        m.apply(&c);
        assert_eq!(m.0.len(), 1);
    }

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
            vec![(Paddr::new(SegId::new(0, 0), 0), 4096, 4096)],
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
    }

    #[test]
    fn clone_falls_through_and_trim_needs_a_tombstone() {
        let mut m = M::default();
        m.apply(&plan_write(
            &[],
            &head(1, 1),
            0,
            4,
            &[],
            &NewValue::Data(rec(0, 4)),
        ));
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

    #[test]
    fn barrier_hides_old_data_from_new_views_only() {
        let mut m = M::default();
        m.apply(&plan_write(
            &[],
            &head(1, 1),
            0,
            4,
            &[],
            &NewValue::Data(rec(0, 4)),
        ));
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

    #[test]
    fn relocation_is_conditional() {
        let mut m = M::default();
        m.apply(&plan_write(
            &[],
            &head(1, 1),
            0,
            4,
            &[],
            &NewValue::Data(rec(0, 4)),
        ));
        let key = Key::new(1, 0, 1);
        let old = Paddr::new(SegId::new(0, 0), 0);
        let c = plan_relocate(&m.chunk(1, 0), key, old, 0, 4, rec(4096 * 50, 4)).unwrap();
        assert_eq!(c.freed, vec![(old, 4 * 4096, 4 * 4096)]);
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
