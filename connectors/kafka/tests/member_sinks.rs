//! A sink written by every process, exactly-once, driven directly: three
//! processes of one shard each, each with its own transactional Kafka sink
//! (`LogSink`, transactional id per process) over the simulated broker;
//! process 0's production `OutputWriter` and `Checkpointer` (checkpoints in a
//! temporary directory) and the workers' production `MemberSink`s, with the
//! messages between them delivered by hand in the orders the test picks, a
//! crash (every producer dies, the broker keeps what was committed) and a
//! recovery from the newest complete checkpoint. What a read_committed
//! consumer sees must be every output exactly once; the planted bugs of both
//! halves of the protocol must show.

use verity_core::checkpoint::{Checkpointer, CoordinatorBugs};
use verity_core::connector::sinks::NullSink;
use verity_core::member_sink::{MemberMark, MemberMessage, MemberSink, MemberSinkBugs};
use verity_core::shard::CheckpointPart;
use verity_core::sink::{DeadLetterWriter, OutputBatch, OutputMessage, OutputWriter};
use verity_core::source::{ReaderProgress, SourceCut};
use verity_kafka::{transactional_id, LogSink, SimBroker, SinkBugs, SinkDelivery};
use verity_state::checkpoint::CheckpointStore;
use verity_state::storage::{DirStorage, Storage};

const TOPIC: &str = "out";
const PROCESSES: u32 = 3;
const JOB: &str = "job";

fn first_word(line: &[u8]) -> &[u8] {
    line.split(|b| *b == b' ').next().unwrap_or(line)
}

#[derive(Debug, Clone, Copy, Default)]
struct Bugs {
    member: MemberSinkBugs,
    coordinator: CoordinatorBugs,
}

/// One life of the cluster: process 0's output writer, the workers' sinks.
struct Life {
    writer: Option<OutputWriter>,
    members: Vec<MemberSink>,
}

fn sink(broker: &SimBroker, process: u32) -> Result<LogSink<verity_kafka::sim_broker::SimProducer>, String> {
    let id = transactional_id(JOB, process);
    let producer = broker.producer(TOPIC, Some(&id));
    LogSink::open(
        producer,
        SinkDelivery::Transactional,
        first_word,
        SinkBugs::default(),
    )
    .map_err(|e| e.to_string())
}

impl Life {
    /// Opens every process's sink (fencing the last life's producers) and,
    /// if there is a complete checkpoint, resumes each from its own mark.
    fn start(broker: &SimBroker, dir: &std::path::Path, bugs: Bugs) -> Result<Life, String> {
        let storage = || -> Box<dyn Storage> { Box::new(DirStorage::open(dir).unwrap()) };
        let mut store = CheckpointStore::new(storage());
        let (restart, next_id) =
            Checkpointer::recover(&mut store, JOB, PROCESSES).map_err(|e| e.to_string())?;
        let checkpoints = Checkpointer::new(store, JOB.into(), PROCESSES, 1, restart.as_ref(), next_id)
            .with_bugs(bugs.coordinator);
        let dead_letters = DeadLetterWriter::with_sink(Box::new(NullSink), Vec::new());
        let mut writer = OutputWriter::new(Box::new(sink(broker, 0)?), dead_letters)
            .with_checkpoints(checkpoints)
            .with_member_sinks(PROCESSES);
        let mut members = Vec::new();
        for process in 1..PROCESSES {
            let member = MemberSink::new(Box::new(sink(broker, process)?), process, process..process + 1);
            members.push(member.with_bugs(bugs.member));
        }
        if let Some(restart) = &restart {
            writer.resume(&restart.meta).map_err(|e| e.to_string())?;
            for member in &mut members {
                member.resume(&restart.meta).map_err(|e| e.to_string())?;
            }
        }
        Ok(Life {
            writer: Some(writer),
            members,
        })
    }

    fn writer(&mut self) -> &mut OutputWriter {
        self.writer.as_mut().expect("running")
    }

    /// Shard `shard` (on process `shard`) outputs `line`.
    fn output(&mut self, shard: u32, line: &str) -> Result<(), String> {
        let batch = OutputBatch {
            lines: format!("{line}\n").into_bytes(),
            ids: Vec::new(),
        };
        match shard {
            0 => self
                .writer()
                .write(0, OutputMessage::Lines(batch))
                .map_err(|e| e.to_string()),
            _ => {
                let member = &mut self.members[shard as usize - 1];
                let mark = member
                    .write(shard, MemberMessage::Lines(batch))
                    .map_err(|e| e.to_string())?;
                assert_eq!(mark, None, "lines take no barrier");
                Ok(())
            }
        }
    }

    /// Shard `shard` takes checkpoint `k`: its part goes to process 0; a
    /// worker's sink hears it passed, and its mark (if it took the barrier)
    /// is returned for the test to deliver.
    fn pass(&mut self, shard: u32, k: u64) -> Result<Option<MemberMark>, String> {
        let part = CheckpointPart {
            shard,
            checkpoint: k,
            cuts: vec![(shard == 0).then(SourceCut::default)],
            ended: vec![None],
            delta: false,
            state: Vec::new(),
        };
        let completed = self.completed();
        self.writer()
            .write(shard, OutputMessage::Checkpoint(part))
            .map_err(|e| e.to_string())?;
        self.tell_members(completed)?;
        match shard {
            0 => Ok(None),
            _ => self.members[shard as usize - 1]
                .write(shard, MemberMessage::Passed(k))
                .map_err(|e| e.to_string()),
        }
    }

    /// Process 0 gets a worker's mark.
    fn deliver(&mut self, mark: MemberMark) -> Result<(), String> {
        let completed = self.completed();
        let process = mark.process;
        self.writer()
            .write(process, OutputMessage::MemberMark(mark))
            .map_err(|e| e.to_string())?;
        self.tell_members(completed)
    }

    fn completed(&self) -> u64 {
        self.writer
            .as_ref()
            .map_or(0, OutputWriter::checkpoints_completed)
    }

    /// What process 0 completed since `before` reaches the workers, as
    /// `Control::Readers` does; a mark that takes is delivered at once.
    fn tell_members(&mut self, before: u64) -> Result<(), String> {
        let now = self.completed();
        if now == before {
            return Ok(());
        }
        let mut marks = Vec::new();
        for member in &mut self.members {
            marks.extend(member.completed(now).map_err(|e| e.to_string())?);
        }
        for mark in marks {
            self.deliver(mark)?;
        }
        Ok(())
    }

    /// Every shard finished: the workers' sinks flush and report their end,
    /// process 0 finishes, and the workers commit the end.
    fn finish(mut self) -> Result<(), String> {
        for process in 1..PROCESSES {
            let member = &mut self.members[process as usize - 1];
            if let Some(end) = member.finished(process).map_err(|e| e.to_string())? {
                self.deliver(end)?;
            }
        }
        let writer = self.writer.take().expect("running");
        writer.finish().map_err(|e| e.to_string())?;
        for member in &mut self.members {
            member.completed(ReaderProgress::ALL).map_err(|e| e.to_string())?;
            assert!(member.is_done());
        }
        Ok(())
    }
}

/// A crash: every process dies at once, their producers with them.
fn crash(broker: &SimBroker, life: Life) {
    std::mem::forget(life);
    broker.crash_clients();
}

fn committed(broker: &SimBroker) -> Vec<String> {
    let mut lines: Vec<String> = broker
        .read_committed(TOPIC)
        .into_iter()
        .map(|(_, _, record)| String::from_utf8(record.value).unwrap())
        .collect();
    lines.sort();
    lines
}

fn broker() -> SimBroker {
    let broker = SimBroker::new();
    broker.create_topic(TOPIC, 3);
    broker
}

/// Checkpoint 1 covers a0..a2; the workers take checkpoint 2's barrier
/// over b0..b2 but the crash comes before process 0 has shard 0's part;
/// the recovery replays b0..b2 and finishes with c0..c2.
fn crash_before_the_manifest(bugs: Bugs) -> Result<Vec<String>, String> {
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let mut life = Life::start(&broker, dir.path(), bugs)?;
    for shard in 0..PROCESSES {
        life.output(shard, &format!("a{shard}"))?;
    }
    for shard in (0..PROCESSES).rev() {
        if let Some(mark) = life.pass(shard, 1)? {
            life.deliver(mark)?;
        }
    }
    assert_eq!(life.completed(), 1);
    for shard in 0..PROCESSES {
        life.output(shard, &format!("b{shard}"))?;
    }
    for shard in 1..PROCESSES {
        if let Some(mark) = life.pass(shard, 2)? {
            life.deliver(mark)?;
        }
    }
    crash(&broker, life);
    let mut life = Life::start(&broker, dir.path(), bugs)?;
    for shard in 0..PROCESSES {
        life.output(shard, &format!("b{shard}"))?;
    }
    for shard in 0..PROCESSES {
        if let Some(mark) = life.pass(shard, 2)? {
            life.deliver(mark)?;
        }
    }
    for shard in 0..PROCESSES {
        life.output(shard, &format!("c{shard}"))?;
    }
    life.finish()?;
    Ok(committed(&broker))
}

/// Every part of checkpoint 1 and process 1's mark are in, process 2's
/// mark is not yet; the crash comes before it arrives.
fn crash_while_a_mark_is_on_its_way(bugs: Bugs) -> Result<Vec<String>, String> {
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let mut life = Life::start(&broker, dir.path(), bugs)?;
    for shard in 0..PROCESSES {
        life.output(shard, &format!("a{shard}"))?;
    }
    let mut late = None;
    for shard in 0..PROCESSES {
        match life.pass(shard, 1)? {
            Some(mark) if mark.process == 2 => late = Some(mark),
            Some(mark) => life.deliver(mark)?,
            None => {}
        }
    }
    assert!(late.is_some());
    crash(&broker, life);
    let mut life = Life::start(&broker, dir.path(), bugs)?;
    if life.completed() == 0 {
        // Nothing was complete: the replay writes checkpoint 1's output again.
        for shard in 0..PROCESSES {
            life.output(shard, &format!("a{shard}"))?;
        }
    }
    life.finish()?;
    Ok(committed(&broker))
}

#[test]
fn every_process_s_output_is_committed_once_across_a_crash_before_the_manifest() {
    let all = ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"];
    assert_eq!(crash_before_the_manifest(Bugs::default()).unwrap(), all);
}

#[test]
fn a_worker_that_commits_before_the_manifest_is_caught() {
    let bugs = Bugs {
        member: MemberSinkBugs {
            commit_before_manifest: true,
        },
        ..Bugs::default()
    };
    // Its transaction of checkpoint 2 is committed, though the recovery
    // goes back to checkpoint 1: the recovery finds the topic ahead of it.
    let e = crash_before_the_manifest(bugs).unwrap_err();
    assert!(e.contains("has marker 2, but the checkpoint expects"), "{e}");
}

#[test]
fn a_checkpoint_waits_for_every_workers_mark() {
    assert_eq!(
        crash_while_a_mark_is_on_its_way(Bugs::default()).unwrap(),
        ["a0", "a1", "a2"]
    );
}

#[test]
fn process_0_completing_without_a_workers_mark_is_caught() {
    let bugs = Bugs {
        coordinator: CoordinatorBugs {
            complete_without_last_member_mark: true,
        },
        ..Bugs::default()
    };
    // Checkpoint 1 completed without process 2's mark: process 2 resumes
    // from nothing, though its sink holds checkpoint 1's transaction.
    let found = crash_while_a_mark_is_on_its_way(bugs);
    assert!(found.as_ref().map_or(true, |out| out.len() != 3), "{found:?}");
}
