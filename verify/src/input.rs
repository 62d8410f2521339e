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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for_each_line(text, |n, line| out.push((n, line.to_vec())));
        out
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
