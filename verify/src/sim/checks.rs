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

/// The app whose oracle judges `app`'s lines (window-count's lines are
/// seq-window's `<key> <u64>`; its windows have an oracle of their own,
/// `crate::windowed`).
fn oracle_app(app: AppName) -> App {
    match app {
        AppName::WindowCount => App::SeqWindow,
        app => App::from_name(app.name(), false).expect("every app has an oracle"),
    }
}

/// Output lines the whole input must produce. The simulated apps write no
/// end-of-input output, so every line comes from one input record that its
/// stream's rule accepts.
pub fn expected_output_lines(app: AppName, streams: &[Stream]) -> u64 {
    let windowed_nexmark = matches!(
        app,
        AppName::Nexmark(
            verity_apps::nexmark::Query::Q5
                | verity_apps::nexmark::Query::Q7
                | verity_apps::nexmark::Query::Q8
        )
    );
    if app == AppName::WindowCount || windowed_nexmark {
        // Windows close on the watermark: the last ones only once the
        // input ended, so the sources must not wait for them.
        return 0;
    }
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

/// A spread seed's input as its partitions: each line into the partition
/// its app key hashes to, so a key's lines keep their order in one
/// partition (seq-window's first field, market-spread's symbol); doubler
/// and wordcount lines, and lines without a key, go round-robin (a doubler
/// line is its own record, a wordcount line holds several keys). Every
/// partition's lines end in `\n`.
pub fn partition_by_key(app: AppName, data: &[u8], partitions: u32) -> Vec<Bytes> {
    assert!(partitions > 0);
    let mut parts: Vec<Vec<u8>> = vec![Vec::new(); partitions as usize];
    for (index, line) in data.split_inclusive(|b| *b == b'\n').enumerate() {
        let part = match line_key(app, line) {
            // FNV-1a: any fixed hash keeps a key together.
            Some(key) => key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
            }),
            None => index as u64,
        } % u64::from(partitions);
        let out = &mut parts[part as usize];
        out.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    parts.into_iter().map(Bytes::from).collect()
}

fn line_key(app: AppName, line: &[u8]) -> Option<&[u8]> {
    match app {
        AppName::SeqWindow | AppName::WindowCount => {
            line.split(|b| b.is_ascii_whitespace()).find(|f| !f.is_empty())
        }
        AppName::MarketSpread => {
            let mut fields = line.split(|b| *b == b',');
            match fields.next()? {
                b"Q" => fields.next(),
                b"O" => fields.nth(1),
                _ => None,
            }
        }
        AppName::Doubler | AppName::Wordcount | AppName::Nexmark(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_lines_share_a_partition_in_order() {
        let data = b"a 1\nb 1\na 2\n  a 3\nc 1\nb 2";
        let parts = partition_by_key(AppName::SeqWindow, data, 2);
        let joined: Vec<u8> = parts.concat();
        assert_eq!(
            joined.len(),
            data.len() + 1,
            "every line once, the last with its newline"
        );
        let holder = parts
            .iter()
            .position(|p| p.starts_with(b"a 1") || p.windows(3).any(|w| w == b"a 1"));
        let part = &parts[holder.unwrap()];
        let text = std::str::from_utf8(part).unwrap();
        let a: Vec<&str> = text.lines().filter(|l| l.trim_start().starts_with('a')).collect();
        assert_eq!(a, ["a 1", "a 2", "  a 3"]);
        let quotes = partition_by_key(AppName::MarketSpread, b"Q,X,1,2\nO,1,X,B,1,1\n", 7);
        assert_eq!(
            quotes.iter().filter(|p| !p.is_empty()).count(),
            1,
            "a symbol's quotes and orders together"
        );
    }

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
