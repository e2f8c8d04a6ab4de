//! Which properties pools and volumes accept, and which values.
//!
//! Keeps invariant 7 of shared/DESIGN.md (a bad property gets a clear
//! error naming what is settable, and changes nothing).

use crate::error::{Error, Result};

/// Properties a volume accepts (set or cleared at any time).
/// `encryption`, `keyformat` and `keylocation` are given at creation only
/// (`keyformat`/`keylocation` change with `change-key`).
pub(crate) fn check_property_key(key: &str) -> Result<()> {
    match key {
        "readonly" | "comment" | "compression" => Ok(()),
        "encryption" | "keyformat" | "keylocation" => Err(Error::invalid(format!(
            "{key} is set when the volume is created (keyformat and keylocation change with change-key)"
        ))),
        k if k.contains(':') && k.len() <= 256 => Ok(()), // user property, `module:name`
        _ => Err(Error::invalid(format!(
            "unknown or read-only property {key:?} (settable: readonly, compression, comment, user properties like org:name)"
        ))),
    }
}

/// Pool properties: defaults for volumes that do not set their own
/// (`compression`), and free-form ones (`comment`, `module:name`).
pub fn check_pool_property(key: &str, value: Option<&str>) -> Result<()> {
    match (key, value) {
        ("compression", Some(v)) => crate::compress::Compression::parse(v).map(|_| ()),
        ("compression" | "comment", None) => Ok(()),
        (k, v) if k == "comment" || (k.contains(':') && k.len() <= 256) => match v {
            Some(v) if v.len() > 1024 => {
                Err(Error::invalid("property values are limited to 1024 bytes"))
            }
            _ => Ok(()),
        },
        _ => Err(Error::invalid(format!(
            "unknown pool property {key:?} (settable: compression, comment, user properties like org:name)"
        ))),
    }
}

/// Validate a property assignment.
pub(crate) fn check_property(key: &str, value: &str) -> Result<()> {
    check_property_key(key)?;
    match key {
        "readonly" if value != "on" && value != "off" => Err(Error::invalid(format!(
            "readonly must be on or off, not {value:?}"
        ))),
        "compression" => crate::compress::Compression::parse(value).map(|_| ()),
        _ if value.len() > 1024 => Err(Error::invalid("property values are limited to 1024 bytes")),
        _ => Ok(()),
    }
}
