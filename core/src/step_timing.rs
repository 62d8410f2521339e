//! Where a shard's time goes, per step, in power-of-two buckets: how long
//! each chunk took to parse (and route), each batch to apply (the keyed
//! step and the formatting of its output), and how long output waited in
//! the shard's buffer before it was handed on. A shard keeps one
//! `StepTimings` in its counters (plain integers, no allocation: a few
//! clock readings per chunk, batch or output buffer, never per record);
//! the runtime publishes them for live metrics and a remote shard sends
//! them to process 0 when it finishes, so `verity bench` can show which
//! step or worker is the bottleneck.

/// Buckets of a `Pow2Histogram`: bucket `i` counts durations of at most
/// `2^i` µs (bucket 0: up to 1 µs), the last one everything longer than
/// `2^(LATENCY_BUCKETS - 2)` µs (about 17 s).
pub const LATENCY_BUCKETS: usize = 26;

/// Durations in µs, counted in power-of-two buckets, with their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pow2Histogram {
    pub counts: [u64; LATENCY_BUCKETS],
    pub sum_us: u64,
}

impl Default for Pow2Histogram {
    fn default() -> Self {
        Pow2Histogram {
            counts: [0; LATENCY_BUCKETS],
            sum_us: 0,
        }
    }
}

impl Pow2Histogram {
    /// The bucket of a duration of `us` µs: the smallest `i` with `us <= 2^i`.
    pub fn bucket_of(us: u64) -> usize {
        let bucket = if us <= 1 {
            0
        } else {
            (u64::BITS - (us - 1).leading_zeros()) as usize
        };
        bucket.min(LATENCY_BUCKETS - 1)
    }

    /// The largest duration bucket `bucket` holds (µs); `None` for the
    /// last, unbounded one.
    pub fn upper_bound_us(bucket: usize) -> Option<u64> {
        (bucket < LATENCY_BUCKETS - 1).then(|| 1u64 << bucket)
    }

    pub fn record(&mut self, us: u64) {
        self.counts[Self::bucket_of(us)] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn merge(&mut self, other: &Pow2Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// An upper bound of the `quantile` (0..=1): the bound of the bucket
    /// that holds it (the last bucket reports its lower bound doubled);
    /// 0 when empty.
    pub fn quantile_us(&self, quantile: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        // The rank of the quantile, 1-based, at least the first value.
        let rank = ((quantile.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::upper_bound_us(bucket).unwrap_or(1u64 << (LATENCY_BUCKETS - 1));
            }
        }
        unreachable!("the ranks end at the total")
    }
}

/// A step of a shard's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// One chunk of a source: split into lines, the stateless steps, routed
    /// by key (and, for the records this shard owns whose turn it is,
    /// applied at once).
    Parse,
    /// One batch of records (from a peer, or an own chunk parsed ahead of
    /// its turn): the keyed step and the formatting of its output.
    Apply,
    /// One output buffer: from its first line to the moment it was handed
    /// on towards the sink (full, lingered `output_linger_max_us`, or the
    /// shard ran out of input).
    Output,
}

impl Step {
    pub const ALL: [Step; 3] = [Step::Parse, Step::Apply, Step::Output];

    /// The stable name of the step in reports and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Step::Parse => "parse",
            Step::Apply => "apply",
            Step::Output => "output",
        }
    }
}

/// One step of one shard: the records it handled, and the duration of
/// each of its units (chunks, batches, output buffers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepFigures {
    pub records: u64,
    pub latency: Pow2Histogram,
}

impl StepFigures {
    /// Units timed (chunks, batches or buffers).
    pub fn units(&self) -> u64 {
        self.latency.count()
    }
}

/// The three steps of one shard (indexed as `Step::ALL`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepTimings {
    pub steps: [StepFigures; 3],
}

impl StepTimings {
    pub fn step(&self, step: Step) -> &StepFigures {
        &self.steps[step as usize]
    }

    /// One unit of `step` of `records` records took `us` µs.
    pub fn record(&mut self, step: Step, records: u64, us: u64) {
        let figures = &mut self.steps[step as usize];
        figures.records += records;
        figures.latency.record(us);
    }

    pub fn merge(&mut self, other: &StepTimings) {
        for (mine, theirs) in self.steps.iter_mut().zip(&other.steps) {
            mine.records += theirs.records;
            mine.latency.merge(&theirs.latency);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_smallest_power_of_two_bucket_that_holds_them() {
        assert_eq!(Pow2Histogram::bucket_of(0), 0);
        assert_eq!(Pow2Histogram::bucket_of(1), 0);
        assert_eq!(Pow2Histogram::bucket_of(2), 1);
        assert_eq!(Pow2Histogram::bucket_of(3), 2);
        assert_eq!(Pow2Histogram::bucket_of(4), 2);
        assert_eq!(Pow2Histogram::bucket_of(5), 3);
        assert_eq!(Pow2Histogram::bucket_of(1024), 10);
        assert_eq!(Pow2Histogram::bucket_of(1025), 11);
        assert_eq!(Pow2Histogram::bucket_of(u64::MAX), LATENCY_BUCKETS - 1);
        for us in [0, 1, 2, 3, 7, 8, 9, 1000, 1 << 20] {
            let bucket = Pow2Histogram::bucket_of(us);
            assert!(us <= Pow2Histogram::upper_bound_us(bucket).unwrap(), "{us}");
            if bucket > 0 {
                assert!(us > Pow2Histogram::upper_bound_us(bucket - 1).unwrap(), "{us}");
            }
        }
        assert_eq!(Pow2Histogram::upper_bound_us(LATENCY_BUCKETS - 1), None);
    }

    #[test]
    fn quantiles_are_bucket_bounds_and_merging_adds_up() {
        let mut h = Pow2Histogram::default();
        assert_eq!(h.quantile_us(0.99), 0);
        for _ in 0..98 {
            h.record(3);
        }
        h.record(100);
        h.record(5000);
        assert_eq!(h.count(), 100);
        assert_eq!(h.sum_us, 98 * 3 + 100 + 5000);
        assert_eq!(h.quantile_us(0.5), 4);
        assert_eq!(h.quantile_us(0.98), 4);
        assert_eq!(h.quantile_us(0.99), 128);
        assert_eq!(h.quantile_us(1.0), 8192);
        let mut timings = StepTimings::default();
        timings.record(Step::Apply, 10, 3);
        let mut other = StepTimings::default();
        other.record(Step::Apply, 5, 100);
        other.record(Step::Output, 7, 1);
        timings.merge(&other);
        assert_eq!(timings.step(Step::Apply).records, 15);
        assert_eq!(timings.step(Step::Apply).units(), 2);
        assert_eq!(timings.step(Step::Output).records, 7);
        assert_eq!(timings.step(Step::Parse).units(), 0);
    }
}
