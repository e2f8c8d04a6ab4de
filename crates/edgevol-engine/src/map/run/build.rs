//! Building a run: entries in increasing key order become leaf blocks,
//! handed out as they fill (a merge never holds a whole run in memory),
//! then the index blocks.

use super::block::{finish_block, CRC_AT, HEADER, INDEX_ENTRY, KIND_INDEX, KIND_LEAF};
use crate::format::codec::Writer;
use crate::layout::BLOCK;
use crate::map::entry::{encode_value, encoded_len, Key, Value};

/// Builds the blocks of a run from entries given in strictly increasing key order.
pub struct RunBuilder {
    run_id: u64,
    leaf: Vec<u8>,
    /// Offsets of the current leaf's entries.
    offsets: Vec<u16>,
    leaf_count: u16,
    leaf_first: Option<Key>,
    last: Option<Key>,
    /// Finished leaf blocks not yet taken by the caller.
    out: Vec<u8>,
    leaves_done: u32,
    index: Vec<(Key, u32)>,
    entries: u64,
}

impl RunBuilder {
    /// Start run `run_id`.
    pub fn new(run_id: u64) -> Self {
        let mut leaf = Vec::with_capacity(BLOCK);
        leaf.resize(HEADER, 0);
        RunBuilder {
            run_id,
            leaf,
            offsets: Vec::new(),
            leaf_count: 0,
            leaf_first: None,
            last: None,
            out: Vec::new(),
            leaves_done: 0,
            index: Vec::new(),
            entries: 0,
        }
    }

    /// Append an entry; keys must strictly increase.
    pub fn push(&mut self, key: Key, value: &Option<Value>) {
        assert!(
            self.last.is_none_or(|l| l < key),
            "run entries must be pushed in strictly increasing key order"
        );
        let need = Key::LEN + encoded_len(value);
        if self.leaf.len() + need + 2 * (self.offsets.len() + 1) > CRC_AT {
            self.finish_leaf();
        }
        self.offsets.push(self.leaf.len() as u16);
        let mut w = Writer::new(&mut self.leaf);
        key.encode(&mut w);
        encode_value(value, &mut w);
        self.leaf_count += 1;
        self.leaf_first.get_or_insert(key);
        self.last = Some(key);
        self.entries += 1;
    }

    fn finish_leaf(&mut self) {
        let Some(first) = self.leaf_first.take() else {
            return;
        };
        let used = self.leaf.len();
        self.leaf.resize(BLOCK, 0);
        let table = CRC_AT - 2 * self.offsets.len();
        for (i, o) in self.offsets.drain(..).enumerate() {
            self.leaf[table + 2 * i..table + 2 * i + 2].copy_from_slice(&o.to_le_bytes());
        }
        finish_block(
            &mut self.leaf,
            KIND_LEAF,
            self.leaf_count,
            used,
            self.run_id,
        );
        self.out.extend_from_slice(&self.leaf);
        self.index.push((first, self.leaves_done));
        self.leaves_done += 1;
        self.leaf.clear();
        self.leaf.resize(HEADER, 0);
        self.leaf_count = 0;
    }

    /// Finished leaf bytes so far (whole blocks); the caller writes and drains them.
    pub fn take_ready(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Bytes of finished leaves waiting to be taken.
    pub fn ready_len(&self) -> usize {
        self.out.len()
    }

    /// Entries pushed so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Finish: returns the remaining leaf bytes plus all index blocks, the
    /// leaf and index block counts.
    pub fn finish(mut self) -> (Vec<u8>, u32, u32) {
        self.finish_leaf();
        let mut out = std::mem::take(&mut self.out);
        let per = (CRC_AT - HEADER) / INDEX_ENTRY;
        let mut index_blocks = 0u32;
        for chunk in self.index.chunks(per) {
            let mut b = Vec::with_capacity(BLOCK);
            b.resize(HEADER, 0);
            let mut w = Writer::new(&mut b);
            for (k, n) in chunk {
                k.encode(&mut w);
                w.u32(*n);
            }
            let used = b.len();
            b.resize(BLOCK, 0);
            finish_block(&mut b, KIND_INDEX, chunk.len() as u16, used, self.run_id);
            out.extend_from_slice(&b);
            index_blocks += 1;
        }
        (out, self.leaves_done, index_blocks)
    }
}
