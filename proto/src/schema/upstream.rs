//! The upstream schema and its semantic rules.

use serde_json::{Value, json};

use super::{NODE_HOST_PATTERN, Violation, common_properties};
use crate::model::{PassHost, Upstream};

/// The properties of an upstream body, shared by the upstream kind and inline route upstreams.
pub(super) fn upstream_body_properties() -> serde_json::Map<String, Value> {
    let mut props = serde_json::Map::new();
    props.insert(
        "nodes".into(),
        json!({
            "type": "array",
            "minItems": 1,
            "maxItems": 1024,
            "items": {
                "type": "object",
                "properties": {
                    "host": {"type": "string", "pattern": NODE_HOST_PATTERN},
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "weight": {"type": "integer", "minimum": 0, "maximum": 65535, "default": 1}
                },
                "required": ["host", "port"],
                "additionalProperties": false
            }
        }),
    );
    props.insert(
        "scheme".into(),
        json!({"enum": ["http"], "default": "http"}),
    );
    props.insert(
        "lb".into(),
        json!({"enum": ["round_robin"], "default": "round_robin"}),
    );
    props.insert(
        "timeouts".into(),
        json!({
            "type": "object",
            "properties": {
                "connect_ms": {"type": "integer", "minimum": 1, "maximum": 600000, "default": crate::model::DEFAULT_CONNECT_MS},
                "read_ms": {"type": "integer", "minimum": 1, "maximum": 3600000, "default": crate::model::DEFAULT_READ_MS}
            },
            "additionalProperties": false
        }),
    );
    props.insert(
        "pass_host".into(),
        json!({"enum": ["pass", "node", "rewrite"], "default": "pass"}),
    );
    props.insert(
        "upstream_host".into(),
        json!({"type": "string", "pattern": NODE_HOST_PATTERN}),
    );
    props
}

/// The upstream kind's schema.
pub(super) fn upstream_schema() -> Value {
    let mut props = common_properties();
    props.extend(upstream_body_properties());
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "upstream",
        "type": "object",
        "properties": props,
        "required": ["nodes"],
        "additionalProperties": false
    })
}

/// Semantic rules of an upstream found at JSON pointer `at`.
pub(super) fn check_upstream(upstream: &Upstream, at: &str, out: &mut Vec<Violation>) {
    if upstream.pass_host == PassHost::Rewrite && upstream.upstream_host.is_none() {
        out.push(Violation::new(
            format!("{at}/upstream_host"),
            "pass_host \"rewrite\" needs upstream_host",
        ));
    }
}
