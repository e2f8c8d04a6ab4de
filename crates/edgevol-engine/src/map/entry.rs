//! Map keys and values.
//!
//! A key is `(lineage, lba, birth)`: the first block of an extent in one
//! lineage (a linear branch of a volume's history) and the epoch the data was
//! born in. A value says what those blocks hold: a fragment of a stored
//! record, or zeroes.
//!
//! Invariants (maintained by [`crate::chunk`]):
//! * An entry never crosses a chunk boundary.
//! * Within one `(lineage, birth)`, entries never overlap.
//! * Every stored record is referenced only by entries of one
//!   `(lineage, birth)`, all inside the record's chunk; the record is live
//!   while at least one such entry exists.

use std::sync::Arc;

use crate::error::DecodeError;
use crate::format::codec::{Reader, Writer};
use crate::layout::{Paddr, BLOCK_U64};

/// A map key. Ordered by lineage, then lba, then birth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Lineage id.
    pub lineage: u32,
    /// First block of the extent.
    pub lba: u64,
    /// Birth epoch.
    pub birth: u64,
}

impl Key {
    /// Encoded size.
    pub const LEN: usize = 20;

    /// A key.
    pub fn new(lineage: u32, lba: u64, birth: u64) -> Key {
        Key {
            lineage,
            lba,
            birth,
        }
    }

    /// The smallest key of a lineage at or after `lba`.
    pub fn lower(lineage: u32, lba: u64) -> Key {
        Key::new(lineage, lba, 0)
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) {
        w.u32(self.lineage);
        w.u64(self.lba);
        w.u64(self.birth);
    }

    /// The key encoded in `b` (as [`Key::encode`] writes it).
    pub(crate) fn from_bytes(b: &[u8; Key::LEN]) -> Key {
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        Key {
            lineage: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            lba: u64_at(4),
            birth: u64_at(12),
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Key, DecodeError> {
        Ok(Key {
            lineage: r.u32()?,
            lba: r.u64()?,
            birth: r.u64()?,
        })
    }
}

/// The checksums of a fragment ([`DataRef::csums`]): one crc32c inline
/// (a one-block fragment, or a compressed or encrypted record: the common
/// cases), more on the heap, shared by clones.
///
/// Every map lookup decodes and clones these; keeping the single checksum
/// inline saves an allocation and a shared reference count per entry.
#[derive(Clone, PartialEq, Eq)]
pub struct Csums(CsumRepr);

#[derive(Clone, PartialEq, Eq)]
enum CsumRepr {
    One(u32),
    Many(Arc<[u32]>),
}

impl Csums {
    /// Checksums stored little-endian, 4 bytes each (`b.len()` a multiple of 4).
    pub fn from_le_bytes(b: &[u8]) -> Csums {
        let word = |c: &[u8]| u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        match b.len() {
            4 => Csums(CsumRepr::One(word(b))),
            _ => Csums(CsumRepr::Many(b.chunks_exact(4).map(word).collect())),
        }
    }
}

impl std::ops::Deref for Csums {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        match &self.0 {
            CsumRepr::One(c) => std::slice::from_ref(c),
            CsumRepr::Many(v) => v,
        }
    }
}

impl From<&[u32]> for Csums {
    fn from(v: &[u32]) -> Csums {
        match v {
            [c] => Csums(CsumRepr::One(*c)),
            _ => Csums(CsumRepr::Many(Arc::from(v))),
        }
    }
}

impl From<Vec<u32>> for Csums {
    fn from(v: Vec<u32>) -> Csums {
        Csums::from(&v[..])
    }
}

impl FromIterator<u32> for Csums {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Csums {
        Csums::from(iter.into_iter().collect::<Vec<u32>>())
    }
}

impl std::fmt::Debug for Csums {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A reference to (part of) a stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRef {
    /// Where the record's payload starts.
    pub paddr: Paddr,
    /// Payload bytes on disk.
    pub stored_len: u32,
    /// Logical blocks in the whole record.
    pub rec_blocks: u8,
    /// First block of this fragment within the record.
    pub rec_off: u8,
    /// Blocks in this fragment.
    pub nblocks: u8,
    /// Compression (0: raw, see [`crate::compress`]).
    pub comp: u8,
    /// Encryption (0: none, see [`crate::crypt`]).
    pub enc: u8,
    /// Plain records (no compression, no encryption): crc32c of each block
    /// of this fragment. Others: one crc32c of the whole stored payload
    /// (ciphertext for encrypted records: it reveals nothing, and lets
    /// recovery and scrub check them without the key).
    pub csums: Csums,
    /// Encrypted records: nonce ‖ authentication tag.
    pub seal: Option<Arc<crate::crypt::Seal>>,
}

impl DataRef {
    /// The invariants of a record reference (checked on decode).
    pub fn fields_ok(&self) -> bool {
        let fits = self.nblocks > 0
            && u64::from(self.rec_blocks) <= crate::layout::CHUNK_BLOCKS
            && u16::from(self.rec_off) + u16::from(self.nblocks) <= u16::from(self.rec_blocks);
        let raw_len = u64::from(self.rec_blocks) * BLOCK_U64;
        let sums_ok = if self.is_plain() {
            self.csums.len() == self.nblocks as usize && u64::from(self.stored_len) == raw_len
        } else {
            self.csums.len() == 1
                && self.stored_len > 0
                && u64::from(self.stored_len) <= raw_len
                && (self.comp != 0 || u64::from(self.stored_len) == raw_len)
        };
        let sealed_ok = (self.enc == crate::crypt::ENC_NONE) == self.seal.is_none();
        fits && sums_ok && sealed_ok
    }

    /// True for a record stored as plain blocks: readable and movable one
    /// block at a time.
    pub fn is_plain(&self) -> bool {
        self.comp == 0 && self.enc == 0
    }

    /// Bytes the record occupies in its segment (its share of live space).
    pub fn footprint(&self) -> u64 {
        if self.comp == 0 {
            u64::from(self.rec_blocks) * BLOCK_U64
        } else {
            u64::from(self.stored_len).div_ceil(16) * 16
        }
    }

    /// Logical bytes of the whole record.
    pub fn logical(&self) -> u64 {
        u64::from(self.rec_blocks) * BLOCK_U64
    }

    /// The sub-fragment of blocks `[from, to)` relative to this fragment.
    pub fn slice(&self, from: u8, to: u8) -> DataRef {
        debug_assert!(from < to && to <= self.nblocks);
        let csums = if self.is_plain() {
            Csums::from(&self.csums[from as usize..to as usize])
        } else {
            self.csums.clone()
        };
        DataRef {
            paddr: self.paddr,
            stored_len: self.stored_len,
            rec_blocks: self.rec_blocks,
            rec_off: self.rec_off + from,
            nblocks: to - from,
            comp: self.comp,
            enc: self.enc,
            csums,
            seal: self.seal.clone(),
        }
    }

    /// True if `other` refers to the same stored record.
    pub fn same_record(&self, other: &DataRef) -> bool {
        self.paddr == other.paddr
    }
}

/// What an entry's blocks hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Stored data.
    Data(DataRef),
    /// Zeroes. `alloc`: reported as allocated (WRITE_ZEROES with NO_HOLE);
    /// otherwise a hole that hides older data (a trim tombstone).
    Zero {
        /// Blocks covered.
        nblocks: u8,
        /// Counts as allocated.
        alloc: bool,
    },
}

impl Value {
    /// Blocks covered.
    pub fn nblocks(&self) -> u8 {
        match self {
            Value::Data(d) => d.nblocks,
            Value::Zero { nblocks, .. } => *nblocks,
        }
    }

    /// The sub-range `[from, to)` of this value.
    pub fn slice(&self, from: u8, to: u8) -> Value {
        match self {
            Value::Data(d) => Value::Data(d.slice(from, to)),
            Value::Zero { alloc, .. } => Value::Zero {
                nblocks: to - from,
                alloc: *alloc,
            },
        }
    }

    /// The data reference, if any.
    pub fn data(&self) -> Option<&DataRef> {
        match self {
            Value::Data(d) => Some(d),
            Value::Zero { .. } => None,
        }
    }

    /// Approximate heap + inline bytes, for memory budgets.
    pub fn mem_size(&self) -> usize {
        match self {
            Value::Data(d) => 64 + 4 * d.csums.len() + d.seal.as_ref().map_or(0, |_| 48),
            Value::Zero { .. } => 16,
        }
    }
}

const TAG_DELETED: u8 = 0;
const TAG_DATA: u8 = 1;
const TAG_ZERO: u8 = 2;
const TAG_ZERO_ALLOC: u8 = 3;
/// Data of an encrypted record: as TAG_DATA, then the algorithm and the seal.
const TAG_DATA_SEALED: u8 = 4;

/// Encoded size of an optional value (None = deletion marker).
pub fn encoded_len(v: &Option<Value>) -> usize {
    match v {
        None => 1,
        Some(Value::Zero { .. }) => 2,
        Some(Value::Data(d)) => {
            1 + 8 + 4 + 5 + 4 * d.csums.len() + d.seal.as_ref().map_or(0, |s| 1 + s.len())
        }
    }
}

/// Encode an optional value.
pub fn encode_value(v: &Option<Value>, w: &mut Writer<'_>) {
    match v {
        None => w.u8(TAG_DELETED),
        Some(Value::Zero { nblocks, alloc }) => {
            w.u8(if *alloc { TAG_ZERO_ALLOC } else { TAG_ZERO });
            w.u8(*nblocks);
        }
        Some(Value::Data(d)) => {
            w.u8(if d.seal.is_some() {
                TAG_DATA_SEALED
            } else {
                TAG_DATA
            });
            w.u64(d.paddr.to_u64());
            w.u32(d.stored_len);
            w.u8(d.rec_blocks);
            w.u8(d.rec_off);
            w.u8(d.nblocks);
            w.u8(d.comp);
            w.u8(d.csums.len() as u8);
            for c in d.csums.iter() {
                w.u32(*c);
            }
            if let Some(seal) = &d.seal {
                w.u8(d.enc);
                w.bytes(&seal[..]);
            }
        }
    }
}

/// Decode an optional value, checking its internal consistency.
pub fn decode_value(r: &mut Reader<'_>) -> Result<Option<Value>, DecodeError> {
    let bad = |what| Err(DecodeError::Invalid(what));
    Ok(match r.u8()? {
        TAG_DELETED => None,
        t @ (TAG_ZERO | TAG_ZERO_ALLOC) => {
            let nblocks = r.u8()?;
            if nblocks == 0 || u64::from(nblocks) > crate::layout::CHUNK_BLOCKS {
                return bad("zero extent length");
            }
            Some(Value::Zero {
                nblocks,
                alloc: t == TAG_ZERO_ALLOC,
            })
        }
        t @ (TAG_DATA | TAG_DATA_SEALED) => {
            let paddr = Paddr::from_u64(r.u64()?);
            let stored_len = r.u32()?;
            let rec_blocks = r.u8()?;
            let rec_off = r.u8()?;
            let nblocks = r.u8()?;
            let comp = r.u8()?;
            let n = r.u8()? as usize;
            let csums = Csums::from_le_bytes(r.bytes(4 * n)?);
            let (enc, seal) = if t == TAG_DATA_SEALED {
                let enc = r.u8()?;
                let mut seal = [0u8; crate::crypt::SEAL_LEN];
                seal.copy_from_slice(r.bytes(crate::crypt::SEAL_LEN)?);
                if enc == crate::crypt::ENC_NONE {
                    return bad("sealed record without encryption");
                }
                (enc, Some(Arc::new(seal)))
            } else {
                (crate::crypt::ENC_NONE, None)
            };
            let d = DataRef {
                paddr,
                stored_len,
                rec_blocks,
                rec_off,
                nblocks,
                comp,
                enc,
                csums,
                seal,
            };
            if !d.fields_ok() {
                return bad("data extent fields");
            }
            Some(Value::Data(d))
        }
        _ => return bad("value tag"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::SegId;

    pub(crate) fn data(nblocks: u8) -> DataRef {
        DataRef {
            paddr: Paddr::new(SegId::new(0, 1), 4096),
            stored_len: u32::from(nblocks) * 4096,
            rec_blocks: nblocks,
            rec_off: 0,
            nblocks,
            comp: 0,
            enc: 0,
            csums: (0..u32::from(nblocks)).collect::<Vec<_>>().into(),
            seal: None,
        }
    }

    #[test]
    fn csums_keep_one_inline_and_read_like_a_slice() {
        let one = Csums::from_le_bytes(&7u32.to_le_bytes());
        assert!(matches!(one.0, CsumRepr::One(7)));
        assert_eq!(&*one, &[7]);
        let bytes: Vec<u8> = [1u32, 2, 3].iter().flat_map(|c| c.to_le_bytes()).collect();
        let many = Csums::from_le_bytes(&bytes);
        assert!(matches!(many.0, CsumRepr::Many(_)));
        assert_eq!(&*many, &[1, 2, 3]);
        assert_eq!(many, Csums::from(vec![1, 2, 3]));
        assert_eq!(Csums::from(&many[1..2]), one_of(2));
        assert!(Csums::from_le_bytes(&[]).is_empty());
        assert_eq!(many.iter().sum::<u32>(), 6);
        assert_eq!(format!("{many:?}"), "[1, 2, 3]");
        fn one_of(c: u32) -> Csums {
            [c].into_iter().collect()
        }
    }

    #[test]
    fn slice_keeps_checksums_aligned() {
        let d = data(8);
        let s = d.slice(2, 5);
        assert_eq!(s.rec_off, 2);
        assert_eq!(s.nblocks, 3);
        assert_eq!(&*s.csums, &[2, 3, 4]);
        let s2 = s.slice(1, 2);
        assert_eq!(s2.rec_off, 3);
        assert_eq!(&*s2.csums, &[3]);
        assert_eq!(s2.footprint(), 8 * 4096);
    }

    #[test]
    fn value_round_trip() {
        for v in [
            None,
            Some(Value::Zero {
                nblocks: 3,
                alloc: true,
            }),
            Some(Value::Data(data(4).slice(1, 3))),
            Some(Value::Data(DataRef {
                comp: 1,
                enc: 1,
                stored_len: 5000,
                csums: vec![77].into(),
                seal: Some(Arc::new([5u8; 28])),
                ..data(4).slice(0, 2)
            })),
        ] {
            let mut buf = Vec::new();
            encode_value(&v, &mut Writer::new(&mut buf));
            assert_eq!(buf.len(), encoded_len(&v));
            assert_eq!(decode_value(&mut Reader::new(&buf)).unwrap(), v);
        }
        assert!(decode_value(&mut Reader::new(&[9])).is_err());
    }
}
