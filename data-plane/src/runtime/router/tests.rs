//! The router's tests: a data-driven table, and a property test against a naive matcher.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::*;
use crate::test_support::compiled_route;

fn build(routes: &[(&str, u64, Value)]) -> Router {
    Router::build(
        routes
            .iter()
            .map(|(id, revision, spec)| compiled_route(id, *revision, spec.clone())),
    )
    .unwrap()
}

fn table_router() -> Router {
    build(&[
        ("exact", 1, json!({"paths": ["/exact"]})),
        (
            "users-id",
            1,
            json!({"paths": ["/users/:id"], "methods": ["GET"]}),
        ),
        ("users-me", 1, json!({"paths": ["/users/me"]})),
        ("a-x-c", 1, json!({"paths": ["/a/:x/c"]})),
        ("a-x-y", 1, json!({"paths": ["/a/:x/:y"]})),
        ("static", 1, json!({"paths": ["/static/*"]})),
        ("static-img", 1, json!({"paths": ["/static/img/*"]})),
        ("api-star", 1, json!({"paths": ["/api*"]})),
        ("user-files", 1, json!({"paths": ["/files/:user/*"]})),
        (
            "catch-all",
            1,
            json!({"paths": ["/*"], "hosts": ["catchall.test"]}),
        ),
        (
            "host-exact",
            1,
            json!({"paths": ["/h"], "hosts": ["api.example.com"]}),
        ),
        (
            "host-wild",
            1,
            json!({"paths": ["/h"], "hosts": ["*.example.com"]}),
        ),
        (
            "host-wild-deep",
            1,
            json!({"paths": ["/h"], "hosts": ["*.b.example.com"]}),
        ),
        ("host-any", 1, json!({"paths": ["/h"]})),
        ("prio-low", 1, json!({"paths": ["/p"], "priority": 0})),
        ("prio-high", 2, json!({"paths": ["/p"], "priority": 5})),
        ("z-old", 1, json!({"paths": ["/age"]})),
        ("a-new", 2, json!({"paths": ["/age"]})),
        ("id-b", 3, json!({"paths": ["/ids"]})),
        ("id-a", 3, json!({"paths": ["/ids"]})),
        (
            "m-post-put",
            1,
            json!({"paths": ["/m"], "methods": ["PUT", "POST"]}),
        ),
        (
            "m-post-delete",
            1,
            json!({"paths": ["/m"], "methods": ["POST", "DELETE"]}),
        ),
        (
            "get-only",
            1,
            json!({"paths": ["/get"], "methods": ["GET"]}),
        ),
        (
            "disabled",
            1,
            json!({"paths": ["/disabled"], "enabled": false}),
        ),
        (
            "disabled-prio",
            1,
            json!({"paths": ["/p"], "priority": 99, "enabled": false}),
        ),
        (
            "mixed-exact",
            1,
            json!({"paths": ["/mixed"], "methods": ["GET"]}),
        ),
        (
            "mixed-prefix",
            1,
            json!({"paths": ["/mix*"], "methods": ["POST"]}),
        ),
        (
            "multi",
            1,
            json!({"paths": ["/one", "/two/:n"], "hosts": ["multi.test"]}),
        ),
        // Overlapping shapes of one path.
        ("ov-prefix", 1, json!({"paths": ["/ov/*"]})),
        ("ov-param", 1, json!({"paths": ["/ov/:a/:b"]})),
        ("ov-mid", 1, json!({"paths": ["/ov/:a/y"]})),
        ("ov-exact", 1, json!({"paths": ["/ov/x/y"]})),
        (
            "ov-cond",
            2,
            json!({"paths": ["/ov/x/y"], "priority": 10, "headers": [{"name": "x-ov", "op": "eq", "value": "1"}]}),
        ),
        // Equally specific shapes that overlap: the older route wins.
        ("sp-ac", 2, json!({"paths": ["/sp/:a/c"]})),
        ("sp-bz", 1, json!({"paths": ["/sp/b/:z"]})),
        // One route, two paths: the more specific path decides (and its params).
        ("two-paths", 1, json!({"paths": ["/mp/*", "/mp/:x"]})),
        // A host tier beats priority.
        (
            "tier-wild",
            1,
            json!({"paths": ["/tier"], "hosts": ["*.t.test"], "priority": 100}),
        ),
        (
            "tier-exact",
            1,
            json!({"paths": ["/tier"], "hosts": ["A.T.test"]}),
        ),
        // Header conditions.
        (
            "hdr-v2",
            1,
            json!({"paths": ["/hdr"], "headers": [{"name": "X-Version", "op": "eq", "value": "v2"}]}),
        ),
        (
            "hdr-beta",
            1,
            json!({"paths": ["/hdr"], "priority": 1, "headers": [{"name": "x-version", "op": "prefix", "value": "beta"}]}),
        ),
        (
            "hdr-curl",
            2,
            json!({"paths": ["/hdr"], "headers": [{"name": "user-agent", "op": "regex", "value": "^curl/[0-9]+"}]}),
        ),
        (
            "hdr-none",
            3,
            json!({"paths": ["/hdr"], "headers": [{"name": "x-version", "op": "absent"}]}),
        ),
        // Query conditions.
        (
            "q-debug",
            1,
            json!({"paths": ["/q"], "priority": 1, "query": [{"name": "debug", "op": "exists"}]}),
        ),
        (
            "q-page",
            1,
            json!({"paths": ["/q"], "query": [{"name": "page", "op": "regex", "value": "^[0-9]+$"}]}),
        ),
        (
            "q-none",
            2,
            json!({"paths": ["/q"], "methods": ["GET"], "query": [{"name": "debug", "op": "absent"}]}),
        ),
        (
            "q-space",
            1,
            json!({"paths": ["/qs"], "query": [{"name": "full name", "op": "eq", "value": "a b"}]}),
        ),
        // Client addresses.
        (
            "cidr-v4",
            1,
            json!({"paths": ["/ip"], "priority": 2, "remote_addrs": ["10.0.0.0/8"]}),
        ),
        (
            "cidr-v6",
            1,
            json!({"paths": ["/ip"], "priority": 1, "remote_addrs": ["fd00::/8", "::1"]}),
        ),
        ("cidr-any", 1, json!({"paths": ["/ip"]})),
        (
            "cidr-only",
            1,
            json!({"paths": ["/internal"], "remote_addrs": ["127.0.0.1", "192.168.0.0/16"]}),
        ),
        // Everything at once; a failed condition is a 404, only the method a 405.
        (
            "combo",
            1,
            json!({
                "paths": ["/combo/:id"], "hosts": ["*.combo.test"], "methods": ["POST"],
                "headers": [{"name": "x-key", "op": "exists"}],
                "query": [{"name": "nocache", "op": "absent"}],
                "remote_addrs": ["10.0.0.0/8"]
            }),
        ),
    ])
}

/// One case per line: `METHOD HOST PATH[?QUERY] [h:NAME=VALUE]… [c:CLIENT] => EXPECT`, where
/// HOST `-` is no host, PATH `(empty)` is the empty path, the client defaults to 192.0.2.1,
/// and EXPECT is `404`, `405 METHOD,…` or `ROUTE-ID [NAME=VALUE]…` (the captured params).
const TABLE: &str = r"
GET x /exact => exact
GET x /exact/ => 404
GET x /users/42 => users-id id=42
GET x /users/me => users-me
GET x /users/ => 404
GET x /users/1/x => 404
GET x /users/%2F => users-id id=%2F
POST x /users/42 => 405 GET
GET x /a/b/c => a-x-c x=b
GET x /a/b/d => a-x-y x=b y=d
GET x /static => static
GET x /static/ => static
GET x /static/css/a.css => static
GET x /static/img/a.png => static-img
GET x /static/img => static-img
GET x /staticx => 404
GET x /api => api-star
GET x /apiary/x => api-star
GET x /files/ann/a/b => user-files user=ann
GET x /files/ann => user-files user=ann
GET x /files//a => 404
GET catchall.test /anything/at/all => catch-all
GET catchall.test / => catch-all
GET catchall.test /exact => exact
GET x / => 404
GET api.example.com /h => host-exact
GET API.Example.COM:8443 /h => host-exact
GET api.example.com. /h => host-exact
GET www.example.com /h => host-wild
GET a.b.example.com /h => host-wild-deep
GET a.c.example.com /h => host-wild
GET example.com /h => host-any
GET .example.com /h => host-any
GET - /h => host-any
GET [::1]:8080 /h => host-any
GET x /p => prio-high
GET x /age => z-old
GET x /ids => id-a
POST x /m => m-post-delete
PUT x /m => m-post-put
PATCH x /m => 405 DELETE,POST,PUT
HEAD x /get => 405 GET
GET x /disabled => 404
GET x /mixed => mixed-exact
POST x /mixed => mixed-prefix
PUT x /mixed => 405 GET,POST
GET multi.test /two/2 => multi n=2
GET other.test /one => 404
GET x * => 404
GET x (empty) => 404
GET x /ov/x/y => ov-exact
GET x /ov/x/y h:x-ov=1 => ov-cond
GET x /ov/x/y h:x-ov=2 => ov-exact
GET x /ov/q/y => ov-mid a=q
GET x /ov/q/z => ov-param a=q b=z
GET x /ov/q/z/ => ov-prefix
GET x /ov => ov-prefix
GET x /sp/b/c => sp-bz z=c
GET x /sp/a/c => sp-ac a=a
GET x /mp/1 => two-paths x=1
GET x /mp/1/2 => two-paths
GET a.t.test /tier => tier-exact
GET b.t.test /tier => tier-wild
GET x /hdr h:x-version=v2 => hdr-v2
GET x /hdr h:X-VERSION=v2 => hdr-v2
GET x /hdr h:x-version=V2 => 404
GET x /hdr h:x-version=beta7 => hdr-beta
GET x /hdr h:x-version=v3 h:x-version=v2 => hdr-v2
GET x /hdr h:user-agent=curl/8.5 => hdr-curl
GET x /hdr h:user-agent=curl/x => hdr-none
GET x /hdr h:user-agent=curl/8 h:x-version=v3 => hdr-curl
GET x /hdr h:x-version=v3 => 404
GET x /hdr => hdr-none
GET x /hdr h:x-version= => 404
GET x /q?debug => q-debug
GET x /q?debug= => q-debug
GET x /q?a=1&debug=0&page=2 => q-debug
GET x /q?page=12 => q-page
GET x /q?page=x => q-none
POST x /q?page=x => 405 GET
GET x /q?page=1&page=x => q-page
GET x /q?pa%67e=3 => q-page
GET x /q?Debug => q-none
GET x /qs?full+name=a%20b => q-space
GET x /qs?full%20name=a+b => q-space
GET x /qs?full_name=a+b => 404
GET x /ip c:10.1.2.3 => cidr-v4
GET x /ip c:::ffff:10.1.2.3 => cidr-v4
GET x /ip c:fd12::1 => cidr-v6
GET x /ip c:::1 => cidr-v6
GET x /ip c:192.0.2.1 => cidr-any
GET x /ip c:fe80::1 => cidr-any
GET x /internal c:127.0.0.1 => cidr-only
GET x /internal c:192.168.44.1 => cidr-only
GET x /internal c:127.0.0.2 => 404
GET x /internal c:::1 => 404
POST a.combo.test /combo/7 h:x-key=k c:10.0.0.1 => combo id=7
GET a.combo.test /combo/7 h:x-key=k c:10.0.0.1 => 405 POST
GET a.combo.test /combo/7 c:10.0.0.1 => 404
GET a.combo.test /combo/7?nocache h:x-key=k c:10.0.0.1 => 404
GET a.combo.test /combo/7 h:x-key=k => 404
GET combo.test /combo/7 h:x-key=k c:10.0.0.1 => 404
";

/// A request parsed from a table line, owning what a [`RequestView`] borrows.
struct Case {
    method: Method,
    host: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    client: IpAddr,
}

impl Case {
    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            host: &self.host,
            path: &self.path,
            headers: &self.headers,
            query: self.query.as_deref(),
            client: self.client,
        }
    }
}

fn parse_case(request: &str) -> Case {
    let mut words = request.split_whitespace();
    let method = Method::from_bytes(words.next().unwrap().as_bytes()).unwrap();
    let host = match words.next().unwrap() {
        "-" => "",
        host => host,
    };
    let target = match words.next().unwrap() {
        "(empty)" => "",
        target => target,
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    let mut case = Case {
        method,
        host: host.to_owned(),
        path: path.to_owned(),
        query,
        headers: HeaderMap::new(),
        client: "192.0.2.1".parse().unwrap(),
    };
    for word in words {
        if let Some(header) = word.strip_prefix("h:") {
            let (name, value) = header.split_once('=').unwrap();
            case.headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        } else if let Some(client) = word.strip_prefix("c:") {
            case.client = client.parse().unwrap();
        } else {
            panic!("bad table word {word:?}");
        }
    }
    case
}

/// Renders an answer the way the table writes expectations.
fn render(answer: &RouteMatch) -> String {
    match answer {
        RouteMatch::Found { route, params, .. } => {
            let mut out = route.id.clone();
            for (name, value) in params {
                out.push_str(&format!(" {name}={value}"));
            }
            out
        }
        RouteMatch::NotFound => "404".to_owned(),
        RouteMatch::MethodNotAllowed { allow } => {
            let allow: Vec<&str> = allow.iter().map(Method::as_str).collect();
            format!("405 {}", allow.join(","))
        }
    }
}

#[test]
fn routing_table() {
    let router = table_router();
    let mut failures = Vec::new();
    let mut count = 0;
    for line in TABLE.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (request, expected) = line.split_once(" => ").unwrap();
        let got = render(&router.find(&parse_case(request).view()));
        if got != expected {
            failures.push(format!("{request}: expected {expected}, got {got}"));
        }
        count += 1;
    }
    assert!(count >= 40, "the table has {count} cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn bad_patterns_are_compile_errors_not_panics() {
    for extra in [
        json!({"paths": ["/a/*/b"]}),
        json!({"paths": ["relative"]}),
        json!({"paths": ["/a/:"]}),
        json!({"paths": ["/a"], "hosts": ["*"]}),
        json!({"paths": ["/a"], "hosts": ["a.*.com"]}),
        json!({"paths": ["/a"], "hosts": ["*example.com"]}),
        json!({"paths": ["/a"], "hosts": [""]}),
        json!({"paths": ["/a"], "headers": [{"name": "x", "op": "regex", "value": "("}]}),
        json!({"paths": ["/a"], "headers": [{"name": "x", "op": "eq"}]}),
        json!({"paths": ["/a"], "headers": [{"name": "bad name", "op": "exists"}]}),
        json!({"paths": ["/a"], "query": [{"name": "q", "op": "prefix"}]}),
        json!({"paths": ["/a"], "remote_addrs": ["10.0.0.0/40"]}),
        json!({"paths": ["/a"], "remote_addrs": ["localhost"]}),
    ] {
        let route = compiled_route("bad", 1, extra.clone());
        assert!(Router::build([route]).is_err(), "{extra}");
    }
    let route = compiled_route(
        "r",
        1,
        json!({"paths": ["/a"], "query": [{"name": "q", "op": "regex", "value": "(x"}]}),
    );
    let error = Router::build([route]).unwrap_err();
    assert!(
        matches!(&error, CompileError::InvalidCondition { pointer, .. } if pointer == "/query/0/value"),
        "{error}"
    );
}

#[test]
fn adversarial_requests_do_not_panic() {
    let router = table_router();
    let hosts = [
        "",
        "[",
        "[::1",
        ":",
        "::::",
        "é.example.com",
        "a:b:c",
        ".",
        "*.example.com",
        "..",
    ];
    let paths = [
        "/",
        "//",
        "/:",
        "/*",
        "/a/%ff/c",
        "/static/\u{0}",
        "/é/ü",
        "/users/:id",
        "/q",
    ];
    let queries = [
        None,
        Some(""),
        Some("&&&"),
        Some("%"),
        Some("%f"),
        Some("=&="),
        Some("a=%zz"),
    ];
    let headers = HeaderMap::new();
    for host in hosts {
        for path in paths {
            for query in queries {
                let view = RequestView {
                    query,
                    headers: &headers,
                    ..RequestView::new(&Method::GET, host, path)
                };
                let _ = router.find(&view);
            }
        }
    }
}

#[test]
fn the_deepest_patterns_the_schema_allows_are_matched() {
    // 2,000 segments is about as deep as a 4,096-byte path can go; the lookup recurses once
    // per segment, so this also shows that the recursion fits a thread's stack.
    let literal = "/a".repeat(2000);
    let params: String = (0..2000).map(|i| format!("/:p{i}")).collect();
    let router = build(&[
        ("literal", 1, json!({"paths": [literal]})),
        ("params", 1, json!({"paths": [params.clone() + "/*"]})),
    ]);
    let found = |path: &str| render(&router.find(&RequestView::new(&Method::GET, "", path)));
    assert_eq!(found(&literal), "literal");
    let answer = found(&(literal.clone() + "/b"));
    assert!(answer.starts_with("params p0=a p1=a"), "{answer:.40}");
    assert_eq!(found(&"/a".repeat(1999)), "404");
}

#[test]
fn an_empty_router_finds_nothing() {
    let router = Router::default();
    assert!(router.is_empty());
    assert!(matches!(
        router.find(&RequestView::new(&Method::GET, "", "/")),
        RouteMatch::NotFound
    ));
}

/// A deliberately simple matcher: every route, every path, every condition checked in turn;
/// the winner is the maximum of the ranking the module doc states.
mod naive {
    use super::*;

    /// (class, depth, literal segments, literal bytes) if `pattern` matches `path`, with the
    /// captured params.
    pub fn path(pattern: &str, path: &str) -> Option<((u8, usize, usize, usize), Params)> {
        let pattern = pattern.strip_prefix('/')?;
        let path = path.strip_prefix('/')?;
        let (stem, tail) = match pattern.strip_suffix('*') {
            Some(stem) => match stem.rsplit_once('/') {
                Some((segments, tail)) => (Some(segments), Some(tail)),
                None => (None, Some(stem)),
            },
            None => (Some(pattern), None),
        };
        let pattern_segments: Vec<&str> = stem.map(|s| s.split('/').collect()).unwrap_or_default();
        let path_segments: Vec<&str> = path.split('/').collect();
        let mut params = Vec::new();
        let segment_matches = |p: &str, s: &str, params: &mut Params| match p.strip_prefix(':') {
            Some(name) if !s.is_empty() => {
                params.push((name.to_owned(), s.to_owned()));
                true
            }
            Some(_) => false,
            None => p == s,
        };
        let depth = pattern_segments.len();
        let literals: Vec<&&str> = pattern_segments
            .iter()
            .filter(|p| !p.starts_with(':'))
            .collect();
        let literal_bytes: usize = literals.iter().map(|l| l.len()).sum();
        match tail {
            None => {
                if path_segments.len() != depth {
                    return None;
                }
                for (p, s) in pattern_segments.iter().zip(&path_segments) {
                    if !segment_matches(p, s, &mut params) {
                        return None;
                    }
                }
                let class = if literals.len() == depth { 2 } else { 1 };
                Some(((class, depth, literals.len(), literal_bytes), params))
            }
            Some(tail) => {
                if path_segments.len() < depth {
                    return None;
                }
                for (p, s) in pattern_segments.iter().zip(&path_segments) {
                    if !segment_matches(p, s, &mut params) {
                        return None;
                    }
                }
                let rest = path_segments[depth..].join("/");
                let whole_tree = path_segments.len() == depth && depth > 0 && tail.is_empty();
                let prefixed = path_segments.len() > depth && rest.starts_with(tail);
                (whole_tree || prefixed).then_some((
                    (0, depth, literals.len(), literal_bytes + tail.len()),
                    params,
                ))
            }
        }
    }

    /// (2 exact / 1 wildcard / 0 any, wildcard length) if the route's hosts accept `host`.
    pub fn host(hosts: &[String], host: &str) -> Option<(u8, usize)> {
        if hosts.is_empty() {
            return Some((0, 0));
        }
        let host = normalize_host(host).into_owned();
        hosts
            .iter()
            .filter_map(|pattern| {
                let pattern = pattern.to_ascii_lowercase();
                match pattern.strip_prefix('*') {
                    Some(suffix) => (host.len() > suffix.len() && host.ends_with(suffix))
                        .then_some((1, suffix.len())),
                    None => (pattern == host).then_some((2, 0)),
                }
            })
            .max()
    }

    pub fn value_test(op: &str, value: Option<&str>, values: &[&[u8]]) -> bool {
        match op {
            "exists" => !values.is_empty(),
            "absent" => values.is_empty(),
            "eq" => values.iter().any(|v| *v == value.unwrap().as_bytes()),
            "prefix" => values
                .iter()
                .any(|v| v.starts_with(value.unwrap().as_bytes())),
            "regex" => {
                let regex = regex::bytes::Regex::new(value.unwrap()).unwrap();
                values.iter().any(|v| regex.is_match(v))
            }
            other => panic!("unknown op {other}"),
        }
    }

    pub fn conditions(route: &gateway_proto::model::Route, case: &Case) -> bool {
        let op = |c: &gateway_proto::model::MatchCondition| {
            serde_json::to_value(c.op)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        };
        let headers_ok = route.headers.iter().all(|c| {
            let values: Vec<&[u8]> = case
                .headers
                .get_all(c.name.to_ascii_lowercase().as_str())
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            value_test(&op(c), c.value.as_deref(), &values)
        });
        // The generated queries hold no escapes, so no decoding is needed here.
        let args: Vec<(&str, &str)> = case
            .query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        let query_ok = route.query.iter().all(|c| {
            let values: Vec<&[u8]> = args
                .iter()
                .filter(|(name, _)| *name == c.name)
                .map(|(_, v)| v.as_bytes())
                .collect();
            value_test(&op(c), c.value.as_deref(), &values)
        });
        let client = case.client.to_canonical();
        let remote_ok = route.remote_addrs.is_empty()
            || route.remote_addrs.iter().any(|block| {
                let (network, len) = gateway_proto::schema::parse_cidr(block).unwrap();
                match (network, client) {
                    (IpAddr::V4(n), IpAddr::V4(c)) => {
                        let shift = 32 - u32::from(len);
                        (u64::from(u32::from(n)) >> shift) == (u64::from(u32::from(c)) >> shift)
                    }
                    (IpAddr::V6(n), IpAddr::V6(c)) => {
                        let shift = 128 - u32::from(len);
                        u128::from(n).checked_shr(shift).unwrap_or(0)
                            == u128::from(c).checked_shr(shift).unwrap_or(0)
                    }
                    _ => false,
                }
            });
        headers_ok && query_ok && remote_ok
    }

    pub fn find(routes: &[Arc<CompiledRoute>], case: &Case) -> String {
        let mut best = None;
        let mut allow: Vec<&str> = Vec::new();
        for route in routes.iter().filter(|r| r.spec.enabled) {
            for (index, pattern) in route.spec.paths.iter().enumerate() {
                let Some((specificity, params)) = path(pattern, &case.path) else {
                    continue;
                };
                let Some(host_rank) = host(&route.spec.hosts, &case.host) else {
                    continue;
                };
                if !conditions(&route.spec, case) {
                    continue;
                }
                if !route.spec.methods.is_empty()
                    && !route.spec.methods.iter().any(|m| m == case.method.as_str())
                {
                    allow.extend(route.spec.methods.iter().map(String::as_str));
                    continue;
                }
                let key = (
                    specificity,
                    host_rank,
                    route.spec.priority,
                    Reverse(route.revision),
                    Reverse(route.id.clone()),
                    Reverse(index),
                );
                if best.as_ref().is_none_or(|(k, _, _)| key > *k) {
                    best = Some((key, route.id.clone(), params));
                }
            }
        }
        match best {
            Some((_, id, params)) => {
                let mut out = id;
                for (name, value) in params {
                    out.push_str(&format!(" {name}={value}"));
                }
                out
            }
            None if allow.is_empty() => "404".to_owned(),
            None => {
                allow.sort_unstable();
                allow.dedup();
                format!("405 {}", allow.join(","))
            }
        }
    }
}

const SEGMENTS: &[&str] = &["a", "b", "ab", "", "a%2F"];
const HOSTS: &[&str] = &["a.test", "*.test", "*.b.test", "b.test", "X.B.test"];
const REQUEST_HOSTS: &[&str] = &[
    "",
    "a.test",
    "b.test",
    "x.b.test",
    "y.x.b.test",
    "test",
    "A.TEST:80",
    "other",
];
const METHODS: &[&str] = &["GET", "POST", "PUT"];
const NAMES: &[&str] = &["x-a", "x-b"];
const VALUES: &[&str] = &["1", "12", "2", ""];
const REGEXES: &[&str] = &["^1", "2$", "^$"];
const BLOCKS: &[&str] = &[
    "10.0.0.0/8",
    "10.1.0.0/16",
    "::1",
    "fd00::/8",
    "127.0.0.1",
    "0.0.0.0/0",
];
const CLIENTS: &[&str] = &[
    "10.1.2.3",
    "10.2.0.1",
    "::1",
    "fd00::5",
    "127.0.0.1",
    "::ffff:10.1.2.3",
    "192.0.2.1",
];

fn pick(rng: &mut fastrand::Rng, from: &[&'static str]) -> &'static str {
    from[rng.usize(..from.len())]
}

fn some(rng: &mut fastrand::Rng, max: usize, from: &[&'static str]) -> Vec<&'static str> {
    let mut out: Vec<&str> = (0..rng.usize(..=max)).map(|_| pick(rng, from)).collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn random_condition(rng: &mut fastrand::Rng, names: &[&'static str]) -> Value {
    let name = pick(rng, names);
    match rng.usize(..5) {
        0 => json!({"name": name, "op": "eq", "value": pick(rng, VALUES)}),
        1 => json!({"name": name, "op": "prefix", "value": pick(rng, VALUES)}),
        2 => json!({"name": name, "op": "regex", "value": pick(rng, REGEXES)}),
        3 => json!({"name": name, "op": "exists"}),
        _ => json!({"name": name, "op": "absent"}),
    }
}

fn random_pattern(rng: &mut fastrand::Rng) -> String {
    let mut path = String::new();
    for i in 0..rng.usize(..4) {
        path.push('/');
        if rng.u8(..3) == 0 {
            path.push_str(&format!(":p{i}"));
        } else {
            path.push_str(pick(rng, &["a", "b", "ab", ""]));
        }
    }
    match rng.u8(..3) {
        0 => {
            path.push('/');
            path.push_str(pick(rng, &["", "a", "ab"]));
            path.push('*');
        }
        1 if !path.is_empty()
            && !path.ends_with('/')
            && !path.ends_with(|c: char| c.is_ascii_digit()) =>
        {
            path.push('*');
        }
        _ if path.is_empty() => path.push('/'),
        _ => {}
    }
    path
}

/// A route from small alphabets, so that routes overlap and conflict often.
fn random_route(rng: &mut fastrand::Rng, id: &str) -> Arc<CompiledRoute> {
    let paths: Vec<String> = {
        let mut paths: Vec<String> = (0..rng.usize(1..3)).map(|_| random_pattern(rng)).collect();
        paths.dedup();
        paths
    };
    let mut spec = json!({
        "paths": paths,
        "hosts": some(rng, 2, HOSTS),
        "methods": some(rng, 2, METHODS),
        "priority": rng.i64(0..3),
        "enabled": rng.u8(..10) != 0,
    });
    if rng.u8(..3) == 0 {
        spec["headers"] = json!([random_condition(rng, NAMES)]);
    }
    if rng.u8(..3) == 0 {
        spec["query"] = json!([random_condition(rng, &["q", "r"])]);
    }
    if rng.u8(..3) == 0 {
        spec["remote_addrs"] = json!(some(rng, 2, BLOCKS));
    }
    compiled_route(id, rng.u64(1..4), spec)
}

fn random_case(rng: &mut fastrand::Rng) -> Case {
    let mut target = String::new();
    for _ in 0..rng.usize(..5) {
        target.push('/');
        target.push_str(pick(rng, SEGMENTS));
    }
    if target.is_empty() || rng.u8(..8) == 0 {
        target.push('/');
    }
    let mut headers = HeaderMap::new();
    for _ in 0..rng.usize(..3) {
        headers.append(
            HeaderName::from_static(pick(rng, NAMES)),
            HeaderValue::from_static(pick(rng, VALUES)),
        );
    }
    let query = match rng.u8(..3) {
        0 => None,
        _ => Some(
            (0..rng.usize(..3))
                .map(|_| {
                    let name = pick(rng, &["q", "r", "s"]);
                    match rng.u8(..3) {
                        0 => name.to_owned(),
                        _ => format!("{name}={}", pick(rng, VALUES)),
                    }
                })
                .collect::<Vec<_>>()
                .join("&"),
        ),
    };
    Case {
        method: Method::from_bytes(pick(rng, METHODS).as_bytes()).unwrap(),
        host: pick(rng, REQUEST_HOSTS).to_owned(),
        path: target,
        query,
        headers,
        client: pick(rng, CLIENTS).parse().unwrap(),
    }
}

/// Random route sets and requests from small alphabets, so that routes overlap and conflict
/// often: the router never panics and always agrees with the naive matcher.
#[test]
fn the_router_agrees_with_a_naive_matcher() {
    for seed in 0..3000u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let routes: Vec<Arc<CompiledRoute>> = (0..rng.usize(1..12))
            .map(|i| random_route(&mut rng, &format!("r{i}")))
            .collect();
        let router = Router::build(routes.iter().cloned()).unwrap();

        for _ in 0..20 {
            let case = random_case(&mut rng);
            let got = render(&router.find(&case.view()));
            let expected = naive::find(&routes, &case);
            assert_eq!(
                got,
                expected,
                "seed {seed}: {} {:?} {:?}?{:?} {:?} {}\nroutes: {:#?}",
                case.method,
                case.host,
                case.path,
                case.query,
                case.headers,
                case.client,
                routes
                    .iter()
                    .map(|r| (&r.id, r.revision, &r.spec))
                    .collect::<Vec<_>>()
            );
        }
    }
}

/// Random edits (a route added, replaced, disabled or removed) applied to a router and to the
/// routers cloned from it at each step: every version answers exactly like a router built
/// from scratch over its own routes, and an edit never changes the versions before it.
#[test]
fn a_patched_router_matches_like_one_built_from_scratch() {
    for seed in 0..400u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut routes: BTreeMap<String, Arc<CompiledRoute>> = (0..rng.usize(..12))
            .map(|i| {
                let id = format!("r{i}");
                (id.clone(), random_route(&mut rng, &id))
            })
            .collect();
        let mut router = Router::build(routes.values().cloned()).unwrap();
        let mut versions = Vec::new();
        for _ in 0..30 {
            versions.push((router.clone(), routes.clone()));
            for _ in 0..rng.usize(1..4) {
                let id = format!("r{}", rng.usize(..16));
                if rng.u8(..3) == 0 {
                    assert_eq!(
                        router.remove(&id).map(|r| r.id.clone()),
                        routes.remove(&id).map(|r| r.id.clone())
                    );
                } else {
                    let route = random_route(&mut rng, &id);
                    router.insert(Arc::clone(&route)).unwrap();
                    routes.insert(id, route);
                }
            }
        }
        versions.push((router, routes));
        for (step, (patched, routes)) in versions.iter().enumerate() {
            let built = Router::build(routes.values().cloned()).unwrap();
            assert_eq!(patched.len(), built.len(), "seed {seed} step {step}");
            for id in routes.keys() {
                assert!(patched.route(id).is_some(), "seed {seed} step {step}: {id}");
            }
            for _ in 0..30 {
                let case = random_case(&mut rng);
                assert_eq!(
                    render(&patched.find(&case.view())),
                    render(&built.find(&case.view())),
                    "seed {seed} step {step}: {} {:?} {:?}\nroutes: {:#?}",
                    case.method,
                    case.host,
                    case.path,
                    routes
                        .values()
                        .map(|r| (&r.id, r.revision, &r.spec))
                        .collect::<Vec<_>>()
                );
            }
        }
    }
}

/// Patching a router copies only the changed route's way: the rest of the tree is the very
/// same memory as the version it was cloned from.
#[test]
fn a_patch_shares_what_it_does_not_change() {
    let routes: Vec<Arc<CompiledRoute>> = (0..1000)
        .map(|i| {
            compiled_route(
                &format!("r{i}"),
                1,
                json!({"paths": [format!("/svc/{i}/items/:id")]}),
            )
        })
        .collect();
    let before = Router::build(routes.iter().cloned()).unwrap();
    let mut after = before.clone();
    after
        .insert(compiled_route("r7", 2, json!({"paths": ["/moved/:id"]})))
        .unwrap();
    let found = |router: &Router, path: &str| match router.find(&RequestView::new(
        &Method::GET,
        "",
        path,
    )) {
        RouteMatch::Found { route, .. } => Some(route),
        _ => None,
    };
    assert!(found(&before, "/svc/7/items/1").is_some());
    assert!(found(&after, "/svc/7/items/1").is_none());
    assert_eq!(found(&after, "/moved/1").unwrap().revision, 2);
    assert!(Arc::ptr_eq(
        &found(&before, "/svc/8/items/1").unwrap(),
        &found(&after, "/svc/8/items/1").unwrap()
    ));
    // Each route is held by the list above, its entry in the tree and the map by id. Had the
    // patch rebuilt them, both versions would hold their own: ~4,000 references, not ~3,000.
    // Only the map's branches copied on the way to `r7` (a few dozen routes) hold more.
    let held: usize = routes.iter().map(Arc::strong_count).sum();
    assert!(held < 3_000 + 200, "{held} references");
    drop(before);
    let held: usize = routes.iter().map(Arc::strong_count).sum();
    assert_eq!(
        held,
        3_000 - 2,
        "r7's old version is held by the list alone"
    );
}
