//! The benchmark harnesses' shared parts: the naive single-thread loops the
//! engine is measured against, and the workloads of the comparison with peers.
#![forbid(unsafe_code)]

pub mod baseline;
pub mod workload;
