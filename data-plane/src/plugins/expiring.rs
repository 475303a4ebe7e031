//! Per-key state of the local rate limits (`limit-count`, `limit-req`): a sharded map whose
//! entries each carry their own expiry, with a bounded number of keys.
//!
//! Why each entry's own expiry: every limit instance shares one map, and they differ in window
//! and rate. Sweeping by the caller's window deleted an hour-long window's counters as soon as
//! a route with a one-second window swept, handing every client a fresh budget.
//!
//! Why a bound: keys come from clients (`X-Api-Key` values, IPv6 addresses). Past
//! [`MAX_KEYS_PER_SHARD`] live keys, the keys closest to expiry are dropped (their next
//! request starts afresh), as APISIX's shared dictionaries drop their least recently used
//! entries when full. Keys longer than [`MAX_KEY_BYTES`] are stored as their SHA-256, so
//! memory is bounded by the key count, not by header sizes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::Hasher as _;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

const SHARDS: usize = 16;
/// A shard this large is swept of expired entries before it grows further; after a sweep the
/// next one waits until the shard doubles, so sweeping costs O(1) per insert.
const SWEEP_AT: usize = 4096;
/// Live keys per shard (16 shards: 262,144 keys, some 30 MB at most per map).
pub const MAX_KEYS_PER_SHARD: usize = 16_384;
/// Longer keys are stored hashed.
pub const MAX_KEY_BYTES: usize = 128;

/// Sharded per-key state; `V` is a limit's own state (a window's count, a bucket).
#[derive(Debug)]
pub struct ExpiringMap<V> {
    shards: [Mutex<Shard<V>>; SHARDS],
    /// Live keys per shard ([`MAX_KEYS_PER_SHARD`]; smaller in tests).
    capacity: usize,
}

#[derive(Debug)]
struct Shard<V> {
    entries: HashMap<Box<str>, Entry<V>>,
    sweep_at: usize,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    /// Coarse monotonic milliseconds after which the entry is as good as absent.
    expires_ms: u64,
}

impl<V> Default for ExpiringMap<V> {
    fn default() -> Self {
        ExpiringMap::with_capacity(MAX_KEYS_PER_SHARD)
    }
}

impl<V> ExpiringMap<V> {
    fn with_capacity(capacity: usize) -> Self {
        ExpiringMap {
            shards: std::array::from_fn(|_| {
                Mutex::new(Shard {
                    entries: HashMap::new(),
                    sweep_at: SWEEP_AT.min(capacity),
                })
            }),
            capacity,
        }
    }

    /// Runs `update` on `key`'s live value (`None` when absent or expired at `now_ms`) and
    /// stores the value it returns, with that value's expiry; returns `update`'s verdict.
    pub fn update<R>(
        &self,
        key: &str,
        now_ms: u64,
        update: impl FnOnce(Option<&V>) -> (V, u64, R),
    ) -> R {
        let key = bounded_key(key);
        let shard = &self.shards[fnv(&key) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        // Looked up before inserted: an owned key per request was an allocation per request.
        if let Some(entry) = shard.entries.get_mut(&*key) {
            let live = (entry.expires_ms > now_ms).then_some(&entry.value);
            let (value, expires_ms, verdict) = update(live);
            *entry = Entry { value, expires_ms };
            return verdict;
        }
        let (value, expires_ms, verdict) = update(None);
        shard.make_room(now_ms, self.capacity);
        shard
            .entries
            .insert(key.into_owned().into(), Entry { value, expires_ms });
        verdict
    }

    /// Keys held, expired ones not yet swept included.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).entries.len())
            .sum()
    }
}

impl<V> Shard<V> {
    /// Sweeps expired entries when the shard has grown enough since the last sweep, and drops
    /// the quarter closest to expiry when live entries alone fill it.
    fn make_room(&mut self, now_ms: u64, capacity: usize) {
        if self.entries.len() < self.sweep_at {
            return;
        }
        self.entries.retain(|_, entry| entry.expires_ms > now_ms);
        if self.entries.len() >= capacity {
            // The quarter closest to expiry goes; entries that tie with the cut are kept
            // until the quota is met, so a window's keys created in one tick do not all go.
            let mut expiries: Vec<u64> = self.entries.values().map(|e| e.expires_ms).collect();
            let (_, cut, _) = expiries.select_nth_unstable(capacity / 4);
            let cut = *cut;
            let mut to_drop = capacity / 4 + 1;
            self.entries.retain(|_, entry| {
                let drop = entry.expires_ms < cut || (entry.expires_ms == cut && to_drop > 0);
                if drop {
                    to_drop = to_drop.saturating_sub(1);
                }
                !drop
            });
        }
        self.sweep_at = (self.entries.len() * 2).clamp(SWEEP_AT.min(capacity), capacity);
    }
}

/// `key` itself, or its SHA-256 when it is longer than [`MAX_KEY_BYTES`]: what a limit stores
/// (here or in Redis) is bounded whatever a client sends.
pub fn bounded_key(key: &str) -> Cow<'_, str> {
    if key.len() <= MAX_KEY_BYTES {
        return Cow::Borrowed(key);
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut hashed = String::with_capacity(7 + 64);
    hashed.push_str("sha256:");
    hashed.push_str(&hex::encode(digest));
    Cow::Owned(hashed)
}

/// The shard of `text` (FNV-1a: cheap on short keys, the same everywhere).
fn fnv(text: &str) -> usize {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(text.as_bytes());
    hasher.finish() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(map: &ExpiringMap<u64>, key: &str, now_ms: u64, ttl_ms: u64) -> u64 {
        map.update(key, now_ms, |live| {
            let n = live.copied().unwrap_or(0) + 1;
            (n, now_ms + ttl_ms, n)
        })
    }

    #[test]
    fn an_entry_lives_until_its_own_expiry() {
        let map = ExpiringMap::default();
        assert_eq!(count(&map, "k", 1000, 3_600_000), 1);
        assert_eq!(count(&map, "k", 2000, 3_600_000), 2);
        assert_eq!(count(&map, "short", 2000, 1000), 1);
        assert_eq!(count(&map, "short", 3000, 1000), 1, "expired at 3000");
    }

    #[test]
    fn sweeps_keep_the_live_entries_of_longer_windows() {
        let map = ExpiringMap::default();
        // An hour-long counter, then enough one-second keys to sweep every shard many times.
        for _ in 0..5 {
            count(&map, "login:198.51.100.7", 1000, 3_600_000);
        }
        for i in 0..(SWEEP_AT * SHARDS * 4) as u64 {
            count(&map, &format!("flood{i}"), 1000 + i, 1000);
        }
        assert_eq!(count(&map, "login:198.51.100.7", 200_000, 3_600_000), 6);
    }

    #[test]
    fn live_keys_are_bounded_and_long_keys_hashed() {
        let capacity = 64;
        let map = ExpiringMap::with_capacity(capacity);
        let long = "k".repeat(4 * 1024);
        assert_eq!(count(&map, &long, 1000, 3_600_000), 1);
        assert_eq!(
            count(&map, &long, 1000, 3_600_000),
            2,
            "one hashed key, counted"
        );
        for i in 0..(capacity * SHARDS * 8) as u64 {
            // Live for an hour each, later ones later: the oldest go first.
            count(&map, &format!("{long}{i}"), 1000 + i, 3_600_000);
        }
        assert!(map.len() <= capacity * SHARDS, "{}", map.len());
        let longest = map
            .shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap()
                    .entries
                    .keys()
                    .map(|k| k.len())
                    .collect::<Vec<_>>()
            })
            .max();
        assert_eq!(longest, Some(7 + 64));
    }
}
