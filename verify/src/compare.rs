//! Compares an engine output with an oracle's expectation, streaming: output
//! arrives in batches of any size (`Comparator::feed`), each line is checked
//! as it comes against its key's next expected line, and nothing of the
//! output is kept but counts and a few examples. So memory is bounded by the
//! expectation, not by the output, and a run can be verified while it writes.

use crate::oracle::Expected;
use crate::table::LineTable;
use crate::App;
use std::collections::HashMap;
use std::fmt;

/// Examples kept and shown per anomaly class.
pub const EXAMPLES_PER_CLASS: usize = 3;

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
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 5] = [
        AnomalyKind::Lost,
        AnomalyKind::Duplicated,
        AnomalyKind::Reordered,
        AnomalyKind::Unexpected,
        AnomalyKind::WrongValue,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::Lost => "lost",
            AnomalyKind::Duplicated => "duplicated",
            AnomalyKind::Reordered => "reordered",
            AnomalyKind::Unexpected => "unexpected",
            AnomalyKind::WrongValue => "wrong value",
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
    counts: [u64; 5],
    /// The first few anomalies of each class.
    pub examples: Vec<Anomaly>,
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
        let input = format!(
            "{} input records ({} malformed), {} keys",
            self.input_records, self.malformed, self.keys
        );
        if self.is_ok() {
            return write!(
                f,
                "OK {}: {input}; all {} output lines match the oracle",
                self.app, self.output_lines
            );
        }
        let counts: Vec<String> = AnomalyKind::ALL
            .iter()
            .map(|kind| format!("{} {}", kind.name(), self.count(*kind)))
            .collect();
        write!(
            f,
            "FAILED {}: {} anomalies ({}); {input}; {} output lines, {} expected",
            self.app,
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

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.output_line, self.input_line) {
            (Some(line), _) => write!(f, "output line {line}: {}", self.kind.name())?,
            (None, Some(line)) => write!(f, "input line {line}: {}", self.kind.name())?,
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
            write!(f, " (input line {input})")?;
        }
        Ok(())
    }
}

/// Checks `output` against `expected` under `app`'s ordering rule.
pub fn compare(app: App, expected: &Expected, output: &[u8]) -> Report {
    let mut comparator = Comparator::new(app, expected);
    comparator.feed(output);
    comparator.finish()
}

/// Where an expected line stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    Not,
    Yes,
    /// A later line of its key came first; it may still come (reordered).
    Skipped,
}

/// The streaming comparator.
pub struct Comparator<'a> {
    app: App,
    expected: &'a Expected,
    /// Expected rows of each key, in order: `rows[starts[g]..starts[g + 1]]`.
    rows: Vec<u32>,
    starts: Vec<u32>,
    /// Per key: the position of its next expected line.
    cursors: Vec<u32>,
    /// Per distinct (key, line): its expected rows, in order.
    index: HashMap<(u32, &'a [u8]), Vec<u32>>,
    seen: Vec<Seen>,
    /// A line cut by a batch boundary, completed by the next batch.
    partial: Vec<u8>,
    output_lines: u64,
    counts: [u64; 5],
    examples: Vec<Anomaly>,
    /// Unordered apps: lines no expected line explains (paired with lost
    /// lines as wrong values at the end), and the first few of them.
    unexplained: u64,
    unexplained_examples: Vec<(u64, String)>,
}

impl<'a> Comparator<'a> {
    pub fn new(app: App, expected: &'a Expected) -> Self {
        let table = &expected.lines;
        let groups = expected.groups.len();
        let rows: Vec<u32> = table.sorted_by_group();
        let mut starts = vec![0u32; groups + 1];
        for row in &rows {
            starts[table.row(*row as usize).group as usize + 1] += 1;
        }
        for g in 0..groups {
            starts[g + 1] += starts[g];
        }
        let mut index: HashMap<(u32, &[u8]), Vec<u32>> = HashMap::with_capacity(table.len());
        for (position, row) in rows.iter().enumerate() {
            let group = table.row(*row as usize).group;
            index
                .entry((group, table.line(*row as usize)))
                .or_default()
                .push(position as u32);
        }
        Comparator {
            app,
            expected,
            rows,
            cursors: starts[..groups].to_vec(),
            starts,
            index,
            seen: vec![Seen::Not; table.len()],
            partial: Vec::new(),
            output_lines: 0,
            counts: [0; 5],
            examples: Vec::new(),
            unexplained: 0,
            unexplained_examples: Vec::new(),
        }
    }

    /// Output lines checked so far, and anomalies found so far.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.output_lines,
            self.counts.iter().sum::<u64>() + self.unexplained,
        )
    }

    /// The next piece of output, cut anywhere.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        if !self.partial.is_empty() {
            let Some(end) = bytes.iter().position(|b| *b == b'\n') else {
                self.partial.extend_from_slice(bytes);
                return;
            };
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&bytes[..end]);
            self.check_line(&line);
            bytes = &bytes[end + 1..];
        }
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            self.check_line(&bytes[..end]);
            bytes = &bytes[end + 1..];
        }
        self.partial.extend_from_slice(bytes);
    }

    fn table(&self) -> &'a LineTable {
        &self.expected.lines
    }

    fn note(&mut self, kind: AnomalyKind, position: Option<u32>, actual: Option<&[u8]>) {
        self.counts[kind as usize] += 1;
        let shown = self.examples.iter().filter(|a| a.kind == kind).count();
        if shown >= EXAMPLES_PER_CLASS {
            return;
        }
        let table = self.table();
        let row = position.map(|p| self.rows[p as usize] as usize);
        self.examples.push(Anomaly {
            kind,
            output_line: actual.map(|_| self.output_lines),
            input_line: row.map(|r| table.row(r).origin).filter(|line| *line > 0),
            expected: row.map(|r| String::from_utf8_lossy(table.line(r)).into_owned()),
            actual: actual.map(|line| String::from_utf8_lossy(line).into_owned()),
        });
    }

    fn check_line(&mut self, raw: &[u8]) {
        self.output_lines += 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let group = self
            .app
            .output_key(line)
            .and_then(|key| self.expected.groups.get(key));
        let Some(group) = group else {
            return self.unexplained_line(line, AnomalyKind::Unexpected);
        };
        let positions = self.index.get(&(group, line)).map(Vec::as_slice).unwrap_or(&[]);
        if !self.app.keeps_key_order() {
            // Any unseen copy will do.
            return match positions.iter().find(|p| self.seen[**p as usize] == Seen::Not) {
                Some(p) => self.seen[*p as usize] = Seen::Yes,
                None if !positions.is_empty() => self.note(AnomalyKind::Duplicated, None, Some(line)),
                None => self.unexplained_line(line, AnomalyKind::WrongValue),
            };
        }
        let cursor = self.cursors[group as usize];
        let end = self.starts[group as usize + 1];
        if let Some(&position) = positions
            .iter()
            .find(|p| **p >= cursor && self.seen[**p as usize] == Seen::Not)
        {
            // Lines of this key the output jumped over may still come late.
            for skipped in cursor..position {
                if self.seen[skipped as usize] == Seen::Not {
                    self.seen[skipped as usize] = Seen::Skipped;
                }
            }
            self.seen[position as usize] = Seen::Yes;
            self.cursors[group as usize] = position + 1;
        } else if let Some(&late) = positions
            .iter()
            .find(|p| self.seen[**p as usize] == Seen::Skipped)
        {
            self.seen[late as usize] = Seen::Yes;
            self.note(AnomalyKind::Reordered, Some(late), Some(line));
        } else if !positions.is_empty() {
            self.note(AnomalyKind::Duplicated, positions.first().copied(), Some(line));
        } else if cursor < end {
            // In place of the key's next line, a line no input explains.
            self.seen[cursor as usize] = Seen::Yes;
            self.cursors[group as usize] = cursor + 1;
            self.note(AnomalyKind::WrongValue, Some(cursor), Some(line));
        } else {
            self.note(AnomalyKind::Unexpected, None, Some(line));
        }
    }

    /// A line that matches nothing. For unordered apps it may be a wrong
    /// value of a line that will turn out lost, so it is settled at the end.
    fn unexplained_line(&mut self, line: &[u8], kind: AnomalyKind) {
        if self.app.keeps_key_order() {
            return self.note(kind, None, Some(line));
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
        let mut missing: Vec<u32> = (0..self.rows.len() as u32)
            .filter(|p| self.seen[*p as usize] != Seen::Yes)
            .collect();
        let table = self.table();
        missing.sort_by_key(|p| table.row(self.rows[*p as usize] as usize).origin);
        // Unordered: unexplained lines stand in for lost ones as wrong values.
        let wrong = self.unexplained.min(missing.len() as u64);
        let examples = std::mem::take(&mut self.unexplained_examples);
        for (index, (output_line, actual)) in examples.into_iter().enumerate() {
            let kind = if (index as u64) < wrong {
                AnomalyKind::WrongValue
            } else {
                AnomalyKind::Unexpected
            };
            self.examples.push(Anomaly {
                kind,
                output_line: Some(output_line),
                input_line: None,
                expected: None,
                actual: Some(actual),
            });
        }
        self.counts[AnomalyKind::WrongValue as usize] += wrong;
        self.counts[AnomalyKind::Unexpected as usize] += self.unexplained - wrong;
        for position in missing.into_iter().skip(wrong as usize) {
            self.note(AnomalyKind::Lost, Some(position), None);
        }
        Report {
            app: self.app.name(),
            input_records: self.expected.records,
            malformed: self.expected.malformed,
            expected_lines: self.rows.len() as u64,
            output_lines: self.output_lines,
            keys: self.expected.groups.len() as u64,
            counts: self.counts,
            examples: self.examples,
        }
    }
}
