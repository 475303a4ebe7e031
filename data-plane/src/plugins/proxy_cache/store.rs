//! The bounded store behind `proxy-cache` and the batch sub-request cache: answers by key in
//! memory, their weight (key, headers and body bytes) bounded per store; one upstream request
//! per missing key at a time (single flight); and the registry that keeps a store alive across
//! config versions while the config that made it is unchanged.
//!
//! Eviction is `quick_cache`'s: sharded S3-FIFO (a small probation queue in front of the main
//! one, and a ghost list of recent evictions), so a burst of one-time keys does not flush the
//! entries that are hit again; a lookup takes a shard's read lock and sets a bit. Expiry is the
//! entries' own (an expired entry may still be served STALE), checked on each lookup.

use std::collections::HashMap;
use std::fmt;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode};
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use tokio::sync::watch;

use crate::clock::coarse_now_ms;

/// The largest answer one entry holds, whatever the store's size: larger ones stream through
/// uncached.
pub const MAX_ENTRY_BYTES: u64 = 8 << 20;

/// What an entry costs beyond the bytes it counts: the entry and map bookkeeping.
const ENTRY_OVERHEAD: u64 = 256;

/// What a header line costs beyond its name and value.
const HEADER_OVERHEAD: u64 = 32;

/// How a request was answered with respect to the cache (`X-Cache-Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// A fresh entry answered it.
    Hit,
    /// No entry: the upstream answered it.
    Miss,
    /// The entry had expired: the upstream answered it.
    Expired,
    /// The entry had expired and the upstream failed: the expired entry answered it.
    Stale,
    /// The request is not one the cache answers (method, `cache_bypass`, `no-store`).
    Bypass,
}

impl CacheStatus {
    const ALL: [CacheStatus; 5] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Expired,
        CacheStatus::Stale,
        CacheStatus::Bypass,
    ];

    /// Its `X-Cache-Status` value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Expired => "EXPIRED",
            CacheStatus::Stale => "STALE",
            CacheStatus::Bypass => "BYPASS",
        }
    }

    fn label(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Expired => "expired",
            CacheStatus::Stale => "stale",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// The request headers an answer varies on (`Vary`), with the values a request had for them
/// (all of a name's lines, joined; `None`: it had none).
pub type VaryValues = Vec<(HeaderName, Option<Bytes>)>;

/// A stored answer.
#[derive(Debug)]
pub struct Entry {
    /// Its status.
    pub status: StatusCode,
    /// Its headers as the node sent them (hop-by-hop ones were never there; `Age` is not kept).
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// The request headers the answer varies on (`Vary`), as the request that fetched it had
    /// them (all of a name's lines, joined).
    pub vary: VaryValues,
    /// When it was stored ([`coarse_now_ms`]).
    stored_ms: u64,
    /// Its age when it arrived (the node's `Age`), in ms.
    initial_age_ms: u64,
    /// How long it is fresh, from its age 0.
    fresh_ms: u64,
    /// How long past that it may be served when the upstream fails.
    stale_ms: u64,
    weight: u64,
}

/// Where an entry stands at a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Within its lifetime.
    Fresh,
    /// Expired, but within its stale-if-error window.
    Stale,
    /// Expired and past the window: good for nothing.
    Dead,
}

impl Entry {
    /// An answer to store: fresh for `fresh`, servable for `stale` more when the upstream
    /// fails, `initial_age` old when it arrived.
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        vary: VaryValues,
        fresh: Duration,
        stale: Duration,
        initial_age: Duration,
    ) -> Entry {
        let headers_weight: u64 = headers
            .iter()
            .map(|(n, v)| (n.as_str().len() + v.len()) as u64 + HEADER_OVERHEAD)
            .sum();
        let vary_weight: u64 = vary
            .iter()
            .map(|(n, v)| (n.as_str().len() + v.as_ref().map_or(0, Bytes::len)) as u64)
            .sum();
        Entry {
            weight: ENTRY_OVERHEAD + headers_weight + vary_weight + body.len() as u64,
            status,
            headers,
            body,
            vary,
            stored_ms: coarse_now_ms(),
            initial_age_ms: millis(initial_age),
            fresh_ms: millis(fresh),
            stale_ms: millis(stale),
        }
    }

    /// Its age now (RFC 9111 §4.2.3, with the gateway's clock as the only one).
    pub fn age(&self) -> Duration {
        let resident = coarse_now_ms().saturating_sub(self.stored_ms);
        Duration::from_millis(self.initial_age_ms.saturating_add(resident))
    }

    /// Where it stands now.
    pub fn freshness(&self) -> Freshness {
        let age = millis(self.age());
        if age < self.fresh_ms {
            Freshness::Fresh
        } else if age < self.fresh_ms.saturating_add(self.stale_ms) {
            Freshness::Stale
        } else {
            Freshness::Dead
        }
    }

    /// What it counts against its store's bound.
    pub fn weight(&self) -> u64 {
        self.weight
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// An entry weighs its key and its own weight.
#[derive(Clone, Copy, Debug)]
struct ByBytes;

impl Weighter<String, Arc<Entry>> for ByBytes {
    fn weight(&self, key: &String, entry: &Arc<Entry>) -> u64 {
        key.len() as u64 + entry.weight
    }
}

/// One upstream request in progress for a key.
struct Flight {
    id: u64,
    /// Closed (its sender dropped) when the flight ends, stored or not.
    done: watch::Receiver<()>,
}

/// A bounded store of answers.
pub struct Store {
    entries: Cache<String, Arc<Entry>, ByBytes>,
    flights: Mutex<HashMap<String, Flight>>,
    next_flight: AtomicU64,
    entry_limit: u64,
    counters: Arc<Counters>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("capacity", &self.entries.capacity())
            .field("weight", &self.entries.weight())
            .field("entries", &self.entries.len())
            .finish()
    }
}

/// How a miss goes on.
pub enum Join {
    /// This request fetches the key; others wait for it until the guard is dropped.
    Lead(FlightGuard),
    /// Another request is fetching it: wait for the end of its flight.
    Wait(watch::Receiver<()>),
}

/// Held by the request that fetches a key; dropping it ends the flight (after its answer is
/// stored, or when it will not be), and wakes the requests waiting for it.
pub struct FlightGuard {
    store: Arc<Store>,
    key: String,
    id: u64,
    _done: watch::Sender<()>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut flights = self
            .store
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if flights.get(&self.key).is_some_and(|f| f.id == self.id) {
            flights.remove(&self.key);
        }
        // The sender drops after the map no longer names it: a request that finds no flight
        // finds the entry (if one was stored) or leads the next one.
    }
}

impl Store {
    /// A store of at most `capacity` bytes; one entry holds at most an eighth of it (and at
    /// most [`MAX_ENTRY_BYTES`]).
    fn new(capacity: u64, counters: Arc<Counters>) -> Store {
        let entry_limit = (capacity / 8).min(MAX_ENTRY_BYTES);
        // Shards cut lock contention; each must hold a few of the largest entries, or those
        // would never be admitted (quick_cache bounds each shard by its share).
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut shards = (parallelism * 4).next_power_of_two().min(64) as u64;
        while shards > 1 && capacity / shards < 2 * entry_limit {
            shards /= 2;
        }
        let options = quick_cache::OptionsBuilder::new()
            .shards(shards as usize)
            .weight_capacity(capacity)
            // A guess at the number of entries (a 4 KiB average answer): it only sizes the
            // first allocation.
            .estimated_items_capacity(usize::try_from(capacity / 4096).unwrap_or(1 << 20).max(16))
            .build();
        let entries = match options {
            Ok(options) => Cache::with_options(
                options,
                ByBytes,
                quick_cache::DefaultHashBuilder::default(),
                quick_cache::sync::DefaultLifecycle::default(),
            ),
            // Only a zero shard count is refused, and there is at least one.
            Err(_) => Cache::with_weighter(16, capacity, ByBytes),
        };
        Store {
            entries,
            flights: Mutex::new(HashMap::new()),
            next_flight: AtomicU64::new(0),
            entry_limit,
            counters,
        }
    }

    /// The largest body one entry may hold.
    pub fn entry_limit(&self) -> u64 {
        self.entry_limit
    }

    /// The entry under `key`, if any (fresh or not).
    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.entries.get(key)
    }

    /// Stores `entry` under `key`, replacing what was there. An entry over the bound is not
    /// stored (nor kept: the old one goes too, it was replaced by an answer not kept).
    pub fn insert(&self, key: String, entry: Entry) {
        if entry.body.len() as u64 > self.entry_limit {
            self.entries.remove(&key);
            return;
        }
        self.entries.insert(key, Arc::new(entry));
    }

    /// Removes the entry under `key`; whether there was one.
    pub fn remove(&self, key: &str) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Joins the flight of `key`, or starts one.
    pub fn join(self: &Arc<Self>, key: &str) -> Join {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = flights.get(key) {
            return Join::Wait(flight.done.clone());
        }
        let id = self.next_flight.fetch_add(1, Relaxed);
        let (sender, done) = watch::channel(());
        flights.insert(key.to_owned(), Flight { id, done });
        Join::Lead(FlightGuard {
            store: Arc::clone(self),
            key: key.to_owned(),
            id,
            _done: sender,
        })
    }

    /// Counts one answer by how the cache served it.
    pub fn record(&self, status: CacheStatus) {
        self.counters.record(status);
    }

    /// The bytes its entries count.
    pub fn weight(&self) -> u64 {
        self.entries.weight()
    }

    /// Its entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Answers counted by cache status, over every store of the process.
#[derive(Debug, Default)]
pub struct Counters {
    by_status: [AtomicU64; CacheStatus::ALL.len()],
}

impl Counters {
    fn record(&self, status: CacheStatus) {
        self.by_status[status as usize].fetch_add(1, Relaxed);
    }

    /// Answers with `status` so far.
    pub fn get(&self, status: CacheStatus) -> u64 {
        self.by_status[status as usize].load(Relaxed)
    }
}

/// A store and what made it: the scope (`routes/r1`, `routes/r1/batch`) and a fingerprint of
/// its config.
struct Registered {
    scope: String,
    fingerprint: String,
    store: Weak<Store>,
}

/// Every store of the process (one per plugin instance's scope and config), kept in the
/// plugins' build environment, which outlives config versions: a plugin compiled again with
/// the same config in the same place gets the same store back, entries and all; a changed
/// config starts an empty one. Stores are held by the compiled plugins only: one that no
/// runtime uses any more is freed, and forgotten at the next lookup.
#[derive(Default)]
pub struct Caches {
    stores: Mutex<Vec<Registered>>,
    counters: Arc<Counters>,
}

impl fmt::Debug for Caches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caches")
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

impl Caches {
    /// The store of `scope` made for `fingerprint` with `capacity` bytes: the live one, or a
    /// new one.
    pub fn store(&self, scope: &str, fingerprint: &str, capacity: u64) -> Arc<Store> {
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        stores.retain(|r| r.store.strong_count() > 0);
        let live = stores
            .iter()
            .filter(|r| r.scope == scope && r.fingerprint == fingerprint)
            .find_map(|r| r.store.upgrade());
        if let Some(store) = live {
            return store;
        }
        let store = Arc::new(Store::new(capacity, Arc::clone(&self.counters)));
        stores.push(Registered {
            scope: scope.to_owned(),
            fingerprint: fingerprint.to_owned(),
            store: Arc::downgrade(&store),
        });
        store
    }

    /// The counters of every store.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn live(&self) -> Vec<Arc<Store>> {
        let stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        stores.iter().filter_map(|r| r.store.upgrade()).collect()
    }

    /// The bytes the entries of every live store count.
    pub fn bytes(&self) -> u64 {
        self.live().iter().map(|s| s.weight()).sum()
    }

    /// Appends the cache metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let live = self.live();
        let bytes: u64 = live.iter().map(|s| s.weight()).sum();
        let entries: usize = live.iter().map(|s| s.len()).sum();
        // Writing to a String cannot fail; the results are ignored for that reason.
        let _ = writeln!(
            out,
            "# HELP gateway_proxy_cache_requests_total Answers by cache status (proxy-cache and batch sub-request caches)."
        );
        let _ = writeln!(out, "# TYPE gateway_proxy_cache_requests_total counter");
        for status in CacheStatus::ALL {
            let _ = writeln!(
                out,
                "gateway_proxy_cache_requests_total{{status=\"{}\"}} {}",
                status.label(),
                self.counters.get(status)
            );
        }
        let _ = writeln!(
            out,
            "# HELP gateway_proxy_cache_bytes Bytes held by the caches: keys, headers and bodies."
        );
        let _ = writeln!(out, "# TYPE gateway_proxy_cache_bytes gauge");
        let _ = writeln!(out, "gateway_proxy_cache_bytes {bytes}");
        let _ = writeln!(
            out,
            "# HELP gateway_proxy_cache_entries Entries held by the caches."
        );
        let _ = writeln!(out, "# TYPE gateway_proxy_cache_entries gauge");
        let _ = writeln!(out, "gateway_proxy_cache_entries {entries}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &'static [u8], fresh_s: u64, stale_s: u64) -> Entry {
        Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(body),
            Vec::new(),
            Duration::from_secs(fresh_s),
            Duration::from_secs(stale_s),
            Duration::ZERO,
        )
    }

    #[test]
    fn the_bound_holds_whatever_is_inserted() {
        let caches = Caches::default();
        let store = caches.store("routes/r", "{}", 64 * 1024);
        for i in 0..1000 {
            store.insert(format!("key-{i}"), entry(&[b'x'; 1000], 60, 0));
        }
        assert!(store.weight() <= 64 * 1024, "{}", store.weight());
        assert!(store.len() > 10);
        // One larger than an eighth of the store is not admitted.
        store.insert("big".into(), entry(&[b'x'; 9000], 60, 0));
        assert!(store.get("big").is_none());
    }

    #[test]
    fn a_store_outlives_config_versions_while_its_config_is_unchanged() {
        let caches = Caches::default();
        let first = caches.store("routes/r", "{\"a\":1}", 1 << 20);
        first.insert("k".into(), entry(b"v", 60, 0));
        let again = caches.store("routes/r", "{\"a\":1}", 1 << 20);
        assert!(again.get("k").is_some());
        let changed = caches.store("routes/r", "{\"a\":2}", 1 << 20);
        assert!(changed.get("k").is_none());
        let elsewhere = caches.store("routes/s", "{\"a\":1}", 1 << 20);
        assert!(elsewhere.get("k").is_none());
        drop((first, again));
        // Freed with the last plugin holding it: a later config starts afresh.
        assert!(
            caches
                .store("routes/r", "{\"a\":1}", 1 << 20)
                .get("k")
                .is_none()
        );
    }

    #[test]
    fn freshness_runs_from_fresh_to_stale_to_dead() {
        assert_eq!(entry(b"", 60, 0).freshness(), Freshness::Fresh);
        assert_eq!(entry(b"", 0, 60).freshness(), Freshness::Stale);
        assert_eq!(entry(b"", 0, 0).freshness(), Freshness::Dead);
        let old = Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::new(),
            Vec::new(),
            Duration::from_secs(60),
            Duration::ZERO,
            Duration::from_secs(61),
        );
        assert_eq!(old.freshness(), Freshness::Dead);
        assert!(old.age() >= Duration::from_secs(61));
    }

    #[tokio::test]
    async fn one_request_leads_a_flight_and_the_others_wait_for_its_end() {
        let caches = Caches::default();
        let store = caches.store("routes/r", "{}", 1 << 20);
        let Join::Lead(guard) = store.join("k") else {
            panic!("the first request leads");
        };
        let Join::Wait(mut waiting) = store.join("k") else {
            panic!("the second waits");
        };
        assert!(matches!(store.join("other"), Join::Lead(_)));
        store.insert("k".into(), entry(b"v", 60, 0));
        drop(guard);
        // The flight's end is seen even by a waiter that looks after it ended.
        assert!(waiting.changed().await.is_err());
        assert!(matches!(store.join("k"), Join::Lead(_)));
    }
}
