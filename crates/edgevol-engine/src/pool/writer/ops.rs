//! What the writer is asked to do: client data ops ([`DataOp`]), catalog
//! changes ([`Control`]) and maintenance ops ([`MaintOp`]), each carrying
//! the channel its result goes back on ([`Done`]).
//!
//! Plain data, no logic: the invariants are kept where the ops are handled
//! (see the other modules of the writer).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::oneshot;

use crate::error::Result;
use crate::layout::Paddr;
use crate::map::run::{Run, RunMeta};
use crate::map::{Key, Levels, Memtable};

/// Completion of an op.
pub(crate) type Done<T> = oneshot::Sender<Result<T>>;

/// How a discard leaves the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiscardMode {
    /// Deallocate (TRIM, or WRITE_ZEROES without NO_HOLE).
    Trim,
    /// Zeroes that stay allocated (WRITE_ZEROES with NO_HOLE).
    ZeroAlloc,
}

/// Client data ops.
pub(crate) enum DataOp {
    Write {
        vol: u64,
        lba: u64,
        data: Bytes,
        fua: bool,
        done: Done<()>,
    },
    Discard {
        vol: u64,
        lba: u64,
        nblocks: u64,
        mode: DiscardMode,
        fua: bool,
        done: Done<()>,
    },
    Flush {
        done: Done<()>,
    },
}

/// Catalog changes.
#[derive(Debug, Clone)]
pub(crate) enum Control {
    CreateVolume {
        name: String,
        size: u64,
        props: BTreeMap<String, String>,
        key: Option<crate::crypt::KeyRec>,
    },
    /// A volume's key wrapped anew (change-key).
    SetKeyRec {
        vol: u64,
        key: crate::crypt::KeyRec,
    },
    Snapshot {
        vol: u64,
        name: String,
    },
    Rollback {
        vol: u64,
        snap: u64,
    },
    Clone {
        snap: u64,
        name: String,
    },
    DestroySnapshot {
        snap: u64,
    },
    DestroyVolume {
        vol: u64,
        force: bool,
    },
    Resize {
        vol: u64,
        size: u64,
    },
    SetProp {
        vol: u64,
        key: String,
        value: Option<String>,
    },
    SetPoolProp {
        key: String,
        value: Option<String>,
    },
    Rename {
        vol: u64,
        name: String,
    },
    BumpEpoch {
        vol: u64,
    },
    Detach {
        vol: u64,
    },
    /// A flatten starts (`active`) or stops without a detach.
    Flattening {
        vol: u64,
        active: bool,
    },
    /// Where a running scrub continues after a restart (None: it ended).
    ScrubAt {
        at: Option<(u32, u64, u64)>,
    },
}

/// What the cleaner moves.
pub(crate) struct RelocItem {
    /// The fragment's key; for `Whole`, (lineage, record lba, birth).
    pub key: Key,
    pub old: Paddr,
    pub old_rec_off: u8,
    /// Blocks of the fragment; for `Whole`, of the record.
    pub nblocks: u8,
    /// Compression (for `Restore`: the algorithm to compress with again).
    pub comp: u8,
    pub enc: u8,
    pub seal: Option<crate::crypt::Seal>,
    pub kind: RelocKind,
    /// Stored bytes (`Fragment`, `Whole`) or plaintext (`Restore`).
    pub data: Bytes,
    pub csums: Vec<u32>,
}

/// How the cleaner moves something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelocKind {
    /// Blocks of a plain record, as stored.
    Fragment,
    /// A whole packed record, as stored (no key needed).
    Whole,
    /// The live blocks of a partly dead packed record, stored anew
    /// (compressed and encrypted again, with a fresh nonce).
    Restore,
}

/// Maintenance ops.
pub(crate) enum MaintOp {
    Control(Control, Done<u64>),
    Relocate(Vec<RelocItem>, Done<u64>),
    Copy {
        vol: u64,
        lineage: u32,
        parent: (u32, u64),
        base: u64,
        lba: u64,
        data: Bytes,
        done: Done<()>,
    },
    Gc {
        lineage: u32,
        chunks: Vec<u64>,
        done: Done<()>,
    },
    GcDone {
        lineage: u32,
        /// The views the collection kept (`Catalog::views`); a lineage
        /// whose views changed since was scheduled again and is not done.
        views: Vec<u64>,
    },
    Rotate(Done<Option<Arc<Memtable>>>),
    InstallFlush(Arc<Run>, Done<()>),
    InstallCompaction {
        levels: Levels,
        dropped: Vec<RunMeta>,
        done: Done<()>,
    },
    /// The cleaner cannot free a segment: fail writes waiting for one.
    FailStalled,
    /// Flush the memtable from the writer and move the replay point to now.
    FlushNow(Done<()>),
    /// Settle every blind write still pending (overlay.rs).
    Settle(Done<()>),
    /// Load (Some) or unload (None) a data key, after every write batched
    /// so far is sealed (so no record waits for a key that is gone).
    SetKey(u64, Option<Arc<crate::crypt::DataKey>>, Done<()>),
    Shutdown(Done<()>),
}

impl MaintOp {
    /// The op's name, for logs.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            MaintOp::Control(..) => "control",
            MaintOp::Relocate(..) => "relocate",
            MaintOp::Copy { .. } => "copy",
            MaintOp::Gc { .. } => "gc",
            MaintOp::GcDone { .. } => "gc done",
            MaintOp::Rotate(_) => "rotate",
            MaintOp::InstallFlush(..) => "install flush",
            MaintOp::InstallCompaction { .. } => "install compaction",
            MaintOp::FailStalled => "fail stalled",
            MaintOp::FlushNow(_) => "flush now",
            MaintOp::Settle(_) => "settle",
            MaintOp::SetKey(..) => "set key",
            MaintOp::Shutdown(_) => "shutdown",
        }
    }
}
