//! The edgevol daemon: imports the pools recorded in a data directory,
//! serves the management API on a Unix socket, volumes over NBD (TCP and
//! Unix) and to VMs over vhost-user-blk, and shuts down cleanly on
//! SIGINT/SIGTERM.
//!
//! ```text
//!   CLI / controller ──HTTP/JSON──▶ api.rs ─┐
//!                                           ├─▶ Registry ─▶ engine Pools
//!   qemu, nbdinfo, fio ──NBD──▶ edgevol-nbd ─▶ export.rs ─┤
//!   VMs ──vhost-user-blk──▶ edgevol-vhost ──▶ vhost.rs ───┘
//! ```
#![deny(missing_docs)]

pub mod api;
pub mod export;
pub mod foreign;
pub mod reactor;
pub mod registry;
pub mod smart;
pub mod vhost;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgevol_engine::PoolConfig;
pub use registry::Registry;

/// Daemon settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where pools.json, sockets and (for `up`) pool files live.
    pub data_dir: PathBuf,
    /// Management API socket (default `DATA_DIR/api.sock`).
    pub api_socket: Option<PathBuf>,
    /// NBD TCP address (None: no TCP).
    pub nbd_listen: Option<SocketAddr>,
    /// NBD Unix socket (None: no Unix socket).
    pub nbd_socket: Option<PathBuf>,
    /// Export served for the empty export name.
    pub default_export: Option<String>,
    /// Engine settings for every pool (its spawner is set by the daemon).
    pub pool: PoolConfig,
    /// Data-plane threads (see [`reactor`]); 0 picks [`reactor::default_count`].
    pub reactors: usize,
    /// vhost-user-blk exports given at start (not recorded in
    /// `exports.json`; those recorded there start too).
    pub vhost_user: Vec<vhost::VhostSpec>,
}

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon uses the data directory.
    #[error("{0} is in use by another edgevol daemon")]
    Locked(PathBuf),
    /// A socket could not be set up.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// Which socket.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Opening pools failed.
    #[error(transparent)]
    Engine(#[from] edgevol_engine::Error),
    /// Other I/O.
    #[error("{0}")]
    Io(String),
}

/// What a running daemon exposes to its caller (for `up`'s banner and tests).
pub struct Running {
    /// The registry.
    pub registry: Arc<Registry>,
    /// The API socket path.
    pub api_socket: PathBuf,
    /// The NBD TCP address actually bound.
    pub nbd_addr: Option<SocketAddr>,
    /// The NBD Unix socket.
    pub nbd_socket: Option<PathBuf>,
    /// The vhost-user-blk exports.
    pub vhost: Arc<vhost::VhostExports>,
}

/// Remove a stale socket file, refusing if something still answers on it.
async fn clear_socket(path: &Path) -> Result<(), DaemonError> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(DaemonError::Listen {
                what: path.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process is serving this socket",
                ),
            });
        }
        std::fs::remove_file(path)
            .map_err(|e| DaemonError::Io(format!("cannot remove stale {}: {e}", path.display())))?;
    }
    Ok(())
}

/// Run the daemon until SIGINT/SIGTERM. `init` runs once the pools are
/// imported and before anything is served (used by `edgevol up` to create
/// its default pool); `ready` is told what is being served.
pub async fn serve(
    cfg: ServeConfig,
    init: impl FnOnce(&Registry) -> Result<(), edgevol_engine::Error> + Send + 'static,
    ready: impl FnOnce(&Running),
) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| DaemonError::Io(format!("cannot create {}: {e}", cfg.data_dir.display())))?;
    let lock_path = cfg.data_dir.join("daemon.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| DaemonError::Io(format!("cannot open {}: {e}", lock_path.display())))?;
    if lock.try_lock().is_err() {
        return Err(DaemonError::Locked(cfg.data_dir.clone()));
    }
    let n = if cfg.reactors == 0 {
        reactor::default_count()
    } else {
        cfg.reactors
    };
    let reactors = reactor::Reactors::start(n)
        .map_err(|e| DaemonError::Io(format!("cannot start the data-plane threads: {e}")))?;
    let dir = cfg.data_dir.clone();
    let mut pool_cfg = cfg.pool.clone();
    pool_cfg.spawner = Some(reactors.engine_spawner());
    let registry =
        tokio::task::spawn_blocking(move || -> Result<Arc<Registry>, edgevol_engine::Error> {
            let r = Registry::open(&dir, pool_cfg)?;
            init(&r)?;
            Ok(Arc::new(r))
        })
        .await
        .map_err(|e| DaemonError::Io(format!("startup task failed: {e}")))??;

    let api_path = cfg
        .api_socket
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("api.sock"));
    clear_socket(&api_path).await?;
    let api_listener =
        tokio::net::UnixListener::bind(&api_path).map_err(|source| DaemonError::Listen {
            what: api_path.display().to_string(),
            source,
        })?;
    // The API manages every volume and carries key secrets: owner only.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&api_path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| DaemonError::Listen {
                what: api_path.display().to_string(),
                source,
            },
        )?;
    }
    // vhost-user-blk exports: those recorded, then those given at start.
    let vhost = Arc::new(vhost::VhostExports::new(
        registry.clone(),
        reactors.clone(),
        &cfg.data_dir,
    ));
    {
        let v = vhost.clone();
        let extra = cfg.vhost_user.clone();
        tokio::task::spawn_blocking(move || -> Result<(), DaemonError> {
            v.load()?;
            for spec in extra {
                let socket = spec.socket.display().to_string();
                v.add(spec, false).map_err(|e| DaemonError::Listen {
                    what: format!("vhost-user {socket}"),
                    source: std::io::Error::other(e.to_string()),
                })?;
            }
            Ok(())
        })
        .await
        .map_err(|e| DaemonError::Io(format!("startup task failed: {e}")))??;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = api::router(registry.clone(), vhost.clone());
    let mut api_stop = stop_rx.clone();
    let api_task = tokio::spawn(async move {
        let r = axum::serve(api_listener, app)
            .with_graceful_shutdown(async move {
                let _ = api_stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "API server failed");
        }
    });

    let provider = Arc::new(export::Provider::new(
        registry.clone(),
        cfg.default_export.clone(),
    ));
    let mut tasks = Vec::new();
    let mut nbd_addr = None;
    if let Some(addr) = cfg.nbd_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Listen {
                what: addr.to_string(),
                source,
            })?;
        nbd_addr = l.local_addr().ok();
        tasks.push(tokio::spawn(nbd_tcp(
            l,
            provider.clone(),
            stop_rx.clone(),
            reactors.conn_spawner(),
        )));
    }
    if let Some(path) = &cfg.nbd_socket {
        clear_socket(path).await?;
        let l = tokio::net::UnixListener::bind(path).map_err(|source| DaemonError::Listen {
            what: path.display().to_string(),
            source,
        })?;
        tasks.push(tokio::spawn(nbd_unix(
            l,
            provider.clone(),
            stop_rx.clone(),
            reactors.conn_spawner(),
        )));
    }
    let running = Running {
        registry: registry.clone(),
        api_socket: api_path.clone(),
        nbd_addr,
        nbd_socket: cfg.nbd_socket.clone(),
        vhost: vhost.clone(),
    };
    ready(&running);
    tracing::info!(api = %api_path.display(), nbd = ?nbd_addr, reactors = reactors.count(), "edgevol daemon ready");

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let _ = api_task.await;
    // VMs first: their running requests finish while pools and reactors
    // are still up, then their connections close (QEMU waits and
    // reconnects to the next daemon).
    let v = vhost.clone();
    let _ = tokio::task::spawn_blocking(move || v.shutdown()).await;
    let reg = registry.clone();
    let _ = tokio::task::spawn_blocking(move || reg.shutdown()).await;
    // Pools are closed: nothing runs on the reactors any more.
    let r = reactors.clone();
    let _ = tokio::task::spawn_blocking(move || r.stop()).await;
    let _ = std::fs::remove_file(&api_path);
    if let Some(p) = &cfg.nbd_socket {
        let _ = std::fs::remove_file(p);
    }
    drop(lock);
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The NBD server's limits: the payload limit admits the larger requests
/// of clients that did not negotiate block sizes (each export still
/// advertises its own, smaller, maximum to clients that do).
fn nbd_config() -> edgevol_nbd::ServerConfig {
    let mut c = edgevol_nbd::ServerConfig::default();
    c.max_payload = export::UNNEGOTIATED_MAX_PAYLOAD;
    c
}

async fn nbd_tcp(
    l: tokio::net::TcpListener,
    p: Arc<export::Provider>,
    stop: tokio::sync::watch::Receiver<bool>,
    spawner: Arc<dyn edgevol_nbd::ConnSpawner>,
) {
    if let Err(e) = edgevol_nbd::serve_tcp_on(
        l,
        p,
        nbd_config(),
        edgevol_nbd::Shutdown::new(stop),
        spawner,
    )
    .await
    {
        tracing::error!(error = %e, "NBD TCP server failed");
    }
}

async fn nbd_unix(
    l: tokio::net::UnixListener,
    p: Arc<export::Provider>,
    stop: tokio::sync::watch::Receiver<bool>,
    spawner: Arc<dyn edgevol_nbd::ConnSpawner>,
) {
    if let Err(e) = edgevol_nbd::serve_unix_on(
        l,
        p,
        nbd_config(),
        edgevol_nbd::Shutdown::new(stop),
        spawner,
    )
    .await
    {
        tracing::error!(error = %e, "NBD Unix server failed");
    }
}
