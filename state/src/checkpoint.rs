//! Checkpoint files: one part per shard plus a manifest written last, over a
//! `Storage`, so production and the simulator run the same code.
//!
//! A checkpoint is complete exactly when its manifest is durable: parts are
//! written (each atomically) first, the manifest names every part with its
//! length and checksum, and recovery trusts a checkpoint only if its manifest
//! and every part it names check out. So a crash at any point leaves either
//! the new checkpoint complete or the previous one, never a mix.
//!
//! Files (`{id:020}`, `{part:05}`: fixed width, so names sort by id):
//!
//! * `ckpt-{id}-part-{part}.bin`: a part's bytes.
//! * `ckpt-{id}.manifest`: the job fingerprint, the id, and each part's number,
//!   length, crc32c and base.
//!
//! A part is *whole*, or a *delta* over the same-numbered part of an older
//! checkpoint, its base (an incremental snapshot: only what changed since).
//! Reading a part reads its chain, the whole part and every delta over it,
//! each checked against its own manifest; retention keeps every checkpoint
//! a kept one's chains reach.
//!
//! Each file is one frame: magic `VRTYCKPT`, format version (u32), kind (u8:
//! part or manifest), payload length (u64), crc32c of the payload (u32), the
//! payload; integers little-endian. A torn or corrupt file fails the length
//! or checksum check and is reported, never trusted and never a panic.

use crate::storage::{write_atomically_with, Storage, TEMP_SUFFIX};
use std::collections::{BTreeMap, BTreeSet};
use std::io;

/// How many complete checkpoints `CheckpointStore::new` keeps: the newest, and
/// one more in case the newest turns out unreadable.
pub const DEFAULT_RETAINED: usize = 2;

/// Parts per checkpoint: part numbers are written with five digits.
pub const PARTS_MAX: u32 = 100_000;

/// The longest job fingerprint a manifest holds.
pub const FINGERPRINT_MAX_BYTES: usize = 64 * 1024;

const MAGIC: [u8; 8] = *b"VRTYCKPT";
/// 2: manifests name each part's base (deltas).
const FORMAT_VERSION: u32 = 2;
/// magic + version + kind + payload length + crc.
const HEADER_BYTES: usize = 8 + 4 + 1 + 8 + 4;
const NAME_PREFIX: &str = "ckpt-";
/// Bytes of one part entry in a manifest: number, length, crc, base.
const PART_ENTRY_BYTES: usize = 4 + 8 + 4 + 8;
/// The longest chain of deltas over a whole part that is read back: ids of
/// bases strictly decrease, so a chain ends anyway; this bounds the reading
/// of a directory that was tampered with.
pub const CHAIN_MAX: usize = 1024;

/// What a framed file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FileKind {
    Part = 1,
    Manifest = 2,
}

/// Why a framed file was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("truncated: {len} bytes, shorter than the {HEADER_BYTES}-byte header")]
    ShortHeader { len: usize },
    #[error("not a checkpoint file (bad magic)")]
    BadMagic,
    #[error("format version {0}, this build reads version {FORMAT_VERSION}")]
    UnsupportedVersion(u32),
    #[error("holds a {found} where a {expected} belongs")]
    WrongKind { found: String, expected: &'static str },
    #[error("length mismatch: header says {expected} payload bytes, file has {found} (torn write?)")]
    Length { expected: u64, found: u64 },
    #[error("checksum mismatch")]
    Checksum,
}

/// Frames `payload` as a file of `kind`.
pub fn encode_frame(kind: FileKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    debug_assert_eq!(out.len(), HEADER_BYTES + payload.len());
    out
}

/// The payload of a framed file of `kind`, if the whole frame checks out.
pub fn decode_frame(kind: FileKind, file: &[u8]) -> Result<&[u8], FrameError> {
    if file.len() < HEADER_BYTES {
        return Err(FrameError::ShortHeader { len: file.len() });
    }
    let (header, payload) = file.split_at(HEADER_BYTES);
    let mut r = Reader(header);
    if r.take(8) != Some(&MAGIC[..]) {
        return Err(FrameError::BadMagic);
    }
    // The header is exactly long enough, so these reads cannot fail.
    let version = r.u32().unwrap_or_default();
    if version != FORMAT_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let found = r.u8().unwrap_or_default();
    if found != kind as u8 {
        let found = match found {
            1 => "part".to_string(),
            2 => "manifest".to_string(),
            other => format!("file of unknown kind {other}"),
        };
        let expected = match kind {
            FileKind::Part => "part",
            FileKind::Manifest => "manifest",
        };
        return Err(FrameError::WrongKind { found, expected });
    }
    let len = r.u64().unwrap_or_default();
    let crc = r.u32().unwrap_or_default();
    if len != payload.len() as u64 {
        return Err(FrameError::Length {
            expected: len,
            found: payload.len() as u64,
        });
    }
    if crc32c::crc32c(payload) != crc {
        return Err(FrameError::Checksum);
    }
    Ok(payload)
}

/// A written part, as its checkpoint's manifest will name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartInfo {
    /// The checkpoint the part belongs to, so a commit cannot mix ids.
    pub id: u64,
    pub part: u32,
    pub len: u64,
    pub crc: u32,
    /// `None` for a whole part; for a delta, the checkpoint over whose part
    /// of the same number it applies.
    pub base: Option<u64>,
}

/// A part as recovery reads it: the whole part first, then each delta over
/// it, oldest first (one element for a whole part).
pub type PartChain = Vec<Vec<u8>>;

/// A checkpoint's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub fingerprint: String,
    pub id: u64,
    /// Part `i` at index `i`.
    pub parts: Vec<PartInfo>,
}

/// Why a manifest payload does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest payload ends early (in {0})")]
    Truncated(&'static str),
    #[error("job fingerprint of {0} bytes is over the limit")]
    FingerprintTooLong(u64),
    #[error("job fingerprint is not UTF-8")]
    FingerprintNotUtf8,
    #[error("{0} parts is over the limit")]
    TooManyParts(u64),
    #[error("part entry {index} is numbered {found}")]
    PartOutOfOrder { index: u32, found: u32 },
    #[error("{0} bytes after the last part entry")]
    TrailingBytes(usize),
    #[error("part {part} is a delta over checkpoint {base}, which is not older")]
    BaseNotOlder { part: u32, base: u64 },
}

impl Manifest {
    /// fingerprint length (u32) and bytes, id (u64), part count (u32), then per
    /// part: number (u32), length (u64), crc32c (u32), base (u64, 0 for a
    /// whole part); all little-endian.
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.fingerprint.len() <= FINGERPRINT_MAX_BYTES);
        let mut out =
            Vec::with_capacity(4 + self.fingerprint.len() + 8 + 4 + PART_ENTRY_BYTES * self.parts.len());
        out.extend_from_slice(&(self.fingerprint.len() as u32).to_le_bytes());
        out.extend_from_slice(self.fingerprint.as_bytes());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&(self.parts.len() as u32).to_le_bytes());
        for part in &self.parts {
            out.extend_from_slice(&part.part.to_le_bytes());
            out.extend_from_slice(&part.len.to_le_bytes());
            out.extend_from_slice(&part.crc.to_le_bytes());
            out.extend_from_slice(&part.base.unwrap_or(0).to_le_bytes());
        }
        out
    }

    /// Decodes any input to a manifest or an error, never a panic; the count
    /// is checked against the bytes left before anything is allocated for it.
    pub fn decode(payload: &[u8]) -> Result<Manifest, ManifestError> {
        let mut r = Reader(payload);
        let fp_len = r.u32().ok_or(ManifestError::Truncated("fingerprint length"))?;
        if fp_len as usize > FINGERPRINT_MAX_BYTES {
            return Err(ManifestError::FingerprintTooLong(fp_len.into()));
        }
        let fp = r
            .take(fp_len as usize)
            .ok_or(ManifestError::Truncated("fingerprint"))?;
        let fingerprint = std::str::from_utf8(fp)
            .map_err(|_| ManifestError::FingerprintNotUtf8)?
            .to_string();
        let id = r.u64().ok_or(ManifestError::Truncated("id"))?;
        let count = r.u32().ok_or(ManifestError::Truncated("part count"))?;
        if count > PARTS_MAX || count as usize * PART_ENTRY_BYTES > r.0.len() {
            return match count > PARTS_MAX {
                true => Err(ManifestError::TooManyParts(count.into())),
                false => Err(ManifestError::Truncated("part entries")),
            };
        }
        let mut parts = Vec::with_capacity(count as usize);
        for index in 0..count {
            let entry = (r.u32(), r.u64(), r.u32(), r.u64());
            let (Some(part), Some(len), Some(crc), Some(base)) = entry else {
                return Err(ManifestError::Truncated("part entries"));
            };
            if part != index {
                return Err(ManifestError::PartOutOfOrder { index, found: part });
            }
            if base != 0 && base >= id {
                return Err(ManifestError::BaseNotOlder { part, base });
            }
            let base = (base != 0).then_some(base);
            parts.push(PartInfo {
                id,
                part,
                len,
                crc,
                base,
            });
        }
        if !r.0.is_empty() {
            return Err(ManifestError::TrailingBytes(r.0.len()));
        }
        Ok(Manifest {
            fingerprint,
            id,
            parts,
        })
    }
}

/// A cursor over bytes whose every read says whether the bytes were there.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|b| b.try_into().ok())
    }
    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }
    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
}

/// Errors of the checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint storage: {0}")]
    Io(#[from] io::Error),
    #[error(
        "the state directory holds checkpoints of a different job (its job is `{found}`, this run's is \
         `{expected}`): give this run another --state-dir, or remove that directory to start over"
    )]
    DifferentJob { found: String, expected: String },
    #[error(
        "checkpoint {id} is of an older checkpoint format (version {found}; this build reads version \
         {FORMAT_VERSION}): finish or recover that job with the verity that wrote it, or remove the \
         directory to start over"
    )]
    OlderFormat { id: u64, found: u32 },
    #[error("checkpoints to retain must be at least 1, not {0}")]
    InvalidRetention(usize),
    #[error("checkpoint {id}: {reason}")]
    Invalid { id: u64, reason: String },
    #[error("checkpoint {id} is complete, but removing older checkpoint files failed: {source}")]
    Retention { id: u64, source: io::Error },
}

/// What recovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The newest complete checkpoint: its id and its parts' chains, part
    /// `i` at index `i`.
    pub checkpoint: Option<(u64, Vec<PartChain>)>,
    /// Why each newer checkpoint (and each unreadable checkpoint file name)
    /// was passed over, newest first, for the caller to report.
    pub skipped: Vec<String>,
    /// An id above every id in the directory, complete or not, so the next
    /// checkpoint never reuses the id of a torn one.
    pub next_id: u64,
}

/// A checkpoint file name, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileName {
    id: u64,
    /// `None` for the manifest.
    part: Option<u32>,
    temp: bool,
}

pub fn part_name(id: u64, part: u32) -> String {
    format!("{NAME_PREFIX}{id:020}-part-{part:05}.bin")
}

pub fn manifest_name(id: u64) -> String {
    format!("{NAME_PREFIX}{id:020}.manifest")
}

impl FileName {
    /// `None` for a name that is not a checkpoint file's; `Some(Err)` for one
    /// that claims to be (the prefix) but does not parse.
    fn parse(name: &str) -> Option<Result<FileName, ()>> {
        let rest = name.strip_prefix(NAME_PREFIX)?;
        let (stem, temp) = match name.strip_suffix(TEMP_SUFFIX) {
            Some(stem) => (stem, true),
            None => (name, false),
        };
        let id = rest.get(..20).and_then(|digits| digits.parse::<u64>().ok());
        let Some(id) = id else { return Some(Err(())) };
        let part = rest
            .get(20..)
            .and_then(|tail| tail.strip_prefix("-part-"))
            .and_then(|tail| tail.get(..5))
            .and_then(|digits| digits.parse::<u32>().ok());
        // Exact round trip, so `+1`, other widths or other suffixes are no
        // checkpoint file of ours.
        if stem == manifest_name(id) {
            return Some(Ok(FileName { id, part: None, temp }));
        }
        match part {
            Some(part) if stem == part_name(id, part) => Some(Ok(FileName {
                id,
                part: Some(part),
                temp,
            })),
            _ => Some(Err(())),
        }
    }
}

/// Checkpoints in one state directory.
pub struct CheckpointStore<S: Storage> {
    storage: S,
    retained: usize,
    /// Kept whatever its age, with the bases it reaches (`pin`).
    pinned: Option<u64>,
    /// Planted bug: the manifest's rename is not made durable.
    skip_manifest_dir_sync: bool,
}

impl<S: Storage> CheckpointStore<S> {
    /// A store keeping `DEFAULT_RETAINED` complete checkpoints.
    pub fn new(storage: S) -> CheckpointStore<S> {
        CheckpointStore {
            storage,
            retained: DEFAULT_RETAINED,
            pinned: None,
            skip_manifest_dir_sync: false,
        }
    }

    /// A store keeping the newest `retained` (≥ 1) complete checkpoints.
    pub fn with_retained(storage: S, retained: usize) -> Result<CheckpointStore<S>, CheckpointError> {
        if retained == 0 {
            return Err(CheckpointError::InvalidRetention(retained));
        }
        Ok(CheckpointStore {
            retained,
            ..CheckpointStore::new(storage)
        })
    }

    /// Keeps checkpoint `id` however many newer ones follow: the one a
    /// recovered life began from, which a replay of that life restores.
    pub fn pin(&mut self, id: u64) {
        self.pinned = Some(id);
    }

    /// Planted bug for tests: `commit` leaves out the directory sync after
    /// renaming the manifest into place, so a crash can lose a checkpoint
    /// whose commit returned. The crash tests show the simulated disk finds it.
    pub fn skip_dir_sync_for_testing(&mut self) {
        self.skip_manifest_dir_sync = true;
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    pub fn into_storage(self) -> S {
        self.storage
    }

    /// Writes the whole part `part` of checkpoint `id` atomically and durably.
    pub fn write_part(&mut self, id: u64, part: u32, bytes: &[u8]) -> Result<PartInfo, CheckpointError> {
        self.write_part_over(id, part, None, bytes)
    }

    /// Writes part `part` of checkpoint `id`, whole (`base` is `None`) or
    /// as a delta over the same part of the complete checkpoint `base`, an
    /// older one and not 0 (which the manifest reserves for "whole").
    pub fn write_part_over(
        &mut self,
        id: u64,
        part: u32,
        base: Option<u64>,
        bytes: &[u8],
    ) -> Result<PartInfo, CheckpointError> {
        if part >= PARTS_MAX {
            let reason = format!("part {part}: at most {PARTS_MAX} parts");
            return Err(CheckpointError::Invalid { id, reason });
        }
        if let Some(base) = base.filter(|base| *base == 0 || *base >= id) {
            let reason = format!("part {part}: a delta over checkpoint {base}, which is not an older one");
            return Err(CheckpointError::Invalid { id, reason });
        }
        let framed = encode_frame(FileKind::Part, bytes);
        write_atomically_with(&mut self.storage, &part_name(id, part), &framed, true)?;
        Ok(PartInfo {
            id,
            part,
            len: bytes.len() as u64,
            crc: crc32c::crc32c(bytes),
            base,
        })
    }

    /// Completes checkpoint `id` (ids increase from one checkpoint to the
    /// next) by writing its manifest; `parts` are what `write_part` returned,
    /// part `i` at index `i`. Only once this returns is the checkpoint
    /// complete. Then removes what the newest `retained` complete checkpoints
    /// do not need; a failure there is `CheckpointError::Retention`, with the
    /// checkpoint already complete.
    pub fn commit(&mut self, id: u64, fingerprint: &str, parts: &[PartInfo]) -> Result<(), CheckpointError> {
        if fingerprint.len() > FINGERPRINT_MAX_BYTES {
            let reason = format!("job fingerprint over {FINGERPRINT_MAX_BYTES} bytes");
            return Err(CheckpointError::Invalid { id, reason });
        }
        if parts.len() > PARTS_MAX as usize {
            let reason = format!("{} parts, at most {PARTS_MAX}", parts.len());
            return Err(CheckpointError::Invalid { id, reason });
        }
        for (index, info) in parts.iter().enumerate() {
            if info.id != id || info.part as usize != index {
                let reason = format!(
                    "entry {index} of the parts is part {} of checkpoint {}",
                    info.part, info.id
                );
                return Err(CheckpointError::Invalid { id, reason });
            }
        }
        let manifest = Manifest {
            fingerprint: fingerprint.to_string(),
            id,
            parts: parts.to_vec(),
        };
        let framed = encode_frame(FileKind::Manifest, &manifest.encode());
        let sync_dir = !self.skip_manifest_dir_sync;
        write_atomically_with(&mut self.storage, &manifest_name(id), &framed, sync_dir)?;
        // Removals only now, after the manifest is durable: until then the
        // older checkpoints are what recovery falls back on.
        self.remove_unneeded(id, parts)
            .map_err(|source| CheckpointError::Retention { id, source })
    }

    /// Removes every file the newest `retained` complete checkpoints do not
    /// need (themselves and the bases their chains reach). No directory sync
    /// follows: a removal a crash undoes only leaves a file that the next
    /// commit removes again.
    fn remove_unneeded(&mut self, committed: u64, committed_parts: &[PartInfo]) -> io::Result<()> {
        let files: Vec<(String, FileName)> = self
            .storage
            .list()?
            .into_iter()
            .filter_map(|name| match FileName::parse(&name) {
                Some(Ok(parsed)) => Some((name, parsed)),
                _ => None,
            })
            .collect();
        let complete: BTreeSet<u64> = files
            .iter()
            .filter(|(_, f)| f.part.is_none() && !f.temp)
            .map(|(_, f)| f.id)
            .collect();
        let newest = complete.last().copied().unwrap_or(committed);
        let oldest_kept = complete
            .iter()
            .rev()
            .take(self.retained)
            .min()
            .copied()
            .unwrap_or(committed);
        assert!(oldest_kept <= newest);
        let mut kept: Vec<u64> = complete.iter().rev().take(self.retained).copied().collect();
        let pinned = self.pinned.filter(|id| complete.contains(id));
        kept.extend(pinned);
        let bases = self.bases_reached(&kept, committed, committed_parts)?;
        let unneeded = |f: &FileName| {
            (f.id < oldest_kept && !bases.contains(&f.id) && Some(f.id) != pinned)
                // An incomplete checkpoint older than a complete one is never
                // completed.
                || (f.id < newest && !complete.contains(&f.id))
                // Temp files of finished writes are left over from a crash.
                || (f.temp && f.id <= newest)
                // A part beyond the manifest's, from an earlier attempt at the id.
                || (f.id == committed && f.part.is_some_and(|p| p as usize >= committed_parts.len()))
        };
        // Manifests first: a checkpoint half removed by a crash then reads as
        // incomplete rather than corrupt.
        let (manifests, others): (Vec<_>, Vec<_>) = files
            .into_iter()
            .filter(|(_, f)| unneeded(f))
            .partition(|(_, f)| f.part.is_none() && !f.temp);
        for (name, _) in manifests.into_iter().chain(others) {
            self.storage.remove(&name)?;
        }
        Ok(())
    }

    /// Every checkpoint the chains of the parts of `kept` reach. The manifest
    /// of `committed` is `committed_parts`; others are read (one that does
    /// not read is not a checkpoint recovery could use, and reaches nothing).
    fn bases_reached(
        &mut self,
        kept: &[u64],
        committed: u64,
        committed_parts: &[PartInfo],
    ) -> io::Result<BTreeSet<u64>> {
        let mut reached = BTreeSet::new();
        let mut pending: Vec<u64> = kept.to_vec();
        while let Some(id) = pending.pop() {
            let bases: Vec<u64> = if id == committed {
                committed_parts.iter().filter_map(|p| p.base).collect()
            } else {
                match self.read_manifest(id) {
                    Ok(Ok(manifest)) => manifest.parts.iter().filter_map(|p| p.base).collect(),
                    Err(CheckpointError::Io(e)) => return Err(e),
                    Ok(Err(_)) | Err(_) => Vec::new(),
                }
            };
            for base in bases {
                if reached.insert(base) {
                    pending.push(base);
                }
            }
        }
        Ok(reached)
    }

    /// Checkpoint `id`'s manifest, or why it does not read.
    /// A manifest of an older format is `CheckpointError::OlderFormat`: its
    /// job is not to be restarted from scratch by mistake.
    fn read_manifest(&mut self, id: u64) -> Result<Result<Manifest, String>, CheckpointError> {
        let Some(file) = self.storage.read(&manifest_name(id))? else {
            return Ok(Err("no manifest (incomplete)".to_string()));
        };
        Ok(match decode_frame(FileKind::Manifest, &file) {
            Err(FrameError::UnsupportedVersion(found)) if (1..FORMAT_VERSION).contains(&found) => {
                return Err(CheckpointError::OlderFormat { id, found })
            }
            Err(e) => Err(format!("manifest: {e}")),
            Ok(payload) => match Manifest::decode(payload) {
                Err(e) => Err(format!("manifest: {e}")),
                Ok(manifest) if manifest.id != id => {
                    Err(format!("manifest names checkpoint {}", manifest.id))
                }
                Ok(manifest) => Ok(manifest),
            },
        })
    }

    /// The newest checkpoint whose manifest and parts all check out, and why
    /// each newer one was passed over. A valid manifest of another job (a
    /// different `expected_fingerprint`) is `CheckpointError::DifferentJob`:
    /// this directory is not this job's to resume from or to overwrite.
    pub fn latest_complete(&mut self, expected_fingerprint: &str) -> Result<Recovered, CheckpointError> {
        let mut skipped = Vec::new();
        let mut ids = BTreeSet::new();
        let mut next_id = 0;
        for name in self.storage.list()? {
            match FileName::parse(&name) {
                None => {}
                Some(Err(())) => skipped.push(format!("file `{name}`: not a checkpoint file name")),
                Some(Ok(file)) => {
                    next_id = next_id.max(file.id.saturating_add(1));
                    if !file.temp {
                        ids.insert(file.id);
                    }
                }
            }
        }
        for &id in ids.iter().rev() {
            match self.check(id, expected_fingerprint, None)? {
                Ok(parts) => {
                    return Ok(Recovered {
                        checkpoint: Some((id, parts)),
                        skipped,
                        next_id,
                    })
                }
                Err(why) => skipped.push(format!("checkpoint {id}: {why}")),
            }
        }
        Ok(Recovered {
            checkpoint: None,
            skipped,
            next_id,
        })
    }

    /// The job fingerprint checkpoint `id`'s manifest names, if it has a
    /// readable manifest (a replay restores a recovered life's checkpoint
    /// without knowing the job's own spelling of it).
    pub fn fingerprint_of(&mut self, id: u64) -> Result<Result<String, String>, CheckpointError> {
        Ok(self.read_manifest(id)?.map(|manifest| manifest.fingerprint))
    }

    /// The chains of parts `wanted` of checkpoint `id` of the job
    /// `expected_fingerprint`, each checked against its manifest: how a
    /// process of a cluster reads its own shards' parts of the checkpoint
    /// process 0 recovers from.
    pub fn read_parts(
        &mut self,
        id: u64,
        expected_fingerprint: &str,
        wanted: &[u32],
    ) -> Result<Vec<PartChain>, CheckpointError> {
        match self.check(id, expected_fingerprint, Some(wanted))? {
            Ok(parts) => Ok(parts),
            Err(reason) => Err(CheckpointError::Invalid { id, reason }),
        }
    }

    /// Checkpoint `id`'s part chains (all of its parts, or those `wanted`,
    /// in that order) if it is complete and they are sound, or why not.
    fn check(
        &mut self,
        id: u64,
        expected_fingerprint: &str,
        wanted: Option<&[u32]>,
    ) -> Result<Result<Vec<PartChain>, String>, CheckpointError> {
        let manifest = match self.checked_manifest(id, expected_fingerprint)? {
            Ok(manifest) => manifest,
            Err(why) => return Ok(Err(why)),
        };
        let infos: Vec<PartInfo> = match wanted {
            None => manifest.parts.clone(),
            Some(wanted) => {
                let mut infos = Vec::with_capacity(wanted.len());
                for part in wanted {
                    match manifest.parts.iter().find(|info| info.part == *part) {
                        Some(info) => infos.push(*info),
                        None => return Ok(Err(format!("the manifest has no part {part}"))),
                    }
                }
                infos
            }
        };
        let mut chains = Vec::with_capacity(infos.len());
        for info in infos {
            match self.read_chain(info, expected_fingerprint)? {
                Ok(chain) => chains.push(chain),
                Err(why) => return Ok(Err(why)),
            }
        }
        Ok(Ok(chains))
    }

    /// Checkpoint `id`'s manifest if it reads and is of this job.
    fn checked_manifest(
        &mut self,
        id: u64,
        expected_fingerprint: &str,
    ) -> Result<Result<Manifest, String>, CheckpointError> {
        let manifest = match self.read_manifest(id)? {
            Ok(manifest) => manifest,
            Err(why) => return Ok(Err(why)),
        };
        if manifest.fingerprint != expected_fingerprint {
            return Err(CheckpointError::DifferentJob {
                found: manifest.fingerprint,
                expected: expected_fingerprint.to_string(),
            });
        }
        Ok(Ok(manifest))
    }

    /// The part `info` names and, if it is a delta, its base's part before
    /// it, down to a whole part: oldest first.
    fn read_chain(
        &mut self,
        info: PartInfo,
        expected_fingerprint: &str,
    ) -> Result<Result<PartChain, String>, CheckpointError> {
        let (top, part) = (info.id, info.part);
        // Where a link's trouble is: the top checkpoint's own part, or a base.
        let at = |id: u64| match id == top {
            true => format!("part {part}"),
            false => format!("part {part}, in its base checkpoint {id}"),
        };
        let mut chain = Vec::new();
        let mut info = info;
        loop {
            match self.read_checked_part(&info)? {
                Ok(payload) => chain.push(payload),
                Err(why) => return Ok(Err(format!("{}: {why}", at(info.id)))),
            }
            let Some(base) = info.base else { break };
            if chain.len() >= CHAIN_MAX {
                return Ok(Err(format!("part {part}: more than {CHAIN_MAX} deltas")));
            }
            let manifest = match self.checked_manifest(base, expected_fingerprint)? {
                Ok(manifest) => manifest,
                Err(why) => return Ok(Err(format!("{}: {why}", at(base)))),
            };
            match manifest.parts.into_iter().find(|p| p.part == part) {
                Some(base_info) => info = base_info,
                None => return Ok(Err(format!("{}: the manifest has no such part", at(base)))),
            }
        }
        chain.reverse();
        Ok(Ok(chain))
    }

    /// The payload of the part `info` names, if it matches the manifest.
    fn read_checked_part(&mut self, info: &PartInfo) -> Result<Result<Vec<u8>, String>, CheckpointError> {
        let Some(file) = self.storage.read(&part_name(info.id, info.part))? else {
            return Ok(Err("missing".to_string()));
        };
        let payload = match decode_frame(FileKind::Part, &file) {
            Ok(payload) => payload,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if payload.len() as u64 != info.len {
            let why = format!("{} bytes, the manifest says {}", payload.len(), info.len);
            return Ok(Err(why));
        }
        if crc32c::crc32c(payload) != info.crc {
            return Ok(Err("checksum mismatch with the manifest".to_string()));
        }
        Ok(Ok(payload.to_vec()))
    }
}

/// The id of the newest checkpoint with a manifest in `storage` (0 if
/// none), without reading it: how a supervisor sees whether a run made
/// progress since it last restarted.
pub fn newest_manifest_id(storage: &mut impl Storage) -> io::Result<u64> {
    let newest = storage
        .list()?
        .iter()
        .filter_map(|name| FileName::parse(name)?.ok())
        .filter(|file| file.part.is_none() && !file.temp)
        .map(|file| file.id)
        .max();
    Ok(newest.unwrap_or(0))
}

/// Checkpoints grouped by id, for tests and tools that list a directory.
pub fn checkpoint_ids(names: &[String]) -> BTreeMap<u64, Vec<String>> {
    let mut ids: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for name in names {
        if let Some(Ok(file)) = FileName::parse(name) {
            ids.entry(file.id).or_default().push(name.clone());
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DirStorage;
    use proptest::prelude::*;

    const JOB: &str = "app=wordcount layout=2x2 sources=file:in.txt";

    fn store(retained: usize) -> (tempfile::TempDir, CheckpointStore<DirStorage>) {
        let dir = tempfile::tempdir().unwrap();
        let storage = DirStorage::open(dir.path()).unwrap();
        (dir, CheckpointStore::with_retained(storage, retained).unwrap())
    }

    /// Chains of whole parts only.
    fn wholes(parts: Vec<Vec<u8>>) -> Vec<PartChain> {
        parts.into_iter().map(|part| vec![part]).collect()
    }

    fn parts_of(id: u64, count: u32) -> Vec<Vec<u8>> {
        (0..count)
            .map(|p| format!("checkpoint {id} part {p}").into_bytes())
            .collect()
    }

    fn checkpoint(store: &mut CheckpointStore<impl Storage>, id: u64, parts: &[Vec<u8>]) {
        let infos: Vec<PartInfo> = parts
            .iter()
            .enumerate()
            .map(|(p, bytes)| store.write_part(id, p as u32, bytes).unwrap())
            .collect();
        store.commit(id, JOB, &infos).unwrap();
    }

    fn names(store: &mut CheckpointStore<DirStorage>) -> Vec<String> {
        store.storage_mut().list().unwrap()
    }

    #[test]
    fn round_trip() {
        let (_dir, mut store) = store(DEFAULT_RETAINED);
        assert_eq!(store.latest_complete(JOB).unwrap().checkpoint, None);
        checkpoint(&mut store, 1, &parts_of(1, 3));
        checkpoint(&mut store, 2, &[Vec::new(), vec![0; 70_000]]);
        let recovered = store.latest_complete(JOB).unwrap();
        assert_eq!(
            recovered.checkpoint,
            Some((2, wholes(vec![Vec::new(), vec![0; 70_000]])))
        );
        assert!(recovered.skipped.is_empty(), "{:?}", recovered.skipped);
        assert_eq!(recovered.next_id, 3);
    }

    #[test]
    fn the_newest_manifest_is_found_without_reading_it() {
        let (_dir, mut store) = store(3);
        assert_eq!(newest_manifest_id(store.storage_mut()).unwrap(), 0);
        checkpoint(&mut store, 2, &parts_of(2, 2));
        checkpoint(&mut store, 9, &parts_of(9, 2));
        store
            .write_part(10, 0, b"a part of an incomplete checkpoint")
            .unwrap();
        assert_eq!(newest_manifest_id(store.storage_mut()).unwrap(), 9);
    }

    #[test]
    fn a_process_reads_only_its_parts_each_checked() {
        let (_dir, mut store) = store(DEFAULT_RETAINED);
        checkpoint(&mut store, 4, &parts_of(4, 5));
        let parts = store.read_parts(4, JOB, &[3, 1]).unwrap();
        assert_eq!(
            parts,
            wholes(vec![parts_of(4, 5)[3].clone(), parts_of(4, 5)[1].clone()])
        );
        let missing = store.read_parts(4, JOB, &[5]).unwrap_err().to_string();
        assert!(missing.contains("no part 5"), "{missing}");
        assert!(store.read_parts(3, JOB, &[1]).is_err(), "no such checkpoint");
        assert!(matches!(
            store.read_parts(4, "another job", &[1]),
            Err(CheckpointError::DifferentJob { .. })
        ));
        let name = part_name(4, 3);
        let mut file = store.storage_mut().read(&name).unwrap().unwrap();
        *file.last_mut().unwrap() ^= 0x10;
        store.storage_mut().create(&name, &file).unwrap();
        let corrupt = store.read_parts(4, JOB, &[1, 3]).unwrap_err().to_string();
        assert!(corrupt.contains("part 3: checksum mismatch"), "{corrupt}");
        assert_eq!(
            store.read_parts(4, JOB, &[1]).unwrap(),
            wholes(vec![parts_of(4, 5)[1].clone()])
        );
    }

    #[test]
    fn corrupt_newest_part_falls_back_and_says_why() {
        let (_dir, mut store) = store(DEFAULT_RETAINED);
        checkpoint(&mut store, 6, &parts_of(6, 3));
        checkpoint(&mut store, 7, &parts_of(7, 3));
        let name = part_name(7, 2);
        let mut file = store.storage_mut().read(&name).unwrap().unwrap();
        *file.last_mut().unwrap() ^= 0x10;
        store.storage_mut().create(&name, &file).unwrap();
        let recovered = store.latest_complete(JOB).unwrap();
        assert_eq!(recovered.checkpoint, Some((6, wholes(parts_of(6, 3)))));
        assert_eq!(recovered.skipped, vec!["checkpoint 7: part 2: checksum mismatch"]);
        assert_eq!(recovered.next_id, 8);
    }

    #[test]
    fn a_checkpoint_without_manifest_is_skipped() {
        let (_dir, mut store) = store(DEFAULT_RETAINED);
        checkpoint(&mut store, 1, &parts_of(1, 2));
        store.write_part(2, 0, b"never committed").unwrap();
        // A leftover temp file of a crashed write, and files that are not ours.
        store
            .storage_mut()
            .create(&format!("{}.tmp", manifest_name(3)), b"torn")
            .unwrap();
        store.storage_mut().create("notes.txt", b"mine").unwrap();
        store.storage_mut().create("ckpt-garbage", b"?").unwrap();
        let recovered = store.latest_complete(JOB).unwrap();
        assert_eq!(recovered.checkpoint, Some((1, wholes(parts_of(1, 2)))));
        assert_eq!(
            recovered.skipped,
            vec![
                "file `ckpt-garbage`: not a checkpoint file name",
                "checkpoint 2: no manifest (incomplete)",
            ]
        );
        assert_eq!(recovered.next_id, 4);
    }

    /// Checkpoint `id` with part 0 whole and part 1 a delta over `base`.
    fn checkpoint_over(store: &mut CheckpointStore<impl Storage>, id: u64, base: Option<u64>) {
        let infos = vec![
            store.write_part(id, 0, format!("meta {id}").as_bytes()).unwrap(),
            store
                .write_part_over(id, 1, base, format!("state {id}").as_bytes())
                .unwrap(),
        ];
        store.commit(id, JOB, &infos).unwrap();
    }

    fn chain_of(ids: &[u64]) -> PartChain {
        ids.iter().map(|id| format!("state {id}").into_bytes()).collect()
    }

    #[test]
    fn a_delta_reads_back_as_its_chain_and_keeps_its_bases() {
        let (_dir, mut store) = store(2);
        checkpoint_over(&mut store, 1, None);
        checkpoint_over(&mut store, 2, Some(1));
        checkpoint_over(&mut store, 3, Some(2));
        checkpoint_over(&mut store, 4, Some(3));
        let (id, parts) = store.latest_complete(JOB).unwrap().checkpoint.unwrap();
        assert_eq!(id, 4);
        assert_eq!(
            parts[0],
            vec![b"meta 4".to_vec()],
            "a whole part is a chain of one"
        );
        assert_eq!(parts[1], chain_of(&[1, 2, 3, 4]));
        assert_eq!(
            store.read_parts(3, JOB, &[1]).unwrap(),
            vec![chain_of(&[1, 2, 3])]
        );
        // Retaining 2 keeps 3 and 4, and the bases they reach: all of them.
        assert_eq!(checkpoint_ids(&names(&mut store)).len(), 4);
        // A whole part again: the chain before it is no longer needed.
        checkpoint_over(&mut store, 5, None);
        checkpoint_over(&mut store, 6, Some(5));
        let kept: Vec<u64> = checkpoint_ids(&names(&mut store)).into_keys().collect();
        assert_eq!(kept, vec![5, 6]);
        assert_eq!(
            store.latest_complete(JOB).unwrap().checkpoint.unwrap().1[1],
            chain_of(&[5, 6])
        );
        assert!(
            store.write_part_over(7, 1, Some(7), b"x").is_err(),
            "a delta over itself"
        );
        assert!(store.write_part_over(7, 1, Some(0), b"x").is_err());
    }

    #[test]
    fn a_corrupt_base_fails_every_checkpoint_over_it_and_says_where() {
        let (dir, mut store) = store(3);
        checkpoint_over(&mut store, 1, None);
        checkpoint_over(&mut store, 2, None);
        checkpoint_over(&mut store, 3, Some(2));
        checkpoint_over(&mut store, 4, Some(3));
        let base = dir.path().join(part_name(3, 1));
        let mut bytes = std::fs::read(&base).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&base, bytes).unwrap();
        let recovered = store.latest_complete(JOB).unwrap();
        assert_eq!(recovered.checkpoint.unwrap().1[1], chain_of(&[2]));
        assert_eq!(
            recovered.skipped,
            vec![
                "checkpoint 4: part 1, in its base checkpoint 3: checksum mismatch",
                "checkpoint 3: part 1: checksum mismatch",
            ]
        );
        std::fs::remove_file(dir.path().join(manifest_name(2))).unwrap();
        let error = store.read_parts(4, JOB, &[0, 1]).unwrap_err().to_string();
        assert!(
            error.contains("checkpoint 4: part 1, in its base checkpoint 3"),
            "{error}"
        );
    }

    #[test]
    fn a_checkpoint_of_an_older_format_is_refused_not_passed_over() {
        let (dir, mut store) = store(2);
        checkpoint(&mut store, 1, &parts_of(1, 2));
        let manifest = dir.path().join(manifest_name(1));
        let mut bytes = std::fs::read(&manifest).unwrap();
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        std::fs::write(&manifest, &bytes).unwrap();
        let error = store.latest_complete(JOB).unwrap_err();
        assert!(
            matches!(error, CheckpointError::OlderFormat { id: 1, found: 1 }),
            "{error}"
        );
        assert!(error.to_string().contains("remove the directory to start over"));
        // A version no build wrote (a damaged header) is passed over.
        bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
        std::fs::write(&manifest, &bytes).unwrap();
        let recovered = store.latest_complete(JOB).unwrap();
        assert_eq!(recovered.checkpoint, None);
        assert!(
            recovered.skipped[0].contains("format version 99"),
            "{:?}",
            recovered.skipped
        );
    }

    #[test]
    fn retention_keeps_exactly_the_newest_n() {
        for retained in 1..=3 {
            let (_dir, mut store) = store(retained);
            for id in 1..=6 {
                checkpoint(&mut store, id * 10, &parts_of(id * 10, 2));
                // An abandoned attempt and a crashed temp file between commits.
                store.write_part(id * 10 + 1, 0, b"abandoned").unwrap();
                let temp = format!("{}.tmp", part_name(id * 10 + 1, 1));
                store.storage_mut().create(&temp, b"torn").unwrap();
            }
            // The latest abandoned attempt (61) is newer than every complete
            // checkpoint, so it may yet be completed and stays.
            let names = names(&mut store);
            let kept: Vec<u64> = checkpoint_ids(&names).into_keys().collect();
            let mut expected: Vec<u64> = (7 - retained as u64..=6).map(|id| id * 10).collect();
            expected.push(61);
            assert_eq!(kept, expected, "retained {retained}: {names:?}");
            let manifests = names.iter().filter(|n| n.ends_with(".manifest")).count();
            assert_eq!(manifests, retained);
            assert_eq!(names.len(), retained * 3 + 2, "{names:?}");
            let recovered = store.latest_complete(JOB).unwrap();
            assert_eq!(recovered.checkpoint, Some((60, wholes(parts_of(60, 2)))));
        }
        let dir = tempfile::tempdir().unwrap();
        let storage = DirStorage::open(dir.path()).unwrap();
        let error = CheckpointStore::with_retained(storage, 0).err().unwrap();
        assert!(matches!(error, CheckpointError::InvalidRetention(0)));
    }

    #[test]
    fn a_pinned_checkpoint_outlives_retention_and_an_unpinned_one_does_not() {
        let (_dir, mut store) = store(1);
        for id in 1..=3 {
            checkpoint(&mut store, id, &parts_of(id, 2));
        }
        store.pin(3);
        for id in 4..=6 {
            checkpoint(&mut store, id, &parts_of(id, 2));
        }
        let kept: Vec<u64> = checkpoint_ids(&names(&mut store)).into_keys().collect();
        assert_eq!(kept, vec![3, 6], "the pinned one and the newest");
        assert_eq!(store.fingerprint_of(3).unwrap(), Ok(JOB.to_string()));
        assert!(store.fingerprint_of(2).unwrap().is_err(), "removed");
        store.pin(6);
        checkpoint(&mut store, 7, &parts_of(7, 2));
        let kept: Vec<u64> = checkpoint_ids(&names(&mut store)).into_keys().collect();
        assert_eq!(kept, vec![6, 7], "3 is no longer pinned");
    }

    #[test]
    fn a_retry_of_an_id_with_fewer_parts_drops_the_stale_ones() {
        let (_dir, mut store) = store(1);
        store.write_part(5, 0, b"first try").unwrap();
        store.write_part(5, 1, b"first try").unwrap();
        checkpoint(&mut store, 5, &parts_of(5, 1));
        assert_eq!(names(&mut store), vec![part_name(5, 0), manifest_name(5)]);
    }

    #[test]
    fn another_jobs_directory_is_refused() {
        let (_dir, mut store) = store(DEFAULT_RETAINED);
        checkpoint(&mut store, 1, &parts_of(1, 1));
        let error = store.latest_complete("app=doubler").unwrap_err();
        assert!(matches!(&error, CheckpointError::DifferentJob { found, expected }
            if found == JOB && expected == "app=doubler"));
        let text = error.to_string();
        assert!(text.contains("different job"), "{text}");
        assert!(text.contains(JOB) && text.contains("app=doubler"), "{text}");
        assert!(
            text.contains("another --state-dir") && text.contains("remove"),
            "{text}"
        );
    }

    #[test]
    fn a_commit_cannot_mix_parts_of_other_checkpoints() {
        let (_dir, mut store) = store(DEFAULT_RETAINED);
        let a = store.write_part(1, 0, b"a").unwrap();
        let b = store.write_part(2, 1, b"b").unwrap();
        let error = store.commit(2, JOB, &[a, b]).unwrap_err();
        assert!(matches!(error, CheckpointError::Invalid { id: 2, .. }), "{error}");
        let error = store.commit(2, JOB, &[b]).unwrap_err();
        assert!(matches!(error, CheckpointError::Invalid { id: 2, .. }), "{error}");
        assert_eq!(store.latest_complete(JOB).unwrap().checkpoint, None);
    }

    #[test]
    fn a_manifest_renamed_to_another_id_is_not_trusted() {
        let (_dir, mut store) = store(DEFAULT_RETAINED);
        checkpoint(&mut store, 1, &parts_of(1, 1));
        checkpoint(&mut store, 2, &parts_of(2, 1));
        store
            .storage_mut()
            .rename(&manifest_name(1), &manifest_name(3))
            .unwrap();
        store
            .storage_mut()
            .rename(&part_name(1, 0), &part_name(3, 0))
            .unwrap();
        let recovered = store.latest_complete(JOB).unwrap();
        assert_eq!(recovered.checkpoint, Some((2, wholes(parts_of(2, 1)))));
        assert_eq!(
            recovered.skipped,
            vec!["checkpoint 3: manifest names checkpoint 1"]
        );
    }

    #[test]
    fn frame_errors_say_what_is_wrong() {
        let framed = encode_frame(FileKind::Part, b"payload");
        assert_eq!(decode_frame(FileKind::Part, &framed), Ok(&b"payload"[..]));
        assert!(matches!(
            decode_frame(FileKind::Manifest, &framed),
            Err(FrameError::WrongKind { .. })
        ));
        let mut bad = framed.clone();
        bad[0] = b'X';
        assert_eq!(decode_frame(FileKind::Part, &bad), Err(FrameError::BadMagic));
        let mut bad = framed.clone();
        bad[8] = 9;
        assert_eq!(
            decode_frame(FileKind::Part, &bad),
            Err(FrameError::UnsupportedVersion(9))
        );
        let mut long = framed.clone();
        long.push(0);
        assert_eq!(
            decode_frame(FileKind::Part, &long),
            Err(FrameError::Length {
                expected: 7,
                found: 8
            })
        );
    }

    fn manifest_strategy() -> impl Strategy<Value = Manifest> {
        (
            ".{0,40}",
            any::<u64>(),
            proptest::collection::vec((any::<u64>(), any::<u32>(), any::<u64>()), 0..20),
        )
            .prop_map(|(fingerprint, id, parts)| Manifest {
                fingerprint,
                id,
                parts: parts
                    .into_iter()
                    .enumerate()
                    .map(|(p, (len, crc, base))| PartInfo {
                        id,
                        part: p as u32,
                        len,
                        crc,
                        // A base is older than its checkpoint, or none.
                        base: (id > 1 && base % 2 == 0).then(|| 1 + base % (id - 1)),
                    })
                    .collect(),
            })
    }

    proptest! {
        #[test]
        fn every_truncation_of_a_frame_is_rejected(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            manifest in any::<bool>(),
            cut in any::<proptest::sample::Index>(),
        ) {
            let kind = if manifest { FileKind::Manifest } else { FileKind::Part };
            let framed = encode_frame(kind, &payload);
            let cut = cut.index(framed.len());
            prop_assert!(decode_frame(kind, &framed[..cut]).is_err());
            prop_assert_eq!(decode_frame(kind, &framed), Ok(&payload[..]));
        }

        #[test]
        fn every_bit_flip_in_a_frame_is_rejected(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            at in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut framed = encode_frame(FileKind::Part, &payload);
            let at = at.index(framed.len());
            framed[at] ^= 1 << bit;
            prop_assert!(decode_frame(FileKind::Part, &framed).is_err());
        }

        #[test]
        fn manifests_round_trip(manifest in manifest_strategy()) {
            prop_assert_eq!(Manifest::decode(&manifest.encode()), Ok(manifest.clone()));
            let encoded = manifest.encode();
            for cut in 0..encoded.len() {
                prop_assert!(Manifest::decode(&encoded[..cut]).is_err());
            }
        }

        #[test]
        fn manifest_decoding_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Manifest::decode(&bytes);
        }
    }
}
