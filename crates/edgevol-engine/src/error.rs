//! The engine's error type: a small, stable [`ErrorKind`] that adapters map
//! to protocol statuses, a message with context, and an optional source.
//!
//! ```text
//! Error
//!  |-- ErrorKind      -- matchable classification (NotFound, NoSpace, Corrupt, ...)
//!  |-- message        -- what failed, with names/offsets (never data bytes)
//!  `-- source         -- the underlying io::Error or decode error, if any
//! ```

use std::fmt;

/// What kind of failure this is. Adapters map it to EINVAL/ENOSPC/EIO/EPERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A named pool, volume or snapshot does not exist.
    NotFound,
    /// The name is already taken.
    AlreadyExists,
    /// The request is malformed: bad name, size, alignment, range or property.
    InvalidArgument,
    /// No space left in the pool (or beyond a quota or reserve).
    NoSpace,
    /// The target is read-only (a snapshot, a read-only volume).
    ReadOnly,
    /// The operation conflicts with the object's state (has clones, in use).
    Busy,
    /// Stored data or metadata failed verification.
    Corrupt,
    /// A device failed an I/O.
    Io,
    /// The pool stopped accepting writes after an earlier failure.
    Poisoned,
    /// The pool is shutting down.
    Shutdown,
    /// The on-disk format is newer or otherwise unsupported.
    Unsupported,
    /// A key is wrong, or an encrypted volume's key is not loaded.
    PermissionDenied,
    /// A device holds data of another kind (a file system, a partition
    /// table, another pool): it is overwritten only when forced.
    ForeignData,
}

impl ErrorKind {
    /// A short lowercase name, stable for logs and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not-found",
            ErrorKind::AlreadyExists => "already-exists",
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::NoSpace => "no-space",
            ErrorKind::ReadOnly => "read-only",
            ErrorKind::Busy => "busy",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Io => "io",
            ErrorKind::Poisoned => "poisoned",
            ErrorKind::Shutdown => "shutdown",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::PermissionDenied => "permission-denied",
            ErrorKind::ForeignData => "foreign-data",
        }
    }
}

/// An engine error.
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A new error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The classification.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the source chain.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn io(context: impl Into<String>, err: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, context).with_source(err)
    }

    pub(crate) fn corrupt(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Corrupt, message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotFound, message)
    }

    /// Same kind and message, without the source (errors are shared with
    /// several waiters).
    pub(crate) fn duplicate(&self) -> Self {
        let mut message = self.message.clone();
        if let Some(src) = &self.source {
            message = format!("{message}: {src}");
        }
        Error::new(self.kind, message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Errors from decoding on-disk structures. Always means the bytes are not
/// what this version wrote: corruption, a torn write, or a foreign device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The magic number does not match.
    #[error("bad magic")]
    BadMagic,
    /// The checksum does not match.
    #[error("checksum mismatch")]
    BadChecksum,
    /// A newer (or unknown) format version.
    #[error("unsupported format version {0}")]
    Version(u32),
    /// The buffer ends before the structure does.
    #[error("truncated")]
    Truncated,
    /// A field holds a value this version never writes.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::corrupt("on-disk structure failed to decode").with_source(e)
    }
}
