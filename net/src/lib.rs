//! The network layer of verity: frames (zero-copy decode, checksummed),
//! mutual authentication of peers, the reliable numbered channel protocol,
//! peer liveness, and the mio I/O thread that drives them over TCP.
//! It knows nothing of operators or apps: it moves numbered frames.
#![forbid(unsafe_code)]

pub mod auth;
pub mod channel;
pub mod frame;
pub mod liveness;
pub mod node;
