//! The control channels that carry `lifecycle::Control` messages: process 0
//! has one to and one from every worker; a worker has one to and one from
//! process 0. Sends never block and receives never wait, so one thread can
//! drive a lifecycle, its deadlines and these channels together.

use super::codec::{decode_control, encode_control};
use super::lifecycle::Control;
use super::{channel_id, ClusterError, Layout, RemoteIn, RemoteOut};
use crossbeam_channel::TryRecvError;
use verity_net::node::Node;

/// A lifecycle sends a handful of messages per run (job, then shutdown or
/// abort, or one failure report); more than this queued means something is
/// wrong, and the message is refused rather than waited for.
pub const CONTROL_QUEUE_DEPTH_FRAMES: usize = 4;

/// This process's control channels, by peer process.
pub struct ControlLinks {
    outs: Vec<(u32, RemoteOut)>,
    ins: Vec<(u32, RemoteIn)>,
}

/// Why a control message did not go out.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlSendError {
    #[error("no control channel to process {0}")]
    NoChannel(u32),
    #[error("the control channel to process {0} is full")]
    Full(u32),
    #[error("the network thread stopped")]
    Closed,
}

impl ControlLinks {
    /// Process 0: to and from every worker. A worker: to and from process 0.
    pub fn new(node: &Node, layout: &Layout, window_frames: usize) -> ControlLinks {
        let net = crate::runtime::wiring_net(node, window_frames);
        let me = layout.process_id;
        let peers: Vec<u32> = if me == 0 {
            (1..layout.processes()).collect()
        } else {
            vec![0]
        };
        let out_id = |to: u32| {
            if me == 0 {
                channel_id::control(to)
            } else {
                channel_id::control_up(me)
            }
        };
        let in_id = |from: u32| {
            if me == 0 {
                channel_id::control_up(from)
            } else {
                channel_id::control(me)
            }
        };
        ControlLinks {
            outs: peers
                .iter()
                .map(|&to| (to, net.out(out_id(to), to, CONTROL_QUEUE_DEPTH_FRAMES)))
                .collect(),
            ins: peers
                .iter()
                .map(|&from| (from, net.input(in_id(from), from)))
                .collect(),
        }
    }

    pub fn send(&mut self, to: u32, message: &Control) -> Result<(), ControlSendError> {
        let (_, out) = self
            .outs
            .iter_mut()
            .find(|(peer, _)| *peer == to)
            .ok_or(ControlSendError::NoChannel(to))?;
        match out.try_send(|frame| encode_control(message, frame)) {
            Ok(true) => Ok(()),
            Ok(false) => Err(ControlSendError::Full(to)),
            Err(_) => Err(ControlSendError::Closed),
        }
    }

    /// Frames the control queue to `to` takes before it is full (0 if there
    /// is no such channel).
    pub fn free_frames(&self, to: u32) -> usize {
        self.outs
            .iter()
            .find(|(peer, _)| *peer == to)
            .map_or(0, |(_, out)| out.free_frames())
    }

    /// The next control message that has arrived, from any peer, without
    /// waiting. A message that does not decode is returned as the error.
    pub fn poll(&self) -> Option<(u32, Result<Control, ClusterError>)> {
        for (from, input) in &self.ins {
            match input.try_recv() {
                Ok(frame) => return Some((*from, decode_control(&frame))),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    return Some((*from, Err(ClusterError::Net("the network thread stopped".into()))))
                }
            }
        }
        None
    }
}
