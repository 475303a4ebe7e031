//! `limit-count` with `policy: fleet`, end to end: one control plane, three data planes, no
//! Redis. Each data plane admits its share of the budget, the share following the fleet's size
//! as the control plane pushes it on the config stream.

use std::time::Duration;

use gateway_e2e::{ControlPlane, DataPlane, FakeUpstream, eventually, sqlite_url, unique};
use serde_json::json;

/// The fleet-wide budget per window.
const BUDGET: usize = 30;

/// A `fleet` limit of `count` per day on the whole route: a day-long window, so that the test
/// does not straddle two (unless it runs at midnight UTC).
fn fleet_limit(path: &str, count: usize) -> serde_json::Value {
    json!({"paths": [path], "upstream_id": "app", "plugins": {
        "limit-count": {"count": count, "time_window": 86400, "key": "route",
                        "rejected_code": 429, "policy": "fleet"}
    }})
}

/// Sends `requests` requests to `path` through each of `planes`; how many were admitted.
async fn admitted(planes: &[&DataPlane], path: &str, requests: usize) -> usize {
    let mut admitted = 0;
    // Interleaved, as a load balancer in front would spread them.
    for _ in 0..requests {
        for dp in planes {
            let (status, _, body) = dp.send("GET", path, &[]).await;
            match status {
                200 => admitted += 1,
                429 => {}
                other => panic!("{path}: {other} {body}"),
            }
        }
    }
    admitted
}

/// Waits until every one of `planes` admits `expected` of the probe route's count: the share
/// it reports in `X-RateLimit-Limit` (the probe's own budget is large, so probing it does not
/// touch the routes under test).
async fn shares_become(planes: &[&DataPlane], expected: u64) {
    for dp in planes {
        eventually(
            &format!("a share of {expected} on {}", dp.proxy_url),
            || async {
                let (status, headers, _) = dp.send("GET", "/probe", &[]).await;
                let limit = headers
                    .get("x-ratelimit-limit")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                (status == 200 && limit == Some(expected)).then_some(())
            },
        )
        .await;
    }
}

#[tokio::test]
async fn three_data_planes_share_one_budget_and_two_take_it_all_when_one_leaves() {
    let upstream = FakeUpstream::start("app").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp1 = DataPlane::start(&cp.xds_url, &unique("fleet-1"));
    let dp2 = DataPlane::start(&cp.xds_url, &unique("fleet-2"));
    let mut dp3 = DataPlane::start(&cp.xds_url, &unique("fleet-3"));
    cp.write("PUT", "/api/v1/upstreams/app", Some(upstream.upstream()))
        .await;
    cp.write(
        "PUT",
        "/api/v1/routes/probe",
        Some(fleet_limit("/probe", 300_000)),
    )
    .await;
    cp.write(
        "PUT",
        "/api/v1/routes/three",
        Some(fleet_limit("/three", BUDGET)),
    )
    .await;
    // Written after the streams carried fleet messages: those are never answered, and the
    // config versions still flow.
    let version = cp
        .write(
            "PUT",
            "/api/v1/routes/two",
            Some(fleet_limit("/two", BUDGET)),
        )
        .await;
    for dp in [&dp1, &dp2, &dp3] {
        dp.applied(version).await;
    }
    shares_become(&[&dp1, &dp2, &dp3], 100_000).await;

    // Twice the budget offered, spread evenly: the fleet admits the budget, within rounding.
    let three = admitted(&[&dp1, &dp2, &dp3], "/three", 2 * BUDGET / 3).await;
    assert!(
        three.abs_diff(BUDGET) <= 3,
        "three data planes admitted {three} of a budget of {BUDGET}"
    );

    // One leaves; within a few seconds the two left admit the whole budget between them.
    let stopped = tokio::task::spawn_blocking(move || {
        let exited = dp3.process.terminate_within(Duration::from_secs(20));
        (exited, dp3)
    })
    .await
    .expect("terminate");
    assert!(stopped.0, "the third data plane did not exit on SIGTERM");
    shares_become(&[&dp1, &dp2], 150_000).await;
    let two = admitted(&[&dp1, &dp2], "/two", BUDGET).await;
    assert!(
        two.abs_diff(BUDGET) <= 3,
        "two data planes admitted {two} of a budget of {BUDGET}"
    );
    // Each stopped at its own share: the budget was not admitted twice over.
    let again = admitted(&[&dp1, &dp2], "/two", 5).await;
    assert_eq!(again, 0, "the budget was spent");

    // The streams still carry config after the fleet changed.
    let version = cp.write("DELETE", "/api/v1/routes/three", None).await;
    dp1.applied(version).await;
    dp2.applied(version).await;
}
