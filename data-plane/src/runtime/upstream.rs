//! An upstream compiled for the request path: nodes with their shared state, the balancer, the
//! transport, and the retry and health policies.
//!
//! State that must outlive a snapshot — each node's [`NodeLoad`] and [`NodeHealth`], the retry
//! budget, the pooled client — is held in `Arc`s and handed from the previous runtime's upstream
//! of the same key to the new one, node by node by address (pingora's `Backends::do_update`).
//! A changed upstream therefore keeps everything about its unchanged nodes; a removed node's
//! state lives on only as long as the requests still running on it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use gateway_proto::model::{
    ActiveHealthCheck, HashOn, PassHost, PassiveHealthCheck, Retries, Scheme, Upstream,
};
use http::HeaderValue;
use http::uri::Authority;
use tracing::warn;

use crate::runtime::balance::{Balancer, Candidates, NodeLoad};
use crate::runtime::health::{Checker, NodeHealth};
use crate::runtime::hedge::{HedgeCounters, LatencyHistogram};
use crate::runtime::{CompileError, Runtime};
use crate::transport::client::{TransportKey, UpstreamClient};

/// An upstream ready for the request path: its nodes, its timeouts and its balancer.
#[derive(Debug)]
pub struct UpstreamRuntime {
    /// The runtime key: the upstream's id, or `route:<route id>` for an inline upstream.
    pub key: String,
    /// The nodes, in configured order.
    pub nodes: Vec<Node>,
    /// Time allowed to establish a connection to a node.
    pub connect_timeout: Duration,
    /// Time allowed for response headers once connected.
    pub read_timeout: Duration,
    /// Which `Host` the upstream request carries.
    pub pass_host: PassHost,
    /// The `Host` sent when `pass_host` is `rewrite`.
    pub upstream_host: Option<HeaderValue>,
    /// Picks the node for each request.
    pub balancer: Balancer,
    /// Where consistent hashing takes its key.
    pub hash_on: Option<HashOn>,
    /// Retries, unless the route overrides them.
    pub retries: Option<Retries>,
    /// Limits retries to a share of requests, so a sick upstream is not hammered. Hedges
    /// take from it too.
    pub budget: Arc<RetryBudget>,
    /// Hedges by outcome, shared across snapshots like the budget.
    pub hedges: Arc<HedgeCounters>,
    /// The pooled transport for this upstream's scheme, TLS and pool settings.
    pub client: Arc<UpstreamClient>,
    /// The active health checker's task handle.
    pub checker: Checker,
    /// The definition this was compiled from; a new snapshot with an equal definition reuses
    /// this runtime, balancer state included.
    pub spec: Upstream,
}

/// One backend of an upstream.
#[derive(Debug)]
pub struct Node {
    /// `host:port` (IPv6 hosts in brackets): what requests are sent to, and the node's identity
    /// for its shared state.
    pub authority: Authority,
    /// The same, as the `Host` header value for `pass_host: node`.
    pub host_header: HeaderValue,
    /// The configured weight.
    pub weight: u32,
    /// In-flight requests and latency, shared across snapshots.
    pub load: Arc<NodeLoad>,
    /// Health verdicts, shared across snapshots.
    pub health: Arc<NodeHealth>,
    /// Idle HTTP/1.1 connections (`scheme: http`), shared across snapshots.
    pub connections: Arc<crate::transport::h1::Pool>,
    /// Recent latencies, for hedging after the node's 95th percentile; shared across
    /// snapshots.
    pub latency: Arc<LatencyHistogram>,
}

impl UpstreamRuntime {
    /// Compiles one upstream definition with fresh state; `key` names it in errors and logs.
    pub fn compile(key: &str, spec: &Upstream) -> Result<UpstreamRuntime, CompileError> {
        UpstreamRuntime::compile_with(key, spec, None)
    }

    /// Compiles one upstream definition, carrying over the state of the nodes that `previous`
    /// (the runtime being served) has under the same key and address.
    pub fn compile_with(
        key: &str,
        spec: &Upstream,
        previous: Option<&Runtime>,
    ) -> Result<UpstreamRuntime, CompileError> {
        let invalid = |reason: String| CompileError::InvalidUpstream {
            upstream: key.to_owned(),
            reason,
        };
        let before = previous.and_then(|p| p.upstreams.get(key));
        let mut nodes = Vec::with_capacity(spec.nodes.len());
        for node in &spec.nodes {
            // An IPv6 literal needs brackets to be told apart from the port.
            let address = if node.host.contains(':') && !node.host.starts_with('[') {
                format!("[{}]:{}", node.host, node.port)
            } else {
                format!("{}:{}", node.host, node.port)
            };
            let authority = Authority::try_from(address.as_str())
                .map_err(|e| invalid(format!("node {address:?} is not a valid address: {e}")))?;
            let host_header = HeaderValue::try_from(address.as_str())
                .map_err(|e| invalid(format!("node {address:?} is not a valid Host: {e}")))?;
            if let Some(twin) = nodes
                .iter_mut()
                .find(|n: &&mut Node| n.authority == authority)
            {
                // Written before the control plane refused such lists: one node with the sum
                // of the weights, rather than two entries sharing one node's state.
                warn!(upstream = key, node = %address, "node listed twice; weights merged");
                twin.weight = twin.weight.saturating_add(node.weight);
                continue;
            }
            let same = before.and_then(|u| u.nodes.iter().find(|n| n.authority == authority));
            nodes.push(Node {
                load: same.map(|n| Arc::clone(&n.load)).unwrap_or_default(),
                connections: same.map(|n| Arc::clone(&n.connections)).unwrap_or_default(),
                latency: same.map(|n| Arc::clone(&n.latency)).unwrap_or_default(),
                // Without health checks a verdict can never change again: start clean rather
                // than show a stale one forever.
                health: same
                    .filter(|_| spec.health_check.is_some())
                    .map(|n| Arc::clone(&n.health))
                    .unwrap_or_default(),
                authority,
                host_header,
                weight: node.weight,
            });
        }
        let upstream_host = match (&spec.upstream_host, spec.pass_host) {
            (Some(host), _) => Some(
                HeaderValue::try_from(host.as_str())
                    .map_err(|e| invalid(format!("upstream_host {host:?} is invalid: {e}")))?,
            ),
            (None, PassHost::Rewrite) => {
                return Err(invalid(
                    "pass_host \"rewrite\" needs upstream_host".to_owned(),
                ));
            }
            (None, _) => None,
        };
        let addresses: Vec<&str> = nodes.iter().map(|n| n.authority.as_str()).collect();
        let weights: Vec<u32> = nodes.iter().map(|n| n.weight).collect();
        let balancer = Balancer::new(spec.lb, &addresses, &weights);
        let client = shared_client(&TransportKey::of(spec)).map_err(|e| invalid(e.to_string()))?;
        Ok(UpstreamRuntime {
            key: key.to_owned(),
            connect_timeout: Duration::from_millis(spec.timeouts.connect_ms),
            read_timeout: Duration::from_millis(spec.timeouts.read_ms),
            pass_host: spec.pass_host,
            upstream_host,
            balancer,
            hash_on: spec.hash_on.clone(),
            retries: spec.retries.clone().filter(|r| r.count > 0),
            budget: before.map(|u| Arc::clone(&u.budget)).unwrap_or_default(),
            hedges: before.map(|u| Arc::clone(&u.hedges)).unwrap_or_default(),
            client,
            checker: Checker::default(),
            nodes,
            spec: spec.clone(),
        })
    }

    /// The index of the node that gets the next request, skipping nodes `skip` names (the ones
    /// a retry already tried) and, while any other node is available, unhealthy ones.
    pub fn pick_index(&self, key: Option<u64>, skip: impl Fn(usize) -> bool) -> Option<usize> {
        if self.spec.health_check.is_none() {
            // Without a policy no verdict ever changes: skip reading the clock and the flags.
            return self.balancer.pick(self, key, |i| !skip(i));
        }
        let now = crate::runtime::health::now_ms();
        let healthy = |i: usize| !skip(i) && self.nodes[i].health.is_available(now);
        self.balancer
            .pick(self, key, healthy)
            // Every node is unhealthy (or tried): fail open rather than answer a certain 503.
            .or_else(|| self.balancer.pick(self, key, |i| !skip(i)))
    }

    /// The node that gets the next request, or `None` when every node has weight 0.
    pub fn pick(&self) -> Option<&Node> {
        self.pick_index(None, |_| false)
            .and_then(|i| self.nodes.get(i))
    }

    /// The active health check policy, if any.
    pub fn active_check(&self) -> Option<&ActiveHealthCheck> {
        self.spec.health_check.as_ref()?.active.as_ref()
    }

    /// The passive health check policy, if any.
    pub fn passive_check(&self) -> Option<&PassiveHealthCheck> {
        self.spec.health_check.as_ref()?.passive.as_ref()
    }

    /// The URI scheme requests to the nodes use.
    pub fn uri_scheme(&self) -> &'static str {
        match self.spec.scheme {
            Scheme::Https => "https",
            Scheme::Http | Scheme::H2c => "http",
        }
    }

    /// The `Host` a health probe carries: the rewritten host when there is one, else the node.
    pub fn probe_host(&self, node: &Node) -> HeaderValue {
        match (&self.upstream_host, self.pass_host) {
            (Some(host), PassHost::Rewrite) => host.clone(),
            _ => node.host_header.clone(),
        }
    }
}

impl Candidates for UpstreamRuntime {
    fn len(&self) -> usize {
        self.nodes.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.nodes[i].weight
    }
    fn load(&self, i: usize) -> &Arc<NodeLoad> {
        &self.nodes[i].load
    }
}

/// One client per distinct transport in the process, shared by every upstream (and snapshot)
/// that asks for it, so connections to a node are pooled once. Entries die with their last
/// upstream.
fn shared_client(
    key: &TransportKey,
) -> Result<Arc<UpstreamClient>, crate::transport::client::TransportError> {
    static CLIENTS: Mutex<Vec<(TransportKey, Weak<UpstreamClient>)>> = Mutex::new(Vec::new());
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    clients.retain(|(_, client)| client.strong_count() > 0);
    if let Some(client) = clients
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, c)| c.upgrade())
    {
        return Ok(client);
    }
    let client = Arc::new(UpstreamClient::build(key)?);
    clients.push((key.clone(), Arc::downgrade(&client)));
    Ok(client)
}

/// Seconds the retry budget looks back over.
const BUDGET_WINDOW_SECS: u64 = 10;
/// Retries may add this share of the window's requests…
const BUDGET_RATIO: f64 = 0.2;
/// …plus this many retries per second, so a quiet upstream can still retry.
const BUDGET_MIN_PER_SEC: u64 = 10;

/// Linkerd-style retry budget: over a sliding window of 10 s (`BUDGET_WINDOW_SECS`), retries
/// may not exceed 20% of first attempts plus 10 per second. When a whole upstream is failing,
/// this caps the extra load retries put on it at 1.2× (plus the floor) instead of (1 + count)×.
#[derive(Debug, Default)]
pub struct RetryBudget {
    buckets: [Bucket; BUDGET_WINDOW_SECS as usize],
}

#[derive(Debug, Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    fn bucket(&self, second: u64) -> &Bucket {
        let bucket = &self.buckets[(second % BUDGET_WINDOW_SECS) as usize];
        let seen = bucket.second.load(Relaxed);
        if seen != second
            && bucket
                .second
                .compare_exchange(seen, second, Relaxed, Relaxed)
                .is_ok()
        {
            // A new second takes over the slot; a racing add may land in the old count, which
            // only makes the budget a little more or less generous for one second.
            bucket.requests.store(0, Relaxed);
            bucket.retries.store(0, Relaxed);
        }
        bucket
    }

    fn second() -> u64 {
        crate::runtime::health::now_ms() / 1000
    }

    /// Counts a first attempt.
    pub fn record_request(&self) {
        self.bucket(Self::second()).requests.fetch_add(1, Relaxed);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_retry(&self) -> bool {
        let now = Self::second();
        let (mut requests, mut retries) = (0, 0);
        for bucket in &self.buckets {
            let second = bucket.second.load(Relaxed);
            if now.saturating_sub(second) < BUDGET_WINDOW_SECS && second <= now {
                requests += bucket.requests.load(Relaxed);
                retries += bucket.retries.load(Relaxed);
            }
        }
        let allowed =
            BUDGET_MIN_PER_SEC * BUDGET_WINDOW_SECS + (requests as f64 * BUDGET_RATIO) as u64;
        if retries >= allowed {
            return false;
        }
        self.bucket(now).retries.fetch_add(1, Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::snapshot;
    use serde_json::json;

    fn runtime(version: u64, nodes: &[u16], previous: Option<&Runtime>) -> Runtime {
        let nodes: Vec<_> = nodes
            .iter()
            .map(|port| json!({"host": "127.0.0.1", "port": port}))
            .collect();
        let snap = snapshot(
            version,
            &[(
                "upstreams",
                "u",
                json!({"nodes": nodes, "lb": "least_requests", "health_check": {"passive": {}}}),
            )],
        );
        Runtime::compile(&snap, previous).unwrap()
    }

    #[test]
    fn unchanged_nodes_keep_their_state_across_a_changed_upstream() {
        let first = runtime(1, &[1, 2], None);
        let busy = first.upstreams["u"].nodes[0].load.start();
        let second = runtime(2, &[1, 3], Some(&first));
        let (old, new) = (&first.upstreams["u"], &second.upstreams["u"]);
        assert!(!Arc::ptr_eq(old, new));
        assert!(Arc::ptr_eq(&old.nodes[0].load, &new.nodes[0].load));
        assert!(Arc::ptr_eq(&old.nodes[0].health, &new.nodes[0].health));
        assert!(!Arc::ptr_eq(&old.nodes[1].load, &new.nodes[1].load));
        assert_eq!(new.nodes[0].load.in_flight(), 1);
        assert!(Arc::ptr_eq(&old.budget, &new.budget));
        assert!(Arc::ptr_eq(&old.client, &new.client));
        drop(busy);
        assert_eq!(new.nodes[0].load.in_flight(), 0);
    }

    #[test]
    fn a_node_listed_twice_is_one_node_with_the_summed_weight() {
        // Stored before the control plane refused such lists: still served, as one node.
        let snap = snapshot(
            1,
            &[(
                "upstreams",
                "u",
                json!({"nodes": [
                    {"host": "127.0.0.1", "port": 1, "weight": 2},
                    {"host": "127.0.0.1", "port": 2},
                    {"host": "127.0.0.1", "port": 1, "weight": 3}
                ]}),
            )],
        );
        let rt = Runtime::compile(&snap, None).unwrap();
        let nodes = &rt.upstreams["u"].nodes;
        let summary: Vec<(&str, u32)> = nodes
            .iter()
            .map(|n| (n.authority.as_str(), n.weight))
            .collect();
        assert_eq!(summary, [("127.0.0.1:1", 5), ("127.0.0.1:2", 1)]);
    }

    #[test]
    fn unhealthy_nodes_are_skipped_until_all_are() {
        let rt = runtime(1, &[1, 2, 3], None);
        let u = &rt.upstreams["u"];
        let passive = PassiveHealthCheck {
            unhealthy_after: 1,
            eject_ms: 60_000,
        };
        u.nodes[0].health.record_request(false, Some(&passive));
        u.nodes[1].health.record_request(false, Some(&passive));
        for _ in 0..50 {
            assert_eq!(u.pick_index(None, |_| false), Some(2));
        }
        // Fail open: with every node ejected, they are still tried.
        u.nodes[2].health.record_request(false, Some(&passive));
        assert!(u.pick_index(None, |_| false).is_some());
        // A retry never goes back to a node it tried while another remains.
        assert_eq!(u.pick_index(None, |i| i != 1), Some(1));
        assert_eq!(u.pick_index(None, |_| true), None);
    }

    #[test]
    fn the_retry_budget_allows_a_floor_plus_a_share_of_requests() {
        let budget = RetryBudget::default();
        let floor = BUDGET_MIN_PER_SEC * BUDGET_WINDOW_SECS;
        for _ in 0..floor {
            assert!(budget.try_retry());
        }
        assert!(!budget.try_retry());
        for _ in 0..100 {
            budget.record_request();
        }
        let extra = (0..100).filter(|_| budget.try_retry()).count();
        assert_eq!(extra, 20);
    }
}
