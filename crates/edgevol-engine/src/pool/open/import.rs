//! Importing a pool: matching devices to the layout by guid, leaving out
//! devices without a valid label, undoing an interrupted `pool add`,
//! finding members that missed writes, rebuilding the segment table from
//! the newest checkpoint, replaying the log, and starting the pool (with
//! any resilver or interrupted scrub).
//!
//! Keeps invariant 1 (acknowledged writes survive) by loading the newest
//! intact checkpoint and replaying everything after it; invariant 2 (every
//! read is verified) by never reading a member that may hold stale data —
//! it is RESILVERING until a resilver rewrote it; and invariant 7 (clear
//! errors) by refusing devices of another pool, truncated devices and
//! more missing members than a group tolerates, with their names.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::labels::{
    catch_up_uberblocks, choose_label, newest_checkpoint, read_label, write_labels,
};
use super::replay::replay;
use crate::device::Device;
use crate::error::{Error, ErrorKind, Result};
use crate::format::label::Label;
use crate::layout::SegId;
use crate::pool::ckpt;
use crate::pool::lifecycle::start;
use crate::pool::raid::Geometry;
use crate::pool::shared::shared;
use crate::pool::space::{SegState, SegmentTable};
use crate::pool::vdev::{MemberState, Vdevs};
use crate::pool::writer::Writer;
use crate::pool::{Pool, PoolConfig};

pub(crate) fn import(devices: Vec<Arc<dyn Device>>, cfg: PoolConfig) -> Result<Pool> {
    if devices.is_empty() {
        return Err(Error::invalid("no devices given"));
    }
    // A device without a valid label is left out, like a missing one (a
    // replacement whose label never became durable, a wiped disk): the
    // layout in the other labels says whether the pool can do without it.
    let mut labels = Vec::new();
    let mut devices_ok = Vec::new();
    let mut first_err = None;
    for d in devices {
        match read_label(&*d) {
            Ok(l) => {
                labels.push(l);
                devices_ok.push(d);
            }
            Err(e) => {
                tracing::warn!(device = %d.describe(), error = %e, "leaving out a device without a valid label");
                first_err.get_or_insert(e);
            }
        }
    }
    if let (true, Some(e)) = (labels.is_empty(), first_err) {
        return Err(e);
    }
    let devices = devices_ok;
    let guid = labels[0].pool_guid;
    if let Some(i) = labels.iter().position(|l| l.pool_guid != guid) {
        return Err(Error::invalid(format!(
            "{} belongs to pool {:?}, not {:?}",
            devices[i].describe(),
            labels[i].pool_name,
            labels[0].pool_name
        )));
    }
    let newest = choose_label(&labels)
        .cloned()
        .ok_or_else(|| Error::invalid("no labels"))?;
    let max_txg = labels.iter().map(|l| l.txg).max().unwrap_or(newest.txg);
    let layout = newest.layout.clone();
    // Match devices to layout positions by guid.
    let mut by_guid: BTreeMap<u128, Arc<dyn Device>> = BTreeMap::new();
    for (d, l) in devices.iter().zip(&labels) {
        by_guid.insert(l.device_guid, d.clone());
    }
    let mut groups = Vec::new();
    for g in &layout.groups {
        let geo = Geometry::new(g.kind, g.devices.len(), layout.segment_size)?;
        let mut members = Vec::new();
        for dl in &g.devices {
            let Some(d) = by_guid.get(&dl.guid).cloned() else {
                tracing::warn!(pool = %newest.pool_name, device = %dl.path, "device missing at import");
                members.push(None);
                continue;
            };
            if Label::segments_for(d.len(), geo.slot_bytes()) < dl.segments {
                return Err(Error::corrupt(format!(
                    "{} is smaller than when it joined pool {:?} (truncated?)",
                    d.describe(),
                    newest.pool_name
                )));
            }
            members.push(Some(d));
        }
        let missing = members.iter().filter(|m| m.is_none()).count();
        if missing > geo.tolerance() {
            let names: Vec<&str> = g
                .devices
                .iter()
                .zip(&members)
                .filter(|(_, m)| m.is_none())
                .map(|(d, _)| d.path.as_str())
                .collect();
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "pool {:?} is missing device(s) {} and cannot do without them",
                    newest.pool_name,
                    names.join(", ")
                ),
            ));
        }
        groups.push(members);
    }
    let vdevs = Arc::new(Vdevs::new(&newest.pool_name, &layout, groups)?);
    // Past every generation seen, so a label written from now on is
    // newer than the labels of an add that `choose_label` undid; and when
    // it undid one, say so in every member's label at once: a member that
    // carried the add's layout but was missing now must not bring it back
    // later, naming devices the pool no longer lists.
    vdevs.layout.lock().1 = max_txg;
    if newest.txg < max_txg {
        tracing::warn!(pool = %newest.pool_name, "an interrupted `pool add` is undone; its devices are left out");
        vdevs.layout.lock().1 = max_txg + 1;
        write_labels(&vdevs, guid, newest.created)?;
    }
    let (ub, mut ck) = newest_checkpoint(&vdevs, guid)?;
    // A promote the crash interrupted left invisible copies: collect them
    // (the user runs `promote` again).
    ck.catalog.abandon_flattens();
    // A member of a redundant group that the checkpoint names as not
    // receiving writes (it was FAULTED, missing, or resilvering), or that
    // missed more than the newest uberblock, may hold stale data: it is
    // RESILVERING from here on (written, not read; replay included) and
    // resilvered once the pool runs. Lacking only the newest
    // uberblock is what a power cut between two members' uberblock writes
    // leaves, and harmless (the checkpoint was flushed on every member
    // before its uberblocks were written). A group added after the
    // checkpoint (its counters do not know it) has missed nothing: its
    // members got every write since they joined (what replay reads is
    // rewritten on every member anyway), they just carry no uberblock yet.
    let counters = ckpt::decode_counters(&ckpt::read_blob(&vdevs, &ck.counters)?)?;
    let known_groups = counters.segs.len();
    let stale: Vec<(usize, usize)> = vdevs
        .groups
        .iter()
        .enumerate()
        .filter(|(gi, g)| g.geo.tolerance() > 0 && *gi < known_groups)
        .flat_map(|(gi, g)| {
            let named = &ck.stale_members;
            g.members.iter().enumerate().filter_map(move |(mi, m)| {
                let seq = m.newest_seq.load(std::sync::atomic::Ordering::SeqCst);
                (m.state() == MemberState::Online
                    && (named.contains(&m.guid()) || seq + 1 < ub.seq))
                    .then_some((gi, mi))
            })
        })
        .collect();
    catch_up_uberblocks(&vdevs, &ub, &stale)?;
    for &(g, m) in &stale {
        tracing::warn!(pool = %newest.pool_name, device = %vdevs.groups[g].members[m].dev().describe(), "device missed recent writes; resilvering it");
        vdevs.groups[g].members[m].set_state(MemberState::Resilvering);
    }
    tracing::info!(pool = %newest.pool_name, seq = ub.seq, "importing pool");
    let sizes: Vec<u32> = vdevs.groups.iter().map(|g| g.segments()).collect();
    let mut segs = SegmentTable::from_counters(&sizes, layout.segment_size, &counters);
    segs.set_row_blocks(
        (0..vdevs.groups.len())
            .map(|g| vdevs.row_blocks(g))
            .collect(),
    );
    // Metadata ownership comes from the checkpoint, not the counters.
    let meta: Vec<SegId> = segs
        .iter()
        .filter(|(_, s)| s.state == SegState::Meta)
        .map(|(id, _)| id)
        .collect();
    for s in meta {
        segs.release(s);
    }
    for r in ck.manifest.runs() {
        segs.claim_meta_blocks(&r.extents);
    }
    segs.claim_meta_blocks(&ck.counters.extents);
    segs.pin_meta(ck.log_segment);
    for p in &ck.replay.streams {
        for s in [p.seg, p.next].into_iter().flatten() {
            segs.claim(s, SegState::Data);
        }
    }
    segs.rebuild_free();
    let (sh, data_rx, maint_rx) = shared(
        &newest.pool_name,
        guid,
        newest.created,
        vdevs,
        segs,
        cfg,
        ck.catalog.clone(),
    );
    sh.next_run_id
        .store(ck.next_run_id, std::sync::atomic::Ordering::SeqCst);
    sh.map.load(&ck.manifest)?;
    *sh.meta_roots.lock() = (ck.counters.extents.clone(), Some(ck.log_segment));
    *sh.lineage_delta.lock() = counters.lineage_delta.clone();
    let ckpt_end = sh
        .vdevs
        .row_end(ck.log_segment, u64::from(ub.ckpt.offset + ub.ckpt_len));
    let ckpt_log = (ck.log_segment, ckpt_end as u32);
    let mut w = Writer::new(
        sh.clone(),
        ck.catalog.clone(),
        ck.replay.streams.clone(),
        ck.next_lsn.max(ck.replay.lsn),
        ub.seq,
        ckpt_log,
        ck.counters.clone(),
        ck.replay.clone(),
    );
    let replayed = replay(&sh, &mut w, &ck)?;
    // Blocking device I/O: import runs on a plain thread.
    futures::executor::block_on(w.finish_replay(replayed > 0))?;
    if replayed > 0 {
        tracing::info!(pool = %sh.name, batches = replayed, "recovered from the log");
    }
    let pool = start(sh.clone(), w, data_rx, maint_rx);
    // A scrub a restart interrupted continues (after any resilver).
    let scrub_at = sh
        .catalog()
        .scrub_at
        .map(|(l, a, b)| crate::map::Key::new(l, a, b));
    if !stale.is_empty() {
        pool.resilver_stale(stale, scrub_at)?;
    } else if let Some(from) = scrub_at {
        pool.resume_scrub(from)?;
    }
    Ok(pool)
}
