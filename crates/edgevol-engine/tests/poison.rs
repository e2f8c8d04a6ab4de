//! A write or flush that fails beyond what redundancy absorbs poisons the
//! pool at the device seam (`Vdevs::poison`): every later write and flush
//! fails with `Poisoned`, whoever makes it — a client, maintenance's
//! checkpoint, scrub's repairs — until the pool is imported again. Reads
//! go on, what was acknowledged before survives, and the re-imported pool
//! takes writes again.

mod common;

use bytes::Bytes;
use common::*;
use edgevol_engine::format::label::GroupKind;
use edgevol_engine::{ErrorKind, Pool};
use futures::executor::block_on;

const BLOCKS: u64 = 256;

fn verify(pool: &Pool, tag: u64) {
    let v = pool.open_volume("v").expect("open");
    for b in 0..BLOCKS {
        assert_eq!(read(&v, b, 1), tagged(tag, b), "block {b}");
    }
}

#[test]
fn a_failed_flush_stops_every_writer_until_the_pool_is_imported_again() {
    let (pool, dev) = mem_pool(64 * MIB);
    pool.create_volume("v", BLOCKS * 4096, no_props())
        .expect("create");
    let v = pool.open_volume("v").expect("open");
    for b in 0..BLOCKS {
        write(&v, b, &tagged(1, b));
    }
    flush(&v);
    pool.sync_maintenance().expect("checkpoint");

    // The device fails a write or the flush: the client is told.
    dev.set_fail_writes(true);
    let w = block_on(v.write(0, Bytes::from(tagged(2, 0)), false));
    let f = block_on(v.flush());
    let failed = w.err().or(f.err()).expect("the write or the flush fails");
    assert!(failed.to_string().contains("on mem:d0 failed"), "{failed}");

    // The device answers again, but nothing is written to it any more.
    dev.set_fail_writes(false);
    let (writes, flushes) = dev.io_counts();
    let e = block_on(v.write(4096, Bytes::from(tagged(3, 1)), false)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Poisoned, "{e}");
    let e = block_on(v.flush()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Poisoned, "{e}");
    let e = pool.sync_maintenance().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Poisoned, "maintenance: {e}");
    let e = pool.snapshot("v", "s").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Poisoned, "snapshot: {e}");
    assert_eq!(
        dev.io_counts(),
        (writes, flushes),
        "no write or flush reached the device"
    );
    let st = pool.status();
    assert_eq!(st.state, "SUSPENDED", "{st:?}");
    assert!(st
        .error
        .as_deref()
        .is_some_and(|e| e.contains("stopped accepting writes")));

    // Reads go on: every acknowledged block is there.
    verify(&pool, 1);
    drop(v);
    let _ = pool.close();
    drop(pool);

    // Imported again, the pool has every acknowledged byte and writes.
    let pool = reopen(&dev);
    verify(&pool, 1);
    let v = pool.open_volume("v").expect("open");
    for b in 0..BLOCKS {
        write(&v, b, &tagged(4, b));
    }
    flush(&v);
    drop(v);
    verify(&pool, 4);
    pool.sync_maintenance().expect("maintenance");
    assert_clean(&pool);
}

/// A mirror absorbs one member's failed writes (the member is faulted,
/// the pool goes on); losing both poisons it.
#[test]
fn a_mirror_is_poisoned_only_when_it_loses_both_members() {
    let (pool, devs) = group_with(GroupKind::Mirror, 2, cfg());
    pool.create_volume("v", BLOCKS * 4096, no_props())
        .expect("create");
    let v = pool.open_volume("v").expect("open");
    devs[1].set_fail_writes(true);
    for b in 0..BLOCKS {
        write(&v, b, &tagged(1, b));
    }
    flush(&v);
    assert_eq!(pool.status().state, "DEGRADED");
    pool.sync_maintenance()
        .expect("a degraded mirror checkpoints");
    devs[0].set_fail_writes(true);
    let w = block_on(v.write(0, Bytes::from(tagged(2, 0)), false));
    let f = block_on(v.flush());
    assert!(
        w.is_err() || f.is_err(),
        "the last member's failure reaches the client"
    );
    devs[0].set_fail_writes(false);
    let e = pool.sync_maintenance().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Poisoned, "{e}");
    assert_eq!(pool.status().state, "SUSPENDED");
    drop(v);
    let _ = pool.close();
    drop(pool);
    // Both devices answer again: imported, the pool has every
    // acknowledged byte (d1 is resilvered from d0).
    devs[1].set_fail_writes(false);
    let pool = import(&devs);
    pool.wait_scans();
    assert_eq!(pool.status().state, "ONLINE");
    verify(&pool, 1);
    assert_clean(&pool);
}
