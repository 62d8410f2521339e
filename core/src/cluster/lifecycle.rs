//! The cluster lifecycle — job distribution, start, finish, shutdown and
//! failure — as two sans-IO state machines: `LeaderLifecycle` (process 0) and
//! `WorkerLifecycle` (processes 1 and up).
//!
//! They take `Event`s (a control message came from process N, this process's
//! job finished, a failure was seen, a stop was requested, everything sent is
//! acked, time passed) with the time `now_ms`, and return `Action`s (send a
//! control message, start the job, stop the sources, flush, exit). They never
//! touch a thread, a socket or a clock: the binary drives them with the
//! network thread and the OS clock, and the simulator can drive the very same
//! machines with simulated links and virtual time.
//!
//! The protocol: process 0 sends every worker the `Job`; a worker starts its
//! shards only when the job arrives. Process 0's job ends when every shard
//! (its own and the workers', whose `Finished` come on the output channels)
//! has finished; then it sends `Shutdown`, and a worker whose own job ended
//! exits once it has that. Any failure ends the run everywhere within a
//! bounded time: a worker reports `Failed` to process 0 and exits; process 0
//! sends `Abort` to the other workers and exits; a worker that gets `Abort`
//! exits. A failing process waits at most `failure_report_ms` for its last
//! messages to be acked, so a lost peer cannot keep it alive. While the job
//! runs, process 0 tells the workers its readers' progress (`Control::Readers`,
//! on `Event::ReadersProgress`): the readers of spread sources on a worker deal
//! checkpoint barriers, commit cuts and stop by it.
//!
//! ## What a driver does
//!
//! * `Start` once, when the network is up (a worker starts waiting for its job).
//! * `Control { from, message }` for every frame on this process's control
//!   channels (`channel_id::control(p)`: 0 → p, `channel_id::control_up(p)`:
//!   p → 0), decoded by `codec::decode_control`; a frame that does not decode
//!   is a `Failed`. `ControlLinks` are production's channels.
//! * `JobFinished` once, after `StartJob`, when this process's part ended:
//!   for process 0, its own shards and every remote shard's
//!   `Upstream::Finished` are in; for a worker, its shards finished and sent
//!   their `Finished`.
//! * `Failed` for anything else that means the run cannot go on.
//! * `AllSent` after `Flush`, once every frame handed to the network is acked.
//! * `Tick` often (every event checks the deadlines, against `now_ms` of this
//!   process's clock).
//!
//! Actions are carried out in order; after `Exit` the machine takes nothing.

/// How long a stop (first Ctrl-C or SIGTERM) may take to end the run
/// gracefully before the process gives up and exits anyway.
pub const GRACEFUL_STOP_DEADLINE_MS: u64 = 10_000;
/// How long process 0 waits, after `Shutdown`, for the workers to ack it.
pub const SHUTDOWN_DEADLINE_MS: u64 = 10_000;
/// How long a failing process waits for its failure report (`Failed`,
/// `Abort`) to be acked before it exits.
pub const FAILURE_REPORT_DEADLINE_MS: u64 = 2_000;
/// How long a worker waits for its job from process 0 (the binary uses
/// `--peer-lost-ms` instead).
pub const JOB_WAIT_DEADLINE_MS: u64 = 30_000;
/// Longest failure reason a control message carries; longer ones are cut.
pub const REASON_SIZE_MAX_BYTES: usize = 4_096;
/// Frames of a control queue a `Control::Readers` update leaves free, so the
/// messages that end a run (`Shutdown`, `Abort`, `Failed`) always fit: a
/// driver skips an update that would take them (`Control::superseded`) and
/// sends the newest progress at a later turn instead.
pub const CONTROL_FRAMES_KEPT_FREE: usize = 1;
/// Longest app name a job may carry.
pub const APP_NAME_SIZE_MAX_BYTES: usize = 64;
/// Longest state dir path and job fingerprint a job may carry.
pub const JOB_TEXT_SIZE_MAX_BYTES: usize = 4_096;
/// Longest resume mark a worker's own sink may send process 0 for a
/// checkpoint (`Control::SinkMark`: one control frame). A Kafka sink's mark
/// holds a copy of its open transaction, so a longer one means checkpoints
/// are too far apart for the output rate.
pub const SINK_MARK_SIZE_MAX_BYTES: usize = 4 << 20;

/// What process 0 tells every worker to run: enough to build the same
/// dataflow (the sources themselves live on process 0, except the spread
/// ones every process reads its partitions of).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The app's name (`AppName::name`); the binary maps it back.
    pub app: String,
    /// wordcount: final counts instead of running ones.
    pub final_counts: bool,
    /// market-spread: the stale-quote rule (`--max-quote-age-ms`).
    pub max_quote_age_ms: Option<u64>,
    /// Sources of the dataflow (market-spread reads one or two streams).
    pub sources: u32,
    pub batch_max: u32,
    pub queue_depth_batches: u32,
    /// The sink discards output (`--output null`): workers need not send it.
    pub discard_output: bool,
    /// The sink wants each output line's input id (`SinkConnector::wants_ids`,
    /// e.g. `verity bench`'s latency sink): workers collect and send them.
    pub output_ids: bool,
    /// The run takes checkpoints (`--state-dir`).
    pub checkpoints: Option<JobCheckpoints>,
    /// The sources read on every process (`SourceConnector::
    /// readable_on_every_process`, with more than one partition): each
    /// source's index and its argument, from which a worker builds the
    /// connector and reads its own partitions (`runtime::Streams`).
    pub spread_sources: Vec<(u32, String)>,
    /// The sink's argument when every process writes its own shards'
    /// output into it (`SinkConnector::written_by_every_process`): a worker
    /// builds it through `Connectors` and drives it as a
    /// `member_sink::MemberSink`. `None`: process 0 writes all output.
    pub member_sink: Option<String>,
}

/// A run's checkpoints, as a worker needs to know them: where its shards'
/// state is restored from. A worker of such a run that fails starts over
/// and waits for the next job (the cluster restarts from the last checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCheckpoints {
    /// The state dir, at the same path on every process.
    pub state_dir: String,
    /// The job's fingerprint in every manifest.
    pub fingerprint: String,
    /// The id in the store of the checkpoint the run continues from (not its
    /// number: ids also count torn checkpoints); 0 for a run from the start.
    pub restore_from: u64,
}

/// The control messages between process 0 and a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Process 0 → worker: run this.
    Job(Job),
    /// Process 0 → worker: every shard finished and all output is in; exit.
    Shutdown,
    /// Process 0 → worker: the run failed; exit at once.
    Abort { reason: String },
    /// Worker → process 0: this worker failed; the run cannot go on.
    Failed { reason: String },
    /// Process 0 → worker: what its readers of spread sources must know
    /// (`source::ReaderProgress`): the checkpoint requested (they deal its
    /// barrier), the newest one complete (they commit its cut; `ALL` once
    /// the output is final), and whether the sources are to stop.
    Readers(ReadersProgress),
    /// Worker → process 0: this worker's own sink (a sink written by every
    /// process, `member_sink`) took the barrier of `checkpoint`
    /// (`MemberMark::END`: its output is all flushed) with this resume mark.
    SinkMark { checkpoint: u64, mark: Vec<u8> },
}

impl Control {
    /// A later message of the same kind says all this one says (progress
    /// only grows): a driver may skip it when the queue is short of room
    /// (`CONTROL_FRAMES_KEPT_FREE`), as long as it sends the newest later.
    pub fn superseded(&self) -> bool {
        matches!(self, Control::Readers(_))
    }
}

/// What process 0's output thread and supervisor tell every reader of the
/// run; a worker's readers of spread sources learn it through
/// `Control::Readers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadersProgress {
    pub requested: u64,
    pub committed: u64,
    pub stopping: bool,
}

/// How a process ends, and its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The run ended (to the end of its input, or stopped early in time).
    Done,
    Failed,
    /// A stop request was not honoured within the deadline.
    Stopped,
}

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Done => 0,
            Outcome::Failed => 1,
            Outcome::Stopped => 130,
        }
    }
}

/// What happened, as the driver tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The network is up; begin.
    Start,
    /// A control message arrived from process `from`.
    Control { from: u32, message: Control },
    /// This process's job ended: all the shards it waits for finished.
    JobFinished,
    /// Something seen outside the machine means the run cannot go on: a
    /// panicked thread, a peer lost for good, a local worker process exited,
    /// a job that failed, a malformed control message.
    Failed { reason: String },
    /// A stop was requested (first Ctrl-C or SIGTERM).
    StopRequested,
    /// Every frame handed to the network so far is acked (after `Flush`).
    AllSent,
    /// Time passed (deadlines are checked on every event, this one included).
    Tick,
    /// Process 0: its readers' progress changed (a checkpoint requested or
    /// complete, the output final, a stop); the workers are told.
    ReadersProgress(ReadersProgress),
    /// Worker: its own sink took a checkpoint's barrier (or the end's);
    /// process 0 is told. A mark longer than `SINK_MARK_SIZE_MAX_BYTES`
    /// fails the run.
    SinkMark { checkpoint: u64, mark: Vec<u8> },
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send {
        to: u32,
        message: Control,
    },
    /// Build the job's dataflow and run this process's part of it; report
    /// `JobFinished` (or `Failed`) when it ends.
    StartJob(Job),
    /// Process 0: end the sources early (a graceful stop).
    StopSources,
    /// Report `AllSent` once every frame handed to the network so far is acked.
    Flush,
    /// Worker: hand this to the readers of this process's spread sources
    /// (and to its own sink, which commits what process 0 completed).
    ReadersProgress(ReadersProgress),
    /// Process 0: hand this worker's sink mark to the output thread, whose
    /// checkpoint waits for every worker's.
    MemberMark(crate::member_sink::MemberMark),
    /// End the process with `outcome.exit_code()`; `reason` says why (for a
    /// `Done` outcome it is a warning).
    Exit {
        outcome: Outcome,
        reason: Option<String>,
    },
}

/// The time limits of a lifecycle (`Deadlines::default()` for production).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub graceful_stop_ms: u64,
    pub shutdown_ms: u64,
    pub failure_report_ms: u64,
    /// Worker: how long to wait for the job before giving up.
    pub job_wait_ms: u64,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            graceful_stop_ms: GRACEFUL_STOP_DEADLINE_MS,
            shutdown_ms: SHUTDOWN_DEADLINE_MS,
            failure_report_ms: FAILURE_REPORT_DEADLINE_MS,
            job_wait_ms: JOB_WAIT_DEADLINE_MS,
        }
    }
}

/// Cuts `reason` to `REASON_SIZE_MAX_BYTES` on a character boundary.
pub fn bounded_reason(reason: &str) -> String {
    if reason.len() <= REASON_SIZE_MAX_BYTES {
        return reason.to_string();
    }
    let mut end = REASON_SIZE_MAX_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// The part both machines share: failing, flushing, exiting and the stop deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    /// Not ending.
    No,
    /// Flushing the last messages, then exit; exit anyway at `until_ms`.
    Flushing {
        until_ms: u64,
        outcome: Outcome,
        reason: Option<String>,
    },
    Exited,
}

#[derive(Debug, Clone)]
struct Common {
    deadlines: Deadlines,
    ending: Ending,
    stop_deadline_ms: Option<u64>,
}

impl Common {
    fn new(deadlines: Deadlines) -> Common {
        Common {
            deadlines,
            ending: Ending::No,
            stop_deadline_ms: None,
        }
    }

    fn ending(&self) -> bool {
        self.ending != Ending::No
    }

    /// Flush what was sent, then exit with `outcome`; at most `within_ms` from now.
    fn end(&mut self, now_ms: u64, within_ms: u64, outcome: Outcome, reason: Option<String>) -> Action {
        assert_eq!(self.ending, Ending::No, "a process ends once");
        self.ending = Ending::Flushing {
            until_ms: now_ms.saturating_add(within_ms),
            outcome,
            reason,
        };
        Action::Flush
    }

    fn exit_now(&mut self, outcome: Outcome, reason: Option<String>) -> Action {
        self.ending = Ending::Exited;
        Action::Exit { outcome, reason }
    }

    /// `AllSent` or a passed flush deadline ends a flushing process.
    fn finish_flush(&mut self, now_ms: u64, all_sent: bool, actions: &mut Vec<Action>) {
        if let Ending::Flushing {
            until_ms,
            outcome,
            reason,
        } = &self.ending
        {
            if all_sent || now_ms >= *until_ms {
                let (outcome, reason) = (*outcome, reason.clone());
                actions.push(self.exit_now(outcome, reason));
            }
        }
    }

    fn stop_requested(&mut self, now_ms: u64) -> bool {
        let first = self.stop_deadline_ms.is_none();
        if first {
            self.stop_deadline_ms = Some(now_ms.saturating_add(self.deadlines.graceful_stop_ms));
        }
        first
    }

    fn stop_overdue(&self, now_ms: u64) -> bool {
        !self.ending() && self.stop_deadline_ms.is_some_and(|deadline| now_ms >= deadline)
    }

    fn stop_overdue_reason(&self) -> String {
        format!(
            "the run did not stop within {} ms of the stop request",
            self.deadlines.graceful_stop_ms
        )
    }
}

/// Process 0's lifecycle.
#[derive(Debug, Clone)]
pub struct LeaderLifecycle {
    processes: u32,
    job: Job,
    started: bool,
    common: Common,
}

impl LeaderLifecycle {
    pub fn new(processes: u32, job: Job, deadlines: Deadlines) -> LeaderLifecycle {
        assert!(processes >= 1, "a cluster has process 0");
        LeaderLifecycle {
            processes,
            job,
            started: false,
            common: Common::new(deadlines),
        }
    }

    pub fn is_exited(&self) -> bool {
        self.common.ending == Ending::Exited
    }

    pub fn handle(&mut self, now_ms: u64, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.is_exited() {
            return actions;
        }
        match event {
            Event::Start => self.start(&mut actions),
            Event::Control { from, message } => self.on_control(now_ms, from, message, &mut actions),
            Event::JobFinished => self.on_job_finished(now_ms, &mut actions),
            Event::Failed { reason } => self.fail(now_ms, Outcome::Failed, reason, None, &mut actions),
            Event::StopRequested => {
                if self.common.stop_requested(now_ms) && !self.common.ending() {
                    actions.push(Action::StopSources);
                }
            }
            Event::AllSent => self.common.finish_flush(now_ms, true, &mut actions),
            Event::Tick => {}
            Event::SinkMark { .. } => {
                let reason = "process 0 reported a worker's sink mark of its own".to_string();
                self.fail(now_ms, Outcome::Failed, reason, None, &mut actions);
            }
            Event::ReadersProgress(progress) => {
                if self.started && !self.common.ending() {
                    for to in self.workers() {
                        actions.push(Action::Send {
                            to,
                            message: Control::Readers(progress),
                        });
                    }
                }
            }
        }
        self.check_deadlines(now_ms, &mut actions);
        actions
    }

    fn workers(&self) -> impl Iterator<Item = u32> {
        1..self.processes
    }

    fn start(&mut self, actions: &mut Vec<Action>) {
        assert!(!self.started, "a lifecycle starts once");
        self.started = true;
        for to in self.workers() {
            actions.push(Action::Send {
                to,
                message: Control::Job(self.job.clone()),
            });
        }
        actions.push(Action::StartJob(self.job.clone()));
    }

    fn on_control(&mut self, now_ms: u64, from: u32, message: Control, actions: &mut Vec<Action>) {
        let reason = match message {
            Control::SinkMark { checkpoint, mark } if self.started => {
                if !self.common.ending() {
                    let mark = crate::member_sink::MemberMark {
                        process: from,
                        checkpoint,
                        mark,
                    };
                    actions.push(Action::MemberMark(mark));
                }
                return;
            }
            Control::Failed { reason } => format!("process {from} failed: {reason}"),
            other => format!("process {from} sent process 0 an unexpected {other:?}"),
        };
        self.fail(now_ms, Outcome::Failed, reason, Some(from), actions);
    }

    fn on_job_finished(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        assert!(self.started, "a job finished that was never started");
        if self.common.ending() {
            return;
        }
        for to in self.workers() {
            actions.push(Action::Send {
                to,
                message: Control::Shutdown,
            });
        }
        let within_ms = self.common.deadlines.shutdown_ms;
        actions.push(self.common.end(now_ms, within_ms, Outcome::Done, None));
    }

    /// The first failure ends the run: every worker but the one that reported
    /// it is told to abort, and the process exits once that is acked.
    fn fail(
        &mut self,
        now_ms: u64,
        outcome: Outcome,
        reason: String,
        reported_by: Option<u32>,
        actions: &mut Vec<Action>,
    ) {
        if self.common.ending() {
            return;
        }
        let reason = bounded_reason(&reason);
        for to in self.workers().filter(|to| Some(*to) != reported_by) {
            actions.push(Action::Send {
                to,
                message: Control::Abort {
                    reason: reason.clone(),
                },
            });
        }
        let within_ms = self.common.deadlines.failure_report_ms;
        actions.push(self.common.end(now_ms, within_ms, outcome, Some(reason)));
    }

    fn check_deadlines(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        if self.common.stop_overdue(now_ms) {
            let reason = self.common.stop_overdue_reason();
            self.fail(now_ms, Outcome::Stopped, reason, None, actions);
        }
        self.common.finish_flush(now_ms, false, actions);
    }
}

/// A worker's lifecycle (process 1 and up).
#[derive(Debug, Clone)]
pub struct WorkerLifecycle {
    process_id: u32,
    state: WorkerState,
    common: Common,
    /// What this process's readers were last handed.
    readers: ReadersProgress,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum WorkerState {
    New,
    AwaitingJob {
        until_ms: u64,
    },
    Running {
        shutdown_seen: bool,
    },
    /// The job ended; process 0 has not yet said everything is in.
    AwaitingShutdown,
    Ended,
}

impl WorkerLifecycle {
    pub fn new(process_id: u32, deadlines: Deadlines) -> WorkerLifecycle {
        assert!(process_id >= 1, "process 0 leads");
        WorkerLifecycle {
            process_id,
            state: WorkerState::New,
            common: Common::new(deadlines),
            readers: ReadersProgress::default(),
        }
    }

    pub fn is_exited(&self) -> bool {
        self.common.ending == Ending::Exited
    }

    /// Whether the job was started (the simulator starts shards only then).
    pub fn job_started(&self) -> bool {
        matches!(
            self.state,
            WorkerState::Running { .. } | WorkerState::AwaitingShutdown
        )
    }

    pub fn handle(&mut self, now_ms: u64, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.is_exited() {
            return actions;
        }
        match event {
            Event::Start => {
                assert_eq!(self.state, WorkerState::New, "a lifecycle starts once");
                let until_ms = now_ms.saturating_add(self.common.deadlines.job_wait_ms);
                self.state = WorkerState::AwaitingJob { until_ms };
            }
            Event::Control { from: 0, message } => self.on_control(now_ms, message, &mut actions),
            Event::Control { from, message } => {
                let reason = format!("process {from} sent a worker an unexpected {message:?}");
                self.fail(now_ms, Outcome::Failed, reason, &mut actions);
            }
            Event::JobFinished => self.on_job_finished(now_ms, &mut actions),
            Event::Failed { reason } => self.fail(now_ms, Outcome::Failed, reason, &mut actions),
            // Process 0 owns the sources and decides when the run ends; a
            // stopped worker waits for that, up to the stop deadline.
            Event::StopRequested => {
                self.common.stop_requested(now_ms);
            }
            Event::AllSent => self.common.finish_flush(now_ms, true, &mut actions),
            Event::Tick => {}
            // Only process 0's readers make progress of their own.
            Event::ReadersProgress(_) => {}
            Event::SinkMark { checkpoint, mark } => {
                self.send_sink_mark(now_ms, checkpoint, mark, &mut actions)
            }
        }
        self.check_deadlines(now_ms, &mut actions);
        actions
    }

    fn on_control(&mut self, now_ms: u64, message: Control, actions: &mut Vec<Action>) {
        if self.common.ending() {
            return;
        }
        match (message, &self.state) {
            (Control::Job(job), WorkerState::AwaitingJob { .. }) => {
                self.state = WorkerState::Running { shutdown_seen: false };
                actions.push(Action::StartJob(job));
            }
            // No job was started: nothing to wait for.
            (Control::Shutdown, WorkerState::AwaitingJob { .. }) => {
                self.state = WorkerState::Ended;
                actions.push(self.common.exit_now(Outcome::Done, None));
            }
            // Process 0 has every shard's `Finished` before this process's job
            // has noticed its own shards ended: remember it. A `Shutdown`
            // also says the output is final: the readers commit all they
            // read (whether or not the `Readers` update saying so got here).
            (Control::Shutdown, WorkerState::Running { .. }) => {
                self.state = WorkerState::Running { shutdown_seen: true };
                self.output_final(actions);
            }
            (Control::Shutdown, WorkerState::AwaitingShutdown) => {
                self.output_final(actions);
                self.shut_down(now_ms, actions)
            }
            // The readers may still wait for the last commit after the
            // shards finished.
            (Control::Readers(progress), WorkerState::Running { .. } | WorkerState::AwaitingShutdown) => {
                self.readers = progress;
                actions.push(Action::ReadersProgress(progress))
            }
            (Control::Abort { reason }, _) => {
                self.state = WorkerState::Ended;
                let reason = format!("process 0 ended the run: {reason}");
                actions.push(self.common.exit_now(Outcome::Failed, Some(reason)));
            }
            (message, state) => {
                let reason = format!("process 0 sent an unexpected {message:?} while {state:?}");
                self.fail(now_ms, Outcome::Failed, reason, actions);
            }
        }
    }

    fn on_job_finished(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let WorkerState::Running { shutdown_seen } = self.state else {
            assert!(self.common.ending(), "a job finished that was never started");
            return;
        };
        if self.common.ending() {
            return;
        }
        if shutdown_seen {
            self.shut_down(now_ms, actions);
        } else {
            self.state = WorkerState::AwaitingShutdown;
        }
    }

    fn send_sink_mark(&mut self, now_ms: u64, checkpoint: u64, mark: Vec<u8>, actions: &mut Vec<Action>) {
        if self.common.ending() {
            return;
        }
        if !self.job_started() {
            let reason = format!(
                "process {}'s sink took a barrier before its job started",
                self.process_id
            );
            return self.fail(now_ms, Outcome::Failed, reason, actions);
        }
        if mark.len() > SINK_MARK_SIZE_MAX_BYTES {
            let reason = format!(
                "process {}'s sink mark of checkpoint {checkpoint} is {} bytes, over {SINK_MARK_SIZE_MAX_BYTES}: \
                 take checkpoints more often (--checkpoint-interval-ms)",
                self.process_id,
                mark.len()
            );
            return self.fail(now_ms, Outcome::Failed, reason, actions);
        }
        actions.push(Action::Send {
            to: 0,
            message: Control::SinkMark { checkpoint, mark },
        });
    }

    fn output_final(&mut self, actions: &mut Vec<Action>) {
        if self.readers.committed != crate::source::ReaderProgress::ALL {
            self.readers.committed = crate::source::ReaderProgress::ALL;
            actions.push(Action::ReadersProgress(self.readers));
        }
    }

    fn shut_down(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        self.state = WorkerState::Ended;
        let within_ms = self.common.deadlines.shutdown_ms;
        actions.push(self.common.end(now_ms, within_ms, Outcome::Done, None));
    }

    /// Tells process 0, then exits once that is acked (or the report deadline passed).
    fn fail(&mut self, now_ms: u64, outcome: Outcome, reason: String, actions: &mut Vec<Action>) {
        if self.common.ending() {
            return;
        }
        self.state = WorkerState::Ended;
        let reason = bounded_reason(&reason);
        actions.push(Action::Send {
            to: 0,
            message: Control::Failed {
                reason: reason.clone(),
            },
        });
        let within_ms = self.common.deadlines.failure_report_ms;
        actions.push(self.common.end(now_ms, within_ms, outcome, Some(reason)));
    }

    fn check_deadlines(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        if let WorkerState::AwaitingJob { until_ms } = self.state {
            if now_ms >= until_ms && !self.common.ending() {
                let reason = format!(
                    "no job from process 0 within {} ms",
                    self.common.deadlines.job_wait_ms
                );
                self.state = WorkerState::Ended;
                actions.push(self.common.exit_now(Outcome::Failed, Some(reason)));
            }
        }
        if self.common.stop_overdue(now_ms) {
            let reason = format!(
                "process {} was stopped: {}",
                self.process_id,
                self.common.stop_overdue_reason()
            );
            self.fail(now_ms, Outcome::Stopped, reason, actions);
        }
        self.common.finish_flush(now_ms, false, actions);
    }
}

/// Either role, so one driver loop can run both.
#[derive(Debug, Clone)]
pub enum Lifecycle {
    Leader(LeaderLifecycle),
    Worker(WorkerLifecycle),
}

impl Lifecycle {
    /// The lifecycle of process `process_id` of a `processes`-process cluster
    /// (process 0 needs the job it distributes).
    pub fn new(process_id: u32, processes: u32, job: Option<Job>, deadlines: Deadlines) -> Lifecycle {
        assert!(process_id < processes, "process {process_id} is in the cluster");
        match (process_id, job) {
            (0, Some(job)) => Lifecycle::Leader(LeaderLifecycle::new(processes, job, deadlines)),
            (0, None) => panic!("process 0 needs the job it distributes"),
            (id, _) => Lifecycle::Worker(WorkerLifecycle::new(id, deadlines)),
        }
    }

    pub fn handle(&mut self, now_ms: u64, event: Event) -> Vec<Action> {
        match self {
            Lifecycle::Leader(leader) => leader.handle(now_ms, event),
            Lifecycle::Worker(worker) => worker.handle(now_ms, event),
        }
    }

    pub fn is_exited(&self) -> bool {
        match self {
            Lifecycle::Leader(leader) => leader.is_exited(),
            Lifecycle::Worker(worker) => worker.is_exited(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            app: "doubler".into(),
            final_counts: false,
            max_quote_age_ms: None,
            sources: 1,
            batch_max: 256,
            queue_depth_batches: 64,
            discard_output: false,
            output_ids: false,
            checkpoints: None,
            spread_sources: Vec::new(),
            member_sink: None,
        }
    }

    fn deadlines() -> Deadlines {
        Deadlines {
            graceful_stop_ms: 1_000,
            shutdown_ms: 500,
            failure_report_ms: 200,
            job_wait_ms: 3_000,
        }
    }

    fn exit(actions: &[Action]) -> Option<(Outcome, Option<String>)> {
        actions.iter().find_map(|a| match a {
            Action::Exit { outcome, reason } => Some((*outcome, reason.clone())),
            _ => None,
        })
    }

    fn sent(actions: &[Action]) -> Vec<(u32, Control)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { to, message } => Some((*to, message.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn leader_sends_the_job_then_shutdown_and_exits_once_acked() {
        let mut leader = LeaderLifecycle::new(3, job(), deadlines());
        let start = leader.handle(0, Event::Start);
        assert_eq!(
            start,
            vec![
                Action::Send {
                    to: 1,
                    message: Control::Job(job())
                },
                Action::Send {
                    to: 2,
                    message: Control::Job(job())
                },
                Action::StartJob(job()),
            ]
        );
        let finished = leader.handle(10, Event::JobFinished);
        assert_eq!(sent(&finished), [(1, Control::Shutdown), (2, Control::Shutdown)]);
        assert_eq!(finished.last(), Some(&Action::Flush));
        assert!(leader.handle(20, Event::Tick).is_empty());
        assert_eq!(
            exit(&leader.handle(30, Event::AllSent)),
            Some((Outcome::Done, None))
        );
        assert!(leader.is_exited());
        assert!(leader
            .handle(
                40,
                Event::Failed {
                    reason: "late".into()
                }
            )
            .is_empty());
    }

    #[test]
    fn leader_exits_after_the_shutdown_deadline_if_never_acked() {
        let mut leader = LeaderLifecycle::new(2, job(), deadlines());
        leader.handle(0, Event::Start);
        leader.handle(100, Event::JobFinished);
        assert!(exit(&leader.handle(599, Event::Tick)).is_none());
        assert_eq!(
            exit(&leader.handle(600, Event::Tick)),
            Some((Outcome::Done, None))
        );
    }

    #[test]
    fn a_worker_failure_aborts_the_others_and_fails_the_leader() {
        let mut leader = LeaderLifecycle::new(4, job(), deadlines());
        leader.handle(0, Event::Start);
        let failed = Control::Failed {
            reason: "shard 3 panicked: boom".into(),
        };
        let actions = leader.handle(
            5,
            Event::Control {
                from: 2,
                message: failed,
            },
        );
        let reason = "process 2 failed: shard 3 panicked: boom".to_string();
        let abort = Control::Abort {
            reason: reason.clone(),
        };
        assert_eq!(sent(&actions), [(1, abort.clone()), (3, abort)]);
        assert_eq!(actions.last(), Some(&Action::Flush));
        // A second failure does not change the reason.
        assert!(leader
            .handle(
                6,
                Event::Failed {
                    reason: "other".into()
                }
            )
            .is_empty());
        // The job ending now is no success.
        assert!(leader.handle(7, Event::JobFinished).is_empty());
        assert_eq!(
            exit(&leader.handle(205, Event::Tick)),
            Some((Outcome::Failed, Some(reason)))
        );
    }

    #[test]
    fn a_local_failure_aborts_every_worker() {
        let mut leader = LeaderLifecycle::new(3, job(), deadlines());
        leader.handle(0, Event::Start);
        let actions = leader.handle(
            1,
            Event::Failed {
                reason: "a shard panicked".into(),
            },
        );
        assert_eq!(sent(&actions).len(), 2);
        assert_eq!(
            exit(&leader.handle(2, Event::AllSent)),
            Some((Outcome::Failed, Some("a shard panicked".into())))
        );
    }

    #[test]
    fn a_stop_ends_the_sources_and_has_a_deadline() {
        let mut leader = LeaderLifecycle::new(2, job(), deadlines());
        leader.handle(0, Event::Start);
        assert_eq!(leader.handle(100, Event::StopRequested), [Action::StopSources]);
        assert!(
            leader.handle(200, Event::StopRequested).is_empty(),
            "the first stop sets the deadline"
        );
        assert!(leader.handle(1_099, Event::Tick).is_empty());
        let overdue = leader.handle(1_100, Event::Tick);
        assert!(matches!(&sent(&overdue)[..], [(1, Control::Abort { .. })]));
        let (outcome, reason) = exit(&leader.handle(1_101, Event::AllSent)).unwrap();
        assert_eq!(outcome, Outcome::Stopped);
        assert_eq!(outcome.exit_code(), 130);
        assert!(reason.unwrap().contains("did not stop within 1000 ms"));
    }

    #[test]
    fn a_stop_honoured_in_time_is_a_clean_end() {
        let mut leader = LeaderLifecycle::new(2, job(), deadlines());
        leader.handle(0, Event::Start);
        leader.handle(100, Event::StopRequested);
        leader.handle(500, Event::JobFinished);
        // The stop deadline passing while shutting down changes nothing.
        assert!(exit(&leader.handle(1_200, Event::Tick)).is_some_and(|(o, _)| o == Outcome::Done));
    }

    #[test]
    fn readers_progress_goes_to_every_worker_and_on_to_their_readers() {
        let progress = ReadersProgress {
            requested: 4,
            committed: 3,
            stopping: false,
        };
        let mut leader = LeaderLifecycle::new(3, job(), deadlines());
        assert!(
            leader.handle(0, Event::ReadersProgress(progress)).is_empty(),
            "nothing before the job"
        );
        leader.handle(0, Event::Start);
        let sent = leader.handle(1, Event::ReadersProgress(progress));
        let readers = Control::Readers(progress);
        assert_eq!(
            sent,
            [
                Action::Send {
                    to: 1,
                    message: readers.clone()
                },
                Action::Send {
                    to: 2,
                    message: readers.clone()
                },
            ]
        );
        let mut worker = WorkerLifecycle::new(1, deadlines());
        worker.handle(0, Event::Start);
        worker.handle(
            1,
            Event::Control {
                from: 0,
                message: Control::Job(job()),
            },
        );
        let heard = worker.handle(
            2,
            Event::Control {
                from: 0,
                message: readers.clone(),
            },
        );
        assert_eq!(heard, [Action::ReadersProgress(progress)]);
        // The shards finished; the readers still wait for the last commit.
        worker.handle(3, Event::JobFinished);
        let all = ReadersProgress {
            committed: crate::source::ReaderProgress::ALL,
            ..progress
        };
        let heard = worker.handle(
            4,
            Event::Control {
                from: 0,
                message: Control::Readers(all),
            },
        );
        assert_eq!(heard, [Action::ReadersProgress(all)]);
        // Before its job, a worker has no readers to tell: a protocol error.
        let mut early = WorkerLifecycle::new(2, deadlines());
        early.handle(0, Event::Start);
        let refused = early.handle(
            1,
            Event::Control {
                from: 0,
                message: readers,
            },
        );
        assert!(
            matches!(
                refused[0],
                Action::Send {
                    to: 0,
                    message: Control::Failed { .. }
                }
            ),
            "{refused:?}"
        );
    }

    #[test]
    fn a_worker_starts_on_the_job_and_exits_after_shutdown() {
        let mut worker = WorkerLifecycle::new(1, deadlines());
        assert!(worker.handle(0, Event::Start).is_empty());
        assert!(!worker.job_started());
        let control = |message| Event::Control { from: 0, message };
        assert_eq!(
            worker.handle(1, control(Control::Job(job()))),
            [Action::StartJob(job())]
        );
        assert!(worker.job_started());
        assert!(worker.handle(2, Event::JobFinished).is_empty());
        // The shutdown says the output is final: the readers commit all.
        let final_commit = Action::ReadersProgress(ReadersProgress {
            committed: crate::source::ReaderProgress::ALL,
            ..ReadersProgress::default()
        });
        assert_eq!(
            worker.handle(3, control(Control::Shutdown)),
            [final_commit, Action::Flush]
        );
        assert_eq!(
            exit(&worker.handle(4, Event::AllSent)),
            Some((Outcome::Done, None))
        );
    }

    #[test]
    fn a_shutdown_before_the_job_noticed_its_end_is_remembered() {
        let mut worker = WorkerLifecycle::new(1, deadlines());
        worker.handle(0, Event::Start);
        let control = |message| Event::Control { from: 0, message };
        worker.handle(1, control(Control::Job(job())));
        let shutdown = worker.handle(2, control(Control::Shutdown));
        assert!(
            matches!(shutdown[..], [Action::ReadersProgress(p)] if p.committed == crate::source::ReaderProgress::ALL),
            "only the readers' final commit: {shutdown:?}"
        );
        assert_eq!(worker.handle(3, Event::JobFinished), [Action::Flush]);
        assert!(exit(&worker.handle(503, Event::Tick)).is_some());
    }

    #[test]
    fn a_worker_failure_is_reported_to_process_0_within_a_deadline() {
        let mut worker = WorkerLifecycle::new(2, deadlines());
        worker.handle(0, Event::Start);
        worker.handle(
            1,
            Event::Control {
                from: 0,
                message: Control::Job(job()),
            },
        );
        let actions = worker.handle(
            10,
            Event::Failed {
                reason: "boom".into(),
            },
        );
        assert_eq!(
            sent(&actions),
            [(
                0,
                Control::Failed {
                    reason: "boom".into()
                }
            )]
        );
        assert!(worker.handle(11, Event::JobFinished).is_empty());
        assert!(exit(&worker.handle(209, Event::Tick)).is_none());
        assert_eq!(
            exit(&worker.handle(210, Event::Tick)),
            Some((Outcome::Failed, Some("boom".into())))
        );
    }

    #[test]
    fn a_worker_exits_at_once_on_abort() {
        let mut worker = WorkerLifecycle::new(1, deadlines());
        worker.handle(0, Event::Start);
        worker.handle(
            1,
            Event::Control {
                from: 0,
                message: Control::Job(job()),
            },
        );
        let abort = Control::Abort {
            reason: "process 2 failed: x".into(),
        };
        let (outcome, reason) = exit(&worker.handle(
            2,
            Event::Control {
                from: 0,
                message: abort,
            },
        ))
        .unwrap();
        assert_eq!(outcome, Outcome::Failed);
        assert_eq!(reason.unwrap(), "process 0 ended the run: process 2 failed: x");
    }

    #[test]
    fn a_worker_refuses_protocol_violations() {
        let control = |from, message| Event::Control { from, message };
        let mut worker = WorkerLifecycle::new(1, deadlines());
        worker.handle(0, Event::Start);
        worker.handle(1, control(0, Control::Job(job())));
        let second = worker.handle(2, control(0, Control::Job(job())));
        assert!(
            matches!(&sent(&second)[..], [(0, Control::Failed { reason })] if reason.contains("unexpected Job"))
        );

        let mut worker = WorkerLifecycle::new(1, deadlines());
        worker.handle(0, Event::Start);
        let foreign = worker.handle(1, control(2, Control::Shutdown));
        assert!(
            matches!(&sent(&foreign)[..], [(0, Control::Failed { reason })] if reason.contains("process 2"))
        );
    }

    #[test]
    fn a_worker_without_a_job_gives_up_or_exits_on_shutdown() {
        let mut worker = WorkerLifecycle::new(1, deadlines());
        worker.handle(0, Event::Start);
        let (outcome, reason) = exit(&worker.handle(3_000, Event::Tick)).unwrap();
        assert_eq!(outcome, Outcome::Failed);
        assert!(reason.unwrap().contains("no job from process 0 within 3000 ms"));

        let mut worker = WorkerLifecycle::new(1, deadlines());
        worker.handle(0, Event::Start);
        let actions = worker.handle(
            1,
            Event::Control {
                from: 0,
                message: Control::Shutdown,
            },
        );
        assert_eq!(exit(&actions), Some((Outcome::Done, None)));
    }

    #[test]
    fn a_stopped_worker_waits_for_process_0_up_to_the_deadline() {
        let mut worker = WorkerLifecycle::new(3, deadlines());
        worker.handle(0, Event::Start);
        worker.handle(
            1,
            Event::Control {
                from: 0,
                message: Control::Job(job()),
            },
        );
        assert!(worker.handle(10, Event::StopRequested).is_empty());
        assert!(worker.handle(1_009, Event::Tick).is_empty());
        let overdue = worker.handle(1_010, Event::Tick);
        assert!(
            matches!(&sent(&overdue)[..], [(0, Control::Failed { reason })] if reason.contains("process 3 was stopped"))
        );
        let (outcome, _) = exit(&worker.handle(1_011, Event::AllSent)).unwrap();
        assert_eq!(outcome, Outcome::Stopped);
    }

    #[test]
    fn reasons_are_bounded_on_a_char_boundary() {
        let long = "é".repeat(REASON_SIZE_MAX_BYTES);
        let cut = bounded_reason(&long);
        assert!(cut.len() <= REASON_SIZE_MAX_BYTES && cut.len() >= REASON_SIZE_MAX_BYTES - 1);
        assert_eq!(bounded_reason("short"), "short");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_control() -> impl Strategy<Value = Control> {
            prop_oneof![
                Just(Control::Job(job())),
                Just(Control::Shutdown),
                Just(Control::Abort { reason: "a".into() }),
                Just(Control::Failed { reason: "f".into() }),
            ]
        }

        fn any_event(processes: u32) -> impl Strategy<Value = Event> {
            prop_oneof![
                (0..processes, any_control()).prop_map(|(from, message)| Event::Control { from, message }),
                Just(Event::JobFinished),
                Just(Event::Failed { reason: "x".into() }),
                Just(Event::StopRequested),
                Just(Event::AllSent),
                Just(Event::Tick),
            ]
        }

        /// What a driver promises: `JobFinished` once, only for a started job.
        #[derive(Default)]
        struct DriverContract {
            job_started: bool,
            job_finished: bool,
        }

        impl DriverContract {
            fn allows(&mut self, event: &Event) -> bool {
                if *event != Event::JobFinished {
                    return true;
                }
                let allowed = self.job_started && !self.job_finished;
                self.job_finished |= allowed;
                allowed
            }

            fn saw(&mut self, actions: &[Action]) {
                self.job_started |= actions.iter().any(|a| matches!(a, Action::StartJob(_)));
            }
        }

        /// Drives `lifecycle` with `events` (each after `dt` ms) and checks what
        /// holds whatever happens: sends go to real peers, the job starts at
        /// most once, an exit is the last action ever, and once anything
        /// ends the run, the process exits by the longest deadline.
        fn check(mut lifecycle: Lifecycle, processes: u32, is_leader: bool, events: Vec<(u64, Event)>) {
            let mut now_ms = 0;
            let mut starts = 0;
            let mut jobs_sent = vec![0; processes as usize];
            let mut exits = 0;
            let mut ending_since = None;
            let mut all = vec![(0, Event::Start)];
            all.extend(events);
            let mut contract = DriverContract::default();
            for (dt, event) in all {
                now_ms += dt;
                if !contract.allows(&event) {
                    continue;
                }
                let actions = lifecycle.handle(now_ms, event);
                if exits > 0 {
                    assert!(actions.is_empty(), "nothing after the exit: {actions:?}");
                }
                for action in &actions {
                    match action {
                        Action::Send { to, message } => {
                            if is_leader {
                                assert!((1..processes).contains(to));
                            } else {
                                assert_eq!(*to, 0);
                            }
                            if let Control::Job(_) = message {
                                jobs_sent[*to as usize] += 1;
                            }
                        }
                        Action::StartJob(_) => {
                            starts += 1;
                            contract.job_started = true;
                        }
                        Action::Flush => {
                            ending_since.get_or_insert(now_ms);
                        }
                        Action::Exit { .. } => exits += 1,
                        Action::StopSources | Action::MemberMark(_) => assert!(is_leader),
                        Action::ReadersProgress(_) => assert!(!is_leader),
                    }
                }
                assert_eq!(lifecycle.is_exited(), exits > 0, "an exit comes as an action");
            }
            assert!(starts <= 1 && exits <= 1 && jobs_sent.iter().all(|n| *n <= 1));
            if is_leader {
                assert_eq!(starts, 1, "process 0 starts its job at once");
            }
            if let Some(since) = ending_since.filter(|_| exits == 0) {
                let d = deadlines();
                let latest = since + d.shutdown_ms.max(d.failure_report_ms);
                let actions = lifecycle.handle(latest.max(now_ms), Event::Tick);
                assert!(
                    matches!(actions.last(), Some(Action::Exit { .. })),
                    "a flushing process exits by its deadline: {actions:?}"
                );
            }
        }

        proptest! {
            #[test]
            fn a_leader_keeps_its_promises(events in prop::collection::vec((0..400u64, any_event(3)), 0..40)) {
                check(Lifecycle::new(0, 3, Some(job()), deadlines()), 3, true, events);
            }

            #[test]
            fn a_worker_keeps_its_promises(events in prop::collection::vec((0..400u64, any_event(3)), 0..40)) {
                check(Lifecycle::new(1, 3, None, deadlines()), 3, false, events);
            }

            /// A failure ends any run, in any state, within the report deadline.
            #[test]
            fn a_failure_always_ends_the_process(
                leader in any::<bool>(),
                events in prop::collection::vec((0..400u64, any_event(3)), 0..20),
            ) {
                let mut lifecycle = if leader {
                    Lifecycle::new(0, 3, Some(job()), deadlines())
                } else {
                    Lifecycle::new(2, 3, None, deadlines())
                };
                let mut now_ms = 0;
                let mut contract = DriverContract::default();
                contract.saw(&lifecycle.handle(now_ms, Event::Start));
                for (dt, event) in events {
                    now_ms += dt;
                    if contract.allows(&event) {
                        contract.saw(&lifecycle.handle(now_ms, event));
                    }
                }
                lifecycle.handle(now_ms, Event::Failed { reason: "boom".into() });
                let d = deadlines();
                lifecycle.handle(now_ms + d.shutdown_ms.max(d.failure_report_ms), Event::Tick);
                prop_assert!(lifecycle.is_exited());
            }
        }
    }

    #[test]
    fn a_workers_sink_mark_reaches_process_0_s_output_thread_and_a_long_one_fails_the_run() {
        let mut worker = WorkerLifecycle::new(2, deadlines());
        worker.handle(0, Event::Start);
        let before_job = worker.clone().handle(
            1,
            Event::SinkMark {
                checkpoint: 1,
                mark: vec![],
            },
        );
        assert!(
            exit(&before_job).is_none() && matches!(sent(&before_job)[..], [(0, Control::Failed { .. })])
        );
        worker.handle(
            1,
            Event::Control {
                from: 0,
                message: Control::Job(job()),
            },
        );
        let mark = Control::SinkMark {
            checkpoint: 3,
            mark: b"m".to_vec(),
        };
        let marked = worker.handle(
            2,
            Event::SinkMark {
                checkpoint: 3,
                mark: b"m".to_vec(),
            },
        );
        assert_eq!(sent(&marked), [(0, mark.clone())]);
        let mut leader = LeaderLifecycle::new(3, job(), deadlines());
        let unstarted = leader.clone().handle(
            0,
            Event::Control {
                from: 2,
                message: mark.clone(),
            },
        );
        assert!(
            matches!(unstarted.last(), Some(Action::Flush)),
            "a mark before the job: {unstarted:?}"
        );
        leader.handle(0, Event::Start);
        let heard = leader.handle(
            1,
            Event::Control {
                from: 2,
                message: mark,
            },
        );
        let expected = crate::member_sink::MemberMark {
            process: 2,
            checkpoint: 3,
            mark: b"m".to_vec(),
        };
        assert_eq!(heard, [Action::MemberMark(expected)]);
        let long = worker.handle(
            3,
            Event::SinkMark {
                checkpoint: 4,
                mark: vec![0; SINK_MARK_SIZE_MAX_BYTES + 1],
            },
        );
        let Some((0, Control::Failed { reason })) = sent(&long).pop() else {
            panic!("{long:?}")
        };
        assert!(reason.contains("take checkpoints more often"), "{reason}");
    }
}
