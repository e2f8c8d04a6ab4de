//! Mirror and parity groups driven by fault-injecting memory devices:
//! corrupted copies are healed on read and by scrub, failed devices are
//! faulted while the pool keeps serving, replaced devices are resilvered,
//! and a pool missing a device imports DEGRADED with all its data.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use edgevol_engine::device::{Device, MemDevice};
use edgevol_engine::format::label::GroupKind;
use edgevol_engine::Pool;
use rand::{Rng, SeedableRng};

const BLOCKS: u64 = 2048; // 8 MiB volume

fn group(kind: GroupKind, n: usize) -> (Pool, Vec<Arc<MemDevice>>) {
    group_with(kind, n, cfg())
}

/// Fill the volume with tagged blocks in writes of 1..16 blocks; returns
/// the tag of every block.
fn fill(pool: &Pool, seed: u64) -> Vec<u64> {
    let mut props = BTreeMap::new();
    props.insert("compression".to_string(), "off".to_string());
    pool.create_volume("v", BLOCKS * 4096, props)
        .expect("volume");
    let v = pool.open_volume("v").expect("open");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut model = vec![0u64; BLOCKS as usize];
    let mut lba = 0;
    while lba < BLOCKS {
        let n = rng.random_range(1..16u64).min(BLOCKS - lba);
        let data: Vec<u8> = (lba..lba + n)
            .flat_map(|b| {
                model[b as usize] = seed * 1_000_000 + b;
                tagged(model[b as usize], b)
            })
            .collect();
        write(&v, lba, &data);
        lba += n;
    }
    flush(&v);
    pool.sync_maintenance().expect("maintenance");
    model
}

fn verify(pool: &Pool, model: &[u64]) {
    let v = pool.open_volume("v").expect("open");
    let all = read(&v, 0, BLOCKS);
    for (b, t) in model.iter().enumerate() {
        assert!(
            all[b * 4096..(b + 1) * 4096] == tagged(*t, b as u64)[..],
            "block {b} reads wrong"
        );
    }
}

/// Flip bytes all over the data area of `dev` (every 7th 4 KiB block).
fn corrupt_widely(dev: &MemDevice) {
    let mut off = 1 << 20;
    while off + 4096 < dev.len() {
        dev.corrupt(off + 100, 8);
        off += 7 * 4096;
    }
}

fn device_counter(pool: &Pool, i: usize, f: impl Fn(&edgevol_engine::DeviceStatus) -> u64) -> u64 {
    f(&pool.status().devices[i])
}

fn heal_and_scrub(kind: GroupKind, n: usize) {
    let (pool, devs) = group(kind, n);
    let model = fill(&pool, 1);
    corrupt_widely(&devs[1]);
    // Every read returns the right bytes, healing as it goes.
    verify(&pool, &model);
    let found = device_counter(&pool, 1, |d| d.checksum_errors);
    assert!(
        found > 0,
        "no checksum error counted on the corrupted device"
    );
    // Scrub finds and repairs the rest (other copies, parity).
    pool.scrub_start().expect("scrub");
    pool.wait_scans();
    let st = pool.status();
    let scrub = st.scrub.expect("scrub status");
    assert_eq!(scrub.state, "finished", "{scrub:?}");
    assert!(scrub.unrecoverable.is_empty(), "{scrub:?}");
    assert!(scrub.done_bytes >= BLOCKS * 4096, "{scrub:?}");
    // A second scrub finds nothing more to repair.
    pool.scrub_start().expect("scrub");
    pool.wait_scans();
    let again = pool.status().scrub.expect("scrub status");
    assert_eq!(again.repaired_bytes, 0, "{again:?}");
    assert_clean(&pool);
    // Now the *other* side can fail entirely: the repaired copy serves.
    if kind == GroupKind::Mirror {
        devs[0].set_fail_reads(true);
        verify(&pool, &model);
        devs[0].set_fail_reads(false);
    }
    verify(&pool, &model);
}

#[test]
fn mirror_heals_bad_copies_on_read_and_scrub() {
    heal_and_scrub(GroupKind::Mirror, 2);
}

#[test]
fn parity1_heals_bad_columns_on_read_and_scrub() {
    heal_and_scrub(GroupKind::Parity(1), 3);
}

#[test]
fn parity2_heals_two_bad_members() {
    let (pool, devs) = group(GroupKind::Parity(2), 4);
    let model = fill(&pool, 2);
    corrupt_widely(&devs[0]);
    corrupt_widely(&devs[3]);
    verify(&pool, &model);
    pool.scrub_start().expect("scrub");
    pool.wait_scans();
    let s = pool.status().scrub.expect("scrub");
    assert!(s.unrecoverable.is_empty(), "{s:?}");
    assert_clean(&pool);
    verify(&pool, &model);
}

fn fail_write_replace(kind: GroupKind, n: usize, fail: &[usize]) {
    let (pool, devs) = group(kind, n);
    let model = fill(&pool, 3);
    for &f in fail {
        devs[f].set_fail_writes(true);
        devs[f].set_fail_reads(true);
    }
    // Writes and reads go on without an error.
    let v = pool.open_volume("v").expect("open");
    let mut model = model;
    for b in (0..BLOCKS).step_by(3) {
        model[b as usize] = 9_000_000 + b;
        write(&v, b, &tagged(model[b as usize], b));
    }
    flush(&v);
    verify(&pool, &model);
    let st = pool.status();
    assert_eq!(st.state, "DEGRADED", "{st:?}");
    for &f in fail {
        assert_eq!(st.devices[f].state, "FAULTED", "{:?}", st.devices[f]);
    }
    // Replace, resilver, and the pool is whole again.
    let mut news = Vec::new();
    for &f in fail {
        let new = Arc::new(MemDevice::new(format!("new{f}"), 40 * MIB));
        news.push(new.clone());
        pool.replace_with(&format!("mem:d{f}"), new)
            .expect("replace");
        pool.wait_scans();
        let r = pool.status().resilver.expect("resilver");
        assert_eq!(r.state, "finished", "{r:?}");
    }
    let st = pool.status();
    assert_eq!(st.state, "ONLINE", "{st:?}");
    // The new devices alone (with the survivors) hold everything: fail
    // some *other* member now.
    let other = (0..n).find(|i| !fail.contains(i)).expect("a survivor");
    devs[other].set_fail_reads(true);
    verify(&pool, &model);
    assert_clean(&pool);
    pool.close().expect("close");
    drop(pool);
    // The labels name the new devices: the pool imports from them (and
    // the survivors) alone, ONLINE, with everything.
    devs[other].set_fail_reads(false);
    let current: Vec<Arc<dyn Device>> = (0..n)
        .filter(|i| !fail.contains(i))
        .map(|i| devs[i].clone() as Arc<dyn Device>)
        .chain(news.iter().map(|d| d.clone() as Arc<dyn Device>))
        .collect();
    let pool = Pool::open(current, cfg()).expect("import after replace");
    pool.wait_scans();
    let st = pool.status();
    assert_eq!(st.state, "ONLINE", "{st:?}");
    verify(&pool, &model);
    assert_clean(&pool);
}

#[test]
fn mirror_survives_a_failed_device_and_resilvers_a_replacement() {
    fail_write_replace(GroupKind::Mirror, 2, &[1]);
}

#[test]
fn parity1_survives_a_failed_device_and_resilvers_a_replacement() {
    fail_write_replace(GroupKind::Parity(1), 4, &[2]);
}

#[test]
fn parity2_survives_two_failed_devices() {
    fail_write_replace(GroupKind::Parity(2), 5, &[0, 3]);
}

#[test]
fn a_pool_missing_a_device_imports_degraded() {
    let (pool, devs) = group(GroupKind::Parity(1), 3);
    let model = fill(&pool, 4);
    pool.close().expect("close");
    drop(pool);
    let some: Vec<Arc<dyn Device>> = vec![devs[0].clone(), devs[2].clone()];
    let pool = Pool::open(some, cfg()).expect("degraded import");
    assert_eq!(pool.status().state, "DEGRADED");
    verify(&pool, &model);
    // Two missing is one too many for parity1.
    pool.close().expect("close");
    drop(pool);
    let err = Pool::open(vec![devs[0].clone() as Arc<dyn Device>], cfg())
        .err()
        .expect("must not import");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn a_power_cut_leaves_mirror_copies_consistent() {
    let (pool, devs) = group(GroupKind::Mirror, 2);
    let model = fill(&pool, 5);
    let v = pool.open_volume("v").expect("open");
    // Unflushed writes, then the power goes.
    for b in 0..64 {
        write(&v, b, &tagged(7, b));
    }
    drop(v);
    for d in &devs {
        d.power_cut();
    }
    pool.abandon();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for d in &devs {
        d.restore_power(edgevol_engine::device::CutPolicy::CHAOS, &mut rng);
    }
    let pool = Pool::open(
        devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect(),
        cfg(),
    )
    .expect("import");
    // Each block holds its flushed value or the later write.
    let v = pool.open_volume("v").expect("open");
    let all = read(&v, 0, BLOCKS);
    for (b, t) in model.iter().enumerate() {
        let got = &all[b * 4096..(b + 1) * 4096];
        assert!(
            got == tagged(*t, b as u64).as_slice()
                || (b < 64 && got == tagged(7, b as u64).as_slice()),
            "block {b}"
        );
    }
    // And both sides agree on everything referenced: a scrub (which
    // reads every copy) has nothing to repair — replay resynced the copies.
    pool.scrub_start().expect("scrub");
    pool.wait_scans();
    let s = pool.status().scrub.expect("scrub");
    assert_eq!((s.repaired_bytes, s.unrecoverable.len()), (0, 0), "{s:?}");
    assert_clean(&pool);
}

#[test]
fn a_device_that_missed_writes_is_resilvered_at_import() {
    let (pool, devs) = group(GroupKind::Mirror, 2);
    let mut model = fill(&pool, 6);
    // d1 fails its writes: FAULTED; the pool goes on writing to d0.
    devs[1].set_fail_writes(true);
    let v = pool.open_volume("v").expect("open");
    for b in (0..BLOCKS).step_by(2) {
        model[b as usize] = 8_000_000 + b;
        write(&v, b, &tagged(model[b as usize], b));
    }
    flush(&v);
    drop(v);
    assert_eq!(pool.status().devices[1].state, "FAULTED");
    pool.close().expect("close");
    drop(pool);
    // The device comes back (a loose cable): it holds old data, and it
    // missed the newest checkpoints, so import resilvers it.
    devs[1].set_fail_writes(false);
    let pool = Pool::open(
        devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect(),
        cfg(),
    )
    .expect("import");
    pool.wait_scans();
    let st = pool.status();
    assert_eq!(
        st.resilver.as_ref().map(|r| r.state.as_str()),
        Some("finished"),
        "{st:?}"
    );
    assert_eq!(st.state, "ONLINE", "{st:?}");
    // Now d1 alone holds everything.
    devs[0].set_fail_reads(true);
    verify(&pool, &model);
    assert_clean(&pool);
}

/// A `pool add` that reached the new devices and one old member's label
/// only, imported without that member: the add is undone (the new devices
/// are left out) and every member's label says so at once, so the member
/// that saw the add cannot bring it back later, naming devices the pool no
/// longer lists. No data is lost on the way.
#[test]
fn an_add_undone_at_import_stays_undone() {
    use edgevol_engine::buf::AlignedBuf;
    let (pool, devs) = group(GroupKind::Mirror, 2);
    let model = fill(&pool, 6);
    // The labels of member b before the add.
    let label_area = |d: &MemDevice| {
        let mut b = AlignedBuf::zeroed(32 << 10);
        d.read_at(b.as_mut_slice(), 0).expect("read labels");
        b
    };
    let b_before = label_area(&devs[1]);
    let new: Vec<Arc<MemDevice>> = (0..2)
        .map(|i| Arc::new(MemDevice::new(format!("n{i}"), 40 * MIB)))
        .collect();
    let add_new = |pool: &Pool| {
        pool.add_group(
            GroupKind::Mirror,
            new.iter().map(|d| d.clone() as Arc<dyn Device>).collect(),
            false,
        )
        .expect("add the new mirror");
        assert_eq!(pool.status().groups.len(), 2);
    };
    add_new(&pool);
    pool.close().expect("close");
    drop(pool);
    // As if the add's label write never reached b.
    devs[1]
        .write_at(b_before.as_slice(), 0)
        .expect("restore b's labels");
    devs[1].flush().expect("flush");
    // a is missing: b and the new devices carry the evidence.
    let pool = Pool::open(
        vec![
            devs[1].clone() as Arc<dyn Device>,
            new[0].clone(),
            new[1].clone(),
        ],
        cfg(),
    )
    .expect("import without a");
    let st = pool.status();
    assert_eq!(st.groups.len(), 1, "the add is undone: {st:?}");
    assert_eq!(st.state, "DEGRADED");
    verify(&pool, &model);
    pool.close().expect("close");
    drop(pool);
    // a is back, the new devices are not offered: the pool imports with
    // its one group (a is resilvered from b).
    let pool = Pool::open(
        vec![devs[0].clone() as Arc<dyn Device>, devs[1].clone()],
        cfg(),
    )
    .expect("import with a back");
    pool.wait_scans();
    let st = pool.status();
    assert_eq!(st.groups.len(), 1, "{st:?}");
    assert_eq!(st.state, "ONLINE", "{st:?}");
    verify(&pool, &model);
    assert!(pool.check().expect("check").errors.is_empty());
    // The undone add's devices can be added again.
    add_new(&pool);
    verify(&pool, &model);
}

/// The health probe faults a mirror member whose device went away while
/// nothing reads or writes it, and the pool says DEGRADED at once; the
/// data is whole on the other side.
#[test]
fn health_probe_faults_a_vanished_member_without_io() {
    let config = edgevol_engine::PoolConfig {
        background: true,
        health_interval: std::time::Duration::from_millis(50),
        ..cfg()
    };
    let (pool, devs) = group_with(GroupKind::Mirror, 2, config);
    let model = fill(&pool, 11);
    assert_eq!(pool.status().state, "ONLINE");
    devs[1].set_removed(true);
    let t = std::time::Instant::now();
    let st = loop {
        let st = pool.status();
        if st.devices[1].state != "ONLINE" {
            break st;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "still ONLINE: {st:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(st.devices[1].state, "FAULTED", "{st:?}");
    assert_eq!(st.state, "DEGRADED", "{st:?}");
    let why = st.devices[1].reason.clone().unwrap_or_default();
    assert!(
        why.contains("health probe") && why.contains("removed"),
        "{why}"
    );
    assert_eq!(st.devices[0].state, "ONLINE", "{st:?}");
    verify(&pool, &model);
    pool.close().expect("close");
}

/// A scan's status is `running` when the call that started it returns,
/// and the scan slot is free once the status shows the scan ended: a
/// caller that polls the status can start the next scan at once.
#[test]
fn scan_states_say_what_runs() {
    let (pool, _devs) = group(GroupKind::Mirror, 2);
    let model = fill(&pool, 12);
    for round in 0..20 {
        pool.scrub_start().expect("scrub");
        let s = pool.status().scrub.expect("a scrub status at once");
        assert!(
            s.state == "running" || s.state == "finished",
            "round {round}: {s:?}"
        );
        while pool.status().scrub.is_some_and(|s| s.state == "running") {
            std::thread::yield_now();
        }
    }
    let new = Arc::new(MemDevice::new("new", 40 * MIB));
    pool.replace_with("mem:d1", new).expect("replace");
    let r = pool.status().resilver.expect("a resilver status at once");
    assert!(r.state == "running" || r.state == "finished", "{r:?}");
    while pool.status().resilver.is_some_and(|s| s.state == "running") {
        std::thread::yield_now();
    }
    pool.scrub_start()
        .expect("a scrub right after the resilver ended");
    pool.wait_scans();
    let s = pool.status().scrub.expect("scrub");
    assert_eq!(s.state, "finished", "{s:?}");
    verify(&pool, &model);
    pool.close().expect("close");
}
