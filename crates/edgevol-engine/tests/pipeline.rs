//! Rounds in flight (`pool/writer/pipeline.rs`) under power cuts: four
//! client threads write, trim, flush and write with FUA at once, so the
//! writer starts rounds while earlier ones are still being written; the
//! device completes writes late and out of order, and the power is cut
//! after a random number of device operations, inside any of them. After
//! every cut every block reads its last flushed value or a later one, and
//! `pool check` is clean. The campaign must have had several rounds in
//! flight at once, or it proved nothing.
//!
//! `PIPELINE_SEED` replays a workload (the thread schedule still varies),
//! `PIPELINE_ROUNDS` runs longer.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use edgevol_engine::device::{CutPolicy, Device, MemDevice, PowerRail};
use edgevol_engine::{CreateOptions, Pool, PoolConfig, Volume};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const THREADS: u64 = 4;
/// Blocks each thread owns (a region of its own: its model needs no
/// ordering across threads).
const REGION: u64 = 256;

/// Background maintenance, as the daemon runs it: the workload overwrites
/// the pool several times, so the cleaner must run.
fn bg_cfg() -> PoolConfig {
    PoolConfig {
        background: true,
        ..cfg()
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Thread `t`'s workload on its region; returns its cells.
///
/// A flush or FUA write counts only if it returned before the rail's cut:
/// after it, the devices keep answering but nothing reaches the media.
fn client(
    v: &Volume,
    rail: &PowerRail,
    t: u64,
    seed: u64,
    mut cells: BTreeMap<u64, Cell>,
) -> BTreeMap<u64, Cell> {
    let mut rng = StdRng::seed_from_u64(seed);
    let base = t * REGION;
    // Tags are unique across threads: thread t uses t, t + 4, t + 8, ...
    let mut tag = cells
        .values()
        .flat_map(|c| std::iter::once(c.durable).chain(c.pending.iter().copied()))
        .max()
        .unwrap_or(0)
        .max(t);
    for _ in 0..rng.random_range(20..120) {
        let r: f64 = rng.random();
        let n = rng.random_range(1..=8u64);
        let lba = base + rng.random_range(0..REGION - n);
        if r < 0.8 {
            let fua = rng.random_bool(0.05);
            let mut data = Vec::new();
            let mut tags = Vec::new();
            for i in 0..n {
                tag += THREADS;
                tags.push(tag);
                data.extend_from_slice(&tagged(tag, lba + i));
            }
            futures::executor::block_on(v.write(lba * 4096, Bytes::from(data), fua))
                .expect("write");
            for (i, t) in tags.into_iter().enumerate() {
                cells.entry(lba + i as u64).or_default().pending.push(t);
            }
            if fua && !rail.fired() {
                // The devices were flushed behind this write's round,
                // which landed after every round before it.
                settle(&mut cells);
            }
        } else if r < 0.9 {
            futures::executor::block_on(v.trim(lba * 4096, n * 4096, false)).expect("trim");
            for x in lba..lba + n {
                cells.entry(x).or_default().pending.push(0);
            }
        } else {
            futures::executor::block_on(v.flush()).expect("flush");
            if !rail.fired() {
                settle(&mut cells);
            }
        }
    }
    cells
}

#[test]
fn power_cuts_with_rounds_in_flight() {
    let seed = env("PIPELINE_SEED", 20261207);
    let rounds = env("PIPELINE_ROUNDS", 16);
    eprintln!("pipeline: seed {seed} (PIPELINE_SEED={seed} replays the workload)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dev = Arc::new(MemDevice::new("d0", 48 * MIB));
    dev.set_late_completions(seed, 8);
    let rail = Arc::new(PowerRail::default());
    dev.attach_rail(rail.clone());
    let mut pool = Some(
        Pool::create(
            "p",
            vec![dev.clone() as Arc<dyn Device>],
            &CreateOptions {
                segment_size: Some(MIB),
            },
            bg_cfg(),
        )
        .expect("create pool"),
    );
    let blocks = THREADS * REGION;
    pool.as_ref()
        .expect("pool open")
        .create_volume("v", blocks * 4096, uncompressed())
        .expect("create volume");
    let mut models: Vec<BTreeMap<u64, Cell>> = vec![BTreeMap::new(); THREADS as usize];
    let mut most_in_flight = 0;
    for round in 0..rounds {
        let p = pool.take().expect("pool open");
        let v = p.open_volume("v").expect("open volume");
        rail.arm(rng.random_range(10..300));
        let seeds: Vec<u64> = (0..THREADS).map(|_| rng.random()).collect();
        models = std::thread::scope(|s| {
            let handles: Vec<_> = models
                .drain(..)
                .enumerate()
                .map(|(t, m)| {
                    let (v, rail) = (&v, &*rail);
                    let sd = seeds[t];
                    s.spawn(move || client(v, rail, t as u64, sd, m))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("client thread"))
                .collect()
        });
        most_in_flight = most_in_flight.max(p.status().counters["rounds_in_flight_max"]);
        drop(v);
        let policy = match rng.random_range(0..3) {
            0 => CutPolicy::DROP_ALL,
            1 => CutPolicy::KEEP_ALL,
            _ => CutPolicy::CHAOS,
        };
        let fired = rail.fired();
        dev.power_cut();
        p.abandon();
        rail.disarm();
        dev.restore_power(policy, &mut rng);
        let p = Pool::open(vec![dev.clone() as Arc<dyn Device>], bg_cfg())
            .unwrap_or_else(|e| panic!("round {round}: import after a power cut failed: {e}"));
        let v = p.open_volume("v").expect("open after the cut");
        let got = flatten(futures::executor::block_on(v.read(0, blocks * 4096)).expect("read"));
        for (t, cells) in models.iter_mut().enumerate() {
            for lba in t as u64 * REGION..(t as u64 + 1) * REGION {
                let b = &got[(lba * 4096) as usize..((lba + 1) * 4096) as usize];
                let cell = cells.entry(lba).or_default();
                if cell.recover(b, lba).is_none() {
                    panic!(
                        "round {round} (cut fired: {fired}, {policy:?}): block {lba} holds neither its flushed value nor a later one: {cell:?}"
                    );
                }
            }
        }
        drop(v);
        let r = p.check().expect("check");
        assert!(
            r.is_clean(),
            "round {round}: pool check after a power cut: {:#?}",
            r.errors
        );
        pool = Some(p);
    }
    eprintln!("pipeline: {rounds} power cuts; at most {most_in_flight} rounds in flight");
    assert!(
        most_in_flight >= 2,
        "the writer never had two rounds in flight: the campaign did not test them"
    );
}
