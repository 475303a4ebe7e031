//! The config-stream client: keeps the runtime in step with the control plane.
//!
//! One bidirectional `StreamConfig` stream at a time, to one control plane of the configured
//! list. The first request names this node and the version it serves. Every response is a whole
//! snapshot: it is validated and compiled on a blocking thread (so a large config never stalls
//! request-serving threads), swapped in, and ACKed with its version; a snapshot that fails is
//! NACKed with the reason and the version still served, and the previous runtime stays.
//!
//! When the stream ends or cannot be opened, the client waits a jittered, exponentially growing
//! delay and tries the next control plane of the list. Throughout, the proxy keeps serving the
//! last applied runtime: the request path never waits for this module.

use std::sync::Arc;
use std::time::Duration;

use gateway_proto::pb::config_discovery_client::ConfigDiscoveryClient;
use gateway_proto::{Snapshot, SnapshotError, pb};
use http::Uri;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Endpoint;
use tracing::{error, info, warn};

use crate::runtime::{CompileError, Runtime};
use crate::state::State;

/// Snapshots are whole configs; a large fleet config must not be refused by gRPC's 4 MiB
/// default.
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of a NACK for a snapshot that does not compile.
const INVALID_ARGUMENT: i32 = 3;

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
}

/// The config-stream client. Build it with [`XdsClient::new`], then drive [`XdsClient::run`]
/// on its own task.
#[derive(Debug)]
pub struct XdsClient {
    endpoints: Vec<Endpoint>,
    node_id: String,
    state: Arc<State>,
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
        if control_planes.is_empty() {
            return None;
        }
        let endpoints = control_planes
            .iter()
            .map(|uri| {
                Endpoint::from(uri.clone())
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
                    .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
                    .keep_alive_while_idle(true)
            })
            .collect();
        Some(XdsClient {
            endpoints,
            node_id,
            state,
        })
    }

    /// Streams config forever, reconnecting as needed. Stop it by dropping (aborting) the task.
    pub async fn run(self) {
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
        let mut client =
            ConfigDiscoveryClient::new(channel).max_decoding_message_size(MAX_SNAPSHOT_BYTES);
        // Requests are few (one per response); a small buffer is plenty.
        let (requests, outbound) = mpsc::channel(4);
        let hello = pb::DiscoveryRequest {
            node: Some(pb::Node {
                id: self.node_id.clone(),
                build_version: env!("CARGO_PKG_VERSION").to_owned(),
                plugins: Vec::new(),
            }),
            ..self.reply(String::new(), None)
        };
        // The receiver is alive right here, so this cannot fail.
        let _ = requests.send(hello).await;
        let mut responses = match client.stream_config(ReceiverStream::new(outbound)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return SessionEnd::Status(status),
        };
        info!(control_plane = %endpoint.uri(), node_id = %self.node_id, "config stream open");
        self.state.metrics.set_config_stream_connected(true);
        let end = loop {
            match responses.message().await {
                Ok(Some(response)) => {
                    *received = true;
                    let reply = self.apply(response).await;
                    if requests.send(reply).await.is_err() {
                        // The transport dropped the request stream; the response stream will
                        // report why, but there is no point waiting for it.
                        break SessionEnd::Closed;
                    }
                }
                Ok(None) => break SessionEnd::Closed,
                Err(status) => break SessionEnd::Status(status),
            }
        };
        self.state.metrics.set_config_stream_connected(false);
        end
    }

    /// Applies one response and returns the ACK or NACK that answers it.
    async fn apply(&self, response: pb::DiscoveryResponse) -> pb::DiscoveryRequest {
        let nonce = response.nonce.clone();
        let offered = response.version_info.clone();
        let previous = self.state.runtime();
        let result = if response.type_url == pb::SNAPSHOT_TYPE_URL {
            tokio::task::spawn_blocking(move || compile(&response, &previous))
                .await
                .unwrap_or_else(|crash| Err(ApplyError::Crashed(crash.to_string())))
        } else {
            Err(ApplyError::TypeUrl(response.type_url))
        };
        match result {
            Ok(runtime) => {
                let version = runtime.version;
                let served = self.state.applied_version();
                if served.is_some_and(|served| version < served) {
                    warn!(
                        version,
                        ?served,
                        "the control plane sent an older config version"
                    );
                }
                self.state.install(runtime);
                info!(version, "config applied");
                self.reply(nonce, None)
            }
            Err(error) => {
                self.state.metrics.record_config_rejected();
                warn!(version = %offered, %error, "config rejected; serving the previous one");
                let detail = pb::ErrorDetail {
                    code: INVALID_ARGUMENT,
                    message: truncate(error.to_string(), MAX_NACK_MESSAGE_BYTES),
                };
                self.reply(nonce, Some(detail))
            }
        }
    }

    /// A request naming the version served now: an ACK when no `error_detail` is given (the
    /// new version is already installed), a NACK otherwise.
    fn reply(&self, nonce: String, error_detail: Option<pb::ErrorDetail>) -> pb::DiscoveryRequest {
        pb::DiscoveryRequest {
            node: None,
            version_info: self
                .state
                .applied_version()
                .map(|v| v.to_string())
                .unwrap_or_default(),
            response_nonce: nonce,
            type_url: pb::SNAPSHOT_TYPE_URL.to_owned(),
            error_detail,
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

/// Validates and compiles a snapshot; runs on a blocking thread.
fn compile(response: &pb::DiscoveryResponse, previous: &Runtime) -> Result<Runtime, ApplyError> {
    let snapshot = Snapshot::from_wire(response)?;
    Ok(Runtime::compile(&snapshot, Some(previous))?)
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
