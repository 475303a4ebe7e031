//! The config-stream client: keeps the runtime in step with the control plane.
//!
//! One bidirectional `StreamConfig` stream at a time, to one control plane of the configured
//! list. The first request names this node (and this process's instance id), the version it
//! serves and the store that version came from. A response is a whole snapshot or a delta from
//! the version served (the changed resources and the removed ids); either is validated and
//! compiled on the low-priority config thread ([`crate::background`]: a large config never
//! stalls request-serving threads, and on a saturated core requests run first),
//! swapped in, and ACKed with its version. A response that fails is NACKed with the reason and
//! the version still served, and the previous runtime stays; a delta whose base is not the
//! version served is answered with FAILED_PRECONDITION, and the control plane sends the whole
//! config instead.
//!
//! Versions never go backwards by accident: a lower version of the same store is refused
//! (only another store's may be lower, and that is logged), unless the control plane marks it
//! `rollback` (a halted or aborted staged rollout sends its canaries back). With `--cache-dir` every applied
//! config is written to disk ([`cache`]); at start, when no control plane has answered within
//! [`CACHE_WAIT`], the cached config is served (`source: cache`) while the client keeps trying.
//!
//! When the stream ends or cannot be opened, the client waits a jittered, exponentially growing
//! delay and tries the next control plane of the list. Throughout, the proxy keeps serving the
//! last applied runtime: the request path never waits for this module.

pub mod cache;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gateway_proto::pb::config_discovery_client::ConfigDiscoveryClient;
use gateway_proto::{Kind, ResourceKey, Snapshot, SnapshotError, pb};
use http::Uri;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{error, info, warn};

use crate::background;
use crate::runtime::{CompileError, Runtime};
use crate::state::{ConfigSource, State};

use self::cache::CacheWriter;

/// Snapshots are whole configs; a large fleet config must not be refused by gRPC's 4 MiB
/// default.
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of a NACK for a snapshot that does not compile.
const INVALID_ARGUMENT: i32 = 3;
/// `google.rpc.Code.FAILED_PRECONDITION`, the code of a NACK for a delta whose base is not the
/// version served: the control plane answers with the whole config.
const FAILED_PRECONDITION: i32 = 9;

/// How often traffic per config version is reported, when it changed (`--report-interval-ms`).
pub const DEFAULT_REPORT_EVERY: Duration = Duration::from_secs(2);

/// How long a data plane started with a disk cache waits for a control plane before it serves
/// the cached config.
pub const CACHE_WAIT: Duration = Duration::from_secs(2);

/// The longest NACK message sent; the full text is in the data plane's log.
const MAX_NACK_MESSAGE_BYTES: usize = 8 * 1024;

/// The first reconnect delay, and the cap it doubles up to.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Time allowed to open a TCP connection to a control plane.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 pings on the stream, so a control plane that vanished without closing the connection
/// (a network partition, a killed VM) is noticed in about 40 s rather than never.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a received snapshot was refused.
#[derive(Debug, Error)]
pub enum ApplyError {
    /// The response carries a resource type this data plane does not know.
    #[error("unsupported type_url {0:?}; expected {expected:?}", expected = pb::SNAPSHOT_TYPE_URL)]
    TypeUrl(String),
    /// The snapshot failed validation.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The snapshot is valid but cannot be compiled into a runtime.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// Compiling crashed; a bug, reported rather than taking the process down.
    #[error("compiling the snapshot failed unexpectedly: {0}")]
    Crashed(String),
    /// A delta from a version this data plane does not serve.
    #[error(
        "the delta applies to version {base} of store {store:?}, but this data plane serves {serving}"
    )]
    BaseMismatch {
        /// The delta's base version.
        base: String,
        /// The delta's store.
        store: String,
        /// What is served (version@store, or "nothing").
        serving: String,
    },
    /// A lower version of the store already served: versions never go backwards by accident.
    #[error(
        "version {offered} is older than version {serving} of the same store, which this data plane serves"
    )]
    Backwards {
        /// The version offered.
        offered: u64,
        /// The version served.
        serving: u64,
    },
    /// The config uses a plugin this data plane was told not to run (`--disable-plugins`).
    #[error("{resource} uses plugin {plugin:?}, which is disabled on this data plane")]
    DisabledPlugin {
        /// The resource naming it.
        resource: ResourceKey,
        /// The plugin.
        plugin: String,
    },
}

impl ApplyError {
    /// The NACK's `google.rpc.Code`.
    fn code(&self) -> i32 {
        match self {
            ApplyError::BaseMismatch { .. } => FAILED_PRECONDITION,
            _ => INVALID_ARGUMENT,
        }
    }
}

/// The config being served, as the stream and the cache know it.
#[derive(Debug)]
struct Applied {
    /// Validated, typed; deltas apply to it.
    snapshot: Snapshot,
    /// Every resource as received, for the disk cache.
    wire: BTreeMap<ResourceKey, pb::Resource>,
    /// The store its versions come from.
    store_id: String,
}

impl Applied {
    /// The whole config as one message, as the disk cache keeps it.
    fn to_wire(&self) -> pb::DiscoveryResponse {
        pb::DiscoveryResponse {
            version_info: self.snapshot.version.to_string(),
            type_url: pb::SNAPSHOT_TYPE_URL.to_owned(),
            store_id: self.store_id.clone(),
            resources: self.wire.values().cloned().collect(),
            ..pb::DiscoveryResponse::default()
        }
    }
}

/// How the client reaches and proves itself to the control planes.
#[derive(Clone, Debug, Default)]
pub struct StreamSecurity {
    /// CA certificate (PEM) that signed the control planes' certificates (`https://`).
    pub ca_pem: Option<Vec<u8>>,
    /// This data plane's client certificate and key (PEM), for mTLS.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The data-plane token, sent as `authorization: Bearer …`.
    pub token: Option<String>,
}

/// Why the client could not be set up.
#[derive(Debug, Error)]
pub enum SetupError {
    /// An `https://` control plane without a CA to verify it.
    #[error("{0} is https: give --cp-ca, the CA that signed its certificate")]
    NoCa(Uri),
    /// The TLS material was refused.
    #[error("TLS for {uri}: {reason}")]
    Tls {
        /// The control plane.
        uri: Uri,
        /// Why.
        reason: String,
    },
    /// The token cannot be sent as a header.
    #[error("the data-plane token is not a valid header value")]
    Token,
}

/// The config-stream client. Build it with [`XdsClient::new`], then drive [`XdsClient::run`]
/// on its own task.
#[derive(Debug)]
pub struct XdsClient {
    endpoints: Vec<Endpoint>,
    node_id: String,
    /// Random per process: a restart is a new instance of the same node.
    instance_id: String,
    state: Arc<State>,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    disabled_plugins: Arc<BTreeSet<String>>,
    /// Sent in `Node.labels`: rollouts may choose cohorts by them.
    labels: HashMap<String, String>,
    /// How often traffic is reported, when it changed.
    report_every: Duration,
    cache_dir: Option<PathBuf>,
    cache: Option<CacheWriter>,
    /// What is served; held across each apply (which may take a while for a large config).
    applied: tokio::sync::Mutex<Option<Applied>>,
    /// Where versions are applied and compiled: below the request threads' priority.
    background: background::Worker,
}

/// How a stream session ended.
#[derive(Debug, Error)]
enum SessionEnd {
    #[error("connecting failed")]
    Connect(#[source] tonic::transport::Error),
    #[error("stream failed")]
    Status(#[source] tonic::Status),
    #[error("the control plane closed the stream")]
    Closed,
}

impl SessionEnd {
    /// Whether trying again soon can help. Codes that mean "this client is wrong for this
    /// server" (a version or auth mismatch) are still retried — a data plane never gives up —
    /// but only at the slowest pace, and logged as errors.
    fn is_transient(&self) -> bool {
        match self {
            SessionEnd::Connect(_) | SessionEnd::Closed => true,
            SessionEnd::Status(status) => !matches!(
                status.code(),
                Code::Unimplemented
                    | Code::InvalidArgument
                    | Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::FailedPrecondition
                    | Code::NotFound
                    | Code::OutOfRange
            ),
        }
    }
}

impl XdsClient {
    /// A client that will stream from `control_planes` (tried in turn) as node `node_id`,
    /// installing runtimes into `state`. Returns `None` when the list is empty.
    pub fn new(control_planes: &[Uri], node_id: String, state: Arc<State>) -> Option<XdsClient> {
        XdsClient::with_security(control_planes, node_id, state, &StreamSecurity::default())
            .ok()
            .flatten()
    }

    /// Like [`XdsClient::new`], reaching the control planes with `security` (TLS, mTLS, a
    /// token).
    pub fn with_security(
        control_planes: &[Uri],
        node_id: String,
        state: Arc<State>,
        security: &StreamSecurity,
    ) -> Result<Option<XdsClient>, SetupError> {
        if control_planes.is_empty() {
            return Ok(None);
        }
        let mut endpoints = Vec::with_capacity(control_planes.len());
        for uri in control_planes {
            let mut endpoint = Endpoint::from(uri.clone())
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
                .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
                .keep_alive_while_idle(true);
            if uri.scheme_str() == Some("https") {
                let ca = security
                    .ca_pem
                    .as_ref()
                    .ok_or_else(|| SetupError::NoCa(uri.clone()))?;
                // The control plane's name is checked against the URL's host.
                let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
                if let Some((cert, key)) = &security.identity_pem {
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                endpoint = endpoint.tls_config(tls).map_err(|e| SetupError::Tls {
                    uri: uri.clone(),
                    reason: ErrorChain(&e).to_string(),
                })?;
            }
            endpoints.push(endpoint);
        }
        let authorization = security
            .token
            .as_ref()
            .map(|token| MetadataValue::try_from(format!("Bearer {token}")))
            .transpose()
            .map_err(|_| SetupError::Token)?;
        Ok(Some(XdsClient {
            endpoints,
            node_id,
            instance_id: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            state,
            authorization,
            disabled_plugins: Arc::default(),
            labels: HashMap::new(),
            report_every: DEFAULT_REPORT_EVERY,
            cache_dir: None,
            cache: None,
            applied: tokio::sync::Mutex::new(None),
            background: background::Worker::start("config-apply"),
        }))
    }

    /// Refuses configs that use any of `plugins`.
    pub fn disable_plugins(mut self, plugins: impl IntoIterator<Item = String>) -> Self {
        self.disabled_plugins = Arc::new(plugins.into_iter().collect());
        self
    }

    /// Names this data plane's labels to the control plane.
    pub fn labels(mut self, labels: impl IntoIterator<Item = (String, String)>) -> Self {
        self.labels = labels.into_iter().collect();
        self
    }

    /// Reports traffic every `every` (when it changed) instead of [`DEFAULT_REPORT_EVERY`].
    pub fn report_every(mut self, every: Duration) -> Self {
        self.report_every = every;
        self
    }

    /// Keeps every applied config in `dir`, and serves it at start when no control plane
    /// answers. Call from within the tokio runtime (it starts the writer task).
    pub fn cache_in(mut self, dir: PathBuf) -> Self {
        self.cache = Some(CacheWriter::spawn(dir.clone(), self.state.clone()));
        self.cache_dir = Some(dir);
        self
    }

    /// Streams config forever, reconnecting as needed; with a cache, serves the cached config
    /// meanwhile if no control plane answers in time. Stop it by dropping (aborting) the task.
    pub async fn run(self) {
        tokio::join!(self.cold_start_from_cache(), self.stream_forever());
    }

    /// After [`CACHE_WAIT`] with nothing applied, serves the cached config, if any. A cache
    /// that cannot be read or compiled is logged once, counted, and ignored.
    async fn cold_start_from_cache(&self) {
        let Some(dir) = self.cache_dir.clone() else {
            return;
        };
        tokio::time::sleep(CACHE_WAIT).await;
        let mut applied = self.applied.lock().await;
        if applied.is_some() {
            return;
        }
        let disabled = self.disabled_plugins.clone();
        let previous = self.state.runtime();
        let loaded = self
            .background
            .run(move || {
                let Some(cached) = cache::read(&dir).map_err(|e| e.to_string())? else {
                    return Ok(None);
                };
                let mut applied = None;
                let runtime = apply_response(&mut applied, &cached, &previous, &disabled)
                    .map_err(|e| format!("the cached config is not usable: {e}"))?;
                Ok::<_, String>(applied.map(|applied| (applied, runtime)))
            })
            .await
            .unwrap_or_else(Err);
        match loaded {
            Ok(Some((cached, runtime))) => {
                warn!(
                    version = cached.snapshot.version,
                    store_id = %cached.store_id,
                    "no control plane answered: serving the cached config"
                );
                self.state.install_from(runtime, ConfigSource::Cache);
                *applied = Some(cached);
            }
            Ok(None) => info!("no cached config to serve while no control plane answers"),
            Err(error) => {
                self.state.metrics.record_config_cache_error();
                warn!(%error, "ignoring the config cache");
            }
        }
    }

    async fn stream_forever(&self) {
        let mut backoff = Backoff::default();
        for endpoint in self.endpoints.iter().cycle() {
            let mut received = false;
            let end = self.session(endpoint, &mut received).await;
            if received {
                backoff.reset();
            }
            if !end.is_transient() {
                backoff.exhaust();
            }
            let delay = backoff.next_delay();
            let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            log_session_end(endpoint.uri(), &end, retry_in_ms);
            tokio::time::sleep(delay).await;
        }
    }

    /// One stream, from connecting to its end. Sets `received` once a response arrives.
    async fn session(&self, endpoint: &Endpoint, received: &mut bool) -> SessionEnd {
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(error) => return SessionEnd::Connect(error),
        };
        let mut client = ConfigDiscoveryClient::new(channel)
            .max_decoding_message_size(MAX_SNAPSHOT_BYTES)
            .accept_compressed(CompressionEncoding::Gzip);
        // Requests are few (one per response); a small buffer is plenty.
        let (requests, outbound) = mpsc::channel(4);
        let plugins = gateway_proto::plugins::PLUGINS
            .iter()
            .map(|plugin| plugin.name)
            .filter(|name| !self.disabled_plugins.contains(*name))
            .map(str::to_owned)
            .collect();
        let hello = pb::DiscoveryRequest {
            node: Some(pb::Node {
                id: self.node_id.clone(),
                build_version: env!("CARGO_PKG_VERSION").to_owned(),
                plugins,
                instance_id: self.instance_id.clone(),
                labels: self.labels.clone(),
            }),
            ..self.reply(String::new(), None, self.applied.lock().await.as_ref())
        };
        // The receiver is alive right here, so this cannot fail.
        let _ = requests.send(hello).await;
        let mut request = tonic::Request::new(ReceiverStream::new(outbound));
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        let mut responses = match client.stream_config(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return SessionEnd::Status(status),
        };
        info!(control_plane = %endpoint.uri(), node_id = %self.node_id, "config stream open");
        self.state.metrics.set_config_stream_connected(true);
        let reports = self.state.reports();
        let mut report_tick = tokio::time::interval(self.report_every);
        report_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What this control plane was last told: a new stream reports at its first tick.
        let mut reported: Vec<pb::VersionTraffic> = Vec::new();
        let end = loop {
            // Each branch's future is cancel-safe: tonic's `message` keeps a partly read
            // message in the stream, and a `Notify` keeps the wake-up it was not awaited for.
            let rehashed = tokio::select! {
                message = responses.message() => match message {
                    Ok(Some(response)) if response.type_url == pb::FLEET_TYPE_URL => {
                        // Never answered: the control plane expects no ACK for it.
                        self.on_fleet(response.fleet.unwrap_or_default());
                        continue;
                    }
                    Ok(Some(response)) => {
                        *received = true;
                        let reply = self.apply(response).await;
                        if requests.send(reply).await.is_err() {
                            // The transport dropped the request stream; the response stream
                            // will report why, but there is no point waiting for it.
                            break SessionEnd::Closed;
                        }
                        continue;
                    }
                    Ok(None) => break SessionEnd::Closed,
                    Err(status) => break SessionEnd::Status(status),
                },
                _ = report_tick.tick() => Vec::new(),
                () = reports.rehash_queued() => reports.take_rehashed(),
            };
            let traffic = reports.traffic();
            if rehashed.is_empty() && traffic == reported {
                continue;
            }
            let report = pb::DiscoveryRequest {
                type_url: pb::REPORT_TYPE_URL.to_owned(),
                report: Some(pb::Report {
                    traffic: traffic.clone(),
                    rehashed,
                }),
                ..pb::DiscoveryRequest::default()
            };
            if let Err(unsent) = requests.send(report).await {
                if let Some(report) = unsent.0.report {
                    reports.put_back(report.rehashed);
                }
                break SessionEnd::Closed;
            }
            reported = traffic;
        };
        self.state.metrics.set_config_stream_connected(false);
        end
    }

    /// Takes the fleet's size for `limit-count`'s `fleet` policy. The share lives in the plugins'
    /// environment, which every runtime inherits, so it holds across config versions.
    fn on_fleet(&self, fleet: pb::FleetInfo) {
        let runtime = self.state.runtime();
        let share = &runtime.plugins.env().fleet;
        if share.live() != Some(fleet.live_data_planes) {
            info!(
                live_data_planes = fleet.live_data_planes,
                "fleet size from the control plane"
            );
        }
        share.set(fleet.live_data_planes);
    }

    /// Applies one response and returns the ACK or NACK that answers it.
    async fn apply(&self, response: pb::DiscoveryResponse) -> pb::DiscoveryRequest {
        self.state.metrics.record_config_response();
        let nonce = response.nonce.clone();
        let offered = response.version_info.clone();
        let mut applied = self.applied.lock().await;
        let mut current = applied.take();
        let previous = self.state.runtime();
        let disabled = self.disabled_plugins.clone();
        let caching = self.cache.is_some();
        let result = self
            .background
            .run(move || {
                let result = apply_response(&mut current, &response, &previous, &disabled);
                // What the disk cache keeps, assembled here too: 10k resources are worth a
                // thread that serves no requests.
                let to_cache = match (&result, &current) {
                    (Ok(_), Some(applied)) if caching => Some(applied.to_wire()),
                    _ => None,
                };
                (current, result.map(|runtime| (runtime, to_cache)))
            })
            .await;
        // A crash is caught around the compile; losing the model here only means the next
        // delta cannot apply and the control plane sends the whole config.
        let result = match result {
            Ok((current, result)) => {
                *applied = current;
                result
            }
            Err(crash) => Err(ApplyError::Crashed(crash)),
        };
        match result {
            Ok((runtime, to_cache)) => {
                let version = runtime.version;
                self.state.install_from(runtime, ConfigSource::Stream);
                info!(version, "config applied");
                if let (Some(cache), Some(wire)) = (&self.cache, to_cache) {
                    cache.store(wire);
                }
                self.reply(nonce, None, applied.as_ref())
            }
            Err(error) => {
                if error.code() == FAILED_PRECONDITION {
                    info!(version = %offered, %error, "delta not applicable; asking for the whole config");
                } else {
                    self.state.metrics.record_config_rejected();
                    warn!(version = %offered, %error, "config rejected; serving the previous one");
                }
                let detail = pb::ErrorDetail {
                    code: error.code(),
                    message: truncate(error.to_string(), MAX_NACK_MESSAGE_BYTES),
                };
                self.reply(nonce, Some(detail), applied.as_ref())
            }
        }
    }

    /// A request naming the version served now: an ACK when no `error_detail` is given (the
    /// new version is already installed), a NACK otherwise.
    fn reply(
        &self,
        nonce: String,
        error_detail: Option<pb::ErrorDetail>,
        applied: Option<&Applied>,
    ) -> pb::DiscoveryRequest {
        pb::DiscoveryRequest {
            node: None,
            version_info: applied
                .map(|a| a.snapshot.version.to_string())
                .unwrap_or_default(),
            response_nonce: nonce,
            type_url: pb::SNAPSHOT_TYPE_URL.to_owned(),
            error_detail,
            store_id: applied.map(|a| a.store_id.clone()).unwrap_or_default(),
            config_source: applied
                .map(|_| self.state.config_source().as_str().to_owned())
                .unwrap_or_default(),
            report: None,
        }
    }
}

/// Logs why a session ended: a normal close at info, a lost stream at warn, a refusal at error.
fn log_session_end(control_plane: &Uri, end: &SessionEnd, retry_in_ms: u64) {
    let error = ErrorChain(end);
    match end {
        SessionEnd::Closed => {
            info!(%control_plane, retry_in_ms, "config stream closed by the control plane");
        }
        SessionEnd::Connect(_) => {
            warn!(%control_plane, retry_in_ms, %error, "cannot reach the control plane");
        }
        SessionEnd::Status(_) if end.is_transient() => {
            warn!(%control_plane, retry_in_ms, %error, "config stream lost");
        }
        SessionEnd::Status(_) => {
            error!(%control_plane, retry_in_ms, %error, "the control plane refuses this data plane");
        }
    }
}

/// Displays an error with its sources: tonic's transport errors say only "transport error" and
/// keep the cause ("connection refused") one level down.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// Applies a whole snapshot or a delta to what is served (`applied`), and compiles the
/// result; runs on the config thread. On any error `applied` is left as it was.
fn apply_response(
    applied: &mut Option<Applied>,
    response: &pb::DiscoveryResponse,
    previous: &Runtime,
    disabled: &BTreeSet<String>,
) -> Result<Runtime, ApplyError> {
    if response.type_url != pb::SNAPSHOT_TYPE_URL {
        return Err(ApplyError::TypeUrl(response.type_url.clone()));
    }
    let same_store = applied
        .as_ref()
        .filter(|current| current.store_id == response.store_id);
    if response.base_version.is_empty() {
        let snapshot = Snapshot::from_wire(response)?;
        // A staged rollout that halted sends its canaries back on purpose, and says so.
        if let Some(current) = same_store
            && snapshot.version < current.snapshot.version
            && !response.rollback
        {
            return Err(ApplyError::Backwards {
                offered: snapshot.version,
                serving: current.snapshot.version,
            });
        }
        if let Some(current) = applied.as_ref()
            && current.store_id != response.store_id
        {
            info!(
                version = snapshot.version,
                store_id = %response.store_id,
                serving = current.snapshot.version,
                serving_store_id = %current.store_id,
                "the control plane serves another store: taking its version, whatever its number"
            );
        }
        check_plugins(&snapshot, disabled)?;
        let runtime = compile(&snapshot, previous, None)?;
        let wire = response
            .resources
            .iter()
            .filter_map(|r| {
                Some((
                    ResourceKey::new(Kind::parse(&r.kind)?, r.id.clone()),
                    r.clone(),
                ))
            })
            .collect();
        *applied = Some(Applied {
            snapshot,
            wire,
            store_id: response.store_id.clone(),
        });
        return Ok(runtime);
    }
    let Some(current) = applied
        .as_mut()
        .filter(|current| current.store_id == response.store_id)
        .filter(|current| current.snapshot.version.to_string() == response.base_version)
    else {
        return Err(ApplyError::BaseMismatch {
            base: response.base_version.clone(),
            store: response.store_id.clone(),
            serving: applied.as_ref().map_or_else(
                || "nothing".to_owned(),
                |a| format!("{}@{}", a.snapshot.version, a.store_id),
            ),
        });
    };
    let serving = current.snapshot.version;
    if let Ok(offered) = response.version_info.parse::<u64>()
        && offered < serving
    {
        return Err(ApplyError::Backwards { offered, serving });
    }
    let undo = current.snapshot.apply_delta(response)?;
    // The served runtime was compiled from the snapshot the delta applies to (a failed compile
    // takes its delta back): only what the delta names is compiled again.
    let changed = (previous.version == serving).then(|| {
        let named = response.resources.iter().map(|r| (&r.kind, &r.id));
        named
            .chain(response.removed.iter().map(|r| (&r.kind, &r.id)))
            .filter_map(|(kind, id)| Some(ResourceKey::new(Kind::parse(kind)?, id.clone())))
            .collect::<Vec<_>>()
    });
    let compiled = check_plugins(&current.snapshot, disabled)
        .and_then(|()| compile(&current.snapshot, previous, changed.as_deref()));
    match compiled {
        Ok(runtime) => {
            for removed in &response.removed {
                if let Some(kind) = Kind::parse(&removed.kind) {
                    current
                        .wire
                        .remove(&ResourceKey::new(kind, removed.id.clone()));
                }
            }
            for resource in &response.resources {
                if let Some(kind) = Kind::parse(&resource.kind) {
                    current.wire.insert(
                        ResourceKey::new(kind, resource.id.clone()),
                        resource.clone(),
                    );
                }
            }
            Ok(runtime)
        }
        Err(error) => {
            current.snapshot.undo(undo);
            Err(error)
        }
    }
}

/// Refuses a config that uses a plugin disabled on this data plane.
fn check_plugins(snapshot: &Snapshot, disabled: &BTreeSet<String>) -> Result<(), ApplyError> {
    if disabled.is_empty() {
        return Ok(());
    }
    for (key, resource) in &snapshot.resources {
        let named = resource.parsed.plugins().into_iter().flat_map(|p| p.keys());
        if let Some(plugin) = named.into_iter().find(|name| disabled.contains(*name)) {
            return Err(ApplyError::DisabledPlugin {
                resource: key.clone(),
                plugin: plugin.clone(),
            });
        }
    }
    Ok(())
}

/// Compiles a validated snapshot, only its `changed` resources when they are known; a panic is
/// reported as an error rather than taking the config stream down.
fn compile(
    snapshot: &Snapshot,
    previous: &Runtime,
    changed: Option<&[ResourceKey]>,
) -> Result<Runtime, ApplyError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match changed {
        Some(changed) => Runtime::compile_changes(snapshot, previous, changed),
        None => Runtime::compile(snapshot, Some(previous)),
    }))
    .map_err(|panic| ApplyError::Crashed(crate::background::panic_message(panic)))?
    .map_err(ApplyError::from)
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff and
/// Jitter"): each delay is uniform in `[0, cap]` and the cap doubles from 100 ms to 5 s, so a
/// fleet of data planes that lost their control plane together does not reconnect in step.
#[derive(Debug)]
struct Backoff {
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            cap: BACKOFF_INITIAL,
        }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let cap = self.cap;
        self.cap = (self.cap * 2).min(BACKOFF_MAX);
        let cap_ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=cap_ms))
    }

    fn reset(&mut self) {
        self.cap = BACKOFF_INITIAL;
    }

    fn exhaust(&mut self) {
        self.cap = BACKOFF_MAX;
    }
}

#[cfg(test)]
mod tests;
