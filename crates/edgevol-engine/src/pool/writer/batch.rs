//! Batches: the one device write a stream's records go out in. A
//! [`Batch`] is built up entry by entry (header reserve, then payloads,
//! plain blocks 4 KiB aligned); a [`Sealed`] batch has its final header
//! and place in the stream; [`record_entry`] makes a record's log entry.
//!
//! Keeps invariant 2 (every read is verified) by giving every record its
//! crc32c — one per block of a plain record, one of the stored bytes of a
//! compressed one, and a slot for the ciphertext's crc of an encrypted one
//! (filled when the batch is sealed).

use crate::buf::AlignedBuf;
use crate::compress::COMP_NONE;
use crate::crypt::ENC_NONE;
use crate::format::batch::{EntryKind, LogEntry};
use crate::layout::{Paddr, BLOCK};

/// A batch being built for one stream.
pub(super) struct Batch {
    pub(super) entries: Vec<LogEntry>,
    /// Header reserve (`hdr_blocks` blocks) followed by payload.
    pub(super) buf: AlignedBuf,
    pub(super) hdr_blocks: usize,
    payload: usize,
    header_len: usize,
}

impl Batch {
    pub(super) fn new() -> Batch {
        Batch::with_buf(AlignedBuf::zeroed(64 * 1024))
    }

    /// A batch reusing `buf` (its old contents are overwritten).
    pub(super) fn with_buf(mut buf: AlignedBuf) -> Batch {
        buf.resize(0);
        buf.resize(BLOCK);
        Batch {
            entries: Vec::new(),
            buf,
            hdr_blocks: 1,
            payload: 0,
            header_len: crate::format::batch::FIXED_LEN,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Header bytes of an entry with `csums` checksums (plain writes).
    pub(super) fn entry_len(csums: usize) -> usize {
        40 + 4 * csums
    }

    /// Where a payload must start: plain blocks on 4 KiB boundaries (they
    /// are read one block at a time), packed records on 16 bytes.
    fn align(plain: bool) -> usize {
        if plain {
            BLOCK
        } else {
            16
        }
    }

    /// Total bytes if an entry of `elen` with `plen` payload bytes (plain or
    /// packed) were added.
    pub(super) fn total_with(&self, elen: usize, plen: usize, plain: bool) -> usize {
        let hb = (self.header_len + elen).div_ceil(BLOCK);
        let at = if plen > 0 {
            self.payload.next_multiple_of(Self::align(plain))
        } else {
            self.payload
        };
        (hb * BLOCK + at + plen).next_multiple_of(BLOCK)
    }

    pub(super) fn push(&mut self, mut e: LogEntry, data: Option<&[u8]>) {
        let elen = e.encoded_len();
        let hb = (self.header_len + elen).div_ceil(BLOCK);
        if hb > self.hdr_blocks {
            // Make room for a bigger header: shift the payload right.
            let grow = (hb - self.hdr_blocks) * BLOCK;
            let old_total = self.hdr_blocks * BLOCK + self.payload;
            self.buf.resize(old_total + grow);
            let start = self.hdr_blocks * BLOCK;
            self.buf
                .as_mut_slice()
                .copy_within(start..old_total, start + grow);
            self.hdr_blocks = hb;
        }
        self.header_len += elen;
        if let Some(d) = data {
            let rel = self.payload.next_multiple_of(Self::align(e.is_plain()));
            let at = self.hdr_blocks * BLOCK + rel;
            self.buf.resize(at + d.len());
            self.buf.as_mut_slice()[at..at + d.len()].copy_from_slice(d);
            e.payload_off = rel as u32; // relative; fixed up when written
            self.payload = rel + d.len();
        }
        self.entries.push(e);
    }

    pub(super) fn total(&self) -> usize {
        self.hdr_blocks * BLOCK + self.payload
    }
}

/// A batch whose header is final and whose place in its stream is taken,
/// waiting for (or in) its device write. Its entries are applied to the
/// map once the write completed.
pub(super) struct Sealed {
    pub(super) stream: usize,
    pub(super) lsn: u64,
    pub(super) at: Paddr,
    /// Bytes (whole blocks).
    pub(super) total: u32,
    pub(super) buf: AlignedBuf,
    pub(super) entries: Vec<LogEntry>,
}

/// The log entry and stored payload of one record: `compressed` if the
/// caller compressed it (see `Compression::compress`), else raw; marked
/// for encryption (the payload is sealed in place when its batch is
/// sealed, see [`Writer::seal_batch`](super::Writer::seal_batch)). Plain
/// records carry a crc32c per block, the others one crc32c of what is
/// stored.
pub(super) fn record_entry<'a>(
    kind: EntryKind,
    lineage: u32,
    lba: u64,
    birth: u64,
    payload: &'a [u8],
    compressed: Option<(u8, Vec<u8>)>,
    enc: u8,
) -> (LogEntry, std::borrow::Cow<'a, [u8]>) {
    let (ckind, stored) = match compressed {
        Some((k, z)) => (k, std::borrow::Cow::Owned(z)),
        None => (COMP_NONE, std::borrow::Cow::Borrowed(payload)),
    };
    let csums: Vec<u32> = if ckind == COMP_NONE && enc == ENC_NONE {
        payload.chunks(BLOCK).map(crc32c::crc32c).collect()
    } else if enc == ENC_NONE {
        vec![crc32c::crc32c(&stored)]
    } else {
        vec![0] // the ciphertext's crc, set when sealed
    };
    let e = LogEntry {
        kind,
        comp: ckind,
        flags: 0,
        nblocks: (payload.len() / BLOCK) as u32,
        lineage,
        lba,
        birth,
        payload_off: 0,
        stored_len: stored.len() as u32,
        csums,
        enc,
        seal: (enc != ENC_NONE).then_some([0u8; crate::crypt::SEAL_LEN]),
        reloc_from: None,
    };
    (e, stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(fill: u8) -> Vec<u8> {
        vec![fill; BLOCK]
    }

    /// The payload bytes of entry `i` as they sit in the batch's buffer.
    fn payload_of(b: &Batch, i: usize) -> &[u8] {
        let e = &b.entries[i];
        let at = b.hdr_blocks * BLOCK + e.payload_off as usize;
        &b.buf.as_slice()[at..at + e.stored_len as usize]
    }

    #[test]
    fn record_entry_checksums_each_kind_of_record() {
        let data = [block(1), block(2)].concat();
        let (e, stored) = record_entry(EntryKind::Write, 3, 16, 7, &data, None, ENC_NONE);
        assert!(e.is_plain());
        assert_eq!(&*stored, &data[..]);
        assert_eq!(e.nblocks, 2);
        let per_block: Vec<u32> = data.chunks(BLOCK).map(crc32c::crc32c).collect();
        assert_eq!(e.csums, per_block);
        // `fit_blocks` sizes plain records with `entry_len`.
        assert_eq!(e.encoded_len(), Batch::entry_len(2));

        let z = vec![9u8; 100];
        let (e, stored) = record_entry(
            EntryKind::Write,
            3,
            16,
            7,
            &data,
            Some((2, z.clone())),
            ENC_NONE,
        );
        assert_eq!((e.comp, e.nblocks, e.stored_len), (2, 2, 100));
        assert_eq!(&*stored, &z[..]);
        assert_eq!(e.csums, vec![crc32c::crc32c(&z)]);
        assert!(e.seal.is_none());

        let (e, stored) = record_entry(EntryKind::Copy, 3, 16, 7, &data, None, 1);
        assert_eq!(&*stored, &data[..]);
        assert_eq!(e.csums, vec![0], "the ciphertext's crc is set when sealed");
        assert!(e.seal.is_some());
    }

    #[test]
    fn push_aligns_plain_payloads_and_keeps_them_when_the_header_grows() {
        let mut b = Batch::new();
        assert!(b.is_empty());
        let z = vec![5u8; 100];
        let (packed, _) = record_entry(
            EntryKind::Write,
            1,
            0,
            1,
            &block(0),
            Some((2, z.clone())),
            0,
        );
        b.push(packed, Some(&z));
        let (plain, _) = record_entry(EntryKind::Write, 1, 1, 1, &block(7), None, ENC_NONE);
        let predicted = b.total_with(plain.encoded_len(), BLOCK, true);
        b.push(plain, Some(&block(7)));
        assert_eq!(b.entries[1].payload_off as usize % BLOCK, 0);
        assert_eq!(predicted, b.total().next_multiple_of(BLOCK));
        // Enough entries to need a second header block: payloads move along.
        let mut lba = 2;
        while b.hdr_blocks == 1 {
            let (e, _) = record_entry(EntryKind::Write, 1, lba, 1, &block(8), None, ENC_NONE);
            b.push(e, Some(&block(8)));
            lba += 1;
        }
        assert_eq!(payload_of(&b, 0), &z[..]);
        assert_eq!(payload_of(&b, 1), &block(7)[..]);
        assert_eq!(payload_of(&b, b.entries.len() - 1), &block(8)[..]);
    }
}
