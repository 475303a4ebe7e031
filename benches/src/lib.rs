//! What the benches and the load drivers share: generated route tables.

use gateway_proto::pb;
use serde_json::{Value, json};

/// One route of the generated table, and a request that it (and only it) should serve.
pub fn route(i: usize) -> (Value, Request) {
    let (paths, path) = match i % 8 {
        0 | 4 => (json!([format!("/svc{i}/items")]), format!("/svc{i}/items")),
        1 | 5 => (
            json!([format!("/svc{i}/users/:id")]),
            format!("/svc{i}/users/{}", i * 7),
        ),
        2 => (
            json!([format!("/svc{i}/static/*")]),
            format!("/svc{i}/static/css/site-{i}.css"),
        ),
        3 => (
            json!([format!("/svc{i}/orders/:order/lines/:line")]),
            format!("/svc{i}/orders/{i}/lines/3"),
        ),
        6 => (
            json!([format!("/svc{i}/v1/:kind/*")]),
            format!("/svc{i}/v1/things/a/b"),
        ),
        // Many tenants on one path, told apart by host only.
        _ => (json!(["/shared/:id"]), "/shared/42".to_owned()),
    };
    let (hosts, host) = match (i % 8, i % 3) {
        (7, _) => (
            json!([format!("t{i}.example.com")]),
            format!("t{i}.example.com"),
        ),
        (_, 0) => (
            json!([format!("api{}.example.com", i % 50)]),
            format!("api{}.example.com", i % 50),
        ),
        (_, 1) => (
            json!([format!("*.tenant{}.example.com", i % 20)]),
            format!("eu.tenant{}.example.com", i % 20),
        ),
        _ => (json!([]), "anything.example.com".to_owned()),
    };
    let methods = if i.is_multiple_of(2) {
        json!(["GET"])
    } else {
        json!(["GET", "POST"])
    };
    let spec = json!({
        "paths": paths,
        "hosts": hosts,
        "methods": methods,
        "priority": (i % 3) as i64,
        "upstream_id": "u"
    });
    (spec, Request { host, path })
}

/// A request the generated table should route.
pub struct Request {
    /// The `Host` header.
    pub host: String,
    /// The request path.
    pub path: String,
}

/// A whole snapshot of `n` generated routes (ids `r0`.., route `ri` at revision `i + 1`) on one
/// upstream `u`, at version `n + 1`,
/// and for each route a request that it should serve.
pub fn route_table(n: usize) -> (pb::DiscoveryResponse, Vec<Request>) {
    let mut resources = vec![pb::Resource {
        kind: "upstreams".to_owned(),
        id: "u".to_owned(),
        revision: 1,
        body: serde_json::to_vec(&json!({"nodes": [{"host": "127.0.0.1", "port": 9}]}))
            .expect("JSON serialises")
            .into(),
    }];
    let mut requests = Vec::new();
    for i in 0..n {
        let (spec, request) = route(i);
        resources.push(pb::Resource {
            kind: "routes".to_owned(),
            id: format!("r{i}"),
            revision: 1 + i as u64,
            body: serde_json::to_vec(&spec).expect("JSON serialises").into(),
        });
        requests.push(request);
    }
    let response = pb::DiscoveryResponse {
        version_info: (n + 1).to_string(),
        nonce: "n".to_owned(),
        type_url: pb::SNAPSHOT_TYPE_URL.to_owned(),
        control_plane_id: "bench".to_owned(),
        resources,
        ..Default::default()
    };
    (response, requests)
}
