//! The block map's on-disk pieces (run blocks, keys and values) and the
//! stored-record decoding a read performs (decompression with the length
//! the map claims).

use std::sync::Arc;

use edgevol_engine::compress::{decompress, Compression};
use edgevol_engine::format::codec::{Reader, Writer};
use edgevol_engine::fuzzing::{decode_key, encode_key};
use edgevol_engine::layout::{Paddr, BLOCK};
use edgevol_engine::map::entry::{decode_value, encode_value, encoded_len, DataRef, Key, Value};
use edgevol_engine::map::run::{decode_block, Block, BlockKind, RunBuilder};

use crate::input::Input;

/// A map value that is valid by construction (see `DataRef::fields_ok`).
pub fn value_from(inp: &mut Input<'_>) -> Option<Value> {
    match inp.u8() % 4 {
        0 => None,
        1 => Some(Value::Zero {
            nblocks: 1 + inp.u8() % 16,
            alloc: inp.bool(),
        }),
        _ => {
            let rec_blocks = 1 + inp.u8() % 16;
            let rec_off = inp.u8() % rec_blocks;
            let nblocks = 1 + inp.u8() % (rec_blocks - rec_off);
            let (comp, enc) = (inp.u8() % 3, inp.u8() % 2);
            let raw = u32::from(rec_blocks) * BLOCK as u32;
            let plain = comp == 0 && enc == 0;
            let mut seal = [0u8; 28];
            let b = inp.bytes(28);
            seal[..b.len()].copy_from_slice(b);
            let d = DataRef {
                paddr: Paddr::from_u64(inp.u64()),
                stored_len: if comp == 0 { raw } else { 1 + inp.u32() % raw },
                rec_blocks,
                rec_off,
                nblocks,
                comp,
                enc,
                csums: (0..if plain { nblocks } else { 1 })
                    .map(|_| inp.u32())
                    .collect::<Vec<_>>()
                    .into(),
                seal: (enc != 0).then(|| Arc::new(seal)),
            };
            assert!(d.fields_ok(), "generator made an invalid reference");
            Some(Value::Data(d))
        }
    }
}

fn check_value(v: &Option<Value>, inp: &mut Input<'_>) {
    let Some(v) = v else { return };
    let n = v.nblocks();
    assert!(n > 0);
    let from = inp.u8() % n;
    let to = from + 1 + inp.u8() % (n - from);
    let s = v.slice(from, to);
    assert_eq!(s.nblocks(), to - from);
    if let Value::Data(d) = v {
        assert!(d.fields_ok());
        let sd = s.data().expect("a slice of data is data");
        assert!(
            sd.fields_ok(),
            "slice {from}..{to} of {d:?} breaks the invariants"
        );
        assert!(sd.same_record(d));
    }
}

/// Key and value decoding (`Key::decode`, `decode_value`), entry after
/// entry as leaves store them. Mode byte 0: raw bytes; else a value built
/// from the input. Checks: every decoded data reference satisfies
/// `fields_ok`, and so does every slice of it; re-encoding a decoded entry
/// gives back exactly the bytes consumed (the encoding is canonical) and
/// `encoded_len` agrees; a built value round-trips.
pub fn map_entry(data: &[u8]) {
    let mut inp = Input::new(data);
    if inp.u8() % 2 == 1 {
        let v = value_from(&mut inp);
        let mut b = Vec::new();
        encode_value(&v, &mut Writer::new(&mut b));
        assert_eq!(b.len(), encoded_len(&v));
        let mut r = Reader::new(&b);
        assert_eq!(decode_value(&mut r).as_ref(), Ok(&v));
        assert_eq!(r.position(), b.len());
        check_value(&v, &mut inp);
        return;
    }
    let bytes = inp.rest();
    let mut r = Reader::new(bytes);
    let mut checks = Input::new(bytes);
    loop {
        let start = r.position();
        let Ok(k) = decode_key(&mut r) else { return };
        let Ok(v) = decode_value(&mut r) else { return };
        let mut again = Vec::new();
        let mut w = Writer::new(&mut again);
        encode_key(&k, &mut w);
        encode_value(&v, &mut w);
        assert_eq!(again, bytes[start..r.position()], "entry is not canonical");
        assert_eq!(again.len(), Key::LEN + encoded_len(&v));
        check_value(&v, &mut checks);
    }
}

fn leaf_entries(b: &Block) -> Vec<(Key, Option<Value>)> {
    (0..b.len())
        .map(|i| b.leaf_entry(i).expect("a verified leaf decodes"))
        .collect()
}

/// Build a run from `entries` and decode it back: the same entries, in
/// order, and an index naming each leaf's first key.
fn rebuild(run_id: u64, entries: &[(Key, Option<Value>)]) {
    let mut rb = RunBuilder::new(run_id);
    for (k, v) in entries {
        rb.push(*k, v);
    }
    let (bytes, leaves, index) = rb.finish();
    assert_eq!(bytes.len(), (leaves + index) as usize * BLOCK);
    let blocks: Vec<Block> = bytes
        .chunks_exact(BLOCK)
        .map(|b| decode_block(b, run_id).expect("a built block decodes"))
        .collect();
    let (leaf, idx) = blocks.split_at(leaves as usize);
    let got: Vec<_> = leaf.iter().flat_map(leaf_entries).collect();
    assert_eq!(got, entries, "run does not round-trip");
    let firsts: Vec<(Key, u32)> = idx
        .iter()
        .flat_map(|b| (0..b.len()).map(|i| b.index_entry(i).expect("index entry")))
        .collect();
    assert_eq!(firsts.len(), leaves as usize);
    for (n, (k, at)) in firsts.iter().enumerate() {
        assert_eq!(*at as usize, n);
        assert_eq!(Some(k), leaf_entries(&leaf[n]).first().map(|e| &e.0));
    }
}

/// `decode_block` on a 4 KiB run block. Mode byte 0: raw; 1: checksum
/// fixed and the run id taken from the block; 2: entries built from the
/// input, written by `RunBuilder` (one or more leaves and an index) and
/// read back. Checks: a verified block's accessors never fail; leaf keys
/// strictly ascend and binary search finds each one; index keys ascend and
/// `index_upper_bound` counts them; a verified leaf's entries rebuilt into
/// a run decode to the same entries; a built run round-trips.
pub fn map_block(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8() % 3;
    if mode == 2 {
        let run_id = inp.u64();
        let mut entries = Vec::new();
        let mut key = Key::new(inp.u8().into(), inp.u16().into(), 0);
        // Up to 400 entries: enough for several leaves, cheap enough to
        // keep thousands of runs a second.
        while !inp.rest().is_empty() && entries.len() < 400 {
            match inp.u8() % 3 {
                0 => key.birth += 1 + u64::from(inp.u8()),
                1 => key.lba += 1 + u64::from(inp.u16()),
                _ => key.lineage += 1,
            }
            entries.push((key, value_from(&mut inp)));
        }
        rebuild(run_id, &entries);
        return;
    }
    let mut buf = [0u8; BLOCK];
    let raw = inp.rest();
    buf[..raw.len().min(BLOCK)].copy_from_slice(&raw[..raw.len().min(BLOCK)]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&buf[8..16]);
    let run_id = u64::from_le_bytes(id);
    if mode == 1 {
        let crc = crc32c::crc32c(&buf[..BLOCK - 4]);
        buf[BLOCK - 4..].copy_from_slice(&crc.to_le_bytes());
    }
    let Ok(b) = decode_block(&buf, run_id) else {
        return;
    };
    match b.kind() {
        BlockKind::Leaf => {
            let entries = leaf_entries(&b);
            for (i, (k, _)) in entries.iter().enumerate() {
                assert_eq!(b.leaf_key(i), Ok(*k));
                assert_eq!(b.leaf_lower_bound(k), Ok(i));
            }
            assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
            rebuild(run_id, &entries);
        }
        BlockKind::Index => {
            let keys: Vec<Key> = (0..b.len())
                .map(|i| b.index_entry(i).expect("verified index").0)
                .collect();
            assert!(keys.windows(2).all(|w| w[0] < w[1]));
            for (i, k) in keys.iter().enumerate() {
                assert_eq!(b.index_upper_bound(k), Ok(i + 1));
            }
        }
    }
}

/// Stored-record decoding: `decompress(kind, stored, logical)` with the
/// logical length a map reference can claim (1 to 16 blocks). Mode byte:
/// compression kind (any byte: unknown kinds must be refused); next byte:
/// record blocks. Checks: a record that decompresses has exactly the
/// claimed length (a lying stream or length is an error, never a short or
/// oversized buffer), unknown kinds are errors, and lz4 and zstd
/// compression of the same bytes round-trips.
pub fn record(data: &[u8]) {
    let mut inp = Input::new(data);
    let kind = inp.u8();
    let logical = (1 + usize::from(inp.u8() % 16)) * BLOCK;
    let stored = inp.rest();
    match decompress(kind, stored, logical) {
        Ok(out) => {
            assert!(kind == 1 || kind == 2, "kind {kind} decompressed");
            assert_eq!(out.len(), logical);
        }
        Err(e) => assert_eq!(e.kind(), edgevol_engine::ErrorKind::Corrupt),
    }
    // Kinds 0xf0..=0xff (refused above) also compress the bytes both ways
    // and back; a compressor context per call makes this the slow part.
    if kind >= 0xf0 && !stored.is_empty() {
        let plain: Vec<u8> = stored.iter().copied().cycle().take(logical).collect();
        for c in [Compression::Lz4, Compression::Zstd(1)] {
            if let Some((k, z)) = c.compress(&plain) {
                assert!(z.len() <= logical - logical / 8);
                assert_eq!(decompress(k, &z, logical).ok(), Some(plain.clone()));
            }
        }
    }
}
