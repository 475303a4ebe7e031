//! Compiling batches: what the request path gets, and what a hand-built snapshot cannot sneak
//! past the compiler.

use serde_json::json;

use http::Method;

use crate::router::{RequestView, RouteMatch};
use crate::runtime::{CompileError, RouteTarget, Runtime};
use crate::test_support::snapshot;

fn upstream() -> serde_json::Value {
    json!({"nodes": [{"host": "127.0.0.1", "port": 1}]})
}

#[test]
fn a_batch_route_compiles_in_dependency_order_on_shared_upstreams() {
    let snap = snapshot(
        3,
        &[
            ("upstreams", "api", upstream()),
            (
                "routes",
                "r",
                json!({"paths": ["/p/:id"], "batch": {"merge": "array", "requests": [
                    {"name": "orders", "upstream_id": "api", "path": "/o?u={resp.user./id}"},
                    {"name": "user", "upstream_id": "api", "path": "/u/{param.id}", "headers": {"x-a": "{header.x-b}"}},
                    {"name": "cart", "upstream_id": "api", "path": "/c", "body": {"a": 1}, "method": "POST"}
                ]}}),
            ),
        ],
    );
    let runtime = Runtime::compile(&snap, None).unwrap();
    let RouteMatch::Found { route, .. } =
        runtime
            .router
            .find(&RequestView::new(&Method::GET, "h", "/p/1"))
    else {
        panic!("the route matches")
    };
    let RouteTarget::Batch(batch) = &route.target else {
        panic!("a batch route")
    };
    assert_eq!(batch.order, [1, 0, 2]);
    assert!(!batch.independent);
    assert_eq!(batch.requests[0].deps, [1]);
    assert!(std::sync::Arc::ptr_eq(
        &batch.requests[2].upstream,
        &runtime.upstreams["api"]
    ));
    assert_eq!(batch.requests[2].method, Some(http::Method::POST));
    assert!(route.upstream().is_none());
}

#[test]
fn a_hand_built_cyclic_batch_is_refused() {
    let mut snap = snapshot(1, &[("upstreams", "api", upstream())]);
    let route: gateway_proto::model::Route = serde_json::from_value(json!({
        "paths": ["/"],
        "batch": {"requests": [
            {"name": "a", "upstream_id": "api", "path": "/{resp.b./x}"},
            {"name": "b", "upstream_id": "api", "path": "/{resp.a./x}"}
        ]}
    }))
    .unwrap();
    snap.resources.insert(
        gateway_proto::ResourceKey::new(gateway_proto::Kind::Routes, "r"),
        gateway_proto::snapshot::SnapshotResource {
            revision: 1,
            parsed: gateway_proto::model::Parsed::Route(route),
        },
    );
    assert!(matches!(
        Runtime::compile(&snap, None),
        Err(CompileError::InvalidBatch { .. })
    ));
}

#[test]
fn answers_are_kept_raw_parsed_or_carried_as_strings() {
    use super::merge::Answer;
    use super::parse_body;
    use bytes::Bytes;
    use serde_json::Value;
    let body = |text: &'static [u8]| Bytes::from_static(text);
    // JSON no one reads: its bytes, without the surrounding whitespace.
    assert_eq!(
        parse_body(body(b" {\"a\": 1.50}\r\n"), true),
        Answer::Raw(body(b"{\"a\": 1.50}"))
    );
    // JSON a template reads, or a deep merge: parsed.
    assert_eq!(
        parse_body(body(b"{\"a\": 1}"), false),
        Answer::Value(json!({"a": 1}))
    );
    // Not JSON (trailing bytes, bad UTF-8): a string, either way.
    for keep_raw in [true, false] {
        assert_eq!(
            parse_body(body(b"{\"a\": 1} x"), keep_raw),
            Answer::Value(json!("{\"a\": 1} x"))
        );
        assert_eq!(
            parse_body(body(b"ok \xff"), keep_raw),
            Answer::Value(json!("ok \u{fffd}"))
        );
        assert_eq!(
            parse_body(Bytes::new(), keep_raw),
            Answer::Value(Value::Null)
        );
    }
}
