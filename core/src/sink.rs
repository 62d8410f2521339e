//! Sinks and the output thread: the only place output and dead letters touch
//! files, sockets or the terminal. Shards hand it whole buffers of lines.

use crate::line::DeadLetter;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

/// How long connecting a TCP sink may take before the run fails.
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITER_BUFFER_BYTES: usize = 256 * 1024;

/// Where output lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    Stdout,
    File(PathBuf),
    /// Connect to this address and write lines.
    Tcp(String),
    /// Discard (benchmarks): outputs are still computed and formatted.
    Null,
}

impl SinkSpec {
    /// `-` is stdout, `null` discards, `tcp:HOST:PORT` connects, else a file.
    pub fn parse(arg: &str) -> SinkSpec {
        if arg == "-" {
            SinkSpec::Stdout
        } else if arg == "null" {
            SinkSpec::Null
        } else if let Some(addr) = crate::source::tcp_address(arg) {
            SinkSpec::Tcp(addr.to_string())
        } else {
            SinkSpec::File(PathBuf::from(arg))
        }
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
    pub fn open(&self) -> io::Result<Option<Box<dyn Write + Send>>> {
        Ok(match self {
            SinkSpec::Stdout => Some(Box::new(BufWriter::with_capacity(
                WRITER_BUFFER_BYTES,
                io::stdout(),
            ))),
            SinkSpec::File(path) => {
                let file = File::create(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot create output {}: {e}", path.display()))
                })?;
                Some(Box::new(BufWriter::with_capacity(WRITER_BUFFER_BYTES, file)))
            }
            SinkSpec::Tcp(addr) => Some(Box::new(BufWriter::with_capacity(
                WRITER_BUFFER_BYTES,
                connect(addr)?,
            ))),
            SinkSpec::Null => None,
        })
    }
}

fn connect(addr: &str) -> io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let fail = |e: io::Error| io::Error::new(e.kind(), format!("cannot connect output to {addr}: {e}"));
    let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
    for resolved in addr.to_socket_addrs().map_err(fail)? {
        match TcpStream::connect_timeout(&resolved, TCP_CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(fail(last))
}

/// Where rejected records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterSpec {
    Stderr,
    File(PathBuf),
}

impl DeadLetterSpec {
    pub fn parse(arg: &str) -> DeadLetterSpec {
        if arg == "-" {
            DeadLetterSpec::Stderr
        } else {
            DeadLetterSpec::File(PathBuf::from(arg))
        }
    }
}

/// What shards send to the output thread.
#[derive(Debug)]
pub enum OutputMessage {
    Lines(Vec<u8>),
    DeadLetter(DeadLetter),
}

/// Writes dead letters as `<source>:<line>: <reason>: <raw record>`; the file is
/// created on the first letter, so a clean run leaves none behind.
pub struct DeadLetterWriter {
    spec: DeadLetterSpec,
    source_names: Vec<String>,
    writer: Option<Box<dyn Write + Send>>,
    pub written: u64,
}

impl DeadLetterWriter {
    pub fn new(spec: DeadLetterSpec, source_names: Vec<String>) -> io::Result<Self> {
        if let DeadLetterSpec::File(path) = &spec {
            // A stale file from an earlier run would be read as this run's.
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot replace dead-letter file {}: {e}", path.display()),
                    ))
                }
                _ => {}
            }
        }
        Ok(DeadLetterWriter {
            spec,
            source_names,
            writer: None,
            written: 0,
        })
    }

    pub fn write(&mut self, letter: &DeadLetter) -> io::Result<()> {
        let raw = String::from_utf8_lossy(&letter.raw);
        let source = self.source_names.get(letter.id.producer as usize).cloned();
        let line = format!(
            "{}:{}: {}: {raw:?}",
            source.as_deref().unwrap_or("?"),
            letter.id.seq,
            letter.reason
        );
        writeln!(self.writer()?, "{line}")?;
        self.written += 1;
        Ok(())
    }

    fn writer(&mut self) -> io::Result<&mut Box<dyn Write + Send>> {
        if self.writer.is_none() {
            let writer: Box<dyn Write + Send> = match &self.spec {
                DeadLetterSpec::Stderr => Box::new(io::stderr()),
                DeadLetterSpec::File(path) => Box::new(BufWriter::new(File::create(path).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot create dead-letter file {}: {e}", path.display()),
                    )
                })?)),
            };
            self.writer = Some(writer);
        }
        Ok(self.writer.as_mut().expect("set just above"))
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.as_mut().map_or(Ok(()), |w| w.flush())
    }
}

/// The output thread's loop: runs until every sender is gone.
pub fn write_outputs(
    messages: crossbeam_channel::Receiver<OutputMessage>,
    mut sink: Option<Box<dyn Write + Send>>,
    mut dead_letters: DeadLetterWriter,
) -> io::Result<u64> {
    for message in messages {
        match message {
            OutputMessage::Lines(lines) => {
                if let Some(sink) = sink.as_mut() {
                    sink.write_all(&lines)?;
                }
            }
            OutputMessage::DeadLetter(letter) => dead_letters.write(&letter)?,
        }
    }
    if let Some(sink) = sink.as_mut() {
        sink.flush()?;
    }
    dead_letters.flush()?;
    Ok(dead_letters.written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MsgId;

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
            DeadLetterWriter::new(DeadLetterSpec::File(path.clone()), vec!["in.txt".into()]).unwrap();
        assert!(!path.exists(), "created lazily");
        let letter = DeadLetter::new(MsgId::new(0, 3), "not an integer".into(), &"x\ty".into());
        writer.write(&letter).unwrap();
        writer.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "in.txt:3: not an integer: \"x\\ty\"\n"
        );
    }
}
