//! The queues of a run. Between two shards of one process a queue is a bounded
//! crossbeam channel of typed batches; between processes it is a numbered
//! channel of the I/O thread carrying encoded frames. Shards see both through
//! the same endpoint types.

use super::gauges::{BlockedTime, DepthProbe, ShardDepths};
use super::RunConfig;
use crate::cluster::codec::{decode_batch, decode_source_event, encode_batch, encode_source_event};
use crate::cluster::{channel_id, ChannelClosed, Layout, RemoteIn, RemoteOut};
use crate::driver::Sent;
use crate::key::Key;
use crate::shard::Batch;
use crate::sink::OutputMessage;
use crate::source::SourceEvent;
use crate::wire::Wire;
use crossbeam_channel::{bounded, Receiver, Select, Sender, TryRecvError, TrySendError};
use std::sync::Arc;
use verity_net::node::Node;

/// Where batches from one peer shard come in.
pub enum BatchIn<K, V> {
    /// Shared only with a `DepthProbe`, which holds it weakly.
    Local(Arc<Receiver<Batch<K, V>>>),
    Remote(RemoteIn),
}

/// Where batches to one peer shard go.
pub enum BatchOut<K, V> {
    Local(Sender<Batch<K, V>>),
    Remote(RemoteOut),
}

/// Where a shard's dealt chunks of one source come in.
pub enum ChunksIn {
    /// Shared only with a `DepthProbe`, which holds it weakly.
    Local(Arc<Receiver<SourceEvent>>),
    Remote(RemoteIn),
}

/// Where a source reader deals chunks for one shard.
pub enum ChunksOut {
    Local(Sender<SourceEvent>),
    Remote(RemoteOut),
}

/// Where a shard's output and dead letters go.
pub enum OutputOut {
    Local(Sender<(u32, OutputMessage)>),
    /// Towards process 0's sinks.
    Remote(RemoteOut),
}

impl<K: Key + Wire, V: Wire> BatchIn<K, V> {
    pub fn try_take(&self, source: u32, from: u32) -> Option<Batch<K, V>> {
        match self {
            // A finished peer drops its queues. It may be "awaited" for a chunk
            // past the end that this shard has not yet learnt of; it owes nothing.
            BatchIn::Local(rx) => rx.try_recv().ok(),
            BatchIn::Remote(remote) => remote.try_recv().ok().map(|frame| {
                decode_batch(&frame, source, from).unwrap_or_else(|e| {
                    panic!("undecodable batch from shard {from} of an authenticated peer: {e}")
                })
            }),
        }
    }

    pub fn watch<'a>(&'a self, select: &mut Select<'a>) {
        match self {
            BatchIn::Local(rx) => select.recv(rx.as_ref()),
            BatchIn::Remote(remote) => select.recv(&remote.frames),
        };
    }
}

impl<K: Wire, V: Wire> BatchOut<K, V> {
    pub fn try_send(&mut self, batch: Batch<K, V>) -> Sent<Batch<K, V>> {
        match self {
            BatchOut::Local(tx) => match tx.try_send(batch) {
                Ok(()) => Sent::Done,
                Err(TrySendError::Full(batch)) => Sent::Full(batch),
                Err(TrySendError::Disconnected(_)) => panic!("a shard is gone while peers still send"),
            },
            BatchOut::Remote(remote) => match remote.try_send(|frame| encode_batch(&batch, frame)) {
                Ok(true) => Sent::Done,
                Ok(false) => Sent::Full(batch),
                Err(ChannelClosed) => panic!("the network thread is gone while shards still send"),
            },
        }
    }
}

impl ChunksIn {
    pub fn try_take(&self, source: u32) -> Option<SourceEvent> {
        match self {
            ChunksIn::Local(rx) => match rx.try_recv() {
                Ok(event) => Some(event),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => {
                    panic!("reader of source {source} vanished without an end")
                }
            },
            ChunksIn::Remote(remote) => remote.try_recv().ok().map(|frame| {
                decode_source_event(&frame, source)
                    .unwrap_or_else(|e| panic!("undecodable chunk of stream {source} from its reader: {e}"))
            }),
        }
    }

    pub fn watch<'a>(&'a self, select: &mut Select<'a>) {
        match self {
            ChunksIn::Local(rx) => select.recv(rx.as_ref()),
            ChunksIn::Remote(remote) => select.recv(&remote.frames),
        };
    }
}

impl ChunksOut {
    /// Blocks while the shard's queue is full (adding the wait to
    /// `blocked`); false once the shard is gone.
    pub fn send(&mut self, event: SourceEvent, blocked: &BlockedTime) -> bool {
        match self {
            ChunksOut::Local(tx) => blocked.send(tx.is_full(), || tx.send(event).is_ok()),
            ChunksOut::Remote(remote) => blocked.send(remote.is_full(), || {
                remote.send(|frame| encode_source_event(&event, frame)).is_ok()
            }),
        }
    }
}

/// Per source, per peer shard (global index): the queue end (`None` for self).
pub type PerSourcePeer<T> = Vec<Vec<Option<T>>>;

/// A shard's ends of the queues. Indexes: `[source][global peer shard]`.
pub struct ShardChannels<K, V> {
    pub chunks: Vec<ChunksIn>,
    pub batches_in: PerSourcePeer<BatchIn<K, V>>,
    pub batches_out: PerSourcePeer<BatchOut<K, V>>,
    pub output: OutputOut,
    pub discard_lines: bool,
}

/// Every queue end of this process, before they are handed to the threads.
pub struct Wiring<K, V> {
    /// Per stream this process reads, in stream order: the stream and its
    /// ends `[global shard]`.
    pub chunk_outs: Vec<(u32, Vec<ChunksOut>)>,
    /// This process's shards, in order.
    pub shards: Vec<ShardChannels<K, V>>,
    /// Process 0 only: each remote shard's output channel.
    pub remote_outputs: Vec<(u32, RemoteIn)>,
    /// This process's shards' local incoming queues, in order (live metrics).
    pub depths: Vec<ShardDepths>,
}

/// How this process reaches the others, if there are others.
pub struct Net<'a> {
    pub node: &'a Node,
    pub window_frames: usize,
}

impl Net<'_> {
    pub fn out(&self, channel: u32, peer: u32, depth: usize) -> RemoteOut {
        let (out, io) = RemoteOut::pair(channel, peer, depth, self.node.waker());
        self.node.add_out(io);
        out
    }

    pub fn input(&self, channel: u32, peer: u32) -> RemoteIn {
        let (input, io) = RemoteIn::pair(channel, peer, self.window_frames, self.node.waker());
        self.node.add_in(io);
        input
    }
}

/// Builds this process's queues. `readers[s]` is the process that deals
/// stream `s` (`streams::Streams`); `output` is the local output thread's
/// queue (process 0), `None` on workers.
pub fn wire<K, V>(
    readers: &[u32],
    layout: &Layout,
    config: &RunConfig,
    output: Option<&Sender<(u32, OutputMessage)>>,
    discard_lines: bool,
    net: Option<&Net<'_>>,
) -> Wiring<K, V>
where
    K: Send + 'static,
    V: Send + 'static,
{
    let total = layout.total_shards() as usize;
    let local = layout.local_shards();
    let sources = readers.len();
    let leader = layout.process_id == 0;
    let remote = |what: &str| net.unwrap_or_else(|| panic!("{what} crosses processes without a network"));
    let mut shards: Vec<ShardChannels<K, V>> = local
        .clone()
        .map(|shard| ShardChannels {
            chunks: Vec::with_capacity(sources),
            batches_in: (0..sources).map(|_| (0..total).map(|_| None).collect()).collect(),
            batches_out: (0..sources).map(|_| (0..total).map(|_| None).collect()).collect(),
            output: match output {
                Some(tx) => OutputOut::Local(tx.clone()),
                None => OutputOut::Remote(remote("output").out(
                    channel_id::output(shard),
                    0,
                    config.output_queue_depth_buffers,
                )),
            },
            discard_lines,
        })
        .collect();
    let offset = local.start;
    let mut depths: Vec<ShardDepths> = local.clone().map(|_| ShardDepths::default()).collect();
    let mut chunk_outs = Vec::new();
    for source in 0..sources as u32 {
        let reader = readers[source as usize];
        if reader == layout.process_id {
            let mut outs = Vec::with_capacity(total);
            for shard in 0..total as u32 {
                if local.contains(&shard) {
                    let (tx, rx) = bounded(config.source_queue_depth_chunks);
                    let rx = Arc::new(rx);
                    depths[(shard - offset) as usize].chunks.push(DepthProbe::of(&rx));
                    shards[(shard - offset) as usize].chunks.push(ChunksIn::Local(rx));
                    outs.push(ChunksOut::Local(tx));
                } else {
                    let (channel, to) = (channel_id::chunk(source, shard), layout.process_of(shard));
                    outs.push(ChunksOut::Remote(remote("a chunk").out(
                        channel,
                        to,
                        config.source_queue_depth_chunks,
                    )));
                }
            }
            chunk_outs.push((source, outs));
        } else {
            for shard in local.clone() {
                let input = remote("a chunk").input(channel_id::chunk(source, shard), reader);
                shards[(shard - offset) as usize]
                    .chunks
                    .push(ChunksIn::Remote(input));
            }
        }
        wire_batches(&mut shards, &mut depths, source, layout, config, net);
    }
    let remote_outputs = if leader {
        (0..total as u32)
            .filter(|shard| !local.contains(shard))
            .map(|shard| {
                let from = layout.process_of(shard);
                (shard, remote("output").input(channel_id::output(shard), from))
            })
            .collect()
    } else {
        Vec::new()
    };
    Wiring {
        chunk_outs,
        shards,
        remote_outputs,
        depths,
    }
}

/// The batch queues of one source: local pairs in memory, the rest over the network.
fn wire_batches<K, V>(
    shards: &mut [ShardChannels<K, V>],
    depths: &mut [ShardDepths],
    source: u32,
    layout: &Layout,
    config: &RunConfig,
    net: Option<&Net<'_>>,
) where
    K: Send + 'static,
    V: Send + 'static,
{
    let local = layout.local_shards();
    let offset = local.start;
    let s = source as usize;
    for from in 0..layout.total_shards() {
        for to in (0..layout.total_shards()).filter(|to| *to != from) {
            match (local.contains(&from), local.contains(&to)) {
                (true, true) => {
                    let (tx, rx) = bounded(config.queue_depth_batches);
                    let rx = Arc::new(rx);
                    depths[(to - offset) as usize].batches.push(DepthProbe::of(&rx));
                    shards[(from - offset) as usize].batches_out[s][to as usize] = Some(BatchOut::Local(tx));
                    shards[(to - offset) as usize].batches_in[s][from as usize] = Some(BatchIn::Local(rx));
                }
                (true, false) => {
                    let net = net.expect("remote shards need a network");
                    let out = net.out(
                        channel_id::batch(source, from, to),
                        layout.process_of(to),
                        config.queue_depth_batches,
                    );
                    shards[(from - offset) as usize].batches_out[s][to as usize] =
                        Some(BatchOut::Remote(out));
                }
                (false, true) => {
                    let net = net.expect("remote shards need a network");
                    let input = net.input(channel_id::batch(source, from, to), layout.process_of(from));
                    shards[(to - offset) as usize].batches_in[s][from as usize] =
                        Some(BatchIn::Remote(input));
                }
                (false, false) => {}
            }
        }
    }
}
