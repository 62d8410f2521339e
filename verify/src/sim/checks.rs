//! What the simulator needs to know about its generated input streams to
//! check a seed: which stream is which (for the dead-letter rules of
//! `verify_dead_letters`), and how many output lines the whole input must
//! produce (sources stay open until they are in).

use crate::input::for_each_line;
use crate::oracle::{ExpectSink, Oracle};
use crate::{App, LineRule};
use bytes::Bytes;
use verity_apps::AppName;

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

impl StreamKind {
    /// Which lines of such a stream the app must dead-letter.
    pub fn rule(self, app: AppName) -> LineRule {
        match self {
            StreamKind::Mixed => LineRule::App(oracle_app(app)),
            StreamKind::Quotes => LineRule::Quotes,
            StreamKind::Orders => LineRule::Orders,
        }
    }
}

/// One simulated source: source index = its position in the list.
#[derive(Clone)]
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

/// Output lines the whole input must produce. The simulated apps write no
/// end-of-input output, so every line comes from one input record that its
/// stream's rule accepts.
pub fn expected_output_lines(app: AppName, streams: &[Stream]) -> u64 {
    let mut lines = 0;
    for stream in streams {
        let rule = stream.kind.rule(app);
        let mut oracle = Oracle::new(oracle_app(app));
        for_each_line(&stream.data, |number, line| {
            let mut count = Count::default();
            if oracle.line(number, line, &mut count) && rule.accepts(line) {
                lines += count.0;
            }
        });
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_lines_follow_each_streams_rule() {
        let stream = |kind, data: &'static [u8]| Stream {
            name: "s",
            kind,
            data: Bytes::from_static(data),
        };
        let mixed = [stream(
            StreamKind::Mixed,
            b"Q,A,1,2\nO,1,A,B,1,1\nbad\nO,2,A,S,1,1\n",
        )];
        assert_eq!(expected_output_lines(AppName::MarketSpread, &mixed), 2);
        let split = [
            stream(StreamKind::Quotes, b"Q,A,1,2\nO,9,A,B,1,1\n"),
            stream(StreamKind::Orders, b"O,1,A,B,1,1\nQ,A,1,2\nO,2,A,S,1,1\n"),
        ];
        assert_eq!(expected_output_lines(AppName::MarketSpread, &split), 2);
        let words = [stream(StreamKind::Mixed, b"a b  a\n\n\xff\nc\n")];
        assert_eq!(expected_output_lines(AppName::Wordcount, &words), 4);
    }
}
