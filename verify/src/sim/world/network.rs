//! The simulated network: each process runs the production peer protocol
//! (`verity_net::peer::PeerProtocol`: handshake, windows, acks, resend,
//! heartbeats, liveness, dial backoff), and simulated connections carry the
//! bytes it writes, with the seed's faults. Nothing here decides anything a
//! protocol decides: this file holds links, faults and scheduling only.
//!
//! A connection behaves like TCP: bytes arrive in order (unless the
//! `reorder`/`duplicate`/`corrupt` faults garble the stream, which the frame
//! checksum must catch), a lost byte breaks the connection (`drop` cuts it),
//! a partition holds bytes until it heals or the connection is given up, and
//! a close arrives after the bytes sent before it.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use verity_core::cluster::{ChannelClosed, RemoteIn, RemoteOut, CONTROL_QUEUE_DEPTH_FRAMES};
use verity_net::auth::ClusterSecret;
use verity_net::frame::{FrameDecoder, FRAME_SIZE_MAX_BYTES};
use verity_net::node::{InChannel, OutChannel, ProducerQueue, Wake};
use verity_net::peer::{
    Action, ConnId, InFlight, PeerEvent, PeerProtocol, ProtocolBugs, ProtocolConfig, ProtocolLimits,
    ProtocolStats, SeededEntropy, Unclaimed,
};

const CLUSTER_ID: &str = "sim";
const SECRET: &[u8] = b"the simulated cluster's secret";
const WRONG_SECRET: &[u8] = b"not the simulated cluster's secret";
/// Production's window bytes (`verity::cluster::WINDOW_BYTES`).
const WINDOW_BYTES: usize = 16 << 20;
/// A peer unreachable this long fails the seed, as it fails a production run.
pub(super) const PEER_LOST_MS: u64 = 25_000;
/// With `wrong-secret`: intrusions per 10 simulated seconds of faults.
const INTRUSIONS_PER_10_S: u64 = 2;
/// With late claims (BUGGIFY): a worker wires its channels up to this late.
const CLAIM_DELAY_MAX_US: u64 = 200_000;

/// Network events, scheduled on the world's queue.
pub(super) enum NetEvent {
    /// Bytes written on `conn` arrive at process `to`; once it read them,
    /// `sent` bytes leave the writer's send buffer (0 for bytes a fault
    /// added, or that were written past the buffer).
    Deliver {
        conn: ConnId,
        to: u32,
        bytes: Bytes,
        sent: usize,
    },
    /// A dial of `from` reaches `to`.
    Connect { from: u32, to: u32 },
    /// Process `process` sees `conn` end.
    Closed { conn: ConnId, process: u32 },
    /// The consumer of `channel` registers (a worker wiring its queues).
    Claim { channel: u32 },
    /// A process with the wrong secret connects to `target`.
    Intrude { target: u32 },
    /// `conn` lost bytes (a `corrupt` truncation): a TCP stream that lost
    /// bytes is broken, which both ends notice.
    Reset { conn: ConnId },
}

/// The simulator's `Wake`, one per channel end: it records that the end
/// woke its process's I/O side, which `pump` checks it did whenever it
/// queued or consumed frames (production's loop would sleep on them).
#[derive(Debug, Default)]
struct SimWake(AtomicBool);

impl Wake for SimWake {
    fn wake(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl SimWake {
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

struct OutChan {
    from: u32,
    to: u32,
    /// The production producer's end, as a shard or reader holds it.
    producer: RemoteOut,
    /// The I/O side's end of its queue: encoded frames the protocol has
    /// not taken yet.
    io: OutChannel,
    wake: Arc<SimWake>,
    /// Frames left in the queue when the I/O side last took from it.
    left_after_pump: usize,
}

impl OutChan {
    fn new(channel: u32, from: u32, to: u32, depth: usize) -> OutChan {
        let wake = Arc::new(SimWake::default());
        let (producer, io) = RemoteOut::pair(channel, to, depth, Arc::clone(&wake) as Arc<dyn Wake>);
        OutChan {
            from,
            to,
            producer,
            io,
            wake,
            left_after_pump: 0,
        }
    }
}

struct InChan {
    from: u32,
    to: u32,
    /// The production consumer's end, as a shard or relay holds it.
    consumer: RemoteIn,
    /// The I/O side's end: frames the protocol delivered, in order, for
    /// the consumer, and how far it consumed.
    io: InChannel,
    wake: Arc<SimWake>,
    /// The consumer's progress as the I/O side last passed it on.
    passed_through: u64,
    delivered_through: u64,
    /// The consumer registered with the protocol (`add_in`).
    claimed: bool,
}

impl InChan {
    fn new(channel: u32, from: u32, to: u32, window_frames: usize) -> InChan {
        let wake = Arc::new(SimWake::default());
        let (consumer, io) = RemoteIn::pair(channel, from, window_frames, Arc::clone(&wake) as Arc<dyn Wake>);
        InChan {
            from,
            to,
            consumer,
            io,
            wake,
            passed_through: 0,
            delivered_through: 0,
            claimed: false,
        }
    }
}

/// A connection between two processes; direction 0 is `ends[0]` → `ends[1]`.
struct SimConn {
    ends: [u32; 2],
    last_arrival_us: [u64; 2],
    /// Per direction: bytes written and not yet read by the other end (the
    /// kernel's socket buffers), at most `NetSizes::send_buffer_bytes`.
    unread: [usize; 2],
}

impl SimConn {
    fn direction(&self, from: u32) -> usize {
        usize::from(self.ends[0] != from)
    }
    fn other(&self, end: u32) -> u32 {
        self.ends[1 - self.direction(end)]
    }
}

/// Everything of the network the world holds.
pub(super) struct Net {
    /// One per process; the last one is the intruder (wrong secret).
    protocols: Vec<PeerProtocol<SeededEntropy>>,
    conns: BTreeMap<ConnId, SimConn>,
    next_conn: ConnId,
    outs: BTreeMap<u32, OutChan>,
    ins: BTreeMap<u32, InChan>,
    pub(super) partition: Option<(u64, u64)>,
    /// The last bytes put on any connection, for spliced-frame corruption.
    last_sent: Bytes,
    /// Why a protocol said the cluster failed, if one did.
    pub(super) failure: Option<String>,
    producer_depth_frames: usize,
    /// The seed's windows, limits and send buffers (BUGGIFY).
    sizes: NetSizes,
    /// The counters of protocols a restart replaced.
    retired: ProtocolStats,
    /// The failure detector's inputs as the simulator saw them, per
    /// (process, connection), on that process's clock: when its protocol
    /// last took a whole frame on it, and when it last had bytes to write on
    /// it; and the connections it logged as established. `check_suspicion`
    /// and `check_heartbeats` judge the protocol's liveness by them.
    heard_ms: BTreeMap<(u32, ConnId), u64>,
    wrote_ms: BTreeMap<(u32, ConnId), u64>,
    established: std::collections::BTreeSet<(u32, ConnId)>,
    /// Connections whose bytes a fault changed (corrupted, forged,
    /// duplicated or reordered); only on these may a frame be bad.
    tampered: std::collections::BTreeSet<ConnId>,
}

/// The network's sizes for one seed: production's, or (BUGGIFY) small ones,
/// so that full windows, a write backlog that pauses producers, frames for
/// unclaimed channels past their limits and a slow reader's full socket
/// buffer all happen.
#[derive(Debug, Clone, Copy)]
pub(super) struct NetSizes {
    pub(super) window: Window,
    pub(super) limits: ProtocolLimits,
    /// Bytes a connection takes per direction before the reader reads them;
    /// the writer's protocol keeps the rest as its backlog.
    pub(super) send_buffer_bytes: usize,
}

impl NetSizes {
    pub(super) fn draw(rng: &mut SplitMix64) -> NetSizes {
        let window = Window::draw(rng);
        let limits = if rng.chance(1, 2) {
            ProtocolLimits::default()
        } else {
            ProtocolLimits {
                write_backlog_soft_max_bytes: [0, 4 << 10, 64 << 10][rng.below(3) as usize],
                unclaimed_channels_max: [1, 2, 8][rng.below(3) as usize],
                unclaimed_frames_max: [1, 4, 64][rng.below(3) as usize],
                unclaimed_bytes_max: [1 << 10, 64 << 10][rng.below(2) as usize],
            }
        };
        let send_buffer_bytes = [usize::MAX, 256 << 10, 16 << 10, 2 << 10][rng.below(4) as usize];
        NetSizes {
            window,
            limits,
            send_buffer_bytes,
        }
    }
}

/// A sender's window: at most this many frames and (past the first) bytes
/// unacked.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) frames: usize,
    pub(super) bytes: usize,
}

impl Window {
    /// Production's windows, or (BUGGIFY) small ones, in frames and in bytes
    /// (so large frames meet the byte bound).
    pub(super) fn draw(rng: &mut SplitMix64) -> Window {
        Window {
            frames: [1, 2, 4, 16][rng.below(4) as usize],
            bytes: [WINDOW_BYTES, WINDOW_BYTES, 64 << 10, 8 << 10][rng.below(4) as usize],
        }
    }
}

fn protocol_config(config: &SimConfig, process_id: u32, peers: Vec<u32>, sizes: NetSizes) -> ProtocolConfig {
    let window = sizes.window;
    let bugs = config.bugs;
    let secret = ClusterSecret::new(SECRET.to_vec()).expect("long enough");
    ProtocolConfig {
        cluster_id: CLUSTER_ID.into(),
        process_id,
        peers,
        secret: std::sync::Arc::new(secret),
        liveness: LivenessConfig {
            peer_timeout_ms: PEER_TIMEOUT_US / 1000,
            heartbeat_interval_ms: TICK_US / 1000,
        },
        window_frames: window.frames,
        window_bytes: window.bytes,
        reconnect_base_ms: RECONNECT_BASE_MS,
        reconnect_max_ms: RECONNECT_MAX_MS,
        peer_lost_ms: PEER_LOST_MS,
        limits: sizes.limits,
        bugs: ProtocolBugs {
            admit_duplicate_as_new: bugs.protocol.admit_duplicate_as_new || bugs.no_dedup,
            ..bugs.protocol
        },
    }
}

/// The window rule, checked from outside on every channel after every pump:
/// a channel never has more than its window's frames unacked, and its window
/// takes one more frame exactly when it is empty, or has a free frame slot
/// and room in bytes for the largest frame it allows. So a window that lets
/// too much out (unbounded memory) and one that shrinks (a silent loss of
/// throughput) are both findings.
fn check_window(protocol: &PeerProtocol<SeededEntropy>, channel: u32, window: Window) -> Result<(), String> {
    let Window {
        frames: window_frames,
        bytes: window_bytes,
    } = window;
    let InFlight { frames, bytes } = protocol.channel_in_flight(channel);
    let described = || {
        format!(
            "{} ({frames} frames, {bytes} bytes unacked)",
            channel_id::describe(channel)
        )
    };
    if frames > window_frames {
        return Err(format!(
            "window overrun on {}: the window is {window_frames} frames",
            described()
        ));
    }
    let largest_frame = FRAME_SIZE_MAX_BYTES.min(window_bytes / 2);
    let room = frames == 0 || (frames < window_frames && bytes + largest_frame <= window_bytes);
    if protocol.window_has_room(channel) != room {
        return Err(format!(
            "window rule broken on {}: room is {room} by the rule, the protocol says otherwise",
            described()
        ));
    }
    Ok(())
}

/// The backlog rule, checked from outside on every `send_from`: a producer
/// is drained exactly when its connection's unwritten bytes are within the
/// soft maximum and it has a frame the window takes. So a protocol that
/// buffers without bound behind a slow peer, and one that stops draining a
/// producer it should, are both findings.
fn check_backlog(
    channel: u32,
    backlog: usize,
    soft_max: usize,
    may_take: bool,
    taken: usize,
) -> Result<(), String> {
    let should_take = may_take && backlog <= soft_max;
    if (taken > 0) != should_take {
        return Err(format!(
            "backlog rule broken on {}: {backlog} bytes unwritten (soft maximum {soft_max}), \
             a frame the window takes: {may_take}, frames taken: {taken}",
            channel_id::describe(channel)
        ));
    }
    Ok(())
}

/// What a process holds for channels without a consumer stays within its
/// limits, whatever peers send: beyond them it closes the connection and
/// forgets the frames (their sender resends them).
fn check_unclaimed(held: Unclaimed, limits: ProtocolLimits) -> Result<(), String> {
    if held.channels > limits.unclaimed_channels_max
        || held.frames > limits.unclaimed_frames_max
        || held.bytes > limits.unclaimed_bytes_max
    {
        return Err(format!(
            "unclaimed channels hold more than their limits: {held:?}, limits {limits:?}"
        ));
    }
    Ok(())
}

impl Net {
    pub(super) fn new(
        config: &SimConfig,
        rng: &mut SplitMix64,
        sizes: NetSizes,
        producer_depth_frames: usize,
    ) -> Net {
        let processes = config.processes;
        let mut protocols: Vec<_> = (0..processes)
            .map(|p| {
                let peers = (0..processes).filter(|q| *q != p).collect();
                let entropy = SeededEntropy::new(rng.next_u64());
                PeerProtocol::new(protocol_config(config, p, peers, sizes), entropy, 0)
            })
            .collect();
        // The intruder claims to be a real process, but has the wrong secret.
        let claims = processes.saturating_sub(1);
        let mut intruder = protocol_config(config, claims, (0..claims).collect(), sizes);
        intruder.secret =
            std::sync::Arc::new(ClusterSecret::new(WRONG_SECRET.to_vec()).expect("long enough"));
        protocols.push(PeerProtocol::new(intruder, SeededEntropy::new(rng.next_u64()), 0));
        Net {
            protocols,
            conns: BTreeMap::new(),
            next_conn: 1,
            outs: BTreeMap::new(),
            ins: BTreeMap::new(),
            partition: None,
            last_sent: Bytes::new(),
            failure: None,
            producer_depth_frames,
            sizes,
            retired: ProtocolStats::default(),
            heard_ms: BTreeMap::new(),
            wrote_ms: BTreeMap::new(),
            established: Default::default(),
            tampered: Default::default(),
        }
    }

    fn intruder(&self) -> u32 {
        self.protocols.len() as u32 - 1
    }

    /// Every channel that still holds frames somewhere (the producer's
    /// queue, the sender's window, the consumer's queue), for a liveness
    /// failure: where the run is stuck.
    pub(super) fn describe_busy_channels(&self) -> String {
        let mut busy = Vec::new();
        for (&channel, out) in &self.outs {
            let unacked = self.protocols[out.from as usize]
                .channel_in_flight(channel)
                .frames;
            let consumer = self.ins.get(&channel).map_or(0, |input| input.io.frames.len());
            let queued = out.io.frames.len();
            if queued + unacked + consumer > 0 {
                busy.push(format!(
                    "{} (process {} -> {}): {queued} queued by the producer, {unacked} unacked, \
                     {consumer} delivered and not consumed",
                    channel_id::describe(channel),
                    out.from,
                    out.to,
                ));
            }
        }
        if busy.is_empty() {
            return "no channel holds frames".into();
        }
        format!("channels holding frames: {}", busy.join("; "))
    }

    /// `process`'s protocol incarnation (a new one after a restart).
    pub(super) fn incarnation(&self, process: u32) -> u64 {
        self.protocols[process as usize].incarnation()
    }

    /// The protocols' counters, summed over the real processes.
    pub(super) fn protocol_stats(&self) -> ProtocolStats {
        let mut sum = ProtocolStats::default();
        let live = self.protocols[..self.protocols.len() - 1]
            .iter()
            .map(PeerProtocol::stats);
        for s in live.chain([self.retired]) {
            add_counted_stats(&mut sum, s);
        }
        sum
    }
}

/// Adds the protocol counters the seed's statistics report.
fn add_counted_stats(sum: &mut ProtocolStats, s: ProtocolStats) {
    sum.full_windows += s.full_windows;
    sum.frames_resent += s.frames_resent;
    sum.reconnects += s.reconnects;
    sum.handshakes_refused += s.handshakes_refused;
    sum.duplicates_dropped += s.duplicates_dropped;
    sum.unclaimed_refused += s.unclaimed_refused;
    sum.backlog_pauses += s.backlog_pauses;
}

impl<'a, K, V, S, O> World<'a, K, V, S, O>
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: verity_core::State,
    O: 'static,
{
    /// Every cross-process channel of the layout, as in the real runtime.
    pub(super) fn wire_channels(&mut self) {
        let total = self.layout.total_shards();
        let sources = self.readers.len() as u32;
        for to in 0..total {
            let process = self.layout.process_of(to);
            for source in 0..sources {
                let reader = self.readers[source as usize].process();
                if reader != process {
                    self.add_channel(channel_id::chunk(source, to), reader, process);
                }
            }
            if !self.layout.is_local_to(0, to) {
                self.add_channel(channel_id::output(to), process, 0);
            }
            for from in (0..total).filter(|from| *from != to) {
                let (p, q) = (self.layout.process_of(from), self.layout.process_of(to));
                if p != q {
                    for source in 0..sources {
                        self.add_channel(channel_id::batch(source, from, to), p, q);
                    }
                }
            }
        }
    }

    /// Production's control channels (`ControlLinks`) have their own depth.
    pub(super) fn add_control_channel(&mut self, channel: u32, from: u32, to: u32) {
        self.add_channel_of_depth(channel, from, to, CONTROL_QUEUE_DEPTH_FRAMES);
    }

    fn add_channel(&mut self, channel: u32, from: u32, to: u32) {
        self.add_channel_of_depth(channel, from, to, self.net.producer_depth_frames);
    }

    fn add_channel_of_depth(&mut self, channel: u32, from: u32, to: u32, depth: usize) {
        self.net.protocols[from as usize].add_out(channel, to);
        self.net
            .outs
            .insert(channel, OutChan::new(channel, from, to, depth));
        let input = InChan::new(channel, from, to, self.net.sizes.window.frames);
        self.net.ins.insert(channel, input);
        self.claim_in_time(channel);
    }

    /// The consumer of `channel` registers: at once, or (BUGGIFY: workers
    /// wire their channels after the job arrives, so frames can come before
    /// their consumer does) a little later.
    fn claim_in_time(&mut self, channel: u32) {
        let input = self.net.ins.get_mut(&channel).expect("wired channel");
        if input.to != 0 && self.buggify.late_claims {
            let at = self.now_us + self.rng.below(CLAIM_DELAY_MAX_US);
            self.schedule(at, Event::Net(NetEvent::Claim { channel }));
        } else {
            input.claimed = true;
            self.net.protocols[input.to as usize].add_in(channel, input.from);
        }
    }

    /// The `restart` fault: `process` starts again with a new protocol (a
    /// new seeded entropy, so a new incarnation) and nothing of its old
    /// channels: its producers number from 1 again, its consumers await seq
    /// 1. Returns the new incarnation.
    pub(super) fn restart_network(&mut self, process: u32) -> u64 {
        let old = &self.net.protocols[process as usize];
        let config = old.config().clone();
        let stats = old.stats();
        add_counted_stats(&mut self.net.retired, stats);
        let entropy = SeededEntropy::new(self.rng.next_u64());
        let clock = self.local_clock_ms(process);
        let protocol = PeerProtocol::new(config, entropy, clock);
        let incarnation = protocol.incarnation();
        self.net.protocols[process as usize] = protocol;
        let outs: Vec<(u32, u32)> = self
            .net
            .outs
            .iter()
            .filter(|(_, out)| out.from == process)
            .map(|(&channel, out)| (channel, out.to))
            .collect();
        for (channel, to) in outs {
            let out = self.net.outs.get_mut(&channel).expect("listed");
            let depth = out.io.frames.capacity().expect("a bounded queue");
            *out = OutChan::new(channel, process, to, depth);
            self.net.protocols[process as usize].add_out(channel, to);
        }
        let ins: Vec<u32> = self
            .net
            .ins
            .iter()
            .filter(|(_, input)| input.to == process)
            .map(|(&channel, _)| channel)
            .collect();
        for channel in ins {
            let input = self.net.ins.get_mut(&channel).expect("listed");
            *input = InChan::new(channel, input.from, process, self.net.sizes.window.frames);
            self.claim_in_time(channel);
        }
        incarnation
    }

    /// Whether both ends still have `conn`: the network carries it and
    /// `process`'s protocol has not closed it.
    pub(super) fn net_holds_conn(&self, process: u32, conn: ConnId) -> bool {
        self.net.conns.contains_key(&conn)
            && self.net.protocols[process as usize]
                .connections()
                .any(|c| c == conn)
    }

    /// The network's faults of the seed's plan that are not per frame.
    pub(super) fn schedule_network_faults(&mut self) {
        if !self.config.faults.wrong_secret || self.config.processes < 2 {
            return;
        }
        let count = self.config.sim_seconds * INTRUSIONS_PER_10_S / 10 + 1;
        for _ in 0..count {
            let at = self.rng.below(self.heal_us);
            let target = self.rng.below(self.config.processes as u64) as u32;
            self.schedule(at, Event::Net(NetEvent::Intrude { target }));
        }
    }

    /// The consumer of `channel` takes its next frame, if one was delivered
    /// (production's `RemoteIn`, which publishes the progress and wakes).
    pub(super) fn take_frame(&mut self, channel: u32) -> Option<Frame> {
        self.net.ins.get(&channel)?.consumer.try_recv().ok()
    }

    /// The producer of `channel` encodes one frame onto its queue if the
    /// queue has room (production's `RemoteOut::try_send`); false if full.
    /// Its queue to the network thread holds `producer_depth_frames`, or a
    /// control channel's depth (the window behind it is the protocol's).
    /// Frames `channel`'s producer queue takes before it is full.
    pub(super) fn free_frames(&self, channel: u32) -> usize {
        self.net
            .outs
            .get(&channel)
            .expect("wired channel")
            .producer
            .free_frames()
    }

    pub(super) fn try_queue_frame(&mut self, channel: u32, write: impl FnOnce(&mut FrameWriter<'_>)) -> bool {
        let out = self.net.outs.get_mut(&channel).expect("wired channel");
        match out.producer.try_send(write) {
            Ok(queued) => queued,
            Err(ChannelClosed) => unreachable!("the simulated I/O side holds every queue"),
        }
    }

    /// A blocking send of one frame, as a reader thread makes it
    /// (`RemoteOut::send`), where it would not block: false, and nothing
    /// sent, while `is_full` says the queue is full.
    pub(super) fn send_frame_unless_full(
        &mut self,
        channel: u32,
        write: impl FnOnce(&mut FrameWriter<'_>),
    ) -> bool {
        let out = self.net.outs.get_mut(&channel).expect("wired channel");
        if out.producer.is_full() {
            return false;
        }
        if out.io.frames.is_full() {
            // A send would block this one thread for good; production's
            // reader would block until the I/O thread took a frame.
            let what = channel_id::describe(channel);
            self.net
                .failure
                .get_or_insert(format!("the producer of {what} sees room in its full queue"));
            return false;
        }
        match out.producer.send(write) {
            Ok(()) => true,
            Err(ChannelClosed) => unreachable!("the simulated I/O side holds every queue"),
        }
    }

    /// Hands producers' frames and consumers' progress to a process's
    /// protocol, and puts what it writes on the wire.
    pub(super) fn pump(&mut self, process: u32) {
        if self.paused(process) {
            return;
        }
        let protocol = &mut self.net.protocols[process as usize];
        let failure = &mut self.net.failure;
        // Production's `pass_progress`: what each consumer took, through
        // `ConsumerProgress`.
        for (channel, input) in self.net.ins.iter_mut().filter(|(_, i)| i.to == process) {
            let through = input.io.progress.get();
            if !input.wake.take() && through != input.passed_through {
                let what = channel_id::describe(*channel);
                failure.get_or_insert(format!(
                    "process {process}: the consumer of {what} consumed through {through} without waking the I/O side"
                ));
            }
            input.passed_through = through;
            protocol.on_consumed(*channel, through);
        }
        let soft_max = self.net.sizes.limits.write_backlog_soft_max_bytes;
        for (channel, out) in self.net.outs.iter_mut().filter(|(_, o)| o.from == process) {
            if !out.wake.take() && out.io.frames.len() > out.left_after_pump {
                let what = channel_id::describe(*channel);
                failure.get_or_insert(format!(
                    "process {process}: the producer of {what} queued frames without waking the I/O side"
                ));
            }
            loop {
                let backlog = protocol.write_backlog_bytes(out.to);
                let may_take = !out.io.frames.is_empty() && protocol.window_has_room(*channel);
                let taken = protocol.send_from(*channel, &mut ProducerQueue(&out.io.frames));
                if let Err(broken) = check_backlog(*channel, backlog, soft_max, may_take, taken) {
                    failure.get_or_insert(format!("process {process}: {broken}"));
                }
                if taken == 0 {
                    break;
                }
            }
            out.left_after_pump = out.io.frames.len();
            if let Err(broken) = check_window(protocol, *channel, self.net.sizes.window) {
                failure.get_or_insert(format!("process {process}: {broken}"));
            }
        }
        protocol.flush_acks();
        self.carry_out(process);
    }

    /// Carries out a protocol's actions, then sends what it wrote.
    fn carry_out(&mut self, process: u32) {
        while let Some(action) = self.net.protocols[process as usize].next_action() {
            match action {
                Action::Dial { peer } => {
                    let at = self.now_us + LATENCY_BASE_US;
                    let event = NetEvent::Connect {
                        from: process,
                        to: peer,
                    };
                    self.schedule(at, Event::Net(event));
                }
                Action::Close {
                    conn,
                    reason,
                    last_words,
                } => {
                    self.check_suspicion(process, conn, &reason);
                    self.close(process, conn, &reason, last_words)
                }
                Action::Deliver { channel, frame } => self.on_delivered(process, channel, frame),
                Action::Failed { reason } => {
                    // As the binary does: the lifecycle hears of it and ends
                    // the run (a seed without the `fail` fault then fails).
                    self.trace(format_args!("process {process}: failed: {reason}"));
                    self.on_protocol_failed(process);
                    self.lifecycle_failed(process, reason);
                }
                Action::Log(event) => {
                    self.trace(format_args!("process {process}: {event}"));
                    if let PeerEvent::Connected { peer, conn } = event {
                        self.net.established.insert((process, conn));
                        self.on_handshake_logged(process, peer, conn);
                    }
                }
            }
        }
        self.flush(process);
    }

    fn on_delivered(&mut self, process: u32, channel: u32, frame: Frame) {
        let header = frame.header;
        let what = channel_id::describe(channel);
        self.trace(format_args!(
            "process {process}: frame seq {} +{} of {what}",
            header.first_seq, header.record_count
        ));
        let input = self
            .net
            .ins
            .get_mut(&channel)
            .expect("only wired channels are claimed");
        assert_eq!(
            input.to, process,
            "a frame of {what} delivered to the wrong process"
        );
        let last = header.last_seq();
        input.delivered_through = input.delivered_through.max(last);
        let overflow = input.io.frames.try_send(frame).is_err();
        let from = input.from;
        if overflow {
            // Production's consumer queue holds a window, and its I/O thread
            // fails the run when a frame does not fit: a frame admitted twice
            // or past the window.
            self.net.failure.get_or_insert(format!(
                "process {process}: {what} delivered more than its window unconsumed: its consumer queue overflows"
            ));
        }
        self.check_new_life_frame(process, channel, from, header.first_seq);
    }

    /// Puts what a process's protocol wrote on its connections, as far as
    /// their send buffers take it (production's non-blocking write: the
    /// rest stays in the protocol's backlog until the reader reads).
    fn flush(&mut self, process: u32) {
        let conns: Vec<ConnId> = self.net.protocols[process as usize].connections().collect();
        let clock = self.local_clock_ms(process);
        for conn in conns {
            let protocol = &mut self.net.protocols[process as usize];
            let output = protocol.output(conn);
            if output.is_empty() {
                continue;
            }
            // Clocks jump back: the latest time counts, as in the protocol.
            let wrote = self.net.wrote_ms.entry((process, conn)).or_insert(clock);
            *wrote = (*wrote).max(clock);
            let Some(sim) = self.net.conns.get_mut(&conn) else {
                // The socket is gone: what it was given is lost, and the
                // protocol resends it after the reconnect.
                let all = output.len();
                protocol.advance_output(conn, all);
                continue;
            };
            let dir = sim.direction(process);
            let room = self.net.sizes.send_buffer_bytes.saturating_sub(sim.unread[dir]);
            let written = output.len().min(room);
            if written == 0 {
                self.stats.bump("full_send_buffers");
                continue;
            }
            let bytes = Bytes::copy_from_slice(&output[..written]);
            protocol.advance_output(conn, written);
            sim.unread[dir] += written;
            self.transmit(conn, process, bytes, written);
        }
    }

    fn close(&mut self, process: u32, conn: ConnId, reason: &str, last_words: Vec<u8>) {
        self.trace(format_args!(
            "process {process}: closes connection {conn}: {reason}"
        ));
        if !last_words.is_empty() {
            self.transmit(conn, process, Bytes::from(last_words), 0);
        }
        let Some(sim) = self.net.conns.get(&conn) else {
            return;
        };
        // The close arrives after the bytes sent before it, as a FIN does.
        let other = sim.other(process);
        let dir = sim.direction(process);
        let arrival = (self.now_us + LATENCY_BASE_US).max(sim.last_arrival_us[dir]);
        let arrival = match self.net.partition {
            Some((_, until)) if self.partitioned(process, other) => arrival.max(until + LATENCY_BASE_US),
            _ => arrival,
        };
        self.schedule(arrival, Event::Net(NetEvent::Closed { conn, process: other }));
    }

    pub(super) fn handle_net(&mut self, event: NetEvent) {
        match event {
            NetEvent::Deliver {
                conn,
                to,
                bytes,
                sent,
            } => self.deliver(conn, to, bytes, sent),
            NetEvent::Connect { from, to } => self.connect(from, to),
            NetEvent::Closed { conn, process } => {
                if self.dead(process) {
                    return;
                }
                if self.paused(process) {
                    let until = self.processes[process as usize].paused_until_us;
                    return self.schedule(until, Event::Net(NetEvent::Closed { conn, process }));
                }
                self.net.conns.remove(&conn);
                let clock = self.local_clock_ms(process);
                self.net.protocols[process as usize].on_closed(conn, "closed by the peer", clock);
                self.carry_out(process);
            }
            NetEvent::Claim { channel } => {
                let input = self.net.ins.get_mut(&channel).expect("wired channel");
                if std::mem::replace(&mut input.claimed, true) {
                    // A restarted process's new life claimed it already.
                    return;
                }
                let (from, to) = (input.from, input.to);
                self.trace(format_args!(
                    "process {to} claims {}",
                    channel_id::describe(channel)
                ));
                let queued = self.net.ins[&channel].io.frames.len();
                self.net.protocols[to as usize].add_in(channel, from);
                self.carry_out(to);
                // What the protocol held for the channel comes out now: never
                // more than its limit (counted here, not by the protocol).
                let held = self.net.ins[&channel].io.frames.len() - queued;
                let most = self.net.sizes.limits.unclaimed_frames_max;
                if held > most {
                    self.net.failure.get_or_insert(format!(
                        "process {to} held {held} frames for the unclaimed {}, more than its limit of {most}",
                        channel_id::describe(channel)
                    ));
                }
                self.step_process(to);
            }
            NetEvent::Intrude { target } => self.intrude(target),
            NetEvent::Reset { conn } => self.cut_conn(conn, "fault: the stream lost a tail"),
        }
    }

    fn connect(&mut self, from: u32, to: u32) {
        let clock = self.local_clock_ms(from);
        if self.partitioned(from, to) {
            self.trace(format_args!("dial {from}->{to} fails: partitioned"));
            self.net.protocols[from as usize].on_dial_failed(to, clock);
            return self.carry_out(from);
        }
        if self.dead(from) {
            return;
        }
        if self.dead(to) {
            self.trace(format_args!("dial {from}->{to} refused: process {to} exited"));
            self.net.protocols[from as usize].on_dial_failed(to, clock);
            return self.carry_out(from);
        }
        // A paused process's kernel accepts; its protocol hears of it on waking.
        for process in [from, to] {
            if self.paused(process) {
                let until = self.processes[process as usize].paused_until_us;
                return self.schedule(until, Event::Net(NetEvent::Connect { from, to }));
            }
        }
        let conn = self.open_conn(from, to);
        self.trace(format_args!("connection {conn}: {from} dialled {to}"));
        self.net.protocols[from as usize].on_connected(conn, Some(to), clock);
        let clock_to = self.local_clock_ms(to);
        self.net.protocols[to as usize].on_connected(conn, None, clock_to);
        self.carry_out(from);
        self.carry_out(to);
    }

    fn open_conn(&mut self, from: u32, to: u32) -> ConnId {
        let conn = self.net.next_conn;
        self.net.next_conn += 1;
        let sim = SimConn {
            ends: [from, to],
            last_arrival_us: [0; 2],
            unread: [0; 2],
        };
        self.net.conns.insert(conn, sim);
        self.restart_watch.on_open(conn, from, to);
        conn
    }

    /// `wrong-secret`: a process with the wrong cluster secret, claiming a
    /// real process's id, connects and (half the time) sends data before
    /// any proof. The production handshake must refuse it, and it must
    /// inject nothing.
    fn intrude(&mut self, target: u32) {
        let intruder = self.net.intruder();
        let claims = self.net.protocols[intruder as usize].config().process_id;
        if target == claims
            || self.dead(target)
            || self.net.protocols[intruder as usize]
                .connections()
                .next()
                .is_some()
        {
            return;
        }
        self.stats.fault("wrong_secret");
        let conn = self.open_conn(intruder, target);
        self.trace(format_args!(
            "fault: wrong-secret process claiming id {claims} connects to {target} (connection {conn})"
        ));
        let now_ms = self.local_clock_ms(intruder);
        self.net.protocols[intruder as usize].on_connected(conn, Some(target), now_ms);
        if self.rng.chance(1, 2) {
            // Data before the handshake, on a channel the claimed id owns.
            let channel = self
                .net
                .outs
                .iter()
                .find(|(_, o)| o.from == claims && o.to == target);
            if let Some((&channel, _)) = channel {
                let seq = self.net.ins[&channel].delivered_through + 1;
                let mut bytes = self.net.protocols[intruder as usize].take_output(conn);
                encode_frame(&mut bytes, FrameKind::Data, channel, seq, &[b"intruder"]);
                self.transmit(conn, intruder, Bytes::from(bytes), 0);
            }
        }
        let clock = self.local_clock_ms(target);
        if !self.paused(target) {
            self.net.protocols[target as usize].on_connected(conn, None, clock);
            self.carry_out(target);
        }
        self.carry_out(intruder);
    }

    // ---- links ----------------------------------------------------------

    /// Puts bytes on `conn` from `from`, with the seed's faults; `sent` of
    /// them count against the send buffer until they are read.
    fn transmit(&mut self, conn: ConnId, from: u32, bytes: Bytes, sent: usize) {
        let Some(sim) = self.net.conns.get(&conn) else {
            return; // the connection is gone: the protocol resends after a reconnect
        };
        let to = sim.other(from);
        let dir = sim.direction(from);
        let mut bytes = bytes;
        let mut lost_tail = false;
        if self.faults_on() {
            let sent_bytes = bytes.clone();
            (bytes, lost_tail) = self.corrupt(from, to, bytes);
            bytes = self.forge(from, to, bytes);
            if lost_tail || bytes != sent_bytes {
                self.net.tampered.insert(conn);
            }
        }
        if from == self.net.intruder() || to == self.net.intruder() {
            self.net.tampered.insert(conn);
        }
        self.net.last_sent = bytes.clone();
        let faults = self.config.faults;
        if self.partitioned(from, to) {
            // TCP keeps retransmitting underneath: the bytes arrive when the
            // partition heals, unless the connection is given up first.
            let heals = self.net.partition.map_or(self.now_us, |(_, until)| until);
            let sim = self.net.conns.get_mut(&conn).expect("present");
            let arrival = (heals + LATENCY_BASE_US).max(sim.last_arrival_us[dir]);
            sim.last_arrival_us[dir] = arrival;
            self.trace(format_args!(
                "partition holds {} bytes {from}->{to} until {arrival}",
                bytes.len()
            ));
            let event = NetEvent::Deliver {
                conn,
                to,
                bytes,
                sent,
            };
            return self.schedule(arrival, Event::Net(event));
        }
        if self.faults_on() && faults.drop && self.rng.chance(FRAME_FAULT_PER_MILLE, 1000) {
            // TCP loses nothing silently: losing bytes means the stream broke,
            // which both ends notice.
            self.stats.fault("drop");
            self.trace(format_args!("fault: drop {} bytes {from}->{to}", bytes.len()));
            return self.cut_conn(conn, "fault: bytes lost");
        }
        let mut latency = LATENCY_BASE_US + self.rng.below(LATENCY_JITTER_US);
        if self.faults_on() && faults.delay {
            latency += self.rng.below(DELAY_MAX_US);
            self.stats.fault("delay");
        }
        let reorder = self.faults_on() && faults.reorder && self.rng.chance(FRAME_FAULT_PER_MILLE, 1000);
        let now = self.now_us;
        let sim = self.net.conns.get_mut(&conn).expect("present");
        // A connection keeps order unless the `reorder` fault overtakes.
        let arrival = if reorder {
            now + 1
        } else {
            (now + latency).max(sim.last_arrival_us[dir])
        };
        if !reorder {
            sim.last_arrival_us[dir] = arrival;
        } else {
            self.net.tampered.insert(conn);
            self.stats.fault("reorder");
            self.trace(format_args!("fault: reorder {} bytes {from}->{to}", bytes.len()));
        }
        if self.faults_on() && faults.duplicate && self.rng.chance(FRAME_FAULT_PER_MILLE, 1000) {
            self.stats.fault("duplicate");
            self.net.tampered.insert(conn);
            self.trace(format_args!(
                "fault: duplicate {} bytes {from}->{to}",
                bytes.len()
            ));
            let again = bytes.clone();
            self.schedule(
                arrival + 1,
                Event::Net(NetEvent::Deliver {
                    conn,
                    to,
                    bytes: again,
                    sent: 0,
                }),
            );
        }
        let event = NetEvent::Deliver {
            conn,
            to,
            bytes,
            sent,
        };
        self.schedule(arrival, Event::Net(event));
        if lost_tail {
            // A lost tail that ends on a frame boundary leaves nothing for a
            // checksum to catch; TCP never loses bytes and goes on, so the
            // stream breaks once the prefix is in.
            self.schedule(arrival + 1, Event::Net(NetEvent::Reset { conn }));
        }
    }

    /// `corrupt`: a flipped bit, a lost tail, or a piece of other bytes
    /// spliced in. The frame checksum must catch it. Returns the bytes and
    /// whether their tail was lost.
    fn corrupt(&mut self, from: u32, to: u32, bytes: Bytes) -> (Bytes, bool) {
        if !self.config.faults.corrupt || !self.rng.chance(FRAME_FAULT_PER_MILLE, 1000) {
            return (bytes, false);
        }
        self.stats.fault("corrupt");
        let mut garbled = bytes.to_vec();
        let at = self.rng.below(garbled.len() as u64) as usize;
        let lost_tail = self.rng.below(3) == 1;
        let how = match self.rng.below(2) {
            _ if lost_tail => {
                garbled.truncate(at);
                "truncate"
            }
            0 => {
                garbled[at] ^= 1 << self.rng.below(8);
                "flip a bit"
            }
            _ => {
                let other = self.net.last_sent.clone();
                let start = self.rng.below(other.len() as u64 + 1) as usize;
                let end = start + self.rng.below((other.len() - start) as u64 + 1) as usize;
                garbled.splice(at..at, other[start..end].iter().copied());
                "splice into"
            }
        };
        self.trace(format_args!(
            "fault: corrupt: {how} {} bytes {from}->{to} at {at}",
            bytes.len()
        ));
        (Bytes::from(garbled), lost_tail)
    }

    /// `forge`: the sender, though authenticated, appends a well-formed frame
    /// on a channel another process owns (as a buggy or hostile peer would).
    /// The protocol must refuse it: no checksum can.
    fn forge(&mut self, from: u32, to: u32, bytes: Bytes) -> Bytes {
        if !self.config.faults.forge || !self.rng.chance(FRAME_FAULT_PER_MILLE, 1000) {
            return bytes;
        }
        let mut decoder = FrameDecoder::new();
        decoder.extend_from_slice(&bytes);
        let Ok(Some(genuine)) = decoder.next_frame() else {
            return bytes;
        };
        if genuine.header.kind != FrameKind::Data {
            return bytes;
        }
        let others: Vec<u32> = self
            .net
            .outs
            .iter()
            .filter(|(_, o)| o.to == to && o.from != from)
            .map(|(c, _)| *c)
            .collect();
        if others.is_empty() {
            return bytes;
        }
        let channel = others[self.rng.below(others.len() as u64) as usize];
        self.stats.fault("forge");
        let seq = self.net.ins[&channel].delivered_through + 1;
        let records: Vec<&[u8]> = genuine.records().collect();
        let mut forged = bytes.to_vec();
        encode_frame(&mut forged, FrameKind::Data, channel, seq, &records);
        self.trace(format_args!(
            "fault: forge: {from} sends seq {seq} of {} to {to}",
            channel_id::describe(channel)
        ));
        Bytes::from(forged)
    }

    fn deliver(&mut self, conn: ConnId, to: u32, bytes: Bytes, sent: usize) {
        if !self.net.conns.contains_key(&conn) {
            return; // sent on a connection that is gone
        }
        if self.dead(to) {
            return;
        }
        if self.paused(to) {
            // A paused reader reads nothing: the writer's buffer stays full.
            let until = self.processes[to as usize].paused_until_us;
            let event = NetEvent::Deliver {
                conn,
                to,
                bytes,
                sent,
            };
            return self.schedule(until, Event::Net(event));
        }
        let clock = self.local_clock_ms(to);
        // BUGGIFY: bytes arrive in pieces, so partial frames are the rule.
        self.restart_watch.reading = Some(conn);
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let piece = (1 + self.rng.below(rest.len() as u64) as usize).min(rest.len());
            let protocol = &mut self.net.protocols[to as usize];
            let frames_before = protocol.stats().frames_received;
            protocol.on_bytes(conn, &rest[..piece], clock);
            if protocol.stats().frames_received > frames_before {
                let heard = self.net.heard_ms.entry((to, conn)).or_insert(clock);
                *heard = (*heard).max(clock);
            }
            rest = &rest[piece..];
        }
        if let Err(broken) =
            check_unclaimed(self.net.protocols[to as usize].unclaimed(), self.net.sizes.limits)
        {
            self.net.failure.get_or_insert(format!("process {to}: {broken}"));
        }
        self.carry_out(to);
        self.restart_watch.reading = None;
        if to != self.net.intruder() {
            self.step_process(to);
        }
        if sent > 0 {
            self.read_from_send_buffer(conn, to, sent);
        }
    }

    /// The reader took `sent` bytes off the connection: its writer may write
    /// again (production's writable socket), and with the backlog gone its
    /// producers are drained again.
    fn read_from_send_buffer(&mut self, conn: ConnId, reader: u32, sent: usize) {
        let Some(sim) = self.net.conns.get_mut(&conn) else {
            return;
        };
        let dir = 1 - sim.direction(reader);
        sim.unread[dir] -= sent;
        let writer = sim.ends[dir];
        if writer != self.net.intruder() && !self.dead(writer) {
            self.step_process(writer);
        }
    }

    /// The `cut` fault: every connection between `a` and `b` is reset.
    pub(super) fn cut(&mut self, a: u32, b: u32, why: &str) {
        let conns: Vec<ConnId> = self
            .net
            .conns
            .iter()
            .filter(|(_, c)| c.ends == [a, b] || c.ends == [b, a])
            .map(|(id, _)| *id)
            .collect();
        for conn in conns {
            self.cut_conn(conn, why);
        }
    }

    /// A process exited for good: the kernel closes its connections (the
    /// peers get what it wrote, then the end of the stream), and dials to it
    /// are refused from now on.
    pub(super) fn kill(&mut self, process: u32) {
        self.trace(format_args!("process {process} is gone"));
        self.processes[process as usize].dead = true;
        let conns: Vec<ConnId> = self
            .net
            .conns
            .iter()
            .filter(|(_, c)| c.ends.contains(&process))
            .map(|(id, _)| *id)
            .collect();
        for conn in conns {
            self.close(process, conn, "its process exited", Vec::new());
        }
    }

    /// A reset: bytes in flight are lost, and both ends hear of it.
    fn cut_conn(&mut self, conn: ConnId, why: &str) {
        let Some(sim) = self.net.conns.remove(&conn) else {
            return;
        };
        self.trace(format_args!(
            "cut connection {conn} {}-{}: {why}",
            sim.ends[0], sim.ends[1]
        ));
        let at = self.now_us + LATENCY_BASE_US;
        for process in sim.ends {
            self.schedule(at, Event::Net(NetEvent::Closed { conn, process }));
        }
    }

    /// Whether every frame `process` produced was taken by its protocol and
    /// acked by the peers, and every ack it owes is written (production's
    /// `Node::wait_sent`, which first lets the I/O thread take a turn, so
    /// that its protocol has seen what the consumers took).
    pub(super) fn all_sent(&self, process: u32) -> bool {
        let producers_empty = self
            .net
            .outs
            .values()
            .filter(|out| out.from == process)
            .all(|out| out.io.frames.is_empty());
        let progress_passed = self
            .net
            .ins
            .values()
            .filter(|input| input.to == process)
            .all(|input| input.io.progress.get() == input.passed_through);
        producers_empty && progress_passed && self.net.protocols[process as usize].unsettled() == 0
    }

    /// The run is over for `process`: peers leaving is expected.
    pub(super) fn set_closing(&mut self, process: u32) {
        self.net.protocols[process as usize].set_closing();
    }

    /// Every process's timers: heartbeats, liveness, dials, acks.
    pub(super) fn tick(&mut self) {
        for process in 0..self.config.processes {
            if self.paused(process) {
                continue;
            }
            let clock = self.local_clock_ms(process);
            self.net.protocols[process as usize].on_tick(clock);
            self.carry_out(process);
            if !self.dead(process) {
                self.check_heartbeats(process, clock);
            }
        }
        self.schedule(self.now_us + TICK_US, Event::Tick);
    }

    /// No false suspicion: a protocol that closes a connection for silence
    /// must not have taken a frame on it within its peer timeout (on its own
    /// clock, clock jumps included). A failure detector that suspects live
    /// peers only costs reconnects and resends in a run's results, so
    /// nothing else here would notice it.
    fn check_suspicion(&mut self, process: u32, conn: ConnId, reason: &str) {
        let heard = self.net.heard_ms.remove(&(process, conn));
        self.net.wrote_ms.remove(&(process, conn));
        self.net.established.remove(&(process, conn));
        // A production protocol writes only well-formed frames, and the
        // stream keeps them whole unless a fault changed its bytes.
        if reason.starts_with("bad frame") && !self.net.tampered.contains(&conn) {
            self.net.failure.get_or_insert(format!(
                "process {process}: closed connection {conn}, which no fault touched: {reason}"
            ));
            return;
        }
        // The protocol's reason for a silent peer (`PeerProtocol::on_tick`).
        if !reason.starts_with("no frame for") {
            return;
        }
        let Some(heard) = heard else {
            return;
        };
        let clock = self.local_clock_ms(process);
        let timeout = self.net.protocols[process as usize]
            .config()
            .liveness
            .peer_timeout_ms;
        if clock.saturating_sub(heard) < timeout {
            self.net.failure.get_or_insert(format!(
                "process {process}: false suspicion: closed connection {conn} as silent ({reason}) at {clock} \
                 ms, but took a frame on it at {heard} ms (peer timeout {timeout} ms)"
            ));
        }
    }

    /// Heartbeats: after its timers ran, a process has had something to
    /// write on each connection it established within the last heartbeat
    /// interval, so that a healthy but idle peer never looks dead.
    fn check_heartbeats(&mut self, process: u32, clock: u64) {
        let protocol = &self.net.protocols[process as usize];
        let interval = protocol.config().liveness.heartbeat_interval_ms;
        for conn in protocol.connections() {
            if !self.net.established.contains(&(process, conn)) {
                continue;
            }
            let wrote = self.net.wrote_ms.get(&(process, conn)).copied();
            if wrote.is_none_or(|at| clock.saturating_sub(at) >= interval) {
                self.net.failure.get_or_insert(format!(
                    "process {process}: no heartbeat: connection {conn} had nothing written since {wrote:?} ms, \
                     at {clock} ms (heartbeat interval {interval} ms)"
                ));
                return;
            }
        }
    }
}
