//! Map flushes, compaction and checkpoints: freezing the memtable and
//! capturing what the persisted state will be (`Rotation`), installing a
//! flushed run or a compaction, and writing a checkpoint (catalog, map
//! manifest, counters, replay point) followed by its uberblock.
//!
//! Keeps invariant 1 (acknowledged writes survive) by moving the replay
//! point and releasing segments only with a durable checkpoint that no
//! longer needs them, after readers of the old state drained; invariant 4
//! (catalog changes are atomic) by writing the checkpoint and flushing
//! before the uberblock points at it; invariant 6 (memory budget) by
//! turning frozen memtables into runs on the devices.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::error::{Error, ErrorKind, Result};
use crate::format::uberblock::Uberblock;
use crate::layout::{MetaExtent, Paddr, SegId, BLOCK};
use crate::map::run::{Run, RunMeta};
use crate::map::{Levels, Memtable};

use super::{now_secs, Writer};
use crate::pool::ckpt::{self, BlobRef, Checkpoint, ReplayPoint};
use crate::pool::space::{Counters, MetaClass, SegState};

/// State captured when the memtable is frozen: what the persisted state will
/// be once its run is installed.
pub(super) struct Rotation {
    replay: ReplayPoint,
    counters: Counters,
    number: u64,
}

impl Writer {
    pub(super) fn rotate(&mut self) -> Option<Arc<Memtable>> {
        if self.rotation.is_some() {
            return None;
        }
        // A checkpoint covers settled state only (overlay.rs); no settler
        // installs anything between the settlement and the counters'
        // capture.
        let sh = self.sh.clone();
        let _settled = sh.settle_lock.lock();
        if let Err(e) = self.settle_all("rotation") {
            self.poison(&e);
            return None;
        }
        let frozen = self.sh.map.rotate()?;
        self.capture_rotation();
        Some(frozen)
    }

    /// Record what the persisted state will be once the frozen memtable (if
    /// any) is installed: the replay point and counters as of now.
    fn capture_rotation(&mut self) {
        self.rotations += 1;
        self.rotation = Some(Rotation {
            replay: ReplayPoint {
                lsn: self.next_lsn,
                streams: self.streams.clone(),
            },
            counters: Counters {
                segs: self.sh.segs.lock().snapshot(),
                lineage_delta: self.sh.lineage_delta.lock().clone(),
            },
            number: self.rotations,
        });
    }

    fn stream_uses(&self, seg: SegId) -> bool {
        self.streams
            .iter()
            .any(|s| s.seg == Some(seg) || s.next == Some(seg))
    }

    /// Flush the memtable from the writer thread itself and move the
    /// persisted replay point to now, even if the memtable is empty. Used
    /// where nothing written so far may ever be replayed again: at the end
    /// of recovery (torn tails must not be re-read later as if flushed) and
    /// for catalog ops that change how earlier entries would replay.
    pub(crate) async fn flush_now(&mut self) -> Result<()> {
        if self.rotation.is_some() {
            return Err(Error::new(
                ErrorKind::Busy,
                "a map flush is in progress; retry",
            ));
        }
        // As in `rotate`: nothing is installed between the settlement and
        // the counters' capture.
        let sh = self.sh.clone();
        let settled = sh.settle_lock.lock();
        self.settle_all("flush")?;
        let frozen = self.sh.map.rotate();
        self.capture_rotation();
        drop(settled);
        let run = match frozen {
            Some(frozen) => {
                let id = self.sh.next_run_id.fetch_add(1, Ordering::SeqCst);
                let sh = self.sh.clone();
                let mut alloc = crate::pool::maint::TableAlloc(&sh, MetaClass::Short);
                let r = crate::pool::maint::build_run_with(
                    &sh,
                    id,
                    &mut alloc,
                    frozen.iter().map(|(k, v)| Ok((*k, v.clone()))),
                );
                match r {
                    Ok(run) => Some(run),
                    Err(e) => {
                        // Put the frozen entries back in front of newer ones.
                        self.rotation = None;
                        self.sh.map.unfreeze();
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        self.install_flush(run).await
    }

    pub(super) async fn install_flush(&mut self, run: Option<Arc<Run>>) -> Result<()> {
        let rot = self
            .rotation
            .take()
            .ok_or_else(|| Error::corrupt("flush installed without a rotation"))?;
        if let Some(run) = run {
            self.sh.map.install_flush(run);
        }
        let mut counters = rot.counters;
        // Free data segments the persisted state no longer needs: no live
        // record in the runs, no batch to replay, not in use by a stream.
        let mut release = Vec::new();
        for (g, segs) in counters.segs.iter_mut().enumerate() {
            for (i, info) in segs.iter_mut().enumerate() {
                let seg = SegId::new(g as u8, i as u32);
                if info.state == SegState::Meta {
                    // Meta ownership is derived from the checkpoint, not counters.
                    continue;
                }
                if info.state == SegState::Data
                    && info.live == 0
                    && info.max_lsn < rot.replay.lsn
                    && !self.stream_uses(seg)
                    && !rot
                        .replay
                        .streams
                        .iter()
                        .any(|s| s.seg == Some(seg) || s.next == Some(seg))
                {
                    info.state = SegState::Free;
                    info.written = 0;
                    info.max_lsn = 0;
                    release.push(seg);
                }
            }
        }
        // GC work that is now in the runs is done for good.
        let number = rot.number;
        let mut cat = self.cat.clone();
        self.gc_done.retain(|(l, at)| {
            if *at < number {
                cat.gc_todo.remove(l);
                cat.purge_todo.remove(l);
                false
            } else {
                true
            }
        });
        self.replay = rot.replay;
        self.log_since_replay = 0;
        let blob = ckpt::encode_counters(&counters);
        let extents = self.alloc_meta_blocks(blob.len())?;
        if let Err(e) = ckpt::write_blob_async(&self.sh.vdevs, &extents, blob.clone()).await {
            self.sh.segs.lock().release_meta_blocks(&extents);
            self.poison(&e);
            return Err(e);
        }
        let r = BlobRef {
            extents,
            len: blob.len() as u64,
            crc: crc32c::crc32c(&blob),
        };
        let release = Release {
            segments: release,
            extents: Vec::new(),
        };
        self.write_checkpoint(&cat, Some(r), release).await?;
        self.cat = cat;
        self.publish();
        self.sh.stats.map_flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(super) async fn install_compaction(
        &mut self,
        levels: Levels,
        dropped: Vec<RunMeta>,
    ) -> Result<()> {
        // Runs flushed while the compaction ran are newer than its inputs:
        // keep them in front of the new L0.
        let cur = self.sh.map.levels();
        let dropped_ids: Vec<u64> = dropped.iter().map(|m| m.id).collect();
        let mut l0: Vec<_> = cur
            .l0
            .iter()
            .filter(|r| {
                !dropped_ids.contains(&r.meta().id)
                    && !levels.l0.iter().any(|x| x.meta().id == r.meta().id)
            })
            .cloned()
            .collect();
        l0.extend(levels.l0);
        self.sh.map.install_levels(Levels {
            l0,
            deep: levels.deep,
        });
        let release = Release {
            segments: Vec::new(),
            extents: dropped
                .iter()
                .flat_map(|m| m.extents.iter().copied())
                .collect(),
        };
        let cat = self.cat.clone();
        self.write_checkpoint(&cat, None, release).await?;
        self.sh.stats.compactions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Write a checkpoint of `cat` with nothing else changing.
    pub(crate) async fn write_checkpoint_pub(&mut self, cat: &Catalog) -> Result<()> {
        self.write_checkpoint(cat, None, Release::default()).await
    }

    /// Write a checkpoint of `cat` and the current map; on success, release
    /// `release` (and segments the previous checkpoint alone used).
    pub(super) async fn write_checkpoint(
        &mut self,
        cat: &Catalog,
        counters: Option<BlobRef>,
        mut release: Release,
    ) -> Result<()> {
        let seq = self.ckpt_seq + 1;
        let counters_ref = counters
            .clone()
            .unwrap_or_else(|| self.counters_ref.clone());
        let mut ck = Checkpoint {
            seq,
            catalog: cat.clone(),
            manifest: self.sh.map.levels().manifest(),
            counters: counters_ref,
            replay: self.replay.clone(),
            next_lsn: self.next_lsn,
            next_run_id: self.sh.next_run_id.load(Ordering::SeqCst),
            log_segment: self.ckpt_log.0,
            stale_members: self.sh.vdevs.stale_members(),
        };
        let mut bytes = ckpt::encode_checkpoint(&ck);
        let (mut seg, mut off) = self.ckpt_log;
        if u64::from(off) + bytes.len() as u64 > self.sh.vdevs.segment_size {
            let Some(s) = self.sh.segs.lock().alloc_pinned_meta() else {
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    "no free segment for the checkpoint log",
                ));
            };
            release.segments.push(seg);
            seg = s;
            off = 0;
            ck.log_segment = s;
            bytes = ckpt::encode_checkpoint(&ck);
        }
        if bytes.len() as u64 > self.sh.vdevs.segment_size {
            return Err(Error::new(
                ErrorKind::NoSpace,
                "checkpoint larger than a segment: recreate the pool with a larger segment size",
            ));
        }
        let ub = Uberblock {
            pool_guid: self.sh.guid,
            seq,
            ckpt: Paddr::new(seg, off),
            ckpt_len: bytes.len() as u32,
            ckpt_crc: crc32c::crc32c(&bytes),
            time: now_secs(),
        };
        let res = async {
            ckpt::write_aligned_async(&self.sh.vdevs, seg, u64::from(off), &bytes).await?;
            self.sh.vdevs.flush_all_async().await?;
            self.sh
                .vdevs
                .write_everywhere_async(Uberblock::slot_offset(seq), &ub.encode())
                .await?;
            self.sh.vdevs.flush_all_async().await
        }
        .await;
        if let Err(e) = res {
            self.poison(&e);
            return Err(e);
        }
        self.flushed_lsn = self.last_written_lsn;
        self.ckpt_seq = seq;
        // The next checkpoint starts a new row (parity groups).
        let next = self
            .sh
            .vdevs
            .row_end(seg, u64::from(off) + bytes.len() as u64);
        self.ckpt_log = (seg, next as u32);
        if let Some(c) = counters {
            release
                .extents
                .extend(self.counters_ref.extents.iter().copied());
            self.counters_ref = c;
        }
        *self.sh.meta_roots.lock() = (self.counters_ref.extents.clone(), Some(seg));
        if !release.segments.is_empty() || !release.extents.is_empty() {
            // Readers that looked up the old state may still be reading.
            self.sh.gate.drained().await;
            let mut segs = self.sh.segs.lock();
            for s in release.segments {
                segs.release(s);
            }
            segs.release_meta_blocks(&release.extents);
        }
        super::super::capacity::settle_metadata(&self.sh);
        self.sh.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn alloc_meta_blocks(&mut self, bytes: usize) -> Result<Vec<MetaExtent>> {
        self.sh
            .segs
            .lock()
            .alloc_meta_blocks(bytes.div_ceil(BLOCK) as u32, MetaClass::Short)
            .ok_or_else(|| Error::new(ErrorKind::NoSpace, "no free segments for metadata"))
    }
}

/// What a checkpoint makes reusable once it is durable.
#[derive(Default)]
pub(super) struct Release {
    /// Whole segments (data segments, an old checkpoint-log segment).
    segments: Vec<SegId>,
    /// Metadata blocks (dropped runs, an old counters table).
    extents: Vec<MetaExtent>,
}
