//! The plugin framework: what a plugin is, how a snapshot's plugin configs become compiled
//! plugin instances, and how a request runs through them phase by phase.
//!
//! A plugin = a name, a config schema and a priority (all in `gateway_proto::plugins`, the
//! registry both planes share) + hooks for the request phases, here. [`build`] is the factory:
//! it turns a validated config into an `Arc<dyn Plugin>` once per snapshot, so a bad config is
//! a compile error (a NACK), never a per-request error, and what runs per request is cheap.
//!
//! Phases, in request order (the chart is in ARCHITECTURE.md):
//! 1. `rewrite` — change the request before anything checks it;
//! 2. `access` — authenticate, authorise, limit; may refuse; may be asynchronous;
//! 3. `before_upstream` — last changes once the request will be proxied;
//! 4. `response_headers` — status and headers of the answer, whoever produced it;
//! 5. `response_body` — the answer's body, chunk by chunk as it streams to the client
//!    ([`BodyFilter`], OpenResty's `body_filter_by_lua`);
//! 6. `log` — after the response head is sent.
//!
//! Between 3 and the upstream call, a chain with a plugin that declares a bound
//! ([`Plugin::request_body_limit`]) has a request body phase: the request path reads the body
//! whole (up to the smallest bound, 413 beyond it), hands it to [`Plugin::request_body`], and
//! forwards it unchanged. A chain without one streams the body as it comes.
//!
//! The phase API is this module's own: a request view (`http::request::Parts`), a response
//! view ([`ResponseView`]), a context ([`RequestCtx`]) and an early answer ([`Reject`]). A
//! plugin knows no route, upstream or body type of the request path; what the request path
//! must know of a plugin it declares ([`Plugin::endpoint`], [`Plugin::answers_preflight`]), and
//! what a plugin needs of the request path it is lent ([`Dispatch`]).
//!
//! Within a phase plugins run by descending priority. Levels: a route's chain is the global
//! rules' plugins overlaid by the route's own; when an access-phase plugin identifies a
//! consumer, the consumer's plugins overlay that chain for everything not yet run (consumer
//! beats route beats global rule, as in APISIX).

pub mod api_breaker;
pub mod basic_auth;
pub mod batch_requests;
pub mod cors;
mod expiring;
pub mod ip_restriction;
pub mod jwt_auth;
pub mod key_auth;
pub mod key_source;
pub mod limit_count;
pub mod limit_req;
pub mod prometheus;
pub mod proxy_cache;
pub mod proxy_rewrite;
pub mod redirect;
pub mod request_id;
pub mod request_validation;
pub mod response_rewrite;
pub mod traffic_split;
pub mod uri_blocker;
pub mod util;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, request};
use http_body_util::Full;
use http_body_util::combinators::UnsyncBoxBody;
use serde_json::Value;
use thiserror::Error;

use crate::error::json_response;
use gateway_proto::Snapshot;
use gateway_proto::model::{Consumer, Route};

/// An early answer: the response a plugin sends instead of proxying, written whole.
pub type Reject = Response<Full<Bytes>>;

/// An asynchronous access check; on success, headers to set on the response.
pub type PendingAccess = Pin<Box<dyn Future<Output = Result<HeaderMap, Reject>> + Send + 'static>>;

/// The outcome of an access hook.
pub enum Access {
    /// Go on.
    Continue,
    /// Answer with this response.
    Reject(Reject),
    /// Wait for this check (a shared counter, a delay) before deciding.
    Pending(PendingAccess),
    /// Wait for this check (a password verification off the async workers); if it passes,
    /// the request is this consumer's (as [`key_auth::identify`] marks it).
    Identify(PendingAccess, Arc<ConsumerRuntime>),
}

/// Builds the refusal every plugin uses: the JSON error shape.
pub fn reject(status: StatusCode, code: &str, message: &str) -> Reject {
    json_response(status, code, message)
}

/// The route a request matched, as plugins see it.
#[derive(Copy, Clone, Debug)]
pub struct RouteRef<'r> {
    /// Its id.
    pub id: &'r str,
    /// Its configuration.
    pub spec: &'r Route,
}

/// What a request carries through its phases.
pub struct RequestCtx<'r> {
    /// The matched route.
    pub route: RouteRef<'r>,
    /// Named path segments the router captured.
    pub params: &'r [(String, String)],
    /// The client's address.
    pub client: SocketAddr,
    /// The consumer an auth plugin identified.
    pub consumer: Option<Arc<ConsumerRuntime>>,
    /// The consumers of this config (for auth plugins).
    pub consumers: &'r Consumers,
    /// The id of an upstream chosen by a plugin instead of the route's (traffic splitting).
    pub upstream_override: Option<Arc<str>>,
    /// A `Host` for the upstream request chosen by a plugin (wins over `pass_host`).
    pub host_override: Option<HeaderValue>,
    /// Headers to set on the response, whoever produces it (rate-limit counters, ids).
    pub response_headers: HeaderMap,
    /// The request's id, once `request-id` gave it one (the access log shows it).
    pub request_id: Option<HeaderValue>,
    /// When the request arrived.
    pub started: Instant,
    /// Whether the answer came from the route's target: an upstream's, or the gateway's own
    /// for an upstream that failed, not a plugin's refusal (`api-breaker` judges only those).
    pub forwarded: bool,
    /// The chain in force (the route's, or overlaid by the consumer's).
    chain: Arc<PluginChain>,
}

impl<'r> RequestCtx<'r> {
    /// A context for a request matched to `route`, whose plugins are `chain`.
    pub fn new(
        route: RouteRef<'r>,
        chain: &Arc<PluginChain>,
        params: &'r [(String, String)],
        client: SocketAddr,
        consumers: &'r Consumers,
    ) -> RequestCtx<'r> {
        RequestCtx {
            chain: Arc::clone(chain),
            route,
            params,
            client,
            consumer: None,
            consumers,
            upstream_override: None,
            host_override: None,
            response_headers: HeaderMap::new(),
            request_id: None,
            started: Instant::now(),
            forwarded: false,
        }
    }

    /// Runs the rewrite, then the access phase. `Err` is the response to send instead.
    pub async fn run_request_phases(&mut self, request: &mut request::Parts) -> Result<(), Reject> {
        let chain = Arc::clone(&self.chain);
        for plugin in &chain.plugins {
            plugin.rewrite(self, request)?;
        }
        let mut index = 0;
        loop {
            let chain = Arc::clone(&self.chain);
            let Some(plugin) = chain.plugins.get(index) else {
                break;
            };
            let before = self.consumer.as_ref().map(|c| Arc::as_ptr(c) as usize);
            self.access(plugin, request).await?;
            index += 1;
            let after = self.consumer.as_ref().map(|c| Arc::as_ptr(c) as usize);
            if after != before
                && let Some(consumer) = self.consumer.clone()
                && !consumer.plugins.is_empty()
            {
                // The consumer's plugins overlay the chain; the access loop carries on below
                // the auth plugin. Their rewrite hooks have not run, nor the access hooks of
                // those that rank above it (a consumer's `ip-restriction`): they run now, in
                // chain order, as APISIX's `rewrite_in_consumer` and merged access phase do.
                let overlaid = Arc::new(chain.overlay(&consumer.plugins));
                let from_consumer = |p: &&Arc<dyn Plugin>| {
                    consumer.plugins.iter().any(|c| Arc::ptr_eq(c, p)) && p.name() != plugin.name()
                };
                for late in overlaid.plugins.iter().filter(from_consumer) {
                    late.rewrite(self, request)?;
                }
                for late in overlaid.plugins.iter().filter(from_consumer) {
                    if late.priority() >= plugin.priority() {
                        self.access(late, request).await?;
                    }
                }
                index = overlaid
                    .plugins
                    .iter()
                    .position(|p| p.priority() < plugin.priority())
                    .unwrap_or(overlaid.plugins.len());
                self.chain = overlaid;
            }
        }
        let chain = Arc::clone(&self.chain);
        for plugin in &chain.plugins {
            plugin.before_upstream(self, request);
        }
        Ok(())
    }

    /// The bound of the request body phase, if a plugin of the chain in force reads the body
    /// (the chain may have grown a consumer's plugins during the access phase).
    pub fn request_body_limit(&self) -> Option<u64> {
        self.chain.body_limit
    }

    /// The cache of the chain in force ([`Plugin::cache`]), if it has one.
    pub fn cache(&self) -> Option<Arc<dyn Plugin>> {
        self.chain.cache.clone()
    }

    /// Runs the request body phase over the whole body; `Err` is the response to send
    /// instead.
    pub fn run_request_body_phase(
        &mut self,
        request: &request::Parts,
        body: &Bytes,
    ) -> Result<(), Reject> {
        let chain = Arc::clone(&self.chain);
        for plugin in &chain.plugins {
            plugin.request_body(self, request, body)?;
        }
        Ok(())
    }

    /// Runs one plugin's access hook; `Err` is the response to send instead.
    async fn access(
        &mut self,
        plugin: &Arc<dyn Plugin>,
        request: &mut request::Parts,
    ) -> Result<(), Reject> {
        match plugin.access(self, request) {
            Access::Continue => Ok(()),
            Access::Reject(response) => Err(response),
            Access::Pending(check) => {
                self.response_headers.extend(check.await?);
                Ok(())
            }
            Access::Identify(check, consumer) => {
                self.response_headers.extend(check.await?);
                key_auth::identify(self, request, &consumer);
                Ok(())
            }
        }
    }

    /// Runs the response phases over whatever answer the request got (its status and headers;
    /// the body is the caller's), then the log phase. Returns the body filters of the response
    /// body phase, in chain order: the caller passes the answer's body through them as it
    /// streams.
    pub fn run_response_phases<B>(
        &mut self,
        response: &mut Response<B>,
    ) -> Vec<Box<dyn BodyFilter>> {
        // Set before the response hooks run, so that `response-rewrite` can change or remove
        // them like any other header of the answer.
        for (name, value) in self
            .response_headers
            .drain()
            .filter_map(|(n, v)| Some((n?, v)))
        {
            response.headers_mut().insert(name, value);
        }
        let chain = Arc::clone(&self.chain);
        let mut status = response.status();
        let mut view = ResponseView {
            status: &mut status,
            headers: response.headers_mut(),
        };
        for plugin in &chain.plugins {
            plugin.response_headers(self, &mut view);
        }
        *response.status_mut() = status;
        let filters = chain
            .plugins
            .iter()
            .filter_map(|plugin| plugin.response_body(self))
            .collect();
        for plugin in &chain.plugins {
            plugin.log(self, status);
        }
        filters
    }
}

/// The response view of the response phases: the answer's status and headers.
#[derive(Debug)]
pub struct ResponseView<'a> {
    status: &'a mut StatusCode,
    headers: &'a mut HeaderMap,
}

impl ResponseView<'_> {
    /// The status.
    pub fn status(&self) -> StatusCode {
        *self.status
    }

    /// The status, to change.
    pub fn status_mut(&mut self) -> &mut StatusCode {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        self.headers
    }

    /// The headers, to change.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers
    }
}

/// The response body phase of one answer: sees its body chunk by chunk as it goes to the
/// client, without buffering it, and says what the client gets instead (OpenResty's
/// `body_filter_by_lua`). Made per answer by [`Plugin::response_body`], so it may keep state.
pub trait BodyFilter: Send + Sync {
    /// One chunk of the body; returns what the client gets in its place (maybe nothing).
    fn chunk(&mut self, chunk: Bytes) -> Bytes {
        chunk
    }

    /// The body ended (or the filter wants no more of it); returns what the client gets last.
    fn end(&mut self) -> Bytes {
        Bytes::new()
    }

    /// Whether the rest of the body still matters. Once false, the body is not read any
    /// further (a node's connection is then closed rather than drained), and [`Self::end`]
    /// comes next.
    fn wants_body(&self) -> bool {
        true
    }

    /// The length of everything the filter sends, when it is known before the body is read
    /// (the client then gets a `Content-Length`).
    fn length(&self) -> Option<u64> {
        None
    }
}

/// A compiled plugin instance: one per plugin config per snapshot.
pub trait Plugin: Send + Sync + fmt::Debug {
    /// The registry name.
    fn name(&self) -> &'static str;
    /// Order within a phase: higher first.
    fn priority(&self) -> i32;
    /// Rewrite phase.
    fn rewrite(
        &self,
        _ctx: &mut RequestCtx<'_>,
        _request: &mut request::Parts,
    ) -> Result<(), Reject> {
        Ok(())
    }
    /// Access phase.
    fn access(&self, _ctx: &mut RequestCtx<'_>, _request: &mut request::Parts) -> Access {
        Access::Continue
    }
    /// Just before the upstream call.
    fn before_upstream(&self, _ctx: &mut RequestCtx<'_>, _request: &mut request::Parts) {}
    /// Whether the plugin reads the request body, and then the largest one it reads: the
    /// request path reads the body whole after the request phases (413 beyond the bound) and
    /// calls [`Plugin::request_body`].
    fn request_body_limit(&self) -> Option<u64> {
        None
    }
    /// Request body phase: the whole body, after `before_upstream`; it is forwarded
    /// unchanged.
    fn request_body(
        &self,
        _ctx: &mut RequestCtx<'_>,
        _request: &request::Parts,
        _body: &Bytes,
    ) -> Result<(), Reject> {
        Ok(())
    }
    /// Response headers phase: status and headers of whatever answer the request got.
    fn response_headers(&self, _ctx: &mut RequestCtx<'_>, _response: &mut ResponseView<'_>) {}
    /// Response body phase: a filter the answer's body streams through, if this plugin has one
    /// for it.
    fn response_body(&self, _ctx: &mut RequestCtx<'_>) -> Option<Box<dyn BodyFilter>> {
        None
    }
    /// Log phase.
    fn log(&self, _ctx: &RequestCtx<'_>, _status: StatusCode) {}
    /// A plugin that answers the requests of the route that configures it, after the request
    /// phases, instead of sending them to a target (`batch-requests`).
    fn endpoint(&self) -> Option<&dyn Endpoint> {
        None
    }
    /// Whether the plugin answers CORS preflights: a preflight that no route allows by its own
    /// method goes to the route the announced method would reach, if that route has such a
    /// plugin (`cors`).
    fn answers_preflight(&self) -> bool {
        false
    }
    /// A plugin that answers requests from stored answers and stores what the target answers
    /// (`proxy-cache`): the request path asks it after the request phases, and hands it the
    /// target's answer.
    fn cache(&self) -> Option<&proxy_cache::ProxyCache> {
        None
    }
}

/// The body of a request an [`Endpoint`] is given, or of an answer [`Dispatch`] returns.
pub type DispatchBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// What the request path lends a plugin that sends requests of its own: each is handled as if
/// the client had sent it (routing, plugins, upstream), in process.
pub trait Dispatch: Send + Sync {
    /// Handles `request`; never fails (a failure is an error answer).
    fn dispatch(&self, request: Request<Full<Bytes>>) -> BoxFuture<'_, Response<DispatchBody>>;
}

/// What a plugin that answers requests itself implements.
pub trait Endpoint: Send + Sync {
    /// Answers `request` (its request phases have run); `dispatch` sends requests of its own.
    fn serve<'a>(
        &'a self,
        dispatch: &'a dyn Dispatch,
        request: Request<DispatchBody>,
    ) -> BoxFuture<'a, Reject>;
}

/// Plugins in the order they run.
#[derive(Debug, Default)]
pub struct PluginChain {
    /// By descending priority.
    pub plugins: Vec<Arc<dyn Plugin>>,
    /// The plugin of the route's own that answers its requests ([`Plugin::endpoint`]), if any.
    pub endpoint: Option<Arc<dyn Plugin>>,
    /// The smallest [`Plugin::request_body_limit`] of the chain: `Some` when the request body
    /// phase runs.
    pub body_limit: Option<u64>,
    /// The chain's cache ([`Plugin::cache`]), if it has one.
    pub cache: Option<Arc<dyn Plugin>>,
}

impl PluginChain {
    fn from_map(map: BTreeMap<&'static str, Arc<dyn Plugin>>) -> PluginChain {
        let mut plugins: Vec<Arc<dyn Plugin>> = map.into_values().collect();
        plugins.sort_by_key(|p| std::cmp::Reverse(p.priority()));
        let body_limit = plugins.iter().filter_map(|p| p.request_body_limit()).min();
        let cache = plugins.iter().find(|p| p.cache().is_some()).cloned();
        PluginChain {
            plugins,
            endpoint: None,
            body_limit,
            cache,
        }
    }

    /// Whether a plugin of the chain answers CORS preflights.
    pub fn answers_preflight(&self) -> bool {
        self.plugins.iter().any(|p| p.answers_preflight())
    }

    /// This chain with `overlay`'s plugins replacing same-named ones and adding the rest.
    pub fn overlay(&self, overlay: &[Arc<dyn Plugin>]) -> PluginChain {
        let mut map: BTreeMap<&'static str, Arc<dyn Plugin>> = self
            .plugins
            .iter()
            .map(|p| (p.name(), Arc::clone(p)))
            .collect();
        for plugin in overlay {
            map.insert(plugin.name(), Arc::clone(plugin));
        }
        PluginChain::from_map(map)
    }
}

/// Why a snapshot's plugins could not be compiled.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PluginError {
    /// A plugin this build does not have.
    #[error("{at}: plugin {name:?} is not available in this data plane")]
    Unknown {
        /// Where it was configured.
        at: String,
        /// Its name.
        name: String,
    },
    /// A config the plugin cannot use.
    #[error("{at}: plugin {name:?}: {reason}")]
    Invalid {
        /// Where it was configured.
        at: String,
        /// Its name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// What plugin factories need beyond their config; it outlives snapshots, so state such as
/// rate-limit counters survives a config push.
#[derive(Clone, Debug, Default)]
pub struct BuildEnv {
    /// The shared Redis for cluster-wide counters, if the data plane has one.
    pub redis: Option<limit_count::RedisCounters>,
    /// This data plane's own counters.
    pub local_counters: Arc<limit_count::LocalCounters>,
    /// How many data planes are live (`limit-count`'s `fleet` policy); the config stream sets it.
    pub fleet: limit_count::FleetShare,
    /// `limit-req`'s leaky buckets.
    pub limit_req: Arc<limit_req::Buckets>,
    /// `api-breaker`'s circuits.
    pub breakers: Arc<api_breaker::Breakers>,
    /// `prometheus`'s per-route series.
    pub prometheus: Arc<prometheus::Registry>,
    /// `basic-auth`'s password verifications (the KDF's bounded pool, the cache of successes).
    pub basic_auth: Arc<basic_auth::Verifier>,
    /// `proxy-cache`'s stores (and the batch sub-request caches'), kept while their config is.
    pub proxy_cache: Arc<proxy_cache::store::Caches>,
    /// The ids of the named upstreams of the snapshot being compiled (for `traffic-split`).
    /// Unlike the fields above it is per snapshot: `Runtime::compile` replaces it before
    /// building any plugin.
    pub upstreams: Arc<HashSet<String>>,
    /// The port of this data plane's TLS listener (`--tls-listen`), where `redirect`'s
    /// `http_to_https` sends clients; `None`: 443.
    pub tls_port: Option<u16>,
}

/// The factory: a validated config → a plugin instance.
pub fn build(
    name: &str,
    config: &Value,
    scope: &str,
    env: &BuildEnv,
) -> Result<Arc<dyn Plugin>, String> {
    let Some(def) = gateway_proto::plugins::plugin(name) else {
        return Err(format!(
            "plugin {name:?} is not available in this data plane"
        ));
    };
    let priority = def.priority;
    let plugin: Arc<dyn Plugin> = match name {
        "key-auth" => Arc::new(key_auth::KeyAuth::build(priority, config)?),
        "batch-requests" => Arc::new(batch_requests::BatchRequests::build(priority, config)?),
        "basic-auth" => Arc::new(basic_auth::BasicAuth::build(priority, config, env)?),
        "jwt-auth" => Arc::new(jwt_auth::JwtAuth::build(priority, config)?),
        "limit-count" => Arc::new(limit_count::LimitCount::build(
            priority, config, scope, env,
        )?),
        "request-id" => Arc::new(request_id::RequestId::build(priority, config)?),
        "cors" => Arc::new(cors::Cors::build(priority, config)?),
        "ip-restriction" => Arc::new(ip_restriction::IpRestriction::build(priority, config)?),
        "proxy-rewrite" => Arc::new(proxy_rewrite::ProxyRewrite::build(priority, config)?),
        "redirect" => Arc::new(redirect::Redirect::build(priority, config, env)?),
        "api-breaker" => Arc::new(api_breaker::ApiBreaker::build(
            priority, config, scope, env,
        )?),
        "limit-req" => Arc::new(limit_req::LimitReq::build(priority, config, scope, env)?),
        "traffic-split" => Arc::new(traffic_split::TrafficSplit::build(priority, config, env)?),
        "response-rewrite" => Arc::new(response_rewrite::ResponseRewrite::build(priority, config)?),
        "prometheus" => Arc::new(prometheus::Prometheus::build(priority, config, scope, env)?),
        "proxy-cache" => Arc::new(proxy_cache::ProxyCache::build(
            priority, config, scope, env,
        )?),
        "uri-blocker" => Arc::new(uri_blocker::UriBlocker::build(priority, config)?),
        "request-validation" => Arc::new(request_validation::RequestValidation::build(
            priority, config,
        )?),
        other => {
            return Err(format!(
                "plugin {other:?} has a schema but no implementation"
            ));
        }
    };
    Ok(plugin)
}

fn build_map(
    at: &str,
    configs: &BTreeMap<String, Value>,
    env: &BuildEnv,
) -> Result<BTreeMap<&'static str, Arc<dyn Plugin>>, PluginError> {
    let mut map = BTreeMap::new();
    for (name, config) in configs {
        let plugin = build(name, config, at, env).map_err(|reason| {
            if gateway_proto::plugins::plugin(name).is_none() {
                PluginError::Unknown {
                    at: at.to_owned(),
                    name: name.clone(),
                }
            } else {
                PluginError::Invalid {
                    at: at.to_owned(),
                    name: name.clone(),
                    reason,
                }
            }
        })?;
        map.insert(plugin.name(), plugin);
    }
    Ok(map)
}

/// A consumer ready for the request path.
#[derive(Debug)]
pub struct ConsumerRuntime {
    /// The consumer's id.
    pub id: String,
    /// Its display name (the id unless set).
    pub username: String,
    /// Its plugins (they overlay the route's chain once it is identified).
    pub plugins: Vec<Arc<dyn Plugin>>,
    /// Checks its JWTs, if it has a `jwt-auth` credential.
    pub jwt: Option<jwt_auth::Verifier>,
    /// Its configuration.
    pub spec: Consumer,
}

/// The consumers of a config, indexed by each credential.
#[derive(Debug, Default)]
pub struct Consumers {
    /// By SHA-256 of the API key.
    pub by_key_digest: HashMap<[u8; 32], Arc<ConsumerRuntime>>,
    /// By basic-auth user name.
    pub by_basic_username: HashMap<String, Arc<ConsumerRuntime>>,
    /// By JWT key.
    pub by_jwt_key: HashMap<String, Arc<ConsumerRuntime>>,
}

/// The plugin part of a compiled snapshot.
#[derive(Debug, Default)]
pub struct CompiledPlugins {
    /// The global rules' plugins, merged.
    global: BTreeMap<&'static str, Arc<dyn Plugin>>,
    /// The consumers.
    pub consumers: Consumers,
    env: BuildEnv,
}

impl CompiledPlugins {
    /// No global rules, no consumers.
    pub fn empty(env: BuildEnv) -> CompiledPlugins {
        CompiledPlugins {
            global: BTreeMap::new(),
            consumers: Consumers::default(),
            env,
        }
    }

    /// The build environment (outlives snapshots).
    pub fn env(&self) -> &BuildEnv {
        &self.env
    }

    /// Compiles the global rules and the consumers of `snapshot`.
    pub fn compile(snapshot: &Snapshot, env: &BuildEnv) -> Result<CompiledPlugins, PluginError> {
        // Global rules apply in id order; a later rule's config of the same plugin wins.
        let mut global = BTreeMap::new();
        for (id, _, rule) in snapshot.global_rules() {
            global.extend(build_map(
                &format!("global-rules/{id}"),
                &rule.plugins,
                env,
            )?);
        }
        let mut consumers = Consumers::default();
        for (id, _, spec) in snapshot.consumers() {
            let at = format!("consumers/{id}");
            let plugins = build_map(&at, &spec.plugins, env)?;
            let jwt = spec
                .credentials
                .jwt_auth
                .as_ref()
                .map(jwt_auth::Verifier::new)
                .transpose()
                .map_err(|reason| PluginError::Invalid {
                    at: at.clone(),
                    name: "jwt-auth".into(),
                    reason,
                })?;
            let consumer = Arc::new(ConsumerRuntime {
                jwt,
                id: id.to_owned(),
                username: spec.username.clone().unwrap_or_else(|| id.to_owned()),
                plugins: PluginChain::from_map(plugins).plugins,
                spec: spec.clone(),
            });
            let credentials = &spec.credentials;
            if let Some(digest) = credentials.key_auth.as_ref().and_then(|k| k.digest_bytes()) {
                consumers
                    .by_key_digest
                    .insert(digest, Arc::clone(&consumer));
            }
            if let Some(basic) = &credentials.basic_auth {
                consumers
                    .by_basic_username
                    .insert(basic.username.clone(), Arc::clone(&consumer));
            }
            if let Some(jwt) = &credentials.jwt_auth {
                consumers
                    .by_jwt_key
                    .insert(jwt.key.clone(), Arc::clone(&consumer));
            }
        }
        Ok(CompiledPlugins {
            global,
            consumers,
            env: env.clone(),
        })
    }

    /// The chain of a route: the global plugins overlaid by the route's own.
    pub fn route_chain(
        &self,
        route_id: &str,
        configs: &BTreeMap<String, Value>,
    ) -> Result<Arc<PluginChain>, PluginError> {
        let mut map = self.global.clone();
        let own = build_map(&format!("routes/{route_id}"), configs, &self.env)?;
        let endpoint = own.values().find(|p| p.endpoint().is_some()).cloned();
        map.extend(own);
        let mut chain = PluginChain::from_map(map);
        chain.endpoint = endpoint;
        Ok(Arc::new(chain))
    }
}

#[cfg(test)]
mod tests;
