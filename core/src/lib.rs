//! verity's engine core: the dataflow API, the sans-IO shard state machine, and
//! the threaded runtime that drives it (pinned shard-per-core workers, bounded
//! batched queues, reader and output threads).
#![forbid(unsafe_code)]

pub mod audit;
pub mod checkpoint;
pub mod cluster;
pub mod connector;
pub mod driver;
pub mod env;
pub mod event_time;
pub mod flow;
pub mod ids;
pub mod key;
pub mod line;
pub mod member_sink;
pub mod metrics;
pub mod replay;
pub mod routes;
pub mod runtime;
pub mod shard;

pub mod sink;
pub mod small;
pub mod source;
pub mod step_timing;
pub mod streams;
pub mod timers;
pub mod window;
pub mod wire;

pub use connector::{
    CommitId, Connectors, Position, SinkConnector, SinkContext, SinkError, SourceConnector, SourceError,
    SourceReader,
};
pub use env::{Clock, ManualClock, Rng, SplitMix64, SystemClock};
pub use event_time::EventTimeSpec;
pub use flow::{Dataflow, Either, FanOut, KeyedStream, LineStream, Output, Stateful, Stream};
pub use ids::{Msg, MsgId};
pub use key::Key;
pub use line::{Line, Reject};
pub use runtime::{
    open_checkpoints, run, run_in_cluster, AuditSettings, CheckpointSettings, ClusterRun, Delivery,
    OpenedCheckpoints, Outputs, Placement, RunConfig, RunError, RunSummary,
};
pub use shard::ShardLimits;
pub use sink::{CustomSink, DeadLetterSpec, OutputBatch, SinkSpec};
pub use small::SmallBytes;
pub use source::{LineGenerator, SourceSpec};
pub use window::{Aggregate, WindowResult, WindowSpec};
pub use wire::{Wire, WireError};

/// What a keyed stateful step's per-key state must be: a fresh one per key
/// (`Default`), and encodable (`Wire`) so checkpoints can snapshot it.
pub trait State: Default + Wire + Send + 'static {}

impl<S: Default + Wire + Send + 'static> State for S {}
