//! The plugins of issue 3 beyond authentication and limit-count, each through a real data
//! plane in process: a proxy listener on 127.0.0.1:0 in front of fake upstreams, one allow path
//! and one refuse path per plugin.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    CONTENT_LENGTH, VARY,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::runtime::Runtime;
use crate::state::State;
use crate::test_support::{FakeUpstream, snapshot};

type TestBody = BoxBody<Bytes, Infallible>;

struct Dp {
    addr: SocketAddr,
    state: Arc<State>,
    client: Client<HttpConnector, TestBody>,
}

impl Dp {
    async fn start(resources: &[(&str, &str, Value)]) -> Dp {
        let state = State::new();
        state.install(Runtime::compile(&snapshot(1, resources), None).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::proxy::serve(
            listener,
            Arc::clone(&state),
            std::future::pending(),
        ));
        Dp {
            addr,
            state,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Pushes a new config, compiled against the one being served (as the config stream does).
    fn push(&self, version: u64, resources: &[(&str, &str, Value)]) {
        let previous = self.state.runtime();
        let runtime = Runtime::compile(&snapshot(version, resources), Some(&previous)).unwrap();
        self.state.install(runtime);
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .client
            .request(request.body(Empty::new().boxed()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        self.send(Method::GET, path, &[]).await
    }

    async fn metrics(&self) -> String {
        let request = Request::builder().uri("/metrics").body(()).unwrap();
        let response = crate::status::respond(&self.state, &request);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }
}

fn upstream(addr: SocketAddr) -> Value {
    json!({"nodes": [{"host": addr.ip().to_string(), "port": addr.port()}]})
}

fn error_code(body: &Bytes) -> String {
    let body: Value = serde_json::from_slice(body).unwrap();
    body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// An upstream that answers the status in its `status` query argument (200 without one) with
/// the body `tag`, and counts its requests.
struct StatusUpstream {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
}

impl StatusUpstream {
    async fn start(tag: &'static str) -> StatusUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                let service = service_fn(move |request: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let status = request
                        .uri()
                        .query()
                        .and_then(|q| q.strip_prefix("status="))
                        .and_then(|s| s.parse::<u16>().ok())
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .unwrap_or(StatusCode::OK);
                    let mut response = Response::new(Full::new(Bytes::from(tag)));
                    *response.status_mut() = status;
                    async move { Ok::<_, Infallible>(response) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StatusUpstream { addr, hits }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn request_id_is_generated_or_passed_through_and_echoed() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let dp = Dp::start(&[
        (
            "routes",
            "r",
            json!({"paths": ["/r"], "upstream": upstream(fake.addr), "plugins": {"request-id": {}}}),
        ),
        (
            "routes",
            "auth",
            json!({"paths": ["/auth"], "upstream": upstream(fake.addr),
                   "plugins": {"request-id": {"header_name": "X-Trace"}, "key-auth": {}}}),
        ),
    ])
    .await;

    let (status, headers, _) = dp.get("/r").await;
    assert_eq!(status, StatusCode::OK);
    let id = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(fake.requests()[0].headers["x-request-id"], id.as_str());

    let (_, headers, _) = dp
        .send(Method::GET, "/r", &[("x-request-id", "abc-123")])
        .await;
    assert_eq!(headers["x-request-id"], "abc-123");
    assert_eq!(fake.requests()[1].headers["x-request-id"], "abc-123");

    // An unusable incoming id is replaced; a refusal still carries the id.
    let (status, headers, _) = dp.send(Method::GET, "/auth", &[("x-trace", "a b")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_ne!(headers["x-trace"], "a b");
    assert_eq!(headers["x-trace"].len(), 36);
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn cors_answers_preflights_and_decorates_answers() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let dp = Dp::start(&[
        (
            "routes",
            "api",
            json!({"paths": ["/api"], "methods": ["GET", "PUT"], "upstream": upstream(fake.addr),
                   "plugins": {"cors": {
                       "allow_origins": "https://app.example",
                       "allow_methods": "GET,PUT",
                       "allow_headers": ["x-token", "content-type"],
                       "expose_headers": "x-total",
                       "max_age": 600,
                       "allow_credential": true}}}),
        ),
        (
            "routes",
            "plain",
            json!({"paths": ["/plain"], "methods": ["GET"], "upstream": upstream(fake.addr)}),
        ),
    ])
    .await;
    let preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "PUT"),
        ("access-control-request-headers", "x-token"),
    ];

    // The route lists no OPTIONS: the preflight reaches it anyway and is answered here.
    let (status, headers, body) = dp.send(Method::OPTIONS, "/api", &preflight).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
    assert_eq!(headers[ACCESS_CONTROL_ALLOW_METHODS], "GET,PUT");
    assert_eq!(
        headers[ACCESS_CONTROL_ALLOW_HEADERS],
        "x-token,content-type"
    );
    assert_eq!(headers[ACCESS_CONTROL_MAX_AGE], "600");
    assert_eq!(headers[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert_eq!(headers[VARY], "Origin");
    assert!(fake.requests().is_empty(), "a preflight is never proxied");

    let (status, headers, _) = dp
        .send(Method::GET, "/api", &[("origin", "https://app.example")])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example");
    assert_eq!(headers[ACCESS_CONTROL_EXPOSE_HEADERS], "x-total");
    assert_eq!(fake.requests().len(), 1);

    // Refused: another origin gets no CORS headers (the browser blocks the answer) …
    let (_, headers, _) = dp
        .send(Method::GET, "/api", &[("origin", "https://evil.example")])
        .await;
    assert!(!headers.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
    let (status, headers, _) = dp
        .send(
            Method::OPTIONS,
            "/api",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
    // … and a route without cors keeps its 405 for a preflight.
    let (status, _, _) = dp.send(Method::OPTIONS, "/plain", &preflight).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn ip_restriction_allows_listed_clients_and_refuses_others() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let dp = Dp::start(&[
        (
            "routes",
            "in",
            json!({"paths": ["/in"], "upstream": upstream(fake.addr),
                   "plugins": {"ip-restriction": {"whitelist": ["127.0.0.0/8", "::1"]}}}),
        ),
        (
            "routes",
            "out",
            json!({"paths": ["/out"], "upstream": upstream(fake.addr),
                   "plugins": {"ip-restriction": {"whitelist": ["10.0.0.0/8", "fd00::/8"]}}}),
        ),
        (
            "routes",
            "deny",
            json!({"paths": ["/deny"], "upstream": upstream(fake.addr),
                   "plugins": {"ip-restriction": {"blacklist": ["127.0.0.1"], "message": "go away", "rejected_code": 401}}}),
        ),
    ])
    .await;
    assert_eq!(dp.get("/in").await.0, StatusCode::OK);
    let (status, _, body) = dp.get("/out").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), "ip_forbidden");
    let (status, _, body) = dp.get("/deny").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["message"], "go away");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn limit_req_lets_the_burst_through_refuses_beyond_and_survives_a_push() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    // One request per 100 s: nothing drains during the test, whatever the machine's speed.
    let resources = |path: &str| {
        vec![(
            "routes",
            "r",
            json!({"paths": [path], "upstream": upstream(fake.addr),
                   "plugins": {"limit-req": {"rate": 0.01, "burst": 1, "key": "remote_addr", "nodelay": true}}}),
        )]
    };
    let dp = Dp::start(&resources("/a")).await;
    assert_eq!(dp.get("/a").await.0, StatusCode::OK);
    assert_eq!(dp.get("/a").await.0, StatusCode::OK, "within the burst");
    let (status, _, body) = dp.get("/a").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(&body), "rate_limited");
    // Another path, same plugin config on the same route: the bucket carries over.
    dp.push(2, &resources("/b"));
    assert_eq!(dp.get("/b").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(fake.requests().len(), 2);

    // Without nodelay, a request within the burst is delayed, then served (the delay itself
    // is checked in the unit test, not timed here).
    dp.push(
        3,
        &[(
            "routes",
            "d",
            json!({"paths": ["/d"], "upstream": upstream(fake.addr),
                   "plugins": {"limit-req": {"rate": 50, "burst": 1, "key": "route", "rejected_code": 429}}}),
        )],
    );
    assert_eq!(dp.get("/d").await.0, StatusCode::OK);
    assert_eq!(dp.get("/d").await.0, StatusCode::OK);
}

#[tokio::test]
async fn proxy_rewrite_changes_uri_host_method_and_headers() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let dp = Dp::start(&[(
        "routes",
        "r",
        json!({"paths": ["/api/*"], "upstream": upstream(fake.addr),
               "plugins": {"proxy-rewrite": {
                   "regex_uri": ["^/api/(v\\d)/(.*)", "/$2?version=$1"],
                   "host": "internal.svc",
                   "method": "POST",
                   "headers": {"set": {"x-env": "prod"}, "add": {"x-tag": "gw"}, "remove": ["x-secret"]}}}}),
    )])
    .await;
    let (status, _, _) = dp
        .send(
            Method::GET,
            "/api/v2/users?page=3",
            &[("x-secret", "s"), ("x-env", "dev"), ("x-tag", "client")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // A path the pattern does not match is sent unchanged.
    assert_eq!(dp.get("/api/other").await.0, StatusCode::OK);
    let received = fake.requests();
    assert_eq!(received[0].uri, "/users?version=v2&page=3");
    assert_eq!(received[0].method, Method::POST);
    assert_eq!(received[0].headers["host"], "internal.svc");
    assert_eq!(received[0].headers["x-env"], "prod");
    let tags: Vec<_> = received[0].headers.get_all("x-tag").iter().collect();
    assert_eq!(tags, ["client", "gw"]);
    assert!(!received[0].headers.contains_key("x-secret"));
    assert_eq!(received[1].uri, "/api/other");
}

#[tokio::test]
async fn response_rewrite_replaces_status_headers_and_body_even_of_refusals() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let rewrite = json!({"status_code": 202, "body": "{\"ok\":true}",
                         "headers": {"set": {"content-type": "application/json"}, "remove": ["x-upstream"]}});
    let dp = Dp::start(&[
        (
            "routes",
            "r",
            json!({"paths": ["/r"], "upstream": upstream(fake.addr),
                   "plugins": {"response-rewrite": rewrite}}),
        ),
        (
            "routes",
            "refused",
            json!({"paths": ["/refused"], "upstream": upstream(fake.addr),
                   "plugins": {"ip-restriction": {"blacklist": ["0.0.0.0/0", "::/0"]},
                               "response-rewrite": {"headers": {"add": {"x-rewritten": "1"}}}}}),
        ),
        (
            "routes",
            "counted",
            json!({"paths": ["/counted"], "upstream": upstream(fake.addr),
                   "plugins": {"limit-count": {"count": 5, "time_window": 60,
                                               "key": "remote_addr", "rejected_code": 429},
                               "request-id": {},
                               "response-rewrite": {"headers": {
                                   "remove": ["x-ratelimit-remaining"],
                                   "set": {"x-request-id": "fixed"}}}}}),
        ),
    ])
    .await;
    let (status, headers, body) = dp.send(Method::GET, "/r", &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body, "{\"ok\":true}");
    assert_eq!(headers[CONTENT_LENGTH], "11");
    assert_eq!(headers["content-type"], "application/json");
    assert!(!headers.contains_key("x-upstream"));
    assert_eq!(fake.requests().len(), 1);

    let (status, headers, body) = dp.get("/refused").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), "ip_forbidden");
    assert_eq!(headers["x-rewritten"], "1");
    assert_eq!(fake.requests().len(), 1);

    // Headers other plugins add to the answer are the rewrite's to change too.
    let (status, headers, _) = dp.get("/counted").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !headers.contains_key("x-ratelimit-remaining"),
        "{headers:?}"
    );
    assert_eq!(headers["x-ratelimit-limit"], "5");
    assert_eq!(headers["x-request-id"], "fixed");
}

#[tokio::test]
async fn traffic_split_by_weight_and_by_match() {
    let stable = StatusUpstream::start("stable").await;
    let canary = StatusUpstream::start("canary").await;
    let dp = Dp::start(&[
        ("upstreams", "stable", upstream(stable.addr)),
        ("upstreams", "canary", upstream(canary.addr)),
        (
            "routes",
            "r",
            json!({"paths": ["/r"], "upstream_id": "stable",
            "plugins": {"traffic-split": {"rules": [
                {"match": [{"headers": [{"name": "x-canary", "op": "eq", "value": "1"}]},
                           {"query": [{"name": "canary", "op": "exists"}]}],
                 "weighted_upstreams": [{"upstream_id": "canary"}]},
                {"weighted_upstreams": [{"upstream_id": "canary", "weight": 1}, {"weight": 3}]}
            ]}}}),
        ),
    ])
    .await;
    let mut bodies = Vec::new();
    for _ in 0..8 {
        let (status, _, body) = dp.get("/r").await;
        assert_eq!(status, StatusCode::OK);
        bodies.push(body);
    }
    let to_canary = bodies.iter().filter(|b| *b == "canary").count();
    assert_eq!(to_canary, 2, "1 in 4 by weight: {bodies:?}");
    assert_eq!((stable.hits(), canary.hits()), (6, 2));

    for (path, headers) in [("/r", &[("x-canary", "1")][..]), ("/r?canary", &[][..])] {
        let (_, _, body) = dp.send(Method::GET, path, headers).await;
        assert_eq!(body, "canary", "{path} {headers:?}");
    }
    assert_eq!(canary.hits(), 4);

    // A dangling upstream id is refused when the snapshot is checked.
    let dangling = crate::test_support::wire(
        "2",
        "n",
        &[(
            "routes",
            "r",
            json!({"paths": ["/r"], "upstream": upstream(stable.addr),
                   "plugins": {"traffic-split": {"rules": [{"weighted_upstreams": [{"upstream_id": "gone"}]}]}}}),
        )],
    );
    assert!(gateway_proto::Snapshot::from_wire(&dangling).is_err());
}

#[tokio::test]
async fn api_breaker_opens_after_consecutive_failures() {
    let flaky = StatusUpstream::start("flaky").await;
    let dp = Dp::start(&[(
        "routes",
        "r",
        json!({"paths": ["/r"], "upstream": upstream(flaky.addr),
               "plugins": {"api-breaker": {"break_response_code": 502,
                   "unhealthy": {"http_statuses": [500, 503], "failures": 2}}}}),
    )])
    .await;
    // Healthy answers and an unhealthy one that is not followed by another: still closed.
    assert_eq!(
        dp.get("/r?status=500").await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(dp.get("/r").await.0, StatusCode::OK);
    assert_eq!(dp.get("/r?status=404").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        dp.get("/r?status=503").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(flaky.hits(), 4);
    // The second consecutive failure opens it: the upstream is no longer called.
    // (A healthy status does not reset the count while the circuit has never opened, as in
    // APISIX; the two failures above are 500 and 503.)
    let (status, _, body) = dp.get("/r").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(error_code(&body), "circuit_open");
    assert_eq!(flaky.hits(), 4);
}

#[tokio::test]
async fn a_clients_connection_header_cannot_strip_what_plugins_add() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let dp = Dp::start(&[(
        "routes",
        "r",
        json!({"paths": ["/r"], "upstream": upstream(fake.addr),
               "plugins": {"request-id": {},
                           "proxy-rewrite": {"headers": {"set": {"x-env": "prod"}}}}}),
    )])
    .await;
    let (status, _, _) = dp
        .send(
            Method::GET,
            "/r",
            &[
                ("connection", "x-env, x-request-id, x-drop"),
                ("x-drop", "1"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let received = fake.requests().pop().unwrap();
    assert_eq!(received.headers["x-env"], "prod");
    assert!(received.headers.contains_key("x-request-id"));
    assert!(
        !received.headers.contains_key("x-drop"),
        "listed by the client: its hop's"
    );
    assert!(!received.headers.contains_key("connection"));
}

#[tokio::test]
async fn api_breaker_ignores_the_gateways_own_refusals() {
    let node = StatusUpstream::start("ok").await;
    let dp = Dp::start(&[(
        "routes",
        "r",
        json!({"paths": ["/r"], "upstream": upstream(node.addr),
               "plugins": {
                   "api-breaker": {"break_response_code": 502,
                       "unhealthy": {"http_statuses": [503], "failures": 2}},
                   "limit-count": {"count": 1, "time_window": 60, "key": "remote_addr",
                                   "rejected_code": 503}}}),
    )])
    .await;
    assert_eq!(dp.get("/r").await.0, StatusCode::OK);
    // limit-count's refusals are 503s like the ones the breaker counts: were they counted,
    // the third would be the breaker's 502.
    for _ in 0..4 {
        let (status, _, body) = dp.get("/r").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(&body), "rate_limited");
    }
    assert_eq!(node.hits(), 1);
}

#[tokio::test]
async fn prometheus_counts_per_route_and_exports_on_metrics() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let dp = Dp::start(&[
        (
            "routes",
            "counted",
            json!({"paths": ["/counted"], "upstream": upstream(fake.addr), "plugins": {"prometheus": {}}}),
        ),
        (
            "routes",
            "named",
            json!({"paths": ["/named"], "upstream": upstream(fake.addr), "labels": {"name": "orders"},
                   "plugins": {"prometheus": {"prefer_name": true}, "ip-restriction": {"blacklist": ["0.0.0.0/0", "::/0"]}}}),
        ),
        (
            "routes",
            "quiet",
            json!({"paths": ["/quiet"], "upstream": upstream(fake.addr)}),
        ),
    ])
    .await;
    for path in ["/counted", "/counted", "/named", "/quiet"] {
        dp.get(path).await;
    }
    let text = dp.metrics().await;
    for line in [
        "gateway_route_requests_total{route=\"counted\",code=\"200\"} 2",
        "gateway_route_requests_total{route=\"named\",route_name=\"orders\",code=\"403\"} 1",
        "gateway_route_latency_seconds_count{route=\"counted\"} 2",
        "gateway_route_latency_seconds_bucket{route=\"counted\",le=\"+Inf\"} 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
    assert!(!text.contains("route=\"quiet\""), "{text}");
    // A config push keeps the counters.
    dp.push(
        2,
        &[(
            "routes",
            "counted",
            json!({"paths": ["/counted", "/again"], "upstream": upstream(fake.addr), "plugins": {"prometheus": {}}}),
        )],
    );
    dp.get("/again").await;
    let text = dp.metrics().await;
    assert!(
        text.lines()
            .any(|l| l == "gateway_route_requests_total{route=\"counted\",code=\"200\"} 3"),
        "{text}"
    );
}

#[tokio::test]
async fn spelling_a_path_differently_does_not_get_past_a_routes_auth() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let dp = Dp::start(&[
        (
            "routes",
            "admin",
            json!({"paths": ["/admin/*"], "upstream": upstream(fake.addr),
                   "plugins": {"key-auth": {}}}),
        ),
        (
            "routes",
            "public",
            json!({"paths": ["/*"], "upstream": upstream(fake.addr)}),
        ),
    ])
    .await;

    for spelling in [
        "/public/../admin/users",
        "/static/%2e%2e/admin/users",
        "/%61dmin/users",
        "//admin/users",
        "/admin/./users",
    ] {
        let (status, _, body) = dp.get(spelling).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{spelling}: {body:?}");
    }
    assert!(fake.requests().is_empty(), "nothing reached the node");

    // The node gets the path the router matched; an encoded slash stays inside its segment.
    for (sent, forwarded) in [
        ("/public/./x//y?q=%2e", "/public/x/y?q=%2e"),
        ("/a%2Fb/%7Euser", "/a%2Fb/~user"),
    ] {
        let (status, _, _) = dp.get(sent).await;
        assert_eq!(status, StatusCode::OK, "{sent}");
        let received = fake.requests().pop().unwrap();
        assert_eq!(received.uri.to_string(), forwarded);
    }
}

#[tokio::test]
async fn a_consumers_plugins_run_whatever_their_priority() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let dp = Dp::start(&[
        (
            "routes",
            "r",
            json!({"paths": ["/r"], "upstream": upstream(fake.addr),
                   "plugins": {"key-auth": {}}}),
        ),
        (
            "consumers",
            "blocked",
            // ip-restriction ranks above key-auth: its access hook would be skipped.
            json!({"credentials": {"key-auth": {"key": "blocked-key-1"}},
                   "plugins": {"ip-restriction": {"blacklist": ["127.0.0.0/8", "::1/128"]}}}),
        ),
        (
            "consumers",
            "rewritten",
            // proxy-rewrite works in the rewrite phase, over before key-auth identifies anyone.
            json!({"credentials": {"key-auth": {"key": "rewritten-key-1"}},
                   "plugins": {"proxy-rewrite": {"headers": {"set": {"x-tier": "gold"}}}}}),
        ),
    ])
    .await;
    let (status, _, body) = dp
        .send(Method::GET, "/r", &[("apikey", "blocked-key-1")])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body:?}");
    assert!(fake.requests().is_empty());

    let (status, _, _) = dp
        .send(Method::GET, "/r", &[("apikey", "rewritten-key-1")])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fake.requests()[0].headers["x-tier"], "gold");
}

/// Bounds the exchanges of the batch-requests tests: a regression fails instead of hanging.
const BATCH_WAIT: Duration = Duration::from_secs(10);

/// POSTs `batch` to `path` with `headers`: the status and the JSON body.
async fn post_batch(
    dp: &Dp,
    path: &str,
    headers: &[(&str, &str)],
    batch: &Value,
) -> (StatusCode, Value) {
    let mut request = Request::post(format!("http://{}{path}", dp.addr))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = Full::new(Bytes::from(batch.to_string())).boxed();
    let response = tokio::time::timeout(BATCH_WAIT, dp.client.request(request.body(body).unwrap()))
        .await
        .expect("an answer in time")
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn batch_requests_items_go_to_the_host_an_http2_client_named_in_its_authority() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let dp = Dp::start(&[
        (
            "routes",
            "hosted",
            json!({"paths": ["/hosted"], "hosts": ["api.example"], "upstream": upstream(fake.addr)}),
        ),
        (
            "routes",
            "batch",
            json!({"paths": ["/batch"], "methods": ["POST"], "plugins": {"batch-requests": {}}}),
        ),
    ])
    .await;
    // HTTP/2 with prior knowledge: the host travels as `:authority`, with no `Host` header.
    let stream = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let batch = json!({"requests": [{"path": "/hosted"}]});
    let request = Request::post("http://api.example/batch")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(batch.to_string())))
        .unwrap();
    assert!(!request.headers().contains_key("host"));
    let response = tokio::time::timeout(BATCH_WAIT, sender.send_request(request))
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let items: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(items[0]["status"], 200, "{items}");
    let received = fake.requests();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].headers["host"], "api.example");
}

/// A data plane with `/open/*` proxied to `fake` and a `batch-requests` endpoint on `/batch`.
async fn open_and_batch(fake: &FakeUpstream) -> Dp {
    Dp::start(&[
        (
            "routes",
            "open",
            json!({"paths": ["/open/*"], "upstream": upstream(fake.addr)}),
        ),
        (
            "routes",
            "batch",
            json!({"paths": ["/batch"], "methods": ["POST"], "plugins": {"batch-requests": {}}}),
        ),
    ])
    .await
}

#[tokio::test]
async fn batch_requests_items_carry_no_hop_by_hop_headers() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let dp = open_and_batch(&fake).await;
    let batch = json!({"requests": [
        {"path": "/open/inherits"},
        {"path": "/open/own", "headers": {
            "connection": "upgrade, x-private",
            "upgrade": "websocket",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "x-private": "1",
            "x-kept": "1"
        }}
    ]});
    let (status, items) = post_batch(&dp, "/batch", &[], &batch).await;
    assert_eq!(status, StatusCode::OK, "{items}");
    assert_eq!(items[0]["status"], 200, "{items}");
    assert_eq!(items[1]["status"], 200, "{items}");
    let received = fake.requests();
    assert_eq!(received.len(), 2);
    for request in &received {
        for name in ["upgrade", "keep-alive", "te", "x-private"] {
            assert!(
                !request.headers.contains_key(name),
                "{name} reached {}: {:?}",
                request.uri,
                request.headers
            );
        }
        // An item's `Connection: upgrade` is not passed on as a WebSocket handshake.
        assert_ne!(
            request.headers.get("connection").map(|v| v.as_bytes()),
            Some(&b"upgrade"[..]),
            "{:?}",
            request.headers
        );
    }
    let own = received.iter().find(|r| r.uri == "/open/own").unwrap();
    assert_eq!(own.headers["x-kept"], "1");
}

#[tokio::test]
async fn batch_requests_items_never_ask_for_a_compressed_answer() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let dp = open_and_batch(&fake).await;
    // The client's `Accept-Encoding`, and one an item sets itself.
    let batch = json!({"requests": [
        {"path": "/open/inherits"},
        {"path": "/open/own", "headers": {"accept-encoding": "gzip"}}
    ]});
    let (status, items) = post_batch(&dp, "/batch", &[("accept-encoding", "gzip")], &batch).await;
    assert_eq!(status, StatusCode::OK, "{items}");
    let received = fake.requests();
    assert_eq!(received.len(), 2);
    for request in &received {
        assert!(
            !request.headers.contains_key("accept-encoding"),
            "{}: {:?}",
            request.uri,
            request.headers
        );
    }
}

#[tokio::test]
async fn batch_requests_waits_for_the_batch_body_no_longer_than_its_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dp = Dp::start(&[(
        "routes",
        "batch",
        json!({"paths": ["/batch"], "methods": ["POST"], "plugins": {"batch-requests": {"timeout_ms": 300}}}),
    )])
    .await;
    let mut stream = tokio::net::TcpStream::connect(dp.addr).await.unwrap();
    // A head announcing 100 bytes, a few of them, then silence.
    stream
        .write_all(
            b"POST /batch HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"requests\"",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BATCH_WAIT, read)
        .await
        .expect("an answer before the client gives up");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}
