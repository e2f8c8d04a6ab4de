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
//! Metadata itself (map runs, counters, the checkpoint log) is held back
//! as a **fixed allowance** that depends on the pool's size only
//! ([`metadata_allowance`]), or as what the last checkpoint settled where
//! that is more. Usable capacity used to follow the metadata segments of
//! the moment, and frequent merges, which leave partly used metadata
//! segments, shrank it below a nearly full pool's live data (ENOSPC in
//! tests/cleaner.rs); the allowance, and metadata segments kept apart by
//! lifetime (space.rs), keep it still.
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

/// Bytes a map entry takes in a run's leaf, with its share of the index
/// (a 20-byte key, a value of up to 24 and a 2-byte offset; rounded up).
const MAP_ENTRY_BYTES: u64 = 48;

/// Metadata segments that hold extents of no fixed size: one append
/// segment per lifetime class (space.rs), the checkpoint log, and one for
/// the short-lived class's segments that wait for their last extent.
const META_SEGMENTS: u64 = 4;

/// The fixed metadata allowance (segments): what the map of a pool whose
/// every block is mapped by an entry of its own takes, twice (the map, and
/// room for a merge that rewrites it), beside [`META_SEGMENTS`]. It
/// depends on the pool's size only, so usable capacity does not move with
/// how the map's metadata happens to lie at a checkpoint; a map larger than
/// that (compressed blocks, many snapshots) is counted as it is.
fn metadata_allowance(total_segments: u64, segment_size: u64) -> u64 {
    let entries = total_segments * (segment_size / crate::layout::BLOCK as u64);
    let map = (entries * MAP_ENTRY_BYTES).div_ceil(segment_size);
    META_SEGMENTS + 2 * map
}

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

/// Free segments below which the cleaner works and client writes are
/// paced (`admission`): a tenth of the pool, and at least two above the
/// data reserve.
pub(crate) fn clean_below(sh: &Shared) -> u64 {
    (sh.vdevs.total_segments() / 10).max(data_reserve(sh) + 2)
}

/// The part of a pool's size that client data cannot fill, by purpose
/// (bytes). `size - total()` is the usable capacity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserve {
    /// Metadata: map runs, counters, the checkpoint log, and room for a
    /// compaction that rewrites the whole map; the fixed allowance, or
    /// what the last checkpoint settled if that is more.
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
    // (With the fixed allowance this matters only for maps larger than it.)
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
    // The metadata settled at the last checkpoint, if the fixed allowance
    // does not cover it.
    let metadata = (meta_segs + map_bytes.div_ceil(seg)).max(metadata_allowance(total, seg));
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

    use crate::pool::space::MetaClass;

    const MIB: u64 = 1 << 20;

    /// A 256 MiB pool of 1 MiB segments, and its usable capacity.
    fn small_pool() -> (Pool, u64) {
        let dev: Arc<dyn Device> = Arc::new(MemDevice::new("d0", 256 * MIB));
        let pool = Pool::create(
            "p",
            vec![dev],
            &CreateOptions {
                segment_size: Some(MIB),
            },
            PoolConfig::default(),
        )
        .expect("create pool");
        let usable = usable_bytes(&pool.sh);
        (pool, usable)
    }

    fn alloc_run(sh: &Shared, bytes: u64, class: MetaClass) -> Vec<crate::layout::MetaExtent> {
        let blocks = (bytes / crate::layout::BLOCK as u64) as u32;
        sh.segs
            .lock()
            .alloc_meta_blocks(blocks, class)
            .expect("metadata blocks")
    }

    /// The allowance covers the map of a pool whose every block has an
    /// entry of its own, twice, besides the append and log segments.
    #[test]
    fn the_allowance_follows_the_pool_size() {
        // 256 segments of 256 blocks: 64 Ki entries of 48 bytes = 3 MiB.
        assert_eq!(metadata_allowance(256, MIB), META_SEGMENTS + 2 * 3);
        // Ten times the pool, ten times the map.
        assert_eq!(metadata_allowance(2560, MIB), META_SEGMENTS + 2 * 30);
        let (pool, usable) = small_pool();
        let total = pool.sh.vdevs.total_segments();
        let r = reserve(&pool.sh);
        assert_eq!(
            r.metadata,
            metadata_allowance(total, MIB) * MIB,
            "a new pool's metadata is within the allowance"
        );
        assert_eq!(usable, total * MIB - r.total());
        pool.close().expect("close");
    }

    /// Metadata within the allowance, however it lies in segments, does
    /// not move usable capacity: runs written, settled, released.
    #[test]
    fn metadata_within_the_allowance_leaves_usable_capacity_still() {
        let (pool, before) = small_pool();
        let sh = &pool.sh;
        let mut runs = Vec::new();
        for class in [MetaClass::Short, MetaClass::Long, MetaClass::Short] {
            runs.push(alloc_run(sh, MIB / 2, class));
            settle_metadata(sh);
            assert_eq!(usable_bytes(sh), before);
        }
        for r in &runs {
            sh.segs.lock().release_meta_blocks(r);
            settle_metadata(sh);
            assert_eq!(usable_bytes(sh), before);
        }
        pool.close().expect("close");
    }

    /// A map beyond the allowance is counted as it is, once a checkpoint
    /// settles it. A run being written takes metadata blocks before the
    /// runs it replaces are released; usable capacity must not dip
    /// meanwhile (a pool filled to it would refuse writes until the merge
    /// ended).
    #[test]
    fn usable_capacity_follows_settled_metadata_beyond_the_allowance() {
        let (pool, before) = small_pool();
        let sh = &pool.sh;
        // A run of 16 MiB being written (as a flush or merge does).
        let extents = alloc_run(sh, 16 * MIB, MetaClass::Long);
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
            with_run + 16 * MIB <= before,
            "{with_run} vs {before}: the settled run and its rewrite room are held back"
        );
        // Released: nothing changes until the next checkpoint settles it.
        sh.segs.lock().release_meta_blocks(&extents);
        assert_eq!(usable_bytes(sh), with_run);
        settle_metadata(sh);
        assert_eq!(usable_bytes(sh), before, "back within the allowance");
        pool.close().expect("close");
    }
}
