//! `SmallBytes`: a byte-string key stored inline when short.
//!
//! Most keys (words, tickers, ids) are short. Keeping them inline means routing a
//! key to another shard copies a few bytes instead of bumping the reference count
//! of a shared input buffer, which two cores would fight over.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

/// Longest byte string stored without a heap allocation.
pub const SMALL_INLINE_MAX_BYTES: usize = 22;

#[derive(Clone)]
pub enum SmallBytes {
    Inline { len: u8, bytes: [u8; SMALL_INLINE_MAX_BYTES] },
    Heap(Box<[u8]>),
}

impl SmallBytes {
    pub fn new(value: &[u8]) -> Self {
        if value.len() <= SMALL_INLINE_MAX_BYTES {
            let mut bytes = [0; SMALL_INLINE_MAX_BYTES];
            bytes[..value.len()].copy_from_slice(value);
            SmallBytes::Inline { len: value.len() as u8, bytes }
        } else {
            SmallBytes::Heap(value.into())
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            SmallBytes::Inline { len, bytes } => &bytes[..*len as usize],
            SmallBytes::Heap(bytes) => bytes,
        }
    }
}

impl std::fmt::Debug for SmallBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

// Equality, order and hash are those of the byte string, as `Borrow<[u8]>`
// requires: the state store looks keys up by `&[u8]`.
impl PartialEq for SmallBytes {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
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
        self.as_bytes().cmp(other.as_bytes())
    }
}
impl Hash for SmallBytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}
impl Borrow<[u8]> for SmallBytes {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl crate::key::Key for SmallBytes {
    fn route_hash(&self) -> u64 {
        crate::key::stable_hash(self.as_bytes())
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
            prop_assert_eq!(sa.as_bytes(), &a[..]);
            prop_assert_eq!(sa == sb, a == b);
            prop_assert_eq!(sa.cmp(&sb), a.cmp(&b));
            prop_assert_eq!(sa.route_hash(), crate::key::stable_hash(&a[..]));
        }
    }

    #[test]
    fn short_keys_are_inline() {
        assert!(matches!(SmallBytes::new(b"hello"), SmallBytes::Inline { .. }));
        assert!(matches!(SmallBytes::new(&[b'x'; 100]), SmallBytes::Heap(_)));
    }
}
