//! `market-spread`: the reference app of a trading system. Quotes set each
//! symbol's market state; each order is accepted or rejected on the state in
//! force when the order reaches its symbol's shard.

use crate::format::{write_price, write_u64};
use verity_core::wire::take;
use verity_core::{Dataflow, Either, Line, MsgId, Reject, SourceSpec, Stream, Wire, WireError};

mod parse;
pub use parse::{parse_event, parse_price, parse_u64};

pub const FORMAT_HELP: &str = "\
Input: quote lines `Q,<symbol>,<bid>,<ask>` and order lines
`O,<order_id>,<symbol>,<side B|S>,<qty>,<price>`. Prices are decimals with at most
4 fractional digits, parsed exactly into units of 0.0001; order ids and
quantities are u64; symbols are 1-8 chars of [A-Z0-9.]. Give one mixed stream
(--input) or two streams read concurrently (--quotes P --orders P, each a file,
`-` or tcp:HOST:PORT).
State per symbol: its last quote. A symbol starts rejecting; a quote makes it
rejecting when ask - bid >= 0.05 or 40*(ask - bid) >= bid + ask (spread >= 5% of mid).
With --max-quote-age-ms N an order is also rejected when the quote in force
arrived more than N ms before the decision, by the process clock (a stale
quote), and a symbol whose quote goes stale (no newer quote within N ms) is
reported once, by a processing-time timer: `STALE,<symbol>,<bid>,<ask>`; keep an
--audit log to re-create such decisions and alerts.
Output per order: `<order_id>,<ACCEPT|REJECT>,<symbol>,<bid>,<ask>` with the
bid/ask in force at the decision, printed with 4 fractional digits (both empty if
the symbol has no quote yet). Malformed lines are dead-lettered.";

/// Rejecting threshold on the absolute spread: 0.05 in price units.
pub const SPREAD_REJECT_UNITS: u64 = 500;
const SYMBOL_MAX_BYTES: usize = 8;

/// A symbol stored inline: no allocation to key, route or store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Symbol {
    len: u8,
    bytes: [u8; SYMBOL_MAX_BYTES],
}

impl Symbol {
    pub fn parse(field: &[u8]) -> Result<Symbol, Reject> {
        let invalid = || Reject::new("symbol must be 1-8 chars of [A-Z0-9.]");
        if field.is_empty() || field.len() > SYMBOL_MAX_BYTES {
            return Err(invalid());
        }
        // Checked and copied in one pass, byte by byte: a symbol is a few
        // bytes, where a `copy_from_slice` of a variable length calls memcpy.
        let mut bytes = [0; SYMBOL_MAX_BYTES];
        for (to, &b) in bytes.iter_mut().zip(field) {
            if !(b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'.') {
                return Err(invalid());
            }
            *to = b;
        }
        Ok(Symbol {
            len: field.len() as u8,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl verity_core::Key for Symbol {
    /// Routes like the `SmallBytes` of its bytes, from its one word (a
    /// generic hash of the byte slice costs about 5 times as much).
    fn route_hash(&self) -> u64 {
        verity_core::small::SmallBytes::route_hash_of_word(u64::from_le_bytes(self.bytes), self.len as usize)
    }
    fn detach(&self) -> Self {
        *self
    }
}

impl Wire for Symbol {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.len);
        out.extend_from_slice(&self.bytes);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        let len = u8::decode(input)?;
        let bytes: [u8; SYMBOL_MAX_BYTES] = take(input, SYMBOL_MAX_BYTES)?.try_into().expect("exact size");
        if len as usize > SYMBOL_MAX_BYTES || len == 0 {
            return Err(WireError::Invalid("symbol length"));
        }
        Ok(Symbol { len, bytes })
    }
}

impl Wire for Quote {
    fn encode(&self, out: &mut Vec<u8>) {
        self.symbol.encode(out);
        self.bid_units.encode(out);
        self.ask_units.encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(Quote {
            symbol: Symbol::decode(input)?,
            bid_units: u64::decode(input)?,
            ask_units: u64::decode(input)?,
        })
    }
}

impl Wire for Order {
    fn encode(&self, out: &mut Vec<u8>) {
        self.id.encode(out);
        self.symbol.encode(out);
        (self.side == Side::Buy).encode(out);
        self.qty.encode(out);
        self.price_units.encode(out);
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(Order {
            id: u64::decode(input)?,
            symbol: Symbol::decode(input)?,
            side: if bool::decode(input)? {
                Side::Buy
            } else {
                Side::Sell
            },
            qty: u64::decode(input)?,
            price_units: u64::decode(input)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote {
    pub symbol: Symbol,
    pub bid_units: u64,
    pub ask_units: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Buy,
    Sell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    pub id: u64,
    pub symbol: Symbol,
    pub side: Side,
    pub qty: u64,
    pub price_units: u64,
}

pub type Event = Either<Quote, Order>;

/// Per-symbol market state: the last quote, whether it makes orders reject,
/// and, for the audit log and the stale-quote rule, which input record it
/// was and when it arrived (processing time, µs since the epoch).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Book {
    pub quote: Option<(u64, u64)>,
    pub rejecting: bool,
    pub quote_id: MsgId,
    pub quote_at_us: u64,
    /// With the stale-quote rule: whether a timer is set to look at the
    /// quote once it may have gone stale.
    pub stale_timer_set: bool,
    /// With the stale-quote rule: whether the quote in force was reported
    /// stale (each quote at most once).
    pub stale_reported: bool,
    /// Only with the planted stale-quote bug (`Bugs::stale_quote`): the
    /// newest quote, held back while orders see the one before.
    pub held_back: Option<HeldQuote>,
}

/// A quote the planted stale-quote bug holds back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldQuote {
    pub bid_units: u64,
    pub ask_units: u64,
    pub id: MsgId,
    pub at_us: u64,
}

/// Bugs a test plants in market-spread to show a verifier catches them;
/// all off in production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Orders are decided on the quote before the newest one (a shard that
    /// reads the previous quote), and the note says so honestly.
    pub stale_quote: bool,
}

impl Wire for Book {
    fn encode(&self, out: &mut Vec<u8>) {
        self.quote.encode(out);
        self.rejecting.encode(out);
        self.quote_id.producer.encode(out);
        self.quote_id.part.encode(out);
        self.quote_id.seq.encode(out);
        self.quote_at_us.encode(out);
        self.stale_timer_set.encode(out);
        self.stale_reported.encode(out);
        match self.held_back {
            None => false.encode(out),
            Some(held) => {
                true.encode(out);
                for n in [held.bid_units, held.ask_units, held.id.seq, held.at_us] {
                    n.encode(out);
                }
                held.id.producer.encode(out);
                held.id.part.encode(out);
            }
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self, WireError> {
        Ok(Book {
            quote: Option::decode(input)?,
            rejecting: bool::decode(input)?,
            quote_id: MsgId {
                producer: u32::decode(input)?,
                part: u32::decode(input)?,
                seq: u64::decode(input)?,
            },
            quote_at_us: u64::decode(input)?,
            stale_timer_set: bool::decode(input)?,
            stale_reported: bool::decode(input)?,
            held_back: match bool::decode(input)? {
                false => None,
                true => {
                    let [bid_units, ask_units, seq, at_us] = [
                        u64::decode(input)?,
                        u64::decode(input)?,
                        u64::decode(input)?,
                        u64::decode(input)?,
                    ];
                    Some(HeldQuote {
                        bid_units,
                        ask_units,
                        id: MsgId {
                            producer: u32::decode(input)?,
                            part: u32::decode(input)?,
                            seq,
                        },
                        at_us,
                    })
                }
            },
        })
    }
}

/// Why an order was decided as it was (the audit note's decision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Accepted,
    NoQuote,
    WideSpread,
    StaleQuote,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::Accepted,
        Reason::NoQuote,
        Reason::WideSpread,
        Reason::StaleQuote,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Accepted => "accepted",
            Reason::NoQuote => "rejected: no quote yet",
            Reason::WideSpread => "rejected: spread too wide",
            Reason::StaleQuote => "rejected: stale quote",
        }
    }
}

/// What an order's decision read that its input does not hold, as the
/// audit log keeps it (`Output::note`): the reason, and the quote in force
/// (which input record, and how old it was by the decision's clock reading,
/// which the audit log holds for the batch). About 15 bytes a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionNote {
    pub order_id: u64,
    pub reason: Reason,
    pub quote: Option<QuoteRead>,
}

/// The quote a decision read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuoteRead {
    pub bid_units: u64,
    pub ask_units: u64,
    pub id: MsgId,
    /// Its age at the decision: the decision's clock reading minus the
    /// reading when the quote arrived (0 when the rule read no clock).
    pub age_us: u64,
}

/// The note's first byte: version in the high nibble, then whether it is
/// a stale-quote alert's (`StaleNote`), whether a quote follows, and the
/// reason.
const NOTE_VERSION: u8 = 2;
const NOTE_STALE_ALERT: u8 = 0b1000;
const NOTE_HAS_QUOTE: u8 = 0b100;
const NOTE_REASON_MASK: u8 = 0b11;

/// What a stale-quote alert read: the symbol and the quote in force when
/// the timer fired, with its age by the timer unit's clock reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleNote {
    pub symbol: Symbol,
    pub quote: QuoteRead,
}

impl StaleNote {
    pub fn encode(&self, out: &mut Vec<u8>) {
        use verity_audit::codec::{put_bytes, put_u8};
        put_u8(out, NOTE_VERSION << 4 | NOTE_STALE_ALERT);
        put_bytes(out, self.symbol.as_bytes());
        self.quote.encode(out);
    }

    pub fn decode(note: &[u8]) -> Result<StaleNote, verity_audit::codec::DecodeError> {
        use verity_audit::codec::{DecodeError, Reader};
        let mut input = Reader::new(note);
        if input.u8()? != NOTE_VERSION << 4 | NOTE_STALE_ALERT {
            return Err(DecodeError::Invalid("not a market-spread stale-quote note"));
        }
        let symbol =
            Symbol::parse(input.bytes()?).map_err(|_| DecodeError::Invalid("a stale-quote note's symbol"))?;
        let quote = QuoteRead::decode(&mut input)?;
        if !input.is_empty() {
            return Err(DecodeError::Invalid("bytes after a stale-quote note"));
        }
        Ok(StaleNote { symbol, quote })
    }
}

impl QuoteRead {
    fn encode(&self, out: &mut Vec<u8>) {
        let id = self.id;
        for field in [
            self.bid_units,
            self.ask_units,
            id.producer as u64,
            id.seq,
            id.part as u64,
            self.age_us,
        ] {
            verity_audit::codec::put_varint(out, field);
        }
    }

    fn decode(
        input: &mut verity_audit::codec::Reader<'_>,
    ) -> Result<QuoteRead, verity_audit::codec::DecodeError> {
        Ok(QuoteRead {
            bid_units: input.varint()?,
            ask_units: input.varint()?,
            id: MsgId {
                producer: input.varint_u32()?,
                seq: input.varint()?,
                part: input.varint_u32()?,
            },
            age_us: input.varint()?,
        })
    }
}

impl DecisionNote {
    pub fn encode(&self, out: &mut Vec<u8>) {
        use verity_audit::codec::{put_u8, put_varint};
        let reason = Reason::ALL
            .iter()
            .position(|r| *r == self.reason)
            .expect("a reason") as u8;
        let has_quote = if self.quote.is_some() { NOTE_HAS_QUOTE } else { 0 };
        put_u8(out, NOTE_VERSION << 4 | has_quote | reason);
        put_varint(out, self.order_id);
        if let Some(q) = self.quote {
            q.encode(out);
        }
    }

    pub fn decode(note: &[u8]) -> Result<DecisionNote, verity_audit::codec::DecodeError> {
        use verity_audit::codec::{DecodeError, Reader};
        let mut input = Reader::new(note);
        let first = input.u8()?;
        if first >> 4 != NOTE_VERSION || first & NOTE_STALE_ALERT != 0 {
            return Err(DecodeError::Invalid("market-spread note version"));
        }
        let reason = Reason::ALL[(first & NOTE_REASON_MASK) as usize];
        let order_id = input.varint()?;
        let quote = if first & NOTE_HAS_QUOTE != 0 {
            Some(QuoteRead::decode(&mut input)?)
        } else {
            None
        };
        if !input.is_empty() {
            return Err(DecodeError::Invalid("bytes after a market-spread note"));
        }
        Ok(DecisionNote {
            order_id,
            reason,
            quote,
        })
    }
}

/// One order decision, with the quote it was decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub order_id: u64,
    pub accept: bool,
    pub symbol: Symbol,
    pub quote: Option<(u64, u64)>,
}

/// A symbol whose quote went stale: no newer quote came within the
/// stale-quote rule's age (`--max-quote-age-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleAlert {
    pub symbol: Symbol,
    pub bid_units: u64,
    pub ask_units: u64,
}

/// What market-spread writes: a decision per order and, with the
/// stale-quote rule, an alert per quote that went stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    Decision(Decision),
    Stale(StaleAlert),
}

/// Where market-spread reads from.
pub enum Inputs {
    Mixed(SourceSpec),
    Split { quotes: SourceSpec, orders: SourceSpec },
}

pub fn dataflow(inputs: Inputs) -> Dataflow<Symbol, Event, Book, Spread> {
    dataflow_with(inputs, None)
}

/// The dataflow, with the stale-quote rule when `max_quote_age_ms` is set.
pub fn dataflow_with(inputs: Inputs, max_quote_age_ms: Option<u64>) -> Dataflow<Symbol, Event, Book, Spread> {
    dataflow_with_bugs(inputs, max_quote_age_ms, Bugs::default())
}

/// The dataflow with planted bugs (tests only).
pub fn dataflow_with_bugs(
    inputs: Inputs,
    max_quote_age_ms: Option<u64>,
    bugs: Bugs,
) -> Dataflow<Symbol, Event, Book, Spread> {
    let max_quote_age_us = max_quote_age_ms.map(|ms| ms.saturating_mul(1000));
    let events = match inputs {
        Inputs::Mixed(input) => Stream::from_source(input)
            .try_map(|line: Line| parse_event(line.as_bytes()))
            .key_by(event_symbol),
        Inputs::Split { quotes, orders } => {
            let quotes = Stream::from_source(quotes)
                .try_map(|line: Line| match parse_event(line.as_bytes())? {
                    Either::Left(quote) => Ok(quote),
                    Either::Right(_) => Err(Reject::new("an order line in the quotes stream")),
                })
                .key_by(|q: &Quote| q.symbol);
            let orders = Stream::from_source(orders)
                .try_map(|line: Line| match parse_event(line.as_bytes())? {
                    Either::Right(order) => Ok(order),
                    Either::Left(_) => Err(Reject::new("a quote line in the orders stream")),
                })
                .key_by(|o: &Order| o.symbol);
            quotes.join(orders)
        }
    };
    events
        .stateful(move |book: &mut Book, _, msg, out| {
            // Clock readings only where a decision needs one: a quote's
            // arrival (for the age rule) and an order's decision time.
            let needs_clock = max_quote_age_us.is_some() || out.is_audited();
            let mut event = msg.data;
            let mut now_us = 0;
            match &mut event {
                Either::Left(quote) => {
                    let (mut id, mut at_us) = (msg.id, if needs_clock { out.now_us() } else { 0 });
                    if bugs.stale_quote {
                        let newest = HeldQuote {
                            bid_units: quote.bid_units,
                            ask_units: quote.ask_units,
                            id,
                            at_us,
                        };
                        // The quote held back before takes force instead (a
                        // symbol's first quote is only held).
                        let Some(held) = book.held_back.replace(newest) else {
                            return;
                        };
                        (quote.bid_units, quote.ask_units) = (held.bid_units, held.ask_units);
                        (id, at_us) = (held.id, held.at_us);
                    }
                    book.quote_id = id;
                    book.quote_at_us = at_us;
                    book.stale_reported = false;
                    if let (Some(max), false) = (max_quote_age_us, book.stale_timer_set) {
                        // One timer per symbol: when it fires on a newer
                        // quote, it sets the next one for that quote.
                        book.stale_timer_set = true;
                        out.derive_from(id);
                        out.set_timer(stale_at(at_us, max));
                    }
                }
                Either::Right(_) if needs_clock => now_us = out.now_us(),
                Either::Right(_) => {}
            }
            if let Some((decision, reason)) = decide(book, &event, now_us, max_quote_age_us) {
                out.note(|note| {
                    let quote = book.quote.map(|(bid_units, ask_units)| QuoteRead {
                        bid_units,
                        ask_units,
                        id: book.quote_id,
                        age_us: now_us.saturating_sub(book.quote_at_us),
                    });
                    DecisionNote {
                        order_id: decision.order_id,
                        reason,
                        quote,
                    }
                    .encode(note)
                });
                out.emit(Spread::Decision(decision));
            }
        })
        .on_timer(move |book: &mut Book, symbol: &Symbol, _set_for_us, out| {
            book.stale_timer_set = false;
            let (Some(max), Some((bid_units, ask_units))) = (max_quote_age_us, book.quote) else {
                return;
            };
            let now_us = out.now_us();
            let age_us = now_us.saturating_sub(book.quote_at_us);
            // What follows derives from the quote in force.
            out.derive_from(book.quote_id);
            if age_us <= max {
                book.stale_timer_set = true;
                out.set_timer(stale_at(book.quote_at_us, max));
                return;
            }
            if book.stale_reported {
                return;
            }
            book.stale_reported = true;
            let quote = QuoteRead {
                bid_units,
                ask_units,
                id: book.quote_id,
                age_us,
            };
            out.note(|note| {
                StaleNote {
                    symbol: *symbol,
                    quote,
                }
                .encode(note)
            });
            out.emit(Spread::Stale(StaleAlert {
                symbol: *symbol,
                bid_units,
                ask_units,
            }));
        })
        .sink(format_output)
}

/// When a quote that arrived at `arrived_us` is stale by the rule: the
/// first instant its age is over `max_age_us`.
pub fn stale_at(arrived_us: u64, max_age_us: u64) -> u64 {
    arrived_us.saturating_add(max_age_us).saturating_add(1)
}

pub fn format_output(output: &Spread, buf: &mut Vec<u8>) {
    match output {
        Spread::Decision(decision) => format_decision(decision, buf),
        Spread::Stale(alert) => {
            buf.extend_from_slice(b"STALE,");
            buf.extend_from_slice(alert.symbol.as_bytes());
            buf.push(b',');
            write_price(buf, alert.bid_units);
            buf.push(b',');
            write_price(buf, alert.ask_units);
        }
    }
}

fn event_symbol(event: &Event) -> Symbol {
    match event {
        Either::Left(q) => q.symbol,
        Either::Right(o) => o.symbol,
    }
}

/// The decision with the stale-quote rule: an order is rejected when the
/// quote in force arrived more than `max_quote_age_us` before `now_us`.
pub fn decide(
    book: &mut Book,
    event: &Event,
    now_us: u64,
    max_quote_age_us: Option<u64>,
) -> Option<(Decision, Reason)> {
    let mut decision = apply(book, event)?;
    let reason = if book.quote.is_none() {
        Reason::NoQuote
    } else if book.rejecting {
        Reason::WideSpread
    } else if max_quote_age_us.is_some_and(|max| now_us.saturating_sub(book.quote_at_us) > max) {
        decision.accept = false;
        Reason::StaleQuote
    } else {
        Reason::Accepted
    };
    Some((decision, reason))
}

/// The whole decision logic: a quote updates the book, an order is decided.
pub fn apply(book: &mut Book, event: &Event) -> Option<Decision> {
    match event {
        Either::Left(quote) => {
            book.quote = Some((quote.bid_units, quote.ask_units));
            book.rejecting = is_rejecting(quote.bid_units, quote.ask_units);
            None
        }
        Either::Right(order) => Some(Decision {
            order_id: order.id,
            accept: book.quote.is_some() && !book.rejecting,
            symbol: order.symbol,
            quote: book.quote,
        }),
    }
}

/// Rejecting when the spread is at least 0.05 or at least 5% of the mid price.
pub fn is_rejecting(bid_units: u64, ask_units: u64) -> bool {
    let spread = ask_units as i128 - bid_units as i128;
    spread >= SPREAD_REJECT_UNITS as i128 || 40 * spread >= bid_units as i128 + ask_units as i128
}

pub fn format_decision(decision: &Decision, buf: &mut Vec<u8>) {
    write_u64(buf, decision.order_id);
    buf.extend_from_slice(if decision.accept { b",ACCEPT," } else { b",REJECT," });
    buf.extend_from_slice(decision.symbol.as_bytes());
    buf.push(b',');
    if let Some((bid, ask)) = decision.quote {
        write_price(buf, bid);
        buf.push(b',');
        write_price(buf, ask);
    } else {
        buf.push(b',');
    }
}

/// How `verity audit trace` shows a decision's note: the order, the
/// decision and why, the quote it read (which it then traces), its age.
pub fn note_view(note: &[u8]) -> verity_audit::query::NoteView {
    if let Ok(stale) = StaleNote::decode(note) {
        let q = stale.quote;
        return verity_audit::query::NoteView {
            text: format!(
                "stale-quote alert for {}: quote {} ({}), {} old when the timer fired",
                String::from_utf8_lossy(stale.symbol.as_bytes()),
                q.id,
                show_prices(q.bid_units, q.ask_units),
                show_age(q.age_us)
            ),
            refers_to: vec![("quote", q.id.into())],
        };
    }
    let Ok(note) = DecisionNote::decode(note) else {
        return verity_audit::query::NoteView {
            text: format!("a note this build does not read ({} bytes)", note.len()),
            refers_to: Vec::new(),
        };
    };
    let mut text = format!("order {}: {}", note.order_id, note.reason.name());
    let mut refers_to = Vec::new();
    if let Some(q) = note.quote {
        text.push_str(&format!(
            "; quote in force: {} {}, {} old at the decision",
            q.id,
            show_prices(q.bid_units, q.ask_units),
            show_age(q.age_us)
        ));
        refers_to.push(("quote", q.id.into()));
    }
    verity_audit::query::NoteView { text, refers_to }
}

fn show_prices(bid_units: u64, ask_units: u64) -> String {
    let mut prices = b"bid/ask ".to_vec();
    write_price(&mut prices, bid_units);
    prices.push(b'/');
    write_price(&mut prices, ask_units);
    String::from_utf8_lossy(&prices).into_owned()
}

fn show_age(age_us: u64) -> String {
    format!("{}.{:03} ms", age_us / 1000, age_us % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_on_a_quote_older_than_the_limit_is_rejected_as_stale() {
        let quote = parse_event(b"Q,ABC,10.00,10.01").unwrap();
        let order = parse_event(b"O,7,ABC,B,100,10.00").unwrap();
        let mut book = Book::default();
        assert_eq!(super::decide(&mut book, &quote, 1_000, Some(500)), None);
        book.quote_at_us = 1_000;
        let at = |now_us, book: &mut Book| {
            super::decide(book, &order, now_us, Some(500)).map(|(d, r)| (d.accept, r))
        };
        assert_eq!(
            at(1_500, &mut book),
            Some((true, Reason::Accepted)),
            "exactly the limit is fresh"
        );
        assert_eq!(at(1_501, &mut book), Some((false, Reason::StaleQuote)));
        assert_eq!(
            super::decide(&mut book, &order, 9_999_999, None).map(|(d, r)| (d.accept, r)),
            Some((true, Reason::Accepted)),
            "no limit, no age rule"
        );
        let mut wide = Book::default();
        super::decide(&mut wide, &parse_event(b"Q,ABC,1.00,2.00").unwrap(), 0, None);
        assert_eq!(
            super::decide(&mut wide, &order, 0, Some(500)).map(|(_, r)| r),
            Some(Reason::WideSpread)
        );
        assert_eq!(
            super::decide(&mut Book::default(), &order, 0, Some(500)).map(|(_, r)| r),
            Some(Reason::NoQuote)
        );
    }

    #[test]
    fn decision_notes_round_trip_and_refuse_garbage() {
        for reason in Reason::ALL {
            let note = DecisionNote {
                order_id: 77,
                reason,
                quote: (reason != Reason::NoQuote).then_some(QuoteRead {
                    bid_units: 100_000,
                    ask_units: 100_100,
                    id: MsgId::new(1, 42),
                    age_us: 4_000,
                }),
            };
            let mut bytes = Vec::new();
            note.encode(&mut bytes);
            assert!(bytes.len() <= 16, "{} bytes", bytes.len());
            assert_eq!(DecisionNote::decode(&bytes), Ok(note));
            assert!(DecisionNote::decode(&bytes[..bytes.len() - 1]).is_err());
        }
        assert!(DecisionNote::decode(&[9, 0]).is_err());
    }

    fn decide(lines: &[&str]) -> Vec<String> {
        let mut books = std::collections::BTreeMap::new();
        let mut out = Vec::new();
        for line in lines {
            let event = parse_event(line.as_bytes()).unwrap();
            let book = books.entry(event_symbol(&event)).or_insert_with(Book::default);
            if let Some(d) = apply(book, &event) {
                let mut buf = Vec::new();
                format_decision(&d, &mut buf);
                out.push(String::from_utf8(buf).unwrap());
            }
        }
        out
    }

    #[test]
    fn a_symbol_routes_like_its_bytes() {
        use verity_core::Key;
        for text in ["A", "S741", "BRK.B", "ABCDEFGH", "Z9"] {
            let symbol = Symbol::parse(text.as_bytes()).unwrap();
            assert_eq!(
                symbol.route_hash(),
                verity_core::SmallBytes::new(text.as_bytes()).route_hash()
            );
        }
    }

    #[test]
    fn prices_parse_exactly() {
        assert_eq!(parse_price(b"1"), Ok(10_000));
        assert_eq!(parse_price(b"1.5"), Ok(15_000));
        assert_eq!(parse_price(b"123.4567"), Ok(1_234_567));
        assert_eq!(parse_price(b"0.0001"), Ok(1));
        for bad in [&b"1.12345"[..], b"1.", b".5", b"", b"-1", b"1,0", b"1.a", b"+1"] {
            assert!(parse_price(bad).is_err(), "{:?}", std::str::from_utf8(bad));
        }
        assert!(parse_price(b"99999999999999999999").is_err());
    }

    #[test]
    fn decisions_follow_the_spread_rules() {
        let out = decide(&[
            "O,1,ABC,B,10,1.0",
            "Q,ABC,10.00,10.04",
            "O,2,ABC,S,5,10.02",
            "Q,ABC,10.00,10.05",
            "O,3,ABC,B,1,10",
            "Q,LOW,0.5,0.5249",
            "O,4,LOW,B,1,0.51",
            "Q,LOW,0.5,0.53",
            "O,5,LOW,B,1,0.51",
        ]);
        assert_eq!(
            out,
            vec![
                "1,REJECT,ABC,,",
                "2,ACCEPT,ABC,10.0000,10.0400",
                "3,REJECT,ABC,10.0000,10.0500",
                "4,ACCEPT,LOW,0.5000,0.5249",
                "5,REJECT,LOW,0.5000,0.5300",
            ]
        );
    }

    #[test]
    fn five_percent_boundary_is_inclusive() {
        // spread 0.02, bid + ask = 0.80: 40 * 0.02 = 0.80 → rejecting.
        assert!(is_rejecting(3_900, 4_100));
        assert!(!is_rejecting(3_901, 4_100));
        assert!(is_rejecting(100_000, 100_500));
        assert!(!is_rejecting(100_000, 100_499));
        assert!(
            !is_rejecting(10_100, 10_000),
            "a crossed quote has a negative spread"
        );
    }

    #[test]
    fn malformed_lines_are_rejected() {
        for bad in [
            "",
            "X,1",
            "Q,ABC,1",
            "Q,ABC,1,2,3",
            "Q,abc,1,2",
            "Q,TOOLONGSYM,1,2",
            "O,1,ABC,X,1,1",
            "O,-1,ABC,B,1,1",
            "O,1,ABC,B,1",
            "O,18446744073709551616,ABC,B,1,1",
            "Q, ABC,1,2",
        ] {
            assert!(parse_event(bad.as_bytes()).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_event(b"O,18446744073709551615,A.B9,S,0,0").is_ok());
    }
}
