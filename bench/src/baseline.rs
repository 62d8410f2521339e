//! Naive single-thread loops doing the same work as the engine's apps over the
//! same pre-loaded input: parse, update per-key state, format the output line.
//! They are what the engine must keep up with.

use rustc_hash::FxHashMap;
use verity_apps::format::write_u64;
use verity_apps::market_spread::{self, Book, Symbol};
use verity_apps::seq_window::{Window, WINDOW_SIZE};

/// Output is formatted into this much buffer, then dropped (a null sink).
const OUTPUT_BUFFER_BYTES: usize = 64 * 1024;

/// Returns the number of output lines.
pub fn wordcount(input: &[u8]) -> u64 {
    let mut counts: FxHashMap<String, u64> = FxHashMap::default();
    let mut output = Vec::with_capacity(OUTPUT_BUFFER_BYTES + 1024);
    let mut emitted = 0;
    for line in input.split(|b| *b == b'\n') {
        let Ok(text) = std::str::from_utf8(line) else {
            continue;
        };
        for word in text.split_whitespace() {
            let count = match counts.get_mut(word) {
                Some(count) => count,
                None => counts.entry(word.to_string()).or_insert(0),
            };
            *count += 1;
            output.extend_from_slice(word.as_bytes());
            output.push(b' ');
            write_u64(&mut output, *count);
            output.push(b'\n');
            emitted += 1;
        }
        drain_if_full(&mut output);
    }
    emitted
}

pub fn market_spread(input: &[u8]) -> u64 {
    let mut books: FxHashMap<Symbol, Book> = FxHashMap::default();
    let mut output = Vec::with_capacity(OUTPUT_BUFFER_BYTES + 1024);
    let mut emitted = 0;
    for line in input.split(|b| *b == b'\n') {
        let Ok(event) = market_spread::parse_event(line) else {
            continue;
        };
        let symbol = match &event {
            verity_core::Either::Left(q) => q.symbol,
            verity_core::Either::Right(o) => o.symbol,
        };
        if let Some(decision) = market_spread::apply(books.entry(symbol).or_default(), &event) {
            market_spread::format_decision(&decision, &mut output);
            output.push(b'\n');
            emitted += 1;
        }
        drain_if_full(&mut output);
    }
    emitted
}

/// seq-window: each key's last `WINDOW_SIZE` values, one line per input.
pub fn seq_window(input: &[u8]) -> u64 {
    let mut windows: FxHashMap<String, Window> = FxHashMap::default();
    let mut output = Vec::with_capacity(OUTPUT_BUFFER_BYTES + 1024);
    let mut emitted = 0;
    for line in input.split(|b| *b == b'\n') {
        let Ok(text) = std::str::from_utf8(line) else {
            continue;
        };
        let mut fields = text.split_whitespace();
        let (Some(key), Some(value), None) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let Ok(value) = market_spread::parse_u64(value.as_bytes(), "value") else {
            continue;
        };
        let window = match windows.get_mut(key) {
            Some(window) => window,
            None => windows.entry(key.to_string()).or_default(),
        };
        window.copy_within(1.., 0);
        window[WINDOW_SIZE - 1] = value;
        output.extend_from_slice(key.as_bytes());
        for value in window.iter() {
            output.push(b' ');
            write_u64(&mut output, *value);
        }
        output.push(b'\n');
        emitted += 1;
        drain_if_full(&mut output);
    }
    emitted
}

fn drain_if_full(output: &mut Vec<u8>) {
    if output.len() >= OUTPUT_BUFFER_BYTES {
        std::hint::black_box(&output);
        output.clear();
    }
}
