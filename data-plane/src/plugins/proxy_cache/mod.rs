//! `proxy-cache`: answers a route's `GET`s (and `HEAD`s) from a bounded in-memory store of
//! this data plane, as APISIX's plugin of that name with its `memory` strategy.
//!
//! The plugin has no phase hook: it declares itself a cache ([`super::Plugin::cache`]), and
//! the request path asks it once the request phases (and the request body phase) let the
//! request through — so refused requests never read the cache, and the key is made from the
//! request as it will be forwarded (after `proxy-rewrite`). [`ProxyCache::lookup`] either
//! answers (a fresh entry: `HIT`; a `PURGE`), or hands back a [`Fetch`]: the request goes
//! upstream, and the answer passes through [`Fetch::admit`] (which marks it and, when it may
//! be stored, returns a [`BodyFilter`] that copies the body as it streams to the client and
//! stores it when it ends) or [`Fetch::stale`] when the upstream failed. Every answer of a
//! cached route carries `X-Cache-Status`.
//!
//! Rules:
//! - Keys: `cache_key`'s items concatenated (see [`key`]); `$request_method` reads `GET` for
//!   every cached request, since a `HEAD` is answered from its `GET`'s entry (and never stored:
//!   it has no body) and a `PURGE` removes that entry.
//! - Stored: statuses in `cache_http_status`, no `Set-Cookie`, no `Vary: *`, a body within the
//!   entry bound (an eighth of `max_size_mb`, at most 8 MiB: larger answers stream through
//!   unstored); with `cache_control`, none of `no-store`, `no-cache`, `private` on either
//!   side, and for a request with `Authorization` only an answer marked `public`, `s-maxage`
//!   or `must-revalidate` (RFC 9111 §3.5). There is no revalidation: what would need it is not
//!   stored.
//! - Fresh for `s-maxage`, else `max-age` (with `cache_control`), else `cache_ttl`, counted
//!   from the node's `Age`; hits carry `Age`. A request's `max-age=N` refuses older entries,
//!   its `no-cache` skips the entry (the answer may still be stored).
//! - `Vary`: one variant per key; the entry keeps the request headers it varies on, and a
//!   request that differs is a miss whose answer replaces it (RFC 9111 §4.1 lets a cache keep
//!   one variant).
//! - Single flight: the first miss of a key fetches it; concurrent misses of the key wait for
//!   that request's answer to be stored (at most [`LOCK_TIMEOUT`], nginx's
//!   `proxy_cache_lock_timeout`), then answer from the entry. When the leader's answer is not
//!   stored (not storable, too large, failed, or its client went away), each waiter goes
//!   upstream itself — as nginx does after its lock: a failure is not shared.
//! - Stale: an expired entry within `stale_if_error_s` answers (`STALE`) when the upstream
//!   fails: no answer (connect error, timeout) or a 5xx.
//! - `PURGE` with `X-Purge-Key: <purge_key>` removes the entry of its URL: 200, or 404 when
//!   none; 401 without the header, 403 with a wrong key or without a `purge_key` configured.
//!   It is never forwarded.

pub mod control;
pub mod key;
pub mod store;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gateway_proto::plugins::proxy_cache::{Config, KeyPart, PURGE_KEY_HEADER, Var};
use http::header::{AGE, AUTHORIZATION, CONTENT_LENGTH, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, request};
use http_body_util::Full;
use serde_json::{Value, json};

use super::{BodyFilter, BuildEnv, Plugin, Reject, reject};
use crate::error::json_body;
use crate::transport::deadline;
use control::Directives;
use store::{CacheStatus, Entry, FlightGuard, Freshness, Join, Store, VaryValues};

/// `X-Cache-Status`: how the cache served an answer.
pub static X_CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache-status");

/// How long a miss waits for the request already fetching its key.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// A compiled `proxy-cache`.
#[derive(Debug)]
pub struct ProxyCache {
    priority: i32,
    settings: Arc<Settings>,
    store: Arc<Store>,
}

#[derive(Debug)]
struct Settings {
    ttl: Duration,
    get: bool,
    head: bool,
    statuses: Vec<StatusCode>,
    key: Vec<KeyPart>,
    cache_control: bool,
    bypass: Vec<Var>,
    stale: Duration,
    purge_key: Option<String>,
}

/// What a lookup decided.
pub enum Lookup {
    /// The answer, without going upstream: a hit, or a `PURGE`'s.
    Answer(Reject),
    /// Go upstream; hand the outcome to the fetch.
    Fetch(Fetch),
}

impl ProxyCache {
    /// Compiles a validated config; its store is the one this scope had for the same config,
    /// if one is alive (so a config push that leaves the plugin unchanged keeps the entries).
    pub fn build(
        priority: i32,
        config: &Value,
        scope: &str,
        env: &BuildEnv,
    ) -> Result<ProxyCache, String> {
        let fingerprint = config.to_string();
        let config: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        let key = each(&config.cache_key, "cache_key", |item| KeyPart::parse(item))?;
        let bypass = each(&config.cache_bypass, "cache_bypass", |item| {
            Var::parse(item)
        })?;
        let statuses = each(&config.cache_http_status, "cache_http_status", |&code| {
            StatusCode::from_u16(code).ok()
        })?;
        let capacity = config.max_size_mb.saturating_mul(1 << 20);
        Ok(ProxyCache {
            priority,
            store: env.proxy_cache.store(scope, &fingerprint, capacity),
            settings: Arc::new(Settings {
                ttl: Duration::from_secs(config.cache_ttl),
                get: config.cache_method.iter().any(|m| m == "GET"),
                head: config.cache_method.iter().any(|m| m == "HEAD"),
                statuses,
                key,
                cache_control: config.cache_control,
                bypass,
                stale: Duration::from_secs(config.stale_if_error_s),
                purge_key: config.purge_key,
            }),
        })
    }

    /// Looks `request` up (after its request phases): an answer, or how to fetch it. May wait
    /// for another request fetching the same key.
    pub async fn lookup(&self, request: &request::Parts) -> Lookup {
        if request.method.as_str() == "PURGE" {
            return Lookup::Answer(self.purge(request));
        }
        let settings = &self.settings;
        let head = request.method == Method::HEAD;
        let cached = (request.method == Method::GET && settings.get) || (head && settings.head);
        let directives = match settings.cache_control {
            true => Directives::of(&request.headers),
            false => Directives::default(),
        };
        if !cached || directives.no_store || key::bypassed(&settings.bypass, request) {
            return Lookup::Fetch(self.fetch(None, CacheStatus::Bypass, None, None, request));
        }
        let key = key::render(&settings.key, request, "GET");
        let mut waited = false;
        loop {
            let entry = self
                .store
                .get(&key)
                .filter(|e| varies_alike(e, &request.headers))
                .filter(|e| e.freshness() != Freshness::Dead);
            if let Some(entry) = &entry
                && entry.freshness() == Freshness::Fresh
                && !directives.no_cache
                && directives
                    .max_age
                    .is_none_or(|max| entry.age() <= Duration::from_secs(max))
            {
                self.store.record(CacheStatus::Hit);
                return Lookup::Answer(answer(entry, head, CacheStatus::Hit));
            }
            let status = match entry {
                Some(_) => CacheStatus::Expired,
                None => CacheStatus::Miss,
            };
            // A HEAD's answer is not stored: nobody would wait for it.
            if head {
                return Lookup::Fetch(self.fetch(None, status, entry, None, request));
            }
            if waited {
                return Lookup::Fetch(self.fetch(Some(key), status, entry, None, request));
            }
            match self.store.join(&key) {
                Join::Lead(flight) => {
                    return Lookup::Fetch(self.fetch(
                        Some(key),
                        status,
                        entry,
                        Some(flight),
                        request,
                    ));
                }
                Join::Wait(mut done) => {
                    // Err: the flight ended (its sender is gone); it never sends.
                    let end = done.changed();
                    let _ = deadline::within(deadline::after(LOCK_TIMEOUT), end).await;
                    waited = true;
                }
            }
        }
    }

    fn fetch(
        &self,
        key: Option<String>,
        status: CacheStatus,
        stale: Option<Arc<Entry>>,
        flight: Option<FlightGuard>,
        request: &request::Parts,
    ) -> Fetch {
        let storable = key.is_some();
        Fetch {
            settings: Arc::clone(&self.settings),
            store: Arc::clone(&self.store),
            status,
            stale,
            flight,
            head: request.method == Method::HEAD,
            authorized: request.headers.contains_key(AUTHORIZATION),
            // Only an answer that may be stored needs them (for its `Vary`).
            request_headers: match storable {
                true => request.headers.clone(),
                false => HeaderMap::new(),
            },
            key,
        }
    }

    /// A `PURGE`: removes the entry of the request's URL if the purge key is right.
    fn purge(&self, request: &request::Parts) -> Reject {
        let Some(secret) = &self.settings.purge_key else {
            return reject(
                StatusCode::FORBIDDEN,
                "purge_disabled",
                "PURGE is not enabled on this route: its proxy-cache has no purge_key",
            );
        };
        let Some(given) = request.headers.get(PURGE_KEY_HEADER) else {
            return reject(
                StatusCode::UNAUTHORIZED,
                "purge_key_missing",
                "PURGE needs the purge key in X-Purge-Key",
            );
        };
        if !same_secret(given.as_bytes(), secret.as_bytes()) {
            return reject(
                StatusCode::FORBIDDEN,
                "purge_key_invalid",
                "the purge key is wrong",
            );
        }
        let key = key::render(&self.settings.key, request, "GET");
        if self.store.remove(&key) {
            json_body(StatusCode::OK, &json!({"purged": key}))
        } else {
            reject(
                StatusCode::NOT_FOUND,
                "not_cached",
                "nothing is cached for this URL",
            )
        }
    }

    /// Its store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

impl Plugin for ProxyCache {
    fn name(&self) -> &'static str {
        "proxy-cache"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn cache(&self) -> Option<&ProxyCache> {
        Some(self)
    }
}

/// Every item of `items` read by `read`; the first it cannot read fails the compile.
fn each<T: fmt::Debug, U>(
    items: &[T],
    field: &str,
    read: impl Fn(&T) -> Option<U>,
) -> Result<Vec<U>, String> {
    items
        .iter()
        .map(|item| read(item).ok_or_else(|| format!("{field}: {item:?} is not valid here")))
        .collect()
}

/// Compares a given secret with the configured one in time that depends on the length only.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    given.len() == secret.len()
        && given
            .iter()
            .zip(secret)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Whether `headers` carry what `entry`'s request had for each header its answer varies on.
fn varies_alike(entry: &Entry, headers: &HeaderMap) -> bool {
    entry
        .vary
        .iter()
        .all(|(name, value)| joined(headers, name) == *value)
}

/// All lines of `name` in `headers`, joined with `", "`; `None` when there is none.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<Bytes> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    let mut out = BytesMut::from(first.as_bytes());
    for line in lines {
        out.extend_from_slice(b", ");
        out.extend_from_slice(line.as_bytes());
    }
    Some(out.freeze())
}

/// The answer `entry` makes (a `HEAD`'s without its body, with its length).
fn answer(entry: &Entry, head: bool, status: CacheStatus) -> Reject {
    let body = match head {
        true => Bytes::new(),
        false => entry.body.clone(),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = entry.status;
    let headers = response.headers_mut();
    *headers = entry.headers.clone();
    headers.insert(AGE, HeaderValue::from(entry.age().as_secs()));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
    headers.insert(&X_CACHE_STATUS, HeaderValue::from_static(status.as_str()));
    response
}

/// A request the cache did not answer, on its way upstream: what to do with the outcome.
/// Dropping it counts the answer by its status and ends its flight, if it led one.
pub struct Fetch {
    settings: Arc<Settings>,
    store: Arc<Store>,
    /// Where its answer is stored; `None`: it is not.
    key: Option<String>,
    status: CacheStatus,
    /// The expired entry it may fall back on.
    stale: Option<Arc<Entry>>,
    flight: Option<FlightGuard>,
    head: bool,
    authorized: bool,
    request_headers: HeaderMap,
}

impl Drop for Fetch {
    fn drop(&mut self) {
        self.store.record(self.status);
    }
}

impl Fetch {
    /// How the answer is marked so far.
    pub fn status(&self) -> CacheStatus {
        self.status
    }

    /// The upstream failed (no answer, or a 5xx): the expired entry's answer (`STALE`), if it
    /// is still within `stale_if_error_s`.
    pub fn stale(&mut self) -> Option<Reject> {
        let entry = self
            .stale
            .as_ref()
            .filter(|e| e.freshness() != Freshness::Dead)?;
        self.status = CacheStatus::Stale;
        Some(answer(entry, self.head, CacheStatus::Stale))
    }

    /// The upstream answered `status` with `headers`: marks the answer (`X-Cache-Status`)
    /// and, if it may be stored, returns the filter its body must stream through to be.
    pub fn admit(
        &mut self,
        status: StatusCode,
        headers: &mut HeaderMap,
    ) -> Option<Box<dyn BodyFilter>> {
        headers.insert(
            &X_CACHE_STATUS,
            HeaderValue::from_static(self.status.as_str()),
        );
        let key = self.key.take()?;
        let (fresh, vary) = self.storable(status, headers)?;
        let length = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let limit = self.store.entry_limit();
        if length.is_some_and(|length| length > limit) {
            return None;
        }
        let initial_age = headers
            .get(AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_secs);
        let mut stored = headers.clone();
        stored.remove(AGE);
        stored.remove(&X_CACHE_STATUS);
        let capacity = length.unwrap_or(8 * 1024).min(limit);
        Some(Box::new(Capture {
            store: Arc::clone(&self.store),
            key,
            head: Some(Head {
                status,
                headers: stored,
                vary,
                fresh,
                stale: self.settings.stale,
                initial_age,
            }),
            body: BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0)),
            limit,
            length,
            flight: self.flight.take(),
        }))
    }

    /// Whether an answer with `status` and `headers` may be stored: for how long it is fresh,
    /// and the request headers it varies on.
    fn storable(&self, status: StatusCode, headers: &HeaderMap) -> Option<(Duration, VaryValues)> {
        let settings = &self.settings;
        if !settings.statuses.contains(&status) || headers.contains_key(SET_COOKIE) {
            return None;
        }
        let mut vary = Vec::new();
        for line in headers.get_all(VARY) {
            for name in line.to_str().ok()?.split(',').map(str::trim) {
                if name.is_empty() {
                    continue;
                }
                // `*` (a valid header name, so said first), or a name that is no header
                // name: nothing could ever match it.
                if name == "*" {
                    return None;
                }
                let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                let value = joined(&self.request_headers, &name);
                vary.push((name, value));
            }
        }
        let mut fresh = settings.ttl;
        if settings.cache_control {
            let directives = Directives::of(headers);
            if directives.no_store || directives.no_cache || directives.private {
                return None;
            }
            let shared =
                directives.public || directives.must_revalidate || directives.s_maxage.is_some();
            if self.authorized && !shared {
                return None;
            }
            if let Some(lifetime) = directives.lifetime() {
                fresh = Duration::from_secs(lifetime);
            }
        }
        if fresh.is_zero() && settings.stale.is_zero() {
            return None;
        }
        Some((fresh, vary))
    }
}

/// What an entry will be made of, but its body.
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    vary: VaryValues,
    fresh: Duration,
    stale: Duration,
    initial_age: Duration,
}

/// Copies an answer's body as it streams to the client; stores the entry when it ends whole.
/// An answer that outgrows the entry bound is let go (it streams on, unstored), and so is one
/// that breaks off or whose client goes away (the filter is dropped without its end).
struct Capture {
    store: Arc<Store>,
    key: String,
    /// `None` once the answer will not be stored.
    head: Option<Head>,
    body: BytesMut,
    limit: u64,
    length: Option<u64>,
    /// Ends (and wakes the waiting requests) when the answer is stored or let go.
    flight: Option<FlightGuard>,
}

impl BodyFilter for Capture {
    fn chunk(&mut self, chunk: Bytes) -> Bytes {
        if self.head.is_some() {
            if (self.body.len() + chunk.len()) as u64 > self.limit {
                self.head = None;
                self.body = BytesMut::new();
                self.flight = None;
            } else {
                self.body.extend_from_slice(&chunk);
            }
        }
        chunk
    }

    fn end(&mut self) -> Bytes {
        if let Some(head) = self.head.take()
            && self
                .length
                .is_none_or(|length| length == self.body.len() as u64)
        {
            let body = std::mem::take(&mut self.body).freeze();
            let entry = Entry::new(
                head.status,
                head.headers,
                body,
                head.vary,
                head.fresh,
                head.stale,
                head.initial_age,
            );
            self.store.insert(std::mem::take(&mut self.key), entry);
        }
        self.flight = None;
        Bytes::new()
    }

    fn length(&self) -> Option<u64> {
        self.length
    }
}

#[cfg(test)]
mod tests;
