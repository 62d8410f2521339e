//! Keys: what `key_by` produces and what routes a record to its shard.

use bytes::Bytes;
use std::hash::{Hash, Hasher};

/// A routing and state key.
///
/// `route_hash` must be stable across processes and runs (it decides which shard
/// of which process owns the key), so it is a fixed-seed hash of the key's bytes,
/// never `RandomState`. `detach` makes the copy the state store keeps: for a
/// `Bytes` slice of an input chunk that is a fresh allocation, so a stored key
/// never pins a whole input buffer in memory.
pub trait Key: Hash + Eq + Ord + Send + 'static {
    fn route_hash(&self) -> u64;
    fn detach(&self) -> Self;
}

/// Fixed-seed 64-bit hash used for routing.
pub fn stable_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = rustc_hash::FxHasher::default();
    value.hash(&mut hasher);
    // FxHash leaves the high bits weak for short keys, and routing uses them.
    mix64(hasher.finish())
}

/// Multiplies as 128 bits and folds the halves: one multiply that mixes every
/// input bit into the whole result (the core of foldhash and aHash).
pub fn folded_multiply(x: u64, y: u64) -> u64 {
    let full = x as u128 * y as u128;
    (full as u64) ^ ((full >> 64) as u64)
}

/// A 64-bit finaliser (SplitMix64's): every input bit affects every output bit.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The shard that owns a key hash among `shards` shards.
pub fn shard_for(route_hash: u64, shards: usize) -> usize {
    assert!(shards > 0, "at least one shard");
    ((route_hash as u128 * shards as u128) >> 64) as usize
}

impl Key for Bytes {
    fn route_hash(&self) -> u64 {
        stable_hash(self.as_ref())
    }
    fn detach(&self) -> Self {
        Bytes::copy_from_slice(self)
    }
}

impl Key for String {
    fn route_hash(&self) -> u64 {
        stable_hash(self.as_bytes())
    }
    fn detach(&self) -> Self {
        self.clone()
    }
}

macro_rules! int_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn route_hash(&self) -> u64 {
                stable_hash(self)
            }
            fn detach(&self) -> Self {
                *self
            }
        }
    )*};
}
int_key!(u32, u64, i64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_string_keys_route_alike() {
        let word = "hello";
        assert_eq!(
            Bytes::from_static(word.as_bytes()).route_hash(),
            word.to_string().route_hash()
        );
    }

    #[test]
    fn routing_spreads_keys_over_all_shards() {
        let mut counts = [0usize; 4];
        for i in 0..4000u64 {
            counts[shard_for(i.route_hash(), 4)] += 1;
        }
        for c in counts {
            assert!(c > 700, "uneven spread {counts:?}");
        }
    }

    #[test]
    fn detached_bytes_do_not_share_the_input_buffer() {
        let chunk = Bytes::from(vec![b'a'; 1024]);
        let key = chunk.slice(0..4);
        let owned = key.detach();
        assert_eq!(owned, key);
        assert_ne!(owned.as_ptr(), key.as_ptr());
    }
}
