//! The engine's side of the audit log (`verity_audit` writes it).
//!
//! A shard's side: the clock reading its step's logic sees
//! for each *unit* (a batch of one source's records applied together), the
//! notes the logic writes about what it read and decided, and the records of
//! what the shard applied and sent, gathered in a buffer the driver hands to
//! the audit writer (`Effect::Audit`).
//!
//! A unit reads the clock at most once, so every record of a batch is
//! decided on the same reading, and the audit log needs one reading per
//! batch to re-create them all. With the audit off, none of this but the
//! lazy clock reading costs anything.

use crate::env::Clock;
use crate::ids::MsgId;
use std::sync::Arc;
use verity_audit::record::{push_notes, put_note, Applied, Failed, Output, Sent, TimersFired};
use verity_audit::{push_record, AuditClosed, AuditHandle, Record};

/// Where audit records go: the side thread in production
/// (`AuditHandle`), memory in the simulator.
pub trait AuditOut: Send {
    /// Takes a buffer of records (`push_record`'s format), waiting while
    /// the writer is behind; an error when the writer has failed.
    fn submit(&mut self, records: Vec<u8>) -> Result<(), AuditClosed>;

    /// Returns once everything submitted before is written and synced (as
    /// far as the fsync policy syncs): a checkpoint's barrier.
    fn sync(&mut self) -> Result<(), AuditClosed>;
}

impl AuditOut for AuditHandle {
    fn submit(&mut self, records: Vec<u8>) -> Result<(), AuditClosed> {
        AuditHandle::submit(self, records)
    }

    fn sync(&mut self) -> Result<(), AuditClosed> {
        AuditHandle::sync(self)
    }
}

/// Who started a process's run, and how: what its run-start record says
/// besides the layout.
pub struct RunIdentity {
    /// Drawn at process start (in a cluster, the one the handshake carries).
    pub incarnation: u64,
    /// The command line, program first.
    pub args: Vec<String>,
    pub user: String,
    pub host: String,
}

/// The record that opens a process's life in the audit log: who started
/// it, with which version and clock, and which shards it runs (both
/// drivers write it, the threaded runtime and the simulator).
pub fn run_start(
    identity: RunIdentity,
    layout: &crate::cluster::Layout,
    batch_max: usize,
    clock: &dyn Clock,
) -> Record {
    let local = layout.local_shards();
    Record::RunStart(verity_audit::record::RunStart {
        utc_us: clock.now_us(),
        process: layout.process_id,
        incarnation: identity.incarnation,
        version: env!("CARGO_PKG_VERSION").to_string(),
        clock_source: clock.source().to_string(),
        user: identity.user,
        host: identity.host,
        args: identity.args,
        shards_total: layout.total_shards(),
        first_shard: local.start,
        shards: local.end - local.start,
        batch_max: batch_max as u32,
    })
}

/// The output thread's records: the lineage of every output batch and
/// every dead letter.
pub struct OutputAudit {
    out: Box<dyn AuditOut>,
    clock: Arc<dyn Clock>,
    buffer: Vec<u8>,
}

impl OutputAudit {
    pub fn new(out: Box<dyn AuditOut>, clock: Arc<dyn Clock>) -> Self {
        OutputAudit {
            out,
            clock,
            buffer: Vec::new(),
        }
    }

    /// A batch of shard `shard`'s `count` lines, the output's lines
    /// `first_line..` (numbered from 1 over the run's lives), was written.
    pub fn output(
        &mut self,
        shard: u32,
        first_line: u64,
        count: u64,
        lines: &[u8],
        ids: &[MsgId],
    ) -> Result<(), AuditClosed> {
        debug_assert!(ids.is_empty() || ids.len() as u64 == count);
        let record = Record::Output(Output {
            utc_us: self.clock.now_us(),
            shard,
            first_line,
            lines: count,
            bytes: lines.len() as u64,
            crc32c: crc32c::crc32c(lines),
            ids: ids.iter().map(|&id| id.into()).collect(),
        });
        push_record(&mut self.buffer, &record);
        self.submit_if_full()
    }

    pub fn dead_letter(&mut self, letter: &crate::line::DeadLetter) -> Result<(), AuditClosed> {
        let record = Record::Failed(Failed {
            utc_us: self.clock.now_us(),
            id: letter.id.into(),
            reason: letter.reason.to_string(),
            raw: letter.raw.to_vec(),
        });
        push_record(&mut self.buffer, &record);
        self.submit_if_full()
    }

    /// A record of its own (a checkpoint's), after everything before it.
    pub fn record(&mut self, record: &Record) -> Result<(), AuditClosed> {
        push_record(&mut self.buffer, record);
        self.flush()
    }

    /// Makes everything recorded so far durable (`AuditOut::sync`).
    pub fn sync(&mut self) -> Result<(), AuditClosed> {
        self.flush()?;
        self.out.sync()
    }

    pub fn now_us(&self) -> u64 {
        self.clock.now_us()
    }

    fn submit_if_full(&mut self) -> Result<(), AuditClosed> {
        if self.buffer.len() >= AUDIT_BUFFER_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), AuditClosed> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let records = std::mem::replace(&mut self.buffer, Vec::with_capacity(AUDIT_BUFFER_BYTES));
        self.out.submit(records)
    }
}

/// The processing time a unit's logic reads: the first reading, kept. A
/// replay (`crate::replay`) gives each unit the reading its recorded
/// counterpart used instead.
pub struct UnitClock {
    clock: Arc<dyn Clock>,
    reading: Option<u64>,
    /// Replaying: the recorded reading of each unit still to apply, in order.
    replayed: Option<std::collections::VecDeque<Option<u64>>>,
    /// Replaying: readings the logic took where the recorded run took none.
    pub(crate) unrecorded_readings: u64,
}

impl UnitClock {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        UnitClock {
            clock,
            reading: None,
            replayed: None,
            unrecorded_readings: 0,
        }
    }

    /// A clock that reads back `readings`, one per unit with records.
    pub fn replaying(readings: std::collections::VecDeque<Option<u64>>) -> Self {
        UnitClock {
            replayed: Some(readings),
            ..UnitClock::new(crate::env::process_clock())
        }
    }

    pub fn now_us(&mut self) -> u64 {
        if let Some(reading) = self.reading {
            return reading;
        }
        let reading = match &self.replayed {
            None => self.clock.now_us(),
            Some(readings) => readings.front().copied().flatten().unwrap_or_else(|| {
                self.unrecorded_readings += 1;
                0
            }),
        };
        self.reading = Some(reading);
        reading
    }

    /// Ends a unit of `applied` records; returns the reading it used, if any.
    pub(crate) fn end_unit(&mut self, applied: u64) -> Option<u64> {
        if applied > 0 {
            if let Some(readings) = &mut self.replayed {
                readings.pop_front();
            }
        }
        self.reading.take()
    }

    pub(crate) fn read_fresh(&self) -> u64 {
        self.clock.now_us()
    }
}

/// Notes of the unit being applied, encoded in place.
#[derive(Default)]
pub struct NoteSink {
    entries: Vec<u8>,
    count: u64,
    /// The id of the last entry (ids are delta-coded within a record).
    prev: verity_audit::Id,
    scratch: Vec<u8>,
}

impl NoteSink {
    pub fn note(&mut self, id: MsgId, write: impl FnOnce(&mut Vec<u8>)) {
        // Written in place after a one-byte length, which almost every note
        // fits (the rare longer one goes through `put_note`).
        let at = self.entries.len();
        let prev = self.prev;
        put_note(&mut self.entries, &mut self.prev, id.into(), &[]);
        let body_at = self.entries.len();
        write(&mut self.entries);
        let len = self.entries.len() - body_at;
        if len >= 0x80 {
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.entries[body_at..]);
            self.entries.truncate(at);
            self.prev = prev;
            put_note(&mut self.entries, &mut self.prev, id.into(), &self.scratch);
        } else {
            self.entries[body_at - 1] = len as u8;
        }
        self.count += 1;
    }
}

/// What a shard records when the audit is on.
pub struct ShardAudit {
    shard: u32,
    pub notes: NoteSink,
    buffer: Vec<u8>,
}

/// The buffer goes to the driver once it holds this much (and whenever the
/// shard flushes).
const AUDIT_BUFFER_BYTES: usize = verity_audit::writer::BUFFER_BYTES;

/// Where an applied unit came from: with its record count, what names it
/// in the audit log and in a replay's schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitSource {
    pub source: u32,
    pub from: u32,
    pub chunk: u64,
    pub first_seq: u64,
}

/// A timer unit's `UnitSource::source`: no source has that index (a run
/// has far fewer).
const TIMERS_SOURCE: u32 = u32::MAX;

impl UnitSource {
    /// The unit in which shard `shard` fired `fired` due timers (its
    /// `chunk` holds the count, so a replay that fires another number
    /// leaves its schedule).
    pub fn timers(shard: u32, fired: u64) -> UnitSource {
        UnitSource {
            source: TIMERS_SOURCE,
            from: shard,
            chunk: fired,
            first_seq: 0,
        }
    }

    pub fn is_timers(&self) -> bool {
        self.source == TIMERS_SOURCE
    }
}

impl ShardAudit {
    pub fn new(shard: u32) -> Self {
        ShardAudit {
            shard,
            notes: NoteSink::default(),
            buffer: Vec::with_capacity(AUDIT_BUFFER_BYTES),
        }
    }

    /// Records a unit of `records` applied records with the reading its
    /// logic used, and its notes.
    pub fn applied(&mut self, clock: &mut UnitClock, unit: UnitSource, records: u64) {
        let clock_us = clock.end_unit(records);
        if records == 0 {
            debug_assert!(
                clock_us.is_none() && self.notes.count == 0,
                "logic ran without records"
            );
            return;
        }
        let utc_us = clock_us.unwrap_or_else(|| clock.read_fresh());
        let record = if unit.is_timers() {
            debug_assert!(clock_us.is_some(), "a timer unit reads the clock");
            Record::TimersFired(TimersFired {
                utc_us,
                shard: self.shard,
                fired: records,
            })
        } else {
            Record::Applied(Applied {
                utc_us,
                shard: self.shard,
                source: unit.source,
                from: unit.from,
                chunk: unit.chunk,
                first_seq: unit.first_seq,
                records,
                clock_us,
            })
        };
        push_record(&mut self.buffer, &record);
        if self.notes.count > 0 {
            push_notes(
                &mut self.buffer,
                self.shard,
                self.notes.count,
                &self.notes.entries,
            );
            self.notes.entries.clear();
            self.notes.count = 0;
            self.notes.prev = verity_audit::Id::default();
        }
    }

    pub fn sent(&mut self, clock: &UnitClock, to: u32, unit: UnitSource, records: u64) {
        let record = Record::Sent(Sent {
            utc_us: clock.read_fresh(),
            shard: self.shard,
            to,
            source: unit.source,
            chunk: unit.chunk,
            first_seq: unit.first_seq,
            records,
        });
        push_record(&mut self.buffer, &record);
    }

    /// The keyed step failed input `id` (or panicked on it), meeting the
    /// key and state given in their `Wire` encoding.
    pub fn step_failed(
        &mut self,
        clock: &UnitClock,
        id: MsgId,
        panicked: bool,
        reason: &str,
        key: Vec<u8>,
        state: Vec<u8>,
    ) {
        let record = Record::StepFailed(verity_audit::record::StepFailed {
            utc_us: clock.read_fresh(),
            shard: self.shard,
            id: id.into(),
            panicked,
            reason: reason.to_string(),
            key,
            state,
        });
        push_record(&mut self.buffer, &record);
    }

    pub fn is_full(&self) -> bool {
        self.buffer.len() >= AUDIT_BUFFER_BYTES
    }

    /// The records gathered so far, if any.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        if self.buffer.is_empty() {
            return None;
        }
        Some(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(AUDIT_BUFFER_BYTES),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verity_audit::record::Notes;

    #[test]
    fn notes_of_any_length_are_written_in_place_and_decode() {
        let mut sink = NoteSink::default();
        let notes: Vec<Vec<u8>> = [0usize, 5, 127, 128, 300].iter().map(|n| vec![7u8; *n]).collect();
        for (seq, note) in notes.iter().enumerate() {
            sink.note(MsgId::new(1, seq as u64), |out| out.extend_from_slice(note));
        }
        let mut buffer = Vec::new();
        push_notes(&mut buffer, 3, sink.count, &sink.entries);
        let expected = notes
            .iter()
            .enumerate()
            .map(|(seq, note)| (MsgId::new(1, seq as u64).into(), note.clone()))
            .collect();
        assert_eq!(
            Record::decode(&buffer[4..]),
            Ok(Record::Notes(Notes {
                shard: 3,
                notes: expected
            }))
        );
    }

    #[test]
    fn a_replayed_clock_reads_back_each_units_recording() {
        let mut clock = UnitClock::replaying([Some(10), None, Some(30)].into_iter().collect());
        assert_eq!((clock.now_us(), clock.now_us()), (10, 10), "one reading per unit");
        assert_eq!(clock.end_unit(4), Some(10));
        assert_eq!(
            clock.end_unit(0),
            None,
            "a unit without records uses no recording"
        );
        assert_eq!(clock.now_us(), 0, "the recorded unit read no clock");
        assert_eq!(clock.unrecorded_readings, 1);
        clock.end_unit(1);
        assert_eq!(clock.now_us(), 30);
    }
}
