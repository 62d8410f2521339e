//! The cluster lifecycle in simulation: every process runs the production
//! `verity_core::cluster::Lifecycle` (job distribution, start, finish,
//! shutdown, failure and its deadlines), on its own virtual clock, with the
//! control messages encoded by the production codec on control channels like
//! any other frame. A worker's shards start only when its job has arrived,
//! and a seed ends when every process has exited. This file turns what the
//! world sees into the machine's events and carries out its actions; it
//! decides nothing itself.

use super::*;
use std::sync::atomic::Ordering;
use verity_core::cluster::codec::{decode_control, encode_control};
use verity_core::cluster::lifecycle::{
    Action, Control, Deadlines, Event as LifeEvent, Job, Lifecycle, Outcome, ReadersProgress,
    CONTROL_FRAMES_KEPT_FREE, GRACEFUL_STOP_DEADLINE_MS, REASON_SIZE_MAX_BYTES,
};
use verity_core::source::ReaderProgress;

/// Every process's lifecycle and what the world has told it.
pub(super) struct Lifecycles {
    machines: Vec<Lifecycle>,
    /// The deadlines every machine runs with (a restarted process's new
    /// life too).
    deadlines: Deadlines,
    /// The job process 0 distributes, to check what workers start.
    job: Job,
    job_started: Vec<bool>,
    job_finished: Vec<bool>,
    flushing: Vec<bool>,
    exits: Vec<Option<(Outcome, Option<String>)>>,
    /// The `fail` fault, once it struck a running process.
    pub(super) injected: Option<InjectedFailure>,
    /// When the `stop` fault reached process 0.
    pub(super) stop_requested_at_us: Option<u64>,
    /// When process 0's job finished (all output in): the shutdown starts.
    leader_finished_at_us: Option<u64>,
    /// When each process exited.
    exited_at_us: Vec<Option<u64>>,
    /// Process 0 told its readers to stop.
    sources_stopped: bool,
    /// What process 0 last told the workers of its readers' progress (as
    /// production's supervisor forwards it for readers of spread sources);
    /// reset when an update was deferred, so the newest goes out again.
    readers_told: ReadersProgress,
    /// The newest progress process 0 published (what no worker may pass).
    readers_published: ReadersProgress,
    /// Per process: the readers' progress its lifecycle handed on, in
    /// this life.
    readers_heard: Vec<ReadersProgress>,
}

/// What the world looked like when the `fail` fault struck.
pub(super) struct InjectedFailure {
    process: u32,
    /// Which processes had not exited yet.
    running: Vec<bool>,
    /// When every process must have exited: the failure report goes out at
    /// once (or once the faults healed), so no one waits for a lost peer.
    exit_by_us: u64,
    /// Process 0 exited failed with everything it sent acked (its `Abort`s
    /// taken): the workers must follow at once.
    leader_reported_at_us: Option<u64>,
}

/// How long after a failure (or after the faults healed, if later) every
/// process must have exited: the failure report's own deadline, plus room
/// for clock jumps and a few heartbeats. Far less than a lost peer takes.
pub(super) const EXIT_AFTER_FAILURE_US: u64 =
    verity_core::cluster::lifecycle::FAILURE_REPORT_DEADLINE_MS * 1000 + 2 * PEER_TIMEOUT_US + SECOND_US;

/// How long after all output is in (or the faults healed, if later) a
/// process may still run: a worker whose last acks could not get out waits
/// out its flush deadline (the shutdown deadline) before it exits.
const SHUTDOWN_BOUND_US: u64 =
    verity_core::cluster::lifecycle::SHUTDOWN_DEADLINE_MS * 1000 + EXIT_AFTER_FAILURE_US;

/// How long after a stop request process 0 may still run: the graceful-stop
/// deadline, then the shutdown's (or the failure report's), plus room for
/// clock jumps.
const STOP_EXIT_BOUND_US: u64 =
    verity_core::cluster::lifecycle::GRACEFUL_STOP_DEADLINE_MS * 1000 + SHUTDOWN_BOUND_US;

/// Why the `fail` fault says a process failed.
pub(super) const FAIL_REASON: &str = "simulated failure (as a panicked shard thread)";

impl Lifecycles {
    /// `job_wait_ms`: a worker gives up on its job this long after the start
    /// (the whole seed's time: faults may hold the job back for long).
    pub(super) fn new(processes: u32, job: Job, job_wait_ms: u64) -> Lifecycles {
        let deadlines = Deadlines {
            job_wait_ms,
            ..Deadlines::default()
        };
        let count = processes as usize;
        Lifecycles {
            machines: (0..processes)
                .map(|p| Lifecycle::new(p, processes, (p == 0).then(|| job.clone()), deadlines))
                .collect(),
            deadlines,
            job,
            job_started: vec![false; count],
            job_finished: vec![false; count],
            flushing: vec![false; count],
            exits: vec![None; count],
            injected: None,
            stop_requested_at_us: None,
            leader_finished_at_us: None,
            exited_at_us: vec![None; count],
            sources_stopped: false,
            readers_told: ReadersProgress::default(),
            readers_published: ReadersProgress::default(),
            readers_heard: vec![ReadersProgress::default(); count],
        }
    }
}

impl<K, V, S, O> World<'_, K, V, S, O>
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: verity_core::State,
    O: 'static,
{
    /// The control channels, as `ControlLinks` wires them in production.
    pub(super) fn wire_control_channels(&mut self) {
        for process in 1..self.config.processes {
            self.add_control_channel(channel_id::control(process), 0, process);
            self.add_control_channel(channel_id::control_up(process), process, 0);
        }
    }

    pub(super) fn start_lifecycles(&mut self) {
        for process in 0..self.config.processes {
            self.lifecycle_event(process, LifeEvent::Start);
        }
    }

    /// The `restart` fault: `process` comes back as a fresh worker, whose
    /// lifecycle starts over (it waits for a job) and knows nothing of its
    /// old life's job, flush or exit.
    pub(super) fn restart_lifecycle(&mut self, process: u32) {
        let p = process as usize;
        let lifecycles = &mut self.lifecycles;
        lifecycles.machines[p] = Lifecycle::new(process, self.config.processes, None, lifecycles.deadlines);
        lifecycles.job_started[p] = false;
        lifecycles.job_finished[p] = false;
        lifecycles.flushing[p] = false;
        lifecycles.exits[p] = None;
        lifecycles.exited_at_us[p] = None;
        lifecycles.readers_heard[p] = ReadersProgress::default();
        self.lifecycle_event(process, LifeEvent::Start);
    }

    /// Whether `process` is ending its run (flushing after a shutdown, an
    /// abort or a failure): its protocol then takes peers leaving, or
    /// coming back, as expected and reports no failure of its own.
    pub(super) fn flushing(&self, process: u32) -> bool {
        self.lifecycles.flushing[process as usize]
    }

    /// Whether `process` has its job, so its shards may run.
    pub(super) fn job_started(&self, process: u32) -> bool {
        self.lifecycles.job_started[process as usize]
    }

    pub(super) fn lifecycle_event(&mut self, process: u32, event: LifeEvent) {
        let now_ms = self.local_clock_ms(process);
        let actions = self.lifecycles.machines[process as usize].handle(now_ms, event);
        for action in actions {
            self.carry_out_lifecycle(process, action);
        }
    }

    fn carry_out_lifecycle(&mut self, process: u32, action: Action) {
        match action {
            Action::Send { to, message } => {
                if let Control::Failed { reason } | Control::Abort { reason } = &message {
                    if reason.len() > REASON_SIZE_MAX_BYTES {
                        let failure = format!(
                            "process {process} sends a failure reason of {} bytes (at most {REASON_SIZE_MAX_BYTES})",
                            reason.len()
                        );
                        self.net.failure.get_or_insert(failure);
                    }
                }
                self.trace(format_args!("process {process}: control to {to}: {message:?}"));
                let channel = if process == 0 {
                    channel_id::control(to)
                } else {
                    channel_id::control_up(process)
                };
                if message.superseded() && self.free_frames(channel) <= CONTROL_FRAMES_KEPT_FREE {
                    // As production's supervisor: the newest progress goes
                    // out at a later turn.
                    self.trace(format_args!(
                        "process {process}: control to {to} deferred: {message:?}"
                    ));
                    self.lifecycles.readers_told = ReadersProgress::default();
                    return;
                }
                // Production refuses a message past the control queue's
                // depth (`ControlLinks::send`), which no lifecycle reaches.
                if !self.try_queue_frame(channel, |frame| encode_control(&message, frame)) {
                    let failure = format!("process {process}: the control queue to {to} is full");
                    self.net.failure.get_or_insert(failure);
                }
                self.pump(process);
            }
            Action::StartJob(job) => {
                assert_eq!(
                    job, self.lifecycles.job,
                    "process {process} starts the job process 0 sent"
                );
                self.trace(format_args!("process {process}: starts its job"));
                self.lifecycles.job_started[process as usize] = true;
            }
            Action::StopSources => {
                self.trace(format_args!("process {process}: stops its sources"));
                // A worker's readers hear of it from process 0 (`Control::Readers`).
                self.readers
                    .iter_mut()
                    .filter(|r| r.process() == 0)
                    .for_each(Reader::stop);
                self.lifecycles.sources_stopped = true;
                // The reader threads see the stop flag on their next turn.
                self.schedule(self.now_us, Event::Wake { process });
            }
            Action::ReadersProgress(progress) => {
                self.trace(format_args!("process {process}: readers' progress {progress:?}"));
                self.readers_heard(process, progress);
                self.member_heard(process, progress.committed);
            }
            Action::MemberMark(mark) if self.config.member_sinks => {
                self.trace(format_args!(
                    "process 0: process {}'s sink mark of checkpoint {}",
                    mark.process, mark.checkpoint
                ));
                self.write_to_sinks(0, verity_core::sink::OutputMessage::MemberMark(mark));
            }
            Action::MemberMark(mark) => {
                let failure = format!(
                    "process {} sent a sink mark in a seed whose sink process 0 writes",
                    mark.process
                );
                self.net.failure.get_or_insert(failure);
            }
            Action::Flush => {
                self.trace(format_args!("process {process}: flushes"));
                self.lifecycles.flushing[process as usize] = true;
                self.set_closing(process);
            }
            Action::Exit { outcome, reason } => {
                // The command line's contract: 0 done, 1 failed, 130 stopped.
                let code = outcome.exit_code();
                let expected = match outcome {
                    Outcome::Done => 0,
                    Outcome::Failed => 1,
                    Outcome::Stopped => 130,
                };
                if code != expected {
                    let failure =
                        format!("process {process} exits {outcome:?} with code {code}, not {expected}");
                    self.net.failure.get_or_insert(failure);
                }
                self.trace(format_args!("process {process}: exits {outcome:?} {reason:?}"));
                self.lifecycles.exits[process as usize] = Some((outcome, reason));
                self.lifecycles.exited_at_us[process as usize] = Some(self.now_us);
                if outcome != Outcome::Done {
                    let unreported = !self.all_sent(process);
                    let lost_by_us = self.now_us + PEER_LOST_MS * 1000 + EXIT_AFTER_FAILURE_US;
                    let now_us = self.now_us;
                    if let Some(injected) = self.lifecycles.injected.as_mut() {
                        if unreported {
                            // Its report did not get through in time: the others
                            // learn of it only when they give the peer up.
                            injected.exit_by_us = injected.exit_by_us.max(lost_by_us);
                        } else if process == 0 {
                            injected.leader_reported_at_us = Some(now_us);
                        }
                    }
                }
                // As in production, an exited process is gone: whatever it
                // had not got acked is lost with it.
                self.kill(process);
            }
        }
    }

    /// The `stop` fault: a stop request (Ctrl-C, SIGTERM) reaches process 0,
    /// or every process, now.
    pub(super) fn request_stop(&mut self, everyone: bool) {
        if self.exited(0) {
            return self.trace(format_args!("fault: stop: process 0 already exited"));
        }
        self.stats.fault("stop");
        self.trace(format_args!("fault: stop requested (everyone: {everyone})"));
        self.lifecycles.stop_requested_at_us = Some(self.now_us);
        let reached = if everyone { self.config.processes } else { 1 };
        for process in 0..reached {
            if !self.exited(process) {
                self.lifecycle_event(process, LifeEvent::StopRequested);
            }
        }
    }

    /// A stopped seed's end: process 0 exits within the graceful-stop
    /// deadline (and what it takes to report); once all exited, either the
    /// run completed (process 0 done; its output is then checked against the
    /// input read before the stop) or process 0 exited stopped and no
    /// process claims to be done.
    fn stopped_end(&self, stop_at_us: u64) -> Option<Result<(), String>> {
        let bound_us = stop_at_us + STOP_EXIT_BOUND_US;
        if self.lifecycles.exits[0].is_none() && self.now_us > bound_us {
            return Some(Err(format!(
                "a stop reached process 0 at {stop_at_us} us, but it still ran {} ms later",
                (self.now_us - stop_at_us) / 1000
            )));
        }
        if !self.lifecycles.exits.iter().all(Option::is_some) {
            return None;
        }
        let completed = self.leader_exited_done();
        // Process 0's stop deadline, as its clock may see it (jumps, ticks).
        let deadline_us = stop_at_us + GRACEFUL_STOP_DEADLINE_MS * 1000;
        let slack_us = 2 * PEER_TIMEOUT_US + 2 * TICK_US;
        let finished_at = self.lifecycles.leader_finished_at_us;
        let leader_exit_us = self.lifecycles.exited_at_us[0].expect("process 0 exited");
        if !self.lifecycles.sources_stopped && finished_at.is_none_or(|at| at > stop_at_us) {
            return Some(Err(
                "a stop reached process 0 while its job ran, but its sources never stopped".into(),
            ));
        }
        if finished_at.is_none_or(|at| at > deadline_us + slack_us) && completed {
            return Some(Err(format!(
                "process 0 was still running its job {} ms after the stop, past the stop deadline, and exited done",
                (finished_at.unwrap_or(leader_exit_us) - stop_at_us) / 1000
            )));
        }
        if !completed && finished_at.is_none() && leader_exit_us + slack_us < deadline_us {
            return Some(Err(format!(
                "process 0 gave up on the stop {} ms after it, before the stop deadline",
                (leader_exit_us - stop_at_us) / 1000
            )));
        }
        for (process, exit) in self.lifecycles.exits.iter().enumerate() {
            let (outcome, reason) = exit.as_ref().expect("every process exited");
            // A process whose own stop deadline passed exits stopped and
            // reports it, so the others may exit failed.
            let fine = match outcome {
                Outcome::Done => completed,
                Outcome::Stopped | Outcome::Failed => !completed || process != 0,
            };
            if !fine {
                return Some(Err(format!(
                    "after a stop, process {process} exited {outcome:?} ({}) while process 0 {}",
                    reason.as_deref().unwrap_or("no reason"),
                    if completed { "completed" } else { "did not" }
                )));
            }
        }
        Some(Ok(()))
    }

    /// Something outside the lifecycle (the network: a peer lost for good)
    /// means `process` cannot go on.
    pub(super) fn lifecycle_failed(&mut self, process: u32, reason: String) {
        if !self.exited(process) {
            self.lifecycle_event(process, LifeEvent::Failed { reason });
        }
    }

    /// The `fail` fault: `process` fails now (if it still runs).
    pub(super) fn inject_failure(&mut self, process: u32) {
        if self.exited(process) || self.lifecycles.injected.is_some() {
            return self.trace(format_args!("fault: fail process {process}: it already exited"));
        }
        self.stats.fault("fail");
        self.trace(format_args!("fault: process {process} fails"));
        self.lifecycles.injected = Some(InjectedFailure {
            process,
            running: (0..self.config.processes).map(|p| !self.exited(p)).collect(),
            exit_by_us: self.now_us.max(self.heal_us) + EXIT_AFTER_FAILURE_US,
            leader_reported_at_us: None,
        });
        let mut reason = FAIL_REASON.to_string();
        if self.rng.chance(1, 2) {
            // A reason longer than a control message carries (a panic with
            // a long message), cut where a character would be split.
            reason.push(' ');
            reason.extend(std::iter::repeat_n('é', REASON_SIZE_MAX_BYTES));
        }
        self.lifecycle_event(process, LifeEvent::Failed { reason });
    }

    /// A failure seed, once every process exited. If process 0 exited done,
    /// all output was in before the failure could stop it (the output is
    /// then checked as in any seed); else every process that still ran when
    /// the failure struck exited failed. The failing process exits failed
    /// with its reason, and process 0, if it failed, names the failure.
    fn judge_failure(&self, injected: &InjectedFailure) -> Result<(), String> {
        let failing = injected.process;
        let completed = self.leader_exited_done();
        for (process, exit) in self.lifecycles.exits.iter().enumerate() {
            if !injected.running[process] {
                continue;
            }
            let (outcome, reason) = exit.as_ref().expect("every process exited");
            let reason = reason.as_deref().unwrap_or("");
            let why = match outcome {
                // All output was in: a process that was already ending
                // (process 0 after its job, a worker after `Shutdown`) ends
                // done, the failing one too.
                Outcome::Done if completed => continue,
                Outcome::Failed if process as u32 == failing && !reason.contains(FAIL_REASON) => {
                    "the failing process exited failed without its reason"
                }
                Outcome::Failed
                    if process == 0
                        && !reason.contains(FAIL_REASON)
                        && !reason.contains(&format!("process {failing}")) =>
                {
                    "process 0 exited failed without naming the failure"
                }
                Outcome::Failed => continue,
                _ => "it did not exit failed",
            };
            return Err(format!(
                "process {failing} failed and process {process} exited {outcome:?} ({reason:?}): {why}"
            ));
        }
        Ok(())
    }

    /// Process 0 exited done: the run completed (its output is whole).
    pub(super) fn leader_exited_done(&self) -> bool {
        matches!(self.lifecycles.exits[0], Some((Outcome::Done, _)))
    }

    pub(super) fn exited(&self, process: u32) -> bool {
        self.lifecycles.exits[process as usize].is_some()
    }

    /// Tells `process`'s lifecycle what arrived and what ended since it last
    /// heard: control messages, the end of its job, everything acked.
    pub(super) fn step_lifecycle(&mut self, process: u32) {
        if self.paused(process) || self.exited(process) {
            return;
        }
        // Process 0 hears from every worker; a worker from process 0 only.
        let peers = if process == 0 {
            1..self.config.processes
        } else {
            0..1
        };
        for from in peers {
            let channel = if process == 0 {
                channel_id::control_up(from)
            } else {
                channel_id::control(process)
            };
            while let Some(frame) = self.take_frame(channel) {
                let event = match decode_control(&frame) {
                    Ok(message) => LifeEvent::Control { from, message },
                    Err(e) => LifeEvent::Failed {
                        reason: format!("control message from process {from}: {e}"),
                    },
                };
                self.lifecycle_event(process, event);
            }
        }
        let p = process as usize;
        if process == 0 {
            self.forward_readers_progress();
        }
        if self.lifecycles.job_started[p] && !self.lifecycles.job_finished[p] && self.job_done(process) {
            self.lifecycles.job_finished[p] = true;
            if process == 0 {
                self.lifecycles.leader_finished_at_us = Some(self.now_us);
            }
            self.trace(format_args!("process {process}: its job finished"));
            self.lifecycle_event(process, LifeEvent::JobFinished);
        }
        if self.lifecycles.flushing[p] && !self.exited(process) && self.all_sent(process) {
            self.lifecycle_event(process, LifeEvent::AllSent);
        }
    }

    /// Process 0's readers' progress, handed to its lifecycle whenever it
    /// changed (a checkpoint requested or complete, a stop) in a job with
    /// spread sources, as the production supervisor does before it looks at
    /// the job's end.
    fn forward_readers_progress(&mut self) {
        // As in production, only a job with spread sources has readers
        // outside process 0 to tell.
        let job = &self.lifecycles.job;
        if !self.lifecycles.job_started[0] || (job.spread_sources.is_empty() && job.member_sink.is_none()) {
            return;
        }
        let progress = self.output.progress();
        let now = ReadersProgress {
            requested: progress.requested.load(Ordering::Relaxed),
            committed: progress.committed.load(Ordering::Relaxed),
            stopping: self.lifecycles.sources_stopped,
        };
        if now != self.lifecycles.readers_told {
            self.lifecycles.readers_told = now;
            self.lifecycles.readers_published = now;
            self.lifecycle_event(0, LifeEvent::ReadersProgress(now));
        }
    }

    /// A worker's lifecycle hands its readers `progress`: within a life it
    /// never goes back, and it is never ahead of what process 0 published.
    fn readers_heard(&mut self, process: u32, progress: ReadersProgress) {
        let heard = &mut self.lifecycles.readers_heard[process as usize];
        let told = self.lifecycles.readers_published;
        let backwards = progress.requested < heard.requested
            || progress.committed < heard.committed
            || (heard.stopping && !progress.stopping);
        // `ALL` also comes with the `Shutdown` (the output is final), before
        // the simulated output thread says so at the seed's end.
        let ahead = progress.requested > told.requested
            || (progress.committed > told.committed && progress.committed != ReaderProgress::ALL)
            || (progress.stopping && !told.stopping);
        *heard = progress;
        if process == 0 || backwards || ahead {
            let failure = format!(
                "process {process}'s readers are told {progress:?} (heard before {heard:?}, process 0 published {told:?})",
                heard = self.lifecycles.readers_heard[process as usize],
            );
            self.net.failure.get_or_insert(failure);
        }
    }

    /// What `process`'s lifecycle last handed its readers.
    pub(super) fn readers_progress_of(&self, process: u32) -> ReadersProgress {
        self.lifecycles.readers_heard[process as usize]
    }

    /// Time passes for every lifecycle (deadlines).
    pub(super) fn tick_lifecycles(&mut self) {
        for process in 0..self.config.processes {
            if self.paused(process) || self.exited(process) {
                continue;
            }
            self.step_lifecycle(process);
            self.lifecycle_event(process, LifeEvent::Tick);
        }
    }

    /// A process's part of the job ended: as in production, process 0's when
    /// its shards finished and every remote shard's `Finished` is in; a
    /// worker's when its shards finished and sent their `Finished`.
    pub(super) fn job_done(&self, process: u32) -> bool {
        if process == 0 {
            // With sinks written by every process, the output is in once
            // every worker's sink reported its end too.
            let awaits = self
                .output
                .output()
                .is_some_and(|o| o.writer().awaits_member_ends());
            return self.is_done() && !awaits;
        }
        // A production shard driver is finished once its `Finished` is sent;
        // a worker's own sink, once it flushed its output.
        self.layout.shards_of(process).all(|shard| {
            self.drivers[shard as usize]
                .as_ref()
                .is_some_and(|d| d.is_finished())
        }) && self.members[process as usize]
            .as_ref()
            .is_none_or(MemberSink::flushed)
    }

    /// Which processes have not exited, for a liveness report.
    pub(super) fn describe_lifecycles(&self) -> String {
        let running: Vec<usize> = (0..self.lifecycles.exits.len())
            .filter(|p| self.lifecycles.exits[*p].is_none())
            .collect();
        format!("processes not exited: {running:?}")
    }

    /// The seed's end once every process exited: `Ok` if all exited done,
    /// else why one did not. `None` while any process runs.
    pub(super) fn lifecycle_end(&self) -> Option<Result<(), String>> {
        // A survivor noticed a restarted process: the run fails everywhere
        // (processes exit failed), and then the whole cluster restarts.
        if self.restart_noticed() {
            return self.restart_end();
        }
        if let Some(injected) = &self.lifecycles.injected {
            let all_exited = self.lifecycles.exits.iter().all(Option::is_some);
            let told = injected
                .leader_reported_at_us
                .map(|at| at + EXIT_AFTER_FAILURE_US);
            if !all_exited && told.is_some_and(|by| self.now_us > by) {
                return Some(Err(format!(
                    "process {} failed and process 0 exited with its reports taken, but {} still ran",
                    injected.process,
                    self.describe_lifecycles(),
                )));
            }
            if !all_exited && self.now_us > injected.exit_by_us {
                return Some(Err(format!(
                    "process {} failed, but {} still ran {} ms after the failure could be reported",
                    injected.process,
                    self.describe_lifecycles(),
                    EXIT_AFTER_FAILURE_US / 1000
                )));
            }
            return all_exited.then(|| self.judge_failure(injected));
        }
        if let Some(stop_at_us) = self.lifecycles.stop_requested_at_us {
            return self.stopped_end(stop_at_us);
        }
        let running = !self.lifecycles.exits.iter().all(Option::is_some);
        let shutdown_by_us = self
            .lifecycles
            .leader_finished_at_us
            .map(|at| at.max(self.heal_us) + SHUTDOWN_BOUND_US);
        if running && shutdown_by_us.is_some_and(|by| self.now_us > by) {
            return Some(Err(format!(
                "all output was in, but {} still ran {} ms later (after the faults healed): the shutdown is stuck",
                self.describe_lifecycles(),
                SHUTDOWN_BOUND_US / 1000
            )));
        }
        let failed = self
            .lifecycles
            .exits
            .iter()
            .enumerate()
            .find_map(|(process, exit)| match exit {
                Some((Outcome::Done, _)) | None => None,
                Some((outcome, reason)) => Some(format!(
                    "process {process} exited {outcome:?}: {}",
                    reason.as_deref().unwrap_or("no reason")
                )),
            });
        if let Some(failed) = failed {
            return Some(Err(failed));
        }
        self.lifecycles
            .exits
            .iter()
            .all(Option::is_some)
            .then_some(Ok(()))
    }
}
