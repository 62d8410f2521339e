//! Oracles and output verification for the reference apps.
//!
//! Each oracle is an independent, deliberately plain single-threaded model of
//! its app, written from the format in the issue text and sharing no code with
//! `apps/`: if the engine and an app agree on a wrong answer, the oracle still
//! disagrees. The comparator then checks an engine output against the oracle's
//! expectation under the app's ordering rule (per-key order for keyed apps, no
//! order for `doubler`) and classifies every difference as lost, duplicated,
//! reordered, unexpected or wrong value.
#![forbid(unsafe_code)]

mod compare;
mod input;
mod oracle;
pub mod proxy;
pub mod sim;
mod table;

pub use compare::{compare, Anomaly, AnomalyKind, Report};
pub use oracle::{expected_output, Expected};

use std::path::{Path, PathBuf};

/// The app whose output is checked, with the options that change its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    Doubler,
    Wordcount { final_counts: bool },
    MarketSpread,
    SeqWindow,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("unknown app `{0}` (expected doubler, wordcount, market-spread or seq-window)")]
    UnknownApp(String),
    #[error("--final only applies to wordcount, not {0}")]
    FinalNotSupported(&'static str),
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
}

impl App {
    pub fn from_name(name: &str, final_counts: bool) -> Result<App, VerifyError> {
        let app = match name {
            "doubler" => App::Doubler,
            "wordcount" => App::Wordcount { final_counts },
            "market-spread" => App::MarketSpread,
            "seq-window" => App::SeqWindow,
            other => return Err(VerifyError::UnknownApp(other.to_string())),
        };
        if final_counts && !matches!(app, App::Wordcount { .. }) {
            return Err(VerifyError::FinalNotSupported(app.name()));
        }
        Ok(app)
    }

    pub fn name(self) -> &'static str {
        match self {
            App::Doubler => "doubler",
            App::Wordcount { .. } => "wordcount",
            App::MarketSpread => "market-spread",
            App::SeqWindow => "seq-window",
        }
    }

    /// Whether outputs of one key must keep their inputs' order. `doubler`
    /// guarantees no order at all; every other app guarantees per-key order.
    pub fn keeps_key_order(self) -> bool {
        !matches!(self, App::Doubler)
    }

    /// The key an output line belongs to, or `None` if the line is not in the
    /// app's output format.
    pub fn output_key(self, line: &[u8]) -> Option<&[u8]> {
        match self {
            App::Doubler => Some(b""),
            App::Wordcount { .. } => line.iter().rposition(|b| *b == b' ').map(|space| &line[..space]),
            App::MarketSpread => line.split(|b| *b == b',').nth(2),
            App::SeqWindow => line.iter().position(|b| *b == b' ').map(|space| &line[..space]),
        }
    }
}

/// Checks `output` (what the engine wrote) against the oracle for `input`.
pub fn verify(app: App, input: &[u8], output: &[u8]) -> Report {
    let expected = expected_output(app, input);
    compare(app, &expected, output)
}

/// Reads both files and checks one against the other.
pub fn verify_files(app: &App, input: &Path, output: &Path) -> Result<Report, VerifyError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| VerifyError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let input = read(input)?;
    let output = read(output)?;
    Ok(verify(*app, &input, &output))
}
