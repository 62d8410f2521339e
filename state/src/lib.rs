//! Keyed state and dedup watermarks.
//!
//! Everything here is plain in-memory data owned by exactly one shard: no locks,
//! no I/O, and deterministic iteration (a fixed-seed hasher; sorted iteration where
//! order is observable), so the simulator and replay see the same behaviour as
//! production.
#![forbid(unsafe_code)]

mod dedup;
mod keyed;

pub use dedup::{Admit, DedupWatermarks};
pub use keyed::KeyedStore;
