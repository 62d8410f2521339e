//! `verity-bench`: engine throughput against a naive single-thread loop over the
//! same pre-loaded input, measured in one run so the machine's noise hits both.
//!
//! Usage: `cargo run --release -p verity-bench -- [--records N] [--repeat R]`

use verity_bench::baseline;

use bytes::Bytes;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use verity_apps::{generate, run_app, AppInput, AppName, AppOptions};
use verity_core::{DeadLetterSpec, Outputs, RunConfig, SinkSpec, SourceSpec};

const DEFAULT_RECORDS: u64 = 10_000_000;
const DEFAULT_REPEAT: usize = 5;
const SEED: u64 = 42;

struct Options {
    records: u64,
    repeat: usize,
    /// Only this app (all when empty).
    app: Option<String>,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        records: DEFAULT_RECORDS,
        repeat: DEFAULT_REPEAT,
        app: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let raw = args.next().ok_or(format!("{name} needs a value"))?;
            raw.parse()
                .map_err(|_| format!("{name}: '{raw}' is not a number"))
        };
        match arg.as_str() {
            "--records" => options.records = value("--records")?,
            "--repeat" => options.repeat = value("--repeat")?.max(1) as usize,
            "--app" => options.app = Some(args.next().ok_or("--app needs a value")?),
            other => {
                return Err(format!(
                    "unknown argument '{other}' (use --records N, --repeat R, --app NAME)"
                ))
            }
        }
    }
    Ok(options)
}

/// Times each runner `repeat` times, taking turns (every runner once, then
/// again), so a noisy spell on the shared machine hits all runners alike rather
/// than one runner's whole block. Returns each runner's median time and what
/// its last run returned.
fn interleaved_medians(repeat: usize, runners: &mut [&mut dyn FnMut() -> u64]) -> Vec<(Duration, u64)> {
    let mut times = vec![Vec::with_capacity(repeat); runners.len()];
    let mut results = vec![0; runners.len()];
    for _ in 0..repeat {
        for (index, runner) in runners.iter_mut().enumerate() {
            let start = Instant::now();
            results[index] = runner();
            times[index].push(start.elapsed());
        }
    }
    times
        .into_iter()
        .zip(results)
        .map(|(mut runs, result)| {
            runs.sort();
            (runs[runs.len() / 2], result)
        })
        .collect()
}

fn engine_run(app: AppName, input: &Bytes, workers: usize) -> u64 {
    let config = RunConfig {
        workers,
        progress: false,
        ..RunConfig::default()
    };
    let outputs = Outputs {
        sink: SinkSpec::Null,
        dead_letter: DeadLetterSpec::Stderr,
    };
    let source = SourceSpec::memory("bench", input.clone());
    let stop = Arc::new(AtomicBool::new(false));
    match run_app(
        app,
        AppInput::Single(source),
        AppOptions::default(),
        &config,
        &outputs,
        stop,
    ) {
        Ok(summary) => summary.records_out,
        Err(e) => {
            eprintln!("verity-bench: {} run failed: {e}", app.name());
            std::process::exit(1);
        }
    }
}

/// A naive single-thread loop over the whole input; returns its output count.
type NaiveLoop = fn(&[u8]) -> u64;

fn main() {
    let options = parse_options().unwrap_or_else(|e| {
        eprintln!("verity-bench: {e}");
        std::process::exit(2);
    });
    println!(
        "# throughput: {} records per run, median of {} interleaved runs, null sink, input pre-loaded in memory",
        options.records, options.repeat
    );
    println!(
        "{:<14} {:<22} {:>10} {:>14} {:>8}",
        "app", "runner", "seconds", "records/s", "ratio"
    );
    let cases: [(AppName, NaiveLoop); 2] = [
        (AppName::Wordcount, baseline::wordcount),
        (AppName::MarketSpread, baseline::market_spread),
    ];
    for (app, naive) in cases {
        if options.app.as_ref().is_some_and(|only| only != app.name()) {
            continue;
        }
        let input = Bytes::from(generate::generate_well_formed(app, options.records, SEED));
        const WORKER_COUNTS: [usize; 2] = [1, 2];
        let mut naive_run = || naive(&input);
        let mut one_worker = || engine_run(app, &input, WORKER_COUNTS[0]);
        let mut two_workers = || engine_run(app, &input, WORKER_COUNTS[1]);
        let timed = interleaved_medians(
            options.repeat,
            &mut [&mut naive_run, &mut one_worker, &mut two_workers],
        );
        let (naive_time, naive_out) = timed[0];
        let row = |runner: &str, time: Duration| {
            let rate = options.records as f64 / time.as_secs_f64();
            let ratio = naive_time.as_secs_f64() / time.as_secs_f64();
            println!(
                "{:<14} {:<22} {:>10.3} {:>14.0} {:>8.2}",
                app.name(),
                runner,
                time.as_secs_f64(),
                rate,
                ratio
            );
        };
        row("naive single-thread", naive_time);
        for (workers, &(time, out)) in WORKER_COUNTS.iter().zip(&timed[1..]) {
            assert_eq!(
                out,
                naive_out,
                "{} at {workers} workers emitted a different count",
                app.name()
            );
            row(&format!("verity workers={workers}"), time);
        }
    }
}
