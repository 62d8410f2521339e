//! The simulator with process 0's output through the Kafka sink's
//! transaction protocol into a simulated broker (`SimConfig::log_sink`):
//! with every fault, crashes included, what a read_committed consumer of
//! the output topic sees is exactly the oracle's output, and the sink's
//! planted bugs are caught.

use verity_apps::AppName;
use verity_verify::sim::{run_seed, run_seed_ok, Faults, PlantedBugs, SimConfig};

/// Seeds per app: 200 in all (about a minute with the test below).
const SEEDS_PER_APP: u64 = 50;

fn log_sink(app: AppName, seed: u64) -> SimConfig {
    SimConfig {
        log_sink: true,
        audit: Some(false),
        ..SimConfig::new(app, seed)
    }
}

#[test]
fn read_committed_output_is_exact_over_many_seeds_with_crashes() {
    let mut stats = verity_verify::sim::SimStats::default();
    for app in AppName::ALL {
        for seed in 0..SEEDS_PER_APP {
            stats.merge(&run_seed_ok(&log_sink(app, seed)).stats);
        }
    }
    for counter in ["fault_crash", "recoveries_from_checkpoint"] {
        assert!(stats.get(counter) > 0, "{counter} never happened:\n{stats}");
    }
}

/// `kafka-skip-recommit` is caught by the sink's unit tests over the
/// simulated broker (`a_crash_between_checkpoint_and_commit_commits_the_copy_once`);
/// no seed found so far crashes exactly between a manifest and its commit.
#[test]
fn planted_commit_at_barrier_is_caught() {
    // Seed 6 crashes after a commit-at-barrier before its checkpoint.
    let bug = "kafka-commit-at-barrier";
    let config = SimConfig {
        faults: Faults::parse("crash").unwrap(),
        bugs: PlantedBugs::named(bug).unwrap(),
        ..log_sink(AppName::SeqWindow, 6)
    };
    assert!(
        run_seed(&config).failure.is_some(),
        "{bug} was not caught at seed 6"
    );
    run_seed_ok(&SimConfig {
        bugs: PlantedBugs::default(),
        ..config
    });
}
