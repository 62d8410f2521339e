//! The Kafka side of the black-box harness: `verity send --to kafka://…`
//! produces a file into a topic (creating it if missing), `verity receive
//! --listen kafka://…` consumes one with read_committed from the beginning
//! and drops repeats by the output-id header.

use super::{output_id, reading_consumer, topic_partitions, RdProducer};
use crate::log::{LogError, LogProducer};
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

/// Produces each line of `input` as one record (keyed by `key_by`, else
/// unkeyed), at `rate` lines per second if given.
pub fn send(
    url: &KafkaUrl,
    input: &Path,
    rate: Option<u64>,
    key_by: Option<KeyOf>,
    partitions: u32,
) -> Result<SendReport, HarnessError> {
    ensure_topic(url, partitions)?;
    let file = std::fs::File::open(input).map_err(file_error(input))?;
    // One record per batch: tansu 0.6 reports a partition's end offset
    // (ListOffsets) as the last batch's base offset + 1, so with batches of
    // many records a bounded run (`until=end`) would stop short.
    let unbatched = [("batch.num.messages", "1"), ("linger.ms", "0")];
    let mut producer = RdProducer::connect_with(&url.brokers, &url.topic, None, &unbatched)?;
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
        let key = key_by.map_or(&b""[..], |key_of| key_of(value));
        producer.produce(key, value, b"")?;
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
    report.seconds = began.elapsed().as_secs_f64();
    Ok(report)
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
