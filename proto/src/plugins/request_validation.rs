//! `request-validation`: checks a request's headers and JSON body against JSON Schemas before
//! it is proxied (APISIX's plugin of that name: `header_schema`, `body_schema`,
//! `rejected_code`, `rejected_msg`; plus `max_body_bytes`, the bound of the body read into
//! memory to be checked).
//!
//! The two schemas are JSON Schemas in the drafts the `jsonschema` crate supports that agree on
//! the keywords the served schema types (2020-12 unless `$schema` names 2019-09, 7 or 6; not
//! 4), compiled once per snapshot. The served
//! schema types the common keywords of a schema's top level; whether the whole schema compiles
//! (nested schemas, patterns, `$ref`s) only compiling it can tell, so a schema that does not is
//! refused on write (400) with the pointer of the offending keyword, as a regular expression
//! that does not compile is. Remote `$ref`s never resolve (the data plane fetches nothing).

use jsonschema::Validator;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::schema::Violation;

/// The default bound of a body read to be checked: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;
/// The largest bound a config may set: 64 MiB.
pub const MAX_BODY_BYTES: u64 = 64 << 20;

/// The drafts `$schema` may name (with or without the trailing `#`): those in which the
/// keywords typed below mean the same (boolean subschemas, numeric `exclusiveMinimum`), so
/// that the served schema is exact wherever it speaks. Draft 4 is not among them.
const DRAFTS: &[&str] = &[
    "https://json-schema.org/draft/2020-12/schema",
    "https://json-schema.org/draft/2019-09/schema",
    "http://json-schema.org/draft-07/schema#",
    "http://json-schema.org/draft-07/schema",
    "http://json-schema.org/draft-06/schema#",
    "http://json-schema.org/draft-06/schema",
];

/// What the served schema says of a JSON Schema value: an object whose common keywords are
/// typed (the rest, and every nested schema, are checked by compiling it).
fn json_schema_value(description: &str) -> Value {
    let nested = json!({"type": ["object", "boolean"]});
    let count = json!({"type": "integer", "minimum": 0});
    let names = json!({"type": "array", "items": {"type": "string"}, "uniqueItems": true});
    let schemas = json!({"type": "array", "minItems": 1, "items": nested});
    let type_name =
        json!({"enum": ["null", "boolean", "object", "array", "number", "string", "integer"]});
    let mut pattern = crate::schema::regex_value_schema();
    pattern["description"] = "An ECMA-262 regular expression, compiled by the jsonschema crate's engine; one it refuses is refused (400).".into();
    json!({
        "type": "object",
        "description": description,
        "properties": {
            "$schema": {"enum": DRAFTS},
            "title": {"type": "string"},
            "description": {"type": "string"},
            "type": {"anyOf": [
                type_name,
                {"type": "array", "minItems": 1, "items": type_name, "uniqueItems": true}
            ]},
            "properties": {"type": "object", "additionalProperties": nested},
            "required": names,
            "additionalProperties": nested,
            "items": nested,
            "minItems": count, "maxItems": count, "uniqueItems": {"type": "boolean"},
            "minLength": count, "maxLength": count,
            "minProperties": count, "maxProperties": count,
            "pattern": pattern,
            "format": {"type": "string"},
            "minimum": {"type": "number"}, "maximum": {"type": "number"},
            "exclusiveMinimum": {"type": "number"}, "exclusiveMaximum": {"type": "number"},
            "multipleOf": {"type": "number", "exclusiveMinimum": 0},
            "enum": {"type": "array", "minItems": 1, "uniqueItems": true},
            "allOf": schemas, "anyOf": schemas, "oneOf": schemas,
            "not": nested
        }
    })
}

/// The config schema.
pub fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "header_schema": json_schema_value("The JSON Schema of the request's headers, seen as an object of lowercase name → value (repeated headers joined with \", \")."),
            "body_schema": json_schema_value("The JSON Schema of the request's body, which must then be JSON."),
            "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 400},
            "rejected_msg": {"type": "string", "minLength": 1, "maxLength": 1024, "description": "The message of the refusal (JSON error shape, violations still listed); a default one without it."},
            "max_body_bytes": {"type": "integer", "minimum": 1, "maximum": MAX_BODY_BYTES, "default": DEFAULT_MAX_BODY_BYTES, "description": "With a body_schema: the largest body read to be checked; a larger one is refused with 413."}
        },
        "additionalProperties": false,
        "allOf": [crate::schema::rule(
            "at least one of header_schema and body_schema is required",
            json!({"anyOf": [{"required": ["header_schema"]}, {"required": ["body_schema"]}]}),
        )]
    })
}

/// The typed config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The schema of the headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_schema: Option<Value>,
    /// The schema of the JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_schema: Option<Value>,
    /// The status of a refusal.
    #[serde(default = "default_code")]
    pub rejected_code: u16,
    /// The message of a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_msg: Option<String>,
    /// The largest body read to be checked.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

fn default_code() -> u16 {
    400
}

fn default_max_body_bytes() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

/// A schema of the config, compiled.
#[derive(Debug)]
pub struct CompiledSchema(Validator);

impl CompiledSchema {
    /// Compiles `schema`. `Err((pointer, reason))`: the pointer is within `schema`.
    pub fn compile(schema: &Value) -> Result<CompiledSchema, (String, String)> {
        jsonschema::validator_for(schema)
            .map(CompiledSchema)
            .map_err(|error| {
                (
                    error.instance_path().as_str().to_owned(),
                    format!("the schema does not compile: {error}"),
                )
            })
    }

    /// Every violation of `instance`: the pointer of the offending value within it, and what
    /// is wrong (without the value itself, which may be large).
    pub fn violations(&self, instance: &Value) -> Vec<(String, String)> {
        self.0
            .iter_errors(instance)
            .map(|error| {
                (
                    error.instance_path().as_str().to_owned(),
                    error.masked().to_string(),
                )
            })
            .collect()
    }
}

/// The rule a schema cannot say: both schemas compile.
pub fn check(config: &Value, at: &str, out: &mut Vec<Violation>) {
    let Ok(config) = serde_json::from_value::<Config>(config.clone()) else {
        return;
    };
    for (field, schema) in [
        ("header_schema", &config.header_schema),
        ("body_schema", &config.body_schema),
    ] {
        if let Some(schema) = schema
            && let Err((pointer, message)) = CompiledSchema::compile(schema)
        {
            out.push(Violation::new(format!("{at}/{field}{pointer}"), message));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::Kind;
    use crate::schema::validate_resource;

    fn pointers(plugin: serde_json::Value) -> Vec<String> {
        let route =
            json!({"paths": ["/"], "upstream_id": "u", "plugins": {"request-validation": plugin}});
        match validate_resource(Kind::Routes, &route) {
            Ok(_) => Vec::new(),
            Err(violations) => violations.into_iter().map(|v| v.pointer).collect(),
        }
    }

    #[test]
    fn schemas_compile_or_are_refused_with_their_pointer() {
        let body = json!({"type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}, "age": {"type": "integer", "minimum": 0}}});
        assert!(pointers(json!({"body_schema": body})).is_empty());
        assert!(
            pointers(json!({"header_schema": {"required": ["x-api-version"]}, "rejected_code": 422, "rejected_msg": "no", "max_body_bytes": 10}))
                .is_empty()
        );
        assert!(
            pointers(json!({"body_schema": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "array"}}))
                .is_empty()
        );
        // Every keyword the served schema types, at once, in every draft it allows: what a
        // client validating against the served schema may send compiles (schemathesis's
        // coverage phase sends exactly this kind of document).
        for draft in super::DRAFTS.iter().map(|d| Some(*d)).chain([None]) {
            let mut every = json!({"additionalProperties": false, "allOf": [false], "anyOf": [true],
                "oneOf": [{}], "not": false, "description": "", "title": "", "enum": [null],
                "exclusiveMaximum": 0, "exclusiveMinimum": 0, "maximum": 0, "minimum": 0,
                "format": "", "items": false, "maxItems": 0, "minItems": 0, "maxLength": 0,
                "minLength": 0, "maxProperties": 0, "minProperties": 0, "multipleOf": 5e-324,
                "pattern": "", "properties": {"a": false}, "required": [], "type": ["null"],
                "uniqueItems": false});
            if let Some(draft) = draft {
                every["$schema"] = draft.into();
            }
            assert!(
                pointers(json!({"header_schema": every})).is_empty(),
                "{draft:?}"
            );
        }
        assert_eq!(
            pointers(
                json!({"body_schema": {"$schema": "http://json-schema.org/draft-04/schema#"}})
            ),
            ["/plugins/request-validation/body_schema/$schema"]
        );
        // Typed at the top level by the schema itself.
        assert_eq!(
            pointers(json!({"body_schema": {"type": "strnig"}})),
            ["/plugins/request-validation/body_schema/type"]
        );
        // Nested: only compiling tells, with the pointer of the offending keyword.
        assert_eq!(
            pointers(json!({"body_schema": {"properties": {"a": {"type": 5}}}})),
            ["/plugins/request-validation/body_schema/properties/a/type"]
        );
        assert_eq!(
            pointers(json!({"header_schema": {"properties": {"a": {"minLength": -1}}}})),
            ["/plugins/request-validation/header_schema/properties/a/minLength"]
        );
        let remote = pointers(json!({"body_schema": {"$ref": "https://example.com/s.json"}}));
        assert_eq!(remote.len(), 1);
        assert!(remote[0].starts_with("/plugins/request-validation/body_schema"));
        // One of the two schemas is required; bounds are bounded.
        assert_eq!(pointers(json!({})), ["/plugins/request-validation"]);
        assert_eq!(
            pointers(json!({"body_schema": {}, "max_body_bytes": 0})),
            ["/plugins/request-validation/max_body_bytes"]
        );
        let config: super::Config = serde_json::from_value(json!({"body_schema": {}})).unwrap();
        let compiled = super::CompiledSchema::compile(
            &json!({"properties": {"a": {"type": "integer"}, "b": {"maxLength": 1}}}),
        )
        .unwrap();
        let found = compiled.violations(&json!({"a": "x", "b": "yy"}));
        let found: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(found, ["/a", "/b"]);
        assert_eq!(
            (config.rejected_code, config.max_body_bytes),
            (400, 1 << 20)
        );
    }
}
