//! Observability end to end: the access log written by a real data plane (and reopened after a
//! rotation), the latency histograms and counters on its `/metrics`, and
//! `X-Gateway-Config-Version` on its answers.

use std::path::{Path, PathBuf};
use std::process::Command;

use gateway_e2e::{ControlPlane, DataPlane, FakeUpstream, eventually, sqlite_url, unique};
use serde_json::{Value, json};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A fresh directory for one test's files.
fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("observability"));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// The JSON lines of the access log at `path` (none while it does not exist).
fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

/// The data plane's `/metrics` text.
async fn metrics(dp: &DataPlane) -> String {
    reqwest::get(format!("{}/metrics", dp.status_url))
        .await
        .expect("the status listener answers")
        .text()
        .await
        .expect("a text body")
}

/// The value of the series written exactly as `series` (name and labels) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
}

/// `GET path` through the data plane with `headers`: status, config-version header, body.
async fn get(
    dp: &DataPlane,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Vec<u8>) {
    let mut request = reqwest::Client::new().get(format!("{}{path}", dp.proxy_url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the proxy answers");
    let status = response.status().as_u16();
    let version = response
        .headers()
        .get("x-gateway-config-version")
        .map(|v| v.to_str().expect("ASCII").to_owned());
    let body = response.bytes().await.expect("a body").to_vec();
    (status, version, body)
}

#[tokio::test]
async fn access_log_histograms_and_config_version_header() {
    let app = FakeUpstream::start("app").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dir = scratch_dir();
    let log = dir.join("access.log");
    let dp = DataPlane::start_with(
        &cp.xds_url,
        &unique("dp"),
        &[
            "--access-log",
            log.to_str().expect("a UTF-8 path"),
            "--expose-config-version",
        ],
    );
    cp.write("PUT", "/api/v1/upstreams/app", Some(app.upstream()))
        .await;
    cp.write(
        "PUT",
        "/api/v1/routes/api",
        Some(json!({"paths": ["/api/*"], "upstream_id": "app"})),
    )
    .await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/routes/both",
            Some(
                json!({"paths": ["/both"], "batch": {"merge": "object", "requests": [
                    {"name": "one", "upstream_id": "app", "path": "/one"},
                    {"name": "two", "upstream_id": "app", "path": "/two"}
                ]}}),
            ),
        )
        .await;
    dp.applied(version).await;
    let version_text = version.to_string();

    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let (status, stamped, proxied) =
        get(&dp, "/api/orders?id=7", &[("traceparent", &traceparent)]).await;
    assert_eq!(status, 200);
    assert_eq!(stamped.as_deref(), Some(version_text.as_str()));
    let (status, stamped, not_found) = get(&dp, "/nowhere", &[]).await;
    assert_eq!(status, 404);
    assert_eq!(stamped.as_deref(), Some(version_text.as_str()));
    let (status, stamped, merged) = get(&dp, "/both", &[]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&merged));
    assert_eq!(stamped.as_deref(), Some(version_text.as_str()));

    let lines = eventually("three access-log lines", || async {
        let lines = log_lines(&log);
        (lines.len() >= 3).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let (api, missing, batch) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!(api["route"], "api");
    assert_eq!(api["path"], "/api/orders");
    assert_eq!(api["method"], "GET");
    assert_eq!(api["status"], 200);
    assert_eq!(api["bytes_out"], proxied.len());
    assert_eq!(api["bytes_in"], 0);
    assert_eq!(api["config_version"], version);
    assert_eq!(api["trace_id"], TRACE_ID);
    assert_eq!(api["upstream"], format!("127.0.0.1:{}", app.addr.port()));
    assert_eq!(api["client"], "127.0.0.1");
    assert!(
        api["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{api}"
    );
    assert!(api["upstream_latency_ms"].as_f64().is_some(), "{api}");
    assert!(
        api["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{api}"
    );
    assert!(api["request_id"].as_str().is_some_and(|id| !id.is_empty()));

    assert_eq!(missing["route"], Value::Null);
    assert_eq!(missing["upstream"], Value::Null);
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["bytes_out"], not_found.len());
    assert_eq!(missing["trace_id"], Value::Null);
    assert_eq!(missing["config_version"], version);

    assert_eq!(batch["route"], "both");
    assert_eq!(batch["status"], 200);
    assert_eq!(batch["subrequests"], 2);
    assert_eq!(batch["bytes_out"], merged.len());

    // The histograms count those requests: three client requests, three upstream exchanges
    // (one proxied, two sub-requests), every one under the +Inf bucket and none below 0.
    let text = metrics(&dp).await;
    assert!(
        text.contains("# TYPE gateway_request_duration_seconds histogram"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "gateway_request_duration_seconds_count"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "gateway_request_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "gateway_request_duration_seconds_bucket{le=\"10\"}"),
        Some(3.0),
        "{text}"
    );
    assert!(sample(&text, "gateway_request_duration_seconds_sum").is_some_and(|s| s > 0.0));
    assert_eq!(
        sample(&text, "gateway_upstream_duration_seconds_count"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "gateway_upstream_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        Some(3.0),
        "{text}"
    );
    // Cumulative: each bucket holds at least the one below it.
    let buckets: Vec<f64> = text
        .lines()
        .filter(|line| line.starts_with("gateway_request_duration_seconds_bucket{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(buckets.len(), 14, "{text}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(
        sample(&text, "gateway_batch_subrequests_total{outcome=\"ok\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample(&text, "gateway_access_log_dropped_total"), Some(0.0));

    // logrotate: the file is moved, the data plane signalled; the next lines go to a new file.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate the log");
    let signalled = Command::new("kill")
        .args(["-USR1", &dp.process.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(signalled.success());
    let (status, _, _) = get(&dp, "/api/after-rotation", &[]).await;
    assert_eq!(status, 200, "the data plane survives the signal");
    eventually("the next line in a new file", || async {
        log_lines(&log)
            .iter()
            .any(|line| line["path"] == "/api/after-rotation")
            .then_some(())
    })
    .await;
    assert_eq!(
        log_lines(&rotated).len(),
        3,
        "the moved file keeps its lines"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_the_flags_there_is_no_header_and_no_log() {
    let app = FakeUpstream::start("app").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, &unique("dp"));
    cp.write("PUT", "/api/v1/upstreams/app", Some(app.upstream()))
        .await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/routes/api",
            Some(json!({"paths": ["/api/*"], "upstream_id": "app"})),
        )
        .await;
    dp.applied(version).await;
    let (status, stamped, _) = get(&dp, "/api/x", &[]).await;
    assert_eq!((status, stamped), (200, None));
    let (status, stamped, _) = get(&dp, "/nowhere", &[]).await;
    assert_eq!((status, stamped), (404, None));
    // The histograms count with or without the log.
    assert_eq!(
        dp.metric("gateway_request_duration_seconds_count").await,
        Some(2.0)
    );
}

#[tokio::test]
async fn redis_errors_of_limit_count_are_counted() {
    // A port nothing listens on: every Redis call fails, and limit-count counts locally.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let redis_url = format!("redis://127.0.0.1:{closed}");
    let app = FakeUpstream::start("app").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start_with(&cp.xds_url, &unique("dp"), &["--redis-url", &redis_url]);
    cp.write("PUT", "/api/v1/upstreams/app", Some(app.upstream()))
        .await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/routes/limited",
            Some(json!({
                "paths": ["/limited"],
                "upstream_id": "app",
                "plugins": {"limit-count": {"count": 1, "time_window": 60, "key": "remote_addr", "rejected_code": 429}}
            })),
        )
        .await;
    dp.applied(version).await;
    assert_eq!(
        dp.metric("gateway_ratelimit_redis_errors_total").await,
        Some(0.0)
    );

    let (status, _, _) = get(&dp, "/limited", &[]).await;
    assert_eq!(status, 200, "a Redis outage is not an outage of the route");
    // Counted locally: the limit still holds on this data plane.
    let (status, _, _) = get(&dp, "/limited", &[]).await;
    assert_eq!(status, 429);
    assert_eq!(
        dp.metric("gateway_ratelimit_redis_errors_total").await,
        Some(2.0)
    );
}
