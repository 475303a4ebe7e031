//! Resource model: the typed view of every config resource.
//!
//! The JSON Schema in [`crate::schema`] is the authority on what a document may contain; these
//! types are what a document means once it has passed that schema. Optional fields carry the
//! defaults an APISIX or Kong user would expect.

use std::fmt;

use serde::{Deserialize, Serialize};

mod batch;
mod certificate;
mod consumer;
mod route;
mod upstream;

pub use batch::*;
pub use certificate::*;
pub use consumer::*;
pub use route::*;
pub use upstream::*;

/// A kind of config resource, named as its admin API collection.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Groups of backend nodes with a balancing policy.
    Upstreams,
    /// Request matchers that send to an upstream.
    Routes,
    /// Client identities: credentials and per-consumer plugins.
    Consumers,
    /// Plugins that run on every route.
    GlobalRules,
    /// TLS certificates the data planes serve, chosen by SNI.
    Certificates,
}

impl Kind {
    /// Every kind, in dependency order: a kind only references kinds before it.
    pub const ALL: [Kind; 5] = [
        Kind::Upstreams,
        Kind::Consumers,
        Kind::GlobalRules,
        Kind::Routes,
        Kind::Certificates,
    ];

    /// The collection name used in URLs and on the wire (`routes`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Upstreams => "upstreams",
            Kind::Routes => "routes",
            Kind::Consumers => "consumers",
            Kind::GlobalRules => "global-rules",
            Kind::Certificates => "certificates",
        }
    }

    /// The singular name used for schemas (`route`).
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Upstreams => "upstream",
            Kind::Routes => "route",
            Kind::Consumers => "consumer",
            Kind::GlobalRules => "global-rule",
            Kind::Certificates => "certificate",
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

/// Where a document of `kind` keeps secrets stored usable (not as a digest): the control plane
/// answers them as [`crate::plugins::auth::REDACTED`] on every read, diff, export and version
/// view, keeps the stored value when the placeholder is written back, and streams the real one
/// to data planes. JSON pointers; a pointer the document does not reach is no secret of it.
pub fn write_only_fields(kind: Kind) -> &'static [&'static str] {
    use crate::plugins::{auth::JWT_SECRET_POINTER, proxy_cache::PURGE_KEY_POINTER};
    match kind {
        Kind::Consumers => &[JWT_SECRET_POINTER, PURGE_KEY_POINTER],
        Kind::Routes | Kind::GlobalRules => &[PURGE_KEY_POINTER],
        Kind::Certificates => &["/key"],
        Kind::Upstreams => &[],
    }
}

/// A resource document after validation, typed by kind.
// Built once per resource per snapshot, never on the request path: boxing the large variants
// would save memory nobody misses and cost every match a deref.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// An upstream.
    Upstream(Upstream),
    /// A route.
    Route(Route),
    /// A consumer.
    Consumer(Consumer),
    /// A global rule.
    GlobalRule(GlobalRule),
    /// A TLS certificate.
    Certificate(Certificate),
}

impl Parsed {
    /// The resources this one names and that must exist for it to be valid.
    pub fn references(&self) -> Vec<ResourceKey> {
        // A `traffic-split` plugin (on any level) names upstreams too.
        let split = self
            .plugins()
            .map(crate::plugins::traffic_split::upstream_ids)
            .unwrap_or_default();
        let mut ids: Vec<String> = match self {
            Parsed::Upstream(_)
            | Parsed::Consumer(_)
            | Parsed::GlobalRule(_)
            | Parsed::Certificate(_) => split,
            Parsed::Route(route) => {
                // A batch's sub-requests name upstreams too; they must exist like any other.
                let batch = route.batch.iter().flat_map(|b| &b.requests);
                route
                    .upstream_id
                    .iter()
                    .chain(batch.map(|r| &r.upstream_id))
                    .cloned()
                    .chain(split)
                    .collect()
            }
        };
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|id| ResourceKey::new(Kind::Upstreams, id))
            .collect()
    }

    /// The `plugins` map of a kind that has one.
    pub fn plugins(&self) -> Option<&std::collections::BTreeMap<String, serde_json::Value>> {
        match self {
            Parsed::Upstream(_) | Parsed::Certificate(_) => None,
            Parsed::Route(route) => Some(&route.plugins),
            Parsed::Consumer(consumer) => Some(&consumer.plugins),
            Parsed::GlobalRule(rule) => Some(&rule.plugins),
        }
    }
}
