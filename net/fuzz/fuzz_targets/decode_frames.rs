//! Feeds arbitrary bytes to the frame decoder in arbitrary pieces: it must
//! never panic, never loop, and every frame it accepts must re-encode to the
//! bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use verity_net::frame::{encode_frame, FrameDecoder, FRAME_HEADER_SIZE_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else { return };
    let piece = split as usize + 1;
    let mut decoder = FrameDecoder::new();
    for chunk in bytes.chunks(piece) {
        decoder.extend_from_slice(chunk);
        for _ in 0..=chunk.len() / FRAME_HEADER_SIZE_BYTES + 1 {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let records: Vec<_> = frame.records().collect();
                    let refs: Vec<&[u8]> = records.iter().map(|r| &r[..]).collect();
                    let mut again = Vec::new();
                    let h = frame.header;
                    encode_frame(&mut again, h.kind, h.channel, h.first_seq, &refs);
                    assert_eq!(&again[FRAME_HEADER_SIZE_BYTES..], &frame.payload[..]);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = decoder.finish();
});
