//! The access log (`--access-log`): one JSON line per client request, written off the request
//! path.
//!
//! A request gathers its line as it goes: [`AccessLog::begin`] when [`Proxy::handle`] starts
//! (method, host, path, trace, client), `Notes` on the way (the node tried last, the
//! consumer, the request id, the sub-requests of a batch), the status and config version when
//! the answer is made, and the bytes sent once the caller has written the body
//! ([`Pending::finish`]: the proxy's own HTTP/1.1 loop counts them, and hyper's server gets a
//! counting body, [`count_body`]). The finished entry goes through a bounded channel to a
//! writer thread that formats and writes it; when the channel is full the line is dropped and
//! counted (`gateway_access_log_dropped_total`), so a slow or blocked disk never stalls a
//! request. Off, the request path pays a branch where a line would be begun, noted or finished.
//!
//! The writer wakes every 50 ms (backing off to 1 s while idle), drains whatever the channel
//! holds (up to 16,384 lines: over 300,000 requests a second between two polls) and writes it
//! with one `write`: a line is on disk within 50 ms of its request under load, within a second
//! after a quiet spell, and a request never wakes the writer. The writer is a thread of its own
//! at normal priority rather than `background::Worker`: that one runs jobs whose results are
//! awaited, from an unbounded queue, at nice 19, where a saturated core would starve it and
//! lines would be dropped. A file is opened in append mode and reopened on
//! [`AccessLog::reopen`] (the binary calls it on SIGUSR1, as nginx does, and on SIGHUP:
//! logrotate moves the file, signals, and the next lines go to a new file).
//!
//! A line (fields in this order; `null` where there is nothing to say):
//! `time` (the request's arrival, RFC 3339 UTC with milliseconds), `request_id` (the
//! `request-id` plugin's id, else a random 16-hex-digit one), `trace_id` (see `trace_id`),
//! `method`, `host`, `path` (as routed: normalised, without the query, which may carry
//! credentials), `route`, `consumer` (its id), `upstream` (the node tried last), `status`,
//! `bytes_in` (the request body's length when known before it is read: `Content-Length`, else
//! `null`), `bytes_out` (response body bytes written), `latency_ms` (arrival to the last byte
//! written), `upstream_latency_ms` (the last upstream exchange, to its response head),
//! `config_version`, `client` (its IP address), and `subrequests` on a batch's answer. A
//! request the connection refused before parsing it (a malformed head, one too large or too
//! slow) is logged too, with `method` and `path` null.
//!
//! [`Proxy::handle`]: super::Proxy::handle

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Either};
use tracing::warn;

use super::ProxyBody;
use crate::config::AccessLogTarget;
use crate::error::BoxError;
use crate::plugins::ConsumerRuntime;
use crate::runtime::CompiledRoute;
use crate::state::State;

/// Lines the channel to the writer holds; past that, lines are dropped and counted.
const CAPACITY: usize = 16 * 1024;
/// Formatted bytes gathered before a write while more lines wait.
const WRITE_BATCH: usize = 64 * 1024;
/// How long the writer sleeps after writing what it found; doubled while it finds nothing, up
/// to [`IDLE_POLL`]. The writer polls rather than waits on the channel: a waiting receiver
/// would make every request's send a wake-up (a lock and a futex call on the request path).
const BUSY_POLL: Duration = Duration::from_millis(50);
/// The longest sleep of an idle writer.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Opens (or reopens) where the lines go.
type Opener = Box<dyn FnMut() -> io::Result<Box<dyn Write + Send>> + Send>;

/// The access log: cheap to clone, shared by every connection.
#[derive(Clone)]
pub struct AccessLog {
    sink: Arc<Sink>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

/// The request path's end of the channel.
struct Sink {
    lines: SyncSender<Message>,
    reopen: Arc<AtomicBool>,
    /// For `gateway_access_log_dropped_total`.
    state: Arc<State>,
}

enum Message {
    Line(Box<Entry>),
    /// Answered once every line sent before it is written.
    Flush(mpsc::Sender<()>),
}

impl AccessLog {
    /// Opens `target` and starts the writer; `None` when the log is off. Fails when the file
    /// cannot be opened for appending.
    pub fn open(target: &AccessLogTarget, state: Arc<State>) -> io::Result<Option<AccessLog>> {
        let opener: Opener = match target {
            AccessLogTarget::Off => return Ok(None),
            AccessLogTarget::Stdout => Box::new(|| Ok(Box::new(io::stdout()))),
            AccessLogTarget::File(path) => {
                let path = path.clone();
                Box::new(move || {
                    let file = std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(&path)?;
                    Ok(Box::new(file))
                })
            }
        };
        AccessLog::start(opener, CAPACITY, state).map(Some)
    }

    /// Starts a writer thread on what `open` opens, behind a channel of `capacity` lines.
    fn start(mut open: Opener, capacity: usize, state: Arc<State>) -> io::Result<AccessLog> {
        let out = open()?;
        let (lines, receive) = mpsc::sync_channel(capacity);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            receive,
            open,
            out,
            reopen: Arc::clone(&reopen),
            state: Arc::clone(&state),
            failures: 0,
        };
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || writer.run())?;
        Ok(AccessLog {
            sink: Arc::new(Sink {
                lines,
                reopen,
                state,
            }),
        })
    }

    /// Asks the writer to reopen the file before its next write (after a rotation).
    pub fn reopen(&self) {
        self.sink.reopen.store(true, Ordering::Release);
    }

    /// Waits up to `limit` until every line sent so far is written; whether they were.
    pub fn flush(&self, limit: Duration) -> bool {
        let (ack, acked) = mpsc::channel();
        let lines = self.sink.lines.clone();
        // Sent from a thread of its own: a full channel blocks the send, not the caller, which
        // waits at most `limit` (a writer stuck on its disk may never take it).
        let sent = std::thread::Builder::new()
            .name("access-log-flush".to_owned())
            .spawn(move || {
                let _ = lines.send(Message::Flush(ack));
            });
        sent.is_ok() && acked.recv_timeout(limit).is_ok()
    }

    /// The start of a client request's line: what the request says of itself once its path is
    /// normalised. `started` is when the gateway began on it.
    pub fn begin<B: Body>(
        &self,
        request: &Request<B>,
        remote: SocketAddr,
        started: Instant,
    ) -> Pending {
        let host = match request.uri().authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => request.headers().get(HOST).cloned(),
        };
        let entry = Entry {
            started,
            method: Some(request.method().clone()),
            host,
            uri: Some(request.uri().clone()),
            trace_id: trace_id(request),
            client: remote.ip().to_canonical(),
            bytes_in: request.body().size_hint().exact(),
            notes: Notes::default(),
            route: None,
            status: 0,
            config_version: 0,
            bytes_out: 0,
            latency: Duration::ZERO,
        };
        Pending {
            entry: Some(Box::new(entry)),
            sink: Arc::clone(&self.sink),
        }
    }

    /// The start of the line of a request refused before it could be parsed (a malformed or
    /// too large head, one that did not arrive in time): no method, host or path.
    pub fn begin_unparsed(&self, remote: SocketAddr) -> Pending {
        let entry = Entry {
            started: Instant::now(),
            method: None,
            host: None,
            uri: None,
            trace_id: None,
            client: remote.ip().to_canonical(),
            bytes_in: None,
            notes: Notes::default(),
            route: None,
            status: 0,
            config_version: 0,
            bytes_out: 0,
            latency: Duration::ZERO,
        };
        Pending {
            entry: Some(Box::new(entry)),
            sink: Arc::clone(&self.sink),
        }
    }
}

/// The writer thread's side.
struct Writer {
    receive: Receiver<Message>,
    open: Opener,
    out: Box<dyn Write + Send>,
    reopen: Arc<AtomicBool>,
    state: Arc<State>,
    /// Failed writes so far (a warning goes out for the first and every 1000th).
    failures: u64,
}

impl Writer {
    /// Writes lines until every sender is gone.
    fn run(mut self) {
        let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
        let mut acks = Vec::new();
        let mut pause = BUSY_POLL;
        loop {
            if self.reopen.swap(false, Ordering::AcqRel) {
                match (self.open)() {
                    Ok(out) => self.out = out,
                    Err(error) => {
                        warn!(%error, "cannot reopen the access log; writing on to the open file")
                    }
                }
            }
            let (mut lines, mut found) = (0, false);
            let now = Now::read();
            let gone = loop {
                match self.receive.try_recv() {
                    Ok(Message::Line(entry)) => {
                        entry.write_json(&now, &mut buf);
                        lines += 1;
                    }
                    Ok(Message::Flush(ack)) => acks.push(ack),
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
                found = true;
                if buf.len() >= WRITE_BATCH {
                    self.write(&mut buf, &mut lines);
                }
            };
            self.write(&mut buf, &mut lines);
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
            if gone {
                return;
            }
            pause = if found {
                BUSY_POLL
            } else {
                (pause * 2).min(IDLE_POLL)
            };
            // A pause between polls, not a deadline: it bounds nothing.
            std::thread::sleep(pause);
        }
    }

    /// Writes out `buf` (holding `lines` lines); lines a failed write loses are counted.
    fn write(&mut self, buf: &mut Vec<u8>, lines: &mut u64) {
        if buf.is_empty() {
            return;
        }
        if let Err(error) = self.out.write_all(buf).and_then(|()| self.out.flush()) {
            self.state.metrics.record_access_log_dropped(*lines);
            if self.failures.is_multiple_of(1000) {
                warn!(%error, "writing the access log failed; lines lost");
            }
            self.failures += 1;
        }
        buf.clear();
        *lines = 0;
    }
}

/// A client request's line on its way: finished, and handed to the writer, by
/// [`Pending::finish`] once the response body is written (or, if the caller never gets there,
/// when it is dropped).
pub struct Pending {
    entry: Option<Box<Entry>>,
    sink: Arc<Sink>,
}

impl Pending {
    /// What the request path notes on the way.
    pub(crate) fn notes(&self) -> Option<&Notes> {
        self.entry.as_ref().map(|entry| &entry.notes)
    }

    /// The route the request matched.
    pub(crate) fn routed(&mut self, route: &Arc<CompiledRoute>) {
        if let Some(entry) = &mut self.entry {
            entry.route = Some(Arc::clone(route));
        }
    }

    /// The answer's status, and the config version of the runtime that made it.
    pub(crate) fn answered(&mut self, status: http::StatusCode, config_version: u64) {
        if let Some(entry) = &mut self.entry {
            entry.status = status.as_u16();
            entry.config_version = config_version;
        }
    }

    /// The response is written, with `bytes_out` bytes of body: the line goes to the writer,
    /// or, when its buffer is full, is dropped and counted.
    pub fn finish(mut self, bytes_out: u64) {
        self.send(bytes_out);
    }

    fn send(&mut self, bytes_out: u64) {
        let Some(mut entry) = self.entry.take() else {
            return;
        };
        entry.bytes_out = bytes_out;
        entry.latency = entry.started.elapsed();
        match self.sink.lines.try_send(Message::Line(entry)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.sink.state.metrics.record_access_log_dropped(1);
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // The caller did not get to the end of the response (its task was cancelled): the
        // request is logged anyway, with no body bytes.
        self.send(0);
    }
}

/// What the request path learns about a client request on its way, for its line. Shared by
/// reference with whatever serves it, the concurrent sub-requests of a batch included.
#[derive(Default)]
pub(crate) struct Notes {
    seen: Mutex<Seen>,
    subrequests: AtomicU32,
}

#[derive(Default)]
struct Seen {
    /// The node tried last, and how long that exchange took to its response head.
    upstream: Option<(Authority, Duration)>,
    /// Whether the request's own plugins have run (consumer and id are theirs).
    identified: bool,
    consumer: Option<Arc<ConsumerRuntime>>,
    request_id: Option<HeaderValue>,
}

impl Notes {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An upstream exchange with `node` ended (answered or failed) after `elapsed`.
    pub(crate) fn tried(&self, node: &Authority, elapsed: Duration) {
        self.seen().upstream = Some((node.clone(), elapsed));
    }

    /// The request's plugins identified `consumer` and gave it `request_id`. The first call
    /// counts: the client request's own plugins run before any sub-request's.
    pub(crate) fn identified(
        &self,
        consumer: Option<&Arc<ConsumerRuntime>>,
        request_id: Option<&HeaderValue>,
    ) {
        let mut seen = self.seen();
        if !seen.identified {
            seen.identified = true;
            seen.consumer = consumer.cloned();
            seen.request_id = request_id.cloned();
        }
    }

    /// One more sub-request sent on the request's behalf (a batch's, or an endpoint plugin's).
    pub(crate) fn subrequest(&self) {
        self.subrequests.fetch_add(1, Ordering::Relaxed);
    }
}

/// A W3C trace id: 32 lowercase hex digits, not all zero.
type TraceId = [u8; 32];

/// The trace a request belongs to: the trace id of its W3C `traceparent` header when that is
/// valid (else none). This is the one place a request's trace id is decided. With tracing on,
/// the request path has pointed that header at the request's server span before the line
/// begins (`proxy::trace`), so the id is the trace the span joins or starts; off, it is the
/// client's.
pub(crate) fn trace_id<B>(request: &Request<B>) -> Option<TraceId> {
    parse_traceparent(request.headers().get("traceparent")?.as_bytes())
}

/// The trace id of a `traceparent` value (W3C Trace Context §3.2):
/// `version-traceid-parentid-flags`, lowercase hex; version `ff`, an all-zero trace or parent
/// id, or a version-00 value with anything after the flags, make it invalid. A later version
/// may append fields after a `-`.
fn parse_traceparent(value: &[u8]) -> Option<TraceId> {
    const LENGTH: usize = 55;
    let hex = |bytes: &[u8]| {
        bytes
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let head = value.get(..LENGTH)?;
    let (version, trace, parent, flags) = (&head[0..2], &head[3..35], &head[36..52], &head[53..]);
    let dashes = head[2] == b'-' && head[35] == b'-' && head[52] == b'-';
    let rest = &value[LENGTH..];
    let valid = dashes
        && hex(version)
        && version != b"ff"
        && hex(trace)
        && hex(parent)
        && hex(flags)
        && trace.iter().any(|&b| b != b'0')
        && parent.iter().any(|&b| b != b'0')
        && match version {
            b"00" => rest.is_empty(),
            _ => rest.is_empty() || rest[0] == b'-',
        };
    valid.then(|| {
        let mut id = [0u8; 32];
        id.copy_from_slice(trace);
        id
    })
}

/// The wall clock and the monotonic clock read together, to turn the instant a request
/// began into its wall-clock time on the writer's thread rather than read the wall clock on
/// the request path.
struct Now {
    wall: SystemTime,
    monotonic: Instant,
}

impl Now {
    fn read() -> Now {
        Now {
            wall: SystemTime::now(),
            monotonic: Instant::now(),
        }
    }

    /// The wall-clock time of `instant` (one in the past).
    fn of(&self, instant: Instant) -> SystemTime {
        self.wall - self.monotonic.saturating_duration_since(instant)
    }
}

/// One request's line, before formatting (which the writer thread does).
struct Entry {
    started: Instant,
    /// `None` (like the path) for a request refused before it was parsed.
    method: Option<Method>,
    host: Option<HeaderValue>,
    uri: Option<Uri>,
    trace_id: Option<TraceId>,
    client: IpAddr,
    bytes_in: Option<u64>,
    notes: Notes,
    route: Option<Arc<CompiledRoute>>,
    status: u16,
    config_version: u64,
    bytes_out: u64,
    latency: Duration,
}

impl Entry {
    /// Appends the line (with its newline) to `out`. Formatted by hand: through `write!` and
    /// `fmt`, formatting took more instructions than the rest of the line's life.
    fn write_json(&self, now: &Now, out: &mut Vec<u8>) {
        let seen = self.notes.seen();
        out.extend_from_slice(b"{\"time\":\"");
        rfc3339_millis(now.of(self.started), out);
        out.extend_from_slice(b"\",\"request_id\":");
        match &seen.request_id {
            Some(id) => string(out, &String::from_utf8_lossy(id.as_bytes())),
            None => {
                out.push(b'"');
                hex_u64(out, fastrand::u64(..));
                out.push(b'"');
            }
        }
        out.extend_from_slice(b",\"trace_id\":");
        match &self.trace_id {
            Some(id) => {
                out.push(b'"');
                out.extend_from_slice(id);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"method\":");
        optional(out, self.method.as_ref().map(Method::as_str));
        out.extend_from_slice(b",\"host\":");
        optional(
            out,
            self.host
                .as_ref()
                .map(|h| String::from_utf8_lossy(h.as_bytes())),
        );
        out.extend_from_slice(b",\"path\":");
        optional(out, self.uri.as_ref().map(Uri::path));
        out.extend_from_slice(b",\"route\":");
        optional(out, self.route.as_ref().map(|r| r.id.as_str()));
        out.extend_from_slice(b",\"consumer\":");
        optional(out, seen.consumer.as_ref().map(|c| c.id.as_str()));
        out.extend_from_slice(b",\"upstream\":");
        optional(out, seen.upstream.as_ref().map(|(node, _)| node.as_str()));
        out.extend_from_slice(b",\"status\":");
        number(out, u64::from(self.status));
        out.extend_from_slice(b",\"bytes_in\":");
        match self.bytes_in {
            Some(bytes) => number(out, bytes),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"bytes_out\":");
        number(out, self.bytes_out);
        out.extend_from_slice(b",\"latency_ms\":");
        millis(out, self.latency);
        out.extend_from_slice(b",\"upstream_latency_ms\":");
        match &seen.upstream {
            Some((_, elapsed)) => millis(out, *elapsed),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"config_version\":");
        number(out, self.config_version);
        out.extend_from_slice(b",\"client\":\"");
        match self.client {
            IpAddr::V4(ip) => {
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    number(out, u64::from(octet));
                }
            }
            IpAddr::V6(ip) => {
                // Writing to a Vec cannot fail.
                let _ = write!(out, "{ip}");
            }
        }
        out.push(b'"');
        let subrequests = self.notes.subrequests.load(Ordering::Relaxed);
        if subrequests > 0 {
            out.extend_from_slice(b",\"subrequests\":");
            number(out, u64::from(subrequests));
        }
        out.extend_from_slice(b"}\n");
    }
}

/// Appends `value` in decimal.
fn number(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Appends `value` as 16 lowercase hex digits.
fn hex_u64(out: &mut Vec<u8>, value: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(HEX[((value >> (shift * 4)) & 0xf) as usize]);
    }
}

/// Appends `value` zero-padded to `width` digits.
fn padded(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(value).as_bytes();
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits);
}

/// Appends `elapsed` in milliseconds with three decimals (whole microseconds).
fn millis(out: &mut Vec<u8>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    number(out, micros / 1000);
    out.push(b'.');
    padded(out, micros % 1000, 3);
}

/// Appends `text` as a JSON string.
fn string(out: &mut Vec<u8>, text: &str) {
    let plain = text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

/// Appends `text` as a JSON string, or `null`.
fn optional(out: &mut Vec<u8>, text: Option<impl AsRef<str>>) {
    match text {
        Some(text) => string(out, text.as_ref()),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends `time` as RFC 3339 in UTC with milliseconds (`2024-05-01T12:00:00.123Z`).
fn rfc3339_millis(time: SystemTime, out: &mut Vec<u8>) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    padded(out, year.max(0) as u64, 4);
    for (separator, value) in [
        (b'-', u64::from(month)),
        (b'-', u64::from(day)),
        (b'T', of_day / 3600),
        (b':', of_day % 3600 / 60),
        (b':', of_day % 60),
    ] {
        out.push(separator);
        padded(out, value, 2);
    }
    out.push(b'.');
    padded(out, u64::from(since.subsec_millis()), 3);
    out.push(b'Z');
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `response` with a body that counts what hyper's server writes of it and finishes `pending`
/// when it ends or is dropped.
pub fn count_body(response: Response<ProxyBody>, pending: Pending) -> Response<ProxyBody> {
    response.map(|inner| {
        let counted = Counted {
            inner,
            sent: 0,
            pending: Some(pending),
        };
        let boxed = BoxBody::new(counted.map_err(io::Error::other));
        Either::Left(Either::Left(Either::Right(boxed)))
    })
}

/// A response body that counts its data bytes for the access log.
struct Counted {
    inner: ProxyBody,
    sent: u64,
    pending: Option<Pending>,
}

impl Counted {
    fn finish(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.finish(self.sent);
        }
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Some(Err(_)) | None => this.finish(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests;
