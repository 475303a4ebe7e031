//! The route schema, its cross-field rules, and the rules it cannot say: a `regex` condition
//! must compile, and a path's segment names must be unique.

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::{Value, json};

use super::upstream::{
    retries_schema, route_timeouts_schema, upstream_body_properties, upstream_rules,
};
use super::{HOST_PATTERN, ID_PATTERN, Violation, common_properties, rule};
use crate::model::{MatchOp, Route};

/// A path pattern's syntax, exactly what [`check_path`] accepts but for the uniqueness of the
/// segment names: segments are literal (no `:`, `*`, `?`, `#` or white space) or `:name`, and
/// the last one may end with `*` (a prefix).
pub(super) const PATH_PATTERN: &str =
    r"^(/(:[A-Za-z_][A-Za-z0-9_]*|[^\s?#/:*]*))*/(:[A-Za-z_][A-Za-z0-9_]*|[^\s?#/:*]*\*?)$";

/// An IPv4 address as Rust's `Ipv4Addr` reads it: four decimal octets, no leading zeros.
const IPV4: &str = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}";

/// The pattern of a `remote_addrs` or `ip-restriction` entry: an IPv4 or IPv6 address
/// (RFC 3986's grammar, which is what Rust's `IpAddr` reads) with an optional prefix length of
/// at most 3 digits up to 32 or 128 — exactly what [`parse_cidr`] accepts.
pub(crate) fn cidr_pattern() -> String {
    let h = "[0-9A-Fa-f]{1,4}";
    let ls32 = format!("({h}:{h}|{IPV4})");
    let ipv6 = [
        format!("({h}:){{6}}{ls32}"),
        format!("::({h}:){{5}}{ls32}"),
        format!("({h})?::({h}:){{4}}{ls32}"),
        format!("(({h}:){{0,1}}{h})?::({h}:){{3}}{ls32}"),
        format!("(({h}:){{0,2}}{h})?::({h}:){{2}}{ls32}"),
        format!("(({h}:){{0,3}}{h})?::{h}:{ls32}"),
        format!("(({h}:){{0,4}}{h})?::{ls32}"),
        format!("(({h}:){{0,5}}{h})?::{h}"),
        format!("(({h}:){{0,6}}{h})?::"),
    ]
    .join("|");
    let v4_len = "(0{0,2}[0-9]|0?[12][0-9]|0?3[0-2])";
    let v6_len = "(0{0,2}[0-9]|0?[1-9][0-9]|1[01][0-9]|12[0-8])";
    format!("^({IPV4}(/{v4_len})?|({ipv6})(/{v6_len})?)$")
}

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
            "items": {
                "type": "string",
                "pattern": PATH_PATTERN,
                "maxLength": 4096,
                "description": "Exact (/a), with named segments (/users/:id; a name is used once per path) or a prefix (/static/*)."
            }
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
            "items": {"enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "PURGE"]}
        }),
    );
    props.insert(
        "headers".into(),
        conditions_schema(Some(HEADER_NAME_PATTERN)),
    );
    props.insert("query".into(), conditions_schema(None));
    props.insert(
        "remote_addrs".into(),
        json!({
            "type": "array",
            "maxItems": 256,
            "uniqueItems": true,
            "items": {
                "type": "string",
                "pattern": cidr_pattern(),
                "maxLength": 64,
                "description": "An IPv4 or IPv6 address (10.0.0.1, ::1) or CIDR block (10.0.0.0/8, fd00::/8)."
            }
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
            "additionalProperties": false,
            "allOf": upstream_rules()
        }),
    );
    props.insert("batch".into(), super::batch::batch_schema());
    props.insert("timeouts".into(), route_timeouts_schema());
    props.insert("retries".into(), retries_schema());
    props.insert("hedge".into(), super::upstream::hedge_override_schema());
    props.insert("plugins".into(), crate::plugins::plugins_property());
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "route",
        "examples": [{
            "paths": ["/api/users/:id", "/static/*"],
            "hosts": ["api.example.com"],
            "methods": ["GET", "POST"],
            "upstream_id": "users",
            "plugins": {"limit-count": {"count": 100, "time_window": 60, "key": "remote_addr", "rejected_code": 429}}
        }],
        "type": "object",
        "properties": props,
        "required": ["paths"],
        "additionalProperties": false,
        "allOf": [
            rule(
                "a route needs a target: upstream_id, upstream or batch (or the batch-requests plugin, which answers itself)",
                json!({"anyOf": [
                    {"required": ["upstream_id"]},
                    {"required": ["upstream"]},
                    {"required": ["batch"]},
                    {"required": ["plugins"], "properties": {"plugins": {"required": ["batch-requests"]}}}
                ]}),
            ),
            rule(
                "a route sends to exactly one of upstream_id, upstream or batch",
                json!({
                    "if": {"anyOf": [{"required": ["upstream_id"]}, {"required": ["upstream"]}]},
                    "then": {"properties": {"batch": false}}
                }),
            ),
            rule(
                "a route sends to exactly one of upstream_id, upstream or batch",
                json!({"if": {"required": ["upstream_id"]}, "then": {"properties": {"upstream": false}}}),
            )
        ]
    })
}

/// An HTTP header name: an RFC 9110 token.
const HEADER_NAME_PATTERN: &str = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";

/// The most memory one compiled `regex` condition may take. Patterns are written by admins,
/// but a data plane compiles every route's patterns, so one careless `.{1000}{1000}` must not
/// cost it gigabytes.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// What the schema says of a value that must compile as a regular expression. JSON Schema's
/// `format: regex` names ECMA-262; the data plane compiles Rust's syntax, which that format
/// cannot say, so the rest is told in words and checked by [`compile_regex`].
pub(crate) fn regex_value_schema() -> Value {
    json!({
        "type": "string",
        "format": "regex",
        "description": "A regular expression in Rust's regex syntax (RE2-like: no look-around, no backreferences), at most 1 MiB compiled; one that does not compile is refused (400)."
    })
}

/// The schema of a `headers` or `query` list: `{"name", "op", "value"}` conditions, `value`
/// required by the ops that compare (`eq`, `prefix`, `regex`) and refused by the others. Header
/// names follow `name_pattern`; a query argument's name is any non-empty text.
pub(crate) fn conditions_schema(name_pattern: Option<&str>) -> Value {
    let mut name = json!({"type": "string", "minLength": 1, "maxLength": 256});
    if let Some(pattern) = name_pattern {
        name["pattern"] = pattern.into();
    }
    json!({
        "type": "array",
        "maxItems": 64,
        "items": {
            "type": "object",
            "properties": {
                "name": name,
                "op": {"enum": ["eq", "prefix", "regex", "exists", "absent"]},
                "value": {"type": "string", "maxLength": 4096}
            },
            "required": ["name", "op"],
            "additionalProperties": false,
            "allOf": [
                rule(
                    "ops exists and absent take no value",
                    json!({
                        "if": {"properties": {"op": {"enum": ["exists", "absent"]}}, "required": ["op"]},
                        "then": {"properties": {"value": false}}
                    }),
                ),
                rule(
                    "ops eq, prefix and regex need a value",
                    json!({
                        "if": {"properties": {"op": {"enum": ["eq", "prefix", "regex"]}}, "required": ["op"]},
                        "then": {"required": ["value"]}
                    }),
                ),
                {
                    "if": {"properties": {"op": {"const": "regex"}}, "required": ["op"]},
                    "then": {"properties": {"value": regex_value_schema()}}
                }
            ]
        }
    })
}

/// The rules of a route its schema cannot say: `regex` conditions compile (the schema marks
/// them `format: regex`), and no path uses a segment name twice.
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
    for (i, path) in route.paths.iter().enumerate() {
        if let Err(message) = check_path(path) {
            // The schema's pattern says all of the syntax; what is left is a name used twice.
            let violation = if repeated_segment_name(path).is_some() {
                Violation::reference
            } else {
                Violation::new
            };
            out.push(violation(format!("/paths/{i}"), message));
        }
    }
    if let Some(batch) = &route.batch {
        super::batch::check_batch(batch, &route.paths, out);
    }
}

/// The first `:name` a path pattern uses twice.
pub(super) fn repeated_segment_name(path: &str) -> Option<&str> {
    let mut names = HashSet::new();
    path.split('/')
        .filter_map(|segment| segment.strip_prefix(':'))
        .find(|name| !names.insert(*name))
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
                "/headers/0/value",
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
