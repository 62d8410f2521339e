//! The windowed reference app (window-count: event time, watermarks, late
//! records, windows closed by event-time timers) in the simulator with all
//! faults, crashes and recoveries included, checked by its independent
//! oracle (`verity_verify::windowed`); and its planted event-time bugs are
//! caught. A short sweep: `verity sim --app window-count --seeds 0..200`
//! runs the long one.

use verity_apps::AppName;
use verity_verify::sim::{run_seed, run_seed_ok, PlantedBugs, SimConfig};

const SEEDS_PER_LAYOUT: u64 = 12;

#[test]
fn window_count_runs_clean_with_faults_at_both_layouts() {
    for (processes, workers) in [(3, 2), (2, 1)] {
        for seed in 0..SEEDS_PER_LAYOUT {
            run_seed_ok(&SimConfig {
                processes,
                workers,
                ..SimConfig::new(AppName::WindowCount, seed)
            });
        }
    }
}

#[test]
fn a_watermark_without_its_delay_is_caught_by_the_oracle() {
    let bugs = PlantedBugs::named("watermark-ignores-delay").unwrap();
    let failure = (0..SEEDS_PER_LAYOUT)
        .find_map(|seed| {
            run_seed(&SimConfig {
                bugs,
                ..SimConfig::new(AppName::WindowCount, seed)
            })
            .failure
        })
        .expect("the planted bug is caught");
    assert!(failure.contains("late"), "{failure}");
}

#[test]
fn a_spread_window_count_is_refused_with_a_reason() {
    let spread = SimConfig {
        spread: true,
        ..SimConfig::new(AppName::WindowCount, 0)
    };
    let failure = run_seed(&spread).failure.unwrap();
    assert!(failure.contains("models one input stream"), "{failure}");
}
