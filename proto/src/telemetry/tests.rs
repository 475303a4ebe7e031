use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use prost::Message as _;

use super::otlp::{Scratch, encode_request, encode_resource};
use super::{Settings, SetupError, parse_headers, percent_decode};

fn context(trace: u128, span: u64, sampled: bool, remote: bool, state: &str) -> SpanContext {
    SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        remote,
        state.parse().unwrap_or_else(|_| TraceState::default()),
    )
}

fn at(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// Spans with every kind of field the SDK can hand an exporter, over two scopes interleaved.
fn spans() -> Vec<SpanData> {
    let gateway = InstrumentationScope::builder("gateway").build();
    let other = InstrumentationScope::builder("other")
        .with_version("1.2.3")
        .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
        .with_attributes([KeyValue::new("scope.attribute", 7)])
        .build();
    let server = SpanData {
        span_context: context(
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            0x00f0_67aa_0ba9_02b7,
            true,
            false,
            "",
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: SpanKind::Server,
        name: Cow::Borrowed("GET /orders/{id}"),
        start_time: at(1_700_000_000_123_456_789),
        end_time: at(1_700_000_000_223_456_789),
        attributes: vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("url.path", String::from("/orders/7")),
            KeyValue::new("server.port", 8080_i64),
            KeyValue::new("gateway.config.version", i64::MAX),
            KeyValue::new("negative", -1_i64),
            KeyValue::new("zero", 0_i64),
            KeyValue::new("empty", ""),
            KeyValue::new("gateway.hedge", true),
            KeyValue::new("off", false),
            KeyValue::new("ratio", 0.25),
            KeyValue::new("nothing", 0.0),
            KeyValue::new(
                "strings",
                Value::Array(Array::String(vec![
                    StringValue::from("a"),
                    StringValue::from(""),
                ])),
            ),
            KeyValue::new("ints", Value::Array(Array::I64(vec![1, -2, 0]))),
            KeyValue::new("floats", Value::Array(Array::F64(vec![1.5]))),
            KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("none", Value::Array(Array::I64(Vec::new()))),
            KeyValue::new("ü-key", "välue"),
        ],
        dropped_attributes_count: 3,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::error("upstream failed"),
        instrumentation_scope: gateway.clone(),
    };
    let mut events = SpanEvents::default();
    events.events = vec![
        Event::new("retry", at(5), vec![KeyValue::new("attempt", 2)], 1),
        Event::new("", UNIX_EPOCH, Vec::new(), 0),
    ];
    events.dropped_count = 4;
    let mut links = SpanLinks::default();
    links.links = vec![
        Link::new(
            context(9, 10, false, true, "k=v"),
            vec![KeyValue::new("link", "yes")],
            2,
        ),
        Link::new(SpanContext::empty_context(), Vec::new(), 0),
    ];
    links.dropped_count = 1;
    let client = SpanData {
        span_context: context(
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            0x1111,
            true,
            false,
            "vendor=value,other=x",
        ),
        parent_span_id: SpanId::from(0x00f0_67aa_0ba9_02b7),
        parent_span_is_remote: true,
        span_kind: SpanKind::Client,
        name: Cow::Owned("GET".to_owned()),
        start_time: at(1),
        end_time: UNIX_EPOCH,
        attributes: vec![KeyValue::new("server.address", "10.0.0.1")],
        dropped_attributes_count: 0,
        events,
        links,
        status: Status::Ok,
        instrumentation_scope: gateway.clone(),
    };
    let mut internal = client.clone();
    internal.span_kind = SpanKind::Internal;
    internal.status = Status::Unset;
    internal.instrumentation_scope = other.clone();
    let mut producer = server.clone();
    producer.span_kind = SpanKind::Producer;
    producer.attributes.clear();
    let mut consumer = client.clone();
    consumer.span_kind = SpanKind::Consumer;
    consumer.instrumentation_scope = other;
    consumer.span_context = context(1, 2, false, false, "");
    vec![server, internal, client, producer, consumer]
}

/// What the SDK's own exporter would have sent for `spans`.
fn expected(spans: &[SpanData], resource: &Resource) -> ExportTraceServiceRequest {
    let resource = ResourceAttributesWithSchema::from(resource);
    ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(spans.to_vec(), &resource),
    }
}

fn encoded(spans: &[SpanData], resource: &Resource) -> ExportTraceServiceRequest {
    let (attributes, schema) = encode_resource(resource);
    let bytes = encode_request(&mut Scratch::default(), &attributes, &schema, spans);
    ExportTraceServiceRequest::decode(bytes).expect("the encoding is a valid protobuf")
}

#[test]
fn a_batch_encodes_to_what_the_sdks_conversion_gives() {
    let resource = Resource::builder_empty()
        .with_service_name("gateway-data-plane")
        .build();
    let spans = spans();
    assert_eq!(encoded(&spans, &resource), expected(&spans, &resource));
    // One span at a time, and each scope alone.
    for span in &spans {
        let one = std::slice::from_ref(span);
        assert_eq!(encoded(one, &resource), expected(one, &resource));
    }
}

#[test]
fn the_resource_schema_and_attributes_are_carried() {
    let resource = Resource::builder_empty()
        .with_schema_url(
            [KeyValue::new("deployment.environment", "test")],
            "https://opentelemetry.io/schemas/1.30.0",
        )
        .with_service_name("edge")
        .build();
    let spans = spans();
    assert_eq!(encoded(&spans, &resource), expected(&spans, &resource));
    let empty = Resource::builder_empty().build();
    assert_eq!(encoded(&spans, &empty), expected(&spans, &empty));
}

#[test]
fn many_spans_need_multi_byte_lengths() {
    let resource = Resource::builder_empty().with_service_name("svc").build();
    let mut spans = spans();
    let long = "x".repeat(70_000);
    spans[0]
        .attributes
        .push(KeyValue::new("long", long.clone()));
    let many: Vec<SpanData> = spans.iter().cycle().take(600).cloned().collect();
    assert_eq!(encoded(&many, &resource), expected(&many, &resource));
    // The scratch buffers are reused: a second, smaller batch is not polluted by the first.
    let mut scratch = Scratch::default();
    let attributes = Vec::new();
    let _ = encode_request(&mut scratch, &attributes, "", &many);
    let small = encode_request(&mut scratch, &attributes, "", &spans[1..2]);
    assert_eq!(
        ExportTraceServiceRequest::decode(small).expect("valid"),
        expected(&spans[1..2], &Resource::builder_empty().build())
    );
}

#[test]
fn headers_are_key_value_pairs_percent_decoded() {
    assert_eq!(
        parse_headers(" api-key = secret%20one ,x-tenant=a%2Cb,broken,=empty,bad=%zz,last=ü"),
        vec![
            ("api-key".to_owned(), "secret one".to_owned()),
            ("x-tenant".to_owned(), "a,b".to_owned()),
            ("last".to_owned(), "ü".to_owned()),
        ]
    );
    assert_eq!(percent_decode("%"), None);
    assert_eq!(percent_decode("%4"), None);
    assert_eq!(percent_decode("%e2%82%ac"), Some("€".to_owned()));
    assert_eq!(percent_decode("%ff"), None);
}

#[test]
fn exporter_settings_come_from_the_environment() {
    let env = |pairs: Vec<(&'static str, &'static str)>| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    };
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
    let plain = Settings::from_lookup("svc", env(vec![endpoint]))
        .unwrap()
        .unwrap();
    assert_eq!(plain.timeout, Duration::from_secs(10));
    assert!(plain.headers.is_empty());
    assert!(!plain.gzip);
    let set = Settings::from_lookup(
        "svc",
        env(vec![
            endpoint,
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(set.timeout, Duration::from_millis(2500));
    assert_eq!(set.headers, vec![("b".to_owned(), "2".to_owned())]);
    assert!(set.gzip);
    let traces_first = Settings::from_lookup(
        "svc",
        env(vec![
            endpoint,
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "300"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(traces_first.timeout, Duration::from_millis(300));
    assert!(matches!(
        Settings::from_lookup(
            "svc",
            env(vec![endpoint, ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")])
        ),
        Err(SetupError::Compression(_))
    ));
}

#[test]
fn only_plain_http_endpoints_start() {
    for endpoint in ["https://collector:4317", "collector:4317", "not a uri"] {
        let settings = Settings {
            endpoint: endpoint.to_owned(),
            service_name: "svc".to_owned(),
            ratio: 1.0,
            queue_size_set: false,
            timeout: Duration::from_secs(1),
            headers: Vec::new(),
            gzip: false,
        };
        assert!(
            matches!(
                super::Telemetry::start(&settings),
                Err(SetupError::Endpoint { .. })
            ),
            "{endpoint}"
        );
    }
}
