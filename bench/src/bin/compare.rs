//! `verity-compare`: the parts of `scripts/bench-compare.sh` that are not an
//! engine: its workloads, the naive loop over a file as a whole process, and
//! the machine's physical limits (memcpy and TCP loopback bandwidth).
//!
//! ```text
//! verity-compare generate APP --events N [--seed S] --output PATH
//! verity-compare naive APP --input PATH      # prints `outputs N`
//! verity-compare memcpy --bytes N [--repeat R]
//! verity-compare tcp --bytes N
//! ```
//! Numbers go to stdout as `name value` lines, for the script to read.

use std::io::{BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};
use verity_apps::AppName;
use verity_bench::{baseline, workload};

const DEFAULT_SEED: u64 = 42;
const DEFAULT_MEMCPY_REPEAT: u64 = 5;
/// The loopback measure is bounded so that it stays a few seconds at most.
const TCP_BYTES_MAX: u64 = 512 << 20;
const TCP_IO_BUFFER_BYTES: usize = 1 << 20;
/// A memcpy of less than this is timer noise, not bandwidth.
const MEMCPY_BYTES_MIN: u64 = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("generate") => generate(&args[1..]),
        Some("naive") => naive(&args[1..]),
        Some("memcpy") => memcpy(&args[1..]),
        Some("tcp") => tcp(&args[1..]),
        _ => Err("use `generate`, `naive`, `memcpy` or `tcp` (see the source's header)".to_string()),
    };
    if let Err(e) = result {
        eprintln!("verity-compare: {e}");
        std::process::exit(2);
    }
}

/// `--name value` flags after optional positional arguments.
struct Flags<'a> {
    positional: Vec<&'a str>,
    named: Vec<(&'a str, &'a str)>,
}

impl<'a> Flags<'a> {
    fn parse(args: &'a [String]) -> Result<Flags<'a>, String> {
        let (mut positional, mut named) = (Vec::new(), Vec::new());
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if let Some(name) = arg.strip_prefix("--") {
                let value = it.next().ok_or(format!("--{name} needs a value"))?;
                named.push((name, value.as_str()));
            } else {
                positional.push(arg.as_str());
            }
        }
        Ok(Flags { positional, named })
    }

    fn text(&self, name: &str) -> Option<&'a str> {
        self.named.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    fn number(&self, name: &str, default: Option<u64>) -> Result<u64, String> {
        match (self.text(name), default) {
            (Some(raw), _) => raw
                .parse()
                .map_err(|_| format!("--{name}: '{raw}' is not a number")),
            (None, Some(default)) => Ok(default),
            (None, None) => Err(format!("--{name} is required")),
        }
    }

    fn app(&self) -> Result<AppName, String> {
        let name = self.positional.first().ok_or("name an app")?;
        AppName::from_name(name).ok_or(format!("unknown app '{name}'"))
    }
}

fn generate(args: &[String]) -> Result<(), String> {
    let flags = Flags::parse(args)?;
    let (app, events) = (flags.app()?, flags.number("events", None)?);
    let seed = flags.number("seed", Some(DEFAULT_SEED))?;
    let path = flags.text("output").ok_or("--output PATH is required")?;
    let file = std::fs::File::create(path).map_err(|e| format!("cannot create {path}: {e}"))?;
    let lines = workload::write(app, events, seed, &mut BufWriter::new(file))
        .map_err(|e| format!("writing {path}: {e}"))?;
    println!("events {events}\nlines {lines}");
    Ok(())
}

/// The naive loop as a whole process: the file read is part of what it does.
fn naive(args: &[String]) -> Result<(), String> {
    let flags = Flags::parse(args)?;
    let app = flags.app()?;
    let path = flags.text("input").ok_or("--input PATH is required")?;
    let input = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let outputs = match app {
        AppName::Wordcount => baseline::wordcount(&input),
        AppName::MarketSpread => baseline::market_spread(&input),
        AppName::SeqWindow => baseline::seq_window(&input),
        AppName::Doubler | AppName::WindowCount => return Err(format!("no naive loop for {}", app.name())),
    };
    println!("outputs {outputs}");
    Ok(())
}

fn memcpy(args: &[String]) -> Result<(), String> {
    let flags = Flags::parse(args)?;
    let bytes = flags.number("bytes", None)?.max(MEMCPY_BYTES_MIN) as usize;
    let repeat = flags.number("repeat", Some(DEFAULT_MEMCPY_REPEAT))?.max(1);
    // Both buffers written once first, so the copies time memory, not page faults.
    let source: Vec<u8> = (0..bytes).map(|i| i as u8).collect();
    let mut target = vec![1u8; bytes];
    target.copy_from_slice(&source);
    let mut times: Vec<Duration> = (0..repeat)
        .map(|_| {
            let start = Instant::now();
            target.copy_from_slice(std::hint::black_box(&source));
            std::hint::black_box(&mut target);
            start.elapsed()
        })
        .collect();
    times.sort();
    let median = times[times.len() / 2].as_secs_f64();
    println!(
        "bytes {bytes}\nseconds {median:.6}\ngb_per_s {:.3}",
        bytes as f64 / median / 1e9
    );
    Ok(())
}

/// One connection over 127.0.0.1, a sender thread writing `--bytes` in
/// large writes, this thread reading them; timed from accept to end of stream.
fn tcp(args: &[String]) -> Result<(), String> {
    let flags = Flags::parse(args)?;
    let bytes = flags.number("bytes", None)?.clamp(1, TCP_BYTES_MAX);
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind 127.0.0.1: {e}"))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut stream = TcpStream::connect(address)?;
        let buffer = vec![0x5au8; TCP_IO_BUFFER_BYTES];
        let mut left = bytes as usize;
        while left > 0 {
            let n = left.min(buffer.len());
            stream.write_all(&buffer[..n])?;
            left -= n;
        }
        Ok(())
    });
    let (mut stream, _) = listener
        .accept()
        .map_err(|e| format!("accept on loopback: {e}"))?;
    let start = Instant::now();
    let mut buffer = vec![0u8; TCP_IO_BUFFER_BYTES];
    let mut received = 0u64;
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => received += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("loopback read: {e}")),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    match sender.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("loopback write: {e}")),
        Err(_) => return Err("the loopback sender panicked".to_string()),
    }
    if received != bytes {
        return Err(format!("loopback received {received} bytes of {bytes}"));
    }
    println!(
        "bytes {bytes}\nseconds {seconds:.6}\ngb_per_s {:.3}",
        bytes as f64 / seconds / 1e9
    );
    Ok(())
}
