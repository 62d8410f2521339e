//! A sink written by every process (`SinkConnector::written_by_every_process`)
//! as a worker drives it, sans-IO: its own shards' lines go into its own
//! sink, and its commit boundaries follow process 0's checkpoints.
//!
//! The protocol (process 0's half is `checkpoint::Checkpointer::
//! add_member_mark` and `sink::OutputWriter`):
//! * Each local shard hands on its lines, and once its part of checkpoint
//!   `k` is out, `Passed(k)`: everything it hands on after belongs to later
//!   checkpoints and waits here.
//! * Once every local shard passed `k`, the sink takes `barrier(k)` (a
//!   transactional sink prepares: everything of `k` flushed and acked) and
//!   its `resume_mark`, which goes to process 0 (`MemberMark`).
//! * Process 0 completes `k` only with every part and every worker's mark,
//!   each mark in `JobMeta::member_marks`, manifest last; its completion
//!   comes back (`completed`), and only then does the sink `commit(k)` and
//!   take the output that waited. A crash before the commit recovers from
//!   a checkpoint the sink never committed past, so it can take its output
//!   back; a crash after the manifest but before the commit leaves the mark
//!   in the checkpoint for `resume` to finish the commit.
//! * Once every local shard finished, the sink takes `barrier(END)` (all of
//!   its output flushed, every produce acked) and reports
//!   `MemberMark::END`; process 0 finishes only with every worker's, and
//!   says the output is final (`ReaderProgress::ALL`), on which the sink
//!   commits the end. A sink error anywhere is the caller's to report: it
//!   fails the run.
//!
//! Dead letters, checkpoint parts and `Finished` keep going to process 0.

use crate::checkpoint::JobMeta;
use crate::connector::{CommitId, SinkConnector, SinkError};
use crate::sink::OutputBatch;
use crate::source::ReaderProgress;
use std::collections::VecDeque;
use std::ops::Range;

/// A worker's sink took a checkpoint's barrier: its resume mark there, for
/// process 0's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMark {
    pub process: u32,
    /// The checkpoint, or `MemberMark::END`: every local shard finished and
    /// all the sink's output is flushed.
    pub checkpoint: u64,
    pub mark: Vec<u8>,
}

impl MemberMark {
    /// The checkpoint number of a worker's end of output.
    pub const END: u64 = CommitId::END_OF_INPUT.0;
}

/// What a local shard hands its process's sink.
#[derive(Debug)]
pub enum MemberMessage {
    Lines(OutputBatch),
    /// The shard's part of this checkpoint is out: what follows is later.
    Passed(u64),
}

/// Bugs a test can plant in a worker's sink to prove a test finds them.
/// All off in production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberSinkBugs {
    /// Commit at the barrier, before process 0 wrote the checkpoint that
    /// covers it.
    pub commit_before_manifest: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Some local shard still runs.
    Running,
    /// `barrier(END)` taken; waiting for process 0 to say the output is final.
    Prepared,
    Committed,
}

/// A worker's sink and the order it is written in.
pub struct MemberSink {
    sink: Box<dyn SinkConnector>,
    process: u32,
    first_shard: u32,
    /// Per local shard: passed the barrier of `barriers + 1` or `barriers`
    /// (while it is prepared), and what it handed on after.
    passed: Vec<bool>,
    waiting: Vec<VecDeque<MemberMessage>>,
    finished: Vec<bool>,
    /// The newest checkpoint whose barrier the sink took.
    barriers: u64,
    /// The barrier of `barriers` waits for process 0 to complete it.
    prepared: bool,
    /// The newest checkpoint it committed (or resumed from).
    committed: u64,
    end: End,
    lines: u64,
    bugs: MemberSinkBugs,
}

impl MemberSink {
    /// The sink of worker `process`, written by its shards `local` (global
    /// indexes).
    pub fn new(sink: Box<dyn SinkConnector>, process: u32, local: Range<u32>) -> MemberSink {
        assert!(process >= 1, "process 0's sink is its output thread's");
        assert!(!local.is_empty(), "a worker runs shards");
        let shards = local.len();
        MemberSink {
            sink,
            process,
            first_shard: local.start,
            passed: vec![false; shards],
            waiting: (0..shards).map(|_| VecDeque::new()).collect(),
            finished: vec![false; shards],
            barriers: 0,
            prepared: false,
            committed: 0,
            end: End::Running,
            lines: 0,
            bugs: MemberSinkBugs::default(),
        }
    }

    pub fn with_bugs(mut self, bugs: MemberSinkBugs) -> MemberSink {
        self.bugs = bugs;
        self
    }

    /// Continues from this process's mark in a checkpoint (a recovery).
    pub fn resume(&mut self, meta: &JobMeta) -> Result<(), SinkError> {
        assert_eq!(
            (self.barriers, self.lines),
            (0, 0),
            "a sink resumes before it is written"
        );
        let mark = meta
            .member_marks
            .get(self.process as usize - 1)
            .map_or(&[][..], Vec::as_slice);
        self.sink.resume(mark)?;
        self.barriers = meta.checkpoint;
        self.committed = meta.checkpoint;
        Ok(())
    }

    /// Output lines written in this life.
    pub fn lines_written(&self) -> u64 {
        self.lines
    }

    /// The newest checkpoint committed.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Whether every local shard finished and the sink flushed all their
    /// output (`barrier(END)`, its end's mark sent): the worker's job is done.
    pub fn flushed(&self) -> bool {
        self.end != End::Running
    }

    /// Whether the end of output is committed: the worker may exit.
    pub fn is_done(&self) -> bool {
        self.end == End::Committed
    }

    /// A message of local shard `shard` (global index). Returns the mark
    /// for process 0 if the sink took a barrier.
    pub fn write(&mut self, shard: u32, message: MemberMessage) -> Result<Option<MemberMark>, SinkError> {
        let index = self.index(shard);
        assert!(!self.finished[index], "shard {shard} wrote after it finished");
        if self.passed[index] {
            self.waiting[index].push_back(message);
            return Ok(None);
        }
        self.apply(index, message)
    }

    fn index(&self, shard: u32) -> usize {
        let index = shard.checked_sub(self.first_shard).map(|i| i as usize);
        match index {
            Some(index) if index < self.passed.len() => index,
            _ => panic!("shard {shard} is not one of process {}'s", self.process),
        }
    }

    fn apply(&mut self, index: usize, message: MemberMessage) -> Result<Option<MemberMark>, SinkError> {
        match message {
            MemberMessage::Lines(batch) => {
                self.sink.write(&batch.lines, &batch.ids)?;
                self.lines += memchr::memchr_iter(b'\n', &batch.lines).count() as u64;
                Ok(None)
            }
            MemberMessage::Passed(checkpoint) => {
                let expected = self.barriers + 1;
                if checkpoint != expected {
                    return Err(protocol(format!(
                        "shard {} passed checkpoint {checkpoint} while the sink of process {} waits for {expected}",
                        self.first_shard + index as u32,
                        self.process
                    )));
                }
                self.passed[index] = true;
                self.barrier_if_all_passed()
            }
        }
    }

    fn barrier_if_all_passed(&mut self) -> Result<Option<MemberMark>, SinkError> {
        let all = self.passed.iter().zip(&self.finished).all(|(p, f)| *p || *f);
        if !all || self.passed.iter().all(|p| !p) {
            return Ok(None);
        }
        let checkpoint = self.barriers + 1;
        self.sink.barrier(CommitId(checkpoint))?;
        self.barriers = checkpoint;
        self.prepared = true;
        let mark = self.sink.resume_mark()?;
        if self.bugs.commit_before_manifest {
            self.sink.commit(CommitId(checkpoint))?;
            self.committed = checkpoint;
        }
        Ok(Some(MemberMark {
            process: self.process,
            checkpoint,
            mark,
        }))
    }

    /// Process 0 completed the checkpoint whose barrier was taken: the sink
    /// commits it and takes what waited for it. Returns the next mark if
    /// that takes a barrier.
    fn commit_prepared(&mut self) -> Result<Option<MemberMark>, SinkError> {
        debug_assert!(self.prepared);
        if self.committed < self.barriers {
            self.sink.commit(CommitId(self.barriers))?;
            self.committed = self.barriers;
        }
        self.prepared = false;
        self.passed.iter_mut().for_each(|p| *p = false);
        let mut mark = None;
        for index in 0..self.waiting.len() {
            while !self.passed[index] {
                let Some(message) = self.waiting[index].pop_front() else {
                    break;
                };
                if let Some(taken) = self.apply(index, message)? {
                    assert!(mark.is_none(), "one barrier at a time");
                    mark = Some(taken);
                }
            }
        }
        Ok(mark)
    }

    /// Process 0 says checkpoints up to `completed` are complete
    /// (`ReaderProgress::ALL`: the output is final). Returns the next mark
    /// if the output that waited took a barrier, or the end's.
    pub fn completed(&mut self, completed: u64) -> Result<Option<MemberMark>, SinkError> {
        let mut mark = None;
        if self.prepared && completed >= self.barriers {
            mark = self.commit_prepared()?;
        }
        if completed == ReaderProgress::ALL && self.end == End::Prepared {
            self.sink.commit(CommitId::END_OF_INPUT)?;
            self.end = End::Committed;
        }
        if mark.is_none() {
            mark = self.end_if_finished()?;
        }
        Ok(mark)
    }

    /// Local shard `shard` finished: all its output is in. Returns the end's
    /// mark once every local shard finished and the sink flushed.
    pub fn finished(&mut self, shard: u32) -> Result<Option<MemberMark>, SinkError> {
        let index = self.index(shard);
        self.finished[index] = true;
        self.end_if_finished()
    }

    /// Every local shard finished and nothing waits on a commit: the rest
    /// of the output (past a checkpoint that can no longer complete, as
    /// some shard ended before its barrier) is written, then the end's
    /// barrier flushes it all.
    fn end_if_finished(&mut self) -> Result<Option<MemberMark>, SinkError> {
        if self.end != End::Running || self.prepared || !self.finished.iter().all(|f| *f) {
            return Ok(None);
        }
        for index in 0..self.waiting.len() {
            while let Some(message) = self.waiting[index].pop_front() {
                if let MemberMessage::Lines(batch) = message {
                    self.sink.write(&batch.lines, &batch.ids)?;
                    self.lines += memchr::memchr_iter(b'\n', &batch.lines).count() as u64;
                }
            }
        }
        self.passed.iter_mut().for_each(|p| *p = false);
        self.sink.barrier(CommitId::END_OF_INPUT)?;
        self.end = End::Prepared;
        Ok(Some(MemberMark {
            process: self.process,
            checkpoint: MemberMark::END,
            mark: Vec::new(),
        }))
    }
}

fn protocol(what: String) -> SinkError {
    SinkError::Connector(what.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MsgId;
    use std::sync::{Arc, Mutex};

    /// What a recording sink was asked, in order.
    struct Recording(Arc<Mutex<Vec<String>>>);

    impl SinkConnector for Recording {
        fn write(&mut self, lines: &[u8], _: &[MsgId]) -> Result<(), SinkError> {
            let text = String::from_utf8_lossy(lines).trim_end().to_string();
            self.0.lock().unwrap().push(format!("write {text}"));
            Ok(())
        }
        fn barrier(&mut self, commit: CommitId) -> Result<(), SinkError> {
            self.0.lock().unwrap().push(format!("barrier {}", commit.0));
            Ok(())
        }
        fn commit(&mut self, upto: CommitId) -> Result<(), SinkError> {
            self.0.lock().unwrap().push(format!("commit {}", upto.0));
            Ok(())
        }
        fn resume_mark(&mut self) -> Result<Vec<u8>, SinkError> {
            Ok(b"mark".to_vec())
        }
        fn resume(&mut self, mark: &[u8]) -> Result<(), SinkError> {
            let mark = String::from_utf8_lossy(mark).to_string();
            self.0.lock().unwrap().push(format!("resume {mark}"));
            Ok(())
        }
    }

    fn lines(text: &str) -> MemberMessage {
        MemberMessage::Lines(OutputBatch {
            lines: format!("{text}\n").into_bytes(),
            ids: Vec::new(),
        })
    }

    fn sink(bugs: MemberSinkBugs) -> (MemberSink, Arc<Mutex<Vec<String>>>) {
        let calls = Arc::default();
        let sink = MemberSink::new(Box::new(Recording(Arc::clone(&calls))), 1, 2..4).with_bugs(bugs);
        (sink, calls)
    }

    /// Shard 2 runs ahead past checkpoint 1; shard 3 passes it last.
    fn pass_checkpoint_1(sink: &mut MemberSink) -> Option<MemberMark> {
        assert_eq!(sink.write(2, lines("a")).unwrap(), None);
        assert_eq!(sink.write(2, MemberMessage::Passed(1)).unwrap(), None);
        assert_eq!(sink.write(2, lines("after")).unwrap(), None);
        assert_eq!(sink.write(3, lines("b")).unwrap(), None);
        sink.write(3, MemberMessage::Passed(1)).unwrap()
    }

    const END: u64 = MemberMark::END;

    #[test]
    fn the_barrier_waits_for_every_local_shard_and_the_commit_for_process_0() {
        let (mut sink, calls) = sink(MemberSinkBugs::default());
        let mark = pass_checkpoint_1(&mut sink).expect("every local shard passed 1");
        assert_eq!(
            (mark.process, mark.checkpoint, &mark.mark[..]),
            (1, 1, &b"mark"[..])
        );
        assert_eq!(sink.completed(0).unwrap(), None, "process 0 has not written it");
        assert_eq!(*calls.lock().unwrap(), ["write a", "write b", "barrier 1"]);
        assert_eq!(sink.completed(1).unwrap(), None);
        assert_eq!(sink.committed(), 1);
        assert_eq!(sink.finished(2).unwrap(), None);
        let end = sink.finished(3).unwrap().expect("the end's mark");
        assert_eq!((end.process, end.checkpoint), (1, END));
        assert!(!sink.is_done(), "the end commits when the output is final");
        sink.completed(ReaderProgress::ALL).unwrap();
        assert!(sink.is_done());
        assert_eq!(
            *calls.lock().unwrap(),
            [
                "write a",
                "write b",
                "barrier 1",
                "commit 1",
                "write after",
                &format!("barrier {END}"),
                &format!("commit {END}")
            ]
        );
        assert_eq!(sink.lines_written(), 3);
    }

    #[test]
    fn the_planted_early_commit_commits_before_process_0_wrote_the_checkpoint() {
        let (mut sink, calls) = sink(MemberSinkBugs {
            commit_before_manifest: true,
        });
        pass_checkpoint_1(&mut sink).expect("a mark");
        assert_eq!(
            *calls.lock().unwrap(),
            ["write a", "write b", "barrier 1", "commit 1"],
            "the bug commits at the barrier"
        );
    }

    #[test]
    fn a_checkpoint_that_cannot_complete_is_written_through_when_the_output_is_final() {
        let (mut sink, calls) = sink(MemberSinkBugs::default());
        pass_checkpoint_1(&mut sink).expect("a mark");
        assert_eq!(sink.finished(2).unwrap(), None);
        assert_eq!(sink.finished(3).unwrap(), None, "checkpoint 1 is still prepared");
        // The run ended without checkpoint 1 (another process's shard
        // stopped before its barrier): the output is final all the same.
        let end = sink
            .completed(ReaderProgress::ALL)
            .unwrap()
            .expect("the end's mark");
        assert_eq!(end.checkpoint, END);
        sink.completed(ReaderProgress::ALL).unwrap();
        assert!(sink.is_done());
        assert_eq!(calls.lock().unwrap()[3..5], ["commit 1", "write after"]);
    }

    #[test]
    fn a_recovery_resumes_from_this_process_s_own_mark() {
        let (mut sink, calls) = sink(MemberSinkBugs::default());
        let meta = JobMeta {
            checkpoint: 4,
            sources: Vec::new(),
            output_mark: b"p0".to_vec(),
            dead_letter_mark: Vec::new(),
            output_lines: 0,
            dead_letters: 0,
            member_marks: vec![b"p1".to_vec(), b"p2".to_vec()],
        };
        sink.resume(&meta).unwrap();
        assert_eq!(*calls.lock().unwrap(), ["resume p1"]);
        assert!(
            sink.write(2, MemberMessage::Passed(4)).is_err(),
            "checkpoint 4 is the one resumed from"
        );
        assert_eq!(sink.write(3, MemberMessage::Passed(5)).unwrap(), None);
    }
}
