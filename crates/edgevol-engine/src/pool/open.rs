//! Creating, importing and recovering pools.
//!
//! Recovery is not a special mode: import always loads the newest valid
//! checkpoint and replays the log from its replay point. After a clean
//! close the log past that point is empty.
//!
//! Replay walks each stream's chain of batches (`prev_lsn` + `prev_crc`),
//! following `next_segment` at segment ends, until a batch does not
//! continue the chain. Batches from all streams are applied in lsn order
//! through the writer's own state machine. Payloads of batches written
//! after the last flush any header vouches for are verified first; records
//! that fail (torn writes) are skipped: they were never acknowledged as
//! durable.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};

use super::ckpt::{self, BlobRef, Checkpoint, ReplayPoint, StreamPos};
use super::gate::ReuseGate;
use super::raid::Geometry;
use super::space::{Counters, SegState, SegmentTable};
use super::vdev::Vdevs;
use super::writer::{Writer, STREAMS};
use super::{maint, CreateOptions, Pool, PoolConfig, Shared, Stats};
use crate::buf::AlignedBuf;
use crate::catalog::{check_name, Catalog};
use crate::device::{Device, FileDevice};
use crate::error::{Error, ErrorKind, Result};
use crate::format::batch::BatchHeader;
use crate::format::label::{DeviceLayout, GroupKind, GroupLayout, Label, PoolLayout};
use crate::format::uberblock::Uberblock;
use crate::layout::{
    Paddr, SegId, BLOCK, BLOCK_U64, DATA_START, DEFAULT_SEGMENT_SIZE, LABEL_A_OFFSET,
    LABEL_B_OFFSET, LABEL_SIZE, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE, UBERBLOCK_RING_OFFSET,
    UBERBLOCK_SLOTS,
};
use crate::map::run::BlockReader;
use crate::map::Map;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

fn write_raw(dev: &dyn Device, offset: u64, data: &[u8]) -> Result<()> {
    let mut b = AlignedBuf::zeroed(data.len().div_ceil(BLOCK) * BLOCK);
    b.as_mut_slice()[..data.len()].copy_from_slice(data);
    dev.write_at(b.as_slice(), offset)
        .map_err(|e| Error::io(format!("write to {} failed", dev.describe()), e))
}

fn read_raw(dev: &dyn Device, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut b = AlignedBuf::zeroed(len);
    dev.read_at(b.as_mut_slice(), offset)
        .map_err(|e| Error::io(format!("read from {} failed", dev.describe()), e))?;
    Ok(b.as_slice().to_vec())
}

/// Default segment size for a pool of `bytes`: 8 MiB, doubled until the
/// pool has at most 256 Ki segments, or halved (down to 1 MiB) until it has
/// at least 256. The reserves are counted in segments (pool/capacity.rs), so
/// a small pool of large segments would hold most of itself back: a 192 MiB
/// pool of 8 MiB segments accepted 44 MiB of data, of 1 MiB segments 158.
fn default_segment_size(bytes: u64) -> u64 {
    let mut s = DEFAULT_SEGMENT_SIZE;
    while bytes / s > 256 * 1024 && s < MAX_SEGMENT_SIZE {
        s *= 2;
    }
    while bytes / s < 256 && s > MIN_SEGMENT_SIZE {
        s /= 2;
    }
    s
}

pub(crate) fn create(
    name: &str,
    spec: Vec<(GroupKind, Vec<Arc<dyn Device>>)>,
    opts: &CreateOptions,
    cfg: PoolConfig,
) -> Result<Pool> {
    check_name("pool", name)?;
    if spec.is_empty() || spec.iter().any(|(_, d)| d.is_empty()) {
        return Err(Error::invalid("a pool needs at least one device"));
    }
    if spec.len() > 255 {
        return Err(Error::invalid("a pool has at most 255 groups"));
    }
    let total: u64 = spec.iter().flat_map(|(_, d)| d).map(|d| d.len()).sum();
    let seg = opts
        .segment_size
        .unwrap_or_else(|| default_segment_size(total));
    if !seg.is_power_of_two() || !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&seg) {
        return Err(Error::invalid(format!(
            "segment size {seg} must be a power of two between 1 MiB and 1 GiB"
        )));
    }
    let mut groups = Vec::new();
    for (kind, devs) in &spec {
        let geo = Geometry::new(*kind, devs.len(), seg)?;
        let mut members = Vec::new();
        for d in devs {
            let n = Label::segments_for(d.len(), geo.slot_bytes());
            if n < 8 {
                return Err(Error::invalid(format!(
                    "{} is too small: {} bytes holds {n} segments of {} bytes; a device needs at least {} bytes",
                    d.describe(),
                    d.len(),
                    geo.slot_bytes(),
                    DATA_START + 8 * geo.slot_bytes()
                )));
            }
            members.push(DeviceLayout {
                guid: rand::random(),
                path: d.describe(),
                segments: n,
            });
        }
        groups.push(GroupLayout {
            kind: *kind,
            devices: members,
        });
    }
    let layout = PoolLayout {
        segment_size: seg,
        groups,
    };
    let pool_guid: u128 = rand::random();
    let created = now_secs();
    for (g, (_, devs)) in spec.iter().enumerate() {
        for (m, d) in devs.iter().enumerate() {
            let label = Label {
                pool_guid,
                pool_name: name.to_string(),
                device_guid: layout.groups[g].devices[m].guid,
                txg: 1,
                created,
                layout: layout.clone(),
            };
            erase_uberblocks(&**d)?;
            write_label(&**d, &label)?;
        }
    }
    let vdevs = Arc::new(Vdevs::new(
        name,
        &layout,
        spec.iter()
            .map(|(_, d)| d.iter().cloned().map(Some).collect())
            .collect(),
    )?);
    let sizes: Vec<u32> = vdevs.groups.iter().map(|g| g.segments()).collect();
    let mut segs = SegmentTable::new(&sizes, seg);
    segs.set_row_blocks(
        (0..vdevs.groups.len())
            .map(|g| vdevs.row_blocks(g))
            .collect(),
    );
    let (sh, data_rx, maint_rx) =
        shared(name, pool_guid, created, vdevs, segs, cfg, Catalog::new());
    // First checkpoint: empty catalog, no runs, all segments free.
    let log = sh
        .segs
        .lock()
        .alloc_pinned_meta()
        .ok_or_else(|| Error::new(ErrorKind::NoSpace, "no segment for the checkpoint log"))?;
    // Every stream owns a segment and its successor from the start, so every
    // checkpoint's replay point names where each stream writes next.
    let mut streams = vec![StreamPos::default(); STREAMS];
    for st in &mut streams {
        let mut t = sh.segs.lock();
        st.seg = t.alloc(SegState::Data);
        st.next = t.alloc(SegState::Data);
        if st.seg.is_none() || st.next.is_none() {
            return Err(Error::new(
                ErrorKind::NoSpace,
                "pool too small for its log streams",
            ));
        }
    }
    let counters = Counters {
        segs: sh.segs.lock().snapshot(),
        lineage_delta: BTreeMap::new(),
    };
    let blob = ckpt::encode_counters(&counters);
    let cext = sh
        .segs
        .lock()
        .alloc_meta_blocks((blob.len() / BLOCK) as u32)
        .ok_or_else(|| Error::new(ErrorKind::NoSpace, "no segment for the counters"))?;
    ckpt::write_blob(&sh.vdevs, &cext, &blob)?;
    let cref = BlobRef {
        extents: cext,
        len: blob.len() as u64,
        crc: crc32c::crc32c(&blob),
    };
    let replay = ReplayPoint {
        lsn: 1,
        streams: streams.clone(),
    };
    let mut w = Writer::new(
        sh.clone(),
        Catalog::new(),
        streams,
        1,
        0,
        (log, 0),
        cref,
        replay,
        BTreeMap::new(),
    );
    futures::executor::block_on(w.initial_checkpoint())?;
    tracing::info!(pool = name, segment_size = seg, "created pool");
    Ok(start(sh, w, data_rx, maint_rx))
}

#[allow(clippy::too_many_arguments)]
fn shared(
    name: &str,
    guid: u128,
    created: u64,
    vdevs: Arc<Vdevs>,
    segs: SegmentTable,
    cfg: PoolConfig,
    cat: Catalog,
) -> (
    Arc<Shared>,
    async_channel::Receiver<super::writer::DataOp>,
    async_channel::Receiver<super::writer::MaintOp>,
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
        catalog: RwLock::new(Arc::new(cat)),
        segs: Mutex::new(segs),
        gate: Arc::new(ReuseGate::default()),
        cfg,
        data_tx,
        maint_tx,
        poisoned: Mutex::new(None),
        stats: Stats::default(),
        lineage_delta: Mutex::new(BTreeMap::new()),
        space_blocked: AtomicBool::new(false),
        maint_wake: (Mutex::new(false), Condvar::new()),
        closing: AtomicBool::new(false),
        maint_status: Mutex::new(maint::MaintStatus::default()),
        maint_lock: Mutex::new(()),
        next_run_id: std::sync::atomic::AtomicU64::new(1),
        memtable_budget: super::memtable_budget(&cfg_budget, pool_bytes),
        meta_roots: Mutex::new((Vec::new(), None)),
        usable_cache: Mutex::new((0, 0, 0)),
        keys: RwLock::new(std::collections::HashMap::new()),
        scans: Mutex::new(super::scrub::Scans::default()),
        scan_stop: AtomicBool::new(false),
        scan_running: AtomicBool::new(false),
        client_ops: std::sync::atomic::AtomicU64::new(0),
        subblock: Default::default(),
    });
    (sh, data_rx, maint_rx)
}

fn start(
    sh: Arc<Shared>,
    w: Writer,
    data_rx: async_channel::Receiver<super::writer::DataOp>,
    maint_rx: async_channel::Receiver<super::writer::MaintOp>,
) -> Pool {
    let mut threads = Vec::new();
    let name = sh.name.clone();
    // Dropped when the writer's loop ends: `shutdown` waits on it.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    match sh.cfg.spawner.clone() {
        Some(spawner) => (spawner.0)(Box::new(move || {
            Box::pin(async move {
                w.run(data_rx, maint_rx).await;
                drop(done_tx);
            })
        })),
        None => match std::thread::Builder::new()
            .name(format!("ev-writer-{name}"))
            .spawn(move || {
                futures::executor::block_on(w.run(data_rx, maint_rx));
                drop(done_tx);
            }) {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!(error = %e, "cannot start the writer thread"),
        },
    }
    if sh.cfg.background {
        let s2 = sh.clone();
        match std::thread::Builder::new()
            .name(format!("ev-maint-{name}"))
            .spawn(move || maint::run(s2))
        {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!(error = %e, "cannot start the maintenance thread"),
        }
        if !sh.cfg.health_interval.is_zero() {
            let s2 = sh.clone();
            match std::thread::Builder::new()
                .name(format!("ev-health-{name}"))
                .spawn(move || super::health::run(s2))
            {
                Ok(t) => threads.push(t),
                Err(e) => tracing::error!(error = %e, "cannot start the health probe thread"),
            }
        }
    }
    Pool::from_shared(sh, threads, done_rx)
}

/// Read both labels of a device; the valid one with the higher txg.
fn read_label(dev: &dyn Device) -> Result<Label> {
    let mut best: Option<Label> = None;
    let mut last_err = None;
    let mut newer = None;
    for off in [LABEL_A_OFFSET, LABEL_B_OFFSET] {
        if dev.len() < off + LABEL_SIZE {
            continue;
        }
        let buf = match read_raw(dev, off, LABEL_SIZE as usize) {
            Ok(b) => b,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        match Label::decode(&buf) {
            Ok(l) => {
                if best.as_ref().is_none_or(|b| l.txg > b.txg) {
                    best = Some(l);
                }
            }
            Err(crate::error::DecodeError::Version(v)) if best.is_none() => {
                newer = Some(v);
            }
            Err(e) => last_err = Some(Error::from(e)),
        }
    }
    if let (None, Some(v)) = (&best, newer) {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{} holds an edgevol pool of format version {v}, which this release \
                 (format {}) cannot read: import it with the release that made it or a newer one",
                dev.describe(),
                crate::format::envelope::FORMAT_VERSION
            ),
        ));
    }
    best.ok_or_else(|| {
        let what = last_err.map(|e| e.to_string()).unwrap_or_default();
        Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "{} is not an edgevol pool device (no valid label: {what})",
                dev.describe()
            ),
        )
    })
}

/// Write the current layout, generation `txg`, to the labels of every
/// writable member (each with its own device guid), one device after the
/// other.
pub(crate) fn write_labels(vdevs: &Vdevs, pool_guid: u128, created: u64) -> Result<()> {
    let (layout, txg) = vdevs.layout.lock().clone();
    // Resilvering members (a replacement) first, each flushed before the
    // next: a label on an old member never names a device that has none
    // of its own.
    let mut members: Vec<_> = vdevs
        .devices()
        .map(|(_, m)| m)
        .filter(|m| m.state() != super::vdev::MemberState::Faulted)
        .collect();
    members.sort_by_key(|m| m.state() != super::vdev::MemberState::Resilvering);
    for m in members {
        let label = Label {
            pool_guid,
            pool_name: vdevs.name.clone(),
            device_guid: m.guid(),
            txg,
            created,
            layout: layout.clone(),
        };
        write_label(&*m.dev(), &label)?;
    }
    Ok(())
}

/// Write both copies of a device's label, each made durable before the
/// next is touched: a power cut tears at most one of them.
pub(crate) fn write_label(dev: &dyn Device, label: &Label) -> Result<()> {
    let b = label.encode()?;
    for off in [LABEL_A_OFFSET, LABEL_B_OFFSET] {
        write_raw(dev, off, &b)?;
        dev.flush()
            .map_err(|e| Error::io(format!("flush of {} failed", dev.describe()), e))?;
    }
    Ok(())
}

/// Make a device that joins a pool unable to look like any pool's device
/// (an old pool's uberblocks on it must never be picked up).
pub(crate) fn erase_uberblocks(dev: &dyn Device) -> Result<()> {
    write_raw(
        dev,
        UBERBLOCK_RING_OFFSET,
        &vec![0u8; (UBERBLOCK_SLOTS as usize) * BLOCK],
    )
}

pub(crate) fn probe(path: &Path) -> Result<(String, u128)> {
    let d = FileDevice::open_for_probe(path)?;
    let l = read_label(&d)?;
    Ok((l.pool_name, l.pool_guid))
}

/// Erase a destroyed pool from its devices: the first MiB (both labels
/// and the uberblock ring, so import no longer finds it) and the last MiB.
/// Those are the spans the daemon's foreign-data check reads before it
/// lets `pool create` take a file (see `docs/devices.md`): a destroyed
/// pool's files are taken again without `--force`.
pub(crate) fn wipe_labels(vdevs: &Vdevs) -> Result<()> {
    let zero = vec![0u8; DATA_START as usize];
    for (_, m) in vdevs.devices() {
        if m.state() == super::vdev::MemberState::Faulted {
            continue;
        }
        let dev = m.dev();
        write_raw(&*dev, 0, &zero)?;
        // Device lengths are whole blocks, so the tail start is aligned.
        let tail = dev.len().saturating_sub(DATA_START).max(DATA_START);
        if tail < dev.len() {
            write_raw(&*dev, tail, &zero[..(dev.len() - tail) as usize])?;
        }
        dev.flush()
            .map_err(|e| Error::io(format!("flush of {} failed", dev.describe()), e))?;
    }
    Ok(())
}

/// The label whose layout import uses: the newest — unless only devices
/// of the groups it adds carry it. That is a `pool add` cut before any
/// member of the pool recorded the new group (see `grow.rs`): the add did
/// not happen, the older layout holds, and the new devices are left out.
fn choose_label(labels: &[Label]) -> Option<&Label> {
    let newest = labels.iter().max_by_key(|l| l.txg)?;
    let Some(older) = labels
        .iter()
        .filter(|l| l.txg < newest.txg)
        .max_by_key(|l| l.txg)
    else {
        return Some(newest);
    };
    let kept = older.layout.groups.len();
    if newest.layout.groups.len() <= kept {
        return Some(newest);
    }
    let added: std::collections::BTreeSet<u128> = newest.layout.groups[kept..]
        .iter()
        .flat_map(|g| g.devices.iter().map(|d| d.guid))
        .collect();
    let unconfirmed = labels
        .iter()
        .filter(|l| l.txg == newest.txg)
        .all(|l| added.contains(&l.device_guid));
    Some(if unconfirmed { older } else { newest })
}

pub(crate) fn import(devices: Vec<Arc<dyn Device>>, cfg: PoolConfig) -> Result<Pool> {
    if devices.is_empty() {
        return Err(Error::invalid("no devices given"));
    }
    // A device without a valid label is left out, like a missing one (a
    // replacement whose label never became durable, a wiped disk): the
    // layout in the other labels says whether the pool can do without it.
    let mut labels = Vec::new();
    let mut devices_ok = Vec::new();
    let mut first_err = None;
    for d in devices {
        match read_label(&*d) {
            Ok(l) => {
                labels.push(l);
                devices_ok.push(d);
            }
            Err(e) => {
                tracing::warn!(device = %d.describe(), error = %e, "leaving out a device without a valid label");
                first_err.get_or_insert(e);
            }
        }
    }
    if let (true, Some(e)) = (labels.is_empty(), first_err) {
        return Err(e);
    }
    let devices = devices_ok;
    let guid = labels[0].pool_guid;
    if let Some(i) = labels.iter().position(|l| l.pool_guid != guid) {
        return Err(Error::invalid(format!(
            "{} belongs to pool {:?}, not {:?}",
            devices[i].describe(),
            labels[i].pool_name,
            labels[0].pool_name
        )));
    }
    let newest = choose_label(&labels)
        .cloned()
        .ok_or_else(|| Error::invalid("no labels"))?;
    let max_txg = labels.iter().map(|l| l.txg).max().unwrap_or(newest.txg);
    let layout = newest.layout.clone();
    // Match devices to layout positions by guid.
    let mut by_guid: BTreeMap<u128, Arc<dyn Device>> = BTreeMap::new();
    for (d, l) in devices.iter().zip(&labels) {
        by_guid.insert(l.device_guid, d.clone());
    }
    let mut groups = Vec::new();
    for g in &layout.groups {
        let geo = Geometry::new(g.kind, g.devices.len(), layout.segment_size)?;
        let mut members = Vec::new();
        for dl in &g.devices {
            let Some(d) = by_guid.get(&dl.guid).cloned() else {
                tracing::warn!(pool = %newest.pool_name, device = %dl.path, "device missing at import");
                members.push(None);
                continue;
            };
            if Label::segments_for(d.len(), geo.slot_bytes()) < dl.segments {
                return Err(Error::corrupt(format!(
                    "{} is smaller than when it joined pool {:?} (truncated?)",
                    d.describe(),
                    newest.pool_name
                )));
            }
            members.push(Some(d));
        }
        let missing = members.iter().filter(|m| m.is_none()).count();
        if missing > geo.tolerance() {
            let names: Vec<&str> = g
                .devices
                .iter()
                .zip(&members)
                .filter(|(_, m)| m.is_none())
                .map(|(d, _)| d.path.as_str())
                .collect();
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "pool {:?} is missing device(s) {} and cannot do without them",
                    newest.pool_name,
                    names.join(", ")
                ),
            ));
        }
        groups.push(members);
    }
    let vdevs = Arc::new(Vdevs::new(&newest.pool_name, &layout, groups)?);
    // Past every generation seen, so a label written from now on is
    // newer than the labels of an add that `choose_label` undid; and when
    // it undid one, say so in every member's label at once: a member that
    // carried the add's layout but was missing now must not bring it back
    // later, naming devices the pool no longer lists.
    vdevs.layout.lock().1 = max_txg;
    if newest.txg < max_txg {
        tracing::warn!(pool = %newest.pool_name, "an interrupted `pool add` is undone; its devices are left out");
        vdevs.layout.lock().1 = max_txg + 1;
        write_labels(&vdevs, guid, newest.created)?;
    }
    let (ub, mut ck) = newest_checkpoint(&vdevs, guid)?;
    // A promote the crash interrupted left invisible copies: collect them
    // (the user runs `promote` again).
    ck.catalog.abandon_flattens();
    // A member of a redundant group that the checkpoint names as not
    // receiving writes (it was FAULTED, missing, or resilvering), or that
    // missed more than the newest uberblock, may hold stale data: it is
    // RESILVERING from here on (written, not read; replay included) and
    // resilvered once the pool runs. Lacking only the newest
    // uberblock is what a power cut between two members' uberblock writes
    // leaves, and harmless (the checkpoint was flushed on every member
    // before its uberblocks were written). A group added after the
    // checkpoint (its counters do not know it) has missed nothing: its
    // members got every write since they joined (what replay reads is
    // rewritten on every member anyway), they just carry no uberblock yet.
    let counters = ckpt::decode_counters(&ckpt::read_blob(&vdevs, &ck.counters)?)?;
    let known_groups = counters.segs.len();
    let stale: Vec<(usize, usize)> = vdevs
        .groups
        .iter()
        .enumerate()
        .filter(|(gi, g)| g.geo.tolerance() > 0 && *gi < known_groups)
        .flat_map(|(gi, g)| {
            let named = &ck.stale_members;
            g.members.iter().enumerate().filter_map(move |(mi, m)| {
                let seq = m.newest_seq.load(std::sync::atomic::Ordering::SeqCst);
                (m.state() == super::vdev::MemberState::Online
                    && (named.contains(&m.guid()) || seq + 1 < ub.seq))
                    .then_some((gi, mi))
            })
        })
        .collect();
    catch_up_uberblocks(&vdevs, &ub, &stale)?;
    for &(g, m) in &stale {
        tracing::warn!(pool = %newest.pool_name, device = %vdevs.groups[g].members[m].dev().describe(), "device missed recent writes; resilvering it");
        vdevs.groups[g].members[m].set_state(super::vdev::MemberState::Resilvering);
    }
    tracing::info!(pool = %newest.pool_name, seq = ub.seq, "importing pool");
    let sizes: Vec<u32> = vdevs.groups.iter().map(|g| g.segments()).collect();
    let mut segs = SegmentTable::from_counters(&sizes, layout.segment_size, &counters);
    segs.set_row_blocks(
        (0..vdevs.groups.len())
            .map(|g| vdevs.row_blocks(g))
            .collect(),
    );
    // Metadata ownership comes from the checkpoint, not the counters.
    let meta: Vec<SegId> = segs
        .iter()
        .filter(|(_, s)| s.state == SegState::Meta)
        .map(|(id, _)| id)
        .collect();
    for s in meta {
        segs.release(s);
    }
    for r in ck.manifest.runs() {
        segs.claim_meta_blocks(&r.extents);
    }
    segs.claim_meta_blocks(&ck.counters.extents);
    segs.pin_meta(ck.log_segment);
    for p in &ck.replay.streams {
        for s in [p.seg, p.next].into_iter().flatten() {
            segs.claim(s, SegState::Data);
        }
    }
    segs.rebuild_free();
    let (sh, data_rx, maint_rx) = shared(
        &newest.pool_name,
        guid,
        newest.created,
        vdevs,
        segs,
        cfg,
        ck.catalog.clone(),
    );
    sh.next_run_id
        .store(ck.next_run_id, std::sync::atomic::Ordering::SeqCst);
    sh.map.load(&ck.manifest)?;
    *sh.meta_roots.lock() = (ck.counters.extents.clone(), Some(ck.log_segment));
    *sh.lineage_delta.lock() = counters.lineage_delta.clone();
    let ckpt_end = sh
        .vdevs
        .row_end(ck.log_segment, u64::from(ub.ckpt.offset + ub.ckpt_len));
    let ckpt_log = (ck.log_segment, ckpt_end as u32);
    let mut w = Writer::new(
        sh.clone(),
        ck.catalog.clone(),
        ck.replay.streams.clone(),
        ck.next_lsn.max(ck.replay.lsn),
        ub.seq,
        ckpt_log,
        ck.counters.clone(),
        ck.replay.clone(),
        counters.lineage_delta,
    );
    let replayed = replay(&sh, &mut w, &ck)?;
    // Blocking device I/O: import runs on a plain thread.
    futures::executor::block_on(w.finish_replay(replayed > 0))?;
    if replayed > 0 {
        tracing::info!(pool = %sh.name, batches = replayed, "recovered from the log");
    }
    let pool = start(sh.clone(), w, data_rx, maint_rx);
    // A scrub a restart interrupted continues (after any resilver).
    let scrub_at = sh
        .catalog()
        .scrub_at
        .map(|(l, a, b)| crate::map::Key::new(l, a, b));
    if !stale.is_empty() {
        pool.resilver_stale(stale, scrub_at)?;
    } else if let Some(from) = scrub_at {
        pool.resume_scrub(from)?;
    }
    Ok(pool)
}

/// Write the newest uberblock on every healthy member that lacks it.
///
/// A power cut between the members' uberblock writes leaves some of them
/// one uberblock behind, which is harmless (the checkpoint was
/// flushed on every member first). But if the pool then runs without a
/// checkpoint and the next one is cut the same way, those members are two
/// behind and would be taken for stale; in a parity group that can be more
/// members than it tolerates, and the pool would not import (found by
/// `edgevol test crash --layout parity1 --seed 20261207`). Copying the
/// uberblock to them at import keeps every healthy member at most one
/// behind.
fn catch_up_uberblocks(vdevs: &Vdevs, ub: &Uberblock, stale: &[(usize, usize)]) -> Result<()> {
    use std::sync::atomic::Ordering::SeqCst;
    let block = ub.encode();
    for (gi, g) in vdevs.groups.iter().enumerate() {
        for (mi, m) in g.members.iter().enumerate() {
            if stale.contains(&(gi, mi))
                || m.state() != super::vdev::MemberState::Online
                || m.newest_seq.load(SeqCst) >= ub.seq
            {
                continue;
            }
            let dev = m.dev();
            write_raw(&*dev, Uberblock::slot_offset(ub.seq), &block)?;
            dev.flush()
                .map_err(|e| Error::io(format!("flush of {} failed", dev.describe()), e))?;
            m.newest_seq.store(ub.seq, SeqCst);
        }
    }
    Ok(())
}

/// The newest uberblock whose checkpoint reads back intact.
fn newest_checkpoint(vdevs: &Vdevs, guid: u128) -> Result<(Uberblock, Checkpoint)> {
    let mut ubs = Vec::new();
    for (_, m) in vdevs.devices() {
        if m.state() == super::vdev::MemberState::Faulted {
            continue;
        }
        let dev = m.dev();
        let ring = match read_raw(
            &*dev,
            UBERBLOCK_RING_OFFSET,
            UBERBLOCK_SLOTS as usize * BLOCK,
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(device = %dev.describe(), error = %e, "cannot read uberblocks");
                continue;
            }
        };
        let mut newest = 0;
        for slot in ring.chunks(BLOCK) {
            if let Ok(u) = Uberblock::decode(slot) {
                if u.pool_guid == guid {
                    newest = newest.max(u.seq);
                    ubs.push(u);
                }
            }
        }
        m.newest_seq
            .store(newest, std::sync::atomic::Ordering::SeqCst);
    }
    ubs.sort_by_key(|u| std::cmp::Reverse(u.seq));
    ubs.dedup_by_key(|u| u.seq);
    let mut last_err = Error::corrupt("no valid uberblock found");
    for u in ubs {
        let r = (|| {
            let mut b = AlignedBuf::zeroed((u.ckpt_len as usize).div_ceil(BLOCK) * BLOCK);
            let n = u.ckpt_len as usize;
            let ok = |x: &[u8]| crc32c::crc32c(&x[..n]) == u.ckpt_crc;
            // A copy that verifies (a stale or bad one is healed on the way).
            let _ = vdevs.read_checked(u.ckpt.seg, u64::from(u.ckpt.offset), b.as_mut_slice(), &ok);
            let buf = b.as_slice()[..n].to_vec();
            if crc32c::crc32c(&buf) != u.ckpt_crc {
                return Err(Error::corrupt(format!(
                    "checkpoint {} fails its checksum",
                    u.seq
                )));
            }
            let ck = ckpt::decode_checkpoint(&buf)?;
            if ck.seq != u.seq {
                return Err(Error::corrupt(format!(
                    "checkpoint {} has sequence {}",
                    u.seq, ck.seq
                )));
            }
            Ok(ck)
        })();
        match r {
            Ok(ck) => return Ok((u, ck)),
            Err(e) => {
                tracing::warn!(seq = u.seq, error = %e, "skipping a damaged checkpoint");
                last_err = e;
            }
        }
    }
    Err(last_err)
}

/// A batch found while walking a stream.
struct Found {
    header: BatchHeader,
    at: Paddr,
    crc: u32,
}

/// Try to read a batch at `(seg, off)` that continues a chain.
fn read_batch(
    vdevs: &Vdevs,
    guid: u128,
    stream: u8,
    seg: SegId,
    off: u32,
    prev_lsn: u64,
    prev_crc: u32,
) -> Option<Found> {
    // The usual copy first; then each variant (one mirror side, or a
    // parity rebuild without one member): a member that missed writes
    // (stale, or torn before a flush) must not end the chain early.
    let variants = vdevs
        .groups
        .get(seg.group as usize)
        .map_or(0, |g| g.members.len());
    let redundant = vdevs
        .groups
        .get(seg.group as usize)
        .is_some_and(|g| g.geo.tolerance() > 0);
    let tries = std::iter::once(None).chain((0..if redundant { variants } else { 0 }).map(Some));
    for variant in tries {
        let read = |at: u64, buf: &mut [u8]| match variant {
            None => vdevs.read(seg, at, buf),
            Some(v) => vdevs.read_variant(seg, at, buf, v),
        };
        if let Some(f) = read_batch_with(vdevs, guid, stream, seg, off, prev_lsn, prev_crc, read) {
            return Some(f);
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn read_batch_with(
    vdevs: &Vdevs,
    guid: u128,
    stream: u8,
    seg: SegId,
    off: u32,
    prev_lsn: u64,
    prev_crc: u32,
    read: impl Fn(u64, &mut [u8]) -> Result<()>,
) -> Option<Found> {
    let seg_size = vdevs.segment_size;
    if u64::from(off) + BLOCK_U64 > seg_size {
        return None;
    }
    let mut first = AlignedBuf::zeroed(BLOCK);
    read(u64::from(off), first.as_mut_slice()).ok()?;
    let hlen = BatchHeader::peek_header_len(first.as_slice()).ok()?;
    let hbytes = hlen.div_ceil(BLOCK) * BLOCK;
    if u64::from(off) + hbytes as u64 > seg_size {
        return None;
    }
    let buf = if hbytes > BLOCK {
        let mut b = AlignedBuf::zeroed(hbytes);
        read(u64::from(off), b.as_mut_slice()).ok()?;
        b
    } else {
        first
    };
    let h = BatchHeader::decode(buf.as_slice()).ok()?;
    let chained = h.pool_guid == guid
        && h.stream == stream
        && h.segment == seg
        && h.prev_lsn == prev_lsn
        && h.prev_crc == prev_crc
        && h.lsn > prev_lsn
        && u64::from(off) + u64::from(h.total_len) <= seg_size;
    if !chained {
        return None;
    }
    let crc = BatchHeader::crc_of_encoded(buf.as_slice());
    Some(Found {
        header: h,
        at: Paddr::new(seg, off),
        crc,
    })
}

/// Walk one stream's chain from its replay position.
fn walk(vdevs: &Vdevs, guid: u128, stream: u8, pos: &StreamPos) -> Vec<Found> {
    let mut out = Vec::new();
    let Some(mut seg) = pos.seg else { return out };
    let mut off = pos.off;
    let mut next = pos.next;
    let (mut prev_lsn, mut prev_crc) = (pos.prev_lsn, pos.prev_crc);
    loop {
        let found = read_batch(vdevs, guid, stream, seg, off, prev_lsn, prev_crc).or_else(|| {
            let n = next?;
            read_batch(vdevs, guid, stream, n, 0, prev_lsn, prev_crc)
        });
        let Some(f) = found else { break };
        seg = f.header.segment;
        off = f.at.offset + f.header.total_len;
        next = Some(f.header.next_segment);
        prev_lsn = f.header.lsn;
        prev_crc = f.crc;
        out.push(f);
    }
    out
}

/// Which entries of a batch have intact payloads.
fn verify_payloads(vdevs: &Vdevs, f: &Found) -> Vec<bool> {
    let mut buf = AlignedBuf::zeroed(f.header.total_len as usize);
    if vdevs
        .read(f.at.seg, u64::from(f.at.offset), buf.as_mut_slice())
        .is_err()
    {
        return vec![false; f.header.entries.len()];
    }
    payloads_ok(&f.header, buf.as_slice())
}

/// Which entries of a batch in `b` (the whole batch) have intact payloads.
fn payloads_ok(h: &BatchHeader, b: &[u8]) -> Vec<bool> {
    h.entries
        .iter()
        .map(|e| {
            if e.stored_len == 0 {
                return true;
            }
            let s = e.payload_off as usize;
            let Some(p) = b.get(s..s + e.stored_len as usize) else {
                return false;
            };
            if e.is_plain() {
                p.chunks(BLOCK)
                    .zip(&e.csums)
                    .all(|(blk, c)| crc32c::crc32c(blk) == *c)
            } else {
                e.csums.first().is_some_and(|c| crc32c::crc32c(p) == *c)
            }
        })
        .collect()
}

/// Rewrite a replayed batch on every member of a redundant group: a crash
/// may have left it on some copies (or columns) only, and parity must
/// match what replay accepted before a device can fail.
fn resync(vdevs: &Vdevs, f: &Found, valid: &[bool]) -> Result<()> {
    let redundant = vdevs
        .groups
        .get(f.at.seg.group as usize)
        .is_some_and(|g| g.geo.tolerance() > 0);
    if !redundant {
        return Ok(());
    }
    let mut buf = AlignedBuf::zeroed(f.header.total_len as usize);
    let off = u64::from(f.at.offset);
    // A copy with this very header and every payload replay accepted.
    let ok = |b: &[u8]| {
        BatchHeader::decode(b).is_ok_and(|h| {
            BatchHeader::crc_of_encoded(b) == f.crc
                && payloads_ok(&h, b)
                    .iter()
                    .zip(valid)
                    .all(|(got, want)| *got || !*want)
        })
    };
    if let Err(e) = vdevs.read_checked(f.at.seg, off, buf.as_mut_slice(), &ok) {
        tracing::warn!(batch = f.header.lsn, error = %e, "cannot resync a replayed batch; scrub will");
        return Ok(());
    }
    vdevs.write(f.at.seg, off, buf.as_slice())
}

fn replay(sh: &Arc<Shared>, w: &mut Writer, ck: &Checkpoint) -> Result<usize> {
    let mut all: Vec<Found> = Vec::new();
    for (i, pos) in ck.replay.streams.iter().enumerate() {
        all.extend(walk(&sh.vdevs, sh.guid, i as u8, pos));
    }
    all.retain(|f| f.header.lsn >= ck.replay.lsn);
    all.sort_by_key(|f| f.header.lsn);
    let flushed = all.iter().map(|f| f.header.flushed_lsn).max().unwrap_or(0);
    let n = all.len();
    for f in &all {
        let valid = if f.header.lsn <= flushed {
            vec![true; f.header.entries.len()]
        } else {
            verify_payloads(&sh.vdevs, f)
        };
        let skipped = valid.iter().filter(|v| !**v).count();
        if skipped > 0 {
            tracing::warn!(
                lsn = f.header.lsn,
                skipped,
                "skipping torn records written after the last flush"
            );
        }
        w.replay_batch(&f.header, f.at, &valid, f.crc)?;
        resync(&sh.vdevs, f, &valid)?;
    }
    Ok(n)
}

impl Writer {
    /// After replay: make what was replayed durable, then continue safely
    /// past any lsn a lost tail might have used.
    pub(crate) async fn finish_replay(&mut self, replayed: bool) -> Result<()> {
        self.sh.vdevs.flush_all()?;
        self.next_lsn += super::writer::RECOVERY_LSN_SKIP;
        self.flushed_lsn = self.next_lsn - 1;
        *self.sh.catalog.write() = Arc::new(self.cat.clone());
        *self.sh.lineage_delta.lock() = self.lineage_delta.clone();
        if replayed {
            // What was replayed is now in runs and the replay point moves past
            // it: a torn tail is never read again as if it had been flushed.
            self.flush_now().await?;
        }
        Ok(())
    }

    /// The first checkpoint of a new pool.
    pub(crate) async fn initial_checkpoint(&mut self) -> Result<()> {
        let cat = self.cat.clone();
        self.write_checkpoint_pub(&cat).await?;
        *self.sh.catalog.write() = Arc::new(cat);
        Ok(())
    }
}
