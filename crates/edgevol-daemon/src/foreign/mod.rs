//! Claiming a device for a pool without destroying what is on it.
//!
//! `pool create`, `pool add` and `pool replace` call [`check_claim`] for
//! every path they were given, all of them before anything is written
//! (DESIGN.md invariant 7: bad input gets a clear error and harms
//! nothing). For a path that exists:
//!
//! 1. **In use** — mounted (it or a partition of it), a loop device's
//!    backing file, active swap, held by device-mapper/md/bcache, claimed
//!    exclusively (an `O_EXCL` open fails with EBUSY), or locked by an
//!    edgevol daemon — is refused with [`ErrorKind::Busy`], even with
//!    `force`.
//! 2. **An edgevol label** of another pool, **a well-known format**
//!    ([`signature`]), or, for a regular file, **any non-zero byte** in the
//!    first or last MiB, is refused with [`ErrorKind::ForeignData`] naming
//!    what was found, unless `force`.
//!
//! A path that does not exist, an empty file and a file whose first and
//! last MiB are zero (`truncate -s 2G x.img`) are taken as they are. The
//! list of formats and their offsets is in `docs/devices.md`.

mod inuse;
pub mod signature;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use edgevol_engine::{Error, ErrorKind, Pool, Result};

use inuse::DevNum;
use signature::{Sample, Signature, SAMPLE};

/// What a device holds, as found by [`probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    /// Nothing found: zero (or, for a block device, no known format).
    Empty,
    /// The label of an edgevol pool.
    Edgevol {
        /// The pool's name.
        pool: String,
        /// The pool's guid.
        guid: u128,
    },
    /// A well-known format.
    Format(Signature),
    /// A regular file with a non-zero byte at this offset.
    Data(u64),
}

impl std::fmt::Display for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Contents::Empty => f.write_str("nothing"),
            Contents::Edgevol { pool, .. } => write!(f, "a device of edgevol pool {pool:?}"),
            Contents::Format(s) => s.fmt(f),
            Contents::Data(off) => write!(f, "data (non-zero bytes at offset {off})"),
        }
    }
}

fn io(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> Error {
    let msg = format!("cannot {what} {}", path.display());
    move |e| Error::new(ErrorKind::Io, msg).with_source(e)
}

fn busy(path: &Path, why: &str) -> Error {
    Error::new(
        ErrorKind::Busy,
        format!(
            "{} {why}; it cannot be used for a pool (not even with --force)",
            path.display()
        ),
    )
}

/// May `path` become a device of a pool? `own` is the guid of the pool it
/// joins (`pool add`, `pool replace`): a device already labelled for that
/// pool (left over from an interrupted add or replace) may be used again.
/// With `force`, foreign contents are overwritten (and logged); a device in
/// use never is.
pub fn check_claim(path: &Path, force: bool, own: Option<u128>) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path, "look at")(e)),
    };
    let canon = std::fs::canonicalize(path).map_err(io(path, "resolve"))?;
    let block = meta.file_type().is_block_device();
    let why = if block {
        inuse::block_in_use(&canon, DevNum::from_rdev(meta.rdev()))
    } else if meta.file_type().is_file() {
        inuse::file_in_use(&canon)
    } else {
        // Neither: opening it as a device fails with its own message.
        return Ok(());
    };
    if let Some(why) = why {
        return Err(busy(path, &why));
    }
    let file = open_probe(path, block)?;
    let contents = probe_open(path, &file, block)?;
    // The exclusive claim lasts only for the look: the engine opens the
    // device again (with its own lock) once every path passed.
    drop(file);
    match contents {
        Contents::Empty => Ok(()),
        Contents::Edgevol { guid, .. } if Some(guid) == own => Ok(()),
        found if force => {
            tracing::warn!(path = %path.display(), found = %found, "overwriting (--force)");
            Ok(())
        }
        found => Err(Error::new(
            ErrorKind::ForeignData,
            format!(
                "{} holds {found}; use --force to overwrite it",
                path.display()
            ),
        )),
    }
}

/// Open read-only for probing; a block device with `O_EXCL`, which fails
/// with EBUSY while the kernel has it claimed (mounted, in an md array, a
/// device-mapper table, active swap).
fn open_probe(path: &Path, block: bool) -> Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    if block {
        o.custom_flags(libc::O_EXCL);
    }
    match o.open(path) {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(busy(
            path,
            "is held open exclusively by another process (mounted, or part of a RAID, \
             device-mapper or swap)",
        )),
        Err(e) => Err(io(path, "open")(e)),
    }
}

/// What `path` holds (reads its first and last MiB; writes nothing).
pub fn probe(path: &Path) -> Result<Contents> {
    let meta = std::fs::metadata(path).map_err(io(path, "look at"))?;
    let block = meta.file_type().is_block_device();
    let file = open_probe(path, block)?;
    probe_open(path, &file, block)
}

fn probe_open(path: &Path, mut file: &File, block: bool) -> Result<Contents> {
    // A label of edgevol first, for the pool's name. A device another
    // edgevol daemon (or this one) has open is locked: in use.
    match Pool::probe(path) {
        Ok((pool, guid)) => return Ok(Contents::Edgevol { pool, guid }),
        Err(e) if e.kind() == ErrorKind::Busy => return Err(e),
        Err(_) => {}
    }
    let len = file.seek(SeekFrom::End(0)).map_err(io(path, "size"))?;
    let n = SAMPLE.min(usize::try_from(len).unwrap_or(SAMPLE));
    let mut head = vec![0u8; n];
    file.seek(SeekFrom::Start(0)).map_err(io(path, "read"))?;
    file.read_exact(&mut head).map_err(io(path, "read"))?;
    let mut tail = vec![0u8; n];
    file.read_exact_at(&mut tail, len - n as u64)
        .map_err(io(path, "read"))?;
    let sample = Sample {
        head: &head,
        tail: &tail,
        len,
    };
    if let Some(sig) = signature::identify(&sample) {
        return Ok(Contents::Format(sig));
    }
    if !block {
        if let Some(off) = first_nonzero(&sample) {
            return Ok(Contents::Data(off));
        }
    }
    Ok(Contents::Empty)
}

/// The offset of the first non-zero byte of the sample.
fn first_nonzero(s: &Sample) -> Option<u64> {
    if let Some(i) = s.head.iter().position(|&b| b != 0) {
        return Some(i as u64);
    }
    let start = s.len - s.tail.len() as u64;
    s.tail
        .iter()
        .position(|&b| b != 0)
        .map(|i| start + i as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(len: u64, writes: &[(u64, &[u8])]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        f.as_file().set_len(len).expect("size");
        for (off, b) in writes {
            f.as_file().write_all_at(b, *off).expect("write");
        }
        f
    }

    #[test]
    fn zero_and_sparse_files_are_empty() {
        let f = file_with(64 << 20, &[]);
        assert_eq!(probe(f.path()).expect("probe"), Contents::Empty);
        check_claim(f.path(), false, None).expect("a zero file may be claimed");
        let f = file_with(0, &[]);
        assert_eq!(probe(f.path()).expect("probe"), Contents::Empty);
        let missing = f.path().with_extension("missing");
        check_claim(&missing, false, None).expect("a new file may be claimed");
    }

    #[test]
    fn a_non_zero_byte_in_either_end_is_data() {
        let len = 64u64 << 20;
        let f = file_with(len, &[(4097, b"x")]);
        assert_eq!(probe(f.path()).expect("probe"), Contents::Data(4097));
        let f = file_with(len, &[(len - 3, b"x")]);
        assert_eq!(probe(f.path()).expect("probe"), Contents::Data(len - 3));
        // Past the first MiB and before the last: not looked at.
        let f = file_with(len, &[(32 << 20, b"x")]);
        assert_eq!(probe(f.path()).expect("probe"), Contents::Empty);
        // A file smaller than a sample.
        let f = file_with(100, &[(99, b"x")]);
        assert_eq!(probe(f.path()).expect("probe"), Contents::Data(99));
    }

    #[test]
    fn claims_name_what_they_found_and_force_takes_it() {
        let f = file_with(
            8 << 20,
            &[
                (0x438, &0xef53u16.to_le_bytes()),
                (1024 + 0x78, b"data"),
                (1024 + 0x60, &0x40u32.to_le_bytes()),
            ],
        );
        let e = check_claim(f.path(), false, None).expect_err("ext4 refused");
        assert_eq!(e.kind(), ErrorKind::ForeignData);
        let msg = e.to_string();
        assert!(
            msg.contains("holds an ext4 file system (label \"data\"); use --force"),
            "{msg}"
        );
        check_claim(f.path(), true, None).expect("--force takes it");
        let f = file_with(8 << 20, &[(5 << 20, b"not here"), ((8 << 20) - 1, b"!")]);
        let e = check_claim(f.path(), false, None).expect_err("data refused");
        assert!(
            e.to_string().contains(&format!(
                "holds data (non-zero bytes at offset {})",
                (8 << 20) - 1
            )),
            "{e}"
        );
    }
}
