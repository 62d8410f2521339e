//! Sources as the pipeline sees them: a named `SourceSpec` around a
//! `SourceConnector` (see `connector` for the traits and the built-in ones),
//! the chunk events dealt to shards, and the reader thread's loop.
//!
//! Readers do only I/O and line framing; parsing happens on the shard. A chunk is
//! one `Bytes` buffer of complete lines, so lines are later sliced out of it
//! without copying.

use crate::connector::sources::{FileSource, GeneratorSource, MemorySource, StdinSource, TcpListenSource};
use crate::connector::{Chunk, Position, Pull, RecordIds, SourceConnector, SourceError, SourceReader};
use bytes::{Bytes, BytesMut};
use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

/// Target size of one chunk handed from a reader to its shard.
pub const CHUNK_SIZE_BYTES: usize = 64 * 1024;
/// Longest accepted input line; longer lines are dead-lettered, not buffered.
pub const LINE_SIZE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// How much of an oversized line the dead-letter record keeps.
pub const OVERSIZED_PREFIX_BYTES: usize = 64;
/// How often blocked readers look at the stop flag.
pub const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Writes generated input lines; deterministic for its seed.
pub trait LineGenerator: Send {
    /// Appends up to `lines_max` lines (each ending in `\n`) and returns how many
    /// it wrote; 0 means the generator is exhausted.
    fn write_lines(&mut self, out: &mut Vec<u8>, lines_max: usize) -> usize;
}

/// A named source; the name appears in dead letters and errors.
pub struct SourceSpec {
    pub name: String,
    pub connector: Box<dyn SourceConnector>,
}

impl fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceSpec({}, {})", self.name, self.connector.kind())
    }
}

impl SourceSpec {
    /// Any connector, e.g. one from another crate.
    pub fn from_connector(name: &str, connector: Box<dyn SourceConnector>) -> SourceSpec {
        SourceSpec {
            name: name.into(),
            connector,
        }
    }

    /// Parses a command-line source with the built-in connectors: `-` is
    /// stdin, `tcp:HOST:PORT` (or `tcp://HOST:PORT`) listens there, anything
    /// else is a file path. (`Connectors::source` also knows registered
    /// schemes and refuses unknown ones; here they are file names.)
    pub fn parse(arg: &str) -> SourceSpec {
        crate::connector::Connectors::built_in()
            .source(arg)
            .unwrap_or_else(|_| SourceSpec::file(arg, arg))
    }

    pub fn file(name: &str, path: impl Into<PathBuf>) -> SourceSpec {
        SourceSpec::from_connector(name, Box::new(FileSource { path: path.into() }))
    }

    pub fn stdin() -> SourceSpec {
        SourceSpec::from_connector("stdin", Box::new(StdinSource))
    }

    /// Listens on `address` for one connection and reads it to its end.
    pub fn tcp_listen(name: &str, address: &str) -> SourceSpec {
        SourceSpec::from_connector(name, Box::new(TcpListenSource::new(address)))
    }

    /// Generated lines; `make` returns a fresh generator at its first line
    /// (so the source can be reopened at a position).
    pub fn generated(name: &str, make: impl Fn() -> Box<dyn LineGenerator> + Send + 'static) -> SourceSpec {
        SourceSpec::from_connector(name, Box::new(GeneratorSource { make: Box::new(make) }))
    }

    /// Pre-loaded input (benchmarks, tests).
    pub fn memory(name: &str, data: Bytes) -> SourceSpec {
        SourceSpec::from_connector(name, Box::new(MemorySource { data }))
    }
}

/// The content of one chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkData {
    /// Complete lines, in order (the last chunk may end without `\n`).
    Lines(Bytes),
    /// One line longer than `LINE_SIZE_MAX_BYTES`, skipped (it counts as a line).
    Oversized { prefix: Bytes, size_bytes: u64 },
}

impl ChunkData {
    pub fn line_count(&self) -> u64 {
        match self {
            ChunkData::Lines(data) => {
                let newlines = memchr::memchr_iter(b'\n', data).count() as u64;
                newlines + u64::from(data.last().is_some_and(|b| *b != b'\n'))
            }
            ChunkData::Oversized { .. } => 1,
        }
    }

    /// Bytes of the stream this chunk took (an oversized line is counted with
    /// its newline).
    pub(crate) fn stream_bytes(&self) -> u64 {
        match self {
            ChunkData::Lines(data) => data.len() as u64,
            ChunkData::Oversized { size_bytes, .. } => size_bytes + 1,
        }
    }
}

/// What a reader thread tells the shards. Chunk `index` of a source goes to shard
/// `index % shards`; every shard gets the source's `End`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    Chunk {
        source: u32,
        index: u64,
        /// The id (`MsgId::seq`) of its first record; the others follow one
        /// by one. A line number, or a log record's (`RecordIds`).
        first_line: u64,
        data: ChunkData,
        /// The partition the chunk came from, and where that partition stands
        /// after it (what a checkpoint of this chunk's turn records).
        partition: u32,
        position: Position,
        /// Checkpoint barriers dealt before this chunk: the chunk belongs
        /// after the snapshots of checkpoints `1..=epoch`.
        epoch: u64,
    },
    /// Checkpoint `checkpoint`'s barrier: it comes after chunk `cut - 1` of
    /// the source and before chunk `cut`; every shard gets it. A shard
    /// snapshots once it applied exactly the chunks before the cut of every
    /// source (see `shard`'s module docs).
    Barrier {
        source: u32,
        checkpoint: u64,
        cut: SourceCut,
    },
    /// The source failed mid-stream (after it opened): reported, then ended.
    Failed { source: u32, error: String },
    /// No more chunks from `source`: it had `chunks` in all.
    End { source: u32, chunks: u64 },
}

/// Where a source stands at a checkpoint's barrier: what its dealer and its
/// partitions resume from after a recovery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceCut {
    /// The index of the first chunk after the barrier.
    pub next_chunk: u64,
    /// The id (line number) of the first record after the barrier.
    pub next_line: u64,
    /// Each partition dealt from, and its position after its last chunk
    /// before the barrier (a partition not listed resumes at its start).
    pub positions: Vec<(u32, Position)>,
}

/// Numbers a source's chunks and deals them round-robin over the shards.
pub struct Dealer<'a> {
    source: u32,
    shards: usize,
    next_index: u64,
    next_line: u64,
    /// Barriers dealt so far (the epoch of the next chunk).
    epoch: u64,
    /// Per partition dealt from: its position after its last chunk.
    positions: Vec<(u32, Position)>,
    /// Bytes dealt so far, for chunks dealt without a position (`deal`).
    dealt_bytes: u64,
    /// The cuts of the newest barriers dealt, for `cut_upto` (bounded by
    /// `CUTS_KEPT`; a commit of a newer cut covers an older one).
    cuts: std::collections::VecDeque<(u64, SourceCut)>,
    send: &'a mut dyn FnMut(usize, SourceEvent) -> bool,
    /// Records every chunk's receipt, when the audit log is on.
    audit: Option<InputAudit>,
}

/// A reader's audit records: one `InputChunk` per chunk dealt.
pub struct InputAudit {
    pub out: Box<dyn crate::audit::AuditOut>,
    pub clock: std::sync::Arc<dyn crate::env::Clock>,
}

fn audit_position(position: Position) -> verity_audit::record::StreamPosition {
    use verity_audit::record::StreamPosition;
    match position {
        Position::Text { bytes, lines } => StreamPosition::Text { bytes, lines },
        Position::Log { offset } => StreamPosition::Log { offset },
    }
}

/// Barrier cuts a dealer keeps for commits (only one checkpoint is in flight
/// at a time, so a few suffice).
const CUTS_KEPT: usize = 8;

impl<'a> Dealer<'a> {
    /// `send(shard, event)` delivers (blocking on a full queue: backpressure) and
    /// returns false once the shard is gone.
    pub fn new(source: u32, shards: usize, send: &'a mut dyn FnMut(usize, SourceEvent) -> bool) -> Self {
        assert!(shards > 0);
        Dealer {
            source,
            shards,
            next_index: 0,
            next_line: 1,
            epoch: 0,
            positions: Vec::new(),
            dealt_bytes: 0,
            cuts: std::collections::VecDeque::new(),
            send,
            audit: None,
        }
    }

    /// Records the receipt of every chunk dealt from now on.
    pub fn record_input(&mut self, audit: InputAudit) {
        self.audit = Some(audit);
    }

    /// Where the source stands now: the cut a barrier dealt now would have.
    pub fn cut(&self) -> SourceCut {
        SourceCut {
            next_chunk: self.next_index,
            next_line: self.next_line,
            positions: self.positions.clone(),
        }
    }

    /// The cut of the newest barrier up to `checkpoint` not yet taken (what
    /// a commit of `checkpoint` makes durable); older ones are dropped.
    pub fn cut_upto(&mut self, checkpoint: u64) -> Option<SourceCut> {
        let mut newest = None;
        while self.cuts.front().is_some_and(|(id, _)| *id <= checkpoint) {
            newest = self.cuts.pop_front().map(|(_, cut)| cut);
        }
        newest
    }

    /// Continues a source from checkpoint `checkpoint`'s cut (a recovery):
    /// chunks and ids go on from there, as in the run that took it.
    pub fn resume_at(&mut self, checkpoint: u64, cut: &SourceCut) {
        self.next_index = cut.next_chunk;
        self.next_line = cut.next_line;
        self.epoch = checkpoint;
        self.positions = cut.positions.clone();
        if let [(0, Position::Text { bytes, .. })] = cut.positions[..] {
            self.dealt_bytes = bytes;
        }
    }

    /// Checkpoints whose barriers were dealt.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Deals the barriers of every checkpoint up to `requested` not dealt
    /// yet, to every shard. False once a shard is gone.
    pub fn barrier_to(&mut self, requested: u64) -> bool {
        while self.epoch < requested {
            self.epoch += 1;
            let cut = self.cut();
            if self.cuts.len() == CUTS_KEPT {
                self.cuts.pop_front();
            }
            self.cuts.push_back((self.epoch, cut.clone()));
            for shard in 0..self.shards {
                let event = SourceEvent::Barrier {
                    source: self.source,
                    checkpoint: self.epoch,
                    cut: cut.clone(),
                };
                if !(self.send)(shard, event) {
                    return false;
                }
            }
        }
        true
    }

    /// Deals a chunk of a one-partition text stream read from its start,
    /// positioned by the bytes and lines dealt so far (exact unless the stream
    /// ends in an oversized line without a newline: then one byte over).
    /// Test-only: the engine's readers position chunks themselves
    /// (`deal_chunk`).
    #[cfg(test)]
    pub fn deal(&mut self, data: ChunkData) -> bool {
        let records = data.line_count();
        self.dealt_bytes += data.stream_bytes();
        let position = Position::Text {
            bytes: self.dealt_bytes,
            lines: self.next_line - 1 + records,
        };
        self.deal_chunk(
            0,
            Chunk {
                data,
                records,
                position,
                ids: RecordIds::Lines,
            },
        )
    }

    /// Deals a chunk a connector read from `partition`.
    pub fn deal_chunk(&mut self, partition: u32, chunk: Chunk) -> bool {
        debug_assert_eq!(
            chunk.records,
            chunk.data.line_count(),
            "the reader counted its lines"
        );
        let bytes = chunk.data.stream_bytes();
        let first_id = match chunk.ids {
            RecordIds::Lines => self.next_line,
            RecordIds::Log { first_offset } => {
                use verity_audit::record::log_seq;
                // The last record's offset must fit an id too (`log_seq` asserts).
                let _ = log_seq(partition, first_offset + chunk.records.saturating_sub(1));
                log_seq(partition, first_offset)
            }
        };
        let event = SourceEvent::Chunk {
            source: self.source,
            index: self.next_index,
            first_line: first_id,
            data: chunk.data,
            partition,
            position: chunk.position,
            epoch: self.epoch,
        };
        match self.positions.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, at)) => *at = chunk.position,
            None => self.positions.push((partition, chunk.position)),
        }
        if let Some(audit) = &mut self.audit {
            let record = verity_audit::Record::InputChunk(verity_audit::record::InputChunk {
                utc_us: audit.clock.now_us(),
                source: self.source,
                partition,
                chunk: self.next_index,
                first_line: first_id,
                lines: chunk.records,
                bytes,
                position_after: audit_position(chunk.position),
            });
            let mut records = Vec::with_capacity(64);
            verity_audit::push_record(&mut records, &record);
            if let Err(e) = audit.out.submit(records) {
                // The run must not go on unaudited: stop this source with the reason.
                log::error!("source {}: {e}", self.source);
                return false;
            }
        }
        let shard = (self.next_index % self.shards as u64) as usize;
        self.next_index += 1;
        self.next_line += chunk.records;
        (self.send)(shard, event)
    }

    /// Reports a failure (if any) and ends the source on every shard.
    pub fn finish(self, failure: Option<String>) {
        if let Some(error) = failure {
            (self.send)(
                0,
                SourceEvent::Failed {
                    source: self.source,
                    error,
                },
            );
        }
        for shard in 0..self.shards {
            (self.send)(
                shard,
                SourceEvent::End {
                    source: self.source,
                    chunks: self.next_index,
                },
            );
        }
    }
}

/// An opened source: a reader per partition, ready to be read on its own
/// thread.
pub struct OpenSource {
    partitions: Vec<(u32, Box<dyn SourceReader>)>,
}

/// Opens every partition of a source now, from its beginning, so a missing
/// file or a busy port fails before the run.
pub fn open(spec: SourceSpec) -> Result<OpenSource, SourceError> {
    open_partitions(spec, &|_| true, None)
}

/// Opens a source to continue from a checkpoint's cut (a recovery): each
/// partition the cut names at its position, the others from their start.
pub fn open_at(spec: SourceSpec, cut: &SourceCut) -> Result<OpenSource, SourceError> {
    open_partitions(spec, &|_| true, Some(cut))
}

/// Opens the partitions of a source that `reads` picks (one stream's share
/// of a spread source, `streams::Stream::reads_partition`), each at its
/// position in `cut` if given and named there, else from its start.
pub fn open_partitions(
    spec: SourceSpec,
    reads: &dyn Fn(u32) -> bool,
    cut: Option<&SourceCut>,
) -> Result<OpenSource, SourceError> {
    let SourceSpec { name, mut connector } = spec;
    let count = connector.partitions()?;
    let partitions = (0..count)
        .filter(|partition| reads(*partition))
        .map(|partition| {
            let at = cut
                .and_then(|cut| cut.positions.iter().find(|(p, _)| *p == partition))
                .map(|(_, at)| *at);
            Ok((partition, connector.open(&name, partition, at)?))
        })
        .collect::<Result<Vec<_>, SourceError>>()?;
    Ok(OpenSource { partitions })
}

impl OpenSource {
    /// The partitions it reads (those not ended at a checkpoint).
    pub fn partition_ids(&self) -> Vec<u32> {
        self.partitions.iter().map(|(p, _)| *p).collect()
    }

    /// Its partitions in the reader loop that both drivers run.
    pub fn into_read_loop(self) -> ReadLoop {
        ReadLoop::new(self.partitions)
    }
}

/// A source that had ended at a checkpoint: nothing is left to read.
pub fn ended() -> OpenSource {
    OpenSource {
        partitions: Vec::new(),
    }
}

/// What a reader thread learns from the rest of the run: the checkpoint
/// requested (its barrier goes between two chunks), and the newest
/// checkpoint complete, whose cut the readers commit.
#[derive(Debug, Default)]
pub struct ReaderProgress {
    pub requested: AtomicU64,
    /// The newest complete checkpoint; `ALL` once the run's output is final
    /// (commit everything read), `ABANDONED` if the run ended otherwise.
    pub committed: AtomicU64,
}

impl ReaderProgress {
    pub const ALL: u64 = u64::MAX;
    pub const ABANDONED: u64 = u64::MAX - 1;
}

/// Planted bugs for the simulator's own tests (`verity sim --plant-bug`):
/// each is off in production and turns a real reader-loop mistake on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderBugs {
    /// Take a partition's first idle read for its end.
    pub end_at_first_idle: bool,
}

/// What one `ReadLoop::step` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStep {
    /// A chunk was dealt.
    Dealt,
    /// Every open partition's last read was idle: nothing is waiting now.
    Idle,
    /// Every partition ended.
    Ended,
    /// A shard is gone (the run is ending): stop reading.
    ShardsGone,
}

/// A reader's decisions, sans-IO: which partition to pull next and what its
/// answer means. The reader thread (`runtime::pump`) and the simulator both drive it,
/// one pull per step.
pub struct ReadLoop {
    partitions: Vec<(u32, Box<dyn SourceReader>)>,
    /// Partitions that ended, kept for the commits still to come (a source
    /// may ack its upstream only once a checkpoint covers its end).
    ended: Vec<(u32, Box<dyn SourceReader>)>,
    /// Index into `partitions` of the next one to pull.
    turn: usize,
    /// The newest complete checkpoint whose cut was committed.
    committed: u64,
    /// Idle reads in a row, across partitions.
    idle_reads: usize,
    bugs: ReaderBugs,
}

impl ReadLoop {
    pub fn new(partitions: Vec<(u32, Box<dyn SourceReader>)>) -> Self {
        ReadLoop {
            partitions,
            ended: Vec::new(),
            turn: 0,
            committed: 0,
            idle_reads: 0,
            bugs: ReaderBugs::default(),
        }
    }

    pub fn with_bugs(mut self, bugs: ReaderBugs) -> Self {
        self.bugs = bugs;
        self
    }

    /// One turn of a reader thread: a stop ends the source (`Ended`), the
    /// barriers of checkpoints requested up to `requested` go out before
    /// the next chunk, else one pull (`step`). Both drivers run it.
    pub fn turn(
        &mut self,
        dealer: &mut Dealer<'_>,
        stopping: bool,
        requested: u64,
    ) -> Result<ReadStep, SourceError> {
        if stopping {
            return Ok(ReadStep::Ended);
        }
        if dealer.epoch() < requested {
            return Ok(if dealer.barrier_to(requested) {
                ReadStep::Dealt
            } else {
                ReadStep::ShardsGone
            });
        }
        self.step(dealer)
    }

    /// Pulls once from the partition whose turn it is and deals what it read.
    pub fn step(&mut self, dealer: &mut Dealer<'_>) -> Result<ReadStep, SourceError> {
        if self.partitions.is_empty() {
            return Ok(ReadStep::Ended);
        }
        self.turn %= self.partitions.len();
        let (partition, reader) = &mut self.partitions[self.turn];
        match reader.next_chunk()? {
            Pull::Chunk(chunk) => {
                self.idle_reads = 0;
                if !dealer.deal_chunk(*partition, chunk) {
                    return Ok(ReadStep::ShardsGone);
                }
                self.turn += 1;
                Ok(ReadStep::Dealt)
            }
            Pull::Idle if self.bugs.end_at_first_idle => Ok(self.end_partition()),
            Pull::Idle => {
                self.turn += 1;
                self.idle_reads += 1;
                if self.idle_reads >= self.partitions.len() {
                    return Ok(ReadStep::Idle);
                }
                self.step(dealer)
            }
            Pull::End => Ok(self.end_partition()),
        }
    }

    /// Everything up to `cut` is durably checkpointed: each partition's
    /// reader may let its upstream forget what it read up to there.
    pub fn commit(&mut self, cut: &SourceCut) -> Result<(), SourceError> {
        for (partition, position) in &cut.positions {
            let reader = self
                .partitions
                .iter_mut()
                .chain(self.ended.iter_mut())
                .find(|(p, _)| p == partition);
            if let Some((_, reader)) = reader {
                reader.commit(position)?;
            }
        }
        Ok(())
    }

    /// Commits the cut of the newest checkpoint complete (`completed`, as
    /// `ReaderProgress::committed` says) if it is newer than the last one
    /// committed. Both drivers call it before each turn.
    pub fn commit_completed(&mut self, dealer: &mut Dealer<'_>, completed: u64) -> Result<(), SourceError> {
        if completed <= self.committed || completed >= ReaderProgress::ABANDONED {
            return Ok(());
        }
        self.committed = completed;
        match dealer.cut_upto(completed) {
            Some(cut) => self.commit(&cut),
            None => Ok(()),
        }
    }

    /// After the source ended at `end` (`failed` if it failed), given what
    /// the output thread says (`committed`): true once the reader is done.
    /// When every output is final (`ALL`), an unfailed source commits
    /// everything read; an abandoned run commits nothing more.
    pub fn after_end(&mut self, end: &SourceCut, failed: bool, committed: u64) -> bool {
        match committed {
            ReaderProgress::ALL if !failed => {
                if let Err(e) = self.commit(end) {
                    log::warn!("a source's last commit failed: {e}");
                }
                true
            }
            ReaderProgress::ALL | ReaderProgress::ABANDONED => true,
            _ => false,
        }
    }

    fn end_partition(&mut self) -> ReadStep {
        let ended = self.partitions.remove(self.turn);
        self.ended.push(ended);
        self.idle_reads = 0;
        if self.partitions.is_empty() {
            ReadStep::Ended
        } else {
            ReadStep::Dealt
        }
    }
}

/// Where to cut `data` so the first part holds whole lines and is about
/// `target_bytes` long (longer only if one line is).
pub(crate) fn chunk_end(data: &[u8], target_bytes: usize) -> usize {
    if data.len() <= target_bytes {
        return data.len();
    }
    match memchr::memrchr(b'\n', &data[..target_bytes]) {
        Some(pos) => pos + 1,
        None => memchr::memchr(b'\n', &data[target_bytes..]).map_or(data.len(), |pos| target_bytes + pos + 1),
    }
}

/// One piece of a line-framed byte stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Whole lines (the last piece of a stream may end without `\n`).
    Lines(Bytes),
    /// A line over the size limit, skipped.
    Oversized { prefix: Bytes, size_bytes: u64 },
    /// A read timed out with no complete line: a chance to look at the stop flag.
    Idle,
}

/// Cuts a byte stream into pieces of whole lines, with a bound on line length so a
/// stream without newlines cannot exhaust memory.
pub struct LineChunker<R> {
    reader: R,
    buffer: BytesMut,
    chunk_bytes: usize,
    line_max_bytes: usize,
    /// Bytes of the current oversized line skipped so far (0 = not skipping).
    skipping_bytes: u64,
    skipped_prefix: Bytes,
    /// The last read returned less than asked: no more data is waiting, so whole
    /// lines go out now instead of waiting for a full chunk (TCP latency).
    short_read: bool,
    eof: bool,
    /// Bytes read from the stream so far.
    read_bytes: u64,
}

impl<R: Read> LineChunker<R> {
    pub fn new(reader: R, chunk_bytes: usize, line_max_bytes: usize) -> Self {
        assert!(chunk_bytes > 0 && line_max_bytes > 0);
        LineChunker {
            reader,
            buffer: BytesMut::new(),
            chunk_bytes,
            line_max_bytes,
            skipping_bytes: 0,
            skipped_prefix: Bytes::new(),
            short_read: false,
            eof: false,
            read_bytes: 0,
        }
    }

    /// Bytes of the stream handed out in pieces or skipped so far: after a
    /// piece, where it ends in the stream.
    pub fn consumed_bytes(&self) -> u64 {
        self.read_bytes - self.buffer.len() as u64
    }

    /// The next piece, or `None` at the end of the stream.
    pub fn next_piece(&mut self) -> io::Result<Option<Piece>> {
        loop {
            if let Some(piece) = self.take_ready() {
                return Ok(Some(piece));
            }
            if self.eof {
                return Ok(self.take_tail());
            }
            match self.fill() {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    self.short_read = true;
                    return Ok(Some(self.take_ready().unwrap_or(Piece::Idle)));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A piece available without reading more, if any.
    fn take_ready(&mut self) -> Option<Piece> {
        if self.skipping_bytes > 0 {
            return self.skip_oversized();
        }
        let newline = memchr::memrchr(b'\n', &self.buffer);
        match newline {
            Some(pos) if self.buffer.len() >= self.chunk_bytes || self.eof || self.short_read => {
                Some(Piece::Lines(self.buffer.split_to(pos + 1).freeze()))
            }
            Some(_) => None,
            None if self.buffer.len() > self.line_max_bytes => {
                let keep = OVERSIZED_PREFIX_BYTES.min(self.buffer.len());
                self.skipped_prefix = Bytes::copy_from_slice(&self.buffer[..keep]);
                self.skipping_bytes = self.buffer.len() as u64;
                self.buffer.clear();
                None
            }
            None => None,
        }
    }

    /// Drops bytes of an oversized line until its newline; then reports it.
    fn skip_oversized(&mut self) -> Option<Piece> {
        match memchr::memchr(b'\n', &self.buffer) {
            Some(pos) => {
                self.skipping_bytes += pos as u64;
                let _ = self.buffer.split_to(pos + 1);
                Some(self.finish_skip())
            }
            None if self.eof => Some(self.finish_skip()),
            None => {
                self.skipping_bytes += self.buffer.len() as u64;
                self.buffer.clear();
                None
            }
        }
    }

    fn finish_skip(&mut self) -> Piece {
        let piece = Piece::Oversized {
            prefix: std::mem::take(&mut self.skipped_prefix),
            size_bytes: self.skipping_bytes,
        };
        self.skipping_bytes = 0;
        piece
    }

    fn take_tail(&mut self) -> Option<Piece> {
        if self.skipping_bytes > 0 {
            return Some(self.finish_skip());
        }
        (!self.buffer.is_empty()).then(|| Piece::Lines(self.buffer.split().freeze()))
    }

    fn fill(&mut self) -> io::Result<()> {
        let start = self.buffer.len();
        self.buffer.resize(start + self.chunk_bytes, 0);
        let result = self.reader.read(&mut self.buffer[start..]);
        let read = *result.as_ref().unwrap_or(&0);
        self.buffer.truncate(start + read);
        let read = result?;
        self.read_bytes += read as u64;
        self.eof = read == 0;
        self.short_read = read < self.chunk_bytes;
        Ok(())
    }
}

/// The shared stop flag (Ctrl-C) that readers poll.
pub type StopFlag = Arc<AtomicBool>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn pieces(input: &[u8], chunk: usize, line_max: usize) -> Vec<Piece> {
        let mut chunker = LineChunker::new(input, chunk, line_max);
        let mut out = Vec::new();
        while let Some(piece) = chunker.next_piece().unwrap() {
            out.push(piece);
        }
        out
    }

    fn joined_lines(pieces: &[Piece]) -> Vec<u8> {
        let mut all = Vec::new();
        for p in pieces {
            if let Piece::Lines(b) = p {
                all.extend_from_slice(b);
            }
        }
        all
    }

    #[test]
    fn pieces_hold_whole_lines_and_reassemble_the_input() {
        let input = b"one\ntwo\nthree\nfour";
        for chunk in [1, 2, 5, 64] {
            let ps = pieces(input, chunk, 1024);
            assert_eq!(joined_lines(&ps), input.to_vec(), "chunk {chunk}");
            for p in &ps[..ps.len() - 1] {
                if let Piece::Lines(b) = p {
                    assert_eq!(b.last(), Some(&b'\n'));
                }
            }
        }
    }

    #[test]
    fn an_oversized_line_is_reported_and_skipped() {
        let mut input = b"ok\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 500));
        input.extend_from_slice(b"\nafter\n");
        let ps = pieces(&input, 16, 100);
        assert_eq!(joined_lines(&ps), b"ok\nafter\n".to_vec());
        let oversized: Vec<_> = ps
            .iter()
            .filter(|p| matches!(p, Piece::Oversized { .. }))
            .collect();
        assert_eq!(oversized.len(), 1);
        if let Piece::Oversized { size_bytes, prefix } = oversized[0] {
            assert_eq!(*size_bytes, 500);
            assert_eq!(prefix.len(), OVERSIZED_PREFIX_BYTES);
        }
    }

    #[test]
    fn memory_chunks_end_on_line_boundaries() {
        let data = b"aaaa\nbb\ncccccccc\nd";
        assert_eq!(chunk_end(data, 6), 5);
        assert_eq!(chunk_end(data, 3), 5);
        assert_eq!(chunk_end(data, 100), data.len());
        assert_eq!(chunk_end(b"aaaaaaa", 3), 7);
    }

    #[test]
    fn parse_recognises_stdin_tcp_and_files() {
        let kind = |arg: &str| SourceSpec::parse(arg).connector.kind();
        assert_eq!(kind("-"), "stdin");
        assert_eq!(SourceSpec::parse("-").name, "stdin");
        assert_eq!(kind("tcp:127.0.0.1:9"), "tcp");
        assert_eq!(kind("tcp://127.0.0.1:9"), "tcp");
        assert_eq!(kind("in.txt"), "file");
        assert_eq!(kind("nosuch://x"), "file", "as before the registry");
    }

    #[test]
    fn the_chunker_counts_what_it_consumed() {
        let mut input = b"ok\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 500));
        input.extend_from_slice(b"\nafter\nend");
        let mut chunker = LineChunker::new(&input[..], 16, 100);
        let mut ends = Vec::new();
        while let Some(piece) = chunker.next_piece().unwrap() {
            let len = match &piece {
                Piece::Lines(b) => b.len() as u64,
                Piece::Oversized { size_bytes, .. } => size_bytes + 1,
                Piece::Idle => continue,
            };
            let start = ends.last().copied().unwrap_or(0);
            ends.push(chunker.consumed_bytes());
            assert_eq!(chunker.consumed_bytes() - start, len, "{piece:?}");
        }
        assert_eq!(ends.last().copied(), Some(input.len() as u64));
    }

    /// A live stream: each read returns the next of `arrivals` (what the
    /// sender wrote since the last read), and a read past them would block
    /// until more arrives, which a chunker holding whole lines must not wait for.
    struct Trickle {
        arrivals: std::collections::VecDeque<&'static [u8]>,
    }

    impl std::io::Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let arrival = self
                .arrivals
                .pop_front()
                .expect("read again while whole lines waited to be handed on");
            buf[..arrival.len()].copy_from_slice(arrival);
            Ok(arrival.len())
        }
    }

    #[test]
    fn a_live_streams_whole_lines_go_out_without_waiting_to_fill_a_chunk() {
        let arrivals = std::collections::VecDeque::from([&b"1\n2\n3"[..], &b"4\n"[..], &b"5\n6\n"[..]]);
        let mut chunker = LineChunker::new(Trickle { arrivals }, CHUNK_SIZE_BYTES, 100);
        // Each read's whole lines close a chunk at once, however small; the
        // partial line waits for its end.
        let mut pieces = Vec::new();
        for _ in 0..3 {
            match chunker.next_piece().unwrap() {
                Some(Piece::Lines(lines)) => pieces.push(lines),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(pieces, [&b"1\n2\n"[..], &b"34\n"[..], &b"5\n6\n"[..]]);
    }

    /// A source of several partitions, each a memory source of its own.
    struct Partitioned(Vec<Bytes>);

    impl SourceConnector for Partitioned {
        fn kind(&self) -> &'static str {
            "partitioned"
        }
        fn partitions(&self) -> Result<u32, SourceError> {
            Ok(self.0.len() as u32)
        }
        fn open(
            &mut self,
            name: &str,
            partition: u32,
            at: Option<Position>,
        ) -> Result<Box<dyn SourceReader>, SourceError> {
            let data = self.0[partition as usize].clone();
            MemorySource { data }.open(name, 0, at)
        }
    }

    fn deal_all(spec: SourceSpec, shards: usize) -> Vec<(usize, SourceEvent)> {
        let mut dealt = Vec::new();
        let mut send = |shard, event| {
            dealt.push((shard, event));
            true
        };
        let opened = open(spec).unwrap();
        // The output is final at once: the reader ends after its source.
        let progress = ReaderProgress::default();
        progress.committed.store(ReaderProgress::ALL, Ordering::Relaxed);
        crate::runtime::pump(
            opened,
            &AtomicBool::new(false),
            &progress,
            Dealer::new(3, shards, &mut send),
        );
        dealt
    }

    /// Reads `lines` lines of one chunk each; records every commit.
    struct Committing {
        lines: u64,
        read: u64,
        commits: Arc<std::sync::Mutex<Vec<Position>>>,
    }

    /// A reader of `lines` lines, and the commits it will record.
    fn committing(lines: u64) -> (Committing, Arc<std::sync::Mutex<Vec<Position>>>) {
        let commits = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = Committing {
            lines,
            read: 0,
            commits: Arc::clone(&commits),
        };
        (reader, commits)
    }

    impl SourceReader for Committing {
        fn next_chunk(&mut self) -> Result<Pull, SourceError> {
            if self.read == self.lines {
                return Ok(Pull::End);
            }
            self.read += 1;
            let data = ChunkData::Lines(Bytes::from_static(b"x\n"));
            let position = Position::Log { offset: self.read };
            Ok(Pull::Chunk(Chunk {
                data,
                records: 1,
                position,
                ids: RecordIds::Lines,
            }))
        }
        fn commit(&mut self, upto: &Position) -> Result<(), SourceError> {
            self.commits.lock().unwrap().push(*upto);
            Ok(())
        }
    }

    #[test]
    fn a_checkpoints_cut_is_committed_to_the_readers_and_the_end_once_the_output_is_final() {
        let (reader, commits) = committing(5);
        let mut reading = ReadLoop::new(vec![(0, Box::new(reader) as Box<dyn SourceReader>)]);
        let mut send = |_, _| true;
        let mut dealer = Dealer::new(0, 2, &mut send);
        for requested in [0, 0, 1, 1, 2] {
            assert_eq!(
                reading.turn(&mut dealer, false, requested).unwrap(),
                ReadStep::Dealt
            );
        }
        // Barrier 1 after two chunks, 2 after three.
        let cut = dealer.cut_upto(1).expect("barrier 1 was dealt");
        assert_eq!(cut.positions, vec![(0, Position::Log { offset: 2 })]);
        reading.commit(&cut).unwrap();
        assert_eq!(dealer.cut_upto(1), None, "taken");
        assert_eq!(
            dealer.cut_upto(2).unwrap().positions,
            vec![(0, Position::Log { offset: 3 })]
        );
        assert_eq!(*commits.lock().unwrap(), vec![Position::Log { offset: 2 }]);

        // Through `pump`: checkpoint 1 is complete before it reads; the rest
        // is committed only once the output is final.
        let (reader, commits) = committing(4);
        let source = OpenSource {
            partitions: vec![(0, Box::new(reader))],
        };
        let progress = Arc::new(ReaderProgress::default());
        progress.requested.store(1, Ordering::Relaxed);
        let pumping = {
            let progress = Arc::clone(&progress);
            std::thread::spawn(move || {
                let mut send = |_, _| true;
                crate::runtime::pump(
                    source,
                    &AtomicBool::new(false),
                    &progress,
                    Dealer::new(0, 1, &mut send),
                );
            })
        };
        // The reader waits after its end until the output is final.
        std::thread::sleep(STOP_POLL_INTERVAL * 2);
        assert!(!pumping.is_finished(), "the reader waits for the final commit");
        assert!(commits.lock().unwrap().is_empty(), "no checkpoint completed yet");
        progress.committed.store(ReaderProgress::ALL, Ordering::Relaxed);
        pumping.join().unwrap();
        assert_eq!(*commits.lock().unwrap(), vec![Position::Log { offset: 4 }]);
    }

    #[test]
    fn an_abandoned_run_commits_nothing_more() {
        let (reader, commits) = committing(3);
        let source = OpenSource {
            partitions: vec![(0, Box::new(reader))],
        };
        let progress = ReaderProgress::default();
        progress
            .committed
            .store(ReaderProgress::ABANDONED, Ordering::Relaxed);
        let mut send = |_, _| true;
        crate::runtime::pump(
            source,
            &AtomicBool::new(false),
            &progress,
            Dealer::new(0, 1, &mut send),
        );
        assert!(commits.lock().unwrap().is_empty());
    }

    #[test]
    fn every_partition_is_read_and_chunks_carry_their_partition_and_position() {
        let a: Bytes = (0..10_000)
            .flat_map(|i| format!("a{i}\n").into_bytes())
            .collect::<Vec<_>>()
            .into();
        let b = Bytes::from_static(b"b0\nb1\n");
        let spec = SourceSpec::from_connector("p", Box::new(Partitioned(vec![a.clone(), b.clone()])));
        let dealt = deal_all(spec, 2);
        let mut per_partition = [Vec::new(), Vec::new()];
        let mut next_line = 1;
        let mut ends = Vec::new();
        for (index, (shard, event)) in dealt.iter().enumerate() {
            match event {
                SourceEvent::Chunk {
                    source,
                    index: chunk,
                    first_line,
                    data: ChunkData::Lines(lines),
                    partition,
                    position,
                    ..
                } => {
                    assert_eq!((*source, *chunk, *shard), (3, index as u64, index % 2));
                    assert_eq!(*first_line, next_line, "lines numbered across partitions");
                    next_line += lines.iter().filter(|b| **b == b'\n').count() as u64;
                    let seen = &mut per_partition[*partition as usize];
                    seen.extend_from_slice(lines);
                    assert_eq!(
                        *position,
                        Position::Text {
                            bytes: seen.len() as u64,
                            lines: seen.iter().filter(|b| **b == b'\n').count() as u64
                        }
                    );
                }
                SourceEvent::End { source: 3, chunks } => ends.push(*chunks),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            ends,
            [dealt.len() as u64 - 2; 2],
            "every shard learns the chunk count"
        );
        assert_eq!(per_partition[0], a.to_vec());
        assert_eq!(per_partition[1], b.to_vec());
        assert!(
            matches!(dealt[1].1, SourceEvent::Chunk { partition: 1, .. }),
            "partitions take turns"
        );
    }

    #[test]
    fn deal_positions_chunks_by_what_was_dealt() {
        let mut dealt = Vec::new();
        let mut send = |_shard, event| {
            dealt.push(event);
            true
        };
        let mut dealer = Dealer::new(0, 1, &mut send);
        dealer.deal(ChunkData::Lines(Bytes::from_static(b"a\nbb\n")));
        dealer.deal(ChunkData::Oversized {
            prefix: Bytes::new(),
            size_bytes: 9,
        });
        dealer.finish(None);
        let positions: Vec<_> = dealt
            .iter()
            .filter_map(|e| match e {
                SourceEvent::Chunk { position, .. } => Some(*position),
                _ => None,
            })
            .collect();
        assert_eq!(
            positions,
            [
                Position::Text { bytes: 5, lines: 2 },
                Position::Text { bytes: 15, lines: 3 }
            ]
        );
    }
}
