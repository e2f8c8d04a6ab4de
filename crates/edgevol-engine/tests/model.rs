//! Model-based test of the engine: random operation sequences, including
//! power cuts at random points, checked against an in-memory model.
//!
//! Invariants checked (DESIGN.md):
//! 1. after a crash every block reads its last flushed value or a value
//!    written later; flushed and FUA writes always survive;
//! 3. unwritten and trimmed blocks read as zeroes; no volume sees another's data;
//! 4. snapshots are immutable and snapshot/clone/rollback/destroy are atomic.
//!
//! Plus: `pool check` is clean after every recovery and at the end.
//!
//! Each block's content encodes (tag, lba): a misplaced block cannot pass.
//! Reproduce a failure with the seed proptest prints; run longer with
//! `PROPTEST_CASES=2000 cargo test -p edgevol-engine --test model`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use edgevol_engine::device::{CutPolicy, MemDevice};
use edgevol_engine::{ErrorKind, Pool, Volume};
use proptest::prelude::*;
use rand::SeedableRng;

const VOL_BLOCKS: u64 = 512;

#[derive(Debug, Clone)]
enum Op {
    Write {
        vol: usize,
        lba: u64,
        n: u64,
        fua: bool,
    },
    Trim {
        vol: usize,
        lba: u64,
        n: u64,
    },
    Zero {
        vol: usize,
        lba: u64,
        n: u64,
        no_hole: bool,
    },
    Flush,
    Snapshot {
        vol: usize,
    },
    Rollback {
        vol: usize,
        snap: usize,
    },
    Clone {
        vol: usize,
        snap: usize,
    },
    DestroySnapshot {
        vol: usize,
        snap: usize,
    },
    DestroyVolume {
        vol: usize,
    },
    Resize {
        vol: usize,
        blocks: u64,
    },
    Promote {
        vol: usize,
    },
    Maintain {
        clean: bool,
    },
    Crash {
        policy: u8,
        seed: u64,
    },
    Read {
        vol: usize,
        lba: u64,
        n: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let vol = 0usize..8;
    let lba = 0u64..VOL_BLOCKS;
    prop_oneof![
        30 => (vol.clone(), lba.clone(), 1u64..48, any::<bool>()).prop_map(|(vol, lba, n, f)| Op::Write { vol, lba, n, fua: f && lba % 5 == 0 }),
        5 => (vol.clone(), lba.clone(), 1u64..200).prop_map(|(vol, lba, n)| Op::Trim { vol, lba, n }),
        3 => (vol.clone(), lba.clone(), 1u64..100, any::<bool>()).prop_map(|(vol, lba, n, no_hole)| Op::Zero { vol, lba, n, no_hole }),
        6 => Just(Op::Flush),
        6 => vol.clone().prop_map(|vol| Op::Snapshot { vol }),
        3 => (vol.clone(), 0usize..8).prop_map(|(vol, snap)| Op::Rollback { vol, snap }),
        2 => (vol.clone(), 0usize..8).prop_map(|(vol, snap)| Op::Clone { vol, snap }),
        2 => (vol.clone(), 0usize..8).prop_map(|(vol, snap)| Op::DestroySnapshot { vol, snap }),
        1 => vol.clone().prop_map(|vol| Op::DestroyVolume { vol }),
        1 => (vol.clone(), 64u64..VOL_BLOCKS).prop_map(|(vol, blocks)| Op::Resize { vol, blocks }),
        1 => vol.clone().prop_map(|vol| Op::Promote { vol }),
        2 => any::<bool>().prop_map(|clean| Op::Maintain { clean }),
        3 => (0u8..3, any::<u64>()).prop_map(|(policy, seed)| Op::Crash { policy, seed }),
        6 => (vol, lba, 1u64..64).prop_map(|(vol, lba, n)| Op::Read { vol, lba, n }),
    ]
}

/// What a block may read as.
#[derive(Debug, Clone, Default)]
struct Cell {
    /// Value as of the last flush (0 = zeroes).
    durable: u64,
    /// Values written since, oldest first.
    pending: Vec<u64>,
}

impl Cell {
    fn latest(&self) -> u64 {
        self.pending.last().copied().unwrap_or(self.durable)
    }
    fn set(&mut self, v: u64) {
        self.pending.push(v);
    }
    fn settle(&mut self) {
        self.durable = self.latest();
        self.pending.clear();
    }
}

#[derive(Debug, Clone, Default)]
struct MVol {
    blocks: u64,
    cells: BTreeMap<u64, Cell>,
    snaps: Vec<(String, BTreeMap<u64, u64>, u64)>,
    origin: Option<String>,
    dirty: bool,
    dirty_known: bool,
    /// The snapshot the head equals while not dirty.
    clean_as: Option<String>,
}

impl MVol {
    fn latest(&self) -> BTreeMap<u64, u64> {
        self.cells
            .iter()
            .map(|(l, c)| (*l, c.latest()))
            .filter(|(_, v)| *v != 0)
            .collect()
    }
    fn from_image(blocks: u64, img: &BTreeMap<u64, u64>) -> MVol {
        MVol {
            blocks,
            cells: img
                .iter()
                .map(|(l, v)| {
                    (
                        *l,
                        Cell {
                            durable: *v,
                            pending: vec![],
                        },
                    )
                })
                .collect(),
            dirty_known: true,
            ..MVol::default()
        }
    }
}

struct Harness {
    dev: Arc<MemDevice>,
    pool: Option<Pool>,
    vols: BTreeMap<String, MVol>,
    next_tag: u64,
    next_name: u64,
}

fn expect_block(tag: u64, lba: u64) -> Vec<u8> {
    if tag == 0 {
        vec![0u8; 4096]
    } else {
        tagged(tag, lba)
    }
}

impl Harness {
    fn pool(&self) -> &Pool {
        self.pool.as_ref().expect("pool open")
    }

    fn vol_name(&self, i: usize) -> Option<String> {
        if self.vols.is_empty() {
            return None;
        }
        self.vols.keys().nth(i % self.vols.len()).cloned()
    }

    fn open(&self, name: &str) -> Volume {
        self.pool().open_volume(name).expect("open volume")
    }

    /// Every control op writes a checkpoint, which flushes the devices:
    /// everything written so far is durable.
    fn settle_all(&mut self) {
        for v in self.vols.values_mut() {
            for c in v.cells.values_mut() {
                c.settle();
            }
        }
    }

    fn depends_on(&self, who: &str, on: &str) -> bool {
        let mut cur = self.vols.get(who).and_then(|v| v.origin.clone());
        let mut guard = 0;
        while let Some(o) = cur {
            if o == on {
                return true;
            }
            cur = self.vols.get(&o).and_then(|v| v.origin.clone());
            guard += 1;
            if guard > 100 {
                break;
            }
        }
        false
    }

    fn verify_volume(&self, name: &str, after_crash: bool) -> Result<(), TestCaseError> {
        let m = &self.vols[name];
        let v = self.open(name);
        prop_assert_eq!(v.size(), m.blocks * 4096);
        let got =
            flatten(futures::executor::block_on(v.read(0, m.blocks * 4096)).expect("read all"));
        for lba in 0..m.blocks {
            let b = &got[(lba * 4096) as usize..((lba + 1) * 4096) as usize];
            let cell = m.cells.get(&lba).cloned().unwrap_or_default();
            let ok = if after_crash {
                std::iter::once(cell.durable)
                    .chain(cell.pending.iter().copied())
                    .any(|t| b == expect_block(t, lba).as_slice())
            } else {
                b == expect_block(cell.latest(), lba).as_slice()
            };
            prop_assert!(
                ok,
                "volume {} block {} holds unexpected data (cell {:?}, crash {})",
                name,
                lba,
                cell,
                after_crash
            );
        }
        for (sname, img, sblocks) in &m.snaps {
            let s = self.open(&format!("{name}@{sname}"));
            prop_assert_eq!(
                s.size(),
                sblocks * 4096,
                "snapshot {}@{} keeps its size",
                name,
                sname
            );
            let got =
                flatten(futures::executor::block_on(s.read(0, s.size())).expect("read snapshot"));
            for lba in 0..(s.size() / 4096) {
                let b = &got[(lba * 4096) as usize..((lba + 1) * 4096) as usize];
                let want = expect_block(img.get(&lba).copied().unwrap_or(0), lba);
                prop_assert!(
                    b == want.as_slice(),
                    "snapshot {}@{} block {} changed",
                    name,
                    sname,
                    lba
                );
            }
        }
        Ok(())
    }

    /// After a crash, adopt what the pool actually holds as the new truth.
    fn adopt_actual(&mut self) {
        let names: Vec<String> = self.vols.keys().cloned().collect();
        for name in names {
            let v = self.open(&name);
            let blocks = self.vols[&name].blocks;
            let got = flatten(futures::executor::block_on(v.read(0, blocks * 4096)).expect("read"));
            let m = self.vols.get_mut(&name).expect("vol");
            for lba in 0..blocks {
                let b = &got[(lba * 4096) as usize..((lba + 1) * 4096) as usize];
                let cell = m.cells.entry(lba).or_default();
                let actual = std::iter::once(cell.durable)
                    .chain(cell.pending.iter().copied())
                    .find(|t| b == expect_block(*t, lba).as_slice())
                    .unwrap_or(0);
                *cell = Cell {
                    durable: actual,
                    pending: vec![],
                };
            }
            m.dirty_known = false;
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op.clone() {
            Op::Write { vol, lba, n, fua } => {
                let Some(name) = self.vol_name(vol) else {
                    return Ok(());
                };
                let blocks = self.vols[&name].blocks;
                let lba = lba % blocks;
                let n = n.min(blocks - lba);
                let mut data = Vec::with_capacity((n * 4096) as usize);
                let mut tags = Vec::new();
                for i in 0..n {
                    self.next_tag += 1;
                    tags.push(self.next_tag);
                    data.extend_from_slice(&tagged(self.next_tag, lba + i));
                }
                let v = self.open(&name);
                futures::executor::block_on(v.write(lba * 4096, Bytes::from(data), fua))
                    .expect("write");
                let m = self.vols.get_mut(&name).expect("vol");
                for (i, t) in tags.into_iter().enumerate() {
                    m.cells.entry(lba + i as u64).or_default().set(t);
                }
                m.dirty = true;
                if fua {
                    self.settle_all();
                }
            }
            Op::Trim { vol, lba, n } | Op::Zero { vol, lba, n, .. } => {
                let Some(name) = self.vol_name(vol) else {
                    return Ok(());
                };
                let blocks = self.vols[&name].blocks;
                let lba = lba % blocks;
                let n = n.min(blocks - lba);
                let v = self.open(&name);
                let r = match op {
                    Op::Zero { no_hole, .. } => futures::executor::block_on(v.write_zeroes(
                        lba * 4096,
                        n * 4096,
                        *no_hole,
                        false,
                    )),
                    _ => futures::executor::block_on(v.trim(lba * 4096, n * 4096, false)),
                };
                r.expect("trim");
                let m = self.vols.get_mut(&name).expect("vol");
                for x in lba..lba + n {
                    m.cells.entry(x).or_default().set(0);
                }
                m.dirty = true;
            }
            Op::Flush => {
                if let Some(name) = self.vol_name(0) {
                    futures::executor::block_on(self.open(&name).flush()).expect("flush");
                    self.settle_all();
                }
            }
            Op::Snapshot { vol } => {
                let Some(name) = self.vol_name(vol) else {
                    return Ok(());
                };
                self.next_name += 1;
                let s = format!("s{}", self.next_name);
                self.pool().snapshot(&name, &s).expect("snapshot");
                self.settle_all();
                let m = self.vols.get_mut(&name).expect("vol");
                let img = m.latest();
                let b = m.blocks;
                m.snaps.push((s.clone(), img, b));
                m.dirty = false;
                m.dirty_known = true;
                m.clean_as = Some(s);
            }
            Op::Rollback { vol, snap } => {
                let Some(name) = self.vol_name(vol) else {
                    return Ok(());
                };
                let m = &self.vols[&name];
                if m.snaps.is_empty() {
                    return Ok(());
                }
                let (sname, img, sblocks) = m.snaps[snap % m.snaps.len()].clone();
                let auto = self.pool().rollback(&name, &sname).expect("rollback");
                self.settle_all();
                let m = self.vols.get_mut(&name).expect("vol");
                if m.dirty_known {
                    prop_assert_eq!(
                        auto.is_some(),
                        m.dirty,
                        "automatic snapshot iff the head changed"
                    );
                }
                if let Some(a) = auto {
                    let cur = m.latest();
                    let b = m.blocks;
                    m.snaps.push((a, cur, b));
                }
                let blocks = sblocks;
                let snaps = std::mem::take(&mut m.snaps);
                let origin = m.origin.clone();
                *m = MVol::from_image(blocks, &img);
                m.snaps = snaps;
                m.origin = origin;
                m.clean_as = Some(sname);
            }
            Op::Clone { vol, snap } => {
                let Some(name) = self.vol_name(vol) else {
                    return Ok(());
                };
                if self.vols.len() >= 6 {
                    return Ok(());
                }
                let m = &self.vols[&name];
                if m.snaps.is_empty() {
                    return Ok(());
                }
                let (sname, img, blocks) = m.snaps[snap % m.snaps.len()].clone();
                self.next_name += 1;
                let c = format!("c{}", self.next_name);
                self.pool()
                    .clone_snapshot(&name, &sname, &c)
                    .expect("clone");
                self.settle_all();
                let mut cm = MVol::from_image(blocks, &img);
                cm.origin = Some(name);
                self.vols.insert(c, cm);
            }
            Op::DestroySnapshot { vol, snap } => {
                let Some(name) = self.vol_name(vol) else {
                    return Ok(());
                };
                let m = &self.vols[&name];
                if m.snaps.is_empty() {
                    return Ok(());
                }
                let i = snap % m.snaps.len();
                let sname = m.snaps[i].0.clone();
                self.pool()
                    .destroy_snapshot(&name, &sname)
                    .expect("destroy snapshot");
                self.settle_all();
                let m = self.vols.get_mut(&name).expect("vol");
                m.snaps.remove(i);
                if m.clean_as.as_deref() == Some(sname.as_str()) {
                    // The head's content is kept nowhere else now.
                    m.clean_as = None;
                    m.dirty = true;
                }
            }
            Op::DestroyVolume { vol } => {
                let Some(name) = self.vol_name(vol) else {
                    return Ok(());
                };
                if self.vols.len() <= 1 {
                    return Ok(());
                }
                let has_deps = self.vols.keys().any(|k| self.depends_on(k, &name));
                match self.pool().destroy_volume(&name, false) {
                    Ok(()) => {
                        prop_assert!(
                            !has_deps,
                            "destroying {} must be refused: it has clones",
                            name
                        );
                        self.settle_all();
                        self.vols.remove(&name);
                    }
                    Err(e) => {
                        prop_assert!(has_deps, "destroy of {} failed: {}", name, e);
                        prop_assert_eq!(e.kind(), ErrorKind::Busy);
                    }
                }
            }
            Op::Resize { vol, blocks } => {
                let Some(name) = self.vol_name(vol) else {
                    return Ok(());
                };
                self.pool()
                    .resize_volume(&name, blocks * 4096, true)
                    .expect("resize");
                self.settle_all();
                let m = self.vols.get_mut(&name).expect("vol");
                if blocks < m.blocks {
                    m.cells.retain(|l, _| *l < blocks);
                    m.dirty = true;
                }
                m.blocks = blocks;
            }
            Op::Promote { vol } => {
                let Some(name) = self.vol_name(vol) else {
                    return Ok(());
                };
                self.pool().promote(&name).expect("promote");
                self.settle_all();
                // Flatten changes no content: `dirty` is unchanged.
                self.vols.get_mut(&name).expect("vol").origin = None;
            }
            Op::Maintain { clean } => {
                if clean {
                    self.pool().clean_now(4).expect("clean");
                }
                self.pool().sync_maintenance().expect("maintenance");
                self.settle_all();
            }
            Op::Crash { policy, seed } => {
                let pool = self.pool.take().expect("pool");
                self.dev.power_cut();
                pool.abandon();
                let policy = match policy {
                    0 => CutPolicy::DROP_ALL,
                    1 => CutPolicy::KEEP_ALL,
                    _ => CutPolicy::CHAOS,
                };
                self.dev
                    .restore_power(policy, &mut rand::rngs::StdRng::seed_from_u64(seed));
                self.pool = Some(reopen_keyed(&self.dev));
                let names: Vec<String> = self.vols.keys().cloned().collect();
                for n in &names {
                    self.verify_volume(n, true)?;
                }
                self.adopt_actual();
                check_clean(self.pool())?;
            }
            Op::Read { vol, lba, n } => {
                let Some(name) = self.vol_name(vol) else {
                    return Ok(());
                };
                let m = &self.vols[&name];
                let lba = lba % m.blocks;
                let n = n.min(m.blocks - lba);
                let got = read(&self.open(&name), lba, n);
                for i in 0..n {
                    let want =
                        expect_block(m.cells.get(&(lba + i)).map_or(0, Cell::latest), lba + i);
                    prop_assert!(
                        got[(i * 4096) as usize..((i + 1) * 4096) as usize] == want[..],
                        "read of {} block {} is wrong",
                        name,
                        lba + i
                    );
                }
            }
        }
        Ok(())
    }
}

fn model_key() -> edgevol_engine::crypt::Secret {
    edgevol_engine::crypt::Secret::new(vec![0x5c; 32])
}

/// Reopen and load the key of every encrypted volume (prompt keys are not
/// loaded at import).
fn reopen_keyed(dev: &Arc<MemDevice>) -> Pool {
    let pool = reopen(dev);
    for v in pool.volumes() {
        if !pool.key_available(&v.name).expect("key status") {
            pool.load_key(&v.name, Some(model_key())).expect("load key");
        }
    }
    pool
}

fn check_clean(pool: &Pool) -> Result<(), TestCaseError> {
    let r = pool.check().expect("check runs");
    prop_assert!(r.is_clean(), "pool check found problems: {:#?}", r.errors);
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (pool, dev) = mem_pool(96 * MIB);
    pool.create_volume("a", VOL_BLOCKS * 4096, no_props())
        .expect("create");
    // "b" (and its clones) encrypted and zstd-compressed; "a" lz4 (the
    // default): every path of the model runs over packed and sealed records.
    let b_props = std::collections::BTreeMap::from([
        ("compression".to_string(), "zstd".to_string()),
        ("encryption".to_string(), "aes-256-gcm".to_string()),
        ("keyformat".to_string(), "raw".to_string()),
    ]);
    pool.create_volume_with_key("b", VOL_BLOCKS * 4096, b_props, Some(model_key()))
        .expect("create");
    let mut h = Harness {
        dev,
        pool: Some(pool),
        vols: BTreeMap::new(),
        next_tag: 0,
        next_name: 0,
    };
    for n in ["a", "b"] {
        h.vols.insert(
            n.into(),
            MVol {
                blocks: VOL_BLOCKS,
                dirty_known: true,
                ..MVol::default()
            },
        );
    }
    for op in &ops {
        h.step(op)?;
    }
    let names: Vec<String> = h.vols.keys().cloned().collect();
    for n in &names {
        h.verify_volume(n, false)?;
    }
    h.pool().sync_maintenance().expect("maintenance");
    check_clean(h.pool())?;
    h.pool.take().expect("pool").close().expect("close");
    let pool = reopen_keyed(&h.dev);
    h.pool = Some(pool);
    for n in &names {
        h.verify_volume(n, false)?;
    }
    check_clean(h.pool())?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_model(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops)?;
    }
}
