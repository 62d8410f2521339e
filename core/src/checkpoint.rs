//! The output thread's half of checkpoints, over a `Storage` (a directory in
//! production, the simulated disk in the simulator): when a checkpoint is
//! due, what a checkpoint stores besides the shards' snapshots, and writing
//! and reading it back. The shards' half (barriers, snapshots) is in `shard`;
//! `sink::OutputWriter` lines the two up.
//!
//! A checkpoint in the store has part 0, the job's `JobMeta` (the number of
//! the checkpoint, each source's cut, the sinks' resume marks), and part
//! `1 + s` for shard `s`'s snapshot. It is complete once its manifest is
//! durable (`state::checkpoint`); the sinks commit only after that, so the
//! output a recovery keeps is exactly what the checkpoint's state produced.

use crate::cluster::codec::{decode_cut, encode_cut};
use crate::shard::CheckpointPart;
use crate::source::SourceCut;
use crate::wire::{decode_bytes, encode_bytes, Wire, WireError};
use std::ops::Range;
use std::path::PathBuf;
use verity_state::checkpoint::{CheckpointError, CheckpointStore, PartInfo};
use verity_state::storage::{DirStorage, Storage};

pub use verity_state::checkpoint::DEFAULT_RETAINED;

/// How often a checkpoint is taken by default (`--checkpoint-interval-ms`).
pub const DEFAULT_INTERVAL_MS: u64 = 1000;
/// The version of `JobMeta`'s encoding.
/// 2: with the output's line count. 3: with the workers' sinks' marks.
const META_VERSION: u32 = 3;

/// Where a source stands in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceMeta {
    /// Resume it at its cut.
    At(SourceCut),
    /// It had ended, with this many chunks, all applied: nothing to read.
    Ended { chunks: u64 },
}

/// Part 0 of a checkpoint: what the job needs besides the shards' state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMeta {
    /// The barrier number (`Dealer::epoch` after it), which a recovered run
    /// goes on from.
    pub checkpoint: u64,
    pub sources: Vec<SourceMeta>,
    /// `SinkConnector::resume_mark` of the output sink and of the dead
    /// letters' sink at the checkpoint's boundary.
    pub output_mark: Vec<u8>,
    pub dead_letter_mark: Vec<u8>,
    /// Output lines written up to the boundary: a recovery numbers the
    /// lines it writes on from here (the audit log's lineage).
    pub output_lines: u64,
    /// Dead letters written up to the boundary.
    pub dead_letters: u64,
    /// With a sink written by every process (`SinkConnector::
    /// written_by_every_process`): the resume mark of process `p`'s sink at
    /// the boundary, at index `p - 1` (process 0's is `output_mark`), so a
    /// recovery resumes each process's sink from its own; empty when
    /// process 0 writes all output.
    pub member_marks: Vec<Vec<u8>>,
}

/// Where the sinks stand at a checkpoint's boundary, as `JobMeta` keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkMarks {
    pub output_mark: Vec<u8>,
    pub output_lines: u64,
    pub dead_letter_mark: Vec<u8>,
    pub dead_letters: u64,
}

impl JobMeta {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        META_VERSION.encode(&mut out);
        self.checkpoint.encode(&mut out);
        (self.sources.len() as u32).encode(&mut out);
        for source in &self.sources {
            match source {
                SourceMeta::At(cut) => {
                    0u8.encode(&mut out);
                    encode_cut(cut, &mut out);
                }
                SourceMeta::Ended { chunks } => {
                    1u8.encode(&mut out);
                    chunks.encode(&mut out);
                }
            }
        }
        encode_bytes(&self.output_mark, &mut out);
        encode_bytes(&self.dead_letter_mark, &mut out);
        self.output_lines.encode(&mut out);
        self.dead_letters.encode(&mut out);
        (self.member_marks.len() as u32).encode(&mut out);
        for mark in &self.member_marks {
            encode_bytes(mark, &mut out);
        }
        out
    }

    pub fn decode(mut input: &[u8]) -> Result<JobMeta, WireError> {
        let input = &mut input;
        if u32::decode(input)? != META_VERSION {
            return Err(WireError::Invalid("job metadata of another version"));
        }
        let checkpoint = u64::decode(input)?;
        let count = u32::decode(input)?;
        if count as usize > input.len() {
            return Err(WireError::Invalid("more sources than bytes"));
        }
        let mut sources = Vec::with_capacity(count as usize);
        for _ in 0..count {
            sources.push(match u8::decode(input)? {
                0 => SourceMeta::At(decode_cut(input)?),
                1 => SourceMeta::Ended {
                    chunks: u64::decode(input)?,
                },
                tag => {
                    return Err(WireError::BadTag {
                        tag,
                        what: "source meta",
                    })
                }
            });
        }
        let output_mark = decode_bytes(input)?.to_vec();
        let dead_letter_mark = decode_bytes(input)?.to_vec();
        let output_lines = u64::decode(input)?;
        let dead_letters = u64::decode(input)?;
        let marks = u32::decode(input)?;
        if marks as usize > input.len() {
            return Err(WireError::Invalid("more sink marks than bytes"));
        }
        let member_marks = (0..marks)
            .map(|_| decode_bytes(input).map(<[u8]>::to_vec))
            .collect::<Result<Vec<_>, _>>()?;
        if !input.is_empty() {
            return Err(WireError::Invalid("bytes after the job metadata"));
        }
        Ok(JobMeta {
            checkpoint,
            sources,
            output_mark,
            dead_letter_mark,
            output_lines,
            dead_letters,
            member_marks,
        })
    }
}

/// Durations in µs as "p50 …, p99 …, max …" in ms, for the end-of-run
/// reports of checkpoint times (`values` is not empty).
pub(crate) fn percentiles_ms(mut values: Vec<u64>) -> String {
    assert!(!values.is_empty());
    values.sort_unstable();
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

/// A checkpoint read back for a recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    /// Its id in the store (the next checkpoint's deltas are over it).
    pub store_id: u64,
    pub meta: JobMeta,
    /// Shard `s`'s part at index `s`, as its chain: the whole snapshot,
    /// then each delta over it (`ShardCore::restore`).
    pub parts: Vec<Vec<CheckpointPart>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error(transparent)]
    Store(#[from] CheckpointError),
    #[error("checkpoint {id} holds {found} parts; a job of {shards} shards has {expected}")]
    Parts {
        id: u64,
        found: usize,
        shards: u32,
        expected: usize,
    },
    #[error("checkpoint {id}: {what} does not decode: {error}")]
    Malformed { id: u64, what: String, error: WireError },
    #[error(
        "state dir {0}: not found on this process; a cluster's checkpoints need a directory \
         every process reads at the same path (one machine, or a shared file system)"
    )]
    NotShared(String),
}

/// The checkpoint a process of a cluster restores its shards from: the one
/// process 0 recovers from, read from the state dir at the same path (the
/// parts process 0 wrote, so nothing large crosses the control channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreFrom {
    pub state_dir: PathBuf,
    /// The job's fingerprint in every manifest (`Checkpointer::fingerprint`).
    pub fingerprint: String,
    /// Its id in the store (`Restart::store_id`).
    pub store_id: u64,
}

impl RestoreFrom {
    /// The checkpoint's job metadata (its number, and the cuts a worker's
    /// readers of spread sources resume at) and the parts of `shards`
    /// (global indexes), in that order, each as its chain and checked
    /// against the manifests.
    pub fn read_parts(
        &self,
        shards: Range<u32>,
    ) -> Result<(JobMeta, Vec<Vec<CheckpointPart>>), RecoverError> {
        if !self.state_dir.is_dir() {
            return Err(RecoverError::NotShared(self.state_dir.display().to_string()));
        }
        let storage = DirStorage::open(&self.state_dir).map_err(CheckpointError::Io)?;
        self.read_parts_from(storage, shards)
    }

    /// `read_parts` from `storage` (the simulator's disk, or the state dir).
    pub fn read_parts_from(
        &self,
        storage: impl Storage,
        shards: Range<u32>,
    ) -> Result<(JobMeta, Vec<Vec<CheckpointPart>>), RecoverError> {
        let mut store = CheckpointStore::new(storage);
        read_meta_and_parts(&mut store, self.store_id, &self.fingerprint, shards)
    }
}

/// Checkpoint `store_id` whole, whichever job's it is: its metadata and
/// every shard's part chain, checked against its manifest (a replay of a
/// recovered life restores from it; `shards` is the recorded run's count).
pub fn read_checkpoint(storage: impl Storage, store_id: u64, shards: u32) -> Result<Restart, RecoverError> {
    let mut store = CheckpointStore::new(storage);
    let fingerprint = match store.fingerprint_of(store_id)? {
        Ok(fingerprint) => fingerprint,
        Err(reason) => return Err(CheckpointError::Invalid { id: store_id, reason }.into()),
    };
    let (meta, parts) = read_meta_and_parts(&mut store, store_id, &fingerprint, 0..shards)?;
    Ok(Restart {
        store_id,
        meta,
        parts,
    })
}

/// Checkpoint `id`'s job metadata and the part chains of `shards`.
fn read_meta_and_parts<S: Storage>(
    store: &mut CheckpointStore<S>,
    id: u64,
    fingerprint: &str,
    shards: Range<u32>,
) -> Result<(JobMeta, Vec<Vec<CheckpointPart>>), RecoverError> {
    // Part 0 too: its metadata names the checkpoint every part must be of.
    let wanted: Vec<u32> = std::iter::once(0)
        .chain(shards.clone().map(|shard| shard + 1))
        .collect();
    let chains = store.read_parts(id, fingerprint, &wanted)?;
    let meta = decode_meta(id, &chains[0])?;
    let parts = shards
        .zip(&chains[1..])
        .map(|(shard, chain)| decode_chain(id, shard, chain))
        .collect::<Result<Vec<_>, _>>()?;
    for chain in &parts {
        if chain.last().map(|part| part.checkpoint) != Some(meta.checkpoint) {
            return Err(RecoverError::Malformed {
                id,
                what: format!("shard {}'s part", chain[0].shard),
                error: WireError::Invalid("it is of another checkpoint than the job metadata"),
            });
        }
    }
    Ok((meta, parts))
}

/// Part 0 of checkpoint `id`, which is always whole.
fn decode_meta(id: u64, chain: &[Vec<u8>]) -> Result<JobMeta, RecoverError> {
    let malformed = |error| RecoverError::Malformed {
        id,
        what: "its job metadata".into(),
        error,
    };
    match chain {
        [whole] => JobMeta::decode(whole).map_err(malformed),
        _ => Err(malformed(WireError::Invalid("stored as a delta"))),
    }
}

/// A shard's part chain as stored, decoded; each link must be of `shard`.
fn decode_chain(id: u64, shard: u32, chain: &[Vec<u8>]) -> Result<Vec<CheckpointPart>, RecoverError> {
    let malformed = |error| RecoverError::Malformed {
        id,
        what: format!("shard {shard}'s part"),
        error,
    };
    chain
        .iter()
        .map(|bytes| {
            let part = decode_part(bytes).map_err(malformed)?;
            match part.shard == shard {
                true => Ok(part),
                false => Err(malformed(WireError::Invalid("it names another shard"))),
            }
        })
        .collect()
}

/// Bugs a test can plant in recovery to prove the simulator finds them. All
/// off in production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoverBugs {
    /// Restore the shards (their keyed state and dedup watermarks) from an
    /// older checkpoint than the one whose cuts the sources resume at.
    pub state_from_older_checkpoint: bool,
}

/// Bugs a test can plant in checkpoint coordination to prove a test finds
/// them. All off in production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoordinatorBugs {
    /// Complete a checkpoint once every shard's part is in, without
    /// waiting for the mark of the last worker's sink.
    pub complete_without_last_member_mark: bool,
}

/// The checkpoints of one job: when the next is due, collecting its parts
/// (and, with a sink written by every process, each worker's sink mark),
/// writing it. Sans-IO but for the `Storage` it writes through.
pub struct Checkpointer {
    store: CheckpointStore<Box<dyn Storage>>,
    fingerprint: String,
    shards: u32,
    interval_ms: u64,
    /// Barriers requested so far (`Dealer::barrier_to` reads it).
    requested: u64,
    /// Checkpoints written.
    completed: u64,
    last_request_ms: Option<u64>,
    /// The next id in the store (above every id there, torn ones included).
    next_store_id: u64,
    /// The id of the last complete checkpoint in the store, written or
    /// recovered from: shards' deltas are over its parts.
    previous_store_id: Option<u64>,
    /// Bytes of the last checkpoint written (parts and metadata).
    last_size_bytes: u64,
    /// Checkpoints `tick` saw complete, when the last one did, and how long
    /// it took from its request: the next waits at least that long after it.
    seen_completed: u64,
    last_completed_ms: u64,
    pause_ms: u64,
    warned_slow: bool,
    /// The parts of the checkpoint being collected, shard `s` at index `s`.
    parts: Vec<Option<CheckpointPart>>,
    /// With a sink written by every process: the resume mark of process
    /// `p`'s sink at the boundary of the checkpoint being collected, at
    /// index `p - 1`; empty when process 0 writes all output.
    member_marks: Vec<Option<Vec<u8>>>,
    bugs: CoordinatorBugs,
}

impl Checkpointer {
    /// Checkpoints of the job `fingerprint` (app, layout, sources: a store of
    /// another job is refused) into `store`, every `interval_ms`. `resumed`
    /// is the checkpoint a recovery started from (`None` for a fresh run),
    /// and `next_store_id` the store's next id (`Recovered::next_id`, or 1).
    /// The checkpoint a recovery started from stays in the store for as
    /// long as this life writes to it (`CheckpointStore::pin`): a replay of
    /// the life restores from it.
    pub fn new(
        mut store: CheckpointStore<Box<dyn Storage>>,
        fingerprint: String,
        shards: u32,
        interval_ms: u64,
        resumed: Option<&Restart>,
        next_store_id: u64,
    ) -> Checkpointer {
        assert!(shards > 0 && interval_ms > 0);
        if let Some(restart) = resumed {
            store.pin(restart.store_id);
        }
        let previous_store_id = resumed.map(|r| r.store_id);
        let resumed = resumed.map_or(0, |r| r.meta.checkpoint);
        Checkpointer {
            store,
            fingerprint,
            shards,
            interval_ms,
            requested: resumed,
            completed: resumed,
            last_request_ms: None,
            next_store_id: next_store_id.max(1),
            previous_store_id,
            last_size_bytes: 0,
            seen_completed: resumed,
            last_completed_ms: 0,
            pause_ms: 0,
            warned_slow: false,
            parts: vec![None; shards as usize],
            member_marks: Vec::new(),
            bugs: CoordinatorBugs::default(),
        }
    }

    /// The sink is written by every process of a `processes`-process
    /// cluster: a checkpoint completes only once every worker's sink took
    /// its barrier and sent its resume mark (`add_member_mark`).
    pub fn expect_member_sinks(&mut self, processes: u32) {
        assert!(processes >= 1, "a cluster has process 0");
        assert!(self.parts.iter().all(Option::is_none), "before the first part");
        self.member_marks = vec![None; processes as usize - 1];
    }

    pub fn with_bugs(mut self, bugs: CoordinatorBugs) -> Checkpointer {
        self.bugs = bugs;
        self
    }

    /// Whether every part and every worker's sink mark of the checkpoint
    /// being collected is in.
    fn collected(&self) -> bool {
        let marks = match self.member_marks.split_last() {
            Some((_, others)) if self.bugs.complete_without_last_member_mark => others,
            _ => &self.member_marks[..],
        };
        self.parts.iter().all(Option::is_some) && marks.iter().all(Option::is_some)
    }

    /// Keeps worker `process`'s sink mark at the boundary of `checkpoint`.
    /// Returns whether the checkpoint is now collected whole. A mark out of
    /// order (a worker off the protocol) is refused with why.
    pub fn add_member_mark(&mut self, process: u32, checkpoint: u64, mark: Vec<u8>) -> Result<bool, String> {
        let expected = self.completed + 1;
        if checkpoint != expected {
            return Err(format!(
                "process {process}'s sink took the barrier of checkpoint {checkpoint} while {expected} is \
                 being collected"
            ));
        }
        let slot = process
            .checked_sub(1)
            .and_then(|index| self.member_marks.get_mut(index as usize));
        let Some(slot) = slot else {
            return Err(format!(
                "a sink mark of process {process}, which writes no sink of its own in this job"
            ));
        };
        if slot.is_some() {
            return Err(format!(
                "process {process} sent two sink marks of checkpoint {expected}"
            ));
        }
        *slot = Some(mark);
        Ok(self.collected())
    }

    /// Reads the newest complete checkpoint of `fingerprint` for a recovery:
    /// `None` if there is none. Why newer ones were passed over (torn,
    /// corrupt) is logged.
    pub fn recover(
        store: &mut CheckpointStore<Box<dyn Storage>>,
        fingerprint: &str,
        shards: u32,
    ) -> Result<(Option<Restart>, u64), RecoverError> {
        Self::recover_with_bugs(store, fingerprint, shards, RecoverBugs::default())
    }

    /// `recover`, with a planted bug for the simulator's tests.
    pub fn recover_with_bugs(
        store: &mut CheckpointStore<Box<dyn Storage>>,
        fingerprint: &str,
        shards: u32,
        bugs: RecoverBugs,
    ) -> Result<(Option<Restart>, u64), RecoverError> {
        let recovered = store.latest_complete(fingerprint)?;
        for why in &recovered.skipped {
            log::warn!("checkpoint passed over: {why}");
        }
        let Some((id, parts)) = recovered.checkpoint else {
            return Ok((None, recovered.next_id));
        };
        let expected = shards as usize + 1;
        if parts.len() != expected {
            return Err(RecoverError::Parts {
                id,
                found: parts.len(),
                shards,
                expected,
            });
        }
        let meta = decode_meta(id, &parts[0])?;
        let mut parts = parts;
        if bugs.state_from_older_checkpoint {
            // The sources' cuts of this checkpoint, the state of an older one.
            let wanted: Vec<u32> = (1..=shards).collect();
            let older = (id.saturating_sub(8)..id)
                .rev()
                .find_map(|older| store.read_parts(older, fingerprint, &wanted).ok());
            if let Some(older) = older {
                parts.truncate(1);
                parts.extend(older);
            }
        }
        let parts = parts[1..]
            .iter()
            .enumerate()
            .map(|(shard, chain)| decode_chain(id, shard as u32, chain))
            .collect::<Result<Vec<_>, _>>()?;
        let restart = Restart {
            store_id: id,
            meta,
            parts,
        };
        Ok((Some(restart), recovered.next_id))
    }

    /// Bytes of the last checkpoint written: its parts' payloads.
    /// The store id of the newest checkpoint written (or resumed from).
    pub fn last_store_id(&self) -> u64 {
        self.previous_store_id.unwrap_or(0)
    }

    pub fn last_size_bytes(&self) -> u64 {
        self.last_size_bytes
    }

    /// The job's fingerprint, in every manifest.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Barriers requested so far.
    pub fn requested(&self) -> u64 {
        self.requested
    }

    /// Checkpoints complete so far (or restored from).
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// Asks for the next checkpoint when the interval passed since the last
    /// request and the one before is complete (so requests never pile up
    /// behind a slow shard), and at least as long has passed since it
    /// completed as it took (a checkpoint slower than the interval, of a
    /// large state, still leaves the job half its time to work). Returns the
    /// barrier number now requested.
    pub fn tick(&mut self, now_ms: u64) -> u64 {
        let last = *self.last_request_ms.get_or_insert(now_ms);
        if self.completed > self.seen_completed {
            // Completed since the last look: how long it took.
            self.seen_completed = self.completed;
            self.pause_ms = now_ms.saturating_sub(last);
            self.last_completed_ms = now_ms;
            if self.pause_ms > self.interval_ms && !self.warned_slow {
                self.warned_slow = true;
                log::warn!(
                    "checkpoint {} took {} ms, more than the interval of {} ms: checkpoints are spaced by \
                     how long they take",
                    self.completed,
                    self.pause_ms,
                    self.interval_ms
                );
            }
        }
        if self.requested == self.completed && self.due_in_ms(now_ms) == 0 {
            self.requested += 1;
            self.last_request_ms = Some(now_ms);
        }
        self.requested
    }

    /// How long until `tick` may request the next checkpoint.
    pub fn due_in_ms(&self, now_ms: u64) -> u64 {
        let last = self.last_request_ms.unwrap_or(now_ms);
        let by_interval = last + self.interval_ms;
        let by_pause = self.last_completed_ms + self.pause_ms;
        by_interval.max(by_pause).saturating_sub(now_ms)
    }

    /// Keeps a shard's part of the checkpoint being collected. Returns
    /// whether every shard's part is in. A part out of order (a remote
    /// shard that breaks the protocol) is refused with why.
    pub fn add_part(&mut self, part: CheckpointPart) -> Result<bool, String> {
        let expected = self.completed + 1;
        let shard = part.shard;
        if part.checkpoint < expected {
            return Err(format!(
                "shard {shard}'s part of checkpoint {} arrived duplicated, after that checkpoint was complete",
                part.checkpoint
            ));
        }
        if part.checkpoint > expected {
            return Err(format!(
                "shard {shard} sent its part of checkpoint {} before that of {expected}",
                part.checkpoint
            ));
        }
        let Some(slot) = self.parts.get_mut(shard as usize) else {
            return Err(format!("a part of shard {shard}, which the job does not have"));
        };
        if slot.is_some() {
            return Err(format!("shard {shard} sent two parts of checkpoint {expected}"));
        }
        *slot = Some(part);
        Ok(self.collected())
    }

    /// Writes the collected checkpoint with the sinks' marks (taken at its
    /// boundary, with everything before the boundary durable): parts, then
    /// the manifest. Once this returns the checkpoint is complete and the
    /// sinks may commit.
    pub fn write(&mut self, marks: SinkMarks) -> Result<JobMeta, CheckpointError> {
        let checkpoint = self.completed + 1;
        let parts: Vec<CheckpointPart> = self
            .parts
            .iter_mut()
            .map(|p| p.take().expect("every part is in"))
            .collect();
        let sources = source_meta(&parts);
        // A missing mark only under the planted bug: that worker resumes
        // from nothing.
        let member_marks = self
            .member_marks
            .iter_mut()
            .map(|m| m.take().unwrap_or_default())
            .collect();
        let SinkMarks {
            output_mark,
            output_lines,
            dead_letter_mark,
            dead_letters,
        } = marks;
        let meta = JobMeta {
            checkpoint,
            sources,
            output_mark,
            dead_letter_mark,
            output_lines,
            dead_letters,
            member_marks,
        };
        let id = self.next_store_id;
        let mut written: Vec<PartInfo> = Vec::with_capacity(parts.len() + 1);
        written.push(self.store.write_part(id, 0, &meta.encode())?);
        for part in &parts {
            let base = match (part.delta, self.previous_store_id) {
                (false, _) => None,
                (true, Some(previous)) => Some(previous),
                (true, None) => {
                    let reason = format!(
                        "shard {}'s part is a delta, with no checkpoint before it",
                        part.shard
                    );
                    return Err(CheckpointError::Invalid { id, reason });
                }
            };
            written.push(
                self.store
                    .write_part_over(id, part.shard + 1, base, &encode_part(part))?,
            );
        }
        self.store.commit(id, &self.fingerprint, &written)?;
        self.last_size_bytes = written.iter().map(|info| info.len).sum();
        self.previous_store_id = Some(id);
        self.next_store_id += 1;
        self.completed = checkpoint;
        Ok(meta)
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }
}

/// Each source's place: from the shard that saw its barrier (the parser of
/// the chunk at the cut always has), or ended.
fn source_meta(parts: &[CheckpointPart]) -> Vec<SourceMeta> {
    let sources = parts.first().map_or(0, |p| p.cuts.len());
    (0..sources)
        .map(|source| {
            let cut = parts.iter().find_map(|p| p.cuts[source].clone());
            let ended = parts.iter().find_map(|p| p.ended[source]);
            match (cut, ended) {
                (Some(cut), _) => SourceMeta::At(cut),
                (None, Some(chunks)) => SourceMeta::Ended { chunks },
                (None, None) => panic!("no shard knows where source {source} stands at the checkpoint"),
            }
        })
        .collect()
}

/// A part as it is stored, and as a remote shard sends it to process 0.
pub(crate) fn encode_part(part: &CheckpointPart) -> Vec<u8> {
    let mut out = Vec::with_capacity(part.state.len() + 64);
    part.shard.encode(&mut out);
    part.checkpoint.encode(&mut out);
    (part.cuts.len() as u32).encode(&mut out);
    for (cut, ended) in part.cuts.iter().zip(&part.ended) {
        cut.is_some().encode(&mut out);
        if let Some(cut) = cut {
            encode_cut(cut, &mut out);
        }
        ended.encode(&mut out);
    }
    part.delta.encode(&mut out);
    // A u64 length: one shard's state may be over 4 GiB.
    (part.state.len() as u64).encode(&mut out);
    out.extend_from_slice(&part.state);
    out
}

pub(crate) fn decode_part(mut input: &[u8]) -> Result<CheckpointPart, WireError> {
    let input = &mut input;
    let shard = u32::decode(input)?;
    let checkpoint = u64::decode(input)?;
    let count = u32::decode(input)?;
    if count as usize > input.len() {
        return Err(WireError::Invalid("more sources than bytes"));
    }
    let (mut cuts, mut ended) = (Vec::new(), Vec::new());
    for _ in 0..count {
        cuts.push(if bool::decode(input)? {
            Some(decode_cut(input)?)
        } else {
            None
        });
        ended.push(Option::<u64>::decode(input)?);
    }
    let delta = bool::decode(input)?;
    let state_len = u64::decode(input)?;
    let state_len =
        usize::try_from(state_len).map_err(|_| WireError::Invalid("a state larger than memory"))?;
    let state = crate::wire::take(input, state_len)?.to_vec();
    if !input.is_empty() {
        return Err(WireError::Invalid("bytes after the part"));
    }
    Ok(CheckpointPart {
        shard,
        checkpoint,
        cuts,
        ended,
        delta,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::Position;

    fn part(shard: u32, cut: Option<SourceCut>) -> CheckpointPart {
        CheckpointPart {
            shard,
            checkpoint: 1,
            cuts: vec![cut, None],
            ended: vec![None, Some(9)],
            delta: false,
            state: vec![shard as u8; 5],
        }
    }

    #[test]
    fn parts_and_metadata_cross_the_store_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Box<dyn Storage> =
            Box::new(verity_state::storage::DirStorage::open(dir.path()).unwrap());
        let mut store = CheckpointStore::new(storage);
        assert_eq!(Checkpointer::recover(&mut store, "job", 2).unwrap().0, None);
        let mut checkpoints = Checkpointer::new(store, "job".into(), 2, 1000, None, 1);
        assert_eq!(checkpoints.tick(0), 0);
        assert_eq!(checkpoints.tick(999), 0);
        assert_eq!(checkpoints.tick(1000), 1);
        assert_eq!(checkpoints.tick(5000), 1, "one at a time");
        let cut = SourceCut {
            next_chunk: 4,
            next_line: 70,
            positions: vec![(
                0,
                Position::Text {
                    bytes: 300,
                    lines: 69,
                },
            )],
        };
        assert!(!checkpoints.add_part(part(1, None)).unwrap());
        assert!(
            checkpoints.add_part(part(1, None)).is_err(),
            "a second part of a shard"
        );
        assert!(
            checkpoints.add_part(part(7, None)).is_err(),
            "a shard the job does not have"
        );
        assert!(checkpoints.add_part(part(0, Some(cut.clone()))).unwrap());
        let marks = SinkMarks {
            output_mark: b"out".to_vec(),
            output_lines: 5,
            dead_letter_mark: vec![],
            dead_letters: 3,
        };
        let meta = checkpoints.write(marks.clone()).unwrap();
        assert_eq!((meta.output_lines, meta.dead_letters), (5, 3));
        assert_eq!(
            meta.sources,
            vec![SourceMeta::At(cut), SourceMeta::Ended { chunks: 9 }]
        );
        assert_eq!(checkpoints.completed(), 1);
        // It took 4000 ms (requested at 1000, seen complete at 5000): the next
        // waits as long after it, though the interval is 1000.
        assert_eq!(checkpoints.tick(5000), 1);
        assert_eq!(checkpoints.due_in_ms(5000), 4000);
        assert_eq!(checkpoints.tick(8999), 1, "spaced by how long it took");
        assert_eq!(checkpoints.tick(9000), 2);
        let mut store = CheckpointStore::new(Box::new(
            verity_state::storage::DirStorage::open(dir.path()).unwrap(),
        ) as Box<dyn Storage>);
        let (restart, next_id) = Checkpointer::recover(&mut store, "job", 2).unwrap();
        let restart = restart.expect("a complete checkpoint");
        assert_eq!(restart.meta, meta);
        assert_eq!(restart.parts[1][0].state, vec![1; 5]);
        assert_eq!(next_id, 2);
        assert!(Checkpointer::recover(&mut store, "another job", 2).is_err());
        assert!(matches!(
            Checkpointer::recover(&mut store, "job", 3),
            Err(RecoverError::Parts { .. })
        ));
    }

    fn checkpointer(dir: &std::path::Path, bugs: CoordinatorBugs) -> Checkpointer {
        let storage: Box<dyn Storage> = Box::new(verity_state::storage::DirStorage::open(dir).unwrap());
        let mut checkpoints =
            Checkpointer::new(CheckpointStore::new(storage), "job".into(), 2, 1000, None, 1).with_bugs(bugs);
        checkpoints.expect_member_sinks(3);
        assert_eq!((checkpoints.tick(0), checkpoints.tick(1000)), (0, 1));
        checkpoints
    }

    #[test]
    fn a_checkpoint_of_sinks_written_by_every_process_waits_for_every_workers_mark() {
        let dir = tempfile::tempdir().unwrap();
        let mut checkpoints = checkpointer(dir.path(), CoordinatorBugs::default());
        assert!(!checkpoints.add_member_mark(2, 1, b"p2".to_vec()).unwrap());
        assert!(
            checkpoints.add_member_mark(2, 1, b"again".to_vec()).is_err(),
            "two marks of one process"
        );
        assert!(
            checkpoints.add_member_mark(1, 2, vec![]).is_err(),
            "a later checkpoint's"
        );
        assert!(
            checkpoints.add_member_mark(3, 1, vec![]).is_err(),
            "a process past the cluster"
        );
        assert!(
            checkpoints.add_member_mark(0, 1, vec![]).is_err(),
            "process 0's is its own"
        );
        assert!(!checkpoints.add_part(part(0, None)).unwrap());
        assert!(
            !checkpoints.add_part(part(1, Some(SourceCut::default()))).unwrap(),
            "every part is in, process 1's mark is not"
        );
        assert!(checkpoints.add_member_mark(1, 1, b"p1".to_vec()).unwrap());
        let meta = checkpoints.write(SinkMarks::default()).unwrap();
        assert_eq!(meta.member_marks, [b"p1".to_vec(), b"p2".to_vec()]);
        let mut store = CheckpointStore::new(Box::new(
            verity_state::storage::DirStorage::open(dir.path()).unwrap(),
        ) as Box<dyn Storage>);
        let (restart, _) = Checkpointer::recover(&mut store, "job", 2).unwrap();
        assert_eq!(restart.expect("complete").meta.member_marks, meta.member_marks);
        assert!(
            checkpoints.add_member_mark(1, 1, vec![]).is_err(),
            "a mark of a checkpoint already complete"
        );
    }

    #[test]
    fn the_planted_bug_completes_a_checkpoint_without_the_last_workers_mark() {
        let dir = tempfile::tempdir().unwrap();
        let bugs = CoordinatorBugs {
            complete_without_last_member_mark: true,
        };
        let mut checkpoints = checkpointer(dir.path(), bugs);
        assert!(!checkpoints.add_member_mark(1, 1, b"p1".to_vec()).unwrap());
        assert!(!checkpoints.add_part(part(0, None)).unwrap());
        assert!(checkpoints.add_part(part(1, Some(SourceCut::default()))).unwrap());
        let meta = checkpoints.write(SinkMarks::default()).unwrap();
        assert_eq!(
            meta.member_marks,
            [b"p1".to_vec(), Vec::new()],
            "process 2 resumes from nothing"
        );
    }
}
