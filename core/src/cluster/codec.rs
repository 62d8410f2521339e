//! What crosses a process boundary, as frame records: shard batches, dealt
//! source chunks, output, and control messages. Each frame's first record says
//! what the rest are; record bytes are read in place from the received buffer.
//! Control messages (`lifecycle::Control`) travel the same way.

use super::lifecycle::{
    bounded_reason, Control, Job, JobCheckpoints, ReadersProgress, APP_NAME_SIZE_MAX_BYTES,
    JOB_TEXT_SIZE_MAX_BYTES, REASON_SIZE_MAX_BYTES,
};
use super::{ClusterError, CLUSTER_SOURCES_MAX};
use crate::connector::Position;
use crate::ids::MsgId;
use crate::key::Key;
use crate::line::DeadLetter;
use crate::shard::{Batch, CheckpointPart, Routed, ShardCounters};
use crate::sink::OutputBatch;
use crate::source::{ChunkData, SourceCut, SourceEvent};
use crate::wire::{decode_bytes, encode_bytes, take, Wire, WireError};
use bytes::Bytes;
use verity_net::frame::{Frame, FrameWriter};

fn malformed(what: &'static str, e: WireError) -> ClusterError {
    ClusterError::Malformed(format!("{what}: {e}"))
}

fn records<'a>(
    frame: &'a Frame,
    what: &'static str,
) -> Result<(&'a [u8], impl Iterator<Item = &'a [u8]> + 'a), ClusterError> {
    let mut records = frame.records();
    let head = records
        .next()
        .ok_or_else(|| ClusterError::Malformed(format!("empty {what} frame")))?;
    Ok((head, records))
}

// ---- shard batches -------------------------------------------------------

pub fn encode_batch<K: Wire, V: Wire>(batch: &Batch<K, V>, frame: &mut FrameWriter<'_>) {
    frame.record_with(|out| {
        batch.chunk.encode(out);
        batch.epoch.encode(out);
        batch.first_seq.encode(out);
        batch.last.encode(out);
        batch.chunk_event_max_ms.encode(out);
        (!batch.event_max_ms.is_empty()).encode(out);
    });
    for (at, record) in batch.records.iter().enumerate() {
        frame.record_with(|out| {
            encode_id(record.id, out);
            record.key.encode(out);
            record.value.encode(out);
            if let Some(max_ms) = batch.event_max_ms.get(at) {
                max_ms.encode(out);
            }
        });
    }
}

pub fn decode_batch<K: Key + Wire, V: Wire>(
    frame: &Frame,
    source: u32,
    from: u32,
) -> Result<Batch<K, V>, ClusterError> {
    let (head, rest) = records(frame, "batch")?;
    let mut input = head;
    let decode_head = |input: &mut &[u8]| -> Result<_, WireError> {
        let numbers = (u64::decode(input)?, u64::decode(input)?, u64::decode(input)?);
        let flags = (
            bool::decode(input)?,
            Option::<u64>::decode(input)?,
            bool::decode(input)?,
        );
        Ok((numbers, flags))
    };
    let ((chunk, epoch, first_seq), (last, chunk_event_max_ms, stamped)) =
        decode_head(&mut input).map_err(|e| malformed("batch header", e))?;
    let capacity = frame.header.record_count as usize;
    let mut batch = Batch {
        source,
        from,
        chunk,
        epoch,
        first_seq,
        last,
        records: Vec::with_capacity(capacity),
        event_max_ms: Vec::with_capacity(if stamped { capacity } else { 0 }),
        chunk_event_max_ms,
    };
    for record in rest {
        let mut input = record;
        let decode_record = |input: &mut &[u8]| -> Result<(Routed<K, V>, Option<u64>), WireError> {
            let routed = Routed {
                id: decode_id(input)?,
                key: K::decode(input)?,
                value: V::decode(input)?,
            };
            Ok((routed, if stamped { Some(u64::decode(input)?) } else { None }))
        };
        let (routed, max_ms) = decode_record(&mut input).map_err(|e| malformed("batch record", e))?;
        batch.records.push(routed);
        batch.event_max_ms.extend(max_ms);
    }
    Ok(batch)
}

fn encode_id(id: MsgId, out: &mut Vec<u8>) {
    id.producer.encode(out);
    id.part.encode(out);
    id.seq.encode(out);
}

/// Encoded size of a `MsgId`.
const ID_SIZE_BYTES: usize = 16;

/// Exactly `count` ids, back to back.
fn decode_ids(mut input: &[u8], count: u64) -> Result<Vec<MsgId>, WireError> {
    if input.len() as u64 != count.saturating_mul(ID_SIZE_BYTES as u64) {
        return Err(WireError::Invalid("output ids do not match their count"));
    }
    let mut ids = Vec::with_capacity(input.len() / ID_SIZE_BYTES);
    while !input.is_empty() {
        ids.push(decode_id(&mut input)?);
    }
    Ok(ids)
}

fn decode_id(input: &mut &[u8]) -> Result<MsgId, WireError> {
    Ok(MsgId {
        producer: u32::decode(input)?,
        part: u32::decode(input)?,
        seq: u64::decode(input)?,
    })
}

// ---- source events -------------------------------------------------------

const EVENT_CHUNK_LINES: u8 = 0;
const EVENT_CHUNK_OVERSIZED: u8 = 1;
const EVENT_END: u8 = 2;
const EVENT_FAILED: u8 = 3;
const EVENT_BARRIER: u8 = 4;

pub fn encode_source_event(event: &SourceEvent, frame: &mut FrameWriter<'_>) {
    match event {
        SourceEvent::Chunk {
            index,
            first_line,
            data,
            partition,
            position,
            epoch,
            ..
        } => {
            let (tag, body, size_bytes) = match data {
                ChunkData::Lines(lines) => (EVENT_CHUNK_LINES, lines, 0),
                ChunkData::Oversized { prefix, size_bytes } => (EVENT_CHUNK_OVERSIZED, prefix, *size_bytes),
            };
            frame.record_with(|out| {
                tag.encode(out);
                index.encode(out);
                first_line.encode(out);
                size_bytes.encode(out);
                partition.encode(out);
                position.encode(out);
                epoch.encode(out);
            });
            frame.push_record(body);
        }
        SourceEvent::Barrier { checkpoint, cut, .. } => frame.record_with(|out| {
            EVENT_BARRIER.encode(out);
            checkpoint.encode(out);
            encode_cut(cut, out);
        }),
        SourceEvent::End { chunks, .. } => frame.record_with(|out| {
            EVENT_END.encode(out);
            chunks.encode(out);
        }),
        SourceEvent::Failed { error, .. } => {
            frame.record_with(|out| EVENT_FAILED.encode(out));
            frame.push_record(error.as_bytes());
        }
    }
}

pub fn decode_source_event(frame: &Frame, source: u32) -> Result<SourceEvent, ClusterError> {
    let (head, mut rest) = records(frame, "source event")?;
    let mut input = head;
    let tag = u8::decode(&mut input).map_err(|e| malformed("source event", e))?;
    let mut body = || {
        rest.next()
            .map(|body| frame.payload.slice_ref(body))
            .ok_or_else(|| ClusterError::Malformed("source event without its body".into()))
    };
    match tag {
        EVENT_CHUNK_LINES | EVENT_CHUNK_OVERSIZED => {
            let decode = |input: &mut &[u8]| -> Result<_, WireError> {
                let numbers = (u64::decode(input)?, u64::decode(input)?, u64::decode(input)?);
                let (partition, position) = (u32::decode(input)?, Position::decode(input)?);
                Ok((numbers, partition, position, u64::decode(input)?))
            };
            let ((index, first_line, size_bytes), partition, position, epoch) =
                decode(&mut input).map_err(|e| malformed("chunk", e))?;
            let body = body()?;
            let data = if tag == EVENT_CHUNK_LINES {
                ChunkData::Lines(body)
            } else {
                ChunkData::Oversized {
                    prefix: body,
                    size_bytes,
                }
            };
            Ok(SourceEvent::Chunk {
                source,
                index,
                first_line,
                data,
                partition,
                position,
                epoch,
            })
        }
        EVENT_BARRIER => {
            let decode =
                |input: &mut &[u8]| -> Result<_, WireError> { Ok((u64::decode(input)?, decode_cut(input)?)) };
            let (checkpoint, cut) = decode(&mut input).map_err(|e| malformed("barrier", e))?;
            Ok(SourceEvent::Barrier {
                source,
                checkpoint,
                cut,
            })
        }
        EVENT_END => {
            let chunks = u64::decode(&mut input).map_err(|e| malformed("source end", e))?;
            Ok(SourceEvent::End { source, chunks })
        }
        EVENT_FAILED => Ok(SourceEvent::Failed {
            source,
            error: String::from_utf8_lossy(&body()?).into_owned(),
        }),
        tag => Err(malformed(
            "source event",
            WireError::BadTag {
                tag,
                what: "source event",
            },
        )),
    }
}

/// A source's cut at a barrier: `next_chunk, next_line, count, (partition,
/// position)*`. Also the form a checkpoint stores it in.
pub fn encode_cut(cut: &SourceCut, out: &mut Vec<u8>) {
    cut.next_chunk.encode(out);
    cut.next_line.encode(out);
    (cut.positions.len() as u32).encode(out);
    for (partition, position) in &cut.positions {
        partition.encode(out);
        position.encode(out);
    }
}

pub fn decode_cut(input: &mut &[u8]) -> Result<SourceCut, WireError> {
    let next_chunk = u64::decode(input)?;
    let next_line = u64::decode(input)?;
    let count = u32::decode(input)?;
    // Each entry takes at least 5 bytes: a count beyond that is corrupt,
    // and must not make us reserve memory for it.
    if count as usize > input.len() / 5 {
        return Err(WireError::Invalid("more partitions than bytes"));
    }
    let mut positions = Vec::with_capacity(count as usize);
    for _ in 0..count {
        positions.push((u32::decode(input)?, Position::decode(input)?));
    }
    Ok(SourceCut {
        next_chunk,
        next_line,
        positions,
    })
}

// ---- output channel (worker shard → process 0) ---------------------------

/// What a remote shard sends towards the sinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// Lines read in place from the frame, with their ids if the shard kept them.
    Lines(OutputBatch<Bytes>),
    DeadLetter(DeadLetter),
    SourceFailed {
        source: u32,
        error: String,
    },
    /// The shard finished; its last message (boxed: its step timings are
    /// far larger than any other message's head).
    Finished(Box<ShardCounters>),
    /// A piece of the shard's part of a checkpoint (`PartUpload`), after
    /// the output that belongs to it: bytes `offset..` of the encoded part of
    /// `total` bytes.
    CheckpointPiece {
        total: u64,
        offset: u64,
        bytes: Bytes,
    },
}

const UP_LINES: u8 = 0;
const UP_DEAD_LETTER: u8 = 1;
const UP_SOURCE_FAILED: u8 = 2;
const UP_FINISHED: u8 = 3;
const UP_CHECKPOINT_PIECE: u8 = 5;

/// The largest piece of a checkpoint part in one frame: well under the frame
/// limit, so a part of any size (a large keyed state) crosses in frames
/// the network takes.
pub const PART_PIECE_MAX_BYTES: usize = 4 << 20;

/// A shard's checkpoint part on its way to process 0, in pieces of at most
/// `piece_max` bytes: both drivers `send` it, and may stop between pieces
/// (a full queue) and go on later.
#[derive(Debug)]
pub struct PartUpload {
    checkpoint: u64,
    /// The encoded part (never empty: it has a header).
    bytes: Vec<u8>,
    sent: usize,
    piece_max: usize,
}

impl PartUpload {
    pub fn new(part: &CheckpointPart, piece_max: usize) -> PartUpload {
        assert!(piece_max > 0);
        PartUpload {
            checkpoint: part.checkpoint,
            bytes: crate::checkpoint::encode_part(part),
            sent: 0,
            piece_max,
        }
    }

    /// The checkpoint whose part this is.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Offers the pieces left, in order, to `try_send` until it refuses one
    /// (returns false: the queue is full); returns whether all were sent.
    pub fn send(&mut self, mut try_send: impl FnMut(&UpstreamRef<'_>) -> bool) -> bool {
        while self.sent < self.bytes.len() {
            let end = self.bytes.len().min(self.sent + self.piece_max);
            let piece = UpstreamRef::CheckpointPiece {
                total: self.bytes.len() as u64,
                offset: self.sent as u64,
                bytes: &self.bytes[self.sent..end],
            };
            if !try_send(&piece) {
                return false;
            }
            self.sent = end;
        }
        true
    }
}

/// Process 0's end of `PartUpload`: pieces of one shard's parts, put back
/// together, each checked to follow the one before.
#[derive(Debug, Default)]
pub struct PartAssembly {
    bytes: Vec<u8>,
    total: Option<u64>,
}

impl PartAssembly {
    /// Takes the next piece; returns the part once its last piece is in.
    pub fn on_piece(
        &mut self,
        total: u64,
        offset: u64,
        piece: &[u8],
    ) -> Result<Option<CheckpointPart>, String> {
        if *self.total.get_or_insert(total) != total {
            return Err(format!(
                "a checkpoint piece says the part has {total} bytes, an earlier one {}",
                self.total.unwrap_or_default()
            ));
        }
        if offset != self.bytes.len() as u64 {
            return Err(format!(
                "a checkpoint piece at byte {offset}, where byte {} was next",
                self.bytes.len()
            ));
        }
        if offset + piece.len() as u64 > total {
            return Err(format!("a checkpoint piece runs past the part's {total} bytes"));
        }
        self.bytes.extend_from_slice(piece);
        if (self.bytes.len() as u64) < total {
            return Ok(None);
        }
        let part = crate::checkpoint::decode_part(&self.bytes).map_err(|e| format!("a checkpoint part: {e}"));
        *self = PartAssembly::default();
        part.map(Some)
    }
}

pub fn encode_upstream(message: &UpstreamRef<'_>, frame: &mut FrameWriter<'_>) {
    match message {
        UpstreamRef::Lines(batch) => {
            frame.record_with(|out| {
                UP_LINES.encode(out);
                (batch.ids.len() as u64).encode(out);
            });
            frame.push_record(&batch.lines);
            if !batch.ids.is_empty() {
                frame.record_with(|out| {
                    out.reserve(batch.ids.len() * ID_SIZE_BYTES);
                    for id in &batch.ids {
                        encode_id(*id, out);
                    }
                });
            }
        }
        UpstreamRef::DeadLetter(letter) => {
            frame.record_with(|out| {
                UP_DEAD_LETTER.encode(out);
                encode_id(letter.id, out);
                encode_bytes(letter.reason.as_bytes(), out);
            });
            frame.push_record(&letter.raw);
        }
        UpstreamRef::SourceFailed { source, error } => {
            frame.record_with(|out| {
                UP_SOURCE_FAILED.encode(out);
                source.encode(out);
            });
            frame.push_record(error.as_bytes());
        }
        UpstreamRef::CheckpointPiece { total, offset, bytes } => {
            frame.record_with(|out| {
                UP_CHECKPOINT_PIECE.encode(out);
                total.encode(out);
                offset.encode(out);
            });
            frame.push_record(bytes);
        }
        UpstreamRef::Finished(c) => frame.record_with(|out| {
            UP_FINISHED.encode(out);
            for value in [
                c.records_in,
                c.records_out,
                c.dead_lettered,
                c.duplicates_dropped,
                c.late,
            ] {
                value.encode(out);
            }
            for step in &c.timings.steps {
                step.records.encode(out);
                step.latency.sum_us.encode(out);
                for count in step.latency.counts {
                    count.encode(out);
                }
            }
        }),
    }
}

/// `Upstream` borrowed, so output buffers need not be copied to be encoded.
#[derive(Clone, Copy)]
pub enum UpstreamRef<'a> {
    Lines(&'a OutputBatch),
    DeadLetter(&'a DeadLetter),
    SourceFailed {
        source: u32,
        error: &'a str,
    },
    Finished(&'a ShardCounters),
    CheckpointPiece {
        total: u64,
        offset: u64,
        bytes: &'a [u8],
    },
}

pub fn decode_upstream(frame: &Frame) -> Result<Upstream, ClusterError> {
    let (head, mut rest) = records(frame, "output")?;
    let mut input = head;
    let bad = |e| malformed("output message", e);
    let tag = u8::decode(&mut input).map_err(bad)?;
    let mut body = || {
        rest.next()
            .map(|body| frame.payload.slice_ref(body))
            .ok_or_else(|| ClusterError::Malformed("output message without its body".into()))
    };
    Ok(match tag {
        UP_LINES => {
            let id_count = u64::decode(&mut input).map_err(bad)?;
            let lines = body()?;
            let ids = if id_count == 0 {
                Vec::new()
            } else {
                decode_ids(&body()?, id_count).map_err(bad)?
            };
            Upstream::Lines(OutputBatch { lines, ids })
        }
        UP_DEAD_LETTER => {
            let id = decode_id(&mut input).map_err(bad)?;
            let reason = String::from_utf8_lossy(decode_bytes(&mut input).map_err(bad)?).into_owned();
            Upstream::DeadLetter(DeadLetter {
                id,
                reason: reason.into(),
                raw: body()?,
            })
        }
        UP_SOURCE_FAILED => {
            let source = u32::decode(&mut input).map_err(bad)?;
            Upstream::SourceFailed {
                source,
                error: String::from_utf8_lossy(&body()?).into_owned(),
            }
        }
        UP_CHECKPOINT_PIECE => Upstream::CheckpointPiece {
            total: u64::decode(&mut input).map_err(bad)?,
            offset: u64::decode(&mut input).map_err(bad)?,
            bytes: body()?,
        },
        UP_FINISHED => {
            let mut next = || u64::decode(&mut input).map_err(bad);
            let mut counters = ShardCounters {
                records_in: next()?,
                records_out: next()?,
                dead_lettered: next()?,
                duplicates_dropped: next()?,
                late: next()?,
                timings: Default::default(),
            };
            for step in counters.timings.steps.iter_mut() {
                step.records = next()?;
                step.latency.sum_us = next()?;
                for count in step.latency.counts.iter_mut() {
                    *count = next()?;
                }
            }
            Upstream::Finished(Box::new(counters))
        }
        tag => {
            return Err(bad(WireError::BadTag {
                tag,
                what: "output message",
            }))
        }
    })
}

// ---- control (between process 0 and each worker) ------------------------

const CONTROL_JOB: u8 = 0;
const CONTROL_SHUTDOWN: u8 = 1;
const CONTROL_ABORT: u8 = 2;
const CONTROL_FAILED: u8 = 3;
const CONTROL_READERS: u8 = 4;

/// A control message as frame records: a tag, then the job or the reason.
pub fn encode_control(message: &Control, frame: &mut FrameWriter<'_>) {
    match message {
        Control::Job(job) => {
            frame.record_with(|out| CONTROL_JOB.encode(out));
            frame.record_with(|out| encode_job(job, out));
        }
        Control::Shutdown => frame.record_with(|out| CONTROL_SHUTDOWN.encode(out)),
        Control::Abort { reason } | Control::Failed { reason } => {
            let tag = if matches!(message, Control::Abort { .. }) {
                CONTROL_ABORT
            } else {
                CONTROL_FAILED
            };
            frame.record_with(|out| tag.encode(out));
            frame.push_record(bounded_reason(reason).as_bytes());
        }
        Control::Readers(progress) => {
            frame.record_with(|out| CONTROL_READERS.encode(out));
            frame.record_with(|out| {
                progress.requested.encode(out);
                progress.committed.encode(out);
                progress.stopping.encode(out);
            });
        }
    }
}

fn encode_job(job: &Job, out: &mut Vec<u8>) {
    assert!(job.app.len() <= APP_NAME_SIZE_MAX_BYTES, "app names are short");
    encode_bytes(job.app.as_bytes(), out);
    job.final_counts.encode(out);
    job.max_quote_age_ms.encode(out);
    job.sources.encode(out);
    job.batch_max.encode(out);
    job.queue_depth_batches.encode(out);
    job.discard_output.encode(out);
    job.output_ids.encode(out);
    match &job.checkpoints {
        None => false.encode(out),
        Some(checkpoints) => {
            true.encode(out);
            for text in [&checkpoints.state_dir, &checkpoints.fingerprint] {
                assert!(
                    text.len() <= JOB_TEXT_SIZE_MAX_BYTES,
                    "bounded by the command line"
                );
                encode_bytes(text.as_bytes(), out);
            }
            checkpoints.restore_from.encode(out);
        }
    }
    (job.spread_sources.len() as u32).encode(out);
    for (source, arg) in &job.spread_sources {
        assert!(
            arg.len() <= JOB_TEXT_SIZE_MAX_BYTES,
            "bounded by the command line"
        );
        source.encode(out);
        encode_bytes(arg.as_bytes(), out);
    }
}

/// A bounded UTF-8 text of a job.
fn decode_job_text(input: &mut &[u8], what: &'static str) -> Result<String, WireError> {
    let bytes = decode_bytes(input)?;
    if bytes.len() > JOB_TEXT_SIZE_MAX_BYTES {
        return Err(WireError::Invalid(what));
    }
    std::str::from_utf8(bytes)
        .map(str::to_string)
        .map_err(|_| WireError::Invalid(what))
}

/// Refuses a job no `encode_job` writes: a peer's bytes are not trusted
/// to be in range just because they authenticated.
fn decode_job(mut input: &[u8]) -> Result<Job, ClusterError> {
    let bad = |e| malformed("job", e);
    let app = decode_bytes(&mut input).map_err(bad)?;
    if app.len() > APP_NAME_SIZE_MAX_BYTES {
        return Err(bad(WireError::Invalid("app name too long")));
    }
    let app = std::str::from_utf8(app)
        .map_err(|_| bad(WireError::Invalid("app name is not UTF-8")))?
        .to_string();
    let job = Job {
        app,
        final_counts: bool::decode(&mut input).map_err(bad)?,
        max_quote_age_ms: Option::decode(&mut input).map_err(bad)?,
        sources: u32::decode(&mut input).map_err(bad)?,
        batch_max: u32::decode(&mut input).map_err(bad)?,
        queue_depth_batches: u32::decode(&mut input).map_err(bad)?,
        discard_output: bool::decode(&mut input).map_err(bad)?,
        output_ids: bool::decode(&mut input).map_err(bad)?,
        checkpoints: match bool::decode(&mut input).map_err(bad)? {
            false => None,
            true => Some(JobCheckpoints {
                state_dir: decode_job_text(&mut input, "state dir too long or not UTF-8").map_err(bad)?,
                fingerprint: decode_job_text(&mut input, "fingerprint too long or not UTF-8").map_err(bad)?,
                restore_from: u64::decode(&mut input).map_err(bad)?,
            }),
        },
        spread_sources: Vec::new(),
    };
    let mut job = job;
    let spread = u32::decode(&mut input).map_err(bad)?;
    if spread > job.sources.min(CLUSTER_SOURCES_MAX) {
        return Err(bad(WireError::Invalid("more spread sources than sources")));
    }
    for _ in 0..spread {
        let source = u32::decode(&mut input).map_err(bad)?;
        let arg = decode_job_text(&mut input, "source argument too long or not UTF-8").map_err(bad)?;
        if source >= job.sources || job.spread_sources.iter().any(|(s, _)| *s == source) {
            return Err(bad(WireError::Invalid(
                "a spread source out of range or named twice",
            )));
        }
        job.spread_sources.push((source, arg));
    }
    if !input.is_empty() {
        return Err(bad(WireError::Invalid("trailing bytes")));
    }
    if job.sources == 0 || job.sources > CLUSTER_SOURCES_MAX {
        return Err(bad(WireError::Invalid("source count out of range")));
    }
    if job.batch_max == 0 || job.queue_depth_batches == 0 {
        return Err(bad(WireError::Invalid("zero batch size or queue depth")));
    }
    Ok(job)
}

pub fn decode_control(frame: &Frame) -> Result<Control, ClusterError> {
    let (mut head, mut rest) = records(frame, "control")?;
    let tag = take(&mut head, 1).map_err(|e| malformed("control", e))?[0];
    let mut body = |what: &str| {
        rest.next()
            .ok_or_else(|| ClusterError::Malformed(format!("{what} message without a body")))
    };
    let reason = |body: &[u8]| -> Result<String, ClusterError> {
        if body.len() > REASON_SIZE_MAX_BYTES {
            return Err(malformed("control", WireError::Invalid("reason too long")));
        }
        Ok(String::from_utf8_lossy(body).into_owned())
    };
    let message = match tag {
        CONTROL_JOB => Control::Job(decode_job(body("job")?)?),
        CONTROL_SHUTDOWN => Control::Shutdown,
        CONTROL_ABORT => Control::Abort {
            reason: reason(body("abort")?)?,
        },
        CONTROL_FAILED => Control::Failed {
            reason: reason(body("failed")?)?,
        },
        CONTROL_READERS => {
            let mut input = body("readers")?;
            let bad = |e| malformed("readers' progress", e);
            let progress = ReadersProgress {
                requested: u64::decode(&mut input).map_err(bad)?,
                committed: u64::decode(&mut input).map_err(bad)?,
                stopping: bool::decode(&mut input).map_err(bad)?,
            };
            if !input.is_empty() {
                return Err(bad(WireError::Invalid("trailing bytes")));
            }
            Control::Readers(progress)
        }
        tag => {
            return Err(malformed(
                "control",
                WireError::BadTag {
                    tag,
                    what: "control message",
                },
            ))
        }
    };
    if !head.is_empty() || rest.next().is_some() {
        return Err(malformed("control", WireError::Invalid("trailing records")));
    }
    Ok(message)
}

/// One frame as a receiver decodes it, written by `write` (for tests).
#[cfg(test)]
pub(crate) fn framed(write: impl FnOnce(&mut FrameWriter<'_>)) -> Frame {
    use verity_net::frame::{FrameDecoder, FrameKind};
    let mut bytes = Vec::new();
    let mut frame = FrameWriter::begin(&mut bytes, FrameKind::Data, 7, 1);
    write(&mut frame);
    frame.finish();
    let mut decoder = FrameDecoder::new();
    decoder.extend_from_slice(&bytes);
    decoder.next_frame().unwrap().expect("one whole frame")
}

#[cfg(test)]
mod control_tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(message: &Control) -> Result<Control, ClusterError> {
        decode_control(&framed(|frame| encode_control(message, frame)))
    }

    fn job() -> Job {
        Job {
            app: "market-spread".into(),
            final_counts: true,
            max_quote_age_ms: Some(250),
            sources: 2,
            batch_max: 256,
            queue_depth_batches: 64,
            discard_output: false,
            output_ids: true,
            checkpoints: Some(JobCheckpoints {
                state_dir: "/var/lib/verity/state".into(),
                fingerprint: "market-spread; 6 shards".into(),
                restore_from: 12,
            }),
            spread_sources: vec![(1, "dir:///data/orders".into())],
        }
    }

    #[test]
    fn control_messages_round_trip() {
        for message in [
            Control::Job(job()),
            Control::Readers(ReadersProgress {
                requested: 3,
                committed: u64::MAX,
                stopping: true,
            }),
            Control::Job(Job {
                checkpoints: None,
                ..job()
            }),
            Control::Shutdown,
            Control::Abort {
                reason: "process 2 failed: x".into(),
            },
            Control::Failed {
                reason: String::new(),
            },
        ] {
            assert_eq!(round_trip(&message).unwrap(), message);
        }
    }

    #[test]
    fn long_reasons_are_cut_not_refused() {
        let message = Control::Failed {
            reason: "x".repeat(REASON_SIZE_MAX_BYTES + 10),
        };
        let Control::Failed { reason } = round_trip(&message).unwrap() else {
            panic!("a failure")
        };
        assert_eq!(reason.len(), REASON_SIZE_MAX_BYTES);
    }

    #[test]
    fn out_of_range_jobs_are_refused() {
        for bad in [
            Job { sources: 0, ..job() },
            Job {
                spread_sources: vec![(2, "dir:///x".into())],
                ..job()
            },
            Job {
                spread_sources: vec![(1, "a".into()), (1, "b".into())],
                ..job()
            },
            Job {
                sources: CLUSTER_SOURCES_MAX + 1,
                ..job()
            },
            Job {
                batch_max: 0,
                ..job()
            },
            Job {
                queue_depth_batches: 0,
                ..job()
            },
        ] {
            assert!(round_trip(&Control::Job(bad)).is_err());
        }
        let tag_only = framed(|frame| frame.record_with(|out| CONTROL_JOB.encode(out)));
        assert!(decode_control(&tag_only).is_err());
        let unknown = framed(|frame| frame.record_with(|out| 9u8.encode(out)));
        assert!(decode_control(&unknown).is_err());
        let extra = framed(|frame| {
            frame.record_with(|out| CONTROL_SHUTDOWN.encode(out));
            frame.push_record(b"more");
        });
        assert!(decode_control(&extra).is_err());
    }

    fn any_job() -> impl Strategy<Value = Job> {
        (
            ("[a-z-]{0,64}", any::<Option<u64>>()),
            any::<bool>(),
            1..=CLUSTER_SOURCES_MAX,
            1..=u32::MAX,
            1..=u32::MAX,
            (any::<bool>(), any::<bool>()),
            proptest::option::of(("[ -~]{0,100}", ".{0,100}", any::<u64>())),
        )
            .prop_map(
                |(
                    (app, max_quote_age_ms),
                    final_counts,
                    sources,
                    batch_max,
                    queue_depth_batches,
                    (discard_output, output_ids),
                    checkpoints,
                )| Job {
                    app,
                    final_counts,
                    max_quote_age_ms,
                    sources,
                    batch_max,
                    queue_depth_batches,
                    discard_output,
                    output_ids,
                    checkpoints: checkpoints.map(|(state_dir, fingerprint, restore_from)| JobCheckpoints {
                        state_dir,
                        fingerprint,
                        restore_from,
                    }),
                    spread_sources: if sources > 1 {
                        vec![(0, "dir:///in".into()), (sources - 1, "kafka://h/t".into())]
                    } else {
                        Vec::new()
                    },
                },
            )
    }

    fn any_control() -> impl Strategy<Value = Control> {
        prop_oneof![
            any_job().prop_map(Control::Job),
            Just(Control::Shutdown),
            ".{0,200}".prop_map(|reason| Control::Abort { reason }),
            ".{0,200}".prop_map(|reason| Control::Failed { reason }),
            (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(requested, committed, stopping)| {
                Control::Readers(ReadersProgress {
                    requested,
                    committed,
                    stopping,
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn any_control_message_round_trips(message in any_control()) {
            prop_assert_eq!(round_trip(&message).unwrap(), message);
        }

        /// Whatever records a peer sends, decoding returns, never panics.
        #[test]
        fn arbitrary_control_records_never_panic(records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..4)) {
            let frame = framed(|frame| for record in &records { frame.push_record(record) });
            let _ = decode_control(&frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part_of(bytes: usize) -> CheckpointPart {
        CheckpointPart {
            shard: 2,
            checkpoint: 7,
            cuts: vec![None],
            ended: vec![Some(3)],
            delta: true,
            state: (0..bytes).map(|i| i as u8).collect(),
        }
    }

    #[test]
    fn a_part_crosses_in_pieces_and_is_put_back_together() {
        for (state_bytes, piece_max) in [(0, 1), (10, 4), (1000, 64), (1000, PART_PIECE_MAX_BYTES)] {
            let part = part_of(state_bytes);
            let mut upload = PartUpload::new(&part, piece_max);
            let mut assembly = PartAssembly::default();
            let mut pieces = 0;
            let mut assembled = None;
            // One piece per offer, as a queue of one frame would take them.
            loop {
                let mut room = true;
                let done = upload.send(|piece| {
                    if !std::mem::take(&mut room) {
                        return false;
                    }
                    let frame = framed(|writer| encode_upstream(piece, writer));
                    let Upstream::CheckpointPiece { total, offset, bytes } = decode_upstream(&frame).unwrap()
                    else {
                        panic!("a piece decodes as a piece")
                    };
                    assert!(bytes.len() <= piece_max);
                    assert!(assembled.is_none(), "nothing after the last piece");
                    assembled = assembly.on_piece(total, offset, &bytes).unwrap();
                    pieces += 1;
                    true
                });
                if done {
                    break;
                }
            }
            let encoded = crate::checkpoint::encode_part(&part).len();
            assert_eq!(
                pieces,
                encoded.div_ceil(piece_max),
                "{state_bytes} bytes in pieces of {piece_max}"
            );
            assert_eq!(assembled, Some(part));
        }
    }

    #[test]
    fn pieces_out_of_order_or_of_another_size_are_refused() {
        let mut assembly = PartAssembly::default();
        assert_eq!(assembly.on_piece(10, 0, &[0; 4]).unwrap(), None);
        assert!(assembly
            .on_piece(10, 0, &[0; 4])
            .unwrap_err()
            .contains("where byte 4 was next"));
        let mut assembly = PartAssembly::default();
        assembly.on_piece(10, 0, &[0; 4]).unwrap();
        assert!(assembly
            .on_piece(12, 4, &[0; 4])
            .unwrap_err()
            .contains("an earlier one 10"));
        let mut assembly = PartAssembly::default();
        assert!(assembly
            .on_piece(3, 0, &[0; 4])
            .unwrap_err()
            .contains("runs past"));
        let mut assembly = PartAssembly::default();
        assert!(assembly
            .on_piece(2, 0, &[0; 2])
            .unwrap_err()
            .contains("a checkpoint part"));
    }
    #[test]
    fn chunks_cross_with_their_partition_and_position() {
        let event = SourceEvent::Chunk {
            source: 2,
            index: 9,
            first_line: 100,
            data: ChunkData::Lines(Bytes::from_static(b"a\nb\n")),
            partition: 3,
            position: Position::Text {
                bytes: 4096,
                lines: 101,
            },
            epoch: 7,
        };
        let frame = framed(|w| encode_source_event(&event, w));
        assert_eq!(decode_source_event(&frame, 2).unwrap(), event);
    }

    #[test]
    fn barriers_cross_with_their_cut() {
        let event = SourceEvent::Barrier {
            source: 1,
            checkpoint: 4,
            cut: SourceCut {
                next_chunk: 12,
                next_line: 300,
                positions: vec![
                    (
                        0,
                        Position::Text {
                            bytes: 99,
                            lines: 299,
                        },
                    ),
                    (2, Position::Log { offset: 5 }),
                ],
            },
        };
        let frame = framed(|w| encode_source_event(&event, w));
        assert_eq!(decode_source_event(&frame, 1).unwrap(), event);
        let mut short = Vec::new();
        encode_cut(&SourceCut::default(), &mut short);
        short[16] = 200; // 200 partitions in 0 bytes
        assert!(decode_cut(&mut &short[..]).is_err(), "a corrupt count is refused");
    }

    #[test]
    fn output_lines_cross_with_their_ids_or_without() {
        for ids in [vec![], vec![MsgId::new(0, 1), MsgId::new(1, 2).with_part(3)]] {
            let batch = OutputBatch {
                lines: b"x\ny\n".to_vec(),
                ids: ids.clone(),
            };
            let frame = framed(|w| encode_upstream(&UpstreamRef::Lines(&batch), w));
            let decoded = decode_upstream(&frame).unwrap();
            assert_eq!(
                decoded,
                Upstream::Lines(OutputBatch {
                    lines: Bytes::from_static(b"x\ny\n"),
                    ids
                })
            );
        }
    }

    #[test]
    fn ids_that_disagree_with_their_count_are_malformed() {
        assert!(decode_ids(&[0; 16], 2).is_err());
        assert!(decode_ids(&[0; 17], 1).is_err());
        assert_eq!(decode_ids(&[0; 32], 2).unwrap().len(), 2);
    }
}
