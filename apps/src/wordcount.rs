//! `wordcount`: running count per word (or final counts with `--final`).

use crate::format::write_u64;
use verity_core::{Dataflow, Line, Reject, SmallBytes, SourceSpec, Stream};

pub const FORMAT_HELP: &str = "\
Input: UTF-8 text. Words are maximal runs of non-whitespace (Rust
`split_whitespace`), with no other normalisation.
Output: one line `<word> <count>` per word occurrence, count being that word's
running count (1, 2, 3, ...); per word the counts appear in order.
With --final: instead one line `<word> <count>` per distinct word at the end of
input. A line that is not valid UTF-8 is dead-lettered.";

/// Output record: a word and its count.
pub type WordCount = (SmallBytes, u64);

pub fn dataflow(input: SourceSpec, final_counts: bool) -> Dataflow<SmallBytes, (), u64, WordCount> {
    let counted = Stream::from_source(input)
        .flat_map(|line: Line, words| for_each_word(line, |word| words.push(SmallBytes::new(word))))
        .key_split(|word: SmallBytes| (word, ()))
        .stateful(move |count: &mut u64, word, _, out| {
            *count += 1;
            if !final_counts {
                out.emit((word.clone(), *count));
            }
        });
    let counted = if final_counts {
        counted.on_end(|word, count, out| out.emit((word.clone(), *count)))
    } else {
        counted
    };
    counted.sink(format_count)
}

/// Calls `f` with each word of `line`, exactly as `str::split_whitespace`
/// splits it; a line that is not valid UTF-8 is rejected before any word.
///
/// Why not `split_whitespace` alone: it decodes every char to test the Unicode
/// White_Space property, the largest single cost of wordcount. Most text is
/// ASCII, where White_Space is exactly space and `\t` `\n` `\x0B` `\x0C` `\r`,
/// so an all-ASCII line is split on those bytes; any other line takes the std path.
pub fn for_each_word<'a>(
    line: Line<'a>,
    mut f: impl FnMut(&'a [u8]) -> Result<(), Reject>,
) -> Result<(), Reject> {
    let bytes = line.as_bytes();
    if !bytes.is_ascii() {
        return line
            .text()?
            .split_whitespace()
            .try_for_each(|word| f(word.as_bytes()));
    }
    let is_space = |b: u8| b == b' ' || (b'\t'..=b'\r').contains(&b);
    let mut at = 0;
    while at < bytes.len() {
        while at < bytes.len() && is_space(bytes[at]) {
            at += 1;
        }
        let start = at;
        while at < bytes.len() && !is_space(bytes[at]) {
            at += 1;
        }
        if at > start {
            f(&bytes[start..at])?;
        }
    }
    Ok(())
}

pub fn format_count((word, count): &WordCount, buf: &mut Vec<u8>) {
    word.write_to(buf);
    buf.push(b' ');
    write_u64(buf, *count);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn words_of(text: &[u8]) -> Result<Vec<Vec<u8>>, Reject> {
        let chunk = Bytes::copy_from_slice(text);
        let mut words = Vec::new();
        for_each_word(Line::new(&chunk, 0..chunk.len()), |w| {
            words.push(w.to_vec());
            Ok(())
        })?;
        Ok(words)
    }

    fn std_words(text: &str) -> Vec<Vec<u8>> {
        text.split_whitespace().map(|w| w.as_bytes().to_vec()).collect()
    }

    proptest! {
        #[test]
        fn splits_like_split_whitespace(text in "[ -~\t\x0b\x0c\r\x00-\x1f\u{85}\u{a0}\u{2003}\u{3000}é日a]{0,40}") {
            prop_assert_eq!(words_of(text.as_bytes()).unwrap(), std_words(&text));
        }

        #[test]
        fn every_ascii_byte_splits_like_split_whitespace(bytes in proptest::collection::vec(0u8..128, 0..40)) {
            let text = String::from_utf8(bytes.clone()).unwrap();
            prop_assert_eq!(words_of(&bytes).unwrap(), std_words(&text));
        }
    }

    #[test]
    fn invalid_utf8_is_rejected_before_any_word() {
        let mut seen = 0;
        let chunk = Bytes::from_static(b"good words \xff bad");
        let result = for_each_word(Line::new(&chunk, 0..chunk.len()), |_| {
            seen += 1;
            Ok(())
        });
        assert!(result.is_err());
        assert_eq!(seen, 0);
    }
}
