//! A map with frecency eviction: entries that are used often and recently stay. Bounded by both
//! an entry count and a byte size.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

/// One stored value with its usage record.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<V> {
    /// The value.
    pub value: V,
    /// Uses (halved periodically, so old popularity fades).
    pub hits: u32,
    /// Logical time of the last use.
    pub last_used: u64,
    /// Bytes charged to the size limit.
    pub size: usize,
}

/// Counters of one map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Lookups that found an entry.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Entries removed to honour a limit.
    pub evictions: u64,
}

/// The frecency map. Eviction removes the entry with the fewest (aged) hits, the least recently
/// used first among equals.
pub struct FrecencyMap<K: Eq + Hash + Ord + Clone, V> {
    entries: HashMap<K, Entry<V>>,
    order: BTreeSet<(u32, u64, K)>,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    clock: u64,
    since_aging: usize,
    /// Hit/miss/eviction counters.
    pub counters: Counters,
}

impl<K: Eq + Hash + Ord + Clone, V> FrecencyMap<K, V> {
    /// An empty map holding at most `capacity` entries and `max_bytes` bytes.
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        FrecencyMap {
            entries: HashMap::new(),
            order: BTreeSet::new(),
            capacity,
            max_bytes,
            bytes: 0,
            clock: 0,
            since_aging: 0,
            counters: Counters::default(),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The logical clock (restored from snapshots so recency survives restarts).
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// Looks `key` up, counting a hit or a miss and refreshing the entry's frecency.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.clock += 1;
        let Some(entry) = self.entries.get_mut(key) else {
            self.counters.misses += 1;
            return None;
        };
        self.counters.hits += 1;
        self.order.remove(&(entry.hits, entry.last_used, key.clone()));
        entry.hits = entry.hits.saturating_add(1);
        entry.last_used = self.clock;
        self.order.insert((entry.hits, entry.last_used, key.clone()));
        self.age_if_due();
        self.entries.get(key).map(|e| &e.value)
    }

    /// Inserts (or replaces) `key`; an entry larger than the whole size limit is not stored.
    pub fn insert(&mut self, key: K, value: V, size: usize) {
        self.clock += 1;
        let clock = self.clock;
        self.restore(key, Entry { value, hits: 1, last_used: clock, size });
    }

    /// Inserts an entry with its usage record as it was (snapshot loading).
    pub fn restore(&mut self, key: K, entry: Entry<V>) {
        if entry.size > self.max_bytes || self.capacity == 0 {
            return;
        }
        self.remove(&key);
        self.clock = self.clock.max(entry.last_used);
        self.bytes += entry.size;
        self.order.insert((entry.hits, entry.last_used, key.clone()));
        self.entries.insert(key, entry);
        while self.entries.len() > self.capacity || self.bytes > self.max_bytes {
            let Some(victim) = self.order.iter().next().map(|(_, _, k)| k.clone()) else { break };
            self.remove(&victim);
            self.counters.evictions += 1;
        }
    }

    /// Makes room for `additional` more entries without rehashing (snapshot loading).
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional.min(self.capacity));
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let entry = self.entries.remove(key)?;
        self.order.remove(&(entry.hits, entry.last_used, key.clone()));
        self.bytes -= entry.size;
        Some(entry.value)
    }

    /// Removes the entries whose value fails `keep`.
    pub fn retain(&mut self, keep: impl Fn(&V) -> bool) {
        let gone: Vec<K> = self.entries.iter().filter(|(_, e)| !keep(&e.value)).map(|(k, _)| k.clone()).collect();
        for key in gone {
            self.remove(&key);
        }
    }

    /// Removes every entry (counters are kept).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
        self.bytes = 0;
    }

    /// All entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &Entry<V>)> {
        self.entries.iter()
    }

    /// Halves every hit count once per `capacity` lookups, so past popularity fades.
    fn age_if_due(&mut self) {
        self.since_aging += 1;
        if self.since_aging < self.capacity.max(64) {
            return;
        }
        self.since_aging = 0;
        self.order.clear();
        for (k, e) in self.entries.iter_mut() {
            e.hits = (e.hits / 2).max(1);
            self.order.insert((e.hits, e.last_used, k.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_evicts_the_least_frecent() {
        let mut m = FrecencyMap::new(3, usize::MAX);
        for k in 0..3u32 {
            m.insert(k, k, 1);
        }
        m.get(&0); // 0 used twice: frequent
        m.get(&2);
        m.insert(3, 3, 1); // evicts 1: fewest hits, oldest
        assert!(m.get(&1).is_none());
        assert!(m.get(&0).is_some() && m.get(&2).is_some() && m.get(&3).is_some());
        assert_eq!(m.len(), 3);
        assert_eq!(m.counters.evictions, 1);
    }

    #[test]
    fn size_limit_is_honoured() {
        let mut m = FrecencyMap::new(100, 10);
        m.insert(1u32, (), 4);
        m.insert(2, (), 4);
        m.insert(3, (), 4); // 12 > 10: evicts the oldest
        assert_eq!(m.bytes(), 8);
        assert!(m.get(&1).is_none());
        m.insert(4, (), 11); // larger than the limit: not stored
        assert!(m.get(&4).is_none());
        assert_eq!(m.bytes(), 8);
    }

    #[test]
    fn recent_beats_old_among_equal_hits() {
        let mut m = FrecencyMap::new(2, usize::MAX);
        m.insert("a", 1, 1);
        m.insert("b", 2, 1);
        m.insert("c", 3, 1);
        assert!(m.get(&"a").is_none());
        assert_eq!(m.get(&"c"), Some(&3));
    }

    #[test]
    fn counters_count() {
        let mut m = FrecencyMap::new(2, usize::MAX);
        m.insert(1u8, 1u8, 1);
        m.get(&1);
        m.get(&2);
        assert_eq!((m.counters.hits, m.counters.misses), (1, 1));
    }
}
