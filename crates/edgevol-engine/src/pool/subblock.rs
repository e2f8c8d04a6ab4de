//! Exclusion for sub-block (unaligned) client I/O.
//!
//! The map stores whole 4 KiB blocks, so a write or a zeroing that covers
//! part of a block is a read-modify-write (RMW): read the block, merge the
//! new bytes in, write the whole block back. The read and the write are two
//! steps, so without exclusion a modifying op on the same block that lands
//! between them would be reverted by the RMW's write-back (two 512-byte
//! writes to different sectors of one block would lose one of them). This
//! module gives every volume one [`VolumeLocks`], shared by all of its
//! [`Volume`](super::Volume) handles (every connection of every export),
//! that serialises each RMW against every other modifying op touching its
//! blocks.
//!
//! The aligned path is the hot path of the whole product and stays
//! lock-free while no RMW runs, Dekker style:
//!
//! * an aligned modifying op increments `inflight`, then reads
//!   `rmw_active`; if it is zero it runs with no lock, else it undoes its
//!   increment and locks its block range in the range table (see
//!   [`Access`]);
//! * an RMW increments `rmw_active`, waits until `inflight` drains to zero,
//!   then locks its block range.
//!
//! Both sides use sequentially consistent operations, so at least one of
//! them sees the other: an aligned op either is counted in `inflight`
//! before the RMW's wait (the RMW waits for it) or sees `rmw_active` and
//! queues behind the RMW's range. While any RMW is active, every modifying
//! op goes through the range table, where overlapping ranges wait for each
//! other. Reads take no part: a read concurrent with a write sees each
//! block's old or new contents.
//!
//! Invariants kept (DESIGN.md): 1, because an RMW writes whole blocks
//! through the pool writer like any write, so after a crash each block is
//! its old or its merged value; 3, because the unaligned parts of a trim or
//! write-zeroes are written as zeroes, and an RMW never reverts another
//! op's bytes (each byte reads as the last write that covered it, in the
//! order the ops completed their exclusive section).
//!
//! Cancellation: guards release on drop, so a dropped future never leaves a
//! range locked. An op whose future is dropped after it reached the writer
//! still completes there, unordered with respect to later ops; clients are
//! only dropped that way when the daemon shuts down.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Weak};

use event_listener::Event;
use parking_lot::Mutex;

use super::volume::{Extent, ReadSeg};
use crate::layout::BLOCK_U64;

/// A block range `[start, end)`, in blocks.
type Range = (u64, u64);

/// One volume's exclusion state (see the module docs).
#[derive(Default)]
pub(crate) struct VolumeLocks {
    /// Aligned modifying ops running without a lock.
    inflight: AtomicU64,
    /// RMWs that announced themselves and have not finished.
    rmw_active: AtomicU64,
    /// Signalled when `inflight` drops to zero while an RMW is active.
    drained: Event,
    /// Block ranges locked by RMWs and by aligned ops on the slow path.
    ranges: Mutex<Vec<Range>>,
    /// Signalled when a range is unlocked.
    unlocked: Event,
}

/// The exclusion an aligned modifying op holds while it runs: lock-free
/// (counted in `inflight`) if no RMW was active, else its range locked.
pub(crate) struct Access<'a> {
    _inflight: Option<Inflight<'a>>,
    _range: Option<RangeLock<'a>>,
}

impl Access<'_> {
    /// The op took the slow path.
    #[cfg(test)]
    fn is_locked(&self) -> bool {
        self._range.is_some()
    }
}

/// An aligned op counted in `inflight`.
struct Inflight<'a>(&'a VolumeLocks);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        let l = self.0;
        if l.inflight.fetch_sub(1, SeqCst) == 1 && l.rmw_active.load(SeqCst) > 0 {
            l.drained.notify(usize::MAX);
        }
    }
}

/// A locked block range.
pub(crate) struct RangeLock<'a> {
    locks: &'a VolumeLocks,
    range: Range,
}

impl Drop for RangeLock<'_> {
    fn drop(&mut self) {
        {
            let mut ranges = self.locks.ranges.lock();
            if let Some(i) = ranges.iter().position(|r| *r == self.range) {
                ranges.swap_remove(i);
            }
        }
        self.locks.unlocked.notify(usize::MAX);
    }
}

/// An RMW's exclusion: it is counted as active and holds its range.
pub(crate) struct Exclusive<'a> {
    // Field order is drop order: unlock the range, then stop being active.
    _range: RangeLock<'a>,
    _active: Active<'a>,
}

/// An RMW counted in `rmw_active`.
struct Active<'a>(&'a VolumeLocks);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.rmw_active.fetch_sub(1, SeqCst);
    }
}

impl VolumeLocks {
    /// Exclusion for an aligned modifying op on blocks `[start, end)`:
    /// lock-free unless an RMW is active.
    pub(crate) async fn aligned(&self, start: u64, end: u64) -> Access<'_> {
        self.inflight.fetch_add(1, SeqCst);
        let fast = Inflight(self);
        if self.rmw_active.load(SeqCst) == 0 {
            return Access {
                _inflight: Some(fast),
                _range: None,
            };
        }
        drop(fast);
        Access {
            _inflight: None,
            _range: Some(self.lock_range(start, end).await),
        }
    }

    /// Exclusion for an RMW on blocks `[start, end)`: no other modifying op
    /// touches these blocks until the guard is dropped.
    pub(crate) async fn exclusive(&self, start: u64, end: u64) -> Exclusive<'_> {
        self.rmw_active.fetch_add(1, SeqCst);
        let active = Active(self);
        while self.inflight.load(SeqCst) != 0 {
            let listener = self.drained.listen();
            if self.inflight.load(SeqCst) == 0 {
                break;
            }
            listener.await;
        }
        Exclusive {
            _range: self.lock_range(start, end).await,
            _active: active,
        }
    }

    async fn lock_range(&self, start: u64, end: u64) -> RangeLock<'_> {
        loop {
            let listener = {
                let mut ranges = self.ranges.lock();
                if !ranges.iter().any(|&(s, e)| s < end && start < e) {
                    ranges.push((start, end));
                    return RangeLock {
                        locks: self,
                        range: (start, end),
                    };
                }
                // Registered under the mutex: an unlock after this point
                // notifies us.
                self.unlocked.listen()
            };
            listener.await;
        }
    }
}

/// The per-volume [`VolumeLocks`] of a pool, shared by every handle of a
/// volume and dropped with its last handle.
#[derive(Default)]
pub(crate) struct LockTable {
    vols: Mutex<std::collections::HashMap<u64, Weak<VolumeLocks>>>,
}

impl LockTable {
    /// The locks of volume `vol`, created on first use.
    pub(crate) fn get(&self, vol: u64) -> Arc<VolumeLocks> {
        let mut vols = self.vols.lock();
        if let Some(l) = vols.get(&vol).and_then(Weak::upgrade) {
            return l;
        }
        // Forget volumes whose last handle is gone.
        vols.retain(|_, w| w.strong_count() > 0);
        let l = Arc::new(VolumeLocks::default());
        vols.insert(vol, Arc::downgrade(&l));
        l
    }
}

/// How a byte range `[offset, offset + len)` (len > 0) lies on blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
    /// First block touched.
    pub first: u64,
    /// One past the last block touched.
    pub end: u64,
}

impl Span {
    pub(crate) fn new(offset: u64, len: u64) -> Span {
        Span {
            offset,
            len,
            first: offset / BLOCK_U64,
            end: (offset + len).div_ceil(BLOCK_U64),
        }
    }

    /// Offset and length are both multiples of the block size.
    pub(crate) fn is_aligned(&self) -> bool {
        self.offset.is_multiple_of(BLOCK_U64) && self.len.is_multiple_of(BLOCK_U64)
    }

    /// Blocks touched.
    pub(crate) fn blocks(&self) -> u64 {
        self.end - self.first
    }

    /// Bytes into the first block where the range starts.
    pub(crate) fn head(&self) -> u64 {
        self.offset - self.first * BLOCK_U64
    }

    /// The blocks covered whole, `[start, end)` (may be empty).
    pub(crate) fn whole(&self) -> (u64, u64) {
        let start = self.offset.div_ceil(BLOCK_U64);
        let end = (self.offset + self.len) / BLOCK_U64;
        (start, end.max(start))
    }

    /// The blocks covered in part (at most two), each with the byte range
    /// within it that the span covers.
    pub(crate) fn partial(&self) -> Vec<(u64, std::ops::Range<usize>)> {
        let (ws, we) = self.whole();
        let mut out: Vec<(u64, std::ops::Range<usize>)> = Vec::with_capacity(2);
        for b in [self.first, self.end - 1] {
            if (ws..we).contains(&b) || out.last().is_some_and(|(p, _)| *p == b) {
                continue;
            }
            let base = b * BLOCK_U64;
            let from = self.offset.max(base) - base;
            let to = (self.offset + self.len).min(base + BLOCK_U64) - base;
            out.push((b, from as usize..to as usize));
        }
        out
    }
}

/// The part `[skip, skip + len)` of a read's segments.
pub(crate) fn slice_segs(segs: Vec<ReadSeg>, mut skip: u64, mut len: u64) -> Vec<ReadSeg> {
    let mut out = Vec::new();
    for s in segs {
        if len == 0 {
            break;
        }
        let n = match &s {
            ReadSeg::Data(b) => b.len() as u64,
            ReadSeg::Zero(n) => *n,
        };
        if skip >= n {
            skip -= n;
            continue;
        }
        let take = (n - skip).min(len);
        out.push(match s {
            ReadSeg::Data(b) => ReadSeg::Data(b.slice(skip as usize..(skip + take) as usize)),
            ReadSeg::Zero(_) => ReadSeg::Zero(take),
        });
        skip = 0;
        len -= take;
    }
    out
}

/// Extents of whole blocks starting `head` bytes before the asked offset,
/// cut to start at that offset and to cover at most `len` bytes (at least
/// one extent is kept).
pub(crate) fn slice_extents(ext: Vec<Extent>, head: u64, len: u64) -> Vec<Extent> {
    let mut out = Vec::new();
    let (mut skip, mut left) = (head, len);
    for mut e in ext {
        if left == 0 {
            break;
        }
        if skip >= e.length {
            skip -= e.length;
            continue;
        }
        e.length = (e.length - skip).min(left);
        skip = 0;
        left -= e.length;
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::FutureExt;

    #[test]
    fn aligned_ops_are_lock_free_without_rmw() {
        let l = VolumeLocks::default();
        let a = block_on(l.aligned(0, 4));
        let b = block_on(l.aligned(0, 4));
        assert!(!a.is_locked());
        assert!(!b.is_locked());
        assert_eq!(l.inflight.load(SeqCst), 2);
        drop((a, b));
        assert_eq!(l.inflight.load(SeqCst), 0);
        assert!(l.ranges.lock().is_empty());
    }

    #[test]
    fn rmw_waits_for_fast_ops_to_drain() {
        let l = VolumeLocks::default();
        let fast = block_on(l.aligned(10, 11));
        let mut rmw = Box::pin(l.exclusive(0, 1));
        // Disjoint blocks, but the RMW cannot know that about lock-free ops.
        assert!((&mut rmw).now_or_never().is_none());
        // Ops arriving meanwhile take the slow path and lock their range.
        let slow = block_on(l.aligned(5, 6));
        assert!(slow.is_locked());
        drop(fast);
        let ex = block_on(rmw);
        assert_eq!(l.ranges.lock().len(), 2);
        drop((ex, slow));
        assert_eq!(l.rmw_active.load(SeqCst), 0);
        assert!(l.ranges.lock().is_empty());
        assert!(!block_on(l.aligned(0, 1)).is_locked());
    }

    #[test]
    fn overlapping_ranges_exclude_each_other() {
        let l = VolumeLocks::default();
        let a = block_on(l.exclusive(4, 8));
        // Disjoint: granted at once, even while `a` is held.
        let b = block_on(l.exclusive(8, 9));
        let mut c = Box::pin(l.aligned(7, 8));
        assert!((&mut c).now_or_never().is_none());
        let mut d = Box::pin(l.exclusive(0, 5));
        assert!((&mut d).now_or_never().is_none());
        drop(a);
        assert!(block_on(c).is_locked());
        block_on(d);
        drop(b);
    }

    #[test]
    fn cancelled_waiters_leave_nothing_behind() {
        let l = VolumeLocks::default();
        let fast = block_on(l.aligned(0, 1));
        let mut rmw = Box::pin(l.exclusive(0, 1));
        assert!((&mut rmw).now_or_never().is_none());
        drop(rmw);
        drop(fast);
        assert_eq!(l.rmw_active.load(SeqCst), 0);
        assert!(!block_on(l.aligned(0, 1)).is_locked());
    }

    #[test]
    fn table_shares_per_volume_and_forgets_dropped() {
        let t = LockTable::default();
        let a = t.get(1);
        assert!(Arc::ptr_eq(&a, &t.get(1)));
        assert!(!Arc::ptr_eq(&a, &t.get(2)));
        let weak = Arc::downgrade(&a);
        drop(a);
        let _ = t.get(3);
        assert!(weak.upgrade().is_none());
        assert!(!t.vols.lock().contains_key(&1));
    }

    #[test]
    fn spans_split_into_whole_and_partial_blocks() {
        let s = Span::new(4096, 8192);
        assert!(s.is_aligned());
        assert_eq!((s.first, s.end, s.whole()), (1, 3, (1, 3)));
        assert!(s.partial().is_empty());
        // Inside one block.
        let s = Span::new(4096 + 512, 512);
        assert_eq!((s.first, s.end, s.head()), (1, 2, 512));
        assert_eq!(s.partial(), vec![(1, 512..1024)]);
        assert_eq!(s.whole().0, s.whole().1);
        // Across a boundary: two partial blocks.
        let s = Span::new(4095, 2);
        assert_eq!(s.partial(), vec![(0, 4095..4096), (1, 0..1)]);
        // Partial head, whole middle, partial tail.
        let s = Span::new(100, 3 * 4096);
        assert_eq!(s.whole(), (1, 3));
        assert_eq!(s.partial(), vec![(0, 100..4096), (3, 0..100)]);
        // Aligned start, unaligned length.
        let s = Span::new(8192, 4097);
        assert_eq!(s.whole(), (2, 3));
        assert_eq!(s.partial(), vec![(3, 0..1)]);
    }

    proptest::proptest! {
        #[test]
        fn partial_and_whole_cover_the_span_exactly(offset in 0u64..40_000, len in 1u64..20_000) {
            let s = Span::new(offset, len);
            let mut covered = vec![false; (s.blocks() * BLOCK_U64) as usize];
            let (ws, we) = s.whole();
            for b in ws..we {
                let at = ((b - s.first) * BLOCK_U64) as usize;
                covered[at..at + 4096].iter_mut().for_each(|c| *c = true);
            }
            for (b, r) in s.partial() {
                proptest::prop_assert!(r.start < r.end && r.end <= 4096);
                proptest::prop_assert!(!(ws..we).contains(&b));
                let at = ((b - s.first) * BLOCK_U64) as usize;
                for c in &mut covered[at + r.start..at + r.end] {
                    proptest::prop_assert!(!*c);
                    *c = true;
                }
            }
            let head = s.head() as usize;
            for (i, c) in covered.iter().enumerate() {
                proptest::prop_assert_eq!(*c, i >= head && i < head + len as usize);
            }
        }

        #[test]
        fn slicing_segments_matches_slicing_bytes(
            parts in proptest::collection::vec((0u8..2, 1u64..50), 1..8),
            skip in 0u64..200,
            len in 0u64..200,
        ) {
            let segs: Vec<ReadSeg> = parts
                .iter()
                .enumerate()
                .map(|(i, &(k, n))| match k {
                    0 => ReadSeg::Zero(n),
                    _ => ReadSeg::Data(bytes::Bytes::from(vec![i as u8 + 1; n as usize])),
                })
                .collect();
            let flat = ReadSeg::concat(segs.clone());
            let skip = skip.min(flat.len() as u64);
            let len = len.min(flat.len() as u64 - skip);
            let got = ReadSeg::concat(slice_segs(segs, skip, len));
            proptest::prop_assert_eq!(&got[..], &flat[skip as usize..(skip + len) as usize]);
        }
    }

    #[test]
    fn extents_are_cut_to_the_asked_range() {
        let e = |length, hole| Extent {
            length,
            hole,
            zero: hole,
        };
        let ext = vec![e(4096, false), e(8192, true), e(4096, false)];
        assert_eq!(
            slice_extents(ext.clone(), 100, 5000),
            vec![e(3996, false), e(1004, true)]
        );
        assert_eq!(slice_extents(ext.clone(), 4096, 1), vec![e(1, true)]);
        assert_eq!(slice_extents(ext, 0, 1 << 20).len(), 3);
    }
}
