//! Frames: a fixed header and a payload of length-prefixed records.
//!
//! Header (little-endian, `FRAME_HEADER_SIZE_BYTES` = 32):
//!
//! | bytes  | field                                  |
//! |--------|----------------------------------------|
//! | 0..4   | magic `VRTY`                           |
//! | 4..6   | protocol version                       |
//! | 6      | frame kind                             |
//! | 7      | reserved, 0                            |
//! | 8..12  | payload size in bytes                  |
//! | 12..16 | channel id                             |
//! | 16..24 | first sequence number (Ack: acked seq) |
//! | 24..28 | record count                           |
//! | 28..32 | CRC-32C of bytes 4..28 and the payload |
//!
//! The checksum covers the header fields too, so a corrupted channel id or
//! sequence number is caught like a corrupted record. Each record in the
//! payload is a u32 length and its bytes; the lengths must tile the payload
//! exactly. The decoder slices frames out of its read buffer as `Bytes` and
//! hands records out as views of them (`Bytes::slice_ref` keeps one that must
//! outlive its frame): no copy, allocation or reference count per record.

use bytes::{Bytes, BytesMut};
use std::io::{self, Read};
use std::ops::Range;

pub const FRAME_MAGIC: [u8; 4] = *b"VRTY";
/// 2: a hello names the sender's incarnation (`auth`). 3: checkpoint parts
/// cross in pieces, and say whether they are deltas (`verity-core`'s codec).
pub const PROTOCOL_VERSION: u16 = 4;
pub const FRAME_HEADER_SIZE_BYTES: usize = 32;
/// Largest frame, header included.
pub const FRAME_SIZE_MAX_BYTES: usize = 16 << 20;
pub const FRAME_RECORDS_MAX: u32 = 1 << 20;
const RECORD_PREFIX_BYTES: usize = 4;
/// Bytes asked of the socket per read.
const READ_SIZE_BYTES: usize = 256 << 10;
const CRC_COVERED_HEADER: Range<usize> = 4..28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Records `first_seq..first_seq + record_count` of `channel`.
    Data = 1,
    /// No records; `first_seq` is a cumulative ack: every record of `channel`
    /// numbered up to and including it has arrived.
    Ack = 2,
    /// No records; proves the connection is alive.
    Heartbeat = 3,
    /// Handshake: cluster id, process id, protocol version, nonce (see `auth`).
    Hello = 4,
    /// Handshake: the HMAC answering the peer's nonce (see `auth`).
    Proof = 5,
    /// One record: why the sender is closing the connection, for the log.
    Refused = 6,
}

impl FrameKind {
    fn from_u8(value: u8) -> Option<FrameKind> {
        Some(match value {
            1 => FrameKind::Data,
            2 => FrameKind::Ack,
            3 => FrameKind::Heartbeat,
            4 => FrameKind::Hello,
            5 => FrameKind::Proof,
            6 => FrameKind::Refused,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub channel: u32,
    pub first_seq: u64,
    pub record_count: u32,
    pub payload_size_bytes: u32,
    pub crc32c: u32,
}

impl FrameHeader {
    /// The sequence number of a data frame's last record: what consuming the
    /// frame acknowledges. Every consumer (the runtime's `RemoteIn`, the
    /// simulator's) acks through this one computation, so a bug in it is one
    /// the simulator's seeds meet.
    pub fn last_seq(&self) -> u64 {
        assert!(self.record_count > 0, "a data frame carries at least one record");
        self.first_seq + u64::from(self.record_count) - 1
    }
}

/// A decoded frame; `payload` is a slice of the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: FrameHeader,
    pub payload: Bytes,
}

impl Frame {
    /// The records, as borrowed views of the payload (validated at decode): no
    /// copy and no reference-count traffic per record. A record that must
    /// outlive the frame is `frame.payload.slice_ref(record)`, still zero-copy.
    pub fn records(&self) -> Records<'_> {
        Records {
            payload: &self.payload,
            at: 0,
        }
    }
}

pub struct Records<'a> {
    payload: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let (start, end) = record_span(self.payload, self.at)?;
        self.at = end;
        Some(&self.payload[start..end])
    }
}

/// The record starting at `at`: its bytes' span, if the payload holds it whole.
fn record_span(payload: &[u8], at: usize) -> Option<(usize, usize)> {
    let prefix = payload.get(at..at + RECORD_PREFIX_BYTES)?;
    let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
    let start = at + RECORD_PREFIX_BYTES;
    let end = start.checked_add(len)?;
    (end <= payload.len()).then_some((start, end))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad magic {found:02x?} (not a verity peer?)")]
    BadMagic { found: Vec<u8> },
    #[error("protocol version {found}, this build speaks {PROTOCOL_VERSION}")]
    BadVersion { found: u16 },
    #[error("unknown frame kind {found}")]
    BadKind { found: u8 },
    #[error("frame of {size_bytes} bytes exceeds the {max_bytes}-byte limit")]
    Oversized { size_bytes: u64, max_bytes: usize },
    #[error("frame claims {count} records, more than the {FRAME_RECORDS_MAX} limit")]
    TooManyRecords { count: u32 },
    #[error("checksum mismatch: header says {expected:#010x}, content gives {computed:#010x}")]
    BadChecksum { expected: u32, computed: u32 },
    #[error("records do not tile the payload: {detail}")]
    BadRecordLayout { detail: String },
    #[error("stream ended inside a frame: {buffered_bytes} bytes of it buffered")]
    Truncated { buffered_bytes: usize },
}

/// Writes one frame straight into an output buffer.
pub struct FrameWriter<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    kind: FrameKind,
    channel: u32,
    first_seq: u64,
    record_count: u32,
}

impl<'a> FrameWriter<'a> {
    /// Reserves the header at the end of `out` (which may hold earlier frames).
    pub fn begin(out: &'a mut Vec<u8>, kind: FrameKind, channel: u32, first_seq: u64) -> Self {
        let start = out.len();
        out.resize(start + FRAME_HEADER_SIZE_BYTES, 0);
        FrameWriter {
            out,
            start,
            kind,
            channel,
            first_seq,
            record_count: 0,
        }
    }

    pub fn push_record(&mut self, record: &[u8]) {
        self.record_with(|out| out.extend_from_slice(record));
    }

    /// The caller writes the record's bytes into the buffer; its length prefix
    /// is patched afterwards.
    pub fn record_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let prefix_at = self.out.len();
        self.out.extend_from_slice(&[0; RECORD_PREFIX_BYTES]);
        write(self.out);
        let len = self.out.len() - prefix_at - RECORD_PREFIX_BYTES;
        let len = u32::try_from(len).expect("a record over 4 GiB");
        self.out[prefix_at..prefix_at + RECORD_PREFIX_BYTES].copy_from_slice(&len.to_le_bytes());
        self.record_count += 1;
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    pub fn payload_size_bytes(&self) -> usize {
        self.out.len() - self.start - FRAME_HEADER_SIZE_BYTES
    }

    /// Fills in the header and checksum; returns the frame's bytes in `out`.
    pub fn finish(self) -> Range<usize> {
        let payload_size = self.payload_size_bytes();
        assert!(
            payload_size + FRAME_HEADER_SIZE_BYTES <= FRAME_SIZE_MAX_BYTES,
            "frame over the size limit"
        );
        assert!(
            self.record_count <= FRAME_RECORDS_MAX,
            "frame over the record limit"
        );
        let header = &mut self.out[self.start..self.start + FRAME_HEADER_SIZE_BYTES];
        header[0..4].copy_from_slice(&FRAME_MAGIC);
        header[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        header[6] = self.kind as u8;
        header[7] = 0;
        header[8..12].copy_from_slice(&(payload_size as u32).to_le_bytes());
        header[12..16].copy_from_slice(&self.channel.to_le_bytes());
        header[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        header[24..28].copy_from_slice(&self.record_count.to_le_bytes());
        let frame = &self.out[self.start..];
        let crc = checksum(
            &frame[..FRAME_HEADER_SIZE_BYTES],
            &frame[FRAME_HEADER_SIZE_BYTES..],
        );
        self.out[self.start + 28..self.start + 32].copy_from_slice(&crc.to_le_bytes());
        self.start..self.out.len()
    }
}
/// The producing end of one channel's data frames: numbers their records
/// from 1, in order, as the receiver's dedup and the sender's window expect.
/// The runtime's `RemoteOut` and the simulator's producers both build their
/// frames here.
#[derive(Debug)]
pub struct ChannelFrames {
    channel: u32,
    next_seq: u64,
}

impl ChannelFrames {
    pub fn new(channel: u32) -> Self {
        ChannelFrames { channel, next_seq: 1 }
    }

    /// One whole frame, written by `write`, numbered after the last one.
    pub fn build(&mut self, write: impl FnOnce(&mut FrameWriter<'_>)) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut frame = FrameWriter::begin(&mut bytes, FrameKind::Data, self.channel, self.next_seq);
        write(&mut frame);
        let records = frame.record_count();
        assert!(records > 0, "every frame carries a header record");
        frame.finish();
        self.next_seq += u64::from(records);
        bytes
    }
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&header[CRC_COVERED_HEADER]), payload)
}

/// Appends a whole frame of `records`.
pub fn encode_frame(
    out: &mut Vec<u8>,
    kind: FrameKind,
    channel: u32,
    first_seq: u64,
    records: &[&[u8]],
) -> Range<usize> {
    let mut writer = FrameWriter::begin(out, kind, channel, first_seq);
    for record in records {
        writer.push_record(record);
    }
    writer.finish()
}

/// Reads a byte stream into one large buffer and cuts frames out of it.
pub struct FrameDecoder {
    buf: BytesMut,
    /// Reads land here first: zeroed once, so a read costs a copy of what
    /// arrived rather than a fresh zeroing of the whole read size.
    scratch: Vec<u8>,
    poisoned: Option<DecodeError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    pub fn new() -> Self {
        FrameDecoder {
            buf: BytesMut::with_capacity(READ_SIZE_BYTES),
            scratch: Vec::new(),
            poisoned: None,
        }
    }

    /// One `read`, appended to the buffer. `Ok(0)` is the end of the stream.
    pub fn read_from(&mut self, reader: &mut impl Read) -> io::Result<usize> {
        if self.scratch.is_empty() {
            self.scratch = vec![0; READ_SIZE_BYTES];
        }
        let read = reader.read(&mut self.scratch)?;
        self.buf.extend_from_slice(&self.scratch[..read]);
        Ok(read)
    }

    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed. After an
    /// error the decoder is poisoned: the stream cannot be trusted any more.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if let Some(error) = &self.poisoned {
            return Err(error.clone());
        }
        let result = self.try_next();
        if let Err(error) = &result {
            self.poisoned = Some(error.clone());
        }
        result
    }

    fn try_next(&mut self) -> Result<Option<Frame>, DecodeError> {
        let magic_seen = self.buf.len().min(FRAME_MAGIC.len());
        if self.buf[..magic_seen] != FRAME_MAGIC[..magic_seen] {
            return Err(DecodeError::BadMagic {
                found: self.buf[..magic_seen].to_vec(),
            });
        }
        if self.buf.len() < FRAME_HEADER_SIZE_BYTES {
            return Ok(None);
        }
        let header = parse_header(&self.buf[..FRAME_HEADER_SIZE_BYTES])?;
        let frame_size = FRAME_HEADER_SIZE_BYTES + header.payload_size_bytes as usize;
        if self.buf.len() < frame_size {
            return Ok(None);
        }
        let payload = &self.buf[FRAME_HEADER_SIZE_BYTES..frame_size];
        let computed = checksum(&self.buf[..FRAME_HEADER_SIZE_BYTES], payload);
        if computed != header.crc32c {
            return Err(DecodeError::BadChecksum {
                expected: header.crc32c,
                computed,
            });
        }
        check_records(payload, header.record_count)?;
        let frame = self.buf.split_to(frame_size).freeze();
        Ok(Some(Frame {
            header,
            payload: frame.slice(FRAME_HEADER_SIZE_BYTES..),
        }))
    }

    /// At the end of the stream: an error if a frame was cut short.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            buffered_bytes => Err(DecodeError::Truncated { buffered_bytes }),
        }
    }
}

/// The (first sequence number, record count) of an encoded frame, read from
/// its header without checking the payload (for frames this process encoded).
pub fn peek_numbers(frame: &[u8]) -> Option<(u64, u32)> {
    let header = frame.get(..FRAME_HEADER_SIZE_BYTES)?;
    let first_seq = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(header[24..28].try_into().expect("4 bytes"));
    Some((first_seq, count))
}

fn parse_header(bytes: &[u8]) -> Result<FrameHeader, DecodeError> {
    let u16_at = |at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = u16_at(4);
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::BadVersion { found: version });
    }
    let kind = FrameKind::from_u8(bytes[6]).ok_or(DecodeError::BadKind { found: bytes[6] })?;
    let payload_size_bytes = u32_at(8);
    let size_bytes = FRAME_HEADER_SIZE_BYTES as u64 + payload_size_bytes as u64;
    if size_bytes > FRAME_SIZE_MAX_BYTES as u64 {
        return Err(DecodeError::Oversized {
            size_bytes,
            max_bytes: FRAME_SIZE_MAX_BYTES,
        });
    }
    let record_count = u32_at(24);
    if record_count > FRAME_RECORDS_MAX {
        return Err(DecodeError::TooManyRecords { count: record_count });
    }
    Ok(FrameHeader {
        kind,
        channel: u32_at(12),
        first_seq: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
        record_count,
        payload_size_bytes,
        crc32c: u32_at(28),
    })
}

fn check_records(payload: &[u8], record_count: u32) -> Result<(), DecodeError> {
    let mut at = 0;
    for index in 0..record_count {
        let Some((_, end)) = record_span(payload, at) else {
            let detail = format!("record {index} of {record_count} runs past the payload");
            return Err(DecodeError::BadRecordLayout { detail });
        };
        at = end;
    }
    if at != payload.len() {
        let detail = format!(
            "{} bytes after the last of {record_count} records",
            payload.len() - at
        );
        return Err(DecodeError::BadRecordLayout { detail });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_the_documented_one() {
        let mut out = vec![0xAA]; // an earlier byte: the frame is appended
        let range = encode_frame(
            &mut out,
            FrameKind::Ack,
            0x0403_0201,
            0x0807_0605_0403_0201,
            &[b"xyz"],
        );
        assert_eq!(range, 1..out.len());
        let frame = &out[range];
        assert_eq!(frame.len(), FRAME_HEADER_SIZE_BYTES + RECORD_PREFIX_BYTES + 3);
        assert_eq!(&frame[0..4], b"VRTY");
        assert_eq!(&frame[4..6], &PROTOCOL_VERSION.to_le_bytes());
        assert_eq!(frame[6], FrameKind::Ack as u8);
        assert_eq!(frame[7], 0);
        assert_eq!(&frame[8..12], &[7, 0, 0, 0]);
        assert_eq!(&frame[12..16], &[1, 2, 3, 4]);
        assert_eq!(&frame[16..24], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&frame[24..28], &[1, 0, 0, 0]);
        let crc = crc32c::crc32c(&[&frame[4..28], &frame[32..]].concat());
        assert_eq!(&frame[28..32], &crc.to_le_bytes());
        assert_eq!(&frame[32..], &[3, 0, 0, 0, b'x', b'y', b'z']);
        assert_eq!(peek_numbers(frame), Some((0x0807_0605_0403_0201, 1)));
    }

    #[test]
    fn every_kind_survives_its_byte() {
        use FrameKind::*;
        for kind in [Data, Ack, Heartbeat, Hello, Proof, Refused] {
            assert_eq!(FrameKind::from_u8(kind as u8), Some(kind));
        }
        assert_eq!(FrameKind::from_u8(0), None);
        assert_eq!(FrameKind::from_u8(7), None);
    }

    #[test]
    fn an_empty_frame_has_no_records() {
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Heartbeat, 0, 0, &[]);
        decoder.extend_from_slice(&out);
        let frame = decoder.next_frame().unwrap().unwrap();
        assert_eq!(frame.records().count(), 0);
        assert_eq!(decoder.buffered_bytes(), 0);
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn header_bytes_alone_wait_for_the_payload() {
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Data, 1, 1, &[b"payload"]);
        let mut decoder = FrameDecoder::new();
        for byte in &out[..out.len() - 1] {
            decoder.extend_from_slice(std::slice::from_ref(byte));
            assert_eq!(decoder.next_frame(), Ok(None));
        }
        assert!(matches!(decoder.finish(), Err(DecodeError::Truncated { .. })));
        decoder.extend_from_slice(&out[out.len() - 1..]);
        assert!(decoder.next_frame().unwrap().is_some());
    }

    #[test]
    fn records_are_windows_of_one_allocation() {
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Data, 1, 1, &[b"one", b"", b"three"]);
        encode_frame(&mut out, FrameKind::Data, 1, 4, &[b"four"]);
        let mut decoder = FrameDecoder::new();
        decoder.extend_from_slice(&out);
        let first = decoder.next_frame().unwrap().unwrap();
        let second = decoder.next_frame().unwrap().unwrap();
        // Both frames were cut from the same read buffer, back to back.
        let first_end = first.payload.as_ptr_range().end;
        assert_eq!(
            first_end.wrapping_add(FRAME_HEADER_SIZE_BYTES),
            second.payload.as_ptr()
        );
        let mut expected_at = first.payload.as_ptr().wrapping_add(RECORD_PREFIX_BYTES);
        for record in first.records() {
            assert_eq!(record.as_ptr(), expected_at);
            expected_at = expected_at.wrapping_add(record.len() + RECORD_PREFIX_BYTES);
        }
    }
}
