//! The virtio-blk device as the guest sees it: feature bits and the config
//! space (`struct virtio_blk_config`, little-endian, virtio 1.2 §5.2.4).

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// virtio-blk addresses in 512-byte sectors, whatever the block size.
pub const SECTOR: u64 = 512;
/// The block size edgevol volumes offer (`blk_size`): a guest driver that
/// honours it issues only 4 KiB-aligned I/O, the engine's fast path. Smaller
/// requests (512-byte sectors from firmware or drivers that ignore
/// `blk_size`) still work: the engine read-modify-writes partial blocks.
pub const BLOCK_SIZE: u32 = 4096;
/// Largest data segment (`size_max`).
pub const SIZE_MAX: u32 = 256 << 10;
/// Most data segments per request (`seg_max`): with [`SIZE_MAX`] a request
/// carries under 32 MiB, the NBD export's limit too.
pub const SEG_MAX: u32 = 126;
/// Largest request payload accepted, bytes.
pub const MAX_REQUEST_BYTES: u64 = SIZE_MAX as u64 * SEG_MAX as u64;
/// Largest discard / write-zeroes segment, in sectors (64 MiB).
pub const MAX_DISCARD_SECTORS: u32 = (64 << 20) / 512;
/// Most segments in one discard / write-zeroes request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Bytes of a `GET_ID` answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Bytes of the config space we fill (up to `write_zeroes_may_unmap` and
/// its padding; the secure-erase and zoned fields are not offered).
pub const CONFIG_LEN: usize = 60;

/// One device's settings, fixed for a connection.
#[derive(Debug, Clone)]
pub struct BlkSettings {
    /// Virtqueues offered (`num_queues`, with `VIRTIO_BLK_F_MQ`).
    pub queues: u16,
    /// Largest virtqueue the frontend may set up.
    pub max_queue_size: u16,
    /// Offer `VIRTIO_BLK_F_RO`, and fail writes.
    pub read_only: bool,
    /// The `GET_ID` answer (truncated to 20 bytes).
    pub serial: String,
}

/// The virtio feature bits offered (vhost-user's PROTOCOL_FEATURES bit is
/// added by the backend).
pub fn features(s: &BlkSettings) -> u64 {
    let mut f = 1u64 << VIRTIO_F_VERSION_1
        | 1 << VIRTIO_RING_F_EVENT_IDX
        | 1 << VIRTIO_RING_F_INDIRECT_DESC
        | 1 << VIRTIO_BLK_F_SIZE_MAX
        | 1 << VIRTIO_BLK_F_SEG_MAX
        | 1 << VIRTIO_BLK_F_BLK_SIZE
        | 1 << VIRTIO_BLK_F_TOPOLOGY
        | 1 << VIRTIO_BLK_F_FLUSH
        | 1 << VIRTIO_BLK_F_CONFIG_WCE
        | 1 << VIRTIO_BLK_F_MQ;
    if s.read_only {
        f |= 1 << VIRTIO_BLK_F_RO;
    } else {
        f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
    }
    f
}

/// Offset of `writeback` (the cache mode the driver may change with
/// `VIRTIO_BLK_F_CONFIG_WCE`) in the config space.
pub const WRITEBACK_OFFSET: usize = 32;

/// The config space for a device of `size` bytes with write cache mode
/// `writeback` (1: write-back, the guest sends flushes; 0: write-through,
/// every write is made durable before it completes).
pub fn config_space(s: &BlkSettings, size: u64, writeback: bool) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |at: usize, bytes: &[u8]| {
        if let Some(dst) = c.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    put(0, &(size / SECTOR).to_le_bytes()); // capacity
    put(8, &SIZE_MAX.to_le_bytes()); // size_max
    put(12, &SEG_MAX.to_le_bytes()); // seg_max
                                     // 16..20 geometry: not offered
    put(20, &BLOCK_SIZE.to_le_bytes()); // blk_size
    put(24, &[0]); // physical_block_exp: physical = logical
    put(25, &[0]); // alignment_offset
    put(26, &1u16.to_le_bytes()); // min_io_size, in blocks
    put(28, &0u32.to_le_bytes()); // opt_io_size: no preference
    put(WRITEBACK_OFFSET, &[u8::from(writeback)]);
    put(34, &s.queues.to_le_bytes()); // num_queues
    if !s.read_only {
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &MAX_DISCARD_SEG.to_le_bytes());
        put(44, &(BLOCK_SIZE / SECTOR as u32).to_le_bytes()); // discard_sector_alignment
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &MAX_DISCARD_SEG.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1]); // write_zeroes_may_unmap
    }
    c
}

/// The `GET_ID` answer: the serial's first 20 bytes, NUL-padded.
pub fn id_bytes(serial: &str) -> [u8; ID_BYTES] {
    let mut id = [0u8; ID_BYTES];
    for (d, s) in id.iter_mut().zip(serial.bytes()) {
        *d = s;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(read_only: bool) -> BlkSettings {
        BlkSettings {
            queues: 4,
            max_queue_size: 256,
            read_only,
            serial: "0123456789abcdef0123456789".into(),
        }
    }

    #[test]
    fn config_layout_matches_the_spec() {
        let c = config_space(&settings(false), 1 << 30, true);
        assert_eq!(
            u64::from_le_bytes(c[0..8].try_into().unwrap()),
            (1 << 30) / 512
        );
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 4096);
        assert_eq!(c[32], 1);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 4);
        assert_eq!(u32::from_le_bytes(c[44..48].try_into().unwrap()), 8);
        assert_eq!(c[56], 1);
        let ro = config_space(&settings(true), 4096, false);
        assert_eq!(ro[32], 0);
        assert!(
            ro[36..].iter().all(|&b| b == 0),
            "no discard limits when read-only"
        );
    }

    #[test]
    fn read_only_offers_ro_and_no_discard() {
        let f = features(&settings(true));
        assert_ne!(f & 1 << VIRTIO_BLK_F_RO, 0);
        assert_eq!(f & 1 << VIRTIO_BLK_F_DISCARD, 0);
        assert_eq!(f & 1 << VIRTIO_BLK_F_WRITE_ZEROES, 0);
        let f = features(&settings(false));
        assert_eq!(f & 1 << VIRTIO_BLK_F_RO, 0);
        assert_ne!(f & 1 << VIRTIO_BLK_F_DISCARD, 0);
    }

    #[test]
    fn id_is_truncated_and_padded() {
        assert_eq!(
            &id_bytes("0123456789abcdef0123456789"),
            b"0123456789abcdef0123"
        );
        let short = id_bytes("abc");
        assert_eq!(&short[..3], b"abc");
        assert!(short[3..].iter().all(|&b| b == 0));
    }
}
