//! Compares an engine output with an oracle's expectation, streaming both:
//! output arrives in batches of any size (`Comparator::feed`), each line is
//! checked as it comes against its key's next expected line, and the oracle
//! reads the input only as far ahead as the output needs. Memory holds the
//! expected lines read but not yet seen (the output's lag behind input
//! order, bounded by `WINDOW_LINES_MAX`) plus counts and a few examples — not
//! the output, and not the whole expectation, except where the app needs the
//! whole input first (wordcount `--final`).

use crate::input::LineReader;
use crate::oracle::{ExpectSink, Oracle};
use crate::App;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::BufRead;

/// Expected lines held at most while waiting for the output to show them.
pub const WINDOW_LINES_MAX: u64 = 4 << 20;
/// Recently seen lines remembered per key, to tell duplicates from inventions.
const RECENT_PER_KEY: usize = 16;
/// The same for apps without keys (doubler), which remember more.
const RECENT_UNKEYED: usize = 4096;

/// Examples kept and shown per anomaly class.
pub const EXAMPLES_PER_CLASS: usize = 3;

/// How many anomaly classes there are.
pub const KINDS: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AnomalyKind {
    /// An expected line is missing from the output.
    Lost,
    /// A line appears more often than expected.
    Duplicated,
    /// The right lines of a key, in the wrong order.
    Reordered,
    /// A line that no input explains.
    Unexpected,
    /// A line of the right key with the wrong content.
    WrongValue,
    /// Two streams: a decision on a quote no interleaving of the streams
    /// puts in force (never a quote of its symbol, or one the symbol's
    /// earlier decisions already moved past).
    ImpossibleQuote,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; KINDS] = [
        AnomalyKind::Lost,
        AnomalyKind::Duplicated,
        AnomalyKind::Reordered,
        AnomalyKind::Unexpected,
        AnomalyKind::WrongValue,
        AnomalyKind::ImpossibleQuote,
    ];

    /// The classes every report lists, even at zero; the others only appear
    /// where they occur.
    fn always_listed(self) -> bool {
        self != AnomalyKind::ImpossibleQuote
    }

    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::Lost => "lost",
            AnomalyKind::Duplicated => "duplicated",
            AnomalyKind::Reordered => "reordered",
            AnomalyKind::Unexpected => "unexpected",
            AnomalyKind::WrongValue => "wrong value",
            AnomalyKind::ImpossibleQuote => "impossible quote",
        }
    }
}

/// One difference, with the lines involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    /// 1-based line in the output, if the anomaly has one.
    pub output_line: Option<u64>,
    /// 1-based input line behind the expected line, if known.
    pub input_line: Option<u64>,
    pub expected: Option<String>,
    pub actual: Option<String>,
    /// Which input stream `input_line` counts in, when there are several
    /// (`quotes`, `orders`); `None` for the one input.
    pub stream: Option<&'static str>,
    /// Why, when the lines alone do not say (e.g. which quote was in force).
    pub note: Option<String>,
}

/// Anomaly counts per class and the first few examples of each.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    pub counts: [u64; KINDS],
    pub examples: Vec<Anomaly>,
}

impl Tally {
    /// Whether an example of `kind` would still be kept (worth describing).
    pub fn wants_example(&self, kind: AnomalyKind) -> bool {
        self.examples.iter().filter(|a| a.kind == kind).count() < EXAMPLES_PER_CLASS
    }

    pub fn add(&mut self, anomaly: Anomaly) {
        self.counts[anomaly.kind as usize] += 1;
        if self.wants_example(anomaly.kind) {
            self.examples.push(anomaly);
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The sizes of the two inputs of a two-stream check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwoStreamInputs {
    pub quotes_records: u64,
    pub orders_records: u64,
}

/// The outcome of one verification.
#[derive(Debug, Clone)]
pub struct Report {
    pub app: &'static str,
    pub input_records: u64,
    pub malformed: u64,
    pub expected_lines: u64,
    pub output_lines: u64,
    pub keys: u64,
    pub(crate) counts: [u64; KINDS],
    /// The first few anomalies of each class.
    pub examples: Vec<Anomaly>,
    /// Set when the run read quotes and orders as two streams.
    pub two_streams: Option<TwoStreamInputs>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.anomalies() == 0
    }

    pub fn anomalies(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn count(&self, kind: AnomalyKind) -> u64 {
        self.counts[kind as usize]
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (app, input, matching) = match self.two_streams {
            None => (
                self.app.to_string(),
                format!(
                    "{} input records ({} malformed), {} keys",
                    self.input_records, self.malformed, self.keys
                ),
                "the oracle",
            ),
            Some(two) => (
                format!("{} (two streams)", self.app),
                format!(
                    "{} quotes + {} orders records ({} malformed), {} symbols",
                    two.quotes_records, two.orders_records, self.malformed, self.keys
                ),
                "an interleaving of the streams",
            ),
        };
        if self.is_ok() {
            return write!(
                f,
                "OK {app}: {input}; all {} output lines match {matching}",
                self.output_lines
            );
        }
        let counts: Vec<String> = AnomalyKind::ALL
            .iter()
            .filter(|kind| kind.always_listed() || self.count(**kind) > 0)
            .map(|kind| format!("{} {}", kind.name(), self.count(*kind)))
            .collect();
        write!(
            f,
            "FAILED {app}: {} anomalies ({}); {input}; {} output lines, {} expected",
            self.anomalies(),
            counts.join(", "),
            self.output_lines,
            self.expected_lines
        )?;
        for kind in AnomalyKind::ALL {
            let count = self.count(kind);
            if count == 0 {
                continue;
            }
            write!(f, "\n{} ({count}):", kind.name())?;
            let examples: Vec<&Anomaly> = self.examples.iter().filter(|a| a.kind == kind).collect();
            for anomaly in &examples {
                write!(f, "\n  {anomaly}")?;
            }
            if count > examples.len() as u64 {
                write!(f, "\n  ... and {} more", count - examples.len() as u64)?;
            }
        }
        Ok(())
    }
}

impl Anomaly {
    fn input_name(&self) -> &'static str {
        self.stream.unwrap_or("input")
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.output_line, self.input_line) {
            (Some(line), _) => write!(f, "output line {line}: {}", self.kind.name())?,
            (None, Some(line)) => write!(f, "{} line {line}: {}", self.input_name(), self.kind.name())?,
            (None, None) => write!(f, "{}", self.kind.name())?,
        }
        match (&self.actual, &self.expected) {
            (Some(actual), Some(_)) if self.kind == AnomalyKind::Reordered => {
                write!(f, ": {actual:?} came after later lines of its key")?
            }
            (Some(actual), Some(expected)) => write!(f, ": got {actual:?}, expected {expected:?}")?,
            (Some(actual), None) => write!(f, ": {actual:?}")?,
            (None, Some(expected)) => write!(f, ": {expected:?} is missing from the output")?,
            (None, None) => {}
        }
        if let (Some(_), Some(input)) = (self.output_line, self.input_line) {
            write!(f, " ({} line {input})", self.input_name())?;
        }
        if let Some(note) = &self.note {
            write!(f, ": {note}")?;
        }
        Ok(())
    }
}

/// Checks `output` against the oracle for `input` (both in memory).
pub fn compare(app: App, input: &[u8], output: &[u8]) -> Report {
    let mut comparator = Comparator::new(app, input);
    comparator.feed(output);
    comparator.finish()
}

/// An expected line waiting for the output to show it.
struct Pending {
    origin: u64,
    line: Box<[u8]>,
    /// A later line of its key came first; if it still comes, it is reordered.
    skipped: bool,
}

#[derive(Default)]
struct KeyState {
    pending: VecDeque<Pending>,
    recent: VecDeque<Box<[u8]>>,
}

/// The expected lines read ahead, per key (or, unordered, per line).
#[derive(Default)]
struct Window {
    keys: HashMap<Box<[u8]>, KeyState>,
    unkeyed: HashMap<Box<[u8]>, VecDeque<u64>>,
    unkeyed_recent: VecDeque<Box<[u8]>>,
    ordered: bool,
    lines: u64,
    expected_total: u64,
}

impl ExpectSink for Window {
    fn expect(&mut self, key: &[u8], origin: u64, line: &[u8]) {
        self.lines += 1;
        self.expected_total += 1;
        if self.ordered {
            let state = match self.keys.get_mut(key) {
                Some(state) => state,
                None => self.keys.entry(key.into()).or_default(),
            };
            state.pending.push_back(Pending {
                origin,
                line: line.into(),
                skipped: false,
            });
        } else {
            self.unkeyed.entry(line.into()).or_default().push_back(origin);
        }
    }
}

fn remember(recent: &mut VecDeque<Box<[u8]>>, line: &[u8], cap: usize) {
    if recent.len() == cap {
        recent.pop_front();
    }
    recent.push_back(line.into());
}

/// The streaming comparator over an input read on demand.
pub struct Comparator<R> {
    app: App,
    oracle: Oracle,
    input: LineReader<R>,
    records: u64,
    malformed: u64,
    window: Window,
    /// A line cut by a batch boundary, completed by the next batch.
    partial: Vec<u8>,
    output_lines: u64,
    tally: Tally,
    /// Unordered apps: lines no expected line explains (paired with lost
    /// lines as wrong values at the end), and the first few of them.
    unexplained: u64,
    unexplained_examples: Vec<(u64, String)>,
}

impl<R: BufRead> Comparator<R> {
    pub fn new(app: App, input: R) -> Self {
        Comparator {
            app,
            oracle: Oracle::new(app),
            input: LineReader::new(input),
            records: 0,
            malformed: 0,
            window: Window {
                ordered: app.keeps_key_order(),
                ..Window::default()
            },
            partial: Vec::new(),
            output_lines: 0,
            tally: Tally::default(),
            unexplained: 0,
            unexplained_examples: Vec::new(),
        }
    }

    /// Output lines checked so far, and anomalies found so far.
    pub fn progress(&self) -> (u64, u64) {
        (self.output_lines, self.tally.total() + self.unexplained)
    }

    /// Whether every expected line has been seen (reading the input ahead
    /// as far as that takes, which costs no memory while nothing is pending).
    pub fn caught_up(&mut self) -> bool {
        while self.window.lines == 0 && self.read_ahead() {}
        self.input.is_done() && self.window.lines == 0
    }

    /// Reads one more input line into the oracle (or, at the end of the input,
    /// lets the oracle write what it holds back); false once there is nothing
    /// more to read, or the window is full.
    fn read_ahead(&mut self) -> bool {
        if self.input.is_done() || self.window.lines >= WINDOW_LINES_MAX {
            return false;
        }
        let Some((number, line)) = self.input.next_line() else {
            self.oracle.end(&mut self.window);
            return true;
        };
        self.records += 1;
        if !self.oracle.line(number, line, &mut self.window) {
            self.malformed += 1;
        }
        true
    }

    /// The next piece of output, cut anywhere.
    pub fn feed(&mut self, bytes: &[u8]) {
        // Out of `self` while the lines it holds are checked (no copy).
        let mut partial = std::mem::take(&mut self.partial);
        crate::input::feed_lines(&mut partial, bytes, |line| self.check_line(line));
        self.partial = partial;
    }

    fn note(&mut self, kind: AnomalyKind, expected: Option<(u64, &[u8])>, actual: Option<&[u8]>) {
        if !self.tally.wants_example(kind) {
            self.tally.counts[kind as usize] += 1;
            return;
        }
        self.tally.add(Anomaly {
            kind,
            output_line: actual.map(|_| self.output_lines),
            input_line: expected.map(|(origin, _)| origin).filter(|line| *line > 0),
            expected: expected.map(|(_, line)| String::from_utf8_lossy(line).into_owned()),
            actual: actual.map(|line| String::from_utf8_lossy(line).into_owned()),
            stream: None,
            note: None,
        });
    }

    fn check_line(&mut self, raw: &[u8]) {
        self.output_lines += 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if self.app.keeps_key_order() {
            self.check_keyed(line);
        } else {
            self.check_unkeyed(line);
        }
    }

    fn check_keyed(&mut self, line: &[u8]) {
        let Some(key) = self.app.output_key(line) else {
            return self.note(AnomalyKind::Unexpected, None, Some(line));
        };
        loop {
            if let Some(state) = self.window.keys.get_mut(key) {
                if let Some(at) = state.pending.iter().position(|p| *p.line == *line) {
                    let skipped_before = state.pending[at].skipped;
                    if !skipped_before {
                        // Lines of this key the output jumped over may still come late.
                        state.pending.iter_mut().take(at).for_each(|p| p.skipped = true);
                    }
                    let found = state.pending.remove(at).expect("found above");
                    remember(&mut state.recent, line, RECENT_PER_KEY);
                    self.window.lines -= 1;
                    if skipped_before {
                        self.note(
                            AnomalyKind::Reordered,
                            Some((found.origin, &found.line)),
                            Some(line),
                        );
                    }
                    return;
                }
            }
            if !self.read_ahead() {
                break;
            }
        }
        let Some(state) = self.window.keys.get_mut(key) else {
            return self.note(AnomalyKind::Unexpected, None, Some(line));
        };
        if state.recent.iter().any(|seen| **seen == *line) {
            return self.note(AnomalyKind::Duplicated, None, Some(line));
        }
        match state.pending.iter().position(|p| !p.skipped) {
            // In place of the key's next line, a line no input explains.
            Some(at) => {
                let replaced = state.pending.remove(at).expect("found above");
                remember(&mut state.recent, line, RECENT_PER_KEY);
                self.window.lines -= 1;
                self.note(
                    AnomalyKind::WrongValue,
                    Some((replaced.origin, &replaced.line)),
                    Some(line),
                );
            }
            None => self.note(AnomalyKind::Unexpected, None, Some(line)),
        }
    }

    fn check_unkeyed(&mut self, line: &[u8]) {
        loop {
            if let Some(origins) = self.window.unkeyed.get_mut(line) {
                origins.pop_front();
                if origins.is_empty() {
                    self.window.unkeyed.remove(line);
                }
                self.window.lines -= 1;
                remember(&mut self.window.unkeyed_recent, line, RECENT_UNKEYED);
                return;
            }
            if !self.read_ahead() {
                break;
            }
        }
        if self.window.unkeyed_recent.iter().any(|seen| **seen == *line) {
            return self.note(AnomalyKind::Duplicated, None, Some(line));
        }
        self.unexplained += 1;
        if self.unexplained_examples.len() < EXAMPLES_PER_CLASS {
            self.unexplained_examples
                .push((self.output_lines, String::from_utf8_lossy(line).into_owned()));
        }
    }

    /// The end of the output: what never came is lost.
    pub fn finish(mut self) -> Report {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.check_line(&line);
        }
        while self.read_ahead() {}
        let window = std::mem::take(&mut self.window);
        let keys = if self.app.keeps_key_order() {
            window.keys.len() as u64
        } else {
            u64::from(window.expected_total > 0)
        };
        let expected_lines = window.expected_total;
        let mut missing: Vec<(u64, Box<[u8]>)> =
            window
                .keys
                .into_values()
                .flat_map(|state| state.pending.into_iter().map(|p| (p.origin, p.line)))
                .chain(window.unkeyed.into_iter().flat_map(|(line, origins)| {
                    origins.into_iter().map(move |origin| (origin, line.clone()))
                }))
                .collect();
        missing.sort();
        // Unordered: unexplained lines stand in for lost ones as wrong values.
        let wrong = self.unexplained.min(missing.len() as u64);
        let examples = std::mem::take(&mut self.unexplained_examples);
        for (index, (output_line, actual)) in examples.into_iter().enumerate() {
            let kind = if (index as u64) < wrong {
                AnomalyKind::WrongValue
            } else {
                AnomalyKind::Unexpected
            };
            self.tally.examples.push(Anomaly {
                kind,
                output_line: Some(output_line),
                input_line: None,
                expected: None,
                actual: Some(actual),
                stream: None,
                note: None,
            });
        }
        self.tally.counts[AnomalyKind::WrongValue as usize] += wrong;
        self.tally.counts[AnomalyKind::Unexpected as usize] += self.unexplained - wrong;
        for (origin, line) in missing.into_iter().skip(wrong as usize) {
            self.note(AnomalyKind::Lost, Some((origin, &line)), None);
        }
        Report {
            app: self.app.name(),
            input_records: self.records,
            malformed: self.malformed,
            expected_lines,
            output_lines: self.output_lines,
            keys,
            counts: self.tally.counts,
            examples: self.tally.examples,
            two_streams: None,
        }
    }
}
