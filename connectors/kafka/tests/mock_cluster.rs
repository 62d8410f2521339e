//! The transactional sink through librdkafka against its in-process mock
//! cluster (`rdkafka::mocking::MockCluster`); the tansu broker the other
//! Kafka tests use refuses transactions. The mock implements the producer
//! side of transactions (init, begin, produce, end) but neither
//! read_committed isolation (its fetches report no aborted transactions and
//! a last stable offset at the end of the log, so its consumers see aborted
//! and open records too) nor fencing across producer instances (each new
//! producer of a transactional id gets a new producer id, so the old one is
//! not fenced). What is proven here is the client side against a broker:
//! the transaction calls, the commit marker written inside each transaction
//! and read back by the next life, and the recovery's decision (commit the
//! checkpoint's copy again, or not) taken from that marker. Isolation and
//! fencing are proven over the simulated broker, which models both (`sink`
//! unit tests and the simulator).
#![cfg(feature = "client")]

use rdkafka::mocking::MockCluster;
use std::time::Duration;
use verity_core::connector::{CommitId, SinkConnector};
use verity_core::MsgId;
use verity_kafka::client::harness::receive;
use verity_kafka::client::{RdProducer, MARKER_TOPIC};
use verity_kafka::{KafkaUrl, LogProducer, LogSink, SinkBugs, SinkDelivery};

const TOPIC: &str = "out";

fn first_field(line: &[u8]) -> &[u8] {
    line.split(|b| *b == b' ').next().unwrap_or_default()
}

fn cluster() -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    KafkaUrl,
) {
    let cluster = MockCluster::new(1).expect("a mock cluster");
    cluster.create_topic(TOPIC, 3, 1).expect("create the topic");
    // The mock does not serve the admin API's topic creation.
    cluster
        .create_topic(MARKER_TOPIC, 1, 1)
        .expect("create the marker topic");
    let url = KafkaUrl::parse(&format!("kafka://{}/{TOPIC}", cluster.bootstrap_servers())).unwrap();
    (cluster, url)
}

fn sink(url: &KafkaUrl, id: &str) -> LogSink<RdProducer> {
    let producer = RdProducer::connect(&url.brokers, &url.topic, Some(id)).expect("a producer");
    LogSink::open(
        producer,
        SinkDelivery::Transactional,
        first_field,
        SinkBugs::default(),
    )
    .expect("open the sink")
}

fn write(sink: &mut LogSink<RdProducer>, lines: &[&str], first_seq: u64) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let ids: Vec<MsgId> = (0..lines.len() as u64)
        .map(|i| MsgId::new(0, first_seq + i))
        .collect();
    sink.write(text.as_bytes(), &ids).expect("write");
}

/// Everything a consumer of the mock sees, sorted (partitions interleave).
/// Returns them with the repeats `receive` dropped by output id. Reads
/// until 5 s of silence: the count of repeats is known only at the end.
fn seen(url: &KafkaUrl) -> (Vec<String>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("received");
    let report = receive(url, &path, None, Duration::from_secs(5)).expect("receive");
    let mut lines: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    (lines, report.repeats)
}

fn marker(url: &KafkaUrl, id: &str) -> u64 {
    RdProducer::connect(&url.brokers, &url.topic, Some(id))
        .and_then(|mut p| p.committed_marker())
        .expect("read the marker")
}

#[test]
fn each_checkpoint_commits_its_transaction_with_its_marker() {
    let (_cluster, url) = cluster();
    let id = "verity-t1-p0";
    let mut s = sink(&url, id);
    write(&mut s, &["a 1", "b 1"], 1);
    s.barrier(CommitId(1)).unwrap();
    s.resume_mark().unwrap();
    s.commit(CommitId(1)).unwrap();
    write(&mut s, &["c 1"], 3);
    s.barrier(CommitId(2)).unwrap();
    s.resume_mark().unwrap();
    s.commit(CommitId(2)).unwrap();
    drop(s);
    assert_eq!(marker(&url, id), 2);
    assert_eq!(seen(&url), (vec!["a 1".into(), "b 1".into(), "c 1".into()], 0));
}

#[test]
fn a_recovery_commits_the_checkpoints_copy_only_if_its_commit_was_lost() {
    let (_cluster, url) = cluster();
    let id = "verity-t3-p0";
    let mut first = sink(&url, id);
    write(&mut first, &["a 1"], 1);
    first.barrier(CommitId(1)).unwrap();
    let mark1 = first.resume_mark().unwrap();
    // kill -9 here: checkpoint 1 is durable, its transaction is not
    // committed, and the dead process aborts nothing.
    std::mem::forget(first);
    assert_eq!(marker(&url, id), 0);

    let mut recovered = sink(&url, id);
    recovered.resume(&mark1).unwrap();
    assert_eq!(marker(&url, id), 1, "the copy was committed as checkpoint 1");
    write(&mut recovered, &["b 1"], 2);
    recovered.barrier(CommitId(2)).unwrap();
    let mark2 = recovered.resume_mark().unwrap();
    recovered.commit(CommitId(2)).unwrap();
    // kill -9 after checkpoint 2's commit: the next life commits nothing again.
    std::mem::forget(recovered);
    let mut again = sink(&url, id);
    again.resume(&mark2).unwrap();
    assert_eq!(marker(&url, id), 2);
    drop(again);
    // The mock shows aborted records too: `a 1` from the first life's
    // aborted transaction and from the recovery's copy (same output id, so
    // `receive` drops the repeat), `b 1` once.
    assert_eq!(seen(&url), (vec!["a 1".into(), "b 1".into()], 1));
}
