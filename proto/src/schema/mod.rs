//! JSON Schemas of the resource kinds, and validation of one resource document.
//!
//! Validation has two layers: the JSON Schema (served to users, enforced by the control plane
//! on every write and by the data plane on every snapshot) and a few semantic rules a schema
//! cannot say well (path syntax, "exactly one target"). Both report every violation with the
//! JSON pointer of the offending value.

use std::sync::LazyLock;

use jsonschema::Validator;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::{Consumer, GlobalRule, Kind, Parsed, Route, Upstream};

mod batch;
mod consumer;
mod route;
mod upstream;

pub use batch::{MAX_SUB_REQUESTS, topological_order};
use consumer::{check_consumer, check_global_rule, consumer_schema, global_rule_schema};
pub(crate) use route::conditions_schema;
pub use route::{check_path, compile_regex, parse_cidr};
use route::{check_route, route_schema};
use upstream::{check_upstream, upstream_schema};

/// One reason a document was refused, located by JSON pointer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// JSON pointer (RFC 6901) to the offending value; `""` is the whole document.
    pub pointer: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl Violation {
    /// Builds a violation.
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

pub(crate) const ID_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";
/// A node address: a DNS name, an IPv4 address or a bare IPv6 address (`::1`, `fd00::1`).
pub(crate) const NODE_HOST_PATTERN: &str =
    r"^([0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$";
pub(crate) const HOST_PATTERN: &str = r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$";

pub(crate) fn common_properties() -> serde_json::Map<String, Value> {
    let mut props = serde_json::Map::new();
    props.insert(
        "id".into(),
        json!({"type": "string", "pattern": ID_PATTERN, "description": "Resource id; taken from the URL."}),
    );
    props.insert("desc".into(), json!({"type": "string", "maxLength": 1024}));
    props.insert(
        "labels".into(),
        json!({
            "type": "object",
            "maxProperties": 64,
            "propertyNames": {"pattern": "^[A-Za-z0-9._/-]{1,63}$"},
            "additionalProperties": {"type": "string", "maxLength": 256}
        }),
    );
    for field in ["created_at", "updated_at", "revision"] {
        props.insert(
            field.into(),
            json!({"type": "integer", "description": "Server-managed; ignored on input."}),
        );
    }
    props
}

struct CompiledSchema {
    document: Value,
    validator: Validator,
}

fn compile(document: Value) -> CompiledSchema {
    // The schemas are constants of this crate; a failure here is a programming error caught by
    // the unit tests below, never by user input.
    let validator = jsonschema::validator_for(&document).expect("built-in schema compiles");
    CompiledSchema {
        document,
        validator,
    }
}

static UPSTREAM: LazyLock<CompiledSchema> = LazyLock::new(|| compile(upstream_schema()));
static ROUTE: LazyLock<CompiledSchema> = LazyLock::new(|| compile(route_schema()));
static CONSUMER: LazyLock<CompiledSchema> = LazyLock::new(|| compile(consumer_schema()));
static GLOBAL_RULE: LazyLock<CompiledSchema> = LazyLock::new(|| compile(global_rule_schema()));

fn compiled(kind: Kind) -> &'static CompiledSchema {
    match kind {
        Kind::Upstreams => &UPSTREAM,
        Kind::Routes => &ROUTE,
        Kind::Consumers => &CONSUMER,
        Kind::GlobalRules => &GLOBAL_RULE,
    }
}

/// The JSON Schema document of a kind, as served by the admin API.
pub fn schema_of(kind: Kind) -> &'static Value {
    &compiled(kind).document
}

/// Rules a document must pass to be written, beyond [`validate_resource`]'s: rules added after
/// documents that break them may have been stored. Those still load (and the data plane copes
/// with them); only new writes are refused.
pub fn check_new_document(parsed: &Parsed) -> Vec<Violation> {
    let mut violations = Vec::new();
    match parsed {
        Parsed::Upstream(upstream) => {
            upstream::check_duplicate_nodes(upstream, "", &mut violations);
        }
        Parsed::Route(route) => {
            if let Some(upstream) = &route.upstream {
                upstream::check_duplicate_nodes(upstream, "/upstream", &mut violations);
            }
        }
        Parsed::Consumer(_) | Parsed::GlobalRule(_) => {}
    }
    violations
}

/// Validates one resource document of `kind` and returns its typed form.
///
/// Every violation is reported, each with its JSON pointer. References to other resources are
/// not checked here: that needs the whole config (see [`crate::snapshot`]).
pub fn validate_resource(kind: Kind, document: &Value) -> Result<Parsed, Vec<Violation>> {
    let violations: Vec<Violation> = compiled(kind)
        .validator
        .iter_errors(document)
        .map(|e| Violation::new(e.instance_path().as_str(), e.to_string()))
        .collect();
    if !violations.is_empty() {
        return Err(violations);
    }
    let parsed = match kind {
        Kind::Upstreams => serde_json::from_value::<Upstream>(document.clone())
            .map(Parsed::Upstream)
            .map_err(|e| vec![Violation::new("", e.to_string())])?,
        Kind::Routes => serde_json::from_value::<Route>(document.clone())
            .map(Parsed::Route)
            .map_err(|e| vec![Violation::new("", e.to_string())])?,
        Kind::Consumers => serde_json::from_value::<Consumer>(document.clone())
            .map(Parsed::Consumer)
            .map_err(|e| vec![Violation::new("", e.to_string())])?,
        Kind::GlobalRules => serde_json::from_value::<GlobalRule>(document.clone())
            .map(Parsed::GlobalRule)
            .map_err(|e| vec![Violation::new("", e.to_string())])?,
    };
    let mut violations = Vec::new();
    match &parsed {
        Parsed::Upstream(upstream) => check_upstream(upstream, "", &mut violations),
        Parsed::Route(route) => check_route(route, &mut violations),
        Parsed::Consumer(consumer) => check_consumer(consumer, &mut violations),
        Parsed::GlobalRule(rule) => check_global_rule(rule, &mut violations),
    }
    if let Some(plugins) = parsed.plugins() {
        crate::plugins::check(plugins, "/plugins", &mut violations);
    }
    if violations.is_empty() {
        Ok(parsed)
    } else {
        Err(violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_schemas_compile() {
        for kind in Kind::ALL {
            assert_eq!(schema_of(kind)["title"], kind.singular());
        }
    }

    #[test]
    fn valid_documents_pass_and_get_defaults() {
        let upstream = validate_resource(
            Kind::Upstreams,
            &json!({"nodes": [{"host": "127.0.0.1", "port": 8080}]}),
        )
        .unwrap();
        let Parsed::Upstream(upstream) = upstream else {
            panic!("wrong kind")
        };
        assert_eq!(upstream.nodes[0].weight, 1);
        assert_eq!(upstream.timeouts.read_ms, crate::model::DEFAULT_READ_MS);

        let route = validate_resource(
            Kind::Routes,
            &json!({"paths": ["/users/:id", "/static/*"], "upstream_id": "u1", "id": "r1", "revision": 3}),
        )
        .unwrap();
        assert!(matches!(route, Parsed::Route(r) if r.enabled));
    }

    #[test]
    fn every_violation_is_listed_with_its_pointer() {
        let errors = validate_resource(
            Kind::Upstreams,
            &json!({"nodes": [{"host": "a", "port": 0}, {"host": "b", "port": "x"}], "lb": "nope", "extra": 1}),
        )
        .unwrap_err();
        let pointers: Vec<&str> = errors.iter().map(|v| v.pointer.as_str()).collect();
        for expected in ["/nodes/0/port", "/nodes/1/port", "/lb", ""] {
            assert!(
                pointers.contains(&expected),
                "{expected} missing from {errors:?}"
            );
        }
    }

    #[test]
    fn semantic_rules() {
        let cases = [
            (json!({"paths": ["/a"]}), ""),
            (
                json!({"paths": ["/a"], "upstream_id": "u", "upstream": {"nodes": [{"host": "h", "port": 1}]}}),
                "/upstream",
            ),
            (json!({"paths": ["/a/*/b"], "upstream_id": "u"}), "/paths/0"),
            (
                json!({"paths": ["/x", "/a/:id/:id"], "upstream_id": "u"}),
                "/paths/1",
            ),
            (json!({"paths": ["/a/:1x"], "upstream_id": "u"}), "/paths/0"),
            (json!({"paths": ["/a/b:c"], "upstream_id": "u"}), "/paths/0"),
            (
                json!({"paths": ["/a"], "upstream": {"nodes": [{"host": "h", "port": 1}], "pass_host": "rewrite"}}),
                "/upstream/upstream_host",
            ),
            (
                json!({"paths": ["/a"], "upstream_id": "u", "plugins": {"limit-count": {}}}),
                "/plugins/limit-count",
            ),
            (
                json!({"paths": ["/a"], "upstream_id": "u", "plugins": {"no-such-plugin": {}}}),
                "/plugins",
            ),
            (
                json!({"paths": ["/a"], "upstream_id": "u", "plugins": {"limit-count": {"count": 1, "time_window": 1, "key": "nope", "rejected_code": 429}}}),
                "/plugins/limit-count/key",
            ),
        ];
        for (document, pointer) in cases {
            let errors = validate_resource(Kind::Routes, &document).unwrap_err();
            assert_eq!(errors[0].pointer, pointer, "{document}: {errors:?}");
        }
    }

    #[test]
    fn node_hosts_accept_names_and_both_ip_families() {
        for host in ["127.0.0.1", "::1", "fd00::1", "api.internal", "a"] {
            let document = json!({"nodes": [{"host": host, "port": 1}]});
            assert!(
                validate_resource(Kind::Upstreams, &document).is_ok(),
                "{host}"
            );
        }
        for host in ["", "-a", "a b", "[::1]", "a/b", "x:y", "host:80"] {
            let document = json!({"nodes": [{"host": host, "port": 1}]});
            assert!(
                validate_resource(Kind::Upstreams, &document).is_err(),
                "{host}"
            );
        }
    }

    #[test]
    fn non_objects_are_refused_not_panicked_on() {
        for document in [json!(null), json!([]), json!("x"), json!(1)] {
            for kind in Kind::ALL {
                assert!(validate_resource(kind, &document).is_err());
            }
        }
    }
}
