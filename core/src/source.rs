//! Sources: where lines come from, and the reader threads that cut them into
//! chunks of whole lines for the shard that owns the source.
//!
//! Readers do only I/O and line framing; parsing happens on the shard. A chunk is
//! one `Bytes` buffer of complete lines, so lines are later sliced out of it
//! without copying.

use bytes::{Bytes, BytesMut};
use std::fmt;
use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Target size of one chunk handed from a reader to its shard.
pub const CHUNK_SIZE_BYTES: usize = 64 * 1024;
/// Longest accepted input line; longer lines are dead-lettered, not buffered.
pub const LINE_SIZE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// How much of an oversized line the dead-letter record keeps.
const OVERSIZED_PREFIX_BYTES: usize = 64;
/// How often blocked readers look at the stop flag.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Writes generated input lines; deterministic for its seed.
pub trait LineGenerator: Send {
    /// Appends up to `lines_max` lines (each ending in `\n`) and returns how many
    /// it wrote; 0 means the generator is exhausted.
    fn write_lines(&mut self, out: &mut Vec<u8>, lines_max: usize) -> usize;
}

/// Where a source reads from.
pub enum SourceKind {
    File(PathBuf),
    Stdin,
    /// Listen on this address, accept one connection, read it to EOF.
    Tcp(String),
    Generated(Box<dyn LineGenerator>),
    /// Pre-loaded input (benchmarks, tests).
    Memory(Bytes),
}

/// A named source; the name appears in dead letters and errors.
pub struct SourceSpec {
    pub name: String,
    pub kind: SourceKind,
}

impl fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceSpec({})", self.name)
    }
}

impl SourceSpec {
    /// Parses a command-line source: `-` is stdin, `tcp:HOST:PORT` (or
    /// `tcp://HOST:PORT`) listens there, anything else is a file path.
    pub fn parse(arg: &str) -> SourceSpec {
        let kind = if arg == "-" {
            SourceKind::Stdin
        } else if let Some(addr) = tcp_address(arg) {
            SourceKind::Tcp(addr.to_string())
        } else {
            SourceKind::File(PathBuf::from(arg))
        };
        SourceSpec {
            name: if arg == "-" { "stdin".into() } else { arg.into() },
            kind,
        }
    }

    pub fn generated(name: &str, generator: Box<dyn LineGenerator>) -> SourceSpec {
        SourceSpec {
            name: name.into(),
            kind: SourceKind::Generated(generator),
        }
    }

    pub fn memory(name: &str, data: Bytes) -> SourceSpec {
        SourceSpec {
            name: name.into(),
            kind: SourceKind::Memory(data),
        }
    }
}

/// `tcp:HOST:PORT` or `tcp://HOST:PORT` → `HOST:PORT`.
pub fn tcp_address(arg: &str) -> Option<&str> {
    arg.strip_prefix("tcp://").or_else(|| arg.strip_prefix("tcp:"))
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
}

/// What a reader thread tells the shards. Chunk `index` of a source goes to shard
/// `index % shards`; every shard gets the source's `End`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    Chunk {
        source: u32,
        index: u64,
        first_line: u64,
        data: ChunkData,
    },
    /// The source failed mid-stream (after it opened): reported, then ended.
    Failed { source: u32, error: String },
    /// No more chunks from `source`: it had `chunks` in all.
    End { source: u32, chunks: u64 },
}

/// Numbers a source's chunks and deals them round-robin over the shards.
pub struct Dealer<'a> {
    source: u32,
    shards: usize,
    next_index: u64,
    next_line: u64,
    send: &'a mut dyn FnMut(usize, SourceEvent) -> bool,
}

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
            send,
        }
    }

    pub fn deal(&mut self, data: ChunkData) -> bool {
        let lines = data.line_count();
        let event = SourceEvent::Chunk {
            source: self.source,
            index: self.next_index,
            first_line: self.next_line,
            data,
        };
        let shard = (self.next_index % self.shards as u64) as usize;
        self.next_index += 1;
        self.next_line += lines;
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

/// An opened source, ready to be read on its own thread.
pub enum OpenSource {
    Reader(Box<dyn Read + Send>),
    Listener(TcpListener),
    Generated(Box<dyn LineGenerator>),
    Memory(Bytes),
}

/// Opens a source now, so a missing file or a busy port fails before the run.
pub fn open(spec: SourceSpec) -> io::Result<OpenSource> {
    Ok(match spec.kind {
        SourceKind::File(path) => {
            let file = std::fs::File::open(&path).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot open input {}: {e}", path.display()))
            })?;
            if file.metadata()?.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("input {} is a directory", path.display()),
                ));
            }
            OpenSource::Reader(Box::new(file))
        }
        SourceKind::Stdin => OpenSource::Reader(Box::new(ThreadedStdin::spawn())),
        SourceKind::Tcp(addr) => {
            let listener = TcpListener::bind(&addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            listener.set_nonblocking(true)?;
            eprintln!(
                "verity: source {} listening on {}",
                spec.name,
                listener.local_addr()?
            );
            OpenSource::Listener(listener)
        }
        SourceKind::Generated(generator) => OpenSource::Generated(generator),
        SourceKind::Memory(data) => OpenSource::Memory(data),
    })
}

/// Reads `source` to its end, dealing its chunks. Returns when the source ends,
/// fails, or `stop` is set.
pub fn pump(source: OpenSource, stop: &AtomicBool, mut dealer: Dealer<'_>) {
    let outcome = match source {
        OpenSource::Reader(reader) => pump_reader(reader, stop, &mut dealer),
        OpenSource::Listener(listener) => match accept(&listener, stop) {
            Ok(Some(stream)) => pump_reader(Box::new(stream), stop, &mut dealer),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        },
        OpenSource::Generated(generator) => {
            pump_generator(generator, stop, &mut dealer);
            Ok(())
        }
        OpenSource::Memory(data) => {
            pump_memory(data, stop, &mut dealer);
            Ok(())
        }
    };
    dealer.finish(outcome.err().map(|e| e.to_string()));
}

fn accept(listener: &TcpListener, stop: &AtomicBool) -> io::Result<Option<TcpStream>> {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _peer)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(STOP_POLL_INTERVAL))?;
                return Ok(Some(stream));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(STOP_POLL_INTERVAL),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn pump_reader(reader: Box<dyn Read + Send>, stop: &AtomicBool, dealer: &mut Dealer<'_>) -> io::Result<()> {
    let mut chunker = LineChunker::new(reader, CHUNK_SIZE_BYTES, LINE_SIZE_MAX_BYTES);
    while !stop.load(Ordering::Relaxed) {
        let data = match chunker.next_piece()? {
            Some(Piece::Lines(data)) => ChunkData::Lines(data),
            Some(Piece::Oversized { prefix, size_bytes }) => ChunkData::Oversized { prefix, size_bytes },
            Some(Piece::Idle) => continue,
            None => break,
        };
        if !dealer.deal(data) {
            break;
        }
    }
    Ok(())
}

fn pump_generator(mut generator: Box<dyn LineGenerator>, stop: &AtomicBool, dealer: &mut Dealer<'_>) {
    // Lines per chunk chosen so a chunk of typical generated lines is near
    // CHUNK_SIZE_BYTES.
    const LINES_PER_CHUNK: usize = 2048;
    while !stop.load(Ordering::Relaxed) {
        let mut buffer = Vec::with_capacity(CHUNK_SIZE_BYTES + CHUNK_SIZE_BYTES / 2);
        if generator.write_lines(&mut buffer, LINES_PER_CHUNK) == 0
            || !dealer.deal(ChunkData::Lines(buffer.into()))
        {
            break;
        }
    }
}

fn pump_memory(mut data: Bytes, stop: &AtomicBool, dealer: &mut Dealer<'_>) {
    while !data.is_empty() && !stop.load(Ordering::Relaxed) {
        let cut = chunk_end(&data, CHUNK_SIZE_BYTES);
        if !dealer.deal(ChunkData::Lines(data.split_to(cut))) {
            break;
        }
    }
}

/// Stdin read on a helper thread, so the pump can wake every
/// `STOP_POLL_INTERVAL` to look at the stop flag even while no input arrives.
/// (A blocking read cannot be interrupted, and edge-triggered polling of a
/// blocking fd misses an end of input that arrived with the last data.)
struct ThreadedStdin {
    blocks: crossbeam_channel::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    consumed: usize,
    ended: bool,
}

/// Stdin blocks read ahead of the pump.
const STDIN_BLOCKS_AHEAD: usize = 4;

impl ThreadedStdin {
    fn spawn() -> Self {
        let (sender, blocks) = crossbeam_channel::bounded(STDIN_BLOCKS_AHEAD);
        std::thread::Builder::new()
            .name("verity-stdin".into())
            .spawn(move || {
                let mut stdin = io::stdin().lock();
                loop {
                    let mut block = vec![0; CHUNK_SIZE_BYTES];
                    let result = match stdin.read(&mut block) {
                        Ok(read) => {
                            block.truncate(read);
                            Ok(block)
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => Err(e),
                    };
                    let last = !matches!(&result, Ok(block) if !block.is_empty());
                    if sender.send(result).is_err() || last {
                        return;
                    }
                }
            })
            .expect("spawn stdin reader thread");
        ThreadedStdin {
            blocks,
            current: Vec::new(),
            consumed: 0,
            ended: false,
        }
    }
}

impl Read for ThreadedStdin {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.consumed == self.current.len() && !self.ended {
            match self.blocks.recv_timeout(STOP_POLL_INTERVAL) {
                Ok(block) => {
                    self.current = block?;
                    self.consumed = 0;
                    self.ended = self.current.is_empty();
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    return Err(io::ErrorKind::TimedOut.into())
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => self.ended = true,
            }
        }
        let available = &self.current[self.consumed..];
        let read = available.len().min(buf.len());
        buf[..read].copy_from_slice(&available[..read]);
        self.consumed += read;
        Ok(read)
    }
}

/// Where to cut `data` so the first part holds whole lines and is about
/// `target_bytes` long (longer only if one line is).
fn chunk_end(data: &[u8], target_bytes: usize) -> usize {
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
        }
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
        assert!(matches!(SourceSpec::parse("-").kind, SourceKind::Stdin));
        assert!(
            matches!(SourceSpec::parse("tcp:127.0.0.1:9").kind, SourceKind::Tcp(a) if a == "127.0.0.1:9")
        );
        assert!(matches!(
            SourceSpec::parse("tcp://127.0.0.1:9").kind,
            SourceKind::Tcp(_)
        ));
        assert!(matches!(SourceSpec::parse("in.txt").kind, SourceKind::File(_)));
    }
}
