//! The Kafka sink's decisions, sans-IO over `LogProducer`: each output line
//! becomes a record keyed by its app key with its input's id in a header,
//! and with exactly-once delivery the records between two checkpoints form
//! one transaction.
//!
//! The transaction protocol, against the output thread's order (`barrier`,
//! `resume_mark`, the checkpoint's manifest, `commit`):
//! * `barrier(k)`: every record of transaction `k` is acknowledged (flush);
//!   the sink is *prepared*.
//! * `resume_mark`: what the checkpoint stores: the marker base, `k`, and a
//!   copy of transaction `k`'s records.
//! * `commit(k)` (after the manifest): commits the transaction together
//!   with the marker `base + k` (atomically, inside the transaction) and
//!   begins the next one.
//! * A recovery from checkpoint `k` opens a new producer with the same
//!   transactional id, which fences the old one and aborts whatever it left
//!   open, then reads the marker: `base + k` means transaction `k` committed;
//!   `base + k - 1` means the crash came between the manifest and the
//!   commit, and the copy in the mark is produced and committed again, so
//!   what the checkpoint covers is in the topic exactly once. Transactions
//!   after `k` were never committed (commit follows the manifest), so the
//!   replay's output is new.
//!
//! With at-least-once delivery the idempotent producer writes records as
//! they come; a recovery may repeat output after its checkpoint, and the
//! output-id header lets a consumer drop repeats (`verity receive` does).

use crate::log::{LogError, LogProducer};
use std::io::Write;
use verity_core::connector::{CommitId, SinkConnector, SinkError};
use verity_core::MsgId;

/// The part of an output line its record is keyed by (so a key's outputs
/// share a partition and keep their order).
pub type KeyOf = fn(&[u8]) -> &[u8];

/// How much output one transaction may hold (its copy is kept until it
/// commits, and goes into the checkpoint).
pub const TRANSACTION_BYTES_MAX: usize = 256 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkDelivery {
    /// Idempotent producer, records final as written.
    AtLeastOnce,
    /// One transaction per checkpoint, committed after the checkpoint.
    Transactional,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxnState {
    /// A transaction is open and takes records.
    Open,
    /// `barrier` flushed it; it waits for `commit`.
    Prepared(CommitId),
    /// The last one committed at the end of input.
    Done,
}

/// Test-only planted bugs; all off in production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkBugs {
    /// Commit the transaction at the barrier, before the checkpoint that
    /// covers it is durable.
    pub commit_at_barrier: bool,
    /// On a recovery, trust the checkpoint and never commit its copy again.
    pub skip_recommit: bool,
}

pub struct LogSink<P: LogProducer> {
    producer: P,
    delivery: SinkDelivery,
    key_of: KeyOf,
    state: TxnState,
    /// Marker of the last transaction committed before this run's first.
    marker_base: u64,
    /// Checkpoint transactions committed (the marker is `base + this`).
    committed: u64,
    /// The open transaction's records (`key_len u32, key, value_len u32,
    /// value, id_len u8, id`), kept until it commits.
    copy: Vec<u8>,
    id_text: Vec<u8>,
    bugs: SinkBugs,
}

const MARK_AT_LEAST_ONCE: u8 = 1;
const MARK_TRANSACTIONAL: u8 = 2;

fn sink_error(e: LogError) -> SinkError {
    SinkError::Connector(Box::new(e))
}

fn protocol_error(what: String) -> SinkError {
    SinkError::Connector(what.into())
}

impl<P: LogProducer> LogSink<P> {
    /// Opens the sink; a transactional one takes over its transactional id
    /// (fencing an older producer with it) and begins a transaction.
    pub fn open(
        mut producer: P,
        delivery: SinkDelivery,
        key_of: KeyOf,
        bugs: SinkBugs,
    ) -> Result<Self, SinkError> {
        let mut marker_base = 0;
        if delivery == SinkDelivery::Transactional {
            producer.init_transactions().map_err(sink_error)?;
            marker_base = producer.committed_marker().map_err(sink_error)?;
            producer.begin_transaction().map_err(sink_error)?;
        }
        Ok(LogSink {
            producer,
            delivery,
            key_of,
            state: TxnState::Open,
            marker_base,
            committed: 0,
            copy: Vec::new(),
            id_text: Vec::with_capacity(32),
            bugs,
        })
    }

    pub fn producer_mut(&mut self) -> &mut P {
        &mut self.producer
    }

    fn produce_line(&mut self, value: &[u8], id: Option<&MsgId>) -> Result<(), SinkError> {
        self.id_text.clear();
        if let Some(id) = id {
            let _ = write!(self.id_text, "{id}");
        }
        let key = (self.key_of)(value);
        self.producer
            .produce(key, value, &self.id_text)
            .map_err(sink_error)?;
        if self.delivery == SinkDelivery::Transactional {
            if self.copy.len() + value.len() + key.len() > TRANSACTION_BYTES_MAX {
                return Err(protocol_error(format!(
                    "kafka sink: one checkpoint's output exceeds {TRANSACTION_BYTES_MAX} bytes; take checkpoints more often (--checkpoint-interval-ms)"
                )));
            }
            push_record(&mut self.copy, key, value, &self.id_text);
        }
        Ok(())
    }

    fn commit_open_transaction(&mut self) -> Result<(), SinkError> {
        self.committed += 1;
        self.producer
            .commit_transaction(self.marker_base + self.committed)
            .map_err(sink_error)?;
        self.copy.clear();
        Ok(())
    }

    /// Produces the records of a copy (a mark's) into the open transaction.
    fn produce_copy(&mut self, mut copy: &[u8]) -> Result<(), SinkError> {
        while !copy.is_empty() {
            let (key, value, id) = pop_record(&mut copy).ok_or_else(|| bad_mark("a truncated record"))?;
            self.producer.produce(key, value, id).map_err(sink_error)?;
            push_record(&mut self.copy, key, value, id);
        }
        Ok(())
    }
}

fn push_record(out: &mut Vec<u8>, key: &[u8], value: &[u8], id: &[u8]) {
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Some(head)
}

fn take_u32(input: &mut &[u8]) -> Option<usize> {
    Some(u32::from_le_bytes(take(input, 4)?.try_into().ok()?) as usize)
}

fn take_u64(input: &mut &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(take(input, 8)?.try_into().ok()?))
}

type CopiedRecord<'a> = (&'a [u8], &'a [u8], &'a [u8]);

fn pop_record<'a>(input: &mut &'a [u8]) -> Option<CopiedRecord<'a>> {
    let key_len = take_u32(input)?;
    let key = take(input, key_len)?;
    let value_len = take_u32(input)?;
    let value = take(input, value_len)?;
    let id_len = *take(input, 1)?.first()? as usize;
    let id = take(input, id_len)?;
    Some((key, value, id))
}

fn bad_mark(what: &str) -> SinkError {
    protocol_error(format!(
        "kafka sink: the checkpoint's mark is not one this sink wrote ({what})"
    ))
}

impl<P: LogProducer> SinkConnector for LogSink<P> {
    fn wants_ids(&self) -> bool {
        true
    }

    fn write(&mut self, lines: &[u8], ids: &[MsgId]) -> Result<(), SinkError> {
        if self.state != TxnState::Open {
            return Err(protocol_error(format!(
                "kafka sink: output written while the transaction is {:?}",
                self.state
            )));
        }
        let body = lines.strip_suffix(b"\n").unwrap_or(lines);
        if body.is_empty() && lines.is_empty() {
            return Ok(());
        }
        for (i, line) in body.split(|b| *b == b'\n').enumerate() {
            self.produce_line(line, ids.get(i))?;
        }
        Ok(())
    }

    fn barrier(&mut self, commit: CommitId) -> Result<(), SinkError> {
        self.producer.flush().map_err(sink_error)?;
        if self.delivery == SinkDelivery::Transactional {
            if self.state != TxnState::Open {
                return Err(protocol_error(format!(
                    "kafka sink: a barrier while {:?}",
                    self.state
                )));
            }
            self.state = TxnState::Prepared(commit);
            if self.bugs.commit_at_barrier {
                self.commit_open_transaction()?;
            }
        }
        Ok(())
    }

    fn resume_mark(&mut self) -> Result<Vec<u8>, SinkError> {
        Ok(match self.delivery {
            SinkDelivery::AtLeastOnce => vec![MARK_AT_LEAST_ONCE],
            SinkDelivery::Transactional => {
                // The marker this transaction commits with, relative to the
                // base, and its records.
                let pending = self.committed + u64::from(!self.bugs.commit_at_barrier);
                let mut mark = Vec::with_capacity(17 + self.copy.len());
                mark.push(MARK_TRANSACTIONAL);
                mark.extend_from_slice(&self.marker_base.to_le_bytes());
                mark.extend_from_slice(&pending.to_le_bytes());
                mark.extend_from_slice(&self.copy);
                mark
            }
        })
    }

    fn commit(&mut self, upto: CommitId) -> Result<(), SinkError> {
        match (self.delivery, self.state) {
            (SinkDelivery::AtLeastOnce, _) => self.producer.flush().map_err(sink_error),
            (SinkDelivery::Transactional, TxnState::Prepared(c)) if c == upto => {
                if !self.bugs.commit_at_barrier {
                    self.commit_open_transaction()?;
                }
                self.copy.clear();
                if upto == CommitId::END_OF_INPUT {
                    self.state = TxnState::Done;
                } else {
                    self.producer.begin_transaction().map_err(sink_error)?;
                    self.state = TxnState::Open;
                }
                Ok(())
            }
            (SinkDelivery::Transactional, state) => Err(protocol_error(format!(
                "kafka sink: commit of {upto:?} while {state:?}"
            ))),
        }
    }

    fn resume(&mut self, mark: &[u8]) -> Result<(), SinkError> {
        let mut rest = mark;
        let tag = *take(&mut rest, 1)
            .and_then(|t| t.first())
            .ok_or_else(|| bad_mark("empty"))?;
        match (self.delivery, tag) {
            (SinkDelivery::AtLeastOnce, _) => Ok(()),
            (SinkDelivery::Transactional, MARK_AT_LEAST_ONCE) => Ok(()),
            (SinkDelivery::Transactional, MARK_TRANSACTIONAL) => {
                let base = take_u64(&mut rest).ok_or_else(|| bad_mark("no marker base"))?;
                let at = take_u64(&mut rest).ok_or_else(|| bad_mark("no marker"))?;
                debug_assert!(self.copy.is_empty() && self.state == TxnState::Open);
                self.marker_base = base;
                self.committed = at;
                let marker = self.producer.committed_marker().map_err(sink_error)?;
                if marker == base + at || self.bugs.skip_recommit {
                    return Ok(());
                }
                if at == 0 || marker != base + at - 1 {
                    return Err(protocol_error(format!(
                        "kafka sink: the output topic's last committed transaction has marker {marker}, but the checkpoint expects {} or {}: was the topic or transactional id reused by another job?",
                        base + at.saturating_sub(1),
                        base + at
                    )));
                }
                // The crash came between the checkpoint and its commit: the
                // transaction was aborted, its copy goes in again.
                self.committed = at - 1;
                self.produce_copy(rest)?;
                self.producer.flush().map_err(sink_error)?;
                self.commit_open_transaction()?;
                self.producer.begin_transaction().map_err(sink_error)
            }
            _ => Err(bad_mark("unknown kind")),
        }
    }
}

impl<P: LogProducer> Drop for LogSink<P> {
    fn drop(&mut self) {
        // A run that failed leaves nothing open behind it (a crash does, and
        // the next producer with the id aborts it).
        if self.delivery == SinkDelivery::Transactional && self.state != TxnState::Done {
            let _ = self.producer.abort_transaction();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim_broker::{SimBroker, SimProducer};

    const ID: &str = "verity-job-p0";

    fn first_field(line: &[u8]) -> &[u8] {
        line.split(|b| *b == b' ').next().unwrap_or_default()
    }

    fn open(broker: &SimBroker, bugs: SinkBugs) -> LogSink<SimProducer> {
        let producer = broker.producer("out", Some(ID));
        LogSink::open(producer, SinkDelivery::Transactional, first_field, bugs).unwrap()
    }

    fn write(sink: &mut LogSink<SimProducer>, lines: &[&str]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let ids: Vec<MsgId> = (1..=lines.len() as u64).map(|i| MsgId::new(0, i)).collect();
        sink.write(text.as_bytes(), &ids).unwrap();
    }

    /// The values a read_committed consumer sees, sorted.
    fn committed(broker: &SimBroker) -> Vec<String> {
        let mut values: Vec<String> = broker
            .read_committed("out")
            .into_iter()
            .map(|(_, _, r)| String::from_utf8(r.value).unwrap())
            .collect();
        values.sort();
        values
    }

    /// One checkpoint as the output thread takes it: barrier, mark, (the
    /// manifest), commit.
    fn checkpoint(sink: &mut LogSink<SimProducer>, k: u64) -> Vec<u8> {
        sink.barrier(CommitId(k)).unwrap();
        let mark = sink.resume_mark().unwrap();
        sink.commit(CommitId(k)).unwrap();
        mark
    }

    fn broker() -> SimBroker {
        let broker = SimBroker::new();
        broker.create_topic("out", 3);
        broker
    }

    #[test]
    fn output_is_visible_only_once_its_checkpoint_commits() {
        let broker = broker();
        let mut sink = open(&broker, SinkBugs::default());
        write(&mut sink, &["a 1", "b 1"]);
        sink.barrier(CommitId(1)).unwrap();
        sink.resume_mark().unwrap();
        assert!(committed(&broker).is_empty(), "prepared is not committed");
        sink.commit(CommitId(1)).unwrap();
        assert_eq!(committed(&broker), ["a 1", "b 1"]);
        let records = broker.read_committed("out");
        let (partition, _, a) = &records.iter().find(|(_, _, r)| r.value == b"a 1").unwrap();
        assert_eq!(
            *partition,
            broker.partition_for("out", b"a"),
            "keyed by the app key"
        );
        assert_eq!(a.output_id, b"0:1.0");
        write(&mut sink, &["c 1"]);
        drop(sink);
        assert_eq!(
            committed(&broker),
            ["a 1", "b 1"],
            "a failed run's transaction is aborted"
        );
        assert_eq!(broker.open_records("out"), 0);
    }

    #[test]
    fn a_new_life_fences_the_zombie() {
        let broker = broker();
        let mut zombie = open(&broker, SinkBugs::default());
        write(&mut zombie, &["z 1"]);
        let _successor = open(&broker, SinkBugs::default());
        let e = zombie.barrier(CommitId(1)).unwrap_err().to_string();
        assert!(e.contains("fenced"), "{e}");
        assert!(committed(&broker).is_empty());
    }

    /// A crash after the mark of checkpoint 2 (the manifest written) but
    /// before its commit, then a recovery from checkpoint 2.
    fn crash_between_manifest_and_commit(bugs: SinkBugs) -> Vec<String> {
        let broker = broker();
        let mut first = open(&broker, SinkBugs::default());
        write(&mut first, &["a 1"]);
        checkpoint(&mut first, 1);
        write(&mut first, &["b 1", "c 1"]);
        first.barrier(CommitId(2)).unwrap();
        let mark = first.resume_mark().unwrap();
        std::mem::forget(first); // kill -9: nothing more happens in that life
        let mut recovered = open(&broker, bugs);
        recovered.resume(&mark).unwrap();
        write(&mut recovered, &["d 1"]);
        checkpoint(&mut recovered, 3);
        committed(&broker)
    }

    #[test]
    fn a_crash_between_checkpoint_and_commit_commits_the_copy_once() {
        assert_eq!(
            crash_between_manifest_and_commit(SinkBugs::default()),
            ["a 1", "b 1", "c 1", "d 1"]
        );
        let planted = SinkBugs {
            skip_recommit: true,
            ..SinkBugs::default()
        };
        assert_eq!(
            crash_between_manifest_and_commit(planted),
            ["a 1", "d 1"],
            "the planted bug loses the checkpoint's output"
        );
    }

    #[test]
    fn a_crash_after_the_commit_repeats_nothing_and_one_before_the_checkpoint_drops_its_output() {
        let broker = broker();
        let mut first = open(&broker, SinkBugs::default());
        write(&mut first, &["a 1"]);
        let mark = checkpoint(&mut first, 1);
        write(&mut first, &["b 1"]);
        std::mem::forget(first); // crash before checkpoint 2: replayed later
        let mut recovered = open(&broker, SinkBugs::default());
        recovered.resume(&mark).unwrap();
        write(&mut recovered, &["b 1"]);
        checkpoint(&mut recovered, 2);
        assert_eq!(committed(&broker), ["a 1", "b 1"]);
    }

    #[test]
    fn committing_at_the_barrier_is_caught_after_a_crash_before_the_checkpoint() {
        let broker = broker();
        let bugs = SinkBugs {
            commit_at_barrier: true,
            ..SinkBugs::default()
        };
        let mut first = open(&broker, bugs);
        write(&mut first, &["a 1"]);
        let mark = checkpoint(&mut first, 1);
        write(&mut first, &["b 1"]);
        first.barrier(CommitId(2)).unwrap();
        std::mem::forget(first); // crash before checkpoint 2's manifest
                                 // `b 1` is committed though no checkpoint covers it: the replay
                                 // would write it again. The recovery sees the marker ahead of its
                                 // checkpoint and refuses to go on.
        assert_eq!(committed(&broker), ["a 1", "b 1"]);
        let mut recovered = open(&broker, bugs);
        let e = recovered.resume(&mark).unwrap_err().to_string();
        assert!(
            e.contains("has marker 2, but the checkpoint expects 0 or 1"),
            "{e}"
        );
    }

    #[test]
    fn a_mark_from_elsewhere_is_refused() {
        let broker = broker();
        let mut sink = open(&broker, SinkBugs::default());
        assert!(sink.resume(&[]).is_err());
        assert!(sink.resume(&[9]).is_err());
        let mut foreign = vec![MARK_TRANSACTIONAL];
        foreign.extend_from_slice(&5u64.to_le_bytes());
        foreign.extend_from_slice(&3u64.to_le_bytes());
        let e = sink.resume(&foreign).unwrap_err().to_string();
        assert!(e.contains("reused by another job"), "{e}");
    }

    #[test]
    fn at_least_once_writes_as_it_goes() {
        let broker = broker();
        let producer = broker.producer("out", None);
        let mut sink = LogSink::open(
            producer,
            SinkDelivery::AtLeastOnce,
            first_field,
            SinkBugs::default(),
        )
        .unwrap();
        write(&mut sink, &["a 1"]);
        sink.barrier(CommitId(1)).unwrap();
        assert_eq!(committed(&broker), ["a 1"], "final at the barrier's flush");
        assert_eq!(sink.resume_mark().unwrap(), [MARK_AT_LEAST_ONCE]);
    }
}
