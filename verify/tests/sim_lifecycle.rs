//! The simulator runs the production cluster lifecycle: process 0 sends each
//! worker the job over the control channels, a worker's shards start only
//! once it arrives, and a seed ends when every process has exited done.

use verity_apps::AppName;
use verity_verify::sim::{run_seed, Faults, SimConfig};

/// A seed with every fault but those that end a run early (`fail`, `stop`):
/// these runs go all the way to the shutdown.
fn traced(seed: u64, processes: u32) -> Vec<String> {
    let config = SimConfig {
        processes,
        trace: true,
        faults: Faults {
            fail: false,
            stop: false,
            ..Faults::all()
        },
        ..SimConfig::new(AppName::Wordcount, seed)
    };
    let outcome = run_seed(&config);
    assert!(outcome.is_ok(), "seed {seed}: {:?}", outcome.failure);
    outcome.trace
}

fn position(trace: &[String], needle: &str) -> usize {
    trace
        .iter()
        .position(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in the trace"))
}

#[test]
fn workers_start_on_the_job_and_every_process_exits_done() {
    for seed in 0..5 {
        let trace = traced(seed, 3);
        for worker in 1..3 {
            let sent = position(&trace, &format!("process 0: control to {worker}: Job("));
            let started = position(&trace, &format!("process {worker}: starts its job"));
            let shutdown = position(&trace, &format!("process 0: control to {worker}: Shutdown"));
            let exited = position(&trace, &format!("process {worker}: exits Done"));
            assert!(
                sent < started && started < shutdown && shutdown < exited,
                "seed {seed} worker {worker}"
            );
        }
        position(&trace, "process 0: exits Done");
        assert!(trace.last().unwrap().contains("every process exited"));
    }
}

#[test]
fn one_process_has_a_lifecycle_too() {
    let trace = traced(1, 1);
    position(&trace, "process 0: starts its job");
    position(&trace, "process 0: exits Done");
}
