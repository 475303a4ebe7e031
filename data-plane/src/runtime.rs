//! The runtime: one config snapshot compiled into what the request path needs.
//!
//! A [`Runtime`] is built off the request path (on a blocking thread, see [`crate::xds`]),
//! never mutated afterwards, and published whole through one `ArcSwap` in
//! [`crate::state::State`]. A request loads it once and keeps that `Arc` to the end, so it never
//! sees two config versions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gateway_proto::Snapshot;
use gateway_proto::model::{PassHost, Route, Upstream};
use http::HeaderValue;
use http::uri::Authority;
use thiserror::Error;

use crate::balance::Balancer;
use crate::router::Router;

/// Why a snapshot could not be compiled. The text goes into the NACK's `error_detail`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CompileError {
    /// A path pattern the router cannot use.
    #[error("route {route}: invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The route's id.
        route: String,
        /// The offending pattern.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A host pattern the router cannot use.
    #[error("route {route}: invalid host {host:?}")]
    InvalidHost {
        /// The route's id.
        route: String,
        /// The offending host.
        host: String,
    },
    /// A method name that is not an HTTP method token.
    #[error("route {route}: invalid method {method:?}")]
    InvalidMethod {
        /// The route's id.
        route: String,
        /// The offending method.
        method: String,
    },
    /// A header, query or client-address condition the router cannot use.
    #[error("route {route}: invalid condition at {pointer}: {reason}")]
    InvalidCondition {
        /// The route's id.
        route: String,
        /// JSON pointer to the condition in the route (`/headers/0/value`).
        pointer: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A route names an upstream that is not in the snapshot.
    #[error("route {route}: upstream {upstream} does not exist")]
    UnknownUpstream {
        /// The route's id.
        route: String,
        /// The missing upstream's id.
        upstream: String,
    },
    /// A route has neither `upstream_id` nor an inline `upstream`.
    #[error("route {route} has no upstream")]
    NoTarget {
        /// The route's id.
        route: String,
    },
    /// An upstream the proxy cannot send to.
    #[error("upstream {upstream}: {reason}")]
    InvalidUpstream {
        /// The upstream's runtime key.
        upstream: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Everything the request path needs, at one config version.
#[derive(Debug)]
pub struct Runtime {
    /// The config version this runtime was compiled from (0 for the initial, empty runtime).
    pub version: u64,
    /// Maps requests to routes.
    pub router: Router,
    /// Every upstream, keyed by id; a route's inline upstream is keyed `route:<route id>`
    /// (ids cannot contain `:`, so the keys never collide).
    pub upstreams: HashMap<String, Arc<UpstreamRuntime>>,
}

impl Runtime {
    /// The runtime served before any snapshot arrives: version 0, no routes, so every request
    /// gets a 404.
    pub fn empty() -> Runtime {
        Runtime {
            version: 0,
            router: Router::default(),
            upstreams: HashMap::new(),
        }
    }

    /// Compiles a validated snapshot.
    ///
    /// `previous` is the runtime being served: an upstream whose definition has not changed is
    /// shared with it (the same `Arc`), so its balancer carries on where it was rather than
    /// sending the next requests to the heaviest node again on every config push.
    pub fn compile(
        snapshot: &Snapshot,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, CompileError> {
        let reuse = |key: &str, spec: &Upstream| {
            previous
                .and_then(|p| p.upstreams.get(key))
                .filter(|u| u.spec == *spec)
                .cloned()
        };
        let mut upstreams = HashMap::new();
        for (id, _, spec) in snapshot.upstreams() {
            let upstream = match reuse(id, spec) {
                Some(same) => same,
                None => Arc::new(UpstreamRuntime::compile(id, spec)?),
            };
            upstreams.insert(id.to_owned(), upstream);
        }

        let mut routes = Vec::new();
        for (id, resource, route) in snapshot.routes() {
            let upstream = match (&route.upstream_id, &route.upstream) {
                (Some(upstream_id), _) => upstreams.get(upstream_id).cloned().ok_or_else(|| {
                    CompileError::UnknownUpstream {
                        route: id.to_owned(),
                        upstream: upstream_id.clone(),
                    }
                })?,
                (None, Some(spec)) => {
                    let key = format!("route:{id}");
                    let upstream = match reuse(&key, spec) {
                        Some(same) => same,
                        None => Arc::new(UpstreamRuntime::compile(&key, spec)?),
                    };
                    upstreams.insert(key, Arc::clone(&upstream));
                    upstream
                }
                (None, None) => {
                    return Err(CompileError::NoTarget {
                        route: id.to_owned(),
                    });
                }
            };
            routes.push(Arc::new(CompiledRoute {
                id: id.to_owned(),
                revision: resource.revision,
                spec: route.clone(),
                upstream,
            }));
        }

        Ok(Runtime {
            version: snapshot.version,
            router: Router::build(routes)?,
            upstreams,
        })
    }
}

/// A route ready for the request path.
#[derive(Debug)]
pub struct CompiledRoute {
    /// The route's id.
    pub id: String,
    /// The config version in which the route last changed; the router prefers older routes.
    pub revision: u64,
    /// The route as configured.
    pub spec: Route,
    /// Where matching requests go.
    pub upstream: Arc<UpstreamRuntime>,
}

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
    /// The definition this was compiled from; a new snapshot with an equal definition reuses
    /// this runtime, balancer state included.
    pub spec: Upstream,
}

/// One backend of an upstream.
#[derive(Debug)]
pub struct Node {
    /// `host:port` (IPv6 hosts in brackets): what requests are sent to, and the node's identity
    /// for logs and, later, health state.
    pub authority: Authority,
    /// The same, as the `Host` header value for `pass_host: node`.
    pub host_header: HeaderValue,
    /// The configured weight.
    pub weight: u32,
}

impl UpstreamRuntime {
    /// Compiles one upstream definition; `key` names it in errors and logs.
    pub fn compile(key: &str, spec: &Upstream) -> Result<UpstreamRuntime, CompileError> {
        let invalid = |reason: String| CompileError::InvalidUpstream {
            upstream: key.to_owned(),
            reason,
        };
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
            nodes.push(Node {
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
        let weights: Vec<u32> = nodes.iter().map(|n| n.weight).collect();
        Ok(UpstreamRuntime {
            key: key.to_owned(),
            connect_timeout: Duration::from_millis(spec.timeouts.connect_ms),
            read_timeout: Duration::from_millis(spec.timeouts.read_ms),
            pass_host: spec.pass_host,
            upstream_host,
            balancer: Balancer::new(spec.lb, &weights),
            nodes,
            spec: spec.clone(),
        })
    }

    /// The node that gets the next request, or `None` when every node has weight 0.
    pub fn pick(&self) -> Option<&Node> {
        self.balancer.pick().and_then(|i| self.nodes.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{RequestView, RouteMatch};
    use crate::test_support::snapshot;
    use http::Method;
    use serde_json::json;

    #[test]
    fn the_empty_runtime_matches_nothing() {
        let runtime = Runtime::empty();
        assert_eq!(runtime.version, 0);
        assert!(matches!(
            runtime.router.find(&RequestView::new(&Method::GET, "", "/")),
            RouteMatch::NotFound
        ));
    }

    #[test]
    fn compiles_named_and_inline_upstreams() {
        let snap = snapshot(
            9,
            &[
                (
                    "upstreams",
                    "u",
                    json!({"nodes": [{"host": "fd00::1", "port": 80}, {"host": "b.internal", "port": 81, "weight": 0}]}),
                ),
                ("routes", "r1", json!({"paths": ["/a"], "upstream_id": "u"})),
                (
                    "routes",
                    "r2",
                    json!({"paths": ["/b"], "upstream": {"nodes": [{"host": "127.0.0.1", "port": 82}], "pass_host": "rewrite", "upstream_host": "b.example", "timeouts": {"connect_ms": 10, "read_ms": 20}}}),
                ),
                (
                    "routes",
                    "off",
                    json!({"paths": ["/c"], "upstream_id": "u", "enabled": false}),
                ),
            ],
        );
        let runtime = Runtime::compile(&snap, None).unwrap();
        assert_eq!(runtime.version, 9);
        let mut keys: Vec<&str> = runtime.upstreams.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["route:r2", "u"]);

        let u = &runtime.upstreams["u"];
        assert_eq!(u.nodes[0].authority.as_str(), "[fd00::1]:80");
        assert_eq!(u.pick().unwrap().authority.as_str(), "[fd00::1]:80");
        assert_eq!(
            u.read_timeout,
            Duration::from_millis(gateway_proto::model::DEFAULT_READ_MS)
        );

        let inline = &runtime.upstreams["route:r2"];
        assert_eq!(inline.pass_host, PassHost::Rewrite);
        assert_eq!(inline.upstream_host.as_ref().unwrap(), "b.example");
        assert_eq!(inline.connect_timeout, Duration::from_millis(10));

        let RouteMatch::Found { route, .. } = runtime.router.find(&RequestView::new(&Method::GET, "h", "/b")) else {
            panic!("route r2 should match")
        };
        assert_eq!(route.id, "r2");
        assert!(Arc::ptr_eq(&route.upstream, inline));
        assert!(matches!(
            runtime.router.find(&RequestView::new(&Method::GET, "h", "/c")),
            RouteMatch::NotFound
        ));
    }

    #[test]
    fn unchanged_upstreams_keep_their_balancer_across_compiles() {
        let upstream =
            json!({"nodes": [{"host": "127.0.0.1", "port": 1}, {"host": "127.0.0.1", "port": 2}]});
        let first = Runtime::compile(
            &snapshot(
                1,
                &[
                    ("upstreams", "same", upstream.clone()),
                    ("upstreams", "changed", upstream.clone()),
                ],
            ),
            None,
        )
        .unwrap();
        let changed = json!({"nodes": [{"host": "127.0.0.1", "port": 3}]});
        let second = Runtime::compile(
            &snapshot(
                2,
                &[
                    ("upstreams", "same", upstream),
                    ("upstreams", "changed", changed),
                ],
            ),
            Some(&first),
        )
        .unwrap();
        assert!(Arc::ptr_eq(
            &first.upstreams["same"],
            &second.upstreams["same"]
        ));
        assert!(!Arc::ptr_eq(
            &first.upstreams["changed"],
            &second.upstreams["changed"]
        ));
        assert_eq!(
            second.upstreams["changed"].nodes[0].authority.as_str(),
            "127.0.0.1:3"
        );
    }

    #[test]
    fn a_snapshot_built_by_hand_with_a_dangling_reference_is_refused() {
        // `Snapshot::from_wire` checks references; a hand-built snapshot may not have been.
        let mut snap = snapshot(
            1,
            &[(
                "upstreams",
                "u",
                json!({"nodes": [{"host": "h", "port": 1}]}),
            )],
        );
        let route: Route =
            serde_json::from_value(json!({"paths": ["/"], "upstream_id": "missing"})).unwrap();
        snap.resources.insert(
            gateway_proto::ResourceKey::new(gateway_proto::Kind::Routes, "r"),
            gateway_proto::snapshot::SnapshotResource {
                revision: 1,
                parsed: gateway_proto::model::Parsed::Route(route),
            },
        );
        assert_eq!(
            Runtime::compile(&snap, None).unwrap_err(),
            CompileError::UnknownUpstream {
                route: "r".into(),
                upstream: "missing".into()
            }
        );
    }
}
