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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, StatusCode, request};
use serde_json::Value;

use super::key_source::KeySource;
use super::{Access, BuildEnv, Plugin, RequestCtx, reject};
use gateway_proto::plugins::limit_req::Config;

const SHARDS: usize = 16;
/// A shard this large is swept of drained buckets before it grows further.
const PRUNE_AT: usize = 4096;

/// One key's bucket: its excess (in requests) at `at`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    excess: f64,
    at: Instant,
}

/// Every bucket of this data plane, shared by every snapshot's plugin instances.
#[derive(Debug, Default)]
pub struct Buckets {
    shards: [Mutex<HashMap<String, Bucket>>; SHARDS],
}

impl Buckets {
    /// Takes one request for `key` at `now`: `Ok(delay)` to let it through after `delay`,
    /// `Err(())` to refuse it.
    fn take(&self, key: &str, rate: f64, burst: f64, now: Instant) -> Result<Duration, ()> {
        let shard = fnv(key) % SHARDS;
        let mut buckets = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= PRUNE_AT {
            // A bucket drained so far that the next request would be free is no bucket at all.
            buckets.retain(|_, b| {
                b.excess + 1.0 - rate * now.saturating_duration_since(b.at).as_secs_f64() > 0.0
            });
        }
        let Some(bucket) = buckets.get_mut(key) else {
            // The first request of a key is within the rate.
            buckets.insert(
                key.to_owned(),
                Bucket {
                    excess: 0.0,
                    at: now,
                },
            );
            return Ok(Duration::ZERO);
        };
        let drained = rate * now.saturating_duration_since(bucket.at).as_secs_f64();
        let excess = (bucket.excess - drained + 1.0).max(0.0);
        if excess > burst {
            return Err(());
        }
        *bucket = Bucket { excess, at: now };
        // A tiny rate can make this astronomically long (even not a valid `Duration`); the
        // client's own timeout ends such a wait long before.
        Ok(Duration::try_from_secs_f64(excess / rate).unwrap_or(Duration::MAX))
    }
}

fn fnv(text: &str) -> usize {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    }) as usize
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
        for i in 0..(PRUNE_AT * SHARDS) {
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
}
