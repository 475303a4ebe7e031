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
//!
//! The tree, its host indexes and the routes by id are persistent (the `pmap` module): the next
//! config version's router is the previous one cloned (a few reference counts) and patched with
//! [`Router::remove`] and [`Router::insert`], which copy only what lies on the changed route's
//! way and share the rest. One route changed costs the same in a config of ten routes or ten
//! thousand, and so does freeing the router it replaced.

mod conditions;
mod pmap;
mod tree;

#[cfg(any(test, fuzzing))]
pub mod fuzz;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, LazyLock};

use http::{HeaderMap, Method};

use crate::runtime::{CompileError, CompiledRoute};
use conditions::{Conditions, Context, HostPattern, normalize_host};
use pmap::PMap;
use tree::{PathTree, Pattern, Specificity};

type Hit<'t> = tree::Hit<'t, Leaf>;
type Hits<'t> = tree::Hits<'t, Leaf>;

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

/// Maps requests to routes. Built once per snapshot, or patched from the previous snapshot's
/// router; `Clone` is cheap and shares everything.
#[derive(Clone, Debug, Default)]
pub struct Router {
    tree: PathTree<Leaf>,
    /// Every route given, disabled ones too, by id.
    routes: PMap<Arc<CompiledRoute>>,
    /// The number of enabled (route, path) entries.
    entries: usize,
}

/// A list of entries in tie-break order (best first), shared between versions.
type Entries = Arc<Vec<Arc<Entry>>>;

/// The routes whose paths have one shape, indexed by host. Every list holds entries in
/// tie-break order.
#[derive(Clone, Debug)]
struct Leaf {
    specificity: Specificity,
    exact_hosts: PMap<Entries>,
    /// By suffix including the leading dot (`.example.com`).
    wildcard_hosts: PMap<Entries>,
    any_host: Vec<Arc<Entry>>,
}

impl Leaf {
    fn new(specificity: Specificity) -> Leaf {
        Leaf {
            specificity,
            exact_hosts: PMap::default(),
            wildcard_hosts: PMap::default(),
            any_host: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.any_host.is_empty() && self.exact_hosts.is_empty() && self.wildcard_hosts.is_empty()
    }

    /// Lists `entry` under each of its hosts (or under any host).
    fn add(&mut self, entry: &Arc<Entry>) {
        if entry.matcher.hosts.is_empty() {
            add_to(&mut self.any_host, entry);
        }
        for host in entry.matcher.hosts.iter() {
            let (map, name) = match host {
                HostPattern::Exact(name) => (&mut self.exact_hosts, name),
                HostPattern::Wildcard(suffix) => (&mut self.wildcard_hosts, suffix),
            };
            if map.get(name).is_none() {
                map.insert(name, Entries::default());
            }
            // `A.com` and `a.com` are one host: `add_to` lists the entry once.
            if let Some(list) = map.get_mut(name) {
                add_to(Arc::make_mut(list), entry);
            }
        }
    }

    /// Takes `entry` (equal by id and path) off every list; true if the leaf is empty now.
    fn remove(&mut self, entry: &Entry) -> bool {
        if entry.matcher.hosts.is_empty() {
            remove_from(&mut self.any_host, entry);
        }
        for host in entry.matcher.hosts.iter() {
            let (map, name) = match host {
                HostPattern::Exact(name) => (&mut self.exact_hosts, name),
                HostPattern::Wildcard(suffix) => (&mut self.wildcard_hosts, suffix),
            };
            if let Some(list) = map.get_mut(name) {
                let list = Arc::make_mut(list);
                remove_from(list, entry);
                if list.is_empty() {
                    map.remove(name);
                }
            }
        }
        self.is_empty()
    }
}

/// Inserts `entry` at its place in tie-break order, unless it is listed already.
fn add_to(list: &mut Vec<Arc<Entry>>, entry: &Arc<Entry>) {
    if let Err(at) = list.binary_search_by(|e| e.order().cmp(&entry.order())) {
        list.insert(at, Arc::clone(entry));
    }
}

fn remove_from(list: &mut Vec<Arc<Entry>>, entry: &Entry) {
    if let Ok(at) = list.binary_search_by(|e| e.order().cmp(&entry.order())) {
        list.remove(at);
    }
}

#[derive(Debug)]
struct Entry {
    route: Arc<CompiledRoute>,
    /// The route's compiled conditions and paths.
    matcher: Arc<RouteMatcher>,
    /// Which of its paths this entry is.
    path: usize,
}

impl Entry {
    /// Where the entry stands among equally specific ones: smaller wins. Unique per entry, since
    /// route ids are.
    fn order(&self) -> (Reverse<i64>, u64, &str, usize) {
        let (priority, revision, id) = tie_break(&self.route);
        (priority, revision, id, self.path)
    }
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
    /// Builds the router from compiled routes. Disabled routes are left out of matching. Of
    /// two routes with one id (a snapshot has none), the later replaces the earlier.
    pub fn build(
        routes: impl IntoIterator<Item = Arc<CompiledRoute>>,
    ) -> Result<Router, CompileError> {
        let mut router = Router::default();
        for route in routes {
            router.insert(route)?;
        }
        Ok(router)
    }

    /// Adds a route, replacing the route of the same id if there is one. Only what lies on the
    /// route's way through the tree is copied from a router this one shares it with. On an error
    /// the router is left as it was.
    pub fn insert(&mut self, route: Arc<CompiledRoute>) -> Result<(), CompileError> {
        let matcher = if route.spec.enabled {
            Some(RouteMatcher::of(&route)?)
        } else {
            None
        };
        self.remove(&route.id);
        self.routes.insert(&route.id, Arc::clone(&route));
        let Some(matcher) = matcher else {
            return Ok(());
        };
        for (index, pattern) in matcher.patterns.iter().enumerate() {
            let entry = Arc::new(Entry {
                route: Arc::clone(&route),
                matcher: Arc::clone(&matcher),
                path: index,
            });
            let Some(leaf) = self
                .tree
                .leaf_mut(pattern, || Leaf::new(pattern.specificity))
            else {
                // INVARIANT: the tree makes whatever it lacks on the way to a leaf.
                debug_assert!(false, "no leaf for {}", route.id);
                continue;
            };
            // INVARIANT: a leaf holds patterns of one shape, hence of one specificity.
            debug_assert_eq!(leaf.specificity, pattern.specificity);
            leaf.add(&entry);
            self.entries += 1;
        }
        Ok(())
    }

    /// Removes the route `id`, if there is one; returns it.
    pub fn remove(&mut self, id: &str) -> Option<Arc<CompiledRoute>> {
        let route = self.routes.remove(id)?;
        // Enabled routes got their matcher when they were inserted.
        let Some(matcher) = route.matcher.get().filter(|_| route.spec.enabled) else {
            return Some(route);
        };
        for (index, pattern) in matcher.patterns.iter().enumerate() {
            let entry = Entry {
                route: Arc::clone(&route),
                matcher: Arc::clone(matcher),
                path: index,
            };
            self.tree.change_leaf(pattern, |leaf| leaf.remove(&entry));
            self.entries -= 1;
        }
        Some(route)
    }

    /// The route `id` (disabled ones too).
    pub fn route(&self, id: &str) -> Option<&Arc<CompiledRoute>> {
        self.routes.get(id)
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
        let specificity = |hit: &Hit| hit.leaf.specificity;
        // Most specific first; ties keep the tree's order (they are merged below anyway).
        hits.sort_by_key(|hit| Reverse(specificity(hit)));

        let lookup = Lookup {
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

    /// Every route, disabled ones too, by id (the routes of the next runtime that did not
    /// change are these, shared).
    pub fn routes(&self) -> HashMap<&str, &Arc<CompiledRoute>> {
        let mut routes = HashMap::with_capacity(self.routes.len());
        self.for_each_route(|id, route| {
            routes.insert(id, route);
        });
        routes
    }

    /// Calls `f` with every route, disabled ones too, in no particular order.
    pub fn for_each_route<'a>(&'a self, f: impl FnMut(&'a str, &'a Arc<CompiledRoute>)) {
        self.routes.for_each(f);
    }

    /// The number of routes, disabled ones too.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// The number of enabled (route, path) entries.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether no route can match.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

/// Orders equally specific paths: higher priority, then older revision, then smaller id.
fn tie_break(route: &CompiledRoute) -> (Reverse<i64>, u64, &str) {
    (
        Reverse(route.spec.priority),
        route.revision,
        route.id.as_str(),
    )
}

/// One lookup's view of the request's path hits.
struct Lookup<'a> {
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
    fn best_in_group(
        &self,
        leaves: &[Hit<'_>],
        method: &Method,
        cx: &mut Context<'_>,
        allow: &mut Vec<Method>,
    ) -> Option<RouteMatch> {
        let host = self.host;
        if !host.is_empty() {
            let found = self.try_tier(
                leaves,
                |leaf| leaf.exact_hosts.get(host).map(|l| l.as_slice()),
                method,
                cx,
                allow,
            );
            if found.is_some() {
                return found;
            }
        }
        if leaves.iter().any(|hit| !hit.leaf.wildcard_hosts.is_empty()) {
            // Suffixes at each dot but a leading one, longest first: `a.b.c` → `.b.c`, `.c`.
            for (at, _) in host.match_indices('.').filter(|(at, _)| *at > 0) {
                let suffix = &host[at..];
                let found = self.try_tier(
                    leaves,
                    |leaf| leaf.wildcard_hosts.get(suffix).map(|l| l.as_slice()),
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
        leaves: &[Hit<'l>],
        tier: impl Fn(&'l Leaf) -> Option<&'l [Arc<Entry>]>,
        method: &Method,
        cx: &mut Context<'_>,
        allow: &mut Vec<Method>,
    ) -> Option<RouteMatch> {
        if let [hit] = leaves {
            // The common case: one pattern set, its list already in order.
            for entry in tier(hit.leaf)? {
                if let Some(found) = self.try_entry(entry, hit, method, cx, allow) {
                    return Some(found);
                }
            }
            return None;
        }
        let mut merged: Vec<(&Arc<Entry>, &Hit)> = leaves
            .iter()
            .filter_map(|hit| Some((hit, tier(hit.leaf)?)))
            .flat_map(|(hit, list)| list.iter().map(move |entry| (entry, hit)))
            .collect();
        merged.sort_by(|(a, _), (b, _)| a.order().cmp(&b.order()));
        merged
            .into_iter()
            .find_map(|(entry, hit)| self.try_entry(entry, hit, method, cx, allow))
    }

    fn try_entry(
        &self,
        entry: &Entry,
        hit: &Hit,
        method: &Method,
        cx: &mut Context<'_>,
        allow: &mut Vec<Method>,
    ) -> Option<RouteMatch> {
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
