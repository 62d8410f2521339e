//! Processing-time timers of the keyed step (`Output::set_timer`,
//! `Stateful::on_timer`).
//!
//! A timer belongs to a key and is due at a processing time (UTC µs, the
//! step's injected `Clock`). The shard fires the timers that are due as one
//! *unit* of its own, between batches: one clock reading for all of them,
//! recorded in the audit log (`timers-fired`) like a batch's, so a replay
//! fires the same timers at the same place in the shard's order. Timers are
//! part of the keyed state: every snapshot holds all of them.
//!
//! A key has at most one timer per instant (setting it again keeps the
//! first); timers due at the same instant fire in key order, so the order is
//! a function of the state alone. At the end of bounded input, timers still
//! pending do not fire: the run ends when its input is in.

use crate::ids::MsgId;
use crate::key::Key;
use crate::wire::{Wire, WireError};
use std::collections::BTreeMap;

/// The pending timers of one shard: (due, key) → the input whose processing
/// set it (what the handler's output derives from, unless it says otherwise).
#[derive(Debug)]
pub struct Timers<K> {
    due: BTreeMap<(u64, K), MsgId>,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Timers { due: BTreeMap::new() }
    }
}

impl<K: Key + Wire> Timers<K> {
    /// Sets `key`'s timer at `at_us`, set by input `by`; a second one at the
    /// same instant is the same timer.
    pub fn set(&mut self, at_us: u64, key: &K, by: MsgId) {
        self.due.entry((at_us, key.detach())).or_insert(by);
    }

    /// When the earliest timer is due.
    pub fn first_due_us(&self) -> Option<u64> {
        self.due.first_key_value().map(|((at, _), _)| *at)
    }

    /// Takes every timer due at or before `now_us`, in firing order. Timers
    /// their handlers set meanwhile wait for the next unit, even if due.
    pub fn take_due(&mut self, now_us: u64) -> Vec<(u64, K, MsgId)> {
        let mut due = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now_us {
                break;
            }
            let ((at, key), by) = entry.remove_entry();
            due.push((at, key, by));
        }
        due
    }

    pub fn len(&self) -> usize {
        self.due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }

    /// Every pending timer, in firing order (a snapshot holds all of them).
    pub fn encode(&self, out: &mut Vec<u8>) {
        (self.due.len() as u64).encode(out);
        for ((at, key), by) in &self.due {
            at.encode(out);
            key.encode(out);
            encode_id(by, out);
        }
    }

    pub fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        let count = u64::decode(input)?;
        let mut timers = Timers::default();
        for _ in 0..count {
            let at = u64::decode(input)?;
            let key = K::decode(input)?;
            let by = decode_id(input)?;
            if timers.due.insert((at, key), by).is_some() {
                return Err(WireError::Invalid("a timer twice in a snapshot"));
            }
        }
        Ok(timers)
    }
}

fn encode_id(id: &MsgId, out: &mut Vec<u8>) {
    id.producer.encode(out);
    id.part.encode(out);
    id.seq.encode(out);
}

fn decode_id(input: &mut &[u8]) -> Result<MsgId, WireError> {
    Ok(MsgId {
        producer: u32::decode(input)?,
        part: u32::decode(input)?,
        seq: u64::decode(input)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_timers_come_out_by_time_then_key_and_a_repeat_is_one_timer() {
        let mut timers = Timers::<u64>::default();
        timers.set(20, &2, MsgId::new(0, 1));
        timers.set(10, &9, MsgId::new(0, 2));
        timers.set(20, &1, MsgId::new(0, 3));
        timers.set(20, &1, MsgId::new(0, 4));
        timers.set(30, &1, MsgId::new(0, 5));
        assert_eq!(timers.len(), 4);
        assert_eq!(timers.first_due_us(), Some(10));
        let due = timers.take_due(20);
        let expected = vec![
            (10, 9, MsgId::new(0, 2)),
            (20, 1, MsgId::new(0, 3)),
            (20, 2, MsgId::new(0, 1)),
        ];
        assert_eq!(due, expected, "the first setter of a repeat stays");
        assert_eq!(timers.take_due(29), vec![]);
        assert_eq!(timers.first_due_us(), Some(30));
    }

    #[test]
    fn timers_round_trip_and_a_cut_snapshot_is_refused() {
        let mut timers = Timers::<u64>::default();
        for (at, key) in [(5, 1), (5, 2), (7, 1)] {
            timers.set(at, &key, MsgId::new(1, at + key).with_part(3));
        }
        let mut bytes = Vec::new();
        timers.encode(&mut bytes);
        let mut input = &bytes[..];
        let mut back = Timers::<u64>::decode(&mut input).unwrap();
        assert!(input.is_empty());
        assert_eq!(back.take_due(u64::MAX), timers.take_due(u64::MAX));
        for cut in 1..bytes.len() {
            assert!(Timers::<u64>::decode(&mut &bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
