//! `request-id`: every request gets an id — the client's own when it sent a usable one (so a
//! trace that starts before the gateway keeps its id), else a new UUID v4. The id is set on the
//! upstream request and, unless `include_in_response` is off, echoed in the response (on every
//! answer, refusals included).

use http::header::HeaderName;
use http::{HeaderValue, request};
use serde_json::Value;

use super::{Plugin, Reject, RequestCtx};
use gateway_proto::plugins::request_id::Config;

/// The longest client-supplied id passed through; a longer one is replaced.
const MAX_INCOMING_LEN: usize = 128;

/// A compiled `request-id`.
#[derive(Debug)]
pub struct RequestId {
    priority: i32,
    header: HeaderName,
    include_in_response: bool,
}

impl RequestId {
    /// Compiles a validated config.
    pub fn build(priority: i32, config: &Value) -> Result<RequestId, String> {
        let config: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        let header = HeaderName::from_bytes(config.header_name.as_bytes())
            .map_err(|_| format!("{:?} is not a header name", config.header_name))?;
        Ok(RequestId {
            priority,
            header,
            include_in_response: config.include_in_response,
        })
    }
}

/// Whether a client-supplied id is passed through: short, printable, no spaces or separators
/// that could confuse a log parser.
fn usable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_INCOMING_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b))
}

/// A random UUID v4 (RFC 9562 §5.4) in its lowercase hyphenated form.
pub fn uuid_v4() -> String {
    String::from_utf8_lossy(&uuid_v4_bytes()).into_owned()
}

/// [`uuid_v4`] without allocating: the 36 ASCII bytes.
fn uuid_v4_bytes() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1; // the hyphen already there
        }
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    out
}

impl Plugin for RequestId {
    fn name(&self) -> &'static str {
        "request-id"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn rewrite(
        &self,
        ctx: &mut RequestCtx<'_>,
        request: &mut request::Parts,
    ) -> Result<(), Reject> {
        let id = match request.headers.get(&self.header) {
            Some(value) if usable(value) => value.clone(),
            _ => HeaderValue::from_bytes(&uuid_v4_bytes()).map_err(|_| {
                super::reject(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "could not build a request id",
                )
            })?,
        };
        // One value only: a repeated header would make the id ambiguous.
        request.headers.insert(self.header.clone(), id.clone());
        if self.include_in_response {
            ctx.response_headers.insert(self.header.clone(), id.clone());
        }
        ctx.request_id = Some(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_distinct() {
        let a = uuid_v4();
        let b = uuid_v4();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert!(HeaderValue::try_from(a.as_str()).is_ok());
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert!(
            a.bytes()
                .all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }

    #[test]
    fn only_short_printable_ids_pass_through() {
        assert!(usable(&HeaderValue::from_static("abc-123_x.y:z")));
        assert!(!usable(&HeaderValue::from_static("")));
        assert!(!usable(&HeaderValue::from_static("has space")));
        assert!(!usable(&HeaderValue::from_static("a\"b")));
        let long = "a".repeat(MAX_INCOMING_LEN + 1);
        assert!(!usable(&HeaderValue::try_from(long).unwrap()));
    }
}
