//! The loop of one shard thread: feeds its `ShardCore` chunks and batches and
//! carries out the effects it returns.
//!
//! Shards never block on another shard: a send to a full queue is parked, and
//! while a source has parked sends the shard parses none of its chunks but
//! keeps applying what it receives (applying only produces output). Only the
//! output path may block a shard, and it never waits on shards.

use super::wiring::{BatchOut, OutputOut, Sent, ShardChannels};
use super::LiveCounters;
use crate::cluster::codec::{encode_upstream, UpstreamRef};
use crate::key::Key;
use crate::shard::{Batch, Effect, ShardCore, ShardCounters};
use crate::sink::OutputMessage;
use crate::wire::Wire;
use crossbeam_channel::Select;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// Longest a shard sleeps when idle before looking again.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// How soon a shard with parked sends looks again: a full queue has no
/// "space available" signal.
const PARKED_RETRY_WAIT: Duration = Duration::from_micros(50);
/// Batches taken from peers before the shard looks at its sources again.
const PEER_DRAIN_MAX: usize = 64;

/// Per source: sends that found their queue full, kept in order.
type Parked<K, V> = Vec<VecDeque<(u32, Batch<K, V>)>>;

/// Where source failures are reported (process 0), by source name.
pub struct SourceErrors<'a> {
    pub errors: &'a Mutex<Vec<String>>,
    pub names: &'a [String],
}

impl SourceErrors<'_> {
    pub fn report(&self, source: u32, error: &str) {
        let name = self.names.get(source as usize).map_or("?", String::as_str);
        let message = format!("source {name} failed: {error}");
        eprintln!("verity: {message}");
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
    }
}

pub fn drive_shard<K, V, S, O>(
    mut core: ShardCore<K, V, S, O>,
    mut ch: ShardChannels<K, V>,
    live: &LiveCounters,
    source_errors: &SourceErrors<'_>,
) -> ShardCounters
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: Default + Send + 'static,
    O: 'static,
{
    let mut parked: Parked<K, V> = (0..ch.chunks.len()).map(|_| VecDeque::new()).collect();
    let mut effects = Vec::new();
    let mut awaited = Vec::new();
    loop {
        let mut progressed = receive_batches(&mut core, &ch, &mut awaited);
        for (source, chunks) in ch.chunks.iter().enumerate() {
            if parked[source].is_empty() && core.wants_chunk(source as u32) {
                if let Some(event) = chunks.try_take(source as u32) {
                    core.on_source_event(event);
                    progressed = true;
                }
            }
        }
        if !progressed && parked.iter().all(VecDeque::is_empty) {
            core.flush();
        }
        effects.extend(core.drain_effects());
        for effect in effects.drain(..) {
            carry_out(effect, &mut core, &mut ch, &mut parked, source_errors);
        }
        progressed |= retry_parked(&mut parked, &mut ch.batches_out);
        live.publish(core.counters());
        if core.is_finished() && parked.iter().all(VecDeque::is_empty) {
            let counters = core.counters();
            send_upstream(&mut ch.output, UpstreamRef::Finished(counters));
            return counters;
        }
        if !progressed {
            wait_for_input(&ch, &core, &parked, &mut awaited);
        }
    }
}

/// Applies batches from the senders whose turn it is, as long as they have some.
fn receive_batches<K, V, S, O>(
    core: &mut ShardCore<K, V, S, O>,
    ch: &ShardChannels<K, V>,
    awaited: &mut Vec<(u32, u32)>,
) -> bool
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: Default + Send + 'static,
    O: 'static,
{
    let mut received = 0;
    'turns: while received < PEER_DRAIN_MAX {
        core.awaited_senders(awaited);
        for &(source, from) in awaited.iter() {
            let inbound = ch.batches_in[source as usize][from as usize]
                .as_ref()
                .expect("no channel from a shard to itself");
            if let Some(batch) = inbound.try_take(source, from) {
                core.on_batch(batch);
                received += 1;
                continue 'turns;
            }
        }
        break;
    }
    received > 0
}

fn carry_out<K, V, S, O>(
    effect: Effect<K, V>,
    core: &mut ShardCore<K, V, S, O>,
    ch: &mut ShardChannels<K, V>,
    parked: &mut Parked<K, V>,
    source_errors: &SourceErrors<'_>,
) where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: Default + Send + 'static,
    O: 'static,
{
    match effect {
        Effect::Send { to, batch } => {
            let source = batch.source as usize;
            if !parked[source].is_empty() {
                parked[source].push_back((to, batch));
                return;
            }
            if let Sent::Full(batch) = outbound(&mut ch.batches_out, source, to).try_send(batch) {
                parked[source].push_back((to, batch));
            }
        }
        Effect::Output(lines) => {
            if ch.discard_lines {
                core.recycle_output(lines);
            } else if let OutputOut::Local(tx) = &ch.output {
                // A closed output thread has failed; its error ends the run.
                let _ = tx.send(OutputMessage::Lines(lines));
            } else {
                send_upstream(&mut ch.output, UpstreamRef::Lines(&lines));
                core.recycle_output(lines);
            }
        }
        Effect::DeadLetter(letter) => match &ch.output {
            OutputOut::Local(tx) => {
                let _ = tx.send(OutputMessage::DeadLetter(letter));
            }
            OutputOut::Remote(_) => send_upstream(&mut ch.output, UpstreamRef::DeadLetter(&letter)),
        },
        Effect::SourceFailed { source, error } => match &ch.output {
            OutputOut::Local(_) => source_errors.report(source, &error),
            OutputOut::Remote(_) => send_upstream(
                &mut ch.output,
                UpstreamRef::SourceFailed {
                    source,
                    error: &error,
                },
            ),
        },
    }
}

/// Sends towards process 0's sinks (a worker's output path; blocks when full).
fn send_upstream(output: &mut OutputOut, message: UpstreamRef<'_>) {
    if let OutputOut::Remote(remote) = output {
        // A closed channel means the run is being torn down after a failure.
        let _ = remote.send(|frame| encode_upstream(&message, frame));
    }
}

fn outbound<K, V>(out: &mut [Vec<Option<BatchOut<K, V>>>], source: usize, to: u32) -> &mut BatchOut<K, V> {
    out[source][to as usize]
        .as_mut()
        .expect("no channel from a shard to itself")
}

fn retry_parked<K: Wire, V: Wire>(
    parked: &mut Parked<K, V>,
    out: &mut [Vec<Option<BatchOut<K, V>>>],
) -> bool {
    let mut sent_any = false;
    for (source, queue) in parked.iter_mut().enumerate() {
        while let Some((to, batch)) = queue.pop_front() {
            match outbound(out, source, to).try_send(batch) {
                Sent::Done => sent_any = true,
                Sent::Full(batch) => {
                    queue.push_front((to, batch));
                    break;
                }
            }
        }
    }
    sent_any
}

fn wait_for_input<K, V, S, O>(
    ch: &ShardChannels<K, V>,
    core: &ShardCore<K, V, S, O>,
    parked: &Parked<K, V>,
    awaited: &mut Vec<(u32, u32)>,
) where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: Default + Send + 'static,
    O: 'static,
{
    let mut select = Select::new();
    core.awaited_senders(awaited);
    for &(source, from) in awaited.iter() {
        let inbound = ch.batches_in[source as usize][from as usize]
            .as_ref()
            .expect("no channel from a shard to itself");
        inbound.watch(&mut select);
    }
    for (source, chunks) in ch.chunks.iter().enumerate() {
        if parked[source].is_empty() && core.wants_chunk(source as u32) {
            chunks.watch(&mut select);
        }
    }
    let any_parked = parked.iter().any(|q| !q.is_empty());
    let _ = select.ready_timeout(if any_parked { PARKED_RETRY_WAIT } else { IDLE_WAIT });
}
