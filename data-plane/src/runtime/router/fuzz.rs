//! Fuzzing entry for the router: patterns as a snapshot could carry them (compiled without the
//! control plane's schema, as a buggy or hostile one might send them) and a client's request.
//! Built for tests and for `cargo fuzz` (`--cfg fuzzing`, see `tests/fuzz`).
//!
//! Besides "no panic" in building or matching: a route found is enabled and allows the method,
//! and a 405 never lists the request's own method.

use std::sync::Arc;

use http::Method;
use serde_json::json;

use super::{RequestView, RouteMatch, Router};
use crate::runtime::{CompiledRoute, RouteTarget};

/// Routes built from one input, at most.
const MAX_ROUTES: usize = 32;

/// The first line is the request (`METHOD HOST PATH`), each further line a route
/// (`PATH HOST METHOD PRIORITY off`, fields after the path optional; `off` disables it).
pub fn route(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let request = lines.next().unwrap_or_default();
    let mut fields = request.splitn(3, ' ');
    let Ok(method) = Method::from_bytes(fields.next().unwrap_or_default().as_bytes()) else {
        return;
    };
    let host = fields.next().unwrap_or_default();
    let path = fields.next().unwrap_or_default();
    let routes = lines.take(MAX_ROUTES).enumerate().filter_map(|(i, line)| {
        let mut fields = line.split(' ');
        let path = fields.next().unwrap_or_default();
        let hosts: Vec<&str> = fields
            .next()
            .filter(|h| !h.is_empty())
            .into_iter()
            .collect();
        let methods: Vec<&str> = fields
            .next()
            .filter(|m| !m.is_empty())
            .into_iter()
            .collect();
        let priority: i64 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let enabled = fields.next() != Some("off");
        let spec = json!({"paths": [path], "hosts": hosts, "methods": methods,
            "priority": priority, "enabled": enabled});
        Some(Arc::new(CompiledRoute {
            id: format!("r{i}"),
            revision: i as u64 % 3,
            spec: serde_json::from_value(spec).ok()?,
            target: RouteTarget::Endpoint,
            plugins: Default::default(),
            matcher: Default::default(),
        }))
    });
    let Ok(router) = Router::build(routes) else {
        return;
    };
    match router.find(&RequestView::new(&method, host, path)) {
        RouteMatch::Found { route, .. } => {
            assert!(route.spec.enabled);
            let methods = &route.spec.methods;
            assert!(methods.is_empty() || methods.iter().any(|m| m == method.as_str()));
        }
        RouteMatch::MethodNotAllowed { allow } => {
            assert!(!allow.is_empty() && !allow.contains(&method));
        }
        RouteMatch::NotFound => {}
    }
}

#[cfg(test)]
mod tests {
    use super::route;
    use crate::test_support::mutations;

    const SEEDS: &[&[u8]] = &[
        b"GET a.example.com /users/42/files/x\n/users/:id\n/users/:id/files/* *.example.com GET 5\n/users/me a.example.com\n/*",
        b"POST  /api/v1\n/api* \nPOST\n/api/:v PUT\n/api/v1 x.test DELETE -3\n/api/v1   9 off",
        b"OPTIONS A.Example.Com. /static\n/static/* a.example.com\n/:a/:b\n/static/img/* *.com",
    ];

    #[test]
    fn mutated_routes_and_requests_keep_the_routers_invariants() {
        mutations(SEEDS, 20_000, route);
    }
}
