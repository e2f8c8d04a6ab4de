//! Resilver (after `replace`): rebuild the new member's share of every
//! allocated segment from the other members while new writes already go
//! to it; the member becomes ONLINE (readable) at the end. Runs in the scan
//! slot of `scrub` (one scan at a time), paced as scrubs are.
//!
//! Keeps invariant 2 of shared/DESIGN.md (what is rebuilt comes from
//! verified copies or parity; a row that cannot be rebuilt is reported,
//! and the member does not come ONLINE over it).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::scrub::{end_scan, new_status, progress, run_scrub, scrub_status, Slot};
use super::space::SegState;
use super::vdev::MemberState;
use super::Shared;
use crate::error::Result;
use crate::layout::SegId;
use crate::map::Key;

/// Start resilvering member `m` of group `g` in a thread of its own, in
/// the scan slot the caller claimed.
pub(crate) fn start_resilver(
    sh: &Arc<Shared>,
    slot: Slot<'_>,
    g: usize,
    m: usize,
    entry: crate::format::label::DeviceLayout,
) -> Result<std::thread::JoinHandle<()>> {
    let total: u64 = {
        let t = sh.segs.lock();
        (0..sh.vdevs.groups[g].segments())
            .filter_map(|i| t.get(SegId::new(g as u8, i)))
            .map(|s| match s.state {
                SegState::Data => u64::from(s.written),
                SegState::Meta => sh.vdevs.segment_size,
                _ => 0,
            })
            .sum()
    };
    slot.spawn(sh, new_status("resilver", total), move |s| {
        let r = resilver(s, g, m, entry);
        end_scan(s, |x| x.resilver.as_mut(), r, None);
    })
}

/// Resilver several members, one after the other, in one thread; then
/// continue the scrub a restart interrupted, if any.
pub(crate) fn start_resilvers(
    sh: &Arc<Shared>,
    jobs: Vec<(usize, usize, crate::format::label::DeviceLayout)>,
    then_scrub: Option<Key>,
) -> Result<std::thread::JoinHandle<()>> {
    let slot = Slot::claim(sh)?;
    slot.spawn(sh, new_status("resilver", 0), move |s| {
        let mut r = Ok(true);
        for (g, m, entry) in jobs {
            r = resilver(s, g, m, entry);
            if !matches!(r, Ok(true)) {
                break;
            }
        }
        let scrub_from = then_scrub.filter(|_| matches!(r, Ok(true)));
        let next = scrub_from.map(|_| scrub_status(s));
        end_scan(s, |x| x.resilver.as_mut(), r, next);
        if let Some(from) = scrub_from {
            tracing::info!(pool = %s.name, "resuming the scrub a restart interrupted");
            let r = run_scrub(s, from);
            end_scan(s, |x| x.scrub.as_mut(), r, None);
        }
    })
}

/// Rebuild member `m` of group `g`: only allocated segments, only what was
/// written in them. Ok(false) if the pool closed first (the member stays
/// RESILVERING and the resilver starts over at the next import).
fn resilver(
    sh: &Shared,
    g: usize,
    m: usize,
    entry: crate::format::label::DeviceLayout,
) -> Result<bool> {
    let t0 = Instant::now();
    let n = sh.vdevs.groups[g].segments();
    let mut done = 0u64;
    for i in 0..n {
        if sh.closing.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let seg = SegId::new(g as u8, i);
        let _t = sh.gate.enter();
        let info = sh.segs.lock().get(seg).copied();
        let bytes = match info {
            Some(s) if s.state == SegState::Data => u64::from(s.written),
            Some(s) if s.state == SegState::Meta => sh.vdevs.segment_size,
            _ => 0,
        };
        if bytes > 0 {
            // Metadata is written by maintenance: copy it while none runs.
            let _m = (info.map(|s| s.state) == Some(SegState::Meta)).then(|| sh.maint_lock.lock());
            sh.vdevs.resilver_segment(seg, m, bytes)?;
            done += bytes;
        }
        progress(sh, |x| x.resilver.as_mut(), done, 0, t0);
        if let Some(st) = sh.scans.lock().resilver.as_mut() {
            st.total_bytes = st.total_bytes.max(done);
        }
    }
    // The layout already names the device (since `replace`, or it was
    // found stale at import); it is readable from now on, and the next
    // checkpoint no longer lists it as stale.
    debug_assert_eq!(
        sh.vdevs.layout.lock().0.groups[g].devices[m].guid,
        entry.guid
    );
    sh.vdevs.groups[g].members[m].set_state(MemberState::Online);
    super::maint::flush_now(sh)?;
    tracing::info!(pool = %sh.name, group = g, member = m, bytes = done, secs = t0.elapsed().as_secs_f64(), "resilver complete");
    Ok(true)
}
