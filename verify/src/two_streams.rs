//! Verifies a market-spread run that read quotes and orders as two streams
//! (`verity run market-spread --quotes Q --orders O`). Its output depends on
//! how the streams interleaved, so there is no one expected output: an output
//! is correct exactly when, per symbol, some interleaving of that symbol's
//! quotes and orders produces it. That holds when
//!
//! * every order appears exactly once, per symbol in orders-stream order
//!   (otherwise: lost, duplicated, reordered, unexpected, wrong value);
//! * each decision reports a quote of its own symbol from the quotes stream,
//!   or none, and along the orders stream the reported quotes of a symbol
//!   never go back in the quotes stream and never return to none once one was
//!   reported (otherwise: impossible quote);
//! * the decision follows the app's rule for the quote it reports (otherwise:
//!   wrong value).
//!
//! Per symbol, not globally: shards apply the two streams independently, so
//! one symbol may see a quote before an order while another symbol on another
//! shard sees the opposite, and no single global interleaving need exist.
//!
//! The check streams, like `compare`: output arrives in batches; the orders
//! stream is read only as far ahead as the output needs, and the quotes stream
//! only as far as the reported quotes need. Matching a reported quote to the
//! *earliest* equal quote at or after the symbol's last reported one keeps the
//! most choices open for later decisions, so a greedy match is exact. Memory
//! holds the orders read but not yet seen in the output and, per symbol, the
//! quotes read but not yet passed by its decisions (the run's lag between the
//! two streams) plus a few counts and examples.

use crate::compare::{Anomaly, AnomalyKind, Report, Tally, TwoStreamInputs, WINDOW_LINES_MAX};
use crate::input::LineReader;
use crate::oracle::{parse_market, price, rejecting, show_price, write_decision, MarketLine, Units};
use std::collections::{HashMap, VecDeque};
use std::io::BufRead;

/// Quotes held at most while no decision has moved past them.
pub const QUOTES_HELD_MAX: u64 = WINDOW_LINES_MAX;
/// Quotes remembered per symbol behind its last reported one, to tell a
/// quote that went back from one that never existed.
const PASSED_PER_SYMBOL: usize = 16;
/// Order ids remembered per symbol after their decision, to tell duplicates.
const RECENT_PER_SYMBOL: usize = 16;

type Quote = (Units, Units);

#[derive(Debug, Clone, Copy)]
struct QuoteAt {
    /// Line in the quotes stream.
    line: u64,
    quote: Quote,
}

struct PendingOrder {
    /// Line in the orders stream.
    origin: u64,
    id: u64,
    /// A later order of its symbol came first; if it still comes, it is reordered.
    skipped: bool,
}

#[derive(Default)]
struct SymbolState {
    orders: VecDeque<PendingOrder>,
    recent_ids: VecDeque<u64>,
    /// Quotes read and not passed, in stream order; while `reported` is set,
    /// the front is the quote last reported.
    quotes: VecDeque<QuoteAt>,
    /// The quotes-stream line of the quote last reported, if any was.
    reported: Option<u64>,
    passed: VecDeque<QuoteAt>,
}

impl SymbolState {
    /// Moves the cursor to `quotes[at]`.
    fn advance_to(&mut self, at: usize) -> u64 {
        for passed in self.quotes.drain(..at) {
            if self.passed.len() == PASSED_PER_SYMBOL {
                self.passed.pop_front();
            }
            self.passed.push_back(passed);
        }
        let line = self.quotes.front().expect("advance_to an existing quote").line;
        self.reported = Some(line);
        line
    }
}

/// What one more line of the quotes stream held.
enum QuoteRead {
    Quote(Box<[u8]>, QuoteAt),
    Malformed,
    /// The end of the stream, or no room to hold more quotes.
    End,
}

/// One output line, cut into its five fields.
struct DecisionLine<'a> {
    id: Option<u64>,
    symbol: &'a [u8],
    verdict: Option<bool>,
    /// `Some(None)`: no quote (both fields empty); `None`: not a valid quote.
    quote: Option<Option<Quote>>,
}

fn parse_decision(line: &[u8]) -> Option<DecisionLine<'_>> {
    let fields: Vec<&[u8]> = line.split(|b| *b == b',').collect();
    let [id, verdict, symbol, bid, ask] = fields[..] else {
        return None;
    };
    let canonical_price = |field: &[u8]| {
        let text = std::str::from_utf8(field).ok()?;
        let units = price(text).ok()?;
        (show_price(units) == text).then_some(units)
    };
    let quote = match (bid, ask) {
        (b"", b"") => Some(None),
        _ => canonical_price(bid).zip(canonical_price(ask)).map(Some),
    };
    Some(DecisionLine {
        id: std::str::from_utf8(id)
            .ok()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok()),
        symbol,
        verdict: match verdict {
            b"ACCEPT" => Some(true),
            b"REJECT" => Some(false),
            _ => None,
        },
        quote,
    })
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show_quote(quote: Quote) -> String {
    format!("{},{}", show_price(quote.0), show_price(quote.1))
}

/// What a decision line of `symbol` for order `id` looks like, whatever the quote.
fn decision_shape(id: u64, symbol: &[u8]) -> String {
    format!("{id},ACCEPT|REJECT,{},<bid>,<ask>", lossy(symbol))
}

/// The streaming two-stream checker over quotes and orders read on demand.
pub struct TwoStreamComparator<Q, O> {
    quotes: LineReader<Q>,
    orders: LineReader<O>,
    symbols: HashMap<Box<[u8]>, SymbolState>,
    orders_held: u64,
    quotes_held: u64,
    quote_malformed: u64,
    order_malformed: u64,
    expected_lines: u64,
    /// A line cut by a batch boundary, completed by the next batch.
    partial: Vec<u8>,
    output_lines: u64,
    tally: Tally,
}

impl<Q: BufRead, O: BufRead> TwoStreamComparator<Q, O> {
    pub fn new(quotes: Q, orders: O) -> Self {
        TwoStreamComparator {
            quotes: LineReader::new(quotes),
            orders: LineReader::new(orders),
            symbols: HashMap::new(),
            orders_held: 0,
            quotes_held: 0,
            quote_malformed: 0,
            order_malformed: 0,
            expected_lines: 0,
            partial: Vec::new(),
            output_lines: 0,
            tally: Tally::default(),
        }
    }

    /// Output lines checked so far, and anomalies found so far.
    pub fn progress(&self) -> (u64, u64) {
        (self.output_lines, self.tally.total())
    }

    /// Whether every order has had its decision (reading the orders stream
    /// ahead as far as that takes).
    pub fn caught_up(&mut self) -> bool {
        while self.orders_held == 0 && self.read_order() {}
        self.orders.is_done() && self.orders_held == 0
    }

    /// Orders and quotes held in memory now (what streaming bounds).
    pub fn held(&self) -> (u64, u64) {
        (self.orders_held, self.quotes_held)
    }

    fn state(&mut self, symbol: &[u8]) -> &mut SymbolState {
        if !self.symbols.contains_key(symbol) {
            self.symbols.insert(symbol.into(), SymbolState::default());
        }
        self.symbols.get_mut(symbol).expect("inserted above")
    }

    /// Reads one more line of the orders stream; false at its end or when the
    /// window is full.
    fn read_order(&mut self) -> bool {
        if self.orders_held >= WINDOW_LINES_MAX {
            return false;
        }
        let Some((origin, line)) = self.orders.next_line() else {
            return false;
        };
        match std::str::from_utf8(line).map(parse_market) {
            Ok(Ok(MarketLine::Order { id, symbol })) => {
                let symbol = symbol.to_owned();
                self.orders_held += 1;
                self.expected_lines += 1;
                self.state(symbol.as_bytes()).orders.push_back(PendingOrder {
                    origin,
                    id,
                    skipped: false,
                });
            }
            _ => self.order_malformed += 1,
        }
        true
    }

    /// Reads one more line of the quotes stream (its symbol's state gets the
    /// quote it holds).
    fn read_quote(&mut self) -> QuoteRead {
        if self.quotes_held >= QUOTES_HELD_MAX {
            return QuoteRead::End;
        }
        let Some((line, text)) = self.quotes.next_line() else {
            return QuoteRead::End;
        };
        match std::str::from_utf8(text).map(parse_market) {
            Ok(Ok(MarketLine::Quote { symbol, quote })) => {
                let symbol: Box<[u8]> = symbol.as_bytes().into();
                let at = QuoteAt { line, quote };
                self.quotes_held += 1;
                self.state(&symbol).quotes.push_back(at);
                QuoteRead::Quote(symbol, at)
            }
            _ => {
                self.quote_malformed += 1;
                QuoteRead::Malformed
            }
        }
    }

    /// Where `quote` stands among `symbol`'s quotes at or after its cursor,
    /// reading the quotes stream ahead until it appears.
    fn find_quote(&mut self, symbol: &[u8], quote: Quote) -> Option<usize> {
        let held = self.symbols.get(symbol).map(|s| &s.quotes);
        if let Some(at) = held.and_then(|quotes| quotes.iter().position(|q| q.quote == quote)) {
            return Some(at);
        }
        loop {
            match self.read_quote() {
                QuoteRead::Quote(of, at) if *of == *symbol && at.quote == quote => {
                    return Some(self.symbols[symbol].quotes.len() - 1);
                }
                QuoteRead::Quote(..) | QuoteRead::Malformed => {}
                QuoteRead::End => return None,
            }
        }
    }

    /// Takes order `id` of `symbol` out of the pending orders (reading the
    /// orders stream ahead as needed): its origin, and whether it was skipped.
    fn take_order(&mut self, symbol: &[u8], id: u64) -> Option<(u64, bool)> {
        loop {
            if let Some(state) = self.symbols.get_mut(symbol) {
                if let Some(at) = state.orders.iter().position(|o| o.id == id) {
                    let skipped = state.orders[at].skipped;
                    if !skipped {
                        // Orders the output jumped over may still come late.
                        state.orders.iter_mut().take(at).for_each(|o| o.skipped = true);
                    }
                    let order = state.orders.remove(at).expect("found above");
                    if state.recent_ids.len() == RECENT_PER_SYMBOL {
                        state.recent_ids.pop_front();
                    }
                    state.recent_ids.push_back(id);
                    self.orders_held -= 1;
                    return Some((order.origin, skipped));
                }
            }
            if !self.read_order() {
                return None;
            }
        }
    }

    /// The next piece of output, cut anywhere.
    pub fn feed(&mut self, bytes: &[u8]) {
        // Out of `self` while the lines it holds are checked (no copy).
        let mut partial = std::mem::take(&mut self.partial);
        crate::input::feed_lines(&mut partial, bytes, |line| self.check_line(line));
        self.partial = partial;
    }

    fn note(&mut self, kind: AnomalyKind, order: Option<(u64, String)>, actual: &[u8], note: Option<String>) {
        self.tally.add(Anomaly {
            kind,
            output_line: Some(self.output_lines),
            input_line: order.as_ref().map(|(origin, _)| *origin),
            expected: order.map(|(_, expected)| expected),
            actual: Some(lossy(actual)),
            stream: Some("orders"),
            note,
        });
    }

    fn check_line(&mut self, raw: &[u8]) {
        self.output_lines += 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Some(decision) = parse_decision(line) else {
            return self.note(AnomalyKind::Unexpected, None, line, None);
        };
        let found = decision.id.and_then(|id| self.take_order(decision.symbol, id));
        match (found, decision.id) {
            (Some((origin, true)), Some(id)) => {
                let expected = decision_shape(id, decision.symbol);
                self.note(AnomalyKind::Reordered, Some((origin, expected)), line, None)
            }
            (Some((origin, false)), Some(id)) => self.check_decision(&decision, id, origin, line),
            _ => self.no_such_order(&decision, line),
        }
    }

    /// A decision whose order is not pending: a duplicate, a wrong id in place
    /// of the symbol's next order, or a line no order explains.
    fn no_such_order(&mut self, decision: &DecisionLine, line: &[u8]) {
        let Some(state) = self.symbols.get_mut(decision.symbol) else {
            return self.note(AnomalyKind::Unexpected, None, line, None);
        };
        if decision.id.is_some_and(|id| state.recent_ids.contains(&id)) {
            return self.note(AnomalyKind::Duplicated, None, line, None);
        }
        match state.orders.iter().position(|o| !o.skipped) {
            Some(at) => {
                let replaced = state.orders.remove(at).expect("found above");
                self.orders_held -= 1;
                let expected = decision_shape(replaced.id, decision.symbol);
                self.note(
                    AnomalyKind::WrongValue,
                    Some((replaced.origin, expected)),
                    line,
                    None,
                )
            }
            None => self.note(AnomalyKind::Unexpected, None, line, None),
        }
    }

    /// The decision on order `id` (orders line `origin`): a possible quote,
    /// and the verdict the rule gives for it.
    fn check_decision(&mut self, decision: &DecisionLine, id: u64, origin: u64, line: &[u8]) {
        let shape = || Some((origin, decision_shape(id, decision.symbol)));
        let (Some(verdict), Some(quote)) = (decision.verdict, decision.quote) else {
            return self.note(AnomalyKind::WrongValue, shape(), line, None);
        };
        if let Err(why) = self.move_cursor(decision.symbol, quote) {
            return self.note(AnomalyKind::ImpossibleQuote, shape(), line, why);
        }
        let accept = quote.is_some_and(|(bid, ask)| !rejecting(bid, ask));
        if verdict != accept {
            let symbol = std::str::from_utf8(decision.symbol).expect("symbols parsed from text are UTF-8");
            let mut right = Vec::new();
            write_decision(&mut right, id, symbol, quote);
            let why = Some(format!(
                "the quote {} {}",
                quote.map_or("none".to_string(), show_quote),
                if accept { "accepts" } else { "rejects" }
            ));
            self.note(AnomalyKind::WrongValue, Some((origin, lossy(&right))), line, why);
        }
    }

    /// Moves `symbol`'s cursor to the reported quote if some interleaving
    /// allows it; else says why not (when an example still needs it).
    fn move_cursor(&mut self, symbol: &[u8], quote: Option<Quote>) -> Result<(), Option<String>> {
        let Some(quote) = quote else {
            return match self.symbols.get(symbol).and_then(|s| s.reported) {
                None => Ok(()),
                Some(line) => Err(self
                    .wants_why()
                    .then(|| format!("no quote, after the quote of quotes line {line} was in force"))),
            };
        };
        match self.find_quote(symbol, quote) {
            Some(at) => {
                self.state(symbol).advance_to(at);
                self.quotes_held -= at as u64;
                Ok(())
            }
            None => Err(self.wants_why().then(|| self.why_impossible(symbol, quote))),
        }
    }

    fn wants_why(&self) -> bool {
        self.tally.wants_example(AnomalyKind::ImpossibleQuote)
    }

    /// Why `quote` cannot be in force for `symbol` now (examples only: this
    /// looks through every quote held).
    fn why_impossible(&self, symbol: &[u8], quote: Quote) -> String {
        let shown = show_quote(quote);
        let state = self.symbols.get(symbol);
        let reported = state.and_then(|s| s.reported);
        if let Some(back) = state.and_then(|s| s.passed.iter().rev().find(|q| q.quote == quote)) {
            return format!(
                "{shown} (quotes line {}) goes back: the quote of quotes line {} was already in force",
                back.line,
                reported.unwrap_or_default()
            );
        }
        let mut others: Vec<(&[u8], u64)> = self
            .symbols
            .iter()
            .filter(|(other, _)| ***other != *symbol)
            .filter_map(|(other, s)| {
                let held = s.quotes.iter().chain(s.passed.iter());
                held.filter(|q| q.quote == quote)
                    .map(|q| (&other[..], q.line))
                    .min_by_key(|(_, l)| *l)
            })
            .collect();
        others.sort_by_key(|(_, line)| *line);
        let mine = lossy(symbol);
        match (others.first(), reported) {
            (Some((other, line)), _) => {
                format!(
                    "{shown} is a quote of {} (quotes line {line}), not of {mine}",
                    lossy(other)
                )
            }
            (None, Some(line)) => format!("{shown} is no quote of {mine} from quotes line {line} on"),
            (None, None) => format!("{shown} is no quote of {mine}"),
        }
    }

    /// The end of the output: orders without a decision are lost.
    pub fn finish(mut self) -> Report {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.check_line(&line);
        }
        while self.read_order() {}
        // Only counted now: no decision is left to report a quote.
        while let Some((_, line)) = self.quotes.next_line() {
            if !matches!(
                std::str::from_utf8(line).map(parse_market),
                Ok(Ok(MarketLine::Quote { .. }))
            ) {
                self.quote_malformed += 1;
            }
        }
        let symbols = std::mem::take(&mut self.symbols);
        let keys = symbols
            .values()
            .filter(|s| !s.orders.is_empty() || !s.recent_ids.is_empty())
            .count();
        let mut missing: Vec<(u64, u64, Box<[u8]>)> = symbols
            .into_iter()
            .flat_map(|(symbol, state)| {
                state
                    .orders
                    .into_iter()
                    .map(move |o| (o.origin, o.id, symbol.clone()))
            })
            .collect();
        missing.sort();
        for (origin, id, symbol) in missing {
            self.tally.add(Anomaly {
                kind: AnomalyKind::Lost,
                output_line: None,
                input_line: Some(origin),
                expected: Some(decision_shape(id, &symbol)),
                actual: None,
                stream: Some("orders"),
                note: None,
            });
        }
        Report {
            app: "market-spread",
            input_records: self.quotes.lines_read() + self.orders.lines_read(),
            malformed: self.quote_malformed + self.order_malformed,
            expected_lines: self.expected_lines,
            output_lines: self.output_lines,
            keys: keys as u64,
            counts: self.tally.counts,
            examples: self.tally.examples,
            two_streams: Some(TwoStreamInputs {
                quotes_records: self.quotes.lines_read(),
                orders_records: self.orders.lines_read(),
            }),
        }
    }
}

/// Checks a two-stream market-spread `output` against `quotes` and `orders`
/// (all in memory).
pub fn compare_two_streams(quotes: &[u8], orders: &[u8], output: &[u8]) -> Report {
    let mut comparator = TwoStreamComparator::new(quotes, orders);
    comparator.feed(output);
    comparator.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTES: &str = "Q,A,1,1.01\nQ,B,2,2.5\nQ,A,1,1.5\nQ,A,1,1.01\nQ,A,1,1.02\n";
    const ORDERS: &str = "O,1,A,B,1,1\nO,2,B,S,1,1\nO,3,A,B,1,1\nO,4,A,S,1,1\n";

    fn check(output: &str) -> Report {
        compare_two_streams(QUOTES.as_bytes(), ORDERS.as_bytes(), output.as_bytes())
    }

    #[test]
    fn any_per_symbol_interleaving_passes() {
        for output in [
            // Every order before every quote.
            "1,REJECT,A,,\n2,REJECT,B,,\n3,REJECT,A,,\n4,REJECT,A,,\n",
            // Every quote first.
            "1,ACCEPT,A,1.0000,1.0100\n2,REJECT,B,2.0000,2.5000\n3,ACCEPT,A,1.0000,1.0100\n4,ACCEPT,A,1.0000,1.0100\n",
            // In between, the same quote value again later in the stream.
            "1,ACCEPT,A,1.0000,1.0100\n3,REJECT,A,1.0000,1.5000\n2,REJECT,B,,\n4,ACCEPT,A,1.0000,1.0100\n",
        ] {
            let report = check(output);
            assert!(report.is_ok(), "{output}\n{report}");
            assert!(report.to_string().starts_with("OK market-spread (two streams)"), "{report}");
        }
    }

    #[test]
    fn the_greedy_match_takes_the_earliest_equal_quote() {
        // Quote 1,1.01 appears at lines 1 and 4; order 3 must still be able to see line 3.
        let report = check(
            "1,ACCEPT,A,1.0000,1.0100\n3,REJECT,A,1.0000,1.5000\n4,REJECT,A,1.0000,1.5000\n2,REJECT,B,,\n",
        );
        assert!(report.is_ok(), "{report}");
    }

    fn only(report: &Report, kind: AnomalyKind) -> String {
        assert_eq!(report.count(kind), 1, "{report}");
        assert_eq!(report.anomalies(), 1, "{report}");
        report.to_string()
    }

    #[test]
    fn each_impossible_quote_says_why() {
        let back = check("1,ACCEPT,A,1.0000,1.0200\n2,REJECT,B,,\n3,REJECT,A,1.0000,1.5000\n4,REJECT,A,,\n");
        assert_eq!(back.count(AnomalyKind::ImpossibleQuote), 2, "{back}");
        assert_eq!(back.anomalies(), 2, "{back}");
        let text = back.to_string();
        assert!(
            text.contains("(quotes line 3) goes back: the quote of quotes line 5"),
            "{text}"
        );
        assert!(
            text.contains("no quote, after the quote of quotes line 5 was in force"),
            "{text}"
        );

        let other = only(
            &check("1,REJECT,A,2.0000,2.5000\n2,REJECT,B,,\n3,REJECT,A,,\n4,REJECT,A,,\n"),
            AnomalyKind::ImpossibleQuote,
        );
        assert!(
            other.contains("2.0000,2.5000 is a quote of B (quotes line 2), not of A"),
            "{other}"
        );

        let never = only(
            &check("1,ACCEPT,A,1.0000,1.0300\n2,REJECT,B,,\n3,REJECT,A,,\n4,REJECT,A,,\n"),
            AnomalyKind::ImpossibleQuote,
        );
        assert!(never.contains("1.0000,1.0300 is no quote of A"), "{never}");
        assert!(never.contains("output line 1: impossible quote"), "{never}");
        assert!(never.contains("(orders line 1)"), "{never}");
    }

    #[test]
    fn a_flipped_decision_is_a_wrong_value() {
        let text = only(&check("1,REJECT,A,1.0000,1.0100\n2,REJECT,B,,\n3,ACCEPT,A,1.0000,1.0100\n4,ACCEPT,A,1.0000,1.0100\n"), AnomalyKind::WrongValue);
        // A wrong quote is reported first; here the quote is possible, the verdict is not.
        assert!(text.contains("expected \"1,ACCEPT,A,1.0000,1.0100\""), "{text}");
        assert!(text.contains("the quote 1.0000,1.0100 accepts"), "{text}");
        let text = only(
            &check("1,ACCEPT,A,,\n2,REJECT,B,,\n3,REJECT,A,,\n4,REJECT,A,,\n"),
            AnomalyKind::WrongValue,
        );
        assert!(text.contains("the quote none rejects"), "{text}");
    }

    #[test]
    fn order_anomalies_keep_their_classes() {
        let all = "1,REJECT,A,,\n2,REJECT,B,,\n3,REJECT,A,,\n4,REJECT,A,,\n";
        let text = only(&check(&all.replace("3,REJECT,A,,\n", "")), AnomalyKind::Lost);
        assert!(
            text.contains("orders line 3: lost: \"3,ACCEPT|REJECT,A,<bid>,<ask>\""),
            "{text}"
        );
        only(&check(&format!("{all}2,REJECT,B,,\n")), AnomalyKind::Duplicated);
        only(
            &check("1,REJECT,A,,\n2,REJECT,B,,\n4,REJECT,A,,\n3,REJECT,A,,\n"),
            AnomalyKind::Reordered,
        );
        assert_eq!(
            check(&format!("{all}9,REJECT,Z,,\nnonsense\n")).count(AnomalyKind::Unexpected),
            2
        );
        only(
            &check(&all.replace("4,REJECT,A", "5,REJECT,A")),
            AnomalyKind::WrongValue,
        );
        only(
            &check(&all.replace("4,REJECT,A,,", "4,REJECT,A,1,1.01")),
            AnomalyKind::WrongValue,
        );
    }

    #[test]
    fn lines_in_the_wrong_stream_are_malformed() {
        let report = compare_two_streams(
            b"Q,A,1,2\nO,1,A,B,1,1\nbad\n",
            b"Q,A,1,2\nO,1,A,B,1,1\n",
            b"1,REJECT,A,,\n",
        );
        assert!(report.is_ok(), "{report}");
        assert_eq!((report.malformed, report.input_records), (3, 5));
        assert!(
            report
                .to_string()
                .contains("3 quotes + 2 orders records (3 malformed), 1 symbols"),
            "{report}"
        );
    }

    #[test]
    fn a_mixed_run_is_one_interleaving_and_memory_follows_the_lag() {
        use verity_apps::{generate::generate_all, AppName};
        let mixed = generate_all(AppName::MarketSpread, 200_000, 21);
        let (mut quotes, mut orders) = (Vec::new(), Vec::new());
        for line in mixed.split_inclusive(|b| *b == b'\n') {
            let stream = if line.starts_with(b"O,") {
                &mut orders
            } else {
                &mut quotes
            };
            stream.extend_from_slice(line);
        }
        // The mixed file's interleaving, decided by the single-stream oracle.
        let expected = crate::expected_output(crate::App::MarketSpread, &mixed);
        let mut comparator = TwoStreamComparator::new(&quotes[..], &orders[..]);
        let mut held_max = (0, 0);
        for line in &expected.lines {
            comparator.feed(&line.line);
            comparator.feed(b"\n");
            let (orders_held, quotes_held) = comparator.held();
            held_max = (held_max.0.max(orders_held), held_max.1.max(quotes_held));
        }
        let report = comparator.finish();
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.output_lines, expected.lines.len() as u64);
        // What is held is the symbols' quotes since their last decision, not the input.
        assert!(held_max.0 <= 1 && held_max.1 < 2_000, "{held_max:?}");
    }

    #[test]
    fn batches_cut_anywhere_give_the_same_report() {
        let output =
            "1,ACCEPT,A,1.0000,1.0100\n3,REJECT,A,1.0000,1.5000\n2,REJECT,B,,\n4,ACCEPT,A,1.0000,1.0100";
        for cut in 0..output.len() {
            let mut comparator = TwoStreamComparator::new(QUOTES.as_bytes(), ORDERS.as_bytes());
            comparator.feed(&output.as_bytes()[..cut]);
            comparator.feed(&output.as_bytes()[cut..]);
            let report = comparator.finish();
            assert!(report.is_ok(), "cut at {cut}: {report}");
        }
    }
}
