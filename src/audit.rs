//! `verity audit …`: the command-line face of `verity_audit`'s checks and queries.

use crate::cli::AuditCommand;
use anyhow::{bail, Context, Result};
use std::path::Path;
use verity_audit::query::{parse_digest, summarize};
use verity_audit::verify;
use verity_state::storage::DirStorage;

/// Opens an existing audit dir (never creates one: a typo must not read as
/// an empty, valid log).
pub fn open(dir: &Path) -> Result<DirStorage> {
    if !dir.is_dir() {
        bail!("{} is not an audit directory (no such directory)", dir.display());
    }
    let mut storage = DirStorage::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    if verity_audit::segment::list_segments(&mut storage)?.is_empty() {
        bail!(
            "{} holds no audit segments (p<process>-<index>.seg)",
            dir.display()
        );
    }
    Ok(storage)
}

/// Writes a report to stdout; a reader that went away (`| head`) is not an error.
pub fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

pub fn execute(command: AuditCommand) -> Result<i32> {
    match command {
        AuditCommand::Verify { dir, digest } => {
            let digests = match &digest {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    parse_digest(&text).map_err(anyhow::Error::msg)?
                }
                None => Vec::new(),
            };
            let report = verify(&mut open(&dir)?, &digests, |_, _| {})?;
            for note in &report.torn_tails {
                eprintln!("note: {note}");
            }
            if let Some(problem) = report.problems.first() {
                eprintln!("verity audit verify: {}: FAILED: {problem}", dir.display());
                for more in &report.problems[1..] {
                    eprintln!("  also: {more}");
                }
                return Ok(1);
            }
            eprintln!(
                "verity audit verify: {}: OK: {} segments, {} records, every checksum and link of {} chain{} checked{}",
                dir.display(),
                report.segments,
                report.records,
                report.heads.len(),
                if report.heads.len() == 1 { "" } else { "s" },
                if digest.is_some() { ", and the saved digest is in the log" } else { "" }
            );
            Ok(0)
        }
        AuditCommand::Digest { dir } => {
            let report = verify(&mut open(&dir)?, &[], |_, _| {})?;
            if let Some(problem) = report.problems.first() {
                bail!("the log does not verify, so it has no digest: {problem}");
            }
            let heads: String = report.heads.iter().map(|h| format!("{h}\n")).collect();
            print_stdout(&heads)?;
            Ok(0)
        }
        AuditCommand::Replay { .. } | AuditCommand::Trace { .. } => {
            unreachable!("`verity audit replay` and `trace` run in cli.rs, which knows the run's flags")
        }
        AuditCommand::Errors { dir } => {
            let (log, report) = verity_audit::query::Log::read(&mut open(&dir)?)?;
            let (count, listing) = log.errors();
            print_stdout(&listing)?;
            eprintln!("verity audit errors: {count} failed records");
            if let Some(problem) = report.problems.first() {
                eprintln!("warning: the log does not verify past {problem}");
                return Ok(1);
            }
            Ok(0)
        }
        AuditCommand::Summary { dir } => {
            let summary = summarize(&mut open(&dir)?)?;
            print_stdout(&summary.to_string())?;
            Ok(if summary.report.is_ok() { 0 } else { 1 })
        }
    }
}
