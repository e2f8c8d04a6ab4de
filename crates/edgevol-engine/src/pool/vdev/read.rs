//! Healing reads: the primary copy (mirror round robin, parity data
//! columns), parity reconstruction, and [`Vdevs::read_verified`], which
//! tries every other copy or erasure set until one passes the caller's
//! verifier and heals the bad copy. Keeps invariant 2: every read is
//! verified; a mismatch is healed from redundancy or returned as EIO.

use std::sync::atomic::Ordering;

use super::addr::{place, span_blocks};
use super::{dev_read, run_sync, Group, Vdevs};
use crate::buf::AlignedBuf;
use crate::device::IoMode;
use crate::error::{Error, Result};
use crate::layout::{SegId, BLOCK};
use crate::pool::raid;

impl Vdevs {
    /// Read `len` bytes at `off` of `seg` from the primary copy (mirror:
    /// the next readable member, round robin; parity: the data columns),
    /// avoiding members in `avoid`. Returns the data and the members read.
    pub(super) async fn read_primary(
        &self,
        seg: SegId,
        off: u64,
        len: usize,
        io: IoMode,
        avoid: &[usize],
    ) -> Result<(AlignedBuf, Vec<usize>)> {
        let gi = seg.group as usize;
        let g = self.group(seg)?;
        let n = g.members.len();
        if !g.geo.is_parity() {
            let start = if n > 1 {
                g.rr.fetch_add(1, Ordering::Relaxed)
            } else {
                0
            };
            let mut last = None;
            for i in 0..n {
                let m = (start + i) % n;
                let mem = &g.members[m];
                if avoid.contains(&m) || (n > 1 && !mem.readable()) {
                    continue;
                }
                let at = self.slot_offset(g, seg, 0) + off;
                match dev_read(&mem.dev(), at, len, io).await {
                    Ok(b) => return Ok((b, vec![m])),
                    Err(e) => {
                        mem.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                        let what = format!("read of segment {seg:?} at {off:#x}");
                        if let Err(err) = self.member_failed(gi, m, &what, e) {
                            last = Some(err);
                        }
                    }
                }
            }
            return Err(last.unwrap_or_else(|| {
                Error::io(
                    format!("no readable copy of segment {seg:?}"),
                    std::io::Error::from_raw_os_error(libc::EIO),
                )
            }));
        }
        // Parity: each data column holding part of the span, read at once.
        let (b0, b1) = span_blocks(off, len);
        let mut plan = Vec::new();
        for c in 0..g.geo.k {
            if let Some((r, rows)) = g.geo.column_rows(c, b0, b1) {
                let m = g.geo.member_of(seg.index, c);
                if avoid.contains(&m) || !g.members[m].readable() {
                    let out = self.reconstruct_span(seg, off, len, io, &[m]).await?;
                    return Ok((out, Vec::new()));
                }
                plan.push((c, m, r, rows));
            }
        }
        let reads = plan.iter().map(|&(_, m, r, rows)| {
            let dev = g.members[m].dev();
            let at = self.slot_offset(g, seg, r);
            async move { dev_read(&dev, at, rows as usize * BLOCK, io).await }
        });
        let got = futures::future::join_all(reads).await;
        let mut failed = Vec::new();
        let mut cols = Vec::new();
        for (&(c, m, r, _), res) in plan.iter().zip(got) {
            match res {
                Ok(b) => cols.push((c, r, b)),
                Err(e) => {
                    g.members[m]
                        .stats
                        .read_errors
                        .fetch_add(1, Ordering::Relaxed);
                    let what = format!("read of segment {seg:?} at {off:#x}");
                    self.member_failed(gi, m, &what, e)?;
                    failed.push(m);
                }
            }
        }
        if !failed.is_empty() {
            let out = self.reconstruct_span(seg, off, len, io, &failed).await?;
            return Ok((out, Vec::new()));
        }
        let mut out = AlignedBuf::zeroed(len);
        let k = g.geo.k as u64;
        let o = out.as_mut_slice();
        for (c, r0, b) in cols {
            for (i, blk) in b.as_slice().chunks(BLOCK).enumerate() {
                let lb = (r0 + i as u64) * k + c as u64; // logical block
                place(o, off, lb, blk);
            }
        }
        Ok((out, plan.iter().map(|p| p.1).collect()))
    }

    /// Rebuild `len` bytes at `off` of parity segment `seg` from the other
    /// columns, treating members `erased` as unavailable.
    async fn reconstruct_span(
        &self,
        seg: SegId,
        off: u64,
        len: usize,
        io: IoMode,
        erased: &[usize],
    ) -> Result<AlignedBuf> {
        let (r0, rows, cols) = self.rebuild_rows(seg, off, len, io, erased).await?;
        let g = self.group(seg)?;
        let mut out = AlignedBuf::zeroed(len);
        let o = out.as_mut_slice();
        for (c, col) in cols.iter().enumerate().take(g.geo.k) {
            let Some(col) = col else { continue };
            for i in 0..rows {
                let lb = (r0 + i) * g.geo.k as u64 + c as u64;
                let blk = &col[i as usize * BLOCK..(i as usize + 1) * BLOCK];
                place(o, off, lb, blk);
            }
        }
        Ok(out)
    }

    /// All columns (data and parity, by column index) of the rows holding
    /// `[off, off + len)`, rebuilt where `erased` members or read errors
    /// leave gaps. Returns (first row, rows, columns).
    pub(super) async fn rebuild_rows(
        &self,
        seg: SegId,
        off: u64,
        len: usize,
        io: IoMode,
        erased: &[usize],
    ) -> Result<(u64, u64, Vec<Option<Vec<u8>>>)> {
        let gi = seg.group as usize;
        let g = self.group(seg)?;
        let (b0, b1) = span_blocks(off, len);
        let k = g.geo.k as u64;
        let (r0, r1) = (b0 / k, (b1 - 1) / k + 1);
        let rows = r1 - r0;
        let at = self.slot_offset(g, seg, r0);
        let reads = (0..g.members.len()).map(|m| {
            let skip = erased.contains(&m) || !g.members[m].readable();
            let dev = g.members[m].dev();
            async move {
                if skip {
                    return None;
                }
                Some(dev_read(&dev, at, rows as usize * BLOCK, io).await)
            }
        });
        let got = futures::future::join_all(reads).await;
        let mut cols: Vec<Option<Vec<u8>>> = vec![None; g.members.len()];
        for (m, r) in got.into_iter().enumerate() {
            match r {
                None => {}
                Some(Ok(b)) => cols[g.geo.column_of(seg.index, m)] = Some(b.as_slice().to_vec()),
                Some(Err(e)) => {
                    g.members[m]
                        .stats
                        .read_errors
                        .fetch_add(1, Ordering::Relaxed);
                    self.member_failed(gi, m, &format!("read of segment {seg:?}"), e)?;
                }
            }
        }
        // Blocks past a short last row are zeroes on every member.
        raid::reconstruct(&g.geo, &mut cols)?;
        Ok((r0, rows, cols))
    }

    /// Read `len` bytes at `off` of `seg`, checked by `verify`; a copy that
    /// fails the check or cannot be read is replaced by another copy or a
    /// rebuild that passes it, which is then written over the bad copy.
    /// `io`: how the device I/O may complete ([`IoMode`]).
    pub async fn read_verified(
        &self,
        seg: SegId,
        off: u64,
        len: usize,
        io: IoMode,
        verify: &(dyn Fn(&[u8]) -> bool + Sync),
    ) -> Result<AlignedBuf> {
        self.check_span(seg, off, len)?;
        let g = self.group(seg)?;
        let first = self.read_primary(seg, off, len, io, &[]).await;
        let bad = match first {
            Ok((b, _)) if verify(b.as_slice()) => return Ok(b),
            Ok((_, used)) => used,
            Err(e) if !g.geo.is_parity() || g.geo.tolerance() == 0 => return Err(e),
            Err(_) => Vec::new(),
        };
        // Another copy, or a rebuild, that verifies.
        if !g.geo.is_parity() {
            for m in 0..g.members.len() {
                if bad.contains(&m) || !g.members[m].readable() {
                    continue;
                }
                let Ok((b, _)) = self
                    .read_primary(seg, off, len, io, &[bad.clone(), others(g, m)].concat())
                    .await
                else {
                    continue;
                };
                if verify(b.as_slice()) {
                    for &x in &bad {
                        self.heal(seg, x, self.slot_offset(g, seg, 0) + off, b.as_slice(), io)
                            .await;
                    }
                    return Ok(b);
                }
            }
        } else {
            let (b0, b1) = span_blocks(off, len);
            let holders: Vec<usize> = (0..g.members.len()).collect();
            for set in erasure_sets(&holders, g.geo.p) {
                let Ok((r0, rows, cols)) = self.rebuild_rows(seg, off, len, io, &set).await else {
                    continue;
                };
                let mut out = AlignedBuf::zeroed(len);
                for (c, col) in cols.iter().enumerate().take(g.geo.k) {
                    let Some(col) = col else { continue };
                    for i in 0..rows {
                        let lb = (r0 + i) * g.geo.k as u64 + c as u64;
                        if lb < b0 || lb >= b1 {
                            continue;
                        }
                        let blk = &col[i as usize * BLOCK..(i as usize + 1) * BLOCK];
                        place(out.as_mut_slice(), off, lb, blk);
                    }
                }
                if verify(out.as_slice()) {
                    for &m in &set {
                        if let Some(col) = &cols[g.geo.column_of(seg.index, m)] {
                            let at = self.slot_offset(g, seg, r0);
                            self.heal(seg, m, at, col, io).await;
                        }
                    }
                    return Ok(out);
                }
            }
        }
        if let Some(&m) = bad.first() {
            g.members[m]
                .stats
                .checksum_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        Err(Error::corrupt(format!(
            "checksum mismatch: no copy of {len} bytes at {off:#x} in segment {seg:?} passes verification"
        )))
    }

    /// Read `buf.len()` bytes at `off` within segment `seg` (blocking; any
    /// readable copy, rebuilt if need be; no verification).
    pub fn read(&self, seg: SegId, off: u64, buf: &mut [u8]) -> Result<()> {
        self.read_checked(seg, off, buf, &|_| true)
    }

    /// Read `len` bytes at `off` within segment `seg` into a buffer of its
    /// own (blocking; as [`Vdevs::read`], without a copy).
    pub fn read_buf(&self, seg: SegId, off: u64, len: usize) -> Result<AlignedBuf> {
        run_sync(self.read_verified(seg, off, len, IoMode::Blocking, &|_| true))
    }

    /// [`Vdevs::read`] with a verifier (see [`Vdevs::read_verified`]).
    pub fn read_checked(
        &self,
        seg: SegId,
        off: u64,
        buf: &mut [u8],
        verify: &(dyn Fn(&[u8]) -> bool + Sync),
    ) -> Result<()> {
        let b = run_sync(self.read_verified(seg, off, buf.len(), IoMode::Blocking, verify))?;
        buf.copy_from_slice(b.as_slice());
        Ok(())
    }

    /// Read `out.len()` bytes (any alignment) at `off` of `seg` from one
    /// *variant* of the stored copies: mirror member `v` alone, or a parity
    /// rebuild that leaves member `v` out (for data verified by a checksum
    /// over several reads, such as metadata blobs). Blocking.
    pub fn read_variant(&self, seg: SegId, off: u64, out: &mut [u8], v: usize) -> Result<()> {
        let g = self.group(seg)?;
        let len = out.len().div_ceil(BLOCK) * BLOCK;
        self.check_span(seg, off, len)?;
        let b = if g.geo.is_parity() {
            run_sync(self.reconstruct_span(seg, off, len, IoMode::Blocking, &[v]))?
        } else {
            let avoid: Vec<usize> = (0..g.members.len()).filter(|&m| m != v).collect();
            run_sync(self.read_primary(seg, off, len, IoMode::Blocking, &avoid))?.0
        };
        out.copy_from_slice(&b.as_slice()[..out.len()]);
        Ok(())
    }

    /// Read `buf.len()` bytes at `off` within segment `seg` into `buf`:
    /// through the calling thread's io_uring if it has one (the data path),
    /// else with a blocking read. Unverified.
    pub async fn read_owned(&self, seg: SegId, off: u64, buf: AlignedBuf) -> Result<AlignedBuf> {
        self.read_verified(seg, off, buf.len(), IoMode::Async, &|_| true)
            .await
    }
}

/// All members except `m`.
fn others(g: &Group, m: usize) -> Vec<usize> {
    (0..g.members.len()).filter(|&x| x != m).collect()
}

/// Every set of 1..=p members of `of` (singles first).
fn erasure_sets(of: &[usize], p: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = of.iter().map(|&m| vec![m]).collect();
    if p >= 2 {
        for (i, &a) in of.iter().enumerate() {
            for &b in &of[i + 1..] {
                out.push(vec![a, b]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::erasure_sets;

    #[test]
    fn erasure_sets_are_singles_then_pairs_up_to_the_tolerance() {
        assert_eq!(erasure_sets(&[0, 1, 2], 1), vec![vec![0], vec![1], vec![2]]);
        assert_eq!(
            erasure_sets(&[0, 1, 2], 2),
            vec![
                vec![0],
                vec![1],
                vec![2],
                vec![0, 1],
                vec![0, 2],
                vec![1, 2]
            ]
        );
        assert!(erasure_sets(&[], 2).is_empty());
    }
}
