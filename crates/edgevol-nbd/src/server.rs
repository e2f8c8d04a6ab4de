//! Listeners, connection lifecycle, configuration and shutdown.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tracing::{error, info, info_span, warn, Instrument};

use crate::error::{ConfigError, ConnectionError, ServeError};
use crate::export::ExportProvider;
use crate::handshake::{self, Outcome};
use crate::transmission::{self, Stats};

/// Server limits and timeouts.
///
/// Construct with [`ServerConfig::default`] and adjust fields; invalid
/// values are reported by [`ServerConfig::validate`] (which every `serve_*`
/// function calls).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Maximum simultaneous connections per listener; further connections
    /// are accepted and closed immediately (logged). Default 256.
    pub max_connections: usize,
    /// Largest READ/WRITE payload accepted and advertised as the maximum
    /// block size (capped further by the export's own maximum). Between
    /// 64 KiB and 1 GiB. Default 32 MiB (2^25, the spec's interoperable
    /// maximum).
    pub max_payload: u32,
    /// Requests processed concurrently per connection; when reached the
    /// server stops reading that connection's socket. 1..=65536. Default 128.
    pub max_inflight_requests: usize,
    /// READ/WRITE payload bytes buffered per connection at once (write
    /// payloads received but not yet written, read data not yet sent); when
    /// reached the server stops reading that connection's socket. Raised to
    /// `max_payload` if smaller. Default 128 MiB.
    pub max_inflight_bytes: usize,
    /// Time a client has to complete the handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// After a connection stops reading requests (shutdown, disconnect,
    /// protocol error), how long its remaining replies may take to be
    /// delivered before the connection is dropped. Default 30 s.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 256,
            max_payload: 32 * 1024 * 1024,
            max_inflight_requests: 128,
            max_inflight_bytes: 128 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl ServerConfig {
    /// Check every field against its documented range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason| Err(ConfigError { field, reason });
        if self.max_connections == 0 {
            return err("max_connections", "must be at least 1");
        }
        if self.max_connections > Semaphore::MAX_PERMITS {
            return err("max_connections", "too large");
        }
        if !(64 * 1024..=1 << 30).contains(&self.max_payload) {
            return err("max_payload", "must be between 64 KiB and 1 GiB");
        }
        if !(1..=65536).contains(&self.max_inflight_requests) {
            return err("max_inflight_requests", "must be between 1 and 65536");
        }
        if self.max_inflight_bytes > Semaphore::MAX_PERMITS {
            return err("max_inflight_bytes", "too large");
        }
        if self.handshake_timeout.is_zero() {
            return err("handshake_timeout", "must be positive");
        }
        Ok(())
    }
}

/// A shutdown signal shared by a listener and its connections.
///
/// Built from a `tokio::sync::watch::Receiver<bool>`: shutdown is triggered
/// when the sender sends `true` or is dropped. On shutdown, listeners stop
/// accepting; connections in the handshake are closed; connections in
/// transmission answer further requests with `ESHUTDOWN`, finish the ones in
/// flight, then close.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: Option<watch::Receiver<bool>>,
}

impl Shutdown {
    /// A signal that never triggers (for [`serve_stream`] in tests and tools).
    pub fn never() -> Self {
        Shutdown { rx: None }
    }

    /// A signal triggered by `true` on the channel or by dropping its sender.
    pub fn new(rx: watch::Receiver<bool>) -> Self {
        Shutdown { rx: Some(rx) }
    }

    /// True once shutdown has been requested.
    pub fn is_triggered(&self) -> bool {
        match &self.rx {
            None => false,
            Some(rx) => *rx.borrow() || rx.has_changed().is_err(),
        }
    }

    /// Wait until shutdown is requested. Cancel-safe.
    pub async fn wait(&mut self) {
        match &mut self.rx {
            None => std::future::pending::<()>().await,
            Some(rx) => {
                // An error means the sender is gone, which also means stop.
                let _ = rx.wait_for(|stop| *stop).await;
            }
        }
    }
}

impl From<watch::Receiver<bool>> for Shutdown {
    fn from(rx: watch::Receiver<bool>) -> Self {
        Shutdown::new(rx)
    }
}

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Serve one already-accepted connection (TCP, Unix, an in-memory
/// `tokio::io::duplex` pipe, ...) until the client disconnects, the shutdown
/// signal fires or the connection fails.
///
/// Opening and closing are logged (`info`), as is any protocol violation
/// (`warn`); the returned error is the same one that was logged.
///
/// Must run inside a Tokio runtime with the time driver enabled, within a
/// `tokio::task::LocalSet` (requests are executed on local tasks of the
/// connection's thread; the handshake and shutdown use timers).
pub async fn serve_stream<P, S>(
    stream: S,
    provider: Arc<P>,
    config: &ServerConfig,
    shutdown: Shutdown,
) -> Result<(), ConnectionError>
where
    P: ExportProvider,
    S: AsyncRead + AsyncWrite + Unpin,
{
    config.validate()?;
    let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("nbd_conn", id);
    async move {
        let started = Instant::now();
        info!("nbd connection opened");
        // One buffered reader for both phases: read-ahead during the
        // handshake (a client may pipeline its first requests right after
        // NBD_OPT_GO) carries over into transmission.
        let mut io = BufReader::with_capacity(64 * 1024, stream);
        let handshake = tokio::time::timeout(
            config.handshake_timeout,
            handshake::run(&mut io, &*provider, config.max_payload, &shutdown),
        );
        let mut stop = shutdown.clone();
        let outcome = tokio::select! {
            r = handshake => match r {
                Ok(r) => r,
                Err(_) => Err(ConnectionError::HandshakeTimeout(config.handshake_timeout)),
            },
            // Nothing is in flight during the handshake: just close.
            _ = stop.wait() => {
                info!("nbd connection closed during handshake: server shutdown");
                return Ok(());
            }
        };
        let session = match outcome {
            Ok(Outcome::Transmit(session)) => session,
            Ok(Outcome::ClientLeft(why)) => {
                info!(reason = why, "nbd connection closed during handshake");
                return Ok(());
            }
            Err(e) => {
                warn!(error = %e, "nbd connection closed: handshake failed");
                return Err(e);
            }
        };
        let export = session.name.clone();
        info!(
            export = %export,
            size = session.params.size,
            flags = format_args!("{:#06x}", session.params.flags),
            structured = session.structured,
            base_allocation = session.base_allocation,
            "nbd transmission started"
        );
        let mut stats = Stats::default();
        let result = transmission::run(io, *session, config, shutdown, &mut stats).await;
        let elapsed = started.elapsed();
        match &result {
            Ok(ended) => info!(
                export = %export,
                reason = ended.as_str(),
                requests = stats.requests,
                rejected = stats.rejected,
                read_bytes = stats.read_bytes,
                written_bytes = stats.written_bytes,
                ?elapsed,
                "nbd connection closed"
            ),
            Err(e) => warn!(
                export = %export,
                error = %e,
                requests = stats.requests,
                rejected = stats.rejected,
                read_bytes = stats.read_bytes,
                written_bytes = stats.written_bytes,
                ?elapsed,
                "nbd connection closed on error"
            ),
        }
        result.map(|_| ())
    }
    .instrument(span)
    .await
}

/// A connection ready to be served: call it on the thread that will serve
/// it (inside a `tokio::task::LocalSet`) to get the future that serves it.
pub type ConnTask = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Decides which thread serves an accepted connection.
pub trait ConnSpawner: Send + Sync + 'static {
    /// Run `task` (build its future there, and drive it to completion).
    fn spawn(&self, task: ConnTask);
}

/// Serve every connection on the accepting thread's `LocalSet`.
pub struct SpawnLocal;

impl ConnSpawner for SpawnLocal {
    fn spawn(&self, task: ConnTask) {
        tokio::task::spawn_local(task());
    }
}

/// Serve NBD on a TCP listener until `shutdown` fires, then wait for the
/// open connections to finish (see [`Shutdown`]). Connections are served on
/// the calling thread, which must run a `tokio::task::LocalSet`.
///
/// Accepted sockets get `TCP_NODELAY`, as the spec recommends. Accept errors
/// (e.g. out of file descriptors) are logged and retried after a short
/// pause; they never stop the server.
pub async fn serve_tcp<P: ExportProvider>(
    listener: TcpListener,
    provider: Arc<P>,
    config: ServerConfig,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    accept_loop(
        Tcp(listener),
        provider,
        config,
        shutdown,
        Arc::new(SpawnLocal),
    )
    .await
}

/// Serve NBD on a Unix-domain listener until `shutdown` fires, then wait for
/// the open connections to finish. The caller owns the socket path (creates
/// and removes it). Otherwise as [`serve_tcp`].
pub async fn serve_unix<P: ExportProvider>(
    listener: UnixListener,
    provider: Arc<P>,
    config: ServerConfig,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    accept_loop(
        Unix(listener),
        provider,
        config,
        shutdown,
        Arc::new(SpawnLocal),
    )
    .await
}

/// [`serve_tcp`], handing each accepted connection to `spawner` (e.g. to
/// spread connections over several event-loop threads).
pub async fn serve_tcp_on<P: ExportProvider>(
    listener: TcpListener,
    provider: Arc<P>,
    config: ServerConfig,
    shutdown: Shutdown,
    spawner: Arc<dyn ConnSpawner>,
) -> Result<(), ServeError> {
    accept_loop(Tcp(listener), provider, config, shutdown, spawner).await
}

/// [`serve_unix`], handing each accepted connection to `spawner`.
pub async fn serve_unix_on<P: ExportProvider>(
    listener: UnixListener,
    provider: Arc<P>,
    config: ServerConfig,
    shutdown: Shutdown,
    spawner: Arc<dyn ConnSpawner>,
) -> Result<(), ServeError> {
    accept_loop(Unix(listener), provider, config, shutdown, spawner).await
}

/// The listener operations the accept loop needs. Accepted sockets travel
/// as std sockets, so they can be served on another thread's runtime.
trait Acceptor: Send + Sync {
    type Std: Send + 'static;
    type Stream: AsyncRead + AsyncWrite + Unpin + 'static;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Std, String)>>;
    /// Register an accepted socket with the current thread's runtime.
    fn adopt(s: Self::Std) -> io::Result<Self::Stream>;
    fn describe(&self) -> String;
}

struct Tcp(TcpListener);

impl Acceptor for Tcp {
    type Std = std::net::TcpStream;
    type Stream = TcpStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Std, String)>> {
        self.0.poll_accept(cx).map(|r| {
            let (s, addr) = r?;
            if let Err(e) = s.set_nodelay(true) {
                warn!(peer = %addr, error = %e, "nbd: cannot set TCP_NODELAY");
            }
            Ok((s.into_std()?, addr.to_string()))
        })
    }
    fn adopt(s: Self::Std) -> io::Result<TcpStream> {
        TcpStream::from_std(s)
    }
    fn describe(&self) -> String {
        match self.0.local_addr() {
            Ok(a) => format!("tcp:{a}"),
            Err(_) => "tcp".into(),
        }
    }
}

struct Unix(UnixListener);

impl Acceptor for Unix {
    type Std = std::os::unix::net::UnixStream;
    type Stream = UnixStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Std, String)>> {
        self.0.poll_accept(cx).map(|r| {
            let (s, _) = r?;
            // Unix peers are anonymous; report the peer's pid when known.
            let peer = match s.peer_cred().ok().and_then(|c| c.pid()) {
                Some(pid) => format!("unix:pid={pid}"),
                None => "unix".into(),
            };
            Ok((s.into_std()?, peer))
        })
    }
    fn adopt(s: Self::Std) -> io::Result<UnixStream> {
        UnixStream::from_std(s)
    }
    fn describe(&self) -> String {
        match self
            .0
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
        {
            Some(p) => format!("unix:{p}"),
            None => "unix".into(),
        }
    }
}

async fn accept_loop<L: Acceptor, P: ExportProvider>(
    listener: L,
    provider: Arc<P>,
    config: ServerConfig,
    mut shutdown: Shutdown,
    spawner: Arc<dyn ConnSpawner>,
) -> Result<(), ServeError> {
    config.validate()?;
    let config = Arc::new(config);
    // One permit per open connection; all permits back = none open.
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let address = listener.describe();
    info!(listener = %address, "nbd server listening");
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            accepted = poll_fn(|cx| listener.poll_accept(cx)) => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                        warn!(
                            %peer,
                            limit = config.max_connections,
                            "nbd connection refused: too many connections"
                        );
                        continue;
                    };
                    let (provider, config, shutdown) =
                        (Arc::clone(&provider), Arc::clone(&config), shutdown.clone());
                    spawner.spawn(Box::new(move || {
                        let span = info_span!("nbd", %peer);
                        Box::pin(
                            async move {
                                match L::adopt(stream) {
                                    // Errors were logged by serve_stream.
                                    Ok(s) => {
                                        let _ = serve_stream(s, provider, &config, shutdown).await;
                                    }
                                    Err(e) => error!(error = %e, "nbd: cannot register a connection"),
                                }
                                drop(permit);
                            }
                            .instrument(span),
                        )
                    }));
                }
                Err(e) => {
                    // Typically EMFILE/ENFILE/ECONNABORTED: transient.
                    warn!(listener = %address, error = %e, "nbd accept failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = shutdown.wait() => break,
                    }
                }
            },
        }
    }
    drop(listener);
    let open = config.max_connections - limit.available_permits();
    info!(
        listener = %address,
        open_connections = open,
        "nbd server stopped accepting; waiting for connections to finish"
    );
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    let _ = limit.acquire_many(all).await;
    info!(listener = %address, "nbd server stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert!(ServerConfig::default().validate().is_ok());
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let base = ServerConfig::default();
        let cases = [
            ServerConfig {
                max_connections: 0,
                ..base.clone()
            },
            ServerConfig {
                max_payload: 4096,
                ..base.clone()
            },
            ServerConfig {
                max_payload: u32::MAX,
                ..base.clone()
            },
            ServerConfig {
                max_inflight_requests: 0,
                ..base.clone()
            },
            ServerConfig {
                max_inflight_requests: 1 << 20,
                ..base.clone()
            },
            ServerConfig {
                max_inflight_bytes: usize::MAX,
                ..base.clone()
            },
            ServerConfig {
                handshake_timeout: Duration::ZERO,
                ..base.clone()
            },
        ];
        for c in cases {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    #[tokio::test]
    async fn shutdown_signal() {
        assert!(!Shutdown::never().is_triggered());
        let (tx, rx) = watch::channel(false);
        let mut s = Shutdown::from(rx);
        assert!(!s.is_triggered());
        tx.send_replace(true);
        assert!(s.is_triggered());
        s.wait().await;

        let (tx, rx) = watch::channel(false);
        let mut s = Shutdown::new(rx);
        drop(tx);
        assert!(s.is_triggered());
        s.wait().await;
    }
}
