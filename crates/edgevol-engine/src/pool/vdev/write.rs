//! Writes: a segment span to every writable member (mirror copies, data
//! and parity columns), raw blocks to every device (labels, uberblocks),
//! and flushes; member failures are absorbed while the group tolerates
//! them. Keeps invariant 1: a write or flush succeeds only when it
//! reached enough members for the group to serve it back.

use std::sync::atomic::Ordering;

use super::{aligned, dev_write, has_ring, run_sync, Vdevs};
use crate::buf::AlignedBuf;
use crate::error::{Error, Result};
use crate::layout::{SegId, BLOCK};
use crate::pool::raid;

impl Vdevs {
    /// Write `buf` at `off` within segment `seg` on every member (mirror
    /// copies; data and parity columns — `off` must then start a row, and
    /// a short last row is padded with zeroes). Returns the buffer.
    pub async fn write_span(
        &self,
        seg: SegId,
        off: u64,
        buf: AlignedBuf,
        ring: bool,
    ) -> Result<AlignedBuf> {
        self.check_span(seg, off, buf.len())?;
        let ring = ring && has_ring();
        let gi = seg.group as usize;
        let g = self.group(seg)?;
        let what = format!("write of segment {seg:?} at {off:#x}");
        if !g.geo.is_parity() {
            let at = self.slot_offset(g, seg, 0) + off;
            if g.members.len() == 1 {
                let dev = g.members[0].dev();
                return dev_write(&dev, at, buf, ring).await.map_err(|e| {
                    g.members[0]
                        .stats
                        .write_errors
                        .fetch_add(1, Ordering::Relaxed);
                    Error::io(format!("{what} on {} failed", dev.describe()), e)
                });
            }
            let data = buf.as_slice();
            self.write_members(gi, at, ring, &what, |_| data).await?;
            return Ok(buf);
        }
        let row = g.geo.row_bytes();
        if !off.is_multiple_of(row) {
            return Err(Error::corrupt(format!(
                "{what}: parity writes must start a row ({row} bytes)"
            )));
        }
        let end = g.geo.row_end(off + buf.len() as u64);
        let r0 = off / row;
        let rows = (end - off).div_ceil(row);
        let cols = raid::split_rows(&g.geo, r0, rows, buf.as_slice());
        let refs: Vec<&[u8]> = cols.iter().map(Vec::as_slice).collect();
        let parity = raid::encode(&g.geo, &refs)?;
        let at = self.slot_offset(g, seg, r0);
        let column = |m: usize| {
            let c = g.geo.column_of(seg.index, m);
            if c < g.geo.k {
                cols[c].as_slice()
            } else {
                parity[c - g.geo.k].as_slice()
            }
        };
        self.write_members(gi, at, ring, &what, column).await?;
        Ok(buf)
    }

    /// Write `data(m)` at device offset `at` of every writable member `m`
    /// of group `gi` at once; failures are absorbed as `absorb` says.
    async fn write_members<'a>(
        &self,
        gi: usize,
        at: u64,
        ring: bool,
        what: &str,
        data: impl Fn(usize) -> &'a [u8],
    ) -> Result<()> {
        let g = &self.groups[gi];
        let writes = g.members.iter().enumerate().map(|(m, mem)| {
            let b = mem.writable().then(|| aligned(data(m)));
            let dev = mem.dev();
            async move {
                match b {
                    Some(b) => Some(dev_write(&dev, at, b, ring).await.map(drop)),
                    None => None,
                }
            }
        });
        let got = futures::future::join_all(writes).await;
        self.absorb(gi, what, got)
    }

    /// Count and absorb member write failures (see `member_failed`).
    fn absorb(&self, gi: usize, what: &str, got: Vec<Option<std::io::Result<()>>>) -> Result<()> {
        let g = &self.groups[gi];
        let mut wrote = 0;
        for (m, r) in got.into_iter().enumerate() {
            match r {
                Some(Ok(())) => wrote += 1,
                Some(Err(e)) => {
                    g.members[m]
                        .stats
                        .write_errors
                        .fetch_add(1, Ordering::Relaxed);
                    self.member_failed(gi, m, what, e)?;
                }
                None => {}
            }
        }
        if g.unavailable() > g.geo.tolerance() || wrote == 0 {
            return Err(Error::io(
                format!("{what}: group {gi} has lost more devices than it tolerates"),
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        Ok(())
    }

    /// Write `buf` at `off` within segment `seg` (blocking).
    pub fn write(&self, seg: SegId, off: u64, buf: &[u8]) -> Result<()> {
        run_sync(self.write_span(seg, off, aligned(buf), false)).map(drop)
    }

    /// Write `buf` at `off` within segment `seg` (io_uring if the calling
    /// thread has one, else blocking). Returns the buffer.
    pub async fn write_owned(&self, seg: SegId, off: u64, buf: AlignedBuf) -> Result<AlignedBuf> {
        self.write_span(seg, off, buf, true).await
    }

    /// Write the same block at a raw device offset on every writable
    /// device (labels, uberblocks), through the calling thread's io_uring
    /// if it has one. Fails only if a group loses more than it tolerates.
    pub async fn write_everywhere_async(&self, offset: u64, data: &[u8]) -> Result<()> {
        let len = data.len().div_ceil(BLOCK) * BLOCK;
        let mut b = AlignedBuf::zeroed(len);
        b.as_mut_slice()[..data.len()].copy_from_slice(data);
        let ring = has_ring();
        for (gi, g) in self.groups.iter().enumerate() {
            let writes = g.members.iter().map(|m| {
                let dev = m.dev();
                let buf = m.writable().then(|| aligned(b.as_slice()));
                async move {
                    match buf {
                        Some(buf) => Some(dev_write(&dev, offset, buf, ring).await.map(drop)),
                        None => None,
                    }
                }
            });
            let got = futures::future::join_all(writes).await;
            self.absorb(gi, &format!("write at {offset:#x}"), got)?;
        }
        Ok(())
    }

    /// Write the same block at a raw device offset on every device (labels,
    /// uberblocks). Blocking.
    pub fn write_everywhere(&self, offset: u64, data: &[u8]) -> Result<()> {
        let len = data.len().div_ceil(BLOCK) * BLOCK;
        let mut b = AlignedBuf::zeroed(len);
        b.as_mut_slice()[..data.len()].copy_from_slice(data);
        for (gi, g) in self.groups.iter().enumerate() {
            let got = g
                .members
                .iter()
                .map(|m| m.writable().then(|| m.dev().write_at(b.as_slice(), offset)))
                .collect();
            self.absorb(gi, &format!("write at {offset:#x}"), got)?;
        }
        Ok(())
    }

    /// Flush every writable device (concurrently through io_uring when the
    /// calling thread has one).
    pub async fn flush_all_async(&self) -> Result<()> {
        let ring = edgevol_io::current();
        for (gi, g) in self.groups.iter().enumerate() {
            let ops = g.members.iter().map(|m| {
                let dev = m.dev();
                let go = m.writable();
                let ring = ring.clone();
                async move {
                    if !go {
                        return None;
                    }
                    Some(match (ring, dev.raw_fd()) {
                        (Some(r), Some(fd)) => r.fdatasync(fd).await.0.map(drop),
                        _ => dev.flush(),
                    })
                }
            });
            let got = futures::future::join_all(ops).await;
            self.absorb(gi, "flush", got)?;
        }
        Ok(())
    }

    /// Flush every device (blocking).
    pub fn flush_all(&self) -> Result<()> {
        for (gi, g) in self.groups.iter().enumerate() {
            let got = g
                .members
                .iter()
                .map(|m| m.writable().then(|| m.dev().flush()))
                .collect();
            self.absorb(gi, "flush", got)?;
        }
        Ok(())
    }
}
