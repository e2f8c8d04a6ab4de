//! Every fuzz target on stable: the committed seed corpora, every
//! regression input, the generated seeds, and a few thousand random and
//! mutated inputs per target from a fixed seed.
//!
//! `cargo test -p edgevol-fuzz -- --ignored write_seed_corpus` rewrites
//! `fuzz/corpus/<target>/seed-*` from `edgevol_fuzz::seeds`.

use std::path::{Path, PathBuf};

use edgevol_fuzz::seeds::seeds;
use edgevol_fuzz::TARGETS;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    out.retain(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"));
    out.sort();
    out
}

#[test]
fn corpus_and_regressions_replay() {
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty");
        let regressions = files(&fuzz_dir().join("regressions").join(name));
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).unwrap();
            target(&data);
            replayed += 1;
        }
    }
    assert!(replayed > 0);
}

/// Flip, insert, delete, overwrite with interesting values, or splice.
fn mutate(rng: &mut StdRng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.random_range(1..8) {
        let at = rng.random_range(0..=v.len());
        match rng.random_range(0..6) {
            0 if at < v.len() => v[at] ^= 1 << rng.random_range(0..8),
            1 => v.insert(at, rng.random()),
            2 if at < v.len() => {
                v.remove(at);
            }
            3 if at + 4 <= v.len() => {
                let x: u32 = [0, 1, 0x7fff_ffff, 0xffff_ffff, 4096, 65536][rng.random_range(0..6)];
                v[at..at + 4].copy_from_slice(&x.to_le_bytes());
            }
            4 => v.truncate(at),
            _ if !other.is_empty() => {
                let from = rng.random_range(0..other.len());
                let n = rng.random_range(0..=(other.len() - from).min(64));
                v.splice(at..at, other[from..from + n].iter().copied());
            }
            _ => {}
        }
    }
    v
}

#[test]
fn random_and_mutated_inputs() {
    let mut rng = StdRng::seed_from_u64(0xed9e_f022);
    for (name, target) in TARGETS {
        let seeds = seeds(name);
        for s in &seeds {
            target(s);
        }
        // The whole-server target runs a runtime per input: fewer rounds.
        let rounds = if *name == "nbd_server" { 400 } else { 3000 };
        for round in 0..rounds {
            let input = if round % 3 == 0 {
                let len = rng.random_range(0..600);
                (0..len).map(|_| rng.random()).collect()
            } else {
                let a = &seeds[rng.random_range(0..seeds.len())];
                let b = &seeds[rng.random_range(0..seeds.len())];
                mutate(&mut rng, a, b)
            };
            target(&input);
        }
    }
}

#[test]
#[ignore = "writes fuzz/corpus; run by hand after changing a seed generator"]
fn write_seed_corpus() {
    for (name, _) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for old in files(&dir) {
            if old
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
            {
                std::fs::remove_file(old).unwrap();
            }
        }
        for (i, s) in seeds(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
        }
    }
}
