//! OpenTelemetry end to end: real control-plane and data-plane processes export their spans
//! over OTLP/gRPC to a collector in this test process, which records every span.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_e2e::{
    ControlPlane, DataPlane, FakeUpstream, Received, Reply, ScriptedUpstream, TOKEN, eventually,
    sqlite_url, unique,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::{Value, json};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// One exported span, with the `service.name` of the process that sent it.
#[derive(Clone, Debug)]
struct Recorded {
    service: String,
    span: Span,
}

impl Recorded {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }

    /// The attribute `key` as JSON (strings, integers, booleans, doubles).
    fn attribute(&self, key: &str) -> Option<Value> {
        attributes(&self.span.attributes).remove(key)
    }

    fn is_error(&self) -> bool {
        self.span
            .status
            .as_ref()
            .is_some_and(|status| status.code == 2)
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, Value> {
    list.iter()
        .filter_map(|kv| Some((kv.key.clone(), json_of(kv.value.as_ref()?)?)))
        .collect()
}

fn json_of(value: &AnyValue) -> Option<Value> {
    Some(match value.value.as_ref()? {
        any_value::Value::StringValue(text) => json!(text),
        any_value::Value::IntValue(number) => json!(number),
        any_value::Value::BoolValue(flag) => json!(flag),
        any_value::Value::DoubleValue(number) => json!(number),
        _ => return None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/gRPC trace collector on 127.0.0.1:0 that records every span it is sent. It runs on
/// a thread of its own: a test that blocks its runtime (waiting for a process to exit) must not
/// keep a process's last export from being answered.
struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<Recorded>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Clone)]
struct Recording(Arc<Mutex<Vec<Recorded>>>);

#[tonic::async_trait]
impl TraceService for Recording {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| attributes(&resource.attributes).remove("service.name"))
                .and_then(|name| name.as_str().map(str::to_owned))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    spans.push(Recorded {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let service = TraceServiceServer::new(Recording(Arc::clone(&spans)));
        let (bound, address) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the collector's runtime");
            runtime.block_on(async move {
                let incoming =
                    tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
                        .expect("bind the collector");
                let _ = bound.send(incoming.local_addr().expect("local addr"));
                let _ = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        let addr = address.recv().expect("the collector binds");
        Collector {
            endpoint: format!("http://{addr}"),
            spans,
            stop: Some(stop),
        }
    }

    fn spans(&self) -> Vec<Recorded> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of trace `trace_id` sent by `service`.
    fn trace(&self, service: &str, trace_id: &str) -> Vec<Recorded> {
        self.spans()
            .into_iter()
            .filter(|s| s.service == service && s.trace_id() == trace_id)
            .collect()
    }

    /// The environment that points a process at this collector: a short batch delay, so that
    /// spans arrive within a test's patience.
    fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ]
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A fresh directory for one test's files.
fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("tracing"));
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

/// The (trace id, parent id, flags) of the `traceparent` a node received.
fn traceparent(received: &Received) -> (String, String, String) {
    let value = received
        .headers
        .get("traceparent")
        .unwrap_or_else(|| panic!("no traceparent in {received:?}"));
    let fields: Vec<&str> = value.split('-').collect();
    assert_eq!(fields.len(), 4, "{value}");
    (
        fields[1].to_owned(),
        fields[2].to_owned(),
        fields[3].to_owned(),
    )
}

#[tokio::test]
async fn a_batch_request_is_one_server_span_with_a_client_span_per_sub_request() {
    let collector = Collector::start();
    let first = FakeUpstream::start("first").await;
    let second = FakeUpstream::start("second").await;
    let cp = ControlPlane::start_with_env(&sqlite_url(), None, &[], &collector.env());
    let dir = scratch_dir();
    let log = dir.join("access.log");
    let dp = DataPlane::start_with_env(
        &cp.xds_url,
        &unique("dp-traced"),
        &["--access-log", log.to_str().expect("a UTF-8 path")],
        &collector.env(),
    );
    cp.write("PUT", "/api/v1/upstreams/first", Some(first.upstream()))
        .await;
    cp.write("PUT", "/api/v1/upstreams/second", Some(second.upstream()))
        .await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/routes/both",
            Some(json!({"paths": ["/both/:id"], "methods": ["GET"], "batch": {"merge": "object", "requests": [
                {"name": "one", "upstream_id": "first", "path": "/one/{param.id}"},
                {"name": "two", "upstream_id": "second", "path": "/two"}
            ]}})),
        )
        .await;
    dp.applied(version).await;

    let traceparent_sent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    let (status, _, body) = dp
        .send(
            "GET",
            "/both/7",
            &[
                ("traceparent", &traceparent_sent),
                ("tracestate", "vendor=opaque"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");

    eventually("the data plane's three spans", || async {
        (collector.trace("gateway-data-plane", TRACE_ID).len() >= 3).then_some(())
    })
    .await;
    // They came in one batch (a request's spans end within microseconds of each other), or the
    // next one, a tenth of a second later: nothing else of this trace is on its way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spans = collector.trace("gateway-data-plane", TRACE_ID);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let servers: Vec<&Recorded> = spans
        .iter()
        .filter(|s| s.kind() == SpanKind::Server)
        .collect();
    assert_eq!(servers.len(), 1, "{spans:#?}");
    let server = servers[0];
    assert_eq!(server.parent_id(), CLIENT_SPAN);
    assert_eq!(server.span.name, "GET /both/:id");
    assert_eq!(server.span.trace_state, "vendor=opaque");
    for (key, value) in [
        ("http.request.method", json!("GET")),
        ("url.path", json!("/both/7")),
        ("url.scheme", json!("http")),
        ("http.route", json!("/both/:id")),
        ("http.response.status_code", json!(200)),
        ("server.address", json!("127.0.0.1")),
        ("client.address", json!("127.0.0.1")),
        ("gateway.route.id", json!("both")),
        ("gateway.config.version", json!(version)),
    ] {
        assert_eq!(server.attribute(key), Some(value), "{key} in {server:#?}");
    }
    assert!(!server.is_error());

    let clients: Vec<&Recorded> = spans
        .iter()
        .filter(|s| s.kind() == SpanKind::Client)
        .collect();
    assert_eq!(clients.len(), 2, "{spans:#?}");
    for (key, node) in [("one", &first), ("two", &second)] {
        let client = clients
            .iter()
            .find(|s| s.attribute("gateway.batch.key") == Some(json!(key)))
            .unwrap_or_else(|| panic!("no client span for {key}: {clients:#?}"));
        assert_eq!(client.parent_id(), server.span_id());
        assert_eq!(client.attribute("http.request.method"), Some(json!("GET")));
        assert_eq!(client.attribute("server.address"), Some(json!("127.0.0.1")));
        assert_eq!(
            client.attribute("server.port"),
            Some(json!(node.addr.port()))
        );
        assert_eq!(
            client.attribute("http.response.status_code"),
            Some(json!(200))
        );
        // The node's parent is this client span, in the client's trace.
        let received = node.received.lock().unwrap().clone();
        assert_eq!(received.len(), 1, "{received:?}");
        let (trace_id, parent_id, flags) = traceparent(&received[0]);
        assert_eq!(trace_id, TRACE_ID);
        assert_eq!(parent_id, client.span_id());
        assert_eq!(flags, "01");
        assert_eq!(
            received[0].headers.get("tracestate").map(String::as_str),
            Some("vendor=opaque")
        );
    }

    // The access log's line carries the server span's trace.
    let lines = eventually("the access-log line", || async {
        let lines = log_lines(&log);
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    let line = lines
        .iter()
        .find(|line| line["path"] == "/both/7")
        .expect("a line for the batch request");
    assert_eq!(line["trace_id"], TRACE_ID);

    // Each admin write is a control-plane span with the version it made.
    let writes = eventually("the control plane's three write spans", || async {
        let writes: Vec<Recorded> = collector
            .spans()
            .into_iter()
            .filter(|s| s.service == "gateway-control-plane")
            .collect();
        (writes.len() >= 3).then_some(writes)
    })
    .await;
    let route_write = writes
        .iter()
        .find(|s| s.attribute("url.path") == Some(json!("/api/v1/routes/both")))
        .unwrap_or_else(|| panic!("no span for the route write: {writes:#?}"));
    assert_eq!(route_write.kind(), SpanKind::Server);
    assert_eq!(route_write.span.name, "PUT /api/v1/{kind}/{id}");
    assert_eq!(
        route_write.attribute("http.route"),
        Some(json!("/api/v1/{kind}/{id}"))
    );
    assert_eq!(
        route_write.attribute("http.request.method"),
        Some(json!("PUT"))
    );
    assert!(
        route_write
            .attribute("http.response.status_code")
            .and_then(|s| s.as_u64())
            .is_some_and(|status| (200..300).contains(&status)),
        "{route_write:#?}"
    );
    assert_eq!(
        route_write.attribute("gateway.config.version"),
        Some(json!(version))
    );

    // A client's trace continues through an admin write too.
    let write_trace = "0af7651916cd43dd8448eb211c80319c";
    let response = reqwest::Client::new()
        .put(format!("{}/api/v1/upstreams/third", cp.admin_url))
        .bearer_auth(TOKEN)
        .header(
            "traceparent",
            format!("00-{write_trace}-b7ad6b7169203331-01"),
        )
        .json(&first.upstream())
        .send()
        .await
        .expect("the admin API answers");
    assert!(response.status().is_success());
    let made: u64 = response.headers()["x-config-version"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let continued = eventually("the continued write's span", || async {
        collector
            .trace("gateway-control-plane", write_trace)
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(continued.parent_id(), "b7ad6b7169203331");
    assert_eq!(
        continued.attribute("gateway.config.version"),
        Some(json!(made))
    );
    // Reads are not traced.
    assert!(
        collector
            .spans()
            .iter()
            .filter(|s| s.service == "gateway-control-plane")
            .all(|s| s.attribute("http.request.method") != Some(json!("GET")))
    );
}

#[tokio::test]
async fn a_hedged_request_has_a_client_span_per_attempt_the_loser_marked_cancelled() {
    const HEDGED_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    let collector = Collector::start();
    let slow = ScriptedUpstream::start(|_| Reply::text("slow").after(Duration::from_secs(2))).await;
    let fast = FakeUpstream::start("fast").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start_with_env(&cp.xds_url, &unique("dp-hedge"), &[], &collector.env());
    // Nearly every first attempt goes to the slow node; the hedge goes to the other.
    cp.write(
        "PUT",
        "/api/v1/upstreams/pair",
        Some(
            json!({"nodes": [{"host": "127.0.0.1", "port": slow.addr.port(), "weight": 100},
                              {"host": "127.0.0.1", "port": fast.addr.port(), "weight": 1}],
                    "hedge": {"delay_ms": 20}}),
        ),
    )
    .await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/routes/hedged",
            Some(json!({"paths": ["/hedged"], "upstream_id": "pair"})),
        )
        .await;
    dp.applied(version).await;

    let traceparent = format!("00-{HEDGED_TRACE}-{CLIENT_SPAN}-01");
    let (status, _, body) = dp
        .send("GET", "/hedged", &[("traceparent", &traceparent)])
        .await;
    assert_eq!((status, body["upstream"].as_str()), (200, Some("fast")));

    let spans = eventually("the server span and both attempts' spans", || async {
        let spans = collector.trace("gateway-data-plane", HEDGED_TRACE);
        (spans.len() >= 3).then_some(spans)
    })
    .await;
    let server = spans
        .iter()
        .find(|s| s.kind() == SpanKind::Server)
        .unwrap_or_else(|| panic!("no server span: {spans:#?}"));
    let attempt = |port: u16| {
        spans
            .iter()
            .find(|s| {
                s.kind() == SpanKind::Client && s.attribute("server.port") == Some(json!(port))
            })
            .unwrap_or_else(|| panic!("no client span to port {port}: {spans:#?}"))
    };
    let (first, hedge) = (attempt(slow.addr.port()), attempt(fast.addr.port()));
    for span in [first, hedge] {
        assert_eq!(span.parent_id(), server.span_id());
        assert!(!span.is_error(), "{span:#?}");
    }
    // The hedge is marked and answered; the first attempt, given up, is marked cancelled.
    assert_eq!(hedge.attribute("gateway.hedge"), Some(json!(true)));
    assert_eq!(
        hedge.attribute("http.response.status_code"),
        Some(json!(200))
    );
    assert_eq!(hedge.attribute("gateway.hedge.cancelled"), None);
    assert_eq!(first.attribute("gateway.hedge"), None);
    assert_eq!(
        first.attribute("gateway.hedge.cancelled"),
        Some(json!(true))
    );
    assert_eq!(first.attribute("http.response.status_code"), None);
}

#[tokio::test]
async fn with_a_ratio_of_zero_only_sampled_parents_are_traced() {
    let collector = Collector::start();
    let app = FakeUpstream::start("app").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let mut env = collector.env();
    env.push(("OTEL_TRACES_SAMPLER_ARG", "0"));
    env.push(("OTEL_SERVICE_NAME", "edge"));
    let dp = DataPlane::start_with_env(&cp.xds_url, &unique("dp-ratio"), &[], &env);
    cp.write("PUT", "/api/v1/upstreams/app", Some(app.upstream()))
        .await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/routes/app",
            Some(json!({"paths": ["/app/*"], "upstream_id": "app"})),
        )
        .await;
    dp.applied(version).await;

    // No parent, ratio 0: not sampled; the node still learns the trace and the decision.
    let (status, _, _) = dp.send("GET", "/app/unsampled", &[]).await;
    assert_eq!(status, 200);
    let (unsampled_trace, _, flags) = traceparent(&app.received.lock().unwrap()[0]);
    assert_eq!(flags, "00");
    // An unsampled parent: passed on as it came.
    let unsampled_parent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-00");
    let (status, _, _) = dp
        .send(
            "GET",
            "/app/parent-unsampled",
            &[("traceparent", &unsampled_parent)],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        app.received.lock().unwrap()[1].headers["traceparent"],
        unsampled_parent
    );
    // A sampled parent is honoured whatever the ratio.
    let sampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let (status, _, _) = dp
        .send(
            "GET",
            "/app/sampled",
            &[(
                "traceparent",
                &format!("00-{sampled_trace}-b7ad6b7169203331-01"),
            )],
        )
        .await;
    assert_eq!(status, 200);
    eventually("the sampled request's spans", || async {
        (collector.trace("edge", sampled_trace).len() >= 2).then_some(())
    })
    .await;
    // The batch processor exports in order: the earlier requests' spans would have come first.
    let traces: Vec<String> = collector.spans().iter().map(Recorded::trace_id).collect();
    assert!(!traces.contains(&unsampled_trace), "{traces:?}");
    assert!(!traces.contains(&TRACE_ID.to_owned()), "{traces:?}");
    assert!(traces.iter().all(|t| t == sampled_trace), "{traces:?}");
}

#[tokio::test]
async fn spans_still_queued_are_exported_on_shutdown() {
    let collector = Collector::start();
    let app = FakeUpstream::start("app").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    // A batch delay far beyond the test: only the shutdown's flush can send these spans.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
    ];
    let mut dp = DataPlane::start_with_env(&cp.xds_url, &unique("dp-flush"), &[], &env);
    cp.write("PUT", "/api/v1/upstreams/app", Some(app.upstream()))
        .await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/routes/app",
            Some(json!({"paths": ["/app"], "upstream_id": "app"})),
        )
        .await;
    dp.applied(version).await;
    let (status, _, _) = dp.send("GET", "/app", &[]).await;
    assert_eq!(status, 200);
    let (trace_id, _, flags) = traceparent(&app.received.lock().unwrap()[0]);
    assert_eq!(flags, "01");
    assert!(collector.spans().is_empty());
    assert!(dp.process.terminate_within(Duration::from_secs(20)));
    let spans = collector.trace("gateway-data-plane", &trace_id);
    assert_eq!(spans.len(), 2, "{:#?}", collector.spans());
}
