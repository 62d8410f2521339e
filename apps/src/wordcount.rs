//! `wordcount`: running count per word (or final counts with `--final`).

use crate::format::write_u64;
use verity_core::{Dataflow, Line, SmallBytes, SourceSpec, Stream};

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
        .flat_map(|line: Line, words| {
            for word in line.text()?.split_whitespace() {
                words.push(SmallBytes::new(word.as_bytes()))?;
            }
            Ok(())
        })
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

pub fn format_count((word, count): &WordCount, buf: &mut Vec<u8>) {
    word.write_to(buf);
    buf.push(b' ');
    write_u64(buf, *count);
}
