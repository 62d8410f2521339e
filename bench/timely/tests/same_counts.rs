//! The timely programs do the naive loops' work: on a small generated input
//! of each app, at one and at two workers, they emit as many output lines.

use std::io::Write;
use verity_apps::AppName;
use verity_bench::{baseline, workload};
use verity_bench_timely::{run, App, Counts};

/// Enough events for several epochs, so progress and the stash are exercised.
const EVENTS: u64 = 3 * verity_bench_timely::EPOCH_LINES + 123;
const SEED: u64 = 7;

fn check(app: App, app_name: AppName, naive: fn(&[u8]) -> u64) {
    let input = workload::generate(app_name, EVENTS, SEED);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&input).unwrap();
    file.flush().unwrap();
    let expected = naive(&input);
    assert!(expected > EVENTS / 2, "{} emitted only {expected}", app.name());
    for config in [timely::Config::thread(), timely::Config::process(2)] {
        let counts = run(app, file.path(), config).unwrap();
        assert_eq!(
            counts,
            Counts {
                outputs: expected,
                malformed: 0
            },
            "{}",
            app.name()
        );
    }
}

#[test]
fn wordcount_emits_as_many_lines_as_the_naive_loop() {
    check(App::Wordcount, AppName::Wordcount, baseline::wordcount);
}

#[test]
fn market_spread_emits_as_many_lines_as_the_naive_loop() {
    check(App::MarketSpread, AppName::MarketSpread, baseline::market_spread);
}

#[test]
fn seq_window_emits_as_many_lines_as_the_naive_loop() {
    check(App::SeqWindow, AppName::SeqWindow, baseline::seq_window);
}

#[test]
fn malformed_lines_are_counted_not_emitted() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"k1 1\nnot a pair\nk1 2\nk2 x\n").unwrap();
    file.flush().unwrap();
    let counts = run(App::SeqWindow, file.path(), timely::Config::process(2)).unwrap();
    assert_eq!(
        counts,
        Counts {
            outputs: 2,
            malformed: 2
        }
    );
}
