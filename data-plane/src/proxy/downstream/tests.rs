//! The proxy listener's connection loop, from a raw socket: request bytes are written by hand
//! and response bytes read back, so framing is checked exactly (status line, lengths, chunks,
//! where one response ends and the next begins, when the server closes).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::runtime::Runtime;
use crate::state::State;
use crate::test_support::{eventually, snapshot};

/// How long any single wait on the gateway may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);
/// How long the origin holds `/api/slow` before answering.
const SLOW: Duration = Duration::from_millis(300);

/// The length of `/api/big`: more than the kernel buffers of both hops hold.
const BIG: usize = 32 << 20;

type OriginBody = BoxBody<Bytes, Infallible>;

/// The node behind the gateway. Not test_support's `FakeUpstream`: that one echoes the request
/// body, so a GET would get an empty answer and "the upstream's body" would prove nothing. This
/// one answers with the request's method and target (and its body, if any), and can answer
/// late (`/api/slow`), without a length (`/api/chunked`), or by switching protocols.
struct Origin {
    addr: SocketAddr,
    /// "METHOD target" of every request, logged as it arrives.
    received: Arc<Mutex<Vec<String>>>,
}

impl Origin {
    async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = Arc::clone(&log);
                let service = service_fn(move |request| answer(request, Arc::clone(&log)));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        // Room for the forwarding headers the gateway adds to a request that
                        // already has the 100 lines it accepts.
                        .max_headers(200)
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades(),
                );
            }
        });
        Origin { addr, received }
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

async fn answer(
    mut request: Request<Incoming>,
    log: Arc<Mutex<Vec<String>>>,
) -> Result<Response<OriginBody>, Infallible> {
    let name = format!("{} {}", request.method(), request.uri());
    log.lock().unwrap().push(name.clone());
    if request.headers().contains_key("upgrade") {
        // Echoes whatever comes through the tunnel.
        let upgraded = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgraded.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Empty::new().boxed())
            .unwrap();
        return Ok(response);
    }
    let path = request.uri().path().to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    match path.as_str() {
        "/api/slow" => tokio::time::sleep(SLOW).await,
        "/api/big" => {
            let body = Bytes::from(vec![b'x'; BIG]);
            return Ok(Response::new(Full::new(body).boxed()));
        }
        "/api/no-content" => {
            let response = Response::builder()
                .status(StatusCode::NO_CONTENT)
                .header("content-length", "7")
                .body(Empty::new().boxed())
                .unwrap();
            return Ok(response);
        }
        "/api/chunked" => {
            // Frames and no length: hyper has to send them chunked.
            let frames = futures_util::stream::iter([
                Ok::<_, Infallible>(Frame::data(Bytes::from("chunk one, "))),
                Ok(Frame::data(Bytes::from("chunk two"))),
            ]);
            return Ok(Response::new(StreamBody::new(frames).boxed()));
        }
        _ => {}
    }
    let mut text = name;
    if !body.is_empty() {
        text.push_str(": ");
        text.push_str(std::str::from_utf8(&body).unwrap());
    }
    // Stated even for HEAD, whose answer has no body but keeps the length.
    let response = Response::builder()
        .header("content-length", text.len())
        .body(Full::new(Bytes::from(text)).boxed())
        .unwrap();
    Ok(response)
}

/// A proxy listener on 127.0.0.1:0 whose one route sends `/api/*` to a fresh [`Origin`]; any
/// other path matches no route.
struct Gateway {
    addr: SocketAddr,
    origin: Origin,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl Gateway {
    async fn start() -> Gateway {
        Gateway::in_front_of(Origin::start().await).await
    }

    async fn in_front_of(origin: Origin) -> Gateway {
        let state = State::new();
        let node = json!({"host": "127.0.0.1", "port": origin.addr.port()});
        let resources = [(
            "routes",
            "api",
            json!({"paths": ["/api/*"], "upstream": {"nodes": [node]}}),
        )];
        state.install(Runtime::compile(&snapshot(1, &resources), None).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, requested) = oneshot::channel::<()>();
        let server = tokio::spawn(crate::proxy::serve(listener, state, async {
            let _ = requested.await;
        }));
        Gateway {
            addr,
            origin,
            shutdown: Some(shutdown),
            server,
        }
    }

    async fn connect(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// Completes the listener's shutdown future.
    fn shut_down(&mut self) {
        self.shutdown.take().unwrap().send(()).unwrap();
    }

    /// Waits for `serve` to return.
    async fn stopped(self) {
        tokio::time::timeout(WAIT, self.server)
            .await
            .expect("serve returns once its connections are done")
            .unwrap();
    }
}

/// One raw client connection. `buf` holds what was read past the last response.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

/// A response as read off the wire. Header names are lowercased.
#[derive(Debug)]
struct Reply {
    status_line: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.all(name).into_iter();
        let first = values.next();
        assert!(
            values.next().is_none(),
            "{name} sent more than once: {self:?}"
        );
        first
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether a comma-separated header carries `token`.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        // Each write leaves at once, so a split head really arrives in pieces.
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.unwrap();
    }

    /// Reads more bytes into `buf`; `Ok(0)` once the server has closed.
    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(8 * 1024);
        tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
            .await
            .expect("the gateway answers in time")
    }

    async fn more(&mut self, what: &str) {
        match self.fill().await {
            Ok(0) => panic!(
                "the connection closed while reading {what}; unread: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Ok(_) => {}
            Err(error) => panic!("reading {what} failed: {error}"),
        }
    }

    /// The next line, without its CRLF.
    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line = self.buf.split_to(end + 2);
                return String::from_utf8(line[..end].to_vec()).unwrap();
            }
            self.more("a line").await;
        }
    }

    async fn exact(&mut self, length: usize) -> Bytes {
        while self.buf.len() < length {
            self.more("a body").await;
        }
        self.buf.split_to(length).freeze()
    }

    /// Reads one response to a request other than HEAD.
    async fn response(&mut self) -> Reply {
        self.read_reply(false).await
    }

    /// Reads one response to a HEAD request: a head and nothing else.
    async fn head_response(&mut self) -> Reply {
        self.read_reply(true).await
    }

    async fn read_reply(&mut self, head_request: bool) -> Reply {
        let head_length = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end + 4;
            }
            self.more("a response head").await;
        };
        let head = self.buf.split_to(head_length);
        let head = std::str::from_utf8(&head).unwrap();
        let mut lines = head.split("\r\n").filter(|line| !line.is_empty());
        let status_line = lines.next().unwrap().to_owned();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
        let headers = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("not a header line: {line:?}"));
                (name.to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        let mut reply = Reply {
            status_line,
            status,
            headers,
            body: Bytes::new(),
        };
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            return reply;
        }
        if reply.has_token("transfer-encoding", "chunked") {
            reply.body = self.chunked().await;
        } else if let Some(length) = reply.header("content-length") {
            let length = length.parse().unwrap();
            reply.body = self.exact(length).await;
        } else {
            // Delimited by the end of the connection.
            while self.fill().await.unwrap() != 0 {}
            reply.body = self.buf.split().freeze();
        }
        reply
    }

    async fn chunked(&mut self) -> Bytes {
        let mut body = Vec::new();
        loop {
            let line = self.line().await;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .unwrap_or_else(|_| panic!("not a chunk size line: {line:?}"));
            if size == 0 {
                // Trailers, if any, end with an empty line.
                while !self.line().await.is_empty() {}
                return body.into();
            }
            body.extend_from_slice(&self.exact(size).await);
            assert_eq!(self.line().await, "", "chunk data ends with CRLF");
        }
    }

    /// Asserts that the server closes the connection with nothing after the last response.
    async fn expect_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "bytes after the last response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        match self.fill().await {
            Ok(0) => {}
            Ok(_) => panic!(
                "expected a close, got {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Err(error) => panic!("expected a clean close, got {error}"),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: example\r\n\r\n")
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: example\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn a_get_is_proxied_and_the_connection_kept_alive() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;

    client.send(get("/api/first")).await;
    let reply = client.response().await;
    assert_eq!(reply.status_line, "HTTP/1.1 200 OK");
    assert_eq!(reply.text(), "GET /api/first");
    // One length, this hop's, matching the body.
    assert_eq!(reply.all("content-length"), ["14"]);
    let date = reply.header("date").expect("a date header");
    assert!(httpdate::parse_http_date(date).is_ok(), "date: {date}");
    assert!(!reply.has_token("connection", "close"), "{reply:?}");

    client.send(get("/api/second")).await;
    let reply = client.response().await;
    assert_eq!(reply.status_line, "HTTP/1.1 200 OK");
    assert_eq!(reply.text(), "GET /api/second");
    assert_eq!(
        gateway.origin.received(),
        ["GET /api/first", "GET /api/second"]
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client.send(get("/api/first") + &get("/api/second")).await;
    assert_eq!(client.response().await.text(), "GET /api/first");
    assert_eq!(client.response().await.text(), "GET /api/second");
}

#[tokio::test]
async fn connection_close_is_answered_with_close_and_the_server_closes() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client
        .send("GET /api/bye HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n")
        .await;
    let reply = client.response().await;
    assert_eq!(reply.text(), "GET /api/bye");
    assert!(reply.has_token("connection", "close"), "{reply:?}");
    client.expect_closed().await;
}

#[tokio::test]
async fn close_wins_over_keep_alive_in_any_order() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client
        .send("GET /api/bye HTTP/1.1\r\nHost: example\r\nConnection: close, keep-alive\r\n\r\n")
        .await;
    let reply = client.response().await;
    assert!(reply.has_token("connection", "close"), "{reply:?}");
    client.expect_closed().await;
}

#[tokio::test]
async fn connect_is_refused_with_a_json_501() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client
        .send("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await;
    let reply = client.response().await;
    assert_eq!(reply.status, 501, "{reply:?}");
    assert!(reply.text().contains("\"not_implemented\""), "{reply:?}");
}

#[tokio::test]
async fn an_http10_request_without_keep_alive_gets_the_connection_closed() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client.send("GET /api/old HTTP/1.0\r\n\r\n").await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "GET /api/old");
    assert!(reply.has_token("connection", "close"), "{reply:?}");
    client.expect_closed().await;
}

#[tokio::test]
async fn an_http10_request_with_keep_alive_keeps_the_connection_open() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    let request = "GET /api/old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    client.send(request).await;
    let reply = client.response().await;
    assert_eq!(reply.text(), "GET /api/old");
    assert!(!reply.has_token("connection", "close"), "{reply:?}");
    client.send(request).await;
    assert_eq!(client.response().await.text(), "GET /api/old");
}

#[tokio::test]
async fn an_http10_keep_alive_answer_says_keep_alive() {
    // An HTTP/1.0 client keeps the connection only when the answer says `Connection:
    // keep-alive` (RFC 2068 §19.7.1, RFC 9112 appendix C.2.2); otherwise it closes after every
    // response. hyper, which served these connections before, adds it.
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client
        .send("GET /api/old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let reply = client.response().await;
    assert_eq!(reply.text(), "GET /api/old");
    assert!(reply.has_token("connection", "keep-alive"), "{reply:?}");
}

#[tokio::test]
async fn a_head_request_keeps_the_upstream_content_length() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    // Pipelined: a body after the HEAD answer would be read as the GET's status line.
    client
        .send("HEAD /api/head HTTP/1.1\r\nHost: example\r\n\r\n".to_owned() + &get("/api/after"))
        .await;
    let head = client.head_response().await;
    assert_eq!(head.status_line, "HTTP/1.1 200 OK");
    assert_eq!(
        head.all("content-length"),
        ["HEAD /api/head".len().to_string()]
    );
    assert!(head.header("transfer-encoding").is_none(), "{head:?}");
    let next = client.response().await;
    assert_eq!(next.status_line, "HTTP/1.1 200 OK");
    assert_eq!(next.text(), "GET /api/after");
}

#[tokio::test]
async fn an_unknown_route_gets_a_json_404_and_the_connection_stays_usable() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client.send(get("/missing")).await;
    let reply = client.response().await;
    assert_eq!(reply.status_line, "HTTP/1.1 404 Not Found");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.json()["error"]["code"], "route_not_found");
    // The gateway wrote this answer itself: the date is ours, not the upstream's.
    assert!(reply.header("date").is_some(), "{reply:?}");
    assert!(!reply.has_token("connection", "close"), "{reply:?}");
    // A wrong length would leave bytes behind, or swallow some of the next answer.
    client.send(get("/api/next")).await;
    assert_eq!(client.response().await.text(), "GET /api/next");
    assert_eq!(gateway.origin.received(), ["GET /api/next"]);
}

#[tokio::test]
async fn a_post_with_a_body_is_handed_to_hyper_and_reaches_the_upstream_intact() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client.send(post("/api/upload", "hello")).await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "POST /api/upload: hello");
    // hyper keeps the connection for what follows.
    client.send(get("/api/then")).await;
    assert_eq!(client.response().await.text(), "GET /api/then");
}

#[tokio::test]
async fn a_post_after_a_get_on_the_same_connection_is_handed_off() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client.send(get("/api/first")).await;
    assert_eq!(client.response().await.text(), "GET /api/first");
    client.send(post("/api/upload", "hello")).await;
    assert_eq!(client.response().await.text(), "POST /api/upload: hello");
    client.send(get("/api/last")).await;
    assert_eq!(client.response().await.text(), "GET /api/last");
}

#[tokio::test]
async fn a_post_pipelined_behind_a_get_keeps_its_bytes_through_the_hand_off() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    // One write: the POST's head and body are already in the fast path's buffer when it
    // hands the connection to hyper, which must see them first.
    client
        .send(get("/api/first") + &post("/api/upload", "hello") + &get("/api/last"))
        .await;
    assert_eq!(client.response().await.text(), "GET /api/first");
    assert_eq!(client.response().await.text(), "POST /api/upload: hello");
    assert_eq!(client.response().await.text(), "GET /api/last");
}

#[tokio::test]
async fn a_chunked_post_is_handed_off_with_its_body() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client
        .send(
            "POST /api/upload HTTP/1.1\r\nHost: example\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "POST /api/upload: hello world");
}

#[tokio::test]
async fn an_expect_100_continue_post_gets_the_go_ahead_before_sending_its_body() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client
        .send(
            "POST /api/upload HTTP/1.1\r\nHost: example\r\nContent-Length: 5\r\n\
             Expect: 100-continue\r\n\r\n",
        )
        .await;
    let go_ahead = client.response().await;
    assert_eq!(go_ahead.status_line, "HTTP/1.1 100 Continue");
    client.send("hello").await;
    assert_eq!(client.response().await.text(), "POST /api/upload: hello");
}

#[tokio::test]
async fn a_request_head_split_across_writes_is_served() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    // "P" alone is also how the HTTP/2 preface begins: the first read cannot tell them apart.
    // The pieces cut the request line, a header name, and the final CRLF CRLF.
    let pieces = [
        "P",
        "UT /api/sp",
        "lit HTTP/1.1\r\nHost: example\r\nContent-Len",
        "gth: 0\r\n\r",
        "\n",
    ];
    for piece in pieces {
        client.send(piece).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = client.response().await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "PUT /api/split");
}

#[tokio::test]
async fn a_malformed_request_line_gets_a_json_400_and_a_close() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client.send("this is not http\r\n\r\n").await;
    let reply = client.response().await;
    assert_eq!(reply.status_line, "HTTP/1.1 400 Bad Request");
    assert_eq!(reply.json()["error"]["code"], "bad_request");
    assert!(reply.has_token("connection", "close"), "{reply:?}");
    client.expect_closed().await;
    assert!(gateway.origin.received().is_empty());
}

#[tokio::test]
async fn a_head_over_64_kib_gets_431_and_a_close() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    // The head never ends: only the limit can stop the wait.
    let head = format!(
        "GET /api/big HTTP/1.1\r\nHost: example\r\nX-Big: {}",
        "a".repeat(80 * 1024)
    );
    client.send(head).await;
    let reply = client.response().await;
    assert_eq!(
        reply.status_line,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(reply.json()["error"]["code"], "headers_too_large");
    assert!(reply.has_token("connection", "close"), "{reply:?}");
    // The server stops reading at the limit and closes with the rest of the head unread, which
    // the kernel turns into a reset rather than a FIN; either way the connection is over.
    assert!(
        client.buf.is_empty(),
        "bytes after the 431: {:?}",
        client.buf
    );
    match client.fill().await {
        Ok(0) => {}
        Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to end, got {other:?}"),
    }
    assert!(gateway.origin.received().is_empty());
}

#[tokio::test]
async fn a_head_that_completes_just_past_64_kib_is_still_refused() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    // The head's end arrives in the same read that takes the buffer past 64 KiB, so it parses
    // complete before the size check for a partial head ever sees it.
    let start = format!(
        "GET /api/big HTTP/1.1\r\nHost: example\r\nX-Big: {}",
        "a".repeat(63 * 1024)
    );
    client.send(start).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    client
        .send(format!("{}\r\n\r\n", "a".repeat(2 * 1024)))
        .await;
    let reply = client.response().await;
    assert_eq!(reply.status, 431, "{reply:?}");
    assert!(gateway.origin.received().is_empty());
}

#[tokio::test]
async fn up_to_100_header_lines_are_served_and_more_get_431() {
    let gateway = Gateway::start().await;
    let head = |lines: usize| {
        let mut head = "GET /api/many HTTP/1.1\r\nHost: example\r\n".to_owned();
        for i in 1..lines {
            head.push_str(&format!("X-Header-{i}: {i}\r\n"));
        }
        head + "\r\n"
    };

    let mut client = gateway.connect().await;
    client.send(head(100)).await;
    let reply = client.response().await;
    assert_eq!(reply.text(), "GET /api/many", "{reply:?}");

    let mut client = gateway.connect().await;
    client.send(head(101)).await;
    let reply = client.response().await;
    assert_eq!(
        reply.status_line,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(reply.json()["error"]["code"], "headers_too_large");
    assert!(reply.has_token("connection", "close"), "{reply:?}");
    client.expect_closed().await;
    assert_eq!(gateway.origin.received().len(), 1);
}

#[tokio::test]
async fn an_upstream_body_of_unknown_length_is_sent_chunked() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client.send(get("/api/chunked")).await;
    let reply = client.response().await;
    assert_eq!(reply.status_line, "HTTP/1.1 200 OK");
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
    assert!(reply.header("content-length").is_none(), "{reply:?}");
    assert_eq!(reply.text(), "chunk one, chunk two");
    // The last chunk was framed right if the next answer reads cleanly.
    client.send(get("/api/next")).await;
    assert_eq!(client.response().await.text(), "GET /api/next");
}

#[tokio::test]
async fn an_http10_client_never_gets_a_chunked_answer() {
    // HTTP/1.0 has no chunked coding: RFC 9112 §6.1 forbids Transfer-Encoding in a response to
    // an HTTP/1.0 request. A body of unknown length goes out delimited by the close.
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client.send("GET /api/chunked HTTP/1.0\r\n\r\n").await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("transfer-encoding").is_none(), "{reply:?}");
    assert_eq!(reply.text(), "chunk one, chunk two");
    client.expect_closed().await;
}

#[tokio::test]
async fn an_h2c_client_with_prior_knowledge_is_served() {
    let gateway = Gateway::start().await;
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    // Two requests: the connection is hyper's for good, not just for its first stream.
    for path in ["/api/h2", "/api/again"] {
        let request = Request::get(format!("http://{}{path}", gateway.addr))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = tokio::time::timeout(WAIT, sender.send_request(request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), http::Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("GET {path}"));
    }
}

#[tokio::test]
async fn an_h2_preface_split_across_writes_is_still_handed_to_hyper() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    // Cut inside the preface: the first read is only a prefix of it, and must wait for the rest
    // rather than be parsed as an HTTP/1 request line.
    client.send("PRI * HTTP/").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.send("2.0\r\n\r\nSM\r\n\r\n").await;
    // An empty SETTINGS frame: the rest of the client's connection preface.
    client.send([0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
    // An HTTP/2 server opens with its own SETTINGS frame: type 4, no ACK flag, stream 0.
    let frame = client.exact(9).await;
    assert_eq!(frame[3], 4, "not a SETTINGS frame: {frame:?}");
    assert_eq!(frame[4] & 1, 0, "a SETTINGS ACK first: {frame:?}");
    assert_eq!(&frame[5..9], [0, 0, 0, 0]);
}

#[tokio::test]
async fn an_upgrade_after_a_plain_get_on_the_same_connection_is_tunnelled() {
    // forward's tests cover the upgrade itself; this is the hand-off in mid-connection.
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client.send(get("/api/plain")).await;
    assert_eq!(client.response().await.text(), "GET /api/plain");
    client
        .send(
            "GET /api/ws HTTP/1.1\r\nHost: example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await;
    let reply = client.response().await;
    assert_eq!(reply.status_line, "HTTP/1.1 101 Switching Protocols");
    assert!(reply.has_token("upgrade", "echo"), "{reply:?}");
    client.send("ping over the tunnel").await;
    assert_eq!(client.exact(20).await, "ping over the tunnel");
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_serve_returns() {
    let mut gateway = Gateway::start().await;
    // Connected first: accepted before the next one is served (the accept queue is FIFO),
    // so it is a connection that never sent a byte, not one left in the backlog.
    let mut silent = gateway.connect().await;
    // Idle after a request served by the connection loop...
    let mut served_here = gateway.connect().await;
    served_here.send(get("/api/one")).await;
    assert_eq!(served_here.response().await.status, 200);
    // ...and after one that handed the connection to hyper.
    let mut handed_off = gateway.connect().await;
    handed_off.send(post("/api/two", "body")).await;
    assert_eq!(handed_off.response().await.status, 200);

    gateway.shut_down();
    silent.expect_closed().await;
    served_here.expect_closed().await;
    handed_off.expect_closed().await;
    gateway.stopped().await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish_with_connection_close() {
    let mut gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client.send(get("/api/slow")).await;
    eventually("the origin to receive the request", || {
        !gateway.origin.received().is_empty()
    })
    .await;

    gateway.shut_down();
    let reply = client.response().await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "GET /api/slow");
    assert!(reply.has_token("connection", "close"), "{reply:?}");
    client.expect_closed().await;
    gateway.stopped().await;
}

#[tokio::test]
async fn response_headers_pass_as_the_node_spelled_them_without_this_hops_own() {
    // A node scripted byte by byte: hyper would lowercase the names.
    const HEAD: &str = "HTTP/1.1 200 OK\r\nX-Kept: one\r\nConnection: keep-alive, X-Secret\r\n\
        X-Secret: hidden\r\nKeep-Alive: timeout=5\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
        Set-Cookie: a=1\r\nContent-Length: 2\r\nSet-Cookie: b=2\r\n\r\n";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = Origin {
        addr: listener.local_addr().unwrap(),
        received: Arc::default(),
    };
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some(end) = find(&buf, b"\r\n\r\n") {
                buf.drain(..end + 4);
                stream
                    .write_all(format!("{HEAD}ok").as_bytes())
                    .await
                    .unwrap();
            }
        }
    });
    let gateway = Gateway::in_front_of(origin).await;
    let mut client = TcpStream::connect(gateway.addr).await.unwrap();
    for _ in 0..2 {
        client.write_all(get("/api/hop").as_bytes()).await.unwrap();
        let mut wire = Vec::new();
        while !(find(&wire, b"\r\n\r\n").is_some() && wire.ends_with(b"ok")) {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, client.read(&mut chunk))
                .await
                .expect("the answer arrives")
                .unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&wire));
            wire.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8(wire).unwrap();
        let lower = text.to_ascii_lowercase();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\nX-Kept: one\r\n"), "{text}");
        assert!(
            text.contains("\r\nSet-Cookie: a=1\r\n") && text.contains("\r\nSet-Cookie: b=2\r\n"),
            "{text}"
        );
        assert!(!lower.contains("x-secret"), "{text}");
        assert!(!lower.contains("keep-alive"), "{text}");
        assert!(!lower.contains("\r\nconnection:"), "{text}");
        assert_eq!(lower.matches("\r\ndate:").count(), 1, "{text}");
        assert!(
            text.contains("\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"),
            "{text}"
        );
        assert_eq!(
            lower.matches("\r\ncontent-length: 2\r\n").count(),
            1,
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nok"), "{text}");
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_send_timeout() {
    // A GET is the listener loop's; a POST with a body is hyper's.
    for request in [get("/api/big"), post("/api/big", "x")] {
        client_that_stops_reading(&request).await;
    }
}

async fn client_that_stops_reading(request: &str) {
    let gateway = Gateway::start().await;
    // A small receive buffer, so the gateway's writes stall whatever the machine's defaults.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(gateway.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    // Not reading: the gateway's writes stall once the socket buffers are full.
    tokio::time::sleep(super::SEND_TIMEOUT + Duration::from_millis(1500)).await;
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the gateway still holds the connection: {request}"
    );
    assert!(
        received < BIG,
        "the whole body arrived after all: {received} bytes"
    );
}

#[tokio::test]
async fn a_204_goes_out_without_the_nodes_content_length() {
    let gateway = Gateway::start().await;
    let mut client = gateway.connect().await;
    client.send(&get("/api/no-content")).await;
    let reply = client.read_reply(false).await;
    assert_eq!(reply.status, 204);
    assert_eq!(reply.header("content-length"), None, "{:?}", reply.headers);
    // The connection goes on.
    client.send(&get("/api/next")).await;
    assert_eq!(client.read_reply(false).await.status, 200);
}

#[tokio::test]
async fn a_request_without_a_host_or_with_two_gets_a_json_400() {
    let gateway = Gateway::start().await;
    for head in [
        "GET /api/a HTTP/1.1\r\n\r\n",
        "GET /api/a HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        "GET /api/a HTTP/1.0\r\nHost: a.example\r\nhost: b.example\r\n\r\n",
    ] {
        let mut client = gateway.connect().await;
        client.send(head).await;
        let reply = client.read_reply(false).await;
        assert_eq!(reply.status, 400, "{head:?}");
        client.expect_closed().await;
    }
    // A request with a body (hyper's) is held to the same rule.
    let mut client = gateway.connect().await;
    client
        .send("POST /api/a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
        .await;
    assert_eq!(client.read_reply(false).await.status, 400);
    // HTTP/1.0 may leave it out.
    let mut client = gateway.connect().await;
    client.send("GET /api/a HTTP/1.0\r\n\r\n").await;
    assert_eq!(client.read_reply(false).await.status, 200);
    assert_eq!(gateway.origin.received().len(), 1);
}

#[tokio::test]
async fn a_request_that_arrives_while_the_close_is_prepared_does_not_reset_the_answer() {
    let gateway = Gateway::start().await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let first = "GET /api/slow HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n";
    stream.write_all(first.as_bytes()).await.unwrap();
    // Sent while the first is at the node: it sits unread when the gateway closes.
    tokio::time::sleep(SLOW / 3).await;
    stream.write_all(get("/api/b").as_bytes()).await.unwrap();
    tokio::time::sleep(SLOW).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut received)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(
        matches!(read, Ok(Ok(_))),
        "a clean close, not {read:?}, after {text:?}"
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("GET /api/slow"), "{text}");
}
