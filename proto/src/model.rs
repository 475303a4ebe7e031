//! Resource model: the typed view of every config resource.
//!
//! The JSON Schema in [`crate::schema`] is the authority on what a document may contain; these
//! types are what a document means once it has passed that schema. Optional fields carry the
//! defaults an APISIX or Kong user would expect.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A kind of config resource, named as its admin API collection.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Groups of backend nodes with a balancing policy.
    Upstreams,
    /// Request matchers that send to an upstream.
    Routes,
}

impl Kind {
    /// Every kind, in dependency order: a kind only references kinds before it.
    pub const ALL: [Kind; 2] = [Kind::Upstreams, Kind::Routes];

    /// The collection name used in URLs and on the wire (`routes`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Upstreams => "upstreams",
            Kind::Routes => "routes",
        }
    }

    /// The singular name used for schemas (`route`).
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Upstreams => "upstream",
            Kind::Routes => "route",
        }
    }

    /// Parses a collection name (`routes`) or a singular name (`route`).
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == name || k.singular() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one resource in a config.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceKey {
    /// The resource's kind.
    pub kind: Kind,
    /// The resource's id, unique within its kind.
    pub id: String,
}

impl ResourceKey {
    /// Builds a key.
    pub fn new(kind: Kind, id: impl Into<String>) -> Self {
        ResourceKey {
            kind,
            id: id.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

/// Whether `id` is a valid resource id: `[A-Za-z0-9._-]{1,64}`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Fields the server manages; they are accepted on input (so a GET can be PUT back) and ignored.
pub const SERVER_FIELDS: [&str; 4] = ["id", "created_at", "updated_at", "revision"];

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
    /// Connect and read timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
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
}

/// Balancing algorithm.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalance {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
}

/// Upstream timeouts, in milliseconds.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Time allowed to establish a TCP connection.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// Time allowed for the response headers to arrive once the request is sent.
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

/// A request matcher and where matching requests go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Paths: exact (`/a`), with named segments (`/users/:id`) or a prefix (`/static/*`).
    pub paths: Vec<String>,
    /// Host names (`api.example.com`) or wildcards (`*.example.com`); empty matches any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// HTTP methods; empty matches any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Tie-breaker between equally specific routes: higher wins.
    #[serde(default)]
    pub priority: i64,
    /// A disabled route is kept in the config but never matches.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The upstream requests go to, by id.
    #[serde(default)]
    pub upstream_id: Option<String>,
    /// An upstream defined in place.
    #[serde(default)]
    pub upstream: Option<Upstream>,
    /// Plugin name → plugin config.
    #[serde(default)]
    pub plugins: BTreeMap<String, Value>,
}

fn default_true() -> bool {
    true
}

/// A resource document after validation, typed by kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// An upstream.
    Upstream(Upstream),
    /// A route.
    Route(Route),
}

impl Parsed {
    /// The resources this one names and that must exist for it to be valid.
    pub fn references(&self) -> Vec<ResourceKey> {
        match self {
            Parsed::Upstream(_) => Vec::new(),
            Parsed::Route(route) => route
                .upstream_id
                .iter()
                .map(|id| ResourceKey::new(Kind::Upstreams, id.clone()))
                .collect(),
        }
    }
}
