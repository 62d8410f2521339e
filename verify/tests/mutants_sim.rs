//! The simulator as a mutation-testing oracle (`scripts/mutants.sh`): a fixed
//! range of seeds over every reference app and two cluster layouts, stopping
//! at the first failing seed so a caught mutant is rejected quickly. Also part
//! of the ordinary test suite, where it is one more seed sweep.

use verity_apps::AppName;
use verity_verify::sim::{run_seed_ok, SimConfig};

/// Seeds per app and layout: enough to catch a planted single-point bug in the
/// engine's logic, few enough that a mutant is judged in seconds.
const SEEDS_PER_LAYOUT: u64 = 25;
/// (processes, workers) pairs: a three-process cluster with two shards each,
/// and two single-shard processes (every batch crosses the network).
const LAYOUTS: [(u32, u32); 2] = [(3, 2), (2, 1)];

/// Besides every app on one stream: market-spread's quotes and orders as two
/// sources, and wordcount's final counts.
const EXTRA_VARIANTS: [(AppName, u32, bool); 2] =
    [(AppName::MarketSpread, 2, false), (AppName::Wordcount, 1, true)];

#[test]
fn simulator_seed_sweep_for_mutants() {
    let variants = AppName::ALL
        .into_iter()
        .map(|app| (app, 1, false))
        .chain(EXTRA_VARIANTS);
    for (app, streams, final_counts) in variants {
        for (processes, workers) in LAYOUTS {
            for seed in 0..SEEDS_PER_LAYOUT {
                let config = SimConfig {
                    processes,
                    workers,
                    sim_seconds: 10,
                    records: 800,
                    streams,
                    final_counts,
                    ..SimConfig::new(app, 10_000 + seed)
                };
                run_seed_ok(&config);
            }
        }
    }
}
