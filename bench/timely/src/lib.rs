//! verity's reference apps (wordcount, market-spread, seq-window) written on
//! timely-dataflow as its users write programs: every worker reads its share
//! of the input's lines, records are exchanged by a hash of their key to the
//! worker that owns the key, and a stateful operator keeps a hash map per
//! worker. Output lines are formatted as verity formats them and dropped (a
//! null sink) after being counted, which proves the work was done.
//!
//! Semantics match verity's apps, per key in input order: each worker sends
//! line `i` when `i % peers == index`, stamped with the epoch `i /
//! EPOCH_LINES`; the order-sensitive apps (market-spread, seq-window) stash
//! each epoch's records until the frontier passes it, then apply them sorted
//! by line number. wordcount's running counts do not depend on the order of
//! one word's occurrences (the output lines are the same multiset), so it
//! applies records as they arrive, as timely's own wordcount example does.
#![forbid(unsafe_code)]

use rustc_hash::{FxHashMap, FxHasher};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::{Capability, Operator, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle, StreamVec};
use timely::worker::Worker;
use timely::ExchangeData;
use verity_apps::format::write_u64;
use verity_apps::market_spread::{self, Book, Decision, Order, Quote, Side, Symbol};
use verity_apps::seq_window::{Window, WINDOW_SIZE};
use verity_core::Either;

/// Input lines per epoch: the unit of timely's progress tracking, and of the
/// order-sensitive apps' stash. Smaller epochs cost more coordination, larger
/// ones more memory and a longer wait before an epoch is applied.
pub const EPOCH_LINES: u64 = 16_384;
/// How many epochs a worker may read ahead of what its dataflow completed:
/// the bound on buffered records (timely's inputs are unbounded otherwise).
pub const EPOCHS_IN_FLIGHT_MAX: u64 = 4;
const READ_BUFFER_BYTES: usize = 1 << 20;
/// The null sink formats into this much buffer, then drops it.
const OUTPUT_BUFFER_BYTES: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    Wordcount,
    MarketSpread,
    SeqWindow,
}

impl App {
    pub const ALL: [App; 3] = [App::Wordcount, App::MarketSpread, App::SeqWindow];

    pub fn name(self) -> &'static str {
        match self {
            App::Wordcount => "wordcount",
            App::MarketSpread => "market-spread",
            App::SeqWindow => "seq-window",
        }
    }

    pub fn from_name(name: &str) -> Option<App> {
        App::ALL.into_iter().find(|app| app.name() == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("timely could not start: {0}")]
    Start(String),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("a timely worker failed: {0}")]
    Worker(String),
}

/// What a run did, summed over its workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub outputs: u64,
    /// Lines the app could not parse (dropped, as the naive loops drop them).
    pub malformed: u64,
    /// With `run_with_digest`, the wrapping sum of `line_digest` over the
    /// output lines (so independent of their order across keys); else 0.
    pub digest: u64,
}

/// An output line's share of `Counts::digest`.
pub fn line_digest(line: &[u8]) -> u64 {
    key_hash(line)
}

/// Runs `app` over the file at `input` with timely's `config` (`-w W` etc.
/// from the command line through `timely::execute_from_args`, or a `Config`).
pub fn run(app: App, input: &Path, config: timely::Config) -> Result<Counts, RunError> {
    run_inner(app, input, config, false)
}

/// Like `run`, with the digest of the output lines (tests: it costs a hash
/// per line, which the benchmark leaves out).
pub fn run_with_digest(app: App, input: &Path, config: timely::Config) -> Result<Counts, RunError> {
    run_inner(app, input, config, true)
}

fn run_inner(app: App, input: &Path, config: timely::Config, digest: bool) -> Result<Counts, RunError> {
    let path = input.to_path_buf();
    let guards = timely::execute(config, move |worker| run_worker(app, &path, digest, worker))
        .map_err(RunError::Start)?;
    let mut total = Counts::default();
    for result in guards.join() {
        let counts = result
            .map_err(RunError::Worker)?
            .map_err(|source| RunError::Read {
                path: input.to_path_buf(),
                source,
            })?;
        total.outputs += counts.outputs;
        total.malformed += counts.malformed;
        total.digest = total.digest.wrapping_add(counts.digest);
    }
    Ok(total)
}

fn run_worker(app: App, path: &Path, digest: bool, worker: &mut Worker) -> io::Result<Counts> {
    match app {
        App::Wordcount => wordcount(worker, path, digest),
        App::MarketSpread => market_spread(worker, path, digest),
        App::SeqWindow => seq_window(worker, path, digest),
    }
}

/// Where an exchanged record goes: a fixed-seed hash of its key.
fn key_hash(key: &[u8]) -> u64 {
    let mut hasher = FxHasher::default();
    key.hash(&mut hasher);
    hasher.finish()
}

fn wordcount(worker: &mut Worker, path: &Path, digest: bool) -> io::Result<Counts> {
    let mut input = InputHandleVec::<u64, String>::new();
    let probe = ProbeHandle::new();
    let sunk = Rc::new(Cell::new(Sunk::default()));
    worker.dataflow::<u64, _, _>(|scope| {
        let counted = input
            .to_stream(scope)
            .unary(
                Exchange::new(|word: &String| key_hash(word.as_bytes())),
                "WordCount",
                |_capability, _info| {
                    let mut counts: FxHashMap<String, u64> = FxHashMap::default();
                    move |input, output| {
                        input.for_each_stamp(|capability, data| {
                            let mut session = output.session(&capability);
                            for word in data.flat_map(|batch| batch.drain(..)) {
                                let count = match counts.get_mut(&word) {
                                    Some(count) => {
                                        *count += 1;
                                        *count
                                    }
                                    None => {
                                        counts.insert(word.clone(), 1);
                                        1
                                    }
                                };
                                session.give((word, count));
                            }
                        });
                    }
                },
            )
            .container::<Vec<(String, u64)>>();
        null_sink(counted, format_word_count, &sunk, digest).probe_with(&probe);
    });
    let malformed = feed(worker, path, input, &probe, |_, line, input| {
        let Ok(text) = std::str::from_utf8(line) else {
            return false;
        };
        for word in text.split_whitespace() {
            input.send(word.to_owned());
        }
        true
    })?;
    Ok(Counts {
        outputs: sunk.get().lines,
        malformed,
        digest: sunk.get().digest,
    })
}

fn format_word_count((word, count): &(String, u64), out: &mut Vec<u8>) {
    out.extend_from_slice(word.as_bytes());
    out.push(b' ');
    write_u64(out, *count);
}

/// A market event as it crosses workers (verity's types are not serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketEvent {
    symbol: [u8; 8],
    symbol_len: u8,
    kind: MarketKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum MarketKind {
    Quote {
        bid_units: u64,
        ask_units: u64,
    },
    Order {
        id: u64,
        buy: bool,
        qty: u64,
        price_units: u64,
    },
}

impl MarketEvent {
    fn from_event(event: &market_spread::Event) -> MarketEvent {
        let (symbol, kind) = match event {
            Either::Left(quote) => (
                quote.symbol,
                MarketKind::Quote {
                    bid_units: quote.bid_units,
                    ask_units: quote.ask_units,
                },
            ),
            Either::Right(order) => (
                order.symbol,
                MarketKind::Order {
                    id: order.id,
                    buy: order.side == Side::Buy,
                    qty: order.qty,
                    price_units: order.price_units,
                },
            ),
        };
        let bytes = symbol.as_bytes();
        let mut inline = [0; 8];
        inline[..bytes.len()].copy_from_slice(bytes);
        MarketEvent {
            symbol: inline,
            symbol_len: bytes.len() as u8,
            kind,
        }
    }

    fn symbol_bytes(&self) -> &[u8] {
        &self.symbol[..self.symbol_len as usize]
    }

    fn to_event(self) -> market_spread::Event {
        let symbol = Symbol::parse(self.symbol_bytes())
            .expect("a symbol that parsed on the reading worker parses again");
        match self.kind {
            MarketKind::Quote { bid_units, ask_units } => Either::Left(Quote {
                symbol,
                bid_units,
                ask_units,
            }),
            MarketKind::Order {
                id,
                buy,
                qty,
                price_units,
            } => Either::Right(Order {
                id,
                symbol,
                side: if buy { Side::Buy } else { Side::Sell },
                qty,
                price_units,
            }),
        }
    }
}

fn market_spread(worker: &mut Worker, path: &Path, digest: bool) -> io::Result<Counts> {
    let mut input = InputHandleVec::<u64, (u64, MarketEvent)>::new();
    let probe = ProbeHandle::new();
    let sunk = Rc::new(Cell::new(Sunk::default()));
    worker.dataflow::<u64, _, _>(|scope| {
        let mut books: FxHashMap<Symbol, Book> = FxHashMap::default();
        let decided = in_input_order(
            input.to_stream(scope),
            "MarketSpread",
            |event: &MarketEvent| key_hash(event.symbol_bytes()),
            move |event: MarketEvent| -> Option<Decision> {
                let event = event.to_event();
                let symbol = match &event {
                    Either::Left(quote) => quote.symbol,
                    Either::Right(order) => order.symbol,
                };
                market_spread::apply(books.entry(symbol).or_default(), &event)
            },
        );
        null_sink(decided, market_spread::format_decision, &sunk, digest).probe_with(&probe);
    });
    let malformed = feed(
        worker,
        path,
        input,
        &probe,
        |seq, line, input| match market_spread::parse_event(line) {
            Ok(event) => {
                input.send((seq, MarketEvent::from_event(&event)));
                true
            }
            Err(_) => false,
        },
    )?;
    Ok(Counts {
        outputs: sunk.get().lines,
        malformed,
        digest: sunk.get().digest,
    })
}

fn seq_window(worker: &mut Worker, path: &Path, digest: bool) -> io::Result<Counts> {
    let mut input = InputHandleVec::<u64, (u64, (String, u64))>::new();
    let probe = ProbeHandle::new();
    let sunk = Rc::new(Cell::new(Sunk::default()));
    worker.dataflow::<u64, _, _>(|scope| {
        let mut windows: FxHashMap<String, Window> = FxHashMap::default();
        let windowed = in_input_order(
            input.to_stream(scope),
            "SeqWindow",
            |(key, _): &(String, u64)| key_hash(key.as_bytes()),
            move |(key, value): (String, u64)| -> Option<(String, Window)> {
                let window = match windows.get_mut(&key) {
                    Some(window) => window,
                    None => windows.entry(key.clone()).or_default(),
                };
                window.copy_within(1.., 0);
                window[WINDOW_SIZE - 1] = value;
                Some((key, *window))
            },
        );
        null_sink(windowed, format_window, &sunk, digest).probe_with(&probe);
    });
    let malformed = feed(worker, path, input, &probe, |seq, line, input| {
        let Some((key, value)) = parse_key_value(line) else {
            return false;
        };
        input.send((seq, (key.to_owned(), value)));
        true
    })?;
    Ok(Counts {
        outputs: sunk.get().lines,
        malformed,
        digest: sunk.get().digest,
    })
}

/// seq-window's `<key> <value>`: exactly two whitespace-separated fields.
fn parse_key_value(line: &[u8]) -> Option<(&str, u64)> {
    let mut fields = std::str::from_utf8(line).ok()?.split_whitespace();
    match (fields.next(), fields.next(), fields.next()) {
        (Some(key), Some(value), None) => {
            Some((key, market_spread::parse_u64(value.as_bytes(), "value").ok()?))
        }
        _ => None,
    }
}

fn format_window((key, window): &(String, Window), out: &mut Vec<u8>) {
    out.extend_from_slice(key.as_bytes());
    for value in window {
        out.push(b' ');
        write_u64(out, *value);
    }
}

/// Reads the file at `path`, hands this worker's share of its lines (line
/// `i` when `i % peers == index`) to `parse` with their line numbers, and
/// advances the input one epoch every `EPOCH_LINES` lines, stepping the
/// worker while it is more than `EPOCHS_IN_FLIGHT_MAX` epochs ahead of the
/// dataflow. Closes the input and returns once the dataflow is done, with
/// the count of lines `parse` refused (returned false for).
fn feed<D: Clone + 'static>(
    worker: &mut Worker,
    path: &Path,
    mut input: InputHandleVec<u64, D>,
    probe: &ProbeHandle<u64>,
    mut parse: impl FnMut(u64, &[u8], &mut InputHandleVec<u64, D>) -> bool,
) -> io::Result<u64> {
    let (index, peers) = (worker.index() as u64, worker.peers() as u64);
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, File::open(path)?);
    let mut line = Vec::new();
    let (mut line_number, mut malformed) = (0u64, 0u64);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line_number % peers == index {
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if !parse(line_number, text, &mut input) {
                malformed += 1;
            }
        }
        line_number += 1;
        if line_number % EPOCH_LINES == 0 {
            let epoch = line_number / EPOCH_LINES;
            input.advance_to(epoch);
            let oldest_in_flight = epoch.saturating_sub(EPOCHS_IN_FLIGHT_MAX);
            worker.step_while(|| probe.less_than(&oldest_in_flight));
        }
    }
    input.close();
    worker.step_while(|| !probe.done());
    Ok(malformed)
}

/// One stashed epoch: the capability to emit at its time, and its records
/// with their line numbers.
type Epoch<D> = (Capability<u64>, Vec<(u64, D)>);

/// The order-sensitive stateful step: records (tagged with their line
/// numbers) go to the worker owning their key (`route`); each epoch is
/// stashed until the input frontier passes it, then applied by `step` in
/// line-number order, epochs in time order.
fn in_input_order<'scope, D, O>(
    stream: StreamVec<'scope, u64, (u64, D)>,
    name: &str,
    route: impl Fn(&D) -> u64 + 'static,
    mut step: impl FnMut(D) -> Option<O> + 'static,
) -> StreamVec<'scope, u64, O>
where
    D: ExchangeData + Clone,
    O: Clone + 'static,
{
    stream
        .unary_frontier(
            Exchange::new(move |(_, record): &(u64, D)| route(record)),
            name,
            |_capability, _info| {
                // Keyed by time, so complete epochs come off the front in order.
                let mut stash: BTreeMap<u64, Epoch<D>> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each_stamp(|capability, data| {
                        if let Some(capability) = capability.retain_least(output.output_index()) {
                            stash
                                .entry(*capability.time())
                                .or_insert_with(|| (capability, Vec::new()))
                                .1
                                .extend(data.flat_map(|batch| batch.drain(..)));
                        }
                    });
                    while let Some(entry) = stash.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        let (capability, mut records) = entry.remove();
                        records.sort_unstable_by_key(|(line_number, _)| *line_number);
                        let mut session = output.session(&capability);
                        for (_, record) in records {
                            if let Some(out) = step(record) {
                                session.give(out);
                            }
                        }
                    }
                }
            },
        )
        .container::<Vec<O>>()
}

/// What a null sink saw.
#[derive(Debug, Clone, Copy, Default)]
struct Sunk {
    lines: u64,
    digest: u64,
}

/// Formats every record as an output line into a buffer that is dropped
/// when full, counting the lines (and with `digest`, summing their
/// `line_digest`) into `sunk`. Its (empty) output stream is there to be
/// probed: once the probe is done, every line was counted.
fn null_sink<'scope, D: Clone + 'static>(
    stream: StreamVec<'scope, u64, D>,
    format: fn(&D, &mut Vec<u8>),
    sunk: &Rc<Cell<Sunk>>,
    digest: bool,
) -> StreamVec<'scope, u64, ()> {
    let sunk = Rc::clone(sunk);
    stream.unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        "NullSink",
        move |_capability, _info| {
            let mut buffer = Vec::with_capacity(OUTPUT_BUFFER_BYTES + 1024);
            move |input, _output| {
                let mut seen = sunk.get();
                input.for_each_stamp(|_capability, data| {
                    for record in data.flat_map(|batch| batch.drain(..)) {
                        let start = buffer.len();
                        format(&record, &mut buffer);
                        if digest {
                            seen.digest = seen.digest.wrapping_add(line_digest(&buffer[start..]));
                        }
                        buffer.push(b'\n');
                        seen.lines += 1;
                        if buffer.len() >= OUTPUT_BUFFER_BYTES {
                            std::hint::black_box(&buffer);
                            buffer.clear();
                        }
                    }
                });
                sunk.set(seen);
            }
        },
    )
}
