//! Member devices of a group: their health (ONLINE, FAULTED,
//! RESILVERING), why they failed, their error counters, and the pool-wide
//! operations on them (fault, absorb a member's I/O error, health probe).
//! Keeps invariant 7: a failed or missing device gets a clear reason and
//! the group keeps serving while it tolerates the loss.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::Vdevs;
use crate::buf::AlignedBuf;
use crate::device::{done, Device, IoFuture, IoMode};
use crate::error::{Error, Result};
use crate::layout::SegId;

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
    pub(super) state: AtomicU8,
    pub(super) reason: Mutex<Option<String>>,
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

    pub(super) fn readable(&self) -> bool {
        self.state() == MemberState::Online
    }

    pub(super) fn writable(&self) -> bool {
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
    pub(super) fn member_failed(
        &self,
        gi: usize,
        m: usize,
        what: &str,
        e: std::io::Error,
    ) -> Result<()> {
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

    /// Count a checksum failure on the device holding `seg` (when the
    /// caller verified data itself and has no better copy).
    pub fn note_checksum_error(&self, seg: SegId) {
        if let Some(m) = self.group(seg).ok().and_then(|g| g.members.first()) {
            m.stats.checksum_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Probe every member's device ([`Device::probe`]) and fault those
    /// that went away or fail; called by the [health probe](crate::pool::health).
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
}

/// A device that was not found at import: every I/O fails.
pub(super) struct Missing(pub(super) String);

impl Device for Missing {
    fn len(&self) -> u64 {
        0
    }
    fn read(&self, _: AlignedBuf, _: u64, _: IoMode) -> IoFuture<'_, AlignedBuf> {
        done(Err(std::io::Error::from_raw_os_error(libc::ENXIO)))
    }
    fn write(&self, _: AlignedBuf, _: u64, _: IoMode) -> IoFuture<'_, AlignedBuf> {
        done(Err(std::io::Error::from_raw_os_error(libc::ENXIO)))
    }
    fn sync(&self, _: IoMode) -> IoFuture<'_, ()> {
        done(Err(std::io::Error::from_raw_os_error(libc::ENXIO)))
    }
    fn describe(&self) -> String {
        self.0.clone()
    }
}
