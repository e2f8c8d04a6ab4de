//! Power-cut campaigns for the edgevol engine.
//!
//! A [`harness::Harness`] runs a workload against a pool on simulated
//! devices ([`edgevol_engine::device::MemDevice`]: a volatile write cache,
//! and a shared [`edgevol_engine::device::PowerRail`] that cuts the power
//! after any number of device operations, inside an operation), keeps a
//! [`model::Model`] of what every block may hold, and after each cut
//! imports the pool again and checks it against the model. A
//! [`campaign`] drives it from a seed; `edgevol test crash` is its command
//! line, and the engine's property test drives the same harness with
//! shrinking operation sequences.

pub mod campaign;
pub mod harness;
pub mod model;

pub use campaign::{run, CampaignFailure, Config, Report};
pub use harness::{Counts, Harness, Layout};
pub use model::{Failure, Op};
