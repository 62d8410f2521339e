//! `Wire`: how keys and values cross a process boundary. A fixed little-endian
//! layout written straight into the outgoing frame buffer and read back in place
//! from the received one (no per-record allocation for inline keys).

use crate::flow::Either;
use crate::small::SmallBytes;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("record ends early: needed {needed} more bytes")]
    Truncated { needed: usize },
    #[error("bad tag {tag} for {what}")]
    BadTag { tag: u8, what: &'static str },
    #[error("{0}")]
    Invalid(&'static str),
}

pub trait Wire: Sized {
    fn encode(&self, out: &mut Vec<u8>);
    /// Decodes one value from the front of `input`, advancing it past it.
    fn decode(input: &mut &[u8]) -> Result<Self, WireError>;
}

/// Takes `n` bytes from the front of `input`.
pub fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    if input.len() < n {
        return Err(WireError::Truncated {
            needed: n - input.len(),
        });
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

macro_rules! wire_int {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
                let bytes = take(input, std::mem::size_of::<$t>())?;
                Ok(<$t>::from_le_bytes(bytes.try_into().expect("took the exact size")))
            }
        }
    )*};
}
wire_int!(u8, u16, u32, u64, i64);

impl Wire for () {
    fn encode(&self, _: &mut Vec<u8>) {}
    fn decode(_: &mut &[u8]) -> Result<Self, WireError> {
        Ok(())
    }
}

impl Wire for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self as u8);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        match u8::decode(input)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(WireError::BadTag { tag, what: "bool" }),
        }
    }
}

/// Length-prefixed bytes (u32 length).
pub fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    (bytes.len() as u32).encode(out);
    out.extend_from_slice(bytes);
}

pub fn decode_bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], WireError> {
    let len = u32::decode(input)? as usize;
    take(input, len)
}

impl Wire for SmallBytes {
    fn encode(&self, out: &mut Vec<u8>) {
        (self.len() as u32).encode(out);
        self.write_to(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(SmallBytes::new(decode_bytes(input)?))
    }
}

impl<const N: usize> Wire for [u64; N] {
    fn encode(&self, out: &mut Vec<u8>) {
        for value in self {
            value.encode(out);
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        let mut values = [0; N];
        for value in values.iter_mut() {
            *value = u64::decode(input)?;
        }
        Ok(values)
    }
}

impl<T: Wire> Wire for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.is_some().encode(out);
        if let Some(value) = self {
            value.encode(out);
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(match u8::decode(input)? {
            0 => None,
            1 => Some(T::decode(input)?),
            tag => return Err(WireError::BadTag { tag, what: "option" }),
        })
    }
}

/// A length (u32), then each element. What is reserved up front is bounded
/// by the bytes left, so a corrupt length cannot allocate more than that.
impl<T: Wire> Wire for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        (self.len() as u32).encode(out);
        for value in self {
            value.encode(out);
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        let len = u32::decode(input)? as usize;
        let mut values = Vec::with_capacity(len.min(input.len()));
        for _ in 0..len {
            values.push(T::decode(input)?);
        }
        Ok(values)
    }
}

impl<A: Wire, B: Wire> Wire for (A, B) {
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
        self.1.encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok((A::decode(input)?, B::decode(input)?))
    }
}

impl<A: Wire, B: Wire> Wire for Either<A, B> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Either::Left(a) => {
                out.push(0);
                a.encode(out);
            }
            Either::Right(b) => {
                out.push(1);
                b.encode(out);
            }
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        match u8::decode(input)? {
            0 => Ok(Either::Left(A::decode(input)?)),
            1 => Ok(Either::Right(B::decode(input)?)),
            tag => Err(WireError::BadTag { tag, what: "Either" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Wire + PartialEq + std::fmt::Debug>(value: T) {
        let mut buf = Vec::new();
        value.encode(&mut buf);
        let mut input = &buf[..];
        assert_eq!(T::decode(&mut input).unwrap(), value);
        assert!(input.is_empty());
        for cut in 0..buf.len() {
            assert!(
                T::decode(&mut &buf[..cut]).is_err(),
                "a cut record must not decode"
            );
        }
    }

    #[test]
    fn values_round_trip() {
        round_trip(-5i64);
        round_trip(u64::MAX);
        round_trip((SmallBytes::new(b"word"), 7u64));
        round_trip(SmallBytes::new(&[b'x'; 100]));
        round_trip([1u64, 2, 3, 4]);
        round_trip(Either::<i64, u64>::Right(3));
        round_trip(Either::<i64, (u64, bool)>::Left(-1));
    }

    #[test]
    fn bad_tags_are_errors() {
        assert!(Either::<u8, u8>::decode(&mut &[7u8, 0][..]).is_err());
        assert!(bool::decode(&mut &[2u8][..]).is_err());
    }
}
