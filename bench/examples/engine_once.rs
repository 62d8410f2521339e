//! Runs one app once on the threaded runtime over pre-loaded generated input
//! (null sink) and prints wall time, for profiling the runtime with `perf` or
//! `time`.
//!
//! Usage: `cargo run --release -p verity-bench --example engine_once -- APP WORKERS [RECORDS]`

use bytes::Bytes;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;
use verity_apps::{generate, run_app, AppInput, AppName, AppOptions};
use verity_core::{DeadLetterSpec, Outputs, RunConfig, SinkSpec, SourceSpec};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: engine_once APP WORKERS [RECORDS]";
    let app = args.get(1).and_then(|a| AppName::from_name(a)).expect(usage);
    let workers: usize = args.get(2).and_then(|w| w.parse().ok()).expect(usage);
    let records: u64 = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(4_000_000);
    let input = Bytes::from(generate::generate_all(app, records, 42));
    let config = RunConfig {
        workers,
        progress: false,
        ..RunConfig::default()
    };
    let outputs = Outputs {
        sink: SinkSpec::Null,
        dead_letter: DeadLetterSpec::Stderr,
    };
    let start = Instant::now();
    let source = AppInput::Single(SourceSpec::memory("bench", input));
    let stop = Arc::new(AtomicBool::new(false));
    let summary = run_app(app, source, AppOptions::default(), &config, &outputs, stop).expect("run");
    println!(
        "{} workers={workers}: {records} records in {:?}, {} out",
        app.name(),
        start.elapsed(),
        summary.records_out
    );
}
