//! The bodies that cross the transport: a request body sent upstream, and a node's response
//! body from either client, each holding the node busy ([`Hold`]) until it ends.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::Hold;
use super::deadline;
use super::h1;

/// The body of a request sent upstream: the client's body streamed through, or one the gateway
/// holds whole (an absent body, which can be sent again on a retry).
pub type UpstreamBody = Either<Incoming, Full<Bytes>>;

/// A response body streamed to the client: a node's, from hyper's client (boxed: the plain
/// path's responses, which move a few times, stay small) or from [`h1`] (one level deep, for
/// the plain path), or any other body the caller made of one, boxed ([`BoxedBody`]).
pub type UpstreamResponseBody = Either<Either<Box<HyperBody>, BoxedBody>, h1::ResponseBody>;

/// Any other streamed body, boxed (an answer passed through a filter of the caller's).
pub type BoxedBody = BoxBody<Bytes, std::io::Error>;

/// Keeps the node counted as busy with an exchange until its response body ends.
pub fn hold_in_flight(body: &mut UpstreamResponseBody, in_flight: Hold) {
    match body {
        Either::Left(Either::Left(body)) => body.hold(in_flight),
        // Not a node's: nothing to hold, the count ends here.
        Either::Left(Either::Right(_)) => {}
        Either::Right(body) => body.hold(in_flight),
    }
}

/// A response body from hyper's client, under the rules [`h1::ResponseBody`] follows: the node
/// must send something every `read_timeout`, and the node's in-flight count is held until the
/// body ends.
#[derive(Debug)]
pub struct HyperBody {
    inner: Incoming,
    idle: deadline::IdleDeadline,
    timer: Option<Pin<Box<Sleep>>>,
    in_flight: Option<Hold>,
}

impl HyperBody {
    pub(super) fn new(inner: Incoming, read_timeout: Duration) -> HyperBody {
        HyperBody {
            inner,
            idle: deadline::IdleDeadline::new(read_timeout),
            timer: None,
            in_flight: None,
        }
    }

    pub(super) fn hold(&mut self, in_flight: Hold) {
        if !self.inner.is_end_stream() {
            self.in_flight = Some(in_flight);
        }
    }
}

impl Body for HyperBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progressed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(end_or_error) => {
                this.in_flight = None;
                Poll::Ready(end_or_error.map(|r| r.map_err(std::io::Error::other)))
            }
            Poll::Pending => {
                ready!(this.idle.poll_expired(&mut this.timer, cx));
                this.in_flight = None;
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the node sent nothing of the body for its read timeout",
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An empty upstream request body.
pub fn empty_body() -> UpstreamBody {
    Either::Right(Full::new(Bytes::new()))
}
