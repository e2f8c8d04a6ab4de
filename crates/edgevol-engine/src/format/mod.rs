//! On-disk formats. Every structure is versioned and checksummed; see
//! `docs/format.md` for the byte layouts, which the module docs repeat.

pub mod batch;
pub mod codec;
pub mod envelope;
pub mod label;
pub mod uberblock;
