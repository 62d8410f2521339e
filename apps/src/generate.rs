//! Built-in input generators, one per app, deterministic for a seed: the engine
//! runs with no input files at all, and a test can regenerate the same input.

use crate::format::{write_i64, write_price, write_u64};
use crate::AppName;
use verity_core::{LineGenerator, Rng, SplitMix64};

const WORDCOUNT_VOCABULARY_SIZE: u64 = 5_000;
const WORDS_PER_LINE_MAX: u64 = 10;
const MARKET_SYMBOLS: u64 = 500;
const SEQ_WINDOW_KEYS: usize = 1_000;

/// A generator of `lines` lines of `app` input from `seed`.
pub fn generator(app: AppName, lines: u64, seed: u64) -> Box<dyn LineGenerator> {
    let rng = SplitMix64::new(seed);
    let shape: Box<dyn LineShape> = match app {
        AppName::Doubler => Box::new(Integers),
        AppName::Wordcount => Box::new(Text),
        AppName::MarketSpread => Box::new(Market { next_order_id: 1 }),
        AppName::SeqWindow => Box::new(Sequences {
            next: vec![1; SEQ_WINDOW_KEYS],
        }),
    };
    Box::new(Generator {
        rng,
        shape,
        lines_left: lines,
    })
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
}

struct Generator {
    rng: SplitMix64,
    shape: Box<dyn LineShape>,
    lines_left: u64,
}

impl LineGenerator for Generator {
    fn write_lines(&mut self, out: &mut Vec<u8>, lines_max: usize) -> usize {
        let lines = self.lines_left.min(lines_max as u64);
        for _ in 0..lines {
            self.shape.write_line(&mut self.rng, out);
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
        write_i64(out, value);
    }
}

struct Text;

impl LineShape for Text {
    fn write_line(&mut self, rng: &mut SplitMix64, out: &mut Vec<u8>) {
        let words = 1 + rng.below(WORDS_PER_LINE_MAX);
        for i in 0..words {
            if i > 0 {
                out.push(b' ');
            }
            // Skewed towards low ranks, like real text.
            let ceiling = 1 + rng.below(WORDCOUNT_VOCABULARY_SIZE);
            let rank = rng.below(ceiling);
            write_word(out, rank);
        }
    }
}

/// A pronounceable word for a vocabulary rank.
fn write_word(out: &mut Vec<u8>, mut rank: u64) {
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

impl Market {
    /// Each symbol trades around its own price level; a few are penny-priced so
    /// the 5% rule matters, not only the 0.05 one.
    fn mid_units(symbol: u64) -> u64 {
        match symbol % 10 {
            0 => 3_000 + symbol * 7,
            _ => 100_000 + symbol * 1_234,
        }
    }
}

impl LineShape for Market {
    fn write_line(&mut self, rng: &mut SplitMix64, out: &mut Vec<u8>) {
        let symbol = rng.below(MARKET_SYMBOLS);
        let mid = Self::mid_units(symbol) + rng.below(200);
        if rng.chance(1, 3) {
            let spread = 1 + rng.below(800);
            out.extend_from_slice(b"Q,");
            write_symbol(out, symbol);
            out.push(b',');
            write_price(out, mid - spread / 2);
            out.push(b',');
            write_price(out, mid - spread / 2 + spread);
        } else {
            out.extend_from_slice(b"O,");
            write_u64(out, self.next_order_id);
            self.next_order_id += 1;
            out.push(b',');
            write_symbol(out, symbol);
            out.extend_from_slice(if rng.chance(1, 2) { b",B," } else { b",S," });
            write_u64(out, 1 + rng.below(1_000));
            out.push(b',');
            write_price(out, mid);
        }
    }
}

fn write_symbol(out: &mut Vec<u8>, symbol: u64) {
    out.push(b'S');
    let digits = [symbol / 100 % 10, symbol / 10 % 10, symbol % 10];
    out.extend(digits.iter().map(|d| b'0' + *d as u8));
}

struct Sequences {
    next: Vec<u64>,
}

impl LineShape for Sequences {
    fn write_line(&mut self, rng: &mut SplitMix64, out: &mut Vec<u8>) {
        let key = rng.below(self.next.len() as u64) as usize;
        out.push(b'k');
        write_u64(out, key as u64);
        out.push(b' ');
        write_u64(out, self.next[key]);
        self.next[key] += 1;
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

    #[test]
    fn generated_lines_parse() {
        let market = generate_all(AppName::MarketSpread, 2000, 3);
        for line in market.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            crate::market_spread::parse_event(line).unwrap();
        }
        let ints = generate_all(AppName::Doubler, 2000, 3);
        for line in ints.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            crate::doubler::double(line).unwrap();
        }
    }
}
