//! Power cuts while the pool is nearly full and the cleaner works all the
//! time: random overwrites (many sizes), trims, flushes and FUA writes,
//! snapshot churn, and power cuts at random moments with the background
//! maintenance thread running. After every cut: every block reads its last
//! flushed value or a later one, snapshots are intact, `pool check` is
//! clean (including space accounting).
//!
//! `PRESSURE_SEED` replays a workload (the thread schedule of the
//! maintenance thread still varies), `PRESSURE_ROUNDS` runs longer.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use edgevol_engine::device::{CutPolicy, Device, MemDevice};
use edgevol_engine::{CreateOptions, ErrorKind, Pool, PoolConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn bg_cfg() -> PoolConfig {
    PoolConfig {
        background: true,
        ..cfg()
    }
}

/// The daemon's configuration (big memtable budget, rare time-based flushes:
/// long log replays).
fn daemon_cfg() -> PoolConfig {
    PoolConfig {
        ..PoolConfig::default()
    }
}

fn campaign(seed: u64, rounds: usize, dev_mib: u64, vol_mib: u64, max_snaps: usize) -> Outcome {
    campaign_with(
        seed,
        rounds,
        dev_mib,
        vol_mib,
        max_snaps,
        bg_cfg(),
        no_props(),
    )
}

fn campaign_with(
    seed: u64,
    rounds: usize,
    dev_mib: u64,
    vol_mib: u64,
    max_snaps: usize,
    cfg: PoolConfig,
    props: std::collections::BTreeMap<String, String>,
) -> Outcome {
    eprintln!("pressure: seed {seed} (PRESSURE_SEED={seed} replays the workload)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dev = Arc::new(MemDevice::new("d0", dev_mib * MIB));
    let mut pool = Some(
        Pool::create(
            "p",
            vec![dev.clone() as Arc<dyn Device>],
            &CreateOptions {
                segment_size: Some(MIB),
            },
            cfg.clone(),
        )
        .expect("create"),
    );
    let blocks = vol_mib * MIB / 4096;
    pool.as_ref()
        .expect("pool open")
        .create_volume("v", blocks * 4096, props)
        .expect("create volume");
    let mut cells: BTreeMap<u64, Cell> = BTreeMap::new();
    let mut snaps: Vec<(String, BTreeMap<u64, u64>)> = Vec::new();
    let mut tag = 0u64;
    let mut next_snap = 0u64;
    let mut enospc = 0u64;
    let mut cleaned = 0u64;
    for round in 0..rounds {
        let p = pool.as_ref().expect("pool open");
        let v = p.open_volume("v").expect("open");
        let ops = rng.random_range(50..400);
        for _ in 0..ops {
            let r: f64 = rng.random();
            if r < 0.80 {
                const SIZES: [u64; 10] = [1, 1, 1, 2, 4, 8, 16, 32, 33, 64];
                let n = SIZES[rng.random_range(0..SIZES.len())];
                let lba = rng.random_range(0..blocks - n);
                let fua = rng.random_bool(0.05);
                let mut data = Vec::with_capacity((n * 4096) as usize);
                let mut tags = Vec::new();
                for i in 0..n {
                    tag += 1;
                    tags.push(tag);
                    data.extend_from_slice(&tagged(tag, lba + i));
                }
                match futures::executor::block_on(v.write(lba * 4096, Bytes::from(data), fua)) {
                    Ok(()) => {
                        for (i, t) in tags.into_iter().enumerate() {
                            cells.entry(lba + i as u64).or_default().pending.push(t);
                        }
                        if fua {
                            settle(&mut cells);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::NoSpace => enospc += 1,
                    Err(e) => panic!("write failed: {e}"),
                }
            } else if r < 0.86 {
                let n = rng.random_range(1..64);
                let lba = rng.random_range(0..blocks - n);
                let op = rng.random_range(0..3);
                let res = match op {
                    0 => futures::executor::block_on(v.trim(lba * 4096, n * 4096, false)),
                    _ => futures::executor::block_on(v.write_zeroes(
                        lba * 4096,
                        n * 4096,
                        op == 2,
                        false,
                    )),
                };
                if let Err(e) = res {
                    let st = p.status();
                    panic!(
                        "trim failed: {e}; status {st:#?}; segs {}",
                        p.debug_segments()
                    );
                }
                for x in lba..lba + n {
                    cells.entry(x).or_default().pending.push(0);
                }
            } else if r < 0.96 {
                futures::executor::block_on(v.flush()).expect("flush");
                settle(&mut cells);
            } else if r < 0.98 && snaps.len() < max_snaps {
                next_snap += 1;
                let name = format!("s{next_snap}");
                match p.snapshot("v", &name) {
                    Ok(_) => {
                        settle(&mut cells);
                        let img = cells
                            .iter()
                            .map(|(l, c)| (*l, c.latest()))
                            .filter(|(_, t)| *t != 0)
                            .collect();
                        snaps.push((name, img));
                    }
                    Err(e) if e.kind() == ErrorKind::NoSpace => enospc += 1,
                    Err(e) => panic!("snapshot failed: {e}"),
                }
            } else if !snaps.is_empty() {
                let i = rng.random_range(0..snaps.len());
                let (name, _) = snaps.remove(i);
                p.destroy_snapshot("v", &name).expect("destroy snapshot");
                settle(&mut cells);
            }
        }
        drop(v);
        cleaned += p.status().counters["cleaned_segments"];
        // Power cut at a random moment of background activity.
        if rng.random_bool(0.5) {
            std::thread::sleep(std::time::Duration::from_millis(rng.random_range(0..20)));
        }
        let policy = match rng.random_range(0..3) {
            0 => CutPolicy::DROP_ALL,
            1 => CutPolicy::KEEP_ALL,
            _ => CutPolicy::CHAOS,
        };
        dev.power_cut();
        pool.take().expect("pool open").abandon();
        dev.restore_power(policy, &mut rng);
        let p = Pool::open(vec![dev.clone() as Arc<dyn Device>], cfg.clone())
            .unwrap_or_else(|e| panic!("round {round}: import after a power cut failed: {e}"));
        let v = p.open_volume("v").expect("open after cut");
        let got = flatten(futures::executor::block_on(v.read(0, blocks * 4096)).expect("read"));
        for lba in 0..blocks {
            let b = &got[(lba * 4096) as usize..((lba + 1) * 4096) as usize];
            let cell = cells.entry(lba).or_default();
            if cell.recover(b, lba).is_none() {
                panic!(
                    "round {round}: block {lba} holds neither its flushed value nor a later one (cell {cell:?}, policy {policy:?})"
                );
            }
        }
        for (name, img) in &snaps {
            let s = p.open_volume(&format!("v@{name}")).expect("open snapshot");
            let got = flatten(futures::executor::block_on(s.read(0, blocks * 4096)).expect("read"));
            for lba in 0..blocks {
                let b = &got[(lba * 4096) as usize..((lba + 1) * 4096) as usize];
                let want = block_of(img.get(&lba).copied().unwrap_or(0), lba);
                assert!(
                    b == want.as_slice(),
                    "round {round}: snapshot {name} block {lba} changed"
                );
            }
        }
        p.sync_maintenance().expect("maintenance after recovery");
        let r = p.check().expect("check");
        assert!(
            r.is_clean(),
            "round {round}: pool check after a power cut: {:#?}",
            r.errors
        );
        pool = Some(p);
    }
    let st = pool.as_ref().expect("pool open").status();
    eprintln!(
        "pressure: {rounds} power cuts, {tag} block writes, {enospc} ENOSPC; live {} MiB of {} usable, {cleaned} segments cleaned",
        st.data >> 20,
        st.usable >> 20,
    );
    Outcome { enospc, cleaned }
}

/// What a campaign saw.
struct Outcome {
    /// Writes refused with ENOSPC.
    enospc: u64,
    /// Segments the cleaner processed.
    cleaned: u64,
}

fn seed() -> u64 {
    std::env::var("PRESSURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

fn rounds(default: usize) -> usize {
    std::env::var("PRESSURE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn power_cuts_on_a_nearly_full_pool() {
    // 10 MiB of volume and up to 4 snapshots on 32 MiB: the cleaner runs
    // constantly and writes may be refused (ENOSPC) when snapshots pin
    // too much.
    let o = campaign_with(seed(), rounds(12), 32, 10, 4, bg_cfg(), uncompressed());
    assert!(
        o.cleaned > 0,
        "the cleaner never ran: the test lost its point"
    );
}

#[test]
fn power_cuts_with_compressed_records_under_cleaning() {
    // lz4 records (the pool default) stored ~3:1: 40 MiB of volume and up
    // to 3 snapshots on 32 MiB, so the cleaner moves packed records whole.
    let o = campaign_with(seed(), rounds(10), 32, 40, 3, bg_cfg(), no_props());
    assert!(
        o.cleaned > 0,
        "the cleaner never ran: the test lost its point"
    );
}

#[test]
fn power_cuts_with_the_daemon_configuration() {
    campaign_with(seed(), rounds(10), 80, 16, 3, daemon_cfg(), uncompressed());
}

#[test]
fn power_cuts_with_room_to_spare() {
    // 8 MiB of volume and at most 2 snapshots (24 MiB at most) on 64 MiB:
    // never full, and no write may be refused.
    let o = campaign(seed(), rounds(8), 64, 8, 2);
    assert_eq!(
        o.enospc, 0,
        "writes were refused on a pool with room to spare"
    );
}
