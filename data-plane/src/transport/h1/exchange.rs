//! One exchange on a connection: get a connection (pooled or new) within the connect deadline,
//! write the head, stream the request body while listening for the answer, and read the response
//! head within the read deadline.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::body::ResponseBody;
use super::codec::{
    BodyFraming, Framing, Head, HeadForm, MAX_HEAD_BYTES, Span, encode_head, parse_head,
};
use super::pool::{Conn, Pool, PoolLimits, poll_fill};
use crate::error::{BoxError, ProxyError, TimeoutPhase};
use crate::transport::body::UpstreamBody;
use crate::transport::deadline::{self, IdleDeadline, timer_by};
use crate::transport::headers::{HopHeaders, X_FORWARDED_FOR, put_header};
use crate::transport::is_idempotent;

/// Why an exchange failed, before it became a [`ProxyError`].
#[derive(Debug)]
pub(super) enum Failed {
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
                None => {
                    match deadline::within(deadline::after(connect_timeout), Conn::connect(address))
                        .await
                    {
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
                    }
                }
            };
            let progress = Progress::new(read_timeout);
            let deadline = progress.deadline();
            let mut timer = timer_by(conn.timer.take(), deadline);
            let this_body = body
                .take()
                .unwrap_or_else(crate::transport::body::empty_body);
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
            return Ok(response(conn, head, pool, limits, read_timeout));
        }
    }
}

/// A bodiless request head its caller has in pieces: the batch's sub-requests, written from
/// the rendered template straight into the connection's buffer, with no `http::Request`, URI
/// or header map built for the hop.
#[derive(Clone, Copy, Debug)]
pub struct WrittenHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The request target: path and query.
    pub target: &'a str,
    /// The headers as the request has them; the hop's own replace theirs, as in [`send`].
    pub headers: &'a HeaderMap,
    /// The headers this hop adds (see [`HopHeaders`]).
    pub hop: &'a HopHeaders,
}

impl WrittenHead<'_> {
    /// The head as [`send`] writes a bodiless request with these parts to `address`.
    fn encode(&self, out: &mut Vec<u8>, address: &str) {
        out.clear();
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut chain = false;
        for (name, value) in self.headers {
            if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
                continue;
            }
            if HopHeaders::replaces(name) {
                chain |= name == X_FORWARDED_FOR;
                continue;
            }
            put_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
        let chain = chain.then(|| self.headers.get_all(&X_FORWARDED_FOR));
        self.hop.encode(out, chain.iter().flatten(), address);
        // Servers may insist on a length for methods that normally carry a body.
        if self.headers.contains_key(CONTENT_LENGTH)
            || matches!(*self.method, Method::POST | Method::PUT | Method::PATCH)
        {
            put_header(out, b"content-length", b"0");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// [`send`] for a bodiless request given as a [`WrittenHead`], under the same deadlines and
/// pool rules: its head is written into the connection's buffer as it stands, and it is
/// sent again on a fresh connection when a pooled one turns out dead (if its method is
/// idempotent).
pub async fn send_head(
    pool: &Arc<Pool>,
    limits: PoolLimits,
    address: &str,
    head: WrittenHead<'_>,
    form: HeadForm,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<Response<ResponseBody>, ProxyError> {
    let replayable = is_idempotent(head.method);
    let head_only = *head.method == Method::HEAD;
    loop {
        let mut conn = match pool.checkout(limits) {
            Some(conn) => conn,
            // Boxed: a new connection is the rare case, and its state (a connect and a timer)
            // would otherwise widen this future, which its callers build and move whole.
            None => Box::pin(connect(address, connect_timeout)).await?,
        };
        let deadline = tokio::time::Instant::now() + read_timeout;
        let mut timer = timer_by(conn.timer.take(), deadline);
        head.encode(&mut conn.write, address);
        let result = {
            let Conn {
                stream,
                read,
                write,
                spans,
                ..
            } = &mut *conn;
            let mut exchange = pin!(async {
                stream.write_all(write).await.map_err(Failed::Silent)?;
                read_head(stream, read, spans, head_only, form).await
            });
            loop {
                tokio::select! {
                    biased;
                    result = &mut exchange => break result,
                    () = timer.as_mut() => {
                        if tokio::time::Instant::now() < deadline {
                            // An earlier exchange's deadline: move the timer to this one.
                            timer.as_mut().reset(deadline);
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
        let answer = match result {
            Ok(answer) => answer,
            Err(Failed::Silent(_)) if conn.reused && replayable => continue,
            Err(failed) => return Err(failed.into_proxy_error(address)),
        };
        return Ok(response(conn, answer, pool, limits, read_timeout));
    }
}

/// A new connection to `address` within `connect_timeout`.
async fn connect(address: &str, connect_timeout: Duration) -> Result<Box<Conn>, ProxyError> {
    match deadline::within(deadline::after(connect_timeout), Conn::connect(address)).await {
        Ok(connected) => connected.map_err(|e| ProxyError::UpstreamConnect {
            node: address.to_owned(),
            source: Box::new(e),
        }),
        Err(_) => Err(ProxyError::UpstreamTimeout {
            node: address.to_owned(),
            phase: TimeoutPhase::Connect,
            after: connect_timeout,
        }),
    }
}

/// The response whose `head` arrived on `conn`: its body reads the rest from the connection.
fn response(
    mut conn: Box<Conn>,
    head: Head,
    pool: &Arc<Pool>,
    limits: PoolLimits,
    read_timeout: Duration,
) -> Response<ResponseBody> {
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
    response
}

impl Failed {
    pub(super) fn into_proxy_error(self, address: &str) -> ProxyError {
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

/// What an exchange tells the deadline watching it. The response head is due `read_timeout`
/// after the exchange started or, with a request body, after its last chunk went out (as
/// nginx's send timeout moves): a long upload is not cut by the read timeout.
pub(super) struct Progress {
    pub(super) started: tokio::time::Instant,
    pub(super) read_timeout: Duration,
    /// Nanoseconds from `started` to the last body chunk sent.
    pub(super) last_chunk_nanos: AtomicU64,
    /// Whether the exchange is waiting for the client's next body chunk: a deadline that
    /// passes then is the client's fault, not the node's (passive health must not count it).
    pub(super) waiting_for_client: AtomicBool,
}

impl Progress {
    pub(super) fn new(read_timeout: Duration) -> Progress {
        Progress {
            started: tokio::time::Instant::now(),
            read_timeout,
            last_chunk_nanos: AtomicU64::new(0),
            waiting_for_client: AtomicBool::new(false),
        }
    }

    pub(super) fn deadline(&self) -> tokio::time::Instant {
        self.started + Duration::from_nanos(self.last_chunk_nanos.load(Relaxed)) + self.read_timeout
    }

    pub(super) fn chunk_sent(&self) {
        let since = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_chunk_nanos.store(since, Relaxed);
    }
}

/// Writes the request, streams its body, and reads the final response head.
pub(super) async fn exchange(
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
pub(super) async fn exchange_body(
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
pub(super) async fn read_head(
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

/// Streams the client's body upstream through `writer`, chunk-encoded when its length is
/// unknown; `scratch` holds chunk-size lines.
pub(super) async fn send_body(
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

#[cfg(test)]
mod tests {
    use http::{Method, Request};

    use super::super::codec::{BodyFraming, encode_head};
    use super::WrittenHead;

    #[test]
    fn a_written_head_is_the_head_send_writes_for_the_same_request() {
        let hops = super::super::tests::sample_hops();
        let clients: [&[(&str, &str)]; 4] = [
            &[],
            &[
                ("x-forwarded-for", "10.0.0.2"),
                ("host", "api.example.com"),
                ("x-forwarded-for", "10.0.0.3"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "claimed.example.com"),
                ("expect", "100-continue"),
                ("accept", "*/*"),
            ],
            &[("content-length", "0"), ("transfer-encoding", "chunked")],
            &[
                ("X-Forwarded-For", "10.0.0.9"),
                ("x-forwarded-protocol", "kept"),
            ],
        ];
        for method in [Method::GET, Method::HEAD, Method::POST, Method::DELETE] {
            for hop in &hops {
                for client in clients {
                    let mut request = Request::builder()
                        .method(method.clone())
                        .uri("http://node:8080/x/%2F?y=1&z");
                    for (name, value) in client {
                        request = request.header(*name, *value);
                    }
                    let (parts, ()) = request.body(()).unwrap().into_parts();
                    let mut sent = Vec::new();
                    encode_head(&mut sent, &parts, Some(hop), BodyFraming::Empty);
                    let head = WrittenHead {
                        method: &parts.method,
                        target: "/x/%2F?y=1&z",
                        headers: &parts.headers,
                        hop,
                    };
                    let mut written = b"left from the last exchange".to_vec();
                    head.encode(&mut written, "node:8080");
                    assert_eq!(
                        String::from_utf8(written).unwrap(),
                        String::from_utf8(sent).unwrap(),
                        "{method} {hop:?} {client:?}"
                    );
                }
            }
        }
    }
}
