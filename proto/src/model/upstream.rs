//! Upstreams: groups of backend nodes and how to reach, balance, check and retry them.

use serde::{Deserialize, Serialize};

/// A group of backend nodes and how to reach them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Upstream {
    /// The backends; at least one.
    pub nodes: Vec<UpstreamNode>,
    /// Protocol spoken to the nodes.
    #[serde(default)]
    pub scheme: Scheme,
    /// Balancing algorithm.
    #[serde(default)]
    pub lb: LoadBalance,
    /// Where `consistent_hash` takes its key from.
    #[serde(default)]
    pub hash_on: Option<HashOn>,
    /// Connect and read timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Retries of failed attempts on other nodes; none by default.
    #[serde(default)]
    pub retries: Option<Retries>,
    /// Hedged requests: an idempotent request not answered within a delay is sent to another
    /// node too, and the first good answer wins; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<Hedge>,
    /// Active and passive health checking; none by default.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// TLS settings for `scheme: https`.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// Keep-alive connection pool limits.
    #[serde(default)]
    pub keepalive_pool: Option<KeepalivePool>,
    /// Which `Host` header the upstream request carries.
    #[serde(default)]
    pub pass_host: PassHost,
    /// The `Host` sent when `pass_host` is `rewrite`.
    #[serde(default)]
    pub upstream_host: Option<String>,
}

/// One backend of an upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamNode {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Relative share of requests; 0 drains the node.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Protocol spoken to upstream nodes.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// Plain HTTP/1.1.
    #[default]
    Http,
    /// HTTP over TLS; HTTP/2 when the node offers it through ALPN, else HTTP/1.1.
    Https,
    /// HTTP/2 with prior knowledge over plain TCP (gRPC backends, h2c services).
    H2c,
}

/// Balancing algorithm.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalance {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two choices over in-flight requests, weighted.
    LeastRequests,
    /// Peak-EWMA latency times in-flight requests, weighted (power of two choices).
    Ewma,
    /// A consistent-hash ring over the key `hash_on` names.
    ConsistentHash,
    /// Weighted random.
    Random,
}

/// Where a consistent-hash key comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashOn {
    /// The part of the request.
    pub source: HashSource,
    /// The header, cookie or query argument name (for those sources).
    #[serde(default)]
    pub name: Option<String>,
}

/// A part of the request a consistent-hash key is taken from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashSource {
    /// A request header, by `name`.
    Header,
    /// A cookie, by `name`.
    Cookie,
    /// A query argument, by `name`.
    Query,
    /// The client's IP address.
    RemoteAddr,
    /// The request path and query.
    Uri,
}

/// Upstream timeouts, in milliseconds.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Time allowed to establish a TCP connection.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// Time allowed for the response headers to arrive once the request is sent, and between
    /// two reads of the response body.
    #[serde(default = "default_read_ms")]
    pub read_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: default_connect_ms(),
            read_ms: default_read_ms(),
        }
    }
}

/// A route's timeouts: each one set replaces the upstream's, each one left out keeps it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutOverrides {
    /// Replaces the upstream's `connect_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<u64>,
    /// Replaces the upstream's `read_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ms: Option<u64>,
}

/// Default connect timeout (APISIX and Kong both default to 60 s for every timeout; a connect
/// that takes more than 5 s on a data-centre network has failed).
pub const DEFAULT_CONNECT_MS: u64 = 5_000;
/// Default read timeout, as in APISIX and Kong.
pub const DEFAULT_READ_MS: u64 = 60_000;

fn default_connect_ms() -> u64 {
    DEFAULT_CONNECT_MS
}

fn default_read_ms() -> u64 {
    DEFAULT_READ_MS
}

/// Retries of a failed attempt on another node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retries {
    /// Extra attempts after the first; 0 turns retries off.
    pub count: u32,
    /// The failures that allow a retry.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// Retry non-idempotent methods (POST, PATCH) too. Off by default: a POST that reached a
    /// node may have had its effect even if the answer was lost.
    #[serde(default)]
    pub non_idempotent: bool,
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectError, RetryOn::Timeout]
}

/// A failure that allows a retry.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// The connection could not be established (or broke before a response).
    ConnectError,
    /// A connect or read deadline passed.
    Timeout,
    /// The node answered 502.
    #[serde(rename = "status_502")]
    Status502,
    /// The node answered 503.
    #[serde(rename = "status_503")]
    Status503,
    /// The node answered 504.
    #[serde(rename = "status_504")]
    Status504,
}

/// Hedged requests: when the first attempt of an idempotent request has not answered (its
/// response head) after `delay_ms`, the same request goes to another node as well; the first
/// good answer wins and the others are cancelled. Hedges take tokens from the retry budget.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hedge {
    /// How long the first attempt (and each hedge after it) may go unanswered before the next.
    pub delay_ms: HedgeDelay,
    /// Hedges sent at most per request, on top of the first attempt.
    #[serde(default = "default_max_extra")]
    pub max_extra: u32,
}

/// Default and bounds of [`Hedge::max_extra`].
pub const DEFAULT_HEDGE_MAX_EXTRA: u32 = 1;
/// Most hedges one request may send.
pub const MAX_HEDGE_EXTRA: u32 = 3;

fn default_max_extra() -> u32 {
    DEFAULT_HEDGE_MAX_EXTRA
}

/// How long to wait before hedging: a fixed delay, or the first node's observed latency.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HedgeDelay {
    /// A fixed number of milliseconds (`"delay_ms": 30`).
    Millis(u64),
    /// The 95th percentile of the first attempt's node's recent latencies (`"delay_ms": "p95"`).
    P95,
}

/// The one word `delay_ms` takes instead of a number.
const HEDGE_DELAY_P95: &str = "p95";

impl Serialize for HedgeDelay {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            HedgeDelay::Millis(ms) => serializer.serialize_u64(*ms),
            HedgeDelay::P95 => serializer.serialize_str(HEDGE_DELAY_P95),
        }
    }
}

impl<'de> Deserialize<'de> for HedgeDelay {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Millis(u64),
            Word(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Millis(ms) => Ok(HedgeDelay::Millis(ms)),
            Raw::Word(word) if word == HEDGE_DELAY_P95 => Ok(HedgeDelay::P95),
            Raw::Word(word) => Err(serde::de::Error::custom(format!(
                "delay_ms is a number of milliseconds or \"p95\", not {word:?}"
            ))),
        }
    }
}

/// A route's or a batch sub-request's hedging, over the upstream's: a policy of its own, or
/// `false`: never hedged, whatever the upstream says.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HedgeOverride {
    /// `"hedge": false`.
    Off,
    /// `"hedge": {...}`.
    Policy(Hedge),
}

impl HedgeOverride {
    /// The policy in force where this override is set: its own, or none.
    pub fn policy(&self) -> Option<&Hedge> {
        match self {
            HedgeOverride::Off => None,
            HedgeOverride::Policy(hedge) => Some(hedge),
        }
    }
}

impl Serialize for HedgeOverride {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            HedgeOverride::Off => serializer.serialize_bool(false),
            HedgeOverride::Policy(hedge) => hedge.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for HedgeOverride {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Switch(bool),
            Policy(Hedge),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Switch(false) => Ok(HedgeOverride::Off),
            Raw::Policy(hedge) => Ok(HedgeOverride::Policy(hedge)),
            Raw::Switch(true) => Err(serde::de::Error::custom(
                "hedge is a policy ({\"delay_ms\": ...}) or false, not true",
            )),
        }
    }
}

/// Health checking of an upstream's nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Probes sent by each data plane.
    #[serde(default)]
    pub active: Option<ActiveHealthCheck>,
    /// Judgement from real traffic.
    #[serde(default)]
    pub passive: Option<PassiveHealthCheck>,
}

/// Active health checks: an HTTP GET to every node, on a timer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveHealthCheck {
    /// The path probed; a 2xx or 3xx answer is healthy.
    #[serde(default = "default_probe_path")]
    pub path: String,
    /// Time between probes of one node.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Time allowed for one probe.
    #[serde(default = "default_probe_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive successes that make an unhealthy node healthy.
    #[serde(default = "default_healthy_after")]
    pub healthy_after: u32,
    /// Consecutive failures that make a healthy node unhealthy.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
}

fn default_probe_path() -> String {
    "/".to_owned()
}
fn default_interval_ms() -> u64 {
    2_000
}
fn default_probe_timeout_ms() -> u64 {
    1_000
}
fn default_healthy_after() -> u32 {
    2
}
fn default_unhealthy_after() -> u32 {
    3
}

/// Passive health checks: consecutive failures of real requests eject a node for a while.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassiveHealthCheck {
    /// Consecutive failures (connect errors, timeouts, 5xx that the retry policy names) that
    /// eject the node.
    #[serde(default = "default_passive_unhealthy_after")]
    pub unhealthy_after: u32,
    /// How long an ejected node gets no traffic (unless active checks bring it back sooner).
    #[serde(default = "default_eject_ms")]
    pub eject_ms: u64,
}

fn default_passive_unhealthy_after() -> u32 {
    5
}
fn default_eject_ms() -> u64 {
    30_000
}

/// TLS to upstream nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamTls {
    /// Verify the node's certificate chain and name against the web PKI roots.
    #[serde(default = "default_true")]
    pub verify: bool,
    /// The server name sent in SNI and verified; by default `upstream_host` when `pass_host`
    /// is `rewrite`, else the node's host.
    #[serde(default)]
    pub sni: Option<String>,
}

impl Default for UpstreamTls {
    fn default() -> Self {
        UpstreamTls {
            verify: true,
            sni: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// Keep-alive pool limits, per node.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepalivePool {
    /// Idle connections kept per node.
    #[serde(default = "default_pool_size")]
    pub size: usize,
    /// An idle connection is closed after this long.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
}

impl Default for KeepalivePool {
    fn default() -> Self {
        KeepalivePool {
            size: default_pool_size(),
            idle_timeout_ms: default_idle_timeout_ms(),
        }
    }
}

/// Default idle connections kept per node (APISIX's `keepalive_pool.size` is 320).
pub const DEFAULT_POOL_SIZE: usize = 320;
/// Default idle timeout of a pooled connection.
pub const DEFAULT_POOL_IDLE_TIMEOUT_MS: u64 = 60_000;

fn default_pool_size() -> usize {
    DEFAULT_POOL_SIZE
}
fn default_idle_timeout_ms() -> u64 {
    DEFAULT_POOL_IDLE_TIMEOUT_MS
}

/// Which `Host` header the upstream request carries.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PassHost {
    /// The client's `Host`, unchanged.
    #[default]
    Pass,
    /// The chosen node's `host:port`.
    Node,
    /// The upstream's `upstream_host`.
    Rewrite,
}
