//! The two-stream verifier on real engine runs: market-spread reading quotes
//! and orders as two concurrent sources (the `--quotes/--orders` path) passes
//! at every worker count, and each planted fault in an engine output — a
//! flipped decision, a quote that never existed, a quote of another symbol, a
//! quote that goes backwards — is caught and named (planted in a run of the
//! mixed input, whose interleaving does not depend on thread timing). The single-file check still
//! holds for mixed input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use verity_apps::generate::generate_well_formed;
use verity_apps::{run_app, AppInput, AppName, AppOptions};
use verity_core::{DeadLetterSpec, Outputs, RunConfig, SinkSpec, SourceSpec};
use verity_verify::{verify_two_streams, AnomalyKind, App, InputFiles, Report};

const WORKER_COUNTS: [usize; 3] = [1, 2, 4];

/// Generated market-spread records split into a quotes and an orders stream.
fn split_input(records: u64, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let (mut quotes, mut orders) = (Vec::new(), Vec::new());
    for line in generate_well_formed(AppName::MarketSpread, records, seed).split_inclusive(|b| *b == b'\n') {
        let stream = if line.starts_with(b"O,") {
            &mut orders
        } else {
            &mut quotes
        };
        stream.extend_from_slice(line);
    }
    (quotes, orders)
}

fn config(workers: usize) -> RunConfig {
    RunConfig {
        workers,
        pin_cores: false,
        progress: false,
        ..RunConfig::default()
    }
}

/// Runs market-spread on two file streams; returns the output path.
fn run_two_streams(dir: &Path, quotes: &Path, orders: &Path, workers: usize) -> PathBuf {
    let output = dir.join(format!("two-{workers}.out"));
    let outputs = Outputs {
        sink: SinkSpec::File(output.clone()),
        dead_letter: DeadLetterSpec::File(dir.join(format!("two-{workers}.out.dead-letter"))),
    };
    let input = AppInput::QuotesAndOrders {
        quotes: SourceSpec::parse(quotes.to_str().unwrap()),
        orders: SourceSpec::parse(orders.to_str().unwrap()),
    };
    run_app(
        AppName::MarketSpread,
        input,
        AppOptions::default(),
        &config(workers),
        &outputs,
        Default::default(),
    )
    .unwrap();
    output
}

struct Run {
    _dir: tempfile::TempDir,
    quotes: Vec<u8>,
    orders: Vec<u8>,
    output: Vec<u8>,
}

fn real_run(workers: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (quotes, orders) = split_input(30_000, 9);
    let (q, o) = (dir.path().join("quotes.in"), dir.path().join("orders.in"));
    std::fs::write(&q, &quotes).unwrap();
    std::fs::write(&o, &orders).unwrap();
    let out = run_two_streams(dir.path(), &q, &o, workers);
    let inputs = InputFiles::QuotesAndOrders { quotes: q, orders: o };
    let report = verity_verify::verify_output(&App::MarketSpread, &inputs, &out).unwrap();
    assert!(report.is_ok(), "{workers} workers: {report}");
    Run {
        output: std::fs::read(&out).unwrap(),
        _dir: dir,
        quotes,
        orders,
    }
}

#[test]
fn real_two_stream_runs_pass_at_every_worker_count() {
    for workers in WORKER_COUNTS {
        let run = real_run(workers);
        let report = verify_two_streams(&run.quotes, &run.orders, &run.output);
        assert!(report.is_ok(), "{report}");
        assert!(
            report.to_string().starts_with("OK market-spread (two streams): "),
            "{report}"
        );
        assert_eq!(report.output_lines, report.expected_lines, "{report}");
        assert!(report.output_lines > 15_000, "{report}");
    }
}

/// One output line as fields: id, verdict, symbol, bid, ask.
fn fields(line: &str) -> Vec<String> {
    line.split(',').map(str::to_string).collect()
}

fn lines(output: &[u8]) -> Vec<String> {
    String::from_utf8(output.to_vec())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn join(lines: &[String]) -> Vec<u8> {
    lines.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect()
}

/// Each symbol's quotes (`bid,ask` as the output prints them), in stream order.
fn quotes_by_symbol(quotes: &[u8]) -> BTreeMap<String, Vec<String>> {
    let mut by_symbol: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines(quotes) {
        let f = fields(&line);
        let price = |p: &str| {
            let (whole, frac) = p.split_once('.').unwrap_or((p, ""));
            format!("{whole}.{frac:0<4}")
        };
        by_symbol
            .entry(f[1].clone())
            .or_default()
            .push(format!("{},{}", price(&f[2]), price(&f[3])));
    }
    by_symbol
}

fn only(report: &Report, kind: AnomalyKind) -> String {
    assert_eq!(report.count(kind), 1, "{report}");
    assert_eq!(report.anomalies(), 1, "{report}");
    report.to_string()
}

/// The first output line (index) that reports a quote.
fn first_quoted(out: &[String]) -> usize {
    out.iter()
        .position(|l| !l.ends_with(",,"))
        .expect("some decision has a quote")
}

/// The engine's output on the quotes and orders *mixed in one source*, checked
/// against the same records split into two streams. A mixed run is one
/// interleaving of the two streams, and unlike a run of two concurrent readers
/// it is the same every time (one source's interleaving is deterministic), so
/// the faults planted in it below find what they look for on every run.
fn mixed_run(workers: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mixed = generate_well_formed(AppName::MarketSpread, 30_000, 9);
    let (quotes, orders) = split_input(30_000, 9);
    let input = dir.path().join("mixed.in");
    std::fs::write(&input, &mixed).unwrap();
    let output = dir.path().join("mixed.out");
    let outputs = Outputs {
        sink: SinkSpec::File(output.clone()),
        dead_letter: DeadLetterSpec::File(dir.path().join("mixed.out.dead-letter")),
    };
    let source = AppInput::Single(SourceSpec::parse(input.to_str().unwrap()));
    run_app(
        AppName::MarketSpread,
        source,
        AppOptions::default(),
        &config(workers),
        &outputs,
        Default::default(),
    )
    .unwrap();
    let output = std::fs::read(&output).unwrap();
    assert!(verify_two_streams(&quotes, &orders, &output).is_ok());
    Run {
        output,
        _dir: dir,
        quotes,
        orders,
    }
}

#[test]
fn planted_faults_in_a_real_two_stream_output_are_caught() {
    let run = mixed_run(2);
    let out = lines(&run.output);
    let check = |planted: &[String]| verify_two_streams(&run.quotes, &run.orders, &join(planted));

    // A flipped decision.
    let mut flipped = out.clone();
    let at = first_quoted(&out);
    flipped[at] = if out[at].contains(",ACCEPT,") {
        out[at].replace(",ACCEPT,", ",REJECT,")
    } else {
        out[at].replace(",REJECT,", ",ACCEPT,")
    };
    let text = only(&check(&flipped), AnomalyKind::WrongValue);
    assert!(
        text.contains(&format!("output line {}: wrong value", at + 1)),
        "{text}"
    );

    // A quote that never existed.
    let mut invented = out.clone();
    let f = fields(&out[at]);
    invented[at] = format!("{},REJECT,{},0.0001,99999.9999", f[0], f[2]);
    let text = only(&check(&invented), AnomalyKind::ImpossibleQuote);
    assert!(text.contains("0.0001,99999.9999 is no quote of"), "{text}");

    // A quote of another symbol (one its own symbol never had).
    let by_symbol = quotes_by_symbol(&run.quotes);
    let own = &by_symbol[&f[2]];
    // The last quote of another symbol: still held, as no decision passed it.
    let foreign = by_symbol
        .iter()
        .filter(|(symbol, _)| **symbol != f[2])
        .filter_map(|(_, quotes)| quotes.last())
        .find(|q| !own.contains(q))
        .unwrap();
    let mut borrowed = out.clone();
    borrowed[at] = format!("{},{},{},{foreign}", f[0], f[1], f[2]);
    let text = only(&check(&borrowed), AnomalyKind::ImpossibleQuote);
    assert!(text.contains(&format!("{foreign} is a quote of ")), "{text}");

    // A quote that goes backwards: two consecutive decisions of one symbol
    // swap their quotes (with the verdicts that go with them), where the
    // earlier quote occurs once and before every occurrence of the later one.
    let mut by_symbol_lines: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (index, line) in out.iter().enumerate() {
        by_symbol_lines
            .entry(fields(line)[2].clone())
            .or_default()
            .push(index);
    }
    let quote_of = |line: &str| fields(line)[3..].join(",");
    let (a, b) = by_symbol_lines
        .iter()
        .flat_map(|(symbol, indexes)| indexes.windows(2).map(move |w| (symbol, w[0], w[1])))
        .find_map(|(symbol, a, b)| {
            let (qa, qb) = (quote_of(&out[a]), quote_of(&out[b]));
            let quotes = &by_symbol[symbol.as_str()];
            let first_a = quotes.iter().position(|q| *q == qa)?;
            let first_b = quotes.iter().position(|q| *q == qb)?;
            let once = quotes.iter().filter(|q| **q == qa).count() == 1;
            (once && first_a < first_b).then_some((a, b))
        })
        .expect("two decisions of one symbol on different quotes");
    let mut backwards = out.clone();
    let (fa, fb) = (fields(&out[a]), fields(&out[b]));
    backwards[a] = format!("{},{}", fa[0], fb[1..].join(","));
    backwards[b] = format!("{},{}", fb[0], fa[1..].join(","));
    let text = only(&check(&backwards), AnomalyKind::ImpossibleQuote);
    assert!(
        text.contains(&format!("output line {}: impossible quote", b + 1)),
        "{text}"
    );
    assert!(text.contains("goes back"), "{text}");

    // Lost, duplicated and reordered decisions keep their classes.
    let mut lost = out.clone();
    lost.remove(at);
    only(&check(&lost), AnomalyKind::Lost);
    let mut duplicated = out.clone();
    duplicated.insert(b + 1, out[b].clone());
    only(&check(&duplicated), AnomalyKind::Duplicated);
    let mut reordered = out.clone();
    reordered.swap(a, b);
    assert!(
        check(&reordered).count(AnomalyKind::Reordered) == 1,
        "{}",
        check(&reordered)
    );
}

#[test]
fn single_file_market_spread_verification_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mixed.in");
    std::fs::write(&input, generate_well_formed(AppName::MarketSpread, 20_000, 4)).unwrap();
    for workers in WORKER_COUNTS {
        let output = dir.path().join(format!("mixed-{workers}.out"));
        let outputs = Outputs {
            sink: SinkSpec::File(output.clone()),
            dead_letter: DeadLetterSpec::File(dir.path().join("mixed.dead-letter")),
        };
        let source = AppInput::Single(SourceSpec::parse(input.to_str().unwrap()));
        run_app(
            AppName::MarketSpread,
            source,
            AppOptions::default(),
            &config(workers),
            &outputs,
            Default::default(),
        )
        .unwrap();
        let report = verity_verify::verify_files(&App::MarketSpread, &input, &output).unwrap();
        assert!(report.is_ok(), "{report}");
        assert!(
            report
                .to_string()
                .starts_with("OK market-spread: 20000 input records"),
            "{report}"
        );
        // The mixed oracle is exact: a flipped decision is still a wrong value.
        let text = std::fs::read_to_string(&output).unwrap();
        let flipped = text.replacen(",REJECT,", ",ACCEPT,", 1);
        let report = verity_verify::verify(
            App::MarketSpread,
            &std::fs::read(&input).unwrap(),
            flipped.as_bytes(),
        );
        assert_eq!(report.count(AnomalyKind::WrongValue), 1, "{report}");
    }
}
