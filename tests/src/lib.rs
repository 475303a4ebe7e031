//! Test support for the end-to-end suite: the real `control-plane` and `data-plane` binaries
//! as child processes, in-process fake upstreams that record what they receive, an admin
//! client, and [`eventually`] for convergence (no sleeps as synchronisation, no fixed ports).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// How long convergence may take before a test fails.
pub const CONVERGE: Duration = Duration::from_secs(15);

/// The path of a workspace binary, built next to this test executable; an absolute path is
/// taken as it is (a bench tool running another build, e.g. an instrumented data plane).
pub fn binary(name: &str) -> PathBuf {
    if std::path::Path::new(name).is_absolute() {
        return PathBuf::from(name);
    }
    let exe = std::env::current_exe().expect("executable path");
    // Tests run from target/<profile>/deps/, examples and bench tools from target/<profile>/
    // or below it: the binaries sit in target/<profile>/.
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .collect();
    candidates
        .iter()
        .find(|path| path.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} is missing next to {}: build the binaries first (cargo build --workspace --bins)",
                exe.display()
            )
        })
}

/// A child process killed (by its own PID) when dropped, with its stdout `key=value` lines.
pub struct Process {
    child: Child,
    values: HashMap<String, String>,
}

impl Process {
    /// Spawns `binary` and waits until it has printed every one of `keys` as `key=value`.
    pub fn spawn(binary: &str, args: &[&str], env: &[(&str, &str)], keys: &[&str]) -> Process {
        let mut command = Command::new(self::binary(binary));
        command
            .args(args)
            .envs(env.iter().copied())
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("E2E_SHOW_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        let mut child = command.spawn().expect("spawn binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines) = mpsc::channel();
        // Keep draining stdout for the life of the process so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let mut values = HashMap::new();
        let deadline = Instant::now() + CONVERGE;
        while !keys.iter().all(|k| values.contains_key(*k)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some((key, value)) = line.split_once('=') {
                        values.insert(key.to_owned(), value.to_owned());
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("{binary} did not print {keys:?} (got {values:?})");
                }
            }
        }
        Process { child, values }
    }

    /// A value the process printed.
    pub fn value(&self, key: &str) -> &str {
        &self.values[key]
    }

    /// A value the process printed before the last of the keys waited for, if it did.
    pub fn value_if_any(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit; whether it did.
    pub fn terminate_within(&mut self, limit: Duration) -> bool {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|status| status.success());
        let deadline = Instant::now() + limit;
        while sent && Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running control plane and an admin client for it.
pub struct ControlPlane {
    /// The process.
    pub process: Process,
    /// `http://127.0.0.1:<port>` of the admin API.
    pub admin_url: String,
    /// `http://127.0.0.1:<port>` of the config stream.
    pub xds_url: String,
    /// The admin token.
    pub token: String,
    client: reqwest::Client,
}

/// The admin token the tests use.
pub const TOKEN: &str = "e2e-admin-token";

impl ControlPlane {
    /// Starts a control plane on `database_url`, on ephemeral ports unless `xds_listen` names one.
    pub fn start(database_url: &str, xds_listen: Option<&str>) -> ControlPlane {
        ControlPlane::start_with(database_url, xds_listen, &[])
    }

    /// Like [`ControlPlane::start`], with extra command-line arguments.
    pub fn start_with(
        database_url: &str,
        xds_listen: Option<&str>,
        extra: &[&str],
    ) -> ControlPlane {
        ControlPlane::start_with_env(database_url, xds_listen, extra, &[])
    }

    /// Like [`ControlPlane::start_with`], with environment variables for the process (e.g.
    /// `OTEL_*`).
    pub fn start_with_env(
        database_url: &str,
        xds_listen: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ControlPlane {
        let xds = xds_listen.unwrap_or("127.0.0.1:0");
        let mut args = vec![
            "--admin-listen",
            "127.0.0.1:0",
            "--xds-listen",
            xds,
            "--database-url",
            database_url,
            "--admin-token",
            TOKEN,
        ];
        args.extend_from_slice(extra);
        let process = Process::spawn("control-plane", &args, env, &["admin_url", "xds_url"]);
        ControlPlane {
            admin_url: process.value("admin_url").to_owned(),
            xds_url: process.value("xds_url").to_owned(),
            process,
            token: TOKEN.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    /// Calls the admin API; returns the status, the `X-Config-Version` and the JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Option<u64>, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.admin_url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("admin API reachable");
        let status = response.status().as_u16();
        let version = response
            .headers()
            .get("x-config-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = response.json().await.unwrap_or(Value::Null);
        (status, version, body)
    }

    /// A write that must succeed; returns the version it produced.
    pub async fn write(&self, method: &str, path: &str, body: Option<Value>) -> u64 {
        let (status, version, reply) = self.call(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {reply}"
        );
        version.expect("writes carry X-Config-Version")
    }

    /// The fleet view.
    pub async fn data_planes(&self) -> Vec<Value> {
        let (_, _, body) = self.call("GET", "/api/v1/data-planes", None).await;
        body["items"].as_array().cloned().unwrap_or_default()
    }

    /// The config-stream address without its scheme (`127.0.0.1:port`), to restart a control
    /// plane on the same address.
    pub fn xds_listen(&self) -> String {
        self.xds_url
            .split_once("://")
            .map_or(self.xds_url.as_str(), |(_, rest)| rest)
            .to_owned()
    }

    /// Waits until the fleet view lists `node` connected and serving `version` or later;
    /// returns its entry.
    pub async fn fleet_shows(&self, node: &str, version: u64) -> Value {
        eventually(
            &format!(
                "{node} at version {version} in the fleet view of {}",
                self.admin_url
            ),
            || async {
                self.data_planes().await.into_iter().find(|dp| {
                    dp["node_id"] == node
                        && dp["connected"] == true
                        && dp["applied_version"].as_u64() >= Some(version)
                })
            },
        )
        .await
    }
}

/// A running data plane.
pub struct DataPlane {
    /// The process.
    pub process: Process,
    /// `http://127.0.0.1:<port>` of the proxy listener.
    pub proxy_url: String,
    /// `http://127.0.0.1:<port>` of the status listener.
    pub status_url: String,
    client: reqwest::Client,
}

impl DataPlane {
    /// Starts a data plane named `node_id` fed by the config stream at `xds_url`.
    pub fn start(xds_url: &str, node_id: &str) -> DataPlane {
        DataPlane::start_with(xds_url, node_id, &[])
    }

    /// Like [`DataPlane::start`], with extra command-line arguments.
    pub fn start_with(xds_url: &str, node_id: &str, extra: &[&str]) -> DataPlane {
        DataPlane::start_with_env(xds_url, node_id, extra, &[])
    }

    /// Like [`DataPlane::start_with`], with environment variables for the process (e.g.
    /// `OTEL_*`).
    pub fn start_with_env(
        xds_url: &str,
        node_id: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> DataPlane {
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--status-listen",
            "127.0.0.1:0",
            "--control-plane",
            xds_url,
            "--node-id",
            node_id,
            "--worker-threads",
            "1",
        ];
        args.extend_from_slice(extra);
        let process = Process::spawn("data-plane", &args, env, &["proxy_url", "status_url"]);
        DataPlane {
            proxy_url: process.value("proxy_url").to_owned(),
            status_url: process.value("status_url").to_owned(),
            process,
            client: reqwest::Client::new(),
        }
    }

    /// `https://127.0.0.1:<port>` of the TLS listener, when started with `--tls-listen`.
    pub fn tls_url(&self) -> Option<&str> {
        self.process.value_if_any("tls_url")
    }

    /// Sends `GET path` through the proxy; returns the status and the body (JSON or string).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        match self
            .client
            .get(format!("{}{path}", self.proxy_url))
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                let bytes = response.bytes().await.unwrap_or_default();
                let body = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
                (status, body)
            }
            Err(error) => (0, Value::String(error.to_string())),
        }
    }

    /// Sends a request through the proxy with extra headers; returns the status, the response
    /// headers and the body (JSON, or the text as a JSON string).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.proxy_url));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let bytes = response.bytes().await.unwrap_or_default();
                let body = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
                (status, headers, body)
            }
            Err(error) => (0, Default::default(), Value::String(error.to_string())),
        }
    }

    /// Waits until the data plane serves `version` or a later one.
    pub async fn applied(&self, version: u64) {
        eventually(&format!("version {version} applied"), || async {
            (self.ready_version().await >= Some(version)).then_some(())
        })
        .await;
    }

    /// The `/readyz` body, if ready.
    pub async fn readiness(&self) -> Option<Value> {
        let response = self
            .client
            .get(format!("{}/readyz", self.status_url))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json::<Value>().await.ok()
    }

    /// The value of the unlabelled metric `name` on `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self
            .client
            .get(format!("{}/metrics", self.status_url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .find_map(|value| value.trim().parse().ok())
    }

    /// The version `/readyz` reports, if ready.
    pub async fn ready_version(&self) -> Option<u64> {
        self.readiness().await?["version"].as_u64()
    }
}

/// What a fake upstream received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Headers (lowercase names).
    pub headers: HashMap<String, String>,
}

/// An HTTP server on 127.0.0.1:0 that answers `{"upstream": <name>, "uri": <path?query>}` and
/// records every request.
pub struct FakeUpstream {
    /// Its address.
    pub addr: SocketAddr,
    /// Every request so far.
    pub received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    /// Starts a fake upstream named `name`.
    pub async fn start(name: &str) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake upstream");
        let addr = listener.local_addr().expect("local addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let name: Arc<str> = name.into();
        let log = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let name = name.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let name = name.clone();
                        let log = log.clone();
                        async move {
                            let uri = request
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let headers = request
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                })
                                .collect();
                            let method = request.method().to_string();
                            let _ = request.into_body().collect().await;
                            log.lock().unwrap().push(Received {
                                method,
                                uri: uri.clone(),
                                headers,
                            });
                            let body = json!({"upstream": &*name, "uri": uri}).to_string();
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeUpstream {
            addr,
            received,
            task,
        }
    }

    /// An upstream document pointing at this server.
    pub fn upstream(&self) -> Value {
        json!({"nodes": [{"host": "127.0.0.1", "port": self.addr.port()}]})
    }

    /// How many requests it has received.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a [`ScriptedUpstream`] answers to one request.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Bytes,
    /// Content type.
    pub content_type: &'static str,
    /// How long to wait before answering (an upstream that is slow, not a synchronisation).
    pub delay: Duration,
}

impl Reply {
    /// A 200 answer with `body` as JSON.
    pub fn json(body: Value) -> Reply {
        Reply {
            status: 200,
            body: Bytes::from(body.to_string()),
            content_type: "application/json",
            delay: Duration::ZERO,
        }
    }

    /// A 200 answer with a plain-text body.
    pub fn text(body: &str) -> Reply {
        Reply {
            status: 200,
            body: Bytes::from(body.to_owned()),
            content_type: "text/plain",
            delay: Duration::ZERO,
        }
    }

    /// The same answer with another status.
    pub fn with_status(mut self, status: u16) -> Reply {
        self.status = status;
        self
    }

    /// The same answer, sent after `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// One exchange a [`ScriptedUpstream`] served, with when it started and finished.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// The request line and headers.
    pub request: Received,
    /// The request body.
    pub body: Bytes,
    /// When the request arrived (its head).
    pub started: Instant,
    /// When the answer was ready to be sent (after its delay).
    pub finished: Instant,
}

/// An HTTP server on 127.0.0.1:0 whose answers a test chooses per request, and which records
/// every exchange with its start and finish instants (to prove order or overlap of calls).
pub struct ScriptedUpstream {
    /// Its address.
    pub addr: SocketAddr,
    /// Every exchange so far, in the order they finished.
    pub exchanges: Arc<Mutex<Vec<Exchange>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedUpstream {
    /// Starts a server answering each request with `respond(request)`.
    pub async fn start<F>(respond: F) -> ScriptedUpstream
    where
        F: Fn(&Received) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind scripted upstream");
        let addr = listener.local_addr().expect("local addr");
        let exchanges = Arc::new(Mutex::new(Vec::new()));
        let respond = Arc::new(respond);
        let log = exchanges.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let respond = respond.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let respond = respond.clone();
                        let log = log.clone();
                        async move {
                            let started = Instant::now();
                            let received = Received {
                                method: request.method().to_string(),
                                uri: request
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: request
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                    })
                                    .collect(),
                            };
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let reply = respond(&received);
                            tokio::time::sleep(reply.delay).await;
                            log.lock().unwrap().push(Exchange {
                                request: received,
                                body,
                                started,
                                finished: Instant::now(),
                            });
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(reply.status)
                                    .header("content-type", reply.content_type)
                                    .body(Full::new(reply.body))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ScriptedUpstream {
            addr,
            exchanges,
            task,
        }
    }

    /// An upstream document pointing at this server.
    pub fn upstream(&self) -> Value {
        json!({"nodes": [{"host": "127.0.0.1", "port": self.addr.port()}]})
    }

    /// The exchange whose path and query start with `prefix` (the last one, if several).
    pub fn exchange(&self, prefix: &str) -> Option<Exchange> {
        self.exchanges
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|e| e.request.uri.starts_with(prefix))
            .cloned()
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after [`CONVERGE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + CONVERGE;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// The JSON pointers of an admin API error body's `details` (none when it has no details).
pub fn error_pointers(body: &serde_json::Value) -> Vec<&str> {
    body["error"]["details"]
        .as_array()
        .map(|details| {
            details
                .iter()
                .filter_map(|d| d["pointer"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// A name no other test in this run uses (for node ids, route ids, shared-Redis counters).
pub fn unique(prefix: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let n = RandomState::new().hash_one(Instant::now());
    format!("{prefix}-{}-{n:x}", std::process::id())
}

/// A fresh SQLite database URL in the temp directory.
pub fn sqlite_url() -> String {
    let path = std::env::temp_dir().join(format!("{}.db", unique("gateway-e2e")));
    format!("sqlite://{}?mode=rwc", path.display())
}

/// A TCP forwarder on 127.0.0.1:0 in front of `target`: counts the bytes it carries back to
/// its clients, and can be cut (open connections dropped, new ones refused) and restored, to
/// measure a stream on the socket or to take a database away from a process.
pub struct Forwarder {
    /// Its address.
    pub addr: SocketAddr,
    to_clients: Arc<std::sync::atomic::AtomicU64>,
    open: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    /// Runs until the test process ends (a test's forwarder is never stopped, only cut).
    _thread: std::thread::JoinHandle<()>,
}

impl Forwarder {
    /// Starts forwarding to `target`, on a thread of its own: the tests' runtime blocks while
    /// it waits for a process to start, and that process may need the forwarder to start.
    pub async fn start(target: SocketAddr) -> Forwarder {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let to_clients = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (counter, gate, tasks) = (to_clients.clone(), open.clone(), connections.clone());
        let (ready, bound) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("forwarder runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind forwarder");
                let _ = ready.send(listener.local_addr().expect("local addr"));
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    if !gate.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let counter = counter.clone();
                    let connection = tokio::spawn(async move {
                        let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        let none = Arc::new(AtomicU64::new(0));
                        tokio::select! {
                            () = pump(client_read, server_write, none) => {}
                            () = pump(server_read, client_write, counter) => {}
                        }
                    });
                    tasks.lock().unwrap().push(connection.abort_handle());
                }
            });
        });
        let addr = bound.await.expect("the forwarder binds");
        Forwarder {
            addr,
            to_clients,
            open,
            connections,
            _thread: thread,
        }
    }

    /// Bytes carried from the target back to clients so far.
    pub fn bytes_to_clients(&self) -> u64 {
        self.to_clients.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Drops every open connection and refuses new ones until [`Forwarder::restore`].
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies bytes from `from` to `to` until either side closes, counting them.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counter: Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        counter.fetch_add(read as u64, std::sync::atomic::Ordering::SeqCst);
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// `url` (`scheme://user@host:port/path`) with its host and port replaced by `addr`.
pub fn url_via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let user = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"));
    format!("{scheme}://{}{addr}{path}", user.unwrap_or_default())
}

/// Runs `binary` with `args` to its end (at most [`CONVERGE`]); its exit status and stderr.
pub fn run_to_exit(binary: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(self::binary(binary))
        .args(args)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn binary");
    let deadline = Instant::now() + CONVERGE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                use std::io::Read;
                let _ = pipe.read_to_string(&mut stderr);
            }
            return (status.code(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, String::new());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
