//! The dataflow API: sources → stateless steps (map / filter / flat_map / try_map)
//! → `key_by` → one keyed stateful step (single input, or two streams joined on
//! the key) → a sink format.
//!
//! Steps are composed once into one shared closure per source, so a record costs a
//! few indirect calls and no allocation on its way to routing. Stateless steps are
//! `Fn`: every shard runs them on the input chunks dealt to it. The keyed step
//! runs on the shard that owns the key, so one key's state is only ever touched
//! by one thread.

use crate::audit::{NoteSink, UnitClock};
use crate::ids::{Msg, MsgId};
use crate::key::Key;
use crate::line::{Line, Reject};
use crate::source::SourceSpec;
use crate::State;
use std::borrow::Cow;
use std::sync::Arc;

/// Where a step hands its outputs.
pub type Emit<'a, T> = &'a mut dyn FnMut(Msg<T>) -> Result<(), Reject>;

/// A composed chain from a source line to values of type `T`.
pub type Chain<T> = Arc<dyn for<'l> Fn(Msg<Line<'l>>, Emit<'_, T>) -> Result<(), Reject> + Send + Sync>;

/// A stream of `T` coming from one source.
pub struct Stream<T> {
    source: SourceSpec,
    chain: Chain<T>,
}

/// The lines of one source. Lines are borrowed from their input buffer, so the
/// first step turns each into an owned value.
pub struct LineStream {
    source: SourceSpec,
}

/// Fan-out helper for `flat_map`: each pushed value gets the input id with the
/// next `part` number.
pub struct FanOut<'a, T> {
    id: MsgId,
    emit: Emit<'a, T>,
}

impl<T> FanOut<'_, T> {
    pub fn push(&mut self, value: T) -> Result<(), Reject> {
        let id = self.id;
        self.id.part += 1;
        (self.emit)(Msg::new(id, value))
    }
}

impl Stream<()> {
    /// The lines of `source`, each with id (source index, line number).
    pub fn from_source(source: SourceSpec) -> LineStream {
        LineStream { source }
    }
}

impl LineStream {
    fn first<U: 'static>(
        self,
        step: impl for<'l> Fn(Msg<Line<'l>>, Emit<'_, U>) -> Result<(), Reject> + Send + Sync + 'static,
    ) -> Stream<U> {
        Stream {
            source: self.source,
            chain: Arc::new(step),
        }
    }

    pub fn map<U: 'static>(self, f: impl for<'l> Fn(Line<'l>) -> U + Send + Sync + 'static) -> Stream<U> {
        self.first(move |msg, emit| emit(Msg::new(msg.id, f(msg.data))))
    }

    /// A map that can reject a line (it goes to the dead-letter file).
    pub fn try_map<U: 'static>(
        self,
        f: impl for<'l> Fn(Line<'l>) -> Result<U, Reject> + Send + Sync + 'static,
    ) -> Stream<U> {
        self.first(move |msg, emit| emit(Msg::new(msg.id, f(msg.data)?)))
    }

    /// Zero or more outputs per line (see `Stream::flat_map`).
    pub fn flat_map<U: 'static>(
        self,
        f: impl for<'l> Fn(Line<'l>, &mut FanOut<'_, U>) -> Result<(), Reject> + Send + Sync + 'static,
    ) -> Stream<U> {
        self.first(move |msg, emit| f(msg.data, &mut FanOut { id: msg.id, emit }))
    }
}

impl<T: 'static> Stream<T> {
    fn then<U: 'static>(
        self,
        step: impl Fn(Msg<T>, Emit<'_, U>) -> Result<(), Reject> + Send + Sync + 'static,
    ) -> Stream<U> {
        let prev = self.chain;
        Stream {
            source: self.source,
            chain: Arc::new(move |line, emit| prev(line, &mut |msg| step(msg, &mut *emit))),
        }
    }

    pub fn map<U: 'static>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> Stream<U> {
        self.then(move |msg, emit| emit(Msg::new(msg.id, f(msg.data))))
    }

    /// A map that can reject a record (it goes to the dead-letter file).
    pub fn try_map<U: 'static>(
        self,
        f: impl Fn(T) -> Result<U, Reject> + Send + Sync + 'static,
    ) -> Stream<U> {
        self.then(move |msg, emit| emit(Msg::new(msg.id, f(msg.data)?)))
    }

    pub fn filter(self, keep: impl Fn(&T) -> bool + Send + Sync + 'static) -> Stream<T> {
        self.then(move |msg, emit| if keep(&msg.data) { emit(msg) } else { Ok(()) })
    }

    /// Zero or more outputs per input, pushed into a `FanOut`; returning an error
    /// rejects the input (outputs already pushed stay pushed).
    pub fn flat_map<U: 'static>(
        self,
        f: impl Fn(T, &mut FanOut<'_, U>) -> Result<(), Reject> + Send + Sync + 'static,
    ) -> Stream<U> {
        self.then(move |msg, emit| f(msg.data, &mut FanOut { id: msg.id, emit }))
    }

    /// Splits each record into its key and the value the keyed step gets (when
    /// the step needs no more than the key, the value can be `()`).
    pub fn key_split<K: Key, V: 'static>(
        self,
        split: impl Fn(T) -> (K, V) + Send + Sync + 'static,
    ) -> KeyedStream<K, V> {
        let stream = self.map(move |record| {
            let (key, value) = split(record);
            Keyed { key, value }
        });
        KeyedStream {
            inputs: vec![SourceChain {
                source: stream.source,
                chain: stream.chain,
            }],
        }
    }

    /// Keys the stream: each record goes to the shard owning `key(&record)`.
    pub fn key_by<K: Key>(self, key: impl Fn(&T) -> K + Send + Sync + 'static) -> KeyedStream<K, T> {
        self.key_split(move |value| (key(&value), value))
    }
}

/// A record with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed<K, V> {
    pub key: K,
    pub value: V,
}

/// One source and the chain that turns its lines into keyed records.
struct SourceChain<K, V> {
    source: SourceSpec,
    chain: Chain<Keyed<K, V>>,
}

/// The two inputs of a joined keyed step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Records keyed by `K`, from one or more sources.
pub struct KeyedStream<K, V> {
    inputs: Vec<SourceChain<K, V>>,
}

/// The keyed step: per-key state, the key, one input value, and where to emit.
pub type StepFn<K, V, S, O> = dyn Fn(&mut S, &K, Msg<V>, &mut Output<'_, O>) + Send + Sync;
/// Runs once per key at the end of bounded input (e.g. final counts).
pub type EndFn<K, S, O> = dyn Fn(&K, &S, &mut Output<'_, O>) + Send + Sync;
/// Runs when a key's processing-time timer is due (`Output::set_timer`),
/// with the key's state, the key, and the time the timer was set for.
pub type TimerFn<K, S, O> = dyn Fn(&mut S, &K, u64, &mut Output<'_, O>) + Send + Sync;
/// Writes one output record as one line (without the `\n`).
pub type FormatFn<O> = dyn Fn(&O, &mut Vec<u8>) + Send + Sync;

impl<K: Key, V: Send + 'static> KeyedStream<K, V> {
    fn map_values<W: 'static>(self, f: fn(V) -> W) -> KeyedStream<K, W> {
        let inputs = self
            .inputs
            .into_iter()
            .map(|input| {
                let prev = input.chain;
                let chain: Chain<Keyed<K, W>> = Arc::new(move |line, emit| {
                    prev(line, &mut |msg: Msg<Keyed<K, V>>| {
                        let Keyed { key, value } = msg.data;
                        emit(Msg::new(msg.id, Keyed { key, value: f(value) }))
                    })
                });
                SourceChain {
                    source: input.source,
                    chain,
                }
            })
            .collect();
        KeyedStream { inputs }
    }

    /// Two streams on the same key, for a two-input keyed step: the step sees
    /// `Either::Left` for this stream's records and `Either::Right` for `other`'s.
    /// The interleaving of the two is whatever order they reach the key's shard.
    pub fn join<B: Send + 'static>(self, other: KeyedStream<K, B>) -> KeyedStream<K, Either<V, B>> {
        let mut joined = self.map_values(Either::Left);
        joined.inputs.extend(other.map_values(Either::Right).inputs);
        joined
    }

    /// Merges another stream of the same type.
    pub fn union(mut self, other: KeyedStream<K, V>) -> KeyedStream<K, V> {
        self.inputs.extend(other.inputs);
        self
    }

    /// The keyed stateful step; state `S` starts as `S::default()` per key.
    pub fn stateful<S: State, O: 'static>(
        self,
        step: impl Fn(&mut S, &K, Msg<V>, &mut Output<'_, O>) + Send + Sync + 'static,
    ) -> Stateful<K, V, S, O> {
        Stateful {
            inputs: self.inputs,
            step: Arc::new(step),
            on_end: None,
            on_timer: None,
        }
    }
}

/// A keyed stream with its stateful step, waiting for a sink format.
pub struct Stateful<K, V, S, O> {
    inputs: Vec<SourceChain<K, V>>,
    step: Arc<StepFn<K, V, S, O>>,
    on_end: Option<Arc<EndFn<K, S, O>>>,
    on_timer: Option<Arc<TimerFn<K, S, O>>>,
}

impl<K, V, S, O> Stateful<K, V, S, O> {
    /// Called for every key (in key order) once all input has been processed.
    pub fn on_end(mut self, f: impl Fn(&K, &S, &mut Output<'_, O>) + Send + Sync + 'static) -> Self {
        self.on_end = Some(Arc::new(f));
        self
    }

    /// The handler of the step's processing-time timers: when a timer the
    /// step set for a key (`Output::set_timer`) is due by the step's clock,
    /// it runs with that key's state, the key and the time it was set for
    /// (`Output::now_us` says when it fired; its output derives from the
    /// input that set the timer, see `Output::derive_from`). Timers are
    /// keyed state: checkpointed, restored, and in the audit log, so a
    /// replay fires them where the recorded run did (`crate::timers`).
    pub fn on_timer(
        mut self,
        f: impl Fn(&mut S, &K, u64, &mut Output<'_, O>) + Send + Sync + 'static,
    ) -> Self {
        self.on_timer = Some(Arc::new(f));
        self
    }

    pub fn sink(self, format: impl Fn(&O, &mut Vec<u8>) + Send + Sync + 'static) -> Dataflow<K, V, S, O> {
        let (sources, chains) = self.inputs.into_iter().map(|i| (i.source, i.chain)).unzip();
        Dataflow {
            sources,
            logic: Logic {
                chains,
                step: self.step,
                on_end: self.on_end,
                on_timer: self.on_timer,
                format: Arc::new(format),
            },
        }
    }
}

/// A complete pipeline, ready for a driver (the threaded runtime or a simulator):
/// where input comes from, and the I/O-free logic that processes it.
pub struct Dataflow<K, V, S, O> {
    pub sources: Vec<SourceSpec>,
    pub logic: Logic<K, V, S, O>,
}

/// The logic of a dataflow: `chains[i]` turns lines of `sources[i]` into keyed
/// records; `step` applies one to its key's state.
pub struct Logic<K, V, S, O> {
    pub chains: Vec<Chain<Keyed<K, V>>>,
    pub step: Arc<StepFn<K, V, S, O>>,
    pub on_end: Option<Arc<EndFn<K, S, O>>>,
    pub on_timer: Option<Arc<TimerFn<K, S, O>>>,
    pub format: Arc<FormatFn<O>>,
}

/// Where the keyed step emits: formats each output straight into the shard's
/// output buffer, so an output costs no allocation.
pub struct Output<'a, O> {
    pub(crate) id: MsgId,
    pub(crate) format: &'a FormatFn<O>,
    pub(crate) buffer: &'a mut Vec<u8>,
    /// The input id of each line, kept only when the sink wants ids.
    pub(crate) ids: Option<&'a mut Vec<MsgId>>,
    pub(crate) emitted: &'a mut u64,
    pub(crate) clock: &'a mut UnitClock,
    /// Where notes go when the audit log is on.
    pub(crate) notes: Option<&'a mut NoteSink>,
    /// Set by `fail`.
    pub(crate) failure: &'a mut Option<Cow<'static, str>>,
    /// Timers set (due time, the input they derive from) for the key, when
    /// the step has a timer handler.
    pub(crate) timers: Option<&'a mut Vec<(u64, MsgId)>>,
}

impl<O> Output<'_, O> {
    pub fn emit(&mut self, record: O) {
        (self.format)(&record, self.buffer);
        self.buffer.push(b'\n');
        if let Some(ids) = self.ids.as_deref_mut() {
            ids.push(self.id);
        }
        *self.emitted += 1;
    }

    /// The id of the input being processed (for lineage).
    pub fn input_id(&self) -> MsgId {
        self.id
    }

    /// Says that what follows (emits, notes, timers set) derives from input
    /// `id` rather than the one being processed: a timer handler's output
    /// derives from the input that set the timer unless it names another
    /// (market-spread's stale-quote alert names the quote that went stale).
    pub fn derive_from(&mut self, id: MsgId) {
        self.id = id;
    }

    /// Sets a processing-time timer for this record's key, due at `at_us`
    /// (UTC µs, as `now_us` reads): the step's `on_timer` handler runs with
    /// the key's state once the clock reaches it (one timer per key and
    /// instant; see `crate::timers`). Panics without an `on_timer` handler,
    /// and in `on_end`, which comes after the last timer.
    pub fn set_timer(&mut self, at_us: u64) {
        match self.timers.as_deref_mut() {
            Some(timers) => timers.push((at_us, self.id)),
            None => panic!("Output::set_timer needs a timer handler (Stateful::on_timer), and not in on_end"),
        }
    }

    /// Processing time, microseconds since the Unix epoch (UTC), through the
    /// injected `Clock`. Every record of a batch sees the same reading, and
    /// the audit log records it, so a decision that depends on it can be
    /// re-created.
    pub fn now_us(&mut self) -> u64 {
        self.clock.now_us()
    }

    /// Fails the input being processed: a value the step cannot take (out
    /// of range, an overflow). The record is dead-lettered with `reason`,
    /// the audit log keeps its key and the key's state as the step leaves
    /// them, and the run goes on. Fail before changing the state, and emit
    /// nothing for the record, so that it is as if it never came. (Only the
    /// keyed step may fail a record: `on_end` has none.)
    pub fn fail(&mut self, reason: impl Into<Cow<'static, str>>) {
        *self.failure = Some(reason.into());
    }

    /// Whether `note` records anything (the audit log is on): logic can skip
    /// preparing a note nobody keeps.
    pub fn is_audited(&self) -> bool {
        self.notes.is_some()
    }

    /// Records, for the input being processed, what the logic read or
    /// decided that the input does not hold (the state a decision saw), in
    /// the app's own encoding. `write` runs only when the audit log is on.
    pub fn note(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        if let Some(notes) = self.notes.as_deref_mut() {
            notes.note(self.id, write);
        }
    }
}
