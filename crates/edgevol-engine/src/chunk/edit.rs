//! Editing a chunk's entries: punching blocks out of an entry (keeping
//! the surviving fragments), applying changes to a local copy, and the
//! space given up by records that lost blocks ([`super::live_share`]).
//!
//! Keeps invariant 5 (full is not fatal): what an edit frees is counted
//! exactly, so the space of dead blocks comes back at once.

use std::collections::{BTreeMap, BTreeSet};

use crate::layout::Paddr;
use crate::map::{Key, Value};

use super::{share_freed, Change, Entries, Freed};

/// Remove the blocks set in `remove` (bit i = block `key.lba + i`) from an
/// entry; returns the changes (the surviving fragments, and a deletion of
/// the key if no fragment starts at it).
pub(super) fn punch(key: Key, value: &Value, remove: u64, out: &mut Vec<Change>) {
    let n = value.nblocks();
    let mut kept_first = false;
    let mut i = 0u8;
    while i < n {
        if remove & (1 << i) != 0 {
            i += 1;
            continue;
        }
        let s = i;
        while i < n && remove & (1 << i) == 0 {
            i += 1;
        }
        if s == 0 {
            kept_first = true;
            if i == n {
                return; // nothing removed
            }
        }
        out.push((
            Key::new(key.lineage, key.lba + u64::from(s), key.birth),
            Some(value.slice(s, i)),
        ));
    }
    if !kept_first {
        out.push((key, None));
    }
}

/// Apply `changes` to a copy of `entries` (same lineage, one chunk).
pub(super) fn apply_local(entries: &Entries, changes: &[Change]) -> Vec<(Key, Value)> {
    let mut m: std::collections::BTreeMap<Key, Value> = entries.iter().cloned().collect();
    for (k, v) in changes {
        match v {
            Some(v) => {
                m.insert(*k, v.clone());
            }
            None => {
                m.remove(k);
            }
        }
    }
    m.into_iter().collect()
}

/// Referenced blocks per record.
pub(super) fn blocks_per_record<'a>(
    entries: impl Iterator<Item = &'a Value>,
) -> BTreeMap<Paddr, u64> {
    let mut m = BTreeMap::new();
    for d in entries.filter_map(Value::data) {
        *m.entry(d.paddr).or_insert(0) += u64::from(d.nblocks);
    }
    m
}

/// Space freed between `before` and `after` (records that lost blocks).
pub(super) fn freed_records(before: &Entries, after: &[(Key, Value)]) -> Vec<Freed> {
    let b = blocks_per_record(before.iter().map(|(_, v)| v));
    let a = blocks_per_record(after.iter().map(|(_, v)| v));
    let mut seen = BTreeSet::new();
    before
        .iter()
        .filter_map(|(_, v)| v.data())
        .filter(|d| seen.insert(d.paddr))
        .filter_map(|d| share_freed(d, b[&d.paddr], a.get(&d.paddr).copied().unwrap_or(0)))
        .collect()
}

/// Bit mask of an entry's blocks.
pub(super) fn whole_mask(v: &Value) -> u64 {
    if v.nblocks() >= 64 {
        u64::MAX
    } else {
        (1u64 << v.nblocks()) - 1
    }
}
