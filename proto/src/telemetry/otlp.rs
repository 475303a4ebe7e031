//! The OTLP/gRPC span exporter: a batch of finished spans encoded straight into the bytes of
//! one `ExportTraceServiceRequest` and posted to the collector's `TraceService/Export`.
//!
//! The SDK's own exporter (`opentelemetry-otlp`) clones every batch (for its retries), converts
//! each span into `opentelemetry-proto` structures (a `String` per attribute key and value, a
//! `Vec` per id), hashes each span's scope to group them, then encodes: about three quarters of
//! what a traced request cost. Here the spans are written as they are, in one pass, into a
//! buffer; a retry sends the same bytes again. What the collector receives is the same message
//! (`tests.rs` decodes it with `opentelemetry-proto` and compares it with the SDK's conversion).

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use prost::bytes::{Buf as _, BufMut as _, Bytes};
use tonic::Code;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

/// The gRPC method spans are exported to.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Retries of a failed export whose status says the collector may take it later (OTLP's
/// retryable codes), and the wait before the first; each further wait doubles.
const RETRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Exports spans to one collector over a gRPC channel whose tasks run on `runtime`.
pub(crate) struct OtlpExporter {
    client: tonic::client::Grpc<Channel>,
    runtime: tokio::runtime::Handle,
    /// Sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`).
    metadata: MetadataMap,
    /// The `Resource` message every export carries, encoded once.
    resource: Vec<u8>,
    /// The resource's schema URL (`ResourceSpans.schema_url`).
    resource_schema: String,
    /// Buffers reused from one batch to the next (the batch processor exports one at a time).
    scratch: Mutex<Scratch>,
}

impl fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpExporter").finish_non_exhaustive()
    }
}

impl OtlpExporter {
    /// An exporter over `channel` (whose tasks run on `runtime`), sending `metadata` with every
    /// export, compressed with `compression` if any.
    pub(crate) fn new(
        channel: Channel,
        runtime: tokio::runtime::Handle,
        metadata: MetadataMap,
        compression: Option<CompressionEncoding>,
    ) -> OtlpExporter {
        let mut client = tonic::client::Grpc::new(channel);
        if let Some(compression) = compression {
            client = client
                .send_compressed(compression)
                .accept_compressed(compression);
        }
        OtlpExporter {
            client,
            runtime,
            metadata,
            resource: Vec::new(),
            resource_schema: String::new(),
            scratch: Mutex::new(Scratch::default()),
        }
    }

    /// The batch as one `ExportTraceServiceRequest`.
    fn encode(&self, batch: &[SpanData]) -> Bytes {
        let mut scratch = self
            .scratch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        encode_request(&mut scratch, &self.resource, &self.resource_schema, batch)
    }
}

impl SpanExporter for OtlpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if batch.is_empty() {
            return Ok(());
        }
        let message = self.encode(&batch);
        drop(batch);
        let send = send(self.client.clone(), self.metadata.clone(), message);
        // On the exporter's runtime: the caller (the batch processor's thread) has no timer
        // for the backoff, and the channel's tasks live there anyway.
        match self.runtime.spawn(send).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(status)) => Err(OTelSdkError::InternalFailure(format!(
                "the collector answered {:?}: {}",
                status.code(),
                status.message()
            ))),
            Err(error) => Err(OTelSdkError::InternalFailure(format!(
                "the export task failed: {error}"
            ))),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        (self.resource, self.resource_schema) = encode_resource(resource);
    }
}

/// The `Resource` message of `resource` (its attributes), and its schema URL.
pub(crate) fn encode_resource(resource: &Resource) -> (Vec<u8>, String) {
    let mut encoded = Vec::new();
    for (key, value) in resource.iter() {
        put_attribute(&mut encoded, 1, key.as_str(), value);
    }
    let schema = resource.schema_url().unwrap_or_default().to_owned();
    (encoded, schema)
}

/// Posts `message` once, and again up to [`RETRIES`] times while the collector answers with a
/// retryable status.
async fn send(
    mut client: tonic::client::Grpc<Channel>,
    metadata: MetadataMap,
    message: Bytes,
) -> Result<(), tonic::Status> {
    let mut backoff = FIRST_BACKOFF;
    let mut retries = 0;
    loop {
        let result = async {
            client
                .ready()
                .await
                .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
            let request = tonic::Request::from_parts(
                metadata.clone(),
                tonic::Extensions::default(),
                message.clone(),
            );
            client
                .unary::<_, (), _>(request, PathAndQuery::from_static(EXPORT_PATH), RawCodec)
                .await
        }
        .await;
        match result {
            Ok(_) => return Ok(()),
            Err(status) if retries < RETRIES && retryable(status.code()) => {
                retries += 1;
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(status) => return Err(status),
        }
    }
}

/// The gRPC codes after which OTLP says an export may be sent again.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// A message already encoded goes out as it is; the answer (an `ExportTraceServiceResponse`,
/// whose only field reports a partial success) is read and left unparsed.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// Buffers an encoding reuses: one span's fields, and the spans of one scope.
#[derive(Default)]
pub(crate) struct Scratch {
    span: Vec<u8>,
    spans: Vec<u8>,
    scope: Vec<u8>,
}

// Field numbers of the OTLP protobuf messages (opentelemetry-proto's `trace.proto`,
// `common.proto`, `resource.proto`).
const LEN: u32 = 2;
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const FIXED32: u32 = 5;

/// Encodes `batch` as an `ExportTraceServiceRequest`: one `ResourceSpans` (the resource's
/// attributes `resource`, already encoded) with one `ScopeSpans` per instrumentation scope, in
/// the order the scopes first appear.
pub(crate) fn encode_request(
    scratch: &mut Scratch,
    resource: &[u8],
    resource_schema: &str,
    batch: &[SpanData],
) -> Bytes {
    // Most batches have one scope; this list is searched, not hashed.
    let mut scopes: Vec<&InstrumentationScope> = Vec::new();
    for span in batch {
        if !scopes.contains(&&span.instrumentation_scope) {
            scopes.push(&span.instrumentation_scope);
        }
    }
    // ExportTraceServiceRequest's one field, resource_spans (1), goes in front once its length
    // is known: room for its key and the longest length is kept there, so the spans are not
    // copied again.
    const HEAD: usize = 6;
    let mut resource_spans = Vec::with_capacity(HEAD + batch.len() * 320 + resource.len() + 64);
    resource_spans.resize(HEAD, 0);
    // ResourceSpans' fields: resource (1), scope_spans (2), schema_url (3).
    put_message(&mut resource_spans, 1, resource);
    for &scope in &scopes {
        scratch.spans.clear();
        for span in batch
            .iter()
            .filter(|span| span.instrumentation_scope == *scope)
        {
            scratch.span.clear();
            encode_span(&mut scratch.span, span);
            put_message(&mut scratch.spans, 2, &scratch.span);
        }
        // ScopeSpans' fields: scope (1), spans (2), schema_url (3).
        scratch.scope.clear();
        encode_scope(&mut scratch.scope, scope);
        let schema = scope.schema_url().unwrap_or_default();
        let length = field_len(1, scratch.scope.len())
            + scratch.spans.len()
            + if schema.is_empty() {
                0
            } else {
                field_len(3, schema.len())
            };
        put_key(&mut resource_spans, 2, LEN);
        put_varint(&mut resource_spans, length as u64);
        put_message(&mut resource_spans, 1, &scratch.scope);
        resource_spans.extend_from_slice(&scratch.spans);
        put_string(&mut resource_spans, 3, schema);
    }
    put_string(&mut resource_spans, 3, resource_schema);
    let mut head = Vec::with_capacity(HEAD);
    put_key(&mut head, 1, LEN);
    put_varint(&mut head, (resource_spans.len() - HEAD) as u64);
    let start = HEAD - head.len();
    resource_spans[start..HEAD].copy_from_slice(&head);
    Bytes::from(resource_spans).slice(start..)
}

/// An `InstrumentationScope`: name (1), version (2), attributes (3).
fn encode_scope(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    put_string(out, 1, scope.name());
    put_string(out, 2, scope.version().unwrap_or_default());
    for attribute in scope.attributes() {
        put_attribute(out, 3, attribute.key.as_str(), &attribute.value);
    }
}

/// A `Span`'s fields, as the SDK's conversion (`opentelemetry-proto`) sets them.
fn encode_span(out: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    put_bytes(out, 1, &context.trace_id().to_bytes());
    put_bytes(out, 2, &context.span_id().to_bytes());
    let trace_state = context.trace_state().header();
    put_string(out, 3, &trace_state);
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        put_bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    put_string(out, 5, &span.name);
    put_enum(out, 6, kind(&span.span_kind));
    put_fixed64(out, 7, nanos(span.start_time));
    put_fixed64(out, 8, nanos(span.end_time));
    for attribute in &span.attributes {
        put_attribute(out, 9, attribute.key.as_str(), &attribute.value);
    }
    put_uint(out, 10, span.dropped_attributes_count);
    for event in span.events.iter() {
        // Event: time_unix_nano (1), name (2), attributes (3), dropped_attributes_count (4).
        let length = fixed64_field_len(1, nanos(event.timestamp))
            + string_field_len(2, &event.name)
            + attributes_len(3, &event.attributes)
            + uint_field_len(4, event.dropped_attributes_count);
        put_key(out, 11, LEN);
        put_varint(out, length as u64);
        put_fixed64(out, 1, nanos(event.timestamp));
        put_string(out, 2, &event.name);
        for attribute in &event.attributes {
            put_attribute(out, 3, attribute.key.as_str(), &attribute.value);
        }
        put_uint(out, 4, event.dropped_attributes_count);
    }
    put_uint(out, 12, span.events.dropped_count);
    for link in span.links.iter() {
        // Link: trace_id (1), span_id (2), trace_state (3), attributes (4),
        // dropped_attributes_count (5), flags (6).
        let link_context = &link.span_context;
        let link_state = link_context.trace_state().header();
        let length = field_len(1, 16)
            + field_len(2, 8)
            + string_field_len(3, &link_state)
            + attributes_len(4, &link.attributes)
            + uint_field_len(5, link.dropped_attributes_count)
            + 5;
        put_key(out, 13, LEN);
        put_varint(out, length as u64);
        put_bytes(out, 1, &link_context.trace_id().to_bytes());
        put_bytes(out, 2, &link_context.span_id().to_bytes());
        put_string(out, 3, &link_state);
        for attribute in &link.attributes {
            put_attribute(out, 4, attribute.key.as_str(), &attribute.value);
        }
        put_uint(out, 5, link.dropped_attributes_count);
        put_fixed32(
            out,
            6,
            span_flags(link_context.is_remote(), link_context.trace_flags().to_u8()),
        );
    }
    put_uint(out, 14, span.links.dropped_count);
    // Status: message (2), code (3); always present, as the SDK's conversion sets it.
    let (message, code) = match &span.status {
        Status::Unset => ("", 0),
        Status::Ok => ("", 1),
        Status::Error { description } => (description.as_ref(), 2),
    };
    put_key(out, 15, LEN);
    put_varint(
        out,
        (string_field_len(2, message) + enum_field_len(3, code)) as u64,
    );
    put_string(out, 2, message);
    put_enum(out, 3, code);
    put_fixed32(
        out,
        16,
        span_flags(span.parent_span_is_remote, context.trace_flags().to_u8()),
    );
}

/// `Span.flags`: the trace flags, and whether the parent is remote (OTLP's `SpanFlags`).
fn span_flags(remote: bool, trace_flags: u8) -> u32 {
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    u32::from(trace_flags) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 }
}

/// `Span.SpanKind`'s number.
fn kind(kind: &SpanKind) -> u32 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// Nanoseconds since the epoch (0 before it).
fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// A `KeyValue` field `tag`: key (1), value (2, an `AnyValue`).
fn put_attribute(out: &mut Vec<u8>, tag: u32, key: &str, value: &Value) {
    let value_len = any_value_len(value);
    put_key(out, tag, LEN);
    put_varint(
        out,
        (string_field_len(1, key) + field_len(2, value_len)) as u64,
    );
    put_string(out, 1, key);
    put_key(out, 2, LEN);
    put_varint(out, value_len as u64);
    put_any_value(out, value);
}

/// The length of `attributes` as repeated `KeyValue` field `tag`.
fn attributes_len(tag: u32, attributes: &[KeyValue]) -> usize {
    attributes
        .iter()
        .map(|attribute| {
            field_len(
                tag,
                string_field_len(1, attribute.key.as_str())
                    + field_len(2, any_value_len(&attribute.value)),
            )
        })
        .sum()
}

/// An `AnyValue`'s fields: string (1), bool (2), int (3), double (4), array (5, an
/// `ArrayValue` of `AnyValue`s in its field 1). A value of a kind this encoder does not know
/// (the API's enums are non-exhaustive) is an empty `AnyValue`.
fn put_any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(value) => put_scalar_value(out, &Scalar::Bool(*value)),
        Value::I64(value) => put_scalar_value(out, &Scalar::I64(*value)),
        Value::F64(value) => put_scalar_value(out, &Scalar::F64(*value)),
        Value::String(value) => put_scalar_value(out, &Scalar::String(value.as_str())),
        Value::Array(array) => {
            put_key(out, 5, LEN);
            put_varint(out, array_len(array) as u64);
            for_each_element(array, |element| {
                put_key(out, 1, LEN);
                put_varint(out, scalar_value_len(&element) as u64);
                put_scalar_value(out, &element);
            });
        }
        _ => {}
    }
}

/// An `AnyValue`'s encoded length.
fn any_value_len(value: &Value) -> usize {
    match value {
        Value::Bool(value) => scalar_value_len(&Scalar::Bool(*value)),
        Value::I64(value) => scalar_value_len(&Scalar::I64(*value)),
        Value::F64(value) => scalar_value_len(&Scalar::F64(*value)),
        Value::String(value) => scalar_value_len(&Scalar::String(value.as_str())),
        Value::Array(array) => field_len(5, array_len(array)),
        _ => 0,
    }
}

/// One element of an attribute's value.
enum Scalar<'a> {
    Bool(bool),
    I64(i64),
    F64(f64),
    String(&'a str),
}

/// Calls `each` with every element of `array` (none for an element kind unknown here).
fn for_each_element(array: &Array, mut each: impl FnMut(Scalar<'_>)) {
    match array {
        Array::Bool(values) => values.iter().for_each(|v| each(Scalar::Bool(*v))),
        Array::I64(values) => values.iter().for_each(|v| each(Scalar::I64(*v))),
        Array::F64(values) => values.iter().for_each(|v| each(Scalar::F64(*v))),
        Array::String(values) => values.iter().for_each(|v| each(Scalar::String(v.as_str()))),
        _ => {}
    }
}

/// An `ArrayValue`'s encoded length.
fn array_len(array: &Array) -> usize {
    let mut length = 0;
    for_each_element(array, |element| {
        length += field_len(1, scalar_value_len(&element));
    });
    length
}

/// A scalar `AnyValue`'s one field; written even when it is the default (a oneof member is
/// present whatever its value).
fn put_scalar_value(out: &mut Vec<u8>, value: &Scalar<'_>) {
    match *value {
        Scalar::String(text) => {
            put_key(out, 1, LEN);
            put_varint(out, text.len() as u64);
            out.extend_from_slice(text.as_bytes());
        }
        Scalar::Bool(flag) => {
            put_key(out, 2, VARINT);
            out.push(u8::from(flag));
        }
        Scalar::I64(number) => {
            put_key(out, 3, VARINT);
            put_varint(out, number as u64);
        }
        Scalar::F64(number) => {
            put_key(out, 4, FIXED64);
            out.extend_from_slice(&number.to_le_bytes());
        }
    }
}

/// A scalar `AnyValue`'s encoded length.
fn scalar_value_len(value: &Scalar<'_>) -> usize {
    match *value {
        Scalar::String(text) => field_len(1, text.len()),
        Scalar::Bool(_) => 2,
        Scalar::I64(number) => 1 + varint_len(number as u64),
        Scalar::F64(_) => 9,
    }
}

// Protobuf's wire format. Fields equal to their default are left out (proto3), but for the
// length-delimited messages written by the callers.

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    // One byte per started group of seven bits; at least one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_key(out: &mut Vec<u8>, tag: u32, wire_type: u32) {
    put_varint(out, u64::from(tag << 3 | wire_type));
}

fn key_len(tag: u32) -> usize {
    varint_len(u64::from(tag << 3))
}

/// The length of a length-delimited field `tag` of `length` bytes, key and length included.
fn field_len(tag: u32, length: usize) -> usize {
    key_len(tag) + varint_len(length as u64) + length
}

/// A length-delimited field, written even when empty (a present message).
fn put_message(out: &mut Vec<u8>, tag: u32, body: &[u8]) {
    put_key(out, tag, LEN);
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

fn put_bytes(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_message(out, tag, bytes);
    }
}

fn put_string(out: &mut Vec<u8>, tag: u32, text: &str) {
    put_bytes(out, tag, text.as_bytes());
}

fn string_field_len(tag: u32, text: &str) -> usize {
    if text.is_empty() {
        0
    } else {
        field_len(tag, text.len())
    }
}

fn put_uint(out: &mut Vec<u8>, tag: u32, value: u32) {
    if value != 0 {
        put_key(out, tag, VARINT);
        put_varint(out, u64::from(value));
    }
}

fn uint_field_len(tag: u32, value: u32) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + varint_len(u64::from(value))
    }
}

fn put_enum(out: &mut Vec<u8>, tag: u32, value: u32) {
    put_uint(out, tag, value);
}

fn enum_field_len(tag: u32, value: u32) -> usize {
    uint_field_len(tag, value)
}

fn put_fixed64(out: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        put_key(out, tag, FIXED64);
        out.put_u64_le(value);
    }
}

fn fixed64_field_len(tag: u32, value: u64) -> usize {
    if value == 0 { 0 } else { key_len(tag) + 8 }
}

fn put_fixed32(out: &mut Vec<u8>, tag: u32, value: u32) {
    if value != 0 {
        put_key(out, tag, FIXED32);
        out.put_u32_le(value);
    }
}
