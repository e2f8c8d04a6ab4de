//! `edgevol`: the daemon and its command-line interface, in one binary.
//!
//! ```text
//! edgevol serve --data-dir DIR      the daemon
//! edgevol up                        the daemon with a demo pool and volume (try it)
//! edgevol pool|volume|snapshot|clone|export ...   talk to the daemon's API socket
//! edgevol bench                     compare with qemu-storage-daemon & co. (fio)
//! edgevol test crash                power-cut campaign against the engine
//! ```

mod bench;
mod commands;
mod secret;
mod serve;
mod table;
mod torture;
mod units;
mod wait;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// One daemon serving thin, snapshot-able volumes (NBD) from pools of drives.
#[derive(Parser)]
#[command(name = "edgevol", version, about, propagate_version = true)]
struct Cli {
    /// The daemon's API socket [default: ./edgevol-data/api.sock].
    #[arg(long, global = true, env = "EDGEVOL_API", value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: import the pools recorded in DIR and serve them.
    Serve(serve::ServeArgs),
    /// Run the daemon on an embedded default: a sparse file-backed pool
    /// `demo` under ./edgevol-data with volume `demo/vol0`, served over NBD.
    Up(serve::UpArgs),
    /// Pools: create, list, status, check, destroy.
    #[command(subcommand)]
    Pool(commands::PoolCmd),
    /// Volumes: create, list, get, set, resize, destroy, promote.
    #[command(subcommand)]
    Volume(commands::VolumeCmd),
    /// Snapshots: create, list, destroy, rollback.
    #[command(subcommand)]
    Snapshot(commands::SnapshotCmd),
    /// Create a writable clone POOL/NEWVOL of POOL/VOL@SNAP.
    Clone {
        /// Source snapshot, POOL/VOL@SNAP.
        snapshot: String,
        /// New volume, POOL/NEWVOL.
        volume: String,
    },
    /// Clients attached to exports (NBD and vhost-user).
    Exports,
    /// vhost-user-blk exports for VMs: add, list, remove.
    #[command(subcommand)]
    Export(commands::ExportCmd),
    /// Benchmark edgevol against qemu-storage-daemon, qemu-nbd and the raw
    /// file on this machine (fio over NBD); see docs/benchmark.md.
    Bench(bench::BenchArgs),
    /// Reliability campaigns (power cuts on simulated devices); see
    /// docs/reliability.md.
    #[command(subcommand)]
    Test(torture::TestCmd),
}

/// Client commands exit quietly when their output pipe closes (`| head`),
/// like other Unix tools, instead of panicking on a failed print.
fn default_sigpipe() {
    // SAFETY: called once at start-up, before any thread exists; SIG_DFL is
    // a valid disposition for SIGPIPE and no handler state is shared.
    // JUSTIFICATION: std has no safe API to restore a signal disposition.
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Colour in log lines only for a person at a terminal: never in a file,
/// a pipe or a journal, and never with `NO_COLOR` set (no-color.org).
fn log_colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Serve(_) | Cmd::Up(_)) {
        default_sigpipe();
    }
    let daemon = matches!(cli.cmd, Cmd::Serve(_) | Cmd::Up(_));
    let default = if daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(log_colours())
        .init();
    let result = match cli.cmd {
        Cmd::Serve(a) => serve::serve(a),
        Cmd::Up(a) => serve::up(a),
        Cmd::Bench(a) => bench::run(a, cli.json),
        Cmd::Test(c) => torture::run(c, cli.json),
        cmd => {
            let ctx = commands::Ctx::new(cli.api_socket, cli.json);
            match cmd {
                Cmd::Pool(c) => commands::pool(&ctx, c),
                Cmd::Volume(c) => commands::volume(&ctx, c),
                Cmd::Snapshot(c) => commands::snapshot(&ctx, c),
                Cmd::Clone { snapshot, volume } => commands::clone(&ctx, &snapshot, &volume),
                Cmd::Exports => commands::exports(&ctx),
                Cmd::Export(c) => commands::export(&ctx, c),
                Cmd::Serve(_) | Cmd::Up(_) | Cmd::Bench(_) | Cmd::Test(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        let mut msg = e.to_string();
        for cause in e.chain().skip(1) {
            let c = cause.to_string();
            if !msg.contains(&c) {
                msg.push_str(": ");
                msg.push_str(&c);
            }
        }
        eprintln!("edgevol: {msg}");
        std::process::exit(1);
    }
}
