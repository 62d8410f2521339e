//! `--metrics-addr`: a running process serves Prometheus text at /metrics
//! that follows its shards' totals, and 404 elsewhere (loopback only; every
//! wait is bounded).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn get(address: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(address).expect("connect to the metrics server");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// The sum over shards of a counter in a scrape.
fn total(scrape: &str, name: &str) -> u64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn a_running_process_serves_its_counters_at_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.txt");
    let mut child = common::verity()
        .args([
            "run",
            "doubler",
            "--workers",
            "2",
            "--no-pin",
            "--metrics-addr",
            "127.0.0.1:0",
            "--output",
        ])
        .arg(&output)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start verity");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let address = line
        .trim()
        .strip_prefix("verity: metrics at http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("the first line names the metrics address: {line:?}"))
        .to_string();
    let mut stdin = child.stdin.take().unwrap();
    for value in 0..1000 {
        writeln!(stdin, "{value}").unwrap();
    }
    writeln!(stdin, "not a number").unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let scrape = loop {
        let answer = get(&address, "/metrics");
        if total(&answer, "verity_records_in_total") == 1001 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(scrape.starts_with("HTTP/1.1 200 OK\r\n"), "{scrape}");
    assert!(
        scrape.contains("Content-Type: text/plain; version=0.0.4"),
        "{scrape}"
    );
    assert!(
        scrape.contains("# TYPE verity_records_in_total counter"),
        "{scrape}"
    );
    assert_eq!(total(&scrape, "verity_records_in_total"), 1001, "{scrape}");
    assert!(
        scrape.contains("verity_records_in_total{shard=\"1\"}"),
        "{scrape}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while total(&get(&address, "/metrics"), "verity_dead_lettered_total") != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(total(&get(&address, "/metrics"), "verity_dead_lettered_total"), 1);
    assert!(get(&address, "/other").starts_with("HTTP/1.1 404 Not Found\r\n"));
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read_to_string(output).unwrap().lines().count(), 1000);
}
