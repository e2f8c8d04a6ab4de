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
//!
//! Split by job: `member` (member health and counters), `addr` (segments
//! onto member slots), `read` (healing reads), `write` (writes to every
//! member, flushes) and `repair` (heal, scrub, resilver). This module
//! holds the groups and the device I/O helpers. Keeps invariant 2 (every
//! read verified, healed or EIO) through `read` and `repair`, and
//! invariant 1 (flushed writes reach every writable member) through
//! `write`.

mod addr;
mod member;
mod read;
mod repair;
mod write;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::raid::Geometry;
use crate::buf::AlignedBuf;
use crate::device::{Device, IoMode};
use crate::error::{Error, Result};
use crate::format::label::PoolLayout;

use member::Missing;
pub use member::{DevStats, Member, MemberDev, MemberState};

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
    /// Why the pool stopped taking writes (see [`Vdevs::poison`]).
    poisoned: Mutex<Option<String>>,
    /// Set with `poisoned`: the check every write makes, without a lock.
    is_poisoned: std::sync::atomic::AtomicBool,
}

/// Read `len` bytes at device offset `at`.
async fn dev_read(
    dev: &Arc<dyn Device>,
    at: u64,
    len: usize,
    io: IoMode,
) -> std::io::Result<AlignedBuf> {
    dev.read(AlignedBuf::zeroed(len), at, io).await
}

/// Write `buf` at device offset `at`; gives the buffer back.
async fn dev_write(
    dev: &Arc<dyn Device>,
    at: u64,
    buf: AlignedBuf,
    io: IoMode,
) -> std::io::Result<AlignedBuf> {
    dev.write(buf, at, io).await
}

fn aligned(data: &[u8]) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed(data.len());
    b.as_mut_slice().copy_from_slice(data);
    b
}

/// Run a future made of blocking I/O only ([`IoMode::Blocking`]) to completion
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

impl Vdevs {
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
            poisoned: Mutex::new(None),
            is_poisoned: false.into(),
        })
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
