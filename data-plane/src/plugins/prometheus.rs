//! `prometheus`: per-route request counters and latency histograms, exported on the status
//! listener's `/metrics` after the process metrics.
//!
//! - `gateway_route_requests_total{route, code}` (plus `route_name` with `prefer_name`): answers
//!   by status code, whoever produced them (upstream, gateway error, plugin refusal);
//! - `gateway_route_latency_seconds{route}` histogram: from the request's arrival to its
//!   response head (the log phase), so it includes plugins and the upstream's time to first
//!   byte, not the body transfer.
//!
//! Hot path: one slot per route, created the first time the route is seen (once per route,
//! not per snapshot) and looked up through an `ArcSwap`'d map when the plugin is configured on
//! a global rule; a route-level instance holds its slot directly. Recording is a few relaxed
//! atomic adds — no lock per request. Slots live in [`super::BuildEnv`], so counters are
//! monotonic across config pushes; a deleted route's series stay (at their last values) until
//! the data plane restarts, as Prometheus expects of counters.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::StatusCode;
use serde_json::Value;

use super::{BuildEnv, Plugin, RequestCtx};
use gateway_proto::plugins::prometheus::Config;

const FIRST_CODE: u16 = 100;
const LAST_CODE: u16 = 599;
const CODES: usize = (LAST_CODE - FIRST_CODE + 1) as usize;

/// Upper bounds of the latency buckets, in microseconds (1 ms … 60 s, as APISIX's defaults).
const BUCKETS_MICROS: [u64; 14] = [
    1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000,
    5_000_000, 10_000_000, 60_000_000,
];

/// One route's series.
#[derive(Debug)]
pub struct RouteSlot {
    route: String,
    name: Option<String>,
    by_code: Box<[AtomicU64; CODES]>,
    /// Non-cumulative bucket counts; the last one is `+Inf`.
    buckets: [AtomicU64; BUCKETS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

impl RouteSlot {
    fn new(route: &str, name: Option<String>) -> RouteSlot {
        RouteSlot {
            route: route.to_owned(),
            name,
            by_code: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn record(&self, status: StatusCode, micros: u64) {
        let code = status.as_u16().clamp(FIRST_CODE, LAST_CODE);
        self.by_code[usize::from(code - FIRST_CODE)].fetch_add(1, Relaxed);
        let bucket = BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(BUCKETS_MICROS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
    }
}

/// Slots by (route id, name label).
type Slots = HashMap<(String, Option<String>), Arc<RouteSlot>>;

/// Every route's slot, by (route id, name label).
#[derive(Debug, Default)]
pub struct Registry {
    slots: ArcSwap<Slots>,
    /// Serialises inserts (rare: once per route); readers never take it.
    insert: Mutex<()>,
}

impl Registry {
    /// The slot of `route` (labelled `name`), created on first use.
    pub fn slot(&self, route: &str, name: Option<&str>) -> Arc<RouteSlot> {
        let key = (route.to_owned(), name.map(str::to_owned));
        if let Some(slot) = self.slots.load().get(&key) {
            return Arc::clone(slot);
        }
        let _guard = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.slots.load();
        if let Some(slot) = current.get(&key) {
            return Arc::clone(slot);
        }
        let slot = Arc::new(RouteSlot::new(route, key.1.clone()));
        let mut next = HashMap::clone(&current);
        next.insert(key, Arc::clone(&slot));
        self.slots.store(Arc::new(next));
        slot
    }

    /// Appends every series in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let slots = self.slots.load();
        if slots.is_empty() {
            return;
        }
        let mut slots: Vec<&Arc<RouteSlot>> = slots.values().collect();
        slots.sort_by(|a, b| (&a.route, &a.name).cmp(&(&b.route, &b.name)));
        let labels = |slot: &RouteSlot| match &slot.name {
            None => format!("route=\"{}\"", escape(&slot.route)),
            Some(name) => format!(
                "route=\"{}\",route_name=\"{}\"",
                escape(&slot.route),
                escape(name)
            ),
        };
        // Writing to a String cannot fail; the results are ignored for that reason.
        let _ = writeln!(
            out,
            "# HELP gateway_route_requests_total Answers on routes with the prometheus plugin, by status code."
        );
        let _ = writeln!(out, "# TYPE gateway_route_requests_total counter");
        for slot in &slots {
            let labels = labels(slot);
            for (offset, counter) in slot.by_code.iter().enumerate() {
                let count = counter.load(Relaxed);
                if count > 0 {
                    let code = usize::from(FIRST_CODE) + offset;
                    let _ = writeln!(
                        out,
                        "gateway_route_requests_total{{{labels},code=\"{code}\"}} {count}"
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP gateway_route_latency_seconds Time from a request's arrival to its response head."
        );
        let _ = writeln!(out, "# TYPE gateway_route_latency_seconds histogram");
        for slot in &slots {
            let labels = labels(slot);
            let mut cumulative = 0;
            for (i, bucket) in slot.buckets.iter().enumerate() {
                cumulative += bucket.load(Relaxed);
                let le = BUCKETS_MICROS
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |&b| (b as f64 / 1e6).to_string());
                let _ = writeln!(
                    out,
                    "gateway_route_latency_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = slot.sum_micros.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "gateway_route_latency_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(
                out,
                "gateway_route_latency_seconds_count{{{labels}}} {cumulative}"
            );
        }
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A compiled `prometheus`.
#[derive(Debug)]
pub struct Prometheus {
    priority: i32,
    prefer_name: bool,
    registry: Arc<Registry>,
    /// The slot of the route this instance is configured on (`None` on a global rule or a
    /// consumer, where the route is known per request only).
    slot: Option<Arc<RouteSlot>>,
}

impl Prometheus {
    /// Compiles a validated config configured at `scope`; `route_name` is the route's name
    /// label when `scope` is a route.
    pub fn build(
        priority: i32,
        config: &Value,
        scope: &str,
        env: &BuildEnv,
    ) -> Result<Prometheus, String> {
        let config: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        let registry = Arc::clone(&env.prometheus);
        // A route's own instance cannot know the route's name label here (build sees the
        // config only), so it pre-registers only without `prefer_name`.
        let slot = match (scope.strip_prefix("routes/"), config.prefer_name) {
            (Some(route), false) => Some(registry.slot(route, None)),
            _ => None,
        };
        Ok(Prometheus {
            priority,
            prefer_name: config.prefer_name,
            registry,
            slot,
        })
    }
}

/// The name a route is reported under with `prefer_name`: its `name` label, else its id.
fn route_name<'a>(ctx: &'a RequestCtx<'_>) -> &'a str {
    ctx.route
        .spec
        .labels
        .get("name")
        .map_or(ctx.route.id, String::as_str)
}

impl Plugin for Prometheus {
    fn name(&self) -> &'static str {
        "prometheus"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn log(&self, ctx: &RequestCtx<'_>, status: StatusCode) {
        let micros = u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match &self.slot {
            Some(slot) if slot.route == ctx.route.id => slot.record(status, micros),
            _ => {
                let name = self.prefer_name.then(|| route_name(ctx));
                self.registry
                    .slot(ctx.route.id, name)
                    .record(status, micros);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let registry = Registry::default();
        let slot = registry.slot("r1", None);
        assert!(Arc::ptr_eq(&slot, &registry.slot("r1", None)));
        slot.record(StatusCode::OK, 1_500);
        slot.record(StatusCode::OK, 70_000_000);
        slot.record(StatusCode::BAD_GATEWAY, 10);
        registry
            .slot("r\"2", Some("a\nb"))
            .record(StatusCode::OK, 1);
        let mut text = String::new();
        registry.render(&mut text);
        for line in [
            "gateway_route_requests_total{route=\"r1\",code=\"200\"} 2",
            "gateway_route_requests_total{route=\"r1\",code=\"502\"} 1",
            "gateway_route_latency_seconds_bucket{route=\"r1\",le=\"0.001\"} 1",
            "gateway_route_latency_seconds_bucket{route=\"r1\",le=\"0.002\"} 2",
            "gateway_route_latency_seconds_bucket{route=\"r1\",le=\"60\"} 2",
            "gateway_route_latency_seconds_bucket{route=\"r1\",le=\"+Inf\"} 3",
            "gateway_route_latency_seconds_count{route=\"r1\"} 3",
            "gateway_route_requests_total{route=\"r\\\"2\",route_name=\"a\\nb\",code=\"200\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
