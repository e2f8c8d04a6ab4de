//! How much of a pool clients may fill, and what is held back and why.
//!
//! Physical segments are shared by three users, and each may only take a
//! free segment while more than its floor remains free:
//!
//! ```text
//!  free segments:  0 .. meta_floor .. data_reserve (= meta_floor + CLEANER_SEGMENTS) ..
//!  metadata        may take any
//!  cleaner         only above meta_floor      (so the flush that frees its
//!                                              victims can always run)
//!  client data     only above data_reserve    (so the cleaner can always run)
//! ```
//!
//! `meta_floor` covers one memtable flush, a counters table and a
//! checkpoint-log rollover. Client writes are admitted while live data
//! stays below the usable capacity ([`usable_bytes`]), which also keeps
//! [`OVERPROVISION_PERCENT`] of the data segments dead or free, so when the
//! data stream runs out of free segments the cleaner always finds dead
//! space to reclaim: a full pool slows down, it never deadlocks.
//!
//! [`reserve`] splits `size - usable` into those parts so that `pool
//! status` can say where the space went (docs/architecture.md, "Space").
//!
//! Invariant kept (shared/DESIGN.md): 5 — full is not fatal: metadata and
//! the cleaner always find the segments they need.

use super::{space, writer, PoolConfig, Shared};

/// Segments kept free for the cleaner beyond the metadata floor.
pub const CLEANER_SEGMENTS: u64 = 4;

/// Share of data segment space kept free of live data so the cleaner always
/// finds dead space to reclaim (over-provisioning, as in SSDs).
pub const OVERPROVISION_PERCENT: u64 = 8;

/// Bytes per segment entry in the counters table (generous upper bound).
const COUNTERS_BYTES_PER_SEGMENT: u64 = 24;

/// The memtable budget for a pool of `pool_bytes`.
pub(crate) fn memtable_budget(cfg: &PoolConfig, pool_bytes: u64) -> usize {
    let cap = (pool_bytes / 64).max(256 << 10);
    cfg.memtable_bytes
        .min(usize::try_from(cap).unwrap_or(usize::MAX))
}

/// Free segments only metadata may take.
pub(crate) fn meta_floor(sh: &Shared) -> u64 {
    let seg = sh.vdevs.segment_size;
    let run = (sh.memtable_budget as u64).div_ceil(seg) + 1;
    let counters =
        (sh.vdevs.total_segments() * COUNTERS_BYTES_PER_SEGMENT + (64 << 10)).div_ceil(seg);
    run + counters + 2
}

/// Free segments client data may not take.
pub(crate) fn data_reserve(sh: &Shared) -> u64 {
    meta_floor(sh) + CLEANER_SEGMENTS
}

/// Free segments below which the cleaner works: a tenth of the pool, and
/// at least two above the data reserve.
pub(crate) fn clean_below(sh: &Shared) -> u64 {
    (sh.vdevs.total_segments() / 10).max(data_reserve(sh) + 2)
}

/// The part of a pool's size that client data cannot fill, by purpose
/// (bytes). `size - total()` is the usable capacity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserve {
    /// Metadata in use now: map runs, counters, the checkpoint log, and
    /// room for a compaction that rewrites the whole map.
    pub metadata: u64,
    /// Free segments only metadata may take: one memtable flush, a counters
    /// table and a checkpoint-log rollover, so a full pool can always
    /// commit (and so delete things).
    pub metadata_floor: u64,
    /// Free segments kept for the cleaner to move live data into.
    pub cleaner: u64,
    /// Segments open for writing, and their reserved successors.
    pub streams: u64,
    /// The over-provisioning share of what remains, kept dead or free so
    /// the cleaner always finds space to reclaim.
    pub overprovision: u64,
}

impl Reserve {
    /// All of it.
    pub fn total(&self) -> u64 {
        self.metadata + self.metadata_floor + self.cleaner + self.streams + self.overprovision
    }
}

/// Record the metadata the durable state uses now: called once a
/// checkpoint has released what it no longer needs (and at import), never
/// while a flush or compaction is writing a run.
///
/// The reserve counts this *settled* figure. A run being written takes
/// metadata blocks before the runs it replaces are released; counted as it
/// happened, that made usable capacity dip during every flush and merge,
/// and a pool filled to its usable capacity refuse writes until the merge
/// ended. Those blocks are what the reserve's room for rewriting the whole
/// map is for, so they need not be counted twice.
pub(crate) fn settle_metadata(sh: &Shared) {
    let t = sh.segs.lock();
    *sh.settled_metadata.lock() = Some((t.count(space::SegState::Meta), t.meta_live()));
}

/// What is held back from client data right now.
pub(crate) fn reserve(sh: &Shared) -> Reserve {
    let seg = sh.vdevs.segment_size;
    let (meta_segs, map_bytes) = {
        let settled = *sh.settled_metadata.lock();
        settled.unwrap_or_else(|| {
            // Not settled yet (a pool being opened): the table as it is.
            let t = sh.segs.lock();
            (t.count(space::SegState::Meta), t.meta_live())
        })
    };
    let total = sh.vdevs.total_segments();
    let floor = meta_floor(sh);
    let streams = 2 * writer::STREAMS as u64;
    let metadata = meta_segs + map_bytes.div_ceil(seg);
    let held = floor + CLEANER_SEGMENTS + streams + metadata;
    let rest = total.saturating_sub(held) * seg;
    // Whatever the reserves cannot take (a pool too small for them) is
    // taken from the smallest first, so the parts still add up to the size.
    let mut left = total * seg;
    let mut take = |segs: u64| {
        let b = (segs * seg).min(left);
        left -= b;
        b
    };
    let metadata = take(metadata);
    let metadata_floor = take(floor);
    let cleaner = take(CLEANER_SEGMENTS);
    let streams = take(streams);
    Reserve {
        metadata,
        metadata_floor,
        cleaner,
        streams,
        overprovision: rest - rest / 100 * (100 - OVERPROVISION_PERCENT),
    }
}

/// Bytes of live data the pool accepts: the segments left after the
/// reserves, the streams' reserved successors, metadata and room for a
/// compaction that rewrites the whole map, less the over-provisioning.
pub(crate) fn usable_bytes(sh: &Shared) -> u64 {
    let size = sh.vdevs.total_segments() * sh.vdevs.segment_size;
    size.saturating_sub(reserve(sh).total())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::device::{Device, MemDevice};
    use crate::pool::{CreateOptions, Pool};

    /// A run being written takes metadata blocks before the runs it
    /// replaces are released; usable capacity must not dip meanwhile (a
    /// pool filled to it would refuse writes until the merge ended). It
    /// follows the metadata only once a checkpoint settles it.
    #[test]
    fn usable_capacity_follows_settled_metadata_only() {
        let dev: Arc<dyn Device> = Arc::new(MemDevice::new("d0", 256 << 20));
        let pool = Pool::create(
            "p",
            vec![dev],
            &CreateOptions {
                segment_size: Some(1 << 20),
            },
            PoolConfig::default(),
        )
        .expect("create pool");
        let sh = &pool.sh;
        let before = usable_bytes(sh);
        // A run of 3 MiB being written (as a flush or merge does).
        let blocks = 3 * (1 << 20) / crate::layout::BLOCK as u32;
        let extents = sh
            .segs
            .lock()
            .alloc_meta_blocks(blocks)
            .expect("metadata blocks");
        assert_eq!(
            usable_bytes(sh),
            before,
            "unchanged while the run is written"
        );
        // Installed: the checkpoint settles it (map + room to rewrite it).
        settle_metadata(sh);
        let with_run = usable_bytes(sh);
        // (Over-provisioning, a share of what is left, shrinks a little.)
        assert!(
            with_run + 5 * (1 << 20) <= before,
            "{with_run} vs {before}: the settled run and its rewrite room are held back"
        );
        // Released: nothing changes until the next checkpoint settles it.
        sh.segs.lock().release_meta_blocks(&extents);
        assert_eq!(usable_bytes(sh), with_run);
        settle_metadata(sh);
        // (The segment the next run will continue in stays metadata's.)
        let after = usable_bytes(sh);
        assert!(
            after > with_run && after + (1 << 20) >= before,
            "{after} vs {before}"
        );
        pool.close().expect("close");
    }
}
