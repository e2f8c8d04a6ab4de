//! Devices: the one narrow seam through which the engine touches storage.
//!
//! * [`FileDevice`] (`file`): a regular file or block device, opened
//!   `O_DIRECT` and locked exclusively (a second daemon on the same pool is
//!   refused).
//! * [`MemDevice`] (`mem`): memory with a model of a volatile write cache.
//!   Writes since the last flush can be dropped, kept or torn by
//!   [`MemDevice::power_cut`], the way drives fail (CrashMonkey/ALICE);
//!   reads and writes can be made to fail or to return corrupted bytes.
//!
//! Every I/O is 4 KiB aligned in offset and length, with 4 KiB aligned
//! buffers; devices may assume it. This module holds the [`Device`] trait
//! both implement. Keeps invariant 1 (acknowledged writes survive) by
//! making [`Device::flush`] the one point at which writes become durable.

use std::io;

mod file;
mod mem;

pub use file::FileDevice;
pub use mem::{CutPolicy, MemDevice, PowerRail};

/// Blocking, positioned, aligned I/O on one device.
pub trait Device: Send + Sync + 'static {
    /// Size in bytes (as of opening, or of the last [`Device::refresh_len`]).
    fn len(&self) -> u64;
    /// Look at the device's size again (a file or block device grown
    /// under the pool) and return it; [`Device::len`] reports it from then
    /// on. A device never shrinks this way.
    fn refresh_len(&self) -> io::Result<u64> {
        Ok(self.len())
    }
    /// True for a device of no bytes (never a usable pool device).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Read exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset` (volatile until [`Device::flush`]).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Where this device is (a path, or a name for memory devices).
    fn describe(&self) -> String;
    /// True if I/O completes immediately (memory): the engine then runs it
    /// inline instead of on an I/O thread.
    fn is_memory(&self) -> bool {
        false
    }
    /// True for a real block device (health reports, discard).
    fn is_block_device(&self) -> bool {
        false
    }
    /// The file descriptor, for devices that a thread's io_uring can drive
    /// directly (see `edgevol_io::ring`). None: only the blocking methods.
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// The periodic health probe (`pool/health.rs`): Err, saying why, if
    /// the device went away or fails I/O. Cheap: at most one 4 KiB read.
    /// Devices with nothing to check answer Ok.
    fn probe(&self) -> io::Result<()> {
        Ok(())
    }
}
