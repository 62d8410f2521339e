//! The shard state machine. It takes events (a source chunk arrived, a batch from
//! another shard arrived, a peer finished) and produces effects (send this batch,
//! write these output bytes, dead-letter this record). It never touches a thread,
//! queue, socket, file or clock: the threaded runtime drives it in production, and
//! a simulator can drive many of them in one thread.

use crate::flow::{Chain, EndFn, FormatFn, Keyed, Logic, Output, StepFn};
use crate::ids::{Msg, MsgId};
use crate::key::{shard_for, Key};
use crate::line::{for_each_line, DeadLetter, Line};
use crate::source::SourceEvent;
use bytes::Bytes;
use std::sync::Arc;
use verity_state::{DedupWatermarks, KeyedStore};

/// Limits of one shard, all configurable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLimits {
    /// Records per batch sent to another shard.
    pub batch_max: usize,
    /// Output bytes gathered before they are handed to the sink.
    pub output_batch_bytes: usize,
}

impl Default for ShardLimits {
    fn default() -> Self {
        ShardLimits {
            batch_max: 1024,
            output_batch_bytes: 64 * 1024,
        }
    }
}

/// A keyed record in flight between shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<K, V> {
    pub id: MsgId,
    pub key: K,
    pub value: V,
}

/// Records from one shard to another. `first_seq` numbers the channel
/// (sender → receiver) from 1, so the receiver can drop replays.
#[derive(Debug)]
pub struct Batch<K, V> {
    pub from: u32,
    pub first_seq: u64,
    pub records: Vec<Routed<K, V>>,
}

/// What a shard receives from another shard.
#[derive(Debug)]
pub enum PeerMessage<K, V> {
    Batch(Batch<K, V>),
    /// The sender has no more records for this receiver.
    End {
        from: u32,
    },
}

/// What a shard asks its driver to do.
#[derive(Debug)]
pub enum Effect<K, V> {
    Send {
        to: u32,
        message: PeerMessage<K, V>,
    },
    /// Output lines, each ending in `\n`.
    Output(Vec<u8>),
    DeadLetter(DeadLetter),
    /// A source failed after it opened (the run continues without it).
    SourceFailed {
        source: u32,
        error: String,
    },
}

/// Running totals of one shard.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShardCounters {
    pub records_in: u64,
    pub records_out: u64,
    pub dead_lettered: u64,
    /// Replayed records dropped by the dedup watermark.
    pub duplicates_dropped: u64,
}

/// The source-side half: owned sources, their chains, routing and outgoing batches.
struct Ingest<K, V> {
    /// Per source index: its chain if this shard owns it, and its line count.
    chains: Vec<Option<Chain<Keyed<K, V>>>>,
    lines_seen: Vec<u64>,
    sources_open: usize,
    outgoing: Vec<Vec<Routed<K, V>>>,
    next_seq: Vec<u64>,
}

/// The key-side half: state, the step, and the output buffer.
struct KeyedPart<K, V, S, O> {
    store: KeyedStore<K, S>,
    step: Arc<StepFn<K, V, S, O>>,
    on_end: Option<Arc<EndFn<K, S, O>>>,
    format: Arc<FormatFn<O>>,
    output: Vec<u8>,
    spare_output: Vec<Vec<u8>>,
}

pub struct ShardCore<K, V, S, O> {
    index: u32,
    shards: u32,
    limits: ShardLimits,
    ingest: Ingest<K, V>,
    keyed: KeyedPart<K, V, S, O>,
    watermarks: DedupWatermarks,
    peers_open: u32,
    finished: bool,
    counters: ShardCounters,
    effects: Vec<Effect<K, V>>,
}

impl<K: Key, V: Send + 'static, S: Default + Send + 'static, O: 'static> ShardCore<K, V, S, O> {
    /// Splits a dataflow into `shards` cores; source `i` is owned by shard
    /// `i % shards`.
    pub fn build_all(logic: Logic<K, V, S, O>, shards: u32, limits: ShardLimits) -> Vec<Self> {
        assert!(shards > 0 && limits.batch_max > 0 && limits.output_batch_bytes > 0);
        let sources = logic.chains.len();
        let mut owned: Vec<Vec<Option<Chain<Keyed<K, V>>>>> = (0..shards)
            .map(|_| (0..sources).map(|_| None).collect())
            .collect();
        for (i, chain) in logic.chains.into_iter().enumerate() {
            owned[i % shards as usize][i] = Some(chain);
        }
        let parts = (logic.step, logic.on_end, logic.format);
        owned
            .into_iter()
            .enumerate()
            .map(|(index, chains)| ShardCore::new(index as u32, shards, limits, chains, &parts))
            .collect()
    }

    #[allow(clippy::type_complexity)]
    fn new(
        index: u32,
        shards: u32,
        limits: ShardLimits,
        chains: Vec<Option<Chain<Keyed<K, V>>>>,
        (step, on_end, format): &(
            Arc<StepFn<K, V, S, O>>,
            Option<Arc<EndFn<K, S, O>>>,
            Arc<FormatFn<O>>,
        ),
    ) -> Self {
        let sources_open = chains.iter().filter(|c| c.is_some()).count();
        let sources = chains.len();
        let mut core = ShardCore {
            index,
            shards,
            limits,
            ingest: Ingest {
                chains,
                lines_seen: vec![0; sources],
                sources_open,
                outgoing: (0..shards).map(|_| Vec::new()).collect(),
                next_seq: vec![1; shards as usize],
            },
            keyed: KeyedPart {
                store: KeyedStore::new(),
                step: Arc::clone(step),
                on_end: on_end.clone(),
                format: Arc::clone(format),
                output: Vec::with_capacity(limits.output_batch_bytes + 1024),
                spare_output: Vec::new(),
            },
            watermarks: DedupWatermarks::new(),
            peers_open: shards - 1,
            finished: false,
            counters: ShardCounters::default(),
            effects: Vec::new(),
        };
        if sources_open == 0 {
            core.announce_end();
        }
        core
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn counters(&self) -> ShardCounters {
        self.counters
    }

    /// True once all input reached this shard, final outputs are emitted and
    /// everything is flushed into effects.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Sources this shard owns that have not ended.
    pub fn sources_open(&self) -> usize {
        self.ingest.sources_open
    }

    /// Takes the effects produced so far, in the order they must be carried out.
    pub fn drain_effects(&mut self) -> std::vec::Drain<'_, Effect<K, V>> {
        self.effects.drain(..)
    }

    /// Gives back an output buffer the driver is done with, to avoid allocating.
    pub fn recycle_output(&mut self, mut buffer: Vec<u8>) {
        const SPARE_BUFFERS_MAX: usize = 4;
        if self.keyed.spare_output.len() < SPARE_BUFFERS_MAX {
            buffer.clear();
            self.keyed.spare_output.push(buffer);
        }
    }

    pub fn on_source_event(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Chunk { source, data } => self.on_chunk(source, &data),
            SourceEvent::Oversized {
                source,
                prefix,
                size_bytes,
            } => {
                let Some(line_no) = self.count_line(source) else {
                    return;
                };
                self.dead_letter(DeadLetter::new(
                    MsgId::new(source, line_no),
                    format!("line of {size_bytes} bytes is over the limit").into(),
                    &prefix,
                ));
            }
            SourceEvent::Failed { source, error } => {
                self.effects.push(Effect::SourceFailed { source, error })
            }
            SourceEvent::End { source } => self.on_source_end(source),
        }
    }

    pub fn on_peer_message(&mut self, message: PeerMessage<K, V>) {
        match message {
            PeerMessage::Batch(batch) => self.on_batch(batch),
            PeerMessage::End { from } => {
                assert!(
                    from != self.index && self.peers_open > 0,
                    "unexpected end from {from}"
                );
                self.peers_open -= 1;
                self.finish_if_done();
            }
        }
    }

    /// Hands partial batches and buffered output to the driver (called when the
    /// driver is about to wait, so latency stays low when input is slow).
    pub fn flush(&mut self) {
        for to in 0..self.shards {
            self.send_batch(to);
        }
        self.flush_output();
    }

    fn count_line(&mut self, source: u32) -> Option<u64> {
        let chain = self.ingest.chains.get(source as usize)?;
        chain.as_ref()?;
        let seen = &mut self.ingest.lines_seen[source as usize];
        *seen += 1;
        self.counters.records_in += 1;
        Some(*seen)
    }

    fn on_chunk(&mut self, source: u32, data: &Bytes) {
        let Some(Some(chain)) = self.ingest.chains.get_mut(source as usize) else {
            return; // a late chunk of a source that was already ended (Ctrl-C)
        };
        let lines_seen = &mut self.ingest.lines_seen[source as usize];
        let (index, shards, batch_max) = (self.index, self.shards, self.limits.batch_max);
        let outgoing = &mut self.ingest.outgoing;
        let next_seq = &mut self.ingest.next_seq;
        let keyed = &mut self.keyed;
        let counters = &mut self.counters;
        let effects = &mut self.effects;
        for_each_line(data, |raw| {
            *lines_seen += 1;
            counters.records_in += 1;
            let id = MsgId::new(source, *lines_seen);
            let line = Line::new(raw);
            let raw_for_errors = line.clone();
            let routed = chain(Msg::new(id, line), &mut |msg: Msg<Keyed<K, V>>| {
                let to = shard_for(msg.data.key.route_hash(), shards as usize) as u32;
                let record = Routed {
                    id: msg.id,
                    key: msg.data.key,
                    value: msg.data.value,
                };
                if to == index {
                    keyed.apply(record, &mut counters.records_out);
                } else {
                    outgoing[to as usize].push(record);
                    if outgoing[to as usize].len() >= batch_max {
                        effects.push(take_batch(index, to, outgoing, next_seq));
                    }
                }
                Ok(())
            });
            if let Err(reject) = routed {
                counters.dead_lettered += 1;
                effects.push(Effect::DeadLetter(DeadLetter::new(
                    id,
                    reject.reason,
                    &raw_for_errors.into_bytes(),
                )));
            }
        });
        self.flush_output_if_full();
    }

    /// Ends every owned source (their readers are gone).
    pub fn end_all_sources(&mut self) {
        for source in 0..self.ingest.chains.len() as u32 {
            self.on_source_end(source);
        }
    }

    fn on_source_end(&mut self, source: u32) {
        let Some(slot) = self.ingest.chains.get_mut(source as usize) else {
            return;
        };
        if slot.take().is_none() {
            return; // already ended (a stop can end a source twice)
        }
        self.ingest.sources_open -= 1;
        if self.ingest.sources_open == 0 {
            self.announce_end();
        }
    }

    /// All owned sources are done: flush what is pending to every peer and tell
    /// them no more is coming (after the batches, so order carries the meaning).
    fn announce_end(&mut self) {
        for to in 0..self.shards {
            if to != self.index {
                self.send_batch(to);
                self.effects.push(Effect::Send {
                    to,
                    message: PeerMessage::End { from: self.index },
                });
            }
        }
        self.finish_if_done();
    }

    fn on_batch(&mut self, batch: Batch<K, V>) {
        let count = batch.records.len() as u64;
        let admit = self.watermarks.admit_batch(batch.from, batch.first_seq, count);
        assert_eq!(admit.gap, 0, "channel {}→{} lost records", batch.from, self.index);
        self.counters.duplicates_dropped += admit.skip;
        for record in batch.records.into_iter().skip(admit.skip as usize) {
            self.keyed.apply(record, &mut self.counters.records_out);
        }
        self.flush_output_if_full();
    }

    fn finish_if_done(&mut self) {
        if self.finished || self.ingest.sources_open > 0 || self.peers_open > 0 {
            return;
        }
        self.keyed.run_on_end(&mut self.counters.records_out);
        self.flush();
        self.finished = true;
    }

    fn send_batch(&mut self, to: u32) {
        if !self.ingest.outgoing[to as usize].is_empty() {
            let effect = take_batch(
                self.index,
                to,
                &mut self.ingest.outgoing,
                &mut self.ingest.next_seq,
            );
            self.effects.push(effect);
        }
    }

    fn dead_letter(&mut self, letter: DeadLetter) {
        self.counters.dead_lettered += 1;
        self.effects.push(Effect::DeadLetter(letter));
    }

    fn flush_output_if_full(&mut self) {
        if self.keyed.output.len() >= self.limits.output_batch_bytes {
            self.flush_output();
        }
    }

    fn flush_output(&mut self) {
        if !self.keyed.output.is_empty() {
            let fresh = self
                .keyed
                .spare_output
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(self.limits.output_batch_bytes + 1024));
            let full = std::mem::replace(&mut self.keyed.output, fresh);
            self.effects.push(Effect::Output(full));
        }
    }
}

fn take_batch<K, V>(
    from: u32,
    to: u32,
    outgoing: &mut [Vec<Routed<K, V>>],
    next_seq: &mut [u64],
) -> Effect<K, V> {
    let capacity = outgoing[to as usize].capacity();
    let records = std::mem::replace(&mut outgoing[to as usize], Vec::with_capacity(capacity));
    let first_seq = next_seq[to as usize];
    next_seq[to as usize] += records.len() as u64;
    debug_assert!(!records.is_empty());
    Effect::Send {
        to,
        message: PeerMessage::Batch(Batch {
            from,
            first_seq,
            records,
        }),
    }
}

impl<K: Key, V, S: Default, O> KeyedPart<K, V, S, O> {
    fn apply(&mut self, record: Routed<K, V>, emitted: &mut u64) {
        // A zero-sized state (a stateless keyed step, e.g. doubler) needs no store:
        // skipping it keeps memory flat however many distinct keys pass.
        let mut unit_state;
        let state = if std::mem::size_of::<S>() == 0 {
            unit_state = S::default();
            &mut unit_state
        } else {
            self.store.state_mut(&record.key, Key::detach)
        };
        let mut output = Output {
            id: record.id,
            format: &*self.format,
            buffer: &mut self.output,
            emitted,
        };
        (self.step)(state, &record.key, Msg::new(record.id, record.value), &mut output);
    }

    fn run_on_end(&mut self, emitted: &mut u64) {
        let Some(on_end) = self.on_end.clone() else { return };
        for (key, state) in self.store.sorted() {
            let mut output = Output {
                id: MsgId::default(),
                format: &*self.format,
                buffer: &mut self.output,
                emitted,
            };
            on_end(key, state, &mut output);
        }
    }
}
