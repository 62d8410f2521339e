//! A shard's or reader's end of a cross-process channel.

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError, TrySendError};
use std::sync::Arc;
use verity_net::frame::{ChannelFrames, Frame, FrameWriter};
use verity_net::node::{ConsumerProgress, InChannel, OutChannel, Wake};

/// Sends frames on one channel: numbers them and wakes the I/O side.
pub struct RemoteOut {
    numbering: ChannelFrames,
    frames: Sender<Vec<u8>>,
    waker: Arc<dyn Wake>,
}

/// The I/O thread stopped taking frames (the run is being torn down).
#[derive(Debug)]
pub struct ChannelClosed;

impl RemoteOut {
    /// A channel to process `peer` through a queue of `depth` frames: the
    /// producer's end, and the I/O side's (`Node::add_out`).
    pub fn pair(channel: u32, peer: u32, depth: usize, waker: Arc<dyn Wake>) -> (RemoteOut, OutChannel) {
        let (tx, rx) = bounded(depth);
        let out = RemoteOut {
            numbering: ChannelFrames::new(channel),
            frames: tx,
            waker,
        };
        let io = OutChannel {
            channel,
            peer,
            frames: rx,
        };
        (out, io)
    }

    /// Whether a send would block (a full queue is backpressure).
    pub fn is_full(&self) -> bool {
        self.frames.is_full()
    }

    /// Frames the queue takes before it is full.
    pub fn free_frames(&self) -> usize {
        self.frames
            .capacity()
            .map_or(usize::MAX, |c| c.saturating_sub(self.frames.len()))
    }

    fn build(&mut self, write: impl FnOnce(&mut FrameWriter<'_>)) -> Vec<u8> {
        self.numbering.build(write)
    }

    /// Builds and sends one frame, blocking while the queue is full.
    pub fn send(&mut self, write: impl FnOnce(&mut FrameWriter<'_>)) -> Result<(), ChannelClosed> {
        let bytes = self.build(write);
        self.frames.send(bytes).map_err(|_| ChannelClosed)?;
        self.waker.wake();
        Ok(())
    }

    /// Builds and sends one frame if the queue has room; false if it is full.
    pub fn try_send(&mut self, write: impl FnOnce(&mut FrameWriter<'_>)) -> Result<bool, ChannelClosed> {
        if self.frames.is_full() {
            return Ok(false);
        }
        let bytes = self.build(write);
        // Only this end sends on the queue, so the room seen above is still there.
        match self.frames.try_send(bytes) {
            Ok(()) => {
                self.waker.wake();
                Ok(true)
            }
            Err(TrySendError::Full(_)) => unreachable!("single producer found room taken"),
            Err(TrySendError::Disconnected(_)) => Err(ChannelClosed),
        }
    }
}

/// Receives frames of one channel and reports them consumed (which acks them).
pub struct RemoteIn {
    pub frames: Receiver<Frame>,
    progress: Arc<ConsumerProgress>,
    /// Wakes the I/O side so the ack (and so the sender's window) moves at once.
    waker: Arc<dyn Wake>,
}

impl RemoteIn {
    /// A channel from process `peer`: the consumer's end, and the I/O
    /// side's (`Node::add_in`).
    pub fn pair(
        channel: u32,
        peer: u32,
        window_frames: usize,
        waker: Arc<dyn Wake>,
    ) -> (RemoteIn, InChannel) {
        // The sender never has more than a window unacked, and only consumed
        // frames are acked: the queue never overflows.
        let (tx, rx) = bounded(window_frames);
        let progress = Arc::new(ConsumerProgress::default());
        let input = RemoteIn {
            frames: rx,
            progress: Arc::clone(&progress),
            waker,
        };
        let io = InChannel {
            channel,
            peer,
            frames: tx,
            progress,
        };
        (input, io)
    }

    fn consumed(&self, frame: &Frame) {
        self.progress.consumed(frame.header.last_seq());
        self.waker.wake();
    }

    pub fn try_recv(&self) -> Result<Frame, TryRecvError> {
        let frame = self.frames.try_recv()?;
        self.consumed(&frame);
        Ok(frame)
    }

    pub fn recv_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> Result<Frame, crossbeam_channel::RecvTimeoutError> {
        let frame = self.frames.recv_timeout(timeout)?;
        self.consumed(&frame);
        Ok(frame)
    }
}
