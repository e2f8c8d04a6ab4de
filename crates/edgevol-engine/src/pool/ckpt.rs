//! Checkpoints: the durable root of a pool's state.
//!
//! A checkpoint (an envelope of kind `Checkpoint`) holds the catalog, the
//! map manifest (runs), a reference to the counters table, and the replay
//! point: where each log stream continues after the state the runs
//! describe. Recovery = load the newest checkpoint + replay the log from its
//! replay point. Checkpoints are appended to a metadata segment (the
//! checkpoint log); the uberblock ring points at the newest one.
//!
//! Write order (each step durable before the next):
//! 1. runs / counters blob / checkpoint envelope written and flushed;
//! 2. uberblock written to the next slot on every device and flushed;
//! 3. only then may segments the old checkpoint referenced be reused.

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::format::envelope::{self, Kind};
use crate::layout::{MetaExtent, SegId, BLOCK};
use crate::map::Manifest;

use super::space::Counters;
use super::vdev::Vdevs;

/// Where a log stream continues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPos {
    /// Current segment (None: the stream never wrote).
    pub seg: Option<SegId>,
    /// Next write offset in it.
    pub off: u32,
    /// Reserved successor segment.
    pub next: Option<SegId>,
    /// Lsn of the last batch written.
    pub prev_lsn: u64,
    /// Header crc of the last batch written.
    pub prev_crc: u32,
}

/// Where replay starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayPoint {
    /// Batches with lsn >= this are not in the runs.
    pub lsn: u64,
    /// Each stream's position at that point.
    pub streams: Vec<StreamPos>,
}

/// A blob stored in metadata extents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// Extents, in order.
    pub extents: Vec<MetaExtent>,
    /// Bytes (padded envelope).
    pub len: u64,
    /// crc32c of the bytes.
    pub crc: u32,
}

/// A checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number (matches the uberblock).
    pub seq: u64,
    /// Volumes, snapshots, lineages.
    pub catalog: Catalog,
    /// Map runs.
    pub manifest: Manifest,
    /// Counters as of the replay point.
    pub counters: BlobRef,
    /// Where replay starts.
    pub replay: ReplayPoint,
    /// Next lsn to use.
    pub next_lsn: u64,
    /// Next run id.
    pub next_run_id: u64,
    /// Segment of the checkpoint log holding this checkpoint.
    pub log_segment: SegId,
    /// Members of redundant groups that were not receiving writes when
    /// this checkpoint was written (FAULTED, missing, or still
    /// RESILVERING), by device guid: their data may be stale, and import
    /// resilvers them. A member that merely lacks the newest uberblock
    /// (the power failed between the uberblock writes of two members) is
    /// not stale: the checkpoint it points to was flushed everywhere first.
    pub stale_members: Vec<u128>,
}

/// Write `bytes` over `extents`, first to last.
pub fn write_blob(vdevs: &Vdevs, extents: &[MetaExtent], bytes: &[u8]) -> Result<()> {
    let mut rest = bytes;
    for e in extents {
        if rest.is_empty() {
            break;
        }
        let n = (e.len() as usize).min(rest.len());
        write_aligned(vdevs, e.seg, e.offset(), &rest[..n])?;
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        return Err(Error::corrupt("blob larger than its extents"));
    }
    Ok(())
}

/// [`write_blob`] through the calling thread's io_uring, if it has one.
pub async fn write_blob_async(vdevs: &Vdevs, extents: &[MetaExtent], bytes: Vec<u8>) -> Result<()> {
    let mut rest = &bytes[..];
    for e in extents {
        if rest.is_empty() {
            break;
        }
        let n = (e.len() as usize).min(rest.len());
        write_aligned_async(vdevs, e.seg, e.offset(), &rest[..n]).await?;
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        return Err(Error::corrupt("blob larger than its extents"));
    }
    Ok(())
}

/// Read a blob written by [`write_blob`] and check its crc.
pub fn read_blob(vdevs: &Vdevs, r: &BlobRef) -> Result<Vec<u8>> {
    let total: u64 = r.extents.iter().map(MetaExtent::len).sum();
    if total < r.len || r.len > 1 << 36 {
        return Err(Error::corrupt("blob reference shorter than its length"));
    }
    // The blob's one crc covers all its extents: read it from the usual
    // copies, and if that fails the check, from each variant in turn (one
    // mirror side, or a parity rebuild without one member).
    let variants = vdevs
        .groups
        .iter()
        .map(|g| g.members.len())
        .max()
        .unwrap_or(1);
    let mut last = Error::corrupt("metadata blob checksum mismatch");
    for variant in std::iter::once(None).chain((0..variants).map(Some)) {
        let mut out = vec![0u8; r.len as usize];
        let mut at = 0usize;
        let mut read = Ok(());
        for e in &r.extents {
            if at == out.len() {
                break;
            }
            let n = (e.len() as usize).min(out.len() - at);
            read = match variant {
                None => read_aligned(vdevs, e.seg, e.offset(), &mut out[at..at + n]),
                Some(v) => vdevs.read_variant(e.seg, e.offset(), &mut out[at..at + n], v),
            };
            if read.is_err() {
                break;
            }
            at += n;
        }
        match read {
            Ok(()) if crc32c::crc32c(&out) == r.crc => return Ok(out),
            Ok(()) => {}
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Read through an aligned bounce buffer (O_DIRECT needs aligned memory).
pub fn read_aligned(vdevs: &Vdevs, seg: SegId, off: u64, out: &mut [u8]) -> Result<()> {
    let mut b = crate::buf::AlignedBuf::zeroed(out.len().div_ceil(BLOCK) * BLOCK);
    vdevs.read(seg, off, b.as_mut_slice())?;
    out.copy_from_slice(&b.as_slice()[..out.len()]);
    Ok(())
}

/// Write through an aligned bounce buffer.
pub fn write_aligned(vdevs: &Vdevs, seg: SegId, off: u64, data: &[u8]) -> Result<()> {
    let mut b = crate::buf::AlignedBuf::zeroed(data.len().div_ceil(BLOCK) * BLOCK);
    b.as_mut_slice()[..data.len()].copy_from_slice(data);
    vdevs.write(seg, off, b.as_slice())
}

/// [`write_aligned`] through the calling thread's io_uring, if it has one.
pub async fn write_aligned_async(vdevs: &Vdevs, seg: SegId, off: u64, data: &[u8]) -> Result<()> {
    let mut b = crate::buf::AlignedBuf::zeroed(data.len().div_ceil(BLOCK) * BLOCK);
    b.as_mut_slice()[..data.len()].copy_from_slice(data);
    vdevs.write_owned(seg, off, b).await.map(drop)
}

/// Encode counters as a padded envelope.
pub fn encode_counters(c: &Counters) -> Vec<u8> {
    envelope::encode(Kind::Counters, c)
}

/// Decode counters.
pub fn decode_counters(b: &[u8]) -> Result<Counters> {
    Ok(envelope::decode(Kind::Counters, b)?)
}

/// Encode a checkpoint as a padded envelope.
pub fn encode_checkpoint(c: &Checkpoint) -> Vec<u8> {
    envelope::encode(Kind::Checkpoint, c)
}

/// Decode a checkpoint.
pub fn decode_checkpoint(b: &[u8]) -> Result<Checkpoint> {
    Ok(envelope::decode(Kind::Checkpoint, b)?)
}
