//! Test helpers: snapshots from JSON, a fake upstream that records what it receives, and
//! polling with a deadline instead of sleeping.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gateway_proto::model::{Route, Upstream};
use gateway_proto::{Snapshot, pb};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::runtime::{CompiledRoute, RouteTarget, UpstreamRuntime};

/// How long [`eventually`] waits before failing the test.
const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `condition` until it holds, failing the test after a generous deadline.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A config-stream response carrying `resources` as (kind, id, body).
pub fn wire(
    version: &str,
    nonce: &str,
    resources: &[(&str, &str, Value)],
) -> pb::DiscoveryResponse {
    pb::DiscoveryResponse {
        version_info: version.to_owned(),
        nonce: nonce.to_owned(),
        type_url: pb::SNAPSHOT_TYPE_URL.to_owned(),
        control_plane_id: "test-cp".to_owned(),
        resources: resources
            .iter()
            .map(|(kind, id, body)| pb::Resource {
                kind: (*kind).to_owned(),
                id: (*id).to_owned(),
                revision: 1,
                body: serde_json::to_vec(body)
                    .expect("JSON values serialise")
                    .into(),
            })
            .collect(),
        ..pb::DiscoveryResponse::default()
    }
}

/// A validated snapshot of `resources`; panics if they are invalid.
pub fn snapshot(version: u64, resources: &[(&str, &str, Value)]) -> Snapshot {
    Snapshot::from_wire(&wire(&version.to_string(), "n", resources)).expect("valid test snapshot")
}

/// A route for router tests, sent to a dummy upstream. `spec` skips schema validation so that
/// tests can hand the router patterns the schema would refuse.
pub fn compiled_route(id: &str, revision: u64, spec: Value) -> Arc<CompiledRoute> {
    let upstream: Upstream =
        serde_json::from_value(json!({"nodes": [{"host": "127.0.0.1", "port": 9}]})).unwrap();
    Arc::new(CompiledRoute {
        id: id.to_owned(),
        revision,
        spec: serde_json::from_value::<Route>(spec).unwrap(),
        target: RouteTarget::Upstream(Arc::new(
            UpstreamRuntime::compile("dummy", &upstream).unwrap(),
        )),
        plugins: Default::default(),
        matcher: Default::default(),
    })
}

/// What the fake upstream saw of one request. `body` grows as chunks arrive.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub complete: bool,
}

/// An HTTP/1.1 server on 127.0.0.1:0 that records every request and echoes its body back,
/// after `delay`. Its response carries hop-by-hop headers that a proxy must strip.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl FakeUpstream {
    pub async fn start(delay: Duration) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = Arc::clone(&received);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = Arc::clone(&log);
                let service = service_fn(move |request: Request<Incoming>| {
                    let log = Arc::clone(&log);
                    async move { Ok::<_, Infallible>(record_and_echo(request, &log, delay).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeUpstream { addr, received }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn record_and_echo(
    request: Request<Incoming>,
    log: &Mutex<Vec<Received>>,
    delay: Duration,
) -> Response<Full<Bytes>> {
    let (parts, mut body) = request.into_parts();
    let index = {
        let mut log = log.lock().unwrap();
        log.push(Received {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body: Vec::new(),
            complete: false,
        });
        log.len() - 1
    };
    let mut echo = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            echo.extend_from_slice(data);
            log.lock().unwrap()[index].body.extend_from_slice(data);
        }
    }
    log.lock().unwrap()[index].complete = true;
    tokio::time::sleep(delay).await;
    Response::builder()
        .header("x-upstream", "fake")
        .header("connection", "x-hop-response")
        .header("x-hop-response", "1")
        .header("keep-alive", "timeout=5")
        .body(Full::new(Bytes::from(echo)))
        .unwrap()
}

/// Runs `check` on every seed, then on `count` mutants of them (bytes flipped, inserted,
/// deleted, repeated, spliced from another seed, HTTP tokens dropped in), drawn from a fixed
/// seed so a failure repeats. A panic names the input. The first byte of a seed is the fuzz
/// entry's options byte and is mutated like the rest.
pub fn mutations(seeds: &[&[u8]], count: usize, check: impl Fn(&[u8])) {
    const TOKENS: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"\r",
        b"\r\n\r\n",
        b":",
        b" ",
        b"\t",
        b",",
        b";",
        b"0",
        b"chunked",
        b"close",
        b"content-length: ",
        b"transfer-encoding: ",
        b"connection: ",
        b"HTTP/1.1 ",
        b"ffffffffffffffffff",
        b"18446744073709551616",
        b"\x00",
        b"\x7f",
        b"\xff",
    ];
    let mut rng = fastrand::Rng::with_seed(0x5eed_f022);
    let run = |input: &[u8]| {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(input)));
        if let Err(panic) = outcome {
            eprintln!("failing input: b\"{}\"", input.escape_ascii());
            std::panic::resume_unwind(panic);
        }
    };
    for seed in seeds {
        run(seed);
    }
    for _ in 0..count {
        let mut input = seeds[rng.usize(..seeds.len())].to_vec();
        for _ in 0..rng.usize(1..=4) {
            let at = rng.usize(..=input.len());
            match rng.u8(..6) {
                0 if at < input.len() => input[at] = rng.u8(..),
                1 => {
                    let token = TOKENS[rng.usize(..TOKENS.len())];
                    input.splice(at..at, token.iter().copied());
                }
                2 => {
                    let end = (at + rng.usize(1..8)).min(input.len());
                    input.drain(at..end);
                }
                3 => {
                    let end = (at + rng.usize(1..32)).min(input.len());
                    let repeated = input[at..end].to_vec();
                    input.splice(at..at, repeated);
                }
                4 => {
                    let other = seeds[rng.usize(..seeds.len())];
                    let from = rng.usize(..=other.len());
                    input.truncate(at);
                    input.extend_from_slice(&other[from..]);
                }
                _ if at < input.len() => input[at] = b"0123456789abcdefF"[rng.usize(..17)],
                _ => input.push(rng.u8(..)),
            }
        }
        run(&input);
    }
}
