//! The pool's devices: parsing a device list ([`parse_layout`]),
//! replacing a member (then resilvering it), adding a group, taking in
//! grown devices, scrubs, and pool status and check.
//!
//! Keeps invariant 2 (every read is verified; a mismatch is healed from
//! redundancy) by scrubbing and resilvering; invariant 1 (acknowledged
//! writes survive) by flushing before a replacement's resilver starts, so
//! everything written before the swap is copied to it; and invariant 7
//! (bad input gets a clear error) by refusing device lists that name a
//! device twice or make a group too small, and replacements that are too
//! small or already in the pool, before anything changes.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{
    check, grow, info, maint, open, raid, scrub, vdev, CheckReport, Expanded, Pool, PoolStatus,
};
use crate::device::{Device, FileDevice};
use crate::error::{Error, ErrorKind, Result};
use crate::format::label::GroupKind;
use crate::layout::MIN_SEGMENT_SIZE;

/// Parse a device list in `zpool create` form (see
/// [`Pool::create_on_paths`]) into groups.
pub fn parse_layout(spec: &[String]) -> Result<Vec<(GroupKind, Vec<String>)>> {
    let keyword = |t: &str| match t {
        "mirror" => Some(GroupKind::Mirror),
        "parity1" | "raidz1" | "raidz" => Some(GroupKind::Parity(1)),
        "parity2" | "raidz2" => Some(GroupKind::Parity(2)),
        _ => None,
    };
    let mut out: Vec<(GroupKind, Vec<String>)> = Vec::new();
    let mut open = false;
    for t in spec {
        if let Some(k) = keyword(t) {
            out.push((k, Vec::new()));
            open = true;
        } else if open {
            if let Some(g) = out.last_mut() {
                g.1.push(t.clone());
            }
        } else {
            out.push((GroupKind::Single, vec![t.clone()]));
        }
    }
    if out.is_empty() {
        return Err(Error::invalid("give at least one file or device"));
    }
    for (k, devs) in &out {
        raid::Geometry::new(*k, devs.len(), MIN_SEGMENT_SIZE).map_err(|_| {
            Error::invalid(match k {
                GroupKind::Mirror => "a mirror needs at least 2 devices".to_string(),
                GroupKind::Parity(p) => {
                    format!("a parity{p} group needs at least {} devices", p + 2)
                }
                GroupKind::Single => "a device is missing".to_string(),
            })
        })?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for d in out.iter().flat_map(|(_, d)| d) {
        if !seen.insert(d) {
            return Err(Error::invalid(format!("{d} is listed twice")));
        }
    }
    Ok(out)
}

impl Pool {
    /// Pool status.
    pub fn status(&self) -> PoolStatus {
        self.sh.settle_for_report();
        info::pool_status(&self.sh)
    }

    /// Verify all metadata and data checksums.
    pub fn check(&self) -> Result<CheckReport> {
        check::check(&self.sh)
    }

    /// Start a scrub in the background (see `pool status` for progress).
    pub fn scrub_start(&self) -> Result<()> {
        let h = scrub::start_scrub(&self.sh)?;
        self.threads.lock().push(h);
        Ok(())
    }

    /// Stop a running scrub.
    pub fn scrub_stop(&self) -> Result<()> {
        scrub::stop_scrub(&self.sh)
    }

    /// Wait until no scrub or resilver runs (tests, tools; the CLI's
    /// `--wait` polls `pool status` instead).
    pub fn wait_scans(&self) {
        while self.sh.scan_running.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replace device `old` (its path, or its guid in hex) with `new`,
    /// created sparse at the old one's size if it is a missing file, and
    /// resilver it in the background. The pool keeps serving throughout.
    pub fn replace(&self, old: &str, new: &Path) -> Result<()> {
        let (g, m) = self.find_member(old)?;
        let group = &self.sh.vdevs.groups[g];
        let need = crate::layout::DATA_START + u64::from(group.segments()) * group.geo.slot_bytes();
        let size = group.members[m].dev().len().max(need);
        let dev: Arc<dyn Device> = Arc::new(FileDevice::create_sparse(new, size)?);
        self.replace_with(old, dev)
    }

    /// `(group, member)` of device `old`: its path, or its guid in hex.
    fn find_member(&self, old: &str) -> Result<(usize, usize)> {
        let sh = &self.sh;
        sh.vdevs
            .groups
            .iter()
            .enumerate()
            .find_map(|(gi, g)| {
                g.members
                    .iter()
                    .position(|x| x.dev().describe() == old || format!("{:032x}", x.guid()) == old)
                    .map(|mi| (gi, mi))
            })
            .ok_or_else(|| Error::not_found(format!("pool {} has no device {old}", sh.name)))
    }

    /// [`Pool::replace`] with an opened device.
    pub fn replace_with(&self, old: &str, dev: Arc<dyn Device>) -> Result<()> {
        let _admin = self.admin.lock();
        let sh = &self.sh;
        // Claimed before anything changes: a replace refused because a
        // scrub runs leaves the old device in place.
        let slot = scrub::Slot::claim(sh)?;
        let new = PathBuf::from(dev.describe());
        let (g, m) = self.find_member(old)?;
        let group = &sh.vdevs.groups[g];
        if group.geo.tolerance() == 0 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "only a device of a mirror or parity group can be replaced",
            ));
        }
        if sh.vdevs.has_device(&new.display().to_string()) {
            return Err(Error::invalid(format!(
                "{} is already in the pool",
                new.display()
            )));
        }
        let segments = crate::format::label::Label::segments_for(dev.len(), group.geo.slot_bytes());
        if segments < group.segments() {
            let need =
                crate::layout::DATA_START + u64::from(group.segments()) * group.geo.slot_bytes();
            return Err(Error::invalid(format!(
                "{} is too small: it needs at least {need} bytes",
                new.display()
            )));
        }
        // A device that held another pool must not look like one.
        open::erase_uberblocks(&*dev)?;
        let guid: u128 = rand::random();
        let entry = crate::format::label::DeviceLayout {
            guid,
            path: dev.describe(),
            segments,
        };
        let old_desc = group.members[m].dev().describe();
        group.members[m].swap(
            vdev::MemberDev { dev, guid },
            vdev::MemberState::Resilvering,
        );
        // The layout names the new device at once: it is RESILVERING, so
        // every checkpoint lists it among the members whose data may be
        // stale, and an import before the resilver completes resilvers it
        // again (from the start) instead of reading it.
        {
            let mut l = sh.vdevs.layout.lock();
            l.0.groups[g].devices[m] = entry.clone();
            l.1 += 1;
        }
        open::write_labels(&sh.vdevs, sh.guid, sh.created)?;
        // Every write issued before the swap is on the devices (and so in
        // what the resilver copies) once this returns.
        maint::flush_now(sh)?;
        tracing::info!(pool = %sh.name, old = %old_desc, new = %new.display(), "replacing device; resilvering");
        let h = super::resilver::start_resilver(sh, slot, g, m, entry)?;
        self.threads.lock().push(h);
        Ok(())
    }

    /// Add a group of devices while the pool serves (`zpool add`); its
    /// index. See [`grow`] for the order that keeps it crash-safe. A group
    /// with less redundancy than the pool's other groups needs `force`.
    pub fn add_group(
        &self,
        kind: GroupKind,
        devices: Vec<Arc<dyn Device>>,
        force: bool,
    ) -> Result<usize> {
        let _admin = self.admin.lock();
        grow::add_group(&self.sh, kind, devices, force)
    }

    /// [`Pool::add_group`] on files or block devices, in `zpool add` form
    /// (`mirror A B`, `parity1 A B C`, or one plain path); missing files
    /// are created sparse at `size` bytes (default: the size of the
    /// pool's first device).
    pub fn add_on_paths(&self, spec: &[String], size: Option<u64>, force: bool) -> Result<usize> {
        let mut layout = parse_layout(spec)?;
        if layout.len() != 1 {
            return Err(Error::invalid(
                "add one group at a time: one device, or a keyword (mirror, parity1, parity2) and its devices",
            ));
        }
        let (kind, paths) = layout.remove(0);
        let size = size.unwrap_or_else(|| {
            self.sh
                .vdevs
                .groups
                .get(0)
                .and_then(|g| g.members.first())
                .map_or(0, |m| m.dev().len())
        });
        let mut devs: Vec<Arc<dyn Device>> = Vec::new();
        let mut created = Vec::new();
        let mut opened = || -> Result<()> {
            for p in &paths {
                let p = PathBuf::from(p);
                let existed = p.exists();
                devs.push(Arc::new(FileDevice::create_sparse(&p, size)?));
                if !existed {
                    created.push(p);
                }
            }
            Ok(())
        };
        let r = opened().and_then(|()| self.add_group(kind, devs, force));
        if r.is_err() {
            for c in &created {
                let _ = std::fs::remove_file(c);
            }
        }
        r
    }

    /// Take in the space of devices that grew (a file made longer, a
    /// block device resized): every group whose members all grew, or
    /// only the group of device `only`. What grew (empty: nothing did).
    pub fn expand(&self, only: Option<&str>) -> Result<Vec<Expanded>> {
        let _admin = self.admin.lock();
        let group = only.map(|d| self.find_member(d)).transpose()?;
        grow::expand(&self.sh, group.map(|(g, _)| g))
    }

    /// Resilver members found stale at import, one after the other.
    pub(crate) fn resilver_stale(
        &self,
        members: Vec<(usize, usize)>,
        then_scrub: Option<crate::map::Key>,
    ) -> Result<()> {
        let jobs = members
            .into_iter()
            .map(|(g, m)| {
                let l = self.sh.vdevs.layout.lock();
                (g, m, l.0.groups[g].devices[m].clone())
            })
            .collect();
        let h = super::resilver::start_resilvers(&self.sh, jobs, then_scrub)?;
        self.threads.lock().push(h);
        Ok(())
    }

    /// Continue the scrub a restart interrupted.
    pub(crate) fn resume_scrub(&self, from: crate::map::Key) -> Result<()> {
        let h = scrub::resume_scrub(&self.sh, from)?;
        self.threads.lock().push(h);
        Ok(())
    }
}
