//! Nexmark events in their one-line text form, and a parser that reads a
//! line in place: the parsed event borrows its string fields from the line,
//! so parsing allocates nothing; a query copies out only the fields it uses.
//!
//! The form (fields as in the Nexmark spec, times in ms since the Unix epoch,
//! prices in cents, no field holds a comma):
//!
//! ```text
//! P,<id>,<name>,<email>,<credit_card>,<city>,<state>,<date_time>,<extra>
//! A,<id>,<item_name>,<description>,<initial_bid>,<reserve>,<date_time>,<expires>,<seller>,<category>,<extra>
//! B,<auction>,<bidder>,<price>,<channel>,<url>,<date_time>,<extra>
//! ```

use crate::format::write_u64;
use crate::market_spread::parse_u64;
use verity_core::Reject;

/// The help text of the form, for `--help`.
pub const TEXT_FORM_HELP: &str = "\
Input: one Nexmark event per line (times in ms since the Unix epoch, prices in
cents, no field holds a comma):
  P,<id>,<name>,<email>,<credit_card>,<city>,<state>,<date_time>,<extra>
  A,<id>,<item_name>,<description>,<initial_bid>,<reserve>,<date_time>,<expires>,<seller>,<category>,<extra>
  B,<auction>,<bidder>,<price>,<channel>,<url>,<date_time>,<extra>
A line that is not valid UTF-8, has another type or field count, or a
number field that is not u64 digits is dead-lettered.";

/// The most fields a line has (an auction).
const FIELDS_MAX: usize = 11;
const PERSON_FIELDS: usize = 9;
const AUCTION_FIELDS: usize = 11;
const BID_FIELDS: usize = 8;

/// A person, borrowed from its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersonRef<'a> {
    pub id: u64,
    pub name: &'a [u8],
    pub email: &'a [u8],
    pub credit_card: &'a [u8],
    pub city: &'a [u8],
    pub state: &'a [u8],
    pub date_time: u64,
    pub extra: &'a [u8],
}

/// An auction, borrowed from its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuctionRef<'a> {
    pub id: u64,
    pub item_name: &'a [u8],
    pub description: &'a [u8],
    pub initial_bid: u64,
    pub reserve: u64,
    pub date_time: u64,
    pub expires: u64,
    pub seller: u64,
    pub category: u64,
    pub extra: &'a [u8],
}

/// A bid, borrowed from its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BidRef<'a> {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub channel: &'a [u8],
    pub url: &'a [u8],
    pub date_time: u64,
    pub extra: &'a [u8],
}

/// One event, borrowed from its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventRef<'a> {
    Person(PersonRef<'a>),
    Auction(AuctionRef<'a>),
    Bid(BidRef<'a>),
}

impl EventRef<'_> {
    /// The event time, ms since the Unix epoch.
    pub fn date_time(&self) -> u64 {
        match self {
            EventRef::Person(p) => p.date_time,
            EventRef::Auction(a) => a.date_time,
            EventRef::Bid(b) => b.date_time,
        }
    }

    /// Writes the event in the text form (without `\n`).
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            EventRef::Person(p) => write_person(p, out),
            EventRef::Auction(a) => write_auction(a, out),
            EventRef::Bid(b) => write_bid(b, out),
        }
    }
}

/// Splits `line` at its commas into `fields`; returns how many there are
/// (`FIELDS_MAX + 1` means more than fit).
fn split_fields<'a>(line: &'a [u8], fields: &mut [&'a [u8]; FIELDS_MAX]) -> usize {
    let mut count = 0;
    let mut start = 0;
    for comma in memchr::memchr_iter(b',', line) {
        if count == FIELDS_MAX {
            return FIELDS_MAX + 1;
        }
        fields[count] = &line[start..comma];
        count += 1;
        start = comma + 1;
    }
    if count == FIELDS_MAX {
        return FIELDS_MAX + 1;
    }
    fields[count] = &line[start..];
    count + 1
}

fn expect_fields(kind: &'static str, count: usize, expected: usize) -> Result<(), Reject> {
    if count == expected {
        return Ok(());
    }
    Err(Reject::new(match kind {
        "P" => "a person line has 9 comma-separated fields",
        "A" => "an auction line has 11 comma-separated fields",
        _ => "a bid line has 8 comma-separated fields",
    }))
}

/// Parses one line of the text form.
pub fn parse_event(line: &[u8]) -> Result<EventRef<'_>, Reject> {
    if !line.is_ascii() {
        std::str::from_utf8(line)
            .map_err(|e| Reject::new(format!("invalid UTF-8 at byte {} of the line", e.valid_up_to())))?;
    }
    let mut f: [&[u8]; FIELDS_MAX] = [&[]; FIELDS_MAX];
    let count = split_fields(line, &mut f);
    match f[0] {
        b"P" => {
            expect_fields("P", count, PERSON_FIELDS)?;
            Ok(EventRef::Person(PersonRef {
                id: parse_u64(f[1], "person id")?,
                name: f[2],
                email: f[3],
                credit_card: f[4],
                city: f[5],
                state: f[6],
                date_time: parse_u64(f[7], "date_time")?,
                extra: f[8],
            }))
        }
        b"A" => {
            expect_fields("A", count, AUCTION_FIELDS)?;
            Ok(EventRef::Auction(AuctionRef {
                id: parse_u64(f[1], "auction id")?,
                item_name: f[2],
                description: f[3],
                initial_bid: parse_u64(f[4], "initial_bid")?,
                reserve: parse_u64(f[5], "reserve")?,
                date_time: parse_u64(f[6], "date_time")?,
                expires: parse_u64(f[7], "expires")?,
                seller: parse_u64(f[8], "seller")?,
                category: parse_u64(f[9], "category")?,
                extra: f[10],
            }))
        }
        b"B" => {
            expect_fields("B", count, BID_FIELDS)?;
            Ok(EventRef::Bid(BidRef {
                auction: parse_u64(f[1], "auction")?,
                bidder: parse_u64(f[2], "bidder")?,
                price: parse_u64(f[3], "price")?,
                channel: f[4],
                url: f[5],
                date_time: parse_u64(f[6], "date_time")?,
                extra: f[7],
            }))
        }
        _ => Err(Reject::new("an event line starts with P, A or B and a comma")),
    }
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b',');
    out.extend_from_slice(bytes);
}

fn number(out: &mut Vec<u8>, value: u64) {
    out.push(b',');
    write_u64(out, value);
}

pub fn write_person(p: &PersonRef<'_>, out: &mut Vec<u8>) {
    out.push(b'P');
    number(out, p.id);
    for text in [p.name, p.email, p.credit_card, p.city, p.state] {
        field(out, text);
    }
    number(out, p.date_time);
    field(out, p.extra);
}

pub fn write_auction(a: &AuctionRef<'_>, out: &mut Vec<u8>) {
    out.push(b'A');
    number(out, a.id);
    field(out, a.item_name);
    field(out, a.description);
    for value in [
        a.initial_bid,
        a.reserve,
        a.date_time,
        a.expires,
        a.seller,
        a.category,
    ] {
        number(out, value);
    }
    field(out, a.extra);
}

pub fn write_bid(b: &BidRef<'_>, out: &mut Vec<u8>) {
    out.push(b'B');
    for value in [b.auction, b.bidder, b.price] {
        number(out, value);
    }
    field(out, b.channel);
    field(out, b.url);
    number(out, b.date_time);
    field(out, b.extra);
}

/// Writes one generated event of the `nexmark` crate in the text form.
pub fn write_generated(event: &nexmark::event::Event, out: &mut Vec<u8>) {
    use nexmark::event::Event;
    let event = match event {
        Event::Person(p) => EventRef::Person(PersonRef {
            id: p.id as u64,
            name: p.name.as_bytes(),
            email: p.email_address.as_bytes(),
            credit_card: p.credit_card.as_bytes(),
            city: p.city.as_bytes(),
            state: p.state.as_bytes(),
            date_time: p.date_time,
            extra: p.extra.as_bytes(),
        }),
        Event::Auction(a) => EventRef::Auction(AuctionRef {
            id: a.id as u64,
            item_name: a.item_name.as_bytes(),
            description: a.description.as_bytes(),
            initial_bid: a.initial_bid as u64,
            reserve: a.reserve as u64,
            date_time: a.date_time,
            expires: a.expires,
            seller: a.seller as u64,
            category: a.category as u64,
            extra: a.extra.as_bytes(),
        }),
        Event::Bid(b) => EventRef::Bid(BidRef {
            auction: b.auction as u64,
            bidder: b.bidder as u64,
            price: b.price as u64,
            channel: b.channel.as_bytes(),
            url: b.url.as_bytes(),
            date_time: b.date_time,
            extra: b.extra.as_bytes(),
        }),
    };
    event.write(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(line: &[u8]) {
        let event = parse_event(line).unwrap();
        let mut out = Vec::new();
        event.write(&mut out);
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(line));
    }

    #[test]
    fn each_type_round_trips() {
        round_trip(b"P,1000,vicky noris,y@q.com,7878 5821 1864 2539,cheyenne,az,1700000000000,xyz");
        round_trip(b"A,1000,item,desc,100,250,1700000000001,1700000000300,1000,10,");
        round_trip(
            b"B,1000,1001,1234,Google,https://www.nexmark.com/a/b/c/item.htm?query=1,1700000000002,ex",
        );
    }

    #[test]
    fn generated_events_round_trip() {
        let config =
            crate::nexmark::generator::config(7, crate::nexmark::generator::DEFAULT_EVENT_RATE_PER_S);
        for event in nexmark::EventGenerator::new(config).take(200) {
            let mut line = Vec::new();
            write_generated(&event, &mut line);
            assert!(!line.contains(&b'\n'));
            round_trip(&line);
            assert_eq!(parse_event(&line).unwrap().date_time(), event.timestamp());
        }
    }

    #[test]
    fn bad_lines_are_rejected_with_a_reason() {
        let reason = |line: &[u8]| parse_event(line).unwrap_err().reason.into_owned();
        assert_eq!(reason(b"X,1"), "an event line starts with P, A or B and a comma");
        assert_eq!(reason(b""), "an event line starts with P, A or B and a comma");
        assert_eq!(
            reason(b"B,1,2,3,c,u,4"),
            "a bid line has 8 comma-separated fields"
        );
        assert_eq!(
            reason(b"B,1,2,3,c,u,4,e,more"),
            "a bid line has 8 comma-separated fields"
        );
        assert_eq!(
            reason(b"A,1,i,d,1,2,3,4,5,6,e,f,g,h"),
            "an auction line has 11 comma-separated fields"
        );
        assert_eq!(reason(b"B,1,2,x3,c,u,4,e"), "price must be digits");
        assert!(reason(b"P,1,\xff,e,c,c,s,1,x").contains("UTF-8"));
    }
}
