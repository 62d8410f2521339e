//! TCP sources and sinks on loopback, two concurrent market-spread streams, and a
//! clean stop on Ctrl-C.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the child's stderr until it says where a source listens.
fn listening_address(child: &mut Child) -> String {
    let stderr = child.stderr.as_mut().unwrap();
    let mut reader = BufReader::new(stderr);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "verity exited before listening"
        );
        if let Some(pos) = line.find("listening on ") {
            return line[pos + "listening on ".len()..].trim().to_string();
        }
    }
}

fn wait_with_timeout(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            panic!("verity did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `verity receive` (the library function) on a free port, collecting into
/// `output` until it has `expect` lines.
fn receiver(
    output: &std::path::Path,
    expect: u64,
) -> (
    String,
    std::thread::JoinHandle<verity_verify::harness::ReceiveReport>,
) {
    // Bound here, on port 0, so no test running beside this one can take
    // the port between choosing and binding it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let output = output.to_path_buf();
    let handle = std::thread::spawn(move || {
        verity_verify::harness::receive_on(listener, &output, Some(expect), TIMEOUT).unwrap()
    });
    let started = Instant::now();
    // The sink connects at start: wait until the receiver listens.
    while TcpStream::connect(&address).is_err() {
        assert!(started.elapsed() < TIMEOUT, "the receiver never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    (address, handle)
}

#[test]
fn a_plain_tcp_sender_to_a_tcp_sink() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.txt");
    let (sink_addr, receiving) = receiver(&output, 1000);
    let mut child = verity()
        .args([
            "run",
            "seq-window",
            "--workers",
            "2",
            "--input",
            "tcp:127.0.0.1:0",
        ])
        .args(["--output", &format!("tcp:{sink_addr}")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let source_addr = listening_address(&mut child);
    let mut sender = TcpStream::connect(&source_addr).unwrap();
    let mut expected = Vec::new();
    for value in 1..=1000u64 {
        writeln!(sender, "k{} {}", value % 3, value / 3 + 1).unwrap();
    }
    drop(sender);
    assert!(wait_with_timeout(&mut child).success());
    let report = receiving.join().unwrap();
    assert!(report.complete, "{report:?}");
    let text = std::fs::read_to_string(&output).unwrap();
    for key in 0..3 {
        let mut window = [0u64; 4];
        for value in (1..=1000u64).filter(|v| v % 3 == key) {
            window.rotate_left(1);
            window[3] = value / 3 + 1;
            expected.push(format!(
                "k{key} {} {} {} {}",
                window[0], window[1], window[2], window[3]
            ));
        }
    }
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), expected.len());
    // Per key, order is kept; compare per key.
    for key in 0..3 {
        let prefix = format!("k{key} ");
        let got: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with(&prefix)).collect();
        let want: Vec<&str> = expected
            .iter()
            .map(String::as_str)
            .filter(|l| l.starts_with(&prefix))
            .collect();
        assert_eq!(got, want, "key k{key}");
    }
    lines.clear();
}

#[test]
fn two_market_streams_decide_every_order_on_a_real_quote() {
    let dir = tempfile::tempdir().unwrap();
    let mut quotes = String::new();
    let mut orders = String::new();
    for i in 0..2000u64 {
        let symbol = format!("S{}", i % 7);
        quotes.push_str(&format!(
            "Q,{symbol},{}.00,{}.{:02}\n",
            10 + i % 5,
            10 + i % 5,
            i % 9
        ));
        orders.push_str(&format!("O,{i},{symbol},B,1,10\n"));
    }
    let quotes_path = write(dir.path(), "quotes", quotes.as_bytes());
    let orders_path = write(dir.path(), "orders", orders.as_bytes());
    let output = ok(run(&[
        "run",
        "market-spread",
        "--workers",
        "2",
        "--quotes",
        path_str(&quotes_path),
        "--orders",
        path_str(&orders_path),
    ]));
    let decisions = stdout(&output);
    let known_quotes: std::collections::HashSet<String> = quotes
        .lines()
        .map(|q| {
            let f: Vec<&str> = q.split(',').collect();
            let price = |p: &str| format!("{:.4}", p.parse::<f64>().unwrap());
            format!("{},{},{}", f[1], price(f[2]), price(f[3]))
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for line in decisions.lines() {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 5, "{line}");
        assert!(
            ids.insert(f[0].parse::<u64>().unwrap()),
            "duplicate decision {line}"
        );
        if f[3].is_empty() {
            assert_eq!(f[1], "REJECT", "{line}");
        } else {
            assert!(
                known_quotes.contains(&format!("{},{},{}", f[2], f[3], f[4])),
                "{line} quotes no real quote"
            );
        }
    }
    assert_eq!(ids.len(), 2000);
}

#[test]
fn ctrl_c_stops_cleanly() {
    stops_cleanly_on("-INT");
}

#[test]
fn sigterm_stops_cleanly() {
    stops_cleanly_on("-TERM");
}

/// Sends `signal` (a `kill` flag) mid-run: what was read is processed and
/// flushed, the summary says the run stopped early, and the exit code is 0.
fn stops_cleanly_on(signal: &str) {
    let mut child = verity()
        .args(["run", "doubler", "--workers", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"1\n2\n").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap()
        .success());
    let status = wait_with_timeout(&mut child);
    drop(stdin);
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.contains("stopped early"), "{err}");
    let mut values: Vec<i64> = out.lines().map(|l| l.parse().unwrap()).collect();
    values.sort();
    assert_eq!(
        values,
        vec![2, 4],
        "lines read before the stop are processed and flushed"
    );
}

/// `verity send` → proxy → `verity run` → proxy → `verity receive`, the
/// proxies cutting every connection after a seeded time: each output line
/// arrives exactly once (the verifier reports duplicates and losses).
#[test]
fn both_tcp_edges_survive_cut_connections() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    ok(run(&[
        "generate",
        "seq-window",
        "--count",
        "20000",
        "--seed",
        "3",
        "--output",
        path_str(&input),
    ]));
    let generated = std::fs::read(&input).unwrap();
    let expected = verity_verify::expected_output(verity_verify::App::SeqWindow, &generated)
        .lines
        .len()
        .to_string();
    let output = dir.path().join("out.txt");
    let ports: Vec<String> = (0..4).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let (receive_at, sink_proxy, source_at, source_proxy) = (&ports[0], &ports[1], &ports[2], &ports[3]);
    let logs = dir.path().to_path_buf();
    let spawn = |args: &[&str]| {
        let log = std::fs::File::create(logs.join(format!("{}-{}.log", args[0], args[2].replace(':', "_"))))
            .unwrap();
        verity()
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn verity")
    };
    // Every process's log, for a failure's message.
    let all_logs = || {
        let mut text = String::new();
        for entry in std::fs::read_dir(&logs).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                text += &format!(
                    "== {}\n{}",
                    path.display(),
                    std::fs::read_to_string(&path).unwrap()
                );
            }
        }
        text
    };
    let cutting = |listen: &str, to: &str| {
        spawn(&[
            "proxy",
            "--listen",
            listen,
            "--to",
            to,
            "--seed",
            "7",
            "--drop-conn-every-ms",
            "150",
        ])
    };
    let mut receiver = spawn(&[
        "receive",
        "--listen",
        receive_at,
        "--output",
        path_str(&output),
        "--expect",
        &expected,
        "--timeout-s",
        "30",
    ]);
    let mut proxies = vec![cutting(sink_proxy, receive_at), cutting(source_proxy, source_at)];
    for address in [receive_at, sink_proxy, source_proxy] {
        let started = Instant::now();
        while TcpStream::connect(address).is_err() {
            assert!(started.elapsed() < TIMEOUT, "nothing listens on {address}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut engine = spawn(&[
        "run",
        "seq-window",
        "--workers",
        "2",
        "--input",
        &format!("tcp:{source_at}"),
        "--output",
        &format!("tcp:{sink_proxy}"),
    ]);
    let sent = run(&[
        "send",
        "--to",
        source_proxy,
        "--input",
        path_str(&input),
        "--rate",
        "20000",
        "--batch",
        "200",
    ]);
    let engine_status = wait_with_timeout(&mut engine);
    let receiver_status = wait_with_timeout(&mut receiver);
    for proxy in &mut proxies {
        let _ = proxy.kill();
        let _ = proxy.wait();
    }
    assert!(sent.status.success(), "send: {}\n{}", stderr(&sent), all_logs());
    assert!(engine_status.success(), "run: {engine_status:?}\n{}", all_logs());
    assert!(receiver_status.success(), "receive: {}", all_logs());
    assert!(
        stderr(&sent).contains("reconnection"),
        "the proxy cut the sender's connection: {}",
        stderr(&sent)
    );
    let verified = run(&[
        "verify",
        "seq-window",
        "--input",
        path_str(&input),
        "--output",
        path_str(&output),
    ]);
    assert!(
        stdout(&verified).starts_with("OK seq-window"),
        "{}{}",
        stdout(&verified),
        all_logs()
    );
}
