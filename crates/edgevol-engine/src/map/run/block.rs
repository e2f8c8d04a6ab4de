//! The 4 KiB blocks of a run: their format, verification on read, and
//! binary search inside a block without decoding it.
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
//! Keeps invariant 2 of shared/DESIGN.md (every block is checked: magic,
//! version, run id and crc32c before anything in it is used).

use crate::error::DecodeError;
use crate::format::codec::{put_u32, Reader};
use crate::layout::BLOCK;
use crate::map::entry::{decode_value, Key, Value};

pub(super) const MAGIC: u16 = u16::from_le_bytes(*b"MR");
pub(super) const VERSION: u8 = 2;
pub(super) const HEADER: usize = 16;
pub(super) const CRC_AT: usize = BLOCK - 4;
pub(super) const KIND_LEAF: u8 = 1;
pub(super) const KIND_INDEX: u8 = 2;
pub(super) const INDEX_ENTRY: usize = Key::LEN + 4;

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

pub(super) fn finish_block(buf: &mut [u8], kind: u8, count: u16, used: usize, run_id: u64) {
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
