//! The production driver: one pinned thread per shard, a reader thread per
//! source, one output thread; bounded crossbeam queues between them.
//!
//! Deadlock freedom: shards never block on another shard. A send to a full peer
//! queue is parked, and while anything is parked the shard reads no new source
//! input but keeps draining its own peer queue (processing a peer batch only
//! produces output, never more peer sends). Only the output thread may block a
//! shard, and it never waits on shards.

use crate::flow::Dataflow;
use crate::key::Key;
use crate::shard::{Effect, PeerMessage, ShardCore, ShardCounters, ShardLimits};
use crate::sink::{write_outputs, DeadLetterSpec, DeadLetterWriter, OutputMessage, SinkSpec};
use crate::source::{self, SourceEvent, StopFlag};
use crossbeam_channel::{bounded, Receiver, Select, Sender, TryRecvError, TrySendError};
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Longest a shard sleeps when idle before looking again (ends come as messages,
/// so this bounds only the reaction to a stop).
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Peer messages handled before the shard looks at its sources again.
const PEER_DRAIN_MAX: usize = 64;
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
    /// Progress lines on stderr (shown only when stderr is a terminal).
    pub progress: bool,
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
            progress: true,
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
    pub duplicates_dropped: u64,
    pub wall: Duration,
    pub workers: usize,
    /// Stopped early by the stop flag (Ctrl-C).
    pub interrupted: bool,
    pub source_errors: Vec<String>,
}

impl RunSummary {
    pub fn events_per_second(&self) -> f64 {
        self.records_in as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("writing output failed: {0}")]
    Output(std::io::Error),
    #[error("a worker thread failed: {0}")]
    Worker(String),
}

/// Live totals for the progress line, published by shards once per event.
#[derive(Default)]
struct LiveCounters {
    records_in: AtomicU64,
    records_out: AtomicU64,
    dead_lettered: AtomicU64,
}

impl LiveCounters {
    fn publish(&self, c: ShardCounters) {
        self.records_in.store(c.records_in, Ordering::Relaxed);
        self.records_out.store(c.records_out, Ordering::Relaxed);
        self.dead_lettered.store(c.dead_lettered, Ordering::Relaxed);
    }
}

struct ShardChannels<K, V> {
    peer_rx: Receiver<PeerMessage<K, V>>,
    source_rx: Receiver<SourceEvent>,
    peers: Vec<Sender<PeerMessage<K, V>>>,
    output: Sender<OutputMessage>,
    discard_lines: bool,
}

/// Runs `flow` to the end of its bounded input (or until `stop` is set).
pub fn run<K, V, S, O>(
    flow: Dataflow<K, V, S, O>,
    config: &RunConfig,
    outputs: &Outputs,
    stop: StopFlag,
) -> Result<RunSummary, RunError>
where
    K: Key,
    V: Send + 'static,
    S: Default + Send + 'static,
    O: 'static,
{
    assert!(config.workers > 0, "at least one worker");
    let started = Instant::now();
    let workers = config.workers;
    let Dataflow { sources, logic } = flow;
    let source_names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
    let source_count = source_names.len();
    let opened = sources
        .into_iter()
        .map(source::open)
        .collect::<Result<Vec<_>, _>>()?;
    let sink = outputs.sink.open()?;
    let dead_letters = DeadLetterWriter::new(outputs.dead_letter.clone(), source_names.clone())?;

    let (output_tx, output_rx) = bounded(config.output_queue_depth_buffers);
    let output_thread = thread::Builder::new()
        .name("verity-output".into())
        .spawn(move || write_outputs(output_rx, sink, dead_letters))?;

    let (peer_txs, peer_rxs): (Vec<_>, Vec<_>) =
        (0..workers).map(|_| bounded(config.queue_depth_batches)).unzip();
    let (source_txs, source_rxs): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| bounded(config.source_queue_depth_chunks))
        .unzip();

    let cores = ShardCore::build_all(logic, workers as u32, config.limits);
    let live: Arc<Vec<LiveCounters>> = Arc::new((0..workers).map(|_| LiveCounters::default()).collect());
    let source_errors = Arc::new(Mutex::new(Vec::new()));
    let pinning = Arc::new(Pinning::new(config.pin_cores));
    let (done_tx, done_rx) = bounded::<()>(workers);

    let mut shard_threads = Vec::with_capacity(workers);
    for ((core, peer_rx), source_rx) in cores.into_iter().zip(peer_rxs).zip(source_rxs) {
        let channels = ShardChannels {
            peer_rx,
            source_rx,
            peers: peer_txs.clone(),
            output: output_tx.clone(),
            discard_lines: outputs.sink == SinkSpec::Null,
        };
        let (live, errors, pinning, done, names) = (
            Arc::clone(&live),
            Arc::clone(&source_errors),
            Arc::clone(&pinning),
            done_tx.clone(),
            source_names.clone(),
        );
        let index = core.index() as usize;
        shard_threads.push(
            thread::Builder::new()
                .name(format!("verity-shard-{index}"))
                .spawn(move || {
                    pinning.pin(index);
                    let counters = drive_shard(core, channels, &live[index], &errors, &names);
                    let _ = done.send(());
                    counters
                })?,
        );
    }
    drop((peer_txs, output_tx, done_tx));

    for (index, source) in opened.into_iter().enumerate() {
        let tx = source_txs[index % workers].clone();
        let stop = Arc::clone(&stop);
        thread::Builder::new()
            .name(format!("verity-source-{index}"))
            .spawn(move || {
                source::pump(index as u32, source, &stop, &mut |event| tx.send(event).is_ok());
            })?;
    }

    let interrupted = wait_for_shards(
        &done_rx,
        workers,
        &stop,
        &source_txs,
        source_count,
        config,
        &live,
        started,
    );
    drop(source_txs);

    let mut summary = RunSummary {
        workers,
        interrupted,
        ..RunSummary::default()
    };
    for handle in shard_threads {
        let counters = handle
            .join()
            .map_err(|_| RunError::Worker("a shard panicked".into()))?;
        summary.records_in += counters.records_in;
        summary.records_out += counters.records_out;
        summary.dead_lettered += counters.dead_lettered;
        summary.duplicates_dropped += counters.duplicates_dropped;
    }
    output_thread
        .join()
        .map_err(|_| RunError::Worker("the output thread panicked".into()))?
        .map_err(RunError::Output)?;
    summary.wall = started.elapsed();
    summary.source_errors = std::mem::take(&mut *source_errors.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(summary)
}

/// Waits until every shard finished; on a stop, ends every source once.
/// Returns whether the run was stopped early.
#[allow(clippy::too_many_arguments)]
fn wait_for_shards(
    done: &Receiver<()>,
    workers: usize,
    stop: &AtomicBool,
    source_txs: &[Sender<SourceEvent>],
    source_count: usize,
    config: &RunConfig,
    live: &[LiveCounters],
    started: Instant,
) -> bool {
    let show_progress = config.progress && std::io::stderr().is_terminal();
    let mut finished = 0;
    let mut stopped = false;
    let mut last_progress = Instant::now();
    while finished < workers {
        match done.recv_timeout(IDLE_WAIT * 5) {
            Ok(()) => finished += 1,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        if stop.load(Ordering::Relaxed) && !stopped {
            stopped = true;
            for source in 0..source_count {
                // A reader blocked on stdin cannot see the flag; ending its
                // source here lets the shards finish without it.
                let _ = source_txs[source % workers].send(SourceEvent::End {
                    source: source as u32,
                });
            }
        }
        if show_progress && last_progress.elapsed() >= PROGRESS_INTERVAL {
            last_progress = Instant::now();
            print_progress(live, started);
        }
    }
    if show_progress {
        eprint!("\r\x1b[K");
    }
    stopped
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

/// Sends to peers that found their queue full, kept in order.
struct Parked<K, V> {
    sends: VecDeque<(u32, PeerMessage<K, V>)>,
}

fn drive_shard<K, V, S, O>(
    mut core: ShardCore<K, V, S, O>,
    ch: ShardChannels<K, V>,
    live: &LiveCounters,
    source_errors: &Mutex<Vec<String>>,
    source_names: &[String],
) -> ShardCounters
where
    K: Key,
    V: Send + 'static,
    S: Default + Send + 'static,
    O: 'static,
{
    let mut parked = Parked {
        sends: VecDeque::new(),
    };
    let mut effects = Vec::new();
    let mut sources_connected = true;
    loop {
        let mut progressed = false;
        for _ in 0..PEER_DRAIN_MAX {
            match ch.peer_rx.try_recv() {
                Ok(message) => {
                    core.on_peer_message(message);
                    progressed = true;
                }
                Err(_) => break,
            }
        }
        if parked.sends.is_empty() && core.sources_open() > 0 && sources_connected {
            match ch.source_rx.try_recv() {
                Ok(event) => {
                    core.on_source_event(event);
                    progressed = true;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => sources_connected = false,
            }
        }
        if !sources_connected && core.sources_open() > 0 {
            core.end_all_sources();
        }
        if !progressed && parked.sends.is_empty() {
            core.flush();
        }
        effects.extend(core.drain_effects());
        for effect in effects.drain(..) {
            carry_out(effect, &mut core, &ch, &mut parked, source_errors, source_names);
        }
        progressed |= retry_parked(&mut parked, &ch.peers);
        live.publish(core.counters());
        if core.is_finished() && parked.sends.is_empty() {
            return core.counters();
        }
        if !progressed {
            wait_for_input(&ch, &core, &parked, sources_connected);
        }
    }
}

fn carry_out<K, V, S, O>(
    effect: Effect<K, V>,
    core: &mut ShardCore<K, V, S, O>,
    ch: &ShardChannels<K, V>,
    parked: &mut Parked<K, V>,
    source_errors: &Mutex<Vec<String>>,
    source_names: &[String],
) where
    K: Key,
    V: Send + 'static,
    S: Default + Send + 'static,
    O: 'static,
{
    match effect {
        Effect::Send { to, message } => {
            if !parked.sends.is_empty() {
                parked.sends.push_back((to, message));
                return;
            }
            match ch.peers[to as usize].try_send(message) {
                Ok(()) => {}
                Err(TrySendError::Full(message)) => parked.sends.push_back((to, message)),
                Err(TrySendError::Disconnected(_)) => panic!("shard {to} is gone while peers still send"),
            }
        }
        Effect::Output(lines) => {
            if ch.discard_lines {
                core.recycle_output(lines);
            } else {
                // A closed output thread has failed; its error ends the run.
                let _ = ch.output.send(OutputMessage::Lines(lines));
            }
        }
        Effect::DeadLetter(letter) => {
            let _ = ch.output.send(OutputMessage::DeadLetter(letter));
        }
        Effect::SourceFailed { source, error } => {
            let name = source_names.get(source as usize).map_or("?", String::as_str);
            let message = format!("source {name} failed: {error}");
            eprintln!("verity: {message}");
            source_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(message);
        }
    }
}

fn retry_parked<K, V>(parked: &mut Parked<K, V>, peers: &[Sender<PeerMessage<K, V>>]) -> bool {
    let mut sent_any = false;
    while let Some((to, message)) = parked.sends.pop_front() {
        match peers[to as usize].try_send(message) {
            Ok(()) => sent_any = true,
            Err(TrySendError::Full(message)) => {
                parked.sends.push_front((to, message));
                break;
            }
            Err(TrySendError::Disconnected(_)) => panic!("shard {to} is gone while peers still send"),
        }
    }
    sent_any
}

fn wait_for_input<K, V, S, O>(
    ch: &ShardChannels<K, V>,
    core: &ShardCore<K, V, S, O>,
    parked: &Parked<K, V>,
    sources_connected: bool,
) where
    K: Key,
    V: Send + 'static,
    S: Default + Send + 'static,
    O: 'static,
{
    let mut select = Select::new();
    select.recv(&ch.peer_rx);
    let waiting_for_sources = parked.sends.is_empty() && core.sources_open() > 0 && sources_connected;
    if waiting_for_sources {
        select.recv(&ch.source_rx);
    }
    // With parked sends, poll soon: a peer queue has no "space available" signal.
    let timeout = if parked.sends.is_empty() {
        IDLE_WAIT
    } else {
        Duration::from_micros(50)
    };
    let _ = select.ready_timeout(timeout);
}

/// Pins shard threads to cores; warns once if it cannot.
struct Pinning {
    core_ids: Vec<core_affinity::CoreId>,
    enabled: bool,
    warned: AtomicBool,
}

impl Pinning {
    fn new(enabled: bool) -> Self {
        let core_ids = if enabled {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        Pinning {
            core_ids,
            enabled,
            warned: AtomicBool::new(false),
        }
    }

    fn pin(&self, shard: usize) {
        if !self.enabled {
            return;
        }
        let pinned = !self.core_ids.is_empty()
            && core_affinity::set_for_current(self.core_ids[shard % self.core_ids.len()]);
        if !pinned && !self.warned.swap(true, Ordering::Relaxed) {
            eprintln!("verity: warning: cannot pin worker threads to cores; running unpinned");
        }
    }
}
