//! `verity bench`: a reference app on its built-in generator (well-formed
//! lines only), as fast as it goes (throughput) or paced at a fixed rate
//! (latency).
//!
//! Latency is measured open-loop: event `n` (line `n` of the generator) is
//! *intended* to enter at `start + (n - 1) / rate`, whether or not the engine
//! keeps up, and its latency runs from that instant to the moment the sink
//! is handed the output line it produced (the sink gets each line's input
//! id). A stall therefore shows in every event it delays, not only in the one
//! that met it: coordinated omission is not hidden. The paced source hands
//! on what is due once its oldest due event has waited `PACE_LINGER_MAX` (or
//! a chunk's worth is due), so a chunk closes on time as well as on size;
//! shards flush their output whenever their input runs dry, which below
//! saturation is between chunks, and at the latest after
//! `ShardLimits::output_linger_max_us`.
//!
//! With `processes > 1` the run is a local cluster on loopback, as `verity
//! run --processes` starts it: this process is process 0 (the generator and
//! the sink), so latency is measured where the output arrives, and workers
//! send each output line's input id with it. With `exactly_once` the run
//! takes checkpoints (into a temporary state dir unless one is given) with
//! exactly-once delivery, and the report says how many and how long the
//! shards stalled for their snapshots.

use anyhow::Context as _;
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use verity_apps::{generate, run_app, AppInput, AppName, AppOptions};
use verity_core::connector::SinkConnector;
use verity_core::source::LineGenerator;
use verity_core::step_timing::{Step, StepFigures, StepTimings};
use verity_core::{
    AuditSettings, CheckpointSettings, CommitId, CustomSink, DeadLetterSpec, Delivery, MsgId, Outputs,
    RunConfig, RunSummary, SinkError, SinkSpec, SourceSpec,
};

/// The longest the paced source sleeps before it looks again for due events
/// (it wakes earlier when the next one is due sooner).
pub const PACE_WAIT_MAX: Duration = Duration::from_millis(1);
/// How long the paced source lets its oldest due event wait for more to
/// join its chunk (a chunk closes at this bound or when full): at high
/// rates a chunk per event or two would keep the reader thread spinning on
/// a core the shards need, at the cost of a frame and a wake-up per chunk.
/// A bound on the latency it adds, measured from each event's intended entry.
pub const PACE_LINGER_MAX: Duration = Duration::from_micros(100);
/// Waits up to this long the paced source spends yielding rather than
/// sleeping: a sleeping thread on a busy machine may wake a scheduler
/// slice (milliseconds) late, and every event due meanwhile would count
/// that as the engine's latency.
pub const PACE_SPIN_MAX: Duration = Duration::from_micros(200);
/// Latencies above this (an hour, in µs) are recorded as this.
const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Significant decimal digits the histogram keeps (0.1% resolution).
const HISTOGRAM_SIGFIG: u8 = 3;
/// The generator's seed (the same input every run).
const SEED: u64 = 42;

/// What to run.
#[derive(Clone)]
pub struct BenchOptions {
    pub app: AppName,
    pub events: u64,
    pub workers: usize,
    /// Events per second (latency mode); `None`: as fast as it goes.
    pub rate: Option<u64>,
    pub audit: Option<AuditSettings>,
    pub pin_cores: bool,
    /// Processes of the local cluster (1: this process alone).
    pub processes: u32,
    /// The network settings of a cluster run (`processes > 1`).
    pub net: crate::cluster::NetOptions,
    /// Checkpoints on, exactly-once delivery.
    pub exactly_once: bool,
    /// Where checkpoints go with `exactly_once` (`None`: a temporary
    /// directory, removed at the end).
    pub state_dir: Option<PathBuf>,
    pub checkpoint_interval_ms: u64,
}

/// `--checkpoint-interval-ms` of `--exactly-once` unless given.
pub const EXACTLY_ONCE_INTERVAL_MS: u64 = 1_000;

/// One shard's records and step timings, at the end of a run (as the
/// shard reported them when it finished, remote shards included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardFigures {
    /// The global shard index (process `p` holds `p * workers..(p + 1) * workers`).
    pub shard: u32,
    pub process: u32,
    pub records_in: u64,
    pub records_out: u64,
    pub timings: StepTimings,
}

/// The checkpoints of an `exactly_once` run.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckpointFigures {
    pub interval_ms: u64,
    /// Checkpoints completed (process 0's count).
    pub taken: u64,
    /// Snapshot steps of process 0's shards, and their stalls in µs.
    pub stalls: u64,
    pub stall_p50_us: u64,
    pub stall_p99_us: u64,
    pub stall_max_us: u64,
}

/// What a run measured.
pub struct BenchReport {
    pub app: AppName,
    pub events: u64,
    /// Shards per process.
    pub workers: usize,
    pub processes: u32,
    pub wall: Duration,
    pub summary: RunSummary,
    pub latency: Option<Latency>,
    /// Input records per second over the run, every `SAMPLE_INTERVAL`:
    /// (seconds since the start, rate).
    pub timeline: Vec<(f64, f64)>,
    /// Each shard's records in and out and its step timings, at the end:
    /// every shard of every process.
    pub per_shard: Vec<ShardFigures>,
    /// `exactly_once`: its checkpoints.
    pub checkpoints: Option<CheckpointFigures>,
}

/// How often a run's input rate is sampled for the timeline.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// Each `name{labels} value` sample of a scrape.
fn samples<'a>(scrape: &'a str, name: &'a str) -> impl Iterator<Item = (String, u64)> + 'a {
    scrape.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, value) = rest.split_once("} ")?;
        Some((labels.to_string(), value.parse::<f64>().ok()? as u64))
    })
}

/// A sample without labels (`name value`), or with exactly `labels`.
fn sample(scrape: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = match labels {
        "" => format!("{name} "),
        labels => format!("{name}{{{labels}}} "),
    };
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
}

/// Each shard's figures from the run's summary (every shard of every
/// process, by global index).
fn shard_figures(summary: &RunSummary, workers: usize) -> Vec<ShardFigures> {
    summary
        .per_shard
        .iter()
        .map(|(shard, counters)| ShardFigures {
            shard: *shard,
            process: *shard / workers.max(1) as u32,
            records_in: counters.records_in,
            records_out: counters.records_out,
            timings: counters.timings,
        })
        .collect()
}

/// One step's figures as text: records, units, time, and the units'
/// durations (bucket bounds).
fn step_text(step: Step, figures: &StepFigures) -> String {
    let h = &figures.latency;
    let unit = match step {
        Step::Parse => "chunks",
        Step::Apply => "batches",
        Step::Output => "buffers",
    };
    let rate = match step {
        // The output step is a wait, not work: no rate over it.
        Step::Output => String::new(),
        _ => format!(
            " ({:.0} records/s busy)",
            figures.records as f64 / (h.sum_us as f64 / 1e6).max(1e-9)
        ),
    };
    format!(
        "{} {} records in {} {unit}, {:.3} s{rate}, per unit p50 <= {} µs, p99 <= {} µs, max <= {} µs",
        step.name(),
        figures.records,
        figures.units(),
        h.sum_us as f64 / 1e6,
        h.quantile_us(0.5),
        h.quantile_us(0.99),
        h.quantile_us(1.0)
    )
}

/// One step's figures as a JSON object.
fn step_json(figures: &StepFigures) -> String {
    let h = &figures.latency;
    let buckets: Vec<String> = h.counts.iter().map(u64::to_string).collect();
    format!(
        "{{\"records\": {}, \"units\": {}, \"sum_us\": {}, \"unit_p50_us\": {}, \"unit_p99_us\": {}, \"unit_max_us\": {}, \"buckets\": [{}]}}",
        figures.records,
        figures.units(),
        h.sum_us,
        h.quantile_us(0.5),
        h.quantile_us(0.99),
        h.quantile_us(1.0),
        buckets.join(", ")
    )
}

/// Every step of `timings` as a JSON object keyed by step name.
fn steps_json(timings: &StepTimings) -> String {
    let steps: Vec<String> = Step::ALL
        .iter()
        .map(|&step| format!("\"{}\": {}", step.name(), step_json(timings.step(step))))
        .collect();
    format!("{{{}}}", steps.join(", "))
}

/// The checkpoints a scrape of process 0 shows.
fn checkpoint_figures(scrape: &str, interval_ms: u64) -> CheckpointFigures {
    let us = |quantile: &str| {
        let seconds = sample(
            scrape,
            "verity_checkpoint_stall_seconds",
            &format!("quantile=\"{quantile}\""),
        );
        (seconds.unwrap_or(0.0) * 1e6).round() as u64
    };
    CheckpointFigures {
        interval_ms,
        taken: sample(scrape, "verity_checkpoint_duration_seconds_count", "").unwrap_or(0.0) as u64,
        stalls: sample(scrape, "verity_checkpoint_stall_seconds_count", "").unwrap_or(0.0) as u64,
        stall_p50_us: us("0.5"),
        stall_p99_us: us("0.99"),
        stall_max_us: us("1"),
    }
}

/// End-to-end latencies of a paced run, in microseconds.
pub struct Latency {
    pub rate: u64,
    pub histogram: Histogram<u64>,
    /// From the first event's entry to the sink's last output: the span
    /// the paced events took (without process start and shutdown).
    pub span: Duration,
}

impl Latency {
    /// Events per second over the paced span.
    pub fn achieved(&self, events: u64) -> f64 {
        events as f64 / self.span.as_secs_f64().max(1e-9)
    }
}

/// What the latency sink gathers.
struct Recorded {
    histogram: Histogram<u64>,
    last_write: Option<Instant>,
}

impl BenchReport {
    /// Every shard's step timings together.
    pub fn all_steps(&self) -> StepTimings {
        let mut all = StepTimings::default();
        for f in &self.per_shard {
            all.merge(&f.timings);
        }
        all
    }

    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Shards over all processes.
    pub fn total_workers(&self) -> usize {
        self.workers * self.processes as usize
    }

    /// The summary a user reads: throughput, then (latency mode) the
    /// percentiles.
    pub fn text(&self) -> String {
        let mut out = format!(
            "verity bench {}: {} events, {} workers{}{} in {:.3} s: {:.0} events/s ({:.0} per worker); {} outputs, {} dead-lettered\n",
            self.app.name(),
            self.events,
            self.workers,
            match self.processes {
                1 => String::new(),
                p => format!(" in each of {p} processes"),
            },
            if self.checkpoints.is_some() { ", exactly once" } else { "" },
            self.wall.as_secs_f64(),
            self.events_per_s(),
            self.events_per_s() / self.total_workers() as f64,
            self.summary.records_out,
            self.summary.dead_lettered,
        );
        if !self.per_shard.is_empty() {
            let wall = self.wall.as_secs_f64().max(1e-9);
            let shards: Vec<String> = self
                .per_shard
                .iter()
                .map(|f| {
                    format!(
                        "{}{}: {} in ({:.0}/s), {} out",
                        f.shard,
                        match self.processes {
                            1 => String::new(),
                            _ => format!(" (process {})", f.process),
                        },
                        f.records_in,
                        f.records_in as f64 / wall,
                        f.records_out
                    )
                })
                .collect();
            let _ = writeln!(out, "per shard: {}", shards.join("; "));
            let all = self.all_steps();
            for step in Step::ALL {
                let _ = writeln!(out, "step {}", step_text(step, all.step(step)));
                for f in &self.per_shard {
                    let _ = writeln!(
                        out,
                        "  shard {}: {}",
                        f.shard,
                        step_text(step, f.timings.step(step))
                    );
                }
            }
        }
        if let Some(c) = &self.checkpoints {
            let _ = writeln!(
                out,
                "checkpoints every {} ms: {} taken; snapshot stalls ({}): p50 {} µs, p99 {} µs, max {} µs",
                c.interval_ms, c.taken, c.stalls, c.stall_p50_us, c.stall_p99_us, c.stall_max_us
            );
        }
        if let Some(latency) = &self.latency {
            let h = &latency.histogram;
            let _ = writeln!(
                out,
                "latency at {} events/s (open loop, {} outputs): p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, p99.99 {} µs, max {} µs",
                latency.rate,
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.value_at_quantile(0.9999),
                h.max()
            );
        }
        out
    }

    /// The report as JSON, with stable field names (`events_per_s`,
    /// `p99_us`, ...; latency fields only in latency mode).
    pub fn json(&self) -> String {
        let mut fields = vec![
            format!("\"app\": \"{}\"", self.app.name()),
            format!("\"events\": {}", self.events),
            format!("\"workers\": {}", self.workers),
            format!("\"processes\": {}", self.processes),
            format!("\"exactly_once\": {}", self.checkpoints.is_some()),
            format!("\"wall_s\": {:.6}", self.wall.as_secs_f64()),
            format!("\"events_per_s\": {:.1}", self.events_per_s()),
            format!(
                "\"events_per_s_per_worker\": {:.1}",
                self.events_per_s() / self.total_workers() as f64
            ),
            format!("\"outputs\": {}", self.summary.records_out),
            format!("\"dead_lettered\": {}", self.summary.dead_lettered),
        ];
        let wall = self.wall.as_secs_f64().max(1e-9);
        let shards: Vec<String> = self
            .per_shard
            .iter()
            .map(|f| {
                format!(
                    "{{\"shard\": {}, \"process\": {}, \"records_in\": {}, \"records_out\": {}, \"records_in_per_s\": {:.1}, \"steps\": {}}}",
                    f.shard,
                    f.process,
                    f.records_in,
                    f.records_out,
                    f.records_in as f64 / wall,
                    steps_json(&f.timings)
                )
            })
            .collect();
        fields.push(format!("\"per_shard\": [{}]", shards.join(", ")));
        fields.push(format!("\"per_step\": {}", steps_json(&self.all_steps())));
        if let Some(c) = &self.checkpoints {
            fields.push(format!("\"checkpoint_interval_ms\": {}", c.interval_ms));
            fields.push(format!("\"checkpoints\": {}", c.taken));
            fields.push(format!("\"checkpoint_stalls\": {}", c.stalls));
            fields.push(format!("\"checkpoint_stall_p50_us\": {}", c.stall_p50_us));
            fields.push(format!("\"checkpoint_stall_p99_us\": {}", c.stall_p99_us));
            fields.push(format!("\"checkpoint_stall_max_us\": {}", c.stall_max_us));
        }
        if let Some(latency) = &self.latency {
            let h = &latency.histogram;
            fields.push(format!("\"rate\": {}", latency.rate));
            fields.push(format!(
                "\"achieved_events_per_s\": {:.1}",
                latency.achieved(self.events)
            ));
            fields.push(format!("\"latency_samples\": {}", h.len()));
            for (name, quantile) in [
                ("p50_us", 0.5),
                ("p90_us", 0.9),
                ("p99_us", 0.99),
                ("p999_us", 0.999),
                ("p9999_us", 0.9999),
            ] {
                fields.push(format!("\"{name}\": {}", h.value_at_quantile(quantile)));
            }
            fields.push(format!("\"max_us\": {}", h.max()));
            fields.push(format!("\"mean_us\": {:.1}", h.mean()));
        }
        format!("{{\n  {}\n}}\n", fields.join(",\n  "))
    }
}

/// Runs the benchmark.
pub fn run(options: &BenchOptions) -> anyhow::Result<BenchReport> {
    let (app, events) = (options.app, options.events);
    let epoch: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let source = match options.rate {
        None => SourceSpec::generated("generator", move || {
            generate::well_formed_generator(app, events, SEED)
        }),
        Some(rate) => {
            let epoch = Arc::clone(&epoch);
            SourceSpec::generated("generator", move || {
                Box::new(Paced {
                    inner: generate::well_formed_generator(app, events, SEED),
                    rate: rate as f64,
                    epoch: Arc::clone(&epoch),
                    produced: 0,
                })
            })
        }
    };
    let recorded = Arc::new(Mutex::new(Recorded {
        histogram: new_histogram(),
        last_write: None,
    }));
    let sink = match options.rate {
        None => SinkSpec::Null,
        Some(rate) => {
            let (epoch, recorded) = (Arc::clone(&epoch), Arc::clone(&recorded));
            SinkSpec::Custom(CustomSink::new("latency", move |_context| {
                Ok(Box::new(LatencySink {
                    epoch: Arc::clone(&epoch),
                    nanos_per_event: 1e9 / rate as f64,
                    recorded: Arc::clone(&recorded),
                }) as Box<dyn SinkConnector>)
            }))
        }
    };
    let outputs = Outputs {
        sink,
        dead_letter: DeadLetterSpec::Stderr,
    };
    let metrics = verity_core::metrics::Metrics::new();
    // Removed when the run ends (however it ends).
    let mut temporary_state = None;
    let checkpoints = if options.exactly_once {
        let state_dir = match &options.state_dir {
            Some(dir) => {
                let empty = std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none());
                if !empty {
                    anyhow::bail!(
                        "--state-dir {} is not empty: a benchmark starts from scratch; give a new or empty directory",
                        dir.display()
                    );
                }
                dir.clone()
            }
            None => {
                let dir = TemporaryDir::create()?;
                let path = dir.0.clone();
                temporary_state = Some(dir);
                path
            }
        };
        Some(CheckpointSettings {
            state_dir,
            interval_ms: options.checkpoint_interval_ms,
            retained: verity_core::checkpoint::DEFAULT_RETAINED,
            recover: false,
            job: format!("bench {}; {} events; rate {:?}", app.name(), events, options.rate),
            delivery: Delivery::ExactlyOnce,
        })
    } else {
        None
    };
    let config = RunConfig {
        workers: options.workers,
        pin_cores: options.pin_cores,
        progress: false,
        audit: options.audit.clone(),
        metrics: Some(Arc::clone(&metrics)),
        checkpoints,
        ..RunConfig::default()
    };
    let started = Instant::now();
    let (stop_sampling, sampled) = std::sync::mpsc::channel::<()>();
    let sampler = {
        let metrics = Arc::clone(&metrics);
        std::thread::spawn(move || {
            // From (0, 0), then the rate over each interval, the last one
            // (cut short by the run's end) included.
            let mut timeline = vec![(0.0, 0.0)];
            let (mut before, mut before_at) = (0, 0.0);
            loop {
                let ended = !matches!(
                    sampled.recv_timeout(SAMPLE_INTERVAL),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                );
                // What the source dealt (process 0 reads every source), so
                // a cluster's timeline counts every process's input.
                let total: u64 = samples(&metrics.render(), "verity_source_records_total")
                    .map(|(_, v)| v)
                    .sum();
                let at = started.elapsed().as_secs_f64();
                timeline.push((
                    at,
                    total.saturating_sub(before) as f64 / (at - before_at).max(1e-6),
                ));
                (before, before_at) = (total, at);
                if ended {
                    break timeline;
                }
            }
        })
    };
    let summary = if options.processes > 1 {
        run_cluster(options, source, &config, &outputs)
    } else {
        run_app(
            app,
            AppInput::Single(source),
            AppOptions::default(),
            &config,
            &outputs,
            Arc::new(AtomicBool::new(false)),
        )
        .map_err(anyhow::Error::from)
    };
    let wall = started.elapsed();
    drop(stop_sampling);
    let timeline = sampler.join().unwrap_or_default();
    let summary = summary.with_context(|| format!("{} benchmark failed", app.name()))?;
    drop(temporary_state);
    let scrape = metrics.render();
    let per_shard = shard_figures(&summary, options.workers);
    let checkpoints = options
        .exactly_once
        .then(|| checkpoint_figures(&scrape, options.checkpoint_interval_ms));
    let latency = options.rate.map(|rate| {
        let mut recorded = recorded.lock().unwrap_or_else(|p| p.into_inner());
        let span = match (epoch.get(), recorded.last_write) {
            (Some(&start), Some(last)) => last.saturating_duration_since(start),
            _ => wall,
        };
        Latency {
            rate,
            histogram: std::mem::replace(&mut recorded.histogram, new_histogram()),
            span,
        }
    });
    Ok(BenchReport {
        app,
        events,
        workers: options.workers,
        processes: options.processes,
        wall,
        summary,
        latency,
        timeline,
        per_shard,
        checkpoints,
    })
}

/// Runs the benchmark as process 0 of a local cluster of
/// `options.processes` on loopback (as `verity run --processes`).
fn run_cluster(
    options: &BenchOptions,
    source: SourceSpec,
    config: &RunConfig,
    outputs: &Outputs,
) -> anyhow::Result<RunSummary> {
    use crate::cluster::{run_leader_process, JobSpec, LocalCluster};
    let (local, net) = LocalCluster::spawn(
        options.processes,
        options.workers as u32,
        &options.net,
        options.pin_cores,
        options.audit.as_ref(),
    )?;
    let job = JobSpec {
        app: options.app,
        options: AppOptions::default(),
        split_input: false,
        batch_max: config.limits.batch_max,
        queue_depth_batches: config.queue_depth_batches,
        discard_output: outputs.sink == SinkSpec::Null,
        // The latency sink reads each line's input id.
        output_ids: options.rate.is_some(),
        checkpoints: None,
        spread_sources: Vec::new(),
    };
    let summary = run_leader_process(
        &local.file,
        &net,
        &job,
        AppInput::Single(source),
        config,
        outputs,
        &AtomicBool::new(false),
        Some(&local),
    )?;
    local.join();
    Ok(summary)
}

/// A state dir of its own for an `exactly_once` run, removed on drop.
struct TemporaryDir(PathBuf);

impl TemporaryDir {
    fn create() -> anyhow::Result<TemporaryDir> {
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random)
            .map_err(|e| anyhow::anyhow!("no random source for a temporary state dir: {e}"))?;
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let path = std::env::temp_dir().join(format!("verity-bench-state-{}-{suffix}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TemporaryDir(path))
    }
}

impl Drop for TemporaryDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The loads `--sweep` runs at, as fractions of the measured maximum.
pub const SWEEP_LOADS: [f64; 5] = [0.10, 0.25, 0.50, 0.75, 0.90];
/// A paced run keeps up when it takes in at least this share of its rate.
const SWEEP_KEEPS_UP: f64 = 0.95;
/// ... and its latency is stable while its p99 stays within this factor of
/// the p99 at the lowest load.
const SWEEP_P99_FACTOR: u64 = 10;

/// `--sweep`: the maximum throughput, then latency at each of `SWEEP_LOADS`.
pub struct Sweep {
    pub max: BenchReport,
    pub runs: Vec<BenchReport>,
}

impl Sweep {
    /// Whether run `index` kept up with its rate and its p99 stayed within
    /// `SWEEP_P99_FACTOR` of the lowest load's.
    pub fn is_stable(&self, index: usize) -> bool {
        let run = &self.runs[index];
        let (Some(latency), Some(base)) = (&run.latency, self.runs.first().and_then(|r| r.latency.as_ref()))
        else {
            return false;
        };
        let kept_up = latency.achieved(run.events) >= SWEEP_KEEPS_UP * latency.rate as f64;
        let p99 = |l: &Latency| l.histogram.value_at_quantile(0.99);
        kept_up && p99(latency) <= SWEEP_P99_FACTOR * p99(base).max(1)
    }

    /// The highest rate whose run was stable, and every run below it too.
    pub fn sustainable(&self) -> Option<u64> {
        (0..self.runs.len())
            .take_while(|&i| self.is_stable(i))
            .last()
            .and_then(|i| self.runs[i].latency.as_ref().map(|l| l.rate))
    }

    pub fn text(&self) -> String {
        let mut out = self.max.text();
        let _ = writeln!(
            out,
            "{:>6} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9}  stable",
            "load", "rate/s", "achieved/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs"
        );
        for (index, (run, load)) in self.runs.iter().zip(SWEEP_LOADS).enumerate() {
            let Some(latency) = &run.latency else { continue };
            let h = &latency.histogram;
            let _ = writeln!(
                out,
                "{:>5.0}% {:>12} {:>12.0} {:>9} {:>9} {:>9} {:>9}  {}",
                load * 100.0,
                latency.rate,
                latency.achieved(run.events),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
                if self.is_stable(index) { "yes" } else { "no" }
            );
        }
        let _ = match self.sustainable() {
            Some(rate) => writeln!(
                out,
                "sustainable throughput: {rate} events/s (kept up, p99 within {SWEEP_P99_FACTOR}x of the lowest load's)"
            ),
            None => writeln!(out, "sustainable throughput: none of the loads was stable"),
        };
        out
    }

    pub fn json(&self) -> String {
        let runs: Vec<String> = self.runs.iter().map(|run| indent(&run.json())).collect();
        let sustainable = self.sustainable().map_or("null".to_string(), |r| r.to_string());
        format!(
            "{{\n  \"max\": {},\n  \"sweep\": [\n    {}\n  ],\n  \"sustainable_events_per_s\": {sustainable}\n}}\n",
            indent(&self.max.json()),
            runs.join(",\n    ")
        )
    }
}

/// A JSON object's text, indented one level deeper (no trailing newline).
fn indent(json: &str) -> String {
    json.trim_end().replace('\n', "\n  ")
}

/// Runs `--sweep`: throughput first, then each load of it in turn.
pub fn sweep(options: &BenchOptions) -> anyhow::Result<Sweep> {
    let max = run(&BenchOptions {
        rate: None,
        ..options.clone()
    })?;
    let mut runs = Vec::new();
    for load in SWEEP_LOADS {
        let rate = ((max.events_per_s() * load) as u64).max(1);
        runs.push(run(&BenchOptions {
            rate: Some(rate),
            ..options.clone()
        })?);
    }
    Ok(Sweep { max, runs })
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, HISTOGRAM_SIGFIG).expect("valid histogram bounds")
}

/// A generator that hands on each line only once it is due: line `n` at
/// `epoch + (n - 1) / rate` (the epoch is the first call).
struct Paced {
    inner: Box<dyn LineGenerator>,
    rate: f64,
    epoch: Arc<OnceLock<Instant>>,
    produced: u64,
}

impl LineGenerator for Paced {
    fn write_lines(&mut self, out: &mut Vec<u8>, lines_max: usize) -> usize {
        let start = *self.epoch.get_or_init(Instant::now);
        loop {
            // Lines due by now: line n is due at (n - 1) / rate.
            let now = start.elapsed();
            let due = (now.as_secs_f64() * self.rate) as u64 + 1;
            let ready = due.saturating_sub(self.produced).min(lines_max as u64);
            // The next line to hand on (the oldest due, if any) is due here.
            let oldest_due = Duration::from_secs_f64(self.produced as f64 / self.rate);
            let lingered = now.saturating_sub(oldest_due);
            if ready > 0 && (ready == lines_max as u64 || lingered >= PACE_LINGER_MAX) {
                let wrote = self.inner.write_lines(out, ready as usize);
                self.produced += wrote as u64;
                return wrote;
            }
            let wait = match ready {
                0 => oldest_due.saturating_sub(now).min(PACE_WAIT_MAX),
                _ => PACE_LINGER_MAX - lingered,
            };
            if wait <= PACE_SPIN_MAX {
                std::thread::yield_now();
            } else {
                std::thread::sleep(wait);
            }
        }
    }
}

/// Records, for every output line, how long after its input's intended
/// entry the sink got it.
struct LatencySink {
    epoch: Arc<OnceLock<Instant>>,
    nanos_per_event: f64,
    recorded: Arc<Mutex<Recorded>>,
}

impl SinkConnector for LatencySink {
    fn wants_ids(&self) -> bool {
        true
    }

    fn write(&mut self, _lines: &[u8], ids: &[MsgId]) -> Result<(), SinkError> {
        let now = Instant::now();
        // An output line implies its input was generated, which set the epoch.
        let Some(&start) = self.epoch.get() else {
            return Ok(());
        };
        let mut recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        recorded.last_write = Some(now);
        let histogram = &mut recorded.histogram;
        // Lines of `on_end` carry the default id (sequence 0): no input's.
        for id in ids.iter().filter(|id| id.seq > 0) {
            let intended = start + Duration::from_nanos(((id.seq - 1) as f64 * self.nanos_per_event) as u64);
            let latency_us = now.saturating_duration_since(intended).as_micros() as u64;
            histogram.saturating_record(latency_us.max(1));
        }
        Ok(())
    }

    fn commit(&mut self, _upto: CommitId) -> Result<(), SinkError> {
        Ok(())
    }
}

/// The histogram as HdrHistogram's percentile distribution (`.hgrm`, the
/// format of `outputPercentileDistribution` that HdrHistogram's plotters
/// read), values in milliseconds.
pub fn hgrm(histogram: &Histogram<u64>) -> String {
    const TICKS_PER_HALF_DISTANCE: u32 = 5;
    let ms = |us: f64| us / 1000.0;
    let mut out = format!(
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for step in histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += step.count_since_last_iteration();
        let quantile = step.quantile_iterated_to();
        let value = ms(step.value_iterated_to() as f64);
        if quantile < 1.0 {
            let _ = writeln!(
                out,
                "{value:12.3} {quantile:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - quantile)
            );
        } else {
            let _ = writeln!(out, "{value:12.3} {quantile:2.12} {total:10}");
        }
    }
    // Sub-buckets per bucket: the power of two above 2 * 10^sigfig.
    let sub_buckets = (2 * 10u64.pow(HISTOGRAM_SIGFIG as u32)).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        ms(histogram.mean()),
        ms(histogram.stdev())
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        ms(histogram.max() as f64),
        histogram.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        sub_buckets
    );
    out
}

/// Writes `text` to `path`, creating its directory.
pub fn write_file(path: &PathBuf, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_lists_percentiles_with_cumulative_counts_and_the_footer() {
        let mut h = new_histogram();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        let text = hgrm(&h);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("Value") && lines[0].contains("1/(1-Percentile)"));
        let last_row = lines
            .iter()
            .rev()
            .find(|l| !l.starts_with('#') && !l.is_empty())
            .unwrap();
        let fields: Vec<&str> = last_row.split_whitespace().collect();
        assert_eq!(fields[0], "1.000", "the max, 1000 µs in ms");
        assert_eq!(fields[2], "1000", "every value counted by the last row");
        assert!(
            text.contains("#[Max     =        1.000, Total count    =         1000]"),
            "{text}"
        );
        // Cumulative counts never decrease.
        let counts: Vec<u64> = lines[2..]
            .iter()
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    }

    #[test]
    fn the_paced_generator_hands_on_only_what_is_due() {
        let epoch = Arc::new(OnceLock::new());
        let mut paced = Paced {
            inner: generate::well_formed_generator(AppName::Doubler, 1_000_000, SEED),
            rate: 1000.0,
            epoch: Arc::clone(&epoch),
            produced: 0,
        };
        let mut out = Vec::new();
        let first = paced.write_lines(&mut out, 1_000_000);
        assert!(first >= 1);
        std::thread::sleep(Duration::from_millis(20));
        let second = paced.write_lines(&mut out, 1_000_000);
        let elapsed = epoch.get().unwrap().elapsed();
        // Never ahead of the schedule (lines due by now: elapsed * rate + 1).
        let due = (elapsed.as_secs_f64() * 1000.0) as usize + 1;
        assert!(first + second <= due, "{first} + {second} lines, {due} due");
        assert!(second >= 1);
    }
}
