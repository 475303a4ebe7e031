//! The config-stream server: every data plane holds one bidirectional stream; each new config
//! version is pushed to every stream the moment it is published (no polling interval).
//!
//! Protocol (xDS-style, see `proto/gateway/config/v1/config.proto`): the data plane's first
//! request names its node, the version it serves and the store that version comes from. A
//! data plane that serves nothing, or a version of another store, gets the whole snapshot;
//! one that serves a version of this store gets a delta from it (the resources changed since,
//! and the ids removed), as every later response is. At most one response is unanswered per
//! stream: versions published meanwhile are folded into the next delta.
//!
//! A request echoing the latest nonce is an ACK or, with `error_detail`, a NACK; requests
//! echoing an older nonce are stale and dropped. A rejected version is recorded in the fleet
//! and never sent to that data plane again; the next version is. A data plane that serves a
//! newer version of this store than this replica has (it came from a replica that is ahead)
//! is sent nothing until this replica catches up: it never goes backwards.
//!
//! Beside the config, a stream carries fleet messages (`type.gateway/Fleet`): how many data
//! planes are live across every replica, for `limit-count`'s `fleet` policy. One goes out once
//! the data plane has answered its first response, then one whenever the count changes. They
//! carry no version and no nonce and are never answered, so they do not count as the one
//! unanswered response.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_util::Stream;
use gateway_proto::pb::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use gateway_proto::pb::{self, DiscoveryRequest, DiscoveryResponse};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status, Streaming};

use crate::config::{ConfigService, ConfigState};
use crate::fleet::{Fleet, Hello, StreamHandle};
use crate::metrics::metrics;
use crate::rollout::Rollouts;

/// `google.rpc.Code.FAILED_PRECONDITION`: in a NACK, "I do not serve the delta's base version,
/// send the whole snapshot" — a resync, not a rejection of the version.
const FAILED_PRECONDITION: i32 = 9;

/// Serves the config stream.
#[derive(Clone)]
pub struct XdsServer {
    config: Arc<ConfigService>,
    fleet: Arc<Fleet>,
    /// Which version each data plane should serve (the head, without a rollout policy).
    rollouts: Arc<Rollouts>,
    stopping: watch::Receiver<bool>,
    /// SHA-256 of the data-plane token every stream must present, if one is required.
    token_digest: Option<[u8; 32]>,
}

impl XdsServer {
    /// A server publishing `config`'s versions, each data plane the one `rollouts` plans for
    /// it, and recording data planes in `fleet`. When
    /// `stopping` turns true, every open stream ends, so that a graceful shutdown (which waits
    /// for open streams) completes and the data planes move to another control plane.
    pub fn new(
        config: Arc<ConfigService>,
        fleet: Arc<Fleet>,
        rollouts: Arc<Rollouts>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        XdsServer {
            config,
            fleet,
            rollouts,
            stopping,
            token_digest: None,
        }
    }

    /// Requires every stream to carry `authorization: Bearer <token>`. Only the token's digest
    /// is kept.
    pub fn require_token(mut self, token: &str) -> Self {
        self.token_digest = Some(Sha256::digest(token.as_bytes()).into());
        self
    }

    /// The tonic service: messages compressed when the data plane accepts gzip, limits sized
    /// for whole-config snapshots.
    pub fn into_service(self) -> ConfigDiscoveryServer<XdsServer> {
        ConfigDiscoveryServer::new(self)
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(4 * 1024 * 1024)
            .max_encoding_message_size(256 * 1024 * 1024)
    }

    /// Whether the request carries the data-plane token (when one is required), compared in
    /// constant time.
    fn authorized<T>(&self, request: &Request<T>) -> bool {
        let Some(expected) = &self.token_digest else {
            return true;
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Digests of equal length, compared without an early exit.
        digest
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for XdsServer {
    type StreamConfigStream = ResponseStream;

    async fn stream_config(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamConfigStream>, Status> {
        let address = request.remote_addr();
        if !self.authorized(&request) {
            tracing::warn!(
                ?address,
                "config stream refused: missing or wrong data-plane token"
            );
            return Err(Status::unauthenticated(
                "a valid data-plane token is required",
            ));
        }
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream closed before any request"))?;
        let node = first
            .node
            .as_ref()
            .filter(|n| !n.id.is_empty())
            .ok_or_else(|| Status::invalid_argument("the first request must name its node"))?;
        let serving = first.version_info.parse::<u64>().ok();
        let same_store = serving.is_some() && first.store_id == self.config.store_id();
        let handle = self.fleet.connected(&Hello {
            node_id: node.id.clone(),
            instance_id: node.instance_id.clone(),
            build_version: node.build_version.clone(),
            address,
            serving,
            config_source: Some(first.config_source.clone()).filter(|s| !s.is_empty()),
            labels: node
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        });
        tracing::info!(node = %node.id, ?address, ?serving, same_store, "data plane connected");

        let (outbound, responses) = mpsc::channel(4);
        let session = Session {
            config: self.config.clone(),
            fleet: self.fleet.clone(),
            rollouts: self.rollouts.clone(),
            handle,
            outbound,
            nonce: 0,
            serving,
            same_store,
            confirmed: false,
            in_flight: None,
            withheld: None,
            needs_full: false,
            waiting_logged: false,
        };
        tokio::spawn(session.run(self.config.subscribe(), inbound, self.stopping.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(responses))))
    }
}

/// A response sent and not answered yet.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    nonce: u64,
    version: u64,
    sent: Instant,
}

/// One data plane's stream.
struct Session {
    config: Arc<ConfigService>,
    fleet: Arc<Fleet>,
    rollouts: Arc<Rollouts>,
    handle: StreamHandle,
    outbound: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    nonce: u64,
    /// The version the data plane serves, as far as this stream knows.
    serving: Option<u64>,
    /// Whether `serving` is a version of this replica's store.
    same_store: bool,
    /// Whether the data plane has answered a response on this stream.
    confirmed: bool,
    in_flight: Option<InFlight>,
    /// A version this data plane rejected: never sent to it again.
    withheld: Option<u64>,
    /// The data plane could not apply a delta: the next response is a whole snapshot.
    needs_full: bool,
    waiting_logged: bool,
}

impl Session {
    async fn run(
        mut self,
        mut versions: watch::Receiver<Arc<ConfigState>>,
        mut inbound: Streaming<DiscoveryRequest>,
        stopping: watch::Receiver<bool>,
    ) {
        let mut stopped = std::pin::pin!(wait_stopped(stopping));
        let _open = StreamOpen::count();
        self.withheld = self.fleet.prior(&self.handle).await;
        let mut live = self.fleet.live_data_planes();
        let mut live_told = None;
        let mut plan = self.rollouts.plan();
        loop {
            if self.in_flight.is_none() {
                let head = versions.borrow_and_update().clone();
                let target = plan
                    .borrow_and_update()
                    .target(self.node_id(), head.version);
                if self.send_target(head, target).await.is_err() {
                    break;
                }
            }
            if self.confirmed && self.tell_fleet(&mut live, &mut live_told).await.is_err() {
                break;
            }
            tokio::select! {
                () = &mut stopped => break,
                changed = live.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                changed = versions.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // Marked seen; the loop sends the newest once nothing is in flight.
                    versions.borrow_and_update();
                }
                changed = plan.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    plan.borrow_and_update();
                }
                message = inbound.message() => match message {
                    Ok(Some(request)) => self.on_request(request),
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(node = %self.node_id(), %status, "config stream error");
                        break;
                    }
                },
            }
        }
        tracing::info!(node = %self.node_id(), "data plane disconnected");
        self.fleet.disconnected(&self.handle);
    }

    fn node_id(&self) -> &str {
        self.handle.node_id()
    }

    /// Sends the data plane its `target` version (the head, or what a staged rollout plans for
    /// it), read from the store when it is not the head. A version that cannot be read is
    /// logged and sent at the next change.
    async fn send_target(&mut self, head: Arc<ConfigState>, target: u64) -> Result<(), ()> {
        if target == head.version {
            return self.send_if_needed(&head, head.version).await;
        }
        match self.rollouts.state_at(target).await {
            Ok(state) => self.send_if_needed(&state, head.version).await,
            Err(error) => {
                tracing::warn!(node = %self.node_id(), target, %error, "cannot read the version planned for this data plane");
                Ok(())
            }
        }
    }

    /// Sends what the data plane lacks of `target` (this replica's head is `head`), if
    /// anything. A target below what it serves (a halted rollout) goes whole, marked
    /// `rollback`.
    async fn send_if_needed(&mut self, target: &ConfigState, head: u64) -> Result<(), ()> {
        if self.withheld == Some(target.version) {
            return Ok(());
        }
        let base = self.serving.filter(|_| self.same_store && !self.needs_full);
        match base {
            Some(serving) if serving > head => {
                if !self.waiting_logged {
                    self.waiting_logged = true;
                    tracing::info!(
                        node = %self.node_id(),
                        serving,
                        head,
                        "the data plane serves a newer version than this replica has; \
                         sending nothing until this replica catches up"
                    );
                }
                return Ok(());
            }
            Some(serving) if serving == target.version && self.confirmed => return Ok(()),
            _ => {}
        }
        let rollback = base.is_some_and(|serving| serving > target.version);
        let response = match base {
            Some(base) if !rollback => self.delta(base, target).await,
            _ => None,
        };
        let response = response.unwrap_or_else(|| self.full(target));
        self.nonce += 1;
        self.in_flight = Some(InFlight {
            nonce: self.nonce,
            version: target.version,
            sent: Instant::now(),
        });
        let response = DiscoveryResponse {
            version_info: target.version.to_string(),
            nonce: self.nonce.to_string(),
            type_url: pb::SNAPSHOT_TYPE_URL.to_owned(),
            control_plane_id: self.fleet.control_plane_id().to_owned(),
            store_id: self.config.store_id().to_owned(),
            rollback,
            ..response
        };
        self.outbound.send(Ok(response)).await.map_err(|_| ())
    }

    /// Sends the live data-plane count if it is not what this data plane was last told.
    /// This data plane is live itself, so the count sent is at least 1 (the store may not
    /// hold its row yet).
    async fn tell_fleet(
        &mut self,
        live: &mut watch::Receiver<u32>,
        told: &mut Option<u32>,
    ) -> Result<(), ()> {
        let count = (*live.borrow_and_update()).max(1);
        if *told == Some(count) {
            return Ok(());
        }
        *told = Some(count);
        let message = DiscoveryResponse {
            type_url: pb::FLEET_TYPE_URL.to_owned(),
            control_plane_id: self.fleet.control_plane_id().to_owned(),
            fleet: Some(pb::FleetInfo {
                live_data_planes: count,
            }),
            ..DiscoveryResponse::default()
        };
        self.outbound.send(Ok(message)).await.map_err(|_| ())
    }

    /// Every resource of `head`.
    fn full(&mut self, head: &ConfigState) -> DiscoveryResponse {
        self.needs_full = false;
        DiscoveryResponse {
            resources: head.wire_resources().as_ref().clone(),
            ..DiscoveryResponse::default()
        }
    }

    /// What changed from `base` to `head`; `None` when a whole snapshot is the better answer
    /// (the delta would not be smaller) or the changes cannot be read.
    async fn delta(&self, base: u64, head: &ConfigState) -> Option<DiscoveryResponse> {
        let changed = match self.config.changed_keys(base, head.version).await {
            Ok(changed) => changed,
            Err(error) => {
                tracing::warn!(node = %self.node_id(), %error, "cannot work out a delta; sending the whole config");
                return None;
            }
        };
        if !changed.is_empty() && changed.len() >= head.resources.len() {
            return None;
        }
        let mut response = DiscoveryResponse {
            base_version: base.to_string(),
            ..DiscoveryResponse::default()
        };
        for key in changed {
            match head.resources.get(&key) {
                Some(entry) => response.resources.push(entry.wire(&key)),
                None => response.removed.push(pb::ResourceRef {
                    kind: key.kind.as_str().to_owned(),
                    id: key.id,
                }),
            }
        }
        Some(response)
    }

    fn on_request(&mut self, request: DiscoveryRequest) {
        if request.type_url == pb::REPORT_TYPE_URL {
            // Not an answer to a response: never stale, never a change of what is served.
            self.on_report(request.report.unwrap_or_default());
            return;
        }
        let Some(flight) = self
            .in_flight
            .filter(|f| request.response_nonce == f.nonce.to_string())
        else {
            tracing::debug!(nonce = %request.response_nonce, latest = self.nonce, "stale request dropped");
            return;
        };
        self.in_flight = None;
        self.confirmed = true;
        self.serving = request.version_info.parse::<u64>().ok();
        self.same_store = self.serving.is_some() && request.store_id == self.config.store_id();
        match &request.error_detail {
            None => {
                if let Some(version) = self.serving {
                    metrics().push_duration.observe(flight.sent.elapsed());
                    self.fleet.acked(&self.handle, version);
                }
            }
            Some(error) if error.code == FAILED_PRECONDITION => {
                tracing::info!(
                    node = %self.node_id(),
                    reason = %error.message,
                    "the data plane asked for the whole config"
                );
                self.needs_full = true;
            }
            Some(error) => {
                tracing::warn!(
                    node = %self.node_id(),
                    version = flight.version,
                    error = %error.message,
                    "data plane rejected a config version; it will not be sent to it again"
                );
                self.withheld = Some(flight.version);
                metrics().nacks.fetch_add(1, Ordering::Relaxed);
                self.fleet
                    .nacked(&self.handle, flight.version, self.serving, &error.message);
            }
        }
    }

    /// A data plane's report: its traffic per config version goes to the fleet (staged
    /// rollouts compare it); its `rehashed` credentials to the config service, which commits
    /// those that still hold (`crate::rehash`).
    fn on_report(&mut self, report: pb::Report) {
        self.fleet.reported(&self.handle, &report.traffic);
        self.config.rehash(report.rehashed);
    }
}

/// Counts a config stream as open for as long as it lives.
struct StreamOpen;

impl StreamOpen {
    fn count() -> StreamOpen {
        metrics().streams_open.fetch_add(1, Ordering::Relaxed);
        StreamOpen
    }
}

impl Drop for StreamOpen {
    fn drop(&mut self) {
        metrics().streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Completes once `stopping` turns true (or its sender is gone).
async fn wait_stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}
