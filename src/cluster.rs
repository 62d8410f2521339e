//! Cluster roles of the binary: process 0 (`run … --cluster` or `--processes`)
//! and workers (`verity worker`). What to do when — send the job, start,
//! finish, shut down, fail — is decided by the library's sans-IO lifecycle
//! (`verity_core::cluster::lifecycle`); this module drives it with the network
//! thread, a job thread and the OS clock, and keeps what only a binary does:
//! secret files, spawning local worker processes, exit codes.

use anyhow::{bail, Context, Result};
use crossbeam_channel::{Receiver, Sender};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use verity_apps::{drive_app, AppInput, AppName, AppOptions, Driver};
use verity_core::checkpoint::RestoreFrom;
use verity_core::cluster::lifecycle::CONTROL_FRAMES_KEPT_FREE;
use verity_core::cluster::{
    Action, ClusterFile, ControlLinks, Deadlines, Event, Job, JobCheckpoints, Layout, Lifecycle, Outcome,
    ReadersProgress,
};
use verity_core::source::ReaderProgress;
use verity_core::streams::Streams;
use verity_core::{
    open_checkpoints, run_in_cluster, ClusterRun, Dataflow, Key, Outputs, Placement, RunConfig, RunError,
    RunSummary, SourceSpec, Wire,
};
use verity_net::auth::{ClusterSecret, CLUSTER_SECRET_ENV};
use verity_net::liveness::LivenessConfig;
use verity_net::node::{Node, NodeConfig, PeerAddress};
use verity_net::peer::{ProtocolBugs, ProtocolConfig, ProtocolLimits};

/// Frames a channel may have unacked.
pub const WINDOW_FRAMES: usize = 16;
pub const WINDOW_BYTES: usize = 16 << 20;
const RECONNECT_BASE_MS: u64 = 20;
const RECONNECT_MAX_MS: u64 = 1_000;
/// How long process 0 of a local cluster waits for its workers to take an
/// abort before it stops them itself (a dead worker never acks it).
const LOCAL_FAILURE_REPORT_MS: u64 = 200;
/// How long process 0 waits for local workers to exit after the run.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(verity_core::cluster::lifecycle::SHUTDOWN_DEADLINE_MS);

/// Network settings shared by both roles.
#[derive(Debug, Clone)]
pub struct NetOptions {
    pub secret_file: Option<PathBuf>,
    pub peer_timeout_ms: u64,
    pub peer_lost_ms: u64,
    /// How long a stop may take before the process exits anyway.
    pub stop_deadline_ms: u64,
}

impl NetOptions {
    fn deadlines(&self) -> Deadlines {
        Deadlines {
            graceful_stop_ms: self.stop_deadline_ms,
            // A worker waits for its job as long as for a lost peer.
            job_wait_ms: self.peer_lost_ms,
            ..Deadlines::default()
        }
    }

    fn secret(&self) -> Result<ClusterSecret> {
        if let Some(path) = &self.secret_file {
            return ClusterSecret::from_file(path)
                .with_context(|| format!("cluster secret {}", path.display()));
        }
        match ClusterSecret::from_env().context("cluster secret")? {
            Some(secret) => Ok(secret),
            None => {
                bail!("a cluster needs a shared secret: set {CLUSTER_SECRET_ENV} or pass --secret-file PATH")
            }
        }
    }

    fn start_node(&self, file: &ClusterFile, process_id: u32) -> Result<Node> {
        let peers: Vec<PeerAddress> = (0..file.processes.len() as u32)
            .filter(|id| *id != process_id)
            .map(|id| PeerAddress {
                id,
                address: file.address(id),
            })
            .collect();
        let config = NodeConfig {
            protocol: ProtocolConfig {
                cluster_id: file.cluster_id.clone(),
                process_id,
                peers: peers.iter().map(|p: &PeerAddress| p.id).collect(),
                secret: Arc::new(self.secret()?),
                liveness: LivenessConfig {
                    peer_timeout_ms: self.peer_timeout_ms,
                    heartbeat_interval_ms: (self.peer_timeout_ms / 4).max(1),
                },
                window_frames: WINDOW_FRAMES,
                window_bytes: WINDOW_BYTES,
                reconnect_base_ms: RECONNECT_BASE_MS,
                reconnect_max_ms: RECONNECT_MAX_MS,
                peer_lost_ms: self.peer_lost_ms,
                limits: ProtocolLimits::default(),
                bugs: ProtocolBugs::default(),
            },
            listen: file.listen(process_id),
            peer_addresses: peers,
            seed: process_id as u64,
        };
        Node::start(config).with_context(|| format!("process {process_id}"))
    }
}

/// Where a worker pins its shards.
#[derive(Debug, Clone, Copy)]
pub struct Pinning {
    pub enabled: bool,
    pub first_core: usize,
}

/// What process 0 tells workers to run, in the binary's terms; it crosses
/// the network as the library's `Job`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    pub app: AppName,
    pub options: AppOptions,
    /// market-spread read as two streams (two sources).
    pub split_input: bool,
    pub batch_max: usize,
    pub queue_depth_batches: usize,
    /// The sink discards output (`--output null`): workers need not send it.
    pub discard_output: bool,
    /// The sink wants each output line's input id (`verity bench --rate`).
    pub output_ids: bool,
    /// Set by process 0 once it opened the state dir (`--state-dir`).
    pub checkpoints: Option<JobCheckpoints>,
    /// Set by process 0 from its sources: those every process reads
    /// (`Job::spread_sources`), by index, with their argument.
    pub spread_sources: Vec<(u32, String)>,
}

impl JobSpec {
    fn to_job(&self) -> Job {
        Job {
            app: self.app.name().to_string(),
            final_counts: self.options.final_counts,
            max_quote_age_ms: self.options.max_quote_age_ms,
            sources: if self.split_input { 2 } else { 1 },
            // The command line bounds both far below u32::MAX.
            batch_max: u32::try_from(self.batch_max).expect("--batch-max is bounded"),
            queue_depth_batches: u32::try_from(self.queue_depth_batches).expect("--queue-depth is bounded"),
            discard_output: self.discard_output,
            output_ids: self.output_ids,
            checkpoints: self.checkpoints.clone(),
            spread_sources: self.spread_sources.clone(),
            // Process 0 writes all output (a sink written by every process,
            // `member_sink`, is not wired into the runtime yet).
            member_sink: None,
        }
    }

    /// Per source of the dataflow: whether every process reads it.
    fn spread_flags(&self) -> Vec<bool> {
        let sources = if self.split_input { 2 } else { 1 };
        (0..sources)
            .map(|s| self.spread_sources.iter().any(|(spread, _)| *spread == s))
            .collect()
    }

    /// Where this worker's shards continue from, if the run recovers.
    fn restore(&self) -> Option<RestoreFrom> {
        let checkpoints = self.checkpoints.as_ref().filter(|c| c.restore_from > 0)?;
        Some(RestoreFrom {
            state_dir: PathBuf::from(&checkpoints.state_dir),
            fingerprint: checkpoints.fingerprint.clone(),
            store_id: checkpoints.restore_from,
        })
    }

    /// A job from process 0, checked against what this binary can run.
    fn from_job(job: &Job) -> Result<JobSpec> {
        if let Some(sink) = &job.member_sink {
            bail!("process 0 sent a job whose sink {sink} every process writes; this binary's workers cannot write one yet");
        }
        let app = AppName::from_name(&job.app)
            .with_context(|| format!("process 0 sent a job for an unknown app `{}`", job.app))?;
        let split_input = match (job.sources, app) {
            (1, _) => false,
            (2, AppName::MarketSpread) => true,
            (n, app) => bail!("process 0 sent a job for {} with {n} sources", app.name()),
        };
        Ok(JobSpec {
            app,
            options: AppOptions {
                final_counts: job.final_counts,
                max_quote_age_ms: job.max_quote_age_ms,
                // Planted bugs are for one-process test runs; they do not travel.
                market_spread_bugs: Default::default(),
                nexmark_bugs: Default::default(),
            },
            split_input,
            batch_max: job.batch_max as usize,
            queue_depth_batches: job.queue_depth_batches as usize,
            discard_output: job.discard_output,
            output_ids: job.output_ids,
            checkpoints: job.checkpoints.clone(),
            spread_sources: job.spread_sources.clone(),
        })
    }
}

/// An error that ends the process with a given exit code (the default for
/// errors is 1).
#[derive(Debug)]
pub struct ExitWith {
    pub code: i32,
    pub reason: String,
}

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ExitWith {}

/// How a lifecycle ended, as the binary reports it.
fn ended(outcome: Outcome, reason: Option<String>) -> Result<()> {
    match (outcome, reason) {
        (Outcome::Done, None) => Ok(()),
        (Outcome::Done, Some(warning)) => {
            log::warn!("{warning}");
            Ok(())
        }
        (outcome, reason) => Err(ExitWith {
            code: outcome.exit_code(),
            reason: reason.unwrap_or_else(|| "the run failed".into()),
        }
        .into()),
    }
}

/// This process's part of a cluster run, as a `Driver` of any app's dataflow.
struct ClusterDriver<'a> {
    config: &'a RunConfig,
    stop: verity_core::source::StopFlag,
    cluster: &'a ClusterRun<'a>,
    placement: Placement<'a>,
}

impl Driver for ClusterDriver<'_> {
    type Out = RunSummary;
    fn drive<K, V, S, O>(self, flow: Dataflow<K, V, S, O>) -> Result<RunSummary, RunError>
    where
        K: Key + Wire,
        V: Wire + Send + 'static,
        S: verity_core::State,
        O: 'static,
    {
        run_in_cluster(flow, self.config, self.placement, self.stop, self.cluster)
    }
}

/// Runs one app's part of a cluster run on its own thread (the supervisor
/// must stay free to notice failures and deadlines while it runs); its end
/// is reported on `done`.
fn spawn_job<T: Send + 'static>(
    done: Sender<Result<(), String>>,
    run: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<std::thread::JoinHandle<Option<T>>> {
    let handle = std::thread::Builder::new()
        .name("verity-job".into())
        .spawn(move || {
            let result = run();
            let report = result.as_ref().map(|_| ()).map_err(|e| format!("{e:#}"));
            let _ = done.send(report);
            result.ok()
        })
        .context("cannot start the job thread")?;
    Ok(handle)
}

/// Drives a lifecycle with the network thread, the control channels and the
/// OS clock until it exits. Everything the machine decides comes out as
/// actions; this loop only carries them out and turns what it sees into events.
struct Supervisor<'a> {
    node: &'a Node,
    links: ControlLinks,
    /// Set by the signal handler on the first Ctrl-C/SIGTERM.
    signal: &'a AtomicBool,
    /// What the sources watch; set on `StopSources` (process 0) or when
    /// process 0 says its readers stop (a worker's readers of spread sources).
    sources_stop: &'a AtomicBool,
    /// The readers' progress: process 0 forwards its own to the workers
    /// (when some source is spread), a worker stores what it is sent.
    readers: Option<Arc<ReaderProgress>>,
    /// Process 0 of a run with spread sources: forward `readers`.
    forward_readers: bool,
    /// Process 0: the progress the workers were last told.
    readers_told: ReadersProgress,
    local: Option<&'a LocalCluster>,
    started: Instant,
    flushing: bool,
    stop_seen: bool,
    failure_seen: bool,
}

/// How often the supervisor looks at its channels and deadlines.
const SUPERVISOR_TICK: Duration = Duration::from_millis(10);

impl Supervisor<'_> {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn run(
        &mut self,
        lifecycle: &mut Lifecycle,
        mut start_job: impl FnMut(Job) -> Result<()>,
        job_done: &Receiver<Result<(), String>>,
    ) -> (Outcome, Option<String>) {
        let mut events = VecDeque::from([Event::Start]);
        loop {
            while let Some(event) = events.pop_front() {
                for action in lifecycle.handle(self.now_ms(), event) {
                    match action {
                        Action::Send { to, message } => {
                            if message.superseded() && self.links.free_frames(to) <= CONTROL_FRAMES_KEPT_FREE
                            {
                                // The newest progress goes out at a later turn.
                                self.readers_told = ReadersProgress::default();
                                continue;
                            }
                            if let Err(e) = self.links.send(to, &message) {
                                log::warn!("cannot send {message:?} to process {to}: {e}");
                            }
                        }
                        Action::StartJob(job) => {
                            if let Err(e) = start_job(job) {
                                events.push_back(Event::Failed {
                                    reason: format!("{e:#}"),
                                });
                            }
                        }
                        Action::StopSources => self.sources_stop.store(true, Ordering::Relaxed),
                        Action::ReadersProgress(progress) => {
                            if let Some(readers) = &self.readers {
                                readers.requested.store(progress.requested, Ordering::Relaxed);
                                readers.committed.store(progress.committed, Ordering::Relaxed);
                            }
                            if progress.stopping {
                                self.sources_stop.store(true, Ordering::Relaxed);
                            }
                        }
                        // No job's sink is written by every process yet
                        // (`member_sink`): a mark is off the protocol.
                        Action::MemberMark(mark) => events.push_back(Event::Failed {
                            reason: format!(
                                "process {} sent a sink mark, but process 0 writes this job's output",
                                mark.process
                            ),
                        }),
                        Action::Flush => {
                            self.flushing = true;
                            self.node.closing();
                        }
                        Action::Exit { outcome, reason } => return (outcome, reason),
                    }
                }
            }
            self.observe(job_done, &mut events);
        }
    }

    /// Turns what happened since the last turn into events; waits a tick.
    fn observe(&mut self, job_done: &Receiver<Result<(), String>>, events: &mut VecDeque<Event>) {
        // Before the job's end: the workers' readers hear of the final
        // commit before the `Shutdown` that follows it.
        if let (Some(readers), true) = (&self.readers, self.forward_readers) {
            let now = ReadersProgress {
                requested: readers.requested.load(Ordering::Relaxed),
                committed: readers.committed.load(Ordering::Relaxed),
                stopping: self.sources_stop.load(Ordering::Relaxed),
            };
            if now != self.readers_told {
                self.readers_told = now;
                events.push_back(Event::ReadersProgress(now));
            }
        }
        while let Some((from, message)) = self.links.poll() {
            events.push_back(match message {
                Ok(message) => Event::Control { from, message },
                Err(e) => Event::Failed {
                    reason: format!("control message from process {from}: {e}"),
                },
            });
        }
        match job_done.try_recv() {
            Ok(Ok(())) => events.push_back(Event::JobFinished),
            Ok(Err(reason)) => events.push_back(Event::Failed { reason }),
            Err(_) => {}
        }
        if !self.failure_seen {
            let failure = crate::panics::first_panic()
                .or_else(|| self.node.failure())
                .or_else(|| self.local.and_then(LocalCluster::exited_early));
            if let Some(reason) = failure {
                self.failure_seen = true;
                events.push_back(Event::Failed { reason });
            }
        }
        if !self.stop_seen && self.signal.load(Ordering::Relaxed) {
            self.stop_seen = true;
            events.push_back(Event::StopRequested);
        }
        // `wait_sent` with no time to spare sleeps one network turn and
        // says whether everything is acked: it doubles as the tick's wait.
        if self.flushing && self.node.wait_sent(Duration::ZERO) {
            events.push_back(Event::AllSent);
        } else if !self.flushing {
            std::thread::sleep(SUPERVISOR_TICK);
        }
        events.push_back(Event::Tick);
    }
}

/// Runs process 0 of the cluster in `file`: the lifecycle sends the job,
/// runs this process's part, tells the workers to exit, or on any failure
/// (here or in a worker) aborts the run everywhere.
#[allow(clippy::too_many_arguments)]
pub fn run_leader_process(
    file: &ClusterFile,
    net: &NetOptions,
    spec: &JobSpec,
    input: AppInput,
    config: &RunConfig,
    outputs: &Outputs,
    signal: &AtomicBool,
    local: Option<&LocalCluster>,
) -> Result<RunSummary> {
    let layout = file.layout(0)?;
    let spread_sources = spread_sources(&input, layout.processes())?;
    let spec = JobSpec {
        spread_sources,
        ..spec.clone()
    };
    let spread = spec.spread_flags();
    let stream_names = Streams::plan(&spread, layout.processes()).names(&input.source_names());
    // Before the job goes out: it tells the workers where to restore from.
    let mut checkpoints = match &config.checkpoints {
        Some(settings) => Some(open_checkpoints(settings, &layout, &stream_names)?),
        None => None,
    };
    let spec = JobSpec {
        checkpoints: checkpoints.as_ref().map(|c| c.for_workers()),
        ..spec
    };
    let readers = Arc::new(ReaderProgress::default());
    let node = Arc::new(net.start_node(file, 0)?);
    let links = ControlLinks::new(&node, &layout, WINDOW_FRAMES);
    let mut deadlines = net.deadlines();
    if local.is_some() {
        // Local workers are stopped by this process itself after a failure:
        // their abort needs no more than loopback's round trip.
        deadlines.failure_report_ms = deadlines.failure_report_ms.min(LOCAL_FAILURE_REPORT_MS);
    }
    let mut lifecycle = Lifecycle::new(0, layout.processes(), Some(spec.to_job()), deadlines);
    let sources_stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let mut job_thread = None;
    let mut input = Some(input);
    let total_shards = layout.total_shards() as usize;
    let start_job = |_job: Job| -> Result<()> {
        let input = input.take().context("the job starts once")?;
        let checkpoints = checkpoints.take().map(Box::new);
        let (node, layout, stop, spec, outputs, spread, readers) = (
            Arc::clone(&node),
            layout.clone(),
            Arc::clone(&sources_stop),
            spec.clone(),
            outputs.clone(),
            spread.clone(),
            Arc::clone(&readers),
        );
        let config = RunConfig {
            workers: layout.workers[0] as usize,
            ..config.clone()
        };
        job_thread = Some(spawn_job(done_tx.clone(), move || {
            let cluster = ClusterRun {
                layout,
                node: &node,
                window_frames: WINDOW_FRAMES,
                spread_sources: spread,
                readers,
            };
            let driver = ClusterDriver {
                config: &config,
                stop,
                cluster: &cluster,
                placement: Placement::Leader {
                    outputs: &outputs,
                    checkpoints,
                },
            };
            drive_app(spec.app, input, spec.options, driver)
                .with_context(|| format!("{} cluster run failed", spec.app.name()))
        })?);
        Ok(())
    };
    let forward_readers = !spec.spread_sources.is_empty();
    let mut supervisor = Supervisor {
        node: &node,
        links,
        signal,
        sources_stop: &sources_stop,
        readers: Some(Arc::clone(&readers)),
        forward_readers,
        readers_told: ReadersProgress::default(),
        local,
        started: Instant::now(),
        flushing: false,
        stop_seen: false,
        failure_seen: false,
    };
    let (outcome, reason) = supervisor.run(&mut lifecycle, start_job, &done_rx);
    ended(outcome, reason)?;
    // The job reported its end just before its thread returns.
    let summary = job_thread
        .and_then(|thread| thread.join().ok().flatten())
        .context("the job ended without its summary")?;
    drop(supervisor);
    if let Ok(node) = Arc::try_unwrap(node) {
        node.stop();
    }
    Ok(RunSummary {
        workers: total_shards,
        ..summary
    })
}

/// `verity worker`: joins the cluster; the lifecycle waits for the job, runs
/// this process's shards, and exits when process 0 says the run is over (or
/// reports a failure to process 0 and exits).
/// The sources of `input` every one of `processes` processes reads
/// (`SourceConnector::readable_on_every_process`, with more than one
/// partition), by index, with their argument (a worker builds the connector
/// from it). A source of one partition stays on process 0: spreading it
/// would leave every other reader idle.
fn spread_sources(input: &AppInput, processes: u32) -> Result<Vec<(u32, String)>> {
    let specs: Vec<&SourceSpec> = match input {
        AppInput::Single(source) => vec![source],
        AppInput::QuotesAndOrders { quotes, orders } => vec![quotes, orders],
    };
    let mut spread = Vec::new();
    for (index, spec) in specs.into_iter().enumerate() {
        if processes > 1 && spec.connector.readable_on_every_process() {
            let partitions = spec
                .connector
                .partitions()
                .with_context(|| format!("source {}", spec.name))?;
            if partitions > 1 {
                spread.push((index as u32, spec.name.clone()));
            }
        }
    }
    Ok(spread)
}

/// What watches a worker's runs: its audit log and its live metrics.
#[derive(Clone, Default)]
pub struct Observers {
    pub audit: Option<verity_core::AuditSettings>,
    pub metrics: Option<Arc<verity_core::metrics::Metrics>>,
}

pub fn run_worker_process(
    file_path: &Path,
    id: u32,
    net: &NetOptions,
    pinning: Pinning,
    signal: &AtomicBool,
    rejoin: bool,
    observers: Observers,
) -> Result<i32> {
    let file = ClusterFile::load(file_path)?;
    if id == 0 {
        bail!("process 0 runs the sources and sinks: start it with `verity run <app> --cluster FILE`");
    }
    let layout = file.layout(id)?;
    let node = Arc::new(net.start_node(&file, id)?);
    let links = ControlLinks::new(&node, &layout, WINDOW_FRAMES);
    let mut lifecycle = Lifecycle::new(id, layout.processes(), None, net.deadlines());
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    // The state dir of a job with checkpoints: if it fails, the cluster
    // restarts from there, and so does this worker.
    let mut state_dir = None;
    // Its readers of spread sources learn from process 0 (`Control::Readers`).
    let readers = Arc::new(ReaderProgress::default());
    let sources_stop = Arc::new(AtomicBool::new(false));
    let start_job = |job: Job| -> Result<()> {
        let spec = JobSpec::from_job(&job)?;
        state_dir = job.checkpoints.as_ref().map(|c| PathBuf::from(&c.state_dir));
        let (node, layout, observers) = (Arc::clone(&node), layout.clone(), observers.clone());
        let reading = (Arc::clone(&readers), Arc::clone(&sources_stop));
        spawn_job(done_tx.clone(), move || {
            run_worker_job(&node, layout, &spec, pinning, observers, reading)
        })?;
        Ok(())
    };
    let mut supervisor = Supervisor {
        node: &node,
        links,
        signal,
        sources_stop: &sources_stop,
        readers: Some(Arc::clone(&readers)),
        forward_readers: false,
        readers_told: ReadersProgress::default(),
        local: None,
        started: Instant::now(),
        flushing: false,
        stop_seen: false,
        failure_seen: false,
    };
    let (outcome, reason) = supervisor.run(&mut lifecycle, start_job, &done_rx);
    let result = ended(outcome, reason.map(|r| format!("worker {id}: {r}")));
    if let (Err(e), Some(state_dir), Outcome::Failed, true) = (&result, &state_dir, outcome, rejoin) {
        let error = anyhow::anyhow!("{e:#}");
        return Err(crate::restart::restart_or_give_up(
            state_dir,
            error,
            crate::restart::DEFAULT_MAX_RESTARTS,
            || {},
        ));
    }
    result?;
    drop(supervisor);
    if let Ok(node) = Arc::try_unwrap(node) {
        node.stop();
    }
    Ok(0)
}

/// A worker's part of the job: its shards, on chunks dealt by process 0,
/// and its partitions of the spread sources.
fn run_worker_job(
    node: &Node,
    layout: Layout,
    spec: &JobSpec,
    pinning: Pinning,
    observers: Observers,
    (readers, sources_stop): (Arc<ReaderProgress>, Arc<AtomicBool>),
) -> Result<()> {
    let id = layout.process_id;
    let config = RunConfig {
        audit: observers.audit,
        metrics: observers.metrics,
        workers: layout.workers[id as usize] as usize,
        limits: verity_core::ShardLimits {
            batch_max: spec.batch_max,
            ..Default::default()
        },
        queue_depth_batches: spec.queue_depth_batches,
        pin_cores: pinning.enabled,
        first_core: pinning.first_core,
        progress: false,
        ..RunConfig::default()
    };
    // A spread source is built here from its argument; the others live on
    // process 0, and the worker's dataflow only needs their count.
    let connectors = crate::cli::connectors();
    let source = |index: u32, name: &str| -> Result<SourceSpec> {
        match spec.spread_sources.iter().find(|(s, _)| *s == index) {
            Some((_, arg)) => connectors
                .source(arg)
                .with_context(|| format!("worker {}: source {arg}", layout.process_id)),
            None => Ok(SourceSpec::memory(name, bytes::Bytes::new())),
        }
    };
    let input = if spec.split_input {
        AppInput::QuotesAndOrders {
            quotes: source(0, "quotes")?,
            orders: source(1, "orders")?,
        }
    } else {
        AppInput::Single(source(0, "input")?)
    };
    let cluster = ClusterRun {
        layout,
        node,
        window_frames: WINDOW_FRAMES,
        spread_sources: spec.spread_flags(),
        readers,
    };
    let driver = ClusterDriver {
        config: &config,
        stop: sources_stop,
        cluster: &cluster,
        placement: Placement::Member {
            discard_lines: spec.discard_output,
            output_ids: spec.output_ids,
            checkpointed: spec.checkpoints.is_some(),
            restore: spec.restore(),
        },
    };
    let summary = drive_app(spec.app, input, spec.options, driver)?;
    log::info!(
        "worker {id}: {} records in, {} out, {} dead-lettered ({} shards)",
        summary.records_in,
        summary.records_out,
        summary.dead_lettered,
        summary.workers
    );
    Ok(())
}

/// A cluster of `processes` local processes on loopback: this process is 0,
/// the others are spawned `verity worker`s.
pub struct LocalCluster {
    pub file: ClusterFile,
    path: PathBuf,
    children: Mutex<Vec<Child>>,
}

impl LocalCluster {
    pub fn spawn(
        processes: u32,
        workers: u32,
        net: &NetOptions,
        pin_cores: bool,
        audit: Option<&verity_core::AuditSettings>,
    ) -> Result<(LocalCluster, NetOptions)> {
        let ports = free_ports(processes as usize)?;
        let cluster_id = format!("local-{}", std::process::id());
        let text = ClusterFile::local(&cluster_id, &vec![workers; processes as usize], &ports);
        // A random part in the names: a file left by a killed run whose pid
        // comes round again must not be in the way.
        let stem = format!("verity-{cluster_id}-{}", &random_secret_hex()[..8]);
        let path = std::env::temp_dir().join(format!("{stem}.toml"));
        std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        let file = ClusterFile::parse(&text).map_err(anyhow::Error::msg)?;
        let secret_path = path.with_extension("secret");
        write_private_file(&secret_path, random_secret_hex().as_bytes())
            .with_context(|| format!("cannot write {}", secret_path.display()))?;
        let net = NetOptions {
            secret_file: Some(secret_path),
            ..net.clone()
        };
        let exe = std::env::current_exe().context("cannot find the verity binary to spawn workers")?;
        let cluster = LocalCluster {
            file,
            path,
            children: Mutex::new(Vec::new()),
        };
        for id in 1..processes {
            let mut command = Command::new(&exe);
            command
                .args(["worker", "--cluster"])
                .arg(&cluster.path)
                .args([
                    "--id",
                    &id.to_string(),
                    "--peer-timeout-ms",
                    &net.peer_timeout_ms.to_string(),
                    "--peer-lost-ms",
                    &net.peer_lost_ms.to_string(),
                    "--stop-deadline-ms",
                    &net.stop_deadline_ms.to_string(),
                ])
                .arg("--secret-file")
                .arg(net.secret_file.as_ref().expect("set above"))
                // Process 0 restarts its local workers itself.
                .arg("--once")
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            if !pin_cores {
                command.arg("--no-pin");
            }
            // Every process keeps its own chain in the one audit dir.
            if let Some(audit) = audit {
                command
                    .arg("--audit")
                    .arg(&audit.dir)
                    .args(["--audit-fsync", &audit.limits.fsync.to_string()])
                    .args([
                        "--audit-segment-bytes",
                        &audit.limits.segment_max_bytes.to_string(),
                    ]);
            }
            // Processes on one machine pin their shards to different cores.
            command.args(["--first-core", &(id * workers).to_string()]);
            let child = command.spawn().context("cannot spawn a worker process")?;
            cluster.children().push(child);
        }
        Ok((cluster, net))
    }

    fn children(&self) -> std::sync::MutexGuard<'_, Vec<Child>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A worker that exited before the run was over (which fails the run at
    /// once, rather than after `--peer-lost-ms`).
    fn exited_early(&self) -> Option<String> {
        self.children().iter_mut().enumerate().find_map(|(index, child)| {
            let status = child.try_wait().ok()??;
            Some(format!("worker {} exited early ({status})", index + 1))
        })
    }

    /// Waits for the workers to exit after a run that ended well; kills any
    /// that outstay the grace period. The run's output is complete and
    /// committed by then, so a worker that dies now (killed, crashed in its
    /// shutdown) changes no result: it is reported as a warning.
    pub fn join(self) {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        for (index, child) in self.children().iter_mut().enumerate() {
            loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => break,
                    Ok(Some(status)) => {
                        log::warn!("worker {} exited with {status} after the run ended", index + 1);
                        break;
                    }
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        log::warn!("worker {} did not exit after the run ended; killed", index + 1);
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => {
                        log::warn!("worker {}: {e}", index + 1);
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in self.children().iter_mut() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(self.path.with_extension("secret"));
    }
}

/// Ports free right now on loopback (the OS picks them).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot find free loopback ports")?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?)
}

/// Writes a new file only its owner can read (a secret in a shared temp
/// directory); refuses to follow or reuse anything already at `path`.
fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)
}

fn random_secret_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("the OS has a random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_owner_only_and_never_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.secret");
        write_private_file(&path, b"0123456789abcdef").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(write_private_file(&path, b"again").is_err());
    }

    #[test]
    fn job_specs_cross_the_network_as_jobs() {
        let spec = JobSpec {
            app: AppName::MarketSpread,
            options: AppOptions {
                final_counts: false,
                max_quote_age_ms: Some(250),
                market_spread_bugs: Default::default(),
                nexmark_bugs: Default::default(),
            },
            split_input: true,
            batch_max: 7,
            queue_depth_batches: 9,
            discard_output: true,
            output_ids: true,
            checkpoints: Some(JobCheckpoints {
                state_dir: "/shared/state".into(),
                fingerprint: "market-spread; 4 shards".into(),
                restore_from: 3,
            }),
            spread_sources: vec![(1, "dir:///shared/orders".into())],
        };
        assert_eq!(spec.spread_flags(), [false, true]);
        assert_eq!(JobSpec::from_job(&spec.to_job()).unwrap(), spec);
        assert_eq!(spec.restore().unwrap().store_id, 3);
        let fresh = JobSpec {
            checkpoints: Some(JobCheckpoints {
                restore_from: 0,
                ..spec.checkpoints.clone().unwrap()
            }),
            ..spec.clone()
        };
        assert_eq!(fresh.restore(), None, "a run from the start restores nothing");
        let unknown = Job {
            app: "nope".into(),
            ..spec.to_job()
        };
        assert!(JobSpec::from_job(&unknown).is_err());
        let split_wordcount = Job {
            app: "wordcount".into(),
            ..spec.to_job()
        };
        assert!(JobSpec::from_job(&split_wordcount).is_err());
    }
}
