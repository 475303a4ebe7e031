//! OpenTelemetry tracing for the admin API: one server span per admin write, exported over
//! OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (off otherwise: the layer is not even
//! installed).
//!
//! The same setup as the data plane's (`data_plane::telemetry`): `OTEL_SERVICE_NAME` (default
//! `gateway-control-plane`), a parent-based sampler with the ratio `OTEL_TRACES_SAMPLER_ARG`
//! for roots, the SDK's batch span processor (`OTEL_BSP_*`), and the exporter's connection on
//! a one-thread runtime of its own, so that [`Telemetry::shutdown`] can flush from any thread.
//!
//! [`trace_writes`] is an axum middleware around every route: a write (any method but `GET`,
//! `HEAD` and `OPTIONS`) gets a span named after its route template, continuing the client's
//! `traceparent`, with the stable HTTP attributes and `gateway.config.version`, the version
//! the write made, read from the response's `X-Config-Version`. The handlers know nothing of
//! it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::trace::{Span as _, SpanBuilder, SpanKind, Status, Tracer as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};

use crate::api::CONFIG_VERSION_HEADER;

/// Tracing as configured, running.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    counts: Arc<Counts>,
    endpoint: String,
    stop: tokio::sync::oneshot::Sender<()>,
    export_thread: JoinHandle<()>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `OTEL_TRACES_SAMPLER_ARG` is not a ratio between 0 and 1.
    #[error("OTEL_TRACES_SAMPLER_ARG={0:?} is not a number between 0 and 1")]
    Ratio(String),
    /// The exporter refused its settings (the endpoint, most likely).
    #[error("the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
        endpoint: String,
        /// Why.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The exporter's thread could not be started.
    #[error("starting the OTLP exporter's thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl Telemetry {
    /// Tracing as the process environment sets it up; `None` when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is unset.
    pub fn from_env() -> Result<Option<Telemetry>, SetupError> {
        let set = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
        };
        let Some(endpoint) = set("OTEL_EXPORTER_OTLP_ENDPOINT") else {
            return Ok(None);
        };
        let ratio = match set("OTEL_TRACES_SAMPLER_ARG") {
            None => 1.0,
            Some(text) => match text.trim().parse::<f64>() {
                Ok(ratio) if (0.0..=1.0).contains(&ratio) => ratio,
                _ => return Err(SetupError::Ratio(text)),
            },
        };
        let service = set("OTEL_SERVICE_NAME").unwrap_or_else(|| "gateway-control-plane".into());
        Telemetry::start(endpoint.trim(), &service, ratio).map(Some)
    }

    fn start(endpoint: &str, service: &str, ratio: f64) -> Result<Telemetry, SetupError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SetupError::Thread)?;
        // Built inside the exporter's runtime: the gRPC channel's tasks are spawned on it.
        let exporter = {
            let _inside = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.to_owned())
                .build()
                .map_err(|source| SetupError::Exporter {
                    endpoint: endpoint.to_owned(),
                    source,
                })?
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let export_thread = std::thread::Builder::new()
            .name("otlp-export".to_owned())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(SetupError::Thread)?;
        let counts = Arc::new(Counts::default());
        let exporter = Counted {
            inner: exporter,
            counts: Arc::clone(&counts),
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(service.to_owned())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("gateway");
        tracing::info!(%endpoint, %service, ratio, "tracing: exporting spans over OTLP/gRPC");
        Ok(Telemetry {
            provider,
            tracer,
            counts,
            endpoint: endpoint.to_owned(),
            stop,
            export_thread,
        })
    }

    /// The tracer admin writes are traced with.
    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// Exports every span ended so far, then stops the exporter. Blocks (up to the exporter's
    /// timeout): call it off the runtime's threads, or after the runtime.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "tracing: the last spans could not be exported");
        }
        tracing::info!(
            exported = self.counts.exported.load(Ordering::Relaxed),
            failed = self.counts.failed.load(Ordering::Relaxed),
            "tracing: stopped"
        );
        let _ = self.stop.send(());
        let _ = self.export_thread.join();
    }
}

/// Spans handed to the collector, by outcome.
#[derive(Debug, Default)]
struct Counts {
    exported: AtomicU64,
    failed: AtomicU64,
}

/// The OTLP exporter, counting what it exports and saying when an export fails.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    counts: Arc<Counts>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                self.counts.exported.fetch_add(spans, Ordering::Relaxed);
            }
            Err(error) => {
                if self.counts.failed.fetch_add(spans, Ordering::Relaxed) == 0 {
                    tracing::warn!(%error, spans, "tracing: exporting spans failed; they are lost");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

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
