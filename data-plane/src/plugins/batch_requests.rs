//! `batch-requests`: the route becomes an endpoint that takes
//! `{"requests": [{"method", "path", "headers", "body"}], "timeout_ms"}` and answers
//! `[{"status", "headers", "body"}, …]` in the same order.
//!
//! Each item is a synthetic request handed to the [`Dispatch`] the request path lends the
//! plugin — the gateway's own router and plugins, in process, no loopback connection — so authentication, rate limits and everything
//! else apply per item, exactly as if the client had sent it. Items run in parallel; their
//! count, the batch body and each item's answer read into memory are bounded.
//!
//! Choices where the contract is silent, as APISIX's plugin does: an item inherits the batch
//! request's headers (and the batch body's `headers`), its own win; an item's `body` string is
//! sent as is, any other JSON value as `application/json`. An item may not itself be a batch
//! (400), so a batch cannot recurse. An item goes to the host the batch request was sent to
//! (its `Host`, or its URI's authority over HTTP/2); it carries no hop-by-hop header and no
//! `Accept-Encoding` (its answer is decoded into JSON, so it must arrive uncompressed). The
//! batch body must arrive within the plugin's `timeout_ms` (else 408).

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, join_all};
use gateway_proto::plugins::batch_requests::{BatchBody, BatchItem, Config};
use http::header::{
    ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HOST, HeaderName, HeaderValue,
};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Map, Value, json};

use super::{Dispatch, DispatchBody, Endpoint, Plugin, Reject};
use crate::error::{json_body, json_response};
use crate::transport::{deadline, headers};

/// The compiled plugin.
#[derive(Debug)]
pub struct BatchRequests {
    priority: i32,
    config: Config,
}

/// Marks a synthetic request made from a batch item, so that it cannot be a batch itself.
#[derive(Clone, Copy, Debug)]
struct BatchItemMarker;

impl BatchRequests {
    /// Builds the plugin from its validated config.
    pub fn build(priority: i32, config: &Value) -> Result<BatchRequests, String> {
        let config: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        Ok(BatchRequests { priority, config })
    }

    async fn run(&self, dispatch: &dyn Dispatch, request: Request<DispatchBody>) -> Reject {
        let refuse = |status, code, message: &str| json_response(status, code, message);
        if request.extensions().get::<BatchItemMarker>().is_some() {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "a batch item cannot itself be a batch",
            );
        }
        let (parts, body) = request.into_parts();
        let max = self.config.max_body_bytes;
        // Bounded in time as well as in size, as a batch route's body is: a client that
        // trickles its body, or stops, must not hold the request open for ever.
        let limit = Duration::from_millis(self.config.timeout_ms);
        let read = deadline::within(deadline::after(limit), Limited::new(body, max).collect());
        let bytes = match read.await {
            Err(_) => {
                return refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    &format!(
                        "the batch body did not arrive within {} ms",
                        self.config.timeout_ms
                    ),
                );
            }
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
                return refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    &format!("the batch body exceeds {max} bytes"),
                );
            }
            Ok(Err(_)) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "bad_request_body",
                    "the request body could not be read",
                );
            }
        };
        let batch: BatchBody = match serde_json::from_slice(&bytes) {
            Ok(batch) => batch,
            Err(error) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    &format!("the batch body is not a valid batch: {error}"),
                );
            }
        };
        if batch.requests.is_empty() || batch.requests.len() > self.config.max_items {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!(
                    "a batch has 1 to {} requests, this one has {}",
                    self.config.max_items,
                    batch.requests.len()
                ),
            );
        }
        // Headers every item starts from: the batch request's, minus what describes its own
        // body or connection, plus the batch body's `headers`.
        let mut common = parts.headers;
        headers::remove_hop_by_hop(&mut common);
        for name in [CONTENT_LENGTH, CONTENT_TYPE, EXPECT] {
            common.remove(name);
        }
        // The host the client asked for: over HTTP/2 (or in an absolute-form request) it is
        // the URI's authority, which wins over any `Host` as it did when routing this
        // request, and an item, whose URI is only a path, would otherwise reach the router
        // with no host at all.
        if let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            common.insert(HOST, host);
        }
        if let Err(message) = set_headers(&mut common, &batch.headers) {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("/headers: {message}"),
            );
        }
        let mut items = Vec::with_capacity(batch.requests.len());
        for (i, item) in batch.requests.iter().enumerate() {
            match synthetic(item, &common) {
                Ok(request) => items.push(request),
                Err(message) => {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        &format!("/requests/{i}: {message}"),
                    );
                }
            }
        }
        let timeout_ms = batch
            .timeout_ms
            .unwrap_or(self.config.timeout_ms)
            .min(self.config.timeout_ms);
        let until = deadline::after(Duration::from_millis(timeout_ms));
        let answers = join_all(items.into_iter().map(|request| async move {
            let answer = async {
                let response = dispatch.dispatch(request).await;
                self.answer(response).await
            };
            deadline::within(until, answer)
                .await
                .unwrap_or_else(|_| {
                    json!({
                        "status": 504,
                        "headers": {},
                        "body": {"error": {"code": "batch_timeout", "message": format!("no answer within the batch's {timeout_ms} ms")}}
                    })
                })
        }))
        .await;
        json_body(StatusCode::OK, &Value::Array(answers))
    }

    /// One item's answer as `{"status", "headers", "body"}`.
    async fn answer(&self, response: Response<DispatchBody>) -> Value {
        let (mut parts, body) = response.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        let max = self.config.max_body_bytes;
        let body = match Limited::new(body, max).collect().await {
            Ok(collected) => parse_body(&collected.to_bytes()),
            Err(error) => {
                let message = if error.is::<http_body_util::LengthLimitError>() {
                    format!("the answer exceeds {max} bytes")
                } else {
                    "reading the answer failed".to_owned()
                };
                return json!({
                    "status": 502,
                    "headers": {},
                    "body": {"error": {"code": "upstream_unavailable", "message": message}}
                });
            }
        };
        let mut headers = Map::new();
        for name in parts.headers.keys() {
            let values: Vec<&str> = parts
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if !values.is_empty() {
                headers.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
            }
        }
        json!({"status": parts.status.as_u16(), "headers": headers, "body": body})
    }
}

/// The request an item stands for.
fn synthetic(item: &BatchItem, common: &HeaderMap) -> Result<Request<Full<Bytes>>, String> {
    let method = match &item.method {
        Some(m) => Method::from_bytes(m.as_bytes()).map_err(|_| format!("bad method {m:?}"))?,
        None => Method::GET,
    };
    if !item.path.starts_with('/') {
        return Err(format!("path {:?} must start with /", item.path));
    }
    let uri: Uri = item
        .path
        .parse()
        .map_err(|_| format!("path {:?} is not a valid path and query", item.path))?;
    let mut headers = common.clone();
    set_headers(&mut headers, &item.headers)?;
    // Whatever set them (the client, the batch's or the item's `headers`): hop-by-hop headers
    // describe a connection an item does not have (`Connection: upgrade` would be passed on
    // as a WebSocket handshake), and `Accept-Encoding` would get a compressed answer, which
    // an item's `body` cannot carry.
    headers::remove_hop_by_hop(&mut headers);
    headers.remove(ACCEPT_ENCODING);
    let body = match &item.body {
        None => Bytes::new(),
        Some(Value::String(text)) => Bytes::from(text.clone()),
        Some(json) => {
            if !headers.contains_key(CONTENT_TYPE) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            Bytes::from(json.to_string())
        }
    };
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request.extensions_mut().insert(BatchItemMarker);
    Ok(request)
}

fn set_headers(
    headers: &mut HeaderMap,
    set: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    for (name, value) in set {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("bad header name {name:?}"))?;
        let value =
            HeaderValue::try_from(value.as_str()).map_err(|_| format!("bad value for {name}"))?;
        headers.insert(name, value);
    }
    Ok(())
}

/// A JSON body as JSON; anything else as a string; nothing as `null`.
fn parse_body(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

impl Plugin for BatchRequests {
    fn name(&self) -> &'static str {
        "batch-requests"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn endpoint(&self) -> Option<&dyn Endpoint> {
        Some(self)
    }
}

impl Endpoint for BatchRequests {
    fn serve<'a>(
        &'a self,
        dispatch: &'a dyn Dispatch,
        request: Request<DispatchBody>,
    ) -> BoxFuture<'a, Reject> {
        Box::pin(self.run(dispatch, request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_become_requests_with_inherited_headers_and_their_own_bodies() {
        let mut common = HeaderMap::new();
        common.insert("x-common", HeaderValue::from_static("1"));
        common.insert("apikey", HeaderValue::from_static("outer"));
        let item: BatchItem = serde_json::from_value(json!({
            "method": "POST", "path": "/a?b=c", "headers": {"apikey": "inner"}, "body": {"k": 1}
        }))
        .unwrap();
        let request = synthetic(&item, &common).unwrap();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/a?b=c");
        assert_eq!(request.headers()["apikey"], "inner");
        assert_eq!(request.headers()["x-common"], "1");
        assert_eq!(request.headers()[CONTENT_TYPE], "application/json");
        assert!(request.extensions().get::<BatchItemMarker>().is_some());

        for bad in [
            json!({"path": "no-slash"}),
            json!({"path": "/a b"}),
            json!({"path": "/a", "method": "B A D"}),
            json!({"path": "/a", "headers": {"bad name": "x"}}),
            json!({"path": "/a", "headers": {"x": "line\nbreak"}}),
        ] {
            let item: BatchItem = serde_json::from_value(bad.clone()).unwrap();
            assert!(synthetic(&item, &common).is_err(), "{bad}");
        }
    }
}
