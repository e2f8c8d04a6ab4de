//! Management API request bodies and the validation the daemon and engine
//! apply to them, plus the string parsers behind the CLI and properties.

use std::collections::BTreeMap;

use edgevol_api::{
    hex_decode, hex_encode, AddVhostUserExport, ChangeKey, CloneVolume, CreatePool, CreateSnapshot,
    CreateVolume, KeyRequest, ReplaceDevice, Resize, ScrubRequest, SetProperties,
};
use edgevol_daemon::vhost::VhostSpec;
use edgevol_engine::catalog::{check_name, MAX_NAME};
use edgevol_engine::compress::Compression;
use edgevol_engine::crypt::{check_location, KdfParams, KeyFormat};
use edgevol_engine::fuzzing::check_property;
use edgevol_engine::{check_pool_property, parse_layout};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The CLI's size parser (`edgevol` is a binary crate, so its module is
/// compiled in here as is).
#[path = "../../edgevol/src/units.rs"]
#[allow(dead_code)]
mod units;

/// Deserialize a body; if it parses, serializing it and parsing that gives
/// the same JSON again.
fn body<T: Serialize + DeserializeOwned>(data: &[u8]) -> Option<T> {
    let v: T = serde_json::from_slice(data).ok()?;
    let json = serde_json::to_vec(&v).expect("a parsed body serializes");
    let again: T = serde_json::from_slice(&json).expect("serialized body parses");
    assert_eq!(serde_json::to_vec(&again).expect("serializes"), json);
    Some(v)
}

fn name(what: &str, n: &str) {
    if check_name(what, n).is_ok() {
        assert!(!n.is_empty() && n.len() <= MAX_NAME, "{n:?}");
        assert!(n.as_bytes()[0].is_ascii_alphanumeric());
        assert!(n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c)));
    }
}

fn hex(s: Option<&str>) {
    if let Some(b) = s.and_then(hex_decode) {
        assert_eq!(hex_encode(&b), s.unwrap_or_default().to_ascii_lowercase());
    }
}

fn kdf(memory: Option<&str>, passes: Option<&str>) {
    match KdfParams::from_options(memory, passes) {
        Ok(Some(k)) => assert!(k.check().is_ok()),
        Ok(None) => assert!(memory.is_none() && passes.is_none()),
        Err(_) => {}
    }
}

fn property(k: &str, v: &str) {
    if check_property(k, v).is_ok() {
        match k {
            "readonly" => assert!(v == "on" || v == "off"),
            "compression" => assert!(Compression::parse(v).is_ok()),
            _ => assert!(v.len() <= 1024 && (k == "comment" || k.contains(':'))),
        }
    }
}

fn pool_property(k: &str, v: Option<&str>) {
    if check_pool_property(k, v).is_ok() && k == "compression" {
        assert!(v.is_none_or(|v| Compression::parse(v).is_ok()));
    }
}

/// The checks `create_volume_with_key` makes before it creates a key.
fn creation_props(mut props: BTreeMap<String, String>) {
    let enc = props.remove("encryption");
    let format = props.remove("keyformat");
    let location = props.remove("keylocation");
    kdf(
        props.remove("argon2_memory").as_deref(),
        props.remove("argon2_passes").as_deref(),
    );
    for (k, v) in &props {
        property(k, v);
    }
    if matches!(enc.as_deref(), Some("aes-256-gcm" | "on")) {
        string_parsers(format.as_deref().unwrap_or("passphrase"));
        let _ = check_location(location.as_deref().unwrap_or("prompt"));
    }
}

fn layout(devices: &[String]) {
    if let Ok(groups) = parse_layout(devices) {
        assert!(!groups.is_empty());
        let listed: Vec<&String> = groups.iter().flat_map(|(_, d)| d).collect();
        let unique: std::collections::BTreeSet<&&String> = listed.iter().collect();
        assert_eq!(unique.len(), listed.len(), "a device listed twice");
        assert!(groups.iter().all(|(_, d)| !d.is_empty()));
    }
}

/// The string parsers: sizes, compression, key formats, key locations,
/// names, hex secrets, device layouts.
fn string_parsers(s: &str) {
    if let Ok(n) = units::parse_size(s) {
        assert_eq!(units::parse_size(&n.to_string()), Ok(n), "{s:?}");
    }
    match Compression::parse(s) {
        Ok(Compression::Off) => assert_eq!(s, "off"),
        Ok(Compression::Lz4) => assert!(s == "lz4" || s == "on"),
        Ok(Compression::Zstd(n)) => assert!((1..=19).contains(&n) && s.starts_with("zstd")),
        Err(_) => {}
    }
    if let Ok(f) = KeyFormat::parse(s) {
        assert_eq!(f.name(), s);
    }
    if check_location(s).is_ok() {
        assert!(s == "prompt" || s.starts_with("file:///") || s.starts_with("exec:/"));
    }
    name("volume", s);
    hex(Some(s));
    layout(&s.split_whitespace().map(String::from).collect::<Vec<_>>());
}

/// Request bodies as the daemon's handlers receive them, then the checks
/// the handlers and the engine apply. The first byte picks the body type
/// (or the bare string parsers), the rest is the JSON (or the string).
/// Checks: every body that parses serializes back to JSON that parses to
/// the same body; accepted names, properties, compression settings, key
/// formats and locations, Argon2 options, hex secrets, sizes and device
/// layouts really satisfy the rules their error messages state (e.g.
/// `parse_size(n.to_string()) == n`, `hex_encode(hex_decode(s)) == s`, no
/// device listed twice); nothing panics.
pub fn api_body(data: &[u8]) {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    match which % 13 {
        0 => {
            if let Some(r) = body::<CreatePool>(json) {
                name("pool", &r.name);
                for (k, v) in &r.properties {
                    pool_property(k, Some(v));
                }
                layout(&r.devices);
            }
        }
        1 => {
            if let Some(r) = body::<CreateVolume>(json) {
                name("volume", &r.name);
                hex(r.secret_hex.as_deref());
                creation_props(r.properties);
            }
        }
        2 => {
            if let Some(r) = body::<KeyRequest>(json) {
                hex(r.secret_hex.as_deref());
            }
        }
        3 => {
            if let Some(r) = body::<ChangeKey>(json) {
                if let Some(f) = &r.keyformat {
                    string_parsers(f);
                }
                if let Some(l) = &r.keylocation {
                    let _ = check_location(l);
                }
                kdf(r.argon2_memory.as_deref(), r.argon2_passes.as_deref());
                hex(r.secret_hex.as_deref());
            }
        }
        4 => {
            if let Some(r) = body::<SetProperties>(json) {
                for (k, v) in &r.properties {
                    if let Some(v) = v {
                        property(k, v);
                    }
                    pool_property(k, v.as_deref());
                }
            }
        }
        5 => {
            let _ = body::<Resize>(json);
        }
        6 => {
            if let Some(r) = body::<CreateSnapshot>(json) {
                name("snapshot", &r.name);
            }
        }
        7 => {
            if let Some(r) = body::<CloneVolume>(json) {
                name("volume", &r.name);
            }
        }
        8 => {
            if let Some(r) = body::<AddVhostUserExport>(json) {
                if let Ok(spec) = VhostSpec::from_request(&r) {
                    assert!((1..=64).contains(&spec.queues));
                    assert!(spec.socket.is_absolute());
                    assert!(spec.workers == "per-queue" || spec.workers == "shared");
                }
            }
        }
        9 => {
            // An entry of exports.json, read back at daemon start.
            let _ = body::<VhostSpec>(json);
        }
        10 => {
            let _ = body::<ScrubRequest>(json);
        }
        11 => {
            let _ = body::<ReplaceDevice>(json);
        }
        _ => string_parsers(&String::from_utf8_lossy(json)),
    }
}
