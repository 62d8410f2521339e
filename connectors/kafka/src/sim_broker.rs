//! A simulated Kafka broker: partitioned logs, transactions with
//! read_committed visibility (a reader stops at the first record of an open
//! transaction, skips aborted records and the markers that end
//! transactions), producer fencing by transactional id and epoch, consumer
//! group offsets. No time and no randomness: every call acts at once, so a
//! simulator drives it deterministically. Clients hold a handle to it; it
//! outlives them, as a real broker outlives a crash of the processes that
//! used it. Records a producer queued but did not flush die with it.

use crate::log::{key_partition, LogError, LogProducer, PartitionLog, Watermarks};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visibility {
    /// Not in a transaction, or in a committed one.
    Visible,
    /// In transaction number `n` of its id, not yet ended.
    Open(u64),
    Aborted,
    /// A transaction marker: takes an offset, carries nothing.
    Marker,
}

#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub output_id: Vec<u8>,
    visibility: Visibility,
}

#[derive(Debug, Default)]
struct TransactionalId {
    epoch: u64,
    /// The open transaction's number and the (topic, partition)s it wrote.
    open: Option<(u64, Vec<(String, u32)>)>,
    marker: u64,
}

#[derive(Debug, Default)]
struct State {
    topics: BTreeMap<String, Vec<Vec<StoredRecord>>>,
    ids: BTreeMap<String, TransactionalId>,
    groups: BTreeMap<(String, String, u32), u64>,
    /// Bumped when every client process dies (`crash_clients`).
    generation: u64,
    /// `fetch_skips_into_batches`: records per producer batch.
    batch_records: Option<u64>,
    /// Transactions begun, of every transactional id: a transaction's
    /// number names it in the whole broker, so ending one never touches
    /// another id's open records in the same partition.
    transactions: u64,
}

/// A handle to the simulated broker (clones share it).
#[derive(Debug, Clone, Default)]
pub struct SimBroker {
    state: Arc<Mutex<State>>,
}

impl State {
    fn partitions_mut(&mut self, topic: &str) -> Result<&mut Vec<Vec<StoredRecord>>, LogError> {
        self.topics.get_mut(topic).ok_or_else(|| LogError::NoSuchTopic {
            topic: topic.into(),
            brokers: "the simulated broker".into(),
        })
    }

    /// Ends transaction `n` of `id`: its records become visible or aborted,
    /// and each partition it wrote gets a marker.
    fn end_transaction(&mut self, id: &str, commit: bool) {
        let Some((n, written)) = self.ids.get_mut(id).and_then(|t| t.open.take()) else {
            return;
        };
        for (topic, partition) in written {
            let log = &mut self.topics.get_mut(&topic).expect("written topics exist")[partition as usize];
            for record in log.iter_mut().filter(|r| r.visibility == Visibility::Open(n)) {
                record.visibility = if commit {
                    Visibility::Visible
                } else {
                    Visibility::Aborted
                };
            }
            log.push(StoredRecord {
                key: Vec::new(),
                value: Vec::new(),
                output_id: Vec::new(),
                visibility: Visibility::Marker,
            });
        }
    }
}

impl SimBroker {
    pub fn new() -> Self {
        SimBroker::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every process using the broker died at once (kill -9): their
    /// producers can do nothing more, and what they had queued is lost.
    pub fn crash_clients(&self) {
        self.lock().generation += 1;
    }

    pub fn create_topic(&self, topic: &str, partitions: u32) {
        assert!(partitions > 0);
        self.lock()
            .topics
            .entry(topic.into())
            .or_insert_with(|| vec![Vec::new(); partitions as usize]);
    }

    pub fn partitions(&self, topic: &str) -> Result<u32, LogError> {
        Ok(self.lock().partitions_mut(topic)?.len() as u32)
    }

    /// Appends a record outside any transaction (an upstream producer).
    pub fn append(&self, topic: &str, partition: u32, key: &[u8], value: &[u8]) {
        let mut state = self.lock();
        let log = &mut state.partitions_mut(topic).expect("the topic exists")[partition as usize];
        log.push(StoredRecord {
            key: key.to_vec(),
            value: value.to_vec(),
            output_id: Vec::new(),
            visibility: Visibility::Visible,
        });
    }

    /// The partition a keyed producer puts `key` in.
    pub fn partition_for(&self, topic: &str, key: &[u8]) -> u32 {
        let partitions = self.partitions(topic).expect("the topic exists");
        key_partition(key, partitions)
    }

    /// From now on the broker answers as tansu 0.6 does: every
    /// `batch_records` offsets form a producer batch, and a read that
    /// starts (after a seek) inside a batch gets the batches after it.
    pub fn fetch_skips_into_batches(&self, batch_records: u64) {
        assert!(batch_records > 0);
        self.lock().batch_records = Some(batch_records);
    }

    pub fn partition_log(&self, topic: &str, partition: u32) -> SimPartitionLog {
        SimPartitionLog {
            broker: self.clone(),
            topic: topic.into(),
            partition,
            next: 0,
            sought: false,
        }
    }

    /// A producer into `topic`; transactional when given an id.
    pub fn producer(&self, topic: &str, transactional_id: Option<&str>) -> SimProducer {
        SimProducer {
            broker: self.clone(),
            topic: topic.into(),
            transactional_id: transactional_id.map(str::to_string),
            epoch: 0,
            queued: Vec::new(),
            generation: self.lock().generation,
        }
    }

    pub fn group_offset(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        self.lock()
            .groups
            .get(&(group.into(), topic.into(), partition))
            .copied()
    }

    /// What a read_committed consumer sees of `topic` now, per partition in
    /// offset order: (partition, offset, record). Stops at each partition's
    /// first open transaction, as such a consumer does.
    pub fn read_committed(&self, topic: &str) -> Vec<(u32, u64, StoredRecord)> {
        let state = self.lock();
        let mut out = Vec::new();
        for (partition, log) in state.topics.get(topic).into_iter().flatten().enumerate() {
            for (offset, record) in log.iter().enumerate() {
                match record.visibility {
                    Visibility::Visible => out.push((partition as u32, offset as u64, record.clone())),
                    Visibility::Open(_) => break,
                    Visibility::Aborted | Visibility::Marker => {}
                }
            }
        }
        out
    }

    /// Records of transactions still open (a consumer waits behind them).
    pub fn open_records(&self, topic: &str) -> usize {
        let state = self.lock();
        state
            .topics
            .get(topic)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|r| matches!(r.visibility, Visibility::Open(_)))
            .count()
    }
}

/// One partition read through the simulated broker (read_committed).
pub struct SimPartitionLog {
    broker: SimBroker,
    topic: String,
    partition: u32,
    next: u64,
    /// A seek came since the last poll (its fetch starts at `next`).
    sought: bool,
}

impl PartitionLog for SimPartitionLog {
    fn watermarks(&mut self) -> Result<Watermarks, LogError> {
        let mut state = self.broker.lock();
        let high = state.partitions_mut(&self.topic)?[self.partition as usize].len() as u64;
        Ok(Watermarks { low: 0, high })
    }

    fn seek(&mut self, offset: u64) -> Result<(), LogError> {
        self.next = offset;
        self.sought = true;
        Ok(())
    }

    fn poll(
        &mut self,
        _wait_ms: u64,
        bytes_max: usize,
        each: &mut dyn FnMut(u64, Option<&[u8]>),
    ) -> Result<u64, LogError> {
        let mut state = self.broker.lock();
        if let Some(batch) = state.batch_records.filter(|_| std::mem::take(&mut self.sought)) {
            self.next = self.next.div_ceil(batch) * batch;
        }
        let log = &state.partitions_mut(&self.topic)?[self.partition as usize];
        let mut bytes = 0;
        while let Some(record) = log.get(self.next as usize) {
            match record.visibility {
                Visibility::Open(_) => break,
                Visibility::Aborted | Visibility::Marker => {}
                Visibility::Visible if bytes >= bytes_max => break,
                Visibility::Visible => {
                    bytes += record.value.len();
                    each(self.next, Some(&record.value));
                }
            }
            self.next += 1;
        }
        Ok(self.next)
    }

    fn commit_group(&mut self, group: &str, offset: u64) -> Result<(), LogError> {
        let key = (group.to_string(), self.topic.clone(), self.partition);
        self.broker.lock().groups.insert(key, offset);
        Ok(())
    }
}

/// A producer of the simulated broker. Queued records reach the broker at
/// `flush` (or a commit); a producer that dies before loses them.
pub struct SimProducer {
    broker: SimBroker,
    topic: String,
    transactional_id: Option<String>,
    epoch: u64,
    queued: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    generation: u64,
}

impl SimProducer {
    /// The broker, if the producer of `generation` is still alive.
    fn alive(broker: &SimBroker, generation: u64) -> Result<MutexGuard<'_, State>, LogError> {
        let state = broker.lock();
        if state.generation != generation {
            return Err(LogError::Other("the producer's process is gone".into()));
        }
        Ok(state)
    }

    fn fenced(&self) -> LogError {
        LogError::Fenced {
            transactional_id: self.transactional_id.clone().unwrap_or_default(),
        }
    }

    /// Checks this producer still owns its id; returns its state.
    fn owned<'s>(&self, state: &'s mut State) -> Result<&'s mut TransactionalId, LogError> {
        let id = self.transactional_id.as_ref().expect("a transactional producer");
        match state.ids.get_mut(id) {
            Some(t) if t.epoch == self.epoch => Ok(t),
            _ => Err(self.fenced()),
        }
    }
}

impl LogProducer for SimProducer {
    fn produce(&mut self, key: &[u8], value: &[u8], output_id: &[u8]) -> Result<(), LogError> {
        self.queued
            .push((key.to_vec(), value.to_vec(), output_id.to_vec()));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), LogError> {
        let mut state = Self::alive(&self.broker, self.generation)?;
        let visibility = match &self.transactional_id {
            None => Visibility::Visible,
            Some(_) => {
                let owned = self.owned(&mut state)?;
                let (n, _) = owned
                    .open
                    .as_ref()
                    .ok_or_else(|| LogError::Other("produce outside a transaction".into()))?;
                Visibility::Open(*n)
            }
        };
        let partitions = state.partitions_mut(&self.topic)?.len() as u32;
        for (key, value, output_id) in self.queued.drain(..) {
            let partition = key_partition(&key, partitions);
            let topic = self.topic.clone();
            if let (Some(id), Visibility::Open(_)) = (&self.transactional_id, visibility) {
                let written = &mut state
                    .ids
                    .get_mut(id)
                    .expect("owned")
                    .open
                    .as_mut()
                    .expect("open")
                    .1;
                if !written.contains(&(topic.clone(), partition)) {
                    written.push((topic.clone(), partition));
                }
            }
            state.topics.get_mut(&topic).expect("exists")[partition as usize].push(StoredRecord {
                key,
                value,
                output_id,
                visibility,
            });
        }
        Ok(())
    }

    fn init_transactions(&mut self) -> Result<(), LogError> {
        let id = self.transactional_id.clone().expect("a transactional producer");
        let mut state = Self::alive(&self.broker, self.generation)?;
        state.end_transaction(&id, false);
        let t = state.ids.entry(id).or_default();
        t.epoch += 1;
        self.epoch = t.epoch;
        Ok(())
    }

    fn begin_transaction(&mut self) -> Result<(), LogError> {
        let mut state = Self::alive(&self.broker, self.generation)?;
        state.transactions += 1;
        let number = state.transactions;
        let t = self.owned(&mut state)?;
        assert!(t.open.is_none(), "begin with a transaction open");
        t.open = Some((number, Vec::new()));
        Ok(())
    }

    fn commit_transaction(&mut self, marker: u64) -> Result<(), LogError> {
        self.flush()?;
        let id = self.transactional_id.clone().expect("a transactional producer");
        let mut state = Self::alive(&self.broker, self.generation)?;
        self.owned(&mut state)?.marker = marker;
        state.end_transaction(&id, true);
        Ok(())
    }

    fn abort_transaction(&mut self) -> Result<(), LogError> {
        self.queued.clear();
        let id = self.transactional_id.clone().expect("a transactional producer");
        let mut state = Self::alive(&self.broker, self.generation)?;
        self.owned(&mut state)?;
        state.end_transaction(&id, false);
        Ok(())
    }

    fn committed_marker(&mut self) -> Result<u64, LogError> {
        let id = self.transactional_id.as_ref().expect("a transactional producer");
        Ok(Self::alive(&self.broker, self.generation)?
            .ids
            .get(id)
            .map_or(0, |t| t.marker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_transactional_ids_in_one_partition_commit_apart() {
        let broker = SimBroker::new();
        broker.create_topic("out", 1);
        let mut producers: Vec<SimProducer> = ["verity-job-p0", "verity-job-p1"]
            .iter()
            .map(|id| broker.producer("out", Some(id)))
            .collect();
        for (producer, value) in producers.iter_mut().zip([&b"zero"[..], b"one"]) {
            producer.init_transactions().unwrap();
            producer.begin_transaction().unwrap();
            producer.produce(b"k", value, b"").unwrap();
            producer.flush().unwrap();
        }
        producers[0].commit_transaction(1).unwrap();
        let values = |broker: &SimBroker| -> Vec<Vec<u8>> {
            broker
                .read_committed("out")
                .into_iter()
                .map(|(_, _, r)| r.value)
                .collect()
        };
        assert_eq!(
            values(&broker),
            [b"zero".to_vec()],
            "p1's transaction is still open"
        );
        assert_eq!(broker.open_records("out"), 1);
        let mut fencer = broker.producer("out", Some("verity-job-p1"));
        fencer.init_transactions().unwrap();
        assert_eq!(
            values(&broker),
            [b"zero".to_vec()],
            "p1's transaction aborted by the next p1"
        );
        assert_eq!(broker.open_records("out"), 0);
    }
}
