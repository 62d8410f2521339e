//! Feeds arbitrary bytes, in arbitrary pieces, to the peer protocol on one
//! connection, before or after a real handshake: it must never panic, never
//! loop, and never hold more than what it was given plus bounded state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use verity_net::auth::ClusterSecret;
use verity_net::liveness::LivenessConfig;
use verity_net::peer::{PeerProtocol, ProtocolBugs, ProtocolConfig, ProtocolLimits, SeededEntropy};

/// State the protocol may hold beyond the input itself (its handshake output,
/// acks, heartbeats).
const HELD_SLACK_BYTES: usize = 1 << 16;

fn protocol(process_id: u32, peer: u32) -> PeerProtocol<SeededEntropy> {
    let config = ProtocolConfig {
        cluster_id: "fuzz".into(),
        process_id,
        peers: vec![peer],
        secret: Arc::new(ClusterSecret::new(b"the fuzzing cluster's secret".to_vec()).expect("long enough")),
        liveness: LivenessConfig {
            peer_timeout_ms: 1_000,
            heartbeat_interval_ms: 100,
        },
        window_frames: 4,
        window_bytes: 1 << 20,
        reconnect_base_ms: 10,
        reconnect_max_ms: 100,
        peer_lost_ms: 60_000,
        limits: ProtocolLimits::default(),
        bugs: ProtocolBugs::default(),
    };
    PeerProtocol::new(config, SeededEntropy::new(process_id as u64), 0)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, bytes)) = data.split_first() else { return };
    let (mut p0, mut p1) = (protocol(0, 1), protocol(1, 0));
    p0.add_in(0x10, 1);
    p0.add_out(0x11, 1);
    p1.on_connected(1, Some(0), 0);
    p0.on_connected(1, None, 0);
    if control & 1 == 1 {
        // A real handshake first: the bytes then come from an authenticated peer.
        for _ in 0..4 {
            let (to_0, to_1) = (p1.take_output(1), p0.take_output(1));
            p0.on_bytes(1, &to_0, 0);
            p1.on_bytes(1, &to_1, 0);
        }
    }
    let piece = (control >> 1) as usize + 1;
    for (turn, chunk) in bytes.chunks(piece).enumerate() {
        p0.on_bytes(1, chunk, turn as u64);
        if turn % 8 == 7 {
            p0.on_tick(turn as u64 * 10);
        }
        while p0.next_action().is_some() {}
        let _ = p0.take_output(1);
        assert!(p0.held_bytes() <= bytes.len() + HELD_SLACK_BYTES);
    }
});
