//! Engine-only CPU cost of writes and reads (memory device): µs per op.
//! `cargo run --release -p edgevol-engine --example mapbench [GiB]`
#![allow(clippy::unwrap_used)] // a developer tool: any failure should stop it loudly
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)] // getrusage
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use edgevol_engine::device::{Device, FileDevice};
use edgevol_engine::{CreateOptions, Pool, PoolConfig};
use rand::{Rng, SeedableRng};

/// CPU seconds used by the process so far (all threads).
fn cpu() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn main() {
    let gib: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    // A file in /dev/shm: device I/O costs a memcpy, so what is measured is
    // the engine's own CPU.
    let path = std::path::PathBuf::from(format!("/dev/shm/mapbench-{}", std::process::id()));
    let dev = Arc::new(FileDevice::create_sparse(&path, (gib * 3) << 30).unwrap());
    let _ = std::fs::remove_file(&path);
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
        let c0 = cpu();
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
        let wc = (cpu() - c0) * 1e6 / n as f64;
        let t = Instant::now();
        let c0 = cpu();
        for _ in 0..n {
            let lba = rng.random_range(0..blocks);
            futures::executor::block_on(v.read(lba * 4096, 4096)).unwrap();
        }
        let r = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        let rc = (cpu() - c0) * 1e6 / n as f64;
        eprintln!(
            "round {round}: randwrite {w:.2} us/op ({wc:.2} us CPU), randread {r:.2} us/op ({rc:.2} us CPU), runs {}",
            pool.status().counters["map_runs"]
        );
    }
}
