//! edgevol's vhost-user-blk export: a VM's virtio-blk queues, in guest
//! memory shared with QEMU or cloud-hypervisor, served straight from a
//! block device (in the daemon: an engine volume).
//!
//! ```text
//!  guest virtio_blk ── virtqueues in shared memory ──┐
//!  QEMU ── vhost-user socket (rust-vmm `vhost`) ─────┤
//!                                                    ▼
//!   server.rs   listener, one connection at a time (or several if shared),
//!               VhostUserDaemon per connection
//!   backend.rs  VhostUserBackend: features, config space, queue workers
//!               (pop chains, parse, hand batches to a Spawner)
//!   request.rs  virtio-blk request parsing and execution: the only place
//!               that reads or writes guest buffers
//!   device.rs   BlockDevice: what the daemon implements (read, write,
//!               flush, discard, write-zeroes) and how its errors map to
//!               virtio status
//! ```
//!
//! This crate knows no engine: the daemon implements [`BlockDevice`] over
//! a volume and a [`Spawner`] that runs the requests on its io_uring
//! reactors. The vhost-user protocol is rust-vmm's (`vhost`,
//! `vhost-user-backend`, `virtio-queue`, `vm-memory`).
#![deny(missing_docs)]

mod backend;
pub mod config;
mod device;
pub mod request;
mod server;

pub use backend::{BlkBackend, WorkerMode};
pub use config::BlkSettings;
pub use device::{BlockDevice, Chunk, DevError, DevErrorKind, InlineSpawner, Spawner, Task};
pub use server::{DeviceFactory, ExportConfig, Opened, ServerHandle, VhostServer};
