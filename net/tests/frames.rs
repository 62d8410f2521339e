//! The frame codec: round trips, zero-copy records, a typed error for every
//! kind of bad input, and (proptest) no panic and no endless loop on any
//! byte sequence or any mutation of valid frames.

use proptest::prelude::*;
use verity_net::frame::*;

fn frame_bytes(records: &[Vec<u8>], channel: u32, first_seq: u64) -> Vec<u8> {
    let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    let mut out = Vec::new();
    encode_frame(&mut out, FrameKind::Data, channel, first_seq, &refs);
    out
}

/// Decodes everything in `bytes`; at most one frame per header's worth of
/// bytes, so a decoder that stopped consuming would be caught.
fn decode_all(bytes: &[u8]) -> (Vec<Frame>, Option<DecodeError>) {
    let mut decoder = FrameDecoder::new();
    decoder.extend_from_slice(bytes);
    let mut frames = Vec::new();
    for _ in 0..=bytes.len() / FRAME_HEADER_SIZE_BYTES + 1 {
        match decoder.next_frame() {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, decoder.finish().err()),
            Err(e) => return (frames, Some(e)),
        }
    }
    panic!("decoder did not settle on {} bytes", bytes.len());
}

#[test]
fn round_trips_with_zero_copy_records() {
    let records = vec![vec![], b"a".to_vec(), vec![7u8; 100_000], b"last".to_vec()];
    let bytes = frame_bytes(&records, 9, 41);
    let (frames, error) = decode_all(&bytes);
    assert_eq!(error, None);
    let frame = &frames[0];
    assert_eq!(
        (frame.header.kind, frame.header.channel, frame.header.first_seq),
        (FrameKind::Data, 9, 41)
    );
    assert_eq!(frame.header.record_count, 4);
    let payload = frame.payload.as_ptr_range();
    for (record, expected) in frame.records().zip(&records) {
        assert_eq!(record, &expected[..]);
        let inside = payload.start <= record.as_ptr() && record.as_ptr() <= payload.end;
        assert!(inside, "records are slices of the received buffer");
    }
    assert_eq!(frame.records().count(), 4);
}

#[test]
fn writer_appends_after_earlier_frames() {
    let mut out = Vec::new();
    let first = encode_frame(&mut out, FrameKind::Heartbeat, 0, 0, &[]);
    let mut writer = FrameWriter::begin(&mut out, FrameKind::Data, 3, 1);
    writer.record_with(|buf| buf.extend_from_slice(b"written in place"));
    writer.push_record(b"pushed");
    assert_eq!(writer.record_count(), 2);
    let second = writer.finish();
    assert_eq!(first.end, second.start);
    let (frames, error) = decode_all(&out);
    assert_eq!((frames.len(), error), (2, None));
    let records: Vec<_> = frames[1].records().collect();
    assert_eq!(records, [&b"written in place"[..], &b"pushed"[..]]);
}

#[test]
fn every_bad_input_has_its_error() {
    let good = frame_bytes(&[b"abc".to_vec()], 1, 1);
    let with = |at: usize, value: &[u8]| {
        let mut bytes = good.clone();
        bytes[at..at + value.len()].copy_from_slice(value);
        decode_all(&bytes).1
    };
    assert!(matches!(with(0, b"XXXX"), Some(DecodeError::BadMagic { .. })));
    assert!(matches!(
        with(4, &9u16.to_le_bytes()),
        Some(DecodeError::BadVersion { found: 9 })
    ));
    assert!(matches!(with(6, &[77]), Some(DecodeError::BadKind { found: 77 })));
    assert!(matches!(
        with(8, &u32::MAX.to_le_bytes()),
        Some(DecodeError::Oversized { .. })
    ));
    assert!(matches!(
        with(24, &u32::MAX.to_le_bytes()),
        Some(DecodeError::TooManyRecords { .. })
    ));
    assert!(
        matches!(with(12, &[0xEE]), Some(DecodeError::BadChecksum { .. })),
        "header fields are checksummed"
    );
    let last = good.len() - 1;
    assert!(matches!(with(last, b"x"), Some(DecodeError::BadChecksum { .. })));
    assert!(matches!(
        decode_all(&good[..good.len() - 1]).1,
        Some(DecodeError::Truncated { .. })
    ));
    // A frame whose record lengths lie, with a valid checksum.
    let mut out = Vec::new();
    let mut writer = FrameWriter::begin(&mut out, FrameKind::Data, 1, 1);
    writer.push_record(b"abc");
    writer.finish();
    out[24..28].copy_from_slice(&2u32.to_le_bytes()); // claims two records
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[4..28]), &out[FRAME_HEADER_SIZE_BYTES..]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(
        decode_all(&out).1,
        Some(DecodeError::BadRecordLayout { .. })
    ));
}

#[test]
fn errors_poison_the_decoder() {
    let mut decoder = FrameDecoder::new();
    decoder.extend_from_slice(b"garbage!");
    let first = decoder.next_frame().unwrap_err();
    decoder.extend_from_slice(&frame_bytes(&[], 1, 1));
    assert_eq!(decoder.next_frame().unwrap_err(), first);
}

#[test]
fn a_frame_of_exactly_the_size_limit_round_trips_and_one_byte_more_is_refused() {
    let record = vec![0x5A; FRAME_SIZE_MAX_BYTES - FRAME_HEADER_SIZE_BYTES - 4];
    let bytes = frame_bytes(std::slice::from_ref(&record), 1, 1);
    assert_eq!(bytes.len(), FRAME_SIZE_MAX_BYTES);
    let (frames, error) = decode_all(&bytes);
    assert_eq!(error, None);
    assert_eq!(frames[0].records().next().unwrap().len(), record.len());

    let mut header = bytes[..FRAME_HEADER_SIZE_BYTES].to_vec();
    let too_big = (FRAME_SIZE_MAX_BYTES - FRAME_HEADER_SIZE_BYTES + 1) as u32;
    header[8..12].copy_from_slice(&too_big.to_le_bytes());
    assert_eq!(
        decode_all(&header).1,
        Some(DecodeError::Oversized {
            size_bytes: FRAME_SIZE_MAX_BYTES as u64 + 1,
            max_bytes: FRAME_SIZE_MAX_BYTES
        })
    );
}

#[test]
fn records_read_from_a_socket_are_slices_of_the_read_buffer() {
    let records = [vec![1u8; 10], vec![2u8; 1000], vec![3u8; 0]];
    let bytes = frame_bytes(&records, 1, 1);
    let mut decoder = FrameDecoder::new();
    let mut reader = &bytes[..];
    while decoder.read_from(&mut reader).unwrap() > 0 {}
    let frame = decoder.next_frame().unwrap().unwrap();
    let payload = frame.payload.as_ptr_range();
    for record in frame.records() {
        let range = record.as_ptr_range();
        assert!(payload.start <= range.start && range.end <= payload.end);
    }
}

proptest! {
    #[test]
    fn frames_round_trip(
        frames in proptest::collection::vec(
            (
                prop_oneof![Just(FrameKind::Data), Just(FrameKind::Ack), Just(FrameKind::Heartbeat)],
                any::<u32>(),
                any::<u64>(),
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            ),
            1..5,
        ),
    ) {
        let mut stream = Vec::new();
        for (kind, channel, first_seq, records) in &frames {
            let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            encode_frame(&mut stream, *kind, *channel, *first_seq, &refs);
        }
        let (decoded, error) = decode_all(&stream);
        prop_assert_eq!(error, None);
        prop_assert_eq!(decoded.len(), frames.len());
        for (frame, (kind, channel, first_seq, records)) in decoded.iter().zip(&frames) {
            let h = frame.header;
            prop_assert_eq!((h.kind, h.channel, h.first_seq), (*kind, *channel, *first_seq));
            prop_assert_eq!(h.record_count as usize, records.len());
            prop_assert_eq!(&frame.records().collect::<Vec<_>>(), records);
        }
    }

    #[test]
    fn a_replaced_byte_is_never_accepted(
        records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
        position in any::<usize>(),
        value in any::<u8>(),
    ) {
        let good = frame_bytes(&records, 5, 100);
        let mut bad = good.clone();
        let at = position % bad.len();
        prop_assume!(bad[at] != value);
        bad[at] = value;
        let (frames, error) = decode_all(&bad);
        prop_assert!(frames.is_empty(), "a corrupted frame was accepted");
        prop_assert!(error.is_some());
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_loop(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = decode_all(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_prefix(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = FRAME_MAGIC.to_vec();
        bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        bytes.extend_from_slice(&tail);
        let _ = decode_all(&bytes);
    }

    #[test]
    fn a_flipped_bit_is_never_accepted(
        records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
        position in any::<usize>(),
        bit in 0u8..8,
    ) {
        let good = frame_bytes(&records, 5, 100);
        let mut bad = good.clone();
        let at = position % bad.len();
        bad[at] ^= 1 << bit;
        let (frames, error) = decode_all(&bad);
        prop_assert!(frames.is_empty(), "a corrupted frame was accepted");
        prop_assert!(error.is_some());
    }

    #[test]
    fn truncated_or_extended_frames_give_errors_not_wrong_frames(
        records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
        cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let good = frame_bytes(&records, 5, 100);
        let (frames, _) = decode_all(&good[..cut % good.len()]);
        prop_assert!(frames.is_empty());
        let mut extended = good.clone();
        extended.extend_from_slice(&extra);
        let (frames, _) = decode_all(&extended);
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(frames[0].records().collect::<Vec<_>>(), records);
    }

    #[test]
    fn any_split_of_a_stream_decodes_the_same(
        batches in proptest::collection::vec(proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..32), 0..5), 1..6),
        splits in proptest::collection::vec(1usize..97, 1..40),
    ) {
        let mut stream = Vec::new();
        for (seq, records) in batches.iter().enumerate() {
            let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            encode_frame(&mut stream, FrameKind::Data, 2, seq as u64, &refs);
        }
        let mut decoder = FrameDecoder::new();
        let mut decoded = Vec::new();
        let mut at = 0;
        for split in splits.iter().cycle() {
            if at >= stream.len() {
                break;
            }
            let end = (at + split).min(stream.len());
            let mut reader = &stream[at..end];
            decoder.read_from(&mut reader).unwrap();
            at = end;
            while let Some(frame) = decoder.next_frame().unwrap() {
                decoded.push(frame.records().map(|r| r.to_vec()).collect::<Vec<_>>());
            }
        }
        prop_assert!(decoder.finish().is_ok());
        prop_assert_eq!(decoded, batches);
    }
}
