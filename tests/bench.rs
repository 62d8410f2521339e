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
