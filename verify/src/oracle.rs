//! The oracles: plain models of each app, from its format spec alone.

use crate::input::for_each_line;
use crate::table::{Groups, LineTable};
use crate::App;
use std::collections::HashMap;
use std::io::Write;

/// What an app must output for an input.
pub struct Expected {
    pub lines: LineTable,
    pub groups: Groups,
    /// Input lines read (well-formed or not).
    pub records: u64,
    /// Input lines the app must dead-letter.
    pub malformed: u64,
}

impl Expected {
    fn new() -> Expected {
        Expected {
            lines: LineTable::default(),
            groups: Groups::default(),
            records: 0,
            malformed: 0,
        }
    }

    fn push(&mut self, key: &[u8], origin: u64, write: impl FnOnce(&mut Vec<u8>)) {
        let group = self.groups.id(key);
        self.lines.push_with(group, origin, write);
    }
}

pub fn expected_output(app: App, input: &[u8]) -> Expected {
    let mut expected = Expected::new();
    match app {
        App::Doubler => doubler(input, &mut expected),
        App::Wordcount { final_counts } => wordcount(input, final_counts, &mut expected),
        App::MarketSpread => market_spread(input, &mut expected),
        App::SeqWindow => seq_window(input, &mut expected),
    }
    expected
}

/// Calls `f` with each line as text; non-UTF-8 lines are malformed.
fn for_each_text_line(
    input: &[u8],
    expected: &mut Expected,
    mut f: impl FnMut(u64, &str, &mut Expected) -> Result<(), Malformed>,
) {
    for_each_line(input, |number, line| {
        expected.records += 1;
        let parsed = std::str::from_utf8(line)
            .map_err(|_| Malformed)
            .and_then(|text| f(number, text, expected));
        if parsed.is_err() {
            expected.malformed += 1;
        }
    });
}

struct Malformed;

fn doubler(input: &[u8], expected: &mut Expected) {
    for_each_text_line(input, expected, |number, text, expected| {
        let value: i64 = text.trim_matches([' ', '\t']).parse().map_err(|_| Malformed)?;
        let doubled = value.checked_mul(2).ok_or(Malformed)?;
        expected.push(b"", number, |buf| write!(buf, "{doubled}").unwrap());
        Ok(())
    });
}

fn wordcount(input: &[u8], final_counts: bool, expected: &mut Expected) {
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut first_seen: Vec<String> = Vec::new();
    for_each_text_line(input, expected, |number, text, expected| {
        for word in text.split_whitespace() {
            let count = counts.entry(word.to_string()).or_insert_with(|| {
                first_seen.push(word.to_string());
                0
            });
            *count += 1;
            if !final_counts {
                let count = *count;
                expected.push(word.as_bytes(), number, |buf| {
                    write!(buf, "{word} {count}").unwrap()
                });
            }
        }
        Ok(())
    });
    if final_counts {
        for word in first_seen {
            let count = counts[&word];
            expected.push(word.as_bytes(), 0, |buf| write!(buf, "{word} {count}").unwrap());
        }
    }
}

/// Prices in units of 0.0001.
type Units = u64;

fn market_spread(input: &[u8], expected: &mut Expected) {
    // Per symbol: the last quote, if any.
    let mut books: HashMap<String, (Units, Units)> = HashMap::new();
    for_each_text_line(input, expected, |number, text, expected| {
        let fields: Vec<&str> = text.split(',').collect();
        match fields[..] {
            ["Q", symbol, bid, ask] => {
                let quote = (price(bid)?, price(ask)?);
                books.insert(valid_symbol(symbol)?.to_string(), quote);
            }
            ["O", id, symbol, side, qty, order_price] => {
                let id = digits_u64(id)?;
                let symbol = valid_symbol(symbol)?;
                if side != "B" && side != "S" {
                    return Err(Malformed);
                }
                digits_u64(qty)?;
                price(order_price)?;
                let quote = books.get(symbol).copied();
                let accept = quote.is_some_and(|(bid, ask)| !rejecting(bid, ask));
                expected.push(symbol.as_bytes(), number, |buf| {
                    let verdict = if accept { "ACCEPT" } else { "REJECT" };
                    write!(buf, "{id},{verdict},{symbol},").unwrap();
                    if let Some((bid, ask)) = quote {
                        write!(buf, "{},{}", show_price(bid), show_price(ask)).unwrap();
                    } else {
                        buf.push(b',');
                    }
                });
            }
            _ => return Err(Malformed),
        }
        Ok(())
    });
}

/// A quote rejects orders when ask − bid ≥ 0.05 or the spread is ≥ 5% of the
/// mid price: 40·(ask − bid) ≥ bid + ask. A crossed quote (ask < bid) has a
/// negative spread.
fn rejecting(bid: Units, ask: Units) -> bool {
    let spread = ask as i128 - bid as i128;
    spread >= 500 || 40 * spread >= bid as i128 + ask as i128
}

fn valid_symbol(symbol: &str) -> Result<&str, Malformed> {
    let valid_char = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '.';
    if (1..=8).contains(&symbol.len()) && symbol.chars().all(valid_char) {
        Ok(symbol)
    } else {
        Err(Malformed)
    }
}

fn digits_u64(text: &str) -> Result<u64, Malformed> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Malformed);
    }
    text.parse().map_err(|_| Malformed)
}

/// `^[0-9]+(\.[0-9]{1,4})?$`, exactly, in units of 0.0001.
fn price(text: &str) -> Result<Units, Malformed> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if text.contains('.') && !(1..=4).contains(&fraction.len()) {
        return Err(Malformed);
    }
    let whole = digits_u64(whole)?;
    let fraction = if fraction.is_empty() {
        0
    } else {
        digits_u64(&format!("{fraction:0<4}"))?
    };
    whole
        .checked_mul(10_000)
        .and_then(|units| units.checked_add(fraction))
        .ok_or(Malformed)
}

fn show_price(units: Units) -> String {
    format!("{}.{:04}", units / 10_000, units % 10_000)
}

fn seq_window(input: &[u8], expected: &mut Expected) {
    let mut windows: HashMap<String, [u64; 4]> = HashMap::new();
    for_each_text_line(input, expected, |number, text, expected| {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [key, value] = fields[..] else {
            return Err(Malformed);
        };
        let value = digits_u64(value)?;
        let window = windows.entry(key.to_string()).or_default();
        *window = [window[1], window[2], window[3], value];
        let [w1, w2, w3, w4] = *window;
        expected.push(key.as_bytes(), number, |buf| {
            write!(buf, "{key} {w1} {w2} {w3} {w4}").unwrap()
        });
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(app: App, input: &str) -> (Vec<String>, u64) {
        let expected = expected_output(app, input.as_bytes());
        let lines = (0..expected.lines.len())
            .map(|i| String::from_utf8(expected.lines.line(i).to_vec()).unwrap())
            .collect();
        (lines, expected.malformed)
    }

    #[test]
    fn doubler_doubles_and_rejects_overflow() {
        let (out, bad) = lines(App::Doubler, "1\n -3\t\n+4\nx\n\n4611686018427387904\n");
        assert_eq!(out, ["2", "-6", "8"]);
        assert_eq!(bad, 3);
    }

    #[test]
    fn wordcount_running_and_final() {
        let input = "a b a\n\n  é a\n";
        let (out, bad) = lines(App::Wordcount { final_counts: false }, input);
        assert_eq!(out, ["a 1", "b 1", "a 2", "é 1", "a 3"]);
        assert_eq!(bad, 0);
        let (out, _) = lines(App::Wordcount { final_counts: true }, input);
        assert_eq!(out, ["a 3", "b 1", "é 1"]);
    }

    #[test]
    fn market_spread_decides_on_the_quote_in_force() {
        let input =
            "O,1,ABC,B,10,1.0\nQ,ABC,10.00,10.04\nO,2,ABC,S,5,10.02\nQ,ABC,10.00,10.05\nO,3,ABC,B,1,10\n\
                     Q,LOW,0.39,0.41\nO,4,LOW,B,1,0.4\nQ,LOW,0.3901,0.41\nO,5,LOW,B,1,0.4\nQ,X,1,1.12345\n";
        let (out, bad) = lines(App::MarketSpread, input);
        assert_eq!(
            out,
            [
                "1,REJECT,ABC,,",
                "2,ACCEPT,ABC,10.0000,10.0400",
                "3,REJECT,ABC,10.0000,10.0500",
                "4,REJECT,LOW,0.3900,0.4100",
                "5,ACCEPT,LOW,0.3901,0.4100",
            ]
        );
        assert_eq!(bad, 1);
    }

    #[test]
    fn market_spread_rejects_malformed_fields() {
        for bad in [
            "\n",
            "Q,ABC,1",
            "Q,ABC,1,2,3",
            "Q,abc,1,2",
            "Q,TOOLONGSYM,1,2",
            "Q,A,1.,2",
            "Q,A,.5,2",
            "Q,A,+1,2",
            "O,1,ABC,X,1,1",
            "O,-1,ABC,B,1,1",
            "O,1,ABC,B,1",
            "O,18446744073709551616,ABC,B,1,1",
            "Q, ABC,1,2",
        ] {
            assert_eq!(lines(App::MarketSpread, bad).1, 1, "{bad:?}");
        }
        let (out, bad) = lines(
            App::MarketSpread,
            "Q,A.B9,2,1\nO,18446744073709551615,A.B9,S,0,0\n",
        );
        assert_eq!(
            (out, bad),
            (
                vec!["18446744073709551615,ACCEPT,A.B9,2.0000,1.0000".to_string()],
                0
            )
        );
    }

    #[test]
    fn seq_window_keeps_last_four() {
        let input = "k 1\nk 2\nj 1\nk 3\nk 4\nk 5\nk 6\nbad\nk +7\nk 1 2\n";
        let (out, bad) = lines(App::SeqWindow, input);
        assert_eq!(
            out,
            [
                "k 0 0 0 1",
                "k 0 0 1 2",
                "j 0 0 0 1",
                "k 0 1 2 3",
                "k 1 2 3 4",
                "k 2 3 4 5",
                "k 3 4 5 6"
            ]
        );
        assert_eq!(bad, 3);
    }

    #[test]
    fn non_utf8_lines_are_malformed() {
        for app in [
            App::Doubler,
            App::Wordcount { final_counts: false },
            App::MarketSpread,
            App::SeqWindow,
        ] {
            assert_eq!(expected_output(app, b"\xff\xfe\n").malformed, 1, "{app:?}");
        }
    }
}
