//! What a rate limit counts requests by: the fixed key list of `limit-count` and `limit-req`.

use http::header::HeaderName;
use http::request;

use super::RequestCtx;

/// A parsed `key`.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// The client's IP address.
    RemoteAddr,
    /// The consumer an auth plugin identified (the client address when there is none).
    Consumer,
    /// The route: one budget for every client.
    Route,
    /// A request header (`http_x_api_key` → `x-api-key`; the client address when absent).
    Header(HeaderName),
}

impl KeySource {
    /// Parses one of the keys the schemas allow.
    pub fn parse(key: &str) -> Result<KeySource, String> {
        Ok(match key {
            "remote_addr" => KeySource::RemoteAddr,
            "consumer" => KeySource::Consumer,
            "route" => KeySource::Route,
            other => match other.strip_prefix("http_") {
                Some(header) => KeySource::Header(
                    HeaderName::from_bytes(header.replace('_', "-").as_bytes())
                        .map_err(|_| format!("bad key {other:?}"))?,
                ),
                None => return Err(format!("unknown key {other:?}")),
            },
        })
    }

    /// The value a request is counted under.
    pub fn value(&self, ctx: &RequestCtx<'_>, request: &request::Parts) -> String {
        let remote = || ctx.client.ip().to_string();
        match self {
            KeySource::RemoteAddr => remote(),
            KeySource::Consumer => ctx
                .consumer
                .as_ref()
                .map_or_else(remote, |c| format!("consumer:{}", c.id)),
            KeySource::Route => ctx.route.id.clone(),
            KeySource::Header(name) => request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map_or_else(remote, str::to_owned),
        }
    }
}
