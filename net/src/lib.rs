//! The network layer of verity: frames (zero-copy decode, checksummed),
//! mutual authentication of peers, the reliable numbered channel protocol,
//! peer liveness, the sans-IO peer protocol that ties them together, and
//! the mio I/O thread that drives it over TCP.
//! It knows nothing of operators or apps: it moves numbered frames.
#![forbid(unsafe_code)]

pub mod auth;
pub mod channel;
pub mod frame;
pub mod liveness;
pub mod node;
pub mod peer;
