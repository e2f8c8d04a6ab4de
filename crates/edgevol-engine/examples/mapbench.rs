//! Engine-only CPU cost of writes and reads (memory device): µs per op.
//! `cargo run --release -p edgevol-engine --example mapbench [GiB]`
#![allow(clippy::unwrap_used)] // a developer tool: any failure should stop it loudly
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use edgevol_engine::device::{Device, MemDevice};
use edgevol_engine::{CreateOptions, Pool, PoolConfig};
use rand::{Rng, SeedableRng};

fn main() {
    let gib: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let dev = Arc::new(MemDevice::new("d", (gib * 3) << 30));
    let pool = Pool::create(
        "p",
        vec![dev as Arc<dyn Device>],
        &CreateOptions::default(),
        PoolConfig::default(),
    )
    .unwrap();
    pool.create_volume("v", gib << 30, Default::default())
        .unwrap();
    let v = pool.open_volume("v").unwrap();
    let blocks = (gib << 30) / 4096;
    let chunk = Bytes::from(vec![7u8; 1 << 20]);
    let t = Instant::now();
    for i in 0..(gib << 10) {
        futures::executor::block_on(v.write(i << 20, chunk.clone(), false)).unwrap();
    }
    eprintln!(
        "fill: {:.1} MiB/s",
        (gib << 10) as f64 / t.elapsed().as_secs_f64()
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let blk = Bytes::from(vec![9u8; 4096]);
    for round in 0..3 {
        let n = 200_000;
        let t = Instant::now();
        // 64 writes in flight, like 4 jobs x QD16.
        let mut i = 0;
        while i < n {
            let futs: Vec<_> = (0..64)
                .map(|_| {
                    let lba = rng.random_range(0..blocks);
                    v.write(lba * 4096, blk.clone(), false)
                })
                .collect();
            futures::executor::block_on(futures::future::join_all(futs));
            i += 64;
        }
        let w = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        let t = Instant::now();
        for _ in 0..n {
            let lba = rng.random_range(0..blocks);
            futures::executor::block_on(v.read(lba * 4096, 4096)).unwrap();
        }
        let r = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        eprintln!(
            "round {round}: randwrite {w:.2} us/op, randread {r:.2} us/op, runs {}",
            pool.status().counters["map_runs"]
        );
    }
}
