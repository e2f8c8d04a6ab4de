//! Devices: the one narrow seam through which the engine touches storage.
//!
//! * [`FileDevice`] (`file`): a regular file or block device, opened
//!   `O_DIRECT` and locked exclusively (a second daemon on the same pool is
//!   refused). Its I/O goes through the calling thread's io_uring when the
//!   thread has one (the data path), else it blocks.
//! * [`MemDevice`] (`mem`): memory with a model of a volatile write cache.
//!   Writes since the last flush can be dropped, kept or torn by
//!   [`MemDevice::power_cut`], the way drives fail (CrashMonkey/ALICE);
//!   reads and writes can be made to fail or to return corrupted bytes;
//!   asynchronous I/O can be made to complete late and out of order, as
//!   io_uring's does.
//!
//! The seam is one trait, [`Device`], with owned buffers: an op takes its
//! [`AlignedBuf`] and gives it back with the result, so a buffer belongs
//! to the device for as long as the kernel (or the simulator) may touch
//! it. Every engine I/O — the data path, checkpoints, scrub, resilver,
//! labels — goes through it; no caller reaches past it to a descriptor,
//! so the power-cut campaigns run the engine code users run.
//!
//! Every I/O is 4 KiB aligned in offset and length, with 4 KiB aligned
//! buffers; devices may assume it. Keeps invariant 1 (acknowledged writes
//! survive) by making [`Device::sync`] the one point at which writes
//! become durable.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::buf::AlignedBuf;

mod file;
mod mem;

pub use file::FileDevice;
pub use mem::{CutPolicy, MemDevice, PowerRail};

/// How an I/O may complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// Whenever the device completes it: the future waits (io_uring on a
    /// data-plane thread; late and reordered completions in the
    /// simulator). For callers running on an executor.
    Async,
    /// Before the call returns: the future is ready when first polled.
    /// For blocking callers (maintenance, labels, tools), which may run
    /// on a data-plane thread whose event loop they are blocking.
    Blocking,
}

/// A device op in flight: its result, with the buffer given back.
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + 'a>>;

/// Positioned, aligned I/O on one device, with owned buffers.
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
    /// Read `buf.len()` bytes at `offset` into `buf`; all of them, or an
    /// error.
    fn read(&self, buf: AlignedBuf, offset: u64, mode: IoMode) -> IoFuture<'_, AlignedBuf>;
    /// Write all of `buf` at `offset` (volatile until [`Device::sync`]).
    fn write(&self, buf: AlignedBuf, offset: u64, mode: IoMode) -> IoFuture<'_, AlignedBuf>;
    /// Make every completed write durable.
    fn sync(&self, mode: IoMode) -> IoFuture<'_, ()>;
    /// Where this device is (a path, or a name for memory devices).
    fn describe(&self) -> String;
    /// True for a real block device (health reports, discard).
    fn is_block_device(&self) -> bool {
        false
    }
    /// The periodic health probe (`pool/health.rs`): Err, saying why, if
    /// the device went away or fails I/O. Cheap: at most one 4 KiB read.
    /// Devices with nothing to check answer Ok.
    fn probe(&self) -> io::Result<()> {
        Ok(())
    }

    /// Read exactly `buf.len()` bytes at `offset` (blocking). `buf` must
    /// be aligned as `O_DIRECT` wants it (EINVAL otherwise).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_direct(buf, offset)?;
        let b = now(self.read(AlignedBuf::zeroed(buf.len()), offset, IoMode::Blocking))?;
        buf.copy_from_slice(b.as_slice());
        Ok(())
    }
    /// Write all of `buf` at `offset` (blocking; aligned as for
    /// [`Device::read_at`]).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_direct(buf, offset)?;
        let mut b = AlignedBuf::zeroed(buf.len());
        b.as_mut_slice().copy_from_slice(buf);
        now(self.write(b, offset, IoMode::Blocking)).map(drop)
    }
    /// Make every completed write durable (blocking).
    fn flush(&self) -> io::Result<()> {
        now(self.sync(IoMode::Blocking))
    }
}

/// `O_DIRECT`'s rules, as a real device enforces them: a 4 KiB aligned
/// buffer, offset and length.
pub(crate) fn check_direct(buf: &[u8], offset: u64) -> io::Result<()> {
    let a = crate::layout::BLOCK_U64;
    if !offset.is_multiple_of(a)
        || !(buf.len() as u64).is_multiple_of(a)
        || !(buf.as_ptr() as u64).is_multiple_of(a)
    {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(())
}

/// The result of an [`IoMode::Blocking`] op, which is ready at once.
pub(crate) fn now<T>(f: IoFuture<'_, T>) -> io::Result<T> {
    let mut f = f;
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => unreachable!("a blocking device op did not complete when polled"),
    }
}

/// An op that completed when it was made.
pub(crate) fn done<'a, T: 'a>(r: io::Result<T>) -> IoFuture<'a, T> {
    Box::pin(std::future::ready(r))
}
