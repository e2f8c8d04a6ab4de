//! The `VhostUserBackend`: features and config space for the frontend,
//! and the queue workers that pop descriptor chains and hand them to the
//! [`Spawner`] in batches.
//!
//! Completions are published to each used ring **in the order the
//! requests were popped**, although they execute concurrently. That keeps
//! `used_idx` equal to the number of requests finished from the start of
//! the ring, which is what a frontend relies on when the backend dies:
//! QEMU (without the inflight-fd protocol feature) restarts a reconnected
//! ring at the guest's `used_idx`, so every request not yet published is
//! simply submitted again, and none that was published runs twice.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::config::{self, BlkSettings, CONFIG_LEN, WRITEBACK_OFFSET};
use crate::device::{BlockDevice, Spawner};
use crate::request::{self, ExecCtx, Malformed, Request};

/// How virtqueues map to worker threads (the threads that wait for the
/// guest's kicks and pop requests; the requests themselves run on the
/// [`Spawner`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerMode {
    /// One worker thread per virtqueue.
    #[default]
    PerQueue,
    /// One worker thread for all virtqueues of the device.
    Shared,
}

/// Most chains popped into one batch before it is dispatched.
const MAX_BATCH: usize = 256;

#[derive(Default)]
struct Order {
    /// Sequence number of the next request to publish.
    next: u64,
    /// Finished but not yet published: seq -> (head, used len).
    done: BTreeMap<u64, (u16, u32)>,
}

/// Per-virtqueue bookkeeping.
#[derive(Default)]
struct QueueTrack {
    /// Sequence number of the next popped request.
    next_seq: AtomicU64,
    order: Mutex<Order>,
    inflight: Mutex<u64>,
    idle: Condvar,
}

struct Inner<D> {
    dev: Arc<D>,
    settings: BlkSettings,
    id: [u8; config::ID_BYTES],
    mode: WorkerMode,
    /// The device's cache mode (`writeback` in the config space), shared
    /// by the export's connections so that a reconnect keeps what the
    /// guest chose.
    writeback: Arc<AtomicBool>,
    event_idx: AtomicBool,
    mem: RwLock<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
    tracks: Vec<QueueTrack>,
    spawner: Arc<dyn Spawner>,
    /// Set when the connection is being shut down: no new chains are popped.
    paused: AtomicBool,
}

/// A virtio-blk device over a [`BlockDevice`], for one frontend
/// connection.
pub struct BlkBackend<D> {
    inner: Arc<Inner<D>>,
}

impl<D> Clone for BlkBackend<D> {
    fn clone(&self) -> Self {
        BlkBackend {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Item {
    seq: u64,
    head: u16,
    parsed: Result<Request, Malformed>,
    /// When it was taken off the ring.
    popped: std::time::Instant,
}

/// A request that takes longer than this from the ring back to the ring is
/// logged (a stalled backend, or a pool waiting for space), so a slow
/// guest I/O can be told apart from a guest that was not scheduled.
pub const SLOW_REQUEST: std::time::Duration = std::time::Duration::from_secs(5);

fn queue_err(e: virtio_queue::Error) -> io::Error {
    io::Error::other(format!("virtqueue: {e}"))
}

impl<D: BlockDevice> BlkBackend<D> {
    /// A backend for `dev`; `writeback` is the export's cache mode flag.
    pub fn new(
        dev: Arc<D>,
        settings: BlkSettings,
        mode: WorkerMode,
        writeback: Arc<AtomicBool>,
        spawner: Arc<dyn Spawner>,
    ) -> BlkBackend<D> {
        let tracks = (0..settings.queues)
            .map(|_| QueueTrack::default())
            .collect();
        BlkBackend {
            inner: Arc::new(Inner {
                dev,
                id: config::id_bytes(&settings.serial),
                settings,
                mode,
                writeback,
                event_idx: AtomicBool::new(false),
                mem: RwLock::new(None),
                tracks,
                spawner,
                paused: AtomicBool::new(false),
            }),
        }
    }

    /// Stop popping new requests (those already popped still complete).
    pub fn pause(&self) {
        self.inner.paused.store(true, Ordering::SeqCst);
    }

    /// Requests popped and not yet completed, over all queues.
    pub fn inflight(&self) -> u64 {
        self.inner.tracks.iter().map(|t| *t.inflight.lock()).sum()
    }

    /// Wait until every popped request of queue `q` (all queues: None)
    /// has completed, at most `timeout`; false if some are still running.
    pub fn drain(&self, q: Option<usize>, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        let tracks: Vec<&QueueTrack> = match q {
            Some(i) => self.inner.tracks.get(i).into_iter().collect(),
            None => self.inner.tracks.iter().collect(),
        };
        for t in tracks {
            let mut n = t.inflight.lock();
            while *n > 0 {
                if t.idle.wait_until(&mut n, until).timed_out() && *n > 0 {
                    return false;
                }
            }
        }
        true
    }

    /// The global queue index of the `device_event`-th queue of worker
    /// `thread_id`.
    fn queue_index(&self, device_event: u16, thread_id: usize) -> usize {
        match self.inner.mode {
            WorkerMode::PerQueue => thread_id,
            WorkerMode::Shared => usize::from(device_event),
        }
    }

    /// Pop up to [`MAX_BATCH`] chains of queue `q` and parse them.
    fn pop_batch(
        &self,
        vring: &VringRwLock,
        q: usize,
        track: &QueueTrack,
        mem: &GuestMemoryAtomic<GuestMemoryMmap>,
    ) -> Vec<Item> {
        let m = mem.memory();
        let mut out = Vec::new();
        let mut st = vring.get_mut();
        while out.len() < MAX_BATCH && !self.inner.paused.load(Ordering::SeqCst) {
            let Some(chain) = st.get_queue_mut().pop_descriptor_chain(m.clone()) else {
                break;
            };
            let head = chain.head_index();
            let parsed = request::parse(&*m, chain);
            if let Err(e) = &parsed {
                tracing::warn!(
                    queue = q,
                    head,
                    "malformed virtio-blk request: {}",
                    e.reason
                );
            }
            // Counted while the ring is locked: stop_vring (after the
            // frontend marked the ring not ready under the same lock) sees
            // every request that was popped.
            let seq = track.next_seq.fetch_add(1, Ordering::SeqCst);
            *track.inflight.lock() += 1;
            out.push(Item {
                seq,
                head,
                parsed,
                popped: std::time::Instant::now(),
            });
        }
        out
    }

    /// Hand a batch to the spawner; each request publishes its completion.
    fn dispatch(
        &self,
        vring: &VringRwLock,
        q: usize,
        batch: Vec<Item>,
        mem: &GuestMemoryAtomic<GuestMemoryMmap>,
    ) {
        let inner = Arc::clone(&self.inner);
        let vring = vring.clone();
        let mem = mem.memory().into_inner();
        let ctx = ExecCtx {
            read_only: inner.settings.read_only,
            writeback: inner.writeback.load(Ordering::SeqCst),
            id: inner.id,
        };
        let spawner = Arc::clone(&self.inner.spawner);
        spawner.spawn(
            q,
            Box::new(move || {
                Box::pin(async move {
                    let inner = &inner;
                    let reqs = batch.into_iter().map(|it| {
                        let mem = &mem;
                        let vring = &vring;
                        let ctx = &ctx;
                        async move {
                            let out = match &it.parsed {
                                Ok(req) => request::execute(&*inner.dev, &**mem, req, ctx).await,
                                Err(m) => request::reject(&**mem, m),
                            };
                            let took = it.popped.elapsed();
                            if took > SLOW_REQUEST {
                                tracing::warn!(
                                    queue = q,
                                    head = it.head,
                                    kind = ?it.parsed.as_ref().map(|r| r.kind).ok(),
                                    sector = it.parsed.as_ref().map_or(0, |r| r.sector),
                                    secs = took.as_secs_f64(),
                                    "slow virtio-blk request"
                                );
                            }
                            complete(inner, q, vring, it.seq, it.head, out.used_len);
                        }
                    });
                    futures::future::join_all(reqs).await;
                })
            }),
        );
    }

    fn process_queue(&self, vring: &VringRwLock, q: usize) -> io::Result<()> {
        let Some(mem) = self.inner.mem.read().clone() else {
            return Ok(());
        };
        let Some(track) = self.inner.tracks.get(q) else {
            return Err(io::Error::other(format!("no virtqueue {q}")));
        };
        let event_idx = self.inner.event_idx.load(Ordering::SeqCst);
        loop {
            if event_idx {
                vring.disable_notification().map_err(queue_err)?;
            }
            let batch = self.pop_batch(vring, q, track, &mem);
            let full = batch.len() == MAX_BATCH;
            if !batch.is_empty() {
                self.dispatch(vring, q, batch, &mem);
            }
            if full {
                continue;
            }
            if !event_idx || self.inner.paused.load(Ordering::SeqCst) {
                return Ok(());
            }
            // Re-enable notifications; if the driver added chains
            // meanwhile, go round again instead of waiting for a kick.
            if !vring.enable_notification().map_err(queue_err)? {
                return Ok(());
            }
        }
    }
}

/// Record a finished request and publish every request, in pop order,
/// that is now finished; notify the guest if it wants to be.
fn complete<D>(inner: &Inner<D>, q: usize, vring: &VringRwLock, seq: u64, head: u16, len: u32) {
    let Some(t) = inner.tracks.get(q) else {
        return;
    };
    let published = {
        let mut o = t.order.lock();
        o.done.insert(seq, (head, len));
        let mut n = 0u64;
        loop {
            let next = o.next;
            let Some((h, l)) = o.done.remove(&next) else {
                break;
            };
            if let Err(e) = vring.add_used(h, l) {
                tracing::warn!(queue = q, head = h, error = %e, "cannot add a used descriptor");
            }
            o.next += 1;
            n += 1;
        }
        if n > 0 {
            // Without EVENT_IDX this is always true.
            let notify = vring.needs_notification().unwrap_or(true);
            if notify {
                if let Err(e) = vring.signal_used_queue() {
                    tracing::debug!(queue = q, error = %e, "cannot signal the used queue");
                }
            }
        }
        n
    };
    if published > 0 {
        let mut n = t.inflight.lock();
        *n = n.saturating_sub(published);
        if *n == 0 {
            t.idle.notify_all();
        }
    }
}

impl<D: BlockDevice> VhostUserBackend for BlkBackend<D> {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.inner.settings.queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.inner.settings.max_queue_size)
    }

    fn features(&self) -> u64 {
        config::features(&self.inner.settings) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        self.inner.event_idx.store(enabled, Ordering::SeqCst);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let c = config::config_space(
            &self.inner.settings,
            self.inner.dev.size(),
            self.inner.writeback.load(Ordering::SeqCst),
        );
        let (off, size) = (offset as usize, size as usize);
        let mut out = vec![0u8; size];
        for (i, b) in out.iter_mut().enumerate() {
            if let Some(v) = off.checked_add(i).and_then(|at| c.get(at)) {
                *b = *v;
            }
        }
        out
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only the cache mode is writable (VIRTIO_BLK_F_CONFIG_WCE).
        match (offset as usize, buf) {
            (WRITEBACK_OFFSET, [wce]) => {
                let wb = *wce != 0;
                let was = self.inner.writeback.swap(wb, Ordering::SeqCst);
                if was && !wb {
                    tracing::info!("guest switched the write cache to write-through");
                }
                Ok(())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "config bytes {offset}..{} are read-only (config space is {CONFIG_LEN} bytes)",
                    offset as usize + buf.len()
                ),
            )),
        }
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        *self.inner.mem.write() = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        let n = u32::from(self.inner.settings.queues).min(64);
        match self.inner.mode {
            WorkerMode::PerQueue => (0..n).map(|i| 1u64 << i).collect(),
            WorkerMode::Shared => vec![u64::MAX >> (64 - n.max(1))],
        }
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(error = %e, "cannot create a worker's exit event");
                None
            }
        }
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE (guest reset, frontend stopping the device): every
        // request popped from the ring must be in the used ring before the
        // frontend reads the ring's position.
        if !self.drain(Some(queue_index as usize), Duration::from_secs(60)) {
            tracing::error!(
                queue = queue_index,
                "requests still running 60 s after the frontend stopped the ring"
            );
        }
        tracing::info!(
            queue = queue_index,
            "ring stopped by the frontend (device reset or stop)"
        );
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            tracing::warn!(?evset, "unexpected event on a virtqueue");
            return Ok(());
        }
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            return Err(io::Error::other(format!(
                "no virtqueue for event {device_event}"
            )));
        };
        let q = self.queue_index(device_event, thread_id);
        self.process_queue(vring, q)
    }
}
