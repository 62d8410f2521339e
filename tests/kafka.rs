//! Kafka end to end through the `verity` binary, on a real Kafka-protocol
//! broker (tansu, started by `scripts/kafka-broker.sh start`; the tests find
//! it through `VERITY_KAFKA=127.0.0.1:PORT`). Without a broker they are
//! skipped with a printed reason, unless `VERITY_KAFKA_REQUIRED` is set (CI
//! sets it), which makes a missing broker a failure. tansu refuses
//! transactions, so runs here deliver at least once (the idempotent
//! producer, output ids in a header that `verity receive` drops repeats
//! by); the transactional sink is tested against librdkafka's mock cluster
//! (`connectors/kafka/tests/mock_cluster.rs`) and the simulated broker.
//!
//! The broker-less tests (an unreachable broker, a bad URL) always run.
#![cfg(feature = "kafka")]

mod common;

use common::{newest_checkpoint, ok, path_str, run, stderr, verity};
use std::path::Path;
use std::time::{Duration, Instant};
use verity_core::connector::{Chunk, Position, Pull, RecordIds, SourceReader};
use verity_core::source::ChunkData;
use verity_kafka::StartAt;

fn broker() -> Option<String> {
    match std::env::var("VERITY_KAFKA") {
        Ok(address) if !address.is_empty() => Some(address),
        _ if std::env::var_os("VERITY_KAFKA_REQUIRED").is_some() => {
            panic!("VERITY_KAFKA_REQUIRED is set but VERITY_KAFKA is not: start a broker with `export VERITY_KAFKA=$(scripts/kafka-broker.sh start)`")
        }
        _ => {
            eprintln!("skipping: no Kafka broker (export VERITY_KAFKA=$(scripts/kafka-broker.sh start) to run this test)");
            None
        }
    }
}

/// A topic name no earlier run on the same broker used.
fn topic(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{name}-{}-{nanos}", std::process::id())
}

fn send(url: &str, input: &Path, key_by: Option<&str>, partitions: u32) {
    let partitions = partitions.to_string();
    let mut args = vec![
        "send",
        "--to",
        url,
        "--input",
        path_str(input),
        "--partitions",
        &partitions,
    ];
    if let Some(app) = key_by {
        args.extend(["--key-by", app]);
    }
    ok(run(&args));
}

/// The `N out` of a run's summary. In a cluster every worker logs its own
/// counts on the shared stderr first (`worker 1: … records in, M out`):
/// only process 0's summary line counts the whole run's output.
fn records_out(stderr: &str) -> u64 {
    let summary = stderr
        .lines()
        .rfind(|line| line.contains(" records in, ") && !line.contains(": worker "))
        .unwrap_or_else(|| panic!("no summary in {stderr}"));
    let at = summary
        .find(" out,")
        .unwrap_or_else(|| panic!("no summary in {summary}"));
    let digits: String = summary[..at]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().expect("a count")
}

/// Receives `expect` lines of `url` into `output`; returns stderr.
fn receive(url: &str, output: &Path, expect: u64) -> String {
    let expect = expect.to_string();
    let received = ok(run(&[
        "receive",
        "--listen",
        url,
        "--output",
        path_str(output),
        "--expect",
        &expect,
        "--timeout-s",
        "30",
    ]));
    stderr(&received)
}

fn verify(app: &str, inputs: &[&str], output: &Path) {
    let mut args = vec!["verify", app];
    args.extend_from_slice(inputs);
    args.extend(["--output", path_str(output)]);
    let verified = run(&args);
    assert!(
        verified.status.success(),
        "verify {app}: {}{}",
        common::stdout(&verified),
        stderr(&verified)
    );
}

/// Generated, well-formed input for `app`.
fn generate(app: &str, count: u64, dir: &Path) -> std::path::PathBuf {
    let path = dir.join(format!("{app}.in"));
    let count = count.to_string();
    ok(run(&[
        "generate",
        app,
        "--count",
        &count,
        "--well-formed",
        "--output",
        path_str(&path),
    ]));
    path
}

/// Input topic → `verity run` → output topic → `verity receive` → `verity
/// verify`, at P processes.
fn round_trip(app: &str, processes: u32) {
    let Some(broker) = broker() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = generate(app, 3_000, dir.path());
    let input_url = format!("kafka://{broker}/{}", topic(&format!("{app}-in")));
    let output_url = format!("kafka://{broker}/{}", topic(&format!("{app}-out")));
    send(&input_url, &input, Some(app), 4);
    let empty = common::write(dir.path(), "empty", b"");
    send(&output_url, &empty, None, 3);
    let processes = processes.to_string();
    let bounded = format!("{input_url}?until=end");
    let run_output = ok(run(&[
        "run",
        app,
        "--input",
        &bounded,
        "--output",
        &output_url,
        "--workers",
        "2",
        "--processes",
        &processes,
    ]));
    let out = records_out(&stderr(&run_output));
    let output = dir.path().join("out");
    receive(&output_url, &output, out);
    verify(app, &["--input", path_str(&input)], &output);
}

/// Input topic → `verity run` at 3 processes → output file → `verity
/// verify`: each process reads its share of the topic's partitions
/// directly (partition `p` on process `p % 3`).
fn round_trip_at_p3_into_a_file(app: &str) {
    let Some(broker) = broker() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = generate(app, 3_000, dir.path());
    let input_url = format!("kafka://{broker}/{}", topic(&format!("{app}-in")));
    send(&input_url, &input, Some(app), 4);
    let output = dir.path().join("out");
    let bounded = format!("{input_url}?until=end");
    ok(run(&[
        "run",
        app,
        "--input",
        &bounded,
        "--output",
        path_str(&output),
        "--workers",
        "1",
        "--processes",
        "3",
    ]));
    verify(app, &["--input", path_str(&input)], &output);
}

#[test]
fn doubler_round_trip_at_p3_into_a_file() {
    round_trip_at_p3_into_a_file("doubler");
}

#[test]
fn wordcount_round_trip_at_p3_into_a_file() {
    round_trip_at_p3_into_a_file("wordcount");
}

#[test]
fn seq_window_round_trip_at_p3_into_a_file() {
    round_trip_at_p3_into_a_file("seq-window");
}

#[test]
fn market_spread_round_trip_at_p3_into_a_file() {
    round_trip_at_p3_into_a_file("market-spread");
}

#[test]
fn doubler_round_trip_at_p1() {
    round_trip("doubler", 1);
}

#[test]
fn wordcount_round_trip_at_p1() {
    round_trip("wordcount", 1);
}

#[test]
fn seq_window_round_trip_at_p1() {
    round_trip("seq-window", 1);
}

#[test]
fn market_spread_round_trip_at_p1() {
    round_trip("market-spread", 1);
}

// At P=3 each process reads its own partitions (the Kafka source is
// spread) and process 0's output thread writes the whole run's output into
// the topic (the funnel). These once "lost" output: the test read the output
// count off the first `N out` on the shared stderr, a worker's own count,
// and stopped receiving there (`records_out` now takes process 0's).
#[test]
fn doubler_round_trip_at_p3() {
    round_trip("doubler", 3);
}

#[test]
fn wordcount_round_trip_at_p3() {
    round_trip("wordcount", 3);
}

#[test]
fn seq_window_round_trip_at_p3() {
    round_trip("seq-window", 3);
}

#[test]
fn market_spread_round_trip_at_p3() {
    round_trip("market-spread", 3);
}

/// market-spread's two streams as topics at `processes` processes, into
/// an output topic or (`to_file`) a file; at P=3 each process reads its
/// partitions of both topics.
fn market_spread_on_quotes_and_orders_topics(processes: u32, to_file: bool) {
    let Some(broker) = broker() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (quotes, orders) = (dir.path().join("quotes"), dir.path().join("orders"));
    ok(run(&[
        "generate",
        "market-spread",
        "--count",
        "3000",
        "--well-formed",
        "--quotes-output",
        path_str(&quotes),
        "--orders-output",
        path_str(&orders),
    ]));
    let quotes_url = format!("kafka://{broker}/{}", topic("quotes"));
    let orders_url = format!("kafka://{broker}/{}", topic("orders"));
    send(&quotes_url, &quotes, Some("market-spread"), 3);
    send(&orders_url, &orders, Some("market-spread"), 3);
    let output = dir.path().join("out");
    let output_url = format!("kafka://{broker}/{}", topic("spread-out"));
    if !to_file {
        send(&output_url, &common::write(dir.path(), "empty", b""), None, 3);
    }
    let processes = processes.to_string();
    let run_output = ok(run(&[
        "run",
        "market-spread",
        "--quotes",
        &format!("{quotes_url}?until=end"),
        "--orders",
        &format!("{orders_url}?until=end"),
        "--output",
        if to_file { path_str(&output) } else { &output_url },
        "--workers",
        "1",
        "--processes",
        &processes,
    ]));
    if !to_file {
        receive(&output_url, &output, records_out(&stderr(&run_output)));
    }
    verify(
        "market-spread",
        &["--quotes", path_str(&quotes), "--orders", path_str(&orders)],
        &output,
    );
}

#[test]
fn market_spread_on_quotes_and_orders_topics_at_p1() {
    market_spread_on_quotes_and_orders_topics(1, false);
}

#[test]
fn market_spread_on_quotes_and_orders_topics_at_p3_into_a_file() {
    market_spread_on_quotes_and_orders_topics(3, true);
}

#[test]
fn market_spread_on_quotes_and_orders_topics_at_p3() {
    market_spread_on_quotes_and_orders_topics(3, false);
}

#[test]
fn bad_records_are_dead_letters_naming_topic_partition_and_offset() {
    let Some(broker) = broker() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = common::write(dir.path(), "in", b"1\n\xff\xfe\nnot a number\n2\n");
    let name = topic("bad");
    let input_url = format!("kafka://{broker}/{name}");
    send(&input_url, &input, None, 1);
    let output = dir.path().join("out");
    let dead = dir.path().join("dead");
    let summary = ok(run(&[
        "run",
        "doubler",
        "--input",
        &format!("{input_url}?until=end"),
        "--output",
        path_str(&output),
        "--dead-letter",
        path_str(&dead),
    ]));
    assert!(
        stderr(&summary).contains("2 dead-lettered"),
        "{}",
        stderr(&summary)
    );
    let letters = std::fs::read_to_string(&dead).unwrap();
    // Each letter names the source (its URL, with the topic), the
    // partition and the offset, whatever the reason.
    let source = format!("{input_url}?until=end");
    let lines: Vec<&str> = letters.lines().collect();
    assert_eq!(lines.len(), 2, "{letters}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{source}: partition 0 offset 1: "))
                && l.contains(&format!(
                    "kafka record topic {name} partition 0 offset 1: not UTF-8"
                ))),
        "{letters}"
    );
    assert!(
        lines.iter().any(
            |l| l.starts_with(&format!("{source}: partition 0 offset 2: ")) && l.contains("not a number")
        ),
        "{letters}"
    );
    let mut lines: Vec<String> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(lines, ["2", "4"]);
}

/// Reads `partition` of `url` from `at` to its end (as at open) with the
/// connector's reader: each chunk's first offset, lines and position after.
fn read_partition(url: &str, partition: u32, at: Option<Position>) -> Vec<(u64, Vec<u8>, Position)> {
    use verity_kafka::client::RdPartitionLog;
    let url = verity_kafka::KafkaUrl::parse(url).unwrap();
    let log = RdPartitionLog::connect(&url, partition).unwrap();
    let mut reader = verity_kafka::PartitionReader::open(
        log,
        "in",
        &url.topic,
        partition,
        StartAt::Earliest,
        at,
        true,
        None,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut chunks = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "the partition never ended");
        match reader.next_chunk().unwrap() {
            Pull::Chunk(Chunk {
                data: ChunkData::Lines(lines),
                position,
                ids: RecordIds::Log { first_offset },
                ..
            }) => chunks.push((first_offset, lines.to_vec(), position)),
            Pull::Chunk(other) => panic!("not a log's chunk: {other:?}"),
            Pull::Idle => {}
            Pull::End => return chunks,
        }
    }
}

#[test]
fn a_partition_reopened_at_a_chunk_position_yields_exactly_what_followed() {
    let Some(broker) = broker() else { return };
    let dir = tempfile::tempdir().unwrap();
    // `send` produces in batches (of up to 10,000 records): most chunks
    // end inside one, where tansu 0.6 answers a fetch with the next batch.
    let input = generate("seq-window", 30_000, dir.path());
    let url = format!("kafka://{broker}/{}", topic("reopen"));
    send(&url, &input, Some("seq-window"), 1);
    {
        let partition = 0;
        let whole = read_partition(&url, partition, None);
        assert!(whole.len() > 2, "several chunks: {}", whole.len());
        let lines_from = |chunks: &[(u64, Vec<u8>, Position)]| -> Vec<u8> {
            chunks.iter().flat_map(|(_, lines, _)| lines.clone()).collect()
        };
        // Offsets run on from chunk to chunk: ids are consecutive.
        for pair in whole.windows(2) {
            let records = pair[0].1.iter().filter(|b| **b == b'\n').count() as u64;
            assert_eq!(pair[0].0 + records, pair[1].0);
        }
        for cut in [1, whole.len() / 2, whole.len() - 1] {
            let rest = read_partition(&url, partition, Some(whole[cut - 1].2));
            assert_eq!(
                rest[0].0, whole[cut].0,
                "partition {partition}: the first offset after chunk {cut}"
            );
            let summary = |chunks: &[(u64, Vec<u8>, Position)]| -> Vec<(u64, usize, Position)> {
                chunks
                    .iter()
                    .map(|(first, lines, at)| (*first, lines.iter().filter(|b| **b == b'\n').count(), *at))
                    .collect()
            };
            assert!(
                lines_from(&rest) == lines_from(&whole[cut..]),
                "partition {partition}: reopened after chunk {cut}, the lines differ: {:?} where {:?}",
                summary(&rest),
                summary(&whole[cut..])
            );
        }
    }
}

/// The end offset of each of `partitions` partitions of `topic`.
fn end_offsets(broker: &str, topic: &str, partitions: u32) -> Vec<u64> {
    use verity_kafka::client::RdPartitionLog;
    use verity_kafka::PartitionLog;
    let url = verity_kafka::KafkaUrl::parse(&format!("kafka://{broker}/{topic}")).unwrap();
    (0..partitions)
        .map(|partition| {
            let mut log = RdPartitionLog::connect(&url, partition).unwrap();
            log.watermarks().unwrap().high
        })
        .collect()
}

/// `start=`, `until=end` and `group=` on the broker: `latest` starts past
/// what is there (a bounded run then reads nothing), `earliest` and the
/// default read it all, and a group's offsets are committed once the
/// output is final (after each checkpoint too).
#[test]
fn start_positions_and_group_offsets() {
    let Some(broker) = broker() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = common::write(dir.path(), "in", b"1\n2\n3\n4\n5\n6\n7\n");
    let name = topic("start");
    let url = format!("kafka://{broker}/{name}");
    send(&url, &input, Some("doubler"), 2);
    let run_from = |query: &str| -> u64 {
        let output = dir.path().join("out");
        let summary = ok(run(&[
            "run",
            "doubler",
            "--input",
            &format!("{url}?{query}"),
            "--output",
            path_str(&output),
        ]));
        records_out(&stderr(&summary))
    };
    assert_eq!(run_from("start=latest&until=end"), 0);
    assert_eq!(run_from("start=earliest&until=end"), 7);
    assert_eq!(run_from("until=end&group=g1"), 7);
    let committed = verity_kafka::client::group_offsets(&broker, "g1", &name).unwrap();
    let ends: Vec<Option<u64>> = end_offsets(&broker, &name, 2).into_iter().map(Some).collect();
    assert_eq!(committed, ends, "the group stands at the end of every partition");
}

#[test]
fn a_missing_topic_is_one_clear_error() {
    let Some(broker) = broker() else { return };
    let url = format!("kafka://{broker}/{}", topic("missing"));
    let began = Instant::now();
    let failed = run(&["run", "doubler", "--input", &url, "--output", "null"]);
    assert!(!failed.status.success());
    let text = stderr(&failed);
    assert!(text.contains("does not exist"), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains("error")).count(), 1, "{text}");
    assert!(began.elapsed() < Duration::from_secs(60));
}

#[test]
fn an_unreachable_broker_is_one_clear_error_in_bounded_time() {
    // Port 1 on the loopback: nothing listens there.
    let began = Instant::now();
    let failed = verity()
        .args([
            "run",
            "doubler",
            "--input",
            "kafka://127.0.0.1:1/in",
            "--output",
            "null",
        ])
        .output()
        .unwrap();
    assert!(!failed.status.success());
    let text = stderr(&failed);
    assert!(
        text.contains("unreachable") && text.contains("127.0.0.1:1"),
        "{text}"
    );
    assert_eq!(text.lines().filter(|l| l.contains("error")).count(), 1, "{text}");
    assert!(
        began.elapsed() < Duration::from_secs(60),
        "bounded: {:?}",
        began.elapsed()
    );
}

#[test]
fn a_bad_kafka_url_is_refused_before_anything_connects() {
    let failed = run(&[
        "run",
        "doubler",
        "--input",
        "kafka://nohost/t",
        "--output",
        "null",
    ]);
    assert!(!failed.status.success());
    assert!(stderr(&failed).contains("no :PORT"), "{}", stderr(&failed));
}

/// Whether any partition of `topic` holds a record.
fn topic_has_records(broker: &str, topic: &str, partitions: u32) -> bool {
    use verity_kafka::client::RdPartitionLog;
    use verity_kafka::PartitionLog;
    let url = verity_kafka::KafkaUrl::parse(&format!("kafka://{broker}/{topic}")).unwrap();
    (0..partitions).any(|partition| {
        RdPartitionLog::connect(&url, partition)
            .and_then(|mut log| log.watermarks())
            .is_ok_and(|marks| marks.high > 0)
    })
}

/// kill -9 of a Kafka-to-Kafka run with checkpoints, then `--recover`:
/// with at-least-once delivery (tansu refuses transactions) the output topic
/// may hold repeats after the kill, which `verity receive` drops by their
/// output-id header, so the consumer's side verifies exact. How many repeats
/// there were is printed. (If the run finished before the kill, the
/// recovery has nothing left to do and the check still holds.) A repeat
/// carries the same id as its first delivery because a record's id is its
/// (partition, offset), however the partitions' chunks interleave after the
/// recovery.
#[test]
fn kill_9_and_recover_verifies_exact_from_the_consumer_side() {
    let Some(broker) = broker() else { return };
    let dir = tempfile::tempdir().unwrap();
    let records = 200_000;
    let input = generate("seq-window", records, dir.path());
    let input_url = format!("kafka://{broker}/{}", topic("kill-in"));
    let output_topic = topic("kill-out");
    let output_url = format!("kafka://{broker}/{output_topic}");
    send(&input_url, &input, Some("seq-window"), 4);
    send(&output_url, &common::write(dir.path(), "empty", b""), None, 3);
    let state = dir.path().join("state");
    let bounded = format!("{input_url}?until=end");
    let args = [
        "run",
        "seq-window",
        "--input",
        &bounded,
        "--output",
        &output_url,
        "--workers",
        "2",
        "--state-dir",
        path_str(&state),
        "--checkpoint-interval-ms",
        "50",
        "--delivery",
        "at-least-once",
    ];
    let mut child = verity()
        .args(args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The kill comes once output began and a checkpoint completed after
    // that (its manifest is there), so the recovery resumes from a
    // checkpoint that covers some input, and output the first life wrote
    // past it is written again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut wait_for = |ready: &mut dyn FnMut() -> bool| {
        while !ready() && Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(&mut || topic_has_records(&broker, &output_topic, 3));
    let seen = newest_checkpoint(&state);
    wait_for(&mut || newest_checkpoint(&state) > seen);
    let finished_first = child.try_wait().unwrap().is_some();
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    let mut recover = args.to_vec();
    recover.push("--recover");
    ok(run(&recover));
    let output = dir.path().join("out");
    let report = receive(&output_url, &output, records);
    eprintln!("after kill -9 and recovery (the first life had finished: {finished_first}): {report}");
    verify("seq-window", &["--input", path_str(&input)], &output);
}
