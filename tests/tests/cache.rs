//! `proxy-cache` and the batch sub-request cache end to end: a real control plane and data
//! plane, an in-test origin that counts what reaches it and answers per path (headers the
//! shared fake upstreams cannot send: `Cache-Control`, large bodies, slow answers, failures).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gateway_e2e::{ControlPlane, DataPlane, sqlite_url, unique};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// An origin on 127.0.0.1:0 that counts requests per path and answers by path:
/// - `/c/nostore…`: `Cache-Control: no-store`;
/// - `/c/slow…`: after 300 ms;
/// - `/c/big/N`: a body of N bytes;
/// - anything else: a small JSON body naming the path and its count.
///
/// While `failing` is set every answer is a 503.
struct Origin {
    addr: SocketAddr,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    failing: Arc<AtomicBool>,
    /// The accept loop and every connection's task: aborted by [`Origin::stop`].
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl Origin {
    async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("local addr");
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let failing = Arc::new(AtomicBool::new(false));
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let (counts2, failing2, tasks2) = (counts.clone(), failing.clone(), tasks.clone());
        tasks.lock().unwrap().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (counts, failing) = (counts2.clone(), failing2.clone());
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (counts, failing) = (counts.clone(), failing.clone());
                    async move { Ok::<_, Infallible>(answer(&request, &counts, &failing).await) }
                });
                tasks2.lock().unwrap().spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin {
            addr,
            counts,
            failing,
            tasks,
        }
    }

    fn upstream(&self) -> Value {
        json!({"nodes": [{"host": "127.0.0.1", "port": self.addr.port()}]})
    }

    /// Requests that reached it for `path` (with its query).
    fn count(&self, path: &str) -> usize {
        self.counts.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Closes its listener and every connection: the node is down.
    fn stop(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

async fn answer(
    request: &Request<hyper::body::Incoming>,
    counts: &Mutex<HashMap<String, usize>>,
    failing: &AtomicBool,
) -> Response<Full<Bytes>> {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let n = {
        let mut counts = counts.lock().unwrap();
        let n = counts.entry(path.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let mut response = Response::builder().header("content-type", "application/json");
    if failing.load(Ordering::SeqCst) {
        return response
            .status(503)
            .body(Full::new(Bytes::from_static(b"{\"down\": true}")))
            .unwrap();
    }
    if path.starts_with("/c/nostore") {
        response = response.header("cache-control", "no-store");
    }
    if path.starts_with("/c/slow") {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let body = match path.strip_prefix("/c/big/") {
        Some(size) => Bytes::from(vec![b'x'; size.parse().unwrap_or(0)]),
        None => Bytes::from(json!({"path": path, "n": n}).to_string()),
    };
    response.body(Full::new(body)).unwrap()
}

/// A control plane, a data plane, the origin as upstream `origin`, and `route` written as
/// route `r`.
async fn setup(route: Value) -> (ControlPlane, DataPlane, Origin) {
    let origin = Origin::start().await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, &unique("dp"));
    cp.write("PUT", "/api/v1/upstreams/origin", Some(origin.upstream()))
        .await;
    let version = cp.write("PUT", "/api/v1/routes/r", Some(route)).await;
    dp.applied(version).await;
    (cp, dp, origin)
}

fn cache_status(headers: &reqwest::header::HeaderMap) -> &str {
    headers
        .get("x-cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn a_second_get_is_a_hit_and_no_store_is_never_cached() {
    let (_cp, dp, origin) = setup(json!({
        "paths": ["/c/*"],
        "upstream_id": "origin",
        "plugins": {"proxy-cache": {"cache_control": true, "cache_ttl": 300}}
    }))
    .await;

    let (status, headers, first) = dp.send("GET", "/c/item?id=7", &[]).await;
    assert_eq!((status, cache_status(&headers)), (200, "MISS"), "{first}");
    let (status, headers, second) = dp.send("GET", "/c/item?id=7", &[]).await;
    assert_eq!((status, cache_status(&headers)), (200, "HIT"), "{second}");
    assert_eq!(first, second, "the hit is the stored answer");
    assert!(headers.contains_key("age"));
    assert_eq!(origin.count("/c/item?id=7"), 1, "the node saw one request");
    // Another query is another key.
    let (_, headers, _) = dp.send("GET", "/c/item?id=8", &[]).await;
    assert_eq!(cache_status(&headers), "MISS");

    for _ in 0..2 {
        let (status, headers, _) = dp.send("GET", "/c/nostore", &[]).await;
        assert_eq!((status, cache_status(&headers)), (200, "MISS"));
    }
    assert_eq!(
        origin.count("/c/nostore"),
        2,
        "no-store answers are never stored"
    );

    // A request's own no-store bypasses the cache; a POST is no cached method.
    let (_, headers, _) = dp
        .send("GET", "/c/item?id=7", &[("cache-control", "no-store")])
        .await;
    assert_eq!(cache_status(&headers), "BYPASS");
    let (_, headers, _) = dp.send("POST", "/c/item?id=7", &[]).await;
    assert_eq!(cache_status(&headers), "BYPASS");
    assert_eq!(origin.count("/c/item?id=7"), 3);

    assert!(dp.metric("gateway_proxy_cache_bytes").await.unwrap_or(0.0) > 0.0);
}

#[tokio::test]
async fn fifty_concurrent_misses_make_one_upstream_request() {
    let (_cp, dp, origin) = setup(json!({
        "paths": ["/c/*"],
        "upstream_id": "origin",
        "plugins": {"proxy-cache": {}}
    }))
    .await;
    let dp = Arc::new(dp);
    let mut all = JoinSet::new();
    for _ in 0..50 {
        let dp = dp.clone();
        all.spawn(async move { dp.send("GET", "/c/slow", &[]).await });
    }
    let mut statuses: HashMap<String, usize> = HashMap::new();
    let mut bodies = Vec::new();
    while let Some(answer) = all.join_next().await {
        let (status, headers, body) = answer.unwrap();
        assert_eq!(status, 200, "{body}");
        *statuses
            .entry(cache_status(&headers).to_owned())
            .or_default() += 1;
        bodies.push(body);
    }
    assert_eq!(origin.count("/c/slow"), 1, "{statuses:?}");
    assert_eq!(statuses.get("MISS"), Some(&1), "{statuses:?}");
    assert!(bodies.iter().all(|b| *b == bodies[0]));
}

#[tokio::test]
async fn the_memory_bound_holds_under_ten_times_its_size_in_distinct_keys() {
    let (_cp, dp, origin) = setup(json!({
        "paths": ["/c/*"],
        "upstream_id": "origin",
        "plugins": {"proxy-cache": {"max_size_mb": 1}}
    }))
    .await;
    const BOUND: f64 = (1 << 20) as f64;
    // 16 KiB answers, 640 distinct keys: 10 MiB through a 1 MiB cache.
    for i in 0..640 {
        let (status, _, _) = dp.send("GET", &format!("/c/big/16384?k={i}"), &[]).await;
        assert_eq!(status, 200);
        if i % 64 == 63 {
            let bytes = dp.metric("gateway_proxy_cache_bytes").await.unwrap();
            assert!(bytes <= BOUND, "{bytes} bytes held after {i} keys");
        }
    }
    let bytes = dp.metric("gateway_proxy_cache_bytes").await.unwrap();
    assert!(bytes > BOUND / 4.0, "the cache is used: {bytes}");
    assert!(bytes <= BOUND, "{bytes}");
    // An answer over the entry bound (an eighth of the store) streams through, unstored.
    for _ in 0..2 {
        let (status, headers, body) = dp.send("GET", "/c/big/200000", &[]).await;
        assert_eq!((status, cache_status(&headers)), (200, "MISS"));
        assert_eq!(body.as_str().map(str::len), Some(200_000));
    }
    assert_eq!(origin.count("/c/big/200000"), 2);
}

#[tokio::test]
async fn purge_with_the_key_removes_the_entry_and_is_never_forwarded() {
    let (_cp, dp, origin) = setup(json!({
        "paths": ["/c/*"],
        "upstream_id": "origin",
        "plugins": {"proxy-cache": {"purge_key": "purge-secret-1"}}
    }))
    .await;
    dp.send("GET", "/c/page", &[]).await;
    let (_, headers, _) = dp.send("GET", "/c/page", &[]).await;
    assert_eq!(cache_status(&headers), "HIT");

    let (status, _, body) = dp.send("PURGE", "/c/page", &[]).await;
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = dp
        .send("PURGE", "/c/page", &[("x-purge-key", "wrong-secret")])
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = dp
        .send("PURGE", "/c/page", &[("x-purge-key", "purge-secret-1")])
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = dp
        .send("PURGE", "/c/page", &[("x-purge-key", "purge-secret-1")])
        .await;
    assert_eq!(status, 404, "{body}");
    let (_, headers, _) = dp.send("GET", "/c/page", &[]).await;
    assert_eq!(cache_status(&headers), "MISS");
    assert_eq!(origin.count("/c/page"), 2, "PURGE never reached the node");
}

#[tokio::test]
async fn the_purge_key_is_redacted_on_reads_kept_when_written_back_and_streamed() {
    const KEY: &str = "purge-secret-1";
    let (cp, dp, _origin) = setup(json!({
        "paths": ["/c/*"],
        "upstream_id": "origin",
        "plugins": {"proxy-cache": {"purge_key": KEY}}
    }))
    .await;
    let (_, version, route) = cp.call("GET", "/api/v1/routes/r", None).await;
    assert_eq!(route["plugins"]["proxy-cache"]["purge_key"], "<redacted>");
    let version = version.expect("reads carry X-Config-Version");
    // Every other way out redacts it too: the whole config, a version's config and its diff.
    for path in [
        "/api/v1/config".to_owned(),
        format!("/api/v1/versions/{version}/config"),
        format!("/api/v1/versions/{version}/diff"),
    ] {
        let (status, _, body) = cp.call("GET", &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.to_string().contains(KEY), "{path}: {body}");
        assert!(body.to_string().contains("<redacted>"), "{path}: {body}");
    }

    // The read written back (another field changed) keeps the stored key: the data plane
    // still purges with it.
    let mut written = route.clone();
    written["plugins"]["proxy-cache"]["cache_ttl"] = json!(120);
    let version = cp.write("PUT", "/api/v1/routes/r", Some(written)).await;
    dp.applied(version).await;
    dp.send("GET", "/c/kept", &[]).await;
    let (status, _, body) = dp.send("PURGE", "/c/kept", &[("x-purge-key", KEY)]).await;
    assert_eq!(status, 200, "{body}");
    let (_, _, diff) = cp
        .call("GET", &format!("/api/v1/versions/{version}/diff"), None)
        .await;
    assert!(!diff.to_string().contains(KEY), "{diff}");

    // The placeholder on a resource with no key stored names nothing: 409, nothing written.
    let (status, _, body) = cp
        .call(
            "PUT",
            "/api/v1/routes/fresh",
            Some(json!({"paths": ["/f"], "upstream_id": "origin",
                        "plugins": {"proxy-cache": {"purge_key": "<redacted>"}}})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, _, _) = cp.call("GET", "/api/v1/routes/fresh", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn stale_if_error_serves_the_expired_entry_while_the_node_fails() {
    let (_cp, dp, origin) = setup(json!({
        "paths": ["/c/*"],
        "upstream_id": "origin",
        "plugins": {"proxy-cache": {"cache_ttl": 1, "stale_if_error_s": 60}}
    }))
    .await;
    let (_, headers, first) = dp.send("GET", "/c/doc", &[]).await;
    assert_eq!(cache_status(&headers), "MISS");

    // Expiry is the passage of time: the entry is fresh for one second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.failing.store(true, Ordering::SeqCst);
    let (status, headers, body) = dp.send("GET", "/c/doc", &[]).await;
    assert_eq!((status, cache_status(&headers)), (200, "STALE"), "{body}");
    assert_eq!(body, first);

    origin.stop();
    let (status, headers, body) = dp.send("GET", "/c/doc", &[]).await;
    assert_eq!((status, cache_status(&headers)), (200, "STALE"), "{body}");
    assert_eq!(body, first);
    // Nothing stale to fall back on: the failure shows.
    let (status, _, _) = dp.send("GET", "/c/other", &[]).await;
    assert_eq!(status / 100, 5);
}

#[tokio::test]
async fn a_batch_recomputes_only_its_uncached_parts() {
    let (_cp, dp, origin) = setup(json!({
        "paths": ["/agg/:item"],
        "methods": ["GET"],
        "batch": {
            "requests": [
                {"name": "live", "upstream_id": "origin", "path": "/c/live/{param.item}"},
                {"name": "catalog", "upstream_id": "origin", "path": "/c/catalog/{param.item}",
                 "cache": {"ttl_s": 60}}
            ]
        }
    }))
    .await;
    let (status, _, first) = dp.send("GET", "/agg/14286", &[]).await;
    assert_eq!(status, 200, "{first}");
    let (status, _, second) = dp.send("GET", "/agg/14286", &[]).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(origin.count("/c/live/14286"), 2);
    assert_eq!(
        origin.count("/c/catalog/14286"),
        1,
        "the cached part is reused"
    );
    assert_eq!(second["catalog"], first["catalog"]);
    assert_eq!(second["live"]["n"], 2);
    // Another item is another key.
    dp.send("GET", "/agg/1", &[]).await;
    assert_eq!(origin.count("/c/catalog/1"), 1);
}

#[tokio::test]
async fn entries_outlive_config_pushes_that_leave_the_plugin_unchanged() {
    let route = |ttl: u64| {
        json!({"paths": ["/c/*"], "upstream_id": "origin",
               "plugins": {"proxy-cache": {"cache_ttl": ttl}}})
    };
    let (cp, dp, origin) = setup(route(300)).await;
    dp.send("GET", "/c/kept", &[]).await;

    // Another route changes, and so does this route's own chain (a global rule): the
    // plugin's config does not, and neither does its store.
    let other = json!({"paths": ["/other"], "upstream_id": "origin"});
    let version = cp.write("PUT", "/api/v1/routes/other", Some(other)).await;
    dp.applied(version).await;
    let rule = json!({"plugins": {"prometheus": {}}});
    let version = cp.write("PUT", "/api/v1/global-rules/g", Some(rule)).await;
    dp.applied(version).await;
    let (_, headers, _) = dp.send("GET", "/c/kept", &[]).await;
    assert_eq!(cache_status(&headers), "HIT");

    // A changed config starts empty.
    let version = cp.write("PUT", "/api/v1/routes/r", Some(route(120))).await;
    dp.applied(version).await;
    let (_, headers, _) = dp.send("GET", "/c/kept", &[]).await;
    assert_eq!(cache_status(&headers), "MISS");
    assert_eq!(origin.count("/c/kept"), 2);
}
