//! The shared block cache of the map's runs, and where blocks are read
//! from. Keeps invariant 6 of shared/DESIGN.md (the cache is bounded by
//! bytes, whatever the map's size).

use std::sync::Arc;

use super::block::{decode_block, Block};
use crate::error::Result;
use crate::layout::{SegId, BLOCK};

/// Reads one block of a run (from the pool's devices), 4 KiB.
pub trait BlockReader: Send + Sync {
    /// Read block `block` of a run at `(segment, byte offset)`.
    fn read_meta_block(&self, seg: SegId, offset: u64) -> Result<Vec<u8>>;
}

/// The shared, bounded cache of decoded map blocks.
pub struct BlockCache {
    pub(super) cache: quick_cache::sync::Cache<(u64, u32), Arc<Block>, BlockWeighter>,
}

#[derive(Clone)]
pub(super) struct BlockWeighter;

impl quick_cache::Weighter<(u64, u32), Arc<Block>> for BlockWeighter {
    fn weight(&self, _k: &(u64, u32), v: &Arc<Block>) -> u64 {
        v.mem_size() as u64
    }
}

impl BlockCache {
    /// A cache holding about `bytes` of blocks.
    pub fn new(bytes: u64) -> Self {
        let items = (bytes / 4160).max(16) as usize;
        BlockCache {
            cache: quick_cache::sync::Cache::with_weighter(
                items,
                bytes.max(1 << 20),
                BlockWeighter,
            ),
        }
    }

    /// Bytes in use.
    pub fn weight(&self) -> u64 {
        self.cache.weight()
    }

    /// Put the freshly written blocks of run `run_id` (numbered from
    /// `first`) in the cache: a new run is read right away by every lookup,
    /// and would otherwise start cold.
    pub fn fill(&self, run_id: u64, first: u32, bytes: &[u8]) {
        for (i, b) in bytes.chunks_exact(BLOCK).enumerate() {
            if let Ok(block) = decode_block(b, run_id) {
                self.cache
                    .insert((run_id, first + i as u32), Arc::new(block));
            }
        }
    }
}
