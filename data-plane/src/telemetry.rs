//! OpenTelemetry on the data plane: the W3C Trace Context `traceparent` codec, and the tracer
//! and its OTLP exporter ([`Telemetry`], shared with the control plane from
//! `gateway_proto::telemetry`). A leaf utility: it knows nothing of the rest of the crate; the
//! request path builds its spans with it (`proxy::trace`).
//!
//! Tracing is on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set ([`Telemetry::from_env`]); off,
//! nothing here exists and the request path pays a branch on an empty `Option`. The exporter
//! and the batch processor run at normal priority rather than on `background::Worker`'s
//! `nice 19` thread: on a saturated core that one would starve, the queue would fill and spans
//! would be dropped (the access log's writer reasons the same way).

use http::header::{HeaderName, HeaderValue};
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

pub use gateway_proto::telemetry::{Settings, SetupError, Telemetry};

/// The W3C Trace Context header naming a request's trace and parent span.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C Trace Context header with vendors' trace state, passed on as the client sent it.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A valid W3C `traceparent`: the trace, the caller's span, and the flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace (never all zero).
    pub trace_id: TraceId,
    /// The caller's span, the parent of the receiver's (never all zero).
    pub parent_id: SpanId,
    /// The trace flags; bit 0: the caller sampled the trace.
    pub flags: TraceFlags,
}

/// The length of a version-00 `traceparent`.
const TRACEPARENT_LENGTH: usize = 55;

/// Parses a `traceparent` value (W3C Trace Context §3.2): `version-traceid-parentid-flags`,
/// lowercase hex. Version `ff`, an all-zero trace or parent id, uppercase or other non-hex
/// digits, or a version-00 value with anything after the flags make it invalid (`None`); a
/// later version may append fields after a `-`. Never panics, whatever the bytes.
pub fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    let head = value.get(..TRACEPARENT_LENGTH)?;
    if head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
        return None;
    }
    let version = hex(&head[0..2])? as u8;
    let trace = hex(&head[3..35])?;
    let parent = hex(&head[36..52])? as u64;
    let flags = hex(&head[53..55])? as u8;
    let rest = &value[TRACEPARENT_LENGTH..];
    let valid = version != 0xff
        && trace != 0
        && parent != 0
        && match version {
            0 => rest.is_empty(),
            _ => rest.first().is_none_or(|&b| b == b'-'),
        };
    valid.then(|| TraceParent {
        trace_id: TraceId::from(trace),
        parent_id: SpanId::from(parent),
        flags: TraceFlags::new(flags),
    })
}

/// The value of lowercase hex `digits` (at most 32 of them).
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |value, &digit| {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        Some(value << 4 | u128::from(nibble))
    })
}

/// The version-00 `traceparent` naming `span_id` of `trace_id` as the parent, sampled or not.
pub fn format_traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> HeaderValue {
    let mut out = [0u8; TRACEPARENT_LENGTH];
    out[..3].copy_from_slice(b"00-");
    write_hex(&mut out[3..35], &trace_id.to_bytes());
    out[35] = b'-';
    write_hex(&mut out[36..52], &span_id.to_bytes());
    out[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
    // Only hex digits and dashes: always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Writes `bytes` into `out` (twice as long) as lowercase hex.
fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
}

#[cfg(test)]
mod tests;
