//! Source positions, with a stable byte encoding so checkpoints can record
//! them and a later version of verity can read them back.

use crate::wire::{Wire, WireError};
use std::fmt;

/// Where one partition of a source stands: everything before it has been
/// read. Reopening the partition here yields exactly what follows.
///
/// Stable encoding (`Wire`): one tag byte, then the fields as little-endian
/// u64s — `1, bytes, lines` for `Text`, `2, offset` for `Log`. Tags are never
/// reused; a new kind of position gets a new tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Position {
    /// A text stream (file, memory, generator, stdin, TCP): `bytes` of it
    /// consumed, holding `lines` lines, so the next line is number `lines + 1`.
    /// For a TCP source the byte count is the sequence of the sender's stream.
    Text { bytes: u64, lines: u64 },
    /// A log of numbered records (Kafka: a partition): the next offset to read.
    Log { offset: u64 },
}

const TAG_TEXT: u8 = 1;
const TAG_LOG: u8 = 2;

impl Position {
    /// The beginning of a text stream.
    pub const TEXT_START: Position = Position::Text { bytes: 0, lines: 0 };

    /// The encoding as bytes (what `Wire::encode` appends).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17);
        self.encode(&mut out);
        out
    }

    /// Decodes a whole encoded position (trailing bytes are an error).
    pub fn from_bytes(mut bytes: &[u8]) -> Result<Position, WireError> {
        let position = Position::decode(&mut bytes)?;
        if !bytes.is_empty() {
            return Err(WireError::Invalid("bytes after an encoded position"));
        }
        Ok(position)
    }
}

impl Wire for Position {
    fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Position::Text { bytes, lines } => {
                TAG_TEXT.encode(out);
                bytes.encode(out);
                lines.encode(out);
            }
            Position::Log { offset } => {
                TAG_LOG.encode(out);
                offset.encode(out);
            }
        }
    }

    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        match u8::decode(input)? {
            TAG_TEXT => Ok(Position::Text {
                bytes: u64::decode(input)?,
                lines: u64::decode(input)?,
            }),
            TAG_LOG => Ok(Position::Log {
                offset: u64::decode(input)?,
            }),
            tag => Err(WireError::BadTag {
                tag,
                what: "position",
            }),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Text { bytes, lines } => write!(f, "byte {bytes} (after line {lines})"),
            Position::Log { offset } => write!(f, "offset {offset}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_encoding_is_stable() {
        // Checkpoints written by this version must read back in later ones:
        // these bytes may never change.
        assert_eq!(
            Position::Text { bytes: 258, lines: 3 }.to_bytes(),
            [1, 2, 1, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Position::Log { offset: 7 }.to_bytes(),
            [2, 7, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn bad_encodings_are_errors() {
        assert!(matches!(
            Position::from_bytes(&[9, 0]),
            Err(WireError::BadTag { tag: 9, .. })
        ));
        assert!(matches!(
            Position::from_bytes(&[1, 0, 0]),
            Err(WireError::Truncated { .. })
        ));
        let mut long = Position::Log { offset: 1 }.to_bytes();
        long.push(0);
        assert!(Position::from_bytes(&long).is_err());
    }

    proptest! {
        #[test]
        fn positions_round_trip(bytes: u64, lines: u64, offset: u64) {
            for position in [Position::Text { bytes, lines }, Position::Log { offset }] {
                prop_assert_eq!(Position::from_bytes(&position.to_bytes()), Ok(position));
            }
        }
    }
}
