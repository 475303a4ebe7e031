//! OpenTelemetry's exporter side, shared by both binaries: the tracer and its OTLP/gRPC
//! exporter, set up from the environment (only with the `telemetry` feature).
//!
//! Tracing is on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set ([`Telemetry::from_env`]). On:
//! - spans go through the SDK's batch span processor (its own thread; `OTEL_BSP_*` apply) to
//!   an OTLP/gRPC exporter whose connection runs on a one-thread tokio runtime of its own
//!   (`otlp-export`), so encoding and sending a batch never runs on a caller's thread, and
//!   [`Telemetry::shutdown`] can flush from any thread;
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
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter,
};
use tracing::{info, warn};

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
