//! Multi-process runs on loopback: every reference app gives oracle-exact
//! output for P processes × W workers, also through a fault-injecting proxy,
//! and a peer without the cluster secret is refused.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const APPS: [&str; 4] = ["doubler", "wordcount", "market-spread", "seq-window"];
const SECRET: &str = "a test secret of enough bytes!!";

fn generated(dir: &Path, app: &str, count: u64) -> PathBuf {
    let path = dir.join(format!("{app}.in"));
    ok(run(&[
        "generate",
        app,
        "--count",
        &count.to_string(),
        "--seed",
        "11",
        "--output",
        path_str(&path),
    ]));
    path
}

fn verify(app: &str, input: &Path, output: &Path) {
    let verified = run(&[
        "verify",
        app,
        "--input",
        path_str(input),
        "--output",
        path_str(output),
    ]);
    assert!(
        verified.status.success(),
        "{app}: {}{}",
        stdout(&verified),
        stderr(&verified)
    );
}

#[test]
fn local_clusters_match_the_oracles() {
    let dir = tempfile::tempdir().unwrap();
    for app in APPS {
        let input = generated(dir.path(), app, 20_000);
        for (processes, workers) in [(2, 1), (2, 2), (3, 1), (3, 2)] {
            let output = dir.path().join(format!("{app}-{processes}x{workers}.out"));
            let (p, w) = (processes.to_string(), workers.to_string());
            let args = [
                "run",
                app,
                "--input",
                path_str(&input),
                "--output",
                path_str(&output),
            ];
            let result = ok(run(&[
                &args[..],
                &["--processes", &p, "--workers", &w, "--no-pin"],
            ]
            .concat()));
            let summary = stderr(&result);
            assert!(
                summary.contains("20000 records in"),
                "{app} {processes}x{workers}: {summary}"
            );
            assert!(
                summary.contains(&format!("{} workers", processes * workers)),
                "{summary}"
            );
            verify(app, &input, &output);
        }
    }
}

/// A `dir://` source of 5 partitions on 3 processes: each process reads its
/// own partitions (0 and 3 on process 0, 1 and 4 on 1, 2 on 2) and the
/// output is oracle-exact against the unsplit input (a key's lines share a
/// partition, so their order holds); every malformed line is dead-lettered
/// once, named by the stream that read it.
#[test]
fn spread_sources_are_read_on_every_process_and_match_the_oracles() {
    let dir = tempfile::tempdir().unwrap();
    for app in APPS {
        let input = generated(dir.path(), app, 20_000);
        let parts = split_into_partitions(app, &input, dir.path(), &format!("{app}-parts"), 5);
        let source = format!("dir://{}", path_str(&parts));
        let single = dir.path().join(format!("{app}-single.out"));
        ok(run(&[
            "run",
            app,
            "--input",
            path_str(&input),
            "--output",
            path_str(&single),
        ]));
        for workers in ["1", "2"] {
            let output = dir.path().join(format!("{app}-spread-{workers}.out"));
            let result = ok(run(&[
                "run",
                app,
                "--input",
                &source,
                "--output",
                path_str(&output),
                "--processes",
                "3",
                "--workers",
                workers,
                "--no-pin",
            ]));
            let log = stderr(&result);
            assert!(log.contains("20000 records in"), "{app}: {log}");
            for (process, partitions) in [(0, "[0, 3]"), (1, "[1, 4]"), (2, "[2]")] {
                let read = format!("{source}@p{process}: this process read ");
                let line = log.lines().find(|l| l.contains(&read));
                assert!(
                    line.is_some_and(|l| l.ends_with(&format!("records of partitions {partitions}"))),
                    "{app}: process {process} reads partitions {partitions}: {log}"
                );
            }
            verify(app, &input, &output);
            let letters = |path: &Path| {
                let mut name = path.as_os_str().to_owned();
                name.push(".dead-letter");
                std::fs::read_to_string(name).unwrap_or_default().lines().count()
            };
            assert_eq!(
                letters(&output),
                letters(&single),
                "{app}: each malformed line once"
            );
        }
    }
}

#[test]
fn cluster_run_dead_letters_remote_bad_lines_and_counts_final() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "wc.in",
        "a b\nc a\n\u{00e9} a\n".repeat(500).as_bytes(),
    );
    let output = dir.path().join("wc.out");
    let args = [
        "run",
        "wordcount",
        "--final",
        "--input",
        path_str(&input),
        "--output",
        path_str(&output),
    ];
    ok(run(&[
        &args[..],
        &["--processes", "3", "--workers", "1", "--no-pin"],
    ]
    .concat()));
    let verified = run(&[
        "verify",
        "wordcount",
        "--final",
        "--input",
        path_str(&input),
        "--output",
        path_str(&output),
    ]);
    assert!(verified.status.success(), "{}", stdout(&verified));

    let input = write(dir.path(), "d.in", "1\nx\n2\n3\n4\ny\n".repeat(200).as_bytes());
    let output = dir.path().join("d.out");
    let args = [
        "run",
        "doubler",
        "--input",
        path_str(&input),
        "--output",
        path_str(&output),
    ];
    let result = ok(run(&[
        &args[..],
        &["--processes", "2", "--workers", "2", "--no-pin"],
    ]
    .concat()));
    assert!(
        stderr(&result).contains("400 dead-lettered"),
        "{}",
        stderr(&result)
    );
    let letters = std::fs::read_to_string(dir.path().join("d.out.dead-letter")).unwrap();
    assert_eq!(letters.lines().count(), 400);
    verify("doubler", &input, &output);
}

/// A two-process cluster file where process 1 dials process 0 at `dial_0`,
/// while process 0 listens at `listen_0`.
fn cluster_file(dir: &Path, dial_0: u16, listen_0: u16) -> PathBuf {
    let text = format!(
        "cluster_id = \"test\"\n\n[[process]]\naddress = \"127.0.0.1:{dial_0}\"\nlisten = \"127.0.0.1:{listen_0}\"\nworkers = 2\n\n\
         [[process]]\naddress = \"127.0.0.1:{}\"\nworkers = 1\n",
        free_port()
    );
    write(dir, "cluster.toml", text.as_bytes())
}

fn spawn_worker(file: &Path, secret: &str) -> Child {
    verity()
        .args([
            "worker",
            "--cluster",
            path_str(file),
            "--id",
            "1",
            "--no-pin",
            "--peer-lost-ms",
            "20000",
        ])
        .env("VERITY_CLUSTER_SECRET", secret)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker")
}

fn wait_with_timeout(mut child: Child, timeout: Duration) -> std::process::Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn faults_through_the_proxy_lose_and_duplicate_nothing() {
    use verity_verify::proxy::{Proxy, ProxyConfig};
    let dir = tempfile::tempdir().unwrap();
    for (index, app) in APPS.iter().enumerate() {
        let input = generated(dir.path(), app, 150_000);
        let listen_0 = free_port();
        let proxy = Proxy::start(ProxyConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            to: format!("127.0.0.1:{listen_0}"),
            seed: 7 + index as u64,
            drop_conn_every_ms: Some(100),
            delay_ms: Some(1),
            corrupt_rate: 0.05,
        })
        .expect("start proxy");
        let file = cluster_file(dir.path(), proxy.local_addr().port(), listen_0);
        let worker = spawn_worker(&file, SECRET);
        let output = dir.path().join(format!("{app}-proxy.out"));
        let leader = verity()
            .args([
                "run",
                app,
                "--input",
                path_str(&input),
                "--output",
                path_str(&output),
            ])
            .args(["--cluster", path_str(&file), "--no-pin", "--batch-max", "64"])
            .env("VERITY_CLUSTER_SECRET", SECRET)
            .output()
            .unwrap();
        let worker = wait_with_timeout(worker, Duration::from_secs(30));
        let stats = proxy.stats();
        proxy.stop();
        assert!(
            leader.status.success(),
            "{app}: {}\nworker: {}",
            stderr(&leader),
            stderr(&worker)
        );
        assert!(worker.status.success(), "{app} worker: {}", stderr(&worker));
        verify(app, &input, &output);
        assert!(stats.connections >= 1, "{app}: traffic went through the proxy");
        assert!(
            stats.cuts + stats.corrupted_chunks > 0,
            "{app}: faults were injected: {stats:?}"
        );
        eprintln!("{app}: {stats:?}");
    }
}

#[test]
fn a_peer_with_the_wrong_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = generated(dir.path(), "doubler", 1_000);
    let port = free_port();
    let file = cluster_file(dir.path(), port, port);
    let intruder = spawn_worker(&file, "not the secret, but long enough");
    let output = dir.path().join("refused.out");
    let leader = verity()
        .args([
            "run",
            "doubler",
            "--input",
            path_str(&input),
            "--output",
            path_str(&output),
        ])
        .args(["--cluster", path_str(&file), "--no-pin", "--peer-lost-ms", "1500"])
        .env("VERITY_CLUSTER_SECRET", SECRET)
        .output()
        .unwrap();
    let intruder = wait_with_timeout(intruder, Duration::from_secs(5));
    assert!(
        !leader.status.success(),
        "the run cannot finish without its worker"
    );
    let leader_log = stderr(&leader);
    assert!(leader_log.contains("refused"), "{leader_log}");
    assert!(leader_log.contains("unreachable"), "{leader_log}");
    let written = std::fs::read_to_string(&output).unwrap_or_default();
    assert!(written.lines().count() <= 1_000, "no record injected");
    assert!(!intruder.status.success() || stderr(&intruder).contains("refused"));
}

// ---- failures and stops end the run in bounded time ----------------------

/// Longest any of these runs may take; a run still going then is hung.
const HUNG_AFTER: Duration = Duration::from_secs(60);

/// A run whose stderr lines arrive on a channel while it runs.
struct Watched {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watched {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Watched {
        let mut command = verity();
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn verity");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Watched {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle`; returns it.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + HUNG_AFTER;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = self.child.kill();
        panic!(
            "no line with {needle:?}; stderr so far:\n{}",
            self.seen.join("\n")
        );
    }

    fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits for the exit (killing a hung run); returns its code and stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + HUNG_AFTER;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "hung: still running after {HUNG_AFTER:?}:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends with the pipe; take what is left.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status.code(), self.seen.join("\n"))
    }
}

/// A run of `processes` × `workers` over an input that never ends by itself.
fn endless_run(processes: u32, workers: u32, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "doubler",
        "--generate",
        "1000000000",
        "--output",
        "null",
        "--no-pin",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--workers".into(), workers.to_string()]);
    if processes > 1 {
        args.extend(["--processes".into(), processes.to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn a_panicked_shard_fails_the_run_at_once() {
    // (processes, workers, where the shard panics): process 0 alone, process
    // 0 of a cluster, and a worker process of a cluster.
    for (processes, workers, fault) in [(1, 2, "2000@1"), (3, 1, "2000@0"), (3, 1, "2000@2")] {
        let args = endless_run(processes, workers, &[]);
        let run = Watched::spawn(&strs(&args), &[("VERITY_TEST_PANIC_AFTER_RECORDS", fault)]);
        let (code, err) = run.finish();
        let case = format!("P={processes} W={workers} panic at {fault}");
        assert_eq!(code, Some(1), "{case}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(last.starts_with("verity: error:"), "{case}: {err}");
        assert!(
            last.contains("panicked: test-only panic"),
            "{case}: the panic message: {err}"
        );
        if fault.ends_with("@2") {
            assert!(last.contains("process 2 failed"), "{case}: {err}");
        }
    }
}

#[test]
fn a_stop_ends_a_cluster_run_on_an_endless_source_cleanly() {
    let run = Watched::spawn(
        &[
            "run",
            "doubler",
            "--input",
            "tcp:127.0.0.1:0",
            "--output",
            "null",
            "--processes",
            "3",
            "--workers",
            "1",
            "--no-pin",
        ],
        &[],
    );
    let mut run = run;
    let line = run.wait_for_line("listening on ");
    let address = line.rsplit(' ').next().unwrap().to_string();
    let mut sender = std::net::TcpStream::connect(&address).unwrap();
    std::io::Write::write_all(&mut sender, "1\n2\n3\n".repeat(1000).as_bytes()).unwrap();
    run.signal("-TERM");
    let (code, err) = run.finish();
    drop(sender);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("stopped early"), "{err}");
}

#[test]
fn a_stop_that_cannot_finish_exits_by_its_deadline() {
    // A shard that stops making progress (test-only switch) keeps the run
    // from ending gracefully: the stop deadline ends it.
    for (processes, workers, fault) in [(1, 2, "2000@1"), (3, 1, "2000@2")] {
        let args = endless_run(processes, workers, &["--stop-deadline-ms", "1000"]);
        let mut run = Watched::spawn(&strs(&args), &[("VERITY_TEST_HANG_AFTER_RECORDS", fault)]);
        run.wait_for_line("test-only hang");
        run.signal("-TERM");
        let (code, err) = run.finish();
        let case = format!("P={processes} W={workers} hang at {fault}");
        assert_eq!(code, Some(130), "{case}: {err}");
        assert!(
            err.contains("did not stop within 1000 ms of the stop request"),
            "{case}: {err}"
        );
    }
}

#[test]
fn a_worker_panic_fails_a_cluster_file_run_on_both_sides() {
    // No local process watching here: only the worker's `Failed` report
    // tells process 0, long before `--peer-lost-ms` would.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = cluster_file(dir.path(), port, port);
    let worker = verity()
        .args(["worker", "--cluster", path_str(&file), "--id", "1", "--no-pin"])
        .args(["--peer-lost-ms", "60000"])
        .env("VERITY_CLUSTER_SECRET", SECRET)
        // Process 1 runs global shard 2 (process 0 has shards 0 and 1).
        .env("VERITY_TEST_PANIC_AFTER_RECORDS", "2000@2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker");
    let leader = Watched::spawn(
        &[
            "run",
            "doubler",
            "--generate",
            "1000000000",
            "--output",
            "null",
            "--no-pin",
            "--cluster",
            path_str(&file),
            "--peer-lost-ms",
            "60000",
        ],
        &[("VERITY_CLUSTER_SECRET", SECRET)],
    );
    let (code, err) = leader.finish();
    let worker = wait_with_timeout(worker, HUNG_AFTER);
    assert_eq!(code, Some(1), "{err}");
    // The worker reports whichever it sees first, the runtime's error or the
    // panic hook's record; both name the process and the panicked thread.
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("process 1 failed: ") && last.contains("thread verity-shard-2 panicked"),
        "{err}"
    );
    assert_eq!(worker.status.code(), Some(1), "{}", stderr(&worker));
    assert!(
        stderr(&worker).contains("verity: error: worker 1:"),
        "{}",
        stderr(&worker)
    );
}
