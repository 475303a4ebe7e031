//! The route schema and its semantic rules.

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::{Value, json};

use super::upstream::{
    check_upstream, retries_schema, route_timeouts_schema, upstream_body_properties,
};
use super::{HOST_PATTERN, ID_PATTERN, Violation, common_properties};
use crate::model::{MatchOp, Route};

/// The route kind's schema.
pub(super) fn route_schema() -> Value {
    let mut props = common_properties();
    props.insert(
        "paths".into(),
        json!({
            "type": "array",
            "minItems": 1,
            "maxItems": 64,
            "uniqueItems": true,
            "items": {"type": "string", "pattern": "^/[^\\s?#]*$", "maxLength": 4096}
        }),
    );
    props.insert(
        "hosts".into(),
        json!({
            "type": "array",
            "maxItems": 64,
            "uniqueItems": true,
            "items": {"type": "string", "pattern": HOST_PATTERN}
        }),
    );
    props.insert(
        "methods".into(),
        json!({
            "type": "array",
            "uniqueItems": true,
            "items": {"enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"]}
        }),
    );
    props.insert("headers".into(), conditions_schema(HEADER_NAME_PATTERN));
    props.insert("query".into(), conditions_schema(".+"));
    props.insert(
        "remote_addrs".into(),
        json!({
            "type": "array",
            "maxItems": 256,
            "uniqueItems": true,
            "items": {"type": "string", "pattern": "^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$", "maxLength": 64}
        }),
    );
    props.insert(
        "priority".into(),
        json!({"type": "integer", "minimum": -1000000, "maximum": 1000000, "default": 0}),
    );
    props.insert(
        "enabled".into(),
        json!({"type": "boolean", "default": true}),
    );
    props.insert(
        "upstream_id".into(),
        json!({"type": "string", "pattern": ID_PATTERN}),
    );
    let mut inline = upstream_body_properties();
    inline.insert("desc".into(), json!({"type": "string", "maxLength": 1024}));
    props.insert(
        "upstream".into(),
        json!({
            "type": "object",
            "properties": inline,
            "required": ["nodes"],
            "additionalProperties": false
        }),
    );
    props.insert("batch".into(), super::batch::batch_schema());
    props.insert("timeouts".into(), route_timeouts_schema());
    props.insert("retries".into(), retries_schema());
    props.insert("plugins".into(), crate::plugins::plugins_property());
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "route",
        "type": "object",
        "properties": props,
        "required": ["paths"],
        "additionalProperties": false
    })
}

/// An HTTP header name: an RFC 9110 token.
const HEADER_NAME_PATTERN: &str = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";

/// The most memory one compiled `regex` condition may take. Patterns are written by admins,
/// but a data plane compiles every route's patterns, so one careless `.{1000}{1000}` must not
/// cost it gigabytes.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The schema of a `headers` or `query` list: `{"name", "op", "value"}` conditions, `value`
/// required by the ops that compare (`eq`, `prefix`, `regex`) and refused by the others.
pub(crate) fn conditions_schema(name_pattern: &str) -> Value {
    json!({
        "type": "array",
        "maxItems": 64,
        "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": name_pattern},
                "op": {"enum": ["eq", "prefix", "regex", "exists", "absent"]},
                "value": {"type": "string", "maxLength": 4096}
            },
            "required": ["name", "op"],
            "additionalProperties": false,
            "if": {"properties": {"op": {"enum": ["exists", "absent"]}}, "required": ["op"]},
            "then": {"properties": {"value": false}},
            "else": {"required": ["value"]}
        }
    })
}

/// Semantic rules of a route.
pub(super) fn check_route(route: &Route, out: &mut Vec<Violation>) {
    for (field, conditions) in [("headers", &route.headers), ("query", &route.query)] {
        for (i, condition) in conditions.iter().enumerate() {
            if let (MatchOp::Regex, Some(pattern)) = (condition.op, &condition.value)
                && let Err(message) = compile_regex(pattern)
            {
                out.push(Violation::new(format!("/{field}/{i}/value"), message));
            }
        }
    }
    for (i, addr) in route.remote_addrs.iter().enumerate() {
        if let Err(message) = parse_cidr(addr) {
            out.push(Violation::new(format!("/remote_addrs/{i}"), message));
        }
    }
    match (&route.upstream_id, &route.upstream, &route.batch) {
        // `batch-requests` answers the route's requests itself: it needs no target.
        (None, None, None) if route.plugins.contains_key("batch-requests") => {}
        (None, None, None) => out.push(Violation::new(
            "",
            "a route needs a target: upstream_id, upstream or batch",
        )),
        (Some(_), None, None) | (None, Some(_), None) | (None, None, Some(_)) => {}
        (_, _, batch) => out.push(Violation::new(
            if batch.is_some() {
                "/batch"
            } else {
                "/upstream"
            },
            "a route sends to exactly one of upstream_id, upstream or batch",
        )),
    }
    if let Some(batch) = &route.batch {
        super::batch::check_batch(batch, &route.paths, out);
    }
    if let Some(upstream) = &route.upstream {
        check_upstream(upstream, "/upstream", out);
    }
    for (i, path) in route.paths.iter().enumerate() {
        if let Err(message) = check_path(path) {
            out.push(Violation::new(format!("/paths/{i}"), message));
        }
    }
}

/// Checks path-pattern syntax: `:name` segments with unique names, `*` only at the very end.
pub fn check_path(path: &str) -> Result<(), String> {
    if let Some(pos) = path.find('*')
        && pos != path.len() - 1
    {
        return Err(format!(
            "\"*\" is only allowed at the end of a path: {path}"
        ));
    }
    let mut names = HashSet::new();
    for segment in path.split('/') {
        if let Some(name) = segment.strip_prefix(':') {
            let valid = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err(format!(
                    "a named segment is \":\" followed by [A-Za-z_][A-Za-z0-9_]*, got {segment:?}"
                ));
            }
            if !names.insert(name) {
                return Err(format!("the segment name {name:?} is used twice"));
            }
        } else if segment.contains(':') {
            return Err(format!(
                "\":\" may only start a named segment, got {segment:?}"
            ));
        }
    }
    Ok(())
}

/// Compiles the pattern of a `regex` condition, exactly as the data plane does: an unanchored
/// search over the value's bytes (`^…$` anchors it), at most `REGEX_SIZE_LIMIT` compiled.
pub fn compile_regex(pattern: &str) -> Result<regex::bytes::Regex, String> {
    regex::bytes::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regular expression: {e}"))
}

/// Parses a `remote_addrs` entry: an address (`10.0.0.1`, `::1`, a whole-address block) or a
/// CIDR block (`10.0.0.0/8`, `fd00::/8`). Returns the block's address with the bits past the
/// prefix cleared (`10.1.2.3/8` is `10.0.0.0/8`) and the prefix length.
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(len) => len
            .parse::<u8>()
            .ok()
            .filter(|len| *len <= max)
            .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
    };
    let masked = match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(u32::from(32 - len)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(u32::from(128 - len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    };
    // Clients are matched as IPv4 when they come as IPv4-mapped addresses, so a mapped block
    // (`::ffff:203.0.113.0/120`) is that IPv4 block, or it would never match anyone.
    if let IpAddr::V6(v6) = masked
        && len >= 96
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        return Ok((IpAddr::V4(v4), len - 96));
    }
    Ok((masked, len))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::{Kind, Parsed};
    use crate::schema::validate_resource;

    fn route_with(extra: Value) -> Value {
        let mut document = json!({"paths": ["/a"], "upstream_id": "u"});
        if let (Some(document), Some(extra)) = (document.as_object_mut(), extra.as_object()) {
            document.extend(extra.clone());
        }
        document
    }

    #[test]
    fn match_conditions_are_accepted_and_typed() {
        let document = route_with(json!({
            "headers": [
                {"name": "X-Version", "op": "eq", "value": "v2"},
                {"name": "user-agent", "op": "regex", "value": "^curl/"},
                {"name": "x-debug", "op": "exists"}
            ],
            "query": [{"name": "page size", "op": "prefix", "value": ""}, {"name": "x", "op": "absent"}],
            "remote_addrs": ["10.0.0.0/8", "::1", "192.168.1.7", "fd00::/8", "0.0.0.0/0"]
        }));
        let Ok(Parsed::Route(route)) = validate_resource(Kind::Routes, &document) else {
            panic!("valid route refused")
        };
        assert_eq!(route.headers[0].op, MatchOp::Eq);
        assert_eq!(route.headers[2].value, None);
        assert_eq!(route.query[1].op, MatchOp::Absent);
        assert_eq!(route.remote_addrs.len(), 5);

        let Ok(Parsed::Route(plain)) = validate_resource(Kind::Routes, &route_with(json!({})))
        else {
            panic!("valid route refused")
        };
        assert!(
            plain.headers.is_empty() && plain.query.is_empty() && plain.remote_addrs.is_empty()
        );
    }

    #[test]
    fn bad_match_conditions_are_refused_with_their_pointer() {
        let cases = [
            (
                json!({"headers": [{"name": "x", "op": "eq"}]}),
                "/headers/0",
            ),
            (
                json!({"headers": [{"name": "x", "op": "exists", "value": "1"}]}),
                "/headers/0/value",
            ),
            (
                json!({"headers": [{"name": "x", "op": "like", "value": "1"}]}),
                "/headers/0/op",
            ),
            (
                json!({"headers": [{"name": "bad name", "op": "exists"}]}),
                "/headers/0/name",
            ),
            (
                json!({"headers": [{"name": "x", "op": "exists", "extra": 1}]}),
                "/headers/0",
            ),
            (json!({"headers": [{"op": "exists"}]}), "/headers/0"),
            (
                json!({"query": [{"name": "", "op": "absent"}]}),
                "/query/0/name",
            ),
            (
                json!({"headers": [{"name": "a", "op": "exists"}, {"name": "b", "op": "regex", "value": "(unclosed"}]}),
                "/headers/1/value",
            ),
            (
                json!({"query": [{"name": "q", "op": "regex", "value": "a{99999}{99999}"}]}),
                "/query/0/value",
            ),
            (json!({"remote_addrs": ["10.0.0.0/33"]}), "/remote_addrs/0"),
            (
                json!({"remote_addrs": ["::1", "::1/129"]}),
                "/remote_addrs/1",
            ),
            (json!({"remote_addrs": ["10.0.0"]}), "/remote_addrs/0"),
            (json!({"remote_addrs": ["example.com"]}), "/remote_addrs/0"),
            (json!({"remote_addrs": ["1.2.3.4/"]}), "/remote_addrs/0"),
        ];
        for (extra, pointer) in cases {
            let errors = validate_resource(Kind::Routes, &route_with(extra.clone())).unwrap_err();
            assert!(
                errors.iter().any(|e| e.pointer == pointer),
                "{extra}: expected {pointer}, got {errors:?}"
            );
        }
    }

    #[test]
    fn cidrs_are_parsed_and_masked() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(parse_cidr("10.1.2.3/8"), Ok((v4("10.0.0.0"), 8)));
        assert_eq!(parse_cidr("10.1.2.3"), Ok((v4("10.1.2.3"), 32)));
        assert_eq!(parse_cidr("0.0.0.0/0"), Ok((v4("0.0.0.0"), 0)));
        assert_eq!(parse_cidr("fd00::1/8"), Ok((v4("fd00::"), 8)));
        assert_eq!(parse_cidr("::1"), Ok((v4("::1"), 128)));
        assert_eq!(parse_cidr("::/0"), Ok((v4("::"), 0)));
        assert_eq!(
            parse_cidr("::ffff:203.0.113.9/120"),
            Ok((v4("203.0.113.0"), 24)),
            "mapped blocks are IPv4 blocks"
        );
        assert_eq!(parse_cidr("::ffff:10.0.0.1"), Ok((v4("10.0.0.1"), 32)));
        assert_eq!(parse_cidr("::ffff:0:0/80"), Ok((v4("::"), 80)));
        for bad in [
            "",
            "/8",
            "1.2.3.4/x",
            "1.2.3.4/-1",
            "::1/200",
            "[::1]",
            "1.2.3.4/8/8",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }
}
