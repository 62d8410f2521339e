//! The inputs of `scripts/bench-compare.sh`: the workloads issue 12 names
//! (wordcount: Zipf over a 10k vocabulary; market-spread: 1000 symbols;
//! seq-window: 100k keys), deterministic for a seed, well-formed only.
//!
//! Why not `verity generate`: its generators exist to test the engine (a 5k
//! vocabulary with a flatter skew, 500 symbols with hot keys, 1000 keys,
//! special key classes, unicode white space) and a comparison with peers
//! needs the published workload shapes, whose key spaces set the state size.

use std::io::{self, Write};
use verity_apps::format::write_u64;
use verity_apps::generate::{write_market_event, write_word};
use verity_apps::AppName;
use verity_core::{Rng, SplitMix64};

/// wordcount: distinct words, drawn with Zipf's law (rank r has weight 1/r^s).
pub const WORDCOUNT_VOCABULARY_SIZE: usize = 10_000;
pub const WORDCOUNT_ZIPF_EXPONENT: f64 = 1.0;
/// Words per text line are uniform in 1..=this.
const WORDS_PER_LINE_MAX: u64 = 10;
pub const MARKET_SYMBOLS: u64 = 1_000;
/// market-spread: a third of the events are quotes, the rest orders.
const QUOTES_PER_EVENTS: (u64, u64) = (1, 3);
/// Quote spreads are uniform in 1..=this many price units, so both the
/// 0.05 rule (500 units) and the 5%-of-mid rule reject some symbols.
const QUOTE_SPREAD_MAX_UNITS: u64 = 800;
pub const SEQ_WINDOW_KEYS: usize = 100_000;
/// Lines are written to the output in buffers of about this size.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Writes `events` events of `app`'s workload: for wordcount `events` words
/// (on lines of 1-10 words), otherwise `events` lines. Returns the lines written.
pub fn write(app: AppName, events: u64, seed: u64, out: &mut dyn Write) -> io::Result<u64> {
    let mut rng = SplitMix64::new(seed);
    let mut shape: Box<dyn Shape> = match app {
        AppName::Wordcount => Box::new(ZipfText::new()),
        AppName::MarketSpread => Box::new(Market { next_order_id: 1 }),
        AppName::SeqWindow => Box::new(Sequences {
            next: vec![1; SEQ_WINDOW_KEYS],
        }),
        AppName::Doubler | AppName::WindowCount => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the compare workloads are wordcount, market-spread and seq-window",
            ))
        }
    };
    let mut buffer = Vec::with_capacity(WRITE_BUFFER_BYTES + 4096);
    let (mut left, mut lines) = (events, 0);
    while left > 0 {
        left -= shape.write_line(&mut rng, left, &mut buffer);
        buffer.push(b'\n');
        lines += 1;
        if buffer.len() >= WRITE_BUFFER_BYTES {
            out.write_all(&buffer)?;
            buffer.clear();
        }
    }
    out.write_all(&buffer)?;
    out.flush()?;
    Ok(lines)
}

/// The whole workload in memory (tests).
pub fn generate(app: AppName, events: u64, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    write(app, events, seed, &mut out).expect("writing to memory cannot fail");
    out
}

trait Shape {
    /// Writes one line (without its `\n`) holding at most `events_left`
    /// events; returns how many it holds (at least 1).
    fn write_line(&mut self, rng: &mut SplitMix64, events_left: u64, out: &mut Vec<u8>) -> u64;
}

struct ZipfText {
    /// Cumulative weights by rank: a uniform draw below the last one picks
    /// the first rank whose cumulative weight exceeds it.
    cumulative: Vec<f64>,
}

impl ZipfText {
    fn new() -> ZipfText {
        let mut total = 0.0;
        let cumulative = (1..=WORDCOUNT_VOCABULARY_SIZE)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(WORDCOUNT_ZIPF_EXPONENT);
                total
            })
            .collect();
        ZipfText { cumulative }
    }

    fn rank(&self, rng: &mut SplitMix64) -> usize {
        let total = self.cumulative[self.cumulative.len() - 1];
        // 53 random bits: every f64 in [0, 1) that a uniform draw can take.
        let draw = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let rank = self.cumulative.partition_point(|weight| *weight <= draw);
        rank.min(self.cumulative.len() - 1)
    }
}

impl Shape for ZipfText {
    fn write_line(&mut self, rng: &mut SplitMix64, events_left: u64, out: &mut Vec<u8>) -> u64 {
        let words = (1 + rng.below(WORDS_PER_LINE_MAX)).min(events_left);
        for i in 0..words {
            if i > 0 {
                out.push(b' ');
            }
            let rank = self.rank(rng);
            write_word(out, rank as u64);
        }
        words
    }
}

struct Market {
    next_order_id: u64,
}

impl Shape for Market {
    fn write_line(&mut self, rng: &mut SplitMix64, _events_left: u64, out: &mut Vec<u8>) -> u64 {
        let symbol = rng.below(MARKET_SYMBOLS);
        write_market_event(
            out,
            rng,
            symbol,
            write_symbol,
            QUOTES_PER_EVENTS,
            QUOTE_SPREAD_MAX_UNITS,
            &mut self.next_order_id,
        );
        1
    }
}

/// `S000` to `S999`: 1000 distinct valid symbols.
fn write_symbol(out: &mut Vec<u8>, symbol: u64) {
    debug_assert!(symbol < 1000, "three digits name at most 1000 symbols");
    out.push(b'S');
    out.extend([symbol / 100, symbol / 10 % 10, symbol % 10].map(|d| b'0' + d as u8));
}

struct Sequences {
    next: Vec<u64>,
}

impl Shape for Sequences {
    fn write_line(&mut self, rng: &mut SplitMix64, _events_left: u64, out: &mut Vec<u8>) -> u64 {
        let key = rng.below(self.next.len() as u64) as usize;
        out.push(b'k');
        write_u64(out, key as u64);
        out.push(b' ');
        write_u64(out, self.next[key]);
        self.next[key] += 1;
        1
    }
}

/// Events in a workload input: words for wordcount, lines otherwise.
pub fn count_events(app: AppName, input: &[u8]) -> u64 {
    match app {
        AppName::Wordcount => input
            .split(|b| *b == b'\n')
            .map(|line| line.split(|b| *b == b' ').filter(|w| !w.is_empty()).count() as u64)
            .sum(),
        _ => input.iter().filter(|b| **b == b'\n').count() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_event_counts_and_same_seed_same_input() {
        for app in [AppName::Wordcount, AppName::MarketSpread, AppName::SeqWindow] {
            let input = generate(app, 5_000, 3);
            assert_eq!(count_events(app, &input), 5_000, "{app:?}");
            assert_eq!(input, generate(app, 5_000, 3), "{app:?}");
            assert_ne!(input, generate(app, 5_000, 4), "{app:?}");
        }
    }

    #[test]
    fn zipf_ranks_are_skewed_and_cover_the_vocabulary() {
        let text = ZipfText::new();
        let mut rng = SplitMix64::new(1);
        let mut hits = vec![0u64; WORDCOUNT_VOCABULARY_SIZE];
        for _ in 0..1_000_000 {
            hits[text.rank(&mut rng)] += 1;
        }
        // With s = 1 and 10k ranks, rank 1 has 1/H(10000) ≈ 10.2% of draws,
        // rank 2 half of that.
        assert!((95_000..110_000).contains(&hits[0]), "{}", hits[0]);
        assert!((hits[1] as f64 / hits[0] as f64 - 0.5).abs() < 0.02);
        assert!(hits.iter().filter(|h| **h > 0).count() > 9_000);
    }

    #[test]
    fn every_line_parses_for_its_app() {
        let market = generate(AppName::MarketSpread, 3_000, 5);
        for line in market.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            assert!(verity_apps::market_spread::parse_event(line).is_ok());
        }
        let seq = generate(AppName::SeqWindow, 3_000, 5);
        let mut words = std::collections::HashSet::new();
        for line in seq.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let text = std::str::from_utf8(line).unwrap();
            assert_eq!(text.split(' ').count(), 2);
            words.insert(text.split(' ').next().unwrap().to_string());
        }
        assert!(words.len() > 2_900, "keys should rarely repeat in 3000 of 100k");
    }
}
