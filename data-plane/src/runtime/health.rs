//! Node health: active probes and passive ejection.
//!
//! Each node has one [`NodeHealth`], shared by address between the runtimes of successive
//! snapshots (like pingora's `Backends::do_update`), so a config push neither forgets an ejected
//! node nor resets a recovering one.
//!
//! - **Active**: each data plane probes every node of an upstream with `health_check.active`
//!   (HTTP GET to `path`; 2xx and 3xx are healthy). `unhealthy_after` consecutive failures mark
//!   the node unhealthy; `healthy_after` consecutive successes mark it healthy again and lift
//!   any passive ejection (successes counted from the ejection on). One task per upstream
//!   runtime ([`reconcile`]); it stops when that runtime is retired by a snapshot swap, and the
//!   next one carries on with the same state.
//! - **Passive**: `unhealthy_after` consecutive failed requests (connect errors, timeouts,
//!   502/503/504) eject the node for `eject_ms`.
//!
//! A node that is unhealthy or ejected gets no traffic, unless every node of the upstream is:
//! then the balancer ignores health (fails open), because a guess is better than a certain 503.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures_util::future::join_all;
use gateway_proto::model::{ActiveHealthCheck, PassiveHealthCheck};
use http::{Method, Request, StatusCode};
use tracing::{info, warn};

use crate::runtime::Runtime;
use crate::runtime::upstream::UpstreamRuntime;
use crate::transport::deadline;

/// Milliseconds on a monotonic clock, at tick resolution (see [`crate::clock`]); never 0, so
/// that 0 means "never". Ejections last seconds: a few milliseconds of lag do not matter.
pub fn now_ms() -> u64 {
    crate::clock::coarse_now_ms()
}

/// The health of one node.
#[derive(Debug)]
pub struct NodeHealth {
    /// Whether the node's upstream has active checks now; without them their verdict is
    /// ignored (set by [`reconcile`]).
    probed: AtomicBool,
    /// The active checks' verdict; true until probes say otherwise.
    active_healthy: AtomicBool,
    /// Consecutive probe successes (reset by a failure).
    probe_successes: AtomicU32,
    /// Consecutive probe failures (reset by a success).
    probe_failures: AtomicU32,
    /// Consecutive failed requests (reset by a success).
    request_failures: AtomicU32,
    /// While [`now_ms`] is below this, the node is ejected; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    /// Passive ejections so far.
    ejections: AtomicU64,
}

impl Default for NodeHealth {
    fn default() -> Self {
        NodeHealth {
            probed: AtomicBool::new(false),
            active_healthy: AtomicBool::new(true),
            probe_successes: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            request_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }
}

/// A node's health as the status endpoint shows it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HealthState {
    /// Gets traffic.
    Healthy,
    /// Failed its active checks.
    Unhealthy,
    /// Ejected by passive checks for this many more milliseconds.
    Ejected(u64),
}

impl HealthState {
    /// The name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
            HealthState::Ejected(_) => "ejected",
        }
    }
}

impl NodeHealth {
    /// Whether the node may get traffic now.
    pub fn is_available(&self, now_ms: u64) -> bool {
        !self.failed_probes() && now_ms >= self.ejected_until_ms.load(Relaxed)
    }

    /// Whether active checks apply and have taken the node out.
    fn failed_probes(&self) -> bool {
        self.probed.load(Relaxed) && !self.active_healthy.load(Relaxed)
    }

    /// The node's state for the status endpoint.
    pub fn state(&self, now_ms: u64) -> HealthState {
        let until = self.ejected_until_ms.load(Relaxed);
        if self.failed_probes() {
            HealthState::Unhealthy
        } else if now_ms < until {
            HealthState::Ejected(until - now_ms)
        } else {
            HealthState::Healthy
        }
    }

    /// Passive ejections so far.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Relaxed)
    }

    /// Consecutive failed requests now.
    pub fn consecutive_failures(&self) -> u32 {
        self.request_failures.load(Relaxed)
    }

    /// Records the outcome of a real request. Returns true when this failure ejected the node.
    pub fn record_request(&self, ok: bool, policy: Option<&PassiveHealthCheck>) -> bool {
        if ok {
            // Only write when there is something to reset: a shared cache line stays clean on
            // the hot path.
            if self.request_failures.load(Relaxed) != 0 {
                self.request_failures.store(0, Relaxed);
            }
            return false;
        }
        let Some(policy) = policy else {
            return false;
        };
        let failures = self.request_failures.fetch_add(1, Relaxed) + 1;
        if failures < policy.unhealthy_after {
            return false;
        }
        self.request_failures.store(0, Relaxed);
        // Probes count again from here: only successes after the ejection lift it.
        self.probe_successes.store(0, Relaxed);
        self.ejected_until_ms
            .store(now_ms().saturating_add(policy.eject_ms), Relaxed);
        self.ejections.fetch_add(1, Relaxed);
        true
    }

    /// Says whether the node's upstream has active checks. Without them their verdict no
    /// longer counts (nothing would lift an "unhealthy" again; a probe round that was under way
    /// may still record one); when they start, they start from a clean verdict. A passive
    /// ejection stays either way.
    pub fn set_probed(&self, probed: bool) {
        if self.probed.swap(probed, Relaxed) != probed {
            self.active_healthy.store(true, Relaxed);
            self.probe_successes.store(0, Relaxed);
            self.probe_failures.store(0, Relaxed);
        }
    }

    /// Records one probe result. Returns the new verdict when it changed.
    pub fn record_probe(&self, ok: bool, policy: &ActiveHealthCheck) -> Option<bool> {
        if ok {
            self.probe_failures.store(0, Relaxed);
            let successes = self.probe_successes.fetch_add(1, Relaxed) + 1;
            // Out: failed its probes, or ejected by requests, even when it came back before
            // the probes noticed it was gone.
            let out = !self.active_healthy.load(Relaxed)
                || self.ejected_until_ms.load(Relaxed) > now_ms();
            if out && successes >= policy.healthy_after {
                self.active_healthy.store(true, Relaxed);
                // A node that proved itself healthy again is back in rotation at once rather
                // than at the end of a passive ejection it earned while it was down.
                self.ejected_until_ms.store(0, Relaxed);
                self.request_failures.store(0, Relaxed);
                return Some(true);
            }
        } else {
            self.probe_successes.store(0, Relaxed);
            let failures = self.probe_failures.fetch_add(1, Relaxed) + 1;
            if self.active_healthy.load(Relaxed) && failures >= policy.unhealthy_after {
                self.active_healthy.store(false, Relaxed);
                return Some(false);
            }
        }
        None
    }
}

/// The active checker of one upstream runtime.
#[derive(Debug, Default)]
pub struct Checker {
    started: AtomicBool,
    retired: Arc<AtomicBool>,
}

impl Checker {
    /// Stops the probe task (if any) after its current round.
    pub fn retire(&self) {
        self.retired.store(true, Relaxed);
    }
}

/// Reconciles the active checkers with a runtime swap from `previous` to `next`: upstreams that
/// left (or were replaced by a changed definition) stop probing; upstreams of `next` with active
/// checks and no task yet get one. Node health is shared by address, so a replaced upstream's
/// new task carries on from the old one's verdicts.
///
/// Must be called inside a tokio runtime; outside one, no checks start (and a warning says so).
pub fn reconcile(previous: &Runtime, next: &Runtime) {
    for (key, old) in &previous.upstreams {
        let kept = next
            .upstreams
            .get(key)
            .is_some_and(|new| Arc::ptr_eq(new, old));
        if !kept {
            old.checker.retire();
        }
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        warn!("no async runtime: active health checks are not started");
        return;
    };
    for upstream in next.upstreams.values() {
        // Health carried over from a version that probed (passive checks keep it) must not
        // keep a verdict no probe will revisit.
        let probed = upstream.active_check().is_some();
        for node in &upstream.nodes {
            node.health.set_probed(probed);
        }
        let Some(active) = upstream.active_check() else {
            continue;
        };
        if upstream.checker.started.swap(true, Relaxed) {
            continue;
        }
        let active = active.clone();
        let retired = Arc::clone(&upstream.checker.retired);
        handle.spawn(probe_loop(Arc::downgrade(upstream), retired, active));
    }
}

async fn probe_loop(
    upstream: std::sync::Weak<UpstreamRuntime>,
    retired: Arc<AtomicBool>,
    policy: ActiveHealthCheck,
) {
    let interval = Duration::from_millis(policy.interval_ms);
    let timeout = Duration::from_millis(policy.timeout_ms);
    // Spread the first round of many upstreams over the interval instead of probing all at once.
    tokio::time::sleep(interval.mul_f64(fastrand::f64() * 0.5)).await;
    loop {
        if retired.load(Relaxed) {
            return;
        }
        let Some(upstream) = upstream.upgrade() else {
            return;
        };
        let probes = upstream
            .nodes
            .iter()
            .map(|node| probe(&upstream, node, &policy.path, timeout));
        let results = join_all(probes).await;
        if retired.load(Relaxed) {
            // Retired while probing: the next version's checks (or none) decide now.
            return;
        }
        for (node, ok) in upstream.nodes.iter().zip(results) {
            match node.health.record_probe(ok, &policy) {
                Some(true) => {
                    info!(upstream = %upstream.key, node = %node.authority, "node is healthy again")
                }
                Some(false) => {
                    warn!(upstream = %upstream.key, node = %node.authority, "node failed its health checks")
                }
                None => {}
            }
        }
        // Do not keep the runtime alive while sleeping: a retired one must be freed.
        drop(upstream);
        tokio::time::sleep(interval).await;
    }
}

/// One probe: GET `path` on `node` through the upstream's own transport (so TLS and HTTP/2
/// settings are checked too); 2xx and 3xx count as healthy.
async fn probe(
    upstream: &UpstreamRuntime,
    node: &crate::runtime::upstream::Node,
    path: &str,
    timeout: Duration,
) -> bool {
    let uri = format!("{}://{}{}", upstream.uri_scheme(), node.authority, path);
    let Ok(request) = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(http::header::HOST, upstream.probe_host(node))
        .header(http::header::USER_AGENT, "gateway-health-check")
        .body(crate::transport::body::empty_body())
    else {
        return false;
    };
    // A probe is the gateway's own request: no client to name in `X-Forwarded-*`.
    let exchange = upstream.client.send(
        request,
        None,
        node.authority.as_str(),
        &node.connections,
        // The verdict is the status.
        crate::transport::h1::HeadForm::Ignored,
        timeout.min(upstream.connect_timeout),
        timeout,
    );
    match deadline::within(deadline::after(timeout), exchange).await {
        Ok(Ok(response)) => {
            let status = response.status();
            status.is_success() || status.is_redirection() || status == StatusCode::NOT_MODIFIED
        }
        _ => false,
    }
}

/// Every upstream of `runtime` with its nodes' health and load, for `GET /upstreams` on the
/// status listener:
/// `{"version": N, "upstreams": [{"key", "lb", "active_checks", "passive_checks", "nodes":
/// [{"address", "weight", "state", "ejected_for_ms", "in_flight", "ewma_ms",
/// "consecutive_failures", "ejections"}]}]}`, sorted by key.
pub fn upstreams_json(runtime: &Runtime) -> serde_json::Value {
    let now = now_ms();
    let mut upstreams: Vec<&Arc<UpstreamRuntime>> = runtime.upstreams.values().collect();
    upstreams.sort_by(|a, b| a.key.cmp(&b.key));
    let upstreams: Vec<serde_json::Value> = upstreams
        .into_iter()
        .map(|upstream| {
            let nodes: Vec<serde_json::Value> = upstream
                .nodes
                .iter()
                .map(|node| {
                    let state = node.health.state(now);
                    let ejected_for = match state {
                        HealthState::Ejected(ms) => ms,
                        _ => 0,
                    };
                    serde_json::json!({
                        "address": node.authority.as_str(),
                        "weight": node.weight,
                        "state": state.as_str(),
                        "ejected_for_ms": ejected_for,
                        "in_flight": node.load.in_flight(),
                        "ewma_ms": node.load.ewma().as_secs_f64() * 1e3,
                        "consecutive_failures": node.health.consecutive_failures(),
                        "ejections": node.health.ejections(),
                    })
                })
                .collect();
            serde_json::json!({
                "key": upstream.key,
                "lb": upstream.spec.lb,
                "active_checks": upstream.active_check().is_some(),
                "passive_checks": upstream.passive_check().is_some(),
                "nodes": nodes,
            })
        })
        .collect();
    serde_json::json!({"version": runtime.version, "upstreams": upstreams})
}

/// Appends per-node health and load metrics in the Prometheus text format:
/// `gateway_upstream_node_healthy` (1 healthy, 0 unhealthy or ejected),
/// `gateway_upstream_node_in_flight` and `gateway_upstream_node_ejections_total`.
pub fn render_metrics(runtime: &Runtime, out: &mut String) {
    use std::fmt::Write as _;
    let now = now_ms();
    let mut upstreams: Vec<&Arc<UpstreamRuntime>> = runtime.upstreams.values().collect();
    upstreams.sort_by(|a, b| a.key.cmp(&b.key));
    type Value = fn(&crate::runtime::upstream::Node, u64) -> u64;
    let families: [(&str, &str, &str, Value); 3] = [
        (
            "gateway_upstream_node_healthy",
            "gauge",
            "1 when the node gets traffic, 0 when it failed its active checks or is ejected.",
            |node, now| u64::from(node.health.is_available(now)),
        ),
        (
            "gateway_upstream_node_in_flight",
            "gauge",
            "Requests sent to the node and waiting for response headers.",
            |node, _| node.load.in_flight(),
        ),
        (
            "gateway_upstream_node_ejections_total",
            "counter",
            "Times passive health checks ejected the node.",
            |node, _| node.health.ejections(),
        ),
    ];
    // Writing to a String cannot fail; the results are ignored for that reason.
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for upstream in &upstreams {
            for node in &upstream.nodes {
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{}\",node=\"{}\"}} {}",
                    escape_label(&upstream.key),
                    escape_label(node.authority.as_str()),
                    value(node, now)
                );
            }
        }
    }
}

/// Escapes a Prometheus label value (backslash, quote, newline).
pub(super) fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active() -> ActiveHealthCheck {
        ActiveHealthCheck {
            path: "/".into(),
            interval_ms: 100,
            timeout_ms: 50,
            healthy_after: 2,
            unhealthy_after: 3,
        }
    }

    #[test]
    fn probes_flip_the_verdict_after_their_thresholds() {
        let health = NodeHealth::default();
        health.set_probed(true);
        let policy = active();
        assert_eq!(health.record_probe(false, &policy), None);
        assert_eq!(health.record_probe(false, &policy), None);
        assert_eq!(health.record_probe(true, &policy), None);
        assert_eq!(health.record_probe(false, &policy), None);
        assert_eq!(health.record_probe(false, &policy), None);
        assert_eq!(health.record_probe(false, &policy), Some(false));
        assert_eq!(health.state(now_ms()), HealthState::Unhealthy);
        assert!(!health.is_available(now_ms()));
        assert_eq!(health.record_probe(true, &policy), None);
        assert_eq!(health.record_probe(true, &policy), Some(true));
        assert!(health.is_available(now_ms()));
    }

    #[test]
    fn a_verdict_only_counts_while_active_checks_apply() {
        let health = NodeHealth::default();
        let policy = active();
        health.set_probed(true);
        for _ in 0..3 {
            health.record_probe(false, &policy);
        }
        assert!(!health.is_available(now_ms()));
        // Active checks removed: nothing would lift the verdict, so it goes.
        health.set_probed(false);
        assert!(health.is_available(now_ms()));
        // A probe round that was under way when they were removed records late: ignored.
        for _ in 0..3 {
            health.record_probe(false, &policy);
        }
        assert_eq!(health.state(now_ms()), HealthState::Healthy);
        // Active checks back: they start from a clean verdict.
        health.set_probed(true);
        assert!(health.is_available(now_ms()));
        assert_eq!(health.record_probe(false, &policy), None);
    }

    #[test]
    fn consecutive_request_failures_eject_until_the_deadline() {
        let health = NodeHealth::default();
        let policy = PassiveHealthCheck {
            unhealthy_after: 2,
            eject_ms: 60_000,
        };
        assert!(!health.record_request(false, Some(&policy)));
        assert!(!health.record_request(true, Some(&policy)));
        assert!(!health.record_request(false, Some(&policy)));
        assert!(health.record_request(false, Some(&policy)));
        let now = now_ms();
        assert!(matches!(health.state(now), HealthState::Ejected(ms) if ms > 50_000));
        assert!(!health.is_available(now));
        assert!(health.is_available(now + 60_001));
        assert_eq!(health.ejections(), 1);
        // Probes lift an ejection, but only with successes that came after it.
        let probes = active();
        for _ in 1..probes.healthy_after {
            assert_eq!(health.record_probe(true, &probes), None);
        }
        assert!(!health.record_request(false, Some(&policy)));
        assert!(health.record_request(false, Some(&policy)));
        for _ in 1..probes.healthy_after {
            assert_eq!(health.record_probe(true, &probes), None);
            assert!(!health.is_available(now_ms()));
        }
        assert_eq!(health.record_probe(true, &probes), Some(true));
        assert_eq!(health.state(now_ms()), HealthState::Healthy);
        assert_eq!(health.ejections(), 2);
        // Without a passive policy failures never eject.
        let other = NodeHealth::default();
        for _ in 0..100 {
            assert!(!other.record_request(false, None));
        }
        assert!(other.is_available(now_ms()));
    }

    #[tokio::test]
    async fn swaps_retire_replaced_checkers_and_keep_node_verdicts() {
        use crate::state::State;
        use crate::test_support::snapshot;
        use serde_json::json;

        let checked = |port: u16| {
            json!({
                "nodes": [{"host": "127.0.0.1", "port": 1}, {"host": "127.0.0.1", "port": port}],
                "health_check": {"active": {"interval_ms": 60000, "timeout_ms": 10}}
            })
        };
        let state = State::new();
        let compile = |version, upstream| {
            let previous = state.runtime();
            Runtime::compile(
                &snapshot(version, &[("upstreams", "u", upstream)]),
                Some(&previous),
            )
            .unwrap()
        };
        state.install(compile(1, checked(2)));
        let first = state.runtime();
        let old = Arc::clone(&first.upstreams["u"]);
        assert!(old.checker.started.load(Relaxed));
        // A verdict on the node that stays.
        for _ in 0..3 {
            old.nodes[0]
                .health
                .record_probe(false, old.active_check().unwrap());
        }
        drop(first);

        // Same definition: the same upstream, the same task.
        state.install(compile(2, checked(2)));
        assert!(Arc::ptr_eq(&state.runtime().upstreams["u"], &old));
        assert!(!old.checker.retired.load(Relaxed));

        // A changed node set: the old task is retired, a new one starts, and the node that
        // stayed keeps its verdict.
        state.install(compile(3, checked(3)));
        let new = Arc::clone(&state.runtime().upstreams["u"]);
        assert!(old.checker.retired.load(Relaxed));
        assert!(new.checker.started.load(Relaxed));
        assert!(!new.checker.retired.load(Relaxed));
        assert_eq!(new.nodes[0].health.state(now_ms()), HealthState::Unhealthy);
        assert_eq!(new.nodes[1].health.state(now_ms()), HealthState::Healthy);

        // Active checks removed, passive ones kept: the task is retired, none starts, and the
        // probes' verdict goes with them (nothing would lift it), while a passive ejection
        // stays.
        let passive = json!({"unhealthy_after": 1, "eject_ms": 60000});
        new.nodes[1].health.record_request(
            false,
            Some(&serde_json::from_value(passive.clone()).unwrap()),
        );
        state.install(compile(
            4,
            json!({
                "nodes": [{"host": "127.0.0.1", "port": 1}, {"host": "127.0.0.1", "port": 3}],
                "health_check": {"passive": passive}
            }),
        ));
        assert!(new.checker.retired.load(Relaxed));
        let last = state.runtime();
        assert!(!last.upstreams["u"].checker.started.load(Relaxed));
        let nodes = &last.upstreams["u"].nodes;
        assert_eq!(nodes[0].health.state(now_ms()), HealthState::Healthy);
        assert!(matches!(
            nodes[1].health.state(now_ms()),
            HealthState::Ejected(_)
        ));

        // No health checks at all: every verdict starts clean.
        state.install(compile(
            5,
            json!({"nodes": [{"host": "127.0.0.1", "port": 1}, {"host": "127.0.0.1", "port": 3}]}),
        ));
        let last = state.runtime();
        for node in &last.upstreams["u"].nodes {
            assert_eq!(node.health.state(now_ms()), HealthState::Healthy);
        }
    }

    #[test]
    fn passing_active_checks_lifts_an_ejection() {
        let health = NodeHealth::default();
        health.set_probed(true);
        let passive = PassiveHealthCheck {
            unhealthy_after: 1,
            eject_ms: 600_000,
        };
        let policy = active();
        assert!(health.record_request(false, Some(&passive)));
        for _ in 0..3 {
            health.record_probe(false, &policy);
        }
        health.record_probe(true, &policy);
        assert!(!health.is_available(now_ms()));
        health.record_probe(true, &policy);
        assert!(health.is_available(now_ms()));
    }
}
