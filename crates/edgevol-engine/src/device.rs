//! Devices: the one narrow seam through which the engine touches storage.
//!
//! * [`FileDevice`]: a regular file or block device, opened `O_DIRECT` and
//!   locked exclusively (a second daemon on the same pool is refused).
//! * [`MemDevice`]: memory with a model of a volatile write cache. Writes
//!   since the last flush can be dropped, kept or torn by
//!   [`MemDevice::power_cut`], the way drives fail (CrashMonkey/ALICE); reads
//!   and writes can be made to fail or to return corrupted bytes.
//!
//! Every I/O is 4 KiB aligned in offset and length, with 4 KiB aligned
//! buffers; devices may assume it.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::Rng;

use crate::error::{Error, ErrorKind, Result};
use crate::layout::BLOCK_U64;

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

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn is_block_device(&self) -> bool {
        self.block_device
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.file.as_raw_fd())
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

/// How a power cut treats each write that was not yet flushed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CutPolicy {
    /// Probability that an unflushed write reached the media whole.
    pub keep: f64,
    /// Probability that it reached the media torn: a random subset of its
    /// 512-byte sectors. The rest is dropped entirely.
    pub tear: f64,
}

impl CutPolicy {
    /// Every unflushed write is lost.
    pub const DROP_ALL: CutPolicy = CutPolicy {
        keep: 0.0,
        tear: 0.0,
    };
    /// Every unflushed write survives (an orderly process crash).
    pub const KEEP_ALL: CutPolicy = CutPolicy {
        keep: 1.0,
        tear: 0.0,
    };
    /// A mix of kept, dropped and torn writes.
    pub const CHAOS: CutPolicy = CutPolicy {
        keep: 0.4,
        tear: 0.3,
    };
}

/// A power supply shared by the [`MemDevice`]s of one simulated host: armed
/// with a number of device operations (writes and flushes, counted across
/// every attached device), it "cuts" after that many. From then on the
/// devices keep answering, so the code under test runs on undisturbed, but
/// nothing they are given reaches the media: later writes are lost and
/// later flushes make nothing durable. [`MemDevice::power_cut`] and
/// [`MemDevice::restore_power`] then resolve the writes that were still
/// unflushed at the cut. This places a cut at any point of an operation
/// (between a checkpoint and its uberblock, inside a batch) rather than
/// only between operations.
#[derive(Debug, Default)]
pub struct PowerRail {
    /// Operations left before the cut; negative once it happened.
    left: std::sync::atomic::AtomicI64,
    armed: std::sync::atomic::AtomicBool,
}

impl PowerRail {
    /// Cut the power after `ops` more device operations.
    pub fn arm(&self, ops: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        self.left
            .store(i64::try_from(ops).unwrap_or(i64::MAX), SeqCst);
        self.armed.store(true, SeqCst);
    }

    /// Stop counting: power stays on.
    pub fn disarm(&self) {
        self.armed.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a cut is armed (or has happened).
    pub fn is_armed(&self) -> bool {
        self.armed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the armed cut has happened.
    pub fn fired(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.armed.load(SeqCst) && self.left.load(SeqCst) < 0
    }

    /// Count one device operation; true if it happens after the cut.
    fn tick(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.armed.load(SeqCst) && self.left.fetch_sub(1, SeqCst) <= 0
    }
}

struct MemInner {
    /// What reads return now.
    current: Vec<u8>,
    /// What is on the media for sure.
    durable: Vec<u8>,
    /// Writes since the last flush, in order.
    pending: Vec<(u64, Vec<u8>)>,
    fail_reads: bool,
    fail_writes: bool,
    dead: bool,
    /// Unplugged: the health probe fails (I/O still works: a removed
    /// file's descriptor does).
    removed: bool,
    /// Byte ranges whose reads return flipped bits.
    corrupt: Vec<(u64, u64)>,
    writes: u64,
    flushes: u64,
    rail: Option<Arc<PowerRail>>,
}

/// An in-memory device with a volatile write cache (for tests).
pub struct MemDevice {
    name: String,
    len: std::sync::atomic::AtomicU64,
    inner: Mutex<MemInner>,
}

impl MemDevice {
    /// A zeroed device of `len` bytes (rounded down to whole blocks).
    pub fn new(name: impl Into<String>, len: u64) -> MemDevice {
        let len = len - len % BLOCK_U64;
        let size = usize::try_from(len).unwrap_or(usize::MAX);
        MemDevice {
            name: name.into(),
            len: len.into(),
            inner: Mutex::new(MemInner {
                current: vec![0; size],
                durable: vec![0; size],
                pending: Vec::new(),
                fail_reads: false,
                fail_writes: false,
                dead: false,
                removed: false,
                corrupt: Vec::new(),
                writes: 0,
                flushes: 0,
                rail: None,
            }),
        }
    }

    /// Grow the device to `len` bytes (zeroes, durable at once: a resized
    /// disk). Never shrinks.
    pub fn grow(&self, len: u64) {
        let len = len - len % BLOCK_U64;
        let mut g = self.inner.lock();
        let size = usize::try_from(len).unwrap_or(usize::MAX);
        if size > g.current.len() {
            g.current.resize(size, 0);
            g.durable.resize(size, 0);
            self.len.fetch_max(len, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Take power from `rail` (shared with the other devices of a
    /// simulated host).
    pub fn attach_rail(&self, rail: Arc<PowerRail>) {
        self.inner.lock().rail = Some(rail);
    }

    /// Whether this operation happens after the rail's cut.
    fn after_cut(g: &MemInner) -> bool {
        g.rail.as_ref().is_some_and(|r| r.tick())
    }

    /// Cut the power: every I/O fails until [`MemDevice::restore_power`].
    /// Unflushed writes are resolved by `policy` when power comes back.
    pub fn power_cut(&self) {
        self.inner.lock().dead = true;
    }

    /// Bring the device back after [`MemDevice::power_cut`]: unflushed writes
    /// are kept, dropped or torn according to `policy`, in write order.
    pub fn restore_power(&self, policy: CutPolicy, rng: &mut impl Rng) {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let mut image = inner.durable.clone();
        for (off, data) in inner.pending.drain(..) {
            let off = off as usize;
            let roll: f64 = rng.random();
            if roll < policy.keep {
                image[off..off + data.len()].copy_from_slice(&data);
            } else if roll < policy.keep + policy.tear {
                for (i, sector) in data.chunks(512).enumerate() {
                    if rng.random_bool(0.5) {
                        let s = off + i * 512;
                        image[s..s + sector.len()].copy_from_slice(sector);
                    }
                }
            }
        }
        inner.durable.clone_from(&image);
        inner.current = image;
        inner.dead = false;
    }

    /// Unplug the device as far as the health probe can tell (or plug it
    /// back), like a removed file whose descriptor still works.
    pub fn set_removed(&self, removed: bool) {
        self.inner.lock().removed = removed;
    }

    /// Make reads fail with EIO (or stop failing).
    pub fn set_fail_reads(&self, fail: bool) {
        self.inner.lock().fail_reads = fail;
    }

    /// Make writes and flushes fail with EIO (or stop failing).
    pub fn set_fail_writes(&self, fail: bool) {
        self.inner.lock().fail_writes = fail;
    }

    /// Flip bits in the stored bytes of `[offset, offset + len)` (both the
    /// current and the durable image): silent corruption on the media.
    pub fn corrupt(&self, offset: u64, len: u64) {
        let mut g = self.inner.lock();
        let (s, e) = (offset as usize, (offset + len) as usize);
        for b in &mut g.current[s..e] {
            *b ^= 0x5a;
        }
        for b in &mut g.durable[s..e] {
            *b ^= 0x5a;
        }
        g.corrupt.push((offset, len));
    }

    /// A copy of what reads return now.
    pub fn snapshot_image(&self) -> Vec<u8> {
        self.inner.lock().current.clone()
    }

    /// Number of writes and flushes so far.
    pub fn io_counts(&self) -> (u64, u64) {
        let g = self.inner.lock();
        (g.writes, g.flushes)
    }

    fn dead_error() -> io::Error {
        io::Error::other("device lost power")
    }

    /// The rules O_DIRECT enforces, so memory-backed tests catch what a real
    /// device would refuse: 4 KiB aligned memory, offset and length.
    fn check_direct(buf: &[u8], offset: u64) -> io::Result<()> {
        let b = BLOCK_U64 as usize;
        if !(buf.as_ptr() as usize).is_multiple_of(b)
            || !offset.is_multiple_of(BLOCK_U64)
            || !buf.len().is_multiple_of(b)
        {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }
}

impl Device for MemDevice {
    fn len(&self) -> u64 {
        self.len.load(std::sync::atomic::Ordering::Acquire)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let g = self.inner.lock();
        if g.dead {
            return Err(Self::dead_error());
        }
        Self::check_direct(buf, offset)?;
        if g.fail_reads {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        buf.copy_from_slice(&g.current[offset as usize..end as usize]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut g = self.inner.lock();
        if g.dead {
            return Err(Self::dead_error());
        }
        Self::check_direct(buf, offset)?;
        if g.fail_writes {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        g.current[offset as usize..end as usize].copy_from_slice(buf);
        if !Self::after_cut(&g) {
            g.pending.push((offset, buf.to_vec()));
        }
        g.writes += 1;
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut g = self.inner.lock();
        if g.dead {
            return Err(Self::dead_error());
        }
        if g.fail_writes {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let inner = &mut *g;
        inner.flushes += 1;
        if Self::after_cut(inner) {
            return Ok(());
        }
        for (off, data) in inner.pending.drain(..) {
            let off = off as usize;
            inner.durable[off..off + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("mem:{}", self.name)
    }

    fn probe(&self) -> io::Result<()> {
        match self.inner.lock().removed {
            true => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("mem:{} was removed", self.name),
            )),
            false => Ok(()),
        }
    }

    fn is_memory(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn block(fill: u8) -> crate::buf::AlignedBuf {
        let mut b = crate::buf::AlignedBuf::zeroed(4096);
        b.as_mut_slice().fill(fill);
        b
    }

    #[test]
    fn unflushed_writes_are_lost_on_power_cut() {
        let d = MemDevice::new("t", 64 * 1024);
        d.write_at(block(1).as_slice(), 0).unwrap();
        d.flush().unwrap();
        d.write_at(block(2).as_slice(), 0).unwrap();
        d.write_at(block(3).as_slice(), 4096).unwrap();
        d.power_cut();
        let mut buf = block(0);
        assert!(d.read_at(buf.as_mut_slice(), 0).is_err());
        d.restore_power(
            CutPolicy::DROP_ALL,
            &mut rand::rngs::StdRng::seed_from_u64(1),
        );
        d.read_at(buf.as_mut_slice(), 0).unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 1));
        d.read_at(buf.as_mut_slice(), 4096).unwrap();
        assert!(buf.as_slice().iter().all(|&b| b == 0));
    }

    #[test]
    fn a_rail_cut_loses_later_writes_and_flushes() {
        let rail = Arc::new(PowerRail::default());
        let (a, b) = (
            MemDevice::new("a", 64 * 1024),
            MemDevice::new("b", 64 * 1024),
        );
        a.attach_rail(rail.clone());
        b.attach_rail(rail.clone());
        a.write_at(block(1).as_slice(), 0).unwrap();
        rail.arm(2);
        b.write_at(block(2).as_slice(), 0).unwrap(); // op 1: before the cut
        a.flush().unwrap(); // op 2: before the cut, makes block 1 durable
        assert!(!rail.fired());
        a.write_at(block(3).as_slice(), 4096).unwrap(); // after the cut
        b.flush().unwrap(); // after the cut: b's write stays volatile
        assert!(rail.fired());
        let mut buf = block(0);
        a.read_at(buf.as_mut_slice(), 4096).unwrap();
        assert!(
            buf.as_slice().iter().all(|&x| x == 3),
            "reads see the lost write"
        );
        rail.disarm();
        let rng = &mut rand::rngs::StdRng::seed_from_u64(1);
        for d in [&a, &b] {
            d.power_cut();
            d.restore_power(CutPolicy::DROP_ALL, rng);
        }
        a.read_at(buf.as_mut_slice(), 0).unwrap();
        assert!(buf.as_slice().iter().all(|&x| x == 1));
        a.read_at(buf.as_mut_slice(), 4096).unwrap();
        assert!(buf.as_slice().iter().all(|&x| x == 0));
        b.read_at(buf.as_mut_slice(), 0).unwrap();
        assert!(buf.as_slice().iter().all(|&x| x == 0));
    }

    #[test]
    fn enforces_direct_io_alignment() {
        let d = MemDevice::new("t", 64 * 1024);
        let v = vec![0u8; 8192];
        let off = if (v.as_ptr() as usize).is_multiple_of(4096) {
            1
        } else {
            0
        };
        let e = d.write_at(&v[off..off + 4096], 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        assert!(d.write_at(block(1).as_slice(), 512).is_err());
    }

    #[test]
    fn torn_writes_mix_sectors() {
        let d = MemDevice::new("t", 64 * 1024);
        d.write_at(block(9).as_slice(), 0).unwrap();
        d.power_cut();
        d.restore_power(
            CutPolicy {
                keep: 0.0,
                tear: 1.0,
            },
            &mut rand::rngs::StdRng::seed_from_u64(7),
        );
        let mut buf = block(0);
        d.read_at(buf.as_mut_slice(), 0).unwrap();
        let nines = buf.as_slice().chunks(512).filter(|s| s[0] == 9).count();
        assert!(
            nines > 0 && nines < 8,
            "expected a torn write, got {nines}/8 sectors"
        );
    }

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
