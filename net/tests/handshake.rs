//! Mutual authentication: peers with the cluster secret connect; a wrong
//! secret, cluster or version is refused, no data frame passes before the
//! handshake, and the secret never appears on the wire.

use std::sync::Arc;
use verity_net::auth::{write_refusal, AuthError, ClusterSecret, Handshake, HandshakeStatus, Identity};
use verity_net::frame::{encode_frame, Frame, FrameDecoder, FrameKind};

const SECRET: &[u8] = b"sixteen-plus bytes of secret";

fn handshake(cluster: &str, id: u32, secret: &[u8], nonce: u8) -> Handshake {
    let identity = Identity {
        cluster_id: cluster.into(),
        process_id: id,
        incarnation: 1000 + u64::from(id),
    };
    let secret = Arc::new(ClusterSecret::new(secret.to_vec()).unwrap());
    Handshake::new(identity, secret, [nonce; 32], None)
}

fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new();
    decoder.extend_from_slice(bytes);
    std::iter::from_fn(|| decoder.next_frame().unwrap()).collect()
}

/// Runs both ends until neither has anything to say; returns their outcomes
/// and every byte that crossed the wire.
fn exchange(a: &mut Handshake, b: &mut Handshake) -> (Vec<Result<HandshakeStatus, AuthError>>, Vec<u8>) {
    let (mut to_b, mut to_a) = (Vec::new(), Vec::new());
    a.start(&mut to_b);
    b.start(&mut to_a);
    let mut wire = Vec::new();
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        wire.extend_from_slice(&to_b);
        wire.extend_from_slice(&to_a);
        let (for_b, for_a) = (std::mem::take(&mut to_b), std::mem::take(&mut to_a));
        for frame in frames(&for_b) {
            outcomes.push(b.on_frame(&frame, &mut to_a));
        }
        for frame in frames(&for_a) {
            outcomes.push(a.on_frame(&frame, &mut to_b));
        }
    }
    (outcomes, wire)
}

#[test]
fn peers_with_the_secret_establish_and_the_secret_stays_home() {
    let (mut a, mut b) = (handshake("c", 0, SECRET, 1), handshake("c", 1, SECRET, 2));
    let (outcomes, wire) = exchange(&mut a, &mut b);
    assert!(a.is_established() && b.is_established(), "{outcomes:?}");
    let established = |peer_process_id| {
        Ok(HandshakeStatus::Established {
            peer_process_id,
            peer_incarnation: 1000 + u64::from(peer_process_id),
        })
    };
    assert!(outcomes.contains(&established(0)));
    assert!(outcomes.contains(&established(1)));
    assert!(
        !wire.windows(SECRET.len()).any(|w| w == SECRET),
        "the secret went on the wire"
    );
}

#[test]
fn a_wrong_secret_is_refused() {
    let (mut a, mut b) = (
        handshake("c", 0, SECRET, 1),
        handshake("c", 1, b"another secret, just as long", 2),
    );
    let (outcomes, _) = exchange(&mut a, &mut b);
    assert!(outcomes.contains(&Err(AuthError::BadProof)), "{outcomes:?}");
    assert!(!a.is_established() && !b.is_established());
}

#[test]
fn a_wrong_cluster_is_refused() {
    let (mut a, mut b) = (handshake("prod", 0, SECRET, 1), handshake("test", 1, SECRET, 2));
    let (outcomes, _) = exchange(&mut a, &mut b);
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Err(AuthError::WrongCluster { .. }))),
        "{outcomes:?}"
    );
    assert!(!a.is_established());
}

#[test]
fn a_wrong_version_is_refused() {
    let mut a = handshake("c", 0, SECRET, 1);
    let mut hello = Vec::new();
    let records: [&[u8]; 4] = [b"c", &1u32.to_le_bytes(), &99u16.to_le_bytes(), &[3; 32]];
    encode_frame(&mut hello, FrameKind::Hello, 0, 0, &records);
    let result = a.on_frame(&frames(&hello)[0], &mut Vec::new());
    assert!(
        matches!(result, Err(AuthError::WrongVersion { found: 99 })),
        "{result:?}"
    );
}

#[test]
fn no_data_before_the_handshake() {
    let mut a = handshake("c", 0, SECRET, 1);
    let mut data = Vec::new();
    encode_frame(&mut data, FrameKind::Data, 5, 1, &[b"injected"]);
    let result = a.on_frame(&frames(&data)[0], &mut Vec::new());
    assert!(matches!(
        result,
        Err(AuthError::UnexpectedFrame {
            kind: FrameKind::Data
        })
    ));
}

#[test]
fn short_secrets_are_rejected() {
    assert!(ClusterSecret::new(b"short".to_vec()).is_err());
    assert_eq!(
        format!("{:?}", ClusterSecret::new(SECRET.to_vec()).unwrap()),
        "ClusterSecret(..)"
    );
}

#[test]
fn a_wrong_secret_never_goes_on_the_wire_either() {
    let other: &[u8] = b"another secret, just as long";
    let (mut a, mut b) = (handshake("c", 0, SECRET, 1), handshake("c", 1, other, 2));
    let (_, wire) = exchange(&mut a, &mut b);
    for secret in [SECRET, other] {
        assert!(!wire.windows(secret.len()).any(|w| w == secret));
    }
}

#[test]
fn a_dialler_refuses_a_peer_other_than_the_one_it_dialled() {
    let secret = Arc::new(ClusterSecret::new(SECRET.to_vec()).unwrap());
    let identity = Identity {
        cluster_id: "c".into(),
        process_id: 0,
        incarnation: 1,
    };
    let mut a = Handshake::new(identity, secret, [1; 32], Some(2));
    let mut b = handshake("c", 1, SECRET, 2);
    let (outcomes, _) = exchange(&mut a, &mut b);
    assert!(
        outcomes.contains(&Err(AuthError::UnexpectedPeer {
            expected: 2,
            found: 1
        })),
        "{outcomes:?}"
    );
    assert!(!a.is_established());
}

#[test]
fn no_data_between_hello_and_proof() {
    let (mut a, mut b) = (handshake("c", 0, SECRET, 1), handshake("c", 1, SECRET, 2));
    let mut hello = Vec::new();
    b.start(&mut hello);
    let status = a.on_frame(&frames(&hello)[0], &mut Vec::new());
    assert_eq!(status, Ok(HandshakeStatus::InProgress));
    let mut data = Vec::new();
    encode_frame(&mut data, FrameKind::Data, 5, 1, &[b"injected"]);
    let result = a.on_frame(&frames(&data)[0], &mut Vec::new());
    assert_eq!(
        result,
        Err(AuthError::UnexpectedFrame {
            kind: FrameKind::Data
        })
    );
    assert!(!a.is_established());
}

#[test]
fn the_refused_side_learns_why() {
    let (mut a, mut b) = (handshake("prod", 0, SECRET, 1), handshake("test", 1, SECRET, 2));
    let mut hello = Vec::new();
    b.start(&mut hello);
    let error = a.on_frame(&frames(&hello)[0], &mut Vec::new()).unwrap_err();
    let mut refusal = Vec::new();
    write_refusal(&mut refusal, &error.to_string());
    let heard = b.on_frame(&frames(&refusal)[0], &mut Vec::new()).unwrap_err();
    assert_eq!(
        heard.to_string(),
        "peer refused us: peer belongs to cluster `test`, not `prod`"
    );
}

/// Both ends on one byte stream each, delivered a byte at a time, as a slow
/// TCP connection would.
#[test]
fn handshake_over_byte_at_a_time_streams() {
    let (mut a, mut b) = (handshake("c", 0, SECRET, 1), handshake("c", 1, SECRET, 2));
    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    a.start(&mut to_b);
    b.start(&mut to_a);
    let (mut a_in, mut b_in) = (FrameDecoder::new(), FrameDecoder::new());
    let (mut a_at, mut b_at) = (0, 0);
    while a_at < to_a.len() || b_at < to_b.len() {
        if a_at < to_a.len() {
            a_in.extend_from_slice(&to_a[a_at..a_at + 1]);
            a_at += 1;
            while let Some(frame) = a_in.next_frame().unwrap() {
                a.on_frame(&frame, &mut to_b).unwrap();
            }
        }
        if b_at < to_b.len() {
            b_in.extend_from_slice(&to_b[b_at..b_at + 1]);
            b_at += 1;
            while let Some(frame) = b_in.next_frame().unwrap() {
                b.on_frame(&frame, &mut to_a).unwrap();
            }
        }
    }
    assert!(a.is_established() && b.is_established());
    assert_eq!((a_in.finish(), b_in.finish()), (Ok(()), Ok(())));
}
