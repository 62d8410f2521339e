//! The shard logic's only windows on the outside world that are not its inputs:
//! time and randomness. Production injects the OS clock and a seeded generator; the
//! simulator injects a virtual clock, so the same code replays exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

/// Processing time: microseconds since the Unix epoch (UTC), never going
/// backwards within a process. Logic reads it only through this trait, so
/// the simulator can drive it and the audit log can record every reading
/// that a decision used.
pub trait Clock: Send + Sync {
    fn now_us(&self) -> u64;
    /// How this clock reads time, for the audit log.
    fn source(&self) -> &'static str;
}

/// The OS clock: UTC read once at process start, moved on by the monotonic
/// clock, so readings are UTC to the accuracy of the system clock at start
/// and never jump (an NTP step later does not reach them). Only drivers
/// construct it; logic sees `dyn Clock`.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
    origin_utc_us: u64,
}

impl SystemClock {
    /// The process's clock: every shard and thread reads the same one.
    pub fn process() -> SystemClock {
        static PROCESS: OnceLock<SystemClock> = OnceLock::new();
        *PROCESS.get_or_init(|| {
            let since_epoch = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            SystemClock {
                origin: Instant::now(),
                origin_utc_us: since_epoch.as_micros() as u64,
            }
        })
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::process()
    }
}

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        self.origin_utc_us + self.origin.elapsed().as_micros() as u64
    }
    fn source(&self) -> &'static str {
        "system realtime (UTC) at process start + CLOCK_MONOTONIC since, microseconds"
    }
}

/// The process clock, shared.
pub fn process_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock::process())
}

/// A clock that moves only when told to: tests and the simulator share one.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now_us: Arc<AtomicU64>,
}

impl ManualClock {
    pub fn advance_us(&self, delta_us: u64) {
        self.now_us.fetch_add(delta_us, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.now_us.load(Ordering::Relaxed)
    }
    fn source(&self) -> &'static str {
        "manual (a test's or the simulator's virtual clock)"
    }
}

/// Deterministic randomness.
pub trait Rng: Send {
    fn next_u64(&mut self) -> u64;

    /// Uniform in `0..bound` (bound > 0), by multiply-shift (no modulo bias worth
    /// caring about at 64 bits).
    fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0) has no value");
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }

    /// True with probability `numerator / denominator`.
    fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }
}

/// SplitMix64: tiny, fast, and fully determined by its seed.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }
}

impl Rng for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(SplitMix64::new(1).next_u64(), SplitMix64::new(2).next_u64());
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = SplitMix64::new(7);
        for bound in [1, 2, 3, 10, 1000] {
            for _ in 0..1000 {
                assert!(rng.below(bound) < bound);
            }
        }
    }

    #[test]
    fn the_system_clock_reads_utc_and_never_goes_back() {
        let clock = SystemClock::process();
        let first = clock.now_us();
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        assert!(first.abs_diff(wall) < 60_000_000, "{first} vs {wall}");
        let mut last = first;
        for _ in 0..1000 {
            let now = SystemClock::default().now_us();
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::default();
        assert_eq!(clock.now_us(), 0);
        clock.advance_us(5);
        assert_eq!(clock.clone().now_us(), 5);
    }
}
