//! The simulated processes: the reader's dealing, the shards, and process 0's
//! output relay.

use super::*;

impl<'a, K, V, S, O> World<'a, K, V, S, O>
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: Default + Send + 'static,
    O: 'static,
{
    // ---- the reader ----------------------------------------------------

    pub(super) fn release(&mut self, index: usize) {
        let (shard, event) = std::mem::replace(
            &mut self.dealt[index],
            (0, SourceEvent::End { source: 0, chunks: 0 }),
        );
        self.trace(format_args!("release event {index} for shard {shard}"));
        if self.layout.is_local_to(0, shard) {
            self.local_chunks[shard as usize].push_back(event);
            self.step_process(0);
        } else {
            let channel = channel_id::chunk(SOURCE, shard);
            self.queue_frame(channel, |frame| encode_source_event(&event, frame));
            self.pump(0);
        }
    }

    // ---- processes -----------------------------------------------------

    pub(super) fn step_process(&mut self, process: u32) {
        if self.paused(process) {
            return;
        }
        let shards = self.layout.shards_of(process);
        let mut progressed = true;
        while progressed {
            progressed = false;
            for shard in shards.clone() {
                progressed |= self.feed_shard(shard);
            }
        }
        if process == 0 {
            self.relay_outputs();
        }
        self.pump(process);
    }

    /// Process 0 takes remote shards' output into the sink, as its relay
    /// threads do.
    pub(super) fn relay_outputs(&mut self) {
        let remote: Vec<u32> = (0..self.layout.total_shards())
            .filter(|s| !self.layout.is_local_to(0, *s))
            .collect();
        for shard in remote {
            while let Some(frame) = self.take_frame(channel_id::output(shard)) {
                match decode_upstream(&frame).expect("frames of our own encoding decode") {
                    Upstream::Lines(lines) => self.output.extend_from_slice(&lines),
                    Upstream::Finished(_) => self.remote_finished += 1,
                    Upstream::DeadLetter(_) | Upstream::SourceFailed { .. } => {}
                }
            }
        }
    }

    /// Done as process 0 sees it: its shards finished, every remote shard
    /// said so, and (so) all their output is in.
    pub(super) fn is_done(&self) -> bool {
        let local = self.layout.shards_of(0);
        let remote_shards = self.layout.total_shards() - local.len() as u32;
        self.remote_finished == remote_shards && local.clone().all(|s| self.shards[s as usize].is_finished())
    }

    /// Gives a shard what it awaits and carries out its effects.
    pub(super) fn feed_shard(&mut self, shard: u32) -> bool {
        let mut progressed = false;
        let mut awaited = Vec::new();
        loop {
            self.shards[shard as usize].awaited_senders(&mut awaited);
            let Some(batch) = awaited.iter().find_map(|&(_, from)| self.take_batch(from, shard)) else {
                break;
            };
            self.shards[shard as usize].on_batch(batch);
            progressed = true;
        }
        if self.shards[shard as usize].wants_chunk(SOURCE) {
            if let Some(event) = self.take_chunk(shard) {
                self.shards[shard as usize].on_source_event(event);
                progressed = true;
            }
        }
        self.shards[shard as usize].flush();
        let effects: Vec<Effect<K, V>> = self.shards[shard as usize].drain_effects().collect();
        for effect in effects {
            match effect {
                Effect::Send { to, batch } => self.send_batch(shard, to, batch),
                Effect::Output(lines) => {
                    if self.layout.is_local_to(0, shard) {
                        self.output.extend_from_slice(&lines);
                    } else {
                        // Towards process 0's sink, over the network like any frame.
                        let message = UpstreamRef::Lines(&lines);
                        self.queue_frame(channel_id::output(shard), |frame| {
                            encode_upstream(&message, frame)
                        });
                    }
                    self.shards[shard as usize].recycle_output(lines);
                }
                Effect::DeadLetter(_) | Effect::SourceFailed { .. } => {}
            }
        }
        let core = &self.shards[shard as usize];
        if core.is_finished() && !self.layout.is_local_to(0, shard) && !self.reported_finished[shard as usize]
        {
            self.reported_finished[shard as usize] = true;
            let message = UpstreamRef::Finished(core.counters());
            self.queue_frame(channel_id::output(shard), |frame| {
                encode_upstream(&message, frame)
            });
        }
        progressed
    }

    pub(super) fn take_batch(&mut self, from: u32, to: u32) -> Option<Batch<K, V>> {
        if self.layout.process_of(from) == self.layout.process_of(to) {
            return self.local_batches.get_mut(&(from, to))?.pop_front();
        }
        let frame = self.take_frame(channel_id::batch(SOURCE, from, to))?;
        Some(decode_batch(&frame, SOURCE, from).expect("frames of our own encoding decode"))
    }

    pub(super) fn take_chunk(&mut self, shard: u32) -> Option<SourceEvent> {
        if self.layout.is_local_to(0, shard) {
            return self.local_chunks[shard as usize].pop_front();
        }
        let frame = self.take_frame(channel_id::chunk(SOURCE, shard))?;
        Some(decode_source_event(&frame, SOURCE).expect("frames of our own encoding decode"))
    }

    /// The consumer takes a frame; what it took is what gets acked.
    pub(super) fn send_batch(&mut self, from: u32, to: u32, batch: Batch<K, V>) {
        if self.layout.process_of(from) == self.layout.process_of(to) {
            self.local_batches.entry((from, to)).or_default().push_back(batch);
        } else {
            self.queue_frame(channel_id::batch(SOURCE, from, to), |frame| {
                encode_batch(&batch, frame)
            });
        }
    }
}

/// The reader's dealing of the whole input, in order: the production chunker
/// and dealer, with the seed's chunk size.
pub(super) fn deal(input: &Bytes, shards: u32, chunk_bytes: usize) -> Vec<(u32, SourceEvent)> {
    let mut dealt = Vec::new();
    let mut send = |shard: usize, event| {
        dealt.push((shard as u32, event));
        true
    };
    let mut dealer = Dealer::new(SOURCE, shards as usize, &mut send);
    let mut chunker = LineChunker::new(&input[..], chunk_bytes, LINE_SIZE_MAX_BYTES);
    while let Ok(Some(piece)) = chunker.next_piece() {
        match piece {
            Piece::Lines(data) => dealer.deal(ChunkData::Lines(data)),
            Piece::Oversized { prefix, size_bytes } => {
                dealer.deal(ChunkData::Oversized { prefix, size_bytes })
            }
            Piece::Idle => continue,
        };
    }
    dealer.finish(None);
    dealt
}
