//! Crash recovery with real processes: a run with `--state-dir` is killed
//! with SIGKILL several times and continued with `--recover` each time; the
//! finished output and dead letters must be exactly those of the input
//! (`verity verify`: nothing lost, nothing twice, nothing wrong). A kill that
//! comes after the run finished is no failure: the test never depends on
//! timing, only the number of real crashes varies.
//!
//! In a 3-process cluster, a killed worker makes process 0 restart every
//! process from the newest checkpoint by itself; the test kills a worker
//! each time a new checkpoint appeared (so every restart follows progress),
//! then waits for the run to finish on its own.
mod common;

use common::{free_port, newest_checkpoint, ok, path_str, run, stderr, verity};
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
    /// A local cluster of this many processes of one shard each (else one
    /// process of two shards).
    processes: Option<u32>,
    /// What the run reads instead of `input`, if not the same: a `dir://`
    /// source of `input` split by key into partitions.
    run_input: Option<Vec<String>>,
}

impl Job {
    fn new(dir: &Path, app: &'static str, records: u64) -> Job {
        Job {
            app,
            input: generate(dir, app, records),
            output: dir.join("out.txt"),
            state: dir.join("state"),
            processes: None,
            run_input: None,
        }
    }

    /// The same job read from 5 partition files of a `dir://` source.
    fn spread(self, dir: &Path) -> Job {
        let [flag, input] = &self.input[..] else {
            panic!("one input file")
        };
        assert_eq!(flag, "--input");
        let parts = common::split_into_partitions(self.app, Path::new(input), dir, "parts", 5);
        Job {
            run_input: Some(vec!["--input".into(), format!("dir://{}", path_str(&parts))]),
            ..self
        }
    }

    fn args(&self, recover: bool) -> Vec<String> {
        let mut args: Vec<String> = vec!["run".into(), self.app.into()];
        args.extend(self.run_input.as_ref().unwrap_or(&self.input).iter().cloned());
        let layout = match self.processes {
            None => vec!["--workers".to_string(), "2".to_string()],
            Some(p) => ["--processes", &p.to_string(), "--workers", "1", "--no-pin"]
                .map(String::from)
                .to_vec(),
        };
        args.extend(layout);
        args.extend(
            [
                "--output",
                path_str(&self.output),
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
        let dead = PathBuf::from(format!("{}.dead-letter", path_str(&self.output)));
        if self.run_input.is_none() {
            verify_files(self.app, &self.input, &self.output, &dead, None);
            return;
        }
        // A spread source's dead letters name its streams' line numbers,
        // not the unsplit input's: the output is checked, and the letters
        // counted against the malformed lines.
        let mut args: Vec<String> = vec!["verify".into(), self.app.into()];
        args.extend(self.input.iter().cloned());
        args.extend(["--output".to_string(), path_str(&self.output).to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let report = common::stdout(&ok(run(&args)));
        assert!(report.contains("OK"), "{report}");
        let malformed: usize = report
            .split_once(" input records (")
            .and_then(|(_, rest)| rest.split_once(" malformed"))
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or_else(|| panic!("a count of malformed lines in {report}"));
        let letters = std::fs::read_to_string(&dead).unwrap_or_default().lines().count();
        assert_eq!(letters, malformed, "every malformed line dead-lettered once");
    }
}

/// `verity verify` of `output` and `dead` against `input` (its arguments),
/// which the run knew as `input_name` if given; it must say OK.
fn verify_files(app: &str, input: &[String], output: &Path, dead: &Path, input_name: Option<&str>) {
    let mut args: Vec<String> = vec!["verify".into(), app.into()];
    args.extend(input.iter().cloned());
    args.extend(["--output", path_str(output), "--dead-letter", path_str(dead)].map(String::from));
    if let Some(name) = input_name {
        args.extend(["--input-name".to_string(), name.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = common::stdout(&ok(run(&args)));
    assert!(report.contains("OK"), "{report}");
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

/// The processes whose parent is `pid` (Linux: `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // gone meanwhile
        };
        // `pid (name) state ppid ...`: the name may hold spaces.
        let after_name = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        let ppid = after_name
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            children.push(child);
        }
    }
    children.sort_unstable();
    children
}

/// Bounded waits: generous, since the machine may be busy; a test never
/// passes or fails on how long something took within them.
const WAIT_MAX: Duration = Duration::from_secs(240);
const POLL: Duration = Duration::from_millis(20);

/// Waits until `ready` or the child exited; false if it exited.
fn wait_while_running(child: &mut std::process::Child, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + WAIT_MAX;
    while std::time::Instant::now() < deadline {
        if child.try_wait().expect("poll verity").is_some() {
            return false;
        }
        if ready() {
            return true;
        }
        std::thread::sleep(POLL);
    }
    let _ = child.kill();
    panic!("verity neither got ready nor exited within {WAIT_MAX:?}");
}

/// A 3-process run of `app` in which `kills` workers are killed with
/// SIGKILL, each after a new checkpoint; the run must restart by itself and
/// finish with the exact output.
fn cluster_survives_killed_workers(app: &'static str, records: u64, kills: u32) {
    let dir = tempfile::tempdir().unwrap();
    let job = Job {
        processes: Some(3),
        ..Job::new(dir.path(), app, records)
    };
    killed_workers_recover(job, dir.path(), kills);
}

/// Kills `kills` workers of `job`'s 3-process run with SIGKILL, each after
/// a new checkpoint; the run must restart by itself and finish exactly.
fn killed_workers_recover(job: Job, dir: &Path, kills: u32) {
    let app = job.app;
    let log = dir.join("stderr.txt");
    let mut leader = verity()
        .args(job.args(false))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start verity");
    let mut killed = 0;
    for kill in 0..kills {
        let seen = newest_checkpoint(&job.state);
        let pid = leader.id();
        // Two workers of this life, and a checkpoint newer than the last kill.
        let ready = wait_while_running(&mut leader, || {
            newest_checkpoint(&job.state) > seen && children_of(pid).len() == 2
        });
        if !ready {
            break; // finished before this kill
        }
        let workers = children_of(pid);
        let victim = workers[kill as usize % workers.len()];
        let status = std::process::Command::new("kill")
            .args(["-9", &victim.to_string()])
            .status();
        if status.is_ok_and(|s| s.success()) {
            killed += 1;
        }
    }
    let deadline = std::time::Instant::now() + WAIT_MAX;
    let status = loop {
        if let Some(status) = leader.try_wait().expect("poll verity") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the run did not finish");
        std::thread::sleep(POLL);
    };
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    let restarts = stderr.matches("restarting every process").count();
    // A kill can land after the output was complete (a fast machine): that
    // worker's death is only a warning, and no restart follows.
    let after_the_end = stderr.matches("(SIGKILL) after the run ended").count();
    let noticed = (killed as usize).saturating_sub(after_the_end);
    assert!(
        restarts >= noticed.min(1),
        "{killed} kills ({after_the_end} after the run ended), {restarts} restarts: {stderr}"
    );
    job.verify();
    eprintln!("{app}: {killed} workers killed, {restarts} restarts");
}

#[test]
fn a_cluster_restarts_itself_after_killed_workers_and_finishes_exactly() {
    cluster_survives_killed_workers("seq-window", 1_000_000, 3);
}

/// Every process reads its own partitions of a `dir://` source: killed
/// workers' readers come back at their streams' cuts, exactly once.
#[test]
fn a_cluster_reading_a_spread_source_restarts_after_killed_workers_and_finishes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job {
        processes: Some(3),
        ..Job::new(dir.path(), "seq-window", 1_000_000)
    }
    .spread(dir.path());
    killed_workers_recover(job, dir.path(), 3);
}

/// Every process of a spread `dir://` run killed at once after a
/// checkpoint, then `--recover`: each process reopens its partitions at
/// their positions in the checkpoint, and the output is exact.
/// Starts a 3-process `job` and, once its second checkpoint is on disk,
/// kills every process at once with kill -9 (the workers first, so none
/// outlives the test). False if the run ended before that.
fn kill_whole_cluster_after_two_checkpoints(job: &Job) -> bool {
    let mut leader = verity()
        .args(job.args(false))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start verity");
    let pid = leader.id();
    let ready = wait_while_running(&mut leader, || {
        newest_checkpoint(&job.state) >= 2 && children_of(pid).len() == 2
    });
    if ready {
        for victim in children_of(pid).into_iter().chain([pid]) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &victim.to_string()])
                .status();
        }
    }
    let _ = leader.wait();
    ready
}

#[test]
fn a_spread_cluster_killed_whole_recovers_exactly_with_recover() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job {
        processes: Some(3),
        ..Job::new(dir.path(), "seq-window", 1_000_000)
    }
    .spread(dir.path());
    let ready = kill_whole_cluster_after_two_checkpoints(&job);
    let summary = job.finish();
    assert!(
        !ready || summary.contains("continuing from checkpoint"),
        "{summary}"
    );
    job.verify();
}

#[test]
fn a_two_stream_cluster_restarts_itself_after_killed_workers_and_finishes_exactly() {
    cluster_survives_killed_workers("market-spread", 1_000_000, 3);
}

#[test]
fn a_wordcount_cluster_restarts_itself_after_killed_workers_and_finishes_exactly() {
    cluster_survives_killed_workers("wordcount", 200_000, 3);
}

#[test]
fn a_cluster_killed_whole_recovers_with_recover_past_a_corrupt_newest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job {
        processes: Some(3),
        ..Job::new(dir.path(), "wordcount", 200_000)
    };
    // Killed or finished, it leaves its checkpoints behind.
    kill_whole_cluster_after_two_checkpoints(&job);
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

#[test]
fn a_run_fed_by_verity_send_is_killed_and_recovered_and_reads_each_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    ok(run(&[
        "generate",
        "seq-window",
        "--count",
        "300000",
        "--output",
        path_str(&input),
    ]));
    let address = format!("127.0.0.1:{}", free_port());
    let job = Job {
        input: vec!["--input".into(), format!("tcp:{address}")],
        output: dir.path().join("out.txt"),
        state: dir.path().join("state"),
        app: "seq-window",
        processes: None,
        run_input: None,
    };
    let mut first = verity()
        .args(job.args(false))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start verity");
    // Paced, so the run is still reading when it is killed.
    let sender = verity()
        .args([
            "send",
            "--to",
            &address,
            "--input",
            path_str(&input),
            "--rate",
            "100000",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start verity send");
    let killed = wait_while_running(&mut first, || newest_checkpoint(&job.state) >= 3);
    let _ = first.kill();
    let _ = first.wait();
    // The sender keeps what was not checkpointed and resends it to the
    // recovered run, which listens on the same address.
    let summary = job.finish();
    let sent = sender.wait_with_output().unwrap();
    assert!(sent.status.success(), "verity send: {}", stderr(&sent));
    let dead = PathBuf::from(format!("{}.dead-letter", path_str(&job.output)));
    let inputs = ["--input".to_string(), path_str(&input).to_string()];
    verify_files(
        "seq-window",
        &inputs,
        &job.output,
        &dead,
        Some(&format!("tcp:{address}")),
    );
    eprintln!("killed while reading: {killed}; then: {summary}");
}

#[test]
fn a_run_into_verity_receive_is_killed_and_recovered_and_the_receiver_holds_each_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let received = dir.path().join("received.txt");
    let receiver = verity()
        .args([
            "receive",
            "--listen",
            &address,
            "--output",
            path_str(&received),
            "--timeout-s",
            "5",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start verity receive");
    let job = Job {
        output: PathBuf::from(format!("tcp:{address}")),
        ..Job::new(dir.path(), "wordcount", 300_000)
    };
    let dead = dir.path().join("dead.txt");
    let args = |recover| {
        let mut args = job.args(recover);
        args.extend(["--dead-letter".to_string(), path_str(&dead).to_string()]);
        args
    };
    // Wait for the receiver to listen.
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(started.elapsed() < WAIT_MAX, "verity receive never listened");
        std::thread::sleep(POLL);
    }
    let mut finished = false;
    for kill in 0..3u64 {
        let mut run = verity()
            .args(args(kill > 0))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start verity");
        let seen = newest_checkpoint(&job.state);
        if !wait_while_running(&mut run, || newest_checkpoint(&job.state) > seen + 1) {
            // It finished first: its output is final, nothing to recover.
            finished = run.wait().unwrap().success();
            assert!(finished, "the run failed");
            break;
        }
        let _ = run.kill();
        let _ = run.wait();
        eprintln!(
            "killed run {kill} with checkpoints up to {}",
            newest_checkpoint(&job.state)
        );
    }
    if !finished {
        let last: Vec<String> = args(true);
        let last: Vec<&str> = last.iter().map(String::as_str).collect();
        ok(run(&last));
    }
    let report = receiver.wait_with_output().unwrap();
    assert!(report.status.success(), "verity receive: {}", stderr(&report));
    verify_files("wordcount", &job.input, &received, &dead, None);
}

#[test]
fn at_least_once_delivery_sends_lines_final_as_they_come() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let received = dir.path().join("received.txt");
    let receiver = verity()
        .args([
            "receive",
            "--listen",
            &address,
            "--output",
            path_str(&received),
            "--timeout-s",
            "3",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start verity receive");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(started.elapsed() < WAIT_MAX, "verity receive never listened");
        std::thread::sleep(POLL);
    }
    let job = Job {
        output: PathBuf::from(format!("tcp:{address}")),
        ..Job::new(dir.path(), "seq-window", 100_000)
    };
    let dead = dir.path().join("dead.txt");
    let mut args = job.args(false);
    args.extend(["--dead-letter", path_str(&dead), "--delivery", "at-least-once"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(run(&args));
    let report = receiver.wait_with_output().unwrap();
    assert!(report.status.success(), "verity receive: {}", stderr(&report));
    assert!(
        !stderr(&report).contains("staged"),
        "nothing staged: {}",
        stderr(&report)
    );
    verify_files("seq-window", &job.input, &received, &dead, None);
    let refused = run(&[
        "run",
        "doubler",
        "--generate",
        "10",
        "--output",
        "null",
        "--delivery",
        "at-least-once",
    ]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("--state-dir"), "{}", stderr(&refused));
}

/// An audited, clock-dependent run killed after its first checkpoint and
/// continued with `--recover`: `audit replay` of the recovered life
/// restores the checkpoint it began from (kept in the state dir while the
/// life runs, however many newer ones follow) and reproduces that life's
/// output byte for byte; without the state dir it says what it needs.
#[test]
fn a_recovered_life_replays_byte_identical_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let job = Job::new(dir.path(), "market-spread", 1_500_000);
    let audit = dir.path().join("audit");
    let args = |recover: bool| {
        let mut args = job.args(recover);
        args.extend(
            [
                "--max-quote-age-ms",
                "2",
                "--audit",
                path_str(&audit),
                "--checkpoints-retained",
                "1",
            ]
            .map(String::from),
        );
        args
    };
    let mut child = verity()
        .args(args(false))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start verity");
    let killed = wait_while_running(&mut child, || newest_checkpoint(&job.state) >= 1);
    let _ = child.kill();
    let _ = child.wait();
    let finish = args(true);
    let finish: Vec<&str> = finish.iter().map(String::as_str).collect();
    ok(run(&finish));

    let replayed = dir.path().join("replayed.txt");
    let said = stderr(&ok(run(&[
        "audit",
        "replay",
        path_str(&audit),
        "--output",
        path_str(&replayed),
    ])));
    assert!(said.contains("byte-identical"), "{said}");
    let output = std::fs::read(&job.output).unwrap();
    let replayed = std::fs::read(&replayed).unwrap();
    assert!(
        output.ends_with(&replayed),
        "the replayed life is the output's tail"
    );
    let summary = common::stdout(&ok(run(&["audit", "summary", path_str(&audit)])));
    if !killed {
        eprintln!("the run ended before its first checkpoint: one life replayed");
        return;
    }
    assert!(summary.contains("recovery"), "{summary}");
    assert!(
        replayed.len() < output.len(),
        "the recovered life wrote only the output's tail"
    );

    // The exact check follows a run from its start: it says so.
    let mut verify: Vec<&str> = vec!["verify", "market-spread"];
    verify.extend(job.input.iter().map(String::as_str));
    verify.extend(["--output", path_str(&job.output), "--audit", path_str(&audit)]);
    let out = run(&verify);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("follows a run from its start"),
        "{}",
        stderr(&out)
    );

    // Without the state dir the replay cannot restore, and says so.
    std::fs::rename(&job.state, dir.path().join("moved")).unwrap();
    let out = run(&["audit", "replay", path_str(&audit)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("recovered from checkpoint"),
        "{}",
        stderr(&out)
    );
    let out = run(&[
        "audit",
        "replay",
        path_str(&audit),
        "--state-dir",
        path_str(&dir.path().join("moved")),
    ]);
    assert!(stderr(&out).contains("byte-identical"), "{}", stderr(&out));
}
