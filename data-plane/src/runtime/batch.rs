//! Batch plans: a batch route's sub-requests compiled once per snapshot — templates parsed,
//! each sub-request's upstream resolved to the runtime's shared [`UpstreamRuntime`] (so
//! sub-requests use the same pools and balancers as proxied traffic), and the dependency graph
//! put in topological order. The request path runs them (`proxy::batch`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway_proto::model::{Batch, HedgeOverride, Merge, Template};
use http::Method;
use http::header::HeaderName;
use serde_json::Value;

use super::{CompileError, UpstreamRuntime};
use crate::plugins::proxy_cache::store::{Caches, Store};

/// The bound of a batch route's cache (its sub-requests with `cache`, together).
pub const BATCH_CACHE_BYTES: u64 = 16 << 20;

/// A batch ready for the request path.
#[derive(Debug)]
pub struct CompiledBatch {
    /// The sub-requests, in declared order.
    pub requests: Vec<CompiledSubRequest>,
    /// Indices into `requests` such that each comes after every one it depends on.
    pub order: Vec<usize>,
    /// Whether no sub-request depends on another (every one can start at once).
    pub independent: bool,
    /// How answers are merged.
    pub merge: Merge,
    /// Whether the client's query string is appended to every sub-request.
    pub pass_query: bool,
    /// Deadline of the whole batch.
    pub timeout: Duration,
    /// Most sub-requests of one client request in flight at once.
    pub max_concurrency: usize,
    /// Cap on each body read into memory.
    pub max_body_bytes: usize,
}

/// One sub-request, compiled.
#[derive(Debug)]
pub struct CompiledSubRequest {
    /// Its name.
    pub name: String,
    /// The upstream it goes to: the runtime's shared one, balancer included.
    pub upstream: Arc<UpstreamRuntime>,
    /// The path template as configured, reported as the `uri` of a sub-request never sent.
    pub path_text: String,
    /// The path (and query) template.
    pub path: Template,
    /// The method, when it overrides the client's.
    pub method: Option<Method>,
    /// Headers set on top of the client's.
    pub headers: Vec<(HeaderName, Template)>,
    /// The body, when it overrides the client's.
    pub body: Option<BodyTemplate>,
    /// Whether its failure fails the batch.
    pub required: bool,
    /// Its own deadline, counted from when it is sent.
    pub timeout: Option<Duration>,
    /// Its hedging policy (or `false`: none), when it overrides the route's and the upstream's.
    pub hedge: Option<HedgeOverride>,
    /// Its `group` for `merge: deep`.
    pub group: Option<String>,
    /// Indices of the sub-requests whose answers it reads.
    pub deps: Vec<usize>,
    /// Whether its answer is kept as the node's bytes (the request path's `Answer::Raw`): no
    /// other sub-request reads it and the merge is not `deep`.
    pub keep_raw: bool,
    /// Where its answers are kept, and for how long (`cache`).
    pub cache: Option<SubRequestCache>,
}

/// A sub-request's cache: the batch route's store, and how long an answer is reused.
#[derive(Debug)]
pub struct SubRequestCache {
    /// The route's batch store, shared by its cached sub-requests.
    pub store: Arc<Store>,
    /// How long an answer is reused.
    pub ttl: Duration,
}

/// A configured sub-request body.
#[derive(Debug)]
pub enum BodyTemplate {
    /// A string template, sent as is.
    Text(Template),
    /// A JSON value, sent serialised as `application/json`.
    Json(Bytes),
}

impl CompiledBatch {
    /// Compiles `spec`, the batch of route `route`, against the runtime's `upstreams`; the
    /// store of its cached sub-requests comes from `caches` (the same one while the batch is
    /// unchanged).
    ///
    /// The schema already checked all of this on write; it is checked again because a
    /// snapshot built by hand (or by a buggy control plane) must be NACKed, not served.
    pub fn compile(
        route: &str,
        spec: &Batch,
        upstreams: &HashMap<String, Arc<UpstreamRuntime>>,
        caches: &Caches,
    ) -> Result<CompiledBatch, CompileError> {
        let invalid = |reason: String| CompileError::InvalidBatch {
            route: route.to_owned(),
            reason,
        };
        let index: HashMap<&str, usize> = spec
            .requests
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.as_str(), i))
            .collect();
        if index.len() != spec.requests.len() {
            return Err(invalid("sub-request names are not unique".to_owned()));
        }
        let template = |name: &str, text: &str| {
            Template::parse(text).map_err(|e| invalid(format!("sub-request {name:?}: {e}")))
        };
        let store = spec.requests.iter().any(|r| r.cache.is_some()).then(|| {
            // Any change to the batch starts an empty store.
            let fingerprint = serde_json::to_string(spec).unwrap_or_default();
            caches.store(
                &format!("routes/{route}/batch"),
                &fingerprint,
                BATCH_CACHE_BYTES,
            )
        });
        let mut requests = Vec::with_capacity(spec.requests.len());
        for sub in &spec.requests {
            let upstream = upstreams.get(&sub.upstream_id).cloned().ok_or_else(|| {
                CompileError::UnknownUpstream {
                    route: route.to_owned(),
                    upstream: sub.upstream_id.clone(),
                }
            })?;
            let path = template(&sub.name, &sub.path)?;
            let method = match &sub.method {
                Some(m) => Some(Method::from_bytes(m.as_bytes()).map_err(|_| {
                    invalid(format!("sub-request {:?}: invalid method {m:?}", sub.name))
                })?),
                None => None,
            };
            let mut headers = Vec::with_capacity(sub.headers.len());
            for (name, value) in &sub.headers {
                let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    invalid(format!(
                        "sub-request {:?}: invalid header {name:?}",
                        sub.name
                    ))
                })?;
                headers.push((header, template(&sub.name, value)?));
            }
            let body = match &sub.body {
                None => None,
                Some(Value::String(text)) => Some(BodyTemplate::Text(template(&sub.name, text)?)),
                Some(json) => Some(BodyTemplate::Json(Bytes::from(json.to_string()))),
            };
            let mut deps = Vec::new();
            let texts = std::iter::once(&path)
                .chain(headers.iter().map(|(_, t)| t))
                .chain(body.iter().filter_map(|b| match b {
                    BodyTemplate::Text(t) => Some(t),
                    BodyTemplate::Json(_) => None,
                }));
            for name in texts.flat_map(Template::dependencies) {
                let &dep = index.get(name).ok_or_else(|| {
                    invalid(format!(
                        "sub-request {:?} reads {name:?}, which is not in the batch",
                        sub.name
                    ))
                })?;
                if !deps.contains(&dep) {
                    deps.push(dep);
                }
            }
            requests.push(CompiledSubRequest {
                name: sub.name.clone(),
                upstream,
                path_text: sub.path.clone(),
                path,
                method,
                headers,
                body,
                required: sub.required,
                timeout: sub.timeout_ms.map(Duration::from_millis),
                hedge: sub.hedge,
                group: sub.group.clone(),
                deps,
                keep_raw: spec.merge != Merge::Deep,
                cache: sub
                    .cache
                    .zip(store.as_ref())
                    .map(|(cache, store)| SubRequestCache {
                        store: Arc::clone(store),
                        ttl: Duration::from_secs(cache.ttl_s),
                    }),
            });
        }
        // An answer another sub-request reads is parsed: templates point into it.
        for i in 0..requests.len() {
            if requests.iter().any(|r| r.deps.contains(&i)) {
                requests[i].keep_raw = false;
            }
        }
        let graph: Vec<Vec<usize>> = requests.iter().map(|r| r.deps.clone()).collect();
        let order = gateway_proto::schema::topological_order(&graph)
            .ok_or_else(|| invalid("the sub-requests depend on each other in a cycle".into()))?;
        Ok(CompiledBatch {
            independent: requests.iter().all(|r| r.deps.is_empty()),
            requests,
            order,
            merge: spec.merge,
            pass_query: spec.pass_query,
            timeout: Duration::from_millis(spec.timeout_ms),
            max_concurrency: usize::try_from(spec.max_concurrency)
                .unwrap_or(usize::MAX)
                .max(1),
            max_body_bytes: usize::try_from(spec.max_body_bytes).unwrap_or(usize::MAX),
        })
    }
}
