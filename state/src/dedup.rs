use rustc_hash::FxHashMap;

/// What a receiver should do with a batch `[first_seq, first_seq + count)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admit {
    /// Records at the front of the batch already applied (duplicates): skip them.
    pub skip: u64,
    /// Records after the skipped ones to apply.
    pub apply: u64,
    /// Sequence numbers missing between the watermark and the batch (a gap means
    /// loss upstream: the channel protocol must never let that happen).
    pub gap: u64,
}

/// Per-producer dedup watermarks: the highest sequence applied from each upstream
/// producer. A record at or below its producer's watermark was applied already and
/// is dropped, which turns at-least-once delivery into exactly-once effects.
///
/// Sequences start at 1; a watermark of 0 means "nothing applied yet".
#[derive(Debug, Default, Clone)]
pub struct DedupWatermarks {
    applied: FxHashMap<u32, u64>,
}

impl DedupWatermarks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Test-only until a reader needs it (checkpoints).
    #[cfg(test)]
    pub fn watermark(&self, producer: u32) -> u64 {
        self.applied.get(&producer).copied().unwrap_or(0)
    }

    /// Admits a contiguous batch and advances the watermark past what it applies.
    pub fn admit_batch(&mut self, producer: u32, first_seq: u64, count: u64) -> Admit {
        assert!(first_seq >= 1, "sequence numbers start at 1");
        let watermark = self.applied.entry(producer).or_insert(0);
        let last_seq = first_seq + count - count.min(1);
        if count == 0 || last_seq <= *watermark {
            return Admit {
                skip: count,
                apply: 0,
                gap: 0,
            };
        }
        let skip = watermark.saturating_sub(first_seq - 1).min(count);
        let gap = (first_seq - 1).saturating_sub(*watermark);
        *watermark = last_seq;
        let admit = Admit {
            skip,
            apply: count - skip,
            gap,
        };
        debug_assert_eq!(admit.skip + admit.apply, count);
        admit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_batches_apply_fully() {
        let mut w = DedupWatermarks::new();
        assert_eq!(
            w.admit_batch(7, 1, 10),
            Admit {
                skip: 0,
                apply: 10,
                gap: 0
            }
        );
        assert_eq!(
            w.admit_batch(7, 11, 5),
            Admit {
                skip: 0,
                apply: 5,
                gap: 0
            }
        );
        assert_eq!(w.watermark(7), 15);
    }

    #[test]
    fn replayed_and_overlapping_batches_apply_only_the_new_tail() {
        let mut w = DedupWatermarks::new();
        w.admit_batch(1, 1, 10);
        assert_eq!(
            w.admit_batch(1, 1, 10),
            Admit {
                skip: 10,
                apply: 0,
                gap: 0
            }
        );
        assert_eq!(
            w.admit_batch(1, 6, 10),
            Admit {
                skip: 5,
                apply: 5,
                gap: 0
            }
        );
        assert_eq!(w.watermark(1), 15);
    }

    #[test]
    fn a_gap_is_reported() {
        let mut w = DedupWatermarks::new();
        w.admit_batch(1, 1, 3);
        assert_eq!(
            w.admit_batch(1, 6, 2),
            Admit {
                skip: 0,
                apply: 2,
                gap: 2
            }
        );
    }

    proptest! {
        /// Delivering any sequence of (possibly repeated, overlapping) in-order-ish
        /// batches applies each sequence number at most once.
        #[test]
        fn each_sequence_applies_at_most_once(batches in proptest::collection::vec((1u64..50, 0u64..8), 0..40)) {
            let mut w = DedupWatermarks::new();
            let mut applied = std::collections::BTreeSet::new();
            for (first, count) in batches {
                let admit = w.admit_batch(0, first, count);
                for seq in first + admit.skip..first + admit.skip + admit.apply {
                    prop_assert!(applied.insert(seq), "seq {} applied twice", seq);
                }
            }
        }
    }
}
