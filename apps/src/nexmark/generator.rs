//! The built-in Nexmark source: the `nexmark` crate's generator, configured
//! so that `(count, seed, rate)` fixes every event.
//!
//! How the crate's randomness works: each event is drawn from a `SmallRng`
//! seeded with its *event id* (`first_event_id + event number`), its type
//! from the event number (1 person, 3 auctions, 46 bids in every 50), its
//! time from the event number, `base_time` and the rate. Nothing else is
//! random (the crate reads the wall clock only for a default `base_time`,
//! which is set here). So `--seed S` maps onto `first_event_id = S *
//! SEED_EVENT_ID_STRIDE`: another seed draws other names, prices, sellers,
//! bidders and auctions, on the same timeline; seed 0 is the crate's own
//! stream. The stride is a multiple of the 50-event cycle, so person and
//! auction ids (derived from the event id) stay aligned with event types.

use super::events::write_generated;
use nexmark::config::{NexmarkConfig, RateShape};
use verity_core::LineGenerator;

/// Event time of the first event: 2023-11-14T22:13:20Z (fixed, so a seed
/// is a run).
pub const BASE_TIME_MS: u64 = 1_700_000_000_000;
/// Events per second of event time, as Beam's default `firstEventRate`.
pub const DEFAULT_EVENT_RATE_PER_S: u64 = 10_000;
/// The slowest rate allowed (the crate's timestamps are f32 arithmetic on
/// the inter-event delay; below this they lose precision).
pub const EVENT_RATE_MIN_PER_S: u64 = 1;
/// The fastest rate allowed (at 1 µs apart the crate's delays round to 0).
pub const EVENT_RATE_MAX_PER_S: u64 = 1_000_000;
/// Event ids between two seeds: 50 × 2^30 (a multiple of the crate's
/// 50-event cycle), so seeds never share an event id below 2^30 cycles.
pub const SEED_EVENT_ID_STRIDE: u64 = 50 << 30;
/// The largest seed: keeps event ids (and the ids derived from them) far
/// below 2^63.
pub const SEED_MAX: u64 = 1 << 20;

/// The crate's configuration for `seed` at `rate_per_s`, every field that
/// shapes the stream set here (the crate's defaults, written out, so a new
/// crate default cannot change a seed's events).
pub fn config(seed: u64, rate_per_s: u64) -> NexmarkConfig {
    assert!(seed <= SEED_MAX, "seed {seed} above SEED_MAX");
    assert!((EVENT_RATE_MIN_PER_S..=EVENT_RATE_MAX_PER_S).contains(&rate_per_s));
    NexmarkConfig {
        active_people: 1000,
        in_flight_auctions: 100,
        // In event-time order: out-of-order input is the engine's watermark
        // delay's business, tested apart.
        out_of_order_group_size: 1,
        avg_person_byte_size: 200,
        avg_auction_byte_size: 500,
        avg_bid_byte_size: 100,
        hot_seller_ratio: 4,
        hot_auction_ratio: 2,
        hot_bidder_ratio: 4,
        hot_channel_ratio: 2,
        first_event_id: (seed * SEED_EVENT_ID_STRIDE) as usize,
        first_event_number: 0,
        base_time: BASE_TIME_MS,
        num_categories: 5,
        auction_id_lead: 10,
        person_proportion: 1,
        auction_proportion: 3,
        bid_proportion: 46,
        first_auction_id: 1000,
        first_person_id: 1000,
        first_category_id: 10,
        person_id_lead: 10,
        num_event_generators: 1,
        rate_shape: RateShape::Square,
        first_rate: rate_per_s as usize,
        next_rate: rate_per_s as usize,
        us_per_unit: 1_000_000,
        ..NexmarkConfig::default()
    }
}

/// `count` events of `seed` at `rate_per_s`, as lines of the text form.
pub struct NexmarkLines {
    events: nexmark::EventGenerator,
    left: u64,
}

impl NexmarkLines {
    pub fn new(count: u64, seed: u64, rate_per_s: u64) -> Self {
        NexmarkLines {
            events: nexmark::EventGenerator::new(config(seed, rate_per_s)),
            left: count,
        }
    }
}

impl LineGenerator for NexmarkLines {
    fn write_lines(&mut self, out: &mut Vec<u8>, lines_max: usize) -> usize {
        let lines = self.left.min(lines_max as u64);
        for event in self.events.by_ref().take(lines as usize) {
            write_generated(&event, out);
            out.push(b'\n');
        }
        self.left -= lines;
        lines as usize
    }
}

/// A whole generated input in one buffer (tests, `--check`, benchmarks).
pub fn generate_all(count: u64, seed: u64, rate_per_s: u64) -> Vec<u8> {
    let mut lines = NexmarkLines::new(count, seed, rate_per_s);
    let mut out = Vec::new();
    while lines.write_lines(&mut out, 4096) > 0 {}
    out
}

/// Checks a `--seed` and `--event-rate` from the command line.
pub fn check_options(seed: u64, rate_per_s: u64) -> Result<(), String> {
    if seed > SEED_MAX {
        return Err(format!(
            "--seed {seed} is too large for nexmark (at most {SEED_MAX})"
        ));
    }
    if !(EVENT_RATE_MIN_PER_S..=EVENT_RATE_MAX_PER_S).contains(&rate_per_s) {
        return Err(format!(
            "--event-rate {rate_per_s} is out of range ({EVENT_RATE_MIN_PER_S}..={EVENT_RATE_MAX_PER_S} events per second of event time)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_is_a_stream_and_seeds_differ() {
        let a = generate_all(500, 3, DEFAULT_EVENT_RATE_PER_S);
        assert_eq!(a, generate_all(500, 3, DEFAULT_EVENT_RATE_PER_S));
        let b = generate_all(500, 4, DEFAULT_EVENT_RATE_PER_S);
        assert_ne!(a, b);
        assert_eq!(a.iter().filter(|b| **b == b'\n').count(), 500);
        // Same timeline and types, other content.
        let kinds = |data: &[u8]| -> Vec<u8> {
            data.split(|b| *b == b'\n')
                .filter_map(|l| l.first().copied())
                .collect()
        };
        assert_eq!(kinds(&a), kinds(&b));
    }

    #[test]
    fn the_rate_sets_event_time() {
        let data = generate_all(1001, 0, 100);
        let last = data.split(|b| *b == b'\n').rfind(|l| !l.is_empty()).unwrap();
        let event = crate::nexmark::events::parse_event(last).unwrap();
        // Event 1000 at 100 events per second: 10 s after the base time.
        assert_eq!(event.date_time(), BASE_TIME_MS + 10_000);
    }

    #[test]
    fn chunks_of_any_size_make_the_same_lines() {
        let whole = generate_all(300, 1, DEFAULT_EVENT_RATE_PER_S);
        let mut lines = NexmarkLines::new(300, 1, DEFAULT_EVENT_RATE_PER_S);
        let mut out = Vec::new();
        while lines.write_lines(&mut out, 7) > 0 {}
        assert_eq!(whole, out);
    }
}
