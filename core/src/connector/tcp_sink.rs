//! The TCP sink: numbered lines to `verity receive` (the protocol is in
//! `tcp_stream`), kept until acked and resent after a reconnect, so nothing
//! is lost when a connection breaks and the receiver writes each line once.
//!
//! Two release modes:
//! * `Release::Immediately` (at-least-once): lines are final as written.
//! * `Release::OnCommit` (exactly-once with checkpoints): the receiver
//!   *stages* lines as they arrive and makes them final only when the sink
//!   commits them (the two-phase commit in `tcp_stream`): at a barrier the
//!   sink waits until everything before it is staged, its resume mark is the
//!   next line's number, and `commit` (after the checkpoint is durable) makes
//!   the lines through the barrier final. A recovered sink (`resume`)
//!   commits again what its checkpoint covered and aborts what was staged
//!   after it, so lines written again after a crash are never doubled, even
//!   when the crash came halfway through sending them.
//!
//! Memory: lines sent and not yet acked are bounded by `held_bytes_max`
//! (over it, a write waits for acks, at most `patience` without progress).
//! Spans are the buffers the output thread wrote, one per `write` (never one
//! per line), recycled once acked. The receiver's staged lines are bounded
//! by the checkpoint interval's output.
//!
//! The sink is driven only by the output thread's calls: a broken connection
//! is noticed, and the sink reconnects, on the next `write` or `commit`;
//! every `commit` waits until the receiver acked everything released.

use super::tcp_stream::{
    self, is_timeout, LinesHeader, ReceiverMessage, SinkHeader, LINES_FRAME_TARGET_BYTES, LINES_HEADER_BYTES,
    RECEIVER_MESSAGE_BYTES, SINK_MAGIC, SINK_VERSION_STAGED,
};
use super::{CommitId, SinkConnector, SinkError};
use crate::ids::MsgId;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// How long connecting (and the receiver's welcome) may take.
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Spans recycled for later writes, so a steady run allocates none.
const SPARE_SPANS: usize = 8;
/// The first pause between reconnect attempts.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(20);
/// The longest pause between reconnect attempts.
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long one wait for the socket lasts before the sink looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// When written lines may go to the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Final as written (at-least-once).
    Immediately,
    /// Staged by the receiver, final when `commit` says (exactly-once with
    /// checkpoints).
    OnCommit,
}

#[derive(Debug, Clone, Copy)]
pub struct TcpSinkOptions {
    pub release: Release,
    /// The sequence of the first line this sink writes: 1 for a fresh run,
    /// the committed line count + 1 after a recovery.
    pub first_seq: u64,
    /// The most bytes held (sent and not acked).
    pub held_bytes_max: usize,
    /// How long the receiver may make no progress (unreachable, or taking
    /// nothing) while the sink waits for it, before the run fails.
    pub patience: Duration,
}

impl Default for TcpSinkOptions {
    fn default() -> Self {
        TcpSinkOptions {
            release: Release::Immediately,
            first_seq: 1,
            held_bytes_max: 64 << 20,
            patience: Duration::from_secs(30),
        }
    }
}

/// A buffer of whole lines as written: lines `first..first + count`.
struct Span {
    first: u64,
    count: u64,
    lines: Vec<u8>,
}

/// What a pump waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Everything released is sent and the held bytes are within the bound.
    Room,
    /// Everything released is acked (staged, with `OnCommit`).
    Acked,
    /// The receiver made everything through `commit_target` final.
    Committed,
}

pub struct TcpSink {
    address: String,
    options: TcpSinkOptions,
    connection: Option<Connection>,
    spans: VecDeque<Span>,
    spare: Vec<Vec<u8>>,
    held_bytes: usize,
    /// The sequence the next written line gets.
    next_seq: u64,
    /// Lines below this may be sent.
    released: u64,
    /// The receiver holds every line up to this (staged or final).
    acked: u64,
    /// `OnCommit`: lines through this are final at the receiver, and lines
    /// through `commit_target` should be.
    receiver_committed: u64,
    commit_target: u64,
    /// `OnCommit` after a recovery: the receiver must drop what it staged
    /// past this before any new line.
    abort_past: Option<u64>,
    /// Barriers not yet committed: (commit, lines below this belong to it).
    barriers: VecDeque<(CommitId, u64)>,
    /// Since when the receiver is unreachable, and when to try it again.
    lost_since: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// One connection to the receiver, non-blocking.
struct Connection {
    stream: TcpStream,
    /// The next line to send on it, and where it starts in its span (the
    /// byte offset is found again when unknown).
    sent: u64,
    sent_offset: Option<usize>,
    /// The frame being written and how much of it went out.
    frame: Vec<u8>,
    frame_written: usize,
    message: [u8; RECEIVER_MESSAGE_BYTES],
    message_have: usize,
    /// The highest commit sent on this connection, and whether the abort was.
    commit_sent: u64,
    abort_sent: bool,
}

impl TcpSink {
    /// Connects to a `verity receive` at `address` now, so an unreachable
    /// receiver fails the run before any input is read.
    pub fn connect(address: &str, options: TcpSinkOptions) -> Result<Self, SinkError> {
        assert!(options.first_seq >= 1, "sequences start at 1");
        let mut sink = TcpSink {
            address: address.into(),
            options,
            connection: None,
            spans: VecDeque::new(),
            spare: Vec::new(),
            held_bytes: 0,
            next_seq: options.first_seq,
            released: options.first_seq,
            acked: options.first_seq - 1,
            receiver_committed: 0,
            commit_target: 0,
            abort_past: None,
            barriers: VecDeque::new(),
            lost_since: None,
            retry_at: None,
            backoff: RECONNECT_BACKOFF_MIN,
        };
        sink.connection = Some(sink.open_connection()?);
        Ok(sink)
    }

    /// Lines the receiver acked (its `have`).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    fn open_connection(&mut self) -> Result<Connection, SinkError> {
        let address = &self.address;
        let fail =
            |e: io::Error| io::Error::new(e.kind(), format!("cannot connect output to {address}: {e}"));
        let mut stream = connect(address).map_err(fail)?;
        stream.set_nodelay(true).map_err(fail)?;
        stream.set_read_timeout(Some(TCP_CONNECT_TIMEOUT)).map_err(fail)?;
        let mut preamble = tcp_stream::preamble(SINK_MAGIC);
        if self.staged() {
            preamble[tcp_stream::PREAMBLE_BYTES - 1] = SINK_VERSION_STAGED;
        }
        stream.write_all(&preamble).map_err(fail)?;
        let mut welcome = [0; RECEIVER_MESSAGE_BYTES];
        stream.read_exact(&mut welcome).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "output {address} did not welcome the sink ({e}): is it `verity receive`? \
                     The TCP sink sends framed, numbered lines, not plain text"
                ),
            )
        })?;
        let ReceiverMessage::Welcome { have } = ReceiverMessage::decode(&welcome)? else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("output {address}: no welcome"),
            )
            .into());
        };
        if self.staged() {
            let mut committed = [0; RECEIVER_MESSAGE_BYTES];
            stream.read_exact(&mut committed).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "output {address}: no word of what it committed ({e}): an older `verity receive`?"
                    ),
                )
            })?;
            let ReceiverMessage::Committed { upto } = ReceiverMessage::decode(&committed)? else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("output {address}: no word of what it committed"),
                )
                .into());
            };
            self.receiver_committed = upto;
            if self.abort_past.is_some_and(|keep| have <= keep) {
                self.abort_past = None; // nothing past it is staged
            }
        }
        let oldest = self.spans.front().map_or(self.next_seq, |s| s.first);
        if have + 1 < oldest {
            let why = if have < self.acked {
                "was the receiver restarted?"
            } else {
                "a receiver of another run?"
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "output {address} has lines up to {have}, but this sink holds lines from {oldest} on: \
                     lines {}..{} are missing ({why})",
                    have + 1,
                    oldest - 1
                ),
            )
            .into());
        }
        // What the receiver says it has is the truth, even below an older
        // ack (a receiver that lost lines this sink still holds gets them).
        self.acked = have;
        self.drop_acked();
        stream.set_nonblocking(true)?;
        Ok(Connection {
            stream,
            sent: self.acked + 1,
            sent_offset: None,
            frame: Vec::new(),
            frame_written: 0,
            message: [0; RECEIVER_MESSAGE_BYTES],
            message_have: 0,
            commit_sent: 0,
            abort_sent: false,
        })
    }

    fn staged(&self) -> bool {
        self.options.release == Release::OnCommit
    }

    /// Frees spans the receiver holds entirely.
    fn drop_acked(&mut self) {
        while let Some(span) = self.spans.front() {
            if span.first + span.count - 1 > self.acked {
                break;
            }
            let span = self.spans.pop_front().expect("a front span");
            self.held_bytes -= span.lines.len();
            if self.spare.len() < SPARE_SPANS {
                self.spare.push(span.lines);
            }
        }
    }

    /// Released lines not yet acked fit the bound.
    fn has_room(&self) -> bool {
        self.held_bytes <= self.options.held_bytes_max
    }

    fn done(&self, until: Until) -> bool {
        match until {
            Until::Room => self.has_room(),
            Until::Acked => self.all_acked(),
            Until::Committed => self.abort_past.is_none() && self.receiver_committed >= self.commit_target,
        }
    }

    /// Nothing to send or to wait for (a pending abort counts as something).
    fn all_acked(&self) -> bool {
        self.acked + 1 >= self.released && self.abort_past.is_none()
    }

    /// Sends, reads acks and reconnects until `until` holds, or fails when
    /// the receiver makes no progress (or stays unreachable) for `patience`.
    /// With room left, a lost receiver does not block a write: reconnecting
    /// is tried again once its backoff passed.
    fn pump(&mut self, until: Until) -> Result<(), SinkError> {
        let mut last_progress = Instant::now();
        loop {
            if self.all_acked() && self.done(Until::Committed) {
                // Nothing to send or to wait for: a receiver that left after
                // taking everything (`--expect`) is no failure.
                return Ok(());
            }
            if self.connection.is_none() {
                let lost_since = *self.lost_since.get_or_insert_with(Instant::now);
                let may_wait = until == Until::Room && self.has_room();
                if may_wait && self.retry_at.is_some_and(|at| Instant::now() < at) {
                    return Ok(());
                }
                match self.open_connection() {
                    Ok(connection) => {
                        log::info!(
                            "output {}: connected, sending from line {}",
                            self.address,
                            connection.sent
                        );
                        self.connection = Some(connection);
                        self.lost_since = None;
                        self.retry_at = None;
                        self.backoff = RECONNECT_BACKOFF_MIN;
                        last_progress = Instant::now();
                    }
                    Err(e) => {
                        if lost_since.elapsed() >= self.options.patience {
                            return Err(self.gave_up(&e));
                        }
                        self.retry_at = Some(Instant::now() + self.backoff);
                        if may_wait {
                            return Ok(());
                        }
                        std::thread::sleep(self.backoff);
                        self.backoff = (self.backoff * 2).min(RECONNECT_BACKOFF_MAX);
                        continue;
                    }
                }
            }
            let acked_before = self.acked;
            match self.exchange() {
                Ok(moved) => {
                    if moved || self.acked > acked_before {
                        last_progress = Instant::now();
                    }
                }
                Err(e) => {
                    self.connection = None;
                    if self.done(until) {
                        // What was waited for came before the connection
                        // ended; the next write reconnects.
                        return Ok(());
                    }
                    log::info!("output {}: connection lost ({e}); reconnecting", self.address);
                    continue;
                }
            }
            if self.done(until) {
                return Ok(());
            }
            if last_progress.elapsed() >= self.options.patience {
                let e = io::Error::from(io::ErrorKind::TimedOut).into();
                return Err(self.gave_up(&e));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn gave_up(&self, e: &SinkError) -> SinkError {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "output {}: the receiver took nothing for {:?} ({e}); it holds lines up to {} of {}",
                self.address,
                self.options.patience,
                self.acked,
                self.released.saturating_sub(1)
            ),
        )
        .into()
    }

    /// One round on the connection: reads acks, writes frames while the
    /// socket takes them. `Ok(true)` if bytes moved.
    fn exchange(&mut self) -> io::Result<bool> {
        let mut moved = self.read_acks()?;
        self.drop_acked();
        loop {
            let connection = self.connection.as_mut().expect("connected");
            if connection.frame_written == connection.frame.len() && !self.next_frame() {
                return Ok(moved);
            }
            let connection = self.connection.as_mut().expect("connected");
            match connection
                .stream
                .write(&connection.frame[connection.frame_written..])
            {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    connection.frame_written += n;
                    moved = true;
                }
                Err(e) if is_timeout(&e) => return Ok(moved),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn read_acks(&mut self) -> io::Result<bool> {
        let connection = self.connection.as_mut().expect("connected");
        let mut moved = false;
        loop {
            match connection
                .stream
                .read(&mut connection.message[connection.message_have..])
            {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the receiver closed",
                    ))
                }
                Ok(n) => {
                    moved = true;
                    connection.message_have += n;
                    if connection.message_have == RECEIVER_MESSAGE_BYTES {
                        connection.message_have = 0;
                        match ReceiverMessage::decode(&connection.message)? {
                            ReceiverMessage::Committed { upto } => {
                                self.receiver_committed = self.receiver_committed.max(upto);
                            }
                            ReceiverMessage::Ack { have } | ReceiverMessage::Welcome { have } => {
                                if connection.abort_sent {
                                    // The receiver answers frames in order: the
                                    // abort, the first frame here, is done.
                                    self.abort_past = None;
                                }
                                self.acked = self.acked.max(have);
                                if have >= connection.sent
                                    && connection.frame_written == connection.frame.len()
                                {
                                    // It has more than this connection sent (from an
                                    // older connection): skip ahead.
                                    connection.sent = have + 1;
                                    connection.sent_offset = None;
                                }
                            }
                        }
                    }
                }
                Err(e) if is_timeout(&e) => return Ok(moved),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Frames the next released lines into the connection's frame buffer;
    /// `false` when there are none.
    fn next_frame(&mut self) -> bool {
        let connection = self.connection.as_mut().expect("connected");
        // A recovered sink's abort goes before any line; a commit once the
        // lines it covers are staged.
        let control = match self.abort_past {
            Some(keep) if !connection.abort_sent => {
                connection.abort_sent = true;
                Some(SinkHeader::Abort { keep })
            }
            Some(_) => return false, // no line before the abort is answered
            None if self.commit_target > self.receiver_committed.max(connection.commit_sent)
                && self.acked >= self.commit_target =>
            {
                connection.commit_sent = self.commit_target;
                Some(SinkHeader::Commit {
                    upto: self.commit_target,
                })
            }
            None => None,
        };
        if let Some(control) = control {
            connection.frame.clear();
            connection.frame.extend_from_slice(&control.encode_control());
            connection.frame_written = 0;
            return true;
        }
        if connection.sent >= self.released {
            return false;
        }
        let sent = connection.sent;
        let Some(span) = self.spans.iter().find(|s| s.first + s.count > sent) else {
            return false;
        };
        let start = match connection.sent_offset {
            Some(offset) => offset,
            None => line_offset(&span.lines, sent - span.first),
        };
        let rest = &span.lines[start..];
        let len = crate::source::chunk_end(rest, LINES_FRAME_TARGET_BYTES);
        let payload = &rest[..len];
        let count = memchr::memchr_iter(b'\n', payload).count() as u64;
        let header = LinesHeader {
            first: sent,
            count: count as u32,
            len: len as u32,
        };
        connection.frame.clear();
        connection.frame.reserve(LINES_HEADER_BYTES + len);
        connection.frame.extend_from_slice(&header.encode());
        connection.frame.extend_from_slice(payload);
        connection.frame_written = 0;
        connection.sent = sent + count;
        connection.sent_offset = (start + len < span.lines.len()).then_some(start + len);
        true
    }
}

/// Where line `index` (from 0) of `lines` starts.
fn line_offset(lines: &[u8], index: u64) -> usize {
    if index == 0 {
        return 0;
    }
    memchr::memchr_iter(b'\n', lines)
        .nth(index as usize - 1)
        .map_or(lines.len(), |pos| pos + 1)
}

fn connect(address: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
    let resolved: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
    for address in resolved {
        match TcpStream::connect_timeout(&address, TCP_CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl SinkConnector for TcpSink {
    fn write(&mut self, lines: &[u8], _ids: &[MsgId]) -> Result<(), SinkError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut buffer = self.spare.pop().unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(lines);
        if !buffer.ends_with(b"\n") {
            // Lines end in '\n' by the trait's contract; a stray tail would
            // desynchronise the numbering.
            buffer.push(b'\n');
        }
        let count = memchr::memchr_iter(b'\n', &buffer).count() as u64;
        let bytes = buffer.len();
        self.spans.push_back(Span {
            first: self.next_seq,
            count,
            lines: buffer,
        });
        self.held_bytes += bytes;
        self.next_seq += count;
        // Sent at once either way: with `OnCommit` the receiver stages them.
        self.released = self.next_seq;
        self.pump(Until::Room)
    }

    /// `OnCommit`: the pre-commit. Everything before the barrier is staged
    /// at the receiver before the checkpoint that records it is written.
    fn barrier(&mut self, commit: CommitId) -> Result<(), SinkError> {
        if self.staged() {
            self.barriers.push_back((commit, self.next_seq));
            self.pump(Until::Acked)?;
        }
        Ok(())
    }

    fn commit(&mut self, upto: CommitId) -> Result<(), SinkError> {
        while let Some(&(commit, end)) = self.barriers.front() {
            if commit > upto {
                break;
            }
            self.commit_target = self.commit_target.max(end - 1);
            self.barriers.pop_front();
        }
        // Without staging, lines are final once the receiver has them.
        self.pump(if self.staged() {
            Until::Committed
        } else {
            Until::Acked
        })
    }

    /// The number of the next line (after the barrier just dealt).
    fn resume_mark(&mut self) -> Result<Vec<u8>, SinkError> {
        Ok(self.next_seq.to_le_bytes().to_vec())
    }

    /// Continues at the mark's line. With `OnCommit`, what the checkpoint
    /// covered is committed again (the crash may have cut the commit off)
    /// and what the receiver staged after it is aborted.
    fn resume(&mut self, mark: &[u8]) -> Result<(), SinkError> {
        let next: [u8; 8] = mark
            .try_into()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a TCP sink mark is 8 bytes"))?;
        let next = u64::from_le_bytes(next).max(1);
        assert!(self.spans.is_empty(), "a sink resumes before it writes");
        let address = &self.address;
        if self.staged() {
            if self.receiver_committed >= next {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "output {address} made lines up to {} final, but the checkpoint continues from line \
                         {next}: an older checkpoint than the last one committed (the run finished since, \
                         or the newest checkpoint was lost)",
                        self.receiver_committed
                    ),
                )
                .into());
            }
            if self.acked + 1 < next {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "output {address} holds lines up to {}, but the checkpoint covers lines up to {}: \
                         was the receiver restarted?",
                        self.acked,
                        next - 1
                    ),
                )
                .into());
            }
            self.commit_target = next - 1;
            if self.acked >= next {
                self.abort_past = Some(next - 1);
            }
        } else if self.acked + 1 < next {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "output {address} has lines up to {}, the checkpoint continues from line {next}: lines \
                     {}..{} are missing",
                    self.acked,
                    self.acked + 1,
                    next - 1
                ),
            )
            .into());
        }
        self.acked = next - 1;
        self.next_seq = next;
        self.released = next;
        if let Some(connection) = &mut self.connection {
            connection.sent = next;
            connection.sent_offset = None;
        }
        self.pump(Until::Committed)
    }
}

#[cfg(test)]
#[path = "tcp_sink_tests.rs"]
mod tests;
