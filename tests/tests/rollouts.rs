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

/// Six data planes reporting every 100 ms, with `extra(i)` flags each.
fn fleet_of_six(cp: &ControlPlane, extra: impl Fn(usize) -> Vec<String>) -> Vec<DataPlane> {
    (0..6)
        .map(|i| {
            let mut args = vec!["--report-interval-ms".to_owned(), "100".to_owned()];
            args.extend(extra(i));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            DataPlane::start_with(&cp.xds_url, &format!("dp-{i}"), &args)
        })
        .collect()
}

/// The version each data plane serves, in fleet order (0: none yet).
async fn versions(dps: &[DataPlane]) -> Vec<u64> {
    let mut out = Vec::with_capacity(dps.len());
    for dp in dps {
        out.push(dp.ready_version().await.unwrap_or(0));
    }
    out
}

/// An upstream answering 200 on `/ok…` and 500 on `/bad…`, a route to it, and the version.
async fn base_config(cp: &ControlPlane, upstream: &ScriptedUpstream) -> u64 {
    cp.write("PUT", "/api/v1/upstreams/u", Some(upstream.upstream()))
        .await;
    cp.write(
        "PUT",
        "/api/v1/routes/r",
        Some(json!({"paths": ["/ok/*"], "upstream_id": "u"})),
    )
    .await
}

async fn scripted() -> ScriptedUpstream {
    ScriptedUpstream::start(|request| {
        if request.uri.starts_with("/bad") {
            Reply::text("broken").with_status(500)
        } else {
            Reply::text("ok")
        }
    })
    .await
}

/// `GET /api/v1/rollouts/{id}`; `Null` until the rollout exists (a control plane starts it
/// within a tick of the write).
async fn rollout(cp: &ControlPlane, id: u64) -> Value {
    let (status, _, body) = cp
        .call("GET", &format!("/api/v1/rollouts/{id}"), None)
        .await;
    if status == 200 { body } else { Value::Null }
}

#[tokio::test]
async fn a_good_version_reaches_the_fleet_stage_by_stage() {
    let cp = ControlPlane::start(&sqlite_url(), None);
    let upstream = scripted().await;
    let dps = fleet_of_six(&cp, |_| Vec::new());
    let base = base_config(&cp, &upstream).await;
    for dp in &dps {
        dp.applied(base).await;
    }
    let (status, _, _) = cp
        .call(
            "PUT",
            "/api/v1/rollout-policy",
            Some(
                json!({"stages": [{"percent": 34, "bake_s": 3}, {"percent": 100}],
                        "halt_on": {"error_rate_increase": 0.2, "min_requests": 5}}),
            ),
        )
        .await;
    assert_eq!(status, 201);
    let next = cp
        .write(
            "PUT",
            "/api/v1/routes/r2",
            Some(json!({"paths": ["/ok2/*"], "upstream_id": "u"})),
        )
        .await;
    let started = std::time::Instant::now();
    let mut timeline = Vec::new();
    let mut saw_canary = false;
    loop {
        let now = versions(&dps).await;
        timeline.push((started.elapsed().as_millis(), now.clone()));
        let on_next = now.iter().filter(|&&v| v == next).count();
        // Stage 0: round(34% of 6) = 2 data planes, never more, until the bake ends.
        if started.elapsed() < std::time::Duration::from_millis(2500) {
            assert!(on_next <= 2, "{now:?}");
        }
        saw_canary |= on_next == 2;
        if on_next == 6 {
            break;
        }
        assert!(started.elapsed().as_secs() < 20, "{timeline:?}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(saw_canary, "{timeline:?}");
    for (ms, row) in &timeline {
        println!("timeline {ms} ms: {row:?}");
    }
    let done = eventually("the rollout completed", || async {
        let body = rollout(&cp, next).await;
        (body["state"] == "completed").then_some(body)
    })
    .await;
    assert_eq!(done["previous_version"], base);
    let (_, _, list) = cp.call("GET", "/api/v1/rollouts", None).await;
    assert_eq!(list["items"][0]["id"], next);
}

/// Sets `policy`; must be accepted.
async fn set_policy(cp: &ControlPlane, policy: Value) {
    let (status, _, body) = cp.call("PUT", "/api/v1/rollout-policy", Some(policy)).await;
    assert!(status == 200 || status == 201, "{status} {body}");
}

/// The URL of `/x` through each data plane, for a client load.
fn keep_traffic(dps: &[DataPlane]) -> Vec<String> {
    dps.iter().map(|dp| format!("{}/x", dp.proxy_url)).collect()
}

#[tokio::test]
async fn a_canary_answering_5xx_halts_the_rollout_and_goes_back() {
    let cp = ControlPlane::start(&sqlite_url(), None);
    let upstream = scripted().await;
    let dps = fleet_of_six(&cp, |_| Vec::new());
    cp.write("PUT", "/api/v1/upstreams/u", Some(upstream.upstream()))
        .await;
    let rewrite = |to: &str| json!({"paths": ["/*"], "upstream_id": "u", "plugins": {"proxy-rewrite": {"uri": to}}});
    let base = cp
        .write("PUT", "/api/v1/routes/r", Some(rewrite("/ok")))
        .await;
    for dp in &dps {
        dp.applied(base).await;
    }
    set_policy(
        &cp,
        json!({"stages": [{"percent": 34, "bake_s": 30}, {"percent": 100}],
               "halt_on": {"error_rate_increase": 0.2, "min_requests": 10}}),
    )
    .await;
    let urls = keep_traffic(&dps);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for url in &urls {
                    let _ = client.get(url).send().await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    };
    let bad = cp
        .write("PUT", "/api/v1/routes/r", Some(rewrite("/bad")))
        .await;
    let started = std::time::Instant::now();
    let mut ever_on_bad = std::collections::BTreeSet::new();
    let mut halted_at = None;
    let mut back_at = None;
    while back_at.is_none() {
        let now = versions(&dps).await;
        for (i, v) in now.iter().enumerate() {
            if *v == bad {
                ever_on_bad.insert(i);
            }
        }
        if halted_at.is_none() && rollout(&cp, bad).await["state"] == "halted" {
            halted_at = Some(started.elapsed());
        }
        if let Some(halted) = halted_at
            && now.iter().all(|&v| v == base)
        {
            back_at = Some(started.elapsed());
            println!(
                "halted at {} ms, every data plane back on {base} at {} ms ({} ms after the halt)",
                halted.as_millis(),
                started.elapsed().as_millis(),
                (started.elapsed() - halted).as_millis()
            );
            assert!(started.elapsed() - halted < std::time::Duration::from_secs(10));
        }
        assert!(
            started.elapsed().as_secs() < 30,
            "never halted and went back: {now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.await;
    assert!(
        ever_on_bad.len() <= 2,
        "only the canary ran it: {ever_on_bad:?}"
    );
    let halted = rollout(&cp, bad).await;
    assert!(
        halted["halt_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("5xx"),
        "{halted}"
    );
    let (_, _, status) = cp.call("GET", "/api/v1/status", None).await;
    assert_eq!(status["rollout"]["state"], "halted");
    // Promote and abort are for rollouts in progress.
    let (code, _, _) = cp
        .call("POST", &format!("/api/v1/rollouts/{bad}/promote"), None)
        .await;
    assert_eq!(code, 409);
    let (code, _, _) = cp.call("POST", "/api/v1/rollouts/999/abort", None).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn a_version_the_canary_nacks_halts_and_the_rest_never_get_it() {
    let cp = ControlPlane::start(&sqlite_url(), None);
    let upstream = scripted().await;
    // Zone a is the canary, and it cannot run response-rewrite.
    let dps = fleet_of_six(&cp, |i| {
        if i < 2 {
            [
                "--labels",
                "zone=a",
                "--disable-plugins",
                "response-rewrite",
            ]
            .map(str::to_owned)
            .to_vec()
        } else {
            vec!["--labels".to_owned(), "zone=b".to_owned()]
        }
    });
    let base = base_config(&cp, &upstream).await;
    for dp in &dps {
        dp.applied(base).await;
    }
    set_policy(
        &cp,
        json!({"cohort": {"by": "labels"},
               "stages": [{"labels": {"zone": "a"}, "bake_s": 30}, {"percent": 100}]}),
    )
    .await;
    let bad = cp
        .write(
            "PUT",
            "/api/v1/routes/r",
            Some(json!({"paths": ["/ok/*"], "upstream_id": "u",
                        "plugins": {"response-rewrite": {"body": "x"}}})),
        )
        .await;
    let halted = eventually("the NACK halts the rollout", || async {
        let body = rollout(&cp, bad).await;
        (body["state"] == "halted").then_some(body)
    })
    .await;
    assert!(
        halted["halt_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("rejected"),
        "{halted}"
    );
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(versions(&dps).await, [base; 6]);
    for dp in &dps[2..] {
        assert_eq!(
            dp.metric("gateway_config_rejected_total")
                .await
                .unwrap_or(0.0),
            0.0
        );
    }

    // A good version after it rolls out from the last completed one; promote skips the bake,
    // and abort sends everyone back.
    let good = cp
        .write(
            "PUT",
            "/api/v1/routes/r",
            Some(json!({"paths": ["/ok/*"], "upstream_id": "u"})),
        )
        .await;
    let started = eventually("a rollout of the good version", || async {
        let body = rollout(&cp, good).await;
        (body["state"] == "in_progress").then_some(body)
    })
    .await;
    assert_eq!(started["previous_version"], base);
    let (code, _, promoted) = cp
        .call("POST", &format!("/api/v1/rollouts/{good}/promote"), None)
        .await;
    assert_eq!(code, 200, "{promoted}");
    assert_eq!(promoted["state"], "completed");
    for dp in &dps {
        dp.applied(good).await;
    }
    let last = cp
        .write(
            "PUT",
            "/api/v1/routes/r3",
            Some(json!({"paths": ["/three"], "upstream_id": "u"})),
        )
        .await;
    eventually("zone a on the newest version", || async {
        (versions(&dps).await[..2] == [last, last]).then_some(())
    })
    .await;
    let (code, _, aborted) = cp
        .call("POST", &format!("/api/v1/rollouts/{last}/abort"), None)
        .await;
    assert_eq!(code, 200, "{aborted}");
    eventually("every data plane back on the promoted version", || async {
        (versions(&dps).await == [good; 6]).then_some(())
    })
    .await;
}
