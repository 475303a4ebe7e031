//! The proxy in process: a real listener on 127.0.0.1:0 in front of fake upstreams.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderMap, Method, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::*;
use crate::runtime::Runtime;
use crate::test_support::{FakeUpstream, eventually, snapshot};

type TestBody = BoxBody<Bytes, Infallible>;

struct Harness {
    addr: SocketAddr,
    state: Arc<State>,
    client: Client<HttpConnector, TestBody>,
}

impl Harness {
    async fn start(resources: &[(&str, &str, Value)]) -> Harness {
        let state = State::new();
        state.install(Runtime::compile(&snapshot(1, resources), None).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::clone(&state), std::future::pending()));
        Harness {
            addr,
            state,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
    }

    async fn send(&self, request: Request<TestBody>) -> (StatusCode, HeaderMap, Bytes) {
        let response = self.client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    async fn get(&self, method: Method, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        self.send(self.request(method, path).body(empty()).unwrap())
            .await
    }
}

fn empty() -> TestBody {
    Empty::new().boxed()
}

fn upstream(addr: SocketAddr, extra: Value) -> Value {
    let mut upstream = json!({"nodes": [{"host": addr.ip().to_string(), "port": addr.port()}]});
    if let (Some(object), Some(extra)) = (upstream.as_object_mut(), extra.as_object()) {
        object.extend(extra.clone());
    }
    upstream
}

fn error_code(body: &Bytes) -> String {
    let body: Value = serde_json::from_slice(body).unwrap();
    body["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn proxies_with_forwarding_headers_and_streams_the_body() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let proxy = Harness::start(&[
        ("upstreams", "echo", upstream(fake.addr, json!({}))),
        (
            "routes",
            "echo",
            json!({"paths": ["/echo/*"], "upstream_id": "echo"}),
        ),
    ])
    .await;

    // The body is a channel: the second chunk is only sent once the upstream has received the
    // first, which can only happen if the proxy streams instead of buffering.
    let (chunks, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let body = StreamBody::new(ReceiverStream::new(rx)).boxed();
    let request = proxy
        .request(Method::POST, "/echo/a%20b?x=1&y")
        .header("host", "svc.example.com")
        .header("x-forwarded-for", "10.1.2.3")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("x-custom", "kept")
        .body(body)
        .unwrap();
    let response = tokio::spawn({
        let proxy_client = proxy.client.clone();
        async move { proxy_client.request(request).await }
    });
    chunks
        .send(Ok(Frame::data(Bytes::from("hello "))))
        .await
        .unwrap();
    eventually("the first chunk to reach the upstream", || {
        fake.requests().first().is_some_and(|r| r.body == b"hello ")
    })
    .await;
    chunks
        .send(Ok(Frame::data(Bytes::from("world"))))
        .await
        .unwrap();
    drop(chunks);

    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["x-upstream"], "fake");
    for hop in ["x-hop-response", "keep-alive", "connection"] {
        assert!(!headers.contains_key(hop), "{hop} leaked to the client");
    }
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello world");

    let received = &fake.requests()[0];
    assert!(received.complete);
    assert_eq!(received.method, Method::POST);
    assert_eq!(received.uri, "/echo/a%20b?x=1&y");
    assert_eq!(received.headers["host"], "svc.example.com");
    assert_eq!(received.headers["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(received.headers["x-forwarded-proto"], "http");
    assert_eq!(received.headers["x-forwarded-host"], "svc.example.com");
    assert_eq!(received.headers["x-custom"], "kept");
    assert!(!received.headers.contains_key("x-hop"));
    assert_eq!(proxy.state.metrics.requests_with(StatusCode::OK), 1);
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let proxy = Harness::start(&[(
        "routes",
        "echo",
        json!({"paths": ["/*"], "upstream": upstream(fake.addr, json!({}))}),
    )])
    .await;
    let h2: Client<HttpConnector, TestBody> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = proxy
        .request(Method::PUT, "/h2")
        .body(Full::new(Bytes::from("over h2")).boxed())
        .unwrap();
    let response = h2.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "over h2");
    let received = &fake.requests()[0];
    assert_eq!(received.uri, "/h2");
    assert_eq!(received.headers["host"], proxy.addr.to_string());
}

#[tokio::test]
async fn pass_host_node_and_rewrite() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let proxy = Harness::start(&[
        (
            "routes",
            "node",
            json!({"paths": ["/node"], "upstream": upstream(fake.addr, json!({"pass_host": "node"}))}),
        ),
        (
            "routes",
            "rewrite",
            json!({"paths": ["/rewrite"], "upstream": upstream(fake.addr, json!({"pass_host": "rewrite", "upstream_host": "internal.svc"}))}),
        ),
    ])
    .await;
    for path in ["/node", "/rewrite"] {
        let request = proxy
            .request(Method::GET, path)
            .header("host", "public.example.com")
            .body(empty())
            .unwrap();
        assert_eq!(proxy.send(request).await.0, StatusCode::OK);
    }
    let received = fake.requests();
    assert_eq!(received[0].headers["host"], fake.addr.to_string());
    assert_eq!(received[1].headers["host"], "internal.svc");
    assert_eq!(
        received[1].headers["x-forwarded-host"],
        "public.example.com"
    );
}

#[tokio::test]
async fn routing_failures_are_json_errors() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let proxy = Harness::start(&[
        ("upstreams", "u", upstream(fake.addr, json!({}))),
        (
            "routes",
            "get",
            json!({"paths": ["/only"], "methods": ["GET", "POST"], "upstream_id": "u"}),
        ),
    ])
    .await;

    let (status, headers, body) = proxy.get(Method::GET, "/missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers[CONTENT_TYPE], "application/json");
    assert_eq!(error_code(&body), "route_not_found");

    let (status, headers, body) = proxy.get(Method::DELETE, "/only").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[ALLOW], "GET, POST");
    assert_eq!(error_code(&body), "method_not_allowed");

    assert!(fake.requests().is_empty());
    assert_eq!(proxy.state.metrics.requests_with(StatusCode::NOT_FOUND), 1);
}

#[tokio::test]
async fn upstream_failures_are_json_errors() {
    // A port that was just free: connecting is refused.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let slow = FakeUpstream::start(Duration::from_secs(30)).await;
    let proxy = Harness::start(&[
        ("routes", "closed", json!({"paths": ["/closed"], "upstream": upstream(closed, json!({}))})),
        (
            "routes",
            "slow",
            json!({"paths": ["/slow"], "upstream": upstream(slow.addr, json!({"timeouts": {"read_ms": 200}}))}),
        ),
        (
            "routes",
            "drained",
            json!({"paths": ["/drained"], "upstream": {"nodes": [{"host": "127.0.0.1", "port": 1, "weight": 0}]}}),
        ),
    ])
    .await;

    let (status, _, body) = proxy.get(Method::GET, "/closed").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(error_code(&body), "upstream_unavailable");

    let (status, _, body) = proxy.get(Method::GET, "/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_code(&body), "upstream_timeout");
    assert_eq!(
        slow.requests().len(),
        1,
        "the slow upstream did get the request"
    );

    let (status, _, body) = proxy.get(Method::GET, "/drained").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&body), "no_upstream_node");
    let message: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(message["error"]["message"], "no available upstream node");
}

#[tokio::test]
async fn weighted_nodes_share_traffic() {
    let heavy = FakeUpstream::start(Duration::ZERO).await;
    let light = FakeUpstream::start(Duration::ZERO).await;
    let nodes = json!([
        {"host": "127.0.0.1", "port": heavy.addr.port(), "weight": 3},
        {"host": "127.0.0.1", "port": light.addr.port(), "weight": 1},
    ]);
    let proxy = Harness::start(&[(
        "routes",
        "r",
        json!({"paths": ["/"], "upstream": {"nodes": nodes}}),
    )])
    .await;
    for _ in 0..8 {
        assert_eq!(proxy.get(Method::GET, "/").await.0, StatusCode::OK);
    }
    assert_eq!((heavy.requests().len(), light.requests().len()), (6, 2));
}

#[tokio::test]
async fn a_swap_applies_to_the_next_request() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let proxy = Harness::start(&[]).await;
    assert_eq!(proxy.get(Method::GET, "/x").await.0, StatusCode::NOT_FOUND);
    let next = snapshot(
        2,
        &[(
            "routes",
            "r",
            json!({"paths": ["/x"], "upstream": upstream(fake.addr, json!({}))}),
        )],
    );
    proxy
        .state
        .install(Runtime::compile(&next, Some(&proxy.state.runtime())).unwrap());
    assert_eq!(proxy.get(Method::GET, "/x").await.0, StatusCode::OK);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let slow = FakeUpstream::start(Duration::from_millis(300)).await;
    let state = State::new();
    let resources = [(
        "routes",
        "r",
        json!({"paths": ["/*"], "upstream": upstream(slow.addr, json!({}))}),
    )];
    state.install(Runtime::compile(&snapshot(1, &resources), None).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));

    let client: Client<HttpConnector, TestBody> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = Request::get(format!("http://{addr}/in-flight"))
        .body(empty())
        .unwrap();
    let in_flight = tokio::spawn(client.request(request));
    eventually("the upstream to receive the request", || {
        slow.requests().first().is_some_and(|r| r.complete)
    })
    .await;

    stop.send(()).unwrap();
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the listener stops once the request is done")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections"
    );
}
