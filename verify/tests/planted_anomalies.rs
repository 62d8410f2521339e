//! The comparator must notice every kind of anomaly, and name it, when one is
//! planted in an otherwise correct output.

use verity_verify::{verify, AnomalyKind, App};

const SEQ_INPUT: &str = "a 1\nb 1\na 2\na 3\nb 2\na 4\na 5\n";
const SEQ_OUTPUT: &str = "a 0 0 0 1\nb 0 0 0 1\na 0 0 1 2\na 0 1 2 3\nb 0 0 1 2\na 1 2 3 4\na 2 3 4 5\n";

fn check(app: App, input: &str, output: &str) -> verity_verify::Report {
    verify(app, input.as_bytes(), output.as_bytes())
}

fn only(report: &verity_verify::Report, kind: AnomalyKind, count: u64) {
    assert!(!report.is_ok(), "{report}");
    assert_eq!(report.count(kind), count, "{report}");
    assert_eq!(report.anomalies(), count, "{report}");
    assert!(report.to_string().starts_with("FAILED"), "{report}");
}

#[test]
fn correct_output_passes_in_any_cross_key_interleaving() {
    let report = check(App::SeqWindow, SEQ_INPUT, SEQ_OUTPUT);
    assert!(report.is_ok(), "{report}");
    assert!(
        report
            .to_string()
            .starts_with("OK seq-window: 7 input records (0 malformed)"),
        "{report}"
    );
    // Keys may interleave differently across shards.
    let interleaved = "b 0 0 0 1\nb 0 0 1 2\na 0 0 0 1\na 0 0 1 2\na 0 1 2 3\na 1 2 3 4\na 2 3 4 5\n";
    assert!(check(App::SeqWindow, SEQ_INPUT, interleaved).is_ok());
}

#[test]
fn lost_line_is_reported_with_its_input_line() {
    let output = SEQ_OUTPUT.replace("b 0 0 1 2\n", "");
    let report = check(App::SeqWindow, SEQ_INPUT, &output);
    only(&report, AnomalyKind::Lost, 1);
    assert!(
        report.to_string().contains("input line 5: lost: \"b 0 0 1 2\""),
        "{report}"
    );
}

#[test]
fn duplicate_is_reported_at_its_output_line() {
    let output = SEQ_OUTPUT.replace("a 0 1 2 3\n", "a 0 1 2 3\na 0 1 2 3\n");
    let report = check(App::SeqWindow, SEQ_INPUT, &output);
    only(&report, AnomalyKind::Duplicated, 1);
    assert!(
        report.to_string().contains("output line 5: duplicated"),
        "{report}"
    );
}

#[test]
fn reorder_within_a_key_is_reported() {
    let output = "a 0 0 0 1\nb 0 0 0 1\na 0 1 2 3\na 0 0 1 2\nb 0 0 1 2\na 1 2 3 4\na 2 3 4 5\n";
    let report = check(App::SeqWindow, SEQ_INPUT, output);
    only(&report, AnomalyKind::Reordered, 1);
    assert!(
        report.to_string().contains("output line 4: reordered"),
        "{report}"
    );
}

#[test]
fn wrong_value_and_unexpected_lines_are_told_apart() {
    let output = SEQ_OUTPUT.replace("a 1 2 3 4", "a 1 2 3 9");
    let report = check(App::SeqWindow, SEQ_INPUT, &output);
    only(&report, AnomalyKind::WrongValue, 1);
    assert!(
        report
            .to_string()
            .contains("got \"a 1 2 3 9\", expected \"a 1 2 3 4\""),
        "{report}"
    );

    let report = check(
        App::SeqWindow,
        SEQ_INPUT,
        &format!("{SEQ_OUTPUT}zzz 0 0 0 1\ngarbage\n"),
    );
    only(&report, AnomalyKind::Unexpected, 2);
}

#[test]
fn doubler_ignores_order_but_not_counts() {
    let input = "1\n2\n2\nx\n";
    assert!(check(App::Doubler, input, "4\n2\n4\n").is_ok());
    only(&check(App::Doubler, input, "4\n2\n"), AnomalyKind::Lost, 1);
    only(
        &check(App::Doubler, input, "4\n2\n4\n4\n"),
        AnomalyKind::Duplicated,
        1,
    );
    only(
        &check(App::Doubler, input, "4\n2\n5\n"),
        AnomalyKind::WrongValue,
        1,
    );
    let report = check(App::Doubler, input, "4\n2\n4\n");
    assert!(
        report.to_string().contains("4 input records (1 malformed)"),
        "{report}"
    );
}

#[test]
fn wordcount_final_compares_totals() {
    let app = App::Wordcount { final_counts: true };
    let input = "x y x\nz\n";
    assert!(check(app, input, "z 1\nx 2\ny 1\n").is_ok());
    only(&check(app, input, "z 1\nx 3\ny 1\n"), AnomalyKind::WrongValue, 1);
}

#[test]
fn market_spread_is_exact_per_symbol() {
    let input = "Q,A,1,1.01\nO,1,A,B,1,1\nQ,B,1,2\nO,2,B,S,1,1\nO,3,A,B,1,1\n";
    let output = "2,REJECT,B,1.0000,2.0000\n1,ACCEPT,A,1.0000,1.0100\n3,ACCEPT,A,1.0000,1.0100\n";
    assert!(check(App::MarketSpread, input, output).is_ok());
    let flipped = output.replace("3,ACCEPT", "3,REJECT");
    only(
        &check(App::MarketSpread, input, &flipped),
        AnomalyKind::WrongValue,
        1,
    );
}

#[test]
fn many_anomalies_are_counted_and_the_first_shown() {
    let input: String = (1..=100).map(|v| format!("k {v}\n")).collect();
    let report = check(App::SeqWindow, &input, "");
    only(&report, AnomalyKind::Lost, 100);
    let text = report.to_string();
    assert!(text.contains("input line 1: lost"), "{text}");
    assert!(text.contains("input line 3: lost"), "{text}");
    assert!(text.ends_with("... and 97 more"), "{text}");
}

#[test]
fn unknown_app_and_misplaced_final_are_errors() {
    assert!(App::from_name("nope", false).is_err());
    assert!(App::from_name("doubler", true).is_err());
    assert_eq!(
        App::from_name("wordcount", true).unwrap(),
        App::Wordcount { final_counts: true }
    );
}

/// For every reference app: a correct output passes, and each planted anomaly
/// (lost, duplicated, reordered, corrupted, invented record) is detected and
/// named. Doubler keeps no order, so a reorder there is no anomaly.
#[test]
fn every_class_is_detected_for_every_app() {
    let cases: [(App, &str, &str, &str); 4] = [
        (App::Doubler, "1\n2\n3\n", "2\n4\n6\n", "999999"),
        (
            App::Wordcount { final_counts: false },
            "a a a\n",
            "a 1\na 2\na 3\n",
            "zz 1",
        ),
        (
            App::MarketSpread,
            "Q,A,1,1.01\nO,1,A,B,1,1\nO,2,A,B,1,1\nO,3,A,S,1,1\n",
            "1,ACCEPT,A,1.0000,1.0100\n2,ACCEPT,A,1.0000,1.0100\n3,ACCEPT,A,1.0000,1.0100\n",
            "9,ACCEPT,ZZ,1.0000,1.0100",
        ),
        (
            App::SeqWindow,
            "k 1\nk 2\nk 3\n",
            "k 0 0 0 1\nk 0 0 1 2\nk 0 1 2 3\n",
            "zz 0 0 0 1",
        ),
    ];
    for (app, input, good, invented) in cases {
        assert!(check(app, input, good).is_ok(), "{app:?}");
        let lines: Vec<&str> = good.lines().collect();
        let join = |lines: &[&str]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        only(&check(app, input, &join(&lines[..2])), AnomalyKind::Lost, 1);
        only(
            &check(app, input, &join(&[lines[0], lines[1], lines[1], lines[2]])),
            AnomalyKind::Duplicated,
            1,
        );
        let swapped = check(app, input, &join(&[lines[0], lines[2], lines[1]]));
        if app.keeps_key_order() {
            only(&swapped, AnomalyKind::Reordered, 1);
        } else {
            assert!(swapped.is_ok(), "{app:?}: {swapped}");
        }
        let corrupted = format!("{}9", lines[1]);
        only(
            &check(app, input, &join(&[lines[0], &corrupted, lines[2]])),
            AnomalyKind::WrongValue,
            1,
        );
        only(
            &check(app, input, &join(&[lines[0], lines[1], lines[2], invented])),
            AnomalyKind::Unexpected,
            1,
        );
    }
}
