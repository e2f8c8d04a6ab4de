//! `pool check`'s data pass: read every queued record and verify it.
//!
//! Records arrive in map order, which is not disk order: after random
//! writes, neighbouring blocks of a volume lie anywhere in the pool. Read
//! one by one (as the check did before), 1.5 GiB of 4 KiB records took
//! 45-55 s, ten times longer than reading the volume through NBD. So the
//! records of a batch are sorted by their place on disk, records close to
//! each other are read as one span (reading over a small gap is cheaper
//! than another request), and the spans are read by a few threads at once.
//! A record that fails in the span is read again on its own through the
//! healing read, which tries every copy and repairs the bad ones, so the
//! check reports only what redundancy cannot fix.
//!
//! Invariant kept (shared/DESIGN.md): 2 — every stored block is verified
//! against the checksum its map entry holds.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{err, CheckReport, Record};
use crate::buf::AlignedBuf;
use crate::catalog::Catalog;
use crate::layout::{Paddr, SegId, BLOCK, BLOCK_U64};
use crate::pool::Shared;

/// Records per batch: bounds the memory the check holds (~120 bytes a
/// record, so ~60 MiB). A pool with more live records reads its data in
/// several passes over the segments, each picking out its share: at 128 Ki
/// records a pool of 384 Ki 4 KiB records read its 1.5 GiB three times
/// over (4.9 s, slower than reading the volume once through NBD; one batch:
/// 2.7 s).
pub(super) const BATCH: usize = 512 * 1024;

/// Records whose gap on disk is at most this are read as one span.
const MAX_GAP: u64 = 64 << 10;

/// Largest span read at once.
const MAX_SPAN: u64 = 4 << 20;

impl Record {
    fn paddr(&self) -> Paddr {
        self.frags[0].1.paddr
    }

    /// The aligned byte range of the record in its segment.
    fn range(&self) -> (u64, u64) {
        let d = &self.frags[0].1;
        let start = u64::from(d.paddr.offset) & !(BLOCK_U64 - 1);
        let end = (u64::from(d.paddr.offset) + u64::from(d.stored_len)).next_multiple_of(BLOCK_U64);
        (start, end)
    }

    /// Where the stored bytes lie within a read of [`Record::range`].
    fn stored(&self) -> std::ops::Range<usize> {
        let d = &self.frags[0].1;
        let lo = (u64::from(d.paddr.offset) & (BLOCK_U64 - 1)) as usize;
        lo..lo + d.stored_len as usize
    }

    /// True if `stored` matches the record's checksums (the cheap test
    /// that picks a good copy; [`Record::verify`] does the full one).
    fn checksums_match(&self, stored: &[u8]) -> bool {
        let d0 = &self.frags[0].1;
        if !d0.is_plain() {
            return d0.csums.first() == Some(&crc32c::crc32c(stored));
        }
        self.frags.iter().all(|(_, d)| {
            let s = usize::from(d.rec_off) * BLOCK;
            stored
                .get(s..s + d.csums.len() * BLOCK)
                .is_some_and(|x| crate::pool::volume::blocks_match(x, &d.csums))
        })
    }

    /// Verify the record's stored bytes: every block of a plain record;
    /// the checksum of a packed one, its authentication if its key is
    /// loaded, and that it decompresses. Errors go to `out`.
    fn verify(&self, sh: &Shared, cat: &Catalog, stored: &mut [u8], out: &mut Tally) {
        let (k0, d0) = &self.frags[0];
        let p = d0.paddr;
        out.bytes += u64::from(d0.stored_len);
        if d0.is_plain() {
            for (k, d) in &self.frags {
                for (i, want) in d.csums.iter().enumerate() {
                    let s = (usize::from(d.rec_off) + i) * BLOCK;
                    let ok = stored
                        .get(s..s + BLOCK)
                        .is_some_and(|b| crc32c::crc32c(b) == *want);
                    if !ok {
                        out.errors
                            .push(format!("data of {k:?} block {i} fails its checksum"));
                    }
                }
            }
            return;
        }
        if d0.csums.first() != Some(&crc32c::crc32c(stored)) {
            out.errors.push(format!("record {p:?} fails its checksum"));
            return;
        }
        // Plaintext in `stored` (unencrypted, or decrypted in place).
        let mut plaintext = d0.seal.is_none();
        if let Some(seal) = &d0.seal {
            match cat.key_of(k0.lineage).and_then(|id| sh.key(id)) {
                Some(key) => {
                    let place = crate::crypt::RecordPlace {
                        lineage: k0.lineage,
                        lba: k0.lba - u64::from(d0.rec_off),
                        birth: k0.birth,
                        blocks: d0.rec_blocks,
                        comp: d0.comp,
                    };
                    if key.open(seal, &place, stored).is_err() {
                        out.errors
                            .push(format!("encrypted record {p:?} fails authentication"));
                        return;
                    }
                    plaintext = true;
                }
                None => out.encrypted_unverified += 1,
            }
        }
        if plaintext && d0.comp != 0 {
            if let Err(e) = crate::compress::decompress(d0.comp, stored, d0.logical() as usize) {
                out.errors.push(format!("record {p:?}: {e}"));
            }
        }
    }
}

/// What some spans found.
#[derive(Default)]
struct Tally {
    errors: Vec<String>,
    bytes: u64,
    encrypted_unverified: u64,
}

/// Records next to each other on disk, read as one.
struct Span<'a> {
    seg: SegId,
    start: u64,
    end: u64,
    records: &'a [Record],
}

/// Cut `records` (sorted by place) into spans.
fn spans(records: &[Record]) -> Vec<Span<'_>> {
    let mut out: Vec<Span<'_>> = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let seg = records[at].paddr().seg;
        let (start, mut end) = records[at].range();
        let mut next = at + 1;
        while let Some(r) = records.get(next) {
            let (s, e) = r.range();
            if r.paddr().seg != seg || s > end + MAX_GAP || e.max(end) - start > MAX_SPAN {
                break;
            }
            end = end.max(e);
            next += 1;
        }
        out.push(Span {
            seg,
            start,
            end,
            records: &records[at..next],
        });
        at = next;
    }
    out
}

/// Read and verify every record of `span`.
fn verify_span(sh: &Shared, cat: &Catalog, span: &Span<'_>, out: &mut Tally) {
    let mut buf = AlignedBuf::zeroed((span.end - span.start) as usize);
    let read = {
        let _t = sh.gate.enter();
        sh.vdevs.read(span.seg, span.start, buf.as_mut_slice())
    };
    for rec in span.records {
        let (s, e) = rec.range();
        let whole = read
            .is_ok()
            .then(|| &mut buf.as_mut_slice()[(s - span.start) as usize..(e - span.start) as usize]);
        match whole.and_then(|a| a.get_mut(rec.stored())) {
            Some(stored) if rec.checksums_match(stored) => rec.verify(sh, cat, stored, out),
            // The span's copy is bad (or unreadable) here: the healing read
            // finds a good copy and repairs the others, or says why not.
            _ => verify_alone(sh, cat, rec, out),
        }
    }
}

/// Read one record through the healing read and verify it.
fn verify_alone(sh: &Shared, cat: &Catalog, rec: &Record, out: &mut Tally) {
    let (s, e) = rec.range();
    let mut buf = AlignedBuf::zeroed((e - s) as usize);
    let ok = |b: &[u8]| b.get(rec.stored()).is_some_and(|x| rec.checksums_match(x));
    let read = {
        let _t = sh.gate.enter();
        sh.vdevs
            .read_checked(rec.paddr().seg, s, buf.as_mut_slice(), &ok)
    };
    match read {
        Err(e) => out.errors.push(format!("record {:?}: {e}", rec.paddr())),
        Ok(()) => match buf.as_mut_slice().get_mut(rec.stored()) {
            Some(stored) => rec.verify(sh, cat, stored, out),
            None => out
                .errors
                .push(format!("record {:?} is longer than its read", rec.paddr())),
        },
    }
}

/// Verify the queued `records` (and empty the queue): sorted by place,
/// read in spans by `scan_threads` threads.
pub(super) fn records(sh: &Shared, cat: &Catalog, records: &mut Vec<Record>, r: &mut CheckReport) {
    records.sort_unstable_by_key(|x| x.paddr());
    let spans = spans(records);
    let next = AtomicUsize::new(0);
    let threads = sh.cfg.scan_threads.clamp(1, 16).min(spans.len().max(1));
    let tallies: Vec<Tally> = std::thread::scope(|sc| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                sc.spawn(|| {
                    let mut t = Tally::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(span) = spans.get(i) else { break };
                        verify_span(sh, cat, span, &mut t);
                    }
                    t
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| Tally {
                    errors: vec!["a check worker panicked".into()],
                    ..Tally::default()
                })
            })
            .collect()
    });
    for t in tallies {
        r.data_bytes += t.bytes;
        r.encrypted_unverified += t.encrypted_unverified;
        for e in t.errors {
            err(r, e);
        }
    }
    records.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::{Csums, DataRef, Key};

    fn rec(seg: u32, offset: u32, stored_len: u32) -> Record {
        let d = DataRef {
            paddr: Paddr {
                seg: SegId {
                    group: 0,
                    index: seg,
                },
                offset,
            },
            stored_len,
            rec_blocks: 1,
            rec_off: 0,
            nblocks: 1,
            comp: 1,
            enc: 0,
            csums: Csums::from(vec![0]),
            seal: None,
        };
        Record {
            frags: vec![(Key::new(1, 0, 1), d)],
        }
    }

    #[test]
    fn neighbours_share_a_span_and_far_ones_do_not() {
        let mut v = vec![
            rec(0, 0, 4096),
            rec(0, 4096, 4096),
            rec(0, 4096 * 3, 2000), // a small gap: same span
            rec(0, 1 << 20, 4096),  // far away: a new span
            rec(1, 0, 4096),        // another segment
        ];
        v.sort_unstable_by_key(|x| x.paddr());
        let s = spans(&v);
        let shape: Vec<(u32, u64, u64, usize)> = s
            .iter()
            .map(|x| (x.seg.index, x.start, x.end, x.records.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (0, 0, 4096 * 4, 3),
                (0, 1 << 20, (1 << 20) + 4096, 1),
                (1, 0, 4096, 1)
            ]
        );
    }

    #[test]
    fn spans_are_bounded() {
        let v: Vec<Record> = (0..2048).map(|i| rec(0, i * 4096, 4096)).collect();
        let s = spans(&v);
        assert!(s.iter().all(|x| x.end - x.start <= MAX_SPAN));
        assert_eq!(s.iter().map(|x| x.records.len()).sum::<usize>(), 2048);
        assert_eq!(s.len(), (2048 * 4096u64).div_ceil(MAX_SPAN) as usize);
    }

    #[test]
    fn a_packed_record_in_the_middle_of_a_block_is_found_in_its_read() {
        let r = rec(0, 4096 + 100, 50);
        assert_eq!(r.range(), (4096, 8192));
        assert_eq!(r.stored(), 100..150);
        let r = rec(0, 4000, 200); // crosses a block boundary
        assert_eq!(r.range(), (0, 8192));
        assert_eq!(r.stored(), 4000..4200);
    }
}
