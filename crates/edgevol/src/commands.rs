//! Client subcommands: each parses its arguments, calls the daemon's API,
//! and prints a table (or JSON with `--json`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use edgevol_api::{
    AddVhostUserExport, ChangeKey, CheckReport, Client, CloneVolume, CreatePool, CreateSnapshot,
    CreateVolume, ExportInfo, KeyRequest, PoolStatus, Resize, RollbackResult, SetProperties,
    SnapshotInfo, SpaceReport, VhostUserExportInfo, VolumeInfo,
};
use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::table::Table;
use crate::units::{human, parse_size, time};

/// What every client command needs.
pub struct Ctx {
    client: Client,
    json: bool,
    rt: tokio::runtime::Runtime,
}

impl Ctx {
    pub fn new(socket: Option<PathBuf>, json: bool) -> Ctx {
        let socket = socket.unwrap_or_else(|| PathBuf::from("edgevol-data/api.sock"));
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("edgevol: cannot start a runtime: {e}");
                std::process::exit(1);
            }
        };
        Ctx {
            client: Client::new(socket),
            json,
            rt,
        }
    }

    fn call<T: DeserializeOwned>(
        &self,
        m: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        Ok(self.rt.block_on(self.client.call(m, path, body))?)
    }

    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None::<&()>)
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.call(Method::POST, path, Some(body))
    }

    fn delete(&self, path: &str) -> Result<()> {
        let _: serde_json::Value = self.call(Method::DELETE, path, None::<&()>)?;
        Ok(())
    }

    fn print_json(&self, v: &impl Serialize) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }

    /// Report a completed destroy: `{"destroyed": what}` with `--json`.
    fn destroyed(&self, kind: &str, what: &str) -> Result<()> {
        if self.json {
            return self.print_json(&serde_json::json!({ "destroyed": what, "kind": kind }));
        }
        println!("destroyed {kind} {what}");
        Ok(())
    }

    /// Report a key operation.
    fn key_done(&self, info: &VolumeInfo, what: &str) -> Result<()> {
        if self.json {
            return self.print_json(info);
        }
        println!(
            "{what} {}/{} (keystatus {})",
            info.pool,
            info.name,
            info.keystatus.as_deref().unwrap_or("-")
        );
        Ok(())
    }

    /// Report a volume whose properties changed.
    fn changed(&self, info: &VolumeInfo) -> Result<()> {
        if self.json {
            return self.print_json(info);
        }
        println!("updated {}/{}", info.pool, info.name);
        Ok(())
    }
}

/// URL path segment escaping for names (names are [A-Za-z0-9_.:-], but be safe).
pub(crate) fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Split `POOL/VOL`.
fn pool_vol(s: &str) -> Result<(&str, &str)> {
    let (p, v) = s
        .split_once('/')
        .ok_or_else(|| anyhow!("{s:?}: expected POOL/VOLUME"))?;
    if p.is_empty() || v.is_empty() || v.contains('@') || v.contains('/') {
        bail!("{s:?}: expected POOL/VOLUME");
    }
    Ok((p, v))
}

/// Split `POOL/VOL@SNAP`.
fn pool_vol_snap(s: &str) -> Result<(&str, &str, &str)> {
    let (pv, snap) = s
        .split_once('@')
        .ok_or_else(|| anyhow!("{s:?}: expected POOL/VOLUME@SNAPSHOT"))?;
    let (p, v) = pool_vol(pv)?;
    if snap.is_empty() {
        bail!("{s:?}: expected POOL/VOLUME@SNAPSHOT");
    }
    Ok((p, v, snap))
}

fn vol_path(p: &str, v: &str) -> String {
    format!("/pools/{}/volumes/{}", seg(p), seg(v))
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s)
}

fn parse_kv(items: &[String]) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for it in items {
        let (k, v) = it
            .split_once('=')
            .ok_or_else(|| anyhow!("{it:?}: expected key=value"))?;
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

/// One property of `pool get` / `volume get`: its value as the table
/// shows it and as `--json` gives it (numbers as JSON numbers).
struct Prop {
    name: &'static str,
    shown: String,
    json: serde_json::Value,
    source: String,
}

impl Prop {
    fn text(name: &'static str, v: impl Into<String>, source: &str) -> Prop {
        let v = v.into();
        Prop {
            name,
            json: v.clone().into(),
            shown: v,
            source: source.into(),
        }
    }

    fn num(name: &'static str, v: u64, source: &str) -> Prop {
        Prop {
            name,
            shown: v.to_string(),
            json: v.into(),
            source: source.into(),
        }
    }

    /// A ratio: `1.52x` in the table, 1.52 in JSON.
    fn ratio(name: &'static str, v: f64) -> Prop {
        Prop {
            name,
            shown: format!("{v:.2}x"),
            json: ((v * 100.0).round() / 100.0).into(),
            source: "-".into(),
        }
    }

    /// A time: a date in the table, seconds since the epoch in JSON.
    fn time(name: &'static str, secs: u64) -> Prop {
        Prop {
            name,
            shown: time(secs),
            json: secs.into(),
            source: "-".into(),
        }
    }
}

/// Print properties (name, value, source), or only `want`; with `--json`
/// an object of name to value. User properties follow `props`.
fn print_props(
    ctx: &Ctx,
    mut props: Vec<Prop>,
    user: &BTreeMap<String, String>,
    want: Option<&str>,
    what: &str,
) -> Result<()> {
    let mut rows: Vec<(String, String, serde_json::Value, String)> = props
        .drain(..)
        .map(|p| (p.name.to_string(), p.shown, p.json, p.source))
        .collect();
    for (k, v) in user {
        if !rows.iter().any(|r| r.0 == *k) {
            rows.push((k.clone(), v.clone(), v.clone().into(), "local".into()));
        }
    }
    if let Some(want) = want {
        rows.retain(|r| r.0 == want);
        if rows.is_empty() {
            bail!("{what} has no property {want:?}");
        }
    }
    if ctx.json {
        let m: serde_json::Map<String, serde_json::Value> =
            rows.into_iter().map(|(k, _, j, _)| (k, j)).collect();
        return ctx.print_json(&m);
    }
    let mut t = Table::new(&["PROPERTY", "VALUE", "SOURCE"]);
    for (k, val, _, src) in rows {
        t.row(vec![k, val, src]);
    }
    t.print();
    Ok(())
}

fn pool_changed(ctx: &Ctx, st: &PoolStatus) -> Result<()> {
    if ctx.json {
        return ctx.print_json(st);
    }
    println!("updated pool {}", st.name);
    Ok(())
}

// ----------------------------------------------------------------------
// pool

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Create a pool on files (created sparse at --size if missing) or block devices.
    Create {
        /// Pool name.
        pool: String,
        /// Files or block devices; groups open with a keyword:
        /// `mirror A B`, `parity1 A B C`, `parity2 A B C D` (several groups
        /// are striped; plain devices have no redundancy).
        #[arg(required = true)]
        devices: Vec<PathBuf>,
        /// Size of files that do not exist yet (e.g. 20G).
        #[arg(long, value_parser = size_arg)]
        size: Option<u64>,
        /// Pool options: segment_size=SIZE; properties: compression=off|lz4|zstd|zstd-N
        /// (the default of volumes that do not set their own), comment=...
        #[arg(short = 'o', value_name = "KEY=VALUE")]
        options: Vec<String>,
        /// Overwrite devices that hold a file system, partition table,
        /// another pool or other data (devices in use are refused anyway).
        #[arg(long)]
        force: bool,
    },
    /// List pools.
    List,
    /// Show pool properties (all, or one).
    Get {
        /// Pool name.
        pool: String,
        /// Property name.
        property: Option<String>,
    },
    /// Set pool properties: compression (default for volumes), comment, org:name.
    Set {
        /// Pool name.
        pool: String,
        /// KEY=VALUE ...
        #[arg(required = true)]
        assignments: Vec<String>,
    },
    /// Clear a pool property (compression returns to the built-in default, lz4).
    Inherit {
        /// Pool name.
        pool: String,
        /// Property name.
        property: String,
    },
    /// Health, space and devices of a pool.
    Status {
        /// Pool name.
        pool: String,
    },
    /// Verify every metadata structure and data checksum; exits non-zero on any inconsistency.
    Check {
        /// Pool name.
        pool: String,
    },
    /// Start a scrub: verify every copy of every live record in the
    /// background and repair bad copies (`pool status` shows progress).
    Scrub {
        /// Pool name.
        pool: String,
        /// Stop the running scrub.
        #[arg(long, conflicts_with = "wait")]
        stop: bool,
        /// Wait for a running scan (a resilver) to end, then scrub and
        /// show progress until done; exit non-zero if records could not
        /// be restored or the scrub was stopped.
        #[arg(long)]
        wait: bool,
    },
    /// Replace a device of a mirror or parity group and resilver.
    Replace {
        /// Pool name.
        pool: String,
        /// The device to replace (its path as `pool status` shows it).
        old: String,
        /// The new file (created sparse if missing) or block device.
        new: PathBuf,
        /// Overwrite a new device that holds a file system, partition
        /// table, another pool or other data (one in use is refused anyway).
        #[arg(long)]
        force: bool,
        /// Show the resilver's progress until it ends; exit non-zero if
        /// it did not finish.
        #[arg(long)]
        wait: bool,
    },
    /// Add a group of devices while the pool serves: one device, or
    /// `mirror A B`, `parity1 A B C`, `parity2 A B C D`.
    Add {
        /// Pool name.
        pool: String,
        /// The group (files are created sparse at --size if missing).
        #[arg(required = true)]
        devices: Vec<PathBuf>,
        /// Size of files that do not exist yet (default: the size of the
        /// pool's first device).
        #[arg(long, value_parser = size_arg)]
        size: Option<u64>,
        /// Add a group with less redundancy than the pool's groups, and
        /// overwrite devices that hold a file system, partition table,
        /// another pool or other data (devices in use are refused anyway).
        #[arg(long)]
        force: bool,
    },
    /// Bring devices' new space online after they grew (a file made
    /// longer, a block device resized).
    Online {
        /// Pool name.
        pool: String,
        /// Only the group of this device (default: every group whose
        /// devices all grew).
        device: Option<String>,
        /// Take in the space the devices gained.
        #[arg(long, short = 'e', required = true)]
        expand: bool,
    },
    /// Destroy a pool (the first and last MiB of its devices are zeroed,
    /// which erases its labels; files are kept).
    Destroy {
        /// Pool name.
        pool: String,
        /// Even with clients attached.
        #[arg(long)]
        force: bool,
    },
}

/// One line of a drive's SMART report: verdict, then what is known.
fn smart_line(h: &edgevol_api::SmartHealth) -> String {
    let mut parts = vec![match h.passed {
        Some(true) => "PASSED".to_string(),
        Some(false) => "FAILING".to_string(),
        None => "unknown".to_string(),
    }];
    let mut num = |what: &str, v: Option<u64>| {
        if let Some(v) = v {
            parts.push(format!("{what} {v}"));
        }
    };
    num("reallocated", h.reallocated_sectors);
    num("pending", h.pending_sectors);
    num("uncorrectable", h.offline_uncorrectable);
    num("reported-uncorrect", h.reported_uncorrectable);
    num("critical-warning", h.critical_warning);
    num("wear%", h.percentage_used);
    num("spare%", h.available_spare);
    num("media-errors", h.media_errors);
    num("power-on-hours", h.power_on_hours);
    if let Some(t) = h.temperature_c {
        parts.push(format!("{t}°C"));
    }
    if let Some(m) = &h.model {
        parts.push(format!("({m})"));
    }
    if let Some(e) = &h.error {
        parts.push(format!("— {e}"));
    }
    parts.join(", ")
}

/// Device arguments as absolute paths (group keywords kept), since the
/// daemon may run in another directory.
fn absolute_devices(devices: &[PathBuf]) -> Result<Vec<String>> {
    let cwd = std::env::current_dir().context("current directory")?;
    Ok(devices
        .iter()
        .map(|d| {
            let keyword = matches!(
                d.to_str(),
                Some("mirror" | "parity1" | "parity2" | "raidz" | "raidz1" | "raidz2")
            );
            if d.is_absolute() || keyword {
                d.clone()
            } else {
                cwd.join(d)
            }
        })
        .map(|d| d.display().to_string())
        .collect())
}

pub fn pool(ctx: &Ctx, cmd: PoolCmd) -> Result<()> {
    match cmd {
        PoolCmd::Create {
            pool,
            devices,
            size,
            options,
            force,
        } => {
            let mut properties = parse_kv(&options)?;
            let segment_size = properties
                .remove("segment_size")
                .map(|v| parse_size(&v).map_err(|e| anyhow!(e)))
                .transpose()?;
            let devices = absolute_devices(&devices)?;
            let st: PoolStatus = ctx.post(
                "/pools",
                &CreatePool {
                    name: pool,
                    devices,
                    size,
                    segment_size,
                    properties,
                    force,
                },
            )?;
            if ctx.json {
                return ctx.print_json(&st);
            }
            println!(
                "created pool {}: {} usable of {} ({} held back: {})",
                st.name,
                human(st.usable),
                human(st.size),
                human(st.reserve.total()),
                reserve_parts(&st.reserve)
            );
            Ok(())
        }
        PoolCmd::List => {
            let v: Vec<serde_json::Value> = ctx.get("/pools")?;
            if ctx.json {
                return ctx.print_json(&v);
            }
            let mut t = Table::new(&[
                "NAME",
                ">SIZE",
                ">ALLOC",
                ">FREE",
                ">VOLUMES",
                ">SNAPSHOTS",
                "STATE",
            ]);
            for p in v {
                match serde_json::from_value::<PoolStatus>(p.clone()) {
                    Ok(s) => t.row(vec![
                        s.name,
                        human(s.size),
                        human(s.allocated),
                        human(s.free),
                        s.volumes.to_string(),
                        s.snapshots.to_string(),
                        s.state,
                    ]),
                    Err(_) => t.row(vec![
                        p["name"].as_str().unwrap_or("?").to_string(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        format!("UNAVAIL: {}", p["error"].as_str().unwrap_or("")),
                    ]),
                }
            }
            t.print();
            Ok(())
        }
        PoolCmd::Get { pool, property } => {
            let s: PoolStatus = ctx.get(&format!("/pools/{}", seg(&pool)))?;
            let local = |k: &str| {
                if s.properties.contains_key(k) {
                    "local"
                } else {
                    "default"
                }
            };
            let props = vec![
                Prop::text("name", s.name.clone(), "-"),
                Prop::num("size", s.size, "-"),
                Prop::num("allocated", s.allocated, "-"),
                Prop::num("free", s.free, "-"),
                Prop::num("logical", s.logical, "-"),
                Prop::ratio("compressratio", s.compressratio),
                Prop::num("segment_size", s.segment_size, "-"),
                Prop::text("health", s.state.clone(), "-"),
                Prop::text("guid", s.guid.clone(), "-"),
                Prop::time("creation", s.created),
                Prop::text(
                    "compression",
                    s.properties
                        .get("compression")
                        .cloned()
                        .unwrap_or_else(|| "lz4".into()),
                    local("compression"),
                ),
            ];
            print_props(
                ctx,
                props,
                &s.properties,
                property.as_deref(),
                &format!("pool {pool}"),
            )
        }
        PoolCmd::Set { pool, assignments } => {
            let kv = parse_kv(&assignments)?;
            let st: PoolStatus = ctx.call(
                Method::PATCH,
                &format!("/pools/{}", seg(&pool)),
                Some(&SetProperties {
                    properties: kv.into_iter().map(|(k, v)| (k, Some(v))).collect(),
                }),
            )?;
            pool_changed(ctx, &st)
        }
        PoolCmd::Inherit { pool, property } => {
            let st: PoolStatus = ctx.call(
                Method::PATCH,
                &format!("/pools/{}", seg(&pool)),
                Some(&SetProperties {
                    properties: [(property, None)].into_iter().collect(),
                }),
            )?;
            pool_changed(ctx, &st)
        }
        PoolCmd::Status { pool } => {
            let s: PoolStatus = ctx.get(&format!("/pools/{}", seg(&pool)))?;
            if ctx.json {
                return ctx.print_json(&s);
            }
            println!("   pool: {}", s.name);
            println!("  state: {}", s.state);
            if let Some(e) = &s.error {
                println!(" reason: {e}");
            }
            println!(
                "   size: {}   usable: {}   allocated: {} (data {}, metadata {})   free: {}",
                human(s.size),
                human(s.usable),
                human(s.allocated),
                human(s.data),
                human(s.metadata),
                human(s.free)
            );
            println!(
                "reserve: {} of the size is held back from data: {}",
                human(s.reserve.total()),
                reserve_parts(&s.reserve)
            );
            println!(
                "   data: {} logical stored as {} (compressratio {:.2}x)",
                human(s.logical),
                human(s.data),
                s.compressratio
            );
            println!(
                "content: {} volumes, {} snapshots, {} referenced",
                s.volumes,
                s.snapshots,
                human(s.referenced)
            );
            println!(
                "  segments: {} each, {} free, {} reserved for the cleaner and metadata",
                human(s.segment_size),
                s.free_segments,
                s.reserved_segments
            );
            if s.gc_pending > 0 {
                println!(
                    "     gc: {} lineages waiting for garbage collection",
                    s.gc_pending
                );
            }
            if let Some(e) = &s.maintenance_error {
                println!("  maint: last error: {e}");
            }
            for scan in [&s.scrub, &s.resilver].into_iter().flatten() {
                let pct = if scan.total_bytes > 0 {
                    scan.done_bytes as f64 * 100.0 / scan.total_bytes as f64
                } else {
                    100.0
                };
                println!(
                    "   {}: {} — {} of {} ({pct:.0}%) at {}/s, {} repaired, {} unrecoverable{}",
                    scan.kind,
                    scan.state,
                    human(scan.done_bytes),
                    human(scan.total_bytes),
                    human(scan.rate),
                    human(scan.repaired_bytes),
                    scan.unrecoverable.len(),
                    scan.error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                );
                for u in &scan.unrecoverable {
                    println!("          unrecoverable: {u}");
                }
            }
            println!("config:");
            let mut t = Table::new(&[
                "  DEVICE", "STATE", ">SIZE", ">READ", ">WRITE", ">CKSUM", "NOTE",
            ]);
            for (i, g) in s.groups.iter().enumerate() {
                let members: Vec<_> = s.devices.iter().filter(|d| d.group == i).collect();
                let indent = if g.kind == "single" { "  " } else { "    " };
                if g.kind != "single" {
                    t.row(vec![
                        format!("  {}-{i}", g.kind),
                        g.state.clone(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ]);
                }
                for d in members {
                    t.row(vec![
                        format!("{indent}{}", d.path),
                        d.state.clone(),
                        human(d.size),
                        d.read_errors.to_string(),
                        d.write_errors.to_string(),
                        d.checksum_errors.to_string(),
                        match (&d.reason, d.repaired_bytes) {
                            (Some(r), _) => r.clone(),
                            (None, 0) => String::new(),
                            (None, n) => format!("{} repaired", human(n)),
                        },
                    ]);
                }
            }
            t.print();
            let smart: Vec<String> = s
                .devices
                .iter()
                .filter_map(|d| {
                    d.smart
                        .as_ref()
                        .map(|h| format!("  {}: {}", d.path, smart_line(h)))
                })
                .collect();
            if !smart.is_empty() {
                println!("health (SMART):");
                for l in smart {
                    println!("{l}");
                }
            }
            let errs: u64 = s
                .devices
                .iter()
                .map(|d| d.read_errors + d.write_errors + d.checksum_errors)
                .sum();
            println!(
                "errors: {}",
                if errs == 0 {
                    "No known data errors".to_string()
                } else {
                    format!("{errs} device errors")
                }
            );
            Ok(())
        }
        PoolCmd::Scrub { pool, stop, wait } => {
            if wait {
                return scrub_wait(ctx, &pool);
            }
            let s: PoolStatus = ctx
                .call(
                    Method::POST,
                    &format!("/pools/{}/scrub", seg(&pool)),
                    Some(&edgevol_api::ScrubRequest { stop }),
                )
                .map_err(|e| match busy(&e) {
                    true => anyhow!("{e} (`pool scrub --wait` waits for it, then scrubs)"),
                    false => e,
                })?;
            if ctx.json {
                return ctx.print_json(&s);
            }
            println!(
                "{} pool {pool}",
                if stop {
                    "stopping the scrub of"
                } else {
                    "scrubbing"
                }
            );
            Ok(())
        }
        PoolCmd::Replace {
            pool,
            old,
            new,
            force,
            wait,
        } => {
            let body = edgevol_api::ReplaceDevice {
                old,
                new: new.display().to_string(),
                force,
            };
            let s: PoolStatus = ctx.call(
                Method::POST,
                &format!("/pools/{}/replace", seg(&pool)),
                Some(&body),
            )?;
            if wait {
                let mut p = crate::wait::Progress::new(&pool, ctx.json);
                let r = crate::wait::follow(ctx, &pool, "resilver", &mut p)?;
                return crate::wait::verdict(&pool, &r);
            }
            if ctx.json {
                return ctx.print_json(&s);
            }
            println!(
                "replacing {} by {} in pool {pool}; resilvering",
                body.old, body.new
            );
            Ok(())
        }
        PoolCmd::Add {
            pool,
            devices,
            size,
            force,
        } => {
            let body = edgevol_api::AddDevices {
                devices: absolute_devices(&devices)?,
                size,
                force,
            };
            let before: PoolStatus = ctx.get(&format!("/pools/{}", seg(&pool)))?;
            let s: PoolStatus = ctx.call(
                Method::POST,
                &format!("/pools/{}/add", seg(&pool)),
                Some(&body),
            )?;
            if ctx.json {
                return ctx.print_json(&s);
            }
            println!(
                "added {} to pool {pool}: {} usable (was {})",
                body.devices.join(" "),
                human(s.usable),
                human(before.usable)
            );
            Ok(())
        }
        PoolCmd::Online {
            pool,
            device,
            expand,
        } => {
            let r: serde_json::Value = ctx.call(
                Method::POST,
                &format!("/pools/{}/online", seg(&pool)),
                Some(&edgevol_api::OnlineDevices { device, expand }),
            )?;
            if ctx.json {
                return ctx.print_json(&r);
            }
            let grown = r["expanded"].as_array().cloned().unwrap_or_default();
            if grown.is_empty() {
                println!("pool {pool}: no group's devices grew; nothing to expand");
            }
            for g in grown {
                println!(
                    "pool {pool}: group {} grew by {} ({} -> {} segments)",
                    g["group"],
                    human(g["bytes"].as_u64().unwrap_or(0)),
                    g["from"],
                    g["to"]
                );
            }
            if let Some(usable) = r["status"]["usable"].as_u64() {
                println!("pool {pool}: {} usable", human(usable));
            }
            Ok(())
        }
        PoolCmd::Check { pool } => {
            let r: CheckReport = ctx.call(
                Method::POST,
                &format!("/pools/{}/check", seg(&pool)),
                None::<&()>,
            )?;
            if ctx.json {
                ctx.print_json(&r)?;
            } else {
                println!(
                    "checked pool {pool}: {} map runs, {} map entries, {} records, {} of data verified",
                    r.runs,
                    r.entries,
                    r.records,
                    human(r.data_bytes)
                );
                for n in &r.notes {
                    println!("note: {n}");
                }
                for e in &r.errors {
                    println!("ERROR: {e}");
                }
                if r.errors.is_empty() {
                    println!("no inconsistencies found");
                }
            }
            if !r.errors.is_empty() {
                bail!("pool {pool} has {} inconsistencies", r.errors.len());
            }
            Ok(())
        }
        PoolCmd::Destroy { pool, force } => {
            ctx.delete(&format!("/pools/{}?force={force}", seg(&pool)))?;
            ctx.destroyed("pool", &pool)
        }
    }
}

/// True if the daemon refused because something else runs (a scan).
fn busy(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<edgevol_api::ClientError>(),
        Some(edgevol_api::ClientError::Api { kind, .. }) if kind == "busy"
    )
}

/// `pool scrub --wait`: wait for a running scan, start the scrub, follow
/// it to its end.
fn scrub_wait(ctx: &Ctx, pool: &str) -> Result<()> {
    let mut p = crate::wait::Progress::new(pool, ctx.json);
    loop {
        crate::wait::until_idle(ctx, pool, &mut p)?;
        let started = ctx.call::<PoolStatus>(
            Method::POST,
            &format!("/pools/{}/scrub", seg(pool)),
            Some(&edgevol_api::ScrubRequest { stop: false }),
        );
        match started {
            Ok(_) => break,
            // Another scan started in between: wait for it too.
            Err(e) if busy(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    let r = crate::wait::follow(ctx, pool, "scrub", &mut p)?;
    crate::wait::verdict(pool, &r)
}

// ----------------------------------------------------------------------
// volume

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a thin volume.
    Create {
        /// POOL/VOLUME.
        volume: String,
        /// Size (bytes or with K/M/G/T), a multiple of 4K.
        #[arg(long, short = 's', value_parser = size_arg)]
        size: u64,
        /// Properties: compression=off|lz4|zstd|zstd-N, readonly=on|off,
        /// comment=..., user properties (org:key=value); at creation only:
        /// encryption=aes-256-gcm, keyformat=passphrase|raw|hex,
        /// keylocation=prompt|file:///PATH|exec:/PATH,
        /// argon2_memory=SIZE (8M..1G, default 64M), argon2_passes=N (default 3).
        #[arg(short = 'o', value_name = "KEY=VALUE")]
        options: Vec<String>,
    },
    /// Load an encrypted volume's key (asks for it when keylocation=prompt).
    LoadKey {
        /// POOL/VOLUME.
        volume: String,
    },
    /// Forget an encrypted volume's key (and its clones'): no I/O until load-key.
    UnloadKey {
        /// POOL/VOLUME.
        volume: String,
        /// Even while clients are attached (their I/O then fails).
        #[arg(long)]
        force: bool,
    },
    /// Wrap an encrypted volume's key with a new secret (the key must be loaded; no data is rewritten).
    ChangeKey {
        /// POOL/VOLUME.
        volume: String,
        /// keyformat=passphrase|raw|hex, keylocation=prompt|file:///PATH|exec:/PATH,
        /// argon2_memory=SIZE (8M..1G, default 64M), argon2_passes=N (default 3).
        #[arg(short = 'o', value_name = "KEY=VALUE")]
        options: Vec<String>,
    },
    /// List volumes (of one pool, or all).
    List {
        /// Pool name.
        pool: Option<String>,
    },
    /// Show properties (all, or one).
    Get {
        /// POOL/VOLUME.
        volume: String,
        /// Property name.
        property: Option<String>,
    },
    /// Set properties (volsize=SIZE grows the volume).
    Set {
        /// POOL/VOLUME.
        volume: String,
        /// KEY=VALUE assignments.
        #[arg(required = true)]
        assignments: Vec<String>,
    },
    /// Clear a property.
    Inherit {
        /// POOL/VOLUME.
        volume: String,
        /// Property name.
        property: String,
    },
    /// Change the size: grow online; shrinking needs --force and discards data past the end.
    Resize {
        /// POOL/VOLUME.
        volume: String,
        /// New size.
        #[arg(value_parser = size_arg)]
        size: u64,
        /// Allow shrinking.
        #[arg(long)]
        force: bool,
    },
    /// Destroy a volume and its snapshots (refused with clones or attached clients).
    Destroy {
        /// POOL/VOLUME.
        volume: String,
        /// Destroy even with attached clients; clones keep what they need.
        #[arg(long)]
        force: bool,
    },
    /// Make a clone independent of its origin (copies the data it shares), so the origin can be destroyed.
    Promote {
        /// POOL/VOLUME.
        volume: String,
    },
}

pub fn volume(ctx: &Ctx, cmd: VolumeCmd) -> Result<()> {
    match cmd {
        VolumeCmd::Create {
            volume,
            size,
            options,
        } => {
            let (p, v) = pool_vol(&volume)?;
            let properties = parse_kv(&options)?;
            let encrypted = properties.get("encryption").is_some_and(|e| e != "off");
            let location = properties
                .get("keylocation")
                .map_or("prompt", String::as_str);
            let secret_hex = if encrypted && location == "prompt" {
                let format = properties
                    .get("keyformat")
                    .map_or("passphrase", String::as_str);
                let s = crate::secret::read_secret(&format!("{p}/{v}"), format, true)?;
                Some(edgevol_api::hex_encode(&s))
            } else {
                None
            };
            let info: VolumeInfo = ctx.post(
                &format!("/pools/{}/volumes", seg(p)),
                &CreateVolume {
                    name: v.to_string(),
                    size,
                    properties,
                    secret_hex,
                },
            )?;
            if ctx.json {
                return ctx.print_json(&info);
            }
            println!("created volume {p}/{v} ({})", human(info.size));
            Ok(())
        }
        VolumeCmd::LoadKey { volume } => {
            let (p, v) = pool_vol(&volume)?;
            let cur: VolumeInfo = ctx.get(&vol_path(p, v))?;
            let Some(location) = cur.keylocation.clone() else {
                bail!("volume {p}/{v} is not encrypted");
            };
            let secret_hex = if location == "prompt" {
                let format = cur.keyformat.as_deref().unwrap_or("passphrase");
                Some(edgevol_api::hex_encode(&crate::secret::read_secret(
                    &format!("{p}/{v}"),
                    format,
                    false,
                )?))
            } else {
                None
            };
            let info: VolumeInfo = ctx.post(
                &format!("{}/load-key", vol_path(p, v)),
                &KeyRequest { secret_hex },
            )?;
            ctx.key_done(&info, "loaded the key of")
        }
        VolumeCmd::UnloadKey { volume, force } => {
            let (p, v) = pool_vol(&volume)?;
            let info: VolumeInfo = ctx.call(
                Method::POST,
                &format!("{}/unload-key?force={force}", vol_path(p, v)),
                None::<&()>,
            )?;
            ctx.key_done(&info, "unloaded the key of")
        }
        VolumeCmd::ChangeKey { volume, options } => {
            let (p, v) = pool_vol(&volume)?;
            let mut kv = parse_kv(&options)?;
            let keyformat = kv.remove("keyformat");
            let keylocation = kv.remove("keylocation");
            let argon2_memory = kv.remove("argon2_memory");
            let argon2_passes = kv.remove("argon2_passes");
            if let Some(k) = kv.keys().next() {
                bail!("change-key takes keyformat, keylocation, argon2_memory and argon2_passes, not {k:?}");
            }
            let cur: VolumeInfo = ctx.get(&vol_path(p, v))?;
            let location = keylocation
                .clone()
                .or(cur.keylocation.clone())
                .unwrap_or_else(|| "prompt".into());
            let secret_hex = if location == "prompt" {
                let format = keyformat
                    .clone()
                    .or(cur.keyformat.clone())
                    .unwrap_or_else(|| "passphrase".into());
                Some(edgevol_api::hex_encode(&crate::secret::read_secret(
                    &format!("{p}/{v} (new)"),
                    &format,
                    true,
                )?))
            } else {
                None
            };
            let info: VolumeInfo = ctx.post(
                &format!("{}/change-key", vol_path(p, v)),
                &ChangeKey {
                    keyformat,
                    keylocation,
                    argon2_memory,
                    argon2_passes,
                    secret_hex,
                },
            )?;
            ctx.key_done(&info, "changed the key of")
        }
        VolumeCmd::List { pool } => {
            let pools: Vec<String> = match pool {
                Some(p) => vec![p],
                None => {
                    let all: Vec<serde_json::Value> = ctx.get("/pools")?;
                    all.iter()
                        .filter(|p| p.get("size").is_some())
                        .filter_map(|p| p["name"].as_str().map(str::to_string))
                        .collect()
                }
            };
            let mut all = Vec::new();
            for p in pools {
                let v: Vec<VolumeInfo> = ctx.get(&format!("/pools/{}/volumes", seg(&p)))?;
                all.extend(v);
            }
            if ctx.json {
                return ctx.print_json(&all);
            }
            let mut t = Table::new(&["NAME", ">SIZE", ">REFER", ">SNAPS", "ORIGIN"]);
            for v in all {
                t.row(vec![
                    format!("{}/{}", v.pool, v.name),
                    human(v.size),
                    human(v.referenced),
                    v.snapshots.to_string(),
                    v.origin.unwrap_or_else(|| "-".into()),
                ]);
            }
            t.print();
            Ok(())
        }
        VolumeCmd::Get { volume, property } => {
            let (p, v) = pool_vol(&volume)?;
            let info: VolumeInfo = ctx.get(&vol_path(p, v))?;
            let space: SpaceReport = ctx.get(&format!("{}/space", vol_path(p, v)))?;
            let or = |v: &Option<String>, none: &str| v.clone().unwrap_or_else(|| none.into());
            let props = vec![
                Prop::text("name", format!("{p}/{v}"), "-"),
                Prop::num("volsize", info.size, "local"),
                Prop::num("referenced", info.referenced, "-"),
                Prop::num("used", space.used, "-"),
                Prop::num("usedbydataset", space.used_by_dataset, "-"),
                Prop::num("usedbysnapshots", space.used_by_snapshots, "-"),
                Prop::num("logicalsize", info.size, "-"),
                Prop::num("stored", space.stored, "-"),
                Prop::ratio("compressratio", space.compressratio),
                Prop::text(
                    "compression",
                    info.compression.clone(),
                    &info.compression_source,
                ),
                Prop::text("encryption", info.encryption.clone(), "-"),
                Prop::text("keyformat", or(&info.keyformat, "none"), "-"),
                Prop::text("keylocation", or(&info.keylocation, "none"), "-"),
                Prop::text("keykdf", or(&info.keykdf, "-"), "-"),
                Prop::text("keystatus", or(&info.keystatus, "-"), "-"),
                Prop::text("origin", or(&info.origin, "-"), "-"),
                Prop::text("basedon", or(&info.based_on, "-"), "-"),
                Prop::num("snapshots", info.snapshots as u64, "-"),
                Prop::time("creation", info.created),
                Prop::text("guid", info.guid.clone(), "-"),
                Prop::text(
                    "readonly",
                    if info.readonly { "on" } else { "off" },
                    if info.properties.contains_key("readonly") {
                        "local"
                    } else {
                        "default"
                    },
                ),
            ];
            print_props(
                ctx,
                props,
                &info.properties,
                property.as_deref(),
                &format!("volume {p}/{v}"),
            )
        }
        VolumeCmd::Set {
            volume,
            assignments,
        } => {
            let (p, v) = pool_vol(&volume)?;
            let mut kv = parse_kv(&assignments)?;
            if kv.is_empty() {
                bail!("nothing to set: give one or more key=value");
            }
            let mut info = None;
            if let Some(size) = kv.remove("volsize") {
                let size = parse_size(&size).map_err(|e| anyhow!(e))?;
                info = Some(ctx.post::<VolumeInfo>(
                    &format!("{}/resize", vol_path(p, v)),
                    &Resize { size, force: false },
                )?);
            }
            if !kv.is_empty() {
                info = Some(ctx.call::<VolumeInfo>(
                    Method::PATCH,
                    &vol_path(p, v),
                    Some(&SetProperties {
                        properties: kv.into_iter().map(|(k, v)| (k, Some(v))).collect(),
                    }),
                )?);
            }
            match info {
                Some(i) => ctx.changed(&i),
                None => Ok(()),
            }
        }
        VolumeCmd::Inherit { volume, property } => {
            let (p, v) = pool_vol(&volume)?;
            let info: VolumeInfo = ctx.call(
                Method::PATCH,
                &vol_path(p, v),
                Some(&SetProperties {
                    properties: [(property, None)].into_iter().collect(),
                }),
            )?;
            ctx.changed(&info)
        }
        VolumeCmd::Resize {
            volume,
            size,
            force,
        } => {
            let (p, v) = pool_vol(&volume)?;
            let info: VolumeInfo = ctx.post(
                &format!("{}/resize", vol_path(p, v)),
                &Resize { size, force },
            )?;
            if ctx.json {
                return ctx.print_json(&info);
            }
            println!("{p}/{v} is now {}", human(info.size));
            Ok(())
        }
        VolumeCmd::Destroy { volume, force } => {
            let (p, v) = pool_vol(&volume)?;
            ctx.delete(&format!("{}?force={force}", vol_path(p, v)))?;
            ctx.destroyed("volume", &format!("{p}/{v}"))
        }
        VolumeCmd::Promote { volume } => {
            let (p, v) = pool_vol(&volume)?;
            let info: VolumeInfo = ctx.call(
                Method::POST,
                &format!("{}/promote", vol_path(p, v)),
                None::<&()>,
            )?;
            if ctx.json {
                return ctx.print_json(&info);
            }
            println!("{p}/{v} no longer depends on an origin");
            Ok(())
        }
    }
}

// ----------------------------------------------------------------------
// snapshot

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Take a snapshot (instant; durable when the command returns).
    Create {
        /// POOL/VOLUME@SNAPSHOT.
        snapshot: String,
    },
    /// List a volume's snapshots as a history tree.
    List {
        /// POOL/VOLUME.
        volume: String,
    },
    /// Destroy a snapshot and free its unique data.
    Destroy {
        /// POOL/VOLUME@SNAPSHOT.
        snapshot: String,
    },
    /// Make the volume equal to the snapshot. The previous head is kept as a
    /// snapshot (if it changed), so you can roll forward again.
    Rollback {
        /// POOL/VOLUME@SNAPSHOT.
        snapshot: String,
    },
}

pub fn snapshot(ctx: &Ctx, cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::Create { snapshot } => {
            let (p, v, s) = pool_vol_snap(&snapshot)?;
            let info: SnapshotInfo = ctx.post(
                &format!("{}/snapshots", vol_path(p, v)),
                &CreateSnapshot {
                    name: s.to_string(),
                },
            )?;
            if ctx.json {
                return ctx.print_json(&info);
            }
            println!("created snapshot {p}/{v}@{s}");
            Ok(())
        }
        SnapshotCmd::List { volume } => {
            let (p, v) = pool_vol(&volume)?;
            let snaps: Vec<SnapshotInfo> = ctx.get(&format!("{}/snapshots", vol_path(p, v)))?;
            let info: VolumeInfo = ctx.get(&vol_path(p, v))?;
            let space: SpaceReport = ctx.get(&format!("{}/space", vol_path(p, v)))?;
            if ctx.json {
                #[derive(Serialize)]
                struct Out<'a> {
                    snapshots: &'a [SnapshotInfo],
                    head_based_on: &'a Option<String>,
                    unique: &'a BTreeMap<String, u64>,
                }
                return ctx.print_json(&Out {
                    snapshots: &snaps,
                    head_based_on: &info.based_on,
                    unique: &space.snapshots,
                });
            }
            print_tree(p, v, &snaps, &info, &space);
            Ok(())
        }
        SnapshotCmd::Destroy { snapshot } => {
            let (p, v, s) = pool_vol_snap(&snapshot)?;
            ctx.delete(&format!("{}/snapshots/{}", vol_path(p, v), seg(s)))?;
            ctx.destroyed("snapshot", &format!("{p}/{v}@{s}"))
        }
        SnapshotCmd::Rollback { snapshot } => {
            let (p, v, s) = pool_vol_snap(&snapshot)?;
            let r: RollbackResult = ctx.call(
                Method::POST,
                &format!("{}/snapshots/{}/rollback", vol_path(p, v), seg(s)),
                None::<&()>,
            )?;
            if ctx.json {
                return ctx.print_json(&r);
            }
            match &r.previous_head {
                Some(h) => println!(
                    "{p}/{v} rolled back to @{s}; the previous head is kept as {p}/{v}@{h} (roll forward with `edgevol snapshot rollback {p}/{v}@{h}`)"
                ),
                None => println!("{p}/{v} rolled back to @{s} (the previous head had no changes since its last snapshot)"),
            }
            Ok(())
        }
    }
}

/// Print snapshots as a tree, with the head where it is.
fn print_tree(p: &str, v: &str, snaps: &[SnapshotInfo], info: &VolumeInfo, space: &SpaceReport) {
    let mut t = Table::new(&["NAME", "CREATED", ">REFER", ">USED"]);
    // Children of each node; None = roots.
    let mut kids: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
    for s in snaps {
        kids.entry(s.parent.clone())
            .or_default()
            .push(s.name.clone());
    }
    const HEAD: &str = "\u{0}head";
    kids.entry(info.based_on.clone())
        .or_default()
        .push(HEAD.to_string());
    let by_name: BTreeMap<&str, &SnapshotInfo> =
        snaps.iter().map(|s| (s.name.as_str(), s)).collect();
    fn walk(
        node: Option<String>,
        prefix: &str,
        kids: &BTreeMap<Option<String>, Vec<String>>,
        by_name: &BTreeMap<&str, &SnapshotInfo>,
        rows: &mut Vec<(String, String)>,
    ) {
        let Some(children) = kids.get(&node) else {
            return;
        };
        for (i, c) in children.iter().enumerate() {
            let last = i + 1 == children.len();
            let branch = if node.is_none() {
                ""
            } else if last {
                "└─ "
            } else {
                "├─ "
            };
            rows.push((format!("{prefix}{branch}"), c.clone()));
            let next = if node.is_none() {
                prefix.to_string()
            } else if last {
                format!("{prefix}   ")
            } else {
                format!("{prefix}│  ")
            };
            if by_name.contains_key(c.as_str()) {
                walk(Some(c.clone()), &next, kids, by_name, rows);
            }
        }
    }
    let mut rows = Vec::new();
    walk(None, "", &kids, &by_name, &mut rows);
    for (prefix, name) in rows {
        if name == HEAD {
            t.row(vec![
                format!("{prefix}{p}/{v} (current)"),
                "-".into(),
                human(info.referenced),
                human(space.used_by_dataset),
            ]);
        } else if let Some(s) = by_name.get(name.as_str()) {
            let auto = if s.auto { " (kept by rollback)" } else { "" };
            t.row(vec![
                format!("{prefix}{p}/{v}@{name}{auto}"),
                time(s.created),
                human(s.referenced),
                human(space.snapshots.get(&name).copied().unwrap_or(0)),
            ]);
        }
    }
    t.print();
}

// ----------------------------------------------------------------------
// clone, exports

pub fn clone(ctx: &Ctx, snapshot: &str, volume: &str) -> Result<()> {
    let (p, v, s) = pool_vol_snap(snapshot)?;
    let (p2, nv) = pool_vol(volume)?;
    if p2 != p {
        bail!("a clone lives in its origin's pool ({p}), not {p2}");
    }
    let info: VolumeInfo = ctx.post(
        &format!("{}/snapshots/{}/clone", vol_path(p, v), seg(s)),
        &CloneVolume {
            name: nv.to_string(),
        },
    )?;
    if ctx.json {
        return ctx.print_json(&info);
    }
    println!("created clone {p}/{nv} of {p}/{v}@{s}");
    Ok(())
}

pub fn exports(ctx: &Ctx) -> Result<()> {
    let v: Vec<ExportInfo> = ctx.get("/exports")?;
    if ctx.json {
        return ctx.print_json(&v);
    }
    let mut t = Table::new(&["EXPORT", "TRANSPORT", ">CONNECTIONS", "MODE"]);
    for e in v {
        t.row(vec![
            e.name,
            e.transport,
            e.connections.to_string(),
            if e.read_only { "ro" } else { "rw" }.into(),
        ]);
    }
    t.print();
    Ok(())
}

// ----------------------------------------------------------------------
// export (vhost-user-blk)

#[derive(Subcommand)]
pub enum ExportCmd {
    /// Export POOL/VOL (or POOL/VOL@SNAP, read-only) to a VM over
    /// vhost-user-blk: the daemon listens on SOCKET; QEMU attaches with
    /// `-chardev socket,id=c,path=SOCKET,reconnect=1 -device
    /// vhost-user-blk-pci,chardev=c,num-queues=N` and guest RAM shared
    /// (`-object memory-backend-memfd,id=mem,size=...,share=on -numa
    /// node,memdev=mem`). Recorded in the data directory: a restarted
    /// daemon listens again and QEMU reconnects.
    Add {
        /// POOL/VOL or POOL/VOL@SNAP.
        volume: String,
        /// The vhost-user socket to create.
        #[arg(long, value_name = "SOCKET")]
        vhost_user: String,
        /// Virtqueues (1..64; the guest uses at most one per vCPU).
        #[arg(long, default_value_t = 1)]
        queues: u16,
        /// Export read-only.
        #[arg(long)]
        read_only: bool,
        /// Let several VMs attach at once (a shared disk: the guests must
        /// coordinate); by default a second VM is refused.
        #[arg(long)]
        shared: bool,
        /// Queue worker threads: per-queue or shared.
        #[arg(long, default_value = "per-queue")]
        workers: String,
        /// Only while this daemon runs (not recorded).
        #[arg(long)]
        temporary: bool,
    },
    /// vhost-user-blk exports and their state.
    List,
    /// Stop exporting (by socket path or POOL/VOL); refused while a VM is
    /// attached unless --force.
    Remove {
        /// SOCKET or POOL/VOL.
        what: String,
        /// Disconnect an attached VM (its I/O then waits for a new export).
        #[arg(long)]
        force: bool,
    },
}

fn print_vhost(v: &[VhostUserExportInfo]) {
    let mut t = Table::new(&[
        "VOLUME", "SOCKET", ">QUEUES", "MODE", "STATE", ">VMS", "SERIAL", "CACHE",
    ]);
    for e in v {
        t.row(vec![
            e.volume.clone(),
            e.socket.clone(),
            e.queues.to_string(),
            if e.read_only { "ro" } else { "rw" }.to_string()
                + if e.shared { ",shared" } else { "" }
                + if e.persistent { "" } else { ",temporary" },
            match &e.error {
                Some(err) => format!("error: {err}"),
                None => e.state.clone(),
            },
            e.connections.to_string(),
            e.serial.clone().unwrap_or_else(|| "-".into()),
            e.write_cache.clone(),
        ]);
    }
    t.print();
}

pub fn export(ctx: &Ctx, cmd: ExportCmd) -> Result<()> {
    match cmd {
        ExportCmd::Add {
            volume,
            vhost_user,
            queues,
            read_only,
            shared,
            workers,
            temporary,
        } => {
            // The daemon may run elsewhere: give it an absolute path.
            let socket = edgevol_daemon::registry::absolute(std::path::Path::new(&vhost_user));
            let info: VhostUserExportInfo = ctx.post(
                "/exports/vhost-user",
                &AddVhostUserExport {
                    volume,
                    socket: socket.display().to_string(),
                    queues: Some(queues),
                    read_only,
                    shared,
                    workers: Some(workers),
                    persistent: Some(!temporary),
                },
            )?;
            if ctx.json {
                return ctx.print_json(&info);
            }
            println!(
                "exporting {} on {} ({} queue{}, {}, serial {})",
                info.volume,
                info.socket,
                info.queues,
                if info.queues == 1 { "" } else { "s" },
                if info.read_only {
                    "read-only"
                } else {
                    "read-write"
                },
                info.serial.as_deref().unwrap_or("-")
            );
            Ok(())
        }
        ExportCmd::List => {
            let v: Vec<VhostUserExportInfo> = ctx.get("/exports/vhost-user")?;
            if ctx.json {
                return ctx.print_json(&v);
            }
            print_vhost(&v);
            Ok(())
        }
        ExportCmd::Remove { what, force } => {
            // The daemon matches either: a socket path or a volume name.
            let socket = edgevol_daemon::registry::absolute(std::path::Path::new(&what));
            let key = format!(
                "socket={}&volume={}",
                seg_query(&socket.display().to_string()),
                seg_query(&what)
            );
            let removed: Vec<VhostUserExportInfo> = ctx.call(
                Method::DELETE,
                &format!("/exports/vhost-user?{key}&force={force}"),
                None::<&()>,
            )?;
            if ctx.json {
                return ctx.print_json(&removed);
            }
            for e in removed {
                println!("stopped exporting {} on {}", e.volume, e.socket);
            }
            Ok(())
        }
    }
}

/// Query-string escaping.
fn seg_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `pool status`'s reserve, by purpose (docs/architecture.md, "Space").
fn reserve_parts(r: &edgevol_api::Reserve) -> String {
    [
        ("over-provisioning for the cleaner", r.overprovision),
        ("metadata", r.metadata),
        ("metadata floor", r.metadata_floor),
        ("cleaner", r.cleaner),
        ("open write streams", r.streams),
    ]
    .iter()
    .filter(|(_, b)| *b > 0)
    .map(|(what, b)| format!("{what} {}", human(*b)))
    .collect::<Vec<_>>()
    .join(", ")
}
