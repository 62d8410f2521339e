//! The network I/O thread of one process: the production driver of the peer
//! protocol (`peer::PeerProtocol`). It owns the sockets (one mio loop, a
//! connection to every peer process, many numbered channels per connection),
//! the OS clock and OS randomness, and the bounded queues to and from
//! producers and consumers; every decision about peers is the protocol's.
//!
//! Producers (shard threads, source readers) hand it whole encoded `Data`
//! frames through one bounded queue per channel; the protocol keeps each sent
//! frame until the peer acks it. Consumers take received frames from one
//! queue per channel and publish how far they have consumed; that is what
//! gets acked, so a sender never has more frames in flight than the
//! receiver's queue holds (`window_frames`) and delivery never blocks the loop.

use crate::auth::NONCE_BYTES;
use crate::frame::Frame;
use crate::peer::{
    Action, ConnId, Entropy, FrameSource, PeerEvent, PeerProtocol, PeerTraffic, ProtocolConfig, ProtocolStats,
};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONNECTION: ConnId = 2;
/// Longest the loop sleeps with nothing to do (timers are checked this often).
const POLL_INTERVAL_MAX: Duration = Duration::from_millis(5);
/// Channel registrations waiting for the loop; a caller beyond this waits.
const NODE_COMMANDS_MAX: usize = 4096;

#[derive(Debug, Clone)]
pub struct PeerAddress {
    pub id: u32,
    /// Where to dial this peer (may be a proxy in front of it).
    pub address: SocketAddr,
}

#[derive(Clone)]
pub struct NodeConfig {
    /// The protocol's settings; its `peers` must name exactly the processes of
    /// `peer_addresses`.
    pub protocol: ProtocolConfig,
    pub listen: SocketAddr,
    /// Where to dial every other process of the cluster.
    pub peer_addresses: Vec<PeerAddress>,
    /// Mixed into backoff jitter (nonces come from the OS RNG alone).
    pub seed: u64,
}

/// Where a channel's outgoing frames come from.
pub struct OutChannel {
    pub channel: u32,
    pub peer: u32,
    /// Whole encoded `Data` frames, numbered by the producer from 1 upwards.
    pub frames: Receiver<Vec<u8>>,
}

/// Where a channel's incoming frames go, and how far they were consumed.
pub struct InChannel {
    pub channel: u32,
    pub peer: u32,
    pub frames: Sender<Frame>,
    pub progress: Arc<ConsumerProgress>,
}

/// Shared between a consumer and the I/O thread: the last sequence consumed.
#[derive(Debug, Default)]
pub struct ConsumerProgress {
    consumed_through: AtomicU64,
}

impl ConsumerProgress {
    pub fn consumed(&self, through_seq: u64) {
        self.consumed_through.store(through_seq, Ordering::Release);
    }

    /// What the I/O side passes to the protocol (`PeerProtocol::on_consumed`).
    pub fn get(&self) -> u64 {
        self.consumed_through.load(Ordering::Acquire)
    }
}

/// How a producer or consumer tells the I/O side it has work (frames queued,
/// frames consumed). Production's is the I/O thread's `mio::Waker`; the
/// simulator's records the wake, so a missed one is a finding.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

impl Wake for Waker {
    fn wake(&self) {
        // A failed wake only delays: the loop polls every `POLL_INTERVAL_MAX`.
        let _ = Waker::wake(self);
    }
}

/// Counts for the end-of-run report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NodeStats {
    pub frames_sent: u64,
    pub frames_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub frames_resent: u64,
    pub duplicates_dropped: u64,
    pub connections: u64,
    pub connections_lost: u64,
    pub peers_refused: u64,
    pub reconnects: u64,
    pub full_windows: u64,
    /// Connections closed for overfilling unclaimed channels, or at once for
    /// too many unauthenticated ones.
    pub connections_refused: u64,
    /// Channel registrations that found the command queue full and waited.
    pub commands_waited: u64,
}

impl NodeStats {
    fn add_protocol(&mut self, p: ProtocolStats) {
        self.frames_sent += p.frames_sent;
        self.frames_received += p.frames_received;
        self.frames_resent += p.frames_resent;
        self.duplicates_dropped += p.duplicates_dropped;
        self.connections += p.connections;
        self.connections_lost += p.connections_lost;
        self.peers_refused += p.handshakes_refused;
        self.reconnects += p.reconnects;
        self.full_windows += p.full_windows;
        self.connections_refused += p.unclaimed_refused + p.pending_refused;
    }
}

/// Each peer's traffic as of the I/O thread's last loop turn, for live
/// metrics (`--metrics-addr`): the loop stores it once per turn, so a scrape
/// reads plain atomics and the protocol stays single-threaded.
#[derive(Debug)]
pub struct TrafficBoard {
    peers: Vec<(u32, PublishedTraffic)>,
    /// Frames queued by producers or unacked by peers, over all channels.
    frames_in_flight: AtomicU64,
}

#[derive(Debug, Default)]
struct PublishedTraffic {
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    frames_resent: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
}

impl TrafficBoard {
    fn new(peers: &[u32]) -> TrafficBoard {
        let mut peers: Vec<(u32, PublishedTraffic)> = peers
            .iter()
            .map(|id| (*id, PublishedTraffic::default()))
            .collect();
        peers.sort_unstable_by_key(|(id, _)| *id);
        TrafficBoard {
            peers,
            frames_in_flight: AtomicU64::new(0),
        }
    }

    /// Frames queued by producers or unacked by peers, over all channels.
    pub fn frames_in_flight(&self) -> u64 {
        self.frames_in_flight.load(Ordering::Relaxed)
    }

    fn publish(&self, peer: u32, traffic: PeerTraffic) {
        let Ok(at) = self.peers.binary_search_by_key(&peer, |(id, _)| *id) else {
            return;
        };
        let published = &self.peers[at].1;
        published
            .frames_sent
            .store(traffic.frames_sent, Ordering::Relaxed);
        published
            .frames_received
            .store(traffic.frames_received, Ordering::Relaxed);
        published
            .frames_resent
            .store(traffic.frames_resent, Ordering::Relaxed);
        published.bytes_sent.store(traffic.bytes_sent, Ordering::Relaxed);
        published
            .bytes_received
            .store(traffic.bytes_received, Ordering::Relaxed);
    }

    /// Every peer's traffic, in peer id order.
    pub fn snapshot(&self) -> Vec<(u32, PeerTraffic)> {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        self.peers
            .iter()
            .map(|(id, p)| {
                let traffic = PeerTraffic {
                    frames_sent: load(&p.frames_sent),
                    frames_received: load(&p.frames_received),
                    frames_resent: load(&p.frames_resent),
                    bytes_sent: load(&p.bytes_sent),
                    bytes_received: load(&p.bytes_received),
                };
                (*id, traffic)
            })
            .collect()
    }
}

enum Command {
    AddOut(OutChannel),
    AddIn(InChannel),
}

/// A running I/O thread.
pub struct Node {
    waker: Arc<Waker>,
    commands: Sender<Command>,
    commands_waited: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<NodeStats>>,
    local_addr: SocketAddr,
    /// Frames queued or unacked on all out channels, as of the loop's last turn.
    in_flight: Arc<AtomicU64>,
    /// Set when the run is over: peers leaving is expected, not news.
    closing: Arc<AtomicBool>,
    traffic: Arc<TrafficBoard>,
}

impl Node {
    /// Binds the listener (so a taken port is reported here) and starts the loop.
    pub fn start(config: NodeConfig) -> io::Result<Node> {
        let mut listener = TcpListener::bind(config.listen)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen)))?;
        let local_addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let entropy = OsEntropy::new(config.seed)?;
        let (commands, command_rx) = crossbeam_channel::bounded(NODE_COMMANDS_MAX);
        let stop = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(Mutex::new(None));
        let in_flight = Arc::new(AtomicU64::new(0));
        let closing = Arc::new(AtomicBool::new(false));
        let traffic = Arc::new(TrafficBoard::new(&config.protocol.peers));
        let shared = Shared {
            failure: Arc::clone(&failure),
            in_flight: Arc::clone(&in_flight),
            closing: Arc::clone(&closing),
            traffic: Arc::clone(&traffic),
        };
        let mut io_loop = IoLoop::new(config, entropy, poll, listener, command_rx, shared);
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("verity-net".into())
            .spawn(move || io_loop.run(&thread_stop))?;
        Ok(Node {
            waker,
            commands,
            commands_waited: Arc::new(AtomicU64::new(0)),
            stop,
            failure,
            thread: Some(thread),
            local_addr,
            in_flight,
            closing,
            traffic,
        })
    }

    /// Each peer's traffic, as the loop last published it (live metrics).
    pub fn traffic(&self) -> Arc<TrafficBoard> {
        Arc::clone(&self.traffic)
    }

    /// The run is over: from now on peers disconnecting is expected.
    pub fn closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Waits until every frame handed over so far is acked by its peer, and
    /// every ack and byte this process owes is written (or `timeout`
    /// passes). Returns whether all were.
    pub fn wait_sent(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        // The loop publishes after its turn; give it one to see the latest frames.
        std::thread::sleep(POLL_INTERVAL_MAX * 2);
        while self.in_flight.load(Ordering::Acquire) > 0 {
            if Instant::now() > deadline || self.failure().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Producers call this after queueing frames, so the loop sends them at once.
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    pub fn add_out(&self, channel: OutChannel) {
        self.command(Command::AddOut(channel));
    }

    pub fn add_in(&self, channel: InChannel) {
        self.command(Command::AddIn(channel));
    }

    /// Queues a registration; if the queue is full, waits for the loop (which
    /// drains it every turn and waits on no caller).
    fn command(&self, command: Command) {
        match self.commands.try_send(command) {
            Ok(()) => {}
            Err(TrySendError::Full(command)) => {
                self.commands_waited.fetch_add(1, Ordering::Relaxed);
                let _ = self.waker.wake();
                let _ = self.commands.send(command);
            }
            // The loop is gone: the run is over or failed, which is reported there.
            Err(TrySendError::Disconnected(_)) => {}
        }
        let _ = self.waker.wake();
    }

    /// Records that the cluster cannot go on for a reason seen outside the
    /// network (e.g. a local worker process died); the first reason sticks.
    pub fn report_failure(&self, message: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.get_or_insert(message);
    }

    /// Why the cluster cannot go on (a peer lost for good), if it cannot.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the loop (after one last flush of what it holds) and returns its
    /// counts. Call `wait_sent` first to be sure peers have everything.
    pub fn stop(mut self) -> NodeStats {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        let mut stats = self
            .thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        stats.commands_waited = self.commands_waited.load(Ordering::Relaxed);
        stats
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

/// Nonces straight from the OS RNG; jitter from a stream seeded by it. Should
/// the OS RNG fail after start, nonces are hashed from the start seed and a
/// counter: still unpredictable to a peer, and never repeated.
struct OsEntropy {
    seed: [u8; 32],
    counter: u64,
    jitter: crate::peer::SeededEntropy,
}

impl OsEntropy {
    fn new(config_seed: u64) -> io::Result<Self> {
        let mut seed = [0; 32];
        getrandom::getrandom(&mut seed)
            .map_err(|e| io::Error::other(format!("the OS random number generator failed: {e}")))?;
        let mut jitter_seed = [0; 8];
        jitter_seed.copy_from_slice(&seed[..8]);
        let jitter = crate::peer::SeededEntropy::new(u64::from_le_bytes(jitter_seed) ^ config_seed);
        Ok(OsEntropy {
            seed,
            counter: 0,
            jitter,
        })
    }
}

impl Entropy for OsEntropy {
    fn nonce(&mut self) -> [u8; NONCE_BYTES] {
        let mut nonce = [0; NONCE_BYTES];
        if getrandom::getrandom(&mut nonce).is_err() {
            self.counter += 1;
            let digest = Sha256::new()
                .chain_update(self.seed)
                .chain_update(self.counter.to_le_bytes())
                .finalize();
            nonce.copy_from_slice(&digest);
        }
        nonce
    }

    fn next_u64(&mut self) -> u64 {
        self.jitter.next_u64()
    }
}

/// A producer's queue as the protocol sees it (`PeerProtocol::send_from`).
pub struct ProducerQueue<'a>(pub &'a Receiver<Vec<u8>>);

impl FrameSource for ProducerQueue<'_> {
    fn has_frame(&self) -> bool {
        !self.0.is_empty()
    }
    fn take_frame(&mut self) -> Option<Bytes> {
        match self.0.try_recv() {
            Ok(bytes) => Some(bytes.into()),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }
}

struct InEnd {
    frames: Sender<Frame>,
    progress: Arc<ConsumerProgress>,
}

struct IoLoop {
    protocol: PeerProtocol<OsEntropy>,
    poll: Poll,
    listener: TcpListener,
    commands: Receiver<Command>,
    started: Instant,
    streams: BTreeMap<ConnId, TcpStream>,
    next_conn: ConnId,
    addresses: BTreeMap<u32, SocketAddr>,
    outs: BTreeMap<u32, Receiver<Vec<u8>>>,
    ins: BTreeMap<u32, InEnd>,
    stats: NodeStats,
    shared: Shared,
}

/// What the loop shares with its `Node` handle.
struct Shared {
    failure: Arc<Mutex<Option<String>>>,
    in_flight: Arc<AtomicU64>,
    closing: Arc<AtomicBool>,
    traffic: Arc<TrafficBoard>,
}

impl IoLoop {
    fn new(
        config: NodeConfig,
        entropy: OsEntropy,
        poll: Poll,
        listener: TcpListener,
        commands: Receiver<Command>,
        shared: Shared,
    ) -> Self {
        let mut named: Vec<u32> = config.peer_addresses.iter().map(|p| p.id).collect();
        let mut peers = config.protocol.peers.clone();
        named.sort_unstable();
        peers.sort_unstable();
        assert_eq!(
            named, peers,
            "every peer of the protocol needs an address, and only they"
        );
        IoLoop {
            protocol: PeerProtocol::new(config.protocol, entropy, 0),
            poll,
            listener,
            commands,
            started: Instant::now(),
            streams: BTreeMap::new(),
            next_conn: FIRST_CONNECTION,
            addresses: config.peer_addresses.iter().map(|p| (p.id, p.address)).collect(),
            outs: BTreeMap::new(),
            ins: BTreeMap::new(),
            stats: NodeStats::default(),
            shared,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn run(&mut self, stop: &AtomicBool) -> NodeStats {
        let mut events = Events::with_capacity(256);
        while !stop.load(Ordering::Acquire) {
            let _ = self.poll.poll(&mut events, Some(POLL_INTERVAL_MAX));
            let mut readable = Vec::new();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    token => readable.push(token.0 as ConnId),
                }
            }
            if self.shared.closing.load(Ordering::Acquire) {
                self.protocol.set_closing();
            }
            self.take_commands();
            for conn in readable {
                self.read_conn(conn);
            }
            self.pass_progress();
            self.pump_producers();
            self.protocol.on_tick(self.now_ms());
            self.carry_out_actions();
            self.flush_all();
            self.carry_out_actions();
            let queued: usize = self.outs.values().map(Receiver::len).sum();
            let in_flight = queued + self.protocol.unsettled();
            self.shared.in_flight.store(in_flight as u64, Ordering::Release);
            // A few stores per peer per turn, not per frame.
            let board = &self.shared.traffic;
            board.frames_in_flight.store(in_flight as u64, Ordering::Relaxed);
            for (peer, traffic) in self.protocol.peer_traffic() {
                self.shared.traffic.publish(peer, traffic);
            }
        }
        self.flush_all();
        let mut stats = self.stats;
        stats.add_protocol(self.protocol.stats());
        stats
    }

    fn fail(&self, message: String) {
        if self.shared.closing.load(Ordering::Acquire) {
            return;
        }
        let mut failure = self.shared.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            log::error!("net: {message}");
            *failure = Some(message);
        }
    }

    fn take_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::AddOut(out) => {
                    self.protocol.add_out(out.channel, out.peer);
                    self.outs.insert(out.channel, out.frames);
                }
                Command::AddIn(input) => {
                    let end = InEnd {
                        frames: input.frames,
                        progress: input.progress,
                    };
                    self.ins.insert(input.channel, end);
                    self.protocol.add_in(input.channel, input.peer);
                }
            }
        }
        self.carry_out_actions();
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    if let Some(conn) = self.register(stream) {
                        self.protocol.on_connected(conn, None, self.now_ms());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("net: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn register(&mut self, mut stream: TcpStream) -> Option<ConnId> {
        let conn = self.next_conn;
        self.next_conn += 1;
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(conn as usize), interest)
        {
            log::warn!("net: cannot register a connection: {e}");
            return None;
        }
        self.streams.insert(conn, stream);
        Some(conn)
    }

    fn drop_stream(&mut self, conn: ConnId) -> Option<TcpStream> {
        let mut stream = self.streams.remove(&conn)?;
        let _ = self.poll.registry().deregister(&mut stream);
        Some(stream)
    }

    fn closed_by_io(&mut self, conn: ConnId, why: &str) {
        self.drop_stream(conn);
        self.protocol.on_closed(conn, why, self.now_ms());
    }

    fn read_conn(&mut self, conn: ConnId) {
        loop {
            let Some(stream) = self.streams.get_mut(&conn) else {
                return;
            };
            match self.protocol.read_from(conn, stream) {
                Ok(0) => return self.closed_by_io(conn, "closed by the peer"),
                Ok(read) => self.stats.bytes_received += read as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.closed_by_io(conn, &format!("read failed: {e}")),
            }
            self.protocol.on_received(conn, self.now_ms());
            // A close the frames led to happens now, its last words (a
            // refusal) written before the socket goes.
            self.carry_out_actions();
        }
    }

    fn pass_progress(&mut self) {
        for (channel, end) in &self.ins {
            self.protocol.on_consumed(*channel, end.progress.get());
        }
    }

    fn pump_producers(&mut self) {
        for (channel, frames) in &self.outs {
            self.protocol.send_from(*channel, &mut ProducerQueue(frames));
        }
    }

    fn carry_out_actions(&mut self) {
        while let Some(action) = self.protocol.next_action() {
            match action {
                Action::Dial { peer } => self.dial(peer),
                Action::Close {
                    conn,
                    reason: _,
                    last_words,
                } => {
                    if let Some(mut stream) = self.drop_stream(conn) {
                        // Best effort: the peer learns why (a refusal) if the
                        // socket takes it now.
                        let _ = stream.write(&last_words);
                    }
                }
                Action::Deliver { channel, frame } => self.deliver(channel, frame),
                Action::Failed { reason } => self.fail(reason),
                Action::Log(event) => render(&event),
            }
        }
    }

    fn deliver(&mut self, channel: u32, frame: Frame) {
        let end = self
            .ins
            .get(&channel)
            .expect("the protocol delivers only claimed channels");
        match end.frames.try_send(frame) {
            Ok(()) => {}
            // The protocol admits no more than a window unconsumed, and the
            // queue holds a window: this is a wiring bug, never the peer's.
            Err(TrySendError::Full(_)) => self.fail(format!(
                "the consumer queue of channel {channel:#x} is smaller than the window"
            )),
            // The consumer is done with this channel: nothing to deliver.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn dial(&mut self, peer: u32) {
        let now = self.now_ms();
        let Some(address) = self.addresses.get(&peer).copied() else {
            return self.protocol.on_dial_failed(peer, now);
        };
        let registered = TcpStream::connect(address).ok().and_then(|stream| {
            let _ = stream.set_nodelay(true);
            self.register(stream)
        });
        match registered {
            Some(conn) => self.protocol.on_connected(conn, Some(peer), now),
            None => self.protocol.on_dial_failed(peer, now),
        }
    }

    fn flush_all(&mut self) {
        let conns: Vec<ConnId> = self.streams.keys().copied().collect();
        for conn in conns {
            match self.flush(conn) {
                Ok(written) => self.stats.bytes_sent += written as u64,
                Err(e) => self.closed_by_io(conn, &format!("write failed: {e}")),
            }
        }
    }

    /// Writes as much of the connection's output as the socket takes.
    fn flush(&mut self, conn: ConnId) -> io::Result<usize> {
        let mut total = 0;
        let Some(stream) = self.streams.get_mut(&conn) else {
            return Ok(0);
        };
        loop {
            let output = self.protocol.output(conn);
            if output.is_empty() {
                return Ok(total);
            }
            match stream.write(output) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.protocol.advance_output(conn, n);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Not connected yet (a dial in progress): try again next turn.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(total),
                Err(e) => return Err(e),
            }
        }
    }
}

/// The protocol's events, for the log.
fn render(event: &PeerEvent) {
    match event {
        PeerEvent::Connected { .. } => log::debug!("net: {event}"),
        _ => log::warn!("net: {event}"),
    }
}
