//! Entry points for the fuzzers (`crates/edgevol-fuzz`): the decoders and
//! checks that are internal to the engine, reachable without widening its
//! real API. Not for any other use; hidden from the docs.

pub use crate::pool::ckpt::{
    decode_checkpoint, decode_counters, encode_checkpoint, encode_counters, BlobRef, Checkpoint,
    ReplayPoint, StreamPos,
};

use crate::error::{DecodeError, Result};
use crate::format::codec::{Reader, Writer};
use crate::map::Key;

/// Decode a map key ([`Key::LEN`] bytes) as run blocks store it.
pub fn decode_key(r: &mut Reader<'_>) -> std::result::Result<Key, DecodeError> {
    Key::decode(r)
}

/// Encode a map key as run blocks store it.
pub fn encode_key(k: &Key, w: &mut Writer<'_>) {
    k.encode(w)
}

/// The check a volume property assignment passes (API, CLI, creation).
pub fn check_property(key: &str, value: &str) -> Result<()> {
    crate::pool::info::check_property(key, value)
}
