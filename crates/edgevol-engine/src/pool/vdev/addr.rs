//! Addressing: where a segment's bytes live on the members of its group
//! (slot offsets, rows of a parity group, the row end writes are padded
//! to) and the span checks every I/O passes. Keeps invariant 3: an I/O
//! never leaves its segment's slot, so no volume reaches another's bytes.

use super::{Group, Vdevs};
use crate::error::{Error, Result};
use crate::layout::{SegId, BLOCK_U64, DATA_START};

impl Vdevs {
    pub(super) fn group(&self, seg: SegId) -> Result<&Group> {
        self.groups
            .get(seg.group as usize)
            .filter(|g| seg.index < g.segments())
            .ok_or_else(|| Error::corrupt(format!("segment {seg:?} does not exist")))
    }

    /// Device offset of block `row` of segment `seg`'s slot on a member.
    pub(super) fn slot_offset(&self, g: &Group, seg: SegId, row: u64) -> u64 {
        DATA_START + u64::from(seg.index) * g.geo.slot_bytes() + row * BLOCK_U64
    }

    /// Device offset of byte `off` of segment `seg` on its first member
    /// holding it (tests and debugging).
    pub fn device_offset(&self, seg: SegId, off: u64) -> u64 {
        let Ok(g) = self.group(seg) else {
            return DATA_START + u64::from(seg.index) * self.segment_size + off;
        };
        let b = off / BLOCK_U64;
        let row = b / g.geo.k as u64;
        self.slot_offset(g, seg, row) + off % BLOCK_U64
    }

    /// Where byte `off` of segment `seg` is stored: (member index, device
    /// offset) for every copy, or the one data column of a parity group.
    pub fn locate(&self, seg: SegId, off: u64) -> Vec<(usize, u64)> {
        let Ok(g) = self.group(seg) else {
            return Vec::new();
        };
        let b = off / BLOCK_U64;
        let (row, col) = (b / g.geo.k as u64, (b % g.geo.k as u64) as usize);
        let at = self.slot_offset(g, seg, row) + off % BLOCK_U64;
        if g.geo.is_parity() {
            vec![(g.geo.member_of(seg.index, col), at)]
        } else {
            (0..g.members.len()).map(|m| (m, at)).collect()
        }
    }

    /// End of the row holding byte `end - 1` of segment `seg`: writes are
    /// padded to it (4 KiB blocks unless the group has parity).
    pub fn row_end(&self, seg: SegId, end: u64) -> u64 {
        match self.group(seg) {
            Ok(g) => g.geo.row_end(end),
            Err(_) => end.next_multiple_of(BLOCK_U64),
        }
    }

    /// Blocks per row of group `g` (metadata extents are allocated in rows).
    pub fn row_blocks(&self, g: usize) -> u32 {
        self.groups.get(g).map_or(1, |g| g.geo.k as u32)
    }

    pub(super) fn check_span(&self, seg: SegId, off: u64, len: usize) -> Result<()> {
        if off + len as u64 > self.segment_size {
            return Err(Error::corrupt(format!(
                "I/O of {len} bytes at {off:#x} overruns segment {seg:?}"
            )));
        }
        Ok(())
    }
}

/// Blocks `[b0, b1)` of a segment that bytes `[off, off + len)` touch.
pub(super) fn span_blocks(off: u64, len: usize) -> (u64, u64) {
    (off / BLOCK_U64, (off + len as u64).div_ceil(BLOCK_U64))
}

/// Copy the part of logical block `lb` (data `blk`) that falls in the
/// span `[off, off + out.len())` into `out`.
pub(super) fn place(out: &mut [u8], off: u64, lb: u64, blk: &[u8]) {
    let start = lb * BLOCK_U64;
    let s = start.max(off);
    let e = (start + BLOCK_U64).min(off + out.len() as u64);
    if s < e {
        out[(s - off) as usize..(e - off) as usize]
            .copy_from_slice(&blk[(s - start) as usize..(e - start) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_touches_the_blocks_it_overlaps() {
        assert_eq!(span_blocks(0, 4096), (0, 1));
        assert_eq!(span_blocks(4095, 2), (0, 2));
        assert_eq!(span_blocks(8192, 1), (2, 3));
        assert_eq!(span_blocks(4096, 3 * 4096), (1, 4));
    }

    #[test]
    fn place_copies_only_the_part_inside_the_span() {
        let blk: Vec<u8> = (0..BLOCK_U64).map(|i| i as u8).collect();
        // Span [4000, 4200): the tail of block 0 and the head of block 1.
        let mut out = vec![0xee; 200];
        place(&mut out, 4000, 0, &blk);
        assert_eq!(&out[..96], &blk[4000..]);
        assert!(out[96..].iter().all(|&b| b == 0xee));
        place(&mut out, 4000, 1, &blk);
        assert_eq!(&out[96..], &blk[..104]);
        // A block outside the span leaves it alone.
        let before = out.clone();
        place(&mut out, 4000, 5, &blk);
        assert_eq!(out, before);
    }
}
