//! The upstream schema, its cross-field rules, and the one rule it cannot say (a node listed
//! twice).

use serde_json::{Value, json};

use super::{NODE_HOST_PATTERN, Violation, common_properties, rule};
use crate::model::Upstream;

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
        json!({"enum": ["http", "https", "h2c"], "default": "http"}),
    );
    props.insert(
        "lb".into(),
        json!({
            "enum": ["round_robin", "least_requests", "ewma", "consistent_hash", "random"],
            "default": "round_robin"
        }),
    );
    props.insert(
        "hash_on".into(),
        json!({
            "type": "object",
            "properties": {
                "source": {"enum": ["header", "cookie", "query", "remote_addr", "uri"]},
                "name": {"type": "string", "minLength": 1, "maxLength": 256}
            },
            "required": ["source"],
            "additionalProperties": false,
            "allOf": [
                rule(
                    "hash_on sources header, cookie and query need a name",
                    json!({
                        "if": {"properties": {"source": {"enum": ["header", "cookie", "query"]}}, "required": ["source"]},
                        "then": {"required": ["name"]}
                    }),
                ),
                rule(
                    "hash_on sources remote_addr and uri take no name",
                    json!({
                        "if": {"properties": {"source": {"enum": ["remote_addr", "uri"]}}, "required": ["source"]},
                        "then": {"properties": {"name": false}}
                    }),
                )
            ]
        }),
    );
    props.insert("timeouts".into(), timeouts_schema());
    props.insert("retries".into(), retries_schema());
    props.insert("hedge".into(), hedge_schema());
    props.insert(
        "health_check".into(),
        json!({
            "type": "object",
            "properties": {
                "active": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "pattern": "^/[^\\s#]*$", "maxLength": 4096, "default": "/"},
                        "interval_ms": {
                            "type": "integer", "minimum": 100, "maximum": 3600000, "default": 2000,
                            "description": "The pause between two rounds of probes. A round lasts until every probe answered or timed out (timeout_ms), so a timeout_ms above interval_ms only spaces the rounds further apart."
                        },
                        "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 600000, "default": 1000},
                        "healthy_after": {"type": "integer", "minimum": 1, "maximum": 255, "default": 2},
                        "unhealthy_after": {"type": "integer", "minimum": 1, "maximum": 255, "default": 3}
                    },
                    "additionalProperties": false
                },
                "passive": {
                    "type": "object",
                    "properties": {
                        "unhealthy_after": {"type": "integer", "minimum": 1, "maximum": 255, "default": 5},
                        "eject_ms": {"type": "integer", "minimum": 1, "maximum": 86400000, "default": 30000}
                    },
                    "additionalProperties": false
                }
            },
            "additionalProperties": false
        }),
    );
    props.insert(
        "tls".into(),
        json!({
            "type": "object",
            "properties": {
                "verify": {"type": "boolean", "default": true},
                "sni": {"type": "string", "pattern": NODE_HOST_PATTERN}
            },
            "additionalProperties": false
        }),
    );
    props.insert(
        "keepalive_pool".into(),
        json!({
            "type": "object",
            "properties": {
                "size": {"type": "integer", "minimum": 0, "maximum": 100000, "default": crate::model::DEFAULT_POOL_SIZE},
                "idle_timeout_ms": {"type": "integer", "minimum": 1, "maximum": 3600000, "default": crate::model::DEFAULT_POOL_IDLE_TIMEOUT_MS}
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

/// The schema of `timeouts`, shared by upstreams and the route-level override.
pub(super) fn timeouts_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "connect_ms": {"type": "integer", "minimum": 1, "maximum": 600000, "default": crate::model::DEFAULT_CONNECT_MS},
            "read_ms": {"type": "integer", "minimum": 1, "maximum": 3600000, "default": crate::model::DEFAULT_READ_MS}
        },
        "additionalProperties": false
    })
}

/// The schema of a route's `timeouts`: the upstream's, without defaults, since a field left
/// out keeps the upstream's value.
pub(super) fn route_timeouts_schema() -> Value {
    let mut schema = timeouts_schema();
    if let Some(properties) = schema["properties"].as_object_mut() {
        for property in properties.values_mut() {
            if let Some(property) = property.as_object_mut() {
                property.remove("default");
            }
        }
    }
    schema
}

/// The schema of `retries`, shared by upstreams and the route-level override.
pub(super) fn retries_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "count": {"type": "integer", "minimum": 0, "maximum": 16},
            "on": {
                "type": "array",
                "uniqueItems": true,
                "items": {"enum": ["connect_error", "timeout", "status_502", "status_503", "status_504"]},
                "default": ["connect_error", "timeout"]
            },
            "non_idempotent": {"type": "boolean", "default": false}
        },
        "required": ["count"],
        "additionalProperties": false
    })
}

/// The schema of an upstream's `hedge`, and of the policy form of a route's or a batch
/// sub-request's ([`hedge_override_schema`]).
pub(crate) fn hedge_schema() -> Value {
    json!({
        "type": "object",
        "description": "Hedged requests: an idempotent request (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) whose body is empty or held whole, not answered after delay_ms, is sent to another node too; the first good answer wins and the others are cancelled. Each hedge takes a token from the retry budget.",
        "properties": {
            "delay_ms": {
                "description": "Milliseconds to wait for an answer before hedging, or \"p95\": the 95th percentile of the first node's recent latencies.",
                "oneOf": [
                    {"type": "integer", "minimum": 1, "maximum": 3600000},
                    {"const": "p95"}
                ]
            },
            "max_extra": {
                "type": "integer",
                "minimum": 1,
                "maximum": crate::model::MAX_HEDGE_EXTRA,
                "default": crate::model::DEFAULT_HEDGE_MAX_EXTRA
            }
        },
        "required": ["delay_ms"],
        "additionalProperties": false
    })
}

/// The schema of a route's or a batch sub-request's `hedge`: a policy over the upstream's, or
/// `false` to turn the upstream's off there.
pub(crate) fn hedge_override_schema() -> Value {
    json!({
        "description": "Overrides the upstream's hedging here: a policy of its own, or false: never hedged.",
        "oneOf": [hedge_schema(), {"const": false}]
    })
}

/// The rules across the fields of an upstream body, shared by the upstream kind and inline
/// route upstreams.
pub(super) fn upstream_rules() -> Value {
    let is = |field: &str, value: &str| json!({"properties": {field: {"const": value}}, "required": [field]});
    json!([
        rule(
            "pass_host \"rewrite\" needs upstream_host",
            json!({"if": is("pass_host", "rewrite"), "then": {"required": ["upstream_host"]}}),
        ),
        rule(
            "lb \"consistent_hash\" needs hash_on",
            json!({"if": is("lb", "consistent_hash"), "then": {"required": ["hash_on"]}}),
        ),
        rule(
            "hash_on is only used by lb \"consistent_hash\"",
            json!({"if": is("lb", "consistent_hash"), "else": {"properties": {"hash_on": false}}}),
        ),
        rule(
            "tls is only used with scheme \"https\"",
            json!({"if": is("scheme", "https"), "else": {"properties": {"tls": false}}}),
        ),
    ])
}

/// The upstream kind's schema.
pub(super) fn upstream_schema() -> Value {
    let mut props = common_properties();
    props.extend(upstream_body_properties());
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "upstream",
        "examples": [{
            "nodes": [{"host": "127.0.0.1", "port": 8081, "weight": 1}],
            "lb": "consistent_hash",
            "hash_on": {"source": "header", "name": "x-user-id"},
            "timeouts": {"connect_ms": 1000, "read_ms": 30000}
        }],
        "type": "object",
        "properties": props,
        "required": ["nodes"],
        "additionalProperties": false,
        "allOf": upstream_rules()
    })
}

/// A node listed twice (the data plane merges such entries): refused on writes, with what to
/// do instead — a uniqueness rule no schema can say (`uniqueItems` compares whole entries, and
/// two entries differ by weight), so a [`Violation::reference`]. Not part of
/// [`super::validate_resource`], so stored documents written before the rule still load.
pub(super) fn check_duplicate_nodes(upstream: &Upstream, at: &str, out: &mut Vec<Violation>) {
    let mut seen = std::collections::HashSet::new();
    for (i, node) in upstream.nodes.iter().enumerate() {
        if !seen.insert((node.host.to_ascii_lowercase(), node.port)) {
            out.push(Violation::reference(
                format!("{at}/nodes/{i}"),
                format!(
                    "node {}:{} is listed twice; give one entry the sum of the weights",
                    node.host, node.port
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::model::{Kind, LoadBalance, Parsed, RetryOn};
    use crate::schema::{check_new_document, validate_resource};

    fn pointers(document: serde_json::Value) -> Vec<String> {
        match validate_resource(Kind::Upstreams, &document) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.into_iter().map(|v| v.pointer).collect(),
        }
    }

    #[test]
    fn the_full_contract_example_is_accepted() {
        let document = json!({
            "nodes": [{"host": "127.0.0.1", "port": 8081, "weight": 1}],
            "scheme": "http",
            "lb": "consistent_hash",
            "hash_on": {"source": "header", "name": "x-user-id"},
            "timeouts": {"connect_ms": 1000, "read_ms": 30000},
            "retries": {"count": 1, "on": ["connect_error", "timeout", "status_502", "status_503"]},
            "health_check": {
                "active": {"path": "/healthz", "interval_ms": 2000, "timeout_ms": 1000, "healthy_after": 2, "unhealthy_after": 3},
                "passive": {"unhealthy_after": 5, "eject_ms": 30000}
            },
            "keepalive_pool": {"size": 16, "idle_timeout_ms": 1000},
            "pass_host": "pass"
        });
        let parsed = validate_resource(Kind::Upstreams, &document);
        let Ok(Parsed::Upstream(upstream)) = parsed else {
            panic!("the contract's example must validate: {parsed:?}")
        };
        assert_eq!(upstream.lb, LoadBalance::ConsistentHash);
        let retries = upstream.retries.unwrap();
        assert_eq!(retries.on[2], RetryOn::Status502);
        assert!(!retries.non_idempotent);
    }

    #[test]
    fn semantic_rules_point_at_the_offending_value() {
        let node = json!([{"host": "h", "port": 1}]);
        let cases = [
            (json!({"nodes": node, "lb": "consistent_hash"}), "/hash_on"),
            (
                json!({"nodes": node, "lb": "consistent_hash", "hash_on": {"source": "cookie"}}),
                "/hash_on/name",
            ),
            (
                json!({"nodes": node, "lb": "consistent_hash", "hash_on": {"source": "uri", "name": "x"}}),
                "/hash_on/name",
            ),
            (
                json!({"nodes": node, "hash_on": {"source": "remote_addr"}}),
                "/hash_on",
            ),
            (json!({"nodes": node, "tls": {"verify": false}}), "/tls"),
            (
                json!({"nodes": node, "retries": {"count": 1, "on": ["status_500"]}}),
                "/retries/on/0",
            ),
            (json!({"nodes": node, "retries": {"on": []}}), "/retries"),
        ];
        for (document, pointer) in cases {
            assert_eq!(pointers(document.clone()), [pointer], "{document}");
        }
        assert!(
            pointers(json!({"nodes": node, "lb": "consistent_hash", "hash_on": {"source": "remote_addr"}}))
                .is_empty()
        );
        assert!(
            pointers(json!({"nodes": node, "scheme": "https", "tls": {"sni": "api.internal"}}))
                .is_empty()
        );
        // A probe may take longer than the pause between rounds (APISIX and Kong allow it too):
        // the rounds are only spaced further apart.
        assert!(
            pointers(json!({"nodes": node, "health_check": {"active": {"interval_ms": 100, "timeout_ms": 200}}}))
                .is_empty()
        );
    }

    #[test]
    fn a_node_listed_twice_is_refused_on_writes_only() {
        let upstream = json!({"nodes": [
            {"host": "10.0.0.1", "port": 80},
            {"host": "10.0.0.2", "port": 80},
            {"host": "10.0.0.1", "port": 80, "weight": 3}
        ]});
        let parsed = validate_resource(Kind::Upstreams, &upstream)
            .expect("a stored document with a duplicate node still loads");
        let violations = check_new_document(&parsed);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].pointer, "/nodes/2");
        // Host names compare without case.
        let named =
            json!({"nodes": [{"host": "api.test", "port": 80}, {"host": "API.test", "port": 80}]});
        let parsed = validate_resource(Kind::Upstreams, &named).unwrap();
        assert_eq!(check_new_document(&parsed).len(), 1);
        let inline = json!({"paths": ["/a"], "upstream": named});
        let parsed = validate_resource(Kind::Routes, &inline).unwrap();
        assert_eq!(check_new_document(&parsed)[0].pointer, "/upstream/nodes/1");
    }

    #[test]
    fn routes_may_override_timeouts_and_retries() {
        let route = json!({
            "paths": ["/a"], "upstream_id": "u",
            "timeouts": {"read_ms": 10}, "retries": {"count": 2, "non_idempotent": true}
        });
        let Ok(Parsed::Route(route)) = validate_resource(Kind::Routes, &route) else {
            panic!("route overrides must validate")
        };
        let timeouts = route.timeouts.unwrap();
        assert_eq!(timeouts.read_ms, Some(10));
        // Left out: the upstream's value applies, not a default.
        assert_eq!(timeouts.connect_ms, None);
        assert!(route.retries.unwrap().non_idempotent);
    }
}
