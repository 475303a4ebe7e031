//! A response body read straight from the node's connection, and the read deadline it keeps.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::codec::{Decoded, Framing, PassedHead};
use super::pool::{Conn, Pool, PoolLimits};
use crate::transport::Hold;

/// A response body read straight from the node's connection.
#[derive(Debug)]
pub struct ResponseBody {
    /// `None` once the body is complete (the connection went back to the pool or was closed).
    pub(super) conn: Option<Box<Conn>>,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
    pub(super) home: Arc<Pool>,
    pub(super) limits: PoolLimits,
    /// The response's headers, when the caller asked for [`HeadForm::Passed`].
    pub(super) passed: Option<Box<PassedHead>>,
}

impl ResponseBody {
    /// Keeps the node counted as busy with this exchange until the body ends (or is dropped).
    pub fn hold(&mut self, in_flight: Hold) {
        if let Some(conn) = &mut self.conn {
            conn.in_flight = Some(in_flight);
        }
    }

    /// The headers kept as the node sent them, if the exchange was asked for that form and
    /// they have not been taken yet.
    pub fn take_passed_head(&mut self) -> Option<Box<PassedHead>> {
        self.passed.take()
    }

    /// The body is complete: the connection goes back to the pool if it can carry another
    /// exchange (keep-alive, and nothing unread beyond this response).
    pub(super) fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(mut conn) = self.conn.take()
            && self.keep_alive
            && conn.read.is_empty()
        {
            conn.in_flight = None;
            self.home.checkin(conn, self.limits);
        }
    }

    pub(super) fn fail(
        &mut self,
        error: io::Error,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.framing = Framing::Done;
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) if !conn.read.is_empty() => {
                    let take = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(conn.read.len());
                    let data = conn.read.split_to(take).freeze();
                    *left -= take as u64;
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::UntilClose if !conn.read.is_empty() => {
                    let data = conn.read.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(decoder) => match decoder.decode(&mut conn.read) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(reason) => {
                        return this.fail(io::Error::new(io::ErrorKind::InvalidData, reason));
                    }
                },
                Framing::Length(_) | Framing::UntilClose => {}
            }
            let filled = match conn.poll_fill(cx) {
                Poll::Ready(filled) => filled,
                Poll::Pending => {
                    ready!(conn.idle.poll_expired(&mut conn.timer, cx));
                    let silence = conn.idle.read_timeout;
                    return this.fail(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the node sent nothing of the body for {silence:?}"),
                    ));
                }
            };
            match filled {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.framing = Framing::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the node closed the connection before the body ended",
                    ));
                }
                Ok(_) => conn.idle.progressed(),
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
