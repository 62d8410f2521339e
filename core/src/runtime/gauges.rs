//! What a run's threads publish for `--metrics-addr` beyond the shards'
//! totals, and the scrape's view of it (`metrics_section`).
//!
//! Each figure is written by the one thread that owns it, with relaxed
//! stores, at most once per chunk, batch, output buffer or loop turn, never
//! per record; waiting is timed only when a queue was full, so a run that
//! never blocks reads no extra clock. Queue depths are read at scrape time
//! through `DepthProbe`s, which hold their queue only weakly: a scrape
//! never keeps a queue open, so a gone receiver still disconnects its
//! senders as the run's threads expect.

use super::LiveCounters;
use crate::metrics::{family, histogram, summary, Kind, Section};
use crate::step_timing::{Step, StepTimings, LATENCY_BUCKETS};
use crossbeam_channel::Receiver;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use verity_net::node::TrafficBoard;

/// Time a thread spent blocked on a full queue, in µs. Only its thread
/// writes it.
#[derive(Debug, Default)]
pub(super) struct BlockedTime {
    us: AtomicU64,
}

impl BlockedTime {
    /// Runs `send`; if the queue was `full`, adds how long it took (the
    /// wait for room). A queue with room costs no clock read.
    pub fn send<T>(&self, full: bool, send: impl FnOnce() -> T) -> T {
        if !full {
            return send();
        }
        let began = Instant::now();
        let sent = send();
        self.add(began.elapsed());
        sent
    }

    pub fn add(&self, waited: Duration) {
        // Single writer: a load and a store, no read-modify-write.
        let us = self.us.load(Ordering::Relaxed) + waited.as_micros() as u64;
        self.us.store(us, Ordering::Relaxed);
    }

    fn seconds(&self) -> f64 {
        self.us.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// A shard's step timings (`crate::step_timing`) as relaxed atomics:
/// written by the shard's thread after each step (a copy, never a lock),
/// read by a scrape.
#[derive(Debug, Default)]
pub(super) struct TimingGauges {
    steps: [StepGauges; 3],
}

#[derive(Debug, Default)]
struct StepGauges {
    records: AtomicU64,
    sum_us: AtomicU64,
    counts: [AtomicU64; LATENCY_BUCKETS],
}

impl TimingGauges {
    pub fn publish(&self, timings: &StepTimings) {
        for (gauges, figures) in self.steps.iter().zip(&timings.steps) {
            gauges.records.store(figures.records, Ordering::Relaxed);
            gauges.sum_us.store(figures.latency.sum_us, Ordering::Relaxed);
            for (gauge, count) in gauges.counts.iter().zip(figures.latency.counts) {
                gauge.store(count, Ordering::Relaxed);
            }
        }
    }

    pub fn read(&self) -> StepTimings {
        let mut timings = StepTimings::default();
        for (figures, gauges) in timings.steps.iter_mut().zip(&self.steps) {
            figures.records = gauges.records.load(Ordering::Relaxed);
            figures.latency.sum_us = gauges.sum_us.load(Ordering::Relaxed);
            for (count, gauge) in figures.latency.counts.iter_mut().zip(&gauges.counts) {
                *count = gauge.load(Ordering::Relaxed);
            }
        }
        timings
    }
}

/// A local queue's depth, read at scrape time without keeping it open.
pub(super) struct DepthProbe(Box<dyn Fn() -> usize + Send + Sync>);

impl DepthProbe {
    pub fn of<T: Send + 'static>(queue: &Arc<Receiver<T>>) -> DepthProbe {
        let weak: Weak<Receiver<T>> = Arc::downgrade(queue);
        DepthProbe(Box::new(move || weak.upgrade().map_or(0, |rx| rx.len())))
    }

    fn depth(&self) -> usize {
        (self.0)()
    }
}

/// A local shard's incoming queues: dealt chunks (one per source) and
/// batches from the other local shards (one per source and sender).
#[derive(Default)]
pub(super) struct ShardDepths {
    pub chunks: Vec<DepthProbe>,
    pub batches: Vec<DepthProbe>,
}

/// One source's reader: what it dealt, and how long it waited for room in
/// a shard's chunk queue (the backpressure a TCP sender feels).
#[derive(Debug, Default)]
pub(super) struct SourceGauges {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub blocked: BlockedTime,
}

impl SourceGauges {
    /// A chunk of `records` lines and `bytes` bytes was dealt.
    pub fn dealt(&self, records: u64, bytes: u64) {
        let add = |counter: &AtomicU64, n: u64| {
            counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed)
        };
        add(&self.records, records);
        add(&self.bytes, bytes);
    }
}

/// Process 0's output thread: what it wrote and its checkpoints.
#[derive(Debug, Default)]
pub(super) struct OutputGauges {
    pub lines: AtomicU64,
    pub bytes: AtomicU64,
    pub dead_letters: AtomicU64,
    pub checkpoints: AtomicU64,
    /// From the request to durable (the writing alone after a recovery's
    /// first, which nobody requested).
    pub checkpoint_last_us: AtomicU64,
    pub checkpoint_sum_us: AtomicU64,
    pub checkpoint_last_bytes: AtomicU64,
}

impl OutputGauges {
    pub fn written(&self, written: crate::sink::Written) {
        self.lines.store(written.lines, Ordering::Relaxed);
        self.bytes.store(written.bytes, Ordering::Relaxed);
        self.dead_letters.store(written.dead_letters, Ordering::Relaxed);
    }

    pub fn checkpoint(&self, took: Duration, size_bytes: u64) {
        let us = took.as_micros() as u64;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        self.checkpoints
            .store(load(&self.checkpoints) + 1, Ordering::Relaxed);
        self.checkpoint_last_us.store(us, Ordering::Relaxed);
        self.checkpoint_sum_us
            .store(load(&self.checkpoint_sum_us) + us, Ordering::Relaxed);
        self.checkpoint_last_bytes.store(size_bytes, Ordering::Relaxed);
    }
}

/// Everything a scrape shows of one run in this process.
pub(super) struct RunGauges {
    pub shards: Arc<Vec<LiveCounters>>,
    pub first_shard: u32,
    pub depths: Vec<ShardDepths>,
    /// Process 0: its sources, by name, and its output thread.
    pub sources: Vec<(String, Arc<SourceGauges>)>,
    pub output: Option<(Arc<OutputGauges>, DepthProbe, String)>,
    pub audit: Option<verity_audit::AuditGauge>,
    pub net: Option<Arc<TrafficBoard>>,
}

/// The `sink` label of a run's output: the kind of sink, not its path
/// (labels stay few and stable across runs).
pub(super) fn sink_kind(spec: &crate::sink::SinkSpec) -> &'static str {
    use crate::sink::SinkSpec;
    match spec {
        SinkSpec::Stdout => "stdout",
        SinkSpec::File(_) => "file",
        SinkSpec::Tcp(_) => "tcp",
        SinkSpec::Null => "null",
        SinkSpec::Custom(_) => "custom",
    }
}

/// One sample: its labels (the inside of `{…}`) and value.
type Samples = Vec<(String, f64)>;

fn load(counter: &AtomicU64) -> f64 {
    counter.load(Ordering::Relaxed) as f64
}

/// A label value with `\`, `"` and newlines escaped, as the text format asks.
fn escaped(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl RunGauges {
    pub fn section(self) -> Section {
        Box::new(move |out| {
            self.shard_families(out);
            self.source_families(out);
            self.output_families(out);
            self.other_families(out);
        })
    }

    fn per_shard(&self, get: &dyn Fn(usize, &LiveCounters) -> f64) -> Samples {
        let label = |i: usize| format!("shard=\"{}\"", self.first_shard + i as u32);
        self.shards
            .iter()
            .enumerate()
            .map(|(i, c)| (label(i), get(i, c)))
            .collect()
    }

    fn shard_families(&self, out: &mut String) {
        let stalls = |c: &LiveCounters| c.stalls_us.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let depth = |probes: &[DepthProbe]| probes.iter().map(DepthProbe::depth).sum::<usize>() as f64;
        let families: [(&str, Kind, &str, Samples); 10] = [
            (
                "verity_records_in_total",
                Kind::Counter,
                "Input records a shard parsed.",
                self.per_shard(&|_, c| load(&c.records_in)),
            ),
            (
                "verity_records_out_total",
                Kind::Counter,
                "Output records a shard emitted.",
                self.per_shard(&|_, c| load(&c.records_out)),
            ),
            (
                "verity_dead_lettered_total",
                Kind::Counter,
                "Records a shard dead-lettered (malformed, or failed by the keyed step).",
                self.per_shard(&|_, c| load(&c.dead_lettered)),
            ),
            (
                "verity_late_total",
                Kind::Counter,
                "Records a shard dead-lettered as late (behind their event-time watermark).",
                self.per_shard(&|_, c| load(&c.late)),
            ),
            (
                "verity_duplicates_dropped_total",
                Kind::Counter,
                "Redelivered records a shard dropped (dedup).",
                self.per_shard(&|_, c| load(&c.duplicates_dropped)),
            ),
            (
                "verity_checkpoint_stalls",
                Kind::Gauge,
                "Checkpoint snapshots a shard took (the newest 1024 kept).",
                self.per_shard(&|_, c| stalls(c).len() as f64),
            ),
            (
                "verity_checkpoint_stall_max_seconds",
                Kind::Gauge,
                "The longest snapshot step among those kept.",
                self.per_shard(&|_, c| stalls(c).iter().max().copied().unwrap_or(0) as f64 / 1e6),
            ),
            (
                "verity_shard_backpressure_seconds_total",
                Kind::Counter,
                "Time a shard waited on a full queue: parked sends to a peer shard, or the output queue.",
                self.per_shard(&|_, c| c.blocked.seconds()),
            ),
            (
                "verity_shard_chunk_queue_depth",
                Kind::Gauge,
                "Dealt chunks waiting in a shard's local chunk queues (all sources).",
                self.per_shard(&|i, _| self.depths.get(i).map_or(0.0, |d| depth(&d.chunks))),
            ),
            (
                "verity_shard_batch_queue_depth",
                Kind::Gauge,
                "Batches waiting in a shard's queues from the other shards of its process (all sources).",
                self.per_shard(&|i, _| self.depths.get(i).map_or(0.0, |d| depth(&d.batches))),
            ),
        ];
        for (name, kind, help, samples) in families {
            family(out, name, kind, help, samples);
        }
        self.stall_quantiles(out);
        self.step_families(out);
    }

    /// Per shard and step: records, and how long each unit took, as a
    /// histogram in power-of-two buckets.
    fn step_families(&self, out: &mut String) {
        let timings: Vec<StepTimings> = self.shards.iter().map(|c| c.timings.read()).collect();
        let series = |step: Step| {
            timings.iter().enumerate().map(move |(i, t)| {
                let labels = format!(
                    "shard=\"{}\",step=\"{}\"",
                    self.first_shard + i as u32,
                    step.name()
                );
                (labels, *t.step(step))
            })
        };
        family(
            out,
            "verity_step_records_total",
            Kind::Counter,
            "Records a shard's step handled: parse (input lines), apply (records through the keyed step), output (lines handed on).",
            Step::ALL
                .into_iter()
                .flat_map(series)
                .map(|(labels, figures)| (labels, figures.records as f64)),
        );
        histogram(
            out,
            "verity_step_latency_seconds",
            "How long each unit of a shard's step took: parse a chunk, apply a batch, or hold an output buffer from its first line to its hand-off.",
            Step::ALL
                .into_iter()
                .flat_map(series)
                .map(|(labels, figures)| (labels, figures.latency)),
        );
    }

    /// The snapshot steps of all this process's shards (those kept) as one
    /// summary with quantiles, so a reader sees p50/p99 without the list.
    fn stall_quantiles(&self, out: &mut String) {
        let mut all: Vec<u64> = self
            .shards
            .iter()
            .flat_map(|c| c.stalls_us.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        all.sort_unstable();
        let name = "verity_checkpoint_stall_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Snapshot steps of this process's shards (the newest 1024 per shard kept)."
        );
        let _ = writeln!(out, "# TYPE {name} summary");
        for quantile in ["0.5", "0.99", "1"] {
            let q: f64 = quantile.parse().expect("a number");
            // Nearest rank: the smallest value with at least q of all at or below it.
            let rank = ((q * all.len() as f64).ceil() as usize).clamp(1, all.len().max(1)) - 1;
            let value = all.get(rank).copied().unwrap_or(0) as f64 / 1e6;
            let _ = writeln!(out, "{name}{{quantile=\"{quantile}\"}} {value}");
        }
        let _ = writeln!(out, "{name}_sum {}", all.iter().sum::<u64>() as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {}", all.len());
    }

    fn source_families(&self, out: &mut String) {
        if self.sources.is_empty() {
            return;
        }
        let per_source = |get: &dyn Fn(&SourceGauges) -> f64| -> Samples {
            self.sources
                .iter()
                .map(|(name, g)| (format!("source=\"{}\"", escaped(name)), get(g)))
                .collect()
        };
        let families: [(&str, &str, Samples); 3] = [
            (
                "verity_source_records_total",
                "Records a source's reader dealt to the shards.",
                per_source(&|g| load(&g.records)),
            ),
            (
                "verity_source_bytes_total",
                "Bytes of input a source's reader dealt to the shards.",
                per_source(&|g| load(&g.bytes)),
            ),
            (
                "verity_source_backpressure_seconds_total",
                "Time a source's reader waited for room in a shard's chunk queue.",
                per_source(&|g| g.blocked.seconds()),
            ),
        ];
        for (name, help, samples) in families {
            family(out, name, Kind::Counter, help, samples);
        }
    }

    fn output_families(&self, out: &mut String) {
        let Some((g, depth, sink)) = &self.output else {
            return;
        };
        let sink = format!("sink=\"{}\"", escaped(sink));
        let counters: [(&str, &str, f64); 3] = [
            (
                "verity_sink_records_total",
                "Output lines written to the sink.",
                load(&g.lines),
            ),
            (
                "verity_sink_bytes_total",
                "Output bytes written to the sink.",
                load(&g.bytes),
            ),
            (
                "verity_sink_dead_letters_total",
                "Dead letters written to the dead-letter sink.",
                load(&g.dead_letters),
            ),
        ];
        for (name, help, value) in counters {
            family(out, name, Kind::Counter, help, [(sink.as_str(), value)]);
        }
        family(
            out,
            "verity_output_queue_depth",
            Kind::Gauge,
            "Buffers waiting in the output thread's queue.",
            [("", depth.depth() as f64)],
        );
        summary(
            out,
            "verity_checkpoint_duration_seconds",
            "Checkpoints completed: from the request to durable (sum and count).",
            load(&g.checkpoint_sum_us) / 1e6,
            load(&g.checkpoints),
        );
        let gauges: [(&str, &str, f64); 2] = [
            (
                "verity_checkpoint_last_duration_seconds",
                "The newest checkpoint, from the request to durable.",
                load(&g.checkpoint_last_us) / 1e6,
            ),
            (
                "verity_checkpoint_last_size_bytes",
                "Bytes the newest checkpoint wrote.",
                load(&g.checkpoint_last_bytes),
            ),
        ];
        for (name, help, value) in gauges {
            family(out, name, Kind::Gauge, help, [("", value)]);
        }
    }

    fn other_families(&self, out: &mut String) {
        if let Some(audit) = &self.audit {
            family(
                out,
                "verity_audit_queue_depth",
                Kind::Gauge,
                "Buffers waiting for the audit log's writer thread.",
                [("", audit.queue_depth_buffers() as f64)],
            );
            family(
                out,
                "verity_audit_producer_waits_total",
                Kind::Counter,
                "Times a thread found the audit queue full and waited.",
                [("", audit.producer_waits() as f64)],
            );
        }
        let Some(net) = &self.net else {
            return;
        };
        let traffic = net.snapshot();
        let per_peer = |get: &dyn Fn(&verity_net::peer::PeerTraffic) -> u64| -> Samples {
            traffic
                .iter()
                .map(|(peer, t)| (format!("peer=\"{peer}\""), get(t) as f64))
                .collect()
        };
        let families: [(&str, &str, Samples); 5] = [
            (
                "verity_peer_frames_sent_total",
                "Frames sent to a peer process (first sends).",
                per_peer(&|t| t.frames_sent),
            ),
            (
                "verity_peer_frames_received_total",
                "Frames received from a peer process (duplicates included).",
                per_peer(&|t| t.frames_received),
            ),
            (
                "verity_peer_frames_resent_total",
                "Unacked frames written to a peer again when a connection to it (re)opened.",
                per_peer(&|t| t.frames_resent),
            ),
            (
                "verity_peer_sent_bytes_total",
                "Bytes written to a peer's connections.",
                per_peer(&|t| t.bytes_sent),
            ),
            (
                "verity_peer_received_bytes_total",
                "Bytes read from a peer's connections.",
                per_peer(&|t| t.bytes_received),
            ),
        ];
        for (name, help, samples) in families {
            family(out, name, Kind::Counter, help, samples);
        }
        family(
            out,
            "verity_net_frames_in_flight",
            Kind::Gauge,
            "Frames queued by this process's producers or unacked by peers.",
            [("", net.frames_in_flight() as f64)],
        );
    }
}
