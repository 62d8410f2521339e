//! Crash recovery with real processes: a run with `--state-dir` is killed
//! with SIGKILL several times and continued with `--recover` each time; the
//! finished output and dead letters must be exactly those of the input
//! (`verity verify`: nothing lost, nothing twice, nothing wrong). A kill that
//! comes after the run finished is no failure: the test never depends on
//! timing, only the number of real crashes varies.
mod common;

use common::{ok, path_str, run, stderr, verity};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The input of `app`: generated, with malformed lines.
fn generate(dir: &Path, app: &str, records: u64) -> Vec<String> {
    let count = records.to_string();
    if app == "market-spread" {
        let (quotes, orders) = (dir.join("quotes.txt"), dir.join("orders.txt"));
        ok(run(&[
            "generate",
            app,
            "--count",
            &count,
            "--quotes-output",
            path_str(&quotes),
            "--orders-output",
            path_str(&orders),
        ]));
        vec![
            "--quotes".into(),
            path_str(&quotes).into(),
            "--orders".into(),
            path_str(&orders).into(),
        ]
    } else {
        let input = dir.join("in.txt");
        ok(run(&[
            "generate",
            app,
            "--count",
            &count,
            "--output",
            path_str(&input),
        ]));
        vec!["--input".into(), path_str(&input).into()]
    }
}

struct Job {
    app: &'static str,
    input: Vec<String>,
    output: PathBuf,
    state: PathBuf,
}

impl Job {
    fn new(dir: &Path, app: &'static str, records: u64) -> Job {
        Job {
            app,
            input: generate(dir, app, records),
            output: dir.join("out.txt"),
            state: dir.join("state"),
        }
    }

    fn args(&self, recover: bool) -> Vec<String> {
        let mut args: Vec<String> = vec!["run".into(), self.app.into()];
        args.extend(self.input.iter().cloned());
        args.extend(
            [
                "--output",
                path_str(&self.output),
                "--workers",
                "2",
                "--state-dir",
                path_str(&self.state),
                "--checkpoint-interval-ms",
                "20",
            ]
            .map(String::from),
        );
        if recover {
            args.push("--recover".into());
        }
        args
    }

    /// Starts the run (continuing from the state dir after the first) and
    /// kills it after `after`. Returns whether it was still running.
    fn crash_after(&self, recover: bool, after: Duration) -> bool {
        let mut child = verity()
            .args(self.args(recover))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start verity");
        std::thread::sleep(after);
        let running = child.try_wait().expect("poll verity").is_none();
        let _ = child.kill();
        let _ = child.wait();
        running
    }

    fn finish(&self) -> String {
        let args = self.args(true);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stderr(&ok(run(&args)))
    }

    fn verify(&self) {
        let mut args: Vec<String> = vec!["verify".into(), self.app.into()];
        args.extend(self.input.iter().cloned());
        let dead = format!("{}.dead-letter", path_str(&self.output));
        args.extend(["--output", path_str(&self.output), "--dead-letter", &dead].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let report = common::stdout(&ok(run(&args)));
        assert!(report.contains("OK"), "{report}");
    }
}

/// Kills a run `kills` times at growing delays, then lets it finish.
fn crash_recover_verify(app: &'static str, records: u64, kills: u32) {
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new(dir.path(), app, records);
    let mut crashed = 0;
    for kill in 0..kills {
        let after = Duration::from_millis(60 + 30 * u64::from(kill));
        if job.crash_after(kill > 0, after) {
            crashed += 1;
        }
    }
    let summary = job.finish();
    job.verify();
    eprintln!("{app}: {crashed} of {kills} kills hit a running process; then: {summary}");
}

#[test]
fn seq_window_survives_kill_9_and_recovers_exactly() {
    crash_recover_verify("seq-window", 2_000_000, 6);
}

#[test]
fn wordcount_survives_kill_9_and_recovers_exactly() {
    crash_recover_verify("wordcount", 2_000_000, 6);
}

#[test]
fn two_stream_market_spread_survives_kill_9_and_recovers_exactly() {
    crash_recover_verify("market-spread", 2_000_000, 6);
}

/// The newest checkpoint's files, for corruption.
fn newest_checkpoint_files(state: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    names.sort();
    let newest = names
        .last()
        .expect("a checkpoint")
        .file_name()
        .unwrap()
        .to_string_lossy()[..25]
        .to_string();
    names
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&newest))
        .collect()
}

#[test]
fn a_corrupt_newest_checkpoint_is_reported_and_the_one_before_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new(dir.path(), "seq-window", 300_000);
    // A finished run leaves its last checkpoints behind.
    let args = job.args(false);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(run(&args));
    let part = newest_checkpoint_files(&job.state).pop().expect("a part");
    let mut bytes = std::fs::read(&part).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&part, bytes).unwrap();
    let summary = job.finish();
    assert!(summary.contains("passed over"), "{summary}");
    job.verify();
}

#[test]
fn a_state_dir_is_refused_for_a_fresh_run_and_for_another_job() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new(dir.path(), "seq-window", 300_000);
    let args = job.args(false);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(run(&args));
    let again = run(&args);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("pass --recover"), "{}", stderr(&again));
    let other = run(&[
        "run",
        "doubler",
        "--input",
        &job.input[1],
        "--output",
        path_str(&dir.path().join("other.txt")),
        "--state-dir",
        path_str(&job.state),
        "--recover",
    ]);
    assert!(!other.status.success());
    assert!(stderr(&other).contains("checkpoints"), "{}", stderr(&other));
}
