//! What the export serves ([`BlockDevice`]) and where its requests run
//! ([`Spawner`]).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// A piece of a read result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// These bytes.
    Data(Bytes),
    /// This many bytes of zeroes.
    Zero(u64),
}

/// Why a device operation failed; decides the virtio status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevErrorKind {
    /// Not supported by this device: `VIRTIO_BLK_S_UNSUPP`.
    Unsupported,
    /// Everything else (I/O error, checksum mismatch, out of space, bad
    /// range, read-only, the device went away): `VIRTIO_BLK_S_IOERR`.
    /// virtio-blk has no finer status: the guest sees EIO.
    Io,
}

/// A failed device operation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DevError {
    /// Classification (decides the virtio status).
    pub kind: DevErrorKind,
    /// What happened, for the log.
    pub message: String,
}

impl DevError {
    /// An I/O error.
    pub fn io(message: impl Into<String>) -> DevError {
        DevError {
            kind: DevErrorKind::Io,
            message: message.into(),
        }
    }

    /// An unsupported operation.
    pub fn unsupported(message: impl Into<String>) -> DevError {
        DevError {
            kind: DevErrorKind::Unsupported,
            message: message.into(),
        }
    }
}

/// A block device behind a vhost-user-blk export. Offsets and lengths are
/// bytes, multiples of the 512-byte virtio sector; the export only passes
/// ranges inside [`size`](Self::size). Guests that honour `blk_size` send
/// 4 KiB multiples, but any sector-aligned range must be served. The
/// futures run on the [`Spawner`]'s threads and need not be `Send`.
pub trait BlockDevice: Send + Sync + 'static {
    /// Size in bytes, read on every request (a resize shows at once, to
    /// the range checks; the guest learns it on its next config read).
    fn size(&self) -> u64;

    /// Read `len` bytes at `offset`.
    fn read(&self, offset: u64, len: u64) -> impl Future<Output = Result<Vec<Chunk>, DevError>>;

    /// Write `data` at `offset`; durable on return if `fua`.
    fn write(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> impl Future<Output = Result<(), DevError>>;

    /// Make every completed write durable.
    fn flush(&self) -> impl Future<Output = Result<(), DevError>>;

    /// Deallocate a range (it reads as zeroes afterwards on edgevol).
    fn discard(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> impl Future<Output = Result<(), DevError>>;

    /// Make a range read as zeroes; `unmap` allows deallocating it.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
        fua: bool,
    ) -> impl Future<Output = Result<(), DevError>>;
}

/// Work for a [`Spawner`]: built on the thread that runs it, so the future
/// need not be `Send`.
pub type Task = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Runs the export's request batches. The daemon puts them on its
/// io_uring reactors (the engine's futures expect a reactor thread);
/// `queue` is the virtqueue the batch came from, so one queue's requests
/// can stay on one thread.
pub trait Spawner: Send + Sync {
    /// Run `task` to completion somewhere.
    fn spawn(&self, queue: usize, task: Task);
}

/// Runs each task to completion on the calling thread (the queue worker):
/// for tests, and devices whose futures complete by themselves.
#[derive(Debug, Default, Clone, Copy)]
pub struct InlineSpawner;

impl Spawner for InlineSpawner {
    fn spawn(&self, _queue: usize, task: Task) {
        futures::executor::block_on(task());
    }
}
