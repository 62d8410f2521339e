//! `verity bench`: throughput and open-loop latency runs write their
//! reports (JSON with stable names, the .hgrm distribution) and refuse bad
//! arguments with a clear line. Nothing here depends on how fast the machine is.

mod common;

use common::{ok, path_str, run, stderr, stdout};

#[test]
fn a_latency_run_reports_percentiles_as_text_json_and_hgrm() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report/bench.json");
    let hgrm = dir.path().join("report/latency.hgrm");
    let html = dir.path().join("report/latency.html");
    let output = ok(run(&[
        "bench",
        "wordcount",
        "--events",
        "3000",
        "--workers",
        "2",
        "--rate",
        "30000",
        "--no-pin",
        "--json",
        path_str(&json),
        "--hgrm",
        path_str(&hgrm),
        "--html",
        path_str(&html),
    ]));
    let text = stdout(&output);
    assert!(text.contains("3000 events, 2 workers"), "{text}");
    assert!(text.contains("latency at 30000 events/s (open loop"), "{text}");
    let json = std::fs::read_to_string(json).unwrap();
    for field in [
        "\"events_per_s\":",
        "\"p50_us\":",
        "\"p99_us\":",
        "\"p999_us\":",
        "\"max_us\":",
        "\"rate\": 30000",
    ] {
        assert!(json.contains(field), "{field} in {json}");
    }
    let samples: u64 = json
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"latency_samples\": "))
        .and_then(|v| v.trim_end_matches(',').parse().ok())
        .expect("latency_samples");
    let outputs: u64 = json
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"outputs\": "))
        .and_then(|v| v.trim_end_matches(',').parse().ok())
        .expect("outputs");
    assert_eq!(samples, outputs, "one latency per output line");
    assert!(outputs > 3000, "wordcount: a running count per word");
    let hgrm = std::fs::read_to_string(hgrm).unwrap();
    assert!(hgrm.contains("1/(1-Percentile)"), "{hgrm}");
    assert!(
        hgrm.contains(&format!("Total count    = {outputs:>12}]")),
        "{hgrm}"
    );
}

#[test]
fn a_throughput_run_reports_events_per_second() {
    let output = ok(run(&[
        "bench",
        "doubler",
        "--events",
        "20000",
        "--workers",
        "1",
        "--no-pin",
    ]));
    let text = stdout(&output);
    assert!(
        text.contains("20000 events, 1 workers") && text.contains("events/s"),
        "{text}"
    );
    assert!(text.contains("20000 outputs, 0 dead-lettered"), "{text}");
    assert!(!text.contains("latency"), "{text}");
}

#[test]
fn bad_arguments_say_what_is_wrong() {
    let output = run(&["bench", "doubler", "--hgrm", "x.hgrm"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--rate"), "{}", stderr(&output));
    let output = run(&["bench", "doubler", "--rate", "0"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--rate"), "{}", stderr(&output));
}

#[test]
fn a_sweep_runs_latency_at_each_load_of_the_measured_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("sweep.json");
    let output = ok(run(&[
        "bench",
        "doubler",
        "--events",
        "20000",
        "--workers",
        "1",
        "--no-pin",
        "--sweep",
        "--json",
        path_str(&json),
    ]));
    let text = stdout(&output);
    for load in ["10%", "25%", "50%", "75%", "90%"] {
        assert!(text.contains(load), "{load} in {text}");
    }
    assert!(text.contains("sustainable throughput: "), "{text}");
    let json = std::fs::read_to_string(json).unwrap();
    assert_eq!(json.matches("\"p99_us\":").count(), 5, "{json}");
    assert!(json.contains("\"sustainable_events_per_s\":"), "{json}");
    assert!(json.contains("\"achieved_events_per_s\":"), "{json}");
}

/// A JSON report's numeric (or boolean) field, as text.
fn field<'a>(json: &'a str, name: &str) -> Option<&'a str> {
    json.lines().find_map(|l| {
        l.trim()
            .strip_prefix(&format!("\"{name}\": "))
            .map(|v| v.trim_end_matches(','))
    })
}

#[test]
fn a_throughput_run_on_a_local_cluster_of_two_processes() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("cluster.json");
    let output = ok(run(&[
        "bench",
        "doubler",
        "--events",
        "20000",
        "--workers",
        "1",
        "--processes",
        "2",
        "--no-pin",
        "--json",
        path_str(&json),
    ]));
    let text = stdout(&output);
    assert!(text.contains("1 workers in each of 2 processes"), "{text}");
    // Every process's shards, with their steps.
    assert!(text.contains("per shard: 0 (process 0): "), "{text}");
    assert!(text.contains("; 1 (process 1): "), "{text}");
    for step in ["parse", "apply", "output"] {
        assert!(text.contains(&format!("step {step} ")), "{text}");
        assert!(text.contains(&format!("  shard 1: {step} ")), "{text}");
    }
    let json = std::fs::read_to_string(json).unwrap();
    assert_eq!(field(&json, "processes"), Some("2"), "{json}");
    assert_eq!(field(&json, "events"), Some("20000"), "{json}");
    assert_eq!(field(&json, "outputs"), Some("20000"), "{json}");
    assert_eq!(field(&json, "exactly_once"), Some("false"), "{json}");
    assert!(
        json.contains("\"per_shard\": [{\"shard\": 0, \"process\": 0, \"records_in\": "),
        "{json}"
    );
    assert!(
        json.contains("{\"shard\": 1, \"process\": 1, \"records_in\": "),
        "{json}"
    );
    let numbers_after = |key: &str| -> Vec<u64> {
        json.match_indices(key)
            .map(|(at, m)| {
                let rest = &json[at + m.len()..];
                rest[..rest.find([',', '}']).unwrap()].parse::<u64>().unwrap()
            })
            .collect()
    };
    // Both shards' inputs add up to the events, and the remote one's
    // figures are its own (it parsed its chunks and applied its records).
    let records_in = numbers_after("\"records_in\": ");
    assert_eq!(records_in.len(), 2, "{json}");
    assert_eq!(records_in.iter().sum::<u64>(), 20000, "{json}");
    assert!(records_in.iter().all(|&n| n > 0), "{json}");
    // Per shard and in all: parse, apply and output, each with its records.
    assert_eq!(json.matches("\"parse\": {\"records\": ").count(), 3, "{json}");
    assert_eq!(json.matches("\"apply\": {\"records\": ").count(), 3, "{json}");
    assert_eq!(json.matches("\"output\": {\"records\": ").count(), 3, "{json}");
    let per_step = &json[json.find("\"per_step\": ").expect("per_step")..];
    let parsed: u64 = per_step["\"per_step\": {\"parse\": {\"records\": ".len()..]
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(parsed, 20000, "{json}");
}

#[test]
fn an_exactly_once_run_reports_its_checkpoints_and_per_shard_records() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("eo.json");
    let state = dir.path().join("state");
    let output = ok(run(&[
        "bench",
        "wordcount",
        "--events",
        "20000",
        "--workers",
        "2",
        "--no-pin",
        "--exactly-once",
        "--state-dir",
        path_str(&state),
        "--checkpoint-interval-ms",
        "5",
        "--json",
        path_str(&json),
    ]));
    let text = stdout(&output);
    assert!(
        text.contains("exactly once") && text.contains("checkpoints every 5 ms: "),
        "{text}"
    );
    let json = std::fs::read_to_string(json).unwrap();
    assert_eq!(field(&json, "exactly_once"), Some("true"), "{json}");
    assert_eq!(field(&json, "processes"), Some("1"), "{json}");
    assert_eq!(field(&json, "checkpoint_interval_ms"), Some("5"), "{json}");
    for name in [
        "checkpoints",
        "checkpoint_stalls",
        "checkpoint_stall_p50_us",
        "checkpoint_stall_p99_us",
        "checkpoint_stall_max_us",
    ] {
        let value: Option<u64> = field(&json, name).and_then(|v| v.parse().ok());
        assert!(value.is_some(), "{name} in {json}");
    }
    // Per shard: both shards, their inputs adding up to the events.
    let records_in: u64 = json
        .match_indices("\"records_in\": ")
        .map(|(at, m)| {
            let rest = &json[at + m.len()..];
            rest[..rest.find(',').unwrap()].parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(json.matches("\"shard\": ").count(), 2, "{json}");
    assert_eq!(records_in, 20000, "{json}");
    // A given state dir is kept (whether a checkpoint fell within so short a
    // run is up to the clock).
    assert!(state.is_dir());
    // One that holds anything is refused: a benchmark starts from scratch.
    std::fs::write(state.join("left-over"), b"x").unwrap();
    let again = run(&[
        "bench",
        "wordcount",
        "--events",
        "10",
        "--no-pin",
        "--exactly-once",
        "--state-dir",
        path_str(&state),
    ]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("not empty"), "{}", stderr(&again));
}

#[test]
fn a_latency_run_on_two_processes_writes_the_hgrm() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("latency.json");
    let hgrm = dir.path().join("latency.hgrm");
    let output = ok(run(&[
        "bench",
        "doubler",
        "--events",
        "3000",
        "--workers",
        "1",
        "--processes",
        "2",
        "--rate",
        "30000",
        "--no-pin",
        "--json",
        path_str(&json),
        "--hgrm",
        path_str(&hgrm),
    ]));
    assert!(
        stdout(&output).contains("latency at 30000 events/s"),
        "{}",
        stdout(&output)
    );
    let json = std::fs::read_to_string(json).unwrap();
    assert_eq!(field(&json, "processes"), Some("2"), "{json}");
    // Every output, from both processes' shards, has its latency.
    assert_eq!(field(&json, "outputs"), Some("3000"), "{json}");
    assert_eq!(field(&json, "latency_samples"), Some("3000"), "{json}");
    let hgrm = std::fs::read_to_string(hgrm).unwrap();
    assert!(hgrm.contains("1/(1-Percentile)"), "{hgrm}");
    assert!(hgrm.contains("Total count    =         3000]"), "{hgrm}");
}

#[test]
fn bad_cluster_and_checkpoint_arguments_say_what_is_wrong() {
    let output = run(&["bench", "doubler", "--processes", "0"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--processes") && stderr(&output).contains("at least one process"),
        "{}",
        stderr(&output)
    );
    let output = run(&["bench", "doubler", "--processes", "65"]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("at most 64"), "{}", stderr(&output));
    for flag in [["--state-dir", "x"], ["--checkpoint-interval-ms", "10"]] {
        let output = run(&["bench", "doubler", flag[0], flag[1]]);
        assert!(!output.status.success());
        assert!(stderr(&output).contains("--exactly-once"), "{}", stderr(&output));
    }
}
