//! Compaction of the block map's LSM levels: the policy deciding which
//! merge the levels need ([`Policy::plan`], a pure function over the run
//! sizes, with its rules tested below) and the step that carries it out
//! (merge the inputs into one run, have the writer install it). Keeps
//! invariant 6 (L0 stays short, so lookups and memory stay bounded) and
//! invariant 5 (a merge only starts when its output fits beside the
//! segments reserved for flushes and client data).

use std::ops::Range;
use std::sync::Arc;

use super::runs::build_run;
use super::send;
use crate::error::Result;
use crate::map::run::{Run, RunMeta};
use crate::map::{Key, Levels, Value};
use crate::pool::space::MetaClass;
use crate::pool::writer::MaintOp;
use crate::pool::Shared;

/// L0 runs that trigger a compaction (every lookup reads each of them).
const L0_COMPACT: usize = 4;

/// L0 runs are merged among themselves (not into L1) while together they
/// are smaller than L1 / `L0_TIER_RATIO`: merging a few small runs is cheap,
/// rewriting all of L1 for them is not. The cleaner flushes the memtable
/// after every round, so under space pressure L0 fills with small runs.
const L0_TIER_RATIO: u64 = 4;

/// Where a compaction's output goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Output {
    /// One L0 run replacing every L0 run (L1 stays).
    L0,
    /// Level `deep[i]` (0 = L1), replacing its inputs.
    Deep(usize),
}

/// What a compaction step may do.
#[derive(Clone, Copy)]
pub(super) enum Scope {
    /// Whatever the tree needs (the maintenance step).
    Full,
    /// Only merge L0 runs among themselves (into L1 only while there is
    /// none), the newest size tier of them ([`newest_tier`]), and only
    /// while `keep_free` segments stay free besides the metadata floor:
    /// inside the cleaner's loop, where writers may be waiting for it (a
    /// merge into L1 rewrites the whole of L1).
    L0Only { keep_free: u64 },
}

/// The thresholds of the compaction policy.
#[derive(Clone, Copy, Debug)]
pub(super) struct Policy {
    /// L0 runs that trigger a compaction.
    l0_compact: usize,
    /// L0 merges among itself while its bytes times this are under L1's.
    l0_tier_ratio: u64,
    /// Target size of L1; every deeper level's is ten times the one above.
    l1_target: u64,
}

/// A merge the policy chose: its inputs and where its output goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Merge {
    /// How many of the newest L0 runs are inputs (they come first, newest
    /// first); an output into a deep level takes them all.
    l0: usize,
    /// The deep levels (0 = L1) whose runs are inputs, after L0's.
    deep: Range<usize>,
    /// Where the merged run goes.
    out: Output,
    /// Deletion markers must stay: an older run lies below the output.
    keep_deletions: bool,
}

/// How many of the newest L0 runs (`l0`: bytes, newest first) form a size
/// tier: from the newest, every run up to twice the bytes of those before
/// it, and at least two. Inside the cleaner's loop each round flushes a
/// small run; merging all of L0 each time rewrote the runs merged before
/// again and again (a merge every other round, ~200 ms each at a 90% full
/// 2.6 GB pool), where merging the newest tier only rewrites each byte
/// about once per doubling.
fn newest_tier(l0: &[u64]) -> usize {
    let mut sum = 0u64;
    let mut k = 0;
    for &b in l0 {
        if k >= 2 && b > sum.saturating_mul(2) {
            break;
        }
        sum = sum.saturating_add(b);
        k += 1;
    }
    k
}

impl Policy {
    /// The pool's policy: L1's target is eight memtables.
    pub(super) fn new(memtable_budget: usize) -> Policy {
        Policy {
            l0_compact: L0_COMPACT,
            l0_tier_ratio: L0_TIER_RATIO,
            l1_target: memtable_budget as u64 * 8,
        }
    }

    /// Target size of deep level `level` (0 = L1).
    fn level_target(&self, level: usize) -> u64 {
        self.l1_target
            .saturating_mul(10u64.saturating_pow(level as u32))
    }

    /// The merge the levels need, if any. `l0`: the bytes of each L0 run;
    /// `deep[i]`: the bytes of level i's run (0 = L1), None if it has none;
    /// `l0_only`: [`Scope::L0Only`].
    pub(super) fn plan(&self, l0: &[u64], deep: &[Option<u64>], l0_only: bool) -> Option<Merge> {
        if l0_only && l0.len() < self.l0_compact {
            return None;
        }
        let (take_l0, levels, out) = if l0.len() >= self.l0_compact {
            let l0_bytes: u64 = l0.iter().sum();
            match deep.first() {
                Some(Some(_)) if l0_only => (newest_tier(l0), 0..0, Output::L0),
                Some(Some(l1)) if l0_bytes.saturating_mul(self.l0_tier_ratio) < *l1 => {
                    (l0.len(), 0..0, Output::L0)
                }
                Some(Some(_)) => (l0.len(), 0..1, Output::Deep(0)),
                // No L1 yet: the L0 runs become L1 (as cheap as merging them).
                _ => (l0.len(), 0..0, Output::Deep(0)),
            }
        } else {
            let mut pick = None;
            for (i, r) in deep.iter().enumerate() {
                if let Some(r) = r {
                    if *r > self.level_target(i) {
                        pick = Some(i);
                        break;
                    }
                }
            }
            let i = pick?;
            let end = match deep.get(i + 1) {
                Some(Some(_)) => i + 2,
                _ => i + 1,
            };
            (0, i..end, Output::Deep(i + 1))
        };
        // Deletion markers can go when nothing older lies below the output.
        let keep_deletions = match out {
            Output::L0 => true, // L1 lies below (an L0-only merge needs one)
            Output::Deep(level) => deep
                .iter()
                .enumerate()
                .any(|(j, r)| j > level && r.is_some()),
        };
        Some(Merge {
            l0: take_l0,
            deep: levels,
            out,
            keep_deletions,
        })
    }
}

/// Room for a merge of `input_bytes`: its output may be as large as its
/// inputs (plus a partly filled segment) and must fit in `free` segments
/// without eating the `reserved` ones (flushes, the cleaner's margin).
fn room_for(input_bytes: u64, segment_size: u64, free: u64, reserved: u64) -> bool {
    let need = input_bytes.div_ceil(segment_size) + 1;
    free >= need + reserved
}

/// One compaction step if the tree needs it (and `scope` allows it).
pub(super) fn compact(sh: &Shared, scope: Scope) -> Result<bool> {
    let levels = sh.map.levels();
    let (l0_only, keep_free) = match scope {
        Scope::Full => (false, 0),
        Scope::L0Only { keep_free } => (true, keep_free),
    };
    let l0_bytes: Vec<u64> = levels.l0.iter().map(|r| r.bytes()).collect();
    let deep_bytes: Vec<Option<u64>> = levels
        .deep
        .iter()
        .map(|r| r.as_ref().map(|r| r.bytes()))
        .collect();
    let Some(merge) = Policy::new(sh.memtable_budget).plan(&l0_bytes, &deep_bytes, l0_only) else {
        return Ok(false);
    };
    let (out, keep_deletions) = (merge.out, merge.keep_deletions);
    let mut inputs: Vec<Arc<Run>> = levels.l0[..merge.l0].to_vec();
    inputs.extend(levels.deep[merge.deep].iter().flatten().cloned());
    // The output may be as large as the inputs; it must fit without eating
    // the segments reserved for flushes.
    let bytes: u64 = inputs.iter().map(|r| r.bytes()).sum();
    let free = sh.segs.lock().free_count();
    if !room_for(
        bytes,
        sh.vdevs.segment_size,
        free,
        crate::pool::meta_floor(sh) + keep_free,
    ) {
        return Ok(false);
    }
    let mut lo = Key::new(0, 0, 0);
    let hi = Key::new(u32::MAX, u64::MAX, u64::MAX);
    let mut pages: Vec<(Key, Option<Value>)> = Vec::new();
    let mut done = false;
    let iter = std::iter::from_fn(|| loop {
        if let Some(e) = pages.pop() {
            return Some(Ok(e));
        }
        if done {
            return None;
        }
        match sh.map.scan_runs(&inputs, lo, hi, 4096, keep_deletions) {
            Ok((mut v, resume)) => {
                v.reverse();
                pages = v;
                match resume {
                    Some(r) => lo = r,
                    None => done = true,
                }
            }
            Err(e) => {
                done = true;
                return Some(Err(e));
            }
        }
    });
    let class = match out {
        Output::L0 => MetaClass::Short,
        Output::Deep(_) => MetaClass::Long,
    };
    let run = build_run(sh, class, iter)?;
    let dropped: Vec<RunMeta> = inputs.iter().map(|r| r.meta().clone()).collect();
    let mut deep = levels.deep.clone();
    let kept = (run.meta().entries > 0).then(|| run.clone());
    let l0 = match out {
        // The merged run takes the place of the L0 inputs, in front of the
        // older L0 runs (runs flushed meanwhile are kept in front of it
        // when the writer installs it).
        Output::L0 => kept
            .into_iter()
            .chain(levels.l0[merge.l0..].iter().cloned())
            .collect(),
        Output::Deep(level) => {
            while deep.len() <= level {
                deep.push(None);
            }
            if level > 0 {
                deep[level - 1] = None;
            }
            deep[level] = kept;
            if level == 0 {
                Vec::new()
            } else {
                levels.l0.clone()
            }
        }
    };
    if run.meta().entries == 0 {
        sh.segs.lock().release_meta_blocks(&run.meta().extents);
    }
    while deep.last().is_some_and(Option::is_none) {
        deep.pop();
    }
    send(sh, |d| MaintOp::InstallCompaction {
        levels: Levels { l0, deep },
        dropped,
        done: d,
    })?;
    Ok(true)
}
#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// L0 run sizes, deep level sizes, and the merge the policy must choose.
    type Case<'a> = (&'a [u64], &'a [Option<u64>], Option<Merge>);

    /// Check every case against a policy for a 1 MiB memtable (L1's target
    /// is then 8 MiB, L2's 80 MiB).
    fn expect(l0_only: bool, cases: &[Case]) {
        let p = Policy::new(1 << 20);
        for (l0, deep, want) in cases {
            assert_eq!(
                &p.plan(l0, deep, l0_only),
                want,
                "L0 {l0:?}, deep {deep:?}, l0_only {l0_only}"
            );
        }
    }

    fn merge(l0: usize, deep: Range<usize>, out: Output, keep_deletions: bool) -> Option<Merge> {
        Some(Merge {
            l0,
            deep,
            out,
            keep_deletions,
        })
    }

    #[test]
    fn a_tree_in_shape_needs_no_merge() {
        expect(
            false,
            &[
                (&[], &[], None),
                (&[MIB; 3], &[Some(8 * MIB)], None),
                (&[MIB], &[None, Some(80 * MIB)], None),
            ],
        );
    }

    #[test]
    fn four_l0_runs_without_l1_become_l1() {
        expect(
            false,
            &[
                (&[MIB; 4], &[], merge(4, 0..0, Output::Deep(0), false)),
                // An empty L1 above a deeper level: deletions must stay.
                (
                    &[MIB; 4],
                    &[None, Some(MIB)],
                    merge(4, 0..0, Output::Deep(0), true),
                ),
            ],
        );
    }

    #[test]
    fn l0_under_a_quarter_of_l1_merges_into_one_l0_run() {
        expect(
            false,
            &[
                // 4 MiB of L0 against 17 MiB of L1: 4 * 4 < 17.
                (
                    &[MIB; 4],
                    &[Some(17 * MIB)],
                    merge(4, 0..0, Output::L0, true),
                ),
                // More than four runs trigger it too.
                (
                    &[MIB; 6],
                    &[Some(25 * MIB), Some(MIB)],
                    merge(6, 0..0, Output::L0, true),
                ),
            ],
        );
    }

    #[test]
    fn l0_of_a_quarter_of_l1_or_more_merges_into_l1() {
        expect(
            false,
            &[
                // Exactly a quarter is not under it.
                (
                    &[MIB; 4],
                    &[Some(16 * MIB)],
                    merge(4, 0..1, Output::Deep(0), false),
                ),
                // With L2 below, deletion markers stay.
                (
                    &[MIB; 4],
                    &[Some(MIB), Some(MIB)],
                    merge(4, 0..1, Output::Deep(0), true),
                ),
                // The L0 rule comes before the level targets.
                (
                    &[MIB; 4],
                    &[Some(9 * MIB)],
                    merge(4, 0..1, Output::Deep(0), false),
                ),
            ],
        );
    }

    #[test]
    fn a_level_over_its_target_merges_into_the_next() {
        expect(
            false,
            &[
                (&[], &[Some(8 * MIB)], None), // at its target
                (
                    &[],
                    &[Some(8 * MIB + 1)],
                    merge(0, 0..1, Output::Deep(1), false),
                ),
                // With the next level: both are inputs.
                (
                    &[MIB; 3],
                    &[Some(9 * MIB), Some(MIB)],
                    merge(0, 0..2, Output::Deep(1), false),
                ),
                // Something older below the output keeps deletion markers.
                (
                    &[],
                    &[Some(9 * MIB), None, Some(MIB)],
                    merge(0, 0..1, Output::Deep(1), true),
                ),
                // L2's target is ten times L1's.
                (&[], &[None, Some(80 * MIB)], None),
                (
                    &[],
                    &[None, Some(80 * MIB + 1)],
                    merge(0, 1..2, Output::Deep(2), false),
                ),
                // The shallowest level over its target goes first.
                (
                    &[],
                    &[Some(9 * MIB), Some(81 * MIB), Some(MIB)],
                    merge(0, 0..2, Output::Deep(1), true),
                ),
                (
                    &[],
                    &[Some(MIB), Some(81 * MIB)],
                    merge(0, 1..2, Output::Deep(2), false),
                ),
            ],
        );
    }

    #[test]
    fn the_cleaners_scope_merges_l0_only() {
        expect(
            true,
            &[
                // Under four L0 runs nothing, even with a level over target.
                (&[MIB; 3], &[Some(9 * MIB)], None),
                // L0 merges among itself however large it is against L1 ...
                (&[MIB; 4], &[Some(MIB)], merge(4, 0..0, Output::L0, true)),
                // ... and becomes L1 only while there is none.
                (&[MIB; 4], &[], merge(4, 0..0, Output::Deep(0), false)),
                // Only the newest size tier: runs up to twice the bytes of
                // those newer than them (newest first) ...
                (
                    &[MIB, MIB, 2 * MIB, 3 * MIB, 20 * MIB],
                    &[Some(99 * MIB)],
                    merge(4, 0..0, Output::L0, true),
                ),
                // ... and at least the two newest.
                (
                    &[MIB, 5 * MIB, 20 * MIB, 80 * MIB],
                    &[Some(MIB)],
                    merge(2, 0..0, Output::L0, true),
                ),
            ],
        );
        // The full scope still merges every L0 run.
        expect(
            false,
            &[(
                &[MIB, MIB, 2 * MIB, 3 * MIB, 20 * MIB],
                &[Some(999 * MIB)],
                merge(5, 0..0, Output::L0, true),
            )],
        );
    }

    #[test]
    fn a_size_tier_rewrites_each_byte_about_once_per_doubling() {
        // Rounds of the cleaner's loop: one 1 MiB run flushed each, a merge
        // of the newest tier whenever four runs are there.
        let p = Policy::new(1 << 20);
        let mut l0: Vec<u64> = Vec::new();
        let mut rewritten = 0u64;
        let rounds = 256u64;
        for _ in 0..rounds {
            l0.insert(0, MIB);
            if let Some(m) = p.plan(&l0, &[Some(u64::MAX)], true) {
                let merged: u64 = l0[..m.l0].iter().sum();
                rewritten += merged;
                l0.splice(..m.l0, [merged]);
            }
            assert!(l0.len() < 12, "L0 stays under L0_STOP: {l0:?}");
        }
        // Merging all of L0 each time rewrites ~rounds²/8 MiB (8,000+ here).
        assert!(
            rewritten <= rounds * MIB * 12,
            "{} MiB rewritten for {rounds} MiB flushed",
            rewritten / MIB
        );
    }

    #[test]
    fn sizes_saturate_instead_of_overflowing() {
        assert_eq!(Policy::new(1 << 20).level_target(40), u64::MAX);
        expect(
            false,
            &[
                (&[], &[None; 40], None),
                (
                    &[u64::MAX / 8; 4],
                    &[Some(u64::MAX)],
                    merge(4, 0..1, Output::Deep(0), false),
                ),
            ],
        );
    }

    #[test]
    fn a_merge_needs_room_for_its_output_beside_the_reserve() {
        // Nothing to merge still needs a segment; two full segments three.
        assert!(room_for(0, MIB, 1, 0));
        assert!(!room_for(0, MIB, 0, 0));
        assert!(room_for(2 * MIB, MIB, 5, 2));
        assert!(!room_for(2 * MIB, MIB, 4, 2));
        assert!(!room_for(2 * MIB + 1, MIB, 5, 2));
    }
}
