//! What a seed with an audit log must show at its end, besides its output:
//! the chains verify (every checksum and link, each process's head as its
//! writer last had it, so a lost tail shows), the clock-dependent decisions
//! are the ones the log says the logic saw, and a replay of the log
//! reproduces the output byte for byte.

use super::{checks, AuditedRun, SimConfig};
use crate::audited::verify_market_spread_with_audit;
use verity_apps::{AppInput, AppOptions};
use verity_audit::query::Log;
use verity_core::replay::RecordedRun;

/// The chains on the audit disk verify against the heads the writers
/// ended with.
pub(super) fn check_chains(run: &AuditedRun) -> Result<(), String> {
    let (disk, heads) = run.finished.as_ref().map_err(|e| format!("audit log: {e}"))?;
    let report = verity_audit::verify(&mut disk.clone(), heads, |_, _| {})
        .map_err(|e| format!("audit log: cannot read it back: {e}"))?;
    match report.problems.first() {
        Some(problem) => Err(format!("audit log ({:?}) does not verify: {problem}", run.plan)),
        None => Ok(()),
    }
}

/// market-spread with the stale-quote rule: every decision as the log says
/// the logic saw the quote in force and the clock (the oracle cannot know
/// either). Only the newest life's log is read: such seeds do not crash.
pub(super) fn check_market_spread(
    run: &AuditedRun,
    streams: &[checks::Stream],
    output: &[u8],
    max_quote_age_ms: u64,
) -> Result<(), String> {
    let (disk, _) = run.finished.as_ref().map_err(|e| format!("audit log: {e}"))?;
    let (log, _) = Log::read(&mut disk.clone()).map_err(|e| format!("audit log: cannot read it: {e}"))?;
    let life: Vec<_> = log.newest_life().into_iter().map(|(_, record)| record).collect();
    let inputs: Vec<&[u8]> = streams.iter().map(|s| &s.data[..]).collect();
    let report = verify_market_spread_with_audit(&inputs, output, &life, Some(max_quote_age_ms))?;
    match report.is_ok() {
        true => Ok(()),
        false => Err(format!(
            "market-spread (--max-quote-age-ms {max_quote_age_ms}) differs from what its audit log says the logic saw:\n{report}"
        )),
    }
}

/// A replay of the log (one life: a recovered one is not replayable yet)
/// gives the run's output byte for byte.
pub(super) fn check_replay(
    config: &SimConfig,
    run: &AuditedRun,
    input: AppInput,
    options: AppOptions,
    output: &[u8],
) -> Result<(), String> {
    let (disk, _) = run.finished.as_ref().map_err(|e| format!("audit log: {e}"))?;
    let recorded = RecordedRun::read(&mut disk.clone()).map_err(|e| format!("audit replay: {e}"))?;
    let mut replayed = Vec::new();
    let replay = verity_apps::Replay {
        run: recorded,
        out: &mut replayed,
    };
    let report = verity_apps::drive_app(config.app, input, options, replay)
        .map_err(|e| format!("audit replay: {e}"))?
        .map_err(|e| format!("audit replay: {e}"))?;
    if let Some(divergence) = report.divergence {
        return Err(format!(
            "audit replay diverged after {} identical lines: {divergence}",
            report.lines
        ));
    }
    if replayed != output {
        let same = replayed.iter().zip(output).take_while(|(a, b)| a == b).count();
        return Err(format!(
            "audit replay gave {} bytes, the run wrote {}; they differ from byte {same}",
            replayed.len(),
            output.len()
        ));
    }
    Ok(())
}
