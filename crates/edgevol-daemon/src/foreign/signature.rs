//! Naming what a device holds from the magic numbers of well-known formats.
//!
//! A pure function of the device's first and last MiB ([`Sample`]): no I/O,
//! so each format is unit-tested on synthetic buffers. The offsets are the
//! ones each format documents (and libblkid checks); the list and the
//! reasons for writing it by hand are in `docs/devices.md`. A format is
//! named only when its magic sits where the format puts it; anything else
//! non-zero in a regular file is caught by the caller as "data".

use std::fmt;

/// The part of a device the probes look at: its first and last
/// [`SAMPLE`] bytes (the whole device when it is smaller).
pub struct Sample<'a> {
    /// Bytes from offset 0.
    pub head: &'a [u8],
    /// The device's last bytes (ends at `len`).
    pub tail: &'a [u8],
    /// The device's size in bytes.
    pub len: u64,
}

/// Bytes read at each end of a device.
pub const SAMPLE: usize = 1 << 20;

/// A format found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// What it is, with its article: "an ext4 file system".
    pub what: &'static str,
    /// Its UUID (or serial number), as the format's own tools show it.
    pub uuid: Option<String>,
    /// Its label or name.
    pub label: Option<String>,
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)?;
        match (&self.uuid, &self.label) {
            (Some(u), Some(l)) => write!(f, " (UUID {u}, label {l:?})"),
            (Some(u), None) => write!(f, " (UUID {u})"),
            (None, Some(l)) => write!(f, " (label {l:?})"),
            (None, None) => Ok(()),
        }
    }
}

impl Sample<'_> {
    /// `n` bytes at absolute offset `off`, if the sample holds them.
    fn at(&self, off: u64, n: usize) -> Option<&[u8]> {
        let end = off.checked_add(n as u64)?;
        if end > self.len {
            return None;
        }
        if end <= self.head.len() as u64 {
            return self.head.get(off as usize..end as usize);
        }
        let tail_start = self.len - self.tail.len() as u64;
        let rel = off.checked_sub(tail_start)?;
        self.tail.get(rel as usize..rel as usize + n)
    }

    /// `n` bytes `back` bytes before the end.
    fn before_end(&self, back: u64, n: usize) -> Option<&[u8]> {
        self.at(self.len.checked_sub(back)?, n)
    }

    fn is(&self, off: u64, magic: &[u8]) -> bool {
        self.at(off, magic.len()) == Some(magic)
    }

    fn u16le(&self, off: u64) -> Option<u16> {
        Some(u16::from_le_bytes(self.at(off, 2)?.try_into().ok()?))
    }

    fn u32le(&self, off: u64) -> Option<u32> {
        Some(u32::from_le_bytes(self.at(off, 4)?.try_into().ok()?))
    }

    fn u32be(&self, off: u64) -> Option<u32> {
        Some(u32::from_be_bytes(self.at(off, 4)?.try_into().ok()?))
    }

    fn u64le(&self, off: u64) -> Option<u64> {
        Some(u64::from_le_bytes(self.at(off, 8)?.try_into().ok()?))
    }

    fn uuid(&self, off: u64) -> Option<String> {
        self.at(off, 16).and_then(uuid)
    }

    fn label(&self, off: u64, n: usize) -> Option<String> {
        self.at(off, n).and_then(text)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A 16-byte UUID in the usual 8-4-4-4-12 form; None if all zero.
fn uuid(b: &[u8]) -> Option<String> {
    if b.len() != 16 || b.iter().all(|&x| x == 0) {
        return None;
    }
    Some(format!(
        "{}-{}-{}-{}-{}",
        hex(&b[..4]),
        hex(&b[4..6]),
        hex(&b[6..8]),
        hex(&b[8..10]),
        hex(&b[10..])
    ))
}

/// A GUID stored mixed-endian (GPT): the first three fields little-endian.
fn guid(b: &[u8]) -> Option<String> {
    let mut s: [u8; 16] = b.try_into().ok()?;
    s[..4].reverse();
    s[4..6].reverse();
    s[6..8].reverse();
    uuid(&s)
}

/// A fixed-size text field: up to the first NUL, trailing spaces dropped;
/// None if empty.
fn text(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&x| x == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]);
    let s = s.trim_end_matches(' ');
    (!s.is_empty()).then(|| s.to_string())
}

fn found(what: &'static str, uuid: Option<String>, label: Option<String>) -> Option<Signature> {
    Some(Signature { what, uuid, label })
}

/// One probe: the format at its documented place, or None.
type Probe = fn(&Sample) -> Option<Signature>;

/// The probes, most specific first: a container (LUKS, LVM, RAID, bcache)
/// before the file systems its payload may carry, partition tables last
/// (FAT and NTFS boot sectors also end in 0x55AA).
const PROBES: &[Probe] = &[
    edgevol, luks, lvm2, md_raid, bcache, zfs, btrfs, xfs, ext, swap, iso9660, ntfs, fat, qcow,
    vmdk, vhdx, vhd, vdi, gpt, mbr,
];

/// The first well-known format found in `s`.
pub fn identify(s: &Sample) -> Option<Signature> {
    PROBES.iter().find_map(|p| p(s))
}

/// An edgevol label (of a pool whose label did not decode: one that does
/// is named by the caller with its pool).
fn edgevol(s: &Sample) -> Option<Signature> {
    use edgevol_engine::format::envelope::MAGIC;
    use edgevol_engine::layout::{LABEL_A_OFFSET, LABEL_B_OFFSET};
    (s.is(LABEL_A_OFFSET, &MAGIC) || s.is(LABEL_B_OFFSET, &MAGIC))
        .then(|| found("an edgevol device label", None, None))?
}

/// LUKS1/LUKS2: "LUKS\xba\xbe" at 0 (or LUKS2's second header "SKUL\xba\xbe"
/// at 16 KiB..512 KiB); version u16 BE at 6, UUID text at 168, LUKS2 label
/// at 24.
fn luks(s: &Sample) -> Option<Signature> {
    const SECONDARY: [u64; 6] = [0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000];
    let off = if s.is(0, b"LUKS\xba\xbe") {
        0
    } else {
        *SECONDARY.iter().find(|&&o| s.is(o, b"SKUL\xba\xbe"))?
    };
    let version = u16::from_be_bytes(s.at(off + 6, 2)?.try_into().ok()?);
    let uuid = s.label(off + 168, 40);
    if version == 2 {
        found("a LUKS2 encrypted volume", uuid, s.label(off + 24, 48))
    } else {
        found("a LUKS1 encrypted volume", uuid, None)
    }
}

/// LVM2 physical volume: "LABELONE" at the start of one of sectors 0-3,
/// "LVM2 001" at +24; the PV header at +offset (u32 LE at +20) starts with
/// the 32-character PV UUID.
fn lvm2(s: &Sample) -> Option<Signature> {
    (0..4u64).find_map(|sector| {
        let base = sector * 512;
        if !s.is(base, b"LABELONE") || !s.is(base + 24, b"LVM2 001") {
            return None;
        }
        let pv = u64::from(s.u32le(base + 20)?);
        let id = s.at(base + pv, 32).and_then(text).map(|id| {
            // lvm shows it as 6-4-4-4-4-4-6.
            let mut out = String::new();
            let mut rest = id.as_str();
            for n in [6, 4, 4, 4, 4, 4] {
                let (a, b) = rest.split_at(n.min(rest.len()));
                out.push_str(a);
                out.push('-');
                rest = b;
            }
            out.push_str(rest);
            out
        });
        found("an LVM2 physical volume", id, None)
    })
}

/// Linux MD RAID: superblock magic 0xa92b4efc (LE). Version 1.1 at 0, 1.2
/// at 4 KiB, 1.0 at 8 KiB before the end (4 KiB aligned); 0.90 in the
/// last 64 KiB-aligned 64 KiB block. v1: UUID at 16, name at 32 (32 bytes).
fn md_raid(s: &Sample) -> Option<Signature> {
    const MAGIC: u32 = 0xa92b_4efc;
    let end_v1 = (s.len / 512).checked_sub(16).map(|x| (x & !7) * 512);
    for off in [Some(0), Some(4096), end_v1].into_iter().flatten() {
        if s.u32le(off) == Some(MAGIC) && s.u32le(off + 4) == Some(1) {
            let uuid = s.uuid(off + 16);
            return found("a Linux RAID member (md)", uuid, s.label(off + 32, 32));
        }
    }
    let off_090 = (s.len & !0xffff).checked_sub(0x10000)?;
    if s.u32le(off_090) == Some(MAGIC) && s.u32le(off_090 + 4) == Some(0) {
        // 0.90 keeps its UUID in four u32 words: uuid0 at 20, 1-3 at 104.
        let mut u = Vec::with_capacity(16);
        u.extend_from_slice(s.at(off_090 + 20, 4)?);
        u.extend_from_slice(s.at(off_090 + 104, 12)?);
        return found("a Linux RAID member (md, 0.90)", uuid(&u), None);
    }
    None
}

/// bcache: the superblock at 4 KiB, magic (16 bytes) at +24, UUID at +40,
/// label at +72 (32 bytes).
fn bcache(s: &Sample) -> Option<Signature> {
    const MAGIC: [u8; 16] = [
        0xc6, 0x85, 0x73, 0xf6, 0x4e, 0x1a, 0x45, 0xca, 0x82, 0x65, 0xf5, 0x7f, 0x48, 0xba, 0x6d,
        0x81,
    ];
    s.is(4096 + 24, &MAGIC)
        .then(|| found("a bcache device", s.uuid(4096 + 40), s.label(4096 + 72, 32)))?
}

/// ZFS: each of the four 256 KiB labels (two at the start, two at the
/// end, at 256 KiB-aligned offsets) has an uberblock array in its second
/// half, slots of 1 KiB or more each starting with the magic 0x00bab10c
/// (host byte order).
fn zfs(s: &Sample) -> Option<Signature> {
    const MAGIC: u64 = 0x00ba_b10c;
    const LABEL: u64 = 256 << 10;
    let aligned = s.len & !(LABEL - 1);
    let labels = [
        Some(0),
        Some(LABEL),
        aligned.checked_sub(2 * LABEL),
        aligned.checked_sub(LABEL),
    ];
    let hit = labels.into_iter().flatten().any(|l| {
        (0..128).any(|slot| {
            let v = s.u64le(l + LABEL / 2 + slot * 1024);
            v == Some(MAGIC) || v == Some(MAGIC.swap_bytes())
        })
    });
    hit.then(|| found("a ZFS pool member", None, None))?
}

/// btrfs: superblock at 64 KiB, "_BHRfS_M" at +0x40, fsid at +0x20, label
/// at +0x12b (256 bytes).
fn btrfs(s: &Sample) -> Option<Signature> {
    const SB: u64 = 0x10000;
    s.is(SB + 0x40, b"_BHRfS_M").then(|| {
        found(
            "a btrfs file system",
            s.uuid(SB + 0x20),
            s.label(SB + 0x12b, 256),
        )
    })?
}

/// XFS: "XFSB" at 0, UUID at 32, label at 108 (12 bytes).
fn xfs(s: &Sample) -> Option<Signature> {
    s.is(0, b"XFSB")
        .then(|| found("an XFS file system", s.uuid(32), s.label(108, 12)))?
}

/// ext2/3/4: superblock at 1 KiB, magic 0xEF53 (LE) at 0x438; UUID at
/// +0x68, label at +0x78 (16 bytes). The version follows the feature
/// flags, as blkid decides it: a journal makes ext3, a feature ext3 does
/// not know makes ext4.
fn ext(s: &Sample) -> Option<Signature> {
    const SB: u64 = 1024;
    if s.u16le(SB + 0x38) != Some(0xef53) {
        return None;
    }
    let compat = s.u32le(SB + 0x5c)?;
    let incompat = s.u32le(SB + 0x60)?;
    let ro_compat = s.u32le(SB + 0x64)?;
    // ext3 knows: incompat FILETYPE|RECOVER|META_BG, ro_compat
    // SPARSE_SUPER|LARGE_FILE|BTREE_DIR.
    let what = if incompat & 0x8 != 0 {
        "an ext journal device"
    } else if incompat & !0x16 != 0 || ro_compat & !0x7 != 0 {
        "an ext4 file system"
    } else if compat & 0x4 != 0 {
        "an ext3 file system"
    } else {
        "an ext2 file system"
    };
    found(what, s.uuid(SB + 0x68), s.label(SB + 0x78, 16))
}

/// Swap: "SWAPSPACE2" (or the old "SWAP-SPACE") in the last 10 bytes of
/// the first page, for every page size Linux has (4 KiB to 64 KiB); v1
/// header: UUID at 0x40c, label at 0x41c (16 bytes).
fn swap(s: &Sample) -> Option<Signature> {
    [4096u64, 8192, 16384, 32768, 65536]
        .iter()
        .find_map(|&page| {
            if s.is(page - 10, b"SWAPSPACE2") {
                found("a swap area", s.uuid(0x40c), s.label(0x41c, 16))
            } else if s.is(page - 10, b"SWAP-SPACE") {
                found("a swap area (old format)", None, None)
            } else {
                None
            }
        })
}

/// ISO 9660: the first volume descriptor at 32 KiB, "CD001" at +1; the
/// volume identifier at +40 (32 bytes).
fn iso9660(s: &Sample) -> Option<Signature> {
    s.is(0x8001, b"CD001")
        .then(|| found("an ISO 9660 file system", None, s.label(0x8028, 32)))?
}

/// NTFS: "NTFS    " (OEM id) at 3; serial number (u64 LE) at 0x48.
fn ntfs(s: &Sample) -> Option<Signature> {
    if !s.is(3, b"NTFS    ") {
        return None;
    }
    let serial = s.u64le(0x48).map(|v| format!("{v:016X}"));
    found("an NTFS file system", serial, None)
}

/// FAT: boot sector ending in 0x55AA, file system type "FAT12   " /
/// "FAT16   " / "FAT     " at 0x36 (serial at 0x27, label at 0x2b) or
/// "FAT32   " at 0x52 (serial at 0x43, label at 0x47).
fn fat(s: &Sample) -> Option<Signature> {
    if !s.is(510, &[0x55, 0xaa]) {
        return None;
    }
    let (serial, label) = if s.is(0x52, b"FAT32   ") {
        (0x43, 0x47)
    } else if [b"FAT12   ", b"FAT16   ", b"FAT     "]
        .iter()
        .any(|m| s.is(0x36, *m))
    {
        (0x27, 0x2b)
    } else {
        return None;
    };
    let serial = s
        .u32le(serial)
        .map(|v| format!("{:04X}-{:04X}", v >> 16, v & 0xffff));
    let label = s.label(label, 11).filter(|l| l != "NO NAME");
    found("a FAT file system", serial, label)
}

/// qcow: "QFI\xfb" at 0, version (u32 BE) at 4.
fn qcow(s: &Sample) -> Option<Signature> {
    if !s.is(0, b"QFI\xfb") {
        return None;
    }
    match s.u32be(4)? {
        1 => found("a qcow image", None, None),
        _ => found("a qcow2 image", None, None),
    }
}

/// VMDK: a sparse extent ("KDMV" at 0) or a text descriptor.
fn vmdk(s: &Sample) -> Option<Signature> {
    (s.is(0, b"KDMV") || s.is(0, b"# Disk DescriptorFile"))
        .then(|| found("a VMDK image", None, None))?
}

/// VHDX: "vhdxfile" at 0.
fn vhdx(s: &Sample) -> Option<Signature> {
    s.is(0, b"vhdxfile")
        .then(|| found("a VHDX image", None, None))?
}

/// VHD: the footer's "conectix" in the last 512 bytes (511 in old
/// images), copied to 0 in dynamic disks.
fn vhd(s: &Sample) -> Option<Signature> {
    let at_end = |back| s.before_end(back, 8) == Some(b"conectix".as_slice());
    (s.is(0, b"conectix") || at_end(512) || at_end(511))
        .then(|| found("a VHD image", None, None))?
}

/// VirtualBox VDI: signature 0xbeda107f (u32 LE) at 0x40.
fn vdi(s: &Sample) -> Option<Signature> {
    (s.u32le(0x40) == Some(0xbeda_107f)).then(|| found("a VDI image", None, None))?
}

/// GPT: "EFI PART" in LBA 1 (at 512, or 4096 for 4 KiB sectors), or the
/// backup header in the last LBA; disk GUID at +56.
fn gpt(s: &Sample) -> Option<Signature> {
    let sectors = [512u64, 4096];
    let head = sectors.iter().map(|&o| Some(o));
    let tail = sectors.iter().map(|&b| s.len.checked_sub(b));
    head.chain(tail).flatten().find_map(|off| {
        s.is(off, b"EFI PART").then(|| {
            found(
                "a GPT partition table",
                s.at(off + 56, 16).and_then(guid),
                None,
            )
        })?
    })
}

/// MBR: 0x55AA at 510 and at least one of the four entries at 446 in use
/// (a type byte other than 0, a boot flag of 0x00 or 0x80).
fn mbr(s: &Sample) -> Option<Signature> {
    if !s.is(510, &[0x55, 0xaa]) {
        return None;
    }
    let used = (0..4)
        .filter_map(|i| s.at(446 + i * 16, 16))
        .filter(|e| e[4] != 0 && (e[0] == 0 || e[0] == 0x80))
        .count();
    if used == 0 {
        return None;
    }
    let id = s.u32le(440).filter(|&v| v != 0).map(|v| format!("{v:08x}"));
    found("an MBR partition table", id, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEN: usize = 4 << 20;

    /// A zeroed device of [`LEN`] bytes with `bytes` put at `off`.
    struct Img(Vec<u8>);

    impl Img {
        fn new() -> Img {
            Img(vec![0; LEN])
        }
        fn put(mut self, off: usize, bytes: &[u8]) -> Img {
            self.0[off..off + bytes.len()].copy_from_slice(bytes);
            self
        }
        fn end(self, back: usize, bytes: &[u8]) -> Img {
            let off = LEN - back;
            self.put(off, bytes)
        }
        fn identify(&self) -> Option<Signature> {
            identify(&Sample {
                head: &self.0[..SAMPLE],
                tail: &self.0[LEN - SAMPLE..],
                len: LEN as u64,
            })
        }
        fn what(&self) -> &'static str {
            self.identify().map(|s| s.what).unwrap_or("nothing")
        }
    }

    const U: [u8; 16] = [
        0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x60, 0x71, 0x82, 0x93, 0xa4, 0xb5, 0xc6, 0xd7, 0xe8, 0xf9,
        0x0a,
    ];
    const U_TEXT: &str = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f90a";

    #[test]
    fn zeroes_and_random_bytes_without_magic_name_nothing() {
        assert_eq!(Img::new().identify(), None);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut img = Img::new();
        for b in img.0.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        assert_eq!(img.identify(), None, "random bytes matched a format");
    }

    #[test]
    fn ext_versions_uuid_and_label() {
        let base = || {
            Img::new()
                .put(0x438, &0xef53u16.to_le_bytes())
                .put(1024 + 0x68, &U)
                .put(1024 + 0x78, b"data")
        };
        let sig = base().identify().expect("ext2");
        assert_eq!(sig.what, "an ext2 file system");
        assert_eq!(sig.uuid.as_deref(), Some(U_TEXT));
        assert_eq!(sig.label.as_deref(), Some("data"));
        assert_eq!(
            sig.to_string(),
            format!("an ext2 file system (UUID {U_TEXT}, label \"data\")")
        );
        let ext3 = base().put(1024 + 0x5c, &4u32.to_le_bytes());
        assert_eq!(ext3.what(), "an ext3 file system");
        // extents (incompat 0x40)
        let ext4 = base().put(1024 + 0x60, &0x40u32.to_le_bytes());
        assert_eq!(ext4.what(), "an ext4 file system");
        // metadata_csum (ro_compat 0x400)
        let ext4 = base().put(1024 + 0x64, &0x400u32.to_le_bytes());
        assert_eq!(ext4.what(), "an ext4 file system");
    }

    #[test]
    fn xfs_and_btrfs() {
        let x = Img::new().put(0, b"XFSB").put(32, &U).put(108, b"vol");
        let sig = x.identify().expect("xfs");
        assert_eq!(
            (sig.what, sig.uuid.as_deref(), sig.label.as_deref()),
            ("an XFS file system", Some(U_TEXT), Some("vol"))
        );
        let b = Img::new()
            .put(0x10040, b"_BHRfS_M")
            .put(0x10020, &U)
            .put(0x1012b, b"tank");
        let sig = b.identify().expect("btrfs");
        assert_eq!(
            (sig.what, sig.uuid.as_deref(), sig.label.as_deref()),
            ("a btrfs file system", Some(U_TEXT), Some("tank"))
        );
    }

    #[test]
    fn swap_at_every_page_size() {
        for page in [4096, 16384, 65536] {
            let s = Img::new()
                .put(page - 10, b"SWAPSPACE2")
                .put(0x40c, &U)
                .put(0x41c, b"sw");
            let sig = s.identify().expect("swap");
            assert_eq!(sig.what, "a swap area", "page {page}");
            assert_eq!(sig.label.as_deref(), Some("sw"));
        }
        assert_eq!(
            Img::new().put(4086, b"SWAP-SPACE").what(),
            "a swap area (old format)"
        );
    }

    #[test]
    fn lvm2_in_any_of_the_first_four_sectors() {
        for sector in 0..4 {
            let base = sector * 512;
            let img = Img::new()
                .put(base, b"LABELONE")
                .put(base + 20, &32u32.to_le_bytes())
                .put(base + 24, b"LVM2 001")
                .put(base + 32, b"abcdefghijklmnopqrstuvwxyz012345");
            let sig = img.identify().expect("lvm");
            assert_eq!(sig.what, "an LVM2 physical volume");
            assert_eq!(
                sig.uuid.as_deref(),
                Some("abcdef-ghij-klmn-opqr-stuv-wxyz-012345")
            );
        }
        // LABELONE of another label type is not LVM.
        assert_eq!(Img::new().put(0, b"LABELONE").identify(), None);
    }

    #[test]
    fn luks_one_and_two_primary_and_secondary() {
        let uuid = b"0b5f5a5e-8d2e-4f3c-9d55-3c3f1e0e6a11";
        let l1 = Img::new().put(0, b"LUKS\xba\xbe\x00\x01").put(168, uuid);
        let sig = l1.identify().expect("luks1");
        assert_eq!(sig.what, "a LUKS1 encrypted volume");
        assert_eq!(
            sig.uuid.as_deref(),
            Some(std::str::from_utf8(uuid).unwrap_or(""))
        );
        let l2 = Img::new()
            .put(0, b"LUKS\xba\xbe\x00\x02")
            .put(24, b"secret")
            .put(168, uuid);
        let sig = l2.identify().expect("luks2");
        assert_eq!(sig.what, "a LUKS2 encrypted volume");
        assert_eq!(sig.label.as_deref(), Some("secret"));
        let second = Img::new().put(0x4000, b"SKUL\xba\xbe\x00\x02");
        assert_eq!(second.what(), "a LUKS2 encrypted volume");
    }

    #[test]
    fn md_raid_every_superblock_place() {
        let magic = 0xa92b_4efcu32.to_le_bytes();
        for off in [0, 4096, LEN - 8192] {
            let img = Img::new()
                .put(off, &magic)
                .put(off + 4, &1u32.to_le_bytes())
                .put(off + 16, &U)
                .put(off + 32, b"host:0");
            let sig = img.identify().expect("md v1");
            assert_eq!(sig.what, "a Linux RAID member (md)", "at {off}");
            assert_eq!(sig.uuid.as_deref(), Some(U_TEXT));
            assert_eq!(sig.label.as_deref(), Some("host:0"));
        }
        let img = Img::new().end(65536, &magic);
        assert_eq!(img.what(), "a Linux RAID member (md, 0.90)");
    }

    #[test]
    fn bcache_and_zfs() {
        let magic = [
            0xc6, 0x85, 0x73, 0xf6, 0x4e, 0x1a, 0x45, 0xca, 0x82, 0x65, 0xf5, 0x7f, 0x48, 0xba,
            0x6d, 0x81,
        ];
        let b = Img::new().put(4096 + 24, &magic).put(4096 + 72, b"cache");
        assert_eq!(b.identify().and_then(|s| s.label).as_deref(), Some("cache"));
        let ub = 0x00ba_b10cu64.to_le_bytes();
        assert_eq!(Img::new().put(128 << 10, &ub).what(), "a ZFS pool member");
        assert_eq!(
            Img::new().put((384 << 10) + 5 * 1024, &ub).what(),
            "a ZFS pool member"
        );
        // L3, the last label, in the tail.
        assert_eq!(Img::new().end(128 << 10, &ub).what(), "a ZFS pool member");
        let be = 0x00ba_b10cu64.to_be_bytes();
        assert_eq!(Img::new().put(128 << 10, &be).what(), "a ZFS pool member");
    }

    #[test]
    fn boot_sectors_and_iso() {
        let ntfs = Img::new()
            .put(3, b"NTFS    ")
            .put(0x48, &0x0123_4567_89ab_cdefu64.to_le_bytes());
        let sig = ntfs.identify().expect("ntfs");
        assert_eq!(
            (sig.what, sig.uuid.as_deref()),
            ("an NTFS file system", Some("0123456789ABCDEF"))
        );
        let fat32 = Img::new()
            .put(0x52, b"FAT32   ")
            .put(0x43, &0x1234_abcdu32.to_le_bytes())
            .put(0x47, b"BOOT       ")
            .put(510, &[0x55, 0xaa]);
        let sig = fat32.identify().expect("fat32");
        assert_eq!(
            (sig.what, sig.uuid.as_deref(), sig.label.as_deref()),
            ("a FAT file system", Some("1234-ABCD"), Some("BOOT"))
        );
        let fat16 = Img::new()
            .put(0x36, b"FAT16   ")
            .put(0x2b, b"NO NAME    ")
            .put(510, &[0x55, 0xaa]);
        let sig = fat16.identify().expect("fat16");
        assert_eq!((sig.what, sig.label), ("a FAT file system", None));
        let iso = Img::new()
            .put(0x8000, b"\x01CD001")
            .put(0x8028, b"DEBIAN 13   ");
        let sig = iso.identify().expect("iso");
        assert_eq!(
            (sig.what, sig.label.as_deref()),
            ("an ISO 9660 file system", Some("DEBIAN 13"))
        );
    }

    #[test]
    fn partition_tables() {
        let gpt_guid = [
            0x4e, 0x3d, 0x2c, 0x1b, 0x60, 0x5f, 0x82, 0x71, 0x93, 0xa4, 0xb5, 0xc6, 0xd7, 0xe8,
            0xf9, 0x0a,
        ];
        for off in [512, 4096] {
            let g = Img::new().put(off, b"EFI PART").put(off + 56, &gpt_guid);
            let sig = g.identify().expect("gpt");
            assert_eq!(sig.what, "a GPT partition table");
            assert_eq!(sig.uuid.as_deref(), Some(U_TEXT), "mixed-endian GUID");
        }
        // Only the backup header left (the start was wiped).
        assert_eq!(
            Img::new().end(512, b"EFI PART").what(),
            "a GPT partition table"
        );
        // An MBR needs a used entry: a bare 0x55AA is not a table.
        let bare = Img::new().put(510, &[0x55, 0xaa]);
        assert_eq!(bare.identify(), None);
        let mbr = bare
            .put(446 + 16 + 4, &[0x83])
            .put(440, &[0xef, 0xbe, 0xad, 0xde]);
        let sig = mbr.identify().expect("mbr");
        assert_eq!(
            (sig.what, sig.uuid.as_deref()),
            ("an MBR partition table", Some("deadbeef"))
        );
        let bad_flag = Img::new()
            .put(510, &[0x55, 0xaa])
            .put(446, &[0x42, 0, 0, 0, 0x83]);
        assert_eq!(bad_flag.identify(), None);
    }

    #[test]
    fn disk_images() {
        let cases: [(Img, &str); 8] = [
            (Img::new().put(0, b"QFI\xfb\0\0\0\x03"), "a qcow2 image"),
            (Img::new().put(0, b"QFI\xfb\0\0\0\x01"), "a qcow image"),
            (Img::new().put(0, b"KDMV"), "a VMDK image"),
            (
                Img::new().put(0, b"# Disk DescriptorFile\n"),
                "a VMDK image",
            ),
            (Img::new().put(0, b"vhdxfile"), "a VHDX image"),
            (Img::new().end(512, b"conectix"), "a VHD image"),
            (Img::new().put(0, b"conectix"), "a VHD image"),
            (
                Img::new().put(0x40, &0xbeda_107fu32.to_le_bytes()),
                "a VDI image",
            ),
        ];
        for (img, what) in cases {
            assert_eq!(img.what(), what);
        }
    }

    #[test]
    fn edgevol_label_at_either_copy() {
        use edgevol_engine::format::envelope::MAGIC;
        assert_eq!(Img::new().put(0, &MAGIC).what(), "an edgevol device label");
        assert_eq!(
            Img::new().put(16 << 10, &MAGIC).what(),
            "an edgevol device label"
        );
    }

    #[test]
    fn small_devices_are_probed_without_overflow() {
        // A device smaller than one sample: head and tail are the same bytes.
        let mut b = vec![0u8; 3000];
        b[3..11].copy_from_slice(b"NTFS    ");
        let s = Sample {
            head: &b,
            tail: &b,
            len: b.len() as u64,
        };
        assert_eq!(identify(&s).map(|s| s.what), Some("an NTFS file system"));
        let tiny = [0u8; 7];
        let s = Sample {
            head: &tiny,
            tail: &tiny,
            len: 7,
        };
        assert_eq!(identify(&s), None);
    }
}
