//! The vdev layer: segment addresses to member devices, redundancy
//! (mirror, parity; see [`super::raid`]), self-healing reads, member
//! health, and per-device error counters.
//!
//! Everything above this layer addresses a segment's bytes as one logical
//! range; here they become one write per member (mirror copies, data and
//! parity columns) and one read from the members holding the wanted bytes.
//!
//! **Healing:** [`Vdevs::read_verified`] checks what it read with the
//! caller's verifier (checksums, authentication); a failed check or an I/O
//! error makes it try the other copies (mirror) or rebuild the bytes from
//! the other columns under every possible choice of bad members, up to the
//! group's tolerance (parity, as ZFS's combinatorial reconstruction). The
//! first version that verifies is returned and written over the bad copy
//! — the same bytes the row already holds, so this is no in-place update
//! of live data.
//!
//! **Failure:** an I/O error on a member of a redundant group marks it
//! FAULTED; the group keeps serving DEGRADED while no more members are
//! unavailable than it tolerates. A single-device group returns the error.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};

use super::raid::{self, Geometry};
use crate::buf::AlignedBuf;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::format::label::PoolLayout;
use crate::layout::{SegId, BLOCK, BLOCK_U64, DATA_START};

/// Error counters of one device, as `zpool status` shows them.
#[derive(Debug, Default)]
pub struct DevStats {
    /// Failed reads.
    pub read_errors: AtomicU64,
    /// Failed writes and flushes.
    pub write_errors: AtomicU64,
    /// Reads whose data failed verification.
    pub checksum_errors: AtomicU64,
    /// Blocks rewritten with good data (self-healing, scrub).
    pub repaired_bytes: AtomicU64,
}

/// Health of one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MemberState {
    /// Serving reads and writes.
    Online = 0,
    /// Failed (I/O errors, removed, missing): neither read nor written.
    Faulted = 1,
    /// A replacement being filled: written, not read until resilvered.
    Resilvering = 2,
}

impl MemberState {
    fn from_u8(v: u8) -> MemberState {
        match v {
            0 => MemberState::Online,
            2 => MemberState::Resilvering,
            _ => MemberState::Faulted,
        }
    }

    /// The name `pool status` shows.
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Online => "ONLINE",
            MemberState::Faulted => "FAULTED",
            MemberState::Resilvering => "RESILVERING",
        }
    }
}

/// The device behind a member (replaced by `pool replace`).
#[derive(Clone)]
pub struct MemberDev {
    /// The device.
    pub dev: Arc<dyn Device>,
    /// Its guid in the layout.
    pub guid: u128,
}

/// One member device.
pub struct Member {
    /// Newest uberblock sequence found on it at import.
    pub newest_seq: AtomicU64,
    cur: RwLock<MemberDev>,
    state: AtomicU8,
    reason: Mutex<Option<String>>,
    /// Its counters.
    pub stats: DevStats,
}

impl Member {
    /// A member in `state`.
    pub fn new(dev: Arc<dyn Device>, guid: u128, state: MemberState) -> Member {
        Member {
            newest_seq: AtomicU64::new(0),
            cur: RwLock::new(MemberDev { dev, guid }),
            state: AtomicU8::new(state as u8),
            reason: Mutex::new(None),
            stats: DevStats::default(),
        }
    }

    /// The device.
    pub fn dev(&self) -> Arc<dyn Device> {
        self.cur.read().dev.clone()
    }

    /// Its guid.
    pub fn guid(&self) -> u128 {
        self.cur.read().guid
    }

    /// Its health.
    pub fn state(&self) -> MemberState {
        MemberState::from_u8(self.state.load(Ordering::SeqCst))
    }

    /// Why it is faulted, if it is.
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().clone()
    }

    fn readable(&self) -> bool {
        self.state() == MemberState::Online
    }

    fn writable(&self) -> bool {
        self.state() != MemberState::Faulted
    }

    /// Swap in a new device (replace), in `state`.
    pub fn swap(&self, d: MemberDev, state: MemberState) {
        *self.cur.write() = d;
        *self.reason.lock() = None;
        self.state.store(state as u8, Ordering::SeqCst);
    }

    /// Set the state.
    pub fn set_state(&self, s: MemberState) {
        self.state.store(s as u8, Ordering::SeqCst);
    }
}

/// A top-level group.
pub struct Group {
    /// Layout of segments on the members.
    pub geo: Geometry,
    /// Members (one for a single-device group).
    pub members: Vec<Member>,
    /// Usable segments; grows (never shrinks) when the members grow.
    segments: AtomicU32,
    /// Round-robin cursor for mirror reads.
    rr: AtomicUsize,
}

impl Group {
    /// A group of `members`, `segments` usable.
    pub fn new(geo: Geometry, members: Vec<Member>, segments: u32) -> Group {
        Group {
            geo,
            members,
            segments: AtomicU32::new(segments),
            rr: AtomicUsize::new(0),
        }
    }

    /// Usable segments.
    pub fn segments(&self) -> u32 {
        self.segments.load(Ordering::Acquire)
    }

    /// Raise the usable segments to `n` (after the members grew and their
    /// labels say so). Never lowers it.
    pub fn grow_to(&self, n: u32) {
        self.segments.fetch_max(n, Ordering::AcqRel);
    }

    /// Members unavailable for reads.
    pub fn unavailable(&self) -> usize {
        self.members.iter().filter(|m| !m.readable()).count()
    }

    /// ONLINE, DEGRADED (serving with less redundancy) or FAULTED (too
    /// many members lost).
    pub fn state_name(&self) -> &'static str {
        match self.unavailable() {
            0 => "ONLINE",
            n if n <= self.geo.tolerance() => "DEGRADED",
            _ => "FAULTED",
        }
    }
}

/// Most groups a pool can have (`SegId::group` is a u8).
pub const MAX_GROUPS: usize = 255;

/// The groups of a pool: append-only, so a group can be added while the
/// pool serves without a lock on the data path. Readers see a prefix of
/// the slots (`len` is published after its slot is set).
pub struct Groups {
    slots: Box<[OnceLock<Group>]>,
    len: AtomicUsize,
}

impl Groups {
    fn new(groups: Vec<Group>) -> Groups {
        let slots: Box<[OnceLock<Group>]> = (0..MAX_GROUPS).map(|_| OnceLock::new()).collect();
        let len = groups.len().min(MAX_GROUPS);
        for (slot, g) in slots.iter().zip(groups) {
            let _ = slot.set(g);
        }
        Groups {
            slots,
            len: AtomicUsize::new(len),
        }
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// True if there is no group (never for an open pool).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Group `i`, if it exists.
    pub fn get(&self, i: usize) -> Option<&Group> {
        if i < self.len() {
            self.slots[i].get()
        } else {
            None
        }
    }

    /// Every group, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Group> {
        self.slots[..self.len()].iter().filter_map(OnceLock::get)
    }

    /// Append a group; its index. Callers serialise appends (the pool's
    /// admin lock).
    fn push(&self, g: Group) -> Result<usize> {
        let i = self.len();
        if i >= MAX_GROUPS {
            return Err(Error::invalid(format!(
                "a pool has at most {MAX_GROUPS} groups"
            )));
        }
        self.slots[i]
            .set(g)
            .map_err(|_| Error::corrupt("group slot already taken"))?;
        self.len.store(i + 1, Ordering::Release);
        Ok(i)
    }
}

impl std::ops::Index<usize> for Groups {
    type Output = Group;
    fn index(&self, i: usize) -> &Group {
        match self.get(i) {
            Some(g) => g,
            None => panic!("group {i} does not exist"),
        }
    }
}

/// All groups of a pool.
pub struct Vdevs {
    /// Groups, indexed by `SegId::group`.
    pub groups: Groups,
    /// Segment size in bytes (logical).
    pub segment_size: u64,
    /// Pool name, for logs.
    pub name: String,
    /// The layout as the labels record it, and its generation (txg).
    pub layout: Mutex<(PoolLayout, u64)>,
}

/// One device I/O.
async fn dev_read(
    dev: &Arc<dyn Device>,
    at: u64,
    len: usize,
    ring: bool,
) -> std::io::Result<AlignedBuf> {
    let buf = AlignedBuf::zeroed(len);
    match (ring.then(edgevol_io::current).flatten(), dev.raw_fd()) {
        (Some(r), Some(fd)) => {
            let (res, b) = r.read_at(fd, buf, at).await;
            let b = b.ok_or_else(|| std::io::Error::other("io_uring lost a read buffer"))?;
            match res {
                Ok(n) if n == len => Ok(b),
                Ok(n) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("short read: {n} of {len} bytes"),
                )),
                Err(e) => Err(e),
            }
        }
        _ => {
            let mut buf = buf;
            dev.read_at(buf.as_mut_slice(), at)?;
            Ok(buf)
        }
    }
}

async fn dev_write(
    dev: &Arc<dyn Device>,
    at: u64,
    buf: AlignedBuf,
    ring: bool,
) -> std::io::Result<AlignedBuf> {
    match (ring.then(edgevol_io::current).flatten(), dev.raw_fd()) {
        (Some(r), Some(fd)) => {
            let want = buf.len();
            match r.write_at(fd, buf, at).await {
                (Ok(n), Some(b)) if n == want => Ok(b),
                (Ok(n), _) => Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short write: {n} of {want} bytes"),
                )),
                (Err(e), _) => Err(e),
            }
        }
        _ => dev.write_at(buf.as_slice(), at).map(|()| buf),
    }
}

fn aligned(data: &[u8]) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed(data.len());
    b.as_mut_slice().copy_from_slice(data);
    b
}

/// Run a future made of blocking I/O only (`ring == false`) to completion
/// on this thread. Such futures never wait, so one poll finishes them; no
/// executor is entered, so this works inside another executor's task.
fn run_sync<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// Does the calling thread have an io_uring to use?
fn has_ring() -> bool {
    edgevol_io::current().is_some()
}

impl Vdevs {
    /// Guids of the members that are not receiving every write (FAULTED,
    /// missing, RESILVERING): recorded in each checkpoint so that import
    /// knows whose data may be stale.
    pub fn stale_members(&self) -> Vec<u128> {
        self.groups
            .iter()
            .flat_map(|g| &g.members)
            .filter(|m| m.state() != MemberState::Online)
            .map(Member::guid)
            .collect()
    }

    /// Build from a layout and devices matched to it (same order); a None
    /// device is missing and its member starts FAULTED.
    pub fn new(
        name: &str,
        layout: &PoolLayout,
        devices: Vec<Vec<Option<Arc<dyn Device>>>>,
    ) -> Result<Vdevs> {
        let mut groups = Vec::new();
        for (g, devs) in layout.groups.iter().zip(devices) {
            let geo = Geometry::new(g.kind, g.devices.len(), layout.segment_size)?;
            let members = g
                .devices
                .iter()
                .zip(devs)
                .map(|(d, dev)| match dev {
                    Some(dev) => Member::new(dev, d.guid, MemberState::Online),
                    None => {
                        let m = Member::new(
                            Arc::new(Missing(d.path.clone())),
                            d.guid,
                            MemberState::Faulted,
                        );
                        *m.reason.lock() = Some("missing at import".into());
                        m
                    }
                })
                .collect();
            let segments = g.devices.iter().map(|d| d.segments).min().unwrap_or(0);
            groups.push(Group::new(geo, members, segments));
        }
        Ok(Vdevs {
            groups: Groups::new(groups),
            segment_size: layout.segment_size,
            name: name.to_string(),
            layout: Mutex::new((layout.clone(), 1)),
        })
    }

    fn group(&self, seg: SegId) -> Result<&Group> {
        self.groups
            .get(seg.group as usize)
            .filter(|g| seg.index < g.segments())
            .ok_or_else(|| Error::corrupt(format!("segment {seg:?} does not exist")))
    }

    /// Device offset of block `row` of segment `seg`'s slot on a member.
    fn slot_offset(&self, g: &Group, seg: SegId, row: u64) -> u64 {
        DATA_START + u64::from(seg.index) * g.geo.slot_bytes() + row * BLOCK_U64
    }

    /// Device offset of byte `off` of segment `seg` on its first member
    /// holding it (tests and debugging).
    pub fn device_offset(&self, seg: SegId, off: u64) -> u64 {
        let Ok(g) = self.group(seg) else {
            return DATA_START + u64::from(seg.index) * self.segment_size + off;
        };
        let b = off / BLOCK_U64;
        let row = b / g.geo.k as u64;
        self.slot_offset(g, seg, row) + off % BLOCK_U64
    }

    /// Where byte `off` of segment `seg` is stored: (member index, device
    /// offset) for every copy, or the one data column of a parity group.
    pub fn locate(&self, seg: SegId, off: u64) -> Vec<(usize, u64)> {
        let Ok(g) = self.group(seg) else {
            return Vec::new();
        };
        let b = off / BLOCK_U64;
        let (row, col) = (b / g.geo.k as u64, (b % g.geo.k as u64) as usize);
        let at = self.slot_offset(g, seg, row) + off % BLOCK_U64;
        if g.geo.is_parity() {
            vec![(g.geo.member_of(seg.index, col), at)]
        } else {
            (0..g.members.len()).map(|m| (m, at)).collect()
        }
    }

    /// End of the row holding byte `end - 1` of segment `seg`: writes are
    /// padded to it (4 KiB blocks unless the group has parity).
    pub fn row_end(&self, seg: SegId, end: u64) -> u64 {
        match self.group(seg) {
            Ok(g) => g.geo.row_end(end),
            Err(_) => end.next_multiple_of(BLOCK_U64),
        }
    }

    /// Blocks per row of group `g` (metadata extents are allocated in rows).
    pub fn row_blocks(&self, g: usize) -> u32 {
        self.groups.get(g).map_or(1, |g| g.geo.k as u32)
    }

    fn check_span(&self, seg: SegId, off: u64, len: usize) -> Result<()> {
        if off + len as u64 > self.segment_size {
            return Err(Error::corrupt(format!(
                "I/O of {len} bytes at {off:#x} overruns segment {seg:?}"
            )));
        }
        Ok(())
    }

    /// True if I/O on this segment completes inline (memory devices).
    pub fn is_memory(&self, seg: SegId) -> bool {
        self.group(seg)
            .ok()
            .and_then(|g| g.members.first())
            .is_none_or(|m| m.dev().is_memory())
    }

    /// Mark member `m` of group `g` FAULTED for `why` (once; logged).
    pub fn fault(&self, g: usize, m: usize, why: &str) {
        let Some(mem) = self.groups.get(g).and_then(|g| g.members.get(m)) else {
            return;
        };
        if mem.state.swap(MemberState::Faulted as u8, Ordering::SeqCst)
            != MemberState::Faulted as u8
        {
            *mem.reason.lock() = Some(why.to_string());
            tracing::error!(pool = %self.name, device = %mem.dev().describe(), reason = why, "device FAULTED");
        }
    }

    /// An I/O error on member `m` of `g`: in a redundant group the member
    /// is faulted and the error absorbed (Ok) while the group still has
    /// enough members; otherwise the error is returned.
    fn member_failed(&self, gi: usize, m: usize, what: &str, e: std::io::Error) -> Result<()> {
        let g = &self.groups[gi];
        let dev = g.members[m].dev().describe();
        let err = Error::io(format!("{what} on {dev} failed"), e);
        if g.geo.tolerance() == 0 {
            return Err(err);
        }
        self.fault(gi, m, &err.to_string());
        if g.unavailable() > g.geo.tolerance() {
            return Err(Error::io(
                format!("{what}: group {gi} has lost more devices than it tolerates"),
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // Reads

    /// Read `len` bytes at `off` of `seg` from the primary copy (mirror:
    /// the next readable member, round robin; parity: the data columns),
    /// avoiding members in `avoid`. Returns the data and the members read.
    async fn read_primary(
        &self,
        seg: SegId,
        off: u64,
        len: usize,
        ring: bool,
        avoid: &[usize],
    ) -> Result<(AlignedBuf, Vec<usize>)> {
        let gi = seg.group as usize;
        let g = self.group(seg)?;
        let n = g.members.len();
        if !g.geo.is_parity() {
            let start = if n > 1 {
                g.rr.fetch_add(1, Ordering::Relaxed)
            } else {
                0
            };
            let mut last = None;
            for i in 0..n {
                let m = (start + i) % n;
                let mem = &g.members[m];
                if avoid.contains(&m) || (n > 1 && !mem.readable()) {
                    continue;
                }
                let at = self.slot_offset(g, seg, 0) + off;
                match dev_read(&mem.dev(), at, len, ring).await {
                    Ok(b) => return Ok((b, vec![m])),
                    Err(e) => {
                        mem.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                        let what = format!("read of segment {seg:?} at {off:#x}");
                        if let Err(err) = self.member_failed(gi, m, &what, e) {
                            last = Some(err);
                        }
                    }
                }
            }
            return Err(last.unwrap_or_else(|| {
                Error::io(
                    format!("no readable copy of segment {seg:?}"),
                    std::io::Error::from_raw_os_error(libc::EIO),
                )
            }));
        }
        // Parity: each data column holding part of the span, read at once.
        let (b0, b1) = span_blocks(off, len);
        let mut plan = Vec::new();
        for c in 0..g.geo.k {
            if let Some((r, rows)) = g.geo.column_rows(c, b0, b1) {
                let m = g.geo.member_of(seg.index, c);
                if avoid.contains(&m) || !g.members[m].readable() {
                    let out = self.reconstruct_span(seg, off, len, ring, &[m]).await?;
                    return Ok((out, Vec::new()));
                }
                plan.push((c, m, r, rows));
            }
        }
        let reads = plan.iter().map(|&(_, m, r, rows)| {
            let dev = g.members[m].dev();
            let at = self.slot_offset(g, seg, r);
            async move { dev_read(&dev, at, rows as usize * BLOCK, ring).await }
        });
        let got = futures::future::join_all(reads).await;
        let mut failed = Vec::new();
        let mut cols = Vec::new();
        for (&(c, m, r, _), res) in plan.iter().zip(got) {
            match res {
                Ok(b) => cols.push((c, r, b)),
                Err(e) => {
                    g.members[m]
                        .stats
                        .read_errors
                        .fetch_add(1, Ordering::Relaxed);
                    let what = format!("read of segment {seg:?} at {off:#x}");
                    self.member_failed(gi, m, &what, e)?;
                    failed.push(m);
                }
            }
        }
        if !failed.is_empty() {
            let out = self.reconstruct_span(seg, off, len, ring, &failed).await?;
            return Ok((out, Vec::new()));
        }
        let mut out = AlignedBuf::zeroed(len);
        let k = g.geo.k as u64;
        let o = out.as_mut_slice();
        for (c, r0, b) in cols {
            for (i, blk) in b.as_slice().chunks(BLOCK).enumerate() {
                let lb = (r0 + i as u64) * k + c as u64; // logical block
                place(o, off, lb, blk);
            }
        }
        Ok((out, plan.iter().map(|p| p.1).collect()))
    }

    /// Rebuild `len` bytes at `off` of parity segment `seg` from the other
    /// columns, treating members `erased` as unavailable.
    async fn reconstruct_span(
        &self,
        seg: SegId,
        off: u64,
        len: usize,
        ring: bool,
        erased: &[usize],
    ) -> Result<AlignedBuf> {
        let (r0, rows, cols) = self.rebuild_rows(seg, off, len, ring, erased).await?;
        let g = self.group(seg)?;
        let mut out = AlignedBuf::zeroed(len);
        let o = out.as_mut_slice();
        for (c, col) in cols.iter().enumerate().take(g.geo.k) {
            let Some(col) = col else { continue };
            for i in 0..rows {
                let lb = (r0 + i) * g.geo.k as u64 + c as u64;
                let blk = &col[i as usize * BLOCK..(i as usize + 1) * BLOCK];
                place(o, off, lb, blk);
            }
        }
        Ok(out)
    }

    /// All columns (data and parity, by column index) of the rows holding
    /// `[off, off + len)`, rebuilt where `erased` members or read errors
    /// leave gaps. Returns (first row, rows, columns).
    async fn rebuild_rows(
        &self,
        seg: SegId,
        off: u64,
        len: usize,
        ring: bool,
        erased: &[usize],
    ) -> Result<(u64, u64, Vec<Option<Vec<u8>>>)> {
        let gi = seg.group as usize;
        let g = self.group(seg)?;
        let (b0, b1) = span_blocks(off, len);
        let k = g.geo.k as u64;
        let (r0, r1) = (b0 / k, (b1 - 1) / k + 1);
        let rows = r1 - r0;
        let at = self.slot_offset(g, seg, r0);
        let reads = (0..g.members.len()).map(|m| {
            let skip = erased.contains(&m) || !g.members[m].readable();
            let dev = g.members[m].dev();
            async move {
                if skip {
                    return None;
                }
                Some(dev_read(&dev, at, rows as usize * BLOCK, ring).await)
            }
        });
        let got = futures::future::join_all(reads).await;
        let mut cols: Vec<Option<Vec<u8>>> = vec![None; g.members.len()];
        for (m, r) in got.into_iter().enumerate() {
            match r {
                None => {}
                Some(Ok(b)) => cols[g.geo.column_of(seg.index, m)] = Some(b.as_slice().to_vec()),
                Some(Err(e)) => {
                    g.members[m]
                        .stats
                        .read_errors
                        .fetch_add(1, Ordering::Relaxed);
                    self.member_failed(gi, m, &format!("read of segment {seg:?}"), e)?;
                }
            }
        }
        // Blocks past a short last row are zeroes on every member.
        raid::reconstruct(&g.geo, &mut cols)?;
        Ok((r0, rows, cols))
    }

    /// Read `len` bytes at `off` of `seg`, checked by `verify`; a copy that
    /// fails the check or cannot be read is replaced by another copy or a
    /// rebuild that passes it, which is then written over the bad copy.
    /// `ring`: use the calling thread's io_uring (false: blocking I/O).
    pub async fn read_verified(
        &self,
        seg: SegId,
        off: u64,
        len: usize,
        ring: bool,
        verify: &(dyn Fn(&[u8]) -> bool + Sync),
    ) -> Result<AlignedBuf> {
        self.check_span(seg, off, len)?;
        let ring = ring && has_ring();
        let g = self.group(seg)?;
        let first = self.read_primary(seg, off, len, ring, &[]).await;
        let bad = match first {
            Ok((b, _)) if verify(b.as_slice()) => return Ok(b),
            Ok((_, used)) => used,
            Err(e) if !g.geo.is_parity() || g.geo.tolerance() == 0 => return Err(e),
            Err(_) => Vec::new(),
        };
        // Another copy, or a rebuild, that verifies.
        if !g.geo.is_parity() {
            for m in 0..g.members.len() {
                if bad.contains(&m) || !g.members[m].readable() {
                    continue;
                }
                let Ok((b, _)) = self
                    .read_primary(seg, off, len, ring, &[bad.clone(), others(g, m)].concat())
                    .await
                else {
                    continue;
                };
                if verify(b.as_slice()) {
                    for &x in &bad {
                        self.heal(
                            seg,
                            x,
                            self.slot_offset(g, seg, 0) + off,
                            b.as_slice(),
                            ring,
                        )
                        .await;
                    }
                    return Ok(b);
                }
            }
        } else {
            let (b0, b1) = span_blocks(off, len);
            let holders: Vec<usize> = (0..g.members.len()).collect();
            for set in erasure_sets(&holders, g.geo.p) {
                let Ok((r0, rows, cols)) = self.rebuild_rows(seg, off, len, ring, &set).await
                else {
                    continue;
                };
                let mut out = AlignedBuf::zeroed(len);
                for (c, col) in cols.iter().enumerate().take(g.geo.k) {
                    let Some(col) = col else { continue };
                    for i in 0..rows {
                        let lb = (r0 + i) * g.geo.k as u64 + c as u64;
                        if lb < b0 || lb >= b1 {
                            continue;
                        }
                        let blk = &col[i as usize * BLOCK..(i as usize + 1) * BLOCK];
                        place(out.as_mut_slice(), off, lb, blk);
                    }
                }
                if verify(out.as_slice()) {
                    for &m in &set {
                        if let Some(col) = &cols[g.geo.column_of(seg.index, m)] {
                            let at = self.slot_offset(g, seg, r0);
                            self.heal(seg, m, at, col, ring).await;
                        }
                    }
                    return Ok(out);
                }
            }
        }
        if let Some(&m) = bad.first() {
            g.members[m]
                .stats
                .checksum_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        Err(Error::corrupt(format!(
            "checksum mismatch: no copy of {len} bytes at {off:#x} in segment {seg:?} passes verification"
        )))
    }

    /// Write `data` (known good) over member `m`'s copy at device offset `at`.
    async fn heal(&self, seg: SegId, m: usize, at: u64, data: &[u8], ring: bool) {
        let g = &self.groups[seg.group as usize];
        let mem = &g.members[m];
        mem.stats.checksum_errors.fetch_add(1, Ordering::Relaxed);
        if !mem.writable() {
            return;
        }
        match dev_write(&mem.dev(), at, aligned(data), ring).await {
            Ok(_) => {
                mem.stats
                    .repaired_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                tracing::warn!(pool = %self.name, device = %mem.dev().describe(), segment = ?seg, offset = at, bytes = data.len(), "repaired a bad copy");
            }
            Err(e) => {
                mem.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                let _ = self.member_failed(seg.group as usize, m, "repair write", e);
            }
        }
    }

    /// Read `buf.len()` bytes at `off` within segment `seg` (blocking; any
    /// readable copy, rebuilt if need be; no verification).
    pub fn read(&self, seg: SegId, off: u64, buf: &mut [u8]) -> Result<()> {
        self.read_checked(seg, off, buf, &|_| true)
    }

    /// [`Vdevs::read`] with a verifier (see [`Vdevs::read_verified`]).
    pub fn read_checked(
        &self,
        seg: SegId,
        off: u64,
        buf: &mut [u8],
        verify: &(dyn Fn(&[u8]) -> bool + Sync),
    ) -> Result<()> {
        let b = run_sync(self.read_verified(seg, off, buf.len(), false, verify))?;
        buf.copy_from_slice(b.as_slice());
        Ok(())
    }

    /// Read `out.len()` bytes (any alignment) at `off` of `seg` from one
    /// *variant* of the stored copies: mirror member `v` alone, or a parity
    /// rebuild that leaves member `v` out (for data verified by a checksum
    /// over several reads, such as metadata blobs). Blocking.
    pub fn read_variant(&self, seg: SegId, off: u64, out: &mut [u8], v: usize) -> Result<()> {
        let g = self.group(seg)?;
        let len = out.len().div_ceil(BLOCK) * BLOCK;
        self.check_span(seg, off, len)?;
        let b = if g.geo.is_parity() {
            run_sync(self.reconstruct_span(seg, off, len, false, &[v]))?
        } else {
            let avoid: Vec<usize> = (0..g.members.len()).filter(|&m| m != v).collect();
            run_sync(self.read_primary(seg, off, len, false, &avoid))?.0
        };
        out.copy_from_slice(&b.as_slice()[..out.len()]);
        Ok(())
    }

    /// Read `buf.len()` bytes at `off` within segment `seg` into `buf`:
    /// through the calling thread's io_uring if it has one (the data path),
    /// else with a blocking read. Unverified.
    pub async fn read_owned(&self, seg: SegId, off: u64, buf: AlignedBuf) -> Result<AlignedBuf> {
        self.read_verified(seg, off, buf.len(), true, &|_| true)
            .await
    }

    // ------------------------------------------------------------------
    // Writes

    /// Write `buf` at `off` within segment `seg` on every member (mirror
    /// copies; data and parity columns — `off` must then start a row, and
    /// a short last row is padded with zeroes). Returns the buffer.
    pub async fn write_span(
        &self,
        seg: SegId,
        off: u64,
        buf: AlignedBuf,
        ring: bool,
    ) -> Result<AlignedBuf> {
        self.check_span(seg, off, buf.len())?;
        let ring = ring && has_ring();
        let gi = seg.group as usize;
        let g = self.group(seg)?;
        let what = format!("write of segment {seg:?} at {off:#x}");
        if !g.geo.is_parity() {
            let at = self.slot_offset(g, seg, 0) + off;
            if g.members.len() == 1 {
                let dev = g.members[0].dev();
                return dev_write(&dev, at, buf, ring).await.map_err(|e| {
                    g.members[0]
                        .stats
                        .write_errors
                        .fetch_add(1, Ordering::Relaxed);
                    Error::io(format!("{what} on {} failed", dev.describe()), e)
                });
            }
            let data = buf.as_slice();
            self.write_members(gi, at, ring, &what, |_| data).await?;
            return Ok(buf);
        }
        let row = g.geo.row_bytes();
        if !off.is_multiple_of(row) {
            return Err(Error::corrupt(format!(
                "{what}: parity writes must start a row ({row} bytes)"
            )));
        }
        let end = g.geo.row_end(off + buf.len() as u64);
        let r0 = off / row;
        let rows = (end - off).div_ceil(row);
        let cols = raid::split_rows(&g.geo, r0, rows, buf.as_slice());
        let refs: Vec<&[u8]> = cols.iter().map(Vec::as_slice).collect();
        let parity = raid::encode(&g.geo, &refs)?;
        let at = self.slot_offset(g, seg, r0);
        let column = |m: usize| {
            let c = g.geo.column_of(seg.index, m);
            if c < g.geo.k {
                cols[c].as_slice()
            } else {
                parity[c - g.geo.k].as_slice()
            }
        };
        self.write_members(gi, at, ring, &what, column).await?;
        Ok(buf)
    }

    /// Write `data(m)` at device offset `at` of every writable member `m`
    /// of group `gi` at once; failures are absorbed as `absorb` says.
    async fn write_members<'a>(
        &self,
        gi: usize,
        at: u64,
        ring: bool,
        what: &str,
        data: impl Fn(usize) -> &'a [u8],
    ) -> Result<()> {
        let g = &self.groups[gi];
        let writes = g.members.iter().enumerate().map(|(m, mem)| {
            let b = mem.writable().then(|| aligned(data(m)));
            let dev = mem.dev();
            async move {
                match b {
                    Some(b) => Some(dev_write(&dev, at, b, ring).await.map(drop)),
                    None => None,
                }
            }
        });
        let got = futures::future::join_all(writes).await;
        self.absorb(gi, what, got)
    }

    /// Count and absorb member write failures (see `member_failed`).
    fn absorb(&self, gi: usize, what: &str, got: Vec<Option<std::io::Result<()>>>) -> Result<()> {
        let g = &self.groups[gi];
        let mut wrote = 0;
        for (m, r) in got.into_iter().enumerate() {
            match r {
                Some(Ok(())) => wrote += 1,
                Some(Err(e)) => {
                    g.members[m]
                        .stats
                        .write_errors
                        .fetch_add(1, Ordering::Relaxed);
                    self.member_failed(gi, m, what, e)?;
                }
                None => {}
            }
        }
        if g.unavailable() > g.geo.tolerance() || wrote == 0 {
            return Err(Error::io(
                format!("{what}: group {gi} has lost more devices than it tolerates"),
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        Ok(())
    }

    /// Write `buf` at `off` within segment `seg` (blocking).
    pub fn write(&self, seg: SegId, off: u64, buf: &[u8]) -> Result<()> {
        run_sync(self.write_span(seg, off, aligned(buf), false)).map(drop)
    }

    /// Write `buf` at `off` within segment `seg` (io_uring if the calling
    /// thread has one, else blocking). Returns the buffer.
    pub async fn write_owned(&self, seg: SegId, off: u64, buf: AlignedBuf) -> Result<AlignedBuf> {
        self.write_span(seg, off, buf, true).await
    }

    /// Scrub `len` bytes at `off` of `seg`: verify *every* copy (mirror)
    /// or the data columns and their parity (parity), rewrite bad copies
    /// from a good one. Returns the bytes repaired; Err if no copy
    /// verifies. Parity rows whose parity disagrees with verified data are
    /// returned in `suspect` as (first row, rows) for a later repair (the
    /// disagreement may come from another record's bad block in the row,
    /// which must be healed first). Blocking.
    pub fn scrub_span(
        &self,
        seg: SegId,
        off: u64,
        len: usize,
        verify: &(dyn Fn(&[u8]) -> bool + Sync),
        suspect: &mut Vec<(SegId, u64, u64)>,
    ) -> Result<u64> {
        self.check_span(seg, off, len)?;
        let g = self.group(seg)?;
        let before: u64 = g
            .members
            .iter()
            .map(|m| m.stats.repaired_bytes.load(Ordering::Relaxed))
            .sum();
        if g.geo.is_parity() {
            // Data first (heals through the rebuild path if need be).
            run_sync(self.read_verified(seg, off, len, false, verify))?;
            let (r0, rows, cols) = run_sync(self.rebuild_rows(seg, off, len, false, &[]))?;
            let data: Vec<&[u8]> = cols[..g.geo.k]
                .iter()
                .map(|c| c.as_deref().unwrap_or(&[]))
                .collect();
            let parity = raid::encode(&g.geo, &data)?;
            if parity
                .iter()
                .zip(&cols[g.geo.k..])
                .any(|(p, c)| c.as_deref() != Some(p.as_slice()))
            {
                suspect.push((seg, r0, rows));
            }
        } else if g.members.len() > 1 {
            let at = self.slot_offset(g, seg, 0) + off;
            let mut good: Option<AlignedBuf> = None;
            let mut bad = Vec::new();
            for (m, mem) in g.members.iter().enumerate() {
                if !mem.readable() {
                    continue;
                }
                match run_sync(dev_read(&mem.dev(), at, len, false)) {
                    Ok(b) if verify(b.as_slice()) => {
                        good.get_or_insert(b);
                    }
                    Ok(_) => bad.push(m),
                    Err(e) => {
                        mem.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                        self.member_failed(seg.group as usize, m, "scrub read", e)?;
                    }
                }
            }
            let Some(good) = good else {
                if let Some(&m) = bad.first() {
                    g.members[m]
                        .stats
                        .checksum_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
                return Err(Error::corrupt(format!(
                    "checksum mismatch: no copy of {len} bytes at {off:#x} in segment {seg:?} passes verification"
                )));
            };
            for m in bad {
                run_sync(self.heal(seg, m, at, good.as_slice(), false));
            }
        } else {
            run_sync(self.read_verified(seg, off, len, false, verify))?;
        }
        let after: u64 = g
            .members
            .iter()
            .map(|m| m.stats.repaired_bytes.load(Ordering::Relaxed))
            .sum();
        Ok(after - before)
    }

    /// Rewrite the parity of rows `[r0, r0 + rows)` of `seg` from their
    /// data columns (scrub, after every record in them was verified and
    /// healed). Returns the bytes rewritten. Blocking.
    pub fn repair_parity(&self, seg: SegId, r0: u64, rows: u64) -> Result<u64> {
        let g = self.group(seg)?;
        let row = g.geo.row_bytes();
        let (off, len) = (
            r0 * row,
            (rows * row).min(self.segment_size - r0 * row) as usize,
        );
        let (r0, _, cols) = run_sync(self.rebuild_rows(seg, off, len, false, &[]))?;
        let data: Vec<&[u8]> = cols[..g.geo.k]
            .iter()
            .map(|c| c.as_deref().unwrap_or(&[]))
            .collect();
        let parity = raid::encode(&g.geo, &data)?;
        let mut fixed = 0;
        for (i, p) in parity.iter().enumerate() {
            if cols[g.geo.k + i].as_deref() == Some(p.as_slice()) {
                continue;
            }
            let m = g.geo.member_of(seg.index, g.geo.k + i);
            run_sync(self.heal(seg, m, self.slot_offset(g, seg, r0), p, false));
            fixed += p.len() as u64;
        }
        Ok(fixed)
    }

    /// Copy segment `seg`'s first `bytes` to member `m` (resilver): the
    /// member's slot is rebuilt from the others. Blocking.
    pub fn resilver_segment(&self, seg: SegId, m: usize, bytes: u64) -> Result<()> {
        let g = self.group(seg)?;
        let bytes = g.geo.row_end(bytes.max(1)).min(self.segment_size);
        let step = (g.geo.row_bytes() * 64).min(self.segment_size);
        let mut off = 0;
        while off < bytes {
            let len = step.min(self.segment_size - off) as usize;
            let (at, data) = if g.geo.is_parity() {
                let (r0, _, cols) = run_sync(self.rebuild_rows(seg, off, len, false, &[m]))?;
                let col = cols[g.geo.column_of(seg.index, m)]
                    .clone()
                    .ok_or_else(|| Error::corrupt("rebuild left a column empty"))?;
                (self.slot_offset(g, seg, r0), col)
            } else {
                let (b, _) = run_sync(self.read_primary(seg, off, len, false, &[m]))?;
                (self.slot_offset(g, seg, 0) + off, b.as_slice().to_vec())
            };
            g.members[m]
                .dev()
                .write_at(aligned(&data).as_slice(), at)
                .map_err(|e| {
                    Error::io(
                        format!("resilver write to {}", g.members[m].dev().describe()),
                        e,
                    )
                })?;
            off += len as u64;
        }
        Ok(())
    }

    /// Write the same block at a raw device offset on every writable
    /// device (labels, uberblocks), through the calling thread's io_uring
    /// if it has one. Fails only if a group loses more than it tolerates.
    pub async fn write_everywhere_async(&self, offset: u64, data: &[u8]) -> Result<()> {
        let len = data.len().div_ceil(BLOCK) * BLOCK;
        let mut b = AlignedBuf::zeroed(len);
        b.as_mut_slice()[..data.len()].copy_from_slice(data);
        let ring = has_ring();
        for (gi, g) in self.groups.iter().enumerate() {
            let writes = g.members.iter().map(|m| {
                let dev = m.dev();
                let buf = m.writable().then(|| aligned(b.as_slice()));
                async move {
                    match buf {
                        Some(buf) => Some(dev_write(&dev, offset, buf, ring).await.map(drop)),
                        None => None,
                    }
                }
            });
            let got = futures::future::join_all(writes).await;
            self.absorb(gi, &format!("write at {offset:#x}"), got)?;
        }
        Ok(())
    }

    /// Write the same block at a raw device offset on every device (labels,
    /// uberblocks). Blocking.
    pub fn write_everywhere(&self, offset: u64, data: &[u8]) -> Result<()> {
        let len = data.len().div_ceil(BLOCK) * BLOCK;
        let mut b = AlignedBuf::zeroed(len);
        b.as_mut_slice()[..data.len()].copy_from_slice(data);
        for (gi, g) in self.groups.iter().enumerate() {
            let got = g
                .members
                .iter()
                .map(|m| m.writable().then(|| m.dev().write_at(b.as_slice(), offset)))
                .collect();
            self.absorb(gi, &format!("write at {offset:#x}"), got)?;
        }
        Ok(())
    }

    /// Flush every writable device (concurrently through io_uring when the
    /// calling thread has one).
    pub async fn flush_all_async(&self) -> Result<()> {
        let ring = edgevol_io::current();
        for (gi, g) in self.groups.iter().enumerate() {
            let ops = g.members.iter().map(|m| {
                let dev = m.dev();
                let go = m.writable();
                let ring = ring.clone();
                async move {
                    if !go {
                        return None;
                    }
                    Some(match (ring, dev.raw_fd()) {
                        (Some(r), Some(fd)) => r.fdatasync(fd).await.0.map(drop),
                        _ => dev.flush(),
                    })
                }
            });
            let got = futures::future::join_all(ops).await;
            self.absorb(gi, "flush", got)?;
        }
        Ok(())
    }

    /// Flush every device (blocking).
    pub fn flush_all(&self) -> Result<()> {
        for (gi, g) in self.groups.iter().enumerate() {
            let got = g
                .members
                .iter()
                .map(|m| m.writable().then(|| m.dev().flush()))
                .collect();
            self.absorb(gi, "flush", got)?;
        }
        Ok(())
    }

    /// Count a checksum failure on the device holding `seg` (when the
    /// caller verified data itself and has no better copy).
    pub fn note_checksum_error(&self, seg: SegId) {
        if let Some(m) = self.group(seg).ok().and_then(|g| g.members.first()) {
            m.stats.checksum_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Probe every member's device ([`Device::probe`]) and fault those
    /// that went away or fail; called by the [health probe](super::health).
    /// A member of a group without redundancy is not faulted (its group
    /// would be lost): the reason is shown and logged once, and the device
    /// serves until its I/O fails.
    pub fn check_health(&self) {
        for (gi, g) in self.groups.iter().enumerate() {
            for (mi, m) in g.members.iter().enumerate() {
                if m.state() == MemberState::Faulted {
                    continue;
                }
                let Err(e) = m.dev().probe() else {
                    continue;
                };
                let why = format!("health probe: {e}");
                if g.geo.tolerance() == 0 {
                    let mut reason = m.reason.lock();
                    if reason.is_none() {
                        tracing::error!(pool = %self.name, device = %m.dev().describe(), reason = %why, "device failed its health probe; the pool has no redundancy for it");
                        *reason = Some(why);
                    }
                    continue;
                }
                self.fault(gi, mi, &why);
            }
        }
    }

    /// True if a member's device is `name` (as `Device::describe` says).
    pub fn has_device(&self, name: &str) -> bool {
        self.devices().any(|(_, m)| m.dev().describe() == name)
    }

    /// Every device, with its group index.
    pub fn devices(&self) -> impl Iterator<Item = (usize, &Member)> {
        self.groups
            .iter()
            .enumerate()
            .flat_map(|(i, g)| g.members.iter().map(move |m| (i, m)))
    }

    /// Add a group (its labels already name it; no segment of it is
    /// allocated until the segment table learns of it). Its index.
    pub fn push_group(&self, g: Group) -> Result<usize> {
        self.groups.push(g)
    }

    /// Total segments.
    pub fn total_segments(&self) -> u64 {
        self.groups.iter().map(|g| u64::from(g.segments())).sum()
    }

    /// ONLINE, DEGRADED or FAULTED for the whole pool.
    pub fn state_name(&self) -> &'static str {
        let states: Vec<&str> = self.groups.iter().map(Group::state_name).collect();
        if states.contains(&"FAULTED") {
            "FAULTED"
        } else if states.contains(&"DEGRADED") {
            "DEGRADED"
        } else {
            "ONLINE"
        }
    }
}

/// Blocks `[b0, b1)` of a segment that bytes `[off, off + len)` touch.
fn span_blocks(off: u64, len: usize) -> (u64, u64) {
    (off / BLOCK_U64, (off + len as u64).div_ceil(BLOCK_U64))
}

/// Copy the part of logical block `lb` (data `blk`) that falls in the
/// span `[off, off + out.len())` into `out`.
fn place(out: &mut [u8], off: u64, lb: u64, blk: &[u8]) {
    let start = lb * BLOCK_U64;
    let s = start.max(off);
    let e = (start + BLOCK_U64).min(off + out.len() as u64);
    if s < e {
        out[(s - off) as usize..(e - off) as usize]
            .copy_from_slice(&blk[(s - start) as usize..(e - start) as usize]);
    }
}

/// All members except `m`.
fn others(g: &Group, m: usize) -> Vec<usize> {
    (0..g.members.len()).filter(|&x| x != m).collect()
}

/// Every set of 1..=p members of `of` (singles first).
fn erasure_sets(of: &[usize], p: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = of.iter().map(|&m| vec![m]).collect();
    if p >= 2 {
        for (i, &a) in of.iter().enumerate() {
            for &b in &of[i + 1..] {
                out.push(vec![a, b]);
            }
        }
    }
    out
}

/// A device that was not found at import: every I/O fails.
struct Missing(String);

impl Device for Missing {
    fn len(&self) -> u64 {
        0
    }
    fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(libc::ENXIO))
    }
    fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(libc::ENXIO))
    }
    fn flush(&self) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(libc::ENXIO))
    }
    fn describe(&self) -> String {
        self.0.clone()
    }
}
