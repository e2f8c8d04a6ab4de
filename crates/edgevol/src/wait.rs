//! `--wait` for `pool scrub` and `pool replace`: follow a pool's scan
//! (scrub or resilver) through its status until it ends, showing progress
//! — a bar on a terminal; otherwise, and with `--json`, one JSON object
//! per line on stdout:
//!
//! ```text
//! {"pool":"m","phase":"resilver","state":"running","done_bytes":1048576,"total_bytes":4194304,"percent":25.0,"repaired_bytes":0,"unrecoverable":0}
//! ```
//!
//! The last line has the scan's final state (`finished`, `stopped`,
//! `failed`); [`verdict`] turns anything but a clean finish into an error
//! (a non-zero exit).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Result};
use edgevol_api::{PoolStatus, ScanStatus};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::commands::Ctx;
use crate::units::human;

/// Between two looks at the pool's status.
const POLL: Duration = Duration::from_millis(200);

/// One progress line.
#[derive(Serialize)]
struct Line<'a> {
    pool: &'a str,
    phase: &'a str,
    state: &'a str,
    done_bytes: u64,
    total_bytes: u64,
    percent: f64,
    repaired_bytes: u64,
    unrecoverable: usize,
}

/// How far the scan is; a scan that finished did all there was.
fn percent(s: &ScanStatus) -> f64 {
    if s.state == "finished" {
        100.0
    } else if s.total_bytes > 0 {
        (s.done_bytes as f64 * 100.0 / s.total_bytes as f64).min(100.0)
    } else {
        0.0
    }
}

/// Where progress goes.
enum Out {
    /// A bar on stderr (a terminal), one per phase.
    Bar(Option<(String, ProgressBar)>),
    /// JSON lines on stdout; the last line printed, to print only changes.
    Lines(Option<(String, String, u64)>),
}

/// Shows a pool's scans as they progress.
pub struct Progress {
    pool: String,
    out: Out,
}

impl Progress {
    /// A bar when a person watches (stdout and stderr are terminals and no
    /// `--json`), JSON lines otherwise.
    pub fn new(pool: &str, json: bool) -> Progress {
        let person = !json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        Progress {
            pool: pool.to_string(),
            out: if person {
                Out::Bar(None)
            } else {
                Out::Lines(None)
            },
        }
    }

    fn show(&mut self, s: &ScanStatus) -> Result<()> {
        match &mut self.out {
            Out::Lines(last) => {
                let now = (s.kind.clone(), s.state.clone(), s.done_bytes);
                if last.as_ref() != Some(&now) {
                    let line = Line {
                        pool: &self.pool,
                        phase: &s.kind,
                        state: &s.state,
                        done_bytes: s.done_bytes,
                        total_bytes: s.total_bytes,
                        percent: percent(s),
                        repaired_bytes: s.repaired_bytes,
                        unrecoverable: s.unrecoverable.len(),
                    };
                    println!("{}", serde_json::to_string(&line)?);
                    *last = Some(now);
                }
            }
            Out::Bar(bar) => {
                if bar.as_ref().is_none_or(|(kind, _)| *kind != s.kind) {
                    if let Some((_, old)) = bar.take() {
                        old.finish_and_clear();
                    }
                    let b = ProgressBar::new(s.total_bytes);
                    b.set_style(
                        ProgressStyle::with_template(
                            "{msg} {bar:40} {bytes}/{total_bytes} ({percent}%) {bytes_per_sec} eta {eta}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    b.set_message(format!("{} {}", s.kind, self.pool));
                    *bar = Some((s.kind.clone(), b));
                }
                if let Some((_, b)) = bar {
                    b.set_length(s.total_bytes.max(s.done_bytes));
                    b.set_position(s.done_bytes);
                    if s.state != "running" {
                        b.finish_and_clear();
                        println!(
                            "{} of pool {} {}: {} examined, {} repaired, {} unrecoverable",
                            s.kind,
                            self.pool,
                            s.state,
                            human(s.done_bytes),
                            human(s.repaired_bytes),
                            s.unrecoverable.len()
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

fn status(ctx: &Ctx, pool: &str) -> Result<PoolStatus> {
    ctx.get(&format!("/pools/{}", crate::commands::seg(pool)))
}

fn scan_of<'a>(st: &'a PoolStatus, kind: &str) -> Option<&'a ScanStatus> {
    match kind {
        "resilver" => st.resilver.as_ref(),
        _ => st.scrub.as_ref(),
    }
}

/// Follow the pool's scan of `kind` until it no longer runs; its last
/// status.
pub fn follow(ctx: &Ctx, pool: &str, kind: &str, p: &mut Progress) -> Result<ScanStatus> {
    loop {
        let st = status(ctx, pool)?;
        let Some(s) = scan_of(&st, kind) else {
            bail!("pool {pool} shows no {kind}");
        };
        p.show(s)?;
        if s.state != "running" {
            return Ok(s.clone());
        }
        std::thread::sleep(POLL);
    }
}

/// Follow whatever scan the pool runs now (a resilver, another scrub)
/// until none does.
pub fn until_idle(ctx: &Ctx, pool: &str, p: &mut Progress) -> Result<()> {
    loop {
        let st = status(ctx, pool)?;
        let running = [&st.resilver, &st.scrub]
            .into_iter()
            .flatten()
            .find(|s| s.state == "running");
        match running {
            None => return Ok(()),
            Some(s) => {
                follow(ctx, pool, &s.kind.clone(), p)?;
            }
        }
    }
}

/// Ok only if the scan finished and found nothing it could not restore.
pub fn verdict(pool: &str, s: &ScanStatus) -> Result<()> {
    match s.state.as_str() {
        "finished" if s.unrecoverable.is_empty() => Ok(()),
        "finished" => {
            for u in &s.unrecoverable {
                eprintln!("unrecoverable: {u}");
            }
            bail!(
                "the {} of pool {pool} found {} records no copy could restore",
                s.kind,
                s.unrecoverable.len()
            )
        }
        "stopped" => bail!(
            "the {} of pool {pool} was stopped before it finished",
            s.kind
        ),
        other => bail!(
            "the {} of pool {pool} {other}: {}",
            s.kind,
            s.error.as_deref().unwrap_or("no reason given")
        ),
    }
}
