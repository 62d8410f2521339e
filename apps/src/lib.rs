//! The reference applications, their input generators, and one entry point that
//! runs any of them on the threaded runtime.
#![forbid(unsafe_code)]

pub mod doubler;
pub mod format;
pub mod generate;
pub mod market_spread;
pub mod record_keys;
pub mod seq_window;
pub mod window_count;
pub mod wordcount;

use verity_core::{run, Dataflow, Key, Outputs, RunConfig, RunError, RunSummary, SourceSpec, Wire};

/// The reference apps by their command-line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppName {
    Doubler,
    Wordcount,
    MarketSpread,
    SeqWindow,
    WindowCount,
}

impl AppName {
    pub const ALL: [AppName; 5] = [
        AppName::Doubler,
        AppName::Wordcount,
        AppName::MarketSpread,
        AppName::SeqWindow,
        AppName::WindowCount,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AppName::Doubler => "doubler",
            AppName::Wordcount => "wordcount",
            AppName::MarketSpread => "market-spread",
            AppName::SeqWindow => "seq-window",
            AppName::WindowCount => "window-count",
        }
    }

    pub fn from_name(name: &str) -> Option<AppName> {
        AppName::ALL.into_iter().find(|app| app.name() == name)
    }

    /// The input and output formats, for `verity run <app> --help`.
    pub fn format_help(self) -> &'static str {
        match self {
            AppName::Doubler => doubler::FORMAT_HELP,
            AppName::Wordcount => wordcount::FORMAT_HELP,
            AppName::MarketSpread => market_spread::FORMAT_HELP,
            AppName::SeqWindow => seq_window::FORMAT_HELP,
            AppName::WindowCount => window_count::FORMAT_HELP,
        }
    }
}

/// Where an app's input comes from.
pub enum AppInput {
    /// One stream: a built-in source (file, stdin, TCP, generator, memory) or
    /// any connector (`SourceSpec::from_connector`).
    Single(SourceSpec),
    /// market-spread only: quotes and orders as two streams.
    QuotesAndOrders { quotes: SourceSpec, orders: SourceSpec },
}

impl AppInput {
    /// The names of its sources, in the dataflow's order.
    pub fn source_names(&self) -> Vec<String> {
        match self {
            AppInput::Single(source) => vec![source.name.clone()],
            AppInput::QuotesAndOrders { quotes, orders } => vec![quotes.name.clone(), orders.name.clone()],
        }
    }
}

/// App options beyond input and output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppOptions {
    /// wordcount: final counts at end of input instead of running counts.
    pub final_counts: bool,
    /// market-spread: reject orders on a quote older than this (by the
    /// process clock at decision time).
    pub max_quote_age_ms: Option<u64>,
    /// Planted bugs (tests only; `verity run --plant-bug`).
    pub market_spread_bugs: market_spread::Bugs,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0} takes one input stream (--input or --generate); --quotes/--orders are for market-spread")]
    SplitInputNotSupported(&'static str),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Something that runs a dataflow of any key, value, state and output type:
/// the single-process runtime, or one role of a cluster.
pub trait Driver {
    type Out;
    fn drive<K, V, S, O>(self, flow: Dataflow<K, V, S, O>) -> Result<Self::Out, RunError>
    where
        K: Key + Wire,
        V: Wire + Send + 'static,
        S: verity_core::State,
        O: 'static;
}

/// The single-process runtime as a `Driver`.
pub struct LocalRun<'a> {
    pub config: &'a RunConfig,
    pub outputs: &'a Outputs,
    pub stop: verity_core::source::StopFlag,
}

impl Driver for LocalRun<'_> {
    type Out = RunSummary;
    fn drive<K, V, S, O>(self, flow: Dataflow<K, V, S, O>) -> Result<RunSummary, RunError>
    where
        K: Key + Wire,
        V: Wire + Send + 'static,
        S: verity_core::State,
        O: 'static,
    {
        run(flow, self.config, self.outputs, self.stop)
    }
}

/// Builds `app`'s dataflow and runs it to the end of its input.
pub fn run_app(
    app: AppName,
    input: AppInput,
    options: AppOptions,
    config: &RunConfig,
    outputs: &Outputs,
    stop: verity_core::source::StopFlag,
) -> Result<RunSummary, AppError> {
    drive_app(
        app,
        input,
        options,
        LocalRun {
            config,
            outputs,
            stop,
        },
    )
}

/// `verity_core::replay` as a `Driver`: re-runs a recorded run's shards in
/// its recorded order, the replayed output into `out`.
pub struct Replay<'a> {
    pub run: verity_core::replay::RecordedRun,
    pub out: &'a mut dyn std::io::Write,
}

impl Driver for Replay<'_> {
    type Out = Result<verity_core::replay::ReplayReport, verity_core::replay::ReplayError>;
    fn drive<K, V, S, O>(self, flow: Dataflow<K, V, S, O>) -> Result<Self::Out, RunError>
    where
        K: Key + Wire,
        V: Wire + Send + 'static,
        S: verity_core::State,
        O: 'static,
    {
        Ok(verity_core::replay::replay(flow, self.run, self.out))
    }
}

/// Builds `app`'s dataflow and hands it to `driver`.
pub fn drive_app<D: Driver>(
    app: AppName,
    input: AppInput,
    options: AppOptions,
    driver: D,
) -> Result<D::Out, AppError> {
    let single = |input: AppInput| match input {
        AppInput::Single(spec) => Ok(spec),
        AppInput::QuotesAndOrders { .. } => Err(AppError::SplitInputNotSupported(app.name())),
    };
    let out = match app {
        AppName::Doubler => driver.drive(doubler::dataflow(single(input)?))?,
        AppName::Wordcount => driver.drive(wordcount::dataflow(single(input)?, options.final_counts))?,
        AppName::SeqWindow => driver.drive(seq_window::dataflow(single(input)?))?,
        AppName::WindowCount => driver.drive(window_count::dataflow(single(input)?))?,
        AppName::MarketSpread => {
            let inputs = match input {
                AppInput::Single(spec) => market_spread::Inputs::Mixed(spec),
                AppInput::QuotesAndOrders { quotes, orders } => {
                    market_spread::Inputs::Split { quotes, orders }
                }
            };
            driver.drive(market_spread::dataflow_with_bugs(
                inputs,
                options.max_quote_age_ms,
                options.market_spread_bugs,
            ))?
        }
    };
    Ok(out)
}
