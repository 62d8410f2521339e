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

/// A bug too narrow for random seeds to hit often (a window closes when the
/// watermark is 1 ms short of its end, so a record at its last instant,
/// still on time, opens it again): on the input that shows it, the oracle
/// catches it, and passes the same input without the bug.
#[test]
fn firing_a_window_one_ms_early_is_caught_by_the_oracle() {
    use bytes::Bytes;
    use verity_core::connector::Position;
    use verity_core::event_time::EventTimeBugs;
    use verity_core::shard::{Effect, ShardCore, ShardLimits};
    use verity_core::source::{ChunkData, SourceEvent};
    use verity_core::SourceSpec;

    // After `k 149` the watermark is 99: `k 99` is on time, in [0, 100).
    let input = b"k 50\nk 149\nk 99\n";
    let output = |bugs: EventTimeBugs| {
        let flow = verity_apps::window_count::dataflow(SourceSpec::memory("m", Bytes::new()));
        let mut core = ShardCore::build_range(&flow.logic, 1, 0..1, ShardLimits::default())
            .pop()
            .unwrap();
        core.plant_event_time_bugs(bugs);
        // Two chunks: timers fire after each unit, so `k 99` comes after
        // the watermark of `k 149` took effect.
        let (first, second) = input.split_at(11);
        for (index, (first_line, lines)) in [(1, first), (3, second)].into_iter().enumerate() {
            core.on_source_event(SourceEvent::Chunk {
                source: 0,
                index: index as u64,
                first_line,
                data: ChunkData::Lines(Bytes::copy_from_slice(lines)),
                partition: 0,
                position: Position::Text { bytes: 0, lines: 0 },
                epoch: 0,
            });
        }
        core.on_source_event(SourceEvent::End { source: 0, chunks: 2 });
        core.flush();
        let mut lines = Vec::new();
        for effect in core.drain_effects() {
            if let Effect::Output(batch) = effect {
                lines.extend(batch.lines);
            }
        }
        lines
    };
    let clean = output(EventTimeBugs::default());
    assert_eq!(clean, b"k 0 100 2\nk 100 200 1\n");
    verity_verify::windowed::check_windows(input, &clean).unwrap();
    let early = EventTimeBugs {
        fire_one_ms_early: true,
        ..EventTimeBugs::default()
    };
    let failure = verity_verify::windowed::check_windows(input, &output(early)).unwrap_err();
    assert!(failure.contains("key \"k\""), "{failure}");
}
