//! The config-stream server: every data plane holds one bidirectional stream; each new config
//! version is pushed to every stream the moment it is published (no polling interval).
//!
//! Protocol (xDS-style, see `proto/gateway/config/v1/config.proto`): the data plane's first
//! request names its node; the server answers with the current snapshot under a fresh nonce.
//! A request echoing the latest nonce is an ACK (`version_info` = the version applied) or, with
//! `error_detail`, a NACK. Requests echoing an older nonce are stale and dropped. A rejected
//! version is never resent: the server only sends when the version changes.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use gateway_proto::pb::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use gateway_proto::pb::{self, DiscoveryRequest, DiscoveryResponse};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::{ConfigService, ConfigState};
use crate::fleet::{Fleet, StreamHandle};

/// Serves the config stream.
#[derive(Clone)]
pub struct XdsServer {
    config: Arc<ConfigService>,
    fleet: Arc<Fleet>,
    control_plane_id: Arc<str>,
    stopping: watch::Receiver<bool>,
}

impl XdsServer {
    /// A server publishing `config`'s versions and recording data planes in `fleet`. When
    /// `stopping` turns true, every open stream ends, so that a graceful shutdown (which waits
    /// for open streams) completes and the data planes move to another control plane.
    pub fn new(
        config: Arc<ConfigService>,
        fleet: Arc<Fleet>,
        control_plane_id: &str,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        XdsServer {
            config,
            fleet,
            control_plane_id: control_plane_id.into(),
            stopping,
        }
    }

    /// The tonic service, with message limits sized for whole-config snapshots.
    pub fn into_service(self) -> ConfigDiscoveryServer<XdsServer> {
        ConfigDiscoveryServer::new(self)
            .max_decoding_message_size(4 * 1024 * 1024)
            .max_encoding_message_size(256 * 1024 * 1024)
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
        let handle = self.fleet.connected(
            &node.id,
            &node.build_version,
            address,
            &self.control_plane_id,
            first.version_info.parse().ok(),
        );
        tracing::info!(node = %node.id, ?address, "data plane connected");

        let (outbound, responses) = mpsc::channel(4);
        let session = Session {
            fleet: self.fleet.clone(),
            control_plane_id: self.control_plane_id.clone(),
            handle,
            outbound,
            nonce: 0,
            sent_version: None,
        };
        tokio::spawn(session.run(self.config.subscribe(), inbound, self.stopping.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(responses))))
    }
}

/// One data plane's stream.
struct Session {
    fleet: Arc<Fleet>,
    control_plane_id: Arc<str>,
    handle: StreamHandle,
    outbound: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    nonce: u64,
    sent_version: Option<u64>,
}

impl Session {
    async fn run(
        mut self,
        mut versions: watch::Receiver<std::sync::Arc<ConfigState>>,
        mut inbound: Streaming<DiscoveryRequest>,
        stopping: watch::Receiver<bool>,
    ) {
        let mut stopped = std::pin::pin!(wait_stopped(stopping));
        // Always start with the current snapshot: the data plane may have been served by
        // another store before, so its version number alone proves nothing.
        let current = versions.borrow_and_update().clone();
        if self.send(&current).await.is_err() {
            self.fleet.disconnected(&self.handle);
            return;
        }
        loop {
            tokio::select! {
                () = &mut stopped => break,
                changed = versions.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let state = versions.borrow_and_update().clone();
                    if Some(state.version) != self.sent_version && self.send(&state).await.is_err() {
                        break;
                    }
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

    async fn send(&mut self, state: &ConfigState) -> Result<(), ()> {
        self.nonce += 1;
        let response = DiscoveryResponse {
            version_info: state.version.to_string(),
            nonce: self.nonce.to_string(),
            type_url: pb::SNAPSHOT_TYPE_URL.to_owned(),
            resources: state.wire_resources().as_ref().clone(),
            control_plane_id: self.control_plane_id.to_string(),
        };
        self.sent_version = Some(state.version);
        self.outbound.send(Ok(response)).await.map_err(|_| ())
    }

    fn on_request(&mut self, request: DiscoveryRequest) {
        self.fleet.seen(&self.handle);
        if request.response_nonce != self.nonce.to_string() {
            tracing::debug!(nonce = %request.response_nonce, latest = self.nonce, "stale request dropped");
            return;
        }
        let serving = request.version_info.parse::<u64>().ok();
        match (&request.error_detail, self.sent_version) {
            (Some(error), Some(rejected)) => {
                tracing::warn!(
                    node = %self.node_id(),
                    version = rejected,
                    error = %error.message,
                    "data plane rejected a config version"
                );
                self.fleet
                    .nacked(&self.handle, rejected, serving, &error.message);
            }
            (None, _) => {
                if let Some(version) = serving {
                    self.fleet.acked(&self.handle, version);
                }
            }
            (Some(_), None) => {}
        }
    }
}

/// Completes once `stopping` turns true (or its sender is gone).
async fn wait_stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}
