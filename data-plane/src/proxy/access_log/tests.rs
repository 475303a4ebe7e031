use std::convert::Infallible;
use std::sync::Condvar;

use http::{HeaderMap, StatusCode};
use http_body_util::combinators::BoxBody as TestBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::*;
use crate::metrics::BatchOutcome;
use crate::proxy::{Options, Proxy, X_GATEWAY_CONFIG_VERSION, serve_with};
use crate::runtime::Runtime;
use crate::test_support::{FakeUpstream, snapshot};
use crate::transport::body::{UpstreamBody, empty_body};
use crate::transport::h1::HeadForm;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn traceparent_values_are_checked_as_w3c_says() {
    let valid = parse_traceparent(TRACEPARENT.as_bytes()).unwrap();
    assert_eq!(&valid, b"4bf92f3577b34da6a3ce929d0e0e4736");
    // A later version may add fields after a dash.
    let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
    assert!(parse_traceparent(later.as_bytes()).is_some());
    for invalid in [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
    ] {
        assert!(
            parse_traceparent(invalid.as_bytes()).is_none(),
            "{invalid:?} was accepted"
        );
    }
}

#[test]
fn times_are_rfc3339_utc_with_milliseconds() {
    for (unix_ms, expected) in [
        (0, "1970-01-01T00:00:00.000Z"),
        (951_782_400_007, "2000-02-29T00:00:00.007Z"),
        (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
        (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
    ] {
        let mut out = Vec::new();
        rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }
}

/// A line as the writer formats it, with what the request path noted.
#[test]
fn a_line_carries_every_field_as_json() {
    let state = State::new();
    let log = AccessLog::start(Box::new(|| Ok(Box::new(io::sink()))), 8, state).unwrap();
    let request = Request::builder()
        .method("POST")
        .uri("/orders/7?apikey=secret")
        .header("host", "api.example")
        .header("traceparent", TRACEPARENT)
        .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
        .unwrap();
    let mut pending = log.begin(
        &request,
        "[::ffff:10.0.0.9]:5000".parse().unwrap(),
        Instant::now(),
    );
    let notes = pending.notes().unwrap();
    notes.tried(
        &Authority::from_static("10.1.1.1:8080"),
        Duration::from_micros(1500),
    );
    notes.tried(
        &Authority::from_static("10.1.1.2:8080"),
        Duration::from_micros(2250),
    );
    notes.identified(None, Some(&HeaderValue::from_static("req-\"1\"")));
    // Only the client request's own plugins say who it is.
    notes.identified(None, Some(&HeaderValue::from_static("sub-request")));
    pending.answered(StatusCode::CREATED, 42);
    let mut entry = pending.entry.take().unwrap();
    entry.bytes_out = 321;
    entry.latency = Duration::from_micros(4321);
    let mut out = Vec::new();
    entry.write_json(&Now::read(), &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.ends_with("}\n") && text.matches('\n').count() == 1,
        "{text}"
    );
    let line: Value = serde_json::from_str(&text).unwrap();
    let time = line["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T",
        "{time}"
    );
    let mut today = Vec::new();
    rfc3339_millis(SystemTime::now(), &mut today);
    // The request began just now: its date is today's (unless the test straddles midnight).
    assert_eq!(&time[..10], &String::from_utf8(today).unwrap()[..10]);
    let expected = json!({
        "time": time,
        "request_id": "req-\"1\"",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "method": "POST",
        "host": "api.example",
        "path": "/orders/7",
        "route": null,
        "consumer": null,
        "upstream": "10.1.1.2:8080",
        "status": 201,
        "bytes_in": 7,
        "bytes_out": 321,
        "latency_ms": 4.321,
        "upstream_latency_ms": 2.25,
        "config_version": 42,
        "client": "10.0.0.9",
    });
    assert_eq!(line, expected);
    // The keys in the documented order, and no query string anywhere.
    let keys: Vec<&str> = text
        .split(",\"")
        .map(|part| part.trim_start_matches("{\"").split('"').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "time",
            "request_id",
            "trace_id",
            "method",
            "host",
            "path",
            "route",
            "consumer",
            "upstream",
            "status",
            "bytes_in",
            "bytes_out",
            "latency_ms",
            "upstream_latency_ms",
            "config_version",
            "client"
        ]
    );
    assert!(!text.contains("secret"));
}

#[test]
fn without_an_id_or_a_trace_a_request_gets_a_generated_id_and_a_null_trace() {
    let state = State::new();
    let log = AccessLog::start(Box::new(|| Ok(Box::new(io::sink()))), 8, state).unwrap();
    let request = Request::builder()
        .uri("/")
        .header("traceparent", "garbage")
        .body(empty_body())
        .unwrap();
    let mut pending = log.begin(&request, "127.0.0.1:1".parse().unwrap(), Instant::now());
    let entry = pending.entry.take().unwrap();
    let mut first = Vec::new();
    entry.write_json(&Now::read(), &mut first);
    let mut second = Vec::new();
    entry.write_json(&Now::read(), &mut second);
    let (first, second): (Value, Value) = (
        serde_json::from_slice(&first).unwrap(),
        serde_json::from_slice(&second).unwrap(),
    );
    let id = first["request_id"].as_str().unwrap();
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_ne!(first["request_id"], second["request_id"]);
    assert_eq!(first["trace_id"], Value::Null);
    assert_eq!(first["host"], Value::Null);
    assert_eq!(first["bytes_in"], 0);
    assert_eq!(first["upstream_latency_ms"], Value::Null);
}

/// A writer whose `write` blocks until the test opens it, as a stuck disk would.
#[derive(Clone)]
struct StuckDisk {
    entered: mpsc::Sender<()>,
    open: Arc<(Mutex<bool>, Condvar)>,
    written: Arc<Mutex<Vec<u8>>>,
}

impl Write for StuckDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.entered.send(());
        let (open, opened) = &*self.open;
        let mut open = open.lock().unwrap();
        while !*open {
            open = opened.wait(open).unwrap();
        }
        self.written.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn request(path: &str) -> Request<UpstreamBody> {
    Request::builder()
        .uri(path)
        .header("host", "example.test")
        .body(empty_body())
        .unwrap()
}

#[tokio::test]
async fn a_stuck_disk_drops_and_counts_lines_and_never_stalls_a_request() {
    let (entered, entering) = mpsc::channel();
    let disk = StuckDisk {
        entered,
        open: Arc::new((Mutex::new(false), Condvar::new())),
        written: Arc::default(),
    };
    let state = State::new();
    let opener: Opener = {
        let disk = disk.clone();
        Box::new(move || Ok(Box::new(disk.clone()) as Box<dyn Write + Send>))
    };
    let capacity = 4;
    let log = AccessLog::start(opener, capacity, Arc::clone(&state)).unwrap();
    let options = Options {
        access_log: Some(log.clone()),
        expose_config_version: false,
    };
    let proxy = Proxy::with_options(Arc::clone(&state), options);
    let serve = |path: &'static str| {
        let proxy = &proxy;
        async move {
            let (response, pending) = proxy
                .handle(
                    "127.0.0.1:4000".parse().unwrap(),
                    request(path),
                    HeadForm::Map,
                )
                .await;
            pending.expect("the access log is on").finish(0);
            response.status()
        }
    };

    // The first line reaches the writer, which is then stuck in its write.
    assert_eq!(serve("/first").await, StatusCode::NOT_FOUND);
    entering
        .recv_timeout(Duration::from_secs(10))
        .expect("the writer writes the first line");

    // Every request is still answered at once: the channel takes `capacity` lines, the rest
    // are dropped and counted.
    let more = 20;
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let mut answered = 0;
        for _ in 0..more {
            if serve("/later").await == StatusCode::NOT_FOUND {
                answered += 1;
            }
        }
        answered
    })
    .await
    .expect("requests are never held up by the access log");
    assert_eq!(answered, more);
    assert_eq!(state.metrics.requests_with(StatusCode::NOT_FOUND), 21);
    assert_eq!(state.metrics.access_log_dropped(), (more - capacity) as u64);
    let rendered = state.metrics.render();
    assert!(
        rendered.contains(&format!(
            "\ngateway_access_log_dropped_total {}\n",
            more - capacity
        )),
        "{rendered}"
    );

    // The disk comes back: the lines the channel held are written, and nothing else.
    {
        let (open, opened) = &*disk.open;
        *open.lock().unwrap() = true;
        opened.notify_all();
    }
    assert!(log.flush(Duration::from_secs(10)));
    let written = String::from_utf8(disk.written.lock().unwrap().clone()).unwrap();
    let paths: Vec<String> = written
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["path"].to_string())
        .collect();
    assert_eq!(paths.len(), 1 + capacity, "{written}");
    assert_eq!(paths[0], "\"/first\"");
    assert!(paths[1..].iter().all(|p| p == "\"/later\""));
}

#[tokio::test]
async fn a_reopened_file_takes_the_next_lines() {
    let dir = std::env::temp_dir().join(format!(
        "access-log-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let rotated = dir.join("access.log.1");
    let state = State::new();
    let log = AccessLog::open(&AccessLogTarget::File(path.clone()), Arc::clone(&state))
        .unwrap()
        .unwrap();
    let proxy = Proxy::with_options(
        state,
        Options {
            access_log: Some(log.clone()),
            expose_config_version: false,
        },
    );
    let line = |path: &'static str| {
        let proxy = &proxy;
        async move {
            let (_, pending) = proxy
                .handle(
                    "127.0.0.1:4000".parse().unwrap(),
                    request(path),
                    HeadForm::Map,
                )
                .await;
            pending.unwrap().finish(0);
        }
    };
    line("/before").await;
    assert!(log.flush(Duration::from_secs(10)));
    // logrotate moves the file, then signals.
    std::fs::rename(&path, &rotated).unwrap();
    log.reopen();
    line("/after").await;
    assert!(log.flush(Duration::from_secs(10)));
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap();
    assert!(read(&rotated).contains("\"path\":\"/before\""));
    assert_eq!(read(&rotated).lines().count(), 1);
    assert!(read(&path).contains("\"path\":\"/after\""));
    assert_eq!(read(&path).lines().count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unwritable_path_fails_at_start() {
    let state = State::new();
    let target = AccessLogTarget::File("/nonexistent-dir/for/sure/access.log".into());
    assert!(AccessLog::open(&target, state.clone()).is_err());
    assert!(
        AccessLog::open(&AccessLogTarget::Off, state)
            .unwrap()
            .is_none()
    );
}

type TestBody = TestBoxBody<Bytes, Infallible>;

/// A proxy on 127.0.0.1:0 with the access log in a file and the version header on.
struct Logged {
    addr: SocketAddr,
    state: Arc<State>,
    log: AccessLog,
    path: std::path::PathBuf,
    client: Client<HttpConnector, TestBody>,
}

impl Logged {
    async fn start(resources: &[(&str, &str, Value)]) -> Logged {
        let state = State::new();
        state.install(Runtime::compile(&snapshot(3, resources), None).unwrap());
        let path = std::env::temp_dir().join(format!(
            "access-log-{}-{:x}.log",
            std::process::id(),
            fastrand::u64(..)
        ));
        let log = AccessLog::open(&AccessLogTarget::File(path.clone()), Arc::clone(&state))
            .unwrap()
            .unwrap();
        let options = Options {
            access_log: Some(log.clone()),
            expose_config_version: true,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Proxy::with_options(Arc::clone(&state), options);
        tokio::spawn(serve_with(listener, proxy, std::future::pending()));
        Logged {
            addr,
            state,
            log,
            path,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&'static str>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body: TestBody = match body {
            Some(body) => Full::new(Bytes::from_static(body.as_bytes())).boxed(),
            None => Empty::new().boxed(),
        };
        let response = self
            .client
            .request(request.body(body).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, body)
    }

    /// Every line so far, once the writer has written them.
    fn lines(&self) -> Vec<Value> {
        assert!(self.log.flush(Duration::from_secs(10)));
        std::fs::read_to_string(&self.path)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tokio::test]
async fn each_client_request_is_one_line_with_its_route_node_consumer_and_bytes() {
    let fake = FakeUpstream::start(Duration::ZERO).await;
    let node = format!("127.0.0.1:{}", fake.addr.port());
    let upstream = json!({"nodes": [{"host": "127.0.0.1", "port": fake.addr.port()}]});
    let proxy = Logged::start(&[
        ("upstreams", "echo", upstream),
        (
            "routes",
            "echo",
            json!({"paths": ["/echo/*"], "upstream_id": "echo"}),
        ),
        (
            "routes",
            "auth",
            json!({"paths": ["/auth"], "upstream_id": "echo",
                   "plugins": {"request-id": {}, "key-auth": {}}}),
        ),
        (
            "consumers",
            "alice",
            json!({"credentials": {"key-auth": {"key": "alice-key-0123456789"}}}),
        ),
        (
            "routes",
            "batch",
            json!({"paths": ["/batch"], "batch": {"merge": "object", "requests": [
                {"name": "a", "upstream_id": "echo", "path": "/a"},
                {"name": "b", "upstream_id": "echo", "path": "/b"},
                {"name": "c", "upstream_id": "echo", "path": "/c?x={resp.a./missing}"},
                {"name": "d", "upstream_id": "echo", "path": "/d?x={resp.c./x}", "required": false}
            ]}}),
        ),
    ])
    .await;

    // The proxy's own HTTP/1.1 loop (no body), with a trace.
    let (status, headers, _) = proxy
        .send("GET", "/echo/x?k=v", &[("traceparent", TRACEPARENT)], None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[&X_GATEWAY_CONFIG_VERSION], "3");
    // hyper's server (a body): bytes counted by the counting body.
    let (status, headers, echoed) = proxy
        .send("POST", "/echo/y", &[], Some("hello world"))
        .await;
    assert_eq!(
        (status, echoed.as_ref()),
        (StatusCode::OK, &b"hello world"[..])
    );
    assert_eq!(headers[&X_GATEWAY_CONFIG_VERSION], "3");
    // No route: the gateway's own answer.
    let (status, headers, not_found) = proxy.send("GET", "/nowhere", &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers[&X_GATEWAY_CONFIG_VERSION], "3");
    // A consumer, and the request-id plugin's id.
    let (status, _, _) = proxy
        .send(
            "GET",
            "/auth",
            &[("apikey", "alice-key-0123456789"), ("x-request-id", "id-7")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // A plugin's refusal.
    let (status, headers, refusal) = proxy.send("GET", "/auth", &[], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[&X_GATEWAY_CONFIG_VERSION], "3");
    // A batch: one line for the client request.
    let (status, headers, _) = proxy.send("GET", "/batch", &[], None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers[&X_GATEWAY_CONFIG_VERSION], "3");

    let lines = proxy.lines();
    assert_eq!(lines.len(), 6, "{lines:#?}");
    let (get, post, missing, alice, refused, batch) = (
        &lines[0], &lines[1], &lines[2], &lines[3], &lines[4], &lines[5],
    );
    assert_eq!(get["route"], "echo");
    assert_eq!(get["path"], "/echo/x");
    assert_eq!(get["status"], 200);
    assert_eq!(get["upstream"], node.as_str());
    assert_eq!(get["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(get["config_version"], 3);
    assert_eq!(get["bytes_in"], 0);
    assert_eq!(get["bytes_out"], 0);
    assert_eq!(get["client"], "127.0.0.1");
    assert!(get["upstream_latency_ms"].as_f64().unwrap() > 0.0);
    assert!(get["latency_ms"].as_f64().unwrap() >= get["upstream_latency_ms"].as_f64().unwrap());

    assert_eq!(post["method"], "POST");
    assert_eq!(post["bytes_in"], 11);
    assert_eq!(post["bytes_out"], 11);
    assert_eq!(post["trace_id"], Value::Null);

    assert_eq!(missing["route"], Value::Null);
    assert_eq!(missing["upstream"], Value::Null);
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["bytes_out"], not_found.len());

    assert_eq!(alice["route"], "auth");
    assert_eq!(alice["consumer"], "alice");
    assert_eq!(alice["request_id"], "id-7");

    assert_eq!(refused["status"], 401);
    assert_eq!(refused["consumer"], Value::Null);
    assert_eq!(refused["upstream"], Value::Null);
    assert_eq!(refused["bytes_out"], refusal.len());
    assert_eq!(refused["request_id"].as_str().unwrap().len(), 36);

    assert_eq!(batch["route"], "batch");
    assert_eq!(batch["status"], 502);
    assert_eq!(
        batch["subrequests"], 2,
        "the third and fourth are never sent"
    );
    assert!(batch["upstream"].as_str().is_some());
    let metrics = &proxy.state.metrics;
    assert_eq!(metrics.batch_subrequests(BatchOutcome::Ok), 2);
    assert_eq!(metrics.batch_subrequests(BatchOutcome::Error), 1);
    assert_eq!(metrics.batch_subrequests(BatchOutcome::Skipped), 1);
    assert_eq!(metrics.batch_subrequests(BatchOutcome::Timeout), 0);
    assert_eq!(metrics.requests_timed(), 6);
    // Both echo requests, auth's, and the batch's two.
    assert_eq!(metrics.upstream_exchanges(), 5);
}

#[tokio::test]
async fn a_request_refused_before_it_is_parsed_is_logged_too() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let proxy = Logged::start(&[]).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let body_length = answer.split("\r\n\r\n").nth(1).unwrap().len();
    let lines = proxy.lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["status"], 400);
    assert_eq!(lines[0]["method"], Value::Null);
    assert_eq!(lines[0]["path"], Value::Null);
    assert_eq!(lines[0]["route"], Value::Null);
    assert_eq!(lines[0]["config_version"], 3);
    assert_eq!(lines[0]["bytes_out"], body_length);
}
