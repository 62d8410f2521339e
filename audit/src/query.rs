//! Questions asked of an audit log after the fact.

use crate::record::{Record, KIND_NAMES};
use crate::segment::{verify, ChainHead, VerifyReport};
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use verity_state::storage::Storage;

/// `verity audit summary`: what the log holds.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub report: VerifyReport,
    /// Records per kind, in `KIND_NAMES` order.
    pub kinds: [u64; KIND_NAMES.len()],
    pub first_utc_us: Option<u64>,
    pub last_utc_us: Option<u64>,
    /// Per process: its lives (run starts) and how the newest ended.
    pub processes: BTreeMap<u32, ProcessSummary>,
    /// Clock sources the runs said they used.
    pub clock_sources: Vec<String>,
    /// Input records received (lines of input chunks) and output lines.
    pub input_records: u64,
    pub output_lines: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ProcessSummary {
    pub lives: u64,
    pub last_outcome: Option<String>,
    pub command_line: Vec<String>,
}

/// Reads the whole log (checking it as `verify` does) and sums it up.
pub fn summarize(storage: &mut dyn Storage) -> io::Result<Summary> {
    let mut summary = Summary::default();
    let mut records = Vec::new();
    summary.report = verify(storage, &[], |process, body| {
        if let Ok(record) = Record::decode(body) {
            records.push((process, record));
        }
    })?;
    for (process, record) in records {
        let kind = KIND_NAMES
            .iter()
            .position(|k| *k == record.kind_name())
            .expect("a known kind");
        summary.kinds[kind] += 1;
        if let Some(at) = record.utc_us() {
            summary.first_utc_us = Some(summary.first_utc_us.map_or(at, |t| t.min(at)));
            summary.last_utc_us = Some(summary.last_utc_us.map_or(at, |t| t.max(at)));
        }
        let entry = summary.processes.entry(process).or_default();
        match record {
            Record::RunStart(start) => {
                entry.lives += 1;
                entry.command_line = start.args;
                if !summary.clock_sources.contains(&start.clock_source) {
                    summary.clock_sources.push(start.clock_source);
                }
            }
            Record::RunEnd(end) => entry.last_outcome = Some(end.outcome),
            Record::InputChunk(chunk) => summary.input_records += chunk.lines,
            Record::Output(output) => summary.output_lines += output.lines,
            _ => {}
        }
    }
    Ok(summary)
}

/// A UTC time as `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` (proleptic Gregorian).
pub fn format_utc_us(utc_us: u64) -> String {
    let seconds = utc_us / 1_000_000;
    let micros = utc_us % 1_000_000;
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        writeln!(f, "segments: {}, records: {}", r.segments, r.records)?;
        if let (Some(first), Some(last)) = (self.first_utc_us, self.last_utc_us) {
            writeln!(
                f,
                "time range: {} .. {} (UTC)",
                format_utc_us(first),
                format_utc_us(last)
            )?;
        }
        for source in &self.clock_sources {
            writeln!(f, "clock: {source}")?;
        }
        writeln!(
            f,
            "input records received: {}, output lines: {}",
            self.input_records, self.output_lines
        )?;
        writeln!(f, "records by kind:")?;
        for (name, count) in KIND_NAMES.iter().zip(self.kinds) {
            if count > 0 {
                writeln!(f, "  {name:<12} {count}")?;
            }
        }
        writeln!(f, "processes:")?;
        for (process, p) in &self.processes {
            writeln!(
                f,
                "  process {process}: {} li{}, last ended: {}; command: {}",
                p.lives,
                if p.lives == 1 { "fe" } else { "ves" },
                p.last_outcome
                    .as_deref()
                    .unwrap_or("(no end recorded: still running, or it died)"),
                p.command_line.join(" ")
            )?;
        }
        for note in &r.torn_tails {
            writeln!(f, "note: {note}")?;
        }
        for problem in &r.problems {
            writeln!(f, "PROBLEM: {problem}")?;
        }
        Ok(())
    }
}

/// Reads a file of `verity audit digest` lines.
pub fn parse_digest(text: &str) -> Result<Vec<ChainHead>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| ChainHead::parse(line).ok_or_else(|| format!("not a digest line: `{line}`")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_format_like_iso_8601() {
        assert_eq!(format_utc_us(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_utc_us(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(
            format_utc_us(1_796_083_199_999_999),
            "2026-11-30T23:59:59.999999Z"
        );
    }

    #[test]
    fn digests_parse_and_bad_lines_are_named() {
        let line = format!("process 2 records 7 head {}", "ab".repeat(32));
        let heads = parse_digest(&format!("{line}\n\n")).unwrap();
        assert_eq!((heads[0].process, heads[0].records), (2, 7));
        assert!(parse_digest("garbage").unwrap_err().contains("garbage"));
    }
}
