//! Connectors: sources and sinks as plug-ins. A source or sink is a trait
//! object, so a crate outside `core` (a future `verity-kafka`) can supply one;
//! the built-in ones (files, stdin/stdout, TCP, generator, memory, null) are
//! implementations like any other (`sources`, `sinks`), and `Connectors` maps
//! command-line arguments and URL schemes to them.
//!
//! # Sources
//!
//! A `SourceConnector` has one or more *partitions*: independent streams, each
//! with its own positions. `open(partition, at)` opens one partition at a
//! `Position` (`None`: its beginning) and returns a `SourceReader`, which yields
//! `Chunk`s — about `CHUNK_SIZE_BYTES` of whole records — each with the
//! partition's position *after* it. Reopening a partition at a chunk's
//! position yields exactly what followed that chunk. A source says whether
//! every process of a cluster can open it (`readable_on_every_process`): if so
//! and it has several partitions, the cluster runtime rebuilds the connector on
//! every process from its argument through `Connectors` and opens partition `p`
//! on process `p % P` (`streams`); otherwise process 0 opens every partition
//! and deals their chunks from there.
//!
//! The reader thread makes one virtual call per chunk (`next_chunk`), never one
//! per record; records are sliced out of the chunk's buffer by the shard that
//! parses it.
//!
//! # Sinks
//!
//! A `SinkConnector` is written by the output thread, one buffer of whole lines
//! per call. A sink that wants them (`wants_ids`) also gets, parallel to the
//! lines, the id of the input record behind each line (`MsgId`); shards then
//! collect one id per output line into a vector beside the buffer, and only
//! then. `barrier(c)` marks a commit boundary in the output stream and
//! `commit(upto)` says everything up to that boundary is final. Today a run
//! has one boundary, at the end of its input; checkpoints will add one per
//! checkpoint. Dead letters go through the same trait (`sink::DeadLetterWriter`
//! formats each letter as a line and writes it with the letter's id).
//!
//! # How later work builds on this (design notes, not built yet)
//!
//! * **Checkpoints and replay** (crash recovery). Every `SourceEvent::Chunk`
//!   carries its partition and position, so the shard applying a chunk's turn
//!   knows where the source stands once that chunk is applied: the chunk turns
//!   are the aligned barriers, and a checkpoint records per (source, partition)
//!   the position of the last applied chunk, with the dealer's chunk index. To
//!   recover, the runtime opens each partition at its recorded position and
//!   the dealer continues numbering from the recorded chunk index and line
//!   (`Position::Text` carries the line count, so ids stay those of the first
//!   run). Files, memory, the generator and the TCP source reopen at a
//!   position; stdin refuses with `SourceError::CannotRewind`. After each
//!   durable checkpoint the runtime is to call `SourceReader::commit` with
//!   its position, on the reader thread, so a replayable upstream may forget
//!   what came before.
//! * **The TCP edges** (built: `tcp_stream` holds both protocols). The TCP
//!   source speaks to `verity send`: the sender opens with a preamble, the
//!   source answers with the byte position it wants the stream from (its
//!   position, whole lines only), the sender sends its input from there in
//!   frames and ends with an explicit end marker; a connection that ends
//!   without it is a disconnect, and the source waits for the sender to
//!   reconnect and resume. The source acks bytes the sender may forget: with
//!   `TcpListenSource::acks_on_commit` (a run with checkpoints) those
//!   `commit` made durable, otherwise those handed to the runtime. A plain
//!   sender (no preamble: `nc`) is read to the end of its one connection and
//!   cannot be resumed. The TCP sink (`tcp_sink::TcpSink`) numbers its lines
//!   from `first_seq` in frames of whole lines, keeps them until `verity
//!   receive` acks them, and resends from the receiver's count after a
//!   reconnect; the receiver writes each sequence once. `Release::OnCommit`
//!   holds lines until `commit` (regenerated output after a recovery may
//!   differ in order across shards, so dedup by sequence is exact only for
//!   committed output); `Release::Immediately` is at-least-once.
//! * **Exactly-once file sink.** `write` appends as today; `barrier(c)` notes
//!   the file length at the boundary; `commit(c)` fsyncs the file and records
//!   that length as committed (in the checkpoint manifest, written atomically).
//!   Recovery opens the sink with the last complete checkpoint and truncates
//!   the uncommitted tail, which the replay regenerates; dead letters the same.
//! * **Kafka.** A `KafkaSource` has the topic's partitions; `open(p, at)`
//!   assigns partition `p` at `Position::Log { offset }` (or the start policy),
//!   and each chunk is a batch of polled messages with the offset after the
//!   last (built: records get their ids from (partition, offset), the chunk
//!   saying `RecordIds::Log` with its first offset). `partitions()` comes
//!   from topic metadata; each process opens the partitions it owns. A
//!   `KafkaSink` wants ids (for the output-id header), produces each buffer's
//!   lines inside a transaction, ends it at `barrier(c)` and commits it at
//!   `commit(c)` (or uses the idempotent producer with at-least-once
//!   delivery). It registers as the `kafka` scheme in `Connectors`.
//! * **Sinks written by every process** (`written_by_every_process`). The
//!   job names the sink's argument (`Job::member_sink`, as
//!   `Job::spread_sources` does a source's); each worker builds it through
//!   `Connectors`, opens it with its own `SinkContext` and drives it as a
//!   `member_sink::MemberSink`: its shards' lines go there, while parts,
//!   dead letters and `Finished` keep going to process 0. Once every local
//!   shard passed checkpoint `k`, the worker's sink takes `barrier(k)` and
//!   sends its `resume_mark` to process 0 (`Control::SinkMark`); process
//!   0's checkpoint of `k` completes only with every process's mark (kept
//!   per process in `JobMeta::member_marks`), is written manifest last, and
//!   its completion reaches the workers as `Control::Readers`, on which
//!   each worker's sink `commit`s. A recovery resumes each process's sink
//!   from its own mark. The protocol is built and simulated (`verity sim
//!   --sink txn-log-per-process`); the threaded runtime does not run it
//!   yet: process 0 still writes all output.

mod position;
mod registry;
pub mod sinks;
pub mod sources;
pub mod tcp_sink;
mod tcp_source;
pub mod tcp_stream;

pub use position::Position;
pub use registry::{ConnectorError, Connectors, SinkFactory, SourceFactory};
pub use verity_audit::record::{LOG_OFFSET_LIMIT, LOG_PARTITION_LIMIT};

use crate::ids::MsgId;
use crate::source::ChunkData;
use std::io;

/// Why a source cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The source cannot be reopened at a position (stdin; a plain TCP
    /// sender).
    #[error("source {source_name} ({kind}) cannot be reopened at {position}: it cannot rewind (yet)")]
    CannotRewind {
        source_name: String,
        kind: &'static str,
        position: Position,
    },
    /// The position is not one this source produces.
    #[error("source {source_name}: {position} is not a position of a {kind} source")]
    WrongPosition {
        source_name: String,
        kind: &'static str,
        position: Position,
    },
    /// The position lies past the end of the source.
    #[error("source {source_name}: {position} is past its end ({detail})")]
    PositionPastEnd {
        source_name: String,
        position: Position,
        detail: String,
    },
    #[error("source {source_name} has {partitions} partition(s); there is no partition {partition}")]
    NoSuchPartition {
        source_name: String,
        partitions: u32,
        partition: u32,
    },
    /// An error of a connector from another crate.
    #[error("{0}")]
    Connector(Box<dyn std::error::Error + Send + Sync>),
}

/// Why a sink cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// An error of a connector from another crate.
    #[error("{0}")]
    Connector(Box<dyn std::error::Error + Send + Sync>),
}

/// One chunk of whole records from one partition of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub data: ChunkData,
    /// Records in `data` (for text: its lines), counted once, by the reader.
    pub records: u64,
    /// The partition's position after this chunk: opening the partition there
    /// yields what follows it.
    pub position: Position,
    /// Where its records' ids come from.
    pub ids: RecordIds,
}

/// Where the ids of a chunk's records come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordIds {
    /// The run numbers them: line numbers running on across the stream
    /// (files, TCP, generators). A recovery resumes the numbering at its
    /// checkpoint's cut.
    Lines,
    /// The connector's own: the records sit at consecutive offsets of the
    /// chunk's partition from `first_offset` on (a Kafka partition; a
    /// reader ends a chunk where offsets skip). Each id is (partition,
    /// offset) (`MsgId::log_position`), so a record read again after a
    /// recovery carries the same id however the partitions' chunks
    /// interleave this time.
    Log { first_offset: u64 },
}

/// What a reader has next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pull {
    Chunk(Chunk),
    /// Nothing arrived for a while (about `source::STOP_POLL_INTERVAL`): a
    /// chance for the caller to look at its stop flag.
    Idle,
    /// The partition has no more records (a bounded source).
    End,
}

/// A source of records that the runtime reads on a reader thread.
pub trait SourceConnector: Send {
    /// What kind of source this is (`file`, `tcp`, …), for errors.
    fn kind(&self) -> &'static str;

    /// Its partitions (at least 1): independent streams, each with its own
    /// positions, each readable by any one process.
    fn partitions(&self) -> Result<u32, SourceError> {
        Ok(1)
    }

    /// Every process of a cluster can open this source from its name (the
    /// command-line argument, rebuilt through `Connectors` there) and read
    /// the same partitions: a broker's topic, a directory every process sees
    /// at the same path. The cluster then reads partition `p` on process
    /// `p % P`, so ingest does not funnel through process 0; otherwise (a
    /// listening socket, stdin, a local file) process 0 reads them all.
    fn readable_on_every_process(&self) -> bool {
        false
    }

    /// The run takes checkpoints and `SourceReader::commit`s what each one
    /// covers: a source that acknowledges its upstream (so the upstream may
    /// forget) acknowledges only that from now on, and the upstream replays
    /// the rest after a crash. Called before `open`.
    fn acknowledge_on_commit(&mut self) {}

    /// Opens `partition` to read from `at` (`None`: its beginning). Called
    /// before the run starts, so a missing file or a busy port fails early;
    /// `source_name` is the source's name for error messages.
    fn open(
        &mut self,
        source_name: &str,
        partition: u32,
        at: Option<Position>,
    ) -> Result<Box<dyn SourceReader>, SourceError>;
}

/// An opened partition, read on its own thread.
pub trait SourceReader: Send {
    /// The next chunk, `Idle` when nothing arrived for about
    /// `source::STOP_POLL_INTERVAL`, or `End`. Called once per chunk.
    fn next_chunk(&mut self) -> Result<Pull, SourceError>;

    /// Everything up to `upto` (a position this reader produced) is durably
    /// checkpointed: a replayable source may let its upstream forget it.
    fn commit(&mut self, upto: &Position) -> Result<(), SourceError> {
        let _ = upto;
        Ok(())
    }
}

/// Names a commit boundary in the output stream. Today a run has one, at the
/// end of its input (`CommitId::END_OF_INPUT`); checkpoints will number theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitId(pub u64);

impl CommitId {
    /// The boundary after the last output of a bounded run.
    pub const END_OF_INPUT: CommitId = CommitId(u64::MAX);
}

/// Where a sink is opened: which process of the cluster, in which job. A sink
/// written by every process (`SinkConnector::written_by_every_process`) is
/// opened once per process with its own context, so it can name what it
/// writes stably per process (a Kafka transactional id that fences the
/// previous incarnation of the same process, a file `out.p<N>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkContext {
    /// This process's index in the cluster (0 for a single process).
    pub process: u32,
    /// Processes in the cluster (1 for a single process).
    pub processes: u32,
    /// The job's fingerprint, the same on every process and in every life of
    /// a job that recovers (`checkpoint::Checkpointer::fingerprint`); empty
    /// when the run takes no checkpoints (it never resumes, so nothing it
    /// names need be stable).
    pub job_fingerprint: String,
}

impl SinkContext {
    /// The context of the only process of a run.
    pub fn single_process(job_fingerprint: &str) -> Self {
        SinkContext {
            process: 0,
            processes: 1,
            job_fingerprint: job_fingerprint.to_string(),
        }
    }
}

/// Where output lines (or dead letters) go, written by the output thread one
/// buffer at a time.
pub trait SinkConnector: Send {
    /// Whether `write` needs the id of each line's input record. Shards then
    /// collect one id per output line (16 bytes each), so say no unless used.
    fn wants_ids(&self) -> bool {
        false
    }

    /// A sink that throws output away: shards then format it but do not ship
    /// it to the output thread (dead letters still come).
    fn discards(&self) -> bool {
        false
    }

    /// In a cluster, every process may open this sink (from the job's sink
    /// spec, with its own `SinkContext`) and write its own shards' output
    /// into it directly, instead of relaying it to process 0; checkpoints
    /// stay coordinated by process 0 (each process's sink takes the
    /// checkpoint's `barrier` and reports its `resume_mark`, process 0
    /// writes the checkpoint, then every process's sink `commit`s; the
    /// protocol is `member_sink`). The threaded runtime does not act on it
    /// yet: process 0 writes all output (the module docs).
    fn written_by_every_process(&self) -> bool {
        false
    }

    /// One buffer of whole lines, each ending in `\n`. With `wants_ids`,
    /// `ids[i]` is the id of the input record behind line `i` (the default id
    /// for lines of `on_end`, which derive from a key's whole history);
    /// otherwise `ids` is empty.
    fn write(&mut self, lines: &[u8], ids: &[MsgId]) -> Result<(), SinkError>;

    /// Everything written before this call belongs to `commit`; what follows
    /// belongs to later ones. A transactional sink closes (prepares) the
    /// transaction here.
    fn barrier(&mut self, commit: CommitId) -> Result<(), SinkError> {
        let _ = commit;
        Ok(())
    }

    /// Everything up to the barrier of `upto` is final: make it durable and
    /// visible. After a crash, output past the last commit is regenerated, so
    /// a transactional sink drops it.
    fn commit(&mut self, upto: CommitId) -> Result<(), SinkError>;

    /// Right after `barrier`: what this sink needs to continue from that
    /// boundary after a crash (a file's length, a next sequence number),
    /// stored in the checkpoint. Everything before the boundary must be
    /// durable by now. Empty: the sink cannot resume, and output after its
    /// last commit may repeat after a recovery (stdout).
    fn resume_mark(&mut self) -> Result<Vec<u8>, SinkError> {
        Ok(Vec::new())
    }

    /// Continues from a mark a checkpoint stored (a recovery): whatever the
    /// earlier run wrote after it is dropped, as it will be written again.
    fn resume(&mut self, mark: &[u8]) -> Result<(), SinkError> {
        let _ = mark;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_source_and_what_to_do() {
        let e = SourceError::CannotRewind {
            source_name: "tcp:127.0.0.1:9".into(),
            kind: "tcp",
            position: Position::Text { bytes: 10, lines: 2 },
        };
        let text = e.to_string();
        assert!(
            text.contains("tcp:127.0.0.1:9") && text.contains("cannot rewind"),
            "{text}"
        );
        let e = SourceError::NoSuchPartition {
            source_name: "in".into(),
            partitions: 1,
            partition: 3,
        };
        assert!(e.to_string().contains("no partition 3"));
    }
}
