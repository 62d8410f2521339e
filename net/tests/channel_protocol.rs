//! The channel protocol over a lossy link: whatever the link drops,
//! duplicates, reorders or cuts, the receiver applies every record exactly
//! once and in order, and the retransmit buffer stays within its bounds.

use bytes::Bytes;
use proptest::prelude::*;
use std::collections::VecDeque;
use verity_net::channel::{Admission, ChannelReceiver, ChannelSender, ProtocolError};

#[derive(Debug, Clone, Copy)]
enum Step {
    Send(u8),
    Deliver,
    DropInFlight,
    Duplicate,
    Reorder,
    Ack,
    DropAck,
    Cut,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u8..6).prop_map(Step::Send),
        6 => Just(Step::Deliver),
        1 => Just(Step::DropInFlight),
        1 => Just(Step::Duplicate),
        1 => Just(Step::Reorder),
        2 => Just(Step::Ack),
        1 => Just(Step::DropAck),
        1 => Just(Step::Cut),
    ]
}

const WINDOW_BATCHES: usize = 4;

/// A sender, a receiver and the link between them.
struct Model {
    sender: ChannelSender,
    receiver: ChannelReceiver,
    in_flight: VecDeque<(u64, u32)>,
    acks: VecDeque<u64>,
    next_record: u64,
    applied: Vec<u64>,
}

impl Model {
    fn new() -> Model {
        Model {
            sender: ChannelSender::new(1, 1 << 20, WINDOW_BATCHES),
            receiver: ChannelReceiver::default(),
            in_flight: VecDeque::new(),
            acks: VecDeque::new(),
            next_record: 1,
            applied: Vec::new(),
        }
    }

    fn deliver_one(&mut self) {
        let Some((first_seq, count)) = self.in_flight.pop_front() else {
            return;
        };
        match self.receiver.admit(first_seq, count) {
            Admission::Apply { skip_records } => {
                for seq in first_seq + skip_records as u64..first_seq + count as u64 {
                    self.applied.push(seq);
                }
            }
            Admission::Duplicate => {}
            // A reordered batch arrived early: dropped; the sender resends it.
            Admission::Gap { .. } => {}
        }
    }

    fn resend_all(&mut self) {
        self.in_flight.clear();
        self.acks.clear();
        // After a reconnect the peer says what it applied: an ack by another name.
        self.sender.on_ack(self.receiver.applied_through()).unwrap();
        let unacked: Vec<(u64, u32)> = self.sender.unacked().map(|(s, c, _)| (s, c)).collect();
        self.in_flight.extend(unacked);
    }

    fn run(&mut self, step: Step) {
        match step {
            Step::Send(count) => {
                if self.sender.has_room(8) {
                    let first = self
                        .sender
                        .record_sent(count as u32, Bytes::from_static(b"frame..."));
                    assert_eq!(first, self.next_record);
                    self.next_record += count as u64;
                    self.in_flight.push_back((first, count as u32));
                }
            }
            Step::Deliver => self.deliver_one(),
            Step::DropInFlight => drop(self.in_flight.pop_front()),
            Step::Duplicate => {
                if let Some(front) = self.in_flight.front().copied() {
                    self.in_flight.push_back(front);
                }
            }
            Step::Reorder => {
                if self.in_flight.len() >= 2 {
                    self.in_flight.swap(0, 1);
                }
            }
            Step::Ack => {
                self.acks.push_back(self.receiver.applied_through());
                while let Some(ack) = self.acks.pop_front() {
                    self.sender.on_ack(ack).unwrap();
                }
            }
            Step::DropAck => drop(self.acks.pop_front()),
            Step::Cut => self.resend_all(),
        }
        assert!(self.sender.buffered_batches() <= WINDOW_BATCHES);
    }

    /// Heal the link: reconnect and deliver until everything is acked.
    fn heal(&mut self) {
        for _ in 0..100 {
            self.resend_all();
            while !self.in_flight.is_empty() {
                self.deliver_one();
            }
            self.sender.on_ack(self.receiver.applied_through()).unwrap();
            if self.sender.buffered_batches() == 0 {
                return;
            }
        }
        panic!("the channel did not drain after healing");
    }
}

proptest! {
    #[test]
    fn exactly_once_in_order_over_a_lossy_link(steps in proptest::collection::vec(step(), 0..300)) {
        let mut model = Model::new();
        for step in steps {
            model.run(step);
        }
        model.heal();
        let expected: Vec<u64> = (1..model.next_record).collect();
        prop_assert_eq!(model.applied, expected);
    }
}

#[test]
fn full_buffer_is_backpressure() {
    let mut sender = ChannelSender::new(1, 100, 2);
    assert!(
        sender.has_room(1_000),
        "an empty buffer takes one batch of any size"
    );
    sender.record_sent(1, Bytes::from(vec![0; 60]));
    assert!(!sender.has_room(60), "bytes bound");
    assert!(sender.has_room(40));
    sender.record_sent(1, Bytes::from(vec![0; 40]));
    assert!(!sender.has_room(1), "batch bound");
    sender.on_ack(1).unwrap();
    assert!(sender.has_room(50));
    assert_eq!((sender.buffered_batches(), sender.buffered_bytes()), (1, 40));
}

#[test]
fn stale_acks_are_ignored_and_acks_beyond_sent_are_errors() {
    let mut sender = ChannelSender::new(7, 1 << 20, 8);
    sender.record_sent(3, Bytes::new());
    sender.record_sent(2, Bytes::new());
    sender.on_ack(3).unwrap();
    sender.on_ack(1).unwrap();
    assert_eq!(
        sender.unacked().map(|(s, c, _)| (s, c)).collect::<Vec<_>>(),
        [(4, 2)]
    );
    assert!(matches!(
        sender.on_ack(6),
        Err(ProtocolError::AckBeyondSent { .. })
    ));
}

#[test]
fn receiver_skips_overlap_and_reports_gaps() {
    let mut receiver = ChannelReceiver::default();
    assert_eq!(receiver.admit(1, 3), Admission::Apply { skip_records: 0 });
    assert_eq!(receiver.admit(2, 4), Admission::Apply { skip_records: 2 });
    assert_eq!(receiver.admit(1, 5), Admission::Duplicate);
    assert_eq!(receiver.admit(9, 1), Admission::Gap { expected_seq: 6 });
    assert_eq!(receiver.applied_through(), 5);
}
