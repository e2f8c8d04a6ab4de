//! Geometry and parity codec of a redundant group: where the blocks of a
//! segment live on the group's member devices, and how missing columns
//! are rebuilt.
//!
//! * **Single**: one member; segment `i` is the `i`-th slot of the device.
//! * **Mirror** (n members): every member holds a whole copy of every
//!   segment at the same place.
//! * **Parity** (k data + p parity columns, n = k + p members, p = 1 or 2):
//!   a segment's 4 KiB blocks are laid out in *rows* of k blocks; block `b`
//!   is column `b % k` of row `b / k`, and row `r` of every member sits at
//!   block `r` of that member's slot. Columns k..n of a row are its parity
//!   (XOR for p = 1, Reed–Solomon for p = 2). Which member holds which
//!   column rotates by segment (`(column + segment index) % n`) so parity
//!   I/O spreads over all members. The last row of a segment may be short
//!   (when k does not divide the segment's blocks): its missing columns
//!   count as zeroes.
//!
//! **No write hole:** a row is written once, whole, between the moments
//! its segment is allocated and freed — the writer pads every log batch
//! and every metadata extent up to a row boundary ([`Geometry::row_end`]),
//! and the segment is append-only. So no row holding live data is ever
//! updated in place, and parity can never disagree with live data except
//! after a crash tore a write that was never acknowledged as durable (the
//! importer rewrites the rows it replays; scrub repairs the rest).

use crate::error::{Error, Result};
use crate::format::label::GroupKind;
use crate::layout::{BLOCK, BLOCK_U64};

/// How one group maps a segment onto its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// The scheme.
    pub kind: GroupKind,
    /// Members.
    pub n: usize,
    /// Data columns per row (1 for single and mirror).
    pub k: usize,
    /// Parity columns per row (0 unless parity).
    pub p: usize,
    /// Logical 4 KiB blocks per segment.
    pub seg_blocks: u64,
}

impl Geometry {
    /// The geometry of a group of `n` members of `kind`.
    pub fn new(kind: GroupKind, n: usize, segment_size: u64) -> Result<Geometry> {
        let seg_blocks = segment_size / BLOCK_U64;
        let (k, p) = match kind {
            GroupKind::Single if n == 1 => (1, 0),
            GroupKind::Mirror if n >= 2 => (1, 0),
            GroupKind::Parity(p) if (1..=2).contains(&p) && n >= usize::from(p) + 2 => {
                (n - usize::from(p), usize::from(p))
            }
            _ => {
                return Err(Error::invalid(format!(
                    "a {kind:?} group cannot have {n} devices"
                )))
            }
        };
        Ok(Geometry {
            kind,
            n,
            k,
            p,
            seg_blocks,
        })
    }

    /// Members that may fail (or return bad data) without losing any.
    pub fn tolerance(&self) -> usize {
        match self.kind {
            GroupKind::Single => 0,
            GroupKind::Mirror => self.n - 1,
            GroupKind::Parity(_) => self.p,
        }
    }

    /// Is this a parity group?
    pub fn is_parity(&self) -> bool {
        self.p > 0
    }

    /// Rows per segment (parity), or blocks per segment.
    pub fn rows(&self) -> u64 {
        self.seg_blocks.div_ceil(self.k as u64)
    }

    /// Bytes each member gives one segment.
    pub fn slot_bytes(&self) -> u64 {
        self.rows() * BLOCK_U64
    }

    /// Logical bytes per row.
    pub fn row_bytes(&self) -> u64 {
        self.k as u64 * BLOCK_U64
    }

    /// The end of the row holding byte `end - 1` of a segment: where a
    /// write that ends at `end` must stop so that it covers whole rows
    /// (4 KiB blocks for single and mirror groups).
    pub fn row_end(&self, end: u64) -> u64 {
        end.next_multiple_of(self.row_bytes())
            .min(self.seg_blocks * BLOCK_U64)
            .max(end.next_multiple_of(BLOCK_U64))
    }

    /// Member holding column `col` of segment `index`'s rows.
    pub fn member_of(&self, index: u32, col: usize) -> usize {
        if self.is_parity() {
            (col + index as usize) % self.n
        } else {
            col
        }
    }

    /// Column that member `m` holds in segment `index`.
    pub fn column_of(&self, index: u32, m: usize) -> usize {
        if self.is_parity() {
            (m + self.n - index as usize % self.n) % self.n
        } else {
            m
        }
    }

    /// Data columns of row `r` that exist (the last row may be short).
    pub fn row_width(&self, r: u64) -> usize {
        let first = r * self.k as u64;
        (self.seg_blocks.saturating_sub(first)).min(self.k as u64) as usize
    }

    /// For a parity group: the rows of member column `col` holding blocks
    /// of `[b0, b1)`: `(first row, rows)`, or None.
    pub fn column_rows(&self, col: usize, b0: u64, b1: u64) -> Option<(u64, u64)> {
        let k = self.k as u64;
        let c = col as u64;
        if c >= k || b0 >= b1 {
            return None;
        }
        // Rows r with b0 <= r*k + c < b1.
        let first = b0.saturating_sub(c).div_ceil(k);
        if first * k + c >= b1 {
            return None;
        }
        let last = (b1 - 1 - c) / k;
        Some((first, last - first + 1))
    }
}

/// Compute the parity columns of rows whose data columns are `data` (each
/// `len` bytes: the column's blocks of consecutive rows, back to back;
/// parity is linear, so many rows encode as one).
pub fn encode(g: &Geometry, data: &[&[u8]]) -> Result<Vec<Vec<u8>>> {
    debug_assert_eq!(data.len(), g.k);
    match g.p {
        1 => {
            let mut x = data[0].to_vec();
            for d in &data[1..] {
                xor_into(&mut x, d);
            }
            Ok(vec![x])
        }
        2 => reed_solomon_simd::encode(g.k, 2, data.iter())
            .map_err(|e| Error::corrupt(format!("parity encode: {e}"))),
        _ => Ok(Vec::new()),
    }
}

/// Rebuild the missing columns (None) of rows from the present ones; all
/// present columns have the same length. Errors if more than `p` are
/// missing.
pub fn reconstruct(g: &Geometry, cols: &mut [Option<Vec<u8>>]) -> Result<()> {
    debug_assert_eq!(cols.len(), g.n);
    let missing: Vec<usize> = (0..g.n).filter(|&c| cols[c].is_none()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if missing.len() > g.p {
        return Err(Error::corrupt(format!(
            "{} columns of a parity row are unavailable; the group tolerates {}",
            missing.len(),
            g.p
        )));
    }
    let len = cols.iter().flatten().map(Vec::len).next().unwrap_or(0);
    if g.p == 1 {
        let mut x = vec![0u8; len];
        for c in cols.iter().flatten() {
            xor_into(&mut x, c);
        }
        cols[missing[0]] = Some(x);
        return Ok(());
    }
    // Reed-Solomon: data shards 0..k, recovery shards k..n.
    let data_missing = missing.iter().any(|&c| c < g.k);
    if data_missing {
        let original = (0..g.k).filter_map(|c| cols[c].as_deref().map(|d| (c, d)));
        let recovery = (g.k..g.n).filter_map(|c| cols[c].as_deref().map(|d| (c - g.k, d)));
        let restored = reed_solomon_simd::decode(g.k, g.p, original, recovery)
            .map_err(|e| Error::corrupt(format!("parity decode: {e}")))?;
        for (i, d) in restored {
            cols[i] = Some(d);
        }
    }
    if missing.iter().any(|&c| c >= g.k) {
        let data: Vec<&[u8]> = cols[..g.k]
            .iter()
            .map(|c| c.as_deref().unwrap_or(&[]))
            .collect();
        let parity = encode(g, &data)?;
        for (i, p) in parity.into_iter().enumerate() {
            if cols[g.k + i].is_none() {
                cols[g.k + i] = Some(p);
            }
        }
    }
    Ok(())
}

fn xor_into(acc: &mut [u8], x: &[u8]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a ^= b;
    }
}

/// Split a buffer of whole rows (`rows * k` blocks, row-major, starting
/// at row `r0`) into its k data columns; blocks past the segment's end
/// (a short last row) are zeroes.
pub fn split_rows(g: &Geometry, r0: u64, rows: u64, buf: &[u8]) -> Vec<Vec<u8>> {
    let mut cols = vec![vec![0u8; rows as usize * BLOCK]; g.k];
    for r in 0..rows {
        for (c, col) in cols.iter_mut().enumerate() {
            let b = (r * g.k as u64 + c as u64) as usize * BLOCK;
            if c < g.row_width(r0 + r) && b + BLOCK <= buf.len() {
                col[r as usize * BLOCK..(r as usize + 1) * BLOCK]
                    .copy_from_slice(&buf[b..b + BLOCK]);
            }
        }
    }
    cols
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(kind: GroupKind, n: usize) -> Geometry {
        Geometry::new(kind, n, 64 * BLOCK_U64).expect("geometry")
    }

    #[test]
    fn shapes() {
        assert!(Geometry::new(GroupKind::Mirror, 1, 1 << 20).is_err());
        assert!(Geometry::new(GroupKind::Parity(1), 2, 1 << 20).is_err());
        assert!(Geometry::new(GroupKind::Parity(2), 3, 1 << 20).is_err());
        assert!(Geometry::new(GroupKind::Parity(3), 6, 1 << 20).is_err());
        let g = geo(GroupKind::Parity(1), 4);
        assert_eq!((g.k, g.p), (3, 1));
        // 64 blocks in rows of 3: 22 rows, the last has one block.
        assert_eq!(g.rows(), 22);
        assert_eq!(g.row_width(21), 1);
        assert_eq!(g.row_end(BLOCK_U64), 3 * BLOCK_U64);
        assert_eq!(g.row_end(3 * BLOCK_U64), 3 * BLOCK_U64);
        assert_eq!(g.row_end(64 * BLOCK_U64 - 100), 64 * BLOCK_U64);
        let m = geo(GroupKind::Mirror, 2);
        assert_eq!(m.row_end(100), BLOCK_U64);
        assert_eq!(m.slot_bytes(), 64 * BLOCK_U64);
    }

    #[test]
    fn rotation_is_a_permutation() {
        let g = geo(GroupKind::Parity(2), 5);
        for idx in 0..7 {
            let mut seen = [false; 5];
            for c in 0..5 {
                let m = g.member_of(idx, c);
                assert_eq!(g.column_of(idx, m), c);
                seen[m] = true;
            }
            assert!(seen.iter().all(|s| *s));
        }
    }

    #[test]
    fn column_rows_cover_exactly_the_span() {
        let g = geo(GroupKind::Parity(1), 4);
        for b0 in 0..10u64 {
            for b1 in b0 + 1..14 {
                let mut got = Vec::new();
                for c in 0..g.k {
                    if let Some((r, n)) = g.column_rows(c, b0, b1) {
                        got.extend((r..r + n).map(|r| r * 3 + c as u64));
                    }
                }
                got.sort_unstable();
                assert_eq!(got, (b0..b1).collect::<Vec<_>>(), "{b0}..{b1}");
            }
        }
    }

    #[test]
    fn any_p_columns_rebuild() {
        for (p, n) in [(1u8, 3usize), (1, 5), (2, 4), (2, 6)] {
            let g = geo(GroupKind::Parity(p), n);
            let data: Vec<Vec<u8>> = (0..g.k)
                .map(|c| (0..2 * BLOCK).map(|i| (i * 31 + c * 7 + 1) as u8).collect())
                .collect();
            let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let parity = encode(&g, &refs).expect("encode");
            let all: Vec<Vec<u8>> = data.iter().cloned().chain(parity).collect();
            for a in 0..n {
                for b in a..n {
                    if b != a && p < 2 {
                        continue;
                    }
                    let mut cols: Vec<Option<Vec<u8>>> = all.iter().cloned().map(Some).collect();
                    cols[a] = None;
                    cols[b] = None;
                    reconstruct(&g, &mut cols).expect("rebuild");
                    for (c, want) in all.iter().enumerate() {
                        assert_eq!(cols[c].as_ref(), Some(want), "p{p} n{n} lost {a},{b}");
                    }
                }
            }
            let mut cols: Vec<Option<Vec<u8>>> = all.iter().cloned().map(Some).collect();
            for c in cols.iter_mut().take(usize::from(p) + 1) {
                *c = None;
            }
            assert!(reconstruct(&g, &mut cols).is_err());
        }
    }
}
