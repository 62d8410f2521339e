//! Traffic recordings: what `verity send --record FILE` took from its input,
//! with arrival times, for `verity send --replay FILE [--speed X]` to send
//! again at the recorded pace (or X times faster), e.g. to rerun a
//! production day in a test environment.
//!
//! The format, version 1 (integers little-endian):
//!
//! ```text
//! header  magic "VTRAFFIC" (8 bytes) | version u32 (= 1)
//! frame*  arrival_us u64 | len u32 | crc32c u32 | bytes [len]
//! ```
//!
//! `arrival_us` counts microseconds from the start of the recording to the
//! moment the sender first took the frame's bytes from its input; it never
//! goes back from one frame to the next. The crc32c covers `arrival_us`,
//! `len` and the bytes. The frames' bytes, joined, are the input. There is
//! no end marker (a recording is written as the input streams by, and may be
//! cut short on purpose): a recording ends after its last whole frame, and a
//! partial frame at the end (a sender killed mid-write) is an error naming
//! where it starts, as is anything else that does not decode.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const MAGIC: [u8; 8] = *b"VTRAFFIC";
pub const VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 12;
pub const FRAME_HEADER_BYTES: usize = 16;
/// A frame's bytes, at most. The sender writes at most its read buffer per
/// frame; a longer length is corruption, refused before anything is
/// allocated for it.
pub const FRAME_BYTES_MAX: usize = 16 << 20;
const BUFFER_BYTES: usize = 1 << 20;

/// Why a recording cannot be read. Each names the file, and a frame's
/// problem names the frame (from 1) and the byte offset where it starts.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot read the recording {file}: {why}")]
    Io { file: String, why: io::Error },
    #[error("{file} is not a verity traffic recording (it does not start with \"VTRAFFIC\" and a version)")]
    NotARecording { file: String },
    #[error(
        "{file} is a traffic recording of format version {version}; this verity reads version {VERSION}"
    )]
    Version { file: String, version: u32 },
    #[error("recording {file}: frame {frame} at byte {offset}: {problem}")]
    Frame {
        file: String,
        frame: u64,
        offset: u64,
        problem: FrameProblem,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameProblem {
    Checksum,
    /// The file ends `have_bytes` into a frame of `frame_bytes` (or into
    /// its header, when the length is unknown).
    Truncated {
        have_bytes: u64,
        frame_bytes: Option<u64>,
    },
    TooLong {
        len: u64,
    },
    TimeGoesBack {
        arrival_us: u64,
        before_us: u64,
    },
}

impl fmt::Display for FrameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameProblem::Checksum => write!(f, "its checksum does not match: the recording is corrupt"),
            FrameProblem::Truncated {
                have_bytes,
                frame_bytes: Some(frame_bytes),
            } => write!(
                f,
                "the file ends {have_bytes} bytes into this {frame_bytes}-byte frame: the recording \
                 is truncated (was its sender killed while writing it?)"
            ),
            FrameProblem::Truncated { have_bytes, .. } => write!(
                f,
                "the file ends {have_bytes} bytes into this frame's {FRAME_HEADER_BYTES}-byte header: \
                 the recording is truncated (was its sender killed while writing it?)"
            ),
            FrameProblem::TooLong { len } => write!(
                f,
                "a length of {len} bytes, over the limit of {FRAME_BYTES_MAX}: the recording is corrupt"
            ),
            FrameProblem::TimeGoesBack {
                arrival_us,
                before_us,
            } => write!(
                f,
                "it arrives at {arrival_us} µs, before the frame before it ({before_us} µs): the \
                 recording is corrupt"
            ),
        }
    }
}

impl From<RecordingError> for io::Error {
    fn from(e: RecordingError) -> io::Error {
        let kind = match &e {
            RecordingError::Io { why, .. } => why.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e.to_string())
    }
}

fn checksum(header: &[u8; FRAME_HEADER_BYTES], bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&header[..12]), bytes)
}

/// Writes a recording: the header at once, then one frame per call.
pub struct RecordingWriter<W: Write> {
    out: W,
    last_arrival_us: u64,
    frames: u64,
    bytes: u64,
}

impl<W: Write> RecordingWriter<W> {
    pub fn new(mut out: W) -> io::Result<RecordingWriter<W>> {
        out.write_all(&MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        Ok(RecordingWriter {
            out,
            last_arrival_us: 0,
            frames: 0,
            bytes: 0,
        })
    }

    /// `bytes` arrived at `arrival_us`, which must not be before the last
    /// frame's. A piece over `FRAME_BYTES_MAX` becomes several frames.
    pub fn frame(&mut self, arrival_us: u64, bytes: &[u8]) -> io::Result<()> {
        assert!(
            arrival_us >= self.last_arrival_us,
            "arrival times never go back ({arrival_us} µs after {} µs)",
            self.last_arrival_us
        );
        if bytes.is_empty() {
            self.write_frame(arrival_us, bytes)?;
        }
        for piece in bytes.chunks(FRAME_BYTES_MAX) {
            self.write_frame(arrival_us, piece)?;
        }
        self.last_arrival_us = arrival_us;
        Ok(())
    }

    fn write_frame(&mut self, arrival_us: u64, piece: &[u8]) -> io::Result<()> {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header[..8].copy_from_slice(&arrival_us.to_le_bytes());
        header[8..12].copy_from_slice(&(piece.len() as u32).to_le_bytes());
        let crc = checksum(&header, piece);
        header[12..].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&header)?;
        self.out.write_all(piece)?;
        self.frames += 1;
        self.bytes += piece.len() as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn summary(&self) -> RecordingSummary {
        RecordingSummary {
            frames: self.frames,
            bytes: self.bytes,
            last_arrival_us: self.last_arrival_us,
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// What a recording holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordingSummary {
    pub frames: u64,
    pub bytes: u64,
    /// The last frame's arrival time (0 without frames).
    pub last_arrival_us: u64,
}

/// Reads a recording frame by frame, checking each.
pub struct RecordingReader<R: Read> {
    /// The file's name, for errors.
    file: String,
    input: R,
    /// The byte offset of the next frame.
    offset: u64,
    /// Frames read so far.
    frames: u64,
    last_arrival_us: u64,
}

/// Opens `path` as a recording (header checked).
pub fn open(path: &Path) -> Result<RecordingReader<BufReader<File>>, RecordingError> {
    let file = path.display().to_string();
    match File::open(path) {
        Ok(opened) => RecordingReader::new(file, BufReader::with_capacity(BUFFER_BYTES, opened)),
        Err(why) => Err(RecordingError::Io { file, why }),
    }
}

/// Reads all of `path`, checking every frame, without keeping it.
pub fn scan(path: &Path) -> Result<RecordingSummary, RecordingError> {
    let mut reader = open(path)?;
    let mut bytes = Vec::new();
    let mut summary = RecordingSummary::default();
    while let Some(arrival_us) = reader.next_frame(&mut bytes)? {
        summary.frames += 1;
        summary.bytes += bytes.len() as u64;
        summary.last_arrival_us = arrival_us;
    }
    Ok(summary)
}

impl<R: Read> RecordingReader<R> {
    /// Reads and checks the header; `file` names the input in errors.
    pub fn new(file: impl Into<String>, mut input: R) -> Result<RecordingReader<R>, RecordingError> {
        let file = file.into();
        let mut header = [0u8; HEADER_BYTES];
        let read = read_full(&mut input, &mut header).map_err(|why| RecordingError::Io {
            file: file.clone(),
            why,
        })?;
        if read < HEADER_BYTES || header[..8] != MAGIC {
            return Err(RecordingError::NotARecording { file });
        }
        let version = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(RecordingError::Version { file, version });
        }
        Ok(RecordingReader {
            file,
            input,
            offset: HEADER_BYTES as u64,
            frames: 0,
            last_arrival_us: 0,
        })
    }

    /// The next frame: its arrival time, its bytes in `bytes` (reused, so
    /// nothing is allocated per frame once it is large enough). `None` at
    /// the end of the recording.
    pub fn next_frame(&mut self, bytes: &mut Vec<u8>) -> Result<Option<u64>, RecordingError> {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        let read = read_full(&mut self.input, &mut header).map_err(|e| self.io(e))?;
        if read == 0 {
            return Ok(None);
        }
        if read < FRAME_HEADER_BYTES {
            return Err(self.problem(FrameProblem::Truncated {
                have_bytes: read as u64,
                frame_bytes: None,
            }));
        }
        let arrival_us = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[12..].try_into().expect("4 bytes"));
        if len > FRAME_BYTES_MAX {
            return Err(self.problem(FrameProblem::TooLong { len: len as u64 }));
        }
        bytes.clear();
        bytes.resize(len, 0);
        let read = read_full(&mut self.input, bytes).map_err(|e| self.io(e))?;
        if read < len {
            return Err(self.problem(FrameProblem::Truncated {
                have_bytes: (FRAME_HEADER_BYTES + read) as u64,
                frame_bytes: Some((FRAME_HEADER_BYTES + len) as u64),
            }));
        }
        if checksum(&header, bytes) != crc {
            return Err(self.problem(FrameProblem::Checksum));
        }
        if arrival_us < self.last_arrival_us {
            return Err(self.problem(FrameProblem::TimeGoesBack {
                arrival_us,
                before_us: self.last_arrival_us,
            }));
        }
        self.last_arrival_us = arrival_us;
        self.frames += 1;
        self.offset += (FRAME_HEADER_BYTES + len) as u64;
        Ok(Some(arrival_us))
    }

    /// A problem with the frame at `offset`, the next one.
    fn problem(&self, problem: FrameProblem) -> RecordingError {
        RecordingError::Frame {
            file: self.file.clone(),
            frame: self.frames + 1,
            offset: self.offset,
            problem,
        }
    }

    fn io(&self, why: io::Error) -> RecordingError {
        RecordingError::Io {
            file: self.file.clone(),
            why,
        }
    }
}

/// Reads until `buf` is full or the input ends; returns how much it read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The sender's side of `--record`: each byte of the input once, however
/// often it is resent, with the time the sender first took it.
pub(super) struct Recorder {
    path: PathBuf,
    writer: RecordingWriter<BufWriter<File>>,
    started: Instant,
    /// Input bytes recorded so far.
    upto: u64,
}

impl Recorder {
    pub(super) fn create(path: &Path) -> io::Result<Recorder> {
        let file = File::create(path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
        let started = Instant::now();
        Ok(Recorder {
            path: path.to_path_buf(),
            writer: RecordingWriter::new(BufWriter::with_capacity(BUFFER_BYTES, file))?,
            started,
            upto: 0,
        })
    }

    /// The input's bytes at `offset` are about to be sent; the ones not
    /// recorded yet are recorded now, and written out at once (one write
    /// per piece the sender reads, as its socket gets), so a sender killed
    /// mid-stream leaves a recording of everything it sent.
    pub(super) fn saw(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let end = offset + bytes.len() as u64;
        if end <= self.upto {
            return Ok(());
        }
        if offset > self.upto {
            return Err(io::Error::other(format!(
                "the source asks for the input from byte {offset}, but a recording ({}) holds an \
                 input from its start: record against a source that reads it from the start",
                self.path.display()
            )));
        }
        let arrival_us = self.started.elapsed().as_micros() as u64;
        self.writer
            .frame(arrival_us, &bytes[(self.upto - offset) as usize..])
            .map_err(|e| self.write_error(e))?;
        self.upto = end;
        self.writer.flush().map_err(|e| self.write_error(e))
    }

    /// Flushes the recording to disk.
    pub(super) fn finish(self) -> io::Result<RecordingSummary> {
        let summary = self.writer.summary();
        let path = self.path;
        let write_error =
            |e: io::Error| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()));
        let file = self
            .writer
            .into_inner()
            .into_inner()
            .map_err(|e| write_error(e.into_error()))?;
        file.sync_all().map_err(write_error)?;
        Ok(summary)
    }

    fn write_error(&self, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("cannot write {}: {e}", self.path.display()))
    }
}

/// A recording's bytes as a reader, each frame held back until its
/// `arrival_us / speed` since the first read. Frames already due are joined
/// into one read, so a fast replay is not one write per frame.
pub(super) struct Replay {
    recording: RecordingReader<BufReader<File>>,
    speed: f64,
    /// The frame being read, and how much of it was.
    frame: Vec<u8>,
    taken: usize,
    /// When `frame` is due, and whether it was (its wait is over).
    due: Duration,
    released: bool,
    started: Option<Instant>,
    ended: bool,
    /// Times it waited for a frame to be due (a test counts them).
    pub(super) waits: u64,
}

impl Replay {
    /// `speed` must be above 0 (`f64::INFINITY`: no waiting).
    pub(super) fn open(path: &Path, speed: f64) -> Result<Replay, RecordingError> {
        assert!(speed > 0.0, "a replay speed above 0, not {speed}");
        Ok(Replay {
            recording: open(path)?,
            speed,
            frame: Vec::new(),
            taken: 0,
            due: Duration::ZERO,
            released: false,
            started: None,
            ended: false,
            waits: 0,
        })
    }

    fn due(&self, arrival_us: u64) -> Duration {
        // A tiny speed can make it too long to count: then it never comes.
        Duration::try_from_secs_f64(arrival_us as f64 / 1e6 / self.speed).unwrap_or(Duration::MAX)
    }
}

impl Read for Replay {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let mut filled = 0;
        while filled < buf.len() {
            if self.taken == self.frame.len() {
                if self.ended {
                    break;
                }
                let Some(arrival_us) = self.recording.next_frame(&mut self.frame)? else {
                    self.ended = true;
                    break;
                };
                self.taken = 0;
                self.due = self.due(arrival_us);
                self.released = false;
                continue;
            }
            if !self.released {
                let wait = self.due.saturating_sub(started.elapsed());
                if !wait.is_zero() {
                    if filled > 0 {
                        break;
                    }
                    self.waits += 1;
                    std::thread::sleep(wait);
                }
                self.released = true;
            }
            let n = (self.frame.len() - self.taken).min(buf.len() - filled);
            buf[filled..filled + n].copy_from_slice(&self.frame[self.taken..self.taken + n]);
            self.taken += n;
            filled += n;
        }
        Ok(filled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut writer = RecordingWriter::new(Vec::new()).unwrap();
        for (arrival_us, bytes) in frames {
            writer.frame(*arrival_us, bytes).unwrap();
        }
        writer.into_inner()
    }

    fn decode(recording: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, RecordingError> {
        let mut reader = RecordingReader::new("mem", recording)?;
        let mut frames = Vec::new();
        let mut bytes = Vec::new();
        while let Some(arrival_us) = reader.next_frame(&mut bytes)? {
            frames.push((arrival_us, bytes.clone()));
        }
        Ok(frames)
    }

    /// Frames with non-decreasing arrival times.
    fn frames() -> impl Strategy<Value = Vec<(u64, Vec<u8>)>> {
        prop::collection::vec(
            (0u64..1_000_000, prop::collection::vec(any::<u8>(), 0..300)),
            0..20,
        )
        .prop_map(|pieces| {
            let mut at = 0;
            pieces
                .into_iter()
                .map(|(gap, bytes)| {
                    at += gap;
                    (at, bytes)
                })
                .collect()
        })
    }

    /// Where each frame starts in an encoding of `frames`.
    fn frame_offsets(frames: &[(u64, Vec<u8>)]) -> Vec<usize> {
        let mut at = HEADER_BYTES;
        frames
            .iter()
            .map(|(_, bytes)| {
                let start = at;
                at += FRAME_HEADER_BYTES + bytes.len();
                start
            })
            .collect()
    }

    proptest! {
        #[test]
        fn a_recording_decodes_to_what_was_encoded(frames in frames()) {
            prop_assert_eq!(decode(&encode(&frames)).unwrap(), frames);
        }

        #[test]
        fn a_recording_cut_inside_a_frame_is_refused_there(frames in frames(), cut in any::<prop::sample::Index>()) {
            let recording = encode(&frames);
            let cut = HEADER_BYTES + cut.index(recording.len() - HEADER_BYTES + 1);
            let offsets = frame_offsets(&frames);
            let started = offsets.iter().filter(|start| **start < cut).count();
            if cut == recording.len() || offsets.contains(&cut) {
                // At a frame's boundary: the frames before it, and nothing is wrong.
                prop_assert_eq!(decode(&recording[..cut]).unwrap(), &frames[..started]);
            } else {
                    let inside = started - 1;
                    let e = decode(&recording[..cut]).unwrap_err();
                    let is_truncated = matches!(
                        e,
                        RecordingError::Frame { frame, offset, problem: FrameProblem::Truncated { .. }, .. }
                            if frame == inside as u64 + 1 && offset == offsets[inside] as u64
                    );
                    prop_assert!(is_truncated, "{}", e);
            }
        }

        /// Any changed byte other than a length's is caught (a changed
        /// length changes what the checksum covers, caught unless the
        /// checksums collide).
        #[test]
        fn a_changed_byte_is_caught(
            frames in frames(),
            which in any::<prop::sample::Index>(),
            place in any::<prop::sample::Index>(),
            flip in 1u8..,
        ) {
            prop_assume!(!frames.is_empty());
            let mut recording = encode(&frames);
            let offsets = frame_offsets(&frames);
            let frame = which.index(frames.len());
            let within = place.index(FRAME_HEADER_BYTES - 4 + frames[frame].1.len());
            let at = offsets[frame] + if within < 8 { within } else { within + 4 };
            recording[at] ^= flip;
            let e = decode(&recording).unwrap_err();
            let is_checksum = matches!(
                e,
                RecordingError::Frame { frame: f, problem: FrameProblem::Checksum, .. } if f == frame as u64 + 1
            );
            prop_assert!(is_checksum, "{}", e);
        }
    }

    #[test]
    fn an_empty_recording_has_no_frames() {
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
    }

    #[test]
    fn foreign_files_and_other_versions_are_refused() {
        for foreign in [&b""[..], b"VTRAFF", b"line 1\nline 2\nline 3\n"] {
            let e = decode(foreign).unwrap_err();
            assert!(matches!(e, RecordingError::NotARecording { .. }), "{e}");
            assert!(
                e.to_string().starts_with("mem is not a verity traffic recording"),
                "{e}"
            );
        }
        let mut later = encode(&[(0, b"a\n".to_vec())]);
        later[8] = 2;
        let e = decode(&later).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mem is a traffic recording of format version 2; this verity reads version 1"
        );
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_it_is_read() {
        let mut recording = encode(&[(5, b"a\n".to_vec()), (7, b"b\n".to_vec())]);
        let second = HEADER_BYTES + FRAME_HEADER_BYTES + 2;
        recording[second + 8..second + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = decode(&recording).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "recording mem: frame 2 at byte {second}: a length of {} bytes, over the limit of \
                 {FRAME_BYTES_MAX}: the recording is corrupt",
                u32::MAX
            )
        );
    }

    #[test]
    fn a_frame_arriving_before_the_one_before_is_refused() {
        // Written by hand: the writer would not.
        let mut recording = encode(&[(500, b"a\n".to_vec())]);
        let second = recording.len();
        let mut tail = encode(&[(100, b"b\n".to_vec())]);
        recording.extend_from_slice(&tail.split_off(HEADER_BYTES));
        let e = decode(&recording).unwrap_err();
        assert!(
            matches!(
                e,
                RecordingError::Frame {
                    frame: 2,
                    offset,
                    problem: FrameProblem::TimeGoesBack {
                        arrival_us: 100,
                        before_us: 500
                    },
                    ..
                } if offset == second as u64
            ),
            "{e}"
        );
    }

    #[test]
    fn a_piece_over_the_frame_limit_becomes_several_frames() {
        let big = vec![7u8; FRAME_BYTES_MAX + 10];
        let frames = decode(&encode(&[(3, big.clone())])).unwrap();
        assert_eq!(frames.len(), 2);
        assert!(frames.iter().all(|(arrival_us, _)| *arrival_us == 3));
        let joined: Vec<u8> = frames.into_iter().flat_map(|(_, bytes)| bytes).collect();
        assert_eq!(joined, big);
    }

    fn write_recording(dir: &Path, frames: &[(u64, Vec<u8>)]) -> PathBuf {
        let path = dir.join("recording");
        std::fs::write(&path, encode(frames)).unwrap();
        path
    }

    #[test]
    fn a_replay_joins_frames_that_are_due() {
        let dir = tempfile::tempdir().unwrap();
        let hour_us = 3_600_000_000;
        let frames = [
            (0, b"a\n".to_vec()),
            (0, b"b\n".to_vec()),
            (hour_us, b"c\n".to_vec()),
        ];
        let mut replay = Replay::open(&write_recording(dir.path(), &frames), f64::INFINITY).unwrap();
        let mut buf = [0u8; 64];
        let read = replay.read(&mut buf).unwrap();
        assert_eq!(&buf[..read], b"a\nb\nc\n", "all due at once");
        assert_eq!(replay.read(&mut buf).unwrap(), 0);
        assert_eq!(replay.waits, 0);
    }

    #[test]
    fn a_replay_holds_back_a_frame_not_due_yet() {
        let dir = tempfile::tempdir().unwrap();
        let hour_us = 3_600_000_000; // never waited for here
        let frames = [
            (0, b"a\n".to_vec()),
            (5, b"b\n".to_vec()),
            (hour_us, b"c\n".to_vec()),
        ];
        let mut replay = Replay::open(&write_recording(dir.path(), &frames), 1.0).unwrap();
        let mut buf = [0u8; 64];
        let mut read = replay.read(&mut buf).unwrap();
        if read == 2 {
            // 5 µs had not passed yet: "b" came alone, after a wait.
            read += replay.read(&mut buf[2..]).unwrap();
        }
        assert_eq!(&buf[..read], b"a\nb\n", "not the frame an hour later");
    }
}
