//! The proxy listener's connections. HTTP/1.1 requests without a body are read, routed and
//! answered in the connection's own task; a connection that needs more is handed, with the
//! bytes already read, to hyper's server for the rest of its life.
//!
//! Why: once upstream exchanges ran on [`crate::transport::h1`], hyper's server was about 45% of the
//! gateway's instructions per proxied request (callgrind): a dispatcher state machine, a
//! request built and a response re-encoded through several layers, a timer per request. Most
//! API traffic is bodiless reads, so this path parses the head with httparse, calls
//! [`Proxy::handle`], and writes head and body with one write when the body is ready.
//!
//! Handed to hyper: a request with a body (`Content-Length` other than 0, or
//! `Transfer-Encoding`), `Expect`, `Upgrade` (WebSocket), `CONNECT`, and HTTP/2 with prior
//! knowledge (h2c).
//!
//! Limits: a request head must arrive within [`HEADER_READ_TIMEOUT`] (else 408, or a quiet
//! close for an idle keep-alive connection) and fit in 64 KiB with at most 100 header lines
//! (else 431). The deadline costs no timer registration per request: the connection's one
//! timer is moved only when it fires before the current deadline.

use std::cell::RefCell;
use std::convert::Infallible;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::header::{
    CONNECTION, CONTENT_LENGTH, DATE, EXPECT, HOST, HeaderMap, HeaderName, HeaderValue,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt as _, Either};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::{Proxy, ProxyBody};
use crate::error::json_response;
use crate::transport::body::{UpstreamBody, empty_body};
use crate::transport::deadline;
use crate::transport::h1::{HeadForm, PassedHead};
use crate::transport::headers::{eq_lowercase, put_header};
use crate::transport::server::{HEADER_READ_TIMEOUT, Stop, serve_hyper};
use crate::transport::tls::Tls;

/// A request head larger than this is refused with 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header lines per request head (hyper's default).
const MAX_HEADERS: usize = 100;
/// Room in a request's map for headers added on its way upstream: by plugins, and the hop's
/// own (`X-Forwarded-*`, `Host`) when hyper's client sends it (the h1 client writes those
/// straight into the head).
const FORWARDING_HEADERS: usize = 4;
/// [`HEADER_READ_TIMEOUT`] in the clock's unit.
const HEADER_READ_TIMEOUT_MS: u64 = HEADER_READ_TIMEOUT.as_secs() * 1000;
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 8 * 1024;
/// Response bytes gathered before a write while the body keeps coming.
const WRITE_BATCH: usize = 64 * 1024;
/// How long a client may leave a response write unaccepted (nginx's `send_timeout`): a client
/// that stops reading would otherwise hold its connection, the node's connection and the
/// node's in-flight count, and delay shutdown, for as long as it likes.
const SEND_TIMEOUT: Duration = if cfg!(test) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(60)
};
/// How long a closing connection waits for the client to close its side ([`Connection::linger`]).
const LINGER_TIME: Duration = Duration::from_secs(2);
/// How much a closing connection reads from the client before it gives up waiting.
const LINGER_BYTES: usize = 64 * 1024;
/// How an HTTP/2 client with prior knowledge opens a connection.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one client connection until it closes, fails, or `stop` asks for the end.
pub async fn serve_connection(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    remote: SocketAddr,
    stop: Stop,
) {
    serve_stream(proxy, stream, remote, stop, false).await;
}

/// [`serve_connection`] over any byte stream: the plaintext listener's sockets, and the TLS
/// listener's decrypted streams (`tls`: every request is marked with
/// [`crate::transport::tls::Tls`]). HTTP/2 negotiated by ALPN starts with the h2 preface,
/// which hands the connection to hyper's server as h2c's does.
pub async fn serve_stream<S>(
    proxy: Arc<Proxy>,
    stream: S,
    remote: SocketAddr,
    stop: Stop,
    tls: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // One shutdown watch for the connection's life: a fresh one per request head registered
    // and unregistered a waiter every time (callgrind: 1.5% of a proxied request).
    let mut stopping = pin!(stop.clone().into_requested());
    let mut conn = Connection {
        stream,
        read: BytesMut::with_capacity(READ_SIZE),
        write: Vec::with_capacity(READ_SIZE),
        spans: Vec::new(),
        sent: 0,
        deadline_ms: 0,
        timer: Box::pin(deadline::timer(deadline::after(HEADER_READ_TIMEOUT))),
        timer_polled: false,
        stop_polled: false,
    };
    loop {
        match conn.read_head(stopping.as_mut(), &stop).await {
            Next::Request {
                mut request,
                keep_alive,
            } => {
                if tls {
                    request.extensions_mut().insert(Tls);
                }
                let head_request = request.method() == Method::HEAD;
                let http10 = request.version() == Version::HTTP_10;
                let (response, logged) = proxy.handle(remote, request, HeadForm::Passed).await;
                let keep_alive = keep_alive && !stop.is_requested();
                let responded = conn
                    .respond(response, head_request, http10, keep_alive)
                    .await;
                if let Some(logged) = logged {
                    logged.finish(conn.sent);
                }
                match responded {
                    Ok(true) => {}
                    Ok(false) => return conn.linger().await,
                    Err(error) => {
                        debug!(%remote, %error, "writing the response failed");
                        return;
                    }
                }
            }
            Next::HandOff => return hand_off(proxy, conn, remote, stop, tls).await,
            Next::Refuse(status, message) => {
                let code = match status {
                    StatusCode::REQUEST_TIMEOUT => "request_timeout",
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
                    _ => "bad_request",
                };
                let response = json_response(status, code, message);
                let logged = proxy.log_refusal::<UpstreamBody>(remote, None, status);
                let responded = conn.respond(response, false, false, false).await;
                if let Some(logged) = logged {
                    logged.finish(conn.sent);
                }
                if responded.is_ok() {
                    conn.linger().await;
                }
                return;
            }
            Next::Closed => return,
        }
    }
}

/// What the connection does next.
#[expect(
    clippy::large_enum_variant,
    reason = "a request is the common case, moved once; boxing it costs an allocation per request"
)]
enum Next {
    /// Serve this request, then close unless `keep_alive`.
    Request {
        request: Request<crate::transport::body::UpstreamBody>,
        keep_alive: bool,
    },
    /// hyper serves the connection from here on.
    HandOff,
    /// Answer with this error and close.
    Refuse(StatusCode, &'static str),
    /// The client left, was idle too long, or the listener is stopping.
    Closed,
}

struct Connection<S> {
    stream: S,
    read: BytesMut,
    write: Vec<u8>,
    /// Scratch space for [`parse_request`], kept so a request costs no allocation for it.
    spans: Vec<(HeaderName, usize, usize)>,
    /// Body bytes of the last response written (so far, if its write failed).
    sent: u64,
    /// When the head being waited for must be complete ([`crate::clock::coarse_now_ms`]: a
    /// request costs no precise clock read for a deadline of seconds).
    deadline_ms: u64,
    /// Fires at or before `deadline_ms`.
    timer: Pin<Box<Sleep>>,
    /// Whether `timer` has been polled since it was armed: it then holds this task's waker,
    /// and is polled again only once it has fired ([`Connection::read_head`]).
    timer_polled: bool,
    /// Whether the shutdown watch has been polled: it then holds this task's waker, and is
    /// polled again only once shutdown is requested.
    stop_polled: bool,
}

/// What woke a connection waiting for a request head.
enum Woken {
    Read(io::Result<usize>),
    Timer,
    Stopping,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Waits for the next request head and parses it; `stopping` completes on shutdown, which
    /// `stop` tells.
    async fn read_head(
        &mut self,
        mut stopping: Pin<&mut impl Future<Output = ()>>,
        stop: &Stop,
    ) -> Next {
        self.deadline_ms = crate::clock::coarse_now_ms() + HEADER_READ_TIMEOUT_MS;
        loop {
            if !self.read.is_empty() {
                match parse_request(&mut self.read, &mut self.spans) {
                    Ok(Some(next)) => return next,
                    Ok(None) if self.read.len() >= MAX_HEAD_BYTES => {
                        return Next::Refuse(
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "the request head is too large",
                        );
                    }
                    Ok(None) => {}
                    Err(refusal) => return refusal,
                }
            }
            if self.read.capacity() - self.read.len() < READ_SIZE / 4 {
                self.read.reserve(READ_SIZE);
            }
            let idle = self.read.is_empty();
            match self.wait(stopping.as_mut(), stop, idle).await {
                Woken::Read(Ok(0) | Err(_)) => return Next::Closed,
                Woken::Read(Ok(_)) => {}
                Woken::Timer => {
                    let now_ms = crate::clock::coarse_now_ms();
                    if now_ms < self.deadline_ms {
                        // An earlier deadline's timer: move it to this one.
                        let left = Duration::from_millis(self.deadline_ms - now_ms);
                        self.timer.as_mut().reset(Instant::now() + left);
                        self.timer_polled = false;
                    } else if idle {
                        return Next::Closed;
                    } else {
                        return Next::Refuse(
                            StatusCode::REQUEST_TIMEOUT,
                            "the request head did not arrive in time",
                        );
                    }
                }
                Woken::Stopping => return Next::Closed,
            }
        }
    }

    /// Waits for more of the head, the header-read timer, or (when `idle`, between requests)
    /// shutdown, in that order.
    ///
    /// Why not `select!` over the three: it polls all of them on every wait, once per request,
    /// and polling a timer or the shutdown watch registers the task's waker again (the watch
    /// under its lock). Both keep the waker of their first poll, which is this task's for the
    /// connection's life, so each is polled again only when it may be ready: the timer once it
    /// has fired (or was moved, which drops its waker), the watch once shutdown was sent.
    fn wait<'a>(
        &'a mut self,
        mut stopping: Pin<&'a mut impl Future<Output = ()>>,
        stop: &'a Stop,
        idle: bool,
    ) -> impl Future<Output = Woken> + 'a {
        std::future::poll_fn(move |cx| {
            // The read future keeps no state between polls: a fresh one per poll is the same read.
            if let Poll::Ready(read) = pin!(self.stream.read_buf(&mut self.read)).poll(cx) {
                return Poll::Ready(Woken::Read(read));
            }
            // A poll refused for want of the task's budget registers no waker (it wakes the
            // task to come back): only a poll made with budget counts.
            if !self.timer_polled || self.timer.is_elapsed() {
                let counted = tokio::task::coop::has_budget_remaining();
                if self.timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woken::Timer);
                }
                self.timer_polled = counted;
            }
            if idle && (!self.stop_polled || stop.is_requested()) {
                let counted = tokio::task::coop::has_budget_remaining();
                if stopping.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woken::Stopping);
                }
                self.stop_polled = counted;
            }
            Poll::Pending
        })
    }

    /// Writes `response`: the head, then the body framed by its known length, chunked, or (for
    /// an HTTP/1.0 client, which has no chunked coding) by closing the connection. Head and
    /// body go out in one write when the body is ready at once. `Ok(true)`: the connection
    /// can serve another request.
    async fn respond(
        &mut self,
        response: Response<ProxyBody>,
        head_request: bool,
        http10: bool,
        mut keep_alive: bool,
    ) -> io::Result<bool> {
        self.sent = 0;
        let (parts, mut body) = response.into_parts();
        let passed = match &mut body {
            Either::Left(Either::Right(upstream)) => upstream.take_passed_head(),
            _ => None,
        };
        let status = parts.status;
        let framing = if head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            // A HEAD answer keeps the length the body would have had.
            Framing::None
        } else if body.is_end_stream() {
            Framing::Length(0)
        } else {
            match body.size_hint().exact() {
                Some(length) => Framing::Length(length),
                // RFC 9112 §6.1: no Transfer-Encoding in an answer to HTTP/1.0.
                None if http10 => Framing::UntilClose,
                None => Framing::Chunked,
            }
        };
        if framing == Framing::UntilClose {
            keep_alive = false;
        }
        encode_response_head(
            &mut self.write,
            &parts,
            passed.as_deref(),
            framing,
            http10,
            keep_alive,
        );
        if framing == Framing::None {
            self.flush().await?;
            return Ok(keep_alive);
        }
        let mut sent: u64 = 0;
        loop {
            // A body that is not ready lets the head (and what came before) go out first.
            let frame = match body.frame().now_or_never() {
                Some(frame) => frame,
                None => {
                    self.flush().await?;
                    body.frame().await
                }
            };
            let Some(frame) = frame else { break };
            let frame = frame.map_err(io::Error::other)?;
            // Trailers are dropped: HTTP/1.1 clients rarely ask for them.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            self.sent = sent;
            if framing == Framing::Chunked {
                self.write
                    .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                self.write.extend_from_slice(&data);
                self.write.extend_from_slice(b"\r\n");
            } else {
                self.write.extend_from_slice(&data);
            }
            if self.write.len() >= WRITE_BATCH {
                self.flush().await?;
            }
        }
        match framing {
            Framing::Chunked => self.write.extend_from_slice(b"0\r\n\r\n"),
            // The client would wait for bytes that never come, or read the next response
            // wrongly: the connection cannot go on.
            Framing::Length(length) if sent != length => {
                return Err(io::Error::other(format!(
                    "the response body had {sent} of {length} bytes"
                )));
            }
            _ => {}
        }
        self.flush().await?;
        Ok(keep_alive)
    }

    /// Closes after a last answer without losing it: the write side first, then whatever the
    /// client still sends is read and dropped until it closes too (RFC 9112 §9.6). Closed
    /// with unread bytes, the socket would answer them with a reset, which can destroy the
    /// answer before the client reads it. Bounded by [`LINGER_TIME`] and [`LINGER_BYTES`].
    async fn linger(mut self) {
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let mut drained = 0;
        let mut sink = [0u8; 4096];
        let _ = deadline::within(deadline::after(LINGER_TIME), async {
            while drained < LINGER_BYTES {
                match self.stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        })
        .await;
    }

    /// Writes out what `write` holds. Most writes complete at once and arm no timer; a write
    /// the client leaves unaccepted for [`SEND_TIMEOUT`] fails.
    async fn flush(&mut self) -> io::Result<()> {
        let (stream, buf) = (&mut self.stream, &self.write);
        let mut written = 0;
        let mut stall = None;
        std::future::poll_fn(|cx| {
            while written < buf.len() {
                let poll = Pin::new(&mut *stream).poll_write(cx, &buf[written..]);
                match ready!(send_deadline(&mut stall, cx, poll))? {
                    0 => return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero))),
                    n => written += n,
                }
            }
            // A TLS stream holds the records it made until flushed; a socket's flush is a no-op.
            let flushed = Pin::new(&mut *stream).poll_flush(cx);
            ready!(send_deadline(&mut stall, cx, flushed))?;
            Poll::Ready(Ok::<(), io::Error>(()))
        })
        .await?;
        self.write.clear();
        Ok(())
    }
}

/// `poll`, a client write's progress, unless the write has been stalled for [`SEND_TIMEOUT`]:
/// `stall` is armed when a write is pending and cleared when one goes out, so the timeout
/// bounds each stall (as nginx's `send_timeout` does), not a whole response.
fn send_deadline<T>(
    stall: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
    poll: Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    if poll.is_ready() {
        *stall = None;
        return poll;
    }
    let timer =
        stall.get_or_insert_with(|| Box::pin(deadline::timer(deadline::after(SEND_TIMEOUT))));
    match timer.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not take the response in time",
        ))),
        Poll::Pending => Poll::Pending,
    }
}

/// Why a request with the wrong number of `Host` headers is refused.
const HOST_RULE: &str = "a request needs exactly one Host header";

/// RFC 9112 §3.2: an HTTP/1.1 request needs a `Host`, and no request may have two (the router
/// and the node could each pick a different one). HTTP/2 names its host in `:authority`.
fn host_count_allowed(hosts: usize, version: Version) -> bool {
    hosts <= 1 && !(hosts == 0 && version == Version::HTTP_11)
}

/// How a response body is delimited on the wire.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// The body runs until the connection closes (HTTP/1.0, unknown length).
    UntilClose,
}

/// Parses a request head from the front of `read`. `Ok(None)`: more bytes are needed. A
/// request this path does not serve leaves `read` untouched for hyper. `spans` is scratch
/// space, left empty.
fn parse_request(
    read: &mut BytesMut,
    spans: &mut Vec<(HeaderName, usize, usize)>,
) -> Result<Option<Next>, Next> {
    spans.clear();
    let bad = |message| Next::Refuse(StatusCode::BAD_REQUEST, message);
    let preface = read.len().min(H2_PREFACE.len());
    if read[..preface] == H2_PREFACE[..preface] {
        return Ok((preface == H2_PREFACE.len()).then_some(Next::HandOff));
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let length = match parsed.parse_with_uninit_headers(read, &mut slots) {
        // The read that took the buffer past the limit may also have completed the head.
        Ok(httparse::Status::Complete(length)) if length > MAX_HEAD_BYTES => {
            return Err(Next::Refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request head is too large",
            ));
        }
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Next::Refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many request headers",
            ));
        }
        Err(_) => return Err(bad("malformed request head")),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| bad("invalid method"))?;
    if method == Method::CONNECT {
        return Ok(Some(Next::HandOff));
    }
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut persistence = crate::transport::headers::Persistence::default();
    let mut hosts = 0;
    let base = read.as_ptr() as usize;
    let path = parsed.path.unwrap_or_default();
    let path_start = path.as_ptr() as usize - base;
    let path_span = path_start..path_start + path.len();
    for header in parsed.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| bad("invalid header name"))?;
        let value = header.value;
        if name == CONTENT_LENGTH {
            if value.trim_ascii() != b"0" {
                return Ok(Some(Next::HandOff));
            }
        } else if name == TRANSFER_ENCODING || name == EXPECT || name == UPGRADE {
            return Ok(Some(Next::HandOff));
        } else if name == CONNECTION {
            persistence.add(value);
        } else if name == HOST {
            hosts += 1;
        }
        let start = value.as_ptr() as usize - base;
        spans.push((name, start, start + value.len()));
    }
    if !host_count_allowed(hosts, version) {
        return Err(bad(HOST_RULE));
    }
    let head = read.split_to(length).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_span)).map_err(|_| bad("invalid target"))?;
    // Room for the forwarding headers the proxy adds, so the map does not grow on the way.
    let mut headers = HeaderMap::with_capacity(spans.len() + FORWARDING_HEADERS);
    for (name, start, end) in spans.drain(..) {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| bad("invalid header value"))?;
        headers.append(name, value);
    }
    let mut request = Request::new(empty_body());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Next::Request {
        request,
        keep_alive: !persistence.closes(version == Version::HTTP_10),
    }))
}

/// Writes the status line and headers (those of the map, then those `passed` on as the node
/// sent them) into `out` (cleared first). Framing headers are this hop's own, except that a
/// bodiless answer (HEAD, 204, 304) keeps the `Content-Length` it has.
fn encode_response_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    passed: Option<&PassedHead>,
    framing: Framing,
    http10: bool,
    keep_alive: bool,
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    let no_length_allowed =
        parts.status.is_informational() || parts.status == StatusCode::NO_CONTENT;
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
        .chain(passed.into_iter().flat_map(PassedHead::iter));
    for (name, value) in headers {
        // A length is ours to state, except the one a HEAD or 304 answer keeps; a 1xx or 204
        // must have none (RFC 9110 §8.6).
        let length_is_ours = framing != Framing::None || no_length_allowed;
        let ours = eq_lowercase(name, b"connection")
            || eq_lowercase(name, b"transfer-encoding")
            || (length_is_ours && eq_lowercase(name, b"content-length"));
        if !ours {
            put_header(out, name, value);
        }
    }
    if !parts.headers.contains_key(DATE) && !passed.is_some_and(PassedHead::has_date) {
        put_date(out);
    }
    match framing {
        Framing::Length(length) => {
            put_header(
                out,
                b"content-length",
                itoa::Buffer::new().format(length).as_bytes(),
            );
        }
        Framing::Chunked => put_header(out, b"transfer-encoding", b"chunked"),
        Framing::None | Framing::UntilClose => {}
    }
    if !keep_alive {
        put_header(out, b"connection", b"close");
    } else if http10 {
        // HTTP/1.0 closes after each answer unless told otherwise.
        put_header(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `Date` header value and the second it was formatted for, per thread.
    static DATE_NOW: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Writes a `Date` header, formatted at most once per second.
fn put_date(out: &mut Vec<u8>) {
    let second = crate::clock::coarse_unix_secs();
    DATE_NOW.with_borrow_mut(|(formatted_for, value)| {
        if *formatted_for != second || value.is_empty() {
            *formatted_for = second;
            *value = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(second));
        }
        put_header(out, b"date", value.as_bytes());
    });
}

/// Hands the connection, and the bytes read from it so far, to hyper's server.
async fn hand_off<S>(
    proxy: Arc<Proxy>,
    conn: Connection<S>,
    remote: SocketAddr,
    stop: Stop,
    tls: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = Rewind {
        prefix: conn.read.freeze(),
        stream: conn.stream,
        write_stall: None,
    };
    let service = service_fn(move |request: Request<Incoming>| {
        let proxy = Arc::clone(&proxy);
        async move {
            let hosts = request.headers().get_all(HOST).iter().count();
            if !host_count_allowed(hosts, request.version()) {
                let response = json_response(StatusCode::BAD_REQUEST, "bad_request", HOST_RULE);
                let logged = proxy.log_refusal(remote, Some(&request), StatusCode::BAD_REQUEST);
                return Ok(match logged {
                    None => response,
                    Some(logged) => super::access_log::count_body(response, logged),
                });
            }
            let mut request = request.map(Either::Left);
            if tls {
                request.extensions_mut().insert(Tls);
            }
            let (response, logged) = proxy.handle(remote, request, HeadForm::Map).await;
            // hyper writes the body: a counting body finishes the access-log line.
            let response = match logged {
                None => response,
                Some(logged) => super::access_log::count_body(response, logged),
            };
            Ok::<_, Infallible>(response)
        }
    });
    serve_hyper(io, service, remote, stop).await;
}

/// A stream that first yields bytes already read from it, and fails a write the client
/// leaves unaccepted for [`SEND_TIMEOUT`] (hyper's server has no send timeout of its own).
struct Rewind<S> {
    prefix: Bytes,
    stream: S,
    /// Armed while a write is pending.
    write_stall: Option<Pin<Box<Sleep>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        send_deadline(&mut this.write_stall, cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        send_deadline(&mut this.write_stall, cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(any(test, fuzzing))]
pub mod fuzz;
#[cfg(test)]
mod tests;
