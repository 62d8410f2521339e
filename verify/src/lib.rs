//! Oracles and output verification for the reference apps.
//!
//! Each oracle is an independent, deliberately plain single-threaded model of
//! its app, written from the format in the issue text and sharing no code with
//! `apps/`: if the engine and an app agree on a wrong answer, the oracle still
//! disagrees. The comparator then checks an engine output against the oracle's
//! expectation under the app's ordering rule (per-key order for keyed apps, no
//! order for `doubler`) and classifies every difference as lost, duplicated,
//! reordered, unexpected or wrong value.
//!
//! Entry points, each streaming (memory follows the output's lag behind its
//! inputs, not their size) and each with an in-memory form for tests and the
//! simulator:
//!
//! * `verify` / `verify_files`: one input, one output, against the oracle.
//! * `verify_two_streams` / `verify_output` with `InputFiles::QuotesAndOrders`:
//!   market-spread run on two concurrent streams, whose output depends on
//!   their interleaving; accepted exactly when some per-symbol interleaving
//!   produces it (see `two_streams`), with the extra class impossible quote.
//! * `verify_dead_letters` / `verify_dead_letter_file`: every malformed input
//!   line exactly once in the dead letters, with its source and line, and
//!   nothing else (lost, duplicated, unexpected, wrong record).
#![forbid(unsafe_code)]

pub mod audited;
mod compare;
mod dead_letters;
pub mod harness;
mod input;
mod oracle;
pub mod proxy;
pub mod sim;
mod two_streams;
pub mod windowed;

pub use compare::{compare, Anomaly, AnomalyKind, Comparator, Report, TwoStreamInputs};
pub use dead_letters::{letter_record, DeadLetterChecker, DeadLetterInput, DeadLetterReport, LetterAnomaly};
pub use oracle::{expected_output, Expected, ExpectedLine, LineRule};
pub use two_streams::TwoStreamComparator;

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
    #[error("--quotes/--orders are market-spread's two streams; {0} takes --input")]
    SplitInputNotSupported(&'static str),
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

/// Checks the output of a two-stream market-spread run (`--quotes`/`--orders`,
/// or `verity sim --streams 2`), all in memory: correct exactly when, per
/// symbol, some interleaving of the two streams produces it — each order
/// decided once, in orders-stream order per symbol, on one of its symbol's
/// quotes (or none) that never goes back in the quotes stream, by the app's
/// rule. Anomalies are classified like `verify`'s, plus `ImpossibleQuote`.
pub fn verify_two_streams(quotes: &[u8], orders: &[u8], output: &[u8]) -> Report {
    two_streams::compare_two_streams(quotes, orders, output)
}

/// One in-memory input whose malformed lines must be dead-lettered.
#[derive(Debug, Clone, Copy)]
pub struct NamedInput<'a> {
    /// The source name the run gave it (its dead letters start `<name>:`).
    pub name: &'a str,
    pub rule: LineRule,
    pub data: &'a [u8],
}

/// Checks dead letters (the text of a dead-letter file, all in memory):
/// every line of `inputs` that its rule rejects must appear exactly once as
/// `<name>:<line>: <reason>: <record>`, and nothing else.
pub fn verify_dead_letters(inputs: &[NamedInput<'_>], dead_letters: &[u8]) -> DeadLetterReport {
    let inputs = inputs
        .iter()
        .map(|input| DeadLetterInput {
            names: vec![input.name.to_string()],
            rule: input.rule,
            input: input.data,
        })
        .collect();
    let mut checker = DeadLetterChecker::new(inputs);
    checker.feed(dead_letters);
    checker.finish()
}

/// What a run read: one input, or market-spread's two streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputFiles {
    Single(PathBuf),
    QuotesAndOrders { quotes: PathBuf, orders: PathBuf },
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

/// A streaming check of an output, fed in batches.
trait OutputCheck {
    fn feed(&mut self, bytes: &[u8]);
    fn progress(&self) -> (u64, u64);
    fn caught_up(&mut self) -> bool;
    fn finish(self: Box<Self>) -> Report;
}

impl<R: std::io::BufRead> OutputCheck for Comparator<R> {
    fn feed(&mut self, bytes: &[u8]) {
        Comparator::feed(self, bytes)
    }
    fn progress(&self) -> (u64, u64) {
        Comparator::progress(self)
    }
    fn caught_up(&mut self) -> bool {
        Comparator::caught_up(self)
    }
    fn finish(self: Box<Self>) -> Report {
        Comparator::finish(*self)
    }
}

impl<Q: std::io::BufRead, O: std::io::BufRead> OutputCheck for TwoStreamComparator<Q, O> {
    fn feed(&mut self, bytes: &[u8]) {
        TwoStreamComparator::feed(self, bytes)
    }
    fn progress(&self) -> (u64, u64) {
        TwoStreamComparator::progress(self)
    }
    fn caught_up(&mut self) -> bool {
        TwoStreamComparator::caught_up(self)
    }
    fn finish(self: Box<Self>) -> Report {
        TwoStreamComparator::finish(*self)
    }
}

fn output_check(app: &App, inputs: &InputFiles) -> Result<Box<dyn OutputCheck>, VerifyError> {
    Ok(match inputs {
        InputFiles::Single(input) => Box::new(Comparator::new(*app, open_input(input)?)),
        InputFiles::QuotesAndOrders { .. } if *app != App::MarketSpread => {
            return Err(VerifyError::SplitInputNotSupported(app.name()))
        }
        InputFiles::QuotesAndOrders { quotes, orders } => {
            Box::new(TwoStreamComparator::new(open_input(quotes)?, open_input(orders)?))
        }
    })
}

/// Checks an output file against the oracle for an input file, streaming the
/// output in batches and reading the input only as far ahead as it needs.
pub fn verify_files(app: &App, input: &Path, output: &Path) -> Result<Report, VerifyError> {
    verify_output(app, &InputFiles::Single(input.to_path_buf()), output)
}

/// Checks an output file against its inputs (one, or quotes and orders),
/// streaming as `verify_files` does.
pub fn verify_output(app: &App, inputs: &InputFiles, output: &Path) -> Result<Report, VerifyError> {
    let mut check = output_check(app, inputs)?;
    let mut file = std::fs::File::open(output).map_err(read_error(output))?;
    let mut batch = vec![0; OUTPUT_BATCH_BYTES];
    loop {
        let read = std::io::Read::read(&mut file, &mut batch).map_err(read_error(output))?;
        if read == 0 {
            return Ok(check.finish());
        }
        check.feed(&batch[..read]);
    }
}

/// Checks a dead-letter file against the inputs of the run that wrote it. A
/// missing file is an empty one (the engine creates it on the first letter).
/// A letter's source matches an input given as the same path, the same file
/// (canonically), or, failing both, the same file name.
pub fn verify_dead_letter_file(
    app: &App,
    inputs: &InputFiles,
    dead_letters: &Path,
) -> Result<DeadLetterReport, VerifyError> {
    verify_dead_letter_file_as(app, inputs, dead_letters, &[])
}

/// `verify_dead_letter_file` for a run that knew its single input by other
/// names too (`also_named`: e.g. `tcp:HOST:PORT` for input that came
/// through `verity send`): letters may name the input by any of them.
pub fn verify_dead_letter_file_as(
    app: &App,
    inputs: &InputFiles,
    dead_letters: &Path,
    also_named: &[String],
) -> Result<DeadLetterReport, VerifyError> {
    let named = |rule, path: &Path| -> Result<_, VerifyError> {
        let mut names = also_named.to_vec();
        names.push(path.to_string_lossy().into_owned());
        if let Ok(canonical) = path.canonicalize() {
            names.push(canonical.to_string_lossy().into_owned());
        }
        Ok(DeadLetterInput {
            names,
            rule,
            input: open_input(path)?,
        })
    };
    let inputs = match inputs {
        InputFiles::Single(input) => vec![named(LineRule::App(*app), input)?],
        InputFiles::QuotesAndOrders { quotes, orders } => {
            assert!(also_named.is_empty(), "other names are for a single input");
            vec![named(LineRule::Quotes, quotes)?, named(LineRule::Orders, orders)?]
        }
    };
    let mut checker = DeadLetterChecker::new(inputs);
    let mut file = match std::fs::File::open(dead_letters) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(checker.finish()),
        Err(e) => return Err(read_error(dead_letters)(e)),
    };
    let mut batch = vec![0; OUTPUT_BATCH_BYTES];
    loop {
        let read = std::io::Read::read(&mut file, &mut batch).map_err(read_error(dead_letters))?;
        if read == 0 {
            return Ok(checker.finish());
        }
        checker.feed(&batch[..read]);
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
    progress: impl FnMut(u64, u64),
) -> Result<Report, VerifyError> {
    verify_output_follow(
        app,
        &InputFiles::Single(input.to_path_buf()),
        output,
        follow,
        progress,
    )
}

/// `verify_output` while the run still writes (see `verify_follow`).
pub fn verify_output_follow(
    app: &App,
    inputs: &InputFiles,
    output: &Path,
    follow: Follow,
    mut progress: impl FnMut(u64, u64),
) -> Result<Report, VerifyError> {
    use std::time::{Duration, Instant};
    const POLL: Duration = Duration::from_millis(50);
    const PROGRESS_EVERY: Duration = Duration::from_secs(1);
    let mut comparator = output_check(app, inputs)?;
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
