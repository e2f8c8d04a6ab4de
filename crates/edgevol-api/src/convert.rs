//! Engine reports into wire types.
//!
//! Each conversion takes the engine struct apart without `..`, so a field
//! added to an engine report does not compile until the wire type (and
//! docs/api.md, docs/openapi.yaml) decide what to do with it.

use edgevol_engine::pool as engine;

use crate::{
    CheckReport, DeviceStatus, Expanded, GroupStatus, PoolStatus, Reserve, ScanStatus,
    SnapshotInfo, SpaceReport, VolumeInfo,
};

/// `impl From<engine::T> for T`: every field of the engine struct, moved
/// across as is or through the function after `=>`; fields after `;` exist
/// only on the wire and get the given values.
macro_rules! wire_from {
    ($t:ident { $($f:ident $(=> $conv:expr)?),* $(,)? } $(; $($extra:ident: $val:expr),*)?) => {
        impl From<engine::$t> for $t {
            fn from(x: engine::$t) -> Self {
                let engine::$t { $($f),* } = x;
                $t {
                    $($f: wire_from!(@conv $f $(, $conv)?),)*
                    $($($extra: $val,)*)?
                }
            }
        }
    };
    (@conv $f:ident) => { $f };
    (@conv $f:ident, $conv:expr) => { ($conv)($f) };
}

fn all<T, W: From<T>>(v: Vec<T>) -> Vec<W> {
    v.into_iter().map(W::from).collect()
}

fn opt<T, W: From<T>>(v: Option<T>) -> Option<W> {
    v.map(W::from)
}

wire_from!(VolumeInfo {
    name,
    pool,
    guid,
    size,
    referenced,
    created,
    origin,
    snapshots,
    based_on,
    readonly,
    properties,
    compression,
    compression_source,
    encryption,
    keyformat,
    keylocation,
    keystatus,
    keykdf,
});

wire_from!(SnapshotInfo {
    name,
    volume,
    created,
    referenced,
    size,
    auto,
    parent,
    clones
});

wire_from!(SpaceReport {
    volume,
    size,
    referenced,
    used,
    used_by_dataset,
    used_by_snapshots,
    snapshots,
    stored,
    compressratio,
});

wire_from!(CheckReport {
    errors,
    notes,
    runs,
    entries,
    records,
    data_bytes,
    encrypted_unverified
});

wire_from!(Expanded {
    group,
    from,
    to,
    bytes
});

wire_from!(Reserve {
    metadata,
    metadata_floor,
    cleaner,
    streams,
    overprovision
});

// The SMART report is the daemon's to fill in (the engine does not read
// drive health): none here.
wire_from!(DeviceStatus {
    path, group, state, reason, size, read_errors, write_errors, checksum_errors,
    repaired_bytes, block_device,
}; smart: None);

wire_from!(GroupStatus {
    kind,
    state,
    tolerance
});

wire_from!(ScanStatus {
    kind,
    state,
    started,
    ended,
    total_bytes,
    done_bytes,
    rate,
    repaired_bytes,
    unrecoverable,
    error,
});

wire_from!(PoolStatus {
    name, guid, created, state, error, segment_size, size, allocated, data, logical,
    compressratio, metadata, free, usable, reserve => Reserve::from, raw_size, free_segments,
    reserved_segments, referenced, volumes, snapshots, devices => all, groups => all,
    scrub => opt, resilver => opt, counters, maintenance_error, gc_pending, properties,
});
