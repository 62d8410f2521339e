//! The audit log: what a run did and the non-derivable values it used (clock
//! readings, the external state a decision read, the interleaving of streams),
//! with the lineage and hops of every record, in hash-chained segment files
//! written on a side thread (`writer`), checked and read back by `segment`.
//!
//! The hot path never blocks on disk: it encodes records into a buffer of its
//! own and hands whole buffers to the side thread; only a full queue makes it
//! wait, so no record is ever dropped.
#![forbid(unsafe_code)]

pub mod codec;
pub mod query;
pub mod record;
pub mod segment;
pub mod writer;

pub use record::{Id, Record};
pub use segment::{verify, ChainHead, VerifyReport};
pub use writer::{
    push_record, AuditClosed, AuditGauge, AuditHandle, AuditLog, AuditStats, FsyncPolicy, SegmentWriter,
    WriterLimits,
};
