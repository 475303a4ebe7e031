//! Fuzzing entry for what a node sends back: bytes that reach the gateway from outside, parsed
//! by hand-written code. Built for tests and for `cargo fuzz` (`--cfg fuzzing`, see
//! `tests/fuzz`).
//!
//! Besides "no panic", each input checks what the client relies on:
//! - every header passed on as the node spelled it is one `http`'s types accept and not a
//!   hop-by-hop header, since [`PassedHead`] skips those checks on the way to the client;
//! - a chunked body decodes to the same bytes and the same verdict whether the bytes arrive at
//!   once or in pieces (reads split a body anywhere).

use bytes::{BufMut as _, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};

use super::{Chunked, Decoded, Framing, HeadForm, parse_head};
use crate::proxy::headers::is_hop_by_hop;

/// Parses `data` as a response head and the body after it. The first byte picks the options
/// (head-only request, header form, the piece size for the body); the rest is the wire.
pub fn response(data: &[u8]) {
    let Some((&options, wire)) = data.split_first() else {
        return;
    };
    let head_only = options & 1 != 0;
    let form = if options & 2 != 0 {
        HeadForm::Passed
    } else {
        HeadForm::Map
    };
    let piece = usize::from(options >> 2) + 1;
    let mut read = BytesMut::from(wire);
    let mut spans = Vec::new();
    let Ok(Some(head)) = parse_head(&mut read, &mut spans, head_only, form) else {
        return;
    };
    if let Some(passed) = &head.passed {
        for (name, value) in passed.iter() {
            assert!(HeaderName::from_bytes(name).is_ok(), "passed name {name:?}");
            assert!(
                HeaderValue::from_bytes(value).is_ok(),
                "passed value {value:?}"
            );
            assert!(!is_hop_by_hop(name), "hop-by-hop header {name:?} passed on");
        }
    }
    if let Framing::Chunked(start) = head.framing {
        let body = read.freeze();
        let whole = decode_chunked(start, &body, body.len().max(1));
        let pieces = decode_chunked(start, &body, piece);
        assert_eq!(
            whole, pieces,
            "chunked decoding depends on how reads split the body"
        );
    }
}

/// Decodes `body`, handed to the decoder `piece` bytes at a time: the data, and whether the
/// body ended, failed or wants more.
fn decode_chunked(mut state: Chunked, body: &Bytes, piece: usize) -> (Vec<u8>, &'static str) {
    let mut read = BytesMut::new();
    let mut data = Vec::new();
    let mut fed = 0;
    loop {
        match state.decode(&mut read) {
            Ok(Decoded::Data(bytes)) => data.extend_from_slice(&bytes),
            Ok(Decoded::End) => return (data, "end"),
            Err(_) => return (data, "error"),
            Ok(Decoded::NeedMore) if fed == body.len() => return (data, "more"),
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
        b"\x06HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close, x-a\r\nx-a: 1\r\n\r\n5;ext=1\r\nhello\r\n0\r\ntrailer: t\r\n\r\n",
        b"\x00HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 204 No Content\r\nKeep-Alive: 5\r\n\r\n",
        b"\x13HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
    ];

    #[test]
    fn mutated_responses_keep_the_parsers_invariants() {
        mutations(SEEDS, 50_000, response);
    }
}
