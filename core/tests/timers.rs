//! Processing-time timers of the keyed step, on one sans-IO shard with a
//! manual clock: they fire only once the clock reaches them, as one unit
//! with one reading, in (time, key) order; a handler's output derives from
//! the input that set the timer; timers set in a handler wait for the next
//! unit; they survive a checkpoint's snapshot and restore; pending ones do
//! not fire after the end of input; a handler's panic stops the shard.

use bytes::Bytes;
use std::sync::Arc;
use verity_core::connector::Position;
use verity_core::shard::{CheckpointPart, Effect, ShardCore, ShardLimits};
use verity_core::source::{ChunkData, SourceCut, SourceEvent};
use verity_core::{Clock, Line, ManualClock, MsgId, Reject, SourceSpec, Stream};

type Core = ShardCore<u64, u64, u64, String>;

/// `<key> <delay_us>` lines: each key's count of records; each record sets
/// a timer `delay_us` after the step's clock reading. The handler emits
/// `<key> fired-at-<t> set-for-<at> count-<n> from-<input>`, and a key whose
/// count is 3 re-arms at the same instant (which must wait for the next
/// unit). The value 999 makes the handler panic.
fn core(clock: &ManualClock) -> Core {
    let flow = Stream::from_source(SourceSpec::memory("m", Bytes::new()))
        .try_map(|line: Line| {
            let text = line.text()?;
            let (key, delay) = text.split_once(' ').ok_or_else(|| Reject::new("two fields"))?;
            let parse = |f: &str| f.parse::<u64>().map_err(|_| Reject::new("not a u64"));
            Ok((parse(key)?, parse(delay)?))
        })
        .key_split(|(key, delay)| (key, delay))
        .stateful(|count: &mut u64, _key: &u64, msg, out| {
            *count += 1;
            let now = out.now_us();
            out.set_timer(now + msg.data);
        })
        .on_timer(|count: &mut u64, key: &u64, at_us, out| {
            assert!(at_us != 1999, "a planted panic in the handler");
            let now = out.now_us();
            out.emit(format!(
                "{key} fired-at-{now} set-for-{at_us} count-{count} from-{}",
                out.input_id()
            ));
            if *count == 3 {
                *count = 4;
                out.derive_from(MsgId::new(7, 7));
                out.set_timer(now);
            }
        })
        .sink(|line: &String, buf| buf.extend_from_slice(line.as_bytes()));
    let mut cores = ShardCore::build_range(&flow.logic, 1, 0..1, ShardLimits::default());
    let mut core = cores.pop().unwrap();
    core.set_clock(Arc::new(clock.clone()) as Arc<dyn Clock>);
    core
}

fn chunk(index: u64, first_line: u64, text: &str, epoch: u64) -> SourceEvent {
    SourceEvent::Chunk {
        source: 0,
        index,
        first_line,
        data: ChunkData::Lines(Bytes::copy_from_slice(text.as_bytes())),
        partition: 0,
        position: Position::Text {
            bytes: 0,
            lines: first_line,
        },
        epoch,
    }
}

/// Output lines, checkpoint parts and dead letters so far.
fn drain(core: &mut Core) -> (Vec<String>, Vec<CheckpointPart>) {
    core.flush();
    let (mut lines, mut parts) = (Vec::new(), Vec::new());
    for effect in core.drain_effects() {
        match effect {
            Effect::Output(batch) => lines.extend(
                String::from_utf8(batch.lines)
                    .unwrap()
                    .lines()
                    .map(str::to_string),
            ),
            Effect::Checkpoint(part) => parts.push(part),
            other => panic!("unexpected {other:?}"),
        }
    }
    (lines, parts)
}

#[test]
fn timers_fire_when_the_clock_reaches_them_in_time_then_key_order() {
    let clock = ManualClock::default();
    clock.advance_us(1000);
    let mut core = core(&clock);
    core.on_source_event(chunk(0, 1, "2 500\n1 500\n3 800\n", 0));
    assert_eq!(core.timers_pending(), 3);
    assert_eq!(core.timer_wait_us(), Some(500));
    assert!(!core.fire_due_timers(), "nothing is due yet");
    assert_eq!(drain(&mut core).0, Vec::<String>::new());
    clock.advance_us(600);
    assert_eq!(core.timer_wait_us(), Some(0));
    assert!(core.fire_due_timers());
    assert_eq!(
        drain(&mut core).0,
        vec![
            "1 fired-at-1600 set-for-1500 count-1 from-0:2.0",
            "2 fired-at-1600 set-for-1500 count-1 from-0:1.0",
        ],
        "both due timers in one unit, with one reading, in key order"
    );
    assert_eq!(core.timer_wait_us(), Some(200));
    clock.advance_us(200);
    assert!(core.fire_due_timers());
    assert_eq!(
        drain(&mut core).0,
        vec!["3 fired-at-1800 set-for-1800 count-1 from-0:3.0"]
    );
    assert_eq!((core.timers_pending(), core.timer_wait_us()), (0, None));
}

#[test]
fn a_timer_a_handler_sets_waits_for_the_next_unit_and_derives_from_what_it_names() {
    let clock = ManualClock::default();
    let mut core = core(&clock);
    core.on_source_event(chunk(0, 1, "5 10\n5 10\n5 10\n", 0));
    assert_eq!(core.timers_pending(), 1, "one timer per key and instant");
    clock.advance_us(10);
    assert!(core.fire_due_timers());
    assert_eq!(
        drain(&mut core).0,
        vec!["5 fired-at-10 set-for-10 count-3 from-0:1.0"]
    );
    assert_eq!(core.timers_pending(), 1, "re-armed at the same instant");
    assert!(core.fire_due_timers(), "in a unit of its own");
    assert_eq!(
        drain(&mut core).0,
        vec!["5 fired-at-10 set-for-10 count-4 from-7:7.0"]
    );
}

#[test]
fn timers_survive_a_snapshot_and_pending_ones_do_not_fire_after_the_end() {
    let clock = ManualClock::default();
    let mut core = core(&clock);
    core.on_source_event(chunk(0, 1, "1 100\n2 300\n", 0));
    let cut = SourceCut {
        next_chunk: 1,
        next_line: 3,
        positions: vec![(0, Position::Text { bytes: 12, lines: 2 })],
    };
    core.on_source_event(SourceEvent::Barrier {
        source: 0,
        checkpoint: 1,
        cut,
    });
    core.on_source_event(chunk(1, 3, "3 200\n", 1));
    let (lines, parts) = drain(&mut core);
    assert!(lines.is_empty());
    assert_eq!(parts.len(), 1, "checkpoint 1's part");

    // A fresh shard from the part: keys 1 and 2's timers, not key 3's.
    let mut restored = self::core(&clock);
    restored.restore(&parts).unwrap();
    assert_eq!(restored.timers_pending(), 2);
    clock.advance_us(1000);
    assert!(restored.fire_due_timers());
    assert_eq!(
        drain(&mut restored).0,
        vec![
            "1 fired-at-1000 set-for-100 count-1 from-0:1.0",
            "2 fired-at-1000 set-for-300 count-1 from-0:2.0",
        ]
    );

    // The original shard ends its input with key 3's timer pending.
    core.on_source_event(SourceEvent::End { source: 0, chunks: 2 });
    assert!(core.is_finished());
    assert!(!core.fire_due_timers(), "a finished shard fires nothing");
    assert_eq!(core.timer_wait_us(), None);
}

#[test]
fn a_panicking_timer_handler_stops_the_shard_naming_the_input_that_set_it() {
    let clock = ManualClock::default();
    let mut core = core(&clock);
    core.on_source_event(chunk(0, 1, "4 1999\n", 0));
    clock.advance_us(5000);
    assert!(core.fire_due_timers());
    let why = core.panicked().expect("the handler panicked");
    assert!(
        why.starts_with("the timer handler panicked on input 0:1.0 (shard 0): a planted panic"),
        "{why}"
    );
}

#[test]
fn a_replay_fires_timer_units_recorded_after_its_last_input_before_it_ends() {
    use std::collections::VecDeque;
    use verity_core::audit::UnitSource;
    // The recorded run applied chunk 0 at 100 µs, then, while it waited
    // for its input's end, fired key 1's timer at 200 µs and key 2's at
    // 400 µs: two timer units that look alike in the schedule.
    let units = VecDeque::from([
        UnitSource {
            source: 0,
            from: 0,
            chunk: 0,
            first_seq: 0,
        },
        UnitSource::timers(0, 1),
        UnitSource::timers(0, 1),
    ]);
    let readings = VecDeque::from([Some(100), Some(200), Some(400)]);
    let clock = ManualClock::default();
    let mut core = core(&clock);
    core.follow_schedule(units, readings);
    core.on_source_event(chunk(0, 1, "1 50\n2 250\n", 0));
    core.on_source_event(SourceEvent::End { source: 0, chunks: 1 });
    assert!(!core.is_finished(), "the end waits for the recorded timer units");
    assert!(core.fire_due_timers());
    assert!(!core.is_finished());
    assert_eq!(core.schedule_front(), Some(UnitSource::timers(0, 1)));
    assert!(core.fire_due_timers(), "the second, alike, unit fires too");
    assert!(core.is_finished(), "then the shard ends");
    assert_eq!(core.schedule_divergence(), None);
    assert_eq!(
        drain(&mut core).0,
        vec![
            "1 fired-at-200 set-for-150 count-1 from-0:1.0",
            "2 fired-at-400 set-for-350 count-1 from-0:2.0",
        ]
    );
}
