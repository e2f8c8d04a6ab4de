//! Runs operations against a pool on simulated devices and keeps the
//! [`Model`] in step; cuts the power and checks the recovered pool.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use edgevol_engine::device::{CutPolicy, Device, MemDevice, PowerRail};
use edgevol_engine::format::label::GroupKind;
use edgevol_engine::{CreateOptions, ErrorKind, Pool, PoolConfig, ReadSeg, Volume};
use futures::executor::block_on;
use rand::SeedableRng;

use crate::model::{
    block_data, content, describe, ensure, Ctx, Failure, MVol, Mix, Model, Op, BS, MAX_SNAPS,
    MAX_VOLS,
};

const MIB: u64 = 1 << 20;
/// Size of the devices of an added group.
const ADDED_DEVICE: u64 = 24 * MIB;
/// Groups a pool grows to at most (memory: every device is two images).
const MAX_GROUPS: usize = 3;
/// Bytes a device grows by per expand, and at most in all.
const GROW_STEP: u64 = 4 * MIB;
const GROW_MAX: u64 = 16 * MIB;

/// The devices of the simulated pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One device.
    Single,
    /// Two devices holding the same data.
    Mirror,
    /// Three devices, rows of two data columns and one parity column.
    Parity1,
}

impl Layout {
    /// Parse `single`, `mirror` or `parity1`.
    pub fn parse(s: &str) -> Option<Layout> {
        match s {
            "single" => Some(Layout::Single),
            "mirror" => Some(Layout::Mirror),
            "parity1" => Some(Layout::Parity1),
            _ => None,
        }
    }

    /// Kind, devices and device size of the first group (groups added
    /// later have the kind and count, and `ADDED_DEVICE` bytes each).
    fn group(self) -> (GroupKind, usize, u64) {
        match self {
            Layout::Single => (GroupKind::Single, 1, 96 * MIB),
            Layout::Mirror => (GroupKind::Mirror, 2, 96 * MIB),
            Layout::Parity1 => (GroupKind::Parity(1), 3, 64 * MIB),
        }
    }
}

/// Counters of what a harness did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Operations applied.
    pub ops: u64,
    /// Blocks written (data, not zeroes).
    pub blocks_written: u64,
    /// Power cuts recovered from.
    pub cuts: u64,
    /// Cuts that struck inside an operation (through the rail).
    pub cuts_inside_ops: u64,
    /// Those cuts by the kind of operation they struck (`Write`,
    /// `Snapshot`, `Replace`, ...).
    pub cuts_inside: std::collections::BTreeMap<String, u64>,
    /// Interrupted operations the pool recovered as not having happened.
    pub undone: u64,
    /// Asynchronous device ops that completed late (out of order).
    pub late_io_ops: u64,
}

/// A pool on simulated devices, the workload's model, and the checks.
pub struct Harness {
    devs: Vec<Arc<MemDevice>>,
    rail: Arc<PowerRail>,
    pool: Option<Pool>,
    model: Model,
    /// The model before the operation during which the rail cut the power:
    /// after recovery the pool must match this or `model` (atomicity).
    before_cut: Option<Model>,
    /// The operation the rail cut inside.
    cut_op: Option<String>,
    counts: Counts,
    /// Devices made so far (names of replacements).
    made: usize,
    /// Late, reordered completion of the engine's asynchronous I/O (as
    /// io_uring's), drawn from this seed; None: every op completes at once.
    late_io: Option<u64>,
    /// A replacement in progress: the old device's name and the position
    /// of the new one in `devs`. If a cut makes the pool forget it, the
    /// replacement is issued again after recovery, as an operator would.
    replacing: Option<(String, usize)>,
    /// `Op::Corrupt` damaged the first device and no scrub has repaired it
    /// since. A replace now would be a double fault (below).
    latent: bool,
    /// The pool's layout.
    layout: Layout,
}

fn config() -> PoolConfig {
    PoolConfig {
        memtable_bytes: 256 * 1024,
        cache_bytes: 4 * MIB,
        // Maintenance runs only when the workload asks (`Op::Maintain`), so
        // a seed replays the same device operations.
        background: false,
        scan_threads: 1,
        // Race the settler thread against the writer on every write (it
        // does no device I/O: the device operations of a seed stay).
        settle_low: 0,
        ..PoolConfig::default()
    }
}

/// The key of the encrypted volumes.
fn key() -> edgevol_engine::crypt::Secret {
    edgevol_engine::crypt::Secret::new(vec![0x5c; 32])
}

fn read_all(v: &Volume, what: &str) -> Result<Vec<u8>, Failure> {
    block_on(v.read(0, v.size()))
        .map(ReadSeg::concat)
        .ctx(format!("read {what}"))
}

/// Device `d{i}` of `size` bytes on `rail`, its asynchronous I/O late
/// by `late_io`'s draw (at most 3 polls: enough to reorder every op of a
/// batch or a flush against the others).
fn new_device(i: usize, size: u64, rail: &Arc<PowerRail>, late_io: Option<u64>) -> Arc<MemDevice> {
    let d = Arc::new(MemDevice::new(format!("d{i}"), size));
    d.attach_rail(rail.clone());
    if let Some(seed) = late_io {
        d.set_late_completions(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15), 3);
    }
    d
}

fn block_of(buf: &[u8], lba: u64) -> &[u8] {
    &buf[(lba * BS) as usize..((lba + 1) * BS) as usize]
}

impl Harness {
    /// A fresh pool with two volumes: "a" (lz4, the default) and "b"
    /// (zstd, AES-256-GCM), so every path runs over packed and sealed
    /// records.
    pub fn new(layout: Layout) -> Result<Harness, Failure> {
        Harness::with_io(layout, None)
    }

    /// As [`Harness::new`], with the engine's asynchronous device I/O
    /// completing late and out of order (drawn from `seed`), as it does
    /// through io_uring: the campaigns run the data path users run.
    pub fn with_late_io(layout: Layout, seed: u64) -> Result<Harness, Failure> {
        Harness::with_io(layout, Some(seed))
    }

    fn with_io(layout: Layout, late_io: Option<u64>) -> Result<Harness, Failure> {
        let (kind, n, size) = layout.group();
        let rail = Arc::new(PowerRail::default());
        let devs: Vec<Arc<MemDevice>> = (0..n)
            .map(|i| new_device(i, size, &rail, late_io))
            .collect();
        let group = devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect();
        let pool = Pool::create_groups(
            "p",
            vec![(kind, group)],
            &CreateOptions {
                segment_size: Some(MIB),
            },
            config(),
        )
        .ctx("create pool")?;
        pool.create_volume("a", crate::model::VOL_BLOCKS * BS, BTreeMap::new())
            .ctx("create a")?;
        let b_props = BTreeMap::from([
            ("compression".to_string(), "zstd".to_string()),
            ("encryption".to_string(), "aes-256-gcm".to_string()),
            ("keyformat".to_string(), "raw".to_string()),
        ]);
        pool.create_volume_with_key("b", crate::model::VOL_BLOCKS * BS, b_props, Some(key()))
            .ctx("create b")?;
        let mut model = Model::default();
        for name in ["a", "b"] {
            model.vols.insert(
                name.into(),
                MVol {
                    blocks: crate::model::VOL_BLOCKS,
                    dirty_known: true,
                    ..MVol::default()
                },
            );
        }
        Ok(Harness {
            devs,
            rail,
            pool: Some(pool),
            model,
            before_cut: None,
            cut_op: None,
            counts: Counts::default(),
            made: n,
            late_io,
            replacing: None,
            latent: false,
            layout,
        })
    }

    /// The power supply of the devices: arm it to cut inside an operation.
    pub fn rail(&self) -> &PowerRail {
        &self.rail
    }

    /// What the harness did so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The pool's status (health, scans, counters).
    pub fn status(&self) -> edgevol_engine::PoolStatus {
        self.pool().status()
    }

    /// The model as it stands.
    pub fn model(&self) -> &Model {
        &self.model
    }

    fn pool(&self) -> &Pool {
        self.pool
            .as_ref()
            .expect("the harness always holds an open pool")
    }

    fn open(&self, name: &str) -> Result<Volume, Failure> {
        self.pool().open_volume(name).ctx(format!("open {name}"))
    }

    /// A control operation completed: it wrote a checkpoint and flushed,
    /// unless the rail cut the power before (then nothing new is durable).
    fn settle(&mut self) {
        if !self.rail.fired() {
            self.model.settle_all();
        }
    }

    /// Apply one operation to the pool and the model. After the rail cut
    /// the power, call [`Harness::crash`] before the next operation.
    pub fn step(&mut self, op: &Op) -> Result<(), Failure> {
        if let Op::Crash { policy, seed } = *op {
            return self.crash(policy, seed);
        }
        ensure!(
            !self.rail.fired(),
            "step after the power was cut (call crash first)"
        );
        // Only a cut inside this operation needs the model from before it.
        let before = self.rail.is_armed().then(|| self.model.clone());
        self.apply(op)?;
        self.counts.ops += 1;
        if self.rail.fired() {
            self.before_cut = before;
            self.cut_op = Some(op.kind().to_string());
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), Failure> {
        match op.clone() {
            Op::Write { vol, lba, n, fua } => self.write(vol, lba, n, fua)?,
            Op::Partial {
                vol,
                lba,
                from,
                len,
                zero,
                fua,
            } => self.partial(vol, lba * BS + u64::from(from), u64::from(len), zero, fua)?,
            Op::Trim { vol, lba, n } | Op::Zero { vol, lba, n, .. } => {
                let Some(name) = self.model.vol_name(vol) else {
                    return Ok(());
                };
                let blocks = self.model.vols[&name].blocks;
                let lba = lba % blocks;
                let n = n.min(blocks - lba);
                let v = self.open(&name)?;
                match op {
                    Op::Zero { no_hole, .. } => {
                        block_on(v.write_zeroes(lba * BS, n * BS, *no_hole, false))
                            .ctx(format!("write zeroes to {name}"))?
                    }
                    _ => block_on(v.trim(lba * BS, n * BS, false)).ctx(format!("trim {name}"))?,
                }
                let m = self.model.vols.get_mut(&name).expect("listed volume");
                for x in lba..lba + n {
                    m.cells.entry(x).or_default().set(0);
                }
                m.dirty = true;
            }
            Op::Flush => {
                if let Some(name) = self.model.vol_name(0) {
                    block_on(self.open(&name)?.flush()).ctx("flush")?;
                    self.settle();
                }
            }
            Op::Snapshot { vol } => self.snapshot(vol)?,
            Op::Rollback { vol, snap } => self.rollback(vol, snap)?,
            Op::Clone { vol, snap } => {
                let Some(name) = self.model.vol_name(vol) else {
                    return Ok(());
                };
                let m = &self.model.vols[&name];
                if self.model.vols.len() >= MAX_VOLS || m.snaps.is_empty() {
                    return Ok(());
                }
                let (sname, img, blocks) = m.snaps[snap % m.snaps.len()].clone();
                self.model.next_name += 1;
                let c = format!("c{}", self.model.next_name);
                self.pool()
                    .clone_snapshot(&name, &sname, &c)
                    .ctx(format!("clone {name}@{sname}"))?;
                let mut cm = MVol::from_image(blocks, &img);
                cm.origin = Some(name);
                self.model.vols.insert(c, cm);
                self.settle();
            }
            Op::DestroySnapshot { vol, snap } => self.destroy_snapshot(vol, snap)?,
            Op::DestroyVolume { vol } => {
                let Some(name) = self.model.vol_name(vol) else {
                    return Ok(());
                };
                if self.model.vols.len() <= 1 {
                    return Ok(());
                }
                let has_deps = self
                    .model
                    .vols
                    .keys()
                    .any(|k| self.model.depends_on(k, &name));
                match self.pool().destroy_volume(&name, false) {
                    Ok(()) => {
                        ensure!(
                            !has_deps,
                            "destroying {name} must be refused: it has clones"
                        );
                        self.model.vols.remove(&name);
                        self.settle();
                    }
                    Err(e) => {
                        ensure!(has_deps, "destroy of {name} failed: {e}");
                        ensure!(e.kind() == ErrorKind::Busy, "destroy of {name}: {e}");
                    }
                }
            }
            Op::Resize { vol, blocks } => {
                let Some(name) = self.model.vol_name(vol) else {
                    return Ok(());
                };
                self.pool()
                    .resize_volume(&name, blocks * BS, true)
                    .ctx(format!("resize {name}"))?;
                let m = self.model.vols.get_mut(&name).expect("listed volume");
                if blocks < m.blocks {
                    m.cells.retain(|l, _| *l < blocks);
                    m.dirty = true;
                }
                m.blocks = blocks;
                self.settle();
            }
            Op::Promote { vol } => {
                let Some(name) = self.model.vol_name(vol) else {
                    return Ok(());
                };
                self.pool().promote(&name).ctx(format!("promote {name}"))?;
                // Flattening changes no content.
                self.model
                    .vols
                    .get_mut(&name)
                    .expect("listed volume")
                    .origin = None;
                self.settle();
            }
            Op::Maintain { clean } => {
                if clean {
                    self.pool().clean_now(4).ctx("clean")?;
                }
                self.pool().sync_maintenance().ctx("maintenance")?;
                self.settle();
            }
            Op::Read { vol, lba, n } => self.read(vol, lba, n)?,
            Op::Scrub => {
                self.pool().scrub_start().ctx("scrub")?;
                self.pool().wait_scans();
                self.scans_succeeded("scrub")?;
                self.latent &= self.rail.fired();
            }
            Op::Replace { member } => self.replace(member)?,
            Op::Corrupt { at } => {
                // Only the first device: with one bad member in a group,
                // every block still has a good copy or can be rebuilt —
                // unless a member is being rebuilt (a resilver after a
                // cut), which is a double fault: wait for it.
                if self.layout != Layout::Single {
                    self.pool().wait_scans();
                    self.latent = true;
                    let d = &self.devs[0];
                    let start = edgevol_engine::layout::DATA_START;
                    let sectors = (d.len() - start) / 512;
                    d.corrupt(start + at % sectors * 512, 512);
                }
            }
            Op::Grow { add: true } => self.add_group()?,
            Op::Grow { add: false } => self.expand()?,
            Op::Crash { .. } => unreachable!("handled by step"),
        }
        Ok(())
    }

    fn replace(&mut self, member: usize) -> Result<(), Failure> {
        if self.layout == Layout::Single {
            return Ok(());
        }
        // `pool replace` drops the old member at once and rebuilds the new
        // one from the others without checksums (docs/redundancy.md): a
        // latent bad sector on another member of the group is then a
        // second fault, and data is lost, as on any single-parity array.
        // An operator scrubs first; so does the workload.
        if self.latent {
            self.pool().scrub_start().ctx("scrub before replace")?;
            self.pool().wait_scans();
            self.scans_succeeded("scrub before replace")?;
            if self.rail.fired() {
                return Ok(());
            }
        }
        let i = member % self.devs.len();
        let old = self.devs[i].clone();
        let dev = new_device(self.made, old.len(), &self.rail, self.late_io);
        self.made += 1;
        self.devs[i] = dev.clone();
        self.replacing = Some((old.describe(), i));
        self.counts.late_io_ops += old.late_ops();
        self.pool()
            .replace_with(&old.describe(), dev)
            .ctx(format!("replace {}", old.describe()))?;
        self.pool().wait_scans();
        self.scans_succeeded("resilver")?;
        if !self.rail.fired() {
            self.replacing = None;
        }
        Ok(())
    }

    /// Add a group like the first one (up to `MAX_GROUPS`).
    fn add_group(&mut self) -> Result<(), Failure> {
        let (kind, n, _) = self.layout.group();
        if self.pool().status().groups.len() >= MAX_GROUPS {
            return Ok(());
        }
        let mut group: Vec<Arc<dyn Device>> = Vec::new();
        for _ in 0..n {
            let d = new_device(self.made, ADDED_DEVICE, &self.rail, self.late_io);
            self.made += 1;
            self.devs.push(d.clone());
            group.push(d);
        }
        self.pool()
            .add_group(kind, group, false)
            .ctx("add a group")?;
        // A mirror or parity group that got no uberblock before a cut is
        // resilvered at import; otherwise nothing runs.
        self.pool().wait_scans();
        Ok(())
    }

    /// Grow every device by `GROW_STEP` (up to `GROW_MAX` past its first
    /// size) and expand the pool into it.
    fn expand(&mut self) -> Result<(), Failure> {
        let (_, _, first) = self.layout.group();
        for d in &self.devs {
            let base = if d.len() >= first {
                first
            } else {
                ADDED_DEVICE
            };
            if d.len() + GROW_STEP <= base + GROW_MAX {
                d.grow(d.len() + GROW_STEP);
            }
        }
        let before = self.pool().status().size;
        let grown = self.pool().expand(None).ctx("expand")?;
        let after = self.pool().status().size;
        let added: u64 = grown.iter().map(|g| g.bytes).sum();
        ensure!(
            after == before + added,
            "expand reported {added} bytes more, the pool grew from {before} to {after}"
        );
        Ok(())
    }

    /// The last scrub and resilver did not fail, and every device is
    /// ONLINE again.
    fn scans_succeeded(&self, what: &str) -> Result<(), Failure> {
        let st = self.pool().status();
        for s in [&st.scrub, &st.resilver].into_iter().flatten() {
            ensure!(
                s.state != "failed",
                "{what}: the {} failed: {:?}",
                s.kind,
                s.error
            );
        }
        ensure!(
            st.state == "ONLINE",
            "{what}: pool is {} afterwards",
            st.state
        );
        Ok(())
    }

    fn write(&mut self, vol: usize, lba: u64, n: u64, fua: bool) -> Result<(), Failure> {
        let Some(name) = self.model.vol_name(vol) else {
            return Ok(());
        };
        let blocks = self.model.vols[&name].blocks;
        let lba = lba % blocks;
        let n = n.min(blocks - lba);
        let mut data = Vec::with_capacity((n * BS) as usize);
        let first = self.model.next_tag + 1;
        for i in 0..n {
            data.extend_from_slice(&block_data(first + i, lba + i));
        }
        self.model.next_tag += n;
        block_on(self.open(&name)?.write(lba * BS, Bytes::from(data), fua))
            .ctx(format!("write {n} blocks at {lba} of {name}"))?;
        let m = self.model.vols.get_mut(&name).expect("listed volume");
        for i in 0..n {
            m.cells.entry(lba + i).or_default().set(first + i);
        }
        m.dirty = true;
        self.counts.blocks_written += n;
        if fua {
            // A FUA write completes after a flush of the log.
            self.settle();
        }
        Ok(())
    }

    /// Write (or trim, `zero`) `len` bytes at byte `at`, at any alignment;
    /// each block touched gets a new tag, a [`Mix`] where it is touched
    /// in part.
    fn partial(
        &mut self,
        vol: usize,
        at: u64,
        len: u64,
        zero: bool,
        fua: bool,
    ) -> Result<(), Failure> {
        let Some(name) = self.model.vol_name(vol) else {
            return Ok(());
        };
        let size = self.model.vols[&name].blocks * BS;
        let start = at % size;
        let end = (start + len).min(size);
        let mut data = Vec::new();
        let mut tags = Vec::new();
        for b in start / BS..end.div_ceil(BS) {
            let (from, to) = (start.max(b * BS) - b * BS, end.min(b * BS + BS) - b * BS);
            let whole = from == 0 && to == BS;
            let tag = if zero && whole {
                0
            } else {
                self.model.next_tag += 1;
                self.model.next_tag
            };
            if !whole {
                let base = self.model.vols[&name]
                    .cells
                    .get(&b)
                    .map_or(0, |c| c.latest());
                let mix = Mix {
                    base,
                    from: from as u16,
                    to: to as u16,
                    zero,
                };
                self.model.mixes.insert(tag, mix);
            }
            if !zero {
                data.extend_from_slice(&block_data(tag, b)[from as usize..to as usize]);
            }
            tags.push((b, tag));
        }
        let v = self.open(&name)?;
        let what = format!(
            "{} {len} bytes at byte {start} of {name}",
            if zero { "trim" } else { "write" }
        );
        if zero {
            block_on(v.trim(start, end - start, fua)).ctx(what)?;
        } else {
            block_on(v.write(start, Bytes::from(data), fua)).ctx(what)?;
        }
        let m = self.model.vols.get_mut(&name).expect("listed volume");
        for (b, tag) in tags {
            m.cells.entry(b).or_default().set(tag);
        }
        m.dirty = true;
        if fua {
            self.settle();
        }
        Ok(())
    }

    fn read(&mut self, vol: usize, lba: u64, n: u64) -> Result<(), Failure> {
        let Some(name) = self.model.vol_name(vol) else {
            return Ok(());
        };
        let m = &self.model.vols[&name];
        let lba = lba % m.blocks;
        let n = n.min(m.blocks - lba);
        let got = ReadSeg::concat(
            block_on(self.open(&name)?.read(lba * BS, n * BS)).ctx(format!("read {name}"))?,
        );
        for i in 0..n {
            let tag = m.cells.get(&(lba + i)).map_or(0, |c| c.latest());
            ensure!(
                block_of(&got, i) == self.model.content(tag, lba + i).as_slice(),
                "read of {name} block {} is wrong (want tag {tag})",
                lba + i
            );
        }
        Ok(())
    }

    fn snapshot(&mut self, vol: usize) -> Result<(), Failure> {
        let Some(name) = self.model.vol_name(vol) else {
            return Ok(());
        };
        if self.model.vols[&name].snaps.len() >= MAX_SNAPS {
            // Keep the pool from filling: retire the oldest instead.
            return self.destroy_snapshot(vol, 0);
        }
        self.model.next_name += 1;
        let s = format!("s{}", self.model.next_name);
        self.pool()
            .snapshot(&name, &s)
            .ctx(format!("snapshot {name}"))?;
        let m = self.model.vols.get_mut(&name).expect("listed volume");
        let img = m.latest();
        let b = m.blocks;
        m.snaps.push((s.clone(), img, b));
        m.dirty = false;
        m.dirty_known = true;
        m.clean_as = Some(s);
        self.settle();
        Ok(())
    }

    fn rollback(&mut self, vol: usize, snap: usize) -> Result<(), Failure> {
        let Some(name) = self.model.vol_name(vol) else {
            return Ok(());
        };
        let m = &self.model.vols[&name];
        if m.snaps.is_empty() {
            return Ok(());
        }
        let (sname, img, sblocks) = m.snaps[snap % m.snaps.len()].clone();
        let auto = self
            .pool()
            .rollback(&name, &sname)
            .ctx(format!("rollback {name} to {sname}"))?;
        let m = self.model.vols.get_mut(&name).expect("listed volume");
        if m.dirty_known {
            ensure!(
                auto.is_some() == m.dirty,
                "rollback of {name}: automatic snapshot {auto:?}, but the head changed: {}",
                m.dirty
            );
        }
        if let Some(a) = auto {
            let cur = m.latest();
            let b = m.blocks;
            m.snaps.push((a, cur, b));
        }
        let snaps = std::mem::take(&mut m.snaps);
        let origin = m.origin.clone();
        *m = MVol::from_image(sblocks, &img);
        m.snaps = snaps;
        m.origin = origin;
        m.clean_as = Some(sname);
        self.settle();
        Ok(())
    }

    fn destroy_snapshot(&mut self, vol: usize, snap: usize) -> Result<(), Failure> {
        let Some(name) = self.model.vol_name(vol) else {
            return Ok(());
        };
        let m = &self.model.vols[&name];
        if m.snaps.is_empty() {
            return Ok(());
        }
        let i = snap % m.snaps.len();
        let sname = m.snaps[i].0.clone();
        self.pool()
            .destroy_snapshot(&name, &sname)
            .ctx(format!("destroy {name}@{sname}"))?;
        let m = self.model.vols.get_mut(&name).expect("listed volume");
        m.snaps.remove(i);
        if m.clean_as.as_deref() == Some(sname.as_str()) {
            // The head's content is kept nowhere else now.
            m.clean_as = None;
            m.dirty = true;
        }
        self.settle();
        Ok(())
    }

    /// Cut the power now. Writes not flushed before the cut are dropped,
    /// kept or torn by `policy` (0 drops, 1 keeps, 2 mixes; `seed` picks
    /// which); then the pool is imported again and checked against the
    /// model: every volume, every snapshot, the names, `pool check`.
    pub fn crash(&mut self, policy: u8, seed: u64) -> Result<(), Failure> {
        let pool = self.pool.take().expect("an open pool");
        for d in &self.devs {
            d.power_cut();
        }
        pool.abandon();
        if self.rail.fired() {
            self.counts.cuts_inside_ops += 1;
            let kind = self.cut_op.take().unwrap_or_else(|| "between".into());
            *self.counts.cuts_inside.entry(kind).or_default() += 1;
        }
        self.rail.disarm();
        let policy = match policy {
            0 => CutPolicy::DROP_ALL,
            1 => CutPolicy::KEEP_ALL,
            _ => CutPolicy::CHAOS,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for d in &self.devs {
            d.restore_power(policy, &mut rng);
        }
        self.pool = Some(self.reopen()?);
        self.counts.cuts += 1;
        // A resilver the cut interrupted (or one a stale member needs)
        // starts again at import and completes. A replacement whose new
        // label never became durable is forgotten: the pool is DEGRADED
        // without the old device, and the operator replaces it again.
        self.pool().wait_scans();
        if let Some((old, i)) = self.replacing.take() {
            if self.pool().status().state == "DEGRADED" {
                self.pool()
                    .replace_with(&old, self.devs[i].clone())
                    .ctx(format!("replace {old} again after the cut"))?;
                self.pool().wait_scans();
            }
        }
        self.scans_succeeded("recovery")?;
        // Devices of an add the cut undid are not the pool's.
        let members = self.pool().paths();
        self.devs.retain(|d| members.contains(&d.describe()));

        // The interrupted operation took effect whole, or not at all.
        let after = self.model.clone();
        let outcome = match self.verify(&after, true) {
            Ok(()) => Ok(after.clone()),
            Err(e_after) => match self.before_cut.take() {
                Some(before) => match self.verify(&before, true) {
                    Ok(()) => {
                        self.counts.undone += 1;
                        Ok(before)
                    }
                    Err(e_before) => Err(Failure(format!(
                        "after the cut the pool matches neither the model after the interrupted operation ({e_after}) nor before it ({e_before})"
                    ))),
                },
                None => Err(e_after),
            },
        };
        self.before_cut = None;
        let mut m = outcome?;
        // Tags and names stay unique across both histories.
        m.next_tag = after.next_tag;
        m.next_name = after.next_name;
        self.model = m;
        self.adopt_actual()?;
        self.check_clean()
    }

    fn reopen(&self) -> Result<Pool, Failure> {
        let devs = self
            .devs
            .iter()
            .map(|d| d.clone() as Arc<dyn Device>)
            .collect();
        let pool = Pool::open(devs, config()).ctx("import after the power cut")?;
        for v in pool.volumes() {
            if !pool.key_available(&v.name).ctx("key status")? {
                pool.load_key(&v.name, Some(key()))
                    .ctx(format!("load key of {}", v.name))?;
            }
        }
        Ok(pool)
    }

    /// Check the pool against `m`: volume names, sizes and blocks,
    /// snapshot names and images. `after_crash`: a block may hold any value
    /// written since its last flush.
    pub fn verify(&self, m: &Model, after_crash: bool) -> Result<(), Failure> {
        let vols = self.pool().volumes();
        let names: BTreeSet<&str> = vols.iter().map(|v| v.name.as_str()).collect();
        let want: BTreeSet<&str> = m.vols.keys().map(String::as_str).collect();
        ensure!(
            names == want,
            "volumes are {names:?}, the model has {want:?}"
        );
        for v in &vols {
            let origin = v.origin.as_deref().and_then(|o| o.split('@').next());
            let model = m.vols[&v.name].origin.as_deref();
            ensure!(
                origin == model,
                "volume {} is a clone of {origin:?}, the model says {model:?}",
                v.name
            );
        }
        for (name, mv) in &m.vols {
            self.verify_volume(name, mv, after_crash)?;
        }
        Ok(())
    }

    fn verify_volume(&self, name: &str, m: &MVol, after_crash: bool) -> Result<(), Failure> {
        let v = self.open(name)?;
        ensure!(
            v.size() == m.blocks * BS,
            "volume {name} is {} bytes, the model says {}",
            v.size(),
            m.blocks * BS
        );
        let got = read_all(&v, name)?;
        for lba in 0..m.blocks {
            let b = block_of(&got, lba);
            let cell = m.cells.get(&lba).cloned().unwrap_or_default();
            let ok = if after_crash {
                cell.possible()
                    .any(|t| b == self.model.content(t, lba).as_slice())
            } else {
                b == self.model.content(cell.latest(), lba).as_slice()
            };
            ensure!(
                ok,
                "volume {name} block {lba} holds unexpected data (model {cell:?}; it holds {})",
                describe(b)
            );
        }
        let snaps: Vec<String> = self
            .pool()
            .snapshots(name)
            .ctx(format!("list snapshots of {name}"))?
            .into_iter()
            .map(|s| s.name)
            .collect();
        let mut want: Vec<String> = m.snaps.iter().map(|s| s.0.clone()).collect();
        let mut have = snaps.clone();
        want.sort();
        have.sort();
        ensure!(
            have == want,
            "snapshots of {name} are {snaps:?}, the model has {want:?}"
        );
        for (sname, img, sblocks) in &m.snaps {
            let s = self.open(&format!("{name}@{sname}"))?;
            ensure!(
                s.size() == sblocks * BS,
                "snapshot {name}@{sname} changed size"
            );
            let got = read_all(&s, sname)?;
            for lba in 0..*sblocks {
                let want = self.model.content(img.get(&lba).copied().unwrap_or(0), lba);
                ensure!(
                    block_of(&got, lba) == want.as_slice(),
                    "snapshot {name}@{sname} block {lba} changed (it holds {})",
                    describe(block_of(&got, lba))
                );
            }
        }
        Ok(())
    }

    /// After a crash, take what each block actually holds (one of the
    /// values the model allowed) as the new durable truth.
    fn adopt_actual(&mut self) -> Result<(), Failure> {
        let names: Vec<String> = self.model.vols.keys().cloned().collect();
        for name in names {
            let got = read_all(&self.open(&name)?, &name)?;
            let model = &mut self.model;
            let m = model.vols.get_mut(&name).expect("listed volume");
            for lba in 0..m.blocks {
                let b = block_of(&got, lba);
                let cell = m.cells.entry(lba).or_default();
                let actual = cell
                    .possible()
                    .find(|t| b == content(&model.mixes, *t, lba).as_slice())
                    .unwrap_or(0);
                cell.durable = actual;
                cell.pending.clear();
            }
            m.dirty_known = false;
        }
        Ok(())
    }

    /// `pool check` finds nothing wrong (map, segments, space accounting).
    pub fn check_clean(&self) -> Result<(), Failure> {
        let r = self.pool().check().ctx("pool check")?;
        ensure!(r.is_clean(), "pool check found problems: {:#?}", r.errors);
        Ok(())
    }

    /// The end of a workload: everything reads back exactly, maintenance
    /// runs, the pool closes cleanly, imports again and still matches.
    pub fn finish(mut self) -> Result<Counts, Failure> {
        self.rail.disarm();
        let m = self.model.clone();
        self.verify(&m, false)?;
        self.pool().sync_maintenance().ctx("maintenance")?;
        self.check_clean()?;
        self.pool
            .take()
            .expect("an open pool")
            .close()
            .ctx("close")?;
        self.pool = Some(self.reopen()?);
        self.verify(&m, false)?;
        self.check_clean()?;
        self.counts.late_io_ops += self.devs.iter().map(|d| d.late_ops()).sum::<u64>();
        Ok(self.counts)
    }
}
