//! A pool's settings: [`PoolConfig`] (runtime, not stored on disk; where
//! the writer runs, see [`Spawner`]) and [`CreateOptions`] (fixed at
//! creation). Keeps invariant 6 (memory within its budget): the memtable
//! and map cache budgets are set here.

use std::sync::Arc;
use std::time::Duration;

/// Runtime settings of an open pool (not stored on disk).
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Memtable budget: the map flushes a run when the active memtable
    /// reaches this. Default 16 MiB.
    pub memtable_bytes: usize,
    /// Map block cache. Default 64 MiB.
    pub cache_bytes: u64,
    /// Largest batch written in one device write. Default 2 MiB.
    pub max_batch_bytes: usize,
    /// Where the pool's writer runs: None starts a thread of its own
    /// (blocking device I/O); a data-plane event loop passes a spawner so
    /// the writer runs as a task on its thread and does its device I/O
    /// through that thread's io_uring, next to the clients' requests.
    pub spawner: Option<Spawner>,
    /// Flush the memtable at least this often when it is not empty. Default 30 s.
    pub flush_interval: Duration,
    /// Flush the memtable when this much log was written since the last
    /// flush (bounds recovery time). Default 512 MiB.
    pub replay_budget: u64,
    /// Run the maintenance thread (flushes, compaction, cleaner, GC).
    /// Tests turn it off to drive maintenance by hand.
    pub background: bool,
    /// Settle blind writes on a thread of their own (`settler.rs`), off
    /// the writer's thread. Default on, with or without `background`
    /// (settling does no device I/O, so power-cut campaigns keep their
    /// device operations); off, the writer settles after its rounds.
    pub settler_thread: bool,
    /// Fragments the settler thread leaves pending (it sleeps below), so
    /// writes to one chunk close together are settled together. Default
    /// 1024; tests set 0 to race the settler against the writer on every
    /// write.
    pub settle_low: usize,
    /// Bound on queued client ops (back-pressure). Default 1024.
    pub queue_depth: usize,
    /// Threads a scrub reads with. Default 4; 1 makes a scrub's device
    /// operations come in a fixed order (power-cut campaigns).
    pub scan_threads: usize,
    /// How often every member device is probed (see [`health`](super::health)): a
    /// device that vanished or fails is FAULTED within this time, without
    /// client I/O. Default 1 s; zero turns the probe off. Runs only with
    /// `background`.
    pub health_interval: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            memtable_bytes: 16 << 20,
            cache_bytes: 64 << 20,
            max_batch_bytes: 2 << 20,
            spawner: None,
            flush_interval: Duration::from_secs(30),
            replay_budget: 512 << 20,
            background: true,
            settler_thread: true,
            settle_low: 1024,
            queue_depth: 1024,
            scan_threads: 4,
            health_interval: Duration::from_secs(1),
        }
    }
}

/// A task for a data-plane thread: built there (it need not be `Send`).
pub type LocalTaskFactory =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send>;

/// Runs a task on a data-plane thread (see [`PoolConfig::spawner`]).
#[derive(Clone)]
pub struct Spawner(pub Arc<dyn Fn(LocalTaskFactory) + Send + Sync>);

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spawner")
    }
}

/// Options fixed at pool creation.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Segment size in bytes (power of two, 1 MiB..1 GiB). Default: 8 MiB,
    /// larger for big pools so the segment table stays small.
    pub segment_size: Option<u64>,
}
