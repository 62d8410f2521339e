//! The black-box harness end to end: an external sender feeds a TCP source,
//! an external receiver collects the TCP sink, and the verifier follows the
//! output while the run writes it.

mod common;

use common::*;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn wait_for_listener(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn finish(child: Child, what: &str) -> std::process::Output {
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{what}: {}{}",
        stdout(&output),
        stderr(&output)
    );
    output
}

#[test]
fn send_run_receive_and_follow() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    ok(run(&[
        "generate",
        "seq-window",
        "--count",
        "20000",
        "--seed",
        "5",
        "--output",
        path_str(&input),
    ]));
    // The generator writes some malformed lines too (dead-lettered, no output).
    let generated = std::fs::read(&input).unwrap();
    let expected = verity_verify::expected_output(verity_verify::App::SeqWindow, &generated)
        .lines
        .len()
        .to_string();
    let output = dir.path().join("out.txt");
    let (source_port, sink_port) = (free_port(), free_port());
    let piped = |args: &[&str]| {
        verity()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn verity")
    };
    let sink = format!("127.0.0.1:{sink_port}");
    let receiver = piped(&[
        "receive",
        "--listen",
        &sink,
        "--output",
        path_str(&output),
        "--expect",
        &expected,
        "--timeout-s",
        "30",
    ]);
    wait_for_listener(sink_port);
    let source = format!("tcp:127.0.0.1:{source_port}");
    let engine = piped(&[
        "run",
        "seq-window",
        "--input",
        &source,
        "--output",
        &format!("tcp:{sink}"),
        "--workers",
        "2",
    ]);
    let follower = piped(&[
        "verify",
        "seq-window",
        "--input",
        path_str(&input),
        "--output",
        path_str(&output),
        "--follow",
    ]);
    let to = format!("127.0.0.1:{source_port}");
    let sent = ok(run(&[
        "send",
        "--to",
        &to,
        "--input",
        path_str(&input),
        "--rate",
        "100000",
        "--batch",
        "500",
    ]));
    assert!(stderr(&sent).contains("20000 lines"), "{}", stderr(&sent));
    finish(engine, "run");
    let received = finish(receiver, "receive");
    let lines = format!("{expected} lines");
    assert!(stderr(&received).contains(&lines), "{}", stderr(&received));
    let followed = finish(follower, "verify --follow");
    assert!(
        stdout(&followed).starts_with("OK seq-window"),
        "{}",
        stdout(&followed)
    );
    let arrivals = std::fs::read_to_string(dir.path().join("out.txt.arrivals")).unwrap();
    let last = arrivals.lines().last().expect("arrival times");
    assert!(last.ends_with(&format!(" {expected}")), "{last}");
}

#[test]
fn follow_reports_anomalies_in_a_growing_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.txt", b"k 1\nk 2\nk 3\n");
    let output = dir.path().join("out.txt");
    let follower = verity()
        .args([
            "verify",
            "seq-window",
            "--input",
            path_str(&input),
            "--output",
            path_str(&output),
        ])
        .args(["--follow", "--idle-timeout-s", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&output, "k 0 0 0 1\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&output, "k 0 0 0 1\nk 0 0 1 2\nk 0 0 1 2\n").unwrap();
    let result = follower.wait_with_output().unwrap();
    assert_eq!(result.status.code(), Some(1));
    let report = stdout(&result);
    assert!(
        report.contains("duplicated 1") && report.contains("lost 1"),
        "{report}"
    );
}
