//! Repair: heal a bad copy with known-good bytes, scrub a span (verify
//! every copy, or data and parity), rewrite a parity row, and resilver a
//! replacement member from the others. Keeps invariant 2 (bad copies are
//! healed from redundancy, or the span is reported corrupt) without
//! changing live data: a heal writes the bytes the row already holds.

use std::sync::atomic::Ordering;

use super::{aligned, dev_read, dev_write, run_sync, Vdevs};
use crate::buf::AlignedBuf;
use crate::device::IoMode;
use crate::error::{Error, Result};
use crate::layout::SegId;
use crate::pool::raid;

impl Vdevs {
    /// Write `data` (known good) over member `m`'s copy at device offset `at`.
    pub(super) async fn heal(&self, seg: SegId, m: usize, at: u64, data: &[u8], io: IoMode) {
        let g = &self.groups[seg.group as usize];
        let mem = &g.members[m];
        mem.stats.checksum_errors.fetch_add(1, Ordering::Relaxed);
        if !mem.writable() || self.poisoned().is_some() {
            return;
        }
        match dev_write(&mem.dev(), at, aligned(data), io).await {
            Ok(_) => {
                mem.stats
                    .repaired_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                tracing::warn!(pool = %self.name, device = %mem.dev().describe(), segment = ?seg, offset = at, bytes = data.len(), "repaired a bad copy");
            }
            Err(e) => {
                mem.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                let _ = self.member_failed(seg.group as usize, m, "repair write", e);
            }
        }
    }

    /// Scrub `len` bytes at `off` of `seg`: verify *every* copy (mirror)
    /// or the data columns and their parity (parity), rewrite bad copies
    /// from a good one. Returns the bytes repaired; Err if no copy
    /// verifies. Parity rows whose parity disagrees with verified data are
    /// returned in `suspect` as (first row, rows) for a later repair (the
    /// disagreement may come from another record's bad block in the row,
    /// which must be healed first). Blocking.
    pub fn scrub_span(
        &self,
        seg: SegId,
        off: u64,
        len: usize,
        verify: &(dyn Fn(&[u8]) -> bool + Sync),
        suspect: &mut Vec<(SegId, u64, u64)>,
    ) -> Result<u64> {
        self.check_span(seg, off, len)?;
        let g = self.group(seg)?;
        let before: u64 = g
            .members
            .iter()
            .map(|m| m.stats.repaired_bytes.load(Ordering::Relaxed))
            .sum();
        if g.geo.is_parity() {
            // Data first (heals through the rebuild path if need be).
            run_sync(self.read_verified(seg, off, len, IoMode::Blocking, verify))?;
            let (r0, rows, cols) =
                run_sync(self.rebuild_rows(seg, off, len, IoMode::Blocking, &[]))?;
            let data: Vec<&[u8]> = cols[..g.geo.k]
                .iter()
                .map(|c| c.as_deref().unwrap_or(&[]))
                .collect();
            let parity = raid::encode(&g.geo, &data)?;
            if parity
                .iter()
                .zip(&cols[g.geo.k..])
                .any(|(p, c)| c.as_deref() != Some(p.as_slice()))
            {
                suspect.push((seg, r0, rows));
            }
        } else if g.members.len() > 1 {
            let at = self.slot_offset(g, seg, 0) + off;
            let mut good: Option<AlignedBuf> = None;
            let mut bad = Vec::new();
            for (m, mem) in g.members.iter().enumerate() {
                if !mem.readable() {
                    continue;
                }
                match run_sync(dev_read(&mem.dev(), at, len, IoMode::Blocking)) {
                    Ok(b) if verify(b.as_slice()) => {
                        good.get_or_insert(b);
                    }
                    Ok(_) => bad.push(m),
                    Err(e) => {
                        mem.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                        self.member_failed(seg.group as usize, m, "scrub read", e)?;
                    }
                }
            }
            let Some(good) = good else {
                if let Some(&m) = bad.first() {
                    g.members[m]
                        .stats
                        .checksum_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
                return Err(Error::corrupt(format!(
                    "checksum mismatch: no copy of {len} bytes at {off:#x} in segment {seg:?} passes verification"
                )));
            };
            for m in bad {
                run_sync(self.heal(seg, m, at, good.as_slice(), IoMode::Blocking));
            }
        } else {
            run_sync(self.read_verified(seg, off, len, IoMode::Blocking, verify))?;
        }
        let after: u64 = g
            .members
            .iter()
            .map(|m| m.stats.repaired_bytes.load(Ordering::Relaxed))
            .sum();
        Ok(after - before)
    }

    /// Rewrite the parity of rows `[r0, r0 + rows)` of `seg` from their
    /// data columns (scrub, after every record in them was verified and
    /// healed). Returns the bytes rewritten. Blocking.
    pub fn repair_parity(&self, seg: SegId, r0: u64, rows: u64) -> Result<u64> {
        let g = self.group(seg)?;
        let row = g.geo.row_bytes();
        let (off, len) = (
            r0 * row,
            (rows * row).min(self.segment_size - r0 * row) as usize,
        );
        let (r0, _, cols) = run_sync(self.rebuild_rows(seg, off, len, IoMode::Blocking, &[]))?;
        let data: Vec<&[u8]> = cols[..g.geo.k]
            .iter()
            .map(|c| c.as_deref().unwrap_or(&[]))
            .collect();
        let parity = raid::encode(&g.geo, &data)?;
        let mut fixed = 0;
        for (i, p) in parity.iter().enumerate() {
            if cols[g.geo.k + i].as_deref() == Some(p.as_slice()) {
                continue;
            }
            let m = g.geo.member_of(seg.index, g.geo.k + i);
            run_sync(self.heal(seg, m, self.slot_offset(g, seg, r0), p, IoMode::Blocking));
            fixed += p.len() as u64;
        }
        Ok(fixed)
    }

    /// Copy segment `seg`'s first `bytes` to member `m` (resilver): the
    /// member's slot is rebuilt from the others. Blocking.
    pub fn resilver_segment(&self, seg: SegId, m: usize, bytes: u64) -> Result<()> {
        let g = self.group(seg)?;
        let bytes = g.geo.row_end(bytes.max(1)).min(self.segment_size);
        let step = (g.geo.row_bytes() * 64).min(self.segment_size);
        let mut off = 0;
        while off < bytes {
            let len = step.min(self.segment_size - off) as usize;
            let (at, data) = if g.geo.is_parity() {
                let (r0, _, cols) =
                    run_sync(self.rebuild_rows(seg, off, len, IoMode::Blocking, &[m]))?;
                let col = cols[g.geo.column_of(seg.index, m)]
                    .clone()
                    .ok_or_else(|| Error::corrupt("rebuild left a column empty"))?;
                (self.slot_offset(g, seg, r0), col)
            } else {
                let (b, _) = run_sync(self.read_primary(seg, off, len, IoMode::Blocking, &[m]))?;
                (self.slot_offset(g, seg, 0) + off, b.as_slice().to_vec())
            };
            g.members[m]
                .dev()
                .write_at(aligned(&data).as_slice(), at)
                .map_err(|e| {
                    Error::io(
                        format!("resilver write to {}", g.members[m].dev().describe()),
                        e,
                    )
                })?;
            off += len as u64;
        }
        Ok(())
    }
}
