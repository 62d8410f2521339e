//! `verity verify --dead-letter` end to end: a 3-process cluster reads inputs
//! of many chunks (far more than 64 KiB per shard) with hundreds of malformed
//! lines spread over them, so most dead letters are written by remote shards
//! and travel to process 0; the dead-letter file must hold each exactly once.
//! Also the two-stream path (`--quotes/--orders`), and a planted fault.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// Bytes of input that make many chunks for every shard of a 3×2 cluster.
const INPUT_BYTES_MIN: usize = 64 * 1024 * 6 * 8;
const MALFORMED_MIN: usize = 200;

fn generated(dir: &Path, app: &str, count: u64, extra: &[&str]) -> PathBuf {
    let path = dir.join(format!("{app}.generated"));
    let count = count.to_string();
    let mut args = vec!["generate", app, "--count", &count, "--seed", "7", "--well-formed"];
    if extra.is_empty() {
        args.extend_from_slice(&["--output", path_str(&path)]);
    }
    args.extend_from_slice(extra);
    ok(run(&args));
    path
}

/// `text` with `bad(i)` inserted after every `every`-th line.
fn plant_malformed(text: &[u8], every: usize, bad: impl Fn(usize) -> String) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(text.len() * 2);
    let mut planted = 0;
    for (i, line) in text.split_inclusive(|b| *b == b'\n').enumerate() {
        out.extend_from_slice(line);
        if i % every == every - 1 {
            out.extend_from_slice(bad(i).as_bytes());
            out.push(b'\n');
            planted += 1;
        }
    }
    (out, planted)
}

fn cluster_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [args, &["--processes", "3", "--workers", "2", "--no-pin"]].concat()
}

fn verify_ok(args: &[&str]) -> String {
    let verified = run(args);
    let out = stdout(&verified);
    assert!(verified.status.success(), "{out}{}", stderr(&verified));
    assert!(out.contains("OK dead letters: all "), "{out}");
    out
}

#[test]
fn remote_dead_letters_of_a_many_chunk_input_arrive_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let clean = std::fs::read(generated(dir.path(), "seq-window", 500_000, &[])).unwrap();
    let (text, planted) = plant_malformed(&clean, 1_999, |i| format!("k{i} not-a-number"));
    assert!(
        text.len() > INPUT_BYTES_MIN && planted >= MALFORMED_MIN,
        "{} {planted}",
        text.len()
    );
    let input = write(dir.path(), "seq.in", &text);
    let output = dir.path().join("seq.out");
    let letters = dir.path().join("seq.dead-letter");
    let result = ok(run(&cluster_args(&[
        "run",
        "seq-window",
        "--input",
        path_str(&input),
        "--output",
        path_str(&output),
        "--dead-letter",
        path_str(&letters),
    ])));
    assert!(
        stderr(&result).contains(&format!("{planted} dead-lettered")),
        "{}",
        stderr(&result)
    );
    let verify = [
        "verify",
        "seq-window",
        "--input",
        path_str(&input),
        "--output",
        path_str(&output),
        "--dead-letter",
        path_str(&letters),
    ];
    let out = verify_ok(&verify);
    assert!(
        out.contains(&format!("all {planted} malformed input lines")),
        "{out}"
    );

    // The same check fails once one letter is dropped.
    let text = std::fs::read_to_string(&letters).unwrap();
    let dropped: String = text.lines().skip(planted / 2).take(1).collect();
    std::fs::write(&letters, text.replacen(&format!("{dropped}\n"), "", 1)).unwrap();
    let failed = run(&verify);
    assert_eq!(failed.status.code(), Some(1), "{}", stdout(&failed));
    assert!(
        stdout(&failed).contains("FAILED dead letters: 1 anomalies (lost 1"),
        "{}",
        stdout(&failed)
    );
}

#[test]
fn two_stream_cluster_run_verifies_output_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let (quotes, orders) = (dir.path().join("q.gen"), dir.path().join("o.gen"));
    generated(
        dir.path(),
        "market-spread",
        300_000,
        &[
            "--quotes-output",
            path_str(&quotes),
            "--orders-output",
            path_str(&orders),
        ],
    );
    let (q_text, q_bad) = plant_malformed(&std::fs::read(&quotes).unwrap(), 997, |i| {
        format!("O,{i},S001,B,1,1")
    });
    let (o_text, o_bad) = plant_malformed(&std::fs::read(&orders).unwrap(), 1_499, |i| format!("O,{i},bad"));
    assert!(q_text.len() + o_text.len() > INPUT_BYTES_MIN && q_bad + o_bad >= MALFORMED_MIN);
    let (q, o) = (
        write(dir.path(), "q.in", &q_text),
        write(dir.path(), "o.in", &o_text),
    );
    let output = dir.path().join("ms.out");
    ok(run(&cluster_args(&[
        "run",
        "market-spread",
        "--quotes",
        path_str(&q),
        "--orders",
        path_str(&o),
        "--output",
        path_str(&output),
    ])));
    let out = verify_ok(&[
        "verify",
        "market-spread",
        "--quotes",
        path_str(&q),
        "--orders",
        path_str(&o),
        "--output",
        path_str(&output),
        "--dead-letter",
        &format!("{}.dead-letter", path_str(&output)),
    ]);
    assert!(out.starts_with("OK market-spread (two streams): "), "{out}");
    assert!(
        out.contains(&format!("all {} malformed input lines", q_bad + o_bad)),
        "{out}"
    );
}

#[test]
fn verify_refuses_inputs_that_do_not_fit_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "x", b"1\n");
    let x = path_str(&file);
    let two = ["verify", "doubler", "--quotes", x, "--orders", x, "--output", x];
    let refused = run(&two);
    assert!(!refused.status.success(), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("doubler takes --input"),
        "{}",
        stderr(&refused)
    );
    let neither = run(&["verify", "market-spread", "--output", x]);
    assert!(
        !neither.status.success() && stderr(&neither).contains("--input"),
        "{}",
        stderr(&neither)
    );
    let split = run(&[
        "generate",
        "doubler",
        "--count",
        "1",
        "--quotes-output",
        x,
        "--orders-output",
        x,
    ]);
    assert!(!split.status.success() && stderr(&split).contains("market-spread options"));
}
