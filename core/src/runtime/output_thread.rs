//! The output thread: the shared `OutputLoop` decides (see `crate::sink`),
//! this loop gives it the messages of a channel and the OS clock, does the
//! waiting, and logs how long the checkpoints took.

use super::gauges::OutputGauges;
use crate::sink::{OutputError, OutputLoop, OutputMessage};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Runs until every sender is gone, then finishes the loop (which tells
/// the readers that every output is in). Returns the dead letters written.
/// Publishes what it wrote into `gauges` once per message (live metrics).
pub(super) fn write_outputs(
    messages: &crossbeam_channel::Receiver<(u32, OutputMessage)>,
    mut output: OutputLoop,
    gauges: &OutputGauges,
) -> Result<u64, OutputError> {
    use crossbeam_channel::RecvTimeoutError;
    let started = Instant::now();
    let now_ms = || started.elapsed().as_millis() as u64;
    let mut times = CheckpointTimes::default();
    loop {
        let received = match output.wait_ms(now_ms()) {
            None => messages.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(wait_ms) => messages.recv_timeout(Duration::from_millis(wait_ms)),
        };
        match received {
            Ok((shard, message)) => {
                let writing = Instant::now();
                if output.on_message(shard, message)? {
                    let took = times.completed(writing.elapsed(), started.elapsed());
                    gauges.checkpoint(took, output.writer().last_checkpoint_bytes());
                }
                gauges.written(output.writer().written());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if output.tick(now_ms()) {
            times.requested(started.elapsed());
        }
    }
    if let Some(summary) = times.summary(output.writer().last_checkpoint_bytes()) {
        log::info!("{summary}");
    }
    output.finish()
}

/// How long the output thread's checkpoints took, for the log at the end of
/// a run (and `bench/checkpoints.sh`): from the request to durable
/// (alignment across shards, snapshots, writing), and the writing alone.
/// The newest `CHECKPOINT_TIMES_KEPT` are kept, so memory is bounded however
/// long the run.
#[derive(Default)]
struct CheckpointTimes {
    requested_at: Option<Duration>,
    to_durable_us: VecDeque<u64>,
    writing_us: VecDeque<u64>,
    count: u64,
}

const CHECKPOINT_TIMES_KEPT: usize = 4096;

impl CheckpointTimes {
    fn requested(&mut self, at: Duration) {
        self.requested_at = Some(at);
    }

    /// A checkpoint is durable; returns how long it took from its request
    /// (or its writing alone, if nobody requested it: a recovery's first).
    fn completed(&mut self, writing: Duration, at: Duration) -> Duration {
        self.count += 1;
        let keep = |times: &mut VecDeque<u64>, time: Duration| {
            if times.len() == CHECKPOINT_TIMES_KEPT {
                times.pop_front();
            }
            times.push_back(time.as_micros() as u64);
        };
        keep(&mut self.writing_us, writing);
        match self.requested_at.take() {
            Some(requested) => {
                let to_durable = at.saturating_sub(requested);
                keep(&mut self.to_durable_us, to_durable);
                to_durable
            }
            None => writing,
        }
    }

    fn summary(&self, last_bytes: u64) -> Option<String> {
        if self.count == 0 {
            return None;
        }
        let percentiles = |times: &VecDeque<u64>| {
            let mut sorted: Vec<u64> = times.iter().copied().collect();
            sorted.sort_unstable();
            let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                at(0.5),
                at(0.99),
                at(1.0)
            )
        };
        let to_durable = if self.to_durable_us.is_empty() {
            "n/a".to_string()
        } else {
            percentiles(&self.to_durable_us)
        };
        Some(format!(
            "checkpoints: {} written, the last {last_bytes} bytes; request to durable {to_durable}; writing {}",
            self.count,
            percentiles(&self.writing_us)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::sinks::NullSink;
    use crate::sink::{DeadLetterWriter, OutputBatch, OutputWriter};
    use crate::source::ReaderProgress;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;

    #[test]
    fn the_output_thread_runs_until_every_sender_is_gone_then_releases_the_readers() {
        let (tx, rx) = crossbeam_channel::bounded(8);
        let lines = OutputBatch {
            lines: b"a\n".to_vec(),
            ids: Vec::new(),
        };
        tx.send((0, OutputMessage::Lines(lines))).unwrap();
        drop(tx);
        let writer = OutputWriter::new(
            Box::new(NullSink),
            DeadLetterWriter::with_sink(Box::new(NullSink), vec![]),
        );
        let progress = Arc::new(ReaderProgress::default());
        let gauges = OutputGauges::default();
        let written = write_outputs(&rx, OutputLoop::new(writer, Arc::clone(&progress)), &gauges).unwrap();
        assert_eq!(written, 0);
        assert_eq!(
            gauges.lines.load(Relaxed),
            1,
            "the gauges follow what was written"
        );
        assert_eq!(gauges.bytes.load(Relaxed), 2);
        assert_eq!(progress.committed.load(Relaxed), ReaderProgress::ALL);
    }

    #[test]
    fn checkpoint_times_summarize_percentiles() {
        let mut times = CheckpointTimes::default();
        assert_eq!(times.summary(0), None);
        times.requested(Duration::from_millis(10));
        times.completed(Duration::from_millis(2), Duration::from_millis(15));
        times.completed(Duration::from_millis(4), Duration::from_millis(30));
        assert_eq!(
            times.summary(7).unwrap(),
            "checkpoints: 2 written, the last 7 bytes; request to durable p50 5.0 ms, p99 5.0 ms, max 5.0 ms; \
             writing p50 4.0 ms, p99 4.0 ms, max 4.0 ms"
        );
    }
}
