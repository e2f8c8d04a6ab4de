//! Device labels: who this device is and what pool it belongs to.
//!
//! Two copies per device (offsets 0 and 16 KiB, 16 KiB each), each an
//! [envelope](super::envelope) of kind `Label` holding a postcard-encoded
//! [`Label`]. The label carries the whole pool layout, so any one device
//! tells the importer which other devices to look for. `txg` increases with
//! every layout change; the highest valid one wins.

use serde::{Deserialize, Serialize};

use super::envelope::{self, Kind};
use crate::error::DecodeError;
use crate::layout::{DATA_START, LABEL_SIZE};

/// How the devices of one top-level group store data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupKind {
    /// One device, no redundancy.
    Single,
    /// Every member holds a whole copy.
    Mirror,
    /// Rows of data columns plus 1 or 2 parity columns (see `pool::raid`).
    Parity(u8),
}

/// One device as the pool layout records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLayout {
    /// Unique id, also written in this device's own label.
    pub guid: u128,
    /// The path it was last seen at (a hint; import matches by guid).
    pub path: String,
    /// Usable segments on this device.
    pub segments: u32,
}

/// A top-level group of devices (a vdev).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupLayout {
    /// Redundancy scheme.
    pub kind: GroupKind,
    /// Member devices.
    pub devices: Vec<DeviceLayout>,
}

/// The pool's physical layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolLayout {
    /// Segment size in bytes (power of two).
    pub segment_size: u64,
    /// Top-level groups; segments are spread across them.
    pub groups: Vec<GroupLayout>,
}

/// A device label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// The pool.
    pub pool_guid: u128,
    /// The pool's name.
    pub pool_name: String,
    /// This device.
    pub device_guid: u128,
    /// Layout generation; the highest valid label wins.
    pub txg: u64,
    /// When the pool was created (seconds since the epoch).
    pub created: u64,
    /// The whole layout.
    pub layout: PoolLayout,
}

impl Label {
    /// Encode one label copy (fits in [`LABEL_SIZE`]).
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let b = envelope::encode(Kind::Label, self);
        if b.len() as u64 > LABEL_SIZE {
            return Err(DecodeError::Invalid(
                "label too large (too many devices or long paths)",
            ));
        }
        Ok(b)
    }

    /// Decode one label copy.
    pub fn decode(buf: &[u8]) -> Result<Label, DecodeError> {
        let l: Label = envelope::decode(Kind::Label, buf)?;
        l.validate()?;
        Ok(l)
    }

    fn validate(&self) -> Result<(), DecodeError> {
        let ss = self.layout.segment_size;
        if !ss.is_power_of_two()
            || !(crate::layout::MIN_SEGMENT_SIZE..=crate::layout::MAX_SEGMENT_SIZE).contains(&ss)
        {
            return Err(DecodeError::Invalid("segment size"));
        }
        if self.layout.groups.is_empty() || self.layout.groups.len() > 255 {
            return Err(DecodeError::Invalid("group count"));
        }
        if self.layout.groups.iter().any(|g| g.devices.is_empty()) {
            return Err(DecodeError::Invalid("empty group"));
        }
        Ok(())
    }

    /// Segments that fit on a device of `len` bytes with segments of `segment_size`.
    pub fn segments_for(len: u64, segment_size: u64) -> u32 {
        let n = len.saturating_sub(DATA_START) / segment_size;
        u32::try_from(n.min(u64::from(crate::layout::SegId::MAX_INDEX) + 1)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_round_trip() {
        let l = Label {
            pool_guid: 1,
            pool_name: "demo".into(),
            device_guid: 2,
            txg: 3,
            created: 4,
            layout: PoolLayout {
                segment_size: 8 << 20,
                groups: vec![GroupLayout {
                    kind: GroupKind::Single,
                    devices: vec![DeviceLayout {
                        guid: 2,
                        path: "/tmp/x".into(),
                        segments: 10,
                    }],
                }],
            },
        };
        let b = l.encode().unwrap();
        assert_eq!(Label::decode(&b).unwrap(), l);
        assert_eq!(
            Label::segments_for(DATA_START + 3 * (8 << 20) + 5, 8 << 20),
            3
        );
    }
}
