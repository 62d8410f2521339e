//! Both TCP edges end to end on loopback, through a proxy that cuts each of
//! the first few connections after a number of bytes (mid-frame, mid-line):
//! `verity send` → TCP source, and TCP sink → `verity receive`. Every line
//! must arrive exactly once, in order, with exact positions.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use verity_core::connector::sinks::WriteSink;
use verity_core::connector::tcp_sink::{Release, TcpSink, TcpSinkOptions};
use verity_core::connector::CommitId;
use verity_core::connector::{
    sources::TcpListenSource, Chunk, Position, Pull, SinkConnector, SourceConnector, SourceReader,
};
use verity_core::source::ChunkData;
use verity_verify::harness;

const PATIENCE: Duration = Duration::from_secs(60);

/// Forwards connections to `target`; connection `i` is cut (both ways)
/// after `cuts[i]` client → server bytes, later ones are not.
struct CuttingProxy {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u32>>,
}

impl CuttingProxy {
    fn start(target: SocketAddr, cuts: Vec<usize>) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut accepted = 0u32;
            while !stopped.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(target) else {
                    continue; // the target is down: the client sees a close and retries
                };
                let budget = cuts.get(accepted as usize).copied();
                accepted += 1;
                forward(client, server, budget);
            }
            accepted
        });
        CuttingProxy {
            address,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops accepting; returns how many connections it forwarded.
    fn finish(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Copies both ways; after `budget` client bytes, cuts the connection
/// cleanly: the server sees an orderly end (FIN, not a reset) in the middle
/// of whatever it was reading, which is the harder case to tell from a real
/// end; the client sees its connection closed.
fn forward(client: TcpStream, server: TcpStream, budget: Option<usize>) {
    let (mut from_client, mut to_server) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (mut from_server, mut to_client) = (server, client);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut left = budget.unwrap_or(usize::MAX);
        while left > 0 {
            let want = buf.len().min(left);
            match from_client.read(&mut buf[..want]) {
                Ok(n @ 1..) => {
                    if to_server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    left -= n;
                }
                _ => break,
            }
        }
        let _ = to_server.shutdown(std::net::Shutdown::Write);
        let _ = from_client.shutdown(std::net::Shutdown::Both);
    });
    std::thread::spawn(move || {
        // Reads the server to its end (so closing sends no reset), passing
        // on what the client can still take.
        let mut buf = [0u8; 4096];
        let mut client_open = true;
        while let Ok(n @ 1..) = from_server.read(&mut buf) {
            client_open = client_open && to_client.write_all(&buf[..n]).is_ok();
        }
        let _ = to_client.shutdown(std::net::Shutdown::Both);
    });
}

fn numbered_lines(count: u64) -> Vec<u8> {
    (1..=count)
        .flat_map(|i| format!("line {i:07}\n").into_bytes())
        .collect()
}

/// Reads `reader` to its end (bounded).
fn read_all(reader: &mut dyn SourceReader) -> Vec<Chunk> {
    let started = Instant::now();
    let mut chunks = Vec::new();
    loop {
        assert!(started.elapsed() < PATIENCE, "the source never ended");
        match reader.next_chunk().unwrap() {
            Pull::Chunk(chunk) => chunks.push(chunk),
            Pull::Idle => {}
            Pull::End => return chunks,
        }
    }
}

/// The chunks' bytes, checking that each position counts exactly the bytes
/// and lines before it (from `start`).
fn joined_with_exact_positions(start: Position, chunks: &[Chunk]) -> Vec<u8> {
    let Position::Text {
        bytes: mut at_bytes,
        lines: mut at_lines,
    } = start
    else {
        panic!("a text position")
    };
    let mut all = Vec::new();
    for chunk in chunks {
        let ChunkData::Lines(lines) = &chunk.data else {
            panic!("no oversized lines here")
        };
        all.extend_from_slice(lines);
        at_bytes += lines.len() as u64;
        at_lines += chunk.records;
        assert_eq!(
            chunk.position,
            Position::Text {
                bytes: at_bytes,
                lines: at_lines
            }
        );
    }
    all
}

fn write_input(dir: &Path, data: &[u8]) -> std::path::PathBuf {
    let path = dir.join("input.txt");
    std::fs::write(&path, data).unwrap();
    path
}

#[test]
fn send_survives_cut_connections_and_the_source_reads_each_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = numbered_lines(200_000); // 2.6 MB: many chunks and frames
    let input = write_input(dir.path(), &data);
    let mut source = TcpListenSource::new("127.0.0.1:0");
    let mut reader = source.open("tcp", 0, None).unwrap();
    // Cuts land mid-frame and mid-line.
    let proxy = CuttingProxy::start(source.bound.unwrap(), vec![100_003, 350_017, 7, 1_000_001]);
    let to = proxy.address.to_string();
    let sender = std::thread::spawn(move || harness::send(&to, &input, None, 1024));
    let chunks = read_all(&mut *reader);
    let report = sender.join().unwrap().unwrap();
    assert_eq!(joined_with_exact_positions(Position::TEXT_START, &chunks), data);
    assert_eq!(report.bytes, data.len() as u64);
    assert_eq!(report.lines, 200_000);
    assert!(report.connections >= 5, "every cut made it reconnect: {report:?}");
    assert_eq!(proxy.finish(), report.connections);
}

#[test]
fn a_recovered_source_asks_the_sender_to_resend_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = numbered_lines(100_000);
    let input = write_input(dir.path(), &data);
    let mut first = TcpListenSource::new("127.0.0.1:0");
    first.acks_on_commit = true;
    let mut reader = first.open("tcp", 0, None).unwrap();
    let address = first.bound.unwrap();
    let to = address.to_string();
    let sender = std::thread::spawn(move || harness::send(&to, &input, None, 1024));
    let mut chunks = Vec::new();
    let started = Instant::now();
    while chunks.len() < 4 {
        assert!(started.elapsed() < PATIENCE);
        if let Pull::Chunk(chunk) = reader.next_chunk().unwrap() {
            chunks.push(chunk);
        }
    }
    reader.commit(&chunks[0].position).unwrap();
    let checkpoint = chunks[1].position;
    drop(reader); // a crash: what it read after the checkpoint is lost
    let mut recovered = TcpListenSource::new(&address.to_string());
    recovered.acks_on_commit = true;
    let mut reader = recovered.open("tcp", 0, Some(checkpoint)).unwrap();
    let rest = read_all(&mut *reader);
    let Position::Text { bytes, .. } = checkpoint else {
        unreachable!()
    };
    assert_eq!(
        joined_with_exact_positions(checkpoint, &rest),
        data[bytes as usize..],
        "the rest, once, from the checkpoint"
    );
    assert!(!sender.is_finished(), "the sender waits for the final ack");
    reader.commit(&rest.last().unwrap().position).unwrap();
    let report = sender.join().unwrap().unwrap();
    assert_eq!(report.bytes, data.len() as u64);
    assert!(report.connections >= 2, "{report:?}");
}

#[test]
fn a_piped_input_is_held_in_memory_and_resent_after_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("no mkfifo here: skipped");
        return;
    }
    let data = numbered_lines(50_000);
    let writer = {
        let (fifo, data) = (fifo.clone(), data.clone());
        std::thread::spawn(move || std::fs::write(fifo, data).unwrap())
    };
    let mut source = TcpListenSource::new("127.0.0.1:0");
    let mut reader = source.open("tcp", 0, None).unwrap();
    let proxy = CuttingProxy::start(source.bound.unwrap(), vec![60_001, 200_003]);
    let to = proxy.address.to_string();
    let sender = std::thread::spawn(move || harness::send(&to, &fifo, None, 1024));
    let chunks = read_all(&mut *reader);
    writer.join().unwrap();
    let report = sender.join().unwrap().unwrap();
    assert_eq!(joined_with_exact_positions(Position::TEXT_START, &chunks), data);
    assert_eq!(report.connections, 3, "{report:?}");
    proxy.finish();
}

/// Starts `harness::receive` on a free port; returns its address once it
/// listens.
fn start_receiver(
    output: &Path,
    expect: u64,
) -> (SocketAddr, std::thread::JoinHandle<harness::ReceiveReport>) {
    // Bound here, so no other test can take the port in between.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let output = output.to_path_buf();
    let receiving = std::thread::spawn(move || {
        harness::receive_on(listener, &output, Some(expect), Duration::from_secs(30)).unwrap()
    });
    let started = Instant::now();
    while TcpStream::connect(address).is_err() {
        assert!(started.elapsed() < PATIENCE, "the receiver never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    (address, receiving)
}

/// Writes `data` into `sink` in buffers of about `lines` lines.
fn write_in_buffers(sink: &mut dyn SinkConnector, data: &[u8], lines: usize) {
    let mut rest = data;
    while !rest.is_empty() {
        let cut = rest
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(lines - 1)
            .map_or(rest.len(), |(i, _)| i + 1);
        sink.write(&rest[..cut], &[]).unwrap();
        rest = &rest[cut..];
    }
}

#[test]
fn the_tcp_sink_survives_cut_connections_and_receive_writes_each_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.txt");
    let data = numbered_lines(100_000);
    let (receiver, receiving) = start_receiver(&output, 100_000);
    // Cuts land mid-frame and mid-line (and one in the preamble).
    let proxy = CuttingProxy::start(receiver, vec![90_001, 3, 400_007, 700_001]);
    let mut sink = WriteSink::connect(&proxy.address.to_string()).unwrap();
    write_in_buffers(&mut sink, &data, 1000);
    sink.barrier(CommitId::END_OF_INPUT).unwrap();
    sink.commit(CommitId::END_OF_INPUT).unwrap();
    let report = receiving.join().unwrap();
    drop(sink);
    assert!(report.complete, "{report:?}");
    assert_eq!(std::fs::read(&output).unwrap(), data, "each line once, in order");
    assert!(proxy.finish() >= 5, "every cut made the sink reconnect");
}

#[test]
fn a_restarted_sink_resending_lines_the_receiver_has_is_deduped() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.txt");
    let data = numbered_lines(3000);
    let line_bytes = data.len() / 3000;
    let (receiver, receiving) = start_receiver(&output, 3000);
    let options = TcpSinkOptions {
        release: Release::OnCommit,
        ..TcpSinkOptions::default()
    };
    let mut first = TcpSink::connect(&receiver.to_string(), options).unwrap();
    write_in_buffers(&mut first, &data[..2000 * line_bytes], 300);
    first.barrier(CommitId(1)).unwrap();
    first.commit(CommitId(1)).unwrap();
    assert_eq!(first.acked(), 2000);
    drop(first); // a crash after the commit of line 1000 was recorded
    let recovered = TcpSinkOptions {
        first_seq: 1001,
        ..options
    };
    let mut second = TcpSink::connect(&receiver.to_string(), recovered).unwrap();
    write_in_buffers(&mut second, &data[1000 * line_bytes..], 300);
    second.barrier(CommitId::END_OF_INPUT).unwrap();
    second.commit(CommitId::END_OF_INPUT).unwrap();
    let report = receiving.join().unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(std::fs::read(&output).unwrap(), data, "lines 1001..2000 once");
}

#[test]
fn receive_drops_a_frame_it_already_has() {
    use verity_core::connector::tcp_stream::{self, LinesHeader, ReceiverMessage, SINK_MAGIC};
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.txt");
    let (receiver, receiving) = start_receiver(&output, 3);
    let mut stream = TcpStream::connect(receiver).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(&tcp_stream::preamble(SINK_MAGIC)).unwrap();
    let mut message = [0; tcp_stream::RECEIVER_MESSAGE_BYTES];
    stream.read_exact(&mut message).unwrap();
    assert_eq!(
        ReceiverMessage::decode(&message).unwrap(),
        ReceiverMessage::Welcome { have: 0 }
    );
    let frame = |first: u64, lines: &[u8]| {
        let count = lines.iter().filter(|b| **b == b'\n').count() as u32;
        let mut frame = LinesHeader {
            first,
            count,
            len: lines.len() as u32,
        }
        .encode()
        .to_vec();
        frame.extend_from_slice(lines);
        frame
    };
    stream.write_all(&frame(1, b"a\nb\n")).unwrap();
    stream.write_all(&frame(1, b"a\nb\n")).unwrap(); // resent whole
    stream.write_all(&frame(2, b"b\nc\n")).unwrap(); // resent in part
    let report = receiving.join().unwrap();
    assert_eq!(std::fs::read(&output).unwrap(), b"a\nb\nc\n");
    assert_eq!(report.duplicates, 3);
}

#[test]
fn a_sender_refuses_to_resume_past_the_end_of_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), b"a\nb\n");
    let mut source = TcpListenSource::new("127.0.0.1:0");
    let beyond = Position::Text {
        bytes: 1000,
        lines: 9,
    };
    let mut reader = source.open("tcp", 0, Some(beyond)).unwrap();
    let to = source.bound.unwrap().to_string();
    let sender = std::thread::spawn(move || harness::send(&to, &input, None, 1024));
    let started = Instant::now();
    while !sender.is_finished() {
        assert!(started.elapsed() < PATIENCE, "the sender never gave up");
        assert!(!matches!(reader.next_chunk().unwrap(), Pull::Chunk(_)));
    }
    let e = sender.join().unwrap().expect_err("another input's position");
    assert!(
        e.to_string().contains("past the end of the input (4 bytes)"),
        "{e}"
    );
}

fn staged() -> TcpSinkOptions {
    TcpSinkOptions {
        release: Release::OnCommit,
        ..TcpSinkOptions::default()
    }
}

/// The bytes of lines `from..=to` (from 1) of `data`, whose lines all have
/// the same length.
fn lines_of(data: &[u8], line_bytes: usize, from: usize, to: usize) -> &[u8] {
    &data[(from - 1) * line_bytes..to * line_bytes]
}

#[test]
fn a_sink_that_died_while_sending_past_its_checkpoint_is_recovered_by_an_abort() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.txt");
    let data = numbered_lines(3000);
    let line_bytes = data.len() / 3000;
    let (receiver, receiving) = start_receiver(&output, 3000);
    let mut first = TcpSink::connect(&receiver.to_string(), staged()).unwrap();
    write_in_buffers(&mut first, lines_of(&data, line_bytes, 1, 1000), 300);
    first.barrier(CommitId(1)).unwrap();
    let mark = first.resume_mark().unwrap(); // checkpoint 1 records it
    first.commit(CommitId(1)).unwrap(); // checkpoint 1 is durable
    write_in_buffers(&mut first, lines_of(&data, line_bytes, 1001, 1800), 300);
    first.barrier(CommitId(2)).unwrap(); // staged, but checkpoint 2 never completes
    write_in_buffers(&mut first, lines_of(&data, line_bytes, 1801, 2000), 300);
    drop(first); // the crash

    // The recovered run writes lines 1001.. again, here in another order
    // (as two streams may): nothing staged before the crash may survive.
    let mut second = TcpSink::connect(&receiver.to_string(), staged()).unwrap();
    second.resume(&mark).unwrap();
    let mut again: Vec<&[u8]> = lines_of(&data, line_bytes, 1001, 3000)
        .chunks(line_bytes)
        .collect();
    again[..800].reverse();
    let again = again.concat();
    write_in_buffers(&mut second, &again, 300);
    second.barrier(CommitId::END_OF_INPUT).unwrap();
    second.commit(CommitId::END_OF_INPUT).unwrap();
    let report = receiving.join().unwrap();
    assert!(report.complete, "{report:?}");
    let expected = [lines_of(&data, line_bytes, 1, 1000), &again].concat();
    assert_eq!(
        std::fs::read(&output).unwrap(),
        expected,
        "each line once, the recovered run's"
    );
}

#[test]
fn a_commit_the_crash_cut_off_is_made_again_by_the_recovered_sink() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.txt");
    let data = numbered_lines(2000);
    let line_bytes = data.len() / 2000;
    let (receiver, receiving) = start_receiver(&output, 2000);
    let mut first = TcpSink::connect(&receiver.to_string(), staged()).unwrap();
    write_in_buffers(&mut first, lines_of(&data, line_bytes, 1, 1200), 300);
    first.barrier(CommitId(1)).unwrap();
    let mark = first.resume_mark().unwrap();
    drop(first); // the checkpoint was durable; the crash came before the commit
    assert_eq!(
        std::fs::read(&output).unwrap(),
        b"",
        "staged lines are not output"
    );

    let mut second = TcpSink::connect(&receiver.to_string(), staged()).unwrap();
    second.resume(&mark).unwrap();
    assert_eq!(
        std::fs::read(&output).unwrap(),
        lines_of(&data, line_bytes, 1, 1200),
        "the checkpoint's lines are final once the recovered sink resumed"
    );
    write_in_buffers(&mut second, lines_of(&data, line_bytes, 1201, 2000), 300);
    second.barrier(CommitId::END_OF_INPUT).unwrap();
    second.commit(CommitId::END_OF_INPUT).unwrap();
    let report = receiving.join().unwrap();
    assert!(report.complete, "{report:?}");
    assert_eq!(std::fs::read(&output).unwrap(), data);

    // Recovering from a checkpoint older than what the receiver made final
    // is refused: those lines cannot be taken back.
    let (receiver, receiving) = start_receiver(&dir.path().join("other.txt"), 20);
    let mut sink = TcpSink::connect(&receiver.to_string(), staged()).unwrap();
    write_in_buffers(&mut sink, lines_of(&data, line_bytes, 1, 10), 5);
    sink.barrier(CommitId(1)).unwrap();
    let older = 6u64.to_le_bytes(); // a checkpoint after line 5
    sink.commit(CommitId(1)).unwrap();
    drop(sink);
    let mut late = TcpSink::connect(&receiver.to_string(), staged()).unwrap();
    let refused = late.resume(&older).unwrap_err().to_string();
    assert!(refused.contains("made lines up to 10 final"), "{refused}");
    drop(late);
    let mut rest = TcpSink::connect(
        &receiver.to_string(),
        TcpSinkOptions {
            first_seq: 11,
            ..staged()
        },
    )
    .unwrap();
    write_in_buffers(&mut rest, lines_of(&data, line_bytes, 11, 20), 5);
    rest.barrier(CommitId::END_OF_INPUT).unwrap();
    rest.commit(CommitId::END_OF_INPUT).unwrap();
    assert!(receiving.join().unwrap().complete);
}
