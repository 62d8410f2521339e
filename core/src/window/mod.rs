//! Event-time windows of the keyed step: tumbling, hopping and session
//! windows with incremental aggregation (`Aggregate`), and a windowed
//! two-stream join (`Join`), written over the public dataflow API: a
//! window's state is the key's state (`Windows`), a window closes on an
//! event-time timer, so checkpoints, restores and the audit log cover them
//! as they cover any step.
//!
//! A window is `[start_ms, end_ms)` of event time. It closes, emitting its
//! results as `WindowResult`s (key, start, end, value), once the shard's
//! watermark reaches `end_ms + allowed_lateness_ms`: from then on any record
//! that would fall in it is late (`crate::event_time`) and dead-lettered,
//! so a window emits once, complete. Its state is freed as it closes:
//! memory is the open windows' (`OPEN_WINDOW_OVERHEAD_BYTES` each plus the
//! accumulator) and the pending timers'.

mod aggregate;
mod join;

pub use aggregate::{Aggregate, Average, Count, Max, Mean, Min, Sum, TopN};
pub use join::{Join, Sides};

use crate::flow::{KeyedStream, Output, Stateful};
use crate::key::Key;
use crate::wire::{Wire, WireError};
use crate::Either;
use std::sync::Arc;

/// The most windows a hopping window spec may put one record in
/// (`size_ms / slide_ms`): each is an accumulator and a timer per key.
pub const HOPPING_WINDOWS_PER_RECORD_MAX: u64 = 1024;

/// Bytes an open window takes besides its accumulator's own heap: its
/// bounds and its slot in the key's window list (the timer that closes it
/// adds a `BTreeMap` entry: about 40 bytes plus the key).
pub const OPEN_WINDOW_OVERHEAD_BYTES: usize = 16;

/// Which windows a record falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Back to back, `size_ms` long: `[k·size, (k+1)·size)`.
    Tumbling { size_ms: u64 },
    /// `size_ms` long, one starting every `slide_ms`: a record is in
    /// `size_ms / slide_ms` of them (rounded up).
    Hopping { size_ms: u64, slide_ms: u64 },
    /// Per key, records less than `gap_ms` apart (a record's window is
    /// `[t, t + gap)`; windows that overlap or touch merge).
    Session { gap_ms: u64 },
}

/// A window kind and how long after its end a window waits for late records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub kind: WindowKind,
    pub allowed_lateness_ms: u64,
}

impl WindowSpec {
    pub fn tumbling(size_ms: u64) -> Self {
        assert!(size_ms > 0, "a tumbling window needs a size above 0 ms");
        WindowSpec::of(WindowKind::Tumbling { size_ms })
    }

    pub fn hopping(size_ms: u64, slide_ms: u64) -> Self {
        assert!(
            size_ms > 0 && slide_ms > 0,
            "a hopping window needs a size and a slide above 0 ms"
        );
        assert!(
            size_ms.div_ceil(slide_ms) <= HOPPING_WINDOWS_PER_RECORD_MAX,
            "a hopping window of {size_ms} ms sliding by {slide_ms} ms puts a record in more than {HOPPING_WINDOWS_PER_RECORD_MAX} windows"
        );
        WindowSpec::of(WindowKind::Hopping { size_ms, slide_ms })
    }

    pub fn session(gap_ms: u64) -> Self {
        assert!(gap_ms > 0, "a session window needs a gap above 0 ms");
        WindowSpec::of(WindowKind::Session { gap_ms })
    }

    /// Windows wait `ms` past their end for late records (0 by default).
    pub fn allowed_lateness_ms(self, ms: u64) -> Self {
        WindowSpec {
            allowed_lateness_ms: ms,
            ..self
        }
    }

    fn of(kind: WindowKind) -> Self {
        WindowSpec {
            kind,
            allowed_lateness_ms: 0,
        }
    }

    /// The event time a window ending at `end_ms` closes at.
    fn closes_at_ms(&self, end_ms: u64) -> u64 {
        end_ms.saturating_add(self.allowed_lateness_ms)
    }
}

/// One closed window's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowResult<K, T> {
    pub key: K,
    pub start_ms: u64,
    pub end_ms: u64,
    pub value: T,
}

/// An open window of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenWindow<A> {
    pub start_ms: u64,
    pub end_ms: u64,
    pub acc: A,
}

/// A key's open windows, by start: the keyed state of a windowed step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows<A> {
    open: Vec<OpenWindow<A>>,
}

impl<A> Default for Windows<A> {
    fn default() -> Self {
        Windows { open: Vec::new() }
    }
}

impl<A: Default> Windows<A> {
    /// The open windows, by start.
    pub fn open(&self) -> &[OpenWindow<A>] {
        &self.open
    }

    /// Adds a record at `at_ms` to its windows (opening or merging them as
    /// `spec` says); `closes_at` is told the close time of each window
    /// opened or grown, for its timer.
    pub fn add<V, G: Aggregate<V, Acc = A>>(
        &mut self,
        spec: &WindowSpec,
        aggregate: &G,
        at_ms: u64,
        value: &V,
        closes_at: &mut dyn FnMut(u64),
    ) {
        match spec.kind {
            WindowKind::Tumbling { size_ms } => {
                let start_ms = at_ms - at_ms % size_ms;
                self.add_fixed(spec, aggregate, start_ms, size_ms, value, closes_at);
            }
            WindowKind::Hopping { size_ms, slide_ms } => {
                let last_start_ms = at_ms - at_ms % slide_ms;
                let first_start_ms = match (at_ms + 1).checked_sub(size_ms) {
                    Some(earliest) => earliest.div_ceil(slide_ms) * slide_ms,
                    None => 0,
                };
                let mut start_ms = first_start_ms;
                while start_ms <= last_start_ms {
                    self.add_fixed(spec, aggregate, start_ms, size_ms, value, closes_at);
                    start_ms += slide_ms;
                }
            }
            WindowKind::Session { gap_ms } => {
                self.add_session(spec, aggregate, at_ms, gap_ms, value, closes_at)
            }
        }
    }

    fn add_fixed<V, G: Aggregate<V, Acc = A>>(
        &mut self,
        spec: &WindowSpec,
        aggregate: &G,
        start_ms: u64,
        size_ms: u64,
        value: &V,
        closes_at: &mut dyn FnMut(u64),
    ) {
        let at = self.open.partition_point(|w| w.start_ms < start_ms);
        if self.open.get(at).is_none_or(|w| w.start_ms != start_ms) {
            let end_ms = start_ms.saturating_add(size_ms);
            self.open.insert(
                at,
                OpenWindow {
                    start_ms,
                    end_ms,
                    acc: A::default(),
                },
            );
            closes_at(spec.closes_at_ms(end_ms));
        }
        aggregate.add(&mut self.open[at].acc, value);
    }

    fn add_session<V, G: Aggregate<V, Acc = A>>(
        &mut self,
        spec: &WindowSpec,
        aggregate: &G,
        at_ms: u64,
        gap_ms: u64,
        value: &V,
        closes_at: &mut dyn FnMut(u64),
    ) {
        let mut session = OpenWindow {
            start_ms: at_ms,
            end_ms: at_ms.saturating_add(gap_ms),
            acc: A::default(),
        };
        aggregate.add(&mut session.acc, value);
        // Sessions of a key never overlap, so the ones this record reaches
        // are consecutive.
        let first = self.open.partition_point(|w| w.end_ms < session.start_ms);
        let last = self.open.partition_point(|w| w.start_ms <= session.end_ms);
        let grew = !(first + 1 == last && self.open[first].end_ms >= session.end_ms);
        for merged in self.open.drain(first..last.max(first)) {
            session.start_ms = session.start_ms.min(merged.start_ms);
            session.end_ms = session.end_ms.max(merged.end_ms);
            aggregate.merge(&mut session.acc, merged.acc);
        }
        if grew {
            closes_at(spec.closes_at_ms(session.end_ms));
        }
        self.open.insert(first, session);
    }

    /// Closes every window that closes at or before `at_ms` (in start
    /// order), handing each to `closed`, and frees it. A key's windows end
    /// in start order (all of one size, or sessions that never overlap), so
    /// the closing ones are a prefix.
    pub fn close_due(&mut self, spec: &WindowSpec, at_ms: u64, closed: &mut dyn FnMut(OpenWindow<A>)) {
        let due = self
            .open
            .partition_point(|w| spec.closes_at_ms(w.end_ms) <= at_ms);
        debug_assert!(self.open[due..]
            .iter()
            .all(|w| spec.closes_at_ms(w.end_ms) > at_ms));
        for window in self.open.drain(..due) {
            closed(window);
        }
        if self.open.is_empty() {
            // A key with no open window keeps no window memory.
            self.open = Vec::new();
        }
    }
}

impl<A: Wire> Wire for Windows<A> {
    fn encode(&self, out: &mut Vec<u8>) {
        (self.open.len() as u32).encode(out);
        for window in &self.open {
            window.start_ms.encode(out);
            window.end_ms.encode(out);
            window.acc.encode(out);
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        let count = u32::decode(input)?;
        let mut open = Vec::new();
        for _ in 0..count {
            let window = OpenWindow {
                start_ms: u64::decode(input)?,
                end_ms: u64::decode(input)?,
                acc: A::decode(input)?,
            };
            if open
                .last()
                .is_some_and(|w: &OpenWindow<A>| w.start_ms >= window.start_ms)
            {
                return Err(WireError::Invalid("windows out of order"));
            }
            open.push(window);
        }
        Ok(Windows { open })
    }
}

/// The keyed step of a windowed aggregation.
pub type WindowStep<K, V, A> =
    Stateful<K, V, Windows<<A as Aggregate<V>>::Acc>, WindowResult<K, <A as Aggregate<V>>::Out>>;

impl<K: Key, V: Send + 'static> KeyedStream<K, V> {
    /// Windows on event time, per key (`crate::window`): each record is
    /// folded into its windows with `aggregate`, and each window emits
    /// `aggregate`'s results as `WindowResult`s once the watermark passes
    /// its end plus `spec.allowed_lateness_ms`. Needs event time
    /// (`KeyedStream::event_time`) on every input.
    pub fn window<A: Aggregate<V>>(self, spec: WindowSpec, aggregate: A) -> WindowStep<K, V, A> {
        assert!(
            self.has_event_time(),
            "KeyedStream::window needs event time: call .event_time(...) on every input first"
        );
        let aggregate = Arc::new(aggregate);
        let closing = Arc::clone(&aggregate);
        self.stateful(move |windows: &mut Windows<A::Acc>, _: &K, msg, out| {
            let at_ms = out
                .event_time_ms()
                .expect("a windowed step's inputs have event time");
            windows.add(&spec, &*aggregate, at_ms, &msg.data, &mut |close_ms| {
                out.set_event_timer(close_ms)
            });
        })
        .on_event_timer(move |windows, key, at_ms, out| {
            windows.close_due(&spec, at_ms, &mut |window| {
                emit_window(&*closing, key, window, out)
            });
        })
        .allowed_lateness_ms(spec.allowed_lateness_ms)
    }
}

impl<K: Key, A: Wire + Clone + Send + 'static, B: Wire + Clone + Send + 'static>
    KeyedStream<K, Either<A, B>>
{
    /// A windowed join of two streams (`KeyedStream::join`): records of both
    /// with the same key in the same window are paired, `pair(left, right)`
    /// for each, emitted when the window closes (left records in input
    /// order, each with every right one in input order).
    pub fn window_join<O: 'static>(
        self,
        spec: WindowSpec,
        pair: impl Fn(&A, &B) -> O + Send + Sync + 'static,
    ) -> WindowStep<K, Either<A, B>, Join<A, B, O>> {
        self.window(spec, Join::new(pair))
    }
}

fn emit_window<K: Key, V, A: Aggregate<V>>(
    aggregate: &A,
    key: &K,
    window: OpenWindow<A::Acc>,
    out: &mut Output<'_, WindowResult<K, A::Out>>,
) {
    let (start_ms, end_ms) = (window.start_ms, window.end_ms);
    aggregate.finish(window.acc, &mut |value| {
        out.emit(WindowResult {
            key: key.detach(),
            start_ms,
            end_ms,
            value,
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_all(spec: &WindowSpec, times: &[u64]) -> (Windows<u64>, Vec<u64>) {
        let mut windows = Windows::default();
        let mut timers = Vec::new();
        for at in times {
            windows.add(spec, &Count, *at, &(), &mut |close| timers.push(close));
        }
        (windows, timers)
    }

    fn bounds(windows: &Windows<u64>) -> Vec<(u64, u64, u64)> {
        windows
            .open()
            .iter()
            .map(|w| (w.start_ms, w.end_ms, w.acc))
            .collect()
    }

    #[test]
    fn sessions_merge_across_a_gap_and_a_bridging_record_joins_two() {
        let spec = WindowSpec::session(10);
        let (mut windows, timers) = add_all(&spec, &[100, 105, 130, 140, 118]);
        // 118's [118, 128) touches neither [100, 115) nor [130, 150).
        assert_eq!(
            bounds(&windows),
            vec![(100, 115, 2), (118, 128, 1), (130, 150, 2)]
        );
        assert_eq!(
            timers,
            vec![110, 115, 140, 150, 128],
            "a timer whenever a session ends later"
        );
        // 120's [120, 130) touches [130, 150): one session from 118.
        windows.add(&spec, &Count, 120, &(), &mut |_| {});
        assert_eq!(bounds(&windows), vec![(100, 115, 2), (118, 150, 4)]);
        let mut closed = Vec::new();
        windows.close_due(&spec, 149, &mut |w| closed.push((w.start_ms, w.end_ms, w.acc)));
        assert_eq!(closed, vec![(100, 115, 2)]);
        // 108's [108, 118) bridges into the open one.
        windows.add(&spec, &Count, 108, &(), &mut |_| {});
        assert_eq!(bounds(&windows), vec![(108, 150, 5)]);
        windows.close_due(&spec, 150, &mut |_| {});
        assert!(
            windows.open().is_empty() && windows.open.capacity() == 0,
            "closed windows are freed"
        );
    }

    #[test]
    fn hopping_windows_cover_a_record_from_time_zero_on() {
        let spec = WindowSpec::hopping(30, 10);
        let (windows, _) = add_all(&spec, &[5, 25]);
        assert_eq!(bounds(&windows), vec![(0, 30, 2), (10, 40, 1), (20, 50, 1)]);
        let late = WindowSpec::tumbling(10).allowed_lateness_ms(5);
        let (mut windows, timers) = add_all(&late, &[3, 12]);
        assert_eq!(timers, vec![15, 25], "closing waits for the lateness");
        windows.close_due(&late, 24, &mut |_| {});
        assert_eq!(bounds(&windows), vec![(10, 20, 1)]);
    }

    #[test]
    fn an_open_window_costs_its_bounds_and_accumulator_and_round_trips() {
        // The number `OPEN_WINDOW_OVERHEAD_BYTES` states: a count window
        // is 24 bytes in memory and 24 in a snapshot.
        assert_eq!(
            std::mem::size_of::<OpenWindow<u64>>(),
            OPEN_WINDOW_OVERHEAD_BYTES + 8
        );
        let (windows, _) = add_all(&WindowSpec::tumbling(10), &[1, 11, 21]);
        let mut bytes = Vec::new();
        windows.encode(&mut bytes);
        assert_eq!(bytes.len(), 4 + 3 * (OPEN_WINDOW_OVERHEAD_BYTES + 8));
        assert_eq!(Windows::<u64>::decode(&mut &bytes[..]).unwrap(), windows);
        for cut in 0..bytes.len() {
            assert!(Windows::<u64>::decode(&mut &bytes[..cut]).is_err());
        }
    }
}
