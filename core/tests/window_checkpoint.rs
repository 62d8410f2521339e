//! Window and event-timer state through a checkpoint: a shard snapshots in
//! the middle of its windows (some open, their timers pending, the
//! watermark part way), a fresh shard restores from the snapshot and takes
//! the rest of the input, and together they write exactly what one
//! uninterrupted shard writes.

use bytes::Bytes;
use verity_core::connector::Position;
use verity_core::shard::{CheckpointPart, Effect, ShardCore, ShardLimits};
use verity_core::source::{ChunkData, SourceCut, SourceEvent};
use verity_core::window::{Count, WindowResult, WindowSpec, Windows};
use verity_core::{Line, Reject, SourceSpec, Stream};

type Core = ShardCore<u64, u64, Windows<u64>, WindowResult<u64, u64>>;

/// `<key> <event ms>` lines; 100 ms tumbling counts, 50 ms delay.
fn core() -> Core {
    let flow = Stream::from_source(SourceSpec::memory("m", Bytes::new()))
        .try_map(|line: Line| {
            let text = line.text()?;
            let (key, at) = text.split_once(' ').ok_or_else(|| Reject::new("two fields"))?;
            let parse = |f: &str| f.parse::<u64>().map_err(|_| Reject::new("not a u64"));
            Ok((parse(key)?, parse(at)?))
        })
        .key_split(|(key, at)| (key, at))
        .event_time(|at: &u64| *at, 50)
        .window(WindowSpec::tumbling(100), Count)
        .sink(|w: &WindowResult<u64, u64>, buf| {
            buf.extend_from_slice(format!("{} {} {}", w.key, w.start_ms, w.value).as_bytes())
        });
    ShardCore::build_range(&flow.logic, 1, 0..1, ShardLimits::default())
        .pop()
        .unwrap()
}

const CHUNKS: [&str; 4] = [
    "1 10\n2 20\n1 90\n",
    "1 120\n2 60\n3 150\n",
    "1 210\n1 170\n2 205\n",
    "3 260\n1 400\n2 380\n",
];

fn chunk(index: usize, epoch: u64) -> SourceEvent {
    SourceEvent::Chunk {
        source: 0,
        index: index as u64,
        first_line: 1 + 3 * index as u64,
        data: ChunkData::Lines(Bytes::from_static(CHUNKS[index].as_bytes())),
        partition: 0,
        position: Position::Text {
            bytes: 0,
            lines: 3 * index as u64,
        },
        epoch,
    }
}

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
            Effect::DeadLetter(letter) => lines.push(format!("late {}", letter.id)),
            other => panic!("unexpected {other:?}"),
        }
    }
    (lines, parts)
}

#[test]
fn a_restore_mid_window_writes_what_an_uninterrupted_run_writes() {
    let mut whole = core();
    for index in 0..CHUNKS.len() {
        whole.on_source_event(chunk(index, 0));
    }
    whole.on_source_event(SourceEvent::End {
        source: 0,
        chunks: CHUNKS.len() as u64,
    });
    assert!(whole.is_finished());
    let (expected, _) = drain(&mut whole);
    assert!(
        expected.contains(&"late 0:5.0".to_string()),
        "60 is late after 120: {expected:?}"
    );

    // Checkpoint 1 cut after chunk 1: [0, 100) closed at watermark 100,
    // key 1's and key 3's [100, 200) open, their timers pending.
    let mut first = core();
    first.on_source_event(chunk(0, 0));
    first.on_source_event(chunk(1, 0));
    let (mut lines, _) = drain(&mut first);
    assert_eq!(lines, ["late 0:5.0", "1 0 2", "2 0 1"]);
    let cut = SourceCut {
        next_chunk: 2,
        next_line: 7,
        positions: vec![(0, Position::Text { bytes: 0, lines: 6 })],
    };
    first.on_source_event(SourceEvent::Barrier {
        source: 0,
        checkpoint: 1,
        cut,
    });
    assert_eq!(first.event_timers_pending(), 2);
    assert_eq!(first.watermark_ms(), Some(100));
    // Chunk 2 applies after the snapshot; the crash loses what it did.
    first.on_source_event(chunk(2, 1));
    let (_, parts) = drain(&mut first);
    assert_eq!(parts.len(), 1);

    let mut restored = core();
    restored.restore(&parts).unwrap();
    assert_eq!(restored.watermark_ms(), Some(100), "the watermark is restored");
    assert_eq!(restored.event_timers_pending(), 2, "and the windows' timers");
    for index in 2..CHUNKS.len() {
        restored.on_source_event(chunk(index, 1));
    }
    restored.on_source_event(SourceEvent::End {
        source: 0,
        chunks: CHUNKS.len() as u64,
    });
    assert!(restored.is_finished());
    lines.extend(drain(&mut restored).0);
    assert_eq!(lines, expected);
}
