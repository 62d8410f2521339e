//! The built-in sinks: files, stdout/stderr, a TCP connection, and null. None
//! wants record ids; each commit flushes (durable commits come with the
//! exactly-once file sink, see the notes in `connector`).

use super::{CommitId, SinkConnector, SinkError};
use crate::ids::MsgId;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long connecting a TCP sink may take before the run fails.
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes gathered before a write reaches the file, terminal or socket.
pub const WRITER_BUFFER_BYTES: usize = 256 * 1024;

/// Any byte stream: stdout, stderr, a TCP connection.
pub struct WriteSink {
    writer: Box<dyn Write + Send>,
}

impl WriteSink {
    /// Buffered (stdout, sockets).
    pub fn buffered(writer: impl Write + Send + 'static) -> Self {
        WriteSink {
            writer: Box::new(BufWriter::with_capacity(WRITER_BUFFER_BYTES, writer)),
        }
    }

    /// Unbuffered (stderr: each dead letter shows at once).
    pub fn unbuffered(writer: impl Write + Send + 'static) -> Self {
        WriteSink {
            writer: Box::new(writer),
        }
    }

    pub fn stdout() -> Self {
        WriteSink::buffered(io::stdout())
    }

    pub fn stderr() -> Self {
        WriteSink::unbuffered(io::stderr())
    }

    /// Connects to `address` now, so an unreachable receiver fails the run
    /// before any input is read.
    pub fn connect(address: &str) -> Result<Self, SinkError> {
        Ok(WriteSink::buffered(connect(address)?))
    }
}

impl SinkConnector for WriteSink {
    fn write(&mut self, lines: &[u8], _ids: &[MsgId]) -> Result<(), SinkError> {
        Ok(self.writer.write_all(lines)?)
    }

    fn commit(&mut self, _upto: CommitId) -> Result<(), SinkError> {
        Ok(self.writer.flush()?)
    }
}

fn connect(address: &str) -> io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let fail = |e: io::Error| io::Error::new(e.kind(), format!("cannot connect output to {address}: {e}"));
    let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
    for resolved in address.to_socket_addrs().map_err(fail)? {
        match TcpStream::connect_timeout(&resolved, TCP_CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(fail(last))
}

/// A file, created (truncated) when opened, or on the first write.
pub struct FileSink {
    path: PathBuf,
    /// What a creation error calls the file ("output", "dead-letter file").
    role: &'static str,
    writer: Option<BufWriter<File>>,
}

impl FileSink {
    /// Creates the file now, so a bad path fails before the run.
    pub fn create(path: &Path) -> Result<Self, SinkError> {
        let mut sink = FileSink {
            path: path.to_path_buf(),
            role: "output",
            writer: None,
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
        })
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
        Ok(self.writer()?.write_all(lines)?)
    }

    fn commit(&mut self, _upto: CommitId) -> Result<(), SinkError> {
        self.writer.as_mut().map_or(Ok(()), |w| w.flush())?;
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

    #[test]
    fn a_tcp_sink_writes_to_its_receiver() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let mut sink = WriteSink::connect(&address).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        sink.write(b"1\n2\n", &[]).unwrap();
        sink.commit(CommitId::END_OF_INPUT).unwrap();
        drop(sink);
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        assert_eq!(received, b"1\n2\n");
    }
}
