//! The state machine: how a log entry — a client write, trim or zero, a
//! relocation, a flatten copy, a moved record — changes the map, the space
//! counters and the referenced-data deltas. It runs for every batch
//! written ([`Writer::apply_sealed`]) and for every batch recovery finds
//! ([`Writer::replay_batch`]), so a recovered pool reaches exactly the
//! state the running pool had. A head write is applied blind (into the
//! overlay, settled later: `settle.rs`); every other entry settles the
//! chunks it reads first.
//!
//! Keeps invariant 1 (acknowledged writes survive) by being the one code
//! path for running and replay; invariant 3 (zeroes, no foreign bytes) by
//! keying every change by its lineage and turning trims and zeroes into
//! holes and tombstones; invariant 4 (snapshots are immutable) by planning
//! every head change against the lineage's frozen views, whose records it
//! keeps.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::catalog::ViewStep;
use crate::chunk::{self, ChunkChanges, NewValue};
use crate::error::Result;
use crate::format::batch::{BatchHeader, EntryKind, LogEntry, FLAG_ZERO_ALLOC};
use crate::layout::{chunk_start, Paddr, CHUNK_BLOCKS};
use crate::map::{DataRef, Key, Value};

use super::{Sealed, Writer, STREAMS};
use crate::pool::space::SegState;

/// Most blocks of a discard resolved at once.
const DISCARD_WINDOW: u64 = 8192;

impl Writer {
    /// A sealed batch is on the device: account for it and apply its entries.
    pub(super) fn apply_sealed(&mut self, b: Sealed) -> Result<()> {
        let total = u64::from(b.total);
        debug_assert!(b.stream < STREAMS);
        self.sh.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.sh
            .stats
            .bytes_written
            .fetch_add(total, Ordering::Relaxed);
        self.last_written_lsn = self.last_written_lsn.max(b.lsn);
        self.sh
            .segs
            .lock()
            .note_write(b.at.seg, b.at.offset + total as u32, b.lsn);
        let mut reloc_done = 0u64;
        for e in &b.entries {
            reloc_done += self.apply_entry(e, b.at)?;
        }
        self.sh
            .stats
            .relocated
            .fetch_add(reloc_done, Ordering::Relaxed);
        Ok(())
    }

    /// The map's entries of lineage `l` in `[from, to)`, pending writes
    /// there settled first.
    fn scan(&mut self, l: u32, from: u64, to: u64) -> Result<Vec<(Key, Value)>> {
        self.settle_range(l, from, to)?;
        self.raw_scan(l, from, to)
    }

    /// The map's entries as they are (pending writes not applied).
    pub(super) fn raw_scan(&self, l: u32, from: u64, to: u64) -> Result<Vec<(Key, Value)>> {
        Ok(self
            .sh
            .map
            .scan(Key::lower(l, from), Key::lower(l, to), usize::MAX)?
            .entries)
    }

    pub(super) fn chunk_entries(&mut self, l: u32, lba: u64) -> Result<Vec<(Key, Value)>> {
        let c = chunk_start(lba);
        self.scan(l, c, c + CHUNK_BLOCKS)
    }

    pub(super) fn apply_changes(&mut self, c: ChunkChanges, new: Option<&DataRef>) {
        super::super::settler::install(&self.sh, c, new);
    }

    /// Apply one log entry (running or replaying). Returns fragments relocated.
    pub(crate) fn apply_entry(&mut self, e: &LogEntry, batch_at: Paddr) -> Result<u64> {
        let Some(lin) = self.cat.lineages.get(&e.lineage) else {
            return Ok(0); // the lineage is gone: its data is garbage
        };
        let barriers: Vec<_> = lin
            .barriers
            .iter()
            .filter(|b| b.epoch <= e.birth)
            .copied()
            .collect();
        let data_ref = |nblocks: u32| DataRef {
            paddr: Paddr::new(batch_at.seg, batch_at.offset + e.payload_off),
            stored_len: e.stored_len,
            rec_blocks: nblocks as u8,
            rec_off: 0,
            nblocks: nblocks as u8,
            comp: e.comp,
            enc: e.enc,
            csums: e.csums.clone().into(),
            seal: e.seal.map(Arc::new),
        };
        match e.kind {
            EntryKind::Write => {
                let head = ViewStep {
                    lineage: e.lineage,
                    epoch: e.birth,
                    barriers,
                };
                self.apply_blind(head, e.lba, e.nblocks as u8, data_ref(e.nblocks));
                self.mark_dirty(e.lineage, e.birth);
                Ok(0)
            }
            EntryKind::Trim | EntryKind::Zero => {
                let head = ViewStep {
                    lineage: e.lineage,
                    epoch: e.birth,
                    barriers,
                };
                let nv = if e.kind == EntryKind::Zero && e.flags & FLAG_ZERO_ALLOC != 0 {
                    NewValue::ZeroAlloc
                } else {
                    NewValue::Trim
                };
                self.apply_discard(&head, e.lba, u64::from(e.nblocks), nv)?;
                Ok(0)
            }
            EntryKind::Relocate => {
                let Some((old, old_off)) = e.reloc_from else {
                    return Ok(0);
                };
                let key = Key::new(e.lineage, e.lba, e.birth);
                let new = data_ref(e.nblocks);
                let entries = self.chunk_entries(e.lineage, e.lba)?;
                match chunk::plan_relocate(
                    &entries,
                    key,
                    old,
                    old_off,
                    e.nblocks as u8,
                    new.clone(),
                ) {
                    Some(plan) => {
                        self.apply_changes(plan, Some(&new));
                        Ok(1)
                    }
                    None => Ok(0),
                }
            }
            EntryKind::Copy => {
                let new = data_ref(e.nblocks);
                let entries = self.chunk_entries(e.lineage, e.lba)?;
                let plan = chunk::plan_copy(&entries, e.lineage, e.lba, e.birth, &new);
                self.apply_changes(plan, Some(&new));
                Ok(0)
            }
            EntryKind::Move => {
                let Some((old, _)) = e.reloc_from else {
                    return Ok(0);
                };
                let new = Paddr::new(batch_at.seg, batch_at.offset + e.payload_off);
                let entries = self.chunk_entries(e.lineage, e.lba)?;
                let plan = chunk::plan_move(&entries, e.birth, old, new);
                let moved = plan.changes.len() as u64;
                if let Some((_, Some(Value::Data(d)))) = plan.changes.first() {
                    let d = d.clone();
                    self.apply_changes(plan, Some(&d));
                }
                Ok(moved)
            }
        }
    }

    /// A head trim or zero of `[lba, lba + n)` at `head.epoch` (writes
    /// are applied blind: settle.rs).
    fn apply_discard(&mut self, head: &ViewStep, lba: u64, n: u64, new: NewValue) -> Result<()> {
        debug_assert!(!matches!(new, NewValue::Data(_)));
        let l = head.lineage;
        let (frozen, chain) = self.views_of(l, head.epoch);
        let end = lba + n;
        // Change of data blocks the head sees (for `referenced`).
        let mut delta: i64 = 0;
        // Bounded windows: a discard may cover a whole volume.
        let mut w = lba;
        while w < end {
            let wend = (chunk_start(w) + DISCARD_WINDOW).min(end);
            // Whole chunks: deciding whether a record dies needs
            // every fragment in its chunk, not only those in range.
            let all = self.scan(l, chunk_start(w), chunk_start(wend - 1) + CHUNK_BLOCKS)?;
            // The tombstones below resolve through the ancestors too.
            self.settle_chain(&chain, w, wend)?;
            let before = self.resolve_with(&chain, &all, w, wend - w)?;
            delta -= chunk::data_blocks(&before) as i64;
            let mut x = w;
            while x < wend {
                let stop = (chunk_start(x) + CHUNK_BLOCKS).min(wend);
                let c = chunk_start(x);
                let entries: Vec<(Key, Value)> = all
                    .iter()
                    .filter(|(k, _)| chunk_start(k.lba) == c)
                    .cloned()
                    .collect();
                // Only chunks where this lineage has entries need punching.
                if !entries.is_empty() || matches!(new, NewValue::ZeroAlloc) {
                    let plan =
                        chunk::plan_write(&entries, head, x, (stop - x) as u8, &frozen, &new);
                    self.apply_changes(plan, None);
                }
                x = stop;
            }
            let shows = before
                .iter()
                .any(|p| !matches!(p.kind, chunk::PieceKind::Hole));
            if matches!(new, NewValue::Trim) && shows {
                let sh = self.sh.clone();
                let after = chunk::resolve(&chain, w, (wend - w) as u32, |l, f, t| {
                    Ok(sh
                        .map
                        .scan(Key::lower(l, f), Key::lower(l, t), usize::MAX)?
                        .entries)
                })?;
                let t = chunk::plan_tombstones(l, head.epoch, &after);
                self.sh.map.insert_all(t);
            }
            w = wend;
        }

        super::super::settler::add_referenced(&self.sh, l, delta);
        self.mark_dirty(l, head.epoch);
        Ok(())
    }

    /// The volume whose head is `(l, epoch)` changed.
    fn mark_dirty(&mut self, l: u32, epoch: u64) {
        if let Some(v) = self
            .cat
            .volumes
            .values_mut()
            .find(|v| v.head == l && v.head_epoch == epoch)
        {
            v.dirty = true;
        }
    }

    /// Resolve `[lba, lba + n)` through `chain`, taking the head lineage's
    /// entries from `head_entries` (a scan covering the range from its
    /// chunk's start) and scanning the map for the ancestors only.
    pub(super) fn resolve_with(
        &self,
        chain: &crate::catalog::Chain,
        head_entries: &[(Key, Value)],
        lba: u64,
        n: u64,
    ) -> Result<Vec<chunk::Piece>> {
        super::super::settler::resolve_with(&self.sh, chain, head_entries, lba, n)
    }

    /// The frozen views and the read chain of `(l, epoch)`, cached until
    /// the catalog changes.
    pub(super) fn views_of(
        &mut self,
        l: u32,
        epoch: u64,
    ) -> (Arc<[u64]>, Arc<crate::catalog::Chain>) {
        if self.view_cache.0 != self.cat.next_id
            || self.view_cache.1 != self.cat.next_epoch
            || self.view_cache.2 != self.cat_gen
        {
            self.view_cache = (
                self.cat.next_id,
                self.cat.next_epoch,
                self.cat_gen,
                BTreeMap::new(),
            );
        }
        self.view_cache
            .3
            .entry((l, epoch))
            .or_insert_with(|| {
                (
                    Arc::from(self.cat.frozen_views(l)),
                    Arc::new(self.cat.chain(l, epoch)),
                )
            })
            .clone()
    }

    /// Data blocks visible through `chain` in `[from, to)`.
    pub(super) fn data_blocks_in(
        &self,
        chain: &crate::catalog::Chain,
        from: u64,
        to: u64,
    ) -> Result<u64> {
        crate::pool::walk::data_blocks(&self.sh, chain, from, to)
    }

    /// Data blocks the head of `vol` sees now.
    pub(super) fn referenced(&self, vol: u64) -> u64 {
        let Ok(v) = self.cat.volume(vol) else {
            return 0;
        };
        let base = self
            .cat
            .lineages
            .get(&v.head)
            .map_or(0, |l| l.base_referenced);
        let d = self
            .sh
            .lineage_delta
            .lock()
            .get(&v.head)
            .copied()
            .unwrap_or(0);
        (base + d).max(0) as u64
    }

    /// Replay one batch found during recovery.
    pub(crate) fn replay_batch(
        &mut self,
        h: &BatchHeader,
        at: Paddr,
        valid: &[bool],
        crc: u32,
    ) -> Result<()> {
        let s = h.stream as usize;
        if let Some(st) = self.streams.get_mut(s) {
            st.seg = Some(h.segment);
            st.off = at.offset + h.total_len;
            st.next = Some(h.next_segment);
            st.prev_lsn = h.lsn;
            st.prev_crc = crc;
        }
        {
            let mut segs = self.sh.segs.lock();
            segs.claim(h.segment, SegState::Data);
            segs.claim(h.next_segment, SegState::Data);
            segs.note_write(h.segment, at.offset + h.total_len, h.lsn);
        }
        self.next_lsn = self.next_lsn.max(h.lsn + 1);
        self.last_written_lsn = self.last_written_lsn.max(h.lsn);
        self.log_since_replay += u64::from(h.total_len);
        for (e, ok) in h.entries.iter().zip(valid) {
            if *ok {
                self.apply_entry(e, at)?;
            }
        }
        Ok(())
    }
}
