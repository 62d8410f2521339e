//! Segment files: the audit log on disk, and the checks that prove it whole.
//!
//! Each process writes its own chain of segments, `p<process>-<index>.seg`
//! (both zero-padded, so names sort in order), into the audit directory.
//!
//! ```text
//! header: "VRTYAUD1" | format u32 | process u32 | index u64
//!         | prev_valid_bytes u64 | prev_head [32] | records_before u64
//!         | crc32c u32 (of the above)
//! record: len u32 | crc32c u32 (of the body) | body (len bytes; record.rs)
//! ```
//!
//! Every record is hash-chained: a segment's chain starts at
//! `SHA-256(prev_head || header)`, and each record moves it on to
//! `SHA-256(head || crc || body)`. The next segment's header holds the head
//! its predecessor ended at and how many of its bytes that covers, so a
//! changed, removed or reordered record anywhere breaks a link (a CRC alone
//! would only catch accidents: anyone can recompute one). The newest head is
//! the log's *digest*; kept elsewhere, it makes truncation of the newest
//! segment detectable too.
//!
//! A crash can leave the newest segment with a torn tail (records appended
//! but not synced). A restarted writer continues the chain in a new segment
//! from the last whole record, and records in the header how far the old one
//! was valid, so `verify` reports the torn tail as what a crash left, not as
//! tampering. Segments are append-only and never rewritten.

use crate::codec::{put_u32_le, put_u64_le, DecodeError, Reader};
use crate::record::Record;
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io;
use verity_state::storage::Storage;

pub const MAGIC: &[u8; 8] = b"VRTYAUD1";
/// The segment format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 8 + 4 + 4 + 8 + 8 + 32 + 8 + 4;
/// A record's frame before its body: length and CRC.
pub const FRAME_HEADER_BYTES: usize = 8;
/// The largest record body: far above any record verity writes (a batch's
/// lineage is a few KiB), low enough that a corrupt length is not an
/// allocation of gigabytes.
pub const RECORD_MAX_BYTES: usize = 16 << 20;

/// A chain head: SHA-256.
pub type Hash = [u8; 32];

pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_hex(text: &str) -> Option<Hash> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(hash)
}

pub fn segment_name(process: u32, index: u64) -> String {
    format!("p{process:05}-{index:010}.seg")
}

/// The (process, index) a segment's name says, if it is one.
pub fn parse_segment_name(name: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix('p')?.strip_suffix(".seg")?;
    let (process, index) = rest.split_once('-')?;
    if process.len() != 5 || index.len() != 10 {
        return None;
    }
    Some((process.parse().ok()?, index.parse().ok()?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub process: u32,
    pub index: u64,
    /// How many bytes of the previous segment the chain covers (0 for the first).
    pub prev_valid_bytes: u64,
    /// The chain head the previous segment ended at (zeros for the first).
    pub prev_head: Hash,
    /// Records of the process's chain before this segment.
    pub records_before: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES);
        out.extend_from_slice(MAGIC);
        put_u32_le(&mut out, FORMAT_VERSION);
        put_u32_le(&mut out, self.process);
        put_u64_le(&mut out, self.index);
        put_u64_le(&mut out, self.prev_valid_bytes);
        out.extend_from_slice(&self.prev_head);
        put_u64_le(&mut out, self.records_before);
        let crc = crc32c::crc32c(&out);
        put_u32_le(&mut out, crc);
        debug_assert_eq!(out.len(), HEADER_BYTES);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, DecodeError> {
        let mut input = Reader::new(bytes);
        if input.take(8)? != MAGIC {
            return Err(DecodeError::Invalid("segment magic (not an audit segment)"));
        }
        if input.u32_le()? != FORMAT_VERSION {
            return Err(DecodeError::Invalid("segment format version"));
        }
        let header = SegmentHeader {
            process: input.u32_le()?,
            index: input.u64_le()?,
            prev_valid_bytes: input.u64_le()?,
            prev_head: input.take(32)?.try_into().expect("32 bytes"),
            records_before: input.u64_le()?,
        };
        let crc = input.u32_le()?;
        if crc != crc32c::crc32c(&bytes[..HEADER_BYTES - 4]) {
            return Err(DecodeError::Invalid("segment header checksum"));
        }
        Ok(header)
    }

    /// The chain head before the segment's first record.
    pub fn chain_start(&self) -> Hash {
        let mut hasher = Sha256::new();
        hasher.update(self.prev_head);
        hasher.update(self.encode());
        hasher.finalize().into()
    }
}

/// Moves a chain head over one record.
pub fn chain(head: &Hash, crc: u32, body: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(head);
    hasher.update(crc.to_le_bytes());
    hasher.update(body);
    hasher.finalize().into()
}

/// Appends one framed record.
pub fn frame(out: &mut Vec<u8>, body: &[u8]) -> u32 {
    assert!(
        body.len() <= RECORD_MAX_BYTES,
        "audit record of {} bytes",
        body.len()
    );
    let crc = crc32c::crc32c(body);
    put_u32_le(out, body.len() as u32);
    put_u32_le(out, crc);
    out.extend_from_slice(body);
    crc
}

/// Why a segment's records stop where they do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEnd {
    /// At the end of the file.
    Clean,
    /// Bytes that do not frame a record follow (a crash's torn tail, or damage).
    Torn { at: u64, why: String },
}

/// One segment read back: its header, its whole records with where each
/// starts, and the chain head after each.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    pub header: SegmentHeader,
    /// (offset of its frame, its body, the chain head after it).
    pub records: Vec<(u64, Vec<u8>, Hash)>,
    /// Bytes of whole records, header included.
    pub valid_bytes: u64,
    pub total_bytes: u64,
    pub end: SegmentEnd,
}

impl SegmentScan {
    pub fn head(&self) -> Hash {
        self.records
            .last()
            .map_or_else(|| self.header.chain_start(), |(_, _, head)| *head)
    }
}

/// Reads a segment's header and every whole record after it.
pub fn scan_segment(bytes: &[u8]) -> Result<SegmentScan, DecodeError> {
    if bytes.len() < HEADER_BYTES {
        return Err(DecodeError::Short);
    }
    let header = SegmentHeader::decode(&bytes[..HEADER_BYTES])?;
    let mut head = header.chain_start();
    let mut records = Vec::new();
    let mut at = HEADER_BYTES;
    let end = loop {
        if at == bytes.len() {
            break SegmentEnd::Clean;
        }
        let torn = |why: &str| SegmentEnd::Torn {
            at: at as u64,
            why: why.to_string(),
        };
        if bytes.len() - at < FRAME_HEADER_BYTES {
            break torn("a frame header cut short");
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if len > RECORD_MAX_BYTES {
            break torn("a record length beyond the limit");
        }
        let body_at = at + FRAME_HEADER_BYTES;
        if bytes.len() - body_at < len {
            break torn("a record cut short");
        }
        let body = &bytes[body_at..body_at + len];
        if crc32c::crc32c(body) != crc {
            break torn("a record whose checksum does not match");
        }
        head = chain(&head, crc, body);
        records.push((at as u64, body.to_vec(), head));
        at = body_at + len;
    };
    Ok(SegmentScan {
        header,
        records,
        valid_bytes: at as u64,
        total_bytes: bytes.len() as u64,
        end,
    })
}

/// Where a process's chain stands: for the digest and for a writer that
/// continues it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub process: u32,
    /// The newest segment's index.
    pub segment: u64,
    /// Whole records in the chain.
    pub records: u64,
    pub head: Hash,
}

impl fmt::Display for ChainHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "process {} records {} head {}",
            self.process,
            self.records,
            hex(&self.head)
        )
    }
}

impl ChainHead {
    /// Parses a line of `verity audit digest`.
    pub fn parse(line: &str) -> Option<ChainHead> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["process", process, "records", records, "head", head] => Some(ChainHead {
                process: process.parse().ok()?,
                segment: 0,
                records: records.parse().ok()?,
                head: parse_hex(head)?,
            }),
            _ => None,
        }
    }
}

/// A problem `verify` found. The first one of a process ends its check:
/// nothing after a broken link can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub process: u32,
    pub segment: String,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.segment, self.what)
    }
}

/// What `verify` found, per process.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub heads: Vec<ChainHead>,
    pub segments: u64,
    pub records: u64,
    /// Torn tails a restart left behind (what a crash costs), as notes.
    pub torn_tails: Vec<String>,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The segment names in `storage`, by process then index.
pub fn list_segments(storage: &mut dyn Storage) -> io::Result<Vec<(u32, u64, String)>> {
    let mut segments: Vec<(u32, u64, String)> = storage
        .list()?
        .into_iter()
        .filter_map(|name| parse_segment_name(&name).map(|(p, i)| (p, i, name)))
        .collect();
    segments.sort();
    Ok(segments)
}

/// Reads every segment of every process, checking each record's checksum
/// and every link of each chain; with `digests`, also that each chain passes
/// through the saved head at the saved record count (which catches a log cut
/// back to before it). Calls `each` with every record of a valid prefix.
pub fn verify(
    storage: &mut dyn Storage,
    digests: &[ChainHead],
    mut each: impl FnMut(u32, &[u8]),
) -> io::Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let segments = list_segments(storage)?;
    let mut processes: Vec<u32> = segments.iter().map(|(p, _, _)| *p).collect();
    processes.dedup();
    for digest in digests {
        if !processes.contains(&digest.process) {
            report.problems.push(Problem {
                process: digest.process,
                segment: format!("process {}", digest.process),
                what: format!("no segments, but the saved digest has {} records", digest.records),
            });
        }
    }
    for process in processes {
        let names: Vec<(u64, String)> = segments
            .iter()
            .filter(|(p, _, _)| *p == process)
            .map(|(_, i, n)| (*i, n.clone()))
            .collect();
        let digest = digests.iter().find(|d| d.process == process);
        verify_process(storage, process, &names, digest, &mut report, &mut each)?;
    }
    Ok(report)
}

fn verify_process(
    storage: &mut dyn Storage,
    process: u32,
    names: &[(u64, String)],
    digest: Option<&ChainHead>,
    report: &mut VerifyReport,
    each: &mut impl FnMut(u32, &[u8]),
) -> io::Result<()> {
    let mut problem = |segment: &str, what: String| {
        report.problems.push(Problem {
            process,
            segment: segment.to_string(),
            what,
        })
    };
    let mut previous: Option<(String, SegmentScan)> = None;
    let mut records = 0u64;
    let mut digest_checked = false;
    for (expected, (index, name)) in names.iter().enumerate() {
        if *index != expected as u64 {
            let missing = segment_name(process, expected as u64);
            problem(&missing, "missing (the chain has a gap here)".to_string());
            return Ok(());
        }
        let bytes = storage.read(name)?.unwrap_or_default();
        let scan = match scan_segment(&bytes) {
            Ok(scan) => scan,
            Err(e) => {
                problem(name, format!("header does not read: {e}"));
                return Ok(());
            }
        };
        if scan.header.process != process || scan.header.index != *index {
            problem(
                name,
                "header names another segment (renamed or copied)".to_string(),
            );
            return Ok(());
        }
        match &previous {
            None if scan.header.prev_head != [0; 32]
                || scan.header.prev_valid_bytes != 0
                || scan.header.records_before != 0 =>
            {
                problem(
                    name,
                    "the first segment continues one that is not here".to_string(),
                );
                return Ok(());
            }
            Some((prev_name, prev)) => {
                if scan.header.prev_valid_bytes != prev.valid_bytes {
                    problem(
                        prev_name,
                        format!(
                            "{} bytes of whole records, but {name} continues it after {} (records removed or changed)",
                            prev.valid_bytes, scan.header.prev_valid_bytes
                        ),
                    );
                    return Ok(());
                }
                if scan.header.prev_head != prev.head() || scan.header.records_before != records {
                    problem(
                        prev_name,
                        format!("its chain does not lead to {name} (a record was changed)"),
                    );
                    return Ok(());
                }
                if let SegmentEnd::Torn { at, why } = &prev.end {
                    report.torn_tails.push(format!(
                        "{prev_name}: {} bytes after byte {at} left by a crash ({why})",
                        prev.total_bytes - at
                    ));
                }
            }
            None => {}
        }
        report.segments += 1;
        for (number, (_, body, head)) in scan.records.iter().enumerate() {
            if let Err(e) = Record::decode(body) {
                problem(name, format!("record {} does not decode: {e}", number + 1));
                return Ok(());
            }
            records += 1;
            if let Some(digest) = digest {
                if records == digest.records {
                    digest_checked = true;
                    if *head != digest.head {
                        problem(
                            name,
                            format!("record {} differs from the saved digest", number + 1),
                        );
                        return Ok(());
                    }
                }
            }
            each(process, body);
        }
        previous = Some((name.clone(), scan));
    }
    let Some((name, last)) = previous else {
        return Ok(());
    };
    if let SegmentEnd::Torn { at, why } = &last.end {
        problem(
            &name,
            format!(
                "{why} at byte {at} of {} (damage, or a crash no restart has continued from)",
                last.total_bytes
            ),
        );
        return Ok(());
    }
    if let Some(digest) = digest {
        if !digest_checked && digest.records > 0 {
            problem(
                &name,
                format!(
                    "the log holds {records} records, the saved digest {} (the log was cut back)",
                    digest.records
                ),
            );
            return Ok(());
        }
    }
    report.records += records;
    report.heads.push(ChainHead {
        process,
        segment: names.last().map_or(0, |(i, _)| *i),
        records,
        head: last.head(),
    });
    Ok(())
}

/// Where a writer continues a process's chain: the next segment's header,
/// after syncing the newest segment it vouches for. Reads only the newest
/// segment (the rest was checked when it was written
/// and is `verify`'s business).
pub fn continue_chain(storage: &mut dyn Storage, process: u32) -> io::Result<(SegmentHeader, u64)> {
    let newest = list_segments(storage)?
        .into_iter()
        .rfind(|(p, _, _)| *p == process);
    let Some((_, index, name)) = newest else {
        let first = SegmentHeader {
            process,
            index: 0,
            prev_valid_bytes: 0,
            prev_head: [0; 32],
            records_before: 0,
        };
        return Ok((first, 0));
    };
    let bytes = storage.read(&name)?.unwrap_or_default();
    let scan = scan_segment(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the audit segment {name} does not read ({e}); check it with `verity audit verify`"),
        )
    })?;
    // The new header vouches for these bytes: they must outlive a power
    // loss first. (After a process crash they may still be only in the
    // page cache: its writer never synced them, by policy or by dying.)
    storage.sync_file(&name)?;
    let header = SegmentHeader {
        process,
        index: index + 1,
        prev_valid_bytes: scan.valid_bytes,
        prev_head: scan.head(),
        records_before: scan.header.records_before + scan.records.len() as u64,
    };
    Ok((header, header.records_before))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Checkpoint, Record};
    use crate::writer::{FsyncPolicy, SegmentWriter, WriterLimits};
    use verity_state::storage::DirStorage;

    /// A log of `records` checkpoint records in small segments; returns its
    /// dir and the segment names.
    fn log(records: u64) -> (tempfile::TempDir, Vec<String>, ChainHead) {
        let dir = tempfile::tempdir().unwrap();
        let limits = WriterLimits {
            segment_max_bytes: 300,
            fsync: FsyncPolicy::EveryBatch,
        };
        let mut writer =
            SegmentWriter::open(Box::new(DirStorage::open(dir.path()).unwrap()), 0, limits).unwrap();
        for n in 0..records {
            let mut body = Vec::new();
            Record::Checkpoint(Checkpoint {
                utc_us: 1_000_000 + n,
                checkpoint: n,
                store_id: n,
                bytes: 4096,
                duration_us: 77,
            })
            .encode(&mut body);
            writer.push(&body).unwrap();
            writer.write().unwrap();
        }
        let head = writer.head();
        drop(writer);
        let names = list_segments(&mut DirStorage::open(dir.path()).unwrap())
            .unwrap()
            .into_iter()
            .map(|(_, _, n)| n)
            .collect();
        (dir, names, head)
    }

    fn check(dir: &tempfile::TempDir, digests: &[ChainHead]) -> VerifyReport {
        verify(&mut DirStorage::open(dir.path()).unwrap(), digests, |_, _| {}).unwrap()
    }

    fn edit(dir: &tempfile::TempDir, name: &str, change: impl FnOnce(&mut Vec<u8>)) {
        let path = dir.path().join(name);
        let mut bytes = std::fs::read(&path).unwrap();
        change(&mut bytes);
        std::fs::write(&path, bytes).unwrap();
    }

    fn problem(report: &VerifyReport) -> String {
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        report.problems[0].to_string()
    }

    #[test]
    fn an_untouched_log_verifies_and_matches_its_digest() {
        let (dir, names, head) = log(40);
        assert!(names.len() >= 4, "{names:?}");
        let report = check(&dir, &[head]);
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.records, 40);
        assert_eq!(
            report.heads,
            vec![ChainHead {
                segment: head.segment,
                ..head
            }]
        );
        let line = head.to_string();
        assert_eq!(
            ChainHead::parse(&line).map(|h| (h.records, h.head)),
            Some((40, head.head))
        );
    }

    #[test]
    fn a_flipped_byte_is_caught_in_any_segment() {
        for which in [0, 1, usize::MAX] {
            let (dir, names, _) = log(40);
            let name = &names[which.min(names.len() - 1)];
            edit(&dir, name, |bytes| {
                let at = HEADER_BYTES + FRAME_HEADER_BYTES + 3;
                bytes[at] ^= 0x10;
            });
            let found = problem(&check(&dir, &[]));
            assert!(found.starts_with(name.as_str()), "{found}");
            assert!(
                found.contains("checksum") || found.contains("removed or changed"),
                "{found}"
            );
        }
    }

    #[test]
    fn a_forged_record_with_a_fixed_checksum_breaks_the_chain() {
        let (dir, names, head) = log(40);
        let forge = |bytes: &mut Vec<u8>| {
            let body_at = HEADER_BYTES + FRAME_HEADER_BYTES;
            let len = u32::from_le_bytes(bytes[HEADER_BYTES..HEADER_BYTES + 4].try_into().unwrap()) as usize;
            bytes[body_at + 2] ^= 0x01;
            let crc = crc32c::crc32c(&bytes[body_at..body_at + len]);
            bytes[HEADER_BYTES + 4..HEADER_BYTES + 8].copy_from_slice(&crc.to_le_bytes());
        };
        edit(&dir, &names[1], forge);
        let found = problem(&check(&dir, &[head]));
        assert!(found.contains(&names[1]) && found.contains("chain"), "{found}");
    }

    #[test]
    fn a_forged_newest_record_is_caught_by_the_digest() {
        let (dir, names, head) = log(40);
        edit(&dir, names.last().unwrap(), |bytes| {
            let body_at = HEADER_BYTES + FRAME_HEADER_BYTES;
            let len = u32::from_le_bytes(bytes[HEADER_BYTES..HEADER_BYTES + 4].try_into().unwrap()) as usize;
            bytes[body_at + 2] ^= 0x01;
            let crc = crc32c::crc32c(&bytes[body_at..body_at + len]);
            bytes[HEADER_BYTES + 4..HEADER_BYTES + 8].copy_from_slice(&crc.to_le_bytes());
        });
        assert!(
            check(&dir, &[]).is_ok(),
            "without a digest the newest segment is not anchored"
        );
        let found = problem(&check(&dir, &[head]));
        assert!(found.contains("saved digest"), "{found}");
    }

    #[test]
    fn a_deleted_segment_is_caught() {
        let (dir, names, head) = log(40);
        std::fs::remove_file(dir.path().join(&names[1])).unwrap();
        let found = problem(&check(&dir, &[]));
        assert!(
            found.starts_with(&names[1]) && found.contains("missing"),
            "{found}"
        );
        // The newest one: only the digest knows it was there.
        let (dir, names, _) = log(40);
        std::fs::remove_file(dir.path().join(names.last().unwrap())).unwrap();
        assert!(check(&dir, &[]).is_ok());
        let found = problem(&check(&dir, &[head]));
        assert!(found.contains("cut back"), "{found}");
    }

    #[test]
    fn a_truncated_tail_is_caught() {
        let (dir, names, head) = log(40);
        edit(&dir, names.last().unwrap(), |bytes| {
            bytes.truncate(bytes.len() - 3)
        });
        let found = problem(&check(&dir, &[]));
        assert!(found.contains("cut short"), "{found}");
        // Cut at a record boundary, it reads as a shorter log: the digest catches it.
        let (dir, names, _) = log(40);
        let last = names.last().unwrap();
        let scan = scan_segment(&std::fs::read(dir.path().join(last)).unwrap()).unwrap();
        let cut = scan.records.last().unwrap().0 as usize;
        edit(&dir, last, |bytes| bytes.truncate(cut));
        assert!(check(&dir, &[]).is_ok());
        let found = problem(&check(&dir, &[head]));
        assert!(found.contains("cut back"), "{found}");
    }

    #[test]
    fn a_crash_tail_continued_by_a_restart_is_a_note_not_a_problem() {
        let (dir, names, _) = log(10);
        edit(&dir, names.last().unwrap(), |bytes| {
            bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2])
        });
        let before = check(&dir, &[]);
        assert!(!before.is_ok(), "an uncontinued torn tail is reported");
        let mut writer = SegmentWriter::open(
            Box::new(DirStorage::open(dir.path()).unwrap()),
            0,
            WriterLimits::default(),
        )
        .unwrap();
        writer.push(&[8, 0, 1, 2, 3, 4]).unwrap_or(());
        drop(writer);
        let after = check(&dir, &[]);
        assert!(after.is_ok(), "{:?}", after.problems);
        assert_eq!(after.torn_tails.len(), 1, "{:?}", after.torn_tails);
    }

    #[test]
    fn renamed_and_foreign_files_are_refused() {
        let (dir, names, _) = log(40);
        std::fs::copy(
            dir.path().join(&names[0]),
            dir.path().join(segment_name(0, names.len() as u64)),
        )
        .unwrap();
        let found = problem(&check(&dir, &[]));
        assert!(found.contains("another segment"), "{found}");
        let (dir, names, _) = log(5);
        edit(&dir, &names[0], |bytes| bytes[0] = b'X');
        assert!(problem(&check(&dir, &[])).contains("magic"));
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_segment_name(&segment_name(7, 12)), Some((7, 12)));
        for bad in ["p1-1.seg", "x00001-0000000001.seg", "p00001-0000000001.tmp"] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
        let hash = [0xab; 32];
        assert_eq!(parse_hex(&hex(&hash)), Some(hash));
        assert_eq!(parse_hex("zz"), None);
    }
}
