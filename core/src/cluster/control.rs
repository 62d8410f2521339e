//! The process-level protocol: process 0 sends each worker the job, and once
//! every shard has finished, the word to exit.

use super::codec::{decode_control, encode_control, Control};
use super::{channel_id, ClusterError, Layout, RemoteIn, RemoteOut};
use crossbeam_channel::RecvTimeoutError;
use std::time::{Duration, Instant};
use verity_net::node::Node;

const CONTROL_QUEUE_DEPTH_FRAMES: usize = 4;
const CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Process 0's control channels, one per worker.
pub struct Controller {
    workers: Vec<RemoteOut>,
}

impl Controller {
    pub fn new(node: &Node, layout: &Layout, window_frames: usize) -> Controller {
        let net = crate::runtime::wiring_net(node, window_frames);
        let workers = (1..layout.processes())
            .map(|process| net.out(channel_id::control(process), process, CONTROL_QUEUE_DEPTH_FRAMES))
            .collect();
        Controller { workers }
    }

    pub fn broadcast(&mut self, message: &Control) -> Result<(), ClusterError> {
        for worker in &mut self.workers {
            worker
                .send(|frame| encode_control(message, frame))
                .map_err(|_| ClusterError::Net("the network thread stopped".into()))?;
        }
        Ok(())
    }
}

/// A worker's control channel from process 0.
pub struct ControlIn {
    remote: RemoteIn,
}

impl ControlIn {
    pub fn new(node: &Node, layout: &Layout, window_frames: usize) -> ControlIn {
        let net = crate::runtime::wiring_net(node, window_frames);
        ControlIn {
            remote: net.input(channel_id::control(layout.process_id), 0),
        }
    }

    /// The next control message, waiting at most `timeout` (and failing early
    /// if the node has given up on a peer).
    pub fn next(&self, node: &Node, timeout: Duration) -> Result<Control, ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(failure) = node.failure() {
                return Err(ClusterError::Net(failure));
            }
            match self.remote.recv_timeout(CHECK_INTERVAL) {
                Ok(frame) => return decode_control(&frame),
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(_) => {
                    let waited = timeout.as_millis();
                    return Err(ClusterError::Net(format!(
                        "no word from process 0 in {waited} ms"
                    )));
                }
            }
        }
    }
}
