//! The one place where two documents of a resource are made comparable.
//!
//! A document from a file and the same resource as the server stores it can differ without
//! meaning anything different: the server adds `created_at`, `updated_at` and `revision`, and
//! a field may be written out at its default in one and left out in the other. [`canonical`]
//! removes both kinds of noise, and it takes the defaults from where the product declares them:
//! the `default` annotations of the JSON Schemas in `gateway_proto::schema` (served by
//! `GET /api/v1/schemas/{kind}`, mirroring the model's serde defaults, and absent exactly where
//! leaving a field out means something else — a route's `timeouts` keep the upstream's). A
//! `plugins` map is walked through each plugin's own schema, so plugin defaults count too.
//!
//! One more kind of noise has no annotation: an empty list or map written out (`hosts: []`,
//! `plugins: {}`). It is dropped only when the resource's typed model
//! (`gateway_proto::validate_resource`) reads the same without it, so an empty value that
//! means something (`health_check: {active: {}}` turns probing on) is kept.

use gateway_proto::model::{Parsed, SERVER_FIELDS};
use gateway_proto::schema::schema_of;
use gateway_proto::{Kind, validate_resource};
use serde_json::Value;

/// `document` without server-managed fields, defaults, or empty values that mean nothing.
pub fn canonical(kind: Kind, document: &Value) -> Value {
    let mut document = document.clone();
    strip_server_fields(&mut document);
    strip_read_only(kind, &mut document);
    integral_numbers(&mut document);
    strip_defaults(&mut document, schema_of(kind));
    drop_meaningless_empties(kind, &mut document);
    document
}

/// The default the schema of `kind` declares for the field at `pointer`, if any: what a field
/// missing on one side of a diff reads as.
pub fn default_at(kind: Kind, pointer: &str) -> Option<Value> {
    let mut schema = schema_of(kind);
    for token in pointer.split('/').skip(1) {
        let token = unescape(token);
        let property = schema
            .get("properties")
            .and_then(|p| p.get(&token))
            .or_else(|| schema.get("additionalProperties").filter(|s| s.is_object()));
        let item = || {
            token
                .parse::<usize>()
                .ok()
                .and_then(|_| schema.get("items"))
                .filter(|s| s.is_object())
        };
        schema = property.or_else(item)?;
    }
    schema.get("default").cloned()
}

/// Removes the fields the server manages (and `id`, which names the resource rather than
/// being part of its document).
pub fn strip_server_fields(document: &mut Value) {
    if let Value::Object(fields) = document {
        for field in SERVER_FIELDS {
            fields.remove(field);
        }
    }
}

/// Removes the fields the kind's schema marks `readOnly` (a certificate's `not_after`): the
/// server works them out, a file need not state them.
fn strip_read_only(kind: Kind, document: &mut Value) {
    let Some(properties) = schema_of(kind)["properties"].as_object() else {
        return;
    };
    if let Value::Object(fields) = document {
        fields.retain(|name, _| {
            !properties
                .get(name)
                .is_some_and(|p| p["readOnly"] == Value::Bool(true))
        });
    }
}

/// Writes `5.0` as `5`: JSON does not tell them apart (nor do the schemas' `integer` or the
/// model), but YAML and JSON parsers keep them apart, and a file saying `5` must not differ
/// from a server that was sent `5.0`.
fn integral_numbers(value: &mut Value) {
    match value {
        Value::Number(number) => {
            // Beyond 2^53 a float no longer holds every integer; leave those alone.
            const EXACT: f64 = 9_007_199_254_740_992.0;
            if let Some(float) = number.as_f64().filter(|_| number.is_f64())
                && float.fract() == 0.0
                && float.abs() <= EXACT
            {
                *value = Value::from(float as i64);
            }
        }
        Value::Object(fields) => fields.values_mut().for_each(integral_numbers),
        Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        _ => {}
    }
}

/// Removes every field whose value equals the `default` its schema declares, at any depth.
fn strip_defaults(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|s| s.is_object());
            fields.retain(|name, field| {
                let Some(field_schema) = properties.and_then(|p| p.get(name)).or(additional) else {
                    return true;
                };
                let Some(default) = field_schema.get("default") else {
                    strip_defaults(field, field_schema);
                    return true;
                };
                if field == default {
                    return false;
                }
                strip_defaults(field, field_schema);
                // A default that is itself a structure is compared in the same form.
                let mut default = default.clone();
                strip_defaults(&mut default, field_schema);
                *field != default
            });
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
                for item in items {
                    strip_defaults(item, item_schema);
                }
            }
        }
        _ => {}
    }
}

/// Removes empty lists and maps whose absence the typed model reads the same way. A document
/// that does not validate is left as it is: there is no model reading to compare.
fn drop_meaningless_empties(kind: Kind, document: &mut Value) {
    let Ok(reading) = validate_resource(kind, document) else {
        return;
    };
    // Removing an empty value can leave its parent empty: go again until nothing moves.
    loop {
        let mut candidates = Vec::new();
        empty_members(document, String::new(), &mut candidates);
        let mut removed = false;
        for pointer in candidates {
            let mut trial = document.clone();
            if remove_member(&mut trial, &pointer) && reads_as(kind, &trial, &reading) {
                *document = trial;
                removed = true;
            }
        }
        if !removed {
            return;
        }
    }
}

fn reads_as(kind: Kind, document: &Value, reading: &Parsed) -> bool {
    validate_resource(kind, document).is_ok_and(|parsed| parsed == *reading)
}

/// Pointers of the empty lists and maps that are members of a map (list elements are never
/// removed: that would shift their neighbours), deepest first.
fn empty_members(value: &Value, at: String, out: &mut Vec<String>) {
    let Value::Object(fields) = value else {
        if let Value::Array(items) = value {
            for (index, item) in items.iter().enumerate() {
                empty_members(item, format!("{at}/{index}"), out);
            }
        }
        return;
    };
    for (name, field) in fields {
        let pointer = format!("{at}/{}", escape(name));
        empty_members(field, pointer.clone(), out);
        let empty = match field {
            Value::Object(map) => map.is_empty(),
            Value::Array(list) => list.is_empty(),
            _ => false,
        };
        if empty {
            out.push(pointer);
        }
    }
}

/// Removes the map member at `pointer`; whether there was one.
fn remove_member(document: &mut Value, pointer: &str) -> bool {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return false;
    };
    document
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .is_some_and(|fields| fields.remove(&unescape(last)).is_some())
}

/// One reference token of a JSON pointer (RFC 6901).
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An upstream with every default written out.
    fn upstream_with_defaults() -> Value {
        json!({
            "id": "u1", "revision": 4, "created_at": 1, "updated_at": 2,
            "nodes": [{"host": "10.0.0.1", "port": 80, "weight": 1}],
            "scheme": "http", "lb": "round_robin", "pass_host": "pass",
            "timeouts": {"connect_ms": 5000, "read_ms": 60000},
            "retries": {"count": 1, "on": ["connect_error", "timeout"], "non_idempotent": false},
            "health_check": {
                "active": {"path": "/", "interval_ms": 2000, "timeout_ms": 1000, "healthy_after": 2, "unhealthy_after": 3},
                "passive": {"unhealthy_after": 5, "eject_ms": 30000}
            },
            "keepalive_pool": {"size": 320, "idle_timeout_ms": 60000}
        })
    }

    #[test]
    fn defaults_written_out_equal_defaults_left_out() {
        let written = canonical(Kind::Upstreams, &upstream_with_defaults());
        let bare = canonical(
            Kind::Upstreams,
            &json!({"nodes": [{"host": "10.0.0.1", "port": 80}], "retries": {"count": 1},
                    "health_check": {"active": {}, "passive": {}}, "keepalive_pool": {}}),
        );
        assert_eq!(written, bare);
        assert_eq!(
            written,
            json!({"nodes": [{"host": "10.0.0.1", "port": 80}], "retries": {"count": 1},
                   "health_check": {"active": {}, "passive": {}}, "keepalive_pool": {}})
        );
    }

    /// The schemas' `default` annotations are what the model reads a missing field as: a
    /// document means the same with its defaults stripped. Guards the one source of defaults
    /// `canonical` relies on against drifting from the model's serde defaults.
    #[test]
    fn stripping_defaults_never_changes_what_a_document_means() {
        let documents = [
            (Kind::Upstreams, upstream_with_defaults()),
            (
                Kind::Upstreams,
                json!({"nodes": [{"host": "h", "port": 443}], "scheme": "https", "tls": {"verify": true}}),
            ),
            (
                Kind::Routes,
                json!({"paths": ["/a"], "priority": 0, "enabled": true, "hosts": [], "methods": [],
                       "upstream": inline_upstream_with_defaults()}),
            ),
            (
                Kind::Routes,
                json!({"paths": ["/b"], "batch": {"requests": [
                        {"name": "a", "upstream_id": "u", "path": "/a", "required": true}],
                        "merge": "object", "pass_query": false, "timeout_ms": 30000,
                        "max_concurrency": 16, "max_body_bytes": 1048576}}),
            ),
            (
                Kind::Consumers,
                json!({"credentials": {"jwt-auth": {"key": "k", "algorithm": "HS256", "secret": "12345678"}},
                       "plugins": {}}),
            ),
        ];
        for (kind, document) in documents {
            let mut stripped = document.clone();
            strip_server_fields(&mut stripped);
            let before =
                validate_resource(kind, &stripped).unwrap_or_else(|e| panic!("{document}: {e:?}"));
            let normal = canonical(kind, &document);
            assert_ne!(normal, stripped, "nothing stripped from {document}");
            let after =
                validate_resource(kind, &normal).unwrap_or_else(|e| panic!("{normal}: {e:?}"));
            assert_eq!(before, after, "{document} → {normal}");
        }
    }

    fn inline_upstream_with_defaults() -> Value {
        let mut upstream = upstream_with_defaults();
        strip_server_fields(&mut upstream);
        upstream
    }

    /// The same for plugin configs, which the resource model keeps as JSON: their typed
    /// configs read the stripped form as they read the written-out one.
    #[test]
    fn stripping_plugin_defaults_never_changes_what_a_config_means() {
        use gateway_proto::plugins::{auth, limit_req};
        let route = json!({"paths": ["/a"], "upstream_id": "u", "plugins": {
            "key-auth": {"header": "apikey", "query": "apikey", "hide_credentials": false},
            "jwt-auth": {"header": "authorization", "query": "jwt", "cookie": "jwt", "clock_skew_s": 0},
            "limit-req": {"rate": 1, "burst": 0, "key": "remote_addr", "rejected_code": 503, "nodelay": false}}});
        let normal = canonical(Kind::Routes, &route);
        assert_eq!(
            normal["plugins"],
            json!({"key-auth": {}, "jwt-auth": {}, "limit-req": {"rate": 1, "burst": 0, "key": "remote_addr"}})
        );
        fn typed<T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
            a: &Value,
            b: &Value,
        ) {
            let a: T = serde_json::from_value(a.clone()).unwrap();
            let b: T = serde_json::from_value(b.clone()).unwrap();
            assert_eq!(a, b);
        }
        let (before, after) = (&route["plugins"], &normal["plugins"]);
        typed::<auth::KeyAuthConfig>(&before["key-auth"], &after["key-auth"]);
        typed::<auth::JwtAuthConfig>(&before["jwt-auth"], &after["jwt-auth"]);
        typed::<limit_req::Config>(&before["limit-req"], &after["limit-req"]);
    }

    #[test]
    fn a_field_without_a_default_is_kept_even_at_the_upstreams_value() {
        // A route's timeouts override the upstream's: stating 5000 is not saying nothing.
        let route = json!({"paths": ["/a"], "upstream_id": "u", "timeouts": {"connect_ms": 5000}});
        assert_eq!(canonical(Kind::Routes, &route), route);
    }

    #[test]
    fn empty_values_go_only_when_they_mean_nothing() {
        let route = json!({"paths": ["/a"], "upstream_id": "u", "hosts": [], "plugins": {},
                           "labels": {}, "retries": {"count": 1, "on": []}});
        assert_eq!(
            canonical(Kind::Routes, &route),
            json!({"paths": ["/a"], "upstream_id": "u", "retries": {"count": 1, "on": []}})
        );
        // Active health checks with every default: probing is on, unlike no `active` at all.
        let upstream =
            json!({"nodes": [{"host": "h", "port": 1}], "health_check": {"active": {"path": "/"}}});
        assert_eq!(
            canonical(Kind::Upstreams, &upstream),
            json!({"nodes": [{"host": "h", "port": 1}], "health_check": {"active": {}}})
        );
    }

    #[test]
    fn whole_floats_read_as_integers() {
        let route = json!({"paths": ["/a"], "upstream_id": "u", "priority": 5.0,
                           "plugins": {"limit-req": {"rate": 1.5, "burst": 2.0, "key": "remote_addr"}}});
        assert_eq!(
            canonical(Kind::Routes, &route),
            json!({"paths": ["/a"], "upstream_id": "u", "priority": 5,
                   "plugins": {"limit-req": {"rate": 1.5, "burst": 2, "key": "remote_addr"}}})
        );
    }

    #[test]
    fn defaults_are_found_by_pointer() {
        assert_eq!(default_at(Kind::Routes, "/priority"), Some(json!(0)));
        assert_eq!(default_at(Kind::Routes, "/timeouts/connect_ms"), None);
        assert_eq!(
            default_at(Kind::Upstreams, "/nodes/3/weight"),
            Some(json!(1))
        );
        assert_eq!(
            default_at(Kind::Routes, "/plugins/key-auth/header"),
            Some(json!("apikey"))
        );
        assert_eq!(default_at(Kind::Routes, "/no/such"), None);
    }

    #[test]
    fn pointer_tokens_round_trip() {
        assert_eq!(escape("a/b~c"), "a~1b~0c");
        assert_eq!(unescape(&escape("a/b~c")), "a/b~c");
        let mut document = json!({"labels": {"a/b": {}}});
        assert!(remove_member(&mut document, "/labels/a~1b"));
        assert_eq!(document, json!({"labels": {}}));
    }
}
