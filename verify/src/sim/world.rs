//! The simulated cluster: processes of production shard cores, links that
//! carry production frames between them, and a virtual-time event queue.

use super::{Finished, SimConfig, SimOutcome};
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use verity_core::cluster::codec::{
    decode_batch, decode_source_event, decode_upstream, encode_batch, encode_source_event, encode_upstream,
    Upstream, UpstreamRef,
};
use verity_core::cluster::{channel_id, Layout};
use verity_core::flow::Logic;
use verity_core::shard::{Batch, Effect, ShardCore, ShardLimits};
use verity_core::source::{ChunkData, Dealer, LineChunker, Piece, SourceEvent, LINE_SIZE_MAX_BYTES};
use verity_core::{Key, Rng, SplitMix64, Wire};
use verity_net::channel::{Admission, ChannelReceiver, ChannelSender};
use verity_net::frame::{encode_frame, peek_numbers, Frame, FrameDecoder, FrameKind, FrameWriter};
use verity_net::liveness::{Backoff, LivenessConfig, PeerLiveness};

const SECOND_US: u64 = 1_000_000;
const LATENCY_BASE_US: u64 = 50;
const LATENCY_JITTER_US: u64 = 100;
/// With the `delay` fault: extra latency of up to this much per frame.
const DELAY_MAX_US: u64 = 20_000;
/// Heartbeats and liveness checks happen this often.
const TICK_US: u64 = 50_000;
const PEER_TIMEOUT_US: u64 = 400_000;
const RECONNECT_BASE_MS: u64 = 5;
const RECONNECT_MAX_MS: u64 = 400;
/// Per-frame fault chances, per mille, while faults are on.
const FRAME_FAULT_PER_MILLE: u64 = 3;
/// All input must be processed this long after the faults heal.
const LIVENESS_BOUND_US: u64 = 30 * SECOND_US;
/// Input is released over this share of the faulty period, so traffic and
/// faults overlap.
const RELEASE_SHARE: u64 = 2;
const SOURCE: u32 = 0;

enum Event {
    /// The reader makes dealt event `index` available.
    Release {
        index: usize,
    },
    Deliver {
        from: u32,
        to: u32,
        epoch: u64,
        bytes: Bytes,
    },
    Tick,
    Cut {
        a: u32,
        b: u32,
    },
    Reconnect {
        a: u32,
        b: u32,
    },
    Partition {
        mask: u64,
        until_us: u64,
    },
    Pause {
        process: u32,
        until_us: u64,
    },
    Wake {
        process: u32,
    },
    ClockJump {
        process: u32,
        delta_us: i64,
    },
}

struct Scheduled {
    time_us: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time_us, self.seq) == (other.time_us, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.time_us, self.seq).cmp(&(other.time_us, other.seq))
    }
}

struct OutChan {
    from: u32,
    to: u32,
    sender: ChannelSender,
    /// Encoded frames the window has no room for yet.
    pending: VecDeque<Bytes>,
    next_seq: u64,
}

struct InChan {
    receiver: ChannelReceiver,
    queue: VecDeque<Frame>,
    consumed: u64,
    acked: u64,
}

/// The connection between processes `a < b`; direction 0 is a→b.
struct Link {
    up: bool,
    epoch: u64,
    backoff: Backoff,
    reconnect_pending: bool,
    last_arrival_us: [u64; 2],
    /// The receiving side's view of the sender, per direction.
    liveness: [PeerLiveness; 2],
    decoders: [FrameDecoder; 2],
}

struct Process {
    paused_until_us: u64,
    clock_offset_us: i64,
}

/// Sizes the simulator shrinks per seed so rare paths (a full window, tiny
/// batches, partial frames) run often: BUGGIFY, simulation only.
struct Buggify {
    window_frames: usize,
    batch_max: usize,
    chunk_bytes: usize,
}

struct World<'a, K, V, S, O> {
    config: &'a SimConfig,
    layout: Layout,
    rng: SplitMix64,
    now_us: u64,
    heal_us: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    shards: Vec<ShardCore<K, V, S, O>>,
    processes: Vec<Process>,
    links: BTreeMap<(u32, u32), Link>,
    partition: Option<(u64, u64)>,
    outs: BTreeMap<u32, OutChan>,
    ins: BTreeMap<u32, InChan>,
    local_chunks: Vec<VecDeque<SourceEvent>>,
    local_batches: BTreeMap<(u32, u32), VecDeque<Batch<K, V>>>,
    dealt: Vec<(u32, SourceEvent)>,
    buggify: Buggify,
    output: Vec<u8>,
    /// Remote shards that sent their `Finished`, and which have.
    remote_finished: u32,
    reported_finished: Vec<bool>,
    trace_hash: u64,
    trace: Vec<String>,
    line: String,
    events: u64,
    faults_injected: u64,
}

pub(super) fn simulate<K, V, S, O>(config: &SimConfig, logic: Logic<K, V, S, O>, input: &Bytes) -> Finished
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: Default + Send + 'static,
    O: 'static,
{
    // A violated assertion is a finding to report, not a crash: keep the
    // default hook's backtrace off the terminal while the seed runs. The hook
    // is process-wide, so seeds on several threads take turns.
    static HOOK_SWAP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = HOOK_SWAP.lock().unwrap_or_else(|p| p.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut world = World::new(config, &logic, input);
        let failure = world.run();
        world.finish(failure)
    }));
    std::panic::set_hook(hook);
    run.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        let failure = format!("internal invariant violated: {message}");
        Finished {
            sim: SimOutcome::failed_before_running(config.seed, failure),
            output: Vec::new(),
        }
    })
}

impl<'a, K, V, S, O> World<'a, K, V, S, O>
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: Default + Send + 'static,
    O: 'static,
{
    fn new(config: &'a SimConfig, logic: &Logic<K, V, S, O>, input: &Bytes) -> Self {
        let mut rng = SplitMix64::new(config.seed);
        let buggify = Buggify {
            window_frames: [1, 2, 4, 16][rng.below(4) as usize],
            batch_max: [1, 3, 16, 1024][rng.below(4) as usize],
            chunk_bytes: [64, 512, 4096, 65536][rng.below(4) as usize],
        };
        let layout =
            Layout::new(vec![config.workers; config.processes as usize], 0).expect("valid sim layout");
        let total = layout.total_shards();
        let limits = ShardLimits {
            batch_max: buggify.batch_max,
            ..ShardLimits::default()
        };
        let mut shards = ShardCore::build_range(logic, total, 0..total, limits);
        if config.bugs.no_dedup {
            shards.iter_mut().for_each(ShardCore::disable_dedup_for_testing);
        }
        let liveness = LivenessConfig {
            peer_timeout_ms: PEER_TIMEOUT_US / 1000,
            heartbeat_interval_ms: TICK_US / 1000,
        };
        let mut links = BTreeMap::new();
        for a in 0..config.processes {
            for b in a + 1..config.processes {
                let link = Link {
                    up: true,
                    epoch: 0,
                    backoff: Backoff::new(RECONNECT_BASE_MS, RECONNECT_MAX_MS),
                    reconnect_pending: false,
                    last_arrival_us: [0; 2],
                    liveness: [PeerLiveness::new(liveness, 0), PeerLiveness::new(liveness, 0)],
                    decoders: [FrameDecoder::new(), FrameDecoder::new()],
                };
                links.insert((a, b), link);
            }
        }
        let dealt = deal(input, total, buggify.chunk_bytes);
        let mut world = World {
            config,
            layout,
            rng,
            now_us: 0,
            heal_us: config.sim_seconds * SECOND_US,
            seq: 0,
            queue: BinaryHeap::new(),
            shards,
            processes: (0..config.processes)
                .map(|_| Process {
                    paused_until_us: 0,
                    clock_offset_us: 0,
                })
                .collect(),
            links,
            partition: None,
            outs: BTreeMap::new(),
            ins: BTreeMap::new(),
            local_chunks: (0..total).map(|_| VecDeque::new()).collect(),
            local_batches: BTreeMap::new(),
            dealt,
            buggify,
            output: Vec::new(),
            remote_finished: 0,
            reported_finished: vec![false; total as usize],
            trace_hash: 0xcbf2_9ce4_8422_2325,
            trace: Vec::new(),
            line: String::new(),
            events: 0,
            faults_injected: 0,
        };
        world.wire_channels();
        world.schedule_start();
        world
    }

    /// Every cross-process channel of the layout, as in the real runtime.
    fn wire_channels(&mut self) {
        let total = self.layout.total_shards();
        let window = self.buggify.window_frames;
        for to in 0..total {
            if !self.layout.is_local_to(0, to) {
                let process = self.layout.process_of(to);
                self.add_channel(channel_id::chunk(SOURCE, to), 0, process, window);
                self.add_channel(channel_id::output(to), process, 0, window);
            }
            for from in (0..total).filter(|from| *from != to) {
                let (p, q) = (self.layout.process_of(from), self.layout.process_of(to));
                if p != q {
                    self.add_channel(channel_id::batch(SOURCE, from, to), p, q, window);
                }
            }
        }
    }

    fn add_channel(&mut self, channel: u32, from: u32, to: u32, window: usize) {
        let sender = ChannelSender::new(channel, 64 << 20, window);
        self.outs.insert(
            channel,
            OutChan {
                from,
                to,
                sender,
                pending: VecDeque::new(),
                next_seq: 1,
            },
        );
        let receiver = ChannelReceiver::new(channel);
        self.ins.insert(
            channel,
            InChan {
                receiver,
                queue: VecDeque::new(),
                consumed: 0,
                acked: 0,
            },
        );
    }

    fn schedule(&mut self, at_us: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            time_us: at_us,
            seq: self.seq,
            event,
        }));
    }

    /// Input releases, the first tick, and every fault, all drawn from the seed.
    fn schedule_start(&mut self) {
        let spread_us = self.heal_us / RELEASE_SHARE;
        let count = self.dealt.len() as u64;
        for index in 0..self.dealt.len() {
            self.schedule(index as u64 * spread_us / count.max(1), Event::Release { index });
        }
        self.schedule(TICK_US, Event::Tick);
        let faults = self.config.faults;
        let processes = self.config.processes;
        if processes < 2 {
            return;
        }
        let seconds = self.config.sim_seconds.max(1);
        let mut plan = Vec::new();
        let pair = |rng: &mut SplitMix64| {
            let a = rng.below(processes as u64) as u32;
            let b = (a + 1 + rng.below(processes as u64 - 1) as u32) % processes;
            (a.min(b), a.max(b))
        };
        if faults.cut {
            for _ in 0..seconds / 2 + 1 {
                let (a, b) = pair(&mut self.rng);
                plan.push((self.rng.below(self.heal_us), Event::Cut { a, b }));
            }
        }
        for _ in 0..seconds / 10 + 1 {
            let at = self.rng.below(self.heal_us);
            let until_us = (at + 200_000 + self.rng.below(3 * SECOND_US)).min(self.heal_us);
            if faults.partition {
                let mask = 1 + self.rng.below((1u64 << processes) - 2);
                plan.push((at, Event::Partition { mask, until_us }));
            }
            if faults.pause {
                let process = self.rng.below(processes as u64) as u32;
                let at = self.rng.below(self.heal_us);
                let until_us = (at + 100_000 + self.rng.below(2 * SECOND_US)).min(self.heal_us);
                plan.push((at, Event::Pause { process, until_us }));
            }
            if faults.clock {
                let process = self.rng.below(processes as u64) as u32;
                let delta_us = self.rng.below(2 * PEER_TIMEOUT_US) as i64 - PEER_TIMEOUT_US as i64;
                plan.push((
                    self.rng.below(self.heal_us),
                    Event::ClockJump { process, delta_us },
                ));
            }
        }
        for (at, event) in plan {
            self.schedule(at, event);
        }
    }

    fn trace(&mut self, args: std::fmt::Arguments<'_>) {
        self.line.clear();
        let _ = write!(self.line, "{:>12} ", self.now_us);
        let _ = self.line.write_fmt(args);
        for byte in self.line.bytes() {
            self.trace_hash = (self.trace_hash ^ byte as u64).wrapping_mul(0x100_0000_01b3);
        }
        self.trace_hash = (self.trace_hash ^ b'\n' as u64).wrapping_mul(0x100_0000_01b3);
        if self.config.trace {
            self.trace.push(self.line.clone());
        }
    }

    /// Runs to the end; returns why the seed failed, if it did.
    fn run(&mut self) -> Option<String> {
        let deadline_us = self.heal_us + LIVENESS_BOUND_US;
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.time_us > deadline_us {
                break;
            }
            self.now_us = next.time_us;
            self.events += 1;
            self.handle(next.event);
            if self.is_done() {
                self.trace(format_args!("all shards finished and their output is in"));
                return None;
            }
        }
        let waiting: Vec<String> = self
            .shards
            .iter()
            .filter(|s| !s.is_finished())
            .map(|s| {
                let mut awaited = Vec::new();
                s.awaited_senders(&mut awaited);
                format!(
                    "shard {} awaits {:?} (wants chunk: {})",
                    s.index(),
                    awaited,
                    s.wants_chunk(SOURCE)
                )
            })
            .collect();
        Some(format!(
            "liveness: not finished {} s after the faults healed: {}",
            LIVENESS_BOUND_US / SECOND_US,
            waiting.join("; ")
        ))
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Release { index } => self.release(index),
            Event::Deliver {
                from,
                to,
                epoch,
                bytes,
            } => self.deliver(from, to, epoch, bytes),
            Event::Tick => self.tick(),
            Event::Cut { a, b } => {
                self.faults_injected += 1;
                self.cut(a, b, "fault: connection cut");
            }
            Event::Reconnect { a, b } => self.reconnect(a, b),
            Event::Partition { mask, until_us } => {
                self.faults_injected += 1;
                self.trace(format_args!("fault: partition {mask:#b} until {until_us}"));
                self.partition = Some((mask, until_us));
            }
            Event::Pause { process, until_us } => {
                self.faults_injected += 1;
                self.trace(format_args!("fault: pause process {process} until {until_us}"));
                self.processes[process as usize].paused_until_us = until_us;
                self.schedule(until_us, Event::Wake { process });
            }
            Event::Wake { process } => {
                self.trace(format_args!("process {process} resumes"));
                self.step_process(process);
            }
            Event::ClockJump { process, delta_us } => {
                self.faults_injected += 1;
                self.trace(format_args!(
                    "fault: clock of process {process} jumps {delta_us} us"
                ));
                self.processes[process as usize].clock_offset_us += delta_us;
            }
        }
    }

    fn paused(&self, process: u32) -> bool {
        self.processes[process as usize].paused_until_us > self.now_us
    }

    fn partitioned(&self, a: u32, b: u32) -> bool {
        match self.partition {
            Some((mask, until)) if until > self.now_us => (mask >> a & 1) != (mask >> b & 1),
            _ => false,
        }
    }

    fn local_clock_ms(&self, process: u32) -> u64 {
        let offset = self.processes[process as usize].clock_offset_us;
        (self.now_us as i64 + offset).max(0) as u64 / 1000
    }

    fn faults_on(&self) -> bool {
        self.now_us < self.heal_us
    }

    // ---- the reader ----------------------------------------------------

    fn release(&mut self, index: usize) {
        let (shard, event) = std::mem::replace(
            &mut self.dealt[index],
            (0, SourceEvent::End { source: 0, chunks: 0 }),
        );
        self.trace(format_args!("release event {index} for shard {shard}"));
        if self.layout.is_local_to(0, shard) {
            self.local_chunks[shard as usize].push_back(event);
            self.step_process(0);
        } else {
            let channel = channel_id::chunk(SOURCE, shard);
            self.queue_frame(channel, |frame| encode_source_event(&event, frame));
            self.pump(0);
        }
    }

    // ---- processes -----------------------------------------------------

    fn step_process(&mut self, process: u32) {
        if self.paused(process) {
            return;
        }
        let shards = self.layout.shards_of(process);
        let mut progressed = true;
        while progressed {
            progressed = false;
            for shard in shards.clone() {
                progressed |= self.feed_shard(shard);
            }
        }
        if process == 0 {
            self.relay_outputs();
        }
        self.pump(process);
    }

    /// Process 0 takes remote shards' output into the sink, as its relay
    /// threads do.
    fn relay_outputs(&mut self) {
        let remote: Vec<u32> = (0..self.layout.total_shards())
            .filter(|s| !self.layout.is_local_to(0, *s))
            .collect();
        for shard in remote {
            while let Some(frame) = self.take_frame(channel_id::output(shard)) {
                match decode_upstream(&frame).expect("frames of our own encoding decode") {
                    Upstream::Lines(lines) => self.output.extend_from_slice(&lines),
                    Upstream::Finished(_) => self.remote_finished += 1,
                    Upstream::DeadLetter(_) | Upstream::SourceFailed { .. } => {}
                }
            }
        }
    }

    /// Done as process 0 sees it: its shards finished, every remote shard
    /// said so, and (so) all their output is in.
    fn is_done(&self) -> bool {
        let local = self.layout.shards_of(0);
        let remote_shards = self.layout.total_shards() - local.len() as u32;
        self.remote_finished == remote_shards && local.clone().all(|s| self.shards[s as usize].is_finished())
    }

    /// Gives a shard what it awaits and carries out its effects.
    fn feed_shard(&mut self, shard: u32) -> bool {
        let mut progressed = false;
        let mut awaited = Vec::new();
        loop {
            self.shards[shard as usize].awaited_senders(&mut awaited);
            let Some(batch) = awaited.iter().find_map(|&(_, from)| self.take_batch(from, shard)) else {
                break;
            };
            self.shards[shard as usize].on_batch(batch);
            progressed = true;
        }
        if self.shards[shard as usize].wants_chunk(SOURCE) {
            if let Some(event) = self.take_chunk(shard) {
                self.shards[shard as usize].on_source_event(event);
                progressed = true;
            }
        }
        self.shards[shard as usize].flush();
        let effects: Vec<Effect<K, V>> = self.shards[shard as usize].drain_effects().collect();
        for effect in effects {
            match effect {
                Effect::Send { to, batch } => self.send_batch(shard, to, batch),
                Effect::Output(lines) => {
                    if self.layout.is_local_to(0, shard) {
                        self.output.extend_from_slice(&lines);
                    } else {
                        // Towards process 0's sink, over the network like any frame.
                        let message = UpstreamRef::Lines(&lines);
                        self.queue_frame(channel_id::output(shard), |frame| {
                            encode_upstream(&message, frame)
                        });
                    }
                    self.shards[shard as usize].recycle_output(lines);
                }
                Effect::DeadLetter(_) | Effect::SourceFailed { .. } => {}
            }
        }
        let core = &self.shards[shard as usize];
        if core.is_finished() && !self.layout.is_local_to(0, shard) && !self.reported_finished[shard as usize]
        {
            self.reported_finished[shard as usize] = true;
            let message = UpstreamRef::Finished(core.counters());
            self.queue_frame(channel_id::output(shard), |frame| {
                encode_upstream(&message, frame)
            });
        }
        progressed
    }

    fn take_batch(&mut self, from: u32, to: u32) -> Option<Batch<K, V>> {
        if self.layout.process_of(from) == self.layout.process_of(to) {
            return self.local_batches.get_mut(&(from, to))?.pop_front();
        }
        let frame = self.take_frame(channel_id::batch(SOURCE, from, to))?;
        Some(decode_batch(&frame, SOURCE, from).expect("frames of our own encoding decode"))
    }

    fn take_chunk(&mut self, shard: u32) -> Option<SourceEvent> {
        if self.layout.is_local_to(0, shard) {
            return self.local_chunks[shard as usize].pop_front();
        }
        let frame = self.take_frame(channel_id::chunk(SOURCE, shard))?;
        Some(decode_source_event(&frame, SOURCE).expect("frames of our own encoding decode"))
    }

    /// The consumer takes a frame; what it took is what gets acked.
    fn take_frame(&mut self, channel: u32) -> Option<Frame> {
        let input = self.ins.get_mut(&channel)?;
        let frame = input.queue.pop_front()?;
        let last = frame.header.first_seq + frame.header.record_count as u64 - 1;
        input.consumed = input.consumed.max(last);
        Some(frame)
    }

    fn send_batch(&mut self, from: u32, to: u32, batch: Batch<K, V>) {
        if self.layout.process_of(from) == self.layout.process_of(to) {
            self.local_batches.entry((from, to)).or_default().push_back(batch);
        } else {
            self.queue_frame(channel_id::batch(SOURCE, from, to), |frame| {
                encode_batch(&batch, frame)
            });
        }
    }

    /// Encodes one frame onto a channel's pending queue, numbered in order.
    fn queue_frame(&mut self, channel: u32, write: impl FnOnce(&mut FrameWriter<'_>)) {
        let out = self.outs.get_mut(&channel).expect("wired channel");
        let mut bytes = Vec::new();
        let mut frame = FrameWriter::begin(&mut bytes, FrameKind::Data, channel, out.next_seq);
        write(&mut frame);
        out.next_seq += frame.record_count() as u64;
        frame.finish();
        out.pending.push_back(Bytes::from(bytes));
    }

    /// Moves frames into windows and onto links; sends due acks.
    fn pump(&mut self, process: u32) {
        if self.paused(process) {
            return;
        }
        let channels: Vec<u32> = self
            .outs
            .iter()
            .filter(|(_, o)| o.from == process)
            .map(|(c, _)| *c)
            .collect();
        for channel in channels {
            loop {
                let out = self.outs.get_mut(&channel).expect("listed");
                let Some(bytes) = out.pending.front() else { break };
                if !out.sender.has_room(bytes.len()) {
                    break;
                }
                let bytes = out.pending.pop_front().expect("front");
                let (_, count) = peek_numbers(&bytes).expect("own frame");
                out.sender.record_sent(count, bytes.clone());
                let to = out.to;
                self.transmit(process, to, bytes);
            }
        }
        let acks: Vec<(u32, u64)> = self
            .ins
            .iter()
            .filter(|(c, i)| self.outs[c].to == process && i.consumed > i.acked)
            .map(|(c, i)| (*c, i.consumed))
            .collect();
        for (channel, consumed) in acks {
            let peer = self.outs[&channel].from;
            if self.link(process, peer).up {
                let mut ack = Vec::new();
                encode_frame(&mut ack, FrameKind::Ack, channel, consumed, &[]);
                self.ins.get_mut(&channel).expect("listed").acked = consumed;
                self.transmit(process, peer, Bytes::from(ack));
            }
        }
    }

    // ---- the network ---------------------------------------------------

    fn link(&mut self, a: u32, b: u32) -> &mut Link {
        self.links
            .get_mut(&(a.min(b), a.max(b)))
            .expect("every pair is linked")
    }

    fn direction(from: u32, to: u32) -> usize {
        usize::from(from > to)
    }

    /// Puts bytes on the wire from `from` to `to`, with the seed's faults.
    fn transmit(&mut self, from: u32, to: u32, bytes: Bytes) {
        let link = self.link(from, to);
        let (up, epoch) = (link.up, link.epoch);
        if !up {
            return; // kept in the retransmit buffer for the reconnect
        }
        let faults = self.config.faults;
        if self.partitioned(from, to) {
            // TCP keeps retransmitting underneath: the bytes arrive when the
            // partition heals, unless the connection is given up first.
            let heals = self.partition.map_or(self.now_us, |(_, until)| until);
            let dir = Self::direction(from, to);
            let link = self.link(from, to);
            let arrival = (heals + LATENCY_BASE_US).max(link.last_arrival_us[dir]);
            link.last_arrival_us[dir] = arrival;
            self.trace(format_args!(
                "partition holds {} bytes {from}->{to} until {arrival}",
                bytes.len()
            ));
            self.schedule(
                arrival,
                Event::Deliver {
                    from,
                    to,
                    epoch,
                    bytes,
                },
            );
            return;
        }
        if self.faults_on() && faults.drop && self.rng.chance(FRAME_FAULT_PER_MILLE, 1000) {
            // TCP loses nothing silently: losing bytes means the stream broke,
            // which the receiver notices (a gap, a bad frame, a reset).
            self.faults_injected += 1;
            self.trace(format_args!("fault: drop {} bytes {from}->{to}", bytes.len()));
            let at = self.now_us + LATENCY_BASE_US;
            self.schedule(
                at,
                Event::Cut {
                    a: from.min(to),
                    b: from.max(to),
                },
            );
            return;
        }
        let mut latency = LATENCY_BASE_US + self.rng.below(LATENCY_JITTER_US);
        if self.faults_on() && faults.delay {
            latency += self.rng.below(DELAY_MAX_US);
        }
        let reorder = self.faults_on() && faults.reorder && self.rng.chance(FRAME_FAULT_PER_MILLE, 1000);
        let now = self.now_us;
        let dir = Self::direction(from, to);
        let link = self.link(from, to);
        // A connection keeps order unless the `reorder` fault overtakes.
        let arrival = if reorder {
            now + 1
        } else {
            (now + latency).max(link.last_arrival_us[dir])
        };
        if !reorder {
            link.last_arrival_us[dir] = arrival;
        }
        if reorder {
            self.faults_injected += 1;
            self.trace(format_args!("fault: reorder {} bytes {from}->{to}", bytes.len()));
        }
        if self.faults_on() && faults.duplicate && self.rng.chance(FRAME_FAULT_PER_MILLE, 1000) {
            self.faults_injected += 1;
            self.trace(format_args!(
                "fault: duplicate {} bytes {from}->{to}",
                bytes.len()
            ));
            self.schedule(
                arrival + 1,
                Event::Deliver {
                    from,
                    to,
                    epoch,
                    bytes: bytes.clone(),
                },
            );
        }
        self.schedule(
            arrival,
            Event::Deliver {
                from,
                to,
                epoch,
                bytes,
            },
        );
    }

    fn deliver(&mut self, from: u32, to: u32, epoch: u64, bytes: Bytes) {
        let link = self.link(from, to);
        if !link.up || link.epoch != epoch {
            return; // sent on a connection that is gone
        }
        if self.paused(to) {
            let until = self.processes[to as usize].paused_until_us;
            self.schedule(
                until,
                Event::Deliver {
                    from,
                    to,
                    epoch,
                    bytes,
                },
            );
            return;
        }
        // BUGGIFY: bytes arrive in pieces, so partial frames are the rule.
        let mut frames = Vec::new();
        let mut rest = &bytes[..];
        let dir = Self::direction(from, to);
        while !rest.is_empty() {
            let piece = (1 + self.rng.below(rest.len() as u64) as usize).min(rest.len());
            let decoder = &mut self.link(from, to).decoders[dir];
            decoder.extend_from_slice(&rest[..piece]);
            rest = &rest[piece..];
            loop {
                match self.link(from, to).decoders[dir].next_frame() {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(e) => return self.cut(from, to, &format!("bad frame {from}->{to}: {e}")),
                }
            }
        }
        let clock = self.local_clock_ms(to);
        self.link(from, to).liveness[dir].on_heard(clock);
        for frame in frames {
            if let Err(why) = self.on_frame(from, to, frame) {
                return self.cut(from, to, &why);
            }
        }
        self.step_process(to);
        self.pump(from);
    }

    fn on_frame(&mut self, from: u32, to: u32, frame: Frame) -> Result<(), String> {
        let header = frame.header;
        match header.kind {
            FrameKind::Data => {
                let what = channel_id::describe(header.channel);
                self.trace(format_args!(
                    "process {from}->{to}: frame seq {} +{} of {what}",
                    header.first_seq, header.record_count
                ));
                let no_dedup = self.config.bugs.no_dedup;
                let input = self
                    .ins
                    .get_mut(&header.channel)
                    .ok_or("data on an unknown channel")?;
                match input.receiver.admit(header.first_seq, header.record_count) {
                    Admission::Apply { skip_records: 0 } => input.queue.push_back(frame),
                    Admission::Duplicate if no_dedup => input.queue.push_back(frame),
                    Admission::Duplicate => {}
                    Admission::Apply { skip_records } => {
                        return Err(format!("overlap of {skip_records} records"))
                    }
                    Admission::Gap { expected_seq } => {
                        return Err(format!("gap on {:#x}: expected {expected_seq}", header.channel))
                    }
                }
                Ok(())
            }
            FrameKind::Ack => {
                let what = channel_id::describe(header.channel);
                self.trace(format_args!(
                    "process {from}->{to}: ack through seq {} of {what}",
                    header.first_seq
                ));
                let out = self
                    .outs
                    .get_mut(&header.channel)
                    .ok_or("ack on an unknown channel")?;
                out.sender.on_ack(header.first_seq).map_err(|e| e.to_string())
            }
            FrameKind::Heartbeat => Ok(()),
            other => Err(format!("unexpected {other:?} frame")),
        }
    }

    fn cut(&mut self, a: u32, b: u32, why: &str) {
        let link = self.link(a, b);
        if !link.up {
            return;
        }
        link.up = false;
        link.epoch += 1;
        link.decoders = [FrameDecoder::new(), FrameDecoder::new()];
        self.trace(format_args!("cut {a}-{b}: {why}"));
        self.schedule_reconnect(a, b);
    }

    fn schedule_reconnect(&mut self, a: u32, b: u32) {
        let random = self.rng.next_u64();
        let link = self.link(a, b);
        if link.reconnect_pending {
            return;
        }
        link.reconnect_pending = true;
        let delay_us = link.backoff.next_delay_ms(random).max(1) * 1000;
        let at = self.now_us + delay_us;
        self.schedule(
            at,
            Event::Reconnect {
                a: a.min(b),
                b: a.max(b),
            },
        );
    }

    fn reconnect(&mut self, a: u32, b: u32) {
        self.link(a, b).reconnect_pending = false;
        if self.partitioned(a, b) || self.paused(a) || self.paused(b) {
            self.trace(format_args!("reconnect {a}-{b} fails"));
            return self.schedule_reconnect(a, b);
        }
        let (clock_a, clock_b) = (self.local_clock_ms(a), self.local_clock_ms(b));
        let link = self.link(a, b);
        link.up = true;
        link.backoff.reset();
        link.last_arrival_us = [0; 2];
        let config = LivenessConfig {
            peer_timeout_ms: PEER_TIMEOUT_US / 1000,
            heartbeat_interval_ms: TICK_US / 1000,
        };
        // Direction 0 (a→b) is judged by b's clock, direction 1 by a's.
        link.liveness = [
            PeerLiveness::new(config, clock_b),
            PeerLiveness::new(config, clock_a),
        ];
        self.trace(format_args!("reconnect {a}-{b}"));
        for (from, to) in [(a, b), (b, a)] {
            let resend: Vec<Bytes> = if self.config.bugs.no_retransmit {
                Vec::new()
            } else {
                self.outs
                    .values()
                    .filter(|o| o.from == from && o.to == to)
                    .flat_map(|o| o.sender.unacked().map(|(_, _, bytes)| bytes.clone()))
                    .collect()
            };
            for bytes in resend {
                self.transmit(from, to, bytes);
            }
            // What was consumed is acked again: the old acks may be lost.
            for (channel, input) in self.ins.iter_mut() {
                if self.outs[channel].to == to && self.outs[channel].from == from {
                    input.acked = 0;
                }
            }
        }
        self.step_process(a);
        self.step_process(b);
    }

    fn tick(&mut self) {
        let pairs: Vec<(u32, u32)> = self.links.keys().copied().collect();
        for (a, b) in pairs {
            if !self.link(a, b).up {
                continue;
            }
            for (from, to) in [(a, b), (b, a)] {
                if !self.paused(from) {
                    let mut heartbeat = Vec::new();
                    encode_frame(&mut heartbeat, FrameKind::Heartbeat, 0, 0, &[]);
                    self.transmit(from, to, Bytes::from(heartbeat));
                }
                let clock = self.local_clock_ms(to);
                let dir = Self::direction(from, to);
                if !self.paused(to) && self.link(a, b).liveness[dir].is_dead(clock) {
                    self.cut(
                        a,
                        b,
                        &format!(
                            "process {to} heard nothing from {from} for {} ms",
                            PEER_TIMEOUT_US / 1000
                        ),
                    );
                    break;
                }
            }
        }
        self.schedule(self.now_us + TICK_US, Event::Tick);
    }

    fn finish(self, failure: Option<String>) -> Finished {
        Finished {
            sim: SimOutcome {
                seed: self.config.seed,
                failure,
                trace_hash: self.trace_hash,
                trace: self.trace,
                events: self.events,
                sim_time_us: self.now_us,
                faults_injected: self.faults_injected,
                report: None,
            },
            output: self.output,
        }
    }
}

/// The reader's dealing of the whole input, in order: the production chunker
/// and dealer, with the seed's chunk size.
fn deal(input: &Bytes, shards: u32, chunk_bytes: usize) -> Vec<(u32, SourceEvent)> {
    let mut dealt = Vec::new();
    let mut send = |shard: usize, event| {
        dealt.push((shard as u32, event));
        true
    };
    let mut dealer = Dealer::new(SOURCE, shards as usize, &mut send);
    let mut chunker = LineChunker::new(&input[..], chunk_bytes, LINE_SIZE_MAX_BYTES);
    while let Ok(Some(piece)) = chunker.next_piece() {
        match piece {
            Piece::Lines(data) => dealer.deal(ChunkData::Lines(data)),
            Piece::Oversized { prefix, size_bytes } => {
                dealer.deal(ChunkData::Oversized { prefix, size_bytes })
            }
            Piece::Idle => continue,
        };
    }
    dealer.finish(None);
    dealt
}
