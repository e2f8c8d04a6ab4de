//! Encryption keys of volumes: loading (from a secret or the volume's
//! `keylocation`), unloading, and rewrapping a volume's data key.
//!
//! Keeps invariant 7 (a wrong key gets a clear error): a secret that does
//! not unwrap the data key fails with PermissionDenied and changes
//! nothing; and invariant 4 (snapshots are immutable): a new secret only
//! rewraps the data key, no data is rewritten.

use std::sync::Arc;

use super::writer::{Control, MaintOp};
use super::{maint, Pool};
use crate::error::{Error, ErrorKind, Result};

impl Pool {
    /// Load (Some) or forget (None) data key `id`, through the writer.
    pub(super) fn set_key(&self, id: u64, key: Option<Arc<crate::crypt::DataKey>>) -> Result<()> {
        maint::send_op(&self.sh, |d| MaintOp::SetKey(id, key, d))
    }

    /// The key record of an encrypted volume.
    fn key_rec(&self, vol: &str) -> Result<crate::crypt::KeyRec> {
        self.sh
            .catalog()
            .volume_by_name(vol)?
            .key
            .clone()
            .ok_or_else(|| Error::invalid(format!("volume {vol:?} is not encrypted")))
    }

    /// Load an encrypted volume's key: unwrap its data key with `secret`, or
    /// with what its `keylocation` gives. A wrong secret is an error
    /// (PermissionDenied) and changes nothing.
    pub fn load_key(&self, vol: &str, secret: Option<crate::crypt::Secret>) -> Result<()> {
        let rec = self.key_rec(vol)?;
        let secret = match secret {
            Some(s) => s,
            None => crate::crypt::fetch_secret(&rec.location)?,
        };
        let key = rec.unlock(&secret)?;
        self.set_key(rec.id, Some(Arc::new(key)))
    }

    /// Forget an encrypted volume's key (and so its clones', which share
    /// it): its data can no longer be read or written until `load_key`.
    pub fn unload_key(&self, vol: &str) -> Result<()> {
        let rec = self.key_rec(vol)?;
        self.set_key(rec.id, None)
    }

    /// True if the volume is not encrypted or its key is loaded.
    pub fn key_available(&self, vol: &str) -> Result<bool> {
        let cat = self.sh.catalog();
        let v = cat.volume_by_name(vol)?;
        Ok(v.key.as_ref().is_none_or(|k| self.sh.key(k.id).is_some()))
    }

    /// Wrap an encrypted volume's data key with a new secret (and format and
    /// location). The key must be loaded; no data is rewritten; snapshots
    /// and clones stay readable. `kdf` tunes Argon2 (passphrases; default:
    /// fresh parameters at the defaults).
    pub fn change_key(
        &self,
        vol: &str,
        format: Option<&str>,
        location: Option<&str>,
        kdf: Option<crate::crypt::KdfParams>,
        secret: Option<crate::crypt::Secret>,
    ) -> Result<()> {
        let rec = self.key_rec(vol)?;
        let key = self.sh.key(rec.id).ok_or_else(|| {
            Error::new(
                ErrorKind::PermissionDenied,
                format!("load the key of {vol} before changing it"),
            )
        })?;
        let format = match format {
            Some(f) => crate::crypt::KeyFormat::parse(f)?,
            None => rec.format,
        };
        let location = location.unwrap_or(&rec.location).to_string();
        let secret = match secret {
            Some(s) => s,
            None => crate::crypt::fetch_secret(&location)?,
        };
        let new = rec.rewrap_loaded(&key, format, &location, &secret, kdf)?;
        let id = self.vol_id(vol)?;
        self.sh
            .control(Control::SetKeyRec { vol: id, key: new })
            .map(|_| ())
    }

    /// Load the keys of every encrypted volume whose key lives in a file or
    /// comes from a command (import does this); failures are logged.
    pub fn load_keys_from_locations(&self) {
        let cat = self.sh.catalog();
        for v in cat.volumes.values() {
            let Some(rec) = &v.key else { continue };
            if rec.location == "prompt" || self.sh.key(rec.id).is_some() {
                continue;
            }
            match self.load_key(&v.name, None) {
                Ok(()) => tracing::info!(pool = %self.sh.name, volume = %v.name, "loaded key"),
                Err(e) => {
                    tracing::warn!(pool = %self.sh.name, volume = %v.name, error = %e, "cannot load key")
                }
            }
        }
    }
}
