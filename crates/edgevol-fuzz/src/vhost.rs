//! vhost-user-blk: a descriptor chain from a split virtqueue in guest
//! memory made of fuzz bytes, parsed and executed on an in-memory disk.

use bytes::Bytes;
use edgevol_vhost::request::{execute, parse, reject, ExecCtx, Kind, Seg, S_IOERR, S_OK, S_UNSUPP};
use edgevol_vhost::{BlockDevice, Chunk, DevError};
use parking_lot::Mutex;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes as _, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use crate::input::Input;

/// Queue size (descriptors in the table).
const QSIZE: u16 = 16;
const DESC_TABLE: u64 = 0;
const AVAIL: u64 = 0x100;
const USED: u64 = 0x200;
/// Where the rest of the input is copied: request headers, data, indirect
/// tables, status bytes.
const DATA: u64 = 0x1000;
/// Guest RAM: two regions with a hole between them, so a buffer can
/// straddle a gap.
const REGIONS: [(u64, usize); 2] = [(0, 0x8000), (0x1_0000, 0x4000)];
const DISK: usize = 128 << 10;

/// A RAM disk that checks the export's promise: every range it is given
/// lies inside it.
struct MemDisk(Mutex<Vec<u8>>);

impl MemDisk {
    fn range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let end = offset.checked_add(len).expect("range overflows");
        assert!(end <= DISK as u64, "device asked for {offset}+{len}");
        offset as usize..end as usize
    }
}

impl BlockDevice for MemDisk {
    fn size(&self) -> u64 {
        DISK as u64
    }
    async fn read(&self, offset: u64, len: u64) -> Result<Vec<Chunk>, DevError> {
        let r = self.range(offset, len);
        let d = self.0.lock();
        let mid = r.start + r.len() / 2;
        // Data then zeroes: exercises the scatter of both chunk kinds.
        Ok(vec![
            Chunk::Data(Bytes::copy_from_slice(&d[r.start..mid])),
            Chunk::Zero((r.end - mid) as u64),
        ])
    }
    async fn write(&self, offset: u64, data: Bytes, _fua: bool) -> Result<(), DevError> {
        let r = self.range(offset, data.len() as u64);
        if offset == 8192 {
            return Err(DevError::io("injected failure"));
        }
        self.0.lock()[r].copy_from_slice(&data);
        Ok(())
    }
    async fn flush(&self) -> Result<(), DevError> {
        Ok(())
    }
    async fn discard(&self, offset: u64, len: u64, _fua: bool) -> Result<(), DevError> {
        let r = self.range(offset, len);
        self.0.lock()[r].fill(0);
        Ok(())
    }
    async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
        _fua: bool,
    ) -> Result<(), DevError> {
        let r = self.range(offset, len);
        if !unmap && len > 64 << 10 {
            return Err(DevError::unsupported("slow zeroes"));
        }
        self.0.lock()[r].fill(0);
        Ok(())
    }
}

fn total(segs: &[Seg]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Layout of the input: a mode byte (bit 0: keep descriptor addresses and
/// lengths inside guest RAM, bit 1: read-only device, bit 2: write-back
/// cache), the head index, 16 raw descriptors (16 bytes each, as in the
/// split ring), then bytes copied to guest address 0x1000.
///
/// The chain is popped from a real `virtio_queue::Queue` (loops, `next`
/// past the table, indirect tables are its business), then `parse` and
/// `execute`/`reject` run as the backend runs them. Checks: no panic; a
/// parsed request's buffers all lie in guest memory with the right access
/// and the status byte is writable; the device only sees in-range calls;
/// the status written to guest memory is the outcome's, one of OK, IOERR,
/// UNSUPP; the used length never exceeds the writable bytes + 1 (and is 1
/// on failure); a write that succeeds leaves the device holding exactly the
/// guest's data; a malformed chain completes with IOERR in its status byte,
/// or with used length 0 when it has none.
pub fn vhost_request(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let head = u16::from(inp.u8()) % QSIZE;
    // One guest memory per thread, cleared for every input (mapping it
    // anew each time costs more than the parse).
    MEMORY.with(|mem| run(mode, head, &mut inp, mem));
}

thread_local! {
    static MEMORY: GuestMemoryMmap<()> = {
        let ram: Vec<(GuestAddress, usize)> =
            REGIONS.iter().map(|&(a, n)| (GuestAddress(a), n)).collect();
        GuestMemoryMmap::<()>::from_ranges(&ram).expect("guest memory")
    };
}

fn run(mode: u8, head: u16, inp: &mut Input<'_>, mem: &GuestMemoryMmap<()>) {
    static ZEROES: [u8; 0x8000] = [0; 0x8000];
    for &(a, n) in &REGIONS {
        mem.write_slice(&ZEROES[..n], GuestAddress(a))
            .expect("clear guest memory");
    }
    let mut table = [0u8; 16 * QSIZE as usize];
    let raw = inp.bytes(table.len());
    table[..raw.len()].copy_from_slice(raw);
    if mode & 1 == 1 {
        for d in table.chunks_exact_mut(16) {
            // addr u64, len u32, flags u16, next u16 (little-endian).
            let mut a = [0u8; 8];
            a.copy_from_slice(&d[0..8]);
            let addr = u64::from_le_bytes(a) % 0x1_4000;
            let mut l = [0u8; 4];
            l.copy_from_slice(&d[8..12]);
            let len = u32::from_le_bytes(l) % 0x9000;
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
        }
    }
    mem.write_slice(&table, GuestAddress(DESC_TABLE))
        .expect("descriptor table");
    // Available ring: flags 0, idx 1, ring[0] = head.
    let mut avail = [0u8; 6];
    avail[2..4].copy_from_slice(&1u16.to_le_bytes());
    avail[4..6].copy_from_slice(&head.to_le_bytes());
    mem.write_slice(&avail, GuestAddress(AVAIL))
        .expect("avail ring");
    let rest = inp.rest();
    let rest = &rest[..rest.len().min(REGIONS[0].1 - DATA as usize)];
    mem.write_slice(rest, GuestAddress(DATA))
        .expect("guest data");

    let mut q = Queue::new(QSIZE).expect("queue");
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    let Some(chain) = q.pop_descriptor_chain(mem) else {
        return;
    };

    let dev = MemDisk(Mutex::new(vec![0x5a; DISK]));
    let ctx = ExecCtx {
        read_only: mode & 2 != 0,
        writeback: mode & 4 != 0,
        id: edgevol_vhost::config::id_bytes("fuzz-serial"),
    };
    let req = match parse(mem, chain) {
        Ok(req) => req,
        Err(m) => {
            let out = reject(mem, &m);
            assert_eq!(out.status, S_IOERR);
            match m.status {
                Some(a) => {
                    assert_eq!(out.used_len, 1);
                    assert_eq!(mem.read_obj::<u8>(a).expect("status byte"), S_IOERR);
                }
                None => assert_eq!(out.used_len, 0),
            }
            return;
        }
    };
    for s in &req.out {
        assert!(mem.check_range(s.addr, s.len as usize, Permissions::Read));
    }
    for s in &req.inp {
        assert!(mem.check_range(s.addr, s.len as usize, Permissions::Write));
    }
    assert!(mem.check_range(req.status, 1, Permissions::Write));

    // What a write stores, read before execution changes anything.
    let mut written = Vec::new();
    for s in &req.out {
        let mut b = vec![0u8; s.len as usize];
        mem.read_slice(&mut b, s.addr).expect("checked range");
        written.extend_from_slice(&b);
    }
    let out = futures::executor::block_on(execute(&dev, mem, &req, &ctx));
    assert!(
        [S_OK, S_IOERR, S_UNSUPP].contains(&out.status),
        "status {}",
        out.status
    );
    assert_eq!(mem.read_obj::<u8>(req.status).expect("status"), out.status);
    assert!(out.used_len >= 1 && u64::from(out.used_len) <= total(&req.inp) + 1);
    if out.status != S_OK {
        assert_eq!(out.used_len, 1, "a failed request reports data");
    }
    if req.kind == Kind::Write && out.status == S_OK && !written.is_empty() {
        assert!(!ctx.read_only);
        let off = (req.sector * 512) as usize;
        assert_eq!(dev.0.lock()[off..off + written.len()], written[..]);
    }
}
