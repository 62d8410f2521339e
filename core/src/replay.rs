//! Replay: re-runs a recorded run from its inputs and its audit log, and
//! proves it wrote the same output byte for byte.
//!
//! What the input does not determine, the audit log holds: the order in
//! which each shard applied its units (batches of one source's records: the
//! interleaving of streams), the clock reading each unit's logic used, the
//! chunks each source was cut into, and the order in which the output
//! thread wrote the shards' output. This driver runs every shard of the
//! dataflow in one thread, `ShardCore` unchanged but for
//! `follow_schedule`: each shard applies its units in the recorded order
//! with the recorded readings, and the output is merged in the recorded
//! order and checked against each recorded batch's length and checksum.
//! Timers fire where the recorded run fired them (its `timers-fired`
//! units), with the recorded clock reading.
//!
//! A cluster's run replays from the logs of all its processes in one
//! directory. A life that recovered from a checkpoint replays from that
//! checkpoint, read back from the run's state dir (`restore_from`): every
//! shard restored from its part, every source reopened at its cut, and
//! the life's own units, readings and output batches followed from there.

use crate::audit::UnitSource;
use crate::checkpoint::{Restart, SourceMeta};
use crate::connector::{Position, Pull, SourceReader};
use crate::flow::Dataflow;
use crate::key::Key;
use crate::shard::{Batch, Effect, ShardCore, ShardLimits};
use crate::source::{ChunkData, SourceEvent};
use crate::wire::Wire;
use crate::State;
use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{self, Write};
use verity_audit::record::{InputChunk, Output, Recovery, RunStart, StreamPosition};
use verity_audit::Record;
use verity_state::storage::Storage;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The log cannot be replayed (it does not verify, or holds what a
    /// replay does not cover yet).
    #[error("{0}")]
    Log(String),
    /// The input given is not the recorded run's.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What a recorded run's audit log says a replay must reproduce.
pub struct RecordedRun {
    pub start: RunStart,
    /// Per shard: its units with records, in the order it applied them,
    /// and the clock reading of each.
    units: Vec<(VecDeque<UnitSource>, VecDeque<Option<u64>>)>,
    /// Per source: its chunks of this life, in order (a recovered life's
    /// start at its checkpoint's cut).
    chunks: Vec<Vec<InputChunk>>,
    /// The output batches, in the order they were written.
    outputs: Vec<Output>,
    pub outcome: String,
    /// The checkpoint the newest life recovered from (process 0's
    /// `recovery` record), if it did.
    pub recovered_from: Option<Recovery>,
    /// That checkpoint, once `restore_from` read it back.
    restart: Option<Restart>,
}

impl RecordedRun {
    /// Reads the newest life of every process in the log (verifying the
    /// whole log first): process 0's inputs and output order, and every
    /// shard's units from the process that ran it.
    pub fn read(storage: &mut dyn Storage) -> Result<RecordedRun, ReplayError> {
        let (log, report) = verity_audit::query::Log::read(storage)?;
        if let Some(problem) = report.problems.first() {
            return Err(ReplayError::Log(format!(
                "the audit log does not verify ({problem}); `verity audit verify` says more"
            )));
        }
        let life = log.newest_life();
        let Some(start) = life.iter().find_map(|(process, record)| match record {
            Record::RunStart(start) if *process == 0 => Some(start.clone()),
            _ => None,
        }) else {
            return Err(ReplayError::Log("the log has no run start of process 0".into()));
        };
        // The log is outside input: a layout no run can have is refused,
        // not allocated.
        let shards_ok = (1..=crate::cluster::CLUSTER_SHARDS_MAX).contains(&start.shards_total);
        if !shards_ok || !(1..=crate::shard::BATCH_MAX_LIMIT as u32).contains(&start.batch_max) {
            return Err(ReplayError::Log(format!(
                "the recorded run start names {} shards and batches of {} records: no run has that layout",
                start.shards_total, start.batch_max
            )));
        }
        let mut run = RecordedRun {
            units: (0..start.shards_total).map(|_| Default::default()).collect(),
            start,
            chunks: Vec::new(),
            outputs: Vec::new(),
            outcome: String::new(),
            recovered_from: None,
            restart: None,
        };
        let mut shards_covered = 0;
        for (process, record) in life {
            run.take(process, record, &mut shards_covered)?;
        }
        if shards_covered != run.start.shards_total {
            return Err(ReplayError::Log(format!(
                "the log holds the newest lives of processes running {shards_covered} of the run's {} shards: \
                 every process of a cluster must keep its audit log in the same directory (`verity worker --audit DIR`)",
                run.start.shards_total
            )));
        }
        if run.outcome.is_empty() {
            return Err(ReplayError::Log(
                "the newest life has no end recorded (still running, or it died): nothing complete to replay"
                    .into(),
            ));
        }
        if run.outcome.starts_with("failed") {
            return Err(ReplayError::Log(format!(
                "the recorded run {}: its output is not complete",
                run.outcome
            )));
        }
        Ok(run)
    }

    /// One record of a process's newest life.
    fn take(&mut self, process: u32, record: &Record, shards_covered: &mut u32) -> Result<(), ReplayError> {
        match record {
            Record::RunStart(start) => {
                if start.shards_total != self.start.shards_total {
                    return Err(ReplayError::Log(format!(
                        "process {process}'s newest life ran a cluster of {} shards, process 0's of {}: not one run",
                        start.shards_total, self.start.shards_total
                    )));
                }
                *shards_covered += start.shards;
            }
            Record::Applied(a) => {
                let shard = self.units.get_mut(a.shard as usize).ok_or_else(|| {
                    ReplayError::Log(format!(
                        "a batch applied by shard {}, which the run did not have",
                        a.shard
                    ))
                })?;
                let unit = UnitSource {
                    source: a.source,
                    from: a.from,
                    chunk: a.chunk,
                    first_seq: a.first_seq,
                };
                shard.0.push_back(unit);
                shard.1.push_back(a.clock_us);
            }
            Record::TimersFired(t) => {
                let shard = self.units.get_mut(t.shard as usize).ok_or_else(|| {
                    ReplayError::Log(format!(
                        "timers fired by shard {}, which the run did not have",
                        t.shard
                    ))
                })?;
                shard.0.push_back(UnitSource::timers(t.shard, t.fired));
                shard.1.push_back(Some(t.utc_us));
            }
            Record::InputChunk(c) => {
                let source = c.source as usize;
                if self.chunks.len() <= source {
                    self.chunks.resize_with(source + 1, Vec::new);
                }
                let chunks = &self.chunks[source];
                // The first is checked against where the life began (`replay`).
                if chunks.last().is_some_and(|last| c.chunk != last.chunk + 1) {
                    return Err(ReplayError::Log(format!(
                        "source {source}'s chunk {} is recorded out of order",
                        c.chunk
                    )));
                }
                self.chunks[source].push(*c);
            }
            Record::Output(o) => self.outputs.push(o.clone()),
            Record::Recovery(r) if process == 0 && self.recovered_from.replace(*r).is_some() => {
                return Err(ReplayError::Log(
                    "process 0's newest life recovered twice: not a life a run has".into(),
                ));
            }
            Record::RunEnd(end) if process == 0 => self.outcome = end.outcome.clone(),
            Record::RunEnd(end) if end.outcome.starts_with("failed") => {
                return Err(ReplayError::Log(format!("process {process} {}", end.outcome)))
            }
            _ => {}
        }
        Ok(())
    }

    /// The sources the recorded run read (that took in any chunk).
    pub fn sources_read(&self) -> usize {
        self.chunks.len()
    }

    /// Reads back, from the run's state dir, the checkpoint the newest life
    /// recovered from (nothing to do for a life that did not recover).
    pub fn restore_from(&mut self, state_dir: impl Storage) -> Result<(), ReplayError> {
        let Some(recovery) = self.recovered_from else {
            return Ok(());
        };
        let restart = crate::checkpoint::read_checkpoint(state_dir, recovery.store_id, self.start.shards_total)
            .map_err(|e| {
                ReplayError::Log(format!(
                    "the newest life recovered from checkpoint {} (store id {}), which the state dir cannot give \
                     back ({e}): a replay of a recovered life restores from it (the life keeps it while it runs)",
                    recovery.checkpoint, recovery.store_id
                ))
            })?;
        if restart.meta.checkpoint != recovery.checkpoint {
            return Err(ReplayError::Log(format!(
                "store id {} holds checkpoint {}, but the newest life recovered from checkpoint {}: \
                 another run's state dir",
                recovery.store_id, restart.meta.checkpoint, recovery.checkpoint
            )));
        }
        self.restart = Some(restart);
        Ok(())
    }

    /// Output lines written before the newest life began (its checkpoint's;
    /// 0 for a life that did not recover): the replay writes those after.
    pub fn output_lines_before(&self) -> u64 {
        self.restart.as_ref().map_or(0, |r| r.meta.output_lines)
    }

    /// Where source `source` begins in this life: its first chunk, each
    /// partition's position, and whether it had ended.
    fn source_start(&self, source: usize) -> Result<SourceStart, ReplayError> {
        let start = match self.restart.as_ref().map(|r| r.meta.sources.get(source)) {
            None => SourceStart::default(),
            Some(None) => {
                return Err(ReplayError::Log(format!(
                    "the checkpoint the life recovered from has no source {source}"
                )))
            }
            Some(Some(SourceMeta::At(cut))) => SourceStart {
                first_chunk: cut.next_chunk,
                positions: cut.positions.clone(),
                ended: false,
            },
            Some(Some(SourceMeta::Ended { chunks })) => SourceStart {
                first_chunk: *chunks,
                positions: Vec::new(),
                ended: true,
            },
        };
        let recorded = self.chunks.get(source).and_then(|c| c.first());
        match recorded {
            Some(first) if first.chunk != start.first_chunk || start.ended => {
                Err(ReplayError::Log(format!(
                "source {source}'s first chunk in the newest life is {}, where the life began at chunk {}{}",
                first.chunk,
                start.first_chunk,
                if start.ended { " after the source had ended" } else { "" }
            )))
            }
            _ => Ok(start),
        }
    }
}

/// Where a source begins in the life replayed.
#[derive(Default)]
struct SourceStart {
    first_chunk: u64,
    /// Each partition's position at the cut (one not listed: its start).
    positions: Vec<(u32, Position)>,
    ended: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub lines: u64,
    pub bytes: u64,
    /// Units applied in the recorded order.
    pub units: u64,
    /// The first place the replay differs from the recorded run.
    pub divergence: Option<String>,
}

/// Re-cuts a source's input into the recorded chunks.
struct Rechunker {
    source: u32,
    partitions: Vec<(Box<dyn SourceReader>, Vec<u8>, bool)>,
    recorded: Vec<InputChunk>,
    next: usize,
    /// The index of `recorded[0]` (a recovered life's start at its cut).
    first_chunk: u64,
}

impl Rechunker {
    /// The index of the next chunk to deal.
    fn next_chunk(&self) -> u64 {
        self.first_chunk + self.next as u64
    }
}

impl Rechunker {
    fn next_event(&mut self) -> Result<Option<SourceEvent>, ReplayError> {
        let Some(chunk) = self.recorded.get(self.next).copied() else {
            return Ok(None);
        };
        self.next += 1;
        let partition = self.partitions.get_mut(chunk.partition as usize).ok_or_else(|| {
            ReplayError::Input(format!(
                "source {} has no partition {}, which the recorded run read",
                self.source, chunk.partition
            ))
        })?;
        let (reader, pending, ended) = partition;
        let want =
            usize::try_from(chunk.bytes).map_err(|_| ReplayError::Log("a chunk beyond memory".into()))?;
        while pending.len() < want && !*ended {
            match reader
                .next_chunk()
                .map_err(|e| ReplayError::Input(e.to_string()))?
            {
                Pull::Chunk(c) => match c.data {
                    ChunkData::Lines(bytes) => pending.extend_from_slice(&bytes),
                    ChunkData::Oversized { .. } => {
                        return Err(ReplayError::Input(
                            "the input holds a line over the size limit: replay does not cover those yet"
                                .into(),
                        ))
                    }
                },
                Pull::Idle => {}
                Pull::End => *ended = true,
            }
        }
        let input_differs = |what: String| {
            ReplayError::Input(format!(
                "the input differs from the recorded run's at source {} chunk {} (line {}): {what}",
                self.source, chunk.chunk, chunk.first_line
            ))
        };
        if pending.len() < want {
            return Err(input_differs(format!(
                "it ends {} bytes early",
                want - pending.len()
            )));
        }
        let data = Bytes::copy_from_slice(&pending[..want]);
        pending.drain(..want);
        let data = ChunkData::Lines(data);
        if data.line_count() != chunk.lines {
            return Err(input_differs(format!(
                "{} lines where the run read {}",
                data.line_count(),
                chunk.lines
            )));
        }
        Ok(Some(SourceEvent::Chunk {
            source: self.source,
            index: chunk.chunk,
            first_line: chunk.first_line,
            data,
            partition: chunk.partition,
            position: match chunk.position_after {
                StreamPosition::Text { bytes, lines } => Position::Text { bytes, lines },
                StreamPosition::Log { offset } => Position::Log { offset },
            },
            epoch: 0,
        }))
    }
}

/// The output each shard produced, not yet matched to a recorded batch.
#[derive(Default)]
struct ShardOutput {
    bytes: Vec<u8>,
    read: usize,
}

impl ShardOutput {
    /// The next `lines` lines, if they are all here.
    fn take_lines(&mut self, lines: u64) -> Option<&[u8]> {
        let rest = &self.bytes[self.read..];
        let end = match lines {
            0 => 0,
            n => memchr::memchr_iter(b'\n', rest).nth(n as usize - 1)? + 1,
        };
        let start = self.read;
        self.read += end;
        Some(&self.bytes[start..start + end])
    }

    fn compact(&mut self) {
        if self.read > 1 << 20 {
            self.bytes.drain(..self.read);
            self.read = 0;
        }
    }

    fn is_empty(&self) -> bool {
        self.read == self.bytes.len()
    }
}

/// Replays `run` with `flow` (built from the recorded run's app and
/// options, over the given inputs), writing the replayed output to `out`.
pub fn replay<K, V, S, O>(
    flow: Dataflow<K, V, S, O>,
    mut run: RecordedRun,
    out: &mut dyn Write,
) -> Result<ReplayReport, ReplayError>
where
    K: Key + Wire,
    V: Send + 'static,
    S: State,
    O: 'static,
{
    let Dataflow { sources, logic } = flow;
    if sources.len() < run.chunks.len() {
        return Err(ReplayError::Input(format!(
            "the recorded run read {} sources; this dataflow has {}",
            run.chunks.len(),
            sources.len()
        )));
    }
    run.chunks.resize_with(sources.len(), Vec::new);
    let shards = run.start.shards_total;
    let n = shards as usize;
    let limits = ShardLimits {
        batch_max: run.start.batch_max as usize,
        ..ShardLimits::default()
    };
    let mut cores = ShardCore::build_range(&logic, shards, 0..shards, limits);
    if let Some(recovery) = run.recovered_from {
        let Some(restart) = &run.restart else {
            return Err(ReplayError::Log(format!(
                "the newest life recovered from checkpoint {}: give the run's state dir, whose checkpoint \
                 the replay restores from",
                recovery.checkpoint
            )));
        };
        for (core, chain) in cores.iter_mut().zip(&restart.parts) {
            core.restore(chain).map_err(|e| {
                ReplayError::Log(format!(
                    "cannot restore from checkpoint {}: {e}",
                    recovery.checkpoint
                ))
            })?;
        }
    }
    let starts = (0..sources.len())
        .map(|source| run.source_start(source))
        .collect::<Result<Vec<_>, _>>()?;
    let units_total: usize = run.units.iter().map(|(units, _)| units.len()).sum();
    for (core, (units, readings)) in cores.iter_mut().zip(std::mem::take(&mut run.units)) {
        core.follow_schedule(units, readings);
    }
    let mut rechunkers = Vec::new();
    for (index, ((spec, recorded), start)) in sources
        .into_iter()
        .zip(std::mem::take(&mut run.chunks))
        .zip(starts)
        .enumerate()
    {
        let name = spec.name.clone();
        let mut connector = spec.connector;
        let count = connector
            .partitions()
            .map_err(|e| ReplayError::Input(e.to_string()))?;
        let at = |partition: u32| {
            start
                .positions
                .iter()
                .find(|(p, _)| *p == partition)
                .map(|(_, position)| *position)
        };
        let partitions = (0..count)
            .map(|p| Ok((connector.open(&name, p, at(p))?, Vec::new(), false)))
            .collect::<Result<Vec<_>, crate::connector::SourceError>>()
            .map_err(|e| ReplayError::Input(format!("cannot open {name}: {e}")))?;
        rechunkers.push(Rechunker {
            source: index as u32,
            partitions,
            recorded,
            next: 0,
            first_chunk: start.first_chunk,
        });
    }
    let source_count = rechunkers.len();
    let mut chunk_queues: Vec<VecDeque<SourceEvent>> =
        (0..source_count * n).map(|_| VecDeque::new()).collect();
    let mut ended = vec![false; source_count];
    let mut batches: Vec<VecDeque<Batch<K, V>>> =
        (0..source_count * n * n).map(|_| VecDeque::new()).collect();
    let batch_queue =
        |source: u32, from: u32, to: u32| (source as usize * n + from as usize) * n + to as usize;
    let mut outputs: Vec<ShardOutput> = (0..n).map(|_| ShardOutput::default()).collect();
    let mut recorded_outputs = std::mem::take(&mut run.outputs).into_iter().peekable();
    let mut report = ReplayReport::default();
    let mut awaited = Vec::new();
    loop {
        // Deal each source's chunks a few ahead of each shard.
        for (source, rechunker) in rechunkers.iter_mut().enumerate() {
            while !ended[source] {
                let next = rechunker.next_chunk();
                let dealt_to = source * n + (next % n as u64) as usize;
                if chunk_queues[dealt_to].len() >= 2 {
                    break;
                }
                match rechunker.next_event()? {
                    Some(event) => chunk_queues[dealt_to].push_back(event),
                    None => {
                        ended[source] = true;
                        for shard in 0..n {
                            chunk_queues[source * n + shard].push_back(SourceEvent::End {
                                source: source as u32,
                                chunks: next,
                            });
                        }
                    }
                }
            }
        }
        let mut moved = false;
        for (a, core) in cores.iter_mut().enumerate() {
            if core.is_finished() {
                continue;
            }
            let units_before = core.schedule_front();
            for source in 0..source_count {
                while core.wants_chunk(source as u32) {
                    let Some(event) = chunk_queues[source * n + a].pop_front() else {
                        break;
                    };
                    core.on_source_event(event);
                    moved = true;
                }
            }
            // Another shard's batch with records goes in only at its place
            // in the schedule; an empty one (a chunk's end) any time.
            'batches: loop {
                core.awaited_senders(&mut awaited);
                for &(source, from) in &awaited {
                    let queue = &mut batches[batch_queue(source, from, a as u32)];
                    let Some(batch) = queue.front() else { continue };
                    let unit = UnitSource {
                        source,
                        from,
                        chunk: batch.chunk,
                        first_seq: batch.first_seq,
                    };
                    if batch.records.is_empty() || core.schedule_front() == Some(unit) {
                        let batch = queue.pop_front().expect("front exists");
                        core.on_batch(batch);
                        moved = true;
                        continue 'batches;
                    }
                }
                break;
            }
            core.resume_scheduled();
            // Two timer units in a row look alike in the schedule: firing
            // one is progress even when the front looks unchanged.
            moved |= core.fire_due_timers();
            moved |= core.schedule_front() != units_before;
            if let Some(why) = core.schedule_divergence() {
                report.divergence = Some(why);
                return Ok(report);
            }
            for effect in core.drain_effects() {
                match effect {
                    Effect::Send { to, batch } => {
                        batches[batch_queue(batch.source, batch.from, to)].push_back(batch)
                    }
                    Effect::Output(batch) => outputs[a].bytes.extend_from_slice(&batch.lines),
                    Effect::SourceFailed { source, error } => {
                        return Err(ReplayError::Input(format!("source {source} failed: {error}")))
                    }
                    Effect::DeadLetter(_) | Effect::Checkpoint(_) | Effect::Audit(_) => {}
                }
            }
        }
        // Write the output in the recorded order, checking each batch.
        while let Some(recorded) = recorded_outputs.peek() {
            let Some(shard) = outputs.get_mut(recorded.shard as usize) else {
                report.divergence = Some(format!("the recorded output names shard {}", recorded.shard));
                return Ok(report);
            };
            let Some(lines) = shard.take_lines(recorded.lines) else {
                break;
            };
            if lines.len() as u64 != recorded.bytes || crc32c::crc32c(lines) != recorded.crc32c {
                report.divergence = Some(format!(
                    "output lines {}..{} (shard {}'s batch) differ from the recorded run's: {} bytes replayed, {} recorded",
                    recorded.first_line,
                    recorded.end_line(),
                    recorded.shard,
                    lines.len(),
                    recorded.bytes
                ));
                return Ok(report);
            }
            out.write_all(lines)?;
            report.lines += recorded.lines;
            report.bytes += recorded.bytes;
            shard.compact();
            recorded_outputs.next();
        }
        if cores.iter().all(ShardCore::is_finished) {
            break;
        }
        if !moved {
            let waiting: Vec<String> = cores
                .iter()
                .filter(|c| !c.is_finished())
                .map(|c| format!("shard {} waits to apply {:?}", c.index(), c.schedule_front()))
                .collect();
            report.divergence = Some(format!("the replay cannot go on: {}", waiting.join("; ")));
            return Ok(report);
        }
    }
    report.units = units_total as u64;
    if let Some(left) = recorded_outputs.next() {
        report.divergence = Some(format!(
            "the recorded run wrote output from line {} on (shard {}) that the replay did not",
            left.first_line, left.shard
        ));
    } else if let Some((shard, _)) = outputs.iter().enumerate().find(|(_, o)| !o.is_empty()) {
        report.divergence = Some(format!(
            "the replay wrote output of shard {shard} after line {} that the recorded run did not",
            report.lines
        ));
    }
    out.flush()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use verity_audit::record::RunEnd;
    use verity_audit::{SegmentWriter, WriterLimits};
    use verity_state::storage::DirStorage;

    fn start(shards_total: u32, batch_max: u32) -> RunStart {
        RunStart {
            utc_us: 1,
            process: 0,
            incarnation: 0,
            version: "test".into(),
            clock_source: "manual".into(),
            user: "u".into(),
            host: "h".into(),
            args: vec!["verity".into()],
            shards_total,
            first_shard: 0,
            shards: shards_total,
            batch_max,
        }
    }

    #[test]
    fn a_log_naming_an_impossible_layout_is_refused_not_allocated() {
        for (shards, batch_max) in [(0, 1024), (u32::MAX, 1024), (2, 0), (2, u32::MAX)] {
            let dir = tempfile::tempdir().unwrap();
            let storage = Box::new(DirStorage::open(dir.path()).unwrap());
            let mut writer = SegmentWriter::open(storage, 0, WriterLimits::default()).unwrap();
            let end = Record::RunEnd(RunEnd {
                utc_us: 2,
                outcome: "done".into(),
                records_in: 0,
                records_out: 0,
                dead_lettered: 0,
            });
            for record in [Record::RunStart(start(shards, batch_max)), end] {
                let mut body = Vec::new();
                record.encode(&mut body);
                writer.push(&body).unwrap();
            }
            writer.write().unwrap();
            let read = RecordedRun::read(&mut DirStorage::open(dir.path()).unwrap());
            let Err(ReplayError::Log(why)) = read else {
                panic!("{shards} shards, batches of {batch_max}: accepted");
            };
            assert!(why.contains("no run has that layout"), "{why}");
        }
    }
}
