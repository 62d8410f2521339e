//! The simulated cluster: processes of production shard cores, links that
//! carry production frames between them, and a virtual-time event queue.

use super::{Finished, SimConfig, SimOutcome};
pub use audit::AuditPlan;
pub(super) use audit::SIM_EPOCH_UTC_US;
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use verity_core::checkpoint::RestoreFrom;
use verity_core::checkpoint::{Checkpointer, Restart};
use verity_core::cluster::codec::{
    decode_batch, decode_source_event, encode_batch, encode_source_event, encode_upstream, PartUpload,
    UpstreamRef, PART_PIECE_MAX_BYTES,
};
use verity_core::cluster::relay::OutputRelay;
use verity_core::cluster::{channel_id, Layout};
use verity_core::connector::sources::line_reader_at;
use verity_core::driver::{ShardDriver, PEER_DRAIN_MAX};
use verity_core::flow::Logic;
use verity_core::shard::{Batch, CheckpointPart, ShardCore, ShardCounters, ShardLimits};
use verity_core::sink::{DeadLetterWriter, OutputLoop, OutputWriter};
use verity_core::source::{Dealer, ReaderBugs, SourceEvent, CHUNK_SIZE_BYTES, LINE_SIZE_MAX_BYTES};
use verity_core::streams::{Stream, Streams};
use verity_core::{Key, Rng, SplitMix64, Wire};
use verity_kafka::SimBroker;
use verity_net::frame::{encode_frame, Frame, FrameKind, FrameWriter};
use verity_net::liveness::LivenessConfig;

mod audit;
mod control;
mod log_sink;
mod network;
mod output;
mod processes;
mod restart;
mod upstream;
use network::{Net, NetEvent, PEER_LOST_MS};
use processes::Reader;

const SECOND_US: u64 = 1_000_000;
const LATENCY_BASE_US: u64 = 50;
const LATENCY_JITTER_US: u64 = 100;
/// With the `delay` fault: extra latency of up to this much per frame.
const DELAY_MAX_US: u64 = 20_000;
/// Heartbeats and liveness checks happen this often.
const TICK_US: u64 = 50_000;
const PEER_TIMEOUT_US: u64 = 400_000;
const RECONNECT_BASE_MS: u64 = 5;
const RECONNECT_MAX_MS: u64 = 400;
/// Per-frame fault chances, per mille, while faults are on.
const FRAME_FAULT_PER_MILLE: u64 = 3;
/// All input must be processed this long after the faults heal.
const LIVENESS_BOUND_US: u64 = 30 * SECOND_US;
/// With the `fail` fault, one seed in this many has a process fail.
const FAIL_SEED_ONE_IN: u64 = 8;
/// With the `stop` fault, one seed in this many (of those without a
/// failure) is stopped early.
const STOP_SEED_ONE_IN: u64 = 8;
/// With the `fail` fault, one seed in this many (of one stream) has its
/// source fail mid-stream instead of any other failure.
const SOURCE_FAIL_SEED_ONE_IN: u64 = 8;
/// With the `crash` fault, one seed in this many (of those without a
/// failure or a stop) has every process die at once and recover.
const CRASH_SEED_ONE_IN: u64 = 3;
/// Lives of a cluster in one seed: a recovered cluster may crash again (as
/// likely as the first), so a recovery meets the store of an earlier one,
/// whose ids ran ahead of the checkpoints' numbers past a torn checkpoint.
const LIVES_MAX: u32 = 3;
/// The job name the simulated checkpoints carry.
const SIM_JOB: &str = "sim";
/// Input arrives over at most this share of the faulty period, so traffic
/// and faults overlap.
const RELEASE_SHARE: u64 = 2;
/// Each source's input arrives in one of these numbers of steps (seeded):
/// few large arrivals or many small ones (then chunks are small: the reader
/// deals what it has).
const RELEASES_PER_SOURCE: [u64; 3] = [16, 64, 400];
/// With BUGGIFY: the line-length bound (longer lines are dead-lettered
/// unread), above the longest well-formed generated line.
const BUGGIFY_LINE_MAX_BYTES: usize = 4096;

enum Event {
    /// The first `available` bytes of `source` have arrived at its reader.
    Release {
        source: u32,
        available: usize,
    },
    Net(NetEvent),
    Tick,
    /// Process 0's output thread's wait for a message runs out.
    OutputWake,
    Cut {
        a: u32,
        b: u32,
    },
    Partition {
        mask: u64,
        until_us: u64,
    },
    Pause {
        process: u32,
        until_us: u64,
    },
    Wake {
        process: u32,
    },
    ClockJump {
        process: u32,
        delta_us: i64,
    },
    /// `process` fails (the `fail` fault).
    Fail {
        process: u32,
    },
    /// A stop request reaches process 0, or every process (the `stop`
    /// fault).
    Stop {
        everyone: bool,
    },
    /// Every process dies at once (the `crash` fault).
    CrashAll,
    /// Every process dies at once, right after the next checkpoint's sinks
    /// committed (the `crash` fault).
    CrashAfterCommit,
    /// Every process dies at once, in the middle of the next checkpoint's
    /// writing: `ops` more disk operations succeed (the `crash` fault).
    CrashMidCheckpoint {
        ops: u64,
    },
    /// `process` dies alone and starts again soon (the `restart` fault).
    Restart {
        process: u32,
    },
    /// The restarted `process` starts its new life.
    Revive {
        process: u32,
    },
    /// The restarted process's new life completed a handshake on `conn`
    /// with `survivor`, which knew its old life, at `since_us` (or bytes
    /// towards it were held until then): it must have failed by now.
    RestartNoticeDue {
        survivor: u32,
        conn: verity_net::peer::ConnId,
        since_us: u64,
    },
    /// One shard thread is not scheduled until then (the `pause` fault,
    /// for a single thread: a busy core).
    Stall {
        shard: u32,
        until_us: u64,
    },
}

struct Scheduled {
    time_us: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time_us, self.seq) == (other.time_us, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.time_us, self.seq).cmp(&(other.time_us, other.seq))
    }
}

struct Process {
    paused_until_us: u64,
    clock_offset_us: i64,
    /// Exited after a failure: gone for good.
    dead: bool,
}

/// Sizes the simulator shrinks per seed so rare paths (a full window, tiny
/// batches, partial frames) run often: BUGGIFY, simulation only.
struct Buggify {
    net: network::NetSizes,
    /// A producer's queue to the network thread, in frames.
    producer_depth_frames: usize,
    /// Workers register their receiving channels late.
    late_claims: bool,
    batch_max: usize,
    chunk_bytes: usize,
    line_max_bytes: usize,
    /// Batches a shard takes per step (production: `PEER_DRAIN_MAX`).
    peer_drain_max: usize,
    /// The sink wants each output line's input id (shards then collect them).
    output_ids: bool,
    /// How often process 0's output thread asks for a checkpoint, on its
    /// clock; `None`: a run without `--state-dir`, production's default.
    checkpoint_interval_ms: Option<u64>,
    /// Every this many reads of a source is interrupted (`EINTR`); 0: none.
    read_interrupt_every: u64,
}

/// Depths of the queues inside a process: production's (`RunConfig`), or
/// BUGGIFY's tiny ones, so parked sends and stalled readers happen. (Queues
/// towards the network have `Buggify::producer_depth_frames`.)
#[derive(Debug, Clone, Copy)]
struct Depths {
    /// A peer batch queue, in batches (`queue_depth_batches`).
    batches: usize,
    /// A shard's queue of one source, in chunks (`source_queue_depth_chunks`).
    chunks: usize,
}

struct World<'a, K, V, S, O> {
    config: &'a SimConfig,
    layout: Layout,
    rng: SplitMix64,
    now_us: u64,
    heal_us: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    /// Each shard's production driver (taken out while it steps).
    drivers: Vec<Option<ShardDriver<K, V, S, O>>>,
    /// Shards whose last step waited for room (a parked send, a full sink).
    waits_for_room: Vec<bool>,
    /// Per remote shard: its checkpoint part on the way to process 0, in
    /// pieces (`PartUpload`), while the output queue takes them.
    uploads: Vec<Option<PartUpload>>,
    /// The largest piece of an upload (production: `PART_PIECE_MAX_BYTES`).
    part_piece_max: usize,
    /// Per shard: its thread is not scheduled before this time.
    stalled_until_us: Vec<u64>,
    /// Per shard that waits for input: the queues it waits on.
    watching: Vec<Option<Vec<verity_core::driver::Watch>>>,
    processes: Vec<Process>,
    net: Net,
    /// Process 0's shards' source queues, by (source, shard).
    local_chunks: BTreeMap<(u32, u32), VecDeque<SourceEvent>>,
    /// Batch queues inside a process, by (source, from, to).
    local_batches: BTreeMap<(u32, u32, u32), VecDeque<Batch<K, V>>>,
    readers: Vec<Reader>,
    sources_closed: bool,
    buggify: Buggify,
    depths: Depths,
    /// Process 0's output thread: the production loop and writer, into
    /// memory.
    output: output::OutputThread,
    /// The checkpoint this life recovered from (0 for none).
    checkpoints_resumed: u64,
    /// The byte where the source fails (the `fail` fault), if it does.
    source_fails_at: Option<usize>,
    /// Per shard: the newest checkpoint whose part it gave the writer.
    checkpoint_parts: Vec<u64>,
    output_text: SharedBytes,
    /// Lines and dead letters handed to the writer so far.
    output_lines: u64,
    dead_letters_written: u64,
    /// Lines the whole input must produce (the oracle's count).
    expected_lines: u64,
    /// Every dead letter that reached process 0, as its file has it.
    dead_letter_text: SharedBytes,
    /// Process 0's relay of each shard's output (remote shards only).
    relays: Vec<OutputRelay>,
    source_errors: Vec<String>,
    /// Remote shards whose `Finished` process 0 has heard.
    remote_finished: u32,
    /// The totals remote shards reported with their `Finished`.
    remote_counters: ShardCounters,
    /// Lines in all the input (each becomes a record).
    input_lines: u64,
    lifecycles: control::Lifecycles,
    trace_hash: u64,
    trace: Vec<String>,
    line: String,
    events: u64,
    stats: super::SimStats,
    /// The state dir's disk (checkpoints), which outlives a crash.
    disk: crate::sim::disk::SharedDisk,
    /// Every process died (the `crash` fault): the run stops here.
    crashed: bool,
    /// Every process dies right after the next checkpoint's commit (the
    /// `crash` fault): the moment committed output's lineage must already
    /// be durable.
    crash_after_commit: bool,
    /// The checkpoint whose commit that crash followed, once it struck.
    crashed_after_commit: Option<u64>,
    /// This cluster was restarted after a crash.
    recovered: bool,
    /// Which life of the cluster this is: 0, then one more per crash.
    life: u32,
    /// The `restart` fault, watched from outside.
    restart_watch: restart::RestartWatch,
    /// Each process's clock (UTC on virtual time): what the logic reads.
    clocks: audit::Clocks,
    /// Every process's audit log, when the seed keeps one.
    audit: Option<audit::SimAudit>,
    /// The Kafka broker of `SimConfig::log_sink` seeds (it outlives a crash).
    broker: Option<SimBroker>,
}

/// What outlives every process dying at once: the disk, the files the sinks
/// wrote, and the simulation's own record of the run.
struct Crashed {
    disk: crate::sim::disk::SharedDisk,
    /// The audit log's disk, when the seed keeps one.
    audit_disk: Option<crate::sim::disk::SharedDisk>,
    /// Where the next life's clocks go on from.
    clocks_after: (u64, u64),
    /// Per source: the bytes its upstream was told it may forget.
    forgotten: Vec<u64>,
    output_text: SharedBytes,
    dead_letter_text: SharedBytes,
    /// The Kafka broker of `SimConfig::log_sink` seeds.
    broker: Option<SimBroker>,
    stats: super::SimStats,
    trace_hash: u64,
    trace: Vec<String>,
    events: u64,
    /// Why the audit log lost what a committed checkpoint needed, if it did.
    lineage_lost: Option<String>,
}

/// A restart after a crash: what survived, and the checkpoint read from the
/// disk (`None` if none was complete: the run starts again from the
/// beginning, as `--recover` does then).
struct Recovery {
    crashed: Crashed,
    restart: Option<Restart>,
    next_store_id: u64,
    /// The life it begins (1 after the first crash).
    life: u32,
}

/// Runs `logic` over `inputs` (one per stream: a source, or with
/// `SimConfig::spread` one partition of the one source per process), whose
/// whole output has `expected_lines` lines.
pub(super) fn simulate<K, V, S, O>(
    config: &SimConfig,
    logic: Logic<K, V, S, O>,
    inputs: &[(String, Bytes)],
    expected_lines: u64,
    audit: super::AuditSetup,
) -> Finished
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: verity_core::State,
    O: 'static,
{
    // A violated assertion is a finding to report, not a crash: keep the
    // default hook's backtrace off the terminal while the seed runs. The hook
    // is process-wide, so seeds on several threads take turns.
    static HOOK_SWAP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = HOOK_SWAP.lock().unwrap_or_else(|p| p.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut world = World::new(config, &logic, inputs, expected_lines, audit, None);
        let mut failure = world.run();
        let mut life = 0;
        while failure.is_none() && world.crashed {
            life += 1;
            let crashed = world.crash();
            let total = config.processes * config.workers;
            let mut store = verity_state::checkpoint::CheckpointStore::new(
                Box::new(crashed.disk.clone()) as Box<dyn verity_state::storage::Storage>
            );
            match Checkpointer::recover_with_bugs(&mut store, SIM_JOB, total, config.bugs.recover) {
                Ok((restart, next_store_id)) => {
                    let lineage_lost = crashed.lineage_lost.clone();
                    let recovery = Recovery {
                        crashed,
                        restart,
                        next_store_id,
                        life,
                    };
                    world = World::new(config, &logic, inputs, expected_lines, audit, Some(recovery));
                    failure = match lineage_lost {
                        Some(why) => Some(why),
                        None => world.run(),
                    };
                }
                Err(e) => {
                    let failure = format!("recovery after the crash: {e}");
                    return Finished {
                        sim: SimOutcome::failed_before_running(config.seed, failure),
                        output: Vec::new(),
                        dead_letters: Vec::new(),
                        audit: None,
                    };
                }
            }
        }
        world.finish(failure)
    }));
    std::panic::set_hook(hook);
    run.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        let failure = format!("internal invariant violated: {message}");
        Finished {
            sim: SimOutcome::failed_before_running(config.seed, failure),
            output: Vec::new(),
            dead_letters: Vec::new(),
            audit: None,
        }
    })
}

/// Lines in `data` as the line splitter sees them (a last line may lack
/// its `\n`).
fn line_count(data: &[u8]) -> u64 {
    let newlines = data.iter().filter(|b| **b == b'\n').count() as u64;
    newlines + u64::from(data.last().is_some_and(|b| *b != b'\n'))
}

fn add_counters(totals: &mut ShardCounters, more: ShardCounters) {
    totals.records_in += more.records_in;
    totals.records_out += more.records_out;
    totals.dead_lettered += more.dead_lettered;
    totals.duplicates_dropped += more.duplicates_dropped;
}

/// A text of a job (`JobCheckpoints`) in the length class `pick` draws:
/// short, or exactly `JOB_TEXT_SIZE_MAX_BYTES` long, in ASCII or ending in
/// two-byte characters.
fn job_text(pick: u64, short: &str) -> String {
    let max = verity_core::cluster::lifecycle::JOB_TEXT_SIZE_MAX_BYTES;
    match pick % 3 {
        0 => short.to_string(),
        1 => "d".repeat(max),
        _ => {
            let mut text = "s".repeat(max % 2);
            text.push_str(&"é".repeat(max / 2));
            text
        }
    }
}

/// Process 0's output sink in the simulated world: the output into memory,
/// and, when it wants ids, a check that each line came with the id of an
/// input record (or the default id of a key's end-of-input line).
struct SimSink {
    text: SharedBytes,
    wants_ids: bool,
    source_lines: Vec<u64>,
}

impl verity_core::connector::SinkConnector for SimSink {
    fn wants_ids(&self) -> bool {
        self.wants_ids
    }

    fn write(
        &mut self,
        lines: &[u8],
        ids: &[verity_core::MsgId],
    ) -> Result<(), verity_core::connector::SinkError> {
        use std::io::Write;
        let count = line_count(lines) as usize;
        let expected_ids = if self.wants_ids { count } else { 0 };
        let bad = ids.iter().find(|id| {
            **id != verity_core::MsgId::default()
                && self
                    .source_lines
                    .get(id.producer as usize)
                    .is_none_or(|&n| id.seq == 0 || id.seq > n)
        });
        if ids.len() != expected_ids || bad.is_some() {
            let problem = format!(
                "the sink got {count} lines with {} ids (wants ids: {}), first bad id {bad:?}",
                ids.len(),
                self.wants_ids
            );
            return Err(verity_core::connector::SinkError::Connector(problem.into()));
        }
        self.text.clone().write_all(lines)?;
        Ok(())
    }

    fn barrier(
        &mut self,
        commit: verity_core::connector::CommitId,
    ) -> Result<(), verity_core::connector::SinkError> {
        self.text.barrier(commit)
    }

    fn commit(
        &mut self,
        upto: verity_core::connector::CommitId,
    ) -> Result<(), verity_core::connector::SinkError> {
        self.text.commit(upto)
    }

    fn resume_mark(&mut self) -> Result<Vec<u8>, verity_core::connector::SinkError> {
        Ok(self.text.mark())
    }

    fn resume(&mut self, mark: &[u8]) -> Result<(), verity_core::connector::SinkError> {
        Ok(self.text.cut_at(mark)?)
    }
}

/// The dead-letter file: bytes in memory that a recovery cuts back to a
/// checkpoint's mark, as production's file sink does with its file.
struct SimFile(SharedBytes);

impl verity_core::connector::SinkConnector for SimFile {
    fn write(
        &mut self,
        lines: &[u8],
        _ids: &[verity_core::MsgId],
    ) -> Result<(), verity_core::connector::SinkError> {
        use std::io::Write;
        Ok(self.0.write_all(lines)?)
    }

    fn barrier(
        &mut self,
        commit: verity_core::connector::CommitId,
    ) -> Result<(), verity_core::connector::SinkError> {
        self.0.barrier(commit)
    }

    fn commit(
        &mut self,
        upto: verity_core::connector::CommitId,
    ) -> Result<(), verity_core::connector::SinkError> {
        self.0.commit(upto)
    }

    fn resume_mark(&mut self) -> Result<Vec<u8>, verity_core::connector::SinkError> {
        Ok(self.0.mark())
    }

    fn resume(&mut self, mark: &[u8]) -> Result<(), verity_core::connector::SinkError> {
        Ok(self.0.cut_at(mark)?)
    }
}

/// A byte buffer the dead-letter writer (which wants a `Write + Send`
/// stream) fills and the world takes at the end. It also keeps what its
/// sink committed, which, as with any exactly-once sink, no recovery may
/// take back (a sink told to commit before its checkpoint was durable is
/// caught here).
#[derive(Clone, Default)]
struct SharedBytes(
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    std::sync::Arc<std::sync::Mutex<Commits>>,
);

/// A simulated file's barriers not yet committed (commit, length at it), and
/// the length committed.
#[derive(Default)]
struct Commits {
    barriers: std::collections::VecDeque<(u64, usize)>,
    committed: usize,
    /// The commit the next barrier must be (this life's checkpoints
    /// number on from the one it recovered from), unless it is the end.
    next_barrier: u64,
    /// The end of input was committed.
    ended: bool,
}

impl SharedBytes {
    fn commits(&self) -> std::sync::MutexGuard<'_, Commits> {
        self.1.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A life of the run starts writing: its first checkpoint's commit is
    /// `first_commit`.
    fn expect_commits_from(&self, first_commit: u64) {
        let mut commits = self.commits();
        commits.next_barrier = first_commit;
        commits.ended = false;
    }

    /// The sink protocol, as the output thread must follow it: each
    /// checkpoint's barrier in turn (1, 2, … from the recovered one on, then
    /// the end of input), each committed before the next barrier.
    fn barrier(
        &self,
        commit: verity_core::connector::CommitId,
    ) -> Result<(), verity_core::connector::SinkError> {
        let len = self.bytes().len();
        let mut commits = self.commits();
        let end = commit == verity_core::connector::CommitId::END_OF_INPUT;
        let problem = if let Some((open, _)) = commits.barriers.back() {
            Some(format!(
                "barrier {} before barrier {open} was committed",
                commit.0
            ))
        } else if commits.ended {
            Some(format!(
                "barrier {} after the end of input was committed",
                commit.0
            ))
        } else if !end && commit.0 != commits.next_barrier {
            Some(format!(
                "barrier {}, but the next checkpoint is {}",
                commit.0, commits.next_barrier
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(verity_core::connector::SinkError::Connector(problem.into()));
        }
        commits.barriers.push_back((commit.0, len));
        if !end {
            commits.next_barrier = commit.0 + 1;
        }
        Ok(())
    }

    fn commit(
        &self,
        upto: verity_core::connector::CommitId,
    ) -> Result<(), verity_core::connector::SinkError> {
        let mut commits = self.commits();
        if commits.barriers.back().map(|(c, _)| *c) != Some(upto.0) {
            let problem = format!(
                "commit {} without its barrier (open: {:?})",
                upto.0, commits.barriers
            );
            return Err(verity_core::connector::SinkError::Connector(problem.into()));
        }
        while commits.barriers.front().is_some_and(|(c, _)| *c <= upto.0) {
            let (_, len) = commits.barriers.pop_front().expect("a barrier");
            commits.committed = commits.committed.max(len);
        }
        commits.ended |= upto == verity_core::connector::CommitId::END_OF_INPUT;
        Ok(())
    }

    /// Whether the end of input was committed (after `finish`).
    fn ended(&self) -> bool {
        self.commits().ended
    }

    /// A recovery without any checkpoint: the file starts over, which is
    /// only right if nothing in it was committed.
    fn start_over(&self) -> std::io::Result<()> {
        self.cut_at(&0u64.to_le_bytes())
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.bytes())
    }

    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its length, as a file sink's mark is.
    fn mark(&self) -> Vec<u8> {
        (self.bytes().len() as u64).to_le_bytes().to_vec()
    }

    /// Drops what followed `mark` (a recovery).
    fn cut_at(&self, mark: &[u8]) -> std::io::Result<()> {
        let length = <[u8; 8]>::try_from(mark)
            .map(u64::from_le_bytes)
            .map_err(|_| std::io::Error::other("not a simulated file's mark"))? as usize;
        let mut bytes = self.bytes();
        if bytes.len() < length {
            return Err(std::io::Error::other(format!(
                "the file holds {} bytes, less than the checkpoint's {length}",
                bytes.len()
            )));
        }
        let mut commits = self.commits();
        if length < commits.committed {
            return Err(std::io::Error::other(format!(
                "the recovery would take back committed output: the sink made {} bytes final, the \
                 checkpoint it recovers from ends at byte {length} (was the sink committed before its \
                 checkpoint was durable?)",
                commits.committed
            )));
        }
        commits.barriers.clear();
        bytes.truncate(length);
        Ok(())
    }
}

impl std::io::Write for SharedBytes {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a, K, V, S, O> World<'a, K, V, S, O>
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: verity_core::State,
    O: 'static,
{
    pub(super) fn new(
        config: &'a SimConfig,
        logic: &Logic<K, V, S, O>,
        inputs: &[(String, Bytes)],
        expected_lines: u64,
        setup: super::AuditSetup,
        recovery: Option<Recovery>,
    ) -> Self {
        let audit_plan = setup.plan;
        let source_names: Vec<String> = inputs.iter().map(|(name, _)| name.to_string()).collect();
        // The shards see streams: a spread source is one per process, each
        // parsing with the source's chain, as production's runtime builds them.
        let streams = Streams::plan(&[config.spread], config.processes);
        let spread_logic;
        let logic = if config.spread {
            spread_logic = logic.for_streams(streams.iter().map(|(_, s)| s.source));
            &spread_logic
        } else {
            logic
        };
        let mut rng = SplitMix64::new(config.seed);
        let buggify = Buggify {
            net: network::NetSizes::draw(&mut rng),
            producer_depth_frames: [1, 4, 16, 64][rng.below(4) as usize],
            late_claims: rng.chance(1, 2),
            batch_max: [1, 3, 4, 16, 1024][rng.below(5) as usize],
            chunk_bytes: [64, 512, 4096, CHUNK_SIZE_BYTES][rng.below(4) as usize],
            line_max_bytes: [BUGGIFY_LINE_MAX_BYTES, LINE_SIZE_MAX_BYTES][rng.below(2) as usize],
            peer_drain_max: [1, 4, PEER_DRAIN_MAX][rng.below(3) as usize],
            output_ids: rng.chance(1, 3),
            checkpoint_interval_ms: [None, Some(20), Some(100), Some(1000)][rng.below(4) as usize],
            // Not drawn from `rng`, so that no other draw moved.
            read_interrupt_every: [0, 3, 11][(config.seed / 7 % 3) as usize],
        };
        let depths = Depths::draw(&mut rng);
        // The audit log keeps every output line's input id (its lineage).
        let output_ids = buggify.output_ids || audit_plan.is_some();
        let (output_text, dead_letter_text) = match &recovery {
            Some(r) => (r.crashed.output_text.clone(), r.crashed.dead_letter_text.clone()),
            None => (SharedBytes::default(), SharedBytes::default()),
        };
        let layout =
            Layout::new(vec![config.workers; config.processes as usize], 0).expect("valid sim layout");
        let total = layout.total_shards();
        // From a stream of its own, so drawing them moved no other draw.
        let mut snapshot_rng = SplitMix64::new(config.seed ^ 0x5A4B_5107_DE17_A500);
        let limits = ShardLimits {
            batch_max: buggify.batch_max,
            snapshot_deltas_max: [0, 1, 3, verity_core::shard::SNAPSHOT_DELTAS_MAX]
                [snapshot_rng.below(4) as usize],
            snapshot_delta_changed_max_percent: [50, 100][snapshot_rng.below(2) as usize],
            ..ShardLimits::default()
        };
        let mut shards = ShardCore::build_range(logic, total, 0..total, limits);
        if buggify.output_ids {
            shards.iter_mut().for_each(ShardCore::collect_output_ids);
        }
        let clocks = audit::Clocks::new(
            config.processes,
            config.seed,
            recovery.as_ref().map(|r| r.crashed.clocks_after),
        );
        for core in &mut shards {
            core.set_clock(clocks.of(layout.process_of(core.index())));
            if audit_plan.is_some() {
                core.enable_audit();
            }
        }
        if config.bugs.no_dedup {
            shards.iter_mut().for_each(ShardCore::disable_dedup_for_testing);
        }
        for core in &mut shards {
            core.plant_event_time_bugs(config.bugs.event_time);
        }
        let restart = recovery.as_ref().and_then(|r| r.restart.as_ref());
        let mut restored_deltas = 0;
        if let (Some(restart), Some(recovery)) = (restart, &recovery) {
            // Process 0's shards from its recovery; every other process reads
            // its own shards' parts from the disk, as a worker does.
            let restore_from = RestoreFrom {
                state_dir: Default::default(),
                fingerprint: SIM_JOB.into(),
                store_id: restart.store_id,
            };
            let mut chains: Vec<Vec<CheckpointPart>> = Vec::with_capacity(total as usize);
            for process in 0..config.processes {
                let range = layout.shards_of(process);
                if process == 0 {
                    chains.extend_from_slice(&restart.parts[range.start as usize..range.end as usize]);
                    continue;
                }
                let (meta, read) = restore_from
                    .read_parts_from(recovery.crashed.disk.clone(), range)
                    .unwrap_or_else(|e| panic!("process {process} reading its parts after the crash: {e}"));
                assert_eq!(
                    meta.checkpoint, restart.meta.checkpoint,
                    "the checkpoint process 0 recovers"
                );
                chains.extend(read);
            }
            for core in &mut shards {
                let chain = &chains[core.index() as usize];
                restored_deltas += chain.len() as u64 - 1;
                core.restore(chain)
                    .unwrap_or_else(|e| panic!("restoring after the crash: {e}"));
            }
        }
        let sources = logic.chains.len();
        assert_eq!(sources, inputs.len(), "one input per source");
        let drivers = shards
            .into_iter()
            .map(|core| {
                let mut driver = ShardDriver::new(core, sources);
                driver.plant_bugs_for_testing(config.bugs.driver);
                driver.set_peer_drain_max(buggify.peer_drain_max);
                Some(driver)
            })
            .collect();
        // With the `fail` fault, in some seeds of one stream that plan no
        // other failure (`schedule_start`), the source fails mid-stream:
        // chosen from the seed alone, so that no other draw moves.
        let source_fails_at = (config.faults.fail
            && config.streams == 1
            && !config.spread
            && recovery.is_none()
            && config.seed % SOURCE_FAIL_SEED_ONE_IN == 1)
            .then(|| {
                SplitMix64::new(config.seed ^ 0x50_0ece_fa11).below(inputs[0].1.len() as u64 + 1) as usize
            });
        let mut readers: Vec<Reader> = inputs
            .iter()
            .enumerate()
            .map(|(source, (_, input))| {
                // A spread stream reads its partition on its own process.
                let stream = if config.spread {
                    streams.get(source as u32)
                } else {
                    Stream {
                        source: source as u32,
                        reader: 0,
                        spread: None,
                    }
                };
                let mut reader = Reader::new(
                    source as u32,
                    stream,
                    input.clone(),
                    total,
                    &buggify,
                    config.bugs.reader,
                );
                if let Some(restart) = restart {
                    let at = &restart.meta.sources[source];
                    reader.resume(restart.meta.checkpoint, at, &buggify, config.bugs.reader);
                }
                if let Some(recovery) = &recovery {
                    reader.recovering(recovery.crashed.forgotten[source]);
                }
                if let Some(at) = source_fails_at {
                    reader.fail_at(at);
                }
                reader
            })
            .collect();
        let net = Net::new(config, &mut rng, buggify.net, buggify.producer_depth_frames);
        let mut audit_failure = None;
        let mut audit = audit_plan.and_then(|plan| {
            // A disk of its own (the audit dir), which a crash hits too.
            let disk = match recovery.as_ref().and_then(|r| r.crashed.audit_disk.clone()) {
                Some(disk) => disk,
                None => crate::sim::disk::SharedDisk::new(crate::sim::disk::SimDisk::new(
                    config.seed ^ 0xa0d1_7d15_c0de,
                )),
            };
            let incarnations: Vec<u64> = (0..config.processes).map(|p| net.incarnation(p)).collect();
            audit::SimAudit::start(plan, disk, &layout, buggify.batch_max, &clocks, &incarnations)
                .map_err(|e| audit_failure = Some(e))
                .ok()
        });
        if let Some(audit) = &audit {
            for reader in &mut readers {
                reader.record_input(verity_core::source::InputAudit {
                    out: audit.out(0),
                    clock: clocks.of(0),
                });
            }
        }
        // Checkpoints onto the simulated disk, as production writes them
        // into the state dir.
        let disk = match &recovery {
            Some(r) => r.crashed.disk.clone(),
            None => crate::sim::disk::SharedDisk::new(crate::sim::disk::SimDisk::new(rng.next_u64())),
        };
        if recovery.is_some() {
            // The same sizes (BUGGIFY) as before the crash, other timings.
            let life = recovery.as_ref().map_or(0, |r| r.life);
            rng = SplitMix64::new(config.seed ^ 0x00c0_ffee_d00d ^ (u64::from(life - 1) << 48));
        }
        let resumed = restart.map_or(0, |r| r.meta.checkpoint);
        let checkpointer = buggify.checkpoint_interval_ms.map(|interval_ms| {
            let storage = Box::new(disk.clone()) as Box<dyn verity_state::storage::Storage>;
            Checkpointer::new(
                verity_state::checkpoint::CheckpointStore::new(storage),
                SIM_JOB.into(),
                total,
                interval_ms,
                restart,
                recovery.as_ref().map_or(1, |r| r.next_store_id),
            )
        });
        let job = verity_core::cluster::Job {
            app: config.app.name().to_string(),
            final_counts: config.final_counts,
            max_quote_age_ms: setup.max_quote_age_ms,
            sources: config.streams,
            batch_max: buggify.batch_max as u32,
            queue_depth_batches: verity_core::RunConfig::default().queue_depth_batches as u32,
            discard_output: false,
            output_ids: false,
            // The simulated shards are restored from the recovery itself;
            // the job still carries what production's does, as texts of
            // every length class (up to the bound, multi-byte at it), so that
            // the workers' decoding of it is judged too (`StartJob`).
            checkpoints: buggify
                .checkpoint_interval_ms
                .map(|_| verity_core::cluster::JobCheckpoints {
                    state_dir: job_text(config.seed, "/var/lib/verity/state-é"),
                    fingerprint: job_text(config.seed / 3, "fp-0123456789abcdef"),
                    restore_from: resumed,
                }),
            spread_sources: if config.spread {
                vec![(0, "sim".into())]
            } else {
                Vec::new()
            },
        };
        // Past the liveness bound: a job that never arrives is a liveness
        // finding, reported with what every shard awaits.
        let job_wait_ms = (config.sim_seconds * SECOND_US + LIVENESS_BOUND_US + SECOND_US) / 1000;
        let lifecycles = control::Lifecycles::new(config.processes, job, job_wait_ms);
        let file_sink: Box<dyn verity_core::connector::SinkConnector> = Box::new(SimSink {
            text: output_text.clone(),
            wants_ids: output_ids,
            source_lines: inputs.iter().map(|(_, data)| line_count(data)).collect(),
        });
        let broker = config.log_sink.then(|| {
            recovery
                .as_ref()
                .and_then(|r| r.crashed.broker.clone())
                .unwrap_or_else(log_sink::new_broker)
        });
        let sink: Box<dyn verity_core::connector::SinkConnector> = match &broker {
            Some(broker) => Box::new(
                log_sink::Tee::open(file_sink, broker, config.app, config.bugs.kafka)
                    .unwrap_or_else(|e| panic!("opening the Kafka sink: {e}")),
            ),
            None => file_sink,
        };
        let mut writer = OutputWriter::new(
            sink,
            DeadLetterWriter::with_sink(Box::new(SimFile(dead_letter_text.clone())), source_names.to_vec()),
        )
        .with_bugs(config.bugs.output);
        let mut dead_letters_written = 0;
        if let Some(recovery) = &recovery {
            match &recovery.restart {
                Some(restart) => {
                    if let Err(e) = writer.resume(&restart.meta) {
                        panic!("recovery from checkpoint {}: {e}", restart.meta.checkpoint);
                    }
                    dead_letters_written = restart.meta.dead_letters;
                }
                // Nothing was checkpointed: the files start over.
                None => {
                    for file in [&output_text, &dead_letter_text] {
                        if let Err(e) = file.start_over() {
                            panic!("recovery from the start: {e}");
                        }
                    }
                }
            }
        }
        for file in [&output_text, &dead_letter_text] {
            file.expect_commits_from(resumed + 1);
        }
        let output_lines = line_count(&output_text.bytes());
        if let Some(audit) = &mut audit {
            writer = writer.with_audit(verity_core::audit::OutputAudit::new(audit.out(0), clocks.of(0)));
            if let Some(restart) = restart {
                let recorded =
                    audit.recovered(clocks.of(0).now_us(), restart.meta.checkpoint, restart.store_id);
                audit_failure = audit_failure.or(recorded.err());
            }
        }
        let mut world = World {
            config,
            layout,
            rng,
            now_us: 0,
            heal_us: config.sim_seconds * SECOND_US,
            seq: 0,
            queue: BinaryHeap::new(),
            drivers,
            waits_for_room: vec![false; total as usize],
            uploads: (0..total).map(|_| None).collect(),
            part_piece_max: [64, 1024, PART_PIECE_MAX_BYTES][snapshot_rng.below(3) as usize],
            stalled_until_us: vec![0; total as usize],
            watching: vec![None; total as usize],
            // One more for the network's wrong-secret intruder.
            processes: (0..=config.processes)
                .map(|_| Process {
                    paused_until_us: 0,
                    clock_offset_us: 0,
                    dead: false,
                })
                .collect(),
            net,
            local_chunks: BTreeMap::new(),
            local_batches: BTreeMap::new(),
            readers,
            sources_closed: false,
            buggify,
            depths,
            output: output::OutputThread::new(OutputLoop::new(
                match checkpointer {
                    Some(checkpointer) => writer.with_checkpoints(checkpointer),
                    None => writer,
                },
                Default::default(),
            )),
            checkpoints_resumed: resumed,
            source_fails_at,
            checkpoint_parts: vec![resumed; total as usize],
            output_text,
            broker,
            output_lines,
            dead_letters_written,
            expected_lines,
            dead_letter_text,
            relays: (0..total)
                .map(|shard| OutputRelay::new(shard).with_bugs(config.bugs.relay))
                .collect(),
            source_errors: Vec::new(),
            remote_finished: 0,
            remote_counters: ShardCounters::default(),
            input_lines: inputs.iter().map(|(_, data)| line_count(data)).sum(),
            lifecycles,
            trace_hash: 0xcbf2_9ce4_8422_2325,
            trace: Vec::new(),
            line: String::new(),
            events: 0,
            stats: super::SimStats::default(),
            disk,
            crashed: false,
            crash_after_commit: false,
            crashed_after_commit: None,
            recovered: recovery.is_some(),
            life: recovery.as_ref().map_or(0, |r| r.life),
            restart_watch: restart::RestartWatch::new(config.processes),
            clocks,
            audit,
        };
        if let Some(failure) = audit_failure {
            world.net.failure.get_or_insert(failure);
        }
        if let Some(recovery) = recovery {
            let crashed = recovery.crashed;
            (world.stats, world.trace_hash, world.trace, world.events) =
                (crashed.stats, crashed.trace_hash, crashed.trace, crashed.events);
            world.stats.bump(if recovery.restart.is_some() {
                "recoveries_from_checkpoint"
            } else {
                "recoveries_from_start"
            });
            world.stats.add("deltas_restored", restored_deltas);
            world.trace(format_args!(
                "every process restarts from checkpoint {resumed} (--recover)"
            ));
        }
        world.wire_channels();
        world.wire_control_channels();
        world.schedule_start();
        world.start_output();
        world.start_lifecycles();
        world.schedule_network_faults();
        world
    }

    /// Every cross-process channel of the layout, as in the real runtime.
    pub(super) fn schedule(&mut self, at_us: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            time_us: at_us,
            seq: self.seq,
            event,
        }));
    }

    /// Input releases, the first tick, and every fault, all drawn from the seed.
    pub(super) fn schedule_start(&mut self) {
        self.schedule_arrivals();
        self.schedule(TICK_US, Event::Tick);
        let faults = self.config.faults;
        let processes = self.config.processes;
        if processes < 2 {
            return;
        }
        let seconds = self.config.sim_seconds.max(1);
        let mut plan = Vec::new();
        let pair = |rng: &mut SplitMix64| {
            let a = rng.below(processes as u64) as u32;
            let b = (a + 1 + rng.below(processes as u64 - 1) as u32) % processes;
            (a.min(b), a.max(b))
        };
        if faults.cut {
            for _ in 0..seconds / 2 + 1 {
                let (a, b) = pair(&mut self.rng);
                plan.push((self.rng.below(self.heal_us), Event::Cut { a, b }));
            }
        }
        for _ in 0..seconds / 10 + 1 {
            let at = self.rng.below(self.heal_us);
            let until_us = (at + 200_000 + self.rng.below(3 * SECOND_US)).min(self.heal_us);
            if faults.partition {
                let mask = 1 + self.rng.below((1u64 << processes) - 2);
                plan.push((at, Event::Partition { mask, until_us }));
            }
            if faults.pause {
                let process = self.rng.below(processes as u64) as u32;
                let at = self.rng.below(self.heal_us);
                let until_us = (at + 100_000 + self.rng.below(2 * SECOND_US)).min(self.heal_us);
                plan.push((at, Event::Pause { process, until_us }));
                let shard = self.rng.below(self.layout.total_shards() as u64) as u32;
                let at = self.rng.below(self.heal_us);
                let until_us = (at + 10_000 + self.rng.below(SECOND_US / 2)).min(self.heal_us);
                plan.push((at, Event::Stall { shard, until_us }));
            }
            if faults.clock {
                let process = self.rng.below(processes as u64) as u32;
                let delta_us = self.rng.below(2 * PEER_TIMEOUT_US) as i64 - PEER_TIMEOUT_US as i64;
                plan.push((
                    self.rng.below(self.heal_us),
                    Event::ClockJump { process, delta_us },
                ));
            }
        }
        // At most one of a failure and a stop per seed: each is judged alone.
        if self.source_fails_at.is_some() {
            self.stats.fault("fail");
            self.stats.bump("source_failures");
        } else if faults.fail && self.rng.chance(1, FAIL_SEED_ONE_IN) {
            let process = self.rng.below(processes as u64) as u32;
            plan.push((self.rng.below(self.heal_us), Event::Fail { process }));
        } else if faults.stop && self.rng.chance(1, STOP_SEED_ONE_IN) {
            let everyone = self.rng.chance(1, 2);
            plan.push((self.rng.below(self.heal_us), Event::Stop { everyone }));
        } else if faults.crash && self.life + 1 < LIVES_MAX && self.rng.chance(1, CRASH_SEED_ONE_IN) {
            let event = if self.rng.chance(1, 3) {
                Event::CrashAll
            } else if self.rng.chance(1, 2) {
                Event::CrashAfterCommit
            } else {
                // A checkpoint writes about 3 operations per file.
                let files = u64::from(self.layout.total_shards()) + 2;
                Event::CrashMidCheckpoint {
                    ops: self.rng.below(3 * files),
                }
            };
            // While input arrives: later, the run may have taken its last
            // checkpoint, and an armed crash would never strike.
            plan.push((self.rng.below(self.heal_us / RELEASE_SHARE), event));
        } else if faults.restart
            && !self.recovered
            && self.buggify.checkpoint_interval_ms.is_some()
            && self.rng.chance(1, restart::RESTART_SEED_ONE_IN)
        {
            // Production restarts a failed run only from its checkpoints.
            self.plan_restart(&mut plan);
        }
        for (at, event) in plan {
            self.schedule(at, event);
        }
    }

    pub(super) fn trace(&mut self, args: std::fmt::Arguments<'_>) {
        self.line.clear();
        let _ = write!(self.line, "{:>12} ", self.now_us);
        let _ = self.line.write_fmt(args);
        for byte in self.line.bytes() {
            self.trace_hash = (self.trace_hash ^ byte as u64).wrapping_mul(0x100_0000_01b3);
        }
        self.trace_hash = (self.trace_hash ^ b'\n' as u64).wrapping_mul(0x100_0000_01b3);
        if self.config.trace {
            self.trace.push(self.line.clone());
        }
    }

    /// Runs to the end; returns why the seed failed, if it did.
    pub(super) fn run(&mut self) -> Option<String> {
        let deadline_us = self.heal_us + LIVENESS_BOUND_US;
        while let Some(Reverse(next)) = self.queue.pop() {
            if next.time_us > deadline_us {
                break;
            }
            self.now_us = next.time_us;
            self.clocks.set_now(self.now_us);
            self.events += 1;
            self.handle(next.event);
            if let Some(failure) = self.net.failure.take() {
                return Some(failure);
            }
            if self.crashed {
                return None;
            }
            if self.restart_failed_the_run() {
                self.trace(format_args!(
                    "process 0 exited after a survivor noticed the restart: every process restarts"
                ));
                self.stats.bump("restarts_recovered");
                self.crashed = true;
                return None;
            }
            match self.lifecycle_end() {
                Some(Ok(())) if self.cut_short() => {
                    self.trace(format_args!(
                        "every process exited after the failure, as it should"
                    ));
                    return None;
                }
                Some(Ok(())) => {
                    self.trace(format_args!("every process exited, done"));
                    return self.check_counters().err();
                }
                Some(Err(failure)) => return Some(failure),
                None => {}
            }
        }
        Some(format!(
            "liveness: not finished {} s after the faults healed: {}; {}; {}",
            LIVENESS_BOUND_US / SECOND_US,
            self.describe_waiting(),
            self.net.describe_busy_channels(),
            self.describe_lifecycles()
        ))
    }

    /// Every process died: what outlives them (the disk loses what was not
    /// synced).
    fn crash(self) -> Crashed {
        self.disk.crash();
        if let Some(broker) = &self.broker {
            broker.crash_clients();
        }
        let fsync = self.audit.as_ref().map(|audit| audit.plan.fsync);
        let audit_disk = self.audit.map(|audit| {
            audit.disk.crash();
            audit.disk
        });
        let lineage_lost = match (self.crashed_after_commit, &audit_disk, fsync) {
            (Some(_), _, Some(verity_audit::writer::FsyncPolicy::Never)) => None,
            (Some(checkpoint), Some(disk), _) => audit::lost_checkpoint_record(disk, checkpoint),
            _ => None,
        };
        Crashed {
            disk: self.disk,
            audit_disk,
            lineage_lost,
            clocks_after: self.clocks.continued(self.now_us),
            forgotten: self.readers.iter().map(|r| r.forgotten().0).collect(),
            output_text: self.output_text,
            dead_letter_text: self.dead_letter_text,
            broker: self.broker,
            stats: self.stats,
            trace_hash: self.trace_hash,
            trace: self.trace,
            events: self.events,
        }
    }

    /// An injected failure or stop ended the run before it completed.
    fn cut_short(&self) -> bool {
        let injected = self.lifecycles.injected.is_some() || self.lifecycles.stop_requested_at_us.is_some();
        injected && !self.leader_exited_done()
    }

    /// The run's totals, as the summary reports them, must match what
    /// happened: every input line counted once, every dead letter and every
    /// output line the sinks got.
    fn check_counters(&self) -> Result<(), String> {
        // Only the `fail` fault fails a source, and process 0 hears it once.
        match (self.source_fails_at, &self.source_errors[..]) {
            (None, []) => {}
            (Some(_), [error]) if error.starts_with("source 0: ") => {}
            (Some(at), errors) => {
                return Err(format!(
                    "the source failed at byte {at}, and process 0 heard of it as {errors:?}, not once"
                ))
            }
            (None, errors) => return Err(format!("a source failed, as process 0 heard: {errors:?}")),
        }
        let mut totals = self.remote_counters;
        for driver in self.drivers.iter().flatten() {
            if self.layout.is_local_to(0, driver.core().index()) {
                add_counters(&mut totals, driver.counters());
            }
        }
        let dead_letters = self.dead_letters_written;
        let wrong = |what: &str, counted: u64, actual: u64| {
            Err(format!(
                "the shards' totals say {counted} {what}, but there were {actual}"
            ))
        };
        // A stopped run read only a prefix of its input.
        let input_lines = if self.lifecycles.stop_requested_at_us.is_some() || self.source_fails_at.is_some()
        {
            self.readers.iter().map(Reader::read_lines).sum()
        } else {
            self.input_lines
        };
        if totals.records_in != input_lines {
            return wrong("records in", totals.records_in, input_lines);
        }
        if totals.dead_lettered != dead_letters {
            return wrong("dead-lettered", totals.dead_lettered, dead_letters);
        }
        if totals.records_out != self.output_lines {
            return wrong("records out", totals.records_out, self.output_lines);
        }
        Ok(())
    }

    pub(super) fn handle(&mut self, event: Event) {
        match event {
            Event::Release { source, available } => self.release(source, available),
            Event::Net(event) => self.handle_net(event),
            Event::OutputWake => self.output_wake(),
            Event::Tick => {
                self.check_checkpoint_requested();
                for process in 0..self.config.processes {
                    if !self.paused(process) {
                        self.audit_turn(process);
                    }
                }
                self.tick();
                self.poll_waiting_shards();
                self.tick_lifecycles();
            }
            Event::Cut { a, b } => {
                self.stats.fault("cut");
                self.cut(a, b, "fault: connection cut");
            }
            Event::Partition { mask, until_us } => {
                self.stats.fault("partition");
                self.trace(format_args!("fault: partition {mask:#b} until {until_us}"));
                self.net.partition = Some((mask, until_us));
                self.restart_watch.on_partition(mask, until_us);
            }
            Event::Pause { process, until_us } => {
                self.stats.fault("pause");
                self.trace(format_args!("fault: pause process {process} until {until_us}"));
                self.processes[process as usize].paused_until_us = until_us;
                self.restart_watch.on_pause(process, until_us);
                self.schedule(until_us, Event::Wake { process });
            }
            Event::Wake { process } => {
                self.trace(format_args!("process {process} resumes"));
                self.step_process(process);
            }
            Event::ClockJump { process, delta_us } => {
                self.stats.fault("clock");
                self.trace(format_args!(
                    "fault: clock of process {process} jumps {delta_us} us"
                ));
                self.processes[process as usize].clock_offset_us += delta_us;
            }
            Event::Fail { process } => self.inject_failure(process),
            Event::Stop { everyone } => self.request_stop(everyone),
            Event::CrashAll => {
                self.stats.fault("crash");
                self.trace(format_args!("fault: every process dies at once (kill -9)"));
                self.crashed = true;
            }
            Event::CrashAfterCommit => {
                self.trace(format_args!(
                    "fault armed: every process dies right after the next checkpoint's commit"
                ));
                self.crash_after_commit = true;
            }
            Event::CrashMidCheckpoint { ops } => {
                self.trace(format_args!(
                    "fault armed: every process dies after {ops} more disk operations"
                ));
                self.disk.crash_after(ops);
            }
            Event::Restart { process } => self.restart(process),
            Event::Revive { process } => self.revive(process),
            Event::RestartNoticeDue {
                survivor,
                conn,
                since_us,
            } => self.check_restart_noticed(survivor, conn, since_us),
            Event::Stall { shard, until_us } => {
                self.stats.bump("shard_stalls");
                self.trace(format_args!(
                    "fault: shard {shard} is not scheduled until {until_us}"
                ));
                self.stalled_until_us[shard as usize] = until_us;
                let process = self.layout.process_of(shard);
                self.schedule(until_us, Event::Wake { process });
            }
        }
    }

    pub(super) fn paused(&self, process: u32) -> bool {
        let p = &self.processes[process as usize];
        p.dead || p.paused_until_us > self.now_us
    }

    pub(super) fn dead(&self, process: u32) -> bool {
        self.processes[process as usize].dead
    }

    pub(super) fn partitioned(&self, a: u32, b: u32) -> bool {
        match self.net.partition {
            Some((mask, until)) if until > self.now_us => (mask >> a & 1) != (mask >> b & 1),
            _ => false,
        }
    }

    /// The output writer finished as the output thread must: both sinks
    /// committed the end of input, and it counts the dead letters written.
    fn check_finished_sinks(&self, finished: Result<u64, String>) -> Result<(), String> {
        let written = finished.map_err(|e| format!("process 0's sinks at the end: {e}"))?;
        for (name, file) in [
            ("output", &self.output_text),
            ("dead-letter", &self.dead_letter_text),
        ] {
            if !file.ended() {
                return Err(format!("the {name} sink never committed the end of input"));
            }
        }
        if written != self.dead_letters_written {
            return Err(format!(
                "the output writer says {written} dead letters were written, the simulator gave it {}",
                self.dead_letters_written
            ));
        }
        Ok(())
    }

    /// A turn of `process`'s audit side thread; true if it wrote anything.
    pub(super) fn audit_turn(&mut self, process: u32) -> bool {
        let Some(audit) = &mut self.audit else {
            return false;
        };
        audit.turn(process, self.now_us).unwrap_or_else(|e| {
            self.net.failure.get_or_insert(e);
            false
        })
    }

    /// The audit logs at the end of the run: each running process records
    /// how it ended and syncs; the disk and the chain heads, to check.
    fn finish_audit(
        &mut self,
        failure: Option<&String>,
        failure_injected: bool,
    ) -> Option<super::AuditedRun> {
        let audit = self.audit.take()?;
        let outcome = match failure {
            Some(failure) => format!("failed: {failure}"),
            None if failure_injected => "failed (injected)".to_string(),
            None if self.lifecycles.stop_requested_at_us.is_some() => "stopped".to_string(),
            None => "done".to_string(),
        };
        let mut counts = vec![[0; 3]; self.config.processes as usize];
        for driver in self.drivers.iter().flatten() {
            let c = driver.counters();
            let process = self.layout.process_of(driver.core().index()) as usize;
            for (total, n) in counts[process]
                .iter_mut()
                .zip([c.records_in, c.records_out, c.dead_lettered])
            {
                *total += n;
            }
        }
        let utc_us = self.clocks.of(0).now_us();
        let plan = audit.plan;
        let (written, full_queues) = (audit.records, audit.full_queues);
        self.stats.add("audit_records", written);
        self.stats.add("audit_full_queues", full_queues);
        Some(super::AuditedRun {
            plan,
            finished: audit.finish(utc_us, &outcome, |p| counts[p as usize]),
            lives: self.life + 1,
            state_dir: self.disk.clone(),
        })
    }

    pub(super) fn local_clock_ms(&self, process: u32) -> u64 {
        let offset = self.processes[process as usize].clock_offset_us;
        (self.now_us as i64 + offset).max(0) as u64 / 1000
    }

    pub(super) fn faults_on(&self) -> bool {
        self.now_us < self.heal_us
    }

    pub(super) fn finish(mut self, failure: Option<String>) -> Finished {
        let failure_injected = self.cut_short();
        if self.lifecycles.stop_requested_at_us.is_some() {
            let completed = self.leader_exited_done();
            self.stats.bump(if completed {
                "stops_completed"
            } else {
                "stops_cut_short"
            });
        }
        // A stopped or failed source's output is that of what it read.
        let stopped_at = (self.lifecycles.stop_requested_at_us.is_some() || self.source_fails_at.is_some())
            .then(|| self.readers.iter().map(Reader::read_bytes).collect());
        // As the output thread once every sender is gone: commit both sinks.
        let mut failure = failure;
        if let Some(finished) = self.finish_output() {
            if failure.is_none() && !self.crashed {
                failure = self.check_finished_sinks(finished).err();
            }
            if failure.is_none() && !self.crashed {
                failure = self.release_readers(failure_injected).err();
            }
            if let (None, false, Some(broker)) = (&failure, self.crashed, &self.broker) {
                let open = log_sink::open_records(broker);
                if open > 0 {
                    failure = Some(format!(
                        "the Kafka sink left {open} records in open transactions at the end"
                    ));
                }
            }
        }
        // After the writer, whose last lineage records it flushed.
        let audit = self.finish_audit(failure.as_ref(), failure_injected);
        let protocol = self.net.protocol_stats();
        self.stats.add("full_windows", protocol.full_windows);
        self.stats.add("retransmitted_frames", protocol.frames_resent);
        self.stats.add("reconnects", protocol.reconnects);
        self.stats.add("handshakes_refused", protocol.handshakes_refused);
        self.stats.add("unclaimed_refused", protocol.unclaimed_refused);
        self.stats.add("backlog_pauses", protocol.backlog_pauses);
        Finished {
            sim: SimOutcome {
                seed: self.config.seed,
                failure,
                trace_hash: self.trace_hash,
                trace: self.trace,
                events: self.events,
                sim_time_us: self.now_us,
                faults_injected: self.stats.faults_injected(),
                stats: self.stats,
                report: None,
                failure_injected,
                stopped_at,
            },
            output: match &self.broker {
                Some(broker) => log_sink::committed_output(broker),
                None => self.output_text.take(),
            },
            dead_letters: self.dead_letter_text.take(),
            audit,
        }
    }

    /// Each source's input arrives in steps over a seeded share of the
    /// faulty period: sources run at different rates.
    fn schedule_arrivals(&mut self) {
        let spread_us = self.heal_us / RELEASE_SHARE;
        for source in 0..self.readers.len() {
            let span_us = spread_us / [1, 2, 4][self.rng.below(3) as usize];
            let releases = RELEASES_PER_SOURCE[self.rng.below(3) as usize];
            let len = self.readers[source].len() as u64;
            for step in 1..=releases {
                let available = (len * step / releases) as usize;
                let at = (step - 1) * span_us / releases;
                self.schedule(
                    at,
                    Event::Release {
                        source: source as u32,
                        available,
                    },
                );
            }
        }
    }
}

impl Depths {
    /// Production's depths, or (BUGGIFY, often) tiny ones.
    fn draw(rng: &mut SplitMix64) -> Depths {
        let production = verity_core::RunConfig::default();
        let mut pick = |full: usize| match rng.below(4) {
            0 => 1,
            1 => 2,
            2 => 4.min(full),
            _ => full,
        };
        Depths {
            batches: pick(production.queue_depth_batches),
            chunks: pick(production.source_queue_depth_chunks),
        }
    }
}
