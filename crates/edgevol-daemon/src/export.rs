//! NBD exports over engine volumes: the thin adapter between
//! `edgevol-nbd`'s `Export` and the engine's `Volume`.
//!
//! Export names are `POOL/VOLUME` (read-write) and `POOL/VOLUME@SNAPSHOT`
//! (read-only). Engine errors map to NBD errno values:
//!
//! | engine | NBD |
//! |---|---|
//! | InvalidArgument | EINVAL |
//! | NoSpace | ENOSPC |
//! | ReadOnly, PermissionDenied (key not loaded) | EPERM |
//! | Shutdown | ESHUTDOWN |
//! | Unsupported | ENOTSUP |
//! | everything else (Io, Corrupt, Poisoned, NotFound: the volume went away) | EIO |
//!
//! A volume destroyed under its clients (`volume destroy --force`) keeps
//! the size they were last shown, so their requests reach the engine and
//! fail there as the volume gone (EIO), not as a range past an end of 0
//! (EINVAL for reads, ENOSPC for writes).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use edgevol_engine::{ErrorKind, ReadSeg, Volume};
use edgevol_nbd::{
    BlockSizes, Errno, Export, ExportError, ExportProvider, Extent, OpenError, ReadChunk, ZeroFlags,
};

use crate::registry::Registry;

/// Map an engine error to an NBD error.
pub fn nbd_error(e: edgevol_engine::Error) -> ExportError {
    let errno = match e.kind() {
        ErrorKind::InvalidArgument => Errno::Inval,
        ErrorKind::NoSpace => Errno::NoSpc,
        ErrorKind::ReadOnly | ErrorKind::PermissionDenied => Errno::Perm,
        ErrorKind::Shutdown => Errno::Shutdown,
        ErrorKind::Unsupported => Errno::NotSup,
        _ => Errno::Io,
    };
    ExportError::new(errno, e.to_string())
}

/// Largest READ/WRITE payload of a client that did not negotiate block
/// sizes (those that did are told 32 MiB).
pub const UNNEGOTIATED_MAX_PAYLOAD: u32 = 64 << 20;

/// One client's view of a volume or snapshot.
pub struct VolumeExport {
    vol: Volume,
    name: String,
    registry: Arc<Registry>,
    /// The size the client last saw: what it is told while the volume is
    /// gone (the engine reports 0 then).
    shown: AtomicU64,
}

impl Drop for VolumeExport {
    fn drop(&mut self) {
        self.registry.detach(&self.name);
    }
}

impl Export for VolumeExport {
    fn size(&self) -> u64 {
        // Per request: a store only when the size changed (a resize).
        let (now, shown) = (self.vol.size(), self.shown.load(Ordering::Relaxed));
        match now {
            0 => shown,
            _ if now == shown => now,
            _ => {
                self.shown.store(now, Ordering::Relaxed);
                now
            }
        }
    }

    fn read_only(&self) -> bool {
        self.vol.read_only()
    }

    fn block_sizes(&self) -> BlockSizes {
        BlockSizes {
            minimum: 4096,
            preferred: 4096,
            maximum: 32 << 20,
        }
    }

    fn unnegotiated_block_sizes(&self) -> Option<BlockSizes> {
        // The engine serves any byte range (read-modify-write of partial
        // blocks), so clients that do not negotiate block sizes get the
        // spec's default minimum of 1, and a maximum payload above the
        // spec's 2^25 floor for old clients that send larger requests.
        Some(BlockSizes {
            minimum: 1,
            preferred: 4096,
            maximum: UNNEGOTIATED_MAX_PAYLOAD,
        })
    }

    fn can_multi_conn(&self) -> bool {
        // A flush makes every acknowledged write of every connection durable
        // (one writer, one log), and all connections read through one map.
        true
    }

    fn description(&self) -> String {
        if self.vol.is_snapshot() {
            format!("edgevol snapshot {} (read-only)", self.name)
        } else {
            format!("edgevol volume {}", self.name)
        }
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Vec<ReadChunk>, ExportError> {
        let segs = self
            .vol
            .read(offset, u64::from(len))
            .await
            .map_err(nbd_error)?;
        Ok(segs
            .into_iter()
            .map(|s| match s {
                ReadSeg::Data(b) => ReadChunk::Data(b),
                ReadSeg::Zero(n) => ReadChunk::Zero(n as u32),
            })
            .collect())
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), ExportError> {
        self.vol.write(offset, data, fua).await.map_err(nbd_error)
    }

    async fn flush(&self) -> Result<(), ExportError> {
        self.vol.flush().await.map_err(nbd_error)
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), ExportError> {
        self.vol
            .trim(offset, u64::from(len), fua)
            .await
            .map_err(nbd_error)
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        flags: ZeroFlags,
    ) -> Result<(), ExportError> {
        // Zeroing is a metadata operation here: always fast.
        self.vol
            .write_zeroes(offset, u64::from(len), flags.no_hole, flags.fua)
            .await
            .map_err(nbd_error)
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, ExportError> {
        let ext = self
            .vol
            .block_status(offset, u64::from(len))
            .await
            .map_err(nbd_error)?;
        Ok(ext
            .into_iter()
            .map(|e| Extent {
                length: e.length as u32,
                hole: e.hole,
                zero: e.zero,
            })
            .collect())
    }

    async fn cache(&self, _offset: u64, _len: u32) -> Result<(), ExportError> {
        Ok(())
    }
}

/// Resolves export names against the registry.
pub struct Provider {
    registry: Arc<Registry>,
    default_export: Option<String>,
}

impl Provider {
    /// A provider; `default_export` is served for the empty export name.
    pub fn new(registry: Arc<Registry>, default_export: Option<String>) -> Provider {
        Provider {
            registry,
            default_export,
        }
    }
}

impl ExportProvider for Provider {
    type Export = VolumeExport;

    fn list(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for p in self.registry.pools() {
            for v in p.volumes() {
                out.push((
                    format!("{}/{}", p.name(), v.name),
                    format!("edgevol volume, {} bytes", v.size),
                ));
            }
        }
        out
    }

    fn open(&self, name: &str) -> Result<VolumeExport, OpenError> {
        let name = if name.is_empty() {
            self.default_export.clone().ok_or_else(|| {
                OpenError::Unknown(
                    "no default export: ask for POOL/VOLUME (see `edgevol volume list`)".into(),
                )
            })?
        } else {
            name.to_string()
        };
        let Some((pool, rest)) = name.split_once('/') else {
            return Err(OpenError::Unknown(format!(
                "{name:?}: export names are POOL/VOLUME or POOL/VOLUME@SNAPSHOT"
            )));
        };
        let pool = self.registry.pool(pool).map_err(|e| match e.kind() {
            ErrorKind::NotFound => OpenError::Unknown(e.to_string()),
            _ => OpenError::Unavailable(e.to_string()),
        })?;
        let vol = pool.open_volume(rest).map_err(|e| match e.kind() {
            ErrorKind::NotFound => OpenError::Unknown(e.to_string()),
            _ => OpenError::Unavailable(e.to_string()),
        })?;
        let base = rest.split('@').next().unwrap_or(rest);
        if !pool.key_available(base).unwrap_or(false) {
            return Err(OpenError::Refused(format!(
                "volume {pool_name}/{base} is encrypted and its key is not loaded: run `edgevol volume load-key {pool_name}/{base}`",
                pool_name = pool.name()
            )));
        }
        self.registry.attach(&name);
        tracing::debug!(export = %name, "client attached");
        Ok(VolumeExport {
            shown: AtomicU64::new(vol.size()),
            vol,
            name,
            registry: self.registry.clone(),
        })
    }
}
