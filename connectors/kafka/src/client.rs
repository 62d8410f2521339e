//! librdkafka behind the connector traits: a consumer per opened partition
//! (`RdPartitionLog`), a producer per sink (`RdProducer`), the `kafka://`
//! factories, and the Kafka side of `verity send`/`receive` (`harness`).

use crate::log::{LogError, LogProducer, PartitionLog, Watermarks, OUTPUT_ID_HEADER};
use crate::reader::{connector_error, PartitionReader};
use crate::sink::{KeyOf, LogSink, SinkBugs, SinkDelivery};
use crate::url::KafkaUrl;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use verity_core::connector::{
    ConnectorError, SinkConnector, SinkError, SinkFactory, SourceConnector, SourceError, SourceFactory,
    SourceReader,
};
use verity_core::{CustomSink, SinkSpec};

pub mod harness;

/// How long a metadata request (partitions, watermarks, a committed marker)
/// may take before the broker counts as unreachable.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a transaction operation or a flush may take.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a produce may wait for room in librdkafka's queue.
pub const PRODUCE_QUEUE_WAIT: Duration = Duration::from_secs(60);

fn unreachable(brokers: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Unreachable {
        brokers: brokers.into(),
        detail: e.to_string(),
    }
}

fn other(what: &str, e: impl std::fmt::Display) -> LogError {
    let text = e.to_string();
    LogError::Other(format!("{what}: {text}"))
}

fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("socket.timeout.ms", "10000")
        // Failures reach the user as this crate's one-line errors; librdkafka's
        // own log of each connection attempt would bury them.
        .set("log_level", "0");
    config
}

/// The topic's partition count, or why it cannot be had.
pub fn topic_partitions<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    brokers: &str,
    topic: &str,
) -> Result<u32, LogError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| unreachable(brokers, e))?;
    let no_topic = || LogError::NoSuchTopic {
        topic: topic.into(),
        brokers: brokers.into(),
    };
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(no_topic)?;
    if t.error().is_some() || t.partitions().is_empty() {
        return Err(no_topic());
    }
    Ok(t.partitions().len() as u32)
}

fn reading_consumer(brokers: &str, group: Option<&str>) -> Result<BaseConsumer, LogError> {
    client_config(brokers)
        .set("group.id", group.unwrap_or("verity-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| other("cannot make a Kafka consumer", e))
}

/// One partition through a librdkafka consumer (read_committed).
pub struct RdPartitionLog {
    consumer: BaseConsumer,
    brokers: String,
    topic: String,
    partition: i32,
    next: u64,
}

impl RdPartitionLog {
    pub fn connect(url: &KafkaUrl, partition: u32) -> Result<Self, LogError> {
        Ok(RdPartitionLog {
            consumer: reading_consumer(&url.brokers, url.group.as_deref())?,
            brokers: url.brokers.clone(),
            topic: url.topic.clone(),
            partition: partition as i32,
            next: 0,
        })
    }
}

impl PartitionLog for RdPartitionLog {
    fn watermarks(&mut self) -> Result<Watermarks, LogError> {
        topic_partitions(&self.consumer, &self.brokers, &self.topic)?;
        let (low, high) = self
            .consumer
            .fetch_watermarks(&self.topic, self.partition, METADATA_TIMEOUT)
            .map_err(|e| unreachable(&self.brokers, e))?;
        Ok(Watermarks {
            low: low.max(0) as u64,
            high: high.max(low).max(0) as u64,
        })
    }

    fn seek(&mut self, offset: u64) -> Result<(), LogError> {
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&self.topic, self.partition, Offset::Offset(offset as i64))
            .map_err(|e| other("bad offset", e))?;
        self.consumer
            .assign(&assignment)
            .map_err(|e| other("cannot assign the partition", e))?;
        self.next = offset;
        Ok(())
    }

    fn poll(
        &mut self,
        wait_ms: u64,
        bytes_max: usize,
        each: &mut dyn FnMut(u64, Option<&[u8]>),
    ) -> Result<u64, LogError> {
        let mut bytes = 0;
        let mut wait = Duration::from_millis(wait_ms);
        while bytes < bytes_max {
            let Some(result) = self.consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            let message =
                result.map_err(|e| other(&format!("reading {}/{}", self.topic, self.partition), e))?;
            let offset = message.offset().max(0) as u64;
            bytes += message.payload_len();
            each(offset, message.payload());
            self.next = offset + 1;
        }
        // Past transaction markers the consumer skipped, when it knows; only
        // when nothing came, since librdkafka's position may run ahead of
        // what it handed out (its prefetch).
        if bytes > 0 {
            return Ok(self.next);
        }
        if let Ok(position) = self.consumer.position() {
            if let Some(Offset::Offset(at)) = position
                .find_partition(&self.topic, self.partition)
                .map(|e| e.offset())
            {
                self.next = self.next.max(at.max(0) as u64);
            }
        }
        Ok(self.next)
    }

    fn commit_group(&mut self, _group: &str, offset: u64) -> Result<(), LogError> {
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&self.topic, self.partition, Offset::Offset(offset as i64))
            .map_err(|e| other("bad offset", e))?;
        self.consumer
            .commit(&offsets, CommitMode::Sync)
            .map_err(|e| other("committing the group offset", e))
    }
}

/// The offsets consumer group `group` committed for each partition of
/// `topic` (`None`: none), as monitoring tools read them.
pub fn group_offsets(brokers: &str, group: &str, topic: &str) -> Result<Vec<Option<u64>>, LogError> {
    let consumer = reading_consumer(brokers, Some(group))?;
    let partitions = topic_partitions(&consumer, brokers, topic)?;
    let mut asked = TopicPartitionList::new();
    for partition in 0..partitions {
        asked.add_partition(topic, partition as i32);
    }
    let committed = consumer
        .committed_offsets(asked, METADATA_TIMEOUT)
        .map_err(|e| unreachable(brokers, e))?;
    Ok((0..partitions)
        .map(|partition| {
            match committed
                .find_partition(topic, partition as i32)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(at)) if at >= 0 => Some(at as u64),
                _ => None,
            }
        })
        .collect())
}

/// `kafka://…` as a source.
pub struct KafkaSource {
    pub url: KafkaUrl,
    name: String,
}

impl KafkaSource {
    pub fn new(arg: &str) -> Result<Self, ConnectorError> {
        let url = KafkaUrl::parse(arg).map_err(|e| ConnectorError::Invalid {
            arg: arg.into(),
            reason: e.reason,
        })?;
        Ok(KafkaSource {
            url,
            name: arg.into(),
        })
    }
}

impl SourceConnector for KafkaSource {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn partitions(&self) -> Result<u32, SourceError> {
        let consumer = reading_consumer(&self.url.brokers, None).map_err(connector_error)?;
        topic_partitions(&consumer, &self.url.brokers, &self.url.topic).map_err(connector_error)
    }

    /// Every process reaches the brokers: a cluster reads partition `p` on
    /// process `p % P`. A record's id is its (partition, offset), so it is
    /// the same whichever process reads it.
    fn readable_on_every_process(&self) -> bool {
        true
    }

    fn open(
        &mut self,
        source_name: &str,
        partition: u32,
        at: Option<verity_core::connector::Position>,
    ) -> Result<Box<dyn SourceReader>, SourceError> {
        let _ = &self.name;
        let log = RdPartitionLog::connect(&self.url, partition).map_err(connector_error)?;
        Ok(Box::new(PartitionReader::open(
            log,
            source_name,
            &self.url.topic,
            partition,
            self.url.start,
            at,
            self.url.until_end,
            self.url.group.clone(),
        )?))
    }
}

/// The first delivery failure the producer's callback saw.
#[derive(Default)]
pub struct DeliveryErrors {
    first: Mutex<Option<String>>,
}

impl ClientContext for DeliveryErrors {}

impl ProducerContext for DeliveryErrors {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| e.to_string());
        }
    }
}

/// A librdkafka producer into one topic (idempotent; transactional when it
/// has a transactional id).
pub struct RdProducer {
    producer: ThreadedProducer<DeliveryErrors>,
    brokers: String,
    topic: String,
    transactional_id: Option<String>,
}

/// The topic that holds each transactional id's commit markers: one record
/// (key: the transactional id, value: the marker in decimal) produced inside
/// each committed transaction, so it is there exactly when the transaction
/// committed. (A consumer-group offset committed inside the transaction
/// would do the same on a real broker, but librdkafka's mock cluster drops
/// those.) Created with one partition, compacted, if missing.
pub const MARKER_TOPIC: &str = "verity-transaction-markers";

fn is_fenced(e: &KafkaError) -> bool {
    e.to_string().to_ascii_lowercase().contains("fenced")
}

impl RdProducer {
    pub fn connect(brokers: &str, topic: &str, transactional_id: Option<&str>) -> Result<Self, LogError> {
        Self::connect_with(brokers, topic, transactional_id, &[])
    }

    /// `connect` with more librdkafka settings.
    pub fn connect_with(
        brokers: &str,
        topic: &str,
        transactional_id: Option<&str>,
        settings: &[(&str, &str)],
    ) -> Result<Self, LogError> {
        let mut config = client_config(brokers);
        for (name, value) in settings {
            config.set(*name, *value);
        }
        config
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000");
        if let Some(id) = transactional_id {
            config
                .set("transactional.id", id)
                .set("transaction.timeout.ms", "60000");
        }
        let producer: ThreadedProducer<DeliveryErrors> = config
            .create_with_context(DeliveryErrors::default())
            .map_err(|e| other("cannot make a Kafka producer", e))?;
        let metadata_client = reading_consumer(brokers, None)?;
        topic_partitions(&metadata_client, brokers, topic)?;
        if transactional_id.is_some() {
            ensure_topic(brokers, MARKER_TOPIC, 1, &[("cleanup.policy", "compact")])?;
        }
        Ok(RdProducer {
            producer,
            brokers: brokers.into(),
            topic: topic.into(),
            transactional_id: transactional_id.map(str::to_string),
        })
    }

    fn txn_error(&self, what: &str, e: KafkaError) -> LogError {
        if is_fenced(&e) {
            return LogError::Fenced {
                transactional_id: self.transactional_id.clone().unwrap_or_default(),
            };
        }
        other(what, e)
    }

    fn id(&self) -> Result<&str, LogError> {
        self.transactional_id
            .as_deref()
            .ok_or_else(|| LogError::Other("not a transactional producer".into()))
    }

    /// Queues one record into `partition` (no output-id header), as a
    /// producer that partitions its records itself does.
    pub fn produce_to(&mut self, partition: u32, key: &[u8], value: &[u8]) -> Result<(), LogError> {
        self.send_record(Some(partition), key, value, None)
    }

    /// Queues a record, waiting (bounded) while librdkafka's queue is full.
    fn send_record(
        &mut self,
        partition: Option<u32>,
        key: &[u8],
        value: &[u8],
        output_id: Option<&[u8]>,
    ) -> Result<(), LogError> {
        let began = Instant::now();
        loop {
            let mut record = BaseRecord::to(&self.topic).key(key).payload(value);
            if let Some(id) = output_id {
                record = record.headers(OwnedHeaders::new_with_capacity(1).insert(Header {
                    key: OUTPUT_ID_HEADER,
                    value: Some(id),
                }));
            }
            if let Some(partition) = partition {
                record = record.partition(partition as i32);
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if began.elapsed() < PRODUCE_QUEUE_WAIT =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(self.txn_error(&format!("producing to {}", self.topic), e)),
            }
        }
    }
}

impl LogProducer for RdProducer {
    fn produce(&mut self, key: &[u8], value: &[u8], output_id: &[u8]) -> Result<(), LogError> {
        self.send_record(None, key, value, Some(output_id))
    }

    fn flush(&mut self) -> Result<(), LogError> {
        self.producer
            .flush(TRANSACTION_TIMEOUT)
            .map_err(|e| self.txn_error(&format!("flushing to {} at {}", self.topic, self.brokers), e))?;
        let first = self
            .producer
            .context()
            .first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match first {
            Some(e) => Err(LogError::Other(format!(
                "a record to {} was not delivered: {e}",
                self.topic
            ))),
            None => Ok(()),
        }
    }

    fn init_transactions(&mut self) -> Result<(), LogError> {
        self.producer
            .init_transactions(TRANSACTION_TIMEOUT)
            .map_err(|e| self.txn_error("init_transactions", e))
    }

    fn begin_transaction(&mut self) -> Result<(), LogError> {
        self.producer
            .begin_transaction()
            .map_err(|e| self.txn_error("begin_transaction", e))
    }

    fn commit_transaction(&mut self, marker: u64) -> Result<(), LogError> {
        let id = self.id()?.to_string();
        let value = marker.to_string();
        let record = BaseRecord::to(MARKER_TOPIC)
            .key(id.as_str())
            .payload(value.as_str());
        self.producer
            .send(record)
            .map_err(|(e, _)| self.txn_error("producing the commit marker", e))?;
        self.producer
            .commit_transaction(TRANSACTION_TIMEOUT)
            .map_err(|e| self.txn_error("commit_transaction", e))
    }

    fn abort_transaction(&mut self) -> Result<(), LogError> {
        self.producer
            .abort_transaction(TRANSACTION_TIMEOUT)
            .map_err(|e| self.txn_error("abort_transaction", e))
    }

    fn committed_marker(&mut self) -> Result<u64, LogError> {
        let id = self.id()?.to_string();
        read_marker(&self.brokers, &id)
    }
}

/// The last committed marker of transactional id `id` (0: none), read from
/// `MARKER_TOPIC` (read_committed) up to its end.
fn read_marker(brokers: &str, id: &str) -> Result<u64, LogError> {
    let consumer = reading_consumer(brokers, None)?;
    let (_, high) = consumer
        .fetch_watermarks(MARKER_TOPIC, 0, METADATA_TIMEOUT)
        .map_err(|e| unreachable(brokers, e))?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(MARKER_TOPIC, 0, Offset::Beginning)
        .map_err(|e| other("bad offset", e))?;
    consumer
        .assign(&assignment)
        .map_err(|e| other("cannot read the marker topic", e))?;
    let deadline = Instant::now() + TRANSACTION_TIMEOUT;
    let mut marker = 0;
    let mut next = 0u64;
    let high = high.max(0) as u64;
    while next < high {
        if Instant::now() >= deadline {
            return Err(unreachable(
                brokers,
                format!("reading {MARKER_TOPIC} did not reach offset {high}"),
            ));
        }
        if let Some(result) = consumer.poll(Duration::from_millis(100)) {
            let message = result.map_err(|e| other(&format!("reading {MARKER_TOPIC}"), e))?;
            next = message.offset().max(0) as u64 + 1;
            if message.key() == Some(id.as_bytes()) {
                let text = std::str::from_utf8(message.payload().unwrap_or_default()).unwrap_or_default();
                marker = text
                    .parse()
                    .map_err(|_| LogError::Other(format!("{MARKER_TOPIC}: `{text}` is not a marker")))?;
            }
        } else if let Ok(Some(Offset::Offset(at))) = consumer
            .position()
            .map(|p| p.find_partition(MARKER_TOPIC, 0).map(|e| e.offset()))
        {
            // Transaction markers take offsets too; the position is past them.
            next = next.max(at.max(0) as u64);
        }
    }
    Ok(marker)
}

/// Creates `topic` with `partitions` partitions (and `config`) unless it
/// exists.
pub fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: u32,
    config: &[(&str, &str)],
) -> Result<(), LogError> {
    let probe = reading_consumer(brokers, None)?;
    match topic_partitions(&probe, brokers, topic) {
        Ok(_) => return Ok(()),
        Err(LogError::NoSuchTopic { .. }) => {}
        Err(e) => return Err(e),
    }
    let creating =
        |detail: String| LogError::Other(format!("creating topic `{topic}` on {brokers}: {detail}"));
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .map_err(|e| creating(e.to_string()))?;
    let mut new_topic = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(1));
    for (name, value) in config {
        new_topic = new_topic.set(name, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let results = futures_executor::block_on(admin.create_topics([&new_topic], &options))
        .map_err(|e| creating(e.to_string()))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(creating(code.to_string())),
        }
    }
    // The broker may answer before its metadata shows the topic.
    let deadline = Instant::now() + METADATA_TIMEOUT;
    loop {
        match topic_partitions(&probe, brokers, topic) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// What a sink needs to know about the process it runs in.
#[derive(Debug, Clone)]
pub struct SinkContext {
    pub process: u32,
    /// Names the job stably across restarts (the transactional id's core).
    pub job_fingerprint: String,
    pub delivery: SinkDelivery,
    pub key_of: KeyOf,
}

/// Opens the sink for `url` in `context`.
pub fn open_sink(url: &KafkaUrl, context: &SinkContext) -> Result<Box<dyn SinkConnector>, SinkError> {
    let id = crate::transactional_id(&context.job_fingerprint, context.process);
    let transactional = context.delivery == SinkDelivery::Transactional;
    let producer = RdProducer::connect(&url.brokers, &url.topic, transactional.then_some(id.as_str()))
        .map_err(|e| SinkError::Connector(Box::new(e)))?;
    Ok(Box::new(LogSink::open(
        producer,
        context.delivery,
        context.key_of,
        SinkBugs::default(),
    )?))
}

/// The `kafka` source scheme.
pub fn source_factory() -> SourceFactory {
    Arc::new(|arg: &str| Ok(Box::new(KafkaSource::new(arg)?) as Box<dyn SourceConnector>))
}

/// The `kafka` sink scheme, for sinks opened in `context`.
pub fn sink_factory(context: SinkContext) -> SinkFactory {
    Arc::new(move |arg: &str| {
        let url = KafkaUrl::parse(arg).map_err(|e| ConnectorError::Invalid {
            arg: arg.into(),
            reason: e.reason,
        })?;
        let context = context.clone();
        Ok(SinkSpec::Custom(CustomSink::new(
            arg,
            move |run: &verity_core::SinkContext| {
                // The process opening the sink names its transactional id.
                let context = SinkContext {
                    process: run.process,
                    ..context.clone()
                };
                open_sink(&url, &context)
            },
        )))
    })
}

/// Headers' output id of a consumed message, if it has one.
pub fn output_id<M: Message>(message: &M) -> Option<&[u8]> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == OUTPUT_ID_HEADER)
        .and_then(|h| h.value)
}
