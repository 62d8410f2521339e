//! Kafka as a verity source and sink.
//!
//! * `url`: the `kafka://HOST:PORT[,HOST:PORT]/TOPIC?…` arguments.
//! * `log`: the broker as the connector logic sees it (`PartitionLog`,
//!   `LogProducer`): a small trait, so the same logic runs over librdkafka
//!   in production and over the simulated broker in the simulator.
//! * `reader`: where a partition opens (checkpoint position, else
//!   `start=earliest|latest`), where a bounded run (`until=end`) stops,
//!   records into chunks of lines with the offset after each chunk, records
//!   that cannot be lines described by topic, partition and offset (so the
//!   app dead-letters them), group offset commits after checkpoints.
//! * `sink`: output lines into keyed records with an output-id header; the
//!   transaction per checkpoint (begin, pre-commit at the barrier, commit
//!   with a marker after the checkpoint, re-commit from the checkpoint's
//!   copy after a crash between the two) or the idempotent producer.
//! * `sim_broker`: the simulated broker (partitioned logs, transactions,
//!   read_committed, fencing) that the simulator and the unit tests drive.
//! * `client` (feature `client`): librdkafka behind the traits, the
//!   `kafka://` factories for `Connectors`, and `verity send`/`receive`'s
//!   Kafka side.
#![forbid(unsafe_code)]

pub mod log;
pub mod reader;
pub mod sim_broker;
pub mod sink;
pub mod url;

#[cfg(feature = "client")]
pub mod client;

pub use log::{LogError, LogProducer, PartitionLog, Watermarks, OUTPUT_ID_HEADER};
pub use reader::PartitionReader;
pub use sim_broker::SimBroker;
pub use sink::{KeyOf, LogSink, SinkBugs, SinkDelivery};
pub use url::{KafkaUrl, StartAt};

/// A stable transactional id per job and process: the same after a restart
/// (so the new producer fences the old one), different between jobs.
pub fn transactional_id(job_fingerprint: &str, process: u32) -> String {
    format!("verity-{job_fingerprint}-p{process}")
}
