//! Flatten (promote): copy everything a clone still reads from its
//! origin into the clone's root lineage, then detach it. Keeps
//! invariant 4 (every view of the volume reads the same before and after;
//! a failed flatten leaves it a clone, its copies garbage) and invariant 3
//! (the copies are the origin's bytes the clone already saw).

use std::sync::Arc;

use bytes::Bytes;

use super::send;
use crate::chunk::PieceKind;
use crate::error::{Error, Result};
use crate::layout::BLOCK_U64;
use crate::pool::writer::{Control, MaintOp};
use crate::pool::Shared;

/// Copy everything a clone still reads from its origin into its own
/// history, then cut the link.
///
/// All lineages of a volume (its head, and the branches rollbacks left
/// behind) descend from one root lineage, the only one whose parent lies
/// outside the volume. Flattening the root makes every view of the volume
/// (head and snapshots) independent: copies are born at the root's base
/// epoch, so every entry the root already has, at any birth, still wins in
/// the views that see it.
pub(crate) fn flatten(sh: &Arc<Shared>, name: &str) -> Result<()> {
    let cat = sh.catalog();
    let v = cat.volume_by_name(name)?.clone();
    let root_id = cat.root_lineage(v.id)?;
    let root = cat
        .lineages
        .get(&root_id)
        .cloned()
        .ok_or_else(|| Error::corrupt("volume without a root lineage"))?;
    let Some((pl, pe)) = root.parent else {
        // Already independent; still a durable management op like any other.
        let _g = sh.maint_lock.lock();
        sh.control(Control::Detach { vol: v.id })?;
        return Ok(());
    };
    sh.control(Control::Flattening {
        vol: v.id,
        active: true,
    })?;
    let r = copy_origin(sh, name, &v, root_id, &root, (pl, pe));
    if r.is_err() {
        // The copies are garbage now; the volume stays a clone.
        let _ = sh.control(Control::Flattening {
            vol: v.id,
            active: false,
        });
    }
    r
}

/// The body of [`flatten`]: copy every block the clone reads from its
/// origin into its root lineage, then detach.
fn copy_origin(
    sh: &Arc<Shared>,
    name: &str,
    v: &crate::catalog::VolumeRec,
    root_id: u32,
    root: &crate::catalog::LineageRec,
    (pl, pe): (u32, u64),
) -> Result<()> {
    let cat = sh.catalog();
    if v.head == root_id && v.head_epoch == root.base_epoch {
        // New writes must be born strictly after the copies.
        sh.control(Control::BumpEpoch { vol: v.id })?;
    }
    let parent = cat.chain(pl, pe);
    // Every view of the root falls through to the parent, not only the
    // head: a snapshot taken before a shrink reads beyond the current size.
    // (Branch points of children are snapshots on the lineage too.)
    let blocks = cat
        .snapshots
        .values()
        .filter(|s| s.lineage == root_id)
        .map(|s| s.size)
        .chain((v.head == root_id).then_some(v.size))
        .max()
        .unwrap_or(v.size)
        / BLOCK_U64;
    // The reuse gate is held from the lookup to the last read of each
    // window, so the cleaner cannot move data out from under us.
    let mut copies: Vec<(u64, Bytes)> = Vec::new();
    let mut ticket = Some(sh.gate.enter());
    crate::pool::walk::for_each_populated(sh, &parent, 0, blocks, |pieces| {
        for p in pieces {
            if !matches!(p.kind, PieceKind::Data(_)) {
                continue;
            }
            // Plain data (decrypted and decompressed): the copy is stored
            // the way the clone stores new writes.
            let segs = futures::executor::block_on(crate::pool::volume::read_pieces(
                sh,
                std::slice::from_ref(p),
            ))
            .map_err(|e| {
                Error::new(
                    e.kind(),
                    format!("cannot flatten {name}: origin data at block {}: {e}", p.lba),
                )
            })?;
            for seg in segs {
                if let crate::pool::volume::ReadSeg::Data(b) = seg {
                    copies.push((p.lba, b));
                }
            }
        }
        // Hand the copies to the writer outside the gate (the writer may
        // have to wait for a grace period).
        ticket = None;
        for (lba, data) in copies.drain(..) {
            let (vol, lineage, parent, base) = (v.id, root_id, (pl, pe), root.base_epoch);
            send(sh, move |done| MaintOp::Copy {
                vol,
                lineage,
                parent,
                base,
                lba,
                data,
                done,
            })?;
        }
        ticket = Some(sh.gate.enter());
        Ok(())
    })?;
    drop(ticket);
    // No background flush may be half-way while the detach flushes.
    let _g = sh.maint_lock.lock();
    sh.control(Control::Detach { vol: v.id })?;
    Ok(())
}
