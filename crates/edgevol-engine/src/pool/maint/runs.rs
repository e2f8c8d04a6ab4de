//! Map runs: building an immutable sorted run from entries into metadata
//! blocks (for a memtable flush, a compaction, or the writer's own runs),
//! and the memtable flush. Keeps invariant 1 (a run is on the devices,
//! flushed, before it is installed) and invariant 6 (a flush empties the
//! memtable, whose budget bounds memory).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::send;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{MetaExtent, BLOCK};
use crate::map::run::{Run, RunBuilder, RunMeta};
use crate::map::{Key, Value};
use crate::pool::space::MetaClass;
use crate::pool::writer::MaintOp;
use crate::pool::{ckpt, Shared};

/// Where a run's metadata blocks come from.
pub(crate) trait MetaAlloc {
    /// `blocks` more metadata blocks, now owned by the run being built.
    fn alloc(&mut self, blocks: u32) -> Result<Vec<MetaExtent>>;
    /// Give back the extents of a run that could not be built.
    fn release(&mut self, extents: Vec<MetaExtent>);
}

/// Allocation straight from the segment table (metadata may take any free
/// segment: the floors in `mod.rs` keep enough for it), appended to the
/// segments of the run's lifetime class.
pub(crate) struct TableAlloc<'a>(pub &'a Shared, pub MetaClass);

impl MetaAlloc for TableAlloc<'_> {
    fn alloc(&mut self, blocks: u32) -> Result<Vec<MetaExtent>> {
        self.0
            .segs
            .lock()
            .alloc_meta_blocks(blocks, self.1)
            .ok_or_else(|| Error::new(ErrorKind::NoSpace, "no free segment for a map run"))
    }

    fn release(&mut self, extents: Vec<MetaExtent>) {
        // Never referenced by an installed run: no reader can be using them.
        self.0.segs.lock().release_meta_blocks(&extents);
    }
}

/// Build run `id` from sorted entries into blocks from `alloc`.
pub(crate) fn build_run_with(
    sh: &Shared,
    id: u64,
    alloc: &mut dyn MetaAlloc,
    entries: impl Iterator<Item = Result<(Key, Option<Value>)>>,
) -> Result<Arc<Run>> {
    let mut extents: Vec<MetaExtent> = Vec::new();
    let mut written = 0u32;
    let r = (|| {
        let mut write = |bytes: &[u8], extents: &mut Vec<MetaExtent>| -> Result<()> {
            if bytes.is_empty() {
                return Ok(());
            }
            let blocks = (bytes.len() / BLOCK) as u32;
            sh.map.cache().fill(id, written, bytes);
            written += blocks;
            let got = alloc.alloc(blocks)?;
            extents.extend_from_slice(&got);
            let mut rest = bytes;
            for e in &got {
                let n = e.len() as usize;
                ckpt::write_aligned(&sh.vdevs, e.seg, e.offset(), &rest[..n])?;
                rest = &rest[n..];
            }
            Ok(())
        };
        let mut b = RunBuilder::new(id);
        for e in entries {
            let (k, v) = e?;
            b.push(k, &v);
            if b.ready_len() >= 1 << 20 {
                let bytes = b.take_ready();
                write(&bytes, &mut extents)?;
            }
        }
        let n = b.entries();
        let ready = b.take_ready();
        write(&ready, &mut extents)?;
        let (rest, leaves, index) = b.finish();
        write(&rest, &mut extents)?;
        sh.vdevs.flush_all()?;
        let meta = RunMeta {
            id,
            extents: merge_extents(&extents),
            leaf_blocks: leaves,
            index_blocks: index,
            entries: n,
        };
        Ok(Arc::new(Run::open(meta, sh.map.reader())?))
    })();
    if r.is_err() {
        alloc.release(extents);
    }
    r
}

/// Join extents that continue each other in the same segment.
fn merge_extents(v: &[MetaExtent]) -> Vec<MetaExtent> {
    let mut out: Vec<MetaExtent> = Vec::with_capacity(v.len());
    for e in v {
        match out.last_mut() {
            Some(l) if l.seg == e.seg && l.block + l.blocks == e.block => l.blocks += e.blocks,
            _ => out.push(*e),
        }
    }
    out
}

/// Build a run from sorted entries (maintenance side): `class` says how
/// long it is expected to live (L0 runs are merged away soon).
pub(super) fn build_run(
    sh: &Shared,
    class: MetaClass,
    entries: impl Iterator<Item = Result<(Key, Option<Value>)>>,
) -> Result<Arc<Run>> {
    let id = sh.next_run_id.fetch_add(1, Ordering::SeqCst);
    build_run_with(sh, id, &mut TableAlloc(sh, class), entries)
}

/// Freeze and flush the memtable. Returns true if a run was installed.
pub(crate) fn flush_memtable(sh: &Shared) -> Result<bool> {
    let Some(frozen) = send(sh, MaintOp::Rotate)? else {
        return Ok(false);
    };
    sh.maint_status.lock().flushed_at_bytes = sh.stats.bytes_written.load(Ordering::Relaxed);
    let run = build_run(
        sh,
        MetaClass::Short,
        frozen.iter().map(|(k, v)| Ok((*k, v.clone()))),
    )?;
    send(sh, |d| MaintOp::InstallFlush(run, d))?;
    Ok(true)
}
