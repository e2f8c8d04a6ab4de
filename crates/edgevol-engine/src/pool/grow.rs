//! Growing a pool while it serves: adding a group (`pool add`) and taking
//! in the space of members that grew (`pool online --expand`).
//!
//! Both follow one order, so that a crash at any point leaves a pool that
//! imports with either the old or the new size, never a checkpoint that
//! names a segment the labels do not have:
//!
//! 1. the new devices get their labels first (each flushed), naming the
//!    new layout; nothing else refers to them yet, and import leaves out
//!    a device whose label names a layout the others do not (it takes
//!    the newest layout among all labels it finds);
//! 2. every other member's label is rewritten with the new layout (each
//!    flushed; the layout generation `txg` rises by one);
//! 3. (add) a checkpoint, so the new members carry the newest uberblock
//!    before any checkpoint's counters know their group — import treats a
//!    member that lacks more than the newest uberblock as stale, except
//!    in a group the checkpoint does not know yet;
//! 4. only then does the segment table learn of the new segments, so no
//!    data or metadata can be written there before every label says they
//!    exist; a checkpoint records them.
//!
//! A new group's segments are free; the allocator stripes across groups
//! round-robin, so new writes spread over old and new groups alike. Data
//! already written stays where it is (the cleaner moves it when it
//! relocates a segment, like any other).

use std::sync::Arc;

use super::raid::Geometry;
use super::vdev::{Group, Member, MemberState};
use super::{maint, open, Shared};
use crate::device::Device;
use crate::error::{Error, ErrorKind, Result};
use crate::format::label::{DeviceLayout, GroupKind, GroupLayout, Label};
use crate::layout::DATA_START;

/// Fewest segments a member may bring (as at creation).
const MIN_SEGMENTS: u32 = 8;

/// Add a group of `devs` to the pool; its index. Unless `force`, a group
/// with less redundancy than the pool's groups have is refused (its loss
/// would take the whole pool with it).
pub(crate) fn add_group(
    sh: &Arc<Shared>,
    kind: GroupKind,
    devs: Vec<Arc<dyn Device>>,
    force: bool,
) -> Result<usize> {
    let vdevs = &sh.vdevs;
    let geo = Geometry::new(kind, devs.len(), vdevs.segment_size)?;
    let least = vdevs.groups.iter().map(|g| g.geo.tolerance()).min();
    if let Some(least) = least.filter(|&t| geo.tolerance() < t && !force) {
        return Err(Error::invalid(format!(
            "pool {} survives the loss of {least} device(s) per group; the new group survives {} \
             (give --force to add it anyway)",
            sh.name,
            geo.tolerance()
        )));
    }
    for d in &devs {
        if vdevs.has_device(&d.describe()) {
            return Err(Error::invalid(format!(
                "{} is already in the pool",
                d.describe()
            )));
        }
    }
    let mut entries = Vec::new();
    for d in &devs {
        let n = Label::segments_for(d.len(), geo.slot_bytes());
        if n < MIN_SEGMENTS {
            return Err(Error::invalid(format!(
                "{} is too small: {} bytes holds {n} segments of {} bytes; a device needs at least {} bytes",
                d.describe(),
                d.len(),
                geo.slot_bytes(),
                DATA_START + u64::from(MIN_SEGMENTS) * geo.slot_bytes()
            )));
        }
        entries.push(DeviceLayout {
            guid: rand::random(),
            path: d.describe(),
            segments: n,
        });
    }
    let segments = entries.iter().map(|e| e.segments).min().unwrap_or(0);
    let (mut layout, txg) = vdevs.layout.lock().clone();
    if layout.groups.len() >= super::vdev::MAX_GROUPS {
        return Err(Error::invalid(format!(
            "a pool has at most {} groups",
            super::vdev::MAX_GROUPS
        )));
    }
    layout.groups.push(GroupLayout {
        kind,
        devices: entries.clone(),
    });
    // 1. The new devices' labels.
    for (d, e) in devs.iter().zip(&entries) {
        open::erase_uberblocks(&**d)?;
        open::write_label(
            &**d,
            &Label {
                pool_guid: sh.guid,
                pool_name: sh.name.clone(),
                device_guid: e.guid,
                txg: txg + 1,
                created: sh.created,
                layout: layout.clone(),
            },
        )?;
    }
    // 2. The group joins the vdevs (I/O may address it from here on, and
    //    label and uberblock writes include it) and every label.
    let members = devs
        .into_iter()
        .zip(&entries)
        .map(|(d, e)| Member::new(d, e.guid, MemberState::Online))
        .collect();
    *vdevs.layout.lock() = (layout, txg + 1);
    let g = vdevs.push_group(Group::new(geo, members, segments))?;
    open::write_labels(vdevs, sh.guid, sh.created)?;
    // 3. A checkpoint whose uberblock every member carries, the new ones
    //    included, before any checkpoint knows the group: import takes a
    //    new member lacking the newest uberblock but one for stale only if
    //    the checkpoint knows its group (`open::import`).
    maint::flush_now(sh)?;
    // 4. The allocator may use it.
    sh.segs.lock().grow(g, segments, vdevs.row_blocks(g));
    tracing::info!(pool = %sh.name, group = g, kind = ?kind, segments, "added a group");
    maint::flush_now(sh)?;
    Ok(g)
}

/// What [`expand`] did to one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    /// The group's index.
    pub group: usize,
    /// Segments before.
    pub from: u32,
    /// Segments now.
    pub to: u32,
    /// Bytes of segment space added.
    pub bytes: u64,
}

/// Take in the space of members that grew: every group (or only group
/// `wanted`) whose members all grew gets their new size (the smallest
/// member's). Groups with a member that is not ONLINE are left alone
/// (with `wanted`, an error).
pub(crate) fn expand(sh: &Arc<Shared>, wanted: Option<usize>) -> Result<Vec<Expanded>> {
    let vdevs = &sh.vdevs;
    let (mut layout, txg) = vdevs.layout.lock().clone();
    let mut grown = Vec::new();
    for (gi, g) in vdevs.groups.iter().enumerate() {
        if wanted.is_some_and(|w| w != gi) {
            continue;
        }
        if g.members.iter().any(|m| m.state() != MemberState::Online) {
            if wanted.is_some() {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "group {gi} of pool {} is {}; replace or resilver its devices before expanding it",
                        sh.name,
                        g.state_name()
                    ),
                ));
            }
            continue;
        }
        let mut sizes = Vec::new();
        for m in &g.members {
            let dev = m.dev();
            let len = dev
                .refresh_len()
                .map_err(|e| Error::io(format!("cannot size {}", dev.describe()), e))?;
            sizes.push(Label::segments_for(len, g.geo.slot_bytes()));
        }
        let to = sizes.iter().copied().min().unwrap_or(0);
        let from = g.segments();
        if to <= from {
            continue;
        }
        for (d, n) in layout.groups[gi].devices.iter_mut().zip(&sizes) {
            d.segments = d.segments.max(*n);
        }
        grown.push(Expanded {
            group: gi,
            from,
            to,
            bytes: u64::from(to - from) * vdevs.segment_size,
        });
    }
    if grown.is_empty() {
        return Ok(grown);
    }
    *vdevs.layout.lock() = (layout, txg + 1);
    open::write_labels(vdevs, sh.guid, sh.created)?;
    for e in &grown {
        vdevs.groups[e.group].grow_to(e.to);
        sh.segs
            .lock()
            .grow(e.group, e.to, vdevs.row_blocks(e.group));
        tracing::info!(pool = %sh.name, group = e.group, from = e.from, to = e.to, "expanded a group");
    }
    maint::flush_now(sh)?;
    Ok(grown)
}
