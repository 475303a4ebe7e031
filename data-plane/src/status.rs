//! The status listener: liveness, readiness and metrics for orchestrators and scrapers.
//!
//! - `GET /healthz` → 200 `{"status":"ok"}` while the process serves at all;
//! - `GET /readyz` → 200 `{"status":"ready","version":N,"source":"stream"}` once a snapshot is
//!   applied (`"source":"cache"` while serving the disk cache, no control plane having answered), 503
//!   `{"status":"not_ready"}` before that and `{"status":"draining"}` during shutdown;
//! - `GET /metrics` → the Prometheus text format;
//! - `GET /upstreams` → every upstream's nodes with their health and load (JSON).
//!
//! Anything else is a 404 (405 for another method on a known path) in the JSON error shape.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::service::service_fn;
use serde_json::json;
use tokio::net::TcpListener;

use crate::error::{json_body, json_response};
use crate::proxy::ProxyBody;
use crate::state::State;

/// Serves the status endpoints from `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: impl Future<Output = ()>) {
    let connection = move |stream, remote: SocketAddr, stop| {
        let state = Arc::clone(&state);
        let service = service_fn(move |request| {
            let response = respond(&state, &request);
            async move { Ok::<_, Infallible>(response) }
        });
        crate::transport::server::serve_hyper(stream, service, remote, stop)
    };
    crate::transport::server::serve("status", listener, connection, shutdown).await;
}

/// Answers one status request. Only the method and path are looked at.
pub fn respond<B>(state: &State, request: &Request<B>) -> Response<ProxyBody> {
    let path = request.uri().path();
    if !matches!(path, "/healthz" | "/readyz" | "/metrics" | "/upstreams") {
        return json_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such status endpoint",
        );
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "status endpoints answer GET and HEAD",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/healthz" => json_body(StatusCode::OK, &json!({"status": "ok"})),
        "/upstreams" => json_body(
            StatusCode::OK,
            &crate::runtime::health::upstreams_json(&state.runtime()),
        ),
        "/readyz" => match (state.is_draining(), state.applied_version()) {
            (true, _) => json_body(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "draining"}),
            ),
            (false, Some(version)) => json_body(
                StatusCode::OK,
                &json!({"status": "ready", "version": version, "source": state.config_source().as_str()}),
            ),
            (false, None) => json_body(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not_ready"}),
            ),
        },
        _ => {
            let mut text = state.metrics.render();
            let runtime = state.runtime();
            crate::runtime::health::render_metrics(&runtime, &mut text);
            crate::runtime::hedge::render_metrics(&runtime, &mut text);
            runtime.certificates.render_metrics(&mut text);
            let env = runtime.plugins.env();
            crate::plugins::limit_count::RedisCounters::render_metrics(
                env.redis.as_ref(),
                &mut text,
            );
            // The `prometheus` plugin's per-route series.
            env.prometheus.render(&mut text);
            env.basic_auth.render(&mut text);
            env.proxy_cache.render(&mut text);
            let mut response = Response::new(Either::Right(Full::new(Bytes::from(text))));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Runtime;
    use http_body_util::BodyExt;

    async fn get(state: &State, method: Method, path: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        let response = respond(state, &request);
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let state = State::new();
        assert_eq!(
            get(&state, Method::GET, "/healthz").await,
            (StatusCode::OK, r#"{"status":"ok"}"#.to_owned())
        );
        assert_eq!(
            get(&state, Method::GET, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"not_ready"}"#.to_owned()
            )
        );

        let mut runtime = Runtime::empty();
        runtime.version = 12;
        state.install(runtime);
        assert_eq!(
            get(&state, Method::GET, "/readyz").await,
            (
                StatusCode::OK,
                r#"{"source":"stream","status":"ready","version":12}"#.to_owned()
            )
        );
        let (status, metrics) = get(&state, Method::GET, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(metrics.contains("gateway_config_version 12\n"), "{metrics}");
        assert!(
            metrics.contains("\ngateway_ratelimit_redis_errors_total 0\n"),
            "{metrics}"
        );
        let mut runtime = Runtime::empty();
        runtime.version = 13;
        state.install_from(runtime, crate::state::ConfigSource::Cache);
        assert_eq!(
            get(&state, Method::GET, "/readyz").await,
            (
                StatusCode::OK,
                r#"{"source":"cache","status":"ready","version":13}"#.to_owned()
            )
        );

        state.start_draining();
        assert_eq!(
            get(&state, Method::GET, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"draining"}"#.to_owned()
            )
        );
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_get_json_errors() {
        let state = State::new();
        let (status, body) = get(&state, Method::GET, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains(r#""code":"not_found""#), "{body}");
        let (status, _) = get(&state, Method::POST, "/healthz").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }
}
