//! The simulated network: links between processes that carry production
//! frames, with the seed's faults.

use super::*;

impl<'a, K, V, S, O> World<'a, K, V, S, O>
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: Default + Send + 'static,
    O: 'static,
{
    pub(super) fn wire_channels(&mut self) {
        let total = self.layout.total_shards();
        let window = self.buggify.window_frames;
        let sources = self.readers.len() as u32;
        for to in 0..total {
            if !self.layout.is_local_to(0, to) {
                let process = self.layout.process_of(to);
                for source in 0..sources {
                    self.add_channel(channel_id::chunk(source, to), 0, process, window);
                }
                self.add_channel(channel_id::output(to), process, 0, window);
            }
            for from in (0..total).filter(|from| *from != to) {
                let (p, q) = (self.layout.process_of(from), self.layout.process_of(to));
                if p != q {
                    for source in 0..sources {
                        self.add_channel(channel_id::batch(source, from, to), p, q, window);
                    }
                }
            }
        }
    }

    pub(super) fn add_channel(&mut self, channel: u32, from: u32, to: u32, window: usize) {
        let sender = ChannelSender::new(channel, 64 << 20, window);
        self.outs.insert(
            channel,
            OutChan {
                from,
                to,
                sender,
                pending: VecDeque::new(),
                next_seq: 1,
            },
        );
        let receiver = ChannelReceiver::new(channel);
        self.ins.insert(
            channel,
            InChan {
                receiver,
                queue: VecDeque::new(),
                consumed: 0,
                acked: 0,
            },
        );
    }

    /// Room in a channel's producer queue (production: `Net::out`'s bounded
    /// queue, which the I/O thread drains as the window allows; here the
    /// frames waiting for the window).
    pub(super) fn frame_queue_has_room(&self, channel: u32) -> bool {
        let out = self.outs.get(&channel).expect("wired channel");
        out.pending.len() < self.frame_queue_depth(channel)
    }

    pub(super) fn take_frame(&mut self, channel: u32) -> Option<Frame> {
        let input = self.ins.get_mut(&channel)?;
        let frame = input.queue.pop_front()?;
        let last = frame.header.first_seq + frame.header.record_count as u64 - 1;
        input.consumed = input.consumed.max(last);
        Some(frame)
    }

    /// Encodes one frame onto a channel's pending queue, numbered in order.
    pub(super) fn queue_frame(&mut self, channel: u32, write: impl FnOnce(&mut FrameWriter<'_>)) {
        let out = self.outs.get_mut(&channel).expect("wired channel");
        let mut bytes = Vec::new();
        let mut frame = FrameWriter::begin(&mut bytes, FrameKind::Data, channel, out.next_seq);
        write(&mut frame);
        out.next_seq += frame.record_count() as u64;
        frame.finish();
        out.pending.push_back(Bytes::from(bytes));
    }

    /// Moves frames into windows and onto links; sends due acks.
    pub(super) fn pump(&mut self, process: u32) {
        if self.paused(process) {
            return;
        }
        let channels: Vec<u32> = self
            .outs
            .iter()
            .filter(|(_, o)| o.from == process)
            .map(|(c, _)| *c)
            .collect();
        for channel in channels {
            loop {
                let out = self.outs.get_mut(&channel).expect("listed");
                let Some(bytes) = out.pending.front() else { break };
                if !out.sender.has_room(bytes.len()) {
                    self.stats.bump("full_windows");
                    break;
                }
                let bytes = out.pending.pop_front().expect("front");
                let (_, count) = peek_numbers(&bytes).expect("own frame");
                out.sender.record_sent(count, bytes.clone());
                let to = out.to;
                self.transmit(process, to, bytes);
            }
        }
        let acks: Vec<(u32, u64)> = self
            .ins
            .iter()
            .filter(|(c, i)| self.outs[c].to == process && i.consumed > i.acked)
            .map(|(c, i)| (*c, i.consumed))
            .collect();
        for (channel, consumed) in acks {
            let peer = self.outs[&channel].from;
            if self.link(process, peer).up {
                let mut ack = Vec::new();
                encode_frame(&mut ack, FrameKind::Ack, channel, consumed, &[]);
                self.ins.get_mut(&channel).expect("listed").acked = consumed;
                self.transmit(process, peer, Bytes::from(ack));
            }
        }
    }

    // ---- the network ---------------------------------------------------

    pub(super) fn link(&mut self, a: u32, b: u32) -> &mut Link {
        self.links
            .get_mut(&(a.min(b), a.max(b)))
            .expect("every pair is linked")
    }

    pub(super) fn direction(from: u32, to: u32) -> usize {
        usize::from(from > to)
    }

    /// Puts bytes on the wire from `from` to `to`, with the seed's faults.
    pub(super) fn transmit(&mut self, from: u32, to: u32, bytes: Bytes) {
        let link = self.link(from, to);
        let (up, epoch) = (link.up, link.epoch);
        if !up {
            return; // kept in the retransmit buffer for the reconnect
        }
        let faults = self.config.faults;
        if self.partitioned(from, to) {
            // TCP keeps retransmitting underneath: the bytes arrive when the
            // partition heals, unless the connection is given up first.
            let heals = self.partition.map_or(self.now_us, |(_, until)| until);
            let dir = Self::direction(from, to);
            let link = self.link(from, to);
            let arrival = (heals + LATENCY_BASE_US).max(link.last_arrival_us[dir]);
            link.last_arrival_us[dir] = arrival;
            self.trace(format_args!(
                "partition holds {} bytes {from}->{to} until {arrival}",
                bytes.len()
            ));
            self.schedule(
                arrival,
                Event::Deliver {
                    from,
                    to,
                    epoch,
                    bytes,
                },
            );
            return;
        }
        if self.faults_on() && faults.drop && self.rng.chance(FRAME_FAULT_PER_MILLE, 1000) {
            // TCP loses nothing silently: losing bytes means the stream broke,
            // which the receiver notices (a gap, a bad frame, a reset).
            self.stats.fault("drop");
            self.trace(format_args!("fault: drop {} bytes {from}->{to}", bytes.len()));
            let at = self.now_us + LATENCY_BASE_US;
            self.schedule(
                at,
                Event::Cut {
                    a: from.min(to),
                    b: from.max(to),
                },
            );
            return;
        }
        let mut latency = LATENCY_BASE_US + self.rng.below(LATENCY_JITTER_US);
        if self.faults_on() && faults.delay {
            latency += self.rng.below(DELAY_MAX_US);
            self.stats.fault("delay");
        }
        let reorder = self.faults_on() && faults.reorder && self.rng.chance(FRAME_FAULT_PER_MILLE, 1000);
        let now = self.now_us;
        let dir = Self::direction(from, to);
        let link = self.link(from, to);
        // A connection keeps order unless the `reorder` fault overtakes.
        let arrival = if reorder {
            now + 1
        } else {
            (now + latency).max(link.last_arrival_us[dir])
        };
        if !reorder {
            link.last_arrival_us[dir] = arrival;
        }
        if reorder {
            self.stats.fault("reorder");
            self.trace(format_args!("fault: reorder {} bytes {from}->{to}", bytes.len()));
        }
        if self.faults_on() && faults.duplicate && self.rng.chance(FRAME_FAULT_PER_MILLE, 1000) {
            self.stats.fault("duplicate");
            self.trace(format_args!(
                "fault: duplicate {} bytes {from}->{to}",
                bytes.len()
            ));
            self.schedule(
                arrival + 1,
                Event::Deliver {
                    from,
                    to,
                    epoch,
                    bytes: bytes.clone(),
                },
            );
        }
        self.schedule(
            arrival,
            Event::Deliver {
                from,
                to,
                epoch,
                bytes,
            },
        );
    }

    pub(super) fn deliver(&mut self, from: u32, to: u32, epoch: u64, bytes: Bytes) {
        let link = self.link(from, to);
        if !link.up || link.epoch != epoch {
            return; // sent on a connection that is gone
        }
        if self.paused(to) {
            let until = self.processes[to as usize].paused_until_us;
            self.schedule(
                until,
                Event::Deliver {
                    from,
                    to,
                    epoch,
                    bytes,
                },
            );
            return;
        }
        // BUGGIFY: bytes arrive in pieces, so partial frames are the rule.
        let mut frames = Vec::new();
        let mut rest = &bytes[..];
        let dir = Self::direction(from, to);
        while !rest.is_empty() {
            let piece = (1 + self.rng.below(rest.len() as u64) as usize).min(rest.len());
            let decoder = &mut self.link(from, to).decoders[dir];
            decoder.extend_from_slice(&rest[..piece]);
            rest = &rest[piece..];
            loop {
                match self.link(from, to).decoders[dir].next_frame() {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(e) => return self.cut(from, to, &format!("bad frame {from}->{to}: {e}")),
                }
            }
        }
        let clock = self.local_clock_ms(to);
        self.link(from, to).liveness[dir].on_heard(clock);
        for frame in frames {
            if let Err(why) = self.on_frame(from, to, frame) {
                return self.cut(from, to, &why);
            }
        }
        self.step_process(to);
        self.pump(from);
    }

    pub(super) fn on_frame(&mut self, from: u32, to: u32, frame: Frame) -> Result<(), String> {
        let header = frame.header;
        match header.kind {
            FrameKind::Data => {
                let what = channel_id::describe(header.channel);
                self.trace(format_args!(
                    "process {from}->{to}: frame seq {} +{} of {what}",
                    header.first_seq, header.record_count
                ));
                let no_dedup = self.config.bugs.no_dedup;
                let input = self
                    .ins
                    .get_mut(&header.channel)
                    .ok_or("data on an unknown channel")?;
                match input.receiver.admit(header.first_seq, header.record_count) {
                    Admission::Apply { skip_records: 0 } => input.queue.push_back(frame),
                    Admission::Duplicate if no_dedup => input.queue.push_back(frame),
                    Admission::Duplicate => {}
                    Admission::Apply { skip_records } => {
                        return Err(format!("overlap of {skip_records} records"))
                    }
                    Admission::Gap { expected_seq } => {
                        return Err(format!("gap on {:#x}: expected {expected_seq}", header.channel))
                    }
                }
                Ok(())
            }
            FrameKind::Ack => {
                let what = channel_id::describe(header.channel);
                self.trace(format_args!(
                    "process {from}->{to}: ack through seq {} of {what}",
                    header.first_seq
                ));
                let out = self
                    .outs
                    .get_mut(&header.channel)
                    .ok_or("ack on an unknown channel")?;
                out.sender.on_ack(header.first_seq).map_err(|e| e.to_string())
            }
            FrameKind::Heartbeat => Ok(()),
            other => Err(format!("unexpected {other:?} frame")),
        }
    }

    pub(super) fn cut(&mut self, a: u32, b: u32, why: &str) {
        let link = self.link(a, b);
        if !link.up {
            return;
        }
        link.up = false;
        link.epoch += 1;
        link.decoders = [FrameDecoder::new(), FrameDecoder::new()];
        self.trace(format_args!("cut {a}-{b}: {why}"));
        self.schedule_reconnect(a, b);
    }

    pub(super) fn schedule_reconnect(&mut self, a: u32, b: u32) {
        let random = self.rng.next_u64();
        let link = self.link(a, b);
        if link.reconnect_pending {
            return;
        }
        link.reconnect_pending = true;
        let delay_us = link.backoff.next_delay_ms(random).max(1) * 1000;
        let at = self.now_us + delay_us;
        self.schedule(
            at,
            Event::Reconnect {
                a: a.min(b),
                b: a.max(b),
            },
        );
    }

    pub(super) fn reconnect(&mut self, a: u32, b: u32) {
        self.link(a, b).reconnect_pending = false;
        if self.partitioned(a, b) || self.paused(a) || self.paused(b) {
            self.trace(format_args!("reconnect {a}-{b} fails"));
            return self.schedule_reconnect(a, b);
        }
        let (clock_a, clock_b) = (self.local_clock_ms(a), self.local_clock_ms(b));
        let link = self.link(a, b);
        link.up = true;
        link.backoff.reset();
        link.last_arrival_us = [0; 2];
        let config = LivenessConfig {
            peer_timeout_ms: PEER_TIMEOUT_US / 1000,
            heartbeat_interval_ms: TICK_US / 1000,
        };
        // Direction 0 (a→b) is judged by b's clock, direction 1 by a's.
        link.liveness = [
            PeerLiveness::new(config, clock_b),
            PeerLiveness::new(config, clock_a),
        ];
        self.trace(format_args!("reconnect {a}-{b}"));
        self.stats.bump("reconnects");
        for (from, to) in [(a, b), (b, a)] {
            let resend: Vec<Bytes> = if self.config.bugs.no_retransmit {
                Vec::new()
            } else {
                self.outs
                    .values()
                    .filter(|o| o.from == from && o.to == to)
                    .flat_map(|o| o.sender.unacked().map(|(_, _, bytes)| bytes.clone()))
                    .collect()
            };
            self.stats.add("retransmitted_frames", resend.len() as u64);
            for bytes in resend {
                self.transmit(from, to, bytes);
            }
            // What was consumed is acked again: the old acks may be lost.
            for (channel, input) in self.ins.iter_mut() {
                if self.outs[channel].to == to && self.outs[channel].from == from {
                    input.acked = 0;
                }
            }
        }
        self.step_process(a);
        self.step_process(b);
    }

    pub(super) fn tick(&mut self) {
        let pairs: Vec<(u32, u32)> = self.links.keys().copied().collect();
        for (a, b) in pairs {
            if !self.link(a, b).up {
                continue;
            }
            for (from, to) in [(a, b), (b, a)] {
                if !self.paused(from) {
                    let mut heartbeat = Vec::new();
                    encode_frame(&mut heartbeat, FrameKind::Heartbeat, 0, 0, &[]);
                    self.transmit(from, to, Bytes::from(heartbeat));
                }
                let clock = self.local_clock_ms(to);
                let dir = Self::direction(from, to);
                if !self.paused(to) && self.link(a, b).liveness[dir].is_dead(clock) {
                    self.cut(
                        a,
                        b,
                        &format!(
                            "process {to} heard nothing from {from} for {} ms",
                            PEER_TIMEOUT_US / 1000
                        ),
                    );
                    break;
                }
            }
        }
        self.schedule(self.now_us + TICK_US, Event::Tick);
    }
}
