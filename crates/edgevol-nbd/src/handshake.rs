//! The fixed-newstyle handshake ("Handshake" in the spec).
//!
//! [`Negotiator`] is the option state machine: it takes one parsed option at
//! a time, appends the replies to a buffer and says what to do next. It does
//! no I/O (the provider's `open`/`list` are synchronous), so it can be driven
//! by tests and fuzzers directly. [`run`] is the async driver that reads
//! options from the socket, bounds their size and applies the handshake
//! timeout (by its caller) and the shutdown signal.
//!
//! Supported: `EXPORT_NAME` (with or without the 124 zero bytes), `ABORT`,
//! `LIST`, `INFO`, `GO` (`INFO_EXPORT`, `INFO_NAME`, `INFO_DESCRIPTION`,
//! `INFO_BLOCK_SIZE`), `STRUCTURED_REPLY`, `LIST_META_CONTEXT` and
//! `SET_META_CONTEXT` (`base:allocation`). `STARTTLS` and
//! `EXTENDED_HEADERS` are answered with `NBD_REP_ERR_UNSUP`, as is every
//! unknown option, so clients fall back cleanly.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::error::{ConnectionError, ProtocolError};
use crate::export::{BlockSizes, Export, ExportProvider, OpenError};
use crate::option::{parse_option, ClientOption, InfoRequest, MetaContextRequest};
use crate::proto::{self, truncate_utf8, MAX_STRING_LEN};
use crate::server::Shutdown;

/// Options longer than this are not read into memory. The largest legitimate
/// option is a meta-context list; 64 KiB leaves room for hundreds of 4 KiB
/// strings.
pub(crate) const MAX_OPTION_DATA: u32 = 64 * 1024;
/// Oversized options up to this length are skipped (read and discarded) and
/// answered with an error so the client can continue; longer ones are
/// treated as a denial-of-service attempt and the connection is closed.
pub(crate) const MAX_OPTION_DISCARD: u32 = 1024 * 1024;

/// Context id of `base:allocation` in `NBD_OPT_SET_META_CONTEXT` replies and
/// block status chunks. Any value works; the client treats it as opaque.
pub(crate) const BASE_ALLOCATION_ID: u32 = 1;

/// What the export looks like to the client for this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExportParams {
    /// Size at negotiation time.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Advertised (and enforced) block sizes.
    pub block: BlockSizes,
}

/// Everything transmission needs: the open export and what was negotiated.
pub(crate) struct Session<E> {
    pub export: E,
    pub name: String,
    pub params: ExportParams,
    pub structured: bool,
    /// `base:allocation` was selected for this export.
    pub base_allocation: bool,
}

/// Next step after an option.
pub(crate) enum Step<E> {
    /// Send the replies and read the next option.
    Continue,
    /// Send the replies, then close (the client sent `NBD_OPT_ABORT`).
    Abort,
    /// Close without replying (e.g. `NBD_OPT_EXPORT_NAME` that cannot be
    /// satisfied: the spec requires the server to terminate the session).
    Close(ProtocolError),
    /// Send the replies and enter transmission.
    Transmit(Box<Session<E>>),
}

/// The export selected by the last `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MetaSelection {
    export: String,
    base_allocation: bool,
}

/// The option-haggling state machine for one connection.
pub(crate) struct Negotiator<'a, P> {
    provider: &'a P,
    max_payload: u32,
    no_zeroes: bool,
    structured: bool,
    meta: Option<MetaSelection>,
}

impl<'a, P: ExportProvider> Negotiator<'a, P> {
    /// A negotiator for a client that sent `client_flags` (already checked).
    pub(crate) fn new(provider: &'a P, max_payload: u32, client_flags: u32) -> Self {
        Negotiator {
            provider,
            max_payload,
            no_zeroes: client_flags & proto::FLAG_C_NO_ZEROES != 0,
            structured: false,
            meta: None,
        }
    }

    /// Handle one option whose data was read in full.
    pub(crate) fn handle(
        &mut self,
        code: u32,
        data: &[u8],
        shutting_down: bool,
        out: &mut Vec<u8>,
    ) -> Step<P::Export> {
        let opt = match parse_option(code, data) {
            Ok(opt) => opt,
            Err(e) if code == proto::OPT_EXPORT_NAME => {
                return Step::Close(ProtocolError::BadExportName(e));
            }
            Err(e) => {
                info!(option = option_name(code), error = %e, "nbd: invalid option");
                error_reply(out, code, proto::REP_ERR_INVALID, &e.to_string());
                return Step::Continue;
            }
        };
        if shutting_down && opt != ClientOption::Abort {
            // Spec: "SHOULD error further options received (other than an
            // NBD_OPT_ABORT) with NBD_REP_ERR_SHUTDOWN"; EXPORT_NAME cannot
            // carry an error, so that one ends the session.
            if let ClientOption::ExportName(_) = opt {
                return Step::Close(ProtocolError::ShuttingDown);
            }
            error_reply(
                out,
                code,
                proto::REP_ERR_SHUTDOWN,
                "server is shutting down",
            );
            return Step::Continue;
        }
        debug!(option = option_name(code), "nbd: option");
        match opt {
            ClientOption::ExportName(name) => self.export_name(name, out),
            ClientOption::Abort => {
                ack(out, code);
                Step::Abort
            }
            ClientOption::List => {
                self.list(out);
                Step::Continue
            }
            ClientOption::StartTls => {
                // NOTLS mode: "MUST respond with NBD_REP_ERR_POLICY ... or
                // NBD_REP_ERR_UNSUP (if it does not support the
                // NBD_OPT_STARTTLS option at all)".
                error_reply(out, code, proto::REP_ERR_UNSUP, "TLS is not supported");
                Step::Continue
            }
            ClientOption::Info(req) => self.info_or_go(code, req, false, out),
            ClientOption::Go(req) => self.info_or_go(code, req, true, out),
            ClientOption::StructuredReply => {
                self.structured = true;
                ack(out, code);
                Step::Continue
            }
            ClientOption::ListMetaContext(req) => {
                self.list_meta(code, req, out);
                Step::Continue
            }
            ClientOption::SetMetaContext(req) => {
                self.set_meta(code, req, out);
                Step::Continue
            }
            ClientOption::ExtendedHeaders => {
                // Not implemented yet: UNSUP makes QEMU and libnbd fall back
                // to NBD_OPT_STRUCTURED_REPLY.
                error_reply(
                    out,
                    code,
                    proto::REP_ERR_UNSUP,
                    "extended headers are not supported",
                );
                Step::Continue
            }
            ClientOption::Unknown(other) => {
                debug!(option = other, "nbd: unsupported option");
                error_reply(out, code, proto::REP_ERR_UNSUP, "unsupported option");
                Step::Continue
            }
        }
    }

    /// Handle an option whose data was too large to read (and was skipped).
    pub(crate) fn handle_oversized(
        &mut self,
        code: u32,
        len: u32,
        out: &mut Vec<u8>,
    ) -> Step<P::Export> {
        info!(
            option = option_name(code),
            len, "nbd: option data too large; skipped"
        );
        match code {
            proto::OPT_EXPORT_NAME => {
                Step::Close(ProtocolError::OptionTooLarge { option: code, len })
            }
            proto::OPT_ABORT => {
                ack(out, code);
                Step::Abort
            }
            proto::OPT_LIST
            | proto::OPT_STARTTLS
            | proto::OPT_INFO
            | proto::OPT_GO
            | proto::OPT_STRUCTURED_REPLY
            | proto::OPT_LIST_META_CONTEXT
            | proto::OPT_SET_META_CONTEXT => {
                if code == proto::OPT_SET_META_CONTEXT {
                    // "replaces all previously-set metadata contexts
                    // (including when this command fails)".
                    self.meta = None;
                }
                error_reply(out, code, proto::REP_ERR_TOO_BIG, "option data too large");
                Step::Continue
            }
            _ => {
                error_reply(out, code, proto::REP_ERR_UNSUP, "unsupported option");
                Step::Continue
            }
        }
    }

    fn export_name(&mut self, name: &str, out: &mut Vec<u8>) -> Step<P::Export> {
        let export = match self.provider.open(name) {
            Ok(e) => e,
            Err(e) => {
                return Step::Close(ProtocolError::ExportNameRefused {
                    name: name.to_owned(),
                    source: e,
                })
            }
        };
        // EXPORT_NAME clients cannot ask for block sizes.
        let params = self.params(&export, false);
        // Spec: size (64 bits), transmission flags (16 bits), then 124
        // zero bytes unless NBD_FLAG_C_NO_ZEROES was negotiated.
        out.extend_from_slice(&params.size.to_be_bytes());
        out.extend_from_slice(&params.flags.to_be_bytes());
        if !self.no_zeroes {
            out.extend_from_slice(&[0u8; 124]);
        }
        Step::Transmit(Box::new(self.session(export, name, params)))
    }

    fn info_or_go(
        &mut self,
        code: u32,
        req: InfoRequest<'_>,
        go: bool,
        out: &mut Vec<u8>,
    ) -> Step<P::Export> {
        let export = match self.provider.open(req.name) {
            Ok(e) => e,
            Err(e) => {
                let (rep, msg) = open_error_reply(&e);
                info!(export = req.name, error = %e, go, "nbd: export refused");
                error_reply(out, code, rep, &msg);
                return Step::Continue;
            }
        };
        // Only a client that asks for block sizes is held to them (spec,
        // "Size constraints"); the others get the export's constraints for
        // unnegotiated clients (the spec's defaults if it can serve them).
        let params = self.params(&export, req.wants(proto::INFO_BLOCK_SIZE));

        // NBD_INFO_EXPORT is mandatory before a successful ACK.
        let mut info = [0u8; 12];
        info[..2].copy_from_slice(&proto::INFO_EXPORT.to_be_bytes());
        info[2..10].copy_from_slice(&params.size.to_be_bytes());
        info[10..].copy_from_slice(&params.flags.to_be_bytes());
        proto::put_option_reply(out, code, proto::REP_INFO, &[&info]);

        if req.wants(proto::INFO_NAME) {
            // We do not know a canonical name other than the one asked for.
            proto::put_option_reply(
                out,
                code,
                proto::REP_INFO,
                &[&proto::INFO_NAME.to_be_bytes(), req.name.as_bytes()],
            );
        }
        if req.wants(proto::INFO_DESCRIPTION) {
            let desc = export.description();
            let desc = truncate_utf8(&desc, MAX_STRING_LEN);
            if !desc.is_empty() {
                proto::put_option_reply(
                    out,
                    code,
                    proto::REP_INFO,
                    &[&proto::INFO_DESCRIPTION.to_be_bytes(), desc.as_bytes()],
                );
            }
        }
        // Always sent (even unrequested, which the spec allows): the
        // constraints that will be enforced on this client, which for one
        // that did not ask are the defaults when the export allows them.
        let mut bs = [0u8; 14];
        bs[..2].copy_from_slice(&proto::INFO_BLOCK_SIZE.to_be_bytes());
        bs[2..6].copy_from_slice(&params.block.minimum.to_be_bytes());
        bs[6..10].copy_from_slice(&params.block.preferred.to_be_bytes());
        bs[10..].copy_from_slice(&params.block.maximum.to_be_bytes());
        proto::put_option_reply(out, code, proto::REP_INFO, &[&bs]);
        ack(out, code);

        if go {
            Step::Transmit(Box::new(self.session(export, req.name, params)))
        } else {
            Step::Continue
        }
    }

    fn list(&mut self, out: &mut Vec<u8>) {
        for (name, desc) in self.provider.list() {
            if name.len() > MAX_STRING_LEN || name.contains('\0') {
                warn!(
                    name_len = name.len(),
                    "nbd: export name not representable; not listed"
                );
                continue;
            }
            let desc = truncate_utf8(&desc, MAX_STRING_LEN);
            // name.len() ≤ 4096, so the cast is lossless.
            let len = (name.len() as u32).to_be_bytes();
            proto::put_option_reply(
                out,
                proto::OPT_LIST,
                proto::REP_SERVER,
                &[&len, name.as_bytes(), desc.as_bytes()],
            );
        }
        ack(out, proto::OPT_LIST);
    }

    fn list_meta(&mut self, code: u32, req: MetaContextRequest<'_>, out: &mut Vec<u8>) {
        // Listing is allowed without structured replies (the spec says the
        // server MAY reject it; being lenient helps diagnostics). Zero
        // queries list everything; `base:` is the namespace wildcard.
        let listed = req.query_count() == 0
            || req
                .queries()
                .any(|q| q == "base:" || q == proto::META_BASE_ALLOCATION);
        if listed {
            // The id in list replies "is reserved and SHOULD be set to zero".
            put_meta_context(out, code, 0);
        }
        ack(out, code);
    }

    fn set_meta(&mut self, code: u32, req: MetaContextRequest<'_>, out: &mut Vec<u8>) {
        // "Issuing this command replaces all previously-set metadata
        // contexts (including when this command fails)".
        self.meta = None;
        if !self.structured {
            error_reply(
                out,
                code,
                proto::REP_ERR_INVALID,
                "structured replies must be negotiated first",
            );
            return;
        }
        // `base:` alone selects nothing during SET (spec); unknown
        // namespaces and leaf names are ignored.
        let base_allocation = req.queries().any(|q| q == proto::META_BASE_ALLOCATION);
        if base_allocation {
            put_meta_context(out, code, BASE_ALLOCATION_ID);
        }
        self.meta = Some(MetaSelection {
            export: req.name.to_owned(),
            base_allocation,
        });
        ack(out, code);
    }

    /// What the client sees of `export`; `negotiated` if it asked for block
    /// sizes and so must honour them.
    fn params(&self, export: &P::Export, negotiated: bool) -> ExportParams {
        let wanted = match negotiated {
            true => export.block_sizes(),
            false => export
                .unnegotiated_block_sizes()
                .unwrap_or_else(|| export.block_sizes()),
        };
        let block = effective_block_sizes(wanted, self.max_payload);
        if block != wanted {
            debug!(
                advertised = ?block,
                export = ?wanted,
                "nbd: adjusted block sizes to protocol limits"
            );
        }
        ExportParams {
            size: export.size(),
            flags: transmission_flags(export.read_only(), export.can_multi_conn(), self.structured),
            block,
        }
    }

    fn session(&self, export: P::Export, name: &str, params: ExportParams) -> Session<P::Export> {
        // Contexts apply only if the last SET_META_CONTEXT named this export.
        let base_allocation = self
            .meta
            .as_ref()
            .is_some_and(|m| m.base_allocation && m.export == name);
        Session {
            export,
            name: name.to_owned(),
            params,
            structured: self.structured,
            base_allocation,
        }
    }
}

/// The transmission flags for an export.
pub(crate) fn transmission_flags(read_only: bool, multi_conn: bool, structured: bool) -> u16 {
    use proto::*;
    let mut flags = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_SEND_CACHE;
    if read_only {
        flags |= TFLAG_READ_ONLY;
    } else {
        flags |= TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES | TFLAG_SEND_FAST_ZERO;
    }
    if structured {
        // "MUST leave this flag clear if structured replies have not been
        // negotiated".
        flags |= TFLAG_SEND_DF;
    }
    if multi_conn {
        flags |= TFLAG_CAN_MULTI_CONN;
    }
    flags
}

/// Clamp an export's block sizes to what the spec allows ("Size
/// constraints"): minimum a power of two ≤ 64 KiB; preferred a power of two
/// ≥ max(minimum, 512); maximum ≥ preferred, ≤ the server's payload limit
/// and a multiple of the minimum.
pub(crate) fn effective_block_sizes(export: BlockSizes, max_payload: u32) -> BlockSizes {
    let minimum = export.minimum.clamp(1, 1 << 16).next_power_of_two();
    let floor = minimum.max(512);
    let mut maximum = export.maximum.min(max_payload);
    let mut preferred = export
        .preferred
        .max(floor)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31);
    if preferred > maximum {
        // Largest power of two that fits, but never below the floor.
        preferred = prev_power_of_two(maximum).max(floor);
    }
    maximum = maximum.max(preferred);
    maximum -= maximum % minimum;
    BlockSizes {
        minimum,
        preferred,
        maximum,
    }
}

fn prev_power_of_two(v: u32) -> u32 {
    if v == 0 {
        0
    } else {
        1 << (31 - v.leading_zeros())
    }
}

/// Map an [`OpenError`] to an option error reply and message.
///
/// The spec has no "unavailable" reply (`NBD_REP_ERR_UNAVAIL` does not
/// exist), so [`OpenError::Unavailable`] uses `NBD_REP_ERR_UNKNOWN`, which
/// the spec describes as "The requested export is not available"; the
/// message tells the user why.
pub(crate) fn open_error_reply(e: &OpenError) -> (u32, String) {
    match e {
        OpenError::Unknown(_) => (proto::REP_ERR_UNKNOWN, e.to_string()),
        OpenError::Refused(m) => (proto::REP_ERR_POLICY, m.clone()),
        OpenError::Unavailable(m) => (proto::REP_ERR_UNKNOWN, m.clone()),
    }
}

fn ack(out: &mut Vec<u8>, code: u32) {
    proto::put_option_reply(out, code, proto::REP_ACK, &[]);
}

fn error_reply(out: &mut Vec<u8>, code: u32, rep: u32, msg: &str) {
    let msg = truncate_utf8(msg, MAX_STRING_LEN);
    proto::put_option_reply(out, code, rep, &[msg.as_bytes()]);
}

fn put_meta_context(out: &mut Vec<u8>, code: u32, id: u32) {
    proto::put_option_reply(
        out,
        code,
        proto::REP_META_CONTEXT,
        &[&id.to_be_bytes(), proto::META_BASE_ALLOCATION.as_bytes()],
    );
}

/// A printable option name for logs.
pub(crate) fn option_name(code: u32) -> &'static str {
    match code {
        proto::OPT_EXPORT_NAME => "EXPORT_NAME",
        proto::OPT_ABORT => "ABORT",
        proto::OPT_LIST => "LIST",
        proto::OPT_PEEK_EXPORT => "PEEK_EXPORT",
        proto::OPT_STARTTLS => "STARTTLS",
        proto::OPT_INFO => "INFO",
        proto::OPT_GO => "GO",
        proto::OPT_STRUCTURED_REPLY => "STRUCTURED_REPLY",
        proto::OPT_LIST_META_CONTEXT => "LIST_META_CONTEXT",
        proto::OPT_SET_META_CONTEXT => "SET_META_CONTEXT",
        proto::OPT_EXTENDED_HEADERS => "EXTENDED_HEADERS",
        _ => "unknown",
    }
}

/// How the handshake ended.
pub(crate) enum Outcome<E> {
    /// Enter transmission.
    Transmit(Box<Session<E>>),
    /// The client aborted (`NBD_OPT_ABORT`) or closed the connection
    /// between options.
    ClientLeft(&'static str),
}

/// Drive the handshake on `io` until transmission, abort or error.
///
/// The caller applies the handshake timeout and abandons this future when
/// the server shuts down; `shutdown` is only consulted to answer options
/// that race with it (`NBD_REP_ERR_SHUTDOWN`).
pub(crate) async fn run<S, P>(
    io: &mut S,
    provider: &P,
    max_payload: u32,
    shutdown: &Shutdown,
) -> Result<Outcome<P::Export>, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: ExportProvider,
{
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&proto::NBDMAGIC.to_be_bytes());
    out.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES).to_be_bytes());
    io.write_all(&out).await?;
    io.flush().await?;
    out.clear();

    let mut flags = [0u8; 4];
    if !read_exact_or_eof(io, &mut flags).await? {
        return Ok(Outcome::ClientLeft("closed before sending client flags"));
    }
    let client_flags = u32::from_be_bytes(flags);
    if client_flags & !proto::KNOWN_CLIENT_FLAGS != 0 {
        // "the server MUST drop the TCP connection if the client sets an
        // unknown flag".
        return Err(ProtocolError::BadClientFlags(client_flags).into());
    }
    // A client without NBD_FLAG_C_FIXED_NEWSTYLE is still served with fixed
    // newstyle replies (the spec allows it); such old clients only send
    // NBD_OPT_EXPORT_NAME, which has no fixed-newstyle reply anyway.
    let mut negotiator = Negotiator::new(provider, max_payload, client_flags);
    let mut data = Vec::new();
    loop {
        let mut header = [0u8; 16];
        if !read_exact_or_eof(io, &mut header).await? {
            return Ok(Outcome::ClientLeft("closed during option haggling"));
        }
        // Option header: IHAVEOPT (8), option (4), data length (4). Constant
        // indices into the fixed-size array are checked at compile time.
        let h = header;
        let magic = u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
        if magic != proto::IHAVEOPT {
            return Err(ProtocolError::BadOptionMagic(magic).into());
        }
        let code = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let len = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);

        let step = if len > MAX_OPTION_DATA {
            if len > MAX_OPTION_DISCARD {
                return Err(ProtocolError::OptionTooLarge { option: code, len }.into());
            }
            skip(io, len).await?;
            negotiator.handle_oversized(code, len, &mut out)
        } else {
            // Bounded by MAX_OPTION_DATA above.
            data.resize(len as usize, 0);
            io.read_exact(&mut data).await.map_err(eof_is_protocol)?;
            negotiator.handle(code, &data, shutdown.is_triggered(), &mut out)
        };
        if !out.is_empty() {
            io.write_all(&out).await?;
            io.flush().await?;
            out.clear();
        }
        match step {
            Step::Continue => {}
            Step::Abort => return Ok(Outcome::ClientLeft("client sent NBD_OPT_ABORT")),
            Step::Close(e) => return Err(e.into()),
            Step::Transmit(session) => return Ok(Outcome::Transmit(session)),
        }
    }
}

/// Fill `buf`, or return `Ok(false)` on end-of-stream before the first byte.
/// End-of-stream after the first byte is a truncated message.
pub(crate) async fn read_exact_or_eof<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> Result<bool, ConnectionError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(ProtocolError::Truncated.into());
        }
        filled += n;
    }
    Ok(true)
}

/// Read and drop `len` bytes without buffering them all.
pub(crate) async fn skip<R: AsyncRead + Unpin>(r: &mut R, len: u32) -> Result<(), ConnectionError> {
    if len == 0 {
        return Ok(());
    }
    let copied = tokio::io::copy(&mut r.take(u64::from(len)), &mut tokio::io::sink()).await?;
    if copied < u64::from(len) {
        return Err(ProtocolError::Truncated.into());
    }
    Ok(())
}

fn eof_is_protocol(e: std::io::Error) -> ConnectionError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ProtocolError::Truncated.into()
    } else {
        e.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{ExportError, Extent, ReadChunk, ZeroFlags};
    use bytes::Bytes;

    struct Dummy {
        read_only: bool,
        any_alignment: bool,
    }

    impl Export for Dummy {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read_only(&self) -> bool {
            self.read_only
        }
        fn block_sizes(&self) -> BlockSizes {
            BlockSizes {
                minimum: 512,
                preferred: 4096,
                maximum: 1 << 20,
            }
        }
        fn unnegotiated_block_sizes(&self) -> Option<BlockSizes> {
            self.any_alignment.then(|| bs(1, 4096, 2 << 20))
        }
        fn can_multi_conn(&self) -> bool {
            true
        }
        fn description(&self) -> String {
            "a dummy".into()
        }
        async fn read(&self, _: u64, len: u32) -> Result<Vec<ReadChunk>, ExportError> {
            Ok(vec![ReadChunk::Zero(len)])
        }
        async fn write(&self, _: u64, _: Bytes, _: bool) -> Result<(), ExportError> {
            Ok(())
        }
        async fn flush(&self) -> Result<(), ExportError> {
            Ok(())
        }
        async fn trim(&self, _: u64, _: u32, _: bool) -> Result<(), ExportError> {
            Ok(())
        }
        async fn write_zeroes(&self, _: u64, _: u32, _: ZeroFlags) -> Result<(), ExportError> {
            Ok(())
        }
        async fn block_status(&self, _: u64, len: u32) -> Result<Vec<Extent>, ExportError> {
            Ok(vec![Extent {
                length: len,
                hole: true,
                zero: true,
            }])
        }
        async fn cache(&self, _: u64, _: u32) -> Result<(), ExportError> {
            Ok(())
        }
    }

    struct Provider;

    impl ExportProvider for Provider {
        type Export = Dummy;
        fn list(&self) -> Vec<(String, String)> {
            vec![
                ("disk".into(), "first".into()),
                ("ro".into(), String::new()),
                ("bad\0name".into(), String::new()),
            ]
        }
        fn open(&self, name: &str) -> Result<Dummy, OpenError> {
            match name {
                "disk" | "" => Ok(Dummy {
                    read_only: false,
                    any_alignment: false,
                }),
                "ro" => Ok(Dummy {
                    read_only: true,
                    any_alignment: false,
                }),
                "any" => Ok(Dummy {
                    read_only: false,
                    any_alignment: true,
                }),
                "locked" => Err(OpenError::Refused("volume is locked".into())),
                "busy" => Err(OpenError::Unavailable("volume is being restored".into())),
                other => Err(OpenError::Unknown(other.into())),
            }
        }
    }

    /// Parsed option replies: (option, type, data).
    fn replies(mut out: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut v = Vec::new();
        while !out.is_empty() {
            assert_eq!(&out[..8], &proto::OPTION_REPLY_MAGIC.to_be_bytes());
            let opt = u32::from_be_bytes(out[8..12].try_into().unwrap());
            let typ = u32::from_be_bytes(out[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(out[16..20].try_into().unwrap()) as usize;
            v.push((opt, typ, out[20..20 + len].to_vec()));
            out = &out[20 + len..];
        }
        v
    }

    fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        d
    }

    #[test]
    fn go_sends_info_then_ack_and_transmits() {
        let p = Provider;
        let mut n = Negotiator::new(&p, 1 << 25, proto::FLAG_C_FIXED_NEWSTYLE);
        let mut out = Vec::new();
        assert!(matches!(
            n.handle(proto::OPT_STRUCTURED_REPLY, &[], false, &mut out),
            Step::Continue
        ));
        out.clear();
        let step = n.handle(
            proto::OPT_GO,
            &info_data("disk", &[proto::INFO_NAME, proto::INFO_DESCRIPTION, 999]),
            false,
            &mut out,
        );
        let Step::Transmit(s) = step else {
            panic!("expected transmission")
        };
        assert!(s.structured);
        assert!(!s.base_allocation);
        assert_eq!(s.name, "disk");
        let r = replies(&out);
        assert_eq!(r.len(), 5);
        assert!(r.iter().all(|(o, _, _)| *o == proto::OPT_GO));
        // INFO_EXPORT
        assert_eq!(r[0].1, proto::REP_INFO);
        assert_eq!(&r[0].2[..2], &[0, 0]);
        assert_eq!(&r[0].2[2..10], &(1u64 << 20).to_be_bytes());
        let flags = u16::from_be_bytes([r[0].2[10], r[0].2[11]]);
        assert_eq!(flags, s.params.flags);
        assert_ne!(flags & proto::TFLAG_SEND_DF, 0);
        assert_ne!(flags & proto::TFLAG_CAN_MULTI_CONN, 0);
        assert_eq!(flags & proto::TFLAG_READ_ONLY, 0);
        // INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE, ACK
        assert_eq!(&r[1].2[..], b"\0\x01disk");
        assert_eq!(&r[2].2[..], b"\0\x02a dummy");
        assert_eq!(
            &r[3].2[..],
            &[0, 3, 0, 0, 2, 0, 0, 0, 0x10, 0, 0, 0x10, 0, 0]
        );
        assert_eq!(r[4].1, proto::REP_ACK);
        assert!(r[4].2.is_empty());
    }

    #[test]
    fn info_does_not_transmit_and_errors_map() {
        let p = Provider;
        let mut n = Negotiator::new(&p, 1 << 25, 1);
        let mut out = Vec::new();
        assert!(matches!(
            n.handle(proto::OPT_INFO, &info_data("ro", &[]), false, &mut out),
            Step::Continue
        ));
        let r = replies(&out);
        let flags = u16::from_be_bytes([r[0].2[10], r[0].2[11]]);
        assert_ne!(flags & proto::TFLAG_READ_ONLY, 0);
        assert_eq!(flags & proto::TFLAG_SEND_TRIM, 0);
        assert_eq!(flags & proto::TFLAG_SEND_DF, 0, "no DF without structured");
        assert_eq!(r.last().unwrap().1, proto::REP_ACK);

        for (name, rep, msg) in [
            ("nope", proto::REP_ERR_UNKNOWN, "unknown export: nope"),
            ("locked", proto::REP_ERR_POLICY, "volume is locked"),
            ("busy", proto::REP_ERR_UNKNOWN, "volume is being restored"),
        ] {
            out.clear();
            assert!(matches!(
                n.handle(proto::OPT_GO, &info_data(name, &[]), false, &mut out),
                Step::Continue
            ));
            let r = replies(&out);
            assert_eq!(r.len(), 1, "no INFO before an error");
            assert_eq!(r[0].1, rep);
            assert_eq!(r[0].2, msg.as_bytes());
        }
    }

    #[test]
    fn malformed_options_get_invalid() {
        let p = Provider;
        let mut n = Negotiator::new(&p, 1 << 25, 1);
        let mut out = Vec::new();
        for (code, data) in [
            (proto::OPT_GO, Vec::new()),
            (proto::OPT_INFO, vec![0, 0, 0, 9, b'x']),
            (proto::OPT_GO, info_data(&"n".repeat(4097), &[])),
            (proto::OPT_LIST, vec![1]),
            (proto::OPT_STRUCTURED_REPLY, vec![1, 2]),
            (proto::OPT_SET_META_CONTEXT, vec![0, 0]),
            (proto::OPT_STARTTLS, vec![0]),
        ] {
            out.clear();
            assert!(matches!(
                n.handle(code, &data, false, &mut out),
                Step::Continue
            ));
            let r = replies(&out);
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].0, code);
            assert_eq!(r[0].1, proto::REP_ERR_INVALID, "option {code}");
            assert!(!r[0].2.is_empty(), "error replies carry a message");
        }
    }

    #[test]
    fn unsupported_options() {
        let p = Provider;
        let mut n = Negotiator::new(&p, 1 << 25, 1);
        for code in [
            proto::OPT_STARTTLS,
            proto::OPT_EXTENDED_HEADERS,
            proto::OPT_PEEK_EXPORT,
            12,
            0xffff_ffff,
        ] {
            let mut out = Vec::new();
            assert!(matches!(
                n.handle(code, &[], false, &mut out),
                Step::Continue
            ));
            let r = replies(&out);
            assert_eq!(r[0].1, proto::REP_ERR_UNSUP, "option {code}");
        }
    }

    /// The block-size info sent in `out` (minimum, preferred, maximum).
    fn block_size_info(out: &[u8]) -> (u32, u32, u32) {
        let r = replies(out);
        let d = &r
            .iter()
            .find(|(_, t, d)| {
                *t == proto::REP_INFO && d[..2] == proto::INFO_BLOCK_SIZE.to_be_bytes()
            })
            .expect("block size info")
            .2;
        let at = |i: usize| u32::from_be_bytes(d[i..i + 4].try_into().unwrap());
        (at(2), at(6), at(10))
    }

    #[test]
    fn only_clients_that_ask_for_block_sizes_are_held_to_them() {
        let p = Provider;
        let transmit = |code: u32, data: &[u8]| {
            let mut n = Negotiator::new(&p, 1 << 25, proto::FLAG_C_FIXED_NEWSTYLE);
            let mut out = Vec::new();
            match n.handle(code, data, false, &mut out) {
                Step::Transmit(s) => (s.params.block, out),
                _ => panic!("expected transmission"),
            }
        };
        // An export that serves any alignment: the defaults (minimum 1) for
        // clients that did not ask, its own constraints for those that did.
        let (b, _) = transmit(proto::OPT_EXPORT_NAME, b"any");
        assert_eq!(b, bs(1, 4096, 2 << 20));
        let (b, out) = transmit(proto::OPT_GO, &info_data("any", &[]));
        assert_eq!(b, bs(1, 4096, 2 << 20));
        assert_eq!(
            block_size_info(&out),
            (1, 4096, 2 << 20),
            "what is enforced is sent"
        );
        let (b, out) = transmit(proto::OPT_GO, &info_data("any", &[proto::INFO_BLOCK_SIZE]));
        assert_eq!(b, bs(512, 4096, 1 << 20));
        assert_eq!(block_size_info(&out), (512, 4096, 1 << 20));
        // An export that needs alignment holds everyone to it.
        let (b, _) = transmit(proto::OPT_EXPORT_NAME, b"disk");
        assert_eq!(b.minimum, 512);
        let (b, _) = transmit(proto::OPT_GO, &info_data("disk", &[]));
        assert_eq!(b.minimum, 512);
    }

    #[test]
    fn export_name_with_and_without_zeroes() {
        let p = Provider;
        let mut out = Vec::new();
        let mut n = Negotiator::new(&p, 1 << 25, proto::FLAG_C_FIXED_NEWSTYLE);
        assert!(matches!(
            n.handle(proto::OPT_EXPORT_NAME, b"disk", false, &mut out),
            Step::Transmit(_)
        ));
        assert_eq!(out.len(), 8 + 2 + 124);
        assert!(out[10..].iter().all(|&b| b == 0));

        out.clear();
        let mut n = Negotiator::new(&p, 1 << 25, 3);
        assert!(matches!(
            n.handle(proto::OPT_EXPORT_NAME, b"", false, &mut out),
            Step::Transmit(_)
        ));
        assert_eq!(out.len(), 10);

        out.clear();
        assert!(matches!(
            n.handle(proto::OPT_EXPORT_NAME, b"nope", false, &mut out),
            Step::Close(ProtocolError::ExportNameRefused { .. })
        ));
        assert!(out.is_empty());
        assert!(matches!(
            n.handle(proto::OPT_EXPORT_NAME, &[0xff], false, &mut out),
            Step::Close(ProtocolError::BadExportName(_))
        ));
    }

    #[test]
    fn list_skips_unrepresentable_names() {
        let p = Provider;
        let mut n = Negotiator::new(&p, 1 << 25, 1);
        let mut out = Vec::new();
        n.handle(proto::OPT_LIST, &[], false, &mut out);
        let r = replies(&out);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].1, proto::REP_SERVER);
        assert_eq!(&r[0].2[..], b"\0\0\0\x04diskfirst");
        assert_eq!(&r[1].2[..], b"\0\0\0\x02ro");
        assert_eq!(r[2].1, proto::REP_ACK);
    }

    #[test]
    fn meta_contexts() {
        let p = Provider;
        let mut n = Negotiator::new(&p, 1 << 25, 1);
        let mut out = Vec::new();

        // SET before structured replies is invalid.
        n.handle(
            proto::OPT_SET_META_CONTEXT,
            &meta_data("disk", &["base:allocation"]),
            false,
            &mut out,
        );
        assert_eq!(replies(&out)[0].1, proto::REP_ERR_INVALID);

        // LIST works, with wildcard and with no queries.
        for queries in [
            &["base:"][..],
            &[][..],
            &["base:allocation", "x-foo:bar"][..],
        ] {
            out.clear();
            n.handle(
                proto::OPT_LIST_META_CONTEXT,
                &meta_data("disk", queries),
                false,
                &mut out,
            );
            let r = replies(&out);
            assert_eq!(r.len(), 2, "{queries:?}");
            assert_eq!(r[0].1, proto::REP_META_CONTEXT);
            assert_eq!(&r[0].2[..4], &[0, 0, 0, 0]);
            assert_eq!(&r[0].2[4..], b"base:allocation");
            assert_eq!(r[1].1, proto::REP_ACK);
        }
        out.clear();
        n.handle(
            proto::OPT_LIST_META_CONTEXT,
            &meta_data("disk", &["qemu:dirty-bitmap:a"]),
            false,
            &mut out,
        );
        assert_eq!(replies(&out).len(), 1, "unknown namespaces are ignored");

        n.handle(proto::OPT_STRUCTURED_REPLY, &[], false, &mut out);
        // `base:` selects nothing.
        out.clear();
        n.handle(
            proto::OPT_SET_META_CONTEXT,
            &meta_data("disk", &["base:"]),
            false,
            &mut out,
        );
        assert_eq!(replies(&out).len(), 1);
        out.clear();
        n.handle(
            proto::OPT_SET_META_CONTEXT,
            &meta_data("disk", &["base:allocation"]),
            false,
            &mut out,
        );
        let r = replies(&out);
        assert_eq!(r.len(), 2);
        assert_eq!(&r[0].2[..4], &BASE_ALLOCATION_ID.to_be_bytes());

        // GO on another export drops the selection.
        out.clear();
        let Step::Transmit(s) = n.handle(proto::OPT_GO, &info_data("", &[]), false, &mut out)
        else {
            panic!()
        };
        assert!(!s.base_allocation);
        let Step::Transmit(s) = n.handle(proto::OPT_GO, &info_data("disk", &[]), false, &mut out)
        else {
            panic!()
        };
        assert!(s.base_allocation);
    }

    #[test]
    fn shutdown_errors_options_but_acks_abort() {
        let p = Provider;
        let mut n = Negotiator::new(&p, 1 << 25, 1);
        let mut out = Vec::new();
        n.handle(proto::OPT_GO, &info_data("disk", &[]), true, &mut out);
        assert_eq!(replies(&out)[0].1, proto::REP_ERR_SHUTDOWN);
        out.clear();
        assert!(matches!(
            n.handle(proto::OPT_ABORT, &[], true, &mut out),
            Step::Abort
        ));
        assert_eq!(replies(&out)[0].1, proto::REP_ACK);
        assert!(matches!(
            n.handle(proto::OPT_EXPORT_NAME, b"disk", true, &mut out),
            Step::Close(ProtocolError::ShuttingDown)
        ));
    }

    #[test]
    fn oversized_options() {
        let p = Provider;
        let mut n = Negotiator::new(&p, 1 << 25, 1);
        let mut out = Vec::new();
        assert!(matches!(
            n.handle_oversized(proto::OPT_GO, 100_000, &mut out),
            Step::Continue
        ));
        assert_eq!(replies(&out)[0].1, proto::REP_ERR_TOO_BIG);
        out.clear();
        n.handle_oversized(77, 100_000, &mut out);
        assert_eq!(replies(&out)[0].1, proto::REP_ERR_UNSUP);
        assert!(matches!(
            n.handle_oversized(proto::OPT_EXPORT_NAME, 100_000, &mut out),
            Step::Close(_)
        ));
    }

    fn bs(minimum: u32, preferred: u32, maximum: u32) -> BlockSizes {
        BlockSizes {
            minimum,
            preferred,
            maximum,
        }
    }

    #[test]
    fn block_sizes_are_clamped_to_spec() {
        // Sane values pass through (maximum capped by the server limit).
        assert_eq!(
            effective_block_sizes(bs(512, 4096, u32::MAX), 1 << 25),
            bs(512, 4096, 1 << 25)
        );
        assert_eq!(
            effective_block_sizes(bs(4096, 65536, 1 << 20), 1 << 25),
            bs(4096, 65536, 1 << 20)
        );
        // Zero / non-power-of-two / too large minimum.
        assert_eq!(effective_block_sizes(bs(0, 0, 0), 1 << 25).minimum, 1);
        assert_eq!(
            effective_block_sizes(bs(3000, 0, 1 << 20), 1 << 25).minimum,
            4096
        );
        assert_eq!(
            effective_block_sizes(bs(1 << 20, 0, 1 << 20), 1 << 25).minimum,
            1 << 16
        );
        // Preferred below 512 or not a power of two.
        assert_eq!(
            effective_block_sizes(bs(1, 1, 1 << 20), 1 << 25).preferred,
            512
        );
        assert_eq!(
            effective_block_sizes(bs(1, 5000, 1 << 20), 1 << 25).preferred,
            8192
        );
        // Maximum below preferred: preferred shrinks, never below the floor.
        assert_eq!(
            effective_block_sizes(bs(512, 1 << 20, 65536), 1 << 25),
            bs(512, 65536, 65536)
        );
        assert_eq!(
            effective_block_sizes(bs(4096, 4096, 100), 1 << 25),
            bs(4096, 4096, 4096)
        );
        // Maximum rounded down to a multiple of the minimum.
        assert_eq!(
            effective_block_sizes(bs(4096, 4096, 100_000), 1 << 25).maximum,
            98_304
        );
        // Every output satisfies the spec's rules.
        for min in [0, 1, 7, 512, 4096, 1 << 16, 1 << 17, u32::MAX] {
            for pref in [0, 1, 512, 5000, 1 << 20, u32::MAX] {
                for max in [0, 1, 4096, 100_000, 1 << 25, u32::MAX] {
                    let b = effective_block_sizes(bs(min, pref, max), 1 << 25);
                    assert!(b.minimum.is_power_of_two() && b.minimum <= 1 << 16);
                    assert!(b.preferred.is_power_of_two());
                    assert!(b.preferred >= b.minimum.max(512));
                    assert!(b.maximum >= b.preferred);
                    assert_eq!(b.maximum % b.minimum, 0);
                }
            }
        }
    }
}
