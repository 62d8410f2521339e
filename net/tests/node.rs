//! The I/O thread over real loopback sockets: two nodes authenticate and
//! carry a channel's frames in order with acks; a silent peer is given up on
//! after the peer timeout and redialled.

use crossbeam_channel::bounded;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;
use verity_net::auth::ClusterSecret;
use verity_net::frame::{FrameKind, FrameWriter};
use verity_net::liveness::LivenessConfig;
use verity_net::node::{ConsumerProgress, InChannel, Node, NodeConfig, OutChannel, PeerAddress};
use verity_net::peer::{ProtocolBugs, ProtocolConfig, ProtocolLimits};

const WINDOW_FRAMES: usize = 4;

fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn config(process_id: u32, listen: SocketAddr, peer: PeerAddress, peer_timeout_ms: u64) -> NodeConfig {
    NodeConfig {
        protocol: ProtocolConfig {
            cluster_id: "node-test".into(),
            process_id,
            peers: vec![peer.id],
            secret: Arc::new(ClusterSecret::new(b"a secret for the node tests".to_vec()).unwrap()),
            liveness: LivenessConfig {
                peer_timeout_ms,
                heartbeat_interval_ms: peer_timeout_ms / 4,
            },
            window_frames: WINDOW_FRAMES,
            window_bytes: 1 << 20,
            reconnect_base_ms: 5,
            reconnect_max_ms: 100,
            peer_lost_ms: 10_000,
            limits: ProtocolLimits::default(),
            bugs: ProtocolBugs::default(),
        },
        listen,
        peer_addresses: vec![peer],
        seed: process_id as u64,
    }
}

#[test]
fn two_nodes_carry_a_channel_in_order() {
    let (address_0, address_1) = (free_address(), free_address());
    let node_0 = Node::start(config(
        0,
        address_0,
        PeerAddress {
            id: 1,
            address: address_1,
        },
        2_000,
    ))
    .unwrap();
    let node_1 = Node::start(config(
        1,
        address_1,
        PeerAddress {
            id: 0,
            address: address_0,
        },
        2_000,
    ))
    .unwrap();
    let channel = 7;
    let (frames_tx, frames_rx) = bounded(16);
    node_1.add_out(OutChannel {
        channel,
        peer: 0,
        frames: frames_rx,
    });
    let (deliver_tx, deliver_rx) = bounded(WINDOW_FRAMES);
    let progress = Arc::new(ConsumerProgress::default());
    node_0.add_in(InChannel {
        channel,
        peer: 1,
        frames: deliver_tx,
        progress: Arc::clone(&progress),
    });

    const FRAMES: u64 = 500;
    let producer = std::thread::spawn(move || {
        for seq in 1..=FRAMES {
            let mut bytes = Vec::new();
            let mut frame = FrameWriter::begin(&mut bytes, FrameKind::Data, channel, seq);
            frame.push_record(&seq.to_le_bytes());
            frame.finish();
            frames_tx.send(bytes).unwrap();
        }
    });
    let waker = node_0.waker();
    for expected in 1..=FRAMES {
        let frame = deliver_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("frames keep coming");
        assert_eq!(frame.header.first_seq, expected, "in order, once");
        let record = frame.records().next().unwrap();
        assert_eq!(u64::from_le_bytes(record[..].try_into().unwrap()), expected);
        progress.consumed(expected);
        waker.wake().unwrap();
    }
    producer.join().unwrap();
    assert!(node_1.wait_sent(Duration::from_secs(10)), "every frame acked");
    // The live per-peer traffic (published once per loop turn) names the
    // peer and agrees with the end-of-run totals.
    std::thread::sleep(Duration::from_millis(20));
    let sender_view = node_1.traffic().snapshot();
    let receiver_view = node_0.traffic().snapshot();
    let stats = node_1.stop();
    assert!(stats.frames_sent + stats.frames_resent >= FRAMES, "{stats:?}");
    assert_eq!(sender_view.len(), 1);
    let (peer, sent) = sender_view[0];
    assert_eq!(peer, 0);
    assert_eq!(
        sent.frames_sent + sent.frames_resent,
        stats.frames_sent + stats.frames_resent
    );
    assert!(sent.bytes_sent > 0 && sent.bytes_received > 0, "{sent:?}");
    let (peer, received) = receiver_view[0];
    assert_eq!(peer, 1);
    assert!(received.frames_received >= FRAMES, "{received:?}");
    assert!(
        received.bytes_received >= sent.bytes_sent / 2,
        "{received:?} {sent:?}"
    );
    node_0.closing();
    node_0.stop();
}

#[test]
fn a_silent_peer_is_dropped_after_the_timeout_and_redialled() {
    // A "peer" that accepts connections and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_address = silent.local_addr().unwrap();
    let node = Node::start(config(
        1,
        free_address(),
        PeerAddress {
            id: 0,
            address: silent_address,
        },
        200,
    ))
    .unwrap();
    let (first, _) = silent.accept().unwrap();
    first.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Our node talks (its hello) and then hangs up on the silent side.
    let mut buf = [0u8; 4096];
    let closed = loop {
        match std::io::Read::read(&mut &first, &mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    assert!(closed, "the node closes a connection whose peer stays silent");
    let (_second, _) = silent.accept().expect("and dials again");
    node.stop();
}
