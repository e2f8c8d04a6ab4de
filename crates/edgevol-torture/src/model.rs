//! The model a power-cut campaign checks the engine against: what every
//! block of every volume and snapshot may read as, and which names exist.
//!
//! Invariants checked (DESIGN.md):
//! 1. after a crash every block reads its last flushed value or a value
//!    written later; flushed and FUA writes always survive;
//! 2. an operation the power cut interrupted took effect whole or not at
//!    all (the pool matches the model before it or the model after it);
//! 3. unwritten and trimmed blocks read as zeroes; no volume sees another's
//!    data (each block's bytes encode its tag and LBA);
//! 4. snapshots are immutable; snapshot, clone, rollback, destroy and
//!    resize are atomic;
//! 5. `pool check` is clean after every recovery: map, segments and space
//!    accounting agree (no leaked or doubly freed space).

use std::collections::BTreeMap;
use std::fmt;

use rand::Rng;

/// Blocks of each volume the campaign creates.
pub const VOL_BLOCKS: u64 = 512;
/// Block size of the model.
pub const BS: u64 = 4096;
/// Snapshots kept per volume; a snapshot beyond destroys the oldest.
pub const MAX_SNAPS: usize = 6;
/// Volumes (clones included) at most.
pub const MAX_VOLS: usize = 6;

/// One step of a workload. Volume and snapshot numbers pick among those that
/// exist (modulo their count), so any sequence is valid.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Write `n` blocks of fresh data at `lba`.
    Write {
        vol: usize,
        lba: u64,
        n: u64,
        fua: bool,
    },
    /// Discard `n` blocks.
    Trim { vol: usize, lba: u64, n: u64 },
    /// Write zeroes over `n` blocks (`no_hole`: keep them allocated).
    Zero {
        vol: usize,
        lba: u64,
        n: u64,
        no_hole: bool,
    },
    /// Write (or, `zero`, trim) `len` bytes from byte `from` of block
    /// `lba`: any alignment, so the partial blocks at either end are
    /// read-modify-written by the engine.
    Partial {
        vol: usize,
        lba: u64,
        from: u16,
        len: u32,
        zero: bool,
        fua: bool,
    },
    /// Flush (all volumes: the pool has one log).
    Flush,
    /// Snapshot the volume.
    Snapshot { vol: usize },
    /// Roll the volume back (or forward) to a snapshot.
    Rollback { vol: usize, snap: usize },
    /// Clone a snapshot into a new volume.
    Clone { vol: usize, snap: usize },
    /// Destroy a snapshot.
    DestroySnapshot { vol: usize, snap: usize },
    /// Destroy a volume (refused while clones depend on it).
    DestroyVolume { vol: usize },
    /// Grow or shrink a volume.
    Resize { vol: usize, blocks: u64 },
    /// Detach a clone from its origin.
    Promote { vol: usize },
    /// Run maintenance (memtable flush, checkpoint), with the cleaner.
    Maintain { clean: bool },
    /// Cut the power between operations: 0 drops, 1 keeps, 2 mixes and tears
    /// the unflushed writes.
    Crash { policy: u8, seed: u64 },
    /// Read and compare.
    Read { vol: usize, lba: u64, n: u64 },
    /// Scrub the pool (verify and repair every copy) and wait for it.
    Scrub,
    /// Replace member `member` of a redundant pool with a blank device and
    /// wait for the resilver (nothing on a single device).
    Replace { member: usize },
    /// Silent corruption: flip 512 bytes at `at` (modulo the data area) of
    /// the first device of a redundant pool; reads must heal it (nothing
    /// on a single device).
    Corrupt { at: u64 },
    /// Grow the pool while it serves: add a group like the first (`add`,
    /// up to a few) or grow every device and expand into the new space.
    Grow { add: bool },
}

impl Op {
    /// The operation's name (`Write`, `Snapshot`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Write { .. } => "Write",
            Op::Trim { .. } => "Trim",
            Op::Zero { .. } => "Zero",
            Op::Partial { zero: false, .. } => "WritePart",
            Op::Partial { zero: true, .. } => "TrimPart",
            Op::Flush => "Flush",
            Op::Snapshot { .. } => "Snapshot",
            Op::Rollback { .. } => "Rollback",
            Op::Clone { .. } => "Clone",
            Op::DestroySnapshot { .. } => "DestroySnapshot",
            Op::DestroyVolume { .. } => "DestroyVolume",
            Op::Resize { .. } => "Resize",
            Op::Promote { .. } => "Promote",
            Op::Maintain { .. } => "Maintain",
            Op::Crash { .. } => "Crash",
            Op::Read { .. } => "Read",
            Op::Scrub => "Scrub",
            Op::Replace { .. } => "Replace",
            Op::Corrupt { .. } => "Corrupt",
            Op::Grow { add: true } => "AddGroup",
            Op::Grow { add: false } => "Expand",
        }
    }

    /// A random operation (no `Crash`: campaigns cut through the rail),
    /// weighted like a busy host: mostly writes and reads.
    pub fn random(rng: &mut impl Rng) -> Op {
        let vol = rng.random_range(0..8);
        let lba = rng.random_range(0..VOL_BLOCKS);
        let snap = rng.random_range(0..8);
        match rng.random_range(0..100u32) {
            0..4 => Op::Partial {
                vol,
                lba,
                from: rng.random_range(0..BS as u16),
                // Within a block, across one boundary, or a few blocks.
                len: rng.random_range(1..3 * BS as u32),
                zero: rng.random_bool(0.25),
                fua: rng.random_bool(0.1),
            },
            4..34 => {
                // Mostly small writes, some up to 1 MiB.
                let n = if rng.random_bool(0.1) {
                    rng.random_range(1..=256)
                } else {
                    rng.random_range(1..48)
                };
                Op::Write {
                    vol,
                    lba,
                    n,
                    fua: rng.random_bool(0.1),
                }
            }
            34..40 => Op::Trim {
                vol,
                lba,
                n: rng.random_range(1..200),
            },
            40..44 => Op::Zero {
                vol,
                lba,
                n: rng.random_range(1..100),
                no_hole: rng.random(),
            },
            44..51 => Op::Flush,
            51..58 => Op::Snapshot { vol },
            58..62 => Op::Rollback { vol, snap },
            62..65 => Op::Clone { vol, snap },
            65..69 => Op::DestroySnapshot { vol, snap },
            69..71 => Op::DestroyVolume { vol },
            71..73 => Op::Resize {
                vol,
                blocks: rng.random_range(64..VOL_BLOCKS + 128),
            },
            73..74 => Op::Promote { vol },
            74..78 => Op::Maintain {
                clean: rng.random(),
            },
            78..79 => Op::Scrub,
            79..80 => Op::Replace {
                member: rng.random_range(0..3),
            },
            80..82 => Op::Corrupt { at: rng.random() },
            82..83 => Op::Grow { add: rng.random() },
            _ => Op::Read {
                vol,
                lba,
                n: rng.random_range(1..64),
            },
        }
    }
}

/// A check that failed: what the engine did against what the model allows.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

/// Fail with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::model::Failure(format!($($arg)+)));
        }
    };
}
pub(crate) use ensure;

/// Attach what was being done to an engine error.
pub(crate) trait Ctx<T> {
    fn ctx(self, what: impl fmt::Display) -> Result<T, Failure>;
}

impl<T> Ctx<T> for edgevol_engine::Result<T> {
    fn ctx(self, what: impl fmt::Display) -> Result<T, Failure> {
        self.map_err(|e| Failure(format!("{what}: {e}")))
    }
}

/// What a block may read as.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cell {
    /// Tag as of the last flush (0 = zeroes).
    pub durable: u64,
    /// Tags written since, oldest first.
    pub pending: Vec<u64>,
}

impl Cell {
    /// The tag a read returns while the power stays on.
    pub fn latest(&self) -> u64 {
        self.pending.last().copied().unwrap_or(self.durable)
    }
    pub(crate) fn set(&mut self, tag: u64) {
        self.pending.push(tag);
    }
    fn settle(&mut self) {
        self.durable = self.latest();
        self.pending.clear();
    }
    /// Every tag a read may return after a power cut.
    pub fn possible(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.durable).chain(self.pending.iter().copied())
    }
}

/// A snapshot: name, block image (tag per LBA) and size in blocks.
pub type Snap = (String, BTreeMap<u64, u64>, u64);

/// One volume of the model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MVol {
    pub blocks: u64,
    pub cells: BTreeMap<u64, Cell>,
    pub snaps: Vec<Snap>,
    pub origin: Option<String>,
    /// Written since the last snapshot or rollback.
    pub dirty: bool,
    /// Whether `dirty` is known (not after a crash).
    pub dirty_known: bool,
    /// The snapshot the head equals while not dirty.
    pub clean_as: Option<String>,
}

impl MVol {
    /// A volume whose blocks are `img`, durable.
    pub fn from_image(blocks: u64, img: &BTreeMap<u64, u64>) -> MVol {
        MVol {
            blocks,
            cells: img
                .iter()
                .map(|(l, v)| {
                    (
                        *l,
                        Cell {
                            durable: *v,
                            pending: vec![],
                        },
                    )
                })
                .collect(),
            dirty_known: true,
            ..MVol::default()
        }
    }

    /// The current image: tag per written LBA.
    pub fn latest(&self) -> BTreeMap<u64, u64> {
        self.cells
            .iter()
            .map(|(l, c)| (*l, c.latest()))
            .filter(|(_, v)| *v != 0)
            .collect()
    }
}

/// A block written in part: the block of tag `base` with bytes
/// `from..to` replaced by those of its own tag's block (or zeroed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    pub base: u64,
    pub from: u16,
    pub to: u16,
    pub zero: bool,
}

/// Every volume of the pool as the workload left it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    pub vols: BTreeMap<String, MVol>,
    /// Tags of blocks written in part, and how to make their content.
    pub mixes: BTreeMap<u64, Mix>,
    /// Last tag handed out (tags are never reused).
    pub next_tag: u64,
    /// Last name number handed out.
    pub next_name: u64,
}

impl Model {
    /// The name of volume number `i` (modulo the count), if any exists.
    pub fn vol_name(&self, i: usize) -> Option<String> {
        if self.vols.is_empty() {
            return None;
        }
        self.vols.keys().nth(i % self.vols.len()).cloned()
    }

    /// Everything written so far is durable (a flush or checkpoint
    /// completed).
    pub fn settle_all(&mut self) {
        for v in self.vols.values_mut() {
            for c in v.cells.values_mut() {
                c.settle();
            }
        }
    }

    /// The content of a block that holds tag `tag` at `lba` ([`content`]).
    pub fn content(&self, tag: u64, lba: u64) -> Vec<u8> {
        content(&self.mixes, tag, lba)
    }

    /// Whether `who` is a clone (directly or not) of `on`.
    pub fn depends_on(&self, who: &str, on: &str) -> bool {
        let mut cur = self.vols.get(who).and_then(|v| v.origin.clone());
        let mut hops = 0;
        while let Some(o) = cur {
            if o == on {
                return true;
            }
            cur = self.vols.get(&o).and_then(|v| v.origin.clone());
            hops += 1;
            if hops > 100 {
                break;
            }
        }
        false
    }
}

/// The content of a block that holds tag `tag` at `lba`: the generated
/// block ([`block_data`]), or for a block written in part (`mixes`), its
/// base with the written bytes laid over.
pub fn content(mixes: &BTreeMap<u64, Mix>, tag: u64, lba: u64) -> Vec<u8> {
    let mut chain = Vec::new();
    let mut t = tag;
    while let Some(m) = mixes.get(&t) {
        chain.push((t, *m));
        t = m.base;
    }
    let mut b = block_data(t, lba);
    for (t, m) in chain.into_iter().rev() {
        let r = usize::from(m.from)..usize::from(m.to);
        if m.zero {
            b[r].fill(0);
        } else {
            b[r.clone()].copy_from_slice(&block_data(t, lba)[r]);
        }
    }
    b
}

/// The generated content of tag `tag` at `lba` (tag 0: zeroes).
/// The first half is pseudo-random (so compression has real work and the
/// pool fills), the second a pattern; both encode (tag, lba), so a block
/// that lands in the wrong place or volume cannot pass.
pub fn block_data(tag: u64, lba: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS as usize];
    if tag == 0 {
        return b;
    }
    let (random, pattern) = b.split_at_mut(BS as usize / 2);
    let mut x = tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ lba.wrapping_add(1);
    for w in random.chunks_mut(8) {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        w.copy_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    for (i, w) in pattern.chunks_mut(16).enumerate() {
        w[..8].copy_from_slice(&tag.to_le_bytes());
        w[8..16].copy_from_slice(&(lba ^ (i as u64) << 48).to_le_bytes());
    }
    b
}

/// What a block that failed verification holds, for the report: the
/// (tag, lba) pairs its pattern half carries, in runs of 16-byte words
/// (a block written in part shows several), and zeroed runs. Tells a
/// stale or torn block from one that landed at the wrong place.
pub fn describe(b: &[u8]) -> String {
    if b.iter().all(|&x| x == 0) {
        return "zeroes".into();
    }
    let pattern = &b[b.len() / 2..];
    let mut runs: Vec<(String, usize, usize)> = Vec::new();
    for (i, w) in pattern.chunks(16).enumerate() {
        let tag = u64::from_le_bytes(w[..8].try_into().expect("8 bytes"));
        let lba = u64::from_le_bytes(w[8..16].try_into().expect("8 bytes")) ^ (i as u64) << 48;
        let what = if w.iter().all(|&x| x == 0) {
            "zeroes".to_string()
        } else {
            format!("tag {tag} lba {lba}")
        };
        match runs.last_mut() {
            Some((last, _, to)) if *last == what => *to = i + 1,
            _ => runs.push((what, i, i + 1)),
        }
    }
    let random_zero = b[..b.len() / 2].iter().all(|&x| x == 0);
    let parts: Vec<String> = runs
        .iter()
        .map(|(w, from, to)| format!("words {from}..{to}: {w}"))
        .collect();
    format!(
        "first half {}; pattern half {}",
        if random_zero { "zeroes" } else { "data" },
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn blocks_differ_by_tag_and_lba() {
        assert_ne!(block_data(1, 0), block_data(2, 0));
        assert_ne!(block_data(1, 0), block_data(1, 1));
        assert_eq!(block_data(0, 7), vec![0u8; 4096]);
        assert_eq!(block_data(5, 9), block_data(5, 9));
    }

    #[test]
    fn describe_names_the_tag_and_lba_a_block_carries() {
        assert_eq!(describe(&block_data(0, 3)), "zeroes");
        assert_eq!(
            describe(&block_data(646, 101)),
            "first half data; pattern half words 0..128: tag 646 lba 101"
        );
        let mut b = block_data(7, 2);
        b[BS as usize / 2..BS as usize / 2 + 32].fill(0);
        assert_eq!(
            describe(&b),
            "first half data; pattern half words 0..2: zeroes, words 2..128: tag 7 lba 2"
        );
    }

    #[test]
    fn a_block_written_in_part_is_its_base_with_the_part_laid_over() {
        let mut m = Model::default();
        m.mixes.insert(
            10,
            Mix {
                base: 3,
                from: 100,
                to: 600,
                zero: false,
            },
        );
        m.mixes.insert(
            11,
            Mix {
                base: 10,
                from: 500,
                to: 4096,
                zero: true,
            },
        );
        let (base, top) = (block_data(3, 7), block_data(10, 7));
        let b = m.content(11, 7);
        assert_eq!(&b[..100], &base[..100]);
        assert_eq!(&b[100..500], &top[100..500]);
        assert!(b[500..].iter().all(|&x| x == 0));
        assert_eq!(m.content(3, 7), base);
    }

    #[test]
    fn random_ops_cover_every_kind_but_crash() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let ops: Vec<Op> = (0..5000).map(|_| Op::random(&mut rng)).collect();
        let kinds: std::collections::BTreeSet<_> = ops.iter().map(Op::kind).collect();
        assert_eq!(kinds.len(), 20, "{kinds:?}");
        assert!(!ops.iter().any(|o| matches!(o, Op::Crash { .. })));
    }
}
