//! Whether a device or file is in use by the system right now: mounted,
//! a loop device's backing file, active swap, held by device-mapper or md
//! (sysfs holders), or claimed exclusively (an `O_EXCL` open of a block
//! device fails with EBUSY). In use is refused even with `--force`.
//!
//! The parsers take the files' text, so they are unit-tested on samples.

use std::path::{Path, PathBuf};

/// A block device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNum {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl DevNum {
    /// Split a `st_rdev` the way glibc's `major()`/`minor()` do.
    pub fn from_rdev(dev: u64) -> DevNum {
        DevNum {
            major: (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32,
            minor: (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32,
        }
    }

    /// Parse `MAJ:MIN`.
    fn parse(s: &str) -> Option<DevNum> {
        let (a, b) = s.trim().split_once(':')?;
        Some(DevNum {
            major: a.parse().ok()?,
            minor: b.parse().ok()?,
        })
    }
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The device number of the mounted file system.
    pub dev: DevNum,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// File system type.
    pub fstype: String,
    /// The mount source (`/dev/sdb1`, a file for some types, `none`).
    pub source: String,
}

/// Undo mountinfo's octal escapes (`\040` for a space, `\011`, `\012`,
/// `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse `/proc/self/mountinfo` (proc(5)): `ID PARENT MAJ:MIN ROOT
/// MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
/// Lines that do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let mut r = right.split(' ');
            Some(Mount {
                dev: DevNum::parse(l.get(2)?)?,
                mount_point: PathBuf::from(unescape(l.get(4)?)),
                fstype: unescape(r.next()?),
                source: unescape(r.next()?),
            })
        })
        .collect()
}

/// The files in `/proc/swaps` (the first column after the header).
pub fn parse_swaps(text: &str) -> Vec<PathBuf> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

/// Why a path may not be claimed, in words for the error message.
pub type Reason = String;

fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

fn swaps() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/swaps")
        .map(|t| parse_swaps(&t))
        .unwrap_or_default()
}

fn is_swap(path: &Path) -> Option<Reason> {
    swaps()
        .iter()
        .any(|s| s == path)
        .then(|| "is in use as swap (swapoff it first)".to_string())
}

/// Checks for a regular file (`path` canonical): a mount point or mount
/// source, a loop device's backing file, active swap.
pub fn file_in_use(path: &Path) -> Option<Reason> {
    let text = path.to_string_lossy();
    for m in mounts() {
        if m.mount_point == path {
            return Some(format!("is a mount point ({})", m.fstype));
        }
        if m.source == text {
            return Some(format!(
                "is mounted on {} ({})",
                m.mount_point.display(),
                m.fstype
            ));
        }
    }
    if let Some(loopdev) = loop_backed_by(path) {
        return Some(format!(
            "is the backing file of {loopdev} (detach it first: losetup -d {loopdev})"
        ));
    }
    is_swap(path)
}

/// The loop device whose backing file is `path`, if any.
fn loop_backed_by(path: &Path) -> Option<String> {
    let dir = std::fs::read_dir("/sys/block").ok()?;
    dir.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
        // The kernel shows the path it was given at setup, with
        // " (deleted)" once the file was removed.
        (Path::new(backing.trim_end()) == path).then(|| format!("/dev/{name}"))
    })
}

/// A block device's directory in sysfs (`/sys/dev/block/MAJ:MIN` resolved).
fn sysfs_dir(dev: DevNum) -> Option<PathBuf> {
    std::fs::canonicalize(format!("/sys/dev/block/{dev}")).ok()
}

fn dev_of(sysdir: &Path) -> Option<DevNum> {
    DevNum::parse(&std::fs::read_to_string(sysdir.join("dev")).ok()?)
}

fn holders(sysdir: &Path) -> Vec<String> {
    std::fs::read_dir(sysdir.join("holders"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Checks for a block device (`path` canonical, number `dev`): it or one
/// of its partitions mounted, used as swap, or held by another block
/// device (device-mapper, md, bcache).
pub fn block_in_use(path: &Path, dev: DevNum) -> Option<Reason> {
    let mounts = mounts();
    let mounted = |d: DevNum, p: &Path| {
        mounts
            .iter()
            .find(|m| m.dev == d || Path::new(&m.source) == p)
            .map(|m| format!("on {} ({})", m.mount_point.display(), m.fstype))
    };
    if let Some(on) = mounted(dev, path) {
        return Some(format!("is mounted {on}"));
    }
    if let Some(r) = is_swap(path) {
        return Some(r);
    }
    let sysdir = sysfs_dir(dev)?;
    if let Some(h) = holders(&sysdir).first() {
        return Some(format!("is held by /dev/{h} (device-mapper, md or bcache)"));
    }
    // Partitions are subdirectories with a `partition` file.
    let parts = std::fs::read_dir(&sysdir).ok()?;
    for p in parts.flatten().map(|e| e.path()) {
        if !p.join("partition").exists() {
            continue;
        }
        let name = p.file_name()?.to_string_lossy().into_owned();
        let pdev = Path::new("/dev").join(&name);
        if let Some(d) = dev_of(&p) {
            if let Some(on) = mounted(d, &pdev) {
                return Some(format!("has partition {} mounted {on}", pdev.display()));
            }
        }
        if let Some(r) = is_swap(&pdev) {
            return Some(format!("has partition {} that {r}", pdev.display()));
        }
        if let Some(h) = holders(&p).first() {
            return Some(format!("has partition {} held by /dev/{h}", pdev.display()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw,errors=remount-ro
35 22 0:31 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
45 27 7:0 / /tmp/probe\\040try/m rw,relatime - ext4 /dev/loop0 rw
46 22 8:17 / /boot/efi rw,relatime shared:29 master:3 - vfat /dev/sdb1 rw,fmask=0077
47 22 0:52 /x.img /srv/bound.img rw,relatime - tmpfs tmpfs rw
garbage line without a separator
";

    #[test]
    fn mountinfo_lines_with_optional_fields_and_escapes() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 5, "{m:?}");
        assert_eq!(m[0].dev, DevNum { major: 8, minor: 2 });
        assert_eq!(m[0].mount_point, Path::new("/"));
        assert_eq!(m[0].source, "/dev/sda2");
        assert_eq!(m[2].mount_point, Path::new("/tmp/probe try/m"));
        assert_eq!(m[2].dev, DevNum { major: 7, minor: 0 });
        // Two optional fields before the separator.
        assert_eq!(m[3].fstype, "vfat");
        assert_eq!(m[3].source, "/dev/sdb1");
        assert_eq!(m[4].mount_point, Path::new("/srv/bound.img"));
    }

    #[test]
    fn swaps_skip_the_header() {
        let t = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                 /dev/sda3                               partition\t8388604\t\t0\t\t-2\n\
                 /swap\\040file                          file\t\t1048572\t\t0\t\t-3\n";
        assert_eq!(
            parse_swaps(t),
            [PathBuf::from("/dev/sda3"), PathBuf::from("/swap file")]
        );
    }

    #[test]
    fn device_numbers_split_like_glibc() {
        // makedev(8, 17) and makedev(259, 1048577) in glibc's encoding.
        let enc = |ma: u64, mi: u64| {
            ((ma & 0xfff) << 8) | ((ma & !0xfff) << 32) | (mi & 0xff) | ((mi & !0xff) << 12)
        };
        assert_eq!(
            DevNum::from_rdev(enc(8, 17)),
            DevNum {
                major: 8,
                minor: 17
            }
        );
        assert_eq!(
            DevNum::from_rdev(enc(259, 1_048_577)),
            DevNum {
                major: 259,
                minor: 1_048_577
            }
        );
        assert_eq!(
            DevNum::parse("7:12\n"),
            Some(DevNum {
                major: 7,
                minor: 12
            })
        );
        assert_eq!(DevNum::parse("7"), None);
    }
}
