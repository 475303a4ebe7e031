//! JSON Schemas of the resource kinds, and validation of one resource document.
//!
//! The JSON Schema is the contract: it is served to users (`/api/v1/schemas/{kind}`, the
//! OpenAPI document), enforced by the control plane on every write and by the data plane on
//! every snapshot. Every rule that a schema can say is said there — across fields too
//! (`if`/`then`/`else`, `anyOf`, `false` for a field another one rules out), so that a document
//! the served schema accepts is never refused for its shape. Each such cross-field rule is an
//! entry of an `allOf` with a `description`, which becomes the violation's message.
//!
//! What a schema cannot say stays in code, in two classes ([`Rule`]):
//! - [`Rule::Schema`]: a regular expression must compile with the data plane's engine (the
//!   schema marks it `format: regex`, which JSON Schema reads as ECMA-262). Answered like a
//!   schema violation (400).
//! - [`Rule::Reference`]: what a document refers to or must be unique among — another part of
//!   the same document (`{resp.NAME…}`, `{param.NAME}`, a cycle of sub-requests) or a name that
//!   must be unique (sub-request names, a path's segment names, a node's host and port), or
//!   how parts of it must relate (a rollout policy's stages: percents ascending to a last
//!   100%, each in the cohort's form). Answered like an unresolved reference to another
//!   resource (409).
//!
//! Both layers report every violation with the JSON pointer of the offending value.

use std::sync::LazyLock;

use jsonschema::Validator;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::model::{Certificate, Consumer, GlobalRule, Kind, Parsed, Route, Upstream};

#[cfg(test)]
mod agreement;
mod batch;
mod certificate;
mod consumer;
mod patch;
mod rollout_policy;
mod route;
mod upstream;

pub use batch::{MAX_SUB_REQUESTS, topological_order};
use certificate::certificate_schema;
use consumer::{consumer_schema, global_rule_schema};
pub use patch::{merge_patch_schema, validate_patch};
pub use rollout_policy::{
    Cohort, HaltOn, RolloutPolicy, RolloutStage, rollout_policy_schema, validate_rollout_policy,
};
pub use route::{check_path, compile_regex, parse_cidr};
use route::{check_route, route_schema};
pub(crate) use route::{cidr_pattern, conditions_schema, regex_value_schema};
use upstream::upstream_schema;

/// Which kind of rule a [`Violation`] breaks, which decides how the admin API answers it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Rule {
    /// The document's own shape: the served JSON Schema refuses it, or a regular expression in
    /// it does not compile. The admin API answers 400.
    #[default]
    Schema,
    /// The document is well formed, but something it names does not resolve (another part of
    /// the document, a cycle) or a name it uses is not unique. The admin API answers 409, like
    /// a reference to another resource that does not exist.
    Reference,
}

/// One reason a document was refused, located by JSON pointer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// JSON pointer (RFC 6901) to the offending value; `""` is the whole document.
    pub pointer: String,
    /// What is wrong, for a human.
    pub message: String,
    /// The kind of rule broken. Not part of the wire shape: the status code says it.
    #[serde(skip)]
    pub rule: Rule,
}

impl Violation {
    /// Builds a violation of the document's shape ([`Rule::Schema`]).
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            pointer: pointer.into(),
            message: message.into(),
            rule: Rule::Schema,
        }
    }

    /// Builds a violation of a reference or uniqueness rule ([`Rule::Reference`]).
    pub fn reference(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            rule: Rule::Reference,
            ..Violation::new(pointer, message)
        }
    }

    /// The same violation, located under `at` (a JSON pointer to where the document sits in
    /// a larger one), its rule kept.
    pub fn under(self, at: &str) -> Violation {
        Violation {
            pointer: format!("{at}{}", self.pointer),
            ..self
        }
    }

    /// Whether every violation is a [`Rule::Reference`] one (and there is at least one): the
    /// document's shape is fine, what it names is not.
    pub fn all_references(violations: &[Violation]) -> bool {
        !violations.is_empty() && violations.iter().all(|v| v.rule == Rule::Reference)
    }
}

pub(crate) const ID_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";
/// A node address: a DNS name, an IPv4 address or a bare IPv6 address (`::1`, `fd00::1`).
pub(crate) const NODE_HOST_PATTERN: &str =
    r"^([0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$";
pub(crate) const HOST_PATTERN: &str = r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$";

/// The server-managed fields, typed: accepted on input (so that what a GET answers can be PUT
/// back, as APISIX and Kong allow) and then ignored, but refused when of the wrong type (as
/// both of them do), since a client that sends `"revision": "3"` has a bug worth hearing of.
pub(crate) fn server_managed(description: &str) -> Value {
    json!({"type": "integer", "minimum": 0, "readOnly": true, "description": description})
}

pub(crate) fn common_properties() -> Map<String, Value> {
    let mut props = Map::new();
    props.insert(
        "id".into(),
        json!({
            "type": "string",
            "pattern": ID_PATTERN,
            "description": "Resource id. On PUT and PATCH it is the URL's (a body id must equal it); \
                            on POST to the collection, the id to create (generated when absent)."
        }),
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
    props.insert(
        "created_at".into(),
        server_managed(
            "Server-managed: when the resource was created, unix seconds. Ignored on input.",
        ),
    );
    props.insert(
        "updated_at".into(),
        server_managed(
            "Server-managed: when the resource last changed, unix seconds. Ignored on input.",
        ),
    );
    props.insert(
        "revision".into(),
        server_managed(
            "Server-managed: the config version in which the resource last changed (its ETag). \
             Ignored on input; send If-Match to write only over a known revision.",
        ),
    );
    props
}

/// A cross-field rule: `body` (an `if`/`then`, an `anyOf`, …) with the message a violation of
/// it carries. Rules sit in an `allOf`, so that each keeps its own message.
pub(crate) fn rule(description: &str, body: Value) -> Value {
    let mut rule = body;
    if let Value::Object(fields) = &mut rule {
        fields.insert("description".into(), description.into());
    }
    rule
}

/// A rule that an object holds exactly one of two fields, said with `if`/`then`/`else` rather
/// than a `oneOf` of `required`s: a violation then points at the field, and generators need no
/// negation of a `oneOf` to draw from it.
pub(crate) fn exactly_one_of(a: &str, b: &str) -> Value {
    rule(
        &format!("exactly one of {a} and {b} is required"),
        json!({
            "if": {"required": [a]},
            "then": {"properties": {b: false}},
            "else": {"required": [b]}
        }),
    )
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
static CERTIFICATE: LazyLock<CompiledSchema> = LazyLock::new(|| compile(certificate_schema()));
static SERVER_MANAGED: LazyLock<CompiledSchema> = LazyLock::new(|| {
    let mut props = common_properties();
    props.retain(|name, _| crate::model::SERVER_FIELDS.contains(&name.as_str()));
    compile(json!({"properties": props}))
});

fn compiled(kind: Kind) -> &'static CompiledSchema {
    match kind {
        Kind::Upstreams => &UPSTREAM,
        Kind::Routes => &ROUTE,
        Kind::Consumers => &CONSUMER,
        Kind::GlobalRules => &GLOBAL_RULE,
        Kind::Certificates => &CERTIFICATE,
    }
}

/// The JSON Schema document of a kind, as served by the admin API.
pub fn schema_of(kind: Kind) -> &'static Value {
    &compiled(kind).document
}

/// Every violation of `schema` by `document`, each located and worded for a human: the
/// violation of a cross-field rule (see [`rule`]) carries the rule's description, and a field a
/// rule requires is pointed at itself rather than at the object missing it.
fn schema_violations(schema: &CompiledSchema, document: &Value, at: &str) -> Vec<Violation> {
    schema
        .validator
        .iter_errors(document)
        .map(|error| {
            let mut pointer = format!("{at}{}", error.instance_path().as_str());
            let location = error.schema_path().as_str();
            let message = match rule_description(&schema.document, location) {
                Some(description) => {
                    if let jsonschema::error::ValidationErrorKind::Required { property } =
                        error.kind()
                        && let Some(property) = property.as_str()
                    {
                        pointer = format!("{pointer}/{}", escape_pointer(property));
                    }
                    description.to_owned()
                }
                None => node_at(&schema.document, location)
                    .and_then(Value::as_str)
                    .filter(|_| error.kind().keyword() == "pattern")
                    .zip(error.instance().as_str())
                    .and_then(|(pattern, value)| explain_mismatch(pattern, value))
                    .unwrap_or_else(|| error.to_string()),
            };
            Violation::new(pointer, message)
        })
        .collect()
}

/// Why `value` does not match one of the long patterns that say a grammar (path patterns,
/// templates, CIDR blocks), in the words of the code that reads that grammar: a pattern dozens
/// of characters long is no explanation.
fn explain_mismatch(pattern: &str, value: &str) -> Option<String> {
    static CIDR: LazyLock<String> = LazyLock::new(route::cidr_pattern);
    if pattern == route::PATH_PATTERN {
        check_path(value).err()
    } else if pattern == CIDR.as_str() {
        parse_cidr(value).err()
    } else if batch::is_template_pattern(pattern) {
        crate::model::Template::parse(value)
            .err()
            .map(|e| e.to_string())
    } else {
        None
    }
}

/// The schema node at a keyword location (a JSON pointer into the schema document).
fn node_at<'a>(schema: &'a Value, location: &str) -> Option<&'a Value> {
    location.split('/').skip(1).try_fold(schema, |node, token| {
        let token = token.replace("~1", "/").replace("~0", "~");
        match node {
            Value::Object(fields) => fields.get(&token),
            Value::Array(items) => items.get(token.parse::<usize>().ok()?),
            _ => None,
        }
    })
}

/// The description of the innermost rule (an `allOf` entry) on the way to a failed keyword.
fn rule_description<'a>(schema: &'a Value, keyword_location: &str) -> Option<&'a str> {
    let mut node = schema;
    let mut found = None;
    let mut previous = "";
    for token in keyword_location.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        node = match node {
            Value::Object(fields) => fields.get(&token)?,
            Value::Array(items) => items.get(token.parse::<usize>().ok()?)?,
            _ => return found,
        };
        if previous == "allOf"
            && let Some(description) = node.get("description").and_then(Value::as_str)
        {
            found = Some(description);
        }
        previous = if token == "allOf" { "allOf" } else { "" };
    }
    found
}

pub(crate) fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Checks the server-managed fields of a written document (`id`, `created_at`, `updated_at`,
/// `revision`) against their schemas before they are stripped: ignored, but only when
/// well-typed. Violations are located under `at`.
pub fn check_server_fields(document: &Value, at: &str) -> Vec<Violation> {
    schema_violations(&SERVER_MANAGED, document, at)
}

/// Turns every number without a fractional part (`3.0`) into an integer (`3`). JSON Schema's
/// `integer` is any such number, while serde's integer types refuse a float: without this a
/// document the schema accepts would fail to parse.
fn integral_floats_as_integers(value: &mut Value) {
    match value {
        Value::Number(number) if number.is_f64() => {
            if let Some(float) = number.as_f64()
                && float.fract() == 0.0
            {
                // The casts saturate; the range checks keep only what converts exactly.
                let integer = if (-9.2e18..9.2e18).contains(&float) {
                    Some(serde_json::Number::from(float as i64))
                } else if (0.0..1.8e19).contains(&float) {
                    Some(serde_json::Number::from(float as u64))
                } else {
                    None
                };
                if let Some(integer) = integer {
                    *number = integer;
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
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
        Parsed::Consumer(_) | Parsed::GlobalRule(_) | Parsed::Certificate(_) => {}
    }
    violations
}

/// Validates one resource document of `kind` and returns its typed form.
///
/// Every violation is reported, each with its JSON pointer. References to other resources are
/// not checked here: that needs the whole config (see [`crate::snapshot`]).
pub fn validate_resource(kind: Kind, document: &Value) -> Result<Parsed, Vec<Violation>> {
    let mut document = document.clone();
    integral_floats_as_integers(&mut document);
    let mut violations = schema_violations(compiled(kind), &document, "");
    let parsed = match kind {
        Kind::Upstreams => serde_json::from_value::<Upstream>(document).map(Parsed::Upstream),
        Kind::Routes => serde_json::from_value::<Route>(document).map(Parsed::Route),
        Kind::Consumers => serde_json::from_value::<Consumer>(document).map(Parsed::Consumer),
        Kind::GlobalRules => serde_json::from_value::<GlobalRule>(document).map(Parsed::GlobalRule),
        Kind::Certificates => {
            serde_json::from_value::<Certificate>(document).map(Parsed::Certificate)
        }
    };
    let parsed = match parsed {
        Ok(parsed) => parsed,
        // The schema's violations say more than serde's first complaint.
        Err(_) if !violations.is_empty() => return Err(violations),
        Err(error) => return Err(vec![Violation::new("", error.to_string())]),
    };
    // The rules only code can tell, on whatever the typed model could read, so that every
    // violation is listed at once; where the schema already located one, its word stands.
    let mut beyond = Vec::new();
    if let Parsed::Route(route) = &parsed {
        check_route(route, &mut beyond);
    }
    if let Parsed::Certificate(certificate) = &parsed
        && let Err(found) = certificate.load()
    {
        beyond.extend(found);
    }
    if let Some(plugins) = parsed.plugins() {
        crate::plugins::check(plugins, "/plugins", &mut beyond);
    }
    let located: std::collections::HashSet<String> =
        violations.iter().map(|v| v.pointer.clone()).collect();
    violations.extend(beyond.into_iter().filter(|v| !located.contains(&v.pointer)));
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
    fn built_in_schemas_compile_and_their_examples_validate() {
        for kind in Kind::ALL {
            assert_eq!(schema_of(kind)["title"], kind.singular());
            let examples = schema_of(kind)["examples"].as_array().expect("examples");
            for example in examples {
                validate_resource(kind, example).unwrap_or_else(|e| panic!("{kind}: {e:?}"));
            }
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
