//! A source and a sink implemented outside `core`, as a connector crate would:
//! a partitioned log-like source positioned by offsets, and sinks that record
//! lines with their ids and the commit calls. A dataflow runs through them on
//! the threaded runtime.

use bytes::Bytes;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use verity_core::connector::{Chunk, Pull, RecordIds};
use verity_core::source::ChunkData;
use verity_core::{
    run, CommitId, CustomSink, Dataflow, DeadLetterSpec, Line, MsgId, Outputs, Position, Reject, RunConfig,
    SinkConnector, SinkError, SinkSpec, SourceConnector, SourceError, SourceReader, SourceSpec, Stream,
};

/// Records per chunk of the test source (small, so a run has many chunks).
const RECORDS_PER_CHUNK: u64 = 50;

/// A log of numbered records per partition; record `o` of partition `p` is
/// the line `p*100000 + o` (or `bad` where the test plants one).
#[derive(Clone)]
struct NumberLog {
    records_per_partition: Vec<u64>,
    /// (partition, offset) of a record that does not parse.
    bad: Option<(u32, u64)>,
}

impl NumberLog {
    fn line(&self, partition: u32, offset: u64) -> String {
        if self.bad == Some((partition, offset)) {
            "bad".into()
        } else {
            (u64::from(partition) * 100_000 + offset).to_string()
        }
    }
}

struct NumberLogReader {
    log: NumberLog,
    partition: u32,
    next_offset: u64,
}

impl SourceConnector for NumberLog {
    fn kind(&self) -> &'static str {
        "number-log"
    }

    fn partitions(&self) -> Result<u32, SourceError> {
        Ok(self.records_per_partition.len() as u32)
    }

    fn open(
        &mut self,
        source_name: &str,
        partition: u32,
        at: Option<Position>,
    ) -> Result<Box<dyn SourceReader>, SourceError> {
        let partitions = self.records_per_partition.len() as u32;
        if partition >= partitions {
            return Err(SourceError::NoSuchPartition {
                source_name: source_name.into(),
                partitions,
                partition,
            });
        }
        let next_offset = match at {
            None => 0,
            Some(Position::Log { offset }) => offset,
            Some(position) => {
                return Err(SourceError::WrongPosition {
                    source_name: source_name.into(),
                    kind: self.kind(),
                    position,
                })
            }
        };
        Ok(Box::new(NumberLogReader {
            log: self.clone(),
            partition,
            next_offset,
        }))
    }
}

impl SourceReader for NumberLogReader {
    fn next_chunk(&mut self) -> Result<Pull, SourceError> {
        let end = self.log.records_per_partition[self.partition as usize];
        if self.next_offset >= end {
            return Ok(Pull::End);
        }
        let last = (self.next_offset + RECORDS_PER_CHUNK).min(end);
        let mut lines = Vec::new();
        for offset in self.next_offset..last {
            writeln!(lines, "{}", self.log.line(self.partition, offset)).expect("writes to a Vec");
        }
        let (first_offset, records) = (self.next_offset, last - self.next_offset);
        self.next_offset = last;
        Ok(Pull::Chunk(Chunk {
            data: ChunkData::Lines(Bytes::from(lines)),
            records,
            position: Position::Log { offset: last },
            ids: RecordIds::Log { first_offset },
        }))
    }
}

/// What a recording sink saw.
#[derive(Debug, Default)]
struct Seen {
    lines: Vec<u8>,
    ids: Vec<MsgId>,
    writes: u64,
    calls: Vec<String>,
}

#[derive(Clone)]
struct Recording {
    seen: Arc<Mutex<Seen>>,
    wants_ids: bool,
}

impl Recording {
    fn new(wants_ids: bool) -> Self {
        Recording {
            seen: Arc::default(),
            wants_ids,
        }
    }

    fn spec(&self) -> CustomSink {
        let sink = self.clone();
        CustomSink::new("recording", move |_context| {
            Ok(Box::new(sink.clone()) as Box<dyn SinkConnector>)
        })
    }
}

impl SinkConnector for Recording {
    fn wants_ids(&self) -> bool {
        self.wants_ids
    }

    fn write(&mut self, lines: &[u8], ids: &[MsgId]) -> Result<(), SinkError> {
        let mut seen = self.seen.lock().expect("no panics holding it");
        let calls_after_end = seen.calls.iter().any(|c| c.starts_with("barrier"));
        assert!(!calls_after_end, "a write after the end-of-input barrier");
        seen.lines.extend_from_slice(lines);
        seen.ids.extend_from_slice(ids);
        seen.writes += 1;
        Ok(())
    }

    fn barrier(&mut self, commit: CommitId) -> Result<(), SinkError> {
        self.seen
            .lock()
            .expect("no panics")
            .calls
            .push(format!("barrier {commit:?}"));
        Ok(())
    }

    fn commit(&mut self, upto: CommitId) -> Result<(), SinkError> {
        self.seen
            .lock()
            .expect("no panics")
            .calls
            .push(format!("commit {upto:?}"));
        Ok(())
    }
}

/// Doubles each number; each output line names the id of its input, so the
/// test can check the sink's ids line by line.
fn doubled_with_ids(source: SourceSpec) -> Dataflow<u64, u64, (), (MsgId, u64)> {
    Stream::from_source(source)
        .try_map(|line: Line| {
            let text = line.text()?;
            text.parse::<u64>().map_err(|_| Reject::new("not a number"))
        })
        .key_by(|value| *value)
        .stateful(|_: &mut (), _, msg, out| {
            let id = out.input_id();
            out.emit((id, msg.data * 2))
        })
        .sink(|(id, value), buf| write!(buf, "{id} {value}").expect("writes to a Vec"))
}

fn run_through(
    log: NumberLog,
    workers: usize,
    sink: &Recording,
    dead: &Recording,
) -> verity_core::RunSummary {
    let flow = doubled_with_ids(SourceSpec::from_connector("numbers", Box::new(log)));
    let config = RunConfig {
        workers,
        pin_cores: false,
        progress: false,
        ..RunConfig::default()
    };
    let outputs = Outputs {
        sink: SinkSpec::Custom(sink.spec()),
        dead_letter: DeadLetterSpec::Custom(dead.spec()),
    };
    run(flow, &config, &outputs, Arc::new(AtomicBool::new(false))).expect("the run succeeds")
}

#[test]
fn a_dataflow_runs_through_a_custom_partitioned_source_and_sinks() {
    let log = NumberLog {
        records_per_partition: vec![1_000, 730, 5],
        bad: Some((1, 17)),
    };
    let (sink, dead) = (Recording::new(true), Recording::new(true));
    let summary = run_through(log.clone(), 3, &sink, &dead);
    let total: u64 = log.records_per_partition.iter().sum();
    assert_eq!(
        (summary.records_in, summary.records_out, summary.dead_lettered),
        (total, total - 1, 1)
    );

    let seen = sink.seen.lock().unwrap();
    let text = std::str::from_utf8(&seen.lines).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(seen.ids.len(), lines.len(), "one id per line");
    assert!(
        seen.writes < lines.len() as u64 / 10,
        "the sink is written buffers, not lines"
    );
    for (line, id) in lines.iter().zip(&seen.ids) {
        let (named, _) = line.split_once(' ').unwrap();
        assert_eq!(named, id.to_string(), "the id beside line {line:?}");
    }
    // Every record of every partition came through exactly once, doubled.
    let mut values: Vec<u64> = lines
        .iter()
        .map(|l| l.split_once(' ').unwrap().1.parse().unwrap())
        .collect();
    values.sort_unstable();
    let mut expected: Vec<u64> = (0..3u32)
        .flat_map(|p| (0..log.records_per_partition[p as usize]).map(move |o| (p, o)))
        .filter(|r| Some(*r) != log.bad)
        .map(|(p, o)| 2 * (u64::from(p) * 100_000 + o))
        .collect();
    expected.sort_unstable();
    assert_eq!(values, expected);
    // The source's ids are its records' (partition, offset): each line's
    // value is the one at its id's place in the log.
    for (line, id) in lines.iter().zip(&seen.ids) {
        let (partition, offset) = id.log_position().expect("a log's id");
        let value: u64 = line.split_once(' ').unwrap().1.parse().unwrap();
        assert_eq!(value, 2 * (u64::from(partition) * 100_000 + offset), "{line}");
    }
    let dead_seen = dead.seen.lock().unwrap();
    assert_eq!(dead_seen.ids.len(), 1);
    assert_eq!(dead_seen.ids[0].log_position(), log.bad);
    let letter = std::str::from_utf8(&dead_seen.lines).unwrap();
    assert_eq!(letter, "numbers: partition 1 offset 17: not a number: \"bad\"\n");

    let end = CommitId::END_OF_INPUT;
    for calls in [&seen.calls, &dead_seen.calls] {
        assert_eq!(*calls, [format!("barrier {end:?}"), format!("commit {end:?}")]);
    }
}

#[test]
fn a_sink_that_wants_no_ids_gets_none() {
    let log = NumberLog {
        records_per_partition: vec![300],
        bad: None,
    };
    let (sink, dead) = (Recording::new(false), Recording::new(false));
    let summary = run_through(log, 2, &sink, &dead);
    let seen = sink.seen.lock().unwrap();
    assert_eq!(summary.records_out, 300);
    assert_eq!(seen.lines.iter().filter(|b| **b == b'\n').count(), 300);
    assert!(seen.ids.is_empty());
}

#[test]
fn a_custom_source_reopens_at_a_chunk_position() {
    let mut log = NumberLog {
        records_per_partition: vec![0, 120],
        bad: None,
    };
    let mut reader = log.open("numbers", 1, None).unwrap();
    let Ok(Pull::Chunk(first)) = reader.next_chunk() else {
        panic!("a first chunk")
    };
    let mut rest = log.open("numbers", 1, Some(first.position)).unwrap();
    let Ok(Pull::Chunk(second)) = rest.next_chunk() else {
        panic!("a second chunk")
    };
    let ChunkData::Lines(lines) = second.data else {
        panic!("lines")
    };
    assert_eq!(lines.split(|b| *b == b'\n').next(), Some(&b"100050"[..]));
    assert!(matches!(
        log.open("numbers", 2, None).err(),
        Some(SourceError::NoSuchPartition { partition: 2, .. })
    ));
}
