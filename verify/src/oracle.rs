//! The oracles: plain models of each app, from its format spec alone. Each
//! takes input lines one at a time and says which output lines they must
//! produce, so a verifier can run it as far ahead of the output as it needs.

use crate::input::for_each_line;
use crate::App;
use std::collections::HashMap;
use std::io::Write;

/// Where an oracle puts the lines it expects: `key` is the output's key
/// (per-key order is what apps promise), `origin` the input line number.
pub trait ExpectSink {
    fn expect(&mut self, key: &[u8], origin: u64, line: &[u8]);
}

/// One expected output line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedLine {
    pub key: Vec<u8>,
    pub line: Vec<u8>,
    /// The input line that produces it (0 for end-of-input totals).
    pub origin: u64,
}

/// What an app must output for a whole input, held in memory (for tests and
/// small inputs; the verifier streams instead).
pub struct Expected {
    pub lines: Vec<ExpectedLine>,
    /// Input lines read (well-formed or not).
    pub records: u64,
    /// Input lines the app must dead-letter.
    pub malformed: u64,
}

impl ExpectSink for Expected {
    fn expect(&mut self, key: &[u8], origin: u64, line: &[u8]) {
        self.lines.push(ExpectedLine {
            key: key.to_vec(),
            line: line.to_vec(),
            origin,
        });
    }
}

pub fn expected_output(app: App, input: &[u8]) -> Expected {
    let mut expected = Expected {
        lines: Vec::new(),
        records: 0,
        malformed: 0,
    };
    let mut oracle = Oracle::new(app);
    for_each_line(input, |number, line| {
        expected.records += 1;
        if !oracle.line(number, line, &mut expected) {
            expected.malformed += 1;
        }
    });
    oracle.end(&mut expected);
    expected
}

/// The app must dead-letter the line.
pub(crate) struct Malformed;

/// Prices in units of 0.0001.
pub(crate) type Units = u64;

/// One app's model, fed input lines in order.
pub enum Oracle {
    Doubler,
    Wordcount {
        final_counts: bool,
        counts: HashMap<String, u64>,
        first_seen: Vec<String>,
    },
    /// Per symbol: the last quote, if any.
    MarketSpread {
        books: HashMap<String, (Units, Units)>,
    },
    SeqWindow {
        windows: HashMap<String, [u64; 4]>,
    },
}

impl Oracle {
    pub fn new(app: App) -> Oracle {
        match app {
            App::Doubler => Oracle::Doubler,
            App::Wordcount { final_counts } => Oracle::Wordcount {
                final_counts,
                counts: HashMap::new(),
                first_seen: Vec::new(),
            },
            App::MarketSpread => Oracle::MarketSpread {
                books: HashMap::new(),
            },
            App::SeqWindow => Oracle::SeqWindow {
                windows: HashMap::new(),
            },
        }
    }

    /// Input line `number`; false if the app must dead-letter it.
    pub fn line(&mut self, number: u64, line: &[u8], sink: &mut dyn ExpectSink) -> bool {
        let Ok(text) = std::str::from_utf8(line) else {
            return false;
        };
        let mut buf = Vec::new();
        let result = match self {
            Oracle::Doubler => doubler(text).map(|doubled| {
                write!(buf, "{doubled}").unwrap();
                sink.expect(b"", number, &buf);
            }),
            Oracle::Wordcount {
                final_counts,
                counts,
                first_seen,
            } => {
                for word in text.split_whitespace() {
                    let count = counts.entry(word.to_string()).or_insert_with(|| {
                        first_seen.push(word.to_string());
                        0
                    });
                    *count += 1;
                    if !*final_counts {
                        buf.clear();
                        write!(buf, "{word} {count}").unwrap();
                        sink.expect(word.as_bytes(), number, &buf);
                    }
                }
                Ok(())
            }
            Oracle::MarketSpread { books } => market_spread(text, books, &mut buf).map(|symbol| {
                if let Some(symbol) = symbol {
                    sink.expect(symbol.as_bytes(), number, &buf);
                }
            }),
            Oracle::SeqWindow { windows } => seq_window(text, windows).map(|(key, [w1, w2, w3, w4])| {
                write!(buf, "{key} {w1} {w2} {w3} {w4}").unwrap();
                sink.expect(key.as_bytes(), number, &buf);
            }),
        };
        result.is_ok()
    }

    /// The end of the input (wordcount --final writes its totals here).
    pub fn end(&mut self, sink: &mut dyn ExpectSink) {
        if let Oracle::Wordcount {
            final_counts: true,
            counts,
            first_seen,
        } = self
        {
            for word in first_seen.drain(..) {
                let line = format!("{word} {}", counts[&word]);
                sink.expect(word.as_bytes(), 0, line.as_bytes());
            }
        }
    }
}

fn doubler(text: &str) -> Result<i64, Malformed> {
    let value: i64 = text.trim_matches([' ', '\t']).parse().map_err(|_| Malformed)?;
    value.checked_mul(2).ok_or(Malformed)
}

/// One well-formed market-spread input line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MarketLine<'t> {
    Quote { symbol: &'t str, quote: (Units, Units) },
    Order { id: u64, symbol: &'t str },
}

/// Parses a quote or an order line by the format rules alone (no state).
pub(crate) fn parse_market(text: &str) -> Result<MarketLine<'_>, Malformed> {
    let fields: Vec<&str> = text.split(',').collect();
    match fields[..] {
        ["Q", symbol, bid, ask] => {
            let quote = (price(bid)?, price(ask)?);
            Ok(MarketLine::Quote {
                symbol: valid_symbol(symbol)?,
                quote,
            })
        }
        ["O", id, symbol, side, qty, order_price] => {
            let id = digits_u64(id)?;
            let symbol = valid_symbol(symbol)?;
            if side != "B" && side != "S" {
                return Err(Malformed);
            }
            digits_u64(qty)?;
            price(order_price)?;
            Ok(MarketLine::Order { id, symbol })
        }
        _ => Err(Malformed),
    }
}

/// The output line for order `id` of `symbol` decided on `quote`.
pub(crate) fn write_decision(out: &mut Vec<u8>, id: u64, symbol: &str, quote: Option<(Units, Units)>) {
    let accept = quote.is_some_and(|(bid, ask)| !rejecting(bid, ask));
    let verdict = if accept { "ACCEPT" } else { "REJECT" };
    write!(out, "{id},{verdict},{symbol},").unwrap();
    match quote {
        Some((bid, ask)) => write!(out, "{},{}", show_price(bid), show_price(ask)).unwrap(),
        None => out.push(b','),
    }
}

/// A quote updates its symbol's book; an order writes its decision into
/// `out` and returns its symbol.
fn market_spread<'t>(
    text: &'t str,
    books: &mut HashMap<String, (Units, Units)>,
    out: &mut Vec<u8>,
) -> Result<Option<&'t str>, Malformed> {
    match parse_market(text)? {
        MarketLine::Quote { symbol, quote } => {
            books.insert(symbol.to_string(), quote);
            Ok(None)
        }
        MarketLine::Order { id, symbol } => {
            write_decision(out, id, symbol, books.get(symbol).copied());
            Ok(Some(symbol))
        }
    }
}

/// A quote rejects orders when ask − bid ≥ 0.05 or the spread is ≥ 5% of the
/// mid price: 40·(ask − bid) ≥ bid + ask. A crossed quote (ask < bid) has a
/// negative spread.
pub(crate) fn rejecting(bid: Units, ask: Units) -> bool {
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
pub(crate) fn price(text: &str) -> Result<Units, Malformed> {
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

pub(crate) fn show_price(units: Units) -> String {
    format!("{}.{:04}", units / 10_000, units % 10_000)
}

/// A `<key> <value>` line.
pub(crate) fn parse_seq(text: &str) -> Result<(&str, u64), Malformed> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [key, value] = fields[..] else {
        return Err(Malformed);
    };
    Ok((key, digits_u64(value)?))
}

/// The key and its window after this value.
fn seq_window<'t>(
    text: &'t str,
    windows: &mut HashMap<String, [u64; 4]>,
) -> Result<(&'t str, [u64; 4]), Malformed> {
    let (key, value) = parse_seq(text)?;
    let window = windows.entry(key.to_string()).or_default();
    *window = [window[1], window[2], window[3], value];
    Ok((key, *window))
}

/// Which lines of one input stream are well formed. Every app's rule is
/// stateless: whether a line is dead-lettered never depends on earlier lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineRule {
    /// The one input of an app.
    App(App),
    /// market-spread's quotes stream (`--quotes`): quote lines only.
    Quotes,
    /// market-spread's orders stream (`--orders`): order lines only.
    Orders,
}

impl LineRule {
    /// Whether the app accepts `line` (false: it must dead-letter it).
    pub fn accepts(self, line: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(line) else {
            return false;
        };
        match self {
            LineRule::App(App::Doubler) => doubler(text).is_ok(),
            LineRule::App(App::Wordcount { .. }) => true,
            LineRule::App(App::MarketSpread) => parse_market(text).is_ok(),
            LineRule::App(App::SeqWindow) => parse_seq(text).is_ok(),
            LineRule::Quotes => matches!(parse_market(text), Ok(MarketLine::Quote { .. })),
            LineRule::Orders => matches!(parse_market(text), Ok(MarketLine::Order { .. })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(app: App, input: &str) -> (Vec<String>, u64) {
        let expected = expected_output(app, input.as_bytes());
        let lines = expected
            .lines
            .iter()
            .map(|l| String::from_utf8(l.line.clone()).unwrap())
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
    fn line_rules_agree_with_the_oracles() {
        let lines: [&[u8]; 14] = [
            b"1",
            b" -3\t",
            b"",
            b"x",
            b"a b",
            b"k 1",
            b"k +1",
            b"\xff",
            b"Q,A,1,2",
            b"Q,A,1,2,3",
            b"O,1,A,B,1,1",
            b"O,1,A,X,1,1",
            b"4611686018427387904",
            b"  \t ",
        ];
        for app in [
            App::Doubler,
            App::Wordcount { final_counts: false },
            App::MarketSpread,
            App::SeqWindow,
        ] {
            for line in lines {
                let mut input = line.to_vec();
                input.push(b'\n');
                let oracle_accepts = expected_output(app, &input).malformed == 0;
                assert_eq!(
                    LineRule::App(app).accepts(line),
                    oracle_accepts,
                    "{app:?} {line:?}"
                );
            }
        }
        assert!(LineRule::Quotes.accepts(b"Q,A,1,2") && !LineRule::Quotes.accepts(b"O,1,A,B,1,1"));
        assert!(LineRule::Orders.accepts(b"O,1,A,B,1,1") && !LineRule::Orders.accepts(b"Q,A,1,2"));
        assert!(!LineRule::Orders.accepts(b"O,1,A,B,1"));
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
