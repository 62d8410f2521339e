//! The black-box harness: an external sender that streams a file into a
//! running verity TCP source, and an external receiver that collects a TCP
//! sink's output with arrival times. Neither knows anything of verity's
//! insides beyond the edge protocols (`verity_core::connector::tcp_stream`):
//! they see what a user's systems would see.
//!
//! `send` replays: it keeps every byte the source has not acked (a regular
//! file is simply re-read from the offset the source asks for; a pipe's bytes
//! are kept in memory, at most `HELD_BYTES_MAX`, reading waits for acks
//! beyond), reconnects after a lost connection (with backoff, for at most
//! `RECONNECT_PATIENCE` without a working connection) and resends from where
//! the source asks. It is done when the source confirmed the end of the
//! input (`Ended`) and acked every byte: without checkpoints the source acks
//! on receipt, so that is once everything arrived; with checkpoints, once the
//! final checkpoint is durable. (If the connection breaks after every byte
//! was acked and the source stays unreachable for `END_GRACE`, the
//! confirmation of the end was lost with it: the source's run most likely
//! finished, and `send` ends with a warning rather than an error.)
//!
//! With `--record FILE` (`send_and_record`), `send` also writes each byte
//! of the input once, as it first sends it, into a traffic recording with
//! the time it took it (`traffic`); `replay` sends such a recording again
//! at its recorded pace (or `speed` times faster), read as a pipe is: each
//! frame waits for its time once, and bytes resent after a reconnect come
//! from memory, without waiting again.
//!
//! `receive` accepts the sink's connections (and reconnections), writes each
//! numbered line once (dropping resent ones) to a plain file of lines, acks
//! what it wrote, and stops at `--expect` lines or after a silence.

mod staging;
pub mod traffic;

use staging::Staging;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use traffic::{Recorder, RecordingSummary, Replay};
use verity_core::connector::tcp_stream::{
    self, data_header, end_frame, greeting, is_timeout, Greeting, LinesHeader, ReceiverMessage, SinkHeader,
    SourceMessage, LINES_HEADER_BYTES, SEND_MAGIC, SINK_MAGIC, SINK_VERSION_STAGED, SOURCE_MESSAGE_BYTES,
};

/// How long the sender keeps trying to reach a source that is not up yet.
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
/// How long the sender keeps trying to reconnect after a lost connection.
pub const RECONNECT_PATIENCE: Duration = Duration::from_secs(30);
/// How long a source may take to say where to resume.
const RESUME_PATIENCE: Duration = Duration::from_secs(10);
/// How long the sender looks for a source that acked every byte but went
/// away before confirming the end of the input.
const END_GRACE: Duration = Duration::from_secs(3);
/// Input that cannot be re-read (a pipe) kept for resending, at most.
pub const HELD_BYTES_MAX: usize = 64 << 20;
const CONNECT_RETRY: Duration = Duration::from_millis(50);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
const BUFFER_BYTES: usize = 1 << 20;
/// Input bytes per data frame.
const FRAME_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendReport {
    pub lines: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Connections it took (1 without a disconnect).
    pub connections: u32,
}

/// The input, readable again from any byte the source has not acked.
enum Input {
    /// A regular file: re-read from the offset asked for.
    File { file: File, at: u64, len: u64 },
    /// Anything read only once (a pipe, stdin, a recording replayed at its
    /// pace): unacked bytes kept in memory, bounded.
    Pipe {
        reader: Box<dyn Read>,
        held: VecDeque<u8>,
        /// The offset of `held[0]`.
        base: u64,
        eof: bool,
    },
}

impl Input {
    /// `-` is stdin.
    fn open(path: &Path) -> io::Result<Input> {
        if path.as_os_str() == "-" {
            return Ok(Input::read_once(Box::new(io::stdin())));
        }
        let file = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))?;
        let metadata = file.metadata()?;
        Ok(if metadata.is_file() {
            Input::File {
                file,
                at: 0,
                len: metadata.len(),
            }
        } else {
            Input::read_once(Box::new(file))
        })
    }

    fn read_once(reader: Box<dyn Read>) -> Input {
        Input::Pipe {
            reader,
            held: VecDeque::new(),
            base: 0,
            eof: false,
        }
    }

    /// The bytes before this are gone.
    fn forgotten_before(&self) -> u64 {
        match self {
            Input::File { .. } => 0,
            Input::Pipe { base, .. } => *base,
        }
    }

    fn forget_before(&mut self, offset: u64) {
        if let Input::Pipe { held, base, .. } = self {
            let drop = offset.saturating_sub(*base).min(held.len() as u64);
            held.drain(..drop as usize);
            *base += drop;
        }
    }

    /// Bytes at `offset` into `buf`: `Some(0)` at the end, `None` when the
    /// held bytes are at their bound (wait for acks).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self {
            Input::File { file, at, len } => {
                if offset > *len {
                    return Err(io::Error::other(format!(
                        "the source asks for byte {offset}, past the end of the input ({len} bytes): \
                         is it reading another input?"
                    )));
                }
                if *at != offset {
                    file.seek(SeekFrom::Start(offset))?;
                    *at = offset;
                }
                let read = loop {
                    match file.read(buf) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        other => break other?,
                    }
                };
                *at += read as u64;
                Ok(Some(read))
            }
            Input::Pipe {
                reader,
                held,
                base,
                eof,
            } => {
                let Some(within) = offset.checked_sub(*base).filter(|w| *w <= held.len() as u64) else {
                    return Err(io::Error::other(format!(
                        "asked for byte {offset}, but the sender holds bytes {base}..{} only",
                        *base + held.len() as u64
                    )));
                };
                let within = within as usize;
                if within < held.len() {
                    let (front, back) = held.as_slices();
                    let piece = if within < front.len() {
                        &front[within..]
                    } else {
                        &back[within - front.len()..]
                    };
                    let n = piece.len().min(buf.len());
                    buf[..n].copy_from_slice(&piece[..n]);
                    return Ok(Some(n));
                }
                if *eof {
                    return Ok(Some(0));
                }
                let room = HELD_BYTES_MAX.saturating_sub(held.len()).min(buf.len());
                if room == 0 {
                    return Ok(None);
                }
                let read = loop {
                    match reader.read(&mut buf[..room]) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        other => break other?,
                    }
                };
                *eof = read == 0;
                held.extend(&buf[..read]);
                Ok(Some(read))
            }
        }
    }
}

/// What the source said, as the ack thread saw it.
#[derive(Debug, Clone, Copy, Default)]
struct Heard {
    acked: u64,
    ended: Option<u64>,
    closed: bool,
}

type Progress = Arc<(Mutex<Heard>, Condvar)>;

/// Reads the source's acks until the connection ends.
fn hear_acks(mut stream: TcpStream, progress: Progress) {
    // Any error ends the connection for the sender: it reconnects.
    let mut message = [0; SOURCE_MESSAGE_BYTES];
    loop {
        if stream.read_exact(&mut message).is_err() {
            break;
        }
        let Ok(heard) = SourceMessage::decode(&message) else {
            break;
        };
        let (lock, changed) = &*progress;
        let mut state = lock.lock().expect("no panics under the lock");
        match heard {
            SourceMessage::Ack { upto } => state.acked = state.acked.max(upto),
            SourceMessage::Ended { upto } => state.ended = Some(upto),
            SourceMessage::Resume { .. } => {}
        }
        changed.notify_all();
    }
    let (lock, changed) = &*progress;
    lock.lock().expect("no panics under the lock").closed = true;
    changed.notify_all();
}

/// How a connection ended.
enum Session {
    /// Everything was received and acked.
    Done,
    /// The connection broke (after `resumed`: the source said where to resume).
    Lost { why: io::Error, resumed: bool },
}

/// What the sender took from its input, each byte once however often it
/// is resent: the lines counted, and (with `--record`) the recording.
#[derive(Default)]
struct Taken {
    lines: LineCount,
    recorder: Option<Recorder>,
}

impl Taken {
    /// The input's bytes at `offset` are about to be sent.
    fn saw(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        if let Some(recorder) = &mut self.recorder {
            recorder.saw(offset, bytes)?;
        }
        self.lines.saw(offset, bytes);
        Ok(())
    }
}

/// Counts the input's lines once, however often bytes are resent.
#[derive(Default)]
struct LineCount {
    /// Bytes counted so far.
    upto: u64,
    lines: u64,
    last_byte: Option<u8>,
}

impl LineCount {
    fn saw(&mut self, offset: u64, bytes: &[u8]) {
        let end = offset + bytes.len() as u64;
        if end <= self.upto {
            return;
        }
        // A sender that starts where a recovered source asks (past byte 0)
        // counts from there: what came before was an earlier sender's.
        let new = &bytes[self.upto.saturating_sub(offset) as usize..];
        self.lines += memchr_count(new);
        self.last_byte = new.last().copied().or(self.last_byte);
        self.upto = end;
    }

    /// Lines of the whole input (a last line without `\n` counts).
    fn total(&self) -> u64 {
        self.lines + u64::from(self.last_byte.is_some_and(|b| b != b'\n'))
    }
}

/// Streams `input` to the TCP source at `to`, at most `batch` lines per
/// write, at `rate` lines per second (as fast as possible without one), and
/// resends what the source did not ack after a lost connection. Returns once
/// the source received (and acked) the whole input.
pub fn send(to: &str, input: &Path, rate: Option<u64>, batch: usize) -> io::Result<SendReport> {
    send_input(to, Input::open(input)?, rate, batch, &mut Taken::default())
}

/// `send`, writing what it sends into a traffic recording at `record` as
/// it goes (`traffic` describes the format). What was recorded is kept
/// (flushed) even if sending fails.
pub fn send_and_record(
    to: &str,
    input: &Path,
    rate: Option<u64>,
    batch: usize,
    record: &Path,
) -> io::Result<(SendReport, RecordingSummary)> {
    // Before the input opens (a FIFO's open waits for its writer): the
    // recording's clock starts before anything can arrive.
    let mut taken = Taken {
        recorder: Some(Recorder::create(record)?),
        ..Taken::default()
    };
    let sent = Input::open(input).and_then(|input| send_input(to, input, rate, batch, &mut taken));
    let recorded = taken.recorder.take().expect("recording").finish();
    Ok((sent?, recorded?))
}

/// Sends the traffic recording at `recording` as `send` sends an input,
/// each frame at its arrival time divided by `speed` after the first
/// (`f64::INFINITY`: as fast as possible). The whole recording is checked
/// first, so a corrupt one is refused before anything is sent.
pub fn replay(to: &str, recording: &Path, speed: f64) -> io::Result<SendReport> {
    if speed.is_nan() || speed <= 0.0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a replay speed must be above 0, not {speed} (1 replays at the recorded pace, 10 ten times faster)"),
        ));
    }
    let summary = traffic::scan(recording)?;
    eprintln!(
        "verity send: replaying {} ({} bytes in {} frames over {:.3} s) at speed {speed}",
        recording.display(),
        summary.bytes,
        summary.frames,
        summary.last_arrival_us as f64 / 1e6
    );
    let replay = Replay::open(recording, speed)?;
    send_input(
        to,
        Input::read_once(Box::new(replay)),
        None,
        1,
        &mut Taken::default(),
    )
}

fn send_input(
    to: &str,
    mut input: Input,
    rate: Option<u64>,
    batch: usize,
    taken: &mut Taken,
) -> io::Result<SendReport> {
    let address = resolve(to)?;
    let started = Instant::now();
    let mut heard = Heard::default();
    let mut connections = 0;
    let mut lost_since: Option<Instant> = None;
    let mut backoff = CONNECT_RETRY;
    // The input's length, once read to its end and the end sent.
    let mut total: Option<u64> = None;
    loop {
        // Every byte acked after the end was sent: the source has the input
        // (without checkpoints an ack is all it can give). If the
        // confirmation of the end was lost with the connection and the
        // source stays gone (its run finished), that is a finish too.
        let delivered = total.is_some_and(|t| heard.acked >= t);
        let patience = match lost_since {
            None => CONNECT_PATIENCE,
            Some(_) if delivered => END_GRACE,
            Some(_) => RECONNECT_PATIENCE,
        };
        let left = patience.saturating_sub(lost_since.map_or(Duration::ZERO, |since| since.elapsed()));
        let gave_up = |e: io::Error| {
            io::Error::new(
                e.kind(),
                match lost_since {
                    None => format!("cannot connect to {to}: {e}"),
                    Some(_) => format!(
                        "gave up reconnecting to {to} after {RECONNECT_PATIENCE:?}: {e} \
                         (the source acked bytes up to {} of the input)",
                        heard.acked
                    ),
                },
            )
        };
        let connected = match left.is_zero() {
            true => Err(io::Error::new(io::ErrorKind::TimedOut, "no working connection")),
            false => connect_within(address, left),
        };
        let stream = match connected {
            Ok(stream) => stream,
            Err(_) if delivered => {
                eprintln!(
                    "verity send: warning: the source acked all {} bytes, then went away before \
                     confirming the end of the input (its run most likely finished)",
                    heard.acked
                );
                break;
            }
            Err(e) => return Err(gave_up(e)),
        };
        connections += 1;
        let pace = Pace {
            rate,
            batch,
            started,
            hello_patience: left.min(RESUME_PATIENCE),
        };
        match session(stream, &mut input, &mut heard, taken, &mut total, pace)? {
            Session::Done => break,
            Session::Lost { why, resumed } => {
                if resumed || lost_since.is_none() {
                    lost_since = Some(Instant::now());
                    backoff = CONNECT_RETRY;
                }
                eprintln!(
                    "verity send: lost the connection to {to} ({why}); reconnecting (acked: {} bytes)",
                    heard.acked
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
            }
        }
    }
    Ok(SendReport {
        lines: taken.lines.total(),
        bytes: heard.acked,
        seconds: started.elapsed().as_secs_f64(),
        connections,
    })
}

#[derive(Clone, Copy)]
struct Pace {
    rate: Option<u64>,
    batch: usize,
    started: Instant,
    /// How long the source may take to answer the hello.
    hello_patience: Duration,
}

/// One connection: hello, resume where the source asks, data, end, and the
/// acks until everything is acked or the connection breaks. An `Err` is
/// fatal (reconnecting cannot help).
fn session(
    mut stream: TcpStream,
    input: &mut Input,
    heard: &mut Heard,
    taken: &mut Taken,
    total: &mut Option<u64>,
    pace: Pace,
) -> io::Result<Session> {
    let lost = |why: io::Error, resumed: bool| Ok(Session::Lost { why, resumed });
    let from = match hello(&mut stream, pace.hello_patience) {
        Ok(from) => from,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(e),
        Err(e) => return lost(e, false),
    };
    if from < input.forgotten_before() {
        return Err(io::Error::other(format!(
            "the source asks to resume at byte {from}, but it acked (and the sender forgot) everything \
             before byte {}: is it the same source?",
            input.forgotten_before()
        )));
    }
    let progress: Progress = Arc::new((
        Mutex::new(Heard {
            closed: false,
            ..*heard
        }),
        Condvar::new(),
    ));
    let listener = {
        let stream = stream.try_clone()?;
        let progress = progress.clone();
        std::thread::spawn(move || hear_acks(stream, progress))
    };
    let result = stream_from(&mut stream, from, input, &progress, taken, total, pace);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = listener.join();
    *heard = Heard {
        closed: false,
        ..*progress.0.lock().expect("no panics under the lock")
    };
    match result? {
        Outcome::Done => Ok(Session::Done),
        Outcome::Closed => lost(
            io::Error::new(io::ErrorKind::ConnectionAborted, "the source closed it"),
            true,
        ),
        Outcome::Broken(e) => lost(e, true),
    }
}

/// Says hello; returns where the source wants the input from.
fn hello(stream: &mut TcpStream, patience: Duration) -> io::Result<u64> {
    stream.set_nodelay(true)?;
    stream.write_all(&tcp_stream::preamble(SEND_MAGIC))?;
    stream.set_read_timeout(Some(patience.max(Duration::from_millis(1))))?;
    let mut message = [0; SOURCE_MESSAGE_BYTES];
    stream.read_exact(&mut message)?;
    stream.set_read_timeout(None)?;
    match SourceMessage::decode(&message)? {
        SourceMessage::Resume { from, .. } => Ok(from),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the source answered the hello with {other:?}"),
        )),
    }
}

/// How streaming on one connection ended (an `Err` beside it is fatal: the
/// input failed, or the source contradicts it).
enum Outcome {
    Done,
    Closed,
    Broken(io::Error),
}

/// Sends the input from `from`, then the end, then waits for the acks.
fn stream_from(
    stream: &mut TcpStream,
    from: u64,
    input: &mut Input,
    progress: &Progress,
    taken: &mut Taken,
    input_total: &mut Option<u64>,
    pace: Pace,
) -> io::Result<Outcome> {
    let (lock, changed) = &**progress;
    let mut buf = vec![0u8; FRAME_BYTES];
    let mut offset = from;
    let mut total: Option<u64> = None;
    loop {
        {
            let mut heard = lock.lock().expect("no panics under the lock");
            input.forget_before(heard.acked);
            if let (Some(total), Some(ended)) = (total, heard.ended) {
                if ended != total {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the source says the input ended at byte {ended}, but it has {total} bytes"),
                    ));
                }
                if heard.acked >= total {
                    return Ok(Outcome::Done);
                }
            }
            if heard.closed {
                return Ok(Outcome::Closed);
            }
            if total.is_some() {
                // Sent the end: wait for the source to confirm and ack.
                heard = changed.wait(heard).expect("no panics under the lock");
                drop(heard);
                continue;
            }
        }
        let Some(read) = input.read_at(offset, &mut buf)? else {
            // The held input is at its bound: wait for acks.
            let heard = lock.lock().expect("no panics under the lock");
            let _ = changed
                .wait_timeout(heard, Duration::from_millis(100))
                .expect("no panics under the lock");
            continue;
        };
        if read == 0 {
            if let Err(e) = stream.write_all(&end_frame(offset)) {
                return Ok(Outcome::Broken(e));
            }
            total = Some(offset);
            *input_total = total;
            continue;
        }
        let send = match pace.rate {
            Some(_) => batch_end(&buf[..read], pace.batch.max(1)),
            None => read,
        };
        taken.saw(offset, &buf[..send])?;
        let sent = stream
            .write_all(&data_header(send))
            .and_then(|()| stream.write_all(&buf[..send]));
        if let Err(e) = sent {
            return Ok(Outcome::Broken(e));
        }
        offset += send as u64;
        if let Some(rate) = pace.rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(taken.lines.lines as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(pace.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

/// The end of the first `lines` lines of `bytes` (all of it if fewer).
fn batch_end(bytes: &[u8], lines: usize) -> usize {
    memchr_iter_nth(bytes, lines - 1).map_or(bytes.len(), |pos| pos + 1)
}

fn memchr_iter_nth(bytes: &[u8], n: usize) -> Option<usize> {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(n)
        .map(|(i, _)| i)
}

fn resolve(to: &str) -> io::Result<SocketAddr> {
    to.to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("bad address {to}: {e}")))?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{to} resolves to nothing")))
}

fn connect_within(address: SocketAddr, patience: Duration) -> io::Result<TcpStream> {
    let started = Instant::now();
    loop {
        match TcpStream::connect(address) {
            Ok(stream) => return Ok(stream),
            Err(_) if started.elapsed() < patience => std::thread::sleep(CONNECT_RETRY),
            Err(e) => return Err(e),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReceiveReport {
    pub lines: u64,
    pub bytes: u64,
    /// From the first byte to the last.
    pub seconds: f64,
    /// Ended by --expect (true) or by silence.
    pub complete: bool,
    /// Lines that arrived again (resent after a reconnect) and were dropped.
    pub duplicates: u64,
    /// Connections accepted (1 without a disconnect).
    pub connections: u32,
}

/// How long writing the last acks may take before the receiver exits.
const FINAL_ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// The pause when no connection had anything.
const IDLE_POLL: Duration = Duration::from_millis(2);

/// What a connection turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerKind {
    Greeting,
    /// A TCP sink: numbered lines.
    Sink,
    /// Something else: its bytes are written as they come, without dedup.
    Plain,
}

struct Peer {
    stream: TcpStream,
    kind: PeerKind,
    /// Bytes read and not yet handled.
    incoming: Vec<u8>,
    /// Bytes to write (welcome, acks) and how many went out.
    out: Vec<u8>,
    out_written: usize,
    /// An ack not yet in `out` (acks are cumulative: only the latest counts).
    ack_due: Option<u64>,
    /// A staged sink's commit answer not yet in `out`.
    committed_due: Option<u64>,
    closed: bool,
}

/// What the receiver wrote, across connections.
struct Written {
    output: FinalOutput,
    /// Every sequence up to this is held: written, or (from a staged sink)
    /// staged.
    have: u64,
    /// Whether sinks stage their lines (`tcp_stream`, version 2): set by
    /// the first sink, the same for every later one.
    staged_sinks: Option<bool>,
    /// Staged lines `committed + 1 ..= have`, in a file beside the output.
    staged: Staging,
    /// Lines final in the output (with unstaged sinks: `have`).
    committed: u64,
    duplicates: u64,
}

/// The receiver's output file, final lines only, and its arrivals log.
struct FinalOutput {
    out: BufWriter<File>,
    arrivals: BufWriter<File>,
    lines: u64,
    bytes: u64,
    first: Option<Instant>,
    last_byte: Instant,
}

impl FinalOutput {
    /// Writes lines final now and logs their arrival.
    fn write(&mut self, bytes: &[u8], lines: u64) -> io::Result<()> {
        let now = Instant::now();
        let since = now.duration_since(*self.first.get_or_insert(now));
        self.out.write_all(bytes)?;
        self.lines += lines;
        self.bytes += bytes.len() as u64;
        writeln!(self.arrivals, "{} {}", since.as_micros(), self.lines)?;
        self.last_byte = now;
        Ok(())
    }
}

impl Written {
    /// Staged lines through `upto` become final, in order.
    fn commit(&mut self, upto: u64) -> io::Result<()> {
        if upto > self.have {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a commit through line {upto}, but only lines up to {} arrived",
                    self.have
                ),
            ));
        }
        if upto > self.committed {
            let output = &mut self.output;
            self.staged
                .commit(upto - self.committed, |bytes, lines| output.write(bytes, lines))?;
            self.committed = upto;
        }
        self.output.out.flush()
    }

    /// Staged lines past `keep` are dropped: a recovered sink writes again
    /// what came after its checkpoint.
    fn abort(&mut self, keep: u64) -> io::Result<()> {
        if keep < self.committed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "an abort back to line {keep}, but lines up to {} are final",
                    self.committed
                ),
            ));
        }
        self.staged.truncate(keep - self.committed)?;
        self.have = self.have.min(keep);
        Ok(())
    }

    /// One `Lines` frame: writes (or stages) the lines past `have`, drops
    /// the rest.
    fn frame(&mut self, header: LinesHeader, payload: &[u8]) -> io::Result<()> {
        let count = u64::from(header.count);
        if memchr_count(payload) != count || !(payload.is_empty() || payload.ends_with(b"\n")) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame says it holds {count} lines but does not"),
            ));
        }
        if header.first > self.have + 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "lines {}..{} are missing before line {} (closing this connection; the sink resends)",
                    self.have + 1,
                    header.first - 1,
                    header.first
                ),
            ));
        }
        let already = (self.have + 1 - header.first).min(count);
        self.duplicates += already;
        if already < count {
            let start = line_start(payload, already);
            if self.staged_sinks == Some(true) {
                self.staged.push(count - already, &payload[start..])?;
            } else {
                self.output.write(&payload[start..], count - already)?;
                self.committed = header.first + count - 1;
            }
            self.have = header.first + count - 1;
        }
        Ok(())
    }
}

/// Where line `index` (from 0) of `lines` starts.
fn line_start(lines: &[u8], index: u64) -> usize {
    if index == 0 {
        return 0;
    }
    memchr_iter_nth(lines, index as usize - 1).map_or(lines.len(), |pos| pos + 1)
}

impl Peer {
    fn new(stream: TcpStream) -> io::Result<Peer> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        Ok(Peer {
            stream,
            kind: PeerKind::Greeting,
            incoming: Vec::new(),
            out: Vec::new(),
            out_written: 0,
            ack_due: None,
            committed_due: None,
            closed: false,
        })
    }

    /// Reads what arrived (one read); `true` if anything did.
    fn read(&mut self, buf: &mut [u8]) -> bool {
        match self.stream.read(buf) {
            Ok(0) => {
                self.closed = true;
                false
            }
            Ok(n) => {
                self.incoming.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => false,
            Err(_) => {
                self.closed = true;
                false
            }
        }
    }

    /// Handles every whole frame (or plain bytes) that arrived.
    fn handle(&mut self, written: &mut Written) -> io::Result<()> {
        if self.kind == PeerKind::Greeting {
            match greeting(SINK_MAGIC, &self.incoming) {
                Greeting::Undecided => return Ok(()),
                Greeting::Protocol { version }
                    if version == tcp_stream::VERSION || version == SINK_VERSION_STAGED =>
                {
                    let staged = version == SINK_VERSION_STAGED;
                    if *written.staged_sinks.get_or_insert(staged) != staged {
                        eprintln!(
                            "verity receive: a sink that {} its lines after one that did not: closed it",
                            if staged { "stages" } else { "does not stage" }
                        );
                        self.closed = true;
                        return Ok(());
                    }
                    self.incoming.drain(..tcp_stream::PREAMBLE_BYTES);
                    self.kind = PeerKind::Sink;
                    self.out
                        .extend_from_slice(&ReceiverMessage::Welcome { have: written.have }.encode());
                    if staged {
                        let upto = written.committed;
                        self.out
                            .extend_from_slice(&ReceiverMessage::Committed { upto }.encode());
                    }
                }
                Greeting::Protocol { version } => {
                    eprintln!(
                        "verity receive: a sink speaks protocol version {version}, this one {}: closed it",
                        tcp_stream::VERSION
                    );
                    self.closed = true;
                    return Ok(());
                }
                Greeting::Plain => {
                    eprintln!(
                        "verity receive: a connection that is not a verity TCP sink: writing its bytes \
                         as they come, without dedup"
                    );
                    self.kind = PeerKind::Plain;
                }
            }
        }
        if self.kind == PeerKind::Plain {
            let lines = memchr_count(&self.incoming);
            written.output.write(&self.incoming, lines)?;
            self.incoming.clear();
            return Ok(());
        }
        let mut used = 0;
        while self.incoming.len() - used >= LINES_HEADER_BYTES {
            let header_bytes: &[u8; LINES_HEADER_BYTES] = self.incoming[used..used + LINES_HEADER_BYTES]
                .try_into()
                .expect("header-sized");
            let header = match SinkHeader::decode(header_bytes) {
                Ok(header)
                    if !matches!(header, SinkHeader::Lines(_)) && written.staged_sinks != Some(true) =>
                {
                    return self.refuse(io::Error::other(
                        "a commit or abort from a sink that does not stage",
                    ))
                }
                Ok(header) => header,
                Err(e) => return self.refuse(e),
            };
            let end = used + LINES_HEADER_BYTES + header.payload_len();
            if self.incoming.len() < end {
                break;
            }
            let handled = match header {
                SinkHeader::Lines(lines) => {
                    written.frame(lines, &self.incoming[used + LINES_HEADER_BYTES..end])
                }
                SinkHeader::Commit { upto } => written.commit(upto).map(|()| self.committed_due = Some(upto)),
                SinkHeader::Abort { keep } => written.abort(keep),
            };
            if let Err(e) = handled {
                if e.kind() == io::ErrorKind::InvalidData {
                    return self.refuse(e);
                }
                return Err(e);
            }
            used = end;
            self.ack_due = Some(written.have);
        }
        self.incoming.drain(..used);
        Ok(())
    }

    fn refuse(&mut self, e: io::Error) -> io::Result<()> {
        eprintln!("verity receive: {e}");
        self.closed = true;
        Ok(())
    }

    /// Writes what it can of the welcome and acks without blocking.
    fn flush(&mut self) {
        loop {
            if self.out_written == self.out.len() {
                self.out.clear();
                self.out_written = 0;
                if let Some(have) = self.ack_due.take() {
                    self.out
                        .extend_from_slice(&ReceiverMessage::Ack { have }.encode());
                }
                if let Some(upto) = self.committed_due.take() {
                    self.out
                        .extend_from_slice(&ReceiverMessage::Committed { upto }.encode());
                }
                if self.out.is_empty() {
                    return;
                }
            }
            match self.stream.write(&self.out[self.out_written..]) {
                Ok(n) => self.out_written += n,
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => return,
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// The last acks, so a sink waiting on them can finish.
    fn flush_before_exit(&mut self, have: u64) {
        if self.kind != PeerKind::Sink || self.closed {
            return;
        }
        self.ack_due = Some(have);
        let started = Instant::now();
        while (self.out_written < self.out.len() || self.ack_due.is_some() || self.committed_due.is_some())
            && !self.closed
            && started.elapsed() < FINAL_ACK_TIMEOUT
        {
            self.flush();
            std::thread::sleep(IDLE_POLL);
        }
    }
}

/// Accepts TCP sink connections (and reconnections) on `listen` and writes
/// each numbered line once to `output`, with `OUTPUT.arrivals` holding
/// `<microseconds since the first byte> <lines so far>` per frame. Ends at
/// `expect` lines, or after `silence` with nothing arriving.
pub fn receive(
    listen: &str,
    output: &Path,
    expect: Option<u64>,
    silence: Duration,
) -> io::Result<ReceiveReport> {
    let listener = TcpListener::bind(listen)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    receive_on(listener, output, expect, silence)
}

/// `receive` on a listener bound already (a test binds port 0 and reads the
/// port, so no other test can take it in between).
pub fn receive_on(
    listener: TcpListener,
    output: &Path,
    expect: Option<u64>,
    silence: Duration,
) -> io::Result<ReceiveReport> {
    listener.set_nonblocking(true)?;
    eprintln!("verity receive: listening on {}", listener.local_addr()?);
    let create = |path: &Path| {
        File::create(path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))
    };
    let arrivals_path = output.with_file_name(format!(
        "{}.arrivals",
        output
            .file_name()
            .map_or("output".into(), |n| n.to_string_lossy().into_owned())
    ));
    let mut written = Written {
        output: FinalOutput {
            out: BufWriter::with_capacity(BUFFER_BYTES, create(output)?),
            arrivals: BufWriter::new(create(&arrivals_path)?),
            lines: 0,
            bytes: 0,
            first: None,
            last_byte: Instant::now(),
        },
        have: 0,
        staged_sinks: None,
        staged: Staging::create(&output.with_file_name(format!(
            "{}.staging",
            output
                .file_name()
                .map_or("output".into(), |n| n.to_string_lossy().into_owned())
        )))?,
        committed: 0,
        duplicates: 0,
    };
    let mut peers: Vec<Peer> = Vec::new();
    let mut connections = 0;
    let mut buf = vec![0u8; BUFFER_BYTES];
    let mut last_data = Instant::now();
    let complete = loop {
        if expect.is_some_and(|n| written.output.lines >= n) {
            break true;
        }
        if last_data.elapsed() >= silence {
            break false;
        }
        while let Ok((stream, _)) = listener.accept() {
            peers.push(Peer::new(stream)?);
            connections += 1;
            last_data = Instant::now();
        }
        let mut busy = false;
        for peer in &mut peers {
            if peer.read(&mut buf) {
                busy = true;
                last_data = Instant::now();
                peer.handle(&mut written)?;
            }
            peer.flush();
        }
        peers.retain(|peer| !peer.closed);
        if !busy {
            std::thread::sleep(IDLE_POLL);
        }
    };
    for peer in &mut peers {
        peer.flush_before_exit(written.have);
    }
    if !written.staged.is_empty() {
        eprintln!(
            "verity receive: lines {}..={} were staged and never committed: not written",
            written.committed + 1,
            written.have
        );
    }
    let output = written.output;
    output.out.into_inner().map_err(|e| e.into_error())?;
    output.arrivals.into_inner().map_err(|e| e.into_error())?;
    written.staged.remove()?;
    let seconds = output
        .first
        .map_or(0.0, |f| output.last_byte.duration_since(f).as_secs_f64());
    Ok(ReceiveReport {
        lines: output.lines,
        bytes: output.bytes,
        seconds,
        complete,
        duplicates: written.duplicates,
        connections,
    })
}

fn memchr_count(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_once_and_from_where_the_source_asked() {
        let mut count = LineCount::default();
        count.saw(0, b"a\nb\n");
        count.saw(2, b"b\nc");
        assert_eq!(count.total(), 3, "resent bytes count once");
        let mut resumed = LineCount::default();
        resumed.saw(100, b"x\ny\n");
        assert_eq!(resumed.total(), 2, "a fresh sender resuming past byte 0");
    }
    use std::cell::Cell;
    use std::rc::Rc;

    /// Counts the reads that reach the reader under it.
    struct CountingReads<R> {
        inner: R,
        reads: Rc<Cell<u64>>,
    }

    impl<R: Read> Read for CountingReads<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads.set(self.reads.get() + 1);
            self.inner.read(buf)
        }
    }

    /// Reads `input` from `from` to its end.
    fn read_to_end(input: &mut Input, from: u64) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let read = input
                .read_at(from + all.len() as u64, &mut buf)
                .unwrap()
                .expect("within bounds");
            if read == 0 {
                return all;
            }
            all.extend_from_slice(&buf[..read]);
        }
    }

    #[test]
    fn a_replay_resent_after_a_reconnect_comes_from_memory_without_waiting_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recording");
        let mut writer = traffic::RecordingWriter::new(File::create(&path).unwrap()).unwrap();
        for (arrival_us, bytes) in [
            (0, &b"line 1\n"[..]),
            (20_000, b"line 2\n"),
            (40_000, b"line 3\n"),
        ] {
            writer.frame(arrival_us, bytes).unwrap();
        }
        drop(writer);
        let reads = Rc::new(Cell::new(0));
        let replay = CountingReads {
            inner: Replay::open(&path, 1.0).unwrap(),
            reads: reads.clone(),
        };
        let mut input = Input::read_once(Box::new(replay));
        assert_eq!(read_to_end(&mut input, 0), b"line 1\nline 2\nline 3\n");
        let paced_reads = reads.get();
        input.forget_before(7); // the source acked line 1
        assert_eq!(read_to_end(&mut input, 7), b"line 2\nline 3\n", "resent");
        assert_eq!(
            reads.get(),
            paced_reads,
            "the recording (and its pacing) was not read again"
        );
    }
}
