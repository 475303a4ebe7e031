//! The router: which route serves a request, given its method, host, path, headers, query
//! string and client address.
//!
//! # Matching rules
//!
//! Paths (matched on the path as [`crate::proxy::path::normalize`] leaves it: escapes of
//! unreserved characters decoded, `//` merged, dot segments resolved, other escapes kept, so
//! `/a/` is not `/a` and `/a%2Fb` is one segment):
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
//! Headers and query arguments: every condition of a route must hold. `eq`, `prefix` and
//! `regex` compare the value byte for byte, case-sensitively; `regex` is an unanchored search
//! (write `^…$` to anchor it). A header or argument given several times passes if any of its
//! values does. `exists` holds for any value, even empty (`?debug`, `?debug=`); `absent` holds
//! when the name does not occur at all. Header names are case-insensitive. Query arguments
//! are decoded like HTML forms (`+` is a space, `%XX` a byte) before comparing names and
//! values.
//!
//! Client address: a route with `remote_addrs` matches only clients whose address (the TCP
//! peer; a trusted `X-Forwarded-For` is a later feature) is one of its addresses or inside one
//! of its CIDR blocks; an IPv4-mapped IPv6 peer (`::ffff:10.0.0.1`) counts as IPv4.
//!
//! Disabled routes never match.
//!
//! # Which route wins
//!
//! Among the routes that match, compared in this order:
//! 1. the most specific path: exact, then named segments, then prefix; among named-segment
//!    patterns, more literal segments win (`/a/:x/c` over `/a/:x/:y`); among prefix patterns,
//!    the longer prefix wins: more segments before the `*`, then more literal segments, then
//!    the longer literal text (`/static/img/*` over `/static/*` over `/static*` over `/*`);
//! 2. the most specific host: an exact host, then the longest wildcard, then "any host" (as
//!    with APISIX's host-then-path router, a tenant's own route beats a shared one);
//! 3. the higher `priority`;
//! 4. the older route (lower revision), then the smaller id, then the route's earlier path.
//!
//! Header, query and address conditions add no specificity: they only exclude. To prefer a
//! route with conditions over one without on the same path, give it a higher `priority`.
//!
//! If no route matches but some route matches everything except the method, the answer is
//! [`RouteMatch::MethodNotAllowed`] with the union of their methods (a 405). A route that
//! matches fully always wins over one that only lacks the method.
//!
//! # Cost
//!
//! [`Router::build`] compiles a snapshot's routes once into a radix tree over path segments
//! (the `tree` module): a lookup walks the request path and yields only the pattern sets whose
//! paths match, so its cost depends on the path, not on the number of routes. Each pattern set
//! indexes its routes by exact host (a hash lookup) and by wildcard suffix (one lookup per
//! label of the request's host); the remaining conditions are checked only on those
//! candidates, in the order above, and the first full match wins.

mod conditions;
mod tree;

#[cfg(any(test, fuzzing))]
pub mod fuzz;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, LazyLock};

use http::{HeaderMap, Method};

use crate::runtime::{CompileError, CompiledRoute};
use conditions::{Conditions, Context, HostPattern, normalize_host};
use tree::{ConfigMap, Hit, Hits, LeafId, PathTree, Pattern, Specificity};

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
        /// Which of the route's paths (`spec.paths`) matched.
        path: usize,
    },
    /// No route matches the request.
    NotFound,
    /// Routes match everything but the method.
    MethodNotAllowed {
        /// The methods those routes allow, sorted and without duplicates.
        allow: Vec<Method>,
    },
}

/// What the router looks at in a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The host as sent (`Host` header or URI authority, port allowed; `""` when there is
    /// none).
    pub host: &'a str,
    /// The URI path, still percent-encoded.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The raw query string, without the `?`.
    pub query: Option<&'a str>,
    /// The client's address (the TCP peer).
    pub client: IpAddr,
}

impl<'a> RequestView<'a> {
    /// A request with no headers and no query string, from the unspecified address `0.0.0.0`:
    /// for tests and tools that route by method, host and path only.
    pub fn new(method: &'a Method, host: &'a str, path: &'a str) -> RequestView<'a> {
        static NO_HEADERS: LazyLock<HeaderMap> = LazyLock::new(HeaderMap::new);
        RequestView {
            method,
            host,
            path,
            headers: &NO_HEADERS,
            query: None,
            client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }
}

/// Maps requests to routes. Built once per snapshot; never mutated.
#[derive(Debug, Default)]
pub struct Router {
    tree: PathTree,
    /// Indexed by [`LeafId`]: the routes of each pattern set.
    leaves: Vec<Leaf>,
    /// One per enabled (route, path), in tie-break order: a smaller index wins a tie.
    entries: Vec<Entry>,
}

/// The routes whose paths have one shape, indexed by host. Every list holds entry indexes in
/// increasing order, which is tie-break order.
#[derive(Debug)]
struct Leaf {
    specificity: Specificity,
    exact_hosts: ConfigMap<Vec<u32>>,
    /// By suffix including the leading dot (`.example.com`).
    wildcard_hosts: ConfigMap<Vec<u32>>,
    any_host: Vec<u32>,
}

#[derive(Debug)]
struct Entry {
    route: Arc<CompiledRoute>,
    /// The route's compiled conditions and paths.
    matcher: Arc<RouteMatcher>,
    /// Which of its paths this entry is.
    path: usize,
}

/// What the router compiles of one route: its conditions, hosts and path patterns. Kept with
/// the route ([`CompiledRoute::matcher`]), so a route shared with the next runtime is not
/// compiled again when the next router is built.
#[derive(Debug)]
pub struct RouteMatcher {
    conditions: Conditions,
    hosts: Box<[HostPattern]>,
    /// One per path, in the route's order.
    patterns: Vec<Pattern>,
}

impl RouteMatcher {
    fn compile(route: &CompiledRoute) -> Result<RouteMatcher, CompileError> {
        let (conditions, hosts) = Conditions::compile(route)?;
        let patterns = route
            .spec
            .paths
            .iter()
            .map(|path| {
                Pattern::parse(path).map_err(|reason| CompileError::InvalidPath {
                    route: route.id.clone(),
                    path: path.clone(),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(RouteMatcher {
            conditions,
            hosts: hosts.into(),
            patterns,
        })
    }

    /// The route's matcher, compiled on first use and kept with it.
    fn of(route: &CompiledRoute) -> Result<Arc<RouteMatcher>, CompileError> {
        if let Some(matcher) = route.matcher.get() {
            return Ok(Arc::clone(matcher));
        }
        let matcher = Arc::new(RouteMatcher::compile(route)?);
        // Another build racing on the same route compiled the same thing: either is right.
        Ok(Arc::clone(route.matcher.get_or_init(|| matcher)))
    }
}

impl Router {
    /// Builds the router from compiled routes. Disabled routes are left out.
    pub fn build(
        routes: impl IntoIterator<Item = Arc<CompiledRoute>>,
    ) -> Result<Router, CompileError> {
        struct Pending {
            route: Arc<CompiledRoute>,
            matcher: Arc<RouteMatcher>,
            index: usize,
        }
        let mut pending = Vec::new();
        for route in routes {
            if !route.spec.enabled {
                continue;
            }
            let matcher = RouteMatcher::of(&route)?;
            for index in 0..matcher.patterns.len() {
                pending.push(Pending {
                    route: Arc::clone(&route),
                    matcher: Arc::clone(&matcher),
                    index,
                });
            }
        }
        // Entry indexes follow the tie-break order, so every list built below in index order
        // is already sorted best first.
        pending.sort_by(|a, b| (tie_break(&a.route), a.index).cmp(&(tie_break(&b.route), b.index)));

        let mut router = Router::default();
        for (i, item) in pending.into_iter().enumerate() {
            let id = u32::try_from(i).map_err(|_| CompileError::InvalidPath {
                route: item.route.id.clone(),
                path: String::new(),
                reason: "more than 2^32 route paths".to_owned(),
            })?;
            let pattern = &item.matcher.patterns[item.index];
            let leaf = router.tree.insert(pattern) as usize;
            if leaf == router.leaves.len() {
                router.leaves.push(Leaf {
                    specificity: pattern.specificity,
                    exact_hosts: ConfigMap::default(),
                    wildcard_hosts: ConfigMap::default(),
                    any_host: Vec::new(),
                });
            }
            let Some(slot) = router.leaves.get_mut(leaf) else {
                // INVARIANT: the tree numbers leaves densely from 0, so a leaf is either known
                // or the next one.
                debug_assert!(false, "leaf {leaf} skipped");
                continue;
            };
            // INVARIANT: a leaf holds patterns of one shape, hence of one specificity.
            debug_assert_eq!(slot.specificity, pattern.specificity);
            if item.matcher.hosts.is_empty() {
                slot.any_host.push(id);
            }
            for host in item.matcher.hosts.iter() {
                let list = match host {
                    HostPattern::Exact(name) => slot.exact_hosts.entry(name.clone()).or_default(),
                    HostPattern::Wildcard(suffix) => {
                        slot.wildcard_hosts.entry(suffix.clone()).or_default()
                    }
                };
                // `A.com` and `a.com` are one host: list the entry once.
                if list.last() != Some(&id) {
                    list.push(id);
                }
            }
            router.entries.push(Entry {
                route: item.route,
                matcher: item.matcher,
                path: item.index,
            });
        }
        debug_assert_eq!(router.tree.leaves(), router.leaves.len());
        Ok(router)
    }

    /// Finds the route for a request.
    pub fn find(&self, request: &RequestView<'_>) -> RouteMatch {
        // Only origin-form paths are routed: `*` (OPTIONS) and authority-form never match.
        let Some(rest) = request.path.strip_prefix('/') else {
            return RouteMatch::NotFound;
        };
        let mut hits = Hits::new();
        let mut values = Vec::new();
        self.tree.find(rest, &mut hits, &mut values);
        if hits.is_empty() {
            return RouteMatch::NotFound;
        }
        let specificity = |hit: &Hit| {
            self.leaves
                .get(hit.leaf as usize)
                .map(|leaf| leaf.specificity)
        };
        // Most specific first; ties keep the tree's order (they are merged below anyway).
        hits.sort_by_key(|hit| std::cmp::Reverse(specificity(hit)));

        let lookup = Lookup {
            router: self,
            host: &normalize_host(request.host),
            values: &values,
        };
        let mut cx = Context::new(request);
        let mut allow = Vec::new();
        for group in hits.chunk_by(|a, b| specificity(a) == specificity(b)) {
            if let Some(found) = lookup.best_in_group(group, request.method, &mut cx, &mut allow) {
                return found;
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

    /// Every enabled route, by id (the routes of the next runtime that did not change are
    /// these, shared).
    pub fn routes(&self) -> HashMap<&str, &Arc<CompiledRoute>> {
        self.entries
            .iter()
            .map(|entry| (entry.route.id.as_str(), &entry.route))
            .collect()
    }

    /// The number of enabled (route, path) entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no route can match.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn leaf(&self, id: LeafId) -> Option<&Leaf> {
        self.leaves.get(id as usize)
    }
}

/// Orders equally specific paths: higher priority, then older revision, then smaller id.
fn tie_break(route: &CompiledRoute) -> (std::cmp::Reverse<i64>, u64, &str) {
    (
        std::cmp::Reverse(route.spec.priority),
        route.revision,
        route.id.as_str(),
    )
}

/// One lookup's view of the router and the request's path hits.
struct Lookup<'a> {
    router: &'a Router,
    /// Normalised.
    host: &'a str,
    /// The captured segment values; each hit names its range.
    values: &'a [&'a str],
}

impl Lookup<'_> {
    /// The best route among hits of equal path specificity, trying host tiers from the most
    /// specific (exact host, then wildcards longest first, then any host) and, within a tier,
    /// entries in tie-break order. Entries that match all but the method add their methods to
    /// `allow`.
    fn best_in_group<'h>(
        &'h self,
        group: &'h [Hit],
        method: &Method,
        cx: &mut Context<'_>,
        allow: &mut Vec<Method>,
    ) -> Option<RouteMatch> {
        let with_leaf = |hit: &'h Hit| Some((hit, self.router.leaf(hit.leaf)?));
        // Nearly every group is one pattern set: keep that one on the stack.
        let one = [group.first().and_then(with_leaf)?];
        let many: Vec<(&Hit, &Leaf)> = match group {
            [_] => Vec::new(),
            _ => group.iter().filter_map(with_leaf).collect(),
        };
        let leaves = if many.is_empty() { &one[..] } else { &many[..] };
        let host = self.host;
        if !host.is_empty() {
            let found = self.try_tier(leaves, |leaf| leaf.exact_hosts.get(host), method, cx, allow);
            if found.is_some() {
                return found;
            }
        }
        if leaves
            .iter()
            .any(|(_, leaf)| !leaf.wildcard_hosts.is_empty())
        {
            // Suffixes at each dot but a leading one, longest first: `a.b.c` → `.b.c`, `.c`.
            for (at, _) in host.match_indices('.').filter(|(at, _)| *at > 0) {
                let suffix = &host[at..];
                let found = self.try_tier(
                    leaves,
                    |leaf| leaf.wildcard_hosts.get(suffix),
                    method,
                    cx,
                    allow,
                );
                if found.is_some() {
                    return found;
                }
            }
        }
        self.try_tier(leaves, |leaf| Some(&leaf.any_host), method, cx, allow)
    }

    /// Tries the entries `tier` picks from each leaf, merged in tie-break order.
    fn try_tier<'l>(
        &self,
        leaves: &[(&Hit, &'l Leaf)],
        tier: impl Fn(&'l Leaf) -> Option<&'l Vec<u32>>,
        method: &Method,
        cx: &mut Context<'_>,
        allow: &mut Vec<Method>,
    ) -> Option<RouteMatch> {
        if let [(hit, leaf)] = leaves {
            // The common case: one pattern set, its list already in order.
            for &entry in tier(leaf)?.iter() {
                if let Some(found) = self.try_entry(entry, hit, method, cx, allow) {
                    return Some(found);
                }
            }
            return None;
        }
        let mut merged: Vec<(u32, &Hit)> = leaves
            .iter()
            .filter_map(|(hit, leaf)| Some((*hit, tier(leaf)?)))
            .flat_map(|(hit, list)| list.iter().map(move |&entry| (entry, hit)))
            .collect();
        merged.sort_by_key(|(entry, _)| *entry);
        merged
            .into_iter()
            .find_map(|(entry, hit)| self.try_entry(entry, hit, method, cx, allow))
    }

    fn try_entry(
        &self,
        entry: u32,
        hit: &Hit,
        method: &Method,
        cx: &mut Context<'_>,
        allow: &mut Vec<Method>,
    ) -> Option<RouteMatch> {
        let entry = self.router.entries.get(entry as usize)?;
        let conditions = &entry.matcher.conditions;
        if !conditions.matches(cx) {
            return None;
        }
        if !conditions.allows(method) {
            allow.extend(conditions.methods.iter().cloned());
            return None;
        }
        let values = self.values.get(hit.start..hit.start + hit.len)?;
        let names = &entry.matcher.patterns.get(entry.path)?.names;
        // INVARIANT: a pattern set's shape fixes how many segments it captures.
        debug_assert_eq!(values.len(), names.len());
        let params = names
            .iter()
            .zip(values)
            .map(|(name, value)| (name.to_string(), (*value).to_owned()))
            .collect();
        Some(RouteMatch::Found {
            route: Arc::clone(&entry.route),
            params,
            path: entry.path,
        })
    }
}
