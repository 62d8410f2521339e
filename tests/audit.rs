//! The audit log end to end, as a user runs it: `run --audit`, then
//! `audit verify`, `digest`, `summary` and `replay`, and what each says of a
//! tampered log.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// A two-stream market-spread run with the stale-quote rule and a small
/// segment size (several segments); returns (dir, audit dir, output).
fn audited_run(extra: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (quotes, orders) = (dir.path().join("q.txt"), dir.path().join("o.txt"));
    ok(run(&[
        "generate",
        "market-spread",
        "--count",
        "60000",
        "--seed",
        "11",
        "--quotes-output",
        path_str(&quotes),
        "--orders-output",
        path_str(&orders),
    ]));
    let (audit, output) = (dir.path().join("audit"), dir.path().join("out.txt"));
    let mut args = vec![
        "run",
        "market-spread",
        "--quotes",
        path_str(&quotes),
        "--orders",
        path_str(&orders),
        "--output",
        path_str(&output),
        "--workers",
        "2",
        "--batch-max",
        "64",
        "--max-quote-age-ms",
        "2",
        "--audit",
        path_str(&audit),
        "--audit-segment-bytes",
        "65536",
    ];
    args.extend_from_slice(extra);
    ok(run(&args));
    (dir, audit, output)
}

/// `verity verify market-spread` of `output` against the two streams in
/// `dir` (as `audited_run` writes them), with `extra` flags.
fn verify_split(dir: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    let (quotes, orders) = (dir.join("q.txt"), dir.join("o.txt"));
    let mut args = vec![
        "verify",
        "market-spread",
        "--quotes",
        path_str(&quotes),
        "--orders",
        path_str(&orders),
        "--output",
        path_str(output),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn segments(audit: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(audit)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    names.sort();
    names
}

fn verify_fails(audit: &Path, extra: &[&str]) -> String {
    let mut args = vec!["audit", "verify", path_str(audit)];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn an_audited_run_verifies_summarizes_and_replays_byte_identical() {
    let (dir, audit, output) = audited_run(&[]);
    let verified = ok(run(&["audit", "verify", path_str(&audit)]));
    assert!(stderr(&verified).contains("OK"), "{}", stderr(&verified));
    assert!(segments(&audit).len() > 3, "rotation: {:?}", segments(&audit));

    let summary = stdout(&ok(run(&["audit", "summary", path_str(&audit)])));
    for kind in [
        "run-start",
        "input-chunk",
        "applied",
        "sent",
        "notes",
        "output",
        "failed",
        "run-end",
    ] {
        assert!(summary.contains(kind), "{kind} missing from:\n{summary}");
    }
    let lines = std::fs::read_to_string(&output).unwrap().lines().count();
    assert!(summary.contains(&format!("output lines: {lines}")), "{summary}");
    assert!(summary.contains("input records received: 60000"), "{summary}");
    assert!(summary.contains("CLOCK_MONOTONIC"), "{summary}");

    // Replay: from the recorded inputs, and from inputs given again.
    let replayed = dir.path().join("replayed.txt");
    let said = ok(run(&[
        "audit",
        "replay",
        path_str(&audit),
        "--output",
        path_str(&replayed),
    ]));
    assert!(stderr(&said).contains("byte-identical"), "{}", stderr(&said));
    assert_eq!(std::fs::read(&replayed).unwrap(), std::fs::read(&output).unwrap());
}

#[test]
fn replay_names_an_input_that_is_not_the_recorded_one() {
    let (dir, audit, _) = audited_run(&[]);
    let other = dir.path().join("other.txt");
    let mut quotes = b"Q,EXTRA,1.00,1.01\n".to_vec();
    quotes.extend(std::fs::read(dir.path().join("q.txt")).unwrap());
    std::fs::write(&other, quotes).unwrap();
    let out = run(&[
        "audit",
        "replay",
        path_str(&audit),
        "--quotes",
        path_str(&other),
        "--orders",
        path_str(&dir.path().join("o.txt")),
    ]);
    assert!(!out.status.success());
    let said = stderr(&out);
    assert!(said.contains("differ") || said.contains("DIVERGED"), "{said}");
}

#[test]
fn a_flipped_byte_a_deleted_segment_and_a_cut_tail_are_caught() {
    let (_dir, audit, _) = audited_run(&[]);
    let digest = stdout(&ok(run(&["audit", "digest", path_str(&audit)])));
    let digest_file = audit.parent().unwrap().join("digest.txt");
    std::fs::write(&digest_file, &digest).unwrap();
    let names = segments(&audit);

    // A flipped byte in the middle of the second segment.
    let second = std::fs::read(&names[1]).unwrap();
    let mut flipped = second.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x40;
    std::fs::write(&names[1], &flipped).unwrap();
    let said = verify_fails(&audit, &[]);
    assert!(
        said.contains(names[1].file_name().unwrap().to_str().unwrap()),
        "{said}"
    );
    std::fs::write(&names[1], &second).unwrap();
    ok(run(&[
        "audit",
        "verify",
        path_str(&audit),
        "--digest",
        path_str(&digest_file),
    ]));

    // A segment in the middle removed.
    let kept = std::fs::read(&names[2]).unwrap();
    std::fs::remove_file(&names[2]).unwrap();
    let said = verify_fails(&audit, &[]);
    assert!(said.contains("missing"), "{said}");
    std::fs::write(&names[2], &kept).unwrap();

    // The newest segment's tail cut: torn mid-record, or cut at a record
    // boundary (only the saved digest can tell that one).
    let last = names.last().unwrap();
    let whole = std::fs::read(last).unwrap();
    std::fs::write(last, &whole[..whole.len() - 5]).unwrap();
    let said = verify_fails(&audit, &[]);
    assert!(said.contains("cut short"), "{said}");
    std::fs::remove_file(last).unwrap();
    let said = verify_fails(&audit, &["--digest", path_str(&digest_file)]);
    assert!(said.contains("cut back"), "{said}");
}

#[test]
fn bad_audit_arguments_get_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = run(&["audit", "verify", path_str(&missing)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not an audit directory"),
        "{}",
        stderr(&out)
    );
    let out = run(&["audit", "summary", path_str(dir.path())]);
    assert!(
        stderr(&out).contains("holds no audit segments"),
        "{}",
        stderr(&out)
    );
    let out = run(&[
        "run",
        "doubler",
        "--generate",
        "10",
        "--audit",
        path_str(dir.path()),
        "--audit-fsync",
        "sometimes",
    ]);
    assert!(
        stderr(&out).contains("every-batch, interval-ms:N"),
        "{}",
        stderr(&out)
    );
    let out = run(&["run", "doubler", "--generate", "10", "--max-quote-age-ms", "5"]);
    assert!(stderr(&out).contains("market-spread option"), "{}", stderr(&out));
}

#[test]
fn every_reference_app_writes_its_records_and_replays() {
    for app in ["doubler", "wordcount", "seq-window", "market-spread"] {
        let dir = tempfile::tempdir().unwrap();
        let (audit, output) = (dir.path().join("audit"), dir.path().join("out.txt"));
        ok(run(&[
            "run",
            app,
            "--generate",
            "20000",
            "--workers",
            "2",
            "--output",
            path_str(&output),
            "--audit",
            path_str(&audit),
            "--audit-fsync",
            "every-batch",
        ]));
        let summary = stdout(&ok(run(&["audit", "summary", path_str(&audit)])));
        assert!(
            summary.contains("input records received: 20000"),
            "{app}: {summary}"
        );
        let replayed = dir.path().join("replayed.txt");
        ok(run(&[
            "audit",
            "replay",
            path_str(&audit),
            "--output",
            path_str(&replayed),
        ]));
        assert_eq!(
            std::fs::read(&replayed).unwrap(),
            std::fs::read(&output).unwrap(),
            "{app}"
        );
    }
}

#[test]
fn trace_tells_an_orders_story_with_the_quote_it_read_and_errors_list_every_failure() {
    let (dir, audit, output) = audited_run(&[]);
    let text = std::fs::read_to_string(&output).unwrap();
    let first = text
        .lines()
        .find(|l| l.contains(",ACCEPT,"))
        .expect("an accepted order");
    let order = first.split(',').next().unwrap();
    let story = stdout(&ok(run(&[
        "audit",
        "trace",
        path_str(&audit),
        "--output-id",
        order,
    ])));
    for part in [
        "received",
        "parsed by shard",
        "applied by shard",
        &format!("order {order}: accepted"),
        "quote in force",
        "the quote it read:",
        "output line",
    ] {
        assert!(story.contains(part), "`{part}` missing from:\n{story}");
    }
    let by_line = stdout(&ok(run(&[
        "audit",
        "trace",
        path_str(&audit),
        "--output-line",
        "1",
    ])));
    assert!(
        by_line.starts_with("output line 1: written by shard"),
        "{by_line}"
    );

    let listed = ok(run(&["audit", "errors", path_str(&audit)]));
    let dead = std::fs::read_to_string(dir.path().join("out.txt.dead-letter")).unwrap();
    let count = dead.lines().count();
    assert!(count > 0);
    assert!(
        stderr(&listed).contains(&format!("{count} failed records")),
        "{}",
        stderr(&listed)
    );
    assert_eq!(stdout(&listed).lines().count(), count);

    let out = run(&["audit", "trace", path_str(&audit), "--input-id", "x:y"]);
    assert!(stderr(&out).contains("is not an input id"), "{}", stderr(&out));
}

#[test]
fn the_audit_aware_verifier_is_exact_and_catches_a_stale_quote_the_plain_one_cannot() {
    // A clock-dependent run checks out exactly against its log.
    let (dir, audit, output) = audited_run(&[]);
    let (quotes, orders) = (dir.path().join("q.txt"), dir.path().join("o.txt"));
    let dead = format!("{}.dead-letter", path_str(&output));
    let checked = ok(verify_split(
        dir.path(),
        &output,
        &["--audit", path_str(&audit), "--dead-letter", &dead],
    ));
    assert!(
        stdout(&checked).contains("OK (with the audit log)"),
        "{}",
        stdout(&checked)
    );

    // A shard that decides on the previous quote: every decision is on a
    // quote that existed, in an order some interleaving allows.
    let (bugged, bugged_audit) = (dir.path().join("bugged.txt"), dir.path().join("bugged-audit"));
    ok(run(&[
        "run",
        "market-spread",
        "--quotes",
        path_str(&quotes),
        "--orders",
        path_str(&orders),
        "--output",
        path_str(&bugged),
        "--workers",
        "2",
        "--audit",
        path_str(&bugged_audit),
        "--plant-bug",
        "stale-quote",
    ]));
    let plain = verify_split(dir.path(), &bugged, &[]);
    assert!(
        plain.status.success(),
        "the audit-free check cannot see it: {}",
        stdout(&plain)
    );
    let exact = verify_split(dir.path(), &bugged, &["--audit", path_str(&bugged_audit)]);
    assert_eq!(exact.status.code(), Some(1), "{}", stdout(&exact));
    assert!(
        stdout(&exact).contains("but the newest quote applied before it was"),
        "{}",
        stdout(&exact)
    );
}

#[test]
fn stale_quote_alerts_are_checked_against_the_timers_the_log_recorded() {
    let (dir, audit, output) = audited_run(&[]);
    let text = std::fs::read_to_string(&output).unwrap();
    let alerts = text.lines().filter(|l| l.starts_with("STALE,")).count();
    assert!(alerts > 0, "a 2 ms rule over a whole run alerts some quotes");
    let checked = stdout(&ok(verify_split(
        dir.path(),
        &output,
        &["--audit", path_str(&audit)],
    )));
    assert!(
        checked.contains(&format!("{alerts} stale-quote alerts")),
        "{checked}"
    );

    // An alert lost, and one no timer fired: both are named.
    let lost = dir.path().join("lost.txt");
    let first = text.lines().position(|l| l.starts_with("STALE,")).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(n, _)| *n != first)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&lost, kept.join("\n") + "\n").unwrap();
    let said = verify_split(dir.path(), &lost, &["--audit", path_str(&audit)]);
    assert_eq!(said.status.code(), Some(1), "{}", stdout(&said));
    assert!(
        stdout(&said).contains("1 stale-quote alerts of the log are not in the output"),
        "{}",
        stdout(&said)
    );

    let forged = dir.path().join("forged.txt");
    std::fs::write(&forged, text.clone() + "STALE,S001,1.0000,1.0100\n").unwrap();
    let said = verify_split(dir.path(), &forged, &["--audit", path_str(&audit)]);
    assert_eq!(said.status.code(), Some(1), "{}", stdout(&said));
    assert!(
        stdout(&said).contains("no alert of the log's timers stands for it"),
        "{}",
        stdout(&said)
    );
}

#[test]
fn a_local_clusters_processes_keep_one_chain_each_and_the_run_replays() {
    let (dir, audit, output) = audited_run(&["--processes", "2", "--no-pin"]);
    let names: Vec<String> = segments(&audit)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("p00001-")),
        "the worker's chain: {names:?}"
    );
    let verified = ok(run(&["audit", "verify", path_str(&audit)]));
    assert!(stderr(&verified).contains("2 chains"), "{}", stderr(&verified));
    let replayed = dir.path().join("replayed.txt");
    ok(run(&[
        "audit",
        "replay",
        path_str(&audit),
        "--output",
        path_str(&replayed),
    ]));
    assert_eq!(std::fs::read(&replayed).unwrap(), std::fs::read(&output).unwrap());
    let checked = ok(verify_split(dir.path(), &output, &["--audit", path_str(&audit)]));
    assert!(
        stdout(&checked).contains("OK (with the audit log)"),
        "{}",
        stdout(&checked)
    );
}
