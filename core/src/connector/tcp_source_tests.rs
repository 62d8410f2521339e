use super::*;
use crate::connector::Chunk;

/// Reads a reader to its end (bounded: a test that hangs fails).
fn read_all(reader: &mut dyn SourceReader) -> Vec<Chunk> {
    let started = Instant::now();
    let mut chunks = Vec::new();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the source never ended"
        );
        match reader.next_chunk().unwrap() {
            Pull::Chunk(chunk) => chunks.push(chunk),
            Pull::Idle => {}
            Pull::End => return chunks,
        }
    }
}

use super::super::sources::tests::bytes_of;

#[test]
fn a_plain_sender_is_read_to_its_end_with_positions() {
    let mut tcp = TcpListenSource::new("127.0.0.1:0");
    let mut reader = tcp.open("tcp", 0, None).unwrap();
    let address = tcp.bound.expect("open binds");
    let sender = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(b"one\ntwo\nthree\n").unwrap();
    });
    let chunks = read_all(&mut *reader);
    sender.join().unwrap();
    assert_eq!(bytes_of(&chunks), b"one\ntwo\nthree\n");
    assert_eq!(
        chunks.last().unwrap().position,
        Position::Text { bytes: 14, lines: 3 }
    );
}

#[test]
fn a_connection_that_sends_nothing_does_not_end_the_stream() {
    let mut tcp = TcpListenSource::new("127.0.0.1:0");
    let mut reader = tcp.open("tcp", 0, None).unwrap();
    let address = tcp.bound.unwrap();
    drop(TcpStream::connect(address).unwrap()); // a port probe
    let sender = std::thread::spawn(move || {
        // Accepted after the probe (the listen backlog keeps order).
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(b"x\n").unwrap();
    });
    let chunks = read_all(&mut *reader);
    sender.join().unwrap();
    assert_eq!(bytes_of(&chunks), b"x\n", "the probe did not end the stream");
}

#[test]
fn a_plain_sender_cannot_resume_a_stream() {
    let mut tcp = TcpListenSource::new("127.0.0.1:0");
    let at = Position::Text { bytes: 4, lines: 1 };
    let mut reader = tcp.open("tcp", 0, Some(at)).unwrap();
    let address = tcp.bound.unwrap();
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(b"two\n").unwrap();
    let started = Instant::now();
    let e = loop {
        assert!(started.elapsed() < Duration::from_secs(30));
        match reader.next_chunk() {
            Ok(Pull::Idle) => {}
            Ok(other) => panic!("a plain sender was read at a position: {other:?}"),
            Err(e) => break e,
        }
    };
    assert!(matches!(e, SourceError::CannotRewind { .. }), "{e}");
}

/// A hand-rolled `verity send` for one connection: says hello, returns where
/// the source asks it to resume.
fn hello(address: std::net::SocketAddr) -> (TcpStream, u64) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(&tcp_stream::preamble(SEND_MAGIC)).unwrap();
    let mut message = [0; tcp_stream::SOURCE_MESSAGE_BYTES];
    stream.read_exact(&mut message).unwrap();
    match SourceMessage::decode(&message).unwrap() {
        SourceMessage::Resume { from, .. } => (stream, from),
        other => panic!("expected a resume, got {other:?}"),
    }
}

fn data(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(&tcp_stream::data_header(bytes.len())).unwrap();
    stream.write_all(bytes).unwrap();
}

/// Pulls until a chunk comes (bounded).
fn next_lines(reader: &mut dyn SourceReader) -> Chunk {
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(30), "no chunk came");
        match reader.next_chunk().unwrap() {
            Pull::Chunk(chunk) => return chunk,
            Pull::Idle => {}
            Pull::End => panic!("ended early"),
        }
    }
}

#[test]
fn a_line_cut_by_a_disconnect_is_asked_for_again() {
    let mut tcp = TcpListenSource::new("127.0.0.1:0");
    let mut reader = tcp.open("tcp", 0, None).unwrap();
    let address = tcp.bound.unwrap();
    let input = b"one\ntwo\nthree\n";
    let client = std::thread::spawn(move || {
        let (mut first, from) = hello(address);
        assert_eq!(from, 0);
        data(&mut first, &input[..6]); // "one\ntw"
                                       // Wait for the ack of the whole line before cutting the connection.
        let mut message = [0; tcp_stream::SOURCE_MESSAGE_BYTES];
        first.read_exact(&mut message).unwrap();
        assert_eq!(
            SourceMessage::decode(&message).unwrap(),
            SourceMessage::Ack { upto: 4 }
        );
        drop(first);
        let (mut second, from) = hello(address);
        data(&mut second, &input[from as usize..]);
        second
            .write_all(&tcp_stream::end_frame(input.len() as u64))
            .unwrap();
        let mut acked = 0;
        let mut ended = false;
        while !(ended && acked == input.len() as u64) {
            second.read_exact(&mut message).unwrap();
            match SourceMessage::decode(&message).unwrap() {
                SourceMessage::Ack { upto } => acked = upto,
                SourceMessage::Ended { upto } => ended = upto == input.len() as u64,
                other => panic!("{other:?}"),
            }
        }
        from
    });
    let first = next_lines(&mut *reader);
    assert_eq!(first.position, Position::Text { bytes: 4, lines: 1 });
    let rest = read_all(&mut *reader);
    assert_eq!(client.join().unwrap(), 4, "resumed after the last whole line");
    let mut all = bytes_of(&[first]);
    all.extend(bytes_of(&rest));
    assert_eq!(all, input, "each line once");
    assert_eq!(
        rest.last().unwrap().position,
        Position::Text { bytes: 14, lines: 3 }
    );
}

#[test]
fn an_end_that_disagrees_with_the_stream_is_an_error() {
    let mut tcp = TcpListenSource::new("127.0.0.1:0");
    let mut reader = tcp.open("tcp", 0, None).unwrap();
    let address = tcp.bound.unwrap();
    let client = std::thread::spawn(move || {
        let (mut stream, _) = hello(address);
        data(&mut stream, b"a\n");
        stream.write_all(&tcp_stream::end_frame(5)).unwrap();
        stream
    });
    let started = Instant::now();
    let e = loop {
        assert!(started.elapsed() < Duration::from_secs(30));
        match reader.next_chunk() {
            Ok(Pull::End) => panic!("a wrong total was accepted"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    drop(client.join());
    assert!(e.to_string().contains("has 5 bytes"), "{e}");
}

#[test]
fn commits_ack_only_what_the_reader_produced() {
    let mut tcp = TcpListenSource::new("127.0.0.1:0");
    tcp.acks_on_commit = true;
    let mut reader = tcp.open("tcp", 0, None).unwrap();
    let past = Position::Text { bytes: 1, lines: 0 };
    assert!(matches!(
        reader.commit(&past).err().unwrap(),
        SourceError::PositionPastEnd { .. }
    ));
    reader.commit(&Position::TEXT_START).unwrap();
}
