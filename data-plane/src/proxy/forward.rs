//! Sending a routed request upstream: node selection, the hop's request rewrite, the
//! exchange, retries, passive health, and WebSocket upgrades.
//!
//! Retry rules (like Envoy and APISIX, stricter where they are loose):
//! - only the conditions the policy lists (`connect_error`, `timeout`, `status_50x`);
//! - only idempotent methods, unless the policy says `non_idempotent: true`;
//! - only requests without a body: a streamed body is consumed by the first attempt, so a
//!   request is never re-sent after its body was partly sent;
//! - each retry goes to a node not tried yet, and takes a token from the upstream's retry budget
//!   (20% of requests + 10/s over 10 s), so a failing upstream sees at most ~1.2× its load.
//!
//! Hedged requests (`hedge`) take their own, boxed path: `hedge.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::future;
use gateway_proto::model::{HashSource, HedgeOverride, PassHost, Retries, RetryOn};
use http::header::{CONNECTION, COOKIE, HeaderValue, UPGRADE};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::Either;
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use super::access_log::Notes;
use super::trace::Parent;
use super::{Proxy, ProxyBody};
use crate::error::ProxyError;
use crate::runtime::balance::hash_bytes;
use crate::runtime::{CompiledRoute, Node, UpstreamRuntime};
use crate::transport::body::{UpstreamBody, empty_body, hold_in_flight};
use crate::transport::h1::HeadForm;
use crate::transport::headers::{self, HopHeaders};
use crate::transport::is_idempotent;

/// The hop's request, before the node is known.
struct Prepared {
    method: Method,
    path_and_query: PathAndQuery,
    headers: http::HeaderMap,
    /// Its `host` is set per attempt by [`build`]: it depends on the node.
    hop: HopHeaders,
}

impl Proxy {
    /// Sends `request` (already routed to `route`) to a node of `upstream` and returns the
    /// response with its body streaming; retries per the route's or upstream's policy.
    /// `form`: where the response headers go (see [`HeadForm`]); `notes`: the access log's, told
    /// each node tried; `trace`: where each attempt's client span goes, when the request is
    /// traced (the attempt's request names that span in its `traceparent`); `hedge`: a batch
    /// sub-request's hedging policy, over the route's and the upstream's. `started` is when
    /// the first attempt is timed from: the plain path hands
    /// in the reading its request began with (the routing in between is well under a
    /// microsecond), so a proxied request reads the clock once less.
    ///
    /// Not an `async fn`: the request is taken apart before the future is built, so the future
    /// holds what the attempts need rather than the request too (an `async fn` keeps its
    /// arguments for its whole life, and its callers move it whole).
    #[expect(
        clippy::too_many_arguments,
        reason = "taken apart before the future is built, so each travels on its own"
    )]
    pub(crate) fn send_upstream<'a>(
        &'a self,
        route: &'a CompiledRoute,
        upstream: &'a UpstreamRuntime,
        mut request: Request<UpstreamBody>,
        remote: SocketAddr,
        original_host: Option<HeaderValue>,
        form: HeadForm,
        notes: Option<&'a Notes>,
        trace: Option<Parent<'a>>,
        hedge: Option<&'a HedgeOverride>,
        started: Instant,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + 'a {
        let upgrade = upgrade_protocol(&request);
        let downstream_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
        let key = upstream
            .balancer
            .wants_key()
            .then(|| hash_key(upstream, &request, remote));
        // A route overrides the upstream's timeouts field by field.
        let overrides = route.spec.timeouts.unwrap_or_default();
        let connect_timeout = overrides
            .connect_ms
            .map_or(upstream.connect_timeout, std::time::Duration::from_millis);
        let read_timeout = overrides
            .read_ms
            .map_or(upstream.read_timeout, std::time::Duration::from_millis);
        let retries = route
            .spec
            .retries
            .as_ref()
            .or(upstream.retries.as_ref())
            .filter(|r| r.count > 0);

        let (parts, body) = request.into_parts();
        // A body that is already complete and empty can be sent again; a streamed one cannot.
        let bodiless = body.is_end_stream();
        let retries = retries.filter(|r| {
            bodiless && upgrade.is_none() && (is_idempotent(&parts.method) || r.non_idempotent)
        });
        // The nearest override decides (a sub-request's, then the route's; `false` turns the
        // upstream's policy off), else the upstream's policy.
        let hedge = match hedge.or(route.spec.hedge.as_ref()) {
            Some(nearest) => nearest.policy(),
            None => upstream.spec.hedge.as_ref(),
        }
        .filter(|_| upgrade.is_none() && is_idempotent(&parts.method));
        if let Some(hedge) = hedge {
            // Only a body that can be sent again: none, or one held whole (a batch's).
            if bodiless || matches!(body, Either::Right(_)) {
                let body = match body {
                    Either::Right(whole) if !bodiless => Some(whole),
                    _ => None,
                };
                upstream.budget.record_request();
                let plan = hedge::Plan {
                    route,
                    upstream,
                    hedge,
                    retries,
                    prepared: prepare(parts, remote, original_host, None),
                    body,
                    key,
                    form,
                    connect_timeout,
                    read_timeout,
                    notes,
                    trace,
                    started,
                };
                return future::Either::Left(Box::pin(self.send_hedged(plan)));
            }
            // A streamed body: sent once, unhedged.
        }
        let mut body = if bodiless { None } else { Some(body) };
        let mut prepared = prepare(parts, remote, original_host, upgrade.as_ref());
        upstream.budget.record_request();

        future::Either::Right(async move {
            let mut tried: Vec<usize> = Vec::new();
            let mut started = started;
            let mut index = first_node(upstream, key)?;
            loop {
                let node = &upstream.nodes[index];
                let in_flight = node.load.start();
                // Boxed: off, the future carries a null pointer rather than a span's room.
                let span = trace.map(|parent| {
                    parent.client_span(&prepared.method, &node.authority, tried.len(), false)
                });
                // The request is built in a block that ends before the await: a local of the loop
                // body would keep its (moved-from) slot in the future's state.
                let result = {
                    // Without retries there is one attempt: its head is moved, not copied.
                    let mut request = build(
                        &mut prepared,
                        retries.is_some(),
                        upstream,
                        node,
                        body.take().unwrap_or_else(empty_body),
                    )?;
                    if let Some(span) = &span {
                        span.inject(request.headers_mut());
                    }
                    upstream.client.send(
                        request,
                        Some(&prepared.hop),
                        node.authority.as_str(),
                        &node.connections,
                        form,
                        connect_timeout,
                        read_timeout,
                    )
                }
                .await;
                if let Some(span) = span {
                    span.finish(&result);
                }
                let failure =
                    self.record_attempt(upstream, node, started.elapsed(), &result, notes);
                let may_retry = retries.is_some_and(|policy| {
                    failure.is_some_and(|f| f.allows_retry(policy))
                        && tried.len() < policy.count as usize
                });
                if may_retry {
                    tried.push(index);
                    // Another node, not tried yet, and a token from the budget: else this answer
                    // (or error) is the client's.
                    let next = upstream.pick_index(key, |i| tried.contains(&i));
                    if let Some(next) = next
                        && upstream.budget.try_retry()
                    {
                        debug!(upstream = %upstream.key, node = %node.authority, failure = ?failure, "retrying on another node");
                        self.state.metrics.record_retry();
                        index = next;
                        started = Instant::now();
                        continue;
                    }
                }

                let mut response = result?;
                if response.status() == StatusCode::SWITCHING_PROTOCOLS
                    && let (Some(protocol), Some(downstream)) = (upgrade, downstream_upgrade)
                {
                    let upstream_upgrade = hyper::upgrade::on(&mut response);
                    tokio::spawn(async move {
                        // A tunnel keeps its node busy for as long as it is open.
                        let _in_flight = in_flight;
                        match (downstream.await, upstream_upgrade.await) {
                            (Ok(client), Ok(server)) => {
                                let (mut client, mut server) =
                                    (TokioIo::new(client), TokioIo::new(server));
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                            (Err(error), _) | (_, Err(error)) => {
                                debug!(%error, "upgrade failed");
                            }
                        }
                    });
                    let (mut parts, body) = response.into_parts();
                    parts
                        .headers
                        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                    parts.headers.insert(UPGRADE, protocol);
                    return Ok(Response::from_parts(parts, Either::Left(body)));
                }
                debug!(route = %route.id, node = %node.authority, status = %response.status(), "proxied");
                // Until the body ends: `least_requests` and `ewma` see a long download too.
                hold_in_flight(response.body_mut(), in_flight);
                return Ok(response.map(Either::Left));
            }
        })
    }
}

impl Proxy {
    /// [`Proxy::record_attempt`] for an attempt sent elsewhere in the request path (a batch's
    /// direct sub-request), which retries nothing and so needs no verdict.
    pub(super) fn record_sent<B>(
        &self,
        upstream: &UpstreamRuntime,
        node: &Node,
        elapsed: Duration,
        result: &Result<Response<B>, ProxyError>,
        notes: Option<&Notes>,
    ) {
        let _ = self.record_attempt(upstream, node, elapsed, result, notes);
    }

    /// Records an attempt on `node` that ended with `result` after `elapsed`: the upstream
    /// metric, the access log's notes, the node's latency and passive health. Returns how the
    /// attempt failed, if it did.
    fn record_attempt<B>(
        &self,
        upstream: &UpstreamRuntime,
        node: &Node,
        elapsed: Duration,
        result: &Result<Response<B>, ProxyError>,
        notes: Option<&Notes>,
    ) -> Option<Failure> {
        self.state.metrics.record_upstream(elapsed);
        if let Some(notes) = notes {
            notes.tried(&node.authority, elapsed);
        }
        let failure = failure_of(result);
        let node_failed = failure.is_some_and(|f| f != Failure::Client);
        if node_failed {
            node.load.observe_failure(elapsed);
        } else {
            node.load.observe_latency(elapsed);
            node.latency.observe(elapsed);
        }
        if node
            .health
            .record_request(!node_failed, upstream.passive_check())
        {
            warn!(upstream = %upstream.key, node = %node.authority, "node ejected by passive health checks");
        }
        failure
    }
}

/// How an attempt failed, for the retry and passive-health rules.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Failure {
    /// No connection, or it broke before a response.
    Connect,
    /// A deadline passed.
    Timeout,
    /// The node answered this 5xx status.
    Status(u16),
    /// The client's side failed (its body): neither the node's fault nor retryable.
    Client,
}

impl Failure {
    fn allows_retry(self, policy: &Retries) -> bool {
        let condition = match self {
            Failure::Connect => RetryOn::ConnectError,
            Failure::Timeout => RetryOn::Timeout,
            Failure::Status(502) => RetryOn::Status502,
            Failure::Status(503) => RetryOn::Status503,
            Failure::Status(504) => RetryOn::Status504,
            Failure::Status(_) | Failure::Client => return false,
        };
        policy.on.contains(&condition)
    }
}

/// The node a request tries first: the balancer's pick among them all.
fn first_node(upstream: &UpstreamRuntime, key: Option<u64>) -> Result<usize, ProxyError> {
    upstream
        .pick_index(key, |_| false)
        .ok_or_else(|| ProxyError::NoUpstreamNode {
            upstream: upstream.key.clone(),
        })
}

fn failure_of<B>(result: &Result<Response<B>, ProxyError>) -> Option<Failure> {
    match result {
        Ok(response) => match response.status().as_u16() {
            status @ 502..=504 => Some(Failure::Status(status)),
            _ => None,
        },
        Err(ProxyError::UpstreamTimeout { .. }) => Some(Failure::Timeout),
        Err(ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamRequest { .. }) => {
            Some(Failure::Connect)
        }
        Err(_) => Some(Failure::Client),
    }
}

/// The protocol an HTTP/1.1 client asks to upgrade to (`Connection: upgrade` + `Upgrade`).
fn upgrade_protocol<B>(request: &Request<B>) -> Option<HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let asks = request
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| request.headers().get(UPGRADE).cloned())
        .flatten()
}

/// The consistent-hash key of a request. A request without the configured header, cookie or
/// argument is hashed by its client address instead, so it still sticks somewhere.
fn hash_key<B>(upstream: &UpstreamRuntime, request: &Request<B>, remote: SocketAddr) -> u64 {
    let by_address = || hash_bytes(remote.ip().to_canonical().to_string().as_bytes());
    let Some(hash_on) = &upstream.hash_on else {
        return by_address();
    };
    let name = hash_on.name.as_deref().unwrap_or_default();
    let found = match hash_on.source {
        HashSource::Header => request
            .headers()
            .get(name)
            .map(|v| hash_bytes(v.as_bytes())),
        HashSource::Cookie => request
            .headers()
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| hash_bytes(v.as_bytes())),
        HashSource::Query => request
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| hash_bytes(v.as_bytes())),
        HashSource::RemoteAddr => None,
        HashSource::Uri => request
            .uri()
            .path_and_query()
            .map(|pq| hash_bytes(pq.as_str().as_bytes())),
    };
    found.unwrap_or_else(by_address)
}

/// Rewrites the client's request head for the hop, except what depends on the node. The
/// headers this hop sets stay beside the map until the head is written (see [`HopHeaders`]).
fn prepare(
    parts: http::request::Parts,
    remote: SocketAddr,
    original_host: Option<HeaderValue>,
    upgrade: Option<&HeaderValue>,
) -> Prepared {
    let http::request::Parts {
        method,
        uri,
        mut headers,
        extensions,
        ..
    } = parts;
    // Path and query go on as routed: the path normalised (`super::path`), the query as sent.
    let path_and_query = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    headers::remove_hop_by_hop(&mut headers);
    if let Some(protocol) = upgrade {
        // The one hop-by-hop exchange a proxy passes on: the upgrade handshake.
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol.clone());
    }
    // X-Forwarded-For is a chain, so this hop is appended; X-Forwarded-Proto and -Host describe
    // the hop into this gateway, so whatever the client claimed is replaced.
    let hop = HopHeaders {
        client: remote.ip(),
        forwarded_host: original_host,
        host: None,
        https: extensions.get::<crate::transport::tls::Tls>().is_some(),
    };
    Prepared {
        method,
        path_and_query,
        headers,
        hop,
    }
}

/// The request for one attempt on `node` (its `Host` in `prepared.hop`); `again` keeps
/// `prepared` whole for another attempt.
fn build(
    prepared: &mut Prepared,
    again: bool,
    upstream: &UpstreamRuntime,
    node: &Node,
    body: UpstreamBody,
) -> Result<Request<UpstreamBody>, ProxyError> {
    let scheme = match upstream.uri_scheme() {
        "https" => Scheme::HTTPS,
        _ => Scheme::HTTP,
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(scheme);
    uri.authority = Some(node.authority.clone());
    uri.path_and_query = Some(prepared.path_and_query.clone());
    let uri = Uri::from_parts(uri)
        .map_err(|e| ProxyError::Internal(format!("building the upstream URI: {e}")))?;
    let mut request = Request::new(body);
    *request.method_mut() = prepared.method.clone();
    *request.uri_mut() = uri;
    // The client picks the version the node speaks (HTTP/1.1, or HTTP/2 by ALPN or h2c).
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = if again {
        prepared.headers.clone()
    } else {
        std::mem::take(&mut prepared.headers)
    };
    prepared.hop.host = match upstream.pass_host {
        PassHost::Pass => prepared.hop.forwarded_host.clone(),
        PassHost::Node => Some(node.host_header.clone()),
        PassHost::Rewrite => upstream.upstream_host.clone(),
    };
    Ok(request)
}

mod hedge;

#[cfg(test)]
mod tests;
