//! The one error type of the request path, and the one builder of the gateway's own answers.
//!
//! Every failure a proxied request can meet is a [`ProxyError`]. It knows which side caused it
//! ([`Origin`]), whether the request could safely be tried again on another node, and how the
//! client sees it: a status code and the admin API's error shape,
//! `{"error": {"code": "…", "message": "…"}}`. The client never sees node addresses or socket
//! errors; those go to the log, where operators can use them.

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{Either, Full};
use thiserror::Error;

/// An error from either upstream client, or from the client's body.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Which side of the proxy a failure came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The client sent something the gateway cannot serve.
    Downstream,
    /// An upstream node failed or was slow.
    Upstream,
    /// The gateway itself failed.
    Internal,
}

/// How far an upstream exchange got before its deadline passed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// No connection to the node within `connect_ms`.
    Connect,
    /// Connected, but no response headers within `read_ms`.
    ResponseHeaders,
}

impl std::fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Connect => "connecting",
            TimeoutPhase::ResponseHeaders => "waiting for response headers",
        })
    }
}

/// Why a proxied request failed.
#[derive(Debug, Error)]
pub enum ProxyError {
    /// No enabled route matches the request's host and path.
    #[error("no route matches the request")]
    RouteNotFound,
    /// Routes match the host and path, but none allows the method.
    #[error("method not allowed; allowed: {allow:?}")]
    MethodNotAllowed {
        /// The methods the matching routes allow, sorted and without duplicates.
        allow: Vec<Method>,
    },
    /// `CONNECT`: the gateway is a reverse proxy and opens no tunnels.
    #[error("CONNECT is not supported")]
    ConnectNotSupported,
    /// A request path that cannot be normalised safely (see [`crate::proxy::path`]).
    #[error("invalid request path: {0}")]
    InvalidPath(&'static str),
    /// The route's upstream has no node with a non-zero weight.
    #[error("upstream {upstream} has no available node")]
    NoUpstreamNode {
        /// The upstream's runtime key.
        upstream: String,
    },
    /// The connection to the node could not be established (refused, unreachable, DNS).
    #[error("connecting to {node} failed: {source}")]
    UpstreamConnect {
        /// The node's `host:port`.
        node: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The node took too long.
    #[error("{node} timed out after {after:?} {phase}")]
    UpstreamTimeout {
        /// The node's `host:port`.
        node: String,
        /// What the proxy was waiting for.
        phase: TimeoutPhase,
        /// The deadline that passed.
        after: Duration,
    },
    /// The exchange with the node failed after connecting (reset, closed, malformed response).
    #[error("request to {node} failed: {source}")]
    UpstreamRequest {
        /// The node's `host:port`.
        node: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// Reading the client's request body failed while it was streamed upstream.
    #[error("reading the request body from the client failed: {source}")]
    DownstreamBody {
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// A bug or an impossible state in the gateway.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// Classifies a failed upstream exchange. Connect failures are told apart by the client;
    /// a failure of the request body we were streaming is the client's, not the node's.
    pub fn from_upstream(node: &str, source: hyper_util::client::legacy::Error) -> ProxyError {
        if source.is_connect() {
            return ProxyError::UpstreamConnect {
                node: node.to_owned(),
                source: source.into(),
            };
        }
        let body_failed = error_chain(&source)
            .filter_map(|e| e.downcast_ref::<hyper::Error>())
            .any(|e| e.is_user());
        if body_failed {
            ProxyError::DownstreamBody {
                source: source.into(),
            }
        } else {
            ProxyError::UpstreamRequest {
                node: node.to_owned(),
                source: source.into(),
            }
        }
    }

    /// Which side caused the failure.
    pub fn origin(&self) -> Origin {
        match self {
            ProxyError::RouteNotFound
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::ConnectNotSupported
            | ProxyError::InvalidPath(_)
            | ProxyError::DownstreamBody { .. } => Origin::Downstream,
            ProxyError::NoUpstreamNode { .. }
            | ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::UpstreamRequest { .. } => Origin::Upstream,
            ProxyError::Internal(_) => Origin::Internal,
        }
    }

    /// The status code the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::RouteNotFound => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::ConnectNotSupported => StatusCode::NOT_IMPLEMENTED,
            ProxyError::InvalidPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoUpstreamNode { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamRequest { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::DownstreamBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable `code` of the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::RouteNotFound => "route_not_found",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::ConnectNotSupported => "not_implemented",
            ProxyError::InvalidPath(_) => "invalid_path",
            ProxyError::NoUpstreamNode { .. } => "no_upstream_node",
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamRequest { .. } => {
                "upstream_unavailable"
            }
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::DownstreamBody { .. } => "bad_request_body",
            ProxyError::Internal(_) => "internal_error",
        }
    }

    /// The human-readable `message` of the JSON error body: says what happened without naming
    /// nodes or internals, which would tell an attacker about the network behind the gateway.
    pub fn public_message(&self) -> String {
        match self {
            ProxyError::RouteNotFound => "no route matches the request".to_owned(),
            ProxyError::MethodNotAllowed { allow } => format!(
                "method not allowed; allowed: {}",
                join_methods(allow).unwrap_or_default()
            ),
            ProxyError::ConnectNotSupported => "CONNECT is not supported".to_owned(),
            ProxyError::InvalidPath(reason) => format!("invalid request path: {reason}"),
            ProxyError::NoUpstreamNode { .. } => "no available upstream node".to_owned(),
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamRequest { .. } => {
                "the upstream is unavailable".to_owned()
            }
            ProxyError::UpstreamTimeout { .. } => "the upstream timed out".to_owned(),
            ProxyError::DownstreamBody { .. } => "the request body could not be read".to_owned(),
            ProxyError::Internal(_) => "internal error".to_owned(),
        }
    }

    /// The response the client gets: the status, the JSON error body and, for a 405, `Allow`.
    pub fn into_response<B: WholeBody>(self) -> Response<B> {
        let mut response = json_response(self.status(), self.code(), &self.public_message());
        if let ProxyError::MethodNotAllowed { allow } = &self
            && let Some(value) = join_methods(allow).and_then(|v| HeaderValue::try_from(v).ok())
        {
            response.headers_mut().insert(ALLOW, value);
        }
        response
    }
}

/// A body the gateway writes whole: the right side of every body type a response of the
/// gateway's own can take, so that the one builder below serves them all.
pub trait WholeBody {
    /// `body` as this body type.
    fn whole(body: Full<Bytes>) -> Self;
}

impl WholeBody for Full<Bytes> {
    fn whole(body: Full<Bytes>) -> Self {
        body
    }
}

impl<L> WholeBody for Either<L, Full<Bytes>> {
    fn whole(body: Full<Bytes>) -> Self {
        Either::Right(body)
    }
}

/// A response in the admin API's error shape: `{"error": {"code": …, "message": …}}`. The one
/// way every error answer is built: the proxy's, a plugin's refusal, the status listener's.
pub fn json_response<B: WholeBody>(status: StatusCode, code: &str, message: &str) -> Response<B> {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    json_body(status, &body)
}

/// A response with `body` serialised as JSON.
pub fn json_body<B: WholeBody>(status: StatusCode, body: &serde_json::Value) -> Response<B> {
    // Straight into bytes: `Value`'s `Display` goes through `fmt`, one `write_str` per
    // fragment into a `String` that grows piece by piece (callgrind: 9% of a 3-way batch).
    // Serializing a `Value` cannot fail; the default is never used.
    json_bytes(status, serde_json::to_vec(body).unwrap_or_default())
}

/// A response with `json`, already serialised, as its body.
pub fn json_bytes<B: WholeBody>(status: StatusCode, json: Vec<u8>) -> Response<B> {
    let mut response = Response::new(B::whole(Full::new(Bytes::from(json))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn join_methods(methods: &[Method]) -> Option<String> {
    if methods.is_empty() {
        return None;
    }
    Some(
        methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", "),
    )
}

fn error_chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |e: &&'a (dyn StdError + 'static)| {
        (*e).source()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(response: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn errors_become_the_json_error_shape() {
        let cases = [
            (ProxyError::RouteNotFound, 404, "route_not_found"),
            (
                ProxyError::NoUpstreamNode {
                    upstream: "u".into(),
                },
                503,
                "no_upstream_node",
            ),
            (
                ProxyError::UpstreamTimeout {
                    node: "10.0.0.1:80".into(),
                    phase: TimeoutPhase::ResponseHeaders,
                    after: Duration::from_millis(5),
                },
                504,
                "upstream_timeout",
            ),
            (ProxyError::Internal("x".into()), 500, "internal_error"),
        ];
        for (error, status, code) in cases {
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
            let body = body_json(response).await;
            assert_eq!(body["error"]["code"], code);
            let message = body["error"]["message"].as_str().unwrap();
            assert!(!message.contains("10.0.0.1"), "{message}");
        }
    }

    #[tokio::test]
    async fn method_not_allowed_lists_the_allowed_methods() {
        let error = ProxyError::MethodNotAllowed {
            allow: vec![Method::GET, Method::POST],
        };
        assert_eq!(error.origin(), Origin::Downstream);
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "GET, POST");
        assert_eq!(
            body_json(response).await["error"]["code"],
            "method_not_allowed"
        );
    }
}
