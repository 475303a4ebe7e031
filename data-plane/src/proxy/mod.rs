//! The request path: the only module that knows every layer below it, read in the order of
//! pingora's `ProxyHttp` phases.
//!
//! 1. accept and parse: [`downstream`] (bodiless HTTP/1.1 in the connection's task, the rest
//!    through hyper's server);
//! 2. route: [`Proxy::handle`] loads the runtime once, normalises the path ([`path`]) and asks
//!    the router;
//! 3. request phases: the route's plugins (rewrite, access, before the upstream call), which
//!    may answer early;
//! 4. upstream: `forward` picks a node, rewrites the request for the hop, sends it over the
//!    transport and retries; a batch route runs its plan ([`batch`]); an endpoint plugin is
//!    lent a [`Dispatch`] instead;
//! 5. response phases: headers, then the body as it streams ([`filtered`]);
//! 6. log: the plugins' log phase, the request metrics, and the access log ([`access_log`]),
//!    whose line the caller finishes once the body is written.
//!
//! With tracing on, a client request has a server span from its start to its answer, and each
//! upstream attempt a client span under it (`trace`).
//!
//! Every failure is a [`ProxyError`], turned into the client's JSON answer in one place
//! ([`Proxy::handle`]'s exit, through [`crate::error::json_response`]).

pub mod access_log;
pub mod batch;
mod cache;
pub mod downstream;
pub mod filtered;
mod forward;
pub mod path;
mod request_body;
pub mod tls;
mod trace;

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Either, Full};
use opentelemetry_sdk::trace::SdkTracer;
use tokio::net::TcpListener;
use tracing::{debug, error, warn};

use crate::error::{Origin, ProxyError};
use crate::plugins::{Dispatch, DispatchBody, RequestCtx, RouteRef};
use crate::runtime::router::{RequestView, RouteMatch};
use crate::runtime::{CompiledRoute, RouteTarget, Runtime, UpstreamRuntime};
use crate::state::State;
use crate::transport::body::{UpstreamBody, UpstreamResponseBody};
use crate::transport::h1::HeadForm;
use crate::transport::headers;

/// The body of a response to a client: streamed (an upstream's body, or an answer through the
/// response body phase), or one the gateway wrote itself (errors, plugins' answers).
pub type ProxyBody = Either<UpstreamResponseBody, Full<Bytes>>;

/// `X-Gateway-Config-Version`: the config version that served an answer
/// (`--expose-config-version`).
pub static X_GATEWAY_CONFIG_VERSION: HeaderName =
    HeaderName::from_static("x-gateway-config-version");

/// Serves client traffic from `listener` until `shutdown` completes, then lets in-flight
/// requests finish.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: impl Future<Output = ()>) {
    serve_with(listener, Proxy::new(state), shutdown).await;
}

/// [`serve`] with a handler configured by the caller ([`Proxy::with_options`]).
pub async fn serve_with(listener: TcpListener, proxy: Proxy, shutdown: impl Future<Output = ()>) {
    let proxy = Arc::new(proxy);
    let connection = move |stream, remote, stop| {
        downstream::serve_connection(Arc::clone(&proxy), stream, remote, stop)
    };
    crate::transport::server::serve("proxy", listener, connection, shutdown).await;
}

/// What a [`Proxy`] adds to its answers beyond proxying them.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Where each client request's line goes (`--access-log`); `None`: off.
    pub access_log: Option<access_log::AccessLog>,
    /// Stamp `X-Gateway-Config-Version` on every answer (`--expose-config-version`).
    pub expose_config_version: bool,
}

/// The request handler, shared by every connection (and cloned for the TLS listener).
#[derive(Clone, Debug)]
pub struct Proxy {
    state: Arc<State>,
    options: Options,
    /// Spans are started with it when tracing is on ([`Proxy::traced`]).
    tracer: Option<SdkTracer>,
}

/// A client request's answer, and its access-log line waiting for the body to be written
/// (`None` when the access log is off).
pub type Answer = (Response<ProxyBody>, Option<access_log::Pending>);

/// Who a request is handled for.
#[derive(Clone, Copy)]
enum Caller<'a> {
    /// A client: the answer goes on the wire.
    Client,
    /// An endpoint plugin (`batch-requests`), on behalf of a client request: the notes its
    /// line takes, if it is logged, and its server span, if it is traced.
    Item(
        Option<&'a access_log::Notes>,
        Option<&'a trace::Upstream<'a>>,
    ),
}

impl Proxy {
    /// A handler serving whatever runtime `state` holds.
    pub fn new(state: Arc<State>) -> Proxy {
        Proxy::with_options(state, Options::default())
    }

    /// A handler serving whatever runtime `state` holds, with `options`.
    pub fn with_options(state: Arc<State>, options: Options) -> Proxy {
        Proxy {
            state,
            options,
            tracer: None,
        }
    }

    /// The same handler, tracing its requests with `tracer` (see [`crate::telemetry`]).
    pub fn traced(mut self, tracer: SdkTracer) -> Proxy {
        self.tracer = Some(tracer);
        self
    }

    /// Handles one client request; never fails: errors become JSON responses here. With
    /// [`HeadForm::Passed`] a proxied answer may carry its headers in its body (see
    /// [`crate::transport::h1::ResponseBody::take_passed_head`]) rather than in the map: only for a caller that
    /// writes the response to an HTTP/1.1 client itself.
    ///
    /// With the access log on, the caller finishes the request's line once it has written the
    /// body ([`access_log::Pending::finish`], or [`access_log::count_body`]).
    pub fn handle(
        &self,
        remote: SocketAddr,
        request: Request<UpstreamBody>,
        form: HeadForm,
    ) -> impl Future<Output = Answer> + '_ {
        self.serve_request(remote, request, form, Caller::Client)
    }

    /// The access-log line of an answer a connection gave without handling the request (a
    /// request it refused: `request` if it was parsed), if the log is on.
    pub(crate) fn log_refusal<B: http_body::Body>(
        &self,
        remote: SocketAddr,
        request: Option<&Request<B>>,
        status: http::StatusCode,
    ) -> Option<access_log::Pending> {
        let log = self.options.access_log.as_ref()?;
        let mut pending = match request {
            Some(request) => log.begin(request, remote, Instant::now()),
            None => log.begin_unparsed(remote),
        };
        pending.answered(status, self.state.runtime().version);
        Some(pending)
    }

    /// [`Proxy::handle`] for `caller`.
    ///
    /// A route without plugins is sent from here, without further `async fn` layers: each
    /// layer's future is moved whole into its caller's, so every layer copied the whole
    /// exchange's state once more per request (~21 KB per request with three more layers).
    async fn serve_request(
        &self,
        remote: SocketAddr,
        mut request: Request<UpstreamBody>,
        form: HeadForm,
        caller: Caller<'_>,
    ) -> Answer {
        let started = Instant::now();
        // One load per request: the whole exchange sees one config version.
        let runtime = self.state.runtime();
        let normalized = match path::normalize(request.uri().path()) {
            Ok(normal) => {
                if let Some(normal) = normal {
                    set_path(&mut request, &normal);
                }
                Ok(())
            }
            Err(reason) => Err(ProxyError::InvalidPath(reason)),
        };
        // Before the access log's line begins: it reads the trace from the `traceparent` this
        // points at the server span.
        let mut server = match (&self.tracer, caller) {
            (Some(tracer), Caller::Client) => {
                trace::ServerSpan::start(tracer, &mut request, remote, runtime.version)
            }
            _ => None,
        };
        let mut pending = match (&self.options.access_log, caller) {
            (Some(log), Caller::Client) => Some(log.begin(&request, remote, started)),
            _ => None,
        };
        let routed = normalized.and_then(|()| route_request(&runtime, remote, &request));
        if let (Some(pending), Ok(routed)) = (&mut pending, &routed) {
            pending.routed(&routed.route);
        }
        if let (Some(server), Ok(routed)) = (&mut server, &routed) {
            server.routed(&routed.route, routed.path);
        }
        let (notes, trace) = match caller {
            Caller::Client => (
                pending.as_ref().and_then(access_log::Pending::notes),
                server.as_deref().map(trace::ServerSpan::upstream),
            ),
            Caller::Item(notes, trace) => (notes, trace),
        };
        let result = match routed {
            Err(error) => Err(error),
            // Boxed: the plugin path's state (context, request parts) would otherwise widen
            // the future of every request, plugins or not.
            Ok(routed) if !routed.route.plugins.plugins.is_empty() => Ok(Box::pin(
                self.forward_with_plugins(&runtime, routed, remote, request, notes, trace),
            )
            .await),
            Ok(Routed {
                route,
                params,
                original_host,
                path: _,
            }) => match &route.target {
                RouteTarget::Upstream(upstream) => {
                    self.send_upstream(
                        &route,
                        upstream,
                        request,
                        remote,
                        original_host,
                        form,
                        notes,
                        trace.map(|upstream| trace::Parent {
                            upstream,
                            batch_key: None,
                        }),
                        None,
                        started,
                    )
                    .await
                }
                RouteTarget::Batch(batch) => {
                    let dispatch = Dispatcher {
                        proxy: self,
                        remote,
                        notes,
                        trace,
                    };
                    let downstream = batch::Downstream {
                        original_host,
                        params: &params,
                    };
                    batch::execute(&dispatch, &route, batch, downstream, request).await
                }
                RouteTarget::Endpoint => Err(no_endpoint(&route)),
            },
        };
        let mut response = match result {
            Ok(response) => response,
            Err(error) => self.error_response(remote, error),
        };
        self.state.metrics.record_request(response.status());
        if let Caller::Client = caller {
            // Batch sub-requests are the client request's own parts: counted once, as it.
            self.state
                .reports()
                .record(runtime.version, response.status().as_u16());
        }
        self.state
            .metrics
            .record_request_duration(started.elapsed());
        if let Caller::Client = caller
            && self.options.expose_config_version
        {
            response
                .headers_mut()
                .insert(&X_GATEWAY_CONFIG_VERSION, version_header(runtime.version));
        }
        if let Some(pending) = &mut pending {
            pending.answered(response.status(), runtime.version);
        }
        if let Some(server) = server {
            server.answered(response.status());
        }
        (response, pending)
    }

    /// Logs a failure by where it came from and turns it into the client's JSON answer.
    fn error_response(&self, remote: SocketAddr, error: ProxyError) -> Response<ProxyBody> {
        match error.origin() {
            Origin::Downstream => debug!(%remote, %error, "request refused"),
            Origin::Upstream => warn!(%remote, %error, "upstream failed"),
            Origin::Internal => error!(%remote, %error, "internal error"),
        }
        error.into_response()
    }

    /// A routed request on a route with plugins: the request phases may change or refuse it;
    /// the response phases see whatever answer it gets, refusals and errors included.
    async fn forward_with_plugins(
        &self,
        runtime: &Runtime,
        routed: Routed,
        remote: SocketAddr,
        request: Request<UpstreamBody>,
        notes: Option<&access_log::Notes>,
        trace: Option<&trace::Upstream<'_>>,
    ) -> Response<ProxyBody> {
        let Routed {
            route,
            params,
            original_host,
            path: _,
        } = routed;
        let spec = RouteRef {
            id: &route.id,
            spec: &route.spec,
        };
        let consumers = &runtime.plugins.consumers;
        let mut ctx = RequestCtx::new(spec, &route.plugins, &params, remote, consumers);
        let (mut parts, body) = request.into_parts();
        headers::drop_connection_listed(&mut parts.headers);
        let phases = ctx.run_request_phases(&mut parts).await;
        let (phases, body) = request_body::phase(&mut ctx, &parts, body, phases).await;
        let (phases, fetch) = cache::lookup(&ctx, &parts, phases).await;
        if let Some(notes) = notes {
            notes.identified(ctx.consumer.as_ref(), ctx.request_id.as_ref());
        }
        let mut response = match phases {
            Err(refusal) => refusal.map(Either::Right),
            Ok(()) => {
                let request = Request::from_parts(parts, body);
                let original_host = ctx.host_override.clone().map(Some).unwrap_or(original_host);
                let chosen = ctx.upstream_override.as_deref();
                let result = match chosen.map(|id| chosen_upstream(runtime, id)).transpose() {
                    Err(error) => Err(error),
                    Ok(chosen) => {
                        self.forward_matched(
                            &route,
                            &params,
                            remote,
                            original_host,
                            chosen,
                            request,
                            notes,
                            trace,
                        )
                        .await
                    }
                };
                ctx.forwarded = match &result {
                    Ok(_) => true,
                    Err(error) => error.origin() == Origin::Upstream,
                };
                let result = cache::complete(fetch, result);
                result.unwrap_or_else(|error| self.error_response(remote, error))
            }
        };
        let filters = ctx.run_response_phases(&mut response);
        if filters.is_empty() {
            return response;
        }
        response.map(|body| {
            let filtered = filtered::FilteredBody::new(body, filters);
            let filtered = BoxBody::new(filtered.map_err(std::io::Error::other));
            Either::Left(Either::Left(Either::Right(filtered)))
        })
    }

    /// Sends a request on a route with plugins, after their request phases, to its target:
    /// an endpoint plugin, the upstream a plugin chose, or the route's own target. The
    /// response phases read and change the headers: the answer comes with them in the map.
    #[expect(
        clippy::too_many_arguments,
        reason = "the routed request's parts, passed on as they are"
    )]
    async fn forward_matched(
        &self,
        route: &CompiledRoute,
        params: &[(String, String)],
        remote: SocketAddr,
        original_host: Option<HeaderValue>,
        chosen: Option<&Arc<UpstreamRuntime>>,
        request: Request<UpstreamBody>,
        notes: Option<&access_log::Notes>,
        trace: Option<&trace::Upstream<'_>>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let dispatch = Dispatcher {
            proxy: self,
            remote,
            notes,
            trace,
        };
        if let Some(endpoint) = route.plugins.endpoint.as_deref().and_then(|p| p.endpoint()) {
            let request = request.map(|body| body.map_err(std::io::Error::other).boxed_unsync());
            return Ok(endpoint.serve(&dispatch, request).await.map(Either::Right));
        }
        let upstream = match (&route.target, chosen) {
            (_, Some(upstream)) => upstream,
            (RouteTarget::Upstream(upstream), None) => upstream,
            (RouteTarget::Batch(batch), None) => {
                let downstream = batch::Downstream {
                    original_host,
                    params,
                };
                return batch::execute(&dispatch, route, batch, downstream, request).await;
            }
            (RouteTarget::Endpoint, None) => return Err(no_endpoint(route)),
        };
        self.send_upstream(
            route,
            upstream,
            request,
            remote,
            original_host,
            HeadForm::Map,
            notes,
            trace.map(|upstream| trace::Parent {
                upstream,
                batch_key: None,
            }),
            None,
            Instant::now(),
        )
        .await
    }
}

thread_local! {
    /// The `X-Gateway-Config-Version` value and the version it was made for, per thread.
    static VERSION_HEADER: RefCell<(u64, HeaderValue)> =
        const { RefCell::new((0, HeaderValue::from_static("0"))) };
}

/// The `X-Gateway-Config-Version` value of `version`, made once per version and thread.
fn version_header(version: u64) -> HeaderValue {
    VERSION_HEADER.with_borrow_mut(|(made_for, value)| {
        if *made_for != version {
            *made_for = version;
            *value = HeaderValue::from(version);
        }
        value.clone()
    })
}

/// The upstream a plugin chose by id, in the runtime the request loaded (which compiled that
/// plugin, and checked the id).
fn chosen_upstream<'r>(
    runtime: &'r Runtime,
    id: &str,
) -> Result<&'r Arc<UpstreamRuntime>, ProxyError> {
    runtime.upstreams.get(id).ok_or_else(|| {
        ProxyError::Internal(format!(
            "a plugin chose upstream {id}, which this config lacks"
        ))
    })
}

/// The capability to send requests on behalf of the client at `remote`. A plugin that sends
/// requests of its own (`batch-requests`) is lent it as [`Dispatch`]: requests handled as if
/// the client had sent them. A batch route's plan sends its sub-requests through it too, to
/// the upstreams the plan names ([`Dispatcher::send_upstream`]).
pub(crate) struct Dispatcher<'a> {
    proxy: &'a Proxy,
    remote: SocketAddr,
    /// The client request's access-log notes, if it is logged.
    notes: Option<&'a access_log::Notes>,
    /// The client request's server span, if it is traced.
    trace: Option<&'a trace::Upstream<'a>>,
}

impl Dispatcher<'_> {
    /// Sends `request` to `upstream` as a request of `route` from this client: the upstream's
    /// balancer, pool, health state and retry policy, the route's timeouts. `batch_key`: the
    /// batch sub-request it is, for its spans; `hedge`: its hedging policy, over the route's
    /// and the upstream's.
    #[expect(
        clippy::too_many_arguments,
        reason = "passed on as they are to `Proxy::send_upstream`"
    )]
    pub(crate) fn send_upstream<'a>(
        &'a self,
        route: &'a CompiledRoute,
        upstream: &'a UpstreamRuntime,
        request: Request<UpstreamBody>,
        original_host: Option<HeaderValue>,
        form: HeadForm,
        batch_key: Option<&'a str>,
        hedge: Option<&'a gateway_proto::model::HedgeOverride>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + 'a {
        if let Some(notes) = self.notes {
            notes.subrequest();
        }
        self.proxy.send_upstream(
            route,
            upstream,
            request,
            self.remote,
            original_host,
            form,
            self.notes,
            self.trace.map(|upstream| trace::Parent {
                upstream,
                batch_key,
            }),
            hedge,
            Instant::now(),
        )
    }

    /// The process metrics.
    pub(crate) fn metrics(&self) -> &crate::metrics::Metrics {
        &self.proxy.state.metrics
    }
}

impl Dispatch for Dispatcher<'_> {
    fn dispatch(&self, request: Request<Full<Bytes>>) -> BoxFuture<'_, Response<DispatchBody>> {
        Box::pin(async move {
            let request = request.map(Either::Right);
            if let Some(notes) = self.notes {
                notes.subrequest();
            }
            let caller = Caller::Item(self.notes, self.trace);
            let (response, _) = self
                .proxy
                .serve_request(self.remote, request, HeadForm::Map, caller)
                .await;
            response.map(|body| body.map_err(std::io::Error::other).boxed_unsync())
        })
    }
}

/// What routing found for a request.
struct Routed {
    route: Arc<CompiledRoute>,
    params: crate::runtime::router::Params,
    /// See [`original_host`].
    original_host: Option<HeaderValue>,
    /// Which of the route's paths matched.
    path: usize,
}

/// Finds the route for `request`.
fn route_request(
    runtime: &Runtime,
    remote: SocketAddr,
    request: &Request<UpstreamBody>,
) -> Result<Routed, ProxyError> {
    // After a 2xx to CONNECT the connection is a tunnel, which neither client speaks to a
    // node; a reverse proxy refuses it (as nginx does) rather than forward it half-right.
    if request.method() == http::Method::CONNECT {
        return Err(ProxyError::ConnectNotSupported);
    }
    let original_host = original_host(request);
    let host = original_host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let view = RequestView {
        method: request.method(),
        host,
        path: request.uri().path(),
        headers: request.headers(),
        query: request.uri().query(),
        client: remote.ip(),
    };
    let (route, params, path) = match runtime.router.find(&view) {
        RouteMatch::Found {
            route,
            params,
            path,
        } => (route, params, path),
        RouteMatch::NotFound => return Err(ProxyError::RouteNotFound),
        RouteMatch::MethodNotAllowed { allow } => {
            // A CORS preflight asks about the method in `Access-Control-Request-Method`;
            // routes rarely list OPTIONS. It goes to the route that would serve that method
            // if that route has `cors` (which answers it without proxying); otherwise 405.
            match preflight_route(runtime, &view) {
                Some(found) => found,
                None => return Err(ProxyError::MethodNotAllowed { allow }),
            }
        }
    };
    Ok(Routed {
        route,
        params,
        original_host,
        path,
    })
}

/// Replaces the path of `request`'s URI by `path`, keeping its query (see [`path`]).
#[cold]
fn set_path<B>(request: &mut Request<B>, path: &str) {
    let uri = request.uri();
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    // The normal form has only bytes the client's path already had, so both always parse.
    parts.path_and_query = http::uri::PathAndQuery::try_from(path_and_query).ok();
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// Only a route with an endpoint plugin has no target, and such a route is served by it.
fn no_endpoint(route: &CompiledRoute) -> ProxyError {
    ProxyError::Internal(format!(
        "route {} has no target and no endpoint plugin",
        route.id
    ))
}

/// For a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`) that matched no route
/// by its own method: the route the announced method would reach, if that route runs `cors`.
fn preflight_route(
    runtime: &Runtime,
    view: &RequestView<'_>,
) -> Option<(Arc<CompiledRoute>, crate::runtime::router::Params, usize)> {
    if view.method != http::Method::OPTIONS || !view.headers.contains_key(http::header::ORIGIN) {
        return None;
    }
    let announced = view
        .headers
        .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())?;
    let as_announced = RequestView {
        method: &announced,
        ..*view
    };
    match runtime.router.find(&as_announced) {
        RouteMatch::Found {
            route,
            params,
            path,
        } if route.plugins.answers_preflight() => Some((route, params, path)),
        _ => None,
    }
}

/// The host the client asked for: the URI's authority when the request carries one (HTTP/2,
/// or an absolute-form HTTP/1.1 request, where it overrides `Host` per RFC 9112 §3.2.2),
/// otherwise the `Host` header.
fn original_host<B>(request: &Request<B>) -> Option<HeaderValue> {
    match request.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => request.headers().get(HOST).cloned(),
    }
}

#[cfg(test)]
mod plugin_tests;
#[cfg(test)]
mod tests;
