//! The simulator: every reference app runs clean over many seeds with all
//! faults, a seed replays to the same trace, and planted bugs are caught.

use verity_apps::AppName;
use verity_verify::sim::{run_seed, run_seed_ok, Faults, PlantedBugs, SimConfig};

/// Seeds per app in CI (the issue asks for at least 200).
const CI_SEEDS: u64 = 200;

/// The apps of the 200-seed sweeps; window-count has its own, shorter one
/// in `sim_windows.rs` (its 200 seeds run with `verity sim`).
fn swept_apps() -> impl Iterator<Item = AppName> {
    AppName::ALL
        .into_iter()
        .filter(|app| *app != AppName::WindowCount)
}

#[test]
fn every_app_runs_clean_over_many_seeds() {
    for app in swept_apps() {
        for seed in 0..CI_SEEDS {
            run_seed_ok(&SimConfig::new(app, seed));
        }
    }
}

/// A spread source: the input split by key into one partition per process,
/// each read by its own process's production reader loop, which hears of
/// checkpoints from process 0 through the lifecycle (`Control::Readers`);
/// all faults, crashes and recoveries included.
#[test]
fn spread_sources_run_clean_over_many_seeds() {
    for app in swept_apps() {
        for seed in 0..CI_SEEDS / 4 {
            run_seed_ok(&SimConfig {
                spread: true,
                ..SimConfig::new(app, seed)
            });
        }
    }
    for seed in 0..CI_SEEDS / 10 {
        run_seed_ok(&SimConfig {
            spread: true,
            processes: 2,
            workers: 1,
            ..SimConfig::new(AppName::SeqWindow, seed)
        });
    }
}

#[test]
fn wordcount_final_counts_run_clean() {
    for seed in 0..CI_SEEDS / 2 {
        let config = SimConfig {
            final_counts: true,
            ..SimConfig::new(AppName::Wordcount, seed)
        };
        run_seed_ok(&config);
    }
    let doubler = SimConfig {
        final_counts: true,
        ..SimConfig::new(AppName::Doubler, 0)
    };
    assert!(run_seed(&doubler)
        .failure
        .unwrap()
        .contains("--final is for wordcount"));
}

/// Seeds where a process fails or a stop arrives: the run ends everywhere in
/// bounded time and says why (a stopped run that completes is checked
/// against the input read before the stop); they are part of `all`.
#[test]
fn a_failing_process_or_a_stop_ends_the_run_everywhere() {
    let mut stats = verity_verify::sim::SimStats::default();
    let mut failure_seeds = 0;
    for seed in 0..CI_SEEDS {
        for (processes, workers) in [(3, 2), (2, 1)] {
            let config = SimConfig {
                processes,
                workers,
                ..SimConfig::new(AppName::SeqWindow, seed)
            };
            let outcome = run_seed_ok(&config);
            failure_seeds += u32::from(outcome.failure_injected);
            stats.merge(&outcome.stats);
        }
    }
    for counter in ["fault_fail", "fault_stop", "stops_completed"] {
        assert!(stats.get(counter) > 0, "{counter} never happened:\n{stats}");
    }
    // About 1 seed in 4 draws a failure or a stop, and most land after the
    // run finished (a seeded count: 16 of 400 on this commit).
    assert!(
        failure_seeds >= 12,
        "only {failure_seeds} seeds were cut short by a failing process or a stop"
    );
}

/// Seeds where one process restarts alone: every survivor that knew its
/// old life refuses the new one, the run fails, and the whole cluster
/// recovers from its newest checkpoint with exact output; a restart of
/// process 0 is the cluster's restart. Part of `all`.
#[test]
fn a_restarted_process_is_refused_and_the_cluster_recovers() {
    let mut stats = verity_verify::sim::SimStats::default();
    for seed in 0..CI_SEEDS / 2 {
        for (processes, workers) in [(3, 2), (2, 1)] {
            let config = SimConfig {
                processes,
                workers,
                faults: Faults::parse("restart,delay,cut,partition,pause").unwrap(),
                ..SimConfig::new(AppName::SeqWindow, seed)
            };
            let outcome = run_seed_ok(&config);
            if outcome.stats.get("restarts_recovered") > 0 && stats.get("restarts_recovered") == 0 {
                // The recovered cluster replays too, event for event.
                assert_eq!(run_seed(&config).trace_hash, outcome.trace_hash);
            }
            stats.merge(&outcome.stats);
        }
    }
    for counter in ["fault_restart", "restarts_noticed", "restarts_recovered"] {
        assert!(stats.get(counter) > 0, "{counter} never happened:\n{stats}");
    }
    // A worker's restart is noticed and recovered from; process 0's goes
    // the crash path at once, so there are more recoveries than noticed
    // restarts.
    assert_eq!(stats.get("restarts_noticed"), stats.get("restarts_recovered"));
    assert!(
        stats.get("recoveries_from_checkpoint") + stats.get("recoveries_from_start")
            > stats.get("restarts_recovered"),
        "process 0 never restarted:\n{stats}"
    );
}

#[test]
fn a_planted_ignored_restart_is_named() {
    let (_, failure) = first_failure("ignore-peer-restart", AppName::MarketSpread, (3, 2), 1);
    assert!(
        failure.contains("(new incarnation) for its old life"),
        "{failure}"
    );
}

#[test]
fn faults_are_injected() {
    let outcome = run_seed(&SimConfig::new(AppName::MarketSpread, 3));
    assert!(outcome.faults_injected > 0);
    let calm = run_seed(&SimConfig {
        faults: Faults::none(),
        ..SimConfig::new(AppName::MarketSpread, 3)
    });
    assert_eq!(calm.faults_injected, 0);
    assert!(calm.is_ok(), "{:?}", calm.failure);
}

#[test]
fn same_seed_same_trace() {
    for seed in [1, 2, 3] {
        let config = SimConfig {
            trace: true,
            ..SimConfig::new(AppName::SeqWindow, seed)
        };
        let (a, b) = (run_seed(&config), run_seed(&config));
        assert_eq!(a.trace_hash, b.trace_hash);
        assert_eq!(a.trace, b.trace);
        assert!(
            a.trace
                .iter()
                .any(|line| line.contains("frame seq") && line.contains("shard")),
            "the trace says what went where"
        );
    }
    let other = run_seed(&SimConfig::new(AppName::SeqWindow, 4));
    assert_ne!(
        other.trace_hash,
        run_seed(&SimConfig::new(AppName::SeqWindow, 1)).trace_hash
    );
}

/// Seeds within which a planted bug must be caught (the bound).
const CATCH_WITHIN_SEEDS: u64 = 100;
/// The one exception: a commit that does not wait for its lineage shows only
/// when three independent draws meet (a crash seed, the crash that strikes
/// right after a commit, an audit log that syncs lazily), about one seed in
/// 60 to 100 at P=2 W=1 (measured over 300 seeds: caught at 41, 131 and
/// 291 depending on the faults). Searching 100 seeds passed or failed by
/// luck, so it gets more; drawing that crash more often is the better fix.
const CATCH_LINEAGE_BUG_WITHIN_SEEDS: u64 = 400;

fn catch_within_seeds(bug: &str) -> u64 {
    match bug {
        "commit-before-lineage-durable" => CATCH_LINEAGE_BUG_WITHIN_SEEDS,
        _ => CATCH_WITHIN_SEEDS,
    }
}

/// The faults a seed with `bug` planted runs with: all of them, except for
/// a bug only one rare fault can show. A process restart is drawn only in
/// seeds without a failure, a stop or a crash (each is judged alone), so
/// the bug that ignores it runs without those three, and a restart is then
/// drawn in one seed in four or so instead of one in twenty.
fn faults_to_catch(bug: &str) -> Faults {
    match bug {
        "ignore-peer-restart" => Faults {
            fail: false,
            stop: false,
            crash: false,
            ..Faults::all()
        },
        // Only a crash shows them: no fault that would take the crash's
        // place in a seed.
        "commit-before-durable" | "commit-before-lineage-durable" | "state-from-older-checkpoint" => Faults {
            fail: false,
            stop: false,
            restart: false,
            ..Faults::all()
        },
        _ => Faults::all(),
    }
}

/// Runs `app` seeds with the bug named `bug` planted until one fails;
/// returns that seed and its failure.
fn first_failure(bug: &str, app: AppName, layout: (u32, u32), streams: u32) -> (u64, String) {
    let bugs = PlantedBugs::named(bug).unwrap();
    let seeds = catch_within_seeds(bug);
    for seed in 0..seeds {
        let outcome = run_seed(&SimConfig {
            bugs,
            processes: layout.0,
            workers: layout.1,
            streams,
            faults: faults_to_catch(bug),
            // Only an audit log can lose lineage.
            audit: (bug == "commit-before-lineage-durable").then_some(true),
            ..SimConfig::new(app, seed)
        });
        if let Some(failure) = outcome.failure {
            return (seed, failure);
        }
    }
    panic!(
        "planted bug {bug} went unnoticed for {seeds} seeds of {} at P={} W={}",
        app.name(),
        layout.0,
        layout.1
    );
}

/// Every planted bug, each in the shared production code it is a bug of, is
/// caught within 100 seeds at both of the layouts (but one, see
/// `catch_within_seeds`).
#[test]
fn every_planted_bug_is_caught_within_100_seeds() {
    for bug in PlantedBugs::NAMES {
        for layout in [(3, 2), (2, 1)] {
            if bug == "accept-other-peers-channel" && layout.0 == 2 {
                // With two processes there is no third one to take a
                // channel from: the bug cannot happen.
                continue;
            }
            let (seed, failure) = first_failure(bug, AppName::MarketSpread, layout, 1);
            let first: String = failure.chars().take(160).collect();
            eprintln!("{bug} at {layout:?}: caught at seed {seed}: {first}");
        }
    }
    assert!(PlantedBugs::named("gremlin").is_err());
}

/// The network's new faults run, are counted, and the run still finishes.
#[test]
fn corrupt_wrong_secret_and_forge_are_survived_and_counted() {
    let mut total = verity_verify::sim::SimStats::default();
    for seed in 0..20 {
        let config = SimConfig {
            faults: Faults::parse("corrupt,wrong-secret,forge,cut").unwrap(),
            ..SimConfig::new(AppName::MarketSpread, seed)
        };
        let outcome = run_seed_ok(&config);
        total.merge(&outcome.stats);
    }
    for counter in [
        "fault_corrupt",
        "fault_wrong_secret",
        "fault_forge",
        "handshakes_refused",
        "reconnects",
    ] {
        assert!(total.get(counter) > 0, "{counter}: {total}");
    }
}

#[test]
fn a_broken_dedup_is_caught_within_a_few_seeds() {
    let (_, failure) = first_failure("no-dedup", AppName::SeqWindow, (3, 2), 1);
    assert!(
        // A duplicated control frame is refused by the lifecycle ("unexpected Job");
        // duplicates delivered past the window overflow the consumer's queue.
        failure.contains("duplicated")
            || failure.contains("more than its window unconsumed")
            || failure.contains("invariant")
            || failure.contains("oracle")
            || failure.contains("unexpected"),
        "{failure}"
    );
}

#[test]
fn a_broken_retransmit_is_caught_within_a_few_seeds() {
    let (_, failure) = first_failure("no-retransmit", AppName::SeqWindow, (3, 2), 1);
    assert!(
        failure.contains("liveness") || failure.contains("lost"),
        "{failure}"
    );
}

#[test]
fn replay_command_names_the_seed() {
    let command = SimConfig::new(AppName::Doubler, 42).replay_command();
    assert!(
        command.starts_with("verity sim --app doubler --seed 42 "),
        "{command}"
    );
    assert!(command.ends_with("--trace"));
}

#[test]
fn a_skipped_idle_flush_is_caught() {
    let (_, failure) = first_failure("skip-idle-flush", AppName::MarketSpread, (3, 2), 1);
    assert!(failure.contains("idle shard hold output"), "{failure}");
}

#[test]
fn a_reordering_retry_of_parked_sends_is_caught() {
    for streams in [1, 2] {
        let (_, failure) = first_failure("reorder-parked-retry", AppName::MarketSpread, (3, 2), streams);
        assert!(
            failure.contains("invariant")
                || failure.contains("oracle")
                || failure.contains("interleaving")
                || failure.contains("spurious wakeup"),
            "{failure}"
        );
    }
}

/// Recoveries read deltas over whole snapshots, and remote shards' parts
/// cross in pieces, some of them held up by a full output queue.
#[test]
fn incremental_snapshots_and_part_pieces_really_happen() {
    let mut stats = verity_verify::sim::SimStats::default();
    for seed in 0..40 {
        for app in [AppName::SeqWindow, AppName::Wordcount] {
            let config = SimConfig {
                faults: Faults::parse("crash,delay,cut,pause").unwrap(),
                ..SimConfig::new(app, seed)
            };
            stats.merge(&run_seed_ok(&config).stats);
        }
    }
    for counter in ["deltas_restored", "part_pieces", "part_uploads_resumed"] {
        assert!(stats.get(counter) > 0, "{counter} never happened:\n{stats}");
    }
}

#[test]
fn backpressure_and_dead_letters_really_happen() {
    let mut stats = verity_verify::sim::SimStats::default();
    for seed in 0..20 {
        let outcome = run_seed_ok(&SimConfig::new(AppName::MarketSpread, seed));
        stats.merge(&outcome.stats);
    }
    for counter in [
        "parked_sends",
        "stalled_readers",
        "full_windows",
        "dead_letters",
        "spurious_wakeups",
        "shard_stalls",
    ] {
        assert!(stats.get(counter) > 0, "{counter} never happened:\n{stats}");
    }
}

#[test]
fn two_streams_run_clean_and_replay() {
    for seed in 0..CI_SEEDS {
        let config = SimConfig {
            streams: 2,
            ..SimConfig::new(AppName::MarketSpread, seed)
        };
        let outcome = run_seed_ok(&config);
        if seed < 2 {
            assert_eq!(outcome.trace_hash, run_seed(&config).trace_hash);
            assert!(config.replay_command().contains("--streams 2"));
        }
    }
}

#[test]
fn other_layouts_run_clean() {
    for (processes, workers) in [(1, 1), (1, 3), (2, 1), (4, 1)] {
        for streams in [1, 2] {
            for seed in 0..30 {
                let config = SimConfig {
                    processes,
                    workers,
                    streams,
                    ..SimConfig::new(AppName::MarketSpread, seed)
                };
                run_seed_ok(&config);
            }
        }
    }
}
