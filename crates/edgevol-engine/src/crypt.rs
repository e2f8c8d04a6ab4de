//! Encryption at rest: per-volume data keys, their wrapping, and record
//! sealing. The threat model and the formats are in `docs/encryption.md`.
//!
//! ```text
//!  passphrase ──Argon2id(salt, m, t, p)──┐
//!  key file (32 raw bytes / 64 hex) ─────┼──▶ wrapping key ──AES-256-GCM──▶ wrapped data key (catalog)
//!  exec:/path stdout (either form) ──────┘                                        │ unwrap (load-key)
//!                                                                                 ▼
//!  record payload ──(compress)──AES-256-GCM(data key, nonce = lsn ‖ entry, AAD = where)──▶ ciphertext
//!                                            nonce ‖ tag kept in the map entry (the "seal")
//! ```
//!
//! * A data key is 256 random bits, made when an encrypted volume is
//!   created, never stored in clear. Clones share their origin's data key
//!   (each volume has its own wrapping of it, so `change-key` on one does
//!   not touch the other).
//! * Nonces: `lsn (8 bytes LE) ‖ entry index in the batch (4 bytes LE)`.
//!   Batch lsns are unique over the pool's life (recovery resumes 2^20 past
//!   the last lsn it found, more than a round can have in flight), so a
//!   nonce is never used twice under a key. The cleaner moves ciphertext
//!   as it is (same nonce, same bytes); a flatten re-encrypts with fresh
//!   nonces.
//! * The AAD binds a record to its place: lineage, first block, birth,
//!   blocks, compression. A record copied elsewhere on the disk, or into
//!   another volume, fails authentication.

use std::fmt;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, ErrorKind, Result};

/// Encryption algorithm of a record (`enc` byte on disk).
pub const ENC_NONE: u8 = 0;
/// AES-256-GCM.
pub const ENC_AES256GCM: u8 = 1;

/// Bytes of a record seal: nonce (12) followed by tag (16).
pub const SEAL_LEN: usize = 28;

/// A record's nonce and authentication tag.
pub type Seal = [u8; SEAL_LEN];

/// A volume's data key, in memory only.
pub struct DataKey {
    /// Identity of the key (shared by clones).
    pub id: u64,
    cipher: Aes256Gcm,
    /// The key itself, to wrap it anew (change-key); zeroed on drop.
    bytes: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey({})", self.id)
    }
}

/// Where a record sits, bound into its authentication.
#[derive(Debug, Clone, Copy)]
pub struct RecordPlace {
    /// Lineage the record was written in.
    pub lineage: u32,
    /// Its first block.
    pub lba: u64,
    /// Its birth epoch.
    pub birth: u64,
    /// Logical blocks.
    pub blocks: u8,
    /// Compression.
    pub comp: u8,
}

impl RecordPlace {
    fn aad(&self) -> [u8; 22] {
        let mut a = [0u8; 22];
        a[0..4].copy_from_slice(&self.lineage.to_le_bytes());
        a[4..12].copy_from_slice(&self.lba.to_le_bytes());
        a[12..20].copy_from_slice(&self.birth.to_le_bytes());
        a[20] = self.blocks;
        a[21] = self.comp;
        a
    }
}

/// The nonce of entry `index` of the batch with `lsn`.
pub fn nonce_for(lsn: u64, index: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[0..8].copy_from_slice(&lsn.to_le_bytes());
    n[8..12].copy_from_slice(&index.to_le_bytes());
    n
}

impl DataKey {
    fn from_bytes(id: u64, bytes: &[u8; 32]) -> DataKey {
        DataKey {
            id,
            cipher: Aes256Gcm::new(bytes.into()),
            bytes: Zeroizing::new(*bytes),
        }
    }

    /// Encrypt `data` in place; returns the seal (nonce ‖ tag).
    pub fn seal(&self, nonce: [u8; 12], place: &RecordPlace, data: &mut [u8]) -> Result<Seal> {
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &place.aad(), data)
            .map_err(|_| Error::corrupt("encryption failed"))?;
        let mut s = [0u8; SEAL_LEN];
        s[..12].copy_from_slice(&nonce);
        s[12..].copy_from_slice(&tag);
        Ok(s)
    }

    /// Authenticate and decrypt `data` in place.
    pub fn open(&self, seal: &Seal, place: &RecordPlace, data: &mut [u8]) -> Result<()> {
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&seal[..12]),
                &place.aad(),
                data,
                Tag::from_slice(&seal[12..]),
            )
            .map_err(|_| {
                Error::corrupt("encrypted record failed authentication (damaged or tampered)")
            })
    }
}

/// How the wrapping key is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyFormat {
    /// A passphrase (8 bytes or more), stretched with Argon2id.
    Passphrase,
    /// 32 raw bytes.
    Raw,
    /// 64 hex digits.
    Hex,
}

impl KeyFormat {
    /// Parse `passphrase|raw|hex`.
    pub fn parse(s: &str) -> Result<KeyFormat> {
        Ok(match s {
            "passphrase" => KeyFormat::Passphrase,
            "raw" => KeyFormat::Raw,
            "hex" => KeyFormat::Hex,
            _ => {
                return Err(Error::invalid(format!(
                    "keyformat must be passphrase, raw or hex, not {s:?}"
                )))
            }
        })
    }

    /// The property value.
    pub fn name(self) -> &'static str {
        match self {
            KeyFormat::Passphrase => "passphrase",
            KeyFormat::Raw => "raw",
            KeyFormat::Hex => "hex",
        }
    }
}

/// Argon2id parameters, stored with the wrapped key (tunable at creation
/// and on `change-key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Parallelism.
    pub p: u32,
    /// Random salt.
    pub salt: [u8; 16],
}

impl KdfParams {
    /// Defaults: 64 MiB, 3 passes, 1 lane (RFC 9106's second recommendation
    /// scaled for small hosts), fresh salt.
    pub fn fresh() -> KdfParams {
        KdfParams {
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
            salt: rand::random(),
        }
    }

    /// Fresh parameters from the `argon2_memory` (bytes, with an optional
    /// K/M/G suffix) and `argon2_passes` options; `None` if neither is given.
    pub fn from_options(memory: Option<&str>, passes: Option<&str>) -> Result<Option<KdfParams>> {
        if memory.is_none() && passes.is_none() {
            return Ok(None);
        }
        let mut k = KdfParams::fresh();
        if let Some(m) = memory {
            let bytes = parse_size(m).ok_or_else(|| {
                Error::invalid(format!("argon2_memory must be a size like 256M, not {m:?}"))
            })?;
            k.m_kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX);
        }
        if let Some(t) = passes {
            k.t = t.parse().map_err(|_| {
                Error::invalid(format!("argon2_passes must be a number, not {t:?}"))
            })?;
        }
        k.check()?;
        Ok(Some(k))
    }

    /// Bounds that keep a key derivation from exhausting a small host (they
    /// are checked again before every derivation: the parameters are read
    /// from disk).
    pub fn check(&self) -> Result<()> {
        if !(KDF_MIN_KIB..=KDF_MAX_KIB).contains(&self.m_kib) {
            return Err(Error::invalid(format!(
                "argon2_memory must be between 8M and 1G, not {} KiB",
                self.m_kib
            )));
        }
        if !(1..=64).contains(&self.t) || !(1..=16).contains(&self.p) {
            return Err(Error::invalid(format!(
                "argon2 passes must be 1..64 and lanes 1..16, not {} and {}",
                self.t, self.p
            )));
        }
        Ok(())
    }

    /// `m=65536KiB,t=3,p=1`, for reports.
    pub fn describe(&self) -> String {
        format!("argon2id m={}KiB,t={},p={}", self.m_kib, self.t, self.p)
    }
}

const KDF_MIN_KIB: u32 = 8 * 1024;
const KDF_MAX_KIB: u32 = 1024 * 1024;

/// `123`, `64K`, `256M`, `1G` (powers of 1024).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// A volume's wrapped data key and how to unwrap it (stored in the catalog).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRec {
    /// Identity of the data key.
    pub id: u64,
    /// Algorithm of the volume's records.
    pub enc: u8,
    /// nonce (12) ‖ AES-256-GCM(data key) (32) ‖ tag (16), under the wrapping key.
    pub wrapped: Vec<u8>,
    /// Form of the secret.
    pub format: KeyFormat,
    /// `prompt`, `file:///path` or `exec:/path`.
    pub location: String,
    /// Stretching parameters (passphrases only).
    pub kdf: Option<KdfParams>,
}

/// Secret material given to unwrap or wrap a key (zeroed on drop).
pub struct Secret(pub Zeroizing<Vec<u8>>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Take ownership of bytes.
    pub fn new(v: Vec<u8>) -> Secret {
        Secret(Zeroizing::new(v))
    }
}

fn wrapping_key(
    format: KeyFormat,
    kdf: Option<&KdfParams>,
    secret: &Secret,
) -> Result<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    let s: &[u8] = &secret.0;
    match format {
        KeyFormat::Passphrase => {
            let k =
                kdf.ok_or_else(|| Error::corrupt("passphrase key without Argon2 parameters"))?;
            k.check()?;
            if s.len() < 8 {
                return Err(Error::invalid("a passphrase needs at least 8 characters"));
            }
            let params = argon2::Params::new(k.m_kib, k.t, k.p, Some(32))
                .map_err(|e| Error::invalid(format!("bad Argon2 parameters: {e}")))?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(s, &k.salt, &mut *out)
                .map_err(|e| Error::invalid(format!("key derivation failed: {e}")))?;
        }
        KeyFormat::Raw => {
            let raw: &[u8] = s.strip_suffix(b"\n").unwrap_or(s);
            if raw.len() != 32 {
                return Err(Error::invalid(format!(
                    "a raw key is exactly 32 bytes, not {}",
                    raw.len()
                )));
            }
            out.copy_from_slice(raw);
        }
        KeyFormat::Hex => {
            let t = std::str::from_utf8(s)
                .map_err(|_| Error::invalid("a hex key must be 64 hex digits"))?
                .trim();
            if t.len() != 64 {
                return Err(Error::invalid("a hex key must be 64 hex digits"));
            }
            for (i, b) in out.iter_mut().enumerate() {
                *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16)
                    .map_err(|_| Error::invalid("a hex key must be 64 hex digits"))?;
            }
        }
    }
    Ok(out)
}

impl KeyRec {
    /// A fresh random data key, wrapped with `secret`. Returns the record
    /// and the loaded key. `kdf` overrides the Argon2 parameters.
    pub fn create(
        id: u64,
        format: KeyFormat,
        location: &str,
        secret: &Secret,
        kdf: Option<KdfParams>,
    ) -> Result<(KeyRec, DataKey)> {
        check_location(location)?;
        let mut data = Zeroizing::new([0u8; 32]);
        rand::fill(&mut *data);
        let kdf = match format {
            KeyFormat::Passphrase => Some(kdf.unwrap_or_else(KdfParams::fresh)),
            _ => None,
        };
        let rec = KeyRec {
            id,
            enc: ENC_AES256GCM,
            wrapped: wrap(id, &data, format, kdf.as_ref(), secret)?,
            format,
            location: location.to_string(),
            kdf,
        };
        Ok((rec, DataKey::from_bytes(id, &data)))
    }

    /// Unwrap the data key with `secret`. A wrong secret is an error and
    /// changes nothing.
    pub fn unlock(&self, secret: &Secret) -> Result<DataKey> {
        let data = self.unwrap_bytes(secret)?;
        Ok(DataKey::from_bytes(self.id, &data))
    }

    fn unwrap_bytes(&self, secret: &Secret) -> Result<Zeroizing<[u8; 32]>> {
        let wk = wrapping_key(self.format, self.kdf.as_ref(), secret)?;
        if self.wrapped.len() != 12 + 32 + 16 {
            return Err(Error::corrupt("wrapped key has the wrong length"));
        }
        let cipher = Aes256Gcm::new((&*wk).into());
        let mut buf = Zeroizing::new(self.wrapped[12..44].to_vec());
        cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&self.wrapped[..12]),
                &self.id.to_le_bytes(),
                &mut buf,
                Tag::from_slice(&self.wrapped[44..]),
            )
            .map_err(|_| Error::new(ErrorKind::PermissionDenied, "wrong key or passphrase"))?;
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&buf);
        Ok(out)
    }

    /// The same data key wrapped with a new secret (and format/location):
    /// `change-key`. Data is never rewritten.
    pub fn rewrap(
        &self,
        old: &Secret,
        format: KeyFormat,
        location: &str,
        new: &Secret,
    ) -> Result<KeyRec> {
        let data = self.unwrap_bytes(old)?;
        self.rewrap_with(&data, format, location, new, None)
    }

    /// [`KeyRec::rewrap`] with the loaded data key instead of the old secret
    /// (what `change-key` does: the key must be loaded). `kdf` overrides the
    /// Argon2 parameters (tuning).
    pub fn rewrap_loaded(
        &self,
        key: &DataKey,
        format: KeyFormat,
        location: &str,
        new: &Secret,
        kdf: Option<KdfParams>,
    ) -> Result<KeyRec> {
        if key.id != self.id {
            return Err(Error::invalid("that is another volume's key"));
        }
        self.rewrap_with(&key.bytes, format, location, new, kdf)
    }

    fn rewrap_with(
        &self,
        data: &[u8; 32],
        format: KeyFormat,
        location: &str,
        new: &Secret,
        kdf: Option<KdfParams>,
    ) -> Result<KeyRec> {
        check_location(location)?;
        let kdf = match format {
            KeyFormat::Passphrase => Some(kdf.unwrap_or_else(KdfParams::fresh)),
            _ => None,
        };
        Ok(KeyRec {
            id: self.id,
            enc: self.enc,
            wrapped: wrap(self.id, data, format, kdf.as_ref(), new)?,
            format,
            location: location.to_string(),
            kdf,
        })
    }
}

fn wrap(
    id: u64,
    data: &[u8; 32],
    format: KeyFormat,
    kdf: Option<&KdfParams>,
    secret: &Secret,
) -> Result<Vec<u8>> {
    let wk = wrapping_key(format, kdf, secret)?;
    let cipher = Aes256Gcm::new((&*wk).into());
    let nonce: [u8; 12] = rand::random();
    let mut buf = Zeroizing::new(data.to_vec());
    // The key id is authenticated: a wrapped key cannot pass for another's.
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &id.to_le_bytes(), &mut buf)
        .map_err(|_| Error::corrupt("key wrapping failed"))?;
    let mut out = Vec::with_capacity(60);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    buf.zeroize();
    Ok(out)
}

/// Check a `keylocation` value.
pub fn check_location(loc: &str) -> Result<()> {
    if loc == "prompt" || loc.starts_with("file:///") || loc.starts_with("exec:/") {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "keylocation must be prompt, file:///ABSOLUTE/PATH or exec:/ABSOLUTE/PATH, not {loc:?}"
        )))
    }
}

/// Fetch the secret a non-prompt `keylocation` names: read the file, or run
/// the command and take its standard output.
pub fn fetch_secret(location: &str) -> Result<Secret> {
    if let Some(path) = location.strip_prefix("file://") {
        let v = std::fs::read(path).map_err(|e| {
            Error::new(
                ErrorKind::NotFound,
                format!("cannot read the key file {path}: {e}"),
            )
        })?;
        return Ok(Secret::new(v));
    }
    if let Some(cmd) = location.strip_prefix("exec:") {
        let out = std::process::Command::new(cmd)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .map_err(|e| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("cannot run the key command {cmd}: {e}"),
                )
            })?;
        if !out.status.success() {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("the key command {cmd} failed ({})", out.status),
            ));
        }
        return Ok(Secret::new(out.stdout));
    }
    Err(Error::invalid(
        "this key is entered at a prompt: give it to load-key",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap(rec: &mut KeyRec) {
        // Tests need no 64 MiB Argon2 runs.
        if let Some(k) = &mut rec.kdf {
            k.m_kib = KDF_MIN_KIB;
            k.t = 1;
        }
    }

    #[test]
    fn wrap_unwrap_and_wrong_passphrase() {
        let good = Secret::new(b"correct horse battery".to_vec());
        let mut data = [0u8; 32];
        rand::fill(&mut data);
        let mut kdf = KdfParams::fresh();
        kdf.m_kib = KDF_MIN_KIB;
        kdf.t = 1;
        let rec = KeyRec {
            id: 7,
            enc: ENC_AES256GCM,
            wrapped: wrap(7, &data, KeyFormat::Passphrase, Some(&kdf), &good).unwrap(),
            format: KeyFormat::Passphrase,
            location: "prompt".into(),
            kdf: Some(kdf),
        };
        assert_eq!(&*rec.unwrap_bytes(&good).unwrap(), &data);
        let bad = rec
            .unwrap_bytes(&Secret::new(b"wrong horse battery".to_vec()))
            .unwrap_err();
        assert_eq!(bad.kind(), ErrorKind::PermissionDenied);
        let new = Secret::new(b"another long passphrase".to_vec());
        let mut re = rec
            .rewrap(&good, KeyFormat::Passphrase, "prompt", &new)
            .unwrap();
        cheap(&mut re);
        // rewrap used fresh (expensive) params; rewrap again with cheap ones for speed.
        let re = KeyRec {
            wrapped: wrap(7, &data, KeyFormat::Passphrase, re.kdf.as_ref(), &new).unwrap(),
            ..re
        };
        assert_eq!(&*re.unwrap_bytes(&new).unwrap(), &data, "same data key");
        assert!(re.unwrap_bytes(&good).is_err());
    }

    #[test]
    fn raw_and_hex_keys() {
        let raw = Secret::new(vec![0x42; 32]);
        let (rec, key) = KeyRec::create(1, KeyFormat::Raw, "prompt", &raw, None).unwrap();
        let hex = Secret::new("42".repeat(32).into_bytes());
        let again = KeyRec {
            format: KeyFormat::Hex,
            ..rec.clone()
        };
        assert_eq!(again.unlock(&hex).unwrap().id, key.id);
        assert!(
            KeyRec::create(1, KeyFormat::Raw, "prompt", &Secret::new(vec![1; 31]), None).is_err()
        );
        assert!(KeyRec::create(1, KeyFormat::Raw, "nowhere", &raw, None).is_err());
    }

    #[test]
    fn records_authenticate_their_place() {
        let (_, key) =
            KeyRec::create(3, KeyFormat::Raw, "prompt", &Secret::new(vec![9; 32]), None).unwrap();
        let place = RecordPlace {
            lineage: 1,
            lba: 32,
            birth: 5,
            blocks: 1,
            comp: 0,
        };
        let plain = vec![0xabu8; 4096];
        let mut data = plain.clone();
        let seal = key.seal(nonce_for(77, 2), &place, &mut data).unwrap();
        assert_ne!(data, plain, "ciphertext differs");
        let mut d = data.clone();
        key.open(&seal, &place, &mut d).unwrap();
        assert_eq!(d, plain);
        // Moved to another block: refused.
        let mut d = data.clone();
        let elsewhere = RecordPlace { lba: 48, ..place };
        assert!(key.open(&seal, &elsewhere, &mut d).is_err());
        // One flipped bit: refused.
        let mut d = data.clone();
        d[100] ^= 1;
        assert!(key.open(&seal, &place, &mut d).is_err());
    }
}
