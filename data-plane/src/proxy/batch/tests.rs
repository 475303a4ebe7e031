//! Compiling batches: what the request path gets, and what a hand-built snapshot cannot sneak
//! past the compiler.

use serde_json::json;

use http::Method;

use crate::runtime::router::{RequestView, RouteMatch};
use crate::runtime::{CompileError, RouteTarget, Runtime};
use crate::test_support::snapshot;

fn upstream() -> serde_json::Value {
    json!({"nodes": [{"host": "127.0.0.1", "port": 1}]})
}

#[test]
fn a_batch_route_compiles_in_dependency_order_on_shared_upstreams() {
    let snap = snapshot(
        3,
        &[
            ("upstreams", "api", upstream()),
            (
                "routes",
                "r",
                json!({"paths": ["/p/:id"], "batch": {"merge": "array", "requests": [
                    {"name": "orders", "upstream_id": "api", "path": "/o?u={resp.user./id}"},
                    {"name": "user", "upstream_id": "api", "path": "/u/{param.id}", "headers": {"x-a": "{header.x-b}"}},
                    {"name": "cart", "upstream_id": "api", "path": "/c", "body": {"a": 1}, "method": "POST"}
                ]}}),
            ),
        ],
    );
    let runtime = Runtime::compile(&snap, None).unwrap();
    let RouteMatch::Found { route, .. } =
        runtime
            .router
            .find(&RequestView::new(&Method::GET, "h", "/p/1"))
    else {
        panic!("the route matches")
    };
    let RouteTarget::Batch(batch) = &route.target else {
        panic!("a batch route")
    };
    assert_eq!(batch.order, [1, 0, 2]);
    assert!(!batch.independent);
    assert_eq!(batch.requests[0].deps, [1]);
    assert!(std::sync::Arc::ptr_eq(
        &batch.requests[2].upstream,
        &runtime.upstreams["api"]
    ));
    assert_eq!(batch.requests[2].method, Some(http::Method::POST));
    assert!(route.upstream().is_none());
}

#[test]
fn a_hand_built_cyclic_batch_is_refused() {
    let mut snap = snapshot(1, &[("upstreams", "api", upstream())]);
    let route: gateway_proto::model::Route = serde_json::from_value(json!({
        "paths": ["/"],
        "batch": {"requests": [
            {"name": "a", "upstream_id": "api", "path": "/{resp.b./x}"},
            {"name": "b", "upstream_id": "api", "path": "/{resp.a./x}"}
        ]}
    }))
    .unwrap();
    snap.resources.insert(
        gateway_proto::ResourceKey::new(gateway_proto::Kind::Routes, "r"),
        gateway_proto::snapshot::SnapshotResource {
            revision: 1,
            parsed: gateway_proto::model::Parsed::Route(route),
        },
    );
    assert!(matches!(
        Runtime::compile(&snap, None),
        Err(CompileError::InvalidBatch { .. })
    ));
}

#[test]
fn answers_are_kept_raw_parsed_or_carried_as_strings() {
    use super::merge::Answer;
    use super::parse_body;
    use bytes::Bytes;
    use serde_json::Value;
    let body = |text: &'static [u8]| Bytes::from_static(text);
    // JSON no one reads: its bytes, without the surrounding whitespace.
    assert_eq!(
        parse_body(body(b" {\"a\": 1.50}\r\n"), true),
        Answer::Raw(body(b"{\"a\": 1.50}"))
    );
    // JSON a template reads, or a deep merge: parsed.
    assert_eq!(
        parse_body(body(b"{\"a\": 1}"), false),
        Answer::Value(json!({"a": 1}))
    );
    // Not JSON (trailing bytes, bad UTF-8): a string, either way.
    for keep_raw in [true, false] {
        assert_eq!(
            parse_body(body(b"{\"a\": 1} x"), keep_raw),
            Answer::Value(json!("{\"a\": 1} x"))
        );
        assert_eq!(
            parse_body(body(b"ok \xff"), keep_raw),
            Answer::Value(json!("ok \u{fffd}"))
        );
        assert_eq!(
            parse_body(Bytes::new(), keep_raw),
            Answer::Value(Value::Null)
        );
    }
}

#[test]
fn sub_requests_start_from_the_client_headers_the_hop_does_not_write() {
    use http::{HeaderMap, HeaderValue};
    let mut client = HeaderMap::new();
    for (name, value) in [
        ("host", "shop.example"),
        ("expect", "100-continue"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "spoofed.example"),
        ("x-forwarded-for", "192.0.2.1"),
        ("content-length", "3"),
        ("accept-encoding", "gzip"),
        ("connection", "keep-alive, x-private"),
        ("x-private", "1"),
        ("accept", "application/json"),
        ("cookie", "a=1"),
    ] {
        client.append(name, HeaderValue::from_static(value));
    }
    client.append("cookie", HeaderValue::from_static("b=2"));
    let forwarded = super::forwarded_headers(&client);
    let mut names: Vec<&str> = forwarded.keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    // The chain stays for the hop to extend; repeated headers keep every value.
    assert_eq!(names, ["accept", "cookie", "x-forwarded-for"]);
    assert_eq!(forwarded.get_all("cookie").iter().count(), 2);
    // `Host` alone: nothing to copy per sub-request.
    let mut host_only = HeaderMap::new();
    host_only.insert("host", HeaderValue::from_static("shop.example"));
    assert!(super::forwarded_headers(&host_only).is_empty());
}

#[tokio::test]
async fn an_answer_in_several_chunks_is_read_whole() {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    let chunks = |parts: &[&'static str]| {
        let frames: Vec<Result<_, std::convert::Infallible>> = parts
            .iter()
            .map(|p| Ok(http_body::Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    };
    for parts in [&[][..], &["{\"a\":1}"], &["{\"a\"", ":1", "}"], &["", "{}"]] {
        let whole = super::read_whole(chunks(parts)).await.unwrap();
        assert_eq!(whole, parts.concat().as_bytes());
    }
}

/// A data plane in process: the proxy listener on 127.0.0.1:0 serving `resources`.
mod in_process {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderMap, Request, Response, StatusCode};
    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use crate::runtime::Runtime;
    use crate::state::State;
    use crate::test_support::{FakeUpstream, snapshot};

    /// Bounds every exchange of these tests: a regression fails instead of hanging.
    const WAIT: Duration = Duration::from_secs(10);

    struct Gateway {
        addr: SocketAddr,
        client: Client<HttpConnector, BoxBody<Bytes, Infallible>>,
    }

    impl Gateway {
        async fn start(resources: &[(&str, &str, Value)]) -> Gateway {
            let state = State::new();
            state.install(Runtime::compile(&snapshot(1, resources), None).unwrap());
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(crate::proxy::serve(listener, state, std::future::pending()));
            Gateway {
                addr,
                client: Client::builder(TokioExecutor::new()).build_http(),
            }
        }

        /// GETs `path` with `headers`: the status, `X-Gateway-Batch` and the JSON body.
        async fn get(
            &self,
            path: &str,
            headers: &[(&str, &str)],
        ) -> (StatusCode, Option<String>, Value) {
            let mut request = Request::get(format!("http://{}{path}", self.addr));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let request = request.body(Empty::new().boxed()).unwrap();
            let response = tokio::time::timeout(WAIT, self.client.request(request))
                .await
                .expect("an answer in time")
                .unwrap();
            let status = response.status();
            let batch = response
                .headers()
                .get("x-gateway-batch")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
            (status, batch, body)
        }
    }

    fn upstream(addr: SocketAddr, extra: Value) -> Value {
        let mut upstream = json!({"nodes": [{"host": addr.ip().to_string(), "port": addr.port()}]});
        if let (Some(object), Some(extra)) = (upstream.as_object_mut(), extra.as_object()) {
            object.extend(extra.clone());
        }
        upstream
    }

    #[tokio::test]
    async fn client_values_cannot_leave_a_batch_sub_request_path_segment() {
        let fake = FakeUpstream::start(Duration::ZERO).await;
        let gateway = Gateway::start(&[
            ("upstreams", "api", upstream(fake.addr, json!({}))),
            (
                "routes",
                "r",
                json!({"paths": ["/product"], "batch": {"requests": [
                    {"name": "catalog", "upstream_id": "api", "path": "/myapi/catalog/{arg.id}"}
                ]}}),
            ),
        ])
        .await;
        for (query, sent) in [
            ("id=14286", "/myapi/catalog/14286"),
            (
                "id=../../admin/users",
                "/myapi/catalog/..%2F..%2Fadmin%2Fusers",
            ),
            ("id=x?debug=1", "/myapi/catalog/x%3Fdebug=1"),
        ] {
            let (status, _, body) = gateway.get(&format!("/product?{query}"), &[]).await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
            let received = fake.requests();
            let last = received.last().unwrap();
            assert_eq!(last.uri.path_and_query().unwrap().as_str(), sent, "{query}");
        }
        // A segment that climbs: refused as the client's error, never sent.
        for query in ["id=..", "id=%2E%2e", "id=."] {
            let before = fake.requests().len();
            let (status, batch, body) = gateway.get(&format!("/product?{query}"), &[]).await;
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{query}: {body}");
            assert_eq!(batch.as_deref(), Some("partial"));
            assert_eq!(body["catalog"]["error"]["status"], 400, "{query}: {body}");
            assert_eq!(fake.requests().len(), before, "{query}");
        }
    }

    /// A node that sends a head announcing 100 bytes and 10 of them, then nothing, keeping the
    /// connection open.
    async fn stalling_node() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                        content-length: 100\r\n\r\n{\"partial";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                    // Silence until the gateway gives up and closes.
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_node_stalling_mid_body_fails_its_batch_sub_request_as_a_timeout() {
        let stalling = stalling_node().await;
        let fine = FakeUpstream::start(Duration::ZERO).await;
        let gateway = Gateway::start(&[
            (
                "upstreams",
                "stalling",
                upstream(stalling, json!({"timeouts": {"read_ms": 200}})),
            ),
            ("upstreams", "fine", upstream(fine.addr, json!({}))),
            (
                "routes",
                "r",
                json!({"paths": ["/r"], "batch": {"timeout_ms": 20000, "requests": [
                    {"name": "fine", "upstream_id": "fine", "path": "/fine"},
                    {"name": "stalled", "upstream_id": "stalling", "path": "/stalled"}
                ]}}),
            ),
        ])
        .await;
        let (status, batch, body) = gateway.get("/r", &[]).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
        assert_eq!(batch.as_deref(), Some("partial"));
        assert_eq!(body["fine"], Value::Null, "{body}");
        assert_eq!(body["stalled"]["error"]["status"], 504, "{body}");
    }

    #[tokio::test]
    async fn the_batch_deadline_keeps_what_ended_and_fails_the_rest_in_dependency_order() {
        let stalling = stalling_node().await;
        let fine = FakeUpstream::start(Duration::ZERO).await;
        let requests = |dependent: bool| {
            let mut requests = vec![
                json!({"name": "fine", "upstream_id": "fine", "path": "/fine"}),
                json!({"name": "stalled", "upstream_id": "stalling", "path": "/stalled/{param.id}"}),
            ];
            if dependent {
                requests.push(json!({"name": "after", "upstream_id": "fine", "path": "/after?x={resp.stalled./x}"}));
            }
            json!(requests)
        };
        let route = |path: &str, dependent: bool| json!({"paths": [path], "batch": {"timeout_ms": 300, "merge": "array", "requests": requests(dependent)}});
        let gateway = Gateway::start(&[
            ("upstreams", "stalling", upstream(stalling, json!({}))),
            ("upstreams", "fine", upstream(fine.addr, json!({}))),
            ("routes", "independent", route("/independent/:id", false)),
            ("routes", "dependent", route("/dependent/:id", true)),
        ])
        .await;
        for (path, dependent) in [("/independent/7", false), ("/dependent/7", true)] {
            let (status, batch, body) = gateway.get(path, &[]).await;
            assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{path}: {body}");
            assert_eq!(batch.as_deref(), Some("partial"));
            // Answered before the deadline: kept.
            assert_eq!(body[0]["name"], "fine", "{body}");
            assert_eq!(body[0]["status"], 200, "{body}");
            // In flight: timed out, with the path it was sent to.
            assert_eq!(body[1]["uri"], "/stalled/7", "{body}");
            assert_eq!(body[1]["status"], 504, "{body}");
            assert_eq!(
                body[1]["body"]["error"]["message"], "the batch timed out",
                "{body}"
            );
            // Waiting for it: never sent, so its template stands in for the path.
            if dependent {
                assert_eq!(body[2]["uri"], "/after?x={resp.stalled./x}", "{body}");
                assert_eq!(body[2]["status"], 504, "{body}");
                let message = body[2]["body"]["error"]["message"].as_str().unwrap_or("");
                assert!(message.starts_with("not sent"), "{body}");
            } else {
                assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");
            }
        }
        assert!(
            !fake_paths(&fine).iter().any(|p| p.starts_with("/after")),
            "a sub-request whose input timed out is never sent"
        );
    }

    fn fake_paths(fake: &FakeUpstream) -> Vec<String> {
        fake.requests().iter().map(|r| r.uri.to_string()).collect()
    }

    /// A node that switches protocols whenever a request asks to (as a WebSocket server
    /// would), answers `{"ok": true}` otherwise, and records the headers it received.
    async fn upgrading_node() -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                let service = service_fn(move |request: Request<Incoming>| {
                    log.lock().unwrap().push(request.headers().clone());
                    let response = if request.headers().contains_key("upgrade") {
                        Response::builder()
                            .status(StatusCode::SWITCHING_PROTOCOLS)
                            .header("connection", "upgrade")
                            .header("upgrade", "websocket")
                            .body(Full::new(Bytes::new()))
                    } else {
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(b"{\"ok\": true}")))
                    };
                    async move { Ok::<_, Infallible>(response.unwrap()) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn a_client_asking_a_batch_route_to_upgrade_gets_a_merged_answer() {
        let (node, seen) = upgrading_node().await;
        let gateway = Gateway::start(&[
            ("upstreams", "api", upstream(node, json!({}))),
            (
                "routes",
                "r",
                json!({"paths": ["/both"], "batch": {"requests": [
                    {"name": "a", "upstream_id": "api", "path": "/a"},
                    {"name": "b", "upstream_id": "api", "path": "/b"}
                ]}}),
            ),
        ])
        .await;
        let (status, batch, body) = gateway
            .get(
                "/both",
                &[
                    ("connection", "Upgrade, x-hop"),
                    ("upgrade", "websocket"),
                    ("x-hop", "1"),
                    ("x-kept", "1"),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(batch.as_deref(), Some("complete"));
        assert_eq!(body, json!({"a": {"ok": true}, "b": {"ok": true}}));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        for headers in seen.iter() {
            for hop in ["upgrade", "x-hop"] {
                assert!(!headers.contains_key(hop), "{hop}: {headers:?}");
            }
            assert_ne!(
                headers.get("connection").map(|v| v.as_bytes()),
                Some(&b"upgrade"[..]),
                "{headers:?}"
            );
            assert_eq!(headers["x-kept"], "1");
        }
    }
}
