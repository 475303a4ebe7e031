//! Fuzzing entry for what a node sends back: bytes that reach the gateway from outside, parsed
//! by hand-written code. Built for tests and for `cargo fuzz` (`--cfg fuzzing`, see
//! `tests/fuzz`).
//!
//! Besides "no panic", each input checks what the client relies on:
//! - the three head forms agree on the verdict, status, framing and keep-alive, and the map
//!   holds the same headers as the lines [`super::PassedHead`] passes on as the node spelled
//!   them (so skipping the map's checks on the plain path lets nothing else through); those
//!   lines are never hop-by-hop;
//! - a head, and a chunked body after it, give the same verdict, bytes and leftover whether
//!   they arrive at once or in pieces (reads split a response anywhere).

use bytes::{BufMut as _, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use super::HeadForm;
use super::codec::{Chunked, Decoded, Framing, Head, parse_head};
use crate::transport::headers::is_hop_by_hop;

/// Parses `data` as a response head and the body after it. The first byte picks the options
/// (a HEAD request or not, the piece size); the rest is the wire.
pub fn response(data: &[u8]) {
    let Some((&options, wire)) = data.split_first() else {
        return;
    };
    let head_only = options & 1 != 0;
    // At most ~256 pieces: each piece re-parses the head so far, and libFuzzer's long inputs
    // would otherwise cost it most of its time.
    let piece = (usize::from(options >> 1) + 1).max(wire.len() / 256);
    let [map, passed, ignored] = [HeadForm::Map, HeadForm::Passed, HeadForm::Ignored].map(|form| {
        let whole = parse(wire, head_only, form, wire.len().max(1));
        let pieces = parse(wire, head_only, form, piece);
        assert_eq!(
            (&whole.verdict, whole.consumed),
            (&pieces.verdict, pieces.consumed),
            "{form:?}: the head's verdict depends on how reads split it"
        );
        whole
    });
    assert_eq!(
        map.verdict, passed.verdict,
        "the map and passed forms disagree"
    );
    assert_eq!(
        map.verdict, ignored.verdict,
        "the map and ignored forms disagree"
    );
    let body_start = map.consumed;
    let (Some(map), Some(passed), Some(ignored)) = (map.head, passed.head, ignored.head) else {
        return;
    };
    assert!(ignored.headers.is_empty() && ignored.passed.is_none());
    match &passed.passed {
        Some(lines) => {
            for (name, value) in lines.iter() {
                assert!(HeaderName::from_bytes(name).is_ok(), "passed name {name:?}");
                assert!(
                    HeaderValue::from_bytes(value).is_ok(),
                    "passed value {value:?}"
                );
                assert!(!is_hop_by_hop(name), "hop-by-hop header {name:?} passed on");
            }
            let lines = lines
                .iter()
                .map(|(name, value)| (name.to_ascii_lowercase(), value.to_vec()));
            assert_eq!(sorted(lines), sorted_map(&map.headers));
        }
        // Too many lines to pass: the map, like the other form's.
        None => assert_eq!(sorted_map(&passed.headers), sorted_map(&map.headers)),
    }
    if let Framing::Chunked(start) = map.framing {
        let body = Bytes::copy_from_slice(&wire[body_start..]);
        let whole = decode_chunked(start, &body, body.len().max(1));
        let pieces = decode_chunked(start, &body, piece);
        assert_eq!(
            whole, pieces,
            "chunked decoding depends on how reads split the body"
        );
    }
}

/// One form's parse of a head fed `piece` bytes at a time.
struct Parsed {
    /// Everything the forms must agree on: "more", "error", or status, version, framing and
    /// keep-alive.
    verdict: String,
    /// Bytes taken from the wire (interim heads included).
    consumed: usize,
    head: Option<Head>,
}

fn parse(wire: &[u8], head_only: bool, form: HeadForm, piece: usize) -> Parsed {
    let mut read = BytesMut::new();
    let mut spans = Vec::new();
    let mut fed = 0;
    loop {
        let next = (fed + piece).min(wire.len());
        read.put_slice(&wire[fed..next]);
        fed = next;
        let outcome = parse_head(&mut read, &mut spans, head_only, form);
        let consumed = fed - read.len();
        match outcome {
            Ok(None) if fed < wire.len() => continue,
            Ok(None) => {
                return Parsed {
                    verdict: "more".to_owned(),
                    consumed,
                    head: None,
                };
            }
            Err(_) => {
                return Parsed {
                    verdict: "error".to_owned(),
                    consumed,
                    head: None,
                };
            }
            Ok(Some(head)) => {
                return Parsed {
                    verdict: format!(
                        "{} {:?} {:?} keep-alive {}",
                        head.status, head.version, head.framing, head.keep_alive
                    ),
                    consumed,
                    head: Some(head),
                };
            }
        }
    }
}

fn sorted(headers: impl Iterator<Item = (Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut headers: Vec<_> = headers.collect();
    headers.sort();
    headers
}

fn sorted_map(map: &HeaderMap) -> Vec<(Vec<u8>, Vec<u8>)> {
    sorted(
        map.iter()
            .map(|(name, value)| (name.as_str().as_bytes().to_vec(), value.as_bytes().to_vec())),
    )
}

/// Decodes `body`, handed to the decoder `piece` bytes at a time: the data, whether the body
/// ended, failed or wants more, and at the end how many bytes were left unread (a decoder
/// must not eat into what follows the body; where an error is noticed may depend on the split).
fn decode_chunked(
    mut state: Chunked,
    body: &Bytes,
    piece: usize,
) -> (Vec<u8>, &'static str, usize) {
    let mut read = BytesMut::new();
    let mut data = Vec::new();
    let mut fed = 0;
    loop {
        match state.decode(&mut read) {
            Ok(Decoded::Data(bytes)) => data.extend_from_slice(&bytes),
            Ok(Decoded::End) => return (data, "end", read.len() + body.len() - fed),
            Err(_) => return (data, "error", 0),
            Ok(Decoded::NeedMore) if fed == body.len() => return (data, "more", 0),
            Ok(Decoded::NeedMore) => {
                let next = (fed + piece).min(body.len());
                read.put_slice(&body[fed..next]);
                fed = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::response;
    use crate::test_support::mutations;

    const SEEDS: &[&[u8]] = &[
        b"\x02HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: x\r\n\r\nhello",
        b"\x06HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close, x-a\r\nx-a: 1\r\n\r\n5;ext=1\r\nhello\r\n0\r\ntrailer: t\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        b"\x00HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 204 No Content\r\nKeep-Alive: 5\r\n\r\n",
        b"\x12HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\nSet-Cookie: a\r\nset-cookie: b\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
    ];

    #[test]
    fn mutated_responses_keep_the_parsers_invariants() {
        mutations(SEEDS, 30_000, response);
    }
}
