//! Pools: devices, the writer, maintenance, and the management API.
//!
//! ```text
//!   Pool (handle) ──control ops──▶ writer thread ◀──relocations/flushes── maintenance thread
//!   Volume (handle) ──data ops──▶      │                                   (flush, compaction,
//!         │                            ▼                                    cleaner, GC)
//!         └──reads──▶ map + devices (io threads)
//! ```
//!
//! This module holds the [`Pool`] handle; [`Shared`] (the state every
//! thread of a pool shares) lives in [`shared`], the settings in
//! [`config`]. The handle's methods are grouped by job: [`lifecycle`]
//! (create, import, close, destroy, the threads), [`volumes`] (volumes,
//! snapshots, clones, properties: the catalog-changing API), [`keys`]
//! (encryption keys), [`devices`] (replace, add, expand, scrub, status)
//! and [`hooks`] (maintenance, counters and debugging for tests and
//! tools). Creating and importing pools is [`open`]'s.

mod admission;
mod capacity;
mod check;
pub(crate) mod ckpt;
mod config;
mod devices;
mod gate;
mod gone;
mod grow;
mod health;
mod hooks;
pub(crate) mod info;
mod keys;
mod lifecycle;
mod maint;
mod open;
mod overlay;
mod props;
pub mod raid;
mod resilver;
mod scrub;
mod settler;
mod shared;
pub mod space;
mod subblock;
pub mod vdev;
mod volume;
mod volumes;
mod walk;
pub(crate) mod writer;

use std::sync::Arc;

use parking_lot::Mutex;

pub(crate) use capacity::{data_reserve, memtable_budget, meta_floor, usable_bytes};
pub use capacity::{Reserve, CLEANER_SEGMENTS, OVERPROVISION_PERCENT};
pub use check::CheckReport;
pub use config::{CreateOptions, LocalTaskFactory, PoolConfig, Spawner};
pub use devices::parse_layout;
pub use grow::Expanded;
pub use info::{
    check_pool_property, DeviceStatus, GroupStatus, PoolStatus, ScanStatus, SnapshotInfo,
    SpaceReport, VolumeInfo,
};
pub(crate) use shared::Shared;
pub use shared::Stats;
pub use volume::{ReadSeg, Volume};
pub use volumes::split_snapshot;

/// An open pool.
pub struct Pool {
    sh: Arc<Shared>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Serialises layout changes (replace, add, expand).
    admin: Mutex<()>,
    /// Disconnected when the writer (a thread or a data-plane task) ends.
    writer_done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
