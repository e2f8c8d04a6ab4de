//! The catalog-changing management API: volumes (create, resize, rename,
//! destroy, properties), snapshots, clones, rollback and promote, and the
//! views of them ([`VolumeInfo`], [`SnapshotInfo`], space).
//!
//! Every change is a control op the writer applies, so it keeps invariant
//! 4 (snapshot, clone, rollback and destroy are atomic across crashes: the
//! writer makes a changed catalog current only with its durable
//! checkpoint), and invariant 7 (bad input gets a clear error) by checking
//! names, properties and sizes before anything changes — a shrink that
//! discards data needs `force`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::writer::Control;
use super::{info, maint, volume, Pool, SnapshotInfo, SpaceReport, Volume, VolumeInfo};
use crate::error::{Error, Result};

/// Split `VOL@SNAP` into its parts.
pub fn split_snapshot(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once('@') {
        Some((v, s)) => (v, Some(s)),
        None => (spec, None),
    }
}

impl Pool {
    /// A volume's id.
    pub(super) fn vol_id(&self, name: &str) -> Result<u64> {
        Ok(self.sh.catalog().volume_by_name(name)?.id)
    }

    /// The ids of a volume and one of its snapshots.
    fn snap_id(&self, vol: &str, snap: &str) -> Result<(u64, u64)> {
        let cat = self.sh.catalog();
        let v = cat.volume_by_name(vol)?.id;
        let s = cat.snapshot_by_name(v, snap)?.id;
        Ok((v, s))
    }

    /// Create a volume. Properties: see [`info::check_property`]; an
    /// encrypted volume (`encryption=aes-256-gcm`) takes its secret from
    /// its `keylocation` (`file://`, `exec:`) — use
    /// [`Pool::create_volume_with_key`] to give it (`prompt`).
    pub fn create_volume(
        &self,
        name: &str,
        size: u64,
        props: BTreeMap<String, String>,
    ) -> Result<VolumeInfo> {
        self.create_volume_with_key(name, size, props, None)
    }

    /// Create a volume, with the secret wrapping an encrypted volume's key.
    pub fn create_volume_with_key(
        &self,
        name: &str,
        size: u64,
        mut props: BTreeMap<String, String>,
        secret: Option<crate::crypt::Secret>,
    ) -> Result<VolumeInfo> {
        let enc = props.remove("encryption");
        let format = props.remove("keyformat");
        let location = props.remove("keylocation");
        let kdf = crate::crypt::KdfParams::from_options(
            props.remove("argon2_memory").as_deref(),
            props.remove("argon2_passes").as_deref(),
        )?;
        for (k, v) in &props {
            info::check_property(k, v)?;
        }
        let key = match enc.as_deref() {
            None | Some("off") => {
                if format.is_some() || location.is_some() || secret.is_some() || kdf.is_some() {
                    return Err(Error::invalid(
                        "keyformat, keylocation, argon2_* and a key only apply to encryption=aes-256-gcm",
                    ));
                }
                None
            }
            Some("aes-256-gcm" | "on") => {
                let format =
                    crate::crypt::KeyFormat::parse(format.as_deref().unwrap_or("passphrase"))?;
                let location = location.unwrap_or_else(|| "prompt".into());
                crate::crypt::check_location(&location)?;
                let secret = match secret {
                    Some(s) => s,
                    None => crate::crypt::fetch_secret(&location)?,
                };
                Some(crate::crypt::KeyRec::create(
                    rand::random::<u64>() >> 1,
                    format,
                    &location,
                    &secret,
                    kdf,
                )?)
            }
            Some(other) => {
                return Err(Error::invalid(format!(
                    "encryption must be off or aes-256-gcm, not {other:?}"
                )))
            }
        };
        let rec = key.as_ref().map(|(r, _)| r.clone());
        if let Some((r, dk)) = key {
            self.set_key(r.id, Some(Arc::new(dk)))?;
        }
        self.sh.control(Control::CreateVolume {
            name: name.to_string(),
            size,
            props,
            key: rec,
        })?;
        self.volume_info(name)
    }

    /// Every volume.
    pub fn volumes(&self) -> Vec<VolumeInfo> {
        self.sh.settle_for_report();
        let cat = self.sh.catalog();
        let mut v: Vec<VolumeInfo> = cat
            .volumes
            .values()
            .map(|v| info::volume_info(&self.sh, &cat, v))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// One volume.
    pub fn volume_info(&self, name: &str) -> Result<VolumeInfo> {
        self.sh.settle_for_report();
        let cat = self.sh.catalog();
        let v = cat.volume_by_name(name)?;
        Ok(info::volume_info(&self.sh, &cat, v))
    }

    /// Open a volume (`NAME`) or a snapshot (`NAME@SNAP`, read-only) for I/O.
    pub fn open_volume(&self, spec: &str) -> Result<Volume> {
        volume::open_volume(&self.sh, spec)
    }

    /// Resize a volume. Shrinking below the current size needs `force`.
    pub fn resize_volume(&self, name: &str, size: u64, force: bool) -> Result<()> {
        let cat = self.sh.catalog();
        let v = cat.volume_by_name(name)?;
        if size < v.size && !force {
            return Err(Error::invalid(format!(
                "shrinking {name} from {} to {size} bytes discards data beyond the new end; use --force",
                v.size
            )));
        }
        let id = v.id;
        drop(cat);
        self.sh
            .control(Control::Resize { vol: id, size })
            .map(|_| ())
    }

    /// Destroy a volume and its snapshots. Refused while clones depend on it
    /// unless `force`.
    pub fn destroy_volume(&self, name: &str, force: bool) -> Result<()> {
        let id = self.vol_id(name)?;
        self.sh
            .control(Control::DestroyVolume { vol: id, force })
            .map(|_| ())
    }

    /// Set (Some) or clear (None) a volume property.
    pub fn set_property(&self, name: &str, key: &str, value: Option<&str>) -> Result<()> {
        if let Some(v) = value {
            info::check_property(key, v)?;
        } else {
            info::check_property_key(key)?;
        }
        let id = self.vol_id(name)?;
        self.sh
            .control(Control::SetProp {
                vol: id,
                key: key.to_string(),
                value: value.map(str::to_string),
            })
            .map(|_| ())
    }

    /// Set (Some) or clear (None) a pool property.
    pub fn set_pool_property(&self, key: &str, value: Option<&str>) -> Result<()> {
        info::check_pool_property(key, value)?;
        self.sh
            .control(Control::SetPoolProp {
                key: key.to_string(),
                value: value.map(str::to_string),
            })
            .map(|_| ())
    }

    /// Rename a volume.
    pub fn rename_volume(&self, name: &str, new: &str) -> Result<()> {
        let id = self.vol_id(name)?;
        self.sh
            .control(Control::Rename {
                vol: id,
                name: new.to_string(),
            })
            .map(|_| ())
    }

    /// Take a snapshot (O(1); durable when this returns).
    pub fn snapshot(&self, vol: &str, snap: &str) -> Result<SnapshotInfo> {
        let id = self.vol_id(vol)?;
        self.sh.control(Control::Snapshot {
            vol: id,
            name: snap.to_string(),
        })?;
        self.snapshot_info(vol, snap)
    }

    fn snapshot_info(&self, vol: &str, snap: &str) -> Result<SnapshotInfo> {
        self.snapshots(vol)?
            .into_iter()
            .find(|s| s.name == snap)
            .ok_or_else(|| Error::not_found(format!("{vol}@{snap}")))
    }

    /// A volume's snapshots, oldest first, with their place in the history tree.
    pub fn snapshots(&self, vol: &str) -> Result<Vec<SnapshotInfo>> {
        let cat = self.sh.catalog();
        let v = cat.volume_by_name(vol)?;
        Ok(info::snapshot_infos(&cat, v))
    }

    /// Destroy a snapshot (its unique data is freed by the GC).
    pub fn destroy_snapshot(&self, vol: &str, snap: &str) -> Result<()> {
        let (_, s) = self.snap_id(vol, snap)?;
        self.sh
            .control(Control::DestroySnapshot { snap: s })
            .map(|_| ())
    }

    /// Make `vol` equal to `vol@snap`. The previous head is kept as an
    /// automatic snapshot (returned) unless it was unchanged.
    pub fn rollback(&self, vol: &str, snap: &str) -> Result<Option<String>> {
        let (v, s) = self.snap_id(vol, snap)?;
        let auto = self.sh.control(Control::Rollback { vol: v, snap: s })?;
        if auto == 0 {
            return Ok(None);
        }
        Ok(self
            .sh
            .catalog()
            .snapshots
            .get(&auto)
            .map(|s| s.name.clone()))
    }

    /// Create a writable clone `new` of `vol@snap`.
    pub fn clone_snapshot(&self, vol: &str, snap: &str, new: &str) -> Result<VolumeInfo> {
        let (_, s) = self.snap_id(vol, snap)?;
        self.sh.control(Control::Clone {
            snap: s,
            name: new.to_string(),
        })?;
        self.volume_info(new)
    }

    /// Make a clone independent of its origin by copying the data it still
    /// shares (a flatten), so the origin can be destroyed.
    pub fn promote(&self, vol: &str) -> Result<()> {
        maint::flatten(&self.sh, vol)
    }

    /// Space used by a volume and its snapshots (scans the volume's map).
    pub fn space(&self, vol: &str) -> Result<SpaceReport> {
        self.sh.settle_for_report();
        info::space_report(&self.sh, vol)
    }
}
