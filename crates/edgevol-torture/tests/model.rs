//! Property test of the engine against the model: random operation
//! sequences, power cuts between operations (`Op::Crash`) and, through the
//! power rail, inside them. Failing sequences shrink to a minimal case.
//! Run longer with `PROPTEST_CASES=2000 cargo test -p edgevol-torture --test model`.

use edgevol_torture::{Harness, Layout, Op};
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    let vol = 0usize..8;
    let lba = 0u64..edgevol_torture::model::VOL_BLOCKS;
    prop_oneof![
        30 => (vol.clone(), lba.clone(), 1u64..48, any::<bool>()).prop_map(|(vol, lba, n, f)| Op::Write { vol, lba, n, fua: f && lba % 5 == 0 }),
        4 => (vol.clone(), lba.clone(), 0u16..4096, 1u32..12288, any::<bool>(), any::<bool>()).prop_map(|(vol, lba, from, len, zero, f)| Op::Partial { vol, lba, from, len, zero: zero && len % 4 == 0, fua: f && lba % 5 == 0 }),
        5 => (vol.clone(), lba.clone(), 1u64..200).prop_map(|(vol, lba, n)| Op::Trim { vol, lba, n }),
        3 => (vol.clone(), lba.clone(), 1u64..100, any::<bool>()).prop_map(|(vol, lba, n, no_hole)| Op::Zero { vol, lba, n, no_hole }),
        6 => Just(Op::Flush),
        6 => vol.clone().prop_map(|vol| Op::Snapshot { vol }),
        3 => (vol.clone(), 0usize..8).prop_map(|(vol, snap)| Op::Rollback { vol, snap }),
        2 => (vol.clone(), 0usize..8).prop_map(|(vol, snap)| Op::Clone { vol, snap }),
        2 => (vol.clone(), 0usize..8).prop_map(|(vol, snap)| Op::DestroySnapshot { vol, snap }),
        1 => vol.clone().prop_map(|vol| Op::DestroyVolume { vol }),
        1 => (vol.clone(), 64u64..512).prop_map(|(vol, blocks)| Op::Resize { vol, blocks }),
        1 => vol.clone().prop_map(|vol| Op::Promote { vol }),
        2 => any::<bool>().prop_map(|clean| Op::Maintain { clean }),
        3 => (0u8..3, any::<u64>()).prop_map(|(policy, seed)| Op::Crash { policy, seed }),
        6 => (vol, lba, 1u64..64).prop_map(|(vol, lba, n)| Op::Read { vol, lba, n }),
    ]
}

/// Run `ops`; a cut through the rail `arm_at` device operations in.
fn run(ops: Vec<Op>, arm_at: Option<u64>) -> Result<(), TestCaseError> {
    let mut h = Harness::new(Layout::Single).map_err(|e| TestCaseError::fail(e.0))?;
    if let Some(n) = arm_at {
        h.rail().arm(n);
    }
    for op in &ops {
        h.step(op).map_err(|e| TestCaseError::fail(e.0))?;
        if h.rail().fired() {
            h.crash(2, 7).map_err(|e| TestCaseError::fail(e.0))?;
        }
    }
    h.finish().map_err(|e| TestCaseError::fail(e.0))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_model(ops in proptest::collection::vec(op(), 1..120), arm in proptest::option::of(0u64..400)) {
        run(ops, arm)?;
    }
}

/// A promote (flatten) cut at every device operation in turn: the pool
/// comes back with the volume either still a clone or promoted, its data
/// intact, and no leaked copies (`pool check` counts every entry).
#[test]
fn promote_cut_at_every_device_operation() {
    // The clone overwrites some of the origin's blocks before and after a
    // snapshot of its own: copies of those blocks are visible to no view
    // once the volume is detached, and must not outlive an interrupted
    // promote either.
    let w = |vol, lba, n| Op::Write {
        vol,
        lba,
        n,
        fua: false,
    };
    let setup = [
        w(0, 0, 64),
        Op::Snapshot { vol: 0 },
        Op::Clone { vol: 0, snap: 0 },
        w(2, 8, 4),
        Op::Snapshot { vol: 2 },
        w(2, 8, 8),
        w(2, 40, 8),
        Op::Flush,
    ];
    let mut cut_inside = 0;
    for after in 0..400u64 {
        let mut h = Harness::new(Layout::Single).expect("harness");
        for op in &setup {
            h.step(op).expect("setup");
        }
        assert_eq!(h.model().vols.len(), 3, "a clone exists");
        h.rail().arm(after);
        // vol 2 of ["a", "b", "c3"]: the clone.
        h.step(&Op::Promote { vol: 2 }).expect("promote");
        if !h.rail().fired() {
            break;
        }
        cut_inside += 1;
        h.crash((after % 3) as u8, after)
            .unwrap_or_else(|e| panic!("promote cut after {after} device operations: {e}"));
        h.finish()
            .unwrap_or_else(|e| panic!("promote cut after {after} device operations: {e}"));
    }
    assert!(
        cut_inside > 3,
        "the promote did device I/O ({cut_inside} cuts)"
    );
}

/// A scrub cut by the power resumes at the next import and finishes,
/// repairing what it had not reached; a replacement cut mid-resilver is
/// resilvered again and comes back ONLINE.
#[test]
fn scrub_and_resilver_cut_by_the_power_resume_and_complete() {
    let fill = |h: &mut Harness| {
        for i in 0..8 {
            h.step(&Op::Write {
                vol: i % 2,
                lba: i as u64 * 48,
                n: 48,
                fua: false,
            })
            .expect("write");
        }
        h.step(&Op::Maintain { clean: false }).expect("maintain");
        // Rot many sectors of the first device: the scrub has work.
        for at in 0..64u64 {
            h.step(&Op::Corrupt {
                at: at * 7919 * 8 + 3,
            })
            .expect("corrupt");
        }
    };
    let mut resumed = 0;
    for after in (5..400u64).step_by(15) {
        let mut h = Harness::new(Layout::Mirror).expect("harness");
        fill(&mut h);
        h.rail().arm(after);
        h.step(&Op::Scrub).expect("scrub");
        if !h.rail().fired() {
            break;
        }
        h.crash(2, after)
            .expect("recovery after a cut inside a scrub");
        if h.status().scrub.is_some_and(|s| s.state == "finished") {
            resumed += 1;
        }
        h.finish().expect("finish");
    }
    assert!(resumed > 0, "no interrupted scrub resumed");

    let mut resilvered = 0;
    for after in (5..2000u64).step_by(97) {
        let mut h = Harness::new(Layout::Parity1).expect("harness");
        fill(&mut h);
        // Healed first, as an operator does before replacing a working
        // device (the workload would scrub inside the replace otherwise,
        // and the cut would land in that scrub).
        h.step(&Op::Scrub).expect("scrub");
        h.rail().arm(after);
        h.step(&Op::Replace { member: 1 }).expect("replace");
        if !h.rail().fired() {
            break;
        }
        h.crash(2, after)
            .expect("recovery after a cut inside a resilver");
        let st = h.status();
        assert_eq!(st.state, "ONLINE", "cut after {after}: {st:?}");
        resilvered += usize::from(st.resilver.is_some());
        h.finish().expect("finish");
    }
    assert!(resilvered > 0, "no interrupted resilver ran again");
}

/// `pool add` and `pool online --expand` cut at every device operation in
/// turn, on every layout: the pool comes back ONLINE with the old size or
/// the new one (never a checkpoint naming segments its labels lack, never
/// an added group whose devices it cannot find), its data intact; the
/// operation then runs again and the pool keeps working.
#[test]
fn growing_cut_at_every_device_operation() {
    for layout in [Layout::Single, Layout::Mirror, Layout::Parity1] {
        for add in [true, false] {
            let mut cut_inside = 0;
            for after in 0..200u64 {
                let what = format!("{layout:?} add={add}: cut after {after} device operations");
                let mut h = Harness::new(layout).expect("harness");
                for i in 0..6u64 {
                    h.step(&Op::Write {
                        vol: (i % 2) as usize,
                        lba: i * 40,
                        n: 40,
                        fua: i == 5,
                    })
                    .expect("setup");
                }
                let (groups, size) = (h.status().groups.len(), h.status().size);
                h.rail().arm(after);
                h.step(&Op::Grow { add }).expect("grow");
                if !h.rail().fired() {
                    let st = h.status();
                    assert!(
                        st.groups.len() > groups || st.size > size,
                        "{what}: did not grow"
                    );
                    break;
                }
                cut_inside += 1;
                h.crash((after % 3) as u8, after)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let st = h.status();
                assert_eq!(st.state, "ONLINE", "{what}");
                // Again, uninterrupted, then more writes (into the new space
                // too: the allocator stripes across groups).
                h.step(&Op::Grow { add }).expect("grow again");
                assert!(
                    h.status().groups.len() > groups || h.status().size > size,
                    "{what}: the second attempt did not grow"
                );
                for i in 0..6u64 {
                    h.step(&Op::Write {
                        vol: (i % 2) as usize,
                        lba: 300 + i * 40,
                        n: 40,
                        fua: false,
                    })
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                }
                h.step(&Op::Maintain { clean: true })
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                h.finish().unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            assert!(
                cut_inside > 3,
                "{layout:?} add={add}: the operation did device I/O ({cut_inside} cuts)"
            );
        }
    }
}
