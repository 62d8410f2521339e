//! The reliable channel protocol, sans I/O. A channel numbers its records
//! from 1; frames carry the first number and a count. The receiver applies
//! each number once, in order, and acks cumulatively; the sender keeps every
//! unacked frame (bounded) and resends them all after a reconnect. So delivery
//! is at-least-once on the wire and exactly-once, in order, at the receiver.

use bytes::Bytes;
use std::collections::VecDeque;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("channel {channel:#x}: ack for {acked} beyond the last record sent ({sent})")]
    AckBeyondSent { channel: u32, acked: u64, sent: u64 },
}

struct Unacked {
    first_seq: u64,
    count: u32,
    encoded: Bytes,
}

/// The sending end: sequence numbers and the retransmit buffer.
pub struct ChannelSender {
    channel: u32,
    next_seq: u64,
    acked_through: u64,
    unacked: VecDeque<Unacked>,
    buffered_bytes: usize,
    buffer_max_bytes: usize,
    buffer_max_batches: usize,
}

impl ChannelSender {
    pub fn new(channel: u32, retransmit_buffer_max_bytes: usize, retransmit_batches_max: usize) -> Self {
        assert!(retransmit_batches_max > 0 && retransmit_buffer_max_bytes > 0);
        ChannelSender {
            channel,
            next_seq: 1,
            acked_through: 0,
            unacked: VecDeque::new(),
            buffered_bytes: 0,
            buffer_max_bytes: retransmit_buffer_max_bytes,
            buffer_max_batches: retransmit_batches_max,
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether a batch of `size_bytes` fits; false is backpressure. An empty
    /// buffer always takes one batch, so a large batch cannot wedge a channel.
    pub fn has_room(&self, size_bytes: usize) -> bool {
        self.unacked.is_empty()
            || (self.unacked.len() < self.buffer_max_batches
                && self.buffered_bytes + size_bytes <= self.buffer_max_bytes)
    }

    /// Keeps a sent batch for retransmission; returns its first sequence number.
    pub fn record_sent(&mut self, record_count: u32, encoded: Bytes) -> u64 {
        assert!(record_count > 0, "a batch numbers at least one record");
        assert!(
            self.unacked.len() < self.buffer_max_batches || self.unacked.is_empty(),
            "retransmit buffer full"
        );
        let first_seq = self.next_seq;
        self.next_seq += record_count as u64;
        self.buffered_bytes += encoded.len();
        self.unacked.push_back(Unacked {
            first_seq,
            count: record_count,
            encoded,
        });
        first_seq
    }

    /// A cumulative ack: every record through `acked_through_seq` arrived.
    pub fn on_ack(&mut self, acked_through_seq: u64) -> Result<(), ProtocolError> {
        if acked_through_seq >= self.next_seq {
            return Err(ProtocolError::AckBeyondSent {
                channel: self.channel,
                acked: acked_through_seq,
                sent: self.next_seq - 1,
            });
        }
        if acked_through_seq <= self.acked_through {
            return Ok(()); // stale or repeated
        }
        self.acked_through = acked_through_seq;
        while let Some(front) = self.unacked.front() {
            if front.first_seq + front.count as u64 - 1 > acked_through_seq {
                break;
            }
            self.buffered_bytes -= front.encoded.len();
            self.unacked.pop_front();
        }
        debug_assert_eq!(
            self.buffered_bytes,
            self.unacked.iter().map(|u| u.encoded.len()).sum::<usize>()
        );
        Ok(())
    }

    /// The batches to resend after a reconnect, in order.
    pub fn unacked(&self) -> impl Iterator<Item = (u64, u32, &Bytes)> {
        self.unacked.iter().map(|u| (u.first_seq, u.count, &u.encoded))
    }

    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    pub fn buffered_batches(&self) -> usize {
        self.unacked.len()
    }
}

/// What the receiver does with an arriving batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Apply it, after skipping its first `skip_records` (already applied).
    Apply { skip_records: u32 },
    /// Entirely applied before: drop it.
    Duplicate,
    /// Records before it are missing: a protocol error.
    Gap { expected_seq: u64 },
}

/// The receiving end: what was applied. (What it acks is what its consumer
/// took, which the peer protocol tracks: `peer::PeerProtocol::on_consumed`.)
#[derive(Debug, Default)]
pub struct ChannelReceiver {
    applied_through: u64,
}

impl ChannelReceiver {
    /// Applies a frame's numbers (if it is new) and says what to do with it.
    pub fn admit(&mut self, first_seq: u64, record_count: u32) -> Admission {
        let admission = self.classify(first_seq, record_count);
        if let Admission::Apply { .. } = admission {
            self.applied_through = first_seq + record_count as u64 - 1;
        }
        admission
    }

    /// What `admit` would say, without applying anything.
    pub fn classify(&self, first_seq: u64, record_count: u32) -> Admission {
        if record_count == 0 {
            return Admission::Duplicate;
        }
        // Numbers come off the wire: a frame whose last number does not fit
        // cannot follow anything this channel applied.
        let expected_seq = self.applied_through.saturating_add(1);
        let Some(last) = first_seq.checked_add(record_count as u64 - 1) else {
            return Admission::Gap { expected_seq };
        };
        if last <= self.applied_through {
            return Admission::Duplicate;
        }
        if first_seq > expected_seq {
            return Admission::Gap { expected_seq };
        }
        let skip_records = (self.applied_through + 1 - first_seq) as u32;
        Admission::Apply { skip_records }
    }

    pub fn applied_through(&self) -> u64 {
        self.applied_through
    }

    /// A planted bug (`ProtocolBugs::resume_one_past_applied`): takes the
    /// next record for applied without having it. Never call it otherwise.
    #[doc(hidden)]
    pub fn skip_one_for_testing(&mut self) {
        if self.applied_through > 0 {
            self.applied_through += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_refuses_numbers_that_overflow_without_panicking() {
        let mut receiver = ChannelReceiver::default();
        assert_eq!(receiver.admit(u64::MAX, 2), Admission::Gap { expected_seq: 1 });
        assert_eq!(
            receiver.admit(u64::MAX - 1, u32::MAX),
            Admission::Gap { expected_seq: 1 }
        );
        assert_eq!(receiver.admit(1, 3), Admission::Apply { skip_records: 0 });
        assert_eq!(receiver.admit(u64::MAX, 1), Admission::Gap { expected_seq: 4 });
        assert_eq!(receiver.admit(2, 0), Admission::Duplicate);
        assert_eq!(receiver.applied_through(), 3);
    }
}
