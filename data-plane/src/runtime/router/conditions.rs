//! What a route requires besides its path: hosts, methods, headers, query arguments and client
//! addresses, compiled once per snapshot.

use std::borrow::Cow;
use std::net::IpAddr;

use gateway_proto::model::{MatchCondition, MatchOp};
use gateway_proto::schema::{compile_regex, parse_cidr};
use http::header::HeaderName;
use http::{HeaderMap, Method};
use regex::bytes::Regex;

use super::RequestView;
use crate::runtime::{CompileError, CompiledRoute};
use crate::transport::query;

/// A route's host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostPattern {
    /// Lowercased, without a trailing dot.
    Exact(Box<str>),
    /// The suffix including its leading dot: `.example.com` for `*.example.com`.
    Wildcard(Box<str>),
}

/// A route's conditions besides its path and hosts (hosts are indexed by the router).
#[derive(Debug)]
pub(super) struct Conditions {
    /// Empty: any method.
    pub methods: Vec<Method>,
    headers: Vec<HeaderCondition>,
    query: Vec<QueryCondition>,
    /// (network address, prefix length); empty: any client.
    remote_addrs: Vec<(IpAddr, u8)>,
}

#[derive(Debug)]
struct HeaderCondition {
    name: HeaderName,
    test: Test,
}

#[derive(Debug)]
struct QueryCondition {
    name: Box<[u8]>,
    test: Test,
}

/// How the values of one header or argument are tested. Values are compared as bytes, case
/// sensitive; a header or argument that occurs several times passes if any occurrence does.
#[derive(Debug)]
enum Test {
    Eq(Box<[u8]>),
    Prefix(Box<[u8]>),
    Regex(Regex),
    Exists,
    Absent,
}

/// One decoded query argument: (name, value).
type Arg<'q> = (Cow<'q, [u8]>, Cow<'q, [u8]>);

/// A request as the conditions see it; the query string is parsed on first use only, since
/// most routes have no query condition.
pub(super) struct Context<'r> {
    headers: &'r HeaderMap,
    query: Option<&'r str>,
    args: Option<Vec<Arg<'r>>>,
    /// The client address, IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, from a dual-stack
    /// listener) turned into IPv4 so that IPv4 blocks match them.
    client: IpAddr,
}

impl<'r> Context<'r> {
    pub fn new(request: &RequestView<'r>) -> Context<'r> {
        Context {
            headers: request.headers,
            query: request.query,
            args: None,
            client: request.client.to_canonical(),
        }
    }

    fn args(&mut self) -> &[Arg<'r>] {
        let query = self.query;
        self.args
            .get_or_insert_with(|| parse_query(query.unwrap_or("")))
    }
}

impl Conditions {
    /// Compiles a route's conditions; also returns its host patterns.
    pub fn compile(route: &CompiledRoute) -> Result<(Conditions, Vec<HostPattern>), CompileError> {
        let spec = &route.spec;
        let mut hosts = Vec::with_capacity(spec.hosts.len());
        for host in &spec.hosts {
            hosts.push(parse_host(host).ok_or_else(|| CompileError::InvalidHost {
                route: route.id.clone(),
                host: host.clone(),
            })?);
        }
        let methods = spec
            .methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.as_bytes()).map_err(|_| CompileError::InvalidMethod {
                    route: route.id.clone(),
                    method: m.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let invalid = |pointer: String, reason: String| CompileError::InvalidCondition {
            route: route.id.clone(),
            pointer,
            reason,
        };
        let mut headers = Vec::with_capacity(spec.headers.len());
        for (i, condition) in spec.headers.iter().enumerate() {
            let name = HeaderName::from_bytes(condition.name.as_bytes()).map_err(|_| {
                invalid(
                    format!("/headers/{i}/name"),
                    format!("{:?} is not a header name", condition.name),
                )
            })?;
            let test = Test::compile(condition)
                .map_err(|reason| invalid(format!("/headers/{i}/value"), reason))?;
            headers.push(HeaderCondition { name, test });
        }
        let mut query = Vec::with_capacity(spec.query.len());
        for (i, condition) in spec.query.iter().enumerate() {
            let test = Test::compile(condition)
                .map_err(|reason| invalid(format!("/query/{i}/value"), reason))?;
            query.push(QueryCondition {
                name: condition.name.as_bytes().into(),
                test,
            });
        }
        let remote_addrs = spec
            .remote_addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                parse_cidr(addr).map_err(|reason| invalid(format!("/remote_addrs/{i}"), reason))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let conditions = Conditions {
            methods,
            headers,
            query,
            remote_addrs,
        };
        Ok((conditions, hosts))
    }

    /// Whether the request meets every condition but the method.
    pub fn matches(&self, cx: &mut Context<'_>) -> bool {
        if !self.remote_addrs.is_empty()
            && !self
                .remote_addrs
                .iter()
                .any(|&(network, len)| contains(network, len, cx.client))
        {
            return false;
        }
        let headers = cx.headers;
        if !self.headers.iter().all(|condition| {
            condition.test.holds(
                headers
                    .get_all(&condition.name)
                    .iter()
                    .map(|v| v.as_bytes()),
            )
        }) {
            return false;
        }
        if self.query.is_empty() {
            return true;
        }
        let args = cx.args();
        self.query.iter().all(|condition| {
            condition.test.holds(
                args.iter()
                    .filter(|(name, _)| **name == *condition.name)
                    .map(|(_, value)| &**value),
            )
        })
    }

    /// Whether the route accepts the method.
    pub fn allows(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }
}

impl Test {
    fn compile(condition: &MatchCondition) -> Result<Test, String> {
        let value = || {
            condition
                .value
                .as_deref()
                .ok_or_else(|| format!("op {:?} needs a value", condition.op))
        };
        Ok(match condition.op {
            MatchOp::Eq => Test::Eq(value()?.as_bytes().into()),
            MatchOp::Prefix => Test::Prefix(value()?.as_bytes().into()),
            MatchOp::Regex => Test::Regex(compile_regex(value()?)?),
            MatchOp::Exists => Test::Exists,
            MatchOp::Absent => Test::Absent,
        })
    }

    fn holds<'v>(&self, mut values: impl Iterator<Item = &'v [u8]>) -> bool {
        match self {
            Test::Eq(expected) => values.any(|v| v == &**expected),
            Test::Prefix(prefix) => values.any(|v| v.starts_with(prefix)),
            Test::Regex(regex) => values.any(|v| regex.is_match(v)),
            Test::Exists => values.next().is_some(),
            Test::Absent => values.next().is_none(),
        }
    }
}

/// Parses a configured host: `API.example.com.` → exact `api.example.com`; `*.example.com` →
/// wildcard `.example.com`. `None` for anything else.
pub(super) fn parse_host(host: &str) -> Option<HostPattern> {
    let lower = host.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    match lower.strip_prefix('*') {
        Some(suffix) if suffix.len() > 1 && suffix.starts_with('.') && !suffix.contains('*') => {
            Some(HostPattern::Wildcard(suffix.into()))
        }
        Some(_) => None,
        None if lower.is_empty() || lower.contains('*') => None,
        None => Some(HostPattern::Exact(lower.into())),
    }
}

/// Lowercases the request's host and drops the port and a trailing dot: `API.Example.com.:8080`
/// → `api.example.com`; `[::1]:80` → `[::1]`.
pub(super) fn normalize_host(host: &str) -> Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        // Bytes, not `rsplit_once(':')`: the char searcher cost ~160 instructions a request.
        match host.bytes().rposition(|b| b == b':') {
            Some(colon) if host.as_bytes()[colon + 1..].iter().all(u8::is_ascii_digit) => {
                &host[..colon]
            }
            _ => host,
        }
    };
    let name = without_port.strip_suffix('.').unwrap_or(without_port);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Whether `addr` is in the block `network/len` (`network` has its host bits cleared).
fn contains(network: IpAddr, len: u8, addr: IpAddr) -> bool {
    match (network, addr) {
        (IpAddr::V4(network), IpAddr::V4(addr)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(addr) & mask == u32::from(network)
        }
        (IpAddr::V6(network), IpAddr::V6(addr)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(addr) & mask == u128::from(network)
        }
        _ => false,
    }
}

/// Splits a query string into decoded (name, value) pairs, the way HTML forms encode them:
/// `&`-separated, `+` is a space, `%XX` a byte (a malformed escape is kept as written). `a`
/// and `a=` both give `a` with an empty value.
fn parse_query(query: &str) -> Vec<Arg<'_>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (query::decode(name), query::decode(value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded_like_forms() {
        let pairs = parse_query("a=1&b&c=&&d=x%20y+z&e=%zz%4&f%3D=%3d&a=2");
        let pairs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (&**k, &**v)).collect();
        let expected: &[(&[u8], &[u8])] = &[
            (b"a", b"1"),
            (b"b", b""),
            (b"c", b""),
            (b"d", b"x y z"),
            (b"e", b"%zz%4"),
            (b"f=", b"="),
            (b"a", b"2"),
        ];
        assert_eq!(pairs, expected);
        assert!(parse_query("").is_empty());
    }

    #[test]
    fn cidr_blocks_contain_their_addresses_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let block = |s: &str| parse_cidr(s).unwrap();
        let cases = [
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.1.2.3", "10.1.2.3", true),
            ("10.1.2.3", "10.1.2.4", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "::1", false),
            ("::/0", "10.0.0.1", false),
            ("::/0", "2001:db8::1", true),
            ("fd00::/8", "fdff::1", true),
            ("fd00::/8", "fe00::1", false),
            ("::1", "::1", true),
            ("192.168.0.0/23", "192.168.1.255", true),
            ("192.168.0.0/23", "192.168.2.0", false),
        ];
        for (cidr, addr, expected) in cases {
            let (network, len) = block(cidr);
            assert_eq!(contains(network, len, ip(addr)), expected, "{cidr} {addr}");
        }
    }

    #[test]
    fn hosts_are_normalised() {
        for (raw, normal) in [
            ("API.Example.COM:8443", "api.example.com"),
            ("api.example.com.", "api.example.com"),
            ("[::1]:8080", "[::1]"),
            ("[::1", "[::1"),
            ("a:b:c", "a:b:c"),
            ("", ""),
        ] {
            assert_eq!(normalize_host(raw), normal, "{raw}");
        }
        assert_eq!(
            parse_host("*.Example.com."),
            Some(HostPattern::Wildcard(".example.com".into()))
        );
        for bad in ["*", "*.", "a.*.com", "*example.com", "", "*.a*"] {
            assert_eq!(parse_host(bad), None, "{bad}");
        }
    }
}
