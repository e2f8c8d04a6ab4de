//! Writes: a segment span to every writable member (mirror copies, data
//! and parity columns), raw blocks to every device (labels, uberblocks),
//! and flushes; member failures are absorbed while the group tolerates
//! them. A write or flush that fails beyond that **poisons** the pool:
//! every later write and flush, from any caller (the writer, checkpoints,
//! scrub's repairs), fails until the pool is imported again, so nothing
//! is built on a device state nobody knows (redb's `PreviousIo`). Keeps
//! invariant 1: a write or flush succeeds only when it reached enough
//! members for the group to serve it back, and none follows one that did
//! not.

use std::sync::atomic::Ordering;

use super::{aligned, dev_write, run_sync, Vdevs};
use crate::buf::AlignedBuf;
use crate::device::IoMode;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{SegId, BLOCK};
use crate::pool::raid;

impl Vdevs {
    /// Stop taking writes after `e`: every later write and flush fails
    /// with [`ErrorKind::Poisoned`] until the pool is imported again. The
    /// first reason is kept; returns it.
    pub fn poison(&self, e: &Error) -> String {
        let mut p = self.poisoned.lock();
        if p.is_none() {
            tracing::error!(pool = %self.name, error = %e, "pool stopped accepting writes after an I/O failure");
            *p = Some(format!(
                "pool {} stopped accepting writes after an earlier failure: {e}",
                self.name
            ));
            self.is_poisoned.store(true, Ordering::Release);
        }
        p.clone().unwrap_or_default()
    }

    /// Why the pool stopped taking writes, if it did.
    pub fn poisoned(&self) -> Option<String> {
        if !self.is_poisoned.load(Ordering::Acquire) {
            return None;
        }
        self.poisoned.lock().clone()
    }

    /// Err if the pool stopped taking writes.
    fn check_poison(&self) -> Result<()> {
        match self.poisoned() {
            Some(why) => Err(Error::new(ErrorKind::Poisoned, why)),
            None => Ok(()),
        }
    }

    /// Poison the pool with a write's or flush's error, and return it.
    fn poisoning<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.poison(e);
        }
        r
    }

    /// Write `buf` at `off` within segment `seg` on every member (mirror
    /// copies; data and parity columns — `off` must then start a row, and
    /// a short last row is padded with zeroes). Returns the buffer.
    pub async fn write_span(
        &self,
        seg: SegId,
        off: u64,
        buf: AlignedBuf,
        io: IoMode,
    ) -> Result<AlignedBuf> {
        self.check_poison()?;
        let r = self.write_span_once(seg, off, buf, io).await;
        self.poisoning(r)
    }

    async fn write_span_once(
        &self,
        seg: SegId,
        off: u64,
        buf: AlignedBuf,
        io: IoMode,
    ) -> Result<AlignedBuf> {
        self.check_span(seg, off, buf.len())?;
        let gi = seg.group as usize;
        let g = self.group(seg)?;
        let what = format!("write of segment {seg:?} at {off:#x}");
        if !g.geo.is_parity() {
            let at = self.slot_offset(g, seg, 0) + off;
            if g.members.len() == 1 {
                let dev = g.members[0].dev();
                return dev_write(&dev, at, buf, io).await.map_err(|e| {
                    g.members[0]
                        .stats
                        .write_errors
                        .fetch_add(1, Ordering::Relaxed);
                    Error::io(format!("{what} on {} failed", dev.describe()), e)
                });
            }
            let data = buf.as_slice();
            self.write_members(gi, at, io, &what, |_| data).await?;
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
        self.write_members(gi, at, io, &what, column).await?;
        Ok(buf)
    }

    /// Write `data(m)` at device offset `at` of every writable member `m`
    /// of group `gi` at once; failures are absorbed as `absorb` says.
    async fn write_members<'a>(
        &self,
        gi: usize,
        at: u64,
        io: IoMode,
        what: &str,
        data: impl Fn(usize) -> &'a [u8],
    ) -> Result<()> {
        let g = &self.groups[gi];
        let writes = g.members.iter().enumerate().map(|(m, mem)| {
            let b = mem.writable().then(|| aligned(data(m)));
            let dev = mem.dev();
            async move {
                match b {
                    Some(b) => Some(dev_write(&dev, at, b, io).await.map(drop)),
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
        run_sync(self.write_span(seg, off, aligned(buf), IoMode::Blocking)).map(drop)
    }

    /// Write `buf` at `off` within segment `seg` (io_uring if the calling
    /// thread has one, else blocking). Returns the buffer.
    pub async fn write_owned(&self, seg: SegId, off: u64, buf: AlignedBuf) -> Result<AlignedBuf> {
        self.write_span(seg, off, buf, IoMode::Async).await
    }

    /// Write the same block at a raw device offset on every writable
    /// device (labels, uberblocks), through the calling thread's io_uring
    /// if it has one. Fails only if a group loses more than it tolerates.
    pub async fn write_everywhere_async(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_poison()?;
        let r = self.write_everywhere_io(offset, data, IoMode::Async).await;
        self.poisoning(r)
    }

    /// Write the same block at a raw device offset on every device (labels,
    /// uberblocks). Blocking.
    pub fn write_everywhere(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_poison()?;
        let r = run_sync(self.write_everywhere_io(offset, data, IoMode::Blocking));
        self.poisoning(r)
    }

    async fn write_everywhere_io(&self, offset: u64, data: &[u8], io: IoMode) -> Result<()> {
        let len = data.len().div_ceil(BLOCK) * BLOCK;
        let mut b = AlignedBuf::zeroed(len);
        b.as_mut_slice()[..data.len()].copy_from_slice(data);
        for (gi, g) in self.groups.iter().enumerate() {
            let writes = g.members.iter().map(|m| {
                let dev = m.dev();
                let buf = m.writable().then(|| aligned(b.as_slice()));
                async move {
                    match buf {
                        Some(buf) => Some(dev_write(&dev, offset, buf, io).await.map(drop)),
                        None => None,
                    }
                }
            });
            let got = futures::future::join_all(writes).await;
            self.absorb(gi, &format!("write at {offset:#x}"), got)?;
        }
        Ok(())
    }

    /// Flush every writable device (concurrently through io_uring when the
    /// calling thread has one).
    pub async fn flush_all_async(&self) -> Result<()> {
        self.check_poison()?;
        let r = self.flush_io(IoMode::Async).await;
        self.poisoning(r)
    }

    /// Flush every device (blocking).
    pub fn flush_all(&self) -> Result<()> {
        self.check_poison()?;
        let r = run_sync(self.flush_io(IoMode::Blocking));
        self.poisoning(r)
    }

    async fn flush_io(&self, io: IoMode) -> Result<()> {
        for (gi, g) in self.groups.iter().enumerate() {
            let ops = g.members.iter().map(|m| {
                let dev = m.dev();
                let go = m.writable();
                async move {
                    if !go {
                        return None;
                    }
                    Some(dev.sync(io).await)
                }
            });
            let got = futures::future::join_all(ops).await;
            self.absorb(gi, "flush", got)?;
        }
        Ok(())
    }
}
