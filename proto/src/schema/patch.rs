//! The schema of a JSON merge patch (RFC 7396) of each kind, as `PATCH /api/v1/{kind}/{id}`
//! takes it, derived from the kind's schema so that the two cannot drift apart.
//!
//! A merge patch names only what changes: every field is optional, `null` removes a field,
//! and an object merges into the stored one field by field (so its own required fields and
//! cross-field rules apply to the merged result, not to the patch). Arrays and scalars replace
//! the stored value whole, so they keep their schema as it is. Whether the merged document is
//! valid depends on what is stored: the admin API checks the patch against this schema (400),
//! then the merged document against the kind's (409 when the result breaks it, as RFC 5789
//! §2.2 says for a patch that cannot be applied to the resource's current state).

use std::sync::LazyLock;

use serde_json::{Map, Value, json};

use super::{CompiledSchema, Violation, compile, schema_of, schema_violations};
use crate::model::Kind;

/// Keywords that constrain a whole object; a patch is part of one, so they hold of the merged
/// result only.
const WHOLE_OBJECT_KEYWORDS: [&str; 11] = [
    "required",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "minProperties",
    "maxProperties",
    "dependentRequired",
];

/// A value or `null` (which removes the field). `null` joins the schema's own `type` and `enum`
/// where it can, rather than an `anyOf` around it, so that a violation still points inside the
/// value instead of at the `anyOf`.
fn nullable(schema: Value) -> Value {
    let mut fields = match schema {
        Value::Bool(false) => return json!({"type": "null"}),
        Value::Object(fields) => fields,
        other => return other,
    };
    if let Some(value) = fields.remove("const") {
        fields.insert("enum".into(), json!([value]));
    }
    if let Some(Value::Array(values)) = fields.get_mut("enum") {
        values.push(Value::Null);
    }
    match fields.get_mut("type") {
        Some(Value::String(kind)) => {
            let kind = std::mem::take(kind);
            fields.insert("type".into(), json!([kind, "null"]));
        }
        Some(Value::Array(kinds)) => kinds.push("null".into()),
        _ => {}
    }
    let typed = fields.contains_key("type") || fields.contains_key("enum");
    if !typed
        && ["oneOf", "anyOf", "allOf", "not"]
            .iter()
            .any(|k| fields.contains_key(*k))
    {
        return json!({"anyOf": [{"type": "null"}, fields]});
    }
    Value::Object(fields)
}

fn is_object_schema(schema: &Map<String, Value>) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("object")
        || schema.contains_key("properties")
}

/// The merge-patch form of one schema node.
fn patch_of(schema: &Value) -> Value {
    let Value::Object(fields) = schema else {
        return schema.clone();
    };
    if !is_object_schema(fields) {
        // Arrays and scalars replace what is stored: the patch holds the whole new value.
        return schema.clone();
    }
    let mut patch = Map::new();
    for (keyword, value) in fields {
        if WHOLE_OBJECT_KEYWORDS.contains(&keyword.as_str()) || keyword == "default" {
            continue;
        }
        let value = match keyword.as_str() {
            "properties" => Value::Object(
                value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, property)| (name.clone(), nullable(patch_of(property))))
                    .collect(),
            ),
            // An unknown field may only be removed, which changes nothing.
            "additionalProperties" => nullable(patch_of(value)),
            _ => value.clone(),
        };
        patch.insert(keyword.clone(), value);
    }
    Value::Object(patch)
}

fn build(kind: Kind) -> CompiledSchema {
    let mut schema = patch_of(schema_of(kind));
    if let Some(fields) = schema.as_object_mut() {
        fields.insert(
            "title".into(),
            format!("{} merge patch", kind.singular()).into(),
        );
        fields.insert(
            "description".into(),
            format!(
                "A JSON merge patch (RFC 7396) of a {0}: the fields to change, null to remove \
                 one; objects merge, arrays and scalars replace. The merged document must be a \
                 valid {0} (409 with its violations otherwise).",
                kind.singular()
            )
            .into(),
        );
    }
    if let Some(id) = schema
        .pointer_mut("/properties/id")
        .and_then(Value::as_object_mut)
    {
        // The id is the URL's: a patch may repeat it, not change it.
        id.insert("readOnly".into(), true.into());
    }
    compile(schema)
}

static PATCHES: LazyLock<[CompiledSchema; Kind::ALL.len()]> =
    LazyLock::new(|| Kind::ALL.map(build));

fn compiled_patch(kind: Kind) -> &'static CompiledSchema {
    let index = Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
    &PATCHES[index]
}

/// The JSON Schema of a merge patch of `kind`, as the OpenAPI document serves it.
pub fn merge_patch_schema(kind: Kind) -> &'static Value {
    &compiled_patch(kind).document
}

/// Every violation of the merge-patch schema of `kind` by `patch`.
pub fn validate_patch(kind: Kind, patch: &Value) -> Vec<Violation> {
    schema_violations(compiled_patch(kind), patch, "")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn patches_name_only_what_changes() {
        // Partial, with nulls, nested objects partial too.
        for patch in [
            json!({}),
            json!({"lb": "consistent_hash"}),
            json!({"hash_on": null, "timeouts": {"read_ms": null}}),
            json!({"health_check": {"active": {"interval_ms": 500}}}),
            json!({"labels": {"team": null, "tier": "gold"}, "unknown": null}),
        ] {
            assert_eq!(validate_patch(Kind::Upstreams, &patch), [], "{patch}");
        }
        // Values that are wrong whatever is stored.
        for (patch, pointer) in [
            (json!({"lb": "nope"}), "/lb"),
            (json!({"nodes": []}), "/nodes"),
            (json!({"nodes": [{"host": "h"}]}), "/nodes/0"),
            (json!({"unknown": 1}), "/unknown"),
            (json!({"revision": "3"}), "/revision"),
            (json!({"timeouts": {"read_ms": "x"}}), "/timeouts/read_ms"),
        ] {
            let violations = validate_patch(Kind::Upstreams, &patch);
            assert!(
                violations.iter().any(|v| v.pointer == pointer),
                "{patch}: {violations:?}"
            );
        }
        // A plugin's config merges too; a route's target rule holds of the result only.
        assert_eq!(
            validate_patch(
                Kind::Routes,
                &json!({"upstream_id": null, "plugins": {"limit-count": {"count": 5}}})
            ),
            []
        );
        assert_eq!(
            merge_patch_schema(Kind::Routes)["properties"]["id"]["readOnly"],
            true
        );
    }
}
