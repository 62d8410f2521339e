//! Event time and watermarks of the keyed step (`KeyedStream::event_time`).
//!
//! # The watermark rule
//!
//! Each input (stream) of an event-time step declares how a record's event
//! time (ms) is read from its value and its bounded out-of-orderness
//! `max_delay_ms`. A stream's watermark is the highest event time among its
//! records so far, *in input order*, minus `max_delay_ms`:
//!
//! * The shard that parses chunk `c` knows each record's event time. With
//!   every record it routes it sends the highest event time of the chunk up
//!   to and including that record (`Batch::event_max_ms`), and with the
//!   chunk's `last` batch to every receiver the chunk's highest
//!   (`Batch::chunk_event_max_ms`), so a receiver hears of the records that
//!   went to other shards too.
//! * A receiver applies a stream's chunks in order (`crate::shard`), so the
//!   highest event time it has heard of for the stream (`StreamTime::max_ms`)
//!   is, at each record, the highest of all records before it in the input:
//!   a function of the input, not of the chunking or the threads.
//! * A record's watermark is `max(its stream's watermark, the shard's
//!   watermark)`; it is *late* when its event time is below that minus the
//!   step's `allowed_lateness_ms`: it goes to the dead letters with the reason
//!   "late" (counted in `ShardCounters::late`) and never reaches the step.
//! * The shard's watermark is the minimum over its streams. A stream that
//!   ended counts as +∞. A stream that has not ended but had no chunk
//!   applied for `idle_timeout_ms` (on the shard's injected clock, read once
//!   per unit and recorded in the audit log like any reading) is *idle* and
//!   left out of the minimum, so a silent input does not stall the others;
//!   if every stream left is idle, the watermark is the highest of theirs.
//!   The shard's watermark never goes back. Once every stream ended it is
//!   +∞ (`u64::MAX`): every pending event-time timer fires.
//!
//! Event-time timers fire in (time, key) order at the end of the unit
//! (batch) that raised the watermark past them, as part of that unit; so
//! for a single input the step's output is a function of the input alone
//! (each key's outputs in the same order at any worker count and chunking);
//! with several inputs it is a function of the input and of how the
//! streams' units interleaved on the shard (and, with an idle timeout, of
//! when an input fell silent).
//!
//! A dataflow without event time pays one branch per record for all this
//! (`Batch::event_max_ms` stays empty and allocates nothing).

use crate::wire::{Wire, WireError};
use std::sync::Arc;

/// `Stateful::idle_timeout_ms` by default: an input silent this long (ms
/// of the shard's clock) stops holding the watermark back.
pub const IDLE_TIMEOUT_MS: u64 = 5_000;

/// The watermark once every input ended: everything is due.
pub const WATERMARK_END_MS: u64 = u64::MAX;

/// Bugs the simulator plants to show its oracle catches them (all off in
/// production; `ShardCore::plant_event_time_bugs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventTimeBugs {
    /// A stream's watermark is its highest event time, without the delay.
    pub watermark_ignores_delay: bool,
    /// Event-time timers fire when the watermark is 1 ms short of them.
    pub fire_one_ms_early: bool,
}

/// How one input's records carry event time: a reader of the value and the
/// input's bounded out-of-orderness.
pub struct EventTimeSpec<V> {
    extract: Arc<dyn Fn(&V) -> u64 + Send + Sync>,
    max_delay_ms: u64,
}

impl<V> Clone for EventTimeSpec<V> {
    fn clone(&self) -> Self {
        EventTimeSpec {
            extract: Arc::clone(&self.extract),
            max_delay_ms: self.max_delay_ms,
        }
    }
}

impl<V: 'static> EventTimeSpec<V> {
    pub fn new(extract: impl Fn(&V) -> u64 + Send + Sync + 'static, max_delay_ms: u64) -> Self {
        EventTimeSpec {
            extract: Arc::new(extract),
            max_delay_ms,
        }
    }

    /// The same spec over a wider value type that holds a `V` (an input of
    /// a join: `Either::Left` of this input's values). `narrow` finds it.
    pub(crate) fn map<W: 'static>(self, narrow: fn(&W) -> Option<&V>) -> EventTimeSpec<W> {
        let extract = self.extract;
        EventTimeSpec {
            extract: Arc::new(move |wide: &W| {
                let value = narrow(wide).expect("an input's records are of its own side of the join");
                extract(value)
            }),
            max_delay_ms: self.max_delay_ms,
        }
    }
}

impl<V> EventTimeSpec<V> {
    /// The event time of `value` (ms).
    pub fn event_time_ms(&self, value: &V) -> u64 {
        (self.extract)(value)
    }

    pub fn max_delay_ms(&self) -> u64 {
        self.max_delay_ms
    }
}

/// One stream's event-time progress on a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamTime {
    max_delay_ms: u64,
    /// The highest event time heard of in the stream's applied input.
    max_ms: Option<u64>,
    ended: bool,
    /// The clock reading (µs) of the unit that last completed one of its
    /// chunks (or of the first unit the shard read the clock in).
    last_active_us: Option<u64>,
}

impl StreamTime {
    fn watermark_ms(&self) -> u64 {
        match (self.ended, self.max_ms) {
            (true, _) => WATERMARK_END_MS,
            (false, Some(max_ms)) => max_ms.saturating_sub(self.max_delay_ms),
            (false, None) => 0,
        }
    }

    fn is_idle(&self, now_us: Option<u64>, idle_timeout_ms: Option<u64>) -> bool {
        match (now_us, idle_timeout_ms, self.last_active_us) {
            (Some(now_us), Some(timeout_ms), Some(since_us)) => {
                now_us.saturating_sub(since_us) >= timeout_ms.saturating_mul(1000)
            }
            _ => false,
        }
    }
}

/// A shard's watermarks: one per stream and the shard's, the minimum (sans-IO:
/// the shard tells it what it applied and, for the idle rule, the unit's
/// clock reading).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermarks {
    streams: Vec<StreamTime>,
    idle_timeout_ms: Option<u64>,
    watermark_ms: u64,
    bugs: EventTimeBugs,
}

impl Watermarks {
    /// For streams with these delays (ms).
    pub fn new(max_delays_ms: impl IntoIterator<Item = u64>, idle_timeout_ms: Option<u64>) -> Self {
        let streams: Vec<StreamTime> = max_delays_ms
            .into_iter()
            .map(|max_delay_ms| StreamTime {
                max_delay_ms,
                max_ms: None,
                ended: false,
                last_active_us: None,
            })
            .collect();
        assert!(!streams.is_empty(), "event time needs an input");
        Watermarks {
            streams,
            idle_timeout_ms,
            watermark_ms: 0,
            bugs: EventTimeBugs::default(),
        }
    }

    /// Plants `bugs` (tests only).
    pub fn plant_bugs(&mut self, bugs: EventTimeBugs) {
        self.bugs = bugs;
        if bugs.watermark_ignores_delay {
            self.streams.iter_mut().for_each(|time| time.max_delay_ms = 0);
        }
    }

    /// The watermark up to which event-time timers are due.
    pub fn timers_due_ms(&self) -> u64 {
        match self.bugs.fire_one_ms_early {
            true => self.watermark_ms.saturating_add(1),
            false => self.watermark_ms,
        }
    }

    /// A record of `stream` whose chunk's highest event time up to it is
    /// `chunk_max_ms`: its watermark (ms), against which it is late or not.
    pub fn record(&mut self, stream: u32, chunk_max_ms: u64) -> u64 {
        let time = &mut self.streams[stream as usize];
        debug_assert!(!time.ended, "a record after its stream's end");
        time.max_ms = Some(time.max_ms.map_or(chunk_max_ms, |max| max.max(chunk_max_ms)));
        time.watermark_ms().max(self.watermark_ms)
    }

    /// Whether a record at `event_ms` with watermark `watermark_ms` is late.
    pub fn is_late(event_ms: u64, watermark_ms: u64, allowed_lateness_ms: u64) -> bool {
        event_ms < watermark_ms.saturating_sub(allowed_lateness_ms)
    }

    /// `stream` completed a chunk whose highest event time is `chunk_max_ms`
    /// (`None`: it had no record), in a unit that read the clock at `now_us`
    /// if it did.
    pub fn chunk_done(&mut self, stream: u32, chunk_max_ms: Option<u64>, now_us: Option<u64>) {
        let time = &mut self.streams[stream as usize];
        if let Some(chunk_max_ms) = chunk_max_ms {
            time.max_ms = Some(time.max_ms.map_or(chunk_max_ms, |max| max.max(chunk_max_ms)));
        }
        if now_us.is_some() {
            time.last_active_us = now_us;
        }
    }

    /// `stream` ended: it holds nothing back any more.
    pub fn ended(&mut self, stream: u32) {
        self.streams[stream as usize].ended = true;
    }

    /// Whether the idle rule needs a clock reading in each unit (more than
    /// one stream and an idle timeout).
    pub fn wants_clock(&self) -> bool {
        self.idle_timeout_ms.is_some() && self.streams.len() > 1
    }

    /// Recomputes the shard's watermark after a unit (read at `now_us` if it
    /// read the clock) and returns it: the minimum over the streams that are
    /// neither ended nor idle; if all left are idle, the highest of theirs;
    /// +∞ once all ended. It never goes back.
    pub fn advance(&mut self, now_us: Option<u64>) -> u64 {
        for time in &mut self.streams {
            // An input's silence counts from the first reading the shard took.
            if time.last_active_us.is_none() {
                time.last_active_us = now_us;
            }
        }
        let live = self.streams.iter().filter(|t| !t.ended);
        let active_min = live
            .clone()
            .filter(|t| !t.is_idle(now_us, self.idle_timeout_ms))
            .map(StreamTime::watermark_ms)
            .min();
        let candidate = match active_min {
            Some(min) => min,
            None => live
                .map(StreamTime::watermark_ms)
                .max()
                .unwrap_or(WATERMARK_END_MS),
        };
        self.watermark_ms = self.watermark_ms.max(candidate);
        self.watermark_ms
    }

    /// The shard's watermark (ms).
    pub fn watermark_ms(&self) -> u64 {
        self.watermark_ms
    }

    /// What a snapshot keeps: each stream's highest event time and the
    /// shard's watermark (idleness restarts with the recovered life).
    pub fn encode(&self, out: &mut Vec<u8>) {
        (self.streams.len() as u32).encode(out);
        for time in &self.streams {
            time.max_ms.encode(out);
        }
        self.watermark_ms.encode(out);
    }

    /// Reads back what `encode` wrote into watermarks of the same streams.
    pub fn decode_into(&mut self, input: &mut &[u8]) -> Result<(), WireError> {
        let streams = u32::decode(input)? as usize;
        if streams != self.streams.len() {
            return Err(WireError::Invalid(
                "a snapshot's event-time streams differ from the dataflow's",
            ));
        }
        for time in &mut self.streams {
            time.max_ms = Option::<u64>::decode(input)?;
            time.last_active_us = None;
        }
        self.watermark_ms = u64::decode(input)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_records_watermark_is_the_running_max_minus_the_delay() {
        let mut marks = Watermarks::new([10], None);
        assert_eq!(marks.record(0, 100), 90);
        assert!(!Watermarks::is_late(95, 90, 0));
        // A later record of the same chunk with a lower time keeps the max.
        assert_eq!(marks.record(0, 100), 90);
        assert!(Watermarks::is_late(89, 90, 0));
        assert!(!Watermarks::is_late(89, 90, 1));
        marks.chunk_done(0, Some(150), None);
        assert_eq!(marks.advance(None), 140);
        marks.ended(0);
        assert_eq!(marks.advance(None), WATERMARK_END_MS);
    }

    #[test]
    fn the_shard_watermark_is_the_minimum_over_streams_and_an_ended_one_is_infinite() {
        let mut marks = Watermarks::new([0, 5], None);
        marks.chunk_done(0, Some(100), None);
        assert_eq!(marks.advance(None), 0, "stream 1 has no record yet");
        marks.chunk_done(1, Some(50), None);
        assert_eq!(marks.advance(None), 45);
        marks.ended(1);
        assert_eq!(marks.advance(None), 100);
        // Never back, even if a stream's own is lower.
        assert_eq!(marks.record(0, 10), 100);
    }

    #[test]
    fn an_idle_stream_is_left_out_and_all_idle_takes_the_highest() {
        let mut marks = Watermarks::new([0, 0], Some(1));
        assert!(marks.wants_clock());
        marks.chunk_done(0, Some(100), Some(0));
        marks.chunk_done(1, Some(20), Some(0));
        assert_eq!(marks.advance(Some(500)), 20, "not idle yet");
        marks.chunk_done(0, Some(200), Some(1_500));
        assert_eq!(marks.advance(Some(1_500)), 200, "stream 1 idle for 1.5 ms");
        assert_eq!(marks.advance(Some(10_000)), 200, "both idle: the highest");
        assert_eq!(
            marks.record(1, 30),
            200,
            "a record of an idle stream meets the shard's"
        );
    }

    #[test]
    fn watermarks_round_trip_through_a_snapshot() {
        let mut marks = Watermarks::new([3, 4], None);
        marks.chunk_done(0, Some(30), None);
        marks.chunk_done(1, Some(40), None);
        marks.advance(None);
        let mut bytes = Vec::new();
        marks.encode(&mut bytes);
        let mut back = Watermarks::new([3, 4], None);
        back.decode_into(&mut &bytes[..]).unwrap();
        assert_eq!(back, marks);
        let mut other = Watermarks::new([3], None);
        assert!(other.decode_into(&mut &bytes[..]).is_err());
    }
}
