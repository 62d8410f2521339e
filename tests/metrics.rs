//! `--metrics-addr`: a running process serves Prometheus text at /metrics
//! that follows its shards' totals, and 404 elsewhere (loopback only; every
//! wait is bounded).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).expect("connect to the metrics server");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// The sum over shards of a counter in a scrape.
/// The address a started run serves its metrics at (its first stderr
/// line), and the rest of its stderr.
fn metrics_address(child: &mut std::process::Child) -> (String, BufReader<std::process::ChildStderr>) {
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let address = line
        .trim()
        .strip_prefix("verity: metrics at http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("the first line names the metrics address: {line:?}"))
        .to_string();
    (address, stderr)
}

fn total(scrape: &str, name: &str) -> u64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn a_running_process_serves_its_counters_at_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.txt");
    let mut child = common::verity()
        .args([
            "run",
            "doubler",
            "--workers",
            "2",
            "--no-pin",
            "--metrics-addr",
            "127.0.0.1:0",
            "--output",
        ])
        .arg(&output)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start verity");
    let (address, _stderr) = metrics_address(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    for value in 0..1000 {
        writeln!(stdin, "{value}").unwrap();
    }
    writeln!(stdin, "not a number").unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let scrape = loop {
        let answer = get(&address, "/metrics");
        if total(&answer, "verity_records_in_total") == 1001 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(scrape.starts_with("HTTP/1.1 200 OK\r\n"), "{scrape}");
    assert!(
        scrape.contains("Content-Type: text/plain; version=0.0.4"),
        "{scrape}"
    );
    assert!(
        scrape.contains("# TYPE verity_records_in_total counter"),
        "{scrape}"
    );
    assert_eq!(total(&scrape, "verity_records_in_total"), 1001, "{scrape}");
    assert!(
        scrape.contains("verity_records_in_total{shard=\"1\"}"),
        "{scrape}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while total(&get(&address, "/metrics"), "verity_dead_lettered_total") != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(total(&get(&address, "/metrics"), "verity_dead_lettered_total"), 1);
    // Every line handed on (the input stays open: the shards flush as
    // their input runs dry), and its steps' histograms follow.
    let deadline = Instant::now() + Duration::from_secs(20);
    let scrape = loop {
        let answer = get(&address, "/metrics");
        if step_total(&answer, "verity_step_records_total", "output") == 1000 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    check_step_histograms(&scrape, 1001, 1000);
    assert!(get(&address, "/other").starts_with("HTTP/1.1 404 Not Found\r\n"));
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read_to_string(output).unwrap().lines().count(), 1000);
}

/// The sum over shards of `name`'s samples of one step.
fn step_total(scrape: &str, name: &str, step: &str) -> u64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("step=\"{step}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `verity_step_latency_seconds` is a histogram per shard and step whose
/// buckets are cumulative and end at `+Inf` with its count, beside
/// `verity_step_records_total` (lines parsed, lines handed on).
fn check_step_histograms(scrape: &str, parsed: u64, handed_on: u64) {
    let name = "verity_step_latency_seconds";
    assert!(scrape.contains(&format!("# TYPE {name} histogram\n")), "{scrape}");
    assert_eq!(
        step_total(scrape, "verity_step_records_total", "parse"),
        parsed,
        "{scrape}"
    );
    assert_eq!(
        step_total(scrape, "verity_step_records_total", "output"),
        handed_on,
        "{scrape}"
    );
    for shard in ["0", "1"] {
        for step in ["parse", "apply", "output"] {
            let labels = format!("shard=\"{shard}\",step=\"{step}\"");
            let buckets: Vec<(String, u64)> = scrape
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{{labels},le=\"")))
                .map(|rest| {
                    let (le, value) = rest.split_once("\"} ").unwrap();
                    (le.to_string(), value.parse().unwrap())
                })
                .collect();
            assert!(buckets.len() > 20, "{labels}: {buckets:?}");
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "cumulative: {buckets:?}"
            );
            let (last_le, last) = buckets.last().unwrap();
            assert_eq!(last_le, "+Inf");
            assert_eq!(
                sample(scrape, &format!("{name}_count{{{labels}}}")),
                Some(*last as f64)
            );
            assert!(
                sample(scrape, &format!("{name}_sum{{{labels}}}")).is_some(),
                "{labels}"
            );
        }
    }
    // Chunks were parsed and buffers handed on, so those units were timed.
    assert!(
        step_total(scrape, &format!("{name}_count"), "parse") >= 1,
        "{scrape}"
    );
    assert!(
        step_total(scrape, &format!("{name}_count"), "output") >= 1,
        "{scrape}"
    );
}

/// A sample's value: `name` exactly (no labels) or `name{labels}`.
fn sample(scrape: &str, name_and_labels: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.split(' ').next() == Some(name_and_labels))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Every family the run section of a scrape shows, and at least one sample
/// of each.
const CLUSTER_FAMILIES: [&str; 23] = [
    "verity_records_in_total",
    "verity_records_out_total",
    "verity_dead_lettered_total",
    "verity_late_total",
    "verity_shard_backpressure_seconds_total",
    "verity_shard_chunk_queue_depth",
    "verity_shard_batch_queue_depth",
    "verity_source_records_total",
    "verity_source_bytes_total",
    "verity_source_backpressure_seconds_total",
    "verity_sink_records_total",
    "verity_sink_bytes_total",
    "verity_sink_dead_letters_total",
    "verity_output_queue_depth",
    "verity_checkpoint_duration_seconds",
    "verity_checkpoint_last_duration_seconds",
    "verity_audit_queue_depth",
    "verity_audit_producer_waits_total",
    "verity_peer_frames_sent_total",
    "verity_peer_frames_received_total",
    "verity_peer_frames_resent_total",
    "verity_peer_sent_bytes_total",
    "verity_peer_received_bytes_total",
];

/// Process 0 of a 2-process cluster with checkpoints and an audit log, fed
/// by `verity send` at a bounded rate so it runs long enough to scrape: the
/// source, sink, queue, backpressure, checkpoint, audit and per-peer
/// families are there, each with HELP and TYPE, and the counters that saw
/// traffic are positive. No timing is asserted.
#[test]
fn a_cluster_process_serves_sources_sinks_queues_peers_checkpoints_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.txt"), dir.path().join("out.txt"));
    let mut lines: String = (1..=30_000).map(|v| format!("{v}\n")).collect();
    lines.push_str("not a number\n");
    std::fs::write(&input, lines).unwrap();
    let source_at = format!("127.0.0.1:{}", common::free_port());
    let mut child = common::verity()
        .args(["run", "doubler", "--processes", "2", "--workers", "1", "--no-pin"])
        .args(["--input", &format!("tcp:{source_at}"), "--output"])
        .arg(&output)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--checkpoint-interval-ms", "50", "--audit"])
        .arg(dir.path().join("audit"))
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start verity");
    let (address, mut stderr) = metrics_address(&mut child);
    // Drain the rest of stderr so the run never blocks on a full pipe.
    let log = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    let mut sender = common::verity()
        .args(["send", "--to", &source_at, "--input"])
        .arg(&input)
        .args(["--rate", "10000", "--batch", "100"])
        .stderr(Stdio::null())
        .spawn()
        .expect("start verity send");
    let ready = |scrape: &str| {
        let positive = [
            "verity_source_records_total",
            "verity_sink_records_total",
            "verity_peer_frames_sent_total",
            "verity_peer_frames_received_total",
            "verity_peer_sent_bytes_total",
            "verity_peer_received_bytes_total",
        ];
        positive.iter().all(|name| total(scrape, name) > 0)
            && sample(scrape, "verity_checkpoint_duration_seconds_count").is_some_and(|n| n > 0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let scrape = loop {
        let answer = get(&address, "/metrics");
        if ready(&answer) || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let sent = sender.wait().unwrap();
    let status = child.wait().unwrap();
    let log = log.join().unwrap();
    assert!(sent.success(), "send failed; run log:\n{log}");
    assert!(status.success(), "{status:?}\n{log}");
    assert!(ready(&scrape), "{scrape}\n{log}");
    for name in CLUSTER_FAMILIES {
        assert!(scrape.contains(&format!("\n# HELP {name} ")), "{name}:\n{scrape}");
        assert!(scrape.contains(&format!("\n# TYPE {name} ")), "{name}:\n{scrape}");
        let sampled = scrape.lines().any(|l| !l.starts_with('#') && l.starts_with(name));
        assert!(sampled, "{name} has a sample:\n{scrape}");
    }
    assert!(
        scrape.contains("# TYPE verity_checkpoint_duration_seconds summary\n"),
        "{scrape}"
    );
    let source = format!("verity_source_records_total{{source=\"tcp:{source_at}\"}}");
    assert!(
        sample(&scrape, &source).is_some_and(|n| n > 0.0),
        "{source}:\n{scrape}"
    );
    assert!(sample(&scrape, "verity_sink_bytes_total{sink=\"file\"}").is_some_and(|n| n > 0.0));
    assert!(sample(&scrape, "verity_peer_frames_sent_total{peer=\"1\"}").is_some_and(|n| n > 0.0));
    // Gauges and summaries are never negative; depths stay within their queues.
    for sample_line in scrape.lines().filter(|l| l.starts_with("verity_")) {
        let value: f64 = sample_line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(value >= 0.0 && value.is_finite(), "{sample_line}");
    }
    assert!(total(&scrape, "verity_shard_chunk_queue_depth") <= 16 * 2);
    assert!(sample(&scrape, "verity_audit_queue_depth").is_some_and(|d| d <= 64.0));
    assert_eq!(std::fs::read_to_string(&output).unwrap().lines().count(), 30_000);
}
