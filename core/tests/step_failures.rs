//! A keyed step that fails a record (`Output::fail`) or panics on one, on
//! the threaded runtime with the audit log on: a failed record is
//! dead-lettered and the run goes on; a panic fails the run with the input
//! named; either way the audit log keeps the input's id, its key and the
//! state the step met.

use bytes::Bytes;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use verity_audit::query::Log;
use verity_audit::record::{Record, StepFailed};
use verity_audit::WriterLimits;
use verity_core::{
    run, AuditSettings, Dataflow, DeadLetterSpec, Line, Outputs, Reject, RunConfig, RunError, SinkSpec,
    SourceSpec, Stream,
};
use verity_state::storage::DirStorage;

/// `<key> <value>` lines: each key's running sum, as `<key> <sum>`. A sum
/// that would overflow u64 fails the record; the value `0` panics (a bug
/// planted in the step).
fn running_sums(input: &[u8]) -> Dataflow<u64, u64, u64, (u64, u64)> {
    Stream::from_source(SourceSpec::memory("numbers", Bytes::copy_from_slice(input)))
        .try_map(|line: Line| {
            let text = line.text()?;
            let (key, value) = text
                .split_once(' ')
                .ok_or_else(|| Reject::new("expected `<key> <value>`"))?;
            let parse = |field: &str| field.parse::<u64>().map_err(|_| Reject::new("not a u64"));
            Ok((parse(key)?, parse(value)?))
        })
        .key_split(|(key, value)| (key, value))
        .stateful(|sum: &mut u64, key: &u64, msg, out| {
            assert!(msg.data != 0, "a zero reached the step");
            match sum.checked_add(msg.data) {
                Some(next) => {
                    *sum = next;
                    out.emit((*key, next));
                }
                None => out.fail(format!("{} + {} overflows u64", sum, msg.data)),
            }
        })
        .sink(|(key, sum), buf| buf.extend_from_slice(format!("{key} {sum}").as_bytes()))
}

struct Ran {
    result: Result<verity_core::RunSummary, RunError>,
    output: String,
    dead_letters: String,
    failures: Vec<StepFailed>,
    /// What `verity audit errors` prints.
    errors: String,
}

fn run_audited(input: &str) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let audit_dir = dir.path().join("audit");
    let config = RunConfig {
        workers: 2,
        pin_cores: false,
        progress: false,
        audit: Some(AuditSettings {
            dir: audit_dir.clone(),
            limits: WriterLimits::default(),
            command_line: vec!["step_failures".into()],
            incarnation: 1,
        }),
        ..RunConfig::default()
    };
    let outputs = Outputs {
        sink: SinkSpec::File(dir.path().join("out")),
        dead_letter: DeadLetterSpec::File(dir.path().join("dead")),
    };
    let result = run(
        running_sums(input.as_bytes()),
        &config,
        &outputs,
        Arc::new(AtomicBool::new(false)),
    );
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let (log, report) = Log::read(&mut DirStorage::open(&audit_dir).unwrap()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let failures = log
        .records()
        .filter_map(|record| match record {
            Record::StepFailed(f) => Some(f.clone()),
            _ => None,
        })
        .collect();
    Ran {
        result,
        output: read("out"),
        dead_letters: read("dead"),
        failures,
        errors: log.errors().1,
    }
}

#[test]
fn a_failed_record_is_dead_lettered_with_its_key_and_state_in_the_audit_log_and_the_run_goes_on() {
    let max = u64::MAX;
    let ran = run_audited(&format!("7 5\n7 {max}\n7 1\n8 2\n"));
    let summary = ran.result.expect("the run goes on");
    assert_eq!(summary.dead_lettered, 1);
    let mut lines: Vec<&str> = ran.output.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        ["7 5", "7 6", "8 2"],
        "the failed record left the state as it was"
    );
    assert!(
        ran.dead_letters
            .contains(&format!("the keyed step failed it: 5 + {max} overflows u64")),
        "{}",
        ran.dead_letters
    );
    let [failure] = &ran.failures[..] else {
        panic!("{:?}", ran.failures)
    };
    assert!(!failure.panicked);
    assert_eq!(
        (failure.id.producer, failure.id.seq),
        (0, 2),
        "line 2 of source 0"
    );
    assert_eq!(failure.key, 7u64.to_le_bytes());
    assert_eq!(failure.state, 5u64.to_le_bytes(), "the state the step met");
    assert!(ran.errors.contains("input 0:2.0: at "), "{}", ran.errors);
    assert!(ran.errors.contains("the keyed step on shard"), "{}", ran.errors);
}

#[test]
fn a_panic_in_the_step_fails_the_run_naming_the_input_and_the_audit_log_keeps_its_key_and_state() {
    let ran = run_audited("3 4\n3 0\n3 1\n");
    let error = ran.result.expect_err("a panicked step fails the run").to_string();
    assert!(
        error.contains("the keyed step panicked on input 0:2.0") && error.contains("a zero reached the step"),
        "{error}"
    );
    let [failure] = &ran.failures[..] else {
        panic!("{:?}", ran.failures)
    };
    assert!(failure.panicked);
    assert_eq!(failure.reason, "a zero reached the step");
    assert_eq!(
        (failure.key.clone(), failure.state.clone()),
        (3u64.to_le_bytes().to_vec(), 4u64.to_le_bytes().to_vec())
    );
    assert!(
        !ran.output.contains("3 1"),
        "nothing after the panic: {}",
        ran.output
    );
}
