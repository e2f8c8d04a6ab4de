//! The read pipeline under [`super::Volume`]: resolved map pieces become
//! device reads (contiguous plain blocks merged into one read; packed
//! records read whole), every block verified, records authenticated,
//! decrypted and decompressed.
//!
//! Keeps invariant 2 of shared/DESIGN.md (every read is verified: a block
//! that fails its crc32c, or a record that fails its crc or seal, is healed
//! through `read_verified` from redundancy or returned as EIO, with the
//! device's error counted) and 3 (holes and zeroed blocks read as zeroes).

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::ReadSeg;
use crate::chunk::{Piece, PieceKind};
use crate::device::IoMode;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{Paddr, BLOCK, BLOCK_U64};
use crate::map::DataRef;
use crate::pool::Shared;

/// One step of a read: zeroes, one device read of contiguous plain blocks,
/// or (part of) one compressed or encrypted record, read whole.
enum Part {
    Zero(u64),
    Read {
        at: Paddr,
        blocks: u64,
        csums: Vec<u32>,
    },
    Record {
        d: DataRef,
        lineage: u32,
        /// The record's first block (its place, for authentication).
        rec_lba: u64,
        birth: u64,
        /// Blocks wanted, from `d.rec_off`.
        blocks: u64,
    },
}

/// Read the resolved `pieces` (caller holds a reuse-gate ticket): every
/// device read at once, through the thread's io_uring when it has one;
/// every block verified (checksums, or authentication for encrypted
/// records, which are decrypted), compressed records decompressed.
pub(crate) async fn read_pieces(sh: &Shared, pieces: &[Piece]) -> Result<Vec<ReadSeg>> {
    let mut plan: Vec<Part> = Vec::new();
    plan_reads(pieces, &mut plan);
    let reads = plan.iter().map(|p| read_part(sh, p));
    futures::future::join_all(reads).await.into_iter().collect()
}

async fn read_part(sh: &Shared, p: &Part) -> Result<ReadSeg> {
    match p {
        Part::Zero(bytes) => Ok(ReadSeg::Zero(*bytes)),
        Part::Read { at, blocks, csums } => {
            let len = (*blocks * BLOCK_U64) as usize;
            let ok = |b: &[u8]| blocks_match(b, csums);
            let buf = sh
                .vdevs
                .read_verified(at.seg, u64::from(at.offset), len, IoMode::Async, &ok)
                .await
                .map_err(|e| data_error(sh, *at, e))?;
            Ok(ReadSeg::Data(Bytes::from_owner(buf)))
        }
        Part::Record {
            d,
            lineage,
            rec_lba,
            birth,
            blocks,
        } => {
            let key = match d.enc {
                crate::crypt::ENC_NONE => None,
                _ => Some(lineage_key(sh, *lineage)?),
            };
            // The stored record, from an aligned span around it.
            let start = u64::from(d.paddr.offset) & !(BLOCK_U64 - 1);
            let end =
                (u64::from(d.paddr.offset) + u64::from(d.stored_len)).next_multiple_of(BLOCK_U64);
            let lo = (u64::from(d.paddr.offset) - start) as usize;
            let (n, want) = (d.stored_len as usize, d.csums.first().copied());
            let ok = |b: &[u8]| b.get(lo..lo + n).map(crc32c::crc32c) == want;
            let mut buf = sh
                .vdevs
                .read_verified(
                    d.paddr.seg,
                    start,
                    (end - start) as usize,
                    IoMode::Async,
                    &ok,
                )
                .await
                .map_err(|e| data_error(sh, d.paddr, e))?;
            let stored = &mut buf.as_mut_slice()[lo..lo + d.stored_len as usize];
            let plain = open_record(sh, *lineage, *rec_lba, *birth, d, key.as_deref(), stored)?;
            let from = usize::from(d.rec_off) * BLOCK;
            let len = *blocks as usize * BLOCK;
            match plain {
                None => {
                    let b = Bytes::from_owner(buf);
                    Ok(ReadSeg::Data(b.slice(lo + from..lo + from + len)))
                }
                Some(p) => Ok(ReadSeg::Data(Bytes::from(p).slice(from..from + len))),
            }
        }
    }
}

/// Open a packed record's stored bytes, in place, once the caller has
/// checked their crc (the read path in `Vdevs::read_verified`, the cleaner
/// before it re-stores): authentication and decryption (with `key`, if the
/// record is encrypted), then decompression. Returns the decompressed
/// record, or None if it was not compressed (the plaintext is then
/// `stored`). Failed authentication counts as a checksum error.
pub(crate) fn open_record(
    sh: &Shared,
    lineage: u32,
    rec_lba: u64,
    birth: u64,
    d: &DataRef,
    key: Option<&crate::crypt::DataKey>,
    stored: &mut [u8],
) -> Result<Option<Vec<u8>>> {
    if let (Some(key), Some(seal)) = (key, &d.seal) {
        let place = crate::crypt::RecordPlace {
            lineage,
            lba: rec_lba,
            birth,
            blocks: d.rec_blocks,
            comp: d.comp,
        };
        if let Err(e) = key.open(seal, &place, stored) {
            sh.vdevs.note_checksum_error(d.paddr.seg);
            sh.stats.checksum_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(pool = %sh.name, record = ?d.paddr, "encrypted record failed authentication");
            return Err(e);
        }
    }
    if d.comp == crate::compress::COMP_NONE {
        return Ok(None);
    }
    crate::compress::decompress(d.comp, stored, d.logical() as usize).map(Some)
}

/// The loaded key that decrypts records of lineage `l`.
pub(crate) fn lineage_key(sh: &Shared, l: u32) -> Result<std::sync::Arc<crate::crypt::DataKey>> {
    let id = sh.catalog().key_of(l);
    id.and_then(|id| sh.key(id)).ok_or_else(|| {
        Error::new(
            ErrorKind::PermissionDenied,
            "the data is encrypted and its key is not loaded (edgevol volume load-key)",
        )
    })
}

/// Turn resolved pieces into reads, merging physically contiguous plain
/// fragments into one device read (at most 1 MiB) and consecutive pieces
/// of one packed record into one record read.
fn plan_reads(pieces: &[Piece], out: &mut Vec<Part>) {
    let mut i = 0;
    while i < pieces.len() {
        let p = &pieces[i];
        match &p.kind {
            PieceKind::Hole | PieceKind::Zero { .. } => {
                let bytes = u64::from(p.nblocks) * BLOCK_U64;
                match out.last_mut() {
                    Some(Part::Zero(z)) => *z += bytes,
                    _ => out.push(Part::Zero(bytes)),
                }
                i += 1;
            }
            PieceKind::Data(d) if !d.is_plain() => {
                let (lineage, birth) = p.origin.unwrap_or((0, 0));
                let rec_lba = p.lba - u64::from(d.rec_off);
                let mut blocks = u64::from(p.nblocks);
                let mut j = i + 1;
                while let Some(q) = pieces.get(j) {
                    let PieceKind::Data(n) = &q.kind else { break };
                    if n.paddr != d.paddr
                        || q.origin != p.origin
                        || u64::from(n.rec_off) != u64::from(d.rec_off) + blocks
                    {
                        break;
                    }
                    blocks += u64::from(q.nblocks);
                    j += 1;
                }
                out.push(Part::Record {
                    d: d.clone(),
                    lineage,
                    rec_lba,
                    birth,
                    blocks,
                });
                i = j;
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
                    let contiguous = n.is_plain()
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
                out.push(Part::Read {
                    at: start,
                    blocks,
                    csums,
                });
                i = j;
            }
        }
    }
}

/// Do the 4 KiB blocks of `data` match their checksums?
pub(crate) fn blocks_match(data: &[u8], csums: &[u32]) -> bool {
    data.chunks(BLOCK)
        .zip(csums)
        .all(|(b, want)| crc32c::crc32c(b) == *want)
}

/// A read that no copy could satisfy: count and log checksum failures.
fn data_error(sh: &Shared, at: Paddr, e: Error) -> Error {
    if e.kind() == ErrorKind::Corrupt {
        sh.stats.checksum_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(pool = %sh.name, record = ?at, error = %e, "unrecoverable checksum mismatch on read");
    }
    e
}
