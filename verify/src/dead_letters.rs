//! Checks a run's dead-letter file: every malformed input line must be in it
//! exactly once, as `<source>:<line>: <reason>: <record>`, and nothing else.
//! Which lines are malformed is decided by the oracle's own reading of each
//! app's format (`LineRule`), not by the app's code.
//!
//! Dead letters reach the file in roughly input order (each shard writes its
//! own in order; shards and processes interleave), so the check streams like
//! the output comparator: each input is read only as far as the letters name,
//! holding the malformed lines read but not yet seen. It also keeps the line
//! numbers of all malformed lines (8 bytes each), to tell a duplicate from a
//! well-formed line that was dead-lettered.

use crate::compare::{AnomalyKind, EXAMPLES_PER_CLASS, KINDS, WINDOW_LINES_MAX};
use crate::input::LineReader;
use crate::oracle::LineRule;
use std::collections::BTreeMap;
use std::fmt;
use std::io::BufRead;
use verity_core::line::DEAD_LETTER_RAW_MAX_BYTES;
use verity_core::source::OVERSIZED_PREFIX_BYTES;

/// The classes a dead-letter check reports (a letter naming a malformed line
/// with another record is a wrong value).
const LETTER_KINDS: [AnomalyKind; 4] = [
    AnomalyKind::Lost,
    AnomalyKind::Duplicated,
    AnomalyKind::Unexpected,
    AnomalyKind::WrongValue,
];

/// One input stream whose malformed lines must be dead-lettered.
pub struct DeadLetterInput<R> {
    /// The names a letter may give this source: the engine writes the source
    /// name it was given (e.g. the path as typed). A letter whose source is
    /// none of them still matches by file name, if only one input has it.
    pub names: Vec<String>,
    pub rule: LineRule,
    pub input: R,
}

/// One difference between the malformed input lines and the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LetterAnomaly {
    pub kind: AnomalyKind,
    /// 1-based line in the dead-letter file, if the anomaly has one.
    pub letter_line: Option<u64>,
    /// The input (its first name) and line the letter is about, if known.
    pub input: Option<(String, u64)>,
    /// The record the letter should show.
    pub expected: Option<String>,
    /// The letter as written.
    pub actual: Option<String>,
    pub note: Option<String>,
}

impl fmt::Display for LetterAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.letter_line, &self.input) {
            (Some(line), _) => write!(f, "dead-letter line {line}: {}", self.kind.name())?,
            (None, Some((name, line))) => write!(f, "{name} line {line}: {}", self.kind.name())?,
            (None, None) => write!(f, "{}", self.kind.name())?,
        }
        match (&self.actual, &self.expected) {
            (Some(actual), Some(expected)) => write!(f, ": got {actual:?}, expected record {expected}")?,
            (Some(actual), None) => write!(f, ": {actual:?}")?,
            (None, Some(expected)) => write!(f, ": {expected} is missing from the dead letters")?,
            (None, None) => {}
        }
        if let Some(note) = &self.note {
            write!(f, ": {note}")?;
        }
        Ok(())
    }
}

/// The outcome of a dead-letter check.
#[derive(Debug, Clone)]
pub struct DeadLetterReport {
    /// Input lines the app must dead-letter.
    pub malformed: u64,
    /// Lines in the dead-letter file.
    pub letters: u64,
    counts: [u64; KINDS],
    /// The first few anomalies of each class.
    pub examples: Vec<LetterAnomaly>,
}

impl DeadLetterReport {
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

impl fmt::Display for DeadLetterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() && self.malformed == 0 {
            return write!(f, "OK dead letters: no malformed input lines, no dead letters");
        }
        if self.is_ok() {
            return write!(
                f,
                "OK dead letters: all {} malformed input lines dead-lettered exactly once, nothing else",
                self.malformed
            );
        }
        let counts: Vec<String> = LETTER_KINDS
            .iter()
            .map(|kind| format!("{} {}", kind.name(), self.count(*kind)))
            .collect();
        write!(
            f,
            "FAILED dead letters: {} anomalies ({}); {} malformed input lines, {} dead letters",
            self.anomalies(),
            counts.join(", "),
            self.malformed,
            self.letters
        )?;
        for kind in LETTER_KINDS {
            let count = self.count(kind);
            if count == 0 {
                continue;
            }
            write!(f, "\n{} ({count}):", kind.name())?;
            let examples: Vec<&LetterAnomaly> = self.examples.iter().filter(|a| a.kind == kind).collect();
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

/// How the dead-letter writer shows a rejected line's record.
pub fn letter_record(line: &[u8]) -> String {
    let kept = &line[..line.len().min(DEAD_LETTER_RAW_MAX_BYTES)];
    format!("{:?}", String::from_utf8_lossy(kept))
}

struct StreamCheck<R> {
    names: Vec<String>,
    rule: LineRule,
    lines: LineReader<R>,
    /// Every malformed line read so far, ascending.
    malformed_lines: Vec<u64>,
    /// Malformed lines read and not yet in the letters, with their records.
    pending: BTreeMap<u64, String>,
    /// The same lines' records if the reader skipped them as over its
    /// line-length bound (only their first bytes are kept), when that differs.
    oversized: BTreeMap<u64, String>,
}

impl<R: BufRead> StreamCheck<R> {
    /// Reads on until line `number` is read (or the input ends, or too many
    /// malformed lines wait).
    fn read_to(&mut self, number: u64) {
        while self.lines.lines_read() < number && (self.pending.len() as u64) < WINDOW_LINES_MAX {
            let Some((at, line)) = self.lines.next_line() else {
                return;
            };
            if !self.rule.accepts(line) {
                self.malformed_lines.push(at);
                self.pending.insert(at, letter_record(line));
                if line.len() > OVERSIZED_PREFIX_BYTES {
                    self.oversized
                        .insert(at, letter_record(&line[..OVERSIZED_PREFIX_BYTES]));
                }
            }
        }
    }

    fn file_name(&self) -> Option<&std::ffi::OsStr> {
        self.names
            .iter()
            .find_map(|name| std::path::Path::new(name).file_name())
    }
}

/// The streaming dead-letter checker, fed the dead-letter file in pieces.
pub struct DeadLetterChecker<R> {
    streams: Vec<StreamCheck<R>>,
    partial: Vec<u8>,
    letters: u64,
    counts: [u64; KINDS],
    examples: Vec<LetterAnomaly>,
}

/// `:<digits>: ` at `at`: the line number and where the rest starts.
fn line_number_at(letter: &str, at: usize) -> Option<(u64, usize)> {
    let rest = letter.get(at..)?.strip_prefix(':')?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let number = rest[..digits].parse().ok()?;
    rest[digits..].strip_prefix(": ")?;
    Some((number, at + 1 + digits + 2))
}

impl<R: BufRead> DeadLetterChecker<R> {
    pub fn new(inputs: Vec<DeadLetterInput<R>>) -> Self {
        let streams = inputs
            .into_iter()
            .map(|input| {
                assert!(!input.names.is_empty(), "an input needs a name");
                StreamCheck {
                    names: input.names,
                    rule: input.rule,
                    lines: LineReader::new(input.input),
                    malformed_lines: Vec::new(),
                    pending: BTreeMap::new(),
                    oversized: BTreeMap::new(),
                }
            })
            .collect();
        DeadLetterChecker {
            streams,
            partial: Vec::new(),
            letters: 0,
            counts: [0; KINDS],
            examples: Vec::new(),
        }
    }

    /// The next piece of the dead-letter file, cut anywhere.
    pub fn feed(&mut self, bytes: &[u8]) {
        // Out of `self` while the lines it holds are checked (no copy).
        let mut partial = std::mem::take(&mut self.partial);
        crate::input::feed_lines(&mut partial, bytes, |line| self.check_letter(line));
        self.partial = partial;
    }

    fn note(&mut self, anomaly: LetterAnomaly) {
        self.counts[anomaly.kind as usize] += 1;
        if self.examples.iter().filter(|a| a.kind == anomaly.kind).count() < EXAMPLES_PER_CLASS {
            self.examples.push(anomaly);
        }
    }

    /// Which input a letter is about, its line, and where its reason starts:
    /// by a name the input goes by, else by file name.
    fn locate(&self, letter: &str) -> Result<(usize, u64, usize), String> {
        let mut best: Option<(usize, usize, u64, usize)> = None;
        for (index, stream) in self.streams.iter().enumerate() {
            for name in &stream.names {
                if !letter.starts_with(name.as_str()) || best.is_some_and(|b| b.0 >= name.len()) {
                    continue;
                }
                if let Some((number, rest)) = line_number_at(letter, name.len()) {
                    best = Some((name.len(), index, number, rest));
                }
            }
        }
        if let Some((_, index, number, rest)) = best {
            return Ok((index, number, rest));
        }
        let (source, number, rest) = (0..letter.len())
            .filter(|at| letter.as_bytes()[*at] == b':')
            .find_map(|at| line_number_at(letter, at).map(|(n, rest)| (&letter[..at], n, rest)))
            .ok_or_else(|| "not a dead letter (`<source>:<line>: <reason>: <record>`)".to_string())?;
        let file_name = std::path::Path::new(source).file_name();
        let matching: Vec<usize> = (0..self.streams.len())
            .filter(|i| file_name.is_some() && self.streams[*i].file_name() == file_name)
            .collect();
        match matching[..] {
            [index] => Ok((index, number, rest)),
            _ => Err(format!("source `{source}` is none of the inputs")),
        }
    }

    fn check_letter(&mut self, raw: &[u8]) {
        self.letters += 1;
        let letter = String::from_utf8_lossy(raw.strip_suffix(b"\r").unwrap_or(raw)).into_owned();
        let unexpected = |input, note| LetterAnomaly {
            kind: AnomalyKind::Unexpected,
            letter_line: None,
            input,
            expected: None,
            actual: None,
            note: Some(note),
        };
        let mut anomaly = match self.locate(&letter) {
            Err(why) => unexpected(None, why),
            Ok((index, number, rest)) => match self.match_letter(index, number, &letter[rest..]) {
                None => return,
                Some(anomaly) => anomaly,
            },
        };
        anomaly.letter_line = Some(self.letters);
        anomaly.actual = Some(letter);
        self.note(anomaly);
    }

    /// Takes line `number` of input `index` off the pending letters; what is
    /// wrong with the letter (`<reason>: <record>` in `rest`), if anything.
    fn match_letter(&mut self, index: usize, number: u64, rest: &str) -> Option<LetterAnomaly> {
        let stream = &mut self.streams[index];
        stream.read_to(number);
        let at = Some((stream.names[0].clone(), number));
        let anomaly = |kind, expected, note: &str| LetterAnomaly {
            kind,
            letter_line: None,
            input: at.clone(),
            expected,
            actual: None,
            note: Some(note.to_string()),
        };
        // A letter about the right line counts once, right or wrong.
        if let Some(record) = stream.pending.remove(&number) {
            let oversized = stream.oversized.remove(&number);
            let reason = rest
                .strip_suffix(record.as_str())
                .and_then(|r| r.strip_suffix(": "));
            if reason.is_some_and(|reason| !reason.is_empty()) {
                return None;
            }
            let skipped_reason = oversized
                .and_then(|prefix| rest.strip_suffix(prefix.as_str()).map(str::to_string))
                .and_then(|r| r.strip_suffix(": ").map(str::to_string));
            if skipped_reason.is_some_and(|reason| reason.ends_with(" bytes is over the limit")) {
                return None;
            }
            let note = "the record differs, or the reason is missing";
            return Some(anomaly(AnomalyKind::WrongValue, Some(record), note));
        }
        if stream.malformed_lines.binary_search(&number).is_ok() {
            return Some(anomaly(AnomalyKind::Duplicated, None, "already dead-lettered"));
        }
        if number == 0 || number > stream.lines.lines_read() {
            return Some(anomaly(AnomalyKind::Unexpected, None, "no such input line"));
        }
        Some(anomaly(AnomalyKind::Unexpected, None, "a well-formed input line"))
    }

    /// The end of the dead letters: malformed lines never named are lost.
    pub fn finish(mut self) -> DeadLetterReport {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.check_letter(&line);
        }
        let mut lost = Vec::new();
        for stream in &mut self.streams {
            stream.read_to(u64::MAX);
            let name = &stream.names[0];
            lost.extend(
                std::mem::take(&mut stream.pending)
                    .into_iter()
                    .map(|(line, record)| (name.clone(), line, record)),
            );
        }
        let malformed = self.streams.iter().map(|s| s.malformed_lines.len() as u64).sum();
        for (name, line, record) in lost {
            self.note(LetterAnomaly {
                kind: AnomalyKind::Lost,
                letter_line: None,
                input: Some((name, line)),
                expected: Some(record),
                actual: None,
                note: None,
            });
        }
        DeadLetterReport {
            malformed,
            letters: self.letters,
            counts: self.counts,
            examples: self.examples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::App;

    const INPUT: &str = "1\nx\n2\n\n3\n";

    fn check(letters: &str) -> DeadLetterReport {
        let input = DeadLetterInput {
            names: vec!["in.txt".to_string()],
            rule: LineRule::App(App::Doubler),
            input: INPUT.as_bytes(),
        };
        let mut checker = DeadLetterChecker::new(vec![input]);
        checker.feed(letters.as_bytes());
        checker.finish()
    }

    const GOOD: &str = "in.txt:4: not an integer: \"\"\nin.txt:2: not an integer: \"x\"\n";

    #[test]
    fn every_malformed_line_once_in_any_order_passes() {
        let report = check(GOOD);
        assert!(report.is_ok(), "{report}");
        assert_eq!((report.malformed, report.letters), (2, 2));
        assert!(
            report.to_string().starts_with("OK dead letters: all 2 malformed"),
            "{report}"
        );
        assert!(check(&GOOD.replace("in.txt", "/some/dir/in.txt")).is_ok());
    }

    fn only(report: &DeadLetterReport, kind: AnomalyKind) -> String {
        assert_eq!(report.count(kind), 1, "{report}");
        assert_eq!(report.anomalies(), 1, "{report}");
        report.to_string()
    }

    #[test]
    fn each_fault_is_named() {
        let text = only(&check("in.txt:2: not an integer: \"x\"\n"), AnomalyKind::Lost);
        assert!(
            text.contains("in.txt line 4: lost: \"\" is missing from the dead letters"),
            "{text}"
        );
        let text = only(
            &check(&format!("{GOOD}in.txt:2: again: \"x\"\n")),
            AnomalyKind::Duplicated,
        );
        assert!(text.contains("dead-letter line 3: duplicated"), "{text}");
        let text = only(
            &check(&format!("{GOOD}in.txt:3: not an integer: \"2\"\n")),
            AnomalyKind::Unexpected,
        );
        assert!(text.contains("a well-formed input line"), "{text}");
        only(
            &check(&format!("{GOOD}in.txt:9: not an integer: \"2\"\n")),
            AnomalyKind::Unexpected,
        );
        let text = only(
            &check(&format!("{GOOD}other.txt:3: bad: \"2\"\n")),
            AnomalyKind::Unexpected,
        );
        assert!(
            text.contains("source `other.txt` is none of the inputs"),
            "{text}"
        );
        only(&check(&format!("{GOOD}garbage\n")), AnomalyKind::Unexpected);
        let text = only(&check(&GOOD.replace("\"x\"", "\"y\"")), AnomalyKind::WrongValue);
        assert!(text.contains("expected record \"x\""), "{text}");
        only(
            &check(&GOOD.replace("not an integer: \"x\"", ": \"x\"")),
            AnomalyKind::WrongValue,
        );
    }

    #[test]
    fn sources_are_told_apart_by_name() {
        let quotes = "Q,A,1,2\nO,1,A,B,1,1\n";
        let orders = "O,1,A,B,1,1\nQ,A,1,2\n";
        let inputs = || {
            vec![
                DeadLetterInput {
                    names: vec!["tcp:127.0.0.1:9000".to_string()],
                    rule: LineRule::Quotes,
                    input: quotes.as_bytes(),
                },
                DeadLetterInput {
                    names: vec!["dir/orders.txt".to_string()],
                    rule: LineRule::Orders,
                    input: orders.as_bytes(),
                },
            ]
        };
        let run = |letters: &str| {
            let mut checker = DeadLetterChecker::new(inputs());
            checker.feed(letters.as_bytes());
            checker.finish()
        };
        let good = "orders.txt:2: a quote line in the orders stream: \"Q,A,1,2\"\n\
                    tcp:127.0.0.1:9000:2: an order line: \"O,1,A,B,1,1\"\n";
        assert!(run(good).is_ok(), "{}", run(good));
        // The right lines, but each named under the other stream.
        let swapped = "dir/orders.txt:2: x: \"O,1,A,B,1,1\"\ntcp:127.0.0.1:9000:2: x: \"Q,A,1,2\"\n";
        let report = run(swapped);
        assert_eq!(report.count(AnomalyKind::WrongValue), 2, "{report}");
        assert_eq!(report.anomalies(), 2, "{report}");
    }

    #[test]
    fn records_are_cut_like_the_writer_cuts_them() {
        let long = "é".repeat(200);
        assert_eq!(
            letter_record(long.as_bytes())
                .chars()
                .filter(|c| *c == 'é')
                .count(),
            128
        );
        assert_eq!(letter_record(b"a\"b\\\xff"), "\"a\\\"b\\\\\u{fffd}\"");
    }
}
