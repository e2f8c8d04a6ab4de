//! Sub-block (unaligned) reads, writes, trims and write-zeroes through the
//! engine API, checked byte for byte against a model, and the exclusion
//! that keeps concurrent read-modify-writes from losing each other's bytes.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use edgevol_engine::{Pool, Volume};
use futures::executor::block_on;

const VOL: u64 = 4 * MIB;

fn pool_and_volume() -> (Pool, Volume) {
    let (pool, _dev) = mem_pool(64 * MIB);
    pool.create_volume("v", VOL, no_props()).expect("create");
    let v = pool.open_volume("v").expect("open");
    (pool, v)
}

fn read_at(v: &Volume, offset: u64, len: u64) -> Vec<u8> {
    flatten(block_on(v.read(offset, len)).expect("read"))
}

fn write_at(v: &Volume, offset: u64, data: &[u8]) {
    block_on(v.write(offset, Bytes::copy_from_slice(data), false)).expect("write");
}

/// Bytes that differ per position, so a misplaced copy shows.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251 + 1) as u8)
        .collect()
}

#[test]
fn small_and_odd_reads_and_writes_across_block_boundaries() {
    let (pool, v) = pool_and_volume();
    let mut model = vec![0u8; VOL as usize];
    let cases: &[(u64, usize)] = &[
        (0, 1),
        (4095, 1),
        (4096, 1),
        (512, 512),
        (3584, 1024),   // 512-byte sectors across the 4 KiB boundary
        (8191, 2),      // one byte each side of a boundary
        (12_345, 1024), // odd offset
        (20_000, 9000), // partial head, whole block, partial tail
        (40_960, 4097), // aligned start, one byte into the next block
        (VOL - 1, 1),   // the last byte
        (VOL - 700, 700),
    ];
    for (i, &(off, len)) in cases.iter().enumerate() {
        let data = pattern(i as u64, len);
        write_at(&v, off, &data);
        model[off as usize..off as usize + len].copy_from_slice(&data);
    }
    for &(off, len) in cases {
        for (o, l) in [(off, len as u64), (off.saturating_sub(3), len as u64 + 6)] {
            let l = l.min(VOL - o);
            assert_eq!(
                read_at(&v, o, l),
                &model[o as usize..(o + l) as usize],
                "read {o}+{l}"
            );
        }
    }
    assert_eq!(read_at(&v, 0, VOL), model, "the whole volume");
    // Reads of every small size at every offset in a written region.
    for off in 12_340..12_350 {
        for len in [1, 2, 511, 512, 513] {
            assert_eq!(
                read_at(&v, off, len),
                &model[off as usize..(off + len) as usize]
            );
        }
    }
    assert_clean(&pool);
}

/// A tiny deterministic generator (the trace must be reproducible).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

#[test]
fn random_unaligned_trace_matches_a_model_and_survives_reopen() {
    let (pool, dev) = {
        let (pool, dev) = mem_pool(64 * MIB);
        pool.create_volume("v", VOL, no_props()).unwrap();
        (pool, dev)
    };
    let v = pool.open_volume("v").unwrap();
    // Keep the trace in the first 256 KiB so ops overlap often.
    const SPAN: u64 = 256 * 1024;
    let mut model = vec![0u8; SPAN as usize];
    let mut rng = Lcg(7);
    for step in 0..600 {
        let off = rng.next(SPAN - 1);
        let len = match rng.next(4) {
            0 => 1 + rng.next(16),
            1 => 512 * (1 + rng.next(4)),
            _ => 1 + rng.next(20_000),
        }
        .min(SPAN - off);
        let (o, l) = (off as usize, len as usize);
        match rng.next(10) {
            0..=4 => {
                let data = pattern(step, l);
                block_on(v.write(off, Bytes::from(data.clone()), rng.next(8) == 0)).unwrap();
                model[o..o + l].copy_from_slice(&data);
            }
            5 => {
                block_on(v.trim(off, len, false)).unwrap();
                model[o..o + l].fill(0);
            }
            6 => {
                let no_hole = rng.next(2) == 0;
                block_on(v.write_zeroes(off, len, no_hole, false)).unwrap();
                model[o..o + l].fill(0);
            }
            7 => flush(&v),
            _ => assert_eq!(read_at(&v, off, len), &model[o..o + l], "step {step}"),
        }
    }
    assert_eq!(read_at(&v, 0, SPAN), model);
    flush(&v);
    drop(v);
    pool.close().unwrap();
    let pool = reopen(&dev);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read_at(&v, 0, SPAN), model, "after reopen");
    assert_clean(&pool);
}

#[test]
fn unaligned_trim_zeroes_the_partial_blocks_and_frees_whole_ones() {
    let (pool, v) = pool_and_volume();
    write_at(&v, 0, &vec![0xab; 4 * 4096]);
    // Bytes 100..(3 blocks + 100): block 0 in part, blocks 1-2 whole, block 3 in part.
    block_on(v.trim(100, 3 * 4096, false)).unwrap();
    let got = read_at(&v, 0, 4 * 4096);
    assert!(got[..100].iter().all(|&b| b == 0xab));
    assert!(got[100..3 * 4096 + 100].iter().all(|&b| b == 0));
    assert!(got[3 * 4096 + 100..].iter().all(|&b| b == 0xab));
    let st = block_on(v.block_status(4096, 2 * 4096)).unwrap();
    assert!(
        st.iter().all(|e| e.hole),
        "whole blocks were trimmed: {st:?}"
    );
    // A partial trim that leaves a block all zero makes it a hole too.
    write_at(&v, 10 * 4096 + 8, &[1, 2, 3]);
    block_on(v.trim(10 * 4096, 64, false)).unwrap();
    let st = block_on(v.block_status(10 * 4096, 4096)).unwrap();
    assert!(st[0].hole, "{st:?}");
    // Unaligned block status is cut to the asked range.
    let st = block_on(v.block_status(50, 10)).unwrap();
    assert_eq!(st.iter().map(|e| e.length).sum::<u64>(), 10);
    assert!(!st[0].zero);
    assert_clean(&pool);
}

/// Run `op(thread, round, volume)` for every round on several threads at
/// once, each thread with its own handle; the threads start each round
/// together so their ops overlap.
fn race(
    pool: &Pool,
    threads: usize,
    rounds: u64,
    op: impl Fn(usize, u64, &Volume) + Send + Sync + 'static,
) {
    let op = Arc::new(op);
    let barrier = Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let v = pool.open_volume("v").expect("open");
            let (op, barrier) = (op.clone(), barrier.clone());
            std::thread::spawn(move || {
                for round in 0..rounds {
                    barrier.wait();
                    op(t, round, &v);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a racing thread panicked");
    }
}

#[test]
fn concurrent_sector_writes_to_one_block_all_survive() {
    let (pool, v) = pool_and_volume();
    const ROUNDS: u64 = 40;
    // Eight writers, one per 512-byte sector; in each round all eight write
    // their sector of the same block at once (two per thread, concurrently).
    race(&pool, 4, ROUNDS, |t, round, v| {
        let ops = (0..2).map(|k| {
            let sector = (t * 2 + k) as u64;
            let data = Bytes::from(vec![(sector as u8 + 1) ^ round as u8; 512]);
            v.write(round * 4096 + sector * 512, data, false)
        });
        for r in block_on(futures::future::join_all(ops)) {
            r.unwrap();
        }
    });
    for round in 0..ROUNDS {
        let got = read_at(&v, round * 4096, 4096);
        for sector in 0..8u64 {
            let want = (sector as u8 + 1) ^ round as u8;
            let s = &got[sector as usize * 512..][..512];
            assert!(
                s.iter().all(|&b| b == want),
                "round {round}: sector {sector} lost its write"
            );
        }
    }
}

#[test]
fn an_aligned_write_racing_a_read_modify_write_is_not_reverted() {
    let (pool, v) = pool_and_volume();
    const ROUNDS: u64 = 60;
    race(&pool, 2, ROUNDS, |t, round, v| {
        let at = round * 4096;
        let r = if t == 0 {
            block_on(v.write(at, Bytes::from(vec![0x55; 4096]), false))
        } else {
            block_on(v.write(at + 1000, Bytes::from(vec![0xaa; 10]), false))
        };
        r.unwrap();
    });
    for round in 0..ROUNDS {
        let got = read_at(&v, round * 4096, 4096);
        // Either order is fine; the aligned bytes must be there either way.
        let outside_ok = got[..1000].iter().chain(&got[1010..]).all(|&b| b == 0x55);
        let inside = &got[1000..1010];
        assert!(
            outside_ok && (inside.iter().all(|&b| b == 0x55) || inside.iter().all(|&b| b == 0xaa)),
            "round {round}: the aligned write was reverted"
        );
    }
}
