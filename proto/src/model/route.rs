//! Routes: request matchers and where matching requests go.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Upstream;

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
