//! The timely programs do the naive loops' work: on a small generated input
//! of each app, at one and at two workers, they emit as many output lines,
//! and the same lines (by an order-independent digest) as a reference loop
//! over verity-apps' own rules and formats, applied in input order.

use rustc_hash::FxHashMap;
use std::io::Write;
use verity_apps::format::write_u64;
use verity_apps::market_spread::{self, Book, Symbol};
use verity_apps::seq_window::{Window, WINDOW_SIZE};
use verity_apps::AppName;
use verity_bench::{baseline, workload};
use verity_bench_timely::{line_digest, run, run_with_digest, App, Counts};
use verity_core::Either;

/// Enough events for several epochs, so progress and the stash are exercised.
const EVENTS: u64 = 3 * verity_bench_timely::EPOCH_LINES + 123;
const SEED: u64 = 7;

fn input_file(input: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(input).unwrap();
    file.flush().unwrap();
    file
}

fn check(app: App, app_name: AppName, naive: fn(&[u8]) -> u64, reference: fn(&[u8]) -> Counts) {
    let input = workload::generate(app_name, EVENTS, SEED);
    let file = input_file(&input);
    let expected = reference(&input);
    assert_eq!(
        naive(&input),
        expected.outputs,
        "{}: the reference loop is off",
        app.name()
    );
    assert!(
        expected.outputs > EVENTS / 2,
        "{} emitted only {}",
        app.name(),
        expected.outputs
    );
    for config in [timely::Config::thread(), timely::Config::process(2)] {
        assert_eq!(
            run_with_digest(app, file.path(), config).unwrap(),
            expected,
            "{}",
            app.name()
        );
    }
    let plain = run(app, file.path(), timely::Config::process(2)).unwrap();
    assert_eq!((plain.outputs, plain.digest), (expected.outputs, 0));
}

/// Sums `line_digest` over the lines `emit` formats.
fn digest_of(mut emit: impl FnMut(&mut dyn FnMut(&[u8]))) -> Counts {
    let mut counts = Counts::default();
    emit(&mut |line| {
        counts.outputs += 1;
        counts.digest = counts.digest.wrapping_add(line_digest(line));
    });
    counts
}

fn wordcount_reference(input: &[u8]) -> Counts {
    digest_of(|emit| {
        let mut counts: FxHashMap<&str, u64> = FxHashMap::default();
        let text = std::str::from_utf8(input).unwrap();
        for word in text.split_whitespace() {
            let count = counts.entry(word).or_default();
            *count += 1;
            let mut line = format!("{word} ").into_bytes();
            write_u64(&mut line, *count);
            emit(&line);
        }
    })
}

fn market_spread_reference(input: &[u8]) -> Counts {
    digest_of(|emit| {
        let mut books: FxHashMap<Symbol, Book> = FxHashMap::default();
        for line in input.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let event = market_spread::parse_event(line).unwrap();
            let symbol = match &event {
                Either::Left(quote) => quote.symbol,
                Either::Right(order) => order.symbol,
            };
            if let Some(decision) = market_spread::apply(books.entry(symbol).or_default(), &event) {
                let mut out = Vec::new();
                market_spread::format_decision(&decision, &mut out);
                emit(&out);
            }
        }
    })
}

fn seq_window_reference(input: &[u8]) -> Counts {
    digest_of(|emit| {
        let mut windows: FxHashMap<&str, Window> = FxHashMap::default();
        for line in std::str::from_utf8(input).unwrap().lines() {
            let (key, value) = line.split_once(' ').unwrap();
            let window = windows.entry(key).or_default();
            window.copy_within(1.., 0);
            window[WINDOW_SIZE - 1] = value.parse().unwrap();
            let mut out = key.as_bytes().to_vec();
            for value in window.iter() {
                out.push(b' ');
                write_u64(&mut out, *value);
            }
            emit(&out);
        }
    })
}

#[test]
fn wordcount_emits_the_naive_loops_lines() {
    check(
        App::Wordcount,
        AppName::Wordcount,
        baseline::wordcount,
        wordcount_reference,
    );
}

#[test]
fn market_spread_emits_the_naive_loops_lines() {
    check(
        App::MarketSpread,
        AppName::MarketSpread,
        baseline::market_spread,
        market_spread_reference,
    );
}

#[test]
fn seq_window_emits_the_naive_loops_lines() {
    check(
        App::SeqWindow,
        AppName::SeqWindow,
        baseline::seq_window,
        seq_window_reference,
    );
}

#[test]
fn malformed_lines_are_counted_not_emitted() {
    let file = input_file(b"k1 1\nnot a pair\nk1 2\nk2 x\n");
    let counts = run(App::SeqWindow, file.path(), timely::Config::process(2)).unwrap();
    assert_eq!((counts.outputs, counts.malformed), (2, 2));
}
