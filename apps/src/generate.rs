//! Built-in input generators, one per app, deterministic for a seed: the engine
//! runs with no input files at all, and a test can regenerate the same input.

use crate::format::{write_i64, write_price, write_u64};
use crate::AppName;
use verity_core::small::SMALL_INLINE_MAX_BYTES;
use verity_core::{LineGenerator, Rng, SplitMix64};

const WORDCOUNT_VOCABULARY_SIZE: u64 = 5_000;
const WORDS_PER_LINE_MAX: u64 = 10;
const MARKET_SYMBOLS: u64 = 500;
const SEQ_WINDOW_KEYS: usize = 1_000;
/// Lines (per mille) that are malformed for the app: empty, not UTF-8, bad
/// numbers, wrong field counts. Bad input must be dead-lettered, never crash
/// or vanish, so every generated input has some.
const MALFORMED_PER_MILLE: u64 = 15;
/// Lines (per mille) far over any line-length bound a test sets (the
/// simulator's BUGGIFY bound is 4 KiB); they are malformed as well.
const OVERLONG_PER_MILLE: u64 = 1;
const OVERLONG_BYTES_MIN: u64 = 5_000;
/// Lines (per mille) whose keys or words come from the special classes:
/// sizes around the inline bound of `SmallBytes`, far longer, unicode.
const SPECIAL_KEYS_PER_MILLE: u64 = 60;
/// Share (per mille) of keyed lines that go to the few hot keys.
const HOT_KEYS_PER_MILLE: u64 = 200;
const HOT_KEYS: u64 = 4;
/// Key lengths that matter to `SmallBytes` (inline up to 23 bytes), and far longer.
const KEY_SIZES_BYTES: [usize; 6] = [
    SMALL_INLINE_MAX_BYTES - 1,
    SMALL_INLINE_MAX_BYTES,
    SMALL_INLINE_MAX_BYTES + 1,
    SMALL_INLINE_MAX_BYTES + 2,
    64,
    200,
];

/// A generator of `lines` lines of `app` input from `seed`.
pub fn generator(app: AppName, lines: u64, seed: u64) -> Box<dyn LineGenerator> {
    Box::new(generator_shape(app, lines, seed))
}

/// Like `generator`, but only well-formed lines (`verity generate
/// --well-formed`: for tests that plant their own bad lines).
pub fn well_formed_generator(app: AppName, lines: u64, seed: u64) -> Box<dyn LineGenerator> {
    let mut generator = generator_shape(app, lines, seed);
    generator.malformed = false;
    Box::new(generator)
}

fn generator_shape(app: AppName, lines: u64, seed: u64) -> Generator {
    let rng = SplitMix64::new(seed);
    let shape: Box<dyn LineShape> = match app {
        AppName::Doubler => Box::new(Integers),
        AppName::Wordcount => Box::new(Text),
        AppName::MarketSpread => Box::new(Market { next_order_id: 1 }),
        AppName::SeqWindow => Box::new(Sequences {
            next: vec![1; SEQ_WINDOW_KEYS],
        }),
        AppName::WindowCount => Box::new(TimedEvents {
            clock_ms: EVENT_TIME_BASE_MS,
        }),
    };
    Generator {
        rng,
        shape,
        lines_left: lines,
        malformed: true,
    }
}

/// Like `generate_all`, but only well-formed lines ending in `\n` (the key
/// classes stay): for benchmarks, whose naive baselines split on `\n` only
/// and whose runs should not measure the dead-letter writer.
pub fn generate_well_formed(app: AppName, lines: u64, seed: u64) -> Vec<u8> {
    let mut generator = well_formed_generator(app, lines, seed);
    let mut out = Vec::new();
    while generator.write_lines(&mut out, 4096) > 0 {}
    out
}

/// Writes a whole generated input into one buffer (tests, benchmarks).
pub fn generate_all(app: AppName, lines: u64, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut generator = generator(app, lines, seed);
    while generator.write_lines(&mut out, 4096) > 0 {}
    out
}

/// market-spread input as two streams, quotes and orders (malformed lines go
/// to either), for `--quotes`/`--orders` runs: `lines` lines in all.
pub fn generate_quotes_and_orders(lines: u64, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mixed = generate_all(AppName::MarketSpread, lines, seed);
    let mut rng = SplitMix64::new(seed ^ SPLIT_SEED_SALT);
    let (mut quotes, mut orders) = (Vec::new(), Vec::new());
    for line in mixed.split_inclusive(|b| *b == b'\n') {
        let to_quotes = match line {
            [b'Q', b',', ..] => true,
            [b'O', b',', ..] => false,
            _ => rng.chance(1, 2),
        };
        if to_quotes { &mut quotes } else { &mut orders }.extend_from_slice(line);
    }
    (quotes, orders)
}

/// Keeps the split's choices apart from the lines' own randomness.
const SPLIT_SEED_SALT: u64 = 0x5EED_5B11_7000_0002;

/// One app's line format.
trait LineShape: Send {
    fn write_line(&mut self, rng: &mut SplitMix64, out: &mut Vec<u8>);
    /// A line the app must dead-letter (it changes no state of the shape).
    fn write_malformed(&mut self, rng: &mut SplitMix64, out: &mut Vec<u8>);
}

/// Malformed for every app: not UTF-8 (wordcount's only malformed class).
fn write_not_utf8(rng: &mut SplitMix64, out: &mut Vec<u8>) {
    const BAD: [&[u8]; 4] = [b"\xff", b"caf\xc3", b"\xc0\xaf", b"ok \xed\xa0\x80 surrogate"];
    out.extend_from_slice(BAD[rng.below(BAD.len() as u64) as usize]);
}

/// A line longer than any bound a test sets, malformed for every app.
fn write_overlong(rng: &mut SplitMix64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"\xfe overlong ");
    let len = OVERLONG_BYTES_MIN + rng.below(OVERLONG_BYTES_MIN);
    out.extend((0..len).map(|i| b'a' + (i % 26) as u8));
}

/// A key of one of the special classes (sizes around `SmallBytes`'s inline
/// bound, far longer, unicode), unique for `index` and without whitespace.
fn write_special_key(out: &mut Vec<u8>, index: u64) {
    let start = out.len();
    let class = index % (KEY_SIZES_BYTES.len() as u64 + 2);
    match class as usize {
        size if size < KEY_SIZES_BYTES.len() => {
            write_word(out, index);
            let len = KEY_SIZES_BYTES[size];
            let filler = b"_abcdefghijklmnopqrstuvwxyz0123456789";
            let mut i = 0;
            while out.len() - start < len {
                out.push(filler[i % filler.len()]);
                i += 1;
            }
            out.truncate(start + len.max(1));
        }
        size if size == KEY_SIZES_BYTES.len() => {
            // 12 two-byte chars: exactly 24 bytes, one past the inline bound.
            out.extend_from_slice("éèêëàâäôöûüç".as_bytes());
            write_word(out, index);
        }
        _ => {
            out.extend_from_slice("日本語ключ🦀".as_bytes());
            write_word(out, index);
        }
    }
}

struct Generator {
    rng: SplitMix64,
    shape: Box<dyn LineShape>,
    lines_left: u64,
    /// Malformed, over-long and CRLF lines too.
    malformed: bool,
}

impl LineGenerator for Generator {
    fn write_lines(&mut self, out: &mut Vec<u8>, lines_max: usize) -> usize {
        let lines = self.lines_left.min(lines_max as u64);
        for _ in 0..lines {
            let roll = if self.malformed {
                self.rng.below(1000)
            } else {
                1000
            };
            if roll < OVERLONG_PER_MILLE {
                write_overlong(&mut self.rng, out);
            } else if roll < OVERLONG_PER_MILLE + MALFORMED_PER_MILLE {
                match self.rng.below(4) {
                    0 => {} // an empty line
                    1 => write_not_utf8(&mut self.rng, out),
                    _ => self.shape.write_malformed(&mut self.rng, out),
                }
            } else {
                self.shape.write_line(&mut self.rng, out);
            }
            // Now and then a CRLF line end, which readers strip.
            if self.malformed && self.rng.chance(1, 200) {
                out.push(b'\r');
            }
            out.push(b'\n');
        }
        self.lines_left -= lines;
        lines as usize
    }
}

struct Integers;

impl LineShape for Integers {
    fn write_line(&mut self, rng: &mut SplitMix64, out: &mut Vec<u8>) {
        // Mostly small numbers, sometimes near the i64 edge (which must double fine).
        let value = if rng.chance(1, 100) {
            (rng.next_u64() >> 2) as i64 * if rng.chance(1, 2) { 1 } else { -1 }
        } else {
            rng.below(2_000_000_001) as i64 - 1_000_000_000
        };
        // Spaces and tabs around the number are allowed.
        match rng.below(50) {
            0 => out.push(b' '),
            1 => out.push(b'\t'),
            _ => {}
        }
        if value >= 0 && rng.chance(1, 100) {
            out.push(b'+');
        }
        write_i64(out, value);
        if rng.chance(1, 50) {
            out.extend_from_slice(b" \t");
        }
    }

    fn write_malformed(&mut self, rng: &mut SplitMix64, out: &mut Vec<u8>) {
        const BAD: [&[u8]; 7] = [
            b"12a",
            b"1.5",
            b"--3",
            b"9223372036854775808",
            b"4611686018427387904",
            b"1 2",
            b" \t ",
        ];
        out.extend_from_slice(BAD[rng.below(BAD.len() as u64) as usize]);
    }
}

struct Text;

impl LineShape for Text {
    fn write_line(&mut self, rng: &mut SplitMix64, out: &mut Vec<u8>) {
        let words = 1 + rng.below(WORDS_PER_LINE_MAX);
        if rng.chance(1, 50) {
            write_space(rng, out);
        }
        for i in 0..words {
            if i > 0 {
                write_space(rng, out);
            }
            // Skewed towards low ranks, like real text.
            let ceiling = 1 + rng.below(WORDCOUNT_VOCABULARY_SIZE);
            let rank = rng.below(ceiling);
            if rng.below(1000) < SPECIAL_KEYS_PER_MILLE {
                write_special_key(out, rank);
            } else {
                write_word(out, rank);
            }
        }
        if rng.chance(1, 50) {
            write_space(rng, out);
        }
    }

    fn write_malformed(&mut self, rng: &mut SplitMix64, out: &mut Vec<u8>) {
        out.extend_from_slice(b"words then ");
        write_not_utf8(rng, out);
    }
}

/// Whitespace between words: mostly a space, sometimes runs, tabs, other
/// ASCII and unicode white space (all of which split words).
fn write_space(rng: &mut SplitMix64, out: &mut Vec<u8>) {
    const SPACES: [&str; 8] = [" ", "  ", "\t", " \t ", "\x0b", "\x0c", "\u{3000}", "\u{a0}"];
    let space = if rng.chance(9, 10) {
        " "
    } else {
        SPACES[rng.below(SPACES.len() as u64) as usize]
    };
    out.extend_from_slice(space.as_bytes());
}

/// A pronounceable word for a vocabulary rank (distinct per rank).
pub fn write_word(out: &mut Vec<u8>, mut rank: u64) {
    const CONSONANTS: &[u8] = b"bcdfghklmnprstvz";
    const VOWELS: &[u8] = b"aeiou";
    loop {
        out.push(CONSONANTS[(rank % 16) as usize]);
        rank /= 16;
        out.push(VOWELS[(rank % 5) as usize]);
        rank /= 5;
        if rank == 0 {
            break;
        }
    }
}

struct Market {
    next_order_id: u64,
}

/// One market-spread line for `symbol` (named by `write_symbol`): a quote
/// with chance `quote_chance` (numerator, denominator) and a spread of
/// 1..=`spread_max_units` around the symbol's mid, else an order numbered
/// `next_order_id` (then advanced).
pub fn write_market_event(
    out: &mut Vec<u8>,
    rng: &mut SplitMix64,
    symbol: u64,
    write_symbol: fn(&mut Vec<u8>, u64),
    quote_chance: (u64, u64),
    spread_max_units: u64,
    next_order_id: &mut u64,
) {
    let mid = mid_units(symbol) + rng.below(200);
    if rng.chance(quote_chance.0, quote_chance.1) {
        let spread = 1 + rng.below(spread_max_units);
        out.extend_from_slice(b"Q,");
        write_symbol(out, symbol);
        out.push(b',');
        write_price(out, mid - spread / 2);
        out.push(b',');
        write_price(out, mid - spread / 2 + spread);
    } else {
        out.extend_from_slice(b"O,");
        write_u64(out, *next_order_id);
        *next_order_id += 1;
        out.push(b',');
        write_symbol(out, symbol);
        out.extend_from_slice(if rng.chance(1, 2) { b",B," } else { b",S," });
        write_u64(out, 1 + rng.below(1_000));
        out.push(b',');
        write_price(out, mid);
    }
}

/// The mid price (in units) a symbol trades around: each its own level;
/// every tenth is penny-priced, so the 5%-of-mid rule decides there rather
/// than the 0.05 one.
pub fn mid_units(symbol: u64) -> u64 {
    match symbol % 10 {
        0 => 3_000 + symbol * 7,
        _ => 100_000 + symbol * 1_234,
    }
}

impl LineShape for Market {
    fn write_line(&mut self, rng: &mut SplitMix64, out: &mut Vec<u8>) {
        let symbol = if rng.below(1000) < HOT_KEYS_PER_MILLE {
            rng.below(HOT_KEYS)
        } else {
            rng.below(MARKET_SYMBOLS)
        };
        write_market_event(
            out,
            rng,
            symbol,
            write_symbol,
            (1, 3),
            800,
            &mut self.next_order_id,
        );
    }

    fn write_malformed(&mut self, rng: &mut SplitMix64, out: &mut Vec<u8>) {
        const BAD: [&[u8]; 10] = [
            b"Q,S001,1.23456,2",
            b"Q,S001,1,2,3",
            b"Q,S001,1",
            b"Q,s001,1,2",
            b"Q,TOOLONGSY,1,2",
            b"O,1,S001,X,1,1",
            b"O,-1,S001,B,1,1",
            b"O,18446744073709551616,S001,B,1,1",
            b"O,1,S001,B,1",
            b"X,1",
        ];
        out.extend_from_slice(BAD[rng.below(BAD.len() as u64) as usize]);
    }
}

/// Symbols are mostly 4 chars; some take the limits (1 and 8 chars, a dot).
fn write_symbol(out: &mut Vec<u8>, symbol: u64) {
    let digit = |n: u64| b'0' + (n % 10) as u8;
    match symbol % 100 {
        7 => out.push(b'A' + (symbol / 100 % 26) as u8),
        11 => {
            out.extend_from_slice(b"LONG.");
            out.extend([digit(symbol / 100), digit(symbol / 10), digit(symbol)]);
        }
        _ => {
            out.push(b'S');
            out.extend([digit(symbol / 100), digit(symbol / 10), digit(symbol)]);
        }
    }
}

struct Sequences {
    next: Vec<u64>,
}

impl LineShape for Sequences {
    fn write_line(&mut self, rng: &mut SplitMix64, out: &mut Vec<u8>) {
        let key = if rng.below(1000) < HOT_KEYS_PER_MILLE {
            rng.below(HOT_KEYS)
        } else {
            rng.below(self.next.len() as u64)
        } as usize;
        if rng.chance(1, 50) {
            out.push(b'\t');
        }
        write_seq_key(out, key as u64);
        out.extend_from_slice(if rng.chance(1, 50) { b" \t " } else { b" " });
        write_u64(out, self.next[key]);
        self.next[key] += 1;
        if rng.chance(1, 50) {
            out.push(b' ');
        }
    }

    fn write_malformed(&mut self, rng: &mut SplitMix64, out: &mut Vec<u8>) {
        let key = rng.below(self.next.len() as u64);
        match rng.below(4) {
            0 => write_seq_key(out, key),
            1 => {
                write_seq_key(out, key);
                out.extend_from_slice(b" 1 2");
            }
            2 => {
                write_seq_key(out, key);
                out.extend_from_slice(b" x1");
            }
            _ => {
                write_seq_key(out, key);
                out.extend_from_slice(b" -1");
            }
        }
    }
}

/// window-count's first event time: far from 0, so no window or watermark
/// arithmetic rests on saturating at 0.
const EVENT_TIME_BASE_MS: u64 = 1_700_000_000_000;
const WINDOW_COUNT_KEYS: u64 = 200;
/// window-count lines (per mille) that come later than the app's bounded
/// out-of-orderness allows: most of them are late.
const BEYOND_DELAY_PER_MILLE: u64 = 20;

/// window-count's `<key> <event time ms>` lines: time moves on by 0–2 ms a
/// line, and each line lags it by up to the app's delay (a few by more).
struct TimedEvents {
    clock_ms: u64,
}

impl LineShape for TimedEvents {
    fn write_line(&mut self, rng: &mut SplitMix64, out: &mut Vec<u8>) {
        use crate::window_count::MAX_DELAY_MS;
        self.clock_ms += rng.below(3);
        let key = if rng.below(1000) < HOT_KEYS_PER_MILLE {
            rng.below(HOT_KEYS)
        } else {
            rng.below(WINDOW_COUNT_KEYS)
        };
        let lag_ms = match rng.below(1000) < BEYOND_DELAY_PER_MILLE {
            true => MAX_DELAY_MS + 1 + rng.below(2 * MAX_DELAY_MS),
            false => rng.below(MAX_DELAY_MS + 1),
        };
        write_seq_key(out, key);
        out.push(b' ');
        write_u64(out, self.clock_ms - lag_ms);
    }

    fn write_malformed(&mut self, rng: &mut SplitMix64, out: &mut Vec<u8>) {
        // The same line format as seq-window's.
        Sequences { next: vec![1] }.write_malformed(rng, out)
    }
}

/// Key `k<n>`, or for some keys one of the special classes.
fn write_seq_key(out: &mut Vec<u8>, key: u64) {
    if key % 1000 < SPECIAL_KEYS_PER_MILLE {
        write_special_key(out, key);
    } else {
        out.push(b'k');
        write_u64(out, key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_input_and_exact_line_counts() {
        for app in AppName::ALL {
            let a = generate_all(app, 1000, 7);
            assert_eq!(a, generate_all(app, 1000, 7), "{app:?}");
            assert_ne!(a, generate_all(app, 1000, 8), "{app:?}");
            assert_eq!(a.iter().filter(|b| **b == b'\n').count(), 1000, "{app:?}");
        }
        assert!(generate_all(AppName::Doubler, 0, 1).is_empty());
    }

    fn lines(input: &[u8]) -> Vec<&[u8]> {
        input
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .collect()
    }

    #[test]
    fn most_generated_lines_parse_and_some_are_malformed() {
        let market = generate_all(AppName::MarketSpread, 4000, 3);
        let bad = lines(&market)
            .iter()
            .filter(|l| crate::market_spread::parse_event(l).is_err())
            .count();
        assert!((10..200).contains(&bad), "{bad} malformed of 4000");
        let ints = generate_all(AppName::Doubler, 4000, 3);
        let bad = lines(&ints)
            .iter()
            .filter(|l| crate::doubler::double(l).is_err())
            .count();
        assert!((10..200).contains(&bad), "{bad} malformed of 4000");
    }

    #[test]
    fn keys_cover_the_small_bytes_boundaries_unicode_and_whitespace() {
        let text = generate_all(AppName::Wordcount, 20_000, 5);
        let all = lines(&text);
        let words: Vec<&str> = all
            .iter()
            .filter_map(|l| std::str::from_utf8(l).ok())
            .flat_map(str::split_whitespace)
            .collect();
        for size in KEY_SIZES_BYTES {
            assert!(words.iter().any(|w| w.len() == size), "no word of {size} bytes");
        }
        assert!(words.iter().any(|w| !w.is_ascii()), "no unicode word");
        assert!(all.iter().any(|l| l.is_empty()), "no empty line");
        assert!(
            all.iter().any(|l| std::str::from_utf8(l).is_err()),
            "no invalid UTF-8"
        );
        assert!(
            all.iter().any(|l| l.len() > OVERLONG_BYTES_MIN as usize),
            "no over-long line"
        );
        assert!(all.iter().any(|l| l.contains(&b'\t')), "no tab");
        let seq = generate_all(AppName::SeqWindow, 20_000, 5);
        let keys: Vec<&[u8]> = lines(&seq)
            .iter()
            .filter_map(|l| l.split(|b| *b == b' ').next())
            .collect();
        for size in KEY_SIZES_BYTES {
            assert!(
                keys.iter().any(|k| k.len() == size),
                "no seq-window key of {size} bytes"
            );
        }
    }

    #[test]
    fn well_formed_input_has_no_malformed_lines() {
        let market = generate_well_formed(AppName::MarketSpread, 4000, 3);
        assert!(lines(&market[..market.len() - 1])
            .iter()
            .all(|l| crate::market_spread::parse_event(l).is_ok()));
        assert!(!market.contains(&b'\r'));
    }

    #[test]
    fn two_streams_split_quotes_from_orders() {
        let (quotes, orders) = generate_quotes_and_orders(3000, 9);
        assert_eq!(
            (quotes.len() + orders.len()),
            generate_all(AppName::MarketSpread, 3000, 9).len()
        );
        assert!(lines(&quotes).iter().all(|l| !l.starts_with(b"O,")));
        assert!(lines(&orders).iter().all(|l| !l.starts_with(b"Q,")));
    }
}
