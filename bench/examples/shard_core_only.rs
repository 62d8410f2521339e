//! Profiling harness: drives one `ShardCore` directly, without threads or queues,
//! over generated wordcount input, to see what the shard logic itself costs
//! (`perf record target/release/examples/shard_core_only`).
//!
//! Usage: `cargo run --release -p verity-bench --example shard_core_only [RECORDS]`

use bytes::Bytes;
use std::time::Instant;
use verity_apps::{generate, wordcount, AppName};
use verity_core::shard::{Effect, ShardCore, ShardLimits};
use verity_core::source::{ChunkData, SourceEvent};
use verity_core::{Position, SourceSpec};

fn main() {
    let records = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000_000);
    let input = Bytes::from(generate::generate_all(AppName::Wordcount, records, 42));
    let flow = wordcount::dataflow(SourceSpec::memory("m", Bytes::new()), false);
    let mut cores = ShardCore::build_range(&flow.logic, 1, 0..1, ShardLimits::default());
    let core = &mut cores[0];
    let start = Instant::now();
    let mut data = input.clone();
    let mut index = 0;
    let mut line = 1;
    let mut out = 0usize;
    while !data.is_empty() {
        let cut = verity_core::source::CHUNK_SIZE_BYTES.min(data.len());
        let cut = memchr::memrchr(b'\n', &data[..cut]).map_or(data.len(), |p| p + 1);
        let chunk = ChunkData::Lines(data.split_to(cut));
        let lines = chunk.line_count();
        core.on_source_event(SourceEvent::Chunk {
            source: 0,
            index,
            first_line: line,
            data: chunk,
            partition: 0,
            position: Position::Text {
                bytes: (input.len() - data.len()) as u64,
                lines: line - 1 + lines,
            },
            epoch: 0,
        });
        index += 1;
        line += lines;
        let effects: Vec<_> = core.drain_effects().collect();
        for e in effects {
            if let Effect::Output(b) = e {
                out += b.len();
                core.recycle_output(b);
            }
        }
    }
    println!(
        "shard core only: {records} records in {:?} ({out} bytes out)",
        start.elapsed()
    );
}
