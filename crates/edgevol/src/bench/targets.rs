//! Targets: edgevol and the anchors it is compared with, their images and
//! their servers.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::daemon::{self, Daemon};
use super::fio::Io;
use super::procs::{self, Proc};

/// Connections the anchors accept (fio's 4 jobs, 16 clients).
const MAX_CONN: u32 = 16;

/// A benchmark target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// fio io_uring `direct=1` on a raw file: the physical limit.
    Native,
    /// qemu-storage-daemon, raw format.
    QsdRaw,
    /// qemu-storage-daemon, qcow2 format.
    QsdQcow2,
    /// qemu-nbd, qcow2.
    QemuNbdQcow2,
    /// An edgevol volume.
    Edgevol,
}

/// How a target stores its image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A raw file (shared by the raw targets, filled once per pass).
    Raw,
    /// A qcow2 image (`qemu-img create`).
    Qcow2,
    /// An edgevol data directory with a file-backed pool and one volume.
    Edgevol,
}

impl Target {
    /// Every target, in table order.
    pub const ALL: [Target; 5] = [
        Target::Native,
        Target::QsdRaw,
        Target::QsdQcow2,
        Target::QemuNbdQcow2,
        Target::Edgevol,
    ];

    /// Name in tables, JSON and `--targets`.
    pub fn name(self) -> &'static str {
        match self {
            Target::Native => "native",
            Target::QsdRaw => "qsd-raw",
            Target::QsdQcow2 => "qsd-qcow2",
            Target::QemuNbdQcow2 => "qemu-nbd-qcow2",
            Target::Edgevol => "edgevol",
        }
    }

    /// One line about it.
    pub fn desc(self) -> &'static str {
        match self {
            Target::Native => {
                "fio io_uring direct=1 on a raw file on the same file system (no server)"
            }
            Target::QsdRaw => {
                "qemu-storage-daemon, file aio=io_uring cache.direct=on, raw, NBD export"
            }
            Target::QsdQcow2 => {
                "qemu-storage-daemon, file aio=io_uring cache.direct=on, qcow2, NBD export"
            }
            Target::QemuNbdQcow2 => {
                "qemu-nbd --cache=none --aio=io_uring --shared=16 --persistent, qcow2"
            }
            Target::Edgevol => "edgevol serve, file-backed pool (3x size + 1G, written in full first), one thin volume",
        }
    }

    /// Parse a name.
    pub fn from_name(s: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Image format.
    pub fn format(self) -> Format {
        match self {
            Target::Native | Target::QsdRaw => Format::Raw,
            Target::QsdQcow2 | Target::QemuNbdQcow2 => Format::Qcow2,
            Target::Edgevol => Format::Edgevol,
        }
    }

    /// Whether write jobs get a fresh (unallocated) image; raw targets
    /// write to the filled file instead.
    pub fn fresh_writes(self) -> bool {
        self.format() != Format::Raw
    }

    /// External programs it needs.
    pub fn tools(self) -> &'static [&'static str] {
        match self {
            Target::Native | Target::Edgevol => &[],
            Target::QsdRaw => &["qemu-storage-daemon"],
            Target::QsdQcow2 => &["qemu-storage-daemon", "qemu-img"],
            Target::QemuNbdQcow2 => &["qemu-nbd", "qemu-img"],
        }
    }

    /// Why it cannot run here, if it cannot.
    pub fn unavailable(self) -> Option<String> {
        if self == Target::Native && !fio_has_engine("io_uring") {
            return Some("this fio has no io_uring engine".into());
        }
        self.tools()
            .iter()
            .find(|t| find_in_path(t).is_none())
            .map(|t| {
                format!(
                    "{t} is not installed (Debian: apt-get install qemu-utils qemu-system-common)"
                )
            })
    }
}

/// Whether fio has ioengine `name`.
pub fn fio_has_engine(name: &str) -> bool {
    Command::new("fio")
        .arg(format!("--enghelp={name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// An executable `name` in `$PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// An image a target serves.
#[derive(Debug)]
pub enum Image {
    /// Raw file.
    Raw(PathBuf),
    /// qcow2 file.
    Qcow2(PathBuf),
    /// edgevol data directory; the pool and volume are created on the
    /// first start of its daemon.
    Edgevol {
        /// `--data-dir`.
        dir: PathBuf,
        /// Whether pool and volume exist yet.
        created: bool,
    },
}

impl Image {
    /// Create a new image of `size` bytes at `path` (a file, or for edgevol
    /// a directory).
    pub fn create(format: Format, path: &Path, size: u64) -> Result<Image> {
        match format {
            Format::Raw => {
                let f = std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                f.set_len(size)?;
                Ok(Image::Raw(path.to_path_buf()))
            }
            Format::Qcow2 => {
                procs::run(
                    Command::new("qemu-img")
                        .args(["create", "-q", "-f", "qcow2"])
                        .arg(path)
                        .arg(size.to_string()),
                )?;
                Ok(Image::Qcow2(path.to_path_buf()))
            }
            Format::Edgevol => {
                std::fs::create_dir_all(path)?;
                Ok(Image::Edgevol {
                    dir: path.to_path_buf(),
                    created: false,
                })
            }
        }
    }

    /// The file holding the data (edgevol: the pool file).
    pub fn data_file(&self) -> PathBuf {
        match self {
            Image::Raw(p) | Image::Qcow2(p) => p.clone(),
            Image::Edgevol { dir, .. } => dir.join("pool.img"),
        }
    }

    /// Bytes the image occupies on the file system.
    pub fn disk_bytes(&self) -> Option<u64> {
        std::fs::metadata(self.data_file())
            .ok()
            .map(|m| m.blocks() * 512)
    }

    /// Flush the image file, so no write-back carries over to the next job.
    pub fn settle(&self) {
        if let Ok(f) = std::fs::File::open(self.data_file()) {
            let _ = f.sync_all();
        }
    }

    /// Delete the image and wait for the file system to finish with it
    /// (`sync -f`), so that work does not land in the next job's window.
    pub fn remove(&self) {
        let (path, parent) = match self {
            Image::Raw(p) | Image::Qcow2(p) => {
                let _ = std::fs::remove_file(p);
                (p.clone(), p.parent().map(Path::to_path_buf))
            }
            Image::Edgevol { dir, .. } => {
                let _ = std::fs::remove_dir_all(dir);
                (dir.clone(), dir.parent().map(Path::to_path_buf))
            }
        };
        let _ = procs::run(Command::new("sync").arg("-f").arg(parent.unwrap_or(path)));
    }
}

enum ServerProc {
    Plain(Proc),
    Edgevol(Daemon),
}

/// A running NBD server (or none, for `native`).
pub struct Server {
    proc: Option<ServerProc>,
    /// Where fio sends its I/O.
    pub io: Io,
}

/// Sizes a server needs to set up an image.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Virtual size of every image / volume.
    pub image: u64,
    /// edgevol pool file size.
    pub pool: u64,
}

impl Server {
    /// Start `target`'s server on `img` (for edgevol, creating pool and
    /// volume the first time); the server's output goes to `log`.
    pub fn start(
        target: Target,
        img: &mut Image,
        sock: &Path,
        log: &Path,
        sizes: Sizes,
    ) -> Result<Server> {
        let file = img.data_file();
        let fname = file.display().to_string();
        if fname.contains(',') || sock.display().to_string().contains(',') {
            bail!("paths with ',' cannot be passed to QEMU: {fname}");
        }
        let _ = std::fs::remove_file(sock);
        let file_node =
            format!("driver=file,node-name=file0,filename={fname},aio=io_uring,cache.direct=on");
        let qsd = |fmt: &str| {
            let mut c = Command::new("qemu-storage-daemon");
            c.arg("--blockdev")
                .arg(&file_node)
                .arg("--blockdev")
                .arg(format!("driver={fmt},node-name=fmt0,file=file0"))
                .arg("--nbd-server")
                .arg(format!(
                    "addr.type=unix,addr.path={},max-connections={MAX_CONN}",
                    sock.display()
                ))
                .arg("--export")
                .arg("type=nbd,id=exp0,node-name=fmt0,name=,writable=on");
            c
        };
        let cmd = match target {
            Target::Native => {
                return Ok(Server {
                    proc: None,
                    io: Io::File(file, sizes.image),
                })
            }
            Target::QsdRaw => qsd("raw"),
            Target::QsdQcow2 => qsd("qcow2"),
            Target::QemuNbdQcow2 => {
                let mut c = Command::new("qemu-nbd");
                c.args(["--format=qcow2", "--cache=none", "--aio=io_uring"])
                    .arg(format!("--shared={MAX_CONN}"))
                    .arg("--persistent")
                    .arg(format!("--socket={}", sock.display()))
                    .arg(&file);
                c
            }
            Target::Edgevol => {
                let Image::Edgevol { dir, created } = img else {
                    bail!("edgevol needs an edgevol image");
                };
                let d = Daemon::start(dir, log)?;
                if !*created {
                    d.create_pool_written(&dir.join("pool.img"), sizes.pool)?;
                    d.create_volume("vol0", sizes.image, &[])?;
                    *created = true;
                }
                let uri = d.uri("vol0");
                return Ok(Server {
                    proc: Some(ServerProc::Edgevol(d)),
                    io: Io::Nbd(uri),
                });
            }
        };
        let mut p = Proc::spawn(cmd, log)?;
        wait_nbd(&mut p, sock, log)?;
        Ok(Server {
            proc: Some(ServerProc::Plain(p)),
            io: Io::Nbd(format!("nbd+unix:///?socket={}", sock.display())),
        })
    }

    /// Serve volume `vol` of a daemon started elsewhere (scenarios).
    pub fn edgevol(d: Daemon, vol: &str) -> Server {
        let io = Io::Nbd(d.uri(vol));
        Server {
            proc: Some(ServerProc::Edgevol(d)),
            io,
        }
    }

    /// The server's process id (None for `native`).
    pub fn pid(&self) -> Option<u32> {
        match &self.proc {
            None => None,
            Some(ServerProc::Plain(p)) => Some(p.pid()),
            Some(ServerProc::Edgevol(d)) => Some(d.proc.pid()),
        }
    }

    /// Whether the server exited by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        match &mut self.proc {
            None => None,
            Some(ServerProc::Plain(p)) => p.try_wait(),
            Some(ServerProc::Edgevol(d)) => d.proc.try_wait(),
        }
    }

    /// The edgevol daemon, if this is one.
    pub fn daemon(&self) -> Option<&Daemon> {
        match &self.proc {
            Some(ServerProc::Edgevol(d)) => Some(d),
            _ => None,
        }
    }

    /// Stop the server (SIGTERM, SIGKILL after 60 s).
    pub fn stop(self) -> Option<ExitStatus> {
        match self.proc {
            None => None,
            Some(ServerProc::Plain(mut p)) => Some(p.stop(Duration::from_secs(60))),
            Some(ServerProc::Edgevol(d)) => Some(d.stop()),
        }
    }
}

/// Wait until the server greets on its socket (`NBDMAGIC`).
fn wait_nbd(p: &mut Proc, sock: &Path, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(st) = p.try_wait() {
            bail!("{} exited ({st}): {}", p.name, daemon::tail(log));
        }
        if let Ok(mut s) = UnixStream::connect(sock) {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut magic = [0u8; 8];
            if s.read_exact(&mut magic).is_ok() && &magic == b"NBDMAGIC" {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{} not ready after 90 s: {}", p.name, daemon::tail(log));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Target::ALL {
            assert_eq!(Target::from_name(t.name()), Some(t));
        }
        assert_eq!(Target::from_name("nbdkit"), None);
        assert!(!Target::QsdRaw.fresh_writes());
        assert!(Target::Edgevol.fresh_writes());
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("no-such-tool-here").is_none());
    }
}
