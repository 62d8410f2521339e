//! `seq-window`: each key's last 4 values. Any loss, duplicate or reorder of a
//! key's inputs shows in its windows.

use crate::format::write_u64;
use crate::market_spread::parse_u64;
use crate::wordcount::for_each_word;
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
            let (key, value) = split_two_fields(line)?;
            Ok((SmallBytes::new(key), parse_u64(value, "value")?))
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

/// Exactly two whitespace-separated fields, as `str::split_whitespace`
/// splits them.
pub(crate) fn split_two_fields(line: Line<'_>) -> Result<(&[u8], &[u8]), Reject> {
    match split_at_one_space(line.as_bytes()) {
        Some(fields) => Ok(fields),
        None => split_two_words(line),
    }
}

/// The common line, `<key> <value>` in ASCII with one space and no other
/// white space, in one pass; `None` for any other line. Splitting was the
/// largest cost of seq-window's parse.
fn split_at_one_space(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut space = None;
    for (at, &b) in bytes.iter().enumerate() {
        // Non-ASCII may be Unicode white space; `\t`..=`\r` are white.
        if !b.is_ascii() || (b'\t'..=b'\r').contains(&b) || (b == b' ' && space.is_some()) {
            return None;
        }
        if b == b' ' {
            space = Some(at);
        }
    }
    let space = space?;
    let (key, value) = (&bytes[..space], &bytes[space + 1..]);
    (!key.is_empty() && !value.is_empty()).then_some((key, value))
}

/// Any line: its words, by `for_each_word`.
fn split_two_words(line: Line<'_>) -> Result<(&[u8], &[u8]), Reject> {
    let mut fields: [&[u8]; 2] = [&[], &[]];
    let mut count = 0;
    let not_two = || Reject::new("expected `<key> <value>`");
    for_each_word(line, |field| {
        *fields.get_mut(count).ok_or_else(not_two)? = field;
        count += 1;
        Ok(())
    })?;
    match (count, fields) {
        (2, [key, value]) => Ok((key, value)),
        _ => Err(not_two()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;

    fn split(text: &[u8]) -> Result<(String, String), Reject> {
        let chunk = Bytes::copy_from_slice(text);
        let (key, value) = split_two_fields(Line::new(&chunk, 0..chunk.len()))?;
        let show = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        Ok((show(key), show(value)))
    }

    #[test]
    fn two_fields_exactly() {
        let two = |k: &str, v: &str| Ok((k.to_string(), v.to_string()));
        assert_eq!(split(b"k 1"), two("k", "1"));
        assert_eq!(split(b"  k\t 1  "), two("k", "1"));
        assert_eq!(
            split("k\u{3000}1".as_bytes()),
            two("k", "1"),
            "unicode white space"
        );
        for bad in [&b"k"[..], b"k 1 2", b"", b"   "] {
            assert_eq!(split(bad).unwrap_err().reason, "expected `<key> <value>`");
        }
        assert!(split(b"k \xff1").unwrap_err().reason.contains("UTF-8"));
    }

    proptest::proptest! {
        #[test]
        fn the_one_space_path_splits_like_the_words(text in "[ka1 \t\u{b}\r\u{a0}\u{3000}é]{0,8}") {
            let chunk = Bytes::copy_from_slice(text.as_bytes());
            let line = Line::new(&chunk, 0..chunk.len());
            if let Some(fast) = split_at_one_space(text.as_bytes()) {
                proptest::prop_assert_eq!(Ok(fast), split_two_words(line));
            }
        }
    }
}
