//! The data path for clients: [`Volume`] handles and their operations; the
//! read pipeline under them (device reads, verification, records) is in
//! `read`.
//!
//! Offsets and lengths may be any byte values: a range that is not 4 KiB
//! aligned is served by reading the blocks it touches and, for writes, by a
//! read-modify-write of its partial blocks under the volume's
//! [sub-block exclusion](super::subblock). Aligned ranges take the fast
//! path (no copy, no lock while no read-modify-write runs).
//!
//! Reads never go through the writer: they resolve blocks through the map
//! (a consistent snapshot of its sources), read the records from the
//! devices, and verify every block's checksum before returning it. A reader
//! holds a [reuse gate](super::gate) ticket from before the map lookup
//! until its device reads finish, so the segments it reads cannot be reused
//! under it.
//!
//! Keeps invariant 2 (every read is verified) by checking every block's
//! crc32c (or a packed record's crc and seal) through `read_verified`,
//! which heals from redundancy or fails (EIO); invariant 3 (zeroes, no
//! foreign bytes) by answering holes and zeroed blocks with zeroes and
//! resolving only through the volume's own chain; invariant 7 (clear
//! errors) by refusing out-of-range and read-only requests up front.

use std::sync::Arc;

use bytes::Bytes;

use super::subblock::{slice_extents, slice_segs, Span, VolumeLocks};
use super::writer::{DataOp, DiscardMode};
use super::Shared;
use crate::catalog::Chain;
use crate::chunk::{self, PieceKind};
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{BLOCK, BLOCK_U64};
use crate::map::Key;

mod read;

pub(crate) use read::{blocks_match, lineage_key, open_record, read_pieces};

/// A piece of a read result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadSeg {
    /// Bytes read.
    Data(Bytes),
    /// This many bytes of zeroes (unallocated or zeroed).
    Zero(u64),
}

impl ReadSeg {
    /// A read's segments as one buffer, holes filled with zeroes (tools and
    /// tests; the exports send the segments as they are).
    pub fn concat(segs: Vec<ReadSeg>) -> Vec<u8> {
        let mut out = Vec::new();
        for s in segs {
            match s {
                ReadSeg::Data(b) => out.extend_from_slice(&b),
                ReadSeg::Zero(n) => out.resize(out.len() + n as usize, 0),
            }
        }
        out
    }
}

/// Allocation state of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Bytes.
    pub length: u64,
    /// Not allocated.
    pub hole: bool,
    /// Reads as zeroes.
    pub zero: bool,
}

/// An open volume or snapshot.
pub struct Volume {
    sh: Arc<Shared>,
    vol: u64,
    snap: Option<u64>,
    spec: String,
    /// Shared by every handle of this volume.
    locks: Arc<VolumeLocks>,
}

pub(crate) fn open_volume(sh: &Arc<Shared>, spec: &str) -> Result<Volume> {
    let (v, s) = super::split_snapshot(spec);
    let cat = sh.catalog();
    let vol = cat.volume_by_name(v)?.id;
    let snap = match s {
        Some(s) => Some(cat.snapshot_by_name(vol, s)?.id),
        None => None,
    };
    Ok(Volume {
        sh: sh.clone(),
        vol,
        snap,
        spec: spec.to_string(),
        locks: sh.subblock.get(vol),
    })
}

/// Bytes the volume would report beyond this are clamped (block status).
const MAX_STATUS_BLOCKS: u64 = 16384;

impl Volume {
    /// `VOL` or `VOL@SNAP`.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// Size in bytes (0 if the volume or snapshot is gone). A snapshot has
    /// the size its volume had when it was taken.
    pub fn size(&self) -> u64 {
        let cat = self.sh.catalog();
        match self.snap {
            None => cat.volumes.get(&self.vol).map_or(0, |v| v.size),
            Some(s) => cat
                .snapshots
                .get(&s)
                .filter(|s| !s.hidden)
                .map_or(0, |s| s.size),
        }
    }

    /// True for snapshots and read-only volumes.
    pub fn read_only(&self) -> bool {
        self.snap.is_some()
            || self
                .sh
                .catalog()
                .volumes
                .get(&self.vol)
                .is_some_and(|v| v.props.get("readonly").is_some_and(|x| x == "on"))
    }

    /// True if this handle is a snapshot.
    pub fn is_snapshot(&self) -> bool {
        self.snap.is_some()
    }

    /// The volume's guid (its serial number).
    pub fn guid(&self) -> u128 {
        self.sh
            .catalog()
            .volumes
            .get(&self.vol)
            .map_or(0, |v| v.guid)
    }

    /// The pool this volume belongs to.
    pub fn pool_name(&self) -> &str {
        &self.sh.name
    }

    fn chain(&self) -> Result<Chain> {
        let cat = self.sh.catalog();
        match self.snap {
            None => cat.head_chain(self.vol),
            Some(s) => {
                let rec = cat.snapshots.get(&s).filter(|s| !s.hidden).ok_or_else(|| {
                    Error::not_found(format!("snapshot {} no longer exists", self.spec))
                })?;
                Ok(cat.chain(rec.lineage, rec.epoch))
            }
        }
    }

    /// Check that `[offset, offset + len)` lies within the volume.
    fn check_range(&self, offset: u64, len: u64) -> Result<Span> {
        let size = self.size();
        if size == 0 {
            return Err(Error::not_found(format!(
                "volume {} no longer exists",
                self.spec
            )));
        }
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Error::invalid("range overflows"))?;
        if end > size {
            return Err(Error::invalid(format!(
                "range {offset}..{end} is beyond the end of {} ({size} bytes)",
                self.spec
            )));
        }
        Ok(Span::new(offset, len))
    }

    /// Read `len` bytes at `offset`.
    ///
    /// Resolves the blocks through the map on the calling thread, then
    /// issues every device read at once (through the thread's io_uring on
    /// data-plane threads, so the request never changes threads) and
    /// verifies every block's checksum. An unaligned range reads the blocks
    /// it touches and returns the asked part of them.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Vec<ReadSeg>> {
        if len == 0 {
            self.check_range(offset, 0)?;
            return Ok(Vec::new());
        }
        let span = self.check_range(offset, len)?;
        let segs = self.read_blocks(span.first, span.blocks()).await?;
        if span.is_aligned() {
            return Ok(segs);
        }
        Ok(slice_segs(segs, span.head(), len))
    }

    /// Read `n` whole blocks from block `lba`.
    async fn read_blocks(&self, lba: u64, n: u64) -> Result<Vec<ReadSeg>> {
        let chain = self.chain()?;
        let sh = &*self.sh;
        sh.client_ops
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Held from before the map lookup until the last device read: the
        // segments we read cannot be reused under us.
        let _ticket = sh.gate.enter();
        let mut out = Vec::new();
        let mut done = 0u64;
        // Resolve in bounded windows so a huge read never builds a huge plan.
        while done < n {
            let w = (n - done).min(8192);
            let pieces = chunk::resolve(&chain, lba + done, w as u32, |l, f, t| {
                Ok(sh
                    .scan(Key::lower(l, f), Key::lower(l, t), usize::MAX)?
                    .entries)
            })?;
            out.extend(read_pieces(sh, &pieces).await?);
            done += w;
        }
        Ok(out)
    }

    /// One block's current contents (inside a read-modify-write).
    async fn read_block(&self, lba: u64) -> Result<Vec<u8>> {
        Ok(ReadSeg::concat(self.read_blocks(lba, 1).await?))
    }

    fn writable(&self) -> Result<()> {
        if self.snap.is_some() {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                format!("{} is a snapshot", self.spec),
            ));
        }
        Ok(())
    }

    async fn submit(&self, make: impl FnOnce(super::writer::Done<()>) -> DataOp) -> Result<()> {
        self.sh
            .client_ops
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = futures::channel::oneshot::channel();
        self.sh
            .data_tx
            .send(make(tx))
            .await
            .map_err(|_| Error::new(ErrorKind::Shutdown, "pool is closing"))?;
        rx.await
            .map_err(|_| Error::new(ErrorKind::Shutdown, "pool is closing"))?
    }

    /// Write `data` at `offset`; durable on return if `fua`.
    ///
    /// An unaligned write is a read-modify-write of the blocks it touches,
    /// exclusive against every other modifying op on those blocks (from any
    /// handle), written back as one write (with `fua` if asked).
    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<()> {
        self.writable()?;
        if data.is_empty() {
            self.check_range(offset, 0)?;
            return Ok(());
        }
        let span = self.check_range(offset, data.len() as u64)?;
        if span.is_aligned() {
            let _access = self.locks.aligned(span.first, span.end).await;
            return self.write_blocks(span.first, data, fua).await;
        }
        let _exclusive = self.locks.exclusive(span.first, span.end).await;
        let mut merged = vec![0u8; (span.blocks() * BLOCK_U64) as usize];
        let partial = span.partial();
        let old =
            futures::future::try_join_all(partial.iter().map(|(b, _)| self.read_block(*b))).await?;
        for ((b, _), old) in partial.iter().zip(old) {
            let at = ((b - span.first) * BLOCK_U64) as usize;
            merged[at..at + BLOCK].copy_from_slice(&old);
        }
        let head = span.head() as usize;
        merged[head..head + data.len()].copy_from_slice(&data);
        self.write_blocks(span.first, Bytes::from(merged), fua)
            .await
    }

    /// Write whole blocks (the caller holds the exclusion it needs).
    async fn write_blocks(&self, lba: u64, data: Bytes, fua: bool) -> Result<()> {
        let vol = self.vol;
        self.sh
            .admission
            .admit(&self.sh, data.len() as u64 / BLOCK_U64)
            .await;
        self.submit(|done| DataOp::Write {
            vol,
            lba,
            data,
            fua,
            done,
        })
        .await
    }

    /// Make every acknowledged write durable.
    pub async fn flush(&self) -> Result<()> {
        self.submit(|done| DataOp::Flush { done }).await
    }

    /// Deallocate a range: it reads as zeroes and its space is freed.
    pub async fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.discard(offset, len, DiscardMode::Trim, fua).await
    }

    /// Make a range read as zeroes; with `no_hole` it stays allocated.
    pub async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        no_hole: bool,
        fua: bool,
    ) -> Result<()> {
        let mode = if no_hole {
            DiscardMode::ZeroAlloc
        } else {
            DiscardMode::Trim
        };
        self.discard(offset, len, mode, fua).await
    }

    /// Trim or zero a range. The blocks it covers whole are discarded;
    /// the parts of blocks it covers in part are zeroed by a
    /// read-modify-write (a block that becomes all zeroes is discarded
    /// instead, so it can stay a hole).
    async fn discard(&self, offset: u64, len: u64, mode: DiscardMode, fua: bool) -> Result<()> {
        self.writable()?;
        let span = self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if span.is_aligned() {
            let _access = self.locks.aligned(span.first, span.end).await;
            return self
                .discard_blocks(span.first, span.blocks(), mode, fua)
                .await;
        }
        let _exclusive = self.locks.exclusive(span.first, span.end).await;
        let (ws, we) = span.whole();
        if we > ws {
            self.discard_blocks(ws, we - ws, mode, fua).await?;
        }
        for (b, range) in span.partial() {
            let mut block = self.read_block(b).await?;
            block[range].fill(0);
            if block.iter().all(|&x| x == 0) {
                self.discard_blocks(b, 1, mode, fua).await?;
            } else {
                self.write_blocks(b, Bytes::from(block), fua).await?;
            }
        }
        Ok(())
    }

    /// Discard whole blocks (the caller holds the exclusion it needs).
    async fn discard_blocks(
        &self,
        lba: u64,
        nblocks: u64,
        mode: DiscardMode,
        fua: bool,
    ) -> Result<()> {
        let vol = self.vol;
        self.submit(|done| DataOp::Discard {
            vol,
            lba,
            nblocks,
            mode,
            fua,
            done,
        })
        .await
    }

    /// Allocation of the range from `offset`: extents covering at least the
    /// first byte and at most `len` bytes (capped at 64 MiB per call). An
    /// unaligned range reports the state of the blocks it touches, cut to
    /// the range.
    pub async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        if len == 0 {
            self.check_range(offset, 0)?;
            return Ok(Vec::new());
        }
        let span = self.check_range(offset, len)?;
        let (lba, n) = (span.first, span.blocks().min(MAX_STATUS_BLOCKS));
        let chain = self.chain()?;
        let sh = &self.sh;
        let pieces = chunk::resolve(&chain, lba, n as u32, |l, f, t| {
            Ok(sh
                .scan(Key::lower(l, f), Key::lower(l, t), usize::MAX)?
                .entries)
        })?;
        let mut out: Vec<Extent> = Vec::new();
        for p in pieces {
            let (hole, zero) = match p.kind {
                PieceKind::Hole | PieceKind::Zero { alloc: false } => (true, true),
                PieceKind::Zero { alloc: true } => (false, true),
                PieceKind::Data(_) => (false, false),
            };
            let length = u64::from(p.nblocks) * BLOCK_U64;
            match out.last_mut() {
                Some(e) if e.hole == hole && e.zero == zero => e.length += length,
                _ => out.push(Extent { length, hole, zero }),
            }
        }
        if span.is_aligned() {
            return Ok(out);
        }
        Ok(slice_extents(out, span.head(), len))
    }
}
