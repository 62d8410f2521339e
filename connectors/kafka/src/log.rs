//! The broker, as the connector logic sees it: a few operations on
//! partitioned logs. librdkafka implements them in production
//! (`client`), the simulated broker (`sim_broker`) in the simulator and in
//! unit tests, so the offset and transaction decisions (`reader`, `sink`)
//! are the same code under both.

/// What a broker operation failed with, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The broker cannot be reached, or did not answer in time.
    #[error("Kafka brokers {brokers} unreachable: {detail}")]
    Unreachable { brokers: String, detail: String },
    #[error(
        "topic `{topic}` does not exist on {brokers} (create it first, e.g. `verity send --partitions N`)"
    )]
    NoSuchTopic { topic: String, brokers: String },
    /// Another producer with the same transactional id took over (a newer
    /// incarnation of this process): this one must stop.
    #[error("producer fenced: transactional id `{transactional_id}` is in use by a newer producer")]
    Fenced { transactional_id: String },
    #[error("{0}")]
    Other(String),
}

/// The offsets a partition holds: `low` is the oldest record still kept,
/// `high` the offset the next record will get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    pub low: u64,
    pub high: u64,
}

/// One partition of a topic, opened for reading (read_committed: records of
/// open or aborted transactions are never handed out).
pub trait PartitionLog: Send {
    fn watermarks(&mut self) -> Result<Watermarks, LogError>;

    /// Reads from `offset` on.
    fn seek(&mut self, offset: u64) -> Result<(), LogError>;

    /// Hands `each` the records that are there, in offset order, waiting at
    /// most `wait_ms` for the first, stopping once `bytes_max` bytes of
    /// values were handed out (a record is never split). Returns the offset
    /// to read next: after the last record handed out, or further if the
    /// log skipped offsets (transaction markers, aborted records).
    fn poll(
        &mut self,
        wait_ms: u64,
        bytes_max: usize,
        each: &mut dyn FnMut(u64, Option<&[u8]>),
    ) -> Result<u64, LogError>;

    /// Records `offset` as the consumer group's committed offset of this
    /// partition (monitoring only).
    fn commit_group(&mut self, group: &str, offset: u64) -> Result<(), LogError>;
}

/// A producer into one topic. With a transactional id its records become
/// visible to read_committed readers only when their transaction commits.
pub trait LogProducer: Send {
    /// Queues one record; `output_id` goes into the `verity-output-id`
    /// header.
    fn produce(&mut self, key: &[u8], value: &[u8], output_id: &[u8]) -> Result<(), LogError>;

    /// Waits until every queued record is acknowledged (or failed).
    fn flush(&mut self) -> Result<(), LogError>;

    /// Takes over the transactional id: fences any older producer with it
    /// and aborts the transaction it left open.
    fn init_transactions(&mut self) -> Result<(), LogError>;

    fn begin_transaction(&mut self) -> Result<(), LogError>;

    /// Commits the open transaction and, atomically with it, records
    /// `marker` as this transactional id's commit marker.
    fn commit_transaction(&mut self, marker: u64) -> Result<(), LogError>;

    fn abort_transaction(&mut self) -> Result<(), LogError>;

    /// The marker of the last transaction this transactional id committed
    /// (0: none).
    fn committed_marker(&mut self) -> Result<u64, LogError>;
}

/// The partition of `partitions` a keyed record goes to when its producer
/// partitions it itself (the simulated broker, `verity send`): the same
/// key, the same partition. FNV-1a, so stable across builds and machines.
pub fn key_partition(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0);
    let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    (hash % u64::from(partitions)) as u32
}

/// The Kafka header that carries each output record's id: `verity receive`
/// drops repeats by it.
pub const OUTPUT_ID_HEADER: &str = "verity-output-id";
