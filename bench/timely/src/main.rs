//! `verity-timely APP --input FILE [timely options: -w WORKERS ...]`: one of
//! verity's reference apps on timely-dataflow, over a file, into a null sink.
//! Prints `outputs N` and `malformed N` on stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use verity_bench_timely::{run, App};

const USAGE: &str = "usage: verity-timely wordcount|market-spread|seq-window --input FILE [-w WORKERS]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let app = args.next().and_then(|name| App::from_name(&name));
    let input = match (args.next().as_deref(), args.next()) {
        (Some("--input"), Some(path)) => Some(PathBuf::from(path)),
        _ => None,
    };
    let (Some(app), Some(input)) = (app, input) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    // What is left is timely's own command line, as `execute_from_args` reads it.
    let config = match timely::Config::from_args(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("verity-timely: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(app, &input, config) {
        Ok(counts) => {
            println!("outputs {}\nmalformed {}", counts.outputs, counts.malformed);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("verity-timely: {} failed: {e}", app.name());
            ExitCode::FAILURE
        }
    }
}
