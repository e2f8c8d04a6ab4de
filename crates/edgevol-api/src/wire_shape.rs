//! The JSON the API promises (docs/api.md, docs/openapi.yaml) stays what it
//! was: populated engine reports, converted to the wire types, serialize to
//! the literals below, captured from the code before the wire types moved
//! out of the engine. Every number differs from the others, so a field
//! the conversion mixes up shows here too.

use std::collections::BTreeMap;

use edgevol_engine::pool as engine;

use crate::{
    CheckReport, Expanded, PoolStatus, SmartHealth, SnapshotInfo, SpaceReport, VolumeInfo,
};

/// `value` serializes to exactly `json` (field names, order, nesting and
/// number forms), and `json` parses back to the same value.
fn assert_wire<T>(value: &T, json: &str)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let got = serde_json::to_string_pretty(value).expect("serializes");
    assert_eq!(got, json, "wire shape changed; got:\n{got}");
    let back: T = serde_json::from_str(json).expect("parses");
    assert_eq!(&back, value);
}

fn map<V: Clone>(kv: &[(&str, V)]) -> BTreeMap<String, V> {
    kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn scan() -> engine::ScanStatus {
    engine::ScanStatus {
        kind: "resilver".into(),
        state: "finished".into(),
        started: 1_700_000_100,
        ended: Some(1_700_000_200),
        total_bytes: 4_194_304,
        done_bytes: 4_194_303,
        rate: 41_943,
        repaired_bytes: 8192,
        unrecoverable: vec!["p/v blocks 3..4".into()],
        error: None,
    }
}

fn device(path: &str, group: usize, state: &str) -> engine::DeviceStatus {
    engine::DeviceStatus {
        path: path.into(),
        group,
        state: state.into(),
        reason: (state == "FAULTED").then(|| "read failed".to_string()),
        size: 1 << 30,
        read_errors: 11,
        write_errors: 12,
        checksum_errors: 13,
        repaired_bytes: 14,
        block_device: path.starts_with("/dev/"),
    }
}

fn pool_status() -> PoolStatus {
    let st = engine::PoolStatus {
        name: "tank".into(),
        guid: "0123456789abcdef0123456789abcdef".into(),
        created: 1_700_000_000,
        state: "DEGRADED".into(),
        error: None,
        segment_size: 1 << 24,
        size: 2_000_000_000,
        allocated: 300_000_000,
        data: 250_000_000,
        logical: 500_000_000,
        compressratio: 2.0,
        metadata: 50_000_000,
        free: 1_400_000_000,
        usable: 1_650_000_000,
        reserve: engine::Reserve {
            metadata: 101,
            metadata_floor: 102,
            cleaner: 103,
            streams: 104,
            overprovision: 105,
        },
        raw_size: 4_000_000_000,
        free_segments: 90,
        reserved_segments: 9,
        referenced: 600_000_000,
        volumes: 3,
        snapshots: 4,
        devices: vec![
            device("/dev/sdb", 0, "ONLINE"),
            device("/srv/b.img", 0, "FAULTED"),
        ],
        groups: vec![engine::GroupStatus {
            kind: "mirror".into(),
            state: "DEGRADED".into(),
            tolerance: 0,
        }],
        scrub: None,
        resilver: Some(scan()),
        counters: map(&[("batches", 7u64), ("map_runs", 2)]),
        maintenance_error: Some("cleaner: no space".into()),
        gc_pending: 5,
        properties: map(&[("compression", "zstd-3".to_string())]),
    };
    let mut st = PoolStatus::from(st);
    st.devices[0].smart = Some(SmartHealth {
        passed: Some(true),
        model: Some("Disk 1000".into()),
        temperature_c: Some(-5),
        power_on_hours: Some(1234),
        checked_at: 1_700_000_300,
        ..SmartHealth::default()
    });
    st
}

#[test]
fn pool_status_json_is_unchanged() {
    assert_wire(&pool_status(), POOL_STATUS);
}

#[test]
fn volume_and_snapshot_json_are_unchanged() {
    let vol = engine::VolumeInfo {
        name: "vm1".into(),
        pool: "tank".into(),
        guid: "fedcba9876543210fedcba9876543210".into(),
        size: 10 << 30,
        referenced: 123_456_789,
        created: 1_700_000_400,
        origin: Some("base@gold".into()),
        snapshots: 2,
        based_on: Some("s1".into()),
        readonly: false,
        properties: map(&[("org:owner", "ops".to_string())]),
        compression: "lz4".into(),
        compression_source: "default".into(),
        encryption: "aes-256-gcm".into(),
        keyformat: Some("passphrase".into()),
        keylocation: Some("prompt".into()),
        keystatus: Some("available".into()),
        keykdf: Some("argon2id m=65536KiB,t=3,p=1".into()),
    };
    assert_wire(&VolumeInfo::from(vol), VOLUME_INFO);
    let snap = engine::SnapshotInfo {
        name: "s2".into(),
        volume: "vm1".into(),
        created: 1_700_000_500,
        referenced: 98_765,
        size: 8 << 30,
        auto: true,
        parent: Some("s1".into()),
        clones: vec!["vm2".into(), "vm3".into()],
    };
    assert_wire(&SnapshotInfo::from(snap), SNAPSHOT_INFO);
}

#[test]
fn space_and_check_json_are_unchanged() {
    let space = engine::SpaceReport {
        volume: "vm1".into(),
        size: 10 << 30,
        referenced: 4096 * 3,
        used: 4096 * 5,
        used_by_dataset: 4096 * 2,
        used_by_snapshots: 4096 * 4,
        snapshots: map(&[("s1", 4096u64), ("s2", 0)]),
        stored: 4096 * 6,
        compressratio: 1.67,
    };
    assert_wire(&SpaceReport::from(space), SPACE_REPORT);
    let check = engine::CheckReport {
        errors: vec!["segment 3: live 10 != 12".into()],
        notes: vec!["pool was busy".into()],
        runs: 21,
        entries: 22,
        records: 23,
        data_bytes: 24,
        encrypted_unverified: 25,
    };
    assert_wire(&CheckReport::from(check), CHECK_REPORT);
}

/// `json` with `keys` removed (from the top level, and with `nested`, from
/// each element of that array) still parses as `T`: what older daemons
/// sent, before those fields existed.
fn parses_without<T: serde::de::DeserializeOwned>(json: &str, keys: &[&str], nested: Option<&str>) {
    let mut v: serde_json::Value = serde_json::from_str(json).expect("json");
    let strip = |o: &mut serde_json::Value| {
        for k in keys {
            o.as_object_mut().expect("object").remove(*k);
        }
    };
    match nested
        .and_then(|n| v.get_mut(n))
        .and_then(|a| a.as_array_mut())
    {
        Some(items) => items.iter_mut().for_each(strip),
        None => strip(&mut v),
    }
    if let Err(e) = serde_json::from_value::<T>(v) {
        panic!("without {keys:?}: {e}");
    }
}

#[test]
fn fields_added_later_may_be_missing() {
    parses_without::<PoolStatus>(
        POOL_STATUS,
        &[
            "logical",
            "compressratio",
            "reserve",
            "raw_size",
            "groups",
            "scrub",
            "resilver",
            "properties",
        ],
        None,
    );
    parses_without::<PoolStatus>(
        POOL_STATUS,
        &["reason", "repaired_bytes", "block_device", "smart"],
        Some("devices"),
    );
    parses_without::<VolumeInfo>(
        VOLUME_INFO,
        &[
            "compression",
            "compression_source",
            "encryption",
            "keyformat",
            "keylocation",
            "keystatus",
            "keykdf",
        ],
        None,
    );
    parses_without::<SpaceReport>(SPACE_REPORT, &["stored", "compressratio"], None);
    parses_without::<CheckReport>(CHECK_REPORT, &["encrypted_unverified"], None);
}

#[test]
fn expanded_json_is_unchanged() {
    let e = engine::Expanded {
        group: 1,
        from: 31,
        to: 63,
        bytes: 32 << 24,
    };
    assert_wire(&Expanded::from(e), EXPANDED);
}

const EXPANDED: &str = r#"{
  "group": 1,
  "from": 31,
  "to": 63,
  "bytes": 536870912
}"#;
const POOL_STATUS: &str = r#"{
  "name": "tank",
  "guid": "0123456789abcdef0123456789abcdef",
  "created": 1700000000,
  "state": "DEGRADED",
  "error": null,
  "segment_size": 16777216,
  "size": 2000000000,
  "allocated": 300000000,
  "data": 250000000,
  "logical": 500000000,
  "compressratio": 2.0,
  "metadata": 50000000,
  "free": 1400000000,
  "usable": 1650000000,
  "reserve": {
    "metadata": 101,
    "metadata_floor": 102,
    "cleaner": 103,
    "streams": 104,
    "overprovision": 105
  },
  "raw_size": 4000000000,
  "free_segments": 90,
  "reserved_segments": 9,
  "referenced": 600000000,
  "volumes": 3,
  "snapshots": 4,
  "devices": [
    {
      "path": "/dev/sdb",
      "group": 0,
      "state": "ONLINE",
      "reason": null,
      "size": 1073741824,
      "read_errors": 11,
      "write_errors": 12,
      "checksum_errors": 13,
      "repaired_bytes": 14,
      "block_device": true,
      "smart": {
        "passed": true,
        "model": "Disk 1000",
        "temperature_c": -5,
        "power_on_hours": 1234,
        "checked_at": 1700000300
      }
    },
    {
      "path": "/srv/b.img",
      "group": 0,
      "state": "FAULTED",
      "reason": "read failed",
      "size": 1073741824,
      "read_errors": 11,
      "write_errors": 12,
      "checksum_errors": 13,
      "repaired_bytes": 14,
      "block_device": false
    }
  ],
  "groups": [
    {
      "kind": "mirror",
      "state": "DEGRADED",
      "tolerance": 0
    }
  ],
  "scrub": null,
  "resilver": {
    "kind": "resilver",
    "state": "finished",
    "started": 1700000100,
    "ended": 1700000200,
    "total_bytes": 4194304,
    "done_bytes": 4194303,
    "rate": 41943,
    "repaired_bytes": 8192,
    "unrecoverable": [
      "p/v blocks 3..4"
    ],
    "error": null
  },
  "counters": {
    "batches": 7,
    "map_runs": 2
  },
  "maintenance_error": "cleaner: no space",
  "gc_pending": 5,
  "properties": {
    "compression": "zstd-3"
  }
}"#;
const VOLUME_INFO: &str = r#"{
  "name": "vm1",
  "pool": "tank",
  "guid": "fedcba9876543210fedcba9876543210",
  "size": 10737418240,
  "referenced": 123456789,
  "created": 1700000400,
  "origin": "base@gold",
  "snapshots": 2,
  "based_on": "s1",
  "readonly": false,
  "properties": {
    "org:owner": "ops"
  },
  "compression": "lz4",
  "compression_source": "default",
  "encryption": "aes-256-gcm",
  "keyformat": "passphrase",
  "keylocation": "prompt",
  "keystatus": "available",
  "keykdf": "argon2id m=65536KiB,t=3,p=1"
}"#;
const SNAPSHOT_INFO: &str = r#"{
  "name": "s2",
  "volume": "vm1",
  "created": 1700000500,
  "referenced": 98765,
  "size": 8589934592,
  "auto": true,
  "parent": "s1",
  "clones": [
    "vm2",
    "vm3"
  ]
}"#;
const SPACE_REPORT: &str = r#"{
  "volume": "vm1",
  "size": 10737418240,
  "referenced": 12288,
  "used": 20480,
  "used_by_dataset": 8192,
  "used_by_snapshots": 16384,
  "snapshots": {
    "s1": 4096,
    "s2": 0
  },
  "stored": 24576,
  "compressratio": 1.67
}"#;
const CHECK_REPORT: &str = r#"{
  "errors": [
    "segment 3: live 10 != 12"
  ],
  "notes": [
    "pool was busy"
  ],
  "runs": 21,
  "entries": 22,
  "records": 23,
  "data_bytes": 24,
  "encrypted_unverified": 25
}"#;
