//! `doubler`: one i64 per line in, the value times two out. Stateless; keyed by
//! value only to spread work over the shards.

use crate::format::write_i64;
use verity_core::{Dataflow, Line, Reject, SourceSpec, Stream};

pub const FORMAT_HELP: &str = "\
Input: one integer per line (i64; surrounding spaces/tabs allowed, e.g. `-12`).
Output: the integer times two, one per line. Output order across records is not
guaranteed. A line that is not an i64, or whose double overflows i64, is
dead-lettered.";

pub fn dataflow(input: SourceSpec) -> Dataflow<i64, i64, (), i64> {
    Stream::from_source(input)
        .try_map(|line: Line| double(line.as_bytes()))
        .key_by(|value| *value)
        .stateful(|_: &mut (), _, msg, out| out.emit(msg.data))
        .sink(|value, buf| write_i64(buf, *value))
}

/// The doubled value of one input line.
pub fn double(line: &[u8]) -> Result<i64, Reject> {
    let text = std::str::from_utf8(line).map_err(|_| Reject::new("not UTF-8"))?;
    let trimmed = text.trim_matches([' ', '\t']);
    let value: i64 = trimmed
        .parse()
        .map_err(|_| Reject::new("not an integer (expected one i64 per line)"))?;
    value
        .checked_mul(2)
        .ok_or_else(|| Reject::new(format!("{value} times two overflows i64")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_rejects() {
        assert_eq!(double(b"21"), Ok(42));
        assert_eq!(double(b" -5\t"), Ok(-10));
        assert_eq!(double(b"+3"), Ok(6));
        assert!(double(b"").is_err());
        assert!(double(b"1.5").is_err());
        assert!(double(b"4611686018427387904")
            .unwrap_err()
            .reason
            .contains("overflow"));
        assert_eq!(double(b"4611686018427387903"), Ok(i64::MAX - 1));
        assert_eq!(double(b"-4611686018427387904"), Ok(i64::MIN));
    }
}
