//! The uberblock: the root pointer of a pool, one 4 KiB slot in a ring of
//! [`UBERBLOCK_SLOTS`] on every device. Each checkpoint writes the next slot
//! on every device; on import the valid uberblock with the highest sequence
//! number wins. A torn slot fails its checksum and is ignored, so the
//! previous checkpoint stays the root.
//!
//! ```text
//! 0   8  magic "EVUBERB\0"
//! 8   4  format version (1)
//! 12  4  crc32c of bytes 0..64 with this field zero
//! 16 16  pool guid
//! 32  8  checkpoint sequence number
//! 40  8  checkpoint address (packed Paddr)
//! 48  4  checkpoint length in bytes (whole envelope, padded)
//! 52  4  crc32c of the checkpoint envelope bytes
//! 56  8  time written (seconds since the epoch)
//! 64 ..  zero
//! ```

use super::codec::{crc_with_hole, put_u32, Reader, Writer};
use crate::error::DecodeError;
use crate::layout::{Paddr, BLOCK, UBERBLOCK_RING_OFFSET, UBERBLOCK_SLOTS};

/// Magic of an uberblock.
pub const MAGIC: [u8; 8] = *b"EVUBERB\0";
const VERSION: u32 = 1;
const USED: usize = 64;

/// A decoded uberblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uberblock {
    /// The pool this belongs to.
    pub pool_guid: u128,
    /// Monotonic checkpoint number.
    pub seq: u64,
    /// Where the checkpoint envelope is.
    pub ckpt: Paddr,
    /// Its length (padded).
    pub ckpt_len: u32,
    /// crc32c of its bytes.
    pub ckpt_crc: u32,
    /// When it was written.
    pub time: u64,
}

impl Uberblock {
    /// Encode into one block.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BLOCK);
        let mut w = Writer::new(&mut out);
        w.bytes(&MAGIC);
        w.u32(VERSION);
        w.u32(0);
        w.u128(self.pool_guid);
        w.u64(self.seq);
        w.u64(self.ckpt.to_u64());
        w.u32(self.ckpt_len);
        w.u32(self.ckpt_crc);
        w.u64(self.time);
        let crc = crc_with_hole(&out[..USED], 12);
        put_u32(&mut out, 12, crc);
        out.resize(BLOCK, 0);
        out
    }

    /// Decode one slot.
    pub fn decode(buf: &[u8]) -> Result<Uberblock, DecodeError> {
        let mut r = Reader::new(buf);
        if r.bytes(8)? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = r.u32()?;
        let crc = r.u32()?;
        if crc_with_hole(buf.get(..USED).ok_or(DecodeError::Truncated)?, 12) != crc {
            return Err(DecodeError::BadChecksum);
        }
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        Ok(Uberblock {
            pool_guid: r.u128()?,
            seq: r.u64()?,
            ckpt: Paddr::from_u64(r.u64()?),
            ckpt_len: r.u32()?,
            ckpt_crc: r.u32()?,
            time: r.u64()?,
        })
    }

    /// Device offset of the slot for sequence number `seq`.
    pub fn slot_offset(seq: u64) -> u64 {
        UBERBLOCK_RING_OFFSET + (seq % UBERBLOCK_SLOTS) * BLOCK as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::SegId;

    #[test]
    fn round_trip_and_torn_slot() {
        let u = Uberblock {
            pool_guid: 0x1234,
            seq: 77,
            ckpt: Paddr::new(SegId::new(1, 9), 8192),
            ckpt_len: 4096,
            ckpt_crc: 5,
            time: 1,
        };
        let mut b = u.encode();
        assert_eq!(Uberblock::decode(&b).unwrap(), u);
        b[40] ^= 0xff;
        assert_eq!(Uberblock::decode(&b), Err(DecodeError::BadChecksum));
        assert_eq!(Uberblock::decode(&[0u8; 4096]), Err(DecodeError::BadMagic));
    }
}
