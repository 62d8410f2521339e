//! Dead-letter checking on real engine runs: every app's malformed lines are
//! in the dead-letter file exactly once (also for two streams, where the
//! source name tells the stream), and a dropped, duplicated or invented dead
//! letter, or one filed under the wrong stream, is caught and named.

use std::path::{Path, PathBuf};
use verity_apps::generate::generate_well_formed;
use verity_apps::{run_app, AppInput, AppName, AppOptions};
use verity_core::{DeadLetterSpec, Outputs, RunConfig, SinkSpec, SourceSpec};
use verity_verify::{
    verify_dead_letter_file, verify_dead_letters, AnomalyKind, App, DeadLetterReport, InputFiles, LineRule,
    NamedInput,
};

const APPS: [AppName; 4] = [
    AppName::Doubler,
    AppName::Wordcount,
    AppName::MarketSpread,
    AppName::SeqWindow,
];

/// A line each app must dead-letter (wordcount takes any UTF-8).
fn malformed(app: AppName, i: usize) -> Vec<u8> {
    match app {
        AppName::Wordcount => b"bad \xc3 not UTF-8".to_vec(),
        AppName::Doubler => format!("{i}.5 not a number").into_bytes(),
        AppName::MarketSpread => format!("X,{i},nonsense").into_bytes(),
        AppName::SeqWindow | AppName::WindowCount => format!("k{i} {i} extra").into_bytes(),
    }
}

/// Generated input with a malformed line after every `every` lines (and an
/// empty one, which only wordcount accepts, once).
fn with_malformed(app: AppName, records: u64, every: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, line) in generate_well_formed(app, records, 3)
        .split_inclusive(|b| *b == b'\n')
        .enumerate()
    {
        out.extend_from_slice(line);
        if i % every == every - 1 {
            out.extend_from_slice(&malformed(app, i));
            out.push(b'\n');
        }
        if i == 7 {
            out.push(b'\n');
        }
    }
    out
}

fn run(app: AppName, input: AppInput, dir: &Path, workers: usize) -> PathBuf {
    let dead_letter = dir.join(format!("{}-{workers}.dead-letter", app.name()));
    let outputs = Outputs {
        sink: SinkSpec::Null,
        dead_letter: DeadLetterSpec::File(dead_letter.clone()),
    };
    let config = RunConfig {
        workers,
        pin_cores: false,
        progress: false,
        ..RunConfig::default()
    };
    run_app(
        app,
        input,
        AppOptions::default(),
        &config,
        &outputs,
        Default::default(),
    )
    .unwrap();
    dead_letter
}

fn verify_app(app: AppName) -> App {
    App::from_name(app.name(), false).unwrap()
}

#[test]
fn every_app_dead_letters_each_malformed_line_once() {
    let dir = tempfile::tempdir().unwrap();
    for app in APPS {
        let input_path = dir.path().join(format!("{}.in", app.name()));
        std::fs::write(&input_path, with_malformed(app, 20_000, 97)).unwrap();
        for workers in [1, 3] {
            let source = AppInput::Single(SourceSpec::parse(input_path.to_str().unwrap()));
            let letters = run(app, source, dir.path(), workers);
            let inputs = InputFiles::Single(input_path.clone());
            let report = verify_dead_letter_file(&verify_app(app), &inputs, &letters).unwrap();
            assert!(report.is_ok(), "{app:?} {workers}: {report}");
            let expected = if app == AppName::Wordcount { 206 } else { 207 };
            assert_eq!(report.malformed, expected, "{app:?}: {report}");
            assert_eq!(report.letters, expected, "{app:?}: {report}");
        }
    }
}

fn only(report: &DeadLetterReport, kind: AnomalyKind) -> String {
    assert_eq!(report.count(kind), 1, "{report}");
    assert_eq!(report.anomalies(), 1, "{report}");
    report.to_string()
}

#[test]
fn planted_dead_letter_faults_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let app = AppName::SeqWindow;
    let input = with_malformed(app, 5_000, 50);
    let input_path = dir.path().join("seq.in");
    std::fs::write(&input_path, &input).unwrap();
    let name = input_path.to_str().unwrap();
    let letters_path = run(app, AppInput::Single(SourceSpec::parse(name)), dir.path(), 2);
    let letters = std::fs::read_to_string(letters_path).unwrap();
    let check = |letters: &str| {
        let input = NamedInput {
            name,
            rule: LineRule::App(verify_app(app)),
            data: &input,
        };
        verify_dead_letters(&[input], letters.as_bytes())
    };
    assert!(check(&letters).is_ok(), "{}", check(&letters));
    let all: Vec<&str> = letters.lines().collect();

    let dropped: String = all.iter().skip(1).map(|l| format!("{l}\n")).collect();
    let text = only(&check(&dropped), AnomalyKind::Lost);
    assert!(text.contains("is missing from the dead letters"), "{text}");

    let duplicated = format!("{letters}{}\n", all[5]);
    let text = only(&check(&duplicated), AnomalyKind::Duplicated);
    assert!(
        text.contains(&format!("dead-letter line {}: duplicated", all.len() + 1)),
        "{text}"
    );

    // A valid line (line 1 is generated, so well formed) dead-lettered.
    let first = String::from_utf8_lossy(input.split(|b| *b == b'\n').next().unwrap()).into_owned();
    let invented = format!("{name}:1: not a sequence value: {first:?}\n{letters}");
    let text = only(&check(&invented), AnomalyKind::Unexpected);
    assert!(text.contains("dead-letter line 1: unexpected"), "{text}");
    assert!(text.contains("a well-formed input line"), "{text}");
}

#[test]
fn two_stream_dead_letters_name_their_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (mut quotes, mut orders) = (Vec::new(), Vec::new());
    let generated = generate_well_formed(AppName::MarketSpread, 20_000, 5);
    for (i, line) in generated.split_inclusive(|b| *b == b'\n').enumerate() {
        // Every 40th line goes to the wrong stream: there it is malformed.
        let to_orders = line.starts_with(b"O,") != (i % 40 == 39);
        let stream = if to_orders { &mut orders } else { &mut quotes };
        stream.extend_from_slice(line);
        if i % 333 == 0 {
            stream.extend_from_slice(b"Q,bad,1,2\n");
        }
    }
    let (q, o) = (dir.path().join("quotes.in"), dir.path().join("orders.in"));
    std::fs::write(&q, &quotes).unwrap();
    std::fs::write(&o, &orders).unwrap();
    let inputs = InputFiles::QuotesAndOrders {
        quotes: q.clone(),
        orders: o.clone(),
    };
    for workers in [1, 3] {
        let source = AppInput::QuotesAndOrders {
            quotes: SourceSpec::parse(q.to_str().unwrap()),
            orders: SourceSpec::parse(o.to_str().unwrap()),
        };
        let letters = run(AppName::MarketSpread, source, dir.path(), workers);
        let report = verify_dead_letter_file(&App::MarketSpread, &inputs, &letters).unwrap();
        assert!(report.is_ok(), "{workers}: {report}");
        assert!(report.malformed >= 500, "{report}");

        // The same letters, each filed under the other stream.
        let text = std::fs::read_to_string(&letters).unwrap();
        let (qn, on) = (q.to_str().unwrap(), o.to_str().unwrap());
        let swapped = text.replace(qn, "@@").replace(on, qn).replace("@@", on);
        let swapped_path = dir.path().join("swapped.dead-letter");
        std::fs::write(&swapped_path, swapped).unwrap();
        let report = verify_dead_letter_file(&App::MarketSpread, &inputs, &swapped_path).unwrap();
        assert!(!report.is_ok(), "{report}");
        assert!(report.count(AnomalyKind::Lost) > 0, "{report}");
    }
}

#[test]
fn a_missing_dead_letter_file_is_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::write(&input, "1\n2\n").unwrap();
    let missing = dir.path().join("none.dead-letter");
    let inputs = InputFiles::Single(input.clone());
    assert!(verify_dead_letter_file(&App::Doubler, &inputs, &missing)
        .unwrap()
        .is_ok());
    std::fs::write(&input, "1\nx\n").unwrap();
    let report = verify_dead_letter_file(&App::Doubler, &inputs, &missing).unwrap();
    assert_eq!(report.count(AnomalyKind::Lost), 1, "{report}");
}
