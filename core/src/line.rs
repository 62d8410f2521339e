//! Text lines sliced out of source chunks without copying.

use crate::ids::MsgId;
use bytes::Bytes;
use std::borrow::Cow;

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

/// One input line (without its `\n` and a trailing `\r`), sharing the buffer it
/// was read into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    bytes: Bytes,
}

impl Line {
    pub fn new(bytes: Bytes) -> Self {
        Line { bytes }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The line as UTF-8, or a reject naming the problem.
    pub fn text(&self) -> Result<&str, Reject> {
        std::str::from_utf8(&self.bytes)
            .map_err(|e| Reject::new(format!("invalid UTF-8 at byte {} of the line", e.valid_up_to())))
    }

    /// A zero-copy handle on a part of this line (`part` must point into it).
    pub fn share(&self, part: &[u8]) -> Bytes {
        self.bytes.slice_ref(part)
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

/// Splits a chunk of complete lines into `(line_bytes)` in order.
///
/// A chunk ends at a `\n` except the last chunk of a source, whose last line may
/// lack one. An empty chunk has no lines; `"a\n"` has one.
pub fn for_each_line(chunk: &Bytes, mut f: impl FnMut(Bytes)) {
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', chunk) {
        f(trim_cr(chunk.slice(start..end)));
        start = end + 1;
    }
    if start < chunk.len() {
        f(trim_cr(chunk.slice(start..)));
    }
}

fn trim_cr(mut line: Bytes) -> Bytes {
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    line
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
        let mut out = Vec::new();
        for_each_line(&Bytes::from_static(text.as_bytes()), |l| out.push(l));
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
        let line = Line::new(Bytes::from_static(b"ok \xff"));
        assert!(line.text().unwrap_err().reason.contains("byte 3"));
    }

    #[test]
    fn dead_letters_keep_a_bounded_copy() {
        let raw = Bytes::from(vec![b'x'; 10_000]);
        let dl = DeadLetter::new(MsgId::new(0, 1), "too long".into(), &raw);
        assert_eq!(dl.raw.len(), DEAD_LETTER_RAW_MAX_BYTES);
    }
}
