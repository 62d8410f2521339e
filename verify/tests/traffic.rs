//! Traffic recordings end to end on loopback: `verity send --record` into a
//! TCP source captures exactly the input with its arrival times, and
//! `verity send --replay` delivers exactly the recorded input, at its pace
//! (checked only as a lower bound on time), faster with `--speed`, across
//! cut connections; bad recordings are refused with where they go wrong.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use verity_core::connector::{sources::TcpListenSource, Chunk, Pull, SourceConnector, SourceReader};
use verity_core::source::ChunkData;
use verity_verify::harness::{
    self,
    traffic::{self, RecordingWriter, FRAME_HEADER_BYTES, HEADER_BYTES},
};
use verity_verify::proxy::{Proxy, ProxyConfig};

const PATIENCE: Duration = Duration::from_secs(60);

fn numbered_lines(from: u64, count: u64) -> Vec<u8> {
    (from..from + count)
        .flat_map(|i| format!("line {i:07}\n").into_bytes())
        .collect()
}

/// A TCP source on a free port: its address and reader.
fn source() -> (String, Box<dyn SourceReader>) {
    let mut source = TcpListenSource::new("127.0.0.1:0");
    let reader = source.open("tcp", 0, None).unwrap();
    (source.bound.unwrap().to_string(), reader)
}

/// Reads `reader` to its end (bounded); returns the bytes.
fn read_all(reader: &mut dyn SourceReader) -> Vec<u8> {
    let started = Instant::now();
    let mut all = Vec::new();
    loop {
        assert!(started.elapsed() < PATIENCE, "the source never ended");
        match reader.next_chunk().unwrap() {
            Pull::Chunk(Chunk {
                data: ChunkData::Lines(lines),
                ..
            }) => all.extend_from_slice(&lines),
            Pull::Chunk(_) => panic!("no oversized lines here"),
            Pull::Idle => {}
            Pull::End => return all,
        }
    }
}

/// A recording's frames, each checked.
fn frames_of(path: &Path) -> Vec<(u64, Vec<u8>)> {
    let mut reader = traffic::open(path).unwrap();
    let mut frames = Vec::new();
    let mut bytes = Vec::new();
    while let Some(arrival_us) = reader.next_frame(&mut bytes).unwrap() {
        frames.push((arrival_us, bytes.clone()));
    }
    frames
}

fn joined(frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|(_, bytes)| bytes.iter().copied())
        .collect()
}

fn assert_never_back(frames: &[(u64, Vec<u8>)]) {
    assert!(
        frames.windows(2).all(|pair| pair[0].0 <= pair[1].0),
        "arrival times go back"
    );
}

fn write_recording(dir: &Path, name: &str, frames: &[(u64, Vec<u8>)]) -> PathBuf {
    let path = dir.join(name);
    let mut writer = RecordingWriter::new(std::fs::File::create(&path).unwrap()).unwrap();
    for (arrival_us, bytes) in frames {
        writer.frame(*arrival_us, bytes).unwrap();
    }
    path
}

/// Replays `recording` at `speed` into a new source; returns what the
/// source read and the report.
fn replay_into_a_source(recording: &Path, speed: f64) -> (Vec<u8>, harness::SendReport) {
    let (to, mut reader) = source();
    let recording = recording.to_path_buf();
    let sender = std::thread::spawn(move || harness::replay(&to, &recording, speed));
    let received = read_all(&mut *reader);
    (received, sender.join().unwrap().unwrap())
}

#[test]
fn a_file_sent_with_record_is_recorded_exactly_and_its_replay_delivers_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = numbered_lines(1, 100_000); // 1.3 MB: several read buffers
    let input = dir.path().join("input.txt");
    std::fs::write(&input, &data).unwrap();
    let recording = dir.path().join("traffic.rec");
    let (to, mut reader) = source();
    let sender = {
        let (input, recording) = (input.clone(), recording.clone());
        std::thread::spawn(move || harness::send_and_record(&to, &input, None, 1024, &recording))
    };
    assert_eq!(read_all(&mut *reader), data);
    let (report, recorded) = sender.join().unwrap().unwrap();
    assert_eq!(report.bytes, data.len() as u64);
    let frames = frames_of(&recording);
    assert_eq!(joined(&frames), data, "the recording holds the input");
    assert_never_back(&frames);
    assert_eq!(recorded.frames, frames.len() as u64);
    assert_eq!(recorded.bytes, data.len() as u64);
    let (replayed, report) = replay_into_a_source(&recording, 1000.0);
    assert_eq!(replayed, data, "the replay delivers the input");
    assert_eq!(report.lines, 100_000);
}

#[test]
fn a_piped_input_is_recorded_with_its_arrival_times_and_replayed_at_their_pace() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("no mkfifo here: skipped");
        return;
    }
    let pieces = [
        numbered_lines(1, 100),
        numbered_lines(101, 100),
        numbered_lines(201, 100),
    ];
    let gap = Duration::from_millis(150);
    let writer = {
        let (fifo, pieces) = (fifo.clone(), pieces.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut pipe = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            for (i, piece) in pieces.iter().enumerate() {
                if i > 0 {
                    std::thread::sleep(gap);
                }
                pipe.write_all(piece).unwrap();
            }
        })
    };
    let recording = dir.path().join("traffic.rec");
    let (to, mut reader) = source();
    let sender = {
        let (fifo, recording) = (fifo.clone(), recording.clone());
        std::thread::spawn(move || harness::send_and_record(&to, &fifo, None, 1024, &recording))
    };
    let data = pieces.concat();
    assert_eq!(read_all(&mut *reader), data);
    writer.join().unwrap();
    sender.join().unwrap().unwrap();
    let frames = frames_of(&recording);
    assert_eq!(joined(&frames), data);
    assert_never_back(&frames);
    // The recording's clock starts before the pipe opens, so the last piece,
    // written two gaps after the first, arrives at least that late.
    let last_arrival_us = frames.last().unwrap().0;
    assert!(
        last_arrival_us >= 300_000,
        "the last piece at {last_arrival_us} µs"
    );
    let started = Instant::now();
    let (replayed, _) = replay_into_a_source(&recording, 1.0);
    assert_eq!(replayed, data);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "a replay at speed 1 waits for the recorded times: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_replay_at_speed_1000_skips_through_long_gaps() {
    let dir = tempfile::tempdir().unwrap();
    // 400 s of traffic at speed 1: at 1000, 0.4 s; ignoring the speed would
    // outlast the source's patience.
    let frames: Vec<(u64, Vec<u8>)> = (0..5)
        .map(|i| (i * 100_000_000, numbered_lines(i * 10 + 1, 10)))
        .collect();
    let recording = write_recording(dir.path(), "gaps.rec", &frames);
    let (replayed, report) = replay_into_a_source(&recording, 1000.0);
    assert_eq!(replayed, joined(&frames));
    assert_eq!(report.lines, 50);
}

#[test]
fn a_replay_survives_cut_connections() {
    let dir = tempfile::tempdir().unwrap();
    // 40 frames 10 ms apart, 0.4 s of sending: cuts land while it sends.
    let frames: Vec<(u64, Vec<u8>)> = (0..40)
        .map(|i| (i * 10_000, numbered_lines(i * 2000 + 1, 2000)))
        .collect();
    let recording = write_recording(dir.path(), "cut.rec", &frames);
    let (upstream, mut reader) = source();
    let proxy = Proxy::start(ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        to: upstream,
        seed: 11,
        drop_conn_every_ms: Some(80),
        delay_ms: None,
        corrupt_rate: 0.0,
    })
    .unwrap();
    let to = proxy.local_addr().to_string();
    let sender = std::thread::spawn(move || harness::replay(&to, &recording, 1.0));
    assert_eq!(
        read_all(&mut *reader),
        joined(&frames),
        "each line once, in order"
    );
    let report = sender.join().unwrap().unwrap();
    assert_eq!(report.lines, 80_000);
    proxy.stop();
}

#[test]
fn an_empty_recording_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let recording = write_recording(dir.path(), "empty.rec", &[]);
    let (replayed, report) = replay_into_a_source(&recording, 1.0);
    assert!(replayed.is_empty());
    assert_eq!((report.lines, report.bytes), (0, 0));
}

/// The error replaying `recording` gives (nothing listens at the address:
/// a bad recording is refused before connecting).
fn replay_error(recording: &Path, speed: f64) -> String {
    harness::replay("127.0.0.1:9", recording, speed)
        .expect_err("refused")
        .to_string()
}

#[test]
fn foreign_corrupt_and_truncated_recordings_are_refused_with_where() {
    let dir = tempfile::tempdir().unwrap();
    let frames: Vec<(u64, Vec<u8>)> = (0..3).map(|i| (i * 1000, numbered_lines(i * 3 + 1, 3))).collect();
    let good = std::fs::read(write_recording(dir.path(), "good.rec", &frames)).unwrap();
    let frame_bytes = FRAME_HEADER_BYTES + frames[0].1.len();
    let second = HEADER_BYTES + frame_bytes;
    let third = second + frame_bytes;
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };

    let foreign = write("lines.txt", &numbered_lines(1, 10));
    assert_eq!(
        replay_error(&foreign, 1.0),
        format!(
            "{} is not a verity traffic recording (it does not start with \"VTRAFFIC\" and a version)",
            foreign.display()
        )
    );

    let mut later = good.clone();
    later[8] = 9;
    let later = write("later.rec", &later);
    assert!(
        replay_error(&later, 1.0)
            .ends_with("is a traffic recording of format version 9; this verity reads version 1"),
        "{}",
        replay_error(&later, 1.0)
    );

    let mut corrupt = good.clone();
    corrupt[second + FRAME_HEADER_BYTES + 3] ^= 0x20;
    let corrupt = write("corrupt.rec", &corrupt);
    assert_eq!(
        replay_error(&corrupt, 1.0),
        format!(
            "recording {}: frame 2 at byte {second}: its checksum does not match: the recording is corrupt",
            corrupt.display()
        )
    );

    let truncated = write("truncated.rec", &good[..third + FRAME_HEADER_BYTES + 5]);
    assert_eq!(
        replay_error(&truncated, 1.0),
        format!(
            "recording {}: frame 3 at byte {third}: the file ends {} bytes into this {frame_bytes}-byte \
             frame: the recording is truncated (was its sender killed while writing it?)",
            truncated.display(),
            FRAME_HEADER_BYTES + 5
        )
    );

    let missing = dir.path().join("missing.rec");
    assert!(
        replay_error(&missing, 1.0).starts_with(&format!("cannot read the recording {}", missing.display())),
        "{}",
        replay_error(&missing, 1.0)
    );
}

#[test]
fn a_replay_speed_must_be_above_zero() {
    let dir = tempfile::tempdir().unwrap();
    let recording = write_recording(dir.path(), "one.rec", &[(0, b"a\n".to_vec())]);
    for speed in [0.0, -1.0, f64::NAN] {
        let e = replay_error(&recording, speed);
        assert!(e.starts_with("a replay speed must be above 0"), "{e}");
    }
}
