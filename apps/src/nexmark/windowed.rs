//! The windowed Nexmark queries, on event time: q5 (hopping windows), q7
//! (tumbling windows), q8 (a windowed join). Windows, their state and their
//! closing are the API's (`verity_core::window`); what is Nexmark here is
//! the aggregates and the keys. See `docs/nexmark.md` for what they output.

use super::events::{parse_event, EventRef};
use super::Id;
use crate::format::write_u64;
use std::collections::HashMap;
use verity_core::window::{Aggregate, Join, WindowResult, WindowSpec, Windows};
use verity_core::{Dataflow, Either, Line, SmallBytes, SourceSpec, Stream, Wire, WireError};

/// How far behind the newest event time the watermark stays: events up to
/// this much out of order still count.
pub const WATERMARK_DELAY_MS: u64 = 1_000;
/// q5's windows: 10 s long, one every 2 s (Flink's q5).
pub const Q5_WINDOW_SIZE_MS: u64 = 10_000;
pub const Q5_WINDOW_SLIDE_MS: u64 = 2_000;
/// q7's and q8's tumbling windows.
pub const Q7_WINDOW_SIZE_MS: u64 = 10_000;
pub const Q8_WINDOW_SIZE_MS: u64 = 10_000;
/// q5 counts all bids under one key: the hot items of a window are a
/// maximum over every auction.
const Q5_ALL_BIDS: Id = Id(0);

/// One writer of `WindowResult` lines: `<start>,<end>` and the value.
fn write_window<K>(result: &WindowResult<K, impl Sized>, out: &mut Vec<u8>) {
    write_u64(out, result.start_ms);
    out.push(b',');
    write_u64(out, result.end_ms);
}

fn write_fields(out: &mut Vec<u8>, values: &[u64]) {
    for value in values {
        out.push(b',');
        write_u64(out, *value);
    }
}

/// Bids per auction in one window; written sorted, so equal counts encode
/// equally whatever the map's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuctionCounts(HashMap<u64, u64>);

impl Wire for AuctionCounts {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut counts: Vec<(u64, u64)> = self.0.iter().map(|(a, n)| (*a, *n)).collect();
        counts.sort_unstable();
        counts.encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(AuctionCounts(
            Vec::<(u64, u64)>::decode(input)?.into_iter().collect(),
        ))
    }
}

/// A hot item of q5: an auction and its bids in the window.
pub type HotItem = (u64, u64);

/// q5's aggregate over `(auction, date_time)`: the auctions with the most
/// bids in the window, in ascending auction id, each with its count.
pub struct HotItems;

impl Aggregate<(u64, u64)> for HotItems {
    type Acc = AuctionCounts;
    type Out = (u64, u64);
    fn add(&self, acc: &mut AuctionCounts, (auction, _): &(u64, u64)) {
        *acc.0.entry(*auction).or_default() += 1;
    }
    fn merge(&self, into: &mut AuctionCounts, from: AuctionCounts) {
        for (auction, count) in from.0 {
            *into.0.entry(auction).or_default() += count;
        }
    }
    fn finish(&self, acc: AuctionCounts, emit: &mut dyn FnMut((u64, u64))) {
        let top = acc.0.values().copied().max().unwrap_or(0);
        let mut hot: Vec<(u64, u64)> = acc.0.into_iter().filter(|(_, count)| *count == top).collect();
        hot.sort_unstable();
        hot.into_iter().for_each(emit);
    }
}

/// q5: per 10 s window sliding by 2 s, the auctions with the most bids.
pub fn q5(input: SourceSpec) -> Dataflow<Id, (u64, u64), Windows<AuctionCounts>, WindowResult<Id, HotItem>> {
    Stream::from_source(input)
        .flat_map(|line: Line, out| match parse_event(line.as_bytes())? {
            EventRef::Bid(bid) => out.push((bid.auction, bid.date_time)),
            _ => Ok(()),
        })
        .key_by(|_| Q5_ALL_BIDS)
        .event_time(|(_, date_time)| *date_time, WATERMARK_DELAY_MS)
        .window(
            WindowSpec::hopping(Q5_WINDOW_SIZE_MS, Q5_WINDOW_SLIDE_MS),
            HotItems,
        )
        .idle_timeout_ms(None)
        .sink(|result, out| {
            write_window(result, out);
            write_fields(out, &[result.value.0, result.value.1]);
        })
}

/// What q7 keeps of a bid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BidSummary {
    pub auction: u64,
    pub price: u64,
    pub bidder: u64,
    pub date_time: u64,
}

impl Wire for BidSummary {
    fn encode(&self, out: &mut Vec<u8>) {
        [self.auction, self.price, self.bidder, self.date_time].encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        let [auction, price, bidder, date_time] = <[u64; 4]>::decode(input)?;
        Ok(BidSummary {
            auction,
            price,
            bidder,
            date_time,
        })
    }
}

/// q7's aggregate: the bids at the window's highest price, in input order.
pub struct HighestBids;

impl Aggregate<BidSummary> for HighestBids {
    type Acc = Vec<BidSummary>;
    type Out = BidSummary;
    fn add(&self, top: &mut Vec<BidSummary>, bid: &BidSummary) {
        match top.first().map(|b| b.price) {
            Some(price) if bid.price < price => {}
            Some(price) if bid.price == price => top.push(*bid),
            _ => {
                top.clear();
                top.push(*bid);
            }
        }
    }
    fn merge(&self, into: &mut Vec<BidSummary>, from: Vec<BidSummary>) {
        from.iter().for_each(|bid| self.add(into, bid));
    }
    fn finish(&self, top: Vec<BidSummary>, emit: &mut dyn FnMut(BidSummary)) {
        top.into_iter().for_each(emit);
    }
}

/// q7: per 10 s tumbling window, the bids at its highest price. Keyed by
/// the window's start, so windows spread over the shards.
pub fn q7(
    input: SourceSpec,
) -> Dataflow<Id, BidSummary, Windows<Vec<BidSummary>>, WindowResult<Id, BidSummary>> {
    Stream::from_source(input)
        .flat_map(|line: Line, out| match parse_event(line.as_bytes())? {
            EventRef::Bid(bid) => out.push(BidSummary {
                auction: bid.auction,
                price: bid.price,
                bidder: bid.bidder,
                date_time: bid.date_time,
            }),
            _ => Ok(()),
        })
        .key_by(|bid: &BidSummary| Id(bid.date_time / Q7_WINDOW_SIZE_MS * Q7_WINDOW_SIZE_MS))
        .event_time(|bid| bid.date_time, WATERMARK_DELAY_MS)
        .window(WindowSpec::tumbling(Q7_WINDOW_SIZE_MS), HighestBids)
        .idle_timeout_ms(None)
        .sink(|result, out| {
            write_window(result, out);
            let bid = &result.value;
            write_fields(out, &[bid.auction, bid.price, bid.bidder, bid.date_time]);
        })
}

/// q8's two sides, keyed by person id: a person's name, an auction's
/// reserve, each with its event time.
pub type NewUserSides = Either<(SmallBytes, u64), (u64, u64)>;

/// q8's pairs: a person's name and an auction's reserve.
pub type NewUser = (SmallBytes, u64);
/// q8's window state: the join's two sides.
type Q8Pairs = <Join<(SmallBytes, u64), (u64, u64), NewUser> as Aggregate<NewUserSides>>::Acc;

fn side_time(side: &NewUserSides) -> u64 {
    match side {
        Either::Left((_, date_time)) | Either::Right((_, date_time)) => *date_time,
    }
}

/// q8: persons joined with the auctions they opened in the same 10 s
/// tumbling window, one line per pair.
pub fn q8(input: SourceSpec) -> Dataflow<Id, NewUserSides, Windows<Q8Pairs>, WindowResult<Id, NewUser>> {
    Stream::from_source(input)
        .flat_map(|line: Line, out| match parse_event(line.as_bytes())? {
            EventRef::Person(p) => out.push((Id(p.id), Either::Left((SmallBytes::new(p.name), p.date_time)))),
            EventRef::Auction(a) => out.push((Id(a.seller), Either::Right((a.reserve, a.date_time)))),
            EventRef::Bid(_) => Ok(()),
        })
        .key_split(|keyed: (Id, NewUserSides)| keyed)
        .event_time(side_time, WATERMARK_DELAY_MS)
        .window_join(
            WindowSpec::tumbling(Q8_WINDOW_SIZE_MS),
            |(name, _), (reserve, _)| (name.clone(), *reserve),
        )
        .idle_timeout_ms(None)
        .sink(|result, out| {
            write_u64(out, result.key.0);
            out.push(b',');
            result.value.0.write_to(out);
            out.push(b',');
            write_u64(out, result.value.1);
            out.push(b',');
            write_window(result, out);
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nexmark::tests::round_trip;

    #[test]
    fn states_round_trip_and_counts_encode_in_one_order() {
        round_trip(BidSummary {
            auction: 1,
            price: 2,
            bidder: 3,
            date_time: 4,
        });
        let counts = AuctionCounts([(5, 1), (3, 2), (9, 2)].into_iter().collect());
        round_trip(counts.clone());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        counts.encode(&mut a);
        AuctionCounts([(9, 2), (5, 1), (3, 2)].into_iter().collect()).encode(&mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn hot_items_are_the_ties_at_the_top_in_auction_order() {
        let mut acc = AuctionCounts::default();
        for auction in [7, 3, 7, 3, 1] {
            HotItems.add(&mut acc, &(auction, 0));
        }
        let mut out = Vec::new();
        HotItems.finish(acc, &mut |hot| out.push(hot));
        assert_eq!(out, [(3, 2), (7, 2)]);
    }

    #[test]
    fn highest_bids_keep_every_tie_in_input_order() {
        let bid = |auction, price| BidSummary {
            auction,
            price,
            bidder: 0,
            date_time: 0,
        };
        let mut top = Vec::new();
        for b in [bid(1, 5), bid(2, 9), bid(3, 4), bid(4, 9)] {
            HighestBids.add(&mut top, &b);
        }
        assert_eq!(top, [bid(2, 9), bid(4, 9)]);
    }
}
