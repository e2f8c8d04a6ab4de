//! Scenarios only edgevol has: each compares variants of the same 4 KiB
//! random write (4 jobs × QD16) against the scenario's first variant, in
//! the same pass.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

use super::daemon::Daemon;
use super::fio::Data;
use super::jobs::{Job, FILL, JOBS};
use super::runner::{pool_facts, Bench, Client, Hook, Run};
use super::stats::Record;
use super::targets::{Format, Image, Server, Target};

/// An edgevol scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Random writes on a filled volume before and right after a snapshot.
    Snapshot,
    /// Random overwrites with the pool 90% full (the cleaner working) vs.
    /// an empty pool.
    Full,
    /// An lz4-compressed volume vs. an uncompressed one, 50%-compressible data.
    Lz4,
    /// 16 volumes with 16 fio clients vs. one volume, same total queue depth.
    Volumes16,
}

impl Scenario {
    /// All, in run order.
    pub const ALL: [Scenario; 4] = [
        Scenario::Snapshot,
        Scenario::Full,
        Scenario::Lz4,
        Scenario::Volumes16,
    ];

    /// Name in tables, JSON and `--scenarios`.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Snapshot => "snapshot",
            Scenario::Full => "pool-90-full",
            Scenario::Lz4 => "lz4",
            Scenario::Volumes16 => "16-volumes",
        }
    }

    /// Parse a name.
    pub fn from_name(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Runs it makes (for the progress bar).
    pub fn steps(self) -> u64 {
        match self {
            Scenario::Snapshot | Scenario::Full => 3,
            Scenario::Lz4 | Scenario::Volumes16 => 2,
        }
    }
}

/// The job every scenario varies.
fn rw_4x16() -> &'static Job {
    &JOBS[2]
}

/// Run scenario `s` once (pass `pass`). A failure is recorded, not fatal.
pub fn run(b: &mut Bench, s: Scenario, pass: u32) {
    let before = b.records.len();
    let res = match s {
        Scenario::Snapshot => snapshot(b, pass),
        Scenario::Full => full(b, pass),
        Scenario::Lz4 => lz4(b, pass),
        Scenario::Volumes16 => volumes16(b, pass),
    };
    match res {
        Ok(Outcome::Done) => {}
        Ok(Outcome::Skipped(why)) => {
            let note = format!("scenario {} skipped: {why}", s.name());
            if !b.notes.contains(&note) {
                b.say(&note);
                b.notes.push(note);
            }
        }
        Err(e) => {
            let mut rec = Record {
                pass,
                scenario: Some(s.name().into()),
                job: "setup".into(),
                target: "edgevol".into(),
                state: "-".into(),
                error: Some(format!("{e:#}")),
                ..Record::default()
            };
            rec.facts
                .insert("note".into(), json!("scenario setup failed"));
            b.push(rec);
        }
    }
    // Keep the progress bar honest when a scenario stopped early.
    let done = (b.records.len() - before) as u64;
    b.pb.inc(s.steps().saturating_sub(done));
}

/// How a scenario ended.
enum Outcome {
    Done,
    Skipped(String),
}

fn run_of<'a>(s: Scenario, pass: u32, job: &'a Job, label: &'a str, state: &'a str) -> Run<'a> {
    Run {
        target: Target::Edgevol,
        job,
        pass,
        state,
        scenario: Some(s.name()),
        label: Some(label),
        target_label: None,
        data: Data::Random,
    }
}

fn new_volume_dir(b: &mut Bench) -> Result<Image> {
    let path = b.image_path(Format::Edgevol);
    Image::create(Format::Edgevol, &path, b.cfg.size)
}

fn cleanup(b: &Bench, img: &Image) {
    if !b.cfg.keep {
        img.remove();
    }
}

fn note(rec: &mut Record, text: String) {
    rec.facts.insert("note".into(), json!(text));
}

/// Fill volume vol0 of a running daemon (sequential 1 MiB QD8) and record it.
fn fill_with(b: &mut Bench, d: Daemon, s: Scenario, pass: u32, state: &str) -> Record {
    let run = run_of(s, pass, &FILL, FILL.name, state);
    let mut rec = run.record();
    let mut srv = Server::edgevol(d, "vol0");
    let client = Client {
        io: srv.io.clone(),
        base: b.fio_dir.join(run.file_stem()),
    };
    b.measure(&mut srv, &FILL, Data::Random, None, &[client], &mut rec);
    pool_facts(&srv, &mut rec.facts);
    b.stop(srv, &mut rec);
    b.push(rec.clone());
    rec
}

fn check(rec: &Record, what: &str) -> Result<()> {
    match &rec.error {
        Some(e) => bail!("{what} failed: {e}"),
        None => Ok(()),
    }
}

/// (a) the 4k random write 4×16 on a filled volume, then right after
/// `snapshot create POOL/vol0@s`.
fn snapshot(b: &mut Bench, pass: u32) -> Result<Outcome> {
    let s = Scenario::Snapshot;
    let mut img = new_volume_dir(b)?;
    let res = (|| -> Result<()> {
        // Room for the snapshot's blocks and a whole rewrite of the volume
        // with the pool under 70% full. That kept the cleaner idle at the
        // write rates of its time; at ~60K IOPS a 15 s job writes ~3.6 GB
        // and the after-snapshot run cleans 165-208 segments (0-12 before
        // the snapshot; 2026-12-07), so "after vs before" prices cleaning
        // too (docs/performance.md). On the matrix's pool (2 x size + 1G)
        // the snapshot's blocks plus the rewrite fill the pool past the
        // cleaner's threshold within seconds.
        let pool_size = 3 * b.cfg.size + (1 << 30);
        if let Some(why) = create_vol0(b, &mut img, pass, s, &[], pool_size)? {
            bail!("{why}");
        }
        let fill = b.run_one(run_of(s, pass, &FILL, FILL.name, "fresh"), &mut img, None);
        check(&fill, "fill")?;
        let mut before = b.run_one(
            run_of(s, pass, rw_4x16(), "before-snapshot", "filled"),
            &mut img,
            None,
        );
        note(
            &mut before,
            format!(
                "filled volume, pool of {} (3 x size + 1G)",
                crate::units::human(pool_size)
            ),
        );
        fix_last(b, before);
        let take: Hook = &|d: &Daemon, rec: &mut Record| {
            let t = Instant::now();
            d.snapshot("vol0", "s").context("snapshot create")?;
            let secs = t.elapsed().as_secs_f64();
            rec.facts.insert("snapshot_create_s".into(), json!(secs));
            note(rec, format!("snapshot create took {:.3} s", secs));
            Ok(())
        };
        b.run_one(
            run_of(s, pass, rw_4x16(), "after-snapshot", "filled+snapshot"),
            &mut img,
            Some(take),
        );
        Ok(())
    })();
    cleanup(b, &img);
    res.map(|()| Outcome::Done)
}

/// Replace the last record (to add facts after `run_one` pushed it).
fn fix_last(b: &mut Bench, rec: Record) {
    if let Some(last) = b.records.last_mut() {
        *last = rec;
    }
    let _ = b.save();
}

/// (b) random overwrites with live data at ~90% of the pool's usable
/// capacity (the cleaner must work), vs. the same job on an empty pool.
fn full(b: &mut Bench, pass: u32) -> Result<Outcome> {
    let s = Scenario::Full;
    let size = b.cfg.size;
    // Baseline: fresh volume on an empty, roomy pool.
    let mut empty = new_volume_dir(b)?;
    let mut rec = b.run_one(
        run_of(s, pass, rw_4x16(), "empty-pool", "fresh"),
        &mut empty,
        None,
    );
    note(&mut rec, "fresh volume, empty pool".into());
    fix_last(b, rec);
    cleanup(b, &empty);

    let mut img = new_volume_dir(b)?;
    let res = (|| -> Result<()> {
        let Image::Edgevol { dir, created } = &mut img else {
            bail!("not an edgevol image");
        };
        let base = b.fio_dir.join(format!("p{pass}-{}-setup", s.name()));
        let d = Daemon::start(dir, &super::runner::suffixed(&base, ".server.log"))?;
        let file = dir.join("pool.img");
        let target_usable = (size as f64 / 0.9) as u64;
        let pool_size = size_pool_for_usable(&d, &file, target_usable)?;
        let st = d.create_pool_written(&file, pool_size)?;
        d.create_volume("vol0", size, &[])?;
        *created = true;
        let pct = 100.0 * size as f64 / st.usable as f64;
        let fill = fill_with(b, d, s, pass, "fresh");
        check(&fill, "fill")?;
        let mut rec = b.run_one(
            run_of(s, pass, rw_4x16(), "pool-90pct-full", "filled, pool full"),
            &mut img,
            None,
        );
        rec.facts.insert("pool_size".into(), json!(pool_size));
        rec.facts.insert("live_pct_of_usable".into(), json!(pct));
        note(
            &mut rec,
            format!(
                "live data {pct:.0}% of usable {} (pool file {})",
                crate::units::human(st.usable),
                crate::units::human(pool_size)
            ),
        );
        fix_last(b, rec);
        Ok(())
    })();
    cleanup(b, &img);
    res.map(|()| Outcome::Done)
}

/// Find a pool file size whose `usable` capacity is within 1% of
/// `target` (creating and destroying probe pools on `file`).
fn size_pool_for_usable(d: &Daemon, file: &Path, target: u64) -> Result<u64> {
    const MIB: u64 = 1 << 20;
    let mut size = target + target / 4 + (256 * MIB);
    for _ in 0..8 {
        let st = d.create_pool(file, size)?;
        d.destroy_pool()?;
        std::fs::remove_file(file)?;
        let usable = st.usable.max(1);
        let err = usable.abs_diff(target) as f64 / target as f64;
        if err < 0.01 && usable >= target {
            return Ok(size);
        }
        // Usable grows about linearly with the pool: scale, aim 0.5% high.
        let next = (size as f64 * (target as f64 * 1.005) / usable as f64) as u64;
        size = next.div_ceil(MIB) * MIB;
    }
    Err(anyhow!(
        "cannot size a pool with {target} usable bytes (last try {size} bytes)"
    ))
}

/// (c) an lz4-compressed volume vs. an uncompressed one, both written with
/// 50%-compressible buffers. Skipped if the daemon rejects the property.
fn lz4(b: &mut Bench, pass: u32) -> Result<Outcome> {
    let s = Scenario::Lz4;
    for (label, comp) in [("uncompressed", "off"), ("lz4", "lz4")] {
        let mut img = new_volume_dir(b)?;
        let props = [("compression", comp)];
        let created = create_vol0(b, &mut img, pass, s, &props, b.cfg.sizes().pool);
        match created {
            Ok(None) => {}
            Ok(Some(why)) => {
                cleanup(b, &img);
                return Ok(Outcome::Skipped(why));
            }
            Err(e) => {
                cleanup(b, &img);
                return Err(e);
            }
        }
        let mut run = run_of(s, pass, rw_4x16(), label, "fresh");
        run.data = Data::Compress50;
        let mut rec = b.run_one(run, &mut img, None);
        space_note(&mut rec);
        fix_last(b, rec);
        cleanup(b, &img);
    }
    Ok(Outcome::Done)
}

/// Create the pool and volume vol0 of `img` with `props` ahead of a run.
/// Ok(Some(why)) if the daemon rejects the properties.
fn create_vol0(
    b: &Bench,
    img: &mut Image,
    pass: u32,
    s: Scenario,
    props: &[(&str, &str)],
    pool_size: u64,
) -> Result<Option<String>> {
    let Image::Edgevol { dir, created } = img else {
        bail!("not an edgevol image");
    };
    let base = b.fio_dir.join(format!("p{pass}-{}-setup", s.name()));
    let d = Daemon::start(dir, &super::runner::suffixed(&base, ".server.log"))?;
    d.create_pool_written(&dir.join("pool.img"), pool_size)?;
    let r = d.create_volume("vol0", b.cfg.size, props);
    d.stop();
    match r {
        Ok(_) => {
            *created = true;
            Ok(None)
        }
        Err(e) => Ok(Some(format!(
            "the daemon rejects `volume create` with {props:?}: {e:#}"
        ))),
    }
}

fn space_note(rec: &mut Record) {
    let get = |k: &str| rec.facts.get(k).and_then(|v| v.as_u64());
    if let (Some(data), Some(refd)) = (get("pool_data"), get("pool_referenced")) {
        let text = format!(
            "stored {} for {} written",
            crate::units::human(data),
            crate::units::human(refd)
        );
        note(rec, text);
    }
}

/// (d) 16 volumes of one daemon, each with its own fio client (1 job ×
/// QD4), vs. one volume with 4 jobs × QD16: the same 64 I/Os in flight.
fn volumes16(b: &mut Bench, pass: u32) -> Result<Outcome> {
    const N: usize = 16;
    const MIB: u64 = 1 << 20;
    let s = Scenario::Volumes16;
    let size = b.cfg.size;
    let mut one = new_volume_dir(b)?;
    let mut rec = b.run_one(
        run_of(s, pass, rw_4x16(), "1-volume-4x16", "fresh"),
        &mut one,
        None,
    );
    note(&mut rec, "1 volume, 4 jobs x QD16".into());
    fix_last(b, rec);
    cleanup(b, &one);

    let img = new_volume_dir(b)?;
    let vsize = ((size / N as u64) / MIB * MIB).max(16 * MIB);
    let run = run_of(s, pass, rw_4x16(), "16-volumes-16x4", "fresh");
    let mut rec = run.record();
    let stem = b.fio_dir.join(run.file_stem());
    let res = (|| -> Result<()> {
        let Image::Edgevol { dir, .. } = &img else {
            bail!("not an edgevol image");
        };
        let t = Instant::now();
        let d = Daemon::start(dir, &super::runner::suffixed(&stem, ".server.log"))?;
        d.create_pool_written(&dir.join("pool.img"), b.cfg.sizes().pool)?;
        let names: Vec<String> = (0..N).map(|i| format!("v{i:02}")).collect();
        for n in &names {
            d.create_volume(n, vsize, &[])?;
        }
        rec.start_s = Some(t.elapsed().as_secs_f64());
        let clients: Vec<Client> = names
            .iter()
            .map(|n| Client {
                io: super::fio::Io::Nbd(d.uri(n)),
                base: super::runner::suffixed(&stem, &format!("-{n}")),
            })
            .collect();
        let mut srv = Server::edgevol(d, "v00");
        b.measure(
            &mut srv,
            rw_4x16(),
            Data::Random,
            Some((1, 4)),
            &clients,
            &mut rec,
        );
        pool_facts(&srv, &mut rec.facts);
        b.stop(srv, &mut rec);
        Ok(())
    })();
    if let Err(e) = res {
        rec.error = Some(format!("{e:#}"));
    }
    rec.facts.insert("volumes".into(), json!(N));
    rec.facts.insert("volume_size".into(), json!(vsize));
    note(
        &mut rec,
        format!(
            "{N} volumes of {} each, 16 clients x QD4; latency = worst client",
            crate::units::human(vsize)
        ),
    );
    rec.disk_bytes = img.disk_bytes();
    b.push(rec);
    cleanup(b, &img);
    Ok(Outcome::Done)
}

/// The note of a summary row's latest record, for the table.
pub fn row_note(records: &[Record], scenario: &str, job: &str) -> String {
    records
        .iter()
        .rev()
        .filter(|r| r.scenario.as_deref() == Some(scenario) && r.job == job)
        .find_map(|r| {
            r.facts
                .get("note")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Names for `--scenarios` help and errors.
pub fn names() -> String {
    Scenario::ALL.map(Scenario::name).join(", ")
}

/// Parse a `--scenarios` list (`all` for every one).
pub fn select(names_: &[String]) -> Result<Vec<Scenario>, String> {
    if names_.is_empty() || names_.iter().any(|n| n == "all") {
        return Ok(Scenario::ALL.to_vec());
    }
    names_
        .iter()
        .map(|n| {
            Scenario::from_name(n)
                .ok_or_else(|| format!("unknown scenario {n:?}; known: {}", names()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_selection() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::from_name(s.name()), Some(s));
        }
        assert_eq!(select(&[]).expect("all").len(), 4);
        assert_eq!(select(&["lz4".into()]).expect("one"), vec![Scenario::Lz4]);
        assert!(select(&["nope".into()]).is_err());
    }

    #[test]
    fn notes_from_records() {
        let mut r = Record {
            scenario: Some("lz4".into()),
            job: "lz4".into(),
            ..Record::default()
        };
        r.facts.insert("note".into(), json!("stored 1G"));
        assert_eq!(row_note(&[r], "lz4", "lz4"), "stored 1G");
        assert_eq!(row_note(&[], "lz4", "lz4"), "");
    }
}
