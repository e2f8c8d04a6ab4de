//! Basic volume behaviour through the engine API.

mod common;

use common::*;

#[test]
fn write_read_overwrite_and_holes() {
    let (pool, _dev) = mem_pool(64 * MIB);
    pool.create_volume("v", 16 * MIB, no_props()).unwrap();
    let v = pool.open_volume("v").unwrap();
    assert_eq!(
        read(&v, 0, 4),
        vec![0u8; 4 * 4096],
        "unwritten reads as zeroes"
    );
    write(&v, 1, &block(0xaa));
    write(&v, 30, &[block(1), block(2), block(3), block(4)].concat()); // crosses a chunk
    assert_eq!(read(&v, 1, 1), block(0xaa));
    assert_eq!(read(&v, 0, 1), block(0));
    assert_eq!(
        read(&v, 30, 4),
        [block(1), block(2), block(3), block(4)].concat()
    );
    write(&v, 31, &block(9));
    assert_eq!(
        read(&v, 30, 4),
        [block(1), block(9), block(3), block(4)].concat()
    );
    let st = futures::executor::block_on(v.block_status(0, 64 * 4096)).unwrap();
    assert!(st[0].hole && st[0].zero, "block 0 is a hole: {st:?}");
    assert!(!st[1].hole && !st[1].zero);
    assert_eq!(pool.volume_info("v").unwrap().referenced, 5 * 4096);
    assert_clean(&pool);
}

#[test]
fn out_of_range_requests_fail_cleanly() {
    let (pool, _dev) = mem_pool(64 * MIB);
    pool.create_volume("v", MIB, no_props()).unwrap();
    let v = pool.open_volume("v").unwrap();
    let e = futures::executor::block_on(v.read(MIB, 4096)).unwrap_err();
    assert_eq!(e.kind(), edgevol_engine::ErrorKind::InvalidArgument);
    let e = futures::executor::block_on(v.read(MIB - 100, 101)).unwrap_err();
    assert_eq!(e.kind(), edgevol_engine::ErrorKind::InvalidArgument);
    let e = futures::executor::block_on(v.write(MIB - 1, vec![0u8; 2].into(), false)).unwrap_err();
    assert_eq!(e.kind(), edgevol_engine::ErrorKind::InvalidArgument);
    let e = futures::executor::block_on(v.write(MIB - 4096, vec![0u8; 8192].into(), false))
        .unwrap_err();
    assert_eq!(e.kind(), edgevol_engine::ErrorKind::InvalidArgument);
    assert!(pool.open_volume("nope").is_err());
    write(&v, 0, &block(1));
    assert_eq!(read(&v, 0, 1), block(1), "the pool still works");
}

#[test]
fn snapshot_rollback_and_roll_forward() {
    let (pool, _dev) = mem_pool(64 * MIB);
    pool.create_volume("v", 16 * MIB, no_props()).unwrap();
    let v = pool.open_volume("v").unwrap();
    write(&v, 0, &block(1));
    pool.snapshot("v", "s1").unwrap();
    write(&v, 0, &block(2));
    write(&v, 5, &block(5));
    pool.snapshot("v", "s2").unwrap();
    write(&v, 0, &block(3));
    let s1 = pool.open_volume("v@s1").unwrap();
    assert!(s1.read_only());
    assert_eq!(read(&s1, 0, 1), block(1));
    assert_eq!(read(&s1, 5, 1), block(0));
    let auto = pool
        .rollback("v", "s1")
        .unwrap()
        .expect("changed head is kept");
    assert_eq!(read(&v, 0, 1), block(1));
    assert_eq!(read(&v, 5, 1), block(0));
    // Roll forward to s2, then back to the abandoned head.
    assert_eq!(
        pool.rollback("v", "s2").unwrap(),
        None,
        "nothing changed since the rollback"
    );
    assert_eq!(read(&v, 0, 1), block(2));
    assert_eq!(read(&v, 5, 1), block(5));
    pool.rollback("v", &auto).unwrap();
    assert_eq!(read(&v, 0, 1), block(3));
    let snaps = pool.snapshots("v").unwrap();
    let names: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["s1", "s2", auto.as_str()]);
    assert_eq!(snaps[1].parent.as_deref(), Some("s1"));
    assert_clean(&pool);
}

#[test]
fn clone_is_independent_and_promote_frees_origin() {
    let (pool, _dev) = mem_pool(64 * MIB);
    pool.create_volume("v", 4 * MIB, no_props()).unwrap();
    let v = pool.open_volume("v").unwrap();
    for i in 0..40 {
        write(&v, i, &tagged(1, i));
    }
    pool.snapshot("v", "base").unwrap();
    let c = pool.clone_snapshot("v", "base", "c").unwrap();
    assert_eq!(c.origin.as_deref(), Some("v@base"));
    assert_eq!(c.referenced, 40 * 4096);
    let cv = pool.open_volume("c").unwrap();
    write(&cv, 3, &tagged(2, 3));
    write(&v, 4, &tagged(3, 4));
    assert_eq!(read(&cv, 3, 1), tagged(2, 3));
    assert_eq!(
        read(&cv, 4, 1),
        tagged(1, 4),
        "clone does not see origin's later writes"
    );
    assert_eq!(
        read(&v, 3, 1),
        tagged(1, 3),
        "origin does not see the clone's writes"
    );
    assert!(
        pool.destroy_volume("v", false).is_err(),
        "origin with a clone is refused"
    );
    pool.promote("c").unwrap();
    pool.destroy_volume("v", false).unwrap();
    for i in 0..40 {
        let want = if i == 3 { tagged(2, 3) } else { tagged(1, i) };
        assert_eq!(read(&cv, i, 1), want, "block {i}");
    }
    pool.sync_maintenance().unwrap();
    assert_clean(&pool);
}

#[test]
fn trim_frees_space_and_reads_zero() {
    let (pool, _dev) = mem_pool(64 * MIB);
    pool.create_volume("v", 16 * MIB, no_props()).unwrap();
    let v = pool.open_volume("v").unwrap();
    let data: Vec<u8> = (0..256).flat_map(|i| tagged(7, i)).collect();
    write(&v, 0, &data);
    let before = pool.status().data;
    // Stored bytes: at most the logical size (the pool default is lz4).
    assert!(before > 0 && before <= 256 * 4096, "{before}");
    trim(&v, 0, 256);
    assert_eq!(read(&v, 0, 256), vec![0u8; 256 * 4096]);
    assert_eq!(pool.status().data, 0, "trimmed records are freed");
    assert_eq!(pool.volume_info("v").unwrap().referenced, 0);
    let st = futures::executor::block_on(v.block_status(0, 256 * 4096)).unwrap();
    assert_eq!(st.len(), 1);
    assert!(st[0].hole);
    assert_clean(&pool);
}

#[test]
fn clean_close_and_crash_recovery() {
    let (pool, dev) = mem_pool(64 * MIB);
    pool.create_volume("v", 16 * MIB, no_props()).unwrap();
    let v = pool.open_volume("v").unwrap();
    write(&v, 0, &block(1));
    pool.snapshot("v", "s").unwrap();
    write(&v, 0, &block(2));
    write(&v, 1, &block(3));
    flush(&v);
    drop(v);
    pool.close().unwrap();
    let pool = reopen(&dev);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read(&v, 0, 2), [block(2), block(3)].concat());
    assert_eq!(read(&pool.open_volume("v@s").unwrap(), 0, 1), block(1));
    // Crash: flushed writes survive, the rest may or may not.
    write(&v, 2, &block(4));
    flush(&v);
    write(&v, 3, &block(5));
    drop(v);
    pool.abandon();
    let pool = reopen(&dev);
    let v = pool.open_volume("v").unwrap();
    assert_eq!(read(&v, 0, 3), [block(2), block(3), block(4)].concat());
    let b3 = read(&v, 3, 1);
    assert!(b3 == block(5) || b3 == block(0));
    assert_clean(&pool);
}

#[test]
fn a_corrupt_label_copy_is_survived_and_two_are_refused() {
    use edgevol_engine::layout::{LABEL_A_OFFSET, LABEL_B_OFFSET};
    let (pool, dev) = mem_pool(64 * MIB);
    pool.create_volume("v", 4 * MIB, no_props())
        .expect("create");
    let v = pool.open_volume("v").expect("open");
    write(&v, 3, &block(0x33));
    flush(&v);
    pool.close().expect("close");

    // One copy rotten (header and the start of the body; the rest of a
    // label's 16 KiB is padding): the other one imports the pool.
    dev.corrupt(LABEL_A_OFFSET + 16, 48);
    let pool = reopen(&dev);
    assert_eq!(
        read(&pool.open_volume("v").expect("open"), 3, 1),
        block(0x33)
    );
    pool.close().expect("close");

    // Both rotten: a clear error, not a panic or an empty pool. (Import
    // may have rewritten copy A, making it equal to B again: rot it anew;
    // a second flip of the same bytes would repair it.)
    let img = dev.snapshot_image();
    if img[16..64] == img[LABEL_B_OFFSET as usize + 16..LABEL_B_OFFSET as usize + 64] {
        dev.corrupt(LABEL_A_OFFSET + 16, 48);
    }
    dev.corrupt(LABEL_B_OFFSET + 16, 48);
    let err = match edgevol_engine::Pool::open(
        vec![dev.clone() as std::sync::Arc<dyn edgevol_engine::device::Device>],
        cfg(),
    ) {
        Ok(_) => panic!("a device without a valid label imported"),
        Err(e) => e,
    };
    assert!(
        err.to_string().contains("label"),
        "the error should say the label is bad: {err}"
    );
}
