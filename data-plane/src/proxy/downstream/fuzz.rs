//! Fuzzing entry for what a client sends: request heads parsed by `parse_request`. Built for
//! tests and for `cargo fuzz` (`--cfg fuzzing`, see `tests/fuzz`).
//!
//! Besides "no panic", each input checks:
//! - the verdict (a request, a refusal, a hand-off to hyper, or "more bytes") and what is
//!   consumed do not depend on how reads split the head;
//! - a hand-off leaves the bytes for hyper untouched;
//! - a request the gateway accepts, rewritten and encoded for the node as the proxy does it
//!   (hop-by-hop headers out, the hop's `Host` and `X-Forwarded-*` in), is one complete head
//!   that parses back to the same method, the target the client sent (byte for byte up to a
//!   fragment, for an origin-form target), one `Host` (the node's), an `X-Forwarded-For` ending with the client
//!   and no `Connection` (no header can smuggle a line break or a second request).

use bytes::{BufMut as _, BytesMut};
use http::HeaderValue;
use http::header::HOST;

use super::{Next, parse_request};
use crate::transport::h1::{BodyFraming, encode_head};
use crate::transport::headers::{self, HopHeaders};

/// Parses `data` as client bytes. The first byte picks the size of the pieces the head
/// arrives in; the rest is the wire.
pub fn request(data: &[u8]) {
    let Some((&options, wire)) = data.split_first() else {
        return;
    };
    let mut spans = Vec::new();
    let mut whole = BytesMut::from(wire);
    let verdict = parse_request(&mut whole, &mut spans);
    let consumed = wire.len() - whole.len();
    // At most ~256 pieces: each piece re-parses the head so far.
    let piece = (usize::from(options) + 1).max(wire.len() / 256);
    let (piecewise, piecewise_consumed) = parse_in_pieces(wire, piece);
    assert_eq!(
        summary(&verdict),
        piecewise,
        "the verdict depends on how reads split the head"
    );
    assert_eq!(
        consumed, piecewise_consumed,
        "what is consumed depends on the split"
    );
    match verdict {
        Ok(Some(Next::HandOff)) => assert_eq!(consumed, 0, "a hand-off must leave the bytes"),
        Ok(Some(Next::Request { request, .. })) => reencode(wire, request),
        _ => {}
    }
}

/// The verdict when the head arrives `piece` bytes at a time, and the bytes consumed.
fn parse_in_pieces(wire: &[u8], piece: usize) -> (String, usize) {
    let mut spans = Vec::new();
    let mut read = BytesMut::new();
    let mut fed = 0;
    loop {
        let next = (fed + piece).min(wire.len());
        read.put_slice(&wire[fed..next]);
        fed = next;
        let verdict = parse_request(&mut read, &mut spans);
        if !matches!(verdict, Ok(None)) || fed == wire.len() {
            return (summary(&verdict), fed - read.len());
        }
    }
}

fn summary(verdict: &Result<Option<Next>, Next>) -> String {
    match verdict {
        Ok(None) => "more".to_owned(),
        Ok(Some(next)) | Err(next) => match next {
            Next::Request {
                request,
                keep_alive,
            } => format!(
                "{} {} {:?} {:?} keep-alive {keep_alive}",
                request.method(),
                request.uri(),
                request.version(),
                request.headers()
            ),
            Next::HandOff => "hand-off".to_owned(),
            Next::Refuse(status, message) => format!("{status} {message}"),
            Next::Closed => "closed".to_owned(),
        },
    }
}

/// The client the rewritten request names in `X-Forwarded-For`.
const CLIENT: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

/// Rewrites an accepted request for the node (as `forward::prepare` does), encodes it as the
/// h1 client would send it, and parses it back.
fn reencode(wire: &[u8], request: http::Request<crate::transport::body::UpstreamBody>) {
    let (mut parts, _) = request.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    let hop = HopHeaders {
        client: CLIENT,
        forwarded_host: parts.headers.get(HOST).cloned(),
        host: Some(HeaderValue::from_static("node.test:8080")),
        https: false,
    };
    let mut out = Vec::new();
    encode_head(&mut out, &parts, Some(&hop), BodyFraming::Empty);
    let mut lines = vec![httparse::EMPTY_HEADER; parts.headers.len() + 4];
    let mut parsed = httparse::Request::new(&mut lines);
    let status = parsed.parse(&out);
    assert!(
        matches!(status, Ok(httparse::Status::Complete(n)) if n == out.len()),
        "the head sent upstream is not one complete head: {status:?} {:?}",
        out.escape_ascii().to_string()
    );
    assert_eq!(parsed.method, Some(parts.method.as_str()));
    // What the client asked for, as it sent it, less a fragment (`#…`, which a request target
    // may not carry; `http::Uri` drops it, in this loop as in hyper's server).
    let mut client_lines = [httparse::EMPTY_HEADER; 128];
    let mut client = httparse::Request::new(&mut client_lines);
    if client.parse(wire).is_ok()
        && let Some(target) = client.path.filter(|t| t.starts_with('/'))
    {
        let target = target.split('#').next().unwrap_or_default();
        assert_eq!(
            parsed.path,
            Some(target),
            "the target changed on its way upstream"
        );
    }
    let named = |name: &str| -> Vec<&[u8]> {
        parsed
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    assert_eq!(named("host"), [b"node.test:8080"], "the node's Host, once");
    assert!(
        named("connection").is_empty(),
        "a hop-by-hop header went upstream"
    );
    let chain = named("x-forwarded-for");
    assert!(
        chain.len() == 1 && chain[0].ends_with(b"192.0.2.7"),
        "X-Forwarded-For: {chain:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::request;
    use crate::test_support::mutations;

    const SEEDS: &[&[u8]] = &[
        b"\x00GET /catalog?item=1 HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\n\r\n",
        b"\x03GET http://b.test:8080/x HTTP/1.0\r\nConnection: keep-alive, x-h\r\nx-h: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        b"\x07POST /p HTTP/1.1\r\nContent-Length: 0\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
        b"\x01POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"\x05PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        // libFuzzer's find: a fragment, dropped on the way (the oracle once said otherwise).
        b"\x00GET /c/tlog?i#1 HTTP/1.1\n\r\n",
        b"\x02OPTIONS * HTTP/1.1\r\nExpect: 100-continue\r\nUpgrade: websocket\r\n\r\n",
    ];

    #[test]
    fn mutated_requests_keep_the_parsers_invariants() {
        mutations(SEEDS, 20_000, request);
    }
}
