//! Routes: request matchers and where matching requests go.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Batch, HedgeOverride, Retries, TimeoutOverrides, Upstream};

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
    /// Conditions on request headers, all of which must hold.
    #[serde(default)]
    pub headers: Vec<MatchCondition>,
    /// Conditions on query-string arguments, all of which must hold.
    #[serde(default)]
    pub query: Vec<MatchCondition>,
    /// Client addresses (`10.0.0.1`, `::1`) or CIDR blocks (`10.0.0.0/8`, `fd00::/8`); empty
    /// matches any client.
    #[serde(default)]
    pub remote_addrs: Vec<String>,
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
    /// A fan-out to several upstreams merged into one answer, instead of one upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
    /// Overrides the upstream's timeouts for this route, field by field.
    #[serde(default)]
    pub timeouts: Option<TimeoutOverrides>,
    /// Overrides the upstream's retry policy for this route.
    #[serde(default)]
    pub retries: Option<Retries>,
    /// Overrides the upstream's hedging policy for this route (`false`: never hedged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<HedgeOverride>,
    /// Plugin name → plugin config.
    #[serde(default)]
    pub plugins: BTreeMap<String, Value>,
    /// The common `labels` (the `prometheus` plugin reports `labels.name` with `prefer_name`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A condition on one request header or query argument.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchCondition {
    /// The header name (case-insensitive) or query argument name (exact, after decoding).
    pub name: String,
    /// How the value is tested.
    pub op: MatchOp,
    /// The operand of `eq`, `prefix` and `regex`; absent for `exists` and `absent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// How a [`MatchCondition`] tests its header or argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchOp {
    /// Some value equals `value`.
    Eq,
    /// Some value starts with `value`.
    Prefix,
    /// Some value contains a match of the regular expression `value`.
    Regex,
    /// The header or argument is present (with any value, even empty).
    Exists,
    /// The header or argument is not present.
    Absent,
}

fn default_true() -> bool {
    true
}
