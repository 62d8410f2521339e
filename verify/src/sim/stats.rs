//! Counters of how often the rare paths ran, so a reader of `verity sim
//! --stats` sees that a fault or a full window really happened over the
//! seeds, not only that it could have (in the manner of TigerBeetle's VOPR
//! summaries).

use std::collections::BTreeMap;
use std::fmt;

/// Counts by name; names are fixed strings, printed in sorted order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    counts: BTreeMap<&'static str, u64>,
}

impl SimStats {
    /// Counters every summary shows, even at zero, so a path that never ran
    /// is visible as `0` rather than missing.
    pub const ALWAYS_SHOWN: [&'static str; 10] = [
        "parked_sends",
        "checkpoints",
        "backlog_pauses",
        "full_send_buffers",
        "unclaimed_refused",
        "full_windows",
        "retransmitted_frames",
        "reconnects",
        "handshakes_refused",
        "dead_letters",
    ];

    pub fn bump(&mut self, name: &'static str) {
        self.add(name, 1);
    }

    pub fn add(&mut self, name: &'static str, count: u64) {
        *self.counts.entry(name).or_insert(0) += count;
    }

    /// A fault of `kind` (a name of `Faults::NAMES`) was injected.
    pub fn fault(&mut self, kind: &'static str) {
        self.bump(fault_counter(kind));
    }

    pub fn get(&self, name: &str) -> u64 {
        self.counts.get(name).copied().unwrap_or(0)
    }

    /// Every fault injected, of any kind.
    pub fn faults_injected(&self) -> u64 {
        self.counts
            .iter()
            .filter(|(name, _)| name.starts_with(FAULT_PREFIX))
            .map(|(_, count)| count)
            .sum()
    }

    pub fn merge(&mut self, other: &SimStats) {
        for (name, count) in &other.counts {
            self.add(name, *count);
        }
    }
}

const FAULT_PREFIX: &str = "fault_";

/// The counter of one fault kind: `fault_<kind>`.
pub fn fault_counter(kind: &'static str) -> &'static str {
    match kind {
        "drop" => "fault_drop",
        "duplicate" => "fault_duplicate",
        "delay" => "fault_delay",
        "reorder" => "fault_reorder",
        "cut" => "fault_cut",
        "partition" => "fault_partition",
        "pause" => "fault_pause",
        "clock" => "fault_clock",
        "corrupt" => "fault_corrupt",
        "wrong_secret" | "wrong-secret" => "fault_wrong_secret",
        "forge" => "fault_forge",
        "fail" => "fault_fail",
        "stop" => "fault_stop",
        "crash" => "fault_crash",
        "restart" => "fault_restart",
        other => panic!("no counter for fault kind `{other}`: add it to stats::fault_counter"),
    }
}

impl fmt::Display for SimStats {
    /// One `<name>: <count>` line per counter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut all = self.counts.clone();
        for name in SimStats::ALWAYS_SHOWN {
            all.entry(name).or_insert(0);
        }
        for (name, count) in all {
            writeln!(f, "{name}: {count}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_and_print_sorted_with_the_always_shown_ones() {
        let mut a = SimStats::default();
        a.fault("cut");
        a.bump("reconnects");
        let mut b = SimStats::default();
        b.fault("cut");
        b.fault("drop");
        a.merge(&b);
        assert_eq!(a.get("fault_cut"), 2);
        assert_eq!(a.faults_injected(), 3);
        let text = a.to_string();
        assert!(text.contains("fault_cut: 2\n"), "{text}");
        assert!(text.contains("dead_letters: 0\n"), "{text}");
        let names: Vec<&str> = text.lines().map(|l| l.split(':').next().unwrap()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }
}
