//! Argument definitions and the commands they run.

use crate::cluster::{
    run_leader_process, run_worker_process, ExitWith, JobSpec, LocalCluster, NetOptions, Pinning,
};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use verity_apps::{doubler, market_spread, seq_window, window_count, wordcount};
use verity_apps::{generate, run_app, AppInput, AppName, AppOptions};
use verity_core::cluster::lifecycle::{FAILURE_REPORT_DEADLINE_MS, GRACEFUL_STOP_DEADLINE_MS};
use verity_core::cluster::{ClusterFile, Outcome};
use verity_core::{
    CheckpointSettings, Connectors, DeadLetterSpec, Outputs, RunConfig, RunSummary, ShardLimits, SinkSpec,
    SourceSpec,
};

#[derive(Parser, Debug)]
#[command(
    name = "verity",
    version,
    about = "A stream processor whose results can be verified"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run a reference app to the end of its input.
    Run {
        #[command(subcommand)]
        app: RunApp,
    },
    /// Check an output file against an app's oracle (exit 1 on any mismatch).
    Verify(VerifyArgs),
    /// Write an app's generated input (the same lines `run --generate` uses),
    /// or Nexmark's events (`generate nexmark`, as `verity nexmark --events`).
    Generate(GenerateArgs),
    /// Run a Nexmark query (q0–q8) on the built-in event generator
    /// (--events N) or a file of events; --check compares the output with
    /// the query's reference model.
    #[command(after_help = verity_apps::nexmark::events::TEXT_FORM_HELP)]
    Nexmark(NexmarkArgs),
    /// Join a cluster as process I (process 0 is `verity run … --cluster FILE`).
    Worker(WorkerArgs),
    /// Forward TCP from --listen to --to, injecting seeded faults (for testing).
    Proxy(ProxyArgs),
    /// Stream a file into a running verity TCP source (an external sender).
    ///
    /// Replayable: the source acks what it received (or, with checkpoints,
    /// what is durable); after a lost connection `send` reconnects (for up to
    /// 30 s) and resends from where the source asks. A regular file is re-read
    /// for that; other input (a pipe) is kept in memory until acked (at most
    /// 64 MiB, reading waits beyond). Exits 0 once the source confirmed the
    /// end of the input and acked all of it.
    Send(SendArgs),
    /// Collect a verity TCP sink's output to a file (an external receiver).
    ///
    /// The TCP sink sends numbered lines: `receive` writes each line once
    /// (dropping lines resent after a reconnect), acks them, and accepts
    /// reconnections. The output file holds plain lines. A run with
    /// checkpoints stages its lines here until the checkpoint covering them
    /// is durable, and after a recovery aborts what was staged past its
    /// checkpoint: the file holds each line exactly once across crashes.
    /// (A plain listener such as `nc -l` would see the sink's framing, and
    /// the sink refuses to start without `receive`'s welcome.) A connection
    /// that is not a verity sink is written as it comes, without dedup.
    Receive(ReceiveArgs),
    /// Run a whole cluster in one thread on a virtual clock, with seeded faults,
    /// and check each seed's output against the oracle.
    Sim(SimArgs),
    /// Check and read an audit log (`run … --audit DIR`).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Benchmark a reference app on its built-in generator: throughput (as
    /// fast as it goes), or with --rate end-to-end latency, open loop (each
    /// event's latency counts from when it was due to enter, so a stall
    /// shows in every event it delays).
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// The reference app to run.
    #[arg(value_enum)]
    app: AppArg,
    /// Generated events (input lines, all well formed).
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
    /// Shard threads per process [default: one per core].
    #[arg(long, value_name = "W", value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
    /// Run on a local cluster of P processes on 127.0.0.1 (this one and P-1
    /// spawned `verity worker`s, as `run --processes`), each with --workers
    /// shards. This process reads the generator and holds the sink, so
    /// latency is measured where the output arrives; per-shard figures are
    /// this process's shards.
    #[arg(long, value_name = "P", default_value_t = 1, value_parser = parse_processes)]
    processes: u32,
    /// Take checkpoints and deliver exactly once (as `run --state-dir …
    /// --delivery exactly-once`), into a temporary state dir removed at the
    /// end unless --state-dir is given; the report adds the checkpoints taken
    /// and the shards' snapshot stalls (p50, p99, max). Latency still runs to
    /// when the sink is handed a line, not to its commit.
    #[arg(long)]
    exactly_once: bool,
    /// With --exactly-once: keep the checkpoints in DIR (new or empty; kept
    /// after the run).
    #[arg(long, value_name = "DIR", requires = "exactly_once", conflicts_with = "sweep")]
    state_dir: Option<PathBuf>,
    /// With --exactly-once: how often a checkpoint is taken.
    #[arg(long, value_name = "MS", default_value_t = crate::bench::EXACTLY_ONCE_INTERVAL_MS,
          requires = "exactly_once", value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    checkpoint_interval_ms: u64,
    /// Latency mode: send events at this many per second, and measure each
    /// one's latency from when it was due to the sink into a histogram.
    #[arg(long, value_name = "EVENTS_PER_S", value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Measure the maximum throughput, then latency at 10%, 25%, 50%, 75%
    /// and 90% of it, and report the highest rate that kept up with a
    /// stable p99 (sustainable throughput).
    #[arg(long, conflicts_with_all = ["rate", "hgrm", "html"])]
    sweep: bool,
    /// Write the report as JSON (stable field names: events_per_s, p50_us, p99_us, ...).
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
    /// Write the latency histogram as HdrHistogram's percentile
    /// distribution (.hgrm, values in ms); needs --rate.
    #[arg(long, value_name = "OUT", requires = "rate")]
    hgrm: Option<PathBuf>,
    /// Write the report as one HTML file with plots (input rate over time,
    /// the latency percentile curve, records per shard) that opens in a
    /// browser without a server.
    #[arg(long, value_name = "OUT")]
    html: Option<PathBuf>,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    no_pin: bool,
    #[command(flatten)]
    audit: AuditArgs,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// Check every record's checksum and every link of each process's hash
    /// chain; with --digest, also that the log still holds what a saved
    /// digest saw (which catches a log cut back). Exit 1 on any problem,
    /// naming the first bad record or missing segment.
    Verify {
        dir: PathBuf,
        /// A file of `verity audit digest` output saved earlier.
        #[arg(long, value_name = "FILE")]
        digest: Option<PathBuf>,
    },
    /// Print the head of each process's chain, to keep somewhere else.
    Digest { dir: PathBuf },
    /// Counts per record kind, time range, processes, segments.
    Summary { dir: PathBuf },
    /// The full story of one record: its input with its place in the
    /// stream, every hop between shards with times, what its processing
    /// read (for market-spread, the quote in force and when it arrived,
    /// traced in turn), and its output or failure.
    Trace {
        dir: PathBuf,
        /// An output's id: market-spread's order id; for the other apps the
        /// input record behind it, SOURCE:LINE (as --input-id).
        #[arg(long, value_name = "ID", conflicts_with_all = ["input_id", "output_line"])]
        output_id: Option<String>,
        /// An input record: SOURCE:LINE[.PART] (source 0 is the first input;
        /// LINE alone means source 0).
        #[arg(long, value_name = "ID", conflicts_with = "output_line")]
        input_id: Option<String>,
        /// A line number of the output (from 1).
        #[arg(long, value_name = "N")]
        output_line: Option<u64>,
    },
    /// Every record that failed (dead-lettered), with its input and why.
    Errors { dir: PathBuf },
    /// Re-run the newest run in the log from its input plus what the log
    /// recorded that the input does not hold (each shard's interleaving of
    /// streams, the clock readings its decisions used, the output order),
    /// and check the output is byte-identical to what the run wrote. Exit 1
    /// at the first divergence, which it names.
    Replay {
        dir: PathBuf,
        /// The run's input [default: the recorded command line's, if it
        /// read a file or the generator].
        #[arg(long, value_name = "PATH", conflicts_with_all = ["quotes", "orders"])]
        input: Option<String>,
        /// market-spread: the quotes stream the run read.
        #[arg(long, value_name = "PATH", requires = "orders")]
        quotes: Option<String>,
        /// market-spread: the orders stream the run read.
        #[arg(long, value_name = "PATH", requires = "quotes")]
        orders: Option<String>,
        /// The run's state dir, for a run that recovered from a
        /// checkpoint: the replay restores from the one it recovered from
        /// [default: the recorded command line's --state-dir].
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Write the replayed output here.
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
}

/// The audit log.
#[derive(Args, Debug, Clone)]
struct AuditArgs {
    /// Keep an audit log in DIR (created if missing; a later run continues
    /// its chain): every input chunk received, what each shard applied and
    /// sent and when, the clock readings and market state decisions used,
    /// the lineage of every output line, dead letters, checkpoints and
    /// recoveries. Check it with `verity audit verify DIR`.
    #[arg(long, value_name = "DIR")]
    audit: Option<PathBuf>,
    /// When audit records are made durable: every-batch, interval-ms:N, or
    /// none (the OS decides; a crash may lose any of them).
    #[arg(long, value_name = "POLICY", default_value = "interval-ms:10", requires = "audit",
          value_parser = |s: &str| s.parse::<verity_audit::FsyncPolicy>())]
    audit_fsync: verity_audit::FsyncPolicy,
    /// Start a new segment file once one holds this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = verity_audit::writer::DEFAULT_SEGMENT_MAX_BYTES,
          requires = "audit", value_parser = clap::value_parser!(u64).range(4096..))]
    audit_segment_bytes: u64,
}

/// Live metrics.
#[derive(Args, Debug, Clone)]
struct MetricsArgs {
    /// Serve live metrics at http://HOST:PORT/metrics in Prometheus' text
    /// format: per shard, records in and out, dead letters, duplicates
    /// dropped and checkpoint stalls (port 0: any free port, printed).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
}

impl MetricsArgs {
    /// Starts the metrics server if asked for.
    fn start(&self) -> Result<Option<Arc<verity_core::metrics::Metrics>>> {
        let Some(address) = &self.metrics_addr else {
            return Ok(None);
        };
        let metrics = verity_core::metrics::Metrics::new();
        let bound = crate::metrics_server::serve(address, Arc::clone(&metrics))?;
        eprintln!("verity: metrics at http://{bound}/metrics");
        Ok(Some(metrics))
    }
}

impl AuditArgs {
    fn settings(&self) -> Option<verity_core::AuditSettings> {
        let dir = self.audit.clone()?;
        let mut incarnation = [0u8; 8];
        let _ = getrandom::getrandom(&mut incarnation);
        Some(verity_core::AuditSettings {
            dir,
            limits: verity_audit::WriterLimits {
                segment_max_bytes: self.audit_segment_bytes,
                fsync: self.audit_fsync,
            },
            command_line: std::env::args().collect(),
            incarnation: u64::from_le_bytes(incarnation),
        })
    }
}

#[derive(Args, Debug)]
struct SendArgs {
    /// The source's address (`verity run … --input tcp:HOST:PORT`), or a
    /// Kafka topic, kafka://HOST:PORT[,HOST:PORT]/TOPIC, to produce each
    /// line into as one record (the topic is created if missing).
    #[arg(long, value_name = "HOST:PORT")]
    to: String,
    /// Kafka: key each record by this app's key of its line, so a key's
    /// records share a partition (and keep their order) [default: unkeyed].
    #[arg(long, value_name = "APP")]
    key_by: Option<AppArg>,
    /// Kafka: partitions of the topic if it has to be created.
    #[arg(long, value_name = "N", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    partitions: u32,
    /// The input: a file, a pipe, or `-` for stdin.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "replay",
        conflicts_with = "replay"
    )]
    input: Option<PathBuf>,
    /// Also write the input, as it is sent, with each piece's arrival time,
    /// to FILE: a traffic recording for --replay.
    #[arg(long, value_name = "FILE", conflicts_with = "replay")]
    record: Option<PathBuf>,
    /// Send a traffic recording (made with --record) instead of an input,
    /// each piece at its recorded time.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// With --replay: this many times the recorded pace (2: twice as fast;
    /// a huge number: as fast as possible) [default: 1].
    #[arg(
        long,
        value_name = "X",
        conflicts_with = "input",
        allow_negative_numbers = true
    )]
    speed: Option<f64>,
    /// Lines per second [default: as fast as possible].
    #[arg(long, value_name = "EVENTS_PER_S", conflicts_with = "replay")]
    rate: Option<u64>,
    /// Lines per write, when sending at a --rate.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    batch: usize,
}

#[derive(Args, Debug)]
struct ReceiveArgs {
    /// Where to listen for the sink (`verity run … --output tcp:HOST:PORT`),
    /// or a Kafka topic, kafka://HOST:PORT[,HOST:PORT]/TOPIC, to consume
    /// with read_committed from the beginning (records repeated with the
    /// same output-id header and value are dropped and counted).
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Stop after this many lines.
    #[arg(long, value_name = "N")]
    expect: Option<u64>,
    /// Stop after this many seconds with nothing arriving.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    timeout_s: f64,
}

#[derive(Args, Debug)]
struct SimArgs {
    /// The reference app to simulate, or a Nexmark query as
    /// `nexmark-q3`, `nexmark-q5`, … (its events from Nexmark's generator).
    #[arg(long, default_value = "market-spread", value_parser = crate::nexmark::parse_sim_app)]
    app: AppName,
    /// Seeds to run: `A..B` (B excluded) or `A..=B`.
    #[arg(long, value_name = "A..B", conflicts_with = "seed")]
    seeds: Option<String>,
    /// One seed (with --trace, to replay it).
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    #[arg(long, value_name = "P", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    processes: u32,
    #[arg(long, value_name = "W", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    workers: u32,
    /// Faults to inject: all, none, or a list of drop, duplicate, delay,
    /// reorder, cut, partition, pause, clock, corrupt, wrong-secret, forge,
    /// fail, stop, crash (every process dies at once and recovers from its
    /// newest checkpoint), restart (one process dies alone and comes back as
    /// a new life; the run must fail and recover from its newest checkpoint).
    #[arg(long, value_name = "LIST", default_value = "all")]
    faults: String,
    /// Simulated seconds of faults per seed; then all heal.
    #[arg(long, value_name = "S", default_value_t = 30)]
    sim_seconds: u64,
    /// Generated input records per seed.
    #[arg(long, value_name = "N", default_value_t = 2_000)]
    records: u64,
    /// Print the seed's event trace and its hash.
    #[arg(long)]
    trace: bool,
    /// After the seeds, print how often each rare path and fault ran, one
    /// `<name>: <count>` line per counter, summed over the seeds.
    #[arg(long)]
    stats: bool,
    /// Input streams: 2 runs market-spread's quotes and orders as two
    /// sources at different rates (as `run --quotes Q --orders O`).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2))]
    streams: u32,
    /// wordcount only: final counts at the end of input (as `run --final`).
    #[arg(long = "final")]
    final_counts: bool,
    /// Read the one input as a spread source (as `run --input dir://DIR` on
    /// a cluster): split by key into one partition per process, each read
    /// and dealt by its own process's reader. Needs --streams 1; no audit log.
    #[arg(long)]
    spread: bool,
    /// Keep an audit log in every process (on), in none (off), or as each
    /// seed draws (drawn: one seed in two). A seed with one checks that the
    /// log verifies, that a replay of it reproduces the output byte for
    /// byte, and (market-spread, half of them) the stale-quote rule against
    /// what the log says each decision saw.
    #[arg(long, value_name = "on|off|drawn", default_value = "drawn", value_parser = ["on", "off", "drawn"])]
    audit: String,
    /// Where process 0's output goes: `file` (a simulated file), or
    /// `txn-log`: also through the Kafka sink's transaction protocol into a
    /// simulated broker (partitioned log, read_committed, fencing) that
    /// outlives crashes, checking what a read_committed consumer sees.
    /// `txn-log-per-process` (with --processes > 1): every process writes
    /// its own shards' output into its own transactional sink, each
    /// checkpoint complete with every process's sink mark. (Seeds of either
    /// keep no audit log.)
    #[arg(long, value_name = "file|txn-log|txn-log-per-process", default_value = "file",
          value_parser = ["file", "txn-log", "txn-log-per-process"])]
    sink: String,
    /// Test-only: plant a bug (one of `PlantedBugs::NAMES`) in the shared
    /// production code to show the simulator catches it.
    #[arg(long, value_name = "BUG", hide = true)]
    plant_bug: Option<String>,
}

#[derive(Args, Debug)]
struct ProxyArgs {
    /// Address to accept connections on.
    #[arg(long, value_name = "HOST:PORT")]
    listen: std::net::SocketAddr,
    /// Address to forward them to.
    #[arg(long, value_name = "HOST:PORT")]
    to: String,
    /// Seed of the fault schedule (same seed, same faults per connection).
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// Cut each connection after a seeded time around N ms.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    drop_conn_every_ms: Option<u64>,
    /// Hold each forwarded chunk this long.
    #[arg(long, value_name = "N")]
    delay_ms: Option<u64>,
    /// Chance (0..1) per forwarded chunk of flipping one byte.
    #[arg(long, value_name = "R", default_value = "0", value_parser = verity_verify::proxy::parse_corrupt_rate)]
    corrupt_rate: f64,
}

#[derive(Subcommand, Debug)]
enum RunApp {
    /// One i64 per line in, doubled out.
    #[command(after_help = doubler::FORMAT_HELP)]
    Doubler(RunArgs),
    /// Running (or --final) word counts.
    #[command(after_help = wordcount::FORMAT_HELP)]
    Wordcount(RunArgs),
    /// Accept/reject orders on the market state at decision time.
    #[command(after_help = market_spread::FORMAT_HELP)]
    MarketSpread(RunArgs),
    /// Each key's last 4 values.
    #[command(after_help = seq_window::FORMAT_HELP)]
    SeqWindow(RunArgs),
    /// Per key, records per 100 ms tumbling window of event time.
    #[command(after_help = window_count::FORMAT_HELP)]
    WindowCount(RunArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Input: a file (or file://PATH), `-` for stdin (the default), or
    /// tcp:HOST:PORT to listen for one connection of newline-delimited text.
    #[arg(long, value_name = "PATH")]
    input: Option<String>,
    /// Output: a file (or file://PATH), `-` for stdout (the default), `null`
    /// to discard, or tcp:HOST:PORT to connect and write lines.
    #[arg(long, value_name = "PATH", default_value = "-")]
    output: String,
    /// Worker shards, one pinned thread each [default: number of cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<u32>,
    /// Generate N input records with the app's built-in generator instead of
    /// reading input.
    #[arg(long, visible_alias = "events", value_name = "N", conflicts_with_all = ["input", "quotes", "orders"])]
    generate: Option<u64>,
    /// nexmark: the generator's events per second of event time (set by
    /// `verity nexmark --event-rate`).
    #[arg(skip = verity_apps::nexmark::generator::DEFAULT_EVENT_RATE_PER_S)]
    event_rate: u64,
    /// Seed of the generator (same seed, same input).
    #[arg(long, value_name = "S", default_value_t = 42, requires = "generate")]
    seed: u64,
    /// wordcount: one line per distinct word at the end instead of running counts.
    #[arg(long = "final")]
    final_counts: bool,
    /// market-spread: the quotes stream (file, `-` or tcp:HOST:PORT).
    #[arg(long, value_name = "P", requires = "orders", conflicts_with = "input")]
    quotes: Option<String>,
    /// market-spread: the orders stream (file, `-` or tcp:HOST:PORT).
    #[arg(long, value_name = "P", requires = "quotes", conflicts_with = "input")]
    orders: Option<String>,
    /// Records per batch between shards.
    #[arg(long, value_name = "N", default_value_t = ShardLimits::default().batch_max,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
              .range(1..=verity_core::shard::BATCH_MAX_LIMIT as u64))]
    batch_max: usize,
    /// Depth of each shard's input queue, in batches (full queues apply backpressure).
    #[arg(long, value_name = "N", default_value_t = RunConfig::default().queue_depth_batches,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    queue_depth: usize,
    /// Where rejected input records go [default: OUTPUT.dead-letter beside a file
    /// output, else stderr]; `-` for stderr.
    #[arg(long, value_name = "PATH")]
    dead_letter: Option<String>,
    /// Do not pin worker threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// Run as a local cluster of P processes on 127.0.0.1 (this one and P-1
    /// spawned `verity worker`s), each with --workers shards.
    #[arg(long, value_name = "P", conflicts_with = "cluster",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    processes: Option<u32>,
    /// Run as process 0 of the cluster described in FILE (see README).
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    stop: StopArgs,
    #[command(flatten)]
    checkpoints: CheckpointArgs,
    #[command(flatten)]
    audit: AuditArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    /// market-spread: reject an order when the quote in force is older than
    /// this by the process clock at decision time (never trade on a stale
    /// quote). The decision depends on the clock: keep an --audit log to
    /// re-create it.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    max_quote_age_ms: Option<u64>,
    /// A bug planted on purpose, to show a verifier catches it (tests only):
    /// `stale-quote` (market-spread decides on the quote before the newest).
    /// Nexmark: `q2-off-by-one` (q2 keeps the bids of the auction after
    /// each 123rd).
    #[arg(long, value_name = "NAME", hide = true, value_parser = ["stale-quote", "q2-off-by-one"])]
    plant_bug: Option<String>,
}

/// Checkpoints and recovery.
#[derive(Args, Debug, Clone)]
struct CheckpointArgs {
    /// Take consistent checkpoints of all state into DIR (created if missing),
    /// so a crashed run can continue with --recover; with a file output, the
    /// output and dead-letter files are cut back to the last checkpoint on
    /// recovery, so the finished files hold each line exactly once. In a
    /// cluster every process must read DIR at the same path (one machine, or
    /// a shared file system).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// How often a checkpoint is taken.
    #[arg(long, value_name = "MS", default_value_t = verity_core::checkpoint::DEFAULT_INTERVAL_MS,
          requires = "state_dir", value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    checkpoint_interval_ms: u64,
    /// Complete checkpoints kept (older ones are deleted once a newer one is
    /// complete).
    #[arg(long, value_name = "N", default_value_t = verity_core::checkpoint::DEFAULT_RETAINED,
          requires = "state_dir", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    checkpoints_retained: usize,
    /// Continue the job from the newest complete checkpoint in --state-dir
    /// (after a crash); run it with the same input and options.
    #[arg(long, requires = "state_dir")]
    recover: bool,
    /// In a cluster (--processes, --cluster), a failed run (a worker killed,
    /// a lost peer) restarts every process from the newest checkpoint; it
    /// gives up after N restarts in a row without a new checkpoint.
    #[arg(long, value_name = "N", default_value_t = crate::restart::DEFAULT_MAX_RESTARTS, requires = "state_dir")]
    max_restarts: u32,
    /// What `verity receive` behind a TCP output sees: exactly-once (lines
    /// final at checkpoint boundaries, each once across crashes) or
    /// at-least-once (final as they arrive, lower latency; after a crash the
    /// lines written again may repeat or replace some). Files are exact
    /// either way.
    #[arg(long, value_enum, default_value_t = DeliveryArg::ExactlyOnce, requires = "state_dir")]
    delivery: DeliveryArg,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum DeliveryArg {
    ExactlyOnce,
    AtLeastOnce,
}

/// How long a stop may take.
#[derive(Args, Debug, Clone)]
struct StopArgs {
    /// After the first Ctrl-C/SIGTERM, exit anyway (code 130) if the run has
    /// not ended gracefully within this long.
    #[arg(long, value_name = "MS", default_value_t = GRACEFUL_STOP_DEADLINE_MS,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    stop_deadline_ms: u64,
}

/// How processes of a cluster reach and trust each other.
#[derive(Args, Debug, Clone)]
struct NetArgs {
    /// File holding the cluster's shared secret [default: $VERITY_CLUSTER_SECRET].
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
    /// A peer silent this long is taken for dead and reconnected.
    #[arg(long, value_name = "MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    peer_timeout_ms: u64,
    /// A peer unreachable this long fails the run.
    #[arg(long, value_name = "MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    peer_lost_ms: u64,
}

impl NetArgs {
    fn options(&self, stop: &StopArgs) -> NetOptions {
        NetOptions {
            secret_file: self.secret_file.clone(),
            peer_timeout_ms: self.peer_timeout_ms,
            peer_lost_ms: self.peer_lost_ms,
            stop_deadline_ms: stop.stop_deadline_ms,
        }
    }
}

#[derive(Args, Debug)]
struct WorkerArgs {
    /// The cluster file every process shares.
    #[arg(long, value_name = "FILE")]
    cluster: PathBuf,
    /// This process's index in the file's [[process]] list (1 and up).
    #[arg(long, value_name = "I")]
    id: u32,
    /// Do not pin worker threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// Pin this process's shards from this core on (for several processes on
    /// one machine).
    #[arg(long, value_name = "N", default_value_t = 0)]
    first_core: usize,
    /// Exit after one run even when it failed with checkpoints on (for a
    /// supervisor that restarts the process itself). By default a worker
    /// whose run failed that way starts over and waits for the next job, as
    /// process 0 restarts the cluster from its newest checkpoint.
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    stop: StopArgs,
    /// Keep this process's audit log in DIR, beside the other processes'
    /// (`verity run … --audit DIR` on process 0; the same DIR).
    #[command(flatten)]
    audit: AuditArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    app: AppArg,
    /// The input the run read.
    #[arg(long, value_name = "IN", required_unless_present = "quotes")]
    input: Option<PathBuf>,
    /// market-spread run on two streams: the quotes stream it read. The output
    /// passes if some interleaving of the two streams produces it.
    #[arg(long, value_name = "Q", requires = "orders", conflicts_with = "input")]
    quotes: Option<PathBuf>,
    /// market-spread run on two streams: the orders stream it read.
    #[arg(long, value_name = "O", requires = "quotes", conflicts_with = "input")]
    orders: Option<PathBuf>,
    /// The output the run wrote.
    #[arg(long, value_name = "OUT")]
    output: PathBuf,
    /// wordcount: the output holds final counts (`run --final`).
    #[arg(long = "final")]
    final_counts: bool,
    /// Verify while the run is still writing: follow the output as it grows,
    /// until every expected line is in (or it stops growing).
    #[arg(long)]
    follow: bool,
    /// With --follow: end once the output has not grown for this long.
    #[arg(long, value_name = "S", default_value_t = 10, requires = "follow")]
    idle_timeout_s: u64,
    /// Also check the run's dead-letter file: every malformed input line in it
    /// exactly once, with its source and line, and nothing else.
    #[arg(long, value_name = "PATH")]
    dead_letter: Option<PathBuf>,
    /// The name the run knew its input by, when it read it from elsewhere
    /// (e.g. `tcp:127.0.0.1:9000` for input streamed with `verity send`):
    /// dead letters name their source by it.
    #[arg(long, value_name = "NAME", requires = "dead_letter", conflicts_with_all = ["quotes", "orders"])]
    input_name: Option<String>,
    /// market-spread: check exactly with the run's audit log (`run --audit
    /// DIR`): every decision on the newest quote its shard applied before
    /// it, by the rule and the recorded clock reading (needed for a run with
    /// --max-quote-age-ms, whose stale rejections only the log explains).
    #[arg(long, value_name = "DIR", conflicts_with = "follow")]
    audit: Option<PathBuf>,
    /// With --audit: the stale-quote limit the run used [default: the
    /// recorded command line's].
    #[arg(long, value_name = "MS", requires = "audit")]
    max_quote_age_ms: Option<u64>,
}

/// `verity nexmark`: a query, the run's options, and the check.
#[derive(Args, Debug)]
struct NexmarkArgs {
    /// The query: q0 … q8.
    #[arg(value_parser = crate::nexmark::parse_query)]
    query: verity_apps::nexmark::Query,
    /// After the run, compare its output with the query's reference model
    /// over the same events; exit 1 on any difference, printing the
    /// anomaly classes. Reads the output back: with stdout or `null` as
    /// --output, the run writes to a temporary file instead.
    #[arg(long)]
    check: bool,
    /// The generator's events per second of event time (the events' time
    /// stamps, not how fast they are read).
    #[arg(long, value_name = "EVENTS_PER_S", default_value_t = verity_apps::nexmark::generator::DEFAULT_EVENT_RATE_PER_S)]
    event_rate: u64,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// The app, or `nexmark` for Nexmark's events.
    #[arg(value_parser = crate::nexmark::parse_generate_app)]
    app: crate::nexmark::GenerateApp,
    /// Number of records.
    #[arg(long, value_name = "N")]
    count: u64,
    #[arg(long, value_name = "S", default_value_t = 42)]
    seed: u64,
    /// Where to write [default: stdout].
    #[arg(
        long,
        value_name = "PATH",
        default_value = "-",
        conflicts_with = "quotes_output"
    )]
    output: String,
    /// market-spread: write the quote lines here (for `run --quotes`) ...
    #[arg(long, value_name = "PATH", requires = "orders_output")]
    quotes_output: Option<PathBuf>,
    /// ... and the order lines here (for `run --orders`).
    #[arg(long, value_name = "PATH", requires = "quotes_output")]
    orders_output: Option<PathBuf>,
    /// Only well-formed lines (by default some are malformed: empty, not
    /// UTF-8, bad numbers, wrong field counts, over-long). Nexmark's events
    /// are all well formed.
    #[arg(long)]
    well_formed: bool,
    /// nexmark: events per second of event time.
    #[arg(long, value_name = "EVENTS_PER_S", default_value_t = verity_apps::nexmark::generator::DEFAULT_EVENT_RATE_PER_S)]
    event_rate: u64,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub(crate) enum AppArg {
    Doubler,
    Wordcount,
    MarketSpread,
    SeqWindow,
    WindowCount,
}

impl From<AppArg> for AppName {
    fn from(app: AppArg) -> AppName {
        match app {
            AppArg::Doubler => AppName::Doubler,
            AppArg::Wordcount => AppName::Wordcount,
            AppArg::MarketSpread => AppName::MarketSpread,
            AppArg::SeqWindow => AppName::SeqWindow,
            AppArg::WindowCount => AppName::WindowCount,
        }
    }
}

/// Runs a parsed command; returns the exit code.
pub fn execute(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Run { app } => {
            let (name, args) = app.into_parts();
            run(name, args)
        }
        Command::Verify(args) => verify(args),
        Command::Generate(args) => generate_input(args),
        Command::Nexmark(args) => nexmark(args),
        Command::Worker(args) => {
            let signal = install_stop_handler()?;
            let pinning = Pinning {
                enabled: !args.no_pin,
                first_core: args.first_core,
            };
            let net = args.net.options(&args.stop);
            run_worker_process(
                &args.cluster,
                args.id,
                &net,
                pinning,
                &signal,
                !args.once,
                crate::cluster::Observers {
                    audit: args.audit.settings(),
                    metrics: args.metrics.start()?,
                },
            )
        }
        Command::Sim(args) => sim(args),
        Command::Bench(args) => bench(args),
        Command::Audit {
            command:
                AuditCommand::Replay {
                    dir,
                    input,
                    quotes,
                    orders,
                    state_dir,
                    output,
                },
        } => replay(
            &dir,
            ReplayInputs {
                input,
                quotes,
                orders,
                state_dir,
            },
            output.as_deref(),
        ),
        Command::Audit {
            command:
                AuditCommand::Trace {
                    dir,
                    output_id,
                    input_id,
                    output_line,
                },
        } => trace(&dir, output_id, input_id, output_line),
        Command::Audit { command } => crate::audit::execute(command),
        Command::Send(args) if crate::connectors::is_kafka(&args.to) => {
            let Some(input) = args
                .input
                .as_deref()
                .filter(|_| args.replay.is_none() && args.record.is_none())
            else {
                bail!("sending to Kafka takes --input FILE (not --record or --replay)");
            };
            crate::connectors::send_to_kafka(
                &args.to,
                input,
                args.rate,
                args.key_by.map(AppName::from),
                args.partitions,
            )
        }
        Command::Send(args) => {
            use verity_verify::harness;
            if args.key_by.is_some() {
                bail!("--key-by keys Kafka records; {} is not a kafka:// topic", args.to);
            }
            let report = match (&args.replay, &args.input, &args.record) {
                (Some(recording), _, _) => harness::replay(&args.to, recording, args.speed.unwrap_or(1.0))?,
                (None, Some(input), Some(record)) => {
                    let (report, recorded) =
                        harness::send_and_record(&args.to, input, args.rate, args.batch, record)?;
                    eprintln!(
                        "verity send: recorded {} bytes in {} frames over {:.3} s to {}",
                        recorded.bytes,
                        recorded.frames,
                        recorded.last_arrival_us as f64 / 1e6,
                        record.display()
                    );
                    report
                }
                (None, Some(input), None) => harness::send(&args.to, input, args.rate, args.batch)?,
                (None, None, _) => bail!("give --input FILE or --replay FILE"),
            };
            eprintln!(
                "verity send: {} lines ({} bytes) to {} in {:.3} s ({:.0} lines/s){}",
                report.lines,
                report.bytes,
                args.to,
                report.seconds,
                report.lines as f64 / report.seconds.max(1e-9),
                reconnections(report.connections)
            );
            Ok(0)
        }
        Command::Receive(args) => {
            if !(args.timeout_s > 0.0 && args.timeout_s.is_finite()) {
                bail!("--timeout-s must be a positive number of seconds");
            }
            let silence = std::time::Duration::from_secs_f64(args.timeout_s);
            if crate::connectors::is_kafka(&args.listen) {
                return crate::connectors::receive_from_kafka(
                    &args.listen,
                    &args.output,
                    args.expect,
                    silence,
                );
            }
            let report = verity_verify::harness::receive(&args.listen, &args.output, args.expect, silence)?;
            eprintln!(
                "verity receive: {} lines ({} bytes) in {:.3} s{}{}{}",
                report.lines,
                report.bytes,
                report.seconds,
                if report.complete { "" } else { ", ended by silence" },
                reconnections(report.connections),
                match report.duplicates {
                    0 => String::new(),
                    n => format!(", {n} resent lines dropped"),
                }
            );
            Ok(if args.expect.is_some() && !report.complete {
                1
            } else {
                0
            })
        }
        Command::Proxy(args) => {
            let stop = install_stop_handler()?;
            let config = verity_verify::proxy::ProxyConfig {
                listen: args.listen,
                to: args.to,
                seed: args.seed,
                drop_conn_every_ms: args.drop_conn_every_ms,
                delay_ms: args.delay_ms,
                corrupt_rate: args.corrupt_rate,
            };
            let stats = verity_verify::proxy::run_until(config, &stop)?;
            eprintln!(
                "verity proxy: {} connections, {} cut, {} chunks corrupted, {} bytes forwarded",
                stats.connections, stats.cuts, stats.corrupted_chunks, stats.bytes_forwarded
            );
            Ok(0)
        }
    }
}

/// The app options a `run` command line names.
fn app_options(args: &RunArgs) -> AppOptions {
    AppOptions {
        final_counts: args.final_counts,
        max_quote_age_ms: args.max_quote_age_ms,
        market_spread_bugs: verity_apps::market_spread::Bugs {
            stale_quote: args.plant_bug.as_deref() == Some("stale-quote"),
        },
        nexmark_bugs: args
            .plant_bug
            .as_deref()
            .and_then(verity_apps::nexmark::Bugs::named)
            .unwrap_or_default(),
    }
}

/// The sources this binary knows (`connectors::sources`): workers build
/// spread sources through this list, and a replay re-reads its input.
pub(crate) fn connectors() -> Connectors {
    crate::connectors::sources()
}

/// The input a `run` command line names (also what a replay re-reads).
fn app_input(app: AppName, args: &RunArgs, connectors: &Connectors) -> Result<AppInput> {
    let input = match (&args.quotes, &args.orders, args.generate) {
        (Some(quotes), Some(orders), _) => {
            if app != AppName::MarketSpread {
                bail!(
                    "--quotes/--orders are market-spread options; {} takes --input",
                    app.name()
                );
            }
            AppInput::QuotesAndOrders {
                quotes: connectors.source(quotes)?,
                orders: connectors.source(orders)?,
            }
        }
        (_, _, Some(count)) => {
            let (seed, rate) = (args.seed, args.event_rate);
            AppInput::Single(SourceSpec::generated("generator", move || match app {
                AppName::Nexmark(_) => Box::new(verity_apps::nexmark::generator::NexmarkLines::new(
                    count, seed, rate,
                )),
                _ => generate::generator(app, count, seed),
            }))
        }
        _ => AppInput::Single(connectors.source(args.input.as_deref().unwrap_or("-"))?),
    };
    Ok(input)
}

/// `verity nexmark`: the run, then with --check the reference model's
/// verdict on its output.
fn nexmark(args: NexmarkArgs) -> Result<i32> {
    let NexmarkArgs {
        query,
        check,
        event_rate,
        run: mut args,
    } = args;
    crate::nexmark::check_options(args.seed, event_rate)?;
    args.event_rate = event_rate;
    let app = AppName::Nexmark(query);
    if !check {
        return run(app, args);
    }
    let output = crate::nexmark::CheckedOutput::for_run(&args.output)?;
    if output.is_temporary() {
        args.output = output.path_arg();
        args.dead_letter.get_or_insert_with(|| "-".to_string());
    }
    let input = match (args.generate, &args.input) {
        (Some(count), _) => crate::nexmark::CheckInput::Generated {
            count,
            seed: args.seed,
            rate: event_rate,
        },
        (None, Some(path)) => crate::nexmark::CheckInput::File(path.clone()),
        (None, None) => bail!("--check needs the events again: give --events N or --input FILE (not stdin)"),
    };
    let code = run(app, args)?;
    if code != 0 {
        return Ok(code);
    }
    output.check(query, &input)
}

fn run(app: AppName, args: RunArgs) -> Result<i32> {
    if args.final_counts && app != AppName::Wordcount {
        bail!("--final is a wordcount option");
    }
    if let (Some(workers), Some(path)) = (args.workers, &args.cluster) {
        bail!(
            "--workers {workers} does not apply with --cluster: the cluster file {} says how many workers each process runs",
            path.display()
        );
    }
    let job_description = format!(
        "{}; final counts {}; generate {:?} seed {}",
        app.name(),
        args.final_counts,
        args.generate,
        args.seed
    );
    let kafka_delivery = match (&args.checkpoints.state_dir, args.checkpoints.delivery) {
        (Some(_), DeliveryArg::ExactlyOnce) => crate::connectors::KafkaDelivery::Transactional,
        _ => crate::connectors::KafkaDelivery::AtLeastOnce,
    };
    let fingerprint = crate::connectors::job_fingerprint(
        &job_description,
        &args.output,
        args.checkpoints.state_dir.as_deref(),
    );
    let connectors = crate::connectors::for_run(app, kafka_delivery, &fingerprint);
    let input = app_input(app, &args, &connectors)?;
    let sink = connectors.sink(&args.output)?;
    if args.checkpoints.state_dir.is_some() && sink == SinkSpec::Stdout {
        bail!(
            "--state-dir needs an output a recovery can cut back or commit (a file, tcp:HOST:PORT to \
             `verity receive`, or null); stdout cannot take lines back, so a recovery would repeat them"
        );
    }
    let outputs = Outputs {
        dead_letter: args
            .dead_letter
            .as_deref()
            .map_or_else(|| sink.default_dead_letter(), DeadLetterSpec::parse),
        sink,
    };
    let config = RunConfig {
        workers: args
            .workers
            .map_or_else(verity_core::runtime::default_workers, |n| n as usize),
        limits: ShardLimits {
            batch_max: args.batch_max,
            ..ShardLimits::default()
        },
        queue_depth_batches: args.queue_depth,
        pin_cores: !args.no_pin,
        checkpoints: args.checkpoints.state_dir.as_ref().map(|dir| CheckpointSettings {
            state_dir: dir.clone(),
            interval_ms: args.checkpoints.checkpoint_interval_ms,
            retained: args.checkpoints.checkpoints_retained,
            recover: args.checkpoints.recover,
            delivery: match args.checkpoints.delivery {
                DeliveryArg::ExactlyOnce => verity_core::Delivery::ExactlyOnce,
                DeliveryArg::AtLeastOnce => verity_core::Delivery::AtLeastOnce,
            },
            job: job_description.clone(),
        }),
        audit: args.audit.settings(),
        metrics: args.metrics.start()?,
        ..RunConfig::default()
    };
    if args.max_quote_age_ms.is_some() && app != AppName::MarketSpread {
        bail!("--max-quote-age-ms is a market-spread option");
    }
    let signal = install_stop_handler()?;
    let options = app_options(&args);
    let net = args.net.options(&args.stop);
    let job = JobSpec {
        app,
        options,
        split_input: matches!(input, AppInput::QuotesAndOrders { .. }),
        batch_max: config.limits.batch_max,
        queue_depth_batches: config.queue_depth_batches,
        discard_output: outputs.sink == SinkSpec::Null,
        // The Kafka sink puts each line's input id in a header.
        output_ids: crate::connectors::is_kafka(&args.output),
        checkpoints: None,
        spread_sources: Vec::new(),
    };
    let summary = match (args.processes, &args.cluster) {
        (Some(processes), _) if processes > 1 => {
            let workers = config.workers as u32;
            let (local, net) =
                LocalCluster::spawn(processes, workers, &net, config.pin_cores, config.audit.as_ref())?;
            let run = run_leader_process(
                &local.file,
                &net,
                &job,
                input,
                &config,
                &outputs,
                &signal,
                Some(&local),
            );
            match run {
                Ok(summary) => {
                    local.join();
                    summary
                }
                // The restarted process spawns its workers anew.
                Err(e) => return Err(after_cluster_failure(&args.checkpoints, e, || drop(local))),
            }
        }
        (_, Some(path)) => {
            let file = ClusterFile::load(path)?;
            run_leader_process(&file, &net, &job, input, &config, &outputs, &signal, None)
                .map_err(|e| after_cluster_failure(&args.checkpoints, e, || {}))?
        }
        _ => {
            watch_single_process(Arc::clone(&signal), net.stop_deadline_ms)?;
            run_app(app, input, options, &config, &outputs, signal)
                .with_context(|| format!("{} run failed", app.name()))?
        }
    };
    report(app, &summary, &outputs);
    if summary.source_errors_not_kept > 0 {
        eprintln!(
            "verity: {} more source failures not shown",
            summary.source_errors_not_kept
        );
    }
    Ok(if summary.sources_failed() { 1 } else { 0 })
}

/// A cluster run with checkpoints that failed restarts from its newest
/// checkpoint (`restart`); a stopped run, or one without checkpoints, ends
/// with its error.
fn after_cluster_failure(
    checkpoints: &CheckpointArgs,
    error: anyhow::Error,
    before_exec: impl FnOnce(),
) -> anyhow::Error {
    let stopped = error
        .downcast_ref::<ExitWith>()
        .is_some_and(|e| e.code == Outcome::Stopped.exit_code());
    match &checkpoints.state_dir {
        Some(state_dir) if !stopped => {
            crate::restart::restart_or_give_up(state_dir, error, checkpoints.max_restarts, before_exec)
        }
        _ => error,
    }
}

/// A single-process run has no cluster lifecycle to keep its deadlines: this
/// thread does. Once a stop is requested, the run has `deadline_ms` to end
/// gracefully; a panic in a thread the runtime does not watch itself (the
/// runtime reports its own threads' panics at once) ends it after
/// `FAILURE_REPORT_DEADLINE_MS`. Either way the process then exits.
fn watch_single_process(signal: Arc<AtomicBool>, deadline_ms: u64) -> Result<()> {
    const LOOK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);
    let started = std::time::Instant::now();
    let elapsed_ms = move || started.elapsed().as_millis() as u64;
    std::thread::Builder::new()
        .name("verity-watch".into())
        .spawn(move || {
            let (mut stop_deadline_ms, mut panic_deadline_ms) = (None, None);
            let ended = loop {
                std::thread::sleep(LOOK_INTERVAL);
                let now_ms = elapsed_ms();
                if signal.load(Ordering::Relaxed) {
                    stop_deadline_ms.get_or_insert(now_ms + deadline_ms);
                }
                if let Some(panic) = crate::panics::first_panic() {
                    panic_deadline_ms.get_or_insert(now_ms + FAILURE_REPORT_DEADLINE_MS);
                    if panic_deadline_ms.is_some_and(|at| now_ms >= at) {
                        break ExitWith {
                            code: Outcome::Failed.exit_code(),
                            reason: panic,
                        };
                    }
                }
                if stop_deadline_ms.is_some_and(|at| now_ms >= at) {
                    break ExitWith {
                        code: Outcome::Stopped.exit_code(),
                        reason: format!("the run did not stop within {deadline_ms} ms of the stop request"),
                    };
                }
            };
            eprintln!("verity: error: {ended}");
            std::process::exit(ended.code);
        })
        .context("cannot start the watch thread")?;
    Ok(())
}

/// First Ctrl-C (or SIGTERM, SIGHUP): stop reading, flush, finish. Second: exit now.
fn install_stop_handler() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
        eprintln!("\nverity: stopping (Ctrl-C again to quit at once)");
    })
    .context("cannot install the Ctrl-C/SIGTERM handler")?;
    Ok(stop)
}

fn report(app: AppName, summary: &RunSummary, outputs: &Outputs) {
    let dead_letter_note = match (&outputs.dead_letter, summary.dead_lettered) {
        (DeadLetterSpec::File(path), n) if n > 0 => format!(" (see {})", path.display()),
        _ => String::new(),
    };
    let late_note = match summary.late {
        0 => String::new(),
        late => format!(", {late} of them late"),
    };
    eprintln!(
        "verity: {} {}: {} records in, {} out, {} dead-lettered{}{} in {:.3} s ({:.2}M events/s, {} workers)",
        app.name(),
        if summary.interrupted {
            "stopped early"
        } else {
            "done"
        },
        summary.records_in,
        summary.records_out,
        summary.dead_lettered,
        late_note,
        dead_letter_note,
        summary.wall.as_secs_f64(),
        summary.events_per_second() / 1e6,
        summary.workers,
    );
}

fn verify(args: VerifyArgs) -> Result<i32> {
    if let Some(dir) = &args.audit {
        return verify_with_audit(&args, dir);
    }
    let app = verity_verify::App::from_name(AppName::from(args.app).name(), args.final_counts)?;
    let inputs = match (args.input, args.quotes, args.orders) {
        (_, Some(quotes), Some(orders)) => verity_verify::InputFiles::QuotesAndOrders { quotes, orders },
        (Some(input), _, _) => verity_verify::InputFiles::Single(input),
        _ => bail!("give --input IN, or --quotes Q --orders O for a two-stream market-spread run"),
    };
    let report = if args.follow {
        let follow = verity_verify::Follow {
            idle_timeout: std::time::Duration::from_secs(args.idle_timeout_s),
            settle: std::time::Duration::from_millis(500),
        };
        let progress = |lines, anomalies| {
            eprintln!("verity verify: {lines} output lines checked, {anomalies} anomalies so far")
        };
        verity_verify::verify_output_follow(&app, &inputs, &args.output, follow, progress)?
    } else {
        verity_verify::verify_output(&app, &inputs, &args.output)?
    };
    println!("{report}");
    let mut ok = report.is_ok();
    if let Some(path) = &args.dead_letter {
        let also_named: Vec<String> = args.input_name.iter().cloned().collect();
        let letters = verity_verify::verify_dead_letter_file_as(&app, &inputs, path, &also_named)?;
        println!("{letters}");
        ok &= letters.is_ok();
    }
    Ok(if ok { 0 } else { 1 })
}

/// `verify market-spread --audit DIR`: the exact check over the log's newest life.
fn verify_with_audit(args: &VerifyArgs, dir: &std::path::Path) -> Result<i32> {
    if !matches!(args.app, AppArg::MarketSpread) {
        bail!("--audit checks market-spread decisions; the other apps' outputs are derivable: verify them without it");
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let inputs = match (&args.input, &args.quotes, &args.orders) {
        (_, Some(quotes), Some(orders)) => vec![read(quotes)?, read(orders)?],
        (Some(input), _, _) => vec![read(input)?],
        _ => bail!("give --input IN, or --quotes Q --orders O"),
    };
    let output = read(&args.output)?;
    let (log, report) = verity_audit::query::Log::read(&mut crate::audit::open(dir)?)?;
    if let Some(problem) = report.problems.first() {
        bail!("the audit log does not verify ({problem}): it cannot vouch for the run");
    }
    let recorded_age = log
        .command_line()
        .and_then(|line| recorded_run(line).ok())
        .and_then(|(_, run)| run.max_quote_age_ms);
    let max_age = args.max_quote_age_ms.or(recorded_age);
    let inputs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
    let checked = verity_verify::audited::verify_market_spread_with_audit(
        &inputs,
        &output,
        &log.newest_life()
            .into_iter()
            .map(|(_, record)| record)
            .collect::<Vec<_>>(),
        max_age,
    )
    .map_err(anyhow::Error::msg)?;
    println!("{checked}");
    let mut ok = checked.is_ok();
    if let Some(path) = &args.dead_letter {
        let app = verity_verify::App::from_name("market-spread", false)?;
        let files = match (&args.input, &args.quotes, &args.orders) {
            (_, Some(quotes), Some(orders)) => verity_verify::InputFiles::QuotesAndOrders {
                quotes: quotes.clone(),
                orders: orders.clone(),
            },
            (Some(input), _, _) => verity_verify::InputFiles::Single(input.clone()),
            _ => unreachable!("checked above"),
        };
        let letters = verity_verify::verify_dead_letter_file_as(&app, &files, path, &[])?;
        println!("{letters}");
        ok &= letters.is_ok();
    }
    Ok(if ok { 0 } else { 1 })
}

fn sim(args: SimArgs) -> Result<i32> {
    let seeds = match (&args.seeds, args.seed) {
        (Some(range), _) => crate::sim::parse_seeds(range).map_err(anyhow::Error::msg)?,
        (None, Some(seed)) => seed..seed + 1,
        (None, None) => bail!("give --seeds A..B or --seed S"),
    };
    // The simulated processes' own warnings (a slow checkpoint, a lost
    // peer) are what the faults are for, not news for the user; a seed that
    // goes wrong says so in its finding.
    log::set_max_level(log::LevelFilter::Error);
    let bugs = match args.plant_bug.as_deref() {
        None => verity_verify::sim::PlantedBugs::default(),
        Some(name) => verity_verify::sim::PlantedBugs::named(name).map_err(anyhow::Error::msg)?,
    };
    if args.sink == "txn-log-per-process" && args.processes < 2 {
        bail!("--sink txn-log-per-process needs --processes 2 or more (process 0 alone writes as txn-log)");
    }
    if args.final_counts && args.app != AppName::Wordcount {
        bail!("--final is for wordcount");
    }
    let template = verity_verify::sim::SimConfig {
        processes: args.processes,
        workers: args.workers,
        faults: verity_verify::sim::Faults::parse(&args.faults).map_err(anyhow::Error::msg)?,
        sim_seconds: args.sim_seconds,
        records: args.records,
        trace: args.trace,
        bugs,
        streams: args.streams,
        final_counts: args.final_counts,
        spread: args.spread,
        audit: match (args.audit.as_str(), args.sink.as_str()) {
            ("on", "txn-log" | "txn-log-per-process") => {
                bail!("--sink txn-log seeds keep no audit log (its lineage is that of the file)")
            }
            (_, "txn-log" | "txn-log-per-process") | ("off", _) => Some(false),
            ("on", _) => Some(true),
            _ => None,
        },
        log_sink: args.sink.starts_with("txn-log"),
        member_sinks: args.sink == "txn-log-per-process",
        ..verity_verify::sim::SimConfig::new(args.app, seeds.start)
    };
    crate::sim::run(&template, seeds, args.stats)
}

fn create_output(path: &str) -> Result<Box<dyn std::io::Write>> {
    Ok(if path == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        let file = std::fs::File::create(path).with_context(|| format!("cannot create {path}"))?;
        Box::new(std::io::BufWriter::new(file))
    })
}

fn generate_input(args: GenerateArgs) -> Result<i32> {
    let app = match args.app {
        crate::nexmark::GenerateApp::App(app) => AppName::from(app),
        crate::nexmark::GenerateApp::Nexmark => {
            let events = crate::nexmark::events(args.count, args.seed, args.event_rate)?;
            let mut generator = events();
            write_generated(&mut *generator, &mut *create_output(&args.output)?, None)
                .context("writing generated events")?;
            return Ok(0);
        }
    };
    if args.event_rate != verity_apps::nexmark::generator::DEFAULT_EVENT_RATE_PER_S {
        bail!("--event-rate is a nexmark option");
    }
    let split = match (&args.quotes_output, &args.orders_output) {
        (Some(quotes), Some(orders)) if app == AppName::MarketSpread => Some((quotes, orders)),
        (Some(_), Some(_)) => bail!("--quotes-output/--orders-output are market-spread options"),
        _ => None,
    };
    let mut generator = if args.well_formed {
        generate::well_formed_generator(app, args.count, args.seed)
    } else {
        generate::generator(app, args.count, args.seed)
    };
    match split {
        None => write_generated(&mut *generator, &mut *create_output(&args.output)?, None),
        Some((quotes, orders)) => {
            let mut orders = create_output(&orders.to_string_lossy())?;
            let mut quotes = create_output(&quotes.to_string_lossy())?;
            write_generated(&mut *generator, &mut *quotes, Some(&mut *orders))
        }
    }
    .context("writing generated input")?;
    Ok(0)
}

/// Writes every generated line to `out`; with `orders`, order lines (`O,…`)
/// go there instead: the same records as one mixed stream, as two streams.
fn write_generated(
    generator: &mut dyn verity_core::LineGenerator,
    out: &mut dyn std::io::Write,
    mut orders: Option<&mut dyn std::io::Write>,
) -> std::io::Result<()> {
    let mut buffer = Vec::with_capacity(1 << 16);
    while generator.write_lines(&mut buffer, 4096) > 0 {
        match orders.as_mut() {
            None => out.write_all(&buffer)?,
            Some(orders) => {
                for line in buffer.split_inclusive(|b| *b == b'\n') {
                    if line.starts_with(b"O,") {
                        orders.write_all(line)?;
                    } else {
                        out.write_all(line)?;
                    }
                }
            }
        }
        buffer.clear();
    }
    if let Some(orders) = orders {
        orders.flush()?;
    }
    out.flush()
}

/// ", after N reconnections" when a harness connection had to reconnect.
fn reconnections(connections: u32) -> String {
    match connections.saturating_sub(1) {
        0 => String::new(),
        n => format!(", after {n} reconnection(s)"),
    }
}

/// The inputs `audit replay` was given (each overrides the recorded one).
struct ReplayInputs {
    input: Option<String>,
    quotes: Option<String>,
    orders: Option<String>,
    state_dir: Option<PathBuf>,
}

/// `verity audit replay`: the recorded command line says the app and its
/// options; the inputs are the recorded ones unless given.
fn replay(dir: &std::path::Path, given: ReplayInputs, output: Option<&std::path::Path>) -> Result<i32> {
    use verity_core::replay::RecordedRun;
    let mut run = RecordedRun::read(&mut crate::audit::open(dir)?)?;
    let (app, mut args) = recorded_run(&run.start.args)?;
    if let Some(recovery) = run.recovered_from {
        let Some(state_dir) = given.state_dir.or(args.checkpoints.state_dir.clone()) else {
            bail!(
                "the newest life recovered from checkpoint {}, but its command line names no state dir: \
                 give it with --state-dir DIR",
                recovery.checkpoint
            );
        };
        if !state_dir.is_dir() {
            bail!(
                "the newest life recovered from checkpoint {}, which the replay restores from the run's \
                 state dir; {} is not a directory (give the run's with --state-dir DIR)",
                recovery.checkpoint,
                state_dir.display()
            );
        }
        let storage = verity_state::storage::DirStorage::open(&state_dir)
            .with_context(|| format!("cannot open the state dir {}", state_dir.display()))?;
        run.restore_from(storage)?;
    }
    let replayable = |path: &Option<String>| {
        path.as_deref()
            .is_some_and(|p| p != "-" && !p.starts_with("tcp:"))
    };
    if given.input.is_some() || given.quotes.is_some() {
        args.generate = None;
        args.input = given.input;
        args.quotes = given.quotes;
        args.orders = given.orders;
    } else if args.generate.is_none()
        && !replayable(&args.input)
        && !(replayable(&args.quotes) && replayable(&args.orders))
    {
        bail!(
            "the recorded run read stdin or TCP, which cannot be read again: give the same input with \
             --input PATH (or --quotes/--orders)"
        );
    }
    let input = app_input(app, &args, &connectors())?;
    let options = app_options(&args);
    let mut file;
    let mut discard = std::io::sink();
    let out: &mut dyn std::io::Write = match output {
        Some(path) => {
            file = std::io::BufWriter::new(
                std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
            );
            &mut file
        }
        None => &mut discard,
    };
    let report = verity_apps::drive_app(app, input, options, verity_apps::Replay { run, out })??;
    match &report.divergence {
        None => {
            eprintln!(
                "verity audit replay: {} output lines ({} bytes) from {} batches applied in the recorded order: \
                 byte-identical to the recorded run",
                report.lines, report.bytes, report.units
            );
            Ok(0)
        }
        Some(why) => {
            eprintln!(
                "verity audit replay: DIVERGED after {} identical output lines: {why}",
                report.lines
            );
            Ok(1)
        }
    }
}

impl RunApp {
    fn into_parts(self) -> (AppName, RunArgs) {
        match self {
            RunApp::Doubler(a) => (AppName::Doubler, a),
            RunApp::Wordcount(a) => (AppName::Wordcount, a),
            RunApp::MarketSpread(a) => (AppName::MarketSpread, a),
            RunApp::SeqWindow(a) => (AppName::SeqWindow, a),
            RunApp::WindowCount(a) => (AppName::WindowCount, a),
        }
    }
}

/// The app and flags of a recorded `verity run` command line.
fn recorded_run(command_line: &[String]) -> Result<(AppName, RunArgs)> {
    let recorded = Cli::try_parse_from(command_line)
        .map_err(|e| anyhow::anyhow!("the recorded command line does not parse with this build: {e}"))?;
    let Command::Run { app } = recorded.command else {
        bail!(
            "the recorded process was not a `verity run`: {}",
            command_line.join(" ")
        );
    };
    Ok(app.into_parts())
}

/// Parses SOURCE:LINE[.PART] (or LINE, of source 0).
fn parse_input_id(text: &str) -> Result<verity_audit::Id> {
    let bad = || {
        anyhow::anyhow!("`{text}` is not an input id: SOURCE:LINE[.PART], e.g. 0:17 (or LINE for source 0)")
    };
    let (source, rest) = text.split_once(':').unwrap_or(("0", text));
    let (line, part) = rest.split_once('.').unwrap_or((rest, "0"));
    Ok(verity_audit::Id {
        producer: source.parse().map_err(|_| bad())?,
        seq: line.parse().map_err(|_| bad())?,
        part: part.parse().map_err(|_| bad())?,
    })
}

/// `verity audit trace`.
fn trace(
    dir: &std::path::Path,
    output_id: Option<String>,
    input_id: Option<String>,
    output_line: Option<u64>,
) -> Result<i32> {
    use verity_audit::query::{Log, NoteView};
    let (log, report) = Log::read(&mut crate::audit::open(dir)?)?;
    if let Some(problem) = report.problems.first() {
        eprintln!("warning: the log does not verify past {problem}; what follows is from the part before it");
    }
    let app = log
        .command_line()
        .and_then(|line| recorded_run(line).ok())
        .map(|(app, _)| app);
    let generic = |note: &[u8]| NoteView {
        text: format!("a note of {} bytes", note.len()),
        refers_to: Vec::new(),
    };
    let render: &dyn Fn(&[u8]) -> NoteView = match app {
        Some(AppName::MarketSpread) => &verity_apps::market_spread::note_view,
        _ => &generic,
    };
    let id = match (output_id, input_id, output_line) {
        (_, Some(input), _) => parse_input_id(&input)?,
        (_, _, Some(line)) => match log.output_line(line) {
            Some((batch, id)) => {
                crate::audit::print_stdout(&format!(
                    "output line {line}: written by shard {} from input {id}\n",
                    batch.shard
                ))?;
                id
            }
            None => {
                bail!("the log has no lineage for output line {line} (out of range, or a worker's output)")
            }
        },
        (Some(output), _, _) if app == Some(AppName::MarketSpread) => {
            let order: u64 = output.parse().map_err(|_| {
                anyhow::anyhow!("market-spread's output id is its order id, a number: `{output}`")
            })?;
            let is_order = |note: &[u8]| {
                verity_apps::market_spread::DecisionNote::decode(note).is_ok_and(|n| n.order_id == order)
            };
            log.find_note(is_order)
                .ok_or_else(|| anyhow::anyhow!("no decision on order {order} in the log"))?
        }
        (Some(output), _, _) => parse_input_id(&output)?,
        (None, None, None) => bail!("say what to trace: --output-id, --input-id or --output-line"),
    };
    crate::audit::print_stdout(&log.trace_input(id, render))?;
    Ok(0)
}

/// `bench --processes`: the network settings of `run`'s defaults.
const BENCH_PEER_TIMEOUT_MS: u64 = 5_000;
const BENCH_PEER_LOST_MS: u64 = 30_000;

/// `--processes P`: 1 to 64, with a line that says why not.
fn parse_processes(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("a run needs at least one process (1: this process alone)".into()),
        Ok(p @ 1..=64) => Ok(p),
        Ok(p) => Err(format!("{p} processes: a local cluster has at most 64")),
        Err(_) => Err(format!("`{text}` is not a number of processes")),
    }
}

fn bench(args: BenchArgs) -> Result<i32> {
    let options = crate::bench::BenchOptions {
        app: args.app.into(),
        events: args.events,
        workers: args
            .workers
            .map_or_else(verity_core::runtime::default_workers, |n| n as usize),
        rate: args.rate,
        audit: args.audit.settings(),
        pin_cores: !args.no_pin,
        processes: args.processes,
        net: crate::cluster::NetOptions {
            secret_file: None,
            peer_timeout_ms: BENCH_PEER_TIMEOUT_MS,
            peer_lost_ms: BENCH_PEER_LOST_MS,
            stop_deadline_ms: GRACEFUL_STOP_DEADLINE_MS,
        },
        exactly_once: args.exactly_once,
        state_dir: args.state_dir,
        checkpoint_interval_ms: args.checkpoint_interval_ms,
    };
    if args.sweep {
        let sweep = crate::bench::sweep(&options)?;
        print!("{}", sweep.text());
        if let Some(path) = &args.json {
            crate::bench::write_file(path, &sweep.json())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(0);
    }
    let report = crate::bench::run(&options)?;
    print!("{}", report.text());
    if let Some(path) = &args.json {
        crate::bench::write_file(path, &report.json())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        crate::bench::write_file(path, &crate::bench_html::page(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let (Some(path), Some(latency)) = (&args.hgrm, &report.latency) {
        crate::bench::write_file(path, &crate::bench::hgrm(&latency.histogram))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(0)
}
