//! `window-count`: per key, how many records fall in each tumbling window of
//! event time: the windowed reference app (`verity_core::window`). Records
//! may come out of order by up to `MAX_DELAY_MS`; one further behind the
//! highest event time before it is late and dead-lettered.

use crate::market_spread::parse_u64;
use crate::seq_window::split_two_fields;
use verity_core::window::{Count, WindowResult, WindowSpec, Windows};
use verity_core::{Dataflow, Line, SmallBytes, SourceSpec, Stream};

/// The windows' size: `[k·size, (k+1)·size)` ms of event time.
pub const WINDOW_SIZE_MS: u64 = 100;
/// How far out of order the input may be (ms of event time).
pub const MAX_DELAY_MS: u64 = 50;

pub const FORMAT_HELP: &str = "\
Input: `<key> <event time ms>` per line (u64 digits), roughly in event-time
order: a line may come up to 50 ms of event time behind the highest before it.
Output: `<key> <start ms> <end ms> <count>` per key and 100 ms tumbling window
[start, end) holding records, once the watermark (highest event time so far
minus 50 ms) passes its end, and at the end of input for the rest. A record
more than 50 ms behind is late: dead-lettered with the reason `late: ...`.
Lines without exactly two fields, or with a non-numeric time, are dead-lettered.";

/// A window's count for a key.
pub type WindowCount = WindowResult<SmallBytes, u64>;

pub fn dataflow(input: SourceSpec) -> Dataflow<SmallBytes, u64, Windows<u64>, WindowCount> {
    Stream::from_source(input)
        .try_map(|line: Line| {
            let (key, at_ms) = split_two_fields(line)?;
            Ok((SmallBytes::new(key), parse_u64(at_ms, "event time")?))
        })
        .key_split(|(key, at_ms): (SmallBytes, u64)| (key, at_ms))
        .event_time(|at_ms: &u64| *at_ms, MAX_DELAY_MS)
        .window(WindowSpec::tumbling(WINDOW_SIZE_MS), Count)
        .sink(format_window)
}

pub fn format_window(window: &WindowCount, buf: &mut Vec<u8>) {
    use crate::format::write_u64;
    window.key.write_to(buf);
    for n in [window.start_ms, window.end_ms, window.value] {
        buf.push(b' ');
        write_u64(buf, n);
    }
}
