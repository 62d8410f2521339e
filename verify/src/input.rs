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
