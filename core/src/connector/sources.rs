//! The built-in sources: files, stdin, a TCP listener, generators and memory.
//! All are text sources of one partition, positioned by `Position::Text`.

use super::{Chunk, Position, Pull, RecordIds, SourceConnector, SourceError, SourceReader};
use crate::source::{
    chunk_end, ChunkData, LineChunker, LineGenerator, Piece, CHUNK_SIZE_BYTES, LINE_SIZE_MAX_BYTES,
    STOP_POLL_INTERVAL,
};
use bytes::Bytes;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

/// Lines asked of a generator per chunk, so a chunk of typical generated
/// lines is near `CHUNK_SIZE_BYTES`.
const GENERATED_LINES_PER_CHUNK: usize = 2048;
/// Lines a reopened generator skips per call while seeking its position.
const GENERATOR_SKIP_LINES_PER_CALL: usize = 4096;

/// Refuses every partition but 0 of a one-partition source.
pub(super) fn only_partition_zero(source_name: &str, partition: u32) -> Result<(), SourceError> {
    if partition == 0 {
        return Ok(());
    }
    Err(SourceError::NoSuchPartition {
        source_name: source_name.into(),
        partitions: 1,
        partition,
    })
}

/// A source that can only be read from its beginning refuses any position.
pub(super) fn refuse_rewind(
    source_name: &str,
    kind: &'static str,
    at: Option<Position>,
) -> Result<(), SourceError> {
    match at {
        None => Ok(()),
        Some(position) => Err(SourceError::CannotRewind {
            source_name: source_name.into(),
            kind,
            position,
        }),
    }
}

/// Where a text partition opens: at `at`'s byte and line, or its start.
pub(super) fn text_start(
    source_name: &str,
    kind: &'static str,
    at: Option<Position>,
) -> Result<(u64, u64), SourceError> {
    at.map_or(Ok((0, 0)), |at| text_position(source_name, kind, at))
}

/// The byte and line counts of a text position (a `Log` one is refused).
pub(super) fn text_position(
    source_name: &str,
    kind: &'static str,
    at: Position,
) -> Result<(u64, u64), SourceError> {
    match at {
        Position::Text { bytes, lines } => Ok((bytes, lines)),
        Position::Log { .. } => Err(SourceError::WrongPosition {
            source_name: source_name.into(),
            kind,
            position: at,
        }),
    }
}

/// Counts a text stream's bytes and lines so each chunk carries its position.
#[derive(Debug, Clone, Copy)]
pub(super) struct TextCursor {
    pub(super) bytes: u64,
    pub(super) lines: u64,
}

impl TextCursor {
    pub(super) fn at(bytes: u64, lines: u64) -> Self {
        TextCursor { bytes, lines }
    }

    /// A chunk of `records` lines that took `consumed_bytes` of the stream.
    fn chunk(&mut self, data: ChunkData, records: u64, consumed_bytes: u64) -> Pull {
        self.bytes += consumed_bytes;
        self.lines += records;
        Pull::Chunk(Chunk {
            data,
            records,
            position: Position::Text {
                bytes: self.bytes,
                lines: self.lines,
            },
            ids: RecordIds::Lines,
        })
    }
}

/// Any byte stream, cut into chunks of whole lines.
pub(super) struct LineReader<R> {
    chunker: LineChunker<R>,
    cursor: TextCursor,
    /// The chunker's consumed bytes when the last chunk went out.
    consumed_bytes: u64,
}

/// Any byte stream read from its start as a partition: chunks of about
/// `chunk_bytes` whole lines, lines over `line_max_bytes` dead-lettered. A
/// read that would block is an idle pull. (The simulator reads its input
/// through this, with small chunks.)
pub fn line_reader(
    reader: impl Read + Send + 'static,
    chunk_bytes: usize,
    line_max_bytes: usize,
) -> Box<dyn SourceReader> {
    Box::new(LineReader {
        chunker: LineChunker::new(reader, chunk_bytes, line_max_bytes),
        cursor: TextCursor::at(0, 0),
        consumed_bytes: 0,
    })
}

/// `line_reader` over a stream that starts `bytes` (holding `lines` lines)
/// into its partition (a recovery that reopens it there): positions go on
/// from there.
pub fn line_reader_at(
    reader: impl Read + Send + 'static,
    chunk_bytes: usize,
    line_max_bytes: usize,
    (bytes, lines): (u64, u64),
) -> Box<dyn SourceReader> {
    Box::new(LineReader {
        chunker: LineChunker::new(reader, chunk_bytes, line_max_bytes),
        cursor: TextCursor::at(bytes, lines),
        consumed_bytes: 0,
    })
}

impl<R: Read> LineReader<R> {
    pub(super) fn new(reader: R, cursor: TextCursor) -> Self {
        LineReader {
            chunker: LineChunker::new(reader, CHUNK_SIZE_BYTES, LINE_SIZE_MAX_BYTES),
            cursor,
            consumed_bytes: 0,
        }
    }

    pub(super) fn next(&mut self) -> io::Result<Pull> {
        let (data, records) = match self.chunker.next_piece()? {
            None => return Ok(Pull::End),
            Some(Piece::Idle) => return Ok(Pull::Idle),
            Some(Piece::Lines(lines)) => {
                let data = ChunkData::Lines(lines);
                let records = data.line_count();
                (data, records)
            }
            Some(Piece::Oversized { prefix, size_bytes }) => (ChunkData::Oversized { prefix, size_bytes }, 1),
        };
        let consumed = self.chunker.consumed_bytes();
        let step = consumed - self.consumed_bytes;
        self.consumed_bytes = consumed;
        Ok(self.cursor.chunk(data, records, step))
    }
}

impl<R: Read + Send> SourceReader for LineReader<R> {
    fn next_chunk(&mut self) -> Result<Pull, SourceError> {
        Ok(self.next()?)
    }
}

// ---- file ----------------------------------------------------------------

/// A file, read from the start or from a byte position.
pub struct FileSource {
    pub path: PathBuf,
}

impl SourceConnector for FileSource {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn open(
        &mut self,
        source_name: &str,
        partition: u32,
        at: Option<Position>,
    ) -> Result<Box<dyn SourceReader>, SourceError> {
        only_partition_zero(source_name, partition)?;
        let path = &self.path;
        let mut file = std::fs::File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open input {}: {e}", path.display())))?;
        let length = file.metadata()?;
        if length.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("input {} is a directory", path.display()),
            )
            .into());
        }
        let (bytes, lines) = text_start(source_name, self.kind(), at)?;
        if bytes > length.len() {
            return Err(SourceError::PositionPastEnd {
                source_name: source_name.into(),
                position: Position::Text { bytes, lines },
                detail: format!("the file has {} bytes", length.len()),
            });
        }
        file.seek(SeekFrom::Start(bytes))?;
        Ok(Box::new(LineReader::new(file, TextCursor::at(bytes, lines))))
    }
}

// ---- directory: one partition per file -----------------------------------

/// Most files a directory source takes as partitions (each is a reader's
/// open file).
pub const DIR_PARTITIONS_MAX: usize = 1024;

/// A directory whose files are the partitions (`dir://PATH`): its regular,
/// non-hidden files in name order, partition `p` the `p`-th. Every process
/// of a cluster that sees the directory at the same path (one machine, a
/// shared file system) reads its own partitions
/// (`readable_on_every_process`), so put a key's records in one file to keep
/// their order.
pub struct DirSource {
    pub path: PathBuf,
    /// The files, listed on the first call that needs them.
    files: Option<Vec<PathBuf>>,
}

impl DirSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DirSource {
            path: path.into(),
            files: None,
        }
    }

    fn files(&mut self) -> Result<&[PathBuf], SourceError> {
        if self.files.is_none() {
            self.files = Some(list_partition_files(&self.path)?);
        }
        Ok(self.files.as_deref().unwrap_or_default())
    }
}

/// The regular, non-hidden files of `dir` in name order (at least one).
fn list_partition_files(dir: &std::path::Path) -> Result<Vec<PathBuf>, SourceError> {
    let cannot = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot list input directory {}: {e}", dir.display()),
        )
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(cannot)? {
        let entry = entry.map_err(cannot)?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.file_type().map_err(cannot)?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    if files.is_empty() || files.len() > DIR_PARTITIONS_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "input directory {} has {} files; a directory source reads 1 to {DIR_PARTITIONS_MAX}",
                dir.display(),
                files.len()
            ),
        )
        .into());
    }
    Ok(files)
}

impl SourceConnector for DirSource {
    fn kind(&self) -> &'static str {
        "dir"
    }

    fn partitions(&self) -> Result<u32, SourceError> {
        match &self.files {
            Some(files) => Ok(files.len() as u32),
            None => Ok(list_partition_files(&self.path)?.len() as u32),
        }
    }

    fn readable_on_every_process(&self) -> bool {
        true
    }

    fn open(
        &mut self,
        source_name: &str,
        partition: u32,
        at: Option<Position>,
    ) -> Result<Box<dyn SourceReader>, SourceError> {
        let files = self.files()?;
        let Some(path) = files.get(partition as usize) else {
            return Err(SourceError::NoSuchPartition {
                source_name: source_name.into(),
                partitions: files.len() as u32,
                partition,
            });
        };
        FileSource { path: path.clone() }.open(source_name, 0, at)
    }
}

// ---- memory --------------------------------------------------------------

/// Pre-loaded input (benchmarks, tests): chunks are slices of one buffer,
/// never copies.
pub struct MemorySource {
    pub data: Bytes,
}

struct MemoryReader {
    rest: Bytes,
    cursor: TextCursor,
}

impl SourceConnector for MemorySource {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn open(
        &mut self,
        source_name: &str,
        partition: u32,
        at: Option<Position>,
    ) -> Result<Box<dyn SourceReader>, SourceError> {
        only_partition_zero(source_name, partition)?;
        let (bytes, lines) = text_start(source_name, self.kind(), at)?;
        let Some(start) = usize::try_from(bytes).ok().filter(|b| *b <= self.data.len()) else {
            return Err(SourceError::PositionPastEnd {
                source_name: source_name.into(),
                position: Position::Text { bytes, lines },
                detail: format!("the input has {} bytes", self.data.len()),
            });
        };
        Ok(Box::new(MemoryReader {
            rest: self.data.slice(start..),
            cursor: TextCursor::at(bytes, lines),
        }))
    }
}

impl SourceReader for MemoryReader {
    fn next_chunk(&mut self) -> Result<Pull, SourceError> {
        if self.rest.is_empty() {
            return Ok(Pull::End);
        }
        let cut = chunk_end(&self.rest, CHUNK_SIZE_BYTES);
        let data = ChunkData::Lines(self.rest.split_to(cut));
        let records = data.line_count();
        Ok(self.cursor.chunk(data, records, cut as u64))
    }
}

// ---- generator -----------------------------------------------------------

/// Makes a fresh generator, at its first line (generators are deterministic,
/// so a new one replays the same lines).
pub type GeneratorFactory = Box<dyn Fn() -> Box<dyn LineGenerator> + Send>;

/// Generated input; reopening at a position skips that many lines of a fresh
/// generator and checks that they took the position's bytes.
pub struct GeneratorSource {
    pub make: GeneratorFactory,
}

struct GeneratorReader {
    generator: Box<dyn LineGenerator>,
    cursor: TextCursor,
}

impl GeneratorSource {
    /// Skips `lines` lines of `generator`; returns the bytes they took, or
    /// how many lines it had if fewer.
    fn skip(generator: &mut dyn LineGenerator, lines: u64) -> Result<u64, u64> {
        let mut scratch = Vec::with_capacity(CHUNK_SIZE_BYTES * 2);
        let (mut skipped, mut bytes) = (0, 0);
        while skipped < lines {
            scratch.clear();
            let want = (lines - skipped).min(GENERATOR_SKIP_LINES_PER_CALL as u64) as usize;
            let wrote = generator.write_lines(&mut scratch, want);
            if wrote == 0 {
                return Err(skipped);
            }
            skipped += wrote as u64;
            bytes += scratch.len() as u64;
        }
        Ok(bytes)
    }
}

impl SourceConnector for GeneratorSource {
    fn kind(&self) -> &'static str {
        "generator"
    }

    fn open(
        &mut self,
        source_name: &str,
        partition: u32,
        at: Option<Position>,
    ) -> Result<Box<dyn SourceReader>, SourceError> {
        only_partition_zero(source_name, partition)?;
        let mut generator = (self.make)();
        let (bytes, lines) = text_start(source_name, self.kind(), at)?;
        let past_end = |detail: String| SourceError::PositionPastEnd {
            source_name: source_name.into(),
            position: Position::Text { bytes, lines },
            detail,
        };
        match GeneratorSource::skip(&mut *generator, lines) {
            Ok(skipped_bytes) if skipped_bytes == bytes => {}
            Ok(skipped_bytes) => {
                return Err(past_end(format!(
                    "its first {lines} lines hold {skipped_bytes} bytes, not {bytes}: another generator's position"
                )))
            }
            Err(had) => return Err(past_end(format!("the generator has {had} lines"))),
        }
        Ok(Box::new(GeneratorReader {
            generator,
            cursor: TextCursor::at(bytes, lines),
        }))
    }
}

impl SourceReader for GeneratorReader {
    fn next_chunk(&mut self) -> Result<Pull, SourceError> {
        let mut buffer = Vec::with_capacity(CHUNK_SIZE_BYTES + CHUNK_SIZE_BYTES / 2);
        let lines = self.generator.write_lines(&mut buffer, GENERATED_LINES_PER_CHUNK);
        if lines == 0 {
            return Ok(Pull::End);
        }
        let consumed = buffer.len() as u64;
        Ok(self
            .cursor
            .chunk(ChunkData::Lines(buffer.into()), lines as u64, consumed))
    }
}

// ---- stdin ---------------------------------------------------------------

/// Standard input; it cannot rewind.
pub struct StdinSource;

impl SourceConnector for StdinSource {
    fn kind(&self) -> &'static str {
        "stdin"
    }

    fn open(
        &mut self,
        source_name: &str,
        partition: u32,
        at: Option<Position>,
    ) -> Result<Box<dyn SourceReader>, SourceError> {
        only_partition_zero(source_name, partition)?;
        refuse_rewind(source_name, self.kind(), at)?;
        Ok(Box::new(LineReader::new(
            ThreadedStdin::spawn()?,
            TextCursor::at(0, 0),
        )))
    }
}

/// Stdin read on a helper thread, so the reader can wake every
/// `STOP_POLL_INTERVAL` to look at the stop flag even while no input arrives.
/// (A blocking read cannot be interrupted, and edge-triggered polling of a
/// blocking fd misses an end of input that arrived with the last data.)
struct ThreadedStdin {
    blocks: crossbeam_channel::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    consumed: usize,
    ended: bool,
}

/// Stdin blocks read ahead of the reader.
const STDIN_BLOCKS_AHEAD: usize = 4;

impl ThreadedStdin {
    fn spawn() -> io::Result<Self> {
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
            })?;
        Ok(ThreadedStdin {
            blocks,
            current: Vec::new(),
            consumed: 0,
            ended: false,
        })
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

// ---- TCP ----------------------------------------------------------------

/// The TCP source lives in its own module (it speaks `verity send`'s protocol).
pub use super::tcp_source::TcpListenSource;

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Reads a reader to its end: the chunks and what they hold.
    fn read_all(reader: &mut dyn SourceReader) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        loop {
            match reader.next_chunk().unwrap() {
                Pull::Chunk(chunk) => chunks.push(chunk),
                Pull::Idle => {}
                Pull::End => return chunks,
            }
        }
    }

    pub(in crate::connector) fn bytes_of(chunks: &[Chunk]) -> Vec<u8> {
        let mut all = Vec::new();
        for chunk in chunks {
            if let ChunkData::Lines(lines) = &chunk.data {
                all.extend_from_slice(lines);
            }
        }
        all
    }

    /// Numbered lines, long enough for several chunks.
    fn numbered_lines(count: u64) -> Vec<u8> {
        (1..=count)
            .flat_map(|i| format!("line {i:06}\n").into_bytes())
            .collect()
    }

    #[test]
    fn a_directory_is_one_partition_per_visible_file_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), numbered_lines(20_000)).unwrap();
        std::fs::write(dir.path().join("a.txt"), b"first\nsecond\n").unwrap();
        std::fs::write(dir.path().join(".hidden"), b"not a partition\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut source = DirSource::new(dir.path());
        assert_eq!(source.partitions().unwrap(), 2);
        assert!(source.readable_on_every_process());
        let a = read_all(&mut *source.open("d", 0, None).unwrap());
        assert_eq!(bytes_of(&a), b"first\nsecond\n");
        // Partition 1 reopens at a position like the file it is.
        let b = read_all(&mut *source.open("d", 1, None).unwrap());
        assert_eq!(bytes_of(&b), numbered_lines(20_000));
        let rest = read_all(&mut *source.open("d", 1, Some(b[0].position)).unwrap());
        assert_eq!(bytes_of(&rest), numbered_lines(20_000)[bytes_of(&b[..1]).len()..]);
        let e = source.open("d", 2, None).err().unwrap();
        assert!(e.to_string().contains("no partition 2"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = DirSource::new(empty.path()).partitions().err().unwrap();
        assert!(e.to_string().contains("has 0 files"), "{e}");
    }

    /// Opens `source` at each chunk's position of a first full read and checks
    /// that the rest is exactly what followed that chunk.
    fn check_reopen_yields_the_rest(source: &mut dyn SourceConnector) {
        let first = read_all(&mut *source.open("s", 0, None).unwrap());
        assert!(first.len() >= 3, "want several chunks, got {}", first.len());
        let all = bytes_of(&first);
        let mut lines_before = 0;
        for (index, chunk) in first.iter().enumerate() {
            lines_before += chunk.records;
            let Position::Text { bytes, lines } = chunk.position else {
                panic!("a text position")
            };
            assert_eq!(lines, lines_before, "positions count lines");
            let rest = read_all(&mut *source.open("s", 0, Some(chunk.position)).unwrap());
            assert_eq!(bytes_of(&rest), all[bytes as usize..], "rest after chunk {index}");
            let last = rest.last().map_or(chunk.position, |c| c.position);
            assert_eq!(
                last,
                first.last().unwrap().position,
                "the rest ends where the source does"
            );
        }
        assert_eq!(
            read_all(&mut *source.open("s", 0, Some(Position::TEXT_START)).unwrap()),
            first,
            "the start position is the beginning"
        );
    }

    #[test]
    fn a_file_reopens_at_each_chunk_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, numbered_lines(20_000)).unwrap();
        check_reopen_yields_the_rest(&mut FileSource { path });
    }

    #[test]
    fn memory_reopens_at_each_chunk_position() {
        let mut source = MemorySource {
            data: numbered_lines(20_000).into(),
        };
        check_reopen_yields_the_rest(&mut source);
    }

    /// Writes numbered lines, deterministically, `total` in all.
    struct Counting {
        next: u64,
        total: u64,
    }

    impl LineGenerator for Counting {
        fn write_lines(&mut self, out: &mut Vec<u8>, lines_max: usize) -> usize {
            let end = (self.next + lines_max as u64).min(self.total);
            let wrote = (end - self.next) as usize;
            for i in self.next..end {
                out.extend_from_slice(format!("line {:06}\n", i + 1).as_bytes());
            }
            self.next = end;
            wrote
        }
    }

    fn counting(total: u64) -> GeneratorSource {
        GeneratorSource {
            make: Box::new(move || Box::new(Counting { next: 0, total })),
        }
    }

    #[test]
    fn a_generator_reopens_at_each_chunk_position() {
        check_reopen_yields_the_rest(&mut counting(20_000));
    }

    #[test]
    fn a_generator_refuses_a_position_it_cannot_have_made() {
        let mut source = counting(100);
        let wrong_bytes = Position::Text { bytes: 5, lines: 10 };
        let e = source.open("gen", 0, Some(wrong_bytes)).err().unwrap();
        assert!(matches!(e, SourceError::PositionPastEnd { .. }), "{e}");
        let too_far = Position::Text { bytes: 0, lines: 101 };
        let e = source.open("gen", 0, Some(too_far)).err().unwrap();
        assert!(e.to_string().contains("has 100 lines"), "{e}");
    }

    #[test]
    fn positions_past_the_end_or_of_another_kind_are_refused() {
        let mut memory = MemorySource {
            data: Bytes::from_static(b"a\nb\n"),
        };
        let past = Position::Text { bytes: 5, lines: 2 };
        assert!(matches!(
            memory.open("m", 0, Some(past)).err().unwrap(),
            SourceError::PositionPastEnd { .. }
        ));
        let log = Position::Log { offset: 1 };
        assert!(matches!(
            memory.open("m", 0, Some(log)).err().unwrap(),
            SourceError::WrongPosition { kind: "memory", .. }
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"a\nb\n").unwrap();
        let e = FileSource { path }.open("f", 0, Some(past)).err().unwrap();
        assert!(e.to_string().contains("has 4 bytes"), "{e}");
    }

    #[test]
    fn one_partition_sources_have_no_partition_one() {
        let mut memory = MemorySource { data: Bytes::new() };
        assert_eq!(memory.partitions().unwrap(), 1);
        assert!(matches!(
            memory.open("m", 1, None).err().unwrap(),
            SourceError::NoSuchPartition { partition: 1, .. }
        ));
    }

    #[test]
    fn stdin_cannot_rewind() {
        let at = Some(Position::Text { bytes: 10, lines: 1 });
        let e = StdinSource.open("stdin", 0, at).err().unwrap();
        assert!(
            matches!(e, SourceError::CannotRewind { kind: "stdin", .. }),
            "{e}"
        );
    }
}
