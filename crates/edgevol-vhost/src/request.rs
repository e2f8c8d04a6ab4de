//! virtio-blk requests: parsing a descriptor chain, and executing it on a
//! [`BlockDevice`]. Everything here treats the guest as hostile: every
//! buffer is checked against guest memory before use, every length and
//! sector against the device, and every failure becomes a virtio status
//! (or, when the chain has no status byte at all, a used entry of length
//! 0), never a panic.
//!
//! A request is a stream of device-readable bytes followed by a stream of
//! device-writable bytes, however the driver cut them into descriptors
//! (virtio 1.x has no fixed layout):
//!
//! ```text
//!  readable: | type u32 | reserved u32 | sector u64 | payload (OUT: data; DISCARD/WRITE_ZEROES: segments) |
//!  writable: | payload (IN: data; GET_ID: 20 bytes) | status u8 |
//! ```

use bytes::Bytes;
use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes as _, GuestAddress, GuestMemory, Permissions};

use crate::config::{self, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_REQUEST_BYTES, SECTOR};
use crate::device::{BlockDevice, Chunk, DevError, DevErrorKind};

/// `VIRTIO_BLK_S_OK`.
pub const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
/// `VIRTIO_BLK_S_IOERR`.
pub const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
/// `VIRTIO_BLK_S_UNSUPP`.
pub const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

const HEADER: u64 = 16;
/// One discard / write-zeroes segment: sector u64, num_sectors u32, flags u32.
const DISCARD_SEG: u64 = 16;

/// A run of guest memory (inside guest memory: checked when parsed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Bytes.
    pub len: u32,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `VIRTIO_BLK_T_IN`.
    Read,
    /// `VIRTIO_BLK_T_OUT`.
    Write,
    /// `VIRTIO_BLK_T_FLUSH`.
    Flush,
    /// `VIRTIO_BLK_T_GET_ID`.
    GetId,
    /// `VIRTIO_BLK_T_DISCARD`.
    Discard,
    /// `VIRTIO_BLK_T_WRITE_ZEROES`.
    WriteZeroes,
    /// Anything else (SCSI, zoned, secure erase, legacy barriers, ...).
    Other(u32),
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What it asks for.
    pub kind: Kind,
    /// First sector (512 bytes, whatever the block size).
    pub sector: u64,
    /// Device-readable payload (after the header).
    pub out: Vec<Seg>,
    /// Device-writable payload (before the status byte).
    pub inp: Vec<Seg>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a chain is not a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The status byte, when the chain has a usable one: the request then
    /// completes with `VIRTIO_BLK_S_IOERR`; without one it completes with
    /// a used length of 0.
    pub status: Option<GuestAddress>,
    /// What is wrong, for the log.
    pub reason: String,
}

fn seg_end(s: &Seg) -> Option<GuestAddress> {
    s.addr.checked_add(u64::from(s.len))
}

fn total(segs: &[Seg]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// The part of `segs` from byte `skip` on.
fn skip_bytes(segs: &[Seg], mut skip: u64) -> Vec<Seg> {
    let mut out = Vec::new();
    for s in segs {
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        // skip < len <= u32::MAX
        let rest = (len - skip) as u32;
        out.push(Seg {
            addr: GuestAddress(s.addr.0 + skip),
            len: rest,
        });
        skip = 0;
    }
    out
}

/// Copy the first `buf.len()` bytes of `segs` into `buf`.
fn gather_into<M: GuestMemory>(mem: &M, segs: &[Seg], buf: &mut [u8]) -> Result<(), String> {
    let mut at = 0usize;
    for s in segs {
        if at == buf.len() {
            break;
        }
        let n = (s.len as usize).min(buf.len() - at);
        let dst = buf
            .get_mut(at..at + n)
            .ok_or_else(|| "gather: buffer slice out of range".to_string())?;
        mem.read_slice(dst, s.addr)
            .map_err(|e| format!("guest memory read at {:#x}: {e}", s.addr.0))?;
        at += n;
    }
    if at < buf.len() {
        return Err(format!("{} bytes short", buf.len() - at));
    }
    Ok(())
}

/// Parse one descriptor chain (as `virtio_queue::DescriptorChain` yields
/// it: a chain that loops or points outside the descriptor table simply
/// ends early).
pub fn parse<M: GuestMemory>(
    mem: &M,
    descs: impl Iterator<Item = Descriptor>,
) -> Result<Request, Malformed> {
    let mut readable = Vec::new();
    let mut writable: Vec<Seg> = Vec::new();
    let mut problem: Option<String> = None;
    for d in descs {
        let seg = Seg {
            addr: d.addr(),
            len: d.len(),
        };
        if seg.len == 0 {
            continue;
        }
        if d.is_write_only() {
            writable.push(seg);
        } else {
            if !writable.is_empty() && problem.is_none() {
                problem = Some("a device-readable descriptor follows a writable one".into());
            }
            readable.push(seg);
        }
    }
    // The status byte: the last byte of the writable stream.
    let Some(last) = writable.pop() else {
        return Err(Malformed {
            status: None,
            reason: "no device-writable descriptor for the status byte".into(),
        });
    };
    let status = last.addr.checked_add(u64::from(last.len) - 1);
    let status = status.filter(|a| GuestMemory::check_range(mem, *a, 1, Permissions::Write));
    if last.len > 1 {
        writable.push(Seg {
            addr: last.addr,
            len: last.len - 1,
        });
    }
    let Some(status) = status else {
        return Err(Malformed {
            status: None,
            reason: format!(
                "status byte at {:#x}+{} is outside guest memory",
                last.addr.0, last.len
            ),
        });
    };
    let bad = |reason: String| Malformed {
        status: Some(status),
        reason,
    };
    if let Some(p) = problem {
        return Err(bad(p));
    }
    let all = readable
        .iter()
        .map(|s| (s, Permissions::Read))
        .chain(writable.iter().map(|s| (s, Permissions::Write)));
    for (s, access) in all {
        if seg_end(s).is_none() || !GuestMemory::check_range(mem, s.addr, s.len as usize, access) {
            return Err(bad(format!(
                "buffer {:#x}+{} is outside guest memory",
                s.addr.0, s.len
            )));
        }
    }
    if total(&readable) < HEADER {
        return Err(bad(format!(
            "{} readable bytes: no room for the 16-byte request header",
            total(&readable)
        )));
    }
    let mut hdr = [0u8; HEADER as usize];
    gather_into(mem, &readable, &mut hdr).map_err(bad)?;
    let mut t = [0u8; 4];
    t.copy_from_slice(&hdr[0..4]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&hdr[8..16]);
    let kind = match u32::from_le_bytes(t) {
        VIRTIO_BLK_T_IN => Kind::Read,
        VIRTIO_BLK_T_OUT => Kind::Write,
        VIRTIO_BLK_T_FLUSH => Kind::Flush,
        VIRTIO_BLK_T_GET_ID => Kind::GetId,
        VIRTIO_BLK_T_DISCARD => Kind::Discard,
        VIRTIO_BLK_T_WRITE_ZEROES => Kind::WriteZeroes,
        other => Kind::Other(other),
    };
    Ok(Request {
        kind,
        sector: u64::from_le_bytes(s),
        out: skip_bytes(&readable, HEADER),
        inp: writable,
        status,
    })
}

/// How a request ended: the status byte and the used length (bytes the
/// device wrote into the chain, status included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The virtio status written.
    pub status: u8,
    /// The used ring's `len`.
    pub used_len: u32,
}

/// What the execution of a request needs besides the device.
#[derive(Debug, Clone)]
pub struct ExecCtx {
    /// Writes, discards and write-zeroes fail with IOERR.
    pub read_only: bool,
    /// The device's cache mode: with write-through (false) every write is
    /// made durable before it completes.
    pub writeback: bool,
    /// `GET_ID` answer.
    pub id: [u8; config::ID_BYTES],
}

struct Fail {
    status: u8,
    why: String,
}

fn ioerr(why: impl Into<String>) -> Fail {
    Fail {
        status: S_IOERR,
        why: why.into(),
    }
}

fn from_dev(e: DevError) -> Fail {
    Fail {
        status: match e.kind {
            DevErrorKind::Unsupported => S_UNSUPP,
            DevErrorKind::Io => S_IOERR,
        },
        why: e.message,
    }
}

/// The byte range of `len` bytes at `sector`, checked against the device.
fn byte_range(sector: u64, len: u64, size: u64) -> Result<u64, Fail> {
    let off = sector
        .checked_mul(SECTOR)
        .ok_or_else(|| ioerr(format!("sector {sector} overflows")))?;
    let end = off
        .checked_add(len)
        .ok_or_else(|| ioerr(format!("sector {sector} + {len} bytes overflows")))?;
    if end > size {
        return Err(ioerr(format!(
            "bytes {off}..{end} are past the end of the device ({size} bytes)"
        )));
    }
    Ok(off)
}

fn scatter<M: GuestMemory>(mem: &M, segs: &[Seg], chunks: Vec<Chunk>) -> Result<u64, Fail> {
    static ZEROES: [u8; 64 << 10] = [0; 64 << 10];
    let mut segs = segs.iter().copied();
    let mut cur: Option<Seg> = None;
    let mut written = 0u64;
    let mut put = |mut data: &[u8], cur: &mut Option<Seg>| -> Result<(), Fail> {
        while !data.is_empty() {
            let s = match cur.take() {
                Some(s) if s.len > 0 => s,
                _ => segs
                    .next()
                    .ok_or_else(|| ioerr("the device returned more data than asked for"))?,
            };
            let n = (s.len as usize).min(data.len());
            let (head, rest) = data.split_at(n);
            mem.write_slice(head, s.addr)
                .map_err(|e| ioerr(format!("guest memory write at {:#x}: {e}", s.addr.0)))?;
            written += n as u64;
            data = rest;
            *cur = Some(Seg {
                addr: GuestAddress(s.addr.0 + n as u64),
                len: s.len - n as u32,
            });
        }
        Ok(())
    };
    for c in chunks {
        match c {
            Chunk::Data(b) => put(&b, &mut cur)?,
            Chunk::Zero(mut n) => {
                while n > 0 {
                    let k = n.min(ZEROES.len() as u64) as usize;
                    put(&ZEROES[..k], &mut cur)?;
                    n -= k as u64;
                }
            }
        }
    }
    Ok(written)
}

fn data_len(segs: &[Seg]) -> Result<u64, Fail> {
    let len = total(segs);
    if !len.is_multiple_of(SECTOR) {
        return Err(ioerr(format!("data length {len} is not a multiple of 512")));
    }
    if len > MAX_REQUEST_BYTES {
        return Err(ioerr(format!(
            "data length {len} exceeds the {MAX_REQUEST_BYTES}-byte limit"
        )));
    }
    Ok(len)
}

/// One discard / write-zeroes segment.
#[derive(Debug, Clone, Copy)]
struct DiscardSeg {
    sector: u64,
    sectors: u32,
    flags: u32,
}

fn discard_segs<M: GuestMemory>(mem: &M, out: &[Seg]) -> Result<Vec<DiscardSeg>, Fail> {
    let len = total(out);
    if len == 0 || !len.is_multiple_of(DISCARD_SEG) {
        return Err(ioerr(format!(
            "{len} payload bytes is not a whole number of 16-byte segments"
        )));
    }
    let n = len / DISCARD_SEG;
    if n > u64::from(MAX_DISCARD_SEG) {
        return Err(ioerr(format!(
            "{n} segments, more than max_discard_seg {MAX_DISCARD_SEG}"
        )));
    }
    let mut raw = vec![0u8; len as usize];
    gather_into(mem, out, &mut raw).map_err(ioerr)?;
    Ok(raw
        .chunks_exact(DISCARD_SEG as usize)
        .map(|c| {
            let mut s = [0u8; 8];
            s.copy_from_slice(&c[0..8]);
            let mut n = [0u8; 4];
            n.copy_from_slice(&c[8..12]);
            let mut f = [0u8; 4];
            f.copy_from_slice(&c[12..16]);
            DiscardSeg {
                sector: u64::from_le_bytes(s),
                sectors: u32::from_le_bytes(n),
                flags: u32::from_le_bytes(f),
            }
        })
        .collect())
}

async fn run<D: BlockDevice, M: GuestMemory>(
    dev: &D,
    mem: &M,
    req: &Request,
    ctx: &ExecCtx,
) -> Result<u32, Fail> {
    let fua = !ctx.writeback;
    match req.kind {
        Kind::Read => {
            let len = data_len(&req.inp)?;
            let off = byte_range(req.sector, len, dev.size())?;
            if len == 0 {
                return Ok(0);
            }
            let chunks = dev.read(off, len).await.map_err(from_dev)?;
            let n = scatter(mem, &req.inp, chunks)?;
            if n != len {
                return Err(ioerr(format!("the device returned {n} of {len} bytes")));
            }
            u32::try_from(len).map_err(|_| ioerr("read too large"))
        }
        Kind::Write => {
            if ctx.read_only {
                return Err(ioerr("write to a read-only device"));
            }
            let len = data_len(&req.out)?;
            let off = byte_range(req.sector, len, dev.size())?;
            if len == 0 {
                return Ok(0);
            }
            let mut buf = vec![0u8; len as usize];
            gather_into(mem, &req.out, &mut buf).map_err(ioerr)?;
            dev.write(off, Bytes::from(buf), fua)
                .await
                .map_err(from_dev)?;
            Ok(0)
        }
        Kind::Flush => {
            dev.flush().await.map_err(from_dev)?;
            Ok(0)
        }
        Kind::GetId => {
            let n = (total(&req.inp) as usize).min(ctx.id.len());
            let id = ctx.id.get(..n).unwrap_or(&[]);
            let w = scatter(mem, &req.inp, vec![Chunk::Data(Bytes::copy_from_slice(id))])?;
            u32::try_from(w).map_err(|_| ioerr("id too large"))
        }
        Kind::Discard | Kind::WriteZeroes => {
            if ctx.read_only {
                return Err(ioerr("discard or write-zeroes on a read-only device"));
            }
            let zeroes = req.kind == Kind::WriteZeroes;
            let segs = discard_segs(mem, &req.out)?;
            let size = dev.size();
            // Check them all before changing anything.
            let allowed = if zeroes {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            } else {
                0
            };
            let mut ranges = Vec::with_capacity(segs.len());
            for s in &segs {
                if s.flags & !allowed != 0 {
                    return Err(Fail {
                        status: S_UNSUPP,
                        why: format!("unsupported flags {:#x}", s.flags),
                    });
                }
                if s.sectors > MAX_DISCARD_SECTORS {
                    return Err(ioerr(format!(
                        "{} sectors, more than the limit {MAX_DISCARD_SECTORS}",
                        s.sectors
                    )));
                }
                let len = u64::from(s.sectors) * SECTOR;
                ranges.push((byte_range(s.sector, len, size)?, len, s.flags));
            }
            for (off, len, flags) in ranges {
                if len == 0 {
                    continue;
                }
                if zeroes {
                    let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
                    dev.write_zeroes(off, len, unmap, fua).await
                } else {
                    dev.discard(off, len, fua).await
                }
                .map_err(from_dev)?;
            }
            Ok(0)
        }
        Kind::Other(t) => Err(Fail {
            status: S_UNSUPP,
            why: format!("request type {t}"),
        }),
    }
}

/// Execute a parsed request: call the device, copy data in or out of
/// guest memory, write the status byte.
pub async fn execute<D: BlockDevice, M: GuestMemory>(
    dev: &D,
    mem: &M,
    req: &Request,
    ctx: &ExecCtx,
) -> Outcome {
    let (status, data) = match run(dev, mem, req, ctx).await {
        Ok(n) => (S_OK, n),
        Err(f) => {
            tracing::debug!(kind = ?req.kind, sector = req.sector, status = f.status, "virtio-blk request failed: {}", f.why);
            (f.status, 0)
        }
    };
    if let Err(e) = mem.write_obj(status, req.status) {
        // Checked when parsed; the memory map cannot shrink under an Arc.
        tracing::warn!(error = %e, "cannot write a virtio-blk status byte");
        return Outcome {
            status,
            used_len: 0,
        };
    }
    Outcome {
        status,
        used_len: data.saturating_add(1),
    }
}

/// The status for a malformed chain, written if it has a status byte.
pub fn reject<M: GuestMemory>(mem: &M, m: &Malformed) -> Outcome {
    match m.status {
        Some(a) if mem.write_obj(S_IOERR, a).is_ok() => Outcome {
            status: S_IOERR,
            used_len: 1,
        },
        _ => Outcome {
            status: S_IOERR,
            used_len: 0,
        },
    }
}

#[cfg(test)]
mod tests;
