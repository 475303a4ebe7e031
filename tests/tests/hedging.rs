//! Hedged requests end to end with the real binaries: two nodes, one answering its head in
//! 200 ms and one in 5 ms. Each node writes its status line at once and the rest of the head
//! after its delay, so an attempt the gateway gives up is always half-read; a node that sees
//! the next request arrive on such a connection (the gateway pooled it half-read) counts it,
//! and every answer carries the path it answers, so a reused connection also shows up as a
//! wrong answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use gateway_e2e::{ControlPlane, DataPlane, eventually, sqlite_url};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The slow node's delay before the rest of its head.
const SLOW: Duration = Duration::from_millis(200);
/// The fast node's.
const FAST: Duration = Duration::from_millis(5);
/// A hedged answer must come well before the slow node's (20 ms + 5 ms expected; the margin
/// is for a loaded 2-core machine).
const HEDGED_MAX: Duration = Duration::from_millis(150);

/// What a node saw.
#[derive(Default)]
struct Stats {
    /// Requests by method.
    gets: AtomicUsize,
    posts: AtomicUsize,
    /// Connections the gateway closed before the answer was complete (a cancelled attempt).
    dropped_half_read: AtomicUsize,
    /// Requests that arrived on a connection whose previous answer was not complete: the
    /// gateway reused a half-read connection.
    reused_half_read: AtomicUsize,
}

/// A plain HTTP/1.1 node with a head delay (the same for every request, until changed).
struct Node {
    port: u16,
    stats: Arc<Stats>,
    /// The delay in microseconds, read as each request arrives.
    delay: Arc<AtomicU64>,
}

impl Node {
    async fn start(delay: Duration) -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let stats = Arc::new(Stats::default());
        let node = Node {
            port,
            stats: Arc::clone(&stats),
            delay: Arc::new(AtomicU64::new(0)),
        };
        node.set_delay(delay);
        let delay = Arc::clone(&node.delay);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                // The head goes out in two writes: without this, Nagle's algorithm holds the
                // second until the gateway's delayed ACK (40 ms), longer than the delays here.
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, Arc::clone(&delay), Arc::clone(&stats)));
            }
        });
        node
    }

    fn set_delay(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).expect("a test's delay");
        self.delay.store(micros, SeqCst);
    }

    fn node(&self, weight: u32) -> Value {
        json!({"host": "127.0.0.1", "port": self.port, "weight": weight})
    }
}

/// Serves one keep-alive connection: each request's status line at once, the rest of the head
/// and a body naming its path after the node's delay.
async fn serve(mut stream: TcpStream, delay: Arc<AtomicU64>, stats: Arc<Stats>) {
    let mut buffer = Vec::new();
    loop {
        let Some(end) = read_head(&mut stream, &mut buffer).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
        let mut words = head.split_whitespace();
        let (method, path) = (
            words.next().unwrap_or_default().to_owned(),
            words.next().unwrap_or_default().to_owned(),
        );
        let length: usize = head
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.trim().parse().ok())
            .unwrap_or(0);
        buffer.drain(..end);
        while buffer.len() < length {
            let mut chunk = [0; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        buffer.drain(..length);
        match method.as_str() {
            "POST" => stats.posts.fetch_add(1, SeqCst),
            _ => stats.gets.fetch_add(1, SeqCst),
        };
        if stream.write_all(b"HTTP/1.1 200 OK\r\n").await.is_err() {
            stats.dropped_half_read.fetch_add(1, SeqCst);
            return;
        }
        tokio::time::sleep(Duration::from_micros(delay.load(SeqCst))).await;
        // Before the answer is complete: the gateway either waits, or has closed the
        // connection (a cancelled attempt), or — wrongly — sent the next request on it.
        let mut peek = [0; 1];
        match stream.try_read(&mut peek) {
            Ok(0) => {
                stats.dropped_half_read.fetch_add(1, SeqCst);
                return;
            }
            Ok(_) => {
                stats.reused_half_read.fetch_add(1, SeqCst);
                buffer.push(peek[0]);
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                stats.dropped_half_read.fetch_add(1, SeqCst);
                return;
            }
        }
        let rest = format!(
            "content-type: text/plain\r\ncontent-length: {}\r\n\r\n{path}",
            path.len()
        );
        if stream.write_all(rest.as_bytes()).await.is_err() {
            stats.dropped_half_read.fetch_add(1, SeqCst);
            return;
        }
    }
}

/// Reads until a request head is complete in `buffer`; its length with the blank line, or
/// `None` when the connection ends.
async fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(at + 4);
        }
        let mut chunk = [0; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A control plane and a data plane that has applied its first snapshot.
async fn gateway() -> (ControlPlane, DataPlane) {
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, "dp-hedge");
    eventually("data plane ready", || async { dp.ready_version().await }).await;
    (cp, dp)
}

/// Writes each `(path, body)` and waits until the data plane serves the last version.
async fn apply(cp: &ControlPlane, dp: &DataPlane, writes: &[(&str, Value)]) {
    let mut version = 0;
    for (path, body) in writes {
        version = cp.write("PUT", path, Some(body.clone())).await;
    }
    dp.applied(version).await;
}

/// Sends `method path` through the gateway: how long it took, the status and the body.
async fn timed(
    client: &reqwest::Client,
    dp: &DataPlane,
    method: &str,
    path: &str,
) -> (Duration, u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let started = Instant::now();
    let response = client
        .request(method, format!("{}{path}", dp.proxy_url))
        .send()
        .await
        .expect("gateway reachable");
    let status = response.status().as_u16();
    let body = response.text().await.expect("a body");
    (started.elapsed(), status, body)
}

/// Sends `method prefix/0`, `prefix/1`, … `count` times one after another and returns how long
/// each took, shortest first. Each must be a 200; an answer in plain text must name its path
/// (one read from a reused half-read connection would name another), a batch's is JSON.
async fn latencies(
    client: &reqwest::Client,
    dp: &DataPlane,
    method: &str,
    prefix: &str,
    count: usize,
) -> Vec<Duration> {
    let mut took = Vec::with_capacity(count);
    for i in 0..count {
        let path = format!("{prefix}/{i}");
        let (elapsed, status, body) = timed(client, dp, method, &path).await;
        assert_eq!(status, 200, "{method} {path}: {body}");
        if !body.starts_with('{') {
            assert_eq!(body, path);
        }
        took.push(elapsed);
    }
    took.sort();
    took
}

/// The longest of [`latencies`].
async fn slowest(
    client: &reqwest::Client,
    dp: &DataPlane,
    method: &str,
    prefix: &str,
    count: usize,
) -> Duration {
    let took = latencies(client, dp, method, prefix, count).await;
    took.last().copied().unwrap_or_default()
}

async fn hedges(dp: &DataPlane, upstream: &str, outcome: &str) -> f64 {
    let name =
        format!("gateway_upstream_hedges_total{{upstream=\"{upstream}\",outcome=\"{outcome}\"}}");
    dp.metric(&name).await.unwrap_or(0.0)
}

#[tokio::test]
async fn a_hedged_route_answers_from_the_fast_node_and_never_reuses_the_loser() {
    let (slow, fast) = (Node::start(SLOW).await, Node::start(FAST).await);
    let (cp, dp) = gateway().await;
    apply(
        &cp,
        &dp,
        &[
            (
                "/api/v1/upstreams/pair",
                json!({"nodes": [slow.node(1), fast.node(1)]}),
            ),
            (
                "/api/v1/routes/hedged",
                json!({"paths": ["/hedged/*"], "upstream_id": "pair", "hedge": {"delay_ms": 20}}),
            ),
            (
                "/api/v1/routes/plain",
                json!({"paths": ["/plain/*"], "upstream_id": "pair"}),
            ),
        ],
    )
    .await;
    let client = reqwest::Client::new();

    // Without hedging, the requests the balancer sends to the slow node take its time.
    let plain_max = slowest(&client, &dp, "GET", "/plain", 10).await;
    assert!(
        plain_max >= SLOW,
        "unhedged, half the requests wait for the slow node: {plain_max:?}"
    );

    // Hedged: every answer comes from whichever node answers first, the fast one.
    let took = latencies(&client, &dp, "GET", "/hedged", 40).await;
    let max = took[took.len() - 1];
    assert!(
        max < HEDGED_MAX,
        "hedged answers: p50 {:?}, max {max:?}",
        took[took.len() / 2]
    );

    // The slow node got its share of first attempts and each was given up half-read: its
    // connection closed, never sent another request.
    eventually(
        "the slow node sees its cancelled connections closed",
        || async { (slow.stats.dropped_half_read.load(SeqCst) >= 15).then_some(()) },
    )
    .await;
    assert_eq!(slow.stats.reused_half_read.load(SeqCst), 0);
    assert_eq!(fast.stats.reused_half_read.load(SeqCst), 0);
    let won = hedges(&dp, "pair", "won").await;
    assert!(won >= 15.0, "hedges won: {won}");

    // POST is never hedged: the ones sent to the slow node wait for it, and no POST is sent
    // twice.
    let post_max = slowest(&client, &dp, "POST", "/hedged/post", 6).await;
    assert!(
        post_max >= SLOW,
        "a POST to the slow node waits for it: {post_max:?}"
    );
    let posts = slow.stats.posts.load(SeqCst) + fast.stats.posts.load(SeqCst);
    assert_eq!(posts, 6, "each POST sent once");
    assert!(slow.stats.posts.load(SeqCst) >= 1);
}

#[tokio::test]
async fn a_batch_sub_request_with_a_hedge_override_is_hedged() {
    let (slow, fast) = (Node::start(SLOW).await, Node::start(FAST).await);
    let (cp, dp) = gateway().await;
    apply(
        &cp,
        &dp,
        &[
            ("/api/v1/upstreams/pair", json!({"nodes": [slow.node(1), fast.node(1)]})),
            (
                "/api/v1/routes/batch",
                json!({"paths": ["/batch/:item"], "batch": {"requests": [
                    {"name": "plain", "upstream_id": "pair", "path": "/p/{param.item}"}
                ]}}),
            ),
            (
                "/api/v1/routes/hedged-batch",
                json!({"paths": ["/hedged-batch/:item"], "batch": {"requests": [
                    {"name": "hedged", "upstream_id": "pair", "path": "/h/{param.item}", "hedge": {"delay_ms": 20}}
                ]}}),
            ),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    for i in 0..10 {
        let (took, status, body) = timed(&client, &dp, "GET", &format!("/hedged-batch/{i}")).await;
        assert_eq!(status, 200, "{body}");
        let body: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(body["hedged"], format!("/h/{i}"));
        assert!(took < HEDGED_MAX, "hedged sub-request: {took:?}");
    }
    // The same sub-request without the override is not hedged: some wait for the slow node.
    let max = slowest(&client, &dp, "GET", "/batch", 6).await;
    assert!(
        max >= SLOW,
        "the unhedged sub-request waits for the slow node: {max:?}"
    );
    assert!(hedges(&dp, "pair", "won").await >= 5.0);
    assert_eq!(slow.stats.reused_half_read.load(SeqCst), 0);
    drop(fast);
}

#[tokio::test]
async fn hedging_stops_when_the_retry_budget_is_spent() {
    let (slow, fast) = (Node::start(SLOW).await, Node::start(FAST).await);
    let (cp, dp) = gateway().await;
    // Nearly every first attempt goes to the slow node, and the hedge to the fast one.
    apply(
        &cp,
        &dp,
        &[
            (
                "/api/v1/upstreams/skewed",
                json!({"nodes": [slow.node(100), fast.node(1)], "hedge": {"delay_ms": 10}}),
            ),
            (
                "/api/v1/routes/skewed",
                json!({"paths": ["/skewed/*"], "upstream_id": "skewed"}),
            ),
        ],
    )
    .await;
    // The budget allows 100 retries or hedges per 10 s plus 20% of requests: 250 requests
    // within the window have room for about 150 hedges, not 250.
    const REQUESTS: usize = 250;
    let client = reqwest::Client::new();
    let dp = Arc::new(dp);
    let mut tasks = Vec::new();
    for worker in 0..25 {
        let (client, dp) = (client.clone(), Arc::clone(&dp));
        tasks.push(tokio::spawn(async move {
            let mut slow_answers = 0;
            for i in 0..REQUESTS / 25 {
                let path = format!("/skewed/{worker}/{i}");
                let (took, status, body) = timed(&client, &dp, "GET", &path).await;
                assert_eq!((status, body.as_str()), (200, path.as_str()));
                slow_answers += usize::from(took >= SLOW);
            }
            slow_answers
        }));
    }
    let mut slow_answers = 0;
    for task in tasks {
        slow_answers += task.await.expect("worker");
    }
    let (won, lost, skipped) = (
        hedges(&dp, "skewed", "won").await,
        hedges(&dp, "skewed", "lost").await,
        hedges(&dp, "skewed", "skipped_budget").await,
    );
    let sent = won + lost;
    assert!(
        skipped >= 50.0,
        "hedges skipped for the budget: {skipped} (sent {sent})"
    );
    assert!(
        sent <= 100.0 + 0.2 * REQUESTS as f64 + 5.0,
        "hedges sent: {sent}"
    );
    assert!(sent >= 100.0, "hedges sent within the budget: {sent}");
    // Every request reached a node once, plus the hedges.
    let received = slow.stats.gets.load(SeqCst) + fast.stats.gets.load(SeqCst);
    assert_eq!(received as f64, REQUESTS as f64 + sent);
    // The ones the budget did not hedge waited for the slow node.
    assert!(
        slow_answers as f64 >= skipped * 0.9,
        "{slow_answers} slow answers, {skipped} skipped"
    );
}

/// What `"delay_ms": "p95"` stands for while a node has too few samples (the data plane's
/// `DEFAULT_P95_DELAY`): an answer later than this was not timed by the node's estimate.
const P95_STAND_IN: Duration = Duration::from_millis(50);

#[tokio::test]
async fn a_p95_delay_hedges_a_slow_request_at_the_nodes_usual_latency() {
    let (first, second) = (Node::start(FAST).await, Node::start(FAST).await);
    let (cp, dp) = gateway().await;
    apply(
        &cp,
        &dp,
        &[
            (
                "/api/v1/upstreams/estimated",
                json!({"nodes": [first.node(1), second.node(1)], "hedge": {"delay_ms": "p95"}}),
            ),
            (
                "/api/v1/routes/estimated",
                json!({"paths": ["/estimated/*"], "upstream_id": "estimated"}),
            ),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    // Warm-up: each node's histogram gets far more than the 20 samples its estimate needs, all
    // near the fast delay. Far more, because a cancelled attempt counts as a sample at the
    // time it was cancelled (past the p95): once 5% of a node's samples are such, its p95 is
    // one of them and the next hedge waits longer. 400 samples a node hold it through the
    // 15 or so slow first attempts below.
    latencies(&client, &dp, "GET", "/estimated/warm", 800).await;
    let won_before = hedges(&dp, "estimated", "won").await;

    // The first node turns slow. A request sent to it first is hedged once its usual p95 (a
    // few milliseconds) has passed: answered by the second node long before the first's 200 ms,
    // and before the 50 ms stand-in would even have sent the hedge.
    first.set_delay(SLOW);
    let took = latencies(&client, &dp, "GET", "/estimated/slow", 30).await;
    assert!(took[took.len() - 1] < HEDGED_MAX, "answers: {took:?}");
    let hedged = hedges(&dp, "estimated", "won").await - won_before;
    assert!(hedged >= 8.0, "hedges won after the slowdown: {hedged}");
    let late = took.iter().filter(|&&l| l >= P95_STAND_IN).count();
    assert!(
        late <= 2,
        "{hedged} hedged requests, {late} answered after {P95_STAND_IN:?}: {took:?}"
    );
    eventually(
        "the slow node sees its cancelled attempts closed",
        || async { (first.stats.dropped_half_read.load(SeqCst) >= 8).then_some(()) },
    )
    .await;
    assert_eq!(first.stats.reused_half_read.load(SeqCst), 0);
}

#[tokio::test]
async fn hedge_false_on_a_route_or_a_sub_request_turns_the_upstreams_hedging_off() {
    let (slow, fast) = (Node::start(SLOW).await, Node::start(FAST).await);
    let (cp, dp) = gateway().await;
    apply(
        &cp,
        &dp,
        &[
            (
                "/api/v1/upstreams/pair",
                json!({"nodes": [slow.node(1), fast.node(1)], "hedge": {"delay_ms": 20}}),
            ),
            (
                "/api/v1/routes/off",
                json!({"paths": ["/off/*"], "upstream_id": "pair", "hedge": false}),
            ),
            (
                "/api/v1/routes/off-batch",
                json!({"paths": ["/off-batch/:item"], "batch": {"requests": [
                    {"name": "unhedged", "upstream_id": "pair", "path": "/b/{param.item}", "hedge": false}
                ]}}),
            ),
            (
                "/api/v1/routes/on",
                json!({"paths": ["/on/*"], "upstream_id": "pair"}),
            ),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    for prefix in ["/off", "/off-batch"] {
        let max = slowest(&client, &dp, "GET", prefix, 6).await;
        assert!(
            max >= SLOW,
            "{prefix}: unhedged, some wait for the slow node: {max:?}"
        );
    }
    let sent = hedges(&dp, "pair", "won").await + hedges(&dp, "pair", "lost").await;
    assert_eq!(sent, 0.0, "no hedge was sent");
    assert_eq!(slow.stats.dropped_half_read.load(SeqCst), 0);

    // The upstream's policy still holds where nothing overrides it.
    let max = slowest(&client, &dp, "GET", "/on", 6).await;
    assert!(max < HEDGED_MAX, "hedged: {max:?}");
    assert!(hedges(&dp, "pair", "won").await >= 2.0);
}
