//! The envelope around every serde-encoded metadata blob (labels,
//! checkpoints, counter tables): a fixed 32-byte header with magic, format
//! version, kind, body length and checksums, then the postcard body, padded
//! to whole blocks.
//!
//! ```text
//! 0   8  magic "EDGEVOL\0"
//! 8   4  format version (FORMAT_VERSION)
//! 12  4  kind (1 label, 2 checkpoint, 3 counters)
//! 16  8  body length in bytes
//! 24  4  crc32c of the body
//! 28  4  crc32c of bytes 0..28
//! 32  .. body (postcard), zero padding to a multiple of 4 KiB
//! ```

use serde::{de::DeserializeOwned, Serialize};

use super::codec::{Reader, Writer};
use crate::error::DecodeError;
use crate::layout::BLOCK;

/// Magic at the start of every envelope.
pub const MAGIC: [u8; 8] = *b"EDGEVOL\0";
/// The metadata format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 3;
/// Header size.
pub const HEADER_LEN: usize = 32;

/// What an envelope holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// A device label.
    Label = 1,
    /// A checkpoint (catalog, map manifest, replay point).
    Checkpoint = 2,
    /// Segment and space counters as of a checkpoint's replay point.
    Counters = 3,
}

/// Encode `value` in an envelope, padded to whole blocks.
pub fn encode<T: Serialize>(kind: Kind, value: &T) -> Vec<u8> {
    // postcard to a Vec cannot fail for the types we define (no maps with
    // non-string keys are rejected by postcard; sequences have known length).
    let body = match postcard::to_allocvec(value) {
        Ok(b) => b,
        Err(e) => panic!("postcard encoding of engine metadata failed: {e}"),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + BLOCK);
    let mut w = Writer::new(&mut out);
    w.bytes(&MAGIC);
    w.u32(FORMAT_VERSION);
    w.u32(kind as u32);
    w.u64(body.len() as u64);
    w.u32(crc32c::crc32c(&body));
    let hcrc = crc32c::crc32c(&out[..28]);
    Writer::new(&mut out).u32(hcrc);
    out.extend_from_slice(&body);
    let padded = out.len().div_ceil(BLOCK) * BLOCK;
    out.resize(padded, 0);
    out
}

/// Length of the whole envelope (header + body, unpadded) given its first
/// bytes, so a reader knows how much more to read.
pub fn total_len(header: &[u8]) -> Result<usize, DecodeError> {
    let h = parse_header(header)?;
    HEADER_LEN
        .checked_add(usize::try_from(h.body_len).map_err(|_| DecodeError::Invalid("body length"))?)
        .ok_or(DecodeError::Invalid("body length"))
}

struct Header {
    kind: u32,
    body_len: u64,
    body_crc: u32,
}

fn parse_header(buf: &[u8]) -> Result<Header, DecodeError> {
    let mut r = Reader::new(buf);
    if r.bytes(8)? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = r.u32()?;
    let kind = r.u32()?;
    let body_len = r.u64()?;
    let body_crc = r.u32()?;
    let hcrc = r.u32()?;
    if crc32c::crc32c(buf.get(..28).ok_or(DecodeError::Truncated)?) != hcrc {
        return Err(DecodeError::BadChecksum);
    }
    if version != FORMAT_VERSION {
        return Err(DecodeError::Version(version));
    }
    Ok(Header {
        kind,
        body_len,
        body_crc,
    })
}

/// Decode an envelope of `kind` from `buf` (which may carry padding).
pub fn decode<T: DeserializeOwned>(kind: Kind, buf: &[u8]) -> Result<T, DecodeError> {
    let h = parse_header(buf)?;
    if h.kind != kind as u32 {
        return Err(DecodeError::Invalid("envelope kind"));
    }
    let len = usize::try_from(h.body_len).map_err(|_| DecodeError::Truncated)?;
    let body = Reader::new(buf.get(HEADER_LEN..).ok_or(DecodeError::Truncated)?).bytes(len)?;
    if crc32c::crc32c(body) != h.body_crc {
        return Err(DecodeError::BadChecksum);
    }
    postcard::from_bytes(body).map_err(|_| DecodeError::Invalid("postcard body"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct T {
        a: u64,
        b: String,
    }

    #[test]
    fn round_trip_and_detects_damage() {
        let v = T {
            a: 42,
            b: "x".into(),
        };
        let mut e = encode(Kind::Checkpoint, &v);
        assert_eq!(e.len() % BLOCK, 0);
        assert_eq!(decode::<T>(Kind::Checkpoint, &e).unwrap(), v);
        assert!(decode::<T>(Kind::Label, &e).is_err());
        e[HEADER_LEN] ^= 1;
        assert_eq!(
            decode::<T>(Kind::Checkpoint, &e),
            Err(DecodeError::BadChecksum)
        );
        e[0] = 0;
        assert_eq!(
            decode::<T>(Kind::Checkpoint, &e),
            Err(DecodeError::BadMagic)
        );
    }
}
