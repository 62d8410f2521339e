//! Process 0's end of one remote shard's output channel, sans-IO: what each
//! output frame means and where it goes. The runtime's relay thread
//! (`runtime::relay_output`) and the simulator both drive it.

use super::codec::{decode_upstream, PartAssembly, Upstream};
use super::ClusterError;
use crate::shard::ShardCounters;
use crate::sink::OutputMessage;
use verity_net::frame::Frame;

/// Planted bugs for the simulator's own tests (`verity sim --plant-bug`):
/// each is off in production and turns a real relay mistake on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayBugs {
    /// Lose remote shards' dead letters on the way to the dead-letter sink.
    pub drop_dead_letters: bool,
}

/// What one output frame of a remote shard asks of process 0.
#[derive(Debug)]
pub enum Relayed {
    /// Into the sinks (the output thread).
    ToSinks(OutputMessage),
    /// A source failed as the shard read its chunk: the run reports it.
    SourceFailed { source: u32, error: String },
    /// The shard finished with these totals; nothing follows on its channel.
    Finished(Box<ShardCounters>),
    /// Nothing to do: a piece of a checkpoint part whose last piece is
    /// still to come.
    Pending,
    /// Nothing to do (only a planted bug says so).
    Dropped,
}

pub struct OutputRelay {
    shard: u32,
    finished: bool,
    part: PartAssembly,
    bugs: RelayBugs,
}

impl OutputRelay {
    pub fn new(shard: u32) -> Self {
        OutputRelay {
            shard,
            finished: false,
            part: PartAssembly::default(),
            bugs: RelayBugs::default(),
        }
    }

    pub fn with_bugs(mut self, bugs: RelayBugs) -> Self {
        self.bugs = bugs;
        self
    }

    /// The next frame the shard's output channel delivered.
    pub fn on_frame(&mut self, frame: &Frame) -> Result<Relayed, ClusterError> {
        let shard = self.shard;
        if self.finished {
            return Err(ClusterError::Malformed(format!(
                "output from shard {shard} after it finished"
            )));
        }
        let message = decode_upstream(frame)
            .map_err(|e| ClusterError::Malformed(format!("output from shard {shard}: {e}")))?;
        Ok(match message {
            Upstream::Lines(lines) => Relayed::ToSinks(OutputMessage::Relayed(lines)),
            Upstream::DeadLetter(_) if self.bugs.drop_dead_letters => Relayed::Dropped,
            Upstream::DeadLetter(letter) => Relayed::ToSinks(OutputMessage::DeadLetter(letter)),
            Upstream::SourceFailed { source, error } => Relayed::SourceFailed { source, error },
            Upstream::CheckpointPiece { total, offset, bytes } => {
                let part = self
                    .part
                    .on_piece(total, offset, &bytes)
                    .map_err(|e| ClusterError::Malformed(format!("output from shard {shard}: {e}")))?;
                match part {
                    None => Relayed::Pending,
                    Some(part) if part.shard != shard => {
                        return Err(ClusterError::Malformed(format!(
                            "shard {shard} sent shard {}'s checkpoint part",
                            part.shard
                        )))
                    }
                    Some(part) => Relayed::ToSinks(OutputMessage::Checkpoint(part)),
                }
            }
            Upstream::Finished(counters) => {
                self.finished = true;
                Relayed::Finished(counters)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::codec::{encode_upstream, framed, UpstreamRef};
    use crate::ids::MsgId;
    use crate::line::DeadLetter;
    use crate::sink::OutputBatch;
    use crate::step_timing::Step;
    use bytes::Bytes;

    fn frame(message: &UpstreamRef<'_>) -> Frame {
        framed(|writer| encode_upstream(message, writer))
    }

    #[test]
    fn each_output_message_goes_where_it_belongs_and_nothing_after_finished() {
        let mut relay = OutputRelay::new(3);
        let lines = OutputBatch {
            lines: b"a\n".to_vec(),
            ids: vec![],
        };
        let relayed = relay.on_frame(&frame(&UpstreamRef::Lines(&lines))).unwrap();
        assert!(matches!(relayed, Relayed::ToSinks(OutputMessage::Relayed(b)) if &*b.lines == b"a\n"));
        let letter = DeadLetter::new(MsgId::new(0, 9), "bad".into(), &Bytes::from_static(b"x"));
        let relayed = relay.on_frame(&frame(&UpstreamRef::DeadLetter(&letter))).unwrap();
        assert!(matches!(relayed, Relayed::ToSinks(OutputMessage::DeadLetter(l)) if l == letter));
        let failed = UpstreamRef::SourceFailed {
            source: 1,
            error: "gone",
        };
        let relayed = relay.on_frame(&frame(&failed)).unwrap();
        assert!(matches!(relayed, Relayed::SourceFailed { source: 1, error } if error == "gone"));
        let mut counters = ShardCounters {
            records_in: 5,
            ..ShardCounters::default()
        };
        counters.timings.record(Step::Apply, 5, 300);
        counters.timings.record(Step::Output, 4, 2);
        let done = frame(&UpstreamRef::Finished(&counters));
        // The totals and every step's figures arrive as sent.
        assert!(matches!(relay.on_frame(&done).unwrap(), Relayed::Finished(c) if *c == counters));
        let late = relay.on_frame(&done).unwrap_err().to_string();
        assert!(late.contains("shard 3 after it finished"), "{late}");
    }

    #[test]
    fn the_planted_bug_drops_dead_letters_only() {
        let mut relay = OutputRelay::new(0).with_bugs(RelayBugs {
            drop_dead_letters: true,
        });
        let letter = DeadLetter::new(MsgId::new(0, 1), "bad".into(), &Bytes::from_static(b"x"));
        assert!(matches!(
            relay.on_frame(&frame(&UpstreamRef::DeadLetter(&letter))).unwrap(),
            Relayed::Dropped
        ));
    }
}
