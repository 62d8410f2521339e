//! The simulator's end-of-seed checks beyond the oracle comparison: dead
//! letters (every malformed input line exactly once, with its source and
//! line, and nothing else), and two-stream market-spread output (some
//! interleaving of quotes and orders produces it).

use crate::input::for_each_line;
use crate::oracle::{ExpectSink, Oracle};
use crate::App;
use bytes::Bytes;
use std::collections::BTreeMap;
use verity_apps::AppName;
use verity_core::line::DeadLetter;

/// What a simulated source carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// The app's one input stream.
    Mixed,
    /// market-spread with two streams: quote lines only (orders are malformed here).
    Quotes,
    /// market-spread with two streams: order lines only.
    Orders,
}

/// One simulated source: source index = its position in the list.
pub struct Stream {
    pub name: &'static str,
    pub kind: StreamKind,
    pub data: Bytes,
}

/// Counts what an oracle expects without keeping it.
#[derive(Default)]
struct Count(u64);

impl ExpectSink for Count {
    fn expect(&mut self, _key: &[u8], _origin: u64, _line: &[u8]) {
        self.0 += 1;
    }
}

fn oracle_app(app: AppName) -> App {
    App::from_name(app.name(), false).expect("every app has an oracle")
}

/// Calls `f(line_number, line, well_formed, produces_output)` for each line
/// of a stream, judged by the app's oracle (and, for two streams, by which
/// stream the line is in).
fn judge_lines(app: AppName, stream: &Stream, mut f: impl FnMut(u64, &[u8], bool, u64)) {
    let mut oracle = Oracle::new(oracle_app(app));
    for_each_line(&stream.data, |number, line| {
        let mut count = Count::default();
        let parsed = oracle.line(number, line, &mut count);
        let in_its_stream = match stream.kind {
            StreamKind::Mixed => true,
            StreamKind::Quotes => line.starts_with(b"Q,"),
            StreamKind::Orders => line.starts_with(b"O,"),
        };
        let well_formed = parsed && in_its_stream;
        f(number, line, well_formed, if well_formed { count.0 } else { 0 });
    });
}

/// Output lines the whole input must produce (apps without end-of-input
/// output: every line comes from one input record).
pub fn expected_output_lines(app: AppName, streams: &[Stream]) -> u64 {
    let mut lines = 0;
    for stream in streams {
        judge_lines(app, stream, |_, _, _, produced| lines += produced);
    }
    lines
}

/// Every malformed input line is in `letters` exactly once, with its source
/// and line number and (a prefix of) its bytes; nothing else is.
pub fn dead_letters(app: AppName, streams: &[Stream], letters: &[DeadLetter]) -> Result<(), String> {
    let mut got: BTreeMap<(u32, u64), Vec<&DeadLetter>> = BTreeMap::new();
    for letter in letters {
        got.entry((letter.id.producer, letter.id.seq))
            .or_default()
            .push(letter);
    }
    let mut problems = Vec::new();
    for (source, stream) in streams.iter().enumerate() {
        judge_lines(app, stream, |number, line, well_formed, _| {
            let found = got.remove(&(source as u32, number)).unwrap_or_default();
            let shown = String::from_utf8_lossy(&line[..line.len().min(60)]).into_owned();
            match (well_formed, found.len()) {
                (true, 0) | (false, 1) => {}
                (true, _) => problems.push(format!(
                    "{}:{number} is well-formed but was dead-lettered ({:?})",
                    stream.name, found[0].reason
                )),
                (false, 0) => problems.push(format!(
                    "{}:{number} {shown:?} is malformed but missing",
                    stream.name
                )),
                (false, n) => problems.push(format!(
                    "{}:{number} {shown:?} dead-lettered {n} times",
                    stream.name
                )),
            }
            if let [letter] = found[..] {
                if !line.starts_with(&letter.raw) || (letter.raw.is_empty() && !line.is_empty()) {
                    problems.push(format!(
                        "{}:{number}: the dead letter holds {:?}, not the line",
                        stream.name,
                        String::from_utf8_lossy(&letter.raw)
                    ));
                }
            }
        });
    }
    for ((source, number), found) in got {
        problems.push(format!(
            "dead letter for line {number} of source {source}, which has no such line ({} times)",
            found.len()
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    let total = problems.len();
    problems.truncate(10);
    Err(format!("{total} wrong, e.g.: {}", problems.join("; ")))
}

// ---- two streams ----------------------------------------------------------

/// Prices in units of 0.0001.
type Quote = (u64, u64);

/// `123`, `123.4`, … `123.4567` → units of 0.0001.
fn price_units(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || fraction.len() > 4
        || !(whole.bytes().chain(fraction.bytes())).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let fraction_units: u64 = format!("{fraction:0<4}").parse().ok()?;
    whole
        .parse::<u64>()
        .ok()?
        .checked_mul(10_000)?
        .checked_add(fraction_units)
}

/// The spec's rule: rejecting when the spread is at least 0.05 or 5% of mid.
fn rejecting((bid, ask): Quote) -> bool {
    let spread = ask as i128 - bid as i128;
    spread >= 500 || 40 * spread >= bid as i128 + ask as i128
}

/// A two-stream output is right exactly when some interleaving of the two
/// streams produces it: every well-formed order decided once, on its symbol,
/// on one of that symbol's quotes or none, by the rule; per symbol, along the
/// order stream, the quotes decided on never go back in the quote stream and
/// never return to none.
///
/// The simulator's own check until `verify` has a two-stream verifier; swap
/// the call in `run_seed` for it then.
pub fn two_streams(quotes: &[u8], orders: &[u8], output: &[u8]) -> Result<(), String> {
    let mut quotes_of: BTreeMap<Vec<u8>, Vec<Quote>> = BTreeMap::new();
    let quote_stream = Stream {
        name: "quotes",
        kind: StreamKind::Quotes,
        data: Bytes::copy_from_slice(quotes),
    };
    judge_lines(AppName::MarketSpread, &quote_stream, |_, line, well_formed, _| {
        let fields: Vec<&[u8]> = line.split(|b| *b == b',').collect();
        if well_formed {
            let quote = (price_units(fields[2]), price_units(fields[3]));
            if let (Some(bid), Some(ask)) = quote {
                quotes_of.entry(fields[1].to_vec()).or_default().push((bid, ask));
            }
        }
    });
    let mut order_of: BTreeMap<u64, (u64, Vec<u8>)> = BTreeMap::new();
    let order_stream = Stream {
        name: "orders",
        kind: StreamKind::Orders,
        data: Bytes::copy_from_slice(orders),
    };
    judge_lines(
        AppName::MarketSpread,
        &order_stream,
        |number, line, well_formed, _| {
            let fields: Vec<&[u8]> = line.split(|b| *b == b',').collect();
            let id = std::str::from_utf8(fields.get(1).copied().unwrap_or_default())
                .ok()
                .and_then(|t| t.parse().ok());
            if let (true, Some(id)) = (well_formed, id) {
                order_of.insert(id, (number, fields[2].to_vec()));
            }
        },
    );
    // Per symbol: (order line, quote decided on), in output order.
    let mut decided: BTreeMap<Vec<u8>, Vec<(u64, Option<Quote>)>> = BTreeMap::new();
    let mut seen = BTreeMap::new();
    let mut problems = Vec::new();
    for_each_line(output, |number, line| {
        match decision(line, &order_of, &quotes_of) {
            Ok((id, symbol, order_line, quote)) => {
                if seen.insert(id, number).is_some() {
                    problems.push(format!("order {id} decided twice"));
                }
                decided.entry(symbol).or_default().push((order_line, quote));
            }
            Err(e) => problems.push(format!("output line {number}: {e}")),
        }
    });
    for (id, (line, _)) in &order_of {
        if !seen.contains_key(id) {
            problems.push(format!("order {id} (orders line {line}) never decided"));
        }
    }
    for (symbol, decisions) in &decided {
        let symbol_text = String::from_utf8_lossy(symbol);
        if decisions.windows(2).any(|w| w[0].0 >= w[1].0) {
            problems.push(format!("{symbol_text}: decisions out of order stream order"));
        }
        let history = quotes_of.get(symbol).map_or(&[][..], Vec::as_slice);
        let mut at: Option<usize> = None;
        for (order_line, quote) in decisions {
            match (quote, at) {
                (None, None) => {}
                (None, Some(_)) => problems.push(format!(
                    "{symbol_text}: the order of orders line {order_line} has no quote after one"
                )),
                (Some(quote), _) => {
                    let from = at.unwrap_or(0);
                    match history[from..].iter().position(|q| q == quote) {
                        Some(offset) => at = Some(from + offset),
                        None => problems.push(format!(
                            "{symbol_text}: the quote of orders line {order_line} goes back in the quote stream"
                        )),
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let total = problems.len();
    problems.truncate(10);
    Err(format!("{total} wrong, e.g.: {}", problems.join("; ")))
}

/// One output line: `<order_id>,<ACCEPT|REJECT>,<symbol>,<bid>,<ask>`,
/// checked against its order and the quotes of its symbol.
fn decision(
    line: &[u8],
    order_of: &BTreeMap<u64, (u64, Vec<u8>)>,
    quotes_of: &BTreeMap<Vec<u8>, Vec<Quote>>,
) -> Result<(u64, Vec<u8>, u64, Option<Quote>), String> {
    let shown = String::from_utf8_lossy(line);
    let fields: Vec<&[u8]> = line.split(|b| *b == b',').collect();
    let [id, verdict, symbol, bid, ask] = fields[..] else {
        return Err(format!("{shown:?} is not an order decision"));
    };
    let id: u64 = std::str::from_utf8(id)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("{shown:?} has no order id"))?;
    let (order_line, order_symbol) = order_of
        .get(&id)
        .ok_or_else(|| format!("{shown:?} decides order {id}, which is not in the orders stream"))?;
    if symbol != &order_symbol[..] {
        return Err(format!("{shown:?}: order {id} is for another symbol"));
    }
    let quote = match (bid, ask) {
        (b"", b"") => None,
        _ => Some(
            price_units(bid)
                .zip(price_units(ask))
                .ok_or_else(|| format!("{shown:?}: bad prices"))?,
        ),
    };
    if let Some(quote) = quote {
        let exists = quotes_of.get(symbol).is_some_and(|qs| qs.contains(&quote));
        if !exists {
            return Err(format!("{shown:?}: no such quote of its symbol"));
        }
    }
    let accept = quote.is_some_and(|q| !rejecting(q));
    let expected: &[u8] = if accept { b"ACCEPT" } else { b"REJECT" };
    if verdict != expected {
        return Err(format!(
            "{shown:?}: the rule says {}",
            String::from_utf8_lossy(expected)
        ));
    }
    Ok((id, symbol.to_vec(), *order_line, quote))
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTES: &[u8] = b"Q,A,10,10.01\nQ,A,10,11\nQ,B,1,1.0001\n";
    const ORDERS: &[u8] = b"O,1,A,B,1,10\nO,2,A,S,1,10\nO,3,B,B,1,1\n";

    #[test]
    fn an_interleaving_passes() {
        let output = b"1,ACCEPT,A,10.0000,10.0100\n3,REJECT,B,,\n2,REJECT,A,10.0000,11.0000\n";
        two_streams(QUOTES, ORDERS, output).unwrap();
    }

    #[test]
    fn planted_faults_are_caught() {
        let cases: [&[u8]; 5] = [
            b"1,REJECT,A,10.0000,10.0100\n2,REJECT,A,10.0000,11.0000\n3,REJECT,B,,\n",
            b"1,ACCEPT,A,10.0000,10.0200\n2,REJECT,A,10.0000,11.0000\n3,REJECT,B,,\n",
            b"1,ACCEPT,A,1.0000,1.0001\n2,REJECT,A,10.0000,11.0000\n3,REJECT,B,,\n",
            b"1,REJECT,A,10.0000,11.0000\n2,ACCEPT,A,10.0000,10.0100\n3,REJECT,B,,\n",
            b"1,ACCEPT,A,10.0000,10.0100\n3,REJECT,B,,\n",
        ];
        for output in cases {
            assert!(
                two_streams(QUOTES, ORDERS, output).is_err(),
                "{}",
                String::from_utf8_lossy(output)
            );
        }
    }

    fn letter(source: u32, line: u64, raw: &'static [u8]) -> DeadLetter {
        let id = verity_core::MsgId::new(source, line);
        DeadLetter::new(id, "bad".into(), &Bytes::from_static(raw))
    }

    #[test]
    fn dead_letters_must_be_each_malformed_line_once() {
        let streams = [Stream {
            name: "in",
            kind: StreamKind::Mixed,
            data: Bytes::from_static(b"1\nx\n2\n\n3\n"),
        }];
        let right = [letter(0, 2, b"x"), letter(0, 4, b"")];
        dead_letters(AppName::Doubler, &streams, &right).unwrap();
        let wrong: [&[DeadLetter]; 5] = [
            &right[..1],
            &[letter(0, 2, b"x"), letter(0, 4, b""), letter(0, 4, b"")],
            &[letter(0, 2, b"x"), letter(0, 4, b""), letter(0, 3, b"2")],
            &[letter(0, 2, b"x"), letter(1, 4, b"")],
            &[letter(0, 2, b"y"), letter(0, 4, b"")],
        ];
        for letters in wrong {
            assert!(
                dead_letters(AppName::Doubler, &streams, letters).is_err(),
                "{letters:?}"
            );
        }
    }

    #[test]
    fn prices_parse_exactly() {
        assert_eq!(price_units(b"10"), Some(100_000));
        assert_eq!(price_units(b"10.0100"), Some(100_100));
        assert_eq!(price_units(b"0.5"), Some(5_000));
        assert_eq!(price_units(b"1.23456"), None);
        assert_eq!(price_units(b""), None);
    }
}
