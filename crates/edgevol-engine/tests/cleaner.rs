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

/// A pool of `bytes` on one memory device, in segments of `segment`, with
/// maintenance in the background (as the daemon runs it), and the device.
fn background_pool(bytes: u64, segment: u64) -> (Pool, Arc<MemDevice>) {
    let dev = Arc::new(MemDevice::new("d0", bytes));
    let pool = Pool::create(
        "p",
        vec![dev.clone() as Arc<dyn Device>],
        &CreateOptions {
            segment_size: Some(segment),
        },
        background_cfg(),
    )
    .expect("create pool");
    (pool, dev)
}

#[test]
fn overwrites_many_times_capacity_with_snapshots() {
    let (pool, dev) = background_pool(72 * MIB, MIB);
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
    let (pool, _dev) = background_pool(48 * MIB, MIB);
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

/// A 4 KiB block that compresses about 2:1: text naming `tag`, then
/// pseudo-random bytes seeded by it.
fn text_block(tag: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(4096);
    while b.len() < 2048 {
        b.extend_from_slice(format!("block {tag:016x} of compressible text; ").as_bytes());
    }
    b.truncate(2048);
    let mut x = tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while b.len() < 4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.extend_from_slice(&x.to_le_bytes());
    }
    b
}

#[test]
fn random_overwrites_at_a_nearly_full_pool_do_not_fail() {
    // Live compressed data at ~90% of what the pool can hold, then random
    // 4 KiB overwrites of about twice the pool. Each overwrite frees its
    // share of the packed record it replaces at once and the cleaner stores
    // the live rest anew, so none fails.
    let (pool, _dev) = background_pool(64 * MIB, 2 * MIB);
    let usable = pool.status().usable;
    // Blocks compress about 2:1, so the volume's logical size is ~1.8x
    // the pool.
    let size = (usable * 18 / 10) / MIB * MIB;
    let props = BTreeMap::from([("compression".to_string(), "lz4".to_string())]);
    pool.create_volume("v", size, props).unwrap();
    let v = pool.open_volume("v").unwrap();
    let blocks = size / 4096;
    let mut model: Vec<u64> = (0..blocks).collect();
    for lba in (0..blocks).step_by(16) {
        let n = 16.min(blocks - lba);
        let data: Vec<u8> = (lba..lba + n).flat_map(text_block).collect();
        write(&v, lba, &data);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut tag = blocks;
    for _ in 0..2 * 64 * MIB / 2048 {
        let lba = rng.random_range(0..blocks);
        tag += 1;
        model[lba as usize] = tag;
        futures::executor::block_on(v.write(lba * 4096, Bytes::from(text_block(tag)), false))
            .expect("an overwrite at a nearly full pool must not fail");
    }
    let all = read(&v, 0, blocks);
    for (lba, t) in model.iter().enumerate() {
        assert!(
            all[lba * 4096..(lba + 1) * 4096] == text_block(*t)[..],
            "block {lba}"
        );
    }
    let st = pool.status();
    assert_eq!(
        st.logical, size,
        "live logical bytes are the volume's blocks"
    );
    pool.sync_maintenance().unwrap();
    assert_clean(&pool);
}

/// Client writes at a nearly full pool are paced (`pool/admission`)
/// rather than stopped at the reserve: with live data at ~90% of usable
/// and four writers overwriting at random, writes wait for their slots,
/// none fails, and every block reads back its last value.
#[test]
fn writers_at_a_nearly_full_pool_are_paced_not_failed() {
    let (pool, _dev) = background_pool(160 * MIB, MIB);
    let usable = pool.status().usable;
    let size = (usable * 9 / 10) / MIB * MIB;
    pool.create_volume("v", size, uncompressed()).unwrap();
    let v = Arc::new(pool.open_volume("v").unwrap());
    let blocks = size / 4096;
    for lba in (0..blocks).step_by(64) {
        let n = 64.min(blocks - lba);
        let data: Vec<u8> = (lba..lba + n).flat_map(|x| tagged(x, x)).collect();
        write(&v, lba, &data);
    }
    // Four writers, each on its own quarter, about 1.5x the pool between them.
    let quarter = blocks / 4;
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let v = v.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(w);
                let mut last = BTreeMap::new();
                for i in 0..(240 * MIB / 4096 / 4) {
                    let lba = w * quarter + rng.random_range(0..quarter);
                    let tag = (w + 1) << 40 | i;
                    futures::executor::block_on(v.write(
                        lba * 4096,
                        Bytes::from(tagged(tag, lba)),
                        false,
                    ))
                    .expect("a write at a nearly full pool must not fail");
                    last.insert(lba, tag);
                }
                last
            })
        })
        .collect();
    let mut model: BTreeMap<u64, u64> = (0..blocks).map(|x| (x, x)).collect();
    for w in writers {
        model.extend(w.join().expect("writer"));
    }
    let st = pool.status();
    assert!(
        st.counters["cleaned_segments"] > 0 && st.counters["admission_delayed_writes"] > 0,
        "the cleaner ran and writers were paced: {:?}",
        st.counters
    );
    let all = read(&v, 0, blocks);
    for (lba, t) in &model {
        let at = (*lba * 4096) as usize;
        assert!(all[at..at + 4096] == tagged(*t, *lba)[..], "block {lba}");
    }
    pool.sync_maintenance().unwrap();
    assert_clean(&pool);
}

fn partly_dead_records(encrypted: bool) {
    let (pool, _dev) = mem_pool(64 * MIB);
    let mut props = BTreeMap::from([("compression".to_string(), "zstd".to_string())]);
    if encrypted {
        props.insert("encryption".into(), "aes-256-gcm".into());
        props.insert("keyformat".into(), "hex".into());
    }
    let secret =
        || encrypted.then(|| edgevol_engine::crypt::Secret::new("ab".repeat(32).into_bytes()));
    pool.create_volume_with_key("v", 16 * MIB, props, secret())
        .expect("pool operation");
    let v = pool.open_volume("v").expect("pool operation");
    let blocks = 16 * MIB / 4096;
    // Tag of each block's content; unwritten blocks read as zeroes.
    let mut model: Vec<u64> = vec![u64::MAX; blocks as usize];
    // `n` blocks from `lo` in compressible 64 KiB records; then every
    // other block of each record is overwritten, so each is half dead.
    let half_dead = |model: &mut Vec<u64>, lo: u64, n: u64| {
        for lba in (lo..lo + n).step_by(16) {
            let data: Vec<u8> = (lba..lba + 16).flat_map(text_block).collect();
            for x in lba..lba + 16 {
                model[x as usize] = x;
            }
            write(&v, lba, &data);
        }
        flush(&v);
        pool.sync_maintenance().expect("pool operation");
        for lba in (lo..lo + n).step_by(2) {
            model[lba as usize] = 1_000_000 + lba;
            write(&v, lba, &text_block(1_000_000 + lba));
        }
        flush(&v);
        pool.sync_maintenance().expect("pool operation");
    };
    let check = |v: &edgevol_engine::Volume, model: &[u64]| {
        let all = read(v, 0, blocks);
        for (lba, t) in model.iter().enumerate() {
            let want = if *t == u64::MAX {
                vec![0; 4096]
            } else {
                text_block(*t)
            };
            assert!(all[lba * 4096..(lba + 1) * 4096] == want[..], "block {lba}");
        }
    };
    let counter = |name: &str| pool.status().counters[name];
    half_dead(&mut model, 0, blocks / 2);
    let before = pool.status();
    assert_eq!(before.logical, 8 * MIB, "live logical bytes: {before:?}");
    pool.clean_now(64).expect("pool operation");
    pool.sync_maintenance().expect("pool operation");
    let restored = counter("restored_fragments");
    // Every half-dead record's live blocks (8 of 16) are stored anew,
    // except in segments still open for writing.
    assert!(
        restored >= blocks / 4 * 9 / 10,
        "only {restored} fragments restored"
    );
    check(&v, &model);
    assert_clean(&pool);
    let after = pool.status();
    assert_eq!(after.logical, 8 * MIB);
    assert!(
        after.allocated < before.allocated,
        "allocated {} after cleaning, {} before",
        after.allocated,
        before.allocated
    );
    if encrypted {
        // Locked: the cleaner cannot open the records and moves them whole.
        half_dead(&mut model, blocks / 2, blocks / 2);
        pool.unload_key("v").expect("pool operation");
        let moved = counter("relocated_fragments");
        pool.clean_now(64).expect("pool operation");
        pool.sync_maintenance().expect("pool operation");
        assert_eq!(
            counter("restored_fragments"),
            restored,
            "restored without a key"
        );
        assert!(counter("relocated_fragments") > moved, "nothing moved");
        assert_clean(&pool);
        pool.load_key("v", secret()).expect("pool operation");
        check(&v, &model);
    }
}

#[test]
fn partly_dead_compressed_records_are_stored_anew_by_the_cleaner() {
    partly_dead_records(false);
}

#[test]
fn partly_dead_encrypted_records_are_stored_anew_when_the_key_is_loaded() {
    partly_dead_records(true);
}

/// Records the settler saw lose their last entry are skipped by the
/// cleaner without a map lookup (`pool/gone.rs`); partly dead records and
/// records a snapshot holds are never taken for dead, and after a
/// re-import (no hints) the cleaner finds the same by lookups.
#[test]
fn records_known_dead_are_skipped_and_every_live_block_is_kept() {
    let (pool, dev) = mem_pool(64 * MIB);
    pool.create_volume("v", 8 * MIB, uncompressed()).unwrap();
    let v = pool.open_volume("v").unwrap();
    let counter = |p: &Pool, k: &str| p.status().counters[k];
    let mut head: BTreeMap<u64, u64> = BTreeMap::new();
    let put = |v: &edgevol_engine::Volume, lba: u64, tags: &[u64]| {
        let data: Vec<u8> = tags
            .iter()
            .enumerate()
            .flat_map(|(i, t)| tagged(*t, lba + i as u64))
            .collect();
        write(v, lba, &data);
    };
    // Blocks 0..256 as 16-block records, then every other block
    // overwritten: each record is half dead, none gone.
    for r in 0..16u64 {
        let tags: Vec<u64> = (0..16).map(|i| 1 + r * 16 + i).collect();
        put(&v, r * 16, &tags);
    }
    for lba in (0..256u64).step_by(2) {
        put(&v, lba, &[10_000 + lba]);
    }
    // Blocks 256..768 one block each; a snapshot holds them.
    for lba in 256..768u64 {
        put(&v, lba, &[lba + 1]);
    }
    pool.snapshot("v", "s").unwrap();
    // 256..512 overwritten once: the old records stay (the snapshot).
    // 512..768 twice: the first overwrite's records are gone.
    for lba in 256..512u64 {
        put(&v, lba, &[20_000 + lba]);
    }
    for pass in [30_000u64, 40_000] {
        for lba in 512..768u64 {
            put(&v, lba, &[pass + lba]);
        }
    }
    for lba in 0..768u64 {
        let t = match lba {
            0..256 if lba % 2 == 0 => 10_000 + lba,
            0..256 => lba + 1,
            256..512 => 20_000 + lba,
            _ => 40_000 + lba,
        };
        head.insert(lba, t);
    }
    flush(&v);
    pool.sync_maintenance().unwrap();
    let verify = |p: &Pool, head: &BTreeMap<u64, u64>, when: &str| {
        let v = p.open_volume("v").unwrap();
        let s = p.open_volume("v@s").unwrap();
        for (lba, t) in head {
            assert!(
                read(&v, *lba, 1) == tagged(*t, *lba),
                "head block {lba} {when}"
            );
        }
        for lba in 256..768u64 {
            assert!(
                read(&s, lba, 1) == tagged(lba + 1, lba),
                "snapshot block {lba} {when}"
            );
        }
        assert_clean(p);
    };

    let skipped0 = counter(&pool, "cleaner_skipped_dead");
    assert!(pool.clean_now(64).unwrap() > 0, "victims were cleaned");
    let skipped = counter(&pool, "cleaner_skipped_dead") - skipped0;
    // The 256 records of the first overwrite of 512..768 died whole; some
    // of them may still sit in a segment open for writing (never cleaned).
    assert!(
        (128..=256).contains(&skipped),
        "the cleaner skipped {skipped} records known dead"
    );
    flush(&v);
    pool.sync_maintenance().unwrap();
    // Every victim came free: a live record skipped for dead would have
    // kept its segment (and its live bytes) back.
    assert_no_sparse_sealed_segment(&pool);
    verify(&pool, &head, "after cleaning with hints");

    // Re-imported: no hints, every record looked up again.
    drop((v, pool));
    let pool = reopen(&dev);
    let v = pool.open_volume("v").unwrap();
    for lba in 512..768u64 {
        put(&v, lba, &[50_000 + lba]);
        head.insert(lba, 50_000 + lba);
    }
    flush(&v);
    pool.sync_maintenance().unwrap();
    let skipped0 = counter(&pool, "cleaner_skipped_dead");
    pool.clean_now(64).unwrap();
    flush(&v);
    pool.sync_maintenance().unwrap();
    assert!(
        counter(&pool, "cleaner_skipped_dead") >= skipped0,
        "counters only grow"
    );
    assert_no_sparse_sealed_segment(&pool);
    verify(&pool, &head, "after cleaning a re-imported pool");
}

/// No sealed data segment is less than half live (`debug_segments` lists
/// `group:index:State/live KiB/written KiB`, `*` when open).
fn assert_no_sparse_sealed_segment(pool: &Pool) {
    let segs = pool.debug_segments();
    for s in segs.split_whitespace() {
        let Some(rest) = s.split(":Data/").nth(1) else {
            continue;
        };
        if rest.ends_with('*') {
            continue;
        }
        let (live, written) = rest.split_once('/').expect("live/written");
        let (live, written): (u64, u64) = (
            live.parse().expect("live"),
            written.parse().expect("written"),
        );
        assert!(
            live * 2 >= written,
            "a cleaned segment was left behind: {s} in {segs}"
        );
    }
}
