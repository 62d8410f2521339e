//! `verity nexmark <q> --check` as a user runs it: every query that is
//! built agrees with its reference model at W=1, W=2 and on two processes,
//! from the built-in generator and from a file of events; a bug planted in
//! a query is caught.

mod common;

use common::{path_str, run, stderr};

/// Queries the engine runs (q4 and q6 need a second keyed stage).
const BUILT: [&str; 7] = ["q0", "q1", "q2", "q3", "q5", "q7", "q8"];
/// The queries on event time.
const WINDOWED: [&str; 3] = ["q5", "q7", "q8"];
/// Small, and slow in event time, so the windowed queries close many
/// windows: 6 000 events at 200 per second span 30 s.
const EVENTS: &str = "6000";
const EVENT_RATE: &str = "200";

fn nexmark(query: &str, output: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "nexmark",
        query,
        "--event-rate",
        EVENT_RATE,
        "--output",
        path_str(output),
        "--check",
        "--no-pin",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// `verity generate nexmark` of `EVENTS` events into a file in `dir`.
fn generate_events(dir: &std::path::Path, seed: &str) -> std::path::PathBuf {
    let events = dir.join("events.txt");
    let generated = run(&[
        "generate",
        "nexmark",
        "--count",
        EVENTS,
        "--seed",
        seed,
        "--event-rate",
        EVENT_RATE,
        "--output",
        path_str(&events),
    ]);
    assert!(generated.status.success(), "{}", stderr(&generated));
    events
}

fn assert_checked(output: &std::process::Output, what: &str) {
    let text = stderr(output);
    assert!(output.status.success(), "{what}: {text}");
    assert!(text.contains("OK nexmark-"), "{what}: {text}");
}

#[test]
fn every_built_query_passes_check_at_w1_w2_and_p2() {
    let dir = tempfile::tempdir().unwrap();
    for query in BUILT {
        for (workers, processes) in [("1", "1"), ("2", "1"), ("1", "2")] {
            let output = dir.path().join(format!("{query}-{workers}x{processes}.out"));
            let result = nexmark(
                query,
                &output,
                &[
                    "--events",
                    EVENTS,
                    "--seed",
                    "5",
                    "--workers",
                    workers,
                    "--processes",
                    processes,
                ],
            );
            assert_checked(&result, &format!("{query} W={workers} P={processes}"));
        }
    }
}

#[test]
fn a_file_of_generated_events_checks_like_the_generator() {
    let dir = tempfile::tempdir().unwrap();
    let events = generate_events(dir.path(), "9");
    let mut data = std::fs::read(&events).unwrap();
    assert_eq!(data.iter().filter(|b| **b == b'\n').count(), 6000);
    // A malformed line is dead-lettered, and the check expects that.
    data.extend_from_slice(b"B,1000,not a bid\n");
    std::fs::write(&events, &data).unwrap();
    for query in BUILT {
        let output = dir.path().join(format!("{query}.out"));
        let result = nexmark(query, &output, &["--input", path_str(&events), "--workers", "2"]);
        assert_checked(&result, query);
        assert!(stderr(&result).contains("1 dead-lettered"), "{}", stderr(&result));
    }
}

#[test]
fn late_events_of_an_out_of_order_file_are_dead_lettered_as_the_models_say() {
    let dir = tempfile::tempdir().unwrap();
    let events = generate_events(dir.path(), "2");
    // 50 events (persons, auctions and bids) moved 2 000 events (10 s of
    // event time) later: far behind the watermark when they come.
    let text = std::fs::read_to_string(&events).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let moved: Vec<&str> = lines.drain(100..150).collect();
    lines.splice(2100..2100, moved);
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    for query in WINDOWED {
        let output = dir.path().join(format!("{query}.out"));
        let result = nexmark(query, &output, &["--input", path_str(&events), "--workers", "2"]);
        assert_checked(&result, query);
        assert!(
            stderr(&result).contains(" of them late"),
            "{query}: {}",
            stderr(&result)
        );
    }
}

#[test]
fn a_planted_bug_in_q2_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("q2.out");
    let result = nexmark(
        "q2",
        &output,
        &[
            "--events",
            "20000",
            "--workers",
            "2",
            "--plant-bug",
            "q2-off-by-one",
        ],
    );
    let text = stderr(&result);
    assert_eq!(result.status.code(), Some(1), "{text}");
    assert!(text.contains("FAILED nexmark-q2"), "{text}");
    assert!(text.contains("lost") && text.contains("unexpected"), "{text}");
}

#[test]
fn unbuilt_queries_and_bad_options_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("q4.out");
    let result = nexmark("q4", &output, &["--events", "100"]);
    assert_eq!(result.status.code(), Some(1));
    assert!(
        stderr(&result).contains("q4 is not built yet"),
        "{}",
        stderr(&result)
    );
    let result = run(&["nexmark", "q9", "--events", "10"]);
    assert!(
        stderr(&result).contains("unknown query `q9`"),
        "{}",
        stderr(&result)
    );
    let result = run(&["nexmark", "q0", "--events", "10", "--event-rate", "0"]);
    assert!(
        stderr(&result).contains("--event-rate 0 is out of range"),
        "{}",
        stderr(&result)
    );
    let result = run(&["nexmark", "q0", "--check", "--output", path_str(&output)]);
    assert!(
        stderr(&result).contains("--check needs the events again"),
        "{}",
        stderr(&result)
    );
}
