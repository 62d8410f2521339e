//! Compares an engine output with an oracle's expectation and explains every
//! difference.

use crate::input::for_each_line;
use crate::oracle::Expected;
use crate::table::{LineTable, UNPARSEABLE_GROUP};
use crate::App;
use std::fmt;

/// How many anomalies a report spells out; the rest are only counted.
pub const ANOMALIES_SHOWN: usize = 10;

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
    const ALL: [AnomalyKind; 5] = [
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
    /// 1-based line in the output file, if the anomaly has one.
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
    /// The first anomalies in output order (lost lines last).
    pub first: Vec<Anomaly>,
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
        for anomaly in &self.first {
            write!(f, "\n{anomaly}")?;
        }
        if self.anomalies() > self.first.len() as u64 {
            write!(f, "\n... and {} more", self.anomalies() - self.first.len() as u64)?;
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

/// Rows of both sides taking part in an anomaly, before rendering.
#[derive(Clone, Copy)]
struct Found {
    kind: AnomalyKind,
    expected: Option<u32>,
    actual: Option<u32>,
}

/// Checks `output` against `expected` under `app`'s ordering rule.
pub fn compare(app: App, expected: &Expected, output: &[u8]) -> Report {
    let actual = parse_output(app, expected, output);
    let want = &expected.lines;

    // 1. Match lines as multisets within each key: the k-th copy of a line on
    //    one side matches the k-th copy on the other.
    let mut want_matched = vec![false; want.len()];
    let mut got_matched = vec![false; actual.len()];
    // For unmatched actual rows: whether the oracle expects that line at all.
    let mut got_known = vec![false; actual.len()];
    let (want_sorted, got_sorted) = (want.sorted_by_group_and_line(), actual.sorted_by_group_and_line());
    let (mut i, mut j) = (0, 0);
    while i < want_sorted.len() || j < got_sorted.len() {
        let order = match (want_sorted.get(i), got_sorted.get(j)) {
            (Some(w), Some(g)) => row_key(want, *w).cmp(&row_key(&actual, *g)),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let run_end = |sorted: &[u32], table: &LineTable, from: usize| {
            let key = row_key(table, sorted[from]);
            from + sorted[from..]
                .iter()
                .take_while(|r| row_key(table, **r) == key)
                .count()
        };
        match order {
            std::cmp::Ordering::Less => i = run_end(&want_sorted, want, i),
            std::cmp::Ordering::Greater => j = run_end(&got_sorted, &actual, j),
            std::cmp::Ordering::Equal => {
                let (want_end, got_end) = (run_end(&want_sorted, want, i), run_end(&got_sorted, &actual, j));
                let matched = (want_end - i).min(got_end - j);
                for row in &want_sorted[i..i + matched] {
                    want_matched[*row as usize] = true;
                }
                for row in &got_sorted[j..got_end] {
                    got_known[*row as usize] = true;
                }
                for row in &got_sorted[j..j + matched] {
                    got_matched[*row as usize] = true;
                }
                (i, j) = (want_end, got_end);
            }
        }
    }

    // 2. Walk each key's lines in order: unmatched lines are lost, duplicated,
    //    wrong or unexpected; matched lines out of sequence are reordered.
    let mut found = Vec::new();
    let (want_by_group, got_by_group) = (want.sorted_by_group(), actual.sorted_by_group());
    let (mut i, mut j) = (0, 0);
    while i < want_by_group.len() || j < got_by_group.len() {
        let group = match (want_by_group.get(i), got_by_group.get(j)) {
            (Some(w), Some(g)) => want.row(*w as usize).group.min(actual.row(*g as usize).group),
            (Some(w), None) => want.row(*w as usize).group,
            (None, Some(g)) => actual.row(*g as usize).group,
            (None, None) => unreachable!(),
        };
        let want_rows = take_group(&want_by_group, want, group, &mut i);
        let got_rows = take_group(&got_by_group, &actual, group, &mut j);
        classify_group(
            app,
            (want, want_rows, &want_matched),
            (&actual, got_rows, &got_matched, &got_known),
            &mut found,
        );
    }

    let mut counts = [0; 5];
    for anomaly in &found {
        counts[anomaly.kind as usize] += 1;
    }
    let sort_key = |a: &Found| match a.actual {
        Some(row) => (0, actual.row(row as usize).origin),
        None => (1, a.expected.map_or(0, |row| want.row(row as usize).origin)),
    };
    found.sort_by_key(sort_key);
    found.truncate(ANOMALIES_SHOWN);
    let text = |table: &LineTable, row: Option<u32>| {
        row.map(|row| String::from_utf8_lossy(table.line(row as usize)).into_owned())
    };
    let first = found
        .iter()
        .map(|a| Anomaly {
            kind: a.kind,
            output_line: a.actual.map(|row| actual.row(row as usize).origin),
            input_line: a
                .expected
                .map(|row| want.row(row as usize).origin)
                .filter(|line| *line > 0),
            expected: text(want, a.expected),
            actual: text(&actual, a.actual),
        })
        .collect();
    Report {
        app: app.name(),
        input_records: expected.records,
        malformed: expected.malformed,
        expected_lines: want.len() as u64,
        output_lines: actual.len() as u64,
        keys: expected.groups.len() as u64,
        counts,
        first,
    }
}

/// The output's lines, each in the group of its key; lines of keys the oracle
/// never outputs go to `UNPARSEABLE_GROUP`, where nothing can match them.
fn parse_output(app: App, expected: &Expected, output: &[u8]) -> LineTable {
    let mut actual = LineTable::default();
    for_each_line(output, |number, line| {
        let group = app
            .output_key(line)
            .and_then(|key| expected.groups.get(key))
            .unwrap_or(UNPARSEABLE_GROUP);
        actual.push(group, line, number);
    });
    actual
}

/// The rows of `group` starting at `*from` in a group-sorted order; advances `*from`.
fn take_group<'a>(order: &'a [u32], table: &LineTable, group: u32, from: &mut usize) -> &'a [u32] {
    let start = *from;
    while *from < order.len() && table.row(order[*from] as usize).group == group {
        *from += 1;
    }
    &order[start..*from]
}

fn row_key(table: &LineTable, row: u32) -> (u32, &[u8]) {
    (table.row(row as usize).group, table.line(row as usize))
}

type WantSide<'a> = (&'a LineTable, &'a [u32], &'a [bool]);
type GotSide<'a> = (&'a LineTable, &'a [u32], &'a [bool], &'a [bool]);

/// Classifies one key's differences. `want_rows` and `got_rows` are that
/// key's rows in their original order.
fn classify_group(app: App, want: WantSide, got: GotSide, found: &mut Vec<Found>) {
    let (want_table, want_rows, want_matched) = want;
    let (got_table, got_rows, got_matched, got_known) = got;
    let lost: Vec<u32> = want_rows
        .iter()
        .copied()
        .filter(|r| !want_matched[*r as usize])
        .collect();
    let mut lost = lost.into_iter();
    for row in got_rows.iter().copied().filter(|r| !got_matched[*r as usize]) {
        let anomaly = if got_known[row as usize] {
            Found {
                kind: AnomalyKind::Duplicated,
                expected: None,
                actual: Some(row),
            }
        } else if let Some(missing) = lost.next() {
            // A line of this key that the oracle never produces, where the
            // oracle expected another: the engine computed a wrong value.
            Found {
                kind: AnomalyKind::WrongValue,
                expected: Some(missing),
                actual: Some(row),
            }
        } else {
            Found {
                kind: AnomalyKind::Unexpected,
                expected: None,
                actual: Some(row),
            }
        };
        found.push(anomaly);
    }
    found.extend(lost.map(|row| Found {
        kind: AnomalyKind::Lost,
        expected: Some(row),
        actual: None,
    }));

    if app.keeps_key_order() {
        let in_order = want_rows.iter().copied().filter(|r| want_matched[*r as usize]);
        let as_written = got_rows.iter().copied().filter(|r| got_matched[*r as usize]);
        for (want_row, got_row) in in_order.zip(as_written) {
            if want_table.line(want_row as usize) != got_table.line(got_row as usize) {
                found.push(Found {
                    kind: AnomalyKind::Reordered,
                    expected: Some(want_row),
                    actual: Some(got_row),
                });
            }
        }
    }
}
