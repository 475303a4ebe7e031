//! `limit-count`: at most `count` requests per `time_window` seconds per key (fixed window).
//!
//! Where the count is kept is the config's `policy`: `local` (each data plane counts alone),
//! `fleet` (each data plane counts alone but admits only its share of `count`, see
//! [`FleetShare`]) or `redis` (one count shared by every data plane through `--redis-url`).
//! Left out, a data plane with `--redis-url` uses Redis and one without counts locally. A
//! config asking for `redis` on a data plane without one fails the compile (a NACK), rather
//! than quietly counting per data plane.
//!
//! Windows are aligned to the wall clock (`now / window`), so data planes sharing Redis agree
//! on them. When Redis cannot answer within 100 ms, the data plane counts locally for that
//! request (the limit then holds per data plane instead of globally), logs a warning and counts
//! `gateway_ratelimit_redis_errors_total`: a Redis outage never turns into an outage of the
//! routes it protects.
//!
//! Counters live outside the compiled runtime, so a config push does not reset them, and
//! neither does a change of the fleet's size: the share is read per request, the count kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, StatusCode, request};
use serde_json::Value;
use tokio::sync::OnceCell;

use super::expiring::{ExpiringMap, bounded_key};
use super::key_source::KeySource;
use super::{Access, BuildEnv, Plugin, Reject, RequestCtx, reject};
use crate::transport::deadline;
use gateway_proto::plugins::limit_count::{Config, Policy};

const REDIS_TIMEOUT: Duration = Duration::from_millis(100);

/// How many data planes are live, as the control plane last said: what `policy: fleet` divides
/// `count` by. One per data plane (in the [`BuildEnv`]), set by the config stream, read by every
/// request of a `fleet` limit.
///
/// Until the control plane has said (a fresh process, or one serving its disk cache with no
/// control plane reachable), the size is unknown and each data plane admits the whole `count`,
/// as Envoy's local rate limit does before it knows its cluster: a limit must not refuse
/// traffic it cannot prove is over. A data plane cut off from the control plane keeps the
/// last size it was told.
#[derive(Clone, Debug, Default)]
pub struct FleetShare {
    /// Live data planes; 0 while unknown.
    live: Arc<AtomicU32>,
}

impl FleetShare {
    /// Records that `live` data planes are live now (0: unknown).
    pub fn set(&self, live: u32) {
        self.live.store(live, Ordering::Relaxed);
    }

    /// The live data planes last recorded; `None` while unknown.
    pub fn live(&self) -> Option<u32> {
        Some(self.live.load(Ordering::Relaxed)).filter(|&live| live > 0)
    }

    /// What this data plane admits of a fleet-wide `count`.
    pub fn limit(&self, count: u64) -> u64 {
        share(count, self.live().unwrap_or(1))
    }
}

/// One data plane's share of `count` among `live`: rounded up, so a fleet admits at most
/// `count + live - 1` per window when its load is spread evenly (never fewer than `count`),
/// and a route whose `count` is below the fleet's size still admits a request per data plane
/// instead of none.
fn share(count: u64, live: u32) -> u64 {
    count.div_ceil(u64::from(live.max(1)))
}

/// Per-data-plane fixed-window counters, shared by every snapshot's plugin instances: each
/// key's window index and count, expiring with its window.
#[derive(Debug, Default)]
pub struct LocalCounters {
    counts: ExpiringMap<(u64, u64)>,
}

impl LocalCounters {
    /// Counts one request for `key` in window `index`, which ends `remaining_ms` after
    /// `now_ms` (coarse monotonic); returns the count so far.
    fn incr(&self, key: &str, index: u64, now_ms: u64, remaining_ms: u64) -> u64 {
        self.counts.update(key, now_ms, |live| {
            let count = match live {
                Some(&(window, count)) if window == index => count + 1,
                _ => 1,
            };
            ((index, count), now_ms.saturating_add(remaining_ms), count)
        })
    }
}

/// Counters shared by every data plane through one Redis.
#[derive(Clone)]
pub struct RedisCounters {
    client: redis::Client,
    connection: Arc<OnceCell<redis::aio::ConnectionManager>>,
    errors: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounters").finish_non_exhaustive()
    }
}

const INCR_SCRIPT: &str = r"
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count";

impl RedisCounters {
    /// Counters at `url` (`redis://127.0.0.1:6379`); connects on first use.
    pub fn new(url: &str) -> Result<RedisCounters, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis url {url:?}: {e}"))?;
        Ok(RedisCounters {
            client,
            connection: Arc::new(OnceCell::new()),
            errors: Arc::new(AtomicU64::new(0)),
        })
    }

    /// How many Redis calls failed (and fell back to local counting).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Appends `gateway_ratelimit_redis_errors_total` for `redis` (0 without one) in the
    /// Prometheus text format.
    pub fn render_metrics(redis: Option<&RedisCounters>, out: &mut String) {
        use std::fmt::Write as _;
        let errors = redis.map_or(0, RedisCounters::errors);
        // Writing to a String cannot fail; the result is ignored for that reason.
        let _ = write!(
            out,
            "# HELP gateway_ratelimit_redis_errors_total Redis calls of limit-count that failed or \
             timed out (each such request was counted locally instead).\n\
             # TYPE gateway_ratelimit_redis_errors_total counter\n\
             gateway_ratelimit_redis_errors_total {errors}\n"
        );
    }

    async fn incr(&self, key: &str, ttl_s: u64) -> Result<u64, String> {
        let call = async {
            let connection = self
                .connection
                .get_or_try_init(|| redis::aio::ConnectionManager::new(self.client.clone()))
                .await
                .map_err(|e| e.to_string())?;
            let mut connection = connection.clone();
            redis::Script::new(INCR_SCRIPT)
                .key(key)
                .arg(ttl_s)
                .invoke_async::<u64>(&mut connection)
                .await
                .map_err(|e| e.to_string())
        };
        match deadline::within(deadline::after(REDIS_TIMEOUT), call).await {
            Ok(result) => result,
            Err(_) => Err("timed out".into()),
        }
    }
}

/// A compiled `limit-count`.
#[derive(Debug)]
pub struct LimitCount {
    priority: i32,
    scope: String,
    count: u64,
    window_s: u64,
    key: KeySource,
    rejected: StatusCode,
    local: Arc<LocalCounters>,
    counting: Counting,
}

/// Where a compiled `limit-count` counts, and what it admits.
#[derive(Debug)]
enum Counting {
    /// `count` per data plane.
    Local,
    /// This data plane's share of `count`, counted locally.
    Fleet(FleetShare),
    /// `count` through Redis, locally while Redis does not answer.
    Redis(RedisCounters),
}

impl LimitCount {
    /// Compiles a validated config configured at `scope` (e.g. `routes/r1`).
    pub fn build(
        priority: i32,
        config: &Value,
        scope: &str,
        env: &BuildEnv,
    ) -> Result<LimitCount, String> {
        let config: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        let key = KeySource::parse(&config.key)?;
        let rejected = StatusCode::from_u16(config.rejected_code)
            .map_err(|_| format!("rejected_code {} is not a status", config.rejected_code))?;
        let counting = match (config.policy, &env.redis) {
            (None | Some(Policy::Redis), Some(redis)) => Counting::Redis(redis.clone()),
            (Some(Policy::Redis), None) => {
                return Err(
                    "policy \"redis\" needs a data plane started with --redis-url".to_owned(),
                );
            }
            (None | Some(Policy::Local), _) => Counting::Local,
            (Some(Policy::Fleet), _) => Counting::Fleet(env.fleet.clone()),
        };
        Ok(LimitCount {
            priority,
            // The config is part of the counter's name: a changed limit starts a fresh count.
            scope: format!(
                "{scope}:{}:{}:{}",
                config.count, config.time_window, config.key
            ),
            count: config.count,
            window_s: config.time_window.max(1),
            key,
            rejected,
            local: Arc::clone(&env.local_counters),
            counting,
        })
    }
}

/// Adds the rate-limit headers to `headers`.
fn add_rate_headers(headers: &mut HeaderMap, limit: u64, used: u64, reset_s: u64) {
    // Names built once: parsing a name per insert was a tenth of this plugin's cost.
    static LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
    static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
    static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
    headers.insert(&LIMIT, HeaderValue::from(limit));
    headers.insert(&REMAINING, HeaderValue::from(limit.saturating_sub(used)));
    headers.insert(&RESET, HeaderValue::from(reset_s));
}

/// The refusal of a request over the limit.
fn refusal(rejected: StatusCode) -> Reject {
    reject(
        rejected,
        "rate_limited",
        "too many requests in this time window",
    )
}

/// The rate-limit headers, and the refusal (carrying them) when `used` is over `limit`.
fn decide(limit: u64, used: u64, reset_s: u64, rejected: StatusCode) -> Result<HeaderMap, Reject> {
    let mut headers = HeaderMap::with_capacity(3);
    add_rate_headers(&mut headers, limit, used, reset_s);
    if used <= limit {
        return Ok(headers);
    }
    let mut response = refusal(rejected);
    response.headers_mut().extend(headers);
    Err(response)
}

impl Plugin for LimitCount {
    fn name(&self) -> &'static str {
        "limit-count"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn access(&self, ctx: &mut RequestCtx<'_>, request: &mut request::Parts) -> Access {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let index = now / self.window_s;
        let reset_s = self.window_s - now % self.window_s;
        let value = self.key.value(ctx, request);
        let mut key = String::with_capacity(self.scope.len() + 1 + value.len());
        key.push_str(&self.scope);
        key.push(':');
        key.push_str(&value);
        let rejected = self.rejected;
        let now_ms = crate::clock::coarse_now_ms();
        let remaining_ms = reset_s.saturating_mul(1000);
        let (limit, redis) = match &self.counting {
            Counting::Local => (self.count, None),
            Counting::Fleet(share) => (share.limit(self.count), None),
            Counting::Redis(redis) => (self.count, Some(redis.clone())),
        };
        let Some(redis) = redis else {
            let used = self.local.incr(&key, index, now_ms, remaining_ms);
            // Straight into the answer's headers; the response phase adds them to a refusal too.
            add_rate_headers(&mut ctx.response_headers, limit, used, reset_s);
            return if used <= limit {
                Access::Continue
            } else {
                Access::Reject(refusal(rejected))
            };
        };
        let local = Arc::clone(&self.local);
        let ttl_s = self.window_s + 1;
        Access::Pending(Box::pin(async move {
            let shared_key = format!("gw:lc:{}:{index}", bounded_key(&key));
            let used = match redis.incr(&shared_key, ttl_s).await {
                Ok(used) => used,
                Err(error) => {
                    let failures = redis.errors.fetch_add(1, Ordering::Relaxed);
                    if failures % 1000 == 0 {
                        tracing::warn!(%error, "redis unreachable: limit-count counts locally");
                    }
                    local.incr(&key, index, now_ms, remaining_ms)
                }
            };
            decide(limit, used, reset_s, rejected)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_windows_count_and_reset() {
        let counters = LocalCounters::default();
        let hour = 3_600_000;
        assert_eq!(counters.incr("k", 1, 10, hour), 1);
        assert_eq!(counters.incr("k", 1, 20, hour), 2);
        assert_eq!(counters.incr("other", 1, 20, hour), 1);
        assert_eq!(
            counters.incr("k", 2, 30, hour),
            1,
            "a new window starts from zero"
        );
    }

    #[test]
    fn short_windows_do_not_sweep_away_long_windows_counters() {
        let counters = LocalCounters::default();
        // `/login`: 5 per hour; its window index is small.
        for _ in 0..5 {
            counters.incr("login:198.51.100.7", 491_000, 1000, 3_600_000);
        }
        // Other routes count per second, with large window indexes, over many keys.
        for i in 0..70_000u64 {
            counters.incr(
                &format!("api:{i}"),
                1_700_000_000 + i / 1000,
                1000 + i,
                1000,
            );
        }
        assert_eq!(
            counters.incr("login:198.51.100.7", 491_000, 80_000, 3_520_000),
            6,
            "the sixth attempt of the hour is still counted as the sixth"
        );
    }

    /// `plugin`'s access phase on a request from 127.0.0.1 to route `r`.
    fn access(plugin: &LimitCount) -> Access {
        let route: gateway_proto::model::Route =
            serde_json::from_value(serde_json::json!({"paths": ["/"], "upstream_id": "u"}))
                .unwrap();
        let chain = std::sync::Arc::new(super::super::PluginChain::default());
        let consumers = super::super::Consumers::default();
        let mut ctx = RequestCtx::new(
            super::super::RouteRef {
                id: "r",
                spec: &route,
            },
            &chain,
            &[],
            "127.0.0.1:5000".parse().unwrap(),
            &consumers,
        );
        let (mut parts, ()) = http::Request::new(()).into_parts();
        plugin.access(&mut ctx, &mut parts)
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_counted_and_exported() {
        // A port nothing listens on: the connection is refused (or the call times out).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let redis = RedisCounters::new(&format!("redis://127.0.0.1:{port}")).unwrap();
        let mut text = String::new();
        RedisCounters::render_metrics(Some(&redis), &mut text);
        assert!(
            text.contains("\ngateway_ratelimit_redis_errors_total 0\n"),
            "{text}"
        );

        let env = BuildEnv {
            redis: Some(redis.clone()),
            ..BuildEnv::default()
        };
        let config = serde_json::json!({"count": 5, "time_window": 60, "key": "remote_addr", "rejected_code": 429});
        let plugin = LimitCount::build(1002, &config, "routes/r", &env).unwrap();
        let Access::Pending(check) = access(&plugin) else {
            panic!("with Redis the check is asynchronous");
        };
        // Counted locally: the request goes on.
        let headers = check.await.unwrap();
        assert_eq!(headers["x-ratelimit-remaining"], "4");
        assert_eq!(redis.errors(), 1);
        let mut text = String::new();
        RedisCounters::render_metrics(env.redis.as_ref(), &mut text);
        assert!(
            text.contains("\ngateway_ratelimit_redis_errors_total 1\n"),
            "{text}"
        );
        let mut without = String::new();
        RedisCounters::render_metrics(None, &mut without);
        assert!(without.ends_with("gateway_ratelimit_redis_errors_total 0\n"));
    }

    #[test]
    fn a_fleet_share_is_rounded_up_and_never_zero_for_a_positive_count() {
        // (count, live data planes, each one's share)
        let table = [
            (30, 1, 30),
            (30, 3, 10),
            (30, 2, 15),
            (30, 4, 8),
            (10, 3, 4),
            (2, 5, 1),
            (0, 3, 0),
            (30, 0, 30),
            (u64::MAX, 2, u64::MAX / 2 + 1),
        ];
        for (count, live, expected) in table {
            assert_eq!(share(count, live), expected, "{count} / {live}");
            if live > 0 && count < u64::MAX {
                let total = share(count, live) * u64::from(live);
                assert!(
                    total >= count && total < count + u64::from(live),
                    "{count} / {live}"
                );
            }
        }
        let fleet = FleetShare::default();
        assert_eq!(fleet.live(), None);
        assert_eq!(fleet.limit(30), 30, "unknown: the whole count");
        fleet.set(3);
        assert_eq!((fleet.live(), fleet.limit(30)), (Some(3), 10));
    }

    /// How many of `requests` requests from one address `plugin` admits.
    fn admitted(plugin: &LimitCount, requests: usize) -> usize {
        (0..requests)
            .filter(|_| matches!(access(plugin), Access::Continue))
            .count()
    }

    #[test]
    fn a_fleet_limit_admits_its_share_and_a_new_share_keeps_the_window_count() {
        let env = BuildEnv::default();
        let config = serde_json::json!({"count": 30, "time_window": 86400, "key": "route", "rejected_code": 429, "policy": "fleet"});
        let plugin = LimitCount::build(1002, &config, "routes/r", &env).unwrap();
        env.fleet.set(3);
        // A day-long window: the test does not straddle two (unless run at midnight UTC).
        assert_eq!(admitted(&plugin, 8), 8, "a share of 10");
        // A data plane left: a share of 15, counting on from the 8 seen (refusals count too).
        env.fleet.set(2);
        assert_eq!(admitted(&plugin, 10), 7, "the 9th to the 15th");
        env.fleet.set(1);
        assert_eq!(admitted(&plugin, 20), 12, "the 19th to the 30th");
        // `local` admits the whole count whatever the fleet's size.
        let local = serde_json::json!({"count": 30, "time_window": 86400, "key": "route", "rejected_code": 429, "policy": "local"});
        let local = LimitCount::build(1002, &local, "routes/other", &env).unwrap();
        env.fleet.set(3);
        assert_eq!(admitted(&local, 40), 30);
    }

    #[test]
    fn policy_redis_without_a_redis_fails_the_compile() {
        let config = serde_json::json!({"count": 1, "time_window": 1, "key": "route", "rejected_code": 429, "policy": "redis"});
        let error = LimitCount::build(1002, &config, "routes/r", &BuildEnv::default()).unwrap_err();
        assert!(error.contains("--redis-url"), "{error}");
        let redis = RedisCounters::new("redis://127.0.0.1:1").unwrap();
        let env = BuildEnv {
            redis: Some(redis),
            ..BuildEnv::default()
        };
        let local = serde_json::json!({"count": 1, "time_window": 1, "key": "route", "rejected_code": 429, "policy": "local"});
        let plugin = LimitCount::build(1002, &local, "routes/r", &env).unwrap();
        assert!(matches!(plugin.counting, Counting::Local));
        let left_out =
            serde_json::json!({"count": 1, "time_window": 1, "key": "route", "rejected_code": 429});
        let plugin = LimitCount::build(1002, &left_out, "routes/r", &env).unwrap();
        assert!(matches!(plugin.counting, Counting::Redis(_)));
    }

    #[test]
    fn the_third_request_of_two_is_refused_with_headers() {
        let status = StatusCode::TOO_MANY_REQUESTS;
        let ok = decide(2, 2, 10, status).unwrap();
        assert_eq!(ok["x-ratelimit-remaining"], "0");
        let refused = decide(2, 3, 10, status).unwrap_err();
        assert_eq!(refused.status(), status);
        assert_eq!(refused.headers()["x-ratelimit-limit"], "2");
    }
}
