//! Nexmark: the events (`events`, one line each), the built-in generator
//! (`generator`) and the queries q0–q8 (`queries`), each written with the
//! public dataflow API as a user would. `docs/nexmark.md` is the definition
//! of what each query outputs; the reference models in `verify` follow it.

pub mod events;
pub mod generator;
pub mod queries;
pub mod windowed;

use verity_core::wire::take;
use verity_core::{Wire, WireError};

/// Bugs planted in the queries on purpose, to show `--check` catches them
/// (tests only; they never travel to a cluster's workers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs {
    /// q2 keeps the bids of the auction after each 123rd instead.
    pub q2_off_by_one: bool,
}

impl Bugs {
    pub fn named(name: &str) -> Option<Bugs> {
        match name {
            "q2-off-by-one" => Some(Bugs { q2_off_by_one: true }),
            _ => None,
        }
    }
}

/// The Nexmark queries by their command-line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Query {
    Q0,
    Q1,
    Q2,
    Q3,
    Q4,
    Q5,
    Q6,
    Q7,
    Q8,
}

impl Query {
    pub const ALL: [Query; 9] = [
        Query::Q0,
        Query::Q1,
        Query::Q2,
        Query::Q3,
        Query::Q4,
        Query::Q5,
        Query::Q6,
        Query::Q7,
        Query::Q8,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Query::Q0 => "q0",
            Query::Q1 => "q1",
            Query::Q2 => "q2",
            Query::Q3 => "q3",
            Query::Q4 => "q4",
            Query::Q5 => "q5",
            Query::Q6 => "q6",
            Query::Q7 => "q7",
            Query::Q8 => "q8",
        }
    }

    /// Its name as an app (`AppName::name`): `nexmark-q3`.
    pub fn app_name(self) -> &'static str {
        match self {
            Query::Q0 => "nexmark-q0",
            Query::Q1 => "nexmark-q1",
            Query::Q2 => "nexmark-q2",
            Query::Q3 => "nexmark-q3",
            Query::Q4 => "nexmark-q4",
            Query::Q5 => "nexmark-q5",
            Query::Q6 => "nexmark-q6",
            Query::Q7 => "nexmark-q7",
            Query::Q8 => "nexmark-q8",
        }
    }

    /// Which comma-separated field of an output line is its key (the
    /// engine's key of the record behind it): the id after the type in
    /// q0/q1's event lines, the first field in the others.
    pub fn output_key_field(self) -> usize {
        match self {
            Query::Q0 | Query::Q1 => 1,
            _ => 0,
        }
    }

    pub fn from_name(name: &str) -> Option<Query> {
        Query::ALL.into_iter().find(|q| q.name() == name)
    }

    /// What the query computes, in a line.
    pub fn summary(self) -> &'static str {
        match self {
            Query::Q0 => "pass-through: every event, in the text form",
            Query::Q1 => "currency conversion: every bid, price in euros (price * 908 / 1000)",
            Query::Q2 => "selection: `auction,price` of the bids with auction % 123 == 0",
            Query::Q3 => {
                "local item suggestion: sellers in OR, ID or CA joined with their category-10 auctions"
            }
            Query::Q4 => "average closing price per category",
            Query::Q5 => "hot items: the auctions with the most bids per 10 s window sliding by 2 s",
            Query::Q6 => "average selling price of each seller's last 10 closed auctions",
            Query::Q7 => "highest bid: the bids of the top price in each 10 s tumbling window",
            Query::Q8 => "new users: persons who opened an auction in the 10 s window they joined in",
        }
    }
}

/// A numeric key (a person, auction or window id): routed by a fixed-seed
/// hash of its value, stored inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(pub u64);

impl verity_core::Key for Id {
    fn route_hash(&self) -> u64 {
        verity_core::key::mix64(self.0)
    }
    fn detach(&self) -> Self {
        *self
    }
}

impl Wire for Id {
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(Id(u64::decode(input)?))
    }
}

/// Bytes owned in one allocation (a formatted line, a name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text(pub Box<[u8]>);

impl Wire for Text {
    fn encode(&self, out: &mut Vec<u8>) {
        verity_core::wire::encode_bytes(&self.0, out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        let len = u32::decode(input)? as usize;
        Ok(Text(take(input, len)?.into()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use verity_core::Wire;

    /// Encodes and decodes `value`: the same value, every byte used.
    pub fn round_trip<T: Wire + PartialEq + std::fmt::Debug>(value: T) {
        let mut bytes = Vec::new();
        value.encode(&mut bytes);
        let mut input = &bytes[..];
        assert_eq!(T::decode(&mut input).unwrap(), value);
        assert!(input.is_empty());
    }
}
