//! Walking the populated parts of a view without touching empty space.
//!
//! A thin volume may be petabytes large and nearly empty; anything that
//! looks at "every block" (space accounting, `pool check`, flatten, shrink)
//! must cost O(entries), not O(size). [`for_each_populated`] resolves only
//! the chunks where some lineage of the view chain has map entries.

use std::collections::BTreeSet;

use super::Shared;
use crate::catalog::Chain;
use crate::chunk::{self, Piece};
use crate::error::Result;
use crate::layout::{chunk_start, CHUNK_BLOCKS};
use crate::map::Key;

/// Blocks of address space looked at per window (8 GiB): bounds the memory
/// of the chunk set.
const WINDOW: u64 = CHUNK_BLOCKS * 65536;

/// Most blocks resolved at once.
const RESOLVE: u64 = 8192;

/// Call `f` with the resolved pieces of every populated range of
/// `[from, to)` seen through `chain`, in ascending order. Blocks outside
/// the ranges passed to `f` read as holes.
pub(crate) fn for_each_populated(
    sh: &Shared,
    chain: &Chain,
    from: u64,
    to: u64,
    mut f: impl FnMut(&[Piece]) -> Result<()>,
) -> Result<()> {
    let mut w = from;
    while w < to {
        let wend = (chunk_start(w) + WINDOW).min(to);
        let mut chunks: BTreeSet<u64> = BTreeSet::new();
        for step in chain {
            let mut lo = Key::lower(step.lineage, chunk_start(w));
            let hi = Key::lower(step.lineage, wend);
            loop {
                let page = sh.scan(lo, hi, 4096)?;
                chunks.extend(page.entries.iter().map(|(k, _)| chunk_start(k.lba)));
                match page.resume {
                    Some(r) => lo = r,
                    None => break,
                }
            }
        }
        // Maximal runs of consecutive chunks, clipped to the window.
        let mut it = chunks.into_iter().peekable();
        while let Some(c) = it.next() {
            let mut end = c + CHUNK_BLOCKS;
            while it.peek() == Some(&end) {
                it.next();
                end += CHUNK_BLOCKS;
            }
            let (mut x, stop) = (c.max(w), end.min(wend));
            while x < stop {
                let n = (stop - x).min(RESOLVE);
                let pieces = chunk::resolve(chain, x, n as u32, |l, a, b| {
                    Ok(sh
                        .scan(Key::lower(l, a), Key::lower(l, b), usize::MAX)?
                        .entries)
                })?;
                f(&pieces)?;
                x += n;
            }
        }
        w = wend;
    }
    Ok(())
}

/// Data blocks visible through `chain` in `[from, to)`.
pub(crate) fn data_blocks(sh: &Shared, chain: &Chain, from: u64, to: u64) -> Result<u64> {
    let mut n = 0;
    for_each_populated(sh, chain, from, to, |p| {
        n += chunk::data_blocks(p);
        Ok(())
    })?;
    Ok(n)
}
