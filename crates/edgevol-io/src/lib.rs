//! edgevol I/O: 4 KiB-aligned buffers for direct I/O, and a per-thread
//! io_uring so data-plane threads do device I/O without handing requests
//! to other threads. This is the only crate of the data path with `unsafe`
//! code (the ring's buffer hand-off to the kernel and the eventfd).

pub mod buf;
pub mod ring;

#[cfg(feature = "tokio")]
mod drive;

pub use buf::{AlignedBuf, BLOCK};
#[cfg(feature = "tokio")]
pub use drive::drive;
pub use ring::{current, install, uninstall, Op, Ring};
