//! `edgevol serve` and `edgevol up`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use edgevol_daemon::{Registry, Running, ServeConfig};
use edgevol_engine::{ErrorKind, PoolConfig};

use crate::units::{human, parse_size};

/// Engine tuning shared by `serve` and `up`.
#[derive(Args, Clone)]
pub struct Tuning {
    /// Map block cache shared by all volumes (e.g. 64M).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    cache: u64,
    /// Memtable budget per pool before the map flushes (e.g. 16M).
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    memtable: u64,
    /// Data-plane threads, each with its own io_uring serving NBD
    /// connections and pool writers [default: one per two cores].
    #[arg(long, value_name = "N")]
    reactors: Option<usize>,
}

impl Tuning {
    fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            cache_bytes: self.cache,
            memtable_bytes: self.memtable as usize,
            ..PoolConfig::default()
        }
    }

    fn reactors(&self) -> usize {
        self.reactors.unwrap_or(0)
    }
}

/// `edgevol serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Data directory: pools.json, sockets.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Management API socket [default: DIR/api.sock].
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// NBD over TCP ("none" to disable).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10809")]
    nbd_listen: String,
    /// NBD over a Unix socket [default: DIR/nbd.sock] ("none" to disable).
    #[arg(long, value_name = "PATH")]
    nbd_socket: Option<String>,
    /// Export served to clients that ask for the empty name (POOL/VOLUME).
    #[arg(long, value_name = "POOL/VOLUME")]
    default_export: Option<String>,
    /// Export a volume to a VM over vhost-user-blk on SOCKET while this
    /// daemon runs (repeatable; options after commas: queues=N, read-only,
    /// shared, workers=shared). `edgevol export add` records exports that
    /// outlive the daemon.
    #[arg(long, value_name = "POOL/VOL=SOCKET[,queues=N][,read-only][,shared]")]
    vhost_user: Vec<String>,
    #[command(flatten)]
    tuning: Tuning,
}

/// `POOL/VOL=SOCKET[,queues=N][,read-only][,shared][,workers=M]`.
fn vhost_arg(s: &str) -> Result<edgevol_daemon::vhost::VhostSpec> {
    let (vol, rest) = s.split_once('=').with_context(|| {
        format!("--vhost-user {s:?}: want POOL/VOL=SOCKET[,queues=N][,read-only][,shared]")
    })?;
    let mut parts = rest.split(',');
    let socket = parts.next().unwrap_or_default().to_string();
    let mut req = edgevol_api::AddVhostUserExport {
        volume: vol.to_string(),
        socket,
        queues: None,
        read_only: false,
        shared: false,
        workers: None,
        persistent: Some(false),
    };
    for p in parts {
        match p.split_once('=') {
            Some(("queues", n)) => {
                req.queues = Some(
                    n.parse()
                        .with_context(|| format!("--vhost-user {s:?}: queues={n}"))?,
                )
            }
            Some(("workers", w)) => req.workers = Some(w.to_string()),
            None if p == "read-only" || p == "ro" => req.read_only = true,
            None if p == "shared" => req.shared = true,
            _ => anyhow::bail!("--vhost-user {s:?}: unknown option {p:?}"),
        }
    }
    Ok(edgevol_daemon::vhost::VhostSpec::from_request(&req)?)
}

fn listen_addr(s: &str) -> Result<Option<SocketAddr>> {
    if s == "none" {
        return Ok(None);
    }
    Ok(Some(s.parse().with_context(|| {
        format!("invalid --nbd-listen {s:?} (want ADDR:PORT or none)")
    })?))
}

fn nbd_socket(arg: &Option<String>, dir: &std::path::Path) -> Option<PathBuf> {
    match arg.as_deref() {
        Some("none") => None,
        Some(p) => Some(PathBuf::from(p)),
        None => Some(dir.join("nbd.sock")),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // The control plane (API, signals, accepting NBD connections): one
    // worker is plenty; the data path runs on the reactors.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ev-ctl")
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let cfg = ServeConfig {
        nbd_listen: listen_addr(&a.nbd_listen)?,
        nbd_socket: nbd_socket(&a.nbd_socket, &a.data_dir),
        data_dir: a.data_dir,
        api_socket: a.api_socket,
        default_export: a.default_export,
        pool: a.tuning.pool_config(),
        reactors: a.tuning.reactors(),
        vhost_user: a
            .vhost_user
            .iter()
            .map(|s| vhost_arg(s))
            .collect::<Result<_>>()?,
    };
    runtime()?.block_on(edgevol_daemon::serve(cfg, |_| Ok(()), |_| {}))?;
    Ok(())
}

/// `edgevol up`.
#[derive(Args)]
pub struct UpArgs {
    /// Data directory.
    #[arg(long, value_name = "DIR", default_value = "edgevol-data")]
    data_dir: PathBuf,
    /// The pool's backing file [default: DIR/demo.img].
    #[arg(long, value_name = "PATH")]
    pool_file: Option<PathBuf>,
    /// Size of the sparse pool file created on first start.
    #[arg(long, default_value = "20G", value_parser = parse_size)]
    pool_size: u64,
    /// Size of demo/vol0 created on first start.
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    volume_size: u64,
    /// NBD over TCP ("none" to disable).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10809")]
    nbd_listen: String,
    /// NBD over a Unix socket [default: DIR/nbd.sock] ("none" to disable).
    #[arg(long, value_name = "PATH")]
    nbd_socket: Option<String>,
    #[command(flatten)]
    tuning: Tuning,
}

pub fn up(a: UpArgs) -> Result<()> {
    let dir = if a.data_dir.is_absolute() {
        a.data_dir.clone()
    } else {
        std::env::current_dir()?.join(&a.data_dir)
    };
    let cfg = ServeConfig {
        nbd_listen: listen_addr(&a.nbd_listen)?,
        nbd_socket: nbd_socket(&a.nbd_socket, &dir),
        data_dir: dir.clone(),
        api_socket: None,
        default_export: Some("demo/vol0".into()),
        pool: a.tuning.pool_config(),
        reactors: a.tuning.reactors(),
        vhost_user: Vec::new(),
    };
    let (pool_size, vol_size) = (a.pool_size, a.volume_size);
    let img = match &a.pool_file {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => std::env::current_dir()?.join(p),
        None => dir.join("demo.img"),
    };
    let img_shown = img.clone();
    let init = move |reg: &Registry| -> Result<(), edgevol_engine::Error> {
        let pool = match reg.pool("demo") {
            Ok(p) => p,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                tracing::info!(file = %img.display(), size = pool_size, "creating pool demo");
                reg.create_pool(
                    "demo",
                    &[img.display().to_string()],
                    Some(pool_size),
                    None,
                    false,
                )?
            }
            Err(e) => return Err(e),
        };
        if pool.volume_info("vol0").is_err() {
            pool.create_volume("vol0", vol_size, BTreeMap::new())?;
        }
        Ok(())
    };
    let banner = |r: &Running| {
        let vol = r
            .registry
            .pool("demo")
            .and_then(|p| p.volume_info("vol0"))
            .map(|v| human(v.size))
            .unwrap_or_default();
        let api = r.api_socket.display();
        println!();
        println!(
            "edgevol is serving pool \"demo\" (sparse file {}) with volume demo/vol0 ({vol}).",
            img_shown.display()
        );
        if let Some(addr) = r.nbd_addr {
            println!("  NBD:  nbd://{addr}/demo/vol0");
        }
        if let Some(s) = &r.nbd_socket {
            println!("        nbd+unix:///demo/vol0?socket={}", s.display());
        }
        println!("  API:  {api}   (export EDGEVOL_API={api} to use the CLI from elsewhere)");
        println!();
        println!("Try, in another terminal:");
        let uri = match (r.nbd_addr, &r.nbd_socket) {
            (Some(a), _) => format!("nbd://{a}/demo/vol0"),
            (None, Some(s)) => format!("nbd+unix:///demo/vol0?socket={}", s.display()),
            (None, None) => "(no NBD listener)".to_string(),
        };
        println!("  qemu-img info {uri}");
        println!("  nbdinfo --map {uri}");
        println!("  fio --name=try --ioengine=nbd --uri={uri} --rw=randwrite --bs=4k --iodepth=16 --time_based --runtime=10");
        println!("  edgevol snapshot create demo/vol0@first && edgevol snapshot list demo/vol0");
        println!("  edgevol pool status demo");
        println!();
        println!("Ctrl-C stops the daemon (everything acknowledged is kept; the next `edgevol up` resumes).");
    };
    runtime()?.block_on(edgevol_daemon::serve(cfg, init, banner))?;
    Ok(())
}
