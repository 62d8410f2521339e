//! The Nexmark queries as dataflows, with the public API only: q0–q3 here,
//! the windowed ones in `windowed`. What each outputs is defined in
//! `docs/nexmark.md`; the stateless ones (q0–q2) key by the event's auction
//! or person id, since the API's keyed step is where output is written.

use super::events::{parse_event, write_bid, BidRef, EventRef};
use super::{Bugs, Id, Query, Text};
use crate::format::write_u64;
use crate::{AppError, Driver};
use verity_core::wire::take;
use verity_core::{Dataflow, Line, SmallBytes, SourceSpec, Stream, Wire, WireError};

/// q1's exchange rate, dollars to euros, as Beam's `DOLLARS_TO_EUROS`
/// (0.908) in integer thousandths.
pub const EUROS_PER_1000_DOLLARS: u64 = 908;
/// q2 keeps the bids on every `Q2_AUCTION_SKIP`th auction (Beam's
/// `auctionSkip`).
pub const Q2_AUCTION_SKIP: u64 = 123;
/// q3's seller states (compared without case: the generator writes them in
/// lower case, Beam's in upper case).
pub const Q3_STATES: [&[u8]; 3] = [b"or", b"id", b"ca"];
/// q3's auction category.
pub const Q3_CATEGORY: u64 = 10;

/// Builds `query`'s dataflow on `input` (the events) and hands it to `driver`.
pub fn drive<D: Driver>(query: Query, input: SourceSpec, bugs: Bugs, driver: D) -> Result<D::Out, AppError> {
    Ok(match query {
        Query::Q0 => driver.drive(q0(input))?,
        Query::Q1 => driver.drive(q1(input))?,
        Query::Q2 => driver.drive(q2(input, bugs))?,
        Query::Q3 => driver.drive(q3(input))?,
        Query::Q5 => driver.drive(super::windowed::q5(input))?,
        Query::Q7 => driver.drive(super::windowed::q7(input))?,
        Query::Q8 => driver.drive(super::windowed::q8(input))?,
        Query::Q4 | Query::Q6 => return Err(AppError::NotBuilt(query.name())),
    })
}

/// The id an event is keyed by in the stateless queries: a person's own,
/// an auction's own, a bid's auction.
fn subject(event: &EventRef<'_>) -> Id {
    Id(match event {
        EventRef::Person(p) => p.id,
        EventRef::Auction(a) => a.id,
        EventRef::Bid(b) => b.auction,
    })
}

fn write_text(text: &Text, out: &mut Vec<u8>) {
    out.extend_from_slice(&text.0);
}

/// Formats into a buffer of the exact size: one allocation per record.
fn text_of(size_hint: usize, write: impl FnOnce(&mut Vec<u8>)) -> Text {
    let mut out = Vec::with_capacity(size_hint);
    write(&mut out);
    Text(out.into_boxed_slice())
}

/// q0: every event, parsed and written back in the text form.
pub fn q0(input: SourceSpec) -> Dataflow<Id, Text, (), Text> {
    Stream::from_source(input)
        .try_map(|line: Line| {
            let event = parse_event(line.as_bytes())?;
            Ok((
                subject(&event),
                text_of(line.as_bytes().len(), |out| event.write(out)),
            ))
        })
        .key_split(|keyed| keyed)
        .stateful(|_: &mut (), _, msg, out| out.emit(msg.data))
        .sink(write_text)
}

/// q1's price: cents of dollars to cents of euros, rounded down (as Beam's
/// integer arithmetic); exact for every u64 price.
pub fn euros(price: u64) -> u64 {
    (price as u128 * EUROS_PER_1000_DOLLARS as u128 / 1000) as u64
}

/// q1: every bid with its price converted to euros.
pub fn q1(input: SourceSpec) -> Dataflow<Id, Text, (), Text> {
    Stream::from_source(input)
        .flat_map(|line: Line, out| match parse_event(line.as_bytes())? {
            EventRef::Bid(bid) => {
                let converted = BidRef {
                    price: euros(bid.price),
                    ..bid
                };
                out.push((
                    Id(bid.auction),
                    text_of(line.as_bytes().len(), |o| write_bid(&converted, o)),
                ))
            }
            _ => Ok(()),
        })
        .key_split(|keyed| keyed)
        .stateful(|_: &mut (), _, msg, out| out.emit(msg.data))
        .sink(write_text)
}

/// q2: `auction,price` of the bids on every 123rd auction.
pub fn q2(input: SourceSpec, bugs: Bugs) -> Dataflow<Id, u64, (), (Id, u64)> {
    let remainder = u64::from(bugs.q2_off_by_one);
    Stream::from_source(input)
        .flat_map(move |line: Line, out| match parse_event(line.as_bytes())? {
            EventRef::Bid(bid) if bid.auction % Q2_AUCTION_SKIP == remainder => {
                out.push((Id(bid.auction), bid.price))
            }
            _ => Ok(()),
        })
        .key_split(|keyed| keyed)
        .stateful(|_: &mut (), auction, msg, out| out.emit((*auction, msg.data)))
        .sink(|(auction, price), out| {
            write_u64(out, auction.0);
            out.push(b',');
            write_u64(out, *price);
        })
}

/// What q3's keyed step gets, keyed by person id (a seller's, for an auction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SellerEvent {
    /// A person in one of `Q3_STATES`.
    Local {
        name: SmallBytes,
        city: SmallBytes,
        state: SmallBytes,
    },
    /// A person elsewhere: their auctions never match.
    Elsewhere,
    /// An auction of `Q3_CATEGORY`, by its id.
    Auction(u64),
}

/// q3's state per person id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seller {
    /// The person has not come yet: their auctions wait, in arrival order.
    #[default]
    Unseen,
    Waiting(Vec<u64>),
    Local {
        name: SmallBytes,
        city: SmallBytes,
        state: SmallBytes,
    },
    Elsewhere,
}

/// q3's output: `seller,name,city,state,auction`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalItem {
    pub seller: Id,
    pub name: SmallBytes,
    pub city: SmallBytes,
    pub state: SmallBytes,
    pub auction: u64,
}

fn is_q3_state(state: &[u8]) -> bool {
    Q3_STATES.iter().any(|s| s.eq_ignore_ascii_case(state))
}

/// q3: an incremental join of persons and auctions on the seller, one
/// stream keyed by person id; the first person event of an id is the one
/// that counts.
pub fn q3(input: SourceSpec) -> Dataflow<Id, SellerEvent, Seller, LocalItem> {
    Stream::from_source(input)
        .flat_map(|line: Line, out| match parse_event(line.as_bytes())? {
            EventRef::Person(p) if is_q3_state(p.state) => out.push((
                Id(p.id),
                SellerEvent::Local {
                    name: SmallBytes::new(p.name),
                    city: SmallBytes::new(p.city),
                    state: SmallBytes::new(p.state),
                },
            )),
            EventRef::Person(p) => out.push((Id(p.id), SellerEvent::Elsewhere)),
            EventRef::Auction(a) if a.category == Q3_CATEGORY => {
                out.push((Id(a.seller), SellerEvent::Auction(a.id)))
            }
            _ => Ok(()),
        })
        .key_split(|keyed| keyed)
        .stateful(|seller: &mut Seller, id, msg, out| {
            let emit = |out: &mut verity_core::Output<'_, LocalItem>, seller: &Seller, auction: u64| {
                if let Seller::Local { name, city, state } = seller {
                    out.emit(LocalItem {
                        seller: *id,
                        name: name.clone(),
                        city: city.clone(),
                        state: state.clone(),
                        auction,
                    });
                }
            };
            match (msg.data, &mut *seller) {
                (SellerEvent::Auction(auction), Seller::Unseen) => *seller = Seller::Waiting(vec![auction]),
                (SellerEvent::Auction(auction), Seller::Waiting(waiting)) => waiting.push(auction),
                (SellerEvent::Auction(auction), known) => emit(out, known, auction),
                (person, Seller::Unseen | Seller::Waiting(_)) => {
                    let waiting = match std::mem::take(seller) {
                        Seller::Waiting(waiting) => waiting,
                        _ => Vec::new(),
                    };
                    *seller = match person {
                        SellerEvent::Local { name, city, state } => Seller::Local { name, city, state },
                        _ => Seller::Elsewhere,
                    };
                    for auction in waiting {
                        emit(out, seller, auction);
                    }
                }
                // A person id seen before: the first one stands.
                (_, Seller::Local { .. } | Seller::Elsewhere) => {}
            }
        })
        .sink(|item, out| {
            write_u64(out, item.seller.0);
            for text in [&item.name, &item.city, &item.state] {
                out.push(b',');
                text.write_to(out);
            }
            out.push(b',');
            write_u64(out, item.auction);
        })
}

impl Wire for SellerEvent {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            SellerEvent::Local { name, city, state } => {
                out.push(0);
                name.encode(out);
                city.encode(out);
                state.encode(out);
            }
            SellerEvent::Elsewhere => out.push(1),
            SellerEvent::Auction(id) => {
                out.push(2);
                id.encode(out);
            }
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(match take(input, 1)?[0] {
            0 => SellerEvent::Local {
                name: SmallBytes::decode(input)?,
                city: SmallBytes::decode(input)?,
                state: SmallBytes::decode(input)?,
            },
            1 => SellerEvent::Elsewhere,
            2 => SellerEvent::Auction(u64::decode(input)?),
            tag => {
                return Err(WireError::BadTag {
                    tag,
                    what: "q3 seller event",
                })
            }
        })
    }
}

impl Wire for Seller {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Seller::Unseen => out.push(0),
            Seller::Waiting(auctions) => {
                out.push(1);
                (auctions.len() as u32).encode(out);
                auctions.iter().for_each(|a| a.encode(out));
            }
            Seller::Local { name, city, state } => {
                out.push(2);
                name.encode(out);
                city.encode(out);
                state.encode(out);
            }
            Seller::Elsewhere => out.push(3),
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(match take(input, 1)?[0] {
            0 => Seller::Unseen,
            1 => {
                let count = u32::decode(input)? as usize;
                // Each id takes 8 bytes: a count past the input is corrupt.
                if count > input.len() / 8 {
                    return Err(WireError::Invalid("q3 waiting auctions past the end"));
                }
                Seller::Waiting((0..count).map(|_| u64::decode(input)).collect::<Result<_, _>>()?)
            }
            2 => Seller::Local {
                name: SmallBytes::decode(input)?,
                city: SmallBytes::decode(input)?,
                state: SmallBytes::decode(input)?,
            },
            3 => Seller::Elsewhere,
            tag => {
                return Err(WireError::BadTag {
                    tag,
                    what: "q3 seller",
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nexmark::tests::round_trip;

    #[test]
    fn q3_values_round_trip() {
        let s = SmallBytes::new;
        round_trip(SellerEvent::Local {
            name: s(b"kate white"),
            city: s(b"bend"),
            state: s(b"or"),
        });
        round_trip(SellerEvent::Elsewhere);
        round_trip(SellerEvent::Auction(1234));
        round_trip(Seller::Unseen);
        round_trip(Seller::Waiting(vec![1, 2, 3]));
        round_trip(Seller::Elsewhere);
        round_trip(Seller::Local {
            name: s(b"kate white"),
            city: s(b"bend"),
            state: s(b"or"),
        });
    }

    #[test]
    fn euros_round_down_and_never_overflow() {
        assert_eq!(euros(1000), 908);
        assert_eq!(euros(1), 0);
        assert_eq!(euros(u64::MAX), (u64::MAX as u128 * 908 / 1000) as u64);
    }
}
