//! The response body phase on the wire: an answer's body passed through the plugins' body
//! filters chunk by chunk as the client is sent it, never buffered whole.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use crate::error::BoxError;
use crate::plugins::BodyFilter;

/// An answer's body through the body filters of its plugins, in chain order: each chunk goes
/// through every filter; when the body ends, or a filter wants no more of it, each filter's
/// last words go through the filters after it.
pub struct FilteredBody<B> {
    /// `None` once it is no longer read.
    inner: Option<B>,
    filters: Vec<Box<dyn BodyFilter>>,
    /// Every filter has had its `end`.
    done: bool,
}

impl<B> FilteredBody<B> {
    /// `inner` through `filters`.
    pub fn new(inner: B, filters: Vec<Box<dyn BodyFilter>>) -> FilteredBody<B> {
        FilteredBody {
            inner: Some(inner),
            filters,
            done: false,
        }
    }

    /// `chunk` through the filters from `first` on.
    fn pass(&mut self, first: usize, mut chunk: Bytes) -> Bytes {
        for filter in self.filters.iter_mut().skip(first) {
            chunk = filter.chunk(chunk);
        }
        chunk
    }

    /// The filters' last words, each through the filters after it.
    fn finish(&mut self) -> Bytes {
        self.inner = None;
        self.done = true;
        let mut out = BytesMut::new();
        for i in 0..self.filters.len() {
            let last = self.filters[i].end();
            out.extend_from_slice(&self.pass(i + 1, last));
        }
        out.freeze()
    }
}

impl<B> Body for FilteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let wanted = this.filters.iter().all(|f| f.wants_body());
            let next = match this.inner.as_mut() {
                Some(inner) if wanted => ready!(Pin::new(inner).poll_frame(cx)),
                // Not read any further: dropping it closes a node's connection.
                _ => None,
            };
            let chunk = match next {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.pass(0, data),
                    // Trailers go on as they are.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
                None => this.finish(),
            };
            if !chunk.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.filters.last().and_then(|f| f.length()) {
            Some(length) if !self.done => SizeHint::with_exact(length),
            _ if self.done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use futures_util::FutureExt as _;
    use http_body_util::BodyExt as _;

    use super::*;

    /// Upper-cases each chunk as it passes, and ends with the sizes it saw.
    struct Upper {
        seen: Vec<usize>,
    }

    impl BodyFilter for Upper {
        fn chunk(&mut self, chunk: Bytes) -> Bytes {
            self.seen.push(chunk.len());
            Bytes::from(chunk.to_ascii_uppercase())
        }

        fn end(&mut self) -> Bytes {
            Bytes::from(format!("|{:?}", self.seen))
        }
    }

    /// A body whose chunks are released one at a time (`None`: not ready yet).
    struct Trickle(VecDeque<Option<&'static [u8]>>);

    impl Body for Trickle {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.0.pop_front() {
                Some(Some(chunk)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(chunk))))),
                Some(None) => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    #[test]
    fn the_body_phase_sees_each_chunk_as_it_streams() {
        let trickle = Trickle(VecDeque::from([
            Some(&b"ab"[..]),
            None,
            Some(&b"cd"[..]),
            None,
            Some(&b"e"[..]),
        ]));
        let mut filtered = FilteredBody::new(trickle, vec![Box::new(Upper { seen: Vec::new() })]);
        let mut next = || {
            filtered
                .frame()
                .now_or_never()
                .map(|frame| frame.map(|f| f.unwrap().into_data().unwrap()))
        };
        // Each chunk reaches the client before the next one exists: nothing is held back.
        assert_eq!(next(), Some(Some(Bytes::from_static(b"AB"))));
        assert_eq!(next(), None);
        assert_eq!(next(), Some(Some(Bytes::from_static(b"CD"))));
        assert_eq!(next(), None);
        assert_eq!(next(), Some(Some(Bytes::from_static(b"E"))));
        assert_eq!(next(), Some(Some(Bytes::from_static(b"|[2, 2, 1]"))));
        assert_eq!(next(), Some(None));
    }

    /// Wants nothing of the body: sends `replacement` instead.
    struct Replace(Option<Bytes>);

    impl BodyFilter for Replace {
        fn end(&mut self) -> Bytes {
            self.0.take().unwrap_or_default()
        }

        fn wants_body(&self) -> bool {
            false
        }

        fn length(&self) -> Option<u64> {
            self.0.as_ref().map(|b| b.len() as u64)
        }
    }

    #[test]
    fn a_filter_that_wants_no_body_is_answered_without_reading_it() {
        // A body that never becomes ready: the answer must not wait for it.
        let stalled = Trickle(VecDeque::from([None, None, None]));
        let filters: Vec<Box<dyn BodyFilter>> = vec![
            Box::new(Replace(Some(Bytes::from_static(b"new")))),
            Box::new(Upper { seen: Vec::new() }),
        ];
        let filtered = FilteredBody::new(stalled, filters);
        let collected = filtered.collect().now_or_never().unwrap().unwrap();
        // The later filter sees the earlier one's last words as a chunk, then ends itself.
        assert_eq!(collected.to_bytes(), "NEW|[3]");
    }
}
