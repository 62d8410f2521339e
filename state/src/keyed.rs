use rustc_hash::FxHashMap;
use std::borrow::Borrow;
use std::hash::Hash;

/// Per-key state of one shard.
///
/// Lookups take a borrowed key so the hot path allocates only when a key is seen
/// for the first time (`detach` makes the owned copy that the store keeps).
#[derive(Debug)]
pub struct KeyedStore<K, S> {
    states: FxHashMap<K, S>,
}

impl<K: Hash + Eq, S: Default> Default for KeyedStore<K, S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq, S: Default> KeyedStore<K, S> {
    pub fn new() -> Self {
        KeyedStore {
            states: FxHashMap::default(),
        }
    }

    /// The state of `key`, created with `S::default()` on first use.
    pub fn state_mut<Q>(&mut self, key: &Q, detach: impl FnOnce(&Q) -> K) -> &mut S
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // Two lookups on a miss only: the common case (key exists) is one probe and
        // no allocation, which the entry API cannot give with a borrowed key.
        if !self.states.contains_key(key) {
            let owned = detach(key);
            debug_assert!(owned.borrow() == key, "detach must keep the key equal");
            self.states.insert(owned, S::default());
        }
        match self.states.get_mut(key) {
            Some(state) => state,
            None => unreachable!("key inserted just above"),
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&S>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.states.get(key)
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// All entries in key order: hash-map order must never leak into output.
    pub fn sorted(&self) -> Vec<(&K, &S)>
    where
        K: Ord,
    {
        let mut entries: Vec<(&K, &S)> = self.states.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_state_once_per_key_and_detaches_only_on_miss() {
        let mut store: KeyedStore<String, u64> = KeyedStore::new();
        let mut detached = 0;
        for word in ["a", "b", "a", "a"] {
            *store.state_mut(word, |w| {
                detached += 1;
                w.to_string()
            }) += 1;
        }
        assert_eq!(detached, 2);
        assert_eq!(store.get("a"), Some(&3));
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn sorted_iteration_is_by_key() {
        let mut store: KeyedStore<u32, u32> = KeyedStore::new();
        for k in [5, 1, 9, 3] {
            *store.state_mut(&k, |k| *k) = k * 10;
        }
        let keys: Vec<u32> = store.sorted().into_iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![1, 3, 5, 9]);
    }
}
