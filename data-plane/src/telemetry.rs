//! OpenTelemetry tracing: the tracer and its OTLP exporter, set up from the environment, and
//! the W3C Trace Context `traceparent` codec. A leaf utility: it knows nothing of the rest of
//! the crate; the request path builds its spans with it (`proxy::trace`).
//!
//! Tracing is on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set ([`Telemetry::from_env`]); off,
//! nothing here exists and the request path pays a branch on an empty `Option`. On:
//! - spans go through the SDK's batch span processor (its own thread; `OTEL_BSP_*` apply) to
//!   an OTLP/gRPC exporter whose connection runs on a one-thread tokio runtime of its own
//!   (`otlp-export`), so encoding and sending a batch never runs between two requests on a
//!   request thread. Both run at normal priority rather than on `background::Worker`'s
//!   `nice 19` thread: on a saturated core that one would starve, the queue would fill and
//!   spans would be dropped (the access log's writer reasons the same way);
//! - the sampler is parent-based with a trace-id ratio for roots (`OTEL_TRACES_SAMPLER_ARG`,
//!   default 1): a client's sampled `traceparent` is always honoured, an unsampled one always
//!   is too;
//! - `service.name` is `OTEL_SERVICE_NAME`, else the binary's default;
//! - [`Telemetry::shutdown`] exports what is queued before the process ends.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};
use tracing::{info, warn};

/// The W3C Trace Context header naming a request's trace and parent span.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C Trace Context header with vendors' trace state, passed on as the client sent it.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Spans the batch processor holds for export when `OTEL_BSP_MAX_QUEUE_SIZE` does not say:
/// the SDK's 2,048 is 20 ms of a saturated data plane's spans, and a queue that is full drops.
const QUEUE_SIZE: usize = 16 * 1024;

/// Tracing as configured, running: the tracer the request path starts spans with.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    counts: Arc<Counts>,
    endpoint: String,
    /// Stops the exporter's runtime, once the provider has flushed.
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

/// What the environment says about tracing.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (gRPC, e.g. `http://collector:4317`).
    pub endpoint: String,
    /// `OTEL_SERVICE_NAME`, else the binary's default.
    pub service_name: String,
    /// `OTEL_TRACES_SAMPLER_ARG`: the share of root traces sampled, 0 to 1 (default 1).
    pub ratio: f64,
    /// `OTEL_BSP_MAX_QUEUE_SIZE` was set: the SDK reads it, and this module does not override it.
    pub queue_size_set: bool,
}

impl Settings {
    /// The settings `lookup` (an environment) gives; `None` when tracing is off (no endpoint).
    pub fn from_lookup(
        default_service: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Settings>, SetupError> {
        let set = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
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
        Ok(Some(Settings {
            endpoint: endpoint.trim().to_owned(),
            service_name: set("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_owned()),
            ratio,
            queue_size_set: set("OTEL_BSP_MAX_QUEUE_SIZE").is_some(),
        }))
    }
}

impl Telemetry {
    /// Tracing as the process environment sets it up, `service.name` `default_service` unless
    /// `OTEL_SERVICE_NAME` says otherwise; `None` when `OTEL_EXPORTER_OTLP_ENDPOINT` is unset.
    pub fn from_env(default_service: &str) -> Result<Option<Telemetry>, SetupError> {
        match Settings::from_lookup(default_service, |name| std::env::var(name).ok())? {
            Some(settings) => Telemetry::start(&settings).map(Some),
            None => Ok(None),
        }
    }

    /// Starts the exporter and the tracer `settings` describe.
    pub fn start(settings: &Settings) -> Result<Telemetry, SetupError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SetupError::Thread)?;
        // Built inside the exporter's runtime: the gRPC channel's tasks are spawned on it.
        let exporter = {
            let _inside = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .build()
                .map_err(|source| SetupError::Exporter {
                    endpoint: settings.endpoint.clone(),
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
        let mut batch = BatchConfigBuilder::default();
        if !settings.queue_size_set {
            batch = batch.with_max_queue_size(QUEUE_SIZE);
        }
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch.build())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.ratio,
            ))))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(settings.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("gateway");
        info!(
            endpoint = %settings.endpoint,
            service = %settings.service_name,
            ratio = settings.ratio,
            "tracing: exporting spans over OTLP/gRPC"
        );
        Ok(Telemetry {
            provider,
            tracer,
            counts,
            endpoint: settings.endpoint.clone(),
            stop,
            export_thread,
        })
    }

    /// The tracer spans are started with.
    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// Spans exported so far, and spans whose export failed.
    pub fn exported(&self) -> (u64, u64) {
        (
            self.counts.exported.load(Ordering::Relaxed),
            self.counts.failed.load(Ordering::Relaxed),
        )
    }

    /// Exports every span ended so far (waiting for the collector, up to the exporter's
    /// timeout), then stops the exporter. Blocks: call it off the request threads (the
    /// exporter's connection has a runtime of its own, so any thread will do).
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            warn!(%error, "tracing: the last spans could not be exported");
        }
        let (exported, failed) = (
            self.counts.exported.load(Ordering::Relaxed),
            self.counts.failed.load(Ordering::Relaxed),
        );
        info!(exported, failed, "tracing: stopped");
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

/// The OTLP exporter, counting what it exports and saying when an export fails (the SDK,
/// without its internal logs, would say nothing).
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
                let failures = self.counts.failed.fetch_add(spans, Ordering::Relaxed);
                // The first failure, then about one in every 100 batches.
                if failures == 0 || (failures / spans.max(1)).is_multiple_of(100) {
                    warn!(%error, spans, "tracing: exporting spans failed; they are lost");
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

/// A valid W3C `traceparent`: the trace, the caller's span, and the flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace (never all zero).
    pub trace_id: TraceId,
    /// The caller's span, the parent of the receiver's (never all zero).
    pub parent_id: SpanId,
    /// The trace flags; bit 0: the caller sampled the trace.
    pub flags: TraceFlags,
}

/// The length of a version-00 `traceparent`.
const TRACEPARENT_LENGTH: usize = 55;

/// Parses a `traceparent` value (W3C Trace Context §3.2): `version-traceid-parentid-flags`,
/// lowercase hex. Version `ff`, an all-zero trace or parent id, uppercase or other non-hex
/// digits, or a version-00 value with anything after the flags make it invalid (`None`); a
/// later version may append fields after a `-`. Never panics, whatever the bytes.
pub fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    let head = value.get(..TRACEPARENT_LENGTH)?;
    if head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
        return None;
    }
    let version = hex(&head[0..2])? as u8;
    let trace = hex(&head[3..35])?;
    let parent = hex(&head[36..52])? as u64;
    let flags = hex(&head[53..55])? as u8;
    let rest = &value[TRACEPARENT_LENGTH..];
    let valid = version != 0xff
        && trace != 0
        && parent != 0
        && match version {
            0 => rest.is_empty(),
            _ => rest.first().is_none_or(|&b| b == b'-'),
        };
    valid.then(|| TraceParent {
        trace_id: TraceId::from(trace),
        parent_id: SpanId::from(parent),
        flags: TraceFlags::new(flags),
    })
}

/// The value of lowercase hex `digits` (at most 32 of them).
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |value, &digit| {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        Some(value << 4 | u128::from(nibble))
    })
}

/// The version-00 `traceparent` naming `span_id` of `trace_id` as the parent, sampled or not.
pub fn format_traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> HeaderValue {
    let mut out = [0u8; TRACEPARENT_LENGTH];
    out[..3].copy_from_slice(b"00-");
    write_hex(&mut out[3..35], &trace_id.to_bytes());
    out[35] = b'-';
    write_hex(&mut out[36..52], &span_id.to_bytes());
    out[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
    // Only hex digits and dashes: always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Writes `bytes` into `out` (twice as long) as lowercase hex.
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
}

#[cfg(test)]
mod tests;
