//! Creating, importing and recovering pools.
//!
//! Recovery is not a special mode: import always loads the newest valid
//! checkpoint and replays the log from its replay point. After a clean
//! close the log past that point is empty.
//!
//! Replay walks each stream's chain of batches (`prev_lsn` + `prev_crc`),
//! following `next_segment` at segment ends, until a batch does not
//! continue the chain. Batches from all streams are applied in lsn order
//! through the writer's own state machine. Payloads of batches written
//! after the last flush any header vouches for are verified first; records
//! that fail (torn writes) are skipped: they were never acknowledged as
//! durable.
//!
//! The jobs live beside this module: `create` (a new pool and its first
//! checkpoint), [`labels`] (labels and uberblocks on the devices),
//! `import` (devices to layout, stale members, the segment table) and
//! [`replay`] (the log after the checkpoint).

mod create;
mod import;
mod labels;
mod replay;

pub(crate) use create::create;
pub(crate) use import::import;
pub(crate) use labels::{erase_uberblocks, probe, wipe_labels, write_label, write_labels};
