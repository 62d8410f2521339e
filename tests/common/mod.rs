//! Helpers for tests that run the `verity` binary as a user would.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn verity() -> Command {
    Command::new(env!("CARGO_BIN_EXE_verity"))
}

/// Runs `verity` with `args`, returning its output.
pub fn run(args: &[&str]) -> Output {
    verity().args(args).output().expect("start verity")
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts success, showing stderr otherwise.
pub fn ok(output: Output) -> Output {
    assert!(
        output.status.success(),
        "verity failed ({:?}): {}",
        output.status,
        stderr(&output)
    );
    output
}

pub fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write test file");
    path
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Runs `app` on `input` with `workers` and checks the output and dead
/// letters with `verity verify`; returns the run's stderr (summary).
pub fn run_and_verify(app: &str, input: &Path, workers: usize, extra: &[&str]) -> String {
    let dir = input.parent().expect("input in a directory");
    let output = dir.join(format!("{app}-{workers}.out"));
    let workers = workers.to_string();
    let mut args = vec![
        "run",
        app,
        "--input",
        path_str(input),
        "--output",
        path_str(&output),
        "--workers",
        &workers,
    ];
    args.extend_from_slice(extra);
    let run_output = ok(run(&args));
    // The run's dead letters land beside its file output.
    let dead_letter = format!("{}.dead-letter", path_str(&output));
    let mut verify_args = vec![
        "verify",
        app,
        "--input",
        path_str(input),
        "--output",
        path_str(&output),
        "--dead-letter",
        &dead_letter,
    ];
    if extra.contains(&"--final") {
        verify_args.push("--final");
    }
    let verified = run(&verify_args);
    assert!(
        verified.status.success(),
        "{app} at {workers} workers failed its oracle:\n{}{}",
        stdout(&verified),
        stderr(&verified)
    );
    assert!(stdout(&verified).starts_with("OK"), "{}", stdout(&verified));
    stderr(&run_output)
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
