//! Creating a pool: checking the device list and segment size, writing
//! every member's labels, and writing the first checkpoint (an empty
//! catalog, every stream's first segments).
//!
//! Keeps invariant 7 (bad input gets a clear error) by refusing a bad
//! name, segment size or too small a device before any device is written;
//! and invariant 5 (full is not fatal) by choosing a segment size small
//! enough that the reserves, counted in segments, leave a small pool room
//! for data.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::labels::{erase_uberblocks, write_label};
use crate::catalog::{check_name, Catalog};
use crate::device::Device;
use crate::error::{Error, ErrorKind, Result};
use crate::format::label::{DeviceLayout, GroupKind, GroupLayout, Label, PoolLayout};
use crate::layout::{BLOCK, DATA_START, DEFAULT_SEGMENT_SIZE, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};
use crate::pool::ckpt::{self, BlobRef, ReplayPoint, StreamPos};
use crate::pool::lifecycle::start;
use crate::pool::raid::Geometry;
use crate::pool::shared::shared;
use crate::pool::space::MetaClass;
use crate::pool::space::{Counters, SegState, SegmentTable};
use crate::pool::vdev::Vdevs;
use crate::pool::writer::{Writer, STREAMS};
use crate::pool::{now_secs, CreateOptions, Pool, PoolConfig};

/// Default segment size for a pool of `bytes`: 8 MiB, doubled until the
/// pool has at most 256 Ki segments, or halved (down to 1 MiB) until it has
/// at least 256. The reserves are counted in segments (pool/capacity.rs), so
/// a small pool of large segments would hold most of itself back: a 192 MiB
/// pool of 8 MiB segments accepted 44 MiB of data, of 1 MiB segments 158
/// (152 since the fixed metadata allowance).
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
        .alloc_meta_blocks((blob.len() / BLOCK) as u32, MetaClass::Short)
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
    );
    futures::executor::block_on(w.initial_checkpoint())?;
    tracing::info!(pool = name, segment_size = seg, "created pool");
    Ok(start(sh, w, data_rx, maint_rx))
}

impl Writer {
    /// The first checkpoint of a new pool.
    pub(crate) async fn initial_checkpoint(&mut self) -> Result<()> {
        let cat = self.cat.clone();
        self.write_checkpoint_pub(&cat).await?;
        *self.sh.catalog.write() = Arc::new(cat);
        Ok(())
    }
}
