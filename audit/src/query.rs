//! Questions asked of an audit log after the fact.

use crate::record::{Id, Output, Record, KIND_NAMES};
use crate::segment::{verify, ChainHead, VerifyReport};
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use verity_state::storage::Storage;

/// `verity audit summary`: what the log holds.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub report: VerifyReport,
    /// Records per kind, in `KIND_NAMES` order.
    pub kinds: [u64; KIND_NAMES.len()],
    /// Their framed bytes per kind (body and frame header), same order.
    pub kind_bytes: [u64; KIND_NAMES.len()],
    pub first_utc_us: Option<u64>,
    pub last_utc_us: Option<u64>,
    /// Per process: its lives (run starts) and how the newest ended.
    pub processes: BTreeMap<u32, ProcessSummary>,
    /// Clock sources the runs said they used.
    pub clock_sources: Vec<String>,
    /// Input records received (lines of input chunks) and output lines.
    pub input_records: u64,
    pub output_lines: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ProcessSummary {
    pub lives: u64,
    pub last_outcome: Option<String>,
    pub command_line: Vec<String>,
}

/// Reads the whole log (checking it as `verify` does) and sums it up.
pub fn summarize(storage: &mut dyn Storage) -> io::Result<Summary> {
    let mut summary = Summary::default();
    let mut records = Vec::new();
    summary.report = verify(storage, &[], |process, body| {
        if let Ok(record) = Record::decode(body) {
            records.push((process, record, body.len()));
        }
    })?;
    for (process, record, body_bytes) in records {
        let kind = KIND_NAMES
            .iter()
            .position(|k| *k == record.kind_name())
            .expect("a known kind");
        summary.kinds[kind] += 1;
        summary.kind_bytes[kind] += (crate::segment::FRAME_HEADER_BYTES + body_bytes) as u64;
        if let Some(at) = record.utc_us() {
            summary.first_utc_us = Some(summary.first_utc_us.map_or(at, |t| t.min(at)));
            summary.last_utc_us = Some(summary.last_utc_us.map_or(at, |t| t.max(at)));
        }
        let entry = summary.processes.entry(process).or_default();
        match record {
            Record::RunStart(start) => {
                entry.lives += 1;
                entry.command_line = start.args;
                if !summary.clock_sources.contains(&start.clock_source) {
                    summary.clock_sources.push(start.clock_source);
                }
            }
            Record::RunEnd(end) => entry.last_outcome = Some(end.outcome),
            Record::InputChunk(chunk) => summary.input_records += chunk.lines,
            Record::Output(output) => summary.output_lines += output.lines,
            _ => {}
        }
    }
    Ok(summary)
}

/// A UTC time as `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` (proleptic Gregorian).
pub fn format_utc_us(utc_us: u64) -> String {
    let seconds = utc_us / 1_000_000;
    let micros = utc_us % 1_000_000;
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        writeln!(f, "segments: {}, records: {}", r.segments, r.records)?;
        if let (Some(first), Some(last)) = (self.first_utc_us, self.last_utc_us) {
            writeln!(
                f,
                "time range: {} .. {} (UTC)",
                format_utc_us(first),
                format_utc_us(last)
            )?;
        }
        for source in &self.clock_sources {
            writeln!(f, "clock: {source}")?;
        }
        writeln!(
            f,
            "input records received: {}, output lines: {}",
            self.input_records, self.output_lines
        )?;
        let per_input = |bytes: u64| match self.input_records {
            0 => String::new(),
            n => format!(", {:.2} per input record", bytes as f64 / n as f64),
        };
        let total: u64 = self.kind_bytes.iter().sum();
        writeln!(f, "records by kind (count, framed bytes):")?;
        for ((name, count), bytes) in KIND_NAMES.iter().zip(self.kinds).zip(self.kind_bytes) {
            if count > 0 {
                writeln!(f, "  {name:<12} {count:>10} {bytes:>14}{}", per_input(bytes))?;
            }
        }
        writeln!(
            f,
            "  {:<12} {:>10} {total:>14}{}",
            "all",
            self.kinds.iter().sum::<u64>(),
            per_input(total)
        )?;
        writeln!(f, "processes:")?;
        for (process, p) in &self.processes {
            writeln!(
                f,
                "  process {process}: {} li{}, last ended: {}; command: {}",
                p.lives,
                if p.lives == 1 { "fe" } else { "ves" },
                p.last_outcome
                    .as_deref()
                    .unwrap_or("(no end recorded: still running, or it died)"),
                p.command_line.join(" ")
            )?;
        }
        for note in &r.torn_tails {
            writeln!(f, "note: {note}")?;
        }
        for problem in &r.problems {
            writeln!(f, "PROBLEM: {problem}")?;
        }
        Ok(())
    }
}

/// Reads a file of `verity audit digest` lines.
pub fn parse_digest(text: &str) -> Result<Vec<ChainHead>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| ChainHead::parse(line).ok_or_else(|| format!("not a digest line: `{line}`")))
        .collect()
}

/// How an app shows its notes: a line of text, and the input records the
/// note names (e.g. the quote a decision read), which a trace follows.
pub struct NoteView {
    pub text: String,
    pub refers_to: Vec<(&'static str, Id)>,
}

/// An app's note renderer (`NoteView` from a note's bytes).
pub type NoteRenderer<'a> = &'a dyn Fn(&[u8]) -> NoteView;

/// A whole audit log in memory, for queries.
pub struct Log {
    records: Vec<(u32, Record)>,
}

impl Log {
    /// Reads (and verifies) the whole log; the report says what, if
    /// anything, is wrong with it (records after a problem are not read).
    pub fn read(storage: &mut dyn Storage) -> io::Result<(Log, VerifyReport)> {
        let mut records = Vec::new();
        let report = verify(storage, &[], |process, body| {
            if let Ok(record) = Record::decode(body) {
                records.push((process, record));
            }
        })?;
        Ok((Log { records }, report))
    }

    /// The records of each process's newest life (from its last run start
    /// on), process by process, each in its order.
    pub fn newest_life(&self) -> Vec<(u32, &Record)> {
        let mut starts: BTreeMap<u32, usize> = BTreeMap::new();
        for (index, (process, record)) in self.records.iter().enumerate() {
            if matches!(record, Record::RunStart(_)) {
                starts.insert(*process, index);
            }
        }
        self.records
            .iter()
            .enumerate()
            .filter(|(index, (process, _))| starts.get(process).is_some_and(|start| index >= start))
            .map(|(_, (process, record))| (*process, record))
            .collect()
    }

    /// The command line of process 0's newest run start (the `verity run`
    /// that defined the job).
    pub fn command_line(&self) -> Option<&[String]> {
        self.records
            .iter()
            .filter_map(|(process, r)| match r {
                Record::RunStart(s) if *process == 0 => Some(s.args.as_slice()),
                _ => None,
            })
            .next_back()
    }

    /// Every record read, in the log's order (process by process).
    pub fn records(&self) -> impl DoubleEndedIterator<Item = &Record> {
        self.records.iter().map(|(_, r)| r)
    }

    fn shards_total(&self) -> u32 {
        self.records()
            .filter_map(|r| match r {
                Record::RunStart(s) => Some(s.shards_total),
                _ => None,
            })
            .next_back()
            .unwrap_or(1)
            .max(1)
    }

    /// The output batches that stand in the final output, in line order:
    /// process 0's `Output` records, where a life recovered from a
    /// checkpoint supersedes what an earlier life wrote after that
    /// checkpoint's output mark (the sink was rolled back to it). Within a
    /// life the batches chain line by line from where it began; a life may
    /// begin past where the batches before it end, where a crash lost the
    /// unsynced tail of the log (its output is named nowhere, so
    /// `output_line` cannot trace it). Errs where the line numbers do not
    /// chain, or a rollback lands inside a batch.
    pub fn standing_outputs(&self) -> Result<Vec<&Output>, String> {
        let mut standing: Vec<&Output> = Vec::new();
        let mut new_life = false;
        for (process, record) in &self.records {
            match record {
                Record::RunStart(_) if *process == 0 => new_life = true,
                Record::Output(output) if *process == 0 => {
                    let next = standing.last().map_or(1, |o| o.end_line());
                    if output.first_line != next && !new_life {
                        return Err(format!(
                            "output batch of lines {}..{} follows line {} in the same life",
                            output.first_line,
                            output.end_line(),
                            next - 1
                        ));
                    }
                    if output.first_line < next {
                        standing.retain(|o| o.first_line < output.first_line);
                        if let Some(cut) = standing.last().filter(|o| o.end_line() > output.first_line) {
                            return Err(format!(
                                "a recovered life writes from line {}, inside an earlier batch of lines {}..{}",
                                output.first_line,
                                cut.first_line,
                                cut.end_line()
                            ));
                        }
                    }
                    new_life = false;
                    standing.push(output);
                }
                _ => {}
            }
        }
        Ok(standing)
    }

    /// The input behind output line `line` (from 1), with the batch that
    /// wrote it: the newest batch that wrote that line (a recovered life's
    /// rewrite supersedes what an earlier life wrote past its checkpoint).
    pub fn output_line(&self, line: u64) -> Option<(&Output, Id)> {
        self.records().rev().find_map(|r| match r {
            Record::Output(o) if (o.first_line..o.end_line()).contains(&line) => {
                o.ids.get((line - o.first_line) as usize).map(|id| (o, *id))
            }
            _ => None,
        })
    }

    /// The input record whose note `matches` (e.g. an order id's decision).
    pub fn find_note(&self, matches: impl Fn(&[u8]) -> bool) -> Option<Id> {
        self.records().find_map(|r| match r {
            Record::Notes(n) => n.notes.iter().find(|(_, note)| matches(note)).map(|(id, _)| *id),
            _ => None,
        })
    }

    /// The full story of input record `id`: where it came in, every hop,
    /// what its processing read (and the story of what that names), what it
    /// produced or why it failed.
    pub fn trace_input(&self, id: Id, render: NoteRenderer<'_>) -> String {
        let mut out = String::new();
        self.trace_into(&mut out, id, render, None, 0);
        out
    }

    fn trace_into(
        &self,
        out: &mut String,
        id: Id,
        render: NoteRenderer<'_>,
        shard: Option<u32>,
        depth: usize,
    ) {
        use fmt::Write as _;
        let pad = "  ".repeat(depth);
        let Some(chunk) = self.records().find_map(|r| match r {
            Record::InputChunk(c) if c.holds(id.producer, id.seq) => Some(*c),
            _ => None,
        }) else {
            let _ = writeln!(out, "{pad}input {id}: no input chunk of the log holds it");
            return;
        };
        let start = self
            .records()
            .filter_map(|r| match r {
                Record::InputChunk(c)
                    if c.source == chunk.source
                        && c.partition == chunk.partition
                        && c.chunk < chunk.chunk =>
                {
                    Some(c.position_after.to_string())
                }
                _ => None,
            })
            .next_back()
            .unwrap_or_else(|| "its start".into());
        let _ = writeln!(
            out,
            "{pad}input {id}: source {} partition {} chunk {} (lines {}..{}), from {start} to {}, received {}",
            chunk.source,
            chunk.partition,
            chunk.chunk,
            chunk.first_line,
            chunk.end_line(),
            chunk.position_after,
            format_utc_us(chunk.utc_us)
        );
        let parser = (chunk.chunk % self.shards_total() as u64) as u32;
        let shard = shard.or_else(|| self.owner_of(id));
        let _ = writeln!(out, "{pad}  parsed by shard {parser}");
        // The story in time order; a note follows the batch it was taken
        // in, which names the exact batch that applied the record.
        let mut events: Vec<(u64, String)> = Vec::new();
        // Per shard, the unit its next notes were taken in: a batch it
        // applied, or timers it fired.
        let mut last_unit: BTreeMap<u32, &Record> = BTreeMap::new();
        let mut exact_batch = false;
        let mut chunk_batches = Vec::new();
        let mut referred = Vec::new();
        let applied_line = |a: &crate::record::Applied, which: &str| {
            let clock = a.clock_us.map_or(String::new(), |c| {
                format!("; its logic read the clock: {}", format_utc_us(c))
            });
            format!(
                "applied by shard {} at {} ({which}a batch of {} records from shard {}){clock}",
                a.shard,
                format_utc_us(a.utc_us),
                a.records,
                a.from
            )
        };
        for record in self.records() {
            match record {
                Record::Sent(s)
                    if s.source == chunk.source
                        && s.chunk == chunk.chunk
                        && shard.is_none_or(|o| s.to == o) =>
                {
                    events.push((
                        s.utc_us,
                        format!(
                            "sent by shard {} to shard {} at {} ({} records, channel seq {}..{})",
                            s.shard,
                            s.to,
                            format_utc_us(s.utc_us),
                            s.records,
                            s.first_seq,
                            s.first_seq.saturating_add(s.records)
                        ),
                    ));
                }
                Record::TimersFired(t) => {
                    last_unit.insert(t.shard, record);
                }
                Record::Applied(a) => {
                    last_unit.insert(a.shard, record);
                    if a.source == chunk.source
                        && a.chunk == chunk.chunk
                        && shard.is_none_or(|o| a.shard == o)
                    {
                        chunk_batches.push(a);
                    }
                }
                Record::Notes(n) => {
                    for (_, note) in n.notes.iter().filter(|(noted, _)| *noted == id) {
                        let view = render(note);
                        let at = match last_unit.get(&n.shard) {
                            Some(Record::Applied(a)) => {
                                exact_batch = true;
                                events.push((a.utc_us, applied_line(a, "")));
                                a.utc_us
                            }
                            Some(Record::TimersFired(t)) => {
                                events.push((
                                    t.utc_us,
                                    format!(
                                        "a timer of its key fired on shard {} at {} (one of {} due then)",
                                        t.shard,
                                        format_utc_us(t.utc_us),
                                        t.fired
                                    ),
                                ));
                                t.utc_us
                            }
                            _ => 0,
                        };
                        events.push((at, format!("read and decided (shard {}): {}", n.shard, view.text)));
                        referred.extend(view.refers_to.into_iter().map(|r| (r, n.shard)));
                    }
                }
                Record::Output(o) => {
                    for (index, _) in o.ids.iter().enumerate().filter(|(_, out_id)| **out_id == id) {
                        events.push((
                            o.utc_us,
                            format!(
                                "output line {} (shard {}), written at {}",
                                o.first_line.saturating_add(index as u64),
                                o.shard,
                                format_utc_us(o.utc_us)
                            ),
                        ));
                    }
                }
                Record::Failed(f) if f.id == id => {
                    events.push((
                        f.utc_us,
                        format!(
                            "FAILED at {}: {} (input: {:?})",
                            format_utc_us(f.utc_us),
                            f.reason,
                            String::from_utf8_lossy(&f.raw)
                        ),
                    ));
                }
                Record::StepFailed(f) if f.id == id => {
                    events.push((
                        f.utc_us,
                        format!("FAILED at {}: {}", format_utc_us(f.utc_us), step_failure(f)),
                    ));
                }
                _ => {}
            }
        }
        if !exact_batch {
            for a in chunk_batches {
                events.push((a.utc_us, applied_line(a, "in one of its chunk's batches: ")));
            }
        }
        events.sort_by_key(|(at, _)| *at);
        for (_, line) in events {
            let _ = writeln!(out, "{pad}  {line}");
        }
        if depth == 0 {
            for ((what, other), shard) in referred {
                let _ = writeln!(out, "{pad}  the {what} it read:");
                self.trace_into(out, other, render, Some(shard), depth + 2);
            }
        }
    }

    /// The shard that owns `id`'s key, where a note or an output says.
    fn owner_of(&self, id: Id) -> Option<u32> {
        self.records().find_map(|r| match r {
            Record::Notes(n) if n.notes.iter().any(|(noted, _)| *noted == id) => Some(n.shard),
            Record::Output(o) if o.ids.contains(&id) => Some(o.shard),
            _ => None,
        })
    }

    /// Every failed record, with where its input lay.
    pub fn errors(&self) -> (u64, String) {
        use fmt::Write as _;
        let mut out = String::new();
        let mut count = 0;
        for record in self.records() {
            if let Record::Failed(f) = record {
                count += 1;
                let chunk = self.records().find_map(|r| match r {
                    Record::InputChunk(c) if c.holds(f.id.producer, f.id.seq) => Some(*c),
                    _ => None,
                });
                let place = chunk.map_or(String::new(), |c| {
                    format!(" in chunk {} (received {})", c.chunk, format_utc_us(c.utc_us))
                });
                let _ = writeln!(
                    out,
                    "input {}{place}: {} at {}; the record: {:?}",
                    f.id,
                    f.reason,
                    format_utc_us(f.utc_us),
                    String::from_utf8_lossy(&f.raw)
                );
            }
            if let Record::StepFailed(f) = record {
                count += 1;
                let _ = writeln!(
                    out,
                    "input {}: at {}: {}",
                    f.id,
                    format_utc_us(f.utc_us),
                    step_failure(f)
                );
            }
        }
        (count, out)
    }
}

/// How a failure in the keyed step reads: where, why, and the key and
/// state it met (their `Wire` bytes: text shows as text).
fn step_failure(f: &crate::record::StepFailed) -> String {
    format!(
        "the keyed step on shard {} {}: {}; key {:?}, state {:?}",
        f.shard,
        if f.panicked { "panicked" } else { "failed it" },
        f.reason,
        String::from_utf8_lossy(&f.key),
        String::from_utf8_lossy(&f.state)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_format_like_iso_8601() {
        assert_eq!(format_utc_us(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_utc_us(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(
            format_utc_us(1_796_083_199_999_999),
            "2026-11-30T23:59:59.999999Z"
        );
    }

    fn start() -> Record {
        Record::RunStart(crate::record::RunStart {
            utc_us: 0,
            process: 0,
            incarnation: 1,
            version: String::new(),
            clock_source: String::new(),
            user: String::new(),
            host: String::new(),
            args: Vec::new(),
            shards_total: 1,
            first_shard: 0,
            shards: 1,
            batch_max: 1,
        })
    }

    fn batch(first_line: u64, lines: u64) -> Record {
        Record::Output(Output {
            utc_us: 0,
            shard: 0,
            first_line,
            lines,
            bytes: lines,
            crc32c: 0,
            ids: Vec::new(),
        })
    }

    fn standing(records: Vec<Record>) -> Result<Vec<(u64, u64)>, String> {
        let log = Log {
            records: records.into_iter().map(|r| (0, r)).collect(),
        };
        let batches = log.standing_outputs()?;
        Ok(batches.iter().map(|o| (o.first_line, o.end_line())).collect())
    }

    #[test]
    fn a_recovered_life_supersedes_what_was_written_past_its_checkpoint() {
        let rolled_back = vec![
            start(),
            batch(1, 3),
            batch(4, 2),
            batch(6, 4),
            start(),
            batch(6, 1),
            batch(7, 5),
        ];
        assert_eq!(standing(rolled_back), Ok(vec![(1, 4), (4, 6), (6, 7), (7, 12)]));
        // A crash lost the log's tail (lines 4..6): the next life goes on
        // from its checkpoint past it.
        let lost_tail = vec![start(), batch(1, 3), start(), batch(6, 2)];
        assert_eq!(standing(lost_tail), Ok(vec![(1, 4), (6, 8)]));
    }

    #[test]
    fn batches_that_do_not_chain_are_named() {
        let gap = standing(vec![start(), batch(1, 3), batch(5, 1)]).unwrap_err();
        assert!(
            gap.contains("lines 5..6 follows line 3 in the same life"),
            "{gap}"
        );
        let overlap = standing(vec![start(), batch(1, 3), batch(3, 1)]).unwrap_err();
        assert!(overlap.contains("follows line 3"), "{overlap}");
        let inside = standing(vec![start(), batch(1, 3), start(), batch(2, 1)]).unwrap_err();
        assert!(
            inside.contains("from line 2, inside an earlier batch of lines 1..4"),
            "{inside}"
        );
    }

    fn id(seq: u64) -> Id {
        Id {
            producer: 0,
            part: 0,
            seq,
        }
    }

    #[test]
    fn the_newest_batch_to_write_a_line_traces_it() {
        let mut old = Output {
            utc_us: 0,
            shard: 0,
            first_line: 1,
            lines: 2,
            bytes: 2,
            crc32c: 0,
            ids: vec![id(7), id(8)],
        };
        let mut new = old.clone();
        new.ids = vec![id(9), id(10)];
        old.shard = 1;
        let log = Log {
            records: vec![
                (0, start()),
                (0, Record::Output(old)),
                (0, start()),
                (0, Record::Output(new)),
            ],
        };
        assert_eq!(log.output_line(2).map(|(_, id)| id), Some(id(10)));
    }

    #[test]
    fn digests_parse_and_bad_lines_are_named() {
        let line = format!("process 2 records 7 head {}", "ab".repeat(32));
        let heads = parse_digest(&format!("{line}\n\n")).unwrap();
        assert_eq!((heads[0].process, heads[0].records), (2, 7));
        assert!(parse_digest("garbage").unwrap_err().contains("garbage"));
    }
}
