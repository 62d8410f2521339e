//! Live metrics of a running process, in Prometheus' text exposition format
//! (`verity run … --metrics-addr HOST:PORT` serves them at `/metrics`).
//!
//! The hot path does not know this module: shards already publish their
//! totals into relaxed atomics once per step (the progress line reads them
//! too), the other threads publish theirs once per chunk, buffer or loop
//! turn (`runtime::gauges`), and a scrape reads those. A run registers what it can show as a
//! *section* (a closure that writes metric families); a later run of the
//! same process (a worker's next job) replaces it, and a finished run's
//! final figures stay visible until then.

use crate::step_timing::Pow2Histogram;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Writes a run's metric families into a scrape.
pub type Section = Box<dyn Fn(&mut String) + Send + Sync>;

/// The metrics of one process.
pub struct Metrics {
    started: Instant,
    runs: Mutex<(u64, Option<Section>)>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics {
            started: Instant::now(),
            runs: Mutex::new((0, None)),
        })
    }

    /// A run starts: `section` shows it from now on.
    pub fn set_run(&self, section: Section) {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.0 += 1;
        runs.1 = Some(section);
    }

    /// The whole scrape.
    pub fn render(&self) -> String {
        let mut out = String::new();
        family(
            &mut out,
            "verity_uptime_seconds",
            Kind::Gauge,
            "Seconds since the process started serving metrics.",
            [("", self.started.elapsed().as_secs_f64())],
        );
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        family(
            &mut out,
            "verity_runs_started_total",
            Kind::Counter,
            "Runs (jobs) this process started.",
            [("", runs.0 as f64)],
        );
        if let Some(section) = &runs.1 {
            section(&mut out);
        }
        out
    }
}

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Writes one metric family: its help and type lines, then one sample per
/// `(labels, value)`, where `labels` is the inside of `{…}` (e.g.
/// `shard="0"`) or empty.
pub fn family<L: AsRef<str>>(
    out: &mut String,
    name: &str,
    kind: Kind,
    help: &str,
    samples: impl IntoIterator<Item = (L, f64)>,
) {
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
    };
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let labels = labels.as_ref();
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// Writes a summary without quantiles: its help and type lines, then
/// `{name}_sum` and `{name}_count` (durations whose distribution is not
/// kept, e.g. checkpoints).
pub fn summary(out: &mut String, name: &str, help: &str, sum: f64, count: f64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} summary");
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {count}");
}

/// Writes a histogram family of durations: its help and type lines, then
/// per series (`labels` as in `family`, not empty) the cumulative
/// `{name}_bucket` samples at each power-of-two bound (`le` in seconds, the
/// last `+Inf`), `{name}_sum` (seconds) and `{name}_count`.
pub fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (String, Pow2Histogram)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (labels, h) in series {
        let mut cumulative = 0;
        for (bucket, count) in h.counts.iter().enumerate() {
            cumulative += count;
            let le = match Pow2Histogram::upper_bound_us(bucket) {
                Some(us) => (us as f64 / 1e6).to_string(),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_is_prometheus_text_with_the_run_section() {
        let metrics = Metrics::new();
        assert!(metrics.render().contains("verity_runs_started_total 0\n"));
        metrics.set_run(Box::new(|out| {
            family(
                out,
                "verity_records_in_total",
                Kind::Counter,
                "Records in.",
                [("shard=\"1\"", 7.0)],
            )
        }));
        let text = metrics.render();
        assert!(text.contains("# TYPE verity_uptime_seconds gauge\n"), "{text}");
        assert!(text.contains("verity_runs_started_total 1\n"), "{text}");
        assert!(
            text.contains("# HELP verity_records_in_total Records in.\n# TYPE verity_records_in_total counter\nverity_records_in_total{shard=\"1\"} 7\n"),
            "{text}"
        );
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_in_seconds_up_to_inf() {
        let mut h = Pow2Histogram::default();
        h.record(1);
        h.record(3);
        h.record(3);
        h.record(u64::MAX / 2);
        let mut out = String::new();
        histogram(&mut out, "x_seconds", "X.", [("step=\"a\"".to_string(), h)]);
        assert!(
            out.starts_with("# HELP x_seconds X.\n# TYPE x_seconds histogram\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{step=\"a\",le=\"0.000001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{step=\"a\",le=\"0.000002\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{step=\"a\",le=\"0.000004\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{step=\"a\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{step=\"a\"} 4\n"), "{out}");
        let buckets = out.lines().filter(|l| l.starts_with("x_seconds_bucket")).count();
        assert_eq!(buckets, crate::step_timing::LATENCY_BUCKETS);
    }
}
