//! The committed fixture pools of on-disk format 3 (`fixtures/v3/`): pools
//! made by this release keep importing with every later one (on-disk
//! formats are versioned and upgradable; docs/format.md, "Versioning").
//!
//! Each fixture is made by replaying a script (volumes, writes, trims,
//! snapshots, a rollback and roll-forward, a clone) and stored as
//! zstd-compressed device files. The script doubles as the model: the
//! content of every block is a pure function of (writer, block,
//! generation), so the verifier recomputes what every volume, snapshot and
//! clone must hold, byte for byte, without the generator.
//!
//! * `fixtures_import_verify_and_take_writes` (CI): import each fixture,
//!   verify every block, `check()`, write and snapshot, close, re-import and
//!   verify again (the upgrade path; format 3 is used as-is).
//! * `damaged_fixture_is_caught`: a flipped data byte fails the read and the
//!   check, and a wrong model fails the verifier (neither is vacuous).
//! * `make_fixture_v3` (ignored): regenerate the files. Never needed for
//!   the tests to pass; a later format keeps these files and adds its own.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use common::*;
use edgevol_engine::crypt::Secret;
use edgevol_engine::{CreateOptions, ErrorKind, Pool};

/// The format version these fixtures were made with.
const VERSION: u32 = 3;

/// The test key of the encrypted volume (also committed as `test-key.hex`).
/// It protects nothing: it is public so the fixture can be verified.
const TEST_KEY_HEX: &str = "7e57c0de7e57c0de7e57c0de7e57c0de00112233445566778899aabbccddeeff";
const KEY_FILE: &str = "test-key.hex";

/// One step of a fixture's history.
#[derive(Clone, Copy)]
enum Op {
    /// A volume of `blocks` 4 KiB blocks with these properties.
    Create {
        vol: &'static str,
        blocks: u64,
        props: &'static [(&'static str, &'static str)],
    },
    /// Blocks `[from, to)` of `vol` get generation `gen` (written by `vol`).
    Write {
        vol: &'static str,
        from: u64,
        to: u64,
        gen: u32,
    },
    /// Trim blocks `[from, to)`: they read as zeros.
    Trim {
        vol: &'static str,
        from: u64,
        to: u64,
    },
    Snapshot {
        vol: &'static str,
        snap: &'static str,
    },
    /// Roll back (or forward) to `snap`; `auto` is the snapshot the
    /// rollback keeps of a changed head.
    Rollback {
        vol: &'static str,
        snap: &'static str,
        auto: Option<&'static str>,
    },
    CloneSnap {
        vol: &'static str,
        snap: &'static str,
        new: &'static str,
    },
}

/// A fixture pool: its device files (`mirror` makes them a 2-way mirror),
/// their size, and its history.
struct Fixture {
    name: &'static str,
    devices: &'static [&'static str],
    mirror: bool,
    size: u64,
    script: &'static [Op],
}

const LZ4: &[(&str, &str)] = &[("compression", "lz4")];
const RAW: &[(&str, &str)] = &[("compression", "off")];
const ENC: &[(&str, &str)] = &[
    ("compression", "lz4"),
    ("encryption", "aes-256-gcm"),
    ("keyformat", "hex"),
    ("keylocation", "prompt"),
];

use Op::*;

/// One file: an lz4 volume `a` with a snapshot tree (rollback to `s1`,
/// a new branch `s3`, roll-forward to `s2`), an uncompressed volume `b`,
/// an encrypted volume `e`, and `c`, a clone of `a@s1` with its own
/// writes, trims and snapshot.
#[rustfmt::skip]
const SINGLE: Fixture = Fixture {
    name: "single",
    devices: &["single.img"],
    mirror: false,
    size: 32 * MIB,
    script: &[
        Create { vol: "a", blocks: 256, props: LZ4 },
        Create { vol: "b", blocks: 256, props: RAW },
        Create { vol: "e", blocks: 64, props: ENC },
        Write { vol: "a", from: 0, to: 256, gen: 1 },
        Write { vol: "b", from: 0, to: 256, gen: 1 },
        Write { vol: "e", from: 0, to: 64, gen: 1 },
        Snapshot { vol: "a", snap: "s1" },
        Snapshot { vol: "b", snap: "s1" },
        Write { vol: "a", from: 0, to: 96, gen: 2 },
        Trim { vol: "a", from: 200, to: 232 },
        Write { vol: "b", from: 32, to: 64, gen: 2 },
        Trim { vol: "b", from: 128, to: 160 },
        Write { vol: "e", from: 16, to: 32, gen: 2 },
        Snapshot { vol: "a", snap: "s2" },
        Snapshot { vol: "e", snap: "s1" },
        Write { vol: "e", from: 60, to: 64, gen: 3 },
        Write { vol: "a", from: 64, to: 80, gen: 3 },
        Rollback { vol: "a", snap: "s1", auto: Some("auto-1") },
        Write { vol: "a", from: 128, to: 160, gen: 4 },
        Snapshot { vol: "a", snap: "s3" },
        Rollback { vol: "a", snap: "s2", auto: None },
        Write { vol: "a", from: 240, to: 256, gen: 5 },
        CloneSnap { vol: "a", snap: "s1", new: "c" },
        Write { vol: "c", from: 10, to: 20, gen: 6 },
        Trim { vol: "c", from: 100, to: 110 },
        Snapshot { vol: "c", snap: "s1" },
        Write { vol: "c", from: 15, to: 25, gen: 7 },
    ],
};

/// A 2-way mirror of two files: an lz4 volume `m` with snapshots and a
/// rollback, an uncompressed volume `r`, and `mc`, a clone of `m@s2`.
#[rustfmt::skip]
const MIRROR: Fixture = Fixture {
    name: "mirror",
    devices: &["mirror-0.img", "mirror-1.img"],
    mirror: true,
    size: 32 * MIB,
    script: &[
        Create { vol: "m", blocks: 256, props: LZ4 },
        Create { vol: "r", blocks: 128, props: RAW },
        Write { vol: "m", from: 0, to: 256, gen: 1 },
        Write { vol: "r", from: 0, to: 128, gen: 1 },
        Snapshot { vol: "m", snap: "s1" },
        Write { vol: "m", from: 50, to: 150, gen: 2 },
        Trim { vol: "m", from: 200, to: 220 },
        Trim { vol: "r", from: 0, to: 16 },
        Snapshot { vol: "m", snap: "s2" },
        Write { vol: "m", from: 0, to: 10, gen: 3 },
        Rollback { vol: "m", snap: "s1", auto: Some("auto-1") },
        Write { vol: "m", from: 100, to: 120, gen: 4 },
        CloneSnap { vol: "m", snap: "s2", new: "mc" },
        Write { vol: "mc", from: 0, to: 5, gen: 5 },
    ],
};

const FIXTURES: [Fixture; 2] = [SINGLE, MIRROR];

/// The content of block `lba` written by `writer` at generation `gen`:
/// 16-byte words of (writer, gen, lba, word), so a block from the wrong
/// volume, generation or place never matches; compressible by lz4.
fn content(writer: &str, lba: u64, gen: u32) -> Vec<u8> {
    let mut name = [b'.'; 4];
    for (d, s) in name.iter_mut().zip(writer.bytes()) {
        *d = s;
    }
    let mut b = vec![0u8; 4096];
    for (i, w) in b.chunks_mut(16).enumerate() {
        w[..4].copy_from_slice(&name);
        w[4..8].copy_from_slice(&gen.to_le_bytes());
        w[8..16].copy_from_slice(&(lba << 8 | i as u64).to_le_bytes());
    }
    b
}

/// What a volume, snapshot or clone holds: per block, the (writer, gen)
/// of its content, or `None` (never written or trimmed: zeros).
type Blocks = Vec<Option<(&'static str, u32)>>;

/// Every volume and snapshot (`vol@snap`) of a fixture and what it holds.
#[derive(Clone, Default, PartialEq, Debug)]
struct Model(BTreeMap<String, Blocks>);

impl Model {
    /// Replay a script on the model.
    fn of(script: &[Op]) -> Model {
        let mut m = Model::default();
        for op in script {
            m.apply(op);
        }
        m
    }

    fn apply(&mut self, op: &Op) {
        let map = &mut self.0;
        match *op {
            Create { vol, blocks, .. } => {
                map.insert(vol.into(), vec![None; blocks as usize]);
            }
            Write { vol, from, to, gen } => {
                let v = map.get_mut(vol).expect("volume in model");
                for b in &mut v[from as usize..to as usize] {
                    *b = Some((vol, gen));
                }
            }
            Trim { vol, from, to } => {
                let v = map.get_mut(vol).expect("volume in model");
                v[from as usize..to as usize].fill(None);
            }
            Snapshot { vol, snap } => {
                let v = map[vol].clone();
                map.insert(format!("{vol}@{snap}"), v);
            }
            Rollback { vol, snap, auto } => {
                let head = map[vol].clone();
                if let Some(a) = auto {
                    map.insert(format!("{vol}@{a}"), head);
                }
                let s = map[&format!("{vol}@{snap}")].clone();
                map.insert(vol.into(), s);
            }
            CloneSnap { vol, snap, new } => {
                let s = map[&format!("{vol}@{snap}")].clone();
                map.insert(new.into(), s);
            }
        }
    }

    /// The volumes (not snapshots), and the snapshots of `vol`, sorted.
    fn volumes(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter(|k| !k.contains('@'))
            .map(|k| k.as_str())
            .collect()
    }

    fn snapshots(&self, vol: &str) -> Vec<String> {
        let prefix = format!("{vol}@");
        self.0
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../fixtures/v{VERSION}"))
}

fn test_key() -> Secret {
    let hex = std::fs::read(fixture_dir().join(KEY_FILE)).expect("read the committed test key");
    Secret::new(hex)
}

fn is_encrypted(script: &[Op], vol: &str) -> bool {
    script.iter().any(|op| {
        matches!(op, Create { vol: v, props, .. } if *v == vol
            && props.iter().any(|(k, _)| *k == "encryption"))
    })
}

/// Import a fixture's devices and load, with the committed test key, the
/// key of every encrypted volume (their keylocation is `prompt`, so each
/// must be locked at import).
fn import(fx: &Fixture, paths: &[PathBuf]) -> Pool {
    let pool = Pool::open_paths(paths, cfg()).expect("import the fixture pool");
    for v in pool.volumes() {
        let locked = !pool.key_available(&v.name).expect("key state");
        assert_eq!(
            locked,
            is_encrypted(fx.script, &v.name),
            "{}: key state",
            v.name
        );
        if locked {
            pool.load_key(&v.name, Some(test_key()))
                .expect("load the test key");
        }
    }
    pool
}

/// Compare every block of every volume and snapshot with the model, and
/// the pool's volumes and snapshots with the model's. The first difference
/// is the error.
fn verify(pool: &Pool, model: &Model) -> Result<(), String> {
    let mut vols: Vec<String> = pool.volumes().into_iter().map(|v| v.name).collect();
    vols.sort();
    if vols != model.volumes() {
        return Err(format!("volumes {vols:?}, expected {:?}", model.volumes()));
    }
    for vol in &vols {
        let mut snaps: Vec<String> = pool
            .snapshots(vol)
            .map_err(|e| format!("snapshots of {vol}: {e}"))?
            .into_iter()
            .map(|s| s.name)
            .collect();
        snaps.sort();
        if snaps != model.snapshots(vol) {
            return Err(format!(
                "{vol}: snapshots {snaps:?}, expected {:?}",
                model.snapshots(vol)
            ));
        }
    }
    for (spec, blocks) in &model.0 {
        let v = pool
            .open_volume(spec)
            .map_err(|e| format!("open {spec}: {e}"))?;
        if v.size() != blocks.len() as u64 * 4096 {
            return Err(format!(
                "{spec}: size {}, expected {}",
                v.size(),
                blocks.len() * 4096
            ));
        }
        let segs = futures::executor::block_on(v.read(0, v.size()))
            .map_err(|e| format!("read {spec}: {e}"))?;
        let got = flatten(segs);
        for (lba, want) in blocks.iter().enumerate() {
            let want = match want {
                Some((w, g)) => content(w, lba as u64, *g),
                None => vec![0u8; 4096],
            };
            if got[lba * 4096..(lba + 1) * 4096] != want[..] {
                return Err(format!("{spec}: block {lba} differs from the model"));
            }
        }
    }
    Ok(())
}

fn check_clean(pool: &Pool) {
    let r = pool.check().expect("check runs");
    assert!(r.is_clean(), "pool check found problems: {:#?}", r.errors);
    assert_eq!(
        r.encrypted_unverified, 0,
        "every encrypted record is authenticated"
    );
    assert!(r.data_bytes > 0, "the check read data");
}

/// The fixture holds lz4-compressed and raw records, as its volumes'
/// `compression` property says.
fn check_compression(pool: &Pool, script: &[Op]) {
    for op in script {
        let Create { vol, props, .. } = *op else {
            continue;
        };
        let ratio = pool.space(vol).expect("space").compressratio;
        match props.iter().find(|(k, _)| *k == "compression") {
            Some((_, "off")) => assert!(ratio <= 1.0, "{vol}: raw, but compressratio {ratio}"),
            _ => assert!(ratio > 1.5, "{vol}: lz4, but compressratio {ratio}"),
        }
    }
}

/// Run one script step on a pool (and check what the engine says back).
fn run(pool: &Pool, op: &Op) {
    match *op {
        Create { vol, blocks, props } => {
            let p: BTreeMap<String, String> = props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let key = props.iter().any(|(k, _)| *k == "encryption").then(test_key);
            pool.create_volume_with_key(vol, blocks * 4096, p, key)
                .expect("create volume");
        }
        Write { vol, from, to, gen } => {
            let v = pool.open_volume(vol).expect("open");
            let data: Vec<u8> = (from..to).flat_map(|l| content(vol, l, gen)).collect();
            write(&v, from, &data);
            flush(&v);
        }
        Trim { vol, from, to } => {
            let v = pool.open_volume(vol).expect("open");
            trim(&v, from, to - from);
            flush(&v);
        }
        Snapshot { vol, snap } => {
            pool.snapshot(vol, snap).expect("snapshot");
        }
        Rollback { vol, snap, auto } => {
            let kept = pool.rollback(vol, snap).expect("rollback");
            assert_eq!(kept.as_deref(), auto, "automatic snapshot of {vol}");
        }
        CloneSnap { vol, snap, new } => {
            pool.clone_snapshot(vol, snap, new).expect("clone");
        }
    }
}

/// Decompress a fixture's device files into `dir`.
fn unpack(fx: &Fixture, dir: &Path) -> Vec<PathBuf> {
    fx.devices
        .iter()
        .map(|d| {
            let zst = fixture_dir().join(format!("{d}.zst"));
            let packed =
                std::fs::read(&zst).unwrap_or_else(|e| panic!("read {}: {e}", zst.display()));
            let raw = zstd::decode_all(&packed[..]).expect("decompress the fixture");
            assert_eq!(raw.len() as u64, fx.size, "{d}: device size");
            let p = dir.join(d);
            std::fs::write(&p, raw).expect("write device file");
            p
        })
        .collect()
}

/// The volumes a script makes (created or cloned).
fn volume_names(script: &[Op]) -> Vec<&'static str> {
    script
        .iter()
        .filter_map(|op| match *op {
            Create { vol, .. } => Some(vol),
            CloneSnap { new, .. } => Some(new),
            _ => None,
        })
        .collect()
}

/// What the upgrade path adds: generation 100 on blocks 0..8 of every
/// volume, then a snapshot `upgraded` of each.
fn upgrade_ops(script: &[Op]) -> Vec<Op> {
    let names = volume_names(script);
    let mut ops: Vec<Op> = names
        .iter()
        .map(|&vol| Write {
            vol,
            from: 0,
            to: 8,
            gen: 100,
        })
        .collect();
    ops.extend(names.iter().map(|&vol| Snapshot {
        vol,
        snap: "upgraded",
    }));
    ops
}

#[test]
fn fixtures_import_verify_and_take_writes() {
    for fx in &FIXTURES {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = unpack(fx, dir.path());
        let mut model = Model::of(fx.script);

        let pool = import(fx, &paths);
        verify(&pool, &model).unwrap_or_else(|e| panic!("{}: {e}", fx.name));
        check_clean(&pool);
        check_compression(&pool, fx.script);

        // Format 3 is today's format: the pool is used as it is.
        for op in upgrade_ops(fx.script) {
            run(&pool, &op);
            model.apply(&op);
        }
        verify(&pool, &model).unwrap_or_else(|e| panic!("{} after writes: {e}", fx.name));
        pool.close().expect("close");
        drop(pool);

        let pool = import(fx, &paths);
        verify(&pool, &model).unwrap_or_else(|e| panic!("{} re-imported: {e}", fx.name));
        check_clean(&pool);
        pool.close().expect("close");
    }
}

#[test]
fn damaged_fixture_is_caught() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = unpack(&SINGLE, dir.path());
    let model = Model::of(SINGLE.script);
    let pool = import(&SINGLE, &paths);

    // A model one generation off fails the verifier.
    let mut wrong = model.clone();
    wrong.0.get_mut("b").expect("b")[40] = Some(("b", 1));
    let e = verify(&pool, &wrong).expect_err("a wrong model is caught");
    assert!(e.contains("b: block 40"), "{e}");

    // Flip a byte in the first block of the (uncompressed) record holding
    // b's block 32: generation 2 wrote blocks 32..64, so a record starts
    // there.
    let (off, len) = pool.debug_record_location("b", 32).expect("record of b:32");
    assert!(len >= 4096);
    pool.close().expect("close");
    drop(pool);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&paths[0])
        .expect("open device file");
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, off + 100).expect("read");
    byte[0] ^= 0x40;
    f.write_all_at(&byte, off + 100).expect("write");
    f.sync_all().expect("sync");
    drop(f);

    let pool = import(&SINGLE, &paths);
    let v = pool.open_volume("b").expect("open b");
    let e = futures::executor::block_on(v.read(32 * 4096, 4096)).expect_err("damaged read");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(
        verify(&pool, &model).is_err(),
        "the verifier sees the damage"
    );
    let r = pool.check().expect("check runs");
    assert!(!r.is_clean(), "check must report the flipped byte");
}

/// A pool written by a newer release (its labels carry a format version
/// this one does not know) is refused with an error that says so — not
/// taken for a foreign or corrupt device — and nothing is written to it.
#[test]
fn newer_format_version_is_refused_clearly() {
    use edgevol_engine::layout::{LABEL_A_OFFSET, LABEL_B_OFFSET};
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = unpack(&SINGLE, dir.path());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&paths[0])
        .expect("open device file");
    // Envelope header: magic (8), version (4), kind (4), body length (8),
    // body crc (4), then the crc of those 28 bytes (docs/format.md).
    for off in [LABEL_A_OFFSET, LABEL_B_OFFSET] {
        let mut h = [0u8; 32];
        f.read_exact_at(&mut h, off).expect("read label header");
        h[8..12].copy_from_slice(&4u32.to_le_bytes());
        let crc = crc32c::crc32c(&h[..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        f.write_all_at(&h, off).expect("write label header");
    }
    f.sync_all().expect("sync");
    let before = std::fs::read(&paths[0]).expect("read device");
    let Err(e) = Pool::open_paths(&paths, cfg()) else {
        panic!("a newer format must be refused");
    };
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("format version 4") && msg.contains("format 3"),
        "{msg}"
    );
    assert!(
        std::fs::read(&paths[0]).expect("read device") == before,
        "a refused import writes nothing"
    );
}

/// Regenerate `fixtures/v3/` (never needed for the tests to pass):
/// `cargo test -p edgevol-engine --test fixture -- --ignored make_fixture`.
#[test]
#[ignore = "writes fixtures/v3; run by hand for a new format version"]
fn make_fixture_v3() {
    assert_eq!(edgevol_engine::format::envelope::FORMAT_VERSION, VERSION);
    let out = fixture_dir();
    std::fs::create_dir_all(&out).expect("mkdir");
    std::fs::write(out.join(KEY_FILE), TEST_KEY_HEX).expect("write key");
    for fx in &FIXTURES {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths: Vec<PathBuf> = fx.devices.iter().map(|d| dir.path().join(d)).collect();
        let mut spec: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        if fx.mirror {
            spec.insert(0, "mirror".into());
        }
        let opts = CreateOptions {
            segment_size: Some(MIB),
        };
        let pool = Pool::create_on_paths(
            &format!("fixture-{}", fx.name),
            &spec,
            Some(fx.size),
            &opts,
            cfg(),
        )
        .expect("create pool");
        let mut model = Model::default();
        for op in fx.script {
            run(&pool, op);
            model.apply(op);
        }
        verify(&pool, &model).expect("the fresh pool matches its model");
        check_clean(&pool);
        pool.close().expect("close");
        drop(pool);
        for (p, d) in paths.iter().zip(fx.devices) {
            let raw = std::fs::read(p).expect("read device");
            let packed = zstd::encode_all(&raw[..], 19).expect("compress");
            std::fs::write(out.join(format!("{d}.zst")), packed).expect("write fixture");
        }
    }
}
