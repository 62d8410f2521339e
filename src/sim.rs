//! `verity sim`: runs the deterministic simulator over a range of seeds and
//! reports each failure with the command that replays it.

use anyhow::{bail, Result};
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use verity_verify::sim::{run_seed, SimConfig, SimStats};

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

/// How often a long seed range reports how far it got (on a terminal only).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Runs `template` once per seed of `seeds`; exit code 1 if any failed. With
/// `show_stats`, prints the rare-path counters summed over the seeds.
pub fn run(template: &SimConfig, seeds: std::ops::Range<u64>, show_stats: bool) -> Result<i32> {
    if template.trace && seeds.end - seeds.start > 1 {
        bail!("--trace prints one seed's events: give --seed S");
    }
    let started = Instant::now();
    let show_progress = !template.trace && std::io::stderr().is_terminal();
    let mut last_progress = started;
    let count = seeds.end - seeds.start;
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut stats = SimStats::default();
    for seed in seeds.clone() {
        if show_progress && last_progress.elapsed() >= PROGRESS_INTERVAL {
            last_progress = Instant::now();
            eprint!("\rverity sim: {}/{count} seeds, {failed} failed", ok + failed);
        }
        let config = SimConfig {
            seed,
            ..template.clone()
        };
        let outcome = run_seed(&config);
        stats.merge(&outcome.stats);
        for line in &outcome.trace {
            println!("{line}");
        }
        if config.trace {
            println!(
                "trace hash: {:016x} ({} events)",
                outcome.trace_hash, outcome.events
            );
        }
        match &outcome.failure {
            None => ok += 1,
            Some(failure) => {
                failed += 1;
                if show_progress {
                    eprintln!();
                }
                eprintln!("verity sim: seed {seed} FAILED: {failure}");
                eprintln!("  replay: {}", config.replay_command());
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    if show_progress && wall >= PROGRESS_INTERVAL.as_secs_f64() {
        eprintln!();
    }
    eprintln!(
        "verity sim: {} P={} W={} faults={}: {count} seeds, {ok} ok, {failed} failed in {wall:.2} s \
         ({:.0} seeds/min, {} simulated s each)",
        template.app.name(),
        template.processes,
        template.workers,
        template.faults,
        count as f64 / wall.max(1e-9) * 60.0,
        template.sim_seconds
    );
    if show_stats {
        print!("{stats}");
    }
    Ok(if failed == 0 { 0 } else { 1 })
}
