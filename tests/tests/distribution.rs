//! Config distribution at fleet scale, with the real binaries on real Postgres: replicas on one
//! store, deltas measured on the socket, the disk cache, a secured stream, NACK discipline, a
//! store outage, and data planes that never go backwards.

use std::time::Duration;

use gateway_e2e::{
    ControlPlane, DataPlane, FakeUpstream, Forwarder, eventually, run_to_exit, sqlite_url, unique,
    url_via,
};
use serde_json::{Value, json};
use sqlx::ConnectOptions;

/// The URL of the fresh database `#[sqlx::test]` made, with the pool closed.
async fn database_url(pool: sqlx::PgPool) -> String {
    let url = pool.connect_options().to_url_lossy().to_string();
    pool.close().await;
    url
}

/// Waits until `path` through `dp` is answered 200 by the upstream named `upstream`.
async fn served_by(dp: &DataPlane, path: &str, upstream: &str) {
    eventually(&format!("{path} served by {upstream}"), || async {
        let (status, body) = dp.get(path).await;
        (status == 200 && body["upstream"] == upstream).then_some(())
    })
    .await
}

/// Writes a version and waits until `good` (node `good_id`) serves it and the fleet view
/// shows it; by then each of `refused`, started with it, has received nothing.
async fn only_the_good_one_is_served(
    cp: &ControlPlane,
    good: &DataPlane,
    good_id: &str,
    refused: &[&DataPlane],
) {
    let v = cp
        .write(
            "PUT",
            "/api/v1/upstreams/u",
            Some(json!({"nodes": [{"host": "127.0.0.1", "port": 9}]})),
        )
        .await;
    good.applied(v).await;
    cp.fleet_shows(good_id, v).await;
    for dp in refused {
        assert_eq!(dp.metric("gateway_config_responses_total").await, Some(0.0));
        assert!(dp.readiness().await.is_none());
    }
}

fn route(path: &str, upstream: &str) -> Value {
    json!({"paths": [path], "upstream_id": upstream})
}

#[sqlx::test(migrations = false)]
async fn replicas_on_one_postgres_serve_one_fleet_and_take_over_each_others_data_planes(
    pool: sqlx::PgPool,
) {
    let url = database_url(pool).await;
    let upstream = FakeUpstream::start("shared").await;
    let a = ControlPlane::start_with(&url, None, &["--control-plane-id", "cp-a"]);
    let b = ControlPlane::start_with(&url, None, &["--control-plane-id", "cp-b"]);
    // dp-a prefers A and fails over to B; dp-b stays on B.
    let dp_a = DataPlane::start(&format!("{},{}", a.xds_url, b.xds_url), "dp-a");
    let dp_b = DataPlane::start(&b.xds_url, "dp-b");

    // A write through either replica reaches the data planes of both.
    a.write("PUT", "/api/v1/upstreams/u", Some(upstream.upstream()))
        .await;
    a.write("PUT", "/api/v1/routes/via-a", Some(route("/via-a", "u")))
        .await;
    served_by(&dp_b, "/via-a", "shared").await;
    let v = b
        .write("PUT", "/api/v1/routes/via-b", Some(route("/via-b", "u")))
        .await;
    served_by(&dp_a, "/via-b", "shared").await;

    // Either replica's fleet view lists every data plane, with the replica it is on.
    for cp in [&a, &b] {
        let on_a = cp.fleet_shows("dp-a", v).await;
        let on_b = cp.fleet_shows("dp-b", v).await;
        assert_eq!(on_a["control_plane_id"], "cp-a");
        assert_eq!(on_b["control_plane_id"], "cp-b");
        assert_eq!(on_a["config_source"], "stream");
        let (_, _, status) = cp.call("GET", "/api/v1/status", None).await;
        assert_eq!(status["data_planes"]["connected"], 2, "{status}");
        assert_eq!(status["data_planes"]["applied_current"], 2, "{status}");
    }

    // A is killed: its data plane moves to B, which shows it there and keeps it current.
    a.process.kill();
    eventually("dp-a on cp-b in the fleet view", || async {
        b.data_planes().await.into_iter().find(|dp| {
            dp["node_id"] == "dp-a" && dp["connected"] == true && dp["control_plane_id"] == "cp-b"
        })
    })
    .await;
    let v = b
        .write("PUT", "/api/v1/routes/after", Some(route("/after", "u")))
        .await;
    served_by(&dp_a, "/after", "shared").await;
    served_by(&dp_b, "/after", "shared").await;
    b.fleet_shows("dp-a", v).await;
    let entries = b.data_planes().await;
    assert_eq!(entries.len(), 2, "one row per data plane: {entries:?}");
}

#[sqlx::test(migrations = false)]
async fn one_route_changed_in_a_10k_route_config_crosses_the_socket_as_a_small_delta(
    pool: sqlx::PgPool,
) {
    let url = database_url(pool).await;
    let cp = ControlPlane::start(&url, None);
    let routes: Vec<Value> = (0..10_000)
        .map(|i| {
            json!({"id": format!("r{i}"), "paths": [format!("/svc/{i}/items/:id")],
                   "methods": ["GET"], "upstream_id": "u"})
        })
        .collect();
    let config = json!({
        "upstreams": [{"id": "u", "nodes": [{"host": "127.0.0.1", "port": 9}]}],
        "routes": routes,
    });
    let big = cp.write("PUT", "/api/v1/config", Some(config)).await;

    // The data plane's stream runs through a forwarder that counts what reaches it.
    let xds: std::net::SocketAddr = cp.xds_listen().parse().unwrap();
    let forwarder = Forwarder::start(xds).await;
    let dp = DataPlane::start(&format!("http://{}", forwarder.addr), "dp-delta");
    dp.applied(big).await;
    let whole = forwarder.bytes_to_clients();

    let changed = cp
        .write(
            "PUT",
            "/api/v1/routes/r5000",
            Some(json!({"paths": ["/svc/5000/items/:id", "/moved"], "methods": ["GET"], "upstream_id": "u"})),
        )
        .await;
    dp.applied(changed).await;
    let delta = forwarder.bytes_to_clients() - whole;
    println!("whole config: {whole} bytes; one route changed: {delta} bytes");
    // Compressed, the whole config is still dozens of times larger than the delta.
    assert!(
        whole > 20 * delta,
        "the first snapshot carries the whole config ({whole} bytes)"
    );
    assert!(delta < 10_000, "one route changed cost {delta} bytes");
    // The delta was applied, not just received.
    assert_eq!(dp.get("/moved").await.0, 502);
}

#[tokio::test]
async fn a_data_plane_restarted_without_control_plane_serves_its_cache_and_ignores_a_bad_one() {
    let upstream = FakeUpstream::start("cached").await;
    let database = sqlite_url();
    let cp = ControlPlane::start(&database, None);
    let cache_dir = std::env::temp_dir().join(unique("dp-cache"));
    let cache = cache_dir.to_str().unwrap().to_owned();
    let dp = DataPlane::start_with(&cp.xds_url, "dp-cache", &["--cache-dir", &cache]);
    cp.write("PUT", "/api/v1/upstreams/u", Some(upstream.upstream()))
        .await;
    let v = cp
        .write("PUT", "/api/v1/routes/r", Some(route("/cached", "u")))
        .await;
    served_by(&dp, "/cached", "cached").await;
    let cache_file = cache_dir.join("config.cache");
    eventually("the cache file written", || async {
        cache_file.exists().then_some(())
    })
    .await;

    // No control plane, and the data plane restarts: it serves the cached config.
    let xds_listen = cp.xds_listen();
    cp.process.kill();
    dp.process.kill();
    let dp = DataPlane::start_with(
        &format!("http://{xds_listen}"),
        "dp-cache",
        &["--cache-dir", &cache],
    );
    let ready = eventually("ready from the cache", || dp.readiness()).await;
    assert_eq!(ready["version"], v, "{ready}");
    assert_eq!(ready["source"], "cache", "{ready}");
    served_by(&dp, "/cached", "cached").await;

    // The control plane returns: the data plane says what it serves, and the fleet shows where
    // it came from until the stream confirms it.
    let cp = ControlPlane::start(&database, Some(&xds_listen));
    eventually("served from the stream again", || async {
        let ready = dp.readiness().await?;
        (ready["source"] == "stream" && ready["version"] == v).then_some(())
    })
    .await;
    cp.fleet_shows("dp-cache", v).await;
    dp.process.kill();
    cp.process.kill();

    // A damaged cache is ignored with a counted error: nothing is served.
    let bytes = std::fs::read(&cache_file).unwrap();
    std::fs::write(&cache_file, &bytes[..bytes.len() / 2]).unwrap();
    let dp = DataPlane::start_with(
        &format!("http://{xds_listen}"),
        "dp-cache",
        &["--cache-dir", &cache],
    );
    eventually("the cache error counted", || async {
        (dp.metric("gateway_config_cache_errors_total").await? >= 1.0).then_some(())
    })
    .await;
    assert!(
        dp.readiness().await.is_none(),
        "a corrupt cache is not served"
    );
    assert_eq!(dp.get("/cached").await.0, 404);
    let _ = std::fs::remove_dir_all(cache_dir);
}

#[tokio::test]
async fn the_stream_serves_only_peers_with_the_token() {
    let cp = ControlPlane::start_with(&sqlite_url(), None, &["--dp-token", "s3cret-dp-token"]);
    let good = DataPlane::start_with(&cp.xds_url, "dp-token", &["--cp-token", "s3cret-dp-token"]);
    let wrong = DataPlane::start_with(&cp.xds_url, "dp-wrong", &["--cp-token", "guess"]);
    let none = DataPlane::start(&cp.xds_url, "dp-none");
    // Started with the good one, they tried at least as long as it took to converge.
    only_the_good_one_is_served(&cp, &good, "dp-token", &[&wrong, &none]).await;
    let names: Vec<Value> = cp
        .data_planes()
        .await
        .into_iter()
        .map(|dp| dp["node_id"].clone())
        .collect();
    assert_eq!(names, [json!("dp-token")]);
}

#[tokio::test]
async fn the_stream_over_mtls_serves_only_peers_with_a_certificate_from_its_ca() {
    let dir = std::env::temp_dir().join(unique("certs"));
    let other = std::env::temp_dir().join(unique("other-certs"));
    for target in [&dir, &other] {
        let (status, stderr) = run_to_exit(
            "control-plane",
            &[
                "certs",
                "--dir",
                target.to_str().unwrap(),
                "--server-name",
                "localhost",
            ],
        );
        assert_eq!(status, Some(0), "{stderr}");
    }
    let file = |dir: &std::path::Path, name: &str| dir.join(name).to_str().unwrap().to_owned();
    let cp = ControlPlane::start_with(
        &sqlite_url(),
        None,
        &[
            "--xds-tls-cert",
            &file(&dir, "control-plane.crt"),
            "--xds-tls-key",
            &file(&dir, "control-plane.key"),
            "--xds-client-ca",
            &file(&dir, "ca.crt"),
        ],
    );
    assert!(cp.xds_url.starts_with("https://"), "{}", cp.xds_url);
    // The data planes verify the control plane's name: they reach it as localhost.
    let port = cp.xds_listen().rsplit_once(':').unwrap().1.to_owned();
    let https = format!("https://localhost:{port}");
    let ca = file(&dir, "ca.crt");
    let good = DataPlane::start_with(
        &https,
        "dp-mtls",
        &[
            "--cp-ca",
            &ca,
            "--cp-cert",
            &file(&dir, "data-plane.crt"),
            "--cp-key",
            &file(&dir, "data-plane.key"),
        ],
    );
    let no_cert = DataPlane::start_with(&https, "dp-no-cert", &["--cp-ca", &ca]);
    let foreign = DataPlane::start_with(
        &https,
        "dp-foreign",
        &[
            "--cp-ca",
            &ca,
            "--cp-cert",
            &file(&other, "data-plane.crt"),
            "--cp-key",
            &file(&other, "data-plane.key"),
        ],
    );
    only_the_good_one_is_served(&cp, &good, "dp-mtls", &[&no_cert, &foreign]).await;
    assert_eq!(cp.data_planes().await.len(), 1);
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(other);
}

#[test]
fn an_unauthenticated_stream_beyond_loopback_needs_xds_insecure() {
    let database = sqlite_url();
    let (status, stderr) = run_to_exit(
        "control-plane",
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--xds-listen",
            "0.0.0.0:0",
            "--database-url",
            &database,
        ],
    );
    assert_ne!(status, Some(0));
    assert!(stderr.contains("--xds-insecure"), "{stderr}");
}

#[tokio::test]
async fn a_version_a_data_plane_rejects_is_not_sent_to_it_again() {
    let upstream = FakeUpstream::start("nack").await;
    let database = sqlite_url();
    let cp = ControlPlane::start(&database, None);
    let dp = DataPlane::start_with(&cp.xds_url, "dp-nack", &["--disable-plugins", "cors"]);
    cp.write("PUT", "/api/v1/upstreams/u", Some(upstream.upstream()))
        .await;
    let good = cp
        .write("PUT", "/api/v1/routes/r", Some(route("/nack", "u")))
        .await;
    dp.applied(good).await;
    let received = dp.metric("gateway_config_responses_total").await.unwrap();

    // A version this data plane cannot run: NACKed once, the previous one kept.
    let bad = cp
        .write(
            "PUT",
            "/api/v1/routes/r",
            Some(json!({"paths": ["/nack"], "upstream_id": "u", "plugins": {"cors": {}}})),
        )
        .await;
    let entry = eventually("the rejection in the fleet view", || async {
        cp.data_planes()
            .await
            .into_iter()
            .find(|dp| dp["last_rejected"]["version"] == bad)
    })
    .await;
    assert!(
        entry["last_rejected"]["error"]
            .as_str()
            .unwrap()
            .contains("cors"),
        "{entry}"
    );
    assert_eq!(entry["applied_version"], good);
    let (_, _, status) = cp.call("GET", "/api/v1/status", None).await;
    assert_eq!(status["data_planes"]["rejected_current"], 1, "{status}");
    served_by(&dp, "/nack", "nack").await;

    // Reconnected to a restarted control plane, it is still not sent the rejected version.
    let xds_listen = cp.xds_listen();
    cp.process.kill();
    let cp = ControlPlane::start_with(
        &database,
        Some(&xds_listen),
        &["--control-plane-id", "cp-restarted"],
    );
    eventually("the data plane on the restarted control plane", || async {
        cp.data_planes().await.into_iter().find(|dp| {
            dp["node_id"] == "dp-nack"
                && dp["control_plane_id"] == "cp-restarted"
                && dp["connected"] == true
        })
    })
    .await;

    // The next version is sent, and applied: in all, one response more than before the bad
    // version (which came once) plus this one — the bad version was not sent again.
    let fixed = cp
        .write("PUT", "/api/v1/routes/r", Some(route("/fixed", "u")))
        .await;
    dp.applied(fixed).await;
    served_by(&dp, "/fixed", "nack").await;
    assert_eq!(dp.metric("gateway_config_rejected_total").await, Some(1.0));
    assert_eq!(
        dp.metric("gateway_config_responses_total").await,
        Some(received + 2.0)
    );
}

#[sqlx::test(migrations = false)]
async fn a_postgres_outage_under_two_replicas_refuses_writes_then_loses_no_version(
    pool: sqlx::PgPool,
) {
    let url = database_url(pool).await;
    let postgres: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let cut_a = Forwarder::start(postgres).await;
    let cut_b = Forwarder::start(postgres).await;
    let upstream = FakeUpstream::start("outage").await;
    let a = ControlPlane::start(&url_via(&url, cut_a.addr), None);
    let b = ControlPlane::start(&url_via(&url, cut_b.addr), None);
    let dp_a = DataPlane::start(&a.xds_url, "dp-outage-a");
    let dp_b = DataPlane::start(&b.xds_url, "dp-outage-b");
    a.write("PUT", "/api/v1/upstreams/u", Some(upstream.upstream()))
        .await;
    let before = a
        .write("PUT", "/api/v1/routes/r", Some(route("/before", "u")))
        .await;
    served_by(&dp_b, "/before", "outage").await;

    // The store goes away: every write is a 503 with the one error shape, and the data
    // planes keep serving.
    cut_a.cut();
    cut_b.cut();
    for cp in [&a, &b] {
        let (status, _, body) = cp
            .call("PUT", "/api/v1/routes/lost", Some(route("/lost", "u")))
            .await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    }
    served_by(&dp_a, "/before", "outage").await;
    served_by(&dp_b, "/before", "outage").await;

    // It returns: writes resume by themselves, and a write through A reaches B's data plane.
    cut_a.restore();
    cut_b.restore();
    let after = eventually("writes accepted again", || async {
        let (status, version, _) = a
            .call("PUT", "/api/v1/routes/r", Some(route("/after", "u")))
            .await;
        (status == 200).then_some(version).flatten()
    })
    .await;
    assert_eq!(
        after,
        before + 1,
        "no version was written during the outage"
    );
    served_by(&dp_b, "/after", "outage").await;
    served_by(&dp_a, "/after", "outage").await;
    let (_, _, versions) = b.call("GET", "/api/v1/versions", None).await;
    let numbers: Vec<u64> = versions["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=after).rev().collect::<Vec<_>>());
    let (_, _, lost) = b.call("GET", "/api/v1/routes/lost", None).await;
    assert_eq!(lost["error"]["code"], "not_found", "{lost}");
}

#[sqlx::test(migrations = false)]
async fn a_data_plane_moved_to_a_replica_that_is_behind_does_not_go_backwards(pool: sqlx::PgPool) {
    let url = database_url(pool).await;
    let postgres: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let cut_b = Forwarder::start(postgres).await;
    let upstream = FakeUpstream::start("ahead").await;
    let a = ControlPlane::start(&url, None);
    let b = ControlPlane::start(&url_via(&url, cut_b.addr), None);
    let dp = DataPlane::start(&format!("{},{}", a.xds_url, b.xds_url), "dp-ahead");
    a.write("PUT", "/api/v1/upstreams/u", Some(upstream.upstream()))
        .await;
    a.write("PUT", "/api/v1/routes/r", Some(route("/old", "u")))
        .await;

    // B loses the store, so it stays behind while A moves on.
    eventually("B caught up before the cut", || async {
        let (_, _, status) = b.call("GET", "/api/v1/status", None).await;
        (status["version"].as_u64()? >= 2).then_some(())
    })
    .await;
    cut_b.cut();
    let ahead = a
        .write("PUT", "/api/v1/routes/r", Some(route("/new", "u")))
        .await;
    dp.applied(ahead).await;
    served_by(&dp, "/new", "ahead").await;
    let (_, _, status) = b.call("GET", "/api/v1/status", None).await;
    assert!(
        status["version"].as_u64().unwrap() < ahead,
        "B is behind: {status}"
    );

    // A dies: the data plane moves to B, which is behind. It keeps what it serves.
    a.process.kill();
    eventually("the data plane on B", || async {
        (dp.metric("gateway_config_stream_connected").await? == 1.0).then_some(())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(dp.ready_version().await, Some(ahead));
        assert_eq!(dp.get("/new").await.1["upstream"], "ahead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // B sent it nothing older: it did not even have to refuse one.
    assert_eq!(dp.metric("gateway_config_rejected_total").await, Some(0.0));

    // B gets the store back, catches up, and the data plane follows B from there.
    cut_b.restore();
    let next = eventually("B writes again", || async {
        let (status, version, _) = b
            .call("PUT", "/api/v1/routes/r", Some(route("/newer", "u")))
            .await;
        (status == 200).then_some(version).flatten()
    })
    .await;
    assert_eq!(next, ahead + 1);
    served_by(&dp, "/newer", "ahead").await;
}
