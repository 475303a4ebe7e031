//! The router: which route serves a request, given its method, host and path.
//!
//! # Matching rules
//!
//! Paths (matched on the raw, still percent-encoded request path; no normalisation, so
//! `/a/` is not `/a` and `//a` is not `/a`):
//! - exact: `/exact` matches only `/exact`;
//! - named segments: `/users/:id` matches one whole, non-empty segment and captures it
//!   (`/users/42` gives `id = "42"`; `/users/` and `/users/1/x` do not match);
//! - prefix: a trailing `*` matches any rest. `/static/*` matches `/static/`, `/static/a/b`
//!   and also `/static` itself (people who write `/static/*` mean "the static tree", root
//!   included); `/api*` is a plain string prefix and matches `/api`, `/api/v1` and `/apiary`.
//!   Prefix patterns may contain named segments before the `*` (`/users/:id/*`).
//!
//! Hosts: exact names match case-insensitively, with the port and a trailing dot ignored;
//! `*.example.com` matches `a.example.com` and `a.b.example.com` but not `example.com`; a route
//! without hosts matches any host, including none.
//!
//! Methods: a route without methods matches any method. `HEAD` matches only routes that list
//! `HEAD` (or list no method): it does not implicitly match `GET`.
//!
//! Disabled routes never match.
//!
//! # Which route wins
//!
//! Among the routes that match, compared in this order:
//! 1. the most specific path: exact, then named segments, then prefix; among named-segment
//!    patterns, more literal segments win (`/a/:x/c` over `/a/:x/:y`); among prefix patterns,
//!    more segments before the `*`, then more literal segments, then the longer literal text
//!    (`/static/img/*` over `/static/*` over `/static*` over `/*`);
//! 2. the most specific host: an exact host, then the longest wildcard, then "any host";
//! 3. the higher `priority`;
//! 4. the older route (lower revision), then the smaller id.
//!
//! If no route matches but some route matches the host and path with another method, the
//! answer is [`RouteMatch::MethodNotAllowed`] with the union of their methods (a 405). A route
//! that matches fully always wins over one that only lacks the method.
//!
//! # Cost
//!
//! Exact paths are found with one hash lookup. Patterns are scanned in specificity order and
//! the scan stops at the first group of equally specific patterns that yields a match, so the
//! cost grows with the number of pattern routes; a radix tree replaces the scan in a later
//! version behind the same interface.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

use crate::runtime::{CompileError, CompiledRoute};

/// Named path segments captured by a match, in pattern order: (name, raw value).
pub type Params = Vec<(String, String)>;

/// The router's answer for one request.
#[derive(Debug)]
pub enum RouteMatch {
    /// A route serves the request.
    Found {
        /// The winning route.
        route: Arc<CompiledRoute>,
        /// Named path segments, in pattern order.
        params: Params,
    },
    /// No route matches the host and path.
    NotFound,
    /// Routes match the host and path, but not the method.
    MethodNotAllowed {
        /// The methods those routes allow, sorted and without duplicates.
        allow: Vec<Method>,
    },
}

/// Maps requests to routes. Built once per snapshot; never mutated.
#[derive(Debug, Default)]
pub struct Router {
    /// Exact path → its entries, best tie-break first.
    exact: HashMap<Box<str>, Vec<Entry>>,
    /// Every other pattern in groups of equally specific paths, the most specific group first;
    /// each group in tie-break order.
    groups: Vec<Vec<Entry>>,
}

#[derive(Debug)]
struct Entry {
    route: Arc<CompiledRoute>,
    pattern: Pattern,
    conditions: Arc<Conditions>,
}

/// What a route requires besides its path; shared by the entries of its paths.
#[derive(Debug)]
struct Conditions {
    hosts: Vec<HostPattern>,
    /// Empty: any method.
    methods: Vec<Method>,
}

#[derive(Debug)]
enum HostPattern {
    /// Lowercased, without a trailing dot.
    Exact(Box<str>),
    /// The suffix including its leading dot: `.example.com` for `*.example.com`.
    Wildcard(Box<str>),
}

#[derive(Debug)]
enum Pattern {
    /// The path is the `exact` map's key; nothing is left to check.
    Exact,
    /// Named segments, no `*`: the path has exactly these segments.
    Segments(Vec<Segment>),
    /// Full segments, then a literal that the rest of the path must start with.
    Prefix {
        segments: Vec<Segment>,
        tail: Box<str>,
    },
}

#[derive(Debug)]
enum Segment {
    Literal(Box<str>),
    Param(Box<str>),
}

/// How specific a path pattern is; greater is more specific.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity {
    /// 2 exact, 1 named segments, 0 prefix.
    class: u8,
    /// Full segments before the end (or the `*`).
    depth: usize,
    /// Literal segments among them.
    literals: usize,
    /// Bytes of literal text, the prefix's tail included.
    literal_bytes: usize,
}

/// How specifically a route's hosts match a request's host; greater is more specific.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct HostRank {
    /// 2 exact, 1 wildcard, 0 any.
    class: u8,
    /// The wildcard suffix's length, so `*.a.example.com` beats `*.example.com`.
    len: usize,
}

impl Router {
    /// Builds the router from compiled routes. Disabled routes are left out.
    pub fn build(
        routes: impl IntoIterator<Item = Arc<CompiledRoute>>,
    ) -> Result<Router, CompileError> {
        let mut exact: HashMap<Box<str>, Vec<Entry>> = HashMap::new();
        let mut patterns: Vec<(Specificity, usize, Entry)> = Vec::new();
        for route in routes {
            if !route.spec.enabled {
                continue;
            }
            let conditions = Arc::new(Conditions::compile(&route)?);
            for (index, path) in route.spec.paths.iter().enumerate() {
                let (pattern, specificity) =
                    Pattern::parse(path).map_err(|reason| CompileError::InvalidPath {
                        route: route.id.clone(),
                        path: path.clone(),
                        reason,
                    })?;
                let entry = Entry {
                    route: Arc::clone(&route),
                    pattern,
                    conditions: Arc::clone(&conditions),
                };
                if matches!(entry.pattern, Pattern::Exact) {
                    exact.entry(path.as_str().into()).or_default().push(entry);
                } else {
                    patterns.push((specificity, index, entry));
                }
            }
        }

        for entries in exact.values_mut() {
            entries.sort_by(|a, b| tie_break(&a.route).cmp(&tie_break(&b.route)));
        }
        patterns.sort_by(|(sa, ia, a), (sb, ib, b)| {
            (Reverse(*sa), tie_break(&a.route), *ia).cmp(&(Reverse(*sb), tie_break(&b.route), *ib))
        });
        let mut groups: Vec<Vec<Entry>> = Vec::new();
        let mut group_specificity = None;
        for (specificity, _, entry) in patterns {
            match groups.last_mut() {
                Some(group) if group_specificity == Some(specificity) => group.push(entry),
                _ => {
                    groups.push(vec![entry]);
                    group_specificity = Some(specificity);
                }
            }
        }
        Ok(Router { exact, groups })
    }

    /// Finds the route for a request. `host` is the request's host as sent (`Host` header or
    /// URI authority, port allowed; `""` when there is none); `path` is the URI path.
    pub fn find(&self, method: &Method, host: &str, path: &str) -> RouteMatch {
        // Only origin-form paths are routed: `*` (OPTIONS) and authority-form never match.
        let Some(rest) = path.strip_prefix('/') else {
            return RouteMatch::NotFound;
        };
        let host = normalize_host(host);
        let request = Request {
            method,
            host: &host,
            path_rest: rest,
        };
        let mut allow = Vec::new();
        let exact = self.exact.get(path);
        for entries in exact.into_iter().chain(&self.groups) {
            if let Some((route, params)) = best_in_group(entries, &request, &mut allow) {
                return RouteMatch::Found { route, params };
            }
        }
        if allow.is_empty() {
            RouteMatch::NotFound
        } else {
            allow.sort_by(|a: &Method, b: &Method| a.as_str().cmp(b.as_str()));
            allow.dedup();
            RouteMatch::MethodNotAllowed { allow }
        }
    }

    /// The number of enabled (route, path) entries.
    pub fn len(&self) -> usize {
        self.exact.values().chain(&self.groups).map(Vec::len).sum()
    }

    /// Whether no route can match.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Request<'a> {
    method: &'a Method,
    host: &'a str,
    /// The path after its leading `/`.
    path_rest: &'a str,
}

/// Orders equally specific paths: higher priority, then older revision, then smaller id.
fn tie_break(route: &CompiledRoute) -> (Reverse<i64>, u64, &str) {
    (
        Reverse(route.spec.priority),
        route.revision,
        route.id.as_str(),
    )
}

/// The best entry among equally specific paths. `entries` are in tie-break order, so the first
/// entry with a given host rank beats later ones with the same rank; only a more specific
/// host can overtake it. Entries that match but for the method add their methods to `allow`.
fn best_in_group(
    entries: &[Entry],
    request: &Request<'_>,
    allow: &mut Vec<Method>,
) -> Option<(Arc<CompiledRoute>, Params)> {
    let mut best: Option<(&Entry, HostRank, Params)> = None;
    let mut params = Vec::new();
    for entry in entries {
        let Some(rank) = entry.conditions.host_rank(request.host) else {
            continue;
        };
        if best
            .as_ref()
            .is_some_and(|(_, best_rank, _)| *best_rank >= rank)
        {
            continue;
        }
        params.clear();
        if !entry.pattern.matches(request.path_rest, &mut params) {
            continue;
        }
        if !entry.conditions.allows(request.method) {
            allow.extend(entry.conditions.methods.iter().cloned());
            continue;
        }
        best = Some((entry, rank, std::mem::take(&mut params)));
    }
    best.map(|(entry, _, params)| (Arc::clone(&entry.route), params))
}

impl Conditions {
    fn compile(route: &CompiledRoute) -> Result<Conditions, CompileError> {
        let mut hosts = Vec::with_capacity(route.spec.hosts.len());
        for host in &route.spec.hosts {
            let invalid = || CompileError::InvalidHost {
                route: route.id.clone(),
                host: host.clone(),
            };
            let lower = host.to_ascii_lowercase();
            let lower = lower.strip_suffix('.').unwrap_or(&lower);
            let pattern = match lower.strip_prefix('*') {
                Some(suffix) if suffix.len() > 1 && suffix.starts_with('.') => {
                    HostPattern::Wildcard(suffix.into())
                }
                Some(_) => return Err(invalid()),
                None if lower.is_empty() || lower.contains('*') => return Err(invalid()),
                None => HostPattern::Exact(lower.into()),
            };
            if let HostPattern::Wildcard(suffix) = &pattern
                && suffix[1..].contains('*')
            {
                return Err(invalid());
            }
            hosts.push(pattern);
        }
        let methods = route
            .spec
            .methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.as_bytes()).map_err(|_| CompileError::InvalidMethod {
                    route: route.id.clone(),
                    method: m.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Conditions { hosts, methods })
    }

    /// How specifically the host matches, or `None` if it does not.
    fn host_rank(&self, host: &str) -> Option<HostRank> {
        if self.hosts.is_empty() {
            return Some(HostRank { class: 0, len: 0 });
        }
        self.hosts
            .iter()
            .filter_map(|pattern| match pattern {
                HostPattern::Exact(name) => (**name == *host).then_some(HostRank {
                    class: 2,
                    len: name.len(),
                }),
                HostPattern::Wildcard(suffix) => {
                    (host.len() > suffix.len() && host.ends_with(&**suffix)).then_some(HostRank {
                        class: 1,
                        len: suffix.len(),
                    })
                }
            })
            .max()
    }

    fn allows(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }
}

impl Pattern {
    fn parse(path: &str) -> Result<(Pattern, Specificity), String> {
        // The snapshot was validated already; checking again keeps a hand-built snapshot (or a
        // validator bug) from producing a pattern this parser misreads.
        gateway_proto::schema::check_path(path)?;
        let rest = path
            .strip_prefix('/')
            .ok_or_else(|| "a path starts with \"/\"".to_owned())?;
        let parse_segments = |parts: &[&str]| -> Vec<Segment> {
            parts
                .iter()
                .map(|part| match part.strip_prefix(':') {
                    Some(name) => Segment::Param(name.into()),
                    None => Segment::Literal((*part).into()),
                })
                .collect()
        };
        let literal_stats = |segments: &[Segment]| {
            segments.iter().fold((0, 0), |(count, bytes), s| match s {
                Segment::Literal(l) => (count + 1, bytes + l.len()),
                Segment::Param(_) => (count, bytes),
            })
        };

        if let Some(stem) = rest.strip_suffix('*') {
            let mut parts: Vec<&str> = stem.split('/').collect();
            // `split` yields at least one part, so there is always a tail (maybe empty).
            let tail = parts.pop().unwrap_or_default();
            if tail.contains(':') {
                return Err(format!("a named segment cannot end in \"*\": {path}"));
            }
            let segments = parse_segments(&parts);
            let (literals, bytes) = literal_stats(&segments);
            let specificity = Specificity {
                class: 0,
                depth: segments.len(),
                literals,
                literal_bytes: bytes + tail.len(),
            };
            return Ok((
                Pattern::Prefix {
                    segments,
                    tail: tail.into(),
                },
                specificity,
            ));
        }

        let parts: Vec<&str> = rest.split('/').collect();
        let segments = parse_segments(&parts);
        let (literals, literal_bytes) = literal_stats(&segments);
        let class = if literals == segments.len() { 2 } else { 1 };
        let specificity = Specificity {
            class,
            depth: segments.len(),
            literals,
            literal_bytes,
        };
        let pattern = if class == 2 {
            Pattern::Exact
        } else {
            Pattern::Segments(segments)
        };
        Ok((pattern, specificity))
    }

    /// Whether the path (after its leading `/`) matches; captures named segments into `params`.
    fn matches(&self, path_rest: &str, params: &mut Params) -> bool {
        match self {
            Pattern::Exact => true,
            Pattern::Segments(segments) => {
                let mut parts = path_rest.split('/');
                for segment in segments {
                    match parts.next() {
                        Some(part) if segment.matches(part, params) => {}
                        _ => return false,
                    }
                }
                parts.next().is_none()
            }
            Pattern::Prefix { segments, tail } => {
                let mut rest = path_rest;
                for (i, segment) in segments.iter().enumerate() {
                    let (part, after) = match rest.split_once('/') {
                        Some((part, after)) => (part, Some(after)),
                        None => (rest, None),
                    };
                    if !segment.matches(part, params) {
                        return false;
                    }
                    match after {
                        Some(after) => rest = after,
                        // The path ends here: `/static/*` still matches `/static`.
                        None => return i + 1 == segments.len() && tail.is_empty(),
                    }
                }
                rest.starts_with(&**tail)
            }
        }
    }
}

impl Segment {
    fn matches(&self, part: &str, params: &mut Params) -> bool {
        match self {
            Segment::Literal(literal) => **literal == *part,
            Segment::Param(name) => {
                if part.is_empty() {
                    return false;
                }
                params.push((name.to_string(), part.to_owned()));
                true
            }
        }
    }
}

/// Lowercases the host and drops the port and a trailing dot: `API.Example.com.:8080` →
/// `api.example.com`; `[::1]:80` → `[::1]`.
fn normalize_host(host: &str) -> Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::compiled_route;
    use serde_json::json;

    enum Expect {
        Route(&'static str, &'static [(&'static str, &'static str)]),
        NotFound,
        NotAllowed(&'static [&'static str]),
    }
    use Expect::*;

    fn router() -> Router {
        let routes = [
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
        ];
        Router::build(
            routes
                .into_iter()
                .map(|(id, rev, spec)| compiled_route(id, rev, spec)),
        )
        .unwrap()
    }

    #[test]
    fn routing_table() {
        let router = router();
        let cases: &[(&str, &str, &str, Expect)] = &[
            ("GET", "x", "/exact", Route("exact", &[])),
            ("GET", "x", "/exact/", NotFound),
            ("GET", "x", "/users/42", Route("users-id", &[("id", "42")])),
            ("GET", "x", "/users/me", Route("users-me", &[])),
            ("GET", "x", "/users/", NotFound),
            ("GET", "x", "/users/1/x", NotFound),
            (
                "GET",
                "x",
                "/users/%2F",
                Route("users-id", &[("id", "%2F")]),
            ),
            ("POST", "x", "/users/42", NotAllowed(&["GET"])),
            ("GET", "x", "/a/b/c", Route("a-x-c", &[("x", "b")])),
            (
                "GET",
                "x",
                "/a/b/d",
                Route("a-x-y", &[("x", "b"), ("y", "d")]),
            ),
            ("GET", "x", "/static", Route("static", &[])),
            ("GET", "x", "/static/", Route("static", &[])),
            ("GET", "x", "/static/css/a.css", Route("static", &[])),
            ("GET", "x", "/static/img/a.png", Route("static-img", &[])),
            ("GET", "x", "/static/img", Route("static-img", &[])),
            ("GET", "x", "/staticx", NotFound),
            ("GET", "x", "/api", Route("api-star", &[])),
            ("GET", "x", "/apiary/x", Route("api-star", &[])),
            (
                "GET",
                "x",
                "/files/ann/a/b",
                Route("user-files", &[("user", "ann")]),
            ),
            (
                "GET",
                "x",
                "/files/ann",
                Route("user-files", &[("user", "ann")]),
            ),
            ("GET", "x", "/files//a", NotFound),
            (
                "GET",
                "catchall.test",
                "/anything/at/all",
                Route("catch-all", &[]),
            ),
            ("GET", "catchall.test", "/", Route("catch-all", &[])),
            ("GET", "catchall.test", "/exact", Route("exact", &[])),
            ("GET", "x", "/", NotFound),
            ("GET", "api.example.com", "/h", Route("host-exact", &[])),
            (
                "GET",
                "API.Example.COM:8443",
                "/h",
                Route("host-exact", &[]),
            ),
            ("GET", "api.example.com.", "/h", Route("host-exact", &[])),
            ("GET", "www.example.com", "/h", Route("host-wild", &[])),
            ("GET", "a.b.example.com", "/h", Route("host-wild-deep", &[])),
            ("GET", "a.c.example.com", "/h", Route("host-wild", &[])),
            ("GET", "example.com", "/h", Route("host-any", &[])),
            ("GET", "", "/h", Route("host-any", &[])),
            ("GET", "[::1]:8080", "/h", Route("host-any", &[])),
            ("GET", "x", "/p", Route("prio-high", &[])),
            ("GET", "x", "/age", Route("z-old", &[])),
            ("GET", "x", "/ids", Route("id-a", &[])),
            ("POST", "x", "/m", Route("m-post-delete", &[])),
            ("PUT", "x", "/m", Route("m-post-put", &[])),
            ("PATCH", "x", "/m", NotAllowed(&["DELETE", "POST", "PUT"])),
            ("HEAD", "x", "/get", NotAllowed(&["GET"])),
            ("GET", "x", "/disabled", NotFound),
            ("GET", "x", "/mixed", Route("mixed-exact", &[])),
            ("POST", "x", "/mixed", Route("mixed-prefix", &[])),
            ("PUT", "x", "/mixed", NotAllowed(&["GET", "POST"])),
            ("GET", "multi.test", "/two/2", Route("multi", &[("n", "2")])),
            ("GET", "other.test", "/one", NotFound),
            ("GET", "x", "*", NotFound),
            ("GET", "x", "", NotFound),
        ];
        for (method, host, path, expect) in cases {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let got = router.find(&method, host, path);
            let case = format!("{method} {host:?} {path:?}");
            match (expect, got) {
                (Route(id, params), RouteMatch::Found { route, params: got }) => {
                    assert_eq!(route.id, *id, "{case}");
                    let got: Vec<(&str, &str)> =
                        got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    assert_eq!(got, *params, "{case}");
                }
                (NotFound, RouteMatch::NotFound) => {}
                (NotAllowed(methods), RouteMatch::MethodNotAllowed { allow }) => {
                    let allow: Vec<&str> = allow.iter().map(Method::as_str).collect();
                    assert_eq!(allow, *methods, "{case}");
                }
                (_, got) => panic!("{case}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn specificity_orders_patterns() {
        let spec = |path| Pattern::parse(path).unwrap().1;
        let ordered = [
            "/a/b/c",
            "/a/:x/c",
            "/a/:x/:y",
            "/static/img/*",
            "/static/im*",
            "/static/*",
            "/static*",
            "/*",
        ];
        for pair in ordered.windows(2) {
            assert!(
                spec(pair[0]) > spec(pair[1]),
                "{} should beat {}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn bad_patterns_are_compile_errors_not_panics() {
        for (paths, hosts) in [
            (json!(["/a/*/b"]), json!([])),
            (json!(["relative"]), json!([])),
            (json!(["/a/:"]), json!([])),
            (json!(["/a"]), json!(["*"])),
            (json!(["/a"]), json!(["a.*.com"])),
            (json!(["/a"]), json!(["*example.com"])),
            (json!(["/a"]), json!([""])),
        ] {
            let route = compiled_route("bad", 1, json!({"paths": paths, "hosts": hosts}));
            assert!(Router::build([route]).is_err(), "{paths} {hosts}");
        }
    }

    #[test]
    fn adversarial_requests_do_not_panic() {
        let router = router();
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
        ];
        for host in hosts {
            for path in paths {
                let _ = router.find(&Method::GET, host, path);
            }
        }
    }

    #[test]
    fn an_empty_router_finds_nothing() {
        let router = Router::default();
        assert!(router.is_empty());
        assert!(matches!(
            router.find(&Method::GET, "", "/"),
            RouteMatch::NotFound
        ));
    }
}
