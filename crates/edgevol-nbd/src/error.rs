//! Error types of the server.

use std::time::Duration;

use crate::export::OpenError;
use crate::option::OptionError;

/// Why a connection ended abnormally. Each of these closes one connection
/// only; the server keeps serving the others.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The socket failed (reset, broken pipe, ...).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The client did not finish the handshake in time.
    #[error("handshake not completed within {0:?}")]
    HandshakeTimeout(Duration),
    /// The client broke the protocol in a way that makes continuing unsafe.
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    /// Replies could not be delivered within the shutdown grace period after
    /// the connection stopped reading requests (client not reading).
    #[error("replies not delivered within {0:?}; connection dropped")]
    DrainTimeout(Duration),
    /// The server configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
}

/// A protocol violation that ends the connection (a "hard disconnect" in
/// the spec's terms).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The client set client flags this server does not know.
    #[error("unknown client flags {0:#x}")]
    BadClientFlags(u32),
    /// An option did not start with `IHAVEOPT`.
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    /// An option's data length is too large to even skip.
    #[error("option {option} data length {len} is too large")]
    OptionTooLarge {
        /// Option code.
        option: u32,
        /// Announced data length.
        len: u32,
    },
    /// `NBD_OPT_EXPORT_NAME` with an invalid name (it cannot report errors).
    #[error("invalid NBD_OPT_EXPORT_NAME: {0}")]
    BadExportName(OptionError),
    /// `NBD_OPT_EXPORT_NAME` for an export that could not be opened.
    #[error("NBD_OPT_EXPORT_NAME {name:?} refused: {source}")]
    ExportNameRefused {
        /// Requested name.
        name: String,
        /// Why it could not be opened.
        source: OpenError,
    },
    /// `NBD_OPT_EXPORT_NAME` while the server is shutting down.
    #[error("NBD_OPT_EXPORT_NAME while the server is shutting down")]
    ShuttingDown,
    /// A request did not start with `NBD_REQUEST_MAGIC`.
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    /// A write announced a payload too large to read or skip.
    #[error("write payload of {0} bytes is too large")]
    PayloadTooLarge(u32),
    /// The stream ended in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
}

/// An invalid [`ServerConfig`](crate::ServerConfig) value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Why a listener loop stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The server configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
}
