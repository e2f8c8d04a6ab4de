//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use edgevol_engine::device::{Device, MemDevice};
use edgevol_engine::{CreateOptions, Pool, PoolConfig, ReadSeg, Volume};

pub const MIB: u64 = 1 << 20;

pub fn cfg() -> PoolConfig {
    PoolConfig {
        memtable_bytes: 256 * 1024,
        cache_bytes: 4 * MIB,
        background: false,
        // Race the settler thread against the writer on every write.
        settle_low: 0,
        ..PoolConfig::default()
    }
}

pub fn mem_pool(size: u64) -> (Pool, Arc<MemDevice>) {
    let dev = Arc::new(MemDevice::new("d0", size));
    let pool = Pool::create(
        "p",
        vec![dev.clone() as Arc<dyn Device>],
        &CreateOptions {
            segment_size: Some(MIB),
        },
        cfg(),
    )
    .expect("create pool");
    (pool, dev)
}

/// A pool of one group of `kind` over `n` memory devices of 40 MiB.
pub fn group_with(
    kind: edgevol_engine::format::label::GroupKind,
    n: usize,
    config: PoolConfig,
) -> (Pool, Vec<Arc<MemDevice>>) {
    let devs: Vec<Arc<MemDevice>> = (0..n)
        .map(|i| Arc::new(MemDevice::new(format!("d{i}"), 40 * MIB)))
        .collect();
    let pool = Pool::create_groups(
        "p",
        vec![(
            kind,
            devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect(),
        )],
        &CreateOptions {
            segment_size: Some(MIB),
        },
        config,
    )
    .expect("create");
    (pool, devs)
}

/// Import the pool on `devs` again.
pub fn import(devs: &[Arc<MemDevice>]) -> Pool {
    Pool::open(
        devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect(),
        cfg(),
    )
    .expect("import")
}

pub fn reopen(dev: &Arc<MemDevice>) -> Pool {
    Pool::open(vec![dev.clone() as Arc<dyn Device>], cfg()).expect("reopen pool")
}

pub fn block(fill: u8) -> Vec<u8> {
    vec![fill; 4096]
}

/// A 4 KiB block whose bytes encode (tag, lba), so misplaced data is caught.
pub fn tagged(tag: u64, lba: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    for (i, w) in b.chunks_mut(16).enumerate() {
        w[..8].copy_from_slice(&tag.to_le_bytes());
        w[8..16].copy_from_slice(&(lba ^ (i as u64) << 48).to_le_bytes());
    }
    b
}

pub fn write(v: &Volume, lba: u64, data: &[u8]) {
    futures::executor::block_on(v.write(lba * 4096, Bytes::copy_from_slice(data), false))
        .expect("write");
}

pub fn read(v: &Volume, lba: u64, nblocks: u64) -> Vec<u8> {
    let segs = futures::executor::block_on(v.read(lba * 4096, nblocks * 4096)).expect("read");
    flatten(segs)
}

pub fn flatten(segs: Vec<ReadSeg>) -> Vec<u8> {
    ReadSeg::concat(segs)
}

pub fn flush(v: &Volume) {
    futures::executor::block_on(v.flush()).expect("flush");
}

pub fn trim(v: &Volume, lba: u64, n: u64) {
    futures::executor::block_on(v.trim(lba * 4096, n * 4096, false)).expect("trim");
}

pub fn no_props() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// Properties of a volume whose records are stored raw (for tests of space
/// mechanics, where compression would hide the pressure).
pub fn uncompressed() -> BTreeMap<String, String> {
    BTreeMap::from([("compression".to_string(), "off".to_string())])
}

pub fn assert_clean(pool: &Pool) {
    let r = pool.check().expect("check runs");
    assert!(r.is_clean(), "pool check found problems: {:#?}", r.errors);
}

/// What a block may hold after a power cut: its last flushed tag (0 =
/// zeroes) and the tags acknowledged since, oldest first.
#[derive(Clone, Default, Debug)]
pub struct Cell {
    pub durable: u64,
    pub pending: Vec<u64>,
}

impl Cell {
    /// The newest acknowledged tag.
    pub fn latest(&self) -> u64 {
        self.pending.last().copied().unwrap_or(self.durable)
    }

    /// After a power cut: if `block` (block `lba`) holds the flushed tag
    /// or a later one, that tag is now the flushed one and is returned.
    pub fn recover(&mut self, block: &[u8], lba: u64) -> Option<u64> {
        let now = std::iter::once(self.durable)
            .chain(self.pending.iter().copied())
            .find(|t| block == block_of(*t, lba).as_slice())?;
        *self = Cell {
            durable: now,
            pending: Vec::new(),
        };
        Some(now)
    }
}

/// Block `lba` as written with `tag` (0: zeroes).
pub fn block_of(tag: u64, lba: u64) -> Vec<u8> {
    if tag == 0 {
        vec![0; 4096]
    } else {
        tagged(tag, lba)
    }
}

/// A flush (or a FUA write) returned: everything acknowledged is durable.
pub fn settle(cells: &mut BTreeMap<u64, Cell>) {
    for c in cells.values_mut() {
        c.durable = c.latest();
        c.pending.clear();
    }
}
