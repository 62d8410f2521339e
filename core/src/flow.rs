//! The dataflow API: sources → stateless steps (map / filter / flat_map / try_map)
//! → `key_by` → one keyed stateful step (single input, or two streams joined on
//! the key) → a sink format.
//!
//! A source's steps are composed at build time: each step's type holds the
//! steps before it (`Steps`), so the whole chain, the line split before it
//! and the routing after it compile into one function per source (`Chain`),
//! boxed once by `key_split`. The shard calls it once per chunk; a record
//! costs no indirect call on its way to routing (a `flat_map` makes one per
//! value it pushes). Stateless steps are `Fn`: every shard runs them on the
//! input chunks dealt to it. The keyed step runs on the shard that owns the
//! key, so one key's state is only ever touched by one thread.
//!
//! Event time (`KeyedStream::event_time`, `crate::event_time`) gives the keyed
//! step a watermark, event-time timers (`Output::set_event_timer`,
//! `Stateful::on_event_timer`) and windows (`KeyedStream::window`,
//! `crate::window`), which are library code over this same API. The
//! compiled chain does not know about it: the shard's `Routes` read each
//! routed record's event time when the step has one (`Routes::push`).

use crate::audit::{NoteSink, UnitClock};
use crate::event_time::EventTimeSpec;
use crate::ids::{Msg, MsgId};
use crate::key::Key;
use crate::line::{for_each_line, Line, Reject};
use crate::routes::{ChunkLines, Routes};
use crate::source::SourceSpec;
use crate::State;
use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;

/// Where a `flat_map` hands its outputs.
pub type Emit<'a, T> = &'a mut dyn FnMut(Msg<T>) -> Result<(), Reject>;

/// A source's compiled chain: parses one chunk of its lines, routing each
/// keyed record (or noting each rejected line) into the shard's `Routes`.
pub type Chain<K, V> = Arc<dyn Fn(ChunkLines<'_>, &mut Routes<K, V>) + Send + Sync>;

/// The stateless steps of a source so far, from a line to values of type
/// `T`: each `Stream` method wraps them in one more step, so the compiler
/// sees (and inlines) the whole chain.
pub trait Steps<T>: Send + Sync + 'static {
    /// Runs `line` through the steps, handing each value to `emit`.
    fn run(
        &self,
        line: Msg<Line<'_>>,
        emit: &mut impl FnMut(Msg<T>) -> Result<(), Reject>,
    ) -> Result<(), Reject>;
}

/// A stream of `T` coming from one source, through the steps `C`.
pub struct Stream<T, C = NoSteps> {
    source: SourceSpec,
    steps: C,
    values: PhantomData<fn() -> T>,
}

/// The steps of a stream not yet given any (only `Stream::from_source`'s
/// type names it).
pub struct NoSteps;

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

/// The first step, on a line.
pub struct LineMap<F>(F);
/// The first step, on a line, that may reject it.
pub struct LineTryMap<F>(F);
/// The first step, on a line, with zero or more outputs.
pub struct LineFlatMap<F>(F);

impl<U, F: for<'l> Fn(Line<'l>) -> U + Send + Sync + 'static> Steps<U> for LineMap<F> {
    #[inline]
    fn run(
        &self,
        line: Msg<Line<'_>>,
        emit: &mut impl FnMut(Msg<U>) -> Result<(), Reject>,
    ) -> Result<(), Reject> {
        emit(Msg::new(line.id, (self.0)(line.data)))
    }
}

impl<U, F: for<'l> Fn(Line<'l>) -> Result<U, Reject> + Send + Sync + 'static> Steps<U> for LineTryMap<F> {
    #[inline]
    fn run(
        &self,
        line: Msg<Line<'_>>,
        emit: &mut impl FnMut(Msg<U>) -> Result<(), Reject>,
    ) -> Result<(), Reject> {
        emit(Msg::new(line.id, (self.0)(line.data)?))
    }
}

impl<U, F> Steps<U> for LineFlatMap<F>
where
    F: for<'l> Fn(Line<'l>, &mut FanOut<'_, U>) -> Result<(), Reject> + Send + Sync + 'static,
{
    #[inline]
    fn run(
        &self,
        line: Msg<Line<'_>>,
        emit: &mut impl FnMut(Msg<U>) -> Result<(), Reject>,
    ) -> Result<(), Reject> {
        (self.0)(line.data, &mut FanOut { id: line.id, emit })
    }
}

impl LineStream {
    fn first<U, C: Steps<U>>(self, steps: C) -> Stream<U, C> {
        Stream {
            source: self.source,
            steps,
            values: PhantomData,
        }
    }

    pub fn map<U: 'static>(
        self,
        f: impl for<'l> Fn(Line<'l>) -> U + Send + Sync + 'static,
    ) -> Stream<U, impl Steps<U>> {
        self.first(LineMap(f))
    }

    /// A map that can reject a line (it goes to the dead-letter file).
    pub fn try_map<U: 'static>(
        self,
        f: impl for<'l> Fn(Line<'l>) -> Result<U, Reject> + Send + Sync + 'static,
    ) -> Stream<U, impl Steps<U>> {
        self.first(LineTryMap(f))
    }

    /// Zero or more outputs per line (see `Stream::flat_map`).
    pub fn flat_map<U: 'static>(
        self,
        f: impl for<'l> Fn(Line<'l>, &mut FanOut<'_, U>) -> Result<(), Reject> + Send + Sync + 'static,
    ) -> Stream<U, impl Steps<U>> {
        self.first(LineFlatMap(f))
    }
}

/// A later step of a stream of `T`: `step` gets each value the steps
/// before it (`prev`) emit.
pub struct Then<P, F, T> {
    prev: P,
    step: F,
    input: PhantomData<fn(T)>,
}

/// What a later step does with each value (one type per kind of step, so
/// every call in the chain is a direct one).
pub struct MapStep<F>(F);
pub struct TryMapStep<F>(F);
pub struct FilterStep<F>(F);
pub struct FlatMapStep<F>(F);

impl<T: 'static, U, P: Steps<T>, F: Fn(T) -> U + Send + Sync + 'static> Steps<U> for Then<P, MapStep<F>, T> {
    #[inline]
    fn run(
        &self,
        line: Msg<Line<'_>>,
        emit: &mut impl FnMut(Msg<U>) -> Result<(), Reject>,
    ) -> Result<(), Reject> {
        let f = &self.step.0;
        self.prev
            .run(line, &mut |msg| emit(Msg::new(msg.id, f(msg.data))))
    }
}

impl<T: 'static, U, P, F> Steps<U> for Then<P, TryMapStep<F>, T>
where
    P: Steps<T>,
    F: Fn(T) -> Result<U, Reject> + Send + Sync + 'static,
{
    #[inline]
    fn run(
        &self,
        line: Msg<Line<'_>>,
        emit: &mut impl FnMut(Msg<U>) -> Result<(), Reject>,
    ) -> Result<(), Reject> {
        let f = &self.step.0;
        self.prev
            .run(line, &mut |msg| emit(Msg::new(msg.id, f(msg.data)?)))
    }
}

impl<T: 'static, P: Steps<T>, F: Fn(&T) -> bool + Send + Sync + 'static> Steps<T>
    for Then<P, FilterStep<F>, T>
{
    #[inline]
    fn run(
        &self,
        line: Msg<Line<'_>>,
        emit: &mut impl FnMut(Msg<T>) -> Result<(), Reject>,
    ) -> Result<(), Reject> {
        let keep = &self.step.0;
        self.prev
            .run(line, &mut |msg| if keep(&msg.data) { emit(msg) } else { Ok(()) })
    }
}

impl<T: 'static, U, P, F> Steps<U> for Then<P, FlatMapStep<F>, T>
where
    P: Steps<T>,
    F: Fn(T, &mut FanOut<'_, U>) -> Result<(), Reject> + Send + Sync + 'static,
{
    #[inline]
    fn run(
        &self,
        line: Msg<Line<'_>>,
        emit: &mut impl FnMut(Msg<U>) -> Result<(), Reject>,
    ) -> Result<(), Reject> {
        let f = &self.step.0;
        self.prev.run(line, &mut |msg| {
            f(
                msg.data,
                &mut FanOut {
                    id: msg.id,
                    emit: &mut *emit,
                },
            )
        })
    }
}

impl<T: 'static, C: Steps<T>> Stream<T, C> {
    fn then<U, S>(self, step: S) -> Stream<U, Then<C, S, T>>
    where
        Then<C, S, T>: Steps<U>,
    {
        Stream {
            source: self.source,
            steps: Then {
                prev: self.steps,
                step,
                input: PhantomData,
            },
            values: PhantomData,
        }
    }

    pub fn map<U: 'static>(self, f: impl Fn(T) -> U + Send + Sync + 'static) -> Stream<U, impl Steps<U>> {
        self.then(MapStep(f))
    }

    /// A map that can reject a record (it goes to the dead-letter file).
    pub fn try_map<U: 'static>(
        self,
        f: impl Fn(T) -> Result<U, Reject> + Send + Sync + 'static,
    ) -> Stream<U, impl Steps<U>> {
        self.then(TryMapStep(f))
    }

    pub fn filter(self, keep: impl Fn(&T) -> bool + Send + Sync + 'static) -> Stream<T, impl Steps<T>> {
        self.then(FilterStep(keep))
    }

    /// Zero or more outputs per input, pushed into a `FanOut`; returning an error
    /// rejects the input (outputs already pushed stay pushed).
    pub fn flat_map<U: 'static>(
        self,
        f: impl Fn(T, &mut FanOut<'_, U>) -> Result<(), Reject> + Send + Sync + 'static,
    ) -> Stream<U, impl Steps<U>> {
        self.then(FlatMapStep(f))
    }

    /// Splits each record into its key and the value the keyed step gets (when
    /// the step needs no more than the key, the value can be `()`). This
    /// compiles the source's chain: its line split, steps and routing become
    /// one function, called once per chunk.
    pub fn key_split<K: Key, V: 'static>(
        self,
        split: impl Fn(T) -> (K, V) + Send + Sync + 'static,
    ) -> KeyedStream<K, V> {
        let steps = self.steps;
        let chain: Chain<K, V> = Arc::new(move |chunk: ChunkLines<'_>, routes: &mut Routes<K, V>| {
            let mut line_no = chunk.first_line;
            for_each_line(chunk.data, |range| {
                let id = MsgId::new(chunk.stream, line_no);
                line_no += 1;
                let line = Line::new(chunk.data, range.clone());
                let routed = steps.run(Msg::new(id, line), &mut |msg: Msg<T>| {
                    let (key, value) = split(msg.data);
                    routes.push(msg.id, key, value);
                    Ok(())
                });
                if let Err(reject) = routed {
                    routes.rejects.push((id, reject, range));
                }
            });
            routes.count_lines(line_no - chunk.first_line);
        });
        KeyedStream {
            inputs: vec![SourceChain {
                source: self.source,
                chain,
                event_time: None,
            }],
        }
    }

    /// Keys the stream: each record goes to the shard owning `key(&record)`.
    pub fn key_by<K: Key>(self, key: impl Fn(&T) -> K + Send + Sync + 'static) -> KeyedStream<K, T> {
        self.key_split(move |value| (key(&value), value))
    }
}

/// One source and its compiled chain, with how its records carry event
/// time, if they do.
struct SourceChain<K, V> {
    source: SourceSpec,
    chain: Chain<K, V>,
    event_time: Option<EventTimeSpec<V>>,
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
/// Runs when a key's event-time timer is due (`Output::set_event_timer`):
/// the shard's watermark reached it. With the key's state, the key, and the
/// event time (ms) the timer was set for.
pub type EventTimerFn<K, S, O> = dyn Fn(&mut S, &K, u64, &mut Output<'_, O>) + Send + Sync;
/// Writes one output record as one line (without the `\n`).
pub type FormatFn<O> = dyn Fn(&O, &mut Vec<u8>) + Send + Sync;

impl<K: Key, V: Send + 'static> KeyedStream<K, V> {
    /// Each input's values mapped by `f` (`back` finds the input's own value
    /// in a mapped one, for its event time). A join's inputs pay for it with a
    /// second pass over each chunk's records (the chains are compiled
    /// already); a single-input stream never comes here.
    fn map_values<W: 'static>(self, f: fn(V) -> W, back: fn(&W) -> Option<&V>) -> KeyedStream<K, W> {
        let inputs = self
            .inputs
            .into_iter()
            .map(|input| {
                let prev = input.chain;
                let chain: Chain<K, W> = Arc::new(move |chunk, routes: &mut Routes<K, W>| {
                    let mut unmapped = routes.for_values::<V>();
                    prev(chunk, &mut unmapped);
                    routes.append_mapped(&mut unmapped, f);
                });
                SourceChain {
                    source: input.source,
                    chain,
                    event_time: input.event_time.map(|spec| spec.map(back)),
                }
            })
            .collect();
        KeyedStream { inputs }
    }

    /// Declares each record's event time (ms since the Unix epoch, or any
    /// clock the input's timestamps share) for every input of this stream so
    /// far, and how far out of order the input may be: a record may come up
    /// to `max_delay_ms` behind the highest event time before it. The
    /// keyed step then has a watermark (`Output::watermark_ms`), event-time
    /// timers and windows; records too far behind it go to the dead letters
    /// as "late" (`crate::event_time` has the rule). Declare it on each
    /// input before `join`/`union` (each keeps its own delay); every input of
    /// an event-time step must declare one.
    pub fn event_time(
        mut self,
        extract: impl Fn(&V) -> u64 + Send + Sync + 'static,
        max_delay_ms: u64,
    ) -> Self {
        let spec = EventTimeSpec::new(extract, max_delay_ms);
        for input in &mut self.inputs {
            input.event_time = Some(spec.clone());
        }
        self
    }

    /// Two streams on the same key, for a two-input keyed step: the step sees
    /// `Either::Left` for this stream's records and `Either::Right` for `other`'s.
    /// The interleaving of the two is whatever order they reach the key's shard.
    pub fn join<B: Send + 'static>(self, other: KeyedStream<K, B>) -> KeyedStream<K, Either<V, B>> {
        let mut joined = self.map_values(Either::Left, Either::left);
        joined
            .inputs
            .extend(other.map_values(Either::Right, Either::right).inputs);
        joined
    }

    /// Whether every input declared event time (`event_time`).
    pub fn has_event_time(&self) -> bool {
        self.inputs.iter().all(|input| input.event_time.is_some())
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
            on_event_timer: None,
            allowed_lateness_ms: 0,
            idle_timeout_ms: Some(crate::event_time::IDLE_TIMEOUT_MS),
        }
    }
}

impl<A, B> Either<A, B> {
    pub fn left(&self) -> Option<&A> {
        match self {
            Either::Left(a) => Some(a),
            Either::Right(_) => None,
        }
    }

    pub fn right(&self) -> Option<&B> {
        match self {
            Either::Left(_) => None,
            Either::Right(b) => Some(b),
        }
    }
}

/// A keyed stream with its stateful step, waiting for a sink format.
pub struct Stateful<K, V, S, O> {
    inputs: Vec<SourceChain<K, V>>,
    step: Arc<StepFn<K, V, S, O>>,
    on_end: Option<Arc<EndFn<K, S, O>>>,
    on_timer: Option<Arc<TimerFn<K, S, O>>>,
    on_event_timer: Option<Arc<EventTimerFn<K, S, O>>>,
    allowed_lateness_ms: u64,
    idle_timeout_ms: Option<u64>,
}

impl<K, V, S, O> Stateful<K, V, S, O> {
    /// The handler of the step's event-time timers: when the shard's
    /// watermark reaches a timer the step set for a key
    /// (`Output::set_event_timer`), it runs with that key's state, the key
    /// and the event time (ms) the timer was set for. Due timers fire in
    /// (time, key) order, after the unit (batch) whose watermark passed
    /// them; at the end of bounded input the watermark goes to +∞ and every
    /// pending one fires, before `on_end`. Like processing-time timers they
    /// are keyed state: checkpointed and restored.
    pub fn on_event_timer(
        mut self,
        f: impl Fn(&mut S, &K, u64, &mut Output<'_, O>) + Send + Sync + 'static,
    ) -> Self {
        self.on_event_timer = Some(Arc::new(f));
        self
    }

    /// How far behind the watermark a record may still come (ms, 0 by
    /// default): a record whose event time is below its watermark minus this
    /// is *late* and goes to the dead letters with the reason "late" instead
    /// of the step. (`KeyedStream::window` sets it from its `WindowSpec`.)
    pub fn allowed_lateness_ms(mut self, ms: u64) -> Self {
        self.allowed_lateness_ms = ms;
        self
    }

    /// After how long (ms on the shard's injected clock) without a chunk
    /// applied an input that has not ended is left out of the watermark's
    /// minimum, so an idle input does not stall the others
    /// (`event_time::IDLE_TIMEOUT_MS` by default; `None`: an input holds the
    /// watermark back however long it is silent, which makes a multi-input
    /// step's output a function of its input alone).
    pub fn idle_timeout_ms(mut self, ms: Option<u64>) -> Self {
        self.idle_timeout_ms = ms;
        self
    }

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

    /// The sink format: the pipeline is complete. Panics (a programming
    /// error, found at build time) when some inputs declare event time and
    /// others do not, or an event-time timer handler has no event time.
    pub fn sink(self, format: impl Fn(&O, &mut Vec<u8>) + Send + Sync + 'static) -> Dataflow<K, V, S, O> {
        let timed = self.inputs.iter().filter(|i| i.event_time.is_some()).count();
        assert!(
            timed == 0 || timed == self.inputs.len(),
            "{timed} of the step's {} inputs declare event time: declare it on every input (KeyedStream::event_time)",
            self.inputs.len()
        );
        assert!(
            self.on_event_timer.is_none() || timed > 0,
            "an event-time timer handler needs event time: call KeyedStream::event_time on the inputs"
        );
        let mut sources = Vec::with_capacity(self.inputs.len());
        let mut chains = Vec::with_capacity(self.inputs.len());
        let mut event_times = Vec::with_capacity(self.inputs.len());
        for input in self.inputs {
            sources.push(input.source);
            chains.push(input.chain);
            event_times.push(input.event_time);
        }
        Dataflow {
            sources,
            logic: Logic {
                chains,
                event_times,
                step: self.step,
                on_end: self.on_end,
                on_timer: self.on_timer,
                on_event_timer: self.on_event_timer,
                allowed_lateness_ms: self.allowed_lateness_ms,
                idle_timeout_ms: self.idle_timeout_ms,
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

/// The logic of a dataflow: `chains[i]` turns chunks of `sources[i]` into
/// routed keyed records (with their event time if `event_times[i]` says
/// how); `step` applies one to its key's state.
pub struct Logic<K, V, S, O> {
    pub chains: Vec<Chain<K, V>>,
    /// Parallel to `chains`: all `None` (no event time) or all `Some`.
    pub event_times: Vec<Option<EventTimeSpec<V>>>,
    pub step: Arc<StepFn<K, V, S, O>>,
    pub on_end: Option<Arc<EndFn<K, S, O>>>,
    pub on_timer: Option<Arc<TimerFn<K, S, O>>>,
    pub on_event_timer: Option<Arc<EventTimerFn<K, S, O>>>,
    pub allowed_lateness_ms: u64,
    pub idle_timeout_ms: Option<u64>,
    pub format: Arc<FormatFn<O>>,
}

impl<K, V, S, O> Logic<K, V, S, O> {
    /// The logic as the shards of a run see it: one input per *stream*,
    /// each parsing with its source's chain (a spread source is one stream
    /// per process; `sources[i]` is stream `i`'s source).
    pub fn for_streams(&self, sources: impl Iterator<Item = u32>) -> Self {
        let (chains, event_times) = sources
            .map(|s| {
                let s = s as usize;
                (Arc::clone(&self.chains[s]), self.event_times[s].clone())
            })
            .unzip();
        Logic {
            chains,
            event_times,
            step: Arc::clone(&self.step),
            on_end: self.on_end.clone(),
            on_timer: self.on_timer.clone(),
            on_event_timer: self.on_event_timer.clone(),
            allowed_lateness_ms: self.allowed_lateness_ms,
            idle_timeout_ms: self.idle_timeout_ms,
            format: Arc::clone(&self.format),
        }
    }

    /// Whether the step's inputs carry event time.
    pub fn has_event_time(&self) -> bool {
        self.event_times.iter().any(Option::is_some)
    }
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
    /// Event-time timers set (due event time, the input they derive from),
    /// when the step has an event-time timer handler.
    pub(crate) event_timers: Option<&'a mut Vec<(u64, MsgId)>>,
    /// The event time of the record being processed (or the timer firing).
    pub(crate) event_time_ms: Option<u64>,
    /// The shard's watermark as the step runs.
    pub(crate) watermark_ms: Option<u64>,
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

    /// Sets an event-time timer for this record's key, due at event time
    /// `at_ms`: the step's `on_event_timer` handler runs with the key's state
    /// once the shard's watermark reaches `at_ms` (one timer per key and
    /// instant). Panics without an `on_event_timer` handler, and in `on_end`.
    pub fn set_event_timer(&mut self, at_ms: u64) {
        match self.event_timers.as_deref_mut() {
            Some(timers) => timers.push((at_ms, self.id)),
            None => panic!(
                "Output::set_event_timer needs an event-time timer handler (Stateful::on_event_timer), and not in on_end"
            ),
        }
    }

    /// The event time (ms) of the record being processed, as its input's
    /// `KeyedStream::event_time` extracts it; in an event-time timer
    /// handler, the time the timer was set for. `None` without event time
    /// and in `on_end`.
    pub fn event_time_ms(&self) -> Option<u64> {
        self.event_time_ms
    }

    /// The shard's watermark (ms) as the step runs: every record still to
    /// come with an earlier event time minus the allowed lateness is late.
    /// `u64::MAX` once all input ended; `None` without event time.
    pub fn watermark_ms(&self) -> Option<u64> {
        self.watermark_ms
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
