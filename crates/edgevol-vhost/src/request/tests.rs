//! Request parsing and execution against an in-memory device, with
//! descriptor chains built by hand: the exact status for every kind of bad
//! input.

use std::sync::Mutex;

use futures::executor::block_on;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::GuestMemoryMmap;

use super::*;

const MEM: u64 = 0x10_0000; // guest RAM: 1 MiB at 0
const HDR: u64 = 0x8_0000; // where tests put request headers
const DATA: u64 = 0x9_0000;
const STATUS: u64 = 0xF_0000;

/// A RAM disk; counts flushes.
struct MemDisk {
    data: Mutex<Vec<u8>>,
    flushes: Mutex<u32>,
    fua_writes: Mutex<u32>,
    unmaps: Mutex<Vec<(u64, u64, bool)>>,
}

impl MemDisk {
    fn new(size: usize) -> MemDisk {
        MemDisk {
            data: Mutex::new(vec![0; size]),
            flushes: Mutex::new(0),
            fua_writes: Mutex::new(0),
            unmaps: Mutex::new(Vec::new()),
        }
    }
}

impl BlockDevice for MemDisk {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }

    async fn read(&self, offset: u64, len: u64) -> Result<Vec<Chunk>, DevError> {
        let d = self.data.lock().unwrap();
        let s = &d[offset as usize..(offset + len) as usize];
        if s.iter().all(|&b| b == 0) {
            return Ok(vec![Chunk::Zero(len)]);
        }
        // two chunks, to exercise the scatter across chunk boundaries
        let h = s.len() / 2;
        Ok(vec![
            Chunk::Data(Bytes::copy_from_slice(&s[..h])),
            Chunk::Data(Bytes::copy_from_slice(&s[h..])),
        ])
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), DevError> {
        if offset == 4096 * 13 {
            return Err(DevError::io("injected failure"));
        }
        if fua {
            *self.fua_writes.lock().unwrap() += 1;
        }
        let mut d = self.data.lock().unwrap();
        d[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        Ok(())
    }

    async fn flush(&self) -> Result<(), DevError> {
        *self.flushes.lock().unwrap() += 1;
        Ok(())
    }

    async fn discard(&self, offset: u64, len: u64, _fua: bool) -> Result<(), DevError> {
        self.unmaps.lock().unwrap().push((offset, len, true));
        let mut d = self.data.lock().unwrap();
        d[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
        _fua: bool,
    ) -> Result<(), DevError> {
        self.unmaps.lock().unwrap().push((offset, len, unmap));
        let mut d = self.data.lock().unwrap();
        d[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

fn ctx() -> ExecCtx {
    ExecCtx {
        read_only: false,
        writeback: true,
        id: config::id_bytes("vol-serial-1234"),
    }
}

fn header(mem: &GuestMemoryMmap, t: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&t.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
}

fn r(addr: u64, len: u32) -> Descriptor {
    Descriptor::new(addr, len, 0, 0)
}

fn w(addr: u64, len: u32) -> Descriptor {
    Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0)
}

/// Parse and execute `descs` (a chain already in order).
fn run(mem: &GuestMemoryMmap, dev: &MemDisk, descs: &[Descriptor], ctx: &ExecCtx) -> Outcome {
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    match parse(mem, descs.iter().copied()) {
        Ok(req) => block_on(execute(dev, mem, &req, ctx)),
        Err(m) => reject(mem, &m),
    }
}

fn status_byte(mem: &GuestMemoryMmap) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

#[test]
fn write_then_read_back() {
    let m = mem();
    let dev = MemDisk::new(1 << 20);
    m.write_slice(&[0xab; 8192], GuestAddress(DATA)).unwrap();
    header(&m, VIRTIO_BLK_T_OUT, 16);
    let o = run(
        &m,
        &dev,
        &[
            r(HDR, 16),
            r(DATA, 4096),
            r(DATA + 4096, 4096),
            w(STATUS, 1),
        ],
        &ctx(),
    );
    assert_eq!(
        o,
        Outcome {
            status: S_OK,
            used_len: 1
        }
    );
    assert_eq!(status_byte(&m), S_OK);
    assert!(dev.data.lock().unwrap()[8192..16384]
        .iter()
        .all(|&b| b == 0xab));
    assert_eq!(*dev.fua_writes.lock().unwrap(), 0, "write-back: no FUA");

    m.write_slice(&[0u8; 8192], GuestAddress(DATA)).unwrap();
    header(&m, VIRTIO_BLK_T_IN, 16);
    // data and status in one writable descriptor (any layout is allowed)
    let o = run(&m, &dev, &[r(HDR, 16), w(DATA, 8192), w(STATUS, 1)], &ctx());
    assert_eq!(
        o,
        Outcome {
            status: S_OK,
            used_len: 8193
        }
    );
    let mut back = [0u8; 8192];
    m.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert!(back.iter().all(|&b| b == 0xab));
}

#[test]
fn sector_sized_requests_at_odd_sectors_reach_the_device_unrounded() {
    // A guest that ignores blk_size (firmware, boot loaders) addresses
    // single 512-byte sectors: the request path passes their exact byte
    // range on (the engine read-modify-writes the 4 KiB block).
    let m = mem();
    let dev = MemDisk::new(1 << 20);
    m.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    header(&m, VIRTIO_BLK_T_OUT, 9);
    let o = run(&m, &dev, &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)], &ctx());
    assert_eq!(o.status, S_OK);
    {
        let d = dev.data.lock().unwrap();
        assert!(d[9 * 512..10 * 512].iter().all(|&b| b == 0x5a));
        assert!(d[..9 * 512].iter().chain(&d[10 * 512..]).all(|&b| b == 0));
    }
    // Read sectors 8..11 back: zeroes around the written one.
    header(&m, VIRTIO_BLK_T_IN, 8);
    let o = run(&m, &dev, &[r(HDR, 16), w(DATA, 1536), w(STATUS, 1)], &ctx());
    assert_eq!(
        o,
        Outcome {
            status: S_OK,
            used_len: 1537
        }
    );
    let mut back = [0u8; 1536];
    m.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert!(back[..512].iter().all(|&b| b == 0));
    assert!(back[512..1024].iter().all(|&b| b == 0x5a));
    assert!(back[1024..].iter().all(|&b| b == 0));
}

#[test]
fn header_and_data_in_one_descriptor_status_after_data() {
    let m = mem();
    let dev = MemDisk::new(1 << 20);
    header(&m, VIRTIO_BLK_T_OUT, 0);
    m.write_slice(&[7u8; 4096], GuestAddress(HDR + 16)).unwrap();
    let o = run(&m, &dev, &[r(HDR, 16 + 4096), w(STATUS, 1)], &ctx());
    assert_eq!(o.status, S_OK);
    assert!(dev.data.lock().unwrap()[..4096].iter().all(|&b| b == 7));
    // read: data and status byte in one descriptor
    header(&m, VIRTIO_BLK_T_IN, 0);
    let o = {
        let req = parse(&m, [r(HDR, 16), w(DATA, 4097)].into_iter()).unwrap();
        assert_eq!(req.status, GuestAddress(DATA + 4096));
        block_on(execute(&dev, &m, &req, &ctx()))
    };
    assert_eq!(
        o,
        Outcome {
            status: S_OK,
            used_len: 4097
        }
    );
}

#[test]
fn write_through_makes_writes_fua() {
    let m = mem();
    let dev = MemDisk::new(1 << 20);
    header(&m, VIRTIO_BLK_T_OUT, 0);
    let c = ExecCtx {
        writeback: false,
        ..ctx()
    };
    assert_eq!(
        run(&m, &dev, &[r(HDR, 16), r(DATA, 4096), w(STATUS, 1)], &c).status,
        S_OK
    );
    assert_eq!(*dev.fua_writes.lock().unwrap(), 1);
}

#[test]
fn flush_and_get_id() {
    let m = mem();
    let dev = MemDisk::new(1 << 20);
    header(&m, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(
        run(&m, &dev, &[r(HDR, 16), w(STATUS, 1)], &ctx()),
        Outcome {
            status: S_OK,
            used_len: 1
        }
    );
    assert_eq!(*dev.flushes.lock().unwrap(), 1);

    header(&m, VIRTIO_BLK_T_GET_ID, 0);
    let o = run(&m, &dev, &[r(HDR, 16), w(DATA, 20), w(STATUS, 1)], &ctx());
    assert_eq!(
        o,
        Outcome {
            status: S_OK,
            used_len: 21
        }
    );
    let mut id = [0u8; 20];
    m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..15], b"vol-serial-1234");
    assert!(id[15..].iter().all(|&b| b == 0));
}

#[test]
fn unknown_request_types_are_unsupported() {
    let m = mem();
    let dev = MemDisk::new(1 << 20);
    for t in [2u32, 10, 14, 15, 16, 0x8000_0001, u32::MAX] {
        header(&m, t, 0);
        let o = run(&m, &dev, &[r(HDR, 16), w(STATUS, 1)], &ctx());
        assert_eq!(
            o,
            Outcome {
                status: S_UNSUPP,
                used_len: 1
            },
            "type {t}"
        );
        assert_eq!(status_byte(&m), S_UNSUPP);
    }
}

#[test]
fn requests_past_the_end_are_io_errors() {
    let m = mem();
    let dev = MemDisk::new(1 << 20); // 2048 sectors
    for (t, sector, data) in [
        (VIRTIO_BLK_T_IN, 2048u64, true),
        (VIRTIO_BLK_T_IN, 2047, true), // 4096 bytes from sector 2047 cross the end
        (VIRTIO_BLK_T_OUT, 4096, true),
        (VIRTIO_BLK_T_IN, u64::MAX, true), // sector * 512 overflows
        (VIRTIO_BLK_T_OUT, u64::MAX / 512, true),
    ] {
        header(&m, t, sector);
        let descs = if t == VIRTIO_BLK_T_IN {
            vec![r(HDR, 16), w(DATA, 4096), w(STATUS, 1)]
        } else {
            vec![r(HDR, 16), r(DATA, 4096), w(STATUS, 1)]
        };
        let _ = data;
        let o = run(&m, &dev, &descs, &ctx());
        assert_eq!(
            o,
            Outcome {
                status: S_IOERR,
                used_len: 1
            },
            "type {t} sector {sector}"
        );
        assert_eq!(status_byte(&m), S_IOERR);
    }
    // discard past the end, and one segment in range before it: nothing is done
    header(&m, VIRTIO_BLK_T_DISCARD, 0);
    write_discard_segs(&m, &[(0, 8, 0), (2040, 16, 0)]);
    let o = run(&m, &dev, &[r(HDR, 16), r(DATA, 32), w(STATUS, 1)], &ctx());
    assert_eq!(o.status, S_IOERR);
    assert!(
        dev.unmaps.lock().unwrap().is_empty(),
        "checked before anything changed"
    );
}

#[test]
fn wrong_lengths_are_io_errors() {
    let m = mem();
    let dev = MemDisk::new(1 << 20);
    // data not a multiple of 512
    header(&m, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        run(&m, &dev, &[r(HDR, 16), w(DATA, 100), w(STATUS, 1)], &ctx()).status,
        S_IOERR
    );
    header(&m, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        run(&m, &dev, &[r(HDR, 16), r(DATA, 513), w(STATUS, 1)], &ctx()).status,
        S_IOERR
    );
    // more than the request limit (seg_max x size_max)
    let big = u32::try_from(MAX_REQUEST_BYTES + 512).unwrap();
    let m2 = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    header(&m2, VIRTIO_BLK_T_IN, 0);
    m2.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let req = parse(
        &m2,
        [r(HDR, 16), w(0x100_0000, big), w(STATUS, 1)].into_iter(),
    )
    .unwrap();
    assert_eq!(block_on(execute(&dev, &m2, &req, &ctx())).status, S_IOERR);
    // header shorter than 16 bytes
    header(&m, VIRTIO_BLK_T_IN, 0);
    let o = run(&m, &dev, &[r(HDR, 8), w(STATUS, 1)], &ctx());
    assert_eq!(
        o,
        Outcome {
            status: S_IOERR,
            used_len: 1
        }
    );
    // discard payload that is not whole segments, or too many of them
    header(&m, VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(
        run(&m, &dev, &[r(HDR, 16), r(DATA, 20), w(STATUS, 1)], &ctx()).status,
        S_IOERR
    );
    assert_eq!(
        run(&m, &dev, &[r(HDR, 16), w(STATUS, 1)], &ctx()).status,
        S_IOERR
    );
    let many = vec![(0u64, 8u32, 0u32); MAX_DISCARD_SEG as usize + 1];
    write_discard_segs(&m, &many);
    let len = 16 * many.len() as u32;
    assert_eq!(
        run(&m, &dev, &[r(HDR, 16), r(DATA, len), w(STATUS, 1)], &ctx()).status,
        S_IOERR
    );
    // a discard segment over the size limit
    write_discard_segs(&m, &[(0, MAX_DISCARD_SECTORS + 8, 0)]);
    assert_eq!(
        run(&m, &dev, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)], &ctx()).status,
        S_IOERR
    );
}

#[test]
fn chains_outside_guest_memory() {
    let m = mem();
    let dev = MemDisk::new(1 << 20);
    header(&m, VIRTIO_BLK_T_IN, 0);
    // data buffer outside guest RAM: IOERR in the status byte
    let o = run(
        &m,
        &dev,
        &[r(HDR, 16), w(MEM + 4096, 4096), w(STATUS, 1)],
        &ctx(),
    );
    assert_eq!(
        o,
        Outcome {
            status: S_IOERR,
            used_len: 1
        }
    );
    assert_eq!(status_byte(&m), S_IOERR);
    // a buffer that starts inside and ends outside
    let o = run(
        &m,
        &dev,
        &[r(HDR, 16), w(MEM - 512, 4096), w(STATUS, 1)],
        &ctx(),
    );
    assert_eq!(o.status, S_IOERR);
    // a buffer whose end overflows the address space
    let o = run(
        &m,
        &dev,
        &[r(HDR, 16), w(u64::MAX - 100, 4096), w(STATUS, 1)],
        &ctx(),
    );
    assert_eq!(o.status, S_IOERR);
    // header outside guest RAM
    let o = run(&m, &dev, &[r(MEM * 4, 16), w(STATUS, 1)], &ctx());
    assert_eq!(
        o,
        Outcome {
            status: S_IOERR,
            used_len: 1
        }
    );
    // status byte outside guest RAM: nothing can be written, used len 0
    let o = run(&m, &dev, &[r(HDR, 16), w(MEM + 10, 1)], &ctx());
    assert_eq!(
        o,
        Outcome {
            status: S_IOERR,
            used_len: 0
        }
    );
    // no writable descriptor at all
    let o = run(&m, &dev, &[r(HDR, 16), r(DATA, 4096)], &ctx());
    assert_eq!(
        o,
        Outcome {
            status: S_IOERR,
            used_len: 0
        }
    );
    // an empty chain
    assert_eq!(run(&m, &dev, &[], &ctx()).used_len, 0);
    // readable after writable
    header(&m, VIRTIO_BLK_T_OUT, 0);
    let o = run(
        &m,
        &dev,
        &[r(HDR, 16), w(DATA, 512), r(DATA, 512), w(STATUS, 1)],
        &ctx(),
    );
    assert_eq!(o.status, S_IOERR);
    assert!(
        dev.data.lock().unwrap().iter().all(|&b| b == 0),
        "nothing was written"
    );
}

#[test]
fn read_only_refuses_changes_but_reads_and_flushes() {
    let m = mem();
    let dev = MemDisk::new(1 << 20);
    let c = ExecCtx {
        read_only: true,
        ..ctx()
    };
    header(&m, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        run(&m, &dev, &[r(HDR, 16), r(DATA, 4096), w(STATUS, 1)], &c).status,
        S_IOERR
    );
    header(&m, VIRTIO_BLK_T_DISCARD, 0);
    write_discard_segs(&m, &[(0, 8, 0)]);
    assert_eq!(
        run(&m, &dev, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)], &c).status,
        S_IOERR
    );
    header(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert_eq!(
        run(&m, &dev, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)], &c).status,
        S_IOERR
    );
    header(&m, VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        run(&m, &dev, &[r(HDR, 16), w(DATA, 4096), w(STATUS, 1)], &c).status,
        S_OK
    );
    header(&m, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(run(&m, &dev, &[r(HDR, 16), w(STATUS, 1)], &c).status, S_OK);
}

fn write_discard_segs(m: &GuestMemoryMmap, segs: &[(u64, u32, u32)]) {
    let mut raw = Vec::new();
    for (s, n, f) in segs {
        raw.extend_from_slice(&s.to_le_bytes());
        raw.extend_from_slice(&n.to_le_bytes());
        raw.extend_from_slice(&f.to_le_bytes());
    }
    m.write_slice(&raw, GuestAddress(DATA)).unwrap();
}

#[test]
fn discard_and_write_zeroes() {
    let m = mem();
    let dev = MemDisk::new(1 << 20);
    dev.data.lock().unwrap().fill(1);
    header(&m, VIRTIO_BLK_T_DISCARD, 0);
    write_discard_segs(&m, &[(0, 8, 0), (64, 16, 0)]);
    assert_eq!(
        run(&m, &dev, &[r(HDR, 16), r(DATA, 32), w(STATUS, 1)], &ctx()).status,
        S_OK
    );
    // the unmap flag is reserved for discard: UNSUPP
    write_discard_segs(&m, &[(0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]);
    assert_eq!(
        run(&m, &dev, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)], &ctx()).status,
        S_UNSUPP
    );
    header(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    write_discard_segs(
        &m,
        &[(128, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP), (256, 8, 0)],
    );
    assert_eq!(
        run(&m, &dev, &[r(HDR, 16), r(DATA, 32), w(STATUS, 1)], &ctx()).status,
        S_OK
    );
    // unknown flags: UNSUPP
    write_discard_segs(&m, &[(0, 8, 4)]);
    assert_eq!(
        run(&m, &dev, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)], &ctx()).status,
        S_UNSUPP
    );
    assert_eq!(
        *dev.unmaps.lock().unwrap(),
        vec![
            (0, 4096, true),
            (32768, 8192, true),
            (65536, 4096, true),
            (131072, 4096, false)
        ]
    );
    let d = dev.data.lock().unwrap();
    assert!(d[..4096].iter().all(|&b| b == 0));
    assert!(d[4096..32768].iter().all(|&b| b == 1));
}

#[test]
fn device_errors_become_io_errors() {
    let m = mem();
    let dev = MemDisk::new(1 << 20);
    header(&m, VIRTIO_BLK_T_OUT, 13 * 8); // MemDisk fails writes at block 13
    let o = run(&m, &dev, &[r(HDR, 16), r(DATA, 4096), w(STATUS, 1)], &ctx());
    assert_eq!(
        o,
        Outcome {
            status: S_IOERR,
            used_len: 1
        }
    );
}

/// Chains as virtio-queue yields them from a real split queue in guest
/// memory, including one whose `next` points outside the descriptor table
/// and an indirect table: a cut-short chain is an error, not a panic.
#[test]
fn chains_from_a_split_queue() {
    let m = mem();
    let dev = MemDisk::new(1 << 20);
    let vq = MockSplitQueue::new(&m, 16);
    header(&m, VIRTIO_BLK_T_OUT, 8);
    m.write_slice(&[9u8; 4096], GuestAddress(DATA)).unwrap();
    let descs = [
        RawDescriptor::from(Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1)),
        RawDescriptor::from(Descriptor::new(DATA, 4096, VRING_DESC_F_NEXT as u16, 2)),
        RawDescriptor::from(Descriptor::new(STATUS, 1, VRING_DESC_F_WRITE as u16, 0)),
        // a second chain whose next index is past the table: ends after the header
        RawDescriptor::from(Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 200)),
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let mut it = q.iter(&m).unwrap();
    let first = it.next().unwrap();
    let req = parse(&m, first).unwrap();
    assert_eq!(req.kind, Kind::Write);
    assert_eq!(block_on(execute(&dev, &m, &req, &ctx())).status, S_OK);
    assert!(dev.data.lock().unwrap()[4096..8192].iter().all(|&b| b == 9));
    let second = it.next().unwrap();
    let err = parse(&m, second).unwrap_err();
    assert_eq!(err.status, None, "{err:?}");
    assert_eq!(
        reject(&m, &err),
        Outcome {
            status: S_IOERR,
            used_len: 0
        }
    );
}
