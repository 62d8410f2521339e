//! `verity receive`'s staged lines (a two-phase-commit sink's lines before
//! their commit) in a file beside the output, so the receiver's memory does
//! not grow with a checkpoint interval's output: only a few numbers per
//! staged frame stay in memory.

use super::line_start;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Committed bytes at the file's head are reclaimed (the rest moved to the
/// front) once there are this many, and more than staged bytes after them.
const COMPACT_MIN_BYTES: u64 = 64 << 20;
/// Bytes moved per read and write while compacting.
const COPY_BYTES: usize = 1 << 20;

/// One staged frame: its lines, and its bytes in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Staged {
    lines: u64,
    len: u64,
}

pub(super) struct Staging {
    file: File,
    path: PathBuf,
    /// Staged frames, oldest first; the first starts at `start`.
    frames: VecDeque<Staged>,
    start: u64,
    end: u64,
    buf: Vec<u8>,
}

impl Staging {
    /// An empty staging file at `path` (created, or truncated).
    pub(super) fn create(path: &Path) -> io::Result<Staging> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
        Ok(Staging {
            file,
            path: path.to_path_buf(),
            frames: VecDeque::new(),
            start: 0,
            end: 0,
            buf: Vec::new(),
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Stages `bytes`, which hold `lines` whole lines.
    pub(super) fn push(&mut self, lines: u64, bytes: &[u8]) -> io::Result<()> {
        if lines == 0 {
            return Ok(());
        }
        self.file.write_all_at(bytes, self.end)?;
        self.end += bytes.len() as u64;
        self.frames.push_back(Staged {
            lines,
            len: bytes.len() as u64,
        });
        Ok(())
    }

    /// Takes the oldest `take` staged lines out, in order, handing them to
    /// `write` (bytes and line count) a frame or part of one at a time.
    pub(super) fn commit(
        &mut self,
        mut take: u64,
        mut write: impl FnMut(&[u8], u64) -> io::Result<()>,
    ) -> io::Result<()> {
        while take > 0 {
            let Some(front) = self.frames.front().copied() else {
                return Err(io::Error::other("a commit of more lines than are staged"));
            };
            self.read_front(front)?;
            let lines = take.min(front.lines);
            let len = line_start(&self.buf, lines) as u64;
            write(&self.buf[..len as usize], lines)?;
            self.start += len;
            take -= lines;
            if lines == front.lines {
                self.frames.pop_front();
            } else {
                self.frames[0] = Staged {
                    lines: front.lines - lines,
                    len: front.len - len,
                };
            }
        }
        self.reclaim()
    }

    /// Keeps the oldest `keep` staged lines and drops the rest.
    pub(super) fn truncate(&mut self, keep: u64) -> io::Result<()> {
        let (mut held, mut at) = (0, self.start);
        let mut index = 0;
        while index < self.frames.len() && held < keep {
            let frame = self.frames[index];
            if held + frame.lines > keep {
                self.buf.resize(frame.len as usize, 0);
                self.file.read_exact_at(&mut self.buf, at)?;
                let len = line_start(&self.buf, keep - held) as u64;
                self.frames[index] = Staged {
                    lines: keep - held,
                    len,
                };
                at += len;
                index += 1;
                break;
            }
            held += frame.lines;
            at += frame.len;
            index += 1;
        }
        self.frames.truncate(index);
        self.end = at;
        self.file.set_len(self.end)?;
        self.reclaim()
    }

    /// Removes the staging file (at the receiver's end).
    pub(super) fn remove(self) -> io::Result<()> {
        drop(self.file);
        std::fs::remove_file(&self.path)
    }

    fn read_front(&mut self, front: Staged) -> io::Result<()> {
        self.buf.resize(front.len as usize, 0);
        self.file.read_exact_at(&mut self.buf, self.start)
    }

    /// Gives back the space of committed lines: all of it when nothing is
    /// staged, else by moving the staged bytes to the front once the
    /// committed head is large.
    fn reclaim(&mut self) -> io::Result<()> {
        if self.frames.is_empty() {
            self.start = 0;
            self.end = 0;
            return self.file.set_len(0);
        }
        let staged = self.end - self.start;
        if self.start < COMPACT_MIN_BYTES || self.start < staged {
            return Ok(());
        }
        // The ranges do not overlap: the head is longer than the rest.
        let mut moved = 0;
        while moved < staged {
            let n = COPY_BYTES.min((staged - moved) as usize);
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, self.start + moved)?;
            self.file.write_all_at(&self.buf, moved)?;
            moved += n as u64;
        }
        self.start = 0;
        self.end = staged;
        self.file.set_len(staged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(from: u64, count: u64) -> Vec<u8> {
        (from..from + count)
            .flat_map(|n| format!("line {n}\n").into_bytes())
            .collect()
    }

    fn commit(staging: &mut Staging, take: u64) -> Vec<u8> {
        let mut out = Vec::new();
        staging
            .commit(take, |bytes, lines| {
                assert_eq!(bytes.iter().filter(|b| **b == b'\n').count() as u64, lines);
                out.extend_from_slice(bytes);
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn staged_lines_come_out_in_order_whole_or_cut_and_the_file_empties() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.staging");
        let mut staging = Staging::create(&path).unwrap();
        staging.push(3, &lines(1, 3)).unwrap();
        staging.push(4, &lines(4, 4)).unwrap();
        staging.push(0, b"").unwrap();
        assert_eq!(commit(&mut staging, 2), lines(1, 2), "part of a frame");
        assert_eq!(commit(&mut staging, 3), lines(3, 3), "across frames");
        staging.truncate(1).unwrap();
        assert_eq!(commit(&mut staging, 1), lines(6, 1));
        assert!(staging.is_empty(), "line 7 was dropped");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "space given back");
        assert!(staging.commit(1, |_, _| Ok(())).is_err());
        staging.push(2, &lines(10, 2)).unwrap();
        staging.truncate(5).unwrap();
        assert_eq!(
            commit(&mut staging, 2),
            lines(10, 2),
            "truncating past the end keeps all"
        );
        staging.remove().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn a_large_committed_head_is_reclaimed_while_lines_stay_staged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.staging");
        let mut staging = Staging::create(&path).unwrap();
        let line = vec![b'x'; 1023].into_iter().chain([b'\n']).collect::<Vec<u8>>();
        let frame: Vec<u8> = line.repeat(1024); // 1 MiB of 1024 lines
        let frames = COMPACT_MIN_BYTES / frame.len() as u64 + 2;
        for _ in 0..frames {
            staging.push(1024, &frame).unwrap();
        }
        // All but the last frame committed: the head is reclaimed.
        let out = commit(&mut staging, (frames - 1) * 1024);
        assert_eq!(out.len() as u64, (frames - 1) * frame.len() as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), frame.len() as u64);
        assert_eq!(commit(&mut staging, 1024), frame);
        assert!(staging.is_empty());
    }
}
