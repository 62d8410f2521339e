//! Running one dataflow over several processes: the layout of shards over
//! processes, the channels between them, and the process-level protocol
//! (process 0 deals source chunks and collects output; workers run shards),
//! and the lifecycle of a run (`lifecycle`: job, start, finish, shutdown,
//! failure) as sans-IO state machines.
//!
//! Every cross-process queue of the single-process runtime becomes a numbered
//! channel of `verity_net`: one per (source, sending shard, receiving shard)
//! for batches, per (source, shard) for dealt chunks, per shard for output
//! towards the sinks, per worker for control. So the same turn-order argument
//! that keeps the threaded runtime deadlock-free holds across processes.

pub mod codec;
mod config;
mod control;
pub mod lifecycle;
pub mod relay;
mod remote;

pub use config::{ClusterFile, ProcessEntry};
pub use control::{ControlLinks, ControlSendError, CONTROL_QUEUE_DEPTH_FRAMES};
pub use lifecycle::{
    Action, Control, Deadlines, Event, Job, JobCheckpoints, LeaderLifecycle, Lifecycle, Outcome,
    ReadersProgress, WorkerLifecycle,
};

pub use remote::{ChannelClosed, RemoteIn, RemoteOut};

use std::ops::Range;

/// Shards per process, in process order: process `p` owns the global shards
/// `offset(p) .. offset(p) + workers[p]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub workers: Vec<u32>,
    pub process_id: u32,
}

/// Channel ids pack (kind, source, from, to) into 32 bits.
pub const CLUSTER_SHARDS_MAX: u32 = 1 << 10;
pub const CLUSTER_SOURCES_MAX: u32 = 1 << 8;

impl Layout {
    pub fn new(workers: Vec<u32>, process_id: u32) -> Result<Layout, ClusterError> {
        let total: u32 = workers.iter().sum();
        if workers.is_empty() || workers.contains(&0) {
            return Err(ClusterError::Config(
                "every process needs at least one worker".into(),
            ));
        }
        if total > CLUSTER_SHARDS_MAX {
            return Err(ClusterError::Config(format!(
                "at most {CLUSTER_SHARDS_MAX} shards in a cluster"
            )));
        }
        if process_id as usize >= workers.len() {
            return Err(ClusterError::Config(format!(
                "process id {process_id} is not in the cluster"
            )));
        }
        Ok(Layout { workers, process_id })
    }

    pub fn processes(&self) -> u32 {
        self.workers.len() as u32
    }

    pub fn total_shards(&self) -> u32 {
        self.workers.iter().sum()
    }

    pub fn shards_of(&self, process: u32) -> Range<u32> {
        let offset: u32 = self.workers[..process as usize].iter().sum();
        offset..offset + self.workers[process as usize]
    }

    pub fn local_shards(&self) -> Range<u32> {
        self.shards_of(self.process_id)
    }

    pub fn process_of(&self, shard: u32) -> u32 {
        let mut end = 0;
        for (process, workers) in self.workers.iter().enumerate() {
            end += workers;
            if shard < end {
                return process as u32;
            }
        }
        panic!("shard {shard} is beyond the cluster's {end} shards");
    }

    pub fn is_local_to(&self, process: u32, shard: u32) -> bool {
        self.process_of(shard) == process
    }

    pub fn is_local(&self, shard: u32) -> bool {
        self.process_of(shard) == self.process_id
    }
}

/// Channel ids: `kind:2 | source:8 | from:10 | to:10`.
pub mod channel_id {
    use super::{CLUSTER_SHARDS_MAX, CLUSTER_SOURCES_MAX};

    const BATCH: u32 = 0;
    const CHUNK: u32 = 1;
    const OUTPUT: u32 = 2;
    const CONTROL: u32 = 3;

    fn pack(kind: u32, source: u32, from: u32, to: u32) -> u32 {
        assert!(source < CLUSTER_SOURCES_MAX && from < CLUSTER_SHARDS_MAX && to < CLUSTER_SHARDS_MAX);
        kind << 30 | source << 20 | from << 10 | to
    }

    pub fn batch(source: u32, from: u32, to: u32) -> u32 {
        pack(BATCH, source, from, to)
    }

    pub fn chunk(source: u32, to: u32) -> u32 {
        pack(CHUNK, source, 0, to)
    }

    pub fn output(from: u32) -> u32 {
        pack(OUTPUT, 0, from, 0)
    }

    /// Process 0 → a worker.
    pub fn control(to_process: u32) -> u32 {
        assert!(
            to_process > 0,
            "process 0 sends control, it does not receive it on this channel"
        );
        pack(CONTROL, 0, 0, to_process)
    }

    /// A worker → process 0.
    pub fn control_up(from_process: u32) -> u32 {
        assert!(from_process > 0, "workers report to process 0");
        pack(CONTROL, 0, from_process, 0)
    }

    /// What a channel carries, in words (for traces and logs).
    pub fn describe(id: u32) -> String {
        let (source, from, to) = (id >> 20 & 0xff, id >> 10 & 0x3ff, id & 0x3ff);
        match id >> 30 {
            BATCH => format!("batches of source {source} shard {from}->{to}"),
            CHUNK => format!("chunks of source {source} to shard {to}"),
            OUTPUT => format!("output of shard {from}"),
            _ if to == 0 => format!("control from process {from}"),
            _ => format!("control to process {to}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster configuration: {0}")]
    Config(String),
    #[error("malformed message from a peer: {0}")]
    Malformed(String),
    #[error("{0}")]
    Net(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_maps_shards_to_processes() {
        let layout = Layout::new(vec![2, 1, 3], 1).unwrap();
        assert_eq!(layout.total_shards(), 6);
        assert_eq!(layout.local_shards(), 2..3);
        assert_eq!(layout.shards_of(2), 3..6);
        assert_eq!(
            (0..6).map(|s| layout.process_of(s)).collect::<Vec<_>>(),
            [0, 0, 1, 2, 2, 2]
        );
        assert!(Layout::new(vec![1, 0], 0).is_err());
        assert!(Layout::new(vec![1], 1).is_err());
    }

    #[test]
    fn channel_ids_are_distinct() {
        let mut ids = std::collections::BTreeSet::new();
        for source in 0..3 {
            for from in 0..5 {
                for to in 0..5 {
                    assert!(ids.insert(channel_id::batch(source, from, to)));
                }
                assert!(ids.insert(channel_id::chunk(source, from)));
            }
        }
        for shard in 0..5 {
            assert!(ids.insert(channel_id::output(shard)));
        }
        for process in 1..5 {
            assert!(ids.insert(channel_id::control(process)));
            assert!(ids.insert(channel_id::control_up(process)));
        }
    }
}
