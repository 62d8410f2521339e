//! Event-time windows through the threaded runtime, at 1, 2 and 3 workers:
//! tumbling counts, hopping sums, sessions, a windowed join, late records
//! dead-lettered, and the same output at every worker count.

use bytes::Bytes;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use verity_core::window::{Count, Sum, WindowResult, WindowSpec};
use verity_core::{
    run, Dataflow, DeadLetterSpec, Either, Line, Outputs, Reject, RunConfig, RunSummary, SinkSpec,
    SourceSpec, Stream, Wire, WireError,
};

/// A `<key> <event time ms> <value>` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Event {
    key: u64,
    at_ms: u64,
    value: i64,
}

impl Wire for Event {
    fn encode(&self, out: &mut Vec<u8>) {
        self.key.encode(out);
        self.at_ms.encode(out);
        self.value.encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(Event {
            key: u64::decode(input)?,
            at_ms: u64::decode(input)?,
            value: i64::decode(input)?,
        })
    }
}

fn parse(line: Line) -> Result<Event, Reject> {
    let text = line.text()?;
    let mut fields = text.split(' ');
    let mut next = || {
        fields
            .next()
            .ok_or_else(|| Reject::new("expected `<key> <ms> <value>`"))
    };
    let bad = |_| Reject::new("not a number");
    Ok(Event {
        key: next()?.parse().map_err(bad)?,
        at_ms: next()?.parse().map_err(bad)?,
        value: next()?.parse().map_err(|_| Reject::new("not a number"))?,
    })
}

fn events(name: &str, input: &str) -> Stream<Event> {
    Stream::from_source(SourceSpec::memory(name, Bytes::copy_from_slice(input.as_bytes()))).try_map(parse)
}

fn format<T: std::fmt::Debug>(result: &WindowResult<u64, T>, buf: &mut Vec<u8>) {
    let WindowResult {
        key,
        start_ms,
        end_ms,
        value,
    } = result;
    buf.extend_from_slice(format!("{key} [{start_ms},{end_ms}) {value:?}").as_bytes());
}

/// The flow's sorted output lines and dead letters, and its summary, at
/// `workers` workers.
fn run_at<K, V, S, O>(flow: Dataflow<K, V, S, O>, workers: usize) -> (Vec<String>, Vec<String>, RunSummary)
where
    K: verity_core::Key + verity_core::Wire,
    V: verity_core::Wire + Send + 'static,
    S: verity_core::State,
    O: 'static,
{
    let dir = tempfile::tempdir().unwrap();
    let config = RunConfig {
        workers,
        pin_cores: false,
        progress: false,
        ..RunConfig::default()
    };
    let outputs = Outputs {
        sink: SinkSpec::File(dir.path().join("out")),
        dead_letter: DeadLetterSpec::File(dir.path().join("dead")),
    };
    let summary = run(flow, &config, &outputs, Arc::new(AtomicBool::new(false))).expect("the run succeeds");
    let read = |name: &str| {
        let mut lines: Vec<String> = std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    };
    (read("out"), read("dead"), summary)
}

const INPUT: &str = "\
1 1000 5
2 1500 7
1 4000 1
1 9999 2
2 10000 3
1 2000 4
1 25000 6
1 12000 8
2 31000 1
";

#[test]
fn tumbling_counts_close_at_the_watermark_and_a_late_record_is_dead_lettered() {
    for workers in [1, 2, 3] {
        // Out of order by up to 10 s: `1 12000` comes after 25000 (13 s) and is late.
        let flow = events("events", INPUT)
            .key_by(|e: &Event| e.key)
            .event_time(|e: &Event| e.at_ms, 10_000)
            .window(WindowSpec::tumbling(10_000), Count)
            .sink(format);
        let (out, dead, summary) = run_at(flow, workers);
        assert_eq!(
            out,
            [
                "1 [0,10000) 4",
                "1 [20000,30000) 1",
                "2 [0,10000) 1",
                "2 [10000,20000) 1",
                "2 [30000,40000) 1",
            ],
            "at {workers} workers"
        );
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert!(
            dead[0].starts_with("events:8: late: event time 12000 ms"),
            "{dead:?}"
        );
        assert_eq!((summary.dead_lettered, summary.late), (1, 1));
    }
}

#[test]
fn allowed_lateness_keeps_a_window_open_for_a_late_record() {
    let flow = events("events", INPUT)
        .key_by(|e: &Event| e.key)
        .event_time(|e: &Event| e.at_ms, 10_000)
        .window(
            WindowSpec::tumbling(10_000).allowed_lateness_ms(5_000),
            Sum(|e: &Event| e.value),
        )
        .sink(format);
    let (out, dead, _) = run_at(flow, 2);
    assert!(dead.is_empty(), "{dead:?}");
    assert!(out.contains(&"1 [10000,20000) 8".to_string()), "{out:?}");
}

#[test]
fn hopping_sums_put_a_record_in_every_window_it_falls_in() {
    let flow = events("events", "7 1000 1\n7 6000 10\n7 12000 100\n")
        .key_by(|e: &Event| e.key)
        .event_time(|e: &Event| e.at_ms, 0)
        .window(WindowSpec::hopping(10_000, 5_000), Sum(|e: &Event| e.value))
        .sink(format);
    let (out, _, _) = run_at(flow, 2);
    assert_eq!(
        out,
        ["7 [0,10000) 11", "7 [10000,20000) 100", "7 [5000,15000) 110"],
        "sorted as text"
    );
}

#[test]
fn sessions_merge_records_less_than_a_gap_apart() {
    // Gap 1 s: 0, 500, 1500 (touching 1500 = 500 + 1000) are one session; 5000 another;
    // 3000 arrives late by order but within the delay and opens its own.
    let flow = events("events", "3 0 1\n3 1500 1\n3 500 1\n3 5000 1\n3 3000 1\n")
        .key_by(|e: &Event| e.key)
        .event_time(|e: &Event| e.at_ms, 3_000)
        .window(WindowSpec::session(1_000), Count)
        .sink(format);
    let (out, _, _) = run_at(flow, 3);
    assert_eq!(out, ["3 [0,2500) 3", "3 [3000,4000) 1", "3 [5000,6000) 1"]);
}

#[test]
fn a_windowed_join_pairs_both_sides_of_a_key_and_window() {
    for workers in [1, 2] {
        let left = events("left", "1 100 10\n1 200 11\n2 300 20\n1 10500 12\n")
            .key_by(|e: &Event| e.key)
            .event_time(|e: &Event| e.at_ms, 1_000);
        let right = events("right", "1 150 90\n2 9000 91\n3 100 92\n1 10100 93\n")
            .key_by(|e: &Event| e.key)
            .event_time(|e: &Event| e.at_ms, 1_000);
        let flow = left
            .join(right)
            .window_join(WindowSpec::tumbling(10_000), |a: &Event, b: &Event| {
                (a.value, b.value)
            })
            // No idle rule: the output must not depend on a stalled thread.
            .idle_timeout_ms(None)
            .sink(format);
        let (out, _, _) = run_at(flow, workers);
        assert_eq!(
            out,
            [
                "1 [0,10000) (10, 90)",
                "1 [0,10000) (11, 90)",
                "1 [10000,20000) (12, 93)",
                "2 [0,10000) (20, 91)",
            ],
            "at {workers} workers"
        );
    }
}

#[test]
fn a_custom_step_sets_event_timers_that_fire_once_the_watermark_passes_them() {
    let flow = events("events", "2 100 0\n1 100 0\n1 50 0\n3 900 0\n")
        .key_by(|e: &Event| e.key)
        .event_time(|e: &Event| e.at_ms, 1_000)
        .stateful(|seen: &mut u64, _: &u64, msg, out| {
            *seen += 1;
            out.set_event_timer(msg.data.at_ms + 10);
        })
        .on_event_timer(|seen: &mut u64, key: &u64, at_ms, out| {
            out.emit(format!(
                "{at_ms} {key} seen {seen} watermark {:?}",
                out.watermark_ms()
            ))
        })
        .sink(|line: &String, buf| buf.extend_from_slice(line.as_bytes()));
    let (out, _, _) = run_at(flow, 1);
    let end = u64::MAX;
    assert_eq!(
        out,
        [
            format!("110 1 seen 2 watermark Some({end})"),
            format!("110 2 seen 1 watermark Some({end})"),
            format!("60 1 seen 2 watermark Some({end})"),
            format!("910 3 seen 1 watermark Some({end})"),
        ]
    );
}

#[test]
fn a_join_input_without_event_time_is_refused_at_build_time() {
    let refused = std::panic::catch_unwind(|| {
        let left = events("left", "")
            .key_by(|e: &Event| e.key)
            .event_time(|e: &Event| e.at_ms, 0);
        let right = events("right", "").key_by(|e: &Event| e.key);
        left.join(right)
            .stateful(|_: &mut u64, _: &u64, _, _: &mut verity_core::Output<'_, u64>| {})
            .sink(|_, _| {})
    });
    let message = *refused.err().expect("refused").downcast::<String>().unwrap();
    assert!(
        message.contains("1 of the step's 2 inputs declare event time"),
        "{message}"
    );
    let _: Option<Either<u8, u8>> = None;
}
