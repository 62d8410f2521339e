use hashbrown::HashTable;
use std::borrow::Borrow;

/// Per-key state of one shard.
///
/// Keys come with their hash, already computed once for routing, so a record
/// costs one hash computation in total. Lookups take a borrowed key, so the hot
/// path allocates only when a key is seen for the first time (`detach` makes the
/// owned copy the store keeps).
pub struct KeyedStore<K, S> {
    entries: HashTable<Entry<K, S>>,
}

struct Entry<K, S> {
    hash: u64,
    key: K,
    state: S,
}

impl<K, S: Default> Default for KeyedStore<K, S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: std::fmt::Debug, S: std::fmt::Debug> std::fmt::Debug for KeyedStore<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|e| (&e.key, &e.state)))
            .finish()
    }
}

impl<K, S: Default> KeyedStore<K, S> {
    pub fn new() -> Self {
        KeyedStore {
            entries: HashTable::new(),
        }
    }

    /// The state of `key` (whose hash is `hash`), created with `S::default()` on
    /// first use. The same key must always come with the same hash.
    pub fn state_mut<Q>(&mut self, hash: u64, key: &Q, detach: impl FnOnce(&Q) -> K) -> &mut S
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        match self.entries.find_entry(hash, |e| e.key.borrow() == key) {
            Ok(occupied) => &mut occupied.into_mut().state,
            Err(absent) => {
                let owned = detach(key);
                debug_assert!(owned.borrow() == key, "detach must keep the key equal");
                let entry = Entry {
                    hash,
                    key: owned,
                    state: S::default(),
                };
                &mut absent
                    .into_table()
                    .insert_unique(hash, entry, |e| e.hash)
                    .into_mut()
                    .state
            }
        }
    }

    /// Test-only until a reader needs it (the audit log's error records).
    #[cfg(test)]
    pub fn get<Q>(&self, hash: u64, key: &Q) -> Option<&S>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.entries
            .find(hash, |e| e.key.borrow() == key)
            .map(|e| &e.state)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries in key order: hash-table order must never leak into output.
    pub fn sorted(&self) -> Vec<(&K, &S)>
    where
        K: Ord,
    {
        let mut entries: Vec<(&K, &S)> = self.entries.iter().map(|e| (&e.key, &e.state)).collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(word: &str) -> u64 {
        word.bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
    }

    #[test]
    fn creates_state_once_per_key_and_detaches_only_on_miss() {
        let mut store: KeyedStore<String, u64> = KeyedStore::new();
        let mut detached = 0;
        for word in ["a", "b", "a", "a"] {
            *store.state_mut(hash_of(word), word, |w| {
                detached += 1;
                w.to_string()
            }) += 1;
        }
        assert_eq!(detached, 2);
        assert_eq!(store.get(hash_of("a"), "a"), Some(&3));
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn colliding_hashes_keep_keys_apart() {
        let mut store: KeyedStore<String, u64> = KeyedStore::new();
        for (i, word) in ["x", "y", "z"].into_iter().enumerate() {
            *store.state_mut(1, word, |w| w.to_string()) = i as u64;
        }
        assert_eq!(store.get(1, "y"), Some(&1));
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn sorted_iteration_is_by_key() {
        let mut store: KeyedStore<u32, u32> = KeyedStore::new();
        for k in [5, 1, 9, 3] {
            *store.state_mut(k as u64, &k, |k| *k) = k * 10;
        }
        let keys: Vec<u32> = store.sorted().into_iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![1, 3, 5, 9]);
    }
}
