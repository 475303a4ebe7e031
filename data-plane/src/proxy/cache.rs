//! A chain's cache (`proxy-cache`) on the request path: asked once the request phases let a
//! request through, it answers (the answer then goes through the response phases like a
//! refusal: the route's target never sees it) or lets the request go upstream; the target's
//! answer is then handed to it, to be marked, stored as its body streams, or replaced by a
//! stale entry when the target failed. A chain without a cache pays one branch.

use http::{Response, request};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Either};

use super::ProxyBody;
use super::filtered::FilteredBody;
use crate::error::{Origin, ProxyError};
use crate::plugins::proxy_cache::{Fetch, Lookup};
use crate::plugins::{Reject, RequestCtx};

/// Asks the chain's cache about a request the request phases let through (`phases`):
/// `Err` with a cached answer (or a `PURGE`'s) to send instead, or the [`Fetch`] that the
/// target's answer goes to.
pub(super) async fn lookup(
    ctx: &RequestCtx<'_>,
    parts: &request::Parts,
    phases: Result<(), Reject>,
) -> (Result<(), Reject>, Option<Fetch>) {
    let (Ok(()), Some(plugin)) = (&phases, ctx.cache()) else {
        return (phases, None);
    };
    let Some(cache) = plugin.cache() else {
        return (phases, None);
    };
    match cache.lookup(parts).await {
        Lookup::Answer(answer) => (Err(answer), None),
        Lookup::Fetch(fetch) => (Ok(()), Some(fetch)),
    }
}

/// Hands the target's answer (or failure) to the cache that let the request through: a
/// failure or a 5xx becomes the stale entry's answer if there is one within its window; an
/// answer is marked, and its body streams through the filter that stores it if it may be.
pub(super) fn complete(
    fetch: Option<Fetch>,
    result: Result<Response<ProxyBody>, ProxyError>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Some(mut fetch) = fetch else {
        return result;
    };
    let failed = match &result {
        Ok(response) => response.status().is_server_error(),
        Err(error) => error.origin() == Origin::Upstream,
    };
    if failed && let Some(stale) = fetch.stale() {
        return Ok(stale.map(Either::Right));
    }
    let mut response = result?;
    let status = response.status();
    let Some(filter) = fetch.admit(status, response.headers_mut()) else {
        return Ok(response);
    };
    Ok(response.map(|body| {
        let captured = FilteredBody::new(body, vec![filter]);
        let captured = BoxBody::new(captured.map_err(std::io::Error::other));
        Either::Left(Either::Left(Either::Right(captured)))
    }))
}
