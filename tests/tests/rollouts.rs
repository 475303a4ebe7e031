//! The data planes' reports and staged rollouts, with the real binaries: labels and traffic per
//! config version reach the fleet view.

use gateway_e2e::{ControlPlane, DataPlane, Reply, ScriptedUpstream, eventually, sqlite_url};
use serde_json::{Value, json};

/// The fleet view's entry for `node`.
async fn fleet_entry(cp: &ControlPlane, node: &str) -> Option<Value> {
    cp.data_planes()
        .await
        .into_iter()
        .find(|dp| dp["node_id"] == node && dp["connected"] == true)
}

#[tokio::test]
async fn a_data_planes_labels_and_traffic_per_version_reach_the_fleet_view() {
    let cp = ControlPlane::start(&sqlite_url(), None);
    let upstream = ScriptedUpstream::start(|request| {
        if request.uri.starts_with("/fail") {
            Reply::text("down").with_status(503)
        } else {
            Reply::text("ok")
        }
    })
    .await;
    let dp = DataPlane::start_with(
        &cp.xds_url,
        "dp-labelled",
        &[
            "--labels",
            "zone=a,tier=edge",
            "--report-interval-ms",
            "100",
        ],
    );
    cp.write("PUT", "/api/v1/upstreams/u", Some(upstream.upstream()))
        .await;
    let v = cp
        .write(
            "PUT",
            "/api/v1/routes/r",
            Some(json!({"paths": ["/*"], "upstream_id": "u"})),
        )
        .await;
    dp.applied(v).await;
    for path in ["/a", "/b", "/fail"] {
        dp.get(path).await;
    }
    let entry = eventually("3 requests, one 5xx, reported for the version", || async {
        let entry = fleet_entry(&cp, "dp-labelled").await?;
        let traffic = entry["traffic"].as_array()?;
        traffic
            .iter()
            .any(|t| t["version"] == v && t["requests"] == 3 && t["errors_5xx"] == 1)
            .then_some(entry)
    })
    .await;
    assert_eq!(entry["labels"], json!({"zone": "a", "tier": "edge"}));

    // Counts are per version: the next version starts from zero, the last one's stay.
    let next = cp
        .write(
            "PUT",
            "/api/v1/routes/r2",
            Some(json!({"paths": ["/other"], "upstream_id": "u"})),
        )
        .await;
    dp.applied(next).await;
    dp.get("/fail").await;
    eventually(
        "the next version's 5xx reported beside the last one's",
        || async {
            let entry = fleet_entry(&cp, "dp-labelled").await?;
            let traffic = entry["traffic"].as_array()?.clone();
            let of = |version: u64| traffic.iter().find(|t| t["version"] == version).cloned();
            let (old, new) = (of(v)?, of(next)?);
            (old["requests"] == 3 && new["requests"] == 1 && new["errors_5xx"] == 1).then_some(())
        },
    )
    .await;
}
