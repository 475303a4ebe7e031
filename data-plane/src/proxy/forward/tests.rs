//! Balancing, health, retries and upgrades through a real proxy listener, in process.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};

use crate::runtime::Runtime;
use crate::runtime::health::HealthState;
use crate::state::State;
use crate::test_support::{eventually, snapshot};

/// A fake node: answers `status` (200 by default) with its name in `x-node`, can hold requests
/// until released, echo WebSocket-style upgrades, be killed (listener and every connection
/// closed) and come back on the same port.
struct FakeNode {
    name: String,
    addr: std::net::SocketAddr,
    received: Arc<AtomicUsize>,
    completed: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    hold: Arc<HoldGate>,
    versions: Arc<Mutex<Vec<http::Version>>>,
    stop: Mutex<Option<watch::Sender<bool>>>,
    http2: bool,
}

#[derive(Default)]
struct HoldGate {
    holding: std::sync::atomic::AtomicBool,
    release: Notify,
}

impl FakeNode {
    async fn start(name: &str) -> Arc<FakeNode> {
        FakeNode::start_with(name, false).await
    }

    /// Nodes "a", "b" and "c".
    async fn start_three() -> [Arc<FakeNode>; 3] {
        [
            FakeNode::start("a").await,
            FakeNode::start("b").await,
            FakeNode::start("c").await,
        ]
    }

    async fn start_with(name: &str, http2: bool) -> Arc<FakeNode> {
        let listener = bind("127.0.0.1:0".parse().unwrap());
        let node = Arc::new(FakeNode {
            name: name.to_owned(),
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            completed: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            hold: Arc::default(),
            versions: Arc::default(),
            stop: Mutex::new(None),
            http2,
        });
        node.serve(listener);
        node
    }

    fn serve(&self, listener: TcpListener) {
        let (stop, stopped) = watch::channel(false);
        *self.stop.lock().unwrap() = Some(stop);
        let (name, received, completed, status, hold, versions, http2) = (
            self.name.clone(),
            Arc::clone(&self.received),
            Arc::clone(&self.completed),
            Arc::clone(&self.status),
            Arc::clone(&self.hold),
            Arc::clone(&self.versions),
            self.http2,
        );
        tokio::spawn(async move {
            loop {
                let mut stop = stopped.clone();
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = stop.wait_for(|s| *s) => return,
                };
                let (name, received, completed, status, hold, versions) = (
                    name.clone(),
                    Arc::clone(&received),
                    Arc::clone(&completed),
                    Arc::clone(&status),
                    Arc::clone(&hold),
                    Arc::clone(&versions),
                );
                let service = service_fn(move |mut request: Request<Incoming>| {
                    let (name, received, completed, status, hold, versions) = (
                        name.clone(),
                        Arc::clone(&received),
                        Arc::clone(&completed),
                        Arc::clone(&status),
                        Arc::clone(&hold),
                        Arc::clone(&versions),
                    );
                    async move {
                        received.fetch_add(1, SeqCst);
                        versions.lock().unwrap().push(request.version());
                        if request.headers().contains_key("upgrade") {
                            return Ok::<_, Infallible>(echo_upgrade(&mut request));
                        }
                        if request.uri().path() == "/hold" && hold.holding.load(SeqCst) {
                            hold.release.notified().await;
                        }
                        let _ = request.into_body().collect().await;
                        completed.fetch_add(1, SeqCst);
                        let response = Response::builder()
                            .status(status.load(SeqCst))
                            .header("x-node", name.as_str())
                            .body(Full::new(Bytes::from(name.clone())))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let mut stop = stopped.clone();
                tokio::spawn(async move {
                    let io = TokioIo::new(stream);
                    let serve = async {
                        if http2 {
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service)
                                .await;
                        } else {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .with_upgrades()
                                .await;
                        }
                    };
                    // Killing the node drops every connection at once, like a crashed process.
                    tokio::select! {
                        () = serve => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                });
            }
        });
    }

    /// Closes the listener and every open connection.
    fn kill(&self) {
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(true);
        }
    }

    /// Listens again on the same port.
    fn restart(&self) {
        self.serve(bind(self.addr));
    }

    fn node(&self, weight: u32) -> Value {
        json!({"host": "127.0.0.1", "port": self.addr.port(), "weight": weight})
    }
}

/// Accepts an upgrade with a 101 and echoes whatever comes through the tunnel.
fn echo_upgrade(request: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    let upgraded = hyper::upgrade::on(request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgraded.await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A listener with SO_REUSEADDR, so a killed node can come back on its port at once.
fn bind(addr: std::net::SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(1024).unwrap()
}

struct Gateway {
    addr: std::net::SocketAddr,
    state: Arc<State>,
    client: Client<HttpConnector, Full<Bytes>>,
    version: AtomicU16,
}

impl Gateway {
    async fn start(upstream: Value) -> Gateway {
        let state = State::new();
        let gateway = Gateway {
            addr: "127.0.0.1:0".parse().unwrap(),
            state,
            client: Client::builder(TokioExecutor::new()).build_http(),
            version: AtomicU16::new(0),
        };
        gateway.install(upstream);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(super::super::serve(
            listener,
            Arc::clone(&gateway.state),
            std::future::pending(),
        ));
        Gateway { addr, ..gateway }
    }

    /// Installs a config with upstream `u` = `upstream` and a catch-all route to it.
    fn install(&self, upstream: Value) {
        self.install_with_route(upstream, json!({}));
    }

    /// Like [`Gateway::install`], with `route` merged into the catch-all route.
    fn install_with_route(&self, upstream: Value, route: Value) {
        let version = u64::from(self.version.fetch_add(1, SeqCst)) + 1;
        let mut catch_all = json!({"paths": ["/*"], "upstream_id": "u"});
        catch_all
            .as_object_mut()
            .unwrap()
            .extend(route.as_object().unwrap().clone());
        let snap = snapshot(
            version,
            &[("upstreams", "u", upstream), ("routes", "all", catch_all)],
        );
        let previous = self.state.runtime();
        self.state
            .install(Runtime::compile(&snap, Some(&previous)).unwrap());
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &'static str,
    ) -> (StatusCode, String) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        match self.client.request(request).await {
            Ok(response) => {
                let status = response.status();
                let node = response
                    .headers()
                    .get("x-node")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let text = node.unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                (status, text)
            }
            Err(error) => (StatusCode::IM_A_TEAPOT, error.to_string()),
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        self.send(Method::GET, path, &[], "").await
    }

    /// The node states the status listener's `/upstreams` reports, by address.
    async fn node_states(&self) -> HashMap<String, String> {
        self.node_field("state")
            .await
            .into_iter()
            .map(|(address, state)| (address, state.as_str().unwrap().to_owned()))
            .collect()
    }

    /// One field of every node that the status listener's `/upstreams` reports, by address.
    async fn node_field(&self, field: &str) -> HashMap<String, Value> {
        let request = Request::get("/upstreams")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = crate::status::respond(&self.state, &request);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        body["upstreams"][0]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["address"].as_str().unwrap().to_owned(), n[field].clone()))
            .collect()
    }
}

/// Steady load through a gateway: `clients` concurrent GET loops until [`Load::finish`].
struct Load {
    stop: watch::Sender<bool>,
    /// Requests sent, requests that did not get a 200.
    totals: Arc<(AtomicUsize, AtomicUsize)>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(gateway: &Arc<Gateway>, clients: usize) -> Load {
        let (stop, stopped) = watch::channel(false);
        let totals = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let clients = (0..clients)
            .map(|_| {
                let (g, stopped, totals) =
                    (Arc::clone(gateway), stopped.clone(), Arc::clone(&totals));
                tokio::spawn(async move {
                    while !*stopped.borrow() {
                        let (status, _) = g.get("/load").await;
                        totals.0.fetch_add(1, SeqCst);
                        if status != StatusCode::OK {
                            totals.1.fetch_add(1, SeqCst);
                        }
                    }
                })
            })
            .collect();
        let load = Load {
            stop,
            totals,
            clients,
        };
        eventually("load to flow", || load.total() > 500).await;
        load
    }

    fn total(&self) -> usize {
        self.totals.0.load(SeqCst)
    }

    /// Stops the clients; (requests, failed requests).
    async fn finish(self) -> (usize, usize) {
        let _ = self.stop.send(true);
        for client in self.clients {
            client.await.unwrap();
        }
        (self.totals.0.load(SeqCst), self.totals.1.load(SeqCst))
    }
}

/// Polls the victim's state on the status listener until `done` accepts it; how long it took.
async fn time_until_state(
    gateway: &Gateway,
    victim: &str,
    done: impl Fn(&str) -> bool,
) -> Duration {
    let since = tokio::time::Instant::now();
    loop {
        let states = gateway.node_states().await;
        if done(&states[victim]) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "{victim} stayed {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn upstream(nodes: &[Value], extra: Value) -> Value {
    let mut upstream = json!({"nodes": nodes});
    upstream
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    upstream
}

#[tokio::test]
async fn three_weighted_nodes_share_3000_requests_by_weight() {
    let nodes = FakeNode::start_three().await;
    let gateway = Gateway::start(upstream(
        &[nodes[0].node(1), nodes[1].node(2), nodes[2].node(3)],
        json!({}),
    ))
    .await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..3_000 {
        let (status, node) = gateway.get("/x").await;
        assert_eq!(status, StatusCode::OK);
        *counts.entry(node).or_default() += 1;
    }
    for (name, weight) in [("a", 1.0), ("b", 2.0), ("c", 3.0)] {
        let share = counts[name] as f64 / 3_000.0;
        assert!(
            (share - weight / 6.0).abs() < 0.02,
            "{name}: {share} of the requests, weight share {}: {counts:?}",
            weight / 6.0
        );
    }
}

#[tokio::test]
async fn least_requests_avoids_the_node_with_requests_in_flight() {
    let slow = FakeNode::start("slow").await;
    let fast = FakeNode::start("fast").await;
    // Only the slow node holds its requests.
    slow.hold.holding.store(true, SeqCst);
    let gateway = Arc::new(
        Gateway::start(upstream(
            &[slow.node(1), fast.node(1)],
            json!({"lb": "least_requests"}),
        ))
        .await,
    );
    let mut pending = Vec::new();
    for sent in 1..=20 {
        let g = Arc::clone(&gateway);
        pending.push(tokio::spawn(async move { g.get("/hold").await }));
        // Each request either sits on the slow node or has been answered by the fast one.
        eventually("the request to land", || {
            slow.received.load(SeqCst) + fast.completed.load(SeqCst) == sent
        })
        .await;
    }
    // Round robin would have put 10 on the slow node; one in flight there is enough to avoid it.
    assert_eq!(slow.received.load(SeqCst), 1);
    assert_eq!(fast.completed.load(SeqCst), 19);
    slow.hold.holding.store(false, SeqCst);
    slow.hold.release.notify_waiters();
    for request in pending {
        assert_eq!(request.await.unwrap().0, StatusCode::OK);
    }
}

#[tokio::test]
async fn consistent_hash_keeps_keys_and_removing_a_node_moves_only_its_keys() {
    let mut nodes = Vec::new();
    for name in ["n0", "n1", "n2", "n3", "n4"] {
        nodes.push(FakeNode::start(name).await);
    }
    let all: Vec<Value> = nodes.iter().map(|n| n.node(1)).collect();
    let policy =
        json!({"lb": "consistent_hash", "hash_on": {"source": "header", "name": "x-user"}});
    let gateway = Gateway::start(upstream(&all, policy.clone())).await;

    let mut owner = HashMap::new();
    for user in 0..200 {
        let user = format!("user-{user}");
        let (_, first) = gateway
            .send(Method::GET, "/", &[("x-user", &user)], "")
            .await;
        for _ in 0..3 {
            let (_, again) = gateway
                .send(Method::GET, "/", &[("x-user", &user)], "")
                .await;
            assert_eq!(again, first, "{user} moved without a config change");
        }
        owner.insert(user, first);
    }
    let on_n2 = owner.values().filter(|n| *n == "n2").count();
    assert!(on_n2 > 10, "n2 owns only {on_n2} of 200 keys");

    let without_n2: Vec<Value> = nodes
        .iter()
        .filter(|n| n.name != "n2")
        .map(|n| n.node(1))
        .collect();
    gateway.install(upstream(&without_n2, policy));
    for (user, before) in &owner {
        let (_, after) = gateway
            .send(Method::GET, "/", &[("x-user", user)], "")
            .await;
        if before == "n2" {
            assert_ne!(after, "n2");
        } else {
            assert_eq!(&after, before, "{user} moved although its node stayed");
        }
    }
}

#[tokio::test]
async fn a_killed_node_is_ejected_retried_around_and_back_after_active_checks() {
    let nodes = FakeNode::start_three().await;
    let policy = json!({
        "retries": {"count": 2, "on": ["connect_error", "timeout", "status_502", "status_503"]},
        "timeouts": {"connect_ms": 500, "read_ms": 2000},
        "health_check": {
            "active": {"path": "/healthz", "interval_ms": 100, "timeout_ms": 100, "healthy_after": 2, "unhealthy_after": 2},
            "passive": {"unhealthy_after": 3, "eject_ms": 60000}
        }
    });
    let gateway = Arc::new(
        Gateway::start(upstream(
            &[nodes[0].node(1), nodes[1].node(1), nodes[2].node(1)],
            policy,
        ))
        .await,
    );
    let victim = format!("127.0.0.1:{}", nodes[1].addr.port());
    let load = Load::start(&gateway, 8).await;

    nodes[1].kill();
    let ejected_after = time_until_state(&gateway, &victim, |s| s != "healthy").await;
    let served_before = nodes[1].completed.load(SeqCst);
    let total_at_ejection = load.total();
    eventually("more load while the node is out", || {
        load.total() > total_at_ejection + 1_000
    })
    .await;

    nodes[1].restart();
    time_until_state(&gateway, &victim, |s| s == "healthy").await;
    eventually("the node to get traffic again", || {
        nodes[1].completed.load(SeqCst) > served_before + 50
    })
    .await;
    let (total, failed) = load.finish().await;
    eprintln!(
        "R6: {failed} of {total} requests failed; ejected {ejected_after:?} after the kill; {} retries",
        gateway.state.metrics.retries()
    );
    assert!(
        (failed as f64) < total as f64 * 0.001,
        "{failed} of {total} requests failed"
    );
    // R6: passive health ejects within 1 s.
    assert!(
        ejected_after < Duration::from_secs(1),
        "ejected after {ejected_after:?}"
    );
}

#[tokio::test]
async fn passive_checks_alone_eject_a_killed_node_within_a_second() {
    // No active checks: the ejection can only come from the failed requests themselves.
    let nodes = FakeNode::start_three().await;
    let policy = json!({
        "retries": {"count": 2},
        "health_check": {"passive": {"unhealthy_after": 3, "eject_ms": 60000}}
    });
    let all = [nodes[0].node(1), nodes[1].node(1), nodes[2].node(1)];
    let gateway = Arc::new(Gateway::start(upstream(&all, policy)).await);
    let victim = format!("127.0.0.1:{}", nodes[1].addr.port());
    let load = Load::start(&gateway, 8).await;
    nodes[1].kill();
    let ejected_after = time_until_state(&gateway, &victim, |s| s == "ejected").await;
    let (total, failed) = load.finish().await;
    assert!(
        ejected_after < Duration::from_secs(1),
        "ejected after {ejected_after:?}"
    );
    assert!(
        (failed as f64) < total as f64 * 0.001,
        "{failed} of {total} requests failed"
    );
}

#[tokio::test]
async fn a_route_overrides_only_the_timeouts_it_names() {
    let node = FakeNode::start("slow").await;
    node.hold.holding.store(true, SeqCst);
    let gateway = Gateway::start(upstream(&[node.node(1)], json!({}))).await;
    // The upstream allows 200 ms for the answer; the route changes the connect timeout only.
    gateway.install_with_route(
        upstream(&[node.node(1)], json!({"timeouts": {"read_ms": 200}})),
        json!({"timeouts": {"connect_ms": 1000}}),
    );
    let started = tokio::time::Instant::now();
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), gateway.get("/hold"))
        .await
        .expect("the upstream's read timeout must still apply");
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
    node.hold.release.notify_waiters();
}

/// A node that answers every request with a head that promises 100 bytes, sends 10 of them
/// and then nothing more while keeping the connection open.
async fn stalling_node() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789";
                let _ = stream.write_all(head).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

/// The same over HTTP/2 (`scheme: h2c`, hyper's client): one DATA frame, then nothing.
async fn stalling_h2c_node() -> std::net::SocketAddr {
    use futures_util::StreamExt as _;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|_request: Request<Incoming>| async {
                let first = futures_util::stream::iter([Ok::<_, Infallible>(
                    hyper::body::Frame::data(Bytes::from_static(b"0123456789")),
                )]);
                let body =
                    http_body_util::StreamBody::new(first.chain(futures_util::stream::pending()));
                Ok::<_, Infallible>(Response::new(body))
            });
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service);
            tokio::spawn(connection);
        }
    });
    addr
}

#[tokio::test]
async fn a_body_the_node_stops_sending_times_out_and_frees_the_node() {
    let node = stalling_node().await;
    stalled_body_times_out(node, "http", b"0123456789").await;
}

#[tokio::test]
async fn a_body_an_http2_node_stops_sending_times_out_and_frees_the_node() {
    let node = stalling_h2c_node().await;
    // hyper's body goes to the client chunked; the last chunk never comes.
    stalled_body_times_out(node, "h2c", b"a\r\n0123456789\r\n").await;
}

/// Sends a GET through a gateway to `node` (which stalls mid-body) with `read_ms` 300: the node
/// counts as busy while the body is pending, and after `read_ms` of silence the gateway gives
/// up and cuts the client off (the head has gone out, so no error answer can follow) having
/// passed on exactly `expected_body`.
async fn stalled_body_times_out(node: std::net::SocketAddr, scheme: &str, expected_body: &[u8]) {
    let address = format!("127.0.0.1:{}", node.port());
    let gateway = Gateway::start(json!({
        "nodes": [{"host": "127.0.0.1", "port": node.port()}],
        "scheme": scheme,
        "lb": "least_requests",
        "timeouts": {"read_ms": 300}
    }))
    .await;
    let mut client = TcpStream::connect(gateway.addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 256];
    let n = client.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    let started = tokio::time::Instant::now();
    assert_eq!(gateway.node_field("in_flight").await[&address], 1);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
        .await
        .expect("the body must time out")
        .ok();
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(150)..Duration::from_secs(3)).contains(&waited),
        "{waited:?}"
    );
    let mut answer = first[..n].to_vec();
    answer.extend_from_slice(&rest);
    let body_at = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        String::from_utf8_lossy(&answer[body_at..]),
        String::from_utf8_lossy(expected_body),
        "the body was not cut short"
    );
    assert_eq!(gateway.node_field("in_flight").await[&address], 0);
}

#[tokio::test]
async fn when_every_node_is_unhealthy_they_are_still_tried() {
    let node = FakeNode::start("only").await;
    let gateway = Gateway::start(upstream(
        &[node.node(1)],
        json!({"health_check": {"passive": {"unhealthy_after": 1, "eject_ms": 60000}}}),
    ))
    .await;
    node.status.store(503, SeqCst);
    assert_eq!(gateway.get("/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    let states = gateway.node_states().await;
    assert!(states.values().all(|s| s == "ejected"), "{states:?}");
    node.status.store(200, SeqCst);
    // Fail open: the ejected node is the only one, so it still gets the request.
    assert_eq!(gateway.get("/").await.0, StatusCode::OK);
    let runtime = gateway.state.runtime();
    let health = &runtime.upstreams["u"].nodes[0].health;
    assert!(matches!(
        health.state(crate::runtime::health::now_ms()),
        HealthState::Ejected(_)
    ));
}

#[tokio::test]
async fn retries_follow_the_method_body_and_status_rules() {
    let a = FakeNode::start("a").await;
    let b = FakeNode::start("b").await;
    a.status.store(503, SeqCst);
    b.status.store(503, SeqCst);
    let gateway = Gateway::start(upstream(
        &[a.node(1), b.node(1)],
        json!({"retries": {"count": 1, "on": ["status_503"]}}),
    ))
    .await;
    let received = || a.received.load(SeqCst) + b.received.load(SeqCst);

    // GET: tried on both nodes, the last answer is passed on.
    assert_eq!(gateway.get("/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(received(), 2);
    // POST: not idempotent, not retried by default.
    let (status, _) = gateway.send(Method::POST, "/", &[], "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(received(), 3);
    // A request with a body is never retried (its body was sent once).
    let (status, _) = gateway.send(Method::PUT, "/", &[], "payload").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(received(), 4);

    // The route may allow non-idempotent retries (bodiless POSTs only).
    let snap = snapshot(
        9,
        &[
            (
                "upstreams",
                "u",
                upstream(&[a.node(1), b.node(1)], json!({})),
            ),
            (
                "routes",
                "all",
                json!({"paths": ["/*"], "upstream_id": "u", "retries": {"count": 1, "on": ["status_503"], "non_idempotent": true}}),
            ),
        ],
    );
    let previous = gateway.state.runtime();
    gateway
        .state
        .install(Runtime::compile(&snap, Some(&previous)).unwrap());
    let (status, _) = gateway.send(Method::POST, "/", &[], "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(received(), 6);
    assert_eq!(gateway.state.metrics.retries(), 2);
}

#[tokio::test]
async fn unreachable_nodes_are_retried_then_answer_502_json() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let live = FakeNode::start("live").await;
    let gateway = Gateway::start(upstream(
        &[json!({"host": "127.0.0.1", "port": closed}), live.node(1)],
        json!({"retries": {"count": 1}, "lb": "round_robin"}),
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(gateway.get("/").await, (StatusCode::OK, "live".to_owned()));
    }
    gateway.install(upstream(
        &[json!({"host": "127.0.0.1", "port": closed})],
        json!({"retries": {"count": 3}}),
    ));
    let (status, body) = gateway.get("/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable");
}

#[tokio::test]
async fn websocket_upgrades_are_passed_through() {
    let node = FakeNode::start("ws").await;
    let gateway = Gateway::start(upstream(&[node.node(1)], json!({}))).await;
    websocket_echo_through(gateway.addr).await;
}

#[tokio::test]
async fn websocket_upgrades_are_passed_through_on_routes_with_plugins() {
    let node = FakeNode::start("ws").await;
    let gateway = Gateway::start(upstream(&[node.node(1)], json!({}))).await;
    gateway.install_with_route(
        upstream(&[node.node(1)], json!({})),
        json!({"plugins": {"request-id": {}}}),
    );
    websocket_echo_through(gateway.addr).await;
}

#[tokio::test]
async fn websocket_upgrades_reach_tls_nodes_that_offer_http2() {
    // ALPN would pick h2, which cannot carry the handshake: upgrades must ask for HTTP/1.1.
    let (addr, seen) = tls_node().await;
    let gateway = Gateway::start(json!({
        "nodes": [{"host": "127.0.0.1", "port": addr.port()}],
        "scheme": "https",
        "tls": {"verify": false}
    }))
    .await;
    websocket_echo_through(gateway.addr).await;
    assert_eq!(seen.lock().unwrap()[0].1, http::Version::HTTP_11);
    // Plain requests still get HTTP/2.
    assert_eq!(gateway.get("/").await, (StatusCode::OK, "tls".to_owned()));
    assert_eq!(seen.lock().unwrap()[1].1, http::Version::HTTP_2);
}

/// Opens an `echo` upgrade through the gateway at `gateway` and checks that the tunnel echoes.
async fn websocket_echo_through(gateway: std::net::SocketAddr) {
    let mut stream = TcpStream::connect(gateway).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "connection closed"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    stream.write_all(b"ping over the tunnel").await.unwrap();
    let mut echoed = [0u8; 20];
    stream.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping over the tunnel");
}

#[tokio::test]
async fn h2c_upstreams_get_http2() {
    let node = FakeNode::start_with("h2", true).await;
    let gateway = Gateway::start(upstream(&[node.node(1)], json!({"scheme": "h2c"}))).await;
    assert_eq!(gateway.get("/").await, (StatusCode::OK, "h2".to_owned()));
    assert_eq!(node.versions.lock().unwrap()[0], http::Version::HTTP_2);
}

#[tokio::test]
async fn health_and_load_show_on_the_status_listener_and_in_metrics() {
    let node = FakeNode::start("a").await;
    let gateway = Gateway::start(upstream(
        &[node.node(3)],
        json!({"health_check": {"passive": {"unhealthy_after": 1, "eject_ms": 60000}}}),
    ))
    .await;
    assert_eq!(gateway.get("/").await.0, StatusCode::OK);
    let request = Request::get("/upstreams")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let body = crate::status::respond(&gateway.state, &request)
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    let upstream = &body["upstreams"][0];
    assert_eq!(upstream["key"], "u");
    assert_eq!(upstream["passive_checks"], true);
    assert_eq!(upstream["nodes"][0]["weight"], 3);
    assert_eq!(upstream["nodes"][0]["state"], "healthy");

    let request = Request::get("/metrics")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let text = crate::status::respond(&gateway.state, &request)
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8(text.to_vec()).unwrap();
    let line = format!(
        "gateway_upstream_node_healthy{{upstream=\"u\",node=\"127.0.0.1:{}\"}} 1",
        node.addr.port()
    );
    assert!(
        text.lines().any(|l| l == line),
        "{line} missing from\n{text}"
    );
}

/// What a TLS fake node saw of each request: the SNI and the HTTP version.
type TlsSeen = Arc<Mutex<Vec<(Option<String>, http::Version)>>>;

/// An HTTPS node with a self-signed certificate for `upstream.test`, offering h2 and http/1.1;
/// it accepts `echo` upgrades over HTTP/1.1.
async fn tls_node() -> (std::net::SocketAddr, TlsSeen) {
    let certified = rcgen::generate_simple_self_signed(vec!["upstream.test".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: TlsSeen = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, log) = (acceptor.clone(), Arc::clone(&log));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_owned);
                let service = service_fn(move |mut request: Request<Incoming>| {
                    log.lock().unwrap().push((sni.clone(), request.version()));
                    let response = if request.headers().contains_key("upgrade") {
                        echo_upgrade(&mut request)
                    } else {
                        Response::builder()
                            .header("x-node", "tls")
                            .body(Full::new(Bytes::new()))
                            .unwrap()
                    };
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn https_upstreams_use_sni_alpn_h2_and_verify_certificates_by_default() {
    let (addr, seen) = tls_node().await;
    let node = json!([{"host": "127.0.0.1", "port": addr.port()}]);
    // Verification on (the default): a self-signed certificate is refused.
    let gateway = Gateway::start(json!({"nodes": node, "scheme": "https"})).await;
    let (status, body) = gateway.get("/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(seen.lock().unwrap().is_empty());

    // Verification off, SNI set: the handshake names the host, ALPN picks HTTP/2.
    gateway.install(json!({
        "nodes": node,
        "scheme": "https",
        "tls": {"verify": false, "sni": "upstream.test"}
    }));
    assert_eq!(gateway.get("/").await, (StatusCode::OK, "tls".to_owned()));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [(Some("upstream.test".to_owned()), http::Version::HTTP_2)]
    );
}

#[test]
fn hash_keys_come_from_the_configured_source_or_the_client_address() {
    let runtime = |hash_on: Value| {
        let snap = snapshot(
            1,
            &[(
                "upstreams",
                "u",
                json!({"nodes": [{"host": "h", "port": 1}], "lb": "consistent_hash", "hash_on": hash_on}),
            )],
        );
        Runtime::compile(&snap, None).unwrap()
    };
    let client: std::net::SocketAddr = "10.0.0.7:5555".parse().unwrap();
    let other_port: std::net::SocketAddr = "10.0.0.7:6666".parse().unwrap();
    let request = |uri: &str, headers: &[(&str, &str)]| {
        let mut builder = Request::get(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    };
    let by_address = crate::runtime::balance::hash_bytes(b"10.0.0.7");
    let cases = [
        (
            json!({"source": "header", "name": "x-user"}),
            request("/a", &[("x-user", "alice")]),
            crate::runtime::balance::hash_bytes(b"alice"),
        ),
        (
            json!({"source": "cookie", "name": "sid"}),
            request("/a", &[("cookie", "theme=dark; sid=s-42")]),
            crate::runtime::balance::hash_bytes(b"s-42"),
        ),
        (
            json!({"source": "query", "name": "item"}),
            request("/a?x=1&item=14286", &[]),
            crate::runtime::balance::hash_bytes(b"14286"),
        ),
        (
            json!({"source": "uri"}),
            request("/a/b?c=d", &[]),
            crate::runtime::balance::hash_bytes(b"/a/b?c=d"),
        ),
        (
            json!({"source": "remote_addr"}),
            request("/a", &[]),
            by_address,
        ),
        // Missing header, cookie or argument: the client address.
        (
            json!({"source": "header", "name": "x-user"}),
            request("/a", &[]),
            by_address,
        ),
        (
            json!({"source": "cookie", "name": "sid"}),
            request("/a", &[("cookie", "other=1")]),
            by_address,
        ),
    ];
    for (hash_on, request, expected) in cases {
        let rt = runtime(hash_on.clone());
        let upstream = &rt.upstreams["u"];
        assert_eq!(
            super::hash_key(upstream, &request, client),
            expected,
            "{hash_on}"
        );
        // The client's port never matters.
        assert_eq!(super::hash_key(upstream, &request, other_port), expected);
    }
}
