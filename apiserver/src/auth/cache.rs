//! A small bounded cache whose entries expire: TokenReview and SubjectAccessReview answers
//! are kept for a few seconds so that a burst of requests costs one round trip to
//! kube-apiserver, while a revoked token or a removed RoleBinding still takes effect soon.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The value for `key` unless it expired at `now`.
    pub(crate) fn get(&self, key: &K, now: Instant) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((v, expires)) if *expires > now => Some(v.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value` until `now + ttl`; a zero `ttl` keeps nothing.
    pub(crate) fn insert(&self, key: K, value: V, ttl: Duration, now: Instant) {
        if ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (_, expires)| *expires > now);
            // Still full of live entries: drop the one closest to expiry. A linear scan, but
            // only when the cache is full of distinct live keys, which is rare.
            if entries.len() >= self.capacity {
                let victim = entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(k, _)| k.clone());
                if let Some(victim) = victim {
                    entries.remove(&victim);
                }
            }
        }
        entries.insert(key, (value, now + ttl));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_their_ttl() {
        let c = TtlCache::new(8);
        let t0 = Instant::now();
        c.insert("a", 1, Duration::from_secs(10), t0);
        assert_eq!(c.get(&"a", t0 + Duration::from_secs(9)), Some(1));
        assert_eq!(c.get(&"a", t0 + Duration::from_secs(10)), None);
        // The expired entry is gone, not just hidden.
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn zero_ttl_caches_nothing() {
        let c = TtlCache::new(8);
        let t0 = Instant::now();
        c.insert("a", 1, Duration::ZERO, t0);
        assert_eq!(c.get(&"a", t0), None);
    }

    #[test]
    fn bounded_size_drops_expired_then_soonest_to_expire() {
        let c = TtlCache::new(3);
        let t0 = Instant::now();
        c.insert(1, "one", Duration::from_secs(1), t0);
        c.insert(2, "two", Duration::from_secs(20), t0);
        c.insert(3, "three", Duration::from_secs(30), t0);
        // At t0+2s key 1 has expired: it makes room.
        let t1 = t0 + Duration::from_secs(2);
        c.insert(4, "four", Duration::from_secs(40), t1);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&1, t1), None);
        // Full of live entries: key 2 expires soonest and goes.
        c.insert(5, "five", Duration::from_secs(50), t1);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&2, t1), None);
        assert_eq!(c.get(&3, t1), Some("three"));
        assert_eq!(c.get(&5, t1), Some("five"));
        // Overwriting a present key never evicts another.
        c.insert(5, "FIVE", Duration::from_secs(50), t1);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&5, t1), Some("FIVE"));
    }
}
