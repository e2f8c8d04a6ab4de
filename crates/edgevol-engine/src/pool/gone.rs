//! Records known to be dead: a hint that spares the cleaner one map lookup
//! per dead record of a victim segment.
//!
//! Why: at an 11% live victim (4 KiB random overwrites, the common case)
//! the cleaner looked up all ~2,000 records of an 8 MiB segment to find
//! the ~220 still referenced; the lookups were half of a victim's time
//! (17 of 35 ms, cold run leaves). When the settler or the collector
//! frees the last reference to a record, it marks the record here, and
//! the cleaner skips marked records without a lookup.
//!
//! What it is: one bit per 4 KiB slot of a data segment, set when the
//! plain record that starts in that slot lost its last map entry. Plain
//! records start on 4 KiB boundaries and own their slots, so a bit names
//! one record; packed records share slots and are never consulted. Only
//! in memory: after an import every record is looked up again.
//!
//! Why a wrong bit cannot lose data (invariant 1): a segment is freed only
//! when its live bytes reach zero (`writer/flush.rs`), and a record skipped
//! while still referenced keeps its share in them, so the segment stays.
//! The bit is right by construction besides: records never cross chunk
//! boundaries and only their own lineage's entries refer to them, so the
//! chunk operation that drops the last entry knows it is the last
//! (`chunk::Freed::gone`), and nothing refers to a dead record again.
//!
//! Memory: 1 bit per 4 KiB of data segments that have dead records,
//! bounded by [`BUDGET_BYTES`]; segments beyond it get no hint and are
//! looked up as before. Bits go when their segment is freed or reused.

use std::collections::HashMap;

use crate::layout::{Paddr, SegId, BLOCK};

/// The most memory the hints may take: 4 MiB covers 128 GiB of data
/// segments that hold dead records.
pub const BUDGET_BYTES: usize = 4 << 20;

/// Dead-record bits per data segment.
pub struct GoneHints {
    bits: HashMap<SegId, Box<[u64]>>,
    words: usize,
    max_segs: usize,
}

impl GoneHints {
    /// Hints for segments of `seg_blocks` 4 KiB blocks, at most
    /// `budget` bytes of bits.
    pub fn new(seg_blocks: u32, budget: usize) -> GoneHints {
        let words = (seg_blocks as usize).div_ceil(64).max(1);
        GoneHints {
            bits: HashMap::new(),
            words,
            max_segs: budget / (words * 8),
        }
    }

    /// The plain record at `rec` lost its last reference.
    pub fn mark(&mut self, rec: Paddr) {
        let Some(slot) = slot(rec.offset).filter(|s| *s < self.words * 64) else {
            return;
        };
        let full = self.bits.len() >= self.max_segs;
        let words = self.words;
        let b = match self.bits.get_mut(&rec.seg) {
            Some(b) => b,
            None if full => return,
            None => self
                .bits
                .entry(rec.seg)
                .or_insert_with(|| vec![0u64; words].into_boxed_slice()),
        };
        b[slot / 64] |= 1 << (slot % 64);
    }

    /// The dead-record bits of `seg`, if any were marked.
    pub fn of(&self, seg: SegId) -> Option<Dead> {
        self.bits.get(&seg).map(|b| Dead(b.clone()))
    }

    /// Forget `seg` (freed, or taken for new records).
    pub fn forget(&mut self, seg: SegId) {
        self.bits.remove(&seg);
    }

    /// Forget every segment.
    pub fn clear(&mut self) {
        self.bits.clear();
    }
}

/// A copy of one segment's dead-record bits.
#[derive(Debug, Clone)]
pub struct Dead(Box<[u64]>);

impl Dead {
    /// True if the plain record at byte `offset` of the segment is dead.
    pub fn is_dead(&self, offset: u32) -> bool {
        slot(offset).is_some_and(|slot| {
            self.0
                .get(slot / 64)
                .is_some_and(|w| w & (1 << (slot % 64)) != 0)
        })
    }
}

/// The 4 KiB slot a record at byte `offset` of its segment owns, if it
/// starts one (plain records do; packed ones may not).
fn slot(offset: u32) -> Option<usize> {
    let at = offset as usize;
    at.is_multiple_of(BLOCK).then_some(at / BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seg: u32, off: u32) -> Paddr {
        Paddr::new(SegId::new(0, seg), off)
    }

    #[test]
    fn marks_name_one_plain_record_each() {
        let mut h = GoneHints::new(2048, BUDGET_BYTES);
        assert!(h.of(SegId::new(0, 1)).is_none(), "nothing marked yet");
        h.mark(at(1, 0));
        h.mark(at(1, 4096 * 70));
        // Packed records start inside slots: never marked.
        h.mark(at(1, 4096 * 5 + 16));
        let d = h.of(SegId::new(0, 1)).expect("marked");
        assert!(d.is_dead(0));
        assert!(d.is_dead(4096 * 70));
        assert!(!d.is_dead(4096), "a neighbour is not marked");
        assert!(!d.is_dead(4096 * 5), "a packed record's slot is not marked");
        assert!(!d.is_dead(4096 * 5 + 16));
        assert!(!d.is_dead(4096 * 3000), "beyond the segment");
        assert!(
            h.of(SegId::new(0, 2)).is_none(),
            "other segments unaffected"
        );
    }

    #[test]
    fn forgetting_a_segment_drops_its_bits() {
        let mut h = GoneHints::new(2048, BUDGET_BYTES);
        h.mark(at(3, 8192));
        h.forget(SegId::new(0, 3));
        assert!(h.of(SegId::new(0, 3)).is_none());
        h.mark(at(4, 0));
        h.clear();
        assert!(h.bits.is_empty());
    }

    #[test]
    fn the_budget_bounds_memory() {
        // 2048 blocks = 256 bytes per segment; 1 KiB holds four.
        let mut h = GoneHints::new(2048, 1024);
        for s in 0..10 {
            h.mark(at(s, 0));
        }
        assert_eq!(h.bits.len(), 4);
        assert!(h.of(SegId::new(0, 9)).is_none(), "over budget: no hint");
        // A segment that has bits keeps taking marks.
        h.mark(at(0, 4096));
        assert!(h.of(SegId::new(0, 0)).expect("kept").is_dead(4096));
        h.forget(SegId::new(0, 0));
        h.mark(at(9, 0));
        assert!(
            h.of(SegId::new(0, 9)).is_some(),
            "room again after a forget"
        );
    }
}
