//! Reading one partition: where it opens, where a bounded run stops, how
//! records become a chunk of lines with the position after it, and what
//! becomes of a record that cannot be a line. Sans-IO over `PartitionLog`.
//!
//! A record's id is its (partition, offset) (`RecordIds::Log`), so a chunk
//! holds records of consecutive offsets only: where the log skips offsets
//! (transaction markers, aborted or compacted records) a chunk ends and the
//! records after the skip wait, already polled, to be the next one.

use crate::log::{LogError, PartitionLog, Watermarks};
use crate::url::StartAt;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::Write;
use verity_core::connector::{
    Chunk, Position, Pull, RecordIds, SourceError, SourceReader, LOG_OFFSET_LIMIT, LOG_PARTITION_LIMIT,
};
use verity_core::source::{ChunkData, CHUNK_SIZE_BYTES, LINE_SIZE_MAX_BYTES, STOP_POLL_INTERVAL};

/// A record that cannot be a line becomes this byte followed by a
/// description naming its topic, partition and offset: the byte is not
/// UTF-8, so every app dead-letters the line, and the dead letter names the
/// record.
pub const BAD_RECORD_MARK: u8 = 0xFF;

/// The offset a partition opens at. `at` is a checkpoint's position (a
/// recovery) and wins over `start`, which applies to a fresh run only.
pub fn open_offset(
    source_name: &str,
    start: StartAt,
    at: Option<Position>,
    marks: Watermarks,
) -> Result<u64, SourceError> {
    debug_assert!(marks.low <= marks.high, "{marks:?}");
    match at {
        Some(Position::Log { offset }) if offset > marks.high => Err(SourceError::PositionPastEnd {
            source_name: source_name.into(),
            position: Position::Log { offset },
            detail: format!("the partition ends at offset {}", marks.high),
        }),
        Some(Position::Log { offset }) if offset < marks.low => Err(SourceError::Connector(
            format!(
                "source {source_name}: the checkpoint resumes at offset {offset}, but the broker only keeps offsets from {} on (retention deleted the rest)",
                marks.low
            )
            .into(),
        )),
        Some(Position::Log { offset }) => Ok(offset),
        Some(position) => Err(SourceError::WrongPosition {
            source_name: source_name.into(),
            kind: "kafka",
            position,
        }),
        None => Ok(match start {
            StartAt::Earliest | StartAt::Checkpoint => marks.low,
            StartAt::Latest => marks.high,
        }),
    }
}

/// How long a reopen waits for the first record after its offset.
pub const REOPEN_PROBE_WAIT_MS: u64 = 1_000;
/// A reopen's first step back when a probe got nothing (offsets).
const REOPEN_STEP_MIN: u64 = 64;

/// Seeks so that the log hands out the record at `offset` (when there is
/// one) and what follows; `next_chunk` drops anything before `offset`.
///
/// A fetch from inside a producer's batch should hand out the rest of that
/// batch, and Kafka does; tansu 0.6 hands out the batches *after* it (it
/// looks batches up by base offset), losing the rest of the batch the
/// offset is in (or everything, in the partition's last batch). So a
/// reopen inside the partition looks at the first record it gets: past
/// `offset`, or none within `REOPEN_PROBE_WAIT_MS`, it steps back (as far
/// as the first record was ahead, then twice as far each time, not below
/// the oldest kept) until a fetch starts at or before `offset`. On Kafka that happens only where offsets skip
/// (transaction markers, aborted records, an open transaction ahead), and
/// costs a few fetches at open.
fn seek_exactly<L: PartitionLog>(log: &mut L, offset: u64, marks: Watermarks) -> Result<(), LogError> {
    let mut back = 0u64;
    loop {
        let from = offset.saturating_sub(back).max(marks.low);
        log.seek(from)?;
        if from == marks.low || offset >= marks.high {
            return Ok(());
        }
        let mut first = None;
        log.poll(REOPEN_PROBE_WAIT_MS, 1, &mut |at, _| {
            first.get_or_insert(at);
        })?;
        match first {
            // Read from `from` again, the probe's record included.
            Some(first) if first <= offset => return log.seek(from),
            // The batch holding `offset` ends before `first`; stepping back
            // as far again is a good first guess at where it begins.
            Some(first) => back = (back * 2).max(first - offset),
            None => back = (back * 2).max(REOPEN_STEP_MIN),
        }
    }
}

/// Where one partition is and how to describe its records.
pub struct PartitionReader<L: PartitionLog> {
    log: L,
    topic: String,
    partition: u32,
    /// The offset to poll from next (past `waiting`).
    next_offset: u64,
    /// `until=end`: the offset the partition ended at when it opened.
    end_offset: Option<u64>,
    group: Option<String>,
    /// Chunks handed out whose position was not committed to the group yet.
    read_through: u64,
    /// Polled records past a skip in offsets, each run the next chunk.
    waiting: VecDeque<Run>,
}

/// Records of consecutive offsets, as lines.
#[derive(Debug)]
struct Run {
    data: Bytes,
    first_offset: u64,
    records: u64,
    /// The position after it.
    next_offset: u64,
}

impl Run {
    fn into_pull(self) -> Pull {
        Pull::Chunk(Chunk {
            data: ChunkData::Lines(self.data),
            records: self.records,
            position: Position::Log {
                offset: self.next_offset,
            },
            ids: RecordIds::Log {
                first_offset: self.first_offset,
            },
        })
    }
}

impl<L: PartitionLog> PartitionReader<L> {
    /// Opens `partition` of `topic` at `open_offset`'s decision.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        mut log: L,
        source_name: &str,
        topic: &str,
        partition: u32,
        start: StartAt,
        at: Option<Position>,
        until_end: bool,
        group: Option<String>,
    ) -> Result<Self, SourceError> {
        if partition >= LOG_PARTITION_LIMIT {
            return Err(SourceError::Connector(
                format!(
                    "source {source_name}: partition {partition} is beyond the {LOG_PARTITION_LIMIT} partitions a record id tells apart"
                )
                .into(),
            ));
        }
        let marks = log.watermarks().map_err(connector_error)?;
        let next_offset = open_offset(source_name, start, at, marks)?;
        seek_exactly(&mut log, next_offset, marks).map_err(connector_error)?;
        Ok(PartitionReader {
            log,
            topic: topic.to_string(),
            partition,
            next_offset,
            end_offset: until_end.then_some(marks.high),
            group,
            read_through: next_offset,
            waiting: VecDeque::new(),
        })
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    fn ended(&self) -> bool {
        self.end_offset.is_some_and(|end| self.next_offset >= end)
    }
}

/// Appends one record as one line, or its description if it cannot be one.
fn append_record(chunk: &mut BytesMut, topic: &str, partition: u32, offset: u64, value: Option<&[u8]>) {
    let reason = match value {
        None => Some("no value (a tombstone)"),
        Some(v) if v.len() >= LINE_SIZE_MAX_BYTES => Some("longer than a line may be"),
        Some(v) if v.contains(&b'\n') => Some("holds a newline"),
        Some(v) if std::str::from_utf8(v).is_err() => Some("not UTF-8"),
        Some(_) => None,
    };
    match (reason, value) {
        (None, Some(v)) => chunk.extend_from_slice(v),
        (reason, _) => {
            let mut line = Vec::with_capacity(96);
            line.push(BAD_RECORD_MARK);
            let _ = write!(
                line,
                "kafka record topic {topic} partition {partition} offset {offset}: {}",
                reason.unwrap_or_default()
            );
            chunk.extend_from_slice(&line);
        }
    }
    chunk.extend_from_slice(b"\n");
}

impl<L: PartitionLog> SourceReader for PartitionReader<L> {
    fn next_chunk(&mut self) -> Result<Pull, SourceError> {
        if let Some(run) = self.waiting.pop_front() {
            return Ok(run.into_pull());
        }
        if self.ended() {
            return Ok(Pull::End);
        }
        let mut chunk = BytesMut::with_capacity(CHUNK_SIZE_BYTES + 1024);
        let mut records = 0u64;
        let mut last_taken: Option<u64> = None;
        // Where each run of consecutive offsets starts: (byte, offset,
        // records before it). One entry unless the log skipped offsets.
        let mut run_starts: Vec<(usize, u64, u64)> = Vec::with_capacity(1);
        let (topic, partition, end, from) = (&self.topic, self.partition, self.end_offset, self.next_offset);
        let wait_ms = STOP_POLL_INTERVAL.as_millis() as u64;
        let polled_to = self
            .log
            .poll(wait_ms, CHUNK_SIZE_BYTES, &mut |offset, value| {
                // A bounded run takes nothing at or past its end. What comes
                // before the position read from, or again (librdkafka, after
                // a reopen's re-seeks, was seen handing a partition's last
                // record out again and again from tansu), is dropped.
                let repeat = last_taken.is_some_and(|last| offset <= last);
                if offset < from || repeat || end.is_some_and(|end| offset >= end) {
                    return;
                }
                if last_taken.is_none_or(|last| offset != last + 1) {
                    run_starts.push((chunk.len(), offset, records));
                }
                append_record(&mut chunk, topic, partition, offset, value);
                records += 1;
                last_taken = Some(offset);
            })
            .map_err(connector_error)?;
        // The position after the chunk: past every record it holds, and past
        // what the log skipped, but never past a bounded run's end.
        let mut next = polled_to.max(last_taken.map_or(from, |o| o + 1));
        if let Some(end) = end {
            next = next.min(end.max(from));
        }
        debug_assert!(next >= from && last_taken.is_none_or(|o| o < next));
        self.next_offset = next;
        if let Some(last) = last_taken.filter(|last| *last >= LOG_OFFSET_LIMIT) {
            return Err(SourceError::Connector(
                format!(
                    "kafka topic {topic} partition {partition}: offset {last} is beyond the {LOG_OFFSET_LIMIT} offsets a record id holds"
                )
                .into(),
            ));
        }
        if records == 0 {
            return Ok(if self.ended() { Pull::End } else { Pull::Idle });
        }
        let data = chunk.freeze();
        for (i, &(start, first_offset, before)) in run_starts.iter().enumerate() {
            let (end_byte, after) = run_starts
                .get(i + 1)
                .map_or((data.len(), records), |&(byte, _, before)| (byte, before));
            let run_records = after - before;
            let last_of_poll = i + 1 == run_starts.len();
            self.waiting.push_back(Run {
                data: data.slice(start..end_byte),
                first_offset,
                records: run_records,
                next_offset: if last_of_poll {
                    next
                } else {
                    first_offset + run_records
                },
            });
        }
        let run = self.waiting.pop_front().expect("records make a run");
        Ok(run.into_pull())
    }

    fn commit(&mut self, upto: &Position) -> Result<(), SourceError> {
        let Position::Log { offset } = *upto else {
            return Err(SourceError::WrongPosition {
                source_name: format!("kafka topic {}", self.topic),
                kind: "kafka",
                position: *upto,
            });
        };
        assert!(
            offset >= self.read_through && offset <= self.next_offset,
            "a commit at offset {offset} outside what was read ({}..={})",
            self.read_through,
            self.next_offset
        );
        self.read_through = offset;
        if let Some(group) = &self.group {
            self.log.commit_group(group, offset).map_err(connector_error)?;
        }
        Ok(())
    }
}

pub(crate) fn connector_error(e: LogError) -> SourceError {
    SourceError::Connector(Box::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogProducer;
    use crate::sim_broker::SimBroker;

    fn marks(low: u64, high: u64) -> Watermarks {
        Watermarks { low, high }
    }

    #[test]
    fn a_checkpoint_position_wins_over_the_start_policy() {
        let at = Some(Position::Log { offset: 7 });
        for start in [StartAt::Earliest, StartAt::Latest, StartAt::Checkpoint] {
            assert_eq!(open_offset("s", start, at, marks(2, 10)).unwrap(), 7);
        }
        assert_eq!(
            open_offset("s", StartAt::Checkpoint, None, marks(2, 10)).unwrap(),
            2
        );
        assert_eq!(
            open_offset("s", StartAt::Earliest, None, marks(2, 10)).unwrap(),
            2
        );
        assert_eq!(open_offset("s", StartAt::Latest, None, marks(2, 10)).unwrap(), 10);
    }

    #[test]
    fn impossible_positions_are_errors() {
        let past = open_offset(
            "s",
            StartAt::Checkpoint,
            Some(Position::Log { offset: 11 }),
            marks(0, 10),
        );
        assert!(matches!(past, Err(SourceError::PositionPastEnd { .. })));
        let gone = open_offset(
            "s",
            StartAt::Checkpoint,
            Some(Position::Log { offset: 1 }),
            marks(2, 10),
        );
        assert!(gone.unwrap_err().to_string().contains("retention"));
        let text = open_offset("s", StartAt::Checkpoint, Some(Position::TEXT_START), marks(0, 1));
        assert!(matches!(text, Err(SourceError::WrongPosition { .. })));
    }

    fn lines_of(pull: Pull) -> (Vec<u8>, u64, Position) {
        let (data, records, position, _) = chunk_of(pull);
        (data, records, position)
    }

    /// A chunk's lines, records, position after it and first offset.
    fn chunk_of(pull: Pull) -> (Vec<u8>, u64, Position, u64) {
        match pull {
            Pull::Chunk(Chunk {
                data: ChunkData::Lines(data),
                records,
                position,
                ids: RecordIds::Log { first_offset },
            }) => (data.to_vec(), records, position, first_offset),
            other => panic!("expected a chunk of a log, got {other:?}"),
        }
    }

    #[test]
    fn a_chunk_holds_consecutive_offsets_and_ends_where_the_log_skips() {
        let broker = SimBroker::new();
        broker.create_topic("t", 1);
        broker.append("t", 0, b"", b"a");
        broker.append("t", 0, b"", b"b");
        // A committed transaction: its record, then its marker's offset (3).
        let mut producer = broker.producer("t", Some("txn"));
        producer.init_transactions().unwrap();
        producer.begin_transaction().unwrap();
        producer.produce(b"", b"c", b"").unwrap();
        producer.commit_transaction(1).unwrap();
        // An aborted one: its record (4) and marker (5) are skipped.
        producer.begin_transaction().unwrap();
        producer.produce(b"", b"gone", b"").unwrap();
        producer.flush().unwrap();
        producer.abort_transaction().unwrap();
        broker.append("t", 0, b"", b"d");
        broker.append("t", 0, b"", b"e");
        let log = broker.partition_log("t", 0);
        let mut reader =
            PartitionReader::open(log, "s", "t", 0, StartAt::Earliest, None, true, None).unwrap();
        let first = chunk_of(reader.next_chunk().unwrap());
        assert_eq!(first, (b"a\nb\nc\n".to_vec(), 3, Position::Log { offset: 3 }, 0));
        let second = chunk_of(reader.next_chunk().unwrap());
        assert_eq!(second, (b"d\ne\n".to_vec(), 2, Position::Log { offset: 8 }, 6));
        assert_eq!(reader.next_chunk().unwrap(), Pull::End);

        // Reopened at the first chunk's position: the skip, then the rest.
        let log = broker.partition_log("t", 0);
        let at = Some(Position::Log { offset: 3 });
        let mut reader = PartitionReader::open(log, "s", "t", 0, StartAt::Earliest, at, true, None).unwrap();
        assert_eq!(chunk_of(reader.next_chunk().unwrap()), second);
    }

    #[test]
    fn chunks_carry_the_offset_after_them_and_a_bounded_run_ends() {
        let broker = SimBroker::new();
        broker.create_topic("t", 2);
        for v in ["a", "b", "c"] {
            broker.append("t", 1, b"k", v.as_bytes());
        }
        let log = broker.partition_log("t", 1);
        let mut reader =
            PartitionReader::open(log, "s", "t", 1, StartAt::Checkpoint, None, true, None).unwrap();
        let (data, records, position) = lines_of(reader.next_chunk().unwrap());
        assert_eq!((data.as_slice(), records), (&b"a\nb\nc\n"[..], 3));
        assert_eq!(position, Position::Log { offset: 3 });
        broker.append("t", 1, b"k", b"late");
        assert_eq!(
            reader.next_chunk().unwrap(),
            Pull::End,
            "past the end seen at open"
        );

        // Reopened at the middle: exactly what followed.
        let log = broker.partition_log("t", 1);
        let at = Some(Position::Log { offset: 2 });
        let mut reader = PartitionReader::open(log, "s", "t", 1, StartAt::Earliest, at, false, None).unwrap();
        let (data, _, position) = lines_of(reader.next_chunk().unwrap());
        assert_eq!(
            (data.as_slice(), position),
            (&b"c\nlate\n"[..], Position::Log { offset: 4 })
        );
        assert_eq!(
            reader.next_chunk().unwrap(),
            Pull::Idle,
            "unbounded: waits for more"
        );
    }

    #[test]
    fn a_reopen_inside_a_producer_batch_reads_exactly_from_its_offset() {
        let broker = SimBroker::new();
        broker.create_topic("t", 1);
        for i in 0..40 {
            broker.append("t", 0, b"", i.to_string().as_bytes());
        }
        broker.fetch_skips_into_batches(16);
        for at in [0, 5, 16, 17, 39, 40] {
            let log = broker.partition_log("t", 0);
            let at_position = Some(Position::Log { offset: at });
            let mut reader =
                PartitionReader::open(log, "s", "t", 0, StartAt::Earliest, at_position, true, None).unwrap();
            let mut lines = Vec::new();
            let mut first = None;
            while let Pull::Chunk(chunk) = reader.next_chunk().unwrap() {
                let (data, _, _, first_offset) = chunk_of(Pull::Chunk(chunk));
                first.get_or_insert(first_offset);
                lines.extend(data);
            }
            let expected: Vec<u8> = (at..40).flat_map(|i| format!("{i}\n").into_bytes()).collect();
            assert_eq!(
                String::from_utf8(lines).unwrap(),
                String::from_utf8(expected).unwrap(),
                "at {at}"
            );
            assert_eq!(first, (at < 40).then_some(at), "at {at}");
        }
    }

    #[test]
    fn records_that_cannot_be_lines_name_their_topic_partition_and_offset() {
        let broker = SimBroker::new();
        broker.create_topic("t", 1);
        broker.append("t", 0, b"", b"ok");
        broker.append("t", 0, b"", b"\xc3\x28");
        broker.append("t", 0, b"", b"two\nlines");
        let log = broker.partition_log("t", 0);
        let mut reader =
            PartitionReader::open(log, "s", "t", 0, StartAt::Earliest, None, true, None).unwrap();
        let (data, records, _) = lines_of(reader.next_chunk().unwrap());
        assert_eq!(records, 3);
        let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
        assert_eq!(lines[0], b"ok");
        assert_eq!(lines[1][0], BAD_RECORD_MARK);
        let described = String::from_utf8_lossy(&lines[1][1..]).into_owned();
        assert_eq!(described, "kafka record topic t partition 0 offset 1: not UTF-8");
        assert!(String::from_utf8_lossy(lines[2]).contains("offset 2: holds a newline"));
    }

    #[test]
    fn commits_reach_the_group() {
        let broker = SimBroker::new();
        broker.create_topic("t", 1);
        broker.append("t", 0, b"", b"x");
        let log = broker.partition_log("t", 0);
        let mut reader =
            PartitionReader::open(log, "s", "t", 0, StartAt::Earliest, None, false, Some("g".into()))
                .unwrap();
        let (_, _, position) = lines_of(reader.next_chunk().unwrap());
        reader.commit(&position).unwrap();
        assert_eq!(broker.group_offset("g", "t", 0), Some(1));
    }
}
