//! One shard thread: the shared `ShardDriver` decides (see `crate::driver`),
//! this loop gives it the thread's queues as ports and does the waiting.
//!
//! Shards never block on another shard: a send to a full queue is parked, and
//! while a source has parked sends the shard parses none of its chunks but
//! keeps applying what it receives (applying only produces output). Only the
//! output path may block a shard (these ports block there instead of
//! returning `Full`), and it never waits on shards.

use super::gauges::BlockedTime;
use super::wiring::{OutputOut, ShardChannels};
use super::LiveCounters;
use crate::cluster::codec::{encode_upstream, PartUpload, UpstreamRef, PART_PIECE_MAX_BYTES};
use crate::driver::{OutputSent, Sent, ShardDriver, ShardPorts, Wait, Watch};
use crate::key::Key;
use crate::line::DeadLetter;
use crate::shard::{Batch, CheckpointPart, ShardCore, ShardCounters};
use crate::sink::{OutputBatch, OutputMessage};
use crate::source::SourceEvent;
use crate::wire::Wire;
use crate::State;
use crossbeam_channel::Select;
use std::sync::Mutex;
use std::time::Duration;

/// Longest a shard sleeps when idle before looking again.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// How soon a shard with parked sends looks again: a full queue has no
/// "space available" signal.
const PARKED_RETRY_WAIT: Duration = Duration::from_micros(50);

/// Where source failures are reported (process 0), by source name.
pub struct SourceErrors<'a> {
    pub errors: &'a Mutex<super::BoundedMessages>,
    pub names: &'a [String],
}

impl SourceErrors<'_> {
    pub fn report(&self, source: u32, error: &str) {
        let name = self.names.get(source as usize).map_or("?", String::as_str);
        let message = format!("source {name} failed: {error}");
        log::error!("{message}");
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
    }
}

pub fn drive_shard<K, V, S, O>(
    core: ShardCore<K, V, S, O>,
    ch: ShardChannels<K, V>,
    live: &LiveCounters,
    source_errors: &SourceErrors<'_>,
    audit: Option<verity_audit::AuditHandle>,
) -> ShardCounters
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: State,
    O: 'static,
{
    let mut driver = ShardDriver::new(core, ch.chunks.len());
    let shard = driver.index();
    let mut ports = ThreadPorts {
        ch,
        source_errors,
        shard,
        parts_sent: 0,
        audit,
        blocked: &live.blocked,
    };
    let mut watched = Vec::new();
    // When the shard began waiting on a full queue: the next step's clock
    // read ends that wait, so only the start costs a read of its own.
    let mut blocked_since = None;
    loop {
        let began = std::time::Instant::now();
        if let Some(since) = blocked_since.take() {
            live.blocked.add(began.saturating_duration_since(since));
        }
        let parts_before = ports.parts_sent;
        let step = driver.step(&mut ports);
        if ports.parts_sent > parts_before {
            // The step that took a snapshot: its length bounds the stall.
            live.checkpoint_stall(began.elapsed());
        }
        live.publish(driver.counters());
        if step.finished {
            return driver.counters();
        }
        match step.wait {
            Wait::Nothing => {}
            Wait::Input { parked_sends } => {
                driver.watched(&mut watched);
                let timer_wait = driver.timer_wait_us().map(Duration::from_micros);
                if parked_sends {
                    blocked_since = Some(std::time::Instant::now());
                }
                wait_for_input(&ports.ch, &watched, parked_sends, timer_wait);
            }
            // These ports block on the sink rather than report it full.
            Wait::Sink => {
                blocked_since = Some(std::time::Instant::now());
                std::thread::sleep(PARKED_RETRY_WAIT);
            }
        }
    }
}

/// A shard thread's queues.
struct ThreadPorts<'a, K, V> {
    ch: ShardChannels<K, V>,
    source_errors: &'a SourceErrors<'a>,
    /// The shard's index, which the output thread lines checkpoints up by.
    shard: u32,
    /// Checkpoint parts sent so far.
    parts_sent: u64,
    /// The process's audit log, if it keeps one.
    audit: Option<verity_audit::AuditHandle>,
    /// Where a wait on the full output queue is added (live metrics).
    blocked: &'a BlockedTime,
}

impl<K: Key + Wire, V: Wire> ShardPorts<K, V> for ThreadPorts<'_, K, V> {
    fn take_batch(&mut self, source: u32, from: u32) -> Option<Batch<K, V>> {
        self.ch.batches_in[source as usize][from as usize]
            .as_ref()
            .expect("no channel from a shard to itself")
            .try_take(source, from)
    }

    fn take_source_event(&mut self, source: u32) -> Option<SourceEvent> {
        self.ch.chunks[source as usize].try_take(source)
    }

    fn try_send_batch(&mut self, to: u32, batch: Batch<K, V>) -> Sent<Batch<K, V>> {
        self.ch.batches_out[batch.source as usize][to as usize]
            .as_mut()
            .expect("no channel from a shard to itself")
            .try_send(batch)
    }

    fn try_output(&mut self, lines: OutputBatch) -> OutputSent {
        if self.ch.discard_lines {
            return OutputSent::Returned(lines);
        }
        match &mut self.ch.output {
            OutputOut::Local(tx) => {
                // A closed output thread has failed; its error ends the run.
                let message = (self.shard, OutputMessage::Lines(lines));
                let _ = self.blocked.send(tx.is_full(), || tx.send(message));
                OutputSent::Taken
            }
            output @ OutputOut::Remote(_) => {
                send_upstream(output, UpstreamRef::Lines(&lines));
                OutputSent::Returned(lines)
            }
        }
    }

    fn try_dead_letter(&mut self, letter: DeadLetter) -> Sent<DeadLetter> {
        match &mut self.ch.output {
            OutputOut::Local(tx) => {
                let _ = tx.send((self.shard, OutputMessage::DeadLetter(letter)));
            }
            output @ OutputOut::Remote(_) => send_upstream(output, UpstreamRef::DeadLetter(&letter)),
        }
        Sent::Done
    }

    fn try_source_failed(&mut self, source: u32, error: String) -> Sent<String> {
        match &mut self.ch.output {
            OutputOut::Local(_) => self.source_errors.report(source, &error),
            output @ OutputOut::Remote(_) => send_upstream(
                output,
                UpstreamRef::SourceFailed {
                    source,
                    error: &error,
                },
            ),
        }
        Sent::Done
    }

    fn try_checkpoint(&mut self, part: CheckpointPart) -> Sent<CheckpointPart> {
        self.parts_sent += 1;
        match &mut self.ch.output {
            OutputOut::Local(tx) => {
                let _ = tx.send((self.shard, OutputMessage::Checkpoint(part)));
            }
            // To process 0, which writes every part, in pieces (a part can
            // be far larger than a frame).
            output @ OutputOut::Remote(_) => {
                PartUpload::new(&part, PART_PIECE_MAX_BYTES).send(|piece| {
                    send_upstream(output, *piece);
                    true
                });
            }
        }
        Sent::Done
    }

    fn try_audit(&mut self, records: Vec<u8>) -> Sent<Vec<u8>> {
        let audit = self
            .audit
            .as_ref()
            .expect("audit records from a shard of a process without an audit log");
        if let Err(e) = audit.submit(records) {
            // The run must not go on unaudited; the panic fails it.
            panic!("shard {}: {e}", self.shard);
        }
        Sent::Done
    }

    fn try_finished(&mut self, counters: ShardCounters) -> bool {
        // A local shard's counters go to the runtime when its thread returns.
        send_upstream(&mut self.ch.output, UpstreamRef::Finished(&counters));
        true
    }
}

/// Sends towards process 0's sinks (a worker's output path; blocks when full).
fn send_upstream(output: &mut OutputOut, message: UpstreamRef<'_>) {
    if let OutputOut::Remote(remote) = output {
        // A closed channel means the run is being torn down after a failure.
        let _ = remote.send(|frame| encode_upstream(&message, frame));
    }
}

/// Waits for a watched queue, no longer than the poll interval or until
/// the next timer is due (`timer_wait`).
fn wait_for_input<K: Key + Wire, V: Wire>(
    ch: &ShardChannels<K, V>,
    watched: &[Watch],
    parked_sends: bool,
    timer_wait: Option<Duration>,
) {
    let mut select = Select::new();
    for watch in watched {
        match *watch {
            Watch::Batches { source, from } => ch.batches_in[source as usize][from as usize]
                .as_ref()
                .expect("no channel from a shard to itself")
                .watch(&mut select),
            Watch::Chunks { source } => ch.chunks[source as usize].watch(&mut select),
        }
    }
    let poll = if parked_sends {
        PARKED_RETRY_WAIT
    } else {
        IDLE_WAIT
    };
    let _ = select.ready_timeout(timer_wait.map_or(poll, |timer| timer.min(poll)));
}
