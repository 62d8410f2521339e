//! The oracle of `window-count` (per key, records per 100 ms tumbling window
//! of event time; 50 ms bounded out-of-orderness), from its format alone: a
//! plain single-thread model that shares no code with `apps/` or the
//! engine's windows. It reads the input in order, keeps the highest event
//! time so far, calls a record late when its time is below that minus the
//! delay, and counts the rest per key and window. The engine's output must
//! hold each key's windows exactly, in start order; its dead letters must
//! name exactly the late lines (the malformed ones are `dead_letters`' job).

use crate::input::for_each_line;
use crate::oracle::parse_seq;
use std::collections::{BTreeMap, BTreeSet};

/// From the app's format: windows `[k·100, (k+1)·100)` ms.
pub const WINDOW_SIZE_MS: u64 = 100;
/// From the app's format: a record may lag the highest time before it by this.
pub const MAX_DELAY_MS: u64 = 50;
/// Differences a report lists before it stops.
const DIFFERENCES_SHOWN: usize = 8;

/// What a window-count run over one input must produce.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExpectedWindows {
    /// Per key, (start ms, count) of each window with records, by start.
    pub windows: BTreeMap<String, BTreeMap<u64, u64>>,
    /// The 1-based input lines that are late.
    pub late_lines: BTreeSet<u64>,
}

pub fn expected_windows(input: &[u8]) -> ExpectedWindows {
    let mut expected = ExpectedWindows::default();
    let mut highest_ms: Option<u64> = None;
    for_each_line(input, |number, line| {
        let Some((key, at_ms)) = std::str::from_utf8(line)
            .ok()
            .and_then(|text| parse_seq(text).ok())
        else {
            return;
        };
        let highest = highest_ms.map_or(at_ms, |h| h.max(at_ms));
        highest_ms = Some(highest);
        if at_ms < highest.saturating_sub(MAX_DELAY_MS) {
            expected.late_lines.insert(number);
            return;
        }
        let start_ms = at_ms - at_ms % WINDOW_SIZE_MS;
        *expected
            .windows
            .entry(key.to_string())
            .or_default()
            .entry(start_ms)
            .or_default() += 1;
    });
    expected
}

/// Why `output` is not the windows `input` must produce, if it is not.
pub fn check_windows(input: &[u8], output: &[u8]) -> Result<(), String> {
    let expected = expected_windows(input);
    let mut seen: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut problems = Vec::new();
    for_each_line(output, |number, line| match parse_window(line) {
        Some((key, start_ms, end_ms, count)) if end_ms == start_ms + WINDOW_SIZE_MS => {
            seen.entry(key).or_default().push((start_ms, count));
        }
        _ => problems.push(format!(
            "output line {number} is no window: {:?}",
            String::from_utf8_lossy(line)
        )),
    });
    let keys: BTreeSet<&String> = expected.windows.keys().chain(seen.keys()).collect();
    for key in keys {
        let want: Vec<(u64, u64)> = expected
            .windows
            .get(key)
            .map(|w| w.iter().map(|(s, c)| (*s, *c)).collect())
            .unwrap_or_default();
        let got = seen.get(key).cloned().unwrap_or_default();
        if want != got {
            problems.push(format!(
                "key {key:?}: windows (start, count) {got:?}, expected {want:?}"
            ));
        }
    }
    match problems.len() {
        0 => Ok(()),
        n => {
            let shown: Vec<String> = problems.into_iter().take(DIFFERENCES_SHOWN).collect();
            Err(format!("{n} window differences, first:\n{}", shown.join("\n")))
        }
    }
}

/// Why the late letters (the dead letters whose reason is `late`) are not
/// exactly the input's late lines, if they are not; `letters` are the
/// dead-letter file's lines, `<source>:<line>: late: ...`.
pub fn check_late_letters<'a>(input: &[u8], letters: impl Iterator<Item = &'a [u8]>) -> Result<(), String> {
    let expected = expected_windows(input).late_lines;
    let mut seen = BTreeSet::new();
    for letter in letters {
        let text = String::from_utf8_lossy(letter);
        let line = text
            .split_once(": ")
            .and_then(|(place, _)| place.rsplit_once(':'))
            .and_then(|(_, line)| line.parse::<u64>().ok())
            .ok_or_else(|| format!("a late letter names no line: {text:?}"))?;
        if !seen.insert(line) {
            return Err(format!("line {line} is dead-lettered as late twice"));
        }
    }
    if seen != expected {
        let lost: Vec<&u64> = expected.difference(&seen).take(DIFFERENCES_SHOWN).collect();
        let unexpected: Vec<&u64> = seen.difference(&expected).take(DIFFERENCES_SHOWN).collect();
        return Err(format!(
            "late letters differ from the late input lines: lost {lost:?}, unexpected {unexpected:?} (of {} expected)",
            expected.len()
        ));
    }
    Ok(())
}

/// Whether a dead letter's reason is `late`.
pub fn is_late_letter(letter: &[u8]) -> bool {
    let text = String::from_utf8_lossy(letter);
    text.split_once(": ")
        .is_some_and(|(_, rest)| rest.starts_with("late: "))
}

/// `<key> <start> <end> <count>` (the key may hold anything but spaces).
fn parse_window(line: &[u8]) -> Option<(String, u64, u64, u64)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut fields = text.rsplitn(4, ' ');
    let count = fields.next()?.parse().ok()?;
    let end_ms = fields.next()?.parse().ok()?;
    let start_ms = fields.next()?.parse().ok()?;
    Some((fields.next()?.to_string(), start_ms, end_ms, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oracle_counts_windows_and_names_late_lines() {
        let input = b"a 1000\nb 1099\na 1100\nbad line here\na 1050\na 1049\nb 1200\n";
        let expected = expected_windows(input);
        // After 1100 the watermark is 1050: 1050 is on time, 1049 is late.
        assert_eq!(expected.late_lines, BTreeSet::from([6]));
        assert_eq!(expected.windows["a"], BTreeMap::from([(1000, 2), (1100, 1)]));
        let right = b"a 1000 1100 2\nb 1000 1100 1\na 1100 1200 1\nb 1200 1300 1\n";
        assert!(check_windows(input, right).is_ok());
        let split = b"a 1000 1100 1\na 1000 1100 1\na 1100 1200 1\nb 1000 1100 1\nb 1200 1300 1\n";
        assert!(check_windows(input, split).unwrap_err().contains("key \"a\""));
        let reordered = b"a 1100 1200 1\na 1000 1100 2\nb 1000 1100 1\nb 1200 1300 1\n";
        assert!(
            check_windows(input, reordered).is_err(),
            "a key's windows in start order"
        );
        let letters: [&[u8]; 1] = [b"sim:6: late: event time 1049 ms is behind: \"\""];
        assert!(is_late_letter(letters[0]));
        assert!(check_late_letters(input, letters.into_iter()).is_ok());
        assert!(check_late_letters(input, std::iter::empty()).is_err());
        assert!(check_late_letters(input, letters.into_iter().chain(letters)).is_err());
    }
}
