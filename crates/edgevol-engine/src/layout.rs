//! Units, limits and physical addresses.
//!
//! ```text
//! device:  | label A | label B | pad | uberblock ring (128 x 4 KiB) | pad | segment 0 | segment 1 | ...
//!          0         16K       32K   64K                           576K  1 MiB
//! volume:  | chunk 0 (16 blocks = 64 KiB) | chunk 1 | ...      a block is 4 KiB
//! ```
//!
//! Invariants stated here and relied on everywhere:
//! * All device I/O is 4 KiB aligned in offset and length (O_DIRECT).
//! * A record (one stored extent of volume data) never crosses a chunk
//!   boundary, so everything about a block can be decided by looking at the
//!   map entries of its chunk only.

use std::fmt;

/// Bytes in a volume block, the unit of the block map and of client I/O.
pub const BLOCK: usize = 4096;
/// `BLOCK` as u64.
pub const BLOCK_U64: u64 = BLOCK as u64;
/// log2(BLOCK).
pub const BLOCK_SHIFT: u32 = 12;
/// Blocks per chunk: records never cross a chunk boundary. 64 KiB: every
/// write scans its chunk's map entries, so the chunk bounds that work (and
/// the extent a 4 KiB read may have to decompress), while sequential data
/// still takes one map entry per 64 KiB.
pub const CHUNK_BLOCKS: u64 = 16;
/// The largest record, in blocks (one chunk).
pub const MAX_RECORD_BLOCKS: u64 = CHUNK_BLOCKS;

/// Offset of the first label on every device.
pub const LABEL_A_OFFSET: u64 = 0;
/// Offset of the second label copy.
pub const LABEL_B_OFFSET: u64 = 16 * 1024;
/// Bytes reserved for each label copy.
pub const LABEL_SIZE: u64 = 16 * 1024;
/// Offset of the uberblock ring.
pub const UBERBLOCK_RING_OFFSET: u64 = 64 * 1024;
/// Slots in the uberblock ring.
pub const UBERBLOCK_SLOTS: u64 = 128;
/// Where segments start on every device.
pub const DATA_START: u64 = 1024 * 1024;

/// Default segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 8 * 1024 * 1024;
/// Smallest segment size a pool may use.
pub const MIN_SEGMENT_SIZE: u64 = 1024 * 1024;
/// Largest segment size a pool may use (offsets inside a segment are u32).
pub const MAX_SEGMENT_SIZE: u64 = 1024 * 1024 * 1024;

/// Round `v` up to a multiple of `BLOCK`.
pub fn align_up(v: u64) -> u64 {
    v.div_ceil(BLOCK_U64) * BLOCK_U64
}

/// The chunk a block belongs to, as its first block number.
pub fn chunk_start(lba: u64) -> u64 {
    lba - lba % CHUNK_BLOCKS
}

/// A segment: a group (top-level vdev) and an index within it.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct SegId {
    /// Top-level vdev.
    pub group: u8,
    /// Segment index within the group (< 2^24).
    pub index: u32,
}

impl SegId {
    /// Largest segment index representable in a [`Paddr`].
    pub const MAX_INDEX: u32 = (1 << 24) - 1;

    /// A segment id.
    pub fn new(group: u8, index: u32) -> Self {
        debug_assert!(index <= Self::MAX_INDEX);
        SegId { group, index }
    }

    /// Packed form used on disk: group in the top 8 bits, index in the low 24.
    pub fn to_u32(self) -> u32 {
        (u32::from(self.group) << 24) | (self.index & Self::MAX_INDEX)
    }

    /// Inverse of [`SegId::to_u32`].
    pub fn from_u32(v: u32) -> Self {
        SegId {
            group: (v >> 24) as u8,
            index: v & Self::MAX_INDEX,
        }
    }
}

impl fmt::Debug for SegId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.group, self.index)
    }
}

/// A physical address: a byte offset inside a segment.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Paddr {
    /// The segment.
    pub seg: SegId,
    /// Byte offset within the segment.
    pub offset: u32,
}

impl Paddr {
    /// An address.
    pub fn new(seg: SegId, offset: u32) -> Self {
        Paddr { seg, offset }
    }

    /// Packed form: segment id in the high 32 bits, offset in the low 32.
    pub fn to_u64(self) -> u64 {
        (u64::from(self.seg.to_u32()) << 32) | u64::from(self.offset)
    }

    /// Inverse of [`Paddr::to_u64`].
    pub fn from_u64(v: u64) -> Self {
        Paddr {
            seg: SegId::from_u32((v >> 32) as u32),
            offset: v as u32,
        }
    }
}

impl fmt::Debug for Paddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}+{:#x}", self.seg, self.offset)
    }
}

/// A range of 4 KiB metadata blocks inside one segment. Map runs and the
/// counters table are stored as lists of extents, packed into shared
/// metadata segments, so a small run does not take a whole segment.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, serde::Serialize, serde::Deserialize,
)]
pub struct MetaExtent {
    /// The segment.
    pub seg: SegId,
    /// First block within the segment.
    pub block: u32,
    /// Number of blocks.
    pub blocks: u32,
}

impl MetaExtent {
    /// Byte offset of the extent within its segment.
    pub fn offset(&self) -> u64 {
        u64::from(self.block) * BLOCK_U64
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        u64::from(self.blocks) * BLOCK_U64
    }

    /// True if the extent holds no block.
    pub fn is_empty(&self) -> bool {
        self.blocks == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paddr_round_trips() {
        let p = Paddr::new(SegId::new(3, 0x00ab_cdef), 0x1234_5000);
        assert_eq!(Paddr::from_u64(p.to_u64()), p);
        assert_eq!(SegId::from_u32(p.seg.to_u32()), p.seg);
    }

    #[test]
    fn chunks() {
        assert_eq!(chunk_start(0), 0);
        assert_eq!(chunk_start(CHUNK_BLOCKS - 1), 0);
        assert_eq!(chunk_start(CHUNK_BLOCKS), CHUNK_BLOCKS);
        assert_eq!(chunk_start(3 * CHUNK_BLOCKS + 5), 3 * CHUNK_BLOCKS);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
    }
}
