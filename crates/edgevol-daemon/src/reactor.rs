//! Data-plane threads ("reactors").
//!
//! ```text
//!  control runtime (API, signals, NBD accept) ──std socket──▶ reactor i
//!                                                              │
//!  reactor thread: current-thread tokio runtime + LocalSet + io_uring
//!     NBD connections and their requests ─┐
//!     pool writer tasks ──────────────────┼──▶ same thread's io_uring ──▶ devices
//!     ring driver: eventfd readable → reap ┘
//! ```
//!
//! A request is parsed, resolved in the block map, and its device I/O
//! submitted and completed on one thread: no hand-off between threads on
//! the data path. With one reactor (the default on small machines) a write
//! reaches the pool's writer task without a context switch either. More
//! reactors spread connections (round robin) and pool writers over cores.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Work for a reactor: built on the reactor thread, so it need not be `Send`.
pub type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// The data-plane threads.
pub struct Reactors {
    senders: Mutex<Vec<mpsc::UnboundedSender<Job>>>,
    next: AtomicUsize,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    count: usize,
}

/// The default number of reactors: one per two cores, at least one.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

impl Reactors {
    /// Start `n` reactor threads.
    pub fn start(n: usize) -> std::io::Result<Arc<Reactors>> {
        let n = n.max(1);
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = mpsc::unbounded_channel::<Job>();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
            let t = std::thread::Builder::new()
                .name(format!("ev-reactor-{i}"))
                .spawn(move || run(rx, ready_tx))?;
            ready_rx
                .recv()
                .map_err(|_| std::io::Error::other("reactor thread died while starting"))??;
            senders.push(tx);
            threads.push(t);
        }
        Ok(Arc::new(Reactors {
            senders: Mutex::new(senders),
            next: AtomicUsize::new(0),
            threads: Mutex::new(threads),
            count: n,
        }))
    }

    /// Number of reactors.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Run `job` on the next reactor (round robin).
    pub fn spawn(&self, job: Job) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.count;
        self.spawn_on(i, job);
    }

    /// Run `job` on reactor `i`.
    pub fn spawn_on(&self, i: usize, job: Job) {
        let senders = self.senders.lock();
        match senders.get(i % self.count.max(1)) {
            Some(tx) => {
                if tx.send(job).is_err() {
                    tracing::error!(reactor = i, "reactor is gone; dropping a task");
                }
            }
            None => tracing::error!("reactors are stopped; dropping a task"),
        }
    }

    /// A spawner that puts pool writers on the reactors (round robin).
    pub fn engine_spawner(self: &Arc<Self>) -> edgevol_engine::Spawner {
        let me = Arc::clone(self);
        edgevol_engine::Spawner(Arc::new(move |f| me.spawn(f)))
    }

    /// A spawner that serves NBD connections on the reactors (round robin).
    pub fn conn_spawner(self: &Arc<Self>) -> Arc<dyn edgevol_nbd::ConnSpawner> {
        Arc::new(ConnOnReactors(Arc::clone(self)))
    }

    /// Stop every reactor once its queued jobs were started; tasks still
    /// running are dropped, so stop what runs there (connections, pools)
    /// first.
    pub fn stop(&self) {
        self.senders.lock().clear();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

struct ConnOnReactors(Arc<Reactors>);

impl edgevol_nbd::ConnSpawner for ConnOnReactors {
    fn spawn(&self, task: edgevol_nbd::ConnTask) {
        self.0.spawn(task);
    }
}

/// A reactor thread's life.
fn run(mut rx: mpsc::UnboundedReceiver<Job>, ready: std::sync::mpsc::Sender<std::io::Result<()>>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let ring = match edgevol_io::install(edgevol_io::ring::DEFAULT_ENTRIES) {
            Ok(r) => r,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        // The ring driver: completions wake the ops waiting for them.
        let driver = tokio::task::spawn_local(async move {
            if let Err(e) = edgevol_io::drive(ring).await {
                tracing::error!(error = %e, "io_uring eventfd failed; the reactor stops reaping");
            }
        });
        while let Some(job) = rx.recv().await {
            tokio::task::spawn_local(job());
        }
        driver.abort();
    });
    edgevol_io::uninstall();
}
