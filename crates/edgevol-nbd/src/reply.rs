//! Transmission-phase replies: what a request produced, checked against the
//! protocol's rules, and its encoding as simple replies or structured reply
//! chunks.
//!
//! Encoding is split so the connection's writer can batch many replies into
//! one vectored write without copying payloads: fixed-size headers go into a
//! reusable scratch buffer, payloads stay in their `Bytes`, and runs of
//! zeroes point at a static zero page. [`Piece`] records which is which.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

use crate::export::{Errno, Extent, ReadChunk};
use crate::proto;

/// What the server answers to one request (all chunks of it).
#[derive(Debug)]
pub(crate) enum ReplyBody {
    /// Success without payload.
    Ok,
    /// Failure: errno plus a human-readable message (structured replies only
    /// carry the message; it never contains data bytes).
    Error {
        errno: Errno,
        message: Cow<'static, str>,
    },
    /// Read data. Invariant (established by [`finish_read`]): the chunks are
    /// non-empty and cover exactly the requested length, in order; with DF
    /// there is at most one.
    Read { offset: u64, chunks: Vec<ReadChunk> },
    /// Block status. Invariant (established by [`finish_block_status`]):
    /// at least one extent, every length nonzero, at most 2^20 extents.
    BlockStatus {
        context_id: u32,
        extents: Vec<Extent>,
    },
}

impl ReplyBody {
    /// An error reply.
    pub(crate) fn error(errno: Errno, message: impl Into<Cow<'static, str>>) -> ReplyBody {
        ReplyBody::Error {
            errno,
            message: message.into(),
        }
    }
}

/// Check what an export returned for a read and shape it for the wire.
///
/// Empty pieces are dropped; pieces that do not add up to `len` are a
/// contract violation reported as `EIO` (before anything is sent, so the
/// connection stays usable). With `df` ("don't fragment") the reply must
/// hold at most one content chunk: several pieces are merged into one data
/// buffer (zeroes materialised), unless they are all zeroes.
pub(crate) fn finish_read(
    offset: u64,
    len: u32,
    mut chunks: Vec<ReadChunk>,
    df: bool,
) -> ReplyBody {
    chunks.retain(|c| chunk_len(c) != 0);
    let total: u64 = chunks.iter().map(chunk_len).sum();
    if total != u64::from(len) {
        return ReplyBody::error(
            Errno::Io,
            format!("export returned {total} bytes for a read of {len} bytes"),
        );
    }
    if df && chunks.len() > 1 {
        if chunks.iter().all(|c| matches!(c, ReadChunk::Zero(_))) {
            chunks = vec![ReadChunk::Zero(len)];
        } else {
            let mut buf = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
            for c in &chunks {
                match c {
                    ReadChunk::Data(d) => buf.extend_from_slice(d),
                    ReadChunk::Zero(n) => {
                        buf.resize(buf.len() + usize::try_from(*n).unwrap_or(0), 0)
                    }
                }
            }
            chunks = vec![ReadChunk::Data(buf.freeze())];
        }
    }
    ReplyBody::Read { offset, chunks }
}

fn chunk_len(c: &ReadChunk) -> u64 {
    match c {
        ReadChunk::Data(d) => d.len() as u64,
        ReadChunk::Zero(n) => u64::from(*n),
    }
}

/// Check what an export returned for a block status query and shape it for
/// the wire.
///
/// Zero-length extents are dropped; the list is cut at the requested length
/// (the contract says "at most `len` bytes", and with REQ_ONE the spec
/// forbids exceeding it), at one extent for REQ_ONE, and at 2^20 extents.
/// If nothing usable remains, one extent with status 0 ("allocated, contents
/// unknown") is reported: the spec says a server MAY always report 0.
pub(crate) fn finish_block_status(
    context_id: u32,
    len: u32,
    mut extents: Vec<Extent>,
    req_one: bool,
) -> (ReplyBody, bool) {
    extents.retain(|e| e.length != 0);
    let limit = if req_one {
        1
    } else {
        proto::MAX_EXTENTS_PER_REPLY
    };
    let mut covered: u64 = 0;
    let mut keep = 0;
    for e in extents.iter_mut() {
        if keep == limit || covered >= u64::from(len) {
            break;
        }
        let room = u64::from(len) - covered;
        if u64::from(e.length) > room {
            // `room` < e.length ≤ u32::MAX.
            e.length = u32::try_from(room).unwrap_or(e.length);
        }
        covered += u64::from(e.length);
        keep += 1;
    }
    extents.truncate(keep);
    let repaired = extents.is_empty();
    if repaired {
        extents.push(Extent {
            length: len,
            hole: false,
            zero: false,
        });
    }
    (
        ReplyBody::BlockStatus {
            context_id,
            extents,
        },
        repaired,
    )
}

/// One contiguous piece of encoded output.
#[derive(Debug, Clone)]
pub(crate) enum Piece {
    /// `scratch[start..end]`.
    Scratch(usize, usize),
    /// A payload.
    Data(Bytes),
    /// This many zero bytes.
    Zeroes(usize),
}

/// Encode `body` for `cookie` into `scratch` (headers) and `pieces` (the
/// output order). `structured` selects structured reply chunks.
pub(crate) fn encode(
    cookie: u64,
    body: &ReplyBody,
    structured: bool,
    scratch: &mut Vec<u8>,
    pieces: &mut Vec<Piece>,
) {
    let start = scratch.len();
    if structured {
        encode_structured(cookie, body, scratch, pieces, start);
    } else {
        encode_simple(cookie, body, scratch, pieces, start);
    }
}

/// Close the scratch range `[*start, scratch.len())` as a piece, if non-empty.
fn flush_scratch(scratch: &[u8], pieces: &mut Vec<Piece>, start: &mut usize) {
    if scratch.len() > *start {
        // Headers of consecutive replies are contiguous in scratch: extend
        // the previous piece instead of adding an iovec.
        match pieces.last_mut() {
            Some(Piece::Scratch(_, end)) if *end == *start => *end = scratch.len(),
            _ => pieces.push(Piece::Scratch(*start, scratch.len())),
        }
        *start = scratch.len();
    }
}

fn encode_simple(
    cookie: u64,
    body: &ReplyBody,
    scratch: &mut Vec<u8>,
    pieces: &mut Vec<Piece>,
    mut start: usize,
) {
    match body {
        ReplyBody::Ok => proto::put_simple_reply(scratch, 0, cookie),
        ReplyBody::Error { errno, .. } => proto::put_simple_reply(scratch, errno.code(), cookie),
        ReplyBody::Read { chunks, .. } => {
            // Header, then the data with holes expanded to zero bytes.
            proto::put_simple_reply(scratch, 0, cookie);
            flush_scratch(scratch, pieces, &mut start);
            for c in chunks {
                match c {
                    ReadChunk::Data(d) => pieces.push(Piece::Data(d.clone())),
                    ReadChunk::Zero(n) => {
                        pieces.push(Piece::Zeroes(usize::try_from(*n).unwrap_or(0)))
                    }
                }
            }
        }
        // Block status is only accepted once structured replies are
        // negotiated (validation guarantees it); answer EINVAL defensively.
        ReplyBody::BlockStatus { .. } => {
            proto::put_simple_reply(scratch, Errno::Inval.code(), cookie)
        }
    }
    flush_scratch(scratch, pieces, &mut start);
}

fn encode_structured(
    cookie: u64,
    body: &ReplyBody,
    scratch: &mut Vec<u8>,
    pieces: &mut Vec<Piece>,
    mut start: usize,
) {
    use proto::*;
    match body {
        ReplyBody::Ok => put_chunk_header(scratch, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0),
        ReplyBody::Error { errno, message } => {
            // "message length MUST NOT exceed the 4096 bytes string length limit".
            let msg = truncate_utf8(message, MAX_STRING_LEN);
            let msg_len = msg.len() as u16; // ≤ 4096
            put_chunk_header(
                scratch,
                REPLY_FLAG_DONE,
                REPLY_TYPE_ERROR,
                cookie,
                6 + u32::from(msg_len),
            );
            scratch.extend_from_slice(&errno.code().to_be_bytes());
            scratch.extend_from_slice(&msg_len.to_be_bytes());
            scratch.extend_from_slice(msg.as_bytes());
        }
        ReplyBody::Read { offset, chunks } => {
            if chunks.is_empty() {
                // A zero-length read: content chunks must describe at least
                // one byte, so only the final NONE chunk is sent.
                put_chunk_header(scratch, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0);
            }
            // The data is already in memory, so no error can surface while
            // a chunk is sent: the last content chunk may carry DONE.
            let mut at = *offset;
            let last = chunks.len().saturating_sub(1);
            for (i, c) in chunks.iter().enumerate() {
                let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
                match c {
                    ReadChunk::Data(d) => {
                        // d.len() ≤ max payload ≤ u32::MAX - 8 (config-checked).
                        let len = u32::try_from(d.len() + 8).unwrap_or(u32::MAX);
                        put_chunk_header(scratch, flags, REPLY_TYPE_OFFSET_DATA, cookie, len);
                        scratch.extend_from_slice(&at.to_be_bytes());
                        flush_scratch(scratch, pieces, &mut start);
                        pieces.push(Piece::Data(d.clone()));
                        at += d.len() as u64;
                    }
                    ReadChunk::Zero(n) => {
                        put_chunk_header(scratch, flags, REPLY_TYPE_OFFSET_HOLE, cookie, 12);
                        scratch.extend_from_slice(&at.to_be_bytes());
                        scratch.extend_from_slice(&n.to_be_bytes());
                        at += u64::from(*n);
                    }
                }
            }
        }
        ReplyBody::BlockStatus {
            context_id,
            extents,
        } => {
            // ≤ 2^20 extents, so the length fits easily.
            let len = u32::try_from(4 + 8 * extents.len()).unwrap_or(u32::MAX);
            put_chunk_header(
                scratch,
                REPLY_FLAG_DONE,
                REPLY_TYPE_BLOCK_STATUS,
                cookie,
                len,
            );
            scratch.extend_from_slice(&context_id.to_be_bytes());
            for e in extents {
                let mut flags = 0;
                if e.hole {
                    flags |= STATE_HOLE;
                }
                if e.zero {
                    flags |= STATE_ZERO;
                }
                scratch.extend_from_slice(&e.length.to_be_bytes());
                scratch.extend_from_slice(&flags.to_be_bytes());
            }
        }
    }
    flush_scratch(scratch, pieces, &mut start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::*;

    /// Flatten pieces into the bytes that would go on the wire.
    fn flatten(scratch: &[u8], pieces: &[Piece]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in pieces {
            match p {
                Piece::Scratch(a, b) => out.extend_from_slice(&scratch[*a..*b]),
                Piece::Data(d) => out.extend_from_slice(d),
                Piece::Zeroes(n) => out.resize(out.len() + n, 0),
            }
        }
        out
    }

    fn wire(cookie: u64, body: &ReplyBody, structured: bool) -> Vec<u8> {
        let mut scratch = Vec::new();
        let mut pieces = Vec::new();
        encode(cookie, body, structured, &mut scratch, &mut pieces);
        flatten(&scratch, &pieces)
    }

    fn be32(b: &[u8]) -> u32 {
        u32::from_be_bytes(b.try_into().unwrap())
    }

    #[test]
    fn simple_ok_and_error() {
        let w = wire(9, &ReplyBody::Ok, false);
        assert_eq!(w.len(), 16);
        assert_eq!(be32(&w[..4]), SIMPLE_REPLY_MAGIC);
        assert_eq!(be32(&w[4..8]), 0);
        assert_eq!(&w[8..], &9u64.to_be_bytes());

        let w = wire(9, &ReplyBody::error(Errno::NoSpc, "full"), false);
        assert_eq!(w.len(), 16, "simple errors carry no message");
        assert_eq!(be32(&w[4..8]), 28);
    }

    #[test]
    fn simple_read_expands_holes() {
        let body = ReplyBody::Read {
            offset: 0,
            chunks: vec![
                ReadChunk::Data(Bytes::from_static(b"abc")),
                ReadChunk::Zero(4),
                ReadChunk::Data(Bytes::from_static(b"z")),
            ],
        };
        let w = wire(1, &body, false);
        assert_eq!(&w[16..], b"abc\0\0\0\0z");
    }

    #[test]
    fn structured_read_chunks() {
        let body = ReplyBody::Read {
            offset: 1000,
            chunks: vec![
                ReadChunk::Data(Bytes::from_static(b"abcd")),
                ReadChunk::Zero(512),
            ],
        };
        let w = wire(5, &body, true);
        // OFFSET_DATA chunk, not final.
        assert_eq!(be32(&w[..4]), STRUCTURED_REPLY_MAGIC);
        assert_eq!(&w[4..6], &0u16.to_be_bytes());
        assert_eq!(&w[6..8], &REPLY_TYPE_OFFSET_DATA.to_be_bytes());
        assert_eq!(&w[8..16], &5u64.to_be_bytes());
        assert_eq!(be32(&w[16..20]), 12);
        assert_eq!(&w[20..28], &1000u64.to_be_bytes());
        assert_eq!(&w[28..32], b"abcd");
        // OFFSET_HOLE chunk, final.
        let h = &w[32..];
        assert_eq!(h.len(), 20 + 12);
        assert_eq!(&h[4..6], &REPLY_FLAG_DONE.to_be_bytes());
        assert_eq!(&h[6..8], &REPLY_TYPE_OFFSET_HOLE.to_be_bytes());
        assert_eq!(be32(&h[16..20]), 12);
        assert_eq!(&h[20..28], &1004u64.to_be_bytes());
        assert_eq!(be32(&h[28..32]), 512);
    }

    #[test]
    fn structured_empty_read_and_ok_are_none_done() {
        for body in [
            ReplyBody::Ok,
            ReplyBody::Read {
                offset: 0,
                chunks: vec![],
            },
        ] {
            let w = wire(3, &body, true);
            assert_eq!(w.len(), 20);
            assert_eq!(&w[4..6], &REPLY_FLAG_DONE.to_be_bytes());
            assert_eq!(&w[6..8], &REPLY_TYPE_NONE.to_be_bytes());
            assert_eq!(be32(&w[16..20]), 0);
        }
    }

    #[test]
    fn structured_error_carries_truncated_message() {
        let long = "é".repeat(3000); // 6000 bytes
        let w = wire(4, &ReplyBody::error(Errno::Io, long), true);
        assert_eq!(&w[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
        let len = be32(&w[16..20]) as usize;
        assert_eq!(w.len(), 20 + len);
        assert_eq!(be32(&w[20..24]), 5);
        let msg_len = u16::from_be_bytes([w[24], w[25]]) as usize;
        assert_eq!(msg_len + 6, len);
        assert!(msg_len <= MAX_STRING_LEN);
        assert!(std::str::from_utf8(&w[26..]).is_ok());
    }

    #[test]
    fn block_status_encoding() {
        let body = ReplyBody::BlockStatus {
            context_id: 7,
            extents: vec![
                Extent {
                    length: 4096,
                    hole: true,
                    zero: true,
                },
                Extent {
                    length: 512,
                    hole: false,
                    zero: false,
                },
            ],
        };
        let w = wire(2, &body, true);
        assert_eq!(&w[6..8], &REPLY_TYPE_BLOCK_STATUS.to_be_bytes());
        assert_eq!(be32(&w[16..20]), 4 + 16);
        assert_eq!(be32(&w[20..24]), 7);
        assert_eq!(be32(&w[24..28]), 4096);
        assert_eq!(be32(&w[28..32]), STATE_HOLE | STATE_ZERO);
        assert_eq!(be32(&w[32..36]), 512);
        assert_eq!(be32(&w[36..40]), 0);
        // Never sent as a simple reply.
        let w = wire(2, &body, false);
        assert_eq!(be32(&w[4..8]), 22);
    }

    #[test]
    fn finish_read_checks_length_and_df() {
        let ok = finish_read(
            0,
            6,
            vec![
                ReadChunk::Data(Bytes::from_static(b"ab")),
                ReadChunk::Zero(0),
                ReadChunk::Data(Bytes::new()),
                ReadChunk::Zero(4),
            ],
            false,
        );
        let ReplyBody::Read { chunks, .. } = ok else {
            panic!("expected read")
        };
        assert_eq!(chunks.len(), 2);

        let short = finish_read(0, 7, vec![ReadChunk::Zero(4)], false);
        assert!(matches!(
            short,
            ReplyBody::Error {
                errno: Errno::Io,
                ..
            }
        ));

        let df = finish_read(
            0,
            6,
            vec![
                ReadChunk::Data(Bytes::from_static(b"ab")),
                ReadChunk::Zero(4),
            ],
            true,
        );
        let ReplyBody::Read { chunks, .. } = df else {
            panic!("expected read")
        };
        assert_eq!(chunks.len(), 1);
        let ReadChunk::Data(d) = &chunks[0] else {
            panic!("expected data")
        };
        assert_eq!(&d[..], b"ab\0\0\0\0");

        let holes = finish_read(0, 8, vec![ReadChunk::Zero(4), ReadChunk::Zero(4)], true);
        let ReplyBody::Read { chunks, .. } = holes else {
            panic!("expected read")
        };
        assert!(matches!(chunks[..], [ReadChunk::Zero(8)]));
    }

    fn ext(length: u32, hole: bool) -> Extent {
        Extent {
            length,
            hole,
            zero: hole,
        }
    }

    #[test]
    fn finish_block_status_clips() {
        let (body, repaired) = finish_block_status(
            1,
            6000,
            vec![
                ext(0, false),
                ext(4096, true),
                ext(4096, false),
                ext(4096, true),
            ],
            false,
        );
        assert!(!repaired);
        let ReplyBody::BlockStatus { extents, .. } = body else {
            panic!()
        };
        assert_eq!(extents, vec![ext(4096, true), ext(1904, false)]);

        let (body, _) =
            finish_block_status(1, 1 << 20, vec![ext(4096, true), ext(4096, false)], true);
        let ReplyBody::BlockStatus { extents, .. } = body else {
            panic!()
        };
        assert_eq!(extents, vec![ext(4096, true)]);

        let (body, repaired) = finish_block_status(1, 512, vec![], false);
        assert!(repaired);
        let ReplyBody::BlockStatus { extents, .. } = body else {
            panic!()
        };
        assert_eq!(extents, vec![ext(512, false)]);
    }
}
