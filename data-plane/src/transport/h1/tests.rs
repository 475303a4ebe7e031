//! The HTTP/1.1 client against nodes scripted byte by byte: the chunked decoder and the head
//! parser on their own, then whole exchanges over real sockets on 127.0.0.1.

use http::header::CONTENT_TYPE;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout};

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, HeaderValue, TRANSFER_ENCODING};
use http::{Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::codec::*;
use super::exchange::*;
use super::{HeadForm, Pool, PoolLimits, ResponseBody, send};
use crate::error::{ProxyError, TimeoutPhase};
use crate::transport::body::{UpstreamBody, empty_body};
use crate::transport::headers::HopHeaders;

const LIMITS: PoolLimits = PoolLimits {
    size: 4,
    idle_timeout: Duration::from_secs(60),
};

/// Both deadlines of [`send`] in the tests that are not about them: long enough for a loaded
/// machine, short enough that a client waiting for the wrong thing fails the test quickly.
const TIMEOUT: Duration = Duration::from_secs(5);

// ---- The chunked decoder ----

/// Runs `decoder` over `read` until it needs more bytes or reaches the end, appending the data
/// it yields to `data`. `Ok(true)`: the end.
fn drain(decoder: &mut Chunked, read: &mut BytesMut, data: &mut Vec<u8>) -> Result<bool, String> {
    loop {
        match decoder.decode(read)? {
            Decoded::Data(bytes) => data.extend_from_slice(&bytes),
            Decoded::NeedMore => return Ok(false),
            Decoded::End => return Ok(true),
        }
    }
}

/// Feeds `pieces` to one decoder in turn, as successive reads off a socket would arrive: the
/// data decoded, whether the end was reached, and the bytes left unread after it.
fn decode_pieces<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(Vec<u8>, bool, BytesMut), String> {
    let mut decoder = Chunked::Size;
    let mut read = BytesMut::new();
    let mut data = Vec::new();
    let mut ended = false;
    for piece in pieces {
        read.extend_from_slice(piece);
        if !ended {
            ended = drain(&mut decoder, &mut read, &mut data)?;
        }
    }
    Ok((data, ended, read))
}

/// Decodes a body given in one piece; it must end, and nothing may follow it.
fn decode_whole(wire: &[u8]) -> Vec<u8> {
    let (data, ended, rest) = decode_pieces([wire]).unwrap();
    assert!(ended, "the body did not end");
    assert!(rest.is_empty(), "bytes left after the end: {rest:?}");
    data
}

/// `wire` must be refused, whether it arrives whole or one byte at a time.
fn assert_rejected(wire: &[u8]) {
    let shown = String::from_utf8_lossy(&wire[..wire.len().min(40)]);
    if let Ok((data, ended, _)) = decode_pieces([wire]) {
        panic!("accepted whole: {shown:?}... -> {data:?}, ended: {ended}");
    }
    if let Ok((data, ended, _)) = decode_pieces(wire.chunks(1)) {
        panic!("accepted byte by byte: {shown:?}... -> {data:?}, ended: {ended}");
    }
}

/// The header lines of a request head, names lowercased, sorted: what a node sees, whatever
/// the order.
fn header_lines(head: &[u8]) -> Vec<(String, String)> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut slots);
    assert!(request.parse(head).unwrap().is_complete(), "{head:?}");
    let mut lines: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8(h.value.to_vec()).unwrap();
            (h.name.to_ascii_lowercase(), value)
        })
        .collect();
    lines.sort();
    lines
}

/// Two hops: a plain IPv4 client, and an IPv4-mapped IPv6 client over HTTPS whose host is
/// rewritten and forwarded (shared with the exchange's `WrittenHead` test).
pub(super) fn sample_hops() -> [HopHeaders; 2] {
    [
        HopHeaders {
            client: "10.0.0.1".parse().unwrap(),
            forwarded_host: None,
            host: None,
            https: false,
        },
        HopHeaders {
            client: "::ffff:192.0.2.7".parse().unwrap(),
            forwarded_host: Some(HeaderValue::from_static("api.example.com")),
            host: Some(HeaderValue::from_static("node.internal")),
            https: true,
        },
    ]
}

#[test]
fn hop_headers_written_with_the_head_are_those_put_into_the_map() {
    let hops = sample_hops();
    let clients: [&[(&str, &str)]; 3] = [
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
        // Near misses of the names this hop writes are the client's own.
        &[
            ("X-Forwarded-For", "10.0.0.9"),
            ("x-forwarded-protocol", "kept"),
            ("x-forwarded-hos", "kept"),
            ("x-forwarded", "kept"),
        ],
    ];
    for hop in &hops {
        for client in clients {
            let mut request = Request::get("http://node:8080/x?y=1");
            for (name, value) in client {
                request = request.header(*name, *value);
            }
            let (parts, ()) = request.body(()).unwrap().into_parts();
            let mut written = Vec::new();
            encode_head(&mut written, &parts, Some(hop), BodyFraming::Empty);

            let mut applied = parts.clone();
            hop.apply(&mut applied.headers);
            let mut from_map = Vec::new();
            encode_head(&mut from_map, &applied, None, BodyFraming::Empty);

            let lines = header_lines(&written);
            assert_eq!(lines, header_lines(&from_map), "{hop:?} {client:?}");
            let forwarded_for = lines.iter().filter(|(name, _)| name == "x-forwarded-for");
            assert_eq!(forwarded_for.count(), 1, "{lines:?}");
            assert!(!lines.iter().any(|(name, _)| name == "expect"), "{lines:?}");
            assert!(written.starts_with(b"GET /x?y=1 HTTP/1.1\r\n"));
        }
    }
}

#[test]
fn chunk_sizes_in_either_hex_case_and_with_extensions_are_decoded() {
    let wire =
        b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\nb; name=\"x;y\"\r\nabcdefghijk\r\n0\r\n\r\n";
    assert_eq!(decode_whole(wire), b"hello0123456789abcdefghijk");
}

#[test]
fn a_chunked_body_split_at_any_byte_is_decoded() {
    // Reads end wherever the network puts them: inside a size line, its CRLF, the data, the
    // CRLF after the data or the trailers.
    let wire = b"5;ext=1\r\nhello\r\n9\r\n, chunked\r\n0\r\nx-checksum: 1\r\n\r\n";
    for split in 0..=wire.len() {
        let (data, ended, rest) = decode_pieces([&wire[..split], &wire[split..]]).unwrap();
        assert_eq!(data, b"hello, chunked", "split at {split}");
        assert!(ended, "split at {split}: no end");
        assert!(rest.is_empty(), "split at {split}: {rest:?} left");
    }
}

#[test]
fn a_chunked_body_fed_one_byte_at_a_time_is_decoded() {
    let wire = b"5;ext=1\r\nhello\r\n9\r\n, chunked\r\n0\r\nx-checksum: 1\r\n\r\n";
    let (data, ended, rest) = decode_pieces(wire.chunks(1)).unwrap();
    assert_eq!(data, b"hello, chunked");
    assert!(ended);
    assert!(rest.is_empty());
}

#[test]
fn the_end_of_a_chunked_body_waits_for_the_empty_line() {
    // "0\r\n" alone is not the end: the trailer section and its empty line still follow, and
    // a connection returned to the pool before them would start the next response with them.
    let (data, ended, _) = decode_pieces([b"3\r\nabc\r\n0\r\n".as_slice()]).unwrap();
    assert_eq!(data, b"abc");
    assert!(!ended);
}

#[test]
fn trailers_are_skipped_and_bytes_after_the_end_are_left_unread() {
    let wire = b"3\r\nabc\r\n0\r\nexpires: never\r\nx-checksum: 42\r\n\r\nHTTP/1.1 200 OK\r\n";
    let (data, ended, rest) = decode_pieces([wire.as_slice()]).unwrap();
    assert_eq!(data, b"abc");
    assert!(ended);
    // Whatever follows belongs to no body of ours: it must stay for the caller to see (and
    // refuse to pool the connection).
    assert_eq!(&rest[..], b"HTTP/1.1 200 OK\r\n");
}

#[test]
fn a_bare_lf_in_a_chunked_body_is_rejected() {
    assert_rejected(b"5\nhello\r\n0\r\n\r\n");
    assert_rejected(b"5\r\nhello\r\n0\n\r\n");
    assert_rejected(b"5\r\nhello\r\n0\r\nx-trailer: 1\n\r\n");
}

#[test]
fn chunk_data_not_followed_by_crlf_is_rejected() {
    // The size said 5; a sixth byte means the node and the gateway disagree on the framing.
    assert_rejected(b"5\r\nhello!\r\n0\r\n\r\n");
    assert_rejected(b"5\r\nhello\n0\r\n\r\n");
}

#[test]
fn a_chunk_size_of_more_than_16_hex_digits_is_rejected() {
    assert_rejected(b"10000000000000000\r\n");
    // Even when its value is small: the limit is on the line, not the number.
    assert_rejected(b"00000000000000005\r\nhello\r\n0\r\n\r\n");
}

#[test]
fn a_chunk_size_of_16_hex_digits_is_accepted() {
    let mut decoder = Chunked::Size;
    let mut read = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
    assert_eq!(
        decoder.decode(&mut read),
        Ok(Decoded::Data(Bytes::from_static(b"ab")))
    );
    assert_eq!(decoder, Chunked::Data(u64::MAX - 2));
}

#[test]
fn a_chunk_size_that_is_not_hex_is_rejected() {
    for size in ["g", "0x5", "-5", "5 5", "", " ", ";ext=1", "é"] {
        assert_rejected(format!("{size}\r\nhello\r\n0\r\n\r\n").as_bytes());
    }
}

#[test]
fn a_chunk_size_with_a_plus_sign_is_rejected() {
    // chunk-size = 1*HEXDIG (RFC 9112 §7.1); `u64::from_str_radix` also takes a leading '+'.
    assert_rejected(b"+5\r\nhello\r\n0\r\n\r\n");
}

#[test]
fn a_chunk_line_that_grows_past_the_limit_is_rejected() {
    // No LF in sight after 4 KiB: a broken node, not a line worth buffering further.
    let mut long_size = b"5;".to_vec();
    long_size.resize(MAX_CHUNK_LINE + 1, b'x');
    assert_rejected(&long_size);

    let mut long_trailer = b"3\r\nabc\r\n0\r\nx-trailer: ".to_vec();
    long_trailer.resize(long_trailer.len() + MAX_CHUNK_LINE + 1, b'x');
    assert_rejected(&long_trailer);
}

#[test]
fn a_chunk_line_over_the_limit_is_rejected_even_when_it_arrives_whole() {
    // MAX_CHUNK_LINE says a longer line is a broken node; whether its LF came in the same read
    // should not change that.
    let mut wire = b"5;".to_vec();
    wire.resize(MAX_CHUNK_LINE + 100, b'x');
    wire.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    assert_rejected(&wire);
}

// ---- The response head ----

/// Parses a head that must be complete: the head with its headers in a map, and the bytes
/// left in the buffer. The head is parsed in the passed-through form too, which must agree
/// on everything the client would see.
fn parse(wire: &[u8], head_only: bool) -> (Head, BytesMut) {
    let (head, read) = parse_as(wire, head_only, HeadForm::Map);
    let (passed, passed_read) = parse_as(wire, head_only, HeadForm::Passed);
    assert_eq!(
        visible(&passed),
        visible(&head),
        "the two forms differ for {wire:?}"
    );
    assert_eq!(
        (
            passed.status,
            passed.framing,
            passed.keep_alive,
            &passed_read[..]
        ),
        (head.status, head.framing, head.keep_alive, &read[..])
    );
    (head, read)
}

fn parse_as(wire: &[u8], head_only: bool, form: HeadForm) -> (Head, BytesMut) {
    let mut read = BytesMut::from(wire);
    match parse_head(&mut read, &mut Vec::new(), head_only, form) {
        Ok(Some(head)) => (head, read),
        Ok(None) => panic!("incomplete head: {wire:?}"),
        Err(failed) => panic!("refused head: {failed:?}"),
    }
}

/// The headers a client would get from `head`, names lowercased, in order.
fn visible(head: &Head) -> Vec<(String, Vec<u8>)> {
    let from_map = head
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()));
    let passed = head
        .passed
        .iter()
        .flat_map(|passed| passed.iter())
        .map(|(name, value)| {
            (
                String::from_utf8_lossy(name).to_ascii_lowercase(),
                value.to_vec(),
            )
        });
    let mut all: Vec<_> = from_map.chain(passed).collect();
    // A map groups repeated names; the passed form keeps the node's order.
    all.sort();
    all
}

/// Parses a head that must be refused: the reason.
fn parse_error(wire: &[u8]) -> String {
    match parse_head(
        &mut BytesMut::from(wire),
        &mut Vec::new(),
        false,
        HeadForm::Map,
    ) {
        Err(Failed::Protocol(reason)) => reason,
        Err(other) => panic!("expected a protocol error, got {other:?}"),
        Ok(Some(head)) => panic!("expected an error, got a {} head", head.status),
        Ok(None) => panic!("expected an error, got a need for more bytes"),
    }
}

#[test]
fn a_partial_head_needs_more_bytes_and_consumes_none() {
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n";
    let mut read = BytesMut::from(&wire[..]);
    assert!(matches!(
        parse_head(&mut read, &mut Vec::new(), false, HeadForm::Map),
        Ok(None)
    ));
    assert_eq!(&read[..], wire);
}

#[test]
fn interim_responses_are_skipped_for_the_final_one() {
    let wire = b"HTTP/1.1 100 Continue\r\n\r\n\
        HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n\
        HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let (head, rest) = parse(wire, false);
    assert_eq!(head.status, StatusCode::OK);
    // The 103's headers were about the 103.
    assert!(!head.headers.contains_key("link"));
    assert_eq!(head.framing, Framing::Length(2));
    assert_eq!(&rest[..], b"ok");
}

#[test]
fn an_interim_response_without_the_final_one_yet_needs_more_bytes() {
    let mut read = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2"[..]);
    assert!(matches!(
        parse_head(&mut read, &mut Vec::new(), false, HeadForm::Map),
        Ok(None)
    ));
    read.extend_from_slice(b"04 No Content\r\n\r\n");
    let head = parse_head(&mut read, &mut Vec::new(), false, HeadForm::Map)
        .unwrap()
        .unwrap();
    assert_eq!(head.status, StatusCode::NO_CONTENT);
    assert!(read.is_empty());
}

#[test]
fn a_101_response_is_an_error() {
    // We never ask for an upgrade here; a node that switches protocols is out of step.
    let reason = parse_error(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
    assert!(reason.contains("101"), "{reason}");
}

#[test]
fn a_response_to_head_has_no_body_whatever_its_headers_say() {
    let (head, rest) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", true);
    assert_eq!(head.framing, Framing::Length(0));
    assert!(head.keep_alive);
    // The length describes the GET answer and goes to the client as is.
    assert_eq!(head.headers[CONTENT_LENGTH], "1000");
    assert!(rest.is_empty());

    let (head, _) = parse(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        true,
    );
    assert_eq!(head.framing, Framing::Length(0));
}

#[test]
fn no_content_and_not_modified_responses_have_no_body() {
    // Without a length these would otherwise read until close and never pool the connection.
    let (head, _) = parse(b"HTTP/1.1 204 No Content\r\n\r\n", false);
    assert_eq!(head.framing, Framing::Length(0));
    assert!(head.keep_alive);

    let (head, rest) = parse(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\nHTTP/1.1",
        false,
    );
    assert_eq!(head.framing, Framing::Length(0));
    assert!(head.keep_alive);
    assert_eq!(&rest[..], b"HTTP/1.1");
}

#[test]
fn transfer_encoding_chunked_overrides_content_length() {
    let (head, _) = parse(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
    );
    assert_eq!(head.framing, Framing::Chunked(Chunked::Size));
    // A length next to the chunked coding must not reach the client (RFC 9112 §6.3) ...
    assert!(!head.headers.contains_key(CONTENT_LENGTH));
    // ... and a node that sends both is not trusted with another exchange.
    assert!(!head.keep_alive);
}

#[test]
fn chunked_is_the_one_transfer_coding_accepted() {
    // Empty list elements do not count (RFC 9110 §5.6.1).
    let (head, _) = parse(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n",
        false,
    );
    assert_eq!(head.framing, Framing::Chunked(Chunked::Size));
    assert!(head.keep_alive);
    // Any other coding would reach the client still applied, unannounced: refused.
    for coding in [
        "gzip, Chunked",
        "chunked, gzip",
        "gzip",
        "chunked, chunked",
        "",
    ] {
        let head = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {coding}\r\n\r\n");
        let reason = parse_error(head.as_bytes());
        assert!(reason.contains("Transfer-Encoding"), "{coding}: {reason}");
    }
}

#[test]
fn conflicting_content_lengths_are_an_error() {
    let reason = parse_error(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
    assert!(reason.contains("conflicting"), "{reason}");
}

#[test]
fn repeated_identical_content_lengths_are_accepted() {
    let (head, _) = parse(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        false,
    );
    assert_eq!(head.framing, Framing::Length(5));
}

#[test]
fn an_invalid_content_length_is_an_error() {
    for value in [
        "abc",
        "-1",
        "+5",
        "",
        " ",
        "5, 5",
        "5 5",
        "0x10",
        "18446744073709551616",
    ] {
        let wire = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\n");
        let reason = parse_error(wire.as_bytes());
        assert!(reason.contains("Content-Length"), "{value:?}: {reason}");
    }
}

#[test]
fn a_content_length_with_a_plus_sign_is_an_error() {
    // Content-Length = 1*DIGIT (RFC 9110 §8.6); `str::parse::<u64>` also takes a leading '+'.
    let reason = parse_error(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello");
    assert!(reason.contains("Content-Length"), "{reason}");
}

#[test]
fn an_http_1_0_response_closes_unless_it_asks_for_keep_alive() {
    let (head, _) = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", false);
    assert_eq!(head.version, Version::HTTP_10);
    assert!(!head.keep_alive);

    let (head, _) = parse(
        b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\n",
        false,
    );
    assert_eq!(head.version, Version::HTTP_10);
    assert!(head.keep_alive);
}

#[test]
fn connection_close_is_not_keep_alive() {
    let (head, _) = parse(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n",
        false,
    );
    assert!(!head.keep_alive);

    // A token among others, in any case.
    let (head, _) = parse(
        b"HTTP/1.1 200 OK\r\nConnection: x-trace, CLOSE\r\nContent-Length: 2\r\n\r\n",
        false,
    );
    assert!(!head.keep_alive);
}

#[test]
fn close_wins_over_keep_alive_and_http_1_0_chunked_is_not_reused() {
    let (head, _) = parse(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
        false,
    );
    assert!(!head.keep_alive);
    let (head, _) = parse(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
    );
    assert_eq!(head.framing, Framing::Chunked(Chunked::Size));
    assert!(!head.keep_alive);
}

#[test]
fn hop_by_hop_headers_and_the_ones_connection_lists_are_left_out() {
    let (head, _) = parse(
        b"HTTP/1.1 200 OK\r\nX-Before: 1\r\nConnection: keep-alive, X-Before, x-after\r\n\
          Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nX-After: 2\r\n\
          X-Kept: 3\r\nContent-Length: 2\r\n\r\n",
        false,
    );
    assert!(head.keep_alive);
    let mut names: Vec<&str> = head.headers.keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["content-length", "x-kept"]);
}

#[test]
fn a_response_without_length_or_transfer_encoding_runs_until_close() {
    let (head, _) = parse(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
        false,
    );
    assert_eq!(head.framing, Framing::UntilClose);
    assert!(!head.keep_alive);
}

#[test]
fn header_values_are_kept_byte_for_byte() {
    let mut wire = b"HTTP/1.1 200 OK\r\nETag: W/\"a  b\"\r\nX-Raw: tab\there; \"q\"=1 ".to_vec();
    // obs-text (RFC 9110 §5.5): not UTF-8, still a valid value.
    wire.extend_from_slice(b"caf\xe9\r\n");
    wire.extend_from_slice(b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n");
    let (head, _) = parse(&wire, false);
    assert_eq!(head.headers["etag"].as_bytes(), b"W/\"a  b\"");
    assert_eq!(
        head.headers["x-raw"].as_bytes(),
        b"tab\there; \"q\"=1 caf\xe9"
    );
    let cookies: Vec<_> = head
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
}

#[test]
fn bytes_after_the_head_stay_in_the_buffer() {
    let (head, rest) = parse(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 204",
        false,
    );
    assert_eq!(head.framing, Framing::Length(5));
    assert_eq!(&rest[..], b"helloHTTP/1.1 204");
}

#[test]
fn a_head_with_128_headers_is_accepted_and_one_with_129_is_not() {
    let head_with = |count: usize| {
        let mut wire = String::from("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n");
        for i in 1..count {
            wire.push_str(&format!("x-h{i}: {i}\r\n"));
        }
        wire + "\r\n"
    };
    let (head, _) = parse(head_with(MAX_HEADERS).as_bytes(), false);
    assert_eq!(head.headers.len(), MAX_HEADERS);
    let reason = parse_error(head_with(MAX_HEADERS + 1).as_bytes());
    assert!(reason.contains("too many headers"), "{reason}");
}

// ---- Exchanges with scripted nodes ----

/// A node the test scripts by hand: a listener on an ephemeral port of 127.0.0.1.
async fn node() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    (listener, address)
}

/// Reads one whole request (head and body) off `stream`: its bytes, or `None` if the
/// connection ended first.
async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut buf = [0; 4096];
    loop {
        if let Some(length) = request_length(&received) {
            assert_eq!(length, received.len(), "more than one request at once");
            return Some(received);
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// The length of the request at the front of `received`, once it is all there.
fn request_length(received: &[u8]) -> Option<usize> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut slots);
    let httparse::Status::Complete(head) = request.parse(received).unwrap() else {
        return None;
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).unwrap())
    };
    if header("transfer-encoding") == Some("chunked") {
        return dechunk(&received[head..]).map(|(_, used)| head + used);
    }
    let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
    (received.len() >= head + length).then_some(head + length)
}

/// Decodes a complete chunked body without extensions or trailers: its data and length, or
/// `None` while incomplete. Strict, and apart from [`Chunked`], so it checks the encoder
/// rather than agreeing with the decoder.
fn dechunk(wire: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut data = Vec::new();
    let mut at = 0;
    loop {
        let line = at + find(&wire[at..], b"\r\n")?;
        let size = std::str::from_utf8(&wire[at..line]).unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        at = line + 2;
        if wire.len() < at + size + 2 {
            return None;
        }
        data.extend_from_slice(&wire[at..at + size]);
        assert_eq!(
            &wire[at + size..at + size + 2],
            b"\r\n",
            "chunk without CRLF"
        );
        at += size + 2;
        if size == 0 {
            return Some((data, at));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A 200 response with a Content-Length body.
fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn get(address: &str, path: &str) -> Request<UpstreamBody> {
    Request::get(format!("http://{address}{path}"))
        .body(empty_body())
        .unwrap()
}

fn post(address: &str, path: &str, body: &'static str) -> Request<UpstreamBody> {
    Request::post(format!("http://{address}{path}"))
        .body(Either::Right(Full::new(Bytes::from_static(
            body.as_bytes(),
        ))))
        .unwrap()
}

async fn send_to(
    pool: &Arc<Pool>,
    address: &str,
    request: Request<UpstreamBody>,
) -> Result<Response<ResponseBody>, ProxyError> {
    send(
        pool,
        LIMITS,
        address,
        request,
        None,
        HeadForm::Map,
        TIMEOUT,
        TIMEOUT,
    )
    .await
}

/// `GET /` to the node at `address`, with these pool limits and read timeout.
async fn get_root(
    pool: &Arc<Pool>,
    limits: PoolLimits,
    address: &str,
    read_timeout: Duration,
) -> Result<Response<ResponseBody>, ProxyError> {
    let request = get(address, "/");
    send(
        pool,
        limits,
        address,
        request,
        None,
        HeadForm::Map,
        TIMEOUT,
        read_timeout,
    )
    .await
}

async fn body_of(response: Response<ResponseBody>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

/// The node's message in an `UpstreamRequest` error; panics on any other result.
fn upstream_request_error(result: Result<Response<ResponseBody>, ProxyError>) -> String {
    match result {
        Err(ProxyError::UpstreamRequest { source, .. }) => source.to_string(),
        Err(other) => panic!("expected an UpstreamRequest error, got {other:?}"),
        Ok(response) => panic!(
            "expected an UpstreamRequest error, got a {} response with {} headers",
            response.status(),
            response.headers().len()
        ),
    }
}

#[tokio::test]
async fn a_content_length_body_is_read_and_its_connection_reused() {
    let (listener, address) = node().await;
    // One accept only: a second connection would wait here forever and fail the test.
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        for body in ["first", "second"] {
            read_request(&mut stream).await.unwrap();
            stream.write_all(ok(body).as_bytes()).await.unwrap();
        }
    });
    let pool = Arc::new(Pool::default());

    let response = send_to(&pool, &address, get(&address, "/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_LENGTH], "5");
    assert_eq!(pool.idle_count(), 0, "pooled before its body was read");
    assert_eq!(body_of(response).await, "first");
    assert_eq!(pool.idle_count(), 1);

    let response = send_to(&pool, &address, get(&address, "/")).await.unwrap();
    assert_eq!(pool.idle_count(), 0);
    assert_eq!(body_of(response).await, "second");
    assert_eq!(pool.idle_count(), 1);
    server.await.unwrap();
}

#[tokio::test]
async fn a_response_head_split_across_reads_is_parsed() {
    let (listener, address) = node().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        for piece in ["HTTP/1.1 200 OK\r\nContent-Le", "ngth: 2\r", "\n\r\no", "k"] {
            stream.write_all(piece.as_bytes()).await.unwrap();
            sleep(Duration::from_millis(10)).await;
        }
        read_request(&mut stream).await
    });
    let pool = Arc::new(Pool::default());
    let response = send_to(&pool, &address, get(&address, "/")).await.unwrap();
    assert_eq!(body_of(response).await, "ok");
    assert_eq!(pool.idle_count(), 1);
}

#[tokio::test]
async fn a_chunked_body_written_in_several_pieces_is_decoded_whole() {
    let (listener, address) = node().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        for piece in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "5\r\nhel",
            "lo\r\n7;ext=1\r\n, world",
            "\r\n1\r\n!\r\n0\r",
            "\n\r\n",
        ] {
            stream.write_all(piece.as_bytes()).await.unwrap();
            sleep(Duration::from_millis(10)).await;
        }
        read_request(&mut stream).await
    });
    let pool = Arc::new(Pool::default());
    let response = send_to(&pool, &address, get(&address, "/")).await.unwrap();
    assert_eq!(body_of(response).await, "hello, world!");
    // The end of the chunked body leaves the connection ready for another exchange.
    assert_eq!(pool.idle_count(), 1);
}

#[tokio::test]
async fn an_until_close_body_is_read_to_the_end_and_not_pooled() {
    let (listener, address) = node().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\n\r\nsome")
            .await
            .unwrap();
        sleep(Duration::from_millis(20)).await;
        stream.write_all(b" more").await.unwrap();
    });
    let pool = Arc::new(Pool::default());
    let response = send_to(&pool, &address, get(&address, "/")).await.unwrap();
    assert_eq!(body_of(response).await, "some more");
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn a_response_with_connection_close_is_not_pooled() {
    let (listener, address) = node().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        let response = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
        stream.write_all(response.as_bytes()).await.unwrap();
        read_request(&mut stream).await
    });
    let pool = Arc::new(Pool::default());
    let response = send_to(&pool, &address, get(&address, "/")).await.unwrap();
    assert_eq!(body_of(response).await, "ok");
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn a_response_to_head_is_complete_at_once_and_pooled() {
    let (listener, address) = node().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        // The length of the GET answer, and no body.
        let response = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        stream.write_all(response.as_bytes()).await.unwrap();
        read_request(&mut stream).await
    });
    let pool = Arc::new(Pool::default());
    let request = Request::head(format!("http://{address}/"))
        .body(empty_body())
        .unwrap();
    let response = send_to(&pool, &address, request).await.unwrap();
    assert_eq!(response.headers()[CONTENT_LENGTH], "100");
    assert!(response.body().is_end_stream());
    // Nothing more to read: the connection is back before anyone polls the body.
    assert_eq!(pool.idle_count(), 1);
    assert_eq!(body_of(response).await, "");
}

#[tokio::test]
async fn a_response_with_bytes_beyond_its_body_is_not_pooled() {
    let (listener, address) = node().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        // One write, so the stray bytes arrive with the body.
        let response = ok("ok") + "HTTP/1.1 200 OK\r\n";
        stream.write_all(response.as_bytes()).await.unwrap();
        read_request(&mut stream).await
    });
    let pool = Arc::new(Pool::default());
    let response = send_to(&pool, &address, get(&address, "/")).await.unwrap();
    assert_eq!(body_of(response).await, "ok");
    // The next exchange would read the stray bytes as its answer.
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn dropping_a_body_before_its_end_closes_the_connection() {
    let (listener, address) = node().await;
    let (sent, sent_rx) = oneshot::channel();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello";
        stream.write_all(head.as_bytes()).await.unwrap();
        sent.send(()).unwrap();
        // What the node sees next: the connection's end, not another request.
        read_request(&mut stream).await
    });
    let pool = Arc::new(Pool::default());
    let response = send_to(&pool, &address, get(&address, "/")).await.unwrap();
    sent_rx.await.unwrap();
    let mut body = response.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "hello");
    drop(body);
    assert_eq!(pool.idle_count(), 0);
    let next = timeout(TIMEOUT, server).await.unwrap().unwrap();
    assert_eq!(next, None);
}

#[tokio::test]
async fn a_body_cut_short_by_the_node_is_an_error_and_not_pooled() {
    let (listener, address) = node().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        let response = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello";
        stream.write_all(response.as_bytes()).await.unwrap();
    });
    let pool = Arc::new(Pool::default());
    let response = send_to(&pool, &address, get(&address, "/")).await.unwrap();
    let error = response.into_body().collect().await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn a_pooled_connection_the_node_closed_while_idle_is_not_used() {
    let (listener, address) = node().await;
    let (closed, closed_rx) = oneshot::channel();
    let server = tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        read_request(&mut first).await.unwrap();
        first.write_all(ok("one").as_bytes()).await.unwrap();
        drop(first);
        closed.send(()).unwrap();
        let (mut second, _) = listener.accept().await.unwrap();
        let request = read_request(&mut second).await.unwrap();
        second.write_all(ok("two").as_bytes()).await.unwrap();
        request
    });
    let pool = Arc::new(Pool::default());
    let response = send_to(&pool, &address, get(&address, "/")).await.unwrap();
    assert_eq!(body_of(response).await, "one");
    assert_eq!(pool.idle_count(), 1);
    closed_rx.await.unwrap();
    // Let the runtime's driver see the close (the check at checkout reads no socket).
    sleep(Duration::from_millis(20)).await;

    // A POST cannot be sent again, so it only succeeds if the dead connection was never tried.
    let response = send_to(&pool, &address, post(&address, "/items", "data"))
        .await
        .unwrap();
    assert_eq!(body_of(response).await, "two");
    let request = server.await.unwrap();
    assert!(request.starts_with(b"POST /items HTTP/1.1\r\n"));
}

#[tokio::test]
async fn a_pooled_connection_with_unsolicited_bytes_is_not_used() {
    // Some servers say "408 Request Timeout" on an idle connection before closing it.
    let (listener, address) = node().await;
    let (spoke, spoke_rx) = oneshot::channel();
    let server = tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        read_request(&mut first).await.unwrap();
        first.write_all(ok("one").as_bytes()).await.unwrap();
        sleep(Duration::from_millis(20)).await;
        let timeout_answer = "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n";
        first.write_all(timeout_answer.as_bytes()).await.unwrap();
        spoke.send(()).unwrap();
        let (mut second, _) = listener.accept().await.unwrap();
        read_request(&mut second).await.unwrap();
        second.write_all(ok("two").as_bytes()).await.unwrap();
        first
    });
    let pool = Arc::new(Pool::default());
    let response = send_to(&pool, &address, get(&address, "/")).await.unwrap();
    assert_eq!(body_of(response).await, "one");
    spoke_rx.await.unwrap();
    sleep(Duration::from_millis(20)).await;

    let response = send_to(&pool, &address, post(&address, "/items", "data"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_of(response).await, "two");
    server.await.unwrap();
}

#[tokio::test]
async fn a_get_on_a_reused_connection_closed_without_answer_is_sent_again() {
    let (listener, address) = node().await;
    let server = tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        read_request(&mut first).await.unwrap();
        first.write_all(ok("one").as_bytes()).await.unwrap();
        // The node reads the next request and closes: it had decided to close just as the
        // gateway reused the connection.
        let lost = read_request(&mut first).await.unwrap();
        drop(first);
        let (mut second, _) = listener.accept().await.unwrap();
        let again = read_request(&mut second).await.unwrap();
        second.write_all(ok("two").as_bytes()).await.unwrap();
        (lost, again)
    });
    let pool = Arc::new(Pool::default());
    let response = send_to(&pool, &address, get(&address, "/a")).await.unwrap();
    assert_eq!(body_of(response).await, "one");

    let response = send_to(&pool, &address, get(&address, "/b")).await.unwrap();
    assert_eq!(body_of(response).await, "two");
    assert_eq!(pool.idle_count(), 1);
    let (lost, again) = server.await.unwrap();
    assert!(lost.starts_with(b"GET /b HTTP/1.1\r\n"));
    assert_eq!(lost, again, "the request went again unchanged");
}

#[tokio::test]
async fn a_post_on_a_reused_connection_closed_without_answer_is_an_error() {
    let (listener, address) = node().await;
    let server = tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        read_request(&mut first).await.unwrap();
        first.write_all(ok("one").as_bytes()).await.unwrap();
        read_request(&mut first).await.unwrap();
        drop(first);
        // The node may have acted on the POST: it must not arrive a second time.
        timeout(Duration::from_millis(200), listener.accept())
            .await
            .is_err()
    });
    let pool = Arc::new(Pool::default());
    let response = send_to(&pool, &address, get(&address, "/")).await.unwrap();
    assert_eq!(body_of(response).await, "one");

    let result = send_to(&pool, &address, post(&address, "/orders", "buy")).await;
    upstream_request_error(result);
    assert!(server.await.unwrap(), "the POST was sent again");
}

/// A pooled connection keeps its deadline timer between exchanges; an exchange with a shorter
/// read timeout than the one before must still time out on its own deadline.
#[tokio::test]
async fn a_shorter_read_timeout_on_a_reused_connection_still_applies() {
    let (listener, address) = node().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        let response = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        stream.write_all(response.as_bytes()).await.unwrap();
        // The second request on the same connection gets no answer.
        read_request(&mut stream).await.unwrap();
        std::future::pending::<()>().await;
        drop(stream);
    });
    let pool = Arc::new(Pool::default());
    let long = Duration::from_secs(30);
    let first = get_root(&pool, LIMITS, &address, long).await;
    assert_eq!(body_of(first.unwrap()).await, "ok");
    assert_eq!(pool.idle_count(), 1);

    let short = Duration::from_millis(100);
    let started = std::time::Instant::now();
    let second = get_root(&pool, LIMITS, &address, short).await;
    assert!(
        matches!(second, Err(ProxyError::UpstreamTimeout { after, .. }) if after == short),
        "expected a 100 ms timeout, got {second:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_node_that_does_not_answer_in_time_is_a_response_headers_timeout() {
    let (listener, address) = node().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        // Holds the connection open, silent.
        std::future::pending::<()>().await;
        drop(stream);
    });
    let pool = Arc::new(Pool::default());
    let read_timeout = Duration::from_millis(100);
    let result = get_root(&pool, LIMITS, &address, read_timeout).await;
    match result {
        Err(ProxyError::UpstreamTimeout { phase, after, .. }) => {
            assert_eq!(phase, TimeoutPhase::ResponseHeaders);
            assert_eq!(after, read_timeout);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let (listener, address) = node().await;
    drop(listener);
    let pool = Arc::new(Pool::default());
    let result = send_to(&pool, &address, get(&address, "/")).await;
    match result {
        Err(ProxyError::UpstreamConnect { node, .. }) => assert_eq!(node, address),
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_idle_connection_older_than_the_idle_timeout_is_closed_not_reused() {
    let limits = PoolLimits {
        size: 4,
        idle_timeout: Duration::from_millis(50),
    };
    let (listener, address) = node().await;
    let server = tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        read_request(&mut first).await.unwrap();
        first.write_all(ok("one").as_bytes()).await.unwrap();
        let (mut second, _) = listener.accept().await.unwrap();
        read_request(&mut second).await.unwrap();
        second.write_all(ok("two").as_bytes()).await.unwrap();
        // The expired connection was closed, not just left aside.
        read_request(&mut first).await
    });
    let pool = Arc::new(Pool::default());
    let response = get_root(&pool, limits, &address, TIMEOUT).await.unwrap();
    assert_eq!(body_of(response).await, "one");
    assert_eq!(pool.idle_count(), 1);
    sleep(Duration::from_millis(100)).await;

    let response = get_root(&pool, limits, &address, TIMEOUT).await.unwrap();
    assert_eq!(body_of(response).await, "two");
    let on_first = timeout(TIMEOUT, server).await.unwrap().unwrap();
    assert_eq!(on_first, None);
}

#[tokio::test]
async fn the_pool_keeps_at_most_its_size_of_idle_connections() {
    let limits = PoolLimits {
        size: 1,
        idle_timeout: Duration::from_secs(60),
    };
    let (listener, address) = node().await;
    tokio::spawn(async move {
        let mut streams = Vec::new();
        for body in ["one", "two"] {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_request(&mut stream).await.unwrap();
            stream.write_all(ok(body).as_bytes()).await.unwrap();
            streams.push(stream);
        }
        std::future::pending::<()>().await;
        drop(streams);
    });
    let pool = Arc::new(Pool::default());
    // Both in flight at once, so each needs its own connection.
    let one = get_root(&pool, limits, &address, TIMEOUT).await.unwrap();
    let two = get_root(&pool, limits, &address, TIMEOUT).await.unwrap();
    assert_eq!(body_of(one).await, "one");
    assert_eq!(body_of(two).await, "two");
    assert_eq!(pool.idle_count(), 1);
}

#[tokio::test]
async fn a_get_goes_out_with_its_headers_and_no_body_framing() {
    let (listener, address) = node().await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let request = read_request(&mut stream).await.unwrap();
        stream.write_all(ok("").as_bytes()).await.unwrap();
        request
    });
    let pool = Arc::new(Pool::default());
    let request = Request::get(format!("http://{address}/search?q=a%20b"))
        .header(HOST, "api.example.test")
        .header("x-request-id", "abc-123")
        .body(empty_body())
        .unwrap();
    send_to(&pool, &address, request).await.unwrap();
    let received = server.await.unwrap();
    assert_eq!(
        String::from_utf8(received).unwrap(),
        "GET /search?q=a%20b HTTP/1.1\r\n\
         host: api.example.test\r\n\
         x-request-id: abc-123\r\n\
         \r\n"
    );
}

#[tokio::test]
async fn a_request_without_host_gets_the_node_authority() {
    let (listener, address) = node().await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let request = read_request(&mut stream).await.unwrap();
        stream.write_all(ok("").as_bytes()).await.unwrap();
        request
    });
    let pool = Arc::new(Pool::default());
    send_to(&pool, &address, get(&address, "/")).await.unwrap();
    let received = server.await.unwrap();
    assert_eq!(
        String::from_utf8(received).unwrap(),
        format!("GET / HTTP/1.1\r\nhost: {address}\r\n\r\n")
    );
}

#[tokio::test]
async fn a_post_with_a_full_body_goes_out_with_its_length() {
    let (listener, address) = node().await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let request = read_request(&mut stream).await.unwrap();
        stream.write_all(ok("").as_bytes()).await.unwrap();
        request
    });
    let pool = Arc::new(Pool::default());
    let body = r#"{"name":"widget"}"#;
    let request = Request::post(format!("http://{address}/items"))
        .header(HOST, "api.example.test")
        .header(CONTENT_TYPE, "application/json")
        // Framing headers describe the client's hop: the gateway writes its own.
        .header(CONTENT_LENGTH, "999")
        .header(TRANSFER_ENCODING, "chunked")
        .body(Either::Right(Full::new(Bytes::from_static(
            body.as_bytes(),
        ))))
        .unwrap();
    send_to(&pool, &address, request).await.unwrap();
    let received = server.await.unwrap();
    assert_eq!(
        String::from_utf8(received).unwrap(),
        format!(
            "POST /items HTTP/1.1\r\n\
             host: api.example.test\r\n\
             content-type: application/json\r\n\
             content-length: {}\r\n\
             \r\n\
             {body}",
            body.len()
        )
    );
}

#[tokio::test]
async fn an_empty_post_goes_out_with_a_zero_length() {
    let (listener, address) = node().await;
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let request = read_request(&mut stream).await.unwrap();
        stream.write_all(ok("").as_bytes()).await.unwrap();
        request
    });
    let pool = Arc::new(Pool::default());
    send_to(&pool, &address, post(&address, "/ping", ""))
        .await
        .unwrap();
    let received = server.await.unwrap();
    assert_eq!(
        String::from_utf8(received).unwrap(),
        format!("POST /ping HTTP/1.1\r\nhost: {address}\r\ncontent-length: 0\r\n\r\n")
    );
}

#[tokio::test]
async fn a_request_body_of_unknown_length_goes_out_chunked() {
    // Only hyper makes an `Incoming`, so a hyper server stands in for the gateway's listener:
    // its handler forwards the client's chunked body through `send`.
    let (node_listener, node_address) = node().await;
    let upstream = tokio::spawn(async move {
        let (mut stream, _) = node_listener.accept().await.unwrap();
        let request = read_request(&mut stream).await.unwrap();
        stream.write_all(ok("stored").as_bytes()).await.unwrap();
        request
    });
    let (front, front_address) = node().await;
    tokio::spawn(async move {
        let (stream, _) = front.accept().await.unwrap();
        let pool = Arc::new(Pool::default());
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let pool = Arc::clone(&pool);
            let node_address = node_address.clone();
            async move {
                let forwarded = Request::post(format!("http://{node_address}/upload"))
                    .header(HOST, "api.example.test")
                    .body(Either::Left(request.into_body()))
                    .unwrap();
                send_to(&pool, &node_address, forwarded).await
            }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await
            .unwrap();
    });

    let mut client = TcpStream::connect(&front_address).await.unwrap();
    // The body arrives in two parts, so it is still streaming when the head goes upstream.
    client
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
    sleep(Duration::from_millis(20)).await;
    client.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();

    let received = timeout(TIMEOUT, upstream).await.unwrap().unwrap();
    let head =
        b"POST /upload HTTP/1.1\r\nhost: api.example.test\r\ntransfer-encoding: chunked\r\n\r\n";
    assert!(
        received.starts_with(head),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    let (data, used) = dechunk(&received[head.len()..]).unwrap();
    assert_eq!(data, b"hello world");
    assert_eq!(head.len() + used, received.len());

    let mut answer = Vec::new();
    timeout(TIMEOUT, client.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nstored"), "{answer}");
}

/// A node that reads the request and answers 200 once it has it all, behind
/// [`front_forwarding_to`].
async fn front_forwarding_to_a_reading_node(
    read_timeout: Duration,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<Result<StatusCode, ProxyError>>,
) {
    let (node_listener, node_address) = node().await;
    tokio::spawn(async move {
        let (mut stream, _) = node_listener.accept().await.unwrap();
        if read_request(&mut stream).await.is_some() {
            let _ = stream.write_all(ok("stored").as_bytes()).await;
        }
        std::future::pending::<()>().await;
    });
    front_forwarding_to(node_address, read_timeout).await
}

/// A hyper server standing in for the gateway's listener (only hyper makes an `Incoming`):
/// each request it gets is forwarded with its streamed body through `send` to the node at
/// `node_address`. Returns the listener's address and the outcomes of `send`.
async fn front_forwarding_to(
    node_address: String,
    read_timeout: Duration,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<Result<StatusCode, ProxyError>>,
) {
    let (front, front_address) = node().await;
    let (outcomes, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (stream, _) = front.accept().await.unwrap();
        let pool = Arc::new(Pool::default());
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let (pool, node_address, outcomes) =
                (Arc::clone(&pool), node_address.clone(), outcomes.clone());
            async move {
                let forwarded = Request::post(format!("http://{node_address}/upload"))
                    .body(Either::Left(request.into_body()))
                    .unwrap();
                let result = send(
                    &pool,
                    LIMITS,
                    &node_address,
                    forwarded,
                    None,
                    HeadForm::Map,
                    TIMEOUT,
                    read_timeout,
                )
                .await
                .map(|response| response.status());
                let _ = outcomes.send(result);
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    });
    (front_address, received)
}

#[tokio::test]
async fn a_node_that_answers_before_taking_the_body_is_heard() {
    // The node reads the head only, answers 413 and then closes (so its kernel resets the
    // connection) or keeps the connection but stops reading.
    for closes in [true, false] {
        let (node_listener, node_address) = node().await;
        tokio::spawn(async move {
            let (mut stream, _) = node_listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let answer =
                "HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            let _ = stream.write_all(answer.as_bytes()).await;
            if closes {
                drop(stream);
            } else {
                std::future::pending::<()>().await;
            }
        });
        let (front, mut outcomes) =
            front_forwarding_to(node_address, Duration::from_secs(30)).await;
        let mut client = TcpStream::connect(&front).await.unwrap();
        let length = 32 << 20;
        tokio::spawn(async move {
            let head =
                format!("POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: {length}\r\n\r\n");
            let _ = client.write_all(head.as_bytes()).await;
            let _ = client.write_all(&vec![b'x'; length]).await;
            std::future::pending::<()>().await;
        });
        let outcome = timeout(TIMEOUT, outcomes.recv()).await.unwrap().unwrap();
        assert_eq!(
            outcome.map_err(|e| e.to_string()),
            Ok(StatusCode::PAYLOAD_TOO_LARGE),
            "closes: {closes}"
        );
    }
}

#[tokio::test]
async fn a_stalled_request_body_is_the_clients_failure_not_a_node_timeout() {
    let (front, mut outcomes) =
        front_forwarding_to_a_reading_node(Duration::from_millis(150)).await;
    let mut client = TcpStream::connect(&front).await.unwrap();
    client
        .write_all(b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nhalf")
        .await
        .unwrap();
    // The rest never comes.
    let outcome = timeout(TIMEOUT, outcomes.recv()).await.unwrap().unwrap();
    assert!(
        matches!(outcome, Err(ProxyError::DownstreamBody { .. })),
        "expected the client's failure, got {outcome:?}"
    );
}

#[tokio::test]
async fn a_slow_but_steady_upload_is_not_cut_by_the_read_timeout() {
    let (front, mut outcomes) =
        front_forwarding_to_a_reading_node(Duration::from_millis(150)).await;
    let mut client = TcpStream::connect(&front).await.unwrap();
    client
        .write_all(b"POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 6\r\n\r\n")
        .await
        .unwrap();
    // Six bytes over 600 ms: four read timeouts in all, never one between two chunks.
    for byte in b"abcdef" {
        sleep(Duration::from_millis(100)).await;
        client.write_all(&[*byte]).await.unwrap();
    }
    let outcome = timeout(TIMEOUT, outcomes.recv()).await.unwrap().unwrap();
    assert_eq!(outcome.unwrap(), StatusCode::OK);
}

/// A head of about `size` bytes in a few long headers (the 128-header limit must not be what
/// refuses it), without its final empty line.
fn long_head(size: usize) -> String {
    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    let mut i = 0;
    while head.len() < size {
        i += 1;
        head.push_str(&format!("x-filler-{i}: {}\r\n", "a".repeat(7 * 1024)));
    }
    head
}

#[tokio::test]
async fn a_response_head_that_grows_past_64_kib_is_refused() {
    let (listener, address) = node().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        // Never ends: only the size limit can stop the wait before the read timeout.
        let _ = stream.write_all(long_head(100 * 1024).as_bytes()).await;
        std::future::pending::<()>().await;
        drop(stream);
    });
    let pool = Arc::new(Pool::default());
    let message = upstream_request_error(send_to(&pool, &address, get(&address, "/")).await);
    assert!(message.contains("larger than"), "{message}");
}

#[tokio::test]
async fn a_complete_response_head_larger_than_64_kib_is_refused() {
    let (listener, address) = node().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        let head = long_head(70 * 1024) + "Content-Length: 0\r\n\r\n";
        // Whether the limit holds must not depend on where the reads end: here the first
        // part leaves the gateway's buffer just under 64 KiB, and the rest completes the head.
        let (first, rest) = head.as_bytes().split_at(63 * 1024);
        stream.write_all(first).await.unwrap();
        sleep(Duration::from_millis(50)).await;
        let _ = stream.write_all(rest).await;
        read_request(&mut stream).await
    });
    let pool = Arc::new(Pool::default());
    let message = upstream_request_error(send_to(&pool, &address, get(&address, "/")).await);
    assert!(message.contains("larger than"), "{message}");
}

#[tokio::test]
async fn a_response_with_more_than_128_headers_is_refused() {
    let (listener, address) = node().await;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        let mut response = String::from("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n");
        for i in 0..MAX_HEADERS {
            response.push_str(&format!("x-h{i}: {i}\r\n"));
        }
        response.push_str("\r\n");
        stream.write_all(response.as_bytes()).await.unwrap();
        read_request(&mut stream).await
    });
    let pool = Arc::new(Pool::default());
    let message = upstream_request_error(send_to(&pool, &address, get(&address, "/")).await);
    assert!(message.contains("too many headers"), "{message}");
}
