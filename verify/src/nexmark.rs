//! Reference models of the Nexmark queries: plain single-thread code over
//! the events in input order, written from `docs/nexmark.md` and sharing
//! nothing with the engine's queries but the event text form (its parser
//! and writer). Each model says which output lines every event makes, with
//! the key the engine keeps their order by, so the comparator checks an
//! engine run line by line (lost, duplicated, reordered per key, wrong).
//!
//! Windowed queries fire a window once the model's watermark (the largest
//! event time of the query's events so far, less `WATERMARK_DELAY_MS`)
//! reaches its end, and everything left at the end of input; an event
//! older than the watermark when it comes is late (dead-lettered).

use crate::oracle::ExpectSink;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use verity_apps::nexmark::events::{parse_event, write_bid, BidRef, EventRef};
use verity_apps::nexmark::Query;

/// The docs' constants, written out again here on purpose.
const WATERMARK_DELAY_MS: u64 = 1_000;
const Q2_SKIP: u64 = 123;
const Q5_SIZE_MS: u64 = 10_000;
const Q5_SLIDE_MS: u64 = 2_000;
const Q7_SIZE_MS: u64 = 10_000;
const Q8_SIZE_MS: u64 = 10_000;

/// What q3 knows of a person id.
enum Q3Person {
    Local {
        name: String,
        city: String,
        state: String,
    },
    Elsewhere,
}

/// The model of one query.
pub struct NexmarkModel {
    query: Query,
    /// Largest event time of the query's events so far.
    max_time_ms: Option<u64>,
    q3_people: HashMap<u64, Q3Person>,
    q3_waiting: HashMap<u64, Vec<u64>>,
    /// q5: per window start, bids per auction.
    q5_windows: BTreeMap<u64, BTreeMap<u64, u64>>,
    /// q7: per window start, the top price and its bids in input order.
    q7_windows: BTreeMap<u64, (u64, Vec<String>)>,
    /// q8: per (window start, person): the names of the person events and
    /// the reserves of the person's auctions in the window, in input order.
    q8_windows: BTreeMap<(u64, u64), (Vec<String>, Vec<u64>)>,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl NexmarkModel {
    pub fn new(query: Query) -> Self {
        NexmarkModel {
            query,
            max_time_ms: None,
            q3_people: HashMap::new(),
            q3_waiting: HashMap::new(),
            q5_windows: BTreeMap::new(),
            q7_windows: BTreeMap::new(),
            q8_windows: BTreeMap::new(),
        }
    }

    /// The key of an output line (see `docs/nexmark.md`).
    pub fn output_key(query: Query, line: &[u8]) -> Option<&[u8]> {
        let index = match query {
            Query::Q0 | Query::Q1 => 1,
            _ => 0,
        };
        line.split(|b| *b == b',').nth(index)
    }

    /// Input line `number`; false if the engine must dead-letter it.
    pub fn line(&mut self, number: u64, line: &[u8], sink: &mut dyn ExpectSink) -> bool {
        let Ok(event) = parse_event(line) else {
            return false;
        };
        match self.query {
            Query::Q0 => {
                let mut out = Vec::new();
                event.write(&mut out);
                let key = match event {
                    EventRef::Person(p) => p.id,
                    EventRef::Auction(a) => a.id,
                    EventRef::Bid(b) => b.auction,
                };
                sink.expect(key.to_string().as_bytes(), number, &out);
            }
            Query::Q1 => {
                if let EventRef::Bid(bid) = event {
                    let euros = (u128::from(bid.price) * 908 / 1000) as u64;
                    let mut out = Vec::new();
                    write_bid(&BidRef { price: euros, ..bid }, &mut out);
                    sink.expect(bid.auction.to_string().as_bytes(), number, &out);
                }
            }
            Query::Q2 => {
                if let EventRef::Bid(bid) = event {
                    if bid.auction % Q2_SKIP == 0 {
                        let key = bid.auction.to_string();
                        sink.expect(key.as_bytes(), number, format!("{key},{}", bid.price).as_bytes());
                    }
                }
            }
            Query::Q3 => self.q3(number, event, sink),
            Query::Q5 | Query::Q7 | Query::Q8 => return self.windowed(event, sink),
            Query::Q4 | Query::Q6 => {}
        }
        true
    }

    fn q3(&mut self, number: u64, event: EventRef<'_>, sink: &mut dyn ExpectSink) {
        match event {
            EventRef::Person(p) => {
                if self.q3_people.contains_key(&p.id) {
                    return;
                }
                let state = text(p.state).to_lowercase();
                let person = if ["or", "id", "ca"].contains(&state.as_str()) {
                    Q3Person::Local {
                        name: text(p.name),
                        city: text(p.city),
                        state: text(p.state),
                    }
                } else {
                    Q3Person::Elsewhere
                };
                self.q3_people.insert(p.id, person);
                for auction in self.q3_waiting.remove(&p.id).unwrap_or_default() {
                    self.q3_match(p.id, auction, number, sink);
                }
            }
            EventRef::Auction(a) if a.category == 10 => {
                if self.q3_people.contains_key(&a.seller) {
                    self.q3_match(a.seller, a.id, number, sink);
                } else {
                    self.q3_waiting.entry(a.seller).or_default().push(a.id);
                }
            }
            _ => {}
        }
    }

    fn q3_match(&self, seller: u64, auction: u64, number: u64, sink: &mut dyn ExpectSink) {
        if let Some(Q3Person::Local { name, city, state }) = self.q3_people.get(&seller) {
            let key = seller.to_string();
            let line = format!("{key},{name},{city},{state},{auction}");
            sink.expect(key.as_bytes(), number, line.as_bytes());
        }
    }

    /// Whether a windowed query reads this event at all.
    fn reads(&self, event: &EventRef<'_>) -> bool {
        match self.query {
            Query::Q5 | Query::Q7 => matches!(event, EventRef::Bid(_)),
            Query::Q8 => !matches!(event, EventRef::Bid(_)),
            _ => false,
        }
    }

    fn windowed(&mut self, event: EventRef<'_>, sink: &mut dyn ExpectSink) -> bool {
        if !self.reads(&event) {
            return true;
        }
        let time = event.date_time();
        let watermark = self.max_time_ms.map(|max| max.saturating_sub(WATERMARK_DELAY_MS));
        if watermark.is_some_and(|watermark| time < watermark) {
            return false;
        }
        match event {
            EventRef::Bid(bid) if self.query == Query::Q5 => {
                let last_start = time / Q5_SLIDE_MS * Q5_SLIDE_MS;
                let mut start = last_start as i128;
                while start > time as i128 - Q5_SIZE_MS as i128 && start >= 0 {
                    let counts = self.q5_windows.entry(start as u64).or_default();
                    *counts.entry(bid.auction).or_default() += 1;
                    start -= Q5_SLIDE_MS as i128;
                }
            }
            EventRef::Bid(bid) => {
                let start = time / Q7_SIZE_MS * Q7_SIZE_MS;
                let end = start + Q7_SIZE_MS;
                let line = format!(
                    "{start},{end},{},{},{},{}",
                    bid.auction, bid.price, bid.bidder, bid.date_time
                );
                let (top, bids) = self.q7_windows.entry(start).or_insert((bid.price, Vec::new()));
                if bid.price > *top {
                    *top = bid.price;
                    bids.clear();
                }
                if bid.price == *top {
                    bids.push(line);
                }
            }
            EventRef::Person(p) => {
                let start = time / Q8_SIZE_MS * Q8_SIZE_MS;
                self.q8_windows
                    .entry((start, p.id))
                    .or_default()
                    .0
                    .push(text(p.name));
            }
            EventRef::Auction(a) => {
                let start = time / Q8_SIZE_MS * Q8_SIZE_MS;
                self.q8_windows
                    .entry((start, a.seller))
                    .or_default()
                    .1
                    .push(a.reserve);
            }
        }
        self.max_time_ms = self.max_time_ms.max(Some(time));
        let watermark = self
            .max_time_ms
            .map_or(0, |max| max.saturating_sub(WATERMARK_DELAY_MS));
        self.fire(watermark, sink);
        true
    }

    /// Writes every window whose end is at or before `watermark`.
    fn fire(&mut self, watermark: u64, sink: &mut dyn ExpectSink) {
        let mut out = Vec::new();
        let q5_done = |start: &u64| start.saturating_add(Q5_SIZE_MS) <= watermark;
        while let Some(entry) = self.q5_windows.first_entry().filter(|e| q5_done(e.key())) {
            let (start, counts) = entry.remove_entry();
            let top = counts.values().copied().max().unwrap_or(0);
            for (auction, _) in counts.iter().filter(|(_, n)| **n == top) {
                out.clear();
                write!(out, "{start},{},{auction},{top}", start + Q5_SIZE_MS).unwrap();
                sink.expect(start.to_string().as_bytes(), 0, &out);
            }
        }
        while let Some(entry) = self
            .q7_windows
            .first_entry()
            .filter(|e| e.key().saturating_add(Q7_SIZE_MS) <= watermark)
        {
            let (start, (_, bids)) = entry.remove_entry();
            for line in bids {
                sink.expect(start.to_string().as_bytes(), 0, line.as_bytes());
            }
        }
        while let Some(entry) = self
            .q8_windows
            .first_entry()
            .filter(|e| e.key().0.saturating_add(Q8_SIZE_MS) <= watermark)
        {
            let ((start, person), (names, reserves)) = entry.remove_entry();
            let key = person.to_string();
            for name in &names {
                for reserve in &reserves {
                    let line = format!("{key},{name},{reserve},{start},{}", start + Q8_SIZE_MS);
                    sink.expect(key.as_bytes(), 0, line.as_bytes());
                }
            }
        }
    }

    /// The end of input: every window closes.
    pub fn end(&mut self, sink: &mut dyn ExpectSink) {
        self.fire(u64::MAX, sink);
    }
}
