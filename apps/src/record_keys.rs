//! Each app's key as bytes of a text line: of an input line (`verity send
//! --key-by APP` keys records by it, so a key's records share a Kafka
//! partition and keep their order) and of an output line (the Kafka sink
//! keys output records by it, for the same reason). The keys are those the
//! apps' dataflows route by, read off the line without parsing it whole.

use crate::AppName;

/// Reads a line's key.
pub type KeyOfLine = fn(&[u8]) -> &[u8];

fn trimmed(line: &[u8]) -> &[u8] {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t' || *b == b'\r';
    let start = line.iter().position(|b| !is_space(b)).unwrap_or(line.len());
    let end = line.iter().rposition(|b| !is_space(b)).map_or(start, |e| e + 1);
    &line[start..end.max(start)]
}

fn whole(line: &[u8]) -> &[u8] {
    line
}

/// The first whitespace-separated field.
fn first_field(line: &[u8]) -> &[u8] {
    let line = trimmed(line);
    let end = line
        .iter()
        .position(|b| *b == b' ' || *b == b'\t')
        .unwrap_or(line.len());
    &line[..end]
}

fn comma_field(line: &[u8], index: usize) -> &[u8] {
    line.split(|b| *b == b',').nth(index).unwrap_or_default()
}

/// `Q,<symbol>,…` or `O,<order_id>,<symbol>,…`: the symbol.
fn market_input_symbol(line: &[u8]) -> &[u8] {
    match line.first() {
        Some(b'O') => comma_field(line, 2),
        _ => comma_field(line, 1),
    }
}

/// `<order_id>,<ACCEPT|REJECT>,<symbol>,…` or `STALE,<symbol>,…`: the
/// symbol.
fn market_output_symbol(line: &[u8]) -> &[u8] {
    if line.starts_with(b"STALE,") {
        comma_field(line, 1)
    } else {
        comma_field(line, 2)
    }
}

/// The key of an input line. Wordcount's lines hold many keys (words), so
/// a line is its own key there.
pub fn input_key(app: AppName) -> KeyOfLine {
    match app {
        AppName::Doubler => trimmed,
        AppName::Wordcount => whole,
        AppName::SeqWindow | AppName::WindowCount => first_field,
        AppName::MarketSpread => market_input_symbol,
    }
}

/// The key of an output line.
pub fn output_key(app: AppName) -> KeyOfLine {
    match app {
        AppName::Doubler => whole,
        AppName::Wordcount | AppName::SeqWindow | AppName::WindowCount => first_field,
        AppName::MarketSpread => market_output_symbol,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_off_the_lines() {
        assert_eq!(input_key(AppName::Doubler)(b" -12\t"), b"-12");
        assert_eq!(input_key(AppName::SeqWindow)(b"k7 3"), b"k7");
        assert_eq!(input_key(AppName::MarketSpread)(b"Q,AAPL,1.0,1.1"), b"AAPL");
        assert_eq!(input_key(AppName::MarketSpread)(b"O,17,MSFT,B,10,1.0"), b"MSFT");
        assert_eq!(input_key(AppName::Wordcount)(b"a b"), b"a b");
        assert_eq!(output_key(AppName::Wordcount)(b"word 3"), b"word");
        assert_eq!(output_key(AppName::SeqWindow)(b"k 0 0 1 2"), b"k");
        assert_eq!(
            output_key(AppName::MarketSpread)(b"17,ACCEPT,MSFT,1.0,1.1"),
            b"MSFT"
        );
        assert_eq!(output_key(AppName::MarketSpread)(b"STALE,IBM,1.0,1.1"), b"IBM");
        assert_eq!(output_key(AppName::Doubler)(b"24"), b"24");
        assert_eq!(input_key(AppName::Doubler)(b"   "), b"");
        assert_eq!(input_key(AppName::MarketSpread)(b"garbage"), b"");
    }
}
