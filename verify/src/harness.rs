//! The black-box harness: an external sender that streams a file into a
//! running verity TCP source, and an external receiver that collects a TCP
//! sink's output with arrival times. Neither knows anything of verity's
//! insides: they see what a user's systems would see.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the sender keeps trying to reach a source that is not up yet.
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(10);
const CONNECT_RETRY: Duration = Duration::from_millis(50);
const READ_POLL: Duration = Duration::from_millis(50);
const BUFFER_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendReport {
    pub lines: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// Streams `input` to `to`, `batch` lines per write, at `rate` lines per
/// second (as fast as possible without one).
pub fn send(to: &str, input: &Path, rate: Option<u64>, batch: usize) -> io::Result<SendReport> {
    let file = std::fs::File::open(input)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", input.display())))?;
    let mut lines = BufReader::with_capacity(BUFFER_BYTES, file);
    let stream = connect_patiently(to)?;
    let mut out = BufWriter::with_capacity(BUFFER_BYTES, stream);
    let started = Instant::now();
    let (mut sent, mut bytes) = (0u64, 0u64);
    let mut line = Vec::new();
    loop {
        let mut in_batch = 0;
        while in_batch < batch.max(1) {
            line.clear();
            if lines.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            out.write_all(&line)?;
            bytes += line.len() as u64;
            in_batch += 1;
        }
        sent += in_batch as u64;
        if in_batch == 0 {
            break;
        }
        if let Some(rate) = rate.filter(|r| *r > 0) {
            out.flush()?;
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    out.flush()?;
    Ok(SendReport {
        lines: sent,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn connect_patiently(to: &str) -> io::Result<TcpStream> {
    let address: SocketAddr = to
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("bad address {to}: {e}")))?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{to} resolves to nothing")))?;
    let started = Instant::now();
    loop {
        match TcpStream::connect(address) {
            Ok(stream) => return Ok(stream),
            Err(e) if started.elapsed() < CONNECT_PATIENCE => {
                let _ = e;
                std::thread::sleep(CONNECT_RETRY);
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("cannot connect to {to}: {e}"))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReceiveReport {
    pub lines: u64,
    pub bytes: u64,
    /// From the first byte to the last.
    pub seconds: f64,
    /// Ended by --expect (true) or by silence / the sender closing.
    pub complete: bool,
}

/// Accepts sink connections on `listen` and writes what arrives to `output`,
/// with `OUTPUT.arrivals` holding `<microseconds since the first byte>
/// <lines so far>` per read. Ends at `expect` lines, or after `silence` with
/// nothing arriving.
pub fn receive(
    listen: &str,
    output: &Path,
    expect: Option<u64>,
    silence: Duration,
) -> io::Result<ReceiveReport> {
    let listener = TcpListener::bind(listen)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    listener.set_nonblocking(true)?;
    eprintln!("verity receive: listening on {}", listener.local_addr()?);
    let create = |path: &Path| {
        std::fs::File::create(path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))
    };
    let mut out = BufWriter::with_capacity(BUFFER_BYTES, create(output)?);
    let arrivals_path = output.with_file_name(format!(
        "{}.arrivals",
        output
            .file_name()
            .map_or("output".into(), |n| n.to_string_lossy().into_owned())
    ));
    let mut arrivals = BufWriter::new(create(&arrivals_path)?);
    let mut connections: Vec<TcpStream> = Vec::new();
    let mut buf = vec![0u8; BUFFER_BYTES];
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last_data = Instant::now();
    let mut last_byte = Instant::now();
    let complete = loop {
        if expect.is_some_and(|n| lines >= n) {
            break true;
        }
        if last_data.elapsed() >= silence {
            break false;
        }
        while let Ok((stream, _)) = listener.accept() {
            stream.set_nonblocking(false)?;
            stream.set_read_timeout(Some(READ_POLL))?;
            connections.push(stream);
            last_data = Instant::now();
        }
        if connections.is_empty() {
            std::thread::sleep(READ_POLL);
            continue;
        }
        let mut closed = Vec::new();
        for (index, stream) in connections.iter_mut().enumerate() {
            match stream.read(&mut buf) {
                Ok(0) => closed.push(index),
                Ok(n) => {
                    let now = Instant::now();
                    let since = now.duration_since(*first.get_or_insert(now));
                    out.write_all(&buf[..n])?;
                    lines += memchr_count(&buf[..n]);
                    bytes += n as u64;
                    writeln!(arrivals, "{} {lines}", since.as_micros())?;
                    last_data = now;
                    last_byte = now;
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(_) => closed.push(index),
            }
        }
        for index in closed.into_iter().rev() {
            connections.remove(index);
        }
    };
    out.flush()?;
    arrivals.flush()?;
    let seconds = first.map_or(0.0, |f| last_byte.duration_since(f).as_secs_f64());
    Ok(ReceiveReport {
        lines,
        bytes,
        seconds,
        complete,
    })
}

fn memchr_count(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
}
