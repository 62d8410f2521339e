//! The sans-IO peer protocol, driven by hand: two processes connect over an
//! in-memory pipe, authenticate, carry a channel in order with acks, resend
//! after a reconnect; a wrong secret, data on another peer's channel, too much
//! for unclaimed channels and a window overrun are refused. And a
//! deterministic fuzz loop: random and mutated bytes on a connection, before
//! and after the handshake, never panic, hang or grow memory without bound.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use verity_net::auth::ClusterSecret;
use verity_net::frame::{encode_frame, Frame, FrameKind, FrameWriter};
use verity_net::liveness::LivenessConfig;
use verity_net::peer::{
    Action, ConnId, Entropy, PeerEvent, PeerProtocol, ProtocolBugs, ProtocolConfig, ProtocolLimits,
    SeededEntropy, UNCLAIMED_FRAMES_MAX,
};

const SECRET: &[u8] = b"a secret for the protocol tests";
const WINDOW_FRAMES: usize = 4;
const CHANNEL: u32 = 0x10;

fn config(process_id: u32, peers: Vec<u32>, secret: &[u8]) -> ProtocolConfig {
    ProtocolConfig {
        cluster_id: "test".into(),
        process_id,
        peers,
        secret: Arc::new(ClusterSecret::new(secret.to_vec()).unwrap()),
        liveness: LivenessConfig {
            peer_timeout_ms: 1_000,
            heartbeat_interval_ms: 100,
        },
        window_frames: WINDOW_FRAMES,
        window_bytes: 1 << 20,
        reconnect_base_ms: 10,
        reconnect_max_ms: 100,
        peer_lost_ms: 60_000,
        limits: ProtocolLimits::default(),
        bugs: ProtocolBugs::default(),
    }
}

fn protocol(process_id: u32, peers: Vec<u32>, secret: &[u8]) -> PeerProtocol<SeededEntropy> {
    PeerProtocol::new(
        config(process_id, peers, secret),
        SeededEntropy::new(process_id as u64 + 1),
        0,
    )
}

fn data_frame(channel: u32, first_seq: u64, records: &[&[u8]]) -> Bytes {
    let mut bytes = Vec::new();
    let mut writer = FrameWriter::begin(&mut bytes, FrameKind::Data, channel, first_seq);
    for record in records {
        writer.push_record(record);
    }
    writer.finish();
    Bytes::from(bytes)
}

/// What one side's actions came to.
#[derive(Default)]
struct Seen {
    delivered: Vec<Frame>,
    closed: Vec<(ConnId, String)>,
    dials: Vec<u32>,
    events: Vec<PeerEvent>,
    failed: Vec<String>,
}

fn drain(p: &mut PeerProtocol<impl Entropy>, seen: &mut Seen) {
    while let Some(action) = p.next_action() {
        match action {
            Action::Dial { peer } => seen.dials.push(peer),
            Action::Close { conn, reason, .. } => seen.closed.push((conn, reason)),
            Action::Deliver { frame, .. } => seen.delivered.push(frame),
            Action::Failed { reason } => seen.failed.push(reason),
            Action::Log(event) => seen.events.push(event),
        }
    }
}

/// Moves bytes both ways on `conn` until neither side writes more.
fn exchange(
    a: &mut PeerProtocol<impl Entropy>,
    b: &mut PeerProtocol<impl Entropy>,
    conn: ConnId,
    now_ms: u64,
) {
    for _ in 0..16 {
        let (to_b, to_a) = (a.take_output(conn), b.take_output(conn));
        if to_b.is_empty() && to_a.is_empty() {
            return;
        }
        b.on_bytes(conn, &to_b, now_ms);
        a.on_bytes(conn, &to_a, now_ms);
    }
    panic!("the two sides kept talking");
}

/// Process 1 dials process 0 on `conn`.
fn connect(
    p0: &mut PeerProtocol<impl Entropy>,
    p1: &mut PeerProtocol<impl Entropy>,
    conn: ConnId,
    now_ms: u64,
) {
    p1.on_connected(conn, Some(0), now_ms);
    p0.on_connected(conn, None, now_ms);
    exchange(p1, p0, conn, now_ms);
}

#[test]
fn a_channel_is_carried_in_order_acked_and_resent_after_a_reconnect() {
    let (mut p0, mut p1) = (protocol(0, vec![1], SECRET), protocol(1, vec![0], SECRET));
    let (mut seen0, mut seen1) = (Seen::default(), Seen::default());
    p1.add_out(CHANNEL, 0);
    p0.add_in(CHANNEL, 1);
    p1.on_tick(0);
    drain(&mut p1, &mut seen1);
    assert_eq!(seen1.dials, vec![0], "the higher id dials");
    connect(&mut p0, &mut p1, 1, 0);
    drain(&mut p0, &mut seen0);
    assert!(seen0.events.contains(&PeerEvent::Connected { peer: 1, conn: 1 }));

    let mut producer: VecDeque<Bytes> = (0..6).map(|i| data_frame(CHANNEL, i + 1, &[b"r"])).collect();
    assert_eq!(
        p1.send_from(CHANNEL, &mut producer),
        WINDOW_FRAMES,
        "the window bounds what is taken"
    );
    assert_eq!(p1.stats().full_windows, 1);
    exchange(&mut p1, &mut p0, 1, 1);
    drain(&mut p0, &mut seen0);
    assert_eq!(seen0.delivered.len(), WINDOW_FRAMES);
    // The consumer takes two; their ack opens the window by two.
    p0.on_consumed(CHANNEL, 2);
    p0.flush_acks();
    exchange(&mut p0, &mut p1, 1, 2);
    assert_eq!(p1.send_from(CHANNEL, &mut producer), 2);
    assert_eq!(p1.unacked_frames(), WINDOW_FRAMES);

    // The connection drops with the last two frames unsent; the reconnect
    // resends everything unacked and the receiver drops what it has.
    let _lost = p1.take_output(1);
    p0.on_closed(1, "reset", 3);
    p1.on_closed(1, "reset", 3);
    p1.on_tick(1_000);
    drain(&mut p1, &mut seen1);
    assert_eq!(seen1.dials, vec![0, 0]);
    connect(&mut p0, &mut p1, 2, 1_000);
    drain(&mut p0, &mut seen0);
    let seqs: Vec<u64> = seen0.delivered.iter().map(|f| f.header.first_seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(p1.stats().frames_resent, 4);
    assert_eq!(p0.stats().duplicates_dropped, 2);
    assert_eq!(p1.stats().reconnects, 1);
}

#[test]
fn a_peer_back_with_a_new_incarnation_fails_the_run_unless_the_bug_is_planted() {
    for bug in [false, true] {
        let mut config0 = config(0, vec![1], SECRET);
        config0.bugs.ignore_peer_restart = bug;
        let mut p0 = PeerProtocol::new(config0, SeededEntropy::new(9), 0);
        p0.add_in(CHANNEL, 1);
        let mut p1 = protocol(1, vec![0], SECRET);
        p1.add_out(CHANNEL, 0);
        connect(&mut p0, &mut p1, 1, 0);
        let mut producer: VecDeque<Bytes> = (1..=3).map(|i| data_frame(CHANNEL, i, &[b"r"])).collect();
        p1.send_from(CHANNEL, &mut producer);
        exchange(&mut p1, &mut p0, 1, 0);
        // The same life reconnects: nothing is wrong.
        p0.on_closed(1, "reset", 1);
        p1.on_closed(1, "reset", 1);
        connect(&mut p0, &mut p1, 2, 2);
        let mut seen = Seen::default();
        drain(&mut p0, &mut seen);
        assert!(seen.failed.is_empty(), "{:?}", seen.failed);
        assert_eq!(seen.delivered.len(), 3);

        // Process 1 restarts: a new life numbers its channel from 1 again.
        p0.on_closed(2, "reset", 3);
        let mut reborn = PeerProtocol::new(config(1, vec![0], SECRET), SeededEntropy::new(77), 3);
        assert_ne!(reborn.incarnation(), p1.incarnation());
        reborn.add_out(CHANNEL, 0);
        connect(&mut p0, &mut reborn, 3, 4);
        let dropped_before = p0.stats().duplicates_dropped;
        let mut producer = VecDeque::from([data_frame(CHANNEL, 1, &[b"new life"])]);
        reborn.send_from(CHANNEL, &mut producer);
        exchange(&mut reborn, &mut p0, 3, 5);
        let mut seen = Seen::default();
        drain(&mut p0, &mut seen);
        if bug {
            // Taken for the old life: its new frame is dropped as a duplicate.
            assert!(seen.failed.is_empty(), "{:?}", seen.failed);
            assert!(seen.delivered.is_empty());
            assert_eq!(p0.stats().duplicates_dropped, dropped_before + 1);
        } else {
            assert_eq!(seen.failed.len(), 1, "{:?}", seen.failed);
            assert!(
                seen.failed[0].contains("process 1 restarted"),
                "{:?}",
                seen.failed
            );
            assert!(seen.delivered.is_empty());
            assert!(
                seen.closed.iter().any(|(conn, _)| *conn == 3),
                "{:?}",
                seen.closed
            );
        }
    }
}

#[test]
fn a_wrong_secret_is_refused_and_its_data_never_delivered() {
    let (mut p0, mut intruder) = (
        protocol(0, vec![1], SECRET),
        protocol(1, vec![0], b"the wrong secret, long enough"),
    );
    p0.add_in(CHANNEL, 1);
    intruder.on_connected(7, Some(0), 0);
    p0.on_connected(7, None, 0);
    let mut hello = intruder.take_output(7);
    encode_frame(&mut hello, FrameKind::Data, CHANNEL, 1, &[b"injected"]);
    p0.on_bytes(7, &hello, 0);
    let mut seen = Seen::default();
    drain(&mut p0, &mut seen);
    assert!(seen.delivered.is_empty());
    assert_eq!(seen.closed.len(), 1, "{:?}", seen.closed);
    assert_eq!(p0.stats().handshakes_refused, 1);

    // Without early data: the proof itself fails.
    let mut intruder = protocol(1, vec![0], b"the wrong secret, long enough");
    intruder.on_connected(8, Some(0), 0);
    p0.on_connected(8, None, 0);
    exchange(&mut intruder, &mut p0, 8, 0);
    drain(&mut p0, &mut seen);
    assert!(
        seen.closed
            .iter()
            .any(|(conn, why)| *conn == 8 && why.contains("secret")),
        "{:?}",
        seen.closed
    );
    assert_eq!(p0.stats().handshakes_refused, 2);
    assert!(seen.delivered.is_empty());
}

#[test]
fn data_on_another_peers_channel_closes_the_connection_unless_the_bug_is_planted() {
    for bug in [false, true] {
        let mut config0 = config(0, vec![1, 2], SECRET);
        config0.bugs.accept_other_peers_channel = bug;
        let mut p0 = PeerProtocol::new(config0, SeededEntropy::new(9), 0);
        let mut p1 = protocol(1, vec![0, 2], SECRET);
        p0.add_in(CHANNEL, 2); // the channel is process 2's
        p1.add_out(CHANNEL, 0);
        connect(&mut p0, &mut p1, 1, 0);
        let mut producer = VecDeque::from([data_frame(CHANNEL, 1, &[b"forged"])]);
        p1.send_from(CHANNEL, &mut producer);
        exchange(&mut p1, &mut p0, 1, 0);
        let mut seen = Seen::default();
        drain(&mut p0, &mut seen);
        assert_eq!(seen.delivered.len(), usize::from(bug));
        assert_eq!(seen.closed.len(), usize::from(!bug));
    }
}

#[test]
fn unclaimed_channels_hold_a_bounded_number_of_frames() {
    let (mut p0, mut p1) = (protocol(0, vec![1], SECRET), protocol(1, vec![0], SECRET));
    connect(&mut p0, &mut p1, 1, 0);
    let mut bytes = Vec::new();
    for i in 0..=UNCLAIMED_FRAMES_MAX as u32 {
        encode_frame(&mut bytes, FrameKind::Data, 0x1000 + i, 1, &[b"x"]);
    }
    p0.on_bytes(1, &bytes, 1);
    let mut seen = Seen::default();
    drain(&mut p0, &mut seen);
    assert_eq!(
        seen.closed.len(),
        1,
        "the connection that overfilled them is closed"
    );
    assert!(p0.stats().unclaimed_refused > 0);
    assert!(seen.delivered.is_empty());
    // Claimed later, what was held is delivered.
    p0.add_in(0x1000, 1);
    drain(&mut p0, &mut seen);
    assert_eq!(seen.delivered.len(), 1);
}

#[test]
fn a_peer_that_overruns_the_window_is_cut_off() {
    let (mut p0, mut p1) = (protocol(0, vec![1], SECRET), protocol(1, vec![0], SECRET));
    p0.add_in(CHANNEL, 1);
    connect(&mut p0, &mut p1, 1, 0);
    let mut bytes = Vec::new();
    for seq in 1..=WINDOW_FRAMES as u64 + 1 {
        encode_frame(&mut bytes, FrameKind::Data, CHANNEL, seq, &[b"x"]);
    }
    p0.on_bytes(1, &bytes, 0);
    let mut seen = Seen::default();
    drain(&mut p0, &mut seen);
    assert_eq!(seen.delivered.len(), WINDOW_FRAMES);
    assert!(
        seen.closed[0].1.contains("overran the window"),
        "{:?}",
        seen.closed
    );
}

#[test]
fn a_silent_peer_is_given_up_and_a_lost_one_fails_the_cluster() {
    let (mut p0, mut p1) = (protocol(0, vec![1], SECRET), protocol(1, vec![0], SECRET));
    connect(&mut p0, &mut p1, 1, 0);
    let mut seen = Seen::default();
    p0.on_tick(500);
    assert!(!p0.take_output(1).is_empty(), "a heartbeat when nothing was sent");
    p0.on_tick(1_000);
    drain(&mut p0, &mut seen);
    assert_eq!(seen.closed.len(), 1, "silent for the peer timeout");
    p0.on_tick(60_999);
    drain(&mut p0, &mut seen);
    assert!(seen.failed.is_empty(), "unreachable since the close at 1 000 ms");
    p0.on_tick(61_001);
    drain(&mut p0, &mut seen);
    assert_eq!(seen.failed.len(), 1, "{:?}", seen.failed);
    p0.on_tick(70_000);
    drain(&mut p0, &mut seen);
    assert_eq!(seen.failed.len(), 1, "reported once");
}

/// SplitMix64, for the fuzz loop's choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Cases the stable fuzz loop runs (the cargo-fuzz target in `net/fuzz`
/// runs the same harness for as long as it is given).
const FUZZ_CASES: u64 = 3_000;
/// A case's input: a few frames' worth.
const FUZZ_INPUT_MAX_BYTES: u64 = 4_096;

/// One case: a hostile peer's bytes, valid frames mutated (flipped, cut,
/// spliced, renumbered) or plain noise, fed in random pieces before or after
/// the handshake. The protocol must not panic, and must hold no more than
/// what it was given plus its own bounded state.
fn fuzz_case(rng: &mut Rng) {
    let (mut p0, mut p1) = (protocol(0, vec![1], SECRET), protocol(1, vec![0], SECRET));
    p0.add_in(CHANNEL, 1);
    p0.add_out(CHANNEL + 1, 1);
    let established = rng.below(2) == 0;
    if established {
        connect(&mut p0, &mut p1, 1, 0);
    } else {
        p0.on_connected(1, None, 0);
    }
    let mut input = Vec::new();
    while (input.len() as u64) < rng.below(FUZZ_INPUT_MAX_BYTES) {
        match rng.below(4) {
            0 => input.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
            _ => {
                let kind = [
                    FrameKind::Data,
                    FrameKind::Ack,
                    FrameKind::Heartbeat,
                    FrameKind::Hello,
                    FrameKind::Proof,
                    FrameKind::Refused,
                ][rng.below(6) as usize];
                let channel = [CHANNEL, CHANNEL + 1, rng.next() as u32][rng.below(3) as usize];
                let seq = [1, 2, rng.below(8), u64::MAX, rng.next()][rng.below(5) as usize];
                let record = vec![rng.next() as u8; rng.below(40) as usize];
                encode_frame(&mut input, kind, channel, seq, &[&record]);
            }
        }
    }
    if !input.is_empty() {
        for _ in 0..rng.below(4) {
            let at = rng.below(input.len() as u64) as usize;
            input[at] ^= 1 << rng.below(8);
        }
    }
    let mut rest = &input[..];
    let mut now = 1;
    while !rest.is_empty() {
        let piece = (1 + rng.below(rest.len() as u64) as usize).min(rest.len());
        p0.on_bytes(1, &rest[..piece], now);
        rest = &rest[piece..];
        now += rng.below(50);
        if rng.below(8) == 0 {
            p0.on_tick(now);
        }
        let mut seen = Seen::default();
        drain(&mut p0, &mut seen);
        let _ = p0.take_output(1);
        assert!(
            p0.held_bytes() <= input.len() + (1 << 16),
            "held {} bytes from {} of input",
            p0.held_bytes(),
            input.len()
        );
    }
}

#[test]
fn random_and_mutated_bytes_on_a_connection_never_panic_or_pile_up() {
    let mut rng = Rng(0x5eed);
    for _ in 0..FUZZ_CASES {
        fuzz_case(&mut rng);
    }
}

#[test]
fn a_refused_frame_is_not_applied_so_its_resend_is_taken() {
    let (mut p0, mut p1) = (protocol(0, vec![1], SECRET), protocol(1, vec![0], SECRET));
    p0.add_in(CHANNEL, 1);
    connect(&mut p0, &mut p1, 1, 0);
    let mut bytes = Vec::new();
    for seq in 1..=WINDOW_FRAMES as u64 + 1 {
        encode_frame(&mut bytes, FrameKind::Data, CHANNEL, seq, &[b"x"]);
    }
    p0.on_bytes(1, &bytes, 0);
    let mut seen = Seen::default();
    drain(&mut p0, &mut seen);
    assert_eq!(seen.closed.len(), 1, "overran the window");
    p0.on_consumed(CHANNEL, WINDOW_FRAMES as u64);
    let mut p1 = protocol(1, vec![0], SECRET);
    connect(&mut p0, &mut p1, 2, 10);
    let mut resend = Vec::new();
    encode_frame(
        &mut resend,
        FrameKind::Data,
        CHANNEL,
        WINDOW_FRAMES as u64 + 1,
        &[b"x"],
    );
    p0.on_bytes(2, &resend, 10);
    drain(&mut p0, &mut seen);
    assert_eq!(
        seen.delivered.len(),
        WINDOW_FRAMES + 1,
        "the refused frame arrives after all"
    );
}

#[test]
fn a_stranger_cannot_make_a_pending_connection_buffer_a_huge_frame() {
    let mut p0 = protocol(0, vec![1], SECRET);
    p0.on_connected(1, None, 0);
    let mut header = Vec::new();
    encode_frame(&mut header, FrameKind::Hello, 0, 0, &[&vec![0; 1 << 20]]);
    p0.on_bytes(1, &header[..200 << 10], 0);
    let mut seen = Seen::default();
    drain(&mut p0, &mut seen);
    assert_eq!(seen.closed.len(), 1);
    assert_eq!(p0.held_bytes(), 0);
}
