//! Text lines sliced out of source chunks without copying.

use crate::ids::MsgId;
use bytes::Bytes;
use std::borrow::Cow;
use std::ops::Range;

/// Why a record was rejected: it goes to the dead-letter file with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: Cow<'static, str>,
}

impl Reject {
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Reject {
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// One input line (without its `\n` and a trailing `\r`), borrowed from the
/// chunk it was read into: handing a line to a step costs nothing, not even a
/// reference-count bump (which two cores parsing chunks of one buffer would fight
/// over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    chunk: &'a Bytes,
    bytes: &'a [u8],
}

impl<'a> Line<'a> {
    /// `range` must lie within `chunk`.
    pub fn new(chunk: &'a Bytes, range: Range<usize>) -> Self {
        Line {
            chunk,
            bytes: &chunk[range],
        }
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The line as UTF-8, or a reject naming the problem.
    pub fn text(&self) -> Result<&'a str, Reject> {
        std::str::from_utf8(self.bytes)
            .map_err(|e| Reject::new(format!("invalid UTF-8 at byte {} of the line", e.valid_up_to())))
    }

    /// A zero-copy handle on a part of this line (`part` must point into it) that
    /// may outlive the line.
    pub fn share(&self, part: &[u8]) -> Bytes {
        self.chunk.slice_ref(part)
    }
}

/// Calls `f` with the byte range of each line of a chunk, in order (without the
/// `\n` and a trailing `\r`).
///
/// A chunk ends at a `\n` except the last chunk of a source, whose last line may
/// lack one. An empty chunk has no lines; `"a\n"` has one.
pub fn for_each_line(chunk: &[u8], mut f: impl FnMut(Range<usize>)) {
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', chunk) {
        f(start..trim_cr(chunk, start, end));
        start = end + 1;
    }
    if start < chunk.len() {
        f(start..trim_cr(chunk, start, chunk.len()));
    }
}

fn trim_cr(chunk: &[u8], start: usize, end: usize) -> usize {
    if end > start && chunk[end - 1] == b'\r' {
        end - 1
    } else {
        end
    }
}

/// What the dead-letter file records about one rejected input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: MsgId,
    pub reason: Cow<'static, str>,
    /// The start of the raw record (bounded by `DEAD_LETTER_RAW_MAX_BYTES`).
    pub raw: Bytes,
}

/// How much of a rejected record the dead-letter file keeps.
pub const DEAD_LETTER_RAW_MAX_BYTES: usize = 256;

impl DeadLetter {
    pub fn new(id: MsgId, reason: Cow<'static, str>, raw: &Bytes) -> Self {
        let keep = raw.len().min(DEAD_LETTER_RAW_MAX_BYTES);
        DeadLetter {
            id,
            reason,
            raw: raw.slice(..keep).to_vec().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &'static str) -> Vec<Bytes> {
        let chunk = Bytes::from_static(text.as_bytes());
        let mut out = Vec::new();
        for_each_line(&chunk, |range| out.push(chunk.slice(range)));
        out
    }

    #[test]
    fn splits_lines_and_strips_carriage_returns() {
        assert_eq!(lines(""), Vec::<Bytes>::new());
        assert_eq!(lines("a\n"), vec![Bytes::from_static(b"a")]);
        assert_eq!(
            lines("a\r\n\nb"),
            vec![
                Bytes::from_static(b"a"),
                Bytes::from_static(b""),
                Bytes::from_static(b"b")
            ]
        );
    }

    #[test]
    fn invalid_utf8_is_a_reject() {
        let chunk = Bytes::from_static(b"ok \xff\n");
        let line = Line::new(&chunk, 0..4);
        assert!(line.text().unwrap_err().reason.contains("byte 3"));
        assert_eq!(line.share(&line.as_bytes()[..2]), Bytes::from_static(b"ok"));
    }

    #[test]
    fn dead_letters_keep_a_bounded_copy() {
        let raw = Bytes::from(vec![b'x'; 10_000]);
        let dl = DeadLetter::new(MsgId::new(0, 1), "too long".into(), &raw);
        assert_eq!(dl.raw.len(), DEAD_LETTER_RAW_MAX_BYTES);
    }
}
