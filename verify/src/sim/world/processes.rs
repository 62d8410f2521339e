//! The simulated processes: the readers (the production `ReadLoop` over a
//! production line reader, dealing through the production `Dealer`, over
//! input that arrives over time), the shards (each driven by the production
//! `ShardDriver` over simulated bounded queues), and process 0's output
//! relays and output writer (the production `OutputRelay` and
//! `OutputWriter`).

use super::*;
use std::cell::RefCell;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use verity_core::checkpoint::SourceMeta;
use verity_core::cluster::relay::Relayed;
use verity_core::connector::Position;
use verity_core::connector::{SourceConnector, SourceError, SourceReader};
use verity_core::driver::{OutputSent, Sent, ShardPorts, Wait, Watch};
use verity_core::line::DeadLetter;
use verity_core::member_sink::MemberMessage;
use verity_core::sink::{OutputBatch, OutputMessage};
use verity_core::source::{self, ReadLoop, ReadStep, SourceCut, SourceSpec};

/// How much of a source has arrived, and whether it is closed (then the
/// reader sees its end once it read everything). Shared with the reader,
/// which production wants `Send`; the simulation is one thread.
#[derive(Debug, Default)]
struct Arrival {
    available: AtomicUsize,
    closed: AtomicBool,
    /// With the `fail` fault, one byte past where the source fails (its
    /// connection reset, every read from there on); 0: it never does.
    fails_at_plus_one: AtomicUsize,
}

/// A source's bytes as its reader sees them: what arrived so far; a read with
/// nothing new would block (a socket with a read timeout: an idle pull,
/// `WouldBlock` or, as on some systems, `TimedOut`). With BUGGIFY, every
/// `interrupt_every`-th read is interrupted by a signal (`EINTR`) first.
struct SimInput {
    data: Bytes,
    pos: usize,
    arrival: Arc<Arrival>,
    reads: u64,
    interrupt_every: u64,
}

impl Read for SimInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self.interrupt_every > 0 && self.reads.is_multiple_of(self.interrupt_every) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let fails_at = match self.arrival.fails_at_plus_one.load(Ordering::Relaxed) {
            0 => usize::MAX,
            plus_one => plus_one - 1,
        };
        if self.pos >= fails_at {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let end = self
            .arrival
            .available
            .load(Ordering::Relaxed)
            .min(self.data.len())
            .min(fails_at);
        if self.pos < end {
            let read = buf.len().min(end - self.pos);
            buf[..read].copy_from_slice(&self.data[self.pos..self.pos + read]);
            self.pos += read;
            return Ok(read);
        }
        if self.arrival.closed.load(Ordering::Relaxed) && self.pos == self.data.len() {
            return Ok(0);
        }
        if self.reads.is_multiple_of(2) {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// The simulated source's connector: one partition, the production line
/// reader over what arrived, from its start or a checkpoint's position; its
/// commits go to the upstream's record.
struct SimConnector {
    /// The partition `data` is (of `partitions`): a spread source's share of
    /// one process, else the only one.
    partition: u32,
    partitions: u32,
    data: Bytes,
    arrival: Arc<Arrival>,
    chunk_bytes: usize,
    line_max_bytes: usize,
    interrupt_every: u64,
    forgotten: Arc<std::sync::Mutex<upstream::Forgotten>>,
}

impl SourceConnector for SimConnector {
    fn kind(&self) -> &'static str {
        "sim"
    }

    fn partitions(&self) -> Result<u32, SourceError> {
        Ok(self.partitions)
    }

    fn readable_on_every_process(&self) -> bool {
        self.partitions > 1
    }

    fn open(
        &mut self,
        source_name: &str,
        partition: u32,
        at: Option<Position>,
    ) -> Result<Box<dyn SourceReader>, SourceError> {
        assert_eq!(
            partition, self.partition,
            "{source_name} is opened only at its own partition"
        );
        let (bytes, lines) = match at {
            None => (0, 0),
            Some(Position::Text { bytes, lines }) => (bytes, lines),
            Some(other) => panic!("{source_name} is a text stream, not at {other:?}"),
        };
        let input = SimInput {
            data: self.data.clone(),
            pos: bytes as usize,
            arrival: Arc::clone(&self.arrival),
            reads: 0,
            interrupt_every: self.interrupt_every,
        };
        Ok(Box::new(upstream::Committing {
            inner: line_reader_at(input, self.chunk_bytes, self.line_max_bytes, (bytes, lines)),
            forgotten: Arc::clone(&self.forgotten),
        }))
    }
}

/// One no-progress step in this many is followed by a spurious wakeup.
const SPURIOUS_WAKEUP_ONE_IN: u64 = 4;

thread_local! {
    /// What the `Dealer` of the reader being pumped just dealt. The dealer
    /// needs a `'static` send callback that lives as long as the reader; a
    /// capture-free closure writing here costs no allocation.
    static DEALT: RefCell<Vec<(u32, SourceEvent)>> = const { RefCell::new(Vec::new()) };
}

/// One stream's reader thread.
pub(super) struct Reader {
    source: u32,
    /// Which process reads it, and which partition of its source.
    stream: Stream,
    data: Bytes,
    /// Bytes of `data` dealt so far (the position of the last chunk).
    read_bytes: usize,
    /// The stop flag production's reader thread looks at between chunks.
    stopping: bool,
    reading: ReadLoop,
    /// `None` once the source ended.
    dealer: Option<Dealer<'static>>,
    /// Once the source ended: where, and whether it failed.
    end: Option<(SourceCut, bool)>,
    /// What its upstream was told it may forget.
    forgotten: Arc<std::sync::Mutex<upstream::Forgotten>>,
    arrival: Arc<Arrival>,
    /// Dealt events their shard's queue had no room for yet: the reader
    /// blocks on them, as production's blocks in `send`.
    outbox: VecDeque<(u32, SourceEvent)>,
    stalled: bool,
}

impl Reader {
    pub(super) fn new(
        source: u32,
        stream: Stream,
        data: Bytes,
        shards: u32,
        buggify: &Buggify,
        bugs: ReaderBugs,
    ) -> Reader {
        let arrival = Arc::new(Arrival::default());
        let send: &'static mut dyn FnMut(usize, SourceEvent) -> bool =
            Box::leak(Box::new(|shard: usize, event: SourceEvent| {
                DEALT.with(|dealt| dealt.borrow_mut().push((shard as u32, event)));
                true
            }));
        let mut reader = Reader {
            source,
            stream,
            data: data.clone(),
            read_bytes: 0,
            stopping: false,
            reading: source::ended().into_read_loop(),
            dealer: Some(Dealer::new(source, shards as usize, send)),
            end: None,
            forgotten: Arc::default(),
            arrival,
            outbox: VecDeque::new(),
            stalled: false,
        };
        // Opened as production opens a stream's partitions, from their start.
        let reads = |partition: u32| stream.reads_partition(partition);
        reader.reading = source::open_partitions(reader.spec(buggify), &reads, None)
            .unwrap_or_else(|e| panic!("opening simulated source {source}: {e}"))
            .into_read_loop()
            .with_bugs(bugs);
        reader
    }

    /// The source as production's runtime gets it: a connector.
    fn spec(&self, buggify: &Buggify) -> SourceSpec {
        let connector = SimConnector {
            partition: self.stream.spread.map_or(0, |_| self.stream.reader),
            partitions: self.stream.spread.unwrap_or(1),
            data: self.data.clone(),
            arrival: Arc::clone(&self.arrival),
            chunk_bytes: buggify.chunk_bytes,
            line_max_bytes: buggify.line_max_bytes,
            interrupt_every: buggify.read_interrupt_every,
            forgotten: Arc::clone(&self.forgotten),
        };
        SourceSpec::from_connector(&format!("sim-{}", self.source), Box::new(connector))
    }

    pub(super) fn len(&self) -> usize {
        self.data.len()
    }

    /// Records the receipt of every chunk in the audit log.
    pub(super) fn record_input(&mut self, audit: verity_core::source::InputAudit) {
        if let Some(dealer) = &mut self.dealer {
            dealer.record_input(audit);
        }
    }

    /// Continues the source from a checkpoint (a recovered cluster): the
    /// production dealer goes on at the cut, and the production line reader
    /// reads from the cut's byte on; a source that had ended reads nothing.
    pub(super) fn resume(&mut self, checkpoint: u64, at: &SourceMeta, buggify: &Buggify, bugs: ReaderBugs) {
        let dealer = self.dealer.as_mut().expect("a reader that has not started");
        match at {
            SourceMeta::At(cut) => {
                dealer.resume_at(checkpoint, cut);
                let bytes = match cut.positions[..] {
                    [] => 0,
                    [(_, Position::Text { bytes, .. })] => bytes,
                    ref other => panic!("a simulated stream reads one text partition, not {other:?}"),
                };
                let stream = self.stream;
                let reads = |partition: u32| stream.reads_partition(partition);
                self.reading = source::open_partitions(self.spec(buggify), &reads, Some(cut))
                    .unwrap_or_else(|e| panic!("reopening simulated source {}: {e}", self.source))
                    .into_read_loop()
                    .with_bugs(bugs);
                self.read_bytes = bytes as usize;
            }
            SourceMeta::Ended { chunks } => {
                let cut = SourceCut {
                    next_chunk: *chunks,
                    ..SourceCut::default()
                };
                dealer.resume_at(checkpoint, &cut);
                self.reading = source::ended().into_read_loop();
                self.read_bytes = self.data.len();
            }
        }
    }

    /// The source fails at byte `at` (the `fail` fault).
    pub(super) fn fail_at(&self, at: usize) {
        self.arrival.fails_at_plus_one.store(at + 1, Ordering::Relaxed);
    }

    /// Whether the source ended failed.
    pub(super) fn failed(&self) -> bool {
        self.end.as_ref().is_some_and(|(_, failed)| *failed)
    }

    /// A recovered cluster's reader, whose upstream already forgot
    /// `forgotten` bytes: no recovery may resume before them.
    pub(super) fn recovering(&mut self, forgotten: u64) {
        let resumes_at = self.read_bytes as u64;
        assert!(
            resumes_at >= forgotten,
            "source {}: the recovery resumes it at byte {resumes_at}, but its upstream was told it may forget \
             up to byte {forgotten} (a commit before its checkpoint was durable?)",
            self.source
        );
        self.forgotten.lock().unwrap_or_else(|p| p.into_inner()).bytes = forgotten;
    }

    /// Bytes its upstream may forget, and a commit that went wrong.
    pub(super) fn forgotten(&self) -> (u64, Option<String>) {
        let forgotten = self.forgotten.lock().unwrap_or_else(|p| p.into_inner());
        (forgotten.bytes, forgotten.wrong.clone())
    }

    pub(super) fn source(&self) -> u32 {
        self.source
    }

    /// The process whose reader thread this is.
    pub(super) fn process(&self) -> u32 {
        self.stream.reader
    }

    /// Every output is final (`committed`, as the output thread says):
    /// the production reader loop's last commit.
    /// True if the reader is done then, as its thread must be.
    /// `ReaderProgress::ABANDONED` instead: the run ended without its output
    /// final (production's runtime says so as it returns), and a reader
    /// still reading takes one more look before its process exits.
    pub(super) fn after_output(&mut self, committed: u64) -> bool {
        if let Some(dealer) = self.dealer.as_mut() {
            let _ = self.reading.commit_completed(dealer, committed);
            return true;
        }
        match &self.end {
            Some((end, failed)) => self.reading.after_end(end, *failed, committed),
            None => true,
        }
    }

    /// Set the stop flag (`Action::StopSources`).
    pub(super) fn stop(&mut self) {
        self.stopping = true;
    }

    /// Bytes of the source dealt so far.
    fn is_reading(&self) -> bool {
        self.dealer.is_some()
    }

    pub(super) fn read_bytes(&self) -> usize {
        self.read_bytes
    }

    /// Lines in what was dealt so far.
    pub(super) fn read_lines(&self) -> u64 {
        super::line_count(&self.data[..self.read_bytes])
    }

    pub(super) fn arrive(&self, available: usize) {
        self.arrival.available.fetch_max(available, Ordering::Relaxed);
    }

    fn arrived(&self) -> usize {
        self.arrival.available.load(Ordering::Relaxed)
    }

    pub(super) fn all_arrived(&self) -> bool {
        self.arrived() >= self.len()
    }

    pub(super) fn close(&self) {
        self.arrival.closed.store(true, Ordering::Relaxed);
    }

    pub(super) fn is_closed(&self) -> bool {
        self.arrival.closed.load(Ordering::Relaxed)
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "reader {} (process {}): {} of {} bytes arrived, {}, {} events blocked",
            self.source,
            self.stream.reader,
            self.arrived().min(self.len()),
            self.len(),
            if self.dealer.is_none() {
                "ended"
            } else if self.is_closed() {
                "closed"
            } else {
                "open"
            },
            self.outbox.len()
        )
    }

    /// One step of the production reader loop; false if nothing could be
    /// read now (an idle read: the thread would wait in its read).
    fn read_and_deal(&mut self, requested: u64, completed: u64) -> bool {
        let Some(dealer) = self.dealer.as_mut() else {
            return false;
        };
        let step = match self.reading.commit_completed(dealer, completed) {
            Ok(()) => self.reading.turn(dealer, self.stopping, requested),
            Err(e) => Err(e),
        };
        match step {
            Ok(ReadStep::Dealt) => {}
            Ok(ReadStep::Idle) => return false,
            Ok(ReadStep::Ended | ReadStep::ShardsGone) => self.end_source(None),
            Err(e) => self.end_source(Some(e.to_string())),
        }
        DEALT.with(|dealt| {
            for (_, event) in dealt.borrow().iter() {
                if let SourceEvent::Chunk {
                    position: Position::Text { bytes, .. },
                    ..
                } = event
                {
                    self.read_bytes = *bytes as usize;
                }
            }
            self.outbox.extend(dealt.borrow_mut().drain(..))
        });
        true
    }
}

impl Reader {
    fn end_source(&mut self, failure: Option<String>) {
        let dealer = self.dealer.take().expect("not ended");
        self.end = Some((dealer.cut(), failure.is_some()));
        dealer.finish(failure);
    }
}

/// A shard's queues in the simulated world.
struct SimPorts<'w, 'a, K, V, S, O> {
    world: &'w mut World<'a, K, V, S, O>,
    shard: u32,
}

impl<K, V, S, O> ShardPorts<K, V> for SimPorts<'_, '_, K, V, S, O>
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: verity_core::State,
    O: 'static,
{
    fn take_batch(&mut self, source: u32, from: u32) -> Option<Batch<K, V>> {
        let batch = self.world.take_batch(source, from, self.shard)?;
        self.world
            .check_woken_by(self.shard, Watch::Batches { source, from });
        Some(batch)
    }

    fn take_source_event(&mut self, source: u32) -> Option<SourceEvent> {
        let event = self.world.take_chunk(source, self.shard)?;
        self.world.check_woken_by(self.shard, Watch::Chunks { source });
        Some(event)
    }

    fn try_send_batch(&mut self, to: u32, batch: Batch<K, V>) -> Sent<Batch<K, V>> {
        self.world.try_send_batch(self.shard, to, batch)
    }

    fn try_output(&mut self, lines: OutputBatch) -> OutputSent {
        if self.world.layout.is_local_to(0, self.shard) {
            self.world.write_to_sinks(self.shard, OutputMessage::Lines(lines));
            return OutputSent::Taken;
        }
        if self.world.members[self.world.layout.process_of(self.shard) as usize].is_some() {
            self.world.count_output(&lines);
            self.world
                .write_to_member(self.shard, MemberMessage::Lines(lines));
            return OutputSent::Taken;
        }
        if self.world.try_upstream(self.shard, &UpstreamRef::Lines(&lines)) {
            OutputSent::Returned(lines)
        } else {
            OutputSent::Full(lines)
        }
    }

    fn try_dead_letter(&mut self, letter: DeadLetter) -> Sent<DeadLetter> {
        if self.world.layout.is_local_to(0, self.shard) {
            self.world
                .write_to_sinks(self.shard, OutputMessage::DeadLetter(letter));
            return Sent::Done;
        }
        if self
            .world
            .try_upstream(self.shard, &UpstreamRef::DeadLetter(&letter))
        {
            Sent::Done
        } else {
            Sent::Full(letter)
        }
    }

    fn try_audit(&mut self, records: Vec<u8>) -> Sent<Vec<u8>> {
        let process = self.world.layout.process_of(self.shard);
        let audit =
            (self.world.audit.as_mut()).expect("audit records from a shard of a seed without an audit log");
        audit.try_submit(process, records)
    }

    fn try_checkpoint(&mut self, part: CheckpointPart) -> Sent<CheckpointPart> {
        if self.world.layout.is_local_to(0, self.shard) {
            self.world
                .write_to_sinks(self.shard, OutputMessage::Checkpoint(part));
            return Sent::Done;
        }
        // In pieces, as many as the output queue takes now; the rest when
        // the driver offers the part again.
        let s = self.shard as usize;
        let piece_max = self.world.part_piece_max;
        let mut upload = match self.world.uploads[s].take() {
            Some(upload) => {
                assert_eq!(upload.checkpoint(), part.checkpoint, "one part at a time");
                self.world.stats.bump("part_uploads_resumed");
                upload
            }
            None => PartUpload::new(&part, piece_max),
        };
        let (world, shard) = (&mut *self.world, self.shard);
        let sent = upload.send(|piece| {
            let taken = world.try_upstream(shard, piece);
            if taken {
                world.stats.bump("part_pieces");
            }
            taken
        });
        if !sent {
            self.world.uploads[s] = Some(upload);
            return Sent::Full(part);
        }
        // All of the shard's output of the checkpoint came before its part.
        self.world
            .write_to_member(self.shard, MemberMessage::Passed(part.checkpoint));
        Sent::Done
    }

    fn try_source_failed(&mut self, source: u32, error: String) -> Sent<String> {
        if self.world.layout.is_local_to(0, self.shard) {
            self.world.source_errors.push(format!("source {source}: {error}"));
            return Sent::Done;
        }
        let message = UpstreamRef::SourceFailed {
            source,
            error: &error,
        };
        if self.world.try_upstream(self.shard, &message) {
            Sent::Done
        } else {
            Sent::Full(error)
        }
    }

    fn try_finished(&mut self, counters: ShardCounters) -> bool {
        if self.world.layout.is_local_to(0, self.shard) {
            return true;
        }
        let sent = self
            .world
            .try_upstream(self.shard, &UpstreamRef::Finished(&counters));
        if sent {
            self.world.member_shard_finished(self.shard);
        }
        sent
    }
}

impl<'a, K, V, S, O> World<'a, K, V, S, O>
where
    K: Key + Wire,
    V: Wire + Send + 'static,
    S: verity_core::State,
    O: 'static,
{
    // ---- the readers ---------------------------------------------------

    /// More of `source` arrived.
    pub(super) fn release(&mut self, source: u32, available: usize) {
        self.trace(format_args!("source {source}: {available} bytes arrived"));
        self.readers[source as usize].arrive(available);
        self.step_process(self.readers[source as usize].process());
    }

    /// A source stays open (like a socket) until all its input arrived and
    /// the output holds everything that input must produce: output must not
    /// wait for the end of a stream (an idle shard flushes).
    fn close_sources_when_output_is_in(&mut self) -> bool {
        if self.sources_closed
            || !self.readers.iter().all(Reader::all_arrived)
            || self.output_lines < self.expected_lines
        {
            return false;
        }
        self.sources_closed = true;
        let lines = self.output_lines;
        self.trace(format_args!(
            "all input arrived and its {lines} output lines are in: sources close"
        ));
        self.readers.iter().for_each(Reader::close);
        true
    }

    /// Deals what can be read; false if the reader neither read nor dealt.
    fn pump_reader(&mut self, source: u32) -> bool {
        let mut progressed = false;
        loop {
            while let Some((shard, event)) = self.readers[source as usize].outbox.pop_front() {
                match self.try_deal(source, shard, event) {
                    Ok(()) => {
                        self.readers[source as usize].stalled = false;
                        progressed = true;
                    }
                    Err(event) => {
                        let reader = &mut self.readers[source as usize];
                        reader.outbox.push_front((shard, event));
                        if !reader.stalled {
                            reader.stalled = true;
                            self.stats.bump("stalled_readers");
                        }
                        return progressed;
                    }
                }
            }
            // Process 0's readers read its output thread's progress; a
            // worker's, what its lifecycle handed on (`Control::Readers`).
            let process = self.readers[source as usize].process();
            let (requested, completed) = if process == 0 {
                let progress = self.output.progress();
                (
                    progress.requested.load(Ordering::Relaxed),
                    progress.committed.load(Ordering::Relaxed),
                )
            } else {
                let heard = self.readers_progress_of(process);
                if heard.stopping {
                    self.readers[source as usize].stop();
                }
                (heard.requested, heard.committed)
            };
            let reading = self.readers[source as usize].is_reading();
            let dealt = self.readers[source as usize].read_and_deal(requested, completed);
            if reading {
                self.check_source_commit(source, completed);
            }
            if !dealt {
                return progressed;
            }
            progressed = true;
        }
    }

    /// Into shard's bounded queue of `source`, or back if it is full.
    fn try_deal(&mut self, source: u32, shard: u32, event: SourceEvent) -> Result<(), SourceEvent> {
        let what = match &event {
            SourceEvent::Chunk { index, .. } => format!("chunk {index}"),
            SourceEvent::Failed { .. } => "failure".to_string(),
            SourceEvent::End { chunks, .. } => format!("end after {chunks} chunks"),
            SourceEvent::Barrier { checkpoint, .. } => format!("barrier {checkpoint}"),
        };
        if self
            .layout
            .is_local_to(self.readers[source as usize].process(), shard)
        {
            let queue = self.local_chunks.entry((source, shard)).or_default();
            if queue.len() >= self.depths.chunks {
                return Err(event);
            }
            queue.push_back(event);
        } else {
            let channel = channel_id::chunk(source, shard);
            if !self.send_frame_unless_full(channel, |frame| encode_source_event(&event, frame)) {
                return Err(event);
            }
        }
        self.trace(format_args!("reader {source} deals {what} to shard {shard}"));
        Ok(())
    }

    // ---- processes -----------------------------------------------------

    pub(super) fn step_process(&mut self, process: u32) {
        if self.paused(process) {
            return;
        }
        self.step_lifecycle(process);
        // A worker's shards start when its job arrives, as in production.
        let shards = self.layout.shards_of(process);
        // Nothing of the job runs before the job is there.
        let started = self.job_started(process);
        loop {
            // The I/O thread runs beside the shards: frames leave the
            // queues as windows allow, which makes room for parked sends.
            self.pump(process);
            if !started {
                break;
            }
            let mut progressed = false;
            for source in 0..self.readers.len() as u32 {
                if self.readers[source as usize].process() == process {
                    progressed |= self.pump_reader(source);
                }
            }
            for shard in shards.clone() {
                progressed |= self.step_shard(shard);
            }
            // The process's audit side thread runs beside its shards, now
            // and then: a shard may find its queue full and wait.
            if self.audit.is_some() && self.rng.chance(1, 2) {
                progressed |= self.audit_turn(process);
            }
            if process == 0 {
                progressed |= self.relay_outputs();
                // The last output may have come in just now (an idle flush).
                progressed |= self.close_sources_when_output_is_in();
            }
            if !progressed {
                break;
            }
        }
        self.step_lifecycle(process);
        self.pump(process);
    }

    /// Processes whose shards wait for room (a parked send or a full sink)
    /// look again on every tick, as production's poll (`PARKED_RETRY_WAIT`),
    /// only coarser; room normally shows up through an event that steps them.
    /// So do those with a timer due (production waits no longer than that).
    pub(super) fn poll_waiting_shards(&mut self) {
        for process in 0..self.config.processes {
            let timer_due = |driver: &Option<ShardDriver<K, V, S, O>>| {
                driver
                    .as_ref()
                    .is_some_and(|d| !d.is_finished() && d.timer_wait_us() == Some(0))
            };
            if self
                .layout
                .shards_of(process)
                .any(|s| self.waits_for_room[s as usize] || timer_due(&self.drivers[s as usize]))
            {
                self.step_process(process);
            }
        }
    }

    /// One step of one shard's production driver.
    fn step_shard(&mut self, shard: u32) -> bool {
        let Some(mut driver) = self.drivers[shard as usize].take() else {
            return false;
        };
        if driver.is_finished() || self.stalled_until_us[shard as usize] > self.now_us {
            self.drivers[shard as usize] = Some(driver);
            return false;
        }
        // The ports know the shard by the driver's own index, as production's
        // shard thread does (`runtime::shard_loop`).
        let shard = driver.index();
        let step = driver.step(&mut SimPorts { world: self, shard });
        if !step.progressed && !step.finished && self.rng.chance(1, SPURIOUS_WAKEUP_ONE_IN) {
            // A spurious wakeup, as production's timed waits have: with
            // nothing new, a step after one that made no progress makes none.
            // If it does, the step before had work it did not report, and the
            // production thread would have slept on it.
            let probe = driver.step(&mut SimPorts { world: self, shard });
            self.stats.bump("spurious_wakeups");
            if probe.progressed {
                let failure = format!(
                    "shard {shard} made progress on a spurious wakeup: the step before said it had nothing to do ({:?})",
                    step.wait
                );
                self.net.failure.get_or_insert(failure);
            }
        }
        if step.parked_sends > 0 {
            self.stats.add("parked_sends", step.parked_sends);
            self.trace(format_args!("shard {shard} parks {} sends", step.parked_sends));
        }
        if step.finished {
            self.trace(format_args!("shard {shard} finished"));
        }
        self.waits_for_room[shard as usize] =
            matches!(step.wait, Wait::Sink | Wait::Input { parked_sends: true });
        // What the production shard thread would now block on: the next
        // input this shard takes must come from one of these queues, or
        // production would have slept through its arrival.
        self.watching[shard as usize] = matches!(step.wait, Wait::Input { .. }).then(|| {
            let mut watched = Vec::new();
            driver.watched(&mut watched);
            watched
        });
        self.drivers[shard as usize] = Some(driver);
        step.progressed
    }

    /// A shard that waited for input took some from `queue`: it must have
    /// been watching that queue.
    fn check_woken_by(&mut self, shard: u32, queue: Watch) {
        let Some(watched) = self.watching[shard as usize].take() else {
            return;
        };
        if !watched.contains(&queue) {
            let failure = format!(
                "shard {shard} missed a wakeup: it waited on {watched:?}, but its next input came from {queue:?}"
            );
            self.net.failure.get_or_insert(failure);
        }
    }

    /// Process 0 takes remote shards' output into the sinks through the
    /// production relay, as its relay threads do.
    pub(super) fn relay_outputs(&mut self) -> bool {
        let mut progressed = false;
        for shard in self.layout.shards_of(0).end..self.layout.total_shards() {
            while let Some(frame) = self.take_frame(channel_id::output(shard)) {
                progressed = true;
                let relay = &mut self.relays[shard as usize];
                match relay.on_frame(&frame).unwrap_or_else(|e| panic!("{e}")) {
                    Relayed::ToSinks(message) => self.write_to_sinks(shard, message),
                    Relayed::SourceFailed { source, error } => {
                        self.source_errors.push(format!("source {source}: {error}"))
                    }
                    Relayed::Finished(counters) => {
                        self.trace(format_args!("process 0 hears shard {shard} finished"));
                        self.remote_finished += 1;
                        add_counters(&mut self.remote_counters, *counters);
                    }
                    Relayed::Pending | Relayed::Dropped => {}
                }
            }
        }
        progressed
    }

    /// Into process 0's output writer (the output thread's production
    /// logic, writing into memory).
    pub(super) fn write_to_sinks(&mut self, shard: u32, message: OutputMessage) {
        if self.crashed {
            return; // process 0 died in this very turn
        }
        match &message {
            OutputMessage::Lines(batch) => self.count_output(batch),
            OutputMessage::Relayed(batch) => self.count_output(batch),
            OutputMessage::DeadLetter(_) => {
                self.stats.bump("dead_letters");
                self.dead_letters_written += 1;
            }
            OutputMessage::Checkpoint(part) => self.checkpoint_parts[shard as usize] = part.checkpoint,
            OutputMessage::MemberMark(_) => {}
        }
        let crashes = self.disk.stats().crashes;
        let committed = self
            .output
            .output()
            .map_or(0, |o| o.writer().checkpoints_completed());
        if let Err(e) = self.output_message(shard, message) {
            if self.disk.stats().crashes > crashes {
                // The armed crash: the process died halfway through writing
                // a checkpoint, and so does every other one.
                self.stats.fault("crash");
                self.trace(format_args!(
                    "fault: every process dies in the middle of a checkpoint ({e})"
                ));
                self.crashed = true;
                return;
            }
            self.net.failure.get_or_insert(format!("process 0's sink: {e}"));
            return;
        }
        // Once every shard's part of a checkpoint is in, it is complete.
        let all_in = self.checkpoint_parts.iter().copied().min().unwrap_or(0);
        let completed = self
            .output
            .output()
            .map_or(0, |o| o.writer().checkpoints_completed());
        if self.crash_after_commit && completed > committed {
            // kill -9 as the commit returns, before any side thread's next
            // turn: only what was synced by then survives.
            self.stats.fault("crash");
            self.trace(format_args!(
                "fault: every process dies right after checkpoint {completed}'s commit"
            ));
            self.crashed = true;
            self.crashed_after_commit = Some(completed);
            return;
        }
        // (With sinks written by every process it also waits for their marks.)
        if completed < all_in && !self.config.member_sinks {
            self.net.failure.get_or_insert(format!(
                "checkpoint {all_in}: every shard's part is in, but the output writer completed only {completed}"
            ));
        }
    }

    pub(super) fn count_output(&mut self, lines: &[u8]) {
        self.output_lines += lines.iter().filter(|b| **b == b'\n').count() as u64;
    }

    /// Towards process 0's sinks on a remote shard's output channel, if its
    /// queue has room.
    fn try_upstream(&mut self, shard: u32, message: &UpstreamRef<'_>) -> bool {
        let channel = channel_id::output(shard);
        if !self.try_queue_frame(channel, |frame| encode_upstream(message, frame)) {
            // Production blocks the shard here; this one resumes later.
            self.stats.bump("full_output_queues");
            return false;
        }
        true
    }

    /// Done as process 0 sees it: its shards finished, every remote shard
    /// said so, and (so) all their output is in.
    pub(super) fn is_done(&self) -> bool {
        let local = self.layout.shards_of(0);
        let remote_shards = self.layout.total_shards() - local.len() as u32;
        self.remote_finished == remote_shards
            && local
                .clone()
                .all(|s| self.drivers[s as usize].as_ref().is_some_and(|d| d.is_finished()))
    }

    fn take_batch(&mut self, source: u32, from: u32, to: u32) -> Option<Batch<K, V>> {
        // As production's wiring, which has no such queue.
        assert_ne!(from, to, "no channel from a shard to itself");
        if self.layout.process_of(from) == self.layout.process_of(to) {
            return self.local_batches.get_mut(&(source, from, to))?.pop_front();
        }
        let frame = self.take_frame(channel_id::batch(source, from, to))?;
        Some(decode_batch(&frame, source, from).expect("frames of our own encoding decode"))
    }

    fn take_chunk(&mut self, source: u32, shard: u32) -> Option<SourceEvent> {
        if self
            .layout
            .is_local_to(self.readers[source as usize].process(), shard)
        {
            return self.local_chunks.get_mut(&(source, shard))?.pop_front();
        }
        let frame = self.take_frame(channel_id::chunk(source, shard))?;
        Some(decode_source_event(&frame, source).expect("frames of our own encoding decode"))
    }

    /// Into the bounded queue towards `to`, or back if it is full.
    fn try_send_batch(&mut self, from: u32, to: u32, batch: Batch<K, V>) -> Sent<Batch<K, V>> {
        let source = batch.source;
        if self.layout.process_of(from) == self.layout.process_of(to) {
            let queue = self.local_batches.entry((source, from, to)).or_default();
            if queue.len() >= self.depths.batches {
                return Sent::Full(batch);
            }
            queue.push_back(batch);
        } else {
            let channel = channel_id::batch(source, from, to);
            if !self.try_queue_frame(channel, |frame| encode_batch(&batch, frame)) {
                return Sent::Full(batch);
            }
        }
        Sent::Done
    }

    /// Why the shards that did not finish are stuck (for a liveness failure).
    pub(super) fn describe_waiting(&self) -> String {
        let mut parts: Vec<String> = self.readers.iter().map(Reader::describe).collect();
        parts.push(format!(
            "output: {} of {} expected lines{}",
            self.output_lines,
            self.expected_lines,
            if self.sources_closed {
                ""
            } else {
                " (sources stay open until it is all in: does an idle shard hold output?)"
            }
        ));
        for driver in self.drivers.iter().flatten().filter(|d| !d.is_finished()) {
            let core = driver.core();
            let mut awaited = Vec::new();
            core.awaited_senders(&mut awaited);
            let wants: Vec<bool> = (0..self.readers.len() as u32)
                .map(|s| core.wants_chunk(s))
                .collect();
            parts.push(format!(
                "shard {} awaits (source, sender) {:?}, wants chunks {:?}, parked {:?}",
                core.index(),
                awaited,
                wants,
                driver.parked_counts()
            ));
        }
        parts.join("; ")
    }
}
