//! Splitting input and output text into numbered lines, the way the engine
//! reads them: `\n` ends a line, one trailing `\r` is dropped, and a last line
//! without `\n` still counts.

/// Calls `f(line_number, line)` for each line, numbered from 1.
pub fn for_each_line<'a>(text: &'a [u8], mut f: impl FnMut(u64, &'a [u8])) {
    let mut rest = text;
    let mut number = 0;
    while !rest.is_empty() {
        number += 1;
        let (line, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(end) => (&rest[..end], &rest[end + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        f(number, line.strip_suffix(b"\r").unwrap_or(line));
        rest = next;
    }
}

/// Feeds whole `\n`-terminated lines of `bytes` to `f`, carrying a line that
/// is cut at the end of `bytes` in `partial` until a later call completes it.
/// The streaming checkers (output, two streams, dead letters) read their
/// input in arbitrary pieces through this one splitter; each takes what is left
/// in `partial` at the end as a last line without `\n`.
pub fn feed_lines(partial: &mut Vec<u8>, mut bytes: &[u8], mut f: impl FnMut(&[u8])) {
    if !partial.is_empty() {
        let Some(end) = bytes.iter().position(|b| *b == b'\n') else {
            partial.extend_from_slice(bytes);
            return;
        };
        partial.extend_from_slice(&bytes[..end]);
        f(partial);
        partial.clear();
        bytes = &bytes[end + 1..];
    }
    while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
        f(&bytes[..end]);
        bytes = &bytes[end + 1..];
    }
    partial.extend_from_slice(bytes);
}

/// Reads numbered lines from a stream on demand, the way the engine numbers
/// them, holding only the current line.
pub struct LineReader<R> {
    input: R,
    buf: Vec<u8>,
    number: u64,
    done: bool,
}

impl<R: std::io::BufRead> LineReader<R> {
    pub fn new(input: R) -> Self {
        LineReader {
            input,
            buf: Vec::new(),
            number: 0,
            done: false,
        }
    }

    /// The next line and its number, or `None` at the end. An unreadable
    /// input ends like a short one: the lines never read then show up as
    /// lost, so a report cannot pass by accident.
    pub fn next_line(&mut self) -> Option<(u64, &[u8])> {
        if self.done {
            return None;
        }
        self.buf.clear();
        if self.input.read_until(b'\n', &mut self.buf).unwrap_or(0) == 0 {
            self.done = true;
            return None;
        }
        self.number += 1;
        let mut line = &self.buf[..];
        line = line.strip_suffix(b"\n").unwrap_or(line);
        line = line.strip_suffix(b"\r").unwrap_or(line);
        Some((self.number, line))
    }

    /// Lines read so far (the number of the last one).
    pub fn lines_read(&self) -> u64 {
        self.number
    }

    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_lines_gives_the_same_lines_however_the_bytes_are_cut() {
        let text = b"alpha\nbe\n\ngamma delta\nlast";
        for cut_a in 0..text.len() {
            for cut_b in cut_a..text.len() {
                let mut partial = Vec::new();
                let mut seen: Vec<Vec<u8>> = Vec::new();
                for piece in [&text[..cut_a], &text[cut_a..cut_b], &text[cut_b..]] {
                    feed_lines(&mut partial, piece, |line| seen.push(line.to_vec()));
                }
                let want: Vec<&[u8]> = vec![b"alpha", b"be", b"", b"gamma delta"];
                assert_eq!(seen, want, "cuts at {cut_a} and {cut_b}");
                assert_eq!(partial, b"last", "the unterminated last line stays in partial");
            }
        }
    }

    fn lines(text: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for_each_line(text, |n, line| out.push((n, line.to_vec())));
        out
    }

    #[test]
    fn reader_numbers_lines_like_for_each_line() {
        let text = b"a\r\n\nb";
        let mut reader = LineReader::new(&text[..]);
        let mut read = Vec::new();
        while let Some((n, line)) = reader.next_line() {
            read.push((n, line.to_vec()));
        }
        assert_eq!(read, lines(text));
        assert!(reader.is_done() && reader.lines_read() == 3);
        assert!(reader.next_line().is_none());
    }

    #[test]
    fn splits_like_the_engine() {
        assert!(lines(b"").is_empty());
        assert_eq!(lines(b"a\n"), vec![(1, b"a".to_vec())]);
        assert_eq!(
            lines(b"a\r\n\nb"),
            vec![(1, b"a".to_vec()), (2, vec![]), (3, b"b".to_vec())]
        );
        assert_eq!(lines(b"\n\n"), vec![(1, vec![]), (2, vec![])]);
    }
}
