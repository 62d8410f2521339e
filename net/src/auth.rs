//! Mutual authentication of two processes by challenge–response: each side
//! sends a fresh nonce; each proves it holds the cluster secret with an
//! HMAC-SHA256 over both nonces and both identities. The secret never goes on
//! the wire, and a proof cannot be replayed on another connection (the peer's
//! nonce differs). Until both proofs check out, no data frame is accepted.
//!
//! A hello also names the sender's *incarnation*: a number drawn afresh each
//! time a process starts, covered by its proof. A peer that comes back with
//! another incarnation has restarted: its channels start over, so a survivor
//! must not take it for the old life (`peer` fails the run instead).

use crate::frame::{encode_frame, Frame, FrameKind, PROTOCOL_VERSION};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;
use std::sync::Arc;

pub const CLUSTER_SECRET_ENV: &str = "VERITY_CLUSTER_SECRET";
pub const CLUSTER_SECRET_MIN_BYTES: usize = 16;
pub const NONCE_BYTES: usize = 32;
/// Longest text taken from a peer (cluster id, refusal reason) into an error.
const PEER_TEXT_MAX_BYTES: usize = 200;
const DOMAIN: &[u8] = b"verity-auth-v2";

/// The shared secret of a cluster. Never printed.
pub struct ClusterSecret(Vec<u8>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    pub fn new(bytes: Vec<u8>) -> Result<Self, AuthError> {
        if bytes.is_empty() {
            return Err(AuthError::Secret("the cluster secret is empty".into()));
        }
        if bytes.len() < CLUSTER_SECRET_MIN_BYTES {
            return Err(AuthError::Secret(format!(
                "the cluster secret is {} bytes, it must be at least {CLUSTER_SECRET_MIN_BYTES}",
                bytes.len()
            )));
        }
        Ok(ClusterSecret(bytes))
    }

    /// The file's contents, without a trailing newline.
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        let mut bytes = std::fs::read(path)
            .map_err(|e| AuthError::Secret(format!("cannot read {}: {e}", path.display())))?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        Self::new(bytes)
    }

    /// From `VERITY_CLUSTER_SECRET`, if set.
    pub fn from_env() -> Result<Option<Self>, AuthError> {
        match std::env::var_os(CLUSTER_SECRET_ENV) {
            None => Ok(None),
            Some(value) => Self::new(value.into_encoded_bytes())
                .map(Some)
                .map_err(|e| AuthError::Secret(format!("{CLUSTER_SECRET_ENV}: {e}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: String,
    pub process_id: u32,
    /// This life of the process (see the module docs).
    pub incarnation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("peer belongs to cluster `{found}`, not `{expected}`")]
    WrongCluster { expected: String, found: String },
    #[error("peer speaks protocol version {found}, this build {PROTOCOL_VERSION}")]
    WrongVersion { found: u16 },
    #[error("peer failed authentication: wrong cluster secret")]
    BadProof,
    #[error("unexpected {kind:?} frame during the handshake")]
    UnexpectedFrame { kind: FrameKind },
    #[error("peer says it is process {found}, expected process {expected}")]
    UnexpectedPeer { expected: u32, found: u32 },
    #[error(
        "peer claims our own process id {process_id} (a reflected connection, or two processes with one id)"
    )]
    PeerClaimsOurId { process_id: u32 },
    #[error("malformed handshake message: {0}")]
    Malformed(&'static str),
    #[error("peer refused us: {0}")]
    RefusedByPeer(String),
    #[error("{0}")]
    Secret(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeStatus {
    InProgress,
    Established {
        peer_process_id: u32,
        peer_incarnation: u64,
    },
}

/// What a peer's hello said.
#[derive(Debug, Clone, Copy)]
struct PeerHello {
    process_id: u32,
    nonce: [u8; NONCE_BYTES],
    incarnation: u64,
}

/// Sans-IO and symmetric: both ends run the same machine.
pub struct Handshake {
    local: Identity,
    secret: Arc<ClusterSecret>,
    nonce: [u8; NONCE_BYTES],
    expected_peer: Option<u32>,
    /// The peer's hello, once it arrived.
    peer: Option<PeerHello>,
    established: bool,
}

impl Handshake {
    pub fn new(
        local: Identity,
        secret: Arc<ClusterSecret>,
        nonce: [u8; NONCE_BYTES],
        expected_peer: Option<u32>,
    ) -> Self {
        Handshake {
            local,
            secret,
            nonce,
            expected_peer,
            peer: None,
            established: false,
        }
    }

    /// Writes our hello: cluster id, process id, version, nonce, incarnation.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        let id = self.local.process_id.to_le_bytes();
        let version = PROTOCOL_VERSION.to_le_bytes();
        let incarnation = self.local.incarnation.to_le_bytes();
        let records: [&[u8]; 5] = [
            self.local.cluster_id.as_bytes(),
            &id,
            &version,
            &self.nonce,
            &incarnation,
        ];
        encode_frame(out, FrameKind::Hello, 0, 0, &records);
    }

    pub fn is_established(&self) -> bool {
        self.established
    }

    pub fn on_frame(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<HandshakeStatus, AuthError> {
        match (frame.header.kind, self.peer) {
            (FrameKind::Hello, None) => {
                let hello = self.check_hello(frame)?;
                self.peer = Some(hello);
                let proof = self.proof(hello.process_id, &hello.nonce);
                encode_frame(out, FrameKind::Proof, 0, 0, &[&proof]);
                Ok(HandshakeStatus::InProgress)
            }
            (FrameKind::Proof, Some(peer)) if !self.established => {
                let proof = frame
                    .records()
                    .next()
                    .ok_or(AuthError::Malformed("empty proof"))?;
                let mut mac = self.mac();
                let prover = Prover {
                    process_id: peer.process_id,
                    incarnation: peer.incarnation,
                    nonce: &peer.nonce,
                };
                feed(
                    &mut mac,
                    &self.local.cluster_id,
                    prover,
                    self.local.process_id,
                    &self.nonce,
                );
                mac.verify_slice(proof).map_err(|_| AuthError::BadProof)?;
                self.established = true;
                Ok(HandshakeStatus::Established {
                    peer_process_id: peer.process_id,
                    peer_incarnation: peer.incarnation,
                })
            }
            (FrameKind::Refused, _) => {
                let reason = frame.records().next().unwrap_or_default();
                Err(AuthError::RefusedByPeer(peer_text(reason)))
            }
            (kind, _) => Err(AuthError::UnexpectedFrame { kind }),
        }
    }

    fn check_hello(&self, frame: &Frame) -> Result<PeerHello, AuthError> {
        let mut records = frame.records();
        let mut next = || records.next().ok_or(AuthError::Malformed("short hello"));
        let cluster = next()?;
        let id: [u8; 4] = next()?[..]
            .try_into()
            .map_err(|_| AuthError::Malformed("process id"))?;
        let version: [u8; 2] = next()?[..]
            .try_into()
            .map_err(|_| AuthError::Malformed("version"))?;
        // Before the rest: an older build's hello may be laid out otherwise.
        let version = u16::from_le_bytes(version);
        if version != PROTOCOL_VERSION {
            return Err(AuthError::WrongVersion { found: version });
        }
        let nonce: [u8; NONCE_BYTES] = next()?[..]
            .try_into()
            .map_err(|_| AuthError::Malformed("nonce"))?;
        let incarnation: [u8; 8] = next()?[..]
            .try_into()
            .map_err(|_| AuthError::Malformed("incarnation"))?;
        if cluster[..] != *self.local.cluster_id.as_bytes() {
            return Err(AuthError::WrongCluster {
                expected: self.local.cluster_id.clone(),
                found: peer_text(cluster),
            });
        }
        let peer_id = u32::from_le_bytes(id);
        if let Some(expected) = self.expected_peer.filter(|e| *e != peer_id) {
            return Err(AuthError::UnexpectedPeer {
                expected,
                found: peer_id,
            });
        }
        if peer_id == self.local.process_id {
            return Err(AuthError::PeerClaimsOurId { process_id: peer_id });
        }
        if nonce == self.nonce {
            return Err(AuthError::Malformed("peer echoed our nonce"));
        }
        Ok(PeerHello {
            process_id: peer_id,
            nonce,
            incarnation: u64::from_le_bytes(incarnation),
        })
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.secret.0).expect("HMAC takes any key size")
    }

    /// Our proof to `verifier`: over its nonce first, so it only answers
    /// this connection's challenge.
    fn proof(&self, verifier: u32, verifier_nonce: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        let prover = Prover {
            process_id: self.local.process_id,
            incarnation: self.local.incarnation,
            nonce: &self.nonce,
        };
        feed(&mut mac, &self.local.cluster_id, prover, verifier, verifier_nonce);
        mac.finalize().into_bytes().to_vec()
    }
}

/// Who gives a proof: its id, this life of it, its nonce.
struct Prover<'a> {
    process_id: u32,
    incarnation: u64,
    nonce: &'a [u8],
}

fn feed(mac: &mut Hmac<Sha256>, cluster: &str, prover: Prover<'_>, verifier: u32, verifier_nonce: &[u8]) {
    mac.update(DOMAIN);
    mac.update(&(cluster.len() as u32).to_le_bytes());
    mac.update(cluster.as_bytes());
    mac.update(&prover.process_id.to_le_bytes());
    mac.update(&prover.incarnation.to_le_bytes());
    mac.update(&verifier.to_le_bytes());
    mac.update(verifier_nonce);
    mac.update(prover.nonce);
}

/// Text a peer sent, made safe for a one-line log message: control
/// characters escaped, length bounded.
fn peer_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(PEER_TEXT_MAX_BYTES)]);
    let mut safe: String = text.chars().flat_map(char::escape_debug).collect();
    if bytes.len() > PEER_TEXT_MAX_BYTES {
        safe.push_str("...");
    }
    safe
}

/// Writes a `Refused` frame naming why (never anything about the secret).
pub fn write_refusal(out: &mut Vec<u8>, reason: &str) {
    encode_frame(out, FrameKind::Refused, 0, 0, &[reason.as_bytes()]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;

    const SECRET: &[u8] = b"0123456789abcdef-secret";

    fn handshake(id: u32, nonce: u8) -> Handshake {
        let identity = Identity {
            cluster_id: "c".into(),
            process_id: id,
            incarnation: 100 + u64::from(nonce),
        };
        let secret = Arc::new(ClusterSecret::new(SECRET.to_vec()).expect("long enough"));
        Handshake::new(identity, secret, [nonce; NONCE_BYTES], None)
    }

    fn only_frame(bytes: &[u8]) -> Frame {
        let mut decoder = FrameDecoder::new();
        decoder.extend_from_slice(bytes);
        let frame = decoder.next_frame().unwrap().expect("a whole frame");
        assert_eq!(decoder.buffered_bytes(), 0, "exactly one frame");
        frame
    }

    fn hello_of(handshake: &mut Handshake) -> Frame {
        let mut out = Vec::new();
        handshake.start(&mut out);
        only_frame(&out)
    }

    #[test]
    fn a_reflected_hello_is_refused() {
        let mut a = handshake(0, 1);
        let hello = hello_of(&mut a);
        let result = a.on_frame(&hello, &mut Vec::new());
        assert_eq!(result, Err(AuthError::PeerClaimsOurId { process_id: 0 }));
    }

    #[test]
    fn a_proof_from_another_connection_is_refused() {
        // b authenticates to a once; an eavesdropper replays b's proof to a
        // on a new connection, where a chose another nonce.
        let (mut a, mut b) = (handshake(0, 1), handshake(1, 2));
        let b_hello = hello_of(&mut b);
        let a_hello = hello_of(&mut a);
        let mut proof = Vec::new();
        b.on_frame(&a_hello, &mut proof).unwrap();
        let mut fresh_a = handshake(0, 3);
        fresh_a.on_frame(&b_hello, &mut Vec::new()).unwrap();
        assert_eq!(
            fresh_a.on_frame(&only_frame(&proof), &mut Vec::new()),
            Err(AuthError::BadProof)
        );
        assert!(!fresh_a.is_established());
    }

    #[test]
    fn a_hello_whose_incarnation_was_changed_on_the_way_fails_its_proof() {
        let (mut a, mut b) = (handshake(0, 1), handshake(1, 2));
        let a_hello = hello_of(&mut a);
        let b_hello = hello_of(&mut b);
        let mut b_proof = Vec::new();
        b.on_frame(&a_hello, &mut b_proof).unwrap();
        // Same hello, another incarnation: the proof no longer covers it.
        let mut forged = Vec::new();
        let records: Vec<&[u8]> = b_hello.records().collect();
        let other = 7u64.to_le_bytes();
        encode_frame(
            &mut forged,
            FrameKind::Hello,
            0,
            0,
            &[records[0], records[1], records[2], records[3], &other],
        );
        a.on_frame(&only_frame(&forged), &mut Vec::new()).unwrap();
        assert_eq!(
            a.on_frame(&only_frame(&b_proof), &mut Vec::new()),
            Err(AuthError::BadProof)
        );
        // The true hello establishes, naming b's incarnation.
        let mut a = handshake(0, 1);
        let a_hello = hello_of(&mut a);
        let mut b_proof = Vec::new();
        handshake(1, 2).on_frame(&a_hello, &mut b_proof).unwrap();
        a.on_frame(&b_hello, &mut Vec::new()).unwrap();
        assert_eq!(
            a.on_frame(&only_frame(&b_proof), &mut Vec::new()),
            Ok(HandshakeStatus::Established {
                peer_process_id: 1,
                peer_incarnation: 102
            })
        );
    }

    #[test]
    fn our_own_proof_reflected_back_is_refused() {
        let (mut a, mut b) = (handshake(0, 1), handshake(1, 2));
        let b_hello = hello_of(&mut b);
        let mut a_proof = Vec::new();
        a.on_frame(&b_hello, &mut a_proof).unwrap();
        assert_eq!(
            a.on_frame(&only_frame(&a_proof), &mut Vec::new()),
            Err(AuthError::BadProof)
        );
    }

    #[test]
    fn a_proof_before_the_hello_and_a_second_hello_are_unexpected() {
        let (mut a, mut b) = (handshake(0, 1), handshake(1, 2));
        let mut proof = Vec::new();
        encode_frame(&mut proof, FrameKind::Proof, 0, 0, &[&[0; 32]]);
        let unexpected = Err(AuthError::UnexpectedFrame {
            kind: FrameKind::Proof,
        });
        assert_eq!(a.on_frame(&only_frame(&proof), &mut Vec::new()), unexpected);
        let b_hello = hello_of(&mut b);
        a.on_frame(&b_hello, &mut Vec::new()).unwrap();
        let again = a.on_frame(&b_hello, &mut Vec::new());
        assert_eq!(
            again,
            Err(AuthError::UnexpectedFrame {
                kind: FrameKind::Hello
            })
        );
    }

    #[test]
    fn malformed_hellos_are_refused() {
        let mut a = handshake(0, 1);
        let v = PROTOCOL_VERSION.to_le_bytes();
        let cases: [&[&[u8]]; 6] = [
            &[],
            &[b"c", &[1, 0, 0]],
            &[b"c", &[1, 0, 0, 0], &v, &[5; 31], &[0; 8]],
            &[b"c", &[1, 0, 0, 0], &v, &[1; NONCE_BYTES], &[0; 8]], // our own nonce echoed
            &[b"c", &[1, 0, 0, 0], &v, &[5; NONCE_BYTES]],          // no incarnation
            &[b"c", &[1, 0, 0, 0], &v, &[5; NONCE_BYTES], &[0; 7]],
        ];
        for records in cases {
            let mut out = Vec::new();
            encode_frame(&mut out, FrameKind::Hello, 0, 0, records);
            let result = a.on_frame(&only_frame(&out), &mut Vec::new());
            assert!(
                matches!(result, Err(AuthError::Malformed(_))),
                "{records:?}: {result:?}"
            );
        }
    }

    #[test]
    fn errors_are_one_line_even_with_hostile_peer_text() {
        let mut a = handshake(0, 1);
        let hostile = format!("evil\ncluster\r{}", "x".repeat(1000));
        let v = PROTOCOL_VERSION.to_le_bytes();
        let records: [&[u8]; 5] = [hostile.as_bytes(), &[1, 0, 0, 0], &v, &[9; NONCE_BYTES], &[0; 8]];
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Hello, 0, 0, &records);
        let error = a.on_frame(&only_frame(&out), &mut Vec::new()).unwrap_err();
        assert!(matches!(error, AuthError::WrongCluster { .. }));
        let message = error.to_string();
        assert!(!message.contains('\n') && !message.contains('\r'), "{message}");
        assert!(message.len() < PEER_TEXT_MAX_BYTES * 2, "{message}");

        let mut refusal = Vec::new();
        write_refusal(&mut refusal, "no\nthanks");
        let error = a.on_frame(&only_frame(&refusal), &mut Vec::new()).unwrap_err();
        assert_eq!(error.to_string(), "peer refused us: no\\nthanks");
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        let empty = ClusterSecret::new(Vec::new()).unwrap_err().to_string();
        assert_eq!(empty, "the cluster secret is empty");
        let short = ClusterSecret::new(b"short".to_vec()).unwrap_err().to_string();
        assert_eq!(short, "the cluster secret is 5 bytes, it must be at least 16");
        let secret = ClusterSecret::new(SECRET.to_vec()).unwrap();
        assert_eq!(format!("{secret:?}"), "ClusterSecret(..)");
    }

    #[test]
    fn a_secret_file_loses_its_trailing_newline() {
        let path = std::env::temp_dir().join(format!("verity-net-secret-{}", std::process::id()));
        std::fs::write(&path, [SECRET, b"\r\n"].concat()).unwrap();
        let secret = ClusterSecret::from_file(&path);
        std::fs::write(&path, b"short\n").unwrap();
        let short = ClusterSecret::from_file(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(secret.unwrap().0, SECRET);
        let message = short.unwrap_err().to_string();
        assert_eq!(message, "the cluster secret is 5 bytes, it must be at least 16");
        let missing = ClusterSecret::from_file(&path).unwrap_err().to_string();
        assert!(missing.starts_with("cannot read"), "{missing}");
    }
}
