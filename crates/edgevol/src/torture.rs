//! `edgevol test crash`: power-cut campaigns against the engine on
//! simulated devices (crate `edgevol-torture`), from the command line.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use edgevol_torture::{Config, Layout};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Subcommand)]
pub enum TestCmd {
    /// Cut the power N times at random device operations during a random
    /// workload (writes, FUA, flush, trim, write-zeroes, snapshots,
    /// rollback, clones, destroy, resize, cleaner) and check every
    /// recovery against a model; a seed reproduces a run exactly.
    Crash(CrashArgs),
}

#[derive(Args)]
pub struct CrashArgs {
    /// Seed of the workload and the cut points [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// Power cuts to make.
    #[arg(long, default_value_t = 200)]
    cuts: u64,
    /// Devices of the simulated pool: single, mirror or parity1.
    #[arg(long, default_value = "single")]
    layout: String,
    /// Start over on a fresh pool after this many cuts.
    #[arg(long, default_value_t = 50)]
    cuts_per_pool: u64,
    /// Replay only this pool of the campaign (numbered from 1; its cuts
    /// keep their numbers): a failure at cut C is in pool
    /// (C - 1) / cuts-per-pool + 1, and replays in seconds.
    #[arg(long, conflicts_with = "cuts")]
    pool: Option<u64>,
}

pub fn run(cmd: TestCmd, json: bool) -> Result<()> {
    let TestCmd::Crash(a) = cmd;
    let Some(layout) = Layout::parse(&a.layout) else {
        bail!("unknown layout {:?} (single, mirror or parity1)", a.layout);
    };
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    if a.pool == Some(0) || a.cuts_per_pool == 0 {
        bail!("--pool and --cuts-per-pool count from 1");
    }
    let cfg = Config {
        layout,
        cuts_per_pool: a.cuts_per_pool,
        pool: a.pool,
        ..Config::new(seed, a.cuts)
    };
    let total = match a.pool {
        Some(p) => {
            eprintln!(
                "crash campaign: pool {p} alone (cuts {} to {}), layout {}, seed {seed}",
                (p - 1) * a.cuts_per_pool + 1,
                p * a.cuts_per_pool,
                a.layout
            );
            a.cuts_per_pool
        }
        None => {
            eprintln!(
                "crash campaign: {} cuts, layout {}, seed {seed}",
                a.cuts, a.layout
            );
            a.cuts
        }
    };
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} cuts {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let result = edgevol_torture::run(&cfg, &mut |r| {
        bar.set_position(r.counts.cuts);
        bar.set_message(format!("{} ops", r.counts.ops));
    });
    bar.finish_and_clear();
    let r = match result {
        Ok(r) => r,
        Err(f) => {
            eprint!("{f}");
            bail!(
                "crash campaign failed; reproduce with: edgevol test crash --seed {seed} --layout {} --cuts-per-pool {} --pool {} (its pool alone), or --cuts {} instead of --pool (the campaign up to it)",
                a.layout,
                a.cuts_per_pool,
                f.cut / a.cuts_per_pool + 1,
                f.cut + 1,
            );
        }
    };
    let c = &r.counts;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "seed": seed, "layout": a.layout, "cuts": c.cuts,
                "cuts_inside_operations": c.cuts_inside_ops,
                "cuts_inside_by_operation": c.cuts_inside,
                "interrupted_operations_undone": c.undone, "operations": c.ops,
                "device_ops_completed_late": c.late_io_ops,
                "blocks_written": c.blocks_written, "pools": r.pools,
                "seconds": r.elapsed.as_secs_f64(), "failures": 0,
            })
        );
    } else {
        println!(
            "{} cuts ({} inside an operation, {} interrupted operations undone), {} operations, {} blocks written, {} device ops completed late, {} pools, {:.1} s: every recovery matched the model, pool check clean",
            c.cuts,
            c.cuts_inside_ops,
            c.undone,
            c.ops,
            c.blocks_written,
            c.late_io_ops,
            r.pools,
            r.elapsed.as_secs_f64()
        );
        let by: Vec<String> = c
            .cuts_inside
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!("cuts inside: {}", by.join(", "));
    }
    Ok(())
}
