//! The data path for clients: [`Volume`] handles, reads, and the I/O threads.
//!
//! Reads never go through the writer: they resolve blocks through the map
//! (a consistent snapshot of its sources), read the records from the
//! devices, and verify every block's checksum before returning it. A reader
//! holds a [reuse gate](super::gate) ticket from before the map lookup
//! until its device reads finish, so the segments it reads cannot be reused
//! under it.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use super::writer::{DataOp, DiscardMode};
use super::Shared;
use crate::buf::AlignedBuf;
use crate::catalog::Chain;
use crate::chunk::{self, Piece, PieceKind};
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{Paddr, BLOCK, BLOCK_U64};
use crate::map::Key;

type Job = Box<dyn FnOnce() + Send>;

/// Threads that run blocking device reads for async callers.
pub(crate) struct IoPool {
    tx: Mutex<Option<Sender<Job>>>,
    rx: Receiver<Job>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    n: usize,
}

impl IoPool {
    pub(crate) fn new(n: usize) -> IoPool {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        IoPool {
            tx: Mutex::new(Some(tx)),
            rx,
            threads: Mutex::new(Vec::new()),
            n: n.max(1),
        }
    }

    fn ensure_started(&self) {
        let mut t = self.threads.lock();
        if !t.is_empty() {
            return;
        }
        for i in 0..self.n {
            let rx = self.rx.clone();
            if let Ok(h) = std::thread::Builder::new()
                .name(format!("ev-io-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })
            {
                t.push(h);
            }
        }
    }

    /// Run `f` on an I/O thread.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> impl Future<Output = Result<T>> {
        self.ensure_started();
        let (tx, rx) = futures::channel::oneshot::channel();
        let sent = self
            .tx
            .lock()
            .as_ref()
            .map(|s| {
                s.send(Box::new(move || {
                    let _ = tx.send(f());
                }))
            })
            .is_some_and(|r| r.is_ok());
        async move {
            if !sent {
                return Err(Error::new(ErrorKind::Shutdown, "pool is closing"));
            }
            rx.await
                .map_err(|_| Error::new(ErrorKind::Shutdown, "pool is closing"))?
        }
    }

    pub(crate) fn close(&self) {
        self.tx.lock().take();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

/// A piece of a read result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadSeg {
    /// Bytes read.
    Data(Bytes),
    /// This many bytes of zeroes (unallocated or zeroed).
    Zero(u64),
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

    fn check_range(&self, offset: u64, len: u64) -> Result<(u64, u64)> {
        if !offset.is_multiple_of(BLOCK_U64) || !len.is_multiple_of(BLOCK_U64) {
            return Err(Error::invalid(format!(
                "offset {offset} and length {len} must be multiples of 4096"
            )));
        }
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
        Ok((offset / BLOCK_U64, len / BLOCK_U64))
    }

    /// Read `len` bytes at `offset` (both multiples of 4 KiB).
    ///
    /// The whole read (map resolution, which may read map blocks, and the
    /// device reads) runs as one job on an I/O thread, so a cache miss never
    /// blocks the caller's executor, and a request costs one thread hop.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Vec<ReadSeg>> {
        let (lba, n) = self.check_range(offset, len)?;
        let chain = self.chain()?;
        let sh = self.sh.clone();
        if self
            .sh
            .vdevs
            .groups
            .iter()
            .all(|g| g.members.iter().all(|m| m.dev.is_memory()))
        {
            return read_blocking(&sh, &chain, lba, n);
        }
        self.sh
            .io
            .run(move || read_blocking(&sh, &chain, lba, n))
            .await
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
        let (tx, rx) = futures::channel::oneshot::channel();
        self.sh
            .data_tx
            .send(make(tx))
            .await
            .map_err(|_| Error::new(ErrorKind::Shutdown, "pool is closing"))?;
        rx.await
            .map_err(|_| Error::new(ErrorKind::Shutdown, "pool is closing"))?
    }

    /// Write `data` (a multiple of 4 KiB) at `offset`; durable on return if `fua`.
    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<()> {
        self.writable()?;
        let (lba, _) = self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let vol = self.vol;
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

    async fn discard(&self, offset: u64, len: u64, mode: DiscardMode, fua: bool) -> Result<()> {
        self.writable()?;
        let (lba, nblocks) = self.check_range(offset, len)?;
        if nblocks == 0 {
            return Ok(());
        }
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
    /// first block and at most `len` bytes (capped at 64 MiB per call).
    pub async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let (lba, n) = self.check_range(offset, len)?;
        let n = n.min(MAX_STATUS_BLOCKS);
        let chain = self.chain()?;
        let sh = self.sh.clone();
        let job = move || -> Result<Vec<Extent>> {
            let pieces = chunk::resolve(&chain, lba, n as u32, |l, f, t| {
                Ok(sh
                    .map
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
            Ok(out)
        };
        if self
            .sh
            .vdevs
            .groups
            .iter()
            .all(|g| g.members.iter().all(|m| m.dev.is_memory()))
        {
            return job();
        }
        self.sh.io.run(job).await
    }
}

/// Resolve and read `[lba, lba + n)` through `chain`, verifying every block.
fn read_blocking(sh: &Shared, chain: &Chain, lba: u64, n: u64) -> Result<Vec<ReadSeg>> {
    // Held from before the map lookup until the last device read: the
    // segments we read cannot be reused under us.
    let _ticket = sh.gate.enter();
    let mut out = Vec::new();
    let mut done = 0u64;
    // Resolve in bounded windows so a huge read never builds a huge plan.
    while done < n {
        let w = (n - done).min(8192);
        let pieces = chunk::resolve(chain, lba + done, w as u32, |l, f, t| {
            Ok(sh
                .map
                .scan(Key::lower(l, f), Key::lower(l, t), usize::MAX)?
                .entries)
        })?;
        read_pieces(sh, &pieces, &mut out)?;
        done += w;
    }
    Ok(out)
}

fn read_pieces(sh: &Shared, pieces: &[Piece], out: &mut Vec<ReadSeg>) -> Result<()> {
    // Group physically contiguous raw fragments into one device read.
    let mut i = 0;
    while i < pieces.len() {
        let p = &pieces[i];
        match &p.kind {
            PieceKind::Hole | PieceKind::Zero { .. } => {
                let bytes = u64::from(p.nblocks) * BLOCK_U64;
                match out.last_mut() {
                    Some(ReadSeg::Zero(z)) => *z += bytes,
                    _ => out.push(ReadSeg::Zero(bytes)),
                }
                i += 1;
            }
            PieceKind::Data(d) => {
                let start = Paddr::new(
                    d.paddr.seg,
                    d.paddr.offset + u32::from(d.rec_off) * BLOCK as u32,
                );
                let mut csums: Vec<u32> = d.csums.to_vec();
                let mut blocks = u64::from(p.nblocks);
                let mut j = i + 1;
                while let Some(PieceKind::Data(n)) = pieces.get(j).map(|q| &q.kind) {
                    let at = n.paddr.offset + u32::from(n.rec_off) * BLOCK as u32;
                    let contiguous = n.comp == 0
                        && d.comp == 0
                        && n.paddr.seg == start.seg
                        && u64::from(at) == u64::from(start.offset) + blocks * BLOCK_U64
                        && blocks < 256;
                    if !contiguous {
                        break;
                    }
                    csums.extend_from_slice(&n.csums);
                    blocks += u64::from(n.nblocks);
                    j += 1;
                }
                out.push(ReadSeg::Data(read_raw(sh, start, blocks, &csums)?));
                i = j;
            }
        }
    }
    Ok(())
}

fn read_raw(sh: &Shared, at: Paddr, blocks: u64, csums: &[u32]) -> Result<Bytes> {
    let len = (blocks * BLOCK_U64) as usize;
    let mut buf = AlignedBuf::zeroed(len);
    sh.vdevs
        .read(at.seg, u64::from(at.offset), buf.as_mut_slice())?;
    for (i, (blk, want)) in buf.as_slice().chunks(BLOCK).zip(csums).enumerate() {
        if crc32c::crc32c(blk) != *want {
            sh.vdevs.note_checksum_error(at.seg);
            sh.stats.checksum_errors.fetch_add(1, Ordering::Relaxed);
            let off = u64::from(at.offset) + i as u64 * BLOCK_U64;
            tracing::error!(pool = %sh.name, segment = ?at.seg, offset = off, "checksum mismatch on read");
            return Err(Error::corrupt(format!(
                "checksum mismatch in segment {:?} at {off:#x}",
                at.seg
            )));
        }
    }
    Ok(Bytes::from_owner(buf))
}
