//! `verity nexmark`'s pieces beside the run itself: the query argument,
//! the check of the output against the reference model, and `generate
//! nexmark`.

use crate::cli::AppArg;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, Read};
use std::path::PathBuf;
use verity_apps::nexmark::generator::{self, NexmarkLines};
use verity_apps::nexmark::Query;
use verity_apps::AppName;
use verity_core::LineGenerator;

pub fn parse_query(text: &str) -> Result<Query, String> {
    Query::from_name(text).ok_or_else(|| format!("unknown query `{text}` (expected q0 … q8)"))
}

/// What `verity generate` writes: an app's input, or Nexmark's events.
#[derive(Debug, Clone, Copy)]
pub enum GenerateApp {
    App(AppArg),
    Nexmark,
}

pub fn parse_generate_app(text: &str) -> Result<GenerateApp, String> {
    use clap::ValueEnum;
    if text == "nexmark" {
        return Ok(GenerateApp::Nexmark);
    }
    AppArg::from_str(text, false).map(GenerateApp::App).map_err(|_| {
        format!("unknown app `{text}` (expected doubler, wordcount, market-spread, seq-window or nexmark)")
    })
}

/// `verity sim --app`: a reference app, or a Nexmark query as `nexmark-q3`.
pub fn parse_sim_app(text: &str) -> Result<AppName, String> {
    use clap::ValueEnum;
    if let Ok(app) = AppArg::from_str(text, false) {
        return Ok(app.into());
    }
    match AppName::from_name(text) {
        Some(app @ AppName::Nexmark(_)) => Ok(app),
        _ => Err(format!(
            "unknown app `{text}` (expected doubler, wordcount, market-spread, seq-window, window-count or nexmark-q0 … nexmark-q8)"
        )),
    }
}

/// Checks a nexmark `--seed` and `--event-rate`.
pub fn check_options(seed: u64, rate_per_s: u64) -> Result<()> {
    generator::check_options(seed, rate_per_s).map_err(anyhow::Error::msg)
}

/// A maker of `count` generated events (after checking the options).
pub fn events(count: u64, seed: u64, rate: u64) -> Result<impl Fn() -> Box<dyn LineGenerator>> {
    check_options(seed, rate)?;
    Ok(move || Box::new(NexmarkLines::new(count, seed, rate)) as Box<dyn LineGenerator>)
}

/// The events a checked run read, to read again for the model.
pub enum CheckInput {
    Generated { count: u64, seed: u64, rate: u64 },
    File(String),
}

/// A generator read as bytes, so the model streams the events without
/// holding them.
struct GeneratedBytes {
    lines: Box<dyn LineGenerator>,
    buffer: Vec<u8>,
    at: usize,
}

/// Generated lines taken per refill of `GeneratedBytes`.
const GENERATED_LINES_PER_REFILL: usize = 4096;

impl Read for GeneratedBytes {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for GeneratedBytes {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.at == self.buffer.len() {
            self.buffer.clear();
            self.at = 0;
            self.lines
                .write_lines(&mut self.buffer, GENERATED_LINES_PER_REFILL);
        }
        Ok(&self.buffer[self.at..])
    }
    fn consume(&mut self, amount: usize) {
        self.at += amount;
    }
}

/// Where a checked run's output is read back from: the file it names, or
/// a temporary file (removed when done) in place of stdout or `null`.
pub struct CheckedOutput {
    path: PathBuf,
    temporary: bool,
}

impl CheckedOutput {
    pub fn for_run(output: &str) -> Result<CheckedOutput> {
        if output == "-" || output == "null" {
            let path = std::env::temp_dir().join(format!("verity-nexmark-check-{}.out", std::process::id()));
            return Ok(CheckedOutput {
                path,
                temporary: true,
            });
        }
        let path = output.strip_prefix("file://").unwrap_or(output);
        if path.contains("://") || path.starts_with("tcp:") {
            bail!("--check reads the output back: give --output FILE (or none), not {output}");
        }
        Ok(CheckedOutput {
            path: PathBuf::from(path),
            temporary: false,
        })
    }

    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// The `--output` argument that writes to the file.
    pub fn path_arg(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Compares the output with `query`'s model over `input`; prints the
    /// report; 0 when they agree, 1 otherwise.
    pub fn check(self, query: Query, input: &CheckInput) -> Result<i32> {
        let app = verity_verify::App::Nexmark(query);
        let report = match input {
            CheckInput::Generated { count, seed, rate } => {
                let events = GeneratedBytes {
                    lines: Box::new(NexmarkLines::new(*count, *seed, *rate)),
                    buffer: Vec::new(),
                    at: 0,
                };
                verity_verify::verify_output_of(app, events, &self.path)?
            }
            CheckInput::File(path) => {
                let path = path.strip_prefix("file://").unwrap_or(path);
                let file = std::fs::File::open(path)
                    .with_context(|| format!("cannot read {path} again for --check"))?;
                let events = std::io::BufReader::with_capacity(verity_verify::OUTPUT_BATCH_BYTES, file);
                verity_verify::verify_output_of(app, events, &self.path)?
            }
        };
        eprintln!("{report}");
        Ok(if report.is_ok() { 0 } else { 1 })
    }
}

impl Drop for CheckedOutput {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
