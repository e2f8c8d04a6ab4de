//! The bodies of edgevol's fuzz targets: one `pub fn <target>(data: &[u8])`
//! per parser that reads bytes from a client, a guest, a disk or the API.
//!
//! `fuzz/fuzz_targets/<target>.rs` (cargo-fuzz, nightly) only calls the
//! function of the same name; `tests/corpus.rs` replays the committed seed
//! corpora (`fuzz/corpus/<target>/`), every regression input
//! (`fuzz/regressions/<target>/`) and a few thousand random and mutated
//! inputs through them on stable, so CI exercises every target. Each target
//! checks real properties (round trips, invariants a decoder promises,
//! bounds its callers rely on), not only the absence of panics. See
//! `docs/fuzzing.md`.

pub mod api;
pub mod format;
pub mod input;
pub mod map;
pub mod nbd;
pub mod seeds;
pub mod vhost;

pub use api::api_body;
pub use format::{batch_header, checkpoint, label, uberblock};
pub use map::{map_block, map_entry, record};
pub use nbd::{nbd_option, nbd_request, nbd_server};
pub use vhost::vhost_request;

/// A fuzz target body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and its
/// corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("nbd_option", nbd_option),
    ("nbd_request", nbd_request),
    ("nbd_server", nbd_server),
    ("vhost_request", vhost_request),
    ("label", label),
    ("uberblock", uberblock),
    ("batch_header", batch_header),
    ("checkpoint", checkpoint),
    ("map_block", map_block),
    ("map_entry", map_entry),
    ("record", record),
    ("api_body", api_body),
];
