//! `limit-req`: a leaky bucket per key (the algorithm of nginx's `limit_req` and APISIX's
//! `limit-req`).
//!
//! Each key has an `excess`: how many requests over `rate` it has made, draining at `rate` per
//! second. A request adds one; if the excess would pass `burst`, the request is refused with
//! `rejected_code` (and does not count). Otherwise it is let through after `excess / rate`
//! seconds — so requests over the rate are spaced out to the rate — or at once with `nodelay`.
//!
//! Buckets are local to each data plane and live outside the compiled runtime (in
//! [`super::BuildEnv`]), so a config push does not reset them; a changed config starts fresh
//! buckets (the config is part of the bucket's name).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, StatusCode, request};
use serde_json::Value;

use super::expiring::ExpiringMap;
use super::key_source::KeySource;
use super::{Access, BuildEnv, Plugin, RequestCtx, reject};
use gateway_proto::plugins::limit_req::Config;

/// One key's bucket: its excess (in requests) at `at`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    excess: f64,
    at: Instant,
}

/// Every bucket of this data plane, shared by every snapshot's plugin instances. A bucket
/// expires when it has drained so far that the next request would be free: then it is no
/// bucket at all.
#[derive(Debug)]
pub struct Buckets {
    buckets: ExpiringMap<Bucket>,
    /// The origin of the map's millisecond clock.
    epoch: Instant,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            buckets: ExpiringMap::default(),
            epoch: Instant::now(),
        }
    }
}

impl Buckets {
    /// Takes one request for `key` at `now`: `Ok(delay)` to let it through after `delay`,
    /// `Err(())` to refuse it.
    fn take(&self, key: &str, rate: f64, burst: f64, now: Instant) -> Result<Duration, ()> {
        let now_ms = millis(now.saturating_duration_since(self.epoch));
        // The bucket is gone (as good as empty) once a request would be free again: after
        // `excess + 1` requests' worth of draining from now.
        let expiry = |requests: f64| now_ms.saturating_add(millis_f64(requests / rate));
        self.buckets.update(key, now_ms, |live| {
            let Some(bucket) = live else {
                // The first request of a key is within the rate.
                let fresh = Bucket {
                    excess: 0.0,
                    at: now,
                };
                return (fresh, expiry(1.0), Ok(Duration::ZERO));
            };
            let drained = rate * now.saturating_duration_since(bucket.at).as_secs_f64();
            let excess = (bucket.excess - drained + 1.0).max(0.0);
            if excess > burst {
                // Refused requests do not count: the bucket stays as it was.
                // Its excess now is `excess - 1`, positive since `excess > burst >= 0`.
                return (*bucket, expiry(excess), Err(()));
            }
            // A tiny rate can make this astronomically long (even not a valid `Duration`);
            // the client's own timeout ends such a wait long before.
            let delay = Duration::try_from_secs_f64(excess / rate).unwrap_or(Duration::MAX);
            (Bucket { excess, at: now }, expiry(excess + 1.0), Ok(delay))
        })
    }
}

/// Whole milliseconds, rounded up, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Seconds as whole milliseconds, rounded up; `as` saturates (and makes NaN 0).
fn millis_f64(seconds: f64) -> u64 {
    (seconds * 1000.0).ceil() as u64
}

/// A compiled `limit-req`.
#[derive(Debug)]
pub struct LimitReq {
    priority: i32,
    scope: String,
    rate: f64,
    burst: f64,
    nodelay: bool,
    key: KeySource,
    rejected: StatusCode,
    buckets: Arc<Buckets>,
}

impl LimitReq {
    /// Compiles a validated config configured at `scope` (e.g. `routes/r1`).
    pub fn build(
        priority: i32,
        config: &Value,
        scope: &str,
        env: &BuildEnv,
    ) -> Result<LimitReq, String> {
        let config: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        if !(config.rate.is_finite() && config.rate > 0.0) {
            return Err(format!("rate {} must be above 0", config.rate));
        }
        if !(config.burst.is_finite() && config.burst >= 0.0) {
            return Err(format!("burst {} must be 0 or more", config.burst));
        }
        let key = KeySource::parse(&config.key)?;
        let rejected = StatusCode::from_u16(config.rejected_code)
            .map_err(|_| format!("rejected_code {} is not a status", config.rejected_code))?;
        Ok(LimitReq {
            priority,
            scope: format!("{scope}:{}:{}:{}", config.rate, config.burst, config.key),
            rate: config.rate,
            burst: config.burst,
            nodelay: config.nodelay,
            key,
            rejected,
            buckets: Arc::clone(&env.limit_req),
        })
    }
}

impl Plugin for LimitReq {
    fn name(&self) -> &'static str {
        "limit-req"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn access(&self, ctx: &mut RequestCtx<'_>, request: &mut request::Parts) -> Access {
        let key = format!("{}:{}", self.scope, self.key.value(ctx, request));
        match self
            .buckets
            .take(&key, self.rate, self.burst, Instant::now())
        {
            Err(()) => Access::Reject(reject(
                self.rejected,
                "rate_limited",
                "request rate over the limit",
            )),
            Ok(delay) if self.nodelay || delay.is_zero() => Access::Continue,
            Ok(delay) => Access::Pending(Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(HeaderMap::new())
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_delays_within_the_burst_refuses_beyond_and_drains() {
        let buckets = Buckets::default();
        let t0 = Instant::now();
        // rate 2/s, burst 1: the first is free, the second waits 0.5 s, the third is refused.
        assert_eq!(buckets.take("k", 2.0, 1.0, t0), Ok(Duration::ZERO));
        assert_eq!(
            buckets.take("k", 2.0, 1.0, t0),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(buckets.take("k", 2.0, 1.0, t0), Err(()));
        assert_eq!(buckets.take("other", 2.0, 1.0, t0), Ok(Duration::ZERO));
        // Half a second drains one request: the next one waits 0.5 s again.
        let later = t0 + Duration::from_millis(500);
        assert_eq!(
            buckets.take("k", 2.0, 1.0, later),
            Ok(Duration::from_millis(500))
        );
        // After long enough the bucket is empty: the next one goes at once.
        let much_later = t0 + Duration::from_secs(10);
        assert_eq!(buckets.take("k", 2.0, 1.0, much_later), Ok(Duration::ZERO));
        for i in 0..20_000 {
            let _ = buckets.take(&format!("key{i}"), 2.0, 1.0, much_later);
        }
        assert_eq!(buckets.take("z", 2.0, 0.0, much_later), Ok(Duration::ZERO));
        assert_eq!(
            buckets.take("z", 2.0, 0.0, much_later),
            Err(()),
            "burst 0 refuses any excess"
        );
        // Extreme configs never panic.
        let tiny = f64::MIN_POSITIVE;
        assert_eq!(buckets.take("t", tiny, 2.0, t0), Ok(Duration::ZERO));
        assert_eq!(buckets.take("t", tiny, 2.0, t0), Ok(Duration::MAX));
    }

    #[test]
    fn a_fast_limit_does_not_drain_a_slow_limits_buckets() {
        let buckets = Buckets::default();
        let t0 = Instant::now();
        // A login limit of one request per 10 s, burst 0: the second attempt is refused.
        assert_eq!(buckets.take("login:ip", 0.1, 0.0, t0), Ok(Duration::ZERO));
        // A busy route with rate 100 sweeps its own keys many times over…
        let soon = t0 + Duration::from_millis(50);
        for i in 0..20_000 {
            let _ = buckets.take(&format!("busy:{i}"), 100.0, 0.0, soon);
        }
        // …and the login bucket still holds its request.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(buckets.take("login:ip", 0.1, 0.0, later), Err(()));
        assert_eq!(
            buckets.take("login:ip", 0.1, 0.0, t0 + Duration::from_secs(11)),
            Ok(Duration::ZERO)
        );
    }
}
