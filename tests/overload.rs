//! Overload, short (issue 12; `scripts/overload.sh` is the long version):
//! `verity send` as fast as it goes into a one-worker seq-window run's TCP
//! source, with more input (about 9 MB) than loopback sockets buffer. The
//! run must take all of it (TCP backpressure slows the sender instead of
//! the run buffering), lose nothing (`verity verify`), and keep its peak
//! RSS under a generous bound. Loopback only; every wait is bounded; no
//! assertion on timing.

mod common;

use common::{path_str, stderr, stdout};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const RECORDS: &str = "400000";
/// Far above what a debug build with one worker takes: the sender is
/// slowed to the run's pace.
const SEND_RATE_PER_S: &str = "5000000";
/// Peak RSS the run may reach. A debug build idles at a few tens of MiB;
/// a run that buffered what it cannot process yet would pass this only
/// because the input is small, so the bound is loose on purpose: it
/// catches unbounded growth, not a few MiB.
const RSS_MAX_KIB: u64 = 256 * 1024;
const TIMEOUT: Duration = Duration::from_secs(180);

/// Waits for `child` at most `TIMEOUT`, then kills it.
fn wait_bounded(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not end within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The peak RSS (VmHWM) of process `pid` in KiB, if /proc shows it.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_sender_faster_than_the_run_is_slowed_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.txt"), dir.path().join("out.txt"));
    // Generated input holds malformed lines too: their dead letters count.
    common::ok(common::run(&[
        "generate",
        "seq-window",
        "--count",
        RECORDS,
        "--seed",
        "7",
        "--output",
        path_str(&input),
    ]));
    let source = format!("tcp:127.0.0.1:{}", common::free_port());
    let mut run = common::verity()
        .args([
            "run",
            "seq-window",
            "--workers",
            "1",
            "--no-pin",
            "--input",
            &source,
            "--output",
        ])
        .arg(&output)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start verity run");
    // Its stderr, drained on a thread; the "listening" line says when to send.
    let (listening_tx, listening_rx) = mpsc::channel();
    let run_stderr = BufReader::new(run.stderr.take().unwrap());
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        for line in run_stderr.lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = listening_tx.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    if listening_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = run.kill();
        panic!("the run's source does not listen:\n{}", log.join().unwrap());
    }
    let address = source.strip_prefix("tcp:").unwrap();
    let mut sender = Command::new(env!("CARGO_BIN_EXE_verity"))
        .args([
            "send",
            "--to",
            address,
            "--input",
            path_str(&input),
            "--rate",
            SEND_RATE_PER_S,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start verity send");
    // VmHWM only grows: its last reading before the run exits is its peak,
    // give or take what the run's last few milliseconds added.
    let mut peak_kib = None;
    let deadline = Instant::now() + TIMEOUT;
    let run_status = loop {
        if let Some(kib) = peak_rss_kib(run.id()) {
            peak_kib = Some(kib);
        }
        if let Some(status) = run.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = (run.kill(), sender.kill());
            panic!("the run did not end within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let sent = wait_bounded(&mut sender, "verity send");
    let log = log.join().unwrap();
    let mut send_log = String::new();
    let _ = std::io::Read::read_to_string(&mut sender.stderr.take().unwrap(), &mut send_log);
    assert!(run_status.success(), "run: {run_status:?}\n{log}");
    assert!(sent.success(), "send: {sent:?}\n{send_log}");
    let dead_letter = format!("{}.dead-letter", path_str(&output));
    let verified = common::run(&[
        "verify",
        "seq-window",
        "--input",
        path_str(&input),
        "--output",
        path_str(&output),
        "--dead-letter",
        &dead_letter,
        "--input-name",
        &source,
    ]);
    assert!(
        stdout(&verified).starts_with("OK"),
        "{}{}\nrun:\n{log}",
        stdout(&verified),
        stderr(&verified)
    );
    match peak_kib {
        Some(kib) => {
            println!(
                "overload: run peak RSS {} MiB; sender: {}",
                kib / 1024,
                send_log.trim()
            );
            assert!(kib < RSS_MAX_KIB, "peak RSS {kib} KiB, over {RSS_MAX_KIB} KiB");
        }
        None => println!("overload: /proc/<pid>/status shows no VmHWM here; RSS not checked"),
    }
}
