//! The whole loop a user cares about, with the real binaries: change config through the admin
//! API, see the data plane serve it, roll back, lose and regain the control plane.

use std::time::Duration;

use gateway_e2e::{ControlPlane, DataPlane, FakeUpstream, eventually, sqlite_url};
use serde_json::{Value, json};
use sqlx::ConnectOptions;

/// Waits until `path` through `dp` is answered by the upstream named `upstream`.
async fn served_by(dp: &DataPlane, path: &str, upstream: &str) {
    eventually(&format!("{path} served by {upstream}"), || async {
        let (status, body) = dp.get(path).await;
        (status == 200 && body["upstream"] == upstream).then_some(())
    })
    .await
}

/// Waits until the fleet view shows `node` connected with `version` applied.
async fn fleet_shows(cp: &ControlPlane, node: &str, version: u64) -> Value {
    eventually(
        &format!("{node} at version {version} in the fleet view"),
        || async {
            cp.data_planes().await.into_iter().find(|dp| {
                dp["node_id"] == node && dp["connected"] == true && dp["applied_version"] == version
            })
        },
    )
    .await
}

#[tokio::test]
async fn config_flows_from_the_admin_api_to_the_data_plane() {
    let blue = FakeUpstream::start("blue").await;
    let green = FakeUpstream::start("green").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, "dp-1");

    // Ready once the first snapshot (the empty config, version 0) is applied.
    eventually("data plane ready", || async { dp.ready_version().await }).await;
    assert_eq!(dp.get("/hello").await.0, 404);

    // Create upstream + route → a request through the DP reaches the upstream.
    cp.write("PUT", "/api/v1/upstreams/blue", Some(blue.upstream()))
        .await;
    cp.write("PUT", "/api/v1/upstreams/green", Some(green.upstream()))
        .await;
    let v3 = cp
        .write(
            "PUT",
            "/api/v1/routes/hello",
            Some(json!({"paths": ["/hello/*"], "upstream_id": "blue"})),
        )
        .await;
    served_by(&dp, "/hello/world?x=1", "blue").await;
    let last = blue.received.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.uri, "/hello/world?x=1");
    assert_eq!(last.method, "GET");
    assert!(last.headers.contains_key("x-forwarded-for"));
    fleet_shows(&cp, "dp-1", v3).await;

    // Change the route → the DP follows.
    let v4 = cp
        .write(
            "PATCH",
            "/api/v1/routes/hello",
            Some(json!({"upstream_id": "green"})),
        )
        .await;
    served_by(&dp, "/hello/world", "green").await;
    fleet_shows(&cp, "dp-1", v4).await;

    // Roll back to v3 in one call → the DP follows.
    let (status, _, rolled) = cp
        .call("POST", &format!("/api/v1/versions/{v3}/rollback"), None)
        .await;
    assert_eq!(status, 200, "{rolled}");
    let v5 = rolled["version"].as_u64().unwrap();
    assert_eq!(v5, v4 + 1);
    served_by(&dp, "/hello/world", "blue").await;
    let node = fleet_shows(&cp, "dp-1", v5).await;
    assert!(node["last_seen"].as_i64().unwrap() > 0);
    assert!(node["build_version"].is_string());
    let (_, _, status) = cp.call("GET", "/api/v1/status", None).await;
    assert_eq!(status["version"], v5);
    assert_eq!(status["data_planes"]["connected"], 1);
    assert_eq!(status["data_planes"]["applied_current"], 1);

    // Deleting the route → 404 from the DP.
    cp.write("DELETE", "/api/v1/routes/hello", None).await;
    eventually("route gone", || async {
        (dp.get("/hello/world").await.0 == 404).then_some(())
    })
    .await;
    cp.write(
        "PUT",
        "/api/v1/routes/hello",
        Some(json!({"paths": ["/hello/*"], "upstream_id": "blue"})),
    )
    .await;
    served_by(&dp, "/hello/again", "blue").await;

    // The control plane stops → the DP keeps serving its last config.
    cp.process.kill();
    let before = blue.count();
    for _ in 0..20 {
        let (status, body) = dp.get("/hello/again").await;
        assert_eq!((status, &body["upstream"]), (200, &json!("blue")));
    }
    assert_eq!(blue.count(), before + 20);
    assert!(
        dp.ready_version().await.is_some(),
        "still ready without a CP"
    );
}

#[sqlx::test(migrations = false)]
async fn a_postgres_control_plane_restarts_with_its_history_and_the_dp_reconnects(
    pool: sqlx::PgPool,
) {
    let url = pool.connect_options().to_url_lossy().to_string();
    pool.close().await;
    let upstream = FakeUpstream::start("pg").await;

    let cp = ControlPlane::start(&url, None);
    let dp = DataPlane::start(&cp.xds_url, "dp-pg");
    cp.write("PUT", "/api/v1/upstreams/pg", Some(upstream.upstream()))
        .await;
    let v2 = cp
        .write(
            "PUT",
            "/api/v1/routes/r",
            Some(json!({"paths": ["/pg"], "upstream_id": "pg"})),
        )
        .await;
    served_by(&dp, "/pg", "pg").await;
    fleet_shows(&cp, "dp-pg", v2).await;
    let (_, _, history) = cp.call("GET", "/api/v1/versions", None).await;

    // Kill the CP: the DP keeps serving.
    let xds_listen = cp.xds_url.trim_start_matches("http://").to_owned();
    cp.process.kill();
    assert_eq!(dp.get("/pg").await.0, 200);

    // A new CP on the same database and config-stream address: same history, the DP
    // reconnects by itself and follows new writes.
    let cp = ControlPlane::start(&url, Some(&xds_listen));
    let (_, _, after) = cp.call("GET", "/api/v1/versions", None).await;
    assert_eq!(after["items"], history["items"]);
    fleet_shows(&cp, "dp-pg", v2).await;
    let v3 = cp
        .write(
            "PUT",
            "/api/v1/routes/r",
            Some(json!({"paths": ["/pg", "/pg2"], "upstream_id": "pg"})),
        )
        .await;
    assert_eq!(v3, v2 + 1);
    served_by(&dp, "/pg2", "pg").await;
    fleet_shows(&cp, "dp-pg", v3).await;
    let (_, _, config) = cp.call("GET", "/api/v1/versions/1/config", None).await;
    assert_eq!(config["upstreams"][0]["id"], "pg");
}

#[tokio::test]
async fn a_control_plane_stops_on_sigterm_while_data_planes_are_connected() {
    let mut cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, "sigterm-dp");
    let nodes = json!({"nodes": [{"host": "127.0.0.1", "port": 9}]});
    let version = cp.write("PUT", "/api/v1/upstreams/u", Some(nodes)).await;
    fleet_shows(&cp, "sigterm-dp", version).await;
    // The open config stream must not hold the graceful shutdown.
    assert!(
        cp.process.terminate_within(Duration::from_secs(10)),
        "the control plane was still running 10 s after SIGTERM"
    );
    drop(dp);
}
