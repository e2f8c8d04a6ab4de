//! Map compaction: small L0 runs merge among themselves while L1 is much
//! larger (instead of rewriting L1 for them), and the merge keeps every
//! deletion marker, because L1 below still holds the entries they hide.

mod common;

use std::collections::BTreeMap;

use common::*;

fn counter(pool: &edgevol_engine::Pool, name: &str) -> u64 {
    pool.status().counters[name]
}

fn check_all(v: &edgevol_engine::Volume, model: &BTreeMap<u64, u64>, blocks: u64, when: &str) {
    for lba in 0..blocks {
        let want = model
            .get(&lba)
            .map_or_else(|| vec![0u8; 4096], |t| tagged(*t, lba));
        assert!(read(v, lba, 1) == want, "block {lba} {when}");
    }
}

#[test]
fn small_l0_runs_merge_among_themselves_and_keep_deletions() {
    let (pool, dev) = mem_pool(96 * MIB);
    pool.create_volume("v", 32 * MIB, uncompressed()).unwrap();
    let v = pool.open_volume("v").unwrap();
    let blocks = 32 * MIB / 4096;
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let mut tag = 0u64;
    let mut put = |v: &edgevol_engine::Volume, lba: u64, n: u64, model: &mut BTreeMap<u64, u64>| {
        let mut data = Vec::new();
        for b in lba..lba + n {
            tag += 1;
            model.insert(b, tag);
            data.extend_from_slice(&tagged(tag, b));
        }
        write(v, lba, &data);
    };

    // A large L1: every block written as one-block extents (many entries),
    // over four flushes; the fourth L0 run compacts everything into L1.
    for part in 0..4 {
        for lba in (part..blocks).step_by(4) {
            put(&v, lba, 1, &mut model);
        }
        pool.sync_maintenance().unwrap();
    }
    assert_eq!(counter(&pool, "map_runs"), 1, "one L1 run");
    let compactions = counter(&pool, "compactions");

    // Small changes, one flush each: 8-block extents over what L1 holds
    // (their writes punch L1's entries: deletion markers), trims, and a
    // one-block overwrite inside an extent written in this phase.
    for round in 0..4u64 {
        let base = round * 512 + 7;
        put(&v, base, 8, &mut model);
        put(&v, base + 3, 1, &mut model);
        let t = base + 100;
        trim(&v, t, 5);
        for b in t..t + 5 {
            model.remove(&b);
        }
        pool.sync_maintenance().unwrap();
    }
    assert_eq!(
        counter(&pool, "compactions"),
        compactions + 1,
        "four L0 runs compacted once"
    );
    assert_eq!(
        counter(&pool, "map_runs"),
        2,
        "the small L0 runs merged into one L0 run; L1 was left alone"
    );
    check_all(&v, &model, blocks, "after the L0 merge");
    assert_clean(&pool);

    // The merged run is in the checkpoint's manifest: the same after a
    // reopen, and a full compaction later folds it into L1.
    drop(v);
    pool.close().unwrap();
    drop(pool);
    let pool = reopen(&dev);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(counter(&pool, "map_runs"), 2);
    check_all(&v, &model, blocks, "after reopen");
    for round in 0..3u64 {
        put(&v, round * 64, 16, &mut model);
        pool.sync_maintenance().unwrap();
    }
    check_all(&v, &model, blocks, "after more flushes");
    assert_clean(&pool);
}
