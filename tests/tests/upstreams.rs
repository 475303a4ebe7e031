//! Upstreams with the real binaries: nodes added, removed and re-weighted through the admin API
//! while traffic flows, and node health on the data plane's status listener.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use gateway_e2e::{
    ControlPlane, DataPlane, FakeUpstream, Reply, ScriptedUpstream, eventually, sqlite_url,
};
use serde_json::{Value, json};

/// How long the changes-under-load test drives traffic.
const LOAD_FOR: Duration = Duration::from_secs(10);

fn node(upstream: &FakeUpstream, weight: u32) -> Value {
    json!({"host": "127.0.0.1", "port": upstream.addr.port(), "weight": weight})
}

/// Writes `body` and waits until the data plane serves that version.
async fn apply(cp: &ControlPlane, dp: &DataPlane, path: &str, body: Value) -> u64 {
    let version = cp.write("PUT", path, Some(body)).await;
    eventually(&format!("version {version} applied"), || async {
        dp.ready_version()
            .await
            .filter(|v| *v >= version)
            .map(|_| ())
    })
    .await;
    version
}

async fn status_json(dp: &DataPlane, path: &str) -> Value {
    reqwest::get(format!("{}{path}", dp.status_url))
        .await
        .expect("status listener reachable")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test]
async fn nodes_change_under_load_without_a_failed_request() {
    let mut fakes = Vec::new();
    for i in 0..5 {
        fakes.push(FakeUpstream::start(&format!("n{i}")).await);
    }
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = Arc::new(DataPlane::start(&cp.xds_url, "dp-lb"));
    let upstream = |nodes: Vec<Value>| json!({"nodes": nodes, "lb": "round_robin"});
    apply(
        &cp,
        &dp,
        "/api/v1/upstreams/pool",
        upstream(vec![node(&fakes[0], 1), node(&fakes[1], 1)]),
    )
    .await;
    apply(
        &cp,
        &dp,
        "/api/v1/routes/pool",
        json!({"paths": ["/pool/*"], "upstream_id": "pool"}),
    )
    .await;

    // Four clients, each looping until the load window closes (the loop bounds itself).
    let started = Instant::now();
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (dp, sent, failed) = (Arc::clone(&dp), Arc::clone(&sent), Arc::clone(&failed));
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while started.elapsed() < LOAD_FOR {
                let (status, body) = dp.get("/pool/x").await;
                sent.fetch_add(1, SeqCst);
                if status != 200 {
                    failed.fetch_add(1, SeqCst);
                    failures.push((status, body));
                }
            }
            failures
        }));
    }

    // Changes, cycled until the window closes: add, re-weight, drain (weight 0), remove.
    let steps = [
        vec![node(&fakes[0], 1), node(&fakes[1], 1), node(&fakes[2], 1)],
        vec![
            node(&fakes[0], 1),
            node(&fakes[1], 3),
            node(&fakes[2], 1),
            node(&fakes[3], 2),
        ],
        vec![
            node(&fakes[0], 0),
            node(&fakes[1], 3),
            node(&fakes[2], 1),
            node(&fakes[3], 2),
        ],
        vec![node(&fakes[1], 1), node(&fakes[3], 1), node(&fakes[4], 1)],
        vec![node(&fakes[4], 1)],
        vec![node(&fakes[0], 1), node(&fakes[1], 1)],
    ];
    let mut changes = 0;
    'load: loop {
        for nodes in &steps {
            if started.elapsed() >= LOAD_FOR {
                break 'load;
            }
            apply(&cp, &dp, "/api/v1/upstreams/pool", upstream(nodes.clone())).await;
            changes += 1;
        }
    }
    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.expect("client task"));
    }
    let (sent, failed) = (sent.load(SeqCst), failed.load(SeqCst));
    eprintln!("{sent} requests, {failed} failed, {changes} node-set changes");
    assert!(
        changes >= steps.len(),
        "only {changes} changes landed in the window"
    );
    assert!(sent > 1_000, "only {sent} requests in the window");
    assert_eq!(failed, 0, "failed requests: {failures:?}");
    for fake in &fakes {
        assert!(fake.count() > 0, "a node never got traffic");
    }

    // The status listener shows the final node set.
    let upstreams = status_json(&dp, "/upstreams").await;
    let pool = upstreams["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["key"] == "pool")
        .cloned()
        .expect("pool on /upstreams");
    assert!(pool["nodes"].as_array().is_some_and(|n| !n.is_empty()));
}

#[tokio::test]
async fn active_checks_mark_a_dead_node_and_retries_hide_it() {
    let live = FakeUpstream::start("live").await;
    let dead_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, "dp-health");
    apply(
        &cp,
        &dp,
        "/api/v1/upstreams/u",
        json!({
            "nodes": [node(&live, 1), {"host": "127.0.0.1", "port": dead_port}],
            "retries": {"count": 1},
            "health_check": {"active": {"path": "/healthz", "interval_ms": 100, "timeout_ms": 100, "unhealthy_after": 2}}
        }),
    )
    .await;
    apply(
        &cp,
        &dp,
        "/api/v1/routes/r",
        json!({"paths": ["/*"], "upstream_id": "u"}),
    )
    .await;
    let dead = format!("127.0.0.1:{dead_port}");
    eventually("the dead node marked unhealthy", || async {
        let upstreams = status_json(&dp, "/upstreams").await;
        let nodes = upstreams["upstreams"][0]["nodes"].as_array().cloned()?;
        let state = |address: &str| {
            nodes
                .iter()
                .find(|n| n["address"] == address)
                .map(|n| n["state"].clone())
        };
        (state(&dead)? == "unhealthy" && state(&live.addr.to_string())? == "healthy").then_some(())
    })
    .await;
    for _ in 0..50 {
        let (status, body) = dp.get("/anything").await;
        assert_eq!((status, &body["upstream"]), (200, &json!("live")));
    }
    let metrics = reqwest::get(format!("{}/metrics", dp.status_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!("gateway_upstream_node_healthy{{upstream=\"u\",node=\"{dead}\"}} 0");
    assert!(
        metrics.lines().any(|l| l == line),
        "{line} missing:\n{metrics}"
    );
}

#[tokio::test]
async fn timeouts_answer_504_unreachable_502_and_posts_are_not_retried() {
    // Two nodes that answer 503 (and count it), one that is slow, one that is gone.
    let busy = [
        ScriptedUpstream::start(|_| Reply::json(json!({})).with_status(503)).await,
        ScriptedUpstream::start(|_| Reply::json(json!({})).with_status(503)).await,
    ];
    let slow =
        ScriptedUpstream::start(|_| Reply::json(json!({})).after(Duration::from_secs(5))).await;
    let dead_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, "dp-errors");
    let at = |addr: std::net::SocketAddr| json!({"host": "127.0.0.1", "port": addr.port()});
    apply(
        &cp,
        &dp,
        "/api/v1/routes/busy",
        json!({"paths": ["/busy"], "upstream": {
            "nodes": [at(busy[0].addr), at(busy[1].addr)],
            "retries": {"count": 1, "on": ["status_503"]}
        }}),
    )
    .await;
    apply(
        &cp,
        &dp,
        "/api/v1/routes/slow",
        json!({"paths": ["/slow"], "upstream": {"nodes": [at(slow.addr)]}, "timeouts": {"connect_ms": 1000, "read_ms": 200}}),
    )
    .await;
    apply(
        &cp,
        &dp,
        "/api/v1/routes/dead",
        json!({"paths": ["/dead"], "upstream": {"nodes": [{"host": "127.0.0.1", "port": dead_port}]}}),
    )
    .await;
    let served = || {
        busy.iter()
            .map(|u| u.exchanges.lock().unwrap().len())
            .sum::<usize>()
    };

    let (status, _, _) = dp.send("GET", "/busy", &[]).await;
    assert_eq!(
        (status, served()),
        (503, 2),
        "a GET is retried on the other node"
    );
    let (status, _, _) = dp.send("POST", "/busy", &[]).await;
    assert_eq!(
        (status, served()),
        (503, 3),
        "a POST is not retried by default"
    );

    let (status, headers, body) = dp.send("GET", "/slow", &[]).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (504, &json!("upstream_timeout"))
    );
    assert_eq!(headers["content-type"], "application/json");
    let (status, _, body) = dp.send("GET", "/dead", &[]).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (502, &json!("upstream_unavailable"))
    );
}
