//! One export: a listening vhost-user socket, and the frontend
//! connections it serves.
//!
//! ```text
//!  server thread: epoll(listener, stop)
//!     connection arrives ─┬─ below the limit: DeviceFactory::open, new
//!                         │  BlkBackend + VhostUserDaemon, which accepts it;
//!                         │  a connection thread waits for it to end
//!                         └─ at the limit (another frontend attached):
//!                            accepted and closed at once
//!  connection ends (frontend gone): stop popping, wait for the requests
//!  already popped, drop the daemon (joins its queue workers), drop the
//!  device (the daemon's attachment ends)
//!  stop(): the same for every connection, in this order, then close the
//!  socket: nothing is published into a ring after its frontend saw the
//!  connection close
//! ```

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::backend::{BlkBackend, WorkerMode};
use crate::config::BlkSettings;
use crate::device::{BlockDevice, Spawner};

/// An export's settings.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// For logs and thread names (`POOL/VOL`).
    pub name: String,
    /// The vhost-user socket (created; an existing stale file is replaced).
    pub socket: PathBuf,
    /// Virtqueues offered.
    pub queues: u16,
    /// Largest virtqueue a frontend may set up.
    pub max_queue_size: u16,
    /// Export read-only even if the device is writable.
    pub read_only: bool,
    /// Frontends attached at once (1: a second one is refused).
    pub max_connections: usize,
    /// Queue worker threads.
    pub worker_mode: WorkerMode,
    /// How long a disconnect or stop waits for running requests.
    pub drain_timeout: Duration,
}

impl ExportConfig {
    /// Defaults for `name` on `socket`: one queue, one frontend.
    pub fn new(name: &str, socket: &Path) -> ExportConfig {
        ExportConfig {
            name: name.to_string(),
            socket: socket.to_path_buf(),
            queues: 1,
            max_queue_size: 1024,
            read_only: false,
            max_connections: 1,
            worker_mode: WorkerMode::PerQueue,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// A device opened for one connection.
pub struct Opened<D> {
    /// The device (dropped when the connection is over).
    pub device: Arc<D>,
    /// The device itself is read-only (a snapshot).
    pub read_only: bool,
    /// Its `GET_ID` serial.
    pub serial: String,
}

/// Opens the device for each new connection (so the daemon can register
/// the attachment, and refuse it).
pub trait DeviceFactory: Send + Sync + 'static {
    /// The device type.
    type Device: BlockDevice;
    /// Open it, or say why not (the connection is then closed).
    fn open(&self) -> Result<Opened<Self::Device>, String>;
}

/// Starts exports.
pub struct VhostServer;

struct Conn {
    thread: JoinHandle<()>,
    shutdown: Option<ShutdownHandle>,
    stop: Arc<dyn Fn() + Send + Sync>,
}

struct Shared {
    cfg: ExportConfig,
    connections: AtomicUsize,
    /// The device's cache mode, kept across reconnects.
    writeback: Arc<AtomicBool>,
    stop: EventNotifier,
    stopped: AtomicBool,
}

/// A running export; [`stop`](Self::stop) (or drop) ends it.
pub struct ServerHandle {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl VhostServer {
    /// Listen on `cfg.socket` and serve frontends from `factory`'s
    /// devices, running requests on `spawner`.
    pub fn start<F: DeviceFactory>(
        cfg: ExportConfig,
        factory: Arc<F>,
        spawner: Arc<dyn Spawner>,
    ) -> io::Result<ServerHandle> {
        if cfg.queues == 0 || cfg.queues > 64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} queues: 1 to 64 are possible", cfg.queues),
            ));
        }
        if cfg.socket.exists() && std::os::unix::net::UnixStream::connect(&cfg.socket).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is served by another process", cfg.socket.display()),
            ));
        }
        let listener = Listener::new(&cfg.socket, true).map_err(|e| {
            io::Error::other(format!("cannot listen on {}: {e}", cfg.socket.display()))
        })?;
        let (stop_rx, stop_tx) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            stop_rx.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 1),
        )?;
        let shared = Arc::new(Shared {
            cfg,
            connections: AtomicUsize::new(0),
            writeback: Arc::new(AtomicBool::new(true)),
            stop: stop_tx,
            stopped: AtomicBool::new(false),
        });
        let s2 = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("ev-vhost-listen".into())
            .spawn(move || serve(s2, listener, epoll, stop_rx, factory, spawner))?;
        Ok(ServerHandle {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl ServerHandle {
    /// Frontends attached now.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.shared.cfg.socket
    }

    /// The device's cache mode as the guest last set it (true: write-back).
    pub fn writeback(&self) -> bool {
        self.shared.writeback.load(Ordering::SeqCst)
    }

    /// Stop: every connection stops taking requests, finishes those it
    /// took (at most the drain timeout), and is closed; then the socket is
    /// removed. Blocks until done; idempotent.
    pub fn stop(&self) {
        if !self.shared.stopped.swap(true, Ordering::SeqCst) {
            let _ = self.shared.stop.notify();
        }
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve<F: DeviceFactory>(
    sh: Arc<Shared>,
    mut listener: Listener,
    epoll: Epoll,
    _stop_rx: EventConsumer,
    factory: Arc<F>,
    spawner: Arc<dyn Spawner>,
) {
    let cfg = &sh.cfg;
    let mut conns: Vec<Conn> = Vec::new();
    let mut events = vec![EpollEvent::default(); 4];
    tracing::info!(export = %cfg.name, socket = %cfg.socket.display(), queues = cfg.queues, "vhost-user-blk export listening");
    'serve: loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(export = %cfg.name, error = %e, "epoll failed; the export stops");
                break;
            }
        };
        conns.retain(|c| !c.thread.is_finished());
        for ev in events.iter().take(n) {
            if ev.data() == 1 || sh.stopped.load(Ordering::SeqCst) {
                break 'serve;
            }
        }
        if sh.connections.load(Ordering::SeqCst) >= cfg.max_connections {
            match listener.accept() {
                Ok(Some(s)) => {
                    tracing::warn!(export = %cfg.name, "refused a frontend: the export is attached to another one (allow several with --shared)");
                    drop(s);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(export = %cfg.name, error = %e, "accept failed"),
            }
            continue;
        }
        let opened = match factory.open() {
            Ok(o) => o,
            Err(why) => {
                if let Ok(Some(s)) = listener.accept() {
                    drop(s);
                }
                tracing::warn!(export = %cfg.name, "refused a frontend: {why}");
                continue;
            }
        };
        match connect(&sh, &mut listener, opened, &spawner) {
            Ok(c) => conns.push(c),
            Err(e) => tracing::warn!(export = %cfg.name, error = %e, "cannot serve a frontend"),
        }
    }
    for c in &conns {
        (c.stop)();
        if let Some(s) = &c.shutdown {
            s.shutdown();
        }
    }
    for c in conns {
        let _ = c.thread.join();
    }
    drop(listener); // removes the socket file
    tracing::info!(export = %cfg.name, "vhost-user-blk export stopped");
}

fn connect<D: BlockDevice>(
    sh: &Arc<Shared>,
    listener: &mut Listener,
    opened: Opened<D>,
    spawner: &Arc<dyn Spawner>,
) -> io::Result<Conn> {
    let cfg = &sh.cfg;
    let settings = BlkSettings {
        queues: cfg.queues,
        max_queue_size: cfg.max_queue_size,
        read_only: cfg.read_only || opened.read_only,
        serial: opened.serial,
    };
    let backend = BlkBackend::new(
        opened.device,
        settings,
        cfg.worker_mode,
        Arc::clone(&sh.writeback),
        Arc::clone(spawner),
    );
    let mut daemon = VhostUserDaemon::new(
        format!("ev-vhost-{}", sh.connections.load(Ordering::SeqCst)),
        backend.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| io::Error::other(e.to_string()))?;
    daemon
        .start(listener)
        .map_err(|e| io::Error::other(e.to_string()))?;
    sh.connections.fetch_add(1, Ordering::SeqCst);
    tracing::info!(export = %cfg.name, "frontend attached");
    let shutdown = daemon.shutdown_handle();
    let sh2 = Arc::clone(sh);
    let b2 = backend.clone();
    let timeout = cfg.drain_timeout;
    let thread = std::thread::Builder::new()
        .name("ev-vhost-conn".into())
        .spawn(move || {
            let r = daemon.wait();
            // The frontend is gone (or we are stopping): finish what was
            // taken from the rings before anything else may attach.
            b2.pause();
            if !b2.drain(None, timeout) {
                tracing::error!(export = %sh2.cfg.name, inflight = b2.inflight(), "requests still running after the frontend left");
            }
            drop(daemon);
            drop(b2);
            sh2.connections.fetch_sub(1, Ordering::SeqCst);
            match r {
                Ok(()) => tracing::info!(export = %sh2.cfg.name, "frontend detached"),
                Err(e) => tracing::info!(export = %sh2.cfg.name, error = %e, "frontend connection ended"),
            }
        })?;
    let stop: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        backend.pause();
        if !backend.drain(None, timeout) {
            tracing::error!(
                inflight = backend.inflight(),
                "stopping with requests still running"
            );
        }
    });
    Ok(Conn {
        thread,
        shutdown,
        stop,
    })
}
