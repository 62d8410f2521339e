//! The Kafka side of the black-box harness: `verity send --to kafka://…`
//! produces a file into a topic (creating it if missing), `verity receive
//! --listen kafka://…` consumes one with read_committed from the beginning
//! and drops repeats by the output-id header.

use super::{output_id, reading_consumer, topic_partitions, RdProducer};
use crate::log::{key_partition, LogError, LogProducer};
use crate::sink::KeyOf;
use crate::url::KafkaUrl;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Partitions of a topic `send` creates, unless told.
pub const DEFAULT_PARTITIONS: u32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{0}")]
    Log(#[from] LogError),
    #[error("{path}: {error}")]
    File { path: String, error: std::io::Error },
}

fn file_error(path: &Path) -> impl Fn(std::io::Error) -> HarnessError + '_ {
    move |error| HarnessError::File {
        path: path.display().to_string(),
        error,
    }
}

/// Creates `url`'s topic with `partitions` partitions unless it exists.
pub fn ensure_topic(url: &KafkaUrl, partitions: u32) -> Result<(), HarnessError> {
    Ok(super::ensure_topic(&url.brokers, &url.topic, partitions, &[])?)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendReport {
    pub lines: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// Produces each line of `input` as one record, at `rate` lines per second
/// if given: keyed by `key_by` into the partition of its key
/// (`key_partition`, so a key's records share one), else unkeyed and
/// spread over the partitions in turn.
///
/// Records go in batches, but each partition's last record goes alone in a
/// batch of its own at the end: tansu 0.6 reports a partition's end offset
/// (ListOffsets) as its last batch's base offset + 1, so a bounded run
/// (`until=end`) would otherwise stop short of the last batch's other
/// records. Each partition's newest line waits for the next (one line per
/// partition held), so the order within a partition is the file's.
pub fn send(
    url: &KafkaUrl,
    input: &Path,
    rate: Option<u64>,
    key_by: Option<KeyOf>,
    partitions: u32,
) -> Result<SendReport, HarnessError> {
    ensure_topic(url, partitions)?;
    // An existing topic keeps its own partition count.
    let partitions = topic_partitions(&reading_consumer(&url.brokers, None)?, &url.brokers, &url.topic)?;
    let file = std::fs::File::open(input).map_err(file_error(input))?;
    let mut producer = RdProducer::connect(&url.brokers, &url.topic, None)?;
    let mut held: Vec<Option<Vec<u8>>> = vec![None; partitions as usize];
    let began = Instant::now();
    let mut report = SendReport {
        lines: 0,
        bytes: 0,
        seconds: 0.0,
    };
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(file_error(input))? == 0 {
            break;
        }
        let value = line.strip_suffix(b"\n").unwrap_or(&line);
        let partition = match key_by {
            Some(key_of) => key_partition(key_of(value), partitions),
            None => (report.lines % u64::from(partitions)) as u32,
        };
        let slot = &mut held[partition as usize];
        if let Some(previous) = slot.as_mut() {
            producer.produce_to(partition, record_key(key_by, previous), previous)?;
            previous.clear();
            previous.extend_from_slice(value);
        } else {
            *slot = Some(value.to_vec());
        }
        report.lines += 1;
        report.bytes += line.len() as u64;
        if let Some(rate) = rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(report.lines as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    producer.flush()?;
    for (partition, last) in held.iter().enumerate() {
        if let Some(last) = last {
            producer.produce_to(partition as u32, record_key(key_by, last), last)?;
            producer.flush()?;
        }
    }
    report.seconds = began.elapsed().as_secs_f64();
    Ok(report)
}

/// The key `send` gives a line: its app key, or none.
fn record_key(key_by: Option<KeyOf>, value: &[u8]) -> &[u8] {
    key_by.map_or(&b""[..], |key_of| key_of(value))
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReceiveReport {
    pub lines: u64,
    pub bytes: u64,
    /// Records dropped because one with the same output id and value came
    /// before (at-least-once delivery after a recovery).
    pub repeats: u64,
    pub seconds: f64,
    /// `expect` lines arrived (else silence ended it).
    pub complete: bool,
}

/// Consumes `url`'s topic (read_committed, from the beginning) into
/// `output`, one line per record, until `expect` lines or `silence` with
/// nothing new.
pub fn receive(
    url: &KafkaUrl,
    output: &Path,
    expect: Option<u64>,
    silence: Duration,
) -> Result<ReceiveReport, HarnessError> {
    let consumer = reading_consumer(&url.brokers, Some("verity-receive"))?;
    let partitions = topic_partitions(&consumer, &url.brokers, &url.topic)?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(&url.topic, partition as i32, Offset::Beginning)
            .map_err(|e| LogError::Other(e.to_string()))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| LogError::Other(format!("cannot assign {}: {e}", url.topic)))?;
    let file = std::fs::File::create(output).map_err(file_error(output))?;
    let mut out = BufWriter::new(file);
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let began = Instant::now();
    let mut last_arrival = Instant::now();
    let mut report = ReceiveReport {
        lines: 0,
        bytes: 0,
        repeats: 0,
        seconds: 0.0,
        complete: false,
    };
    let mut identity = Vec::new();
    while !report.complete && last_arrival.elapsed() < silence {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = result.map_err(|e| LogError::Other(format!("reading {}: {e}", url.topic)))?;
        last_arrival = Instant::now();
        let value = message.payload().unwrap_or_default();
        if let Some(id) = output_id(&message).filter(|id| !id.is_empty()) {
            identity.clear();
            identity.extend_from_slice(id);
            identity.push(0);
            identity.extend_from_slice(value);
            if !seen.insert(identity.clone()) {
                report.repeats += 1;
                continue;
            }
        }
        out.write_all(value).map_err(file_error(output))?;
        out.write_all(b"\n").map_err(file_error(output))?;
        report.lines += 1;
        report.bytes += value.len() as u64 + 1;
        report.complete = expect.is_some_and(|n| report.lines >= n);
    }
    out.flush().map_err(file_error(output))?;
    report.seconds = began.elapsed().as_secs_f64();
    Ok(report)
}
