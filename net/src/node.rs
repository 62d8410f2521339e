//! The network I/O thread of one process: one mio loop driving a connection to
//! every peer process, carrying many numbered channels per connection.
//!
//! Producers (shard threads, source readers) hand it whole encoded `Data`
//! frames through one bounded queue per channel; it keeps each sent frame in the
//! channel's retransmit buffer until the peer acks it. Consumers take received
//! frames from one queue per channel and publish how far they have consumed;
//! that is what gets acked, so a sender never has more frames in flight than the
//! receiver's queue holds (`window_frames`) and delivery never blocks the loop.
//!
//! A dropped connection is redialled with backoff by the higher process id; on
//! every (re)connection the handshake authenticates both ends, the sender
//! resends everything unacked and the receiver drops what it already has.

use crate::auth::{self, ClusterSecret, Handshake, HandshakeStatus, Identity};
use crate::channel::{Admission, ChannelReceiver, ChannelSender};
use crate::frame::{encode_frame, peek_numbers, Frame, FrameDecoder, FrameKind};
use crate::liveness::{Backoff, LivenessConfig, PeerLiveness};
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONNECTION: usize = 2;
/// Longest the loop sleeps with nothing to do (timers are checked this often).
const POLL_INTERVAL_MAX: Duration = Duration::from_millis(5);
/// Frames taken from one producer queue per loop turn, so one busy channel
/// cannot starve the others or the socket reads.
const FRAMES_PER_CHANNEL_TURN_MAX: usize = 64;
/// A connection's unwritten bytes beyond which producers are not drained.
const WRITE_BUFFER_SOFT_MAX_BYTES: usize = 8 << 20;
/// Unauthenticated connections held at once; more are closed at accept.
const PENDING_CONNECTIONS_MAX: usize = 64;

#[derive(Debug, Clone)]
pub struct PeerAddress {
    pub id: u32,
    /// Where to dial this peer (may be a proxy in front of it).
    pub address: SocketAddr,
}

#[derive(Clone)]
pub struct NodeConfig {
    pub cluster_id: String,
    pub process_id: u32,
    pub listen: SocketAddr,
    /// Every other process of the cluster.
    pub peers: Vec<PeerAddress>,
    pub secret: Arc<ClusterSecret>,
    pub liveness: LivenessConfig,
    /// Frames a channel may have unacked; receivers size their queues to it.
    pub window_frames: usize,
    pub window_bytes: usize,
    pub reconnect_base_ms: u64,
    pub reconnect_max_ms: u64,
    /// A peer unreachable this long fails the run.
    pub peer_lost_ms: u64,
    /// Seeds nonces' mixing and backoff jitter (nonces also mix in OS entropy).
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

    fn get(&self) -> u64 {
        self.consumed_through.load(Ordering::Acquire)
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
}

enum Command {
    AddOut(OutChannel),
    AddIn(InChannel),
}

/// A running I/O thread.
pub struct Node {
    waker: Arc<Waker>,
    commands: Sender<Command>,
    stop: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<NodeStats>>,
    local_addr: SocketAddr,
    /// Frames queued or unacked on all out channels, as of the loop's last turn.
    in_flight: Arc<AtomicU64>,
    /// Set when the run is over: peers leaving is expected, not news.
    closing: Arc<AtomicBool>,
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
        let (commands, command_rx) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(Mutex::new(None));
        let in_flight = Arc::new(AtomicU64::new(0));
        let closing = Arc::new(AtomicBool::new(false));
        let shared = Shared {
            failure: Arc::clone(&failure),
            in_flight: Arc::clone(&in_flight),
            closing: Arc::clone(&closing),
        };
        let mut io_loop = IoLoop::new(config, poll, listener, command_rx, shared);
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("verity-net".into())
            .spawn(move || io_loop.run(&thread_stop))?;
        Ok(Node {
            waker,
            commands,
            stop,
            failure,
            thread: Some(thread),
            local_addr,
            in_flight,
            closing,
        })
    }

    /// The run is over: from now on peers disconnecting is expected.
    pub fn closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Waits until every frame handed over so far is acked by its peer (or
    /// `timeout` passes). Returns whether all were.
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
        let _ = self.commands.send(Command::AddOut(channel));
        let _ = self.waker.wake();
    }

    pub fn add_in(&self, channel: InChannel) {
        let _ = self.commands.send(Command::AddIn(channel));
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
        self.thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }
}

struct OutState {
    peer: u32,
    frames: Receiver<Vec<u8>>,
    sender: ChannelSender,
    producer_gone: bool,
}

struct InState {
    peer: u32,
    /// `None` until the consumer registers; frames wait in `unclaimed`.
    frames: Option<Sender<Frame>>,
    progress: Option<Arc<ConsumerProgress>>,
    receiver: ChannelReceiver,
    unclaimed: Vec<Frame>,
    acked: u64,
}

/// One TCP connection, authenticated or not yet.
struct Conn {
    stream: TcpStream,
    decoder: FrameDecoder,
    write_buf: Vec<u8>,
    written: usize,
    handshake: Handshake,
    /// Set once the handshake names and proves the peer.
    peer: Option<u32>,
    /// The peer this connection was dialled to, if we dialled.
    dialled: Option<u32>,
    liveness: PeerLiveness,
}

struct Peer {
    address: SocketAddr,
    /// The higher id dials; the lower one accepts.
    dials: bool,
    conn: Option<usize>,
    backoff: Backoff,
    next_dial_ms: u64,
    unreachable_since_ms: Option<u64>,
}

struct IoLoop {
    config: NodeConfig,
    poll: Poll,
    listener: TcpListener,
    commands: Receiver<Command>,
    started: Instant,
    conns: BTreeMap<usize, Conn>,
    next_token: usize,
    peers: BTreeMap<u32, Peer>,
    outs: BTreeMap<u32, OutState>,
    ins: BTreeMap<u32, InState>,
    rng: u64,
    stats: NodeStats,
    shared: Shared,
}

/// What the loop shares with its `Node` handle.
struct Shared {
    failure: Arc<Mutex<Option<String>>>,
    in_flight: Arc<AtomicU64>,
    closing: Arc<AtomicBool>,
}

impl IoLoop {
    fn new(
        config: NodeConfig,
        poll: Poll,
        listener: TcpListener,
        commands: Receiver<Command>,
        shared: Shared,
    ) -> Self {
        let peers = config
            .peers
            .iter()
            .map(|p| {
                let peer = Peer {
                    address: p.address,
                    dials: config.process_id > p.id,
                    conn: None,
                    backoff: Backoff::new(config.reconnect_base_ms, config.reconnect_max_ms),
                    next_dial_ms: 0,
                    unreachable_since_ms: Some(0),
                };
                (p.id, peer)
            })
            .collect();
        let rng = config.seed ^ entropy();
        IoLoop {
            config,
            poll,
            listener,
            commands,
            started: Instant::now(),
            conns: BTreeMap::new(),
            next_token: FIRST_CONNECTION,
            peers,
            outs: BTreeMap::new(),
            ins: BTreeMap::new(),
            rng,
            stats: NodeStats::default(),
            shared,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn nonce(&mut self) -> [u8; 32] {
        let mut nonce = [0; 32];
        for part in nonce.chunks_mut(8) {
            let word = self.random() ^ entropy();
            part.copy_from_slice(&word.to_le_bytes());
        }
        nonce
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
                    token => readable.push(token.0),
                }
            }
            self.take_commands();
            for token in readable {
                self.read_conn(token);
            }
            self.pump_producers();
            self.send_acks();
            self.tick_timers();
            self.flush_all();
            let in_flight: usize = self
                .outs
                .values()
                .map(|o| o.frames.len() + o.sender.buffered_batches())
                .sum();
            self.shared.in_flight.store(in_flight as u64, Ordering::Release);
        }
        self.flush_all();
        self.stats
    }

    fn closing(&self) -> bool {
        self.shared.closing.load(Ordering::Acquire)
    }

    fn fail(&self, message: String) {
        if self.closing() {
            return;
        }
        let mut failure = self.shared.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            eprintln!("verity: net: {message}");
            *failure = Some(message);
        }
    }

    fn take_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::AddOut(out) => {
                    let sender =
                        ChannelSender::new(out.channel, self.config.window_bytes, self.config.window_frames);
                    let state = OutState {
                        peer: out.peer,
                        frames: out.frames,
                        sender,
                        producer_gone: false,
                    };
                    assert!(
                        self.outs.insert(out.channel, state).is_none(),
                        "channel {} added twice",
                        out.channel
                    );
                }
                Command::AddIn(input) => {
                    let state = self.in_state(input.channel, input.peer);
                    assert!(state.frames.is_none(), "channel {} added twice", input.channel);
                    for frame in state.unclaimed.drain(..) {
                        input
                            .frames
                            .try_send(frame)
                            .expect("a queue holds a whole window");
                    }
                    state.frames = Some(input.frames);
                    state.progress = Some(input.progress);
                }
            }
        }
    }

    fn in_state(&mut self, channel: u32, peer: u32) -> &mut InState {
        self.ins.entry(channel).or_insert_with(|| InState {
            peer,
            frames: None,
            progress: None,
            receiver: ChannelReceiver::new(channel),
            unclaimed: Vec::new(),
            acked: 0,
        })
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let pending = self.conns.values().filter(|c| c.peer.is_none()).count();
                    if pending >= PENDING_CONNECTIONS_MAX {
                        continue; // dropped: closes it
                    }
                    let _ = stream.set_nodelay(true);
                    self.add_conn(stream, None);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    eprintln!("verity: net: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn add_conn(&mut self, mut stream: TcpStream, dialled: Option<u32>) -> Option<usize> {
        let token = self.next_token;
        self.next_token += 1;
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut stream, Token(token), interest) {
            eprintln!("verity: net: cannot register a connection: {e}");
            return None;
        }
        let identity = Identity {
            cluster_id: self.config.cluster_id.clone(),
            process_id: self.config.process_id,
        };
        let nonce = self.nonce();
        let mut handshake = Handshake::new(identity, Arc::clone(&self.config.secret), nonce, dialled);
        let mut write_buf = Vec::new();
        handshake.start(&mut write_buf);
        let now = self.now_ms();
        let conn = Conn {
            stream,
            decoder: FrameDecoder::new(),
            write_buf,
            written: 0,
            handshake,
            peer: None,
            dialled,
            liveness: PeerLiveness::new(self.config.liveness, now),
        };
        self.conns.insert(token, conn);
        Some(token)
    }

    fn close_conn(&mut self, token: usize, why: &str) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if let (None, Some(peer_id)) = (conn.peer, conn.dialled) {
            // A dial that failed before the handshake: try again after backoff.
            let now = self.now_ms();
            let random = self.random();
            if let Some(peer) = self.peers.get_mut(&peer_id) {
                peer.next_dial_ms = now + peer.backoff.next_delay_ms(random).max(1);
            }
        }
        if let Some(peer_id) = conn.peer {
            self.stats.connections_lost += 1;
            if !self.closing() {
                eprintln!("verity: net: connection to process {peer_id} closed: {why}");
            }
            let now = self.now_ms();
            let random = self.random();
            if let Some(peer) = self.peers.get_mut(&peer_id) {
                peer.conn = None;
                peer.unreachable_since_ms.get_or_insert(now);
                peer.next_dial_ms = now + peer.backoff.next_delay_ms(random).max(1);
            }
        }
    }

    fn read_conn(&mut self, token: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(&token) else {
                return;
            };
            match conn.decoder.read_from(&mut conn.stream) {
                Ok(0) => return self.close_conn(token, "closed by the peer"),
                Ok(read) => self.stats.bytes_received += read as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.close_conn(token, &format!("read failed: {e}")),
            }
            loop {
                let Some(conn) = self.conns.get_mut(&token) else {
                    return;
                };
                match conn.decoder.next_frame() {
                    Ok(Some(frame)) => {
                        if let Err(why) = self.on_frame(token, frame) {
                            return self.close_conn(token, &why);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return self.close_conn(token, &format!("bad frame: {e}")),
                }
            }
        }
    }

    fn on_frame(&mut self, token: usize, frame: Frame) -> Result<(), String> {
        let now = self.now_ms();
        let conn = self.conns.get_mut(&token).expect("reading a live connection");
        conn.liveness.on_heard(now);
        self.stats.frames_received += 1;
        let Some(peer) = conn.peer else {
            return self.on_handshake_frame(token, frame);
        };
        match frame.header.kind {
            FrameKind::Data => self.on_data(peer, frame),
            FrameKind::Ack => match self.outs.get_mut(&frame.header.channel) {
                Some(out) if out.peer == peer => out
                    .sender
                    .on_ack(frame.header.first_seq)
                    .map_err(|e| format!("bad ack: {e}")),
                _ => Err(format!(
                    "ack for channel {:#x}, which sends nothing to it",
                    frame.header.channel
                )),
            },
            FrameKind::Heartbeat => Ok(()),
            other => Err(format!("unexpected {other:?} frame after the handshake")),
        }
    }

    fn on_handshake_frame(&mut self, token: usize, frame: Frame) -> Result<(), String> {
        let conn = self.conns.get_mut(&token).expect("live connection");
        let status = match conn.handshake.on_frame(&frame, &mut conn.write_buf) {
            Ok(status) => status,
            Err(e) => {
                self.stats.peers_refused += 1;
                eprintln!("verity: net: refused a connection: {e}");
                auth::write_refusal(&mut conn.write_buf, &e.to_string());
                let _ = flush(conn);
                return Err(format!("peer refused: {e}"));
            }
        };
        let HandshakeStatus::Established {
            peer_process_id: peer_id,
        } = status
        else {
            return Ok(());
        };
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            self.stats.peers_refused += 1;
            eprintln!("verity: net: refused a connection: process {peer_id} is not in this cluster");
            return Err(format!("peer refused: process {peer_id} is not in this cluster"));
        };
        if let Some(old) = peer.conn.replace(token) {
            self.conns.remove(&old); // a stale connection the peer has given up on
        }
        peer.unreachable_since_ms = None;
        peer.backoff.reset();
        self.stats.connections += 1;
        let conn = self.conns.get_mut(&token).expect("live connection");
        conn.peer = Some(peer_id);
        // Everything the peer has not acked goes again; it drops what it has.
        for out in self.outs.values().filter(|o| o.peer == peer_id) {
            for (_, _, bytes) in out.sender.unacked() {
                conn.write_buf.extend_from_slice(bytes);
                self.stats.frames_resent += 1;
            }
        }
        for (channel, input) in self.ins.iter_mut().filter(|(_, i)| i.peer == peer_id) {
            let consumed = input.progress.as_ref().map_or(0, |p| p.get());
            if consumed > 0 {
                encode_frame(&mut conn.write_buf, FrameKind::Ack, *channel, consumed, &[]);
            }
            input.acked = consumed;
        }
        Ok(())
    }

    fn on_data(&mut self, peer: u32, frame: Frame) -> Result<(), String> {
        let channel = frame.header.channel;
        let state = self.in_state(channel, peer);
        if state.peer != peer {
            return Err(format!(
                "process {peer} sent on channel {channel:#x} of process {}",
                state.peer
            ));
        }
        match state
            .receiver
            .admit(frame.header.first_seq, frame.header.record_count)
        {
            Admission::Apply { skip_records: 0 } => {
                match &state.frames {
                    Some(queue) => match queue.try_send(frame) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            return Err(format!(
                                "process {peer} overran the window of channel {channel:#x}"
                            ))
                        }
                        // The consumer is done with this channel: nothing to deliver.
                        Err(TrySendError::Disconnected(_)) => {}
                    },
                    None => state.unclaimed.push(frame),
                }
                Ok(())
            }
            Admission::Apply { skip_records } => Err(format!(
                "frame overlaps what channel {channel:#x} applied by {skip_records} records"
            )),
            Admission::Duplicate => {
                self.stats.duplicates_dropped += 1;
                Ok(())
            }
            Admission::Gap { expected_seq } => Err(format!(
                "channel {channel:#x} skipped from {expected_seq} to {}",
                frame.header.first_seq
            )),
        }
    }

    /// Moves frames from producer queues into retransmit buffers and onto the wire.
    fn pump_producers(&mut self) {
        for out in self.outs.values_mut() {
            let conn_token = self.peers.get(&out.peer).and_then(|p| p.conn);
            let mut conn = conn_token.and_then(|t| self.conns.get_mut(&t));
            if conn
                .as_ref()
                .is_some_and(|c| c.write_buf.len() - c.written > WRITE_BUFFER_SOFT_MAX_BYTES)
            {
                continue;
            }
            for _ in 0..FRAMES_PER_CHANNEL_TURN_MAX {
                if !out
                    .sender
                    .has_room(crate::frame::FRAME_SIZE_MAX_BYTES.min(self.config.window_bytes / 2))
                {
                    break;
                }
                let bytes = match out.frames.try_recv() {
                    Ok(bytes) => bytes,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        out.producer_gone = true;
                        break;
                    }
                };
                let (first_seq, count) = peek_numbers(&bytes).expect("producers hand over whole frames");
                let expected = out.sender.next_seq();
                assert_eq!(
                    first_seq,
                    expected,
                    "producer numbered channel {:#x} wrongly",
                    out.sender.channel()
                );
                if let Some(conn) = conn.as_mut() {
                    conn.write_buf.extend_from_slice(&bytes);
                    self.stats.frames_sent += 1;
                }
                out.sender.record_sent(count, bytes.into());
            }
        }
    }

    fn send_acks(&mut self) {
        for (channel, input) in self.ins.iter_mut() {
            let Some(progress) = &input.progress else { continue };
            let consumed = progress.get();
            if consumed <= input.acked {
                continue;
            }
            let token = self.peers.get(&input.peer).and_then(|p| p.conn);
            if let Some(conn) = token.and_then(|t| self.conns.get_mut(&t)) {
                encode_frame(&mut conn.write_buf, FrameKind::Ack, *channel, consumed, &[]);
                input.acked = consumed;
            }
        }
    }

    fn tick_timers(&mut self) {
        let now = self.now_ms();
        let mut dead = Vec::new();
        for (token, conn) in self.conns.iter_mut() {
            if conn.liveness.is_dead(now) {
                dead.push(*token);
            } else if conn.peer.is_some() && conn.liveness.heartbeat_due(now) {
                encode_frame(&mut conn.write_buf, FrameKind::Heartbeat, 0, 0, &[]);
                conn.liveness.on_sent(now);
            }
        }
        for token in dead {
            let timeout = self.config.liveness.peer_timeout_ms;
            self.close_conn(token, &format!("no frame for {timeout} ms"));
        }
        let dial: Vec<(u32, SocketAddr)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.dials && p.conn.is_none() && p.next_dial_ms <= now)
            .map(|(id, p)| (*id, p.address))
            .collect();
        for (id, address) in dial {
            self.dial(id, address, now);
        }
        for (id, peer) in &self.peers {
            if let Some(since) = peer.unreachable_since_ms {
                if now.saturating_sub(since) > self.config.peer_lost_ms {
                    let lost = self.config.peer_lost_ms;
                    self.fail(format!(
                        "process {id} at {} unreachable for {lost} ms",
                        peer.address
                    ));
                }
            }
        }
    }

    fn dial(&mut self, id: u32, address: SocketAddr, now: u64) {
        let connected = TcpStream::connect(address).ok().and_then(|stream| {
            let _ = stream.set_nodelay(true);
            self.add_conn(stream, Some(id))
        });
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        match connected {
            // The handshake decides whether it becomes the peer's connection;
            // until then, don't dial again.
            Some(_) => peer.next_dial_ms = now + self.config.liveness.peer_timeout_ms,
            None => {
                let random = self.rng;
                peer.next_dial_ms = now + peer.backoff.next_delay_ms(random).max(1);
            }
        }
    }

    fn flush_all(&mut self) {
        let tokens: Vec<usize> = self.conns.keys().copied().collect();
        for token in tokens {
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            match flush(conn) {
                Ok(written) => self.stats.bytes_sent += written as u64,
                Err(e) => self.close_conn(token, &format!("write failed: {e}")),
            }
        }
    }
}

/// Writes as much of the connection's buffer as the socket takes.
fn flush(conn: &mut Conn) -> io::Result<usize> {
    let mut total = 0;
    while conn.written < conn.write_buf.len() {
        match conn.stream.write(&conn.write_buf[conn.written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.written += n;
                total += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Not connected yet (a dial in progress): try again next turn.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
            Err(e) => return Err(e),
        }
    }
    if conn.written == conn.write_buf.len() {
        conn.write_buf.clear();
        conn.written = 0;
    } else if conn.written > conn.write_buf.len() / 2 {
        conn.write_buf.drain(..conn.written);
        conn.written = 0;
    }
    Ok(total)
}

/// Bits the OS mixed into hashing, so nonces differ between processes and runs.
fn entropy() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish()
}
