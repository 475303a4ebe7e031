//! Spans through a real proxy listener, in process, recorded by an exporter of the test's own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId, TracerProvider as _};
use opentelemetry::{Key, Value as AttributeValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::proxy::{Proxy, serve_with};
use crate::runtime::Runtime;
use crate::state::State;
use crate::telemetry::parse_traceparent;
use crate::test_support::{FakeUpstream, snapshot};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// Every span ended, as the SDK hands them to an exporter.
#[derive(Clone, Debug, Default)]
struct Recorder(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Recorder {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

struct Traced {
    addr: SocketAddr,
    spans: Recorder,
    _provider: SdkTracerProvider,
}

impl Traced {
    /// A proxy serving `resources`, tracing with root sampling ratio `ratio`; each span is
    /// exported as it ends.
    async fn start(ratio: f64, resources: &[(&str, &str, Value)]) -> Traced {
        let spans = Recorder::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .build();
        let state = State::new();
        state.install(Runtime::compile(&snapshot(7, resources), None).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Proxy::new(state).traced(provider.tracer("test"));
        tokio::spawn(serve_with(listener, proxy, std::future::pending()));
        Traced {
            addr,
            spans,
            _provider: provider,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> StatusCode {
        let mut request = Request::get(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let response = client
            .request(request.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        response.into_body().collect().await.unwrap();
        status
    }

    fn spans(&self) -> Vec<SpanData> {
        self.spans.0.lock().unwrap().clone()
    }

    /// Waits until `count` spans have ended (the server span ends once its answer is made,
    /// which the client may see first).
    async fn ended(&self, count: usize) -> Vec<SpanData> {
        for _ in 0..200 {
            let spans = self.spans();
            if spans.len() >= count {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{count} spans expected, got {:#?}", self.spans());
    }
}

fn attributes(span: &SpanData) -> HashMap<String, AttributeValue> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.to_string(), kv.value.clone()))
        .collect()
}

fn attribute(span: &SpanData, key: &str) -> Option<AttributeValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == Key::new(key.to_owned()))
        .map(|kv| kv.value.clone())
}

fn text(value: &str) -> Option<AttributeValue> {
    Some(AttributeValue::from(value.to_owned()))
}

fn upstream(addrs: &[SocketAddr], extra: Value) -> Value {
    let nodes: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"host": a.ip().to_string(), "port": a.port()}))
        .collect();
    let mut upstream = json!({ "nodes": nodes });
    if let (Some(object), Some(extra)) = (upstream.as_object_mut(), extra.as_object()) {
        object.extend(extra.clone());
    }
    upstream
}

/// An address nothing listens on.
async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn a_sampled_client_trace_is_continued_through_the_server_span_to_the_node() {
    let node = FakeUpstream::start(Duration::ZERO).await;
    let proxy = Traced::start(
        0.0,
        &[
            ("upstreams", "app", upstream(&[node.addr], json!({}))),
            (
                "routes",
                "orders",
                json!({"paths": ["/orders/:id", "/legacy/orders"], "upstream_id": "app"}),
            ),
        ],
    )
    .await;
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let status = proxy
        .get(
            "/orders/7?x=1",
            &[("traceparent", &traceparent), ("tracestate", "vendor=abc")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let spans = proxy.ended(2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Client)
        .unwrap();
    let server = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .unwrap();

    // Sampling ratio 0, yet the client's sampled parent is honoured.
    let trace_id = TraceId::from_hex(TRACE).unwrap();
    assert_eq!(server.span_context.trace_id(), trace_id);
    assert_eq!(
        server.parent_span_id,
        SpanId::from_hex(CLIENT_SPAN).unwrap()
    );
    assert!(server.parent_span_is_remote);
    assert_eq!(server.name, "GET /orders/:id");
    let server_attributes = attributes(server);
    assert_eq!(attribute(server, "http.request.method"), text("GET"));
    assert_eq!(attribute(server, "url.path"), text("/orders/7"));
    assert_eq!(attribute(server, "url.scheme"), text("http"));
    assert_eq!(attribute(server, "http.route"), text("/orders/:id"));
    assert_eq!(attribute(server, "gateway.route.id"), text("orders"));
    assert_eq!(
        attribute(server, "gateway.config.version"),
        Some(AttributeValue::I64(7))
    );
    assert_eq!(
        attribute(server, "http.response.status_code"),
        Some(AttributeValue::I64(200))
    );
    assert_eq!(attribute(server, "server.address"), text("127.0.0.1"));
    assert_eq!(
        attribute(server, "server.port"),
        Some(AttributeValue::I64(i64::from(proxy.addr.port())))
    );
    assert_eq!(attribute(server, "client.address"), text("127.0.0.1"));
    assert_eq!(server.status, Status::Unset, "{server_attributes:?}");

    assert_eq!(client.span_context.trace_id(), trace_id);
    assert_eq!(client.parent_span_id, server.span_context.span_id());
    assert!(!client.parent_span_is_remote);
    assert_eq!(client.name, "GET");
    assert_eq!(attribute(client, "http.request.method"), text("GET"));
    assert_eq!(attribute(client, "server.address"), text("127.0.0.1"));
    assert_eq!(
        attribute(client, "server.port"),
        Some(AttributeValue::I64(i64::from(node.addr.port())))
    );
    assert_eq!(
        attribute(client, "http.response.status_code"),
        Some(AttributeValue::I64(200))
    );
    assert_eq!(attribute(client, "http.request.resend_count"), None);

    // The node's parent is the client span; the client's trace state goes on as it was.
    let received = node.requests();
    let sent = received[0].headers.get("traceparent").unwrap();
    let parsed = parse_traceparent(sent.as_bytes()).unwrap();
    assert_eq!(parsed.trace_id, trace_id);
    assert_eq!(parsed.parent_id, client.span_context.span_id());
    assert!(parsed.flags.is_sampled());
    assert_eq!(received[0].headers.get_all("traceparent").iter().count(), 1);
    assert_eq!(received[0].headers["tracestate"], "vendor=abc");
}

#[tokio::test]
async fn an_unsampled_client_trace_passes_through_without_spans() {
    let node = FakeUpstream::start(Duration::ZERO).await;
    let proxy = Traced::start(
        1.0,
        &[
            ("upstreams", "app", upstream(&[node.addr], json!({}))),
            (
                "routes",
                "r",
                json!({"paths": ["/*"], "upstream_id": "app"}),
            ),
        ],
    )
    .await;
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-00");
    assert_eq!(
        proxy.get("/a", &[("traceparent", &traceparent)]).await,
        StatusCode::OK
    );
    assert_eq!(
        node.requests()[0].headers["traceparent"],
        traceparent.as_str()
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(proxy.spans().is_empty(), "{:#?}", proxy.spans());
}

#[tokio::test]
async fn an_unsampled_root_names_its_trace_to_the_node_without_spans() {
    let node = FakeUpstream::start(Duration::ZERO).await;
    let proxy = Traced::start(
        0.0,
        &[
            ("upstreams", "app", upstream(&[node.addr], json!({}))),
            (
                "routes",
                "r",
                json!({"paths": ["/*"], "upstream_id": "app"}),
            ),
        ],
    )
    .await;
    // A malformed header counts as none.
    assert_eq!(
        proxy.get("/a", &[("traceparent", "00-garbage")]).await,
        StatusCode::OK
    );
    let sent = node.requests()[0].headers["traceparent"].clone();
    let parsed = parse_traceparent(sent.as_bytes()).expect("a valid traceparent");
    assert!(!parsed.flags.is_sampled());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(proxy.spans().is_empty(), "{:#?}", proxy.spans());
}

#[tokio::test]
async fn each_attempt_has_its_own_client_span_and_a_failure_marks_the_server_span() {
    let node = FakeUpstream::start(Duration::ZERO).await;
    let dead = dead_address().await;
    let proxy = Traced::start(
        1.0,
        &[
            (
                "upstreams",
                "flaky",
                upstream(
                    &[dead, node.addr],
                    json!({"retries": {"count": 1, "on": ["connect_error"]}}),
                ),
            ),
            ("upstreams", "gone", upstream(&[dead], json!({}))),
            (
                "routes",
                "r",
                json!({"paths": ["/flaky"], "upstream_id": "flaky"}),
            ),
            (
                "routes",
                "g",
                json!({"paths": ["/gone"], "upstream_id": "gone"}),
            ),
        ],
    )
    .await;
    // Round robin over two nodes: one of two requests tries the dead node first.
    for _ in 0..2 {
        assert_eq!(proxy.get("/flaky", &[]).await, StatusCode::OK);
    }
    let spans = proxy.ended(5).await;
    let servers: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Server)
        .collect();
    assert_eq!(servers.len(), 2);
    let retried = servers
        .iter()
        .find(|server| {
            spans
                .iter()
                .filter(|s| s.parent_span_id == server.span_context.span_id())
                .count()
                == 2
        })
        .expect("a request with two attempts");
    let attempts: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.parent_span_id == retried.span_context.span_id())
        .collect();
    let (first, second) = (attempts[0], attempts[1]);
    assert_eq!(attribute(first, "error.type"), text("connection_failed"));
    assert!(matches!(first.status, Status::Error { .. }));
    assert_eq!(
        attribute(first, "server.port"),
        Some(AttributeValue::I64(i64::from(dead.port())))
    );
    assert_eq!(
        attribute(second, "http.request.resend_count"),
        Some(AttributeValue::I64(1))
    );
    assert_eq!(
        attribute(second, "http.response.status_code"),
        Some(AttributeValue::I64(200))
    );
    assert_eq!(retried.status, Status::Unset);

    assert_eq!(proxy.get("/gone", &[]).await, StatusCode::BAD_GATEWAY);
    let spans = proxy.ended(7).await;
    let server = spans
        .iter()
        .find(|s| attribute(s, "gateway.route.id") == text("g"))
        .unwrap();
    assert!(matches!(server.status, Status::Error { .. }));
    assert_eq!(attribute(server, "error.type"), text("502"));
    assert_eq!(
        attribute(server, "http.response.status_code"),
        Some(AttributeValue::I64(502))
    );
}

#[tokio::test]
async fn a_batch_has_one_client_span_per_sub_request() {
    let node = FakeUpstream::start(Duration::ZERO).await;
    let proxy = Traced::start(
        1.0,
        &[
            ("upstreams", "app", upstream(&[node.addr], json!({}))),
            (
                "routes",
                "both",
                json!({"paths": ["/both"], "batch": {"merge": "object", "requests": [
                    {"name": "one", "upstream_id": "app", "path": "/one"},
                    {"name": "two", "upstream_id": "app", "path": "/two"}
                ]}}),
            ),
        ],
    )
    .await;
    assert_eq!(proxy.get("/both", &[]).await, StatusCode::OK);
    let spans = proxy.ended(3).await;
    let server = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .unwrap();
    let mut keys: Vec<String> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .inspect(|s| assert_eq!(s.parent_span_id, server.span_context.span_id()))
        .filter_map(|s| attribute(s, "gateway.batch.key").map(|v| v.to_string()))
        .collect();
    keys.sort();
    assert_eq!(keys, ["one", "two"]);
    // Each node request names its own client span as the parent.
    let parents: Vec<SpanId> = node
        .requests()
        .iter()
        .map(|r| {
            parse_traceparent(r.headers["traceparent"].as_bytes())
                .unwrap()
                .parent_id
        })
        .collect();
    for client in spans.iter().filter(|s| s.span_kind == SpanKind::Client) {
        assert!(parents.contains(&client.span_context.span_id()));
    }
}

#[test]
fn client_addresses_read_as_the_standard_library_writes_them() {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut rng = fastrand::Rng::with_seed(26);
    let mut addresses: Vec<IpAddr> = vec![
        Ipv4Addr::new(0, 0, 0, 0).into(),
        Ipv4Addr::new(255, 255, 255, 255).into(),
        Ipv4Addr::new(10, 9, 100, 199).into(),
        Ipv6Addr::LOCALHOST.into(),
        "2001:db8::1".parse().unwrap(),
    ];
    addresses.extend((0..1000).map(|_| IpAddr::from(Ipv4Addr::from(rng.u32(..)))));
    for address in addresses {
        assert_eq!(super::ip_text(address), address.to_string());
    }
    // An IPv4-mapped IPv6 client is shown as IPv4.
    let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
    assert_eq!(super::ip_text(mapped), "192.0.2.7");
}
