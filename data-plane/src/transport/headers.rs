//! Header rules for a hop: what must not cross it, and what the gateway adds.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{CONNECTION, EXPECT, HOST, HeaderName, HeaderValue};

/// `X-Forwarded-For`: the client addresses the request passed through.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the host the client asked for.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether `name`, in any case, is a header that describes one connection, not the message
/// (RFC 9110 §7.6.1: `Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`,
/// `Proxy-Authorization`, `Proxy-Authenticate`), or the non-standard `Keep-Alive` and
/// `Proxy-Connection` that old clients still send. A proxy must not forward them:
/// `Transfer-Encoding` in particular is re-decided by each hop's framing. The length picks the
/// one or two names it can be, so most names cost one comparison: this runs on every header.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |hop: &str| eq_lowercase(name, hop.as_bytes());
    match name.len() {
        2 => is("te"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        18 => is("proxy-authenticate"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

/// Whether `bytes` equals `lower` in any case; `lower` is ASCII written in lowercase (a
/// header name, a token), `bytes` anything.
///
/// Why not `eq_ignore_ascii_case`: it lowercases both sides byte by byte, and each name of a
/// response head is compared with a handful of names (callgrind: ~650 instructions per
/// proxied request went to those comparisons). Here eight bytes are compared at once, and
/// only `bytes` is folded: where `lower` has a letter, the case bit (0x20) of `bytes` is set
/// before comparing; elsewhere the bytes must be equal as they are.
#[inline]
pub fn eq_lowercase(bytes: &[u8], lower: &[u8]) -> bool {
    debug_assert!(
        lower
            .iter()
            .all(|b| b.is_ascii() && !b.is_ascii_uppercase()),
        "{lower:?}"
    );
    if bytes.len() != lower.len() {
        return false;
    }
    if bytes.len() < 8 {
        return bytes.iter().zip(lower).all(|(&b, &l)| {
            let case = if l.is_ascii_lowercase() { 0x20 } else { 0 };
            b | case == l
        });
    }
    let word = |s: &[u8], at: usize| {
        s.get(at..)
            .and_then(<[u8]>::first_chunk::<8>)
            .map(|w| u64::from_le_bytes(*w))
    };
    let equal_at = |at: usize| match (word(bytes, at), word(lower, at)) {
        (Some(b), Some(l)) => b | case_bits(l) == l,
        _ => false,
    };
    // Whole words, then the last eight bytes (overlapping the word before if need be).
    let mut at = 0;
    while at + 8 < bytes.len() {
        if !equal_at(at) {
            return false;
        }
        at += 8;
    }
    equal_at(bytes.len() - 8)
}

/// The case bit (0x20) of every byte of `lower` (eight ASCII bytes) that is a letter: a byte
/// `b` of them has its top bit set in `b + 0x1f` from `a` (0x61) up and in `b + 0x05` from `{`
/// (0x7b) up, and neither sum carries into the next byte.
fn case_bits(lower: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let letters = lower.wrapping_add(0x1f * ONES) & !lower.wrapping_add(0x05 * ONES);
    (letters & (0x80 * ONES)) >> 2
}

/// The header names a `Connection` value lists besides the hop-by-hop ones (`close`,
/// `keep-alive`, `upgrade`): headers the sender meant for this hop only.
pub fn connection_listed(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| {
            !token.is_empty() && !is_hop_by_hop(token) && !eq_lowercase(token, b"close")
        })
}

/// The persistence tokens of the `Connection` headers of one message.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Persistence {
    close: bool,
    keep_alive: bool,
}

impl Persistence {
    /// Adds the tokens of one `Connection` value.
    pub fn add(&mut self, value: &[u8]) {
        // Nearly every value is one of these alone: no split, no trim.
        if eq_lowercase(value, b"keep-alive") {
            self.keep_alive = true;
            return;
        }
        if eq_lowercase(value, b"close") {
            self.close = true;
            return;
        }
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            self.close |= eq_lowercase(token, b"close");
            self.keep_alive |= eq_lowercase(token, b"keep-alive");
        }
    }

    /// Whether the connection closes after this message (RFC 9112 §9.3): a `close` anywhere
    /// wins over `keep-alive`; HTTP/1.0 closes unless it asks to stay open.
    pub fn closes(self, http10: bool) -> bool {
        self.close || (http10 && !self.keep_alive)
    }
}

/// Removes the hop-by-hop headers, and every header that `Connection` names as such.
///
/// Runs on every request and response, so it compares each name once and hashes only what it
/// removes: most messages carry at most `Connection` itself.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name.as_str().as_bytes()))
        .cloned()
        .collect();
    if !doomed.is_empty() {
        doomed.extend(connection_listed_names(headers));
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// The headers of `headers` that its `Connection` lists (hop-by-hop names aside).
fn connection_listed_names(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|value| connection_listed(value.as_bytes()))
        .filter_map(|token| {
            headers
                .keys()
                .find(|name| name.as_str().as_bytes().eq_ignore_ascii_case(token))
                .cloned()
        })
        .collect()
}

/// Removes the headers the client's `Connection` lists, and `Connection` itself unless it asks
/// for an upgrade (then it keeps only that token, which the forwarding code reads).
///
/// Why before the plugins run: per RFC 9110 §7.6.1 the list names headers of the message as
/// received. Left for the hop-by-hop sweep at forwarding time, it also removed what plugins
/// had added since: `Connection: x-consumer-username` stripped `key-auth`'s header.
pub fn drop_connection_listed(headers: &mut HeaderMap) {
    if !headers.contains_key(CONNECTION) {
        return;
    }
    // `connection_listed` leaves out hop-by-hop names, `upgrade` among them: read it here.
    let upgrade = headers.get_all(CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    for name in connection_listed_names(headers) {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(CONNECTION);
    }
}

/// `X-Forwarded-Proto`: the scheme of the listener the request came in on.
fn forwarded_proto(https: bool) -> &'static str {
    if https { "https" } else { "http" }
}

/// The request headers this hop sets: `X-Forwarded-For` (the client appended to the chain),
/// `X-Forwarded-Proto` and `-Host` (this hop's, replacing the client's claims) and `Host` (per
/// `pass_host`); `Expect` goes, because the server already answered `100-continue`.
///
/// They stay beside the client's map rather than in it: the HTTP/1.1 client writes them while
/// encoding the head ([`HopHeaders::encode`]), which spared a proxied request three map
/// inserts, two allocations and the map's growth; clients that send a map (hyper's) get them
/// inserted ([`HopHeaders::apply`]). Both write the same headers.
#[derive(Clone, Debug)]
pub struct HopHeaders {
    /// The address appended to `X-Forwarded-For`.
    pub client: IpAddr,
    /// `X-Forwarded-Host`: the host the client asked for; none drops the client's claim.
    pub forwarded_host: Option<HeaderValue>,
    /// `Host` for the node; none: the node's address, from the request URI.
    pub host: Option<HeaderValue>,
    /// The client spoke TLS to this hop: `X-Forwarded-Proto: https`.
    pub https: bool,
}

impl HopHeaders {
    /// Whether the client's header `name` is this hop's to write (or to drop).
    pub fn replaces(name: &HeaderName) -> bool {
        if name == HOST || name == EXPECT {
            return true;
        }
        // Standard names are never one of these; custom ones are compared by length first.
        let name = name.as_str().as_bytes();
        name.len() >= 15
            && (name == X_FORWARDED_FOR.as_str().as_bytes()
                || name == X_FORWARDED_PROTO.as_str().as_bytes()
                || name == X_FORWARDED_HOST.as_str().as_bytes())
    }

    /// Puts them into `headers`, the client's map.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let mut forwarded_for = Vec::with_capacity(48);
        self.write_forwarded_for(&mut forwarded_for, headers.get_all(&X_FORWARDED_FOR).iter());
        // Joining valid values with ", " is valid; the fallback only guards against surprises.
        let forwarded_for = HeaderValue::from_maybe_shared(bytes::Bytes::from(forwarded_for))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        headers.insert(&X_FORWARDED_FOR, forwarded_for);
        headers.insert(
            &X_FORWARDED_PROTO,
            HeaderValue::from_static(forwarded_proto(self.https)),
        );
        match &self.forwarded_host {
            Some(host) => headers.insert(&X_FORWARDED_HOST, host.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
        match &self.host {
            Some(host) => headers.insert(HOST, host.clone()),
            // No host to pass: the client fills in the node's address.
            None => headers.remove(HOST),
        };
        headers.remove(EXPECT);
    }

    /// Appends them as header lines to `out`; the caller leaves the client's own lines for
    /// these names out ([`HopHeaders::replaces`]). `chain`: the client's `X-Forwarded-For`
    /// values; `authority`: the node's address, the `Host` when there is no other.
    pub fn encode<'a>(
        &self,
        out: &mut Vec<u8>,
        chain: impl Iterator<Item = &'a HeaderValue>,
        authority: &str,
    ) {
        let host = self
            .host
            .as_ref()
            .map_or(authority.as_bytes(), |h| h.as_bytes());
        put_header(out, b"host", host);
        out.extend_from_slice(b"x-forwarded-for: ");
        self.write_forwarded_for(out, chain);
        out.extend_from_slice(b"\r\n");
        put_header(
            out,
            b"x-forwarded-proto",
            forwarded_proto(self.https).as_bytes(),
        );
        if let Some(host) = &self.forwarded_host {
            put_header(out, b"x-forwarded-host", host.as_bytes());
        }
    }

    /// The `X-Forwarded-For` value: the client's chain, repeated headers merged into one
    /// comma-separated list as RFC 7239's predecessors expect, then the client.
    fn write_forwarded_for<'a>(
        &self,
        out: &mut Vec<u8>,
        chain: impl Iterator<Item = &'a HeaderValue>,
    ) {
        for earlier in chain {
            out.extend_from_slice(earlier.as_bytes());
            out.extend_from_slice(b", ");
        }
        write_ip(out, self.client);
    }
}

/// Appends one `name: value` header line.
pub fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes `ip` as text. An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d; it is
/// written as a.b.c.d. IPv4 is written by hand: `Display` costs more than the rest of the
/// header rewrite together.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq_lowercase_is_eq_ignore_ascii_case_against_a_lowercase_name() {
        let names: [&[u8]; 9] = [
            b"",
            b"te",
            b"date",
            b"x-a_1",
            b"content-length",
            b"transfer-encoding",
            b"proxy-authorization",
            b"keep-alive",
            b"0123456789-abcdefghijklmnopqrstuvwxyz",
        ];
        for lower in names {
            let mut cases = vec![lower.to_vec(), lower.to_ascii_uppercase()];
            // Every byte in turn replaced by each byte value: the bytes one bit away from a
            // letter or a digit (`@`, `[`, `\r` for `-`, control bytes, non-ASCII) among them.
            for i in 0..lower.len() {
                for b in 0..=u8::MAX {
                    let mut case = lower.to_vec();
                    case[i] = b;
                    cases.push(case);
                }
            }
            cases.push(lower.iter().chain(b"x").copied().collect());
            for case in cases {
                assert_eq!(
                    eq_lowercase(&case, lower),
                    case.eq_ignore_ascii_case(lower),
                    "{case:?} against {lower:?}"
                );
            }
        }
    }

    #[test]
    fn hop_by_hop_names_are_known_in_any_case_and_nothing_else_is() {
        let hop_by_hop = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "proxy-authenticate",
        ];
        for name in hop_by_hop {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
            assert!(
                is_hop_by_hop(name.to_ascii_uppercase().as_bytes()),
                "{name}"
            );
        }
        // Same lengths as hop-by-hop names, and near misses.
        for name in [
            "tx",
            "trailers",
            "upgrade2",
            "connexion",
            "keep_alive",
            "content-length",
            "date",
            "proxy-connectiox",
            "transfer-encodinG2",
            "x-te",
            "",
            "proxy-authorizatio",
        ] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Secret ,  x-other"),
            ("connection", "bad header name!"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-authenticate", "Basic"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
            ("content-type", "text/plain"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-kept"]);
    }

    #[test]
    fn forwarded_for_is_appended() {
        let hop = |client: &str| HopHeaders {
            client: client.parse().unwrap(),
            forwarded_host: None,
            host: None,
            https: false,
        };
        let mut headers = HeaderMap::new();
        hop("10.0.0.1").apply(&mut headers);
        assert_eq!(headers[&X_FORWARDED_FOR], "10.0.0.1");

        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        hop("::ffff:192.0.2.7").apply(&mut headers);
        assert_eq!(headers.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(headers[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 192.0.2.7");
    }

    #[test]
    fn addresses_are_written_like_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            write_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }
}
