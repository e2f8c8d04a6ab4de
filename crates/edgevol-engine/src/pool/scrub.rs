//! Scrub and resilver: background scans over a pool's stored data.
//!
//! **Scrub** walks every live map entry and verifies every copy of the
//! record it points to ([`Vdevs::scrub_span`]): both sides of a mirror,
//! the data columns and the parity of a parity group. Bad copies are
//! rewritten from good ones; records no copy can restore are reported
//! with their volume and block range. Parity that disagrees with verified
//! data is rewritten at the end of the pass, after every record in its
//! rows has been healed. The scan holds a reuse-gate ticket while it looks
//! at a page of entries, so no segment it reads is reused under it, and
//! it is paced: [`SCRUB_MAX_RATE`] on an idle pool, [`SCRUB_BUSY_RATE`]
//! while clients do I/O, so clients keep their latency.
//!
//! **Resilver** (after `replace`, module `resilver`) runs in the same scan
//! slot: one scan at a time per pool, with the status, pacing and progress
//! kept here.
//!
//! Keeps invariant 2 of shared/DESIGN.md (bad copies found are rewritten
//! from verified ones; what no copy restores is reported, never hidden).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::info::ScanStatus;
use super::space::SegState;
use super::{now_secs, Shared};
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{Paddr, SegId, BLOCK, BLOCK_U64};
use crate::map::Key;

/// Most bytes a scrub reads per second while clients are idle.
pub const SCRUB_MAX_RATE: u64 = 256 << 20;

/// Most bytes a scrub reads per second while clients do I/O (any client
/// operation within [`BUSY_WINDOW`]): a scrub yields to clients.
pub const SCRUB_BUSY_RATE: u64 = 16 << 20;

/// How recent a client operation makes the pool busy.
const BUSY_WINDOW: Duration = Duration::from_millis(200);

/// Map entries looked at per reuse-gate ticket.
const PAGE: usize = 4096;

/// Most bytes scrubbed with one read per copy.
const MAX_SPAN: u64 = 1 << 20;

/// The last or running scans.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scans {
    pub scrub: Option<ScanStatus>,
    pub resilver: Option<ScanStatus>,
}

/// Marks a scan failed and frees the slot if its thread panics (a scan
/// that ends frees it itself, in [`end_scan`]).
struct Running<'a>(&'a Shared);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut guard = self.0.scans.lock();
        let scans = &mut *guard;
        for st in [scans.scrub.as_mut(), scans.resilver.as_mut()]
            .into_iter()
            .flatten()
        {
            if st.state == "running" {
                st.state = "failed".into();
                st.error = Some("the scan thread panicked".into());
            }
        }
        self.0.scan_running.store(false, Ordering::SeqCst);
    }
}

fn is_running(st: &Option<ScanStatus>) -> bool {
    st.as_ref().is_some_and(|s| s.state == "running")
}

/// The scan slot (one scrub or resilver at a time), claimed: freed when
/// dropped, unless a scan thread took it over.
pub(crate) struct Slot<'a> {
    sh: &'a Shared,
    held: bool,
}

impl Slot<'_> {
    /// Claim the slot; Busy, naming the scan that runs, if it is taken.
    pub(crate) fn claim(sh: &Shared) -> Result<Slot<'_>> {
        let scans = sh.scans.lock();
        if sh.scan_running.swap(true, Ordering::SeqCst) {
            let what = if is_running(&scans.resilver) {
                "a resilver"
            } else if is_running(&scans.scrub) {
                "a scrub"
            } else {
                "a scrub or resilver"
            };
            return Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "{what} of pool {} is running; another scan can start when it has finished",
                    sh.name
                ),
            ));
        }
        sh.scan_stop.store(false, Ordering::SeqCst);
        Ok(Slot { sh, held: true })
    }

    /// Show `status` as the running scan and run `body` in a thread of its
    /// own, which frees the slot when it ends (even by a panic). The status
    /// is set before this returns, so a caller that looks at the pool's
    /// status next sees the scan running.
    pub(super) fn spawn(
        mut self,
        sh: &Arc<Shared>,
        status: ScanStatus,
        body: impl FnOnce(&Arc<Shared>) + Send + 'static,
    ) -> Result<std::thread::JoinHandle<()>> {
        let kind = status.kind.clone();
        {
            let mut scans = sh.scans.lock();
            match kind.as_str() {
                "resilver" => scans.resilver = Some(status),
                _ => scans.scrub = Some(status),
            }
        }
        let s = sh.clone();
        let h = std::thread::Builder::new()
            .name(format!("ev-{kind}-{}", sh.name))
            .spawn(move || {
                let _running = Running(&s);
                body(&s);
            })
            .map_err(|e| {
                let what = format!("cannot start the {kind} thread");
                let failed = Error::new(ErrorKind::Io, format!("{what}: {e}"));
                end_scan(sh, |x| pick_kind(x, &kind), Err(failed), None);
                Error::io(what, e)
            })?;
        self.held = false;
        Ok(h)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.held {
            let _scans = self.sh.scans.lock();
            self.sh.scan_running.store(false, Ordering::SeqCst);
        }
    }
}

fn pick_kind<'a>(x: &'a mut Scans, kind: &str) -> Option<&'a mut ScanStatus> {
    match kind {
        "resilver" => x.resilver.as_mut(),
        _ => x.scrub.as_mut(),
    }
}

pub(super) fn new_status(kind: &str, total: u64) -> ScanStatus {
    ScanStatus {
        kind: kind.into(),
        state: "running".into(),
        started: now_secs(),
        total_bytes: total,
        ..ScanStatus::default()
    }
}

/// A new scrub's status: over the live bytes now.
pub(super) fn scrub_status(sh: &Shared) -> ScanStatus {
    let total = sh.segs.lock().live_total();
    new_status("scrub", total)
}

/// Start a scrub in a thread of its own.
pub(crate) fn start_scrub(sh: &Arc<Shared>) -> Result<std::thread::JoinHandle<()>> {
    resume_scrub_at(sh, Key::new(0, 0, 0))
}

/// Continue a scrub a restart interrupted, from `from`.
pub(crate) fn resume_scrub(sh: &Arc<Shared>, from: Key) -> Result<std::thread::JoinHandle<()>> {
    tracing::info!(pool = %sh.name, "resuming the scrub a restart interrupted");
    resume_scrub_at(sh, from)
}

fn resume_scrub_at(sh: &Arc<Shared>, from: Key) -> Result<std::thread::JoinHandle<()>> {
    let slot = Slot::claim(sh)?;
    slot.spawn(sh, scrub_status(sh), move |s| {
        let r = run_scrub(s, from);
        end_scan(s, |x| x.scrub.as_mut(), r, None);
    })
}

/// Record where the scrub continues after a restart (best effort: a
/// failure only means it starts over from an older mark).
fn mark(sh: &Shared, at: Option<Key>) {
    let at = at.map(|k| (k.lineage, k.lba, k.birth));
    if let Err(e) = sh.control(super::writer::Control::ScrubAt { at }) {
        tracing::debug!(pool = %sh.name, error = %e, "cannot record the scrub position");
    }
}

/// A scrub pass from `from` (its status is set); the restart mark is kept
/// while it runs and cleared when it finishes or is stopped (not when the
/// pool closes under it: then it resumes at the next import).
pub(super) fn run_scrub(sh: &Shared, from: Key) -> Result<bool> {
    mark(sh, Some(from));
    let r = scrub(sh, from);
    if !sh.closing.load(Ordering::SeqCst) {
        mark(sh, None);
    }
    r
}

/// Ask a running scrub to stop.
pub(crate) fn stop_scrub(sh: &Shared) -> Result<()> {
    if !is_running(&sh.scans.lock().scrub) {
        return Err(Error::invalid("no scrub is running"));
    }
    sh.scan_stop.store(true, Ordering::SeqCst);
    Ok(())
}

/// Record how a scan ended in its status; then, in the same critical
/// section, either show `next` as the scan this thread runs now or free
/// the scan slot. Whoever sees the end in the pool's status can so start
/// the next scan at once.
pub(super) fn end_scan(
    sh: &Shared,
    pick: impl Fn(&mut Scans) -> Option<&mut ScanStatus>,
    r: Result<bool>,
    next: Option<ScanStatus>,
) {
    let mut scans = sh.scans.lock();
    if let Some(st) = pick(&mut scans) {
        st.ended = Some(now_secs());
        match r {
            Ok(true) => st.state = "finished".into(),
            Ok(false) => st.state = "stopped".into(),
            Err(e) => {
                tracing::error!(pool = %sh.name, kind = %st.kind, error = %e, "scan failed");
                st.state = "failed".into();
                st.error = Some(e.to_string());
            }
        }
        tracing::info!(pool = %sh.name, kind = %st.kind, state = %st.state, bytes = st.done_bytes, repaired = st.repaired_bytes, unrecoverable = st.unrecoverable.len(), "scan ended");
    }
    match next {
        Some(n) => scans.scrub = Some(n),
        None => sh.scan_running.store(false, Ordering::SeqCst),
    }
}

fn stopping(sh: &Shared) -> bool {
    sh.scan_stop.load(Ordering::SeqCst) || sh.closing.load(Ordering::SeqCst)
}

/// Update the running scan's progress.
pub(super) fn progress(
    sh: &Shared,
    pick: impl Fn(&mut Scans) -> Option<&mut ScanStatus>,
    done: u64,
    repaired: u64,
    t0: Instant,
) {
    let mut scans = sh.scans.lock();
    if let Some(st) = pick(&mut scans) {
        st.done_bytes = done;
        st.repaired_bytes = repaired;
        st.rate = (done as f64 / t0.elapsed().as_secs_f64().max(1e-3)) as u64;
    }
}

/// Paces a scrub's reads, across all its worker threads, by a leaky
/// bucket: [`SCRUB_MAX_RATE`] while clients are idle, [`SCRUB_BUSY_RATE`]
/// while they do I/O. Charged after every span, so reads never come in
/// bursts larger than one span per thread.
struct Pacer {
    /// When the next span may start.
    next: parking_lot::Mutex<Instant>,
    /// Client operations seen at the last look, and until when the pool
    /// counts as busy.
    seen: parking_lot::Mutex<(u64, Instant)>,
}

impl Pacer {
    fn new() -> Pacer {
        let now = Instant::now();
        Pacer {
            next: parking_lot::Mutex::new(now),
            seen: parking_lot::Mutex::new((0, now)),
        }
    }

    fn busy(&self, sh: &Shared, now: Instant) -> bool {
        let ops = sh.client_ops.load(Ordering::Relaxed);
        let mut seen = self.seen.lock();
        if ops != seen.0 {
            *seen = (ops, now + BUSY_WINDOW);
        }
        now < seen.1
    }

    /// Account for `bytes` just read; sleep until the bucket allows more.
    fn pace(&self, sh: &Shared, bytes: u64) {
        let now = Instant::now();
        let rate = if self.busy(sh, now) {
            SCRUB_BUSY_RATE
        } else {
            SCRUB_MAX_RATE
        };
        let wait = {
            let mut next = self.next.lock();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
            start.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            std::thread::sleep(wait.min(Duration::from_millis(200)));
        }
    }
}

/// Between two records of the restart position.
const MARK_EVERY: Duration = Duration::from_secs(5);

/// The scrub pass from map key `from`. Ok(false) if stopped.
fn scrub(sh: &Shared, from: Key) -> Result<bool> {
    let t0 = Instant::now();
    let mut marked = Instant::now();
    let (mut done, mut repaired) = (0u64, 0u64);
    let mut suspect: Vec<(SegId, u64, u64)> = Vec::new();
    let mut lo = from;
    let pacer = Pacer::new();
    let hi = Key::new(u32::MAX, u64::MAX, u64::MAX);
    loop {
        if stopping(sh) {
            return Ok(false);
        }
        let ticket = sh.gate.enter();
        let page = sh.scan(lo, hi, PAGE)?;
        let mut seen: std::collections::BTreeSet<Paddr> = Default::default();
        let mut items: Vec<Item> = Vec::new();
        for (k, v) in &page.entries {
            let Some(d) = v.data() else { continue };
            if !d.is_plain() && !seen.insert(d.paddr) {
                continue;
            }
            items.push(Item::of(k, v.nblocks(), d));
        }
        // Neighbouring records are scrubbed as one span (one read per
        // copy); a span that fails is scrubbed record by record, so a bad
        // block on each of two copies still heals.
        items.sort_by_key(|x| (x.seg, x.off));
        let mut spans: Vec<&[Item]> = Vec::new();
        let mut at = 0;
        while at < items.len() {
            let mut end = at + 1;
            while end < items.len()
                && items[end].seg == items[at].seg
                && items[end].off == items[end - 1].off + items[end - 1].len as u64
                && items[end].off + items[end].len as u64 - items[at].off <= MAX_SPAN
            {
                end += 1;
            }
            spans.push(&items[at..end]);
            at = end;
        }
        // A few spans at a time: the devices serve reads in parallel.
        let per = spans.len().div_ceil(sh.cfg.scan_threads.max(1)).max(1);
        let results: Vec<Result<SpanTally>> = std::thread::scope(|sc| {
            let workers: Vec<_> = spans
                .chunks(per)
                .map(|chunk| {
                    let pacer = &pacer;
                    sc.spawn(move || scrub_spans(sh, chunk, pacer))
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err(Error::corrupt("a scrub worker panicked")))
                })
                .collect()
        });
        for r in results {
            let (d, rep, sus) = r?;
            done += d;
            repaired += rep;
            suspect.extend(sus);
        }
        drop(ticket);
        progress(sh, |x| x.scrub.as_mut(), done, repaired, t0);
        match page.resume {
            Some(r) => lo = r,
            None => break,
        }
        if marked.elapsed() >= MARK_EVERY {
            mark(sh, Some(lo));
            marked = Instant::now();
        }
    }
    // Parity that disagreed with verified data: every record in those rows
    // has been verified and healed by now; rewrite the parity of rows that
    // still disagree, in sealed data segments (stable below `written`).
    suspect.sort_unstable();
    suspect.dedup();
    for (seg, r0, rows) in suspect {
        let _t = sh.gate.enter();
        let stable = sh.segs.lock().get(seg).is_some_and(|s| {
            s.state == SegState::Data
                && sh.vdevs.row_end(seg, (r0 + rows) * row_bytes(sh, seg)) <= u64::from(s.written)
        });
        if stable {
            repaired += sh.vdevs.repair_parity(seg, r0, rows)?;
        }
    }
    progress(sh, |x| x.scrub.as_mut(), done, repaired, t0);
    Ok(true)
}

/// (bytes done, bytes repaired, suspect parity rows) of some spans.
type SpanTally = (u64, u64, Vec<(SegId, u64, u64)>);

/// Scrub `spans` (each a run of adjacent records); returns (bytes done,
/// bytes repaired, suspect parity rows).
fn scrub_spans(sh: &Shared, spans: &[&[Item]], pacer: &Pacer) -> Result<SpanTally> {
    let (mut done, mut repaired, mut suspect) = (0u64, 0u64, Vec::new());
    for group in spans {
        let (seg, off) = (group[0].seg, group[0].off);
        let len = group.iter().map(|x| x.len).sum::<usize>();
        let ok = |b: &[u8]| {
            group.iter().all(|x| {
                let s = (x.off - off) as usize;
                b.get(s..s + x.len).is_some_and(|part| x.verify(part))
            })
        };
        let whole = if group.len() > 1 {
            sh.vdevs.scrub_span(seg, off, len, &ok, &mut suspect).ok()
        } else {
            None
        };
        match whole {
            Some(r) => repaired += r,
            None => {
                for x in *group {
                    let ok = |b: &[u8]| x.verify(b);
                    match sh.vdevs.scrub_span(x.seg, x.off, x.len, &ok, &mut suspect) {
                        Ok(r) => repaired += r,
                        Err(e) if e.kind() == ErrorKind::Corrupt => unrecoverable(sh, x, &e),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        done += len as u64;
        pacer.pace(sh, len as u64);
    }
    Ok((done, repaired, suspect))
}

/// One record (or live fragment of a plain record) to scrub.
struct Item {
    seg: SegId,
    /// Aligned span in the segment.
    off: u64,
    len: usize,
    /// Plain: checksum of each block of the span.
    csums: Vec<u32>,
    /// Packed: where the stored bytes lie in the span, and their crc.
    stored: Option<(usize, usize, u32)>,
    lineage: u32,
    lba: u64,
    nblocks: u64,
}

impl Item {
    fn of(k: &Key, nblocks: u8, d: &crate::map::DataRef) -> Item {
        let (off, len, csums, stored) = if d.is_plain() {
            (
                u64::from(d.paddr.offset) + u64::from(d.rec_off) * BLOCK_U64,
                usize::from(d.nblocks) * BLOCK,
                d.csums.to_vec(),
                None,
            )
        } else {
            let start = u64::from(d.paddr.offset) & !(BLOCK_U64 - 1);
            let end =
                (u64::from(d.paddr.offset) + u64::from(d.stored_len)).next_multiple_of(BLOCK_U64);
            let lo = (u64::from(d.paddr.offset) - start) as usize;
            let crc = d.csums.first().copied().unwrap_or(0);
            (
                start,
                (end - start) as usize,
                Vec::new(),
                Some((lo, d.stored_len as usize, crc)),
            )
        };
        Item {
            seg: d.paddr.seg,
            off,
            len,
            csums,
            stored,
            lineage: k.lineage,
            lba: k.lba,
            nblocks: u64::from(nblocks),
        }
    }

    fn verify(&self, b: &[u8]) -> bool {
        match self.stored {
            None => super::volume::blocks_match(b, &self.csums),
            Some((lo, n, crc)) => b.get(lo..lo + n).map(crc32c::crc32c) == Some(crc),
        }
    }
}

fn unrecoverable(sh: &Shared, x: &Item, e: &Error) {
    let what = format!(
        "{} blocks {}..{}: {e}",
        lineage_name(sh, x.lineage),
        x.lba,
        x.lba + x.nblocks
    );
    tracing::error!(pool = %sh.name, segment = ?x.seg, offset = x.off, "scrub: unrecoverable: {what}");
    sh.stats.checksum_errors.fetch_add(1, Ordering::Relaxed);
    if let Some(st) = sh.scans.lock().scrub.as_mut() {
        if st.unrecoverable.len() < 100 {
            st.unrecoverable.push(what);
        }
    }
}

fn row_bytes(sh: &Shared, seg: SegId) -> u64 {
    u64::from(sh.vdevs.row_blocks(seg.group as usize)) * BLOCK_U64
}

/// `POOL/VOLUME` (or `@SNAPSHOT`) whose data lineage `l` holds.
fn lineage_name(sh: &Shared, l: u32) -> String {
    let cat = sh.catalog();
    if let Some(v) = cat.volumes.values().find(|v| v.head == l) {
        return format!("{}/{}", sh.name, v.name);
    }
    format!("{}/(lineage {l})", sh.name)
}
