//! `SmallBytes`: a byte-string key stored inline, as machine words, when short.
//!
//! Most keys (words, tickers, ids) are short. Keeping them inline means routing a
//! key to another shard copies a few words instead of bumping the reference count
//! of a shared input buffer, which two cores would fight over. The inline form is
//! built and read as whole `u64` words: a key written byte by byte and read back
//! as words right away stalls the CPU on store forwarding, which was the largest
//! single cost of keying by word.

use std::hash::{Hash, Hasher};

/// Longest byte string stored without a heap allocation: three words, less the
/// byte that holds the length.
pub const SMALL_INLINE_MAX_BYTES: usize = 23;
const LEN_SHIFT: u32 = 56;

#[derive(Clone)]
pub enum SmallBytes {
    /// Little-endian words of the bytes, zero-padded; the length is in the top
    /// byte of the last word. One byte string has exactly one inline form.
    Inline([u64; 3]),
    Heap(Box<[u8]>),
}

/// Reads up to 8 bytes as a little-endian word with a few loads (no byte loop,
/// no stores): overlapping reads of the source for 1–7 bytes.
fn load_word(src: &[u8]) -> u64 {
    let n = src.len();
    debug_assert!(n <= 8);
    let read32 = |at: usize| u32::from_le_bytes([src[at], src[at + 1], src[at + 2], src[at + 3]]) as u64;
    match n {
        0 => 0,
        1..=3 => src[0] as u64 | (src[n / 2] as u64) << (8 * (n / 2)) | (src[n - 1] as u64) << (8 * (n - 1)),
        4..=7 => read32(0) | read32(n - 4) << (8 * (n - 4)),
        _ => u64::from_le_bytes([src[0], src[1], src[2], src[3], src[4], src[5], src[6], src[7]]),
    }
}

impl SmallBytes {
    pub fn new(value: &[u8]) -> Self {
        if value.len() > SMALL_INLINE_MAX_BYTES {
            return SmallBytes::Heap(value.into());
        }
        // Branch once on the length class: most keys fit the first word.
        let n = value.len();
        let [a, b, c] = if n <= 8 {
            [load_word(value), 0, 0]
        } else if n <= 16 {
            [load_word(&value[..8]), load_word(&value[8..]), 0]
        } else {
            [
                load_word(&value[..8]),
                load_word(&value[8..16]),
                load_word(&value[16..]),
            ]
        };
        SmallBytes::Inline([a, b, c | (n as u64) << LEN_SHIFT])
    }

    pub fn len(&self) -> usize {
        match self {
            SmallBytes::Inline(words) => (words[2] >> LEN_SHIFT) as usize,
            SmallBytes::Heap(bytes) => bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the bytes to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            SmallBytes::Inline(words) => {
                // Append all three words, then cut back: fixed-size copies are a
                // few stores, a variable-length one is a memcpy call.
                let end = out.len() + self.len();
                let mut bytes = [0u8; 24];
                for (to, word) in bytes.chunks_exact_mut(8).zip(words) {
                    to.copy_from_slice(&word.to_le_bytes());
                }
                out.extend_from_slice(&bytes);
                out.truncate(end);
            }
            SmallBytes::Heap(bytes) => out.extend_from_slice(bytes),
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.write_to(&mut out);
        out
    }
}

impl std::fmt::Debug for SmallBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.to_vec()))
    }
}

// Equality, order and hash are those of the byte string.
impl PartialEq for SmallBytes {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SmallBytes::Inline(a), SmallBytes::Inline(b)) => a == b,
            (SmallBytes::Heap(a), SmallBytes::Heap(b)) => a == b,
            _ => false, // one byte string has one form: short inline, long on the heap
        }
    }
}
impl Eq for SmallBytes {}
impl PartialOrd for SmallBytes {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SmallBytes {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            (SmallBytes::Inline(a), SmallBytes::Inline(b)) => {
                // Big-endian words compare like the bytes they hold; the padding is
                // zero, so a prefix sorts first once lengths break the tie.
                let key = |w: &[u64; 3]| {
                    (
                        w[0].swap_bytes(),
                        w[1].swap_bytes(),
                        (w[2] << 8).swap_bytes(),
                        w[2] >> LEN_SHIFT,
                    )
                };
                key(a).cmp(&key(b))
            }
            _ => self.to_vec().cmp(&other.to_vec()),
        }
    }
}
impl Hash for SmallBytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            SmallBytes::Inline(words) => words.hash(state),
            SmallBytes::Heap(bytes) => bytes.hash(state),
        }
    }
}

/// The route hash of an inline byte string's words.
fn inline_route_hash([a, b, c]: [u64; 3]) -> u64 {
    use crate::key::folded_multiply;
    // Arbitrary odd constants (digits of pi): fixed, so hashes are stable.
    const SEEDS: [u64; 3] = [
        0x243F_6A88_85A3_08D3,
        0x1319_8A2E_0370_7344,
        0xA409_3822_299F_31D1,
    ];
    // Words are little-endian values, so this is the same on every machine;
    // two multiplies, one of them parallel to the loads.
    folded_multiply(folded_multiply(a ^ SEEDS[0], b ^ SEEDS[1]) ^ c, SEEDS[2])
}

impl SmallBytes {
    /// The route hash of a byte string of at most 8 bytes held as a
    /// little-endian word (bytes past `len` are ignored): what
    /// `SmallBytes::new(bytes).route_hash()` is, without building it, for
    /// keys that keep their bytes in one word (market-spread's symbols).
    pub fn route_hash_of_word(word: u64, len: usize) -> u64 {
        assert!(len <= 8, "a word holds at most 8 bytes");
        let bytes = if len == 8 {
            word
        } else {
            word & ((1 << (8 * len)) - 1)
        };
        inline_route_hash([bytes, 0, (len as u64) << LEN_SHIFT])
    }
}

impl crate::key::Key for SmallBytes {
    fn route_hash(&self) -> u64 {
        match self {
            SmallBytes::Inline(words) => inline_route_hash(*words),
            SmallBytes::Heap(bytes) => crate::key::stable_hash(&bytes[..]),
        }
    }
    fn detach(&self) -> Self {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn behaves_like_its_bytes(a in proptest::collection::vec(any::<u8>(), 0..40),
                                  b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let (sa, sb) = (SmallBytes::new(&a), SmallBytes::new(&b));
            prop_assert_eq!(sa.to_vec(), a.clone());
            prop_assert_eq!(sa.len(), a.len());
            prop_assert_eq!(sa == sb, a == b);
            prop_assert_eq!(sa.cmp(&sb), a.cmp(&b));
            if a == b {
                prop_assert_eq!(sa.route_hash(), sb.route_hash());
            }
        }

        #[test]
        fn short_prefixes_order_like_bytes(a in proptest::collection::vec(0u8..3, 0..24),
                                           b in proptest::collection::vec(0u8..3, 0..24)) {
            prop_assert_eq!(SmallBytes::new(&a).cmp(&SmallBytes::new(&b)), a.cmp(&b));
        }
    }

    proptest! {
        #[test]
        fn a_word_hashes_like_its_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..=8), junk in any::<u64>()) {
            let mut word = [0u8; 8];
            word[..bytes.len()].copy_from_slice(&bytes);
            let padded = u64::from_le_bytes(word);
            let junk_past_len = if bytes.len() == 8 { 0 } else { junk << (8 * bytes.len()) };
            prop_assert_eq!(
                SmallBytes::route_hash_of_word(padded | junk_past_len, bytes.len()),
                SmallBytes::new(&bytes).route_hash()
            );
        }
    }

    #[test]
    fn short_keys_are_inline() {
        assert!(matches!(SmallBytes::new(b"hello"), SmallBytes::Inline(_)));
        assert!(matches!(SmallBytes::new(&[b'x'; 23]), SmallBytes::Inline(_)));
        assert!(matches!(SmallBytes::new(&[b'x'; 24]), SmallBytes::Heap(_)));
    }

    #[test]
    fn every_length_round_trips() {
        let source: Vec<u8> = (1..=30).collect();
        for n in 0..=30 {
            assert_eq!(SmallBytes::new(&source[..n]).to_vec(), &source[..n]);
        }
    }
}
