//! Sinks as the runtime sees them: what a run writes to (`SinkSpec`,
//! `DeadLetterSpec`, opened into `SinkConnector`s — see `connector`), the
//! buffers shards hand over (`OutputBatch`), and the output thread: the only
//! place output and dead letters touch files, sockets or the terminal.

use crate::checkpoint::{Checkpointer, JobMeta, SinkMarks};
use crate::connector::sinks::{FileSink, NullSink, WriteSink};
use crate::connector::tcp_sink::{Release, TcpSinkOptions};
use crate::connector::{CommitId, SinkConnector, SinkContext, SinkError};
use crate::ids::MsgId;
use crate::line::DeadLetter;
use crate::source::ReaderProgress;
use bytes::Bytes;
use std::collections::VecDeque;
use std::fmt;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use verity_state::checkpoint::CheckpointError;

pub use crate::connector::sinks::TCP_CONNECT_TIMEOUT;

/// Opens a sink from another crate, on the process and in the job the
/// context names.
pub type OpenSink = Arc<dyn Fn(&SinkContext) -> Result<Box<dyn SinkConnector>, SinkError> + Send + Sync>;

/// A sink connector from outside `core`, opened when the run starts (on
/// every process, each with its own context, if it is
/// `written_by_every_process`).
#[derive(Clone)]
pub struct CustomSink {
    pub name: String,
    open: OpenSink,
}

impl CustomSink {
    pub fn new(
        name: &str,
        open: impl Fn(&SinkContext) -> Result<Box<dyn SinkConnector>, SinkError> + Send + Sync + 'static,
    ) -> Self {
        CustomSink {
            name: name.into(),
            open: Arc::new(open),
        }
    }

    pub fn open(&self, context: &SinkContext) -> Result<Box<dyn SinkConnector>, SinkError> {
        (self.open)(context)
    }
}

impl fmt::Debug for CustomSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomSink({})", self.name)
    }
}

impl PartialEq for CustomSink {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.open, &other.open)
    }
}

impl Eq for CustomSink {}

/// Where output lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    Stdout,
    File(PathBuf),
    /// Connect to this address and write lines.
    Tcp(String),
    /// Discard (benchmarks): outputs are still computed and formatted.
    Null,
    /// A connector from another crate (see `connector::Connectors`).
    Custom(CustomSink),
}

impl SinkSpec {
    /// Parses a command-line sink with the built-in connectors: `-` is
    /// stdout, `null` discards, `tcp:HOST:PORT` connects, else a file.
    /// (`Connectors::sink` also knows registered schemes and refuses unknown
    /// ones; here they are file names.)
    pub fn parse(arg: &str) -> SinkSpec {
        crate::connector::Connectors::built_in()
            .sink(arg)
            .unwrap_or_else(|_| SinkSpec::File(arg.into()))
    }

    /// Where dead letters go by default: beside a file output, else stderr.
    pub fn default_dead_letter(&self) -> DeadLetterSpec {
        match self {
            SinkSpec::File(path) => {
                let mut name = path.as_os_str().to_owned();
                name.push(".dead-letter");
                DeadLetterSpec::File(PathBuf::from(name))
            }
            _ => DeadLetterSpec::Stderr,
        }
    }

    /// Opens the sink now, so a bad path or an unreachable address fails
    /// before any input is read.
    pub fn open(&self, context: &SinkContext) -> Result<Box<dyn SinkConnector>, SinkError> {
        Ok(match self {
            SinkSpec::Stdout => Box::new(WriteSink::stdout()),
            SinkSpec::File(path) => Box::new(FileSink::create(path)?),
            SinkSpec::Tcp(address) => Box::new(WriteSink::connect(address)?),
            SinkSpec::Null => Box::new(NullSink),
            SinkSpec::Custom(custom) => custom.open(context)?,
        })
    }

    /// Opens the sink of a run with checkpoints: to continue an earlier run
    /// if `resuming` (`SinkConnector::resume` follows: a file is not
    /// truncated here), and, exactly-once, the TCP sink with its lines
    /// staged at the receiver until commits.
    pub fn open_checkpointed(
        &self,
        resuming: bool,
        delivery: crate::runtime::Delivery,
        context: &SinkContext,
    ) -> Result<Box<dyn SinkConnector>, SinkError> {
        match self {
            SinkSpec::File(path) if resuming => Ok(Box::new(FileSink::for_resume(path, "output"))),
            SinkSpec::Tcp(address) if delivery == crate::runtime::Delivery::ExactlyOnce => {
                Ok(Box::new(WriteSink::connect_with(
                    address,
                    TcpSinkOptions {
                        release: Release::OnCommit,
                        ..TcpSinkOptions::default()
                    },
                )?))
            }
            other => other.open(context),
        }
    }
}

/// Where rejected records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterSpec {
    Stderr,
    /// Created on the first letter, so a clean run leaves none behind.
    File(PathBuf),
    /// A connector from another crate; it gets each letter as one line.
    Custom(CustomSink),
}

impl DeadLetterSpec {
    pub fn parse(arg: &str) -> DeadLetterSpec {
        if arg == "-" {
            DeadLetterSpec::Stderr
        } else {
            DeadLetterSpec::File(PathBuf::from(arg))
        }
    }

    /// Opens the dead-letter sink (a stale file is removed now).
    pub fn open(&self, context: &SinkContext) -> Result<Box<dyn SinkConnector>, SinkError> {
        Ok(match self {
            DeadLetterSpec::Stderr => Box::new(WriteSink::stderr()),
            DeadLetterSpec::File(path) => {
                Box::new(FileSink::create_on_first_write(path, "dead-letter file")?)
            }
            DeadLetterSpec::Custom(custom) => custom.open(context)?,
        })
    }
    /// Opens the dead letters' sink to continue an earlier run.
    pub fn open_resuming(&self, context: &SinkContext) -> Result<Box<dyn SinkConnector>, SinkError> {
        match self {
            DeadLetterSpec::File(path) => Ok(Box::new(FileSink::for_resume(path, "dead-letter file"))),
            other => other.open(context),
        }
    }
}

/// A buffer of whole output lines and, when the sink asked for them, the id
/// of the input record behind each line (`ids[i]` for line `i`; else empty).
/// It derefs to the lines, so code that only moves bytes need not change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputBatch<B = Vec<u8>> {
    pub lines: B,
    pub ids: Vec<MsgId>,
}

impl<B: AsRef<[u8]>> Deref for OutputBatch<B> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.lines.as_ref()
    }
}

/// What shards (and relays of remote shards) send to the output thread.
#[derive(Debug)]
pub enum OutputMessage {
    Lines(OutputBatch),
    /// Lines of a remote shard, as they came off the network.
    Relayed(OutputBatch<Bytes>),
    DeadLetter(DeadLetter),
    /// A local shard's part of a checkpoint, after the output that belongs
    /// to it.
    Checkpoint(crate::shard::CheckpointPart),
    /// A worker's own sink took a checkpoint's barrier (a sink written by
    /// every process, `member_sink`): its resume mark there. Not shard
    /// output: it is never held back behind a part.
    MemberMark(crate::member_sink::MemberMark),
}

/// Writes dead letters as `<source>:<line>: <reason>: <raw record>`, one line
/// each, with the letter's id, into a sink.
pub struct DeadLetterWriter {
    sink: Box<dyn SinkConnector>,
    source_names: Vec<String>,
    line: Vec<u8>,
    pub written: u64,
}

impl DeadLetterWriter {
    pub fn new(
        spec: &DeadLetterSpec,
        source_names: Vec<String>,
        context: &SinkContext,
    ) -> Result<Self, SinkError> {
        Ok(DeadLetterWriter::with_sink(spec.open(context)?, source_names))
    }

    pub fn with_sink(sink: Box<dyn SinkConnector>, source_names: Vec<String>) -> Self {
        DeadLetterWriter {
            sink,
            source_names,
            line: Vec::new(),
            written: 0,
        }
    }

    pub fn write(&mut self, letter: &DeadLetter) -> Result<(), SinkError> {
        use std::io::Write;
        let raw = String::from_utf8_lossy(&letter.raw);
        let source = self
            .source_names
            .get(letter.id.producer as usize)
            .map_or("?", String::as_str);
        self.line.clear();
        match letter.id.log_position() {
            Some((partition, offset)) => writeln!(
                self.line,
                "{source}: partition {partition} offset {offset}: {}: {raw:?}",
                letter.reason
            )?,
            None => writeln!(
                self.line,
                "{source}:{}: {}: {raw:?}",
                letter.id.seq, letter.reason
            )?,
        }
        let ids = if self.sink.wants_ids() {
            std::slice::from_ref(&letter.id)
        } else {
            &[]
        };
        self.sink.write(&self.line, ids)?;
        self.written += 1;
        Ok(())
    }

    pub fn barrier(&mut self, commit: CommitId) -> Result<(), SinkError> {
        self.sink.barrier(commit)
    }

    pub fn resume_mark(&mut self) -> Result<Vec<u8>, SinkError> {
        self.sink.resume_mark()
    }

    /// Continues from a checkpoint's mark, with the dead letters written
    /// up to it.
    pub fn resume(&mut self, mark: &[u8], written: u64) -> Result<(), SinkError> {
        self.written = written;
        self.sink.resume(mark)
    }

    pub fn commit(&mut self, upto: CommitId) -> Result<(), SinkError> {
        self.sink.commit(upto)
    }
}

/// What the output thread does with each message, sans-IO: lines into the
/// sink, dead letters into theirs, checkpoints lined up with both, and at the
/// end of input the run's last commit boundary (`CommitId::END_OF_INPUT`).
/// The output thread (through `OutputLoop`) and the simulator both drive it.
///
/// With checkpoints, each shard's part of checkpoint `k` comes after the
/// output that belongs to `k`. Once a shard's part is in, what the shard
/// sends next waits until every shard's part is: then every line of `k` is
/// written and none after it, the sinks put their boundary there, the
/// checkpoint is written (parts, then the manifest), the sinks commit, and
/// the waiting output goes on. A shard runs at most a few chunks ahead of
/// the slowest (the chunk turns), so what waits stays small.
pub struct OutputWriter {
    sink: Box<dyn SinkConnector>,
    dead_letters: DeadLetterWriter,
    checkpoints: Option<Checkpoints>,
    bugs: OutputBugs,
    /// The lineage of what is written, when the audit log is on.
    audit: Option<crate::audit::OutputAudit>,
    /// Output lines written, a recovery's before this life included.
    output_lines: u64,
    /// What this life handed to the sinks (live metrics).
    written: Written,
    /// With a sink written by every process: per worker (process `p` at
    /// `p - 1`), whether its sink reported its end (all its output flushed,
    /// `MemberMark::END`); the run's end waits for every one.
    member_ends: Vec<bool>,
}

/// What an `OutputWriter` handed to its sinks in this life of the process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub lines: u64,
    pub bytes: u64,
    pub dead_letters: u64,
}

/// Bugs a test can plant in the output thread's logic to prove the
/// simulator finds them. All off in production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputBugs {
    /// Commit the sinks before the checkpoint that covers them is durable.
    pub commit_before_durable: bool,
    /// Commit the sinks before the audit log holds their lineage durably.
    pub commit_before_lineage_durable: bool,
}

struct Checkpoints {
    writer: Checkpointer,
    /// Per shard: whether its part of the checkpoint being collected is in.
    passed: Vec<bool>,
    /// Per shard: what it sent after its part, in order.
    waiting: Vec<VecDeque<OutputMessage>>,
}

/// Why the output thread stopped.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// A shard's part that does not fit (a remote shard off the protocol).
    #[error("checkpoint: {0}")]
    Part(String),
    #[error(transparent)]
    Audit(#[from] verity_audit::AuditClosed),
}

impl OutputWriter {
    pub fn new(sink: Box<dyn SinkConnector>, dead_letters: DeadLetterWriter) -> Self {
        OutputWriter {
            sink,
            dead_letters,
            checkpoints: None,
            bugs: OutputBugs::default(),
            audit: None,
            output_lines: 0,
            written: Written::default(),
            member_ends: Vec::new(),
        }
    }

    /// The sink is written by every process of a `processes`-process
    /// cluster (`member_sink`): each checkpoint completes with every
    /// worker's sink mark, and the run's end waits for every worker's sink
    /// to report its output flushed. After `with_checkpoints`.
    pub fn with_member_sinks(mut self, processes: u32) -> Self {
        assert!(processes >= 1, "a cluster has process 0");
        if let Some(c) = &mut self.checkpoints {
            c.writer.expect_member_sinks(processes);
        }
        self.member_ends = vec![false; processes as usize - 1];
        self
    }

    /// Whether some worker's own sink has not yet reported its end (with a
    /// sink written by every process): the run's output is not all in.
    pub fn awaits_member_ends(&self) -> bool {
        self.member_ends.iter().any(|ended| !ended)
    }

    /// What this life handed to the sinks so far.
    pub fn written(&self) -> Written {
        self.written
    }

    pub fn with_bugs(mut self, bugs: OutputBugs) -> Self {
        self.bugs = bugs;
        self
    }

    /// Writes checkpoints as the shards' parts come in.
    pub fn with_checkpoints(mut self, writer: Checkpointer) -> Self {
        let shards = writer.shards() as usize;
        self.checkpoints = Some(Checkpoints {
            writer,
            passed: vec![false; shards],
            waiting: (0..shards).map(|_| VecDeque::new()).collect(),
        });
        self
    }

    /// Records the lineage of every output batch, every dead letter and
    /// every checkpoint.
    pub fn with_audit(mut self, audit: crate::audit::OutputAudit) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Continues both sinks from a checkpoint's marks (a recovery).
    pub fn resume(&mut self, meta: &JobMeta) -> Result<(), SinkError> {
        self.sink.resume(&meta.output_mark)?;
        self.output_lines = meta.output_lines;
        self.dead_letters
            .resume(&meta.dead_letter_mark, meta.dead_letters)
    }

    /// Barriers requested so far, for the readers (0 without checkpoints):
    /// requests the next checkpoint if it is due at `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> u64 {
        self.checkpoints.as_mut().map_or(0, |c| c.writer.tick(now_ms))
    }

    /// How long until the next checkpoint may be due (`None` without them).
    pub fn due_in_ms(&self, now_ms: u64) -> Option<u64> {
        self.checkpoints.as_ref().map(|c| c.writer.due_in_ms(now_ms))
    }

    /// Checkpoints complete (with a recovery's included).
    pub fn checkpoints_completed(&self) -> u64 {
        self.checkpoints.as_ref().map_or(0, |c| c.writer.completed())
    }

    /// Bytes of the last checkpoint written (0 before the first).
    pub fn last_checkpoint_bytes(&self) -> u64 {
        self.checkpoints
            .as_ref()
            .map_or(0, |c| c.writer.last_size_bytes())
    }

    /// A message of shard `shard`.
    pub fn write(&mut self, shard: u32, message: OutputMessage) -> Result<(), OutputError> {
        if let Some(c) = &mut self.checkpoints {
            let held = !matches!(message, OutputMessage::MemberMark(_));
            if held && c.passed[shard as usize] {
                c.waiting[shard as usize].push_back(message);
                return Ok(());
            }
        }
        self.apply(shard, message)
    }

    fn apply(&mut self, shard: u32, message: OutputMessage) -> Result<(), OutputError> {
        match message {
            OutputMessage::Lines(batch) => self.write_lines(shard, &batch.lines, &batch.ids)?,
            OutputMessage::Relayed(batch) => self.write_lines(shard, &batch.lines, &batch.ids)?,
            OutputMessage::DeadLetter(letter) => {
                if let Some(audit) = &mut self.audit {
                    audit.dead_letter(&letter)?;
                }
                self.dead_letters.write(&letter)?;
                self.written.dead_letters += 1;
            }
            OutputMessage::Checkpoint(part) => {
                let Some(c) = &mut self.checkpoints else {
                    return Err(OutputError::Part(format!(
                        "shard {shard} took a checkpoint in a run without them"
                    )));
                };
                c.passed[shard as usize] = true;
                if c.writer.add_part(part).map_err(OutputError::Part)? {
                    self.complete_checkpoint()?;
                }
            }
            OutputMessage::MemberMark(mark) if mark.checkpoint == crate::member_sink::MemberMark::END => {
                let ended = mark
                    .process
                    .checked_sub(1)
                    .and_then(|index| self.member_ends.get_mut(index as usize));
                match ended {
                    Some(ended) if !*ended => *ended = true,
                    _ => {
                        return Err(OutputError::Part(format!(
                            "process {} reported the end of a sink it does not write, or twice",
                            mark.process
                        )))
                    }
                }
            }
            OutputMessage::MemberMark(mark) => {
                let Some(c) = &mut self.checkpoints else {
                    return Err(OutputError::Part(format!(
                        "process {}'s sink took a checkpoint's barrier in a run without them",
                        mark.process
                    )));
                };
                let collected = c
                    .writer
                    .add_member_mark(mark.process, mark.checkpoint, mark.mark)
                    .map_err(OutputError::Part)?;
                if collected {
                    self.complete_checkpoint()?;
                }
            }
        }
        Ok(())
    }

    /// A batch of output lines (`ids`: their input ids, when the sink or
    /// the audit log wants them).
    fn write_lines(&mut self, shard: u32, lines: &[u8], ids: &[MsgId]) -> Result<(), OutputError> {
        let count = memchr::memchr_iter(b'\n', lines).count() as u64;
        if let Some(audit) = &mut self.audit {
            audit.output(shard, self.output_lines + 1, count, lines, ids)?;
        }
        self.sink.write(lines, ids)?;
        self.output_lines += count;
        self.written.lines += count;
        self.written.bytes += lines.len() as u64;
        Ok(())
    }

    /// Every shard's part is in: the boundary, the checkpoint, the commit,
    /// then what waited for it.
    fn complete_checkpoint(&mut self) -> Result<(), OutputError> {
        let commit = CommitId(self.checkpoints_completed() + 1);
        self.sink.barrier(commit)?;
        self.dead_letters.barrier(commit)?;
        let marks = SinkMarks {
            output_mark: self.sink.resume_mark()?,
            output_lines: self.output_lines,
            dead_letter_mark: self.dead_letters.resume_mark()?,
            dead_letters: self.dead_letters.written,
        };
        if self.bugs.commit_before_durable {
            self.sink.commit(commit)?;
            self.dead_letters.commit(commit)?;
        }
        let c = self.checkpoints.as_mut().expect("checkpoints are on");
        let began_us = self.audit.as_ref().map(|a| a.now_us());
        c.writer.write(marks)?;
        if let (Some(audit), Some(began_us)) = (&mut self.audit, began_us) {
            let now_us = audit.now_us();
            let record = verity_audit::Record::Checkpoint(verity_audit::record::Checkpoint {
                utc_us: now_us,
                checkpoint: c.writer.completed(),
                store_id: c.writer.last_store_id(),
                bytes: c.writer.last_size_bytes(),
                duration_us: now_us.saturating_sub(began_us),
            });
            audit.record(&record)?;
            // The lineage of the output this commit makes final, durable
            // first: committed output never outlives its audit trail.
            if !self.bugs.commit_before_lineage_durable {
                audit.sync()?;
            }
        }
        // Only now: a crash before this line recovers from the checkpoint
        // before, and the sinks must be able to take this one's output back.
        if !self.bugs.commit_before_durable {
            self.sink.commit(commit)?;
            self.dead_letters.commit(commit)?;
        }
        let c = self.checkpoints.as_mut().expect("checkpoints are on");
        c.passed.iter_mut().for_each(|p| *p = false);
        let waiting: Vec<_> = c.waiting.iter_mut().map(std::mem::take).collect();
        // In each shard's order; a shard's next part holds back its rest
        // again (`write`).
        for (shard, messages) in waiting.into_iter().enumerate() {
            for message in messages {
                self.write(shard as u32, message)?;
            }
        }
        Ok(())
    }

    /// All input is written: commits both sinks. Returns the dead letters
    /// written.
    pub fn finish(mut self) -> Result<u64, OutputError> {
        if let Some(index) = self.member_ends.iter().position(|ended| !ended) {
            // Its shards finished, but what they wrote may not be in its
            // sink yet: the output is not final.
            return Err(OutputError::Part(format!(
                "process {}'s sink did not report its output flushed before the run ended",
                index + 1
            )));
        }
        if let Some(c) = &mut self.checkpoints {
            // Every shard takes every checkpoint whose barrier it saw, so
            // nothing waits here unless a shard stopped early; its output
            // still belongs to the run.
            let waiting: Vec<_> = c.waiting.iter_mut().map(std::mem::take).collect();
            c.passed.iter_mut().for_each(|p| *p = false);
            self.checkpoints = None;
            for (shard, messages) in waiting.into_iter().enumerate() {
                for message in messages {
                    if !matches!(
                        message,
                        OutputMessage::Checkpoint(_) | OutputMessage::MemberMark(_)
                    ) {
                        self.apply(shard as u32, message)?;
                    }
                }
            }
        }
        let end = CommitId::END_OF_INPUT;
        self.sink.barrier(end)?;
        self.dead_letters.barrier(end)?;
        self.sink.commit(end)?;
        self.dead_letters.commit(end)?;
        if let Some(audit) = &mut self.audit {
            audit.flush()?;
        }
        Ok(self.dead_letters.written)
    }
}

/// The output thread's decisions, sans-IO, around the `OutputWriter`: how
/// long it may wait for the next message, and what each message and each
/// wake-up tells the readers (`ReaderProgress`: the checkpoint requested,
/// whose barrier they deal; the newest complete, whose cut they commit;
/// `ALL` once every output is final). After each message, and after each
/// wait that ran out, a `tick`. The output thread (`runtime`'s
/// `write_outputs`: a channel and the OS clock) and the simulator (process
/// 0's output on virtual time) both drive it.
pub struct OutputLoop {
    writer: OutputWriter,
    progress: Arc<ReaderProgress>,
}

impl OutputLoop {
    /// Tells the readers where the writer starts: a recovery's checkpoint
    /// is requested and complete (0 for a fresh run).
    pub fn new(writer: OutputWriter, progress: Arc<ReaderProgress>) -> Self {
        let resumed = writer.checkpoints_completed();
        progress.requested.store(resumed, Relaxed);
        progress.committed.store(resumed, Relaxed);
        OutputLoop { writer, progress }
    }

    pub fn writer(&self) -> &OutputWriter {
        &self.writer
    }

    /// What the readers are told.
    pub fn progress(&self) -> &Arc<ReaderProgress> {
        &self.progress
    }

    /// How long to wait for a message at `now_ms` before the next `tick`
    /// (`None`: until one comes). At least 1 ms: a checkpoint that is due
    /// while the one before is still being collected is looked at again
    /// each millisecond, not spun on.
    pub fn wait_ms(&self, now_ms: u64) -> Option<u64> {
        self.writer.due_in_ms(now_ms).map(|wait_ms| wait_ms.max(1))
    }

    /// A message of shard `shard`, written. True if a checkpoint completed
    /// with it: the readers may commit its cut.
    pub fn on_message(&mut self, shard: u32, message: OutputMessage) -> Result<bool, OutputError> {
        let before = self.writer.checkpoints_completed();
        self.writer.write(shard, message)?;
        let completed = self.writer.checkpoints_completed();
        if completed > before {
            self.progress.committed.store(completed, Relaxed);
            return Ok(true);
        }
        Ok(false)
    }

    /// Requests the next checkpoint if it is due at `now_ms`, for the
    /// readers to deal its barrier. True if a new one was requested.
    pub fn tick(&mut self, now_ms: u64) -> bool {
        let requested = self.writer.tick(now_ms);
        requested > self.progress.requested.swap(requested, Relaxed)
    }

    /// Every sender is gone: finishes the writer, and only then tells the
    /// readers that every output is in its sinks (they may commit all they
    /// read). Returns the dead letters written.
    pub fn finish(self) -> Result<u64, OutputError> {
        let written = self.writer.finish()?;
        self.progress.committed.store(ReaderProgress::ALL, Relaxed);
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn parse_recognises_sinks() {
        assert_eq!(SinkSpec::parse("-"), SinkSpec::Stdout);
        assert_eq!(SinkSpec::parse("null"), SinkSpec::Null);
        assert_eq!(
            SinkSpec::parse("tcp:127.0.0.1:1"),
            SinkSpec::Tcp("127.0.0.1:1".into())
        );
        assert_eq!(SinkSpec::parse("out.txt"), SinkSpec::File("out.txt".into()));
        assert_eq!(
            SinkSpec::parse("out.txt").default_dead_letter(),
            DeadLetterSpec::File("out.txt.dead-letter".into())
        );
        assert_eq!(SinkSpec::Stdout.default_dead_letter(), DeadLetterSpec::Stderr);
        assert_eq!(DeadLetterSpec::parse("-"), DeadLetterSpec::Stderr);
        assert_eq!(DeadLetterSpec::parse("dl"), DeadLetterSpec::File("dl".into()));
    }

    #[test]
    fn dead_letters_name_source_line_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl");
        let mut writer = DeadLetterWriter::new(
            &DeadLetterSpec::File(path.clone()),
            vec!["in.txt".into()],
            &SinkContext::single_process(""),
        )
        .unwrap();
        assert!(!path.exists(), "created lazily");
        let letter = DeadLetter::new(MsgId::new(0, 3), "not an integer".into(), &"x\ty".into());
        writer.write(&letter).unwrap();
        // A log's record is named by its partition and offset.
        let letter = DeadLetter::new(MsgId::from_log(0, 2, 17), "not an integer".into(), &"z".into());
        writer.write(&letter).unwrap();
        writer.commit(CommitId::END_OF_INPUT).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "in.txt:3: not an integer: \"x\\ty\"\nin.txt: partition 2 offset 17: not an integer: \"z\"\n"
        );
    }

    /// What a recording sink saw, in order.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Seen {
        lines: Vec<u8>,
        ids: Vec<MsgId>,
        calls: Vec<String>,
    }

    struct Recording(Arc<Mutex<Seen>>, bool);

    impl SinkConnector for Recording {
        fn wants_ids(&self) -> bool {
            self.1
        }
        fn write(&mut self, lines: &[u8], ids: &[MsgId]) -> Result<(), SinkError> {
            let mut seen = self.0.lock().unwrap();
            seen.lines.extend_from_slice(lines);
            seen.ids.extend_from_slice(ids);
            seen.calls.push("write".into());
            Ok(())
        }
        fn barrier(&mut self, commit: CommitId) -> Result<(), SinkError> {
            self.0.lock().unwrap().calls.push(format!("barrier {}", commit.0));
            Ok(())
        }
        fn commit(&mut self, upto: CommitId) -> Result<(), SinkError> {
            self.0.lock().unwrap().calls.push(format!("commit {}", upto.0));
            Ok(())
        }
    }

    fn lines(text: &'static str) -> OutputMessage {
        OutputMessage::Lines(OutputBatch {
            lines: text.as_bytes().to_vec(),
            ids: Vec::new(),
        })
    }

    fn part(shard: u32, checkpoint: u64) -> OutputMessage {
        OutputMessage::Checkpoint(crate::shard::CheckpointPart {
            shard,
            checkpoint,
            cuts: vec![Some(crate::source::SourceCut::default())],
            ended: vec![None],
            delta: false,
            state: Vec::new(),
        })
    }

    #[test]
    fn a_checkpoint_boundary_has_every_shards_output_before_its_part_and_none_after() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Box<dyn verity_state::storage::Storage> =
            Box::new(verity_state::storage::DirStorage::open(dir.path()).unwrap());
        let store = verity_state::checkpoint::CheckpointStore::new(storage);
        let checkpoints = Checkpointer::new(store, "job".into(), 2, 1000, None, 1);
        let out: Arc<Mutex<Seen>> = Arc::default();
        let dead_letters = DeadLetterWriter::with_sink(Box::new(Recording(Arc::default(), false)), vec![]);
        let mut writer = OutputWriter::new(Box::new(Recording(Arc::clone(&out), false)), dead_letters)
            .with_checkpoints(checkpoints);
        writer.write(0, lines("a\n")).unwrap();
        writer.write(0, part(0, 1)).unwrap();
        writer.write(0, lines("after\n")).unwrap();
        writer.write(0, part(0, 2)).unwrap();
        writer.write(0, lines("later\n")).unwrap();
        writer.write(1, lines("b\n")).unwrap();
        assert_eq!(
            out.lock().unwrap().lines,
            b"a\nb\n",
            "shard 0 waits for shard 1's part"
        );
        writer.write(1, part(1, 1)).unwrap();
        assert_eq!(writer.checkpoints_completed(), 1);
        writer.write(1, part(1, 2)).unwrap();
        assert_eq!(writer.checkpoints_completed(), 2);
        let recorded = out.lock().unwrap();
        assert_eq!(recorded.lines, b"a\nb\nafter\nlater\n");
        assert_eq!(
            recorded.calls,
            [
                "write",
                "write",
                "barrier 1",
                "commit 1",
                "write",
                "barrier 2",
                "commit 2",
                "write"
            ]
        );
    }

    #[test]
    fn the_output_loop_writes_buffers_then_commits_the_end_of_input() {
        let (out, dead) = (Arc::default(), Arc::default());
        let ids = vec![MsgId::new(0, 1), MsgId::new(0, 2)];
        let lines = OutputBatch {
            lines: b"a\nb\n".to_vec(),
            ids: ids.clone(),
        };
        let mut messages = vec![(0, OutputMessage::Lines(lines))];
        let relayed = OutputBatch {
            lines: Bytes::from_static(b"c\n"),
            ids: vec![MsgId::new(0, 3)],
        };
        messages.push((1, OutputMessage::Relayed(relayed)));
        let letter = DeadLetter::new(MsgId::new(0, 4), "bad".into(), &"x".into());
        messages.push((0, OutputMessage::DeadLetter(letter)));
        let dead_letters =
            DeadLetterWriter::with_sink(Box::new(Recording(Arc::clone(&dead), true)), vec!["in".into()]);
        let writer = OutputWriter::new(Box::new(Recording(Arc::clone(&out), true)), dead_letters);
        let progress = Arc::new(ReaderProgress::default());
        let mut output = OutputLoop::new(writer, Arc::clone(&progress));
        assert_eq!(
            output.wait_ms(0),
            None,
            "without checkpoints it waits for messages"
        );
        for (shard, message) in messages {
            assert!(!output.on_message(shard, message).unwrap());
            assert!(!output.tick(0));
        }
        assert_eq!(progress.committed.load(Relaxed), 0);
        assert_eq!(output.finish().unwrap(), 1);
        assert_eq!(progress.committed.load(Relaxed), ReaderProgress::ALL);
        let end = u64::MAX;
        let out = out.lock().unwrap();
        assert_eq!(out.lines, b"a\nb\nc\n");
        assert_eq!(out.ids, [ids[0], ids[1], MsgId::new(0, 3)]);
        assert_eq!(
            out.calls,
            [
                "write",
                "write",
                &format!("barrier {end}"),
                &format!("commit {end}")
            ]
        );
        let dead = dead.lock().unwrap();
        assert_eq!(dead.lines, b"in:4: bad: \"x\"\n");
        assert_eq!(dead.ids, [MsgId::new(0, 4)]);
    }
}
