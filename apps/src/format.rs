//! Small allocation-free writers shared by the apps' output formats and
//! generators.

/// Fixed-point prices: integer units of 0.0001.
pub const PRICE_UNITS_PER_ONE: u64 = 10_000;

/// "00" "01" ... "99": a price's four fractional digits as two pairs.
const DIGIT_PAIRS: [u8; 200] = {
    let mut pairs = [0; 200];
    let mut i = 0;
    while i < 100 {
        pairs[2 * i] = b'0' + (i / 10) as u8;
        pairs[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    pairs
};

pub fn write_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

pub fn write_i64(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// `units` of 0.0001 as a decimal with exactly 4 fractional digits
/// (`123.4500`). The point and the fraction go in as one fixed-size copy.
pub fn write_price(out: &mut Vec<u8>, units: u64) {
    write_u64(out, units / PRICE_UNITS_PER_ONE);
    let fraction = (units % PRICE_UNITS_PER_ONE) as usize;
    let (high, low) = (fraction / 100 * 2, fraction % 100 * 2);
    out.extend_from_slice(&[
        b'.',
        DIGIT_PAIRS[high],
        DIGIT_PAIRS[high + 1],
        DIGIT_PAIRS[low],
        DIGIT_PAIRS[low + 1],
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(units: u64) -> String {
        let mut out = Vec::new();
        write_price(&mut out, units);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn prices_have_exactly_four_fraction_digits() {
        assert_eq!(price(1_234_500), "123.4500");
        assert_eq!(price(500), "0.0500");
        assert_eq!(price(0), "0.0000");
        assert_eq!(price(1), "0.0001");
        assert_eq!(price(u64::MAX), "1844674407370955.1615");
    }

    #[test]
    fn integers_print_like_display() {
        let mut values = vec![0, 1, 9, 10, 99, 100, 12_345, u64::MAX, u64::MAX - 1];
        values.extend((0..20).map(|p| 10u64.pow(p)));
        values.extend((1..20).map(|p| 10u64.pow(p) - 1));
        for value in values {
            let mut out = b"x".to_vec();
            write_u64(&mut out, value);
            assert_eq!(out, format!("x{value}").into_bytes());
        }
    }
}
