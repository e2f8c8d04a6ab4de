//! Engine on-disk headers and envelopes: labels, uberblocks, log batch
//! headers, checkpoints (catalog = volume and snapshot tables, map
//! manifest) and counters tables.
//!
//! Checksums would stop almost every mutation at the first check, so most
//! targets have a mode bit that recomputes them before decoding: the raw
//! mode tests the checks, the fixed mode reaches the field decoding.

use edgevol_engine::format::batch::{BatchHeader, EntryKind, LogEntry};
use edgevol_engine::format::codec::crc_with_hole;
use edgevol_engine::format::envelope::{self, Kind};
use edgevol_engine::format::label::{DeviceLayout, GroupKind, GroupLayout, Label, PoolLayout};
use edgevol_engine::format::uberblock::Uberblock;
use edgevol_engine::fuzzing::{
    decode_checkpoint, decode_counters, encode_checkpoint, encode_counters,
};
use edgevol_engine::layout::{Paddr, SegId, BLOCK, LABEL_SIZE, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};

use crate::input::Input;

/// Recompute an envelope's body and header checksums in place (as far as
/// the buffer and its length field allow).
pub fn fix_envelope(buf: &mut [u8]) {
    if buf.len() < envelope::HEADER_LEN {
        return;
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&buf[16..24]);
    let body_len = u64::from_le_bytes(len);
    let end = usize::try_from(body_len)
        .ok()
        .and_then(|n| n.checked_add(envelope::HEADER_LEN));
    if let Some(body) = end.and_then(|e| buf.get(envelope::HEADER_LEN..e)) {
        let crc = crc32c::crc32c(body);
        buf[24..28].copy_from_slice(&crc.to_le_bytes());
    }
    let hcrc = crc32c::crc32c(&buf[..28]);
    buf[28..32].copy_from_slice(&hcrc.to_le_bytes());
}

fn label_from(inp: &mut Input<'_>) -> Label {
    let groups = (0..1 + inp.u8() % 4)
        .map(|_| GroupLayout {
            kind: match inp.u8() % 3 {
                0 => GroupKind::Single,
                1 => GroupKind::Mirror,
                _ => GroupKind::Parity(1 + inp.u8() % 2),
            },
            devices: (0..1 + inp.u8() % 4)
                .map(|_| DeviceLayout {
                    guid: inp.u128(),
                    path: inp.string(48),
                    segments: inp.u32(),
                })
                .collect(),
        })
        .collect();
    Label {
        pool_guid: inp.u128(),
        pool_name: inp.string(32),
        device_guid: inp.u128(),
        txg: inp.u64(),
        created: inp.u64(),
        layout: PoolLayout {
            segment_size: MIN_SEGMENT_SIZE << (inp.u8() % 11),
            groups,
        },
    }
}

/// `Label::decode`. Mode byte: 0 raw bytes, 1 raw with checksums fixed,
/// 2 a label built from the input. Checks: a decoded label satisfies the
/// invariants decode promises (segment size a power of two in range, 1 to
/// 255 groups, none empty) and `decode(encode(l)) == l` whenever it
/// encodes (encoding refuses only labels larger than a label slot); a
/// built label round-trips exactly.
pub fn label(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8() % 3;
    if mode == 2 {
        let l = label_from(&mut inp);
        match l.encode() {
            Ok(b) => assert_eq!(Label::decode(&b).as_ref(), Ok(&l)),
            Err(_) => assert!(envelope::encode(Kind::Label, &l).len() as u64 > LABEL_SIZE),
        }
        return;
    }
    let mut buf = inp.rest().to_vec();
    if mode == 1 {
        fix_envelope(&mut buf);
    }
    let Ok(l) = Label::decode(&buf) else { return };
    let ss = l.layout.segment_size;
    assert!(ss.is_power_of_two() && (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&ss));
    assert!((1..=255).contains(&l.layout.groups.len()));
    assert!(l.layout.groups.iter().all(|g| !g.devices.is_empty()));
    if let Ok(b) = l.encode() {
        assert_eq!(b.len() % BLOCK, 0);
        assert_eq!(Label::decode(&b).as_ref(), Ok(&l));
    }
}

/// `Uberblock::decode`. Mode byte: 0 raw, 1 checksum fixed, 2 built from
/// the input. Checks: every field of the 64 used bytes is decoded, so
/// `encode(decode(b))` reproduces those 64 bytes exactly; any uberblock
/// round-trips; the slot offset stays inside the ring.
pub fn uberblock(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8() % 3;
    if mode == 2 {
        let u = Uberblock {
            pool_guid: inp.u128(),
            seq: inp.u64(),
            ckpt: Paddr::from_u64(inp.u64()),
            ckpt_len: inp.u32(),
            ckpt_crc: inp.u32(),
            time: inp.u64(),
        };
        let b = u.encode();
        assert_eq!(b.len(), BLOCK);
        assert_eq!(Uberblock::decode(&b), Ok(u));
        let slot = Uberblock::slot_offset(u.seq);
        assert!((64 << 10..(64 << 10) + 128 * BLOCK as u64).contains(&slot));
        return;
    }
    let mut buf = inp.rest().to_vec();
    if mode == 1 && buf.len() >= 64 {
        let crc = crc_with_hole(&buf[..64], 12);
        buf[12..16].copy_from_slice(&crc.to_le_bytes());
    }
    let Ok(u) = Uberblock::decode(&buf) else {
        return;
    };
    let again = u.encode();
    assert_eq!(again[..64], buf[..64], "uberblock does not re-encode");
    assert_eq!(Uberblock::decode(&again), Ok(u));
}

/// A log entry that is valid by construction (see `LogEntry::validate`).
fn entry_from(inp: &mut Input<'_>) -> LogEntry {
    let kind = match inp.u8() % 6 {
        0 => EntryKind::Write,
        1 => EntryKind::Trim,
        2 => EntryKind::Zero,
        3 => EntryKind::Relocate,
        4 => EntryKind::Copy,
        _ => EntryKind::Move,
    };
    let lineage = inp.u32();
    let birth = inp.u64();
    if matches!(kind, EntryKind::Trim | EntryKind::Zero) {
        let nblocks = inp.u32().max(1);
        return LogEntry {
            kind,
            comp: 0,
            flags: inp.u8() & 1,
            nblocks,
            lineage,
            lba: inp.u64() % (u64::MAX - u64::from(nblocks)),
            birth,
            payload_off: 0,
            stored_len: 0,
            csums: Vec::new(),
            enc: 0,
            seal: None,
            reloc_from: None,
        };
    }
    let off = u64::from(inp.u8() % 16);
    let nblocks = 1 + u32::from(inp.u8()) % (16 - off as u32);
    let raw = nblocks * BLOCK as u32;
    let (mut comp, mut enc) = (inp.u8() % 3, inp.u8() % 2);
    if kind == EntryKind::Move && comp == 0 && enc == 0 {
        comp = 1;
    }
    if comp == 0 && enc == 0 && inp.bool() {
        enc = 1;
    }
    let plain = comp == 0 && enc == 0;
    let stored_len = if comp == 0 { raw } else { 1 + inp.u32() % raw };
    let csums = if plain {
        (0..nblocks).map(|_| inp.u32()).collect()
    } else {
        vec![inp.u32()]
    };
    let mut seal = [0u8; 28];
    let b = inp.bytes(28);
    seal[..b.len()].copy_from_slice(b);
    LogEntry {
        kind,
        comp,
        flags: 0,
        nblocks,
        lineage,
        lba: (inp.u64() >> 8) * 16 + off,
        birth,
        payload_off: BLOCK as u32 * (1 + u32::from(inp.u8())),
        stored_len,
        csums,
        enc,
        seal: (enc != 0).then_some(seal),
        reloc_from: matches!(kind, EntryKind::Relocate | EntryKind::Move)
            .then(|| (Paddr::from_u64(inp.u64()), inp.u8())),
    }
}

/// `BatchHeader::decode`. Mode byte: 0 raw, 1 header checksum fixed, 2 a
/// header built from the input (valid entries of every kind). Checks: a
/// decoded header has the length `peek_header_len` announced, its entry
/// count is bounded by its length, it re-encodes to a header that decodes
/// to the same value, and a built header round-trips exactly.
pub fn batch_header(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8() % 3;
    if mode == 2 {
        let h = BatchHeader {
            pool_guid: inp.u128(),
            lsn: inp.u64(),
            prev_lsn: inp.u64(),
            flushed_lsn: inp.u64(),
            segment: SegId::from_u32(inp.u32()),
            next_segment: SegId::from_u32(inp.u32()),
            prev_crc: inp.u32(),
            stream: inp.u8(),
            total_len: 2 << 20,
            entries: (0..inp.u8() % 24).map(|_| entry_from(&mut inp)).collect(),
        };
        let mut b = Vec::new();
        h.encode_into(&mut b);
        assert_eq!(b.len() % BLOCK, 0);
        assert_eq!(BatchHeader::decode(&b), Ok(h));
        return;
    }
    let mut buf = inp.rest().to_vec();
    if mode == 1 && buf.len() >= 80 {
        let mut l = [0u8; 4];
        l.copy_from_slice(&buf[8..12]);
        let len = (u32::from_le_bytes(l) as usize).clamp(80, buf.len());
        let crc = crc_with_hole(&buf[..len], 72);
        buf[72..76].copy_from_slice(&crc.to_le_bytes());
    }
    let Ok(h) = BatchHeader::decode(&buf) else {
        return;
    };
    let len = BatchHeader::peek_header_len(&buf).expect("decoded, so peekable");
    assert_eq!(len, BatchHeader::header_len_for(&h.entries));
    assert!(h.entries.len() <= len / 40);
    assert!((h.total_len as usize).is_multiple_of(BLOCK));
    assert!(h.total_len as usize >= BatchHeader::header_blocks(len) * BLOCK);
    let mut again = Vec::new();
    h.encode_into(&mut again);
    assert_eq!(BatchHeader::decode(&again).as_ref(), Ok(&h));
}

/// `decode_checkpoint` / `decode_counters` (the envelopes a pool's root
/// points at: the catalog with its volume, lineage and snapshot tables,
/// the map manifest, the replay point). Mode byte bit 0: counters instead
/// of a checkpoint; bit 1: checksums fixed. Checks: a decoded value
/// re-encodes to an envelope that decodes to the same value, and the
/// catalog's structural checks and read-chain walks terminate on it
/// without panicking, whatever lineage graph (cycles included) it holds.
pub fn checkpoint(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let mut buf = inp.rest().to_vec();
    if mode & 2 != 0 {
        fix_envelope(&mut buf);
    }
    if mode & 1 != 0 {
        let Ok(c) = decode_counters(&buf) else { return };
        let again = encode_counters(&c);
        assert_eq!(decode_counters(&again).as_ref().ok(), Some(&c));
        return;
    }
    let Ok(ck) = decode_checkpoint(&buf) else {
        return;
    };
    let again = encode_checkpoint(&ck);
    assert_eq!(again.len() % BLOCK, 0);
    assert_eq!(decode_checkpoint(&again).as_ref().ok(), Some(&ck));
    let cat = &ck.catalog;
    let _problems = cat.verify();
    for &l in cat.lineages.keys() {
        assert!(cat.chain(l, u64::MAX).len() <= cat.lineages.len() + 1);
        let views = cat.views(l);
        assert!(views.windows(2).all(|w| w[0] < w[1]));
    }
    for &v in cat.volumes.keys() {
        let chain = cat.head_chain(v).expect("a listed volume");
        assert!(chain.len() <= cat.lineages.len() + 1);
    }
    for run in ck.manifest.runs() {
        let _ = run.blocks();
    }
}
