//! Seed inputs for every target: valid encodings made by the real encoders
//! (in each target's input layout), plus a few hand-made edge cases. They
//! are written to `fuzz/corpus/<target>/` by the ignored test
//! `write_seed_corpus` in `tests/corpus.rs`, and replayed by the others.

use std::collections::BTreeMap;

use edgevol_engine::catalog::Catalog;
use edgevol_engine::compress::Compression;
use edgevol_engine::format::batch::{BatchHeader, EntryKind, LogEntry};
use edgevol_engine::format::label::{DeviceLayout, GroupKind, GroupLayout, Label, PoolLayout};
use edgevol_engine::format::uberblock::Uberblock;
use edgevol_engine::fuzzing::{
    encode_checkpoint, encode_counters, BlobRef, Checkpoint, ReplayPoint, StreamPos,
};
use edgevol_engine::layout::{MetaExtent, Paddr, SegId};
use edgevol_engine::map::entry::{DataRef, Key, Value};
use edgevol_engine::map::run::{RunBuilder, RunMeta};
use edgevol_engine::map::Manifest;
use edgevol_engine::pool::space::{Counters, SegInfo, SegState};

use crate::nbd::request;

fn with(mode: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = mode.to_vec();
    v.extend_from_slice(body);
    v
}

fn be_string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// Seeds of `target` (empty for an unknown name).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "nbd_option" => nbd_option(),
        "nbd_request" => nbd_request(),
        "nbd_server" => nbd_server(),
        "vhost_request" => vhost_request(),
        "label" => label(),
        "uberblock" => uberblock(),
        "batch_header" => batch_header(),
        "checkpoint" => checkpoint(),
        "map_block" => map_block(),
        "map_entry" => map_entry(),
        "record" => record(),
        "api_body" => api_body(),
        _ => Vec::new(),
    }
}

fn info_body(name: &str, types: &[u16]) -> Vec<u8> {
    let mut v = be_string(name);
    v.extend_from_slice(&(types.len() as u16).to_be_bytes());
    for t in types {
        v.extend_from_slice(&t.to_be_bytes());
    }
    v
}

fn meta_body(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = be_string(name);
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend(be_string(q));
    }
    v
}

fn nbd_option() -> Vec<Vec<u8>> {
    vec![
        with(&[1], b"disk"),
        with(&[1], b""),
        with(&[2], b""),
        with(&[3], b""),
        with(&[5], b""),
        with(&[6], &info_body("disk", &[0, 1, 2, 3])),
        with(&[7], &info_body("", &[3])),
        with(&[8], b""),
        with(&[9], &meta_body("disk", &["base:allocation", "base:"])),
        with(&[10], &meta_body("disk", &["base:allocation"])),
        with(&[10], &meta_body("", &[])),
        with(&[11], b""),
        with(&[42], b"x"),
        // Edge cases: a 4096-byte name (the limit), one byte more, a name
        // length past the data, a NUL, an odd info list.
        with(&[1], &[b'a'; 4096]),
        with(&[7], &info_body(&"b".repeat(4097), &[])),
        with(&[6], &[0, 0, 0, 9, b'd']),
        with(&[1], b"di\0sk"),
        with(&[7], &[0, 0, 0, 0, 0, 1, 0]),
    ]
}

/// nbd_request layout: mode, size selector, read-only, min block shift,
/// max payload selector, structured, block status, 28-byte header.
fn nbd_request() -> Vec<Vec<u8>> {
    let ctx = |ro: u8, st: u8, bs: u8| vec![1, 2, ro, 9, 0, st, bs];
    let mut out = Vec::new();
    for (kind, flags, off, len) in [
        (0u16, 0u16, 0u64, 4096u32),
        (0, 4, 512, 512),
        (1, 1, 4096, 8192),
        (2, 0, 0, 1 << 20),
        (3, 0, 0, 0),
        (4, 1, 0, 512),
        (5, 0, 0, 4096),
        (6, 2 | 16, 8192, 4096),
        (7, 8, 0, 1 << 16),
        (0, 0, (1 << 20) - 512, 1024),
        (1, 0, u64::MAX - 511, 4096),
        (9, 0, 0, 0),
    ] {
        for c in [ctx(0, 1, 1), ctx(1, 0, 0)] {
            out.push(with(&c, &request(kind, flags, 7, off, len)));
        }
    }
    out.push(with(&[0, 2, 0, 9, 0, 1, 1], &[0xff; 28]));
    out
}

fn nbd_server() -> Vec<Vec<u8>> {
    let opt = |code: u32, data: &[u8]| {
        let mut m = crate::nbd::IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        m
    };
    let mut traffic = Vec::new();
    for (i, (kind, flags, off, len)) in [
        (0u16, 0u16, 0u64, 4096u32),
        (1, 1, 8192, 1024),
        (0, 4, 8192, 2048),
        (7, 8, 0, 1 << 16),
        (7, 0, 4096, 8192),
        (6, 2, 0, 4096),
        (6, 16, 0, 4096),
        (4, 0, 4096, 4096),
        (5, 0, 0, 512),
        (3, 0, 0, 0),
        (0, 0, (256 << 10) - 512, 512),
        (0, 0, 256 << 10, 512),
    ]
    .into_iter()
    .enumerate()
    {
        traffic.extend(request(kind, flags, i as u64, off, len));
        if kind == 1 {
            traffic.extend(vec![0x5a; len as usize]);
        }
    }
    let mut disc = traffic.clone();
    disc.extend(request(2, 0, 99, 0, 0));
    let mut options = 3u32.to_be_bytes().to_vec();
    options.extend(opt(3, b""));
    options.extend(opt(6, &info_body("disk", &[0, 1, 2, 3])));
    options.extend(opt(9, &meta_body("disk", &["base:"])));
    options.extend(opt(6, &info_body("nope", &[])));
    options.extend(opt(5, b""));
    options.extend(opt(11, b""));
    options.extend(opt(77, b"?"));
    options.extend(opt(7, &info_body("", &[])));
    let mut aborting = 3u32.to_be_bytes().to_vec();
    aborting.extend(opt(2, b""));
    let mut ro = request(1, 0, 1, 0, 512);
    ro.extend([0u8; 512]);
    ro.extend(request(0, 0, 2, 64 << 10, 100));
    vec![
        with(&[2], &traffic),
        with(&[2], &disc),
        with(&[3], &ro),
        with(&[0], &options),
        with(&[0], &aborting),
        with(&[1], &opt(1, b"disk")),
        with(&[0], b""),
        with(&[2], &request(1, 0, 1, 0, 4096)), // payload cut short
    ]
}

/// A raw split-ring descriptor.
fn desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    d
}

/// vhost_request layout: mode, head, 16 descriptors, bytes at 0x1000.
fn vhost_request() -> Vec<Vec<u8>> {
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;
    let (hdr, data, status) = (0x1000u64, 0x2000u64, 0x7000u64);
    let chain = |descs: &[[u8; 16]], t: u32, sector: u64, extra: &[u8]| {
        let mut v = vec![1u8, 0];
        let mut table = [0u8; 256];
        for (i, d) in descs.iter().enumerate() {
            table[i * 16..i * 16 + 16].copy_from_slice(d);
        }
        v.extend_from_slice(&table);
        let mut guest = vec![0u8; 0x1000];
        guest[0..4].copy_from_slice(&t.to_le_bytes());
        guest[8..16].copy_from_slice(&sector.to_le_bytes());
        guest.extend_from_slice(extra);
        v.extend(guest);
        v
    };
    let seg = |sector: u64, n: u32, flags: u32| {
        let mut s = sector.to_le_bytes().to_vec();
        s.extend_from_slice(&n.to_le_bytes());
        s.extend_from_slice(&flags.to_le_bytes());
        s
    };
    let mut discard = seg(8, 8, 0);
    discard.extend(seg(64, 16, 0));
    let zeroes = seg(16, 8, 1);
    // An indirect table at 0x2000 (in the bytes after the header block).
    let mut indirect = Vec::new();
    indirect.extend_from_slice(&desc(hdr, 16, NEXT, 1));
    indirect.extend_from_slice(&desc(0x3000, 512, NEXT | WRITE, 2));
    indirect.extend_from_slice(&desc(status, 1, WRITE, 0));
    vec![
        chain(
            &[
                desc(hdr, 16, NEXT, 1),
                desc(data, 4096, NEXT, 2),
                desc(status, 1, WRITE, 0),
            ],
            1,
            8,
            &[0x77; 4096],
        ),
        chain(
            &[
                desc(hdr, 16, NEXT, 1),
                desc(data, 4096, NEXT | WRITE, 2),
                desc(status, 1, WRITE, 0),
            ],
            0,
            0,
            &[],
        ),
        chain(
            &[desc(hdr, 16, NEXT, 1), desc(status, 1, WRITE, 0)],
            4,
            0,
            &[],
        ),
        chain(
            &[desc(hdr, 16, NEXT, 1), desc(data, 21, WRITE, 0)],
            8,
            0,
            &[],
        ),
        chain(
            &[desc(hdr, 48, NEXT, 1), desc(status, 1, WRITE, 0)],
            11,
            0,
            &discard,
        ),
        chain(
            &[desc(hdr, 32, NEXT, 1), desc(status, 1, WRITE, 0)],
            13,
            0,
            &zeroes,
        ),
        chain(&[desc(data, 48, INDIRECT, 0)], 0, 1, &indirect),
        chain(
            &[
                desc(hdr, 8, NEXT, 1),
                desc(hdr + 8, 8, NEXT, 2),
                desc(status, 1, WRITE, 0),
            ],
            99,
            0,
            &[],
        ),
        // Edge cases: a loop, a writable buffer before a readable one, a
        // buffer across the hole in guest memory.
        chain(&[desc(hdr, 16, NEXT, 0)], 0, 0, &[]),
        chain(
            &[desc(status, 1, WRITE | NEXT, 1), desc(hdr, 16, 0, 0)],
            0,
            0,
            &[],
        ),
        chain(
            &[
                desc(hdr, 16, NEXT, 1),
                desc(0x7f00, 0x200, NEXT | WRITE, 2),
                desc(status, 1, WRITE, 0),
            ],
            0,
            0,
            &[],
        ),
    ]
}

fn sample_label(groups: Vec<(GroupKind, usize)>) -> Label {
    let mut n = 0u128;
    Label {
        pool_guid: 0xfeed,
        pool_name: "tank".into(),
        device_guid: 1,
        txg: 7,
        created: 1_700_000_000,
        layout: PoolLayout {
            segment_size: 8 << 20,
            groups: groups
                .into_iter()
                .map(|(kind, devs)| GroupLayout {
                    kind,
                    devices: (0..devs)
                        .map(|_| {
                            n += 1;
                            DeviceLayout {
                                guid: n,
                                path: format!("/dev/vd{n}"),
                                segments: 100,
                            }
                        })
                        .collect(),
                })
                .collect(),
        },
    }
}

fn label() -> Vec<Vec<u8>> {
    let labels = [
        sample_label(vec![(GroupKind::Single, 1)]),
        sample_label(vec![(GroupKind::Mirror, 2), (GroupKind::Single, 1)]),
        sample_label(vec![(GroupKind::Parity(1), 3), (GroupKind::Parity(2), 4)]),
    ];
    let mut out: Vec<Vec<u8>> = labels
        .iter()
        .map(|l| with(&[0], &l.encode().expect("a small label encodes")))
        .collect();
    out.push(with(&[2], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
    out.push(with(&[1], &[0u8; 64]));
    out
}

fn uberblock() -> Vec<Vec<u8>> {
    let u = Uberblock {
        pool_guid: 0xfeed,
        seq: 42,
        ckpt: Paddr::new(SegId::new(0, 3), 8192),
        ckpt_len: 8192,
        ckpt_crc: 0xdead_beef,
        time: 1_700_000_000,
    };
    vec![
        with(&[0], &u.encode()),
        with(&[1], &u.encode()[..64]),
        with(&[2], &[7; 48]),
        with(&[0], &[0; 4096]),
    ]
}

fn log_entry(kind: EntryKind, comp: u8, enc: u8, nblocks: u32, lba: u64) -> LogEntry {
    let plain = comp == 0 && enc == 0;
    let payload = !matches!(kind, EntryKind::Trim | EntryKind::Zero);
    LogEntry {
        kind,
        comp,
        flags: 0,
        nblocks,
        lineage: 1,
        lba,
        birth: 5,
        payload_off: if payload { 4096 } else { 0 },
        stored_len: match (payload, comp) {
            (false, _) => 0,
            (true, 0) => nblocks * 4096,
            _ => 1000,
        },
        csums: match (payload, plain) {
            (false, _) => Vec::new(),
            (true, true) => (0..nblocks).collect(),
            (true, false) => vec![9],
        },
        enc,
        seal: (enc != 0).then_some([3; 28]),
        reloc_from: matches!(kind, EntryKind::Relocate | EntryKind::Move)
            .then(|| (Paddr::new(SegId::new(0, 9), 8192), 1)),
    }
}

fn batch_header() -> Vec<Vec<u8>> {
    let h = |entries: Vec<LogEntry>| {
        let mut b = Vec::new();
        BatchHeader {
            pool_guid: 0xfeed,
            lsn: 10,
            prev_lsn: 9,
            flushed_lsn: 8,
            segment: SegId::new(0, 3),
            next_segment: SegId::new(0, 4),
            prev_crc: 0x1234,
            stream: 1,
            total_len: 64 * 4096,
            entries,
        }
        .encode_into(&mut b);
        with(&[0], &b)
    };
    vec![
        h(vec![]),
        h(vec![log_entry(EntryKind::Write, 0, 0, 2, 30)]),
        h(vec![
            log_entry(EntryKind::Write, 1, 0, 16, 32),
            log_entry(EntryKind::Trim, 0, 0, 1000, 64),
            log_entry(EntryKind::Zero, 0, 0, 3, 7),
        ]),
        h(vec![
            log_entry(EntryKind::Relocate, 0, 0, 4, 0),
            log_entry(EntryKind::Copy, 0, 1, 4, 16),
            log_entry(EntryKind::Move, 2, 1, 8, 8),
        ]),
        with(&[2], &[3; 64]),
        with(
            &[1],
            &[0x45, 0x56, 0x4c, 0x42, 2, 0, 0, 0, 0xff, 0xff, 0, 0],
        ),
    ]
}

fn catalog() -> Catalog {
    let mut c = Catalog::new();
    let mut props = BTreeMap::new();
    props.insert("compression".to_string(), "zstd".to_string());
    props.insert("org:owner".to_string(), "ops".to_string());
    let v = c
        .create_volume("vm1", 1 << 30, props, 1, None)
        .expect("volume");
    let s = c.snapshot(v, "daily", 2, 10).expect("snapshot");
    c.clone_volume(s, "vm1-test", 3).expect("clone");
    c.resize(v, 1 << 29).expect("shrink");
    c.snapshot(v, "after-shrink", 4, 5).expect("snapshot");
    c
}

fn checkpoint() -> Vec<Vec<u8>> {
    let run = |id: u64| RunMeta {
        id,
        extents: vec![MetaExtent {
            seg: SegId::new(0, 2),
            block: 16 * id as u32,
            blocks: 3,
        }],
        leaf_blocks: 2,
        index_blocks: 1,
        entries: 300,
    };
    let ck = |catalog: Catalog, manifest: Manifest| Checkpoint {
        seq: 42,
        catalog,
        manifest,
        counters: BlobRef {
            extents: vec![MetaExtent {
                seg: SegId::new(0, 2),
                block: 200,
                blocks: 1,
            }],
            len: 4096,
            crc: 77,
        },
        replay: ReplayPoint {
            lsn: 1000,
            streams: vec![
                StreamPos {
                    seg: Some(SegId::new(0, 5)),
                    off: 8192,
                    next: Some(SegId::new(0, 6)),
                    prev_lsn: 999,
                    prev_crc: 0xabcd,
                },
                StreamPos::default(),
            ],
        },
        next_lsn: 1001,
        next_run_id: 9,
        log_segment: SegId::new(0, 1),
        stale_members: vec![0x1234_5678_9abc_def0],
    };
    let counters = Counters {
        segs: vec![vec![
            SegInfo {
                state: SegState::Meta,
                live: 0,
                written: 0,
                max_lsn: 0,
                logical: 0,
            },
            SegInfo {
                state: SegState::Data,
                live: 40960,
                written: 65536,
                max_lsn: 990,
                logical: 81920,
            },
        ]],
        lineage_delta: [(1, 10), (2, -3)].into_iter().collect(),
    };
    vec![
        with(
            &[0],
            &encode_checkpoint(&ck(Catalog::new(), Manifest::default())),
        ),
        with(
            &[0],
            &encode_checkpoint(&ck(
                catalog(),
                Manifest {
                    l0: vec![run(1), run(2)],
                    deep: vec![None, Some(run(3))],
                },
            )),
        ),
        with(&[1], &encode_counters(&counters)),
        with(&[1], &encode_counters(&Counters::default())),
        with(&[2], &[0u8; 40]),
    ]
}

fn data_ref(comp: u8, enc: u8, rec_off: u8, nblocks: u8) -> DataRef {
    let plain = comp == 0 && enc == 0;
    DataRef {
        paddr: Paddr::new(SegId::new(0, 4), 4096),
        stored_len: if comp == 0 { 8 * 4096 } else { 5000 },
        rec_blocks: 8,
        rec_off,
        nblocks,
        comp,
        enc,
        csums: (0..if plain { u32::from(nblocks) } else { 1 })
            .collect::<Vec<_>>()
            .into(),
        seal: (enc != 0).then(|| std::sync::Arc::new([9u8; 28])),
    }
}

fn sample_entries() -> Vec<(Key, Option<Value>)> {
    vec![
        (Key::new(1, 0, 3), Some(Value::Data(data_ref(0, 0, 0, 8)))),
        (Key::new(1, 8, 3), Some(Value::Data(data_ref(1, 0, 2, 4)))),
        (Key::new(1, 16, 4), Some(Value::Data(data_ref(2, 1, 0, 8)))),
        (
            Key::new(1, 24, 4),
            Some(Value::Zero {
                nblocks: 16,
                alloc: false,
            }),
        ),
        (
            Key::new(2, 0, 9),
            Some(Value::Zero {
                nblocks: 1,
                alloc: true,
            }),
        ),
        (Key::new(2, 1, 9), None),
    ]
}

fn map_block() -> Vec<Vec<u8>> {
    let mut rb = RunBuilder::new(5);
    for (k, v) in sample_entries() {
        rb.push(k, &v);
    }
    let (bytes, _, _) = rb.finish();
    let mut out: Vec<Vec<u8>> = bytes.chunks(4096).map(|b| with(&[0], b)).collect();
    // A run of several leaves: many small entries.
    let mut rb = RunBuilder::new(6);
    for i in 0..400u64 {
        rb.push(
            Key::new(3, i, 1),
            &Some(Value::Zero {
                nblocks: 1,
                alloc: false,
            }),
        );
    }
    let (bytes, leaves, _) = rb.finish();
    out.push(with(&[0], &bytes[..4096]));
    out.push(with(&[0], &bytes[leaves as usize * 4096..]));
    out.push(with(
        &[2],
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 1, 2, 1, 4, 0, 2, 5],
    ));
    out.push(with(&[1], &[0x4d, 0x52, 1, 2, 0, 0, 16]));
    out
}

fn map_entry() -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    let mut out = Vec::new();
    for (k, v) in sample_entries() {
        let mut b = Vec::new();
        let mut w = edgevol_engine::format::codec::Writer::new(&mut b);
        edgevol_engine::fuzzing::encode_key(&k, &mut w);
        edgevol_engine::map::entry::encode_value(&v, &mut w);
        all.extend_from_slice(&b);
        out.push(with(&[0], &b));
    }
    out.push(with(&[0], &all));
    out.push(with(&[1], &[2, 7, 3, 1, 2, 0]));
    out
}

fn record() -> Vec<Vec<u8>> {
    let text: Vec<u8> = (0..8 * 4096u32)
        .map(|i| b"edgevol record "[(i % 15) as usize])
        .collect();
    let mut out = Vec::new();
    for c in [Compression::Lz4, Compression::Zstd(3)] {
        let (k, z) = c.compress(&text).expect("text compresses");
        out.push(with(&[k, 7], &z));
        out.push(with(&[k, 6], &z)); // claims one block less
        out.push(with(&[k, 7], &z[..z.len() / 2]));
    }
    out.push(with(&[9, 0], b"unknown kind"));
    out.push(with(&[0xf1, 3], b"round trip me"));
    out
}

fn api_body() -> Vec<Vec<u8>> {
    let bodies: [(u8, &str); 16] = [
        (
            0,
            r#"{"name":"tank","devices":["mirror","/dev/a","/dev/b"],"size":1073741824,"properties":{"compression":"lz4"}}"#,
        ),
        (
            1,
            r#"{"name":"vm1","size":10737418240,"properties":{"encryption":"aes-256-gcm","keyformat":"hex","keylocation":"prompt","argon2_memory":"64M"},"secret_hex":"00ff"}"#,
        ),
        (2, r#"{"secret_hex":"0123456789abcdef"}"#),
        (
            3,
            r#"{"keyformat":"passphrase","keylocation":"file:///etc/key","argon2_memory":"256M","argon2_passes":"4"}"#,
        ),
        (
            4,
            r#"{"properties":{"readonly":"on","compression":"zstd-9","org:x":null}}"#,
        ),
        (5, r#"{"size":4096,"force":true}"#),
        (6, r#"{"name":"daily-1"}"#),
        (7, r#"{"name":"vm1-clone"}"#),
        (
            8,
            r#"{"volume":"tank/vm1","socket":"/run/vm1.sock","queues":4,"workers":"shared"}"#,
        ),
        (
            9,
            r#"{"volume":"tank/vm1@s","socket":"/run/a.sock","queues":1,"read-only":true,"workers":"per-queue"}"#,
        ),
        (10, r#"{"stop":true}"#),
        (11, r#"{"old":"/dev/a","new":"/dev/c"}"#),
        (12, "1.5G"),
        (12, "zstd-19"),
        (12, "parity2 a b c d mirror e f"),
        (12, "+f0"),
    ];
    bodies
        .iter()
        .map(|(t, b)| with(&[*t], b.as_bytes()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_target_has_seeds() {
        for (name, _) in crate::TARGETS {
            assert!(super::seeds(name).len() >= 4, "{name}");
        }
    }
}
