//! Labels and uberblocks on the member devices: reading a device's label
//! (and probing one without importing), choosing the label import uses,
//! writing labels, erasing a joining device's uberblocks and a destroyed
//! pool's labels, finding the newest intact checkpoint through the
//! uberblock rings, and catching members up on the newest uberblock.
//!
//! Keeps invariant 1 (acknowledged writes survive) by writing each label
//! copy durably before the next (a power cut tears at most one), taking
//! the newest uberblock whose checkpoint reads back intact, and keeping
//! every healthy member at most one uberblock behind; and invariant 7 (a
//! corrupt device gets a clear error) by naming a device with no valid
//! label, or a format this release cannot read.

use std::path::Path;

use crate::buf::AlignedBuf;
use crate::device::{Device, FileDevice};
use crate::error::{Error, ErrorKind, Result};
use crate::format::label::Label;
use crate::format::uberblock::Uberblock;
use crate::layout::{
    BLOCK, DATA_START, LABEL_A_OFFSET, LABEL_B_OFFSET, LABEL_SIZE, UBERBLOCK_RING_OFFSET,
    UBERBLOCK_SLOTS,
};
use crate::pool::ckpt::{self, Checkpoint};
use crate::pool::vdev::{MemberState, Vdevs};

fn write_raw(dev: &dyn Device, offset: u64, data: &[u8]) -> Result<()> {
    let mut b = AlignedBuf::zeroed(data.len().div_ceil(BLOCK) * BLOCK);
    b.as_mut_slice()[..data.len()].copy_from_slice(data);
    dev.write_at(b.as_slice(), offset)
        .map_err(|e| Error::io(format!("write to {} failed", dev.describe()), e))
}

fn read_raw(dev: &dyn Device, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut b = AlignedBuf::zeroed(len);
    dev.read_at(b.as_mut_slice(), offset)
        .map_err(|e| Error::io(format!("read from {} failed", dev.describe()), e))?;
    Ok(b.as_slice().to_vec())
}

/// Read both labels of a device; the valid one with the higher txg.
pub(super) fn read_label(dev: &dyn Device) -> Result<Label> {
    let mut best: Option<Label> = None;
    let mut last_err = None;
    let mut newer = None;
    for off in [LABEL_A_OFFSET, LABEL_B_OFFSET] {
        if dev.len() < off + LABEL_SIZE {
            continue;
        }
        let buf = match read_raw(dev, off, LABEL_SIZE as usize) {
            Ok(b) => b,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        match Label::decode(&buf) {
            Ok(l) => {
                if best.as_ref().is_none_or(|b| l.txg > b.txg) {
                    best = Some(l);
                }
            }
            Err(crate::error::DecodeError::Version(v)) => newer = Some(v),
            Err(e) => last_err = Some(Error::from(e)),
        }
    }
    if let (None, Some(v)) = (&best, newer) {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{} holds an edgevol pool of format version {v}, which this release \
                 (format {}) cannot read: import it with the release that made it or a newer one",
                dev.describe(),
                crate::format::envelope::FORMAT_VERSION
            ),
        ));
    }
    best.ok_or_else(|| {
        let what = last_err.map(|e| e.to_string()).unwrap_or_default();
        Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "{} is not an edgevol pool device (no valid label: {what})",
                dev.describe()
            ),
        )
    })
}

/// Write the current layout, generation `txg`, to the labels of every
/// writable member (each with its own device guid), one device after the
/// other.
pub(crate) fn write_labels(vdevs: &Vdevs, pool_guid: u128, created: u64) -> Result<()> {
    let (layout, txg) = vdevs.layout.lock().clone();
    // Resilvering members (a replacement) first, each flushed before the
    // next: a label on an old member never names a device that has none
    // of its own.
    let mut members: Vec<_> = vdevs
        .devices()
        .map(|(_, m)| m)
        .filter(|m| m.state() != MemberState::Faulted)
        .collect();
    members.sort_by_key(|m| m.state() != MemberState::Resilvering);
    for m in members {
        let label = Label {
            pool_guid,
            pool_name: vdevs.name.clone(),
            device_guid: m.guid(),
            txg,
            created,
            layout: layout.clone(),
        };
        write_label(&*m.dev(), &label)?;
    }
    Ok(())
}

/// Write both copies of a device's label, each made durable before the
/// next is touched: a power cut tears at most one of them.
pub(crate) fn write_label(dev: &dyn Device, label: &Label) -> Result<()> {
    let b = label.encode()?;
    for off in [LABEL_A_OFFSET, LABEL_B_OFFSET] {
        write_raw(dev, off, &b)?;
        dev.flush()
            .map_err(|e| Error::io(format!("flush of {} failed", dev.describe()), e))?;
    }
    Ok(())
}

/// Make a device that joins a pool unable to look like any pool's device
/// (an old pool's uberblocks on it must never be picked up).
pub(crate) fn erase_uberblocks(dev: &dyn Device) -> Result<()> {
    write_raw(
        dev,
        UBERBLOCK_RING_OFFSET,
        &vec![0u8; (UBERBLOCK_SLOTS as usize) * BLOCK],
    )
}

pub(crate) fn probe(path: &Path) -> Result<(String, u128)> {
    let d = FileDevice::open_for_probe(path)?;
    let l = read_label(&d)?;
    Ok((l.pool_name, l.pool_guid))
}

/// Erase a destroyed pool from its devices: the first MiB (both labels
/// and the uberblock ring, so import no longer finds it) and the last MiB.
/// Those are the spans the daemon's foreign-data check reads before it
/// lets `pool create` take a file (see `docs/devices.md`): a destroyed
/// pool's files are taken again without `--force`.
pub(crate) fn wipe_labels(vdevs: &Vdevs) -> Result<()> {
    let zero = vec![0u8; DATA_START as usize];
    for (_, m) in vdevs.devices() {
        if m.state() == MemberState::Faulted {
            continue;
        }
        let dev = m.dev();
        write_raw(&*dev, 0, &zero)?;
        // Device lengths are whole blocks, so the tail start is aligned.
        let tail = dev.len().saturating_sub(DATA_START).max(DATA_START);
        if tail < dev.len() {
            write_raw(&*dev, tail, &zero[..(dev.len() - tail) as usize])?;
        }
        dev.flush()
            .map_err(|e| Error::io(format!("flush of {} failed", dev.describe()), e))?;
    }
    Ok(())
}

/// The label whose layout import uses: the newest — unless only devices
/// of the groups it adds carry it. That is a `pool add` cut before any
/// member of the pool recorded the new group (see `grow.rs`): the add did
/// not happen, the older layout holds, and the new devices are left out.
pub(super) fn choose_label(labels: &[Label]) -> Option<&Label> {
    let newest = labels.iter().max_by_key(|l| l.txg)?;
    let Some(older) = labels
        .iter()
        .filter(|l| l.txg < newest.txg)
        .max_by_key(|l| l.txg)
    else {
        return Some(newest);
    };
    let kept = older.layout.groups.len();
    if newest.layout.groups.len() <= kept {
        return Some(newest);
    }
    let added: std::collections::BTreeSet<u128> = newest.layout.groups[kept..]
        .iter()
        .flat_map(|g| g.devices.iter().map(|d| d.guid))
        .collect();
    let unconfirmed = labels
        .iter()
        .filter(|l| l.txg == newest.txg)
        .all(|l| added.contains(&l.device_guid));
    Some(if unconfirmed { older } else { newest })
}

/// Write the newest uberblock on every healthy member that lacks it.
///
/// A power cut between the members' uberblock writes leaves some of them
/// one uberblock behind, which is harmless (the checkpoint was
/// flushed on every member first). But if the pool then runs without a
/// checkpoint and the next one is cut the same way, those members are two
/// behind and would be taken for stale; in a parity group that can be more
/// members than it tolerates, and the pool would not import (found by
/// `edgevol test crash --layout parity1 --seed 20261207`). Copying the
/// uberblock to them at import keeps every healthy member at most one
/// behind.
pub(super) fn catch_up_uberblocks(
    vdevs: &Vdevs,
    ub: &Uberblock,
    stale: &[(usize, usize)],
) -> Result<()> {
    use std::sync::atomic::Ordering::SeqCst;
    let block = ub.encode();
    for (gi, g) in vdevs.groups.iter().enumerate() {
        for (mi, m) in g.members.iter().enumerate() {
            if stale.contains(&(gi, mi))
                || m.state() != MemberState::Online
                || m.newest_seq.load(SeqCst) >= ub.seq
            {
                continue;
            }
            let dev = m.dev();
            write_raw(&*dev, Uberblock::slot_offset(ub.seq), &block)?;
            dev.flush()
                .map_err(|e| Error::io(format!("flush of {} failed", dev.describe()), e))?;
            m.newest_seq.store(ub.seq, SeqCst);
        }
    }
    Ok(())
}

/// The newest uberblock whose checkpoint reads back intact.
pub(super) fn newest_checkpoint(vdevs: &Vdevs, guid: u128) -> Result<(Uberblock, Checkpoint)> {
    let mut ubs = Vec::new();
    for (_, m) in vdevs.devices() {
        if m.state() == MemberState::Faulted {
            continue;
        }
        let dev = m.dev();
        let ring = match read_raw(
            &*dev,
            UBERBLOCK_RING_OFFSET,
            UBERBLOCK_SLOTS as usize * BLOCK,
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(device = %dev.describe(), error = %e, "cannot read uberblocks");
                continue;
            }
        };
        let mut newest = 0;
        for slot in ring.chunks(BLOCK) {
            if let Ok(u) = Uberblock::decode(slot) {
                if u.pool_guid == guid {
                    newest = newest.max(u.seq);
                    ubs.push(u);
                }
            }
        }
        m.newest_seq
            .store(newest, std::sync::atomic::Ordering::SeqCst);
    }
    ubs.sort_by_key(|u| std::cmp::Reverse(u.seq));
    ubs.dedup_by_key(|u| u.seq);
    let mut last_err = Error::corrupt("no valid uberblock found");
    for u in ubs {
        let r = (|| {
            let mut b = AlignedBuf::zeroed((u.ckpt_len as usize).div_ceil(BLOCK) * BLOCK);
            let n = u.ckpt_len as usize;
            let ok = |x: &[u8]| crc32c::crc32c(&x[..n]) == u.ckpt_crc;
            // A copy that verifies (a stale or bad one is healed on the way).
            let _ = vdevs.read_checked(u.ckpt.seg, u64::from(u.ckpt.offset), b.as_mut_slice(), &ok);
            let buf = b.as_slice()[..n].to_vec();
            if crc32c::crc32c(&buf) != u.ckpt_crc {
                return Err(Error::corrupt(format!(
                    "checkpoint {} fails its checksum",
                    u.seq
                )));
            }
            let ck = ckpt::decode_checkpoint(&buf)?;
            if ck.seq != u.seq {
                return Err(Error::corrupt(format!(
                    "checkpoint {} has sequence {}",
                    u.seq, ck.seq
                )));
            }
            Ok(ck)
        })();
        match r {
            Ok(ck) => return Ok((u, ck)),
            Err(e) => {
                tracing::warn!(seq = u.seq, error = %e, "skipping a damaged checkpoint");
                last_err = e;
            }
        }
    }
    Err(last_err)
}
