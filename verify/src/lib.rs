//! Oracles and output verification for the reference apps.
//!
//! Each oracle is an independent, deliberately plain single-threaded model of
//! its app, written from the format in the issue text and sharing no code with
//! `apps/`: if the engine and an app agree on a wrong answer, the oracle still
//! disagrees. The comparator then checks an engine output against the oracle's
//! expectation under the app's ordering rule (per-key order for keyed apps, no
//! order for `doubler`) and classifies every difference as lost, duplicated,
//! reordered, unexpected or wrong value.
#![forbid(unsafe_code)]

mod compare;
pub mod harness;
mod input;
mod oracle;
pub mod proxy;
pub mod sim;

pub use compare::{compare, Anomaly, AnomalyKind, Comparator, Report};
pub use oracle::{expected_output, Expected, ExpectedLine};

use std::path::{Path, PathBuf};

/// The app whose output is checked, with the options that change its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    Doubler,
    Wordcount { final_counts: bool },
    MarketSpread,
    SeqWindow,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("unknown app `{0}` (expected doubler, wordcount, market-spread or seq-window)")]
    UnknownApp(String),
    #[error("--final only applies to wordcount, not {0}")]
    FinalNotSupported(&'static str),
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
}

impl App {
    pub fn from_name(name: &str, final_counts: bool) -> Result<App, VerifyError> {
        let app = match name {
            "doubler" => App::Doubler,
            "wordcount" => App::Wordcount { final_counts },
            "market-spread" => App::MarketSpread,
            "seq-window" => App::SeqWindow,
            other => return Err(VerifyError::UnknownApp(other.to_string())),
        };
        if final_counts && !matches!(app, App::Wordcount { .. }) {
            return Err(VerifyError::FinalNotSupported(app.name()));
        }
        Ok(app)
    }

    pub fn name(self) -> &'static str {
        match self {
            App::Doubler => "doubler",
            App::Wordcount { .. } => "wordcount",
            App::MarketSpread => "market-spread",
            App::SeqWindow => "seq-window",
        }
    }

    /// Whether outputs of one key must keep their inputs' order. `doubler`
    /// guarantees no order at all; every other app guarantees per-key order.
    pub fn keeps_key_order(self) -> bool {
        !matches!(self, App::Doubler)
    }

    /// The key an output line belongs to, or `None` if the line is not in the
    /// app's output format.
    pub fn output_key(self, line: &[u8]) -> Option<&[u8]> {
        match self {
            App::Doubler => Some(b""),
            App::Wordcount { .. } => line.iter().rposition(|b| *b == b' ').map(|space| &line[..space]),
            App::MarketSpread => line.split(|b| *b == b',').nth(2),
            App::SeqWindow => line.iter().position(|b| *b == b' ').map(|space| &line[..space]),
        }
    }
}

/// Checks `output` (what the engine wrote) against the oracle for `input`.
pub fn verify(app: App, input: &[u8], output: &[u8]) -> Report {
    compare(app, input, output)
}

/// Output is read in batches of this size, never whole.
pub const OUTPUT_BATCH_BYTES: usize = 1 << 20;

fn read_error(path: &Path) -> impl Fn(std::io::Error) -> VerifyError + '_ {
    move |source| VerifyError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn open_input(path: &Path) -> Result<std::io::BufReader<std::fs::File>, VerifyError> {
    let file = std::fs::File::open(path).map_err(read_error(path))?;
    Ok(std::io::BufReader::with_capacity(OUTPUT_BATCH_BYTES, file))
}

/// Checks an output file against the oracle for an input file, streaming the
/// output in batches and reading the input only as far ahead as it needs.
pub fn verify_files(app: &App, input: &Path, output: &Path) -> Result<Report, VerifyError> {
    let mut comparator = Comparator::new(*app, open_input(input)?);
    let mut file = std::fs::File::open(output).map_err(read_error(output))?;
    let mut batch = vec![0; OUTPUT_BATCH_BYTES];
    loop {
        let read = std::io::Read::read(&mut file, &mut batch).map_err(read_error(output))?;
        if read == 0 {
            return Ok(comparator.finish());
        }
        comparator.feed(&batch[..read]);
    }
}

/// How `--follow` decides a run is over.
#[derive(Debug, Clone, Copy)]
pub struct Follow {
    /// Give up waiting once the output has not grown for this long.
    pub idle_timeout: std::time::Duration,
    /// Once every expected line is in, end after the output is quiet this long.
    pub settle: std::time::Duration,
}

/// Like `verify_files`, but while the run still writes: follows the output as
/// it grows, checking each batch as it lands, and reporting progress.
pub fn verify_follow(
    app: &App,
    input: &Path,
    output: &Path,
    follow: Follow,
    mut progress: impl FnMut(u64, u64),
) -> Result<Report, VerifyError> {
    use std::time::{Duration, Instant};
    const POLL: Duration = Duration::from_millis(50);
    const PROGRESS_EVERY: Duration = Duration::from_secs(1);
    let mut comparator = Comparator::new(*app, open_input(input)?);
    let mut last_growth = Instant::now();
    let mut last_progress = Instant::now();
    let mut file = loop {
        match std::fs::File::open(output) {
            Ok(file) => break file,
            Err(e) if last_growth.elapsed() > follow.idle_timeout => return Err(read_error(output)(e)),
            Err(_) => std::thread::sleep(POLL),
        }
    };
    let mut batch = vec![0; OUTPUT_BATCH_BYTES];
    loop {
        let read = std::io::Read::read(&mut file, &mut batch).map_err(read_error(output))?;
        if read > 0 {
            comparator.feed(&batch[..read]);
            last_growth = Instant::now();
            continue;
        }
        let (lines, anomalies) = comparator.progress();
        if last_progress.elapsed() >= PROGRESS_EVERY {
            progress(lines, anomalies);
            last_progress = Instant::now();
        }
        let complete = comparator.caught_up();
        let quiet = last_growth.elapsed();
        if (complete && quiet >= follow.settle) || quiet >= follow.idle_timeout {
            return Ok(comparator.finish());
        }
        std::thread::sleep(POLL);
    }
}
