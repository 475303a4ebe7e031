//! Hedged requests: an idempotent request whose body is empty or held whole, not answered by
//! its node within the hedge delay, is sent to another node as well (up to `max_extra`
//! times, one delay apart); the first good answer wins and the other attempts are dropped.
//!
//! - "Good" is what the retry rules do not call a failure: any answer but 502, 503 or 504,
//!   and no connect error or timeout. A failed attempt does not win while another runs; when
//!   the last running attempt fails, the retry policy decides as it does unhedged (another
//!   node not tried yet, if the failure is one it names and its count allows), else that
//!   failure is the client's answer.
//! - Each hedge takes a token from the upstream's retry budget; with none left the hedge is
//!   skipped (`skipped_budget`) and the request waits for what it has.
//! - A hedge goes to the balancer's next pick among the nodes not tried yet, the same node
//!   only when there is no other.
//! - A dropped attempt takes its connection with it: `h1` returns a connection to its pool only
//!   from a response body read to its end, and an attempt dropped before its head never made
//!   one (hyper's HTTP/1 client closes a connection whose response was given up; HTTP/2 resets
//!   the stream). Its client span ends marked `gateway.hedge.cancelled`.
//!
//! Off the plain path: `send_upstream` hands a hedged request here, boxed, so requests without
//! hedging keep their future's size.

use std::future::poll_fn;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use gateway_proto::model::{Hedge, Retries};
use http::Response;
use http_body_util::{Either, Full};
use tracing::debug;

use super::super::access_log::Notes;
use super::super::trace::{ClientSpan, Parent};
use super::super::{Proxy, ProxyBody};
use super::{Failure, Prepared, build, first_node};
use crate::error::ProxyError;
use crate::runtime::hedge::{HedgeOutcome, delay};
use crate::runtime::{CompiledRoute, UpstreamRuntime};
use crate::transport::Hold;
use crate::transport::body::{UpstreamResponseBody, empty_body, hold_in_flight};
use crate::transport::deadline;
use crate::transport::h1::HeadForm;

/// Everything a hedged request needs, taken apart by `send_upstream`.
pub(super) struct Plan<'a> {
    pub(super) route: &'a CompiledRoute,
    pub(super) upstream: &'a UpstreamRuntime,
    pub(super) hedge: &'a Hedge,
    pub(super) retries: Option<&'a Retries>,
    pub(super) prepared: Prepared,
    /// The body held whole; `None`: no body.
    pub(super) body: Option<Full<Bytes>>,
    pub(super) key: Option<u64>,
    pub(super) form: HeadForm,
    pub(super) connect_timeout: Duration,
    pub(super) read_timeout: Duration,
    pub(super) notes: Option<&'a Notes>,
    pub(super) trace: Option<Parent<'a>>,
    pub(super) started: Instant,
}

/// An attempt under way: what outlives its exchange's future.
struct Attempt {
    /// The node's index in the upstream.
    index: usize,
    /// Sent as a hedge (not the first attempt, nor a retry of a failed one).
    hedge: bool,
    started: Instant,
    in_flight: Hold,
    span: Option<Box<ClientSpan>>,
}

/// What woke the hedged request up.
enum Event {
    /// Attempt `slot` has its answer (or its failure).
    Answered(usize, Result<Response<UpstreamResponseBody>, ProxyError>),
    /// The hedge delay passed.
    Delay,
}

impl Proxy {
    /// Sends a hedged request (see the module's comment).
    pub(super) async fn send_hedged(
        &self,
        plan: Plan<'_>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Plan {
            route,
            upstream,
            hedge,
            retries,
            mut prepared,
            body,
            key,
            form,
            connect_timeout,
            read_timeout,
            notes,
            trace,
            started,
        } = plan;
        let mut attempts: Vec<Option<Attempt>> = Vec::with_capacity(1 + hedge.max_extra as usize);
        let mut running = FuturesUnordered::new();
        let mut tried: Vec<usize> = Vec::new();
        let mut launch = |index: usize,
                          hedge: bool,
                          started: Instant,
                          attempts: &mut Vec<Option<Attempt>>,
                          tried: &mut Vec<usize>|
         -> Result<_, ProxyError> {
            let node = &upstream.nodes[index];
            let slot = attempts.len();
            let span = trace.map(|parent| {
                parent.client_span(&prepared.method, &node.authority, tried.len(), hedge)
            });
            let body = body.clone().map_or_else(empty_body, Either::Right);
            let mut request = build(&mut prepared, true, upstream, node, body)?;
            if let Some(span) = &span {
                span.inject(request.headers_mut());
            }
            // Each attempt its own hop headers: `Host` may differ per node.
            let hop = prepared.hop.clone();
            attempts.push(Some(Attempt {
                index,
                hedge,
                started,
                in_flight: node.load.start(),
                span,
            }));
            tried.push(index);
            Ok(async move {
                let result = upstream
                    .client
                    .send(
                        request,
                        Some(&hop),
                        node.authority.as_str(),
                        &node.connections,
                        form,
                        connect_timeout,
                        read_timeout,
                    )
                    .await;
                (slot, result)
            })
        };

        let first = first_node(upstream, key)?;
        running.push(launch(first, false, started, &mut attempts, &mut tried)?);
        let wait = delay(hedge, &upstream.nodes[first]);
        let mut timer = pin!(deadline::timer(deadline::after(wait)));
        let mut hedges_left = hedge.max_extra;
        let mut retries_left = retries.map_or(0, |r| r.count);

        loop {
            let event = poll_fn(|cx| {
                if let Poll::Ready(Some((slot, result))) = running.poll_next_unpin(cx) {
                    return Poll::Ready(Event::Answered(slot, result));
                }
                if hedges_left > 0 && timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Delay);
                }
                Poll::Pending
            })
            .await;
            let (slot, result) = match event {
                Event::Delay => {
                    hedges_left -= 1;
                    // Another node while one is left untried, else the same one again.
                    let next = upstream
                        .pick_index(key, |i| tried.contains(&i))
                        .or_else(|| upstream.pick_index(key, |_| false));
                    match next {
                        Some(next) if upstream.budget.try_retry() => {
                            debug!(upstream = %upstream.key, node = %upstream.nodes[next].authority, "hedging");
                            let now = Instant::now();
                            running.push(launch(next, true, now, &mut attempts, &mut tried)?);
                            timer.as_mut().reset(deadline::after(wait));
                        }
                        Some(_) => {
                            upstream.hedges.record(HedgeOutcome::SkippedBudget);
                            hedges_left = 0;
                        }
                        None => hedges_left = 0,
                    }
                    continue;
                }
                Event::Answered(slot, result) => (slot, result),
            };
            let Some(attempt) = attempts.get_mut(slot).and_then(Option::take) else {
                return Err(ProxyError::Internal(
                    "a hedged attempt answered twice".to_owned(),
                ));
            };
            let node = &upstream.nodes[attempt.index];
            if let Some(span) = attempt.span {
                span.finish(&result);
            }
            let failure =
                self.record_attempt(upstream, node, attempt.started.elapsed(), &result, notes);
            let node_failed = failure.is_some_and(|f| f != Failure::Client);

            if node_failed {
                if attempt.hedge {
                    upstream.hedges.record(HedgeOutcome::Lost);
                }
                if !running.is_empty() {
                    // Another attempt may still answer well: this failure is not the answer.
                    continue;
                }
                let may_retry = retries.is_some_and(|policy| {
                    failure.is_some_and(|f| f.allows_retry(policy)) && retries_left > 0
                });
                if may_retry
                    && let Some(next) = upstream.pick_index(key, |i| tried.contains(&i))
                    && upstream.budget.try_retry()
                {
                    retries_left -= 1;
                    self.state.metrics.record_retry();
                    let now = Instant::now();
                    running.push(launch(next, false, now, &mut attempts, &mut tried)?);
                    continue;
                }
            }

            // This answer is the client's: every other attempt is dropped with its connection.
            drop(running);
            for loser in attempts.into_iter().flatten() {
                if loser.hedge {
                    upstream.hedges.record(HedgeOutcome::Lost);
                }
                // What it waited is a lower bound of its latency (see `runtime::hedge`).
                upstream.nodes[loser.index]
                    .latency
                    .observe(loser.started.elapsed());
                if let Some(span) = loser.span {
                    span.cancelled();
                }
            }
            if attempt.hedge && !node_failed {
                upstream.hedges.record(HedgeOutcome::Won);
            }
            let mut response = result?;
            debug!(route = %route.id, node = %node.authority, status = %response.status(), hedges = tried.len() - 1, "proxied");
            hold_in_flight(response.body_mut(), attempt.in_flight);
            return Ok(response.map(Either::Left));
        }
    }
}
