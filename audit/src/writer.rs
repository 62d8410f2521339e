//! Writing the audit log: the hot path encodes records into a buffer of its
//! own and hands whole buffers to one side thread per process over a bounded
//! queue; the side thread frames and chains them into segments with group
//! commit. A full queue makes the producer wait (backpressure): an audit
//! record is never dropped.
//!
//! `SegmentWriter` is the part that decides (framing, chaining, rotation,
//! when to sync) over a `Storage`, so the simulator can run it on its disk;
//! `AuditLog` is its production driver, a thread.

use crate::record::Record;
use crate::segment::{continue_chain, frame, segment_name, ChainHead, Hash, SegmentHeader};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use verity_state::storage::Storage;

/// When the side thread makes what it wrote durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every group of records it writes.
    EveryBatch,
    /// At most this long after a record was written.
    IntervalMs(u64),
    /// Never (the OS writes back when it likes; a crash may lose any of it).
    Never,
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        FsyncPolicy::IntervalMs(DEFAULT_FSYNC_INTERVAL_MS)
    }
}

pub const DEFAULT_FSYNC_INTERVAL_MS: u64 = 10;

impl std::fmt::Display for FsyncPolicy {
    /// The form `FromStr` reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::EveryBatch => write!(f, "every-batch"),
            FsyncPolicy::IntervalMs(ms) => write!(f, "interval-ms:{ms}"),
            FsyncPolicy::Never => write!(f, "none"),
        }
    }
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "every-batch" => Ok(FsyncPolicy::EveryBatch),
            "none" => Ok(FsyncPolicy::Never),
            _ => match text.strip_prefix("interval-ms:").map(str::parse::<u64>) {
                Some(Ok(ms)) if (1..=60_000).contains(&ms) => Ok(FsyncPolicy::IntervalMs(ms)),
                _ => Err(format!(
                    "`{text}` is not an fsync policy: every-batch, interval-ms:N (1..=60000) or none"
                )),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterLimits {
    /// A segment is closed and a new one started once it holds this much.
    pub segment_max_bytes: u64,
    pub fsync: FsyncPolicy,
}

pub const DEFAULT_SEGMENT_MAX_BYTES: u64 = 64 << 20;

impl Default for WriterLimits {
    fn default() -> Self {
        WriterLimits {
            segment_max_bytes: DEFAULT_SEGMENT_MAX_BYTES,
            fsync: FsyncPolicy::default(),
        }
    }
}

/// Appends one record to a producer's buffer: its body, prefixed by its
/// length (the side thread adds the checksum and the chain).
pub fn push_record(buffer: &mut Vec<u8>, record: &Record) {
    let at = buffer.len();
    buffer.extend_from_slice(&[0; 4]);
    record.encode(buffer);
    let len = (buffer.len() - at - 4) as u32;
    buffer[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// The record bodies in a producer's buffer.
fn bodies(buffer: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buffer;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("length prefix")) as usize;
        let (body, tail) = rest[4..].split_at(len);
        rest = tail;
        Some(body)
    })
}

/// The chain of one process's segments, written through a `Storage`.
pub struct SegmentWriter {
    storage: Box<dyn Storage>,
    limits: WriterLimits,
    header: SegmentHeader,
    name: String,
    head: Hash,
    /// Bytes of the current segment appended to storage.
    segment_bytes: u64,
    records: u64,
    /// Framed records not yet appended.
    pending: Vec<u8>,
    /// Bytes appended but not synced.
    unsynced: bool,
    syncs: u64,
}

impl SegmentWriter {
    /// Continues `process`'s chain in `storage` (or starts it) in a new
    /// segment, made durable before this returns.
    pub fn open(
        mut storage: Box<dyn Storage>,
        process: u32,
        limits: WriterLimits,
    ) -> io::Result<SegmentWriter> {
        assert!(limits.segment_max_bytes > 0);
        let (header, records) = continue_chain(&mut *storage, process)?;
        let mut writer = SegmentWriter {
            storage,
            limits,
            header,
            name: String::new(),
            head: [0; 32],
            segment_bytes: 0,
            records,
            pending: Vec::new(),
            unsynced: false,
            syncs: 0,
        };
        writer.start_segment(header)?;
        Ok(writer)
    }

    fn start_segment(&mut self, header: SegmentHeader) -> io::Result<()> {
        let bytes = header.encode();
        self.name = segment_name(header.process, header.index);
        self.storage.create(&self.name, &bytes)?;
        self.storage.sync_file(&self.name)?;
        self.storage.sync_dir()?;
        self.header = header;
        self.head = header.chain_start();
        self.segment_bytes = bytes.len() as u64;
        Ok(())
    }

    /// Frames and chains every record of a producer's buffer (in memory
    /// until `write`).
    pub fn push_buffer(&mut self, buffer: &[u8]) -> io::Result<()> {
        for body in bodies(buffer) {
            self.push(body)?;
        }
        Ok(())
    }

    pub fn push(&mut self, body: &[u8]) -> io::Result<()> {
        let framed = (crate::segment::FRAME_HEADER_BYTES + body.len()) as u64;
        let segment_has_records =
            self.segment_bytes + self.pending.len() as u64 > crate::segment::HEADER_BYTES as u64;
        if segment_has_records
            && self.segment_bytes + self.pending.len() as u64 + framed > self.limits.segment_max_bytes
        {
            self.rotate()?;
        }
        let crc = frame(&mut self.pending, body);
        self.head = crate::segment::chain(&self.head, crc, body);
        self.records += 1;
        Ok(())
    }

    /// Appends what was pushed; syncs it if the policy says every batch.
    pub fn write(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.storage.append(&self.name, &self.pending)?;
            self.segment_bytes += self.pending.len() as u64;
            self.pending.clear();
            self.unsynced = true;
        }
        if self.limits.fsync == FsyncPolicy::EveryBatch {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes everything appended durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.storage.sync_file(&self.name)?;
            self.unsynced = false;
            self.syncs += 1;
        }
        Ok(())
    }

    pub fn has_unsynced(&self) -> bool {
        self.unsynced
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.write()?;
        self.sync()?;
        let next = SegmentHeader {
            process: self.header.process,
            index: self.header.index + 1,
            prev_valid_bytes: self.segment_bytes,
            prev_head: self.head,
            records_before: self.records,
        };
        self.start_segment(next)
    }

    pub fn head(&self) -> ChainHead {
        ChainHead {
            process: self.header.process,
            segment: self.header.index,
            records: self.records,
            head: self.head,
        }
    }

    pub fn syncs(&self) -> u64 {
        self.syncs
    }
}

/// The hot path's end of the audit log: cheap to clone, one per thread.
#[derive(Clone)]
pub struct AuditHandle {
    buffers: Sender<Submission>,
    spare: Receiver<Vec<u8>>,
    waits: Arc<AtomicU64>,
}

/// What producers hand the side thread.
enum Submission {
    Records(Vec<u8>),
    /// Write and sync everything before this, then answer.
    Sync(Sender<()>),
    End,
}

/// The side thread stopped (an I/O error, which `AuditLog::finish` reports):
/// the run must stop rather than go on without its audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the audit log stopped taking records (its writer failed; see its error)")]
pub struct AuditClosed;

/// A producer buffer's capacity: records gather in it until it is this full
/// or the producer flushes.
pub const BUFFER_BYTES: usize = 64 << 10;
/// Buffers in flight to the side thread; a full queue is backpressure.
pub const QUEUE_DEPTH_BUFFERS: usize = 64;

impl AuditHandle {
    /// An empty buffer to push records into (recycled when one is spare).
    pub fn buffer(&self) -> Vec<u8> {
        self.spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BUFFER_BYTES))
    }

    /// Hands a buffer of records to the side thread, waiting while its
    /// queue is full.
    pub fn submit(&self, buffer: Vec<u8>) -> Result<(), AuditClosed> {
        if buffer.is_empty() {
            return Ok(());
        }
        match self.buffers.try_send(Submission::Records(buffer)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(buffer)) => {
                self.waits.fetch_add(1, Ordering::Relaxed);
                self.buffers.send(buffer).map_err(|_| AuditClosed)
            }
            Err(TrySendError::Disconnected(_)) => Err(AuditClosed),
        }
    }

    /// Waits until everything submitted before (by any producer whose
    /// submit returned) is written and synced, as far as the fsync policy
    /// syncs at all (`none`: written only). A checkpoint commits its output
    /// only after this, so committed output never outlives its lineage.
    pub fn sync(&self) -> Result<(), AuditClosed> {
        let (done, answer) = bounded(1);
        self.buffers
            .send(Submission::Sync(done))
            .map_err(|_| AuditClosed)?;
        answer.recv().map_err(|_| AuditClosed)
    }

    /// One record on its own (for rare ones: run start, checkpoints).
    pub fn record(&self, record: &Record) -> Result<(), AuditClosed> {
        let mut buffer = self.buffer();
        push_record(&mut buffer, record);
        self.submit(buffer)
    }
}

/// What the side thread did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    pub records: u64,
    pub bytes: u64,
    pub syncs: u64,
    /// Times a producer found the queue full and waited.
    pub producer_waits: u64,
    pub head: Option<ChainHead>,
}

/// The side thread that writes one process's audit log.
pub struct AuditLog {
    handle: AuditHandle,
    thread: JoinHandle<io::Result<AuditStats>>,
    /// The queue's send end as `AuditGauge`s see it: only through a `Weak`,
    /// so a gauge never keeps the queue open once the log is gone.
    probe: Arc<Sender<Submission>>,
}

/// Reads an audit log's queue for live metrics without holding it open:
/// once the log is finished or dropped it reads zero depth.
#[derive(Clone)]
pub struct AuditGauge {
    buffers: std::sync::Weak<Sender<Submission>>,
    waits: Arc<AtomicU64>,
}

impl AuditGauge {
    /// Buffers waiting for the side thread now (at most `QUEUE_DEPTH_BUFFERS`).
    pub fn queue_depth_buffers(&self) -> usize {
        self.buffers.upgrade().map_or(0, |tx| tx.len())
    }

    /// Times a producer found the queue full and waited, so far.
    pub fn producer_waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }
}

impl AuditLog {
    /// Opens `process`'s chain in `storage` and starts the side thread.
    pub fn start(storage: Box<dyn Storage>, process: u32, limits: WriterLimits) -> io::Result<AuditLog> {
        let writer = SegmentWriter::open(storage, process, limits)?;
        let (buffers, incoming) = bounded(QUEUE_DEPTH_BUFFERS);
        let (recycle, spare) = bounded(QUEUE_DEPTH_BUFFERS);
        let thread = std::thread::Builder::new()
            .name(format!("audit-{process}"))
            .spawn(move || write_loop(writer, incoming, recycle))?;
        Ok(AuditLog {
            probe: Arc::new(buffers.clone()),
            handle: AuditHandle {
                buffers,
                spare,
                waits: Arc::new(AtomicU64::new(0)),
            },
            thread,
        })
    }

    pub fn handle(&self) -> AuditHandle {
        self.handle.clone()
    }

    /// The queue's depth and waits, for live metrics.
    pub fn gauge(&self) -> AuditGauge {
        AuditGauge {
            buffers: Arc::downgrade(&self.probe),
            waits: Arc::clone(&self.handle.waits),
        }
    }

    /// Writes and syncs everything submitted before this call, then stops
    /// the thread. A buffer submitted after it is refused (`AuditClosed`).
    pub fn finish(self) -> io::Result<AuditStats> {
        let _ = self.handle.buffers.send(Submission::End);
        let waits = self.handle.waits.load(Ordering::Relaxed);
        drop(self.handle);
        drop(self.probe);
        let mut stats = self
            .thread
            .join()
            .map_err(|_| io::Error::other("the audit writer thread panicked"))??;
        stats.producer_waits = waits;
        Ok(stats)
    }
}

/// Buffers written in one group commit, at most: bounds the time between
/// two looks at the fsync deadline.
const GROUP_BUFFERS_MAX: usize = 64;

fn write_loop(
    mut writer: SegmentWriter,
    incoming: Receiver<Submission>,
    recycle: Sender<Vec<u8>>,
) -> io::Result<AuditStats> {
    let mut stats = AuditStats::default();
    let interval = match writer.limits.fsync {
        FsyncPolicy::IntervalMs(ms) => Some(Duration::from_millis(ms)),
        _ => None,
    };
    let mut sync_by: Option<Instant> = None;
    let result = (|| -> io::Result<()> {
        loop {
            let first = match (interval, sync_by) {
                (Some(_), Some(by)) => incoming.recv_timeout(by.saturating_duration_since(Instant::now())),
                _ => incoming.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let mut ending = false;
            match first {
                Ok(submission) => {
                    let mut next = Some(submission);
                    let mut taken = 0;
                    while let Some(submission) = next.take() {
                        let mut buffer = match submission {
                            Submission::Records(buffer) => buffer,
                            Submission::Sync(done) => {
                                writer.write()?;
                                if writer.limits.fsync != FsyncPolicy::Never {
                                    writer.sync()?;
                                    sync_by = None;
                                }
                                let _ = done.send(());
                                next = incoming.try_recv().ok();
                                continue;
                            }
                            Submission::End => {
                                ending = true;
                                break;
                            }
                        };
                        stats.bytes += buffer.len() as u64;
                        writer.push_buffer(&buffer)?;
                        buffer.clear();
                        let _ = recycle.try_send(buffer);
                        taken += 1;
                        if taken < GROUP_BUFFERS_MAX {
                            next = incoming.try_recv().ok();
                        }
                    }
                    writer.write()?;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => ending = true,
            }
            if ending {
                writer.write()?;
                writer.sync()?;
                return Ok(());
            }
            match (interval, sync_by) {
                (Some(_), Some(by)) if Instant::now() >= by => {
                    writer.sync()?;
                    sync_by = None;
                }
                (Some(interval), None) if writer.has_unsynced() => sync_by = Some(Instant::now() + interval),
                _ => {}
            }
        }
    })();
    if let Err(e) = &result {
        log::error!("audit log: {e}; the run stops, as it cannot be audited");
    }
    result?;
    let head = writer.head();
    stats.records = head.records;
    stats.syncs = writer.syncs();
    stats.head = Some(head);
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Checkpoint, Record};
    use crate::segment::verify;
    use verity_state::storage::DirStorage;

    fn checkpoint(n: u64) -> Record {
        Record::Checkpoint(Checkpoint {
            utc_us: n,
            checkpoint: n,
            store_id: n,
            bytes: n * 10,
            duration_us: 5,
        })
    }

    #[test]
    fn policies_parse_and_bad_ones_are_explained() {
        assert_eq!("every-batch".parse(), Ok(FsyncPolicy::EveryBatch));
        assert_eq!("none".parse(), Ok(FsyncPolicy::Never));
        assert_eq!("interval-ms:25".parse(), Ok(FsyncPolicy::IntervalMs(25)));
        for policy in [
            FsyncPolicy::EveryBatch,
            FsyncPolicy::Never,
            FsyncPolicy::IntervalMs(7),
        ] {
            assert_eq!(policy.to_string().parse(), Ok(policy));
        }
        for bad in ["interval-ms:0", "interval-ms:x", "always", ""] {
            let e = bad.parse::<FsyncPolicy>().unwrap_err();
            assert!(e.contains("every-batch"), "{e}");
        }
    }

    #[test]
    fn the_thread_writes_every_record_of_every_producer_in_a_verifiable_chain() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Box::new(DirStorage::open(dir.path()).unwrap());
        let limits = WriterLimits {
            segment_max_bytes: 512,
            fsync: FsyncPolicy::IntervalMs(1),
        };
        let log = AuditLog::start(storage, 3, limits).unwrap();
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let handle = log.handle();
                std::thread::spawn(move || {
                    for n in 0..200 {
                        let mut buffer = handle.buffer();
                        push_record(&mut buffer, &checkpoint(p * 1000 + n));
                        push_record(&mut buffer, &checkpoint(p * 1000 + n));
                        handle.submit(buffer).unwrap();
                    }
                })
            })
            .collect();
        for producer in producers {
            producer.join().unwrap();
        }
        let stats = log.finish().unwrap();
        assert_eq!(stats.records, 1600);
        let mut storage = DirStorage::open(dir.path()).unwrap();
        let mut seen = 0;
        let report = verify(&mut storage, &[], |process, body| {
            assert_eq!(process, 3);
            assert!(matches!(Record::decode(body), Ok(Record::Checkpoint(_))));
            seen += 1;
        })
        .unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(seen, 1600);
        assert!(
            report.segments > 10,
            "rotation by size: {} segments",
            report.segments
        );
        assert_eq!(report.heads[0], stats.head.unwrap());
    }

    #[test]
    fn sync_returns_once_what_came_before_is_written_and_synced() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Box::new(DirStorage::open(dir.path()).unwrap());
        // An interval far beyond the test: only `sync` makes it durable.
        let limits = WriterLimits {
            segment_max_bytes: 1 << 20,
            fsync: FsyncPolicy::IntervalMs(3_600_000),
        };
        let log = AuditLog::start(storage, 0, limits).unwrap();
        let handle = log.handle();
        for n in 0..5 {
            handle.record(&checkpoint(n)).unwrap();
        }
        handle.sync().unwrap();
        let mut seen = 0;
        let mut storage = DirStorage::open(dir.path()).unwrap();
        verify(&mut storage, &[], |_, _| seen += 1).unwrap();
        assert_eq!(seen, 5, "every record before the sync is in the file");
        let stats = log.finish().unwrap();
        assert_eq!(stats.records, 5);
        assert_eq!(handle.sync(), Err(AuditClosed), "no barrier after the end");
    }

    #[test]
    fn a_reopened_writer_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        for life in 0..3 {
            let storage = Box::new(DirStorage::open(dir.path()).unwrap());
            let log = AuditLog::start(storage, 0, WriterLimits::default()).unwrap();
            log.handle().record(&checkpoint(life)).unwrap();
            let stats = log.finish().unwrap();
            assert_eq!(stats.records, life + 1);
        }
        let report = verify(&mut DirStorage::open(dir.path()).unwrap(), &[], |_, _| {}).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!((report.segments, report.records), (3, 3));
    }

    #[test]
    fn a_record_after_finish_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::start(
            Box::new(DirStorage::open(dir.path()).unwrap()),
            0,
            WriterLimits::default(),
        )
        .unwrap();
        let handle = log.handle();
        log.finish().unwrap();
        assert_eq!(handle.record(&checkpoint(1)), Err(AuditClosed));
    }
}
