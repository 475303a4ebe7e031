//! Hedged requests, the compiled side: when a request's first attempt may be hedged, each
//! node's latency estimate (for `"delay_ms": "p95"`), and the hedge counters of an upstream.
//! The request path sends the hedges (`proxy::forward::hedge`).
//!
//! The latency estimate is a fixed-bucket histogram per node: four buckets per power of two of
//! microseconds (each at most 25% wide), one relaxed add per sample, so every exchange can feed
//! it. It forgets the past by halving every bucket each [`DECAY_EVERY`] samples, so it follows
//! the last one or two thousand exchanges of the node. The 95th percentile is the upper bound of
//! the bucket it falls in (it errs on the late side by at most a bucket's width). Until a node
//! has [`MIN_SAMPLES`] samples, [`DEFAULT_P95_DELAY`] stands in.
//!
//! An attempt cancelled because another answered first is recorded at the time it was
//! cancelled: a lower bound of its latency. Under heavy hedging the estimate of a slow node
//! therefore reads low, which makes it hedge sooner; the retry budget bounds what that costs.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use gateway_proto::model::{Hedge, HedgeDelay};

use super::{Node, Runtime, UpstreamRuntime};

/// Samples a node needs before its 95th percentile is used.
pub const MIN_SAMPLES: u64 = 20;
/// The delay `"p95"` stands for while a node has fewer than [`MIN_SAMPLES`] samples.
pub const DEFAULT_P95_DELAY: Duration = Duration::from_millis(50);
/// Every this many samples, each bucket is halved: older samples weigh half as much.
pub const DECAY_EVERY: u64 = 1024;
/// Samples above 2^32 µs (about 71 minutes) fall in the last bucket.
const MAX_EXPONENT: u32 = 31;
/// Four buckets below 4 µs (one per microsecond), then four per power of two from 2^2 to
/// 2^`MAX_EXPONENT`.
const BUCKETS: usize = (4 * MAX_EXPONENT) as usize;

/// The bucket of a sample of `micros`: `micros` itself below 4, else four per power of two
/// (the top bit's position and the two bits below it).
fn bucket_of(micros: u64) -> usize {
    let micros = micros.min((1 << (MAX_EXPONENT + 1)) - 1);
    if micros < 4 {
        return micros as usize;
    }
    let exponent = 63 - micros.leading_zeros();
    let mantissa = (micros >> (exponent - 2)) & 3;
    (4 * (exponent - 1) + mantissa as u32) as usize
}

/// The smallest number of microseconds above every sample of `bucket`.
fn upper_bound(bucket: usize) -> u64 {
    if bucket < 4 {
        return bucket as u64 + 1;
    }
    let (exponent, mantissa) = (bucket as u32 / 4 + 1, bucket as u64 % 4);
    (5 + mantissa) << (exponent - 2)
}

/// A node's recent latencies to the response head, for its 95th percentile.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    /// Samples ever recorded (not decayed): when to halve.
    recorded: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            recorded: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// Records one exchange that took `elapsed` to its response head.
    pub fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(micros)].fetch_add(1, Relaxed);
        if (self.recorded.fetch_add(1, Relaxed) + 1).is_multiple_of(DECAY_EVERY) {
            // Two threads never both get here for one multiple; a sample added while the
            // buckets are halved may keep its full weight, which an estimate can afford.
            for bucket in &self.buckets {
                let _ = bucket.fetch_update(Relaxed, Relaxed, |n| Some(n / 2));
            }
        }
    }

    /// The `quantile` (0..=1) of the recent samples, rounded up to its bucket's bound; `None`
    /// with fewer than [`MIN_SAMPLES`] samples.
    pub fn quantile(&self, quantile: f64) -> Option<Duration> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total < MIN_SAMPLES {
            return None;
        }
        let rank = ((total as f64 * quantile).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        let bucket = counts
            .iter()
            .position(|&count| {
                seen += count;
                seen >= rank
            })
            .unwrap_or(BUCKETS - 1);
        Some(Duration::from_micros(upper_bound(bucket)))
    }
}

/// How long the attempt on `node` may go unanswered before `hedge` sends the next one.
pub fn delay(hedge: &Hedge, node: &Node) -> Duration {
    match hedge.delay_ms {
        HedgeDelay::Millis(ms) => Duration::from_millis(ms),
        HedgeDelay::P95 => node
            .latency
            .quantile(0.95)
            .unwrap_or(DEFAULT_P95_DELAY)
            .max(Duration::from_millis(1)),
    }
}

/// What became of a hedge (`gateway_upstream_hedges_total{outcome}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HedgeOutcome {
    /// A hedge was sent and its answer was the one used.
    Won,
    /// A hedge was sent and another attempt's answer was used (or it failed).
    Lost,
    /// A hedge was due but the retry budget was spent: none was sent.
    SkippedBudget,
}

impl HedgeOutcome {
    const ALL: [HedgeOutcome; 3] = [
        HedgeOutcome::Won,
        HedgeOutcome::Lost,
        HedgeOutcome::SkippedBudget,
    ];

    /// Its `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            HedgeOutcome::Won => "won",
            HedgeOutcome::Lost => "lost",
            HedgeOutcome::SkippedBudget => "skipped_budget",
        }
    }
}

/// An upstream's hedges by outcome, shared across snapshots like its retry budget.
#[derive(Debug, Default)]
pub struct HedgeCounters([AtomicU64; HedgeOutcome::ALL.len()]);

impl HedgeCounters {
    /// Counts one hedge that ended with `outcome`.
    pub fn record(&self, outcome: HedgeOutcome) {
        self.0[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Hedges that ended with `outcome` so far.
    pub fn count(&self, outcome: HedgeOutcome) -> u64 {
        self.0[outcome as usize].load(Relaxed)
    }
}

/// Appends `gateway_upstream_hedges_total{upstream,outcome}` for the upstreams of `runtime`
/// that hedged at least once (or are configured to).
pub fn render_metrics(runtime: &Runtime, out: &mut String) {
    let mut upstreams: Vec<&Arc<UpstreamRuntime>> = runtime
        .upstreams
        .values()
        .filter(|u| {
            u.spec.hedge.is_some()
                || HedgeOutcome::ALL
                    .iter()
                    .any(|&outcome| u.hedges.count(outcome) > 0)
        })
        .collect();
    upstreams.sort_by(|a, b| a.key.cmp(&b.key));
    let name = "gateway_upstream_hedges_total";
    // Writing to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(
        out,
        "# HELP {name} Hedged requests by upstream and outcome: won (the hedge's answer was used), lost (another attempt's was, or the hedge failed), skipped_budget (due, but the retry budget was spent)."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for upstream in upstreams {
        for outcome in HedgeOutcome::ALL {
            let _ = writeln!(
                out,
                "{name}{{upstream=\"{}\",outcome=\"{}\"}} {}",
                super::health::escape_label(&upstream.key),
                outcome.as_str(),
                upstream.hedges.count(outcome)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_at_most_a_quarter_wide() {
        let mut previous = 0;
        for micros in (0..5000).chain([1 << 20, (1 << 20) + 1, u64::MAX]) {
            let bucket = bucket_of(micros);
            assert!(bucket < BUCKETS, "{micros}");
            assert!(bucket >= previous || micros > 5000, "{micros}");
            assert!(
                micros < upper_bound(bucket) || bucket == BUCKETS - 1,
                "{micros}"
            );
            if bucket > 0 && micros < 1 << (MAX_EXPONENT + 1) {
                let lower = upper_bound(bucket - 1);
                assert!(micros >= lower, "{micros} below its bucket");
                assert!(
                    (upper_bound(bucket) - lower) * 4 <= lower.max(4),
                    "{micros}"
                );
            }
            previous = bucket;
        }
    }

    #[test]
    fn the_95th_percentile_needs_samples_and_follows_recent_ones() {
        let histogram = LatencyHistogram::default();
        for _ in 0..MIN_SAMPLES - 1 {
            histogram.observe(Duration::from_millis(10));
        }
        assert_eq!(histogram.quantile(0.95), None);
        histogram.observe(Duration::from_millis(10));
        let p95 = histogram.quantile(0.95).unwrap();
        assert!(
            p95 > Duration::from_millis(10) && p95 <= Duration::from_micros(12_500),
            "{p95:?}"
        );
        // 90 fast and 10 slow: the 95th percentile is a slow one.
        let histogram = LatencyHistogram::default();
        for i in 0..100 {
            let ms = if i % 10 == 0 { 200 } else { 5 };
            histogram.observe(Duration::from_millis(ms));
        }
        let p95 = histogram.quantile(0.95).unwrap();
        assert!(
            p95 > Duration::from_millis(200) && p95 <= Duration::from_millis(250),
            "{p95:?}"
        );
        assert!(histogram.quantile(0.5).unwrap() <= Duration::from_millis(6));
        // The node turns fast: after a few decays the old slow samples no longer count.
        for _ in 0..4 * DECAY_EVERY {
            histogram.observe(Duration::from_millis(5));
        }
        assert!(histogram.quantile(0.95).unwrap() <= Duration::from_millis(6));
    }

    #[test]
    fn a_fixed_delay_is_taken_as_is_and_p95_falls_back_without_samples() {
        let spec = serde_json::from_value(
            serde_json::json!({"nodes": [{"host": "127.0.0.1", "port": 1}]}),
        )
        .expect("an upstream");
        let upstream = UpstreamRuntime::compile("u", &spec).expect("compiles");
        let node = &upstream.nodes[0];
        let fixed = Hedge {
            delay_ms: HedgeDelay::Millis(30),
            max_extra: 1,
        };
        assert_eq!(delay(&fixed, node), Duration::from_millis(30));
        let p95 = Hedge {
            delay_ms: HedgeDelay::P95,
            max_extra: 1,
        };
        assert_eq!(delay(&p95, node), DEFAULT_P95_DELAY);
        for _ in 0..MIN_SAMPLES {
            node.latency.observe(Duration::from_micros(100));
        }
        // At least a millisecond, however fast the node.
        assert_eq!(delay(&p95, node), Duration::from_millis(1));
    }
}
