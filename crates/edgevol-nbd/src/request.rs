//! Pure decoding and validation of transmission-phase requests.
//!
//! [`RequestHeader::decode`] reads the 28-byte request header;
//! [`validate`] checks it against the negotiated session ([`RequestContext`])
//! and yields a [`Command`] the export can execute, or a [`Rejection`] with
//! the errno the spec recommends. Nothing here allocates or panics, so both
//! are safe to fuzz with arbitrary bytes.

use crate::export::{Errno, ZeroFlags};
use crate::proto::{self, REQUEST_HEADER_LEN};

/// A decoded request header ("Request message").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// Command type (`NBD_CMD_*`).
    pub kind: u16,
    /// Opaque cookie echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length (payload length for `NBD_CMD_WRITE`).
    pub length: u32,
}

/// The request magic was wrong: the stream is out of sync (or not NBD), and
/// the only safe reaction is to close the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad request magic {0:#010x}")]
pub struct BadMagic(pub u32);

impl RequestHeader {
    /// Decode a request header. Only the magic can make this fail; every
    /// other field is checked by [`validate`].
    pub fn decode(buf: &[u8; REQUEST_HEADER_LEN]) -> Result<RequestHeader, BadMagic> {
        let (magic, rest) = split::<4>(buf);
        let magic = u32::from_be_bytes(magic);
        if magic != proto::REQUEST_MAGIC {
            return Err(BadMagic(magic));
        }
        let (flags, rest) = split::<2>(rest);
        let (kind, rest) = split::<2>(rest);
        let (cookie, rest) = split::<8>(rest);
        let (offset, rest) = split::<8>(rest);
        let (length, _) = split::<4>(rest);
        Ok(RequestHeader {
            flags: u16::from_be_bytes(flags),
            kind: u16::from_be_bytes(kind),
            cookie: u64::from_be_bytes(cookie),
            offset: u64::from_be_bytes(offset),
            length: u32::from_be_bytes(length),
        })
    }

    /// Number of payload bytes that follow this header on the wire. Only
    /// `NBD_CMD_WRITE` carries a payload (extended headers, which would let
    /// other commands carry one, are never negotiated). The reader must
    /// consume these bytes even when the request is rejected, or the stream
    /// loses sync.
    pub fn payload_len(&self) -> u32 {
        if self.kind == proto::CMD_WRITE {
            self.length
        } else {
            0
        }
    }

    /// Encode (used by tests and fuzzers to build traffic).
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        let fields: [&[u8]; 6] = [
            &proto::REQUEST_MAGIC.to_be_bytes(),
            &self.flags.to_be_bytes(),
            &self.kind.to_be_bytes(),
            &self.cookie.to_be_bytes(),
            &self.offset.to_be_bytes(),
            &self.length.to_be_bytes(),
        ];
        let mut at = 0;
        for f in fields {
            if let Some(dst) = out.get_mut(at..at + f.len()) {
                dst.copy_from_slice(f);
            }
            at += f.len();
        }
        out
    }
}

fn split<const N: usize>(b: &[u8]) -> ([u8; N], &[u8]) {
    match b.split_first_chunk::<N>() {
        Some((head, rest)) => (*head, rest),
        // Unreachable for the fixed 28-byte buffer; zeroes keep this total.
        None => ([0; N], &[]),
    }
}

/// What the session negotiated, as far as request validation is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestContext {
    /// Current export size in bytes.
    pub size: u64,
    /// The export refuses writes.
    pub read_only: bool,
    /// Minimum block size (a power of two); offsets and lengths must be
    /// multiples of it.
    pub min_block: u32,
    /// Maximum payload of READ and WRITE.
    pub max_payload: u32,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected for this export.
    pub block_status: bool,
}

/// A validated command, ready to be executed on the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Read `len` bytes; `df` forbids fragmenting the structured reply.
    Read {
        /// Offset.
        offset: u64,
        /// Length (≤ max payload).
        len: u32,
        /// `NBD_CMD_FLAG_DF`.
        df: bool,
    },
    /// Write the `len` payload bytes that follow the header.
    Write {
        /// Offset.
        offset: u64,
        /// Length (≤ max payload).
        len: u32,
        /// `NBD_CMD_FLAG_FUA`.
        fua: bool,
    },
    /// Soft disconnect.
    Disconnect,
    /// Flush.
    Flush,
    /// Trim.
    Trim {
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
        /// `NBD_CMD_FLAG_FUA`.
        fua: bool,
    },
    /// Cache (prefetch).
    Cache {
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Write zeroes.
    WriteZeroes {
        /// Offset.
        offset: u64,
        /// Length.
        len: u32,
        /// FUA, NO_HOLE and FAST_ZERO.
        flags: ZeroFlags,
    },
    /// Block status for `base:allocation`.
    BlockStatus {
        /// Offset.
        offset: u64,
        /// Length (a hint).
        len: u32,
        /// `NBD_CMD_FLAG_REQ_ONE`.
        req_one: bool,
    },
}

/// A request the server answers with an error without calling the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// The errno for the client.
    pub errno: Errno,
    /// Why, for the log and the structured error message.
    pub reason: &'static str,
}

fn reject(errno: Errno, reason: &'static str) -> Rejection {
    Rejection { errno, reason }
}

/// Check a request against the session and turn it into a [`Command`].
///
/// Errors follow the spec's "Error values" section: unknown commands and
/// flags, misalignment and out-of-range reads/trims/status are `EINVAL`;
/// writes (WRITE, WRITE_ZEROES) past the end are `ENOSPC`; writes and trims
/// on a read-only export are `EPERM`; oversized reads with structured
/// replies are `EOVERFLOW` (explicitly permitted), otherwise `EINVAL`.
pub fn validate(h: &RequestHeader, ctx: &RequestContext) -> Result<Command, Rejection> {
    use proto::*;
    let allowed = match h.kind {
        CMD_READ => CMD_FLAG_FUA | if ctx.structured { CMD_FLAG_DF } else { 0 },
        CMD_WRITE | CMD_TRIM | CMD_FLUSH | CMD_CACHE | CMD_DISC => CMD_FLAG_FUA,
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
        CMD_BLOCK_STATUS => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
        _ => return Err(reject(Errno::Inval, "unknown command")),
    };
    // FUA "is valid for all commands" once SEND_FUA is advertised (always,
    // here); any other undocumented flag SHOULD be EINVAL.
    if h.flags & !allowed != 0 {
        return Err(reject(Errno::Inval, "invalid command flags"));
    }
    let fua = h.flags & CMD_FLAG_FUA != 0;
    let (offset, len) = (h.offset, h.length);

    match h.kind {
        // DISC: offset and length "MUST be zero", but there is no reply to
        // carry an error, so the server just disconnects.
        CMD_DISC => return Ok(Command::Disconnect),
        CMD_FLUSH => {
            if offset != 0 || len != 0 {
                return Err(reject(Errno::Inval, "flush offset and length must be zero"));
            }
            return Ok(Command::Flush);
        }
        CMD_BLOCK_STATUS if !ctx.block_status => {
            return Err(reject(
                Errno::Inval,
                "block status requires the base:allocation context",
            ));
        }
        CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES if ctx.read_only => {
            return Err(reject(Errno::Perm, "export is read-only"));
        }
        _ => {}
    }

    // Range checks. `offset + len` may overflow u64 on hostile input.
    let in_range = offset
        .checked_add(u64::from(len))
        .is_some_and(|end| end <= ctx.size);
    if !in_range {
        return Err(match h.kind {
            CMD_WRITE | CMD_WRITE_ZEROES => reject(Errno::NoSpc, "request extends past the end"),
            _ => reject(Errno::Inval, "request extends past the end"),
        });
    }
    // Alignment to the advertised minimum block size; a request that ends
    // exactly at an unaligned export end is allowed so the tail is reachable.
    let min = u64::from(ctx.min_block.max(1));
    let end = offset + u64::from(len);
    if offset % min != 0 || (u64::from(len) % min != 0 && end != ctx.size) {
        return Err(reject(
            Errno::Inval,
            "request is not aligned to the minimum block size",
        ));
    }

    match h.kind {
        CMD_READ => {
            if len > ctx.max_payload {
                let errno = if ctx.structured {
                    Errno::Overflow
                } else {
                    Errno::Inval
                };
                return Err(reject(errno, "read is larger than the maximum payload"));
            }
            Ok(Command::Read {
                offset,
                len,
                df: h.flags & CMD_FLAG_DF != 0,
            })
        }
        CMD_WRITE => {
            if len > ctx.max_payload {
                return Err(reject(
                    Errno::Inval,
                    "write is larger than the maximum payload",
                ));
            }
            Ok(Command::Write { offset, len, fua })
        }
        CMD_TRIM => Ok(Command::Trim { offset, len, fua }),
        CMD_CACHE => Ok(Command::Cache { offset, len }),
        CMD_WRITE_ZEROES => Ok(Command::WriteZeroes {
            offset,
            len,
            flags: ZeroFlags {
                fua,
                no_hole: h.flags & CMD_FLAG_NO_HOLE != 0,
                fast: h.flags & CMD_FLAG_FAST_ZERO != 0,
            },
        }),
        CMD_BLOCK_STATUS => {
            // Every descriptor in the reply must have a nonzero length, so a
            // zero-length query cannot be answered meaningfully.
            if len == 0 {
                return Err(reject(Errno::Inval, "block status length is zero"));
            }
            Ok(Command::BlockStatus {
                offset,
                len,
                req_one: h.flags & CMD_FLAG_REQ_ONE != 0,
            })
        }
        _ => Err(reject(Errno::Inval, "unknown command")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::*;

    const CTX: RequestContext = RequestContext {
        size: 1 << 20,
        read_only: false,
        min_block: 512,
        max_payload: 1 << 16,
        structured: true,
        block_status: true,
    };

    fn req(kind: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader {
            flags,
            kind,
            cookie: 0x00c0_0c1e,
            offset,
            length,
        }
    }

    fn errno(r: Result<Command, Rejection>) -> Option<Errno> {
        r.err().map(|e| e.errno)
    }

    #[test]
    fn decode_roundtrip_and_layout() {
        let h = req(CMD_WRITE, CMD_FLAG_FUA, 0x1122_3344_5566_7788, 0x99aa_bbcc);
        let bytes = h.encode();
        assert_eq!(&bytes[..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(&bytes[4..6], &[0, 1]);
        assert_eq!(&bytes[6..8], &[0, 1]);
        assert_eq!(&bytes[16..24], &0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(&bytes[24..28], &0x99aa_bbccu32.to_be_bytes());
        assert_eq!(RequestHeader::decode(&bytes), Ok(h));
        assert_eq!(h.payload_len(), 0x99aa_bbcc);
        assert_eq!(req(CMD_READ, 0, 0, 4096).payload_len(), 0);
    }

    #[test]
    fn decode_rejects_bad_magic() {
        let mut bytes = req(CMD_READ, 0, 0, 512).encode();
        bytes[0] = 0;
        assert_eq!(RequestHeader::decode(&bytes), Err(BadMagic(0x0060_9513)));
        let mut ext = bytes;
        ext[..4].copy_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
        assert!(RequestHeader::decode(&ext).is_err());
    }

    #[test]
    fn valid_commands() {
        assert_eq!(
            validate(&req(CMD_READ, CMD_FLAG_DF, 512, 4096), &CTX),
            Ok(Command::Read {
                offset: 512,
                len: 4096,
                df: true
            })
        );
        assert_eq!(
            validate(&req(CMD_WRITE, CMD_FLAG_FUA, 0, 512), &CTX),
            Ok(Command::Write {
                offset: 0,
                len: 512,
                fua: true
            })
        );
        assert_eq!(
            validate(
                &req(
                    CMD_WRITE_ZEROES,
                    CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
                    0,
                    1 << 20
                ),
                &CTX
            ),
            Ok(Command::WriteZeroes {
                offset: 0,
                len: 1 << 20,
                flags: ZeroFlags {
                    fua: false,
                    no_hole: true,
                    fast: true
                }
            })
        );
        assert_eq!(
            validate(&req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 0, 1 << 20), &CTX),
            Ok(Command::BlockStatus {
                offset: 0,
                len: 1 << 20,
                req_one: true
            })
        );
        assert_eq!(
            validate(&req(CMD_FLUSH, CMD_FLAG_FUA, 0, 0), &CTX),
            Ok(Command::Flush)
        );
        assert_eq!(
            validate(&req(CMD_DISC, 0, 7, 7), &CTX),
            Ok(Command::Disconnect)
        );
        assert_eq!(
            validate(&req(CMD_CACHE, 0, 0, 4096), &CTX),
            Ok(Command::Cache {
                offset: 0,
                len: 4096
            })
        );
        assert_eq!(
            validate(&req(CMD_TRIM, CMD_FLAG_FUA, 4096, 4096), &CTX),
            Ok(Command::Trim {
                offset: 4096,
                len: 4096,
                fua: true
            })
        );
        // Zero-length reads and writes at the very end are in range.
        assert!(validate(&req(CMD_READ, 0, 1 << 20, 0), &CTX).is_ok());
    }

    #[test]
    fn unknown_commands_and_flags_are_einval() {
        assert_eq!(errno(validate(&req(8, 0, 0, 0), &CTX)), Some(Errno::Inval));
        assert_eq!(
            errno(validate(&req(0xffff, 0, 0, 0), &CTX)),
            Some(Errno::Inval)
        );
        assert_eq!(
            errno(validate(&req(CMD_READ, CMD_FLAG_NO_HOLE, 0, 512), &CTX)),
            Some(Errno::Inval)
        );
        assert_eq!(
            errno(validate(&req(CMD_WRITE, CMD_FLAG_REQ_ONE, 0, 512), &CTX)),
            Some(Errno::Inval)
        );
        assert_eq!(
            errno(validate(&req(CMD_CACHE, CMD_FLAG_DF, 0, 512), &CTX)),
            Some(Errno::Inval)
        );
        assert_eq!(
            errno(validate(&req(CMD_READ, CMD_FLAG_PAYLOAD_LEN, 0, 512), &CTX)),
            Some(Errno::Inval)
        );
        // DF is only valid with structured replies.
        let simple = RequestContext {
            structured: false,
            ..CTX
        };
        assert_eq!(
            errno(validate(&req(CMD_READ, CMD_FLAG_DF, 0, 512), &simple)),
            Some(Errno::Inval)
        );
        // Flush with a range.
        assert_eq!(
            errno(validate(&req(CMD_FLUSH, 0, 0, 512), &CTX)),
            Some(Errno::Inval)
        );
    }

    #[test]
    fn bounds_errors_follow_the_spec() {
        let size = CTX.size;
        assert_eq!(
            errno(validate(&req(CMD_READ, 0, size, 512), &CTX)),
            Some(Errno::Inval)
        );
        assert_eq!(
            errno(validate(&req(CMD_TRIM, 0, size - 512, 1024), &CTX)),
            Some(Errno::Inval)
        );
        assert_eq!(
            errno(validate(&req(CMD_BLOCK_STATUS, 0, size, 512), &CTX)),
            Some(Errno::Inval)
        );
        assert_eq!(
            errno(validate(&req(CMD_WRITE, 0, size, 512), &CTX)),
            Some(Errno::NoSpc)
        );
        assert_eq!(
            errno(validate(&req(CMD_WRITE_ZEROES, 0, size, 512), &CTX)),
            Some(Errno::NoSpc)
        );
        // Offset + length overflowing u64.
        assert_eq!(
            errno(validate(&req(CMD_READ, 0, u64::MAX - 100, 512), &CTX)),
            Some(Errno::Inval)
        );
        assert_eq!(
            errno(validate(&req(CMD_WRITE, 0, u64::MAX, u32::MAX), &CTX)),
            Some(Errno::NoSpc)
        );
    }

    #[test]
    fn alignment_is_enforced() {
        assert_eq!(
            errno(validate(&req(CMD_READ, 0, 1, 512), &CTX)),
            Some(Errno::Inval)
        );
        assert_eq!(
            errno(validate(&req(CMD_WRITE, 0, 0, 511), &CTX)),
            Some(Errno::Inval)
        );
        assert_eq!(
            errno(validate(&req(CMD_BLOCK_STATUS, 0, 0, 100), &CTX)),
            Some(Errno::Inval)
        );
        // An unaligned tail is reachable when the export size is unaligned.
        let odd = RequestContext {
            size: 4096 + 100,
            ..CTX
        };
        assert!(validate(&req(CMD_READ, 0, 4096, 100), &odd).is_ok());
        assert_eq!(
            errno(validate(&req(CMD_READ, 0, 4096, 50), &odd)),
            Some(Errno::Inval)
        );
        // Minimum block size of 1 accepts everything in range.
        let byte = RequestContext {
            min_block: 1,
            ..CTX
        };
        assert!(validate(&req(CMD_WRITE, 0, 3, 7), &byte).is_ok());
    }

    #[test]
    fn payload_limits() {
        let max = CTX.max_payload;
        assert!(validate(&req(CMD_READ, 0, 0, max), &CTX).is_ok());
        assert_eq!(
            errno(validate(&req(CMD_READ, 0, 0, max * 2), &CTX)),
            Some(Errno::Overflow)
        );
        let simple = RequestContext {
            structured: false,
            block_status: false,
            ..CTX
        };
        assert_eq!(
            errno(validate(&req(CMD_READ, 0, 0, max * 2), &simple)),
            Some(Errno::Inval)
        );
        assert_eq!(
            errno(validate(&req(CMD_WRITE, 0, 0, max * 2), &CTX)),
            Some(Errno::Inval)
        );
        // Trim and zero lengths are not bounded by the payload limit.
        assert!(validate(&req(CMD_TRIM, 0, 0, max * 4), &CTX).is_ok());
        assert!(validate(&req(CMD_WRITE_ZEROES, 0, 0, max * 4), &CTX).is_ok());
    }

    #[test]
    fn read_only_and_block_status_gates() {
        let ro = RequestContext {
            read_only: true,
            ..CTX
        };
        for kind in [CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES] {
            assert_eq!(
                errno(validate(&req(kind, 0, 0, 512), &ro)),
                Some(Errno::Perm)
            );
        }
        assert!(validate(&req(CMD_READ, 0, 0, 512), &ro).is_ok());
        assert!(validate(&req(CMD_FLUSH, 0, 0, 0), &ro).is_ok());
        assert!(validate(&req(CMD_CACHE, 0, 0, 512), &ro).is_ok());

        let no_meta = RequestContext {
            block_status: false,
            ..CTX
        };
        assert_eq!(
            errno(validate(&req(CMD_BLOCK_STATUS, 0, 0, 512), &no_meta)),
            Some(Errno::Inval)
        );
        assert_eq!(
            errno(validate(&req(CMD_BLOCK_STATUS, 0, 0, 0), &CTX)),
            Some(Errno::Inval)
        );
    }

    #[test]
    fn never_panics_on_arbitrary_headers() {
        // A cheap deterministic sweep over odd values; the fuzzers go further.
        let values64 = [0, 1, 511, 512, 1 << 20, u64::MAX - 1, u64::MAX];
        let values32 = [0, 1, 511, 512, 1 << 16, u32::MAX];
        let ctxs = [
            CTX,
            RequestContext {
                size: 0,
                min_block: 0,
                max_payload: 0,
                ..CTX
            },
            RequestContext {
                size: u64::MAX,
                min_block: 1 << 16,
                ..CTX
            },
        ];
        for ctx in &ctxs {
            for kind in 0..10u16 {
                for flags in [0u16, 1, 2, 4, 8, 16, 32, 0xffff] {
                    for &o in &values64 {
                        for &l in &values32 {
                            let _ = validate(&req(kind, flags, o, l), ctx);
                        }
                    }
                }
            }
        }
    }
}
