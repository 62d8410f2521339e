//! The peer protocol of one process, sans I/O: every decision the network
//! thread makes about its peers, with no socket, clock or OS randomness in it.
//!
//! Events come in — a connection opened (accepted, or dialled to peer N),
//! bytes arrived on it, it closed, a tick at `now_ms`, a producer has frames on
//! a channel, a consumer consumed through a sequence — and what the protocol
//! wants done comes out: bytes to write on a connection (`output`), and
//! `Action`s (dial, close with a reason, deliver a frame, the cluster failed,
//! a log event). It owns the handshake of every connection, frame decoding,
//! each channel's sender (window, retransmit buffer) and receiver (dedup),
//! which connection is each peer's, resend after reconnect, acks of consumed
//! progress, heartbeats and liveness, dial scheduling with backoff and
//! jitter, and the peer-lost failure.
//!
//! Two drivers run this very code: `node` (mio sockets, the OS clock, OS
//! randomness) in production, and the simulator's links (virtual clocks, a
//! seeded RNG, faults) in `verity sim`. So what the simulator tests is what
//! production runs.

use crate::auth::{self, ClusterSecret, Handshake, HandshakeStatus, Identity};
use crate::channel::{Admission, ChannelReceiver, ChannelSender};
use crate::frame::{encode_frame, peek_numbers, Frame, FrameDecoder, FrameKind, FRAME_SIZE_MAX_BYTES};
use crate::liveness::{Backoff, LivenessConfig, PeerLiveness};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;

/// A connection, as the driver names it; unique per protocol instance.
pub type ConnId = u64;

/// Frames taken from one producer per `send_from` call, so one busy channel
/// cannot starve the others or the socket reads.
pub const FRAMES_PER_CHANNEL_TURN_MAX: usize = 64;
/// A connection's unwritten bytes beyond which producers are not drained
/// (the default of `ProtocolLimits::write_backlog_soft_max_bytes`).
pub const WRITE_BACKLOG_SOFT_MAX_BYTES: usize = 8 << 20;
/// Unauthenticated connections held at once; more are closed when opened.
pub const PENDING_CONNECTIONS_MAX: usize = 64;
/// Bytes an unauthenticated peer may have buffered: a hello and a proof are
/// far smaller, and a stranger must not make this process hold a whole
/// maximum-size frame per pending connection.
pub const HANDSHAKE_BYTES_MAX: usize = 64 << 10;
/// Channels a peer may send on before their consumer registers (the default
/// of `ProtocolLimits::unclaimed_channels_max`). Frames can arrive before the
/// local side has wired a channel (a worker wires after the job arrives), but
/// a peer must not make this process keep state for any channel id it names.
pub const UNCLAIMED_CHANNELS_MAX: usize = 4096;
/// Frames held, over all unclaimed channels, before a connection that sends
/// more is closed (its sender resends them after the reconnect).
pub const UNCLAIMED_FRAMES_MAX: usize = 16_384;
/// Bytes held, over all unclaimed channels, likewise.
pub const UNCLAIMED_BYTES_MAX: usize = 256 << 20;

/// How much the protocol holds for a connection and for channels nobody
/// claimed yet. Production runs the defaults; the simulator draws small ones
/// so that every limit is met and its way out (a paused producer, a closed
/// connection and a resend) is exercised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolLimits {
    pub write_backlog_soft_max_bytes: usize,
    pub unclaimed_channels_max: usize,
    pub unclaimed_frames_max: usize,
    pub unclaimed_bytes_max: usize,
}

impl Default for ProtocolLimits {
    fn default() -> Self {
        ProtocolLimits {
            write_backlog_soft_max_bytes: WRITE_BACKLOG_SOFT_MAX_BYTES,
            unclaimed_channels_max: UNCLAIMED_CHANNELS_MAX,
            unclaimed_frames_max: UNCLAIMED_FRAMES_MAX,
            unclaimed_bytes_max: UNCLAIMED_BYTES_MAX,
        }
    }
}

/// Where the protocol gets randomness: handshake nonces and dial jitter.
/// Production draws from the OS; the simulator from its seed.
pub trait Entropy {
    fn nonce(&mut self) -> [u8; auth::NONCE_BYTES];
    fn next_u64(&mut self) -> u64;
}

/// Seeded randomness (SplitMix64), for the simulator and tests. Never for
/// production nonces: they must be unpredictable.
#[derive(Debug, Clone)]
pub struct SeededEntropy {
    state: u64,
}

impl SeededEntropy {
    pub fn new(seed: u64) -> Self {
        SeededEntropy { state: seed }
    }
}

impl Entropy for SeededEntropy {
    fn nonce(&mut self) -> [u8; auth::NONCE_BYTES] {
        let mut nonce = [0; auth::NONCE_BYTES];
        for part in nonce.chunks_mut(8) {
            part.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        nonce
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Bugs a test can plant in the shared protocol code to prove the simulator
/// finds them. All off in production; nothing but tests and `verity sim
/// --plant-bug` sets them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProtocolBugs {
    /// After a reconnect, resend nothing that was unacked.
    pub no_retransmit: bool,
    /// After a reconnect, resend from the second unacked frame on.
    pub resend_from_wrong_seq: bool,
    /// Take data and acks on a channel from a peer that does not own it.
    pub accept_other_peers_channel: bool,
    /// Deliver a frame the receiver already had as if it were new.
    pub admit_duplicate_as_new: bool,
    /// After a reconnect, the receiver resumes one record past what it applied.
    pub resume_one_past_applied: bool,
    /// Ack one record more than the consumer took (a relay's off-by-one).
    pub ack_one_past_consumed: bool,
    /// Take a peer that comes back with a new incarnation (it restarted, its
    /// channels start over) for its old life.
    pub ignore_peer_restart: bool,
}

/// How full one channel's window is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InFlight {
    pub frames: usize,
    pub bytes: usize,
}

#[derive(Clone)]
pub struct ProtocolConfig {
    pub cluster_id: String,
    pub process_id: u32,
    /// Every other process of the cluster.
    pub peers: Vec<u32>,
    pub secret: Arc<ClusterSecret>,
    pub liveness: LivenessConfig,
    /// Frames a channel may have unacked; receivers size their queues to it.
    pub window_frames: usize,
    pub window_bytes: usize,
    pub reconnect_base_ms: u64,
    pub reconnect_max_ms: u64,
    /// A peer unreachable this long fails the run.
    pub peer_lost_ms: u64,
    pub limits: ProtocolLimits,
    pub bugs: ProtocolBugs,
}

/// Something the protocol wants its driver to do (besides writing `output`).
#[derive(Debug)]
pub enum Action {
    /// Open a connection to `peer`, then report `on_connected` (with
    /// `dialled: Some(peer)`) or `on_dial_failed`.
    Dial { peer: u32 },
    /// Write `last_words` if the connection takes them, then close it. The
    /// protocol has forgotten the connection already.
    Close {
        conn: ConnId,
        reason: String,
        last_words: Vec<u8>,
    },
    /// Hand a frame to the consumer of `channel`.
    Deliver { channel: u32, frame: Frame },
    /// The cluster cannot go on (reported once).
    Failed { reason: String },
    /// For the log.
    Log(PeerEvent),
}

/// What happened, for the log: typed, so tests and the simulator can see it;
/// the production driver renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    Connected {
        peer: u32,
        conn: ConnId,
    },
    ConnectionLost {
        peer: u32,
        reason: String,
    },
    HandshakeRefused {
        conn: ConnId,
        reason: String,
    },
    ProtocolViolation {
        conn: ConnId,
        peer: u32,
        reason: String,
    },
    /// Frames held for a channel whose consumer later registered for another
    /// peer: they were dropped (the right peer resends them).
    UnclaimedDropped {
        channel: u32,
        held_for: u32,
        claimed_for: u32,
    },
}

impl fmt::Display for PeerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerEvent::Connected { peer, conn } => write!(f, "connected to process {peer} (connection {conn})"),
            PeerEvent::ConnectionLost { peer, reason } => {
                write!(f, "connection to process {peer} closed: {reason}")
            }
            PeerEvent::HandshakeRefused { conn, reason } => {
                write!(f, "refused connection {conn}: {reason}")
            }
            PeerEvent::ProtocolViolation { conn, peer, reason } => {
                write!(f, "process {peer} broke the protocol on connection {conn}: {reason}")
            }
            PeerEvent::UnclaimedDropped {
                channel,
                held_for,
                claimed_for,
            } => write!(
                f,
                "dropped frames process {held_for} sent on channel {channel:#x}, which belongs to process {claimed_for}"
            ),
        }
    }
}

/// One peer's traffic since this protocol started, for live metrics: what
/// crossed its authenticated connections (bytes and frames before a
/// handshake named the peer are not counted here).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PeerTraffic {
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Unacked frames written again when a connection to the peer opened
    /// (after a reconnect, or queued before the first): not in `frames_sent`.
    pub frames_resent: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Counts for the end-of-run report and the simulator's summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolStats {
    pub frames_sent: u64,
    pub frames_received: u64,
    pub frames_resent: u64,
    pub duplicates_dropped: u64,
    pub connections: u64,
    /// Connections to a peer after its first.
    pub reconnects: u64,
    pub connections_lost: u64,
    pub handshakes_refused: u64,
    /// Times a producer had a frame but the window had no room.
    pub full_windows: u64,
    /// Times a producer was not drained because its connection's unwritten
    /// bytes were past the soft maximum (a slow peer).
    pub backlog_pauses: u64,
    /// Connections closed for sending more than unclaimed channels may hold.
    pub unclaimed_refused: u64,
    /// Connections closed at once because too many were unauthenticated.
    pub pending_refused: u64,
}

/// Channels that have data and no consumer yet, and what they hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unclaimed {
    pub channels: usize,
    pub frames: usize,
    pub bytes: usize,
}

/// A producer's queue of whole encoded `Data` frames, as the driver has it.
pub trait FrameSource {
    fn has_frame(&self) -> bool;
    fn take_frame(&mut self) -> Option<Bytes>;
}

impl FrameSource for VecDeque<Bytes> {
    fn has_frame(&self) -> bool {
        !self.is_empty()
    }
    fn take_frame(&mut self) -> Option<Bytes> {
        self.pop_front()
    }
}

struct Out {
    peer: u32,
    sender: ChannelSender,
}

struct In {
    peer: u32,
    /// False until the consumer registers; delivered frames wait in `held`.
    claimed: bool,
    held: Vec<Frame>,
    /// Payload bytes of `held` (while unclaimed; not kept after).
    held_bytes: usize,
    receiver: ChannelReceiver,
    /// Last sequence of each delivered frame the consumer has not consumed.
    outstanding: VecDeque<u64>,
    consumed: u64,
    acked: u64,
}

struct Conn {
    decoder: FrameDecoder,
    handshake: Handshake,
    /// Set once the handshake names and proves the peer.
    peer: Option<u32>,
    /// The peer this connection was dialled to, if we dialled.
    dialled: Option<u32>,
    liveness: PeerLiveness,
    output: Vec<u8>,
    written: usize,
}

impl Conn {
    fn backlog_bytes(&self) -> usize {
        self.output.len() - self.written
    }
}

struct Peer {
    /// The higher id dials; the lower one accepts.
    dials: bool,
    conn: Option<ConnId>,
    connected_before: bool,
    /// The peer's incarnation since its first handshake.
    incarnation: Option<u64>,
    traffic: PeerTraffic,
    backoff: Backoff,
    next_dial_ms: u64,
    unreachable_since_ms: Option<u64>,
}

/// The peer protocol of one process. See the module docs.
pub struct PeerProtocol<E: Entropy> {
    config: ProtocolConfig,
    entropy: E,
    /// This life of the process: drawn at start, named in every hello.
    incarnation: u64,
    conns: BTreeMap<ConnId, Conn>,
    peers: BTreeMap<u32, Peer>,
    outs: BTreeMap<u32, Out>,
    ins: BTreeMap<u32, In>,
    actions: VecDeque<Action>,
    stats: ProtocolStats,
    /// The run is over: peers leaving is expected, not a failure.
    closing: bool,
    failed: bool,
}

impl<E: Entropy> PeerProtocol<E> {
    pub fn new(config: ProtocolConfig, mut entropy: E, now_ms: u64) -> Self {
        assert!(config.window_frames > 0 && config.window_bytes > 0);
        assert!(
            !config.peers.contains(&config.process_id),
            "a process is not its own peer"
        );
        let peers = config
            .peers
            .iter()
            .map(|&id| {
                let peer = Peer {
                    dials: config.process_id > id,
                    conn: None,
                    connected_before: false,
                    incarnation: None,
                    traffic: PeerTraffic::default(),
                    backoff: Backoff::new(config.reconnect_base_ms, config.reconnect_max_ms),
                    next_dial_ms: now_ms,
                    unreachable_since_ms: Some(now_ms),
                };
                (id, peer)
            })
            .collect();
        let incarnation = entropy.next_u64();
        PeerProtocol {
            config,
            entropy,
            incarnation,
            conns: BTreeMap::new(),
            peers,
            outs: BTreeMap::new(),
            ins: BTreeMap::new(),
            actions: VecDeque::new(),
            stats: ProtocolStats::default(),
            closing: false,
            failed: false,
        }
    }

    pub fn config(&self) -> &ProtocolConfig {
        &self.config
    }

    /// This life of the process (see `auth`).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn stats(&self) -> ProtocolStats {
        self.stats
    }

    /// Each peer's traffic so far, in peer id order.
    pub fn peer_traffic(&self) -> impl Iterator<Item = (u32, PeerTraffic)> + '_ {
        self.peers.iter().map(|(id, peer)| (*id, peer.traffic))
    }

    /// The peer a connection's handshake named, if it did.
    fn traffic_of_conn(&mut self, conn: ConnId) -> Option<&mut PeerTraffic> {
        let peer = self.conns.get(&conn)?.peer?;
        self.peers.get_mut(&peer).map(|p| &mut p.traffic)
    }

    /// The next thing to do, in the order the protocol decided them.
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// From now on peers disconnecting is expected.
    pub fn set_closing(&mut self) {
        self.closing = true;
    }

    // ---- channels -------------------------------------------------------

    /// A channel this process sends on to `peer`.
    pub fn add_out(&mut self, channel: u32, peer: u32) {
        let sender = ChannelSender::new(channel, self.config.window_bytes, self.config.window_frames);
        let out = Out { peer, sender };
        assert!(
            self.outs.insert(channel, out).is_none(),
            "channel {channel:#x} added twice"
        );
    }

    /// A channel this process receives from `peer`: frames that arrived before
    /// are delivered now.
    pub fn add_in(&mut self, channel: u32, peer: u32) {
        if let Some(state) = self.ins.get(&channel) {
            assert!(!state.claimed, "channel {channel:#x} added twice");
            if state.peer != peer {
                let held_for = state.peer;
                self.drop_unclaimed(channel);
                self.log(PeerEvent::UnclaimedDropped {
                    channel,
                    held_for,
                    claimed_for: peer,
                });
            }
        }
        let state = self.ins.entry(channel).or_insert_with(|| In::new(peer));
        state.claimed = true;
        for frame in std::mem::take(&mut state.held) {
            self.actions.push_back(Action::Deliver { channel, frame });
        }
    }

    fn drop_unclaimed(&mut self, channel: u32) {
        self.ins.remove(&channel);
    }

    /// What is held for channels nobody claimed yet, within
    /// `ProtocolLimits`. Counted when asked (only while frames for unclaimed
    /// channels arrive, at startup), so there is no running total to keep
    /// right.
    pub fn unclaimed(&self) -> Unclaimed {
        self.ins
            .values()
            .filter(|i| !i.claimed)
            .fold(Unclaimed::default(), |sum, i| Unclaimed {
                channels: sum.channels + 1,
                frames: sum.frames + i.held.len(),
                bytes: sum.bytes + i.held_bytes,
            })
    }

    /// The consumer of `channel` took everything through `through_seq`.
    pub fn on_consumed(&mut self, channel: u32, through_seq: u64) {
        let through_seq = through_seq + u64::from(self.config.bugs.ack_one_past_consumed);
        let Some(state) = self.ins.get_mut(&channel) else {
            return;
        };
        if through_seq <= state.consumed {
            return;
        }
        state.consumed = through_seq;
        while state.outstanding.front().is_some_and(|last| *last <= through_seq) {
            state.outstanding.pop_front();
        }
    }

    /// Whether `channel`'s window takes one more frame now: the one rule
    /// both drivers admit frames by. A frame may be up to the frame size
    /// limit, so the room asked for is the worst case the window allows.
    pub fn window_has_room(&self, channel: u32) -> bool {
        self.outs[&channel].sender.has_room(self.room_per_frame())
    }

    /// The window room a frame needs: the worst case, the largest frame the
    /// window allows.
    fn room_per_frame(&self) -> usize {
        FRAME_SIZE_MAX_BYTES.min(self.config.window_bytes / 2)
    }

    /// Moves frames from a producer into the window and onto the peer's
    /// connection (if there is one; otherwise they wait for the resend).
    /// Returns how many it took.
    pub fn send_from(&mut self, channel: u32, source: &mut impl FrameSource) -> usize {
        let room_per_frame = self.room_per_frame();
        let out = self
            .outs
            .get_mut(&channel)
            .expect("sending on a channel added with add_out");
        let conn_id = self.peers.get(&out.peer).and_then(|p| p.conn);
        let mut conn = conn_id.and_then(|c| self.conns.get_mut(&c));
        if conn
            .as_ref()
            .is_some_and(|c| c.backlog_bytes() > self.config.limits.write_backlog_soft_max_bytes)
        {
            self.stats.backlog_pauses += 1;
            return 0;
        }
        let peer_id = out.peer;
        let mut taken = 0;
        let mut sent = 0;
        while taken < FRAMES_PER_CHANNEL_TURN_MAX && source.has_frame() {
            if !out.sender.has_room(room_per_frame) {
                self.stats.full_windows += 1;
                break;
            }
            let Some(bytes) = source.take_frame() else { break };
            let (first_seq, count) = peek_numbers(&bytes).expect("producers hand over whole frames");
            assert_eq!(
                first_seq,
                out.sender.next_seq(),
                "producer numbered channel {channel:#x} wrongly"
            );
            if let Some(conn) = conn.as_mut() {
                conn.output.extend_from_slice(&bytes);
                self.stats.frames_sent += 1;
                sent += 1;
            }
            out.sender.record_sent(count, bytes);
            taken += 1;
        }
        if let Some(peer) = self.peers.get_mut(&peer_id) {
            peer.traffic.frames_sent += sent;
        }
        taken
    }

    /// Frames handed over and not yet acked, over all channels.
    pub fn unacked_frames(&self) -> usize {
        self.outs.values().map(|o| o.sender.buffered_batches()).sum()
    }

    /// What a process that exits now would lose: frames not yet acked, acks
    /// of frames its consumers took that are not yet written to a live
    /// connection, and bytes not yet handed to one. Zero means everything
    /// this process owes its peers is out (a worker acks `Shutdown` before it
    /// exits). An ack owed to a peer without a connection is not counted:
    /// it is sent again on a reconnect, and the peer may be gone for good.
    pub fn unsettled(&self) -> usize {
        // Called on every turn of the I/O loop: while frames are in flight
        // (most of a run) that is the answer, without looking further.
        let unacked = self.unacked_frames();
        if unacked > 0 {
            return unacked;
        }
        let connected = |peer: &u32| self.peers.get(peer).is_some_and(|p| p.conn.is_some());
        let acks_owed = self
            .ins
            .values()
            .filter(|i| i.consumed > i.acked && connected(&i.peer))
            .count();
        let unwritten = self.conns.values().filter(|c| !c.output.is_empty()).count();
        acks_owed + unwritten
    }

    /// Frames and bytes of `channel` handed over and not yet acked (none
    /// for a channel this process does not send on).
    pub fn channel_in_flight(&self, channel: u32) -> InFlight {
        self.outs.get(&channel).map_or(InFlight::default(), |o| InFlight {
            frames: o.sender.buffered_batches(),
            bytes: o.sender.buffered_bytes(),
        })
    }

    // ---- connections ----------------------------------------------------

    /// A connection opened: accepted (`dialled: None`) or dialled to a peer.
    pub fn on_connected(&mut self, conn: ConnId, dialled: Option<u32>, now_ms: u64) {
        assert!(!self.conns.contains_key(&conn), "connection {conn} opened twice");
        let pending = self.conns.values().filter(|c| c.peer.is_none()).count();
        if pending >= PENDING_CONNECTIONS_MAX {
            self.stats.pending_refused += 1;
            self.actions.push_back(Action::Close {
                conn,
                reason: "too many unauthenticated connections".into(),
                last_words: Vec::new(),
            });
            return;
        }
        let identity = Identity {
            cluster_id: self.config.cluster_id.clone(),
            process_id: self.config.process_id,
            incarnation: self.incarnation,
        };
        let nonce = self.entropy.nonce();
        let mut handshake = Handshake::new(identity, Arc::clone(&self.config.secret), nonce, dialled);
        let mut output = Vec::new();
        handshake.start(&mut output);
        let state = Conn {
            decoder: FrameDecoder::new(),
            handshake,
            peer: None,
            dialled,
            liveness: PeerLiveness::new(self.config.liveness, now_ms),
            output,
            written: 0,
        };
        self.conns.insert(conn, state);
    }

    /// A dial the driver could not even start (no route, refused at once).
    pub fn on_dial_failed(&mut self, peer: u32, now_ms: u64) {
        self.retry_later(peer, now_ms);
    }

    /// The driver saw the connection end (closed by the peer, a read or write
    /// failed).
    pub fn on_closed(&mut self, conn: ConnId, reason: &str, now_ms: u64) {
        let Some(state) = self.conns.remove(&conn) else {
            return;
        };
        self.forget(conn, state, reason, now_ms);
    }

    /// Closes a connection for a reason of the protocol's own.
    fn close(&mut self, conn: ConnId, reason: String, now_ms: u64) {
        let Some(mut state) = self.conns.remove(&conn) else {
            return;
        };
        let last_words = std::mem::take(&mut state.output).split_off(state.written);
        self.forget(conn, state, &reason, now_ms);
        self.actions.push_back(Action::Close {
            conn,
            reason,
            last_words,
        });
    }

    fn forget(&mut self, conn: ConnId, state: Conn, reason: &str, now_ms: u64) {
        match (state.peer, state.dialled) {
            (Some(peer_id), _) => {
                let Some(peer) = self.peers.get_mut(&peer_id) else {
                    return;
                };
                if peer.conn != Some(conn) {
                    return; // a stale connection, already replaced
                }
                peer.conn = None;
                peer.unreachable_since_ms.get_or_insert(now_ms);
                self.stats.connections_lost += 1;
                if !self.closing {
                    let reason = reason.to_string();
                    self.log(PeerEvent::ConnectionLost {
                        peer: peer_id,
                        reason,
                    });
                }
                self.retry_later(peer_id, now_ms);
            }
            // A dial that failed before the handshake: try again after backoff.
            (None, Some(peer_id)) => self.retry_later(peer_id, now_ms),
            (None, None) => {}
        }
    }

    fn retry_later(&mut self, peer_id: u32, now_ms: u64) {
        let random = self.entropy.next_u64();
        if let Some(peer) = self.peers.get_mut(&peer_id) {
            peer.next_dial_ms = now_ms + peer.backoff.next_delay_ms(random).max(1);
        }
    }

    /// Bytes written for `peer`'s connection and not yet taken by the
    /// socket (0 without a connection): producers to it are not drained
    /// past `ProtocolLimits::write_backlog_soft_max_bytes`.
    pub fn write_backlog_bytes(&self, peer: u32) -> usize {
        let conn = self.peers.get(&peer).and_then(|p| p.conn);
        conn.map_or(0, |c| self.output(c).len())
    }

    /// Bytes to write on `conn`, oldest first; `advance_output` says how many
    /// were written.
    pub fn output(&self, conn: ConnId) -> &[u8] {
        self.conns.get(&conn).map_or(&[][..], |c| &c.output[c.written..])
    }

    pub fn advance_output(&mut self, conn: ConnId, written_bytes: usize) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        state.written += written_bytes;
        assert!(state.written <= state.output.len(), "wrote more than there was");
        let peer = state.peer;
        if let Some(traffic) = peer
            .and_then(|id| self.peers.get_mut(&id))
            .map(|p| &mut p.traffic)
        {
            traffic.bytes_sent += written_bytes as u64;
        }
        let state = self.conns.get_mut(&conn).expect("looked up above");
        if state.written == state.output.len() {
            state.output.clear();
            state.written = 0;
        } else if state.written > state.output.len() / 2 {
            state.output.drain(..state.written);
            state.written = 0;
        }
    }

    /// All bytes to write on `conn`, taken (for a driver that sends them whole).
    pub fn take_output(&mut self, conn: ConnId) -> Vec<u8> {
        let Some(state) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        let written = std::mem::take(&mut state.written);
        let mut output = std::mem::take(&mut state.output);
        if written > 0 {
            output.drain(..written);
        }
        if let Some(traffic) = self.traffic_of_conn(conn) {
            traffic.bytes_sent += output.len() as u64;
        }
        output
    }

    /// Reads once from `reader` into `conn`'s decoder (no frame is handled:
    /// call `on_received`). For drivers with a readable socket.
    pub fn read_from(&mut self, conn: ConnId, reader: &mut impl Read) -> io::Result<usize> {
        let read = match self.conns.get_mut(&conn) {
            Some(state) => state.decoder.read_from(reader)?,
            None => return Err(io::ErrorKind::NotConnected.into()),
        };
        if let Some(traffic) = self.traffic_of_conn(conn) {
            traffic.bytes_received += read as u64;
        }
        Ok(read)
    }

    /// Bytes arrived on `conn`.
    pub fn on_bytes(&mut self, conn: ConnId, bytes: &[u8], now_ms: u64) {
        if let Some(state) = self.conns.get_mut(&conn) {
            state.decoder.extend_from_slice(bytes);
            if let Some(traffic) = self.traffic_of_conn(conn) {
                traffic.bytes_received += bytes.len() as u64;
            }
            self.on_received(conn, now_ms);
        }
    }

    /// Handles every whole frame that arrived on `conn`.
    pub fn on_received(&mut self, conn: ConnId, now_ms: u64) {
        loop {
            let Some(state) = self.conns.get_mut(&conn) else {
                return;
            };
            match state.decoder.next_frame() {
                Ok(Some(frame)) => {
                    state.liveness.on_heard(now_ms);
                    self.stats.frames_received += 1;
                    if let Some(traffic) = self.traffic_of_conn(conn) {
                        traffic.frames_received += 1;
                    }
                    if let Err(why) = self.on_frame(conn, frame, now_ms) {
                        return self.close(conn, why, now_ms);
                    }
                }
                Ok(None) if state.peer.is_none() && state.decoder.buffered_bytes() > HANDSHAKE_BYTES_MAX => {
                    let reason = format!("more than {HANDSHAKE_BYTES_MAX} bytes before the handshake ended");
                    return self.close(conn, reason, now_ms);
                }
                Ok(None) => return,
                Err(e) => return self.close(conn, format!("bad frame: {e}"), now_ms),
            }
        }
    }

    fn on_frame(&mut self, conn: ConnId, frame: Frame, now_ms: u64) -> Result<(), String> {
        let state = self.conns.get_mut(&conn).expect("reading a live connection");
        let Some(peer) = state.peer else {
            return self.on_handshake_frame(conn, frame, now_ms);
        };
        let violation = match frame.header.kind {
            FrameKind::Data => self.on_data(peer, frame),
            FrameKind::Ack => self.on_ack(peer, &frame),
            FrameKind::Heartbeat => Ok(()),
            other => Err(format!("unexpected {other:?} frame after the handshake")),
        };
        if let Err(reason) = &violation {
            let reason = reason.clone();
            self.log(PeerEvent::ProtocolViolation { conn, peer, reason });
        }
        violation
    }

    fn on_handshake_frame(&mut self, conn: ConnId, frame: Frame, now_ms: u64) -> Result<(), String> {
        let state = self.conns.get_mut(&conn).expect("live connection");
        let status = match state.handshake.on_frame(&frame, &mut state.output) {
            Ok(status) => status,
            Err(e) => {
                auth::write_refusal(&mut state.output, &e.to_string());
                return Err(self.refused(conn, format!("peer refused: {e}")));
            }
        };
        let HandshakeStatus::Established {
            peer_process_id,
            peer_incarnation,
        } = status
        else {
            return Ok(());
        };
        let Some(peer) = self.peers.get_mut(&peer_process_id) else {
            let reason = format!("process {peer_process_id} is not in this cluster");
            return Err(self.refused(conn, format!("peer refused: {reason}")));
        };
        let known = *peer.incarnation.get_or_insert(peer_incarnation);
        if known != peer_incarnation && !self.config.bugs.ignore_peer_restart {
            return Err(self.peer_restarted(conn, peer_process_id));
        }
        peer.incarnation = Some(peer_incarnation);
        self.on_established(conn, peer_process_id, now_ms);
        Ok(())
    }

    /// A peer came back as a new life: what it had received and sent is
    /// gone, and channels numbered from its old life would either drop its
    /// new frames as duplicates or wait forever for resends it cannot make.
    /// This run cannot go on (a run with checkpoints restarts from the last
    /// one); the connection is refused so nothing of it is applied.
    fn peer_restarted(&mut self, conn: ConnId, peer: u32) -> String {
        let reason = format!("process {peer} restarted (a new incarnation): its channels start over");
        if !self.failed && !self.closing {
            self.failed = true;
            self.actions.push_back(Action::Failed {
                reason: reason.clone(),
            });
        }
        self.refused(conn, reason)
    }

    fn refused(&mut self, conn: ConnId, reason: String) -> String {
        self.stats.handshakes_refused += 1;
        self.log(PeerEvent::HandshakeRefused {
            conn,
            reason: reason.clone(),
        });
        reason
    }

    fn on_established(&mut self, conn: ConnId, peer_id: u32, now_ms: u64) {
        let peer = self.peers.get_mut(&peer_id).expect("checked");
        let old = peer.conn.replace(conn);
        peer.unreachable_since_ms = None;
        peer.backoff.reset();
        if std::mem::replace(&mut peer.connected_before, true) {
            self.stats.reconnects += 1;
        }
        self.stats.connections += 1;
        if let Some(old) = old {
            // A stale connection the peer has given up on.
            self.close(old, "replaced by a newer connection".into(), now_ms);
        }
        self.conns.get_mut(&conn).expect("live").peer = Some(peer_id);
        self.log(PeerEvent::Connected { peer: peer_id, conn });
        self.resend_unacked(conn, peer_id);
        self.ack_after_reconnect(conn, peer_id);
    }

    /// Everything the peer has not acked goes again; it drops what it has.
    fn resend_unacked(&mut self, conn: ConnId, peer_id: u32) {
        let bugs = self.config.bugs;
        if bugs.no_retransmit {
            return;
        }
        let state = self.conns.get_mut(&conn).expect("live");
        let mut resent = 0;
        for out in self.outs.values().filter(|o| o.peer == peer_id) {
            let skip = usize::from(bugs.resend_from_wrong_seq);
            for (_, _, bytes) in out.sender.unacked().skip(skip) {
                state.output.extend_from_slice(bytes);
                self.stats.frames_resent += 1;
                resent += 1;
            }
        }
        if let Some(peer) = self.peers.get_mut(&peer_id) {
            peer.traffic.frames_resent += resent;
        }
    }

    /// What was consumed is acked again: acks on the old connection may be lost.
    fn ack_after_reconnect(&mut self, conn: ConnId, peer_id: u32) {
        let bugs = self.config.bugs;
        let state = self.conns.get_mut(&conn).expect("live");
        for (channel, input) in self.ins.iter_mut().filter(|(_, i)| i.peer == peer_id) {
            if bugs.resume_one_past_applied {
                input.receiver.skip_one_for_testing();
            }
            if input.consumed > 0 {
                encode_frame(&mut state.output, FrameKind::Ack, *channel, input.consumed, &[]);
            }
            input.acked = input.consumed;
        }
    }

    fn on_data(&mut self, peer: u32, frame: Frame) -> Result<(), String> {
        let channel = frame.header.channel;
        if !self.ins.contains_key(&channel) {
            self.open_unclaimed(channel, peer)?;
        }
        let window_frames = self.config.window_frames;
        let bugs = self.config.bugs;
        let state = self.ins.get_mut(&channel).expect("present");
        if state.peer != peer && !bugs.accept_other_peers_channel {
            return Err(format!(
                "process {peer} sent on channel {channel:#x} of process {}",
                state.peer
            ));
        }
        let header = frame.header;
        // Judged before anything is applied: a refused frame must stay
        // unapplied, or its resend would be dropped as a duplicate.
        match state.receiver.classify(header.first_seq, header.record_count) {
            Admission::Apply { skip_records: 0 } => {}
            Admission::Duplicate if bugs.admit_duplicate_as_new => {}
            Admission::Duplicate => {
                self.stats.duplicates_dropped += 1;
                return Ok(());
            }
            Admission::Apply { skip_records } => {
                return Err(format!(
                    "frame overlaps what channel {channel:#x} applied by {skip_records} records"
                ))
            }
            Admission::Gap { expected_seq } => {
                return Err(format!(
                    "channel {channel:#x} skipped from {expected_seq} to {}",
                    header.first_seq
                ))
            }
        }
        if state.outstanding.len() >= window_frames && !bugs.admit_duplicate_as_new {
            return Err(format!(
                "process {peer} overran the window of channel {channel:#x}"
            ));
        }
        state.receiver.admit(header.first_seq, header.record_count);
        let last_seq = (header.first_seq + header.record_count as u64).saturating_sub(1);
        state.outstanding.push_back(last_seq);
        if state.claimed {
            self.actions.push_back(Action::Deliver { channel, frame });
        } else {
            state.held_bytes += frame.payload.len();
            state.held.push(frame);
            let limits = self.config.limits;
            let held = self.unclaimed();
            if held.frames > limits.unclaimed_frames_max || held.bytes > limits.unclaimed_bytes_max {
                self.stats.unclaimed_refused += 1;
                // Forget this channel's frames: the sender resends them.
                self.drop_unclaimed(channel);
                return Err("more frames for unclaimed channels than this process holds".into());
            }
        }
        Ok(())
    }

    fn open_unclaimed(&mut self, channel: u32, peer: u32) -> Result<(), String> {
        let unclaimed = self.ins.values().filter(|i| !i.claimed).count();
        let most = self.config.limits.unclaimed_channels_max;
        if unclaimed >= most {
            self.stats.unclaimed_refused += 1;
            return Err(format!(
                "data on channel {channel:#x}, and {most} channels are unclaimed already"
            ));
        }
        self.ins.insert(channel, In::new(peer));
        Ok(())
    }

    fn on_ack(&mut self, peer: u32, frame: &Frame) -> Result<(), String> {
        let channel = frame.header.channel;
        let accept_any = self.config.bugs.accept_other_peers_channel;
        match self.outs.get_mut(&channel) {
            Some(out) if out.peer == peer || accept_any => out
                .sender
                .on_ack(frame.header.first_seq)
                .map_err(|e| format!("bad ack: {e}")),
            _ => Err(format!("ack for channel {channel:#x}, which sends nothing to it")),
        }
    }

    // ---- time -----------------------------------------------------------

    /// Sends acks for what consumers took since the last ones.
    pub fn flush_acks(&mut self) {
        for (channel, input) in self.ins.iter_mut() {
            if input.consumed <= input.acked {
                continue;
            }
            let conn = self.peers.get(&input.peer).and_then(|p| p.conn);
            if let Some(state) = conn.and_then(|c| self.conns.get_mut(&c)) {
                encode_frame(&mut state.output, FrameKind::Ack, *channel, input.consumed, &[]);
                input.acked = input.consumed;
            }
        }
    }

    /// Timers: acks, heartbeats, dead connections, dials, lost peers.
    pub fn on_tick(&mut self, now_ms: u64) {
        self.flush_acks();
        let mut dead = Vec::new();
        for (id, conn) in self.conns.iter_mut() {
            if conn.liveness.is_dead(now_ms) {
                dead.push(*id);
            } else if conn.peer.is_some() && conn.liveness.heartbeat_due(now_ms) {
                encode_frame(&mut conn.output, FrameKind::Heartbeat, 0, 0, &[]);
                conn.liveness.on_sent(now_ms);
            }
        }
        let timeout = self.config.liveness.peer_timeout_ms;
        for conn in dead {
            self.close(conn, format!("no frame for {timeout} ms"), now_ms);
        }
        self.dial_due(now_ms);
        self.check_lost(now_ms);
    }

    fn dial_due(&mut self, now_ms: u64) {
        let wait_ms = self.config.liveness.peer_timeout_ms;
        for (id, peer) in self.peers.iter_mut() {
            if peer.dials && peer.conn.is_none() && peer.next_dial_ms <= now_ms {
                // The handshake decides whether it becomes the peer's
                // connection; until then (or its timeout), don't dial again.
                peer.next_dial_ms = now_ms + wait_ms;
                self.actions.push_back(Action::Dial { peer: *id });
            }
        }
    }

    fn check_lost(&mut self, now_ms: u64) {
        if self.closing || self.failed {
            return;
        }
        let lost_ms = self.config.peer_lost_ms;
        let lost = self.peers.iter().find(|(_, p)| {
            p.unreachable_since_ms
                .is_some_and(|since| now_ms.saturating_sub(since) > lost_ms)
        });
        if let Some((id, _)) = lost {
            self.failed = true;
            let reason = format!("process {id} unreachable for {lost_ms} ms");
            self.actions.push_back(Action::Failed { reason });
        }
    }

    fn log(&mut self, event: PeerEvent) {
        self.actions.push_back(Action::Log(event));
    }

    /// The connections the protocol holds, in id order.
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.keys().copied()
    }

    /// Bytes held by the protocol, for bounds checks in tests and fuzzing.
    pub fn held_bytes(&self) -> usize {
        let conns: usize = self
            .conns
            .values()
            .map(|c| c.output.len() + c.decoder.buffered_bytes())
            .sum();
        conns + self.unclaimed().bytes
    }
}

impl In {
    fn new(peer: u32) -> Self {
        In {
            peer,
            claimed: false,
            held: Vec::new(),
            held_bytes: 0,
            receiver: ChannelReceiver::default(),
            outstanding: VecDeque::new(),
            consumed: 0,
            acked: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(process_id: u32, peers: Vec<u32>) -> ProtocolConfig {
        ProtocolConfig {
            cluster_id: "unit".into(),
            process_id,
            peers,
            secret: Arc::new(ClusterSecret::new(b"a unit test secret, long".to_vec()).expect("long enough")),
            liveness: LivenessConfig {
                peer_timeout_ms: 100,
                heartbeat_interval_ms: 10,
            },
            window_frames: 2,
            window_bytes: 1 << 20,
            reconnect_base_ms: 10,
            reconnect_max_ms: 80,
            peer_lost_ms: 1_000,
            limits: ProtocolLimits::default(),
            bugs: ProtocolBugs::default(),
        }
    }

    #[test]
    fn seeded_entropy_replays_and_nonces_differ() {
        let (mut a, mut b) = (SeededEntropy::new(5), SeededEntropy::new(5));
        assert_eq!(a.nonce(), b.nonce());
        assert_ne!(a.nonce(), SeededEntropy::new(6).nonce());
        assert_ne!(a.nonce(), a.nonce());
    }

    #[test]
    fn only_the_higher_id_dials_and_a_failed_dial_backs_off() {
        let mut low = PeerProtocol::new(config(0, vec![1]), SeededEntropy::new(1), 0);
        low.on_tick(0);
        assert!(low.next_action().is_none(), "the lower id waits to be dialled");
        let mut high = PeerProtocol::new(config(1, vec![0]), SeededEntropy::new(1), 0);
        high.on_tick(0);
        assert!(matches!(high.next_action(), Some(Action::Dial { peer: 0 })));
        high.on_dial_failed(0, 0);
        high.on_tick(4);
        assert!(
            high.next_action().is_none(),
            "at least half the base backoff passes"
        );
        high.on_tick(10);
        assert!(matches!(high.next_action(), Some(Action::Dial { peer: 0 })));
    }

    #[test]
    fn too_many_pending_connections_are_closed_at_once() {
        let mut p = PeerProtocol::new(config(0, vec![1]), SeededEntropy::new(1), 0);
        for conn in 0..=PENDING_CONNECTIONS_MAX as ConnId {
            p.on_connected(conn, None, 0);
        }
        assert_eq!(p.connections().count(), PENDING_CONNECTIONS_MAX);
        assert!(matches!(p.next_action(), Some(Action::Close { .. })));
        assert_eq!(p.stats().pending_refused, 1);
    }
}
