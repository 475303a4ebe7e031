//! The request body phase on the wire: on a chain with a plugin that reads request bodies
//! (`request-validation`), the body is read whole after the request phases, within the
//! chain's bound and a deadline, handed to the plugins, and forwarded unchanged as one
//! buffer. Every other request's body streams as before: this costs them one branch.

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{StatusCode, request};
use http_body_util::{BodyExt as _, Either, Full, Limited};

use crate::error::json_response;
use crate::plugins::{Reject, RequestCtx};
use crate::transport::body::UpstreamBody;
use crate::transport::deadline;

/// How long a client may take to send a body the phase reads: a client trickling it must not
/// hold the request (and its memory) open.
const READ_DEADLINE: Duration = Duration::from_secs(30);

/// Runs the request body phase if the chain in force has one (and the request phases let the
/// request through); returns the outcome and the body to forward.
pub(super) async fn phase(
    ctx: &mut RequestCtx<'_>,
    parts: &request::Parts,
    body: UpstreamBody,
    phases: Result<(), Reject>,
) -> (Result<(), Reject>, UpstreamBody) {
    let (Ok(()), Some(limit)) = (&phases, ctx.request_body_limit()) else {
        return (phases, body);
    };
    let bytes = match read(parts, body, limit).await {
        Ok(bytes) => bytes,
        Err(refusal) => return (Err(refusal), Either::Right(Full::new(Bytes::new()))),
    };
    let outcome = ctx.run_request_body_phase(parts, &bytes);
    (outcome, Either::Right(Full::new(bytes)))
}

/// Reads `body` whole: 413 beyond `limit` (at once when `Content-Length` says so), 408 past
/// the deadline, 400 when the client's body breaks off.
async fn read(parts: &request::Parts, body: UpstreamBody, limit: u64) -> Result<Bytes, Reject> {
    let too_large = || {
        json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("the request body exceeds this route's limit of {limit} bytes"),
        )
    };
    let announced = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let read = Limited::new(body, limit).collect();
    match deadline::within(deadline::after(READ_DEADLINE), read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(json_response(
            StatusCode::BAD_REQUEST,
            "bad_request_body",
            "the request body could not be read",
        )),
        Err(_) => Err(json_response(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive in time",
        )),
    }
}
