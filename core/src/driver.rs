//! The shard driver: the loop policy of one shard, sans-IO, shared by the
//! production shard thread (`runtime::shard_loop`, over crossbeam and network
//! queues) and the simulator (over simulated bounded queues).
//!
//! One `step` is one turn of the production loop:
//!
//! 1. fire the keyed step's timers that are due (one unit), then apply
//!    batches from the senders whose turn it is, up to `PEER_DRAIN_MAX`;
//! 2. take one dealt event per source, but only from sources with no parked
//!    sends (a full peer queue stops parsing that source, never receiving);
//! 3. if nothing came in and nothing is parked, flush buffered output (so an
//!    idle or slow stream's output does not wait for more input); otherwise
//!    flush it if its oldest line has waited `ShardLimits::output_linger_max_us`
//!    (so steady input just below saturation does not hold output back until
//!    the buffer is full);
//! 4. carry out the effects in order: sends go to their queue or, if it is
//!    full (or earlier sends of that source are parked), to the source's
//!    parked queue; output, dead letters and source failures go towards the
//!    sink, which may be full (then the step stops there and the next step
//!    resumes with the same effect, as a blocked production thread would);
//! 5. retry parked sends, each source's in order, stopping at the first full;
//! 6. once the core finished and nothing is parked, report `Finished`;
//!    if the keyed step panicked, panic with its reason once the effects
//!    before it are carried out.
//!
//! The driver never blocks and never waits: `Step::wait` says what it waits
//! for, and the caller waits (production `Select`s on the watched queues, no
//! longer than `timer_wait_us`; the simulator steps the shard again when one
//! of its queues changes, or on its tick when a timer is due).

use crate::key::Key;
use crate::line::DeadLetter;
use crate::shard::{Batch, CheckpointPart, Effect, ShardCore, ShardCounters};
use crate::sink::OutputBatch;
use crate::source::SourceEvent;
use crate::State;
use std::collections::VecDeque;

/// Batches taken from peers in one step before the shard looks at its
/// sources again, so a busy peer cannot starve parsing.
pub const PEER_DRAIN_MAX: usize = 64;

/// The outcome of a send that must not block.
#[derive(Debug)]
pub enum Sent<T> {
    Done,
    Full(T),
}

/// The outcome of handing an output buffer towards the sink.
#[derive(Debug)]
pub enum OutputSent {
    /// The sink took the buffer itself.
    Taken,
    /// The lines went on (copied, encoded or discarded); the buffer comes back
    /// for reuse.
    Returned(OutputBatch),
    /// No room towards the sink now; try again later.
    Full(OutputBatch),
}

/// The queues of one shard, as the driver sees them. Every call returns at
/// once: production ports may block only on the way to the sink (the output
/// thread waits on nothing, so that cannot deadlock), and may then never
/// return `Full` from those.
pub trait ShardPorts<K, V> {
    /// The next batch of `source` from shard `from`, if one is queued.
    fn take_batch(&mut self, source: u32, from: u32) -> Option<Batch<K, V>>;
    /// The next dealt event of `source` for this shard, if one is queued.
    fn take_source_event(&mut self, source: u32) -> Option<SourceEvent>;
    /// Queues `batch` for shard `to`, or gives it back if the queue is full.
    fn try_send_batch(&mut self, to: u32, batch: Batch<K, V>) -> Sent<Batch<K, V>>;
    fn try_output(&mut self, lines: OutputBatch) -> OutputSent;
    fn try_dead_letter(&mut self, letter: DeadLetter) -> Sent<DeadLetter>;
    fn try_source_failed(&mut self, source: u32, error: String) -> Sent<String>;
    /// This shard's part of a checkpoint, on the way to the sink after the
    /// output before it (the checkpoint's place in the output stream).
    fn try_checkpoint(&mut self, part: CheckpointPart) -> Sent<CheckpointPart>;
    /// Audit records for the audit writer (only from a shard with
    /// `enable_audit`); the production port waits while the writer's queue
    /// is full, as no audit record may be dropped.
    fn try_audit(&mut self, records: Vec<u8>) -> Sent<Vec<u8>>;
    /// Tells process 0 this shard is done (a local shard: nothing to send).
    /// False if there is no room yet.
    fn try_finished(&mut self, counters: ShardCounters) -> bool;
}

/// A queue a waiting shard wants to hear from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Batches of `source` from shard `from` (its turn).
    Batches { source: u32, from: u32 },
    /// Dealt events of `source`.
    Chunks { source: u32 },
}

/// What a step that made no progress waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Nothing: it progressed, step again at once.
    Nothing,
    /// Input on a `watched` queue; with parked sends also room in a peer
    /// queue, which has no signal (poll soon).
    Input { parked_sends: bool },
    /// Room on the way to the sink.
    Sink,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub progressed: bool,
    /// The shard is done and said so: stop driving it.
    pub finished: bool,
    pub wait: Wait,
    /// Sends that found their queue full in this step.
    pub parked_sends: u64,
}

/// Bugs a test plants in the shared driver to show the simulator finds them;
/// all off in production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverBugs {
    /// Never flush output when idle (it then waits for a full buffer, for a
    /// later busy step past the linger bound, or for the end).
    pub skip_idle_flush: bool,
    /// A parked send that is still blocked goes to the back of its queue.
    pub reorder_parked_retry: bool,
}

/// Per source: sends that found their queue full, in order.
type Parked<K, V> = Vec<VecDeque<(u32, Batch<K, V>)>>;

/// One shard's core and the loop state around it.
pub struct ShardDriver<K, V, S, O> {
    core: ShardCore<K, V, S, O>,
    sources: usize,
    parked: Parked<K, V>,
    /// Effects not yet carried out (the sink was full).
    pending: VecDeque<Effect<K, V>>,
    awaited: Vec<(u32, u32)>,
    finished_reported: bool,
    /// Batches taken per step (`PEER_DRAIN_MAX`; the simulator varies it).
    peer_drain_max: usize,
    bugs: DriverBugs,
}

impl<K, V, S, O> ShardDriver<K, V, S, O>
where
    K: Key + crate::wire::Wire,
    V: Send + 'static,
    S: State,
    O: 'static,
{
    pub fn new(core: ShardCore<K, V, S, O>, sources: usize) -> Self {
        ShardDriver {
            core,
            sources,
            parked: (0..sources).map(|_| VecDeque::new()).collect(),
            pending: VecDeque::new(),
            awaited: Vec::new(),
            finished_reported: false,
            peer_drain_max: PEER_DRAIN_MAX,
            bugs: DriverBugs::default(),
        }
    }

    /// Takes at most `batches` peer batches per step (BUGGIFY in the
    /// simulator: the policy must hold at any value).
    pub fn set_peer_drain_max(&mut self, batches: usize) {
        assert!(batches > 0, "a shard must be able to receive");
        self.peer_drain_max = batches;
    }

    /// Test-only: plants `bugs` (the simulator's planted-bug tests).
    pub fn plant_bugs_for_testing(&mut self, bugs: DriverBugs) {
        self.bugs = bugs;
    }

    pub fn core(&self) -> &ShardCore<K, V, S, O> {
        &self.core
    }

    /// The shard's index.
    pub fn index(&self) -> u32 {
        self.core.index()
    }

    pub fn counters(&self) -> ShardCounters {
        self.core.counters()
    }

    pub fn has_parked_sends(&self) -> bool {
        self.parked.iter().any(|queue| !queue.is_empty())
    }

    /// Batches parked per source (for liveness reports).
    pub fn parked_counts(&self) -> Vec<usize> {
        self.parked.iter().map(VecDeque::len).collect()
    }

    pub fn is_finished(&self) -> bool {
        self.finished_reported
    }

    /// One turn of the loop (see the module comment).
    pub fn step(&mut self, ports: &mut impl ShardPorts<K, V>) -> Step {
        assert!(!self.finished_reported, "a finished shard is not stepped");
        let mut progressed = false;
        let resumed = !self.pending.is_empty();
        if !resumed {
            progressed = self.take_input(ports);
            if !progressed && !self.has_parked_sends() {
                if !self.bugs.skip_idle_flush {
                    self.core.flush();
                }
            } else {
                self.core.flush_if_lingering();
            }
            self.pending.extend(self.core.drain_effects());
        }
        let mut parked_sends = 0;
        let carried = self.carry_out(ports, &mut parked_sends);
        // Carrying out a step's own effects is not progress (production counts
        // only input and retried sends); finishing a blocked step's is.
        progressed |= resumed && carried.moved;
        if carried.blocked {
            let wait = if progressed { Wait::Nothing } else { Wait::Sink };
            return Step {
                progressed,
                finished: false,
                wait,
                parked_sends,
            };
        }
        if let Some(reason) = self.core.panicked() {
            // Only now that the effects before it (the audit records naming
            // the input and its key's state) are out: the run fails as on
            // any panic in a shard thread.
            panic!("{reason}");
        }
        progressed |= self.retry_parked(ports);
        if self.core.is_finished() && !self.has_parked_sends() {
            if ports.try_finished(self.core.counters()) {
                self.finished_reported = true;
                return Step {
                    progressed: true,
                    finished: true,
                    wait: Wait::Nothing,
                    parked_sends,
                };
            }
            return Step {
                progressed,
                finished: false,
                wait: if progressed { Wait::Nothing } else { Wait::Sink },
                parked_sends,
            };
        }
        let wait = if progressed {
            Wait::Nothing
        } else {
            Wait::Input {
                parked_sends: self.has_parked_sends(),
            }
        };
        Step {
            progressed,
            finished: false,
            wait,
            parked_sends,
        }
    }

    /// How long a shard that waits for input may wait before its next
    /// timer is due (µs), if it has one.
    pub fn timer_wait_us(&self) -> Option<u64> {
        self.core.timer_wait_us()
    }

    /// The queues a shard that waits for input wants to hear from.
    pub fn watched(&mut self, into: &mut Vec<Watch>) {
        into.clear();
        self.core.awaited_senders(&mut self.awaited);
        into.extend(
            self.awaited
                .iter()
                .map(|&(source, from)| Watch::Batches { source, from }),
        );
        for source in 0..self.sources as u32 {
            if self.parked[source as usize].is_empty() && self.core.wants_chunk(source) {
                into.push(Watch::Chunks { source });
            }
        }
    }

    /// Steps 1 and 2: timers that are due, batches whose turn it is, then
    /// one event per source.
    fn take_input(&mut self, ports: &mut impl ShardPorts<K, V>) -> bool {
        let mut progressed = self.core.fire_due_timers();
        progressed |= self.receive_batches(ports);
        for source in 0..self.sources as u32 {
            if self.parked[source as usize].is_empty() && self.core.wants_chunk(source) {
                if let Some(event) = ports.take_source_event(source) {
                    self.core.on_source_event(event);
                    progressed = true;
                }
            }
        }
        progressed
    }

    /// Applies batches from the senders whose turn it is, as long as they have some.
    fn receive_batches(&mut self, ports: &mut impl ShardPorts<K, V>) -> bool {
        let mut received = 0;
        'turns: while received < self.peer_drain_max {
            self.core.awaited_senders(&mut self.awaited);
            for &(source, from) in self.awaited.iter() {
                if let Some(batch) = ports.take_batch(source, from) {
                    self.core.on_batch(batch);
                    received += 1;
                    continue 'turns;
                }
            }
            break;
        }
        received > 0
    }

    /// Step 4: the pending effects in order, until the sink is full.
    fn carry_out(&mut self, ports: &mut impl ShardPorts<K, V>, parked_sends: &mut u64) -> Carried {
        let mut moved = false;
        while let Some(effect) = self.pending.pop_front() {
            let refused = match effect {
                Effect::Send { to, batch } => {
                    let parked = &mut self.parked[batch.source as usize];
                    if !parked.is_empty() {
                        parked.push_back((to, batch));
                    } else if let Sent::Full(batch) = ports.try_send_batch(to, batch) {
                        *parked_sends += 1;
                        self.parked[batch.source as usize].push_back((to, batch));
                    }
                    None
                }
                Effect::Output(lines) => match ports.try_output(lines) {
                    OutputSent::Taken => None,
                    OutputSent::Returned(buffer) => {
                        self.core.recycle_output(buffer);
                        None
                    }
                    OutputSent::Full(lines) => Some(Effect::Output(lines)),
                },
                Effect::DeadLetter(letter) => match ports.try_dead_letter(letter) {
                    Sent::Done => None,
                    Sent::Full(letter) => Some(Effect::DeadLetter(letter)),
                },
                Effect::SourceFailed { source, error } => match ports.try_source_failed(source, error) {
                    Sent::Done => None,
                    Sent::Full(error) => Some(Effect::SourceFailed { source, error }),
                },
                Effect::Checkpoint(part) => match ports.try_checkpoint(part) {
                    Sent::Done => None,
                    Sent::Full(part) => Some(Effect::Checkpoint(part)),
                },
                Effect::Audit(records) => match ports.try_audit(records) {
                    Sent::Done => None,
                    Sent::Full(records) => Some(Effect::Audit(records)),
                },
            };
            if let Some(effect) = refused {
                self.pending.push_front(effect);
                return Carried { moved, blocked: true };
            }
            moved = true;
        }
        Carried {
            moved,
            blocked: false,
        }
    }

    /// Step 5: parked sends, each source's in order, up to the first full queue.
    fn retry_parked(&mut self, ports: &mut impl ShardPorts<K, V>) -> bool {
        let mut sent_any = false;
        for queue in self.parked.iter_mut() {
            while let Some((to, batch)) = queue.pop_front() {
                match ports.try_send_batch(to, batch) {
                    Sent::Done => sent_any = true,
                    Sent::Full(batch) if self.bugs.reorder_parked_retry => {
                        queue.push_back((to, batch));
                        break;
                    }
                    Sent::Full(batch) => {
                        queue.push_front((to, batch));
                        break;
                    }
                }
            }
        }
        sent_any
    }
}

/// How far `carry_out` got.
struct Carried {
    /// At least one effect was carried out.
    moved: bool,
    /// Stopped at an effect the sink had no room for.
    blocked: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Stream;
    use crate::line::{Line, Reject};
    use crate::shard::ShardLimits;
    use crate::source::{ChunkData, Dealer, SourceSpec};
    use crate::step_timing::Step;
    use bytes::Bytes;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    type Core = ShardCore<u64, u64, u64, (u64, u64)>;

    /// Per key, the running count of its records: a reordered or lost batch
    /// changes some line.
    fn cores(shards: u32, batch_max: usize) -> Vec<Core> {
        let flow = Stream::from_source(SourceSpec::memory("m", Bytes::new()))
            .try_map(|line: Line| {
                let text = line.text()?;
                text.parse::<u64>().map_err(|_| Reject::new("not a number"))
            })
            .key_by(|value: &u64| value % 7)
            .stateful(|count: &mut u64, key: &u64, msg, out| {
                *count += 1;
                out.emit((*key * 1_000_000 + msg.data, *count));
            })
            .sink(|(value, count), buf| buf.extend_from_slice(format!("{value} {count}").as_bytes()));
        let limits = ShardLimits {
            batch_max,
            // Deltas whenever allowed, however many of the 7 keys changed.
            snapshot_delta_changed_max_percent: 100,
            ..ShardLimits::default()
        };
        ShardCore::build_range(&flow.logic, shards, 0..shards, limits)
    }

    /// In-memory queues of a fixed depth between the shards of one run.
    struct Queues {
        depth: usize,
        /// Per (shard, source).
        chunks: BTreeMap<(u32, u32), VecDeque<SourceEvent>>,
        /// Per (source, sender, receiver).
        batches: BTreeMap<(u32, u32, u32), VecDeque<Batch<u64, u64>>>,
        /// Per shard, in the order it wrote them.
        output: Vec<Vec<u8>>,
        dead: Vec<Vec<DeadLetter>>,
        /// Per shard: its part of each checkpoint, with how much output and
        /// how many dead letters it had written before it.
        parts: Vec<Vec<(CheckpointPart, usize, usize)>>,
        finished: u32,
    }

    impl Queues {
        fn new(shards: u32, depth: usize) -> Self {
            Queues {
                depth,
                chunks: BTreeMap::new(),
                batches: BTreeMap::new(),
                output: vec![Vec::new(); shards as usize],
                dead: vec![Vec::new(); shards as usize],
                parts: vec![Vec::new(); shards as usize],
                finished: 0,
            }
        }

        fn deal(&mut self, shard: usize, event: SourceEvent) {
            let source = match &event {
                SourceEvent::Chunk { source, .. }
                | SourceEvent::Barrier { source, .. }
                | SourceEvent::End { source, .. }
                | SourceEvent::Failed { source, .. } => *source,
            };
            self.chunks
                .entry((shard as u32, source))
                .or_default()
                .push_back(event);
        }

        /// Drives every shard until all finished.
        fn run_to_end(&mut self, drivers: &mut [ShardDriver<u64, u64, u64, (u64, u64)>]) -> u64 {
            let mut parked = 0;
            for _round in 0..100_000 {
                if drivers.iter().all(ShardDriver::is_finished) {
                    return parked;
                }
                for (shard, driver) in drivers.iter_mut().enumerate() {
                    if !driver.is_finished() {
                        let step = driver.step(&mut Ports {
                            queues: self,
                            shard: shard as u32,
                        });
                        parked += step.parked_sends;
                    }
                }
            }
            panic!("the shards did not finish");
        }
    }

    fn sorted_lines(output: &[u8]) -> Vec<String> {
        let mut lines: Vec<String> = String::from_utf8(output.to_vec())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    /// 600 numbers, one a line, every 97th not a number; in chunks of
    /// whole lines of about 40 bytes.
    fn input_chunks() -> Vec<ChunkData> {
        let mut input = String::new();
        for value in 1..=600u64 {
            input.push_str(&if value % 97 == 0 {
                "x".to_string()
            } else {
                value.to_string()
            });
            input.push('\n');
        }
        let data = Bytes::from(input);
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let end = (at + 40).min(data.len());
            let end = memchr::memchr(b'\n', &data[end - 1..]).map_or(data.len(), |p| end + p);
            chunks.push(ChunkData::Lines(data.slice(at..end)));
            at = end;
        }
        chunks
    }

    struct Ports<'q> {
        queues: &'q mut Queues,
        shard: u32,
    }

    impl ShardPorts<u64, u64> for Ports<'_> {
        fn take_batch(&mut self, source: u32, from: u32) -> Option<Batch<u64, u64>> {
            self.queues
                .batches
                .get_mut(&(source, from, self.shard))?
                .pop_front()
        }
        fn take_source_event(&mut self, _source: u32) -> Option<SourceEvent> {
            self.queues.chunks.get_mut(&(self.shard, _source))?.pop_front()
        }
        fn try_send_batch(&mut self, to: u32, batch: Batch<u64, u64>) -> Sent<Batch<u64, u64>> {
            let queue = self
                .queues
                .batches
                .entry((batch.source, self.shard, to))
                .or_default();
            if queue.len() >= self.queues.depth {
                return Sent::Full(batch);
            }
            queue.push_back(batch);
            Sent::Done
        }
        fn try_output(&mut self, lines: OutputBatch) -> OutputSent {
            self.queues.output[self.shard as usize].extend_from_slice(&lines);
            OutputSent::Returned(lines)
        }
        fn try_dead_letter(&mut self, letter: DeadLetter) -> Sent<DeadLetter> {
            self.queues.dead[self.shard as usize].push(letter);
            Sent::Done
        }
        fn try_audit(&mut self, _records: Vec<u8>) -> Sent<Vec<u8>> {
            unreachable!("these tests keep no audit log")
        }

        fn try_checkpoint(&mut self, part: CheckpointPart) -> Sent<CheckpointPart> {
            let shard = self.shard as usize;
            let marks = (self.queues.output[shard].len(), self.queues.dead[shard].len());
            self.queues.parts[shard].push((part, marks.0, marks.1));
            Sent::Done
        }
        fn try_source_failed(&mut self, _source: u32, error: String) -> Sent<String> {
            panic!("no source fails here: {error}")
        }
        fn try_finished(&mut self, _counters: ShardCounters) -> bool {
            self.queues.finished += 1;
            true
        }
    }

    #[test]
    fn a_partial_output_buffer_is_handed_on_once_it_lingered_while_input_keeps_coming() {
        let clock = crate::env::ManualClock::default();
        let mut core = cores(1, 1024).pop().unwrap();
        core.set_clock(Arc::new(clock.clone()));
        let linger_us = ShardLimits::default().output_linger_max_us;
        let mut driver = ShardDriver::new(core, 1);
        let mut queues = Queues::new(1, 4);
        let chunks = input_chunks();
        let step_us = 100;
        let mut first_output_at_us = None;
        for (index, data) in chunks.into_iter().enumerate() {
            // One chunk per step: the shard's input never runs dry, and its
            // few lines never fill the 64 KiB buffer.
            queues.deal(
                0,
                SourceEvent::Chunk {
                    source: 0,
                    partition: 0,
                    index: index as u64,
                    first_line: index as u64 * 10 + 1,
                    position: crate::connector::Position::Text { bytes: 0, lines: 0 },
                    data,
                    epoch: 0,
                },
            );
            let step = driver.step(&mut Ports {
                queues: &mut queues,
                shard: 0,
            });
            assert!(step.progressed);
            if first_output_at_us.is_none() && !queues.output[0].is_empty() {
                first_output_at_us = Some(index as u64 * step_us);
            }
            clock.advance_us(step_us);
        }
        let at_us = first_output_at_us.expect("output handed on while input kept coming");
        assert!(
            (linger_us..=linger_us + step_us).contains(&at_us),
            "first output handed on after {at_us} µs; the linger bound is {linger_us} µs"
        );
        let output = driver.counters().timings.step(Step::Output).latency;
        assert!(output.count() > 1, "several buffers handed on: {output:?}");
        // No buffer waited a step longer than the bound.
        assert!(output.quantile_us(1.0) <= (linger_us + step_us).next_power_of_two());
    }

    /// Runs the input over `shards` shards to the end; returns the output
    /// lines (sorted), dead letters and parked sends.
    fn run(shards: u32, depth: usize, bugs: DriverBugs) -> (Vec<String>, usize, u64) {
        let mut queues = Queues::new(shards, depth);
        let mut send = |shard: usize, event| {
            queues.deal(shard, event);
            true
        };
        let mut dealer = Dealer::new(0, shards as usize, &mut send);
        for chunk in input_chunks() {
            dealer.deal(chunk);
        }
        dealer.finish(None);
        let mut drivers: Vec<_> = cores(shards, 2)
            .into_iter()
            .map(|c| ShardDriver::new(c, 1))
            .collect();
        drivers.iter_mut().for_each(|d| d.plant_bugs_for_testing(bugs));
        let parked = queues.run_to_end(&mut drivers);
        assert_eq!(queues.finished, shards);
        let output = queues.output.concat();
        let dead = queues.dead.iter().map(Vec::len).sum();
        (sorted_lines(&output), dead, parked)
    }

    /// A run with checkpoint barriers after the chunks `barriers` name,
    /// "crashed" after it ended: what a recovery from checkpoint `restore_from`
    /// ends with. The output and dead letters written before each shard's
    /// part survive (the committed prefix); fresh shards restored from the
    /// parts replay the input from the checkpoint's cut. With
    /// `resume_at_checkpoint` (a planted bug) the sources resume at another
    /// checkpoint's cut than the state's.
    fn recovered(
        shards: u32,
        depth: usize,
        barriers: &[usize],
        restore_from: u64,
        resume_at: u64,
    ) -> (Vec<String>, usize) {
        let chunks = input_chunks();
        assert!(
            barriers.iter().all(|b| *b < chunks.len()),
            "barriers within the input"
        );
        let mut queues = Queues::new(shards, depth);
        let mut send = |shard: usize, event| {
            queues.deal(shard, event);
            true
        };
        let mut dealer = Dealer::new(0, shards as usize, &mut send);
        for (index, chunk) in chunks.iter().enumerate() {
            for _ in barriers.iter().filter(|b| **b == index) {
                let next = dealer.epoch() + 1;
                dealer.barrier_to(next);
            }
            dealer.deal(chunk.clone());
        }
        dealer.finish(None);
        let mut drivers: Vec<_> = cores(shards, 2)
            .into_iter()
            .map(|c| ShardDriver::new(c, 1))
            .collect();
        queues.run_to_end(&mut drivers);
        // What survives the crash: each shard's output before its part.
        let mut committed = Vec::new();
        let mut dead = 0;
        let mut parts = Vec::new();
        let mut cuts = BTreeMap::new();
        for shard in 0..shards as usize {
            let taken = &queues.parts[shard];
            assert_eq!(taken.len(), barriers.len(), "shard {shard} took every checkpoint");
            for (part, _, _) in taken {
                if let Some(cut) = &part.cuts[0] {
                    cuts.insert(part.checkpoint, cut.clone());
                }
            }
            let upto = restore_from as usize - 1;
            let (_, output_len, dead_len) = &taken[upto];
            committed.extend_from_slice(&queues.output[shard][..*output_len]);
            dead += dead_len;
            // The part as the store gives it back: its chain, from the
            // whole snapshot at or before it.
            let whole = (0..=upto)
                .rev()
                .find(|i| !taken[*i].0.delta)
                .expect("a whole snapshot first");
            parts.push(
                taken[whole..=upto]
                    .iter()
                    .map(|(part, _, _)| part.clone())
                    .collect::<Vec<_>>(),
            );
        }
        // The recovery: restored shards, the source reopened at the cut.
        let mut queues = Queues::new(shards, depth);
        let cut = cuts[&resume_at].clone();
        let mut send = |shard: usize, event| {
            queues.deal(shard, event);
            true
        };
        let mut dealer = Dealer::new(0, shards as usize, &mut send);
        dealer.resume_at(restore_from, &cut);
        for chunk in &chunks[cut.next_chunk as usize..] {
            dealer.deal(chunk.clone());
        }
        dealer.finish(None);
        let mut drivers: Vec<_> = cores(shards, 2)
            .into_iter()
            .zip(&parts)
            .map(|(mut core, part)| {
                core.restore(part).unwrap();
                ShardDriver::new(core, 1)
            })
            .collect();
        queues.run_to_end(&mut drivers);
        let counted: u64 = drivers.iter().map(|d| d.counters().records_in).sum();
        let dead_counted: u64 = drivers.iter().map(|d| d.counters().dead_lettered).sum();
        assert_eq!(
            (counted, dead_counted),
            (600, 6),
            "the totals count each input record once"
        );
        committed.extend_from_slice(&queues.output.concat());
        dead += queues.dead.iter().map(Vec::len).sum::<usize>();
        (sorted_lines(&committed), dead)
    }

    #[test]
    fn a_recovery_from_any_checkpoint_ends_with_the_output_of_a_run_without_one() {
        let (expected, expected_dead, _) = run(1, 64, DriverBugs::default());
        for shards in [1, 2, 3] {
            for depth in [1, 64] {
                for barriers in [&[0][..], &[3], &[10, 11], &[7, 7, 30], &[5, 40, 50]] {
                    for restore_from in 1..=barriers.len() as u64 {
                        let outcome = recovered(shards, depth, barriers, restore_from, restore_from);
                        assert_eq!(
                            outcome,
                            (expected.clone(), expected_dead),
                            "{shards} shards, depth {depth}, barriers after chunks {barriers:?}, \
                             recovered from checkpoint {restore_from}"
                        );
                    }
                }
            }
        }
    }

    /// Two sources of numbers joined (`union`) on `value % 7`, each line out
    /// as the value.
    fn two_source_cores(shards: u32) -> Vec<ShardCore<u64, u64, u64, u64>> {
        let parse = |line: Line| {
            let text = line.text()?;
            text.parse::<u64>().map_err(|_| Reject::new("not a number"))
        };
        let a = Stream::from_source(SourceSpec::memory("a", Bytes::new()))
            .try_map(parse)
            .key_by(|value: &u64| value % 7);
        let b = Stream::from_source(SourceSpec::memory("b", Bytes::new()))
            .try_map(parse)
            .key_by(|value: &u64| value % 7);
        let flow = a
            .union(b)
            .stateful(|count: &mut u64, _: &u64, msg, out| {
                *count += 1;
                out.emit(msg.data);
            })
            .sink(|value, buf| buf.extend_from_slice(value.to_string().as_bytes()));
        let limits = ShardLimits {
            batch_max: 2,
            ..ShardLimits::default()
        };
        ShardCore::build_range(&flow.logic, shards, 0..shards, limits)
    }

    /// Two readers with bounded queues to the shards (a reader waits while
    /// its next event finds its queue full, as a blocked reader thread
    /// does), checkpoints requested every few turns, shards stepped in a
    /// seeded order: every run must finish, with every checkpoint taken by
    /// every shard, and every record out exactly once.
    #[test]
    fn two_sources_with_checkpoints_and_full_queues_never_stall() {
        use crate::env::Rng;
        use std::cell::RefCell;
        use std::rc::Rc;
        /// A reader's events not yet in their queue (it is blocked on the first).
        type Outbox = Rc<RefCell<VecDeque<(usize, SourceEvent)>>>;
        let chunks = input_chunks();
        let short: Vec<ChunkData> = chunks[..chunks.len() / 3].to_vec();
        for seed in 0..60u64 {
            let shards = 1 + (seed % 3) as u32;
            let depth = [1, 2, 64][(seed / 3 % 3) as usize];
            let chunk_depth = [1, 2, 16][(seed / 9 % 3) as usize];
            let every = [1, 3, 10][(seed / 27 % 3) as usize];
            // One source ends early in half the seeds.
            let inputs = [
                chunks.clone(),
                if seed % 2 == 0 {
                    short.clone()
                } else {
                    chunks.clone()
                },
            ];
            let mut rng = crate::env::SplitMix64::new(seed);
            let mut queues = Queues::new(shards, depth);
            let outboxes: Vec<Outbox> = (0..2).map(|_| Rc::default()).collect();
            let mut sends: Vec<_> = outboxes
                .iter()
                .map(|outbox| {
                    let outbox = Rc::clone(outbox);
                    move |shard: usize, event: SourceEvent| {
                        outbox.borrow_mut().push_back((shard, event));
                        true
                    }
                })
                .collect();
            let mut dealers: Vec<Option<Dealer<'_>>> = sends
                .iter_mut()
                .enumerate()
                .map(|(source, send)| Some(Dealer::new(source as u32, shards as usize, send)))
                .collect();
            let mut next_chunk = [0usize; 2];
            let mut drivers: Vec<_> = two_source_cores(shards)
                .into_iter()
                .map(|c| ShardDriver::new(c, 2))
                .collect();
            let mut requested = 0;
            let mut finished = false;
            for round in 0..200_000u64 {
                // As the output thread does: the next only once the last is
                // complete (every shard's part is in).
                let completed = queues.parts.iter().map(Vec::len).min().unwrap_or(0) as u64;
                if round % every == 0 && requested == completed {
                    requested += 1;
                }
                for source in 0..2 {
                    // The reader's blocked send, then its next step.
                    let mut outbox = outboxes[source].borrow_mut();
                    while let Some((shard, event)) = outbox.front() {
                        let key = (*shard as u32, source as u32);
                        if queues.chunks.get(&key).map_or(0, VecDeque::len) >= chunk_depth {
                            break;
                        }
                        let _ = event;
                        let (shard, event) = outbox.pop_front().expect("front exists");
                        queues.deal(shard, event);
                    }
                    if !outbox.is_empty() {
                        continue;
                    }
                    drop(outbox);
                    let Some(dealer) = dealers[source].as_mut() else {
                        continue;
                    };
                    if dealer.epoch() < requested {
                        dealer.barrier_to(dealer.epoch() + 1);
                    } else if next_chunk[source] < inputs[source].len() {
                        dealer.deal(inputs[source][next_chunk[source]].clone());
                        next_chunk[source] += 1;
                    } else {
                        dealers[source].take().expect("not ended").finish(None);
                    }
                }
                let first = rng.below(shards as u64) as usize;
                for offset in 0..shards as usize {
                    let shard = (first + offset) % shards as usize;
                    if !drivers[shard].is_finished() {
                        drivers[shard].step(&mut Ports {
                            queues: &mut queues,
                            shard: shard as u32,
                        });
                    }
                }
                if drivers.iter().all(ShardDriver::is_finished) {
                    finished = true;
                    break;
                }
            }
            if !finished {
                for d in &drivers {
                    eprintln!("{}", d.core.describe());
                }
                eprintln!(
                    "requested {requested}, queues {:?}",
                    queues
                        .chunks
                        .iter()
                        .map(|(k, q)| (*k, q.len()))
                        .collect::<Vec<_>>()
                );
            }
            assert!(finished, "seed {seed}: the shards stalled");
            let taken: Vec<usize> = queues.parts.iter().map(Vec::len).collect();
            assert!(
                taken.iter().all(|t| *t == taken[0]),
                "seed {seed}: every shard takes every checkpoint: {taken:?}"
            );
            let mut expected: Vec<String> = inputs
                .iter()
                .flat_map(|chunks| chunks.iter())
                .flat_map(|chunk| match chunk {
                    ChunkData::Lines(lines) => String::from_utf8(lines.to_vec())
                        .unwrap()
                        .lines()
                        .map(str::to_string)
                        .collect::<Vec<_>>(),
                    ChunkData::Oversized { .. } => Vec::new(),
                })
                .filter(|line| line.parse::<u64>().is_ok())
                .collect();
            expected.sort();
            assert_eq!(sorted_lines(&queues.output.concat()), expected, "seed {seed}");
        }
    }

    #[test]
    fn sources_resumed_at_another_checkpoints_cut_than_the_state_lose_or_repeat_records() {
        let (expected, _, _) = run(1, 64, DriverBugs::default());
        // A shard may notice (a batch out of its turn) or not: either way
        // the result is not the run's.
        for (restore_from, resume_at) in [(1, 2), (2, 1)] {
            let outcome = std::panic::catch_unwind(|| recovered(3, 1, &[5, 40], restore_from, resume_at));
            assert!(outcome.map_or(true, |(lines, _)| lines != expected));
        }
    }

    #[test]
    fn tiny_queues_park_sends_and_lose_nothing() {
        let (expected, dead, _) = run(1, 64, DriverBugs::default());
        assert_eq!(expected.len(), 600 - 6);
        assert_eq!(dead, 6);
        let (lines, dead, parked) = run(3, 1, DriverBugs::default());
        assert!(parked > 0, "depth 1 parks sends");
        assert_eq!((lines, dead), (expected, 6));
    }

    #[test]
    fn a_reordering_retry_breaks_per_key_order() {
        let bugs = DriverBugs {
            reorder_parked_retry: true,
            ..DriverBugs::default()
        };
        let (expected, _, _) = run(1, 64, DriverBugs::default());
        let outcome = std::panic::catch_unwind(|| run(3, 1, bugs));
        assert!(outcome.map_or(true, |(lines, _, _)| lines != expected));
    }
}
