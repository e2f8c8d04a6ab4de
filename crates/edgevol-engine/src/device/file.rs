//! [`FileDevice`]: a regular file or block device opened for direct I/O.
//!
//! Opening claims the device: a block device with `O_EXCL` (the kernel then
//! refuses to mount it, and other exclusive openers get EBUSY), every
//! device with an exclusive lock (a second daemon on the same pool gets
//! Busy), both retried for a moment so a restart right after a crash is
//! not mistaken for a second live daemon. A probe opens read-only under a
//! shared lock. File systems that refuse `O_DIRECT` fall back to buffered
//! I/O with `fdatasync` on flush.
//!
//! Keeps invariant 1 (acknowledged writes survive: [`Device::sync`] is
//! `fdatasync`, with or without `O_DIRECT`) and invariant 7 (a device in
//! use, missing, removed or of the wrong kind is a clear error; the
//! health probe notices a device that went away).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{done, Device, IoFuture, IoMode};
use crate::buf::AlignedBuf;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::BLOCK_U64;

/// A file or block device opened for direct I/O.
pub struct FileDevice {
    file: File,
    path: PathBuf,
    len: std::sync::atomic::AtomicU64,
    block_device: bool,
    direct: bool,
}

/// How long opening a device waits for another holder's lock to go.
///
/// A daemon killed with SIGKILL is reaped before the kernel has torn down
/// its io_uring instances, and in-flight requests keep the device's open
/// file — and with it the lock — for a moment longer. A restart right
/// after a crash must not mistake that for a second live daemon.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Run `attempt` until it succeeds or fails other than `busy`, for up to
/// [`LOCK_WAIT`].
fn retry_while_busy<T, E>(
    mut attempt: impl FnMut() -> std::result::Result<T, E>,
    busy: impl Fn(&E) -> bool,
) -> std::result::Result<T, E> {
    let end = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match attempt() {
            Err(e) if busy(&e) && std::time::Instant::now() < end => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Take `file`'s exclusive (or shared) lock, retrying for up to
/// [`LOCK_WAIT`].
fn lock(file: &File, exclusive: bool) -> std::result::Result<(), std::fs::TryLockError> {
    retry_while_busy(
        || {
            if exclusive {
                file.try_lock()
            } else {
                file.try_lock_shared()
            }
        },
        |e| matches!(e, std::fs::TryLockError::WouldBlock),
    )
}

/// Open with `open`, retrying on EBUSY for up to [`LOCK_WAIT`]: the
/// exclusive claim on a block device outlives a killed daemon for a
/// moment, as its lock does.
fn retry_busy(open: impl Fn() -> io::Result<File>) -> io::Result<File> {
    retry_while_busy(open, |e| e.raw_os_error() == Some(libc::EBUSY))
}

/// Usable bytes of an open file or block device: whole blocks only.
fn size_of(mut file: &File, block_device: bool) -> io::Result<u64> {
    let len = if block_device {
        file.seek(SeekFrom::End(0))?
    } else {
        file.metadata()?.len()
    };
    Ok(len - len % BLOCK_U64)
}

impl FileDevice {
    /// Open an existing file or block device, exclusively.
    pub fn open(path: &Path) -> Result<FileDevice> {
        FileDevice::open_as(path, true)
    }

    /// Open read-only to look at it (a label probe) while leaving it to
    /// whoever holds it: no `O_EXCL`, a shared lock — which still fails
    /// while an edgevol daemon holds the device (Busy).
    pub fn open_for_probe(path: &Path) -> Result<FileDevice> {
        FileDevice::open_as(path, false)
    }

    fn open_as(path: &Path, exclusive: bool) -> Result<FileDevice> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        let block_device = meta.file_type().is_block_device();
        if !block_device && !meta.file_type().is_file() {
            return Err(Error::invalid(format!(
                "{} is neither a regular file nor a block device",
                path.display()
            )));
        }
        // A block device is claimed with O_EXCL for as long as the pool
        // uses it: the kernel then refuses to mount it, and mkfs, LVM, md
        // and other exclusive openers get EBUSY instead of writing over
        // the pool. (On regular files O_EXCL means nothing; the lock below
        // keeps a second daemon away.)
        let excl = if block_device && exclusive {
            libc::O_EXCL
        } else {
            0
        };
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(exclusive);
            o.custom_flags(excl | if direct { libc::O_DIRECT } else { 0 });
            retry_busy(|| o.open(path))
        };
        let (file, direct) = match open(true) {
            Ok(f) => (f, true),
            // tmpfs and some network file systems refuse O_DIRECT: fall back to
            // buffered I/O; flush() still issues fdatasync, so durability holds.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(), "O_DIRECT not supported; using buffered I/O with fdatasync");
                (
                    open(false)
                        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?,
                    false,
                )
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "{} is in use (mounted, part of another device, or held open exclusively by another program or edgevol daemon)",
                        path.display()
                    ),
                ))
            }
            Err(e) => return Err(Error::io(format!("cannot open {}", path.display()), e)),
        };
        match lock(&file, exclusive) {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "{} is in use by another process (is another edgevol daemon serving this pool?)",
                        path.display()
                    ),
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("cannot lock {}", path.display()), e))
            }
        }
        let len = size_of(&file, block_device)
            .map_err(|e| Error::io(format!("cannot size {}", path.display()), e))?;
        Ok(FileDevice {
            file,
            path: path.to_path_buf(),
            len: len.into(),
            block_device,
            direct,
        })
    }

    /// Create a sparse file of `size` bytes if `path` does not exist, then open it.
    pub fn create_sparse(path: &Path, size: u64) -> Result<FileDevice> {
        if !path.exists() {
            if size == 0 {
                return Err(Error::invalid(format!(
                    "{} does not exist; give --size to create it",
                    path.display()
                )));
            }
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
            f.set_len(size)
                .map_err(|e| Error::io(format!("cannot size {}", path.display()), e))?;
        }
        FileDevice::open(path)
    }

    /// True if the file was opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The path this device was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ring an op in `mode` goes through: the calling thread's, for
    /// asynchronous ops on a thread that has one (the data path).
    fn ring(&self, mode: IoMode) -> Option<std::rc::Rc<edgevol_io::Ring>> {
        match mode {
            IoMode::Async => edgevol_io::current(),
            IoMode::Blocking => None,
        }
    }
}

impl Device for FileDevice {
    fn len(&self) -> u64 {
        self.len.load(std::sync::atomic::Ordering::Acquire)
    }

    fn refresh_len(&self) -> io::Result<u64> {
        let now = size_of(&self.file, self.block_device)?;
        Ok(self
            .len
            .fetch_max(now, std::sync::atomic::Ordering::AcqRel)
            .max(now))
    }

    fn read(&self, mut buf: AlignedBuf, offset: u64, mode: IoMode) -> IoFuture<'_, AlignedBuf> {
        let Some(ring) = self.ring(mode) else {
            return done(
                self.file
                    .read_exact_at(buf.as_mut_slice(), offset)
                    .map(|()| buf),
            );
        };
        let fd = self.file.as_raw_fd();
        Box::pin(async move {
            let want = buf.len();
            let (res, b) = ring.read_at(fd, buf, offset).await;
            let b = b.ok_or_else(|| io::Error::other("io_uring lost a read buffer"))?;
            match res? {
                n if n == want => Ok(b),
                n => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("short read: {n} of {want} bytes"),
                )),
            }
        })
    }

    fn write(&self, buf: AlignedBuf, offset: u64, mode: IoMode) -> IoFuture<'_, AlignedBuf> {
        let Some(ring) = self.ring(mode) else {
            return done(self.file.write_all_at(buf.as_slice(), offset).map(|()| buf));
        };
        let fd = self.file.as_raw_fd();
        Box::pin(async move {
            let want = buf.len();
            match ring.write_at(fd, buf, offset).await {
                (Ok(n), Some(b)) if n == want => Ok(b),
                (Ok(n), _) => Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {n} of {want} bytes"),
                )),
                (Err(e), _) => Err(e),
            }
        })
    }

    fn sync(&self, mode: IoMode) -> IoFuture<'_, ()> {
        let Some(ring) = self.ring(mode) else {
            return done(self.file.sync_data());
        };
        let fd = self.file.as_raw_fd();
        Box::pin(async move { ring.fdatasync(fd).await.0.map(drop) })
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn is_block_device(&self) -> bool {
        self.block_device
    }

    fn probe(&self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let gone = |why: String| io::Error::new(io::ErrorKind::NotFound, why);
        let path = self.path.display();
        // A removed file keeps working through its descriptor: its link
        // count tells, and so does its path naming another file or none
        // (moved, or removed and created anew).
        let open = self.file.metadata()?;
        if !self.block_device && open.nlink() == 0 {
            return Err(gone(format!("{path} was removed")));
        }
        let named =
            std::fs::metadata(&self.path).map_err(|e| gone(format!("{path} is gone ({e})")))?;
        let same = if self.block_device {
            named.file_type().is_block_device() && named.rdev() == open.rdev()
        } else {
            (named.dev(), named.ino()) == (open.dev(), open.ino())
        };
        if !same {
            return Err(gone(format!("{path} now names another device")));
        }
        // A block device that failed or went away answers a read of its
        // label area with an error.
        if self.block_device {
            let mut buf = crate::buf::AlignedBuf::zeroed(BLOCK_U64 as usize);
            self.file.read_exact_at(buf.as_mut_slice(), 0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_device_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dev");
        let a = FileDevice::create_sparse(&p, 4 << 20).unwrap();
        assert_eq!(a.len(), 4 << 20);
        let b = FileDevice::open(&p);
        assert_eq!(b.err().map(|e| e.kind()), Some(ErrorKind::Busy));
    }
}
