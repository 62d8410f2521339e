//! The `restart` fault: one process dies alone (kill -9) and comes back
//! soon, well before its peers would give it up, as a new life: a new peer
//! protocol with a new incarnation, no channel state, a fresh lifecycle.
//! Its channels start over from seq 1, so a survivor that knew its old life
//! must not take the new one for it: the production protocol refuses the
//! new life at its first handshake and fails the run, and the cluster then
//! restarts as a whole from its newest complete checkpoint (production's
//! full restart), as after `crash`. Process 0's restart is the cluster's
//! restart, so it is the `crash` path at once.
//!
//! This file watches that from outside: which life of a peer each protocol
//! pinned at its first handshake, which connections belong to the new life,
//! when each protocol reported a failure, and that a survivor noticed in
//! time and delivered nothing of the new life.

use super::*;
use control::EXIT_AFTER_FAILURE_US;
use std::collections::BTreeSet;
use verity_net::peer::ConnId;

/// With the `restart` fault, one seed in this many (of those with
/// checkpoints on and without a failure, a stop or a crash) has one process
/// restart.
pub(super) const RESTART_SEED_ONE_IN: u64 = 3;
/// Of those, one in this many restarts process 0 (the cluster's restart).
pub(super) const RESTART_LEADER_ONE_IN: u64 = 4;
/// A restarted process is down at least this long...
const RESTART_DOWN_MIN_US: u64 = 1_000;
/// ... and at most this much longer: quickly, far within `PEER_LOST_MS`, so
/// its peers still wait for it and meet the new life.
const RESTART_DOWN_SPREAD_US: u64 = 500_000;
/// A survivor's protocol must report its failure this soon after the
/// restarted process saw their handshake complete. The restarted process
/// sent its proof just then (it answers the survivor's hello, which came
/// before the survivor's proof); the survivor checks the incarnation on that
/// proof, one network latency later, and the `delay` fault adds up to
/// `DELAY_MAX_US` to it. Twice that, for the jitter of the pieces the bytes
/// arrive in. Pauses and partitions that hold the bytes back extend it (see
/// `check_restart_noticed`).
const RESTART_NOTICED_WITHIN_MS: u64 = 2 * (DELAY_MAX_US + LATENCY_BASE_US + LATENCY_JITTER_US) / 1000;
/// Process 0 must exit this long after a survivor noticed the restart (or
/// the faults healed, if later): the failure report's bound, plus one dial
/// backoff for the restarted process to reach process 0 itself if the
/// report did not get through.
const RESTART_EXIT_BOUND_US: u64 = EXIT_AFTER_FAILURE_US + RECONNECT_MAX_MS * 1000;

/// Which life of a restarted process a connection, or a pin, belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Old,
    New,
}

/// The restart, once it struck.
struct Struck {
    process: u32,
    died_at_us: u64,
    revived_at_us: Option<u64>,
    /// When a survivor's protocol first reported the run failed after the
    /// new life started.
    noticed_at_us: Option<u64>,
}

/// What the world watches for the `restart` fault, from the start of the
/// run (pins happen before the fault strikes).
pub(super) struct RestartWatch {
    struck: Option<Struck>,
    /// Per (observer, peer): which life of the peer the observer's protocol
    /// completed its first handshake with, whose incarnation it pinned.
    pins: BTreeMap<(u32, u32), Life>,
    /// Connections of the restarted process's new life.
    new_life_conns: BTreeSet<ConnId>,
    /// New-life connections on which a survivor that knew the old life
    /// completed the handshake (it took the new life for the old one), and
    /// when.
    taken: BTreeMap<ConnId, u64>,
    /// When each process's protocol first reported `Failed`.
    protocol_failed_at_us: Vec<Option<u64>>,
    /// Every partition of the run: (mask, until), bytes across it held until
    /// it heals.
    partitions: Vec<(u64, u64)>,
    /// Per process: the latest end of any pause it had (bytes for it wait).
    pause_end_us: Vec<u64>,
    /// The connection whose bytes the protocol being fed is reading, while
    /// its actions are carried out.
    pub(super) reading: Option<ConnId>,
}

impl RestartWatch {
    pub(super) fn new(processes: u32) -> RestartWatch {
        RestartWatch {
            struck: None,
            pins: BTreeMap::new(),
            new_life_conns: BTreeSet::new(),
            taken: BTreeMap::new(),
            protocol_failed_at_us: vec![None; processes as usize],
            partitions: Vec::new(),
            pause_end_us: vec![0; processes as usize],
            reading: None,
        }
    }

    pub(super) fn on_partition(&mut self, mask: u64, until_us: u64) {
        self.partitions.push((mask, until_us));
    }

    pub(super) fn on_pause(&mut self, process: u32, until_us: u64) {
        if let Some(end) = self.pause_end_us.get_mut(process as usize) {
            *end = (*end).max(until_us);
        }
    }

    /// The restarted process, while its new life runs.
    fn new_life(&self) -> Option<u32> {
        self.struck
            .as_ref()
            .filter(|s| s.revived_at_us.is_some())
            .map(|s| s.process)
    }

    /// A connection opened between `from` and `to`.
    pub(super) fn on_open(&mut self, conn: ConnId, from: u32, to: u32) {
        if self.new_life().is_some_and(|r| r == from || r == to) {
            self.new_life_conns.insert(conn);
        }
    }

    fn life_of(&self, conn: ConnId) -> Life {
        if self.new_life_conns.contains(&conn) {
            Life::New
        } else {
            Life::Old
        }
    }

    /// Whether `survivor` pinned the restarted process's old life: then it
    /// must refuse the new one.
    fn knew_old_life(&self, survivor: u32, restarted: u32) -> bool {
        self.pins.get(&(survivor, restarted)) == Some(&Life::Old)
    }
}

impl<K, V, S, O> World<'_, K, V, S, O>
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: verity_core::State,
    O: 'static,
{
    /// The seed's restart, if it draws one: which process, and when (while
    /// input still arrives, so the job most likely still runs).
    pub(super) fn plan_restart(&mut self, plan: &mut Vec<(u64, Event)>) {
        let processes = self.config.processes as u64;
        let process = if self.rng.chance(1, RESTART_LEADER_ONE_IN) {
            0
        } else {
            1 + self.rng.below(processes - 1) as u32
        };
        plan.push((
            self.rng.below(self.heal_us / RELEASE_SHARE),
            Event::Restart { process },
        ));
    }

    /// The `restart` fault strikes `process`.
    pub(super) fn restart(&mut self, process: u32) {
        if self.exited(process) {
            self.stats.bump("restarts_skipped");
            return self.trace(format_args!(
                "fault: restart process {process}: it already exited"
            ));
        }
        if process == 0 {
            // Process 0 holds the sources, the sinks and the checkpoints:
            // production restarts the whole cluster with it.
            self.stats.fault("restart");
            self.trace(format_args!(
                "fault: process 0 restarts (kill -9): the whole cluster restarts with it"
            ));
            self.crashed = true;
            return;
        }
        if self.job_done(process) {
            // Its part is done: what a new life would change is only whether
            // it hears `Shutdown`, which is not this fault's question.
            self.stats.bump("restarts_skipped");
            return self.trace(format_args!(
                "fault: restart process {process}: its part of the job already ended"
            ));
        }
        self.stats.fault("restart");
        if let Some(audit) = &mut self.audit {
            audit.kill(process);
        }
        let down_us = RESTART_DOWN_MIN_US + self.rng.below(RESTART_DOWN_SPREAD_US);
        self.trace(format_args!(
            "fault: process {process} dies alone (kill -9) and starts again in {down_us} us"
        ));
        self.restart_watch.struck = Some(Struck {
            process,
            died_at_us: self.now_us,
            revived_at_us: None,
            noticed_at_us: None,
        });
        self.kill(process);
        // Its shards die with it. A new life builds its shards when its job
        // arrives; shards that never started are as a new life builds them.
        let started = self.job_started(process);
        for shard in self.layout.shards_of(process) {
            let s = shard as usize;
            if started {
                self.drivers[s] = None;
            }
            self.waits_for_room[s] = false;
            self.uploads[s] = None;
            self.watching[s] = None;
            self.stalled_until_us[s] = 0;
        }
        let layout = &self.layout;
        self.local_batches.retain(|&(_, from, to), _| {
            layout.process_of(from) != process && layout.process_of(to) != process
        });
        self.schedule(self.now_us + down_us, Event::Revive { process });
    }

    /// The restarted process starts again: a new life.
    pub(super) fn revive(&mut self, process: u32) {
        let struck = self.restart_watch.struck.as_mut().expect("a restart struck");
        struck.revived_at_us = Some(self.now_us);
        let down_ms = (self.now_us - struck.died_at_us) / 1000;
        let p = &mut self.processes[process as usize];
        p.dead = false;
        p.paused_until_us = 0;
        let incarnation = self.restart_network(process);
        if let Some(audit) = &mut self.audit {
            // Its audit log goes on in a new segment, as a new life.
            let opened = audit.open(
                process,
                &self.layout,
                self.buggify.batch_max,
                &self.clocks,
                incarnation,
            );
            if let Err(e) = opened {
                self.net.failure.get_or_insert(e);
            }
        }
        self.trace(format_args!(
            "process {process} starts again after {down_ms} ms: a new life (incarnation {incarnation:#x}), no channel state"
        ));
        self.restart_lifecycle(process);
        self.step_process(process);
    }

    /// `process`'s protocol completed a handshake with `peer` on `conn`.
    pub(super) fn on_handshake_logged(&mut self, process: u32, peer: u32, conn: ConnId) {
        let watch = &mut self.restart_watch;
        let life = watch.life_of(conn);
        // The first handshake pins the peer's incarnation, as the protocol does.
        watch.pins.entry((process, peer)).or_insert(life);
        let Some(restarted) = watch.new_life() else {
            return;
        };
        if life != Life::New {
            return;
        }
        // The restarted process saw the handshake complete (the usual
        // start of the bound), or a survivor did (it must not have).
        let survivor = if process == restarted { peer } else { process };
        if !watch.knew_old_life(survivor, restarted) {
            return;
        }
        if survivor == process {
            watch.taken.entry(conn).or_insert(self.now_us);
        }
        let event = Event::RestartNoticeDue {
            survivor,
            conn,
            since_us: self.now_us,
        };
        self.schedule(self.now_us + RESTART_NOTICED_WITHIN_MS * 1000, event);
    }

    /// `process`'s protocol reported the cluster cannot go on.
    pub(super) fn on_protocol_failed(&mut self, process: u32) {
        let now_us = self.now_us;
        let watch = &mut self.restart_watch;
        watch.protocol_failed_at_us[process as usize].get_or_insert(now_us);
        let restarted = watch.new_life();
        let Some(struck) = watch.struck.as_mut() else {
            return;
        };
        if restarted.is_some_and(|r| r != process) && struck.noticed_at_us.is_none() {
            struck.noticed_at_us = Some(now_us);
            self.stats.bump("restarts_noticed");
        }
    }

    /// `RESTART_NOTICED_WITHIN_MS` after the restarted process's new life
    /// completed a handshake with `survivor` on `conn` (as of `since_us`):
    /// the survivor, which knew the old life, must have failed.
    pub(super) fn check_restart_noticed(&mut self, survivor: u32, conn: ConnId, since_us: u64) {
        let restarted = self.restart_watch.new_life().expect("a new life runs");
        let failed = self.restart_watch.protocol_failed_at_us[survivor as usize].is_some();
        // An ending survivor's protocol refuses the new life without a
        // failure of its own: the run is failing already.
        if failed || self.dead(survivor) || self.exited(survivor) || self.flushing(survivor) {
            return;
        }
        if let Some(&taken_us) = self.restart_watch.taken.get(&conn) {
            self.net.failure.get_or_insert(format!(
                "process {survivor} took restarted process {restarted} (new incarnation) for its old life: \
                 it completed the handshake with the new life on connection {conn} at {taken_us} us, though it \
                 pinned the old life's incarnation, and its protocol reported no failure within \
                 {RESTART_NOTICED_WITHIN_MS} ms"
            ));
            return;
        }
        // A connection either end lost took the proof with it: the next
        // handshake is judged instead.
        if !self.net_holds_conn(survivor, conn) {
            return;
        }
        // Bytes towards the survivor wait out its pauses and the partitions
        // between the two.
        let watch = &self.restart_watch;
        let mut held_until_us = watch.pause_end_us[survivor as usize];
        for &(mask, until_us) in &watch.partitions {
            if (mask >> survivor & 1) != (mask >> restarted & 1) {
                held_until_us = held_until_us.max(until_us + LATENCY_BASE_US);
            }
        }
        if held_until_us > since_us {
            let event = Event::RestartNoticeDue {
                survivor,
                conn,
                since_us: held_until_us,
            };
            return self.schedule(held_until_us + RESTART_NOTICED_WITHIN_MS * 1000, event);
        }
        self.net.failure.get_or_insert(format!(
            "process {survivor} took restarted process {restarted} (new incarnation) for its old life: \
             their handshake on connection {conn} completed at {since_us} us, and {survivor}'s protocol \
             reported no failure within {RESTART_NOTICED_WITHIN_MS} ms (it pinned the old life's incarnation)"
        ));
    }

    /// `survivor` delivered a frame of `channel`: not one the restarted
    /// process sent in its new life, unless the survivor never knew the old
    /// one (then the new life is simply the first it meets).
    pub(super) fn check_new_life_frame(&mut self, survivor: u32, channel: u32, from: u32, first_seq: u64) {
        let watch = &self.restart_watch;
        let Some(restarted) = watch.new_life() else {
            return;
        };
        let from_new_life = watch.reading.is_some_and(|conn| watch.life_of(conn) == Life::New);
        if from != restarted
            || !from_new_life
            || !watch.knew_old_life(survivor, restarted)
            || watch.protocol_failed_at_us[survivor as usize].is_some()
        {
            return;
        }
        self.net.failure.get_or_insert(format!(
            "process {survivor} took restarted process {restarted} (new incarnation) for its old life: \
             it delivered seq {first_seq} of {} that the new life sent, before it failed",
            channel_id::describe(channel)
        ));
    }

    /// A survivor noticed the restart: the run is failing.
    pub(super) fn restart_noticed(&self) -> bool {
        self.restart_watch
            .struck
            .as_ref()
            .is_some_and(|s| s.noticed_at_us.is_some())
    }

    /// The failed run ended: process 0 exited, so production restarts
    /// every process from the newest complete checkpoint.
    pub(super) fn restart_failed_the_run(&self) -> bool {
        self.restart_noticed() && self.exited(0)
    }

    /// While the run fails after a noticed restart: `None` until process 0
    /// exits, an error if it does not within its bound.
    pub(super) fn restart_end(&self) -> Option<Result<(), String>> {
        let struck = self.restart_watch.struck.as_ref().expect("a restart struck");
        let noticed_us = struck.noticed_at_us.expect("noticed");
        let by_us = noticed_us.max(self.heal_us) + RESTART_EXIT_BOUND_US;
        (self.now_us > by_us && !self.exited(0)).then(|| {
            Err(format!(
                "process {} restarted and a survivor noticed at {noticed_us} us, but process 0 still ran {} ms later \
                 (after the faults healed): {}",
                struck.process,
                RESTART_EXIT_BOUND_US / 1000,
                self.describe_lifecycles()
            ))
        })
    }
}
