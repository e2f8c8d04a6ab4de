//! Per-chunk map algorithms, as pure functions over a chunk's entries.
//!
//! Every decision about a block needs only the entries of its chunk (records
//! never cross chunk boundaries), for one lineage, all births. These
//! functions take those entries and return the changes to make, so they can
//! be tested without devices, and so the writer, replay and the garbage
//! collector share one implementation.
//!
//! Visibility: view `(L, E)` sees at block X the entry of L covering X with
//! the newest birth `<= E` and `>= floor(X)` (barrier); if none, it falls
//! through to L's parent, unless a barrier covers X (then X is a hole).
//!
//! The free rule (ZFS's birth-time rule, per block): when the head of L
//! (epoch `c`) overwrites X whose head-visible entry was born at `b`, that
//! block of the entry is still needed iff some frozen view (snapshot or
//! branch point) of L lies in `[b, c)`. Otherwise it is punched out of the
//! entry, and its space is freed at once (see [`live_share`]).
//!
//! Split by job: `view` (what a view sees: visibility, [`resolve`], the
//! per-view tables of the space report and check), `write` (a head write,
//! trim or zero: [`plan_write`], [`plan_tombstones`]), `gc` (dropping what
//! no view sees: [`plan_gc`]), `relocate` (the cleaner's and flatten's
//! moves: [`plan_relocate`], [`plan_move`], [`plan_copy`]) and `edit`
//! (punching blocks out of entries, and the space that frees). This module
//! holds the change set and the space accounting they share.
//!
//! Keeps invariant 3 (zeroes, no foreign bytes: entries are keyed by their
//! lineage, and trims leave tombstones where older data would show),
//! invariant 4 (snapshots are immutable: the free rule keeps every block a
//! frozen view sees) and invariant 5 (full is not fatal: dead space is
//! given back at once, and collecting a destroyed snapshot frees its own).

use crate::layout::Paddr;
use crate::map::{DataRef, Key, Value};

mod edit;
mod gc;
mod relocate;
#[cfg(test)]
pub(crate) mod testkit;
mod view;
mod write;

pub use gc::plan_gc;
pub use relocate::{plan_copy, plan_move, plan_relocate};
pub use view::{data_blocks, resolve, views_per_block, Piece, PieceKind};
pub use write::{plan_tombstones, plan_write, NewValue};

/// Entries of one lineage, sorted by key.
pub type Entries = [(Key, Value)];

/// A change to the map: a new value, or `None` to delete the key.
pub type Change = (Key, Option<Value>);

/// What a chunk operation changes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChunkChanges {
    /// Map changes, to apply in order.
    pub changes: Vec<Change>,
    /// Space given up by records that lost blocks, per [`live_share`].
    pub freed: Vec<Freed>,
}

/// Space a record gave up in one chunk operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freed {
    /// The record.
    pub rec: Paddr,
    /// Stored bytes given up.
    pub stored: u64,
    /// Logical bytes given up.
    pub logical: u64,
    /// No entry refers to the record any more: records never cross chunk
    /// boundaries and belong to one lineage, so none ever will again.
    pub gone: bool,
    /// The record is plain (neither compressed nor encrypted).
    pub plain: bool,
}

/// The live space a record accounts for while `blocks` of its blocks are
/// referenced: `(stored bytes, logical bytes)`.
///
/// Invariant: a segment's `live` is the sum of this over its records, so
/// it drops as soon as a block is overwritten, trimmed or collected —
/// writes at a full pool are not refused for space that is already dead.
/// A plain record counts 4 KiB per referenced block (exact: the cleaner
/// moves only referenced blocks). A packed (compressed or encrypted)
/// record counts its footprint pro rata; the cleaner re-stores the live
/// blocks of a partly dead packed record, so the rest does come back.
pub fn live_share(d: &DataRef, blocks: u64) -> (u64, u64) {
    let rec = u64::from(d.rec_blocks.max(1));
    (
        d.footprint() * blocks.min(rec) / rec,
        blocks * crate::layout::BLOCK_U64,
    )
}

/// Space freed when a record goes from `before` to `after` referenced blocks.
fn share_freed(d: &DataRef, before: u64, after: u64) -> Option<Freed> {
    let (sb, lb) = live_share(d, before);
    let (sa, la) = live_share(d, after);
    (before > after).then_some(Freed {
        rec: d.paddr,
        stored: sb - sa,
        logical: lb - la,
        gone: after == 0,
        plain: d.is_plain(),
    })
}

impl ChunkChanges {
    /// True if nothing changes.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.freed.is_empty()
    }

    /// Append another set of changes.
    pub fn extend(&mut self, other: ChunkChanges) {
        self.changes.extend(other.changes);
        self.freed.extend(other.freed);
    }
}
