//! Routing through the real binaries: header, query and client-address conditions choose
//! between routes on one path, and a condition the schema refuses never reaches a data plane.

use gateway_e2e::{ControlPlane, DataPlane, FakeUpstream, error_pointers, eventually, sqlite_url};
use serde_json::{Value, json};

/// Request headers as (name, value).
type Headers = [(&'static str, &'static str)];

/// `GET path` through the data plane with extra headers; the status and which upstream
/// answered (`None` for a gateway error).
async fn get(dp: &DataPlane, path: &str, headers: &Headers) -> (u16, Option<String>) {
    let mut request = reqwest::Client::new().get(format!("{}{path}", dp.proxy_url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let Ok(response) = request.send().await else {
        return (0, None);
    };
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["upstream"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn headers_query_and_client_address_choose_the_route() {
    let canary = FakeUpstream::start("canary").await;
    let stable = FakeUpstream::start("stable").await;
    let office = FakeUpstream::start("office").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, "dp-routing");

    for (id, upstream) in [
        ("canary", &canary),
        ("stable", &stable),
        ("office", &office),
    ] {
        cp.write(
            "PUT",
            &format!("/api/v1/upstreams/{id}"),
            Some(upstream.upstream()),
        )
        .await;
    }
    // Three routes on one path. The office route has the highest priority but only takes
    // clients from 10.0.0.0/8, which a loopback client is not; the canary route needs a
    // header, a query argument and a loopback client; everything else goes to stable.
    let routes = [
        (
            "office",
            json!({"paths": ["/api/*"], "priority": 100, "remote_addrs": ["10.0.0.0/8"], "upstream_id": "office"}),
        ),
        (
            "canary",
            json!({
                "paths": ["/api/*"],
                "headers": [
                    {"name": "X-Canary", "op": "eq", "value": "1"},
                    {"name": "x-client", "op": "regex", "value": "^app/[0-9]+$"}
                ],
                "query": [{"name": "debug", "op": "exists"}, {"name": "legacy", "op": "absent"}],
                "remote_addrs": ["127.0.0.0/8", "::1"],
                "upstream_id": "canary"
            }),
        ),
        (
            "stable",
            json!({"paths": ["/api/*"], "priority": -1, "upstream_id": "stable"}),
        ),
        (
            "internal",
            json!({"paths": ["/internal"], "remote_addrs": ["192.168.0.0/16", "fd00::/8"], "upstream_id": "office"}),
        ),
    ];
    let mut last = 0;
    for (id, route) in routes {
        last = cp
            .write("PUT", &format!("/api/v1/routes/{id}"), Some(route))
            .await;
    }
    eventually("the data plane applies the last write", || async {
        (dp.ready_version().await == Some(last)).then_some(())
    })
    .await;

    let canary_headers = [("x-canary", "1"), ("X-Client", "app/42")];

    let cases: &[(&str, &Headers, &str)] = &[
        ("/api/items?debug", &canary_headers, "canary"),
        ("/api/items?debug=&page=2", &canary_headers, "canary"),
        ("/api/items?de%62ug=1", &canary_headers, "canary"),
        ("/api/items", &canary_headers, "stable"),
        ("/api/items?debug&legacy", &canary_headers, "stable"),
        ("/api/items?debug", &[("x-canary", "1")], "stable"),
        (
            "/api/items?debug",
            &[("x-canary", "2"), ("x-client", "app/42")],
            "stable",
        ),
        (
            "/api/items?debug",
            &[("x-canary", "1"), ("x-client", "app/4x")],
            "stable",
        ),
        ("/api/items?debug", &[], "stable"),
    ];
    for (path, headers, upstream) in cases {
        assert_eq!(
            get(&dp, path, headers).await,
            (200, Some((*upstream).to_owned())),
            "{path} {headers:?}"
        );
    }
    // Highest priority, but never for a loopback client.
    assert_eq!(office.count(), 0);
    // A path whose only route excludes this client: 404, not 405.
    assert_eq!(get(&dp, "/internal", &[]).await, (404, None));

    // A condition that cannot compile is refused by the admin API with its pointer, and the
    // data plane keeps routing as before.
    let (status, _, body) = cp
        .call(
            "PUT",
            "/api/v1/routes/bad",
            Some(json!({
                "paths": ["/bad"],
                "headers": [{"name": "x", "op": "exists"}, {"name": "y", "op": "regex", "value": "(unclosed"}],
                "remote_addrs": ["10.0.0.0/33"],
                "upstream_id": "stable"
            })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "schema_violation", "{body}");
    let pointers = error_pointers(&body);
    assert!(pointers.contains(&"/headers/1/value"), "{body}");
    assert!(pointers.contains(&"/remote_addrs/0"), "{body}");
    assert_eq!(
        get(&dp, "/api/items?debug", &canary_headers).await,
        (200, Some("canary".into()))
    );
}
