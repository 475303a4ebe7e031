//! The request, traffic and observability plugins end to end: configs written through the admin
//! API, requests through a real data plane, metrics from its status listener.

use gateway_e2e::{ControlPlane, DataPlane, FakeUpstream, error_pointers, sqlite_url, unique};
use serde_json::json;

#[tokio::test]
async fn cors_preflight_is_answered_and_request_ids_are_echoed() {
    let app = FakeUpstream::start("app").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, &unique("dp"));
    cp.write("PUT", "/api/v1/upstreams/app", Some(app.upstream()))
        .await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/routes/api",
            Some(json!({
                "paths": ["/api/*"],
                "methods": ["GET", "POST"],
                "upstream_id": "app",
                "plugins": {
                    "request-id": {},
                    "cors": {"allow_origins": "https://app.example", "allow_methods": "GET,POST", "max_age": 3600}
                }
            })),
        )
        .await;
    dp.applied(version).await;

    let (status, headers, _) = dp
        .send(
            "OPTIONS",
            "/api/orders",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(headers["access-control-allow-methods"], "GET,POST");
    assert_eq!(headers["access-control-max-age"], "3600");
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(app.count(), 0, "the preflight never reaches the upstream");

    let (status, headers, body) = dp
        .send("GET", "/api/orders", &[("origin", "https://other.example")])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["upstream"], "app");
    assert!(!headers.contains_key("access-control-allow-origin"));
    let id = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36);
    let received = app.received.lock().unwrap()[0].clone();
    assert_eq!(received.headers["x-request-id"], id);

    let (_, headers, _) = dp
        .send("GET", "/api/orders", &[("x-request-id", "trace-42")])
        .await;
    assert_eq!(headers["x-request-id"], "trace-42");

    // A bad config is refused on write with its pointer (the merge patch keeps the listed
    // origins; `allow_headers` is still the default `*`). The patch itself is well formed;
    // its result is what breaks the schema, so it cannot be applied: 409 (RFC 5789 §2.2).
    let (status, _, body) = cp
        .call(
            "PATCH",
            "/api/v1/routes/api",
            Some(json!({"plugins": {"cors": {"allow_credential": true}}})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "schema_violation", "{body}");
    let pointers = error_pointers(&body);
    assert_eq!(pointers, ["/plugins/cors/allow_headers"], "{body}");
}

#[tokio::test]
async fn traffic_split_sends_a_weighted_canary_share_and_upstreams_are_references() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, &unique("dp"));
    cp.write("PUT", "/api/v1/upstreams/stable", Some(stable.upstream()))
        .await;
    cp.write("PUT", "/api/v1/upstreams/canary", Some(canary.upstream()))
        .await;

    // A canary that does not exist yet is refused.
    let route = |canary_id: &str| {
        json!({
            "paths": ["/shop"],
            "upstream_id": "stable",
            "plugins": {
                "traffic-split": {"rules": [
                    {"match": [{"headers": [{"name": "x-beta", "op": "eq", "value": "yes"}]}],
                     "weighted_upstreams": [{"upstream_id": canary_id}]},
                    {"weighted_upstreams": [{"upstream_id": canary_id, "weight": 1}, {"weight": 4}]}
                ]},
                "prometheus": {}
            }
        })
    };
    let (status, _, body) = cp
        .call("PUT", "/api/v1/routes/shop", Some(route("missing")))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "reference_conflict");

    let version = cp
        .write("PUT", "/api/v1/routes/shop", Some(route("canary")))
        .await;
    dp.applied(version).await;
    let mut answers = Vec::new();
    for _ in 0..20 {
        let (status, body) = dp.get("/shop").await;
        assert_eq!(status, 200, "{body}");
        answers.push(body["upstream"].as_str().unwrap_or_default().to_owned());
    }
    let to_canary = answers.iter().filter(|a| *a == "canary").count();
    assert_eq!(to_canary, 4, "1 in 5: {answers:?}");
    assert_eq!((stable.count(), canary.count()), (16, 4));

    let (_, _, body) = dp.send("GET", "/shop", &[("x-beta", "yes")]).await;
    assert_eq!(body["upstream"], "canary");

    // The canary is in use: deleting it is refused.
    let (status, _, _) = cp.call("DELETE", "/api/v1/upstreams/canary", None).await;
    assert_eq!(status, 409);

    // The route's series are on the data plane's /metrics.
    let metrics = reqwest::get(format!("{}/metrics", dp.status_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "gateway_route_requests_total{route=\"shop\",code=\"200\"} 21"),
        "{metrics}"
    );
}
