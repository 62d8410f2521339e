//! The production driver: one pinned thread per shard, a reader thread per
//! source, one output thread; bounded queues between them. In a cluster, each
//! process runs its share of the shards; process 0 also runs the readers and
//! the output thread, and one relay thread per remote shard's output.
//!
//! Channels: per source, one queue of dealt chunks per shard, and one batch
//! queue per (sender, receiver) pair, so a slow source never blocks another
//! one's records (see `shard_loop` for why shards never deadlock).

mod audit;
mod gauges;
mod output_thread;
mod pinning;
mod reader_thread;
mod shard_loop;
mod wiring;

use crate::checkpoint::{Checkpointer, JobMeta, Restart, RestoreFrom, SourceMeta};
use crate::cluster::relay::{OutputRelay, Relayed};
use crate::cluster::{ClusterError, JobCheckpoints, Layout, RemoteIn};
use crate::connector::{SinkContext, SinkError, SourceError};
use crate::flow::Dataflow;
use crate::key::Key;
use crate::shard::{ShardCore, ShardCounters, ShardLimits};
use crate::sink::{
    DeadLetterSpec, DeadLetterWriter, OutputError, OutputLoop, OutputMessage, OutputWriter, SinkSpec,
};
use crate::source::SourceCut;
use crate::source::{self, Dealer, ReaderProgress, StopFlag};
use crate::streams::Streams;
use crate::wire::Wire;
use crate::State;
pub use audit::AuditSettings;
use audit::ProcessAudit;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use output_thread::write_outputs;
use pinning::Pinning;
pub use reader_thread::pump;
use shard_loop::{drive_shard, SourceErrors};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use verity_net::node::Node;
use verity_state::checkpoint::CheckpointStore;
use verity_state::storage::{DirStorage, Storage};
use wiring::{wire, Net};

/// How often waiting threads look at failure flags.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);

const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// How a run is laid out; every limit has a unit in its name.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub workers: usize,
    pub limits: ShardLimits,
    /// Depth of each shard's peer queue, in batches.
    pub queue_depth_batches: usize,
    /// Depth of each shard's source queue, in chunks.
    pub source_queue_depth_chunks: usize,
    /// Depth of the output thread's queue, in buffers.
    pub output_queue_depth_buffers: usize,
    pub pin_cores: bool,
    /// The core of this process's first shard (other processes of a local
    /// cluster take the cores after it).
    pub first_core: usize,
    /// Progress lines on stderr (shown only when stderr is a terminal).
    pub progress: bool,
    /// Checkpoints (`--state-dir`); none by default.
    pub checkpoints: Option<CheckpointSettings>,
    /// The audit log (`--audit`); none by default.
    pub audit: Option<AuditSettings>,
    /// Where the run shows its live counters (`--metrics-addr`); none by default.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// A run's checkpoints: where, how often, how many are kept, and whether the
/// run continues from the newest one.
#[derive(Debug, Clone)]
pub struct CheckpointSettings {
    pub state_dir: PathBuf,
    pub interval_ms: u64,
    pub retained: usize,
    /// Continue from the newest complete checkpoint (`--recover`); without
    /// it a state dir that holds one is refused, so a finished job's state
    /// is never overwritten by mistake.
    pub recover: bool,
    /// Names the job (app and options) in every manifest: a state dir of
    /// another job is refused. The runtime adds the layout and the sources.
    pub job: String,
    /// What a sink outside the run (`verity receive`) sees (`--delivery`).
    pub delivery: Delivery,
}

/// How a run with checkpoints delivers to a sink that cannot be cut back
/// (the TCP sink); files are cut back on recovery either way, at no cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Delivery {
    /// Output final at checkpoint boundaries, each line once across crashes
    /// (the TCP sink's two-phase commit with `verity receive`).
    #[default]
    ExactlyOnce,
    /// Output final as it arrives (lower latency); after a crash, what the
    /// recovered run writes again may repeat or replace lines.
    AtLeastOnce,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            workers: default_workers(),
            limits: ShardLimits::default(),
            queue_depth_batches: 64,
            source_queue_depth_chunks: 16,
            output_queue_depth_buffers: 64,
            pin_cores: true,
            first_core: 0,
            progress: true,
            checkpoints: None,
            audit: None,
            metrics: None,
        }
    }
}

/// One worker per core.
pub fn default_workers() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Where a run's output and dead letters go.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub sink: SinkSpec,
    pub dead_letter: DeadLetterSpec,
}

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub records_in: u64,
    pub records_out: u64,
    pub dead_lettered: u64,
    /// Of `dead_lettered`, the records that came too late for their
    /// watermark (`crate::event_time`).
    pub late: u64,
    pub duplicates_dropped: u64,
    pub wall: Duration,
    pub workers: usize,
    /// Stopped early by the stop flag (Ctrl-C).
    pub interrupted: bool,
    /// The first `SOURCE_ERRORS_KEPT_MAX` source failures, in the order seen.
    pub source_errors: Vec<String>,
    /// Source failures beyond those kept (counted, not stored).
    pub source_errors_not_kept: u64,
    /// Each shard's final counters and step timings, by global shard index:
    /// this process's shards and, on process 0 of a cluster, every remote
    /// shard's as it reported them when it finished.
    pub per_shard: Vec<(u32, ShardCounters)>,
}

impl RunSummary {
    /// Whether any source failed.
    pub fn sources_failed(&self) -> bool {
        !self.source_errors.is_empty() || self.source_errors_not_kept > 0
    }

    pub fn events_per_second(&self) -> f64 {
        self.records_in as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A sink could not be opened.
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("writing output failed: {0}")]
    Output(OutputError),
    #[error("a worker thread failed: {0}")]
    Worker(String),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("checkpoints: {0}")]
    Checkpoint(String),
    #[error("audit: {0}")]
    Audit(String),
}

/// Source failures kept word for word; a source that fails on every chunk
/// must not grow memory without bound, so the rest are only counted.
pub const SOURCE_ERRORS_KEPT_MAX: usize = 64;

/// The first `SOURCE_ERRORS_KEPT_MAX` messages, and how many more there were.
#[derive(Debug, Default)]
pub struct BoundedMessages {
    kept: Vec<String>,
    not_kept: u64,
}

impl BoundedMessages {
    pub fn push(&mut self, message: String) {
        if self.kept.len() < SOURCE_ERRORS_KEPT_MAX {
            self.kept.push(message);
        } else {
            self.not_kept += 1;
        }
        debug_assert!(self.kept.len() <= SOURCE_ERRORS_KEPT_MAX);
    }

    /// The kept messages and the count of the others.
    pub fn take(&mut self) -> (Vec<String>, u64) {
        (std::mem::take(&mut self.kept), std::mem::take(&mut self.not_kept))
    }
}

/// The first failure of any thread of a run (a panic, or a thread that
/// ended without finishing); the waiting thread looks at it, so a failure
/// anywhere ends the run within `CHECK_INTERVAL`.
#[derive(Debug, Default)]
pub struct RunFailure {
    first: Mutex<Option<String>>,
}

impl RunFailure {
    /// The first reason sticks: later ones are usually consequences.
    pub fn report(&self, reason: String) {
        self.first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
    }

    pub fn get(&self) -> Option<String> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The text of a panic's payload (`panic!` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Spawns a named thread whose panic is reported to `failure` (with the
/// thread's name and the panic message) instead of vanishing with the thread.
/// The handle yields `None` if the body panicked.
fn spawn_watched<T: Send + 'static>(
    name: String,
    failure: &Arc<RunFailure>,
    body: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<thread::JoinHandle<Option<T>>> {
    let failure = Arc::clone(failure);
    thread::Builder::new().name(name.clone()).spawn(move || {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            Ok(value) => Some(value),
            Err(payload) => {
                failure.report(format!("thread {name} panicked: {}", panic_message(&*payload)));
                None
            }
        }
    })
}

/// Test-only (debug builds): `VERITY_TEST_PANIC_AFTER_RECORDS=N` makes every
/// shard, or with `N@S` only global shard `S`, panic once it has taken N
/// records in, so tests can show that a panicked shard fails the run.
pub const TEST_PANIC_ENV: &str = "VERITY_TEST_PANIC_AFTER_RECORDS";
/// Test-only (debug builds), like `TEST_PANIC_ENV`, but the shard stops
/// making progress for good (it says so on stderr), so tests can show that a
/// stop request still ends the run by its deadline.
pub const TEST_HANG_ENV: &str = "VERITY_TEST_HANG_AFTER_RECORDS";

/// A planted test fault for `shard` from the environment variable `name`.
fn test_fault_after_records(name: &str, shard: u32) -> Option<u64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let value = std::env::var(name).ok()?;
    let (records, only_shard) = match value.split_once('@') {
        Some((records, shard)) => (records, Some(shard.parse::<u32>().ok()?)),
        None => (value.as_str(), None),
    };
    let records = records.parse().ok()?;
    only_shard.is_none_or(|only| only == shard).then_some(records)
}

/// Live totals for the progress line, published by shards once per event.
#[derive(Default)]
struct LiveCounters {
    records_in: AtomicU64,
    records_out: AtomicU64,
    dead_lettered: AtomicU64,
    late: AtomicU64,
    duplicates_dropped: AtomicU64,
    /// Test-only planted faults (`TEST_PANIC_ENV`, `TEST_HANG_ENV`).
    panic_after_records: Option<u64>,
    hang_after_records: Option<u64>,
    /// How long the shard's snapshotting steps took, in µs (the newest
    /// `STALLS_KEPT`): written once per checkpoint, off the hot path.
    stalls_us: Mutex<std::collections::VecDeque<u64>>,
    /// Time the shard waited on full queues (parked sends, the output).
    blocked: gauges::BlockedTime,
    /// Its step timings, for the scrape's latency histograms.
    timings: gauges::TimingGauges,
}

/// Checkpoint stalls kept per shard for the end-of-run report.
const STALLS_KEPT: usize = 1024;

impl LiveCounters {
    fn for_shard(shard: u32) -> LiveCounters {
        LiveCounters {
            panic_after_records: test_fault_after_records(TEST_PANIC_ENV, shard),
            hang_after_records: test_fault_after_records(TEST_HANG_ENV, shard),
            ..LiveCounters::default()
        }
    }

    fn checkpoint_stall(&self, took: Duration) {
        let mut stalls = self.stalls_us.lock().unwrap_or_else(|p| p.into_inner());
        if stalls.len() == STALLS_KEPT {
            stalls.pop_front();
        }
        stalls.push_back(took.as_micros() as u64);
    }

    fn publish(&self, c: ShardCounters) {
        if let Some(limit) = self.panic_after_records {
            assert!(
                c.records_in < limit,
                "test-only panic: {TEST_PANIC_ENV} reached after {} records",
                c.records_in
            );
        }
        if self.hang_after_records.is_some_and(|limit| c.records_in >= limit) {
            let thread = thread::current();
            log::warn!(
                "test-only hang: {TEST_HANG_ENV} reached in {}",
                thread.name().unwrap_or("a shard")
            );
            loop {
                thread::park();
            }
        }
        self.records_in.store(c.records_in, Ordering::Relaxed);
        self.records_out.store(c.records_out, Ordering::Relaxed);
        self.dead_lettered.store(c.dead_lettered, Ordering::Relaxed);
        self.late.store(c.late, Ordering::Relaxed);
        self.duplicates_dropped
            .store(c.duplicates_dropped, Ordering::Relaxed);
        self.timings.publish(&c.timings);
    }
}

/// Channel factories over `node`, for the cluster's control protocol.
pub(crate) fn wiring_net(node: &Node, window_frames: usize) -> Net<'_> {
    Net { node, window_frames }
}

/// This process's place in a cluster and its network thread.
pub struct ClusterRun<'a> {
    pub layout: Layout,
    pub node: &'a Node,
    /// Frames a channel may have unacked (the node's `window_frames`).
    pub window_frames: usize,
    /// Per source of the dataflow: read on every process (`Job::
    /// spread_sources`), which makes it one stream per process (`Streams`).
    pub spread_sources: Vec<bool>,
    /// What this process's readers learn of checkpoints and the end: on
    /// process 0 its output thread writes it (and the supervisor forwards
    /// it to the workers, `Control::Readers`); on a worker the supervisor
    /// writes what process 0 sent.
    pub readers: Arc<ReaderProgress>,
}

/// Runs `flow` in this process alone, to the end of its bounded input (or
/// until `stop` is set).
pub fn run<K, V, S, O>(
    flow: Dataflow<K, V, S, O>,
    config: &RunConfig,
    outputs: &Outputs,
    stop: StopFlag,
) -> Result<RunSummary, RunError>
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: State,
    O: 'static,
{
    let layout = Layout::new(vec![config.workers as u32], 0).map_err(|e| RunError::Cluster(e.to_string()))?;
    let names: Vec<String> = flow.sources.iter().map(|s| s.name.clone()).collect();
    let checkpoints = match &config.checkpoints {
        Some(settings) => Some(Box::new(open_checkpoints(settings, &layout, &names)?)),
        None => None,
    };
    let placement = Placement::Leader { outputs, checkpoints };
    let reading = Reading {
        streams: Streams::unspread(names.len()),
        progress: Arc::new(ReaderProgress::default()),
    };
    run_process(flow, config, placement, stop, &layout, None, reading)
}

/// What this process reads: the run's streams (the readers of those whose
/// reader is this process run here) and what its readers are told.
struct Reading {
    streams: Streams,
    progress: Arc<ReaderProgress>,
}

/// This process's part of a cluster run: process 0 (`Placement::Leader`) reads
/// the sources, runs its shards and writes the sinks; a worker
/// (`Placement::Member`) runs its shards on chunks dealt by process 0 and sends
/// their output there. Returns this process's totals.
pub fn run_in_cluster<K, V, S, O>(
    flow: Dataflow<K, V, S, O>,
    config: &RunConfig,
    placement: Placement<'_>,
    stop: StopFlag,
    cluster: &ClusterRun<'_>,
) -> Result<RunSummary, RunError>
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: State,
    O: 'static,
{
    assert_eq!(
        cluster.layout.process_id == 0,
        matches!(placement, Placement::Leader { .. }),
        "process 0 leads; workers are processes 1 and up"
    );
    let net = Net {
        node: cluster.node,
        window_frames: cluster.window_frames,
    };
    assert_eq!(
        cluster.spread_sources.len(),
        flow.sources.len(),
        "the job names every source"
    );
    let streams = Streams::plan(&cluster.spread_sources, cluster.layout.processes());
    if streams.len() > crate::cluster::CLUSTER_SOURCES_MAX as usize {
        return Err(RunError::Cluster(format!(
            "{} streams (a source read on every process is one per process): at most {} in a cluster",
            streams.len(),
            crate::cluster::CLUSTER_SOURCES_MAX
        )));
    }
    let reading = Reading {
        streams,
        progress: Arc::clone(&cluster.readers),
    };
    run_process(
        flow,
        config,
        placement,
        stop,
        &cluster.layout,
        Some(&net),
        reading,
    )
}

/// What this process does with sources and sinks.
pub enum Placement<'a> {
    /// Opens the sources and writes the sinks, and the checkpoints if the
    /// run takes them (`open_checkpoints`).
    Leader {
        outputs: &'a Outputs,
        checkpoints: Option<Box<OpenedCheckpoints>>,
    },
    /// A worker; its output goes to process 0 unless the sink discards it.
    /// Its shards continue from `restore` if the run recovers, and so do
    /// its readers of spread sources, at the cuts of their streams.
    Member {
        discard_lines: bool,
        /// Collect each output line's input id and send it with the line
        /// (process 0's sink `wants_ids`).
        output_ids: bool,
        /// The run takes checkpoints: sources ack their upstream only what
        /// a checkpoint covers.
        checkpointed: bool,
        restore: Option<RestoreFrom>,
    },
}

fn run_process<K, V, S, O>(
    flow: Dataflow<K, V, S, O>,
    config: &RunConfig,
    placement: Placement<'_>,
    stop: StopFlag,
    layout: &Layout,
    net: Option<&Net<'_>>,
    reading: Reading,
) -> Result<RunSummary, RunError>
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: State,
    O: 'static,
{
    let Some(settings) = &config.audit else {
        return run_process_with(flow, config, placement, stop, layout, net, None, reading);
    };
    let audit = ProcessAudit::start(
        settings,
        layout,
        config.limits.batch_max,
        crate::env::process_clock(),
    )?;
    let result = run_process_with(flow, config, placement, stop, layout, net, Some(&audit), reading);
    let (outcome, counts) = match &result {
        Ok(s) if s.interrupted => (
            "stopped".to_string(),
            [s.records_in, s.records_out, s.dead_lettered],
        ),
        Ok(s) => ("done".to_string(), [s.records_in, s.records_out, s.dead_lettered]),
        Err(e) => (format!("failed: {e}"), [0; 3]),
    };
    let stats = audit.end(&outcome, counts)?;
    if let Some(head) = stats.head {
        log::info!(
            "audit log: {} records, {} bytes, {} syncs, producers waited {} times; head {}",
            stats.records,
            stats.bytes,
            stats.syncs,
            stats.producer_waits,
            verity_audit::segment::hex(&head.head)
        );
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn run_process_with<K, V, S, O>(
    flow: Dataflow<K, V, S, O>,
    config: &RunConfig,
    placement: Placement<'_>,
    stop: StopFlag,
    layout: &Layout,
    net: Option<&Net<'_>>,
    audit: Option<&ProcessAudit>,
    reading: Reading,
) -> Result<RunSummary, RunError>
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: State,
    O: 'static,
{
    let started = Instant::now();
    let failure = Arc::new(RunFailure::default());
    let Dataflow { sources, mut logic } = flow;
    let Reading { streams, progress } = reading;
    // Shards see streams: a spread source's streams parse with its chain.
    logic = logic.for_streams(streams.iter().map(|(_, s)| s.source));
    let source_names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
    let stream_names: Arc<Vec<String>> = Arc::new(streams.names(&source_names));
    let stream_count = streams.len();
    let source_gauges: Vec<Arc<gauges::SourceGauges>> = (0..stream_count).map(|_| Arc::default()).collect();
    let output_gauges = Arc::new(gauges::OutputGauges::default());

    // Process 0 owns the sinks and the sources that are not spread.
    let (outputs, checkpoints, member_output, restore, checkpointed) = match placement {
        Placement::Leader { outputs, checkpoints } => {
            let checkpointed = checkpoints.is_some();
            (Some(outputs), checkpoints.map(|c| *c), None, None, checkpointed)
        }
        Placement::Member {
            discard_lines,
            output_ids,
            checkpointed,
            restore,
        } => (
            None,
            None,
            Some((discard_lines, output_ids)),
            restore,
            checkpointed,
        ),
    };
    let local = layout.local_shards();
    let restart = checkpoints.as_ref().and_then(|c| c.restart.clone());
    // A worker's checkpoint to continue from: its shards' parts, and the
    // cuts of the streams its readers deal.
    let restored = match &restore {
        Some(restore) if restart.is_none() => Some(
            restore
                .read_parts(local.clone())
                .map_err(|e| RunError::Checkpoint(e.to_string()))?,
        ),
        _ => None,
    };
    let resume_meta = restart
        .as_ref()
        .map(|r| &r.meta)
        .or(restored.as_ref().map(|(meta, _)| meta));
    let opened = open_streams(sources, &streams, layout.process_id, checkpointed, resume_meta)?;
    let resumes: Vec<Option<(u64, SourceCut)>> = opened
        .iter()
        .map(|(stream, _)| resume_meta.map(|m| (m.checkpoint, resume_cut(&m.sources[*stream as usize]))))
        .collect();
    let mut output = None;
    // However the run ends, the readers stop waiting for commits.
    let _release_readers = ReleaseReaders(Arc::clone(&progress));
    if let Some(outputs) = outputs {
        let output_audit = audit.map(|a| crate::audit::OutputAudit::new(Box::new(a.handle()), a.clock()));
        output = Some(spawn_output_thread(
            outputs,
            config,
            (&stream_names, layout),
            &failure,
            (checkpoints, output_audit),
            (&progress, &output_gauges),
        )?);
    }
    let (output_thread, output_tx, output_ids, output_depth) = match output {
        Some(o) => (Some(o.thread), Some(o.tx), o.wants_ids, Some(o.depth)),
        None => (None, None, false, None),
    };
    let (discard_lines, output_ids) = match member_output {
        Some(member) => member,
        None => (output_thread.as_ref().is_some_and(|o| o.discards), output_ids),
    };
    let readers_of: Vec<u32> = streams.iter().map(|(_, s)| s.reader).collect();
    let wiring = wire::<K, V>(
        &readers_of,
        layout,
        config,
        output_tx.as_ref(),
        discard_lines,
        net,
    );

    let mut cores = ShardCore::build_range(&logic, layout.total_shards(), local.clone(), config.limits);
    if output_ids {
        cores.iter_mut().for_each(ShardCore::collect_output_ids);
    }
    if let Some(audit) = audit {
        for core in &mut cores {
            core.set_clock(audit.clock());
            core.enable_audit();
        }
    }
    let parts = match (&restart, restored) {
        (Some(restart), _) => Some((
            restart.meta.checkpoint,
            restart.parts[local.start as usize..local.end as usize].to_vec(),
        )),
        (None, Some((meta, parts))) => Some((meta.checkpoint, parts)),
        (None, None) => None,
    };
    if let Some((checkpoint, parts)) = parts {
        for (core, part) in cores.iter_mut().zip(&parts) {
            core.restore(part)
                .map_err(|e| RunError::Checkpoint(e.to_string()))?;
        }
        log::info!(
            "continuing from checkpoint {checkpoint}: {} records applied before it by this process's shards",
            cores.iter().map(|c| c.counters().records_in).sum::<u64>()
        );
        if let Some(audit) = audit {
            let store_id = restart.as_ref().map_or(0, |r| r.store_id);
            audit.recovered(checkpoint, store_id)?;
        }
    }
    let live: Arc<Vec<LiveCounters>> = Arc::new(local.clone().map(LiveCounters::for_shard).collect());
    if let Some(metrics) = &config.metrics {
        let run = gauges::RunGauges {
            shards: Arc::clone(&live),
            first_shard: local.start,
            depths: wiring.depths,
            sources: opened
                .iter()
                .map(|(stream, _)| {
                    let stream = *stream as usize;
                    (stream_names[stream].clone(), Arc::clone(&source_gauges[stream]))
                })
                .collect(),
            output: output_depth.map(|depth| {
                let sink = outputs.map_or("none", |o| gauges::sink_kind(&o.sink));
                (Arc::clone(&output_gauges), depth, sink.to_string())
            }),
            audit: audit.map(ProcessAudit::gauge),
            net: net.map(|net| net.node.traffic()),
        };
        metrics.set_run(run.section());
    }
    let source_errors = Arc::new(Mutex::new(BoundedMessages::default()));
    let pinning = Arc::new(Pinning::new(config.pin_cores, config.first_core));
    let expected_done = if outputs.is_some() {
        layout.total_shards()
    } else {
        local.len() as u32
    };
    let (done_tx, done_rx) = bounded::<(u32, ShardCounters)>(expected_done as usize);
    let abort = Arc::new(AtomicBool::new(false));

    let mut threads = Vec::new();
    for (local_index, (core, channels)) in cores.into_iter().zip(wiring.shards).enumerate() {
        let (live, errors, pinning, done, names) = (
            Arc::clone(&live),
            Arc::clone(&source_errors),
            Arc::clone(&pinning),
            done_tx.clone(),
            Arc::clone(&stream_names),
        );
        let shard_audit = audit.map(ProcessAudit::handle);
        threads.push(spawn_watched(
            format!("verity-shard-{}", core.index()),
            &failure,
            move || {
                pinning.pin(local_index);
                let errors = SourceErrors {
                    errors: &errors,
                    names: &names,
                };
                let shard = core.index();
                let counters = drive_shard(core, channels, &live[local_index], &errors, shard_audit);
                let _ = done.send((shard, counters));
            },
        )?);
    }
    for (shard, remote) in wiring.remote_outputs {
        let output = output_tx.clone().expect("process 0 has the output thread");
        let (done, errors, names, abort, failed) = (
            done_tx.clone(),
            Arc::clone(&source_errors),
            Arc::clone(&stream_names),
            Arc::clone(&abort),
            Arc::clone(&failure),
        );
        threads.push(spawn_watched(
            format!("verity-relay-{shard}"),
            &failure,
            move || {
                let errors = SourceErrors {
                    errors: &errors,
                    names: &names,
                };
                // A peer's malformed output ends the run with its reason.
                if let Err(e) = relay_output(shard, &remote, &output, &done, &errors, &abort) {
                    failed.report(e.to_string());
                }
            },
        )?);
    }
    drop((done_tx, output_tx));

    let total_shards = layout.total_shards() as usize;
    let mut readers = Vec::new();
    // What this process read of each spread source, for the log.
    let spread_read: Vec<(String, Vec<u32>, Arc<gauges::SourceGauges>)> = opened
        .iter()
        .filter(|(stream, _)| streams.get(*stream).spread.is_some())
        .map(|(stream, source)| {
            let stream = *stream as usize;
            (
                stream_names[stream].clone(),
                source.partition_ids(),
                Arc::clone(&source_gauges[stream]),
            )
        })
        .collect();
    for (((index, source), (dealt, mut outs)), resume) in
        opened.into_iter().zip(wiring.chunk_outs).zip(resumes)
    {
        assert_eq!(index, dealt, "a reader deals its own stream");
        let (stop, progress) = (Arc::clone(&stop), Arc::clone(&progress));
        let index = index as usize;
        let input_audit = audit.map(|a| source::InputAudit {
            out: Box::new(a.handle()),
            clock: a.clock(),
        });
        let gauges = Arc::clone(&source_gauges[index]);
        readers.push(spawn_watched(
            format!("verity-source-{index}"),
            &failure,
            move || {
                let mut send = |shard: usize, event: source::SourceEvent| {
                    if let source::SourceEvent::Chunk { data, .. } = &event {
                        gauges.dealt(data.line_count(), data.stream_bytes());
                    }
                    outs[shard].send(event, &gauges.blocked)
                };
                let mut dealer = Dealer::new(index as u32, total_shards, &mut send);
                if let Some(input_audit) = input_audit {
                    dealer.record_input(input_audit);
                }
                if let Some((checkpoint, cut)) = &resume {
                    dealer.resume_at(*checkpoint, cut);
                }
                pump(source, &stop, &progress, dealer);
            },
        )?);
    }

    let waited = wait_for_shards(
        &done_rx,
        expected_done,
        &stop,
        config,
        &live,
        started,
        net,
        &failure,
    );
    // On failure, shard threads blocked on a lost peer cannot be joined; the
    // relays are told to stop and the process exits with the error.
    let (interrupted, totals, per_shard) = waited.inspect_err(|_| abort.store(true, Ordering::Relaxed))?;
    let panicked = |what: &str| RunError::Worker(failure.get().unwrap_or_else(|| format!("{what} panicked")));
    for handle in threads {
        handle.join().ok().flatten().ok_or_else(|| panicked("a shard"))?;
    }
    if let Some(output_thread) = output_thread {
        output_thread
            .handle
            .join()
            .ok()
            .flatten()
            .ok_or_else(|| panicked("the output thread"))?
            .map_err(RunError::Output)?;
    }
    // The readers make their last commits (a source's final acks) now that
    // the output is final; then they end.
    for reader in readers {
        let _ = reader.join();
    }
    for (name, partitions, gauges) in spread_read {
        log::info!(
            "{name}: this process read {} records of partitions {partitions:?}",
            gauges.records.load(Ordering::Relaxed)
        );
    }
    report_checkpoint_stalls(&live);
    let (source_errors, source_errors_not_kept) =
        source_errors.lock().unwrap_or_else(|p| p.into_inner()).take();
    Ok(RunSummary {
        records_in: totals.records_in,
        records_out: totals.records_out,
        dead_lettered: totals.dead_lettered,
        late: totals.late,
        duplicates_dropped: totals.duplicates_dropped,
        wall: started.elapsed(),
        workers: local.len(),
        interrupted,
        source_errors,
        source_errors_not_kept,
        per_shard,
    })
}

/// Logs how long this process's shards stalled for their snapshots: the
/// length of each step that took one (an upper bound), over all its shards.
fn report_checkpoint_stalls(live: &[LiveCounters]) {
    let stalls: Vec<u64> = live
        .iter()
        .flat_map(|c| c.stalls_us.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .collect();
    if !stalls.is_empty() {
        log::info!(
            "checkpoint stall per shard over {} snapshots: {}",
            stalls.len(),
            crate::checkpoint::percentiles_ms(stalls)
        );
    }
}

/// Tells the readers, when the run ends without its output made final
/// (`ReaderProgress::ALL`), that no commit will come.
struct ReleaseReaders(Arc<ReaderProgress>);

impl Drop for ReleaseReaders {
    fn drop(&mut self) {
        let _ = self
            .0
            .committed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c != ReaderProgress::ALL).then_some(ReaderProgress::ABANDONED)
            });
    }
}

/// The output thread and what its sink asked of the shards.
struct OutputThread {
    /// `None` from `join` if it panicked (`spawn_watched`).
    handle: thread::JoinHandle<Option<Result<u64, OutputError>>>,
    /// The sink throws lines away: shards need not send them.
    discards: bool,
}

/// Opens the streams whose reader is `process` (`Streams`), in stream
/// order: each at its cut in `resume` (a recovery), an ended one as ended.
fn open_streams(
    sources: Vec<crate::source::SourceSpec>,
    streams: &Streams,
    process: u32,
    checkpointed: bool,
    resume: Option<&JobMeta>,
) -> Result<Vec<(u32, source::OpenSource)>, RunError> {
    let mut specs: Vec<Option<crate::source::SourceSpec>> = sources.into_iter().map(Some).collect();
    let mut opened = Vec::new();
    for (index, stream) in streams.iter().filter(|(_, s)| s.reader == process) {
        // A process reads at most one stream of each source.
        let mut spec = specs[stream.source as usize]
            .take()
            .expect("one stream of a source per process");
        if checkpointed {
            // A source acks its upstream only what a checkpoint covers.
            spec.connector.acknowledge_on_commit();
        }
        let reads = |partition: u32| stream.reads_partition(partition);
        let source = match resume.map(|meta| &meta.sources[index as usize]) {
            None => source::open_partitions(spec, &reads, None)?,
            Some(SourceMeta::At(cut)) => source::open_partitions(spec, &reads, Some(cut))?,
            Some(SourceMeta::Ended { .. }) => source::ended(),
        };
        opened.push((index, source));
    }
    Ok(opened)
}

/// Where a recovered source's dealer goes on from.
fn resume_cut(meta: &SourceMeta) -> SourceCut {
    match meta {
        SourceMeta::At(cut) => cut.clone(),
        // Nothing is read: the dealer only ends the source, with its count.
        SourceMeta::Ended { chunks } => SourceCut {
            next_chunk: *chunks,
            ..SourceCut::default()
        },
    }
}

/// The checkpoint store of a run, and the checkpoint it continues from.
pub struct OpenedCheckpoints {
    writer: Checkpointer,
    restart: Option<Restart>,
    state_dir: PathBuf,
    delivery: Delivery,
}

impl OpenedCheckpoints {
    /// The store id of the checkpoint the run recovers from, 0 if none.
    pub fn resumed_from(&self) -> u64 {
        self.restart.as_ref().map_or(0, |r| r.store_id)
    }

    /// What the workers of a cluster need to know of them.
    pub fn for_workers(&self) -> JobCheckpoints {
        JobCheckpoints {
            state_dir: self.state_dir.display().to_string(),
            fingerprint: self.writer.fingerprint().to_string(),
            restore_from: self.resumed_from(),
        }
    }
}

/// Opens the state dir: the newest complete checkpoint of this job if the
/// run recovers (a state dir of another job, or one that holds a checkpoint
/// when the run does not recover, is refused), and the writer of the next.
/// `source_names` are the dataflow's sources' names, in order. In a
/// cluster, process 0 opens them before it sends the job, which tells the
/// workers where to restore from (`Placement::Member`).
pub fn open_checkpoints(
    settings: &CheckpointSettings,
    layout: &Layout,
    source_names: &[String],
) -> Result<OpenedCheckpoints, RunError> {
    let fail =
        |e: &dyn std::fmt::Display| RunError::Checkpoint(format!("{}: {e}", settings.state_dir.display()));
    let storage = DirStorage::open(&settings.state_dir).map_err(|e| fail(&e))?;
    let mut store = CheckpointStore::with_retained(Box::new(storage) as Box<dyn Storage>, settings.retained)
        .map_err(|e| fail(&e))?;
    let shards = layout.total_shards();
    let fingerprint = format!(
        "{}; {shards} shards; sources {source_names:?}; verity {}",
        settings.job,
        env!("CARGO_PKG_VERSION")
    );
    let (restart, next_id) = Checkpointer::recover(&mut store, &fingerprint, shards).map_err(|e| fail(&e))?;
    match (&restart, settings.recover) {
        (Some(restart), false) => {
            return Err(fail(&format_args!(
                "holds checkpoint {} of this job: pass --recover to continue it, or use an empty directory",
                restart.meta.checkpoint
            )))
        }
        (None, true) => log::warn!(
            "{}: no complete checkpoint to recover from: starting from the beginning",
            settings.state_dir.display()
        ),
        _ => {}
    }
    let writer = Checkpointer::new(
        store,
        fingerprint,
        shards,
        settings.interval_ms,
        restart.as_ref(),
        next_id,
    );
    // Workers read the same path: make it absolute, so it does not depend
    // on where each process was started.
    let state_dir = std::path::absolute(&settings.state_dir).map_err(|e| fail(&e))?;
    Ok(OpenedCheckpoints {
        writer,
        restart,
        state_dir,
        delivery: settings.delivery,
    })
}

struct SpawnedOutput {
    thread: OutputThread,
    tx: Sender<(u32, OutputMessage)>,
    /// Shards keep each output line's input id for the sink.
    wants_ids: bool,
    /// The output queue's depth, for live metrics.
    depth: gauges::DepthProbe,
}

/// Opens the sinks (so a bad path fails before any input is read) and
/// starts the output thread that writes them.
fn spawn_output_thread(
    outputs: &Outputs,
    config: &RunConfig,
    (source_names, layout): (&[String], &Layout),
    failure: &Arc<RunFailure>,
    (checkpoints, audit): (Option<OpenedCheckpoints>, Option<crate::audit::OutputAudit>),
    (progress, output_gauges): (&Arc<ReaderProgress>, &Arc<gauges::OutputGauges>),
) -> Result<SpawnedOutput, RunError> {
    let resuming = checkpoints.as_ref().is_some_and(|c| c.restart.is_some());
    let context = SinkContext {
        process: layout.process_id,
        processes: layout.processes(),
        job_fingerprint: checkpoints
            .as_ref()
            .map_or(String::new(), |c| c.writer.fingerprint().to_string()),
    };
    let sink = match &checkpoints {
        Some(c) => outputs.sink.open_checkpointed(resuming, c.delivery, &context)?,
        None => outputs.sink.open(&context)?,
    };
    // In a cluster, workers send ids when the job says so (`Job::output_ids`).
    let (discards, wants_ids) = (sink.discards(), sink.wants_ids());
    let dead_letters = if resuming {
        DeadLetterWriter::with_sink(
            outputs.dead_letter.open_resuming(&context)?,
            source_names.to_vec(),
        )
    } else {
        DeadLetterWriter::new(&outputs.dead_letter, source_names.to_vec(), &context)?
    };
    let mut writer = OutputWriter::new(sink, dead_letters);
    if let Some(OpenedCheckpoints {
        writer: checkpointer,
        restart,
        ..
    }) = checkpoints
    {
        if let Some(restart) = &restart {
            writer.resume(&restart.meta)?;
        }
        writer = writer.with_checkpoints(checkpointer);
    }
    if let Some(audit) = audit {
        writer = writer.with_audit(audit);
    }
    let (tx, rx) = bounded::<(u32, OutputMessage)>(config.output_queue_depth_buffers);
    let rx = Arc::new(rx);
    let depth = gauges::DepthProbe::of(&rx);
    // Before the readers start: a recovery's checkpoint is requested and complete.
    let output = OutputLoop::new(writer, Arc::clone(progress));
    let output_gauges = Arc::clone(output_gauges);
    let handle = spawn_watched("verity-output".into(), failure, move || {
        write_outputs(&rx, output, &output_gauges)
    })?;
    Ok(SpawnedOutput {
        thread: OutputThread { handle, discards },
        tx,
        wants_ids,
        depth,
    })
}

/// Process 0's end of one remote shard's output: into the sinks, until the
/// shard reports it finished. Output that does not decode (a peer that
/// breaks the protocol) is an error, which ends the run with its reason.
fn relay_output(
    shard: u32,
    remote: &RemoteIn,
    output: &Sender<(u32, OutputMessage)>,
    done: &Sender<(u32, ShardCounters)>,
    errors: &SourceErrors<'_>,
    abort: &AtomicBool,
) -> Result<(), ClusterError> {
    let mut relay = OutputRelay::new(shard);
    while !abort.load(Ordering::Relaxed) {
        let frame = match remote.recv_timeout(CHECK_INTERVAL) {
            Ok(frame) => frame,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        let relayed = relay.on_frame(&frame)?;
        let _ = match relayed {
            Relayed::ToSinks(message) => output.send((shard, message)),
            Relayed::SourceFailed { source, error } => {
                errors.report(source, &error);
                Ok(())
            }
            Relayed::Finished(counters) => {
                let _ = done.send((shard, *counters));
                return Ok(());
            }
            Relayed::Pending | Relayed::Dropped => Ok(()),
        };
    }
    Ok(())
}

/// Each shard's final counters, by global shard index.
type PerShard = Vec<(u32, ShardCounters)>;

/// Waits until every shard finished, showing progress on a terminal. Returns
/// whether the run was stopped early (readers see the flag and end their
/// sources), the shards' totals and each shard's own (sorted by shard). Any
/// thread's failure ends the wait.
#[allow(clippy::too_many_arguments)]
fn wait_for_shards(
    done: &Receiver<(u32, ShardCounters)>,
    expected: u32,
    stop: &AtomicBool,
    config: &RunConfig,
    live: &[LiveCounters],
    started: Instant,
    net: Option<&Net<'_>>,
    failure: &RunFailure,
) -> Result<(bool, ShardCounters, PerShard), RunError> {
    let show_progress = config.progress && std::io::stderr().is_terminal();
    let mut finished = 0;
    let mut totals = ShardCounters::default();
    let mut per_shard = Vec::with_capacity(expected as usize);
    let mut last_progress = Instant::now();
    while finished < expected {
        match done.recv_timeout(CHECK_INTERVAL) {
            Ok((shard, c)) => {
                finished += 1;
                totals.records_in += c.records_in;
                totals.records_out += c.records_out;
                totals.dead_lettered += c.dead_lettered;
                totals.late += c.late;
                totals.duplicates_dropped += c.duplicates_dropped;
                totals.timings.merge(&c.timings);
                per_shard.push((shard, c));
            }
            Err(RecvTimeoutError::Disconnected) => {
                // A panicking thread drops its sender while it unwinds, just
                // before its panic is reported: give the report a moment.
                let reported = (0..CHECK_INTERVAL.as_millis()).find_map(|_| {
                    thread::sleep(Duration::from_millis(1));
                    failure.get()
                });
                return Err(RunError::Worker(
                    reported.unwrap_or_else(|| "a shard thread ended without finishing".into()),
                ));
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Some(reason) = failure.get() {
            return Err(RunError::Worker(reason));
        }
        if let Some(failure) = net.and_then(|n| n.node.failure()) {
            return Err(RunError::Cluster(failure));
        }
        if show_progress && last_progress.elapsed() >= PROGRESS_INTERVAL {
            last_progress = Instant::now();
            print_progress(live, started);
        }
    }
    if show_progress {
        eprint!("\r\x1b[K");
    }
    per_shard.sort_by_key(|&(shard, _)| shard);
    Ok((stop.load(Ordering::Relaxed), totals, per_shard))
}

fn print_progress(live: &[LiveCounters], started: Instant) {
    let sum =
        |f: fn(&LiveCounters) -> &AtomicU64| live.iter().map(|c| f(c).load(Ordering::Relaxed)).sum::<u64>();
    let records_in = sum(|c| &c.records_in);
    let rate = records_in as f64 / started.elapsed().as_secs_f64().max(1e-9);
    eprint!(
        "\r\x1b[Kverity: {} in, {} out, {} dead-lettered, {:.2}M events/s",
        records_in,
        sum(|c| &c.records_out),
        sum(|c| &c.dead_lettered),
        rate / 1e6
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_errors_keep_the_first_and_count_the_rest() {
        let mut errors = BoundedMessages::default();
        for n in 0..SOURCE_ERRORS_KEPT_MAX + 5 {
            errors.push(format!("error {n}"));
        }
        let (kept, not_kept) = errors.take();
        assert_eq!(kept.len(), SOURCE_ERRORS_KEPT_MAX);
        assert_eq!(kept[0], "error 0");
        assert_eq!(not_kept, 5);
    }

    #[test]
    fn a_watched_thread_reports_its_panic_with_its_name() {
        let failure = Arc::new(RunFailure::default());
        let handle =
            spawn_watched("verity-test".into(), &failure, || -> u32 { panic!("boom {}", 7) }).unwrap();
        assert_eq!(handle.join().unwrap(), None);
        assert_eq!(failure.get().unwrap(), "thread verity-test panicked: boom 7");
        let fine = spawn_watched("verity-fine".into(), &failure, || 3).unwrap();
        assert_eq!(fine.join().unwrap(), Some(3));
    }
}
