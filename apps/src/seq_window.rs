//! `seq-window`: each key's last 4 values. Any loss, duplicate or reorder of a
//! key's inputs shows in its windows.

use crate::format::write_u64;
use crate::market_spread::parse_u64;
use verity_core::{Dataflow, Line, Reject, SmallBytes, SourceSpec, Stream};

pub const FORMAT_HELP: &str = "\
Input: `<key> <value>` per line, where each key's values are 1, 2, 3, ... in order
(value: u64 digits).
Output per input: `<key> <w1> <w2> <w3> <w4>`, the key's last 4 values oldest
first, 0 in empty slots (value 1 -> `k 0 0 0 1`, value 6 -> `k 3 4 5 6`).
Lines without exactly two fields, or with a non-numeric value, are dead-lettered.";

pub const WINDOW_SIZE: usize = 4;
pub type Window = [u64; WINDOW_SIZE];

pub fn dataflow(input: SourceSpec) -> Dataflow<SmallBytes, (SmallBytes, u64), Window, (SmallBytes, Window)> {
    Stream::from_source(input)
        .try_map(|line: Line| {
            let (key, value) = split_two_fields(line.text()?)?;
            Ok((
                SmallBytes::new(key.as_bytes()),
                parse_u64(value.as_bytes(), "value")?,
            ))
        })
        .key_by(|(key, _): &(SmallBytes, u64)| key.clone())
        .stateful(|window: &mut Window, _, msg, out| {
            let (key, value) = msg.data;
            window.copy_within(1.., 0);
            window[WINDOW_SIZE - 1] = value;
            out.emit((key, *window));
        })
        .sink(|(key, window), buf| {
            key.write_to(buf);
            for value in window {
                buf.push(b' ');
                write_u64(buf, *value);
            }
        })
}

/// Exactly two whitespace-separated fields.
fn split_two_fields(text: &str) -> Result<(&str, &str), Reject> {
    let mut fields = text.split_whitespace();
    match (fields.next(), fields.next(), fields.next()) {
        (Some(key), Some(value), None) => Ok((key, value)),
        _ => Err(Reject::new("expected `<key> <value>`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_fields_exactly() {
        assert_eq!(split_two_fields("k 1"), Ok(("k", "1")));
        assert_eq!(split_two_fields("  k\t 1  "), Ok(("k", "1")));
        assert!(split_two_fields("k").is_err());
        assert!(split_two_fields("k 1 2").is_err());
        assert!(split_two_fields("").is_err());
    }
}
