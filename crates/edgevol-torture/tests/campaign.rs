//! The CI-sized power-cut campaigns: ≥ 200 cuts on one device, plus
//! mirror and parity layouts. `EDGEVOL_CRASH_SEED` picks another seed;
//! the long run is `edgevol test crash --cuts 10000` (docs/reliability.md).

use edgevol_torture::{run, Config, Layout};

fn seed(default: u64) -> u64 {
    std::env::var("EDGEVOL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn campaign(layout: Layout, cuts: u64, default_seed: u64) {
    let cfg = Config {
        layout,
        ..Config::new(seed(default_seed), cuts)
    };
    let r = run(&cfg, &mut |_| {}).unwrap_or_else(|f| panic!("{f}"));
    eprintln!("{layout:?}: {r:?}");
    assert_eq!(r.counts.cuts, cuts);
    assert!(
        r.counts.cuts_inside_ops * 2 > cuts,
        "most cuts strike inside an operation: {r:?}"
    );
    assert!(
        r.counts.blocks_written > cuts * 20,
        "the workload wrote: {r:?}"
    );
}

#[test]
fn two_hundred_cuts_on_one_device() {
    campaign(Layout::Single, 200, 1);
}

#[test]
fn cuts_on_a_mirror() {
    campaign(Layout::Mirror, 40, 2);
}

#[test]
fn cuts_on_a_parity_group() {
    campaign(Layout::Parity1, 40, 3);
}

/// Two power cuts in a row between the members' uberblock writes (the
/// second inside `pool replace`) left two members of a parity group two
/// uberblocks behind; import took both for stale and could not read its
/// own counters. Import now brings such members up to date.
#[test]
fn parity_members_behind_on_uberblocks_twice_still_import() {
    let cfg = Config {
        layout: Layout::Parity1,
        ..Config::new(20261207, 6)
    };
    let r = run(&cfg, &mut |_| {}).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(r.counts.cuts, 6);
}

/// A pool of a campaign replays alone: its cuts keep their numbers, and
/// it makes one pool's worth of them.
#[test]
fn one_pool_of_a_campaign_replays_alone() {
    let cfg = Config {
        cuts_per_pool: 3,
        pool: Some(2),
        ..Config::new(11, 0)
    };
    let mut seen = Vec::new();
    let r = run(&cfg, &mut |r| seen.push(r.counts.cuts)).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(seen, [1, 2, 3], "one pool's cuts");
    assert_eq!((r.counts.cuts, r.pools), (3, 1));
    assert!(r.counts.ops > 0, "the workload ran: {r:?}");
}
