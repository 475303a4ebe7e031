//! `response-rewrite`: changes the answer the client gets — status, headers (`remove`, `set`,
//! `add`) and body — whoever produced it: the upstream, a gateway error or a plugin's refusal.
//!
//! A new body goes through the response body phase: the old one is not read (a node's
//! connection is closed rather than drained), the new one is sent in its place with a
//! `Content-Length`, and `Content-Encoding`, `Transfer-Encoding`, `ETag` and `Content-MD5`,
//! which described the old body, are dropped in the response headers phase.

use bytes::Bytes;
use http::StatusCode;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, ETAG, HeaderName, TRANSFER_ENCODING};
use serde_json::Value;

use super::proxy_rewrite::CompiledHeaderOps;
use super::{BodyFilter, Plugin, RequestCtx, ResponseView};
use gateway_proto::plugins::response_rewrite::Config;

/// A compiled `response-rewrite`.
#[derive(Debug)]
pub struct ResponseRewrite {
    priority: i32,
    status: Option<StatusCode>,
    body: Option<Bytes>,
    headers: CompiledHeaderOps,
}

impl ResponseRewrite {
    /// Compiles a validated config.
    pub fn build(priority: i32, config: &Value) -> Result<ResponseRewrite, String> {
        let config: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        let status = config
            .status_code
            .map(|code| StatusCode::from_u16(code).map_err(|_| format!("status_code {code}")))
            .transpose()?;
        Ok(ResponseRewrite {
            priority,
            status,
            body: config.body.map(Bytes::from),
            headers: CompiledHeaderOps::compile(&config.headers)?,
        })
    }
}

impl Plugin for ResponseRewrite {
    fn name(&self) -> &'static str {
        "response-rewrite"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn response_headers(&self, _ctx: &mut RequestCtx<'_>, response: &mut ResponseView<'_>) {
        if let Some(status) = self.status {
            *response.status_mut() = status;
        }
        if let Some(body) = &self.body {
            let headers = response.headers_mut();
            for name in [CONTENT_ENCODING, TRANSFER_ENCODING, ETAG] {
                headers.remove(name);
            }
            headers.remove(HeaderName::from_static("content-md5"));
            headers.insert(CONTENT_LENGTH, body.len().into());
        }
        self.headers.apply(response.headers_mut());
    }

    fn response_body(&self, _ctx: &mut RequestCtx<'_>) -> Option<Box<dyn BodyFilter>> {
        let body = self.body.clone()?;
        Some(Box::new(Replace { body: Some(body) }))
    }
}

/// The response body phase of a configured `body`: the old body is not read, the new one is
/// all the client gets.
#[derive(Debug)]
struct Replace {
    /// `None` once sent.
    body: Option<Bytes>,
}

impl BodyFilter for Replace {
    fn chunk(&mut self, _chunk: Bytes) -> Bytes {
        Bytes::new()
    }

    fn end(&mut self) -> Bytes {
        self.body.take().unwrap_or_default()
    }

    fn wants_body(&self) -> bool {
        false
    }

    fn length(&self) -> Option<u64> {
        self.body.as_ref().map(|body| body.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_body_replaces_the_old_one_unread() {
        let mut filter = Replace {
            body: Some(Bytes::from_static(b"new")),
        };
        assert!(!filter.wants_body());
        assert_eq!(filter.length(), Some(3));
        assert_eq!(filter.chunk(Bytes::from_static(b"old")), "");
        assert_eq!(filter.end(), "new");
        assert_eq!(filter.end(), "");
    }
}
