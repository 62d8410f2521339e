//! The connectors this binary knows: the built-in ones, plus `kafka://`
//! sources and sinks when built with the `kafka` feature (the default).

#[cfg(not(feature = "kafka"))]
use anyhow::bail;
use anyhow::Result;
use std::path::Path;
use verity_apps::AppName;
use verity_core::Connectors;

/// How a run's Kafka sinks deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaDelivery {
    /// No checkpoints, or `--delivery at-least-once`: the idempotent
    /// producer; a consumer drops repeats by the output-id header.
    AtLeastOnce,
    /// Checkpoints with exactly-once delivery: a transaction per checkpoint.
    Transactional,
}

/// A job's name, stable across restarts of the same command line and state
/// dir, different between jobs: the core of its Kafka transactional ids.
pub fn job_fingerprint(job: &str, output: &str, state_dir: Option<&Path>) -> String {
    let state_dir = state_dir
        .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf()))
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let hash = [job, output, &state_dir]
        .iter()
        .flat_map(|part| part.bytes().chain([0]))
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// The built-in connectors and the sources of this binary's schemes: what a
/// worker builds a spread source from (the same as process 0 did) and what
/// a replay re-reads.
pub fn sources() -> Connectors {
    let connectors = Connectors::built_in();
    #[cfg(feature = "kafka")]
    let connectors = connectors.with_source("kafka", verity_kafka::client::source_factory());
    connectors
}

/// The connectors of a run of `app` (process 0 of its cluster).
#[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
pub fn for_run(app: AppName, delivery: KafkaDelivery, job_fingerprint: &str) -> Connectors {
    let connectors = sources();
    #[cfg(feature = "kafka")]
    let connectors = {
        use verity_kafka::client::{sink_factory, SinkContext};
        let context = SinkContext {
            process: 0, // the opening process sets its own (`sink_factory`)
            job_fingerprint: job_fingerprint.to_string(),
            delivery: match delivery {
                KafkaDelivery::AtLeastOnce => verity_kafka::SinkDelivery::AtLeastOnce,
                KafkaDelivery::Transactional => verity_kafka::SinkDelivery::Transactional,
            },
            key_of: verity_apps::record_keys::output_key(app),
        };
        connectors.with_sink("kafka", sink_factory(context))
    };
    connectors
}

/// Whether an address is a Kafka topic.
pub fn is_kafka(address: &str) -> bool {
    address.starts_with("kafka://")
}

/// `verity send --to kafka://…`.
#[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
pub fn send_to_kafka(
    to: &str,
    input: &Path,
    rate: Option<u64>,
    key_by: Option<AppName>,
    partitions: u32,
) -> Result<i32> {
    #[cfg(feature = "kafka")]
    {
        let url = verity_kafka::KafkaUrl::parse(to)?;
        let key_of = key_by.map(verity_apps::record_keys::input_key);
        let report = verity_kafka::client::harness::send(&url, input, rate, key_of, partitions)?;
        eprintln!(
            "verity send: {} lines ({} bytes) to {} in {:.3} s ({:.0} lines/s)",
            report.lines,
            report.bytes,
            to,
            report.seconds,
            report.lines as f64 / report.seconds.max(1e-9)
        );
        Ok(0)
    }
    #[cfg(not(feature = "kafka"))]
    bail!("{to}: this verity was built without the `kafka` feature")
}

/// `verity receive --listen kafka://…`.
#[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
pub fn receive_from_kafka(
    from: &str,
    output: &Path,
    expect: Option<u64>,
    silence: std::time::Duration,
) -> Result<i32> {
    #[cfg(feature = "kafka")]
    {
        let url = verity_kafka::KafkaUrl::parse(from)?;
        let report = verity_kafka::client::harness::receive(&url, output, expect, silence)?;
        eprintln!(
            "verity receive: {} lines ({} bytes) in {:.3} s{}, {} repeats dropped",
            report.lines,
            report.bytes,
            report.seconds,
            if report.complete { "" } else { ", ended by silence" },
            report.repeats
        );
        Ok(if expect.is_some() && !report.complete {
            1
        } else {
            0
        })
    }
    #[cfg(not(feature = "kafka"))]
    bail!("{from}: this verity was built without the `kafka` feature")
}
