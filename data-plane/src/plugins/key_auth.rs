//! `key-auth`: identifies the consumer by an API key in a header (or a query argument).
//!
//! Keys are looked up by SHA-256 digest, the form the control plane stores them in, so the data
//! plane never holds a usable key either.

use std::sync::Arc;

use http::header::HeaderName;
use http::{HeaderValue, StatusCode, request};
use serde_json::Value;

use super::util::{query_arg, without_query_arg};
use super::{Access, ConsumerRuntime, Plugin, RequestCtx, reject};
use gateway_proto::plugins::auth::{KeyAuthConfig, key_digest_bytes};

/// The header that tells the upstream which consumer called.
pub const CONSUMER_HEADER: HeaderName = HeaderName::from_static("x-consumer-username");

/// A compiled `key-auth`.
#[derive(Debug)]
pub struct KeyAuth {
    priority: i32,
    header: HeaderName,
    query: String,
    hide_credentials: bool,
}

impl KeyAuth {
    /// Compiles a validated config.
    pub fn build(priority: i32, config: &Value) -> Result<KeyAuth, String> {
        let config: KeyAuthConfig =
            serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        let header = HeaderName::from_bytes(config.header.as_bytes())
            .map_err(|_| format!("{:?} is not a header name", config.header))?;
        Ok(KeyAuth {
            priority,
            header,
            query: config.query,
            hide_credentials: config.hide_credentials,
        })
    }
}

/// Marks the request as coming from `consumer`, for the upstream and later plugins.
pub fn identify(
    ctx: &mut RequestCtx<'_>,
    request: &mut request::Parts,
    consumer: &Arc<ConsumerRuntime>,
) {
    if let Ok(value) = HeaderValue::from_str(&consumer.username) {
        request.headers.insert(CONSUMER_HEADER, value);
    }
    ctx.consumer = Some(Arc::clone(consumer));
}

impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        "key-auth"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn access(&self, ctx: &mut RequestCtx<'_>, request: &mut request::Parts) -> Access {
        let from_header = request
            .headers
            .get(&self.header)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (key, in_header) = match from_header {
            Some(key) => (key, true),
            None => match query_arg(&request.uri, &self.query) {
                Some(key) => (key, false),
                None => {
                    return Access::Reject(reject(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "missing API key",
                    ));
                }
            },
        };
        let Some(consumer) = ctx
            .consumers
            .by_key_digest
            .get(&key_digest_bytes(&key))
            .cloned()
        else {
            return Access::Reject(reject(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid API key",
            ));
        };
        if self.hide_credentials {
            if in_header {
                request.headers.remove(&self.header);
            } else {
                request.uri = without_query_arg(&request.uri, &self.query);
            }
        }
        identify(ctx, request, &consumer);
        Access::Continue
    }
}
