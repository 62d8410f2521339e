//! What a seed with an audit log must show at its end, besides its output:
//! the chains verify (every checksum and link, each process's head as its
//! writer last had it, so a lost tail shows), the clock-dependent decisions
//! are the ones the log says the logic saw, the log's lineage names every
//! output line where it is (across recoveries too), and a replay of the log
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

/// The output batches the log says stand (`Log::standing_outputs`) are the
/// output: each one's size and checksum are those of the lines it names, and
/// (one life, where no crash can have lost a tail of the log) they cover it
/// from line 1 to its last. A lineage query (`verity audit trace-output N`)
/// relies on that line numbering.
pub(super) fn check_lineage(run: &AuditedRun, output: &[u8]) -> Result<(), String> {
    let (disk, _) = run.finished.as_ref().map_err(|e| format!("audit log: {e}"))?;
    let (log, _) = Log::read(&mut disk.clone()).map_err(|e| format!("audit log: cannot read it: {e}"))?;
    let lives = run.lives;
    let standing = log
        .standing_outputs()
        .map_err(|e| format!("audit lineage ({lives} lives): {e}"))?;
    // Byte offset of the start of each line, and of the end.
    let starts: Vec<usize> = std::iter::once(0)
        .chain(
            output
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == b'\n')
                .map(|(at, _)| at + 1),
        )
        .collect();
    let lines = starts.len() as u64 - 1;
    let mut covered = 0;
    for batch in &standing {
        if batch.end_line() > lines + 1 {
            return Err(format!(
                "audit lineage ({lives} lives): a batch names output lines {}..{} but the output has {lines}",
                batch.first_line,
                batch.end_line()
            ));
        }
        let bytes = &output[starts[batch.first_line as usize - 1]..starts[batch.end_line() as usize - 1]];
        if bytes.len() as u64 != batch.bytes || crc32c::crc32c(bytes) != batch.crc32c {
            return Err(format!(
                "audit lineage ({lives} lives): the batch of output lines {}..{} ({} bytes) is not what the output holds there ({} bytes)",
                batch.first_line,
                batch.end_line(),
                batch.bytes,
                bytes.len()
            ));
        }
        covered += batch.lines;
    }
    match lives > 1 || covered == lines {
        true => Ok(()),
        false => Err(format!(
            "audit lineage: the log names {covered} output lines, the output has {lines}"
        )),
    }
}

/// Every time the log holds (record times and the readings logic used) is
/// one of the simulated clocks': a process that read the OS clock instead
/// (a clock not injected) would make decisions no seed can repeat.
pub(super) fn check_clock_readings(run: &AuditedRun) -> Result<(), String> {
    use verity_audit::Record;
    // Simulated time of all lives, with restarts, stays far below a day.
    const SIM_CLOCK_SPAN_MAX_US: u64 = 24 * 3600 * 1_000_000;
    let epoch = super::world::SIM_EPOCH_UTC_US;
    let (disk, _) = run.finished.as_ref().map_err(|e| format!("audit log: {e}"))?;
    let (log, _) = Log::read(&mut disk.clone()).map_err(|e| format!("audit log: cannot read it: {e}"))?;
    for record in log.records() {
        let reading = match record {
            Record::Applied(applied) => applied.clock_us,
            _ => None,
        };
        for at in record.utc_us().into_iter().chain(reading) {
            if !(epoch..epoch + SIM_CLOCK_SPAN_MAX_US).contains(&at) {
                return Err(format!(
                    "audit log: a {} record holds the time {at} µs, which no simulated clock reads (they start at {epoch}): a clock that is not the injected one",
                    record.kind_name()
                ));
            }
        }
    }
    Ok(())
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

/// A replay of the log's newest life (a recovered one from the checkpoint
/// it began from) gives that life's output byte for byte: the output's
/// lines after the checkpoint's.
pub(super) fn check_replay(
    config: &SimConfig,
    run: &AuditedRun,
    input: AppInput,
    options: AppOptions,
    output: &[u8],
) -> Result<(), String> {
    let (disk, _) = run.finished.as_ref().map_err(|e| format!("audit log: {e}"))?;
    let mut recorded = RecordedRun::read(&mut disk.clone()).map_err(|e| format!("audit replay: {e}"))?;
    recorded
        .restore_from(run.state_dir.clone())
        .map_err(|e| format!("audit replay ({} lives): {e}", run.lives))?;
    let lines_before = recorded.output_lines_before();
    let life_output = match lines_before {
        0 => output,
        n => match output
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(n as usize - 1)
        {
            Some((end, _)) => &output[end + 1..],
            None => {
                return Err(format!(
                    "the life recovered after output line {n}; the output has fewer"
                ))
            }
        },
    };
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
    if replayed != life_output {
        let same = replayed
            .iter()
            .zip(life_output)
            .take_while(|(a, b)| a == b)
            .count();
        return Err(format!(
            "audit replay gave {} bytes, the run's life wrote {} after output line {lines_before}; \
             they differ from byte {same}",
            replayed.len(),
            life_output.len()
        ));
    }
    Ok(())
}
