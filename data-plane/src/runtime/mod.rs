//! The runtime: one config snapshot compiled into what the request path needs.
//!
//! - [`router`]: routes by host, path and conditions.
//! - [`upstream`]: upstreams with their nodes, balancer ([`balance`]), health ([`health`]),
//!   retry budget and transport.
//! - [`batch`]: batch plans.
//! - the plugin chains, compiled by the plugins' factory ([`crate::plugins`]).
//! - [`tls`]: the TLS certificates, indexed by SNI for the TLS listener.
//!
//! It knows no request path: what it holds of the transport is a node's pool and a client.
//!
//! A [`Runtime`] is built off the request path (on the config thread, see [`crate::xds`]),
//! never mutated afterwards, and published whole through one `ArcSwap` in
//! [`crate::state::State`]. A request loads it once and keeps that `Arc` to the end, so it never
//! sees two config versions.

pub mod balance;
pub mod batch;
pub mod health;
pub mod hedge;
pub mod router;
pub mod tls;
pub mod upstream;

use gateway_proto::model::{Parsed, Route, Upstream};
use gateway_proto::{Kind, ResourceKey, Snapshot};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use thiserror::Error;

use crate::plugins::{BuildEnv, CompiledPlugins, PluginChain, PluginError};
use batch::CompiledBatch;
use router::Router;
pub use upstream::{Node, UpstreamRuntime};

/// Why a snapshot could not be compiled. The text goes into the NACK's `error_detail`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CompileError {
    /// A plugin this data plane lacks, or a plugin config it cannot use.
    #[error(transparent)]
    Plugin(#[from] PluginError),
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
    /// A batch route that cannot be compiled (a snapshot built without validation).
    #[error("route {route}: invalid batch: {reason}")]
    InvalidBatch {
        /// The route's id.
        route: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A route has neither `upstream_id` nor an inline `upstream`.
    #[error("route {route} has no upstream")]
    NoTarget {
        /// The route's id.
        route: String,
    },
    /// A certificate whose chain or key cannot be loaded.
    #[error("certificate {id}: {reason}")]
    Certificate {
        /// The certificate's id.
        id: String,
        /// What is wrong with it.
        reason: String,
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
    /// Global rules, consumers and the plugin build environment (shared with the next runtime
    /// when a version changes only routes).
    pub plugins: Arc<CompiledPlugins>,
    /// The TLS listener's certificates, by SNI (shared likewise).
    pub certificates: Arc<tls::Certificates>,
    /// What the routes' plugin chains were compiled against.
    chain_basis: ChainBasis,
}

impl Runtime {
    /// The runtime served before any snapshot arrives: version 0, no routes, so every request
    /// gets a 404.
    pub fn empty() -> Runtime {
        Runtime::empty_with(BuildEnv::default())
    }

    /// The empty runtime of a data plane whose plugins build with `env` (shared counters);
    /// every runtime compiled after it inherits that environment.
    pub fn empty_with(env: BuildEnv) -> Runtime {
        Runtime {
            version: 0,
            router: Router::default(),
            upstreams: HashMap::new(),
            plugins: Arc::new(CompiledPlugins::empty(env)),
            certificates: Arc::default(),
            chain_basis: ChainBasis::default(),
        }
    }

    /// Compiles a validated snapshot.
    ///
    /// `previous` is the runtime being served: an upstream whose definition has not changed is
    /// shared with it (the same `Arc`), so its balancer carries on where it was rather than
    /// sending the next requests to the heaviest node again on every config push. While the
    /// global rules and upstream ids are those `previous` was compiled against, its unchanged
    /// routes are shared too and its router is patched with the rest.
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
                None => Arc::new(UpstreamRuntime::compile_with(id, spec, previous)?),
            };
            upstreams.insert(id.to_owned(), upstream);
        }

        let mut env = previous
            .map(|p| p.plugins.env().clone())
            .unwrap_or_default();
        // `traffic-split` resolves its upstream ids against this snapshot's named upstreams.
        let upstream_ids: HashSet<String> = upstreams.keys().cloned().collect();
        let chain_basis = ChainBasis {
            global_rules: snapshot
                .global_rules()
                .map(|(id, resource, _)| (id.to_owned(), resource.revision))
                .collect(),
        };
        // A route's chain overlays the global rules and checks upstream ids: while neither
        // changed, an unchanged route keeps what was compiled for it, and the previous router
        // is patched rather than built again.
        let reusable = previous
            .filter(|p| p.chain_basis == chain_basis && *p.plugins.env().upstreams == upstream_ids);
        env.upstreams = Arc::new(upstream_ids);
        let plugins = CompiledPlugins::compile(snapshot, &env)?;
        let mut router = match reusable {
            Some(p) => p.router.clone(),
            None => Router::default(),
        };
        let mut rebuilt = Vec::new();
        let mut count = 0;
        for (id, resource, route) in snapshot.routes() {
            count += 1;
            let same = reusable.and_then(|p| p.router.route(id));
            let compiled = compile_route(
                id,
                resource.revision,
                route,
                same,
                &plugins,
                &env,
                &mut upstreams,
                previous,
            )?;
            match reusable {
                Some(_) if same.is_some_and(|same| Arc::ptr_eq(same, &compiled)) => {}
                Some(_) => router.insert(compiled)?,
                None => rebuilt.push(compiled),
            }
        }
        match reusable {
            // What the snapshot no longer has leaves the patched router (it holds every route
            // of the snapshot now, so it holds others only if it holds more).
            Some(p) if router.route_count() > count => {
                let ids: HashSet<&str> = snapshot.routes().map(|(id, _, _)| id).collect();
                let mut gone = Vec::new();
                p.router.for_each_route(|id, _| {
                    if !ids.contains(id) {
                        gone.push(id);
                    }
                });
                for id in gone {
                    router.remove(id);
                }
            }
            Some(_) => {}
            None => router = Router::build(rebuilt)?,
        }

        let certificates =
            tls::Certificates::compile(snapshot, previous.map(|p| &*p.certificates))?;
        Ok(Runtime {
            version: snapshot.version,
            router,
            upstreams,
            plugins: Arc::new(plugins),
            certificates: Arc::new(certificates),
            chain_basis,
        })
    }

    /// Compiles `snapshot`, which differs from the snapshot `previous` was compiled from only in
    /// the resources `changed` names (a delta's resources and removals). When they are all
    /// routes, only those are compiled and the previous router is patched with them: the cost
    /// follows the change, not the config's size. Any other change compiles like
    /// [`Runtime::compile`].
    pub fn compile_changes(
        snapshot: &Snapshot,
        previous: &Runtime,
        changed: &[ResourceKey],
    ) -> Result<Runtime, CompileError> {
        if changed.iter().any(|key| key.kind != Kind::Routes) {
            return Runtime::compile(snapshot, Some(previous));
        }
        let mut upstreams = previous.upstreams.clone();
        let mut router = previous.router.clone();
        let env = previous.plugins.env();
        for key in changed {
            let id = key.id.as_str();
            let before = router.remove(id);
            // Its inline upstream, if it had one, is compiled again (or shared) below.
            upstreams.remove(&format!("route:{id}"));
            let Some(resource) = snapshot.resources.get(key) else {
                continue;
            };
            let Parsed::Route(route) = &resource.parsed else {
                continue;
            };
            let compiled = compile_route(
                id,
                resource.revision,
                route,
                before.as_ref(),
                &previous.plugins,
                env,
                &mut upstreams,
                Some(previous),
            )?;
            router.insert(compiled)?;
        }
        Ok(Runtime {
            version: snapshot.version,
            router,
            upstreams,
            plugins: Arc::clone(&previous.plugins),
            certificates: Arc::clone(&previous.certificates),
            chain_basis: previous.chain_basis.clone(),
        })
    }
}

/// Compiles one route of a snapshot, or shares `same` (its compiled form in the previous
/// runtime, which must have been compiled against the same global rules and upstream ids)
/// while nothing it depends on changed. An inline upstream goes into `upstreams` as
/// `route:<id>`.
#[allow(clippy::too_many_arguments)]
fn compile_route(
    id: &str,
    revision: u64,
    route: &Route,
    same: Option<&Arc<CompiledRoute>>,
    plugins: &CompiledPlugins,
    env: &BuildEnv,
    upstreams: &mut HashMap<String, Arc<UpstreamRuntime>>,
    previous: Option<&Runtime>,
) -> Result<Arc<CompiledRoute>, CompileError> {
    if let Some(same) = same
        .filter(|p| p.revision == revision && p.spec == *route)
        .filter(|p| same_target(p, route, upstreams))
    {
        if let RouteTarget::Upstream(upstream) = &same.target
            && route.upstream.is_some()
        {
            upstreams.insert(format!("route:{id}"), Arc::clone(upstream));
        }
        return Ok(Arc::clone(same));
    }
    let reuse = |key: &str, spec: &Upstream| {
        previous
            .and_then(|p| p.upstreams.get(key))
            .filter(|u| u.spec == *spec)
            .cloned()
    };
    let chain = plugins.route_chain(id, &route.plugins);
    let target = match (&route.upstream_id, &route.upstream, &route.batch) {
        (Some(upstream_id), _, _) => {
            RouteTarget::Upstream(upstreams.get(upstream_id).cloned().ok_or_else(|| {
                CompileError::UnknownUpstream {
                    route: id.to_owned(),
                    upstream: upstream_id.clone(),
                }
            })?)
        }
        (None, Some(spec), _) => {
            let key = format!("route:{id}");
            let upstream = match reuse(&key, spec) {
                Some(same) => same,
                None => Arc::new(UpstreamRuntime::compile_with(&key, spec, previous)?),
            };
            upstreams.insert(key, Arc::clone(&upstream));
            RouteTarget::Upstream(upstream)
        }
        (None, None, Some(batch)) => {
            let batch = CompiledBatch::compile(id, batch, upstreams, &env.proxy_cache)?;
            RouteTarget::Batch(Arc::new(batch))
        }
        // A plugin of the route's own answers its requests (`batch-requests`).
        (None, None, None) if !matches!(&chain, Ok(c) if c.endpoint.is_none()) => {
            RouteTarget::Endpoint
        }
        (None, None, None) => {
            return Err(CompileError::NoTarget {
                route: id.to_owned(),
            });
        }
    };
    Ok(Arc::new(CompiledRoute {
        id: id.to_owned(),
        revision,
        spec: route.clone(),
        target,
        plugins: chain?,
        matcher: OnceLock::new(),
    }))
}

/// What a compiled route's plugin chain depends on besides the route itself and the snapshot's
/// upstream ids: the global rules it overlays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ChainBasis {
    /// Every global rule's id and revision, in id order.
    global_rules: Vec<(String, u64)>,
}

/// Whether a route compiled for the previous runtime, whose spec equals `route`, still targets
/// what `route` would in this one. Equal specs mean an equal inline upstream (reused unchanged)
/// or the same plugin endpoint; a named upstream must be the very same one; a batch plan holds
/// its upstreams, so a batch route is always compiled afresh.
fn same_target(
    previous: &CompiledRoute,
    route: &Route,
    upstreams: &HashMap<String, Arc<UpstreamRuntime>>,
) -> bool {
    match (&previous.target, &route.upstream_id) {
        (RouteTarget::Upstream(before), Some(id)) => upstreams
            .get(id)
            .is_some_and(|now| Arc::ptr_eq(before, now)),
        (_, _) => route.batch.is_none(),
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
    pub target: RouteTarget,
    /// Its conditions and paths as the router compiled them (on first use; a route shared with
    /// the next runtime keeps them).
    pub matcher: OnceLock<Arc<router::RouteMatcher>>,
    /// The plugins that run on its requests (global rules overlaid by its own).
    pub plugins: Arc<PluginChain>,
}

impl CompiledRoute {
    /// The upstream of a route that proxies to one; `None` for a batch route.
    pub fn upstream(&self) -> Option<&Arc<UpstreamRuntime>> {
        match &self.target {
            RouteTarget::Upstream(upstream) => Some(upstream),
            RouteTarget::Batch(_) | RouteTarget::Endpoint => None,
        }
    }
}

/// Where a route sends what it matches.
#[derive(Debug)]
pub enum RouteTarget {
    /// One upstream: the request is proxied, bodies streamed.
    Upstream(Arc<UpstreamRuntime>),
    /// A fan-out to several upstreams, merged into one JSON answer.
    Batch(Arc<CompiledBatch>),
    /// None: a plugin answers (`batch-requests`).
    Endpoint,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::router::{RequestView, RouteMatch};
    use crate::test_support::snapshot;
    use gateway_proto::model::PassHost;
    use http::Method;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn the_empty_runtime_matches_nothing() {
        let runtime = Runtime::empty();
        assert_eq!(runtime.version, 0);
        assert!(matches!(
            runtime
                .router
                .find(&RequestView::new(&Method::GET, "", "/")),
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

        let RouteMatch::Found { route, .. } =
            runtime
                .router
                .find(&RequestView::new(&Method::GET, "h", "/b"))
        else {
            panic!("route r2 should match")
        };
        assert_eq!(route.id, "r2");
        assert!(Arc::ptr_eq(route.upstream().unwrap(), inline));
        assert!(matches!(
            runtime
                .router
                .find(&RequestView::new(&Method::GET, "h", "/c")),
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
    fn unchanged_routes_are_shared_with_the_previous_runtime() {
        let u = json!({"nodes": [{"host": "127.0.0.1", "port": 1}]});
        let route = |path: &str| json!({"paths": [path], "upstream_id": "u"});
        let inline =
            json!({"paths": ["/i"], "upstream": {"nodes": [{"host": "127.0.0.1", "port": 2}]}});
        let first = Runtime::compile(
            &snapshot(
                1,
                &[
                    ("upstreams", "u", u.clone()),
                    ("routes", "same", route("/same")),
                    ("routes", "moved", route("/before")),
                    ("routes", "inline", inline.clone()),
                ],
            ),
            None,
        )
        .unwrap();
        let second = Runtime::compile(
            &snapshot(
                2,
                &[
                    ("upstreams", "u", u.clone()),
                    ("routes", "same", route("/same")),
                    ("routes", "moved", route("/after")),
                    ("routes", "inline", inline.clone()),
                ],
            ),
            Some(&first),
        )
        .unwrap();
        let (before, after) = (first.router.routes(), second.router.routes());
        assert!(Arc::ptr_eq(before["same"], after["same"]));
        assert!(Arc::ptr_eq(before["inline"], after["inline"]));
        assert!(Arc::ptr_eq(
            &first.upstreams["route:inline"],
            &second.upstreams["route:inline"]
        ));
        assert!(!Arc::ptr_eq(before["moved"], after["moved"]));
        assert_eq!(after["moved"].spec.paths, ["/after"]);

        // A global rule is part of every chain, and a changed upstream of its routes' targets:
        // either compiles the routes afresh.
        let third = Runtime::compile(
            &snapshot(
                3,
                &[
                    ("upstreams", "u", u),
                    ("routes", "same", route("/same")),
                    ("routes", "moved", route("/after")),
                    ("routes", "inline", inline.clone()),
                    ("global-rules", "g", json!({"plugins": {"cors": {}}})),
                ],
            ),
            Some(&second),
        )
        .unwrap();
        let routes = third.router.routes();
        assert!(!Arc::ptr_eq(after["same"], routes["same"]));
        assert_eq!(routes["same"].plugins.plugins.len(), 1);
        let fourth = Runtime::compile(
            &snapshot(
                4,
                &[
                    (
                        "upstreams",
                        "u",
                        json!({"nodes": [{"host": "127.0.0.1", "port": 3}]}),
                    ),
                    ("routes", "same", route("/same")),
                    ("routes", "moved", route("/after")),
                    ("routes", "inline", inline),
                    ("global-rules", "g", json!({"plugins": {"cors": {}}})),
                ],
            ),
            Some(&third),
        )
        .unwrap();
        let now = fourth.router.routes();
        assert!(!Arc::ptr_eq(routes["same"], now["same"]));
        assert!(Arc::ptr_eq(
            now["same"].upstream().unwrap(),
            &fourth.upstreams["u"]
        ));
        assert!(Arc::ptr_eq(routes["inline"], now["inline"]));
    }

    /// A delta of routes (one changed, one removed, one added, an inline upstream changed)
    /// compiled by patching gives the runtime a whole compile gives; a delta that changes an
    /// upstream compiles whole.
    #[test]
    fn a_delta_of_routes_compiles_like_the_whole_snapshot() {
        let u = json!({"nodes": [{"host": "127.0.0.1", "port": 1}]});
        let route = |path: &str| json!({"paths": [path], "upstream_id": "u"});
        let inline = |port: u16| json!({"paths": ["/i"], "upstream": {"nodes": [{"host": "127.0.0.1", "port": port}]}});
        let mut model = snapshot(
            1,
            &[
                ("upstreams", "u", u.clone()),
                ("routes", "same", route("/same")),
                ("routes", "moved", route("/before")),
                ("routes", "gone", route("/gone")),
                ("routes", "i", inline(2)),
            ],
        );
        let first = Runtime::compile(&model, None).unwrap();
        let mut delta = crate::test_support::wire(
            "2",
            "n",
            &[
                ("routes", "moved", route("/after/:x")),
                (
                    "routes",
                    "new",
                    json!({"paths": ["/new/*"], "upstream_id": "u", "priority": 3}),
                ),
                ("routes", "i", inline(3)),
            ],
        );
        delta.base_version = "1".into();
        delta.removed.push(gateway_proto::pb::ResourceRef {
            kind: "routes".into(),
            id: "gone".into(),
        });
        let _undo = model.apply_delta(&delta).unwrap();
        let changed: Vec<ResourceKey> = ["moved", "new", "i", "gone"]
            .into_iter()
            .map(|id| ResourceKey::new(Kind::Routes, id))
            .collect();
        let patched = Runtime::compile_changes(&model, &first, &changed).unwrap();
        let whole = Runtime::compile(&model, None).unwrap();

        assert_eq!(patched.version, 2);
        let ids = |runtime: &Runtime| {
            let mut ids: Vec<String> = runtime
                .router
                .routes()
                .keys()
                .map(|k| k.to_string())
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&patched), ids(&whole));
        let mut keys: Vec<&String> = patched.upstreams.keys().collect();
        keys.sort();
        let mut whole_keys: Vec<&String> = whole.upstreams.keys().collect();
        whole_keys.sort();
        assert_eq!(keys, whole_keys);
        assert_eq!(
            patched.upstreams["route:i"].nodes[0].authority.as_str(),
            "127.0.0.1:3"
        );
        for path in [
            "/same", "/before", "/after/1", "/gone", "/new/x", "/i", "/x",
        ] {
            let found = |runtime: &Runtime| match runtime.router.find(&RequestView::new(
                &Method::GET,
                "h",
                path,
            )) {
                RouteMatch::Found { route, .. } => Some(route.id.clone()),
                _ => None,
            };
            assert_eq!(found(&patched), found(&whole), "{path}");
        }
        assert!(Arc::ptr_eq(
            first.router.route("same").unwrap(),
            patched.router.route("same").unwrap()
        ));
        assert!(Arc::ptr_eq(&first.plugins, &patched.plugins));

        // An upstream changed: compiled whole, so the routes target the new one.
        let mut delta = crate::test_support::wire(
            "3",
            "n",
            &[(
                "upstreams",
                "u",
                json!({"nodes": [{"host": "127.0.0.1", "port": 4}]}),
            )],
        );
        delta.base_version = "2".into();
        let _undo = model.apply_delta(&delta).unwrap();
        let changed = [ResourceKey::new(Kind::Upstreams, "u")];
        let third = Runtime::compile_changes(&model, &patched, &changed).unwrap();
        let same = third.router.route("same").unwrap();
        assert!(Arc::ptr_eq(same.upstream().unwrap(), &third.upstreams["u"]));
        assert_eq!(
            third.upstreams["u"].nodes[0].authority.as_str(),
            "127.0.0.1:4"
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
