//! The production driver: one pinned thread per shard, a reader thread per
//! source, one output thread; bounded crossbeam queues between them.
//!
//! Channels: per source, one queue of dealt chunks per shard, and one batch queue
//! per (sender, receiver) pair, so a slow source never blocks another one's
//! records. Shards never block on another shard: a send to a full queue is
//! parked, and while a source has parked sends the shard parses none of its
//! chunks but keeps applying what it receives (applying only produces output).
//! Only the output thread may block a shard, and it never waits on shards.

use crate::flow::Dataflow;
use crate::key::Key;
use crate::shard::{Batch, Effect, ShardCore, ShardCounters, ShardLimits};
use crate::sink::{write_outputs, DeadLetterSpec, DeadLetterWriter, OutputMessage, SinkSpec};
use crate::source::{self, Dealer, SourceEvent, StopFlag};
use crossbeam_channel::{bounded, Receiver, Select, Sender, TryRecvError, TrySendError};
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Longest a shard sleeps when idle before looking again.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Batches taken from peers before the shard looks at its sources again.
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

/// A shard's ends of the queues. Indexes: `[source][peer shard]`.
struct ShardChannels<K, V> {
    chunks: Vec<Receiver<SourceEvent>>,
    batches_in: Vec<Vec<Option<Receiver<Batch<K, V>>>>>,
    batches_out: Vec<Vec<Option<Sender<Batch<K, V>>>>>,
    output: Sender<OutputMessage>,
    discard_lines: bool,
}

/// Every queue of a run, before they are handed to the threads.
struct Wiring<K, V> {
    /// `[source][shard]`
    chunk_txs: Vec<Vec<Sender<SourceEvent>>>,
    shards: Vec<ShardChannels<K, V>>,
}

fn wire<K, V>(
    sources: usize,
    workers: usize,
    config: &RunConfig,
    output: &Sender<OutputMessage>,
    discard_lines: bool,
) -> Wiring<K, V> {
    let mut shards: Vec<ShardChannels<K, V>> = (0..workers)
        .map(|_| ShardChannels {
            chunks: Vec::with_capacity(sources),
            batches_in: (0..sources)
                .map(|_| (0..workers).map(|_| None).collect())
                .collect(),
            batches_out: (0..sources)
                .map(|_| (0..workers).map(|_| None).collect())
                .collect(),
            output: output.clone(),
            discard_lines,
        })
        .collect();
    let mut chunk_txs = Vec::with_capacity(sources);
    for source in 0..sources {
        let mut txs = Vec::with_capacity(workers);
        for shard in shards.iter_mut() {
            let (tx, rx) = bounded(config.source_queue_depth_chunks);
            txs.push(tx);
            shard.chunks.push(rx);
        }
        chunk_txs.push(txs);
        for from in 0..workers {
            for to in (0..workers).filter(|to| *to != from) {
                let (tx, rx) = bounded(config.queue_depth_batches);
                shards[from].batches_out[source][to] = Some(tx);
                shards[to].batches_in[source][from] = Some(rx);
            }
        }
    }
    Wiring { chunk_txs, shards }
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

    let (output_tx, output_rx) = bounded::<OutputMessage>(config.output_queue_depth_buffers);
    let output_thread = thread::Builder::new()
        .name("verity-output".into())
        .spawn(move || write_outputs(output_rx, sink, dead_letters))?;

    let wiring = wire::<K, V>(
        source_count,
        workers,
        config,
        &output_tx,
        outputs.sink == SinkSpec::Null,
    );
    drop(output_tx);
    let cores = ShardCore::build_all(logic, workers as u32, config.limits);
    let live: Arc<Vec<LiveCounters>> = Arc::new((0..workers).map(|_| LiveCounters::default()).collect());
    let source_errors = Arc::new(Mutex::new(Vec::new()));
    let pinning = Arc::new(Pinning::new(config.pin_cores));
    let (done_tx, done_rx) = bounded::<()>(workers);

    let mut shard_threads = Vec::with_capacity(workers);
    for (core, channels) in cores.into_iter().zip(wiring.shards) {
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
    drop(done_tx);

    for (index, (source, txs)) in opened.into_iter().zip(wiring.chunk_txs).enumerate() {
        let stop = Arc::clone(&stop);
        thread::Builder::new()
            .name(format!("verity-source-{index}"))
            .spawn(move || {
                let mut send = |shard: usize, event| txs[shard].send(event).is_ok();
                source::pump(source, &stop, Dealer::new(index as u32, workers, &mut send));
            })?;
    }

    let interrupted = wait_for_shards(&done_rx, workers, &stop, config, &live, started);

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

/// Waits until every shard finished, showing progress on a terminal. Returns
/// whether the run was stopped early (readers see the flag and end their sources).
fn wait_for_shards(
    done: &Receiver<()>,
    workers: usize,
    stop: &AtomicBool,
    config: &RunConfig,
    live: &[LiveCounters],
    started: Instant,
) -> bool {
    let show_progress = config.progress && std::io::stderr().is_terminal();
    let mut finished = 0;
    let mut last_progress = Instant::now();
    while finished < workers {
        match done.recv_timeout(PROGRESS_INTERVAL / 4) {
            Ok(()) => finished += 1,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        if show_progress && last_progress.elapsed() >= PROGRESS_INTERVAL {
            last_progress = Instant::now();
            print_progress(live, started);
        }
    }
    if show_progress {
        eprint!("\r\x1b[K");
    }
    stop.load(Ordering::Relaxed)
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

/// Per source: sends that found their queue full, kept in order.
type Parked<K, V> = Vec<VecDeque<(u32, Batch<K, V>)>>;

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
    let mut parked: Parked<K, V> = (0..ch.chunks.len()).map(|_| VecDeque::new()).collect();
    let mut effects = Vec::new();
    let mut awaited = Vec::new();
    loop {
        let mut progressed = receive_batches(&mut core, &ch, &mut awaited);
        for (source, chunks) in ch.chunks.iter().enumerate() {
            if parked[source].is_empty() && core.wants_chunk(source as u32) {
                match chunks.try_recv() {
                    Ok(event) => {
                        core.on_source_event(event);
                        progressed = true;
                    }
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => {
                        panic!("reader of source {source} vanished without an end")
                    }
                }
            }
        }
        if !progressed && parked.iter().all(VecDeque::is_empty) {
            core.flush();
        }
        effects.extend(core.drain_effects());
        for effect in effects.drain(..) {
            carry_out(effect, &mut core, &ch, &mut parked, source_errors, source_names);
        }
        progressed |= retry_parked(&mut parked, &ch.batches_out);
        live.publish(core.counters());
        if core.is_finished() && parked.iter().all(VecDeque::is_empty) {
            return core.counters();
        }
        if !progressed {
            wait_for_input(&ch, &core, &parked, &mut awaited);
        }
    }
}

/// Applies batches from the senders whose turn it is, as long as they have some.
fn receive_batches<K, V, S, O>(
    core: &mut ShardCore<K, V, S, O>,
    ch: &ShardChannels<K, V>,
    awaited: &mut Vec<(u32, u32)>,
) -> bool
where
    K: Key,
    V: Send + 'static,
    S: Default + Send + 'static,
    O: 'static,
{
    let mut received = 0;
    'turns: while received < PEER_DRAIN_MAX {
        core.awaited_senders(awaited);
        for &(source, from) in awaited.iter() {
            if let Ok(batch) = inbound(ch, source, from).try_recv() {
                core.on_batch(batch);
                received += 1;
                continue 'turns;
            }
        }
        break;
    }
    received > 0
}

fn inbound<K, V>(ch: &ShardChannels<K, V>, source: u32, from: u32) -> &Receiver<Batch<K, V>> {
    ch.batches_in[source as usize][from as usize]
        .as_ref()
        .expect("no channel from a shard to itself")
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
        Effect::Send { to, batch } => {
            let source = batch.source as usize;
            if !parked[source].is_empty() {
                parked[source].push_back((to, batch));
                return;
            }
            match outbound(&ch.batches_out, source, to).try_send(batch) {
                Ok(()) => {}
                Err(TrySendError::Full(batch)) => parked[source].push_back((to, batch)),
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

#[allow(clippy::type_complexity)]
fn outbound<K, V>(out: &[Vec<Option<Sender<Batch<K, V>>>>], source: usize, to: u32) -> &Sender<Batch<K, V>> {
    out[source][to as usize]
        .as_ref()
        .expect("no channel from a shard to itself")
}

#[allow(clippy::type_complexity)]
fn retry_parked<K, V>(parked: &mut Parked<K, V>, out: &[Vec<Option<Sender<Batch<K, V>>>>]) -> bool {
    let mut sent_any = false;
    for (source, queue) in parked.iter_mut().enumerate() {
        while let Some((to, batch)) = queue.pop_front() {
            match outbound(out, source, to).try_send(batch) {
                Ok(()) => sent_any = true,
                Err(TrySendError::Full(batch)) => {
                    queue.push_front((to, batch));
                    break;
                }
                Err(TrySendError::Disconnected(_)) => panic!("shard {to} is gone while peers still send"),
            }
        }
    }
    sent_any
}

fn wait_for_input<K, V, S, O>(
    ch: &ShardChannels<K, V>,
    core: &ShardCore<K, V, S, O>,
    parked: &Parked<K, V>,
    awaited: &mut Vec<(u32, u32)>,
) where
    K: Key,
    V: Send + 'static,
    S: Default + Send + 'static,
    O: 'static,
{
    let mut select = Select::new();
    core.awaited_senders(awaited);
    for &(source, from) in awaited.iter() {
        select.recv(inbound(ch, source, from));
    }
    for (source, chunks) in ch.chunks.iter().enumerate() {
        if parked[source].is_empty() && core.wants_chunk(source as u32) {
            select.recv(chunks);
        }
    }
    // With parked sends, poll soon: a full queue has no "space available" signal.
    let any_parked = parked.iter().any(|q| !q.is_empty());
    let _ = select.ready_timeout(if any_parked {
        Duration::from_micros(50)
    } else {
        IDLE_WAIT
    });
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
