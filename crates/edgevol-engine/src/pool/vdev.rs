//! The vdev layer: segment addresses to device offsets, and per-device
//! error counters.
//!
//! Each top-level group is one device for now (a stripe across groups);
//! mirrors and parity groups plug in here with the same interface.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::buf::AlignedBuf;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::format::label::PoolLayout;
use crate::layout::{SegId, DATA_START};

/// Write `buf` at device offset `at` of `m`, counting a failure.
async fn write_dev(m: &Member, at: u64, buf: AlignedBuf) -> std::io::Result<AlignedBuf> {
    let r = match (edgevol_io::current(), m.dev.raw_fd()) {
        (Some(ring), Some(fd)) => {
            let want = buf.len();
            match ring.write_at(fd, buf, at).await {
                (Ok(n), Some(b)) if n == want => Ok(b),
                (Ok(n), _) => Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("short write: {n} of {want} bytes"),
                )),
                (Err(e), _) => Err(e),
            }
        }
        _ => m.dev.write_at(buf.as_slice(), at).map(|()| buf),
    };
    if r.is_err() {
        m.stats.write_errors.fetch_add(1, Ordering::Relaxed);
    }
    r
}

/// Error counters of one device, as `zpool status` shows them.
#[derive(Debug, Default)]
pub struct DevStats {
    /// Failed reads.
    pub read_errors: AtomicU64,
    /// Failed writes and flushes.
    pub write_errors: AtomicU64,
    /// Reads whose data failed verification.
    pub checksum_errors: AtomicU64,
}

/// One member device.
pub struct Member {
    /// The device.
    pub dev: Arc<dyn Device>,
    /// Its guid in the layout.
    pub guid: u128,
    /// Its counters.
    pub stats: DevStats,
}

/// A top-level group.
pub struct Group {
    /// Members (one for a single-device group).
    pub members: Vec<Member>,
    /// Usable segments.
    pub segments: u32,
}

/// All groups of a pool.
pub struct Vdevs {
    /// Groups, indexed by `SegId::group`.
    pub groups: Vec<Group>,
    /// Segment size in bytes.
    pub segment_size: u64,
}

impl Vdevs {
    /// Build from a layout and devices matched to it (same order).
    pub fn new(layout: &PoolLayout, devices: Vec<Vec<Arc<dyn Device>>>) -> Vdevs {
        let groups = layout
            .groups
            .iter()
            .zip(devices)
            .map(|(g, devs)| Group {
                segments: g.devices.iter().map(|d| d.segments).min().unwrap_or(0),
                members: g
                    .devices
                    .iter()
                    .zip(devs)
                    .map(|(d, dev)| Member {
                        dev,
                        guid: d.guid,
                        stats: DevStats::default(),
                    })
                    .collect(),
            })
            .collect();
        Vdevs {
            groups,
            segment_size: layout.segment_size,
        }
    }

    fn member(&self, seg: SegId) -> Result<&Member> {
        let g = self
            .groups
            .get(seg.group as usize)
            .filter(|g| seg.index < g.segments)
            .ok_or_else(|| Error::corrupt(format!("segment {seg:?} does not exist")))?;
        g.members
            .first()
            .ok_or_else(|| Error::corrupt(format!("group {} has no devices", seg.group)))
    }

    /// Device offset of byte `off` of segment `seg`.
    pub fn device_offset(&self, seg: SegId, off: u64) -> u64 {
        DATA_START + u64::from(seg.index) * self.segment_size + off
    }

    fn check_span(&self, seg: SegId, off: u64, len: usize) -> Result<()> {
        if off + len as u64 > self.segment_size {
            return Err(Error::corrupt(format!(
                "I/O of {len} bytes at {off:#x} overruns segment {seg:?}"
            )));
        }
        Ok(())
    }

    /// True if I/O on this segment completes inline (memory devices).
    pub fn is_memory(&self, seg: SegId) -> bool {
        self.member(seg).map(|m| m.dev.is_memory()).unwrap_or(true)
    }

    /// Read `buf.len()` bytes at `off` within segment `seg`.
    pub fn read(&self, seg: SegId, off: u64, buf: &mut [u8]) -> Result<()> {
        self.check_span(seg, off, buf.len())?;
        let m = self.member(seg)?;
        m.dev
            .read_at(buf, self.device_offset(seg, off))
            .map_err(|e| {
                m.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                Error::io(
                    format!(
                        "read of segment {seg:?} at {off:#x} on {} failed",
                        m.dev.describe()
                    ),
                    e,
                )
            })
    }

    /// Write `buf` at `off` within segment `seg`.
    pub fn write(&self, seg: SegId, off: u64, buf: &[u8]) -> Result<()> {
        self.check_span(seg, off, buf.len())?;
        let m = self.member(seg)?;
        m.dev
            .write_at(buf, self.device_offset(seg, off))
            .map_err(|e| {
                m.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                Error::io(
                    format!(
                        "write of segment {seg:?} at {off:#x} on {} failed",
                        m.dev.describe()
                    ),
                    e,
                )
            })
    }

    /// Read `buf.len()` bytes at `off` within segment `seg` into `buf`:
    /// through the calling thread's io_uring if it has one (the data path),
    /// else with a blocking read.
    pub async fn read_owned(
        &self,
        seg: SegId,
        off: u64,
        mut buf: AlignedBuf,
    ) -> Result<AlignedBuf> {
        self.check_span(seg, off, buf.len())?;
        let m = self.member(seg)?;
        let at = self.device_offset(seg, off);
        let fail = |e: std::io::Error| {
            m.stats.read_errors.fetch_add(1, Ordering::Relaxed);
            Error::io(
                format!(
                    "read of segment {seg:?} at {off:#x} on {} failed",
                    m.dev.describe()
                ),
                e,
            )
        };
        match (edgevol_io::current(), m.dev.raw_fd()) {
            (Some(ring), Some(fd)) => {
                let want = buf.len();
                let (r, b) = ring.read_at(fd, buf, at).await;
                let b = b.ok_or_else(|| Error::corrupt("io_uring lost a read buffer"))?;
                match r {
                    Ok(n) if n == want => Ok(b),
                    Ok(n) => Err(fail(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("short read: {n} of {want} bytes"),
                    ))),
                    Err(e) => Err(fail(e)),
                }
            }
            _ => {
                m.dev.read_at(buf.as_mut_slice(), at).map_err(fail)?;
                Ok(buf)
            }
        }
    }

    /// Write `buf` at `off` within segment `seg` (io_uring if the calling
    /// thread has one, else blocking). Returns the buffer.
    pub async fn write_owned(&self, seg: SegId, off: u64, buf: AlignedBuf) -> Result<AlignedBuf> {
        self.check_span(seg, off, buf.len())?;
        let m = self.member(seg)?;
        write_dev(m, self.device_offset(seg, off), buf)
            .await
            .map_err(|e| {
                Error::io(
                    format!(
                        "write of segment {seg:?} at {off:#x} on {} failed",
                        m.dev.describe()
                    ),
                    e,
                )
            })
    }

    /// Write the same block at a raw device offset on every device (labels,
    /// uberblocks), through the calling thread's io_uring if it has one.
    pub async fn write_everywhere_async(&self, offset: u64, data: &[u8]) -> Result<()> {
        let len = data.len().div_ceil(crate::layout::BLOCK) * crate::layout::BLOCK;
        for g in &self.groups {
            for m in &g.members {
                let mut b = AlignedBuf::zeroed(len);
                b.as_mut_slice()[..data.len()].copy_from_slice(data);
                write_dev(m, offset, b).await.map_err(|e| {
                    Error::io(
                        format!("write at {offset:#x} on {} failed", m.dev.describe()),
                        e,
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Flush every device (concurrently through io_uring when the calling
    /// thread has one).
    pub async fn flush_all_async(&self) -> Result<()> {
        let Some(ring) = edgevol_io::current() else {
            return self.flush_all();
        };
        let mut ops = Vec::new();
        for g in &self.groups {
            for m in &g.members {
                match m.dev.raw_fd() {
                    Some(fd) => ops.push((m, Some(ring.fdatasync(fd)))),
                    None => ops.push((m, None)),
                }
            }
        }
        let mut first_err = None;
        for (m, op) in ops {
            let r = match op {
                Some(op) => op.await.0.map(drop),
                None => m.dev.flush(),
            };
            if let Err(e) = r {
                m.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                first_err.get_or_insert(Error::io(
                    format!("flush of {} failed", m.dev.describe()),
                    e,
                ));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Count a checksum failure on the device holding `seg`.
    pub fn note_checksum_error(&self, seg: SegId) {
        if let Ok(m) = self.member(seg) {
            m.stats.checksum_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Flush every device.
    pub fn flush_all(&self) -> Result<()> {
        for g in &self.groups {
            for m in &g.members {
                m.dev.flush().map_err(|e| {
                    m.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    Error::io(format!("flush of {} failed", m.dev.describe()), e)
                })?;
            }
        }
        Ok(())
    }

    /// Write the same block at a raw device offset on every device (labels,
    /// uberblocks). Fails if any device fails.
    pub fn write_everywhere(&self, offset: u64, data: &[u8]) -> Result<()> {
        let mut b = crate::buf::AlignedBuf::zeroed(
            data.len().div_ceil(crate::layout::BLOCK) * crate::layout::BLOCK,
        );
        b.as_mut_slice()[..data.len()].copy_from_slice(data);
        let buf = b.as_slice();
        for g in &self.groups {
            for m in &g.members {
                m.dev.write_at(buf, offset).map_err(|e| {
                    m.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    Error::io(
                        format!("write at {offset:#x} on {} failed", m.dev.describe()),
                        e,
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Every device, with its group index.
    pub fn devices(&self) -> impl Iterator<Item = (usize, &Member)> {
        self.groups
            .iter()
            .enumerate()
            .flat_map(|(i, g)| g.members.iter().map(move |m| (i, m)))
    }

    /// Total segments.
    pub fn total_segments(&self) -> u64 {
        self.groups.iter().map(|g| u64::from(g.segments)).sum()
    }
}
