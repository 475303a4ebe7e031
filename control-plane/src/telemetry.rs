//! OpenTelemetry tracing for the admin API: one server span per admin write, exported over
//! OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (off otherwise: the layer is not even
//! installed).
//!
//! The same exporter setup as the data plane's (`gateway_proto::telemetry`): `OTEL_SERVICE_NAME`
//! (default [`SERVICE_NAME`]), a parent-based sampler with the ratio `OTEL_TRACES_SAMPLER_ARG`
//! for roots, the SDK's batch span processor (`OTEL_BSP_*`), and the exporter's connection on
//! a one-thread runtime of its own, so that [`Telemetry::shutdown`] can flush from any thread.
//!
//! [`trace_writes`] is an axum middleware around every route: a write (any method but `GET`,
//! `HEAD` and `OPTIONS`) gets a span named after its route template, continuing the client's
//! `traceparent`, with the stable HTTP attributes and `gateway.config.version`, the version
//! the write made, read from the response's `X-Config-Version`. The handlers know nothing of
//! it.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{Span as _, SpanBuilder, SpanKind, Status, Tracer as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

use crate::api::CONFIG_VERSION_HEADER;

pub use gateway_proto::telemetry::{SetupError, Telemetry};

/// The `service.name` of the control plane's spans unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "gateway-control-plane";

/// A request's headers as the trace-context propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

/// Middleware: a span for each admin write (see the module's documentation). Reads pass
/// straight through.
pub async fn trace_writes(
    State(tracer): State<SdkTracer>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    };
    let mut attributes = vec![
        KeyValue::new("http.request.method", method.to_string()),
        KeyValue::new("url.path", request.uri().path().to_owned()),
        KeyValue::new("url.scheme", "http"),
    ];
    if let Some(route) = route {
        attributes.push(KeyValue::new("http.route", route));
    }
    if let Some(host) = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
    {
        let (address, port) = split_host(host);
        attributes.push(KeyValue::new("server.address", address.to_owned()));
        if let Some(port) = port {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
    }
    let builder = SpanBuilder::from_name(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attributes);
    let mut span = tracer.build_with_context(builder, &parent);
    let response = next.run(request).await;
    let status = response.status();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    if let Some(version) = response
        .headers()
        .get(CONFIG_VERSION_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i64>().ok())
    {
        span.set_attribute(KeyValue::new("gateway.config.version", version));
    }
    if status.is_server_error() {
        span.set_attribute(KeyValue::new("error.type", status.as_str().to_owned()));
        span.set_status(Status::error(""));
    }
    span.end();
    response
}

/// The host (IPv6 without its brackets) and port of a `Host` header.
fn split_host(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        let (address, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (
            address,
            after.strip_prefix(':').and_then(|p| p.parse().ok()),
        );
    }
    match host.rsplit_once(':') {
        Some((address, port)) => (address, port.parse().ok()),
        None => (host, None),
    }
}
