//! edgevol storage engine.
//!
//! A pool is a set of devices cut into segments. Volume writes are appended
//! to segments in batches whose headers form the journal; a versioned block
//! map (an LSM tree keyed by `(lineage, lba, birth)`) says where every block
//! of every volume, snapshot and clone lives. See `docs/architecture.md`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub use edgevol_io::buf;
pub mod catalog;
pub mod chunk;
pub mod compress;
pub mod crypt;
pub mod device;
pub mod error;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod layout;
pub mod map;

pub use error::{Error, ErrorKind, Result};
pub mod pool;

pub use pool::{
    check_pool_property, parse_layout, CheckReport, CreateOptions, DeviceStatus, LocalTaskFactory,
    Pool, PoolConfig, PoolStatus, ReadSeg, ScanStatus, SnapshotInfo, SpaceReport, Spawner, Volume,
    VolumeInfo,
};
