use super::*;
use crate::connector::tcp_stream::{LinesHeader, ReceiverMessage, PREAMBLE_BYTES};
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
            assert_eq!(preamble, tcp_stream::preamble(SINK_MAGIC));
            stream
                .write_all(&ReceiverMessage::Welcome { have }.encode())
                .unwrap();
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
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut header = [0; LINES_HEADER_BYTES];
        match self.stream.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if is_timeout(&e) => return None,
            Err(e) => panic!("{e}"),
        }
        let header = LinesHeader::decode(&header).unwrap();
        let mut payload = vec![0; header.len as usize];
        self.stream.set_read_timeout(Some(PATIENCE)).unwrap();
        self.stream.read_exact(&mut payload).unwrap();
        Some((header, payload))
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
fn on_commit_releases_nothing_before_the_commit() {
    let (mut sink, mut receiver) = Receiver::accept(0, |a| TcpSink::connect(&a, on_commit()).unwrap());
    sink.write(b"a\nb\n", &[]).unwrap();
    sink.barrier(CommitId(1)).unwrap();
    sink.write(b"c\n", &[]).unwrap();
    assert_eq!(
        receiver.frame(Duration::from_millis(300)),
        None,
        "nothing before the commit"
    );
    let acking = std::thread::spawn(move || {
        let (header, payload) = receiver.frame(PATIENCE).expect("the committed lines");
        receiver.ack(2);
        (header, payload, receiver)
    });
    sink.commit(CommitId(1)).unwrap();
    let (header, payload, mut receiver) = acking.join().unwrap();
    assert_eq!((header.first, header.count), (1, 2));
    assert_eq!(payload, b"a\nb\n", "only what the barrier closed");
    assert_eq!(
        receiver.frame(Duration::from_millis(300)),
        None,
        "c waits for its commit"
    );
    assert_eq!(sink.acked(), 2);
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
fn on_commit_output_over_the_bound_is_an_error() {
    let options = TcpSinkOptions {
        held_bytes_max: 8,
        ..on_commit()
    };
    let (mut sink, _receiver) = Receiver::accept(0, |a| TcpSink::connect(&a, options).unwrap());
    let e = sink.write(b"0123456789\n", &[]).expect_err("over the bound");
    assert!(e.to_string().contains("since the last commit"), "{e}");
}

#[test]
fn lines_start_where_counted() {
    assert_eq!(line_offset(b"a\nbb\nc\n", 0), 0);
    assert_eq!(line_offset(b"a\nbb\nc\n", 1), 2);
    assert_eq!(line_offset(b"a\nbb\nc\n", 2), 5);
    assert_eq!(line_offset(b"a\nbb\nc\n", 3), 7);
}
