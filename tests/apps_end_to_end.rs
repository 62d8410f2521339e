//! Every reference app, run through the CLI at 1, 2 and 4 workers, checked by
//! its oracle (`verity verify`) on generated and hand-written edge-case input.

mod common;

use common::*;

const APPS: [&str; 4] = ["doubler", "wordcount", "market-spread", "seq-window"];
const WORKER_COUNTS: [usize; 3] = [1, 2, 4];

fn generated(dir: &std::path::Path, app: &str, count: u64) -> std::path::PathBuf {
    let path = dir.join(format!("{app}.in"));
    let count = count.to_string();
    ok(run(&[
        "generate",
        app,
        "--count",
        &count,
        "--seed",
        "7",
        "--output",
        path_str(&path),
    ]));
    path
}

#[test]
fn generated_input_passes_every_oracle_at_every_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    for app in APPS {
        let input = generated(dir.path(), app, 30_000);
        for workers in WORKER_COUNTS {
            let summary = run_and_verify(app, &input, workers, &[]);
            assert!(summary.contains("30000 records in"), "{summary}");
        }
    }
    let input = generated(dir.path(), "wordcount", 20_000);
    for workers in WORKER_COUNTS {
        run_and_verify("wordcount", &input, workers, &["--final"]);
    }
}

#[test]
fn run_generate_matches_generated_file() {
    // `run --generate` and `generate` produce the same input for a seed, so a
    // generated run can be verified afterwards.
    let dir = tempfile::tempdir().unwrap();
    let input = generated(dir.path(), "seq-window", 5_000);
    let out = dir.path().join("gen.out");
    ok(run(&[
        "run",
        "seq-window",
        "--generate",
        "5000",
        "--seed",
        "7",
        "--workers",
        "2",
        "--output",
        path_str(&out),
    ]));
    let verified = run(&[
        "verify",
        "seq-window",
        "--input",
        path_str(&input),
        "--output",
        path_str(&out),
    ]);
    assert!(verified.status.success(), "{}", stdout(&verified));
}

/// Edge cases each app must survive: the oracle passes and bad lines are
/// dead-lettered with their line numbers.
fn edge_cases(app: &str) -> (Vec<u8>, usize) {
    let long_word = "w".repeat(10_000);
    let text = match app {
        "doubler" => format!("1\n-7\n  42 \nabc\n\n4611686018427387904\n{}\n{}\n+3\n1.5\n", i64::MAX / 2, i64::MIN / 2),
        "wordcount" => format!("héllo wörld héllo\n\n  日本 語 日本  \n{long_word} x {long_word}\ntab\tsep\u{00a0}nbsp\n"),
        "market-spread" => "O,1,ABC,B,10,1.0\nQ,ABC,10.00,10.04\nO,2,ABC,S,5,10.02\nQ,ABC,10.00,10.05\nO,3,ABC,B,1,10\n\
                            Q,LOW,0.39,0.41\nO,4,LOW,B,1,0.4\nQ,X,1,1.12345\nO,5,X,Z,1,1\nnonsense\nQ,X,2,1\nO,6,X,S,1,1\n"
            .to_string(),
        "seq-window" => format!("a 1\nb 1\na 2\na 3\nbad\na 4\na 5\na 6\nb x\n{long_word} 1\nk 1 2\n"),
        _ => unreachable!(),
    };
    let malformed = match app {
        "doubler" => 4,       // abc, empty, overflow, 1.5
        "wordcount" => 0,     // every UTF-8 line is fine
        "market-spread" => 3, // 1.12345, side Z, nonsense
        "seq-window" => 3,    // bad, b x, k 1 2
        _ => unreachable!(),
    };
    (text.into_bytes(), malformed)
}

#[test]
fn edge_cases_pass_oracles_and_dead_letter_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    for app in APPS {
        let (text, malformed) = edge_cases(app);
        let input = write(dir.path(), &format!("{app}-edge.in"), &text);
        for workers in WORKER_COUNTS {
            let summary = run_and_verify(app, &input, workers, &[]);
            assert!(
                summary.contains(&format!("{malformed} dead-lettered")),
                "{app}: {summary}"
            );
            let dead = dir.path().join(format!("{app}-{workers}.out.dead-letter"));
            let letters = std::fs::read_to_string(&dead).unwrap_or_default();
            assert_eq!(letters.lines().count(), malformed, "{app}: {letters}");
            for letter in letters.lines() {
                assert!(letter.starts_with(&format!("{}:", path_str(&input))), "{letter}");
            }
        }
    }
}

#[test]
fn empty_input_and_single_record() {
    let dir = tempfile::tempdir().unwrap();
    let singles = [
        ("doubler", "5\n"),
        ("wordcount", "one"),
        ("market-spread", "O,1,A,B,1,1\n"),
        ("seq-window", "k 1"),
    ];
    for (app, single) in singles {
        let empty = write(dir.path(), &format!("{app}-empty.in"), b"");
        let one = write(dir.path(), &format!("{app}-one.in"), single.as_bytes());
        for workers in WORKER_COUNTS {
            assert!(run_and_verify(app, &empty, workers, &[]).contains("0 records in"));
            assert!(run_and_verify(app, &one, workers, &[]).contains("1 records in"));
        }
    }
}

#[test]
fn exact_outputs_for_small_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "seq-window",
            "k 1\nk 2\nk 3\nk 4\nk 5\nk 6\n",
            "k 0 0 0 1\nk 0 0 1 2\nk 0 1 2 3\nk 1 2 3 4\nk 2 3 4 5\nk 3 4 5 6\n",
        ),
        ("wordcount", "a b a\nb a\n", "a 1\nb 1\na 2\nb 2\na 3\n"),
        (
            "market-spread",
            "O,9,S,B,1,1\nQ,S,1.5,1.52\nO,10,S,S,1,1.51\n",
            "9,REJECT,S,,\n10,ACCEPT,S,1.5000,1.5200\n",
        ),
        ("doubler", "21\n", "42\n"),
    ];
    for (app, input, expected) in cases {
        let input = write(dir.path(), &format!("{app}.in"), input.as_bytes());
        let out = ok(run(&["run", app, "--input", path_str(&input), "--workers", "1"]));
        assert_eq!(stdout(&out), expected, "{app}");
    }
}

#[test]
fn stdin_to_stdout() {
    use std::io::Write;
    let mut child = verity()
        .args(["run", "doubler", "--workers", "2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"1\n2\n3\n").unwrap();
    let output = ok(child.wait_with_output().unwrap());
    let mut lines: Vec<i64> = stdout(&output).lines().map(|l| l.parse().unwrap()).collect();
    lines.sort();
    assert_eq!(lines, vec![2, 4, 6]);
}
