//! Management ops: the dispatch of maintenance ops, catalog changes
//! (create, snapshot, clone, rollback, destroy, resize, properties,
//! detach), and the cleaner's and flatten's writes (relocations, copies)
//! and garbage collection of destroyed history.
//!
//! Keeps invariant 4 (snapshot, clone, rollback and destroy are atomic) by
//! changing a copy of the catalog and making it current only after the
//! checkpoint holding it is durable; invariant 5 (deleting always works on
//! a full pool) by writing the cleaner's records to a stream of their own
//! and failing stalled writes with ENOSPC only when nothing can be
//! reclaimed; invariant 7 (clear errors) by refusing every change on a
//! poisoned pool.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::catalog::Effects;
use crate::chunk;
use crate::compress::Compression;
use crate::error::{Error, ErrorKind, Result};
use crate::format::batch::{EntryKind, LogEntry};
use crate::layout::{chunk_start, BLOCK, BLOCK_U64, CHUNK_BLOCKS};

use super::batch::record_entry;
use super::flush::Release;
use super::{
    complete, fail, now_secs, Control, MaintOp, RelocItem, RelocKind, Round, Writer, STREAM_CLEANER,
};

impl Writer {
    pub(super) async fn maint(&mut self, m: MaintOp, _round: &mut Round) -> bool {
        match m {
            MaintOp::Control(c, done) => {
                let r = self.control(c).await;
                complete(done, r);
            }
            MaintOp::Relocate(items, done) => {
                // `Writer::handle` batches relocations into the round;
                // taken here, they are written at once.
                let r = async {
                    let n = self.push_relocations(items)?;
                    self.flush_sealed().await?;
                    Ok(n)
                }
                .await;
                complete(done, r);
            }
            MaintOp::Copy {
                vol,
                lineage,
                parent,
                base,
                lba,
                data,
                done,
            } => {
                let r = self.copy(vol, lineage, parent, base, lba, &data).await;
                complete(done, r);
            }
            MaintOp::Gc {
                lineage,
                chunks,
                done,
            } => {
                let r = self.gc(lineage, &chunks);
                complete(done, r);
            }
            MaintOp::GcDone { lineage, views } => {
                // A collection planned against an older catalog (the
                // lineage was destroyed or lost a view meanwhile) does not
                // count: maintenance collects it again.
                let now = if self.cat.lineages.contains_key(&lineage) {
                    self.cat.views(lineage)
                } else {
                    Vec::new()
                };
                if now == views {
                    self.gc_done.push((lineage, self.rotations));
                }
            }
            MaintOp::Rotate(done) => {
                // A large overlay is settled over the next rounds first
                // (settle.rs: `advance_rotation`), not in one stall.
                if let Some(old) = self.rotate_waiter.replace(done) {
                    complete(old, Ok(None));
                }
                self.advance_rotation();
            }
            MaintOp::InstallFlush(run, done) => {
                let r = self.install_flush(Some(run)).await;
                complete(done, r);
            }
            MaintOp::InstallCompaction {
                levels,
                dropped,
                done,
            } => {
                let r = self.install_compaction(levels, dropped).await;
                complete(done, r);
            }
            MaintOp::SetKey(id, key, done) => {
                match key {
                    Some(k) => {
                        self.sh.keys.write().insert(id, k);
                    }
                    None => {
                        self.sh.keys.write().remove(&id);
                    }
                }
                complete(done, Ok(()));
            }
            MaintOp::FlushNow(done) => {
                if self.rotation.is_some() {
                    complete(done, Ok(()));
                } else {
                    // Like a rotation: a large overlay is settled over the
                    // next rounds first (settle.rs: `advance_flush`).
                    self.flush_waiters.push(done);
                    self.advance_flush().await;
                }
            }
            MaintOp::Settle(done) => {
                let r = self.settle_all("asked");
                if let Err(e) = &r {
                    self.poison(e);
                }
                complete(done, r);
            }
            MaintOp::FailStalled => {
                if !self.sh.overlay.read().is_empty() {
                    // The cleaner judged on counters that pending
                    // overwrites still inflate: settle, let it look again.
                    if let Err(e) = self.settle_all("cleaner stalled") {
                        self.poison(&e);
                    }
                    self.sh.wake_maintenance();
                    return false;
                }
                let waiting = std::mem::take(&mut self.space_waiters);
                for job in std::mem::take(&mut self.stalled).into_iter().chain(waiting) {
                    fail(
                        job.op,
                        Error::new(
                            ErrorKind::NoSpace,
                            format!("pool {} is full: no space can be reclaimed", self.sh.name),
                        ),
                    );
                }
            }
            MaintOp::Shutdown(done) => {
                self.write_all_batches().await;
                let r = if self.poisoned.is_none() {
                    let cat = self.cat.clone();
                    self.write_checkpoint(&cat, None, Release::default()).await
                } else {
                    Ok(())
                };
                complete(done, r);
                return true;
            }
        }
        false
    }

    async fn control(&mut self, c: Control) -> Result<u64> {
        if let Some(p) = &self.poisoned {
            return Err(Error::new(ErrorKind::Poisoned, p.clone()));
        }
        // No view is added or removed while writes are pending (overlay.rs).
        if let Err(e) = self.settle_all("catalog change") {
            self.poison(&e);
            return Err(e);
        }
        let now = now_secs();
        let mut cat = self.cat.clone();
        let mut fx = Effects::default();
        let out = match c {
            Control::CreateVolume {
                name,
                size,
                props,
                key,
            } => cat.create_volume(&name, size, props, now, key)?,
            Control::SetKeyRec { vol, key } => {
                cat.set_key(vol, key)?;
                0
            }
            Control::Snapshot { vol, name } => {
                let r = self.referenced(vol);
                cat.snapshot(vol, &name, now, r)?
            }
            Control::Rollback { vol, snap } => {
                let r = self.referenced(vol);
                let (auto, f) = cat.rollback(vol, snap, now, r)?;
                fx = f;
                auto.unwrap_or(0)
            }
            Control::Clone { snap, name } => cat.clone_volume(snap, &name, now)?,
            Control::DestroySnapshot { snap } => {
                fx = cat.destroy_snapshot(snap)?;
                0
            }
            Control::DestroyVolume { vol, force } => {
                fx = cat.destroy_volume(vol, force)?;
                0
            }
            Control::Resize { vol, size } => {
                let (head, head_epoch, old) = {
                    let v = cat.volume(vol)?;
                    (v.head, v.head_epoch, v.size)
                };
                // Data blocks cut off stop counting as referenced. The
                // adjustment lives in the catalog (base_referenced), so it
                // is persisted with the barrier whatever replay does.
                let cut = if size < old {
                    self.data_blocks_in(
                        &cat.chain(head, head_epoch),
                        size / BLOCK_U64,
                        old / BLOCK_U64,
                    )?
                } else {
                    0
                };
                if cat.resize(vol, size)?.is_some() {
                    if let Some(l) = cat.lineages.get_mut(&head) {
                        l.base_referenced -= cut as i64;
                    }
                    fx.reap.insert(head);
                }
                0
            }
            Control::SetProp { vol, key, value } => {
                cat.set_prop(vol, &key, value.as_deref())?;
                0
            }
            Control::SetPoolProp { key, value } => {
                match value {
                    Some(v) => cat.pool_props.insert(key, v),
                    None => cat.pool_props.remove(&key),
                };
                0
            }
            Control::Rename { vol, name } => {
                cat.rename_volume(vol, &name)?;
                0
            }
            Control::BumpEpoch { vol } => cat.bump_epoch(vol)?,
            Control::ScrubAt { at } => {
                cat.scrub_at = at;
                0
            }
            Control::Flattening { vol, active } => {
                if active {
                    cat.begin_flatten(vol)?;
                } else {
                    fx = cat.end_flatten(vol)?;
                }
                0
            }
            Control::Detach { vol } => {
                // Replaying writes made before the detach with the detached
                // catalog would account them differently, so the detach is
                // made durable together with a flush of the memtable: its
                // checkpoint's replay point lies past every earlier write.
                if self.rotation.is_some() {
                    return Err(Error::new(
                        ErrorKind::Busy,
                        "a map flush is in progress; retry",
                    ));
                }
                let mut fx = cat.detach(vol)?;
                cat.schedule(&fx);
                self.gc_done
                    .retain(|(l, _)| !fx.reap.contains(l) && !fx.dead.contains(l));
                fx.reap.clear();
                let prev = std::mem::replace(&mut self.cat, cat);
                self.cat_gen += 1;
                if let Err(e) = self.flush_now().await {
                    self.cat = prev;
                    self.cat_gen += 1;
                    return Err(e);
                }
                self.publish();
                self.sh.wake_maintenance();
                return Ok(0);
            }
        };
        cat.schedule(&fx);
        // A lineage scheduled again needs a new collection: an older "done"
        // must not clear it.
        self.gc_done
            .retain(|(l, _)| !fx.reap.contains(l) && !fx.dead.contains(l));
        for l in &fx.dead {
            self.sh.lineage_delta.lock().remove(l);
        }
        self.write_checkpoint(&cat, None, Release::default())
            .await?;
        self.cat = cat;
        self.publish();
        if !fx.reap.is_empty() || !fx.dead.is_empty() {
            self.sh.wake_maintenance();
        }
        Ok(out)
    }

    /// Batch the cleaner's relocations (cleaner stream) without waiting:
    /// they are written with the round and applied when it lands, in lsn
    /// order with the clients' writes, as replay applies them
    /// (`pipeline.rs`). Returns how many items were batched.
    pub(super) fn push_relocations(&mut self, items: Vec<RelocItem>) -> Result<u64> {
        let n = items.len() as u64;
        for it in items {
            if it.kind == RelocKind::Restore {
                let comp = match it.comp {
                    crate::compress::COMP_ZSTD => Compression::Zstd(3),
                    crate::compress::COMP_LZ4 => Compression::Lz4,
                    _ => Compression::Off,
                };
                let (mut e, stored) = record_entry(
                    EntryKind::Relocate,
                    it.key.lineage,
                    it.key.lba,
                    it.key.birth,
                    &it.data,
                    comp.compress(&it.data),
                    it.enc,
                );
                e.reloc_from = Some((it.old, it.old_rec_off));
                if !self.push_entry(STREAM_CLEANER, e, Some(&stored))? {
                    return Err(Error::new(
                        ErrorKind::NoSpace,
                        "no segment free for the cleaner",
                    ));
                }
                self.sh.stats.restored.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let e = LogEntry {
                kind: if it.kind == RelocKind::Whole {
                    EntryKind::Move
                } else {
                    EntryKind::Relocate
                },
                comp: it.comp,
                flags: 0,
                nblocks: u32::from(it.nblocks),
                lineage: it.key.lineage,
                lba: it.key.lba,
                birth: it.key.birth,
                payload_off: 0,
                stored_len: it.data.len() as u32,
                csums: it.csums,
                enc: it.enc,
                seal: it.seal,
                reloc_from: Some((it.old, it.old_rec_off)),
            };
            if !self.push_entry(STREAM_CLEANER, e, Some(&it.data))? {
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    "no segment free for the cleaner",
                ));
            }
        }
        Ok(n)
    }

    async fn copy(
        &mut self,
        vol: u64,
        lineage: u32,
        parent: (u32, u64),
        base: u64,
        lba: u64,
        data: &Bytes,
    ) -> Result<()> {
        let same = self
            .cat
            .lineages
            .get(&lineage)
            .is_some_and(|l| l.volume == Some(vol) && l.parent == Some(parent));
        if !same {
            return Err(Error::new(ErrorKind::Busy, "volume changed during flatten"));
        }
        let (comp, enc) = self.storage_of(vol);
        let nblocks = (data.len() / BLOCK) as u64;
        let mut done = 0u64;
        while done < nblocks {
            let x = lba + done;
            let want = (chunk_start(x) + CHUNK_BLOCKS - x).min(nblocks - done);
            let Some(n) = self.fit_blocks(STREAM_CLEANER, want)? else {
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    "no segment free for the flatten copy",
                ));
            };
            let off = done as usize * BLOCK;
            let payload = &data[off..off + n as usize * BLOCK];
            let (e, stored) = record_entry(
                EntryKind::Copy,
                lineage,
                x,
                base,
                payload,
                comp.compress(payload),
                enc,
            );
            if !self.push_entry(STREAM_CLEANER, e, Some(&stored))? {
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    "no segment free for the flatten copy",
                ));
            }
            done += n;
        }
        self.flush_sealed().await
    }

    fn gc(&mut self, lineage: u32, chunks: &[u64]) -> Result<()> {
        let (views, barriers) = match self.cat.lineages.get(&lineage) {
            Some(l) => (self.cat.views(lineage), l.barriers.clone()),
            None => (Vec::new(), Vec::new()), // purge
        };
        for &c in chunks {
            let entries = self.chunk_entries(lineage, c)?;
            if entries.is_empty() {
                continue;
            }
            let plan = chunk::plan_gc(&entries, c, &views, &barriers);
            if !plan.is_empty() {
                self.apply_changes(plan, None);
            }
        }
        Ok(())
    }
}
