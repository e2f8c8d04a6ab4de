//! The cleaner under pressure: overwrite a small pool many times its
//! capacity with background maintenance running; every block must read back
//! its latest value, writes must never fail with ENOSPC while dead space is
//! reclaimable, and the pool must stay consistent.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use edgevol_engine::device::{Device, MemDevice};
use edgevol_engine::{CreateOptions, Pool, PoolConfig};
use rand::{Rng, SeedableRng};

fn background_cfg() -> PoolConfig {
    PoolConfig {
        background: true,
        ..cfg()
    }
}

#[test]
fn overwrites_many_times_capacity_with_snapshots() {
    let dev = Arc::new(MemDevice::new("d0", 72 * MIB));
    let pool = Pool::create(
        "p",
        vec![dev.clone() as Arc<dyn Device>],
        &CreateOptions {
            segment_size: Some(MIB),
        },
        background_cfg(),
    )
    .unwrap();
    // 24 MiB of volume on ~64 MiB of segments: live data is at most ~40%.
    pool.create_volume("v", 24 * MIB, uncompressed()).unwrap();
    let v = pool.open_volume("v").unwrap();
    let blocks = 24 * MIB / 4096;
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut tag = 0u64;
    let mut snaps: Vec<String> = Vec::new();
    // ~250 MiB of writes: about four times the pool.
    for round in 0..2000 {
        let lba = rng.random_range(0..blocks - 32);
        let n = rng.random_range(1..32u64);
        let mut data = Vec::with_capacity((n * 4096) as usize);
        for i in 0..n {
            tag += 1;
            model.insert(lba + i, tag);
            data.extend_from_slice(&tagged(tag, lba + i));
        }
        futures::executor::block_on(v.write(lba * 4096, Bytes::from(data), false))
            .expect("write must not fail");
        if round % 400 == 399 {
            // A snapshot pins old data for a while; the one before it goes.
            let name = format!("s{round}");
            pool.snapshot("v", &name).unwrap();
            snaps.push(name);
            if snaps.len() > 1 {
                let old = snaps.remove(0);
                pool.destroy_snapshot("v", &old).unwrap();
            }
        }
        if round % 100 == 0 {
            let probe = rng.random_range(0..blocks);
            let want = model
                .get(&probe)
                .map_or_else(|| vec![0u8; 4096], |t| tagged(*t, probe));
            assert_eq!(
                read(&v, probe, 1),
                want,
                "block {probe} after round {round}"
            );
        }
    }
    let st = pool.status();
    assert!(
        st.counters["cleaned_segments"] > 0,
        "the cleaner must have run: {:?}",
        st.counters
    );
    let all = read(&v, 0, blocks);
    for lba in 0..blocks {
        let want = model
            .get(&lba)
            .map_or_else(|| vec![0u8; 4096], |t| tagged(*t, lba));
        assert!(
            all[(lba * 4096) as usize..((lba + 1) * 4096) as usize] == want[..],
            "block {lba}"
        );
    }
    pool.sync_maintenance().unwrap();
    assert_clean(&pool);
    drop(v);
    pool.close().unwrap();
    let pool = Pool::open(vec![dev as Arc<dyn Device>], cfg()).unwrap();
    let v = pool.open_volume("v").unwrap();
    let all2 = read(&v, 0, blocks);
    assert!(all == all2, "contents survive a clean close");
    assert_clean(&pool);
}

#[test]
fn full_pool_gives_enospc_and_recovers_after_delete() {
    let dev = Arc::new(MemDevice::new("d0", 48 * MIB));
    let pool = Pool::create(
        "p",
        vec![dev.clone() as Arc<dyn Device>],
        &CreateOptions {
            segment_size: Some(MIB),
        },
        background_cfg(),
    )
    .unwrap();
    pool.create_volume("big", 256 * MIB, uncompressed())
        .unwrap();
    pool.create_volume("keep", 4 * MIB, no_props()).unwrap();
    let keep = pool.open_volume("keep").unwrap();
    write(&keep, 0, &tagged(7, 0));
    flush(&keep);
    let big = pool.open_volume("big").unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut written = 0u64;
    let err = loop {
        match futures::executor::block_on(big.write(written, Bytes::copy_from_slice(&chunk), false))
        {
            Ok(()) => written += 1 << 20,
            Err(e) => break e,
        }
        assert!(written < 256 * MIB, "a 48 MiB pool cannot take 256 MiB");
    };
    assert_eq!(err.kind(), edgevol_engine::ErrorKind::NoSpace, "{err}");
    assert!(
        written >= 16 * MIB,
        "only {written} bytes fit before ENOSPC"
    );
    // Existing data is unharmed; deleting makes room again.
    assert_eq!(read(&keep, 0, 1), tagged(7, 0));
    pool.destroy_volume("big", false).unwrap();
    pool.sync_maintenance().unwrap();
    pool.create_volume("again", 8 * MIB, no_props()).unwrap();
    let again = pool.open_volume("again").unwrap();
    futures::executor::block_on(again.write(0, Bytes::copy_from_slice(&chunk), false))
        .expect("space came back");
    assert_clean(&pool);
}
