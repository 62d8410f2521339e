//! `SimConfig::member_sinks`: every worker writes its own shards' output
//! into its own transactional Kafka sink (`verity_kafka::LogSink` over the
//! simulated broker), driven by the production `MemberSink`: its shards'
//! lines, each shard's passing of a checkpoint (once its part went to
//! process 0) and its end; its marks go to process 0 through its production
//! lifecycle (`Control::SinkMark` on the control channel), and what process
//! 0 completed comes back as `Control::Readers`. This file only carries
//! messages between them; it decides nothing.

use super::*;
use verity_core::cluster::lifecycle::Event as LifeEvent;
use verity_core::connector::SinkError;
use verity_core::member_sink::{MemberMark, MemberMessage};

impl<K, V, S, O> World<'_, K, V, S, O>
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: verity_core::State,
    O: 'static,
{
    /// Into the own sink of `shard`'s process, if it writes one: false if
    /// it does not (process 0, or a seed whose output process 0 writes).
    pub(super) fn write_to_member(&mut self, shard: u32, message: MemberMessage) -> bool {
        let process = self.layout.process_of(shard);
        let Some(member) = self.members[process as usize].as_mut() else {
            return false;
        };
        if self.crashed {
            return true; // the process died in this very turn
        }
        let result = member.write(shard, message);
        self.member_result(process, result);
        true
    }

    /// A worker's shard finished (its `Finished` went to process 0).
    pub(super) fn member_shard_finished(&mut self, shard: u32) {
        let process = self.layout.process_of(shard);
        if let (Some(member), false) = (self.members[process as usize].as_mut(), self.crashed) {
            let result = member.finished(shard);
            self.member_result(process, result);
        }
    }

    /// A worker's lifecycle heard what process 0 completed.
    pub(super) fn member_heard(&mut self, process: u32, completed: u64) {
        if let (Some(member), false) = (self.members[process as usize].as_mut(), self.crashed) {
            let result = member.completed(completed);
            self.member_result(process, result);
        }
    }

    /// A mark goes to process 0 through the worker's lifecycle; a sink
    /// error (none is planned) is a finding.
    fn member_result(&mut self, process: u32, result: Result<Option<MemberMark>, SinkError>) {
        match result {
            Ok(None) => {}
            Ok(Some(mark)) => {
                self.trace(format_args!(
                    "process {process}: its sink took the barrier of {} ({} bytes of mark)",
                    mark.checkpoint,
                    mark.mark.len()
                ));
                let event = LifeEvent::SinkMark {
                    checkpoint: mark.checkpoint,
                    mark: mark.mark,
                };
                self.lifecycle_event(process, event);
            }
            Err(e) => {
                self.net
                    .failure
                    .get_or_insert(format!("process {process}'s sink: {e}"));
            }
        }
    }
}
