//! Process 0's output thread: the production `OutputLoop` (over the
//! production `OutputWriter`), driven as the output thread drives it: a
//! message when one comes, else a wake-up when its wait (`wait_ms`) runs
//! out, and a `tick` after either. What it tells the readers
//! (`ReaderProgress`) is what they read; and it is watched from outside:
//! what it says it did must be what it published, and each checkpoint must
//! be requested when `Checkpointer::tick` promises.

use super::*;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use verity_core::sink::{OutputError, OutputLoop, OutputMessage};
use verity_core::source::ReaderProgress;

/// Late by more than this (process 0's milliseconds, rounding included), a
/// checkpoint request is a finding.
const REQUEST_SLACK_MS: u64 = 2;

/// The output thread's state as the simulator keeps it.
pub(super) struct OutputThread {
    /// `None` once the run finished it.
    output: Option<OutputLoop>,
    /// What it tells the readers (outlives `output`).
    progress: Arc<ReaderProgress>,
    /// When its wait for a message runs out (global time), if it waits.
    wake_at_us: Option<u64>,
    /// What the simulator saw it publish: requested, complete.
    seen_requested: u64,
    seen_completed: u64,
    /// Process 0's clock at the newest request (or at the first tick), the
    /// global time then, and process 0's clock offset then.
    last_request: Option<(u64, u64, i64)>,
    /// Process 0's clock when the newest checkpoint completed.
    completed_at_ms: Option<u64>,
    /// Per checkpoint, per source: the byte its cut stands at (from the
    /// shards' parts), if the source had read any and not ended.
    cuts: BTreeMap<u64, Vec<Option<u64>>>,
}

impl OutputThread {
    pub(super) fn new(output: OutputLoop) -> Self {
        let progress = Arc::clone(output.progress());
        let resumed = output.writer().checkpoints_completed();
        OutputThread {
            output: Some(output),
            progress,
            wake_at_us: None,
            seen_requested: resumed,
            seen_completed: resumed,
            last_request: None,
            completed_at_ms: None,
            cuts: BTreeMap::new(),
        }
    }

    /// The newest checkpoint complete, as it published.
    pub(super) fn completed(&self) -> u64 {
        self.seen_completed
    }

    /// Where checkpoint `checkpoint` cut `source`, if known.
    pub(super) fn cut(&self, checkpoint: u64, source: u32) -> Option<u64> {
        *self.cuts.get(&checkpoint)?.get(source as usize)?
    }

    pub(super) fn progress(&self) -> &ReaderProgress {
        &self.progress
    }

    pub(super) fn output(&self) -> Option<&OutputLoop> {
        self.output.as_ref()
    }

    pub(super) fn take(&mut self) -> Option<OutputLoop> {
        self.output.take()
    }
}

impl<K, V, S, O> World<'_, K, V, S, O>
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: verity_core::State,
    O: 'static,
{
    /// The output thread starts with the run: what the readers are told
    /// first, then its first wait.
    pub(super) fn start_output(&mut self) {
        let resumed = self.checkpoints_resumed;
        let progress = self.output.progress();
        let (requested, completed) = (progress.requested.load(Relaxed), progress.committed.load(Relaxed));
        if (requested, completed) != (resumed, resumed) {
            self.net.failure.get_or_insert(format!(
                "the output thread starts by telling the readers checkpoint {requested} is requested and \
                 {completed} complete, but this life resumed from {resumed}"
            ));
        }
        self.schedule_output_wake();
    }

    /// A message for the sinks, as the output thread takes it off its
    /// queue: written, then a tick.
    pub(super) fn output_message(&mut self, shard: u32, message: OutputMessage) -> Result<(), OutputError> {
        if let OutputMessage::Checkpoint(part) = &message {
            let cuts = self.output.cuts.entry(part.checkpoint).or_default();
            cuts.resize(part.cuts.len(), None);
            for (source, cut) in part.cuts.iter().enumerate() {
                if let Some(bytes) = cut.as_ref().and_then(upstream::cut_bytes) {
                    cuts[source] = Some(bytes);
                }
            }
        }
        let output = self
            .output
            .output
            .as_mut()
            .expect("the writer finishes with the world");
        let completed = output.on_message(shard, message)?;
        let now = output.writer().checkpoints_completed();
        let published = self.output.progress.committed.load(Relaxed);
        if published != now || completed != (now > self.output.seen_completed) {
            self.net.failure.get_or_insert(format!(
                "the output thread says a checkpoint completed: {completed}; the writer has {now} complete \
                 (before: {}), the readers are told {published}",
                self.output.seen_completed
            ));
        }
        if now > self.output.seen_completed {
            self.output.seen_completed = now;
            self.output.completed_at_ms = Some(self.local_clock_ms(0));
        }
        self.output_tick();
        Ok(())
    }

    /// The output thread's wait ran out.
    pub(super) fn output_wake(&mut self) {
        if self.output.wake_at_us != Some(self.now_us) || self.output.output.is_none() || self.dead(0) {
            return; // a message came since, or the run is over
        }
        if self.paused(0) {
            let until_us = self.processes[0].paused_until_us;
            self.output.wake_at_us = Some(until_us);
            self.schedule(until_us, Event::OutputWake);
            return;
        }
        if self.output_tick() {
            // The readers deal the barrier at their next look.
            self.step_process(0);
        }
    }

    /// A tick of the output thread, and its next wait. True if it requested
    /// a checkpoint.
    fn output_tick(&mut self) -> bool {
        let now_ms = self.local_clock_ms(0);
        let output = self
            .output
            .output
            .as_mut()
            .expect("the writer finishes with the world");
        let said = output.tick(now_ms);
        let requested = self.output.progress.requested.load(Relaxed);
        let rose = requested > self.output.seen_requested;
        if said != rose {
            self.net.failure.get_or_insert(format!(
                "the output thread says it requested a checkpoint: {said}; the readers are told {requested}, \
                 {} before",
                self.output.seen_requested
            ));
        }
        let offset_us = self.processes[0].clock_offset_us;
        if rose || self.output.last_request.is_none() {
            self.output.last_request = Some((now_ms, self.now_us, offset_us));
        }
        self.output.seen_requested = self.output.seen_requested.max(requested);
        self.schedule_output_wake();
        rose
    }

    fn schedule_output_wake(&mut self) {
        let Some(output) = &self.output.output else {
            return;
        };
        let wake_at_us = output
            .wait_ms(self.local_clock_ms(0))
            .map(|wait_ms| self.now_us + wait_ms * 1000);
        self.output.wake_at_us = wake_at_us;
        if let Some(at_us) = wake_at_us {
            self.schedule(at_us, Event::OutputWake);
        }
    }

    /// Each checkpoint is asked for when `Checkpointer::tick` promises: the
    /// interval after the request before, and once that one is complete,
    /// as long again as it took. A writer that never asks loses no output,
    /// only every checkpoint a recovery would need; one that sleeps past a
    /// due checkpoint makes the job's checkpoints rarer than configured.
    pub(super) fn check_checkpoint_requested(&mut self) {
        let (Some(interval_ms), Some(_)) = (self.buggify.checkpoint_interval_ms, &self.output.output) else {
            return;
        };
        let watch = &self.output;
        let Some((requested_ms, requested_us, offset_us)) = watch.last_request else {
            return;
        };
        if watch.seen_requested != watch.seen_completed {
            return; // one is being collected
        }
        let process = &self.processes[0];
        if process.dead || process.paused_until_us >= requested_us || process.clock_offset_us != offset_us {
            return; // the thread was not running, or its clock jumped
        }
        let mut due_ms = requested_ms + interval_ms;
        if let Some(completed_ms) = watch.completed_at_ms {
            due_ms = due_ms.max(completed_ms + completed_ms.saturating_sub(requested_ms));
        }
        let now_ms = self.local_clock_ms(0);
        if now_ms > due_ms + REQUEST_SLACK_MS {
            self.net.failure.get_or_insert(format!(
                "checkpoints: checkpoint {} not requested at {now_ms} ms, due at {due_ms} ms (interval \
                 {interval_ms} ms, the one before requested at {requested_ms} ms)",
                watch.seen_completed + 1
            ));
        }
    }

    /// As the output thread once every sender is gone: both sinks commit,
    /// and then the readers are told every output is final.
    pub(super) fn finish_output(&mut self) -> Option<Result<u64, String>> {
        let output = self.output.take()?;
        self.stats
            .add("checkpoints", output.writer().checkpoints_completed());
        let finished = output.finish().map_err(|e| e.to_string());
        let committed = self.output.progress.committed.load(Relaxed);
        Some(finished.and_then(|written| {
            if committed == ReaderProgress::ALL {
                Ok(written)
            } else {
                Err(format!(
                    "the output thread finished but tells the readers {committed} is the newest complete, not ALL"
                ))
            }
        }))
    }
}
