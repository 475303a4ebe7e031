//! `response-rewrite`: changes the answer the client gets — status, headers (`remove`, `set`,
//! `add`) and body — whoever produced it: the upstream, a gateway error or a plugin's refusal.
//!
//! A new body is sent whole: `Content-Length` follows it, and `Content-Encoding`,
//! `Transfer-Encoding`, `ETag` and `Content-MD5`, which described the old body, are dropped.

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, ETAG, HeaderName, TRANSFER_ENCODING};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use serde_json::Value;

use super::proxy_rewrite::CompiledHeaderOps;
use super::{Plugin, RequestCtx};
use crate::proxy::ProxyBody;
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

    fn response(&self, _ctx: &mut RequestCtx<'_>, response: &mut Response<ProxyBody>) {
        if let Some(status) = self.status {
            *response.status_mut() = status;
        }
        if let Some(body) = &self.body {
            // Dropping the old body closes the upstream stream (the pool discards that
            // connection rather than reading a body nobody wants).
            *response.body_mut() = Either::Right(Full::new(body.clone()));
            let headers = response.headers_mut();
            for name in [CONTENT_ENCODING, TRANSFER_ENCODING, ETAG] {
                headers.remove(name);
            }
            headers.remove(HeaderName::from_static("content-md5"));
            headers.insert(CONTENT_LENGTH, body.len().into());
        }
        self.headers.apply(response.headers_mut());
    }
}
