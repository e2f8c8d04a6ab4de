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

/// Names of this process's threads (`/proc/self/task/*/comm`).
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

/// With background maintenance, merges run on their own thread beside the
/// maintenance thread (so a long merge into L1 never holds up the cleaner
/// or a flush), keep L0 short under a stream of small flushes, and lose
/// nothing.
#[test]
fn background_compaction_runs_on_its_own_thread() {
    let dev = std::sync::Arc::new(edgevol_engine::device::MemDevice::new("d0", 128 * MIB));
    let pool = edgevol_engine::Pool::create(
        "p",
        vec![dev as std::sync::Arc<dyn edgevol_engine::device::Device>],
        &edgevol_engine::CreateOptions {
            segment_size: Some(MIB),
        },
        edgevol_engine::PoolConfig {
            memtable_bytes: 64 * 1024,
            cache_bytes: 4 * MIB,
            flush_interval: std::time::Duration::from_millis(20),
            ..edgevol_engine::PoolConfig::default()
        },
    )
    .expect("create pool");
    // The maintenance thread starts it.
    let has_compactor = || thread_names().iter().any(|n| n == "ev-compact-p");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !has_compactor() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(has_compactor(), "a compaction thread: {:?}", thread_names());
    pool.create_volume("v", 16 * MIB, uncompressed()).unwrap();
    let v = pool.open_volume("v").unwrap();
    let blocks = 16 * MIB / 4096;
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let mut tag = 0u64;
    // Scattered one-block writes, many small flushes.
    for round in 0..40u64 {
        for i in 0..64u64 {
            let lba = (i * 67 + round * 13) % blocks;
            tag += 1;
            model.insert(lba, tag);
            write(&v, lba, &tagged(tag, lba));
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while counter(&pool, "compactions") == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        counter(&pool, "compactions") > 0,
        "{:?}",
        pool.status().counters
    );
    assert!(
        counter(&pool, "map_runs") < 12,
        "{:?}",
        pool.status().counters
    );
    check_all(&v, &model, blocks, "with background compaction");
    pool.sync_maintenance().unwrap();
    check_all(&v, &model, blocks, "after maintenance");
    assert_clean(&pool);
    pool.close().unwrap();
}
