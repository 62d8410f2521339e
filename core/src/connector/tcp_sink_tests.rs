use super::*;
use crate::connector::tcp_stream::{LinesHeader, ReceiverMessage, SinkHeader, PREAMBLE_BYTES};
use std::net::TcpListener;

const PATIENCE: Duration = Duration::from_secs(30);

/// A hand-rolled receiver for one connection: welcomes the sink with `have`.
struct Receiver {
    stream: TcpStream,
}

impl Receiver {
    /// Listens, lets `connect` connect the sink, and welcomes it.
    fn accept(have: u64, connect: impl FnOnce(String) -> TcpSink) -> (TcpSink, Receiver) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let welcoming = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut preamble = [0; PREAMBLE_BYTES];
            stream.read_exact(&mut preamble).unwrap();
            assert_eq!(
                preamble[..PREAMBLE_BYTES - 1],
                tcp_stream::preamble(SINK_MAGIC)[..PREAMBLE_BYTES - 1]
            );
            stream
                .write_all(&ReceiverMessage::Welcome { have }.encode())
                .unwrap();
            if preamble[PREAMBLE_BYTES - 1] == SINK_VERSION_STAGED {
                // Nothing final yet.
                stream
                    .write_all(&ReceiverMessage::Committed { upto: 0 }.encode())
                    .unwrap();
            }
            stream
        });
        let sink = connect(address);
        (
            sink,
            Receiver {
                stream: welcoming.join().unwrap(),
            },
        )
    }

    /// The next frame, or `None` if nothing comes within `wait`.
    fn frame(&mut self, wait: Duration) -> Option<(LinesHeader, Vec<u8>)> {
        match self.any_frame(wait)? {
            (SinkHeader::Lines(header), payload) => Some((header, payload)),
            (other, _) => panic!("lines expected, got {other:?}"),
        }
    }

    /// The next frame of any kind, or `None` if nothing comes within `wait`.
    fn any_frame(&mut self, wait: Duration) -> Option<(SinkHeader, Vec<u8>)> {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut header = [0; LINES_HEADER_BYTES];
        match self.stream.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if is_timeout(&e) => return None,
            Err(e) => panic!("{e}"),
        }
        let header = SinkHeader::decode(&header).unwrap();
        let mut payload = vec![0; header.payload_len()];
        self.stream.set_read_timeout(Some(PATIENCE)).unwrap();
        self.stream.read_exact(&mut payload).unwrap();
        Some((header, payload))
    }

    fn committed(&mut self, upto: u64) {
        self.stream
            .write_all(&ReceiverMessage::Committed { upto }.encode())
            .unwrap();
    }

    fn ack(&mut self, have: u64) {
        self.stream
            .write_all(&ReceiverMessage::Ack { have }.encode())
            .unwrap();
    }
}

fn on_commit() -> TcpSinkOptions {
    TcpSinkOptions {
        release: Release::OnCommit,
        ..TcpSinkOptions::default()
    }
}

#[test]
fn on_commit_sends_at_once_waits_at_the_barrier_and_commits_through_it() {
    let (mut sink, mut receiver) = Receiver::accept(0, |a| TcpSink::connect(&a, on_commit()).unwrap());
    sink.write(b"a\nb\n", &[]).unwrap();
    let (header, payload) = receiver.frame(PATIENCE).expect("staged at once");
    assert_eq!(
        (header.first, header.count, payload.as_slice()),
        (1, 2, &b"a\nb\n"[..])
    );
    // The barrier returns only once the receiver staged everything before it.
    let staging = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        receiver.ack(2);
        receiver
    });
    sink.barrier(CommitId(1)).unwrap();
    let mut receiver = staging.join().unwrap();
    assert_eq!(
        sink.resume_mark().unwrap(),
        3u64.to_le_bytes(),
        "the next line's number"
    );
    sink.write(b"c\n", &[]).unwrap();
    let committing = std::thread::spawn(move || {
        let mut frames = Vec::new();
        while frames.len() < 2 {
            frames.push(receiver.any_frame(PATIENCE).expect("c and the commit").0);
        }
        receiver.committed(2);
        frames
    });
    sink.commit(CommitId(1)).unwrap();
    let frames = committing.join().unwrap();
    assert!(frames.contains(&SinkHeader::Commit { upto: 2 }), "{frames:?}");
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, SinkHeader::Lines(h) if h.first == 3)),
        "c is staged, not committed: {frames:?}"
    );
}

#[test]
fn on_commit_with_a_receiver_that_commits_nothing_fails_by_its_patience() {
    let options = TcpSinkOptions {
        patience: Duration::from_millis(300),
        ..on_commit()
    };
    let (mut sink, mut receiver) = Receiver::accept(0, |a| TcpSink::connect(&a, options).unwrap());
    sink.write(b"a\n", &[]).unwrap();
    let staging = std::thread::spawn(move || {
        receiver.frame(PATIENCE).expect("a");
        receiver.ack(1);
        receiver
    });
    sink.barrier(CommitId(1)).unwrap();
    let _receiver = staging.join().unwrap();
    let e = sink.commit(CommitId(1)).expect_err("never committed");
    assert!(e.to_string().contains("took nothing"), "{e}");
}

#[test]
fn immediately_sends_as_written_numbered_from_first_seq() {
    let options = TcpSinkOptions {
        first_seq: 41,
        ..TcpSinkOptions::default()
    };
    let (mut sink, mut receiver) = Receiver::accept(40, |a| TcpSink::connect(&a, options).unwrap());
    sink.write(b"x\ny\n", &[]).unwrap();
    let (header, payload) = receiver.frame(PATIENCE).expect("sent at once");
    assert_eq!(
        (header.first, header.count, payload.as_slice()),
        (41, 2, &b"x\ny\n"[..])
    );
}

#[test]
fn a_receiver_missing_lines_before_first_seq_is_refused() {
    let options = TcpSinkOptions {
        first_seq: 11,
        ..TcpSinkOptions::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let welcoming = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut preamble = [0; PREAMBLE_BYTES];
        stream.read_exact(&mut preamble).unwrap();
        stream
            .write_all(&ReceiverMessage::Welcome { have: 3 }.encode())
            .unwrap();
        stream
    });
    let e = TcpSink::connect(&address, options).err().expect("refused");
    drop(welcoming.join());
    assert!(e.to_string().contains("lines 4..10 are missing"), "{e}");
}

#[test]
fn a_plain_listener_is_not_taken_for_a_receiver() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let silent = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        drop(stream); // `nc -l` that is then closed
    });
    let e = TcpSink::connect(&address, TcpSinkOptions::default())
        .err()
        .expect("refused");
    silent.join().unwrap();
    assert!(e.to_string().contains("is it `verity receive`"), "{e}");
}

#[test]
fn a_receiver_that_takes_nothing_fails_the_sink_by_its_patience() {
    let options = TcpSinkOptions {
        held_bytes_max: 8,
        patience: Duration::from_millis(300),
        ..TcpSinkOptions::default()
    };
    let (mut sink, _receiver) = Receiver::accept(0, |a| TcpSink::connect(&a, options).unwrap());
    let e = sink.write(b"0123456789\n", &[]).expect_err("no acks: no room");
    assert!(e.to_string().contains("took nothing"), "{e}");
}

#[test]
fn lines_start_where_counted() {
    assert_eq!(line_offset(b"a\nbb\nc\n", 0), 0);
    assert_eq!(line_offset(b"a\nbb\nc\n", 1), 2);
    assert_eq!(line_offset(b"a\nbb\nc\n", 2), 5);
    assert_eq!(line_offset(b"a\nbb\nc\n", 3), 7);
}
