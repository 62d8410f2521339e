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

/// Splits the lines of `input` into `parts` files `p<N>.txt` of a new
/// directory `dir/name`, each line into the file its app's key hashes to
/// (so a key's lines keep their order within one partition): the input of
/// a `dir://` source. Keys: seq-window's first field, market-spread's
/// symbol; doubler and wordcount lines go round-robin (a doubler line is
/// its own record; a wordcount line holds several keys).
#[allow(dead_code)]
pub fn split_into_partitions(app: &str, input: &Path, dir: &Path, name: &str, parts: usize) -> PathBuf {
    let out_dir = dir.join(name);
    std::fs::create_dir(&out_dir).expect("create the partition directory");
    let text = std::fs::read(input).expect("read the input");
    let mut files: Vec<Vec<u8>> = vec![Vec::new(); parts];
    for (index, line) in text.split_inclusive(|b| *b == b'\n').enumerate() {
        let fields = |sep: u8| -> Vec<&[u8]> { line.split(|b| *b == sep).collect() };
        let key: Option<Vec<u8>> = match app {
            "seq-window" => line
                .split(|b| b.is_ascii_whitespace())
                .find(|f| !f.is_empty())
                .map(<[u8]>::to_vec),
            "market-spread" => {
                let f = fields(b',');
                match f.first().copied() {
                    Some(b"Q") => f.get(1).map(|s| s.to_vec()),
                    Some(b"O") => f.get(2).map(|s| s.to_vec()),
                    _ => None,
                }
            }
            _ => None,
        };
        let part = match key {
            // FNV-1a: any fixed hash will do, it only has to keep a key together.
            Some(key) => {
                let hash = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
                });
                (hash % parts as u64) as usize
            }
            None => index % parts,
        };
        files[part].extend_from_slice(line);
        if !line.ends_with(b"\n") {
            files[part].push(b'\n');
        }
    }
    for (part, content) in files.iter().enumerate() {
        std::fs::write(out_dir.join(format!("p{part}.txt")), content).expect("write a partition");
    }
    out_dir
}

/// The newest complete checkpoint in `state` (0 if none): its manifest is
/// written last.
#[allow(dead_code)]
pub fn newest_checkpoint(state: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(state) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("ckpt-")?
                .strip_suffix(".manifest")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0)
}
