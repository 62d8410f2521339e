//! Restarting a cluster run that failed, from its newest checkpoint.
//!
//! verity recovers a cluster by restarting every process (as Flink does for
//! all-to-all dataflows): after a keyed shuffle every shard depends on every
//! other, so a survivor's state past the checkpoint is no use to a restarted
//! peer. Process 0 (and a `verity worker` whose job had checkpoints)
//! re-executes its own binary with the same arguments plus `--recover`: the
//! new image has none of the failed run's threads, sockets or half-written
//! buffers, and a peer sees it come back with a new incarnation
//! (`verity_net::auth`), never mistaken for its old life.
//!
//! Restarts are bounded: at most `max_in_a_row` restarts without a new
//! checkpoint in between, so a run that fails for good (a bad input path, a
//! bug) ends with its error instead of looping. Each restart waits a little
//! longer (`backoff`).

use anyhow::{Context, Result};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;
use verity_state::checkpoint::newest_manifest_id;
use verity_state::storage::DirStorage;

/// Carries the restart count across `exec`: `COUNT:CHECKPOINT`, restarts in a
/// row without progress and the newest checkpoint at the last restart.
pub const RESTART_ENV: &str = "VERITY_RESTARTS";

/// Restarts in a row without a new checkpoint before a run gives up.
pub const DEFAULT_MAX_RESTARTS: u32 = 5;

const BACKOFF_BASE: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where a restart stands: how many in a row without progress, and the
/// newest checkpoint when the last one happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestartCount {
    pub in_a_row: u32,
    pub checkpoint: u64,
}

impl RestartCount {
    /// The count this process was started with (none: a first start).
    pub fn from_env() -> RestartCount {
        std::env::var(RESTART_ENV)
            .ok()
            .and_then(|value| RestartCount::parse(&value))
            .unwrap_or_default()
    }

    fn parse(value: &str) -> Option<RestartCount> {
        let (count, checkpoint) = value.split_once(':')?;
        Some(RestartCount {
            in_a_row: count.parse().ok()?,
            checkpoint: checkpoint.parse().ok()?,
        })
    }

    fn to_env(self) -> String {
        format!("{}:{}", self.in_a_row, self.checkpoint)
    }

    /// The count after one more restart, with `newest` the newest complete
    /// checkpoint now: a new checkpoint since the last restart is progress.
    pub fn next(self, newest: u64) -> RestartCount {
        let in_a_row = if newest > self.checkpoint {
            1
        } else {
            self.in_a_row + 1
        };
        RestartCount {
            in_a_row,
            checkpoint: newest,
        }
    }

    /// How long to wait before this restart.
    pub fn backoff(self) -> Duration {
        let doublings = self.in_a_row.saturating_sub(1).min(16);
        (BACKOFF_BASE * 2u32.pow(doublings)).min(BACKOFF_MAX)
    }
}

/// The same command line, continuing from the state dir.
fn recovering_args(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.collect();
    if !args.iter().any(|a| a == "--recover") {
        args.push("--recover".into());
    }
    args
}

/// After `failure` of a run with checkpoints in `state_dir`: re-executes
/// this process to continue from the newest checkpoint (this call then
/// never returns), or gives up and returns why, when the run failed
/// `max_in_a_row` times in a row without a new checkpoint. `before_exec`
/// runs just before: process 0 stops its local workers there.
pub fn restart_or_give_up(
    state_dir: &Path,
    failure: anyhow::Error,
    max_in_a_row: u32,
    before_exec: impl FnOnce(),
) -> anyhow::Error {
    let newest = match DirStorage::open(state_dir).and_then(|mut dir| newest_manifest_id(&mut dir)) {
        Ok(newest) => newest,
        Err(e) => return failure.context(format!("cannot restart: {}: {e}", state_dir.display())),
    };
    let count = RestartCount::from_env().next(newest);
    if count.in_a_row > max_in_a_row {
        return failure.context(format!(
            "gave up after {max_in_a_row} restarts in a row without a new checkpoint"
        ));
    }
    crate::logger::write_line(&format!(
        "verity: the run failed: {failure:#}\nverity: restarting every process from checkpoint {newest} (restart {} in a row, of at most {max_in_a_row})",
        count.in_a_row
    ));
    std::thread::sleep(count.backoff());
    before_exec();
    match exec_recovering(count) {
        Ok(never) => match never {},
        Err(e) => failure.context(format!("cannot restart: {e:#}")),
    }
}

/// Replaces this process by the same binary, arguments plus `--recover`.
fn exec_recovering(count: RestartCount) -> Result<std::convert::Infallible> {
    let exe = std::env::current_exe().context("cannot find the verity binary")?;
    let error = std::process::Command::new(exe)
        .args(recovering_args(std::env::args_os().skip(1)))
        .env(RESTART_ENV, count.to_env())
        .exec();
    Err(error).context("exec")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_in_a_row_count_until_a_new_checkpoint() {
        let first = RestartCount::default().next(4);
        assert_eq!(
            first,
            RestartCount {
                in_a_row: 1,
                checkpoint: 4
            }
        );
        let again = first.next(4);
        assert_eq!(again.in_a_row, 2, "no checkpoint since: in a row");
        assert_eq!(again.next(5).in_a_row, 1, "progress resets the count");
        assert_eq!(RestartCount::default().next(0).in_a_row, 1);
        assert_eq!(RestartCount::parse(&again.to_env()), Some(again));
        assert_eq!(RestartCount::parse("x:1"), None);
        assert!(first.backoff() < again.backoff());
        let many = RestartCount {
            in_a_row: 40,
            checkpoint: 0,
        };
        assert_eq!(many.backoff(), BACKOFF_MAX);
    }

    #[test]
    fn the_restarted_command_line_recovers_once() {
        let args = ["run", "wordcount", "--state-dir", "s"].map(OsString::from);
        let recovering = recovering_args(args.clone().into_iter());
        assert_eq!(recovering.last().unwrap(), "--recover");
        assert_eq!(recovering_args(recovering.clone().into_iter()), recovering);
        assert_eq!(recovering.len(), args.len() + 1);
    }
}
