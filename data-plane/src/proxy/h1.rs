//! A plain HTTP/1.1 upstream client that runs inside the request's own task.
//!
//! hyper's pooled client runs every connection as a task of its own: a proxied request crossed
//! to that task and back through channels for the response head, again for every body chunk,
//! and the pool took a lock, a hash lookup and a spawned task per request. Under callgrind that
//! was about 45% of the gateway's instructions per proxied request. Here the request's future
//! writes the head and reads the response head itself, and the response body reads the socket
//! when the server side polls it. The connection goes back to its node's idle list the moment
//! the body's last byte is read, and is closed if the body is dropped before that.
//!
//! Scope: `scheme: http` upstreams and requests that do not ask for an upgrade. TLS, h2c and
//! WebSocket exchanges go through hyper's client ([`super::upstream`]).
//!
//! An idle connection has nothing to say, so one that turns readable while idle was closed by
//! the node (or is out of step): it is dropped at checkout, which costs no syscall because
//! tokio records readiness as epoll reports it. A pooled connection that still fails before the
//! first response byte (the node closed it between our check and our write) is replaced by the
//! next idle one or a new one, when the request has no body and an idempotent method.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::forward::is_idempotent;
use super::headers::{self, HopHeaders, X_FORWARDED_FOR, put_header};
use super::upstream::UpstreamBody;
use crate::balance::InFlight;
use crate::error::{BoxError, ProxyError, TimeoutPhase};

/// Headers a response map has room for beyond those the node sent.
const RESPONSE_HEADROOM: usize = 4;
/// Headers a [`PassedHead`] holds; a response with more gets a map instead.
const MAX_PASSED: usize = 16;
/// A response head larger than this is refused: no API answer needs more, and the limit bounds
/// what a broken node can make the gateway buffer.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header lines per response head.
const MAX_HEADERS: usize = 128;
// `build_head` keeps one bit per header line in a u128.
const _: () = assert!(MAX_HEADERS <= 128);
/// Bytes asked of the socket per read: a small API answer, head and body, fits in one.
const READ_SIZE: usize = 8 * 1024;
/// A chunk-size line, or the trailer section, longer than this is a broken node.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// TCP keep-alive probes on upstream connections, so a connection to a vanished host is
/// noticed by the kernel rather than by the next request.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// How many idle connections a node keeps, and for how long: the upstream's `keepalive_pool`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    /// Idle connections kept per node.
    pub size: usize,
    /// An idle connection older than this is closed instead of used.
    pub idle_timeout: Duration,
}

impl PoolLimits {
    fn idle_timeout_ms(&self) -> u64 {
        u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX)
    }
}

/// The idle keep-alive connections to one node, oldest first. Shared across config snapshots
/// with the rest of the node's state.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
struct Idle {
    conn: Box<Conn>,
    /// When it was put back ([`crate::clock::coarse_now_ms`]).
    since_ms: u64,
}

/// One connection and what has been read from it but not used yet.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
    /// Scratch space for [`parse_head`].
    spans: Vec<Span>,
    /// Served a request before: a failure before the first response byte may just mean the node
    /// closed it while it sat in the pool.
    reused: bool,
    /// The response-head deadline's timer, kept with the connection and moved only when it
    /// fires before the current exchange's deadline (or is later than it): registering a timer
    /// per request was a measurable share of a proxied request's cost. While the connection is
    /// idle it may fire and wake the task that last used it, which then finds nothing to do.
    timer: Option<Pin<Box<Sleep>>>,
    /// The current response body's read deadline, and its node's in-flight count, held until
    /// the body ends (here rather than in the body, which moves with every response and
    /// should stay small; the count is dropped before the connection is pooled).
    idle: IdleDeadline,
    in_flight: Option<InFlight>,
}

impl Pool {
    /// The newest idle connection that is still usable, if any.
    fn checkout(&self, limits: PoolLimits) -> Option<Box<Conn>> {
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
    fn checkin(&self, conn: Box<Conn>, limits: PoolLimits) {
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
    fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Conn {
    /// A new connection, boxed: it moves between the pool and response bodies, which stay small.
    async fn connect(address: &str) -> io::Result<Box<Conn>> {
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

    /// Whether an idle connection has stayed silent: no bytes, no end of stream.
    fn is_quiet(&self) -> bool {
        self.read.is_empty()
            && self
                .stream
                .poll_read_ready(&mut Context::from_waker(Waker::noop()))
                .is_pending()
    }

    /// Reads more bytes into the buffer; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.stream, &mut self.read, cx)
    }
}

/// Reads more bytes from `reader` into `read`; `Ok(0)` is the end of the stream.
fn poll_fill(
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

/// How the caller takes the response head.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HeadForm {
    /// Headers in the response's `HeaderMap`.
    Map,
    /// Headers as the node sent them, in the body's [`PassedHead`], and an empty map: for a
    /// caller that only writes the head to an HTTP/1.1 client. Building a map, encoding it
    /// again and dropping it was a quarter of a plain proxied request's instructions.
    Passed,
    /// No headers (an empty map; hyper's exchanges still fill theirs): for a caller that reads
    /// the status and the body only, such as a batch's sub-requests or a health probe. The
    /// maps a 3-way batch built for its answers and dropped unread were 8% of its instructions
    /// (callgrind: 109,100 -> 99,900 per request).
    Ignored,
}

/// Response headers as the node sent them (names in its spelling, values untouched), minus
/// the hop-by-hop ones and those its `Connection` header names. httparse has checked names
/// and values with the rules `HeaderName` and `HeaderValue` apply.
#[derive(Debug)]
pub struct PassedHead {
    head: Bytes,
    spans: [Span; MAX_PASSED],
    count: usize,
    has_date: bool,
}

impl PassedHead {
    /// Each header's name and value, in the node's order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans[..self.count].iter().map(|span| {
            (
                &self.head[span.name_range()],
                &self.head[span.value_range()],
            )
        })
    }

    /// Whether the node sent a `Date` header.
    pub fn has_date(&self) -> bool {
        self.has_date
    }
}

/// Why an exchange failed, before it became a [`ProxyError`].
#[derive(Debug)]
enum Failed {
    /// The connection failed or closed before any byte of the response arrived.
    Silent(io::Error),
    /// The connection failed after the response had started.
    Io(io::Error),
    /// The node's response is not valid HTTP/1.1.
    Protocol(String),
    /// Reading the client's request body failed.
    RequestBody(BoxError),
}

/// Sends `request` (its URI names the node at `address`) over a pooled or new connection and
/// waits for the response head; the body is read later, by whoever polls it.
///
/// Deadlines: getting a connection must finish within `connect_timeout`, and from then on the
/// response head must arrive within `read_timeout`. `hop`: headers this hop adds (see
/// [`HopHeaders`]). `form`: where the response headers go.
///
/// Not an `async fn`, for the reason `Proxy::send_upstream` gives: the future holds the
/// request's parts, not the request as well.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, in the client; a struct for it would be built per request"
)]
pub fn send<'a>(
    pool: &'a Arc<Pool>,
    limits: PoolLimits,
    address: &'a str,
    request: Request<UpstreamBody>,
    hop: Option<&'a HopHeaders>,
    form: HeadForm,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> impl Future<Output = Result<Response<ResponseBody>, ProxyError>> + 'a {
    let (parts, body) = request.into_parts();
    // An empty request can go again on a fresh connection if a pooled one turns out dead.
    let replayable = body.is_end_stream() && is_idempotent(&parts.method);
    let mut body = Some(body);
    async move {
        loop {
            let mut conn = match pool.checkout(limits) {
                Some(conn) => conn,
                None => match tokio::time::timeout(connect_timeout, Conn::connect(address)).await {
                    Ok(connected) => connected.map_err(|e| ProxyError::UpstreamConnect {
                        node: address.to_owned(),
                        source: Box::new(e),
                    })?,
                    Err(_) => {
                        return Err(ProxyError::UpstreamTimeout {
                            node: address.to_owned(),
                            phase: TimeoutPhase::Connect,
                            after: connect_timeout,
                        });
                    }
                },
            };
            let progress = Progress::new(read_timeout);
            let deadline = progress.deadline();
            let mut timer = timer_by(conn.timer.take(), deadline);
            let this_body = body.take().unwrap_or_else(super::upstream::empty_body);
            let result = {
                let mut exchange =
                    pin!(exchange(&mut conn, &parts, hop, this_body, form, &progress));
                loop {
                    tokio::select! {
                        biased;
                        result = &mut exchange => break result,
                        () = timer.as_mut() => {
                            let deadline = progress.deadline();
                            if tokio::time::Instant::now() < deadline {
                                // An earlier exchange's deadline, or one the body's progress
                                // moved: move the timer to this one.
                                timer.as_mut().reset(deadline);
                            } else if progress.waiting_for_client.load(Relaxed) {
                                // The client's body stalled, not the node: not the node's fault.
                                return Err(ProxyError::DownstreamBody {
                                    source: format!(
                                        "the request body stalled for more than {read_timeout:?}"
                                    )
                                    .into(),
                                });
                            } else {
                                return Err(ProxyError::UpstreamTimeout {
                                    node: address.to_owned(),
                                    phase: TimeoutPhase::ResponseHeaders,
                                    after: read_timeout,
                                });
                            }
                        }
                    }
                }
            };
            conn.timer = Some(timer);
            let head = match result {
                Ok(head) => head,
                Err(Failed::Silent(_)) if conn.reused && replayable => continue,
                Err(failed) => return Err(failed.into_proxy_error(address)),
            };
            let framing = head.framing;
            conn.idle = IdleDeadline::new(read_timeout);
            let mut response = Response::new(ResponseBody {
                conn: Some(conn),
                framing,
                keep_alive: head.keep_alive,
                home: Arc::clone(pool),
                limits,
                passed: head.passed,
            });
            *response.status_mut() = head.status;
            *response.version_mut() = head.version;
            *response.headers_mut() = head.headers;
            if framing == Framing::Length(0) {
                response.body_mut().finish();
            }
            return Ok(response);
        }
    }
}

impl Failed {
    fn into_proxy_error(self, address: &str) -> ProxyError {
        let node = address.to_owned();
        match self {
            Failed::Silent(e) | Failed::Io(e) => ProxyError::UpstreamRequest {
                node,
                source: Box::new(e),
            },
            Failed::Protocol(reason) => ProxyError::UpstreamRequest {
                node,
                source: reason.into(),
            },
            Failed::RequestBody(source) => ProxyError::DownstreamBody { source },
        }
    }
}

/// The parts of a response head the exchange needs.
struct Head {
    status: StatusCode,
    version: Version,
    /// Empty when the headers are `passed`.
    headers: HeaderMap,
    passed: Option<Box<PassedHead>>,
    framing: Framing,
    keep_alive: bool,
}

/// What an exchange tells the deadline watching it. The response head is due `read_timeout`
/// after the exchange started or, with a request body, after its last chunk went out (as
/// nginx's send timeout moves): a long upload is not cut by the read timeout.
struct Progress {
    started: tokio::time::Instant,
    read_timeout: Duration,
    /// Nanoseconds from `started` to the last body chunk sent.
    last_chunk_nanos: AtomicU64,
    /// Whether the exchange is waiting for the client's next body chunk: a deadline that
    /// passes then is the client's fault, not the node's (passive health must not count it).
    waiting_for_client: AtomicBool,
}

impl Progress {
    fn new(read_timeout: Duration) -> Progress {
        Progress {
            started: tokio::time::Instant::now(),
            read_timeout,
            last_chunk_nanos: AtomicU64::new(0),
            waiting_for_client: AtomicBool::new(false),
        }
    }

    fn deadline(&self) -> tokio::time::Instant {
        self.started + Duration::from_nanos(self.last_chunk_nanos.load(Relaxed)) + self.read_timeout
    }

    fn chunk_sent(&self) {
        let since = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_chunk_nanos.store(since, Relaxed);
    }
}

/// Writes the request, streams its body, and reads the final response head.
async fn exchange(
    conn: &mut Conn,
    parts: &http::request::Parts,
    hop: Option<&HopHeaders>,
    body: UpstreamBody,
    form: HeadForm,
    progress: &Progress,
) -> Result<Head, Failed> {
    let framing = if body.is_end_stream() {
        BodyFraming::Empty
    } else {
        match body.size_hint().exact() {
            Some(length) => BodyFraming::Length(length),
            None => BodyFraming::Chunked,
        }
    };
    encode_head(&mut conn.write, parts, hop, framing);
    conn.stream
        .write_all(&conn.write)
        .await
        .map_err(Failed::Silent)?;
    let head_only = parts.method == Method::HEAD;
    let Conn {
        stream,
        read,
        write,
        spans,
        ..
    } = conn;
    if framing == BodyFraming::Empty {
        return read_head(stream, read, spans, head_only, form).await;
    }
    // Boxed: its state would otherwise widen the future of every bodiless exchange, which is
    // moved whole (callgrind: +145 instructions of `memcpy` per proxied GET).
    Box::pin(exchange_body(
        stream, read, spans, body, framing, progress, head_only, form, write,
    ))
    .await
}

/// The rest of [`exchange`] for a request with a body: sends it while reading the answer.
#[expect(
    clippy::too_many_arguments,
    reason = "the parts of one `Conn`, borrowed apart"
)]
async fn exchange_body(
    stream: &mut TcpStream,
    read: &mut BytesMut,
    spans: &mut Vec<Span>,
    body: UpstreamBody,
    framing: BodyFraming,
    progress: &Progress,
    head_only: bool,
    form: HeadForm,
    write: &mut Vec<u8>,
) -> Result<Head, Failed> {
    // A node may answer before it has taken the whole body (a 413, a 401) and stop reading or
    // close. RFC 9112 §9.5: the answer is read while the body is sent, and once it is there
    // the rest of the body is not sent. The node's answer, not a failed write, is the result.
    let (mut reader, mut writer) = stream.split();
    let mut sending = pin!(send_body(&mut writer, write, body, framing, progress));
    let mut answer = pin!(read_head(&mut reader, read, spans, head_only, form));
    tokio::select! {
        // The answer first: when it is there, a write that failed meanwhile does not count.
        biased;
        head = &mut answer => {
            let mut head = head?;
            if head.status.is_client_error() || head.status.is_server_error() || !head.keep_alive {
                // The node refuses the body or closes: the rest is not sent, and the
                // connection goes after this answer.
                head.keep_alive = false;
                return Ok(head);
            }
            // An early success: the node still reads the body (§9.5 stops only for an error
            // or a close), so it is sent whole and the connection stays usable.
            sending.await?;
            Ok(head)
        }
        sent = &mut sending => match sent {
            Ok(()) => answer.await,
            // The node broke the connection: its answer may have come first (a read waits for
            // the readiness the write error did not yet show). A failed write leaves the
            // socket readable, at its end if not before, so this does not wait for long.
            Err(Failed::Io(error)) => match answer.await {
                Ok(mut head) => {
                    head.keep_alive = false;
                    Ok(head)
                }
                Err(_) => Err(Failed::Io(error)),
            },
            Err(failed) => Err(failed),
        }
    }
}

/// Reads the final response head from `reader`, with `read` holding what came before.
async fn read_head(
    reader: &mut (impl AsyncRead + Unpin),
    read: &mut BytesMut,
    spans: &mut Vec<Span>,
    head_only: bool,
    form: HeadForm,
) -> Result<Head, Failed> {
    loop {
        if let Some(head) = parse_head(read, spans, head_only, form)? {
            return Ok(head);
        }
        if read.len() >= MAX_HEAD_BYTES {
            return Err(Failed::Protocol(format!(
                "response head larger than {MAX_HEAD_BYTES} bytes"
            )));
        }
        let started = !read.is_empty();
        match std::future::poll_fn(|cx| poll_fill(reader, read, cx)).await {
            Ok(0) if started => {
                return Err(Failed::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(0) => return Err(Failed::Silent(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) if started => return Err(Failed::Io(e)),
            Err(e) => return Err(Failed::Silent(e)),
        }
    }
}

/// How the request body is framed on the wire.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum BodyFraming {
    Empty,
    Length(u64),
    Chunked,
}

/// Writes the request line and headers into `out` (cleared first). The body's framing headers
/// are the gateway's own: whatever the client sent was about its hop, already decoded. `hop`:
/// this hop's headers, written here in place of the client's lines for those names.
pub(super) fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    hop: Option<&HopHeaders>,
    framing: BodyFraming,
) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let authority = parts.uri.authority().map_or("", |a| a.as_str());
    if hop.is_none() && !parts.headers.contains_key(HOST) && !authority.is_empty() {
        put_header(out, b"host", authority.as_bytes());
    }
    let mut chain = false;
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        if hop.is_some() && HopHeaders::replaces(name) {
            chain |= name == X_FORWARDED_FOR;
            continue;
        }
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(hop) = hop {
        // The client's chain is looked up only when it sent one: most requests have none.
        let chain = chain.then(|| parts.headers.get_all(&X_FORWARDED_FOR));
        hop.encode(out, chain.iter().flatten(), authority);
    }
    match framing {
        BodyFraming::Length(length) => {
            put_header(
                out,
                b"content-length",
                itoa::Buffer::new().format(length).as_bytes(),
            );
        }
        BodyFraming::Chunked => put_header(out, b"transfer-encoding", b"chunked"),
        // Servers may insist on a length for methods that normally carry a body.
        BodyFraming::Empty
            if parts.headers.contains_key(CONTENT_LENGTH)
                || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) =>
        {
            put_header(out, b"content-length", b"0");
        }
        BodyFraming::Empty => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Streams the client's body upstream through `writer`, chunk-encoded when its length is
/// unknown; `scratch` holds chunk-size lines.
async fn send_body(
    writer: &mut (impl AsyncWrite + Unpin),
    scratch: &mut Vec<u8>,
    mut body: UpstreamBody,
    framing: BodyFraming,
    progress: &Progress,
) -> Result<(), Failed> {
    let mut sent: u64 = 0;
    loop {
        progress.waiting_for_client.store(true, Relaxed);
        let frame = body.frame().await;
        progress.waiting_for_client.store(false, Relaxed);
        let Some(frame) = frame else { break };
        let frame = frame.map_err(Failed::RequestBody)?;
        // Trailers are not forwarded: HTTP/1.1 peers rarely accept them from a proxy.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        progress.chunk_sent();
        if framing == BodyFraming::Chunked {
            scratch.clear();
            scratch.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            writer.write_all(scratch).await.map_err(Failed::Io)?;
            writer.write_all(&data).await.map_err(Failed::Io)?;
            writer.write_all(b"\r\n").await.map_err(Failed::Io)?;
        } else {
            writer.write_all(&data).await.map_err(Failed::Io)?;
        }
    }
    match framing {
        BodyFraming::Chunked => writer.write_all(b"0\r\n\r\n").await.map_err(Failed::Io),
        BodyFraming::Length(length) if sent != length => Err(Failed::RequestBody(
            format!("the request body ended after {sent} of {length} bytes").into(),
        )),
        _ => Ok(()),
    }
}

/// Parses a final response head from the front of `read`, skipping interim (1xx) heads.
/// `Ok(None)`: more bytes are needed.
/// `spans` is scratch space, kept with the connection so a response costs no allocation for it.
fn parse_head(
    read: &mut BytesMut,
    spans: &mut Vec<Span>,
    head_only: bool,
    form: HeadForm,
) -> Result<Option<Head>, Failed> {
    loop {
        if read.is_empty() {
            return Ok(None);
        }
        // Uninitialised slots: zeroing them all costs more than parsing a small head.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let length = match config.parse_response_with_uninit_headers(&mut parsed, read, &mut slots)
        {
            Ok(httparse::Status::Complete(length)) if length > MAX_HEAD_BYTES => {
                return Err(Failed::Protocol(format!(
                    "response head larger than {MAX_HEAD_BYTES} bytes"
                )));
            }
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Failed::Protocol(format!("invalid response head: {e}"))),
        };
        let code = parsed.code.unwrap_or_default();
        let status = StatusCode::from_u16(code)
            .map_err(|_| Failed::Protocol(format!("invalid status code {code}")))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Failed::Protocol("101 to a request without Upgrade".into()));
            }
            // 100 Continue, 103 Early Hints: the final answer follows.
            read.advance(length);
            continue;
        }
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        // Where each header sits in the head, so the values can share its buffer.
        let base = read.as_ptr() as usize;
        spans.clear();
        spans.extend(parsed.headers.iter().map(|header| Span::of(base, header)));
        let head = read.split_to(length).freeze();
        return build_head(status, version, head, spans, head_only, form).map(Some);
    }
}

/// Where one header's name and value sit in a response head.
#[derive(Copy, Clone, Debug, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl Span {
    /// The offsets of `header`, which borrows from a buffer starting at address `base`. A
    /// head is at most [`MAX_HEAD_BYTES`] long, so the offsets fit.
    fn of(base: usize, header: &httparse::Header<'_>) -> Span {
        let offsets = |bytes: &[u8]| {
            let start = (bytes.as_ptr() as usize - base) as u32;
            (start, start + bytes.len() as u32)
        };
        Span {
            name: offsets(header.name.as_bytes()),
            value: offsets(header.value),
        }
    }

    fn name_range(&self) -> std::ops::Range<usize> {
        self.name.0 as usize..self.name.1 as usize
    }

    fn value_range(&self) -> std::ops::Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }
}

/// Builds the response head the client will see: framing decided from `Content-Length`,
/// `Transfer-Encoding` and `Connection`, and hop-by-hop headers (with those `Connection` lists)
/// left out, so callers need not strip them again. The headers go to a map or, if `form` asks
/// and they fit, stay in `head` as a [`PassedHead`].
fn build_head(
    status: StatusCode,
    version: Version,
    head: Bytes,
    spans: &[Span],
    head_only: bool,
    form: HeadForm,
) -> Result<Head, Failed> {
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoded = false;
    let mut has_date = false;
    let mut persistence = headers::Persistence::default();
    // Names a `Connection` header lists as this hop's own; rare, so allocated only when seen.
    let mut listed: Vec<&[u8]> = Vec::new();
    for span in spans {
        let name = &head[span.name_range()];
        let value = &head[span.value_range()];
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = parse_length(value)
                .ok_or_else(|| Failed::Protocol("invalid Content-Length".into()))?;
            if content_length.is_some_and(|earlier| earlier != length) {
                return Err(Failed::Protocol("conflicting Content-Length values".into()));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoded = true;
            // The body is decoded from chunks here and re-framed for the client, where
            // `Transfer-Encoding` does not go: any other coding (`gzip, chunked`) would reach
            // the client still applied and unannounced, so it is refused. Empty list elements
            // do not count (RFC 9110 §5.6.1).
            let codings = value
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|coding| !coding.is_empty());
            for coding in codings {
                if chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                    return Err(Failed::Protocol(format!(
                        "unsupported Transfer-Encoding {:?}",
                        String::from_utf8_lossy(value)
                    )));
                }
                chunked = true;
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            persistence.add(value);
            listed.extend(headers::connection_listed(value));
        } else if name.eq_ignore_ascii_case(b"date") {
            has_date = true;
        }
    }
    // What goes on: not this hop's own, and no length next to a transfer coding (RFC 9112
    // §6.3: Transfer-Encoding overrides Content-Length, which must not go on). One bit per
    // header: a head has at most MAX_HEADERS of them.
    let mut keep: u128 = 0;
    for (i, span) in spans.iter().enumerate() {
        let name = &head[span.name_range()];
        let dropped = headers::is_hop_by_hop(name)
            || listed.iter().any(|l| l.eq_ignore_ascii_case(name))
            || (transfer_encoded && name.eq_ignore_ascii_case(b"content-length"));
        if !dropped {
            keep |= 1 << i;
        }
    }
    let kept = || {
        spans
            .iter()
            .enumerate()
            .filter(move |(i, _)| keep & (1 << i) != 0)
            .map(|(_, span)| span)
    };
    let kept_count = keep.count_ones() as usize;
    let (headers, passed) = if form == HeadForm::Ignored {
        (HeaderMap::new(), None)
    } else if form == HeadForm::Passed && kept_count <= MAX_PASSED {
        let mut passed = Box::new(PassedHead {
            head: head.clone(),
            spans: [Span::default(); MAX_PASSED],
            count: kept_count,
            has_date,
        });
        for (slot, span) in passed.spans.iter_mut().zip(kept()) {
            *slot = *span;
        }
        (HeaderMap::new(), Some(passed))
    } else {
        // Room for what plugins add on the way back (rate-limit, CORS, request-id headers), so
        // the map does not grow and rehash: that was 2,000 instructions per request with
        // limit-count.
        let mut map = HeaderMap::with_capacity(kept_count + RESPONSE_HEADROOM);
        for span in kept() {
            let raw_name = &head[span.name_range()];
            let name = HeaderName::from_bytes(raw_name)
                .map_err(|_| Failed::Protocol(format!("invalid header name {raw_name:?}")))?;
            let value = HeaderValue::from_maybe_shared(head.slice(span.value_range()))
                .map_err(|_| Failed::Protocol(format!("invalid value for header {name}")))?;
            map.append(name, value);
        }
        (map, None)
    };
    let no_body =
        head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked(Chunked::Size)
    } else if transfer_encoded {
        return Err(Failed::Protocol("an empty Transfer-Encoding".into()));
    } else {
        match content_length {
            Some(length) => Framing::Length(length),
            None => Framing::UntilClose,
        }
    };
    Ok(Head {
        status,
        version,
        headers,
        passed,
        // A framing a careful peer would not send (Transfer-Encoding with Content-Length, or in
        // HTTP/1.0) is followed for this response, but the connection is not trusted again
        // (RFC 9112 §6.1, §6.3).
        keep_alive: !persistence.closes(version == Version::HTTP_10)
            && framing != Framing::UntilClose
            && !(transfer_encoded && (content_length.is_some() || version == Version::HTTP_10)),
        framing,
    })
}

/// A `Content-Length` value: digits only (no sign, no list), optional surrounding whitespace,
/// and no overflow.
fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |length, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        length.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// How the rest of a response body is delimited.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Framing {
    /// This many bytes more.
    Length(u64),
    /// Chunked transfer coding, at this point of a chunk.
    Chunked(Chunked),
    /// Until the node closes the connection.
    UntilClose,
    /// Complete.
    Done,
}

/// Where a chunked decoder stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes to go.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk, in the trailer section.
    Trailers,
}

/// What one decoding step produced.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    Data(Bytes),
    NeedMore,
    End,
}

impl Chunked {
    /// Decodes from the front of `read` until data, the end, or a need for more bytes.
    fn decode(&mut self, read: &mut BytesMut) -> Result<Decoded, String> {
        loop {
            match *self {
                Chunked::Size => {
                    let Some(line) = take_line(read)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
                    let digits = std::str::from_utf8(digits)
                        .map_err(|_| "invalid chunk size".to_owned())?
                        .trim();
                    let size = u64::from_str_radix(digits, 16)
                        .ok()
                        .filter(|_| {
                            !digits.is_empty()
                                && digits.len() <= 16
                                && digits.bytes().all(|b| b.is_ascii_hexdigit())
                        })
                        .ok_or_else(|| format!("invalid chunk size {digits:?}"))?;
                    *self = if size == 0 {
                        Chunked::Trailers
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    if read.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(read.len());
                    let data = read.split_to(take).freeze();
                    let left = left - take as u64;
                    *self = if left == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                Chunked::DataEnd => {
                    if read.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &read[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    read.advance(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers => {
                    // Trailer fields are dropped; an empty line ends the message.
                    let Some(line) = take_line(read)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        return Ok(Decoded::End);
                    }
                }
            }
        }
    }
}

/// Takes one CRLF-terminated line (without the CRLF) from the front of `read`.
fn take_line(read: &mut BytesMut) -> Result<Option<Bytes>, String> {
    match read.iter().position(|&b| b == b'\n') {
        Some(end) if end > MAX_CHUNK_LINE => Err("chunk line too long".into()),
        Some(end) if end > 0 && read[end - 1] == b'\r' => {
            let line = read.split_to(end + 1).freeze();
            Ok(Some(line.slice(..end - 1)))
        }
        Some(_) => Err("bare LF in chunked body".into()),
        None if read.len() > MAX_CHUNK_LINE => Err("chunk line too long".into()),
        None => Ok(None),
    }
}

/// A connection's timer, set to fire no later than `deadline`: a timer that would fire earlier
/// is kept as it is (moved when it fires), which spares a timer registration per request.
fn timer_by(timer: Option<Pin<Box<Sleep>>>, deadline: tokio::time::Instant) -> Pin<Box<Sleep>> {
    match timer {
        Some(mut timer) => {
            if timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
            }
            timer
        }
        None => Box::pin(tokio::time::sleep_until(deadline)),
    }
}

/// nginx's `proxy_read_timeout` for a response body: the node must send something at least
/// every `read_timeout`, or the body fails (the client's connection is then cut, as the head
/// has gone out). Costs nothing for a body that arrives with its head: the clock is read only
/// once the body has had to wait.
#[derive(Debug)]
pub(crate) struct IdleDeadline {
    read_timeout: Duration,
    /// When the body last made progress; `None` until it first has to wait.
    since: Option<tokio::time::Instant>,
}

impl IdleDeadline {
    pub(crate) fn new(read_timeout: Duration) -> IdleDeadline {
        IdleDeadline {
            read_timeout,
            since: None,
        }
    }

    /// Some of the body arrived.
    pub(crate) fn progressed(&mut self) {
        if let Some(since) = &mut self.since {
            *since = tokio::time::Instant::now();
        }
    }

    /// Called when the body has to wait: ready once it has waited `read_timeout` since its
    /// last progress. `timer` is reused (moved only when it fires early, or is later than this
    /// deadline), for the reason [`Conn::timer`] gives.
    pub(crate) fn poll_expired(
        &mut self,
        timer: &mut Option<Pin<Box<Sleep>>>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let since = *self.since.get_or_insert_with(tokio::time::Instant::now);
        let deadline = since + self.read_timeout;
        let armed = timer_by(timer.take(), deadline);
        let timer = timer.insert(armed);
        loop {
            ready!(timer.as_mut().poll(cx));
            if tokio::time::Instant::now() >= deadline {
                return Poll::Ready(());
            }
            // An earlier exchange's deadline: move to this one and wait again.
            timer.as_mut().reset(deadline);
        }
    }
}

/// A response body read straight from the node's connection.
#[derive(Debug)]
pub struct ResponseBody {
    /// `None` once the body is complete (the connection went back to the pool or was closed).
    conn: Option<Box<Conn>>,
    framing: Framing,
    keep_alive: bool,
    home: Arc<Pool>,
    limits: PoolLimits,
    /// The response's headers, when the caller asked for [`HeadForm::Passed`].
    passed: Option<Box<PassedHead>>,
}

impl ResponseBody {
    /// Keeps the node counted as busy with this exchange until the body ends (or is dropped).
    pub fn hold(&mut self, in_flight: InFlight) {
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
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(mut conn) = self.conn.take()
            && self.keep_alive
            && conn.read.is_empty()
        {
            conn.in_flight = None;
            self.home.checkin(conn, self.limits);
        }
    }

    fn fail(&mut self, error: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
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

#[cfg(any(test, fuzzing))]
pub mod fuzz;
#[cfg(test)]
mod tests;
