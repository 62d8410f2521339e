//! A reader thread: the shared `ReadLoop` decides (see `crate::source`),
//! this loop gives it the stop flag and what the output thread publishes
//! (`ReaderProgress`), and sleeps while it waits for the final commit.

use crate::source::{Dealer, OpenSource, ReadStep, ReaderProgress, STOP_POLL_INTERVAL};
use std::sync::atomic::{AtomicBool, Ordering};

/// Reads `source` to its end, dealing its chunks (the partitions' chunks take
/// turns), and the barriers of the checkpoints `requested` asks for between
/// them. Returns when the source ends, fails, or `stop` is set. An idle read
/// (the reader waited for data and none came) only gives `stop` and
/// `requested` a look.
pub fn pump(source: OpenSource, stop: &AtomicBool, progress: &ReaderProgress, mut dealer: Dealer<'_>) {
    let mut reading = source.into_read_loop();
    let outcome = loop {
        if let Err(e) = reading.commit_completed(&mut dealer, progress.committed.load(Ordering::Relaxed)) {
            break Err(e);
        }
        let stopping = stop.load(Ordering::Relaxed);
        match reading.turn(&mut dealer, stopping, progress.requested.load(Ordering::Relaxed)) {
            Ok(ReadStep::Dealt | ReadStep::Idle) => {}
            Ok(ReadStep::Ended | ReadStep::ShardsGone) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let end = dealer.cut();
    let failed = outcome.is_err();
    dealer.finish(outcome.err().map(|e| e.to_string()));
    // The readers stay until the run's output is final: a source that acks
    // its upstream on commit acks the rest then (or never, if the run failed).
    while !reading.after_end(&end, failed, progress.committed.load(Ordering::Relaxed)) {
        std::thread::sleep(STOP_POLL_INTERVAL);
    }
}
