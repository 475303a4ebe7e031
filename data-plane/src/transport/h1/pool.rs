//! The idle keep-alive connections to one node, and the connection they hold.

use std::io;
use std::pin::{Pin, pin};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt as _, Interest};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::codec::Span;
use crate::transport::deadline::IdleDeadline;
use crate::transport::{Hold, TCP_KEEPALIVE};

/// Bytes asked of the socket per read: a small API answer, head and body, fits in one.
pub(super) const READ_SIZE: usize = 8 * 1024;

/// How many idle connections a node keeps, and for how long: the upstream's `keepalive_pool`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    /// Idle connections kept per node.
    pub size: usize,
    /// An idle connection older than this is closed instead of used.
    pub idle_timeout: Duration,
}

impl PoolLimits {
    pub(super) fn idle_timeout_ms(&self) -> u64 {
        u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX)
    }
}

/// The idle keep-alive connections to one node, oldest first. Shared across config snapshots
/// with the rest of the node's state.
#[derive(Debug, Default)]
pub struct Pool {
    pub(super) idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
pub(super) struct Idle {
    pub(super) conn: Box<Conn>,
    /// When it was put back ([`crate::clock::coarse_now_ms`]).
    pub(super) since_ms: u64,
}

/// One connection and what has been read from it but not used yet.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) read: BytesMut,
    pub(super) write: Vec<u8>,
    /// Scratch space for [`parse_head`].
    pub(super) spans: Vec<Span>,
    /// Served a request before: a failure before the first response byte may just mean the node
    /// closed it while it sat in the pool.
    pub(super) reused: bool,
    /// The response-head deadline's timer, kept with the connection and moved only when it
    /// fires before the current exchange's deadline (or is later than it): registering a timer
    /// per request was a measurable share of a proxied request's cost. While the connection is
    /// idle it may fire and wake the task that last used it, which then finds nothing to do.
    pub(super) timer: Option<Pin<Box<Sleep>>>,
    /// The current response body's read deadline, and its node's in-flight count, held until
    /// the body ends (here rather than in the body, which moves with every response and
    /// should stay small; the count is dropped before the connection is pooled).
    pub(super) idle: IdleDeadline,
    pub(super) in_flight: Option<Hold>,
}

impl Pool {
    /// The newest idle connection that is still usable, if any.
    pub(super) fn checkout(&self, limits: PoolLimits) -> Option<Box<Conn>> {
        let now = crate::clock::coarse_now_ms();
        let idle_timeout = limits.idle_timeout_ms();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = idle.pop() {
            if now.saturating_sub(entry.since_ms) > idle_timeout {
                // Every connection below this one has been idle longer still.
                idle.clear();
                return None;
            }
            if entry.conn.is_quiet() {
                let mut conn = entry.conn;
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next request, unless the pool is full.
    pub(super) fn checkin(&self, conn: Box<Conn>, limits: PoolLimits) {
        let now = crate::clock::coarse_now_ms();
        let idle_timeout = limits.idle_timeout_ms();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let expired = idle
            .iter()
            .take_while(|e| now.saturating_sub(e.since_ms) > idle_timeout)
            .count();
        idle.drain(..expired);
        if idle.len() < limits.size {
            idle.push(Idle {
                conn,
                since_ms: now,
            });
        }
    }

    /// Idle connections held now.
    #[cfg(test)]
    pub(super) fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Conn {
    /// A new connection, boxed: it moves between the pool and response bodies, which stay small.
    pub(super) async fn connect(address: &str) -> io::Result<Box<Conn>> {
        let stream = TcpStream::connect(address).await?;
        // Small requests must not wait for Nagle's algorithm.
        stream.set_nodelay(true)?;
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive)?;
        Ok(Box::new(Conn {
            stream,
            read: BytesMut::new(),
            write: Vec::new(),
            spans: Vec::new(),
            reused: false,
            timer: None,
            idle: IdleDeadline::new(Duration::ZERO),
            in_flight: None,
        }))
    }

    /// Whether an idle connection has stayed silent: no bytes, no end of stream, as far as
    /// the readiness epoll last reported for it says (no syscall).
    ///
    /// Why `try_io` and not `poll_read_ready`: the latter registers the waker it is given
    /// when the socket is not ready (a no-op one here), under the socket's lock and with the
    /// task's budget consulted, and the exchange registers its own right after; `try_io`
    /// only reads the readiness, and runs the closure (which does nothing) when it is set.
    pub(super) fn is_quiet(&self) -> bool {
        self.read.is_empty() && self.stream.try_io(Interest::READABLE, || Ok(())).is_err()
    }

    /// Reads more bytes into the buffer; `Ok(0)` is the end of the stream.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.stream, &mut self.read, cx)
    }
}

/// Reads more bytes from `reader` into `read`; `Ok(0)` is the end of the stream.
pub(super) fn poll_fill(
    reader: &mut (impl AsyncRead + Unpin),
    read: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < READ_SIZE / 4 {
        read.reserve(READ_SIZE);
    }
    // The future is stateless between polls, so a fresh one per poll is the same read.
    pin!(reader.read_buf(read)).poll(cx)
}
