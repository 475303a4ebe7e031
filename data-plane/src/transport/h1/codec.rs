//! The HTTP/1.1 wire format of an upstream exchange: the request head written, the response
//! head parsed (interim answers skipped, framing decided, hop-by-hop headers left out), and the
//! chunked decoder. Pure functions over buffers: no socket, no clock.

use std::mem::MaybeUninit;

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Version};

use super::exchange::Failed;
use crate::transport::headers::{self, HopHeaders, X_FORWARDED_FOR, put_header};

/// Headers a response map has room for beyond those the node sent.
pub(super) const RESPONSE_HEADROOM: usize = 4;
/// Headers a [`PassedHead`] holds; a response with more gets a map instead.
pub(super) const MAX_PASSED: usize = 16;
/// A response head larger than this is refused: no API answer needs more, and the limit bounds
/// what a broken node can make the gateway buffer.
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header lines per response head.
pub(super) const MAX_HEADERS: usize = 128;
// `build_head` keeps one bit per header line in a u128.
const _: () = assert!(MAX_HEADERS <= 128);
/// A chunk-size line, or the trailer section, longer than this is a broken node.
pub(super) const MAX_CHUNK_LINE: usize = 4 * 1024;

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
    pub(super) head: Bytes,
    pub(super) spans: [Span; MAX_PASSED],
    pub(super) count: usize,
    pub(super) has_date: bool,
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

/// The parts of a response head the exchange needs.
pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    /// Empty when the headers are `passed`.
    pub(super) headers: HeaderMap,
    pub(super) passed: Option<Box<PassedHead>>,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
}

/// How the request body is framed on the wire.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    Empty,
    Length(u64),
    Chunked,
}

/// Writes the request line and headers into `out` (cleared first). The body's framing headers
/// are the gateway's own: whatever the client sent was about its hop, already decoded. `hop`:
/// this hop's headers, written here in place of the client's lines for those names.
pub(crate) fn encode_head(
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

/// Parses a final response head from the front of `read`, skipping interim (1xx) heads.
/// `Ok(None)`: more bytes are needed.
/// `spans` is scratch space, kept with the connection so a response costs no allocation for it.
pub(super) fn parse_head(
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
pub(super) struct Span {
    pub(super) name: (u32, u32),
    pub(super) value: (u32, u32),
}

impl Span {
    /// The offsets of `header`, which borrows from a buffer starting at address `base`. A
    /// head is at most [`MAX_HEAD_BYTES`] long, so the offsets fit.
    pub(super) fn of(base: usize, header: &httparse::Header<'_>) -> Span {
        let offsets = |bytes: &[u8]| {
            let start = (bytes.as_ptr() as usize - base) as u32;
            (start, start + bytes.len() as u32)
        };
        Span {
            name: offsets(header.name.as_bytes()),
            value: offsets(header.value),
        }
    }

    pub(super) fn name_range(&self) -> std::ops::Range<usize> {
        self.name.0 as usize..self.name.1 as usize
    }

    pub(super) fn value_range(&self) -> std::ops::Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }
}

/// Builds the response head the client will see: framing decided from `Content-Length`,
/// `Transfer-Encoding` and `Connection`, and hop-by-hop headers (with those `Connection` lists)
/// left out, so callers need not strip them again. The headers go to a map or, if `form` asks
/// and they fit, stay in `head` as a [`PassedHead`].
pub(super) fn build_head(
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
        if headers::eq_lowercase(name, b"content-length") {
            let length = parse_length(value)
                .ok_or_else(|| Failed::Protocol("invalid Content-Length".into()))?;
            if content_length.is_some_and(|earlier| earlier != length) {
                return Err(Failed::Protocol("conflicting Content-Length values".into()));
            }
            content_length = Some(length);
        } else if headers::eq_lowercase(name, b"transfer-encoding") {
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
                if chunked || !headers::eq_lowercase(coding, b"chunked") {
                    return Err(Failed::Protocol(format!(
                        "unsupported Transfer-Encoding {:?}",
                        String::from_utf8_lossy(value)
                    )));
                }
                chunked = true;
            }
        } else if headers::eq_lowercase(name, b"connection") {
            persistence.add(value);
            listed.extend(headers::connection_listed(value));
        } else if headers::eq_lowercase(name, b"date") {
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
            || (transfer_encoded && headers::eq_lowercase(name, b"content-length"));
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
        // The head itself, not a clone: a clone and the drop of the original were two atomic
        // operations on its reference count per response.
        let mut passed = Box::new(PassedHead {
            head,
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
pub(super) fn parse_length(value: &[u8]) -> Option<u64> {
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
pub(super) enum Framing {
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
pub(super) enum Chunked {
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
pub(super) enum Decoded {
    Data(Bytes),
    NeedMore,
    End,
}

impl Chunked {
    /// Decodes from the front of `read` until data, the end, or a need for more bytes.
    pub(super) fn decode(&mut self, read: &mut BytesMut) -> Result<Decoded, String> {
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
pub(super) fn take_line(read: &mut BytesMut) -> Result<Option<Bytes>, String> {
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
