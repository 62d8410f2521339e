//! `verity-net-bench`: loopback throughput of verity's framing against a raw
//! TCP blaster, between two processes, in one run.
//!
//! For each record size (16, 64, 512 bytes) it spawns itself as the sender,
//! once writing plain buffers of records ("raw TCP"), once encoding them into
//! verity frames (length-prefixed records, CRC-32C, header) that the receiver
//! decodes and walks record by record, zero-copy. The receiver times from the
//! first byte to the end of the stream.
//!
//! Usage: `cargo run --release -p verity-bench --bin verity-net-bench -- [--megabytes N] [--repeat R]`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use verity_net::frame::{FrameDecoder, FrameKind, FrameWriter};

const RECORD_SIZES_BYTES: [usize; 3] = [16, 64, 512];
const DEFAULT_MEGABYTES: u64 = 1024;
const DEFAULT_REPEAT: usize = 3;
const RAW_WRITE_BYTES: usize = 1 << 20;
/// Payload per frame, as the engine batches.
const FRAME_PAYLOAD_TARGET_BYTES: usize = 64 << 10;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Sender and receiver on cores of their own, as a cluster's processes
    // would be: otherwise the scheduler's choices dominate the numbers.
    let sending = args.first().map(String::as_str) == Some("--send");
    pin_to_core(usize::from(sending));
    if sending {
        return send(&args[1..]);
    }
    let mut megabytes = DEFAULT_MEGABYTES;
    let mut repeat = DEFAULT_REPEAT;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = it.next().and_then(|v| v.parse::<u64>().ok());
        match (arg.as_str(), value) {
            ("--megabytes", Some(v)) => megabytes = v.max(1),
            ("--repeat", Some(v)) => repeat = v.max(1) as usize,
            _ => {
                eprintln!("verity-net-bench: use --megabytes N --repeat R");
                std::process::exit(2);
            }
        }
    }
    let payload_bytes = megabytes << 20;
    println!("# loopback, two processes, {megabytes} MiB of record payload per run, median of {repeat}");
    println!(
        "{:>8} {:>8} {:>10} {:>12} {:>14} {:>10}",
        "record", "mode", "seconds", "MiB/s", "records/s", "vs raw"
    );
    for record_bytes in RECORD_SIZES_BYTES {
        // Alternate the two so the machine's noise hits both alike.
        let (mut raws, mut frames) = (Vec::new(), Vec::new());
        for _ in 0..repeat {
            raws.push(receive(Mode::Raw, record_bytes, payload_bytes));
            frames.push(receive(Mode::Frames, record_bytes, payload_bytes));
        }
        let (raw, framed) = (median(raws), median(frames));
        for (mode, time) in [(Mode::Raw, raw), (Mode::Frames, framed)] {
            let seconds = time.as_secs_f64();
            println!(
                "{:>8} {:>8} {:>10.3} {:>12.0} {:>14.0} {:>10.2}",
                record_bytes,
                mode.name(),
                seconds,
                payload_bytes as f64 / seconds / (1 << 20) as f64,
                (payload_bytes / record_bytes as u64) as f64 / seconds,
                raw.as_secs_f64() / seconds
            );
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Raw,
    Frames,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::Frames => "frames",
        }
    }
}

fn pin_to_core(index: usize) {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if let Some(core) = cores.get(index % cores.len().max(1)) {
        core_affinity::set_for_current(*core);
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Spawns the sender and receives its stream; returns the receive time.
fn receive(mode: Mode, record_bytes: usize, payload_bytes: u64) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("local address").port();
    let exe = std::env::current_exe().expect("own path");
    let mut sender = Command::new(exe)
        .args([
            "--send",
            mode.name(),
            &port.to_string(),
            &record_bytes.to_string(),
            &payload_bytes.to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn the sender");
    let (mut stream, _) = listener.accept().expect("sender connects");
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).expect("first byte");
    let started = Instant::now();
    let received = match mode {
        Mode::Raw => 1 + drain_raw(&mut stream),
        Mode::Frames => drain_frames(&mut stream, first[0], record_bytes),
    };
    let elapsed = started.elapsed();
    let _ = sender.wait();
    assert_eq!(received, payload_bytes, "{} stream lost bytes", mode.name());
    elapsed
}

fn drain_raw(stream: &mut TcpStream) -> u64 {
    let mut buf = vec![0u8; RAW_WRITE_BYTES];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n as u64,
            Err(e) => panic!("raw read failed: {e}"),
        }
    }
}

/// Decodes frames and touches every record; returns the record payload bytes.
fn drain_frames(stream: &mut TcpStream, first: u8, record_bytes: usize) -> u64 {
    let mut decoder = FrameDecoder::new();
    decoder.extend_from_slice(&[first]);
    let mut payload = 0u64;
    let mut checksum = 0u64;
    loop {
        while let Some(frame) = decoder.next_frame().expect("valid frames") {
            for record in frame.records() {
                debug_assert_eq!(record.len(), record_bytes);
                payload += record.len() as u64;
                checksum = checksum.wrapping_add(record[0] as u64);
            }
        }
        match decoder.read_from(stream) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("framed read failed: {e}"),
        }
    }
    decoder.finish().expect("no partial frame at the end");
    std::hint::black_box(checksum);
    payload
}

/// The sender process: `--send MODE PORT RECORD_BYTES PAYLOAD_BYTES`.
fn send(args: &[String]) {
    let number = |i: usize| args[i].parse::<u64>().expect("numeric argument");
    let (port, record_bytes, payload_bytes) = (number(1), number(2) as usize, number(3));
    let mut stream = TcpStream::connect(("127.0.0.1", port as u16)).expect("connect to the receiver");
    let _ = stream.set_nodelay(true);
    let record: Vec<u8> = (0..record_bytes).map(|i| i as u8).collect();
    let records_total = payload_bytes / record_bytes as u64;
    match args[0].as_str() {
        "raw" => {
            let buf: Vec<u8> = record.iter().copied().cycle().take(RAW_WRITE_BYTES).collect();
            let mut left = payload_bytes as usize;
            while left > 0 {
                let n = left.min(buf.len());
                stream.write_all(&buf[..n]).expect("raw write");
                left -= n;
            }
        }
        _ => {
            let per_frame = (FRAME_PAYLOAD_TARGET_BYTES / (record_bytes + 4)).max(1) as u64;
            let mut out = Vec::with_capacity(FRAME_PAYLOAD_TARGET_BYTES * 2);
            let (mut sent, mut seq) = (0u64, 1u64);
            while sent < records_total {
                let count = per_frame.min(records_total - sent);
                out.clear();
                let mut frame = FrameWriter::begin(&mut out, FrameKind::Data, 1, seq);
                for _ in 0..count {
                    frame.push_record(&record);
                }
                frame.finish();
                stream.write_all(&out).expect("framed write");
                sent += count;
                seq += count;
            }
        }
    }
}
