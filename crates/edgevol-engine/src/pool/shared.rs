//! [`Shared`]: the state every thread of a pool shares (devices, map,
//! catalog, segment table, channels to the writer, status), its engine
//! counters ([`Stats`]) and its constructor, with the reader that loads map
//! blocks from the pool's devices.
//!
//! Keeps invariant 2 (every read is verified) by checking each map block
//! read against its crc and healing a bad copy from redundancy, and
//! invariant 6 (memory within its budget) by capping the memtable budget
//! and bounding the client queue.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};

use super::gate::ReuseGate;
use super::space::SegmentTable;
use super::vdev::Vdevs;
use super::writer::{Control, DataOp, MaintOp};
use super::{maint, scrub, subblock, PoolConfig};
use crate::buf::AlignedBuf;
use crate::catalog::Catalog;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{SegId, BLOCK};
use crate::map::run::BlockReader;
use crate::map::Map;

/// Counters for status and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    /// Batches written.
    pub batches: AtomicU64,
    /// Bytes of batches written.
    pub bytes_written: AtomicU64,
    /// Device flushes.
    pub flushes: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Memtable flushes.
    pub map_flushes: AtomicU64,
    /// Compactions.
    pub compactions: AtomicU64,
    /// Fragments the cleaner moved.
    pub relocated: AtomicU64,
    /// Segments the cleaner processed.
    pub cleaned_segments: AtomicU64,
    /// Records the cleaner knew dead without a map lookup (`gone.rs`).
    pub cleaner_skipped_dead: AtomicU64,
    /// The most rounds the writer had in flight at once (`pipeline.rs`).
    pub rounds_in_flight_max: AtomicU64,
    /// Fragments of partly dead packed records the cleaner stored anew.
    pub restored: AtomicU64,
    /// Checksum failures seen by reads.
    pub checksum_errors: AtomicU64,
}

/// State shared by every thread of a pool.
pub(crate) struct Shared {
    pub(crate) guid: u128,
    pub(crate) name: String,
    pub(crate) created: u64,
    pub(crate) vdevs: Arc<Vdevs>,
    pub(crate) map: Map,
    /// Head writes not yet settled into the map (`overlay.rs`).
    pub(crate) overlay: RwLock<super::overlay::Overlay>,
    pub(crate) catalog: RwLock<Arc<Catalog>>,
    pub(crate) segs: Mutex<SegmentTable>,
    pub(crate) gate: Arc<ReuseGate>,
    pub(crate) cfg: PoolConfig,
    pub(crate) data_tx: async_channel::Sender<DataOp>,
    pub(crate) maint_tx: async_channel::Sender<MaintOp>,
    pub(crate) stats: Stats,
    pub(crate) lineage_delta: Mutex<BTreeMap<u32, i64>>,
    pub(crate) space_blocked: AtomicBool,
    pub(crate) maint_wake: (Mutex<bool>, Condvar),
    /// Held while a chunk is settled, by the writer or the settler thread
    /// (reentrant: settling a chunk settles its ancestors' first).
    pub(crate) settle_lock: parking_lot::ReentrantMutex<()>,
    /// Wakes the settler thread.
    pub(crate) settle_wake: (Mutex<bool>, Condvar),
    pub(crate) closing: AtomicBool,
    pub(crate) maint_status: Mutex<maint::MaintStatus>,
    /// Serialises maintenance work between the background thread and callers.
    pub(crate) maint_lock: Mutex<()>,
    /// Next map run id (persisted in every checkpoint).
    pub(crate) next_run_id: AtomicU64,
    /// The memtable budget in effect: the configured one, capped for small
    /// pools so that one flush never needs a large share of the pool.
    pub(crate) memtable_budget: usize,
    /// Metadata the last checkpoint owns besides map runs: the counters
    /// table's extents and the checkpoint-log segment (for `pool check`).
    pub(crate) meta_roots: Mutex<(Vec<crate::layout::MetaExtent>, Option<crate::layout::SegId>)>,
    /// Metadata segments and bytes as of the last checkpoint (None before
    /// the first): what the reserve counts (`capacity::settle_metadata`).
    pub(crate) settled_metadata: Mutex<Option<(u64, u64)>>,
    /// Loaded data keys, by id (never persisted).
    pub(crate) keys: RwLock<std::collections::HashMap<u64, Arc<crate::crypt::DataKey>>>,
    /// The last or running scrub and resilver.
    pub(crate) scans: Mutex<scrub::Scans>,
    /// Asks a running scrub to stop.
    pub(crate) scan_stop: AtomicBool,
    /// A scrub or resilver thread is running.
    pub(crate) scan_running: AtomicBool,
    /// Client operations so far (reads, writes, flushes, discards): a
    /// scrub slows down while this moves.
    pub(crate) client_ops: AtomicU64,
    /// Per-volume exclusion for sub-block writes (read-modify-write).
    pub(crate) subblock: subblock::LockTable,
    /// The thread the writer runs on (a reactor's, or its own).
    pub(crate) writer_thread: Mutex<Option<std::thread::ThreadId>>,
    /// The pace of client writes near the data reserve.
    pub(crate) admission: super::admission::Admission,
}

impl Shared {
    /// A loaded data key.
    pub(crate) fn key(&self, id: u64) -> Option<Arc<crate::crypt::DataKey>> {
        self.keys.read().get(&id).cloned()
    }

    /// Ask the maintenance thread to look for work now.
    pub(crate) fn wake_maintenance(&self) {
        let (m, cv) = &self.maint_wake;
        *m.lock() = true;
        cv.notify_one();
    }

    /// Send a control op and wait.
    pub(super) fn control(&self, c: Control) -> Result<u64> {
        let (tx, rx) = futures::channel::oneshot::channel();
        self.maint_tx
            .send_blocking(MaintOp::Control(c, tx))
            .map_err(|_| Error::new(ErrorKind::Shutdown, "pool is closing"))?;
        futures::executor::block_on(rx)
            .map_err(|_| Error::new(ErrorKind::Shutdown, "pool is closing"))?
    }

    /// Before a report of space or referenced data: let the writer settle
    /// its pending blind writes, so the numbers are exact (overlay.rs).
    /// Skipped on the writer's own thread (it would wait for itself).
    pub(crate) fn settle_for_report(&self) {
        if self.overlay.read().is_empty()
            || *self.writer_thread.lock() == Some(std::thread::current().id())
        {
            return;
        }
        // A closing pool settles at its final flush.
        let _ = super::maint::settle(self);
    }

    pub(super) fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().clone()
    }
}

/// Reads map blocks from the pool's devices.
struct MetaReader(Arc<Vdevs>);

impl BlockReader for MetaReader {
    fn read_meta_block(&self, seg: SegId, offset: u64) -> Result<Vec<u8>> {
        // Run blocks carry their own crc: a bad copy is healed from another.
        let ok = |b: &[u8]| crate::map::run::block_crc_ok(b);
        let mut b = AlignedBuf::zeroed(BLOCK);
        self.0.read_checked(seg, offset, b.as_mut_slice(), &ok)?;
        Ok(b.as_slice().to_vec())
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn shared(
    name: &str,
    guid: u128,
    created: u64,
    vdevs: Arc<Vdevs>,
    segs: SegmentTable,
    cfg: PoolConfig,
    cat: Catalog,
) -> (
    Arc<Shared>,
    async_channel::Receiver<DataOp>,
    async_channel::Receiver<MaintOp>,
) {
    let pool_bytes = vdevs.total_segments() * vdevs.segment_size;
    let cfg_budget = cfg.clone();
    let (data_tx, data_rx) = async_channel::bounded(cfg.queue_depth.max(1));
    let (maint_tx, maint_rx) = async_channel::unbounded();
    let map = Map::new(
        Arc::new(MetaReader(vdevs.clone())),
        cfg.cache_bytes,
        vdevs.segment_size,
    );
    let sh = Arc::new(Shared {
        guid,
        name: name.to_string(),
        created,
        vdevs,
        map,
        overlay: RwLock::default(),
        catalog: RwLock::new(Arc::new(cat)),
        segs: Mutex::new(segs),
        gate: Arc::new(ReuseGate::default()),
        cfg,
        data_tx,
        maint_tx,
        stats: Stats::default(),
        lineage_delta: Mutex::new(BTreeMap::new()),
        space_blocked: AtomicBool::new(false),
        maint_wake: (Mutex::new(false), Condvar::new()),
        settle_lock: parking_lot::ReentrantMutex::new(()),
        settle_wake: (Mutex::new(false), Condvar::new()),
        closing: AtomicBool::new(false),
        maint_status: Mutex::new(maint::MaintStatus::default()),
        maint_lock: Mutex::new(()),
        next_run_id: AtomicU64::new(1),
        memtable_budget: super::memtable_budget(&cfg_budget, pool_bytes),
        meta_roots: Mutex::new((Vec::new(), None)),
        settled_metadata: Mutex::new(None),
        keys: RwLock::new(std::collections::HashMap::new()),
        scans: Mutex::new(scrub::Scans::default()),
        scan_stop: AtomicBool::new(false),
        scan_running: AtomicBool::new(false),
        client_ops: AtomicU64::new(0),
        subblock: Default::default(),
        writer_thread: Mutex::new(None),
        admission: Default::default(),
    });
    (sh, data_rx, maint_rx)
}
