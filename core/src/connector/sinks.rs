//! The built-in sinks: files, stdout/stderr, a TCP connection (to `verity
//! receive`, numbered and acked: `tcp_sink`), and null. None wants record
//! ids; each commit flushes (durable commits come with the exactly-once file
//! sink, see the notes in `connector`).

use super::tcp_sink::{TcpSink, TcpSinkOptions};
use super::{CommitId, SinkConnector, SinkError};
use crate::ids::MsgId;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

pub use super::tcp_sink::TCP_CONNECT_TIMEOUT;
/// Bytes gathered before a write reaches the file, terminal or socket.
pub const WRITER_BUFFER_BYTES: usize = 256 * 1024;

/// Any byte stream (stdout, stderr), or a TCP connection to `verity receive`.
pub struct WriteSink {
    writer: Writer,
}

enum Writer {
    Stream(Box<dyn Write + Send>),
    Tcp(Box<TcpSink>),
}

impl WriteSink {
    /// Buffered (stdout, sockets).
    pub fn buffered(writer: impl Write + Send + 'static) -> Self {
        WriteSink {
            writer: Writer::Stream(Box::new(BufWriter::with_capacity(WRITER_BUFFER_BYTES, writer))),
        }
    }

    /// Unbuffered (stderr: each dead letter shows at once).
    pub fn unbuffered(writer: impl Write + Send + 'static) -> Self {
        WriteSink {
            writer: Writer::Stream(Box::new(writer)),
        }
    }

    pub fn stdout() -> Self {
        WriteSink::buffered(io::stdout())
    }

    pub fn stderr() -> Self {
        WriteSink::unbuffered(io::stderr())
    }

    /// Connects to a `verity receive` at `address` now, so an unreachable
    /// receiver fails the run before any input is read. Lines go out as
    /// written, numbered and kept until acked (`TcpSink` with its default
    /// options: at-least-once).
    pub fn connect(address: &str) -> Result<Self, SinkError> {
        Self::connect_with(address, TcpSinkOptions::default())
    }

    /// `connect` with other options (a run with checkpoints stages its
    /// lines: `Release::OnCommit`).
    pub fn connect_with(address: &str, options: TcpSinkOptions) -> Result<Self, SinkError> {
        Ok(WriteSink {
            writer: Writer::Tcp(Box::new(TcpSink::connect(address, options)?)),
        })
    }
}

impl SinkConnector for WriteSink {
    fn write(&mut self, lines: &[u8], ids: &[MsgId]) -> Result<(), SinkError> {
        match &mut self.writer {
            Writer::Stream(writer) => Ok(writer.write_all(lines)?),
            Writer::Tcp(sink) => sink.write(lines, ids),
        }
    }

    fn barrier(&mut self, commit: CommitId) -> Result<(), SinkError> {
        match &mut self.writer {
            Writer::Stream(_) => Ok(()),
            Writer::Tcp(sink) => sink.barrier(commit),
        }
    }

    fn commit(&mut self, upto: CommitId) -> Result<(), SinkError> {
        match &mut self.writer {
            Writer::Stream(writer) => Ok(writer.flush()?),
            Writer::Tcp(sink) => sink.commit(upto),
        }
    }

    fn resume_mark(&mut self) -> Result<Vec<u8>, SinkError> {
        match &mut self.writer {
            Writer::Stream(_) => Ok(Vec::new()),
            Writer::Tcp(sink) => sink.resume_mark(),
        }
    }

    fn resume(&mut self, mark: &[u8]) -> Result<(), SinkError> {
        match &mut self.writer {
            Writer::Stream(_) => Ok(()),
            Writer::Tcp(sink) => sink.resume(mark),
        }
    }
}

/// A file, created (truncated) when opened, or on the first write.
pub struct FileSink {
    path: PathBuf,
    /// What a creation error calls the file ("output", "dead-letter file").
    role: &'static str,
    writer: Option<BufWriter<File>>,
    /// Bytes written to the file so far.
    written: u64,
}

impl FileSink {
    /// Creates the file now, so a bad path fails before the run.
    pub fn create(path: &Path) -> Result<Self, SinkError> {
        let mut sink = FileSink {
            path: path.to_path_buf(),
            role: "output",
            writer: None,
            written: 0,
        };
        sink.writer()?;
        Ok(sink)
    }

    /// Removes a stale file now (it would be read as this run's) and creates
    /// the file on the first write, so a run that writes nothing leaves none.
    pub fn create_on_first_write(path: &Path, role: &'static str) -> Result<Self, SinkError> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot replace {role} {}: {e}", path.display()),
                )
                .into())
            }
            _ => {}
        }
        Ok(FileSink {
            path: path.to_path_buf(),
            role,
            writer: None,
            written: 0,
        })
    }

    /// A file an earlier run wrote, left as it is until `resume` cuts it at
    /// the checkpoint's mark (a recovery).
    pub fn for_resume(path: &Path, role: &'static str) -> Self {
        FileSink {
            path: path.to_path_buf(),
            role,
            writer: None,
            written: 0,
        }
    }

    fn writer(&mut self) -> io::Result<&mut BufWriter<File>> {
        if self.writer.is_none() {
            let file = File::create(&self.path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot create {} {}: {e}", self.role, self.path.display()),
                )
            })?;
            self.writer = Some(BufWriter::with_capacity(WRITER_BUFFER_BYTES, file));
        }
        Ok(self.writer.as_mut().expect("set just above"))
    }
}

impl SinkConnector for FileSink {
    fn write(&mut self, lines: &[u8], _ids: &[MsgId]) -> Result<(), SinkError> {
        self.writer()?.write_all(lines)?;
        self.written += lines.len() as u64;
        Ok(())
    }

    fn commit(&mut self, _upto: CommitId) -> Result<(), SinkError> {
        self.writer.as_mut().map_or(Ok(()), |w| w.flush())?;
        Ok(())
    }

    /// The file's length, once all of it is on disk.
    fn resume_mark(&mut self) -> Result<Vec<u8>, SinkError> {
        if let Some(writer) = &mut self.writer {
            writer.flush()?;
            writer.get_ref().sync_data()?;
        }
        Ok(self.written.to_le_bytes().to_vec())
    }

    /// Reopens the file an earlier run wrote and cuts it at the mark's
    /// length: the uncommitted tail is written again by the recovered run.
    fn resume(&mut self, mark: &[u8]) -> Result<(), SinkError> {
        let length = <[u8; 8]>::try_from(mark)
            .map(u64::from_le_bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a file sink's mark is its length"))?;
        let describe = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot resume {} {} at byte {length}: {e}",
                    self.role,
                    self.path.display()
                ),
            )
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(describe)?;
        let found = file.metadata().map_err(describe)?.len();
        if found < length {
            return Err(describe(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("it holds only {found} bytes: it is not the file the checkpoint wrote"),
            ))
            .into());
        }
        file.set_len(length).map_err(describe)?;
        file.sync_all().map_err(describe)?;
        use std::io::Seek;
        file.seek(io::SeekFrom::End(0)).map_err(describe)?;
        self.writer = Some(BufWriter::with_capacity(WRITER_BUFFER_BYTES, file));
        self.written = length;
        Ok(())
    }
}

/// Discards output (benchmarks): outputs are still computed and formatted.
pub struct NullSink;

impl SinkConnector for NullSink {
    fn discards(&self) -> bool {
        true
    }

    fn write(&mut self, _lines: &[u8], _ids: &[MsgId]) -> Result<(), SinkError> {
        Ok(())
    }

    fn commit(&mut self, _upto: CommitId) -> Result<(), SinkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_sink_holds_what_was_written_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut sink = FileSink::create(&path).unwrap();
        assert!(path.exists(), "created at open");
        sink.write(b"a\nb\n", &[]).unwrap();
        sink.write(b"c\n", &[]).unwrap();
        sink.barrier(CommitId::END_OF_INPUT).unwrap();
        sink.commit(CommitId::END_OF_INPUT).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\nb\nc\n");
    }

    #[test]
    fn a_lazy_file_sink_replaces_a_stale_file_and_creates_on_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl");
        std::fs::write(&path, b"stale\n").unwrap();
        let mut sink = FileSink::create_on_first_write(&path, "dead-letter file").unwrap();
        assert!(!path.exists(), "the stale file is gone");
        sink.commit(CommitId::END_OF_INPUT).unwrap();
        assert!(!path.exists(), "nothing written, no file");
        sink.write(b"x\n", &[]).unwrap();
        sink.commit(CommitId::END_OF_INPUT).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x\n");
    }

    #[test]
    fn a_file_sink_names_a_path_it_cannot_create() {
        let e = FileSink::create(Path::new("/nonexistent/dir/out")).err().unwrap();
        assert!(
            e.to_string()
                .contains("cannot create output /nonexistent/dir/out"),
            "{e}"
        );
    }
}
