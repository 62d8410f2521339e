//! Sources as the shards see them: *streams*. A stream is what one reader
//! deals: its own chunk numbering, line ids, epochs and cuts, applied by
//! every receiver strictly in chunk order (`shard`'s module docs). A source
//! read by one reader is one stream. A source read on every process of a
//! cluster (`SourceConnector::readable_on_every_process`, with more than one
//! partition) is one stream per process: process `q` reads the partitions
//! `p` with `p % P == q` (none if `q` is past the last partition) and deals
//! them to every shard, so ingest does not funnel through process 0.
//!
//! Each stream of a spread source parses with its source's chain, so the
//! dataflow is unchanged; what changes is only which records are ordered
//! against which: per stream (so per partition, whose chunks one reader
//! deals in order), and per key whenever a key's records share a partition.
//! A record's id is (stream, line number within the stream), unique per
//! source; a checkpoint cuts every stream (each partition's position is in
//! its stream's cut), so a recovery reopens each partition on its process
//! at its position.

/// One stream: the source it reads and the process whose reader deals it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    /// The dataflow's source index (its parsing chain).
    pub source: u32,
    /// The process whose reader deals it.
    pub reader: u32,
    /// For a spread source, the cluster's process count: the reader reads
    /// the partitions `p % spread == reader`. `None`: every partition.
    pub spread: Option<u32>,
}

impl Stream {
    /// Whether this stream's reader reads `partition` of its source.
    pub fn reads_partition(&self, partition: u32) -> bool {
        self.spread
            .is_none_or(|processes| partition % processes == self.reader)
    }
}

/// A run's streams, in index order: each source in order, a spread one as
/// one stream per process (process 0's first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streams {
    streams: Vec<Stream>,
}

impl Streams {
    /// `sources` sources, all read by process 0.
    pub fn unspread(sources: usize) -> Streams {
        Streams::plan(&vec![false; sources], 1)
    }

    /// The streams of a run whose sources `spread[s]` are read on every one
    /// of `processes` processes.
    pub fn plan(spread: &[bool], processes: u32) -> Streams {
        assert!(processes >= 1);
        let mut streams = Vec::new();
        for (source, spread) in spread.iter().enumerate() {
            let source = source as u32;
            if *spread && processes > 1 {
                streams.extend((0..processes).map(|reader| Stream {
                    source,
                    reader,
                    spread: Some(processes),
                }));
            } else {
                streams.push(Stream {
                    source,
                    reader: 0,
                    spread: None,
                });
            }
        }
        Streams { streams }
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    pub fn get(&self, stream: u32) -> Stream {
        self.streams[stream as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, Stream)> + '_ {
        self.streams.iter().enumerate().map(|(i, s)| (i as u32, *s))
    }

    /// Whether any stream is read by a process other than 0.
    pub fn any_spread(&self) -> bool {
        self.streams.iter().any(|s| s.spread.is_some())
    }

    /// The name of each stream, as dead letters, errors and checkpoint
    /// fingerprints give it: its source's, with `@p<reader>` for a spread one.
    pub fn names(&self, source_names: &[String]) -> Vec<String> {
        self.streams
            .iter()
            .map(|s| {
                let name = &source_names[s.source as usize];
                match s.spread {
                    Some(_) => format!("{name}@p{}", s.reader),
                    None => name.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_source_is_one_stream_per_process_reading_every_pth_partition() {
        let streams = Streams::plan(&[false, true], 3);
        assert_eq!(streams.len(), 4);
        assert_eq!(
            streams.get(0),
            Stream {
                source: 0,
                reader: 0,
                spread: None
            }
        );
        let readers: Vec<(u32, u32)> = streams.iter().map(|(_, s)| (s.source, s.reader)).collect();
        assert_eq!(readers, [(0, 0), (1, 0), (1, 1), (1, 2)]);
        // 7 partitions over 3 processes: 0,3,6 / 1,4 / 2,5.
        let read = |stream: u32| -> Vec<u32> {
            (0..7)
                .filter(|p| streams.get(stream).reads_partition(*p))
                .collect()
        };
        assert_eq!(read(1), [0, 3, 6]);
        assert_eq!(read(2), [1, 4]);
        assert_eq!(read(3), [2, 5]);
        assert_eq!(
            read(0),
            (0..7).collect::<Vec<_>>(),
            "an unspread stream reads all"
        );
        assert_eq!(
            streams.names(&["q".into(), "dir:///o".into()]),
            ["q", "dir:///o@p0", "dir:///o@p1", "dir:///o@p2"]
        );
    }

    #[test]
    fn one_process_spreads_nothing() {
        let streams = Streams::plan(&[true, true], 1);
        assert_eq!(streams, Streams::unspread(2));
        assert!(!streams.any_spread());
    }
}
