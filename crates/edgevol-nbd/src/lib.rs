//! NBD server for edgevol: the fixed-newstyle handshake and the transmission
//! phase, over TCP or Unix sockets, serving any [`ExportProvider`].
//!
//! The protocol is implemented from the NBD specification
//! (NetworkBlockDevice/nbd, `doc/proto.md`): fixed newstyle negotiation
//! without TLS, `NBD_OPT_INFO`/`NBD_OPT_GO` with block sizes, structured
//! replies (holes sent as `NBD_REPLY_TYPE_OFFSET_HOLE`), the
//! `base:allocation` metadata context, and every command of the base
//! protocol with FUA, NO_HOLE, FAST_ZERO, DF and REQ_ONE. See the crate's
//! README for the feature table.
//!
//! # Serving
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn demo<P: edgevol_nbd::ExportProvider>(provider: Arc<P>) -> Result<(), Box<dyn std::error::Error>> {
//! use edgevol_nbd::{serve_tcp, ServerConfig, Shutdown};
//!
//! // Connections run on this thread's LocalSet (their futures need not be
//! // Send); `serve_tcp_on` spreads them over threads instead.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:10809").await?;
//! let (stop, stop_rx) = tokio::sync::watch::channel(false);
//! let server = tokio::task::spawn_local(serve_tcp(
//!     listener,
//!     provider,
//!     ServerConfig::default(),
//!     Shutdown::new(stop_rx),
//! ));
//! // ... later: stop accepting, let connections finish in-flight requests.
//! stop.send_replace(true);
//! server.await??;
//! # Ok(())
//! # }
//! ```
//!
//! [`serve_stream`] serves one already-accepted stream of any type (for
//! example one end of `tokio::io::duplex`), which is how tests and fuzzers
//! drive the server without sockets.
//!
//! # Robustness
//!
//! Every byte from the wire is validated before use: no input can make the
//! server panic or allocate more than the configured limits. A protocol
//! violation closes only the offending connection.
#![deny(missing_docs)]

mod error;
mod export;
mod handshake;
pub mod option;
mod proto;
mod reply;
pub mod request;
mod server;
mod transmission;

pub use error::{ConfigError, ConnectionError, ProtocolError, ServeError};
pub use export::{
    BlockSizes, Errno, Export, ExportError, ExportProvider, Extent, OpenError, ReadChunk, ZeroFlags,
};
pub use server::{
    serve_stream, serve_tcp, serve_tcp_on, serve_unix, serve_unix_on, ConnSpawner, ConnTask,
    ServerConfig, Shutdown, SpawnLocal,
};
