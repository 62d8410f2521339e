//! `verity sim`: runs the deterministic simulator over a range of seeds and
//! reports each failure with the command that replays it.

use anyhow::{bail, Result};
use std::time::Instant;
use verity_apps::AppName;
use verity_verify::sim::{run_seed, Faults, PlantedBugs, SimConfig};

pub struct SimArgs {
    pub app: AppName,
    pub seeds: std::ops::Range<u64>,
    pub processes: u32,
    pub workers: u32,
    pub faults: Faults,
    pub sim_seconds: u64,
    pub records: u64,
    pub trace: bool,
    pub bugs: PlantedBugs,
}

/// `A..B` (B excluded), `A..=B`, or one seed `A`.
pub fn parse_seeds(text: &str) -> Result<std::ops::Range<u64>, String> {
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("`{s}` is not a seed number"))
    };
    let range = if let Some((a, b)) = text.split_once("..=") {
        number(a)?..number(b)?.saturating_add(1)
    } else if let Some((a, b)) = text.split_once("..") {
        number(a)?..number(b)?
    } else {
        let seed = number(text)?;
        seed..seed.saturating_add(1)
    };
    if range.is_empty() {
        return Err(format!("seed range `{text}` is empty"));
    }
    Ok(range)
}

pub fn run(args: SimArgs) -> Result<i32> {
    if args.trace && args.seeds.end - args.seeds.start > 1 {
        bail!("--trace prints one seed's events: give --seed S");
    }
    let started = Instant::now();
    let (mut ok, mut failed) = (0u64, 0u64);
    for seed in args.seeds.clone() {
        let config = SimConfig {
            processes: args.processes,
            workers: args.workers,
            faults: args.faults,
            sim_seconds: args.sim_seconds,
            records: args.records,
            trace: args.trace,
            bugs: args.bugs,
            ..SimConfig::new(args.app, seed)
        };
        let outcome = run_seed(&config);
        for line in &outcome.trace {
            println!("{line}");
        }
        if args.trace {
            println!(
                "trace hash: {:016x} ({} events)",
                outcome.trace_hash, outcome.events
            );
        }
        match &outcome.failure {
            None => ok += 1,
            Some(failure) => {
                failed += 1;
                eprintln!("verity sim: seed {seed} FAILED: {failure}");
                eprintln!("  replay: {}", config.replay_command());
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let seeds = args.seeds.end - args.seeds.start;
    eprintln!(
        "verity sim: {} P={} W={} faults={}: {seeds} seeds, {ok} ok, {failed} failed in {wall:.2} s \
         ({:.0} seeds/min, {} simulated s each)",
        args.app.name(),
        args.processes,
        args.workers,
        args.faults,
        seeds as f64 / wall.max(1e-9) * 60.0,
        args.sim_seconds
    );
    Ok(if failed == 0 { 0 } else { 1 })
}
