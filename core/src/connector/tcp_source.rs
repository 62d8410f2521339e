//! The TCP source: listens, and reads `verity send`'s replayable stream (the
//! protocol is in `tcp_stream`) or a plain sender's lines.
//!
//! With `verity send`, the source outlives connections: when one ends without
//! the sender's `End`, it waits for the sender to reconnect and asks it to
//! resume at the source's own position, which counts whole lines handed out
//! (the partial line a disconnect cut is dropped and asked for again). It can
//! be opened at a position (recovery): the sender still holds everything the
//! source did not ack. The stream ends only at the sender's `End`.
//!
//! A plain sender (`nc`) is read to the end of its one connection, as before:
//! it cannot be resumed, so a reconnect or a position other than the start is
//! refused for it. A connection that closes without sending a byte (a port
//! probe, a connection cut before its hello) is ignored: it does not end the
//! stream as an empty plain input would.

use super::sources::{only_partition_zero, text_position, text_start, LineReader, TextCursor};
use super::tcp_stream::{
    self, greeting, is_timeout, Greeting, SourceMessage, DATA_FRAME_MAX_BYTES, DATA_HEADER_BYTES,
    PREAMBLE_BYTES, SEND_MAGIC, TAG_DATA, TAG_END,
};
use super::{Position, Pull, SourceConnector, SourceError, SourceReader};
use crate::source::STOP_POLL_INTERVAL;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long writing an ack may block before the connection counts as broken
/// (the sender reads acks on a thread of its own, so this only trips on a
/// dead connection).
const ACK_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a reconnecting sender may take to say hello once connected.
const GREETING_PATIENCE: Duration = Duration::from_secs(5);

/// Listens on an address for `verity send` (replayable, reconnecting) or a
/// plain sender (one connection, read to its end).
pub struct TcpListenSource {
    pub address: String,
    /// Where the last `open` listens (useful with port 0).
    pub bound: Option<std::net::SocketAddr>,
    /// Ack only what `SourceReader::commit` says is durable (a run with
    /// checkpoints); otherwise ack what was handed to the runtime.
    pub acks_on_commit: bool,
}

impl TcpListenSource {
    pub fn new(address: &str) -> Self {
        TcpListenSource {
            address: address.into(),
            bound: None,
            acks_on_commit: false,
        }
    }
}

impl SourceConnector for TcpListenSource {
    fn kind(&self) -> &'static str {
        "tcp"
    }

    fn acknowledge_on_commit(&mut self) {
        self.acks_on_commit = true;
    }

    fn open(
        &mut self,
        source_name: &str,
        partition: u32,
        at: Option<Position>,
    ) -> Result<Box<dyn SourceReader>, SourceError> {
        only_partition_zero(source_name, partition)?;
        let (bytes, lines) = text_start(source_name, self.kind(), at)?;
        let address = &self.address;
        let listener = TcpListener::bind(address)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {address}: {e}")))?;
        listener.set_nonblocking(true)?;
        let bound = listener.local_addr()?;
        self.bound = Some(bound);
        log::info!("source {source_name} listening on {bound}");
        Ok(Box::new(TcpListenReader {
            source_name: source_name.into(),
            listener,
            acks_on_commit: self.acks_on_commit,
            cursor: TextCursor::at(bytes, lines),
            committed: bytes,
            plain_allowed: bytes == 0,
            connection: Connection::Waiting,
        }))
    }
}

/// Where the reader stands with its sender.
enum Connection {
    /// No sender: accept one.
    Waiting,
    /// Connected; its first bytes say whether it speaks the protocol.
    Greeting {
        stream: TcpStream,
        first: [u8; PREAMBLE_BYTES],
        have: usize,
    },
    /// A plain sender, read to its end.
    Plain(LineReader<io::Chain<io::Cursor<Vec<u8>>, TcpStream>>),
    /// `verity send`: its data frames, and a handle to write acks on.
    Sender {
        lines: LineReader<DataFrames>,
        acks: TcpStream,
        /// The total of the sender's `End`, once read.
        ended: Arc<OnceLock<u64>>,
    },
    /// The sender's `End` was read (`acks`: where later acks go, while the
    /// connection lasts).
    Ended { acks: Option<TcpStream> },
}

struct TcpListenReader {
    source_name: String,
    listener: TcpListener,
    acks_on_commit: bool,
    /// Where the chunks handed out so far end: where a sender resumes.
    cursor: TextCursor,
    /// The highest position `commit` acked.
    committed: u64,
    /// A plain sender is read only from the very start of a stream.
    plain_allowed: bool,
    connection: Connection,
}

impl SourceReader for TcpListenReader {
    fn next_chunk(&mut self) -> Result<Pull, SourceError> {
        // Each arm either returns or moves to the next state; a state change
        // loops so a fresh connection is read at once.
        loop {
            match &mut self.connection {
                Connection::Waiting => match self.listener.accept() {
                    Ok((stream, _peer)) => {
                        configure(&stream)?;
                        self.connection = Connection::Greeting {
                            stream,
                            first: [0; PREAMBLE_BYTES],
                            have: 0,
                        };
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(STOP_POLL_INTERVAL);
                        return Ok(Pull::Idle);
                    }
                    Err(e) => return Err(e.into()),
                },
                Connection::Greeting { .. } => {
                    if !self.greet()? {
                        return Ok(Pull::Idle);
                    }
                }
                Connection::Plain(lines) => return Ok(lines.next()?),
                Connection::Sender { lines, .. } => match lines.next() {
                    Ok(Pull::Chunk(chunk)) => {
                        if let Position::Text { bytes, lines } = chunk.position {
                            self.cursor = TextCursor::at(bytes, lines);
                        }
                        if !self.acks_on_commit {
                            self.ack(self.cursor.bytes);
                        }
                        return Ok(Pull::Chunk(chunk));
                    }
                    Ok(Pull::Idle) => {
                        self.take_newer_connection()?;
                        return Ok(Pull::Idle);
                    }
                    Ok(Pull::End) => return self.end(),
                    Err(e) => self.disconnected(&e),
                },
                Connection::Ended { .. } => {
                    self.serve_after_end();
                    return Ok(Pull::End);
                }
            }
        }
    }

    fn commit(&mut self, upto: &Position) -> Result<(), SourceError> {
        let (bytes, _) = text_position(&self.source_name, "tcp", *upto)?;
        if bytes > self.cursor.bytes {
            return Err(SourceError::PositionPastEnd {
                source_name: self.source_name.clone(),
                position: *upto,
                detail: format!("this reader handed out bytes up to {} only", self.cursor.bytes),
            });
        }
        self.committed = self.committed.max(bytes);
        if self.acks_on_commit {
            self.ack(self.committed);
            if matches!(self.connection, Connection::Ended { .. }) {
                self.serve_after_end();
            }
        }
        Ok(())
    }
}

fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(STOP_POLL_INTERVAL))?;
    stream.set_write_timeout(Some(ACK_WRITE_TIMEOUT))?;
    stream.set_nodelay(true)
}

impl TcpListenReader {
    /// Reads a new connection's first bytes; `true` once it is decided.
    fn greet(&mut self) -> Result<bool, SourceError> {
        let Connection::Greeting { stream, first, have } = &mut self.connection else {
            unreachable!("greet is called on a greeting connection")
        };
        let said = loop {
            match greeting(SEND_MAGIC, &first[..*have]) {
                Greeting::Undecided => {}
                decided => break decided,
            }
            match stream.read(&mut first[*have..]) {
                Ok(0) if *have == 0 => {
                    // A port probe (a health check, `nc -z`), or a cut before
                    // the hello: it does not end the stream (an empty plain
                    // stream would end the whole run).
                    log::info!(
                        "source {}: a connection closed without sending anything",
                        self.source_name
                    );
                    self.connection = Connection::Waiting;
                    return Ok(true);
                }
                Ok(0) => break Greeting::Plain,
                Ok(n) => *have += n,
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => return Ok(false),
                Err(e) => {
                    log::warn!(
                        "source {}: a connection failed before it said anything: {e}",
                        self.source_name
                    );
                    self.connection = Connection::Waiting;
                    return Ok(true);
                }
            }
        };
        let Connection::Greeting { stream, first, have } =
            std::mem::replace(&mut self.connection, Connection::Waiting)
        else {
            unreachable!()
        };
        match said {
            Greeting::Plain if self.plain_allowed => {
                self.plain_allowed = false;
                let seen = io::Cursor::new(first[..have].to_vec());
                self.connection = Connection::Plain(LineReader::new(seen.chain(stream), self.cursor));
            }
            Greeting::Plain if self.cursor.bytes == 0 => {
                log::warn!(
                    "source {}: ignored a second plain connection: only `verity send` can resume a stream",
                    self.source_name
                );
            }
            Greeting::Plain => {
                return Err(SourceError::CannotRewind {
                    source_name: self.source_name.clone(),
                    kind: "tcp",
                    position: Position::Text {
                        bytes: self.cursor.bytes,
                        lines: self.cursor.lines,
                    },
                })
            }
            Greeting::Protocol { version } if version != tcp_stream::VERSION => {
                log::error!(
                    "source {}: a sender speaks protocol version {version}, this verity speaks {}: closed it",
                    self.source_name,
                    tcp_stream::VERSION
                );
            }
            Greeting::Protocol { .. } => self.start_sender(stream)?,
            Greeting::Undecided => unreachable!("decided above"),
        }
        Ok(true)
    }

    /// Tells a `verity send` where to resume and reads its frames from there.
    fn start_sender(&mut self, stream: TcpStream) -> Result<(), SourceError> {
        self.plain_allowed = false;
        let mut acks = stream.try_clone()?;
        let resume = SourceMessage::Resume {
            from: self.cursor.bytes,
            acks_on_commit: self.acks_on_commit,
        };
        if let Err(e) = acks.write_all(&resume.encode()) {
            log::info!(
                "source {}: a sender left before it was told where to resume: {e}",
                self.source_name
            );
            return Ok(());
        }
        log::info!(
            "source {}: verity send connected, resuming at {}",
            self.source_name,
            Position::Text {
                bytes: self.cursor.bytes,
                lines: self.cursor.lines
            }
        );
        let ended = Arc::new(OnceLock::new());
        self.connection = Connection::Sender {
            lines: LineReader::new(DataFrames::new(stream, ended.clone()), self.cursor),
            acks,
            ended,
        };
        Ok(())
    }

    /// The sender's `End` arrived and every line before it went out.
    fn end(&mut self) -> Result<Pull, SourceError> {
        let Connection::Sender { acks, ended, .. } =
            std::mem::replace(&mut self.connection, Connection::Waiting)
        else {
            unreachable!("end is called on a sender connection")
        };
        let total = *ended.get().expect("frames end only at the sender's end");
        if total != self.cursor.bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "source {}: the sender says its input has {total} bytes, but the stream held {}",
                    self.source_name, self.cursor.bytes
                ),
            )
            .into());
        }
        self.connection = Connection::Ended { acks: Some(acks) };
        if !self.acks_on_commit {
            self.ack(total);
        }
        self.send_on_ended(SourceMessage::Ended { upto: total });
        log::info!(
            "source {}: the sender's input ended at byte {total}",
            self.source_name
        );
        Ok(Pull::End)
    }

    fn disconnected(&mut self, e: &io::Error) {
        log::info!(
            "source {}: the sender's connection ended at byte {} ({e}); waiting for it to reconnect",
            self.source_name,
            self.cursor.bytes
        );
        self.connection = Connection::Waiting;
    }

    /// A sender that reconnects while its old connection looks alive (a
    /// silently dead one) replaces it.
    fn take_newer_connection(&mut self) -> Result<(), SourceError> {
        match self.listener.accept() {
            Ok((stream, _)) => {
                log::info!(
                    "source {}: a new connection replaces the sender's old one",
                    self.source_name
                );
                configure(&stream)?;
                self.connection = Connection::Greeting {
                    stream,
                    first: [0; PREAMBLE_BYTES],
                    have: 0,
                };
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Acks `upto` to the sender, if one is connected; a failed write breaks
    /// the connection (the sender reconnects and is told where to resume).
    fn ack(&mut self, upto: u64) {
        match &mut self.connection {
            Connection::Sender { acks, .. } => {
                if let Err(e) = acks.write_all(&SourceMessage::Ack { upto }.encode()) {
                    self.disconnected(&e);
                }
            }
            Connection::Ended { .. } => self.send_on_ended(SourceMessage::Ack { upto }),
            _ => {}
        }
    }

    fn send_on_ended(&mut self, message: SourceMessage) {
        if let Connection::Ended { acks } = &mut self.connection {
            if let Some(stream) = acks {
                if stream.write_all(&message.encode()).is_err() {
                    *acks = None;
                }
            }
        }
    }

    /// After the end, a sender that lost its connection before its last ack
    /// reconnects: greet it (bounded), tell it everything arrived, and ack
    /// what is committed.
    fn serve_after_end(&mut self) {
        let Connection::Ended { acks } = &mut self.connection else {
            return;
        };
        if acks.is_some() {
            return;
        }
        let Ok((mut stream, _)) = self.listener.accept() else {
            return;
        };
        let greeted = configure(&stream).is_ok() && read_preamble(&mut stream, GREETING_PATIENCE);
        if !greeted {
            return;
        }
        let total = self.cursor.bytes;
        let acked = if self.acks_on_commit {
            self.committed
        } else {
            total
        };
        let mut messages = Vec::with_capacity(3 * tcp_stream::SOURCE_MESSAGE_BYTES);
        for m in [
            SourceMessage::Resume {
                from: total,
                acks_on_commit: self.acks_on_commit,
            },
            SourceMessage::Ack { upto: acked },
            SourceMessage::Ended { upto: total },
        ] {
            messages.extend_from_slice(&m.encode());
        }
        if stream.write_all(&messages).is_ok() {
            *acks = Some(stream);
        }
    }
}

/// Reads a `verity send` preamble within `patience`.
fn read_preamble(stream: &mut TcpStream, patience: Duration) -> bool {
    let started = Instant::now();
    let mut first = [0; PREAMBLE_BYTES];
    let mut have = 0;
    while started.elapsed() < patience {
        match greeting(SEND_MAGIC, &first[..have]) {
            Greeting::Protocol { version } => return version == tcp_stream::VERSION,
            Greeting::Plain => return false,
            Greeting::Undecided => {}
        }
        match stream.read(&mut first[have..]) {
            Ok(0) => return false,
            Ok(n) => have += n,
            Err(e) if is_timeout(&e) => {}
            Err(_) => return false,
        }
    }
    false
}

/// The input bytes of a `verity send` connection: the payloads of its `Data`
/// frames, read straight into the caller's buffer; `Ok(0)` after its `End`;
/// an `UnexpectedEof` error when the connection ends without one (so the line
/// chunker never takes a cut-off line for the input's last).
struct DataFrames {
    stream: TcpStream,
    header: [u8; 9],
    header_have: usize,
    /// Payload bytes of the current `Data` frame still to read.
    in_frame: usize,
    /// The total the sender's `End` gave.
    ended: Arc<OnceLock<u64>>,
}

impl DataFrames {
    fn new(stream: TcpStream, ended: Arc<OnceLock<u64>>) -> Self {
        DataFrames {
            stream,
            header: [0; 9],
            header_have: 0,
            in_frame: 0,
            ended,
        }
    }

    /// Header bytes the frame being read needs.
    fn header_needs(&self) -> usize {
        match self.header_have {
            0 => 1,
            _ if self.header[0] == TAG_END => 9,
            _ => DATA_HEADER_BYTES,
        }
    }
}

fn cut_off() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the connection ended without the sender's end",
    )
}

impl Read for DataFrames {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.ended.get().is_some() || buf.is_empty() {
                return Ok(0);
            }
            if self.in_frame > 0 {
                let want = self.in_frame.min(buf.len());
                let read = self.stream.read(&mut buf[..want])?;
                if read == 0 {
                    return Err(cut_off());
                }
                self.in_frame -= read;
                return Ok(read);
            }
            let needs = self.header_needs();
            if self.header_have < needs {
                let read = self.stream.read(&mut self.header[self.header_have..needs])?;
                if read == 0 {
                    return Err(cut_off());
                }
                self.header_have += read;
                continue;
            }
            match self.header[0] {
                TAG_END => {
                    let total = u64::from_le_bytes(self.header[1..9].try_into().expect("8 bytes"));
                    let _ = self.ended.set(total);
                    return Ok(0);
                }
                TAG_DATA if needs == DATA_HEADER_BYTES => {
                    let len = u32::from_le_bytes(self.header[1..5].try_into().expect("4 bytes")) as usize;
                    if len > DATA_FRAME_MAX_BYTES {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("a data frame of {len} bytes (at most {DATA_FRAME_MAX_BYTES})"),
                        ));
                    }
                    self.in_frame = len;
                    self.header_have = 0;
                }
                tag => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("not a sender frame (tag {tag})"),
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "tcp_source_tests.rs"]
mod tests;
