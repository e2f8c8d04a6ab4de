//! NBD wire constants and small big-endian encoding helpers.
//!
//! Every value here comes from the NBD protocol specification
//! (NetworkBlockDevice/nbd, `doc/proto.md`); the section names in the
//! comments refer to that document. All integers on the wire are big-endian.

#![allow(dead_code)] // The full constant table is kept for reference and fuzzers.

// ---------------------------------------------------------------------------
// Handshake ("Newstyle negotiation", "Fixed newstyle negotiation")
// ---------------------------------------------------------------------------

/// `NBDMAGIC` (`INIT_PASSWD`), the first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the second server magic, and the magic of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of every fixed-newstyle option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

/// Client flag: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: the client does not want the 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;
/// Every client flag this server understands. The spec says the server MUST
/// drop the connection on any other bit ("Client flags").
pub const KNOWN_CLIENT_FLAGS: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

// Transmission flags ("Transmission flags"), sent with the export size.
/// Always set.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// The export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// `NBD_CMD_FLUSH` is supported.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// `NBD_CMD_FLAG_FUA` is supported.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// The export behaves like a rotational medium (never set by this server).
pub const TFLAG_ROTATIONAL: u16 = 1 << 4;
/// `NBD_CMD_TRIM` is supported.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// `NBD_CMD_WRITE_ZEROES` (and `NBD_CMD_FLAG_NO_HOLE`) is supported.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// `NBD_CMD_FLAG_DF` is supported; only with structured replies.
pub const TFLAG_SEND_DF: u16 = 1 << 7;
/// Flushes and FUA are visible across all connections to the export.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// `NBD_CMD_CACHE` is understood.
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;
/// `NBD_CMD_FLAG_FAST_ZERO` is supported.
pub const TFLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// Option types ("Option types").
/// Choose an export and enter transmission (legacy, cannot report errors).
pub const OPT_EXPORT_NAME: u32 = 1;
/// Soft disconnect during negotiation.
pub const OPT_ABORT: u32 = 2;
/// List exports.
pub const OPT_LIST: u32 = 3;
/// Withdrawn `PEEK_EXPORT` extension; answered as unsupported.
pub const OPT_PEEK_EXPORT: u32 = 4;
/// Upgrade to TLS.
pub const OPT_STARTTLS: u32 = 5;
/// Describe an export without entering transmission.
pub const OPT_INFO: u32 = 6;
/// Describe an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Use structured replies in transmission.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// List metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Select metadata contexts.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// Experimental 64-bit headers; answered as unsupported.
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// Option reply types ("Option reply types").
/// Success / end of a list.
pub const REP_ACK: u32 = 1;
/// One export in an `NBD_OPT_LIST` reply.
pub const REP_SERVER: u32 = 2;
/// One information item in an `NBD_OPT_INFO`/`NBD_OPT_GO` reply.
pub const REP_INFO: u32 = 3;
/// One metadata context.
pub const REP_META_CONTEXT: u32 = 4;
/// Error replies have bit 31 set.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// Unknown option.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// Forbidden by policy.
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
/// Syntactically or semantically invalid option.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// Not supported on this platform.
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
/// TLS required first (never sent: this server is NOTLS).
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
/// No such export.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
/// The server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
/// Block size negotiation required (never sent).
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
/// Request or reply too large.
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;
// Information types ("NBD_REP_INFO").
/// Size and transmission flags (mandatory before a successful ACK).
pub const INFO_EXPORT: u16 = 0;
/// Canonical export name.
pub const INFO_NAME: u16 = 1;
/// Human-readable description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Minimum, preferred and maximum block sizes.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Maximum length of any protocol string (export names, messages, contexts):
/// "MUST be no longer than 4096 bytes".
pub const MAX_STRING_LEN: usize = 4096;

/// The only metadata context this server offers.
pub const META_BASE_ALLOCATION: &str = "base:allocation";
/// `NBD_STATE_HOLE` in the `base:allocation` context.
pub const STATE_HOLE: u32 = 1 << 0;
/// `NBD_STATE_ZERO` in the `base:allocation` context.
pub const STATE_ZERO: u32 = 1 << 1;

// ---------------------------------------------------------------------------
// Transmission ("Request message", "Simple reply message", "Structured reply
// chunk message")
// ---------------------------------------------------------------------------

/// `NBD_REQUEST_MAGIC`.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_EXTENDED_REQUEST_MAGIC`; only valid after `NBD_OPT_EXTENDED_HEADERS`,
/// which this server refuses, so it is a protocol violation here.
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// `NBD_SIMPLE_REPLY_MAGIC`.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC`.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Size of a (compact) request header: magic, flags, type, cookie, offset, length.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Size of a simple reply header: magic, error, cookie.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Size of a structured reply chunk header: magic, flags, type, cookie, length.
pub const CHUNK_HEADER_LEN: usize = 20;

// Request types ("Request types").
/// Read.
pub const CMD_READ: u16 = 0;
/// Write (followed by the payload).
pub const CMD_WRITE: u16 = 1;
/// Soft disconnect.
pub const CMD_DISC: u16 = 2;
/// Flush.
pub const CMD_FLUSH: u16 = 3;
/// Trim (discard).
pub const CMD_TRIM: u16 = 4;
/// Cache (prefetch).
pub const CMD_CACHE: u16 = 5;
/// Write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Block status.
pub const CMD_BLOCK_STATUS: u16 = 7;

// Command flags ("Command flags").
/// Force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Do not punch a hole (WRITE_ZEROES).
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Do not fragment the read reply (READ, structured replies only).
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// One extent only (BLOCK_STATUS).
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Fail with ENOTSUP unless fast (WRITE_ZEROES).
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
/// Extended headers only; invalid here.
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

/// Structured reply flag: last chunk of the reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;

// Structured reply types ("Structured reply types").
/// No payload; final chunk.
pub const REPLY_TYPE_NONE: u16 = 0;
/// Offset + data.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Offset + length of a run of zeroes.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Context id + extent descriptors.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Error + message.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
/// Error + message + offset.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

/// Spec: "Servers SHOULD NOT send more than 2^20 extents in a single reply chunk".
pub const MAX_EXTENTS_PER_REPLY: usize = 1 << 20;
/// Spec: "the server MUST support unfragmented reads in which the client's
/// request length does not exceed 65,536 bytes"; any payload up to 2^25 bytes
/// "SHOULD NOT be considered a denial of service attack".
pub const DOS_SAFE_PAYLOAD: u32 = 1 << 25;

/// Truncate `s` to at most `max` bytes on a UTF-8 character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    // `end` is a char boundary (0 always is), so slicing cannot panic.
    s.get(..end).unwrap_or("")
}

/// Append one fixed-newstyle option reply: magic, option, type, length, data.
///
/// `data` longer than `u32::MAX` cannot occur: every caller passes strings
/// capped at [`MAX_STRING_LEN`] plus a few fixed fields.
pub fn put_option_reply(out: &mut Vec<u8>, option: u32, reply: u32, data: &[&[u8]]) {
    let len: usize = data.iter().map(|d| d.len()).sum();
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    for d in data {
        out.extend_from_slice(d);
    }
}

/// Append a simple reply header.
pub fn put_simple_reply(out: &mut Vec<u8>, error: u32, cookie: u64) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

/// Append a structured reply chunk header.
pub fn put_chunk_header(out: &mut Vec<u8>, flags: u16, kind: u16, cookie: u64, length: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_spell_their_names() {
        assert_eq!(&NBDMAGIC.to_be_bytes(), b"NBDMAGIC");
        assert_eq!(&IHAVEOPT.to_be_bytes(), b"IHAVEOPT");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate_utf8("abc", 5), "abc");
        assert_eq!(truncate_utf8("abc", 2), "ab");
        // 'é' is two bytes; cutting in the middle backs off.
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("", 0), "");
    }

    #[test]
    fn option_reply_layout() {
        let mut out = Vec::new();
        put_option_reply(&mut out, OPT_LIST, REP_SERVER, &[b"ab", b"c"]);
        assert_eq!(out.len(), 20 + 3);
        assert_eq!(&out[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&out[8..12], &3u32.to_be_bytes());
        assert_eq!(&out[12..16], &2u32.to_be_bytes());
        assert_eq!(&out[16..20], &3u32.to_be_bytes());
        assert_eq!(&out[20..], b"abc");
    }

    #[test]
    fn reply_headers_layout() {
        let mut out = Vec::new();
        put_simple_reply(&mut out, 22, 0x0102_0304_0506_0708);
        assert_eq!(out.len(), SIMPLE_REPLY_LEN);
        assert_eq!(&out[..4], &[0x67, 0x44, 0x66, 0x98]);
        assert_eq!(&out[4..8], &[0, 0, 0, 22]);
        assert_eq!(&out[8..], &[1, 2, 3, 4, 5, 6, 7, 8]);

        out.clear();
        put_chunk_header(&mut out, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, 7, 6);
        assert_eq!(out.len(), CHUNK_HEADER_LEN);
        assert_eq!(&out[..4], &[0x66, 0x8e, 0x33, 0xef]);
        assert_eq!(&out[4..6], &[0, 1]);
        assert_eq!(&out[6..8], &[0x80, 0x01]);
        assert_eq!(&out[16..20], &[0, 0, 0, 6]);
    }
}
