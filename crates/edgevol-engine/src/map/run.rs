//! Sorted runs: the immutable on-disk levels of the block map (an LSM tree).
//!
//! A run is a sequence of 4 KiB blocks laid out over a list of metadata
//! extents (block ranges packed into shared metadata segments): leaf blocks holding sorted `(key, value)` entries, then index
//! blocks holding the first key of every leaf. The first key of every index
//! block is kept in memory (the "top index": one key per ~170 leaves, a few
//! hundred KiB for a billion entries), so memory does not grow with the map.
//!
//! ```text
//! block (4096 bytes):
//! 0     2  magic "MR"
//! 2     1  kind: 1 leaf, 2 index
//! 3     1  version (2)
//! 4     2  entry count n
//! 6     2  bytes used (header + entries)
//! 8     8  run id
//! 16    .. entries
//! leaf:  4092-2n .. 4092: u16 offset of each entry (ascending), so a
//!        lookup binary-searches the block without decoding it
//! 4092  4  crc32c of bytes 0..4092
//! leaf entry:  key (lineage u32, lba u64, birth u64) + value (see entry.rs)
//! index entry: key + leaf block number u32 (fixed 24 bytes)
//! ```
//!
//! The block cache holds blocks as their verified raw bytes (4 KiB each, a
//! third of a decoded leaf), and lookups decode only the entries they
//! return.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::entry::{decode_value, encode_value, encoded_len, Key, Value};
use crate::error::{DecodeError, Error, Result};
use crate::format::codec::{put_u32, Reader, Writer};
use crate::layout::{MetaExtent, SegId, BLOCK};

const MAGIC: u16 = u16::from_le_bytes(*b"MR");
const VERSION: u8 = 2;
const HEADER: usize = 16;
const CRC_AT: usize = BLOCK - 4;
const KIND_LEAF: u8 = 1;
const KIND_INDEX: u8 = 2;
const INDEX_ENTRY: usize = Key::LEN + 4;

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

/// What a block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Sorted entries.
    Leaf,
    /// First key of each leaf, with its block number.
    Index,
}

/// A verified block, kept as its raw bytes.
///
/// [`parse_block`] checks everything once (checksum, header, offsets,
/// every entry decodes, keys ascending), so the accessors only fail if
/// memory was corrupted after that.
#[derive(Debug)]
pub struct Block {
    kind: BlockKind,
    count: usize,
    bytes: Box<[u8]>,
}

impl Block {
    /// Memory used, for the cache budget.
    pub fn mem_size(&self) -> usize {
        self.bytes.len() + 64
    }

    /// Leaf or index.
    pub fn kind(&self) -> BlockKind {
        self.kind
    }

    /// Entries in the block.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if the block holds no entry.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn leaf_off(&self, i: usize) -> usize {
        let at = CRC_AT - 2 * (self.count - i);
        usize::from(u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]]))
    }

    fn key_at(&self, off: usize) -> std::result::Result<Key, DecodeError> {
        // The hot path of every lookup's binary search: fixed offsets, one
        // bounds check (the block was verified when it was read).
        let k: &[u8; Key::LEN] = self
            .bytes
            .get(off..off + Key::LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::Truncated)?;
        Ok(Key::from_bytes(k))
    }

    /// Key of leaf entry `i`.
    pub fn leaf_key(&self, i: usize) -> std::result::Result<Key, DecodeError> {
        self.key_at(self.leaf_off(i))
    }

    /// Leaf entry `i`, decoded.
    pub fn leaf_entry(&self, i: usize) -> std::result::Result<(Key, Option<Value>), DecodeError> {
        let mut r = Reader::new(&self.bytes[self.leaf_off(i)..CRC_AT]);
        let k = Key::decode(&mut r)?;
        Ok((k, decode_value(&mut r)?))
    }

    /// Index of the first leaf entry whose key is `>= key`.
    pub fn leaf_lower_bound(&self, key: &Key) -> std::result::Result<usize, DecodeError> {
        let (mut lo, mut hi) = (0usize, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.leaf_key(mid)? < *key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Index entry `i`: first key of a leaf, and the leaf's block number.
    pub fn index_entry(&self, i: usize) -> std::result::Result<(Key, u32), DecodeError> {
        let mut r =
            Reader::new(&self.bytes[HEADER + i * INDEX_ENTRY..HEADER + (i + 1) * INDEX_ENTRY]);
        Ok((Key::decode(&mut r)?, r.u32()?))
    }

    /// Number of index entries whose key is `<= key`.
    pub fn index_upper_bound(&self, key: &Key) -> std::result::Result<usize, DecodeError> {
        let (mut lo, mut hi) = (0usize, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key_at(HEADER + mid * INDEX_ENTRY)? <= *key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }
}

fn finish_block(buf: &mut [u8], kind: u8, count: u16, used: usize, run_id: u64) {
    buf[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    buf[2] = kind;
    buf[3] = VERSION;
    buf[4..6].copy_from_slice(&count.to_le_bytes());
    buf[6..8].copy_from_slice(&(used as u16).to_le_bytes());
    buf[8..16].copy_from_slice(&run_id.to_le_bytes());
    let crc = crc32c::crc32c(&buf[..CRC_AT]);
    put_u32(buf, CRC_AT, crc);
}

/// Verify one block of run `run_id` and keep it as raw bytes.
pub fn decode_block(buf: &[u8], run_id: u64) -> std::result::Result<Block, DecodeError> {
    if buf.len() != BLOCK {
        return Err(DecodeError::Truncated);
    }
    let mut r = Reader::new(buf);
    if r.u16()? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let kind = r.u8()?;
    let version = r.u8()?;
    let count = r.u16()? as usize;
    let used = r.u16()? as usize;
    let id = r.u64()?;
    let stored_crc = u32::from_le_bytes([
        buf[CRC_AT],
        buf[CRC_AT + 1],
        buf[CRC_AT + 2],
        buf[CRC_AT + 3],
    ]);
    if crc32c::crc32c(&buf[..CRC_AT]) != stored_crc {
        return Err(DecodeError::BadChecksum);
    }
    if version != VERSION {
        return Err(DecodeError::Version(u32::from(version)));
    }
    if id != run_id {
        return Err(DecodeError::Invalid("block belongs to another run"));
    }
    if !(HEADER..=CRC_AT).contains(&used) {
        return Err(DecodeError::Invalid("block used length"));
    }
    let block = match kind {
        KIND_LEAF => {
            if used + 2 * count > CRC_AT {
                return Err(DecodeError::Invalid("leaf offsets overlap entries"));
            }
            let b = Block {
                kind: BlockKind::Leaf,
                count,
                bytes: buf.into(),
            };
            // Every entry decodes, exactly where the next one starts, and
            // keys ascend.
            let mut expect = HEADER;
            let mut last: Option<Key> = None;
            for i in 0..count {
                let off = b.leaf_off(i);
                if off != expect {
                    return Err(DecodeError::Invalid("leaf entry offset"));
                }
                let mut r = Reader::new(&buf[off..used]);
                let k = Key::decode(&mut r)?;
                decode_value(&mut r)?;
                if last.is_some_and(|p| p >= k) {
                    return Err(DecodeError::Invalid("leaf keys out of order"));
                }
                last = Some(k);
                expect = off + r.position();
            }
            if expect != used {
                return Err(DecodeError::Invalid("block length"));
            }
            b
        }
        KIND_INDEX => {
            if HEADER + count * INDEX_ENTRY != used {
                return Err(DecodeError::Invalid("block length"));
            }
            let b = Block {
                kind: BlockKind::Index,
                count,
                bytes: buf.into(),
            };
            let mut last: Option<Key> = None;
            for i in 0..count {
                let (k, _) = b.index_entry(i)?;
                if last.is_some_and(|p| p >= k) {
                    return Err(DecodeError::Invalid("index keys out of order"));
                }
                last = Some(k);
            }
            b
        }
        _ => return Err(DecodeError::Invalid("block kind")),
    };
    Ok(block)
}

/// Builds the blocks of a run from entries given in strictly increasing key order.
pub struct RunBuilder {
    run_id: u64,
    leaf: Vec<u8>,
    /// Offsets of the current leaf's entries.
    offsets: Vec<u16>,
    leaf_count: u16,
    leaf_first: Option<Key>,
    last: Option<Key>,
    /// Finished leaf blocks not yet taken by the caller.
    out: Vec<u8>,
    leaves_done: u32,
    index: Vec<(Key, u32)>,
    entries: u64,
}

impl RunBuilder {
    /// Start run `run_id`.
    pub fn new(run_id: u64) -> Self {
        let mut leaf = Vec::with_capacity(BLOCK);
        leaf.resize(HEADER, 0);
        RunBuilder {
            run_id,
            leaf,
            offsets: Vec::new(),
            leaf_count: 0,
            leaf_first: None,
            last: None,
            out: Vec::new(),
            leaves_done: 0,
            index: Vec::new(),
            entries: 0,
        }
    }

    /// Append an entry; keys must strictly increase.
    pub fn push(&mut self, key: Key, value: &Option<Value>) {
        assert!(
            self.last.is_none_or(|l| l < key),
            "run entries must be pushed in strictly increasing key order"
        );
        let need = Key::LEN + encoded_len(value);
        if self.leaf.len() + need + 2 * (self.offsets.len() + 1) > CRC_AT {
            self.finish_leaf();
        }
        self.offsets.push(self.leaf.len() as u16);
        let mut w = Writer::new(&mut self.leaf);
        key.encode(&mut w);
        encode_value(value, &mut w);
        self.leaf_count += 1;
        self.leaf_first.get_or_insert(key);
        self.last = Some(key);
        self.entries += 1;
    }

    fn finish_leaf(&mut self) {
        let Some(first) = self.leaf_first.take() else {
            return;
        };
        let used = self.leaf.len();
        self.leaf.resize(BLOCK, 0);
        let table = CRC_AT - 2 * self.offsets.len();
        for (i, o) in self.offsets.drain(..).enumerate() {
            self.leaf[table + 2 * i..table + 2 * i + 2].copy_from_slice(&o.to_le_bytes());
        }
        finish_block(
            &mut self.leaf,
            KIND_LEAF,
            self.leaf_count,
            used,
            self.run_id,
        );
        self.out.extend_from_slice(&self.leaf);
        self.index.push((first, self.leaves_done));
        self.leaves_done += 1;
        self.leaf.clear();
        self.leaf.resize(HEADER, 0);
        self.leaf_count = 0;
    }

    /// Finished leaf bytes so far (whole blocks); the caller writes and drains them.
    pub fn take_ready(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Bytes of finished leaves waiting to be taken.
    pub fn ready_len(&self) -> usize {
        self.out.len()
    }

    /// Entries pushed so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Finish: returns the remaining leaf bytes plus all index blocks, the
    /// leaf and index block counts.
    pub fn finish(mut self) -> (Vec<u8>, u32, u32) {
        self.finish_leaf();
        let mut out = std::mem::take(&mut self.out);
        let per = (CRC_AT - HEADER) / INDEX_ENTRY;
        let mut index_blocks = 0u32;
        for chunk in self.index.chunks(per) {
            let mut b = Vec::with_capacity(BLOCK);
            b.resize(HEADER, 0);
            let mut w = Writer::new(&mut b);
            for (k, n) in chunk {
                k.encode(&mut w);
                w.u32(*n);
            }
            let used = b.len();
            b.resize(BLOCK, 0);
            finish_block(&mut b, KIND_INDEX, chunk.len() as u16, used, self.run_id);
            out.extend_from_slice(&b);
            index_blocks += 1;
        }
        (out, self.leaves_done, index_blocks)
    }
}

/// Does a 4 KiB run block carry a matching crc? (For self-healing reads:
/// a cheap test of which copy is intact, before decoding.)
pub fn block_crc_ok(buf: &[u8]) -> bool {
    buf.len() > CRC_AT + 3
        && crc32c::crc32c(&buf[..CRC_AT])
            == u32::from_le_bytes([
                buf[CRC_AT],
                buf[CRC_AT + 1],
                buf[CRC_AT + 2],
                buf[CRC_AT + 3],
            ])
}

/// Reads one block of a run (from the pool's devices), 4 KiB.
pub trait BlockReader: Send + Sync {
    /// Read block `block` of a run at `(segment, byte offset)`.
    fn read_meta_block(&self, seg: SegId, offset: u64) -> Result<Vec<u8>>;
}

/// The shared, bounded cache of decoded map blocks.
pub struct BlockCache {
    cache: quick_cache::sync::Cache<(u64, u32), Arc<Block>, BlockWeighter>,
}

#[derive(Clone)]
struct BlockWeighter;

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
