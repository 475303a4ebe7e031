//! The proxy listener: match a route, pick a node, forward the request, stream the response.
//!
//! Per request: load the runtime once, ask the router, ask the upstream's balancer for a node,
//! rewrite the request for the hop (hop-by-hop headers out, `X-Forwarded-*` in, `Host` per
//! `pass_host`), send it over the shared pool and stream both bodies through without buffering.
//! Every failure is a [`ProxyError`], turned into a JSON response at the edge in
//! [`Proxy::handle`].

pub mod headers;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{EXPECT, HOST, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tracing::{debug, error, warn};

use crate::error::{Origin, ProxyError};
use crate::router::{RequestView, RouteMatch};
use crate::runtime::{Node, Runtime, UpstreamRuntime};
use crate::state::State;
use gateway_proto::model::PassHost;
use headers::{X_FORWARDED_HOST, X_FORWARDED_PROTO};
use upstream::UpstreamClient;

/// The body of a response to a client: an upstream's body streamed through, or one the
/// gateway wrote itself (errors).
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Serves client traffic from `listener` until `shutdown` completes, then lets in-flight
/// requests finish.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: impl Future<Output = ()>) {
    let proxy = Arc::new(Proxy::new(state));
    let make_service = move |remote: SocketAddr| {
        let proxy = Arc::clone(&proxy);
        service_fn(move |request| {
            let proxy = Arc::clone(&proxy);
            async move { Ok::<_, Infallible>(proxy.handle(remote, request).await) }
        })
    };
    crate::server::serve("proxy", listener, make_service, shutdown).await;
}

/// The request handler, shared by every connection.
#[derive(Debug)]
pub struct Proxy {
    state: Arc<State>,
    client: UpstreamClient,
}

impl Proxy {
    /// A handler serving whatever runtime `state` holds.
    pub fn new(state: Arc<State>) -> Proxy {
        Proxy {
            state,
            client: UpstreamClient::new(),
        }
    }

    /// Handles one client request; never fails: errors become JSON responses here.
    pub async fn handle(
        &self,
        remote: SocketAddr,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        // One load per request: the whole exchange sees one config version.
        let runtime = self.state.runtime();
        let response = match self.forward(&runtime, remote, request).await {
            Ok(response) => response,
            Err(error) => {
                match error.origin() {
                    Origin::Downstream => debug!(%remote, %error, "request refused"),
                    Origin::Upstream => warn!(%remote, %error, "upstream failed"),
                    Origin::Internal => error!(%remote, %error, "internal error"),
                }
                error.into_response()
            }
        };
        self.state.metrics.record_request(response.status());
        response
    }

    async fn forward(
        &self,
        runtime: &Runtime,
        remote: SocketAddr,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let original_host = original_host(&request);
        let host = original_host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let route = match runtime.router.find(&RequestView {
            method: request.method(),
            host,
            path: request.uri().path(),
            headers: request.headers(),
            query: request.uri().query(),
            client: remote.ip(),
        }) {
            RouteMatch::Found { route, .. } => route,
            RouteMatch::NotFound => return Err(ProxyError::RouteNotFound),
            RouteMatch::MethodNotAllowed { allow } => {
                return Err(ProxyError::MethodNotAllowed { allow });
            }
        };
        let upstream = &route.upstream;
        let node = upstream.pick().ok_or_else(|| ProxyError::NoUpstreamNode {
            upstream: upstream.key.clone(),
        })?;
        let request = upstream_request(request, upstream, node, remote, original_host)?;

        let started = Instant::now();
        let result = self
            .client
            .send(
                request,
                node.authority.as_str(),
                upstream.connect_timeout,
                upstream.read_timeout,
            )
            .await;
        self.state.metrics.record_upstream(started.elapsed());
        let (mut parts, body) = result?.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        debug!(route = %route.id, node = %node.authority, status = %parts.status, "proxied");
        Ok(Response::from_parts(parts, Either::Left(body)))
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

/// Rewrites the client's request for the hop to `node`. The body is moved, not read.
fn upstream_request(
    request: Request<Incoming>,
    upstream: &UpstreamRuntime,
    node: &Node,
    remote: SocketAddr,
    original_host: Option<HeaderValue>,
) -> Result<Request<Incoming>, ProxyError> {
    let (mut parts, body) = request.into_parts();
    // Path and query are forwarded byte for byte; rewriting is a later feature.
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(node.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| ProxyError::Internal(format!("building the upstream URI: {e}")))?;
    // Upstreams speak HTTP/1.1 whatever the client spoke.
    parts.version = Version::HTTP_11;
    // Extensions belong to the downstream connection (hyper puts its own there).
    parts.extensions.clear();

    let headers = &mut parts.headers;
    headers::remove_hop_by_hop(headers);
    // The server already answered `100-continue` to the client when the body was first read.
    headers.remove(EXPECT);
    // X-Forwarded-For is a chain, so this hop is appended; X-Forwarded-Proto and -Host describe
    // the hop into this gateway, so whatever the client claimed is replaced.
    headers::append_forwarded_for(headers, remote.ip());
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match &original_host {
        Some(host) => headers.insert(&X_FORWARDED_HOST, host.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
    let host = match upstream.pass_host {
        PassHost::Pass => original_host,
        PassHost::Node => Some(node.host_header.clone()),
        PassHost::Rewrite => upstream.upstream_host.clone(),
    };
    match host {
        Some(host) => headers.insert(HOST, host),
        // No host to pass: the client fills in the node's address.
        None => headers.remove(HOST),
    };
    Ok(Request::from_parts(parts, body))
}

#[cfg(test)]
mod tests;
