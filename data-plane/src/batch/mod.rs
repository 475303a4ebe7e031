//! Batch routes: one client request fanned out to several upstream requests, run concurrently,
//! their answers merged into one JSON document.
//!
//! A batch is compiled once per snapshot ([`CompiledBatch::compile`]): templates parsed into
//! segments, each sub-request's upstream resolved to the runtime's shared
//! [`UpstreamRuntime`] (so sub-requests use the same pools and balancers as proxied traffic),
//! and the dependency graph put in topological order. Per request ([`execute`]) every
//! sub-request is one future; a sub-request that reads another's answer (`{resp.NAME…}`)
//! awaits that one's shared outcome, so independent branches run in parallel and dependents
//! start as soon as their inputs are in. A semaphore bounds how many are in flight, every
//! sub-request has its own deadline inside the batch's, and every body read into memory is
//! capped.
//!
//! Failure policy (the contract's): a failed or timed-out sub-request shows
//! `{"error": {"status", "message"}}` in its place and the answer carries
//! `X-Gateway-Batch: partial`; if a `required` one failed the whole answer is 502 (504 when
//! every required failure was a timeout), with the same body. A sub-request fails when it gets
//! no answer, an answer too large, or a non-2xx status (as in KrakenD: an error status is not a
//! result to merge), and when a sub-request it depends on failed (it is then never sent).

pub mod merge;
pub mod template;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared, join_all};
use gateway_proto::model::{Batch, Merge, PassHost, Retries, RetryOn, Template};
use http::header::{
    ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, HOST, HeaderName, HeaderValue,
};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::debug;

use crate::error::{ProxyError, json_body, json_response};
use crate::metrics::Metrics;
use crate::proxy::ProxyBody;
use crate::proxy::headers::{self, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use crate::proxy::upstream::UpstreamBody;
use crate::runtime::{CompileError, Node, UpstreamRuntime};
use merge::{Part, error_value};
use template::{Context, Place, render};

/// `X-Gateway-Batch`: `complete` when every sub-request succeeded, else `partial`.
pub static X_GATEWAY_BATCH: HeaderName = HeaderName::from_static("x-gateway-batch");

/// A batch ready for the request path.
#[derive(Debug)]
pub struct CompiledBatch {
    /// The sub-requests, in declared order.
    pub requests: Vec<CompiledSubRequest>,
    /// Indices into `requests` such that each comes after every one it depends on.
    pub order: Vec<usize>,
    /// How answers are merged.
    pub merge: Merge,
    /// Whether the client's query string is appended to every sub-request.
    pub pass_query: bool,
    /// Deadline of the whole batch.
    pub timeout: Duration,
    /// Most sub-requests of one client request in flight at once.
    pub max_concurrency: usize,
    /// Cap on each body read into memory.
    pub max_body_bytes: usize,
}

/// One sub-request, compiled.
#[derive(Debug)]
pub struct CompiledSubRequest {
    /// Its name.
    pub name: String,
    /// The upstream it goes to: the runtime's shared one, balancer included.
    pub upstream: Arc<UpstreamRuntime>,
    /// The path template as configured, reported as the `uri` of a sub-request never sent.
    pub path_text: String,
    /// The path (and query) template.
    pub path: Template,
    /// The method, when it overrides the client's.
    pub method: Option<Method>,
    /// Headers set on top of the client's.
    pub headers: Vec<(HeaderName, Template)>,
    /// The body, when it overrides the client's.
    pub body: Option<BodyTemplate>,
    /// Whether its failure fails the batch.
    pub required: bool,
    /// Its own deadline, counted from when it is sent.
    pub timeout: Option<Duration>,
    /// Its `group` for `merge: deep`.
    pub group: Option<String>,
    /// Indices of the sub-requests whose answers it reads.
    pub deps: Vec<usize>,
}

/// A configured sub-request body.
#[derive(Debug)]
pub enum BodyTemplate {
    /// A string template, sent as is.
    Text(Template),
    /// A JSON value, sent serialised as `application/json`.
    Json(Bytes),
}

impl CompiledBatch {
    /// Compiles `spec`, the batch of route `route`, against the runtime's `upstreams`.
    ///
    /// The schema already checked all of this on write; it is checked again because a
    /// snapshot built by hand (or by a buggy control plane) must be NACKed, not served.
    pub fn compile(
        route: &str,
        spec: &Batch,
        upstreams: &HashMap<String, Arc<UpstreamRuntime>>,
    ) -> Result<CompiledBatch, CompileError> {
        let invalid = |reason: String| CompileError::InvalidBatch {
            route: route.to_owned(),
            reason,
        };
        let index: HashMap<&str, usize> = spec
            .requests
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.as_str(), i))
            .collect();
        if index.len() != spec.requests.len() {
            return Err(invalid("sub-request names are not unique".to_owned()));
        }
        let template = |name: &str, text: &str| {
            Template::parse(text).map_err(|e| invalid(format!("sub-request {name:?}: {e}")))
        };
        let mut requests = Vec::with_capacity(spec.requests.len());
        for sub in &spec.requests {
            let upstream = upstreams.get(&sub.upstream_id).cloned().ok_or_else(|| {
                CompileError::UnknownUpstream {
                    route: route.to_owned(),
                    upstream: sub.upstream_id.clone(),
                }
            })?;
            let path = template(&sub.name, &sub.path)?;
            let method = match &sub.method {
                Some(m) => Some(Method::from_bytes(m.as_bytes()).map_err(|_| {
                    invalid(format!("sub-request {:?}: invalid method {m:?}", sub.name))
                })?),
                None => None,
            };
            let mut headers = Vec::with_capacity(sub.headers.len());
            for (name, value) in &sub.headers {
                let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    invalid(format!(
                        "sub-request {:?}: invalid header {name:?}",
                        sub.name
                    ))
                })?;
                headers.push((header, template(&sub.name, value)?));
            }
            let body = match &sub.body {
                None => None,
                Some(Value::String(text)) => Some(BodyTemplate::Text(template(&sub.name, text)?)),
                Some(json) => Some(BodyTemplate::Json(Bytes::from(json.to_string()))),
            };
            let mut deps = Vec::new();
            let texts = std::iter::once(&path)
                .chain(headers.iter().map(|(_, t)| t))
                .chain(body.iter().filter_map(|b| match b {
                    BodyTemplate::Text(t) => Some(t),
                    BodyTemplate::Json(_) => None,
                }));
            for name in texts.flat_map(Template::dependencies) {
                let &dep = index.get(name).ok_or_else(|| {
                    invalid(format!(
                        "sub-request {:?} reads {name:?}, which is not in the batch",
                        sub.name
                    ))
                })?;
                if !deps.contains(&dep) {
                    deps.push(dep);
                }
            }
            requests.push(CompiledSubRequest {
                name: sub.name.clone(),
                upstream,
                path_text: sub.path.clone(),
                path,
                method,
                headers,
                body,
                required: sub.required,
                timeout: sub.timeout_ms.map(Duration::from_millis),
                group: sub.group.clone(),
                deps,
            });
        }
        let graph: Vec<Vec<usize>> = requests.iter().map(|r| r.deps.clone()).collect();
        let order = gateway_proto::schema::topological_order(&graph)
            .ok_or_else(|| invalid("the sub-requests depend on each other in a cycle".into()))?;
        Ok(CompiledBatch {
            requests,
            order,
            merge: spec.merge,
            pass_query: spec.pass_query,
            timeout: Duration::from_millis(spec.timeout_ms),
            max_concurrency: usize::try_from(spec.max_concurrency)
                .unwrap_or(usize::MAX)
                .max(1),
            max_body_bytes: usize::try_from(spec.max_body_bytes).unwrap_or(usize::MAX),
        })
    }
}

/// What the proxy hands a batch route: everything about the client's request.
#[derive(Debug)]
pub struct Downstream<'a> {
    /// The client's address.
    pub remote: SocketAddr,
    /// The host the client asked for.
    pub original_host: Option<HeaderValue>,
    /// Named segments captured by the route path.
    pub params: &'a [(String, String)],
}

/// Why a sub-request has no answer to merge.
#[derive(Clone, Debug)]
struct Failure {
    status: StatusCode,
    message: String,
    timeout: bool,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
            timeout: false,
        }
    }

    fn timeout(message: impl Into<String>) -> Failure {
        Failure {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: message.into(),
            timeout: true,
        }
    }

    fn from_proxy(error: &ProxyError) -> Failure {
        Failure {
            status: error.status(),
            message: error.public_message(),
            timeout: matches!(error, ProxyError::UpstreamTimeout { .. }),
        }
    }
}

/// How one sub-request ended.
#[derive(Debug)]
struct Outcome {
    /// The path and query it was sent to (or its template, if it never left).
    uri: String,
    /// The status and JSON answer, or why there is none.
    result: Result<(StatusCode, Value), Failure>,
}

type SharedOutcome<'a> = Shared<BoxFuture<'a, Arc<Outcome>>>;

/// Runs `batch` for one client request and merges the answers.
pub async fn execute(
    batch: &CompiledBatch,
    metrics: &Metrics,
    downstream: Downstream<'_>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let deadline = Instant::now() + batch.timeout;
    let (parts, body) = request.into_parts();
    // The client's body may go to every sub-request, so it is read once, within the cap.
    let body = match Limited::new(body, batch.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Ok(json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                &format!(
                    "the request body exceeds this batch route's limit of {} bytes",
                    batch.max_body_bytes
                ),
            ));
        }
        Err(_) => {
            return Ok(json_response(
                StatusCode::BAD_REQUEST,
                "bad_request_body",
                "the request body could not be read",
            ));
        }
    };
    let forwarded = forwarded_headers(&parts.headers, &downstream);
    let query = parts.uri.query().unwrap_or("");
    let exchange = Exchange {
        batch,
        metrics,
        context: Context {
            path: parts.uri.path(),
            query,
            headers: &parts.headers,
            params: downstream.params,
        },
        method: &parts.method,
        headers: forwarded,
        body,
        original_host: downstream.original_host.clone(),
        deadline,
        permits: Semaphore::new(batch.max_concurrency),
    };

    // One shared future per sub-request, built in topological order so that every
    // dependency's future exists when its dependents are built.
    let mut futures: Vec<Option<SharedOutcome<'_>>> =
        (0..batch.requests.len()).map(|_| None).collect();
    for &i in &batch.order {
        let deps: Vec<SharedOutcome<'_>> = batch.requests[i]
            .deps
            .iter()
            .filter_map(|&d| futures.get(d).cloned().flatten())
            .collect();
        // INVARIANT: `order` is topological, so every dependency was built before.
        debug_assert_eq!(deps.len(), batch.requests[i].deps.len());
        let exchange = &exchange;
        let future: BoxFuture<'_, Arc<Outcome>> =
            Box::pin(async move { Arc::new(exchange.run(i, deps).await) });
        futures[i] = Some(future.shared());
    }
    // Declared order: the order of the merge.
    let outcomes = join_all(futures.into_iter().flatten()).await;

    let mut parts = Vec::with_capacity(outcomes.len());
    let (mut failed, mut required_failed, mut all_timeouts) = (false, false, true);
    for (sub, outcome) in batch.requests.iter().zip(&outcomes) {
        let (status, body, is_failure) = match &outcome.result {
            Ok((status, body)) => (status.as_u16(), body.clone(), false),
            Err(failure) => {
                failed = true;
                if sub.required {
                    required_failed = true;
                    all_timeouts &= failure.timeout;
                }
                let status = failure.status.as_u16();
                (status, error_value(status, &failure.message), true)
            }
        };
        parts.push(Part {
            name: &sub.name,
            group: sub.group.as_deref(),
            uri: &outcome.uri,
            status,
            body,
            failed: is_failure,
        });
    }
    let merged = merge::merge(batch.merge, parts);
    let status = match (required_failed, all_timeouts) {
        (false, _) => StatusCode::OK,
        (true, true) => StatusCode::GATEWAY_TIMEOUT,
        (true, false) => StatusCode::BAD_GATEWAY,
    };
    debug!(%status, sub_requests = outcomes.len(), failed, "batch answered");
    let mut response = json_body(status, &merged);
    response.headers_mut().insert(
        &X_GATEWAY_BATCH,
        HeaderValue::from_static(if failed { "partial" } else { "complete" }),
    );
    Ok(response)
}

/// The client's headers as every sub-request starts from them: hop-by-hop headers out,
/// `X-Forwarded-*` in, as for a proxied request. `Content-Length` is recomputed for each
/// body, and `Accept-Encoding` is dropped because the gateway must read the answers: a
/// compressed one could not be merged.
fn forwarded_headers(client: &HeaderMap, downstream: &Downstream<'_>) -> HeaderMap {
    let mut headers = client.clone();
    headers::remove_hop_by_hop(&mut headers);
    for name in [EXPECT, CONTENT_LENGTH, ACCEPT_ENCODING, HOST] {
        headers.remove(name);
    }
    headers::append_forwarded_for(&mut headers, downstream.remote.ip());
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    match &downstream.original_host {
        Some(host) => headers.insert(&X_FORWARDED_HOST, host.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
    headers
}

/// One client request's batch in progress.
struct Exchange<'a> {
    batch: &'a CompiledBatch,
    metrics: &'a Metrics,
    context: Context<'a>,
    method: &'a Method,
    /// The client's headers prepared for a hop (see [`forwarded_headers`]).
    headers: HeaderMap,
    body: Bytes,
    original_host: Option<HeaderValue>,
    deadline: Instant,
    permits: Semaphore,
}

/// A sub-request rendered for this client request, before a node is picked.
struct Prepared {
    method: Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    body: Bytes,
}

impl Exchange<'_> {
    /// Runs sub-request `i` once `deps` (its dependencies' outcomes) are in.
    async fn run(&self, i: usize, deps: Vec<SharedOutcome<'_>>) -> Outcome {
        let sub = &self.batch.requests[i];
        let mut answers: Vec<(&str, Arc<Outcome>)> = Vec::with_capacity(deps.len());
        for (&d, dep) in sub.deps.iter().zip(deps) {
            let name = self.batch.requests[d].name.as_str();
            let outcome = dep.await;
            if let Err(failure) = &outcome.result {
                // Its input is missing: it is never sent, and fails the way its input did.
                return Outcome {
                    uri: sub.path_text.clone(),
                    result: Err(Failure {
                        message: format!("not sent: it needs the answer of {name:?}, which failed"),
                        ..failure.clone()
                    }),
                };
            }
            answers.push((name, outcome));
        }
        let prepared = match self.prepare(sub, &answers) {
            Ok(prepared) => prepared,
            Err(failure) => {
                return Outcome {
                    uri: sub.path_text.clone(),
                    result: Err(failure),
                };
            }
        };
        let uri = prepared.path_and_query.to_string();
        let exchange = async {
            // The semaphore is never closed; waiting for a permit is bounded by the deadline.
            let Ok(_permit) = self.permits.acquire().await else {
                return Err(Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error",
                ));
            };
            let send = self.send(sub, prepared);
            match sub.timeout {
                Some(timeout) => tokio::time::timeout(timeout, send)
                    .await
                    .unwrap_or_else(|_| Err(Failure::timeout("the upstream timed out"))),
                None => send.await,
            }
        };
        let result = tokio::time::timeout_at(self.deadline, exchange)
            .await
            .unwrap_or_else(|_| Err(Failure::timeout("the batch timed out")));
        Outcome { uri, result }
    }

    /// Renders the sub-request's templates against the client's request and `answers`.
    fn prepare(
        &self,
        sub: &CompiledSubRequest,
        answers: &[(&str, Arc<Outcome>)],
    ) -> Result<Prepared, Failure> {
        let answer = |name: &str| {
            answers
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, o)| o.result.as_ref().ok())
                .map(|(_, body)| body)
        };
        let bad = |e: template::RenderError| Failure::new(StatusCode::BAD_GATEWAY, e.to_string());
        let mut target = render(&sub.path, &self.context, answer, Place::Uri).map_err(bad)?;
        if self.batch.pass_query && !self.context.query.is_empty() {
            target.push(if target.contains('?') { '&' } else { '?' });
            target.push_str(self.context.query);
        }
        let path_and_query = PathAndQuery::try_from(target.as_str()).map_err(|_| {
            Failure::new(
                StatusCode::BAD_GATEWAY,
                "the sub-request path is not a valid URI",
            )
        })?;
        let mut headers = self.headers.clone();
        for (name, value) in &sub.headers {
            let value = render(value, &self.context, answer, Place::Text).map_err(bad)?;
            let value = HeaderValue::try_from(value).map_err(|_| {
                Failure::new(
                    StatusCode::BAD_GATEWAY,
                    format!("the value of header {name} is not a valid header value"),
                )
            })?;
            headers.insert(name.clone(), value);
        }
        let body = match &sub.body {
            None => self.body.clone(),
            Some(BodyTemplate::Text(template)) => {
                Bytes::from(render(template, &self.context, answer, Place::Text).map_err(bad)?)
            }
            Some(BodyTemplate::Json(json)) => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                json.clone()
            }
        };
        Ok(Prepared {
            method: sub.method.clone().unwrap_or_else(|| self.method.clone()),
            path_and_query,
            headers,
            body,
        })
    }

    /// Sends the sub-request to a node of its upstream and reads its answer.
    async fn send(
        &self,
        sub: &CompiledSubRequest,
        prepared: Prepared,
    ) -> Result<(StatusCode, Value), Failure> {
        let response = send_buffered(
            &sub.upstream,
            prepared,
            self.original_host.as_ref(),
            self.metrics,
        )
        .await
        .map_err(|e| {
            debug!(sub_request = %sub.name, error = %e, "sub-request failed");
            Failure::from_proxy(&e)
        })?;
        let status = response.status();
        // Read even an error answer, so that the connection goes back to the pool.
        let body = read_capped(response.into_body(), self.batch.max_body_bytes).await?;
        if !status.is_success() {
            return Err(Failure::new(
                status,
                format!("the upstream answered {status}"),
            ));
        }
        Ok((status, parse_body(&body)))
    }
}

/// Sends a request whose body is in memory to a node of `upstream`, with the upstream's own
/// client (pool), balancer, health state and retry policy: what proxied requests get.
///
/// A buffered body can be sent again, so a retry (where the policy allows one for the method)
/// re-sends it to a node not tried yet, within the upstream's retry budget.
async fn send_buffered(
    upstream: &UpstreamRuntime,
    prepared: Prepared,
    original_host: Option<&HeaderValue>,
    metrics: &Metrics,
) -> Result<Response<Incoming>, ProxyError> {
    let retries = upstream
        .retries
        .as_ref()
        .filter(|r| r.count > 0 && (is_idempotent(&prepared.method) || r.non_idempotent));
    upstream.budget.record_request();
    let mut tried: Vec<usize> = Vec::new();
    loop {
        let index = upstream
            .pick_index(None, |i| tried.contains(&i))
            .ok_or_else(|| ProxyError::NoUpstreamNode {
                upstream: upstream.key.clone(),
            })?;
        let node = &upstream.nodes[index];
        let request = build(upstream, node, &prepared, original_host)?;

        let in_flight = node.load.start();
        let started = std::time::Instant::now();
        let result = upstream
            .client
            .send(
                request,
                node.authority.as_str(),
                upstream.connect_timeout,
                upstream.read_timeout,
            )
            .await;
        let elapsed = started.elapsed();
        drop(in_flight);
        metrics.record_upstream(elapsed);
        node.load.observe_latency(elapsed);

        let failure = retry_condition(&result);
        let node_failed = !matches!(failure, None | Some(RetryCondition::Client));
        node.health
            .record_request(!node_failed, upstream.passive_check());
        let may_retry = retries.is_some_and(|policy| {
            failure.is_some_and(|f| f.allowed_by(policy))
                && tried.len() < policy.count as usize
                && tried.len() + 1 < upstream.nodes.len()
        });
        if may_retry && upstream.budget.try_retry() {
            tried.push(index);
            continue;
        }
        return result;
    }
}

/// The request for one attempt on `node`.
fn build(
    upstream: &UpstreamRuntime,
    node: &Node,
    prepared: &Prepared,
    original_host: Option<&HeaderValue>,
) -> Result<Request<UpstreamBody>, ProxyError> {
    let scheme = match upstream.uri_scheme() {
        "https" => Scheme::HTTPS,
        _ => Scheme::HTTP,
    };
    let uri = Uri::builder()
        .scheme(scheme)
        .authority(node.authority.clone())
        .path_and_query(prepared.path_and_query.clone())
        .build()
        .map_err(|e| ProxyError::Internal(format!("building the sub-request URI: {e}")))?;
    let mut request = Request::new(Either::Right(Full::new(prepared.body.clone())));
    *request.method_mut() = prepared.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let mut headers = prepared.headers.clone();
    let host = match upstream.pass_host {
        PassHost::Pass => original_host.cloned(),
        PassHost::Node => Some(node.host_header.clone()),
        PassHost::Rewrite => upstream.upstream_host.clone(),
    };
    if let Some(host) = host {
        headers.insert(HOST, host);
    }
    *request.headers_mut() = headers;
    Ok(request)
}

/// How an attempt failed, in the terms of a retry policy.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum RetryCondition {
    Connect,
    Timeout,
    Status(u16),
    /// Not the node's fault, and not worth another node.
    Client,
}

impl RetryCondition {
    fn allowed_by(self, policy: &Retries) -> bool {
        let condition = match self {
            RetryCondition::Connect => RetryOn::ConnectError,
            RetryCondition::Timeout => RetryOn::Timeout,
            RetryCondition::Status(502) => RetryOn::Status502,
            RetryCondition::Status(503) => RetryOn::Status503,
            RetryCondition::Status(504) => RetryOn::Status504,
            RetryCondition::Status(_) | RetryCondition::Client => return false,
        };
        policy.on.contains(&condition)
    }
}

fn retry_condition(result: &Result<Response<Incoming>, ProxyError>) -> Option<RetryCondition> {
    match result {
        Ok(response) => match response.status().as_u16() {
            status @ 502..=504 => Some(RetryCondition::Status(status)),
            _ => None,
        },
        Err(ProxyError::UpstreamTimeout { .. }) => Some(RetryCondition::Timeout),
        Err(ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamRequest { .. }) => {
            Some(RetryCondition::Connect)
        }
        Err(_) => Some(RetryCondition::Client),
    }
}

/// Methods that RFC 9110 §9.2.2 defines as idempotent.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Reads an upstream body into memory, refusing one larger than `max` bytes.
async fn read_capped(body: Incoming, max: usize) -> Result<Bytes, Failure> {
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(Failure::new(
            StatusCode::BAD_GATEWAY,
            format!("the upstream's answer exceeds this batch's limit of {max} bytes"),
        )),
        Err(_) => Err(Failure::new(
            StatusCode::BAD_GATEWAY,
            "reading the upstream's answer failed",
        )),
    }
}

/// A JSON body as JSON; anything else as a string (lossily decoded); nothing as `null`.
fn parse_body(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

#[cfg(test)]
mod tests;
