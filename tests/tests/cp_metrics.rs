//! The control plane's `/metrics`: versions written, write and push latency, streams, NACKs
//! and the fleet's gauges, scraped without a token as Prometheus would.

use gateway_e2e::{ControlPlane, DataPlane, eventually, sqlite_url};
use serde_json::json;

/// The value of the unlabelled sample `name` in the control plane's exposition.
async fn sample(cp: &ControlPlane, name: &str) -> Option<f64> {
    let response = reqwest::get(format!("{}/metrics", cp.admin_url))
        .await
        .ok()?;
    assert_eq!(response.status(), 200, "no token needed");
    let text = response.text().await.ok()?;
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
}

async fn reaches(cp: &ControlPlane, name: &str, at_least: f64) {
    eventually(&format!("{name} ≥ {at_least}"), || async {
        (sample(cp, name).await? >= at_least).then_some(())
    })
    .await
}

#[tokio::test]
async fn the_control_plane_counts_writes_pushes_and_rejections() {
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start_with(&cp.xds_url, "dp-metrics", &["--disable-plugins", "cors"]);
    let upstream = json!({"nodes": [{"host": "127.0.0.1", "port": 9}]});
    let good = cp.write("PUT", "/api/v1/upstreams/u", Some(upstream)).await;
    dp.applied(good).await;

    assert_eq!(
        sample(&cp, "gateway_cp_versions_written_total").await,
        Some(1.0)
    );
    assert_eq!(
        sample(&cp, "gateway_cp_write_duration_seconds_count").await,
        Some(1.0)
    );
    assert_eq!(
        sample(&cp, "gateway_cp_config_version").await,
        Some(good as f64)
    );
    assert_eq!(sample(&cp, "gateway_cp_streams_open").await, Some(1.0));
    reaches(&cp, "gateway_cp_push_duration_seconds_count", 1.0).await;
    reaches(&cp, "gateway_fleet_data_planes_current", 1.0).await;
    assert_eq!(
        sample(&cp, "gateway_fleet_data_planes_connected").await,
        Some(1.0)
    );

    // A refused write is counted and writes no version.
    let (status, _, _) = cp
        .call(
            "PUT",
            "/api/v1/routes/r",
            Some(json!({"paths": ["/x"], "upstream_id": "missing"})),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        sample(&cp, "gateway_cp_writes_refused_total").await,
        Some(1.0)
    );
    assert_eq!(
        sample(&cp, "gateway_cp_versions_written_total").await,
        Some(1.0)
    );

    // A version the data plane cannot run: one NACK, and the fleet gauges say so.
    cp.write(
        "PUT",
        "/api/v1/routes/r",
        Some(json!({"paths": ["/x"], "upstream_id": "u", "plugins": {"cors": {}}})),
    )
    .await;
    reaches(&cp, "gateway_cp_nacks_total", 1.0).await;
    reaches(&cp, "gateway_fleet_data_planes_rejected_current", 1.0).await;
    assert_eq!(
        sample(&cp, "gateway_fleet_data_planes_current").await,
        Some(0.0)
    );

    drop(dp);
    eventually("the stream closed", || async {
        (sample(&cp, "gateway_cp_streams_open").await? == 0.0).then_some(())
    })
    .await;
}
