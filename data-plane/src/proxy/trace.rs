//! Spans on the request path: one server span per sampled client request, one client span per
//! upstream attempt under it (each retry and each batch sub-request its own), and the W3C
//! Trace Context passed on to the nodes.
//!
//! Off (no tracer), none of this runs: the request path tests an empty `Option` where a span
//! would start, and the futures carry a null pointer or two. On, spans are built straight
//! through the OpenTelemetry SDK, not through `tracing` and a bridge layer: a bridge builds a
//! `tracing` span (a registry slot, an extension map, the fields formatted into it) and then
//! the OpenTelemetry span from it, twice the work for the same span, and it would record the
//! request path's `debug!` events into every span as well.
//!
//! What a request costs, on:
//! - a client `traceparent` that is valid and not sampled: nothing; the header goes on to the
//!   nodes unchanged, so they see the client's decision and parent;
//! - otherwise the sampler decides (parent-based, a ratio for roots). Not sampled: the
//!   request's `traceparent` names the trace and an unrecorded span with the flag off, so the
//!   nodes follow the decision; no attributes, no client spans;
//! - sampled: the server span, the request's `traceparent` pointed at it (its `tracestate` is
//!   passed on as the client sent it), and one client span per attempt, whose id each attempt's
//!   request carries as its parent. Spans end when the answer's head is known (the server's
//!   when the gateway's answer is made, a client span's when the node's response head arrives
//!   or the attempt fails); the body streams after.
//!
//! Every entry point is `#[cold]` and out of line: off, the request path's hot functions keep
//! their size and what the compiler inlines into them.
//!
//! The access log reads the trace id from the request's `traceparent` when its line begins,
//! after [`ServerSpan::start`]: with tracing on it is the trace the server span belongs to (or
//! the unsampled one it names).

use std::net::{IpAddr, SocketAddr};

use http::uri::Authority;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt as _, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span};

use crate::error::ProxyError;
use crate::runtime::CompiledRoute;
use crate::telemetry::{TRACEPARENT, TRACESTATE, format_traceparent, parse_traceparent};

/// Attributes a server span holds at most (the vector is made once, at this size).
const SERVER_ATTRIBUTES: usize = 13;
/// Attributes a client span holds at most.
const CLIENT_ATTRIBUTES: usize = 8;

/// A sampled client request's server span, and the parent its upstream attempts start from.
pub(crate) struct ServerSpan<'a> {
    span: Span,
    /// `http.request.method`, for the span's name once the route is known.
    method: &'static str,
    upstream: Upstream<'a>,
}

/// What an upstream attempt needs to start its client span: the tracer, and the server span as
/// the parent.
pub(crate) struct Upstream<'a> {
    tracer: &'a SdkTracer,
    parent: Context,
}

/// Where an upstream attempt's span goes: under a request's server span, for the batch
/// sub-request named `batch_key` if there is one.
#[derive(Clone, Copy)]
pub(crate) struct Parent<'a> {
    pub(crate) upstream: &'a Upstream<'a>,
    pub(crate) batch_key: Option<&'a str>,
}

impl<'a> ServerSpan<'a> {
    /// Decides whether `request` (its path normalised) is traced and, unless a sampled
    /// client's `traceparent` or the ratio says no, starts its server span; points the
    /// request's `traceparent` at the span (or, not sampled, at an unrecorded one). `None`:
    /// not sampled.
    #[cold]
    #[inline(never)]
    pub(crate) fn start<B>(
        tracer: &'a SdkTracer,
        request: &mut Request<B>,
        remote: SocketAddr,
        config_version: u64,
    ) -> Option<Box<ServerSpan<'a>>> {
        let incoming = request
            .headers()
            .get(&TRACEPARENT)
            .and_then(|value| parse_traceparent(value.as_bytes()));
        let parent = match incoming {
            // The client decided: nothing to record, and its header goes on as it is.
            Some(incoming) if !incoming.flags.is_sampled() => return None,
            Some(incoming) => Context::new().with_remote_span_context(SpanContext::new(
                incoming.trace_id,
                incoming.parent_id,
                incoming.flags,
                true,
                trace_state(request.headers()),
            )),
            None => Context::new(),
        };
        let (method, known) = method_attribute(request.method());
        let mut attributes = Vec::with_capacity(SERVER_ATTRIBUTES);
        attributes.push(KeyValue::new("http.request.method", method));
        let builder = SpanBuilder::from_name(if known { method } else { "HTTP" })
            .with_kind(SpanKind::Server)
            .with_attributes(attributes);
        let mut span = tracer.build_with_context(builder, &parent);
        let context = span.span_context();
        let sampled = span.is_recording();
        let traceparent = format_traceparent(context.trace_id(), context.span_id(), sampled);
        request.headers_mut().insert(&TRACEPARENT, traceparent);
        if !sampled {
            return None;
        }
        let upstream = Upstream {
            tracer,
            parent: Context::new().with_remote_span_context(SpanContext::new(
                context.trace_id(),
                context.span_id(),
                context.trace_flags(),
                false,
                context.trace_state().clone(),
            )),
        };
        if !known {
            span.set_attribute(KeyValue::new(
                "http.request.method_original",
                request.method().as_str().to_owned(),
            ));
        }
        span.set_attribute(KeyValue::new("url.scheme", "http"));
        span.set_attribute(KeyValue::new("url.path", request.uri().path().to_owned()));
        span.set_attribute(KeyValue::new(
            "network.protocol.version",
            protocol_version(request.version()),
        ));
        let host = match request.uri().authority() {
            Some(authority) => Some(authority.as_str()),
            None => request
                .headers()
                .get(http::header::HOST)
                .and_then(|host| host.to_str().ok()),
        };
        if let Some((address, port)) = host.and_then(split_host) {
            span.set_attribute(KeyValue::new("server.address", address.to_owned()));
            if let Some(port) = port {
                span.set_attribute(KeyValue::new("server.port", i64::from(port)));
            }
        }
        span.set_attribute(KeyValue::new("client.address", ip_text(remote.ip())));
        span.set_attribute(KeyValue::new(
            "gateway.config.version",
            i64::try_from(config_version).unwrap_or(i64::MAX),
        ));
        Some(Box::new(ServerSpan {
            span,
            method,
            upstream,
        }))
    }

    /// The request matched `route` by its `path`-th path pattern.
    #[cold]
    #[inline(never)]
    pub(crate) fn routed(&mut self, route: &CompiledRoute, path: usize) {
        if let Some(pattern) = route.spec.paths.get(path) {
            let method = self.span_method();
            let mut name = String::with_capacity(method.len() + 1 + pattern.len());
            name.push_str(method);
            name.push(' ');
            name.push_str(pattern);
            self.span.update_name(name);
            self.span
                .set_attribute(KeyValue::new("http.route", pattern.clone()));
        }
        self.span
            .set_attribute(KeyValue::new("gateway.route.id", route.id.clone()));
    }

    /// The method as the span's name shows it (`HTTP` for one outside the standard set).
    fn span_method(&self) -> &'static str {
        if self.method == OTHER_METHOD {
            "HTTP"
        } else {
            self.method
        }
    }

    /// The parent of the request's upstream attempts.
    pub(crate) fn upstream(&self) -> &Upstream<'a> {
        &self.upstream
    }

    /// The gateway answered with `status`: the span ends (an error on a 5xx).
    #[cold]
    #[inline(never)]
    pub(crate) fn answered(mut self: Box<Self>, status: StatusCode) {
        self.span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if status.is_server_error() {
            self.span
                .set_attribute(KeyValue::new("error.type", status.as_str().to_owned()));
            self.span.set_status(Status::error(""));
        }
        self.span.end();
    }
}

impl Parent<'_> {
    /// Starts the client span of an attempt to send `method` to `node`, after `resends`
    /// earlier attempts of the same request; `hedge`: the attempt is a hedge, sent while an
    /// earlier one was still running (`gateway.hedge`).
    #[cold]
    #[inline(never)]
    pub(crate) fn client_span(
        self,
        method: &Method,
        node: &Authority,
        resends: usize,
        hedge: bool,
    ) -> Box<ClientSpan> {
        let (method, known) = method_attribute(method);
        let mut attributes = Vec::with_capacity(CLIENT_ATTRIBUTES);
        attributes.push(KeyValue::new("http.request.method", method));
        let (address, port) = split_host(node.as_str()).unwrap_or((node.host(), None));
        attributes.push(KeyValue::new("server.address", address.to_owned()));
        if let Some(port) = port.or_else(|| node.port_u16()) {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        if resends > 0 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::try_from(resends).unwrap_or(i64::MAX),
            ));
        }
        if let Some(key) = self.batch_key {
            attributes.push(KeyValue::new("gateway.batch.key", key.to_owned()));
        }
        if hedge {
            attributes.push(KeyValue::new("gateway.hedge", true));
        }
        let builder = SpanBuilder::from_name(if known { method } else { "HTTP" })
            .with_kind(SpanKind::Client)
            .with_attributes(attributes);
        let span = self
            .upstream
            .tracer
            .build_with_context(builder, &self.upstream.parent);
        Box::new(ClientSpan { span })
    }
}

/// One upstream attempt's span.
pub(crate) struct ClientSpan {
    span: Span,
}

impl ClientSpan {
    /// Names this span as the parent in the attempt's request: its `traceparent` replaces the
    /// one the client sent (the hop's own header, written into the map; `forward`'s
    /// `Prepared` keeps the server span's for another attempt).
    #[cold]
    #[inline(never)]
    pub(crate) fn inject(&self, headers: &mut HeaderMap) {
        let context = self.span.span_context();
        let traceparent =
            format_traceparent(context.trace_id(), context.span_id(), context.is_sampled());
        headers.insert(&TRACEPARENT, traceparent);
    }

    /// The attempt ended with `result` (the node's response head, or why there is none): the
    /// span ends, an error on a 5xx or a failure.
    #[cold]
    #[inline(never)]
    pub(crate) fn finish<B>(mut self: Box<Self>, result: &Result<Response<B>, ProxyError>) {
        match result {
            Ok(response) => {
                let status = response.status();
                self.span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status.as_u16()),
                ));
                if status.is_server_error() {
                    self.span
                        .set_attribute(KeyValue::new("error.type", status.as_str().to_owned()));
                    self.span.set_status(Status::error(""));
                }
            }
            Err(error) => {
                let kind = match error {
                    ProxyError::UpstreamTimeout { .. } => "timeout",
                    ProxyError::UpstreamConnect { .. } => "connection_failed",
                    ProxyError::UpstreamRequest { .. } => "request_failed",
                    ProxyError::DownstreamBody { .. } => "client_body_failed",
                    _ => "_OTHER",
                };
                self.span.set_attribute(KeyValue::new("error.type", kind));
                self.span.set_status(Status::error(error.to_string()));
            }
        }
        self.span.end();
    }

    /// The attempt was cancelled before its answer, because another attempt of a hedged
    /// request answered first: the span ends marked `gateway.hedge.cancelled`, not an error.
    #[cold]
    #[inline(never)]
    pub(crate) fn cancelled(mut self: Box<Self>) {
        self.span
            .set_attribute(KeyValue::new("gateway.hedge.cancelled", true));
        self.span.end();
    }
}

/// `http.request.method` for the semantic conventions' known methods; `_OTHER` otherwise
/// (`false`: the span names the method `HTTP` and records the original).
fn method_attribute(method: &Method) -> (&'static str, bool) {
    let known = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return (OTHER_METHOD, false),
    };
    (known, true)
}

/// `http.request.method` for a method outside the known set.
const OTHER_METHOD: &str = "_OTHER";

/// `network.protocol.version` of an HTTP version.
fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The host (IPv6 without its brackets) and port of a `host[:port]`; `None` for an empty one.
fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = host.strip_prefix('[') {
        let (address, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((address, port));
    }
    let (address, port) = match host.rsplit_once(':') {
        Some((address, port)) => (address, port.parse().ok()),
        None => (host, None),
    };
    (!address.is_empty()).then_some((address, port))
}

/// `client.address`: the address as text (an IPv4-mapped IPv6 one as IPv4), written without
/// the formatting machinery for IPv4, the common case.
fn ip_text(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (index, octet) in v4.octets().into_iter().enumerate() {
                if index > 0 {
                    text.push('.');
                }
                if octet >= 100 {
                    text.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    text.push(char::from(b'0' + octet / 10 % 10));
                }
                text.push(char::from(b'0' + octet % 10));
            }
            text
        }
        v6 => v6.to_string(),
    }
}

/// The client's `tracestate`, for the remote parent's context (empty when absent or invalid:
/// the header still goes on to the nodes as the client sent it).
fn trace_state(headers: &HeaderMap) -> TraceState {
    headers
        .get(&TRACESTATE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
