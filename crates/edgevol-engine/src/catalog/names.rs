//! Validation of what users name and size: volume, snapshot and pool
//! names, and volume sizes.
//!
//! Keeps invariant 7 (bad input gets a clear error): a bad name or size is
//! refused before anything changes.

use crate::error::{Error, Result};
use crate::layout::BLOCK_U64;

/// Longest name of a volume or snapshot.
pub const MAX_NAME: usize = 128;

/// Check a volume, snapshot or pool name.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid {what} name {name:?}: use 1-{MAX_NAME} characters from [A-Za-z0-9_.:-], starting with a letter or digit"
        )))
    }
}

pub(super) fn check_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(BLOCK_U64) {
        return Err(Error::invalid(format!(
            "volume size {size} must be a positive multiple of 4096 bytes"
        )));
    }
    if size > (1u64 << 60) {
        return Err(Error::invalid(format!("volume size {size} is too large")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::catalog::Catalog;
    use crate::error::ErrorKind;

    #[test]
    fn names_and_sizes_are_validated() {
        let mut c = Catalog::new();
        assert!(c
            .create_volume("bad/name", 4096, BTreeMap::new(), 0, None)
            .is_err());
        assert!(c.create_volume("", 4096, BTreeMap::new(), 0, None).is_err());
        assert!(c
            .create_volume("ok", 4095, BTreeMap::new(), 0, None)
            .is_err());
        let v = c
            .create_volume("ok", 8192, BTreeMap::new(), 0, None)
            .unwrap();
        assert_eq!(
            c.create_volume("ok", 8192, BTreeMap::new(), 0, None)
                .unwrap_err()
                .kind(),
            ErrorKind::AlreadyExists
        );
        let b = c.resize(v, 4096).unwrap().unwrap();
        assert_eq!(b.lba, 1);
        assert_eq!(c.head_chain(v).unwrap()[0].floor(5), Some(b.epoch));
    }
}
