//! The config-stream client against an in-process fake control plane.

use std::time::Duration;

use gateway_proto::pb::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use super::*;
use crate::test_support::{eventually, wire};

/// How long a test waits for one message before failing.
const WAIT: Duration = Duration::from_secs(10);

/// One `StreamConfig` call seen by the fake: what the data plane sends, and a handle to answer.
struct Session {
    requests: Streaming<pb::DiscoveryRequest>,
    responses: mpsc::Sender<Result<pb::DiscoveryResponse, Status>>,
}

impl Session {
    async fn next_request(&mut self) -> pb::DiscoveryRequest {
        tokio::time::timeout(WAIT, self.requests.message())
            .await
            .expect("the data plane answers in time")
            .expect("the request stream is healthy")
            .expect("the request stream is open")
    }

    async fn push(&self, response: pb::DiscoveryResponse) {
        self.responses.send(Ok(response)).await.unwrap();
    }
}

/// A control plane that hands every stream to the test.
struct FakeControlPlane {
    sessions: mpsc::UnboundedSender<Session>,
}

#[tonic::async_trait]
impl ConfigDiscovery for FakeControlPlane {
    type StreamConfigStream = ReceiverStream<Result<pb::DiscoveryResponse, Status>>;

    async fn stream_config(
        &self,
        request: Request<Streaming<pb::DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamConfigStream>, Status> {
        let (responses, outbound) = mpsc::channel(4);
        let session = Session {
            requests: request.into_inner(),
            responses,
        };
        self.sessions
            .send(session)
            .map_err(|_| Status::unavailable("test over"))?;
        Ok(Response::new(ReceiverStream::new(outbound)))
    }
}

async fn start_control_plane() -> (Uri, mpsc::UnboundedReceiver<Session>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (sessions, accepted) = mpsc::unbounded_channel();
    tokio::spawn(
        Server::builder()
            .add_service(ConfigDiscoveryServer::new(FakeControlPlane { sessions }))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    (format!("http://{addr}").parse().unwrap(), accepted)
}

async fn next_session(accepted: &mut mpsc::UnboundedReceiver<Session>) -> Session {
    tokio::time::timeout(WAIT, accepted.recv())
        .await
        .expect("the data plane connects in time")
        .expect("the fake control plane is running")
}

fn good(version: &str, nonce: &str) -> pb::DiscoveryResponse {
    wire(
        version,
        nonce,
        &[
            (
                "upstreams",
                "u",
                json!({"nodes": [{"host": "127.0.0.1", "port": 8080}]}),
            ),
            ("routes", "r", json!({"paths": ["/"], "upstream_id": "u"})),
        ],
    )
}

#[tokio::test]
async fn acks_a_good_snapshot_and_nacks_a_bad_one() {
    let (uri, mut accepted) = start_control_plane().await;
    let state = State::new();
    let client = XdsClient::new(&[uri], "dp-test".into(), Arc::clone(&state)).unwrap();
    tokio::spawn(client.run());

    let mut session = next_session(&mut accepted).await;
    let hello = session.next_request().await;
    let node = hello.node.expect("the first request names the node");
    assert_eq!(node.id, "dp-test");
    assert_eq!(node.build_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(hello.type_url, pb::SNAPSHOT_TYPE_URL);
    assert_eq!(hello.version_info, "");
    assert_eq!(hello.response_nonce, "");
    assert!(hello.error_detail.is_none());

    session.push(good("3", "n1")).await;
    let ack = session.next_request().await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("3", "n1")
    );
    assert!(ack.error_detail.is_none());
    assert_eq!(state.applied_version(), Some(3));
    assert_eq!(state.runtime().router.len(), 1);

    // A route naming an upstream that does not exist.
    let bad = wire(
        "4",
        "n2",
        &[(
            "routes",
            "r",
            json!({"paths": ["/"], "upstream_id": "gone"}),
        )],
    );
    session.push(bad).await;
    let nack = session.next_request().await;
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("3", "n2")
    );
    let detail = nack.error_detail.expect("a NACK carries error_detail");
    assert_eq!(detail.code, 3);
    assert!(
        detail.message.contains("upstreams/gone"),
        "{}",
        detail.message
    );
    assert_eq!(state.applied_version(), Some(3));
    assert_eq!(state.runtime().version, 3);

    let mut wrong_type = good("5", "n3");
    wrong_type.type_url = "type.gateway/Other".into();
    session.push(wrong_type).await;
    let nack = session.next_request().await;
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("3", "n3")
    );
    assert!(nack.error_detail.unwrap().message.contains("type_url"));

    let metrics = state.metrics.render();
    assert!(
        metrics.contains("gateway_config_applied_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_config_rejected_total 2\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn reconnects_and_reports_the_version_it_serves() {
    let (uri, mut accepted) = start_control_plane().await;
    let state = State::new();
    tokio::spawn(
        XdsClient::new(&[uri], "dp".into(), Arc::clone(&state))
            .unwrap()
            .run(),
    );

    let mut first = next_session(&mut accepted).await;
    first.next_request().await;
    first.push(good("7", "a")).await;
    first.next_request().await;
    assert_eq!(state.applied_version(), Some(7));

    // The control plane ends the stream; the data plane keeps serving and comes back.
    first
        .responses
        .send(Err(Status::unavailable("restarting")))
        .await
        .unwrap();
    drop(first);
    let mut second = next_session(&mut accepted).await;
    let hello = second.next_request().await;
    assert!(hello.node.is_some());
    assert_eq!(hello.version_info, "7");
    assert_eq!(state.runtime().version, 7);
}

#[tokio::test]
async fn fails_over_to_the_next_control_plane() {
    let dead: Uri = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap()
    };
    let (alive, mut accepted) = start_control_plane().await;
    let state = State::new();
    tokio::spawn(
        XdsClient::new(&[dead, alive], "dp".into(), Arc::clone(&state))
            .unwrap()
            .run(),
    );
    let mut session = next_session(&mut accepted).await;
    session.next_request().await;
    session.push(good("1", "x")).await;
    eventually("the snapshot to be applied", || {
        state.applied_version() == Some(1)
    })
    .await;
}

#[test]
fn backoff_doubles_to_its_cap_with_full_jitter() {
    let mut backoff = Backoff::default();
    let mut caps = Vec::new();
    for _ in 0..10 {
        caps.push(backoff.cap);
        assert!(backoff.next_delay() <= *caps.last().unwrap());
    }
    let millis: Vec<u128> = caps.iter().map(Duration::as_millis).collect();
    assert_eq!(
        millis,
        [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
    );
    backoff.reset();
    assert_eq!(backoff.cap, BACKOFF_INITIAL);
    backoff.exhaust();
    assert_eq!(backoff.cap, BACKOFF_MAX);
}

#[test]
fn long_nack_messages_are_cut_at_a_char_boundary() {
    let text = "é".repeat(10);
    let cut = truncate(text, 5);
    assert_eq!(cut, "éé…");
    assert_eq!(truncate("short".into(), 10), "short");
}
