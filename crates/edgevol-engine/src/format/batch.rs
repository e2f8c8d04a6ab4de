//! Log batches: the unit of writing, and the journal.
//!
//! Every write to a data segment is one batch: a header describing every
//! record and operation in it, then the record payloads. The header carries
//! enough to rebuild the block map after a crash (DESIGN: "the log is the
//! journal"), so there is no separate journal write per request.
//!
//! ```text
//! batch (4 KiB aligned, total_len bytes):
//! | header (header_blocks x 4 KiB) | payload of record 0 | payload of record 1 | ... |
//!
//! header, fixed part (80 bytes):
//! 0   4  magic "EVLB"
//! 4   2  version (1)
//! 6   2  flags (0)
//! 8   4  header_len: bytes of header actually used (fixed part + entries)
//! 12  4  total_len: header blocks + payload, multiple of 4 KiB
//! 16 16  pool guid
//! 32  8  lsn: log sequence number, strictly increasing across the pool's life
//! 40  8  prev_lsn: lsn of the previous batch in the same stream (0: none)
//! 48  8  flushed_lsn: every batch with lsn <= this was durable when this was written
//! 56  4  segment (packed SegId) this batch was written to
//! 60  4  next_segment (packed SegId) where this stream continues when full
//! 64  1  stream
//! 65  3  zero
//! 68  4  number of entries
//! 72  4  crc32c of header_len bytes with this field zero
//! 76  4  prev_crc: header crc of the previous batch in the stream (0: none)
//!
//! entry (40 bytes + 4 per checksum, + 28 if encrypted, + 16 for relocations):
//! 0   1  kind: 1 write, 2 trim, 3 zero, 4 relocate, 5 copy, 6 move
//! 1   1  compression (0 none, 1 lz4, 2 zstd)
//! 2   1  flags: bit 0 = zero range stays allocated (WRITE_ZEROES with NO_HOLE)
//! 3   1  number of checksums
//! 4   4  nblocks
//! 8   4  lineage
//! 12  1  encryption (0 none, 1 aes-256-gcm)
//! 13  3  zero
//! 16  8  lba (first block)
//! 24  8  birth epoch
//! 32  4  payload offset from the batch start (0: no payload)
//! 36  4  stored payload length
//! 40 4n  crc32c per 4 KiB block of the payload (plain records), or one crc32c
//!        of the whole stored payload (compressed and/or encrypted records)
//! encrypted only: 12 nonce, 16 AES-GCM tag
//! relocate, move: 8 old packed Paddr, 1 old offset-in-record (blocks), 7 zero
//! ```
//!
//! Payloads of plain records start on 4 KiB boundaries (so single blocks can
//! be read directly); compressed payloads are packed at 16-byte alignment. A
//! `move` carries a whole compressed or encrypted record, moved as stored by
//! the cleaner; its lba and nblocks are the record's.
//!
//! A batch is valid if its header checksum holds and its `prev_lsn` and
//! `prev_crc` continue the stream's chain. Stale headers from a segment's
//! earlier life, or left beyond a torn tail before a crash, chain to a
//! different predecessor and are rejected. Payloads are verified against the entry
//! checksums before replay trusts a batch written after the last flush.

use super::codec::{crc_with_hole, put_u32, Reader, Writer};
use crate::error::DecodeError;
use crate::layout::{Paddr, SegId, BLOCK, CHUNK_BLOCKS};

/// Magic of a batch header.
pub const MAGIC: u32 = u32::from_le_bytes(*b"EVLB");
const VERSION: u16 = 2;
/// Size of the fixed part of the header.
pub const FIXED_LEN: usize = 80;
const CRC_FIELD: usize = 72;

/// What a log entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryKind {
    /// Client data for `[lba, lba + nblocks)` (within one chunk).
    Write = 1,
    /// Deallocate a range (may span chunks).
    Trim = 2,
    /// Make a range read as zeroes; with the ALLOC flag it stays allocated.
    Zero = 3,
    /// The cleaner moved a live fragment here from `old`.
    Relocate = 4,
    /// A flatten copy: data inserted under an explicit (older) birth without
    /// touching newer entries.
    Copy = 5,
    /// The cleaner moved a whole stored record (compressed or encrypted,
    /// which cannot be split) here from `old`; every fragment follows it.
    Move = 6,
}

impl TryFrom<u8> for EntryKind {
    type Error = DecodeError;
    fn try_from(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => EntryKind::Write,
            2 => EntryKind::Trim,
            3 => EntryKind::Zero,
            4 => EntryKind::Relocate,
            5 => EntryKind::Copy,
            6 => EntryKind::Move,
            _ => return Err(DecodeError::Invalid("log entry kind")),
        })
    }
}

/// Flag: a Zero entry keeps the range allocated.
pub const FLAG_ZERO_ALLOC: u8 = 1;

/// One entry of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// What it does.
    pub kind: EntryKind,
    /// Compression of the payload.
    pub comp: u8,
    /// Flags.
    pub flags: u8,
    /// Blocks covered.
    pub nblocks: u32,
    /// The lineage (branch of a volume's history) written.
    pub lineage: u32,
    /// First block.
    pub lba: u64,
    /// Birth epoch of the data.
    pub birth: u64,
    /// Payload position from the batch start (0 if none).
    pub payload_off: u32,
    /// Payload bytes on disk.
    pub stored_len: u32,
    /// Payload checksums.
    pub csums: Vec<u32>,
    /// Encryption of the payload.
    pub enc: u8,
    /// Encrypted payloads: nonce and tag.
    pub seal: Option<crate::crypt::Seal>,
    /// For relocations and moves: where the fragment (record) was, and its
    /// offset in that record.
    pub reloc_from: Option<(Paddr, u8)>,
}

impl LogEntry {
    /// Encoded size.
    pub fn encoded_len(&self) -> usize {
        40 + 4 * self.csums.len()
            + self.seal.map_or(0, |s| s.len())
            + if self.reloc_from.is_some() { 16 } else { 0 }
    }

    /// True for payloads stored as plain blocks.
    pub fn is_plain(&self) -> bool {
        self.comp == 0 && self.enc == 0
    }

    fn encode(&self, w: &mut Writer<'_>) {
        w.u8(self.kind as u8);
        w.u8(self.comp);
        w.u8(self.flags);
        w.u8(self.csums.len() as u8);
        w.u32(self.nblocks);
        w.u32(self.lineage);
        w.u8(self.enc);
        w.zeros(3);
        w.u64(self.lba);
        w.u64(self.birth);
        w.u32(self.payload_off);
        w.u32(self.stored_len);
        for c in &self.csums {
            w.u32(*c);
        }
        if let Some(seal) = &self.seal {
            w.bytes(seal);
        }
        if let Some((p, off)) = self.reloc_from {
            w.u64(p.to_u64());
            w.u8(off);
            w.zeros(7);
        }
    }

    fn decode(r: &mut Reader<'_>, total_len: u32) -> Result<LogEntry, DecodeError> {
        let kind = EntryKind::try_from(r.u8()?)?;
        let comp = r.u8()?;
        let flags = r.u8()?;
        let ncsums = r.u8()? as usize;
        let nblocks = r.u32()?;
        let lineage = r.u32()?;
        let enc = r.u8()?;
        r.skip(3)?;
        let lba = r.u64()?;
        let birth = r.u64()?;
        let payload_off = r.u32()?;
        let stored_len = r.u32()?;
        let mut csums = Vec::with_capacity(ncsums);
        for _ in 0..ncsums {
            csums.push(r.u32()?);
        }
        let seal = if enc != crate::crypt::ENC_NONE {
            let mut s = [0u8; crate::crypt::SEAL_LEN];
            s.copy_from_slice(r.bytes(crate::crypt::SEAL_LEN)?);
            Some(s)
        } else {
            None
        };
        let reloc_from = if matches!(kind, EntryKind::Relocate | EntryKind::Move) {
            let p = Paddr::from_u64(r.u64()?);
            let off = r.u8()?;
            r.skip(7)?;
            Some((p, off))
        } else {
            None
        };
        let e = LogEntry {
            kind,
            comp,
            flags,
            nblocks,
            lineage,
            lba,
            birth,
            payload_off,
            stored_len,
            csums,
            enc,
            seal,
            reloc_from,
        };
        e.validate(total_len)?;
        Ok(e)
    }

    fn validate(&self, total_len: u32) -> Result<(), DecodeError> {
        if self.nblocks == 0 || self.lba.checked_add(u64::from(self.nblocks)).is_none() {
            return Err(DecodeError::Invalid("entry range"));
        }
        match self.kind {
            EntryKind::Write | EntryKind::Relocate | EntryKind::Copy | EntryKind::Move => {
                let in_chunk = self.lba % CHUNK_BLOCKS + u64::from(self.nblocks) <= CHUNK_BLOCKS;
                let end = u64::from(self.payload_off) + u64::from(self.stored_len);
                if !in_chunk || self.payload_off == 0 || end > u64::from(total_len) {
                    return Err(DecodeError::Invalid("record bounds"));
                }
                let raw_len = self.nblocks as usize * BLOCK;
                if self.is_plain()
                    && (self.stored_len as usize != raw_len
                        || self.csums.len() != self.nblocks as usize)
                {
                    return Err(DecodeError::Invalid("raw record length"));
                }
                if !self.is_plain()
                    && (self.csums.len() != 1
                        || self.stored_len == 0
                        || self.stored_len as usize > raw_len
                        || (self.comp == 0 && self.stored_len as usize != raw_len))
                {
                    return Err(DecodeError::Invalid("compressed or encrypted record"));
                }
                if (self.enc == crate::crypt::ENC_NONE) != self.seal.is_none() {
                    return Err(DecodeError::Invalid("encryption seal"));
                }
                if self.kind == EntryKind::Move && self.is_plain() {
                    return Err(DecodeError::Invalid("move of a plain record"));
                }
            }
            EntryKind::Trim | EntryKind::Zero => {
                if self.payload_off != 0
                    || self.stored_len != 0
                    || !self.csums.is_empty()
                    || self.seal.is_some()
                {
                    return Err(DecodeError::Invalid("trim with payload"));
                }
            }
        }
        Ok(())
    }
}

/// A batch header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHeader {
    /// Pool identity.
    pub pool_guid: u128,
    /// Sequence number.
    pub lsn: u64,
    /// Previous batch in the same stream.
    pub prev_lsn: u64,
    /// Highest lsn known durable when this was written.
    pub flushed_lsn: u64,
    /// Segment this batch lives in.
    pub segment: SegId,
    /// Where the stream continues.
    pub next_segment: SegId,
    /// Header checksum of the previous batch in this stream (0: none).
    pub prev_crc: u32,
    /// Stream number.
    pub stream: u8,
    /// Whole batch length, 4 KiB multiple.
    pub total_len: u32,
    /// Entries.
    pub entries: Vec<LogEntry>,
}

impl BatchHeader {
    /// Bytes of header needed for `entries` (fixed part included), unpadded.
    pub fn header_len_for(entries: &[LogEntry]) -> usize {
        FIXED_LEN + entries.iter().map(LogEntry::encoded_len).sum::<usize>()
    }

    /// Header blocks needed for a header of `len` bytes.
    pub fn header_blocks(len: usize) -> usize {
        len.div_ceil(BLOCK)
    }

    /// Encode into `out` (cleared first), padded to whole blocks.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        let header_len = Self::header_len_for(&self.entries);
        let mut w = Writer::new(out);
        w.u32(MAGIC);
        w.u16(VERSION);
        w.u16(0);
        w.u32(header_len as u32);
        w.u32(self.total_len);
        w.u128(self.pool_guid);
        w.u64(self.lsn);
        w.u64(self.prev_lsn);
        w.u64(self.flushed_lsn);
        w.u32(self.segment.to_u32());
        w.u32(self.next_segment.to_u32());
        w.u8(self.stream);
        w.zeros(3);
        w.u32(self.entries.len() as u32);
        w.u32(0);
        w.u32(self.prev_crc);
        for e in &self.entries {
            e.encode(&mut w);
        }
        debug_assert_eq!(out.len(), header_len);
        let crc = crc_with_hole(out, CRC_FIELD);
        put_u32(out, CRC_FIELD, crc);
        out.resize(Self::header_blocks(header_len) * BLOCK, 0);
    }

    /// The header checksum of an encoded header (what the next batch's
    /// `prev_crc` must hold).
    pub fn crc_of_encoded(encoded: &[u8]) -> u32 {
        encoded
            .get(CRC_FIELD..CRC_FIELD + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// How many header bytes a batch starting with `first_block` has, so the
    /// caller can read the rest. Checks magic and version only.
    pub fn peek_header_len(first_block: &[u8]) -> Result<usize, DecodeError> {
        let mut r = Reader::new(first_block);
        if r.u32()? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let v = r.u16()?;
        if v != VERSION {
            return Err(DecodeError::Version(u32::from(v)));
        }
        r.skip(2)?;
        let len = r.u32()? as usize;
        if len < FIXED_LEN {
            return Err(DecodeError::Invalid("header length"));
        }
        Ok(len)
    }

    /// Decode a header from `buf`, which holds at least `header_len` bytes.
    pub fn decode(buf: &[u8]) -> Result<BatchHeader, DecodeError> {
        let header_len = Self::peek_header_len(buf)?;
        let hdr = buf.get(..header_len).ok_or(DecodeError::Truncated)?;
        let mut r = Reader::new(hdr);
        r.skip(12)?;
        let total_len = r.u32()?;
        let pool_guid = r.u128()?;
        let lsn = r.u64()?;
        let prev_lsn = r.u64()?;
        let flushed_lsn = r.u64()?;
        let segment = SegId::from_u32(r.u32()?);
        let next_segment = SegId::from_u32(r.u32()?);
        let stream = r.u8()?;
        r.skip(3)?;
        let n = r.u32()? as usize;
        let crc = r.u32()?;
        let prev_crc = r.u32()?;
        if crc_with_hole(hdr, CRC_FIELD) != crc {
            return Err(DecodeError::BadChecksum);
        }
        if !(total_len as usize).is_multiple_of(BLOCK)
            || (total_len as usize) < Self::header_blocks(header_len) * BLOCK
        {
            return Err(DecodeError::Invalid("batch length"));
        }
        // Each entry is at least 40 bytes: bound the allocation by the header size.
        if n > header_len / 40 {
            return Err(DecodeError::Invalid("entry count"));
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(LogEntry::decode(&mut r, total_len)?);
        }
        if r.position() != header_len {
            return Err(DecodeError::Invalid("header length"));
        }
        Ok(BatchHeader {
            pool_guid,
            lsn,
            prev_lsn,
            flushed_lsn,
            segment,
            next_segment,
            prev_crc,
            stream,
            total_len,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BatchHeader {
        BatchHeader {
            pool_guid: 99,
            lsn: 10,
            prev_lsn: 9,
            flushed_lsn: 8,
            segment: SegId::new(0, 3),
            next_segment: SegId::new(0, 4),
            prev_crc: 0x1234,
            stream: 0,
            total_len: 4 * 4096,
            entries: vec![
                LogEntry {
                    kind: EntryKind::Write,
                    comp: 0,
                    flags: 0,
                    nblocks: 2,
                    lineage: 1,
                    lba: 30,
                    birth: 5,
                    payload_off: 4096,
                    stored_len: 8192,
                    csums: vec![1, 2],
                    enc: 0,
                    seal: None,
                    reloc_from: None,
                },
                LogEntry {
                    kind: EntryKind::Move,
                    comp: 1,
                    flags: 0,
                    nblocks: 16,
                    lineage: 2,
                    lba: 48,
                    birth: 6,
                    payload_off: 3 * 4096,
                    stored_len: 3000,
                    csums: vec![7],
                    enc: 1,
                    seal: Some([3; 28]),
                    reloc_from: Some((Paddr::new(SegId::new(0, 9), 8192), 0)),
                },
                LogEntry {
                    kind: EntryKind::Trim,
                    comp: 0,
                    flags: 0,
                    nblocks: 1000,
                    lineage: 1,
                    lba: 64,
                    birth: 5,
                    payload_off: 0,
                    stored_len: 0,
                    csums: vec![],
                    enc: 0,
                    seal: None,
                    reloc_from: None,
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let mut buf = Vec::new();
        h.encode_into(&mut buf);
        assert_eq!(buf.len(), 4096);
        assert_eq!(BatchHeader::decode(&buf).unwrap(), h);
    }

    #[test]
    fn rejects_damage_and_bad_fields() {
        let h = sample();
        let mut buf = Vec::new();
        h.encode_into(&mut buf);
        let mut torn = buf.clone();
        torn[100] ^= 1;
        assert_eq!(BatchHeader::decode(&torn), Err(DecodeError::BadChecksum));
        // A record crossing a chunk boundary is invalid even with a good crc.
        let mut bad = sample();
        bad.entries[0].lba = 31;
        bad.encode_into(&mut buf);
        assert!(BatchHeader::decode(&buf).is_err());
        assert!(BatchHeader::decode(&[0u8; 10]).is_err());
    }
}
