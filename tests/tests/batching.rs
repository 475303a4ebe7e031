//! Batching and aggregation, end to end with the real binaries: a route with `batch` fans one
//! client request out to several upstreams and merges the answers into one JSON document.

use std::time::Duration;

use gateway_e2e::{
    ControlPlane, DataPlane, FakeUpstream, Reply, ScriptedUpstream, error_pointers, eventually,
    sqlite_url,
};
use serde_json::{Value, json};

/// A control plane and a data plane that has applied its first snapshot.
async fn gateway() -> (ControlPlane, DataPlane) {
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, "dp-batch");
    eventually("data plane ready", || async { dp.ready_version().await }).await;
    (cp, dp)
}

/// What the gateway answered: status, `X-Gateway-Batch`, JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    batch: Option<String>,
    body: Value,
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("gateway reachable");
    let status = response.status().as_u16();
    let batch = response
        .headers()
        .get("x-gateway-batch")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = response.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer {
        status,
        batch,
        body,
    }
}

async fn get(dp: &DataPlane, path: &str) -> Answer {
    send(reqwest::Client::new().get(format!("{}{path}", dp.proxy_url))).await
}

/// Polls `path` until `accept` holds for the answer (the data plane follows the admin API
/// asynchronously), then returns that answer.
async fn once(dp: &DataPlane, path: &str, accept: impl Fn(&Answer) -> bool) -> Answer {
    eventually(&format!("an accepted answer on {path}"), || async {
        let answer = get(dp, path).await;
        accept(&answer).then_some(answer)
    })
    .await
}

fn served(answer: &Answer) -> bool {
    answer.status != 404
}

#[tokio::test]
async fn two_services_are_merged_into_one_object() {
    let one = ScriptedUpstream::start(|_| Reply::json(json!({"status": "ok", "load": 0.2}))).await;
    let two = ScriptedUpstream::start(|_| Reply::json(json!({"status": "degraded"}))).await;
    let (cp, dp) = gateway().await;
    cp.write("PUT", "/api/v1/upstreams/one", Some(one.upstream()))
        .await;
    cp.write("PUT", "/api/v1/upstreams/two", Some(two.upstream()))
        .await;
    cp.write(
        "PUT",
        "/api/v1/routes/status",
        Some(json!({
            "paths": ["/status"],
            "methods": ["GET"],
            "batch": {"requests": [
                {"name": "service1", "upstream_id": "one", "path": "/status"},
                {"name": "service2", "upstream_id": "two", "path": "/health"}
            ]}
        })),
    )
    .await;

    let answer = once(&dp, "/status", served).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.batch.as_deref(), Some("complete"));
    assert_eq!(
        answer.body,
        json!({"service1": {"status": "ok", "load": 0.2}, "service2": {"status": "degraded"}})
    );
    assert_eq!(one.exchange("/status").unwrap().request.method, "GET");
    assert!(two.exchange("/health").is_some());
}

#[tokio::test]
async fn catalog_inventory_review_in_both_request_styles_and_a_fourth_added_live() {
    let api = FakeUpstream::start("api").await;
    let (cp, dp) = gateway().await;
    cp.write("PUT", "/api/v1/upstreams/api", Some(api.upstream()))
        .await;
    let sub = |name: &str, path: String| json!({"name": name, "upstream_id": "api", "path": path});
    let final_element = |services: &[&str]| {
        let requests: Vec<Value> = services
            .iter()
            .map(|s| sub(s, format!("/myapi/{s}/{{last}}")))
            .collect();
        json!({"paths": ["/batch-api/product/*"], "batch": {"requests": requests, "merge": "array"}})
    };
    cp.write(
        "PUT",
        "/api/v1/routes/final-element",
        Some(final_element(&["catalog", "inventory", "review"])),
    )
    .await;
    let requests: Vec<Value> = ["catalog", "inventory", "review"]
        .iter()
        .map(|s| sub(s, format!("/myapi/{s}.php")))
        .collect();
    cp.write(
        "PUT",
        "/api/v1/routes/query-string",
        Some(json!({
            "paths": ["/batch-api2/product"],
            "batch": {"requests": requests, "merge": "array", "pass_query": true}
        })),
    )
    .await;

    let expect = |answer: &Answer, uris: &[&str]| {
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.batch.as_deref(), Some("complete"));
        let items = answer.body.as_array().expect("an array");
        assert_eq!(items.len(), uris.len(), "{answer:?}");
        for (item, uri) in items.iter().zip(uris) {
            let name = uri.trim_start_matches("/myapi/").split(['/', '.']).next();
            assert_eq!(item["name"].as_str(), name);
            assert_eq!(item["uri"], *uri);
            assert_eq!(item["status"], 200);
            assert_eq!(item["body"], json!({"upstream": "api", "uri": uri}));
        }
    };
    let answer = once(&dp, "/batch-api/product/14286", served).await;
    expect(
        &answer,
        &[
            "/myapi/catalog/14286",
            "/myapi/inventory/14286",
            "/myapi/review/14286",
        ],
    );
    let answer = once(&dp, "/batch-api2/product?item=14286&lang=en", served).await;
    expect(
        &answer,
        &[
            "/myapi/catalog.php?item=14286&lang=en",
            "/myapi/inventory.php?item=14286&lang=en",
            "/myapi/review.php?item=14286&lang=en",
        ],
    );

    // A fourth sub-request through the admin API: the next calls see it, no restart.
    cp.write(
        "PUT",
        "/api/v1/routes/final-element",
        Some(final_element(&[
            "catalog",
            "inventory",
            "review",
            "pricing",
        ])),
    )
    .await;
    let answer = once(&dp, "/batch-api/product/14286", |a| {
        a.body.as_array().is_some_and(|items| items.len() == 4)
    })
    .await;
    expect(
        &answer,
        &[
            "/myapi/catalog/14286",
            "/myapi/inventory/14286",
            "/myapi/review/14286",
            "/myapi/pricing/14286",
        ],
    );
}

#[tokio::test]
async fn failures_appear_in_place_and_required_ones_fail_the_whole_answer() {
    let api = ScriptedUpstream::start(|request| match request.uri.as_str() {
        // Slow, not a synchronisation: the gateway's deadline is what the test observes.
        "/slow" => Reply::json(json!({"late": true})).after(Duration::from_secs(30)),
        "/broken" => Reply::json(json!({"oops": 1})).with_status(500),
        _ => Reply::json(json!({"fine": true})),
    })
    .await;
    let (cp, dp) = gateway().await;
    cp.write("PUT", "/api/v1/upstreams/api", Some(api.upstream()))
        .await;
    let route = |path: &str, requests: Value| json!({"paths": [path], "batch": {"requests": requests, "timeout_ms": 10000}});
    let fast = json!({"name": "fast", "upstream_id": "api", "path": "/fast"});
    let slow_optional = json!({"name": "slow", "upstream_id": "api", "path": "/slow", "required": false, "timeout_ms": 200});
    let slow_required =
        json!({"name": "slow", "upstream_id": "api", "path": "/slow", "timeout_ms": 200});
    let broken = json!({"name": "broken", "upstream_id": "api", "path": "/broken"});
    for (id, requests) in [
        ("partial", json!([fast, slow_optional])),
        ("failed", json!([fast, broken, slow_optional])),
        ("timed-out", json!([fast, slow_required])),
    ] {
        cp.write(
            "PUT",
            &format!("/api/v1/routes/{id}"),
            Some(route(&format!("/{id}"), requests)),
        )
        .await;
    }

    // An optional sub-request times out: 200, partial, its error in place.
    let answer = once(&dp, "/partial", served).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.batch.as_deref(), Some("partial"));
    assert_eq!(answer.body["fast"], json!({"fine": true}));
    assert_eq!(answer.body["slow"]["error"]["status"], 504, "{answer:?}");
    assert!(answer.body["slow"]["error"]["message"].is_string());

    // A required sub-request fails: 502 with the same body, the others present.
    let answer = once(&dp, "/failed", served).await;
    assert_eq!(answer.status, 502, "{answer:?}");
    assert_eq!(answer.batch.as_deref(), Some("partial"));
    assert_eq!(answer.body["fast"], json!({"fine": true}));
    assert_eq!(answer.body["broken"]["error"]["status"], 500, "{answer:?}");
    assert_eq!(answer.body["slow"]["error"]["status"], 504, "{answer:?}");

    // A required sub-request times out: 504.
    let answer = once(&dp, "/timed-out", served).await;
    assert_eq!(answer.status, 504, "{answer:?}");
    assert_eq!(answer.body["fast"], json!({"fine": true}));
    assert_eq!(answer.body["slow"]["error"]["status"], 504);
}

#[tokio::test]
async fn a_dependent_call_waits_for_its_input_while_independent_ones_overlap() {
    // The delays make each call last long enough that two calls sent together are seen
    // together by the upstream; the assertions compare recorded instants, not durations.
    let api = ScriptedUpstream::start(|request| {
        let slow = Duration::from_millis(500);
        match request.uri.as_str() {
            "/users/ann" => Reply::json(json!({"id": 42, "name": "Ann"})).after(slow),
            "/orders?user=42" => Reply::json(json!({"orders": [1, 2]})),
            "/recommendations/ann" => Reply::json(json!({"items": ["x"]})).after(slow),
            _ => Reply::json(json!({"unexpected": request.uri})).with_status(404),
        }
    })
    .await;
    let (cp, dp) = gateway().await;
    cp.write("PUT", "/api/v1/upstreams/api", Some(api.upstream()))
        .await;
    cp.write(
        "PUT",
        "/api/v1/routes/profile",
        Some(json!({
            "paths": ["/profile/:uid"],
            "batch": {"requests": [
                {"name": "orders", "upstream_id": "api", "path": "/orders?user={resp.user./id}"},
                {"name": "user", "upstream_id": "api", "path": "/users/{param.uid}"},
                {"name": "recommendations", "upstream_id": "api", "path": "/recommendations/{param.uid}"}
            ]}
        })),
    )
    .await;

    let answer = once(&dp, "/profile/ann", served).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.body,
        json!({
            "orders": {"orders": [1, 2]},
            "user": {"id": 42, "name": "Ann"},
            "recommendations": {"items": ["x"]}
        })
    );
    let user = api.exchange("/users/ann").unwrap();
    let orders = api.exchange("/orders?user=42").unwrap();
    let recommendations = api.exchange("/recommendations/ann").unwrap();
    // Order: the dependent call was sent only after its input was answered.
    assert!(orders.started >= user.finished, "{user:?} {orders:?}");
    // Overlap: the independent calls were in flight at the same time.
    assert!(
        user.started < recommendations.finished && recommendations.started < user.finished,
        "{user:?} {recommendations:?}"
    );
}

#[tokio::test]
async fn client_method_headers_and_body_are_forwarded_unless_overridden() {
    let api = ScriptedUpstream::start(|request| match request.uri.as_str() {
        "/text" => Reply::text("plain words"),
        _ => Reply::json(json!({"ok": true})),
    })
    .await;
    let (cp, dp) = gateway().await;
    cp.write("PUT", "/api/v1/upstreams/api", Some(api.upstream()))
        .await;
    cp.write(
        "PUT",
        "/api/v1/routes/forward",
        Some(json!({
            "paths": ["/forward"],
            "batch": {"requests": [
                {"name": "inherit", "upstream_id": "api", "path": "/inherit"},
                {"name": "override", "upstream_id": "api", "path": "/override", "method": "PUT",
                 "headers": {"x-client": "{header.x-client}-override"}, "body": {"k": 1}},
                {"name": "text", "upstream_id": "api", "path": "/text"}
            ]}
        })),
    )
    .await;
    let post = || {
        reqwest::Client::new()
            .post(format!("{}/forward", dp.proxy_url))
            .header("x-client", "c1")
            .header("proxy-authorization", "Basic c2VjcmV0")
            .header("accept-encoding", "gzip")
            .header("content-type", "text/plain")
            .body("client body")
    };
    let answer = eventually("the batch route is served", || async {
        let answer = send(post()).await;
        served(&answer).then_some(answer)
    })
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    // A body that is not JSON is carried as a string.
    assert_eq!(answer.body["text"], "plain words");

    let inherit = api.exchange("/inherit").unwrap();
    assert_eq!(inherit.request.method, "POST");
    assert_eq!(&inherit.body[..], b"client body");
    let headers = &inherit.request.headers;
    assert_eq!(headers["x-client"], "c1");
    assert_eq!(headers["content-type"], "text/plain");
    assert!(headers.contains_key("x-forwarded-for"));
    assert!(!headers.contains_key("proxy-authorization"), "{headers:?}");
    assert!(!headers.contains_key("accept-encoding"), "{headers:?}");

    let overridden = api.exchange("/override").unwrap();
    assert_eq!(overridden.request.method, "PUT");
    assert_eq!(&overridden.body[..], br#"{"k":1}"#);
    assert_eq!(overridden.request.headers["x-client"], "c1-override");
    assert_eq!(
        overridden.request.headers["content-type"],
        "application/json"
    );
}

#[tokio::test]
async fn bodies_read_into_memory_are_capped() {
    let api = ScriptedUpstream::start(|request| match request.uri.as_str() {
        "/big" => Reply::text(&"x".repeat(4096)),
        _ => Reply::json(json!({"small": true})),
    })
    .await;
    let (cp, dp) = gateway().await;
    cp.write("PUT", "/api/v1/upstreams/api", Some(api.upstream()))
        .await;
    cp.write(
        "PUT",
        "/api/v1/routes/capped",
        Some(json!({
            "paths": ["/capped"],
            "batch": {"max_body_bytes": 1024, "requests": [
                {"name": "small", "upstream_id": "api", "path": "/small"},
                {"name": "big", "upstream_id": "api", "path": "/big"}
            ]}
        })),
    )
    .await;
    let answer = once(&dp, "/capped", served).await;
    assert_eq!(answer.status, 502, "{answer:?}");
    assert_eq!(answer.body["small"], json!({"small": true}));
    assert_eq!(answer.body["big"]["error"]["status"], 502);
    let message = answer.body["big"]["error"]["message"].as_str().unwrap();
    assert!(message.contains("1024 bytes"), "{message}");

    // The client's body, which every sub-request may carry, is capped the same way.
    let answer = send(
        reqwest::Client::new()
            .post(format!("{}/capped", dp.proxy_url))
            .body("y".repeat(4096)),
    )
    .await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(answer.body["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn bad_batches_are_refused_on_write_with_pointers() {
    let (cp, _dp) = gateway().await;
    cp.write(
        "PUT",
        "/api/v1/upstreams/api",
        Some(json!({"nodes": [{"host": "127.0.0.1", "port": 1}]})),
    )
    .await;
    let sub = |name: &str, path: &str| json!({"name": name, "upstream_id": "api", "path": path});
    let route = |requests: Value| json!({"paths": ["/p/:id"], "batch": {"requests": requests}});
    // (route, status, pointer, a word of the message)
    let cases = [
        (
            route(json!([sub("a", "/a"), sub("b", "/b"), sub("c", "/{nope}")])),
            400,
            "/batch/requests/2/path",
            "unknown template variable",
        ),
        // What the sub-requests refer to is beyond any schema: a reference that does not
        // resolve, answered 409 like an upstream that does not exist.
        (
            route(json!([sub("a", "/a"), sub("b", "/{resp.ghost./id}")])),
            409,
            "/batch/requests/1/path",
            "ghost",
        ),
        (
            route(json!([
                sub("a", "/{resp.b./id}"),
                sub("b", "/{resp.a./id}")
            ])),
            409,
            "/batch/requests/0",
            "cycle",
        ),
        (
            route(json!([sub("a", "/{param.missing}")])),
            409,
            "/batch/requests/0/path",
            ":missing",
        ),
        (
            route(json!([
                sub("a", "/a"),
                {"name": "b", "upstream_id": "nowhere", "path": "/b"}
            ])),
            409,
            "/batch/requests/1/upstream_id",
            "nowhere",
        ),
    ];
    for (document, status, pointer, word) in cases {
        let (got, _, body) = cp
            .call("PUT", "/api/v1/routes/bad", Some(document.clone()))
            .await;
        assert_eq!(got, status, "{document}: {body}");
        let details = body["error"]["details"].as_array().unwrap();
        assert!(
            details
                .iter()
                .any(|d| d["pointer"] == pointer
                    && d["message"].as_str().unwrap_or("").contains(word)),
            "{document}: {body}"
        );
    }
    // Validation without a write locates a missing upstream the same way.
    let (got, _, body) = cp
        .call(
            "POST",
            "/api/v1/validate/route",
            Some(route(json!([
                sub("a", "/a"),
                {"name": "b", "upstream_id": "nowhere", "path": "/b"}
            ]))),
        )
        .await;
    assert_eq!(got, 409, "{body}");
    let pointers = error_pointers(&body);
    assert_eq!(pointers, ["/batch/requests/1/upstream_id"], "{body}");
    // Nothing was written.
    let (status, _, _) = cp.call("GET", "/api/v1/routes/bad", None).await;
    assert_eq!(status, 404);

    // An upstream a batch still uses cannot be deleted.
    cp.write(
        "PUT",
        "/api/v1/routes/good",
        Some(route(json!([sub("a", "/{param.id}")]))),
    )
    .await;
    let (status, _, body) = cp.call("DELETE", "/api/v1/upstreams/api", None).await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn batch_requests_runs_each_item_through_the_router_and_plugins() {
    let api = FakeUpstream::start("api").await;
    let (cp, dp) = gateway().await;
    cp.write("PUT", "/api/v1/upstreams/api", Some(api.upstream()))
        .await;
    cp.write(
        "PUT",
        "/api/v1/consumers/alice",
        Some(
            json!({"username": "alice", "credentials": {"key-auth": {"key": "alice-secret-key"}}}),
        ),
    )
    .await;
    cp.write(
        "PUT",
        "/api/v1/routes/open",
        Some(json!({"paths": ["/open/*"], "upstream_id": "api"})),
    )
    .await;
    cp.write(
        "PUT",
        "/api/v1/routes/private",
        Some(json!({"paths": ["/private/*"], "upstream_id": "api", "plugins": {"key-auth": {}}})),
    )
    .await;
    cp.write(
        "PUT",
        "/api/v1/routes/batch",
        Some(json!({"paths": ["/batch"], "methods": ["POST"], "plugins": {"batch-requests": {"max_items": 3, "max_body_bytes": 2048}}})),
    )
    .await;

    let post = |body: Value| {
        send(
            reqwest::Client::new()
                .post(format!("{}/batch", dp.proxy_url))
                .json(&body),
        )
    };
    let batch = json!({"timeout_ms": 5000, "requests": [
        {"method": "GET", "path": "/open/a?x=1"},
        {"method": "GET", "path": "/private/b", "headers": {"apikey": "wrong-key"}},
        {"method": "POST", "path": "/private/c", "headers": {"apikey": "alice-secret-key"}, "body": {"n": 1}}
    ]});
    let answer = eventually("the batch endpoint is served", || async {
        let answer = post(batch.clone()).await;
        (answer.status != 404).then_some(answer)
    })
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let items = answer.body.as_array().expect("an array");
    assert_eq!(items.len(), 3, "{answer:?}");
    assert_eq!(items[0]["status"], 200);
    // JSON bodies come back as JSON.
    assert_eq!(
        items[0]["body"],
        json!({"upstream": "api", "uri": "/open/a?x=1"})
    );
    assert_eq!(items[0]["headers"]["content-type"], "application/json");
    assert_eq!(items[1]["status"], 401, "{answer:?}");
    assert_eq!(items[2]["status"], 200, "{answer:?}");
    assert_eq!(items[2]["body"]["uri"], "/private/c");
    // The refused item never reached the upstream; the others did, in process.
    let uris: Vec<String> = api
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.uri.clone())
        .collect();
    assert!(
        !uris.iter().any(|u| u.starts_with("/private/b")),
        "{uris:?}"
    );
    let c = api
        .received
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r.uri == "/private/c")
        .cloned()
        .unwrap();
    assert_eq!(c.method, "POST");

    // Bounds: too many items → 400, too large a body → 413, an item that is a batch → 400.
    let four = json!({"requests": [{"path": "/open/1"}, {"path": "/open/2"}, {"path": "/open/3"}, {"path": "/open/4"}]});
    assert_eq!(post(four).await.status, 400);
    let large = json!({"requests": [{"path": "/open/1", "body": "z".repeat(4096)}]});
    assert_eq!(post(large).await.status, 413);
    let nested = post(json!({"requests": [{"method": "POST", "path": "/batch", "body": {"requests": [{"path": "/open/1"}]}}]})).await;
    assert_eq!(nested.status, 200, "{nested:?}");
    assert_eq!(nested.body[0]["status"], 400, "{nested:?}");
}
