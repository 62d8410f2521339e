//! `SimConfig::log_sink`: process 0's output goes, besides the simulated
//! file, through the production Kafka sink (`verity_kafka::LogSink`,
//! exactly-once: one transaction per checkpoint, committed after the
//! checkpoint with a marker, the checkpoint's copy committed again by a
//! recovery whose crash came between the two) into a simulated broker that
//! outlives every crash (`verity_kafka::SimBroker`: read_committed,
//! fencing by epoch, producers that die with their process). The output
//! the seed checks is what a read_committed consumer of the topic sees.

use verity_core::connector::{CommitId, SinkConnector, SinkError};
use verity_core::MsgId;
use verity_kafka::sim_broker::SimProducer;
use verity_kafka::{LogSink, SimBroker, SinkBugs, SinkDelivery};

pub(super) const OUTPUT_TOPIC: &str = "out";
const OUTPUT_PARTITIONS: u32 = 3;
/// Process 0's, stable across lives, as production's is
/// (`verity_kafka::transactional_id("sim", 0)`).
const TRANSACTIONAL_ID: &str = "verity-sim-p0";

pub(super) fn new_broker() -> SimBroker {
    let broker = SimBroker::new();
    broker.create_topic(OUTPUT_TOPIC, OUTPUT_PARTITIONS);
    broker
}

/// The simulated output file and the Kafka sink, written alike.
pub(super) struct Tee {
    file: Box<dyn SinkConnector>,
    log: LogSink<SimProducer>,
}

impl Tee {
    /// A new life's sink: its producer takes over the transactional id
    /// (fencing the dead life's and aborting what it left open).
    pub(super) fn open(
        file: Box<dyn SinkConnector>,
        broker: &SimBroker,
        app: verity_apps::AppName,
        bugs: SinkBugs,
    ) -> Result<Tee, SinkError> {
        let producer = broker.producer(OUTPUT_TOPIC, Some(TRANSACTIONAL_ID));
        let key_of = verity_apps::record_keys::output_key(app);
        let log = LogSink::open(producer, SinkDelivery::Transactional, key_of, bugs)?;
        Ok(Tee { file, log })
    }
}

impl SinkConnector for Tee {
    fn wants_ids(&self) -> bool {
        self.file.wants_ids()
    }

    fn write(&mut self, lines: &[u8], ids: &[MsgId]) -> Result<(), SinkError> {
        self.file.write(lines, ids)?;
        self.log.write(lines, ids)
    }

    fn barrier(&mut self, commit: CommitId) -> Result<(), SinkError> {
        self.file.barrier(commit)?;
        self.log.barrier(commit)
    }

    fn commit(&mut self, upto: CommitId) -> Result<(), SinkError> {
        self.log.commit(upto)?;
        self.file.commit(upto)
    }

    fn resume_mark(&mut self) -> Result<Vec<u8>, SinkError> {
        let file = self.file.resume_mark()?;
        let mut mark = (file.len() as u32).to_le_bytes().to_vec();
        mark.extend_from_slice(&file);
        mark.extend_from_slice(&self.log.resume_mark()?);
        Ok(mark)
    }

    fn resume(&mut self, mark: &[u8]) -> Result<(), SinkError> {
        let bad = || SinkError::Connector("not a simulated tee's mark".into());
        let len = mark.get(..4).ok_or_else(bad)?;
        let len = u32::from_le_bytes(len.try_into().map_err(|_| bad())?) as usize;
        let file = mark.get(4..4 + len).ok_or_else(bad)?;
        self.file.resume(file)?;
        self.log.resume(&mark[4 + len..])
    }
}

/// Worker `process`'s own Kafka sink (`SimConfig::member_sinks`), under its
/// own transactional id, stable across lives as production's
/// (`verity-<job>-p<process>`).
pub(super) fn open_member(
    broker: &SimBroker,
    app: verity_apps::AppName,
    bugs: SinkBugs,
    process: u32,
) -> Result<LogSink<SimProducer>, SinkError> {
    let id = verity_kafka::transactional_id("sim", process);
    let producer = broker.producer(OUTPUT_TOPIC, Some(&id));
    let key_of = verity_apps::record_keys::output_key(app);
    LogSink::open(producer, SinkDelivery::Transactional, key_of, bugs)
}

/// What a read_committed consumer of the output topic sees: one line per
/// record, partition after partition (each keeps its keys' order).
pub(super) fn committed_output(broker: &SimBroker) -> Vec<u8> {
    let mut out = Vec::new();
    for (_, _, record) in broker.read_committed(OUTPUT_TOPIC) {
        out.extend_from_slice(&record.value);
        out.push(b'\n');
    }
    out
}

/// Records of transactions left open (none once the run finished).
pub(super) fn open_records(broker: &SimBroker) -> usize {
    broker.open_records(OUTPUT_TOPIC)
}
