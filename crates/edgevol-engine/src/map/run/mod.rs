//! Sorted runs: the immutable on-disk levels of the block map (an LSM tree).
//!
//! A run is a sequence of 4 KiB blocks laid out over a list of metadata
//! extents (block ranges packed into shared metadata segments): leaf
//! blocks holding sorted `(key, value)` entries, then index blocks holding
//! the first key of every leaf. The first key of every index
//! block is kept in memory (the "top index": one key per ~170 leaves, a few
//! hundred KiB for a billion entries), so memory does not grow with the map.
//!
//! The block format is in `block`, building a run in `build`, the block
//! cache in `cache`; this module opens, scans and verifies runs.
//!
//! The block cache holds blocks as their verified raw bytes (4 KiB each, a
//! third of a decoded leaf), and lookups decode only the entries they
//! return.
//!
//! Keeps invariants 2 of shared/DESIGN.md (every block read is verified
//! before use; a damaged one is an error naming the run and block, never a
//! wrong answer) and 6 (only the top index stays in memory; every other
//! block goes through the bounded cache).

mod block;
mod build;
mod cache;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use block::{block_crc_ok, decode_block, Block, BlockKind};
pub use build::RunBuilder;
pub use cache::{BlockCache, BlockReader};

use super::entry::{Key, Value};
use crate::error::{DecodeError, Error, Result};
use crate::layout::{MetaExtent, SegId, BLOCK};

/// Where a run lives and what it holds; stored in the checkpoint manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Unique id (also stamped in every block, to catch misdirected reads).
    pub id: u64,
    /// Extents holding the blocks, in order.
    pub extents: Vec<MetaExtent>,
    /// Leaf blocks (numbered from 0).
    pub leaf_blocks: u32,
    /// Index blocks (numbered after the leaves).
    pub index_blocks: u32,
    /// Entries (including deletion markers).
    pub entries: u64,
}

impl RunMeta {
    /// Total blocks.
    pub fn blocks(&self) -> u64 {
        u64::from(self.leaf_blocks) + u64::from(self.index_blocks)
    }
}

/// An open run: its metadata plus its index blocks, kept in memory.
///
/// The index holds one key per 4 KiB leaf (about 0.6% of the run), so a
/// lookup costs one cached leaf block and no index fetch.
pub struct Run {
    meta: RunMeta,
    /// Run block number at which each extent starts (prefix sums).
    starts: Vec<u32>,
    /// First key of each index block.
    top: Vec<Key>,
    /// The index blocks.
    index: Vec<Arc<Block>>,
}

impl Run {
    /// Open a run: read its index blocks to build the top index.
    pub fn open(meta: RunMeta, reader: &dyn BlockReader) -> Result<Run> {
        let mut starts = Vec::with_capacity(meta.extents.len());
        let mut at = 0u64;
        for e in &meta.extents {
            starts.push(at as u32);
            at += u64::from(e.blocks);
        }
        if at < meta.blocks() || at > u64::from(u32::MAX) {
            return Err(Error::corrupt(format!(
                "run {} has {} blocks but its extents hold {at}",
                meta.id,
                meta.blocks()
            )));
        }
        let mut run = Run {
            meta,
            starts,
            top: Vec::new(),
            index: Vec::new(),
        };
        let mut index = Vec::with_capacity(run.meta.index_blocks as usize);
        let mut top = Vec::with_capacity(run.meta.index_blocks as usize);
        for i in 0..run.meta.index_blocks {
            let b = run.read_block(run.meta.leaf_blocks + i, reader)?;
            if b.kind() != BlockKind::Index || b.is_empty() {
                return Err(Error::corrupt(format!(
                    "run {}: block {} should be a non-empty index block",
                    run.meta.id,
                    run.meta.leaf_blocks + i
                )));
            }
            top.push(
                b.index_entry(0)
                    .map_err(|e| run.damaged(run.meta.leaf_blocks + i, e))?
                    .0,
            );
            index.push(Arc::new(b));
        }
        run.top = top;
        run.index = index;
        Ok(run)
    }

    /// Metadata.
    pub fn meta(&self) -> &RunMeta {
        &self.meta
    }

    /// Memory held by the index blocks.
    pub fn index_bytes(&self) -> usize {
        self.index.iter().map(|b| b.mem_size()).sum()
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.meta.blocks() * BLOCK as u64
    }

    fn locate(&self, block: u32) -> Result<(SegId, u64)> {
        let i = self.starts.partition_point(|&s| s <= block);
        let e = i
            .checked_sub(1)
            .and_then(|i| self.meta.extents.get(i).map(|e| (i, e)))
            .filter(|(i, e)| block - self.starts[*i] < e.blocks)
            .map(|(i, e)| {
                (
                    e.seg,
                    e.offset() + u64::from(block - self.starts[i]) * BLOCK as u64,
                )
            });
        e.ok_or_else(|| {
            Error::corrupt(format!(
                "run {} block {block} beyond its extents",
                self.meta.id
            ))
        })
    }

    fn read_block(&self, block: u32, reader: &dyn BlockReader) -> Result<Block> {
        let (seg, off) = self.locate(block)?;
        let buf = reader.read_meta_block(seg, off)?;
        decode_block(&buf, self.meta.id).map_err(|e| {
            Error::corrupt(format!(
                "map run {} block {block} at {seg:?}+{off:#x} is damaged",
                self.meta.id
            ))
            .with_source(e)
        })
    }

    pub(super) fn cached(
        &self,
        block: u32,
        cache: &BlockCache,
        reader: &dyn BlockReader,
    ) -> Result<Arc<Block>> {
        cache.cache.get_or_insert_with(&(self.meta.id, block), || {
            self.read_block(block, reader).map(Arc::new)
        })
    }

    /// Leaf block number that may hold `key` (the last leaf whose first key <= key).
    pub(super) fn leaf_for(&self, key: &Key) -> Result<Option<u32>> {
        let ti = self.top.partition_point(|k| k <= key);
        if ti == 0 {
            return Ok(if self.meta.leaf_blocks > 0 {
                Some(0)
            } else {
                None
            });
        }
        let bn = self.meta.leaf_blocks + (ti - 1) as u32;
        let ib = self
            .index
            .get(ti - 1)
            .ok_or_else(|| Error::corrupt(format!("run {}: index block missing", self.meta.id)))?;
        let i = ib.index_upper_bound(key).map_err(|e| self.damaged(bn, e))?;
        let entry = ib
            .index_entry(i.saturating_sub(1))
            .map_err(|e| self.damaged(bn, e))?;
        Ok(Some(entry.1))
    }

    pub(super) fn damaged(&self, block: u32, e: DecodeError) -> Error {
        Error::corrupt(format!("map run {} block {block} is damaged", self.meta.id)).with_source(e)
    }

    /// Append to `out` the entries with `lo <= key < hi`, at most `limit`.
    /// Returns true if the limit cut the scan short.
    pub fn scan(
        &self,
        lo: &Key,
        hi: &Key,
        limit: usize,
        out: &mut Vec<(Key, Option<Value>)>,
        cache: &BlockCache,
        reader: &dyn BlockReader,
    ) -> Result<bool> {
        let Some(mut leaf) = self.leaf_for(lo)? else {
            return Ok(false);
        };
        let mut taken = 0usize;
        while leaf < self.meta.leaf_blocks {
            let b = self.cached(leaf, cache, reader)?;
            if b.kind() != BlockKind::Leaf {
                return Err(Error::corrupt(format!(
                    "run {}: leaf block expected",
                    self.meta.id
                )));
            }
            let start = b.leaf_lower_bound(lo).map_err(|e| self.damaged(leaf, e))?;
            for i in start..b.len() {
                let k = b.leaf_key(i).map_err(|e| self.damaged(leaf, e))?;
                if k >= *hi {
                    return Ok(false);
                }
                if taken == limit {
                    return Ok(true);
                }
                out.push(b.leaf_entry(i).map_err(|e| self.damaged(leaf, e))?);
                taken += 1;
            }
            leaf += 1;
        }
        Ok(false)
    }

    /// Read every block and check it (for `pool check`): returns entries seen.
    pub fn verify(&self, reader: &dyn BlockReader) -> Result<u64> {
        let mut last: Option<Key> = None;
        let mut n = 0u64;
        for b in 0..self.meta.leaf_blocks {
            let blk = self.read_block(b, reader)?;
            if blk.kind() != BlockKind::Leaf {
                return Err(Error::corrupt(format!(
                    "run {}: index block among leaves",
                    self.meta.id
                )));
            }
            for i in 0..blk.len() {
                let k = blk.leaf_key(i).map_err(|e| self.damaged(b, e))?;
                if last.is_some_and(|l| l >= k) {
                    return Err(Error::corrupt(format!(
                        "run {} keys out of order at leaf {b}",
                        self.meta.id
                    )));
                }
                last = Some(k);
                n += 1;
            }
        }
        if n != self.meta.entries {
            return Err(Error::corrupt(format!(
                "run {} holds {n} entries, manifest says {}",
                self.meta.id, self.meta.entries
            )));
        }
        Ok(n)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::layout::Paddr;
    use crate::map::entry::DataRef;
    use parking_lot::Mutex;
    use std::collections::HashMap;

    pub(in crate::map) struct MemBlocks(Mutex<HashMap<(SegId, u64), Vec<u8>>>);
    impl BlockReader for MemBlocks {
        fn read_meta_block(&self, seg: SegId, offset: u64) -> Result<Vec<u8>> {
            self.0
                .lock()
                .get(&(seg, offset))
                .cloned()
                .ok_or_else(|| Error::corrupt("missing block"))
        }
    }

    /// A run of `n` entries at lbas 0, 2, 4, … (every third a deletion).
    pub(in crate::map) fn build(n: u64, seg_size: u64) -> (Run, MemBlocks) {
        let mut b = RunBuilder::new(7);
        for i in 0..n {
            let v = if i % 3 == 0 {
                None
            } else {
                Some(Value::Data(DataRef {
                    paddr: Paddr::new(SegId::new(0, 1), (i * 4096) as u32),
                    stored_len: 4096,
                    rec_blocks: 1,
                    rec_off: 0,
                    nblocks: 1,
                    comp: 0,
                    enc: 0,
                    seal: None,
                    csums: vec![i as u32].into(),
                }))
            };
            b.push(Key::new(1, i * 2, 5), &v);
        }
        let mut bytes = b.take_ready();
        let (rest, leaves, index) = b.finish();
        bytes.extend_from_slice(&rest);
        // Extents of varying length, the first one starting mid-segment.
        let seg_blocks = (seg_size / 4096) as u32;
        let total = (bytes.len() / 4096) as u32;
        let mut extents = Vec::new();
        let mut placed = 0u32;
        let mut seg = 10u32;
        let mut first = 3u32;
        while placed < total {
            let len = (seg_blocks - first).min(total - placed).min(7 + seg % 50);
            extents.push(MetaExtent {
                seg: SegId::new(0, seg),
                block: first,
                blocks: len,
            });
            placed += len;
            seg += 1;
            first = seg % 5;
        }
        let mem = MemBlocks(Mutex::new(HashMap::new()));
        let mut i = 0usize;
        for e in &extents {
            for b in 0..e.blocks {
                mem.0.lock().insert(
                    (e.seg, e.offset() + u64::from(b) * 4096),
                    bytes[i * 4096..(i + 1) * 4096].to_vec(),
                );
                i += 1;
            }
        }
        let meta = RunMeta {
            id: 7,
            extents,
            leaf_blocks: leaves,
            index_blocks: index,
            entries: n,
        };
        let run = Run::open(meta, &mem).unwrap();
        (run, mem)
    }

    #[test]
    fn scan_finds_ranges_across_blocks_and_segments() {
        let (run, mem) = build(20_000, 1 << 20);
        assert!(
            run.meta().index_blocks >= 2,
            "test should exercise several index blocks"
        );
        let cache = BlockCache::new(1 << 20);
        let mut out = Vec::new();
        let more = run
            .scan(
                &Key::lower(1, 1001),
                &Key::lower(1, 1011),
                100,
                &mut out,
                &cache,
                &mem,
            )
            .unwrap();
        assert!(!more);
        let lbas: Vec<u64> = out.iter().map(|(k, _)| k.lba).collect();
        assert_eq!(lbas, vec![1002, 1004, 1006, 1008, 1010]);
        assert!(out[0].1.is_none(), "i = 501 is a deletion marker");
        assert_eq!(out[1].1.as_ref().unwrap().data().unwrap().csums[0], 502);
        out.clear();
        assert!(run
            .scan(
                &Key::lower(1, 0),
                &Key::lower(2, 0),
                10,
                &mut out,
                &cache,
                &mem
            )
            .unwrap());
        assert_eq!(out.len(), 10);
        out.clear();
        run.scan(
            &Key::lower(0, 0),
            &Key::lower(1, 0),
            10,
            &mut out,
            &cache,
            &mem,
        )
        .unwrap();
        assert!(out.is_empty());
        assert_eq!(run.verify(&mem).unwrap(), 20_000);
    }

    #[test]
    fn damaged_block_is_detected() {
        let (run, mem) = build(100, 1 << 20);
        let e = run.meta().extents[0];
        mem.0.lock().get_mut(&(e.seg, e.offset())).unwrap()[100] ^= 1;
        let cache = BlockCache::new(1 << 20);
        let mut out = Vec::new();
        let e = run
            .scan(
                &Key::lower(1, 0),
                &Key::lower(2, 0),
                10,
                &mut out,
                &cache,
                &mem,
            )
            .unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Corrupt);
        assert!(decode_block(&[0u8; 4096], 7).is_err());
    }
}
