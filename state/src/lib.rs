//! Keyed state, dedup watermarks, and the checkpoint files they are saved in.
//!
//! The state is plain in-memory data owned by exactly one shard: no locks, no
//! I/O, and deterministic iteration (a fixed-seed hasher; sorted iteration where
//! order is observable), so the simulator and replay see the same behaviour as
//! production. Checkpoints reach the disk only through the `Storage` trait,
//! which the simulator implements with a disk that loses unsynced writes.
#![forbid(unsafe_code)]

pub mod checkpoint;
mod dedup;
mod keyed;
pub mod storage;

pub use checkpoint::{CheckpointError, CheckpointStore, PartInfo, Recovered};
pub use dedup::{Admit, DedupWatermarks};
pub use keyed::KeyedStore;
pub use storage::{write_atomically, DirStorage, Storage};
