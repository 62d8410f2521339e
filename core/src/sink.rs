//! Sinks as the runtime sees them: what a run writes to (`SinkSpec`,
//! `DeadLetterSpec`, opened into `SinkConnector`s — see `connector`), the
//! buffers shards hand over (`OutputBatch`), and the output thread: the only
//! place output and dead letters touch files, sockets or the terminal.

use crate::connector::sinks::{FileSink, NullSink, WriteSink};
use crate::connector::{CommitId, SinkConnector, SinkError};
use crate::ids::MsgId;
use crate::line::DeadLetter;
use bytes::Bytes;
use std::fmt;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

pub use crate::connector::sinks::TCP_CONNECT_TIMEOUT;

/// Opens a sink from another crate.
pub type OpenSink = Arc<dyn Fn() -> Result<Box<dyn SinkConnector>, SinkError> + Send + Sync>;

/// A sink connector from outside `core`, opened when the run starts.
#[derive(Clone)]
pub struct CustomSink {
    pub name: String,
    open: OpenSink,
}

impl CustomSink {
    pub fn new(
        name: &str,
        open: impl Fn() -> Result<Box<dyn SinkConnector>, SinkError> + Send + Sync + 'static,
    ) -> Self {
        CustomSink {
            name: name.into(),
            open: Arc::new(open),
        }
    }

    pub fn open(&self) -> Result<Box<dyn SinkConnector>, SinkError> {
        (self.open)()
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
    pub fn open(&self) -> Result<Box<dyn SinkConnector>, SinkError> {
        Ok(match self {
            SinkSpec::Stdout => Box::new(WriteSink::stdout()),
            SinkSpec::File(path) => Box::new(FileSink::create(path)?),
            SinkSpec::Tcp(address) => Box::new(WriteSink::connect(address)?),
            SinkSpec::Null => Box::new(NullSink),
            SinkSpec::Custom(custom) => custom.open()?,
        })
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
    pub fn open(&self) -> Result<Box<dyn SinkConnector>, SinkError> {
        Ok(match self {
            DeadLetterSpec::Stderr => Box::new(WriteSink::stderr()),
            DeadLetterSpec::File(path) => {
                Box::new(FileSink::create_on_first_write(path, "dead-letter file")?)
            }
            DeadLetterSpec::Custom(custom) => custom.open()?,
        })
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
    pub fn new(spec: &DeadLetterSpec, source_names: Vec<String>) -> Result<Self, SinkError> {
        Ok(DeadLetterWriter::with_sink(spec.open()?, source_names))
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
        let source = self.source_names.get(letter.id.producer as usize);
        self.line.clear();
        writeln!(
            self.line,
            "{}:{}: {}: {raw:?}",
            source.map_or("?", String::as_str),
            letter.id.seq,
            letter.reason
        )?;
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

    pub fn commit(&mut self, upto: CommitId) -> Result<(), SinkError> {
        self.sink.commit(upto)
    }
}

/// What the output thread does with each message, sans-IO: lines into the
/// sink, dead letters into theirs, and at the end of input the run's one
/// commit boundary (`CommitId::END_OF_INPUT`) on both. The output thread
/// (`write_outputs`) and the simulator both drive it.
pub struct OutputWriter {
    sink: Box<dyn SinkConnector>,
    dead_letters: DeadLetterWriter,
}

impl OutputWriter {
    pub fn new(sink: Box<dyn SinkConnector>, dead_letters: DeadLetterWriter) -> Self {
        OutputWriter { sink, dead_letters }
    }

    pub fn write(&mut self, message: OutputMessage) -> Result<(), SinkError> {
        match message {
            OutputMessage::Lines(batch) => self.sink.write(&batch.lines, &batch.ids),
            OutputMessage::Relayed(batch) => self.sink.write(&batch.lines, &batch.ids),
            OutputMessage::DeadLetter(letter) => self.dead_letters.write(&letter),
            // The runtime deals no barriers yet, so no part comes here; the
            // checkpoint writer (sink barriers and commits, parts into the
            // state dir) is the next step of the exactly-once work.
            OutputMessage::Checkpoint(_) => Ok(()),
        }
    }

    /// All input is written: commits both sinks. Returns the dead letters
    /// written.
    pub fn finish(mut self) -> Result<u64, SinkError> {
        let end = CommitId::END_OF_INPUT;
        self.sink.barrier(end)?;
        self.dead_letters.barrier(end)?;
        self.sink.commit(end)?;
        self.dead_letters.commit(end)?;
        Ok(self.dead_letters.written)
    }
}

/// The output thread's loop: runs until every sender is gone, then finishes
/// the writer. Returns the dead letters written.
pub fn write_outputs(
    messages: crossbeam_channel::Receiver<OutputMessage>,
    sink: Box<dyn SinkConnector>,
    dead_letters: DeadLetterWriter,
) -> Result<u64, SinkError> {
    let mut writer = OutputWriter::new(sink, dead_letters);
    for message in messages {
        writer.write(message)?;
    }
    writer.finish()
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
    }

    #[test]
    fn dead_letters_name_source_line_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl");
        let mut writer =
            DeadLetterWriter::new(&DeadLetterSpec::File(path.clone()), vec!["in.txt".into()]).unwrap();
        assert!(!path.exists(), "created lazily");
        let letter = DeadLetter::new(MsgId::new(0, 3), "not an integer".into(), &"x\ty".into());
        writer.write(&letter).unwrap();
        writer.commit(CommitId::END_OF_INPUT).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "in.txt:3: not an integer: \"x\\ty\"\n"
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

    #[test]
    fn the_output_thread_writes_buffers_then_commits_the_end_of_input() {
        let (out, dead) = (Arc::default(), Arc::default());
        let (tx, rx) = crossbeam_channel::bounded(8);
        let ids = vec![MsgId::new(0, 1), MsgId::new(0, 2)];
        tx.send(OutputMessage::Lines(OutputBatch {
            lines: b"a\nb\n".to_vec(),
            ids: ids.clone(),
        }))
        .unwrap();
        tx.send(OutputMessage::Relayed(OutputBatch {
            lines: Bytes::from_static(b"c\n"),
            ids: vec![MsgId::new(0, 3)],
        }))
        .unwrap();
        let letter = DeadLetter::new(MsgId::new(0, 4), "bad".into(), &"x".into());
        tx.send(OutputMessage::DeadLetter(letter)).unwrap();
        drop(tx);
        let dead_letters =
            DeadLetterWriter::with_sink(Box::new(Recording(Arc::clone(&dead), true)), vec!["in".into()]);
        let written = write_outputs(rx, Box::new(Recording(Arc::clone(&out), true)), dead_letters).unwrap();
        assert_eq!(written, 1);
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
