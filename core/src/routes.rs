//! Where a source's parse puts its records: each keyed record routed to the
//! shard that owns its key, as the compiled chain of a source (`flow::Chain`)
//! produces them for one chunk.

use crate::event_time::EventTimeSpec;
use crate::ids::MsgId;
use crate::key::{shard_for, Key};
use crate::line::Reject;
use bytes::Bytes;
use std::ops::Range;

/// A keyed record in flight between shards. It carries no hash of its key: the
/// receiver recomputes it (a few instructions) rather than have every record
/// that crosses cores or the network carry 8 more bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<K, V> {
    pub id: MsgId,
    pub key: K,
    pub value: V,
}

/// A record kept on the shard that parsed it, with its key's route hash.
pub type Hashed<K, V> = (Routed<K, V>, u64);

/// One chunk of a stream, as its chain parses it.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLines<'a> {
    /// The stream's index: the producer of every record's id.
    pub stream: u32,
    /// The line number of the chunk's first line.
    pub first_line: u64,
    pub data: &'a Bytes,
}

/// One chunk's records, routed: those of the parsing shard's own keys (with
/// their hash, which applying needs again) and, per other shard, those of
/// its keys, in input order; and the lines a step rejected. A shard keeps
/// one and reuses its buffers chunk after chunk.
///
/// With event time (`crate::event_time`), each record also gets the chunk's
/// highest event time up to and including it, in parallel vectors, which
/// only this parse (in input order, across all receivers) can know.
/// Without, those stay empty and a record pays one predictable branch.
pub struct Routes<K, V> {
    index: u32,
    shards: u32,
    pub local: Vec<Hashed<K, V>>,
    /// Per receiver (this shard's own entry stays empty).
    pub outgoing: Vec<Vec<Routed<K, V>>>,
    /// The id, reason and byte range in the chunk of each rejected line.
    pub rejects: Vec<(MsgId, Reject, Range<usize>)>,
    /// Lines parsed since `take_lines`.
    lines: u64,
    /// How the stream being parsed carries event time (`start_chunk`).
    event_time: Option<EventTimeSpec<V>>,
    /// The chunk's highest event time so far.
    pub chunk_event_max_ms: Option<u64>,
    /// Parallel to `local` and to `outgoing`, with event time.
    pub local_event_max_ms: Vec<u64>,
    pub outgoing_event_max_ms: Vec<Vec<u64>>,
}

impl<K: Key, V> Routes<K, V> {
    /// Routes for shard `index` of `shards`.
    pub fn new(index: u32, shards: u32) -> Self {
        assert!(index < shards, "shard {index} of {shards}");
        Routes {
            index,
            shards,
            local: Vec::new(),
            outgoing: (0..shards).map(|_| Vec::new()).collect(),
            rejects: Vec::new(),
            lines: 0,
            event_time: None,
            chunk_event_max_ms: None,
            local_event_max_ms: Vec::new(),
            outgoing_event_max_ms: (0..shards).map(|_| Vec::new()).collect(),
        }
    }

    /// Empty routes of another value type that keep every record, in input
    /// order, for `append_mapped` to route once mapped (so a join input's
    /// event times are read, in order, from the values the step gets).
    pub fn for_values<W>(&self) -> Routes<K, W> {
        Routes::new(0, 1)
    }

    /// A new chunk of a stream begins, whose records carry event time as
    /// `event_time` says (`None`: without event time).
    pub fn start_chunk(&mut self, event_time: Option<&EventTimeSpec<V>>) {
        self.event_time = event_time.cloned();
        self.chunk_event_max_ms = None;
    }

    /// Routes one record by its key's route hash.
    #[inline]
    pub fn push(&mut self, id: MsgId, key: K, value: V) {
        let hash = key.route_hash();
        self.push_hashed(id, key, value, hash);
    }

    /// Routes one record whose key hashes to `hash`.
    #[inline]
    fn push_hashed(&mut self, id: MsgId, key: K, value: V, hash: u64) {
        let to = shard_for(hash, self.shards as usize);
        // One predictable branch without event time; the rest out of line.
        if self.event_time.is_some() {
            self.push_running_max(to, &value);
        }
        let record = Routed { id, key, value };
        if to == self.index as usize {
            self.local.push((record, hash));
        } else {
            self.outgoing[to].push(record);
        }
    }

    /// With event time: the chunk's running max goes with the record bound
    /// for shard `to`, so its receiver knows the record's watermark
    /// (`crate::event_time`).
    #[inline(never)]
    fn push_running_max(&mut self, to: usize, value: &V) {
        let spec = self.event_time.as_ref().expect("called with event time");
        let at_ms = spec.event_time_ms(value);
        let max_ms = self.chunk_event_max_ms.map_or(at_ms, |max| max.max(at_ms));
        self.chunk_event_max_ms = Some(max_ms);
        if to == self.index as usize {
            self.local_event_max_ms.push(max_ms);
        } else {
            self.outgoing_event_max_ms[to].push(max_ms);
        }
    }

    /// `lines` more lines were parsed.
    pub fn count_lines(&mut self, lines: u64) {
        self.lines += lines;
    }

    /// The lines parsed since the last call.
    pub fn take_lines(&mut self) -> u64 {
        std::mem::take(&mut self.lines)
    }

    /// Routes everything in `other` (made by `for_values`), each value
    /// mapped by `f`, in input order.
    pub fn append_mapped<W>(&mut self, other: &mut Routes<K, W>, f: impl Fn(W) -> V) {
        debug_assert!(other.shards == 1, "for_values keeps every record in input order");
        for (Routed { id, key, value }, hash) in other.local.drain(..) {
            self.push_hashed(id, key, f(value), hash);
        }
        self.rejects.append(&mut other.rejects);
        self.lines += other.take_lines();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_go_to_the_shard_owning_their_key_in_input_order() {
        let shards = 4;
        let mut routes = Routes::<u64, u64>::new(1, shards);
        for n in 0..1000u64 {
            routes.push(MsgId::new(0, n), n % 37, n);
        }
        let owner = |key: &u64| shard_for(key.route_hash(), shards as usize);
        assert!(routes
            .local
            .iter()
            .all(|(r, hash)| owner(&r.key) == 1 && *hash == r.key.route_hash()));
        assert!(routes.outgoing[1].is_empty());
        let mut total = routes.local.len();
        for (to, records) in routes.outgoing.iter().enumerate() {
            assert!(records.iter().all(|r| owner(&r.key) == to));
            assert!(records.windows(2).all(|w| w[0].value < w[1].value));
            total += records.len();
        }
        assert_eq!(total, 1000);
    }
}
