//! OpenTelemetry's exporter side, shared by both binaries: the tracer and its OTLP/gRPC
//! exporter, set up from the environment (only with the `telemetry` feature).
//!
//! Tracing is on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set ([`Telemetry::from_env`]). On:
//! - spans go through the SDK's batch span processor (its own thread; `OTEL_BSP_*` apply) to
//!   this module's OTLP/gRPC exporter (`otlp`: each batch encoded straight into protobuf bytes
//!   on the processor's thread), whose connection runs on a one-thread tokio runtime of its
//!   own (`otlp-export`), so encoding and sending a batch never runs on a caller's thread, and
//!   [`Telemetry::shutdown`] can flush from any thread; `OTEL_EXPORTER_OTLP_TIMEOUT`,
//!   `…_HEADERS` and `…_COMPRESSION` (`gzip`), or their `OTEL_EXPORTER_OTLP_TRACES_` forms,
//!   apply as in the SDK's exporter;
//! - the sampler is parent-based with a trace-id ratio for roots (`OTEL_TRACES_SAMPLER_ARG`,
//!   default 1): a caller's sampled `traceparent` is always honoured, an unsampled one too;
//! - `service.name` is `OTEL_SERVICE_NAME`, else the binary's default.
//!
//! What each binary traces (the data plane's requests, the control plane's admin writes) stays
//! in that binary.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::{info, warn};

mod otlp;

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
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is not a URI a gRPC channel can use.
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint:?}: {reason}")]
    Endpoint {
        /// The value.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// `OTEL_EXPORTER_OTLP_COMPRESSION` names a compression other than `gzip`.
    #[error("OTEL_EXPORTER_OTLP_COMPRESSION={0:?}: only gzip is supported")]
    Compression(String),
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
    /// How long one export may take (`OTEL_EXPORTER_OTLP_TIMEOUT`, milliseconds; 10 s).
    pub timeout: Duration,
    /// Metadata sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`: `key=value,…`, values
    /// percent-decoded; a pair that does not parse is left out, as the SDK does).
    pub headers: Vec<(String, String)>,
    /// `OTEL_EXPORTER_OTLP_COMPRESSION=gzip`.
    pub gzip: bool,
}

/// An export's timeout when `OTEL_EXPORTER_OTLP_TIMEOUT` does not say (the SDK's).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

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
        // The traces-only form first, then the general one (the SDK's order).
        let otlp = |name: &str| {
            set(&format!("OTEL_EXPORTER_OTLP_TRACES_{name}"))
                .or_else(|| set(&format!("OTEL_EXPORTER_OTLP_{name}")))
        };
        let timeout = otlp("TIMEOUT")
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        let headers = otlp("HEADERS")
            .map(|text| parse_headers(&text))
            .unwrap_or_default();
        let gzip = match otlp("COMPRESSION") {
            None => false,
            Some(text) if text.trim() == "gzip" => true,
            Some(text) => return Err(SetupError::Compression(text)),
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
            timeout,
            headers,
            gzip,
        }))
    }
}

/// The pairs of an `OTEL_EXPORTER_OTLP_HEADERS` value: `key=value` separated by commas, each
/// trimmed, the value percent-decoded; a pair without `=` or with a value that does not decode
/// is left out.
fn parse_headers(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            let key = key.trim();
            (!key.is_empty()).then_some(())?;
            Some((key.to_owned(), percent_decode(value.trim())?))
        })
        .collect()
}

/// `text` with its `%XX` escapes decoded; `None` if one is malformed or the result not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        if byte == b'%' {
            let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(byte);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `headers` as gRPC metadata; a pair that is not valid metadata is left out (as the SDK's
/// exporter does).
fn metadata(headers: &[(String, String)]) -> MetadataMap {
    let mut map = MetadataMap::new();
    for (key, value) in headers {
        let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) else {
            continue;
        };
        map.append(key, value);
    }
    map
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
        let endpoint_error = |reason: String| SetupError::Endpoint {
            endpoint: settings.endpoint.clone(),
            reason,
        };
        let endpoint = tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
            .map_err(|error| endpoint_error(error.to_string()))?;
        if endpoint.uri().scheme_str() != Some("http") {
            // As the SDK's exporter without a TLS feature: no https, no other scheme.
            return Err(endpoint_error(
                "only http:// endpoints are supported".to_owned(),
            ));
        }
        // Connected inside the exporter's runtime: the gRPC channel's tasks are spawned on it.
        let channel = {
            let _inside = runtime.enter();
            endpoint.timeout(settings.timeout).connect_lazy()
        };
        let exporter = otlp::OtlpExporter::new(
            channel,
            runtime.handle().clone(),
            metadata(&settings.headers),
            settings.gzip.then_some(CompressionEncoding::Gzip),
        );
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

#[cfg(test)]
mod tests;
