//! The audit log in the simulated world: each process's chain of segments
//! on a simulated disk of its own (the production `SegmentWriter`), fed by
//! the production producers (the shards' `Effect::Audit`, the readers'
//! `InputAudit`, the output writer's `OutputAudit`) through a bounded queue
//! of buffers, as the side thread is in production. The side thread's turn
//! comes when the world schedules it; a full queue makes a shard wait, as
//! production's `AuditHandle::submit` does. A crash loses what the disk had
//! not synced; the next life continues each chain in a new segment.

use super::SECOND_US;
use crate::sim::disk::SharedDisk;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use verity_audit::record::{Recovery, RunEnd};
use verity_audit::segment::ChainHead;
use verity_audit::writer::{FsyncPolicy, SegmentWriter, WriterLimits};
use verity_audit::{push_record, AuditClosed, Record};
use verity_core::audit::{AuditOut, RunIdentity};
use verity_core::cluster::Layout;
use verity_core::driver::Sent;
use verity_core::{Clock, Rng, SplitMix64};

/// The simulated processes' UTC: 2026-01-01T00:00:00Z at a run's start.
pub(in crate::sim) const SIM_EPOCH_UTC_US: u64 = 1_767_225_600 * SECOND_US;
/// Each process's clock is this much off the others at most (their system
/// clocks were set apart), drawn per process.
const CLOCK_SKEW_MAX_US: u64 = 5_000;
/// A restarted cluster's clocks go on at least this long after the crash.
const RESTART_DOWNTIME_US: u64 = SECOND_US;

/// How a seed's audit log is set up (BUGGIFY), drawn in `run_seed` from a
/// stream of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPlan {
    pub fsync: FsyncPolicy,
    /// Producer buffers the side thread's queue holds (production: 64).
    pub queue_buffers: usize,
    /// Small segments rotate often, so chains cross segment boundaries.
    pub segment_max_bytes: u64,
}

impl AuditPlan {
    pub fn draw(rng: &mut SplitMix64) -> AuditPlan {
        AuditPlan {
            fsync: [
                FsyncPolicy::EveryBatch,
                FsyncPolicy::IntervalMs(10),
                FsyncPolicy::IntervalMs(200),
                FsyncPolicy::Never,
            ][rng.below(4) as usize],
            queue_buffers: [1, 2, 64][rng.below(3) as usize],
            segment_max_bytes: [512, 16 << 10, 64 << 20][rng.below(3) as usize],
        }
    }
}

/// A process's clock: the world's virtual time on from its UTC at start.
/// Like production's `SystemClock`, it never jumps (the `clock` fault moves
/// the protocol's clock, which stands for what an NTP step can reach).
pub(super) struct SimClock {
    now_us: Arc<AtomicU64>,
    utc_at_start_us: u64,
}

impl Clock for SimClock {
    fn now_us(&self) -> u64 {
        self.utc_at_start_us + self.now_us.load(Ordering::Relaxed)
    }
    fn source(&self) -> &'static str {
        "simulated (virtual time from a seeded UTC start)"
    }
}

/// The processes' clocks of one life of the cluster.
pub(super) struct Clocks {
    pub now_us: Arc<AtomicU64>,
    pub processes: Vec<Arc<SimClock>>,
    /// Where this life's clocks started (the next life starts later).
    utc_at_start_us: u64,
}

impl Clocks {
    /// `after` is the previous life's clocks (a recovery), if any.
    pub fn new(processes: u32, seed: u64, after: Option<(u64, u64)>) -> Clocks {
        let utc_at_start_us = match after {
            Some((start, lived_us)) => start + lived_us + RESTART_DOWNTIME_US,
            None => SIM_EPOCH_UTC_US,
        };
        let now_us = Arc::new(AtomicU64::new(0));
        let mut rng = SplitMix64::new(seed ^ 0x0c10_c5e7_fa11_5eed);
        let processes = (0..processes)
            .map(|_| {
                Arc::new(SimClock {
                    now_us: Arc::clone(&now_us),
                    utc_at_start_us: utc_at_start_us + rng.below(CLOCK_SKEW_MAX_US),
                })
            })
            .collect();
        Clocks {
            now_us,
            processes,
            utc_at_start_us,
        }
    }

    pub fn set_now(&self, now_us: u64) {
        self.now_us.store(now_us, Ordering::Relaxed);
    }

    /// What the next life's clocks start from, after this one lived `lived_us`.
    pub fn continued(&self, lived_us: u64) -> (u64, u64) {
        (self.utc_at_start_us, lived_us)
    }

    pub fn of(&self, process: u32) -> Arc<dyn Clock> {
        Arc::clone(&self.processes[process as usize]) as Arc<dyn Clock>
    }
}

/// The side thread's queue of producer buffers, and its writer.
struct Queue {
    buffers: VecDeque<Vec<u8>>,
    depth: usize,
    /// The side thread is gone (its process died): nothing is taken.
    closed: bool,
    writer: SegmentWriter,
    fsync: FsyncPolicy,
    /// Records counted into `SimAudit::records` so far.
    counted_records: u64,
    /// A write failed in a `sync` (the world's next turn reports it).
    failure: Option<String>,
}

impl Queue {
    /// Writes every queued buffer (a group commit); true if there were any.
    fn write_queued(&mut self) -> std::io::Result<bool> {
        let buffers: Vec<Vec<u8>> = self.buffers.drain(..).collect();
        for buffer in &buffers {
            self.writer.push_buffer(buffer)?;
        }
        if !buffers.is_empty() {
            self.writer.write()?;
        }
        Ok(!buffers.is_empty())
    }
}

/// What the readers and the output writer submit through. Production's
/// `AuditHandle::submit` blocks them while the queue is full; a simulated
/// thread cannot block inside a call, so these take the buffer even then
/// (the shards, which can wait, see the bound through `try_submit`).
struct SimAuditOut(Arc<Mutex<Queue>>);

impl AuditOut for SimAuditOut {
    fn submit(&mut self, records: Vec<u8>) -> Result<(), AuditClosed> {
        let mut queue = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if queue.closed {
            return Err(AuditClosed);
        }
        queue.buffers.push_back(records);
        Ok(())
    }

    /// Production's caller waits while the side thread writes and syncs
    /// what is queued; here that work is done in the call.
    fn sync(&mut self) -> Result<(), AuditClosed> {
        let mut queue = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if queue.closed {
            return Err(AuditClosed);
        }
        let synced = queue.write_queued().and_then(|_| match queue.fsync {
            FsyncPolicy::Never => Ok(()),
            _ => queue.writer.sync(),
        });
        synced.map_err(|e| {
            queue.failure = Some(e.to_string());
            queue.closed = true;
            AuditClosed
        })
    }
}

/// One process's audit log: its queue and its writer.
struct ProcessLog {
    queue: Arc<Mutex<Queue>>,
    synced_at_us: u64,
}

/// Every process's audit log in one life of the cluster.
pub(super) struct SimAudit {
    pub plan: AuditPlan,
    pub disk: SharedDisk,
    logs: Vec<Option<ProcessLog>>,
    /// Records each process's side thread wrote (for `verity sim --stats`).
    pub records: u64,
    pub full_queues: u64,
}

/// A life's writer failed: the run must not go on unaudited.
pub(super) type AuditFailure = String;

impl SimAudit {
    /// Opens (or continues, after a crash) every process's chain on `disk`
    /// and records each process's run start.
    pub fn start(
        plan: AuditPlan,
        disk: SharedDisk,
        layout: &Layout,
        batch_max: usize,
        clocks: &Clocks,
        incarnations: &[u64],
    ) -> Result<SimAudit, AuditFailure> {
        let mut audit = SimAudit {
            plan,
            disk,
            logs: Vec::new(),
            records: 0,
            full_queues: 0,
        };
        for process in 0..layout.processes() {
            audit.logs.push(None);
            audit.open(process, layout, batch_max, clocks, incarnations[process as usize])?;
        }
        Ok(audit)
    }

    /// A process (re)starts: its chain goes on in a new segment.
    pub fn open(
        &mut self,
        process: u32,
        layout: &Layout,
        batch_max: usize,
        clocks: &Clocks,
        incarnation: u64,
    ) -> Result<(), AuditFailure> {
        let limits = WriterLimits {
            segment_max_bytes: self.plan.segment_max_bytes,
            fsync: self.plan.fsync,
        };
        let writer = SegmentWriter::open(Box::new(self.disk.clone()), process, limits)
            .map_err(|e| format!("process {process} cannot open its audit log: {e}"))?;
        let queue = Arc::new(Mutex::new(Queue {
            buffers: VecDeque::new(),
            depth: self.plan.queue_buffers,
            closed: false,
            counted_records: writer.head().records,
            writer,
            fsync: self.plan.fsync,
            failure: None,
        }));
        self.logs[process as usize] = Some(ProcessLog {
            queue,
            synced_at_us: 0,
        });
        let layout = Layout::new(
            (0..layout.processes())
                .map(|p| layout.shards_of(p).len() as u32)
                .collect(),
            process,
        )
        .expect("the world's layout");
        let identity = RunIdentity {
            incarnation,
            args: vec!["verity-sim".into(), format!("process {process}")],
            user: "sim".into(),
            host: format!("simulated-process-{process}"),
        };
        let start = verity_core::audit::run_start(identity, &layout, batch_max, &*clocks.of(process));
        self.record(process, &start)
    }

    /// The process died alone (the `restart` fault): its queued buffers are
    /// lost with it; what it appended stays (the kernel has it).
    pub fn kill(&mut self, process: u32) {
        if let Some(log) = self.logs[process as usize].take() {
            log.queue.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        }
    }

    /// A shard's buffer, unless the queue is full (then the shard waits).
    pub fn try_submit(&mut self, process: u32, records: Vec<u8>) -> Sent<Vec<u8>> {
        let Some(log) = &self.logs[process as usize] else {
            return Sent::Full(records); // a dead process's shard runs no more
        };
        let mut queue = log.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.buffers.len() >= queue.depth {
            self.full_queues += 1;
            return Sent::Full(records);
        }
        queue.buffers.push_back(records);
        Sent::Done
    }

    /// The handle a process's readers and output writer submit through.
    pub fn out(&self, process: u32) -> Box<dyn AuditOut> {
        let log = self.logs[process as usize].as_ref().expect("a live process");
        Box::new(SimAuditOut(Arc::clone(&log.queue)))
    }

    /// A record of the process's own (run start, recovery, run end).
    pub fn record(&mut self, process: u32, record: &Record) -> Result<(), AuditFailure> {
        let mut buffer = Vec::new();
        push_record(&mut buffer, record);
        SimAuditOut(Arc::clone(
            &self.logs[process as usize]
                .as_ref()
                .expect("a live process")
                .queue,
        ))
        .submit(buffer)
        .map_err(|_| format!("process {process}'s audit log is closed"))
    }

    /// The recovery of this life, in process 0's log.
    pub fn recovered(&mut self, utc_us: u64, checkpoint: u64, store_id: u64) -> Result<(), AuditFailure> {
        self.record(
            0,
            &Record::Recovery(Recovery {
                utc_us,
                checkpoint,
                store_id,
            }),
        )
    }

    /// The side thread's turn: writes every queued buffer (a group
    /// commit), and syncs as the policy says. True if it wrote anything.
    pub fn turn(&mut self, process: u32, now_us: u64) -> Result<bool, AuditFailure> {
        let Some(log) = &mut self.logs[process as usize] else {
            return Ok(false);
        };
        let failed = |e: String| format!("process {process}'s audit log: {e}");
        let mut queue = log.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(failure) = queue.failure.take() {
            return Err(failed(failure));
        }
        let wrote = queue.write_queued().map_err(|e| failed(e.to_string()))?;
        let records = queue.writer.head().records;
        self.records += records - queue.counted_records;
        queue.counted_records = records;
        if let FsyncPolicy::IntervalMs(ms) = self.plan.fsync {
            if queue.writer.has_unsynced() && now_us >= log.synced_at_us + ms * 1000 {
                queue.writer.sync().map_err(|e| failed(e.to_string()))?;
                log.synced_at_us = now_us;
            }
        }
        Ok(wrote)
    }

    /// The run ended: every process still running records how, writes and
    /// syncs everything; their chain heads (what `verity audit digest`
    /// would keep).
    /// `counts(process)`: its records in, out and dead-lettered.
    pub fn finish(
        mut self,
        utc_us: u64,
        outcome: &str,
        counts: impl Fn(u32) -> [u64; 3],
    ) -> Result<(SharedDisk, Vec<ChainHead>), AuditFailure> {
        let mut heads = Vec::new();
        for process in 0..self.logs.len() as u32 {
            if self.logs[process as usize].is_none() {
                continue;
            }
            let [records_in, records_out, dead_lettered] = counts(process);
            let end = Record::RunEnd(RunEnd {
                utc_us,
                outcome: outcome.to_string(),
                records_in,
                records_out,
                dead_lettered,
            });
            self.record(process, &end)?;
            self.turn(process, u64::MAX)?;
            let log = self.logs[process as usize].as_mut().expect("live");
            let mut queue = log.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue
                .writer
                .sync()
                .map_err(|e| format!("process {process}'s audit log: {e}"))?;
            heads.push(queue.writer.head());
        }
        Ok((self.disk, heads))
    }
}

/// Why the audit log on `disk`, just after a crash that followed
/// checkpoint `checkpoint`'s commit, shows the commit did not wait for it:
/// the checkpoint's own record (synced with the lineage before the sinks
/// commit) is missing. `None` if it is there.
pub(super) fn lost_checkpoint_record(disk: &SharedDisk, checkpoint: u64) -> Option<String> {
    let (log, _) = match verity_audit::query::Log::read(&mut disk.clone()) {
        Ok(read) => read,
        Err(e) => return Some(format!("the audit log after the crash cannot be read: {e}")),
    };
    let recorded = log
        .records()
        .any(|record| matches!(record, Record::Checkpoint(c) if c.checkpoint == checkpoint));
    (!recorded).then(|| {
        format!(
            "checkpoint {checkpoint}'s sinks committed, but after the crash that followed the audit log \
             has no record of it: the commit did not wait for the log (its lineage) to be durable"
        )
    })
}
