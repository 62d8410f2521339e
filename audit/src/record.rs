//! The audit records. Each says what happened, where and when, in enough
//! detail to answer "how did we get here?" for any output and to re-create
//! the run: the non-derivable values (clock readings, the external state a
//! decision read, the interleaving of streams) and the lineage and hops of
//! every record, all per batch so the cost per event stays a few bytes.
//!
//! Times are microseconds since the Unix epoch (UTC), from the process's
//! injected clock; `RunStart::clock_source` says how that clock reads time.

use crate::codec::{put_bytes, put_str, put_u8, put_varint, DecodeError, Reader};
use std::fmt;

/// A record's identity as it entered the system: which producer (source)
/// made it, its sequence there (a text source's 1-based line number, or a
/// log record's place: `log_seq`), and which of the records derived from
/// that input it is (`part`). The same triple as the engine's message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id {
    pub producer: u32,
    pub part: u32,
    pub seq: u64,
}

/// Set in the `seq` of a record whose id is its place in a partitioned log
/// (a Kafka partition and offset) rather than a line number, which never
/// comes near it. Such an id is the same whichever run reads the record and
/// however its partitions' chunks interleave, so a repeat after a recovery
/// carries the id of the first delivery.
const LOG_SEQ_BIT: u64 = 1 << 63;
/// Bits of a log seq that hold the offset; the partition sits above them.
const LOG_OFFSET_BITS: u32 = 48;
/// Offsets a log id holds: 2^48, about 89 years of 100,000 records a second
/// into one partition.
pub const LOG_OFFSET_LIMIT: u64 = 1 << LOG_OFFSET_BITS;
/// Partitions a log id tells apart (15 bits).
pub const LOG_PARTITION_LIMIT: u32 = 1 << (63 - LOG_OFFSET_BITS);

/// The `seq` of the record at `offset` of `partition` of a log. The seqs of
/// a partition's consecutive offsets are consecutive.
pub fn log_seq(partition: u32, offset: u64) -> u64 {
    assert!(
        partition < LOG_PARTITION_LIMIT && offset < LOG_OFFSET_LIMIT,
        "log position partition {partition} offset {offset} beyond what an id holds"
    );
    LOG_SEQ_BIT | (u64::from(partition) << LOG_OFFSET_BITS) | offset
}

/// The (partition, offset) a `log_seq` encodes; `None` for a line number.
pub fn log_position(seq: u64) -> Option<(u32, u64)> {
    (seq & LOG_SEQ_BIT != 0).then(|| {
        let partition = ((seq & !LOG_SEQ_BIT) >> LOG_OFFSET_BITS) as u32;
        (partition, seq & (LOG_OFFSET_LIMIT - 1))
    })
}

impl Id {
    /// The (partition, offset) of a record read from a log.
    pub fn log_position(&self) -> Option<(u32, u64)> {
        log_position(self.seq)
    }
}

impl fmt::Display for Id {
    /// `PRODUCER:LINE.PART`, or `PRODUCER:pPARTITION@OFFSET.PART` for a
    /// record of a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.log_position() {
            Some((partition, offset)) => {
                write!(f, "{}:p{partition}@{offset}.{}", self.producer, self.part)
            }
            None => write!(f, "{}:{}.{}", self.producer, self.seq, self.part),
        }
    }
}

#[inline]
fn put_id(out: &mut Vec<u8>, id: Id) {
    put_varint(out, id.producer as u64);
    put_varint(out, id.seq);
    put_varint(out, id.part as u64);
}

fn read_id(input: &mut Reader<'_>) -> Result<Id, DecodeError> {
    Ok(Id {
        producer: input.varint_u32()?,
        seq: input.varint()?,
        part: input.varint_u32()?,
    })
}

/// The largest gap a delta-coded id carries in one varint.
const ID_GAP_MAX: u64 = 1 << 62;

/// An id in a run of ids (a batch's lineage or notes): one varint, `gap << 1`,
/// when it follows `prev` in the same producer with part 0 (nearly always),
/// else a marker and the whole id.
#[inline]
fn put_next_id(out: &mut Vec<u8>, prev: &mut Id, id: Id) {
    let gap = id.seq.wrapping_sub(prev.seq);
    if id.producer == prev.producer && id.part == 0 && id.seq >= prev.seq && gap < ID_GAP_MAX {
        put_varint(out, gap << 1);
    } else {
        put_varint(out, 1);
        put_id(out, id);
    }
    *prev = id;
}

fn read_next_id(input: &mut Reader<'_>, prev: &mut Id) -> Result<Id, DecodeError> {
    let head = input.varint()?;
    let id = match head {
        1 => read_id(input)?,
        _ if head & 1 == 0 => Id {
            producer: prev.producer,
            part: 0,
            seq: prev
                .seq
                .checked_add(head >> 1)
                .ok_or(DecodeError::Invalid("id gap"))?,
        },
        _ => return Err(DecodeError::Invalid("id marker")),
    };
    *prev = id;
    Ok(id)
}

/// Notes built in place on the hot path (no `Notes` value, no allocation
/// per note): `put_note` each into an entries buffer (`prev` is the id of
/// the entry before, `Id::default()` for the first), then `push_notes`.
#[inline]
pub fn put_note(entries: &mut Vec<u8>, prev: &mut Id, id: Id, note: &[u8]) {
    put_next_id(entries, prev, id);
    put_bytes(entries, note);
}

/// Appends a `Notes` record of `count` entries made by `put_note` to a
/// producer's buffer (as `writer::push_record` would).
pub fn push_notes(buffer: &mut Vec<u8>, shard: u32, count: u64, entries: &[u8]) {
    let at = buffer.len();
    buffer.extend_from_slice(&[0; 4]);
    put_u8(buffer, kind::NOTES);
    put_varint(buffer, shard as u64);
    put_varint(buffer, count);
    buffer.extend_from_slice(entries);
    let len = (buffer.len() - at - 4) as u32;
    buffer[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Where in its stream a chunk ended: a text stream's bytes and lines
/// consumed (for TCP the byte count is the sender's stream sequence), or a
/// log's next offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPosition {
    Text { bytes: u64, lines: u64 },
    Log { offset: u64 },
}

impl fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamPosition::Text { bytes, lines } => write!(f, "byte {bytes} (line {lines})"),
            StreamPosition::Log { offset } => write!(f, "offset {offset}"),
        }
    }
}

/// Who started the run, how, and with which build: one per process life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStart {
    pub utc_us: u64,
    pub process: u32,
    /// Drawn at each process start (the cluster's handshake carries it).
    pub incarnation: u64,
    pub version: String,
    /// How the clock reads time, e.g. "system realtime at start + monotonic".
    pub clock_source: String,
    pub user: String,
    pub host: String,
    /// The command line, program name first.
    pub args: Vec<String>,
    /// The cluster's shards in all, and this process's: `first_shard..first_shard + shards`.
    pub shards_total: u32,
    pub first_shard: u32,
    pub shards: u32,
    /// Records per batch between shards (a replay must split as the run did).
    pub batch_max: u32,
}

/// A chunk of input taken in by a reader: the ids of its records
/// (`first_line..first_line + lines` of `source`: line numbers, or a log's
/// consecutive `log_seq`s) and where it lay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputChunk {
    pub utc_us: u64,
    pub source: u32,
    pub partition: u32,
    pub chunk: u64,
    pub first_line: u64,
    pub lines: u64,
    pub bytes: u64,
    /// The partition's position after the chunk (its start is the position
    /// after the partition's previous chunk).
    pub position_after: StreamPosition,
}

impl InputChunk {
    /// The line after its last (values from a log are not trusted to add up).
    pub fn end_line(&self) -> u64 {
        self.first_line.saturating_add(self.lines)
    }

    /// Whether record `seq` of source `source` came in with this chunk.
    pub fn holds(&self, source: u32, seq: u64) -> bool {
        self.source == source && (self.first_line..self.end_line()).contains(&seq)
    }
}

/// A shard applied one batch of a source's records: the unit of the
/// interleaving of streams, and the receiving end of a hop. `clock_us` is
/// the clock reading the step's logic saw for the batch, if it read one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub utc_us: u64,
    pub shard: u32,
    pub source: u32,
    /// The shard that parsed the chunk (the batch crossed from it; itself
    /// for its own chunks).
    pub from: u32,
    pub chunk: u64,
    /// The channel (source, from → shard) sequence of the first record.
    pub first_seq: u64,
    /// Records applied (replays dropped by dedup not counted).
    pub records: u64,
    pub clock_us: Option<u64>,
}

/// A shard sent one batch of a chunk's records to another: the sending end
/// of a hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub utc_us: u64,
    pub shard: u32,
    pub to: u32,
    pub source: u32,
    pub chunk: u64,
    pub first_seq: u64,
    pub records: u64,
}

/// What the step's logic read or decided that the input does not hold, per
/// input record, in the app's own encoding (the app renders it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notes {
    pub shard: u32,
    pub notes: Vec<(Id, Vec<u8>)>,
}

/// A batch of output lines written to the sink: their line numbers in the
/// output (from 1), the input id behind each, and a checksum of the bytes
/// (so a replay can prove it wrote the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub utc_us: u64,
    pub shard: u32,
    pub first_line: u64,
    pub lines: u64,
    pub bytes: u64,
    pub crc32c: u32,
    /// One per line, or none where the shard did not send them (a remote
    /// shard's output, so far).
    pub ids: Vec<Id>,
}

impl Output {
    /// The output line after its last.
    pub fn end_line(&self) -> u64 {
        self.first_line.saturating_add(self.lines)
    }
}

/// A record that failed: its id, why, and the start of its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub utc_us: u64,
    pub id: Id,
    pub reason: String,
    pub raw: Vec<u8>,
}

/// An input record the keyed step failed on, with the key and the key's
/// state as the step left them (each in the app's `Wire` encoding): the step
/// said so (`Output::fail`: a bad value, an overflow; the record is
/// dead-lettered and the run goes on), or it panicked (the run fails).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailed {
    pub utc_us: u64,
    pub shard: u32,
    pub id: Id,
    pub panicked: bool,
    pub reason: String,
    pub key: Vec<u8>,
    pub state: Vec<u8>,
}

/// A shard fired the keyed step's processing-time timers that were due
/// at `utc_us`, its clock reading (the unit's only one, which every
/// handler saw): `fired` of them, in firing order. Notes of the unit
/// follow, as after an applied batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimersFired {
    pub utc_us: u64,
    pub shard: u32,
    pub fired: u64,
}

/// A checkpoint became durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub utc_us: u64,
    pub checkpoint: u64,
    pub store_id: u64,
    pub bytes: u64,
    pub duration_us: u64,
}

/// The run continued from a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    pub utc_us: u64,
    pub checkpoint: u64,
    pub store_id: u64,
}

/// How a process life ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnd {
    pub utc_us: u64,
    pub outcome: String,
    pub records_in: u64,
    pub records_out: u64,
    pub dead_lettered: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    RunStart(RunStart),
    InputChunk(InputChunk),
    Applied(Applied),
    Sent(Sent),
    Notes(Notes),
    Output(Output),
    Failed(Failed),
    Checkpoint(Checkpoint),
    Recovery(Recovery),
    RunEnd(RunEnd),
    StepFailed(StepFailed),
    TimersFired(TimersFired),
}

/// Kind bytes: a record's first byte. Never reuse one.
mod kind {
    pub const RUN_START: u8 = 1;
    pub const INPUT_CHUNK: u8 = 2;
    pub const APPLIED: u8 = 3;
    pub const SENT: u8 = 4;
    pub const NOTES: u8 = 5;
    pub const OUTPUT: u8 = 6;
    pub const FAILED: u8 = 7;
    pub const CHECKPOINT: u8 = 8;
    pub const RECOVERY: u8 = 9;
    pub const RUN_END: u8 = 10;
    pub const STEP_FAILED: u8 = 11;
    pub const TIMERS_FIRED: u8 = 12;
}

/// The record kinds by name, in kind order (for summaries).
pub const KIND_NAMES: [&str; 12] = [
    "run-start",
    "input-chunk",
    "applied",
    "sent",
    "notes",
    "output",
    "failed",
    "checkpoint",
    "recovery",
    "run-end",
    "step-failed",
    "timers-fired",
];

impl Record {
    /// Its kind's name (`KIND_NAMES`).
    pub fn kind_name(&self) -> &'static str {
        KIND_NAMES[self.kind() as usize - 1]
    }

    fn kind(&self) -> u8 {
        match self {
            Record::RunStart(_) => kind::RUN_START,
            Record::InputChunk(_) => kind::INPUT_CHUNK,
            Record::Applied(_) => kind::APPLIED,
            Record::Sent(_) => kind::SENT,
            Record::Notes(_) => kind::NOTES,
            Record::Output(_) => kind::OUTPUT,
            Record::Failed(_) => kind::FAILED,
            Record::Checkpoint(_) => kind::CHECKPOINT,
            Record::Recovery(_) => kind::RECOVERY,
            Record::RunEnd(_) => kind::RUN_END,
            Record::StepFailed(_) => kind::STEP_FAILED,
            Record::TimersFired(_) => kind::TIMERS_FIRED,
        }
    }

    /// When it happened, if the record says (notes take their batch's time).
    pub fn utc_us(&self) -> Option<u64> {
        match self {
            Record::RunStart(r) => Some(r.utc_us),
            Record::InputChunk(r) => Some(r.utc_us),
            Record::Applied(r) => Some(r.utc_us),
            Record::Sent(r) => Some(r.utc_us),
            Record::Notes(_) => None,
            Record::Output(r) => Some(r.utc_us),
            Record::Failed(r) => Some(r.utc_us),
            Record::Checkpoint(r) => Some(r.utc_us),
            Record::Recovery(r) => Some(r.utc_us),
            Record::RunEnd(r) => Some(r.utc_us),
            Record::StepFailed(r) => Some(r.utc_us),
            Record::TimersFired(r) => Some(r.utc_us),
        }
    }

    /// Appends the record's body (kind first, no framing).
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u8(out, self.kind());
        match self {
            Record::RunStart(r) => {
                put_varint(out, r.utc_us);
                put_varint(out, r.process as u64);
                put_varint(out, r.incarnation);
                put_str(out, &r.version);
                put_str(out, &r.clock_source);
                put_str(out, &r.user);
                put_str(out, &r.host);
                put_varint(out, r.args.len() as u64);
                for arg in &r.args {
                    put_str(out, arg);
                }
                for field in [r.shards_total, r.first_shard, r.shards, r.batch_max] {
                    put_varint(out, field as u64);
                }
            }
            Record::InputChunk(r) => {
                for field in [
                    r.utc_us,
                    r.source as u64,
                    r.partition as u64,
                    r.chunk,
                    r.first_line,
                    r.lines,
                    r.bytes,
                ] {
                    put_varint(out, field);
                }
                match r.position_after {
                    StreamPosition::Text { bytes, lines } => {
                        put_u8(out, 1);
                        put_varint(out, bytes);
                        put_varint(out, lines);
                    }
                    StreamPosition::Log { offset } => {
                        put_u8(out, 2);
                        put_varint(out, offset);
                    }
                }
            }
            Record::Applied(r) => {
                for field in [
                    r.utc_us,
                    r.shard as u64,
                    r.source as u64,
                    r.from as u64,
                    r.chunk,
                    r.first_seq,
                    r.records,
                ] {
                    put_varint(out, field);
                }
                match r.clock_us {
                    None => put_u8(out, 0),
                    Some(clock_us) => {
                        put_u8(out, 1);
                        put_varint(out, clock_us);
                    }
                }
            }
            Record::Sent(r) => {
                for field in [
                    r.utc_us,
                    r.shard as u64,
                    r.to as u64,
                    r.source as u64,
                    r.chunk,
                    r.first_seq,
                    r.records,
                ] {
                    put_varint(out, field);
                }
            }
            Record::Notes(r) => {
                put_varint(out, r.shard as u64);
                put_varint(out, r.notes.len() as u64);
                let mut prev = Id::default();
                for (id, note) in &r.notes {
                    put_note(out, &mut prev, *id, note);
                }
            }
            Record::Output(r) => {
                put_varint(out, r.utc_us);
                put_varint(out, r.shard as u64);
                put_varint(out, r.first_line);
                put_varint(out, r.lines);
                put_varint(out, r.bytes);
                out.extend_from_slice(&r.crc32c.to_le_bytes());
                put_varint(out, r.ids.len() as u64);
                let mut prev = Id::default();
                for id in &r.ids {
                    put_next_id(out, &mut prev, *id);
                }
            }
            Record::Failed(r) => {
                put_varint(out, r.utc_us);
                put_id(out, r.id);
                put_str(out, &r.reason);
                put_bytes(out, &r.raw);
            }
            Record::StepFailed(r) => {
                put_varint(out, r.utc_us);
                put_varint(out, r.shard as u64);
                put_id(out, r.id);
                put_u8(out, r.panicked as u8);
                put_str(out, &r.reason);
                put_bytes(out, &r.key);
                put_bytes(out, &r.state);
            }
            Record::TimersFired(r) => {
                for field in [r.utc_us, r.shard as u64, r.fired] {
                    put_varint(out, field);
                }
            }
            Record::Checkpoint(r) => {
                for field in [r.utc_us, r.checkpoint, r.store_id, r.bytes, r.duration_us] {
                    put_varint(out, field);
                }
            }
            Record::Recovery(r) => {
                for field in [r.utc_us, r.checkpoint, r.store_id] {
                    put_varint(out, field);
                }
            }
            Record::RunEnd(r) => {
                put_varint(out, r.utc_us);
                put_str(out, &r.outcome);
                for field in [r.records_in, r.records_out, r.dead_lettered] {
                    put_varint(out, field);
                }
            }
        }
    }

    /// Decodes one whole record body (trailing bytes are an error).
    pub fn decode(body: &[u8]) -> Result<Record, DecodeError> {
        let mut input = Reader::new(body);
        let record = match input.u8()? {
            kind::RUN_START => Record::RunStart(RunStart {
                utc_us: input.varint()?,
                process: input.varint_u32()?,
                incarnation: input.varint()?,
                version: input.string()?,
                clock_source: input.string()?,
                user: input.string()?,
                host: input.string()?,
                args: {
                    let count = input.varint()?;
                    let mut args = Vec::new();
                    for _ in 0..count {
                        args.push(input.string()?);
                    }
                    args
                },
                shards_total: input.varint_u32()?,
                first_shard: input.varint_u32()?,
                shards: input.varint_u32()?,
                batch_max: input.varint_u32()?,
            }),
            kind::INPUT_CHUNK => Record::InputChunk(InputChunk {
                utc_us: input.varint()?,
                source: input.varint_u32()?,
                partition: input.varint_u32()?,
                chunk: input.varint()?,
                first_line: input.varint()?,
                lines: input.varint()?,
                bytes: input.varint()?,
                position_after: match input.u8()? {
                    1 => StreamPosition::Text {
                        bytes: input.varint()?,
                        lines: input.varint()?,
                    },
                    2 => StreamPosition::Log {
                        offset: input.varint()?,
                    },
                    _ => return Err(DecodeError::Invalid("position kind")),
                },
            }),
            kind::APPLIED => Record::Applied(Applied {
                utc_us: input.varint()?,
                shard: input.varint_u32()?,
                source: input.varint_u32()?,
                from: input.varint_u32()?,
                chunk: input.varint()?,
                first_seq: input.varint()?,
                records: input.varint()?,
                clock_us: if input.bool()? {
                    Some(input.varint()?)
                } else {
                    None
                },
            }),
            kind::SENT => Record::Sent(Sent {
                utc_us: input.varint()?,
                shard: input.varint_u32()?,
                to: input.varint_u32()?,
                source: input.varint_u32()?,
                chunk: input.varint()?,
                first_seq: input.varint()?,
                records: input.varint()?,
            }),
            kind::NOTES => {
                let shard = input.varint_u32()?;
                let count = input.varint()?;
                let mut notes = Vec::new();
                let mut prev = Id::default();
                for _ in 0..count {
                    let id = read_next_id(&mut input, &mut prev)?;
                    notes.push((id, input.bytes()?.to_vec()));
                }
                Record::Notes(Notes { shard, notes })
            }
            kind::OUTPUT => {
                let utc_us = input.varint()?;
                let shard = input.varint_u32()?;
                let first_line = input.varint()?;
                let lines = input.varint()?;
                let bytes = input.varint()?;
                let crc32c = input.u32_le()?;
                let count = input.varint()?;
                let mut ids = Vec::new();
                let mut prev = Id::default();
                for _ in 0..count {
                    ids.push(read_next_id(&mut input, &mut prev)?);
                }
                Record::Output(Output {
                    utc_us,
                    shard,
                    first_line,
                    lines,
                    bytes,
                    crc32c,
                    ids,
                })
            }
            kind::FAILED => Record::Failed(Failed {
                utc_us: input.varint()?,
                id: read_id(&mut input)?,
                reason: input.string()?,
                raw: input.bytes()?.to_vec(),
            }),
            kind::CHECKPOINT => Record::Checkpoint(Checkpoint {
                utc_us: input.varint()?,
                checkpoint: input.varint()?,
                store_id: input.varint()?,
                bytes: input.varint()?,
                duration_us: input.varint()?,
            }),
            kind::RECOVERY => Record::Recovery(Recovery {
                utc_us: input.varint()?,
                checkpoint: input.varint()?,
                store_id: input.varint()?,
            }),
            kind::RUN_END => Record::RunEnd(RunEnd {
                utc_us: input.varint()?,
                outcome: input.string()?,
                records_in: input.varint()?,
                records_out: input.varint()?,
                dead_lettered: input.varint()?,
            }),
            kind::STEP_FAILED => Record::StepFailed(StepFailed {
                utc_us: input.varint()?,
                shard: input.varint_u32()?,
                id: read_id(&mut input)?,
                panicked: match input.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::Invalid("step-failed panicked flag")),
                },
                reason: input.string()?,
                key: input.bytes()?.to_vec(),
                state: input.bytes()?.to_vec(),
            }),
            kind::TIMERS_FIRED => Record::TimersFired(TimersFired {
                utc_us: input.varint()?,
                shard: input.varint_u32()?,
                fired: input.varint()?,
            }),
            _ => return Err(DecodeError::Invalid("record kind")),
        };
        if !input.is_empty() {
            return Err(DecodeError::Invalid("bytes after a record"));
        }
        Ok(record)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> impl Strategy<Value = Id> {
        (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(producer, part, seq)| Id {
            producer,
            part,
            seq,
        })
    }

    #[test]
    fn a_log_seq_holds_its_partition_and_offset_and_reads_apart_from_a_line() {
        for (partition, offset) in [(0, 0), (3, 17), (LOG_PARTITION_LIMIT - 1, LOG_OFFSET_LIMIT - 1)] {
            let seq = log_seq(partition, offset);
            assert_eq!(log_position(seq), Some((partition, offset)));
        }
        assert_eq!(
            log_seq(2, 8) + 1,
            log_seq(2, 9),
            "consecutive offsets, consecutive seqs"
        );
        assert!(log_seq(0, 0) > 0, "never the default id's seq");
        assert_eq!(log_position(17), None, "a line number");
        let id = Id {
            producer: 1,
            part: 2,
            seq: log_seq(5, 42),
        };
        assert_eq!(id.to_string(), "1:p5@42.2");
        assert_eq!(Id { seq: 42, ..id }.to_string(), "1:42.2");
    }

    #[test]
    #[should_panic(expected = "beyond what an id holds")]
    fn a_log_position_an_id_cannot_hold_is_refused() {
        log_seq(LOG_PARTITION_LIMIT, 0);
    }

    pub(crate) fn record() -> impl Strategy<Value = Record> {
        prop_oneof![
            (
                any::<u64>(),
                any::<u32>(),
                any::<u64>(),
                ".{0,8}",
                prop::collection::vec(".{0,8}", 0..4)
            )
                .prop_map(|(utc_us, process, incarnation, text, args)| Record::RunStart(
                    RunStart {
                        utc_us,
                        process,
                        incarnation,
                        version: text.clone(),
                        clock_source: text.clone(),
                        user: text.clone(),
                        host: text,
                        args,
                        shards_total: process.wrapping_add(1),
                        first_shard: process / 2,
                        shards: 1,
                        batch_max: 1024,
                    }
                )),
            (any::<[u64; 6]>(), any::<(u32, u32)>(), any::<bool>()).prop_map(
                |(f, (source, partition), log)| {
                    Record::InputChunk(InputChunk {
                        utc_us: f[0],
                        source,
                        partition,
                        chunk: f[1],
                        first_line: f[2],
                        lines: f[3],
                        bytes: f[4],
                        position_after: if log {
                            StreamPosition::Log { offset: f[5] }
                        } else {
                            StreamPosition::Text {
                                bytes: f[5],
                                lines: f[3],
                            }
                        },
                    })
                }
            ),
            (any::<[u64; 4]>(), any::<[u32; 3]>(), any::<Option<u64>>()).prop_map(|(f, s, clock_us)| {
                Record::Applied(Applied {
                    utc_us: f[0],
                    shard: s[0],
                    source: s[1],
                    from: s[2],
                    chunk: f[1],
                    first_seq: f[2],
                    records: f[3],
                    clock_us,
                })
            }),
            (any::<[u64; 4]>(), any::<[u32; 3]>()).prop_map(|(f, s)| Record::Sent(Sent {
                utc_us: f[0],
                shard: s[0],
                to: s[1],
                source: s[2],
                chunk: f[1],
                first_seq: f[2],
                records: f[3],
            })),
            (
                any::<u32>(),
                prop::collection::vec((id(), prop::collection::vec(any::<u8>(), 0..20)), 0..5)
            )
                .prop_map(|(shard, notes)| Record::Notes(Notes { shard, notes })),
            (
                any::<[u64; 3]>(),
                any::<u32>(),
                any::<u32>(),
                prop::collection::vec(id(), 0..5)
            )
                .prop_map(|(f, shard, crc32c, ids)| Record::Output(Output {
                    utc_us: f[0],
                    shard,
                    first_line: f[1],
                    lines: f[2] / 2,
                    bytes: f[2],
                    crc32c,
                    ids,
                })),
            (
                any::<u64>(),
                id(),
                ".{0,16}",
                prop::collection::vec(any::<u8>(), 0..20)
            )
                .prop_map(|(utc_us, id, reason, raw)| Record::Failed(Failed {
                    utc_us,
                    id,
                    reason,
                    raw
                })),
            (
                any::<u64>(),
                any::<u32>(),
                id(),
                any::<bool>(),
                ".{0,16}",
                prop::collection::vec(any::<u8>(), 0..20),
                prop::collection::vec(any::<u8>(), 0..20)
            )
                .prop_map(
                    |(utc_us, shard, id, panicked, reason, key, state)| Record::StepFailed(StepFailed {
                        utc_us,
                        shard,
                        id,
                        panicked,
                        reason,
                        key,
                        state
                    })
                ),
            any::<[u64; 5]>().prop_map(|f| Record::Checkpoint(Checkpoint {
                utc_us: f[0],
                checkpoint: f[1],
                store_id: f[2],
                bytes: f[3],
                duration_us: f[4],
            })),
            (any::<[u64; 2]>(), any::<u32>()).prop_map(|(f, shard)| Record::TimersFired(TimersFired {
                utc_us: f[0],
                shard,
                fired: f[1],
            })),
            any::<[u64; 3]>().prop_map(|f| Record::Recovery(Recovery {
                utc_us: f[0],
                checkpoint: f[1],
                store_id: f[2],
            })),
            (any::<[u64; 4]>(), ".{0,16}").prop_map(|(f, outcome)| Record::RunEnd(RunEnd {
                utc_us: f[0],
                outcome,
                records_in: f[1],
                records_out: f[2],
                dead_lettered: f[3],
            })),
        ]
    }

    proptest! {
        #[test]
        fn records_round_trip(record in record()) {
            let mut body = Vec::new();
            record.encode(&mut body);
            prop_assert_eq!(Record::decode(&body).unwrap(), record);
        }

        #[test]
        fn a_cut_record_never_decodes(record in record(), cut in 1usize..8) {
            let mut body = Vec::new();
            record.encode(&mut body);
            let keep = body.len().saturating_sub(cut);
            prop_assert!(Record::decode(&body[..keep]).is_err());
        }
    }

    #[test]
    fn notes_built_in_place_decode_as_notes() {
        let notes = vec![
            (
                Id {
                    producer: 1,
                    part: 0,
                    seq: 9,
                },
                b"abc".to_vec(),
            ),
            (Id::default(), Vec::new()),
        ];
        let mut entries = Vec::new();
        let mut prev = Id::default();
        for (id, note) in &notes {
            put_note(&mut entries, &mut prev, *id, note);
        }
        let mut buffer = Vec::new();
        push_notes(&mut buffer, 4, 2, &entries);
        let len = u32::from_le_bytes(buffer[..4].try_into().unwrap()) as usize;
        assert_eq!(len, buffer.len() - 4);
        assert_eq!(
            Record::decode(&buffer[4..]),
            Ok(Record::Notes(Notes { shard: 4, notes }))
        );
    }

    proptest! {
        #[test]
        fn runs_of_ids_are_delta_coded_and_round_trip(
            start in any::<u64>(),
            gaps in prop::collection::vec(0u64..1000, 0..50),
            other in any::<u32>(),
        ) {
            let mut seq = start;
            let mut ids = Vec::new();
            for (n, gap) in gaps.iter().enumerate() {
                seq = seq.wrapping_add(*gap);
                // Now and then an id that breaks the run: another producer, a part, a step back.
                let producer = if n % 7 == 3 { other } else { 1 };
                ids.push(Id { producer, part: (n % 11 == 5) as u32, seq });
            }
            let record = Record::Output(Output { utc_us: 1, shard: 0, first_line: 1, lines: ids.len() as u64, bytes: 0, crc32c: 0, ids });
            let mut body = Vec::new();
            record.encode(&mut body);
            prop_assert_eq!(Record::decode(&body).unwrap(), record);
        }
    }

    #[test]
    fn a_run_of_ids_costs_a_byte_each() {
        let ids: Vec<Id> = (1..=100)
            .map(|seq| Id {
                producer: 2,
                part: 0,
                seq,
            })
            .collect();
        let mut body = Vec::new();
        Record::Output(Output {
            utc_us: 0,
            shard: 0,
            first_line: 1,
            lines: 100,
            bytes: 0,
            crc32c: 0,
            ids,
        })
        .encode(&mut body);
        assert!(body.len() < 120, "{} bytes", body.len());
    }

    #[test]
    fn every_kind_has_a_name() {
        for (index, name) in KIND_NAMES.iter().enumerate() {
            assert!(!name.is_empty(), "kind {}", index + 1);
        }
    }
}
