//! Record compression: lz4 (the pool default) or zstd at a level.
//!
//! A record is at most one chunk (64 KiB); it is stored compressed only if
//! that saves at least 1/8 of its size, so incompressible data costs one
//! attempt and is stored raw. A read decompresses at most one record.
//!
//! A volume receiving incompressible data (encrypted or already compressed
//! files, media) would pay a failed attempt per record: [`Backoff`] stops
//! trying after a run of failures and probes again at growing intervals.

use crate::error::{Error, Result};

/// No compression.
pub const COMP_NONE: u8 = 0;
/// lz4 (block format, with the decompressed size known from the record).
pub const COMP_LZ4: u8 = 1;
/// zstd (the level does not matter for decompression).
pub const COMP_ZSTD: u8 = 2;

/// A volume's compression setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Store raw.
    Off,
    /// lz4.
    Lz4,
    /// zstd at level 1..=19.
    Zstd(i32),
}

impl Compression {
    /// Parse `off|lz4|zstd|zstd-N` (N = 1..19; `zstd` is level 3).
    pub fn parse(s: &str) -> Result<Compression> {
        Ok(match s {
            "off" => Compression::Off,
            "lz4" | "on" => Compression::Lz4,
            "zstd" => Compression::Zstd(3),
            _ => match s
                .strip_prefix("zstd-")
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<i32>().ok())
            {
                Some(n) if (1..=19).contains(&n) => Compression::Zstd(n),
                _ => {
                    return Err(Error::invalid(format!(
                        "compression must be off, lz4, zstd or zstd-1..zstd-19, not {s:?}"
                    )))
                }
            },
        })
    }

    /// Compress `data`; None if the result would not save 1/8.
    pub fn compress(self, data: &[u8]) -> Option<(u8, Vec<u8>)> {
        let limit = data.len() - data.len() / 8;
        let (kind, out) = match self {
            Compression::Off => return None,
            Compression::Lz4 => (COMP_LZ4, lz4_flex::block::compress(data)),
            Compression::Zstd(level) => (COMP_ZSTD, zstd::bulk::compress(data, level).ok()?),
        };
        (out.len() <= limit).then_some((kind, out))
    }
}

/// Compression attempts on one stream of records (a volume's writes):
/// after [`Backoff::FAILS`] records in a row did not compress, the next
/// records are stored raw without an attempt — first [`Backoff::FAILS`],
/// doubling after every further failed probe up to [`Backoff::MAX_SKIP`].
/// Any record that compresses ends the backoff. Storing raw is always
/// valid, so this trades at most `MAX_SKIP` records' compression, when a
/// stream turns compressible, for not spending CPU on one that is not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Failed attempts in a row.
    fails: u32,
    /// Records still to store raw without trying.
    skip: u32,
}

impl Backoff {
    /// Failures in a row before attempts are skipped.
    pub const FAILS: u32 = 16;
    /// Most records skipped between two attempts.
    pub const MAX_SKIP: u32 = 64;

    /// `comp.compress(data)`, unless the backoff says to skip the attempt.
    pub fn compress(&mut self, comp: Compression, data: &[u8]) -> Option<(u8, Vec<u8>)> {
        if comp == Compression::Off {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        let r = comp.compress(data);
        if r.is_some() {
            *self = Backoff::default();
        } else {
            self.fails = self.fails.saturating_add(1);
            if self.fails >= Self::FAILS {
                let doublings = (self.fails - Self::FAILS).min(8);
                self.skip = (Self::FAILS << doublings).min(Self::MAX_SKIP);
            }
        }
        r
    }

    /// True while attempts are being skipped (tests, stats).
    pub fn is_skipping(&self) -> bool {
        self.skip > 0
    }
}

/// Decompress a record of `logical` bytes.
pub fn decompress(kind: u8, stored: &[u8], logical: usize) -> Result<Vec<u8>> {
    let out = match kind {
        COMP_LZ4 => lz4_flex::block::decompress(stored, logical)
            .map_err(|e| Error::corrupt(format!("lz4 record does not decompress: {e}")))?,
        COMP_ZSTD => zstd::bulk::decompress(stored, logical)
            .map_err(|e| Error::corrupt(format!("zstd record does not decompress: {e}")))?,
        other => return Err(Error::corrupt(format!("unknown compression {other}"))),
    };
    if out.len() != logical {
        return Err(Error::corrupt(format!(
            "record decompressed to {} bytes, expected {logical}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_skips_incompressible_streams_and_resumes_on_compressible_data() {
        use rand::RngCore;
        let mut rng = rand::rng();
        let mut noise = vec![0u8; 4096];
        let zeros = vec![0u8; 4096];
        let mut b = Backoff::default();
        // The first FAILS records are all tried.
        let mut tried = 0;
        for _ in 0..Backoff::FAILS {
            rng.fill_bytes(&mut noise);
            assert!(!b.is_skipping());
            assert_eq!(b.compress(Compression::Lz4, &noise), None);
            tried += 1;
        }
        assert!(b.is_skipping());
        // Then 1 in (skip + 1) at most, the skips growing to MAX_SKIP.
        for _ in 0..2000 {
            rng.fill_bytes(&mut noise);
            if !b.is_skipping() {
                tried += 1;
            }
            assert_eq!(b.compress(Compression::Lz4, &noise), None);
        }
        assert!(
            tried < Backoff::FAILS + 2000 / Backoff::MAX_SKIP + 8,
            "{tried} attempts"
        );
        // Compressible data is stored compressed again within MAX_SKIP
        // records, and from then on every record is tried.
        let first = (0..=Backoff::MAX_SKIP)
            .position(|_| b.compress(Compression::Lz4, &zeros).is_some())
            .expect("compressed again");
        assert!(first <= Backoff::MAX_SKIP as usize);
        assert!(!b.is_skipping());
        assert!(b.compress(Compression::Lz4, &zeros).is_some());
        // Off never compresses and never backs off.
        let mut off = Backoff::default();
        assert_eq!(off.compress(Compression::Off, &zeros), None);
        assert_eq!(off, Backoff::default());
    }

    use super::*;

    #[test]
    fn parse_and_round_trip() {
        assert_eq!(Compression::parse("zstd-7").unwrap(), Compression::Zstd(7));
        assert!(Compression::parse("zstd-20").is_err());
        assert!(Compression::parse("zstd-+3").is_err(), "digits only");
        assert!(Compression::parse("zstd- 3").is_err());
        assert!(Compression::parse("gzip").is_err());
        let text: Vec<u8> = (0..65536u32)
            .map(|i| b"edgevol "[(i % 8) as usize])
            .collect();
        for c in [Compression::Lz4, Compression::Zstd(3)] {
            let (k, z) = c.compress(&text).expect("text compresses");
            assert!(z.len() < text.len() / 8);
            assert_eq!(decompress(k, &z, text.len()).unwrap(), text);
            assert!(decompress(k, &z[..z.len() / 2], text.len()).is_err());
        }
        let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
        assert!(Compression::Lz4.compress(&noise).is_none(), "kept raw");
    }
}
