//! Helpers for the planners' tests: records, head views, and a tiny
//! in-memory map that drives the planners like the writer does.

use std::collections::BTreeMap;

use crate::catalog::{Chain, ViewStep};
use crate::layout::{chunk_start, Paddr, SegId, CHUNK_BLOCKS};
use crate::map::{DataRef, Key, Value};

use super::{resolve, ChunkChanges, Piece};

pub(crate) fn rec(addr: u32, n: u8) -> DataRef {
    DataRef {
        paddr: Paddr::new(SegId::new(0, 0), addr),
        stored_len: u32::from(n) * 4096,
        rec_blocks: n,
        rec_off: 0,
        nblocks: n,
        comp: 0,
        enc: 0,
        seal: None,
        csums: (0..u32::from(n))
            .map(|i| addr + i)
            .collect::<Vec<_>>()
            .into(),
    }
}

pub(super) fn head(l: u32, e: u64) -> ViewStep {
    ViewStep {
        lineage: l,
        epoch: e,
        barriers: vec![],
    }
}

/// A tiny in-memory map to drive the planners like the writer does.
#[derive(Default)]
pub(super) struct M(pub(super) BTreeMap<Key, Value>);
impl M {
    /// A map holding one 4-block record (address 0) at blocks 0..4 of
    /// lineage 1, born at epoch 1.
    pub(super) fn one_record() -> M {
        let mut m = M::default();
        m.apply(&super::plan_write(
            &[],
            &head(1, 1),
            0,
            4,
            &[],
            &super::NewValue::Data(rec(0, 4)),
        ));
        m
    }
    pub(super) fn chunk(&self, l: u32, lo: u64) -> Vec<(Key, Value)> {
        let lo = chunk_start(lo);
        self.0
            .range(Key::lower(l, lo)..Key::lower(l, lo + CHUNK_BLOCKS))
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }
    pub(super) fn apply(&mut self, c: &ChunkChanges) {
        for (k, v) in &c.changes {
            match v {
                Some(v) => {
                    self.0.insert(*k, v.clone());
                }
                None => {
                    self.0.remove(k);
                }
            }
        }
    }
    pub(super) fn read(&self, chain: &Chain, lo: u64, n: u32) -> Vec<Piece> {
        resolve(chain, lo, n, |l, f, t| {
            Ok(self
                .0
                .range(Key::lower(l, f)..Key::lower(l, t))
                .map(|(k, v)| (*k, v.clone()))
                .collect())
        })
        .unwrap()
    }
}
