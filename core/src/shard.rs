//! The shard state machine. It takes events (a chunk of a source was dealt to it,
//! a batch from a shard arrived, a source ended) and produces effects (send this
//! batch, write these output bytes, dead-letter this record). It never touches a
//! thread, queue, socket, file or clock: the threaded runtime drives it in
//! production, and a simulator can drive many of them in one thread.
//!
//! # Ordered parallel ingest
//!
//! A source's chunks are dealt round-robin: chunk `c` is parsed by shard
//! `c % shards`, so parsing scales with the shards. Parsing routes each record to
//! the shard owning its key, as one batch sequence per (chunk, receiver) ending in
//! a `last` batch (possibly empty). A receiver applies a source's records strictly
//! in chunk order, taking chunk `c`'s batches from shard `c % shards` (its own
//! chunks from a local queue). So each key sees its records in input order, at any
//! shard count, and the interleaving of one source's keys is deterministic.
//!
//! Progress: the parser of the lowest unparsed chunk can always finish it (every
//! receiver applies up to that chunk without waiting on anything later), so the
//! turn order cannot deadlock; `RUNAHEAD_CHUNKS_PER_SHARD` bounds how far a shard
//! parses ahead of what it has applied.
//!
//! # Checkpoints: the chunk turns are the aligned barriers
//!
//! A source's dealer puts checkpoint `k`'s barrier between two chunks (its
//! *cut*) and into every shard's queue of that source, and stamps every chunk
//! with its *epoch*, the barriers dealt before it; a batch carries the epoch
//! of its chunk. A shard applies a chunk of epoch `e` only after it took the
//! snapshots of checkpoints `1..=e`, and takes snapshot `k` once every source
//! stands at its cut of `k` (or has ended): it has applied exactly the chunks
//! before the cuts. It learns a cut from the barrier in its own queue or from
//! the epoch of the next chunk to apply, whichever comes first, so a shard
//! that reads its own queue late still stops at the cut. Parsing goes on past
//! a cut (the runahead bound holds); only applying waits, and only as long as
//! the other sources take to reach their cuts. Dead letters of chunks past a
//! cut wait for the snapshot too, so each is in the output stream on the
//! right side of its checkpoint (`Effect::Checkpoint` marks the place).
//!
//! Because every receiver applies in chunk order, the snapshots of all shards
//! with the sources' cuts are one consistent state of the whole dataflow:
//! recovery restores every shard from it (`ShardCore::restore`), reopens the
//! sources at their cuts and starts every channel anew.

use crate::audit::{ShardAudit, UnitClock, UnitSource};
use crate::env::Clock;
use crate::event_time::{EventTimeSpec, Watermarks};
use crate::flow::{Chain, EndFn, EventTimerFn, FormatFn, Logic, Output, StepFn, TimerFn};
use crate::ids::{Msg, MsgId};
use crate::key::{shard_for, Key};
use crate::line::DeadLetter;
pub use crate::routes::Routed;
use crate::routes::{ChunkLines, Hashed, Routes};
use crate::sink::OutputBatch;
use crate::source::{ChunkData, SourceCut, SourceEvent};
use crate::step_timing::{Step, StepTimings};
use crate::timers::Timers;
use crate::wire::{Wire, WireError};
use crate::State;
use bytes::Bytes;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use verity_state::{DedupWatermarks, KeyedStore};

/// How many of its own chunks per source a shard may parse ahead of applying.
/// Deep enough to hide a peer's batch arriving late (another core busy, or a
/// network hop in a cluster): 4 left shards waiting on their turn measurably
/// more often. Bounded: about 1 MiB of input per shard and source.
pub const RUNAHEAD_CHUNKS_PER_SHARD: u64 = 16;

/// The largest `ShardLimits::batch_max` a run takes (`--batch-max`; a
/// replay refuses a recorded larger one).
pub const BATCH_MAX_LIMIT: usize = 1_000_000;

/// Limits of one shard, all configurable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLimits {
    /// Records per batch sent to another shard.
    pub batch_max: usize,
    /// Output bytes gathered before they are handed to the sink.
    pub output_batch_bytes: usize,
    /// The longest output waits in a shard's buffer (µs, by the shard's
    /// clock) while input keeps coming: a partial buffer older than this is
    /// handed on at the shard's next step, so batching never holds a line
    /// back for longer under steady load (a shard whose input runs dry
    /// flushes at once).
    pub output_linger_max_us: u64,
    /// Incremental snapshots (only the keys changed since the previous
    /// snapshot) between two whole ones; 0 makes every snapshot whole.
    /// A recovery reads the whole snapshot and every delta after it, so this
    /// bounds recovery's reading as the interval bounds lost work.
    pub snapshot_deltas_max: u32,
    /// A delta is taken only if at most this percentage of the keys changed
    /// since the last snapshot: a delta of most keys costs about as much to
    /// write as a whole snapshot and lengthens every recovery.
    pub snapshot_delta_changed_max_percent: u32,
}

/// `ShardLimits::output_linger_max_us` by default: half of the 1 ms p99
/// end-to-end latency `verity bench` aims at below saturation, and long
/// enough that a saturated shard still hands on full 64 KiB buffers.
pub const OUTPUT_LINGER_MAX_US: u64 = 500;

/// `ShardLimits::snapshot_deltas_max` by default: with 1 s checkpoints, a
/// whole snapshot at least every 8 s.
pub const SNAPSHOT_DELTAS_MAX: u32 = 7;

impl Default for ShardLimits {
    fn default() -> Self {
        ShardLimits {
            batch_max: 1024,
            output_batch_bytes: 64 * 1024,
            output_linger_max_us: OUTPUT_LINGER_MAX_US,
            snapshot_deltas_max: SNAPSHOT_DELTAS_MAX,
            snapshot_delta_changed_max_percent: 50,
        }
    }
}

/// An own chunk parsed ahead of its turn.
struct ParsedChunk<K, V> {
    chunk: u64,
    epoch: u64,
    /// Its records this shard owns.
    local: Vec<Hashed<K, V>>,
    /// The records and dead letters its parse counted: a snapshot taken
    /// before its turn leaves them out, as the recovered run parses it again.
    records: u64,
    dead_lettered: u64,
    /// With event time: parallel to `local`, the chunk's highest event time
    /// up to each record; and the chunk's highest.
    local_event_max_ms: Vec<u64>,
    event_max_ms: Option<u64>,
}

/// Records of one chunk of one source, from the shard that parsed it to one
/// receiver. `first_seq` numbers the channel (source, sender → receiver) from 1,
/// so the receiver can drop replays.
#[derive(Debug)]
pub struct Batch<K, V> {
    pub source: u32,
    pub from: u32,
    pub chunk: u64,
    /// The chunk's epoch (see the module docs on checkpoints).
    pub epoch: u64,
    pub first_seq: u64,
    /// The chunk's last batch for this receiver.
    pub last: bool,
    pub records: Vec<Routed<K, V>>,
    /// With event time (`crate::event_time`), parallel to `records`: the
    /// chunk's highest event time up to and including each record (ms).
    /// Empty without event time (no allocation).
    pub event_max_ms: Vec<u64>,
    /// With event time, on the `last` batch: the chunk's highest event time
    /// (of all its records, wherever they went), if it had any.
    pub chunk_event_max_ms: Option<u64>,
}

/// What a shard asks its driver to do, in order.
#[derive(Debug)]
pub enum Effect<K, V> {
    Send {
        to: u32,
        batch: Batch<K, V>,
    },
    /// Output lines, each ending in `\n` (with their input ids if the sink
    /// wants them: `collect_output_ids`).
    Output(OutputBatch),
    DeadLetter(DeadLetter),
    /// A source failed after it opened (the run continues without the rest of it).
    SourceFailed {
        source: u32,
        error: String,
    },
    /// This shard's part of checkpoint `checkpoint`: everything before it in
    /// the effects belongs to the checkpoint, everything after to later ones.
    Checkpoint(CheckpointPart),
    /// Audit records (`verity_audit::writer::push_record`'s format), for the
    /// audit writer; only with `enable_audit`.
    Audit(Vec<u8>),
}

/// One shard's snapshot at a checkpoint, encoded (`ShardCore::restore`
/// reads it back), with the cuts of the sources it knows of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointPart {
    pub shard: u32,
    pub checkpoint: u64,
    /// Per source: its cut, if this shard saw the barrier (the parser of the
    /// chunk at the cut always has), or `None`.
    pub cuts: Vec<Option<SourceCut>>,
    /// Per source: its chunks in all, if it had ended and all were applied.
    pub ended: Vec<Option<u64>>,
    /// Whether `state` holds only the keys changed since this shard's part
    /// of the previous checkpoint (which it then applies over), or all.
    pub delta: bool,
    pub state: Vec<u8>,
}

/// Running totals of one shard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShardCounters {
    pub records_in: u64,
    pub records_out: u64,
    pub dead_lettered: u64,
    /// Replayed records dropped by the dedup watermark.
    pub duplicates_dropped: u64,
    /// Records dead-lettered as late (behind their watermark minus the
    /// allowed lateness; also counted in `dead_lettered`).
    pub late: u64,
    /// How long its chunks, batches and output buffers took, per step.
    pub timings: StepTimings,
}

/// One source as this shard sees it.
struct SourceState<K, V> {
    chain: Chain<K, V>,
    /// Known once the source ended.
    total_chunks: Option<u64>,
    /// The chunk whose records this shard applies next.
    next_apply: u64,
    /// Own chunks parsed but not yet at their turn: index, epoch, and their
    /// local records.
    own_parsed: VecDeque<ParsedChunk<K, V>>,
    /// An own chunk dealt but held back by the runahead bound: index, epoch,
    /// first line, data.
    held: Option<(u64, u64, u64, ChunkData)>,
    next_seq: Vec<u64>,
    /// Barriers seen in this shard's queue and not yet passed, oldest first.
    barriers: VecDeque<(u64, SourceCut)>,
    /// The first batch of the chunk at the turn, when that chunk lies past a
    /// checkpoint whose snapshot is not taken yet.
    waiting: Option<Batch<K, V>>,
    /// Dead letters of own chunks past a checkpoint not taken yet: (epoch,
    /// letter).
    deferred_letters: VecDeque<(u64, DeadLetter)>,
}

impl<K, V> SourceState<K, V> {
    fn is_done(&self) -> bool {
        self.total_chunks == Some(self.next_apply) && self.held.is_none()
    }

    /// The highest checkpoint whose cut this source stands at (the chunks
    /// before it applied, none after), as far as this shard knows; `taken`
    /// if it knows of none beyond.
    fn at_cut(&self, taken: u64) -> u64 {
        if self.is_done() {
            return u64::MAX;
        }
        let from_barriers = self
            .barriers
            .iter()
            .filter(|(_, cut)| cut.next_chunk == self.next_apply)
            .map(|(k, _)| *k)
            .max()
            .unwrap_or(0);
        let next_epoch = match (&self.waiting, self.own_parsed.front(), &self.held) {
            (Some(batch), _, _) => batch.epoch,
            (_, Some(parsed), _) if parsed.chunk == self.next_apply => parsed.epoch,
            (_, _, Some((chunk, epoch, _, _))) if *chunk == self.next_apply => *epoch,
            _ => 0,
        };
        taken.max(from_barriers).max(next_epoch)
    }
}

/// The keyed step's code: what runs on a record, at a timer, at the end,
/// and how an output becomes a line.
struct KeyedLogic<K, V, S, O> {
    step: Arc<StepFn<K, V, S, O>>,
    on_end: Option<Arc<EndFn<K, S, O>>>,
    on_timer: Option<Arc<TimerFn<K, S, O>>>,
    on_event_timer: Option<Arc<EventTimerFn<K, S, O>>>,
    format: Arc<FormatFn<O>>,
}

/// The step's event time (`crate::event_time`): how each stream's records
/// carry it, the watermarks, and how late a record may come.
struct EventPart<V> {
    specs: Vec<EventTimeSpec<V>>,
    marks: Watermarks,
    allowed_lateness_ms: u64,
}

/// What the step sees of event time as it runs: the record's (or timer's)
/// event time and the watermark.
#[derive(Clone, Copy, Default)]
struct EventContext {
    event_time_ms: Option<u64>,
    watermark_ms: Option<u64>,
}

/// Rounds of event-time timers fired at the end of input: a handler that
/// sets a timer again each time it runs would otherwise never let the run
/// end (its timers still pending after these rounds are dropped, logged).
const EVENT_TIMER_ROUNDS_AT_END_MAX: u32 = 1_000;

/// The key-side half: state, timers, the step, and the output buffer.
struct KeyedPart<K, V, S, O> {
    store: KeyedStore<K, S>,
    timers: Timers<K>,
    /// Timers the step set while applying one record, until it returns.
    timers_set: Vec<(u64, MsgId)>,
    /// Event-time timers (due at a watermark, ms), and those set while
    /// applying one record.
    event_timers: Timers<K>,
    event_timers_set: Vec<(u64, MsgId)>,
    /// With event time only.
    event: Option<EventPart<V>>,
    logic: KeyedLogic<K, V, S, O>,
    output: Vec<u8>,
    /// The input id of each line in `output`, when the sink wants ids.
    output_ids: Option<Vec<MsgId>>,
    spare_output: Vec<OutputBatch>,
    emitted: u64,
    /// `emitted` when the buffer was last handed on.
    emitted_at_flush: u64,
    /// When the oldest line in `output` was written (µs by `timing_clock`),
    /// if it holds any: the start of its linger.
    output_since_us: Option<u64>,
    clock: UnitClock,
    /// On with `enable_audit`.
    audit: Option<ShardAudit>,
}

pub struct ShardCore<K, V, S, O> {
    index: u32,
    shards: u32,
    limits: ShardLimits,
    sources: Vec<SourceState<K, V>>,
    keyed: KeyedPart<K, V, S, O>,
    /// Where the chunk being parsed goes (its buffers reused chunk after
    /// chunk; with event time, with each record's running max).
    routes: Routes<K, V>,
    watermarks: DedupWatermarks,
    finished: bool,
    counters: ShardCounters,
    effects: Vec<Effect<K, V>>,
    /// Checkpoints whose snapshot this shard took.
    checkpoints_taken: u64,
    /// Deltas since the last whole snapshot, if this life took or restored
    /// one (so the next may be a delta over it).
    deltas_since_whole: Option<u32>,
    /// Bytes of the last whole snapshot.
    whole_snapshot_bytes: usize,
    /// Off only in the simulator's planted-bug tests (see `disable_dedup_for_testing`).
    dedup_enabled: bool,
    /// A replay's recorded order of units with records (`follow_schedule`).
    schedule: Option<VecDeque<UnitSource>>,
    /// The first unit a replay applied out of its recorded order.
    schedule_divergence: Option<String>,
    /// Why the keyed step panicked, once it has: the shard applies nothing
    /// more, and its driver fails the run once the effects so far (the
    /// audit records that name the input and the key's state) are out.
    panicked: Option<String>,
    /// The clock that times the steps and the output's linger: the one
    /// `set_clock` gives, read directly (never recorded: no decision of the
    /// step's logic depends on it, only when output is handed on).
    timing_clock: Arc<dyn Clock>,
}

/// The version of `ShardCore`'s snapshot encoding; a checkpoint of another
/// version is refused, not misread. 2: whole snapshots and deltas; 3: the
/// keyed step's timers, all of them in every snapshot; 4: market-spread's
/// symbols route by their one word (`SmallBytes::route_hash_of_word`), so
/// an older snapshot's keys would sit on shards that no longer own them;
/// 5: event-time timers after the timers, then (with event time) the
/// watermarks.
pub const SNAPSHOT_VERSION: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("shard {shard}'s snapshot is not readable: {error}")]
    Malformed { shard: u32, error: WireError },
    #[error("shard {shard}'s snapshot has version {found}; this build reads version {SNAPSHOT_VERSION}")]
    Version { shard: u32, found: u32 },
    #[error("shard {shard}'s snapshot is of a dataflow with {found} sources; this one has {expected}")]
    Sources {
        shard: u32,
        found: usize,
        expected: usize,
    },
    #[error("the snapshot is of shard {found}, not {expected}")]
    WrongShard { found: u32, expected: u32 },
    #[error("shard {shard}'s snapshots do not chain: {why}")]
    Chain { shard: u32, why: &'static str },
}

impl<K: Key + Wire, V: Send + 'static, S: State, O: 'static> ShardCore<K, V, S, O> {
    /// The cores of shards `range` out of `shards` in all (one process's share
    /// of a cluster).
    pub fn build_range(
        logic: &Logic<K, V, S, O>,
        shards: u32,
        range: std::ops::Range<u32>,
        limits: ShardLimits,
    ) -> Vec<Self> {
        assert!(shards > 0 && limits.batch_max > 0 && limits.output_batch_bytes > 0);
        assert!(range.end <= shards);
        range
            .map(|index| ShardCore::new(index, shards, limits, logic))
            .collect()
    }

    fn new(index: u32, shards: u32, limits: ShardLimits, logic: &Logic<K, V, S, O>) -> Self {
        let sources = logic
            .chains
            .iter()
            .map(|chain| SourceState {
                chain: Arc::clone(chain),
                total_chunks: None,
                next_apply: 0,
                own_parsed: VecDeque::new(),
                held: None,
                next_seq: vec![1; shards as usize],
                barriers: VecDeque::new(),
                waiting: None,
                deferred_letters: VecDeque::new(),
            })
            .collect();
        let mut core = ShardCore {
            index,
            shards,
            limits,
            sources,
            keyed: KeyedPart {
                store: KeyedStore::new(),
                timers: Timers::default(),
                timers_set: Vec::new(),
                event_timers: Timers::default(),
                event_timers_set: Vec::new(),
                event: event_part(logic),
                logic: KeyedLogic {
                    step: Arc::clone(&logic.step),
                    on_end: logic.on_end.clone(),
                    on_timer: logic.on_timer.clone(),
                    on_event_timer: logic.on_event_timer.clone(),
                    format: Arc::clone(&logic.format),
                },
                output: Vec::with_capacity(limits.output_batch_bytes + 1024),
                output_ids: None,
                spare_output: Vec::new(),
                emitted: 0,
                emitted_at_flush: 0,
                output_since_us: None,
                clock: UnitClock::new(crate::env::process_clock()),
                audit: None,
            },
            routes: Routes::new(index, shards),
            watermarks: DedupWatermarks::new(),
            finished: false,
            counters: ShardCounters::default(),
            effects: Vec::new(),
            checkpoints_taken: 0,
            deltas_since_whole: None,
            whole_snapshot_bytes: 0,
            dedup_enabled: true,
            schedule: None,
            schedule_divergence: None,
            panicked: None,
            timing_clock: crate::env::process_clock(),
        };
        core.finish_if_done();
        core
    }

    /// A test-only fault switch: replayed batches are applied again. The
    /// simulator's planted-bug tests use it to show that a broken dedup is
    /// caught; nothing else may call it.
    pub fn disable_dedup_for_testing(&mut self) {
        self.dedup_enabled = false;
    }

    /// The clock the step's logic reads (`Output::now_us`); the process's
    /// system clock by default.
    pub fn set_clock(&mut self, clock: Arc<dyn Clock>) {
        self.timing_clock = Arc::clone(&clock);
        self.keyed.clock = UnitClock::new(clock);
    }

    /// Records what this shard applies and sends, the clock readings its
    /// logic used and the logic's notes (`Effect::Audit`), and keeps the
    /// input id of every output line (the lineage).
    pub fn enable_audit(&mut self) {
        self.keyed.audit = Some(ShardAudit::new(self.index));
        if self.keyed.output_ids.is_none() {
            self.collect_output_ids();
        }
    }

    /// A replay: apply units with records only in `units`' order (what the
    /// recorded run's audit log says this shard applied), each with the
    /// clock reading in `readings`. Own chunks wait for their place here;
    /// the driver delivers another shard's batch with records only when
    /// `schedule_front` names it.
    pub fn follow_schedule(&mut self, units: VecDeque<UnitSource>, readings: VecDeque<Option<u64>>) {
        assert_eq!(units.len(), readings.len(), "one reading per unit");
        self.schedule = Some(units);
        self.keyed.clock = UnitClock::replaying(readings);
    }

    /// The next unit of a replay's schedule.
    pub fn schedule_front(&self) -> Option<UnitSource> {
        self.schedule.as_ref().and_then(|units| units.front().copied())
    }

    /// Why the replay left its schedule, if it did: a unit applied out of
    /// order, or a clock reading the recorded run did not take.
    pub fn schedule_divergence(&self) -> Option<String> {
        if let Some(why) = &self.schedule_divergence {
            return Some(why.clone());
        }
        let unrecorded = self.keyed.clock.unrecorded_readings;
        (unrecorded > 0).then(|| {
            format!(
                "shard {}'s logic read the clock in {unrecorded} batch(es) where the recorded run read none",
                self.index
            )
        })
    }

    /// A replay: applies what the schedule lets through now (the driver
    /// calls it after delivering, since a unit of one source may free
    /// another source's own chunk).
    pub fn resume_scheduled(&mut self) {
        for source in 0..self.sources.len() as u32 {
            self.make_progress(source);
        }
    }

    /// Whether a replay's schedule lets this shard apply its own part of
    /// `chunk` of `source` now.
    fn allows_own(&self, source: u32, chunk: u64) -> bool {
        let own = |u: &UnitSource| u.source == source && u.from == self.index && u.chunk == chunk;
        self.schedule
            .as_ref()
            .is_none_or(|units| units.front().is_some_and(own))
    }

    /// Keeps, beside the output lines, the id of the input behind each line
    /// (for a sink that wants ids); off by default, as it costs 16 bytes a line.
    pub fn collect_output_ids(&mut self) {
        assert!(self.keyed.output.is_empty(), "switched on before any output");
        self.keyed.output_ids = Some(Vec::new());
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn counters(&self) -> ShardCounters {
        ShardCounters {
            records_out: self.keyed.emitted,
            ..self.counters
        }
    }

    /// Why the keyed step panicked, if it did (`panicked`).
    pub fn panicked(&self) -> Option<&str> {
        self.panicked.as_deref()
    }

    /// True once all input was applied, final outputs are emitted and everything
    /// is flushed into effects.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Whether the driver should hand this shard the next chunk of `source`.
    pub fn wants_chunk(&self, source: u32) -> bool {
        let state = &self.sources[source as usize];
        state.held.is_none() && state.total_chunks.is_none()
    }

    /// The (source, sender) channels whose batch this shard applies next.
    pub fn awaited_senders(&self, into: &mut Vec<(u32, u32)>) {
        into.clear();
        for (source, state) in self.sources.iter().enumerate() {
            let parser = (state.next_apply % self.shards as u64) as u32;
            if !state.is_done() && parser != self.index && state.waiting.is_none() {
                into.push((source as u32, parser));
            }
        }
    }

    /// Takes the effects produced so far, in the order they must be carried out.
    pub fn drain_effects(&mut self) -> std::vec::Drain<'_, Effect<K, V>> {
        self.effects.drain(..)
    }

    /// Gives back an output buffer the driver is done with, to avoid allocating.
    pub fn recycle_output(&mut self, mut buffer: OutputBatch) {
        const SPARE_BUFFERS_MAX: usize = 4;
        if self.keyed.spare_output.len() < SPARE_BUFFERS_MAX {
            buffer.lines.clear();
            buffer.ids.clear();
            self.keyed.spare_output.push(buffer);
        }
    }

    pub fn on_source_event(&mut self, event: SourceEvent) {
        if self.panicked.is_some() {
            return;
        }
        match event {
            SourceEvent::Chunk {
                source,
                index,
                first_line,
                data,
                epoch,
                ..
            } => {
                assert_eq!(
                    index % self.shards as u64,
                    self.index as u64,
                    "chunk dealt to the wrong shard"
                );
                let state = &mut self.sources[source as usize];
                assert!(
                    state.held.is_none() && state.total_chunks.is_none(),
                    "chunk not asked for"
                );
                state.held = Some((index, epoch, first_line, data));
                self.make_progress(source);
            }
            SourceEvent::Barrier {
                source,
                checkpoint,
                cut,
            } => {
                let state = &mut self.sources[source as usize];
                assert!(state.total_chunks.is_none(), "a barrier after the end");
                if checkpoint > self.checkpoints_taken {
                    state.barriers.push_back((checkpoint, cut));
                }
                self.make_progress(source);
            }
            SourceEvent::Failed { source, error } => {
                self.effects.push(Effect::SourceFailed { source, error })
            }
            SourceEvent::End { source, chunks } => {
                let state = &mut self.sources[source as usize];
                assert!(state.total_chunks.is_none(), "source {source} ended twice");
                assert!(state.next_apply <= chunks, "applied chunks past the end");
                state.total_chunks = Some(chunks);
                self.make_progress(source);
            }
        }
    }

    /// A batch from the channel `awaited_senders` named.
    pub fn on_batch(&mut self, batch: Batch<K, V>) {
        if self.panicked.is_some() {
            return;
        }
        let source = batch.source;
        let state = &mut self.sources[source as usize];
        assert_eq!(batch.chunk, state.next_apply, "batch out of turn");
        if batch.epoch > self.checkpoints_taken {
            // The chunk lies past a cut: it waits for the snapshot.
            assert!(state.waiting.is_none(), "a second batch past a cut");
            state.waiting = Some(batch);
            self.make_progress(source);
            return;
        }
        self.apply_batch(batch);
    }

    fn apply_batch(&mut self, batch: Batch<K, V>) {
        let source = batch.source;
        assert_eq!(
            batch.from as u64,
            batch.chunk % self.shards as u64,
            "batch from a shard that did not parse it"
        );
        let producer = source << 16 | batch.from;
        let count = batch.records.len() as u64;
        let mut admit = self.watermarks.admit_batch(producer, batch.first_seq, count);
        if !self.dedup_enabled {
            admit.skip = 0;
        }
        assert_eq!(
            admit.gap, 0,
            "channel {}→{} of source {source} lost records",
            batch.from, self.index
        );
        self.counters.duplicates_dropped += admit.skip;
        let unit = UnitSource {
            source,
            from: batch.from,
            chunk: batch.chunk,
            first_seq: batch.first_seq + admit.skip,
        };
        let applied = count - admit.skip.min(count);
        let began_us = self.timing_clock.now_us();
        let event_max_ms = batch.event_max_ms.get(admit.skip as usize..).unwrap_or_default();
        debug_assert!(batch.event_max_ms.is_empty() || batch.event_max_ms.len() as u64 == count);
        let (index, shards) = (self.index as usize, self.shards as usize);
        let records = batch.records.into_iter().skip(admit.skip as usize).map(|record| {
            let hash = record.key.route_hash();
            assert_eq!(
                shard_for(hash, shards),
                index,
                "a record reached a shard that does not own its key"
            );
            (record, hash)
        });
        self.apply_records(source, batch.epoch, records, event_max_ms);
        let chunk_max_ms = batch.last.then_some(batch.chunk_event_max_ms).flatten();
        let fired = self.event_time_advanced(source, batch.last, chunk_max_ms);
        self.timed(Step::Apply, applied, began_us);
        if self.panicked.is_some() {
            return;
        }
        self.end_unit(unit, applied + fired);
        if batch.last {
            self.sources[source as usize].next_apply += 1;
            self.make_progress(source);
        }
        self.flush_output_if_full();
    }

    /// Hands buffered output to the driver (called when the driver is about to
    /// wait, so latency stays low when input is slow).
    pub fn flush(&mut self) {
        if self.keyed.output.is_empty() {
            self.flush_audit();
        }
        if !self.keyed.output.is_empty() {
            let now_us = self.timing_clock.now_us();
            let since_us = self.keyed.output_since_us.take().unwrap_or(now_us);
            let lines = self.keyed.emitted - self.keyed.emitted_at_flush;
            self.keyed.emitted_at_flush = self.keyed.emitted;
            self.counters
                .timings
                .record(Step::Output, lines, now_us.saturating_sub(since_us));
            let fresh = self.keyed.spare_output.pop().unwrap_or_else(|| OutputBatch {
                lines: Vec::with_capacity(self.limits.output_batch_bytes + 1024),
                ids: Vec::new(),
            });
            let lines = std::mem::replace(&mut self.keyed.output, fresh.lines);
            // Audit records of the units behind these lines go first.
            self.flush_audit();
            let ids = match &mut self.keyed.output_ids {
                Some(ids) => std::mem::replace(ids, fresh.ids),
                None => fresh.ids,
            };
            debug_assert!(ids.is_empty() || ids.len() == memchr::memchr_iter(b'\n', &lines).count());
            self.effects.push(Effect::Output(OutputBatch { lines, ids }));
        }
    }

    /// Moves `source` on, then takes the checkpoints that are aligned and
    /// moves every source on after each.
    fn make_progress(&mut self, source: u32) {
        self.progress_source(source);
        // A checkpoint lets every source go on, not only the one that
        // completed its alignment.
        while self.take_checkpoints() {
            for other in 0..self.sources.len() as u32 {
                self.progress_source(other);
            }
        }
        self.flush_output_if_full();
        self.finish_if_done();
    }

    /// Applies `source`'s own chunks whose turn has come and parses a held
    /// chunk once the runahead bound allows, until neither can move.
    fn progress_source(&mut self, source: u32) {
        loop {
            let taken = self.checkpoints_taken;
            let state = &self.sources[source as usize];
            let ready = state.own_parsed.front().and_then(|parsed| {
                let turn = parsed.chunk == state.next_apply && parsed.epoch <= taken;
                turn.then_some((parsed.chunk, parsed.local.is_empty()))
            });
            if let Some((chunk, idle)) = ready {
                if idle || self.allows_own(source, chunk) {
                    let state = &mut self.sources[source as usize];
                    let parsed = state.own_parsed.pop_front().expect("front exists");
                    state.next_apply += 1;
                    let unit = UnitSource {
                        source,
                        from: self.index,
                        chunk: parsed.chunk,
                        first_seq: 0,
                    };
                    let applied = parsed.local.len() as u64;
                    let began_us = self.timing_clock.now_us();
                    self.apply_records(source, parsed.epoch, parsed.local, &parsed.local_event_max_ms);
                    let fired = self.event_time_advanced(source, true, parsed.event_max_ms);
                    self.timed(Step::Apply, applied, began_us);
                    self.end_unit(unit, applied + fired);
                    continue;
                }
            }
            let runahead = RUNAHEAD_CHUNKS_PER_SHARD * self.shards as u64;
            let state = &mut self.sources[source as usize];
            match &state.held {
                Some((chunk, _, _, _)) if *chunk < state.next_apply + runahead => {
                    let (chunk, epoch, first_line, data) = state.held.take().expect("held exists");
                    self.parse_chunk(source, chunk, epoch, first_line, &data);
                }
                _ => break,
            }
        }
    }

    /// Takes every checkpoint whose cuts all sources stand at; then lets
    /// what waited for them go on. Returns whether it took one.
    fn take_checkpoints(&mut self) -> bool {
        let mut took = false;
        loop {
            let next = self.checkpoints_taken + 1;
            let aligned = self
                .sources
                .iter()
                .all(|s| s.at_cut(self.checkpoints_taken) >= next);
            // Only a checkpoint some source has dealt (a shard sees every
            // barrier in its queue before the end of that source).
            let dealt = self
                .sources
                .iter()
                .any(|s| s.barriers.iter().any(|(k, _)| *k >= next) || (!s.is_done() && s.at_cut(0) >= next));
            if !aligned || !dealt {
                break;
            }
            self.take_checkpoint(next);
            took = true;
        }
        if took {
            self.release_after_checkpoint();
        }
        took
    }

    fn take_checkpoint(&mut self, checkpoint: u64) {
        self.flush();
        let mut cuts = Vec::with_capacity(self.sources.len());
        let mut ended = Vec::with_capacity(self.sources.len());
        for state in &mut self.sources {
            while state.barriers.front().is_some_and(|(k, _)| *k < checkpoint) {
                state.barriers.pop_front();
            }
            let cut = match state.barriers.front() {
                Some((k, _)) if *k == checkpoint => state.barriers.pop_front().map(|(_, cut)| cut),
                _ => None,
            };
            cuts.push(cut);
            ended.push(state.total_chunks.filter(|_| state.is_done()));
        }
        let delta = self.next_snapshot_is_delta();
        // Sized like the last whole snapshot: no copies while a large one grows.
        let mut encoded = Vec::with_capacity(if delta { 0 } else { self.whole_snapshot_bytes });
        self.encode_state(delta, &mut encoded);
        if !delta {
            self.whole_snapshot_bytes = encoded.len();
        }
        self.checkpoints_taken = checkpoint;
        self.deltas_since_whole = Some(match delta {
            true => self.deltas_since_whole.map_or(0, |n| n + 1),
            false => 0,
        });
        self.effects.push(Effect::Checkpoint(CheckpointPart {
            shard: self.index,
            checkpoint,
            cuts,
            ended,
            delta,
            state: encoded,
        }));
    }

    /// A delta needs a snapshot before it in this life (taken, or restored
    /// from), fewer than `snapshot_deltas_max` deltas since the last whole
    /// one, and few enough changed keys to be worth it.
    fn next_snapshot_is_delta(&self) -> bool {
        let Some(deltas) = self.deltas_since_whole else {
            return false;
        };
        let store = &self.keyed.store;
        let changed_percent = store.changed_len() as u128 * 100;
        let max_percent = self.limits.snapshot_delta_changed_max_percent as u128 * store.len() as u128;
        deltas < self.limits.snapshot_deltas_max && changed_percent <= max_percent
    }

    /// The snapshot: whether it is a delta, counters, each source's next
    /// chunk, then every key (or, in a delta, every key changed since the
    /// last snapshot) and its state, in an order that makes equal states
    /// encode to equal bytes (`KeyedStore::snapshot`).
    fn encode_state(&mut self, delta: bool, out: &mut Vec<u8>) {
        SNAPSHOT_VERSION.encode(out);
        delta.encode(out);
        // Chunks parsed ahead of the cut are parsed again after a recovery:
        // their counts are not part of the state at the cut.
        let ahead = self.sources.iter().flat_map(|s| &s.own_parsed);
        let (records_ahead, dead_ahead) =
            ahead.fold((0, 0), |(r, d), p| (r + p.records, d + p.dead_lettered));
        let c = &self.counters;
        let records_in = c.records_in - records_ahead;
        let dead_lettered = c.dead_lettered - dead_ahead;
        for n in [
            records_in,
            dead_lettered,
            c.duplicates_dropped,
            self.keyed.emitted,
            c.late,
        ] {
            n.encode(out);
        }
        (self.sources.len() as u32).encode(out);
        for state in &self.sources {
            state.next_apply.encode(out);
        }
        let entries = self.keyed.store.snapshot(!delta);
        (entries.len() as u64).encode(out);
        for (key, state) in entries {
            key.encode(out);
            state.encode(out);
        }
        self.keyed.timers.encode(out);
        self.keyed.event_timers.encode(out);
        if let Some(event) = &self.keyed.event {
            event.marks.encode(out);
        }
    }

    /// Starts this shard from its part of a checkpoint (a recovery): its
    /// state and counters as they were, each source at its cut. `chain` is
    /// the part as stored: a whole snapshot, then each delta over it, oldest
    /// first. Channels start anew, so sequence numbers and dedup watermarks
    /// do too.
    pub fn restore(&mut self, chain: &[CheckpointPart]) -> Result<(), RestoreError> {
        let shard = self.index;
        let chained = |why| Err(RestoreError::Chain { shard, why });
        let Some(last) = chain.last() else {
            return chained("no snapshot at all");
        };
        let mut store = KeyedStore::new();
        let mut header = None;
        for (link, part) in chain.iter().enumerate() {
            if part.shard != shard {
                return Err(RestoreError::WrongShard {
                    found: part.shard,
                    expected: shard,
                });
            }
            if part.delta != (link > 0) {
                return chained("a delta first, or a whole snapshot after the first");
            }
            if link > 0 && part.checkpoint <= chain[link - 1].checkpoint {
                return chained("checkpoints out of order");
            }
            header = Some(self.decode_snapshot(part, &mut store)?);
        }
        let SnapshotHeader {
            counts,
            next_apply,
            timers,
            event_timers,
            marks,
        } = header.expect("the chain is not empty");
        store.forget_changes();
        let [records_in, dead_lettered, duplicates_dropped, emitted, late] = counts;
        self.counters = ShardCounters {
            records_in,
            records_out: 0,
            dead_lettered,
            duplicates_dropped,
            late,
            // Timings are of this life's work only.
            timings: StepTimings::default(),
        };
        self.keyed.emitted = emitted;
        self.keyed.emitted_at_flush = emitted;
        self.keyed.store = store;
        self.keyed.timers = timers;
        self.keyed.event_timers = event_timers;
        if let (Some(event), Some(marks)) = (&mut self.keyed.event, marks) {
            event.marks = marks;
        }
        for (state, next) in self.sources.iter_mut().zip(next_apply) {
            state.next_apply = next;
        }
        self.checkpoints_taken = last.checkpoint;
        self.deltas_since_whole = Some(chain.len() as u32 - 1);
        self.finished = false;
        Ok(())
    }

    /// Applies one snapshot's keys to `store`; returns its counters, each
    /// source's next chunk and the timers.
    fn decode_snapshot(
        &self,
        part: &CheckpointPart,
        store: &mut KeyedStore<K, S>,
    ) -> Result<SnapshotHeader<K>, RestoreError> {
        let shard = self.index;
        let malformed = |error| RestoreError::Malformed { shard, error };
        let mut input = &part.state[..];
        let version = u32::decode(&mut input).map_err(malformed)?;
        if version != SNAPSHOT_VERSION {
            return Err(RestoreError::Version {
                shard,
                found: version,
            });
        }
        if bool::decode(&mut input).map_err(malformed)? != part.delta {
            return Err(RestoreError::Chain {
                shard,
                why: "a snapshot's kind differs from its part's",
            });
        }
        let mut counts = [0u64; 5];
        for n in &mut counts {
            *n = u64::decode(&mut input).map_err(malformed)?;
        }
        let sources = u32::decode(&mut input).map_err(malformed)? as usize;
        if sources != self.sources.len() {
            return Err(RestoreError::Sources {
                shard,
                found: sources,
                expected: self.sources.len(),
            });
        }
        let mut next_apply = Vec::with_capacity(sources);
        for _ in 0..sources {
            next_apply.push(u64::decode(&mut input).map_err(malformed)?);
        }
        let keys = u64::decode(&mut input).map_err(malformed)?;
        for _ in 0..keys {
            let key = K::decode(&mut input).map_err(malformed)?;
            let state = S::decode(&mut input).map_err(malformed)?;
            *store.state_mut(key.route_hash(), &key, Key::detach) = state;
        }
        let timers = Timers::decode(&mut input).map_err(malformed)?;
        let event_timers = Timers::decode(&mut input).map_err(malformed)?;
        let marks = match &self.keyed.event {
            Some(event) => {
                let mut marks = event.marks.clone();
                marks.decode_into(&mut input).map_err(malformed)?;
                Some(marks)
            }
            None => None,
        };
        if !input.is_empty() {
            return Err(malformed(WireError::Invalid("bytes after the timers")));
        }
        Ok(SnapshotHeader {
            counts,
            next_apply,
            timers,
            event_timers,
            marks,
        })
    }

    #[cfg(test)]
    pub(crate) fn describe(&self) -> String {
        let sources: Vec<String> =
            self.sources
                .iter()
                .map(|s| {
                    format!(
                    "next_apply {} total {:?} held {:?} own_parsed {:?} barriers {:?} waiting {:?} at_cut {}",
                    s.next_apply,
                    s.total_chunks,
                    s.held.as_ref().map(|h| (h.0, h.1)),
                    s.own_parsed.iter().map(|p| (p.chunk, p.epoch)).collect::<Vec<_>>(),
                    s.barriers.iter().map(|(k, c)| (*k, c.next_chunk)).collect::<Vec<_>>(),
                    s.waiting.as_ref().map(|b| (b.chunk, b.epoch)),
                    s.at_cut(self.checkpoints_taken)
                )
                })
                .collect();
        format!(
            "shard {} taken {}: {sources:?}",
            self.index, self.checkpoints_taken
        )
    }

    /// Checkpoints this shard took (or restored from).
    pub fn checkpoints_taken(&self) -> u64 {
        self.checkpoints_taken
    }

    /// After a snapshot: dead letters and a waiting batch of the chunks it
    /// let through go on.
    fn release_after_checkpoint(&mut self) {
        let taken = self.checkpoints_taken;
        for source in 0..self.sources.len() {
            let state = &mut self.sources[source];
            while state.deferred_letters.front().is_some_and(|(e, _)| *e <= taken) {
                let (_, letter) = state.deferred_letters.pop_front().expect("front exists");
                self.effects.push(Effect::DeadLetter(letter));
            }
            let state = &mut self.sources[source];
            if state.waiting.as_ref().is_some_and(|b| b.epoch <= taken) {
                let batch = state.waiting.take().expect("waiting exists");
                self.apply_batch(batch);
            }
        }
    }

    fn parse_chunk(&mut self, source: u32, chunk: u64, epoch: u64, first_line: u64, data: &ChunkData) {
        // At its turn, a chunk's local records apply at once; ahead of it (or
        // past a checkpoint not taken yet) they wait.
        let taken = self.checkpoints_taken;
        let state = &self.sources[source as usize];
        let in_turn = chunk == state.next_apply && epoch <= taken && self.allows_own(source, chunk);
        debug_assert!(!in_turn || state.own_parsed.is_empty());
        let counted_before = (self.counters.records_in, self.counters.dead_lettered);
        let began_us = self.timing_clock.now_us();
        let mut local = Vec::new();
        let mut local_event_max_ms = Vec::new();
        let mut event_max_ms = None;
        match data {
            ChunkData::Lines(lines) => {
                let into = (&mut local, &mut local_event_max_ms);
                event_max_ms = self.route_lines(source, (chunk, epoch), first_line, lines, into);
            }
            ChunkData::Oversized { prefix, size_bytes } => {
                self.counters.records_in += 1;
                self.counters.dead_lettered += 1;
                let reason = format!("line of {size_bytes} bytes is over the limit");
                let letter = DeadLetter::new(MsgId::new(source, first_line), reason.into(), prefix);
                self.dead_letter(source, epoch, letter);
            }
        }
        if let ChunkData::Oversized { .. } = data {
            let index = self.index;
            for to in (0..self.shards).filter(|to| *to != index) {
                self.send_batch(source, (chunk, epoch), to, true, (Vec::new(), Vec::new()), None);
            }
        }
        self.timed(Step::Parse, self.counters.records_in - counted_before.0, began_us);
        if in_turn {
            // Its own records apply at once, as one batch.
            let unit = UnitSource {
                source,
                from: self.index,
                chunk,
                first_seq: 0,
            };
            let applied = local.len() as u64;
            let began_us = self.timing_clock.now_us();
            self.apply_records(source, epoch, local.drain(..), &local_event_max_ms);
            let fired = self.event_time_advanced(source, true, event_max_ms);
            self.timed(Step::Apply, applied, began_us);
            self.end_unit(unit, applied + fired);
            // Its buffers go on to the next chunk.
            self.routes.local = std::mem::take(&mut local);
            local_event_max_ms.clear();
            self.routes.local_event_max_ms = std::mem::take(&mut local_event_max_ms);
        }
        let state = &mut self.sources[source as usize];
        if in_turn {
            state.next_apply += 1;
        } else {
            state.own_parsed.push_back(ParsedChunk {
                chunk,
                epoch,
                local,
                records: self.counters.records_in - counted_before.0,
                dead_lettered: self.counters.dead_lettered - counted_before.1,
                local_event_max_ms,
                event_max_ms,
            });
        }
    }

    /// A dead letter of a chunk of `epoch`: out now, or after the snapshots
    /// the chunk comes after.
    fn dead_letter(&mut self, source: u32, epoch: u64, letter: DeadLetter) {
        if epoch <= self.checkpoints_taken {
            self.effects.push(Effect::DeadLetter(letter));
        } else {
            self.sources[source as usize]
                .deferred_letters
                .push_back((epoch, letter));
        }
    }

    /// Parses a chunk's lines through the source's compiled chain: its
    /// rejected lines are dead-lettered, the records of this shard's keys
    /// land in `local`, and the others go out in batches of at most
    /// `batch_max` per receiver, the last one marked.
    fn route_lines(
        &mut self,
        source: u32,
        (chunk, epoch): (u64, u64),
        first_line: u64,
        data: &Bytes,
        (local, local_event_max_ms): (&mut Vec<Hashed<K, V>>, &mut Vec<u64>),
    ) -> Option<u64> {
        let chain = Arc::clone(&self.sources[source as usize].chain);
        let event_time = self.keyed.event.as_ref().map(|e| &e.specs[source as usize]);
        self.routes.start_chunk(event_time);
        let lines = ChunkLines {
            stream: source,
            first_line,
            data,
        };
        chain(lines, &mut self.routes);
        self.counters.records_in += self.routes.take_lines();
        let mut rejects = std::mem::take(&mut self.routes.rejects);
        for (id, reject, range) in rejects.drain(..) {
            self.counters.dead_lettered += 1;
            let letter = DeadLetter::new(id, reject.reason, &data.slice(range));
            self.dead_letter(source, epoch, letter);
        }
        self.routes.rejects = rejects;
        std::mem::swap(local, &mut self.routes.local);
        std::mem::swap(local_event_max_ms, &mut self.routes.local_event_max_ms);
        let chunk_event_max_ms = self.routes.chunk_event_max_ms;
        let batch_max = self.limits.batch_max;
        for to in 0..self.shards {
            if to == self.index {
                continue;
            }
            let mut records = std::mem::take(&mut self.routes.outgoing[to as usize]);
            // Empty without event time.
            let mut event_max_ms = std::mem::take(&mut self.routes.outgoing_event_max_ms[to as usize]);
            while records.len() >= batch_max {
                let rest = records.split_off(batch_max);
                let rest_max_ms = event_max_ms.split_off(batch_max.min(event_max_ms.len()));
                self.send_batch(source, (chunk, epoch), to, false, (records, event_max_ms), None);
                (records, event_max_ms) = (rest, rest_max_ms);
            }
            let last = (records, event_max_ms);
            self.send_batch(source, (chunk, epoch), to, true, last, chunk_event_max_ms);
        }
        chunk_event_max_ms
    }

    /// Sends a batch of `records` of a chunk to shard `to` (with event
    /// time, each record's running max and, on the `last` batch, the
    /// chunk's highest event time).
    fn send_batch(
        &mut self,
        source: u32,
        (chunk, epoch): (u64, u64),
        to: u32,
        last: bool,
        (records, event_max_ms): (Vec<Routed<K, V>>, Vec<u64>),
        chunk_event_max_ms: Option<u64>,
    ) {
        let next_seq = &mut self.sources[source as usize].next_seq[to as usize];
        let first_seq = *next_seq;
        *next_seq += records.len() as u64;
        if let Some(audit) = self.keyed.audit.as_mut().filter(|_| !records.is_empty()) {
            let unit = UnitSource {
                source,
                from: self.index,
                chunk,
                first_seq,
            };
            audit.sent(&self.keyed.clock, to, unit, records.len() as u64);
        }
        let batch = Batch {
            source,
            from: self.index,
            chunk,
            epoch,
            first_seq,
            last,
            records,
            event_max_ms,
            chunk_event_max_ms,
        };
        self.effects.push(Effect::Send { to, batch });
    }

    /// A unit of `applied` records of one source is done: its clock reading
    /// and notes go to the audit log.
    fn end_unit(&mut self, unit: UnitSource, applied: u64) {
        if let (Some(units), true) = (&mut self.schedule, applied > 0) {
            match units.pop_front() {
                Some(expected) if expected == unit => {}
                expected => {
                    self.schedule_divergence.get_or_insert_with(|| {
                        format!(
                            "shard {} applied {unit:?}; the recorded run applied {expected:?} next",
                            self.index
                        )
                    });
                }
            }
        }
        let keyed = &mut self.keyed;
        match keyed.audit.as_mut() {
            Some(audit) => {
                audit.applied(&mut keyed.clock, unit, applied);
                if audit.is_full() {
                    self.flush_audit();
                }
            }
            None => {
                // The next unit reads the clock afresh.
                let _ = keyed.clock.end_unit(applied);
            }
        }
    }

    /// Applies `records` of a chunk of `epoch` in its turn, as one batch
    /// (`KeyedPart::apply_records`). A record the step fails is
    /// dead-lettered and the rest go on; a panic stops the shard
    /// (`panicked`, the rest are dropped), with the audit records so far on
    /// their way. With event time, `event_max_ms` is parallel to `records`:
    /// each one's chunk's highest event time up to it; a record late by its
    /// watermark is dead-lettered (empty without event time).
    fn apply_records(
        &mut self,
        source: u32,
        epoch: u64,
        records: impl IntoIterator<Item = Hashed<K, V>>,
        event_max_ms: &[u64],
    ) {
        let mut records = records.into_iter();
        let mut event_max_ms = event_max_ms.iter().copied();
        while self.panicked.is_none() {
            // Without event time, a loop that has none of its code.
            let stopped = match self.keyed.event.is_some() {
                true => self
                    .keyed
                    .apply_records::<true>(source, &mut records, &mut event_max_ms),
                false => self
                    .keyed
                    .apply_records::<false>(source, &mut records, &mut event_max_ms),
            };
            match stopped {
                None => return,
                Some(Stopped::Failed(failure)) => self.step_failed(source, epoch, failure, "the keyed step"),
                Some(Stopped::Late(late)) => {
                    let LateRecord {
                        id,
                        at_ms,
                        watermark_ms,
                        lateness_ms,
                    } = late;
                    self.counters.late += 1;
                    self.counters.dead_lettered += 1;
                    let reason = format!(
                        "late: event time {at_ms} ms is behind the watermark {watermark_ms} ms by more than the allowed {lateness_ms} ms"
                    );
                    let letter = DeadLetter {
                        id,
                        reason: reason.into(),
                        raw: Bytes::new(),
                    };
                    self.dead_letter(source, epoch, letter);
                }
            }
        }
    }

    /// A unit of `source` was applied (`chunk_done`: it completed a chunk
    /// whose highest event time was `chunk_max_ms`): the watermark moves
    /// and the event-time timers it passed fire, as part of the unit.
    /// Returns how many fired.
    fn event_time_advanced(&mut self, source: u32, chunk_done: bool, chunk_max_ms: Option<u64>) -> u64 {
        let Some(event) = &mut self.keyed.event else {
            return 0;
        };
        if self.panicked.is_some() {
            return 0;
        }
        // Idleness is judged on the shard's own clock (not the step's
        // recorded one): it decides when, not what, for a single input.
        let now_us = event.marks.wants_clock().then(|| self.timing_clock.now_us());
        if chunk_done {
            event.marks.chunk_done(source, chunk_max_ms, now_us);
        }
        // Another input that ended holds nothing back. The unit's own
        // stream counts as ended only once the shard finishes: whether its
        // end is known by now depends on timing (and on the path its last
        // chunk took), and where its last timers fire must not.
        for (stream, state) in self.sources.iter().enumerate() {
            if stream as u32 != source && state.is_done() {
                event.marks.ended(stream as u32);
            }
        }
        event.marks.advance(now_us);
        let due_ms = event.marks.timers_due_ms();
        self.fire_event_timers(due_ms)
    }

    /// Fires the event-time timers due at or before `due_ms` (the
    /// watermark), in (time, key) order; returns how many fired.
    fn fire_event_timers(&mut self, due_ms: u64) -> u64 {
        let due = self.keyed.event_timers.take_due(due_ms);
        let fired = due.len() as u64;
        let watermark_ms = self.watermark_ms().unwrap_or(due_ms);
        for (at_ms, key, by) in due {
            let context = EventContext {
                event_time_ms: Some(at_ms),
                watermark_ms: Some(watermark_ms),
            };
            if let Some(failure) = self.keyed.fire_event(at_ms, key, by, context) {
                // Out at once: a unit that fires timers is past every
                // snapshot taken.
                self.step_failed(
                    by.producer,
                    self.checkpoints_taken,
                    failure,
                    "the event-time timer handler",
                );
                if self.panicked.is_some() {
                    break;
                }
            }
        }
        fired
    }

    /// All input is in: the watermark is +∞ and every event-time timer
    /// fires (with its outputs derived from the final state, like `on_end`'s,
    /// so not a unit of the audit log).
    fn fire_event_timers_at_end(&mut self) {
        let Some(event) = &mut self.keyed.event else {
            return;
        };
        for stream in 0..self.sources.len() as u32 {
            event.marks.ended(stream);
        }
        let watermark_ms = event.marks.advance(None);
        for _ in 0..EVENT_TIMER_ROUNDS_AT_END_MAX {
            if self.keyed.event_timers.is_empty() || self.panicked.is_some() {
                break;
            }
            self.fire_event_timers(watermark_ms);
        }
        if !self.keyed.event_timers.is_empty() {
            log::warn!(
                "shard {}: {} event-time timers still set after {EVENT_TIMER_ROUNDS_AT_END_MAX} rounds at the end of input are dropped (a handler sets timers again each time it runs)",
                self.index,
                self.keyed.event_timers.len()
            );
        }
        let _ = self.keyed.clock.end_unit(0);
    }

    /// A test-only fault switch: the simulator's planted event-time bugs.
    pub fn plant_event_time_bugs(&mut self, bugs: crate::event_time::EventTimeBugs) {
        if let Some(event) = &mut self.keyed.event {
            event.marks.plant_bugs(bugs);
        }
    }

    /// The shard's event-time watermark (ms), with event time.
    pub fn watermark_ms(&self) -> Option<u64> {
        self.keyed.event.as_ref().map(|e| e.marks.watermark_ms())
    }

    /// Event-time timers set and not yet fired.
    pub fn event_timers_pending(&self) -> usize {
        self.keyed.event_timers.len()
    }

    /// The step (`what`) failed a record or panicked: a failed record is
    /// dead-lettered, a panic stops the shard (`panicked`).
    fn step_failed(&mut self, source: u32, epoch: u64, failure: StepFailure, what: &str) {
        if failure.panicked {
            self.panicked = Some(format!(
                "{what} panicked on input {} (shard {}): {}",
                failure.id, self.index, failure.reason
            ));
            self.flush_audit();
            return;
        }
        self.counters.dead_lettered += 1;
        let letter = DeadLetter {
            id: failure.id,
            reason: format!("{what} failed it: {}", failure.reason).into(),
            raw: Bytes::new(),
        };
        self.dead_letter(source, epoch, letter);
    }

    /// Fires the keyed step's timers that are due, as one unit with one
    /// clock reading: due by the clock, or, in a replay, where the
    /// schedule has the recorded run fire them. Returns whether any fired.
    /// A finished shard fires none (pending timers do not outlive the input).
    pub fn fire_due_timers(&mut self) -> bool {
        if self.panicked.is_some() || self.finished {
            return false;
        }
        let Some(first_due) = self.keyed.timers.first_due_us() else {
            return false;
        };
        match self
            .schedule
            .as_ref()
            .map(|units| units.front().is_some_and(UnitSource::is_timers))
        {
            Some(false) => return false,
            Some(true) => {}
            None if first_due > self.keyed.clock.read_fresh() => return false,
            None => {}
        }
        let now_us = self.keyed.clock.now_us();
        let due = self.keyed.timers.take_due(now_us);
        let fired = due.len() as u64;
        if fired == 0 {
            // Only a replay gets here: the recorded run fired timers that
            // this one does not have due.
            let _ = self.keyed.clock.end_unit(0);
            self.schedule_divergence.get_or_insert_with(|| {
                format!(
                    "shard {} fired timers at {now_us} µs in the recorded run; none are due in the replay",
                    self.index
                )
            });
            return false;
        }
        for (at_us, key, by) in due {
            if let Some(failure) = self.keyed.fire(at_us, key, by) {
                // Out at once: a timer's unit is past every snapshot taken.
                self.step_failed(by.producer, self.checkpoints_taken, failure, "the timer handler");
                if self.panicked.is_some() {
                    return true;
                }
            }
        }
        self.end_unit(UnitSource::timers(self.index, fired), fired);
        self.stamp_output(self.timing_clock.now_us());
        self.flush_output_if_full();
        self.finish_if_done();
        true
    }

    /// How long until the keyed step's next timer is due by its clock (µs,
    /// 0 if one is due now), if it has one: a driver waiting for input
    /// waits no longer (a replay fires timers by its schedule instead).
    pub fn timer_wait_us(&self) -> Option<u64> {
        if self.finished || self.panicked.is_some() || self.schedule.is_some() {
            return None;
        }
        let due = self.keyed.timers.first_due_us()?;
        Some(due.saturating_sub(self.keyed.clock.read_fresh()))
    }

    /// Timers set and not yet fired.
    pub fn timers_pending(&self) -> usize {
        self.keyed.timers.len()
    }

    fn flush_audit(&mut self) {
        if let Some(records) = self.keyed.audit.as_mut().and_then(ShardAudit::take) {
            self.effects.push(Effect::Audit(records));
        }
    }

    fn finish_if_done(&mut self) {
        if self.finished || !self.sources.iter().all(SourceState::is_done) {
            return;
        }
        // A replay's input can end before the recorded run's last timer
        // units, which fired while the recorded run waited for its end:
        // those fire first (`fire_due_timers` finishes the shard after).
        if self.schedule_front().is_some_and(|unit| unit.is_timers()) {
            return;
        }
        self.fire_event_timers_at_end();
        self.keyed.run_on_end();
        self.flush();
        self.finished = true;
    }

    fn flush_output_if_full(&mut self) {
        if self.keyed.output.len() >= self.limits.output_batch_bytes {
            self.flush();
        }
    }

    /// Hands buffered output on if its oldest line has waited
    /// `output_linger_max_us` or longer (the driver asks once per step, so
    /// output under steady input waits no longer than that and a step).
    /// Returns whether it did.
    pub fn flush_if_lingering(&mut self) -> bool {
        let Some(since_us) = self.keyed.output_since_us else {
            return false;
        };
        let waited_us = self.timing_clock.now_us().saturating_sub(since_us);
        if waited_us < self.limits.output_linger_max_us {
            return false;
        }
        self.flush();
        true
    }

    /// A unit ended at `now_us`: if it left the first lines in an empty
    /// buffer, their linger starts now (a unit is at most a chunk's work,
    /// so this is late by at most one unit).
    fn stamp_output(&mut self, now_us: u64) {
        if self.keyed.output_since_us.is_none() && !self.keyed.output.is_empty() {
            self.keyed.output_since_us = Some(now_us);
        }
    }

    /// A unit of `step` of `records` records that began at `began_us`
    /// ended now; output it left starts its linger.
    fn timed(&mut self, step: Step, records: u64, began_us: u64) {
        let now_us = self.timing_clock.now_us();
        self.counters
            .timings
            .record(step, records, now_us.saturating_sub(began_us));
        self.stamp_output(now_us);
    }
}

/// An input the keyed step failed (`Output::fail`) or panicked on.
struct StepFailure {
    id: MsgId,
    panicked: bool,
    reason: Cow<'static, str>,
}

/// Why `KeyedPart::apply_records` stopped before the end of its records.
enum Stopped {
    /// The step failed a record or panicked on it.
    Failed(StepFailure),
    /// A record came behind its watermark (with event time): it never
    /// reached the step.
    Late(LateRecord),
}

/// A late record: its event time, the watermark it met and the allowed
/// lateness it was behind by more than.
struct LateRecord {
    id: MsgId,
    at_ms: u64,
    watermark_ms: u64,
    lateness_ms: u64,
}

impl<K: Key + Wire, V, S: State, O> KeyedPart<K, V, S, O> {
    /// Applies `records` (each with its key's `Key::route_hash`) in order,
    /// with the panic guard, the `Output` handle and the step's call set up
    /// once for the batch rather than per record (they cost about as much
    /// as a small step). Stops at the first record the step fails or panics
    /// on and returns it, its audit records written; the caller
    /// dead-letters it (and calls again for the rest) or stops the shard.
    /// `EVENT_TIME` (the step has event time) compiles the per-record
    /// watermark and late check in: each record takes its running max from
    /// `event_max_ms`, and a late record stops the batch too, unapplied.
    #[must_use = "a failed record is dead-lettered, a panic stops the shard"]
    fn apply_records<const EVENT_TIME: bool>(
        &mut self,
        source: u32,
        records: &mut impl Iterator<Item = Hashed<K, V>>,
        event_max_ms: &mut impl Iterator<Item = u64>,
    ) -> Option<Stopped> {
        let mut failure = None;
        let mut late = None;
        let with_timers = self.logic.on_timer.is_some();
        let with_event_timers = self.logic.on_event_timer.is_some();
        // The record being applied, kept out here so that a panic's audit
        // record can name its input and key.
        let mut current: Option<(K, MsgId, u64)> = None;
        let (store, timers, event_timers) = (&mut self.store, &mut self.timers, &mut self.event_timers);
        let mut event = self.event.as_mut();
        let mut output = Output {
            id: MsgId::default(),
            format: &*self.logic.format,
            buffer: &mut self.output,
            ids: self.output_ids.as_mut(),
            emitted: &mut self.emitted,
            clock: &mut self.clock,
            notes: self.audit.as_mut().map(|audit| &mut audit.notes),
            failure: &mut failure,
            timers: with_timers.then_some(&mut self.timers_set),
            event_timers: with_event_timers.then_some(&mut self.event_timers_set),
            event_time_ms: None,
            watermark_ms: None,
        };
        let step = &*self.logic.step;
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for (Routed { id, key, value }, hash) in records {
                if let Some(event) = event.as_deref_mut().filter(|_| EVENT_TIME) {
                    let chunk_max_ms = event_max_ms.next().expect("a running max per record");
                    let at_ms = event.specs[source as usize].event_time_ms(&value);
                    let watermark_ms = event.marks.record(source, chunk_max_ms);
                    let lateness_ms = event.allowed_lateness_ms;
                    if Watermarks::is_late(at_ms, watermark_ms, lateness_ms) {
                        late = Some(LateRecord {
                            id,
                            at_ms,
                            watermark_ms,
                            lateness_ms,
                        });
                        return;
                    }
                    output.event_time_ms = Some(at_ms);
                    output.watermark_ms = Some(watermark_ms);
                }
                let (key, _, _) = current.insert((key, id, hash));
                let mut unit_state;
                let state = match Self::state_in(store, hash, key) {
                    Some(state) => state,
                    None => {
                        unit_state = S::default();
                        &mut unit_state
                    }
                };
                output.id = id;
                step(state, key, Msg::new(id, value), &mut output);
                if output.failure.is_some() {
                    return;
                }
                // Only a step with a timer handler can have set timers.
                if let Some(set) = output.timers.as_deref_mut() {
                    for (at_us, by) in set.drain(..) {
                        timers.set(at_us, key, by);
                    }
                }
                // Only an event-time step can have an event-time timer handler.
                if let Some(set) = output.event_timers.as_deref_mut().filter(|_| EVENT_TIME) {
                    for (at_ms, by) in set.drain(..) {
                        event_timers.set(at_ms, key, by);
                    }
                }
            }
        }));
        let reason = match (stepped, failure) {
            (Ok(()), None) => return late.map(Stopped::Late),
            (Ok(()), Some(reason)) => Err(reason),
            (Err(payload), _) => Ok(payload),
        };
        let (key, id, hash) = current.expect("a record failed or panicked");
        Some(Stopped::Failed(self.failed(hash, &key, id, reason)))
    }

    /// The state of `key` (which hashes to `hash`), or `None` for a
    /// zero-sized state (a stateless keyed step, e.g. doubler): it needs no
    /// store, and skipping it keeps memory flat however many keys pass.
    fn state_in<'s>(store: &'s mut KeyedStore<K, S>, hash: u64, key: &K) -> Option<&'s mut S> {
        (std::mem::size_of::<S>() != 0).then(|| store.state_mut(hash, key, Key::detach))
    }

    /// The step failed input `id` (`Err` with its reason) or panicked on it
    /// (`Ok` with the payload): the timers it set are dropped, and the
    /// audit log gets the key and the state the step left.
    fn failed(
        &mut self,
        hash: u64,
        key: &K,
        id: MsgId,
        reason: Result<Box<dyn std::any::Any + Send>, Cow<'static, str>>,
    ) -> StepFailure {
        let (panicked, reason) = match reason {
            Ok(payload) => (true, crate::runtime::panic_message(&*payload).into()),
            Err(reason) => (false, reason),
        };
        self.timers_set.clear();
        self.event_timers_set.clear();
        if let Some(audit) = &mut self.audit {
            let (mut key_bytes, mut state_bytes) = (Vec::new(), Vec::new());
            key.encode(&mut key_bytes);
            match Self::state_in(&mut self.store, hash, key) {
                Some(state) => state.encode(&mut state_bytes),
                None => S::default().encode(&mut state_bytes),
            }
            audit.step_failed(&self.clock, id, panicked, &reason, key_bytes, state_bytes);
        }
        StepFailure { id, panicked, reason }
    }

    /// Runs `key`'s event-time timer due at `at_ms`, set by input `by`.
    fn fire_event(&mut self, at_ms: u64, key: K, by: MsgId, context: EventContext) -> Option<StepFailure> {
        self.guarded(key.route_hash(), &key, by, context, |logic, state, output| {
            let on_event_timer = logic
                .on_event_timer
                .as_deref()
                .expect("only a step with a handler sets event-time timers");
            on_event_timer(state, &key, at_ms, output)
        })
    }

    /// Runs `key`'s timer due at `at_us`, set by input `by`.
    fn fire(&mut self, at_us: u64, key: K, by: MsgId) -> Option<StepFailure> {
        self.guarded(
            key.route_hash(),
            &key,
            by,
            EventContext::default(),
            |logic, state, output| {
                let on_timer = logic
                    .on_timer
                    .as_deref()
                    .expect("only a step with a handler sets timers");
                on_timer(state, &key, at_us, output)
            },
        )
    }

    /// Runs the step's logic (`run`) on `key`'s state, for input `id`; a
    /// panic is caught here, at the step boundary. Timers it sets are
    /// kept only if it neither failed nor panicked.
    fn guarded(
        &mut self,
        hash: u64,
        key: &K,
        id: MsgId,
        context: EventContext,
        run: impl FnOnce(&KeyedLogic<K, V, S, O>, &mut S, &mut Output<'_, O>),
    ) -> Option<StepFailure> {
        let mut unit_state;
        let state = match Self::state_in(&mut self.store, hash, key) {
            Some(state) => state,
            None => {
                unit_state = S::default();
                &mut unit_state
            }
        };
        let mut failure = None;
        let with_timers = self.logic.on_timer.is_some();
        let with_event_timers = self.logic.on_event_timer.is_some();
        let mut output = Output {
            id,
            format: &*self.logic.format,
            buffer: &mut self.output,
            ids: self.output_ids.as_mut(),
            emitted: &mut self.emitted,
            clock: &mut self.clock,
            notes: self.audit.as_mut().map(|audit| &mut audit.notes),
            failure: &mut failure,
            timers: with_timers.then_some(&mut self.timers_set),
            event_timers: with_event_timers.then_some(&mut self.event_timers_set),
            event_time_ms: context.event_time_ms,
            watermark_ms: context.watermark_ms,
        };
        let logic = &self.logic;
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(logic, &mut *state, &mut output)
        }));
        let reason = match (stepped, failure) {
            (Ok(()), None) => {
                if with_timers {
                    for (at_us, by) in self.timers_set.drain(..) {
                        self.timers.set(at_us, key, by);
                    }
                }
                if with_event_timers {
                    for (at_ms, by) in self.event_timers_set.drain(..) {
                        self.event_timers.set(at_ms, key, by);
                    }
                }
                return None;
            }
            (Ok(()), Some(reason)) => Err(reason),
            (Err(payload), _) => Ok(payload),
        };
        Some(self.failed(hash, key, id, reason))
    }

    fn run_on_end(&mut self) {
        let Some(on_end) = self.logic.on_end.clone() else {
            return;
        };
        for (key, state) in self.store.sorted() {
            // The end's outputs derive from the final states alone: no
            // notes, and a clock reading here is not part of any unit.
            let mut failure = None;
            let mut output = Output {
                id: MsgId::default(),
                format: &*self.logic.format,
                buffer: &mut self.output,
                ids: self.output_ids.as_mut(),
                emitted: &mut self.emitted,
                clock: &mut self.clock,
                notes: None,
                failure: &mut failure,
                timers: None,
                event_timers: None,
                event_time_ms: None,
                watermark_ms: self.event.as_ref().map(|e| e.marks.watermark_ms()),
            };
            on_end(key, state, &mut output);
            debug_assert!(failure.is_none(), "on_end has no record to fail");
        }
        let _ = self.clock.end_unit(0);
    }
}

/// What a snapshot holds besides its keys: the shard's counters at the cut
/// (records in, dead-lettered, duplicates dropped, emitted, late), each
/// source's next chunk, the pending timers of both kinds and, with event
/// time, the watermarks.
struct SnapshotHeader<K: Key> {
    counts: [u64; 5],
    next_apply: Vec<u64>,
    timers: Timers<K>,
    event_timers: Timers<K>,
    /// With event time.
    marks: Option<Watermarks>,
}

/// The step's event time, if its inputs declare it (`Logic::event_times`).
fn event_part<K, V, S, O>(logic: &Logic<K, V, S, O>) -> Option<EventPart<V>> {
    let specs: Vec<EventTimeSpec<V>> = logic.event_times.iter().flatten().cloned().collect();
    if specs.is_empty() {
        return None;
    }
    assert_eq!(
        specs.len(),
        logic.chains.len(),
        "every input of an event-time step declares it"
    );
    let marks = Watermarks::new(
        specs.iter().map(EventTimeSpec::max_delay_ms),
        logic.idle_timeout_ms,
    );
    Some(EventPart {
        specs,
        marks,
        allowed_lateness_ms: logic.allowed_lateness_ms,
    })
}
