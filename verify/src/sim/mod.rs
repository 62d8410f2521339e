//! The deterministic cluster simulator.
//!
//! One thread runs a whole cluster — every process's shards (the production
//! `ShardCore` state machines, each driven by the production `ShardDriver`
//! over bounded queues), its readers (the production `LineChunker` and
//! `Dealer`, over input that arrives at seeded rates, one or two sources),
//! the network between processes (the production
//! frame codec and channel protocol: numbering, windows, acks, retransmits,
//! dedup) and each process's clock — on a virtual clock with one seeded RNG.
//! Faults are drawn from the seed: dropped, duplicated, delayed, reordered and
//! corrupted bytes, connection cuts, partitions, process pauses, clock jumps,
//! connections with the wrong secret and frames forged on another peer's
//! channel. Each process runs the production peer protocol
//! (`verity_net::peer`); the simulator only carries its bytes. Each seed
//! ends by healing every fault and checking the output against the app's
//! oracle (two streams: against some interleaving of them), the dead letters
//! against the malformed input lines, the shards' internal assertions, and
//! that everything finished within a bounded simulated time after healing.
//!
//! Same seed, same commit: the same run, event for event — `trace_hash` says
//! so, and `--trace` prints the events. A crash (every process at once) and a
//! restart (one process alone, back as a new life) lose unsynced writes and
//! end in a recovery of the whole cluster from its newest checkpoint: a
//! process is a set of shards plus its channels' state, all owned by `World`.

mod audit_checks;
mod checks;
pub mod disk;
mod stats;
mod world;

pub use stats::SimStats;
pub use world::AuditPlan;

use crate::{compare, verify_dead_letters, verify_two_streams, App, NamedInput, Report};
use bytes::Bytes;
use std::fmt;
use verity_apps::{drive_app, AppInput, AppName, AppOptions, Driver};
use verity_core::cluster::relay::RelayBugs;
use verity_core::driver::DriverBugs;
use verity_core::source::ReaderBugs;
use verity_core::{Dataflow, Key, RunError, SourceSpec, Wire};
use verity_net::peer::ProtocolBugs;

/// Which faults a run may inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    pub drop: bool,
    pub duplicate: bool,
    pub delay: bool,
    pub reorder: bool,
    pub cut: bool,
    pub partition: bool,
    pub pause: bool,
    pub clock: bool,
    /// Flipped bits, lost tails and spliced bytes on a link.
    pub corrupt: bool,
    /// A process with the wrong cluster secret connects (and sends data
    /// before any proof).
    pub wrong_secret: bool,
    /// An authenticated peer sends a well-formed frame on a channel another
    /// process owns.
    pub forge: bool,
    /// In one seed in `FAIL_SEED_ONE_IN`: a process fails (as when a shard
    /// thread panics) at a seeded time; the run must end everywhere, each
    /// process that was still running exits failed and says why, and the
    /// process exits for good (its connections reset, dials to it refused).
    pub fail: bool,
    /// In one seed in `STOP_SEED_ONE_IN`: a stop (Ctrl-C, SIGTERM) reaches
    /// process 0 (sometimes every process) at a seeded time. The sources end
    /// where they are; the run must end, and if it ends done, its output is
    /// checked against the input read up to the stop.
    pub stop: bool,
    /// In one seed in `CRASH_SEED_ONE_IN`: every process dies at once
    /// (kill -9, power loss) at a seeded time, losing whatever the disk had
    /// not synced; the cluster restarts from its newest complete checkpoint
    /// (`--recover`), and the finished output must be exact.
    pub crash: bool,
    /// In one seed in `RESTART_SEED_ONE_IN` of those with checkpoints on:
    /// one process (a worker, sometimes process 0) dies alone and comes back
    /// soon as a new life (a new incarnation, no channel state). A survivor
    /// that knew its old life must notice at the first handshake and fail
    /// the run; then every process restarts from the newest complete
    /// checkpoint, as after `crash`, and the finished output must be exact.
    pub restart: bool,
}

impl Faults {
    pub const NAMES: [&'static str; 15] = [
        "drop",
        "duplicate",
        "delay",
        "reorder",
        "cut",
        "partition",
        "pause",
        "clock",
        "corrupt",
        "wrong-secret",
        "forge",
        "fail",
        "stop",
        "crash",
        "restart",
    ];

    pub fn all() -> Faults {
        Faults::none().with_all(true)
    }

    pub fn none() -> Faults {
        Faults {
            drop: false,
            duplicate: false,
            delay: false,
            reorder: false,
            cut: false,
            partition: false,
            pause: false,
            clock: false,
            corrupt: false,
            wrong_secret: false,
            forge: false,
            fail: false,
            stop: false,
            crash: false,
            restart: false,
        }
    }

    fn with_all(mut self, on: bool) -> Faults {
        for name in Faults::NAMES {
            *self.flag(name).expect("known name") = on;
        }
        self
    }

    fn flag(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "drop" => &mut self.drop,
            "duplicate" => &mut self.duplicate,
            "delay" => &mut self.delay,
            "reorder" => &mut self.reorder,
            "cut" => &mut self.cut,
            "partition" => &mut self.partition,
            "pause" => &mut self.pause,
            "clock" => &mut self.clock,
            "corrupt" => &mut self.corrupt,
            "wrong-secret" => &mut self.wrong_secret,
            "forge" => &mut self.forge,
            "fail" => &mut self.fail,
            "stop" => &mut self.stop,
            "crash" => &mut self.crash,
            "restart" => &mut self.restart,
            _ => return None,
        })
    }

    /// `all`, `none`, or a comma-separated list of fault names.
    pub fn parse(text: &str) -> Result<Faults, String> {
        match text {
            "all" => return Ok(Faults::all()),
            "none" | "" => return Ok(Faults::none()),
            _ => {}
        }
        let mut faults = Faults::none();
        for name in text.split(',') {
            let name = Faults::canonical(name.trim())?;
            let known = Faults::NAMES.join(", ");
            *faults
                .flag(name)
                .ok_or_else(|| format!("unknown fault `{name}` (known: {known}, or all / none)"))? = true;
        }
        Ok(faults)
    }

    /// The fault a name or a common synonym of it means (`dup`, `clock-skew`, …).
    fn canonical(name: &str) -> Result<&str, String> {
        Ok(match name {
            "dup" | "duplicates" => "duplicate",
            "delays" => "delay",
            "drops" | "loss" => "drop",
            "conn-cut" | "connection-cut" | "disconnect" => "cut",
            "network-partition" | "partitions" => "partition",
            "pauses" => "pause",
            "corruption" | "bitflip" | "bit-flip" => "corrupt",
            "wrong_secret" | "bad-secret" | "auth" => "wrong-secret",
            "forged" | "byzantine" => "forge",
            "failure" | "panic" => "fail",
            "ctrl-c" | "sigterm" | "interrupt" => "stop",
            "skew" | "clock-skew" | "clock-jump" | "jump" => "clock",
            "kill" | "kill-9" | "power-loss" => "crash",
            "process-restart" | "reboot" => "restart",
            other => other,
        })
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut copy = *self;
        let on: Vec<&str> = Faults::NAMES
            .into_iter()
            .filter(|n| *copy.flag(n).expect("known"))
            .collect();
        match on.len() {
            0 => f.write_str("none"),
            n if n == Faults::NAMES.len() => f.write_str("all"),
            _ => f.write_str(&on.join(",")),
        }
    }
}

/// Bugs a test can plant without editing code, to prove the simulator finds
/// them. Each lives in the shared production code it would be a bug of, off
/// unless a test turns it on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Shards apply replayed batches and receivers keep replayed frames.
    pub no_dedup: bool,
    /// In the shared peer protocol (`verity_net::peer`).
    pub protocol: ProtocolBugs,
    /// In the shared shard driver (`verity_core::driver`).
    pub driver: DriverBugs,
    /// In the shared reader loop (`verity_core::source::ReadLoop`).
    pub reader: ReaderBugs,
    /// In the shared output relay (`verity_core::cluster::relay`).
    pub relay: RelayBugs,
    /// In the output thread's logic (`verity_core::sink::OutputWriter`).
    pub output: verity_core::sink::OutputBugs,
    /// In recovery (`verity_core::checkpoint::Checkpointer::recover`).
    pub recover: verity_core::checkpoint::RecoverBugs,
    /// In market-spread's logic (what only the audit log can judge).
    pub market_spread: verity_apps::market_spread::Bugs,
    /// In the Kafka sink's transaction protocol (`verity_kafka::LogSink`;
    /// caught with `SimConfig::log_sink`).
    pub kafka: verity_kafka::SinkBugs,
    /// In a worker's own sink (`verity_core::member_sink`; caught with
    /// `SimConfig::member_sinks`).
    pub member: verity_core::member_sink::MemberSinkBugs,
    /// In process 0's checkpoint coordination of sinks written by every
    /// process (`verity_core::checkpoint::Checkpointer`).
    pub coordinator: verity_core::checkpoint::CoordinatorBugs,
    /// In the shard's watermarks (`verity_core::event_time`; only the
    /// event-time apps, window-count and Nexmark q5/q7/q8, reach them).
    pub event_time: verity_core::event_time::EventTimeBugs,
    /// In the Nexmark queries (`verity_apps::nexmark::Bugs`; only their
    /// seeds reach them).
    pub nexmark: verity_apps::nexmark::Bugs,
}

impl PlantedBugs {
    /// The names `verity sim --plant-bug` takes.
    pub const NAMES: [&'static str; 16] = [
        "no-dedup",
        "no-retransmit",
        "resend-from-wrong-seq",
        "accept-other-peers-channel",
        "admit-duplicate-as-new",
        "resume-one-past-applied",
        "ack-one-past-consumed",
        "skip-idle-flush",
        "reorder-parked-retry",
        "reader-ends-at-first-idle",
        "relay-drops-dead-letters",
        "ignore-peer-restart",
        "commit-before-durable",
        "commit-before-lineage-durable",
        "state-from-older-checkpoint",
        "stale-quote",
    ];

    /// Bugs of the Kafka sink, which only seeds with `log_sink` reach.
    pub const LOG_SINK_NAMES: [&'static str; 2] = ["kafka-commit-at-barrier", "kafka-skip-recommit"];

    /// Bugs of sinks written by every process, which only seeds with
    /// `member_sinks` reach.
    pub const MEMBER_SINK_NAMES: [&'static str; 2] =
        ["member-commit-before-manifest", "complete-without-a-member-mark"];

    /// Bugs of the Nexmark queries, which only their seeds reach.
    pub const NEXMARK_NAMES: [&'static str; 1] = ["q2-off-by-one"];

    /// Bugs of event time, which only event-time apps' seeds reach.
    pub const EVENT_TIME_NAMES: [&'static str; 2] = ["watermark-ignores-delay", "fire-one-ms-early"];

    /// The bug a name plants.
    pub fn named(name: &str) -> Result<PlantedBugs, String> {
        let mut bugs = PlantedBugs::default();
        *match name {
            "kafka-commit-at-barrier" => &mut bugs.kafka.commit_at_barrier,
            "kafka-skip-recommit" => &mut bugs.kafka.skip_recommit,
            "member-commit-before-manifest" => &mut bugs.member.commit_before_manifest,
            "complete-without-a-member-mark" => &mut bugs.coordinator.complete_without_last_member_mark,
            "watermark-ignores-delay" => &mut bugs.event_time.watermark_ignores_delay,
            "fire-one-ms-early" => &mut bugs.event_time.fire_one_ms_early,
            "no-dedup" => &mut bugs.no_dedup,
            "no-retransmit" => &mut bugs.protocol.no_retransmit,
            "resend-from-wrong-seq" => &mut bugs.protocol.resend_from_wrong_seq,
            "accept-other-peers-channel" => &mut bugs.protocol.accept_other_peers_channel,
            "admit-duplicate-as-new" => &mut bugs.protocol.admit_duplicate_as_new,
            "resume-one-past-applied" => &mut bugs.protocol.resume_one_past_applied,
            "ack-one-past-consumed" => &mut bugs.protocol.ack_one_past_consumed,
            "skip-idle-flush" => &mut bugs.driver.skip_idle_flush,
            "reorder-parked-retry" => &mut bugs.driver.reorder_parked_retry,
            "reader-ends-at-first-idle" => &mut bugs.reader.end_at_first_idle,
            "relay-drops-dead-letters" => &mut bugs.relay.drop_dead_letters,
            "ignore-peer-restart" => &mut bugs.protocol.ignore_peer_restart,
            "commit-before-durable" => &mut bugs.output.commit_before_durable,
            "commit-before-lineage-durable" => &mut bugs.output.commit_before_lineage_durable,
            "state-from-older-checkpoint" => &mut bugs.recover.state_from_older_checkpoint,
            "stale-quote" => &mut bugs.market_spread.stale_quote,
            "q2-off-by-one" => &mut bugs.nexmark.q2_off_by_one,
            other => {
                let known = [
                    &PlantedBugs::NAMES[..],
                    &PlantedBugs::LOG_SINK_NAMES[..],
                    &PlantedBugs::MEMBER_SINK_NAMES[..],
                    &PlantedBugs::EVENT_TIME_NAMES[..],
                    &PlantedBugs::NEXMARK_NAMES[..],
                ]
                .concat()
                .join(", ");
                return Err(format!("unknown planted bug `{other}` (known: {known})"));
            }
        } = true;
        Ok(bugs)
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub app: AppName,
    pub seed: u64,
    pub processes: u32,
    pub workers: u32,
    pub faults: Faults,
    /// Faults happen during this much simulated time; then all heal.
    pub sim_seconds: u64,
    /// Input records (generated from the seed).
    pub records: u64,
    /// Keep the event lines (the hash is computed either way).
    pub trace: bool,
    pub bugs: PlantedBugs,
    /// Input streams: 1, or 2 for market-spread (quotes and orders as two
    /// sources at different rates).
    pub streams: u32,
    /// wordcount's `--final`: counts only at the end of input.
    pub final_counts: bool,
    /// Keep an audit log (`Some(true)`), not (`Some(false)`), or as the
    /// seed draws (`None`: one seed in `AUDIT_SEED_ONE_IN`).
    pub audit: Option<bool>,
    /// The one input is a spread source (`streams::Streams`): split by key
    /// into one partition per process, each read by that process's reader
    /// (no audit log: its replay reads sources on one process).
    pub spread: bool,
    /// Process 0's output also goes through the Kafka sink's transaction
    /// protocol (`verity_kafka::LogSink`, exactly-once) into a simulated
    /// broker that outlives crashes, and the output checked is what a
    /// read_committed consumer of its topic sees (`verity sim --sink
    /// txn-log`).
    pub log_sink: bool,
    /// With `log_sink`, in a cluster: every process writes its own shards'
    /// output into its own transactional sink (`verity_core::member_sink`,
    /// transactional id per process), process 0 completes each checkpoint
    /// with every worker's sink mark, and each worker commits when process
    /// 0 says it completed (`verity sim --sink txn-log-per-process`).
    pub member_sinks: bool,
}

/// One seed in this many keeps an audit log, unless the config says.
pub const AUDIT_SEED_ONE_IN: u64 = 2;
/// Of market-spread seeds with an audit log, one in this many applies the
/// stale-quote rule (`--max-quote-age-ms`), with one of these bounds.
const STALE_QUOTE_RULE_ONE_IN: u64 = 2;
const MAX_QUOTE_AGES_MS: [u64; 4] = [1, 20, 200, 2000];

/// A seed's audit log, and the rule that only the log makes checkable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditSetup {
    pub plan: Option<AuditPlan>,
    /// market-spread's `--max-quote-age-ms` (only with an audit log).
    pub max_quote_age_ms: Option<u64>,
}

impl AuditSetup {
    /// Drawn from a stream of the seed's own, so no other draw moves.
    pub fn draw(config: &SimConfig) -> AuditSetup {
        if config.spread {
            return AuditSetup::default();
        }
        let mut rng = verity_core::SplitMix64::new(config.seed ^ 0x0a0d_1750_0000_5eed);
        let on = config
            .audit
            .unwrap_or_else(|| verity_core::Rng::chance(&mut rng, 1, AUDIT_SEED_ONE_IN));
        if !on {
            return AuditSetup::default();
        }
        let plan = AuditPlan::draw(&mut rng);
        let rule = config.app == AppName::MarketSpread
            && verity_core::Rng::chance(&mut rng, 1, STALE_QUOTE_RULE_ONE_IN);
        let age =
            MAX_QUOTE_AGES_MS[verity_core::Rng::below(&mut rng, MAX_QUOTE_AGES_MS.len() as u64) as usize];
        AuditSetup {
            plan: Some(plan),
            max_quote_age_ms: rule.then_some(age),
        }
    }
}

impl SimConfig {
    pub fn new(app: AppName, seed: u64) -> SimConfig {
        SimConfig {
            app,
            seed,
            processes: 3,
            workers: 2,
            faults: Faults::all(),
            sim_seconds: 30,
            records: 2_000,
            trace: false,
            bugs: PlantedBugs::default(),
            streams: 1,
            final_counts: false,
            audit: None,
            spread: false,
            log_sink: false,
            member_sinks: false,
        }
    }

    /// The command that replays this seed with its trace.
    pub fn replay_command(&self) -> String {
        let streams = if self.streams == 1 {
            String::new()
        } else {
            format!(" --streams {}", self.streams)
        };
        let streams = if self.final_counts {
            streams + " --final"
        } else {
            streams
        };
        let streams = match self.audit {
            None => streams,
            Some(true) => streams + " --audit on",
            Some(false) => streams + " --audit off",
        };
        let streams = if self.spread {
            streams + " --spread"
        } else {
            streams
        };
        let streams = match (self.log_sink, self.member_sinks) {
            (true, true) => streams + " --sink txn-log-per-process",
            (true, false) => streams + " --sink txn-log",
            _ => streams,
        };
        format!(
            "verity sim --app {} --seed {} --processes {} --workers {} --faults {} --sim-seconds {} --records {}{streams} --trace",
            self.app.name(),
            self.seed,
            self.processes,
            self.workers,
            self.faults,
            self.sim_seconds,
            self.records
        )
    }
}

/// How one seed went.
#[derive(Debug, Clone)]
pub struct SimOutcome {
    pub seed: u64,
    /// Why the seed failed, if it did.
    pub failure: Option<String>,
    pub trace_hash: u64,
    pub trace: Vec<String>,
    pub events: u64,
    pub sim_time_us: u64,
    pub faults_injected: u64,
    /// How often each rare path and fault ran (`verity sim --stats`).
    pub stats: SimStats,
    pub report: Option<Report>,
    /// An injected fault (`fail`, or a `stop` the run could not finish in
    /// time) ended the run before it completed: the seed checks that it
    /// ended everywhere as it should, not its output.
    pub failure_injected: bool,
    /// The `stop` fault ended the sources early: how many bytes of each
    /// source were read (the output is checked against that prefix).
    pub stopped_at: Option<Vec<usize>>,
}

impl SimOutcome {
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }

    /// A seed that failed before it produced a trace.
    fn failed_before_running(seed: u64, failure: String) -> SimOutcome {
        SimOutcome {
            seed,
            failure: Some(failure),
            trace_hash: 0,
            trace: Vec::new(),
            events: 0,
            sim_time_us: 0,
            faults_injected: 0,
            stats: SimStats::default(),
            report: None,
            failure_injected: false,
            stopped_at: None,
        }
    }
}

/// Runs one seed to its end and checks it: the output against the app's
/// oracle (or, for two streams, against some interleaving of them), and the
/// dead letters against the malformed input lines.
pub fn run_seed(config: &SimConfig) -> SimOutcome {
    let audit = AuditSetup::draw(config);
    // The stale-quote rule is checked against the audit log of the newest
    // life: such seeds keep the cluster to one life.
    let one_life;
    let config = if audit.max_quote_age_ms.is_some() {
        one_life = SimConfig {
            faults: Faults {
                crash: false,
                restart: false,
                ..config.faults
            },
            ..config.clone()
        };
        &one_life
    } else {
        config
    };
    let streams = match sim_inputs(config) {
        Ok(streams) => streams,
        Err(e) => return failed(config, e),
    };
    if config.spread && streams.len() != 1 {
        return failed(config, "--spread reads one input stream".into());
    }
    if config.spread && matches!(config.app, AppName::WindowCount | AppName::Nexmark(_)) {
        // A spread source is a stream per process, each with its own
        // watermark: which records are late then depends on the split (and
        // Nexmark's reference models read the events in their one order).
        return failed(
            config,
            format!("--spread: {}'s oracle models one input stream", config.app.name()),
        );
    }
    // What the world's readers read: per stream, its name and input.
    let inputs: Vec<(String, Bytes)> = if config.spread {
        checks::partition_by_key(config.app, &streams[0].data, config.processes)
            .into_iter()
            .enumerate()
            .map(|(q, data)| (format!("{}@p{q}", streams[0].name), data))
            .collect()
    } else {
        streams
            .iter()
            .map(|s| (s.name.to_string(), s.data.clone()))
            .collect()
    };
    // A spread seed is checked against its partitions, back to back: a
    // key's lines are in one of them, in order.
    let streams = if config.spread {
        vec![checks::Stream {
            data: Bytes::from(
                inputs
                    .iter()
                    .flat_map(|(_, data)| data.to_vec())
                    .collect::<Vec<u8>>(),
            ),
            ..streams[0].clone()
        }]
    } else {
        streams
    };
    if config.final_counts && config.app != AppName::Wordcount {
        return failed(
            config,
            format!("--final is for wordcount, not {}", config.app.name()),
        );
    }
    // Sources stay open until the output their input's whole lines must
    // produce is in (a reader cannot pass on a last line without a newline
    // before the end of its input); final counts come only after the end.
    let expected_lines = if config.final_counts {
        0
    } else {
        let whole_lines: Vec<checks::Stream> = streams
            .iter()
            .map(|stream| {
                let end = stream
                    .data
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |at| at + 1);
                checks::Stream {
                    data: stream.data.slice(..end),
                    ..stream.clone()
                }
            })
            .collect();
        checks::expected_output_lines(config.app, &whole_lines)
    };
    let driver = SimDriver {
        config,
        inputs: inputs.clone(),
        expected_lines,
        audit,
    };
    let options = AppOptions {
        final_counts: config.final_counts,
        max_quote_age_ms: audit.max_quote_age_ms,
        market_spread_bugs: config.bugs.market_spread,
        nexmark_bugs: config.bugs.nexmark,
    };
    let outcome = drive_app(config.app, app_input(&streams), options, driver);
    let mut outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => return failed(config, format!("cannot build the app: {e}")),
    };
    // A stopped run's output is that of the input read before the stop.
    let read: Vec<(String, Bytes)> = match &outcome.sim.stopped_at {
        Some(read) => inputs
            .iter()
            .zip(read)
            .map(|((name, data), &bytes)| (name.clone(), data.slice(..bytes)))
            .collect(),
        None => inputs,
    };
    let streams: Vec<checks::Stream> = match (&outcome.sim.stopped_at, config.spread) {
        (None, _) => streams,
        (Some(_), true) => vec![checks::Stream {
            data: Bytes::from(
                read.iter()
                    .flat_map(|(_, data)| data.to_vec())
                    .collect::<Vec<u8>>(),
            ),
            ..streams[0].clone()
        }],
        (Some(_), false) => streams
            .iter()
            .zip(&read)
            .map(|(stream, (_, data))| checks::Stream {
                data: data.clone(),
                ..stream.clone()
            })
            .collect(),
    };
    // Dead letters name the stream that read the line and its line there.
    let letters: Vec<(String, checks::StreamKind, Bytes)> = if config.spread {
        read.into_iter()
            .map(|(name, data)| (name, checks::StreamKind::Mixed, data))
            .collect()
    } else {
        streams
            .iter()
            .map(|s| (s.name.to_string(), s.kind, s.data.clone()))
            .collect()
    };
    match outcome.sim.failure.take() {
        // A run that failed on purpose has no output to check; its audit
        // log must still verify.
        None if outcome.sim.failure_injected => {
            outcome.sim.failure = outcome
                .audit
                .as_ref()
                .and_then(|run| audit_checks::check_chains(run).err());
        }
        None => {
            outcome.sim.failure =
                check_outcome(config, (&streams, &letters), &mut outcome, audit.max_quote_age_ms)
                    .or_else(|| check_audit(config, &outcome, app_input(&streams), options).err())
        }
        // A run that never finished: say, as the oracle would, what its
        // output lacks so far (besides where it is stuck).
        Some(stuck) if stuck.starts_with("liveness") => {
            let lacking = check_output(config, &streams, &mut outcome).map_or(String::new(), |report| {
                let head: Vec<&str> = report.lines().take(LACKING_LINES_SHOWN).collect();
                format!("\nwhen it stopped, {}", head.join("\n"))
            });
            outcome.sim.failure = Some(stuck + &lacking);
        }
        failure => outcome.sim.failure = failure,
    }
    outcome.sim
}

/// Lines of the oracle's report a liveness failure shows.
const LACKING_LINES_SHOWN: usize = 8;

/// Runs one seed and panics if it failed, saying why and how to replay it
/// (for tests: a failing seed is a finding to act on).
pub fn run_seed_ok(config: &SimConfig) -> SimOutcome {
    let outcome = run_seed(config);
    if let Some(failure) = &outcome.failure {
        panic!(
            "{} seed {}: {failure}\nreplay: {}",
            config.app.name(),
            config.seed,
            config.replay_command()
        );
    }
    outcome
}

/// A finished run's audit log: its chains verify, its lineage names the
/// output's lines, and a replay of its newest life (from the checkpoint it
/// recovered from, if it did) reproduces that life's output.
fn check_audit(
    config: &SimConfig,
    outcome: &Finished,
    input: AppInput,
    options: AppOptions,
) -> Result<(), String> {
    let Some(run) = &outcome.audit else {
        return Ok(());
    };
    audit_checks::check_chains(run)?;
    audit_checks::check_lineage(run, &outcome.output)?;
    audit_checks::check_clock_readings(run)?;
    audit_checks::check_replay(config, run, input, options, &outcome.output)?;
    Ok(())
}

/// Why a finished run's output or dead letters are wrong, if they are.
fn check_outcome(
    config: &SimConfig,
    (streams, letters): (&[checks::Stream], &[(String, checks::StreamKind, Bytes)]),
    outcome: &mut Finished,
    max_quote_age_ms: Option<u64>,
) -> Option<String> {
    let named: Vec<NamedInput<'_>> = letters
        .iter()
        .map(|(name, kind, data)| NamedInput {
            name,
            rule: kind.rule(config.app),
            data,
        })
        .collect();
    // window-count's late records are letters no line rule can judge:
    // its oracle names them.
    let letters = match (config.app, streams) {
        (verity_apps::AppName::WindowCount, [single]) => {
            let all = outcome
                .dead_letters
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty());
            let late = all.clone().filter(|l| crate::windowed::is_late_letter(l));
            if let Err(why) = crate::windowed::check_late_letters(&single.data, late) {
                return Some(why);
            }
            let rest: Vec<u8> = all
                .filter(|l| !crate::windowed::is_late_letter(l))
                .flat_map(|l| l.iter().copied().chain([b'\n']))
                .collect();
            verify_dead_letters(&named, &rest)
        }
        _ => verify_dead_letters(&named, &outcome.dead_letters),
    };
    if !letters.is_ok() {
        return Some(format!(
            "dead letters differ from the malformed input lines:\n{letters}"
        ));
    }
    match (max_quote_age_ms, &outcome.audit) {
        // Decisions on the clock: only the audit log can say what was right.
        (Some(age), Some(run)) => audit_checks::check_market_spread(run, streams, &outcome.output, age).err(),
        (Some(_), None) => Some("the stale-quote rule without an audit log".into()),
        (None, _) => check_output(config, streams, outcome),
    }
}

/// Why a run's output is wrong against the oracle, if it is.
fn check_output(config: &SimConfig, streams: &[checks::Stream], outcome: &mut Finished) -> Option<String> {
    match streams {
        [single] if config.app == verity_apps::AppName::WindowCount => {
            crate::windowed::check_windows(&single.data, &outcome.output).err()
        }
        [single] => {
            let app = App::from_name(config.app.name(), config.final_counts).expect("known app");
            let report = compare(app, &single.data, &outcome.output);
            let failure = (!report.is_ok()).then(|| format!("output differs from the oracle:\n{report}"));
            outcome.sim.report = Some(report);
            failure
        }
        [quotes, orders] => {
            let report = verify_two_streams(&quotes.data, &orders.data, &outcome.output);
            let failure = (!report.is_ok())
                .then(|| format!("two-stream output is no interleaving of quotes and orders:\n{report}"));
            outcome.sim.report = Some(report);
            failure
        }
        _ => unreachable!("one or two streams"),
    }
}

/// The streams as the app's sources read them (from memory).
fn app_input(streams: &[checks::Stream]) -> AppInput {
    match streams {
        [single] => AppInput::Single(SourceSpec::memory(single.name, single.data.clone())),
        [quotes, orders] => AppInput::QuotesAndOrders {
            quotes: SourceSpec::memory(quotes.name, quotes.data.clone()),
            orders: SourceSpec::memory(orders.name, orders.data.clone()),
        },
        _ => unreachable!("one or two streams"),
    }
}

/// One-stream seeds whose input ends without a newline: one in this many.
const UNTERMINATED_LAST_LINE_ONE_IN: u64 = 4;

/// Nexmark events per second of event time in the simulator: 600 events
/// then span 30 s, fifteen slides of q5's hopping windows and three of
/// q8's tumbling ones.
pub const SIM_NEXMARK_EVENT_RATE_PER_S: u64 = 20;

/// The seed's generated input streams.
fn sim_inputs(config: &SimConfig) -> Result<Vec<checks::Stream>, String> {
    let (app, records, seed) = (config.app, config.records, config.seed);
    match config.streams {
        1 => {
            let mut data = match app {
                // Nexmark's own generator, slowed so a seed's few events
                // span many windows (closed while faults happen, not only at
                // the end); a seed is its first event id, so a seed is a run.
                AppName::Nexmark(_) => {
                    let rate = SIM_NEXMARK_EVENT_RATE_PER_S;
                    verity_apps::nexmark::generator::check_options(seed, rate)?;
                    verity_apps::nexmark::generator::generate_all(records, seed, rate)
                }
                app => verity_apps::generate::generate_all(app, records, seed),
            };
            // In one seed of four, the last line has no newline, as files
            // often end (chosen from the seed alone: no draw moves); a
            // spread seed's partition files end in newlines.
            if seed % UNTERMINATED_LAST_LINE_ONE_IN == 2 && data.last() == Some(&b'\n') && !config.spread {
                data.pop();
            }
            Ok(vec![checks::Stream {
                name: "sim",
                kind: checks::StreamKind::Mixed,
                data: Bytes::from(data),
            }])
        }
        2 if app == AppName::MarketSpread => {
            let (quotes, orders) = verity_apps::generate::generate_quotes_and_orders(records, seed);
            Ok(vec![
                checks::Stream {
                    name: "quotes",
                    kind: checks::StreamKind::Quotes,
                    data: Bytes::from(quotes),
                },
                checks::Stream {
                    name: "orders",
                    kind: checks::StreamKind::Orders,
                    data: Bytes::from(orders),
                },
            ])
        }
        2 => Err(format!(
            "--streams 2 is for market-spread (quotes and orders), not {}",
            app.name()
        )),
        n => Err(format!("--streams {n}: give 1 or 2")),
    }
}

fn failed(config: &SimConfig, failure: String) -> SimOutcome {
    SimOutcome::failed_before_running(config.seed, failure)
}

/// A finished world: its outcome, the output it wrote and its dead-letter
/// file.
struct Finished {
    sim: SimOutcome,
    output: Vec<u8>,
    dead_letters: Vec<u8>,
    /// The audit log, when the seed kept one.
    audit: Option<AuditedRun>,
}

/// A seed's audit log at the end: its disk and every running process's
/// chain head (`Err` if a writer failed at the end), and how many lives
/// the cluster had (a crash starts another).
struct AuditedRun {
    plan: AuditPlan,
    finished: Result<(disk::SharedDisk, Vec<verity_audit::ChainHead>), String>,
    lives: u32,
    /// The state dir's disk: a replay of a recovered life restores the
    /// checkpoint it began from.
    state_dir: disk::SharedDisk,
}

struct SimDriver<'a> {
    config: &'a SimConfig,
    /// Per stream: its name and input (a spread source's partitions).
    inputs: Vec<(String, Bytes)>,
    expected_lines: u64,
    audit: AuditSetup,
}

impl Driver for SimDriver<'_> {
    type Out = Finished;
    fn drive<K, V, S, O>(self, flow: Dataflow<K, V, S, O>) -> Result<Finished, RunError>
    where
        K: Key + Wire,
        V: Wire + Send + 'static,
        S: verity_core::State,
        O: 'static,
    {
        Ok(world::simulate(
            self.config,
            flow.logic,
            &self.inputs,
            self.expected_lines,
            self.audit,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_print() {
        assert_eq!(Faults::parse("all").unwrap(), Faults::all());
        let some = Faults::parse("drop,cut").unwrap();
        assert!(some.drop && some.cut && !some.pause);
        assert_eq!(some.to_string(), "drop,cut");
        assert!(Faults::parse("gremlins").is_err());
        assert_eq!(Faults::parse(&Faults::all().to_string()).unwrap(), Faults::all());
    }

    #[test]
    fn fault_synonyms_mean_the_named_fault() {
        let some = Faults::parse("dup, clock-skew,connection-cut").unwrap();
        assert_eq!(some.to_string(), "duplicate,cut,clock");
        let crash = Faults::parse("drop,kill-9").unwrap();
        assert!(crash.crash && crash.drop && !crash.restart);
        let restart = Faults::parse("restart").unwrap();
        assert!(restart.restart && !restart.crash);
        assert_eq!(restart.to_string(), "restart");
    }
}
