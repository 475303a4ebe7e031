//! Per-request cost of the plugin phases: one request through the rewrite, access,
//! before-upstream, response and log phases of a route's chain, without the network, for no
//! plugin and for each plugin of issue 3 beyond authentication (and all of them together).
//!
//! Each iteration builds the request head (as the proxy receives it), runs the request phases,
//! then the response phases over a small gateway-made answer. The difference to `none` is the
//! plugin's cost.
//!
//! `cargo bench -p gateway-benches --bench plugins -- --warm-up-time 1 --measurement-time 3`

use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use data_plane::plugins::{RequestCtx, RouteRef};
use data_plane::runtime::Runtime;
use data_plane::runtime::router::{RequestView, RouteMatch};
use gateway_proto::{Snapshot, pb};
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};

fn runtime(plugins: &[(&str, Value)]) -> Runtime {
    let resource = |kind: &str, id: &str, body: Value| pb::Resource {
        kind: kind.to_owned(),
        id: id.to_owned(),
        revision: 1,
        body: serde_json::to_vec(&body).expect("JSON serialises").into(),
    };
    let map: serde_json::Map<String, Value> = plugins
        .iter()
        .map(|(name, config)| ((*name).to_owned(), config.clone()))
        .collect();
    let response = pb::DiscoveryResponse {
        version_info: "1".to_owned(),
        nonce: "n".to_owned(),
        type_url: pb::SNAPSHOT_TYPE_URL.to_owned(),
        control_plane_id: "bench".to_owned(),
        resources: vec![
            resource(
                "upstreams",
                "u",
                json!({"nodes": [{"host": "127.0.0.1", "port": 9}]}),
            ),
            resource(
                "upstreams",
                "canary",
                json!({"nodes": [{"host": "127.0.0.1", "port": 10}]}),
            ),
            resource(
                "routes",
                "r",
                json!({"paths": ["/api/:version/*"], "upstream_id": "u", "plugins": map}),
            ),
        ],
        ..Default::default()
    };
    let snapshot = Snapshot::from_wire(&response).expect("the bench config is valid");
    Runtime::compile(&snapshot, None).expect("the bench config compiles")
}

/// Polls a future that must not wait (no plugin here suspends a request).
fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a benchmarked phase waited"),
    }
}

fn one_request(runtime: &Runtime, client: SocketAddr) -> StatusCode {
    let (mut parts, ()) = Request::builder()
        .method(Method::GET)
        .uri("/api/v2/users/42?page=3")
        .header("host", "api.example.com")
        .header("origin", "https://app.example")
        .header("user-agent", "bench")
        .body(())
        .expect("a valid request")
        .into_parts();
    let view = RequestView {
        method: &parts.method,
        host: "api.example.com",
        path: parts.uri.path(),
        headers: &parts.headers,
        query: parts.uri.query(),
        client: client.ip(),
    };
    let RouteMatch::Found { route, params, .. } = runtime.router.find(&view) else {
        panic!("the bench route matches");
    };
    let spec = RouteRef {
        id: &route.id,
        spec: &route.spec,
    };
    let consumers = &runtime.plugins.consumers;
    let mut ctx = RequestCtx::new(spec, &route.plugins, &params, client, consumers);
    let mut response = match ready(ctx.run_request_phases(&mut parts)) {
        Ok(()) => data_plane::error::json_response(StatusCode::OK, "ok", "answered"),
        Err(refusal) => refusal,
    };
    // No plugin of these cases filters the body.
    let _filters = ctx.run_response_phases(&mut response);
    response.status()
}

fn plugins(c: &mut Criterion) {
    let cases: Vec<(&str, Vec<(&str, Value)>)> = vec![
        ("none", vec![]),
        ("request-id", vec![("request-id", json!({}))]),
        (
            "cors",
            vec![("cors", json!({"allow_origins": "https://app.example"}))],
        ),
        (
            "ip-restriction",
            vec![(
                "ip-restriction",
                json!({"whitelist": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8", "127.0.0.0/8"]}),
            )],
        ),
        (
            "proxy-rewrite",
            vec![(
                "proxy-rewrite",
                json!({"regex_uri": ["^/api/(v\\d)/(.*)", "/$2"], "headers": {"set": {"x-version": "2"}}}),
            )],
        ),
        (
            "traffic-split",
            vec![(
                "traffic-split",
                json!({"rules": [{"weighted_upstreams": [{"upstream_id": "canary", "weight": 1}, {"weight": 9}]}]}),
            )],
        ),
        (
            "limit-req",
            vec![(
                "limit-req",
                json!({"rate": 1.0e9, "burst": 1.0e9, "key": "remote_addr", "nodelay": true}),
            )],
        ),
        (
            "api-breaker",
            vec![("api-breaker", json!({"break_response_code": 502}))],
        ),
        (
            "response-rewrite",
            vec![(
                "response-rewrite",
                json!({"headers": {"set": {"x-served-by": "gw"}, "remove": ["server"]}}),
            )],
        ),
        ("prometheus", vec![("prometheus", json!({}))]),
    ];
    let all: Vec<(&str, Value)> = cases.iter().flat_map(|(_, p)| p.clone()).collect();
    let client: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
    let mut group = c.benchmark_group("plugin_phases");
    for (name, plugins) in cases.iter().chain([("all", all)].iter()) {
        let runtime = runtime(plugins);
        assert_eq!(one_request(&runtime, client), StatusCode::OK, "{name}");
        group.bench_function(*name, |b| {
            b.iter(|| black_box(one_request(&runtime, black_box(client))))
        });
    }
    group.finish();
}

criterion_group!(benches, plugins);
criterion_main!(benches);
