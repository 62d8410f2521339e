//! Bad input from the command line: one clear error line, a non-zero exit.

mod common;

use common::*;

fn assert_fails_with(args: &[&str], needle: &str) {
    let output = run(args);
    assert!(!output.status.success(), "{args:?} should fail");
    let err = stderr(&output);
    assert!(err.contains(needle), "{args:?}: expected {needle:?} in {err:?}");
}

#[test]
fn missing_input_file_is_one_clear_line() {
    let output = run(&["run", "doubler", "--input", "/nonexistent/in.txt"]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/nonexistent/in.txt") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn bad_flags_and_values_fail() {
    assert_fails_with(&["run", "nosuchapp"], "nosuchapp");
    assert_fails_with(&["run", "doubler", "--workers", "0"], "--workers");
    assert_fails_with(&["run", "doubler", "--workers", "many"], "--workers");
    assert_fails_with(&["run", "doubler", "--bogus"], "--bogus");
    assert_fails_with(&["run", "doubler", "--generate", "10", "--final"], "--final");
    assert_fails_with(
        &["run", "doubler", "--quotes", "a", "--orders", "b"],
        "market-spread",
    );
    assert_fails_with(&["run", "market-spread", "--quotes", "a"], "--orders");
    assert_fails_with(
        &[
            "run",
            "doubler",
            "--generate",
            "10",
            "--state-dir",
            "/nonexistent/state",
        ],
        "stdout cannot take lines back",
    );
    assert_fails_with(
        &[
            "run",
            "doubler",
            "--generate",
            "10",
            "--output",
            "null",
            "--max-restarts",
            "3",
        ],
        "--state-dir",
    );
    assert_fails_with(
        &[
            "verify",
            "doubler",
            "--input",
            "/nonexistent",
            "--output",
            "/nonexistent",
        ],
        "/nonexistent",
    );
}

#[test]
fn unreachable_tcp_sink_fails_before_reading() {
    // A port nobody listens on: bind one, then drop the listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = run(&[
        "run",
        "doubler",
        "--generate",
        "10",
        "--output",
        &format!("tcp:127.0.0.1:{port}"),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cannot connect output"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_url_without_a_connector_is_refused() {
    assert_fails_with(
        &["run", "doubler", "--input", "s3://bucket/in"],
        "no connector for the scheme `s3://`",
    );
    assert_fails_with(
        &["run", "doubler", "--generate", "1", "--output", "s3://bucket/out"],
        "no connector for the scheme `s3://`",
    );
}

#[test]
fn output_into_missing_directory_fails() {
    assert_fails_with(
        &[
            "run",
            "doubler",
            "--generate",
            "10",
            "--output",
            "/nonexistent/dir/out.txt",
        ],
        "cannot create output",
    );
}

#[test]
fn run_help_documents_the_formats() {
    let output = ok(run(&["run", "market-spread", "--help"]));
    let help = stdout(&output);
    for needle in [
        "Q,<symbol>,<bid>,<ask>",
        "O,<order_id>",
        "--quotes",
        "--batch-max",
        "--generate",
    ] {
        assert!(help.contains(needle), "missing {needle} in help");
    }
    assert!(stdout(&ok(run(&["run", "seq-window", "--help"]))).contains("k 3 4 5 6"));
}

#[test]
fn verify_reports_mismatches_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in", b"a 1\na 2\n");
    let output = write(dir.path(), "out", b"a 0 0 0 1\na 0 0 0 2\n");
    let verified = run(&[
        "verify",
        "seq-window",
        "--input",
        path_str(&input),
        "--output",
        path_str(&output),
    ]);
    assert_eq!(verified.status.code(), Some(1));
    assert!(stdout(&verified).contains("FAILED"), "{}", stdout(&verified));
}

#[test]
fn workers_with_a_cluster_file_is_refused() {
    let output = run(&[
        "run",
        "doubler",
        "--generate",
        "10",
        "--cluster",
        "/nonexistent/cluster.toml",
        "--workers",
        "2",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("--workers 2 does not apply with --cluster")
            && err.contains("the cluster file /nonexistent/cluster.toml says how many workers"),
        "{err}"
    );
}
