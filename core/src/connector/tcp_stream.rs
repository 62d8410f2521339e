//! The two small wire protocols of verity's TCP edges, so both directions can
//! replay what a broken connection lost. All integers are little-endian.
//!
//! # Input: `verity send` → TCP source (`tcp_source`)
//!
//! ```text
//! sender                                   source
//!   preamble: "\xffVRTYS" version(1)  ──▶
//!                                     ◀──  Resume { from, acks_on_commit }
//!   Data { len: u32, bytes } …        ──▶   (bytes of the input from `from`)
//!                                     ◀──  Ack { upto }   (may forget < upto)
//!   End { total: u64 }                ──▶
//!                                     ◀──  Ended { upto: total }
//! ```
//!
//! * A sender whose first bytes are not the preamble (`nc`, a script) is read
//!   as plain lines to the end of its connection, as before this protocol:
//!   that stream cannot be resumed. `0xff` never occurs in UTF-8 text, so no
//!   text sender is mistaken for `verity send`.
//! * `from` is the source's position (whole lines only: a partial line at a
//!   disconnect is asked for again). The sender sends its input bytes from
//!   there; they are the stream the source's byte positions count.
//! * `Ack { upto }`: the sender may forget the bytes before `upto`. A source
//!   whose positions are checkpointed (`acks_on_commit`) acks what a
//!   checkpoint made durable (`SourceReader::commit`); otherwise it acks what
//!   it handed to the runtime, which is all it could ever ask for again.
//! * `End` is the end of the input; a connection that ends without it is a
//!   disconnect, and the sender reconnects and resends from the `from` it is
//!   given. The source answers `End` with `Ended` once it read everything.
//!   The sender is done when it has both `Ended` and an `Ack` of every byte
//!   (without checkpoints the source acks them on receipt; with checkpoints,
//!   when the final checkpoint is durable).
//! * Source → sender messages are fixed-size (`SOURCE_MESSAGE_BYTES`): a tag,
//!   a flag byte and a u64.
//!
//! # Output: TCP sink (`tcp_sink`) → `verity receive`
//!
//! ```text
//! sink                                     receiver
//!   preamble: "\xffVRTYK" version(1)  ──▶
//!                                     ◀──  Welcome { have }  (lines it holds: 1..=have)
//!   Lines { first, count, len, bytes } ──▶  (lines numbered first..first+count)
//!                                     ◀──  Ack { have }
//! ```
//!
//! * Lines are numbered from 1 in output order; a frame carries a buffer of
//!   whole lines with the sequence of its first and how many, so nothing is
//!   allocated or framed per line.
//! * The receiver writes each sequence once: it drops lines at or below
//!   `have` (a resend after a reconnect, or a restarted sink starting at an
//!   older `first_seq`) and closes a connection whose frame skips past
//!   `have + 1` (lines it never got).
//! * Receiver → sink messages are fixed-size (`RECEIVER_MESSAGE_BYTES`): a
//!   tag and a u64.
//! * A receiver that is not `verity receive` (`nc -l`) sees the preamble and
//!   frame headers among the lines, and the sink, without a `Welcome`, fails
//!   at connect with an error saying so.
//!
//! ## Staged output: two-phase commit with checkpoints (version 2)
//!
//! A sink of a run with checkpoints says version `SINK_VERSION_STAGED` in its
//! preamble. The receiver then *stages* lines (holds them, not yet in its
//! output) until the sink commits them:
//!
//! ```text
//!                                     ◀──  Welcome { have }  (lines staged or final: 1..=have)
//!                                     ◀──  Committed { upto } (final: 1..=upto)
//!   Lines …                           ──▶
//!                                     ◀──  Ack { have }  (staged)
//!   Commit { upto }                   ──▶   (make 1..=upto final, in order)
//!                                     ◀──  Committed { upto }
//!   Abort { keep }                    ──▶   (drop staged lines past `keep`)
//!                                     ◀──  Ack { have: keep }
//! ```
//!
//! At a checkpoint's barrier the sink waits until everything before it is
//! staged (the pre-commit), the checkpoint records the next line's number,
//! and once the checkpoint is durable the sink commits through it. A
//! recovered sink continues at the recorded number: it commits again what
//! the checkpoint covered (the commit may have been lost with the crash) and
//! aborts what was staged after it, which the recovered run writes again. So
//! the receiver's output holds every line once even when the sink died
//! halfway through sending, and output is final at checkpoint boundaries.

use std::io;

/// The first bytes of a `verity send` connection (then one version byte).
pub const SEND_MAGIC: [u8; 6] = *b"\xffVRTYS";
/// The first bytes of a TCP sink's connection (then one version byte).
pub const SINK_MAGIC: [u8; 6] = *b"\xffVRTYK";
/// The protocol version both edges speak.
pub const VERSION: u8 = 1;
/// A TCP sink's version when its receiver stages lines until commits.
pub const SINK_VERSION_STAGED: u8 = 2;
/// Magic and version.
pub const PREAMBLE_BYTES: usize = 7;

/// Sender → source: input bytes follow (`u32` length, then the bytes).
pub const TAG_DATA: u8 = 1;
/// Sender → source: the input ended (`u64` total bytes).
pub const TAG_END: u8 = 2;
/// Header of a sender → source frame: tag and `u32` length (`Data`), or tag
/// and the low half of `End`'s total (its high half follows).
pub const DATA_HEADER_BYTES: usize = 5;
/// The largest `Data` frame a source accepts (a bigger one is a broken sender).
pub const DATA_FRAME_MAX_BYTES: usize = 4 << 20;

/// The preamble for `magic`.
pub fn preamble(magic: [u8; 6]) -> [u8; PREAMBLE_BYTES] {
    let mut out = [0; PREAMBLE_BYTES];
    out[..6].copy_from_slice(&magic);
    out[6] = VERSION;
    out
}

/// What `bytes` (the first bytes of a connection) say about the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Greeting {
    /// Too few bytes to tell, all of them the preamble's.
    Undecided,
    /// The preamble of `magic` with this version.
    Protocol { version: u8 },
    /// Not the preamble: a plain stream.
    Plain,
}

/// Reads the first bytes of a connection.
pub fn greeting(magic: [u8; 6], bytes: &[u8]) -> Greeting {
    let compared = bytes.len().min(magic.len());
    if bytes[..compared] != magic[..compared] {
        return Greeting::Plain;
    }
    match bytes.get(magic.len()) {
        Some(version) => Greeting::Protocol { version: *version },
        None => Greeting::Undecided,
    }
}

/// Source → sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceMessage {
    /// Send the input from byte `from`.
    Resume { from: u64, acks_on_commit: bool },
    /// The sender may forget the bytes before `upto`.
    Ack { upto: u64 },
    /// The source read the `End` and every byte before `upto`.
    Ended { upto: u64 },
}

pub const SOURCE_MESSAGE_BYTES: usize = 10;

impl SourceMessage {
    pub fn encode(self) -> [u8; SOURCE_MESSAGE_BYTES] {
        let (tag, flag, value) = match self {
            SourceMessage::Resume { from, acks_on_commit } => (1, acks_on_commit as u8, from),
            SourceMessage::Ack { upto } => (2, 0, upto),
            SourceMessage::Ended { upto } => (3, 0, upto),
        };
        let mut out = [0; SOURCE_MESSAGE_BYTES];
        out[0] = tag;
        out[1] = flag;
        out[2..].copy_from_slice(&value.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8; SOURCE_MESSAGE_BYTES]) -> io::Result<Self> {
        let value = u64::from_le_bytes(bytes[2..].try_into().expect("8 bytes"));
        match (bytes[0], bytes[1]) {
            (1, flag @ (0 | 1)) => Ok(SourceMessage::Resume {
                from: value,
                acks_on_commit: flag == 1,
            }),
            (2, 0) => Ok(SourceMessage::Ack { upto: value }),
            (3, 0) => Ok(SourceMessage::Ended { upto: value }),
            (tag, flag) => Err(invalid(format!(
                "not a source message (tag {tag}, flag {flag}): is this a verity TCP source?"
            ))),
        }
    }
}

/// Appends a `Data` frame header for `len` bytes.
pub fn data_header(len: usize) -> [u8; DATA_HEADER_BYTES] {
    let mut out = [0; DATA_HEADER_BYTES];
    out[0] = TAG_DATA;
    out[1..].copy_from_slice(&(len as u32).to_le_bytes());
    out
}

/// The whole `End` frame.
pub fn end_frame(total: u64) -> [u8; 9] {
    let mut out = [0; 9];
    out[0] = TAG_END;
    out[1..].copy_from_slice(&total.to_le_bytes());
    out
}

/// Sink → receiver: a frame of whole lines.
pub const TAG_LINES: u8 = 1;
/// Sink → receiver (staged): lines up to `first` are final.
pub const TAG_COMMIT: u8 = 2;
/// Sink → receiver (staged): drop staged lines past `first`.
pub const TAG_ABORT: u8 = 3;
/// Tag, first sequence (u64), line count (u32), byte length (u32).
pub const LINES_HEADER_BYTES: usize = 17;
/// The largest `Lines` frame a receiver accepts; the sink cuts bigger
/// buffers into frames of about `LINES_FRAME_TARGET_BYTES`.
pub const LINES_FRAME_MAX_BYTES: usize = 64 << 20;
pub const LINES_FRAME_TARGET_BYTES: usize = 1 << 20;

/// A `Lines` frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinesHeader {
    pub first: u64,
    pub count: u32,
    pub len: u32,
}

impl LinesHeader {
    pub fn encode(self) -> [u8; LINES_HEADER_BYTES] {
        let mut out = [0; LINES_HEADER_BYTES];
        out[0] = TAG_LINES;
        out[1..9].copy_from_slice(&self.first.to_le_bytes());
        out[9..13].copy_from_slice(&self.count.to_le_bytes());
        out[13..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8; LINES_HEADER_BYTES]) -> io::Result<Self> {
        if bytes[0] != TAG_LINES {
            return Err(invalid(format!("not a lines frame (tag {})", bytes[0])));
        }
        let header = LinesHeader {
            first: u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes")),
            count: u32::from_le_bytes(bytes[9..13].try_into().expect("4 bytes")),
            len: u32::from_le_bytes(bytes[13..].try_into().expect("4 bytes")),
        };
        if header.first == 0 || header.len as usize > LINES_FRAME_MAX_BYTES {
            return Err(invalid(format!("a bad lines frame: {header:?}")));
        }
        Ok(header)
    }
}

/// What a sink → receiver frame header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkHeader {
    Lines(LinesHeader),
    Commit { upto: u64 },
    Abort { keep: u64 },
}

impl SinkHeader {
    /// A commit or abort: a header alone (no count, no bytes).
    pub fn encode_control(self) -> [u8; LINES_HEADER_BYTES] {
        let (tag, seq) = match self {
            SinkHeader::Lines(header) => return header.encode(),
            SinkHeader::Commit { upto } => (TAG_COMMIT, upto),
            SinkHeader::Abort { keep } => (TAG_ABORT, keep),
        };
        let mut out = [0; LINES_HEADER_BYTES];
        out[0] = tag;
        out[1..9].copy_from_slice(&seq.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8; LINES_HEADER_BYTES]) -> io::Result<Self> {
        let seq = u64::from_le_bytes(bytes[1..9].try_into().expect("8 bytes"));
        match bytes[0] {
            TAG_LINES => LinesHeader::decode(bytes).map(SinkHeader::Lines),
            TAG_COMMIT if bytes[9..] == [0; 8] => Ok(SinkHeader::Commit { upto: seq }),
            TAG_ABORT if bytes[9..] == [0; 8] => Ok(SinkHeader::Abort { keep: seq }),
            tag => Err(invalid(format!("not a sink frame (tag {tag})"))),
        }
    }

    /// Bytes of payload that follow the header.
    pub fn payload_len(self) -> usize {
        match self {
            SinkHeader::Lines(header) => header.len as usize,
            _ => 0,
        }
    }
}

/// Receiver → sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverMessage {
    /// The receiver holds lines 1..=have: send from `have + 1`.
    Welcome { have: u64 },
    /// The receiver wrote (staged sinks: staged) lines 1..=have.
    Ack { have: u64 },
    /// A staged sink's lines 1..=upto are final in the receiver's output.
    Committed { upto: u64 },
}

pub const RECEIVER_MESSAGE_BYTES: usize = 9;

impl ReceiverMessage {
    pub fn encode(self) -> [u8; RECEIVER_MESSAGE_BYTES] {
        let (tag, have) = match self {
            ReceiverMessage::Welcome { have } => (1, have),
            ReceiverMessage::Ack { have } => (2, have),
            ReceiverMessage::Committed { upto } => (3, upto),
        };
        let mut out = [0; RECEIVER_MESSAGE_BYTES];
        out[0] = tag;
        out[1..].copy_from_slice(&have.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8; RECEIVER_MESSAGE_BYTES]) -> io::Result<Self> {
        let have = u64::from_le_bytes(bytes[1..].try_into().expect("8 bytes"));
        match bytes[0] {
            1 => Ok(ReceiverMessage::Welcome { have }),
            2 => Ok(ReceiverMessage::Ack { have }),
            3 => Ok(ReceiverMessage::Committed { upto: have }),
            tag => Err(invalid(format!(
                "not a receiver message (tag {tag}): is the receiver `verity receive`?"
            ))),
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Whether an I/O error only means "nothing yet" on a socket with a timeout.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_tell_the_protocol_from_plain_text() {
        let hello = preamble(SEND_MAGIC);
        assert_eq!(
            greeting(SEND_MAGIC, &hello),
            Greeting::Protocol { version: VERSION }
        );
        assert_eq!(greeting(SEND_MAGIC, &hello[..3]), Greeting::Undecided);
        assert_eq!(greeting(SEND_MAGIC, b""), Greeting::Undecided);
        assert_eq!(greeting(SEND_MAGIC, b"1\n"), Greeting::Plain);
        assert_eq!(greeting(SEND_MAGIC, &preamble(SINK_MAGIC)), Greeting::Plain);
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        for m in [
            SourceMessage::Resume {
                from: 7,
                acks_on_commit: true,
            },
            SourceMessage::Resume {
                from: u64::MAX,
                acks_on_commit: false,
            },
            SourceMessage::Ack { upto: 3 },
            SourceMessage::Ended { upto: 9 },
        ] {
            assert_eq!(SourceMessage::decode(&m.encode()).unwrap(), m);
        }
        assert!(SourceMessage::decode(&[9; SOURCE_MESSAGE_BYTES]).is_err());
        for m in [
            ReceiverMessage::Welcome { have: 0 },
            ReceiverMessage::Ack { have: 5 },
            ReceiverMessage::Committed { upto: 7 },
        ] {
            assert_eq!(ReceiverMessage::decode(&m.encode()).unwrap(), m);
        }
        let header = LinesHeader {
            first: 1,
            count: 2,
            len: 4,
        };
        assert_eq!(LinesHeader::decode(&header.encode()).unwrap(), header);
        let zero = LinesHeader { first: 0, ..header };
        assert!(
            LinesHeader::decode(&zero.encode()).is_err(),
            "sequences start at 1"
        );
        for h in [
            SinkHeader::Lines(header),
            SinkHeader::Commit { upto: 9 },
            SinkHeader::Abort { keep: 0 },
        ] {
            assert_eq!(SinkHeader::decode(&h.encode_control()).unwrap(), h);
        }
        let mut commit_with_bytes = SinkHeader::Commit { upto: 1 }.encode_control();
        commit_with_bytes[13] = 1;
        assert!(
            SinkHeader::decode(&commit_with_bytes).is_err(),
            "a commit carries no lines"
        );
        assert_eq!(SinkHeader::Commit { upto: 3 }.payload_len(), 0);
    }
}
