//! market-spread's input lines: quotes and orders.
//!
//! Two parsers with one meaning. `parse_general` is the definition: it splits
//! the line on commas and checks each field on its own, naming what is wrong.
//! `parse_fast` reads a well-formed line in one pass over its bytes and gives
//! up (`None`) at the first thing it does not expect; the general parser then
//! decides, so a malformed line gets the same reject either way. Parsing was
//! the largest single cost of market-spread: the general parser walks every
//! byte three or four times (split, validate, convert).

use super::{Either, Event, Order, Quote, Side, Symbol};
use crate::format::PRICE_UNITS_PER_ONE;
use verity_core::Reject;

/// Parses a quote or an order line.
pub fn parse_event(line: &[u8]) -> Result<Event, Reject> {
    match parse_fast(line) {
        Some(event) => Ok(event),
        None => parse_general(line),
    }
}

/// Digits in a u64 that cannot overflow: 10^19 - 1 < 2^64.
const U64_SAFE_DIGITS: usize = 19;
/// Digits of a price's whole part whose units cannot overflow:
/// (10^15 - 1) * 10^4 + 9999 < 2^64.
const PRICE_WHOLE_SAFE_DIGITS: usize = 15;
const PRICE_FRACTION_DIGITS_MAX: usize = 4;

/// A well-formed line, or `None` (then `parse_general` decides).
fn parse_fast(line: &[u8]) -> Option<Event> {
    let mut cursor = Cursor { rest: line };
    let kind = cursor.byte()?;
    cursor.comma()?;
    let event = match kind {
        b'Q' => Either::Left(Quote {
            symbol: cursor.symbol()?,
            bid_units: cursor.price()?,
            ask_units: {
                cursor.comma()?;
                cursor.price()?
            },
        }),
        b'O' => Either::Right(Order {
            id: cursor.number()?,
            symbol: {
                cursor.comma()?;
                cursor.symbol()?
            },
            side: match cursor.byte()? {
                b'B' => Side::Buy,
                b'S' => Side::Sell,
                _ => return None,
            },
            qty: {
                cursor.comma()?;
                cursor.number()?
            },
            price_units: {
                cursor.comma()?;
                cursor.price()?
            },
        }),
        _ => return None,
    };
    cursor.rest.is_empty().then_some(event)
}

/// The unread part of a line, for `parse_fast`.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl Cursor<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    fn comma(&mut self) -> Option<()> {
        (self.byte()? == b',').then_some(())
    }

    /// A run of digits, at most `max` of them (so it cannot overflow):
    /// its value and length. A longer run is `None`.
    fn digits(&mut self, max: usize) -> Option<(u64, usize)> {
        let mut value = 0u64;
        let mut len = 0;
        while let Some(&b) = self.rest.get(len) {
            let digit = b.wrapping_sub(b'0');
            if digit > 9 {
                break;
            }
            if len == max {
                return None;
            }
            value = value * 10 + digit as u64;
            len += 1;
        }
        self.rest = &self.rest[len..];
        Some((value, len))
    }

    /// A u64 field: 1 to 19 digits (a 20-digit one takes the general path).
    fn number(&mut self) -> Option<u64> {
        let (value, len) = self.digits(U64_SAFE_DIGITS)?;
        (len > 0).then_some(value)
    }

    /// A price field, in units of 0.0001: whole digits, then optionally a
    /// '.' and 1 to 4 fractional digits.
    fn price(&mut self) -> Option<u64> {
        let (whole, whole_len) = self.digits(PRICE_WHOLE_SAFE_DIGITS)?;
        if whole_len == 0 {
            return None;
        }
        let mut units = whole * PRICE_UNITS_PER_ONE;
        if self.rest.first() == Some(&b'.') {
            self.rest = &self.rest[1..];
            let (fraction, len) = self.digits(PRICE_FRACTION_DIGITS_MAX)?;
            if len == 0 {
                return None;
            }
            units += fraction * 10u64.pow((PRICE_FRACTION_DIGITS_MAX - len) as u32);
        }
        Some(units)
    }

    /// A symbol field and the comma after it.
    fn symbol(&mut self) -> Option<Symbol> {
        let len = self.rest.iter().position(|b| *b == b',')?;
        let (field, rest) = self.rest.split_at(len);
        self.rest = &rest[1..];
        Symbol::parse(field).ok()
    }
}

/// The definition of a line's meaning, with a reject that names the problem.
fn parse_general(line: &[u8]) -> Result<Event, Reject> {
    let mut fields = line.split(|b| *b == b',');
    let kind = fields.next().unwrap_or_default();
    let mut next = |what: &'static str| {
        fields
            .next()
            .ok_or_else(|| Reject::new(format!("missing {what}")))
    };
    let event = match kind {
        b"Q" => Either::Left(Quote {
            symbol: Symbol::parse(next("symbol")?)?,
            bid_units: parse_price(next("bid")?)?,
            ask_units: parse_price(next("ask")?)?,
        }),
        b"O" => Either::Right(Order {
            id: parse_u64(next("order id")?, "order id")?,
            symbol: Symbol::parse(next("symbol")?)?,
            side: parse_side(next("side")?)?,
            qty: parse_u64(next("qty")?, "qty")?,
            price_units: parse_price(next("price")?)?,
        }),
        _ => return Err(Reject::new("expected a Q (quote) or O (order) line")),
    };
    if fields.next().is_some() {
        return Err(Reject::new("too many fields"));
    }
    Ok(event)
}

fn parse_side(field: &[u8]) -> Result<Side, Reject> {
    match field {
        b"B" => Ok(Side::Buy),
        b"S" => Ok(Side::Sell),
        _ => Err(Reject::new("side must be B or S")),
    }
}

/// Digits only (no sign, no spaces), fitting u64.
pub fn parse_u64(field: &[u8], what: &'static str) -> Result<u64, Reject> {
    let mut cursor = Cursor { rest: field };
    if let Some((value, len)) = cursor.digits(U64_SAFE_DIGITS) {
        if len > 0 && cursor.rest.is_empty() {
            return Ok(value);
        }
    }
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return Err(Reject::new(format!("{what} must be digits")));
    }
    field
        .iter()
        .try_fold(0u64, |acc, d| acc.checked_mul(10)?.checked_add((d - b'0') as u64))
        .ok_or_else(|| Reject::new(format!("{what} does not fit in u64")))
}

/// `123`, `123.4`, ... `123.4567` → units of 0.0001; exact, no floats.
pub fn parse_price(field: &[u8]) -> Result<u64, Reject> {
    let (whole, fraction) = match field.iter().position(|b| *b == b'.') {
        Some(dot) => (&field[..dot], &field[dot + 1..]),
        None => (field, &b""[..]),
    };
    let has_dot = whole.len() < field.len();
    if has_dot && (fraction.is_empty() || fraction.len() > PRICE_FRACTION_DIGITS_MAX) {
        return Err(Reject::new(
            "price must have 1 to 4 fractional digits after a '.'",
        ));
    }
    if !fraction.iter().all(u8::is_ascii_digit) {
        return Err(Reject::new("price must be a decimal number"));
    }
    let whole = parse_u64(whole, "price").map_err(|_| Reject::new("price must be a decimal number"))?;
    let fraction_units = fraction.iter().fold(0u64, |acc, d| acc * 10 + (d - b'0') as u64)
        * 10u64.pow((PRICE_FRACTION_DIGITS_MAX - fraction.len()) as u32);
    whole
        .checked_mul(PRICE_UNITS_PER_ONE)
        .and_then(|units| units.checked_add(fraction_units))
        .ok_or_else(|| Reject::new("price too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A well-formed line: an order or a quote.
    fn well_formed() -> impl Strategy<Value = String> {
        let number = prop_oneof![0u64..1000, 0u64..10_000_000_000_000_000_000];
        let price = (0u64..1_000_000_000_000_000, "(\\.[0-9]{1,4})?").prop_map(|(w, f)| format!("{w}{f}"));
        let (symbol, side) = ("[A-Z0-9.]{1,8}", prop_oneof!["B", "S"]);
        prop_oneof![
            (number.clone(), symbol, side, number, price.clone())
                .prop_map(|(id, sym, side, qty, p)| format!("O,{id},{sym},{side},{qty},{p}")),
            (symbol, price.clone(), price).prop_map(|(sym, bid, ask)| format!("Q,{sym},{bid},{ask}")),
        ]
    }

    /// A well-formed line with up to three bytes replaced, inserted or
    /// removed: the mistakes a fast path could miss sit next to valid input.
    fn near_line() -> impl Strategy<Value = Vec<u8>> {
        let edit = (
            any::<prop::sample::Index>(),
            0..3u8,
            prop::sample::select(b"0123456789.,QOBSa -".to_vec()),
        );
        (well_formed(), proptest::collection::vec(edit, 0..=3)).prop_map(|(line, edits)| {
            let mut line = line.into_bytes();
            for (at, kind, byte) in edits {
                let at = at.index(line.len() + 1);
                match kind {
                    0 if at < line.len() => line[at] = byte,
                    1 => line.insert(at, byte),
                    _ if at < line.len() => {
                        line.remove(at);
                    }
                    _ => {}
                }
            }
            line
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn the_fast_path_agrees_with_the_definition(line in near_line()) {
            if let Some(fast) = parse_fast(&line) {
                prop_assert_eq!(Ok(fast), parse_general(&line));
            }
        }

        #[test]
        fn the_fast_path_takes_every_well_formed_line(
            symbol in "[A-Z0-9.]{1,8}", id in 0u64..10_000_000_000_000_000_000, qty in 0u64..10_000_000_000_000_000_000,
            whole in 0u64..1_000_000_000_000_000, fraction in "(\\.[0-9]{1,4})?", buy in any::<bool>(),
        ) {
            let side = if buy { "B" } else { "S" };
            for line in [
                format!("O,{id},{symbol},{side},{qty},{whole}{fraction}"),
                format!("Q,{symbol},{whole}{fraction},{whole}"),
            ] {
                let fast = parse_fast(line.as_bytes());
                prop_assert!(fast.is_some(), "{} fell back", line);
                prop_assert_eq!(Ok(fast.unwrap()), parse_general(line.as_bytes()));
            }
        }

        #[test]
        fn u64_fields_agree_with_the_definition(field in "[0-9]{0,22}|[0-9a -]{0,4}") {
            let checked = (!field.is_empty() && field.bytes().all(|b| b.is_ascii_digit()))
                .then(|| field.parse::<u64>().ok())
                .flatten();
            prop_assert_eq!(parse_u64(field.as_bytes(), "n").ok(), checked);
        }
    }
}
