use hashbrown::HashTable;
use std::borrow::Borrow;

/// Per-key state of one shard.
///
/// Keys come with their hash, already computed once for routing, so a record
/// costs one hash computation in total. Lookups take a borrowed key, so the hot
/// path allocates only when a key is seen for the first time (`detach` makes the
/// owned copy the store keeps).
///
/// The store knows which keys changed since the last `snapshot`, so a
/// checkpoint can write only those (an incremental snapshot).
pub struct KeyedStore<K, S> {
    entries: HashTable<Entry<K, S>>,
    /// Entries whose `changed` is set.
    changed: usize,
}

struct Entry<K, S> {
    hash: u64,
    key: K,
    state: S,
    /// Handed out mutably since the last `snapshot` (whether or not the
    /// step then wrote to it: a conservative, branch-cheap notion).
    changed: bool,
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
            changed: 0,
        }
    }

    /// The state of `key` (whose hash is `hash`), created with `S::default()` on
    /// first use. The same key must always come with the same hash.
    pub fn state_mut<Q>(&mut self, hash: u64, key: &Q, detach: impl FnOnce(&Q) -> K) -> &mut S
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let entry = match self.entries.find_entry(hash, |e| e.key.borrow() == key) {
            Ok(occupied) => occupied.into_mut(),
            Err(absent) => {
                let owned = detach(key);
                debug_assert!(owned.borrow() == key, "detach must keep the key equal");
                let entry = Entry {
                    hash,
                    key: owned,
                    state: S::default(),
                    changed: false,
                };
                absent
                    .into_table()
                    .insert_unique(hash, entry, |e| e.hash)
                    .into_mut()
            }
        };
        if !entry.changed {
            entry.changed = true;
            self.changed += 1;
        }
        &mut entry.state
    }

    /// Keys in the store.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keys handed out by `state_mut` since the last `snapshot` (or
    /// `forget_changes`).
    pub fn changed_len(&self) -> usize {
        self.changed
    }

    /// The entries of a snapshot, all of them (`whole`) or only those changed
    /// since the last snapshot, in a deterministic order (by route hash, then
    /// key), so equal stores give equal snapshots whatever their history.
    /// Afterwards nothing counts as changed. Sorting by the hash, kept in the
    /// entry, touches no key in the common case: much cheaper than key order
    /// on a large store (`sorted`).
    pub fn snapshot(&mut self, whole: bool) -> impl ExactSizeIterator<Item = (&K, &S)>
    where
        K: Ord,
    {
        let mut entries: Vec<(u64, &Entry<K, S>)> =
            Vec::with_capacity(if whole { self.entries.len() } else { self.changed });
        for entry in self.entries.iter_mut() {
            let changed = std::mem::replace(&mut entry.changed, false);
            if whole || changed {
                let entry: &Entry<K, S> = entry;
                entries.push((entry.hash, entry));
            }
        }
        self.changed = 0;
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.key.cmp(&b.1.key)));
        entries.into_iter().map(|(_, e)| (&e.key, &e.state))
    }

    /// Marks every entry unchanged: a store just restored from a snapshot
    /// equals that snapshot.
    pub fn forget_changes(&mut self) {
        for entry in self.entries.iter_mut() {
            entry.changed = false;
        }
        self.changed = 0;
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

    #[test]
    fn snapshots_hold_what_changed_since_the_last_in_hash_then_key_order() {
        let mut store: KeyedStore<String, u64> = KeyedStore::new();
        // "b" and "c" share a hash: the key orders them.
        for (hash, word) in [(9, "a"), (2, "c"), (2, "b"), (5, "d")] {
            *store.state_mut(hash, word, |w| w.to_string()) += 1;
        }
        assert_eq!(store.changed_len(), 4);
        let whole: Vec<(String, u64)> = store.snapshot(true).map(|(k, s)| (k.clone(), *s)).collect();
        let names: Vec<&str> = whole.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["b", "c", "d", "a"]);
        assert_eq!(store.changed_len(), 0);
        assert_eq!(store.snapshot(false).len(), 0, "nothing changed since");
        *store.state_mut(5, "d", |w| w.to_string()) += 10;
        *store.state_mut(5, "d", |w| w.to_string()) += 10;
        *store.state_mut(1, "e", |w| w.to_string()) += 1;
        assert_eq!(store.changed_len(), 2, "a key counts once");
        let delta: Vec<(String, u64)> = store.snapshot(false).map(|(k, s)| (k.clone(), *s)).collect();
        assert_eq!(delta, [("e".to_string(), 1), ("d".to_string(), 21)]);
        assert_eq!(store.snapshot(true).len(), 5, "a whole snapshot holds every key");
        *store.state_mut(9, "a", |w| w.to_string()) += 1;
        store.forget_changes();
        assert_eq!(store.changed_len(), 0);
        assert_eq!(store.snapshot(false).len(), 0);
    }
}
