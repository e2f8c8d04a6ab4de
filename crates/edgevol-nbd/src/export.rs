//! The contract between the NBD server and whatever stores the bytes.
//!
//! The server knows nothing about pools or volumes: it asks an
//! [`ExportProvider`] to open an export by name and then turns every NBD
//! command into one call on the returned [`Export`]. The daemon implements
//! these traits over the engine; the tests implement them over memory.

use std::future::Future;

use bytes::Bytes;

/// An errno-style status the server sends back to the client.
///
/// The values are the NBD protocol's error numbers (which match Linux errno
/// for the ones NBD defines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Errno {
    /// EPERM: operation not permitted (e.g. a write to a read-only export).
    Perm,
    /// EIO: the data could not be read or written (checksum mismatch, device failure).
    Io,
    /// ENOMEM: the server is out of memory for this request.
    NoMem,
    /// EINVAL: the request is malformed (misaligned, out of range, bad flags).
    Inval,
    /// ENOSPC: no space left (pool full, quota reached).
    NoSpc,
    /// EOVERFLOW: the request is too large.
    Overflow,
    /// ENOTSUP: the operation is not supported (e.g. FAST_ZERO that cannot be fast).
    NotSup,
    /// ESHUTDOWN: the server is shutting down.
    Shutdown,
}

impl Errno {
    /// The number sent on the wire (NBD protocol, section "Error values").
    pub fn code(self) -> u32 {
        match self {
            Errno::Perm => 1,
            Errno::Io => 5,
            Errno::NoMem => 12,
            Errno::Inval => 22,
            Errno::NoSpc => 28,
            Errno::Overflow => 75,
            Errno::NotSup => 95,
            Errno::Shutdown => 108,
        }
    }
}

/// A failed export operation: the status for the client and a message for
/// the log (and, with structured replies, for the client too).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ExportError {
    /// What the client is told.
    pub errno: Errno,
    /// Human-readable context; never contains data bytes.
    pub message: String,
}

impl ExportError {
    /// Build an error from a status and a message.
    pub fn new(errno: Errno, message: impl Into<String>) -> Self {
        ExportError {
            errno,
            message: message.into(),
        }
    }
}

/// Why an export could not be opened during the handshake.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    /// No export has this name (NBD_REP_ERR_UNKNOWN).
    #[error("unknown export: {0}")]
    Unknown(String),
    /// The export exists but may not be used now, e.g. its encryption key is
    /// not loaded or it is attached exclusively elsewhere
    /// (NBD_REP_ERR_POLICY with this message).
    #[error("{0}")]
    Refused(String),
    /// The export exists but is temporarily unavailable. The NBD spec has no
    /// "unavailable" reply (there is no NBD_REP_ERR_UNAVAIL), so this is sent
    /// as NBD_REP_ERR_UNKNOWN ("The requested export is not available") with
    /// this message.
    #[error("{0}")]
    Unavailable(String),
}

/// Block size constraints advertised with NBD_INFO_BLOCK_SIZE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Smallest request the export accepts; offsets and lengths must be multiples.
    pub minimum: u32,
    /// Preferred request size for performance.
    pub preferred: u32,
    /// Largest payload of a single request.
    pub maximum: u32,
}

/// One piece of a read reply. A read returns a list of pieces that together
/// cover exactly the requested length, in order.
#[derive(Debug, Clone)]
pub enum ReadChunk {
    /// Bytes read from storage.
    Data(Bytes),
    /// A run of this many bytes that reads as zeroes (sent as a hole with
    /// structured replies, or as zero bytes otherwise).
    Zero(u32),
}

/// Allocation state of a range, as `base:allocation` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes (a multiple of the minimum block size, except possibly
    /// the last extent at the end of the export).
    pub length: u32,
    /// Not allocated (NBD_STATE_HOLE).
    pub hole: bool,
    /// Reads as zeroes (NBD_STATE_ZERO).
    pub zero: bool,
}

/// Flags of a WRITE_ZEROES request the export must honour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZeroFlags {
    /// Durable on return (NBD_CMD_FLAG_FUA).
    pub fua: bool,
    /// Keep the range allocated (NBD_CMD_FLAG_NO_HOLE).
    pub no_hole: bool,
    /// Fail with ENOTSUP instead of writing zeroes slowly (NBD_CMD_FLAG_FAST_ZERO).
    pub fast: bool,
}

/// An open export: one volume or snapshot as a client sees it.
///
/// Offsets and lengths handed to these methods have already been checked by
/// the server against [`Export::size`] and [`Export::block_sizes`]; an
/// implementation still rejects out-of-range requests with `Inval` rather
/// than trusting its caller.
///
/// Dropping the value detaches the client (the provider may count attached
/// clients through it).
///
/// The futures need not be `Send`: a connection and its requests run on one
/// thread (a `tokio::task::LocalSet`), so an export can do its I/O through
/// that thread's own resources (e.g. its io_uring).
pub trait Export: Send + Sync + 'static {
    /// Size in bytes. May change between calls (online resize).
    fn size(&self) -> u64;
    /// True if writes, trims and zeroes must be refused with EPERM.
    fn read_only(&self) -> bool;
    /// Block size constraints, advertised to (and enforced on) clients
    /// that ask for them (`NBD_INFO_BLOCK_SIZE` in `NBD_OPT_GO`).
    fn block_sizes(&self) -> BlockSizes;
    /// Size constraints for clients that did not ask for block sizes
    /// (`NBD_OPT_EXPORT_NAME`, or `NBD_OPT_GO` without
    /// `NBD_INFO_BLOCK_SIZE`). The spec's defaults for them are a minimum
    /// of 1 and a maximum payload of at least 2^25; an export that serves
    /// any byte alignment (doing any read-modify-write itself) says so
    /// here. `None` (the default): [`Export::block_sizes`] apply to every
    /// client, and requests outside them are answered `EINVAL`.
    fn unnegotiated_block_sizes(&self) -> Option<BlockSizes> {
        None
    }
    /// True if a flush on any connection makes writes acknowledged on every
    /// connection durable, and all connections see one consistent cache
    /// (NBD_FLAG_CAN_MULTI_CONN).
    fn can_multi_conn(&self) -> bool;
    /// A short description for NBD_INFO_DESCRIPTION / OPT_LIST.
    fn description(&self) -> String;

    /// Read `len` bytes at `offset`.
    fn read(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Vec<ReadChunk>, ExportError>>;
    /// Write `data` at `offset`; durable on return if `fua`.
    fn write(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> impl Future<Output = Result<(), ExportError>>;
    /// Make every write acknowledged so far (on any connection) durable.
    fn flush(&self) -> impl Future<Output = Result<(), ExportError>>;
    /// Deallocate a range; it reads as zeroes afterwards.
    fn trim(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
    ) -> impl Future<Output = Result<(), ExportError>>;
    /// Make a range read as zeroes.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        flags: ZeroFlags,
    ) -> impl Future<Output = Result<(), ExportError>>;
    /// Allocation state from `offset`: extents covering at least the first
    /// byte and at most `len` bytes, in order, without gaps.
    fn block_status(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Vec<Extent>, ExportError>>;
    /// Prefetch a range (NBD_CMD_CACHE); may do nothing.
    fn cache(&self, offset: u64, len: u32) -> impl Future<Output = Result<(), ExportError>>;
}

/// Names and opens exports.
pub trait ExportProvider: Send + Sync + 'static {
    /// The concrete export type.
    type Export: Export;
    /// Exports offered to NBD_OPT_LIST: (name, description).
    fn list(&self) -> Vec<(String, String)>;
    /// Open an export by name for one client connection.
    fn open(&self, name: &str) -> Result<Self::Export, OpenError>;
}
