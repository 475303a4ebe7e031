//! Batch routes: one client request fanned out to several upstream requests, run concurrently,
//! their answers merged into one JSON document.
//!
//! A batch is compiled once per snapshot ([`CompiledBatch::compile`], in the runtime). Per
//! request (`execute`) every
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

mod json;
pub mod merge;
pub mod template;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared, join_all};
use gateway_proto::model::PassHost;
use http::header::{
    ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue, UPGRADE,
};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, Limited};
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::error::{ProxyError, json_bytes, json_response};
use crate::metrics::BatchOutcome;
use crate::plugins::proxy_cache::store::{CacheStatus, Entry, Freshness};
use crate::proxy::{Dispatcher, ProxyBody};
use crate::runtime::CompiledRoute;
use crate::runtime::batch::{BodyTemplate, CompiledBatch, CompiledSubRequest};
use crate::transport::body::UpstreamBody;
use crate::transport::deadline::{self, Elapsed, Instant};
use crate::transport::h1::{self, HeadForm};
use crate::transport::headers::{HopHeaders, X_FORWARDED_FOR, remove_hop_by_hop};
use crate::transport::is_idempotent;
use merge::{Answer, Part, error_value};
use template::{Context, Place, render};

/// `X-Gateway-Batch`: `complete` when every sub-request succeeded, else `partial`.
pub static X_GATEWAY_BATCH: HeaderName = HeaderName::from_static("x-gateway-batch");

/// What the proxy hands a batch route: everything about the client's request.
#[derive(Debug)]
pub struct Downstream<'a> {
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
    /// Never sent: a sub-request it depends on failed.
    skipped: bool,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
            timeout: false,
            skipped: false,
        }
    }

    fn timeout(message: impl Into<String>) -> Failure {
        Failure {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: message.into(),
            timeout: true,
            skipped: false,
        }
    }

    fn from_proxy(error: &ProxyError) -> Failure {
        Failure {
            status: error.status(),
            message: error.public_message(),
            timeout: matches!(error, ProxyError::UpstreamTimeout { .. }),
            skipped: false,
        }
    }
}

/// The failure of a sub-request never sent because its input, the answer of `name`, failed:
/// it fails the way its input did.
fn skipped(name: &str, failure: &Failure) -> Failure {
    Failure {
        message: format!("not sent: it needs the answer of {name:?}, which failed"),
        skipped: true,
        ..failure.clone()
    }
}

/// How one sub-request ended: the status and answer, or why there is none.
type Outcome = Result<(StatusCode, Answer), Failure>;

type SharedOutcome<'a> = Shared<BoxFuture<'a, Arc<Outcome>>>;

/// What is known of a sub-request while the batch runs, kept outside its future so that it
/// outlives a batch cut short by its deadline.
#[derive(Default)]
struct Slot {
    /// The path and query it was sent to, once rendered (shared with the request rather than
    /// copied); unset if it never left (its template stands in).
    uri: OnceLock<PathAndQuery>,
    /// Its outcome once it ended (independent sub-requests; dependent ones share theirs).
    outcome: OnceLock<Outcome>,
}

/// Runs `batch` for one client request and merges the answers.
pub(crate) async fn execute(
    dispatch: &Dispatcher<'_>,
    route: &CompiledRoute,
    batch: &CompiledBatch,
    downstream: Downstream<'_>,
    request: Request<UpstreamBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let until = deadline::after(batch.timeout);
    let (parts, body) = request.into_parts();
    // The client's body may go to every sub-request, so it is read once, within the cap and
    // the batch's deadline (a client trickling its body must not hold the batch open).
    let read = deadline::within(until, Limited::new(body, batch.max_body_bytes).collect());
    let body = match read.await {
        Err(_) => {
            return Ok(json_response(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive within the batch's timeout",
            ));
        }
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            return Ok(json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                &format!(
                    "the request body exceeds this batch route's limit of {} bytes",
                    batch.max_body_bytes
                ),
            ));
        }
        Ok(Err(_)) => {
            return Ok(json_response(
                StatusCode::BAD_REQUEST,
                "bad_request_body",
                "the request body could not be read",
            ));
        }
    };
    let forwarded = forwarded_headers(&parts.headers);
    let query = parts.uri.query().unwrap_or("");
    let exchange = Exchange {
        dispatch,
        route,
        batch,
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
        deadline: until,
        // A bound every sub-request is within needs no semaphore.
        permits: (batch.requests.len() > batch.max_concurrency)
            .then(|| Semaphore::new(batch.max_concurrency)),
    };

    let exchange = &exchange;
    let n = batch.requests.len();
    let mut slots: Vec<Slot> = (0..n).map(|_| Slot::default()).collect();
    // One timer for the whole batch rather than one per sub-request: when it fires, what has
    // ended keeps its outcome (in its slot) and the rest are filled in below as their own
    // timers would have ended them.
    if batch.independent {
        // No sub-request reads another's answer: plain concurrent futures, nothing to share
        // (no `Arc` per answer).
        let slots = &slots;
        let all = join_all((0..n).map(|i| async move {
            let _ = slots[i]
                .outcome
                .set(exchange.run(i, Vec::new(), &slots[i]).await);
        }));
        let _ = deadline::within(until, all).await;
    } else {
        // One shared future per sub-request, built in topological order so that every
        // dependency's future exists when its dependents are built.
        let shared = &slots;
        let mut futures: Vec<Option<SharedOutcome<'_>>> = (0..n).map(|_| None).collect();
        for &i in &batch.order {
            let deps: Vec<SharedOutcome<'_>> = batch.requests[i]
                .deps
                .iter()
                .filter_map(|&d| futures.get(d).cloned().flatten())
                .collect();
            // INVARIANT: `order` is topological, so every dependency was built before.
            debug_assert_eq!(deps.len(), batch.requests[i].deps.len());
            let future: BoxFuture<'_, Arc<Outcome>> =
                Box::pin(async move { Arc::new(exchange.run(i, deps, &shared[i]).await) });
            futures[i] = Some(future.shared());
        }
        let futures: Vec<SharedOutcome<'_>> = futures.into_iter().flatten().collect();
        let _ = deadline::within(until, join_all(futures.iter().cloned())).await;
        let ended: Vec<Option<Arc<Outcome>>> = futures.iter().map(|f| f.peek().cloned()).collect();
        // Every other handle is gone with the futures, so the answers move out of their
        // `Arc`s instead of being copied.
        drop(futures);
        for (slot, outcome) in slots.iter_mut().zip(ended) {
            if let Some(outcome) = outcome {
                let _ = slot.outcome.set(Arc::unwrap_or_clone(outcome));
            }
        }
    }
    // Past the deadline, in dependency order: one whose input failed is not sent, the others
    // ran out of time.
    for &i in &batch.order {
        if slots[i].outcome.get().is_some() {
            continue;
        }
        let failed_input = batch.requests[i].deps.iter().find_map(|&d| {
            let failure = slots[d].outcome.get()?.as_ref().err()?;
            Some(skipped(&batch.requests[d].name, failure))
        });
        let _ = slots[i].outcome.set(Err(
            failed_input.unwrap_or_else(|| Failure::timeout("the batch timed out"))
        ));
    }
    let (mut failed, mut required_failed, mut all_timeouts) = (false, false, true);
    let mut parts = Vec::with_capacity(n);
    for (sub, slot) in batch.requests.iter().zip(&mut slots) {
        // Every slot is filled by now; the fallback only keeps this total.
        let outcome = slot
            .outcome
            .take()
            .unwrap_or_else(|| Err(Failure::timeout("the batch timed out")));
        dispatch.metrics().record_batch_subrequest(match &outcome {
            Ok(_) => BatchOutcome::Ok,
            Err(failure) if failure.skipped => BatchOutcome::Skipped,
            Err(failure) if failure.timeout => BatchOutcome::Timeout,
            Err(_) => BatchOutcome::Error,
        });
        let (status, body, part_failed) = match outcome {
            Ok((status, body)) => (status.as_u16(), body, false),
            Err(failure) => {
                failed = true;
                if sub.required {
                    required_failed = true;
                    all_timeouts &= failure.timeout;
                }
                let status = failure.status.as_u16();
                (
                    status,
                    Answer::Value(error_value(status, &failure.message)),
                    true,
                )
            }
        };
        parts.push(Part {
            name: &sub.name,
            group: sub.group.as_deref(),
            uri: slot
                .uri
                .get()
                .map_or(sub.path_text.as_str(), PathAndQuery::as_str),
            status,
            body,
            failed: part_failed,
        });
    }
    let merged = merge::merge(batch.merge, parts);
    let status = match (required_failed, all_timeouts) {
        (false, _) => StatusCode::OK,
        (true, true) => StatusCode::GATEWAY_TIMEOUT,
        (true, false) => StatusCode::BAD_GATEWAY,
    };
    debug!(%status, sub_requests = n, failed, "batch answered");
    let mut response = json_bytes(status, merged);
    response.headers_mut().insert(
        &X_GATEWAY_BATCH,
        HeaderValue::from_static(if failed { "partial" } else { "complete" }),
    );
    Ok(response)
}

/// The client's headers as every sub-request starts from them. The hop's own rewrite
/// (`X-Forwarded-*` in, `Host` per `pass_host`) happens where every proxied request gets it,
/// so the headers it replaces whole (`Host`, `Expect`, `X-Forwarded-Proto`, `X-Forwarded-Host`)
/// are left out here already: a client that sends nothing else (`Host` alone) gives an empty
/// map, which every sub-request then copies without an allocation. `X-Forwarded-For` stays:
/// the hop appends to the client's chain. (A sub-request's upstream hashing on the `Host`
/// header therefore hashes by the client's address, as for a request without the header.)
/// Also gone: the hop-by-hop headers (`Connection` and what it lists, `Upgrade`, `TE`, …),
/// which describe the client's connection, not a sub-request (the forwarding code would
/// read `Connection: upgrade` as a WebSocket handshake to pass on); `Content-Length`, because
/// each body is measured again; and `Accept-Encoding`, because the gateway must read the
/// answers: a compressed one could not be merged.
fn forwarded_headers(client: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in client {
        let replaced = HopHeaders::replaces(name) && *name != X_FORWARDED_FOR;
        if !replaced && *name != CONTENT_LENGTH && *name != ACCEPT_ENCODING {
            headers.append(name.clone(), value.clone());
        }
    }
    // `Connection` is still there when the client sent it: what it lists goes with it.
    remove_hop_by_hop(&mut headers);
    headers
}

/// One client request's batch in progress.
struct Exchange<'a> {
    dispatch: &'a Dispatcher<'a>,
    route: &'a CompiledRoute,
    batch: &'a CompiledBatch,
    context: Context<'a>,
    method: &'a Method,
    /// The client's headers as sub-requests start from them (see [`forwarded_headers`]).
    headers: HeaderMap,
    body: Bytes,
    original_host: Option<HeaderValue>,
    deadline: Instant,
    /// The bound on sub-requests in flight, when the batch has more than that.
    permits: Option<Semaphore>,
}

/// A sub-request rendered for this client request, before a node is picked.
struct Prepared {
    method: Method,
    headers: HeaderMap,
    body: Bytes,
}

impl Exchange<'_> {
    /// Runs sub-request `i` once `deps` (its dependencies' outcomes) are in.
    async fn run(&self, i: usize, deps: Vec<SharedOutcome<'_>>, slot: &Slot) -> Outcome {
        let sub = &self.batch.requests[i];
        let mut answers: Vec<(&str, Arc<Outcome>)> = Vec::with_capacity(deps.len());
        for (&d, dep) in sub.deps.iter().zip(deps) {
            let name = self.batch.requests[d].name.as_str();
            let outcome = dep.await;
            if let Err(failure) = &*outcome {
                return Err(skipped(name, failure));
            }
            answers.push((name, outcome));
        }
        let (prepared, path_and_query) = self.prepare(sub, &answers)?;
        // The slot keeps the path for the merge; the request borrows it from there.
        let target = slot.uri.get_or_init(|| path_and_query);
        // Bounded by the batch's deadline (its one timer, in `execute`), and here by the
        // sub-request's own timeout when that ends first.
        let _permit = match &self.permits {
            Some(permits) => match permits.acquire().await {
                Ok(permit) => Some(permit),
                // The semaphore is never closed.
                Err(_) => {
                    return Err(Failure::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal error",
                    ));
                }
            },
            None => None,
        };
        match sub
            .timeout
            .map(deadline::after)
            .filter(|own| *own < self.deadline)
        {
            // Boxed: the exchange's state is large, and is moved into the deadline's future.
            Some(own) => {
                match deadline::within(own, Box::pin(self.send(sub, prepared, target))).await {
                    Ok(result) => result,
                    Err(Elapsed) => Err(Failure::timeout("the upstream timed out")),
                }
            }
            None => self.send(sub, prepared, target).await,
        }
    }

    /// Renders the sub-request's templates against the client's request and `answers`.
    fn prepare(
        &self,
        sub: &CompiledSubRequest,
        answers: &[(&str, Arc<Outcome>)],
    ) -> Result<(Prepared, PathAndQuery), Failure> {
        let answer = |name: &str| {
            answers
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, o)| (**o).as_ref().ok())
                .and_then(|(_, body)| match body {
                    Answer::Value(value) => Some(value),
                    // Never: an answer that is read is parsed (`keep_raw`).
                    Answer::Raw(_) => None,
                })
        };
        let bad = |e: template::RenderError| {
            // A value of the client's request that would climb out of the path is the
            // client's fault; an answer lacking a value is the upstream's.
            let status = match e {
                template::RenderError::DotSegment { .. } => StatusCode::BAD_REQUEST,
                template::RenderError::MissingValue { .. } => StatusCode::BAD_GATEWAY,
            };
            Failure::new(status, e.to_string())
        };
        let mut target = render(&sub.path, &self.context, answer, Place::Uri).map_err(bad)?;
        if self.batch.pass_query && !self.context.query.is_empty() {
            target.push(if target.contains('?') { '&' } else { '?' });
            target.push_str(self.context.query);
        }
        // From the `String` itself: its buffer becomes the URI's, not copied.
        let path_and_query = PathAndQuery::try_from(target).map_err(|_| {
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
        let prepared = Prepared {
            method: sub.method.clone().unwrap_or_else(|| self.method.clone()),
            headers,
            body,
        };
        Ok((prepared, path_and_query))
    }

    /// Sends the sub-request the way proxied requests are sent (the upstream's pool, balancer,
    /// health state and retry policy; the route's timeouts) and reads its answer.
    async fn send(
        &self,
        sub: &CompiledSubRequest,
        prepared: Prepared,
        path_and_query: &PathAndQuery,
    ) -> Result<(StatusCode, Answer), Failure> {
        let Prepared {
            method,
            headers,
            body,
        } = prepared;
        // A cached sub-request's key: what it asks of which upstream.
        let cached = sub
            .cache
            .as_ref()
            .filter(|_| method == Method::GET || method == Method::HEAD)
            .map(|cache| {
                let key = format!("{method} {} {path_and_query}", sub.upstream.key);
                (cache, key)
            });
        if let Some((cache, key)) = &cached {
            if let Some(entry) = cache
                .store
                .get(key)
                .filter(|e| e.freshness() == Freshness::Fresh)
            {
                cache.store.record(CacheStatus::Hit);
                return Ok((entry.status, parse_body(entry.body.clone(), sub.keep_raw)));
            }
            cache.store.record(CacheStatus::Miss);
        }
        let failed = |e: ProxyError| {
            debug!(sub_request = %sub.name, error = %e, "sub-request failed");
            Failure::from_proxy(&e)
        };
        // Read even an error answer, so that the connection goes back to the pool.
        let (status, body) = match self.direct(sub, &method, &headers, &body) {
            Some(limits) => {
                let target = path_and_query.as_str();
                let response = self
                    .send_direct(sub, limits, &method, target, &headers)
                    .await
                    .map_err(failed)?;
                let status = response.status();
                let body = read_capped(response.into_body(), self.batch.max_body_bytes).await?;
                (status, body)
            }
            None => {
                let mut request = Request::new(Either::Right(Full::new(body)));
                *request.method_mut() = method;
                *request.uri_mut() = Uri::from(path_and_query.clone());
                *request.headers_mut() = headers;
                // Boxed: this way's state is several times the direct one's, and every
                // sub-request's future would otherwise be that large (and moved so) whichever
                // way it goes.
                let response = Box::pin(self.dispatch.send_upstream(
                    self.route,
                    &sub.upstream,
                    request,
                    self.original_host.clone(),
                    // Only the status and the body go into the merged answer.
                    HeadForm::Ignored,
                    Some(&sub.name),
                    sub.hedge.as_ref(),
                ))
                .await
                .map_err(failed)?;
                let status = response.status();
                let body = read_capped(response.into_body(), self.batch.max_body_bytes).await?;
                (status, body)
            }
        };
        if !status.is_success() {
            return Err(Failure::new(
                status,
                format!("the upstream answered {status}"),
            ));
        }
        if let Some((cache, key)) = cached {
            let entry = Entry::new(
                status,
                HeaderMap::new(),
                body.clone(),
                Vec::new(),
                cache.ttl,
                Duration::ZERO,
                Duration::ZERO,
            );
            cache.store.insert(key, entry);
        }
        Ok((status, parse_body(body, sub.keep_raw)))
    }

    /// Whether the sub-request can go the direct way ([`Exchange::send_direct`]), and with
    /// which pool limits: what that way leaves out must not apply to it. It is bodiless, not
    /// traced, on an upstream served by the in-task HTTP/1.1 client, with no retries, no
    /// hedging and no balancer hashing on the request; anything else goes through
    /// `Dispatcher::send_upstream`, as proxied requests do.
    fn direct(
        &self,
        sub: &CompiledSubRequest,
        method: &Method,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Option<h1::PoolLimits> {
        let upstream = &*sub.upstream;
        let spec = &self.route.spec;
        let retries = spec
            .retries
            .as_ref()
            .or(upstream.retries.as_ref())
            .is_some_and(|r| r.count > 0);
        let hedge = match sub.hedge.as_ref().or(spec.hedge.as_ref()) {
            Some(nearest) => nearest.policy().is_some(),
            None => upstream.spec.hedge.is_some(),
        };
        // Hedging applies to idempotent requests only.
        let hedged = hedge && is_idempotent(method);
        let elsewhere = !body.is_empty()
            || self.dispatch.trace.is_some()
            || retries
            || hedged
            || upstream.balancer.wants_key()
            || headers.contains_key(UPGRADE);
        (!elsewhere).then(|| upstream.client.h1_limits()).flatten()
    }

    /// Sends a bodiless sub-request by the shortest way (see [`Exchange::direct`]): one node
    /// picked by the balancer, its head written from the rendered path and headers straight
    /// into the connection's buffer ([`h1::send_head`]), the attempt recorded as a proxied
    /// one is (metrics, access log, latency, passive health) and the node counted busy until
    /// the body ends.
    async fn send_direct(
        &self,
        sub: &CompiledSubRequest,
        limits: h1::PoolLimits,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
    ) -> Result<Response<h1::ResponseBody>, ProxyError> {
        let dispatch = self.dispatch;
        let upstream = &*sub.upstream;
        if let Some(notes) = dispatch.notes {
            notes.subrequest();
        }
        upstream.budget.record_request();
        let index =
            upstream
                .pick_index(None, |_| false)
                .ok_or_else(|| ProxyError::NoUpstreamNode {
                    upstream: upstream.key.clone(),
                })?;
        let node = &upstream.nodes[index];
        let in_flight = node.load.start();
        let started = std::time::Instant::now();
        // A route overrides the upstream's timeouts field by field.
        let overrides = self.route.spec.timeouts.unwrap_or_default();
        let connect_timeout = overrides
            .connect_ms
            .map_or(upstream.connect_timeout, Duration::from_millis);
        let read_timeout = overrides
            .read_ms
            .map_or(upstream.read_timeout, Duration::from_millis);
        let hop = HopHeaders {
            client: dispatch.remote.ip(),
            forwarded_host: self.original_host.clone(),
            host: match upstream.pass_host {
                PassHost::Pass => self.original_host.clone(),
                PassHost::Node => Some(node.host_header.clone()),
                PassHost::Rewrite => upstream.upstream_host.clone(),
            },
            // A sub-request is the gateway's own, over plain HTTP.
            https: false,
        };
        let head = h1::WrittenHead {
            method,
            target,
            headers,
            hop: &hop,
        };
        let result = h1::send_head(
            &node.connections,
            limits,
            node.authority.as_str(),
            head,
            HeadForm::Ignored,
            connect_timeout,
            read_timeout,
        )
        .await;
        dispatch
            .proxy
            .record_sent(upstream, node, started.elapsed(), &result, dispatch.notes);
        let mut response = result?;
        // Until the body ends: `least_requests` and `ewma` see it.
        response.body_mut().hold(in_flight);
        Ok(response)
    }
}

/// Reads an upstream body into memory, refusing one larger than `max` bytes. A node that
/// stops sending mid-body for its read timeout is a timeout (504), as one that never answers
/// is; any other broken body is a 502.
async fn read_capped<B>(body: B, max: usize) -> Result<Bytes, Failure>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match read_whole(Limited::new(body, max)).await {
        Ok(whole) => Ok(whole),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(Failure::new(
            StatusCode::BAD_GATEWAY,
            format!("the upstream's answer exceeds this batch's limit of {max} bytes"),
        )),
        Err(error) if is_timeout(error.as_ref()) => Err(Failure::timeout(
            "the upstream stopped sending its answer for longer than its read timeout",
        )),
        Err(_) => Err(Failure::new(
            StatusCode::BAD_GATEWAY,
            "reading the upstream's answer failed",
        )),
    }
}

/// Reads `body` whole. An answer in one chunk (a small one usually is: the connection's read
/// buffer holds it whole) is that chunk as it is, without the list `collect` would allocate.
async fn read_whole<B: Body<Data = Bytes>>(body: B) -> Result<Bytes, B::Error> {
    let mut body = std::pin::pin!(body);
    let mut first = Bytes::new();
    let mut more: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await {
        // Trailers are not part of the answer.
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        match &mut more {
            Some(more) => more.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut joined = bytes::BytesMut::with_capacity(first.len() + data.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                more = Some(joined);
            }
        }
    }
    Ok(more.map_or(first, bytes::BytesMut::freeze))
}

/// Whether `error`, or an error it wraps, is an I/O timeout: the upstream bodies report a
/// read timeout as [`std::io::ErrorKind::TimedOut`], possibly boxed by the body adapters.
fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = error.source();
    }
    false
}

/// A JSON body as JSON (its checked bytes if `keep_raw`, else parsed); anything else as a
/// string (lossily decoded); nothing as `null`.
fn parse_body(body: Bytes, keep_raw: bool) -> Answer {
    if body.is_empty() {
        return Answer::Value(Value::Null);
    }
    // UTF-8 checked once for the whole body: from bytes, serde_json checks every string on
    // its own (callgrind: 2% of a 3-way batch). JSON is UTF-8, so other bodies are strings.
    if let Ok(text) = std::str::from_utf8(&body) {
        if keep_raw {
            // Checked whatever the `Content-Type` says: a node that lies must not break the
            // merged document for every other answer in it (see `json`).
            if let Some(json) = json::document(text) {
                return Answer::Raw(body.slice_ref(json.as_bytes()));
            }
        } else if let Ok(value) = serde_json::from_str(text) {
            return Answer::Value(value);
        }
    }
    Answer::Value(Value::String(String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests;
